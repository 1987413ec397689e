//! Input parameters at compile time: the [`InputSpec`] of every input (its type, with what the
//! profile knows better than the file) and the JSON Schema a tool announces for them.
//!
//! The same specs validate arguments on the request path (`crate::arguments`), so what a client
//! is told and what is checked cannot drift.

use serde_json::{Map, Value, json};

use crate::config::ProfileName;
use crate::snapshot::{InputSpec, ParamType};

/// Stripe's range-filter parameters (an integer timestamp or `{gt, gte, lt, lte}`). The generated
/// files type them `string`, which no real call matches; the Stripe profile knows better.
const STRIPE_RANGE_FILTERS: [&str; 4] = ["created", "arrival_date", "available_on", "due_date"];

pub(crate) fn input_spec(
    name: &str,
    ty: Option<&str>,
    required: bool,
    description: Option<String>,
    profile: ProfileName,
) -> InputSpec {
    let ty = match (name, ty.map(str::to_ascii_lowercase).as_deref()) {
        ("expand", _) => ParamType::Array,
        (name, Some("string") | None)
            if profile == ProfileName::Stripe && STRIPE_RANGE_FILTERS.contains(&name) =>
        {
            ParamType::RangeFilter
        }
        ("body", None) => ParamType::Object,
        (_, Some("string")) => ParamType::String,
        (_, Some("integer")) => ParamType::Integer,
        (_, Some("number")) => ParamType::Number,
        (_, Some("boolean")) => ParamType::Boolean,
        (_, Some("array")) => ParamType::Array,
        (_, Some("object")) => ParamType::Object,
        _ => ParamType::Any,
    };
    InputSpec {
        name: name.to_owned(),
        ty,
        required,
        description,
        header: None,
    }
}

/// The spec of a parameter from a schema source's JSON Schema (optional: the file did not ask
/// for it). A range filter (`anyOf` an integer and an object) is one; a schema whose type
/// the specs cannot say is `Any`, checked by the upstream.
pub(crate) fn described_spec(
    name: &str,
    schema: &Map<String, Value>,
    profile: ProfileName,
) -> InputSpec {
    let types: Vec<&str> = match schema.get("anyOf").and_then(Value::as_array) {
        Some(options) => options
            .iter()
            .filter_map(|o| o.get("type").and_then(Value::as_str))
            .collect(),
        None => schema
            .get("type")
            .and_then(Value::as_str)
            .into_iter()
            .collect(),
    };
    let description = schema
        .get("description")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let mut spec = match types.as_slice() {
        [one] => input_spec(name, Some(one), false, description, profile),
        ["object", "integer"] | ["integer", "object"] => InputSpec {
            name: name.to_owned(),
            ty: ParamType::RangeFilter,
            required: false,
            description,
            header: None,
        },
        _ => input_spec(name, Some("any"), false, description, profile),
    };
    if spec.ty == ParamType::Array
        && name != "expand"
        && schema
            .get("items")
            .and_then(|i| i.get("type"))
            .and_then(Value::as_str)
            != Some("string")
    {
        // Only arrays of strings have a spec of their own.
        spec.ty = ParamType::Any;
    }
    spec
}

/// The JSON Schema (2020-12) of a tool's arguments.
pub fn schema_for(inputs: &[InputSpec]) -> Map<String, Value> {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for input in inputs {
        let mut schema = match input.ty {
            ParamType::String => json!({"type": "string"}),
            ParamType::Integer => json!({"type": "integer"}),
            ParamType::Number => json!({"type": "number"}),
            ParamType::Boolean => json!({"type": "boolean"}),
            ParamType::Array => json!({"type": "array", "items": {"type": "string"}}),
            ParamType::Object => json!({"type": "object"}),
            ParamType::RangeFilter => json!({
                "anyOf": [
                    {"type": "integer", "description": "Exactly this Unix timestamp"},
                    {
                        "type": "object",
                        "properties": {
                            "gt": {"type": "integer"},
                            "gte": {"type": "integer"},
                            "lt": {"type": "integer"},
                            "lte": {"type": "integer"}
                        },
                        "additionalProperties": false
                    }
                ]
            }),
            ParamType::Any => json!({}),
        };
        let description = match (&input.description, &input.ty) {
            (Some(d), _) => Some(d.trim().to_owned()),
            (None, ParamType::RangeFilter) => Some(
                "A Unix timestamp, or a range as {gt, gte, lt, lte} of Unix timestamps".to_owned(),
            ),
            (None, ParamType::Array) if input.name == "expand" => {
                Some("Fields of the response to expand".to_owned())
            }
            _ => None,
        };
        if let Value::Object(map) = &mut schema {
            if let Some(description) = description {
                map.insert("description".into(), Value::String(description));
            }
            if let Some(header) = &input.header {
                map.insert("x-mcp-header".into(), Value::String(header.clone()));
            }
        }
        properties.insert(input.name.clone(), schema);
        if input.required {
            required.push(Value::String(input.name.clone()));
        }
    }
    let mut schema = Map::new();
    schema.insert("type".into(), json!("object"));
    schema.insert("properties".into(), Value::Object(properties));
    if !required.is_empty() {
        schema.insert("required".into(), Value::Array(required));
    }
    schema.insert("additionalProperties".into(), json!(false));
    schema
}
