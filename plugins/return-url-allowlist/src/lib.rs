//! `return-url-allowlist`: a session whose `return_url` points to a host the binding does not
//! allow (`"hosts": ["example.com", "*.example.com"]`) is answered by the plugin itself, with a
//! 400 in Stripe's shape, without calling the upstream.

wit_bindgen::generate!({ path: "../../wit", world: "transform" });

use serde_json::{Value, json};

struct ReturnUrlAllowlist;

impl Guest for ReturnUrlAllowlist {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "return-url-allowlist".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            handles_requests: true,
            handles_responses: false,
            needs_request_body: true,
            needs_response_body: false,
        }
    }

    fn on_request(ctx: Context, req: Request) -> Result<RequestAction, PluginError> {
        let Some(url) = plugin_kit::json(&req.body).and_then(|body| {
            body.get("return_url")
                .and_then(Value::as_str)
                .map(str::to_owned)
        }) else {
            return Ok(RequestAction::Forward(req));
        };
        let allowed = plugin_kit::strings(&plugin_kit::config(&ctx.config), "hosts");
        match host_of(&url) {
            Some(host) if allowed.iter().any(|pattern| matches(pattern, &host)) => {
                Ok(RequestAction::Forward(req))
            }
            host => Ok(RequestAction::Respond(json_response(
                400,
                &json!({"error": {
                    "type": "invalid_request_error",
                    "code": "url_invalid",
                    "param": "return_url",
                    "message": format!(
                        "return_url host {} is not allowed; allowed: {}",
                        host.as_deref().unwrap_or("(none)"),
                        allowed.join(", ")
                    ),
                }}),
            ))),
        }
    }

    fn on_response(_ctx: Context, resp: Response) -> Result<Response, PluginError> {
        Ok(resp)
    }
}

/// The host of an http(s) URL, lower-cased, without port or credentials.
fn host_of(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit('@').next()?;
    let host = host.split(':').next()?;
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

fn matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len()
                && host.ends_with(suffix)
                && host[..host.len() - suffix.len()].ends_with('.')
        }
        None => pattern.eq_ignore_ascii_case(host),
    }
}

export!(ReturnUrlAllowlist);

fn json_response(status: u16, value: &Value) -> Response {
    Response {
        status,
        headers: vec![("content-type".to_owned(), "application/json".to_owned())],
        body: plugin_kit::to_body(value),
    }
}
