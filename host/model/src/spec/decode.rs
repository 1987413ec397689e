//! Lenient decoding of a YAML tree into the `model` types.
//!
//! The rule is "lenient but loud": read whatever can be understood, and turn every deviation into a
//! diagnostic with line, key path, what was found and what was expected. A key capgate does not
//! know is reported, never dropped silently. Decoding never fails as a whole: a part that cannot be
//! read is left out with an error diagnostic on just that part.

use serde_json::Value;

use super::model::*;
use super::yaml::{Node, NodeValue};
use crate::diag::{Code, Diagnostics, Loc};

/// Decodes a whole document.
pub fn document(root: &Node, diags: &mut Diagnostics) -> Document {
    let at = Loc::new(root.line, "");
    let Some(mut fields) = Fields::open(root, at.clone(), diags, "a mapping at the document root")
    else {
        return Document {
            version: None,
            info: Info::default(),
            binds: Vec::new(),
            body: DocumentBody::NotCapability,
        };
    };
    let version = fields.string("naftiko", diags);
    let info = fields
        .take("info")
        .map(|(node, at)| info(node, at, diags))
        .unwrap_or_default();
    let mut binds = fields
        .take("binds")
        .map(|(node, at)| list(node, &at, diags, bind))
        .unwrap_or_default();
    let capability = fields.take("capability");
    let consumes = fields.take("consumes");
    let body = match (capability, consumes) {
        (Some((node, at)), other) => {
            if let Some((_, consumes_at)) = other {
                diags
                    .warning(
                        Code::IgnoredKey,
                        &consumes_at,
                        "root `consumes` next to `capability` is ignored",
                    )
                    .expected("either `capability` or a standalone root `consumes`, not both");
            }
            let (capability, nested_binds) = capability_of(node, at, diags);
            binds.extend(nested_binds);
            DocumentBody::Capability(capability)
        }
        (None, Some((node, at))) => DocumentBody::Consumes(list(node, &at, diags, consumes_entry)),
        (None, None) => {
            fields.used_all();
            DocumentBody::NotCapability
        }
    };
    if !matches!(body, DocumentBody::NotCapability) {
        fields.finish(diags);
    }
    Document {
        version,
        info,
        binds,
        body,
    }
}

fn info(node: &Node, at: Loc, diags: &mut Diagnostics) -> Info {
    let Some(mut fields) = Fields::open(node, at, diags, "a mapping") else {
        return Info::default();
    };
    let label = fields.string("label", diags).map(|s| s.value);
    let description = fields.string("description", diags).map(|s| s.value);
    let created = fields.string("created", diags).map(|s| s.value);
    let modified = fields.string("modified", diags).map(|s| s.value);
    let info = Info {
        label,
        description,
        modified: modified.or(created),
    };
    for key in ["tags", "stakeholders"] {
        fields.take(key);
    }
    fields.finish(diags);
    info
}

fn bind(node: &Node, at: Loc, diags: &mut Diagnostics) -> Option<Bind> {
    let mut fields = Fields::open(node, at.clone(), diags, "a bind mapping")?;
    let namespace = fields.required_string("namespace", diags)?;
    fields.take("description");
    let location = fields.string("location", diags);
    let mut keys = Vec::new();
    if let Some((node, keys_at)) = fields.take("keys") {
        match node.entries() {
            Some(entries) => {
                for (key, value) in entries {
                    match value.scalar_text() {
                        Some(source) => {
                            keys.push((Spanned::new(key.name.clone(), key.line), source))
                        }
                        None => {
                            diags
                                .error(
                                    Code::BadType,
                                    &keys_at.key(&key.name, key.line),
                                    "bind key source must be a string",
                                )
                                .found(value.kind())
                                .expected("the name of the variable in the source");
                        }
                    }
                }
            }
            None => {
                diags
                    .error(
                        Code::BadType,
                        &keys_at,
                        "`keys` must map variable names to source keys",
                    )
                    .found(node.kind())
                    .expected("a mapping");
            }
        }
    } else {
        diags
            .error(Code::MissingKey, &at, "bind without `keys`")
            .expected("`keys: {VARIABLE: source-key}`");
    }
    fields.finish(diags);
    Some(Bind {
        namespace: namespace.value,
        location,
        keys,
        at,
    })
}

fn capability_of(node: &Node, at: Loc, diags: &mut Diagnostics) -> (Capability, Vec<Bind>) {
    let mut capability = Capability {
        consumes: Vec::new(),
        exposes: Vec::new(),
        unsupported: Vec::new(),
        at: at.clone(),
    };
    let Some(mut fields) = Fields::open(node, at, diags, "a mapping") else {
        return (capability, Vec::new());
    };
    let binds = fields
        .take("binds")
        .map(|(node, at)| list(node, &at, diags, bind))
        .unwrap_or_default();
    if let Some((node, at)) = fields.take("consumes") {
        capability.consumes = list(node, &at, diags, consumes_entry);
    }
    if let Some((node, at)) = fields.take("exposes") {
        capability.exposes = list(node, &at, diags, exposes_entry);
    }
    if let Some((_, at)) = fields.take("aggregates") {
        capability.unsupported.push(Unsupported {
            feature: "aggregates".into(),
            at,
        });
    }
    fields.finish(diags);
    (capability, binds)
}

fn consumes_entry(node: &Node, at: Loc, diags: &mut Diagnostics) -> Option<Consumes> {
    if node.get("import").is_some() {
        let mut fields = Fields::open(node, at.clone(), diags, "a mapping")?;
        let namespace = fields.required_string("import", diags)?;
        let location = fields.required_string("location", diags)?;
        let rename = fields.string("as", diags);
        fields.take("description");
        fields.finish(diags);
        return Some(Consumes::Import(Import {
            namespace,
            location,
            rename,
            at,
        }));
    }
    let mut fields = Fields::open(node, at.clone(), diags, "a consumes mapping")?;
    let kind = fields.string("type", diags);
    match kind.as_ref().map(|k| k.value.as_str()) {
        Some("http") => {}
        Some(other) => {
            fields.used_all();
            return Some(Consumes::Other {
                kind: other.to_owned(),
                at,
            });
        }
        None => {
            diags
                .warning(
                    Code::MissingKey,
                    &at,
                    "consumes entry without `type`; read as `http`",
                )
                .expected("`type: http`");
        }
    }
    let namespace = fields.required_string("namespace", diags)?;
    let base_uri = fields.required_string("baseUri", diags)?;
    let description = fields.string("description", diags).map(|s| s.value);
    let params = fields
        .take("inputParameters")
        .map(|(node, at)| list(node, &at, diags, consumed_param))
        .unwrap_or_default();
    let authentication = fields
        .take("authentication")
        .and_then(|(node, at)| authentication(node, at, diags));
    let resources = fields
        .take("resources")
        .map(|(node, at)| list(node, &at, diags, consumed_resource))
        .unwrap_or_default();
    fields.finish(diags);
    Some(Consumes::Http(HttpConsumes {
        namespace,
        base_uri,
        description,
        params,
        authentication,
        resources,
        at,
    }))
}

fn consumed_resource(node: &Node, at: Loc, diags: &mut Diagnostics) -> Option<ConsumedResource> {
    let mut fields = Fields::open(node, at.clone(), diags, "a resource mapping")?;
    let name = fields.string("name", diags).inspect(|name| {
        check_kebab(&name.value, name.line, &at, "name", diags);
    });
    let name = name.map(|s| s.value);
    let path = fields.required_string("path", diags)?;
    for key in ["label", "description"] {
        fields.take(key);
    }
    let params = fields
        .take("inputParameters")
        .map(|(node, at)| list(node, &at, diags, consumed_param))
        .unwrap_or_default();
    let operations = fields
        .take("operations")
        .map(|(node, at)| list(node, &at, diags, consumed_operation))
        .unwrap_or_default();
    fields.finish(diags);
    Some(ConsumedResource {
        name,
        path,
        params,
        operations,
        at,
    })
}

fn consumed_operation(node: &Node, at: Loc, diags: &mut Diagnostics) -> Option<ConsumedOperation> {
    let mut fields = Fields::open(node, at.clone(), diags, "an operation mapping")?;
    let name = fields.required_string("name", diags)?;
    check_kebab(&name.value, name.line, &at, "name", diags);
    let method = fields.required_string("method", diags)?;
    fields.take("label");
    let description = fields.string("description", diags).map(|s| s.value);
    let params = fields
        .take("inputParameters")
        .map(|(node, at)| list(node, &at, diags, consumed_param))
        .unwrap_or_default();
    let output_raw_format = fields.string("outputRawFormat", diags);
    fields.take("outputSchema");
    let outputs = fields
        .take("outputParameters")
        .map(|(node, at)| list(node, &at, diags, output_param))
        .unwrap_or_default();
    let body = fields
        .take("body")
        .and_then(|(node, at)| request_body(node, at, diags));
    fields.finish(diags);
    Some(ConsumedOperation {
        name,
        method,
        description,
        params,
        output_raw_format,
        outputs,
        body,
        at,
    })
}

fn request_body(node: &Node, at: Loc, diags: &mut Diagnostics) -> Option<RequestBody> {
    if let Some(text) = node.as_str() {
        return Some(RequestBody::Raw(text.to_owned()));
    }
    let mut fields = Fields::open(node, at.clone(), diags, "a body mapping or a string")?;
    let kind = fields.required_string("type", diags)?;
    let Some((data, data_at)) = fields.take("data") else {
        diags
            .error(Code::MissingKey, &at, "body without `data`")
            .expected("`data` with the body to send");
        fields.finish(diags);
        return None;
    };
    fields.finish(diags);
    let text = |diags: &mut Diagnostics| match data.scalar_text() {
        Some(text) => Some(text),
        None => {
            diags
                .error(
                    Code::BadType,
                    &data_at,
                    format!("`{}` body data must be a string", kind.value),
                )
                .found(data.kind())
                .expected("a string");
            None
        }
    };
    Some(match kind.value.as_str() {
        "json" => RequestBody::Json(data.to_json()),
        "text" => RequestBody::Text(text(diags)?),
        "xml" => RequestBody::Xml(text(diags)?),
        "formUrlEncoded" => RequestBody::FormUrlEncoded(data.to_json()),
        "multipartForm" => match data.to_json() {
            Value::Array(parts) => RequestBody::MultipartForm(parts),
            _ => {
                diags
                    .error(
                        Code::BadType,
                        &data_at,
                        "multipartForm body data must be a list of parts",
                    )
                    .found(data.kind())
                    .expected("a list of {name, value} parts");
                return None;
            }
        },
        other => {
            diags
                .error(
                    Code::BadValue,
                    &at.key("type", kind.line),
                    "unknown body type",
                )
                .found(other)
                .expected("json, text, xml, formUrlEncoded or multipartForm");
            return None;
        }
    })
}

/// Which of the format's parameter kinds a parameter list holds; each allows other keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ParamKind {
    /// `ConsumedInputParameter`: name, in, value.
    Consumed,
    /// `ExposedInputParameter`: name, in, type, description, pattern, value.
    Exposed,
    /// `McpToolInputParameter`: name, type, description, required.
    Tool,
}

fn consumed_param(node: &Node, at: Loc, diags: &mut Diagnostics) -> Option<Param> {
    param(node, at, diags, ParamKind::Consumed)
}

fn exposed_param(node: &Node, at: Loc, diags: &mut Diagnostics) -> Option<Param> {
    param(node, at, diags, ParamKind::Exposed)
}

fn tool_param(node: &Node, at: Loc, diags: &mut Diagnostics) -> Option<Param> {
    param(node, at, diags, ParamKind::Tool)
}

fn param(node: &Node, at: Loc, diags: &mut Diagnostics, kind: ParamKind) -> Option<Param> {
    let mut fields = Fields::open(node, at.clone(), diags, "a parameter mapping")?;
    let name = fields.required_string("name", diags)?;
    let extensions: &[&str] = match kind {
        ParamKind::Consumed => &["type", "description", "required"],
        ParamKind::Exposed => &["required"],
        ParamKind::Tool => &["in", "value", "pattern"],
    };
    for key in extensions {
        if let Some((_, key_at)) = fields.peek(key) {
            diags
                .warning(
                    Code::SchemaExtension,
                    &key_at,
                    format!("`{key}` on this kind of parameter is not in the alpha2 schema; used for validation and MCP schemas"),
                )
                .found(format!("`{key}`"));
        }
    }
    let location = match fields.string("in", diags) {
        Some(text) => match ParamIn::parse(&text.value) {
            Some(location) => Some(location),
            None => {
                diags
                    .error(
                        Code::BadValue,
                        &at.key("in", text.line),
                        format!("unknown parameter location of `{}`", name.value),
                    )
                    .found(text.value)
                    .expected("query, path, header, cookie, body or environment");
                return None;
            }
        },
        None => None,
    };
    let value = fields.take("value").map(|(node, _)| node.to_json());
    let ty = fields.string("type", diags).map(|s| s.value);
    let description = fields.string("description", diags).map(|s| s.value);
    let required = fields.bool("required", diags);
    let pattern = fields.string("pattern", diags).map(|s| s.value);
    fields.take("label");
    fields.finish(diags);
    Some(Param {
        name,
        location,
        value,
        ty,
        description,
        required,
        pattern,
        at,
    })
}

fn authentication(node: &Node, at: Loc, diags: &mut Diagnostics) -> Option<Authentication> {
    let mut fields = Fields::open(node, at.clone(), diags, "an authentication mapping")?;
    let kind = fields.required_string("type", diags)?;
    let auth = match kind.value.as_str() {
        "bearer" => Authentication::Bearer {
            token: fields.required_scalar("token", diags)?,
            at,
        },
        "apikey" => Authentication::ApiKey {
            key: fields.required_scalar("key", diags)?,
            value: fields.required_scalar("value", diags)?,
            placement: fields.string("placement", diags).map(|s| s.value),
            at,
        },
        "basic" => Authentication::Basic {
            username: fields.scalar("username", diags).unwrap_or_default(),
            password: fields.scalar("password", diags).unwrap_or_default(),
            at,
        },
        other => {
            fields.used_all();
            Authentication::Other {
                kind: other.to_owned(),
                at,
            }
        }
    };
    fields.finish(diags);
    Some(auth)
}

fn exposes_entry(node: &Node, at: Loc, diags: &mut Diagnostics) -> Option<Exposes> {
    let mut fields = Fields::open(node, at.clone(), diags, "an exposes mapping")?;
    let kind = fields.required_string("type", diags)?;
    match kind.value.as_str() {
        "rest" => rest_adapter(fields, at, diags).map(Exposes::Rest),
        "mcp" => mcp_adapter(fields, at, diags).map(Exposes::Mcp),
        other => {
            let namespace = fields.string("namespace", diags).map(|s| s.value);
            fields.used_all();
            Some(Exposes::Other {
                kind: other.to_owned(),
                namespace,
                at,
            })
        }
    }
}

fn rest_adapter(mut fields: Fields<'_>, at: Loc, diags: &mut Diagnostics) -> Option<RestAdapter> {
    let namespace = fields.required_string("namespace", diags)?;
    let address = fields.string("address", diags);
    let port = fields.port(diags);
    let description = fields.extension_string(
        "description",
        "`description` on a REST adapter is not in the alpha2 schema; kept as documentation",
        diags,
    );
    let authentication = fields
        .take("authentication")
        .and_then(|(node, at)| authentication(node, at, diags));
    let resources = fields
        .take("resources")
        .map(|(node, at)| list(node, &at, diags, rest_resource))
        .unwrap_or_default();
    fields.finish(diags);
    Some(RestAdapter {
        namespace,
        address,
        port,
        description,
        authentication,
        resources,
        at,
    })
}

fn rest_resource(node: &Node, at: Loc, diags: &mut Diagnostics) -> Option<RestResource> {
    let mut fields = Fields::open(node, at.clone(), diags, "a resource mapping")?;
    let path = fields.required_string("path", diags)?;
    let name = fields.string("name", diags).inspect(|name| {
        check_kebab(&name.value, name.line, &at, "name", diags);
    });
    let name = name.map(|s| s.value);
    fields.take("label");
    let description = fields.string("description", diags).map(|s| s.value);
    let params = fields
        .take("inputParameters")
        .map(|(node, at)| list(node, &at, diags, exposed_param))
        .unwrap_or_default();
    let operations = fields
        .take("operations")
        .map(|(node, at)| list(node, &at, diags, rest_operation))
        .unwrap_or_default();
    let forward = fields
        .take("forward")
        .and_then(|(node, at)| forward(node, at, diags));
    fields.finish(diags);
    Some(RestResource {
        path,
        name,
        description,
        params,
        operations,
        forward,
        at,
    })
}

fn forward(node: &Node, at: Loc, diags: &mut Diagnostics) -> Option<Forward> {
    let mut fields = Fields::open(node, at.clone(), diags, "a forward mapping")?;
    let target = fields.required_string("targetNamespace", diags)?;
    let trusted_headers = fields
        .take("trustedHeaders")
        .map(|(node, at)| list(node, &at, diags, string_item))
        .unwrap_or_default();
    fields.finish(diags);
    Some(Forward {
        target,
        trusted_headers,
        at,
    })
}

fn rest_operation(node: &Node, at: Loc, diags: &mut Diagnostics) -> Option<RestOperation> {
    let mut fields = Fields::open(node, at.clone(), diags, "an operation mapping")?;
    let method = fields.required_string("method", diags)?;
    let name = fields.string("name", diags).map(|s| s.value);
    fields.take("label");
    let description = fields.string("description", diags).map(|s| s.value);
    let params = fields
        .take("inputParameters")
        .map(|(node, at)| list(node, &at, diags, exposed_param))
        .unwrap_or_default();
    let call = fields.string("call", diags);
    let with = fields.with(diags);
    let outputs = fields
        .take("outputParameters")
        .map(|(node, at)| list(node, &at, diags, output_param))
        .unwrap_or_default();
    let unsupported = fields.orchestration();
    fields.finish(diags);
    Some(RestOperation {
        method,
        name,
        description,
        params,
        call,
        with,
        outputs,
        unsupported,
        at,
    })
}

fn output_param(node: &Node, at: Loc, diags: &mut Diagnostics) -> Option<OutputParam> {
    let mut fields = Fields::open(node, at.clone(), diags, "an output parameter mapping")?;
    let name = fields.string("name", diags).map(|s| s.value);
    let mut param = output_body(&mut fields, at, diags);
    param.name = name;
    fields.finish(diags);
    Some(param)
}

/// The part of an output parameter shared by list entries and `properties` values.
fn output_body(fields: &mut Fields<'_>, at: Loc, diags: &mut Diagnostics) -> OutputParam {
    let ty = fields.string("type", diags).map(|s| s.value);
    let mapping = fields.string("mapping", diags);
    let value = fields.take("value").map(|(node, _)| node.to_json());
    let constant = fields.take("const").map(|(node, _)| node.to_json());
    fields.take("description");
    let mut properties = Vec::new();
    if let Some((node, props_at)) = fields.take("properties") {
        match node.entries() {
            Some(entries) => {
                for (key, value) in entries {
                    let at = props_at.key(&key.name, key.line);
                    if let Some(mut fields) =
                        Fields::open(value, at.clone(), diags, "a property mapping")
                    {
                        let mut property = output_body(&mut fields, at, diags);
                        property.name = Some(key.name.clone());
                        fields.finish(diags);
                        properties.push((key.name.clone(), property));
                    }
                }
            }
            None => {
                diags
                    .error(Code::BadType, &props_at, "`properties` must be a mapping")
                    .found(node.kind())
                    .expected("a mapping of property names to output parameters");
            }
        }
    }
    let items = fields.take("items").and_then(|(node, at)| {
        let mut fields = Fields::open(node, at.clone(), diags, "an items mapping")?;
        let item = output_body(&mut fields, at, diags);
        fields.finish(diags);
        Some(Box::new(item))
    });
    OutputParam {
        name: None,
        ty,
        mapping,
        value,
        constant,
        properties,
        items,
        at,
    }
}

fn mcp_adapter(mut fields: Fields<'_>, at: Loc, diags: &mut Diagnostics) -> Option<McpAdapter> {
    let namespace = fields.required_string("namespace", diags)?;
    let address = fields.string("address", diags);
    let port = fields.port(diags);
    let transport = fields.string("transport", diags);
    let description = fields.string("description", diags).map(|s| s.value);
    let authentication = fields
        .take("authentication")
        .and_then(|(node, at)| authentication(node, at, diags));
    let tools = fields
        .take("tools")
        .map(|(node, at)| list(node, &at, diags, mcp_tool))
        .unwrap_or_default();
    let mut unsupported = Vec::new();
    for feature in ["resources", "prompts"] {
        if let Some((_, at)) = fields.take(feature) {
            unsupported.push(Unsupported {
                feature: format!("MCP {feature}"),
                at,
            });
        }
    }
    fields.finish(diags);
    Some(McpAdapter {
        namespace,
        address,
        port,
        transport,
        description,
        authentication,
        tools,
        unsupported,
        at,
    })
}

fn mcp_tool(node: &Node, at: Loc, diags: &mut Diagnostics) -> Option<McpTool> {
    let mut fields = Fields::open(node, at.clone(), diags, "a tool mapping")?;
    let name = fields.required_string("name", diags)?;
    let label = fields.string("label", diags).map(|s| s.value);
    let description = fields.string("description", diags).map(|s| s.value);
    let params = fields
        .take("inputParameters")
        .map(|(node, at)| list(node, &at, diags, tool_param))
        .unwrap_or_default();
    let call = fields.string("call", diags);
    let with = fields.with(diags);
    let hints = fields
        .take("hints")
        .map(|(node, at)| hints(node, at, diags))
        .unwrap_or_default();
    let outputs = fields
        .take("outputParameters")
        .map(|(node, at)| list(node, &at, diags, output_param))
        .unwrap_or_default();
    let unsupported = fields.orchestration();
    fields.finish(diags);
    Some(McpTool {
        name,
        label,
        description,
        params,
        call,
        with,
        hints,
        outputs,
        unsupported,
        at,
    })
}

fn hints(node: &Node, at: Loc, diags: &mut Diagnostics) -> Hints {
    let Some(mut fields) = Fields::open(node, at, diags, "a hints mapping") else {
        return Hints::default();
    };
    let hints = Hints {
        read_only: fields.bool("readOnly", diags),
        destructive: fields.bool("destructive", diags),
        idempotent: fields.bool("idempotent", diags),
        open_world: fields.bool("openWorld", diags),
    };
    fields.finish(diags);
    hints
}

/// Warns when a name does not match the format's kebab-case identifier pattern `[a-zA-Z0-9-]+`.
/// Such names still work: they are used exactly as written.
fn check_kebab(name: &str, line: u32, at: &Loc, key: &str, diags: &mut Diagnostics) {
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return;
    }
    diags
        .warning(
            Code::NamePattern,
            &at.key(key, line),
            format!("`{key}` is not a kebab-case identifier; used as written"),
        )
        .found(name.to_owned())
        .expected("letters, digits and `-`");
}

fn string_item(node: &Node, at: Loc, diags: &mut Diagnostics) -> Option<String> {
    match node.scalar_text() {
        Some(text) => Some(text),
        None => {
            diags
                .error(Code::BadType, &at, "expected a string")
                .found(node.kind())
                .expected("a string");
            None
        }
    }
}

/// Decodes every item of a list with `item`; a non-list is reported and read as empty.
fn list<T>(
    node: &Node,
    at: &Loc,
    diags: &mut Diagnostics,
    item: impl Fn(&Node, Loc, &mut Diagnostics) -> Option<T>,
) -> Vec<T> {
    match &node.value {
        NodeValue::Seq(items) => items
            .iter()
            .enumerate()
            .filter_map(|(i, node)| item(node, at.index(i, node.line), diags))
            .collect(),
        NodeValue::Null => Vec::new(),
        _ => {
            diags
                .error(Code::BadType, at, "expected a list")
                .found(node.kind())
                .expected("a list");
            Vec::new()
        }
    }
}

/// The keys of one mapping, taken one by one; whatever is never taken is reported by `finish`.
struct Fields<'n> {
    node: &'n Node,
    at: Loc,
    taken: Vec<bool>,
}

impl<'n> Fields<'n> {
    fn open(node: &'n Node, at: Loc, diags: &mut Diagnostics, expected: &str) -> Option<Self> {
        match node.entries() {
            Some(entries) => Some(Fields {
                node,
                at,
                taken: vec![false; entries.len()],
            }),
            None => {
                diags
                    .error(Code::BadType, &at, format!("expected {expected}"))
                    .found(node.kind())
                    .expected(expected);
                None
            }
        }
    }

    fn take(&mut self, key: &str) -> Option<(&'n Node, Loc)> {
        let entries = self.node.entries().expect("opened on a mapping");
        let index = entries.iter().position(|(k, _)| k.name == key)?;
        self.taken[index] = true;
        let (k, v) = &entries[index];
        Some((v, self.at.key(key, k.line)))
    }

    /// Looks at a key without taking it.
    fn peek(&self, key: &str) -> Option<(&'n Node, Loc)> {
        let entries = self.node.entries().expect("opened on a mapping");
        let (k, v) = entries.iter().find(|(k, _)| k.name == key)?;
        Some((v, self.at.key(key, k.line)))
    }

    fn used_all(&mut self) {
        self.taken.iter_mut().for_each(|t| *t = true);
    }

    fn string(&mut self, key: &str, diags: &mut Diagnostics) -> Option<Spanned<String>> {
        let (node, at) = self.take(key)?;
        match &node.value {
            NodeValue::Str(s) => Some(Spanned::new(s.clone(), at.line)),
            NodeValue::Null => None,
            NodeValue::Int(_) | NodeValue::Float(_) | NodeValue::Bool(_) => {
                let text = node.scalar_text().expect("scalar");
                diags
                    .warning(
                        Code::CoercedType,
                        &at,
                        format!("`{key}` read as the string \"{text}\""),
                    )
                    .found(node.kind())
                    .expected("a string");
                Some(Spanned::new(text, at.line))
            }
            _ => {
                diags
                    .error(Code::BadType, &at, format!("`{key}` must be a string"))
                    .found(node.kind())
                    .expected("a string");
                None
            }
        }
    }

    fn required_string(&mut self, key: &str, diags: &mut Diagnostics) -> Option<Spanned<String>> {
        let value = self.string(key, diags);
        if value.is_none() {
            diags
                .error(
                    Code::MissingKey,
                    &self.at,
                    format!("missing required `{key}`"),
                )
                .expected(format!("`{key}`"));
        }
        value
    }

    fn scalar(&mut self, key: &str, diags: &mut Diagnostics) -> Option<String> {
        let (node, at) = self.take(key)?;
        match node.scalar_text() {
            Some(text) => Some(text),
            None => {
                diags
                    .error(Code::BadType, &at, format!("`{key}` must be a string"))
                    .found(node.kind())
                    .expected("a string");
                None
            }
        }
    }

    fn required_scalar(&mut self, key: &str, diags: &mut Diagnostics) -> Option<String> {
        let value = self.scalar(key, diags);
        if value.is_none() {
            diags
                .error(
                    Code::MissingKey,
                    &self.at,
                    format!("missing required `{key}`"),
                )
                .expected(format!("`{key}`"));
        }
        value
    }

    fn bool(&mut self, key: &str, diags: &mut Diagnostics) -> Option<bool> {
        let (node, at) = self.take(key)?;
        match &node.value {
            NodeValue::Bool(b) => Some(*b),
            NodeValue::Str(s) if s == "true" || s == "false" => {
                diags
                    .warning(
                        Code::CoercedType,
                        &at,
                        format!("`{key}` read as the boolean {s}"),
                    )
                    .found("a string")
                    .expected("a boolean");
                Some(s == "true")
            }
            _ => {
                diags
                    .error(
                        Code::BadType,
                        &at,
                        format!("`{key}` must be a boolean; ignored"),
                    )
                    .found(node.kind())
                    .expected("true or false");
                None
            }
        }
    }

    fn port(&mut self, diags: &mut Diagnostics) -> Option<Spanned<u16>> {
        let (node, at) = self.take("port")?;
        let parsed = match &node.value {
            NodeValue::Int(i) => u16::try_from(*i).ok(),
            NodeValue::Str(s) => {
                let parsed = s.parse::<u16>().ok();
                if parsed.is_some() {
                    diags
                        .warning(
                            Code::CoercedType,
                            &at,
                            format!("`port` read as the number {s}"),
                        )
                        .found("a string")
                        .expected("an integer");
                }
                parsed
            }
            _ => None,
        };
        match parsed {
            Some(port) if port > 0 => Some(Spanned::new(port, at.line)),
            _ => {
                diags
                    .error(
                        Code::BadValue,
                        &at,
                        "`port` must be an integer from 1 to 65535",
                    )
                    .found(node.scalar_text().unwrap_or_else(|| node.kind().to_owned()))
                    .expected("an integer from 1 to 65535");
                None
            }
        }
    }

    /// Reads a key the schema does not have but that real files use with an evident meaning.
    fn extension_string(
        &mut self,
        key: &str,
        meaning: &str,
        diags: &mut Diagnostics,
    ) -> Option<String> {
        let value = self.string(key, diags)?;
        diags.warning(
            Code::SchemaExtension,
            &self.at.key(key, value.line),
            meaning,
        );
        Some(value.value)
    }

    fn with(&mut self, diags: &mut Diagnostics) -> Vec<WithEntry> {
        let Some((node, at)) = self.take("with") else {
            return Vec::new();
        };
        match node.entries() {
            Some(entries) => entries
                .iter()
                .map(|(key, value)| WithEntry {
                    name: key.name.clone(),
                    value: value.to_json(),
                    line: key.line,
                })
                .collect(),
            None => {
                diags
                    .error(
                        Code::BadType,
                        &at,
                        "`with` must map consumed parameter names to sources",
                    )
                    .found(node.kind())
                    .expected("a mapping");
                Vec::new()
            }
        }
    }

    /// Orchestration keys of operations and tools (`steps`, `ref`, `mappings`).
    fn orchestration(&mut self) -> Vec<Unsupported> {
        ["steps", "ref", "mappings"]
            .into_iter()
            .filter_map(|feature| {
                self.take(feature).map(|(_, at)| Unsupported {
                    feature: feature.to_owned(),
                    at,
                })
            })
            .collect()
    }

    /// Reports every key that was never taken.
    fn finish(self, diags: &mut Diagnostics) {
        let entries = self.node.entries().expect("opened on a mapping");
        for ((key, _), taken) in entries.iter().zip(&self.taken) {
            if !taken {
                diags
                    .warning(
                        Code::UnknownKey,
                        &self.at.key(&key.name, key.line),
                        format!("unknown key `{}` ignored", key.name),
                    )
                    .found(key.name.clone())
                    .expected("a key of the naftiko 1.0.0-alpha2 format at this place");
            }
        }
    }
}
