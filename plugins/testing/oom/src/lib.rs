//! `oom`: allocates until memory runs out, to prove the memory cap holds.
//!
//! Built without `std` (`plugin_kit::bare`): its allocation failure traps without the message
//! Rust's `std` prints, so the gateway has to tell from the refused memory growth.

#![no_std]

extern crate alloc;

wit_bindgen::generate!({ path: "../../../wit", world: "transform" });
plugin_kit::bare_plugin!();

use alloc::borrow::ToOwned;
use alloc::vec;
use alloc::vec::Vec;

struct Oom;

impl Guest for Oom {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "oom".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
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
            if core::hint::black_box(hoard.len()) == usize::MAX {
                return Ok(RequestAction::Forward(req));
            }
        }
    }

    fn on_response(_ctx: Context, resp: Response) -> Result<Response, PluginError> {
        Ok(resp)
    }
}

export!(Oom);
