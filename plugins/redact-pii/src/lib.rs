//! `redact-pii`: masks the personal fields of Identity VerificationSession responses.
//!
//! Masked by default: everything under `verified_outputs` and `provided_details`. The binding's
//! config adds fields (`"fields": ["client_reference_id", "metadata.email"]`) and lets some
//! through (`"allow": ["verified_outputs.first_name"]`). Lists (`{"object": "list", "data":
//! [...]}`) are masked element by element. Strings become `"[redacted]"`, other scalars `null`.
//! The response carries `capgate-redacted: <count>`.

wit_bindgen::generate!({ path: "../../wit", world: "transform" });

use serde_json::Value;

struct RedactPii;

const ALWAYS: [&str; 2] = ["verified_outputs", "provided_details"];

impl Guest for RedactPii {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "redact-pii".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            handles_requests: false,
            handles_responses: true,
            needs_request_body: false,
            needs_response_body: true,
        }
    }

    fn on_request(_ctx: Context, req: Request) -> Result<RequestAction, PluginError> {
        Ok(RequestAction::Forward(req))
    }

    fn on_response(ctx: Context, mut resp: Response) -> Result<Response, PluginError> {
        if resp.status >= 400 {
            return Ok(resp);
        }
        let Some(mut body) = plugin_kit::json(&resp.body) else {
            return Ok(resp);
        };
        let config = plugin_kit::config(&ctx.config);
        let mut fields: Vec<String> = ALWAYS.iter().map(|s| s.to_string()).collect();
        fields.extend(plugin_kit::strings(&config, "fields"));
        let allow = plugin_kit::strings(&config, "allow");
        let is_list = body.get("object").and_then(Value::as_str) == Some("list");
        let mut count = 0;
        match body.get_mut("data").and_then(Value::as_array_mut) {
            Some(items) if is_list => {
                for item in items {
                    count += redact_object(item, &fields, &allow);
                }
            }
            _ => count += redact_object(&mut body, &fields, &allow),
        }
        resp.body = plugin_kit::to_body(&body);
        resp.headers.retain(|(name, _)| name != "content-length");
        resp.headers
            .push(("capgate-redacted".into(), count.to_string()));
        Ok(resp)
    }
}

/// Masks each dotted `field` of `object` except what `allow` names; returns how many values
/// were masked.
fn redact_object(object: &mut Value, fields: &[String], allow: &[String]) -> usize {
    fields
        .iter()
        .map(|field| {
            let mut path: Vec<&str> = field.split('.').collect();
            let last = path.pop().expect("split yields at least one part");
            let mut node = &mut *object;
            for part in &path {
                match node.get_mut(*part) {
                    Some(next) => node = next,
                    None => return 0,
                }
            }
            match node.get_mut(last) {
                Some(value) => mask(value, field, allow),
                None => 0,
            }
        })
        .sum()
}

fn mask(value: &mut Value, path: &str, allow: &[String]) -> usize {
    if allow.iter().any(|a| a == path) {
        return 0;
    }
    match value {
        Value::Null => 0,
        Value::Object(map) => map
            .iter_mut()
            .map(|(k, v)| mask(v, &format!("{path}.{k}"), allow))
            .sum(),
        Value::Array(items) => items.iter_mut().map(|v| mask(v, path, allow)).sum(),
        Value::String(s) if s == "[redacted]" => 0,
        Value::String(_) => {
            *value = Value::String("[redacted]".into());
            1
        }
        _ => {
            *value = Value::Null;
            1
        }
    }
}

export!(RedactPii);
