//! capgate: a gateway that serves Naftiko capabilities as REST routes and MCP tools.
//!
//! This crate is the runtime; what it serves comes compiled from `capgate-model`, and transform
//! plugins run in `capgate-plugin`. A request, and the module for each stage:
//!
//! ```text
//! server (listeners) --> front (pin the Snapshot, route by path) --> rest / mcp
//!   --> invoke --> upstream (prepare, encode, client) --> output mapping --> http (responses)
//! reload (watch --> catalog --> publish) builds and publishes the Snapshot; gateway ties it all
//! together; admin reports on it.
//! ```
//!
//! See `ARCHITECTURE.md` at the repository root for the code map and the invariants.

#![warn(clippy::too_many_lines)]

pub mod admin;
pub mod auth;
pub mod error;
pub mod front;
pub mod gateway;
pub mod invoke;
pub mod mcp;
pub mod metrics;
pub mod reload;
pub mod response;
pub mod rest;
pub mod server;
pub mod upstream;

pub use gateway::{Gateway, serve};
