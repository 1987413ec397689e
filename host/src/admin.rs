//! The admin listener: health, readiness and the state of every capability file.
//!
//! `GET /healthz` answers while the process runs; `GET /readyz` once the first load is done;
//! `GET /status` lists every file with its state, generation, load time and diagnostics (the
//! same diagnostics `capgate validate` prints), and every listener. It never shows a secret:
//! diagnostics name variables, never values.

use std::convert::Infallible;
use std::net::SocketAddr;

use http::{Method, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::gateway::Gateway;
use crate::rest::json_response;
use crate::server::HttpResponse;

/// Opens the admin listener on `address` and serves it until `stop`.
pub async fn start(
    address: SocketAddr,
    gateway: Gateway,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(address).await?;
    let local = listener.local_addr()?;
    tracing::info!(address = %local, "admin listening");
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = stop.cancelled() => return,
            };
            let gateway = gateway.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request: http::Request<Incoming>| {
                        let gateway = gateway.clone();
                        async move { Ok::<_, Infallible>(handle(&gateway, &request).await) }
                    });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(local)
}

async fn handle(gateway: &Gateway, request: &http::Request<Incoming>) -> HttpResponse {
    if request.method() != Method::GET {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "only GET is served here"}),
        );
    }
    match request.uri().path() {
        "/healthz" => json_response(StatusCode::OK, &json!({"status": "ok"})),
        "/readyz" => {
            if gateway.is_ready() {
                json_response(
                    StatusCode::OK,
                    &json!({"status": "ready", "generation": gateway.generation()}),
                )
            } else {
                json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"status": "loading"}),
                )
            }
        }
        "/status" => json_response(StatusCode::OK, &status(gateway).await),
        path => json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("no admin endpoint at {path}; try /healthz, /readyz or /status")}),
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
    })
}
