//! `noop-std`: the `noop` plugin built with Rust's `std`, which imports WASI: what a plugin hook
//! costs when the plugin links WASI without using it (the benchmark compares the two).

wit_bindgen::generate!({ path: "../../../wit", world: "transform" });

struct Noop;

impl Guest for Noop {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "noop-std".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            handles_requests: true,
            handles_responses: true,
            needs_request_body: false,
            needs_response_body: false,
        }
    }

    fn on_request(_ctx: Context, req: Request) -> Result<RequestAction, PluginError> {
        Ok(RequestAction::Forward(req))
    }

    fn on_response(_ctx: Context, resp: Response) -> Result<Response, PluginError> {
        Ok(resp)
    }
}

export!(Noop);
