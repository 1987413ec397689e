//! The MCP surface: every `type: mcp` adapter served as MCP tools over Streamable HTTP, both
//! protocol eras (2025-11-25 sessions and 2026-07-28 stateless), with rmcp.
//!
//! One rmcp `StreamableHttpService` per (listener, namespace) lives across reloads, so sessions
//! survive a publish; its tool list is swapped underneath when the adapter changes, and clients
//! are told with `notifications/tools/list_changed` (legacy sessions and `subscriptions/listen`
//! streams). Tool calls run through `invoke`, like REST; a plain stateless `tools/call` is
//! answered by `direct` without rmcp's per-request service. Only this module knows rmcp.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use opentelemetry::KeyValue;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorCode,
    Implementation, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig,
    SubscriptionFilter, Tool as McpTool, ToolAnnotations,
};
use rmcp::service::{NotificationContext, Peer, RequestContext, SubscriptionContext};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::session::store::SessionStore;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::access::{Entry, Timing};
use crate::consumer::{Caller, Changed, Consumers};
use crate::error::GatewayError;
use crate::invoke::{Inputs, Invoker, Outcome};
use crate::response::{self, HttpResponse};
use crate::trace::Traced;
use capgate_model::arguments::{Strictness, validate_arguments};
use capgate_model::config::McpConfig;
use capgate_model::consumers::{Call, Consumer, ConsumerSet, Target};
use capgate_model::snapshot::{ListenKey, Listener, McpAdapter, Snapshot, Tool};
use capgate_plugin::PluginSet;

mod direct;
/// The MCP headers the gateway reads on every message, named once (a lookup by `&str` parses
/// the name each time).
mod names {
    use http::HeaderName;

    pub(super) static MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");
    pub(super) static MCP_NAME: HeaderName = HeaderName::from_static("mcp-name");
    pub(super) static MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
    pub(super) static MCP_PROTOCOL_VERSION: HeaderName =
        HeaderName::from_static("mcp-protocol-version");
}
mod sessions;
mod store;

use sessions::{Book, Budgeted};

/// Every MCP endpoint of the gateway.
pub struct Hub {
    invoker: Arc<Invoker>,
    config: McpConfig,
    endpoints: Mutex<HashMap<(ListenKey, String), Arc<Endpoint>>>,
    /// Each listener's legacy sessions, all its endpoints together.
    books: Mutex<HashMap<ListenKey, Arc<Book>>>,
    /// Where sessions are remembered for the fleet (`mcp.session_store`), if anywhere.
    store: Option<Arc<dyn SessionStore>>,
}

struct Endpoint {
    registry: Arc<Registry>,
    handler: Handler,
    service: StreamableHttpService<Handler, Budgeted>,
    /// The listener's session and stream budgets.
    book: Arc<Book>,
    stop: CancellationToken,
}

/// The latest published version of one adapter with its tools in rmcp's form, and who to tell
/// when it changes. Requests do not run from here: each runs the adapter its request pinned
/// ([`Pinned`]); this is what they find when they pinned the latest one, and what `initialize`
/// describes.
struct Registry {
    latest: ArcSwap<Version>,
    /// Legacy (2025-era) sessions, to notify on change, with the consumer each was opened by.
    peers: Mutex<Vec<(Peer<RoleServer>, Option<String>)>>,
    /// 2026-era `subscriptions/listen` streams, to notify on change.
    changed: broadcast::Sender<Notice>,
}

/// Whose tool lists changed: everyone's (the adapter's tools did), or only what some
/// consumers see (the consumers file changed their scopes).
#[derive(Clone, Debug)]
enum Notice {
    Everyone,
    Consumers(Arc<HashSet<String>>),
}

impl Notice {
    /// Whether a session or stream opened by `consumer` (none: no consumer required) is told.
    fn reaches(&self, consumer: Option<&str>) -> bool {
        match self {
            Notice::Everyone => true,
            Notice::Consumers(names) => consumer.is_some_and(|name| names.contains(name)),
        }
    }
}

/// One version of an adapter and its tool list as MCP announces it.
struct Version {
    adapter: Arc<McpAdapter>,
    tools: Arc<Vec<McpTool>>,
}

impl Version {
    fn of(adapter: Arc<McpAdapter>) -> Version {
        let tools = Arc::new(adapter.tools.iter().map(|t| to_mcp_tool(t)).collect());
        Version { adapter, tools }
    }
}

/// What one MCP request runs with: the adapter and the plugin versions of the snapshot the
/// front door pinned for it, carried to rmcp's handler in the request's extensions.
#[derive(Clone)]
struct Pinned {
    adapter: Arc<McpAdapter>,
    plugins: PluginSet,
    /// The consumer calling, where the adapter requires one: it sees only the tools its scopes
    /// grant, and its tool calls count against its limits.
    caller: Option<Caller>,
    consumers: Option<Arc<Consumers>>,
    /// Whether the front door already counted this request's tool call (a stateless one).
    admitted: bool,
    /// The HTTP request's span, when traced: a tool call's span is its child (unless the
    /// call's `_meta` names a trace of its own).
    traced: Option<Traced>,
}

impl Pinned {
    /// Counts a call of `tool` against the caller's limits, unless the front door did.
    async fn admit(&self, tool: &Tool) -> Result<(), GatewayError> {
        let (Some(caller), Some(consumers), false) = (&self.caller, &self.consumers, self.admitted)
        else {
            return Ok(());
        };
        let call = Call {
            capability: &self.adapter.origin.capability,
            name: &tool.name,
        };
        consumers.admit(caller, &call).await.map(drop)
    }

    /// The tool `name`, if this request's caller may see it.
    fn tool(&self, name: &str) -> Option<&Arc<Tool>> {
        self.adapter.tool(name).filter(|tool| self.sees(tool))
    }

    fn sees(&self, tool: &Tool) -> bool {
        self.caller
            .as_ref()
            .is_none_or(|caller| caller.may(&target(&self.adapter, tool)))
    }
}

impl Registry {
    fn new(adapter: Arc<McpAdapter>) -> Registry {
        Registry {
            latest: ArcSwap::from_pointee(Version::of(adapter)),
            peers: Mutex::new(Vec::new()),
            changed: broadcast::channel(16).0,
        }
    }

    /// Installs a newly published version of the adapter; returns whether its tool list
    /// changed (clients are told once it is published, by [`Registry::notify`]).
    fn update(&self, adapter: Arc<McpAdapter>) -> bool {
        let latest = self.latest.load();
        let changed = !latest.adapter.lists_same_tools(&adapter);
        let tools = if changed {
            Version::of(adapter.clone()).tools
        } else {
            latest.tools.clone()
        };
        self.latest.store(Arc::new(Version { adapter, tools }));
        changed
    }

    /// The tool list of `adapter` in rmcp's form: the cached one when it is the latest version.
    fn tools_of(&self, adapter: &Arc<McpAdapter>) -> Arc<Vec<McpTool>> {
        let latest = self.latest.load();
        if Arc::ptr_eq(&latest.adapter, adapter) {
            latest.tools.clone()
        } else {
            Version::of(adapter.clone()).tools
        }
    }

    fn notify(&self, notice: Notice) {
        let _ = self.changed.send(notice.clone());
        let mut peers = self.peers.lock().expect("not poisoned");
        peers.retain(|(peer, _)| !peer.is_transport_closed());
        for (peer, _) in peers.iter().filter(|(_, c)| notice.reaches(c.as_deref())) {
            let peer = peer.clone();
            tokio::spawn(async move {
                if let Err(error) = peer.notify_tool_list_changed().await {
                    tracing::debug!(%error, "could not notify a session of a tool list change");
                }
            });
        }
    }
}

/// What a scope is matched against when a consumer lists or calls `tool` of `adapter`.
fn target<'a>(adapter: &'a McpAdapter, tool: &'a Tool) -> Target<'a> {
    Target {
        capability: &adapter.origin.capability,
        adapter: &adapter.namespace,
        name: &tool.name,
        read_only: tool.hints.read_only,
    }
}

/// Each consumer of a consumers-file change, by name, as it was before and is after (`None`
/// where it did not exist): indexed once for every adapter to compare.
type ByName<'a> = HashMap<&'a str, (Option<&'a Consumer>, Option<&'a Consumer>)>;

fn by_name<'a>(before: &'a ConsumerSet, after: &'a ConsumerSet) -> ByName<'a> {
    let mut out: ByName<'a> = HashMap::new();
    for consumer in &before.consumers {
        out.entry(&consumer.name).or_default().0 = Some(consumer);
    }
    for consumer in &after.consumers {
        out.entry(&consumer.name).or_default().1 = Some(consumer);
    }
    out
}

/// The consumers who see a different set of `adapter`'s tools after the change than before.
fn seeing_other_tools(adapter: &McpAdapter, consumers: &ByName<'_>) -> HashSet<String> {
    let sees = |consumer: Option<&Consumer>, tool: &Tool| {
        consumer.is_some_and(|c| c.may(&target(adapter, tool)))
    };
    consumers
        .iter()
        .filter(|(_, (before, after))| {
            adapter
                .tools
                .iter()
                .any(|tool| sees(*before, tool) != sees(*after, tool))
        })
        .map(|(name, _)| (*name).to_owned())
        .collect()
}

fn to_mcp_tool(tool: &Tool) -> McpTool {
    let mut out = McpTool::new_with_raw(
        tool.name.clone(),
        tool.description.clone().map(Cow::Owned),
        tool.input_schema.clone(),
    );
    if let Some(title) = &tool.title {
        out = out.with_title(title.clone());
    }
    // Only what the file says: no hints and no label, no annotations.
    let given = &tool.hints.given;
    if given.is_empty() && tool.title.is_none() {
        return out;
    }
    out.with_annotations(ToolAnnotations::from_raw(
        tool.title.clone(),
        given.read_only,
        given.destructive,
        given.idempotent,
        given.open_world,
    ))
}

impl Hub {
    pub fn new(invoker: Arc<Invoker>, config: McpConfig) -> Hub {
        let store = config.session_store.as_deref().and_then(|url| {
            // A session idle for its whole timeout is gone anyway; a minute more covers clocks.
            let ttl = config.session_idle_timeout + Duration::from_secs(60);
            match store::RedisSessions::new(url, ttl, Duration::from_millis(500)) {
                Ok(store) => Some(Arc::new(store) as Arc<dyn SessionStore>),
                Err(error) => {
                    tracing::error!("{error}; MCP sessions stay with the replica that opened them");
                    None
                }
            }
        });
        Hub {
            invoker,
            config,
            endpoints: Mutex::new(HashMap::new()),
            books: Mutex::new(HashMap::new()),
            store,
        }
    }

    fn endpoint(&self, key: ListenKey, adapter: &Arc<McpAdapter>) -> Arc<Endpoint> {
        let registry = Arc::new(Registry::new(adapter.clone()));
        let stop = CancellationToken::new();
        let handler = Handler {
            registry: registry.clone(),
            invoker: self.invoker.clone(),
        };
        let mut sessions = LocalSessionManager::default();
        sessions.session_config.keep_alive = Some(self.config.session_idle_timeout);
        // Hosts are checked by `handle` (it knows about proxies); origins by rmcp.
        let config = StreamableHttpServerConfig::default()
            .disable_allowed_hosts()
            .with_allowed_origins(self.config.allowed_origins.clone())
            .enforce_origin_validation()
            .with_max_request_body_bytes(self.config.max_body_bytes)
            .with_json_response(true)
            .with_cancellation_token(stop.clone());
        let mut config = config;
        config.session_store = self.store.clone();
        let book = self
            .books
            .lock()
            .expect("not poisoned")
            .entry(key)
            .or_insert_with(|| Book::new(&self.config))
            .clone();
        let sessions = Arc::new(Budgeted {
            inner: Arc::new(sessions),
            book: book.clone(),
        });
        let service = {
            let handler = handler.clone();
            StreamableHttpService::new(move || Ok(handler.clone()), sessions.clone(), config)
        };
        Arc::new(Endpoint {
            registry,
            handler,
            service,
            book,
            stop,
        })
    }

    /// Creates endpoints for new adapters and updates changed ones, before `snapshot` is
    /// published. Returns the adapters whose tool lists changed, for [`Hub::notify`].
    pub fn sync(&self, snapshot: &Snapshot) -> Vec<(ListenKey, String)> {
        let mut endpoints = self.endpoints.lock().expect("not poisoned");
        let mut changed = Vec::new();
        for (key, listener) in &snapshot.listeners {
            for (namespace, adapter) in &listener.mcp {
                match endpoints.get(&(*key, namespace.clone())) {
                    Some(endpoint) => {
                        if endpoint.registry.update(adapter.clone()) {
                            changed.push((*key, namespace.clone()));
                        }
                    }
                    None => {
                        endpoints.insert((*key, namespace.clone()), self.endpoint(*key, adapter));
                    }
                }
            }
        }
        changed
    }

    /// Tells the clients of each adapter in `changed` that its tool list changed: after the
    /// snapshot with the change is published, so that the `tools/list` they send next sees it.
    pub fn notify(&self, changed: &[(ListenKey, String)]) {
        let endpoints = self.endpoints.lock().expect("not poisoned");
        for key in changed {
            if let Some(endpoint) = endpoints.get(key) {
                endpoint.registry.notify(Notice::Everyone);
            }
        }
    }

    /// Tells the sessions and streams of each consumer whose visible tools the consumers
    /// file's change changed (new or narrower scopes, a consumer added or removed) that its
    /// tool list changed; the other consumers' hear nothing.
    pub fn notify_consumers(&self, changed: &Changed) {
        let consumers = by_name(&changed.before, &changed.after);
        for endpoint in self.endpoints.lock().expect("not poisoned").values() {
            let adapter = endpoint.registry.latest.load().adapter.clone();
            let names = seeing_other_tools(&adapter, &consumers);
            if !names.is_empty() {
                endpoint.registry.notify(Notice::Consumers(Arc::new(names)));
            }
        }
    }

    /// Closes the endpoints (and their sessions and streams) of adapters `snapshot` no longer
    /// has, after it was published.
    pub fn prune(&self, snapshot: &Snapshot) {
        let mut endpoints = self.endpoints.lock().expect("not poisoned");
        endpoints.retain(|(key, namespace), endpoint| {
            let keep = snapshot
                .listener(key)
                .is_some_and(|l| l.mcp.contains_key(namespace));
            if !keep {
                endpoint.stop.cancel();
            }
            keep
        });
    }

    /// Closes every session and stream (shutdown).
    pub fn close_all(&self) {
        for endpoint in self.endpoints.lock().expect("not poisoned").values() {
            endpoint.stop.cancel();
        }
    }

    /// The OAuth 2.0 Protected Resource Metadata (RFC 9728) of the MCP endpoint `path` names
    /// (`/.well-known/oauth-protected-resource/mcp/<ns>`), for an adapter that requires a
    /// consumer: the resource, the JWT issuers that may grant tokens for it, and how to send
    /// them. `None` when `path` is not such a document's.
    pub fn protected_resource(
        listener: &Listener,
        port: u16,
        consumers: &Consumers,
        path: &str,
        headers: &http::HeaderMap,
    ) -> Option<HttpResponse> {
        let endpoint = path.strip_prefix(METADATA_PREFIX)?;
        let adapter = match endpoint.trim_end_matches('/').strip_prefix("/mcp/") {
            Some(namespace) => listener.mcp.get(namespace)?,
            None if endpoint == "/mcp" || endpoint.is_empty() => listener.default_mcp()?,
            None => return None,
        };
        if !consumers.required(port, &adapter.origin.capability, &adapter.namespace) {
            return None;
        }
        let mut document = json!({
            "resource": format!("{}/mcp/{}", consumers.public_base(headers), adapter.namespace),
            "bearer_methods_supported": ["header"],
            "resource_name": format!("{} ({})", adapter.origin.capability, adapter.namespace),
        });
        let issuers = consumers.issuers();
        if !issuers.is_empty() {
            document["authorization_servers"] = json!(issuers);
        }
        let mut answer = http::Response::new(response::full(document.to_string()));
        answer.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        Some(answer)
    }

    /// Whether `path` is an MCP path on `listener`: `/mcp` (the only adapter) or `/mcp/<ns>`,
    /// and `/` on a listener that serves MCP only (the format's reference engine answers its
    /// one adapter at any path).
    pub fn wants(listener: &Listener, path: &str) -> bool {
        !listener.mcp.is_empty()
            && (path == "/mcp"
                || path == "/mcp/"
                || path.starts_with("/mcp/")
                || (path == "/" && listener.rest.is_empty()))
    }

    /// Answers one request for an MCP path, with the adapter and plugins of the snapshot the
    /// request pinned (`listener` is from it); traced, when tracing is on, as an HTTP request
    /// (a tool call has a span of its own under it).
    pub async fn handle<B>(
        &self,
        key: ListenKey,
        listener: &Listener,
        plugins: &PluginSet,
        consumers: &Arc<Consumers>,
        request: http::Request<B>,
    ) -> HttpResponse
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::fmt::Display + 'static,
    {
        let traced = self.invoker.tracing().request(request.headers(), || {
            let name = format!("{} {}", request.method(), request.uri().path());
            (name, http_attributes(key.port, &request))
        });
        let response = crate::trace::within(
            traced.as_ref(),
            self.answer(key, listener, plugins, consumers, request, traced.clone()),
        )
        .await;
        if let Some(traced) = &traced {
            traced.answered(response.status().as_u16());
        }
        response
    }

    async fn answer<B>(
        &self,
        key: ListenKey,
        listener: &Listener,
        plugins: &PluginSet,
        consumers: &Arc<Consumers>,
        mut request: http::Request<B>,
        traced: Option<Traced>,
    ) -> HttpResponse
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::fmt::Display + 'static,
    {
        let path = request.uri().path().trim_end_matches('/');
        let adapter = match path.strip_prefix("/mcp/") {
            Some(namespace) => listener.mcp.get(namespace),
            None => listener.default_mcp(),
        };
        let Some(adapter) = adapter else {
            let known: Vec<&str> = listener.mcp.keys().map(String::as_str).collect();
            let message = if path == "/mcp" || path.is_empty() {
                format!(
                    "several MCP adapters share this port; use /mcp/<namespace>, one of: {}",
                    known.join(", ")
                )
            } else {
                format!(
                    "no MCP adapter at {path}; known: /mcp/{}",
                    known.join(", /mcp/")
                )
            };
            return jsonrpc_error(StatusCode::NOT_FOUND, -32601, &message);
        };
        if let Err(host) = self.check_host(request.headers(), request.uri()) {
            tracing::warn!(%host, "refused an MCP request for a host that is not allowed");
            return jsonrpc_error(
                StatusCode::FORBIDDEN,
                -32600,
                &format!("host {host:?} is not allowed"),
            );
        }
        // Where a consumer is required, its key replaces the adapter's own authentication.
        let (caller, admitted) =
            if consumers.required(key.port, &adapter.origin.capability, &adapter.namespace) {
                match consumer_of(consumers, adapter, request.headers(), &self.invoker).await {
                    Ok(admitted) => admitted,
                    Err(refused) => return refused,
                }
            } else {
                if let Some(auth) = &adapter.auth
                    && let Err(error) =
                        crate::auth::check(auth, request.headers(), request.uri().query())
                {
                    return response::error(&error);
                }
                (None, false)
            };
        request.extensions_mut().insert(Pinned {
            adapter: adapter.clone(),
            plugins: plugins.clone(),
            consumers: caller.as_ref().map(|_| consumers.clone()),
            caller,
            admitted,
            traced,
        });
        let endpoint = self
            .endpoints
            .lock()
            .expect("not poisoned")
            .get(&(key, adapter.namespace.clone()))
            .cloned();
        // rmcp opens a session inside this task: the budget learns whose it is from here.
        let peer = request
            .extensions()
            .get::<crate::server::Peer>()
            .map(|p| p.0.ip())
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        // A `subscriptions/listen` stream holds a place in its listener's budget while open.
        let place = match &endpoint {
            Some(endpoint) if is_listen(request.headers()) => match endpoint.book.open_stream(peer)
            {
                Ok(place) => Some(place),
                Err(why) => {
                    tracing::warn!(%peer, "refused a subscriptions/listen stream: {why}");
                    let mut response = jsonrpc_error(StatusCode::TOO_MANY_REQUESTS, -32000, why);
                    response.headers_mut().insert(
                        http::header::RETRY_AFTER,
                        http::HeaderValue::from_static("30"),
                    );
                    return response;
                }
            },
            _ => None,
        };
        let response = self.dispatch(endpoint, peer, request).await;
        match place {
            Some(place) => response.map(|body| {
                // The place is given back when the stream's body is dropped.
                http_body_util::BodyExt::boxed(Holding {
                    body,
                    _place: place,
                })
            }),
            None => response,
        }
    }

    async fn dispatch<B>(
        &self,
        endpoint: Option<Arc<Endpoint>>,
        peer: std::net::IpAddr,
        request: http::Request<B>,
    ) -> HttpResponse
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::fmt::Display + 'static,
    {
        let closing = request.method() == http::Method::DELETE;
        let mut response = match endpoint {
            Some(endpoint) if self.config.direct_tool_calls => {
                sessions::PEER
                    // Boxed: about 10 KB, moved four times per call otherwise (BENCHMARKS.md,
                    // "A caveat on callgrind's `memcpy`": fewer instructions, no faster).
                    .scope(
                        peer,
                        Box::pin(endpoint.serve(request, self.config.max_body_bytes)),
                    )
                    .await
            }
            Some(endpoint) => {
                sessions::PEER
                    .scope(peer, Box::pin(endpoint.service.handle(request)))
                    .await
            }
            None => jsonrpc_error(
                StatusCode::NOT_FOUND,
                -32601,
                "this MCP adapter is being removed",
            ),
        };
        // A session closed by DELETE: 204, which the SDKs take for a clean termination (rmcp
        // answers 202, which the Python SDK logs as a failed one).
        if closing && response.status() == StatusCode::ACCEPTED {
            *response.status_mut() = StatusCode::NO_CONTENT;
            *response.body_mut() = response::full(Bytes::new());
        }
        response
    }

    /// Checks the `Host` (or, behind a trusted proxy, `X-Forwarded-Host`) against the allow-list,
    /// ignoring the port. An empty list allows any host.
    fn check_host(&self, headers: &HeaderMap, uri: &http::Uri) -> Result<(), String> {
        let host = crate::origin::host_of(headers, uri, self.config.trust_forwarded_host);
        if crate::origin::host_allowed(host, &self.config.allowed_hosts) {
            Ok(())
        } else {
            Err(host.to_owned())
        }
    }
}

/// Whether a request is a 2026-era `subscriptions/listen` (its `Mcp-Method` header says so).
fn is_listen(headers: &HeaderMap) -> bool {
    headers
        .get(&names::MCP_METHOD)
        .is_some_and(|v| v.as_bytes() == b"subscriptions/listen")
}

/// A response body that holds something (a stream's budget place) until it is dropped.
struct Holding<T> {
    body: crate::response::HttpBody,
    _place: T,
}

impl<T: Unpin> http_body::Body for Holding<T> {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

fn jsonrpc_error(status: StatusCode, code: i32, message: &str) -> HttpResponse {
    let body = json!({"jsonrpc": "2.0", "id": null, "error": {"code": code, "message": message}});
    response::json_bytes(status, body.to_string())
}

/// An MCP HTTP request's span attributes.
fn http_attributes<B>(port: u16, request: &http::Request<B>) -> Vec<KeyValue> {
    let mut attributes = vec![
        KeyValue::new("http.request.method", request.method().as_str().to_owned()),
        KeyValue::new("url.path", request.uri().path().to_owned()),
        KeyValue::new("server.port", i64::from(port)),
    ];
    let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
    if let Some(version) = header("mcp-protocol-version") {
        attributes.push(KeyValue::new("mcp.protocol.version", version.to_owned()));
    }
    if let Some(method) = header("mcp-method") {
        attributes.push(KeyValue::new("mcp.method.name", method.to_owned()));
    }
    attributes
}

/// rmcp's view of one adapter: cheap to clone (rmcp makes one per session and per request).
#[derive(Clone)]
struct Handler {
    registry: Arc<Registry>,
    invoker: Arc<Invoker>,
}

impl Handler {
    /// Runs one call of `tool`: validates the arguments, then calls the operation through
    /// `invoke`. Dropping the future aborts the upstream call.
    async fn run(
        &self,
        tool: &Tool,
        pinned: &Pinned,
        arguments: Option<Map<String, Value>>,
        progress: &Progress,
        meta: crate::trace::MetaContext<'_>,
        compact: bool,
    ) -> Answer {
        let timing = Timing::start();
        let request_id = crate::invoke::request_id();
        let bytes_in = if self.invoker.access().is_on() {
            arguments
                .as_ref()
                .map_or(0, |a| serde_json::to_vec(a).map_or(0, |v| v.len() as u64))
        } else {
            0
        };
        let traced = pinned.traced.as_ref().map(|http| {
            // As the MCP semantic conventions name and describe a tool call.
            let mut attributes = vec![
                KeyValue::new("mcp.method.name", "tools/call"),
                KeyValue::new("gen_ai.tool.name", tool.name.clone()),
                KeyValue::new("gen_ai.operation.name", "execute_tool"),
                KeyValue::new(
                    "capgate.capability",
                    pinned.adapter.origin.capability.to_string(),
                ),
                KeyValue::new("capgate.request_id", request_id.to_string()),
            ];
            if let Some(caller) = &pinned.caller {
                attributes.push(KeyValue::new(
                    "capgate.consumer.name",
                    caller.consumer.name.clone(),
                ));
            }
            http.request_from_meta(format!("tools/call {}", tool.name), meta, attributes)
        });
        let (status, result) = crate::access::recording(
            timing.exchange.clone(),
            crate::trace::within(
                traced.as_ref(),
                self.call(tool, pinned, arguments, progress, &request_id, compact),
            ),
        )
        .await;
        if let Some(traced) = &traced {
            traced.answered(status);
            if result.is_error() {
                traced.set(KeyValue::new("error.type", "tool_error"));
            }
        }
        if let Some(caller) = &pinned.caller {
            self.invoker.metrics().consumer_call(
                &caller.consumer.name,
                &pinned.adapter.origin.capability,
                &tool.name,
                status,
            );
        }
        if self.invoker.access().is_on() {
            let caller = pinned.caller.as_ref();
            let mut entry = Entry {
                request_id: &request_id,
                surface: "mcp",
                consumer: caller.map(|c| c.consumer.name.as_str()),
                credential: caller.map(|c| c.credential.as_str()),
                capability: Some(&pinned.adapter.origin.capability),
                adapter: Some(&pinned.adapter.namespace),
                operation: Some(&tool.name),
                method: "POST",
                route: "tools/call",
                status,
                bytes_in,
                bytes_out: result.text_len(),
                limit: caller
                    .filter(|c| !c.consumer.limits.is_empty())
                    .map(|_| "admitted"),
                trace_id: traced.as_ref().map(Traced::trace_id),
                ..Entry::default()
            };
            timing.finish(&mut entry);
            self.invoker.access().write(&entry);
        }
        result
    }

    /// The tool call itself: its arguments checked, the operation invoked; the status the
    /// operation answered (or the error's) with the result.
    async fn call(
        &self,
        tool: &Tool,
        pinned: &Pinned,
        arguments: Option<Map<String, Value>>,
        progress: &Progress,
        request_id: &Arc<str>,
        compact: bool,
    ) -> (u16, Answer) {
        let values = match validate_arguments(
            &tool.inputs,
            into_body(tool, arguments.unwrap_or_default()),
            Strictness::Exact,
        ) {
            Ok(values) => values,
            Err(error) => {
                let result = text_error(format!("invalid arguments: {error}"));
                return (400, Answer::Result(result));
            }
        };
        progress
            .step(1, "arguments accepted; calling the operation")
            .await;
        let inputs = Inputs {
            values,
            headers: HeaderMap::new(),
            forward: None,
            request_id: request_id.clone(),
            consumer: pinned.caller.as_ref().map(|c| c.consumer.clone()),
        };
        let invoked = self
            .invoker
            .invoke(&tool.operation, inputs, &pinned.plugins)
            .await;
        let (status, result) = match invoked {
            Ok(outcome) => {
                progress
                    .step(2, &format!("answered {}", outcome.status.as_u16()))
                    .await;
                let answer = match compact.then(|| compact_object(&outcome)).flatten() {
                    Some(compact) => Answer::Object(compact),
                    None => Answer::Result(tool_result(&outcome)),
                };
                (outcome.status.as_u16(), answer)
            }
            Err(error) => {
                progress.step(2, &format!("failed: {}", error.code())).await;
                let result = gateway_error_result(&error);
                (error.status().as_u16(), Answer::Result(result))
            }
        };
        progress.step(3, "result ready").await;
        (status, result)
    }
}

/// What the front door pinned for the HTTP request whose message carries `extensions`.
fn pinned_in(extensions: &rmcp::model::Extensions) -> Option<&Pinned> {
    extensions
        .get::<http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Pinned>())
}

impl Handler {
    /// What the front door pinned for this request; the latest version for messages that reach
    /// rmcp without one (none should: every request passes `Hub::handle`).
    fn pinned(&self, context: &RequestContext<RoleServer>) -> Pinned {
        pinned_in(&context.extensions)
            .cloned()
            .unwrap_or_else(|| Pinned {
                adapter: self.registry.latest.load().adapter.clone(),
                plugins: self.invoker.loaded_plugins(),
                caller: None,
                consumers: None,
                admitted: false,
                traced: None,
            })
    }
}

impl ServerHandler for Handler {
    fn get_info(&self) -> ServerConfig {
        let latest = self.registry.latest.load();
        let adapter = &latest.adapter;
        let capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_tool_list_changed()
            .build();
        // The adapter's namespace, as the format's reference engine names its server; the
        // version is the file's (its `info` date), else capgate's.
        let version = adapter
            .version
            .clone()
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned());
        let mut server = Implementation::new(adapter.namespace.clone(), version);
        server.title = Some(adapter.title.clone());
        let mut info = ServerConfig::new(capabilities).with_server_info(server);
        if let Some(description) = &adapter.description {
            info = info.with_instructions(description.clone());
        }
        info
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let pinned = self.pinned(&context);
        let tools = self.registry.tools_of(&pinned.adapter);
        let tools = match &pinned.caller {
            None => tools.to_vec(),
            // Only what the consumer's scopes grant (a tool it may not call does not exist
            // for it).
            Some(_) => tools
                .iter()
                .filter(|t| {
                    pinned
                        .adapter
                        .tool(&t.name)
                        .is_some_and(|tool| pinned.sees(tool))
                })
                .cloned()
                .collect(),
        };
        Ok(ListToolsResult::with_all_items(tools))
    }

    fn get_tool(&self, name: &str) -> Option<McpTool> {
        // rmcp asks without a request context (to check `Mcp-Param-*` headers): the latest.
        self.registry
            .latest
            .load()
            .tools
            .iter()
            .find(|t| t.name == name)
            .cloned()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        // The adapter and plugins of the snapshot this request pinned, for the whole call.
        let pinned = self.pinned(&context);
        let Some(tool) = pinned.tool(&request.name) else {
            return Err(ErrorData::invalid_params(
                format!("unknown tool: {}", request.name),
                None,
            ));
        };
        if let Err(error) = pinned.admit(tool).await {
            return Err(ErrorData::new(
                ErrorCode(LIMITED),
                error.to_string(),
                Some(retry_data(&error)),
            ));
        }
        self.invoker.metrics().tool_call("rmcp");
        let progress = Progress::of(&context);
        let meta = request
            .meta
            .as_ref()
            .map(|meta| crate::trace::MetaContext::of(&meta.0.0))
            .unwrap_or_default();
        tokio::select! {
            result = self.run(tool, &pinned, request.arguments, &progress, meta, false) => Ok(result.into_result().into()),
            () = context.ct.cancelled() => {
                tracing::info!(tool = %tool.name, "tool call cancelled by the client; upstream call aborted");
                Err(ErrorData::internal_error("the request was cancelled", None))
            }
        }
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        let consumer = pinned_in(&context.extensions)
            .and_then(|pinned| pinned.caller.as_ref())
            .map(|caller| caller.consumer.name.clone());
        let mut peers = self.registry.peers.lock().expect("not poisoned");
        peers.retain(|(peer, _)| !peer.is_transport_closed());
        peers.push((context.peer, consumer));
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        Some(requested.supported_by(&self.get_info().capabilities))
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        let consumer = self
            .pinned(context.request_context())
            .caller
            .map(|caller| caller.consumer.name.clone());
        let mut changes = self.registry.changed.subscribe();
        loop {
            tokio::select! {
                () = context.cancelled() => return Ok(()),
                change = changes.recv() => match change {
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                    Ok(notice) if !notice.reaches(consumer.as_deref()) => {}
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        if let Err(error) = context.sink().notify_tool_list_changed().await {
                            tracing::debug!(%error, "a subscription stream closed");
                            return Ok(());
                        }
                    }
                },
            }
        }
    }
}

/// The consumer calling `adapter` (else a 401 that points to the protected resource
/// metadata), and whether its call was counted here: a stateless tool call is, so that past a
/// limit it is an HTTP 429 (a session's calls are counted by `call_tool`).
async fn consumer_of(
    consumers: &Consumers,
    adapter: &McpAdapter,
    headers: &http::HeaderMap,
    invoker: &Invoker,
) -> Result<(Option<Caller>, bool), HttpResponse> {
    let caller = match consumers.identify(headers).await {
        Ok(caller) => caller,
        Err(error) => {
            let mut refused = response::error(&error);
            let metadata = format!(
                "{}{METADATA_PREFIX}/mcp/{}",
                consumers.public_base(headers),
                adapter.namespace
            );
            if let Some(value) = response::www_authenticate(&error, Some(&metadata)) {
                refused
                    .headers_mut()
                    .insert(http::header::WWW_AUTHENTICATE, value);
            }
            return Err(refused);
        }
    };
    let visible = stateless_tool_call(headers)
        .and_then(|name| adapter.tool(name))
        .filter(|tool| caller.may(&target(adapter, tool)));
    let Some(tool) = visible else {
        return Ok((Some(caller), false));
    };
    let call = Call {
        capability: &adapter.origin.capability,
        name: &tool.name,
    };
    let timing = Timing::start();
    match consumers.admit(&caller, &call).await {
        Ok(_) => Ok((Some(caller), true)),
        Err(error) => {
            let refused = limited(&error);
            // A call refused here never reaches the tool: said in the metrics and the log.
            let status = refused.status().as_u16();
            invoker.metrics().consumer_call(
                &caller.consumer.name,
                &adapter.origin.capability,
                &tool.name,
                status,
            );
            if invoker.access().is_on() {
                let request_id = crate::invoke::request_id();
                let mut entry = Entry {
                    request_id: &request_id,
                    surface: "mcp",
                    consumer: Some(&caller.consumer.name),
                    credential: Some(&caller.credential),
                    capability: Some(&adapter.origin.capability),
                    adapter: Some(&adapter.namespace),
                    operation: Some(&tool.name),
                    method: "POST",
                    route: "tools/call",
                    status,
                    limit: Some(if status == 429 {
                        "limited"
                    } else {
                        "unavailable"
                    }),
                    ..Entry::default()
                };
                timing.finish(&mut entry);
                invoker.access().write(&entry);
            }
            Err(refused)
        }
    }
}

/// The arguments of `tool` with those its schema announces as the body's own fields moved into
/// `body` (an object given as `body` keeps its fields; a top-level one of the same name wins).
fn into_body(tool: &Tool, mut arguments: Map<String, Value>) -> Map<String, Value> {
    if tool.flattened.is_empty() {
        return arguments;
    }
    // In the caller's order, so that the form is the one a `body` of the same fields sends.
    let names: Vec<String> = arguments
        .keys()
        .filter(|k| tool.flattened.contains(k))
        .cloned()
        .collect();
    let mut moved = Map::new();
    for name in names {
        if let Some(value) = arguments.remove(&name) {
            moved.insert(name, value);
        }
    }
    if moved.is_empty() {
        return arguments;
    }
    match arguments.get_mut("body") {
        Some(Value::Object(body)) => body.extend(moved),
        Some(_) => {
            // A `body` that is not an object is the caller's mistake: validation says so.
            return arguments;
        }
        None => {
            arguments.insert("body".into(), Value::Object(moved));
        }
    }
    arguments
}

/// Where protected resource metadata documents are (RFC 9728, section 3).
pub const METADATA_PREFIX: &str = "/.well-known/oauth-protected-resource";

/// The JSON-RPC error code of a call refused by a consumer's limits (server-defined range).
const LIMITED: i32 = -32029;

/// What a refused call's JSON-RPC error carries: when to retry, and the limit.
fn retry_data(error: &GatewayError) -> Value {
    match error {
        GatewayError::RateLimited {
            retry_after,
            policy,
        } => json!({
            "retry_after_ms": retry_after.as_millis().max(1) as u64,
            "policy": {"name": policy.name, "calls": policy.quota, "window_seconds": policy.window},
        }),
        _ => json!({"retry_after_ms": 1000}),
    }
}

/// A refused stateless call: the HTTP status and headers of the error (429 and `Retry-After`,
/// or 503), with a JSON-RPC error body that says when to retry.
fn limited(error: &GatewayError) -> HttpResponse {
    let mut answer = response::error(error);
    let body = json!({"jsonrpc": "2.0", "id": null, "error": {"code": LIMITED,
        "message": error.to_string(), "data": retry_data(error)}});
    *answer.body_mut() = response::full(body.to_string());
    answer
}

/// The tool a stateless (2026-07-28) `tools/call` names in its `Mcp-Name` header, which rmcp
/// checks against the body.
fn stateless_tool_call(headers: &http::HeaderMap) -> Option<&str> {
    if headers.contains_key(&names::MCP_SESSION_ID)
        || headers
            .get(&names::MCP_METHOD)
            .map(http::HeaderValue::as_bytes)
            != Some(b"tools/call")
    {
        return None;
    }
    headers.get(&names::MCP_NAME)?.to_str().ok()
}

/// Progress of a tool call, reported when the client asked for it with a `progressToken`:
/// three steps (arguments accepted, operation answered, result ready).
struct Progress {
    to: Option<(rmcp::model::ProgressToken, Peer<RoleServer>)>,
}

impl Progress {
    const STEPS: f64 = 3.0;

    fn of(context: &RequestContext<RoleServer>) -> Progress {
        Progress {
            to: context
                .meta
                .get_progress_token()
                .map(|token| (token, context.peer.clone())),
        }
    }

    /// No progress reports (the client asked for none).
    fn none() -> Progress {
        Progress { to: None }
    }

    async fn step(&self, step: u32, message: &str) {
        let Some((token, peer)) = &self.to else {
            return;
        };
        let notification =
            rmcp::model::ProgressNotificationParam::new(token.clone(), f64::from(step))
                .with_total(Self::STEPS)
                .with_message(message);
        if let Err(error) = peer.notify_progress(notification).await {
            tracing::debug!(%error, "could not send a progress notification");
        }
    }
}

fn text_error(message: String) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message)])
}

/// An upstream answer as a tool result: the JSON as `structuredContent` plus a text copy;
/// an upstream status of 400 or more is an error result carrying the upstream error.
/// What a tool call answers: rmcp's result, or (where the caller asked for it: the direct path)
/// a successful result whose structured content is an object, kept as its compact JSON text,
/// which is also the result's text: written out without building a tree of it.
pub(super) enum Answer {
    Result(CallToolResult),
    Object(Compact),
}

/// An object's compact JSON, and that JSON as a JSON string when the minifier wrote both in
/// one pass (the result's text, escaped: otherwise a second pass over every byte).
#[derive(Debug, PartialEq)]
pub(super) struct Compact {
    pub(super) json: String,
    pub(super) quoted: Option<String>,
}

impl Answer {
    fn into_result(self) -> CallToolResult {
        match self {
            Answer::Result(result) => result,
            Answer::Object(compact) => CallToolResult::structured(
                serde_json::from_str(&compact.json).expect("the compact JSON of an object"),
            ),
        }
    }

    fn is_error(&self) -> bool {
        match self {
            Answer::Result(result) => result.is_error == Some(true),
            Answer::Object(_) => false,
        }
    }

    /// The length of the result's text, for the access log.
    fn text_len(&self) -> u64 {
        match self {
            Answer::Result(result) => result
                .content
                .iter()
                .filter_map(|c| c.as_text())
                .map(|t| t.text.len() as u64)
                .sum(),
            Answer::Object(compact) => compact.json.len() as u64,
        }
    }
}

/// The compact JSON of a successful outcome's body when it is upstream bytes holding one JSON
/// object: what `tool_result` would serialize of it (as both the text and the structured
/// content), made by transcoding the bytes rather than parsing them into a `Value` (whose map
/// hashes every key) and serializing that twice. Duplicate keys, which a `Value` would merge,
/// are written as they came.
fn compact_object(outcome: &Outcome) -> Option<Compact> {
    let crate::invoke::Body::Raw(bytes) = &outcome.body else {
        return None;
    };
    if outcome.status.as_u16() >= 400
        || bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{')
    {
        return None;
    }
    match minified(bytes) {
        Some((json, quoted)) => Some(Compact {
            json,
            quoted: Some(quoted),
        }),
        None => transcoded(bytes).map(|json| Compact { json, quoted: None }),
    }
}

/// `bytes` (one JSON value) as serde_json's compact serializer writes it, by transcoding.
fn transcoded(bytes: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut from = serde_json::Deserializer::from_slice(bytes);
    serde_transcode::transcode(&mut from, &mut serde_json::Serializer::new(&mut out)).ok()?;
    from.end().ok()?;
    String::from_utf8(out).ok()
}

/// [`transcoded`]'s answer for the commonest body, at a fraction of its cost: the whitespace
/// between tokens taken out, when that is exactly what serde_json would write, that is when
/// no string holds an escape (serde_json writes its own: `\u00e9` as `é`) and every number is
/// an integer of at most 18 digits other than `-0` (it would reprint others: `1.50` as `1.5`,
/// `1e2` as `100.0`, `-0` as `-0.0`). `None` otherwise, or when `bytes` are not JSON.
///
/// The grammar is checked in the same pass (taking whitespace out of what is not JSON can make
/// JSON of it: `[1 2]`), with containers nested at most as deep as serde_json reads them.
/// The second string is the first as a JSON string, as serde_json writes it: written in the
/// same pass, since the only bytes it escapes are the quotes around the strings.
fn minified(bytes: &[u8]) -> Option<(String, String)> {
    /// The deepest nesting serde_json reads (its recursion limit is 128, the top level's
    /// container counted).
    const DEPTH: usize = 127;
    let mut open = [0u8; DEPTH];
    let mut depth = 0;
    let mut next = Next::Value { or_end: false };
    let mut out = Minified::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        if matches!(byte, b' ' | b'\t' | b'\n' | b'\r') {
            i += 1;
            continue;
        }
        // The token that starts at `i` ends before `end`.
        let mut end = i + 1;
        let mut value_ended = false;
        match (next, byte) {
            (Next::Value { or_end: true }, b']')
            | (Next::Key { or_end: true }, b'}')
            | (Next::CommaOrEnd, b']' | b'}') => {
                let expected = if byte == b']' { b'[' } else { b'{' };
                if depth == 0 || open[depth - 1] != expected {
                    return None;
                }
                depth -= 1;
                value_ended = true;
            }
            (Next::CommaOrEnd, b',') => {
                next = if open[depth - 1] == b'{' {
                    Next::Key { or_end: false }
                } else {
                    Next::Value { or_end: false }
                };
            }
            (Next::Colon, b':') => next = Next::Value { or_end: false },
            (Next::Value { .. } | Next::Key { .. }, b'"') => {
                // A string without escapes or control characters.
                end += bytes[end..]
                    .iter()
                    .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
                if bytes[end] != b'"' {
                    return None;
                }
                end += 1;
                out.string(&bytes[i..end]);
                if matches!(next, Next::Key { .. }) {
                    next = Next::Colon;
                } else {
                    value_ended = true;
                }
            }
            (Next::Value { .. }, b'{' | b'[') => {
                if depth == DEPTH {
                    return None;
                }
                open[depth] = byte;
                depth += 1;
                next = if byte == b'{' {
                    Next::Key { or_end: true }
                } else {
                    Next::Value { or_end: true }
                };
            }
            (Next::Value { .. }, b'-' | b'0'..=b'9') => {
                end = plain_integer_end(bytes, i)?;
                value_ended = true;
            }
            (Next::Value { .. }, b't' | b'f' | b'n') => {
                let word: &[u8] = match byte {
                    b't' => b"true",
                    b'f' => b"false",
                    _ => b"null",
                };
                if !bytes[i..].starts_with(word) {
                    return None;
                }
                end = i + word.len();
                value_ended = true;
            }
            _ => return None,
        }
        if byte != b'"' {
            out.token(&bytes[i..end]);
        }
        i = end;
        if value_ended {
            next = if depth == 0 {
                Next::Done
            } else {
                Next::CommaOrEnd
            };
        }
    }
    if next != Next::Done {
        return None;
    }
    out.finish()
}

/// What [`minified`] may read next.
#[derive(Clone, Copy, PartialEq)]
enum Next {
    /// A value (`]` too, right after `[`).
    Value {
        or_end: bool,
    },
    /// A key (`}` too, right after `{`).
    Key {
        or_end: bool,
    },
    Colon,
    /// `,` or the end of the open container.
    CommaOrEnd,
    /// Only whitespace: the value is whole.
    Done,
}

/// Where the integer token at `bytes[start..]` ends, when serde_json would write it as it is
/// (at most 18 digits, no leading zero, not `-0`).
#[inline]
fn plain_integer_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut end = start;
    while bytes
        .get(end)
        .is_some_and(|b| matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
    {
        end += 1;
    }
    let number = &bytes[start..end];
    let digits = number.strip_prefix(b"-").unwrap_or(number);
    let plain = !digits.is_empty()
        && digits.len() <= 18
        && digits.iter().all(u8::is_ascii_digit)
        && (digits.len() == 1 || digits[0] != b'0')
        && number != b"-0";
    plain.then_some(end)
}

/// [`minified`]'s two outputs: the compact JSON, and the same as a JSON string.
struct Minified {
    json: Vec<u8>,
    quoted: Vec<u8>,
}

impl Minified {
    fn with_capacity(capacity: usize) -> Minified {
        let mut quoted = Vec::with_capacity(capacity + capacity / 4 + 2);
        quoted.push(b'"');
        Minified {
            json: Vec::with_capacity(capacity),
            quoted,
        }
    }

    /// A token with no quote in it. (Punctuation, the commonest, is pushed: a copy of one
    /// byte is a call of `memcpy`.)
    #[inline]
    fn token(&mut self, token: &[u8]) {
        if let &[byte] = token {
            self.json.push(byte);
            self.quoted.push(byte);
        } else {
            self.json.extend_from_slice(token);
            self.quoted.extend_from_slice(token);
        }
    }

    /// A string token, quotes included, with no escape in it: only its quotes are escaped.
    #[inline]
    fn string(&mut self, string: &[u8]) {
        self.json.extend_from_slice(string);
        self.quoted.push(b'\\');
        self.quoted.extend_from_slice(&string[..string.len() - 1]);
        self.quoted.extend_from_slice(b"\\\"");
    }

    fn finish(mut self) -> Option<(String, String)> {
        self.quoted.push(b'"');
        Some((
            String::from_utf8(self.json).ok()?,
            String::from_utf8(self.quoted).ok()?,
        ))
    }
}

fn tool_result(outcome: &Outcome) -> CallToolResult {
    let failed = outcome.status.as_u16() >= 400;
    match outcome.body_json() {
        // An object is `structuredContent`, and its serialization the text.
        Some(value) if value.is_object() => {
            let value = value.into_owned();
            if failed {
                CallToolResult::structured_error(with_status(value, outcome.status))
            } else {
                CallToolResult::structured(value)
            }
        }
        // An array or a scalar is the text itself, as the format's reference engine answers
        // (its clients parse the text): `structuredContent` must be an object, so there is
        // none (and no tool declares an `outputSchema`).
        Some(value) => {
            let text = value.to_string();
            if failed {
                text_error(format!(
                    "upstream answered {}: {text}",
                    outcome.status.as_u16()
                ))
            } else {
                CallToolResult::success(vec![ContentBlock::text(text)])
            }
        }
        None => {
            let text = String::from_utf8_lossy(&outcome.body_bytes()).into_owned();
            if failed {
                text_error(format!(
                    "upstream answered {}: {text}",
                    outcome.status.as_u16()
                ))
            } else {
                CallToolResult::success(vec![ContentBlock::text(text)])
            }
        }
    }
}

fn with_status(mut value: Value, status: StatusCode) -> Value {
    if let Value::Object(map) = &mut value {
        map.insert("status".into(), Value::from(status.as_u16()));
    }
    value
}

/// A gateway error (bad input, unreachable upstream, timeout...) as an error result the model
/// can read, with the same Stripe-shaped body REST callers get.
fn gateway_error_result(error: &GatewayError) -> CallToolResult {
    CallToolResult::structured_error(with_status(error.to_json(), error.status()))
}

#[cfg(test)]
mod compact_tests {
    use super::*;

    #[test]
    fn a_compact_object_is_what_a_parsed_value_would_serialize_to() {
        let pretty = "{\n  \"id\": \"vs_1\",\n  \"amount\": 1e2,\n  \"big\": 18446744073709551615,\n  \"s\": \"\\u00e9\\/\\t\\\"x\\\"\",\n  \"a\": [ 1 , 2.50, {\"k\": null} ]\n}\n";
        let outcome = Outcome {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: crate::invoke::Body::Raw(Bytes::from(pretty)),
        };
        let parsed: Value = serde_json::from_str(pretty).unwrap();
        assert_eq!(
            compact_object(&outcome),
            Some(Compact {
                json: parsed.to_string(),
                quoted: None
            })
        );
        // The commonest body is minified, its quoted form written beside it.
        let plain = "{\n  \"id\": \"vs_1\",\n  \"n\": [1, -2, true, null, {}]\n}";
        let outcome = Outcome {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: crate::invoke::Body::Raw(Bytes::from(plain)),
        };
        let json: Value = serde_json::from_str(plain).unwrap();
        assert_eq!(
            compact_object(&outcome),
            Some(Compact {
                json: json.to_string(),
                quoted: Some(serde_json::to_string(&json.to_string()).unwrap())
            })
        );
        // Not an object, not JSON, or a failure: the usual path.
        for (status, body) in [
            (StatusCode::OK, "[1, 2]"),
            (StatusCode::OK, "{\"a\": 1} trailing"),
            (StatusCode::OK, "{\"a\": "),
            (StatusCode::NOT_FOUND, "{\"error\": {}}"),
        ] {
            let outcome = Outcome {
                status,
                headers: HeaderMap::new(),
                body: crate::invoke::Body::Raw(Bytes::from(body)),
            };
            assert_eq!(compact_object(&outcome), None, "{body}");
        }
    }

    #[test]
    fn a_minified_body_is_the_transcoded_one_or_none() {
        let session = serde_json::to_string_pretty(&serde_json::json!({
            "id": "vs_1", "object": "identity.verification_session", "created": 1_700_000_000,
            "livemode": false, "last_error": null, "metadata": {}, "options": {"document": {}},
            "redaction": null, "type": "document", "url": "https://verify.stripe.com/start/x",
            "amounts": [0, -1, 42, 999_999_999_999_999_999i64], "nested": [[], [{}], {"a": [true]}],
            "unicode": "é ü 😀 \u{7f}",
        }))
        .unwrap();
        let cases = [
            session.as_str(),
            "{}",
            " { \"a\" : [ 1 , { } , \"x y\" ] } \n",
            // What the minifier leaves to the transcoder (or to the usual path).
            "{\"s\": \"a\\\"b\"}",
            "{\"s\": \"\\u00e9\"}",
            "{\"f\": 1.50}",
            "{\"f\": 1e2}",
            "{\"z\": -0}",
            "{\"big\": 1234567890123456789}",
            "{\"big\": 18446744073709551616}",
            // Not JSON: neither answers.
            "[1 2]",
            "{\"a\": 01}",
            "{\"a\": -}",
            "{\"a\": 1",
            "{\"a\": \"open}",
            "{\"a\": 1} x",
            "{\"a\": tru}",
            "{\"a\": \"\u{1}\"}",
            "{\"a\" 1}",
            "{\"a\": 1,}",
            "[1,]",
            "{\"a\": 1]",
            "[}",
            "{1: 2}",
            "{\"a\": 1}{}",
            "{\"a\": [1, 2}",
            "{\"a\", 1}",
            "{\"a\": truex}",
            "{\"a\": nul}",
            ",",
            "",
            "{\"a\": 00}",
            "{\"a\": -01}",
            "{\"a\": 1-2}",
        ];
        for case in cases {
            if let Some((minified, quoted)) = minified(case.as_bytes()) {
                assert_eq!(
                    Some(&minified),
                    transcoded(case.as_bytes()).as_ref(),
                    "{case}"
                );
                assert_eq!(quoted, serde_json::to_string(&minified).unwrap(), "{case}");
            }
        }
        assert!(
            minified(session.as_bytes()).is_some(),
            "the common case is minified"
        );
        for left in &cases[3..] {
            assert_eq!(minified(left.as_bytes()), None, "{left}");
        }
        // Invalid UTF-8 inside a string.
        assert_eq!(minified(b"{\"a\": \"\xff\"}"), None);
        // Nesting: as deep as serde_json reads, and no deeper.
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(minified(nested(127).as_bytes()).is_some());
        assert_eq!(
            minified(nested(127).as_bytes()).map(|(json, _)| json),
            transcoded(nested(127).as_bytes())
        );
        assert_eq!(minified(nested(128).as_bytes()), None);
        assert_eq!(transcoded(nested(128).as_bytes()), None);
    }
}
