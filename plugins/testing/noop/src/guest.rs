// The no-op plugin itself, shared by `noop` (without `std`) and `noop-std`: each includes it at
// its crate root, after its bindings.

struct Noop;

impl Guest for Noop {
    fn info() -> PluginInfo {
        PluginInfo {
            name: env!("CARGO_PKG_NAME").into(),
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
