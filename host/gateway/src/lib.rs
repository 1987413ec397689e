//! capgate: a gateway that serves Naftiko capabilities as REST routes and MCP tools.
//!
//! This crate is the runtime; what it serves comes compiled from `capgate-model`, and transform
//! plugins run in `capgate-plugin`. A request, and the module for each stage:
//!
//! ```text
//! server (listeners) --> front (pin the Snapshot, route by path) --> rest / mcp
//!   --> invoke --> upstream (prepare, encode, client) --> output mapping --> http (responses)
//! reload (watch --> catalog --> publish) builds and publishes the Snapshot; gateway ties it all
//! together; admin reports on it; `start` and `serve` (here) open the admin listener and run it.
//! ```
//!
//! See `ARCHITECTURE.md` at the repository root for the code map and the invariants.

#![warn(clippy::too_many_lines)]

pub mod access;
pub mod admin;
pub mod auth;
pub mod consumer;
pub mod error;
pub mod front;
pub mod gateway;
pub mod invoke;
pub mod jwt;
pub mod limits;
pub mod mcp;
pub mod metrics;
pub mod origin;
pub mod reload;
pub mod response;
pub mod rest;
pub mod server;
pub mod tls;
pub mod trace;
pub mod upstream;

pub use gateway::Gateway;

use capgate_model::config::Config;

/// Starts a gateway: its admin listener (answering `/readyz` with 503 while loading), then the
/// first load, its listeners and, if configured, the watcher.
pub async fn start(config: Config) -> Gateway {
    match server::raise_open_files_limit() {
        Ok(limit) => tracing::debug!(limit, "open files limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open files limit"),
    }
    let gateway = Gateway::new(config);
    gateway.consumers().start();
    if let Some(address) = gateway.config().admin.address {
        match admin::start(address, gateway.clone()).await {
            Ok(bound) => gateway.set_admin_addr(bound),
            Err(error) => tracing::error!(%address, %error, "cannot open the admin listener"),
        }
    }
    gateway.load().await;
    gateway
}

/// Runs a gateway until `shutdown` resolves, then drains it.
pub async fn serve(config: Config, shutdown: impl std::future::Future<Output = ()>) {
    let gateway = start(config).await;
    shutdown.await;
    tracing::info!("shutting down: draining in-flight requests");
    gateway.shutdown().await;
}
