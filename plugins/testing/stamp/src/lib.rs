//! `stamp`: appends `x-capgate-stamp: <config.value>` to the upstream request and to the
//! response, so that chains can be seen in order, `x-capgate-stamp-saw` with the names of
//! the request headers it was shown, and `x-capgate-stamp-calls` with how many calls this
//! instance has served (1 in a fresh instance; more when its binding says `instances: reused`).

use std::sync::atomic::{AtomicU32, Ordering};

wit_bindgen::generate!({ path: "../../../wit", world: "transform" });

struct Stamp;

static CALLS: AtomicU32 = AtomicU32::new(0);

fn calls() -> (String, String) {
    let n = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
    ("x-capgate-stamp-calls".into(), n.to_string())
}

fn value(ctx: &Context) -> String {
    plugin_kit::config(&ctx.config)
        .get("value")
        .and_then(|v| v.as_str())
        .unwrap_or("stamp")
        .to_owned()
}

impl Guest for Stamp {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "stamp".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            handles_requests: true,
            handles_responses: true,
            needs_request_body: false,
            needs_response_body: false,
        }
    }

    fn on_request(ctx: Context, mut req: Request) -> Result<RequestAction, PluginError> {
        // What the plugin was shown, so tests can check it never sees credentials.
        let seen: Vec<String> = req.headers.iter().map(|(name, _)| name.clone()).collect();
        req.headers
            .push(("x-capgate-stamp-saw".into(), seen.join(",")));
        req.headers.push(("x-capgate-stamp".into(), value(&ctx)));
        req.headers.push(calls());
        Ok(RequestAction::Forward(req))
    }

    fn on_response(ctx: Context, mut resp: Response) -> Result<Response, PluginError> {
        resp.headers.push(("x-capgate-stamp".into(), value(&ctx)));
        resp.headers.push(calls());
        Ok(resp)
    }
}

export!(Stamp);
