//! `require-metadata`: a create or update must carry the `metadata` keys the binding's config
//! requires (`"required": ["order_id"]`), or it is refused with a 400 in Stripe's shape; keys
//! of `"defaults": {"source": "capgate"}` are added when absent.

wit_bindgen::generate!({ path: "../../wit", world: "transform" });

use capgate::transform::host::log;
use capgate::transform::types::Level;
use serde_json::Value;

struct RequireMetadata;

impl Guest for RequireMetadata {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "require-metadata".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            handles_requests: true,
            handles_responses: false,
            needs_request_body: true,
            needs_response_body: false,
        }
    }

    fn on_request(ctx: Context, mut req: Request) -> Result<RequestAction, PluginError> {
        if req.method != "POST" {
            return Ok(RequestAction::Forward(req));
        }
        let config = plugin_kit::config(&ctx.config);
        let mut body =
            plugin_kit::json(&req.body).unwrap_or_else(|| Value::Object(Default::default()));
        let Some(object) = body.as_object_mut() else {
            return Err(refuse(
                400,
                "parameter_invalid",
                "the request body must be an object",
            ));
        };
        let metadata = object
            .entry("metadata")
            .or_insert_with(|| Value::Object(Default::default()));
        let Some(metadata) = metadata.as_object_mut() else {
            return Err(refuse(
                400,
                "parameter_invalid",
                "metadata must be an object of keys and values",
            ));
        };
        for key in plugin_kit::strings(&config, "required") {
            let present = metadata
                .get(&key)
                .and_then(Value::as_str)
                .is_some_and(|v| !v.is_empty());
            if !present {
                log(
                    Level::Info,
                    &format!("refused {}: metadata[{key}] is missing", ctx.operation),
                );
                return Err(refuse(
                    400,
                    "parameter_missing",
                    format!("Missing required param: metadata[{key}]."),
                ));
            }
        }
        if let Some(defaults) = config.get("defaults").and_then(Value::as_object) {
            for (key, value) in defaults {
                metadata.entry(key.clone()).or_insert_with(|| value.clone());
            }
        }
        req.body = plugin_kit::to_body(&body);
        Ok(RequestAction::Forward(req))
    }

    fn on_response(_ctx: Context, resp: Response) -> Result<Response, PluginError> {
        Ok(resp)
    }
}

export!(RequireMetadata);

/// A refusal the caller sees in Stripe's shape.
fn refuse(status: u16, code: &str, message: impl Into<String>) -> PluginError {
    PluginError {
        status,
        code: code.to_owned(),
        message: message.into(),
    }
}
