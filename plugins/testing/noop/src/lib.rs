//! `noop`: changes nothing and asks for no bodies; the cost of a plugin hook itself.
//!
//! Built without `std` (`plugin_kit::bare`), so it imports nothing but the gateway's `log`;
//! `noop-std` is the same plugin with `std`.

#![no_std]

extern crate alloc;

wit_bindgen::generate!({ path: "../../../wit", world: "transform" });
plugin_kit::bare_plugin!();

use alloc::borrow::ToOwned;

struct Noop;

impl Guest for Noop {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "noop".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
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
