//! A small validator for the OpenAPI 3.0 subset `identity-openapi.json` uses, so the tests can
//! hold every object the stand-in returns against Stripe's own description.
//!
//! Supported: `$ref` to `#/components/schemas/...`, `type`, `properties`, `required`, `enum`,
//! `nullable`, `anyOf`, `items`, `additionalProperties`, `maxLength` and `^prefix` patterns.
//! It is strict about undeclared properties (an object without `additionalProperties` may hold
//! only its declared ones), since an extra field is a stand-in bug. `null` is allowed wherever
//! `nullable: true`, also for enums that do not list it, as CONVENTIONS.md says Stripe means.

use serde_json::Value;

pub struct Spec {
    document: Value,
}

impl Spec {
    pub fn load() -> Spec {
        let text = include_str!("../../../tests/data/stripe/identity-openapi.json");
        Spec {
            document: serde_json::from_str(text).expect("identity-openapi.json is JSON"),
        }
    }

    pub fn document(&self) -> &Value {
        &self.document
    }

    pub fn component(&self, name: &str) -> &Value {
        &self.document["components"]["schemas"][name]
    }

    /// The schema of a 200 response of one operation.
    pub fn response(&self, path: &str, method: &str) -> &Value {
        &self.document["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
    }

    /// Every violation of `schema` by `value`, each naming where it is.
    pub fn violations(&self, schema: &Value, value: &Value) -> Vec<String> {
        let mut out = Vec::new();
        self.walk(schema, value, "$", &mut out);
        out
    }

    fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(reference) => {
                let name = reference
                    .strip_prefix("#/components/schemas/")
                    .unwrap_or(reference);
                let target = self.component(name);
                assert!(!target.is_null(), "unresolved $ref {reference}");
                self.resolve(target)
            }
            None => schema,
        }
    }

    fn walk(&self, schema: &Value, value: &Value, at: &str, out: &mut Vec<String>) {
        let schema = self.resolve(schema);
        if value.is_null() {
            if schema.get("nullable").and_then(Value::as_bool) != Some(true) {
                out.push(format!("{at}: null where the schema is not nullable"));
            }
            return;
        }
        if let Some(branches) = schema.get("anyOf").and_then(Value::as_array) {
            let mut reasons = Vec::new();
            for branch in branches {
                let found = self.violations_at(branch, value, at);
                if found.is_empty() {
                    return;
                }
                reasons.extend(found);
            }
            out.push(format!(
                "{at}: matches no anyOf branch ({})",
                reasons.join("; ")
            ));
            return;
        }
        if let Some(kind) = schema.get("type").and_then(Value::as_str) {
            let ok = match kind {
                "string" => value.is_string(),
                "integer" => value.is_i64() || value.is_u64(),
                "number" => value.is_number(),
                "boolean" => value.is_boolean(),
                "object" => value.is_object(),
                "array" => value.is_array(),
                _ => true,
            };
            if !ok {
                out.push(format!("{at}: expected {kind}, found {value}"));
                return;
            }
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
            && !allowed.contains(value)
        {
            out.push(format!(
                "{at}: {value} is not one of {}",
                Value::Array(allowed.clone())
            ));
        }
        if let (Some(max), Some(text)) = (
            schema.get("maxLength").and_then(Value::as_u64),
            value.as_str(),
        ) && text.chars().count() as u64 > max
        {
            out.push(format!("{at}: longer than {max} characters"));
        }
        if let (Some(pattern), Some(text)) = (
            schema.get("pattern").and_then(Value::as_str),
            value.as_str(),
        ) && let Some(prefix) = pattern.strip_prefix('^')
            && !prefix.contains(['.', '*', '+', '?', '(', '[', '$', '\\', '|'])
            && !text.starts_with(prefix)
        {
            out.push(format!("{at}: {text:?} does not match {pattern}"));
        }
        if let Some(items) = value.as_array()
            && let Some(item_schema) = schema.get("items")
        {
            for (i, item) in items.iter().enumerate() {
                self.walk(item_schema, item, &format!("{at}[{i}]"), out);
            }
        }
        if let Some(object) = value.as_object() {
            let properties = schema.get("properties").and_then(Value::as_object);
            for name in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !object.contains_key(name) {
                    out.push(format!("{at}: missing required property {name}"));
                }
            }
            for (name, field) in object {
                let field_at = format!("{at}.{name}");
                match properties.and_then(|p| p.get(name)) {
                    Some(field_schema) => self.walk(field_schema, field, &field_at, out),
                    None => match schema.get("additionalProperties") {
                        Some(Value::Bool(true)) => {}
                        Some(extra) if extra.is_object() => self.walk(extra, field, &field_at, out),
                        _ => out.push(format!("{field_at}: property not in the schema")),
                    },
                }
            }
        }
    }

    fn violations_at(&self, schema: &Value, value: &Value, at: &str) -> Vec<String> {
        let mut out = Vec::new();
        self.walk(schema, value, at, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_validator_catches_what_it_claims_to() {
        let spec = Spec::load();
        let session = spec.component("identity.verification_session");
        let bad = json!({
            "id": "vs_1", "object": "identity.verification_session", "created": "yesterday",
            "livemode": false, "metadata": {"a": 1}, "status": "done", "type": "document",
            "related_person": null, "extra": true, "last_error": {"code": null, "reason": null}
        });
        let found = spec.violations(session, &bad);
        for needle in [
            "$.created: expected integer",
            "$.metadata.a: expected string",
            "$.status: \"done\" is not one of",
            "$.related_person: null where the schema is not nullable",
            "$.extra: property not in the schema",
        ] {
            assert!(
                found.iter().any(|v| v.starts_with(needle)),
                "{needle} not in {found:#?}"
            );
        }
        assert_eq!(found.len(), 5, "{found:#?}");
        let missing = spec.violations(session, &json!({}));
        assert_eq!(missing.len(), 7, "{missing:#?}");
    }
}
