//! The capability format as written: one Rust type per construct of `naftiko: 1.0.0-alpha2`.
//!
//! These types hold what a file says, after lenient decoding (see `decode`), with the line and key
//! path of every part so that `compile` can explain itself. They carry no meaning yet: resolving
//! references, templates and collisions is `compile`'s job.

use serde_json::Value;

use crate::diag::Loc;

/// A value and the line it was written on.
#[derive(Debug, Clone, PartialEq)]
pub struct Spanned<T> {
    pub value: T,
    pub line: u32,
}

impl<T> Spanned<T> {
    pub fn new(value: T, line: u32) -> Self {
        Spanned { value, line }
    }
}

impl Spanned<String> {
    pub fn as_str(&self) -> &str {
        &self.value
    }
}

/// One YAML file of the format.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// `naftiko`: the format version.
    pub version: Option<Spanned<String>>,
    /// `info`.
    pub info: Info,
    /// `binds` (root level, or under `capability` as some files write it).
    pub binds: Vec<Bind>,
    pub body: DocumentBody,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DocumentBody {
    /// A document with `capability`.
    Capability(Capability),
    /// A standalone consumes document (root `consumes`), loaded only through an import.
    Consumes(Vec<Consumes>),
    /// YAML that is not a capability (a secrets file, say).
    NotCapability,
}

/// `info`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Info {
    pub label: Option<String>,
    pub description: Option<String>,
    /// `modified` (else `created`): the date the capability was last changed, the nearest
    /// thing the format has to a version.
    pub modified: Option<String>,
}

/// One entry of `binds`.
#[derive(Debug, Clone, PartialEq)]
pub struct Bind {
    pub namespace: String,
    /// `location`: a `file://` URI of a JSON or YAML file; absent means the process environment.
    pub location: Option<Spanned<String>>,
    /// `keys`: variable name to the key in the source.
    pub keys: Vec<(Spanned<String>, String)>,
    pub at: Loc,
}

/// `capability`.
#[derive(Debug, Clone, PartialEq)]
pub struct Capability {
    pub consumes: Vec<Consumes>,
    pub exposes: Vec<Exposes>,
    /// Parts of the capability in a mode capgate does not serve yet (`aggregates`).
    pub unsupported: Vec<Unsupported>,
    pub at: Loc,
}

/// A construct that was read but is not served yet.
#[derive(Debug, Clone, PartialEq)]
pub struct Unsupported {
    /// The feature, as the format names it (`steps`, `aggregates`, `skill`, ...).
    pub feature: String,
    pub at: Loc,
}

/// One entry of `consumes`.
#[derive(Debug, Clone, PartialEq)]
pub enum Consumes {
    Http(HttpConsumes),
    Import(Import),
    /// A consumes entry of another type; reported, never served.
    Other {
        kind: String,
        at: Loc,
    },
}

/// `{import: NS, location: PATH, as?: NEW}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Import {
    pub namespace: Spanned<String>,
    pub location: Spanned<String>,
    pub rename: Option<Spanned<String>>,
    pub at: Loc,
}

/// A consumed HTTP API (`type: http`).
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConsumes {
    pub namespace: Spanned<String>,
    pub base_uri: Spanned<String>,
    pub description: Option<String>,
    /// Adapter-level `inputParameters`, sent with every operation.
    pub params: Vec<Param>,
    pub authentication: Option<Authentication>,
    pub resources: Vec<ConsumedResource>,
    pub at: Loc,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConsumedResource {
    pub name: Option<String>,
    pub path: Spanned<String>,
    pub params: Vec<Param>,
    pub operations: Vec<ConsumedOperation>,
    pub at: Loc,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConsumedOperation {
    pub name: Spanned<String>,
    pub method: Spanned<String>,
    pub description: Option<String>,
    pub params: Vec<Param>,
    pub output_raw_format: Option<Spanned<String>>,
    pub outputs: Vec<OutputParam>,
    pub body: Option<RequestBody>,
    pub at: Loc,
}

/// Where a parameter goes (`in`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamIn {
    Query,
    Path,
    Header,
    Cookie,
    Body,
    Environment,
}

impl ParamIn {
    pub fn parse(text: &str) -> Option<ParamIn> {
        Some(match text.to_ascii_lowercase().as_str() {
            "query" => ParamIn::Query,
            "path" => ParamIn::Path,
            "header" => ParamIn::Header,
            "cookie" => ParamIn::Cookie,
            "body" => ParamIn::Body,
            "environment" => ParamIn::Environment,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ParamIn::Query => "query",
            ParamIn::Path => "path",
            ParamIn::Header => "header",
            ParamIn::Cookie => "cookie",
            ParamIn::Body => "body",
            ParamIn::Environment => "environment",
        }
    }
}

/// An input parameter, consumed or exposed (the format has several near-identical kinds; the
/// fields one kind lacks stay `None`).
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    pub name: Spanned<String>,
    /// `in`.
    pub location: Option<ParamIn>,
    /// `value`: a template (consumed) or a JSONPath into the body (exposed `in: body`).
    pub value: Option<Value>,
    /// `type` (`string`, `integer`, `number`, `boolean`, `array`, `object`).
    pub ty: Option<String>,
    pub description: Option<String>,
    pub required: Option<bool>,
    pub pattern: Option<String>,
    pub at: Loc,
}

/// An operation-level `body`.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestBody {
    Json(Value),
    Text(String),
    Xml(String),
    FormUrlEncoded(Value),
    MultipartForm(Vec<Value>),
    /// A raw string template sent as it is.
    Raw(String),
}

/// `authentication` of a consumed adapter (or of an exposed one, which capgate reports).
#[derive(Debug, Clone, PartialEq)]
pub enum Authentication {
    Bearer {
        token: String,
        at: Loc,
    },
    ApiKey {
        key: String,
        value: String,
        /// `placement`: `header` (the default) or `query`.
        placement: Option<String>,
        at: Loc,
    },
    Basic {
        username: String,
        password: String,
        at: Loc,
    },
    /// `digest`, `oauth2` or an unknown type: not supported.
    Other {
        kind: String,
        at: Loc,
    },
}

/// One entry of `exposes`.
#[derive(Debug, Clone, PartialEq)]
pub enum Exposes {
    Rest(RestAdapter),
    Mcp(McpAdapter),
    /// `skill`, `control` or an unknown type: reported, not served.
    Other {
        kind: String,
        namespace: Option<String>,
        at: Loc,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct RestAdapter {
    pub namespace: Spanned<String>,
    pub address: Option<Spanned<String>>,
    pub port: Option<Spanned<u16>>,
    pub description: Option<String>,
    pub authentication: Option<Authentication>,
    pub resources: Vec<RestResource>,
    pub at: Loc,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RestResource {
    pub path: Spanned<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub params: Vec<Param>,
    pub operations: Vec<RestOperation>,
    pub forward: Option<Forward>,
    pub at: Loc,
}

/// `forward: {targetNamespace, trustedHeaders}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    pub target: Spanned<String>,
    pub trusted_headers: Vec<String>,
    pub at: Loc,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RestOperation {
    pub method: Spanned<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub params: Vec<Param>,
    pub call: Option<Spanned<String>>,
    pub with: Vec<WithEntry>,
    pub outputs: Vec<OutputParam>,
    /// `steps`, `ref`, `mappings`: orchestration, not served yet.
    pub unsupported: Vec<Unsupported>,
    pub at: Loc,
}

/// One entry of `with`: consumed parameter name to a source.
#[derive(Debug, Clone, PartialEq)]
pub struct WithEntry {
    pub name: String,
    pub value: Value,
    pub line: u32,
}

/// An output parameter (mapped, mock or consumed).
#[derive(Debug, Clone, PartialEq)]
pub struct OutputParam {
    pub name: Option<String>,
    pub ty: Option<String>,
    /// `mapping`: a JSONPath against the response (or the enclosing item).
    pub mapping: Option<Spanned<String>>,
    /// `value`: a mock value (template) or, on consumed operations, a JSONPath.
    pub value: Option<Value>,
    /// `const`.
    pub constant: Option<Value>,
    pub properties: Vec<(String, OutputParam)>,
    pub items: Option<Box<OutputParam>>,
    pub at: Loc,
}

#[derive(Debug, Clone, PartialEq)]
pub struct McpAdapter {
    pub namespace: Spanned<String>,
    pub address: Option<Spanned<String>>,
    pub port: Option<Spanned<u16>>,
    pub transport: Option<Spanned<String>>,
    pub description: Option<String>,
    pub authentication: Option<Authentication>,
    pub tools: Vec<McpTool>,
    /// `resources`, `prompts`: not served yet.
    pub unsupported: Vec<Unsupported>,
    pub at: Loc,
}

#[derive(Debug, Clone, PartialEq)]
pub struct McpTool {
    pub name: Spanned<String>,
    pub label: Option<String>,
    pub description: Option<String>,
    pub params: Vec<Param>,
    pub call: Option<Spanned<String>>,
    pub with: Vec<WithEntry>,
    pub hints: Hints,
    pub outputs: Vec<OutputParam>,
    pub unsupported: Vec<Unsupported>,
    pub at: Loc,
}

/// `hints` of a tool; absent hints take MCP's defaults when served.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hints {
    pub read_only: Option<bool>,
    pub destructive: Option<bool>,
    pub idempotent: Option<bool>,
    pub open_world: Option<bool>,
}
