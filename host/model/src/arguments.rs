//! Arguments on the request path: the values a REST caller or an MCP client gave an operation,
//! checked against the operation's compiled [`InputSpec`]s (the same specs its JSON Schema came
//! from) and converted where the surface sends text.
//!
//! Nothing here is compile-time work: compilation made the specs; this checks each request.

use serde_json::{Map, Value};

use crate::snapshot::{InputSpec, ParamType};

/// An argument that does not fit its input spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ArgumentError {
    /// The argument's name.
    pub param: String,
    pub problem: Problem,
    pub message: String,
}

/// What is wrong with an argument: callers pick their error codes by it (Stripe's
/// `parameter_missing`, `parameter_unknown`, `parameter_invalid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// A required argument is absent (or null).
    Missing,
    /// An argument no input declares (exact checking only).
    Unknown,
    /// A value of the wrong type or shape.
    Invalid,
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
            problem: Problem::Unknown,
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
                    problem: Problem::Missing,
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
        problem: Problem::Invalid,
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
                        problem: Problem::Invalid,
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
    use serde_json::json;

    use super::*;
    use crate::compile::{input_spec, schema_for};
    use crate::config::ProfileName;

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
