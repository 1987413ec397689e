//! Input parameters: types, JSON Schemas and validation, shared by REST routes and MCP tools.
//!
//! Compilation turns every input into an [`InputSpec`]; the same spec yields the tool's JSON
//! Schema and validates arguments, so what a client is told and what is checked cannot drift.

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

/// An argument that does not fit its input spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ArgumentError {
    /// The argument's name.
    pub param: String,
    pub message: String,
}

/// How strictly arguments are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strictness {
    /// JSON arguments (MCP): types must match exactly, unknown arguments are refused.
    Exact,
    /// Text from URLs and forms (REST): numbers and booleans may come as text and are
    /// converted; a single value is accepted for an array; unknown names pass.
    FromText,
}

/// Checks `arguments` against `inputs`, returning them with text converted where `strictness`
/// allows.
pub fn validate_arguments(
    inputs: &[InputSpec],
    arguments: Map<String, Value>,
    strictness: Strictness,
) -> Result<Map<String, Value>, ArgumentError> {
    if strictness == Strictness::Exact
        && let Some(unknown) = arguments
            .keys()
            .find(|k| !inputs.iter().any(|i| &i.name == *k))
    {
        let known: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
        return Err(ArgumentError {
            param: unknown.clone(),
            message: format!(
                "unknown argument \"{unknown}\"; this tool takes {}",
                if known.is_empty() {
                    "no arguments".to_owned()
                } else {
                    known.join(", ")
                }
            ),
        });
    }
    let noun = match strictness {
        Strictness::Exact => "argument",
        Strictness::FromText => "parameter",
    };
    let mut arguments = arguments;
    for input in inputs {
        match arguments.remove(&input.name) {
            None | Some(Value::Null) if input.required => {
                return Err(ArgumentError {
                    param: input.name.clone(),
                    message: format!("missing required {noun} \"{}\"", input.name),
                });
            }
            None => {}
            Some(value) => {
                let value = check(input, value, strictness)?;
                arguments.insert(input.name.clone(), value);
            }
        }
    }
    Ok(arguments)
}

fn check(input: &InputSpec, value: Value, strictness: Strictness) -> Result<Value, ArgumentError> {
    let text = strictness == Strictness::FromText;
    let bad = |expected: &str, value: &Value| ArgumentError {
        param: input.name.clone(),
        message: format!(
            "invalid value for \"{}\": expected {expected}, got {}",
            input.name,
            describe(value)
        ),
    };
    Ok(match (&input.ty, value) {
        (ParamType::Any, v) => v,
        (_, Value::Null) => Value::Null,
        (ParamType::String, Value::String(s)) => Value::String(s),
        (ParamType::String, Value::Number(n)) if text => Value::String(n.to_string()),
        (ParamType::Integer, Value::Number(n)) if n.is_i64() || n.is_u64() => Value::Number(n),
        (ParamType::Integer, Value::String(s)) if text => match s.trim().parse::<i64>() {
            Ok(i) => Value::from(i),
            Err(_) => return Err(bad("an integer", &Value::String(s))),
        },
        (ParamType::Number, Value::Number(n)) => Value::Number(n),
        (ParamType::Number, Value::String(s)) if text => {
            match s
                .trim()
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
            {
                Some(n) => Value::Number(n),
                None => return Err(bad("a number", &Value::String(s))),
            }
        }
        (ParamType::Boolean, Value::Bool(b)) => Value::Bool(b),
        (ParamType::Boolean, Value::String(s)) if text && (s == "true" || s == "false") => {
            Value::Bool(s == "true")
        }
        (ParamType::Array, Value::Array(items)) => {
            if input.name == "expand"
                && let Some(item) = items.iter().find(|i| !i.is_string())
            {
                return Err(bad("an array of strings", item));
            }
            Value::Array(items)
        }
        (ParamType::Array, Value::String(s)) if text => Value::Array(vec![Value::String(s)]),
        (ParamType::Object, Value::Object(map)) => Value::Object(map),
        (ParamType::RangeFilter, Value::Number(n)) if n.is_i64() => Value::Number(n),
        (ParamType::RangeFilter, Value::String(s)) if text && s.trim().parse::<i64>().is_ok() => {
            Value::String(s)
        }
        (ParamType::RangeFilter, Value::Object(map)) => {
            for (key, bound) in &map {
                if !matches!(key.as_str(), "gt" | "gte" | "lt" | "lte") {
                    return Err(ArgumentError {
                        param: input.name.clone(),
                        message: format!(
                            "invalid value for \"{}\": unknown range key \"{key}\"; expected gt, gte, lt or lte",
                            input.name
                        ),
                    });
                }
                let ok = bound.is_i64()
                    || (text
                        && bound
                            .as_str()
                            .is_some_and(|s| s.trim().parse::<i64>().is_ok()));
                if !ok {
                    return Err(bad("an integer timestamp in the range", bound));
                }
            }
            Value::Object(map)
        }
        (ty, other) => {
            let expected = match ty {
                ParamType::String => "a string",
                ParamType::Integer => "an integer",
                ParamType::Number => "a number",
                ParamType::Boolean => "a boolean",
                ParamType::Array => "an array",
                ParamType::Object => "an object",
                ParamType::RangeFilter => "an integer timestamp or {gt, gte, lt, lte}",
                ParamType::Any => unreachable!("any value is accepted"),
            };
            return Err(bad(expected, &other));
        }
    })
}

fn describe(value: &Value) -> String {
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    let mut text = value.to_string();
    if text.chars().count() > 60 {
        text = text.chars().take(57).chain("...".chars()).collect();
    }
    format!("{kind} ({text})")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, ty: &str, required: bool) -> InputSpec {
        input_spec(name, Some(ty), required, None, ProfileName::Stripe)
    }

    #[test]
    fn exact_mode_names_the_bad_argument() {
        let inputs = vec![
            spec("limit", "integer", false),
            spec("session", "string", true),
        ];
        let args = json!({"session": "vs_1", "limit": "ten"})
            .as_object()
            .unwrap()
            .clone();
        let err = validate_arguments(&inputs, args, Strictness::Exact).unwrap_err();
        assert_eq!(err.param, "limit");
        assert!(err.message.contains("expected an integer"), "{err}");
        let args = json!({"limit": 3}).as_object().unwrap().clone();
        let err = validate_arguments(&inputs, args, Strictness::Exact).unwrap_err();
        assert_eq!(err.message, "missing required argument \"session\"");
        let args = json!({"session": "x", "bogus": 1})
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(
            validate_arguments(&inputs, args, Strictness::Exact)
                .unwrap_err()
                .param,
            "bogus"
        );
    }

    #[test]
    fn a_long_bad_value_is_shortened_at_a_character_boundary() {
        let inputs = vec![spec("limit", "integer", false)];
        // The 57th byte of the value's JSON text falls inside an `é`.
        let value = format!("{}{}", "a".repeat(55), "\u{e9}".repeat(5));
        let args = json!({ "limit": value }).as_object().unwrap().clone();
        let err = validate_arguments(&inputs, args, Strictness::FromText).unwrap_err();
        assert_eq!(err.param, "limit");
        let shown = format!("\"{}{}...", "a".repeat(55), "\u{e9}");
        assert!(err.message.contains(&shown), "{err}");
    }

    #[test]
    fn text_mode_converts() {
        let inputs = vec![
            spec("limit", "integer", false),
            spec("expand", "array", false),
            spec("created", "string", false),
        ];
        let args = json!({"limit": "3", "expand": "data.x", "created": {"gte": "1"}})
            .as_object()
            .unwrap()
            .clone();
        let out = validate_arguments(&inputs, args, Strictness::FromText).unwrap();
        assert_eq!(
            Value::Object(out),
            json!({"limit": 3, "expand": ["data.x"], "created": {"gte": "1"}})
        );
    }

    #[test]
    fn stripe_created_is_a_range_filter() {
        let s = spec("created", "string", false);
        assert_eq!(s.ty, ParamType::RangeFilter);
        let schema = schema_for(&[s]);
        assert!(schema["properties"]["created"]["anyOf"].is_array());
        assert_eq!(schema["additionalProperties"], json!(false));
    }
}
