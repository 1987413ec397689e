//! `spin`: never returns from `on-request` (a plugin stuck in a loop), to prove deadlines work.

wit_bindgen::generate!({ path: "../../../wit", world: "transform" });

struct Spin;

impl Guest for Spin {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "spin".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            handles_requests: true,
            handles_responses: false,
            needs_request_body: false,
            needs_response_body: false,
        }
    }

    fn on_request(_ctx: Context, req: Request) -> Result<RequestAction, PluginError> {
        let mut counter: u64 = 0;
        loop {
            counter = std::hint::black_box(counter.wrapping_add(1));
            if counter == u64::MAX {
                return Ok(RequestAction::Forward(req));
            }
        }
    }

    fn on_response(_ctx: Context, resp: Response) -> Result<Response, PluginError> {
        Ok(resp)
    }
}

export!(Spin);
