//! The admin listener: health, readiness and the state of every capability file.
//!
//! `GET /healthz` answers while the process runs; `GET /readyz` once the first load is done;
//! `GET /status` lists every file with its state, generation, load time and diagnostics (the
//! same diagnostics `capgate validate` prints), and every listener. It never shows a secret:
//! diagnostics name variables, never values.

use std::net::SocketAddr;

use http::{Method, StatusCode};
use hyper::body::Incoming;
use serde_json::json;
use tokio::net::TcpListener;

use crate::gateway::Gateway;
use crate::response::{self, HttpResponse};
use crate::server;

/// Opens the admin listener on `address` and serves it until `stop`.
pub async fn start(address: SocketAddr, gateway: Gateway) -> std::io::Result<SocketAddr> {
    let stop = gateway.stopping();
    let listener = TcpListener::bind(address).await?;
    let local = listener.local_addr()?;
    tracing::info!(address = %local, "admin listening");
    let settings = gateway.connection_settings();
    tokio::spawn(server::serve(
        listener,
        "admin".to_owned(),
        Admin(gateway),
        settings,
        stop,
    ));
    Ok(local)
}

/// The admin listener's handler.
#[derive(Clone)]
struct Admin(Gateway);

impl server::Handler for Admin {
    async fn handle(&self, request: http::Request<Incoming>) -> HttpResponse {
        handle(&self.0, &request).await
    }
}

async fn handle(gateway: &Gateway, request: &http::Request<Incoming>) -> HttpResponse {
    if request.method() != Method::GET {
        return response::json(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "only GET is served here"}),
        );
    }
    match request.uri().path() {
        "/healthz" => response::json(StatusCode::OK, &json!({"status": "ok"})),
        "/readyz" => {
            if gateway.is_ready() {
                response::json(
                    StatusCode::OK,
                    &json!({"status": "ready", "generation": gateway.generation()}),
                )
            } else {
                response::json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"status": "loading"}),
                )
            }
        }
        "/status" => response::json(StatusCode::OK, &status(gateway).await),
        "/metrics" => {
            let mut response = http::Response::new(response::full(gateway.metrics().render()));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        path => response::json(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("no admin endpoint at {path}; try /healthz, /readyz, /status or /metrics")}),
        ),
    }
}

async fn status(gateway: &Gateway) -> serde_json::Value {
    let files = gateway.status();
    let snapshot = gateway.snapshot();
    let listeners: Vec<serde_json::Value> = gateway
        .listeners()
        .await
        .into_iter()
        .map(|(key, address)| {
            let listener = snapshot.listener(&key);
            json!({
                "declared": key.to_string(),
                "address": address.to_string(),
                "rest_routes": listener.map(|l| l.rest.len()).unwrap_or(0),
                "mcp_adapters": listener.map(|l| l.mcp.keys().cloned().collect::<Vec<_>>()).unwrap_or_default(),
            })
        })
        .collect();
    json!({
        "ready": gateway.is_ready(),
        "generation": gateway.generation(),
        "files": files,
        "listeners": listeners,
        "plugins": plugins(gateway, &snapshot),
    })
}

/// Plugin files with their state, and each binding with the operations it transforms.
fn plugins(gateway: &Gateway, snapshot: &capgate_model::snapshot::Snapshot) -> serde_json::Value {
    let mut bound: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for listener in snapshot.listeners.values() {
        let operations = listener
            .rest
            .values()
            .into_iter()
            .map(|r| r.operation.clone())
            .chain(
                listener
                    .mcp
                    .values()
                    .flat_map(|a| a.tools.iter().map(|t| t.operation.clone())),
            );
        for operation in operations {
            if let capgate_model::snapshot::Action::Call(call) = &operation.action {
                for transform in &call.upstream.transforms {
                    bound
                        .entry(transform.plugin.clone())
                        .or_default()
                        .insert(call.upstream.name.clone());
                }
            }
        }
    }
    let files = gateway.plugins();
    let bindings: Vec<serde_json::Value> = gateway
        .config()
        .plugins
        .bindings
        .iter()
        .map(|binding| {
            let loaded = files.as_ref().is_some_and(|f| f.iter().any(|p| p.file == binding.plugin && p.state != capgate_plugin::PluginState::Failed));
            let operations = bound.get(&binding.plugin).map(|s| s.len()).unwrap_or(0);
            let mut problems = Vec::new();
            if !loaded {
                problems.push(format!("plugin file {} is not loaded; the operations it is bound to fail (fail-closed) or skip it (fail-open)", binding.plugin));
            }
            if operations == 0 {
                problems.push("the binding selects no operation".to_owned());
            }
            json!({
                "plugin": binding.plugin,
                "capabilities": binding.capabilities,
                "operations": binding.operations,
                "on_error": binding.on_error,
                "timeout_ms": binding.timeout_ms,
                "memory_mib": binding.memory_mib,
                "loaded": loaded,
                "operations_bound": operations,
                "problems": problems,
            })
        })
        .collect();
    json!({"files": files, "bindings": bindings})
}
