//! capgate: a gateway that serves Naftiko capabilities as REST routes and MCP tools.
//!
//! The data flow, and the module for each stage:
//!
//! ```text
//! specs/*.yaml --spec::load--> LoadedFile --compile--> Snapshot (+ diagnostics)
//!   --reload::publish--> Arc<Snapshot> --> rest / mcp --> invoke --> upstream --> output mapping
//! ```
//!
//! See `ARCHITECTURE.md` at the repository root for the code map and the invariants.

pub mod admin;
pub mod auth;
pub mod compile;
pub mod config;
pub mod demo;
pub mod diag;
pub mod error;
pub mod form;
pub mod gateway;
pub mod invoke;
pub mod jsonpath;
pub mod mcp;
pub mod metrics;
pub mod plugin;
pub mod reload;
pub mod rest;
pub mod route;
pub mod scaffold;
pub mod secret;
pub mod server;
pub mod snapshot;
pub mod spec;
pub mod stripe_sim;
pub mod template;
pub mod upstream;
pub mod validate;

pub use gateway::{Gateway, serve};
