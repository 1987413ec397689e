//! Publishing: making what a reload built the thing requests see.
//!
//! ```text
//! MCP endpoints for new adapters, tool lists of changed ones --> store Published (snapshot +
//!   plugin versions, one atomic swap) --> tools/list_changed to MCP clients --> close the
//!   endpoints of removed adapters
//! ```
//!
//! An endpoint exists before the snapshot that routes to it, and clients hear of a change only
//! once a request they send would see it.

use std::sync::Arc;

use capgate_model::snapshot::Snapshot;
use capgate_plugin::PluginSet;

use super::Report;
use crate::front::{Published, Shared};
use crate::metrics::ReloadLabels;

/// Publishes a new snapshot with the plugin versions it runs.
pub fn publish(shared: &Shared, snapshot: Snapshot, plugins: PluginSet, report: &Report) {
    let changed = shared.mcp.sync(&snapshot);
    let snapshot = Arc::new(snapshot);
    shared.published.store(Arc::new(Published {
        snapshot: snapshot.clone(),
        plugins,
    }));
    shared.mcp.notify(&changed);
    shared.mcp.prune(&snapshot);
    tracing::info!(
        generation = report.generation,
        files_added = report.files_added.len(),
        files_changed = report.files_changed.len(),
        files_removed = report.files_removed.len(),
        routes_added = report.routes_added.len(),
        routes_removed = report.routes_removed.len(),
        tools_added = report.tools_added.len(),
        tools_removed = report.tools_removed.len(),
        mcp_clients_notified_for = changed.len(),
        took_ms = report.took.as_secs_f64() * 1000.0,
        "published"
    );
    tracing::debug!(
        files_added = ?report.files_added,
        files_changed = ?report.files_changed,
        files_removed = ?report.files_removed,
        routes_added = ?report.routes_added,
        routes_removed = ?report.routes_removed,
        tools_added = ?report.tools_added,
        tools_removed = ?report.tools_removed,
        "published changes"
    );
    count(shared, "published");
    shared.metrics.generation.set(report.generation as i64);
}

/// Publishes new plugin versions under the snapshot that is current (no capability changed).
pub fn publish_plugins(shared: &Shared, plugins: PluginSet) {
    let snapshot = shared.published.load().snapshot.clone();
    shared
        .published
        .store(Arc::new(Published { snapshot, plugins }));
    tracing::info!("plugins published");
}

/// Counts a reload by its result (`published`, `unchanged`).
pub fn count(shared: &Shared, result: &'static str) {
    shared
        .metrics
        .reloads
        .get_or_create(&ReloadLabels { result })
        .inc();
}
