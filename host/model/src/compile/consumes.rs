//! Compiling `consumes`: upstream adapters (base URI, profile, auth) and their operations
//! (method, path template, parameters, body plan).

use std::collections::BTreeMap;
use std::sync::Arc;

use globset::Glob;
use http::Method;

use super::Options;
use super::auth::Side;
use super::inputs::input_spec;
use crate::config::{FailurePolicy, InstancePolicy, ProfileName, TransformBinding};
use crate::diag::{Code, Diagnostics};
use crate::snapshot::{
    BodyPlan, Location, PathPart, TransformRef, UpstreamAdapter, UpstreamOperation, UpstreamParam,
};
use crate::spec::{
    Capability, ConsumedOperation, ConsumedResource, Consumes, HttpConsumes, LoadedFile, Param,
    RequestBody,
};
use crate::template::{Placeholder, Ref, Template, ValueTemplate};

/// The consumed operations of one file, by every name a `call` may use.
#[derive(Debug, Default)]
pub(super) struct Upstreams {
    /// `namespace.operation` and `namespace.resource.operation`.
    pub operations: BTreeMap<String, Arc<UpstreamOperation>>,
    pub adapters: BTreeMap<String, Arc<UpstreamAdapter>>,
    /// Adapters and operations that are declared but not served, with the reason.
    pub unserved: BTreeMap<String, String>,
}

pub(super) fn compile(
    loaded: &LoadedFile,
    capability: &Capability,
    options: &Options,
    diags: &mut Diagnostics,
) -> Upstreams {
    let mut upstreams = Upstreams::default();
    let binds = Arc::new(loaded.bound.clone());
    let inline: Vec<&HttpConsumes> = capability
        .consumes
        .iter()
        .filter_map(|c| match c {
            Consumes::Http(http) => Some(http),
            Consumes::Other { kind, at } => {
                diags
                    .error(
                        Code::Unsupported,
                        at,
                        format!("consumes type `{kind}` is not served"),
                    )
                    .found(kind.clone())
                    .expected("type: http");
                None
            }
            Consumes::Import(_) => None,
        })
        .collect();
    // Findings about an imported adapter name the file it was written in.
    let imported = loaded.imports.iter().map(|i| (&i.adapter, Some(&i.source)));
    for (http, source) in inline.into_iter().map(|h| (h, None)).chain(imported) {
        match source {
            Some(file) => {
                let mut own = Diagnostics::new(file.clone());
                add_adapter(loaded, http, options, &binds, &mut upstreams, &mut own);
                diags.extend(own.into_grouped());
            }
            None => add_adapter(loaded, http, options, &binds, &mut upstreams, diags),
        }
    }
    upstreams
}

/// How many query and body parameters the file does not declare were taken from the
/// upstream's OpenAPI description, and of how many operations (for the file's
/// `schema-source` note).
pub fn described_params(upstreams: &Upstreams) -> (usize, usize, usize) {
    let mut operations: Vec<&Arc<UpstreamOperation>> = upstreams.operations.values().collect();
    operations.sort_by_key(|op| Arc::as_ptr(op));
    operations.dedup_by_key(|op| Arc::as_ptr(op));
    let described = |op: &&Arc<UpstreamOperation>, body: bool| {
        op.params
            .iter()
            .filter(|p| p.described.is_some() && (p.location == Location::Body) == body)
            .count()
    };
    let query = operations.iter().map(|op| described(op, false)).sum();
    let body = operations.iter().map(|op| described(op, true)).sum();
    let ops = operations
        .iter()
        .filter(|op| described(op, false) + described(op, true) > 0)
        .count();
    (query, body, ops)
}

fn add_adapter(
    loaded: &LoadedFile,
    http: &HttpConsumes,
    options: &Options,
    binds: &Arc<BTreeMap<String, Option<crate::secret::Secret>>>,
    upstreams: &mut Upstreams,
    diags: &mut Diagnostics,
) {
    let namespace = http.namespace.value.clone();
    if upstreams.adapters.contains_key(&namespace) || upstreams.unserved.contains_key(&namespace) {
        diags
            .error(
                Code::DuplicateNamespace,
                &http.at.key("namespace", http.namespace.line),
                "consumes namespace declared twice; the second is not served",
            )
            .found(namespace);
        return;
    }
    match adapter(http, options, binds, diags) {
        Ok(mut adapter) => {
            // Compiled again with each operation (whose diagnostics say what is wrong).
            let mut scratch = Diagnostics::new(loaded.path.clone());
            let mut resolve = resolver(loaded);
            adapter.fixed = http
                .params
                .iter()
                .filter(|p| p.value.is_some())
                .filter_map(|p| upstream_param(p, adapter.profile, &mut resolve, &mut scratch))
                .filter(|p| matches!(p.location, Location::Header | Location::Query))
                .collect();
            let adapter = Arc::new(adapter);
            operations(loaded, http, &adapter, options, upstreams, diags);
            upstreams.adapters.insert(namespace, adapter);
        }
        Err(reason) => {
            upstreams.unserved.insert(namespace, reason);
        }
    }
}

fn adapter(
    http: &HttpConsumes,
    options: &Options,
    binds: &Arc<BTreeMap<String, Option<crate::secret::Secret>>>,
    diags: &mut Diagnostics,
) -> Result<UpstreamAdapter, String> {
    let at = &http.at;
    let declared = http.base_uri.value.trim();
    let uri_at = at.key("baseUri", http.base_uri.line);
    let parsed = match url::Url::parse(declared) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => url,
        _ => {
            diags
                .error(
                    Code::BadValue,
                    &uri_at,
                    "baseUri must be an absolute http(s) URL; adapter not served",
                )
                .found(declared.to_owned())
                .expected("https://host[/base/path]");
            return Err(format!(
                "baseUri \"{declared}\" is not an absolute http(s) URL"
            ));
        }
    };
    if declared.ends_with('/') {
        diags
            .warning(
                Code::TrailingSlash,
                &uri_at,
                "trailing slash on baseUri ignored",
            )
            .found(declared.to_owned());
    }
    let mut profile = if parsed.host_str() == Some("api.stripe.com") {
        ProfileName::Stripe
    } else {
        ProfileName::Default
    };
    let mut base_uri = declared.trim_end_matches('/').to_owned();
    if let Some(rule) = options
        .upstreams
        .iter()
        .find(|rule| namespace_matches(&rule.namespace, &http.namespace.value))
    {
        if let Some(uri) = &rule.base_uri {
            base_uri = uri.trim_end_matches('/').to_owned();
        }
        if let Some(p) = rule.profile {
            profile = p;
        }
    }
    let auth = match &http.authentication {
        None => None,
        Some(auth) => Some(super::auth::compile(auth, Side::Upstream, diags)?),
    };
    Ok(UpstreamAdapter {
        namespace: http.namespace.value.clone(),
        origin: crate::snapshot::origin_of(&base_uri),
        base_url: crate::snapshot::plain_base(&base_uri),
        base_uri,
        profile,
        credentials: crate::snapshot::Credentials::render(auth.as_ref(), binds),
        auth,
        binds: binds.clone(),
        fixed: Vec::new(),
    })
}

/// Whether an override's namespace pattern (exact or glob) matches.
pub(crate) fn namespace_matches(pattern: &str, namespace: &str) -> bool {
    pattern == namespace
        || Glob::new(pattern)
            .map(|g| g.compile_matcher().is_match(namespace))
            .unwrap_or(false)
}

/// Resolves `{{x}}` / `{{ns.x}}` in consumed templates: a bind namespace or a bound variable
/// name means the bound variable; anything else is a caller input.
/// The namespace of the calling consumer's metadata in templates (a file's own bind namespace
/// of the same name wins).
pub const CONSUMER_NAMESPACE: &str = "consumer";

pub(super) fn resolver(loaded: &LoadedFile) -> impl FnMut(&Placeholder) -> Ref + '_ {
    move |p: &Placeholder| match &p.namespace {
        Some(ns) if loaded.bind_namespaces.contains(ns) => Ref::Bind(p.name.clone()),
        Some(ns) if ns == CONSUMER_NAMESPACE => Ref::Consumer(p.name.clone()),
        Some(_) => Ref::Input(p.name.clone()),
        None if loaded.bound.contains_key(&p.name) => Ref::Bind(p.name.clone()),
        None => Ref::Input(p.name.clone()),
    }
}

/// Compiles the operations of one adapter into `upstreams`: each under `namespace.operation` and,
/// when its resource has a name, `namespace.resource.operation` too. An operation that cannot be
/// served is recorded with the reason, so that a `call` of it says why instead of "unknown".
fn operations(
    loaded: &LoadedFile,
    http: &HttpConsumes,
    adapter: &Arc<UpstreamAdapter>,
    options: &Options,
    upstreams: &mut Upstreams,
    diags: &mut Diagnostics,
) {
    let capability = super::capability_name(&loaded.path);
    let sources = options.schemas.for_adapter(adapter);
    for resource in &http.resources {
        // A path the upstream's description does not have is most likely a typo in the file
        // (the corpus has `/v1/Invoice Items` for `/v1/invoiceitems`), or a surface newer than
        // the description. The typo of spaces and capitals is what the author meant, sent so.
        let meant = meant_path(&resource.path.value, &sources);
        if let Some(meant) = &meant {
            diags
                .warning(
                    Code::NameMismatch,
                    &resource.at.key("path", resource.path.line),
                    format!("this path is not in the upstream's OpenAPI description, but `{meant}` is, spelled without spaces and in lower case; sent as `{meant}`"),
                )
                .found(resource.path.value.clone())
                .expected(meant.clone());
        } else if !sources.is_empty()
            && !sources.iter().any(|api| api.has_path(&resource.path.value))
        {
            let nearest = sources[sources.len() - 1].nearest_paths(&resource.path.value);
            diags
                .warning(
                    Code::SchemaSource,
                    &resource.at.key("path", resource.path.line),
                    "this path is not in the upstream's OpenAPI description (a typo, or a newer surface); its operations are served as declared",
                )
                .found(resource.path.value.clone())
                .expected(format!("one of the nearest: {}", nearest.join(", ")));
        }
        for op in &resource.operations {
            let full_name = format!("{}.{}", http.namespace.value, op.name.value);
            let declared = Declared {
                loaded,
                http,
                resource,
                path: meant.as_deref().unwrap_or(&resource.path.value),
                op,
            };
            match operation(&declared, &capability, &full_name, adapter, options, diags) {
                Ok(operation) => {
                    register(&declared, &full_name, Arc::new(operation), upstreams, diags)
                }
                Err(reason) => {
                    upstreams.unserved.insert(full_name, reason);
                }
            }
        }
    }
}

/// Where one consumed operation is declared.
struct Declared<'a> {
    loaded: &'a LoadedFile,
    http: &'a HttpConsumes,
    resource: &'a ConsumedResource,
    /// The resource's path, or the one its author evidently meant (`meant_path`).
    path: &'a str,
    op: &'a ConsumedOperation,
}

/// The path the author evidently meant when theirs is not in the upstream's description: its
/// literal text without whitespace and in lower case (`/v1/Invoice Items/{invoiceitem}` for
/// `/v1/invoiceitems/{invoiceitem}`), when the description has that. Variables keep the
/// file's names. `None` when the path is in the description or the fix is not.
fn meant_path(path: &str, sources: &[Arc<crate::openapi::OpenApi>]) -> Option<String> {
    if sources.is_empty() || sources.iter().any(|api| api.has_path(path)) {
        return None;
    }
    let mut meant = String::with_capacity(path.len());
    let mut inside = false;
    for c in path.chars() {
        match c {
            '{' => inside = true,
            '}' => inside = false,
            _ => {}
        }
        if inside || c == '}' {
            meant.push(c);
        } else if !c.is_whitespace() {
            meant.push(c.to_ascii_lowercase());
        }
    }
    (meant != path && sources.iter().any(|api| api.has_path(&meant))).then_some(meant)
}

/// One consumed operation; `Err` is why it is not served (a diagnostic says it in full).
fn operation(
    declared: &Declared<'_>,
    capability: &Arc<str>,
    full_name: &str,
    adapter: &Arc<UpstreamAdapter>,
    options: &Options,
    diags: &mut Diagnostics,
) -> Result<UpstreamOperation, String> {
    let Declared {
        loaded,
        http,
        resource,
        op,
        ..
    } = *declared;
    let method = method_of(op, diags)?;
    if let Some(format) = &op.output_raw_format
        && !format.value.eq_ignore_ascii_case("json")
    {
        diags
            .error(
                Code::Unsupported,
                &op.at.key("outputRawFormat", format.line),
                "non-JSON outputRawFormat is not served yet; operation not served",
            )
            .found(format.value.clone())
            .expected("json");
        return Err(format!(
            "outputRawFormat \"{}\" is not served yet",
            format.value
        ));
    }
    let path_at = resource.at.key("path", resource.path.line);
    let path = path_template(declared.path, &path_at, diags);
    let mut resolve = resolver(loaded);
    let sources = options.schemas.for_adapter(adapter);
    let mut params = parameters(declared, &path, adapter.profile, &mut resolve, diags);
    add_described_query(
        &mut params,
        &sources,
        &method,
        declared.path,
        adapter.profile,
    );
    let body_schema = crate::openapi::shared_request_in(&sources, &method, declared.path);
    add_described_body(
        &mut params,
        body_schema.as_deref(),
        &method,
        adapter.profile,
        op.body.is_some(),
    );
    let body = body_plan(op, &method, &params, &mut resolve, diags)?;
    let missing_binds = missing_binds(adapter, &params, &body);
    let transforms = transforms_for(
        &options.transforms,
        capability,
        &http.namespace.value,
        &op.name.value,
    );
    if let Some(loaded) = &options.loaded_plugins {
        warn_unloaded(&transforms, loaded, &op.at, diags);
    }
    Ok(UpstreamOperation {
        name: full_name.to_owned(),
        capability: capability.clone(),
        transforms,
        adapter: adapter.clone(),
        method,
        path,
        params,
        body,
        body_schema,
        missing_binds,
    })
}

fn method_of(op: &ConsumedOperation, diags: &mut Diagnostics) -> Result<Method, String> {
    match op.method.value.to_ascii_uppercase().as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => {
            Ok(Method::from_bytes(m.as_bytes()).expect("a standard method"))
        }
        other => {
            diags
                .error(
                    Code::BadValue,
                    &op.at.key("method", op.method.line),
                    "unknown HTTP method; operation not served",
                )
                .found(other.to_owned())
                .expected("GET, POST, PUT, PATCH or DELETE");
            Err(format!("method \"{other}\" is unknown"))
        }
    }
}

/// The adapter's, the resource's and the operation's parameters, in that order; a later one
/// of the same name replaces an earlier one (the operation says it more precisely). A path
/// variable no parameter declares becomes a required string parameter: the path cannot be
/// built without it, so a call must say so before anything is sent.
fn parameters(
    declared: &Declared<'_>,
    path: &[PathPart],
    profile: ProfileName,
    resolve: &mut impl FnMut(&Placeholder) -> Ref,
    diags: &mut Diagnostics,
) -> Vec<UpstreamParam> {
    let Declared {
        http, resource, op, ..
    } = *declared;
    let mut params: Vec<UpstreamParam> = Vec::new();
    for param in http.params.iter().chain(&resource.params).chain(&op.params) {
        let Some(compiled) = upstream_param(param, profile, resolve, diags) else {
            continue;
        };
        match params.iter_mut().find(|p| p.name == compiled.name) {
            Some(existing) => *existing = compiled,
            None => params.push(compiled),
        }
    }
    for part in path {
        if let PathPart::Param(name) = part
            && !params.iter().any(|p| &p.name == name)
        {
            params.push(UpstreamParam {
                name: name.clone(),
                location: Location::Path,
                value: None,
                spec: input_spec(name, Some("string"), true, None, profile),
                described: None,
            });
        }
    }
    params
}

/// The query parameters the upstream's schema sources give the operation and the file does
/// not declare (by name, or by a spelling that differs only in `-`/`_` or case): each is added,
/// optional, with its schema, so callers can send it and tools announce it. Stripe's list
/// operations are where this matters: files that leave out `expand` or `created` would
/// otherwise refuse them as unknown.
fn add_described_query(
    params: &mut Vec<UpstreamParam>,
    sources: &[Arc<crate::openapi::OpenApi>],
    method: &Method,
    path: &str,
    profile: ProfileName,
) {
    if sources.is_empty() {
        return;
    }
    let spelling = super::fold_spelling;
    for query in crate::openapi::shared_query_in(sources, method, path).iter() {
        let taken = spelling(&query.name);
        if params.iter().any(|p| spelling(&p.name) == taken) {
            continue;
        }
        params.push(UpstreamParam {
            name: query.name.clone(),
            location: Location::Query,
            value: None,
            spec: super::inputs::described_spec(&query.name, &query.schema, profile),
            described: Some(query.schema.clone()),
        });
    }
}

/// An operation that sends its body as `in: body` parameters (no `body` template, no opaque
/// `body` object, which tools enrich instead) gets the description's other body properties as
/// optional `in: body` parameters, as it gets the query parameters it leaves out: surfaces take
/// them by name and announce them with their schemas, and the body carries those a call gives.
fn add_described_body(
    params: &mut Vec<UpstreamParam>,
    schema: Option<&serde_json::Map<String, serde_json::Value>>,
    method: &Method,
    profile: ProfileName,
    templated: bool,
) {
    let in_body = |p: &&UpstreamParam| p.location == Location::Body;
    let Some(schema) = schema else {
        return;
    };
    if templated
        || matches!(*method, Method::GET | Method::DELETE | Method::HEAD)
        || !params.iter().any(|p| in_body(&p))
        || params.iter().filter(in_body).any(|p| p.name == "body")
    {
        return;
    }
    let Some(serde_json::Value::Object(properties)) = schema.get("properties") else {
        return;
    };
    let spelling = super::fold_spelling;
    for (name, property) in properties {
        let taken = spelling(name);
        let serde_json::Value::Object(property) = property else {
            continue;
        };
        if params.iter().any(|p| spelling(&p.name) == taken) {
            continue;
        }
        params.push(UpstreamParam {
            name: name.clone(),
            location: Location::Body,
            value: None,
            spec: super::inputs::described_spec(name, property, profile),
            described: Some(Arc::new(property.clone())),
        });
    }
}

/// How the request body is built: the operation's `body`, else its `in: body` parameters. GET,
/// DELETE and HEAD calls send none, whatever the file declares (a `body` there is a warning).
fn body_plan(
    op: &ConsumedOperation,
    method: &Method,
    params: &[UpstreamParam],
    resolve: &mut impl FnMut(&Placeholder) -> Ref,
    diags: &mut Diagnostics,
) -> Result<BodyPlan, String> {
    let has_body = !matches!(*method, Method::GET | Method::DELETE | Method::HEAD);
    Ok(match (&op.body, has_body) {
        (Some(_), false) => {
            diags.warning(
                Code::BodyOnGet,
                &op.at.key("body", op.at.line),
                format!("{method} never sends a body; `body` ignored"),
            );
            BodyPlan::None
        }
        (Some(body), true) => match compile_body(body, resolve) {
            Ok(plan) => plan,
            Err(message) => {
                diags.error(
                    Code::Unsupported,
                    &op.at.key("body", op.at.line),
                    format!("{message}; operation not served"),
                );
                return Err(message);
            }
        },
        (None, true) if params.iter().any(|p| p.location == Location::Body) => BodyPlan::FromParams,
        (None, _) => BodyPlan::None,
    })
}

/// Bound variables the operation reads (in its adapter's auth, its parameters' values, its body)
/// that have no value: the operation is served, and answers 503 naming them until they are set.
fn missing_binds(
    adapter: &UpstreamAdapter,
    params: &[UpstreamParam],
    body: &BodyPlan,
) -> Vec<String> {
    let mut missing: Vec<String> = Vec::new();
    let mut note = |r: &Ref| {
        if let Ref::Bind(var) = r
            && adapter.binds.get(var).is_none_or(Option::is_none)
            && !missing.contains(var)
        {
            missing.push(var.clone());
        }
    };
    if let Some(auth) = &adapter.auth {
        auth.refs().for_each(&mut note);
    }
    for p in params {
        if let Some(v) = &p.value {
            v.refs().into_iter().for_each(&mut note);
        }
    }
    match body {
        BodyPlan::Structured(t) | BodyPlan::Form(t) => t.refs().into_iter().for_each(&mut note),
        BodyPlan::Text { template, .. } => template.refs().for_each(&mut note),
        BodyPlan::None | BodyPlan::FromParams => {}
    }
    missing
}

/// Files the operation under the names a `call` may use. A name used twice in one adapter
/// means the first operation (the file's order decides, never a map's); the second stays
/// reachable through its resource's name.
fn register(
    declared: &Declared<'_>,
    full_name: &str,
    operation: Arc<UpstreamOperation>,
    upstreams: &mut Upstreams,
    diags: &mut Diagnostics,
) {
    let Declared {
        http, resource, op, ..
    } = *declared;
    match upstreams.operations.entry(full_name.to_owned()) {
        std::collections::btree_map::Entry::Occupied(_) => {
            diags
                .warning(Code::DuplicateOperation, &op.at.key("name", op.name.line), format!("operation name `{}` is used twice in `{}`; `call: {full_name}` means the first, use namespace.resource.operation for this one", op.name.value, http.namespace.value))
                .found(op.name.value.clone());
        }
        std::collections::btree_map::Entry::Vacant(slot) => {
            slot.insert(operation.clone());
        }
    }
    if let Some(resource_name) = &resource.name {
        upstreams.operations.insert(
            format!("{}.{resource_name}.{}", http.namespace.value, op.name.value),
            operation,
        );
    }
}

fn upstream_param(
    param: &Param,
    profile: ProfileName,
    resolve: &mut impl FnMut(&Placeholder) -> Ref,
    diags: &mut Diagnostics,
) -> Option<UpstreamParam> {
    let location = match param.location.map(super::location_of) {
        Some(None) => {
            diags
                .warning(
                    Code::Unsupported,
                    &param.at,
                    "`in: environment` parameters are not sent upstream; ignored",
                )
                .found(param.name.value.clone());
            return None;
        }
        Some(Some(location)) => location,
        None => {
            diags
                .warning(
                    Code::MissingKey,
                    &param.at,
                    "consumed parameter without `in`; sent in the query",
                )
                .found(param.name.value.clone())
                .expected("`in: query|path|header|cookie|body`");
            Location::Query
        }
    };
    let value = param
        .value
        .as_ref()
        .map(|v| ValueTemplate::compile(v, resolve));
    let required = param.required.unwrap_or(location == Location::Path);
    Some(UpstreamParam {
        name: param.name.value.clone(),
        location,
        value,
        spec: input_spec(
            &param.name.value,
            param.ty.as_deref(),
            required,
            param.description.clone(),
            profile,
        ),
        described: None,
    })
}

fn compile_body(
    body: &RequestBody,
    resolve: &mut impl FnMut(&Placeholder) -> Ref,
) -> Result<BodyPlan, String> {
    Ok(match body {
        RequestBody::Json(data) => BodyPlan::Structured(ValueTemplate::compile(data, resolve)),
        RequestBody::FormUrlEncoded(data) => BodyPlan::Form(ValueTemplate::compile(data, resolve)),
        RequestBody::Text(text) => BodyPlan::Text {
            template: Template::compile(text, resolve),
            content_type: "text/plain; charset=utf-8",
        },
        RequestBody::Xml(text) => BodyPlan::Text {
            template: Template::compile(text, resolve),
            content_type: "application/xml",
        },
        RequestBody::Raw(text) => {
            let trimmed = text.trim_start();
            let content_type = if trimmed.starts_with('{') || trimmed.starts_with('[') {
                "application/json"
            } else if trimmed.starts_with('<') {
                "application/xml"
            } else {
                "text/plain; charset=utf-8"
            };
            BodyPlan::Text {
                template: Template::compile(text, resolve),
                content_type,
            }
        }
        RequestBody::MultipartForm(_) => {
            return Err("multipartForm bodies are not served yet".into());
        }
    })
}

/// Characters kept as they are in upstream path literals (RFC 3986 `pchar` plus `/` and `%`).
const PATH_SAFE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'!')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b';')
    .remove(b'=')
    .remove(b':')
    .remove(b'@')
    .remove(b'%');

/// Splits a resource path (appended to the adapter's base URI) into literal text and `{x}` /
/// `{{x}}` parameters.
fn path_template(
    resource_path: &str,
    at: &crate::diag::Loc,
    diags: &mut Diagnostics,
) -> Vec<PathPart> {
    let mut text = String::new();
    if !resource_path.starts_with('/') {
        text.push('/');
    }
    text.push_str(resource_path);
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find('{') {
        let double = rest[start..].starts_with("{{");
        let open = if double { 2 } else { 1 };
        let close = if double { "}}" } else { "}" };
        let Some(len) = rest[start + open..].find(close) else {
            break;
        };
        literal.push_str(&rest[..start]);
        if !literal.is_empty() {
            parts.push(PathPart::Literal(std::mem::take(&mut literal)));
        }
        parts.push(PathPart::Param(
            rest[start + open..start + open + len].trim().to_owned(),
        ));
        rest = &rest[start + open + len + close.len()..];
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        parts.push(PathPart::Literal(literal));
    }
    for part in &mut parts {
        if let PathPart::Literal(text) = part {
            let encoded = percent_encoding::utf8_percent_encode(text, PATH_SAFE).to_string();
            if encoded != *text {
                diags
                    .warning(Code::PathEncoded, at, "upstream path contains characters that are not allowed in a URL path; sent percent-encoded")
                    .found(text.clone())
                    .expected(encoded.clone());
                *text = encoded;
            }
        }
    }
    parts
}

/// A binding whose plugin file is not loaded is said at load, not found at the first call. The
/// operation stays served: its calls do what the binding's `on_error` says for a failed plugin
/// (fail-closed: 502 naming the plugin; fail-open: on without it), until the file loads and the
/// warning goes.
fn warn_unloaded(
    transforms: &[Arc<TransformRef>],
    loaded: &std::collections::BTreeSet<String>,
    at: &crate::diag::Loc,
    diags: &mut Diagnostics,
) {
    for transform in transforms {
        if loaded.contains(&transform.plugin) {
            continue;
        }
        let consequence = match transform.on_error {
            FailurePolicy::FailClosed => "its calls fail with 502 (on_error: fail-closed)",
            FailurePolicy::FailOpen => "its calls go on without it (on_error: fail-open)",
        };
        diags
            .warning(
                Code::PluginNotLoaded,
                at,
                format!("a transform plugin bound to this operation is not loaded; {consequence}"),
            )
            .found(transform.plugin.clone())
            .expected("a plugin file of that name in the plugins folder that loads");
    }
}

/// The plugins bound to one consumed operation, in config order. A binding selects an operation
/// when one of its capability patterns matches the capability's name and one of its operation
/// patterns matches `namespace.operation` or `operation`.
pub(crate) fn transforms_for(
    bindings: &[TransformBinding],
    capability: &str,
    namespace: &str,
    operation: &str,
) -> Vec<Arc<TransformRef>> {
    let qualified = format!("{namespace}.{operation}");
    bindings
        .iter()
        .filter(|b| {
            b.capabilities
                .iter()
                .any(|p| namespace_matches(p, capability))
        })
        .filter(|b| {
            b.operations
                .iter()
                .any(|p| namespace_matches(p, &qualified) || namespace_matches(p, operation))
        })
        .map(|b| {
            Arc::new(TransformRef {
                plugin: b.plugin.clone(),
                config: Arc::from(match &b.config {
                    serde_json::Value::Null => "{}".to_owned(),
                    other => other.to_string(),
                }),
                on_error: b.on_error,
                timeout: std::time::Duration::from_millis(b.timeout_ms),
                memory: b.memory_mib * 1024 * 1024,
                reuse: b.instances == InstancePolicy::Reused,
            })
        })
        .collect()
}
