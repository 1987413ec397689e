//! What one request's plugin hooks cost on the host side: `on-request` and `on-response` of the
//! no-op plugin (`plugins/testing/noop`, built for `wasm32-wasip2`) on a reused instance, called
//! in a loop on one thread with a retrieve's request and the stand-in's response headers.
//!
//! `cargo run --release -p capgate-plugin --example hook_cost -- [PLUGINS_DIR] [CALLS]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};

use capgate_model::config::{FailurePolicy, PluginsConfig};
use capgate_model::exchange::{UpstreamRequest, UpstreamResponse};
use capgate_model::snapshot::TransformRef;
use capgate_plugin::{CallContext, Plugins, RequestOutcome, ResponseOutcome};

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .unwrap_or_else(|| "plugins/target/wasm32-wasip2/release".into());
    let calls: u32 = args.next().map_or(200_000, |n| n.parse().expect("a count"));
    let config = PluginsConfig {
        dir: Some(dir.into()),
        cache_dir: None,
        max_concurrent_calls: 4,
        warm_instances: 4,
        ..PluginsConfig::default()
    };
    let plugins = Plugins::new(&config).expect("the plugin host starts");
    plugins.refresh();
    let plugin = plugins.get("noop.wasm").expect("noop.wasm in the folder");
    let transform = TransformRef {
        plugin: "noop.wasm".into(),
        config: Arc::from("{}"),
        on_error: FailurePolicy::FailClosed,
        timeout: Duration::from_millis(50),
        memory: 16 << 20,
        reuse: true,
    };
    let context = CallContext {
        capability: "identity-sessions",
        operation: "identity-sessions.getidentityverificationsessionssession",
        request_id: Arc::from("req_CqrRGkcrL354PnToDXQW0W2Q"),
    };
    let mut response_headers = HeaderMap::new();
    for (name, value) in [
        ("content-type", "application/json"),
        ("request-id", "req_CqrRGkcrL354PnToDXQW0W2Q"),
        ("content-length", "534"),
        ("date", "Mon, 07 Dec 2026 13:48:10 GMT"),
    ] {
        response_headers.insert(name, HeaderValue::from_static(value));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let round = |n: u32| {
            let (plugins, plugin, transform, context) = (&plugins, &plugin, &transform, &context);
            let response_headers = response_headers.clone();
            async move {
                let started = Instant::now();
                for _ in 0..n {
                    let request = UpstreamRequest {
                        method: Method::GET,
                        path: "/v1/identity/verification_sessions/vs_zfNYk5JBuZMJG8BDB8gCbe7I"
                            .into(),
                        query: Vec::new(),
                        headers: HeaderMap::new(),
                        body: None,
                        sealed: Default::default(),
                    };
                    let outcome = plugins
                        .on_request(plugin, transform, context, request)
                        .await
                        .expect("on-request runs");
                    assert!(matches!(outcome, RequestOutcome::Forward(_)));
                    let response = UpstreamResponse {
                        status: StatusCode::OK,
                        headers: response_headers.clone(),
                        body: Bytes::from_static(b"{}"),
                        from_plugins: HeaderMap::new(),
                    };
                    let outcome = plugins
                        .on_response(plugin, transform, context, response)
                        .await
                        .expect("on-response runs");
                    assert!(matches!(outcome, ResponseOutcome::Forward(_)));
                }
                started.elapsed()
            }
        };
        round(calls / 10).await;
        for _ in 0..3 {
            let took = round(calls).await;
            println!(
                "{:.0} ns per request (on-request + on-response), {calls} requests",
                took.as_nanos() as f64 / f64::from(calls)
            );
        }
    });
}
