//! Reloading: the catalog of capability files (`catalog`) and the watcher that tells the gateway
//! when the folder, a file a capability reads, or the gateway config changed (`watch`).
//!
//! ```text
//! file events --watch (debounced)--> Gateway::reload --Catalog::refresh (blocking pool)-->
//!   (Snapshot, Report) --publish: MCP endpoints, ArcSwap, listeners--> Report to subscribers
//! ```

mod catalog;
mod watch;

pub use catalog::{Catalog, FileState, FileStatus, Report, same_tools};
pub use watch::Watcher;
