//! `panic`: panics in `on-request`, to prove a trap fails only its request.

wit_bindgen::generate!({ path: "../../../wit", world: "transform" });

struct Panic;

impl Guest for Panic {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "panic".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            handles_requests: true,
            handles_responses: false,
            needs_request_body: false,
            needs_response_body: false,
        }
    }

    fn on_request(ctx: Context, _req: Request) -> Result<RequestAction, PluginError> {
        panic!("deliberate panic in {}", ctx.operation);
    }

    fn on_response(_ctx: Context, resp: Response) -> Result<Response, PluginError> {
        Ok(resp)
    }
}

export!(Panic);
