//! `redact-pii`: masks the personal fields of Identity VerificationSession responses.
//!
//! Masked by default: everything under `verified_outputs` and `provided_details`. The binding's
//! config adds fields (`"fields": ["client_reference_id", "metadata.email"]`) and lets some
//! through (`"allow": ["verified_outputs.first_name"]`). Lists (`{"object": "list", "data":
//! [...]}`) are masked element by element. Strings become `"[redacted]"`, other scalars `null`.
//! The response carries `capgate-redacted: <count>`. A successful response it cannot read (not
//! JSON, or nested deeper than 128 levels) is refused with a 502 rather than let through unmasked.
//!
//! It runs without `std` (see `plugin_kit::bare`): no WASI imports, so its per-call instance is
//! cheaper.

#![no_std]

extern crate alloc;

wit_bindgen::generate!({ path: "../../wit", world: "transform" });
plugin_kit::bare_plugin!();

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use plugin_kit::redact::Redaction;

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
        let config = plugin_kit::config(&ctx.config);
        let mut fields: Vec<String> = ALWAYS.iter().map(|s| s.to_string()).collect();
        fields.extend(plugin_kit::strings(&config, "fields"));
        let allow = plugin_kit::strings(&config, "allow");
        // One pass over the body, rewriting only the masked values: no document is built.
        let redaction = Redaction::new(&fields, &allow);
        let Some(body) = resp.body.as_deref().filter(|b| !b.is_empty()) else {
            return Ok(resp);
        };
        // A body the masker cannot read may still hold personal data: it does not go through.
        let Some((body, count)) = redaction.apply(body) else {
            return Err(PluginError {
                status: 502,
                code: "response_unreadable".into(),
                message: "redact-pii could not read the response to mask it (not a JSON document, \
                          or nested deeper than 128 levels)"
                    .into(),
            });
        };
        resp.body = Some(body);
        resp.headers.retain(|(name, _)| name != "content-length");
        resp.headers
            .push(("capgate-redacted".into(), count.to_string()));
        Ok(resp)
    }
}

export!(RedactPii);
