//! Small helpers shared by the example plugins: JSON bodies and the binding's config.
//!
//! Each plugin generates the `capgate:transform` bindings itself, with
//! `wit_bindgen::generate!({ path: "<relative path to>/wit", world: "transform" })`.
//!
//! The kit needs no `std`, so a plugin may go without it too: see `bare_plugin!` (in `bare`).

#![cfg_attr(not(test), no_std)]

extern crate alloc;

#[cfg(target_arch = "wasm32")]
pub mod bare;
pub mod redact;

use alloc::borrow::ToOwned;
use alloc::string::String;
use alloc::vec::Vec;
use serde_json::Value;

/// The binding's config (JSON text) as JSON; `{}` when it is empty or not JSON.
pub fn config(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::Object(Default::default()))
}

/// A body as JSON, when there is one and it parses.
pub fn json(body: &Option<Vec<u8>>) -> Option<Value> {
    body.as_deref()
        .and_then(|bytes| serde_json::from_slice(bytes).ok())
}

/// JSON as a body.
pub fn to_body(value: &Value) -> Option<Vec<u8>> {
    Some(serde_json::to_vec(value).expect("JSON values serialize"))
}

/// The strings of a config key that holds a list of strings.
pub fn strings(config: &Value, key: &str) -> Vec<String> {
    config
        .get(key)
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
