//! Schema sources: an upstream's OpenAPI 3.0/3.1 description, so that an operation a
//! capability declares opaquely (`body: object`, "Request body (JSON)") is announced to agents
//! with its real parameters.
//!
//! A description is indexed once by (method, path template with its variables' names erased).
//! An operation's request schema is its `requestBody` form (or JSON) schema with `$ref`s
//! resolved (a reference already being resolved is cut to `{}`), nesting cut at
//! [`MAX_DEPTH`], descriptions trimmed to their first sentence, and only the keywords a tool
//! schema needs kept. Stripe's description (and the newer Identity subset, which wins for the
//! paths it covers) ships in the binary and is parsed on first use.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use http::Method;
use serde_json::{Map, Value};

/// How deep nested objects and arrays are described; deeper, a value is `{}` (any).
pub const MAX_DEPTH: usize = 4;
/// The longest description kept.
const MAX_DESCRIPTION: usize = 160;
/// Keywords kept from a description's schemas.
const KEPT: [&str; 8] = [
    "type",
    "properties",
    "required",
    "enum",
    "items",
    "anyOf",
    "description",
    "additionalProperties",
];

/// What is read of a description: each operation's request body (everything else skipped
/// unread).
#[derive(serde::Deserialize)]
struct Document {
    paths: Option<std::collections::BTreeMap<String, PathItem>>,
}

#[derive(serde::Deserialize)]
struct PathItem {
    get: Option<OperationDoc>,
    post: Option<OperationDoc>,
    put: Option<OperationDoc>,
    patch: Option<OperationDoc>,
    delete: Option<OperationDoc>,
}

#[derive(serde::Deserialize)]
struct OperationDoc {
    #[serde(rename = "requestBody")]
    request_body: Option<Value>,
    #[serde(default)]
    parameters: Vec<Value>,
}

/// What the index keeps of one operation.
#[derive(Debug)]
struct Indexed {
    /// Its `requestBody` (`null` without one).
    body: Value,
    /// Its `in: query` parameters, as written.
    query: Vec<Value>,
}

/// A query parameter of an operation, as tools announce it. Its `style` is not kept: the
/// encoder sends an object in a query as `name[key]=value` for every profile, which is what
/// Stripe's `deepObject` parameters (and its bodies' `encoding`) say.
#[derive(Debug, Clone)]
pub struct QueryParam {
    pub name: String,
    /// Its JSON Schema, cleaned like a body's, with the parameter's description.
    pub schema: Arc<Map<String, Value>>,
}

#[derive(serde::Deserialize)]
struct WithComponents {
    #[serde(default)]
    components: Value,
}

/// One OpenAPI description, indexed.
#[derive(Debug, Default)]
pub struct OpenApi {
    /// By (method, path with `{}` for each variable): the operation's request body and
    /// query parameters.
    operations: HashMap<(Method, String), Indexed>,
    components: Value,
    /// Every path, as written, for "did you mean".
    paths: Vec<String>,
    /// Request schemas already cleaned: files that consume the same operation share one.
    cleaned: std::sync::Mutex<HashMap<OperationKey, Option<Shared>>>,
    /// Query parameters already cleaned, shared the same way.
    cleaned_query: std::sync::Mutex<HashMap<OperationKey, Arc<[QueryParam]>>>,
}

/// (method, path with `{}` for each variable).
type OperationKey = (Method, String);

/// A cleaned schema, shared.
type Shared = Arc<Map<String, Value>>;

/// What an operation of the description says its request takes.
#[derive(Debug, Clone)]
pub struct RequestSchema {
    /// The body's JSON Schema (an object schema with `properties`).
    pub body: Map<String, Value>,
}

impl OpenApi {
    /// Reads a description (JSON, or YAML). Only what request schemas need is kept: each
    /// operation's `requestBody`, and `components` only when a kept schema refers into them
    /// (Stripe's request bodies do not; its components are most of its 2.5 MB).
    pub fn parse(bytes: &[u8]) -> Result<OpenApi, String> {
        let document: Document = match serde_json::from_slice(bytes) {
            Ok(document) => document,
            Err(json) => serde_yaml::from_slice(bytes)
                .map_err(|yaml| format!("neither JSON ({json}) nor YAML ({yaml})"))?,
        };
        let Some(paths) = document.paths else {
            return Err("no `paths` object: not an OpenAPI description".into());
        };
        let mut api = OpenApi::default();
        let mut refers = false;
        for (path, item) in paths {
            api.paths.push(path.clone());
            for (method, operation) in [
                (Method::GET, item.get),
                (Method::POST, item.post),
                (Method::PUT, item.put),
                (Method::PATCH, item.patch),
                (Method::DELETE, item.delete),
            ] {
                let Some(operation) = operation else {
                    continue;
                };
                let body = operation.request_body.unwrap_or(Value::Null);
                let query: Vec<Value> = operation
                    .parameters
                    .into_iter()
                    .filter(|p| p.get("in").and_then(Value::as_str) == Some("query"))
                    .collect();
                refers |= body.to_string().contains("\"$ref\"")
                    || query.iter().any(|q| q.to_string().contains("\"$ref\""));
                api.operations
                    .insert((method, erase_variables(&path)), Indexed { body, query });
            }
        }
        api.paths.sort();
        if refers {
            let components: WithComponents = match serde_json::from_slice(bytes) {
                Ok(with) => with,
                Err(_) => serde_yaml::from_slice(bytes).map_err(|e| e.to_string())?,
            };
            api.components = components.components;
        }
        Ok(api)
    }

    /// Whether the description has `path` (variables by any name), for any method.
    pub fn has_path(&self, path: &str) -> bool {
        let erased = erase_variables(path);
        self.operations.keys().any(|(_, p)| *p == erased)
    }

    /// The paths of the description nearest to `path` (by edit distance), at most three.
    pub fn nearest_paths(&self, path: &str) -> Vec<&str> {
        let mut scored: Vec<(usize, &str)> = self
            .paths
            .iter()
            .map(|p| {
                (
                    distance(&p.to_ascii_lowercase(), &path.to_ascii_lowercase()),
                    p.as_str(),
                )
            })
            .collect();
        scored.sort();
        scored.into_iter().take(3).map(|(_, p)| p).collect()
    }

    /// The request body schema of the operation at (`method`, `path`), if it has one with
    /// properties.
    pub fn request(&self, method: &Method, path: &str) -> Option<RequestSchema> {
        let request_body = &self
            .operations
            .get(&(method.clone(), erase_variables(path)))?
            .body;
        let content = request_body.get("content")?;
        let schema = content
            .get("application/x-www-form-urlencoded")
            .or_else(|| content.get("application/json"))?
            .get("schema")?;
        let mut chain = Vec::new();
        let Value::Object(body) = self.clean(schema, 0, &mut chain) else {
            return None;
        };
        body.get("properties")
            .and_then(Value::as_object)
            .is_some_and(|p| !p.is_empty())
            .then_some(RequestSchema { body })
    }

    /// The query parameters of the operation at (`method`, `path`), `None` when the
    /// description does not have the operation. A parameter's description (its first
    /// sentence) becomes its schema's when the schema has none.
    pub fn query(&self, method: &Method, path: &str) -> Option<Vec<QueryParam>> {
        let indexed = self
            .operations
            .get(&(method.clone(), erase_variables(path)))?;
        let params = indexed
            .query
            .iter()
            .filter_map(|param| {
                let name = param.get("name")?.as_str()?.to_owned();
                let mut chain = Vec::new();
                let Value::Object(mut schema) =
                    self.clean(param.get("schema").unwrap_or(&Value::Null), 0, &mut chain)
                else {
                    return None;
                };
                if !schema.contains_key("description")
                    && let Some(text) = param.get("description").and_then(Value::as_str)
                {
                    schema.insert("description".into(), Value::String(first_sentence(text)));
                }
                Some(QueryParam {
                    name,
                    schema: Arc::new(schema),
                })
            })
            .collect();
        Some(params)
    }

    /// `schema` with `$ref`s resolved, cut at `MAX_DEPTH`, only `KEPT` keywords.
    fn clean(&self, schema: &Value, depth: usize, chain: &mut Vec<String>) -> Value {
        let Some(object) = schema.as_object() else {
            return Value::Object(Map::new());
        };
        if let Some(reference) = object.get("$ref").and_then(Value::as_str) {
            if chain.iter().any(|r| r == reference) {
                return Value::Object(Map::new());
            }
            let Some(target) = self.resolve(reference) else {
                return Value::Object(Map::new());
            };
            chain.push(reference.to_owned());
            let resolved = self.clean(target, depth, chain);
            chain.pop();
            return resolved;
        }
        if depth > MAX_DEPTH {
            return Value::Object(Map::new());
        }
        let mut out = Map::new();
        for key in KEPT {
            let Some(value) = object.get(key) else {
                continue;
            };
            let kept = match key {
                "properties" => Value::Object(
                    value
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(name, s)| (name.clone(), self.clean(s, depth + 1, chain)))
                        .collect(),
                ),
                "items" => self.clean(value, depth + 1, chain),
                "additionalProperties" => match value {
                    Value::Bool(_) => value.clone(),
                    other => self.clean(other, depth + 1, chain),
                },
                "anyOf" => Value::Array(
                    value
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|s| self.clean(s, depth, chain))
                        .collect(),
                ),
                "description" => match value.as_str() {
                    Some(text) => Value::String(first_sentence(text)),
                    None => continue,
                },
                _ => value.clone(),
            };
            out.insert(key.to_owned(), kept);
        }
        Value::Object(out)
    }

    /// A local reference (`#/components/schemas/x`).
    fn resolve(&self, reference: &str) -> Option<&Value> {
        let pointer = reference.strip_prefix("#/components")?;
        self.components.pointer(pointer)
    }
}

/// `/v1/customers/{customer}/sources/{id}` -> `/v1/customers/{}/sources/{}`.
pub fn erase_variables(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut inside = false;
    for c in path.chars() {
        match c {
            '{' => {
                inside = true;
                out.push_str("{}");
            }
            '}' => inside = false,
            _ if inside => {}
            _ => out.push(c),
        }
    }
    out
}

fn first_sentence(text: &str) -> String {
    let text = text.trim();
    let end = text
        .find(". ")
        .map_or(text.len(), |i| i + 1)
        .min(MAX_DESCRIPTION);
    let mut cut = end;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text[..cut].to_owned()
}

/// Levenshtein distance, for "nearest paths" (short strings, rare).
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let current = row[j + 1];
            row[j + 1] = (previous + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(current + 1);
            previous = current;
        }
    }
    row[b.len()]
}

/// Stripe's descriptions: the newer Identity subset first, then the whole v1 API.
pub fn stripe() -> &'static [Arc<OpenApi>] {
    static STRIPE: OnceLock<Vec<Arc<OpenApi>>> = OnceLock::new();
    STRIPE.get_or_init(|| {
        [
            &include_bytes!("../data/stripe-identity-openapi.json")[..],
            &include_bytes!("../data/stripe-openapi.json")[..],
        ]
        .iter()
        .map(|bytes| Arc::new(OpenApi::parse(bytes).expect("the shipped description parses")))
        .collect()
    })
}

/// The first description of `sources` that has the operation.
pub fn request_in(sources: &[Arc<OpenApi>], method: &Method, path: &str) -> Option<RequestSchema> {
    sources.iter().find_map(|api| api.request(method, path))
}

/// The same, cleaned once per description and operation and shared.
pub fn shared_request_in(
    sources: &[Arc<OpenApi>],
    method: &Method,
    path: &str,
) -> Option<Arc<Map<String, Value>>> {
    sources.iter().find_map(|api| {
        let key = (method.clone(), erase_variables(path));
        let mut cleaned = api.cleaned.lock().unwrap_or_else(|e| e.into_inner());
        cleaned
            .entry(key)
            .or_insert_with(|| api.request(method, path).map(|r| Arc::new(r.body)))
            .clone()
    })
}

/// The query parameters of the first description of `sources` that has the operation
/// (none when none has it), cleaned once per description and operation and shared.
pub fn shared_query_in(sources: &[Arc<OpenApi>], method: &Method, path: &str) -> Arc<[QueryParam]> {
    sources
        .iter()
        .find_map(|api| {
            let key = (method.clone(), erase_variables(path));
            let mut cleaned = api.cleaned_query.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(found) = cleaned.get(&key) {
                return Some(found.clone());
            }
            let params: Arc<[QueryParam]> = api.query(method, path)?.into();
            cleaned.insert(key, params.clone());
            Some(params)
        })
        .unwrap_or_else(|| Arc::from(Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripes_create_session_has_its_real_parameters() {
        let body = request_in(
            stripe(),
            &Method::POST,
            "/v1/identity/verification_sessions",
        )
        .unwrap()
        .body;
        let properties = body["properties"].as_object().unwrap();
        for name in [
            "type",
            "metadata",
            "options",
            "return_url",
            "client_reference_id",
        ] {
            assert!(properties.contains_key(name), "{name}: {properties:?}");
        }
        // The subset's newer parameter: it wins over the older whole description.
        assert!(properties.contains_key("verification_flow"));
        assert_eq!(
            properties["type"]["enum"],
            serde_json::json!(["document", "id_number"])
        );
        let text = serde_json::to_string(&body).unwrap();
        assert!(
            !text.contains("maxLength") && !text.contains("\"title\""),
            "{text}"
        );
    }

    #[test]
    fn an_operations_query_parameters_come_with_their_schemas() {
        let query = shared_query_in(stripe(), &Method::GET, "/v1/customers");
        let names: Vec<&str> = query.iter().map(|q| q.name.as_str()).collect();
        for name in [
            "created",
            "email",
            "ending_before",
            "expand",
            "limit",
            "starting_after",
        ] {
            assert!(names.contains(&name), "{name}: {names:?}");
        }
        let created = query.iter().find(|q| q.name == "created").unwrap();
        assert_eq!(created.schema["anyOf"][1]["type"], "integer");
        assert_eq!(
            created.schema["anyOf"][0]["properties"]["gte"]["type"],
            "integer"
        );
        let email = query.iter().find(|q| q.name == "email").unwrap();
        assert_eq!(email.schema["type"], "string");
        // The parameter's description, to its first sentence, is its schema's.
        assert_eq!(
            email.schema["description"],
            "A case-sensitive filter on the list based on the customer's `email` field."
        );
        // Shared: a second file consuming the operation gets the same cleaned schemas.
        let again = shared_query_in(stripe(), &Method::GET, "/v1/customers");
        assert!(Arc::ptr_eq(&again, &query));
        assert!(shared_query_in(stripe(), &Method::GET, "/v1/no-such-thing").is_empty());
    }

    #[test]
    fn paths_match_whatever_their_variables_are_called() {
        let api = &stripe()[1];
        assert!(api.has_path("/v1/customers/{cus}/sources/{source_id}"));
        assert!(!api.has_path("/v1/Invoice Items"));
        assert_eq!(
            api.nearest_paths("/v1/Invoice Items")[0],
            "/v1/invoiceitems"
        );
        assert!(
            api.request(&Method::GET, "/v1/customers").is_none(),
            "a GET has no body"
        );
    }

    #[test]
    fn references_resolve_and_cycles_are_cut() {
        let api = OpenApi::parse(
            br##"{"paths": {"/a": {"post": {"requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/node"}}}}}}},
                 "components": {"schemas": {"node": {"type": "object", "properties": {"name": {"type": "string"}, "child": {"$ref": "#/components/schemas/node"}}}}}}"##,
        )
        .unwrap();
        let body = api.request(&Method::POST, "/a").unwrap().body;
        assert_eq!(body["properties"]["name"]["type"], "string");
        assert_eq!(body["properties"]["child"], serde_json::json!({}));
    }
}

/// What is wrong with a request body, in Stripe's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// `parameter_unknown` or `parameter_invalid`.
    pub code: &'static str,
    pub message: String,
    /// The parameter in Stripe's bracket notation (`options[document][allowed_types]`).
    pub param: String,
}

/// Checks a request body against its schema, as leniently as form encoding requires (numbers
/// and booleans may arrive as text, arrays as indexed objects, and the empty string, Stripe's
/// "unset", is taken anywhere): unknown fields where the schema allows none, values outside an
/// `enum`, and values of the wrong kind.
pub fn check(body: &Map<String, Value>, schema: &Map<String, Value>) -> Result<(), Mismatch> {
    check_given(body, schema, |_| false)
}

/// [`check`], and what the schema requires is there: in `body`, or (at its top level) among
/// the request's other parameters, those `given` says the call sends besides the body.
pub fn check_given(
    body: &Map<String, Value>,
    schema: &Map<String, Value>,
    given: impl Fn(&str) -> bool,
) -> Result<(), Mismatch> {
    if let Some(missing) = missing_required(body, schema, &given) {
        return Err(missing_param(missing.to_owned()));
    }
    check_object(body, schema, "")
}

/// The first name `schema` requires that neither `object` nor `given` has.
fn missing_required<'s>(
    object: &Map<String, Value>,
    schema: &'s Map<String, Value>,
    given: &dyn Fn(&str) -> bool,
) -> Option<&'s str> {
    let Some(Value::Array(required)) = schema.get("required") else {
        return None;
    };
    required
        .iter()
        .filter_map(Value::as_str)
        .find(|name| !given(name) && object.get(*name).is_none_or(Value::is_null))
}

/// Stripe's answer to a required parameter left out.
fn missing_param(param: String) -> Mismatch {
    Mismatch {
        code: "parameter_missing",
        message: format!("Missing required param: {param}."),
        param,
    }
}

fn name_of(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}[{key}]")
    }
}

fn check_object(
    object: &Map<String, Value>,
    schema: &Map<String, Value>,
    parent: &str,
) -> Result<(), Mismatch> {
    let properties = schema.get("properties").and_then(Value::as_object);
    for (key, value) in object {
        let param = name_of(parent, key);
        match properties
            .and_then(|p| p.get(key))
            .and_then(Value::as_object)
        {
            Some(property) => check_value(value, property, &param)?,
            None => match schema.get("additionalProperties") {
                Some(Value::Bool(false)) if properties.is_some() => {
                    return Err(Mismatch {
                        code: "parameter_unknown",
                        message: format!("Received unknown parameter: {param}"),
                        param,
                    });
                }
                Some(Value::Object(additional)) => check_value(value, additional, &param)?,
                _ => {}
            },
        }
    }
    Ok(())
}

fn check_value(value: &Value, schema: &Map<String, Value>, param: &str) -> Result<(), Mismatch> {
    // Stripe's "unset", and an absent value.
    if value.is_null() || value.as_str() == Some("") {
        return Ok(());
    }
    if let Some(Value::Array(alternatives)) = schema.get("anyOf") {
        let mut first = None;
        for alternative in alternatives.iter().filter_map(Value::as_object) {
            match check_value(value, alternative, param) {
                Ok(()) => return Ok(()),
                Err(mismatch) => {
                    first.get_or_insert(mismatch);
                }
            }
        }
        return match first {
            Some(mismatch) => Err(mismatch),
            None => Ok(()),
        };
    }
    if let Some(Value::Array(allowed)) = schema.get("enum") {
        let text = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if !allowed
            .iter()
            .any(|a| a.as_str() == Some(&text) || *a == *value)
        {
            let choices: Vec<String> = allowed
                .iter()
                .filter_map(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            return Err(Mismatch {
                code: "parameter_invalid",
                message: format!("Invalid {param}: must be one of {}", choices.join(", ")),
                param: param.to_owned(),
            });
        }
        return Ok(());
    }
    let kind = schema.get("type").and_then(Value::as_str);
    let wrong = |expected: &str| Mismatch {
        code: "parameter_invalid",
        message: format!("Invalid {param}: expected {expected}"),
        param: param.to_owned(),
    };
    match (kind, value) {
        (Some("object"), Value::Object(object)) => {
            if let Some(missing) = missing_required(object, schema, &|_| false) {
                return Err(missing_param(name_of(param, missing)));
            }
            check_object(object, schema, param)
        }
        (Some("object"), _) => Err(wrong("an object (a hash)")),
        (Some("array"), Value::Array(items)) => {
            let item = schema.get("items").and_then(Value::as_object);
            for (i, v) in items.iter().enumerate() {
                if let Some(item) = item {
                    check_value(v, item, &format!("{param}[{i}]"))?;
                }
            }
            Ok(())
        }
        // `a[0]=x&a[1]=y` decodes to an object with index keys.
        (Some("array"), Value::Object(indexed))
            if indexed.keys().all(|k| k.parse::<usize>().is_ok()) =>
        {
            Ok(())
        }
        (Some("array"), _) => Err(wrong("an array")),
        (Some("integer"), Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(()),
        (Some("integer"), Value::String(s)) if s.trim().parse::<i64>().is_ok() => Ok(()),
        (Some("integer"), _) => Err(wrong("an integer")),
        (Some("number"), Value::Number(_)) => Ok(()),
        (Some("number"), Value::String(s)) if s.trim().parse::<f64>().is_ok() => Ok(()),
        (Some("number"), _) => Err(wrong("a number")),
        (Some("boolean"), Value::Bool(_)) => Ok(()),
        (Some("boolean"), Value::String(s)) if s == "true" || s == "false" => Ok(()),
        (Some("boolean"), _) => Err(wrong("a boolean")),
        (Some("string"), Value::String(_) | Value::Number(_) | Value::Bool(_)) => Ok(()),
        (Some("string"), _) => Err(wrong("a string")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod check_tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Map<String, Value> {
        request_in(
            stripe(),
            &Method::POST,
            "/v1/identity/verification_sessions",
        )
        .unwrap()
        .body
    }

    fn body(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn what_an_operation_requires_must_be_sent() {
        let schema = request_in(stripe(), &Method::POST, "/v1/payment_intents")
            .unwrap()
            .body;
        let missing = check(&body(json!({"amount": 2000})), &schema).unwrap_err();
        assert_eq!(
            (
                missing.code,
                missing.param.as_str(),
                missing.message.as_str()
            ),
            (
                "parameter_missing",
                "currency",
                "Missing required param: currency."
            )
        );
        // Given as a parameter of its own, besides the body, it is there.
        assert_eq!(
            check_given(&body(json!({"amount": 2000})), &schema, |n| n == "currency"),
            Ok(())
        );
        // Inside an object that is sent, what that object requires too.
        let nested = check(
            &body(json!({"amount": 2000, "currency": "usd", "shipping": {"name": "A"}})),
            &schema,
        )
        .unwrap_err();
        assert_eq!(
            (nested.code, nested.param.as_str()),
            ("parameter_missing", "shipping[address]")
        );
        assert_eq!(
            check(&body(json!({"amount": 2000, "currency": "usd"})), &schema),
            Ok(())
        );
    }

    #[test]
    fn a_body_is_checked_as_stripe_would() {
        let schema = schema();
        assert_eq!(
            check(
                &body(
                    json!({"type": "document", "metadata": {"a": "b"}, "options": {"document": {"require_matching_selfie": "true", "allowed_types": ["passport"]}}})
                ),
                &schema
            ),
            Ok(())
        );
        let unknown = check(&body(json!({"colour": "red"})), &schema).unwrap_err();
        assert_eq!(
            (unknown.code, unknown.param.as_str()),
            ("parameter_unknown", "colour")
        );
        let enum_ = check(&body(json!({"type": "selfie"})), &schema).unwrap_err();
        assert_eq!(enum_.param, "type");
        assert!(
            enum_.message.contains("document, id_number"),
            "{}",
            enum_.message
        );
        let nested = check(
            &body(json!({"options": {"document": {"allowed_types": ["library_card"]}}})),
            &schema,
        )
        .unwrap_err();
        assert_eq!(nested.param, "options[document][allowed_types][0]");
        assert!(
            check(&body(json!({"options": {"document": ""}})), &schema).is_ok(),
            "unset"
        );
        let kind = check(
            &body(json!({"options": {"document": {"require_live_capture": "maybe"}}})),
            &schema,
        )
        .unwrap_err();
        assert_eq!(kind.param, "options[document][require_live_capture]");
    }
}
