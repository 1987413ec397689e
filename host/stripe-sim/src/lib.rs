//! stripe-sim: a stateful stand-in for Stripe's `/v1/identity/verification_sessions` API, for
//! tests and the `capgate stripe-sim` demo.
//!
//! It follows `tests/data/stripe/CONVENTIONS.md` and answers with objects that validate against
//! Stripe's OpenAPI description: form-encoded parameters, API keys, idempotency, lists, expand,
//! metadata, and the session lifecycle. Under `/_sim/` it offers test-only controls that Stripe
//! does not have (move a session to `verified`, inject faults and delays, read the request log).
//! It keeps everything in memory and knows nothing of the gateway.
//!
//! Module map: `http` (sockets, phases of a request, auth, idempotency), `control` (`/_sim`),
//! `params` (parameter checking), `session` (the object and its lifecycle), `store` (the state
//! behind one mutex), `error` (Stripe's error envelope).

#![warn(clippy::too_many_lines)]

mod control;
mod error;
mod http;
mod params;
mod session;
mod store;

#[cfg(test)]
mod openapi_check;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

use store::State;

/// The test key the CLI's demo uses; any `sk_test_`/`rk_test_`/`sk_live_`/`rk_live_` key with a
/// non-empty suffix is accepted.
pub const DEMO_KEY: &str = "sk_test_capgate_demo";

/// A running stand-in. Dropping it stops the server.
#[derive(Debug)]
pub struct StripeSim {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

/// What the server task and the handle share.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Requests dropped before they were answered (see `http::Unanswered`).
    abandoned: std::sync::atomic::AtomicUsize,
}

impl Shared {
    /// The state; a poisoned lock is taken over, since every method leaves the state whole.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl StripeSim {
    /// Binds `addr` (port 0 = OS-chosen) and serves in a background tokio task.
    pub async fn start(addr: SocketAddr) -> std::io::Result<StripeSim> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(http::serve(listener, shared.clone(), stopped));
        Ok(StripeSim {
            local_addr,
            shared,
            stop,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://127.0.0.1:PORT`; a wildcard bind is reached through loopback.
    pub fn base_url(&self) -> String {
        let mut addr = self.local_addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            });
        }
        format!("http://{addr}")
    }

    /// Every request received so far on Stripe paths (`/v1/...`), oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests()
    }

    /// How many requests were abandoned by their client before the stand-in answered them
    /// (for example an upstream call the gateway cancelled during an injected delay).
    pub fn abandoned(&self) -> usize {
        self.shared
            .abandoned
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops the server (also done on Drop).
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }
}

impl Drop for StripeSim {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts the stand-in on `addr`, logs its URL, and serves until `shutdown` completes.
pub async fn run(addr: SocketAddr, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let sim = StripeSim::start(addr).await?;
    tracing::info!(
        url = %sim.base_url(),
        demo_key = DEMO_KEY,
        "stripe-sim listening (Stripe paths under /v1, test controls under /_sim)"
    );
    shutdown.await;
    sim.shutdown();
    tracing::info!("stripe-sim stopped");
    Ok(())
}

/// One request as received on a Stripe path, kept for assertions.
#[derive(Debug, Clone, Serialize)]
pub struct RecordedRequest {
    pub method: String,
    /// Raw, still percent-encoded, without the query.
    pub path: String,
    /// Raw query string.
    pub query: Option<String>,
    /// Lower-case names, in the order received.
    pub headers: Vec<(String, String)>,
    /// Raw body (invalid UTF-8 replaced).
    pub body: String,
}

impl RecordedRequest {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body decoded as Stripe form data; empty when it does not decode.
    pub fn form(&self) -> Map<String, Value> {
        capgate_model::form::decode(self.body.as_bytes()).unwrap_or_default()
    }

    /// The query string decoded as Stripe form data; empty when absent or undecodable.
    pub fn query_form(&self) -> Map<String, Value> {
        self.query
            .as_deref()
            .and_then(|q| capgate_model::form::decode(q.as_bytes()).ok())
            .unwrap_or_default()
    }
}
