//! Compiling `exposes`: REST adapters into routes, MCP adapters into tools, and the operation
//! each of them runs (a call with its `with`, a mock, or a forward).

use std::collections::BTreeSet;
use std::sync::Arc;

use http::Method;
use serde_json::Value;

use super::auth::Side;
use super::consumes::Upstreams;
use super::inputs::{input_spec, schema_for};
use super::{Options, PlannedRoute, listen_address};
use crate::diag::{Code, Diagnostics, Loc};
use crate::jsonpath::Selector;
use crate::route::{Segment, canonical, parse_pattern};
use crate::snapshot::*;
use crate::spec::{
    Authentication, Capability, Exposes, LoadedFile, McpAdapter as SpecMcp, McpTool, OutputParam,
    Param, ParamIn, RestAdapter, RestOperation, RestResource, Spanned, Unsupported, WithEntry,
};
use crate::template::{Placeholder, Ref, Template, ValueTemplate, has_placeholders};

pub(super) struct Context<'a> {
    pub loaded: &'a LoadedFile,
    pub origin: Origin,
    pub upstreams: &'a Upstreams,
    pub options: &'a Options,
    pub diags: &'a mut Diagnostics,
    pub missing_binds: BTreeSet<String>,
    /// Tools whose schema was enriched from a schema source (one note per file says how many).
    pub enriched: usize,
}

type McpList = Vec<(ListenKey, Arc<McpAdapter>)>;

/// Compiles a capability's `exposes`. Every adapter's namespace (and the fixed `rest`, `tools`
/// and `mcp`) is collected first: a `with` value or template written `ns.name` reads caller
/// input `name` when `ns` is one of them, which is how the format says "the caller's".
pub(super) fn compile(
    cx: &mut Context<'_>,
    capability: &Capability,
) -> (Vec<PlannedRoute>, McpList) {
    let mut namespaces: Vec<String> = vec!["rest".into(), "tools".into(), "mcp".into()];
    for exposes in &capability.exposes {
        match exposes {
            Exposes::Rest(a) => namespaces.push(a.namespace.value.clone()),
            Exposes::Mcp(a) => namespaces.push(a.namespace.value.clone()),
            Exposes::Other {
                namespace: Some(ns),
                ..
            } => namespaces.push(ns.clone()),
            Exposes::Other { .. } => {}
        }
    }
    let mut routes = Vec::new();
    let mut mcp = Vec::new();
    for exposes in &capability.exposes {
        match exposes {
            Exposes::Rest(adapter) => routes.extend(rest_adapter(cx, adapter, &namespaces)),
            Exposes::Mcp(adapter) => mcp.extend(mcp_adapter(cx, adapter, &namespaces)),
            Exposes::Other { kind, at, .. } => {
                cx.diags
                    .error(
                        Code::Unsupported,
                        at,
                        format!(
                            "`{kind}` adapters are not served yet; the rest of the capability is"
                        ),
                    )
                    .found(kind.clone())
                    .expected("rest or mcp");
            }
        }
    }
    (routes, mcp)
}

/// Where an adapter listens. Without a port nothing can be served, so that is an error on the
/// adapter; the address defaults as the gateway config says (`listen`).
fn listen_key(
    cx: &mut Context<'_>,
    address: Option<&Spanned<String>>,
    port: Option<&Spanned<u16>>,
    at: &Loc,
    kind: &str,
) -> Option<ListenKey> {
    let Some(port) = port else {
        cx.diags
            .error(
                Code::MissingKey,
                at,
                format!("{kind} adapter without `port`; not served"),
            )
            .expected("`port: 1-65535`");
        return None;
    };
    let address = listen_address(address, &cx.options.listen, at, cx.diags)?;
    Some(ListenKey {
        address,
        port: port.value,
    })
}

/// A REST adapter's routes. An adapter whose caller authentication cannot be enforced serves
/// nothing (never open); a resource whose path does not parse is skipped, the others are not.
fn rest_adapter(
    cx: &mut Context<'_>,
    adapter: &RestAdapter,
    namespaces: &[String],
) -> Vec<PlannedRoute> {
    let Ok(auth) = caller_auth(cx, adapter.authentication.as_ref()) else {
        return Vec::new();
    };
    let Some(listen) = listen_key(
        cx,
        adapter.address.as_ref(),
        adapter.port.as_ref(),
        &adapter.at,
        "REST",
    ) else {
        return Vec::new();
    };
    let namespace: Arc<str> = Arc::from(adapter.namespace.value.as_str());
    let mut routes = Vec::new();
    for resource in &adapter.resources {
        let path_at = resource.at.key("path", resource.path.line);
        let segments = match parse_pattern(&resource.path.value) {
            Ok(segments) => segments,
            Err(message) => {
                cx.diags
                    .error(
                        Code::BadPath,
                        &path_at,
                        format!("{message}; resource not served"),
                    )
                    .found(resource.path.value.clone());
                continue;
            }
        };
        if let Some(forward) = &resource.forward {
            routes.extend(forward_routes(
                cx, listen, &namespace, resource, forward, segments, &auth,
            ));
            continue;
        }
        if resource.operations.is_empty() {
            cx.diags
                .warning(
                    Code::EmptyResource,
                    &resource.at,
                    "resource has neither operations nor forward; nothing is served",
                )
                .found(resource.path.value.clone());
        }
        for op in &resource.operations {
            let route = RestResourceRoute {
                listen,
                namespace: &namespace,
                resource,
                segments: &segments,
                path_at: &path_at,
                auth: &auth,
            };
            routes.extend(rest_operation(cx, &route, op, namespaces));
        }
    }
    routes
}

/// What the routes of one REST resource share.
struct RestResourceRoute<'a> {
    listen: ListenKey,
    namespace: &'a Arc<str>,
    resource: &'a RestResource,
    segments: &'a [Segment],
    path_at: &'a Loc,
    auth: &'a Option<Arc<CallerAuth>>,
}

/// One operation of a REST resource as a route; `None` when it is not served (a diagnostic
/// says why).
fn rest_operation(
    cx: &mut Context<'_>,
    route: &RestResourceRoute<'_>,
    op: &RestOperation,
    namespaces: &[String],
) -> Option<PlannedRoute> {
    let resource = route.resource;
    let method_at = op.at.key("method", op.method.line);
    let method = match op.method.value.to_ascii_uppercase().as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE") => {
            Method::from_bytes(m.as_bytes()).expect("standard")
        }
        other => {
            cx.diags
                .error(
                    Code::BadValue,
                    &method_at,
                    "unknown HTTP method; operation not served",
                )
                .found(other.to_owned())
                .expected("GET, POST, PUT, PATCH or DELETE");
            return None;
        }
    };
    let name = op
        .name
        .clone()
        .unwrap_or_else(|| format!("{} {}", method, resource.path.value));
    let known: Vec<String> = route
        .segments
        .iter()
        .filter_map(|s| match s {
            Segment::Variable(var) => Some(var.clone()),
            _ => None,
        })
        .chain(
            resource
                .params
                .iter()
                .chain(&op.params)
                .map(|p| p.name.value.clone()),
        )
        .collect();
    let compiled = operation(
        cx,
        OperationParts {
            name: &name,
            call: op.call.as_ref(),
            with: &op.with,
            outputs: &op.outputs,
            unsupported: &op.unsupported,
            at: &op.at,
            namespaces,
            inputs: &known,
        },
    )?;
    let inputs = rest_inputs(cx, route, op, &compiled);
    Some(PlannedRoute {
        listen: route.listen,
        segments: route.segments.to_vec(),
        route: Arc::new(RestRoute {
            method,
            namespace: route.namespace.clone(),
            auth: route.auth.clone(),
            path: resource.path.value.clone(),
            pattern: canonical(route.segments),
            inputs,
            operation: compiled.operation,
        }),
        at: op.at.clone(),
    })
}

/// How a route gets its inputs. Declared `inputParameters` (the resource's and the
/// operation's) are all it takes; without any, it takes every path variable, query parameter
/// and body field by name (`Implicit`), checked against what the operation uses. A path
/// variable the declared list leaves out is still passed on, with a warning: the route's path
/// has it, so dropping it would only hide the author's slip.
fn rest_inputs(
    cx: &mut Context<'_>,
    route: &RestResourceRoute<'_>,
    op: &RestOperation,
    compiled: &Compiled,
) -> RestInputs {
    let declared: Vec<&Param> = route.resource.params.iter().chain(&op.params).collect();
    if declared.is_empty() {
        let specs = derived_inputs(compiled, &mock_input_refs(&compiled.operation.output));
        return RestInputs::Implicit {
            strict_query: compiled.upstream.is_some(),
            specs,
        };
    }
    let params: Vec<ExposedParam> = declared
        .into_iter()
        .filter_map(|p| exposed_param(cx, p))
        .collect();
    for segment in route.segments {
        if let Segment::Variable(var) = segment
            && !params.iter().any(|p| &p.name == var)
        {
            cx.diags
                .warning(Code::UndeclaredPathVariable, route.path_at, format!("path variable `{var}` is not among the declared inputParameters; it is still passed as an input"))
                .found(var.clone());
        }
    }
    let mut params = params;
    if let Some(upstream) = &compiled.upstream {
        for param in described_query(upstream, &compiled.with) {
            if !params.iter().any(|p| p.name == param.name) {
                params.push(ExposedParam {
                    name: param.name.clone(),
                    location: Some(param.location),
                    selector: None,
                    spec: caller_spec(param, &param.name),
                });
            }
        }
    }
    let specs = params.iter().map(|p| p.spec.clone()).collect();
    RestInputs::Declared { params, specs }
}

/// The query and body parameters the schema source added to `upstream`'s (`consumes::
/// add_described_query`, `add_described_body`) that `with` does not route: a surface takes
/// each by its own name.
fn described_query<'a>(
    upstream: &'a UpstreamOperation,
    with: &'a [(String, Source)],
) -> impl Iterator<Item = &'a UpstreamParam> {
    upstream
        .params
        .iter()
        .filter(|p| p.described.is_some() && !with.iter().any(|(name, _)| name == &p.name))
}

/// A `forward` resource: every method, the rest of the path passed to the target adapter. Only
/// the headers the resource trusts are copied, so a caller's credentials for the gateway never
/// reach the upstream by way of a forward.
#[allow(clippy::too_many_arguments)]
fn forward_routes(
    cx: &mut Context<'_>,
    listen: ListenKey,
    namespace: &Arc<str>,
    resource: &RestResource,
    forward: &crate::spec::Forward,
    mut segments: Vec<Segment>,
    auth: &Option<Arc<CallerAuth>>,
) -> Vec<PlannedRoute> {
    let target_at = forward.at.key("targetNamespace", forward.target.line);
    let Some(adapter) = cx.upstreams.adapters.get(&forward.target.value) else {
        let reason = cx
            .upstreams
            .unserved
            .get(&forward.target.value)
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        cx.diags
            .error(
                Code::UnknownReference,
                &target_at,
                format!(
                    "forward target is not a served consumes namespace{reason}; resource not served"
                ),
            )
            .found(forward.target.value.clone())
            .expected(format!(
                "one of: {}",
                cx.upstreams
                    .adapters
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        return Vec::new();
    };
    let mut trusted_headers = Vec::new();
    for header in &forward.trusted_headers {
        match http::HeaderName::try_from(header.as_str()) {
            Ok(name) => trusted_headers.push(name),
            Err(_) => {
                cx.diags
                    .error(
                        Code::BadValue,
                        &forward.at.key("trustedHeaders", forward.at.line),
                        "invalid header name; ignored",
                    )
                    .found(header.clone());
            }
        }
    }
    match segments.pop() {
        Some(Segment::Variable(name)) => segments.push(Segment::Rest(name)),
        Some(other) => {
            segments.push(other);
            segments.push(Segment::Rest("path".into()));
        }
        None => segments.push(Segment::Rest("path".into())),
    }
    let missing: Vec<String> = adapter
        .binds
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(k, _)| k.clone())
        .filter(|k| auth_needs(adapter, k))
        .collect();
    let action = if missing.is_empty() {
        Action::Forward(Forward {
            adapter: adapter.clone(),
            trusted_headers,
        })
    } else {
        unavailable(cx, &missing, &forward.at)
    };
    let operation = Arc::new(Operation {
        name: format!("{}.forward {}", cx.origin.capability, resource.path.value),
        origin: Origin {
            line: resource.at.line,
            ..cx.origin.clone()
        },
        action,
        output: Output::PassThrough,
    });
    [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
    ]
    .into_iter()
    .map(|method| PlannedRoute {
        listen,
        segments: segments.clone(),
        route: Arc::new(RestRoute {
            method,
            namespace: namespace.clone(),
            auth: auth.clone(),
            path: resource.path.value.clone(),
            pattern: canonical(&segments),
            inputs: RestInputs::Implicit {
                specs: Vec::new(),
                strict_query: false,
            },
            operation: operation.clone(),
        }),
        at: resource.at.clone(),
    })
    .collect()
}

/// Whether the adapter's own credentials read `variable`: such a missing bind makes a forward
/// unavailable, as a call's would.
fn auth_needs(adapter: &UpstreamAdapter, variable: &str) -> bool {
    adapter
        .auth
        .iter()
        .flat_map(Auth::refs)
        .any(|r| matches!(r, Ref::Bind(v) if v == variable))
}

/// An operation that needs bound variables without a value is still served: it answers 503
/// naming them (a warning says so at load), so that setting the variable is all it takes.
fn unavailable(cx: &mut Context<'_>, missing: &[String], at: &Loc) -> Action {
    cx.missing_binds.extend(missing.iter().cloned());
    cx.diags
        .warning(
            Code::MissingBind,
            at,
            format!(
                "bound variable {} has no value; this operation answers 503 until it is set",
                missing.join(", ")
            ),
        )
        .expected("a value in the bind's source (the environment or its file)");
    Action::Unavailable {
        message: format!(
            "this operation is not configured: bound variable {} has no value",
            missing.join(", ")
        ),
    }
}

/// Compiles an exposed adapter's `authentication`. An adapter whose declared authentication
/// cannot be enforced is not served at all (`Err`), never served open.
fn caller_auth(
    cx: &mut Context<'_>,
    auth: Option<&Authentication>,
) -> Result<Option<Arc<CallerAuth>>, ()> {
    let Some(auth) = auth else {
        return Ok(None);
    };
    let scheme = super::auth::compile(auth, Side::Caller, cx.diags).map_err(drop)?;
    let mut missing = Vec::new();
    for r in scheme.refs() {
        if let Ref::Bind(var) = r
            && cx.loaded.bound.get(var).is_none_or(Option::is_none)
            && !missing.contains(var)
        {
            missing.push(var.clone());
        }
    }
    if !missing.is_empty() {
        let at = match auth {
            Authentication::Bearer { at, .. }
            | Authentication::ApiKey { at, .. }
            | Authentication::Basic { at, .. }
            | Authentication::Other { at, .. } => at,
        };
        cx.missing_binds.extend(missing.iter().cloned());
        cx.diags
            .warning(Code::MissingBind, at, format!("caller credentials need bound variable {}, which has no value; the adapter answers 503 until it is set", missing.join(", ")))
            .expected("a value in the bind's source (the environment or its file)");
    }
    Ok(Some(Arc::new(CallerAuth {
        scheme,
        binds: Arc::new(cx.loaded.bound.clone()),
        missing,
    })))
}

/// A declared input of a REST operation. Without `in` it is a query parameter (what a URL can
/// carry); a path parameter is required unless the file says otherwise.
fn exposed_param(cx: &mut Context<'_>, param: &Param) -> Option<ExposedParam> {
    let location = param.location.unwrap_or(ParamIn::Query);
    let selector = match (&param.value, location) {
        (Some(Value::String(path)), ParamIn::Body) => match Selector::parse(path) {
            Ok(selector) => Some(selector),
            Err(message) => {
                cx.diags
                    .error(
                        Code::BadJsonpath,
                        &param.at.key("value", param.at.line),
                        format!("invalid JSONPath: {message}; parameter ignored"),
                    )
                    .found(path.clone());
                return None;
            }
        },
        _ => None,
    };
    Some(ExposedParam {
        name: param.name.value.clone(),
        location: super::location_of(location),
        selector,
        spec: input_spec(
            &param.name.value,
            param.ty.as_deref(),
            param.required.unwrap_or(location == ParamIn::Path),
            param.description.clone(),
            crate::config::ProfileName::Default,
        ),
    })
}

struct OperationParts<'a> {
    name: &'a str,
    call: Option<&'a Spanned<String>>,
    with: &'a [WithEntry],
    outputs: &'a [OutputParam],
    unsupported: &'a [Unsupported],
    at: &'a Loc,
    namespaces: &'a [String],
    /// The inputs the surface is known to take (path variables, declared parameters): a
    /// reference that misses them only by `-` / `_` or case is bound to the one it meant.
    inputs: &'a [String],
}

/// An exposed operation or tool after compilation, with what input derivation needs.
struct Compiled {
    operation: Arc<Operation>,
    upstream: Option<Arc<UpstreamOperation>>,
    /// The compiled `with`, also when the operation is unavailable.
    with: Vec<(String, Source)>,
}

/// Compiles what an exposed operation or tool does; `None` when it cannot be served.
fn operation(cx: &mut Context<'_>, parts: OperationParts<'_>) -> Option<Compiled> {
    if !parts.unsupported.is_empty() {
        for u in parts.unsupported {
            cx.diags
                .error(
                    Code::Unsupported,
                    &u.at,
                    format!(
                        "orchestration `{}` is not served yet; this operation is not served",
                        u.feature
                    ),
                )
                .found(u.feature.clone());
        }
        return None;
    }
    let has_call = parts.call.is_some();
    let output = output(cx, parts.outputs, has_call, parts.at)?;
    let origin = Origin {
        line: parts.at.line,
        ..cx.origin.clone()
    };
    let name = format!("{}.{}", cx.origin.capability, parts.name);
    let Some(call) = parts.call else {
        if matches!(output, Output::PassThrough) {
            cx.diags
                .error(
                    Code::NoAction,
                    parts.at,
                    "operation has neither `call` nor mock output values; not served",
                )
                .expected("`call: namespace.operation`, or outputParameters with `value`");
            return None;
        }
        if !parts.with.is_empty() {
            cx.diags.warning(
                Code::IgnoredKey,
                parts.at,
                "`with` without `call` is ignored",
            );
        }
        return Some(Compiled {
            operation: Arc::new(Operation {
                name,
                origin,
                action: Action::Mock,
                output,
            }),
            upstream: None,
            with: Vec::new(),
        });
    };
    let call_at = parts.at.key("call", call.line);
    let Some(upstream) = cx.upstreams.operations.get(call.value.as_str()).cloned() else {
        let reason = cx.upstreams.unserved.get(call.value.as_str()).or_else(|| {
            call.value
                .split_once('.')
                .and_then(|(ns, _)| cx.upstreams.unserved.get(ns))
        });
        match reason {
            Some(reason) => {
                cx.diags
                    .error(
                        Code::UnservedReference,
                        &call_at,
                        format!("calls an operation that is not served ({reason}); not served"),
                    )
                    .found(call.value.clone());
            }
            None => {
                let mut known: Vec<&String> = cx
                    .upstreams
                    .operations
                    .keys()
                    .filter(|k| k.matches('.').count() == 1)
                    .collect();
                known.truncate(8);
                cx.diags
                    .error(
                        Code::UnknownReference,
                        &call_at,
                        "`call` names no consumed operation; not served",
                    )
                    .found(call.value.clone())
                    .expected(if known.is_empty() {
                        "namespace.operation of a consumes adapter (this file has none)".to_owned()
                    } else {
                        format!(
                            "one of: {}",
                            known
                                .iter()
                                .map(|s| s.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    });
            }
        }
        return None;
    };
    let with = compile_with(cx, parts.with, &upstream, parts.at, parts.namespaces);
    let with = bind_misspelled(cx, with, parts.inputs, parts.with, parts.at);
    let action = if upstream.missing_binds.is_empty() {
        Action::Call(Call::new(upstream.clone(), with.clone()))
    } else {
        let missing = upstream.missing_binds.clone();
        unavailable(cx, &missing, parts.at)
    };
    Some(Compiled {
        operation: Arc::new(Operation {
            name,
            origin,
            action,
            output,
        }),
        upstream: Some(upstream),
        with,
    })
}

/// The `with` arguments of a call. A value is a constant, a caller input (`ns.name` with `ns`
/// an exposed namespace), or a template whose placeholders read caller inputs or bound
/// variables: a bare `{{name}}` is the bound variable when the file binds one of that name
/// (the file said so), else the caller input.
fn compile_with(
    cx: &mut Context<'_>,
    with: &[WithEntry],
    upstream: &UpstreamOperation,
    at: &Loc,
    namespaces: &[String],
) -> Vec<(String, Source)> {
    let mut out = Vec::new();
    let body_refs: Vec<String> = body_input_refs(upstream);
    for entry in with {
        let entry_at = at.key("with", entry.line).key(&entry.name, entry.line);
        let source = match &entry.value {
            Value::String(text) if has_placeholders(text) => {
                let loaded = cx.loaded;
                Source::Template(Template::compile(text, |p: &Placeholder| {
                    match &p.namespace {
                        Some(ns) if namespaces.contains(ns) => Ref::Input(p.name.clone()),
                        Some(ns) if loaded.bind_namespaces.contains(ns) => {
                            Ref::Bind(p.name.clone())
                        }
                        Some(ns) if ns == super::consumes::CONSUMER_NAMESPACE => {
                            Ref::Consumer(p.name.clone())
                        }
                        None if loaded.bound.contains_key(&p.name) => Ref::Bind(p.name.clone()),
                        _ => Ref::Input(p.name.clone()),
                    }
                }))
            }
            Value::String(text) => match text.split_once('.') {
                Some((ns, name)) if namespaces.iter().any(|n| n == ns) && !name.is_empty() => {
                    Source::Input(name.to_owned())
                }
                Some((ns, name))
                    if !name.is_empty()
                        && ns
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
                {
                    cx.diags
                        .warning(Code::ConstantReference, &entry_at, format!("`{text}` looks like a reference but `{ns}` is not an exposes namespace of this capability; sent as the constant text"))
                        .found(text.clone())
                        .expected(format!("one of: {}", namespaces.iter().map(|n| format!("{n}.x")).collect::<Vec<_>>().join(", ")));
                    Source::Constant(entry.value.clone())
                }
                _ => Source::Constant(entry.value.clone()),
            },
            other => Source::Constant(other.clone()),
        };
        let known = upstream.param(&entry.name).is_some() || body_refs.contains(&entry.name);
        if !known {
            cx.diags
                .warning(Code::UnknownWith, &entry_at, format!("`with` names `{}`, which is not a parameter of {}; it is available to templates only", entry.name, upstream.name))
                .found(entry.name.clone())
                .expected(format!(
                    "one of: {}",
                    upstream.params.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")
                ));
        }
        out.push((entry.name.clone(), source));
    }
    out
}

/// Binds each `with` reference to an input the surface does not take, but that one of its
/// known inputs matches except for `-` versus `_` or case, to that input, with a warning naming
/// both spellings. (68 corpus files rename path variables to `{payment-method}` but keep
/// `rest.payment_method`; served as written, those routes could only answer 400.)
fn bind_misspelled(
    cx: &mut Context<'_>,
    with: Vec<(String, Source)>,
    known: &[String],
    entries: &[WithEntry],
    at: &Loc,
) -> Vec<(String, Source)> {
    let fold = super::fold_spelling;
    with.into_iter()
        .map(|(name, source)| {
            let Source::Input(input) = &source else {
                return (name, source);
            };
            if known.contains(input) {
                return (name, source);
            }
            let mut meant = known.iter().filter(|k| fold(k) == fold(input));
            let (Some(meant), None) = (meant.next(), meant.next()) else {
                return (name, source);
            };
            let line = entries
                .iter()
                .find(|e| e.name == name)
                .map_or(at.line, |e| e.line);
            cx.diags
                .warning(
                    Code::NameMismatch,
                    &at.key("with", line).key(&name, line),
                    format!("`{input}` is not an input here, but `{meant}` is, spelled with `-` / `_` or case the other way; bound to `{meant}`"),
                )
                .found(input.clone())
                .expected(meant.clone());
            (name, Source::Input(meant.clone()))
        })
        .collect()
}

/// Caller inputs referenced by the body and parameter templates of a consumed operation.
fn body_input_refs(upstream: &UpstreamOperation) -> Vec<String> {
    let mut refs: Vec<&Ref> = Vec::new();
    match &upstream.body {
        BodyPlan::Structured(t) | BodyPlan::Form(t) => refs.extend(t.refs()),
        BodyPlan::Text { template, .. } => refs.extend(template.refs()),
        BodyPlan::None | BodyPlan::FromParams => {}
    }
    for p in &upstream.params {
        if let Some(v) = &p.value {
            refs.extend(v.refs());
        }
    }
    let mut names = Vec::new();
    for r in refs {
        if let Ref::Input(name) = r
            && !names.contains(name)
        {
            names.push(name.clone());
        }
    }
    names
}

/// The inputs an operation takes when its exposure declares none: what its `with` feeds, the
/// consumed parameters that flow by name, and the inputs its templates use.
fn derived_inputs(compiled: &Compiled, mock_refs: &[String]) -> Vec<InputSpec> {
    let upstream = compiled.upstream.as_deref();
    let with: &[(String, Source)] = &compiled.with;
    let mut specs: Vec<InputSpec> = Vec::new();
    let mut push = |spec: InputSpec| {
        if !specs.iter().any(|s| s.name == spec.name) {
            specs.push(spec);
        }
    };
    let Some(upstream) = upstream else {
        for name in mock_refs {
            push(input_spec(
                name,
                None,
                false,
                None,
                crate::config::ProfileName::Default,
            ));
        }
        return specs;
    };
    let sends_body = !matches!(upstream.method, Method::GET | Method::DELETE | Method::HEAD);
    let usable = |p: &&UpstreamParam| sends_body || p.location != Location::Body;
    for (param, source) in with {
        match source {
            Source::Input(name) => match upstream.param(param).filter(usable) {
                Some(p) => push(caller_spec(p, name)),
                None if upstream.param(param).is_some() => {}
                None => push(input_spec(
                    name,
                    None,
                    false,
                    None,
                    upstream.adapter.profile,
                )),
            },
            Source::Template(t) => {
                for r in t.refs() {
                    if let Ref::Input(name) = r {
                        push(input_spec(
                            name,
                            None,
                            false,
                            None,
                            upstream.adapter.profile,
                        ));
                    }
                }
            }
            Source::Constant(_) => {}
        }
    }
    for p in upstream.params.iter().filter(usable) {
        if p.value.is_none() && !with.iter().any(|(name, _)| name == &p.name) {
            push(caller_spec(p, &p.name));
        }
    }
    for name in body_input_refs(upstream) {
        push(input_spec(
            &name,
            None,
            false,
            Some("Used in the request body".into()),
            upstream.adapter.profile,
        ));
    }
    specs
}

/// The input a caller gives, named `name`, for a consumed parameter: path parameters are
/// always required, and scalar header parameters are announced as `x-mcp-header`.
fn caller_spec(param: &UpstreamParam, name: &str) -> InputSpec {
    let mut spec = param.spec.clone();
    spec.name = name.to_owned();
    spec.required |= param.location == Location::Path;
    let scalar = matches!(
        spec.ty,
        ParamType::String | ParamType::Integer | ParamType::Number | ParamType::Boolean
    );
    if param.location == Location::Header && scalar {
        spec.header = Some(param.name.clone());
    }
    spec
}

/// How the response is shaped. No output parameters, or one that selects the whole document,
/// pass the upstream body through untouched (cheaper, and exactly what the upstream said);
/// several make an object of named shapes.
fn output(
    cx: &mut Context<'_>,
    outputs: &[OutputParam],
    has_call: bool,
    at: &Loc,
) -> Option<Output> {
    let mut shapes = Vec::new();
    for param in outputs {
        shapes.push((param.name.clone(), shape(cx, param, has_call)?));
    }
    Some(match shapes.len() {
        0 => Output::PassThrough,
        1 if shapes[0].0.is_none()
            || !has_call && !matches!(shapes[0].1, Shape::Mock(_) | Shape::Constant(_)) =>
        {
            match shapes.pop().expect("one").1 {
                Shape::Select(s) if s.is_root() => Output::PassThrough,
                shape => Output::Shape(shape),
            }
        }
        _ => {
            let mut properties = Vec::new();
            for (i, (name, shape)) in shapes.into_iter().enumerate() {
                match name {
                    Some(name) => properties.push((name, shape)),
                    None => {
                        cx.diags
                            .error(Code::MissingKey, &at.key("outputParameters", at.line), format!("output parameter {i} has no `name` but is one of several; ignored"))
                            .expected("`name` on every output parameter when there are several");
                    }
                }
            }
            Output::Shape(Shape::Object {
                at: None,
                properties,
            })
        }
    })
}

/// One output parameter as a shape: a JSONPath selection of the upstream document, an object
/// or array of shapes, a constant, or (for mocks, which have no upstream) a template over the
/// caller's inputs.
fn shape(cx: &mut Context<'_>, param: &OutputParam, has_call: bool) -> Option<Shape> {
    let mapping = match &param.mapping {
        Some(m) => match Selector::parse(&m.value) {
            Ok(s) => Some(s),
            Err(message) => {
                cx.diags
                    .error(
                        Code::BadJsonpath,
                        &param.at.key("mapping", m.line),
                        format!("invalid JSONPath: {message}; operation not served"),
                    )
                    .found(m.value.clone());
                return None;
            }
        },
        None => None,
    };
    if let Some(value) = &param.value {
        if has_call
            && let Value::String(text) = value
            && text.trim_start().starts_with('$')
        {
            cx.diags
                .warning(
                    Code::ValueAsMapping,
                    &param.at.key("value", param.at.line),
                    "`value` with a JSONPath on a mapped output; read as `mapping`",
                )
                .found(text.clone());
            return match Selector::parse(text) {
                Ok(s) => Some(Shape::Select(s)),
                Err(message) => {
                    cx.diags.error(
                        Code::BadJsonpath,
                        &param.at,
                        format!("invalid JSONPath: {message}; operation not served"),
                    );
                    None
                }
            };
        }
        return Some(Shape::Mock(ValueTemplate::compile(
            value,
            &mut |p: &Placeholder| Ref::Input(p.name.clone()),
        )));
    }
    if let Some(constant) = &param.constant {
        return Some(Shape::Constant(constant.clone()));
    }
    if param.ty.as_deref() == Some("array") {
        let items = match &param.items {
            Some(items) => shape(cx, items, has_call)?,
            None => Shape::Select(Selector::root()),
        };
        return Some(Shape::Array {
            at: mapping.unwrap_or_else(Selector::root),
            items: Box::new(items),
        });
    }
    if !param.properties.is_empty() {
        let mut properties = Vec::new();
        for (name, property) in &param.properties {
            properties.push((name.clone(), shape(cx, property, has_call)?));
        }
        return Some(Shape::Object {
            at: mapping,
            properties,
        });
    }
    Some(match mapping {
        Some(selector) => Shape::Select(selector),
        None => {
            if !has_call {
                cx.diags
                    .error(
                        Code::NoAction,
                        &param.at,
                        "mock output without `value` or `const`; operation not served",
                    )
                    .expected("`value` or `const`");
                return None;
            }
            Shape::Select(Selector::root())
        }
    })
}

/// An MCP adapter and its tools. Tool names must be valid MCP names and unique per adapter: a
/// bad name, or the second use of one, drops that tool with a diagnostic, not the adapter.
fn mcp_adapter(
    cx: &mut Context<'_>,
    adapter: &SpecMcp,
    namespaces: &[String],
) -> Option<(ListenKey, Arc<McpAdapter>)> {
    for u in &adapter.unsupported {
        cx.diags
            .error(
                Code::Unsupported,
                &u.at,
                format!("{} are not served yet; the adapter's tools are", u.feature),
            )
            .found(u.feature.clone());
    }
    if let Some(transport) = &adapter.transport
        && transport.value != "http"
    {
        cx.diags
            .error(
                Code::Unsupported,
                &adapter.at.key("transport", transport.line),
                "only the http transport is served; adapter not served",
            )
            .found(transport.value.clone())
            .expected("transport: http");
        return None;
    }
    let auth = caller_auth(cx, adapter.authentication.as_ref()).ok()?;
    let listen = listen_key(
        cx,
        adapter.address.as_ref(),
        adapter.port.as_ref(),
        &adapter.at,
        "MCP",
    )?;
    let mut tools: Vec<Arc<Tool>> = Vec::new();
    for tool in &adapter.tools {
        if let Some(compiled) = mcp_tool(cx, tool, namespaces) {
            if tools.iter().any(|t| t.name == compiled.name) {
                cx.diags
                    .error(
                        Code::DuplicateTool,
                        &tool.at.key("name", tool.name.line),
                        "tool name used twice in this adapter; the second is not served",
                    )
                    .found(compiled.name.clone());
                continue;
            }
            tools.push(Arc::new(compiled));
        }
    }
    let title = cx
        .loaded
        .document
        .info
        .label
        .clone()
        .unwrap_or_else(|| cx.origin.capability.to_string());
    Some((
        listen,
        Arc::new(McpAdapter {
            namespace: adapter.namespace.value.clone(),
            title,
            version: cx.loaded.document.info.modified.clone(),
            description: adapter.description.clone(),
            origin: Origin {
                line: adapter.at.line,
                ..cx.origin.clone()
            },
            auth,
            tools,
        }),
    ))
}

/// Whether `name` is a valid MCP tool name (SEP-986).
pub(crate) fn valid_tool_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// One tool: its operation, its inputs (declared, or derived from what the operation uses) and
/// the JSON Schema announced for them, made from the same `InputSpec`s that check calls.
fn mcp_tool(cx: &mut Context<'_>, tool: &McpTool, namespaces: &[String]) -> Option<Tool> {
    let name = &tool.name.value;
    if !valid_tool_name(name) {
        cx.diags
            .error(
                Code::BadToolName,
                &tool.at.key("name", tool.name.line),
                "invalid MCP tool name; tool not served",
            )
            .found(name.clone())
            .expected("1 to 128 characters of A-Z, a-z, 0-9, _, . and -");
        return None;
    }
    let known: Vec<String> = tool.params.iter().map(|p| p.name.value.clone()).collect();
    let compiled = operation(
        cx,
        OperationParts {
            name,
            call: tool.call.as_ref(),
            with: &tool.with,
            outputs: &tool.outputs,
            unsupported: &tool.unsupported,
            at: &tool.at,
            namespaces,
            inputs: &known,
        },
    )?;
    let inputs: Vec<InputSpec> = if tool.params.is_empty() {
        derived_inputs(&compiled, &mock_input_refs(&compiled.operation.output))
    } else {
        tool.params
            .iter()
            .map(|p| {
                input_spec(
                    &p.name.value,
                    p.ty.as_deref(),
                    p.required.unwrap_or(false),
                    p.description.clone(),
                    compiled
                        .upstream
                        .as_ref()
                        .map(|u| u.adapter.profile)
                        .unwrap_or(crate::config::ProfileName::Default),
                )
            })
            .collect()
    };
    let hints = ToolHints {
        read_only: tool.hints.read_only.unwrap_or(false),
        destructive: tool.hints.destructive.unwrap_or(true),
        idempotent: tool.hints.idempotent.unwrap_or(false),
        open_world: tool.hints.open_world.unwrap_or(true),
        given: crate::snapshot::GivenHints {
            read_only: tool.hints.read_only,
            destructive: tool.hints.destructive,
            idempotent: tool.hints.idempotent,
            open_world: tool.hints.open_world,
        },
    };
    let mut inputs = inputs;
    // The file's own inputs win; the rest of what the schema source describes is added, and
    // announced with the source's schema (enums, descriptions, the range filter's shape).
    let mut described = Vec::new();
    if let Some(upstream) = &compiled.upstream {
        for param in described_query(upstream, &compiled.with) {
            match inputs.iter().any(|i| i.name == param.name) {
                true if !tool.params.is_empty() => continue,
                true => {}
                false => inputs.push(caller_spec(param, &param.name)),
            }
            described.push(param);
        }
    }
    let mut input_schema = schema_for(&inputs);
    if let Some(Value::Object(properties)) = input_schema.get_mut("properties") {
        for param in described {
            if let Some(schema) = &param.described {
                let mut announced = (**schema).clone();
                // Stripe's description leaves some filters undescribed; the spec's words stay.
                if !announced.contains_key("description")
                    && let Some(Value::Object(own)) = properties.get(&param.name)
                    && let Some(description) = own.get("description")
                {
                    announced.insert("description".into(), description.clone());
                }
                properties.insert(param.name.clone(), Value::Object(announced));
            }
        }
    }
    let flattened = compiled
        .upstream
        .as_ref()
        .map(|upstream| enrich(cx, upstream, &mut inputs, &mut input_schema))
        .unwrap_or_default();
    Some(Tool {
        name: name.clone(),
        title: tool.label.clone(),
        description: tool.description.clone(),
        hints,
        input_schema: Arc::new(input_schema),
        inputs,
        flattened,
        operation: compiled.operation,
    })
}

/// A tool whose `body` input is an opaque object gets the operation's real request schema from
/// the upstream's schema sources: each body property the tool does not already take becomes a
/// top-level argument (announced with its schema; a call's arguments of those names go into
/// `body`), and `body` itself stays, optional, for callers that send it whole. The names moved.
fn enrich(
    cx: &mut Context<'_>,
    upstream: &UpstreamOperation,
    inputs: &mut [InputSpec],
    schema: &mut serde_json::Map<String, Value>,
) -> Vec<String> {
    let Some(body) = inputs
        .iter_mut()
        .find(|i| i.name == "body" && i.ty == crate::snapshot::ParamType::Object)
    else {
        return Vec::new();
    };
    let Some(request) = &upstream.body_schema else {
        return Vec::new();
    };
    body.required = false;
    let Some(Value::Object(properties)) = schema.get_mut("properties") else {
        return Vec::new();
    };
    let mut flattened = Vec::new();
    if let Some(Value::Object(body_properties)) = request.get("properties") {
        for (name, property) in body_properties {
            if properties.contains_key(name) {
                continue;
            }
            properties.insert(name.clone(), property.clone());
            flattened.push(name.clone());
        }
    }
    if let Some(Value::Object(declared_body)) = properties.get_mut("body") {
        declared_body.insert(
            "description".into(),
            Value::String(
                "The whole request body, for callers that send it as one object (its fields are also arguments of their own)".into(),
            ),
        );
    }
    // The announced form is the flattened one: what the operation requires of its body is
    // required of the arguments (a call that sends `body` whole instead is still taken, and
    // checked for them there).
    let body_required: Vec<Value> = match request.get("required") {
        Some(Value::Array(names)) => names
            .iter()
            .filter(|name| {
                name.as_str()
                    .is_some_and(|n| flattened.iter().any(|f| f == n))
            })
            .cloned()
            .collect(),
        _ => Vec::new(),
    };
    let required = schema
        .entry("required")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(required) = required {
        required.retain(|r| r != "body");
        required.extend(body_required);
    }
    if schema
        .get("required")
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty)
    {
        schema.remove("required");
    }
    cx.enriched += 1;
    flattened
}

/// The caller inputs a mock's output templates read: a mock route takes exactly those.
fn mock_input_refs(output: &Output) -> Vec<String> {
    fn walk(shape: &Shape, out: &mut Vec<String>) {
        match shape {
            Shape::Mock(t) => {
                for r in t.refs() {
                    if let Ref::Input(name) = r
                        && !out.contains(name)
                    {
                        out.push(name.clone());
                    }
                }
            }
            Shape::Object { properties, .. } => properties.iter().for_each(|(_, s)| walk(s, out)),
            Shape::Array { items, .. } => walk(items, out),
            Shape::Select(_) | Shape::Constant(_) => {}
        }
    }
    let mut out = Vec::new();
    if let Output::Shape(shape) = output {
        walk(shape, &mut out);
    }
    out
}
