//! The admin listener: health, readiness and the state of every capability file.
//!
//! `GET /healthz` answers while the process runs; `GET /readyz` once the first load is done;
//! `GET /status` lists every file with its state, generation, load time and diagnostics (the
//! same diagnostics `capgate validate` prints), and every listener. It never shows a secret:
//! diagnostics name variables, never values.
//!
//! Nothing here waits for a reload: every answer is built from the gateway's published
//! [`View`], and `/status` (1.2 MB with the 322-file corpus) is serialized once per published
//! state and then served from that cache. With `admin.token_env` set, `/status` and `/metrics`
//! need `Authorization: Bearer <token>`; `/healthz` and `/readyz` stay open for probes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use http::{Method, StatusCode};
use hyper::body::Incoming;
use serde_json::json;
use tokio::net::TcpListener;

use crate::gateway::{Gateway, View};
use crate::response::{self, HttpResponse};
use crate::server;
use capgate_model::snapshot::Snapshot;

/// Opens the admin listener on `address` and serves it until `stop`.
pub async fn start(address: SocketAddr, gateway: Gateway) -> std::io::Result<SocketAddr> {
    let stop = gateway.stopping();
    let listener = TcpListener::bind(address).await?;
    let local = listener.local_addr()?;
    tracing::info!(address = %local, "admin listening");
    let settings = gateway.connection_settings();
    let token = match &gateway.config().admin.token_env {
        Some(name) => match std::env::var(name) {
            Ok(token) if !token.is_empty() => Some(token),
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("admin.token_env names {name}, which is not set or empty"),
                ));
            }
        },
        None => None,
    };
    let admin = Admin {
        gateway,
        token: token.map(|t| Arc::from(format!("Bearer {t}").into_bytes())),
        cache: Arc::new(Mutex::new(None)),
    };
    tokio::spawn(server::serve(
        listener,
        "admin".to_owned(),
        admin,
        settings,
        stop,
    ));
    Ok(local)
}

/// The admin listener's handler.
#[derive(Clone)]
struct Admin {
    gateway: Gateway,
    /// The whole expected `Authorization` value, when a token is required.
    token: Option<Arc<[u8]>>,
    /// `/status` as last served, with the state it was built from.
    cache: Arc<Mutex<Option<Cached>>>,
}

struct Cached {
    view: Arc<View>,
    snapshot: Arc<Snapshot>,
    ready: bool,
    body: Bytes,
}

impl server::Handler for Admin {
    async fn handle(&self, request: http::Request<Incoming>) -> HttpResponse {
        self.answer(&request)
    }
}

impl Admin {
    /// Whether the request may see `/status` and `/metrics`: no token configured, or the
    /// right one, compared in constant time.
    fn authorized(&self, request: &http::Request<Incoming>) -> bool {
        let Some(expected) = &self.token else {
            return true;
        };
        let given = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        constant_time_eq(given, expected)
    }

    /// `/status`, from the cache while the published state it was built from is current.
    fn status(&self) -> Bytes {
        let gateway = &self.gateway;
        let (view, snapshot, ready) = (gateway.view(), gateway.snapshot(), gateway.is_ready());
        let cache = self.cache.lock().expect("not poisoned");
        if let Some(cached) = cache.as_ref()
            && Arc::ptr_eq(&cached.view, &view)
            && Arc::ptr_eq(&cached.snapshot, &snapshot)
            && cached.ready == ready
        {
            return cached.body.clone();
        }
        drop(cache);
        let body = Bytes::from(
            serde_json::to_vec(&status(gateway, &view, &snapshot, ready))
                .expect("JSON values serialize"),
        );
        *self.cache.lock().expect("not poisoned") = Some(Cached {
            view,
            snapshot,
            ready,
            body: body.clone(),
        });
        body
    }

    fn answer(&self, request: &http::Request<Incoming>) -> HttpResponse {
        let gateway = &self.gateway;
        if request.method() != Method::GET {
            return response::json(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"error": "only GET is served here"}),
            );
        }
        let path = request.uri().path();
        if matches!(path, "/status" | "/metrics") && !self.authorized(request) {
            let mut response = response::json(
                StatusCode::UNAUTHORIZED,
                &json!({"error": "this admin endpoint needs `Authorization: Bearer <token>` (admin.token_env)"}),
            );
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer realm=\"capgate-admin\""),
            );
            return response;
        }
        match path {
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
            "/status" => response::json_bytes(StatusCode::OK, self.status()),
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
}

/// Whether `a` and `b` are equal, in a time that depends on their lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn status(gateway: &Gateway, view: &View, snapshot: &Snapshot, ready: bool) -> serde_json::Value {
    let listeners: Vec<serde_json::Value> = view
        .listeners
        .iter()
        .map(|&(key, address)| {
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
        "ready": ready,
        "generation": view.generation,
        "files": view.files,
        "listeners": listeners,
        "plugins": plugins(gateway, view, snapshot),
        "consumers": gateway.consumers().status(),
    })
}

/// Plugin files with their state, and each binding with the operations it transforms.
fn plugins(gateway: &Gateway, view: &View, snapshot: &Snapshot) -> serde_json::Value {
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
    let files = &view.plugins;
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
                "instances": binding.instances,
                "loaded": loaded,
                "operations_bound": operations,
                "problems": problems,
            })
        })
        .collect();
    json!({
        "files": files,
        "bindings": bindings,
        "idle_instances": gateway.idle_plugin_instances(),
    })
}
