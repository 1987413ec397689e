//! Traces (issue 20): spans exported over OTLP to a real receiver (HTTP/protobuf and gRPC, on
//! the `opentelemetry-proto` types), their names and parent links, the `traceparent` the
//! upstream receives, and a dead collector that never delays a request.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{Value, json};

use crate::common::{self, Harness};
use capgate_model::config::{Requirement, TracingConfig};
use capgate_model::consumers::{digest, hex};

const KEY: &str = "cg_00000000000000000000000000000000000000000000aaaa";
/// The caller's trace and span, as a W3C `traceparent` carries them.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// Spans a receiver was sent.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Span>>>);

impl Received {
    fn add(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.0.lock().unwrap();
        for resource in request.resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
    }

    fn spans(&self) -> Vec<Span> {
        self.0.lock().unwrap().clone()
    }
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.add(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP receiver on a port the OS chose: `/v1/traces` over HTTP/protobuf, or the gRPC
/// trace service (HTTP/2). Stops with the test's runtime.
async fn receiver(grpc: bool) -> (SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Received::default();
    let spans = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let io = hyper_util::rt::TokioIo::new(stream);
            let spans = spans.clone();
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                if grpc {
                    let service = hyper_util::service::TowerToHyperService::new(
                        TraceServiceServer::new(spans),
                    );
                    let _ = builder.http2_only().serve_connection(io, service).await;
                } else {
                    let service = hyper::service::service_fn(move |request| {
                        let spans = spans.clone();
                        async move { otlp_http(&spans, request).await }
                    });
                    let _ = builder.serve_connection(io, service).await;
                }
            });
        }
    });
    (addr, received)
}

async fn otlp_http(
    spans: &Received,
    request: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<Bytes>>, std::convert::Infallible> {
    let path_ok = request.uri().path() == "/v1/traces";
    let protobuf = request
        .headers()
        .get("content-type")
        .is_some_and(|v| v == "application/x-protobuf");
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let status = match ExportTraceServiceRequest::decode(body) {
        Ok(export) if path_ok && protobuf => {
            spans.add(export);
            200
        }
        _ => 400,
    };
    let mut response = http::Response::new(Full::new(
        ExportTraceServiceResponse::default().encode_to_vec().into(),
    ));
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
    response.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/x-protobuf"),
    );
    Ok(response)
}

fn consumers_file() -> String {
    format!(
        "consumers:\n  - name: tracer\n    keys:\n      - sha256: {}\n        prefix: {}\n    scopes:\n      - access: any\n    limits:\n      - rate: 1000\n        burst: 1000\n",
        hex(&digest(KEY)),
        &KEY[..7]
    )
}

/// The seed traced to `endpoint` (all of it sampled), with a consumer and a no-op plugin on
/// the retrieve operation.
async fn traced_harness(dir: &tempfile::TempDir, tracing: TracingConfig) -> Harness {
    traced_harness_with(dir, tracing, None).await
}

/// The same, with the access log written to `log`.
async fn traced_harness_with(
    dir: &tempfile::TempDir,
    tracing: TracingConfig,
    log: Option<&std::path::Path>,
) -> Harness {
    let log = log.map(|l| l.display().to_string());
    let seed =
        std::fs::read_to_string(common::root().join("specs/identity-sessions.yaml")).unwrap();
    let consumers = dir.path().join("consumers.yaml");
    std::fs::write(&consumers, consumers_file()).unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(common::plugin_wasm("stamp"), plugins.join("stamp.wasm")).unwrap();
    Harness::with_specs(&[("identity-sessions.yaml", &seed)], move |c| {
        c.tracing = tracing;
        if let Some(log) = log {
            c.log.access.to = log;
        }
        c.consumers.file = Some(consumers);
        c.consumers.require = vec![Requirement::default()];
        c.plugins.dir = Some(plugins);
        c.plugins.bindings = vec![capgate_model::config::TransformBinding {
            plugin: "stamp.wasm".into(),
            capabilities: vec!["identity-*".into()],
            operations: vec!["identity-sessions.getidentityverificationsessionssession".into()],
            config: json!({}),
            on_error: capgate_model::config::FailurePolicy::FailClosed,
            timeout_ms: 1000,
            memory_mib: 16,
            instances: Default::default(),
        }];
    })
    .await
}

fn otlp(endpoint: String, protocol: &str) -> TracingConfig {
    TracingConfig {
        exporter: Some("otlp".into()),
        endpoint: Some(endpoint),
        protocol: Some(protocol.into()),
        sample_ratio: Some(1.0),
        ..TracingConfig::default()
    }
}

fn hex_id(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(span: &Span, key: &str) -> Option<Value> {
    let value = span
        .attributes
        .iter()
        .find(|a| a.key == key)?
        .value
        .as_ref()?;
    Some(match value.value.as_ref()? {
        any_value::Value::StringValue(s) => json!(s),
        any_value::Value::IntValue(i) => json!(i),
        any_value::Value::BoolValue(b) => json!(b),
        any_value::Value::DoubleValue(d) => json!(d),
        other => json!(format!("{other:?}")),
    })
}

/// The one span named `name` (panics, listing what came, if not exactly one).
fn one<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(
        found.len(),
        1,
        "spans named {name:?}; received: {:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    found[0]
}

/// Spans arrive in batches: waits (at most 10 s) until one named `name` has come.
async fn until_received(received: &Received, name: &str) -> Vec<Span> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let spans = received.spans();
        if spans.iter().any(|s| s.name == name) || Instant::now() > deadline {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_rest_call_is_one_trace_from_the_caller_to_the_upstream_over_otlp_http() {
    let (collector, received) = receiver(false).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let h = traced_harness_with(
        &dir,
        otlp(format!("http://{collector}"), "http/protobuf"),
        Some(&log),
    )
    .await;
    let id = common::create_session_directly(&h.sim).await;
    let response = h
        .http
        .get(format!("{}/{id}", h.sessions().await))
        .bearer_auth(KEY)
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .header("tracestate", "vendor=caller")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // The upstream saw the same trace, its parent the gateway's attempt, not the caller.
    let seen = h
        .sim
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.path.ends_with(&id))
        .expect("the retrieve reached the stand-in");
    let upstream_parent = seen.header("traceparent").expect("a traceparent upstream");
    let parts: Vec<&str> = upstream_parent.split('-').collect();
    assert_eq!(parts[1], TRACE, "{upstream_parent}");
    assert_ne!(parts[2], PARENT, "{upstream_parent}");
    assert_eq!(parts[3], "01");
    assert_eq!(seen.header("tracestate"), Some("vendor=caller"));

    h.gateway.shutdown().await;
    let spans = until_received(&received, "GET").await;
    let route = "/v1/v1/identity/verification-sessions/{session}";
    let request = one(&spans, &format!("GET {route}"));
    assert_eq!(hex_id(&request.trace_id), TRACE);
    assert_eq!(hex_id(&request.parent_span_id), PARENT);
    assert_eq!(attribute(request, "http.route"), Some(json!(route)));
    assert_eq!(
        attribute(request, "http.response.status_code"),
        Some(json!(200))
    );
    assert_eq!(
        attribute(request, "capgate.consumer.name"),
        Some(json!("tracer"))
    );
    // Auth, the rate-limit decision, both plugin hooks and the upstream attempt are its
    // children, in one trace.
    for name in [
        "auth",
        "rate_limit",
        "plugin on-request",
        "plugin on-response",
        "GET",
    ] {
        let child = one(&spans, name);
        assert_eq!(child.trace_id, request.trace_id, "{name}");
        assert_eq!(
            child.parent_span_id, request.span_id,
            "{name} under the request"
        );
    }
    assert_eq!(
        attribute(one(&spans, "auth"), "capgate.consumer.name"),
        Some(json!("tracer"))
    );
    assert_eq!(
        attribute(one(&spans, "rate_limit"), "capgate.limit.decision"),
        Some(json!("admitted"))
    );
    assert_eq!(
        attribute(one(&spans, "plugin on-request"), "capgate.plugin.name"),
        Some(json!("stamp.wasm"))
    );
    let attempt = one(&spans, "GET");
    assert_eq!(attempt.kind, 3, "a client span");
    assert_eq!(
        hex_id(&attempt.span_id),
        parts[2],
        "the upstream's parent is the attempt"
    );
    assert_eq!(
        attribute(attempt, "http.response.status_code"),
        Some(json!(200))
    );
    assert_eq!(
        attribute(attempt, "http.request.resend_count"),
        None,
        "a first attempt"
    );
    // The access log line names the trace.
    let lines = std::fs::read_to_string(&log).unwrap();
    let line: Value = serde_json::from_str(lines.lines().last().expect("a line")).unwrap();
    assert_eq!(line["trace_id"], TRACE, "{line}");
    let url = attribute(attempt, "url.full").unwrap();
    assert!(
        url.as_str()
            .unwrap()
            .ends_with(&format!("/v1/identity/verification_sessions/{id}"))
    );
}

#[tokio::test]
async fn an_mcp_tool_call_continues_the_trace_its_meta_names_over_otlp_grpc() {
    let (collector, received) = receiver(true).await;
    let dir = tempfile::tempdir().unwrap();
    let h = traced_harness(&dir, otlp(format!("http://{collector}"), "grpc")).await;
    let meta_trace = "0af7651916cd43dd8448eb211c80319c";
    let meta_parent = "b7ad6b7169203331";
    let response = h
        .http
        .post(crate::mcp::mcp_url(&h).await)
        .bearer_auth(KEY)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "stripe-get-identity-verification-sessions")
        // The HTTP hop's own trace; the call's `_meta` names the agent's.
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .body(
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
                "name": "stripe-get-identity-verification-sessions", "arguments": {"limit": 1},
                "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                    "io.modelcontextprotocol/clientCapabilities": {},
                    "traceparent": format!("00-{meta_trace}-{meta_parent}-01")}}})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert!(body.contains("\"isError\":false"), "{body}");
    let upstream = h
        .sim
        .requests()
        .pop()
        .expect("the call reached the stand-in");
    let upstream_parent = upstream
        .header("traceparent")
        .expect("a traceparent upstream");
    assert_eq!(upstream_parent.split('-').nth(1), Some(meta_trace));

    h.gateway.shutdown().await;
    let spans = until_received(&received, "GET").await;
    let http = one(&spans, "POST /mcp/identity-sessions-mcp");
    assert_eq!(hex_id(&http.trace_id), TRACE);
    assert_eq!(hex_id(&http.parent_span_id), PARENT);
    // The stateless call's consumer check happened at the front door, under the HTTP span.
    for name in ["auth", "rate_limit"] {
        assert_eq!(one(&spans, name).parent_span_id, http.span_id, "{name}");
    }
    let call = one(
        &spans,
        "tools/call stripe-get-identity-verification-sessions",
    );
    assert_eq!(hex_id(&call.trace_id), meta_trace);
    assert_eq!(hex_id(&call.parent_span_id), meta_parent);
    assert_eq!(
        attribute(call, "mcp.method.name"),
        Some(json!("tools/call"))
    );
    assert_eq!(
        attribute(call, "gen_ai.tool.name"),
        Some(json!("stripe-get-identity-verification-sessions"))
    );
    assert_eq!(
        attribute(call, "capgate.consumer.name"),
        Some(json!("tracer"))
    );
    let attempt = one(&spans, "GET");
    assert_eq!(attempt.parent_span_id, call.span_id);
    assert_eq!(
        hex_id(&attempt.span_id),
        upstream_parent.split('-').nth(2).unwrap()
    );
}

#[tokio::test]
async fn a_dead_collector_never_delays_a_request() {
    // A collector that takes connections and never answers, and a queue of 4 spans: exports
    // hang for their whole timeout, the queue fills, and requests go on.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let tracing = TracingConfig {
        queue: Some(4),
        export_timeout: Some(Duration::from_secs(30)),
        ..otlp(format!("http://{collector}"), "http/protobuf")
    };
    let h = traced_harness(&dir, tracing).await;
    let sessions = h.sessions().await;
    let mut slowest = Duration::ZERO;
    for _ in 0..60 {
        let started = Instant::now();
        let response = h
            .http
            .get(format!("{sessions}?limit=1"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        slowest = slowest.max(started.elapsed());
    }
    // A request that waited on the collector would take the export timeout (30 s).
    assert!(
        slowest < Duration::from_secs(5),
        "slowest request {slowest:?}"
    );
    // Shutting down waits for the stuck export a bounded time only.
    let started = Instant::now();
    h.gateway.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    held.abort();
}
