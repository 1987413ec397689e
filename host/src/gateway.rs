//! The running gateway: its shared state, its listeners and its lifecycle.
//!
//! ```text
//! start: load + compile every file -> publish snapshot -> open listeners
//! reload: refresh the catalog -> publish -> reconcile listeners
//! shutdown: stop accepting -> drain in-flight requests (deadline) -> exit
//! ```

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use hyper::body::Incoming;

use crate::compile;
use crate::config::Config;
use crate::invoke::Invoker;
use crate::reload::{Catalog, FileStatus, Report};
use crate::server::{HttpResponse, Listeners};
use crate::snapshot::{ListenKey, Snapshot};
use crate::spec::Env;
use crate::upstream::Client;

/// State every request handler reads.
pub struct Shared {
    pub config: Config,
    /// The current snapshot; each request loads it once and keeps it to the end.
    pub snapshot: ArcSwap<Snapshot>,
    pub invoker: Invoker,
}

impl Shared {
    /// Answers one request that arrived on the listener `key`.
    pub async fn handle(&self, key: ListenKey, request: http::Request<Incoming>) -> HttpResponse {
        let snapshot = self.snapshot.load_full();
        let Some(listener) = snapshot.listener(&key) else {
            // The listener is closing: nothing is served on it any more.
            let error = crate::error::GatewayError::NotFound {
                method: request.method().clone(),
                path: request.uri().path().to_owned(),
            };
            return crate::rest::error_response(&error);
        };
        crate::rest::handle(
            &self.invoker,
            listener,
            self.config.limits.max_body_bytes,
            request,
        )
        .await
    }
}

/// A running gateway.
pub struct Gateway {
    shared: Arc<Shared>,
    catalog: Mutex<Catalog>,
    listeners: tokio::sync::Mutex<Listeners>,
}

impl Gateway {
    /// Loads every capability file, publishes the first snapshot and opens its listeners.
    pub async fn start(config: Config) -> Gateway {
        let env = Env {
            overrides: config.env.clone(),
            process: true,
        };
        let options = compile::Options {
            listen: config.listen.clone(),
            upstreams: config.upstreams.clone(),
        };
        let catalog = Catalog::new(config.specs.clone(), env, options);
        let invoker = Invoker::new(Client::new(&config.limits, &config.retry));
        let shared = Arc::new(Shared {
            config,
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            invoker,
        });
        let gateway = Gateway {
            shared,
            catalog: Mutex::new(catalog),
            listeners: tokio::sync::Mutex::new(Listeners::default()),
        };
        gateway.reload().await;
        gateway
    }

    /// Re-reads what changed in the specs folder and publishes the result.
    pub async fn reload(&self) -> Report {
        let previous = self.shared.snapshot.load_full();
        let (snapshot, report) = {
            let mut catalog = self.catalog.lock().expect("not poisoned");
            catalog.refresh(&previous)
        };
        let wanted: Vec<ListenKey> = snapshot.listeners.keys().copied().collect();
        self.shared.snapshot.store(Arc::new(snapshot));
        let failures = self
            .listeners
            .lock()
            .await
            .reconcile(&wanted, &self.shared)
            .await;
        for failure in failures {
            tracing::error!(listener = %failure.key, address = %failure.address, error = %failure.error, "a declared port cannot be bound; its routes are not reachable");
        }
        if !report.is_empty() {
            tracing::info!(
                generation = report.generation,
                files_added = report.files_added.len(),
                files_changed = report.files_changed.len(),
                files_removed = report.files_removed.len(),
                routes_added = report.routes_added.len(),
                routes_removed = report.routes_removed.len(),
                tools_added = report.tools_added.len(),
                tools_removed = report.tools_removed.len(),
                took_ms = report.took.as_secs_f64() * 1000.0,
                "published"
            );
        }
        report
    }

    /// The address the listener for a declared port is bound to (the first, if several
    /// addresses declare it).
    pub async fn local_addr(&self, declared_port: u16) -> Option<SocketAddr> {
        let listeners = self.listeners.lock().await;
        listeners
            .bound()
            .into_iter()
            .find(|(key, _)| key.port == declared_port)
            .map(|(_, addr)| addr)
    }

    /// Every open listener: its declared key and bound address.
    pub async fn listeners(&self) -> Vec<(ListenKey, SocketAddr)> {
        self.listeners.lock().await.bound()
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot.load_full()
    }

    pub fn status(&self) -> Vec<FileStatus> {
        self.catalog.lock().expect("not poisoned").status()
    }

    /// Stops accepting, lets in-flight requests finish within the drain deadline.
    pub async fn shutdown(&self) {
        self.listeners.lock().await.shutdown().await;
    }
}

/// Runs the gateway until `shutdown` resolves.
pub async fn serve(config: Config, shutdown: impl std::future::Future<Output = ()>) {
    let gateway = Gateway::start(config).await;
    shutdown.await;
    tracing::info!("shutting down: draining in-flight requests");
    gateway.shutdown().await;
}
