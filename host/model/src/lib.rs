//! capgate's pure layers: from capability files to the [`snapshot::Snapshot`] the gateway
//! serves, and everything that describes it.
//!
//! ```text
//! specs/*.yaml --spec::load--> LoadedFile --compile::compile_file--> CompiledFile
//!   --compile::assemble--> Snapshot (+ diagnostics)
//! ```
//!
//! Nothing here runs a request, opens a socket or starts a thread: this crate has no async
//! runtime, no HTTP stack, no MCP library and no WebAssembly engine, so it builds and tests in
//! seconds, and `cargo tree -p capgate-model` shows it. The only I/O is `spec::load` (reading the
//! files a capability names) and `config` (reading the gateway's own file), both through
//! [`read`], which reads only regular files, bounded in size.

#![warn(clippy::too_many_lines)]

pub mod arguments;
pub mod calendar;
pub mod compile;
pub mod config;
pub mod consumers;
pub mod diag;
pub mod exchange;
pub mod form;
pub mod glob;
pub mod jsonpath;
pub mod openapi;
pub mod read;
pub mod route;
pub mod secret;
pub mod snapshot;
pub mod spec;
pub mod template;
pub mod validate;
