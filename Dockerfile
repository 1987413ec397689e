# capgate's container image. Build: `docker build -t capgate .` (the machine this repository is
# developed on cannot pull base images; `host/cli/tests/image.rs` runs the binary the way this
# image does instead: as uid 65532, every mounted folder read-only).

# --- build: the gateway (the `dist` profile: release with whole-program LTO) and the example transform plugins (wasm32-wasip2).
FROM rust:1.95-bookworm AS build
WORKDIR /src
RUN rustup target add wasm32-wasip2
COPY . .
RUN cargo build --profile dist --locked -p capgate-cli \
 && (cd plugins && cargo build --release --locked --target wasm32-wasip2) \
 && mkdir -p /out/plugins \
 && cp target/dist/capgate /out/capgate \
 && cp plugins/target/wasm32-wasip2/release/redact_pii.wasm plugins/target/wasm32-wasip2/release/noop.wasm /out/plugins/

# --- runtime: glibc and nothing else (no shell, no package manager), non-root.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/capgate /usr/local/bin/capgate
# Defaults for a bare `docker run`; on Kubernetes every one of these is a mounted volume.
COPY --from=build /src/deploy/config/capgate.yaml /etc/capgate/config/capgate.yaml
COPY --from=build /src/specs /etc/capgate/specs
COPY --from=build /out/plugins /etc/capgate/plugins
USER 65532:65532
EXPOSE 8080 9090 9901
# The root filesystem may be read-only: the plugin cache goes to /var/cache/capgate (mount a
# writable volume there), and nothing else is written.
VOLUME ["/var/cache/capgate"]
ENTRYPOINT ["/usr/local/bin/capgate"]
CMD ["serve", "--config", "/etc/capgate/config/capgate.yaml", "--address", "0.0.0.0"]
