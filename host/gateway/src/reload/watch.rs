//! Watching the files that make up what is served, with `notify` and a debouncer.
//!
//! The specs folder is watched recursively; files read from elsewhere (imports, bind files, the
//! gateway config) through their directories. Every debounced batch of events becomes one
//! wake-up on a channel: the catalog then decides, by content, what changed. Reacting to the
//! directory rather than to individual files is what makes editor saves (write to a temporary
//! file, rename), deletions, `git checkout`s and Kubernetes ConfigMap `..data` swaps all work.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use tokio::sync::mpsc;

/// Whether an event can change what a file holds. Reads (which the gateway itself makes when it
/// reloads) are not changes, or every reload would trigger the next.
fn changes_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// A running watcher; dropping it stops watching.
pub struct Watcher {
    debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
    roots: BTreeSet<PathBuf>,
    others: BTreeSet<PathBuf>,
}

impl Watcher {
    /// Starts a watcher that sends on `wake` after each batch of events, `debounce` after the
    /// last event of the batch.
    pub fn start(debounce: Duration, wake: mpsc::Sender<()>) -> notify::Result<Watcher> {
        let debouncer = new_debouncer(debounce, None, move |result: DebounceEventResult| {
            match result {
                Ok(events) if !events.iter().any(|e| changes_content(&e.kind)) => {}
                Ok(events) => {
                    tracing::debug!(events = events.len(), kinds = ?events.iter().map(|e| (e.kind, e.paths.clone())).collect::<Vec<_>>(), "file changes");
                    // A full channel already holds a wake-up: nothing is lost.
                    let _ = wake.try_send(());
                }
                Err(errors) => {
                    for error in errors {
                        tracing::warn!(%error, "file watching error; reloading to be safe");
                    }
                    let _ = wake.try_send(());
                }
            }
        })?;
        Ok(Watcher {
            debouncer,
            roots: BTreeSet::new(),
            others: BTreeSet::new(),
        })
    }

    /// Watches every folder of `roots` recursively, and the directories of `files` that lie
    /// outside them.
    pub fn watch(&mut self, roots: &[PathBuf], files: impl IntoIterator<Item = PathBuf>) {
        let roots: BTreeSet<PathBuf> = roots.iter().filter(|r| r.is_dir()).cloned().collect();
        for gone in self.roots.difference(&roots) {
            let _ = self.debouncer.unwatch(gone);
        }
        for root in roots.difference(&self.roots) {
            if let Err(error) = self.debouncer.watch(root, RecursiveMode::Recursive) {
                tracing::error!(dir = %root.display(), %error, "cannot watch a folder; its changes need a restart");
            }
        }
        let wanted: BTreeSet<PathBuf> = files
            .into_iter()
            .filter(|f| !roots.iter().any(|root| f.starts_with(root)))
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .filter(|dir| dir.is_dir())
            .collect();
        for gone in self.others.difference(&wanted) {
            let _ = self.debouncer.unwatch(gone);
        }
        for dir in wanted.difference(&self.others) {
            if let Err(error) = self.debouncer.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), %error, "cannot watch a directory a capability reads from");
            }
        }
        self.roots = roots;
        self.others = wanted;
    }
}
