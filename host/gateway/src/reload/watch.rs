//! Watching the files that make up what is served, with `notify` and a debouncer.
//!
//! The specs folder is watched recursively; files read from elsewhere (imports, bind files, the
//! gateway config) through their directories. Every debounced batch of events becomes one
//! wake-up on a channel: the catalog then decides, by content, what changed. Reacting to the
//! directory rather than to individual files is what makes editor saves (write to a temporary
//! file, rename), deletions, `git checkout`s and Kubernetes ConfigMap `..data` swaps all work,
//! and a folder that is replaced or comes back is watched again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
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
///
/// A watched folder can disappear and come back (`mv` away and back, `rm -rf` and recreate, as
/// some deploy tools do); the kernel's watch dies with it. So each folder is watched together
/// with the identity (device, inode) it had when armed, and its parent is watched too (only the
/// folder's own entry in it counts as a change): [`Watcher::stale`] says when a folder is gone
/// or is another folder now, and [`Watcher::watch`] re-arms it.
pub struct Watcher {
    debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
    /// Each folder watched recursively, with its identity when armed (`None`: absent then).
    roots: BTreeMap<PathBuf, Option<Identity>>,
    /// Parents of the roots, watched for the roots' own entries; shared with the event filter.
    parents: Arc<Mutex<BTreeMap<PathBuf, BTreeSet<PathBuf>>>>,
    others: BTreeSet<PathBuf>,
}

/// A folder's device and inode.
type Identity = (u64, u64);

fn identity(path: &Path) -> Option<Identity> {
    let meta = std::fs::metadata(path).ok().filter(|m| m.is_dir())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some((meta.dev(), meta.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        Some((0, 0))
    }
}

/// Whether an event's paths touch something watched for its own sake: not only siblings of a
/// root in its parent.
fn relevant(paths: &[PathBuf], parents: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> bool {
    paths.is_empty()
        || paths.iter().any(
            |path| match path.parent().and_then(|parent| parents.get(parent)) {
                Some(roots) => roots.contains(path),
                None => true,
            },
        )
}

impl Watcher {
    /// Starts a watcher that sends on `wake` after each batch of events, `debounce` after the
    /// last event of the batch.
    pub fn start(debounce: Duration, wake: mpsc::Sender<()>) -> notify::Result<Watcher> {
        let parents: Arc<Mutex<BTreeMap<PathBuf, BTreeSet<PathBuf>>>> = Arc::default();
        let filter = parents.clone();
        let debouncer = new_debouncer(debounce, None, move |result: DebounceEventResult| {
            match result {
                Ok(events) => {
                    let parents = filter.lock().expect("not poisoned");
                    let changes = events
                        .iter()
                        .filter(|e| changes_content(&e.kind) && relevant(&e.paths, &parents))
                        .count();
                    drop(parents);
                    if changes > 0 {
                        tracing::debug!(events = changes, "file changes");
                        // A full channel already holds a wake-up: nothing is lost.
                        let _ = wake.try_send(());
                    }
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
            roots: BTreeMap::new(),
            parents,
            others: BTreeSet::new(),
        })
    }

    /// Whether a watched folder disappeared, came back, or was replaced since it was armed.
    pub fn stale(&self) -> bool {
        self.roots
            .iter()
            .any(|(root, armed)| identity(root) != *armed)
    }

    /// Watches every folder of `roots` recursively (re-arming those that were replaced or came
    /// back), their parents for their own entries, and the directories of `files` that lie
    /// outside them.
    pub fn watch(&mut self, roots: &[PathBuf], files: impl IntoIterator<Item = PathBuf>) {
        let wanted: BTreeSet<&PathBuf> = roots.iter().collect();
        let gone: Vec<PathBuf> = self
            .roots
            .keys()
            .filter(|r| !wanted.contains(r))
            .cloned()
            .collect();
        for root in gone {
            let _ = self.debouncer.unwatch(&root);
            self.roots.remove(&root);
        }
        for root in roots {
            let now = identity(root);
            let armed = self.roots.get(root).copied().flatten();
            if self.roots.contains_key(root) && now == armed {
                continue;
            }
            if armed.is_some() {
                let _ = self.debouncer.unwatch(root);
            }
            if now.is_some() {
                if let Err(error) = self.debouncer.watch(root, RecursiveMode::Recursive) {
                    tracing::error!(dir = %root.display(), %error, "cannot watch a folder; its changes need a restart");
                } else if self.roots.contains_key(root) {
                    tracing::info!(dir = %root.display(), "watching a folder again after it was replaced");
                }
            } else {
                tracing::warn!(dir = %root.display(), "a watched folder is gone; watching for it to come back");
            }
            self.roots.insert(root.clone(), now);
        }
        let wanted_others: BTreeSet<PathBuf> = files
            .into_iter()
            .filter(|f| !roots.iter().any(|root| f.starts_with(root)))
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .filter(|dir| dir.is_dir())
            .collect();
        for gone in self.others.difference(&wanted_others) {
            let _ = self.debouncer.unwatch(gone);
        }
        for dir in wanted_others.difference(&self.others) {
            if let Err(error) = self.debouncer.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), %error, "cannot watch a directory a capability reads from");
            }
        }
        self.others = wanted_others;
        self.watch_parents(roots);
    }

    /// Watches the parent of each root (but those already watched for another reason) for the
    /// root's own entry, so that a root that comes back is noticed at once.
    fn watch_parents(&mut self, roots: &[PathBuf]) {
        let mut wanted: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
        for root in roots {
            if let Some(parent) = root.parent().filter(|p| p.is_dir()) {
                let covered = self.others.contains(parent)
                    || roots.iter().any(|r| r != root && parent.starts_with(r));
                if !covered {
                    wanted
                        .entry(parent.to_path_buf())
                        .or_default()
                        .insert(root.clone());
                }
            }
        }
        let mut parents = self.parents.lock().expect("not poisoned");
        for gone in parents.keys().filter(|p| !wanted.contains_key(*p)) {
            let _ = self.debouncer.unwatch(gone);
        }
        for parent in wanted.keys().filter(|p| !parents.contains_key(*p)) {
            if let Err(error) = self.debouncer.watch(parent, RecursiveMode::NonRecursive) {
                tracing::debug!(dir = %parent.display(), %error, "cannot watch a watched folder's parent; a replaced folder is noticed by polling");
            }
        }
        *parents = wanted;
    }
}
