//! `noop-std`: the `noop` plugin built with Rust's `std`, which imports WASI: what a plugin hook
//! costs when the plugin links WASI without using it (the benchmark compares the two).

wit_bindgen::generate!({ path: "../../../wit", world: "transform" });

include!("../../noop/src/guest.rs");
