//! Reloading: the catalog of capability files (`catalog`), the watcher that says when the folder,
//! a file a capability reads, or the gateway config changed (`watch`), the one thread reloads run
//! on (`thread`), and publishing what a reload built (`publish`).
//!
//! ```text
//! file events --watch (debounced)--> Gateway::reload --on the reload thread: Plugins::refresh,
//!   Catalog::refresh--> (Snapshot, Report) --publish: MCP endpoints, ArcSwap<Published>,
//!   list_changed--> listeners --> Report to subscribers
//! ```

mod catalog;
pub mod publish;
mod thread;
mod watch;

pub use catalog::{Catalog, FileState, FileStatus, Report};
pub use thread::{ReloadThread, set_memory_release};
pub use watch::Watcher;
