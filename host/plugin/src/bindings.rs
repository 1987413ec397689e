//! The host side of `wit/transform.wit`, in a module of its own: the WIT package is named
//! `capgate`, like this crate. Only what wasmtime's `bindgen!` generates lives here; what the
//! host implements of it (`log`, WASI) is in `store`, and the linking in `host`.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "transform",
    exports: { default: async },
    // So the host can tell a request or response a plugin handed back unchanged (`convert`).
    additional_derives: [PartialEq],
});
