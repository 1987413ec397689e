//! Process settings: where the specs are, where to listen, upstream overrides, limits.
//!
//! A gateway config file (YAML, strict: an unknown key is an error naming it) is merged with
//! command-line flags and environment variables by `main`. Spec files never carry these
//! settings, so the same specs can point at Stripe, the stand-in or an egress proxy.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything the gateway needs to run.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The folder of capability files.
    pub specs: PathBuf,
    pub listen: ListenConfig,
    pub admin: AdminConfig,
    /// Upstream overrides, first match wins (command-line ones come first).
    pub upstreams: Vec<UpstreamOverride>,
    pub limits: Limits,
    pub retry: RetryPolicy,
    pub mcp: McpConfig,
    pub rest: RestConfig,
    pub consumers: ConsumersConfig,
    pub schemas: SchemasConfig,
    /// Values for bind variables that take precedence over the process environment (for
    /// example a demo key). Their values are secrets like any other bound value.
    #[serde(skip_serializing)]
    pub env: BTreeMap<String, String>,
    pub log: LogConfig,
    pub tracing: TracingConfig,
    pub reload: ReloadConfig,
    pub plugins: PluginsConfig,
    /// The file this config was read from, watched for changes.
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// Command-line settings applied on top of the file, again each time it is re-read.
    #[serde(skip)]
    pub overrides: Overrides,
}

/// Like a derived `Debug`, but bind values show their names only.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("specs", &self.specs)
            .field("listen", &self.listen)
            .field("admin", &self.admin)
            .field("upstreams", &self.upstreams)
            .field("limits", &self.limits)
            .field("retry", &self.retry)
            .field("mcp", &self.mcp)
            .field("rest", &self.rest)
            .field("consumers", &self.consumers)
            .field("schemas", &self.schemas)
            .field("env", &crate::secret::RedactedValues(&self.env))
            .field("log", &self.log)
            .field("tracing", &self.tracing)
            .field("reload", &self.reload)
            .field("plugins", &self.plugins)
            .field("source", &self.source)
            .field("overrides", &self.overrides)
            .finish()
    }
}

/// Settings given on the command line (or its environment variables). They win over the config
/// file's, and keep winning when a changed config file is re-read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub specs: Option<PathBuf>,
    pub force_address: Option<IpAddr>,
    /// Declared port to actual port.
    pub ports: Vec<(u16, u16)>,
    /// Tried before the config file's upstream overrides.
    pub upstreams: Vec<UpstreamOverride>,
    /// `Some(None)` turns the admin listener off.
    pub admin: Option<Option<SocketAddr>>,
    pub no_watch: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            specs: PathBuf::from("specs"),
            listen: ListenConfig::default(),
            admin: AdminConfig::default(),
            upstreams: Vec::new(),
            limits: Limits::default(),
            retry: RetryPolicy::default(),
            mcp: McpConfig::default(),
            rest: RestConfig::default(),
            consumers: ConsumersConfig::default(),
            schemas: SchemasConfig::default(),
            env: BTreeMap::new(),
            log: LogConfig::default(),
            tracing: TracingConfig::default(),
            reload: ReloadConfig::default(),
            plugins: PluginsConfig::default(),
            source: None,
            overrides: Overrides::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// The address of adapters whose spec names none.
    pub address: IpAddr,
    /// When set, every adapter listens on this address whatever its spec says (a container
    /// usually wants `0.0.0.0`).
    pub force_address: Option<IpAddr>,
    /// Declared port to the port actually bound (`0`: chosen by the OS).
    pub ports: BTreeMap<u16, u16>,
    /// Bind every declared port to a port chosen by the OS (tests, side-by-side runs).
    pub ephemeral_ports: bool,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            force_address: None,
            ports: BTreeMap::new(),
            ephemeral_ports: false,
        }
    }
}

impl ListenConfig {
    /// The port to bind for a declared port.
    pub fn bind_port(&self, declared: u16) -> u16 {
        if self.ephemeral_ports {
            return 0;
        }
        self.ports.get(&declared).copied().unwrap_or(declared)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// The admin listener (`/healthz`, `/readyz`, `/status`); `null` turns it off.
    pub address: Option<SocketAddr>,
    /// The environment variable holding a bearer token that `/status` and `/metrics` then
    /// require (`/healthz` and `/readyz` stay open for probes). When it names a variable that
    /// is not set, the admin listener is not opened (failing closed) and an error says why.
    pub token_env: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            address: Some(SocketAddr::from(([127, 0, 0, 1], 9901))),
            token_env: None,
        }
    }
}

/// Points the consumes adapters whose namespace matches at another base URI and/or profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamOverride {
    /// A consumes namespace, exactly or as a glob (`identity-*`, `*`).
    pub namespace: String,
    pub base_uri: Option<String>,
    pub profile: Option<ProfileName>,
}

impl UpstreamOverride {
    /// Parses the command-line form `NAMESPACE=URL[,profile=stripe|default]`.
    pub fn parse(text: &str) -> Result<UpstreamOverride, String> {
        // Errors name the namespace, never the URL: it may carry a proxy's credentials.
        let (namespace, rest) = text.split_once('=').ok_or_else(|| {
            "invalid upstream override: expected NAMESPACE=URL[,profile=NAME], found no `=`"
                .to_owned()
        })?;
        let mut base_uri = None;
        let mut profile = None;
        for part in rest.split(',') {
            if let Some(name) = part.strip_prefix("profile=") {
                profile = Some(ProfileName::parse(name)?);
            } else if !part.is_empty() {
                if base_uri.is_some() {
                    return Err(format!(
                        "invalid upstream override for namespace \"{namespace}\": more than one URL"
                    ));
                }
                base_uri = Some(part.to_owned());
            }
        }
        if namespace.is_empty() {
            return Err("invalid upstream override: empty namespace".to_owned());
        }
        Ok(UpstreamOverride {
            namespace: namespace.to_owned(),
            base_uri,
            profile,
        })
    }
}

/// How requests to an upstream are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProfileName {
    /// Stripe's wire conventions: form-encoded bodies and indexed array queries.
    Stripe,
    /// JSON bodies and repeated array queries.
    Default,
}

impl ProfileName {
    pub fn parse(text: &str) -> Result<ProfileName, String> {
        match text {
            "stripe" => Ok(ProfileName::Stripe),
            "default" => Ok(ProfileName::Default),
            other => Err(format!(
                "unknown upstream profile \"{other}\": expected stripe or default"
            )),
        }
    }
}

/// Limits on requests and on upstream calls.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest accepted request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// Largest accepted upstream response body; larger ones get 502.
    pub max_upstream_body_bytes: usize,
    #[serde(with = "millis")]
    pub upstream_connect_timeout: Duration,
    /// Whole upstream exchange, retries and waiting for a connection included; past it, 504.
    #[serde(with = "millis")]
    pub upstream_timeout: Duration,
    /// Most concurrent requests to one upstream origin; more wait for a slot.
    pub upstream_max_connections: usize,
    /// Idle connections kept per upstream origin.
    pub upstream_max_idle: usize,
    /// Longest upstream URL sent; a call that would need a longer one is the caller's 414,
    /// before any attempt.
    pub max_upstream_url_bytes: usize,
    /// How long a caller may take to send a request's headers (past it, the connection is
    /// closed; an HTTP/1 connection idle that long between requests is closed too) and then
    /// its body (past it, 408). 0 turns it off.
    #[serde(with = "millis")]
    pub request_read_timeout: Duration,
    /// Open connections per listener; past it, new connections are closed at once. 0: no cap.
    pub max_connections: usize,
    /// Open connections per listener from one IP address; past it, that address's new
    /// connections are closed at once. Behind a load balancer (all connections from a few
    /// addresses), raise it or set 0 (no cap).
    pub max_connections_per_peer: usize,
    /// A connection without a request in progress for this long is closed (HTTP/2 with a
    /// GOAWAY). 0 turns it off.
    #[serde(with = "millis")]
    pub idle_timeout: Duration,
    /// HTTP/2 keep-alive: a ping this often; a client that does not answer within the same
    /// time is disconnected. 0 turns pings off.
    #[serde(with = "millis")]
    pub keep_alive_interval: Duration,
    /// How long a response may wait for the client to read it; past it, the connection is
    /// closed. 0 turns it off.
    #[serde(with = "millis")]
    pub response_write_timeout: Duration,
    /// Response bytes one connection may leave unread; past it, its next responses are 503.
    pub max_unsent_response_bytes: usize,
    /// Where consumers' rate limits and quotas are counted: `local` (in this process) or
    /// `redis://host:port/db` (shared by every replica that names the same Redis).
    pub store: LimitStore,
    /// The longest a limit decision waits for the store; past it (or when the store is
    /// unreachable) `on_store_error` decides, and the store is probed in the background.
    #[serde(with = "millis")]
    pub store_timeout: Duration,
    pub on_store_error: OnStoreError,
    /// How many replicas share the store: with `on_store_error: local`, each replica counts
    /// this share of every limit while the store is away (and of every upstream budget).
    pub replicas: u32,
    pub upstream_budget: UpstreamBudget,
}

/// A rate per upstream account, kept below the upstream's own limit: calls past it wait (up
/// to `max_wait`) or are shed with a 503 before they reach the upstream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamBudget {
    /// Calls a second per Stripe account in test mode (Stripe allows about 25); 0: none.
    pub stripe_test_rate: f64,
    /// Calls a second per Stripe account in live mode (Stripe allows about 100); 0: none.
    pub stripe_live_rate: f64,
    /// Calls a second per credential to other upstreams; 0: none.
    pub default_rate: f64,
    /// Where the Stripe rates apply (a stand-in or a mock elsewhere has no such limits).
    pub stripe_origins: Vec<String>,
    /// The longest a call waits for its account's budget; past it, 503 with `Retry-After`.
    #[serde(with = "millis")]
    pub max_wait: Duration,
}

impl Default for UpstreamBudget {
    fn default() -> Self {
        UpstreamBudget {
            stripe_test_rate: 25.0,
            stripe_live_rate: 100.0,
            default_rate: 0.0,
            stripe_origins: vec!["https://api.stripe.com".into()],
            max_wait: Duration::from_millis(250),
        }
    }
}

/// Where limits are counted. A Redis URL's password is never shown (`Debug`, `/status`).
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum LimitStore {
    #[default]
    Local,
    Redis(String),
}

impl TryFrom<String> for LimitStore {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        if text == "local" {
            Ok(LimitStore::Local)
        } else if text.starts_with("redis://") || text.starts_with("rediss://") {
            Ok(LimitStore::Redis(text))
        } else {
            Err(format!(
                "limits.store is `local` or a redis:// URL, not {:?}",
                crate::secret::redact_url_password(&text)
            ))
        }
    }
}

impl LimitStore {
    /// The store as it may be shown: a Redis URL without its password.
    pub fn shown(&self) -> String {
        match self {
            LimitStore::Local => "local".into(),
            LimitStore::Redis(url) => crate::secret::redact_url_password(url),
        }
    }
}

impl std::fmt::Debug for LimitStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown())
    }
}

impl Serialize for LimitStore {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.shown())
    }
}

/// What a limit decision does when the store cannot answer in time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStoreError {
    /// Count in this process, each limit divided by `replicas`.
    #[default]
    Local,
    /// Refuse the call (503) until the store is back.
    Deny,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 1024 * 1024,
            max_upstream_body_bytes: 16 * 1024 * 1024,
            upstream_connect_timeout: Duration::from_secs(5),
            upstream_timeout: Duration::from_secs(30),
            upstream_max_connections: 512,
            upstream_max_idle: 128,
            max_upstream_url_bytes: 16 * 1024,
            request_read_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            max_connections_per_peer: 1_000,
            idle_timeout: Duration::from_secs(60),
            keep_alive_interval: Duration::from_secs(30),
            response_write_timeout: Duration::from_secs(60),
            max_unsent_response_bytes: 32 * 1024 * 1024,
            store: LimitStore::Local,
            store_timeout: Duration::from_millis(50),
            on_store_error: OnStoreError::Local,
            replicas: 1,
            upstream_budget: UpstreamBudget::default(),
        }
    }
}

/// Retries of upstream calls, following the rules of Stripe's SDKs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Retries after the first attempt (Stripe's SDKs use 2).
    pub max_retries: u32,
    /// First backoff; doubled each time, capped by `max_delay`, plus up to 25 % jitter.
    #[serde(with = "millis")]
    pub base_delay: Duration,
    #[serde(with = "millis")]
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 2,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct McpConfig {
    /// Allowed `Origin` values (`scheme://host:port`, `:*` for any port). Requests without an
    /// `Origin` header pass; browsers always send one.
    pub allowed_origins: Vec<String>,
    /// Allowed `Host` values, to defeat DNS rebinding. Behind a load balancer, add the public
    /// host names; an empty list allows any host.
    pub allowed_hosts: Vec<String>,
    /// Take the host from `X-Forwarded-Host` when present (behind a load balancer that sets it).
    pub trust_forwarded_host: bool,
    /// Largest accepted MCP request body.
    pub max_body_bytes: usize,
    /// Idle time after which a legacy (2025-era) session is closed.
    #[serde(with = "millis")]
    pub session_idle_timeout: Duration,
    /// Most legacy sessions one listener keeps open, all its MCP endpoints together; a new
    /// session past it closes the listener's longest-idle one. 0: no cap.
    pub max_sessions: usize,
    /// Most legacy sessions per client address on one listener; a new one past it closes that
    /// client's own longest-idle session. Behind a load balancer (every client one address),
    /// raise it or set 0 (no budget). 0: no budget.
    pub max_sessions_per_peer: usize,
    /// Most open `subscriptions/listen` streams (2026-era) per listener; past it, a new one
    /// gets 429. 0: no cap.
    pub max_listen_streams: usize,
    /// Most open `subscriptions/listen` streams per client address on one listener; past it,
    /// that client's new one gets 429. 0: no budget.
    pub max_listen_streams_per_peer: usize,
    /// Answer plain stateless `tools/call` requests (2026-07-28 era) without rmcp's per-request
    /// service; every other message still goes through rmcp. Off only to rule it out when
    /// debugging: the answers are the same, byte for byte.
    pub direct_tool_calls: bool,
    /// Where legacy (2025-11-25) sessions are remembered for the fleet: a Redis URL
    /// (`redis://host:6379/0`), so that any replica can serve a session another one opened
    /// (it is restored from what its client sent in `initialize`). None: sessions live in the
    /// replica that opened them, and a balancer must keep them there.
    pub session_store: Option<String>,
}

impl Default for McpConfig {
    fn default() -> Self {
        McpConfig {
            allowed_origins: vec![
                "http://localhost:*".into(),
                "http://127.0.0.1:*".into(),
                "http://[::1]:*".into(),
            ],
            allowed_hosts: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            trust_forwarded_host: false,
            max_body_bytes: 1024 * 1024,
            session_idle_timeout: Duration::from_secs(600),
            max_sessions: 10_000,
            max_sessions_per_peer: 64,
            max_listen_streams: 10_000,
            max_listen_streams_per_peer: 16,
            direct_tool_calls: true,
            session_store: None,
        }
    }
}

/// Where tools' input schemas come from when a capability declares a request body opaquely:
/// OpenAPI descriptions attached to consumes namespaces (globs; the first that has the
/// operation wins), and Stripe's own (shipped) for adapters with the Stripe profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchemasConfig {
    /// Stripe's description for Stripe-profile adapters (`false`: off).
    pub stripe: bool,
    pub sources: Vec<SchemaSource>,
}

impl Default for SchemasConfig {
    fn default() -> Self {
        SchemasConfig {
            stripe: true,
            sources: Vec::new(),
        }
    }
}

/// An OpenAPI 3.0/3.1 description (JSON or YAML) for the consumes namespaces `namespace`
/// matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaSource {
    pub namespace: String,
    pub file: PathBuf,
}

/// Consumers (see `capgate_model::consumers`) and where one is required.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsumersConfig {
    /// The consumers file, watched and reloaded like the specs (a broken edit keeps the last
    /// good set).
    pub file: Option<PathBuf>,
    /// The adapters that require a consumer's key. Where none applies, an adapter's own
    /// `authentication` (if any) is what callers need; where one does, the consumer's key is.
    pub require: Vec<Requirement>,
    /// Issuers whose JWT bearer tokens identify consumers (as well as API keys).
    pub jwt: Vec<JwtIssuer>,
    /// The public base URL of the gateway (`https://api.example.com`), for the OAuth protected
    /// resource metadata of MCP endpoints; by default `http://` and the request's `Host`.
    pub public_url: Option<String>,
}

/// An issuer of JWT bearer tokens: a token is accepted when it is signed by one of the issuer's
/// keys (RS256, ES256 or EdDSA), is for `audience`, and is within its `exp` / `nbf` (give or
/// take `leeway_seconds`). Its `consumer_claim` names a consumer of the consumers file (whose
/// limits and metadata apply); its `scopes_claim` (space-separated or a list) narrows what that
/// consumer may call: each scope is `ACCESS`, `CAPABILITY:ACCESS` or `CAPABILITY:NAME:ACCESS`
/// (globs; ACCESS is read, write or any).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtIssuer {
    /// The `iss` claim tokens carry (and the authorization server the metadata names).
    pub issuer: String,
    pub audience: String,
    /// A JWKS file, re-read every `refresh`.
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL (https, or http on a loopback address), fetched every `refresh` and when a
    /// token names a key id not yet known (at most every 10 s), each fetch within `timeout`.
    pub jwks_url: Option<String>,
    pub consumer_claim: String,
    pub scopes_claim: String,
    #[serde(with = "millis")]
    pub refresh: Duration,
    #[serde(with = "millis")]
    pub timeout: Duration,
    pub leeway_seconds: u64,
}

impl ConsumersConfig {
    /// What serde cannot check: each issuer names itself, an audience and one key source.
    pub fn check(&self) -> Result<(), String> {
        for (i, issuer) in self.jwt.iter().enumerate() {
            let at = format!("consumers.jwt[{i}]");
            if issuer.issuer.is_empty() || issuer.audience.is_empty() {
                return Err(format!("{at}: an issuer has an `issuer` and an `audience`"));
            }
            match (&issuer.jwks_file, &issuer.jwks_url) {
                (Some(_), None) => {}
                (None, Some(url)) => {
                    let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
                        .iter()
                        .any(|p| url.starts_with(p));
                    if !url.starts_with("https://") && !loopback {
                        return Err(format!(
                            "{at}: jwks_url must be https (http only on a loopback address), not {url:?}"
                        ));
                    }
                }
                _ => {
                    return Err(format!(
                        "{at} ({}): give exactly one of jwks_file and jwks_url",
                        issuer.issuer
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Default for JwtIssuer {
    fn default() -> Self {
        JwtIssuer {
            issuer: String::new(),
            audience: String::new(),
            jwks_file: None,
            jwks_url: None,
            consumer_claim: "sub".into(),
            scopes_claim: "scope".into(),
            refresh: Duration::from_secs(300),
            timeout: Duration::from_secs(5),
            leeway_seconds: 30,
        }
    }
}

/// Adapters that require a consumer: every part a glob (`*` when left out), and an optional
/// declared port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Requirement {
    /// The capability (its file name without the extension).
    pub capability: String,
    /// The REST or MCP adapter's namespace.
    pub adapter: String,
    /// The port the adapter declares.
    pub port: Option<u16>,
}

impl Default for Requirement {
    fn default() -> Self {
        Requirement {
            capability: "*".into(),
            adapter: "*".into(),
            port: None,
        }
    }
}

/// Who may call REST listeners from where, as MCP's `allowed_hosts` / `allowed_origins`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestConfig {
    /// Allowed `Host` values (without ports). Unset: the loopback names on a listener bound to
    /// a loopback address (against DNS rebinding), any host elsewhere; `[]`: any host.
    pub allowed_hosts: Option<Vec<String>>,
    /// Allowed `Origin` values (`scheme://host:port`, `:*` for any port). Requests without an
    /// `Origin` pass (browsers always send one cross-site). Unset: the loopback origins, as
    /// MCP's default.
    pub allowed_origins: Option<Vec<String>>,
    /// Take the host from `X-Forwarded-Host` when present (behind a load balancer that sets it).
    pub trust_forwarded_host: bool,
}

impl RestConfig {
    /// The hosts a REST listener bound to `address` allows (empty: any).
    pub fn hosts_for(&self, address: IpAddr) -> Vec<String> {
        match &self.allowed_hosts {
            Some(hosts) => hosts.clone(),
            None if address.is_loopback() => McpConfig::default().allowed_hosts,
            None => Vec::new(),
        }
    }

    pub fn origins(&self) -> Vec<String> {
        self.allowed_origins
            .clone()
            .unwrap_or_else(|| McpConfig::default().allowed_origins)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `capgate=debug`.
    pub filter: Option<String>,
    pub access: AccessLogConfig,
}

/// The access log: one JSON line per REST request and MCP tool call.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogConfig {
    /// `off`, `stdout`, or a file path (appended to).
    pub to: String,
    /// Lines waiting for the writer; past it, lines are dropped (and counted), never waited
    /// for.
    pub queue: usize,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            to: "off".into(),
            queue: 10_000,
        }
    }
}

/// OpenTelemetry traces, exported over OTLP. Off unless this section or the standard
/// `OTEL_*` variables turn them on; a setting left out here is taken from the environment
/// (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_PROTOCOL`, `OTEL_TRACES_SAMPLER_ARG`,
/// `OTEL_SERVICE_NAME`, ...), then from the defaults. Read at start: a change needs a restart.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// `otlp` or `off`; unset: `OTEL_TRACES_EXPORTER` decides, and without it tracing is off.
    pub exporter: Option<String>,
    /// The collector: a base URL (`/v1/traces` is added for HTTP, as for
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub endpoint: Option<String>,
    /// `http/protobuf` or `grpc`.
    pub protocol: Option<String>,
    /// The share of new traces recorded, 0 to 1 (a caller's sampled flag is followed).
    pub sample_ratio: Option<f64>,
    pub service_name: Option<String>,
    /// Finished spans waiting for export; past it, spans are dropped, never waited for.
    pub queue: Option<usize>,
    /// How long one export may take.
    #[serde(default, with = "millis_opt")]
    pub export_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadConfig {
    /// Watch the specs folder (and everything it depends on) and reload on change.
    pub watch: bool,
    /// Quiet time after the last change before a reload starts.
    #[serde(with = "millis")]
    pub debounce: Duration,
    /// How long a closing listener lets in-flight requests finish.
    #[serde(with = "millis")]
    pub drain_timeout: Duration,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            watch: true,
            debounce: Duration::from_millis(100),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// The folder of `.wasm` transform plugins (watched like the specs folder).
    pub dir: Option<PathBuf>,
    /// Where compiled plugins are cached (a directory only this user can write); `null` turns
    /// the cache off.
    pub cache_dir: Option<PathBuf>,
    /// Which plugins run around which operations.
    pub bindings: Vec<TransformBinding>,
    /// Plugin calls that may run at once (the size of the instance pool); more wait.
    pub max_concurrent_calls: usize,
    /// The largest memory any binding may give a plugin, in MiB.
    pub max_memory_mib: usize,
    /// How often running plugins are interrupted to check their deadline (and, once they have
    /// run that long, to yield).
    #[serde(with = "millis")]
    pub epoch_tick: Duration,
    /// The most idle instances kept for bindings with `instances: reused`, all plugins
    /// together. The pool holds this many more instances than `max_concurrent_calls`, so idle
    /// ones never take a call's capacity.
    pub warm_instances: usize,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            dir: None,
            cache_dir: Some(std::env::temp_dir().join("capgate-plugin-cache")),
            bindings: Vec::new(),
            max_concurrent_calls: 256,
            max_memory_mib: 64,
            epoch_tick: Duration::from_millis(1),
            warm_instances: 32,
        }
    }
}

/// Runs a plugin around the upstream call of the operations it selects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformBinding {
    /// A file of the plugins folder, for example `redact_pii.wasm`.
    pub plugin: String,
    /// Capability names (file names without extension), exactly or as globs.
    #[serde(default = "everything")]
    pub capabilities: Vec<String>,
    /// Consumed operations as `namespace.operation` or `operation`, exactly or as globs.
    #[serde(default = "everything")]
    pub operations: Vec<String>,
    /// Passed to the plugin as JSON text.
    #[serde(default)]
    pub config: serde_json::Value,
    #[serde(default)]
    pub on_error: FailurePolicy,
    /// CPU time a call may use, in milliseconds (time spent waiting for a thread does not count).
    #[serde(default = "default_plugin_timeout")]
    pub timeout_ms: u64,
    /// Memory a call may use, in MiB.
    #[serde(default = "default_plugin_memory")]
    pub memory_mib: usize,
    /// Whether each call gets a fresh instance (the default) or may reuse one an earlier call
    /// left.
    #[serde(default)]
    pub instances: InstancePolicy,
}

/// Which instance of its plugin a call runs in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstancePolicy {
    /// A fresh instance for every call: nothing a call leaves in the plugin's memory reaches
    /// another call.
    #[default]
    Fresh,
    /// An instance that served an earlier call without failing serves the next (of any
    /// request and any consumer), with the same memory cap and deadline per call: what the
    /// plugin keeps in its memory between calls is kept. For plugins trusted to keep no
    /// request's data, where a fresh instance per call costs too much.
    Reused,
}

fn everything() -> Vec<String> {
    vec!["*".to_owned()]
}

fn default_plugin_timeout() -> u64 {
    10
}

fn default_plugin_memory() -> usize {
    16
}

/// What a failing plugin (a trap, a timeout, an unusable result) does to its request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// The request fails with a 502 naming the plugin.
    #[default]
    FailClosed,
    /// The request goes on as if the plugin were not there.
    FailOpen,
}

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    /// Reads a config file; relative paths in it are resolved against its directory.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = crate::read::text(path, crate::read::SPEC_LIMIT).map_err(|source| {
            ConfigError::Read {
                path: path.to_owned(),
                source,
            }
        })?;
        let mut config: Config = serde_yaml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        if config.specs.is_relative() {
            config.specs = base.join(&config.specs);
        }
        if let Some(dir) = &config.plugins.dir
            && dir.is_relative()
        {
            config.plugins.dir = Some(base.join(dir));
        }
        if let Some(file) = &config.consumers.file
            && file.is_relative()
        {
            config.consumers.file = Some(base.join(file));
        }
        for issuer in &mut config.consumers.jwt {
            if let Some(file) = &issuer.jwks_file
                && file.is_relative()
            {
                issuer.jwks_file = Some(base.join(file));
            }
        }
        for source in &mut config.schemas.sources {
            if source.file.is_relative() {
                source.file = base.join(&source.file);
            }
        }
        if let Err(message) = config.consumers.check() {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                message,
            });
        }
        config.source = Some(path.to_owned());
        Ok(config)
    }

    /// Applies command-line settings, and remembers them for `reread`.
    pub fn with_overrides(mut self, overrides: Overrides) -> Config {
        if let Some(specs) = &overrides.specs {
            self.specs = specs.clone();
        }
        if let Some(address) = overrides.force_address {
            self.listen.force_address = Some(address);
        }
        self.listen.ports.extend(overrides.ports.iter().copied());
        self.upstreams
            .splice(0..0, overrides.upstreams.iter().cloned());
        if let Some(address) = overrides.admin {
            self.admin.address = address;
        }
        if overrides.no_watch {
            self.reload.watch = false;
        }
        self.overrides = overrides;
        self
    }

    /// Reads the config file again, with the same command-line settings on top; `None` when
    /// this config was not read from a file.
    pub fn reread(&self) -> Option<Result<Config, ConfigError>> {
        let path = self.source.as_deref()?;
        Some(Config::from_file(path).map(|c| c.with_overrides(self.overrides.clone())))
    }
}

/// Durations in config files are written in milliseconds.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(value.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

mod millis_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => serializer.serialize_u64(value.as_millis() as u64),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(deserializer)?.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_upstream_overrides() {
        let o =
            UpstreamOverride::parse("identity-*=http://127.0.0.1:12111,profile=stripe").unwrap();
        assert_eq!(o.namespace, "identity-*");
        assert_eq!(o.base_uri.as_deref(), Some("http://127.0.0.1:12111"));
        assert_eq!(o.profile, Some(ProfileName::Stripe));
        assert!(UpstreamOverride::parse("nothing").is_err());
        assert!(
            UpstreamOverride::parse("a=http://x,profile=soap")
                .unwrap_err()
                .contains("soap")
        );
        // A proxy's credentials in the URL never show in an error.
        let error =
            UpstreamOverride::parse("a=https://u:pw@egress,https://u:pw@other").unwrap_err();
        assert!(error.contains("\"a\"") && !error.contains("pw"), "{error}");
    }

    #[test]
    fn debug_shows_bind_names_not_values() {
        let mut config = Config::default();
        config
            .env
            .insert("STRIPE_API_KEY".into(), "sk_test_hidden".into());
        let shown = format!("{config:?}");
        assert!(shown.contains("STRIPE_API_KEY"), "{shown}");
        assert!(!shown.contains("sk_test_hidden"), "{shown}");
    }

    #[test]
    fn command_line_settings_win_and_survive_a_reread() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("capgate.yaml");
        let text = |port: u16| {
            format!(
                "specs: specs\nlisten: {{ ports: {{ 8080: {port}, 9090: 19090 }} }}\nupstreams:\n  - {{ namespace: '*', base_uri: 'http://file' }}\n"
            )
        };
        std::fs::write(&file, text(18080)).unwrap();
        let overrides = Overrides {
            ports: vec![(8080, 28080)],
            upstreams: vec![UpstreamOverride::parse("*=http://cli").unwrap()],
            admin: Some(None),
            ..Overrides::default()
        };
        let config = Config::from_file(&file).unwrap().with_overrides(overrides);
        let check = |c: &Config| {
            assert_eq!(c.specs, dir.path().join("specs"));
            assert_eq!(c.listen.ports[&8080], 28080, "the command line wins");
            assert_eq!(c.listen.ports[&9090], 19090);
            let uris: Vec<_> = c
                .upstreams
                .iter()
                .map(|u| u.base_uri.as_deref().unwrap())
                .collect();
            assert_eq!(
                uris,
                ["http://cli", "http://file"],
                "command-line upstreams first"
            );
            assert_eq!(c.admin.address, None);
        };
        check(&config);
        std::fs::write(&file, text(18081)).unwrap();
        check(&config.reread().unwrap().unwrap());
        assert_eq!(
            Config::default().reread().map(|r| r.is_ok()),
            None,
            "not from a file"
        );
    }

    #[test]
    fn a_binding_reuses_instances_only_when_it_says_so() {
        let config: Config = serde_yaml::from_str(
            "plugins:\n  bindings:\n    - plugin: a.wasm\n    - plugin: b.wasm\n      instances: reused\n",
        )
        .unwrap();
        let policies: Vec<_> = config
            .plugins
            .bindings
            .iter()
            .map(|b| b.instances)
            .collect();
        assert_eq!(policies, [InstancePolicy::Fresh, InstancePolicy::Reused]);
        assert_eq!(config.plugins.warm_instances, 32);
        let err = serde_yaml::from_str::<Config>(
            "plugins:\n  bindings:\n    - plugin: a.wasm\n      instances: shared\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("shared"), "{err}");
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let err = serde_yaml::from_str::<Config>("listen:\n  adress: 0.0.0.0\n").unwrap_err();
        assert!(err.to_string().contains("adress"), "{err}");
    }
}
