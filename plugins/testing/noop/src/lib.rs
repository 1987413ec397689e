//! `noop`: changes nothing and asks for no bodies; the cost of a plugin hook itself.
//!
//! Built without `std` (`plugin_kit::bare`), so it imports nothing but the gateway's `log`;
//! `noop-std` is the same plugin with `std`.

#![no_std]

extern crate alloc;

wit_bindgen::generate!({ path: "../../../wit", world: "transform" });
plugin_kit::bare_plugin!();

include!("guest.rs");
