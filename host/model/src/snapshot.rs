//! The compiled, validated form of every capability: what the request path reads.
//!
//! A [`Snapshot`] is immutable. `compile` builds it from loaded files, `reload` publishes it
//! atomically, and each request pins one snapshot from start to end. Code that reads a snapshot
//! never re-checks what compilation guaranteed.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use http::Method;
use serde_json::{Map, Value};

use crate::config::{FailurePolicy, ProfileName};
use crate::jsonpath::Selector;
use crate::route::Router;
use crate::secret::Secret;
use crate::template::{Ref, Template, ValueTemplate};

/// Everything the gateway serves at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Increases by one with every publish.
    pub generation: u64,
    /// One entry per (address, declared port) that some file exposes an adapter on.
    pub listeners: BTreeMap<ListenKey, Arc<Listener>>,
}

impl Snapshot {
    pub fn listener(&self, key: &ListenKey) -> Option<&Arc<Listener>> {
        self.listeners.get(key)
    }
}

/// An address and the port a spec declares (the bound port may differ, see `config::ListenConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ListenKey {
    pub address: IpAddr,
    pub port: u16,
}

impl ListenKey {
    pub fn socket_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.address, port)
    }
}

impl std::fmt::Display for ListenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", SocketAddr::new(self.address, self.port))
    }
}

/// What one listener serves: REST routes and MCP endpoints, merged from every file on it.
#[derive(Debug, Default)]
pub struct Listener {
    pub rest: Router<Arc<RestRoute>>,
    /// MCP adapters by namespace (`/mcp/<namespace>`).
    pub mcp: BTreeMap<String, Arc<McpAdapter>>,
}

impl Listener {
    /// The adapter served at `/mcp`: the only one on this listener, if there is exactly one.
    pub fn default_mcp(&self) -> Option<&Arc<McpAdapter>> {
        match self.mcp.len() {
            1 => self.mcp.values().next(),
            _ => None,
        }
    }
}

/// Which file and part a served thing came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: Arc<Path>,
    /// The capability's name: the file name without its extension.
    pub capability: Arc<str>,
    pub line: u32,
}

/// A REST operation on a path.
#[derive(Debug)]
pub struct RestRoute {
    pub method: Method,
    /// The REST adapter's namespace.
    pub namespace: Arc<str>,
    /// The adapter's caller authentication, if it declares one.
    pub auth: Option<Arc<CallerAuth>>,
    /// The path as written in the spec.
    pub path: String,
    /// The path in canonical form (`/v1/sessions/{}`), as routing compares paths: two routes
    /// with the same method and pattern collide.
    pub pattern: String,
    pub inputs: RestInputs,
    pub operation: Arc<Operation>,
}

/// How a REST operation gets its caller inputs.
#[derive(Debug)]
pub enum RestInputs {
    /// Declared `inputParameters` only; `specs` are their `spec`s, in the same order, for
    /// validation (copied once here rather than on every request).
    Declared {
        params: Vec<ExposedParam>,
        specs: Vec<InputSpec>,
    },
    /// Every path variable, query parameter and body field by name, and the whole body as
    /// `body`. `specs` are the inputs the operation uses, for validation; a query parameter
    /// that is not among them (nor a path variable) is refused when `strict_query` is set.
    Implicit {
        specs: Vec<InputSpec>,
        strict_query: bool,
    },
}

/// Where a parameter's value is: in the caller's request (exposed parameters) or on the upstream
/// request (consumed ones). The format's `in: environment` is not a place a request has: an
/// exposed parameter declared so has no location (no caller can give it), and a consumed one
/// is not compiled at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    Query,
    Path,
    Header,
    Cookie,
    Body,
}

/// A declared exposed input parameter.
#[derive(Debug, Clone)]
pub struct ExposedParam {
    pub name: String,
    /// `None` for `in: environment`: never taken from the caller.
    pub location: Option<Location>,
    /// For `in: body`: where in the JSON body the value is.
    pub selector: Option<Selector>,
    pub spec: InputSpec,
}

/// The type and presence rules of one input, for validation and JSON Schemas.
#[derive(Debug, Clone, PartialEq)]
pub struct InputSpec {
    pub name: String,
    pub ty: ParamType,
    pub required: bool,
    pub description: Option<String>,
    /// The upstream header this input becomes, when it is a scalar: MCP tools announce it as
    /// `x-mcp-header` so that HTTP intermediaries can route on it (SEP-2243).
    pub header: Option<String>,
}

/// A parameter type from the format's `type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamType {
    String,
    Integer,
    Number,
    Boolean,
    /// An array of strings (the items of Stripe-family arrays such as `expand`).
    Array,
    Object,
    /// Stripe's range filter: an integer timestamp or `{gt, gte, lt, lte}`.
    RangeFilter,
    Any,
}

/// An MCP adapter with its tools.
#[derive(Debug)]
pub struct McpAdapter {
    pub namespace: String,
    /// The capability's `info.label`, else its file name.
    pub title: String,
    /// The capability's `info.modified` (else `created`), as MCP's `serverInfo.version`.
    pub version: Option<String>,
    pub description: Option<String>,
    pub origin: Origin,
    /// The adapter's caller authentication, if it declares one.
    pub auth: Option<Arc<CallerAuth>>,
    /// In file order; names are unique.
    pub tools: Vec<Arc<Tool>>,
}

impl McpAdapter {
    /// Whether `other` (another version of this adapter) lists the same tools: an MCP client
    /// would see no change, so it need not be told of one.
    pub fn lists_same_tools(&self, other: &McpAdapter) -> bool {
        self.origin.file == other.origin.file
            && self.tools.len() == other.tools.len()
            && self.tools.iter().zip(&other.tools).all(|(x, y)| {
                x.name == y.name
                    && x.title == y.title
                    && x.description == y.description
                    && x.hints == y.hints
                    && x.input_schema == y.input_schema
            })
    }

    pub fn tool(&self, name: &str) -> Option<&Arc<Tool>> {
        self.tools.iter().find(|t| t.name == name)
    }
}

/// One MCP tool.
#[derive(Debug)]
pub struct Tool {
    pub name: String,
    pub title: Option<String>,
    pub description: Option<String>,
    pub hints: ToolHints,
    pub inputs: Vec<InputSpec>,
    /// The JSON Schema of the arguments, derived from `inputs` (and, for an opaque body, from
    /// the upstream's OpenAPI description).
    pub input_schema: Arc<Map<String, Value>>,
    /// The body's properties announced as top-level arguments: a call's arguments of these
    /// names go into its `body` before it is checked.
    pub flattened: Vec<String>,
    pub operation: Arc<Operation>,
}

/// Tool annotations with MCP's defaults filled in (what decisions use), and what the file
/// itself said (what `tools/list` shows: only the hints given).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolHints {
    pub read_only: bool,
    pub destructive: bool,
    pub idempotent: bool,
    pub open_world: bool,
    pub given: GivenHints,
}

/// A tool's `hints` as written: each absent unless the file gives it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GivenHints {
    pub read_only: Option<bool>,
    pub destructive: Option<bool>,
    pub idempotent: Option<bool>,
    pub open_world: Option<bool>,
}

impl GivenHints {
    pub fn is_empty(&self) -> bool {
        *self == GivenHints::default()
    }
}

/// What an exposed operation or tool does: the unit `invoke` runs for REST and MCP alike.
#[derive(Debug)]
pub struct Operation {
    /// `capability.operation`, for logs and plugin bindings.
    pub name: String,
    pub origin: Origin,
    pub action: Action,
    pub output: Output,
}

#[derive(Debug)]
pub enum Action {
    /// Call a consumed operation.
    Call(Call),
    /// Answer from the output parameters' `value`s, without an upstream.
    Mock,
    /// Pass the rest of the path, the method and the body to an upstream.
    Forward(Forward),
    /// Cannot run (a bound variable has no value): every request gets 503 with this message.
    Unavailable { message: String },
}

/// A call of a consumed operation with its `with` arguments.
#[derive(Debug)]
pub struct Call {
    pub upstream: Arc<UpstreamOperation>,
    /// Consumed parameter name to where its value comes from.
    pub with: Vec<(String, Source)>,
    /// For each of `upstream.params`, whether this call builds its value from bound variables
    /// (its own template reads one, or reads a `with` argument that does): such a value is a
    /// secret, sealed from transforms (`upstream::Sealed`).
    pub sealed: Vec<bool>,
    /// Whether the operation's body template reads bound variables (so the body is a secret).
    pub hides_body: bool,
}

impl Call {
    pub fn new(upstream: Arc<UpstreamOperation>, with: Vec<(String, Source)>) -> Call {
        let bound_args: Vec<&str> = with
            .iter()
            .filter(|(_, source)| matches!(source, Source::Template(t) if t.reads_binds()))
            .map(|(name, _)| name.as_str())
            .collect();
        let secret = |r: &Ref| match r {
            Ref::Bind(_) | Ref::Consumer(_) => true,
            Ref::Input(name) => bound_args.contains(&name.as_str()),
        };
        let sealed = upstream
            .params
            .iter()
            .map(|param| match &param.value {
                Some(template) => template.refs().into_iter().any(secret),
                None => bound_args.contains(&param.name.as_str()),
            })
            .collect();
        let hides_body = match &upstream.body {
            BodyPlan::Structured(t) | BodyPlan::Form(t) => t.refs().into_iter().any(secret),
            BodyPlan::Text { template, .. } => template.refs().any(secret),
            BodyPlan::None | BodyPlan::FromParams => false,
        };
        Call {
            upstream,
            with,
            sealed,
            hides_body,
        }
    }
}

/// Where one argument of a call comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A caller input; left out when the caller did not give it.
    Input(String),
    Template(Template),
    Constant(Value),
}

#[derive(Debug)]
pub struct Forward {
    pub adapter: Arc<UpstreamAdapter>,
    /// Lower-case names of the caller headers copied upstream.
    pub trusted_headers: Vec<http::HeaderName>,
}

/// How a response is shaped for the caller.
#[derive(Debug, Clone)]
pub enum Output {
    /// The upstream body and content type as they are.
    PassThrough,
    Shape(Shape),
}

/// An output shape, built from JSON with JSONPath.
#[derive(Debug, Clone)]
pub enum Shape {
    /// The selected value.
    Select(Selector),
    /// An object of named shapes, each applied to the value `at` selects (or the current one).
    Object {
        at: Option<Selector>,
        properties: Vec<(String, Shape)>,
    },
    /// Each element of the array `at` selects, through `items`.
    Array {
        at: Selector,
        items: Box<Shape>,
    },
    Constant(Value),
    /// A mock value (templates over caller inputs).
    Mock(ValueTemplate),
}

/// A consumed HTTP API.
#[derive(Debug)]
pub struct UpstreamAdapter {
    pub namespace: String,
    /// Scheme, authority and base path, without a trailing slash.
    pub base_uri: String,
    /// `scheme://host:port` of `base_uri`: the key of the per-origin connection bound.
    pub origin: String,
    /// `base_uri` parsed once, when it is a plain base (no query or fragment): request URLs are
    /// then built from it instead of being parsed whole on every call.
    pub base_url: Option<url::Url>,
    pub profile: ProfileName,
    pub auth: Option<Auth>,
    /// `auth` rendered from `binds`, once per snapshot.
    pub credentials: Credentials,
    /// Bound variables of the declaring file.
    pub binds: Arc<BTreeMap<String, Option<Secret>>>,
    /// Adapter-level `inputParameters` with a `value` in a header or the query (an API
    /// version, a key): forwarded requests carry them too, as every operation's do.
    pub fixed: Vec<UpstreamParam>,
}

/// An adapter's upstream credentials ready for the wire. Their templates name only bound
/// variables, which a snapshot holds fixed, so they are rendered once, when the snapshot is
/// built, not per request. Header values are marked sensitive, and `Debug` shows no value.
#[derive(Debug, Default)]
pub enum Credentials {
    #[default]
    None,
    /// A header (`Authorization: Bearer ...`, an API key's header).
    Header(http::HeaderName, http::HeaderValue),
    /// A query parameter's name and value (an API key in the query).
    Query { name: String, value: Secret },
    /// `Authorization: Basic ...`, which the client sets last.
    Basic(http::HeaderValue),
    /// Rendered to text no header can carry: requests are refused as misconfigured.
    Invalid,
}

impl Credentials {
    /// `auth` rendered from `binds` (an absent bound variable renders empty).
    pub fn render(auth: Option<&Auth>, binds: &BTreeMap<String, Option<Secret>>) -> Credentials {
        let scope = crate::template::BindScope(binds);
        let render = |template: &Template| {
            template
                .render_text(&scope)
                .unwrap_or_default()
                .into_owned()
        };
        let sensitive = |text: String| {
            http::HeaderValue::try_from(text).map(|mut value| {
                value.set_sensitive(true);
                value
            })
        };
        let header = |name: http::HeaderName, text: String| {
            sensitive(text).map_or(Credentials::Invalid, |value| {
                Credentials::Header(name, value)
            })
        };
        match auth {
            None => Credentials::None,
            Some(Auth::Bearer(token)) => header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", render(token)),
            ),
            Some(Auth::ApiKeyHeader { name, value }) => header(name.clone(), render(value)),
            Some(Auth::ApiKeyQuery { name, value }) => Credentials::Query {
                name: name.clone(),
                value: Secret::new(render(value)),
            },
            Some(Auth::Basic { username, password }) => {
                use base64::Engine as _;
                let token = base64::engine::general_purpose::STANDARD.encode(format!(
                    "{}:{}",
                    render(username),
                    render(password)
                ));
                sensitive(format!("Basic {token}")).map_or(Credentials::Invalid, Credentials::Basic)
            }
        }
    }
}

/// Credentials as an `authentication` block declares them: added to upstream requests after
/// transforms ran (`UpstreamAdapter::auth`), or required from callers (`CallerAuth`).
#[derive(Debug)]
pub enum Auth {
    Bearer(Template),
    ApiKeyHeader {
        name: http::HeaderName,
        value: Template,
    },
    ApiKeyQuery {
        name: String,
        value: Template,
    },
    Basic {
        username: Template,
        password: Template,
    },
}

impl Auth {
    /// The references of its templates (only ever bound variables).
    pub fn refs(&self) -> Box<dyn Iterator<Item = &Ref> + '_> {
        match self {
            Auth::Bearer(t) => Box::new(t.refs()),
            Auth::ApiKeyHeader { value, .. } | Auth::ApiKeyQuery { value, .. } => {
                Box::new(value.refs())
            }
            Auth::Basic { username, password } => Box::new(username.refs().chain(password.refs())),
        }
    }

    /// The scheme's name in a `WWW-Authenticate` challenge.
    pub fn scheme_name(&self) -> &'static str {
        match self {
            Auth::Bearer(_) => "Bearer",
            Auth::Basic { .. } => "Basic",
            Auth::ApiKeyHeader { .. } | Auth::ApiKeyQuery { .. } => "ApiKey",
        }
    }
}

/// How callers of one exposed adapter prove who they are (its `authentication`).
#[derive(Debug)]
pub struct CallerAuth {
    pub scheme: Auth,
    /// Bound variables of the declaring file.
    pub binds: Arc<BTreeMap<String, Option<Secret>>>,
    /// Bound variables the credentials need that have no value: every request gets 503.
    pub missing: Vec<String>,
}

/// A plugin bound to an operation, with its settings from the gateway config.
#[derive(Debug, Clone, PartialEq)]
pub struct TransformRef {
    /// The plugin file (`redact_pii.wasm`).
    pub plugin: String,
    /// The binding's config, as JSON text.
    pub config: Arc<str>,
    pub on_error: FailurePolicy,
    pub timeout: std::time::Duration,
    /// Bytes of memory a call may use.
    pub memory: usize,
    /// Whether a call may run in an instance an earlier call left (`instances: reused`).
    pub reuse: bool,
}

/// A consumed operation.
#[derive(Debug)]
pub struct UpstreamOperation {
    /// `namespace.operation`.
    pub name: String,
    /// The capability that declares it (its file name without the extension).
    pub capability: Arc<str>,
    /// Plugins around its upstream call, in order.
    pub transforms: Vec<Arc<TransformRef>>,
    pub adapter: Arc<UpstreamAdapter>,
    pub method: Method,
    pub path: Vec<PathPart>,
    /// Adapter, resource and operation parameters, in that order.
    pub params: Vec<UpstreamParam>,
    pub body: BodyPlan,
    /// The request body's schema from the adapter's schema sources (`capgate_model::openapi`):
    /// what tools announce for an opaque body, and what a caller's body is checked against.
    pub body_schema: Option<Arc<Map<String, Value>>>,
    /// Bound variables this operation needs that have no value.
    pub missing_binds: Vec<String>,
}

impl UpstreamOperation {
    pub fn param(&self, name: &str) -> Option<&UpstreamParam> {
        self.params.iter().find(|p| p.name == name)
    }
}

/// A piece of an upstream path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPart {
    /// Already percent-encoded text.
    Literal(String),
    /// A parameter, percent-encoded as one segment when rendered.
    Param(String),
}

#[derive(Debug, Clone)]
pub struct UpstreamParam {
    pub name: String,
    pub location: Location,
    /// The parameter's own `value` template.
    pub value: Option<ValueTemplate>,
    pub spec: InputSpec,
    /// For a query parameter the file does not declare but the upstream's schema source
    /// gives the operation: its JSON Schema, which tools announce.
    pub described: Option<Arc<Map<String, Value>>>,
}

/// How the request body is built.
#[derive(Debug, Clone)]
pub enum BodyPlan {
    None,
    /// From `in: body` parameters: `body` (an object) is the whole body, others are fields.
    FromParams,
    /// `body: {type: json}`, encoded by the profile (form for Stripe).
    Structured(ValueTemplate),
    /// `body: {type: formUrlEncoded}`: always form-encoded.
    Form(ValueTemplate),
    /// Text, XML or a raw template, sent with its media type.
    Text {
        template: Template,
        content_type: &'static str,
    },
}

/// `scheme://host:port` of a base URI (the URI itself when it does not parse).
pub fn origin_of(base_uri: &str) -> String {
    match url::Url::parse(base_uri) {
        Ok(url) => format!(
            "{}://{}:{}",
            url.scheme(),
            url.host_str().unwrap_or(""),
            url.port_or_known_default().unwrap_or(0)
        ),
        Err(_) => base_uri.to_owned(),
    }
}

/// A base URI parsed, when it is one request URLs can be built from by setting the path and
/// query (it parses, has neither query nor fragment, and its scheme and authority are a valid
/// `http::Uri`).
pub fn plain_base(base_uri: &str) -> Option<url::Url> {
    url::Url::parse(base_uri).ok().filter(|u| {
        !u.cannot_be_a_base()
            && u.query().is_none()
            && u.fragment().is_none()
            && http::Uri::try_from(&u[..url::Position::BeforePath])
                .is_ok_and(|origin| origin.scheme().is_some() && origin.authority().is_some())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(text: &str) -> Template {
        Template::compile(text, |p| Ref::Bind(p.name.clone()))
    }

    #[test]
    fn credentials_render_once_as_sensitive_values_never_shown() {
        let binds = BTreeMap::from([
            ("KEY".to_owned(), Some(Secret::new("sk_test_123"))),
            ("BAD".to_owned(), Some(Secret::new("a\nb"))),
            ("UNSET".to_owned(), None),
        ]);
        let render = |auth: Auth| Credentials::render(Some(&auth), &binds);

        let Credentials::Header(name, value) = render(Auth::Bearer(bound("{{KEY}}"))) else {
            panic!("a bearer token is a header");
        };
        assert_eq!(name, http::header::AUTHORIZATION);
        assert_eq!(value, "Bearer sk_test_123");
        assert!(value.is_sensitive());

        let basic = render(Auth::Basic {
            username: bound("{{KEY}}"),
            password: bound("{{UNSET}}"),
        });
        let Credentials::Basic(value) = &basic else {
            panic!("basic credentials are their own header");
        };
        // base64("sk_test_123:"): an unset variable renders empty.
        assert_eq!(value, "Basic c2tfdGVzdF8xMjM6");
        assert!(!format!("{basic:?}").contains("c2tf"), "{basic:?}");

        let query = render(Auth::ApiKeyQuery {
            name: "key".into(),
            value: bound("{{KEY}}"),
        });
        assert!(matches!(&query, Credentials::Query { name, value }
            if name == "key" && value.expose() == "sk_test_123"));
        assert!(!format!("{query:?}").contains("sk_test"), "{query:?}");

        let header = render(Auth::ApiKeyHeader {
            name: http::HeaderName::from_static("x-api-key"),
            value: bound("{{BAD}}"),
        });
        assert!(matches!(header, Credentials::Invalid), "{header:?}");
        assert!(matches!(
            Credentials::render(None, &binds),
            Credentials::None
        ));
    }
}
