//! `oom`: allocates until memory runs out, to prove the memory cap holds.

wit_bindgen::generate!({ path: "../../../wit", world: "transform" });

struct Oom;

impl Guest for Oom {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "oom".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            handles_requests: true,
            handles_responses: false,
            needs_request_body: false,
            needs_response_body: false,
        }
    }

    fn on_request(_ctx: Context, req: Request) -> Result<RequestAction, PluginError> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(vec![1u8; 1024 * 1024]);
            if std::hint::black_box(hoard.len()) == usize::MAX {
                return Ok(RequestAction::Forward(req));
            }
        }
    }

    fn on_response(_ctx: Context, resp: Response) -> Result<Response, PluginError> {
        Ok(resp)
    }
}

export!(Oom);
