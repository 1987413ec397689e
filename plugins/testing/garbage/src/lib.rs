//! `garbage`: answers `on-request` with a request no gateway can send (a method that is not a
//! token, a path without a leading slash, a header name with spaces, a body that is not JSON).

wit_bindgen::generate!({ path: "../../../wit", world: "transform" });

struct Garbage;

impl Guest for Garbage {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "garbage".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            handles_requests: true,
            handles_responses: false,
            needs_request_body: true,
            needs_response_body: false,
        }
    }

    fn on_request(_ctx: Context, mut req: Request) -> Result<RequestAction, PluginError> {
        req.method = "NOT A METHOD".into();
        req.path = "no-leading-slash".into();
        req.headers.push(("bad header".into(), "x".into()));
        req.body = Some(b"{not json".to_vec());
        Ok(RequestAction::Forward(req))
    }

    fn on_response(_ctx: Context, resp: Response) -> Result<Response, PluginError> {
        Ok(resp)
    }
}

export!(Garbage);
