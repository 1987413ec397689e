//! The front door: the one place a request enters the gateway. It pins the current snapshot,
//! finds what the listener serves, and hands the request to the MCP hub or the REST surface
//! with that snapshot, which the request then uses to its end.

use std::sync::Arc;

use arc_swap::ArcSwap;
use hyper::body::Incoming;

use capgate_model::config::Config;
use capgate_model::snapshot::{ListenKey, Snapshot};
use capgate_plugin::PluginSet;

use crate::error::GatewayError;
use crate::invoke::Invoker;
use crate::mcp::Hub;
use crate::metrics::{Metrics, Surface};
use crate::origin;
use crate::response::{self, HttpResponse};
use crate::server::{self, ReadDeadline};

/// What one publish made current: the snapshot, and the version of every plugin its transforms
/// run, resolved when it was published. A request pins both together, so it runs one version of
/// everything from its first byte to its last, whatever is published meanwhile.
#[derive(Debug, Default)]
pub struct Published {
    pub snapshot: Arc<Snapshot>,
    pub plugins: PluginSet,
}

/// State every request handler reads.
pub struct Shared {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    /// What is served now; each request loads it once and keeps it to the end.
    pub published: ArcSwap<Published>,
    pub invoker: Arc<Invoker>,
    pub mcp: Hub,
    pub rest_policy: RestPolicy,
    pub consumers: Arc<crate::consumer::Consumers>,
}

impl Shared {
    /// Answers one request that arrived on the listener `key`.
    pub async fn handle(&self, key: ListenKey, request: http::Request<Incoming>) -> HttpResponse {
        let limit = self.config.limits.request_read_timeout;
        let request = request.map(|body| ReadDeadline::new(body, limit));
        let published = self.published.load_full();
        let Some(listener) = published.snapshot.listener(&key) else {
            // The listener is closing: nothing is served on it any more.
            let error = GatewayError::NotFound {
                method: request.method().clone(),
                path: request.uri().path().to_owned(),
            };
            return response::error(&error);
        };
        if request.method() == http::Method::GET
            && let Some(document) = Hub::protected_resource(
                listener,
                key.port,
                &self.consumers,
                request.uri().path(),
                request.headers(),
            )
        {
            return document;
        }
        if Hub::wants(listener, request.uri().path()) {
            // Boxed: the MCP future is larger than the REST one, and every request's future is
            // as large as its largest branch (and copied at that size when it moves).
            let response = Box::pin(self.mcp.handle(
                key,
                listener,
                &published.plugins,
                &self.consumers,
                request,
            ))
            .await;
            self.metrics.request(Surface::Mcp, response.status());
            return response;
        }
        if let Err(error) = self.rest_may_call(key, &request) {
            tracing::warn!(%error, "refused a REST request");
            let response = response::error(&error);
            self.metrics.request(Surface::Rest, response.status());
            return response;
        }
        let response = crate::rest::handle(
            &self.invoker,
            &self.consumers,
            key.port,
            listener,
            &published.plugins,
            self.config.limits.max_body_bytes,
            request,
        )
        .await;
        self.metrics.request(Surface::Rest, response.status());
        response
    }
}

/// The REST listeners' `Host` and `Origin` allow-lists, resolved once from the config.
pub struct RestPolicy {
    /// For listeners bound to a loopback address, and for the others.
    loopback_hosts: Vec<String>,
    other_hosts: Vec<String>,
    origins: Vec<String>,
    trust_forwarded_host: bool,
}

impl RestPolicy {
    pub fn new(config: &capgate_model::config::RestConfig) -> RestPolicy {
        RestPolicy {
            loopback_hosts: config.hosts_for(std::net::Ipv4Addr::LOCALHOST.into()),
            other_hosts: config.hosts_for(std::net::Ipv4Addr::UNSPECIFIED.into()),
            origins: config.origins(),
            trust_forwarded_host: config.trust_forwarded_host,
        }
    }
}

impl Shared {
    /// Checks a REST request's `Host` and `Origin` against the listener's allow-lists.
    fn rest_may_call<B>(
        &self,
        key: ListenKey,
        request: &http::Request<B>,
    ) -> Result<(), GatewayError> {
        let policy = &self.rest_policy;
        let address = self.config.listen.force_address.unwrap_or(key.address);
        let hosts = if address.is_loopback() {
            &policy.loopback_hosts
        } else {
            &policy.other_hosts
        };
        let host = origin::host_of(
            request.headers(),
            request.uri(),
            policy.trust_forwarded_host,
        );
        if !origin::host_allowed(host, hosts) {
            return Err(GatewayError::NotAllowed {
                what: "host",
                value: host.to_owned(),
            });
        }
        origin::origin_allowed(request.headers(), &policy.origins).map_err(|value| {
            GatewayError::NotAllowed {
                what: "origin",
                value,
            }
        })
    }
}

/// The handler of one listener: the shared state and the listener's key.
#[derive(Clone)]
pub struct Door {
    pub shared: Arc<Shared>,
    pub key: ListenKey,
}

impl server::Handler for Door {
    async fn handle(&self, request: http::Request<Incoming>) -> HttpResponse {
        self.shared.handle(self.key, request).await
    }
}
