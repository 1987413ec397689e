//! Transform plugins: WebAssembly components (`wit/transform.wit`) run around the upstream call
//! of an operation, sandboxed, time- and memory-limited, hot-reloaded.
//!
//! ```text
//! plugins/*.wasm --load (on the reload thread; on-disk artifact cache)--> Component --> InstancePre
//!   --> Arc<Plugin> in an ArcSwap map (a broken file keeps the previous version)
//! per call: semaphore slot -> fresh Store (memory cap, epoch deadline; yields after a tick of CPU)
//!   -> instantiate from the pool -> on-request / on-response -> drop the store
//! ```
//!
//! Only this crate knows wasmtime. A plugin gets minimal WASI (streams and the CLI
//! interfaces: no filesystem, network, clocks or environment) and the `log` import; its
//! stderr is captured into the gateway's log. It sees requests before credentials are added.
//!
//! This file is the crate's map and holds what a call returns (`Failure`, `Refusal`,
//! `RequestOutcome`, `ResponseOutcome`), what it is given (`CallContext`) and `HostError`:
//! `host` has `Plugins` and what it hands out, `store` the per-call store and its limits,
//! `ticker` the epoch thread, `cache` the compiled-artifact cache, `convert` the WIT
//! conversions and `bindings` what `bindgen!` makes of `wit/transform.wit`.

#![warn(clippy::too_many_lines)]

use std::sync::Arc;

use http::StatusCode;

use capgate_model::exchange::{UpstreamRequest, UpstreamResponse};

mod bindings;
mod cache;
mod convert;
mod host;
mod store;
mod ticker;

pub use host::{Plugin, PluginSet, PluginState, PluginStatus, Plugins};

/// Why a call failed (not a refusal: the plugin itself went wrong).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    NotLoaded,
    Timeout,
    OutOfMemory,
    Trap(String),
    /// The plugin returned something the gateway cannot use (a bad method, header, body).
    Malformed(String),
}

impl Failure {
    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::NotLoaded => "not_loaded",
            Failure::Timeout => "timeout",
            Failure::OutOfMemory => "out_of_memory",
            Failure::Trap(_) => "trap",
            Failure::Malformed(_) => "malformed_result",
        }
    }
}

impl Failure {
    /// What a caller is told: the kind of failure, without the plugin's own words (a trap's
    /// backtrace, a parser's complaint), which go to the log.
    pub fn summary(&self) -> &'static str {
        match self {
            Failure::NotLoaded => "the plugin is not loaded",
            Failure::Timeout => "the plugin ran past its deadline",
            Failure::OutOfMemory => "the plugin ran out of memory",
            Failure::Trap(_) => "the plugin trapped",
            Failure::Malformed(_) => "the plugin returned an unusable result",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NotLoaded => f.write_str("the plugin is not loaded"),
            Failure::Timeout => f.write_str("the plugin ran past its deadline"),
            Failure::OutOfMemory => f.write_str("the plugin ran out of memory"),
            Failure::Trap(detail) => write!(f, "the plugin trapped: {detail}"),
            Failure::Malformed(detail) => {
                write!(f, "the plugin returned an unusable result: {detail}")
            }
        }
    }
}

/// A plugin's refusal: what the caller gets, in Stripe's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

/// The outcome of a request hook.
#[derive(Debug)]
pub enum RequestOutcome {
    /// The plugin does not handle requests; it was not run.
    Skipped(UpstreamRequest),
    Forward(UpstreamRequest),
    Respond(UpstreamResponse),
    Refused(Refusal),
}

/// The outcome of a response hook.
#[derive(Debug)]
pub enum ResponseOutcome {
    /// The plugin does not handle responses; it was not run.
    Skipped(UpstreamResponse),
    Forward(UpstreamResponse),
    Refused(Refusal),
}

/// Where a call happens, for the plugin's `context`.
#[derive(Debug, Clone)]
pub struct CallContext<'a> {
    pub capability: &'a str,
    pub operation: &'a str,
    pub request_id: Arc<str>,
}

/// A plugin host error at startup.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the plugin host: {0}")]
pub struct HostError(pub(crate) String);
