//! The catalog of capability files: what each serves, in what state, and the snapshot they make.
//!
//! [`Catalog::refresh`] rescans the specs folder, re-reads only the files whose bytes (or whose
//! imports and bind files) changed, compiles them, and assembles a new snapshot from every
//! file's serving version. A file that no longer loads keeps serving its last good version.
//! Watching the folder and deciding when to refresh is the caller's job.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use capgate_model::compile::{self, CompiledFile, FileKind};
use capgate_model::diag::{Code, Diagnostic, Severity};
use capgate_model::snapshot::{ListenKey, Snapshot};
use capgate_model::spec::{self, Env};

/// How a file is being served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileState {
    /// The current version serves, without errors.
    Serving,
    /// The current version serves, but some parts are not served (errors) or need a bound
    /// value that is missing.
    Degraded,
    /// The current version does not load; the last good version serves.
    ServingLastGood,
    /// The file does not load and never did.
    Failed,
    /// Not a capability (a standalone consumes document, a secrets file): nothing to serve.
    Ignored,
}

/// One file as the admin endpoint shows it.
#[derive(Debug, Clone, Serialize)]
pub struct FileStatus {
    pub path: PathBuf,
    pub state: FileState,
    /// The generation in which this file's current version was loaded.
    pub generation: u64,
    #[serde(with = "unix_millis")]
    pub loaded_at: SystemTime,
    pub rest_operations: usize,
    pub mcp_tools: usize,
    pub diagnostics: Vec<Diagnostic>,
}

struct Entry {
    fingerprint: u64,
    /// The version loaded last, whatever its state.
    latest: Arc<CompiledFile>,
    /// The version that serves.
    serving: Option<Arc<CompiledFile>>,
    state: FileState,
    generation: u64,
    loaded_at: SystemTime,
    /// A version (by fingerprint) that serves less than the serving one, first seen when:
    /// it is published once it has stayed the same for the quiet period.
    shrink: Option<(u64, Instant)>,
}

/// What one refresh changed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub generation: u64,
    pub files_added: Vec<PathBuf>,
    pub files_changed: Vec<PathBuf>,
    pub files_removed: Vec<PathBuf>,
    pub routes_added: Vec<String>,
    pub routes_removed: Vec<String>,
    pub tools_added: Vec<String>,
    pub tools_removed: Vec<String>,
    /// Plugin files loaded, replaced, broken or removed.
    pub plugins_changed: Vec<String>,
    #[serde(with = "micros")]
    pub took: Duration,
}

impl Report {
    pub fn is_empty(&self) -> bool {
        self.files_added.is_empty()
            && self.files_changed.is_empty()
            && self.files_removed.is_empty()
    }
}

/// Every known file and what it serves.
pub struct Catalog {
    dir: PathBuf,
    env: Env,
    options: compile::Options,
    files: BTreeMap<PathBuf, Entry>,
    /// Collision warnings of the last assembly, by file.
    collisions: BTreeMap<Arc<Path>, Vec<Diagnostic>>,
    /// Listeners that could not be opened, with the reason.
    listen_failures: BTreeMap<ListenKey, String>,
    generation: u64,
    /// How long a file that would serve less (or is gone) must stay so before it is published.
    quiet: Duration,
    /// Files gone from the folder, first seen gone when.
    vanished: BTreeMap<PathBuf, Instant>,
}

impl Catalog {
    /// `quiet`: how long a change that takes something away must hold before it is published
    /// (the reload debounce).
    pub fn new(dir: PathBuf, env: Env, options: compile::Options, quiet: Duration) -> Catalog {
        Catalog {
            dir,
            env,
            options,
            files: BTreeMap::new(),
            collisions: BTreeMap::new(),
            listen_failures: BTreeMap::new(),
            generation: 0,
            quiet,
            vanished: BTreeMap::new(),
        }
    }

    /// Whether a change that takes something away waits for its quiet period: the caller
    /// should refresh again after [`Catalog::quiet`].
    pub fn has_pending(&self) -> bool {
        !self.vanished.is_empty() || self.files.values().any(|e| e.shrink.is_some())
    }

    pub fn quiet(&self) -> Duration {
        self.quiet
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every file a change to which may change what is served: the capability files and
    /// everything they read.
    pub fn watched_files(&self) -> BTreeSet<PathBuf> {
        let mut out = BTreeSet::new();
        for (path, entry) in &self.files {
            out.insert(path.clone());
            out.extend(entry.latest.dependencies.iter().cloned());
        }
        out
    }

    /// Changes what compilation depends on (upstream overrides, bind values from the config):
    /// every file is compiled again at the next refresh.
    /// The options files are compiled with now.
    pub fn options(&self) -> &compile::Options {
        &self.options
    }

    pub fn reconfigure(&mut self, env: Env, options: compile::Options) {
        self.env = env;
        self.options = options;
        for entry in self.files.values_mut() {
            entry.fingerprint = 0;
        }
    }

    /// Records which plugin files are loaded, so that a transform bound to one that is not says
    /// so on its file: when the set changed, every file is compiled again at the next refresh.
    pub fn set_loaded_plugins(&mut self, loaded: BTreeSet<String>) {
        if self.options.loaded_plugins.as_ref() != Some(&loaded) {
            let options = compile::Options {
                loaded_plugins: Some(loaded),
                ..self.options.clone()
            };
            let env = self.env.clone();
            self.reconfigure(env, options);
        }
    }

    /// Records which listeners could not be opened, so that the files declaring them say so.
    pub fn set_listen_failures(&mut self, failures: BTreeMap<ListenKey, String>) {
        self.listen_failures = failures;
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Rescans the folder and rebuilds the snapshot from what changed; `None` when nothing did.
    /// `previous` is the snapshot being replaced, for the report.
    pub fn refresh(&mut self, previous: &Snapshot) -> Option<(Snapshot, Report)> {
        let started = Instant::now();
        let generation = self.generation + 1;
        let mut report = Report {
            generation,
            ..Report::default()
        };
        let paths = match spec::list_files(&self.dir) {
            Ok(paths) => paths,
            Err(error) => {
                tracing::error!(dir = %self.dir.display(), %error, "cannot list the specs folder; keeping what serves");
                self.files.keys().cloned().collect()
            }
        };
        let present: BTreeSet<&PathBuf> = paths.iter().collect();
        let removed: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !present.contains(p))
            .cloned()
            .collect();
        self.vanished.retain(|p, _| removed.contains(p));
        for path in removed {
            // A file that is gone is removed once it has stayed gone for the quiet period
            // (a deploy tool that deletes and rewrites must not close what it serves).
            let since = *self
                .vanished
                .entry(path.clone())
                .or_insert_with(Instant::now);
            if since.elapsed() >= self.quiet {
                self.vanished.remove(&path);
                self.files.remove(&path);
                report.files_removed.push(path);
            }
        }
        let now = SystemTime::now();
        for path in &paths {
            let known_dependencies = self
                .files
                .get(path)
                .map(|e| e.latest.dependencies.as_slice())
                .unwrap_or(&[]);
            let fingerprint = content_hash(path, known_dependencies);
            if let Some(entry) = self.files.get_mut(path)
                && entry.fingerprint == fingerprint
            {
                // Back to the serving version: nothing waits any more.
                entry.shrink = None;
                continue;
            }
            let loaded = spec::load_file(path, &self.env);
            let compiled = Arc::new(compile::compile_file(&loaded, &self.options));
            // The dependencies are known only after loading; fingerprint them now.
            let fingerprint = content_hash(path, &compiled.dependencies);
            if self.holds_back(path, fingerprint, &compiled) {
                continue;
            }
            let previous = self.files.remove(path);
            let (state, serving) =
                decide(&compiled, previous.as_ref().and_then(|e| e.serving.clone()));
            match previous {
                Some(_) => report.files_changed.push(path.clone()),
                None => report.files_added.push(path.clone()),
            }
            self.files.insert(
                path.clone(),
                Entry {
                    fingerprint,
                    latest: compiled,
                    serving,
                    state,
                    generation,
                    loaded_at: now,
                    shrink: None,
                },
            );
        }
        if report.is_empty() {
            return None;
        }
        let serving: Vec<Arc<CompiledFile>> = self
            .files
            .values()
            .filter_map(|e| e.serving.clone())
            .collect();
        let (snapshot, collisions) = compile::assemble(&serving, generation);
        self.collisions = collisions;
        diff(previous, &snapshot, &mut report);
        self.generation = generation;
        report.took = started.elapsed();
        Some((snapshot, report))
    }
}

impl Catalog {
    /// Whether a new version of `path` waits: it would serve less than the serving version (a
    /// route, a tool, an adapter or a listener gone, as a file cut off mid-write does) and has
    /// not yet stayed the same for the quiet period. A half-written file is never published
    /// that way; a real removal is, one quiet period later.
    fn holds_back(&mut self, path: &Path, fingerprint: u64, compiled: &CompiledFile) -> bool {
        let quiet = self.quiet;
        let Some(entry) = self.files.get_mut(path) else {
            return false;
        };
        let Some(serving) = &entry.serving else {
            return false;
        };
        if compiled.kind == FileKind::Broken || !serves_less(serving, compiled) {
            entry.shrink = None;
            return false;
        }
        match entry.shrink {
            Some((seen, since)) if seen == fingerprint && since.elapsed() >= quiet => {
                entry.shrink = None;
                false
            }
            Some((seen, _)) if seen == fingerprint => true,
            _ => {
                tracing::info!(file = %path.display(), quiet_ms = quiet.as_millis() as u64, "a change would take routes or tools away; publishing it once it has stayed the same that long");
                entry.shrink = Some((fingerprint, Instant::now()));
                true
            }
        }
    }
}

/// Whether `new` lacks a REST route or an MCP tool (or adapter, or listener) that `old` serves.
fn serves_less(old: &CompiledFile, new: &CompiledFile) -> bool {
    let routes = |f: &CompiledFile| -> BTreeSet<(ListenKey, String, String)> {
        f.rest
            .iter()
            .map(|r| {
                (
                    r.listen,
                    r.route.method.to_string(),
                    r.route.pattern.clone(),
                )
            })
            .collect()
    };
    let tools = |f: &CompiledFile| -> BTreeSet<(ListenKey, String, String)> {
        f.mcp
            .iter()
            .flat_map(|(key, adapter)| {
                let tools = adapter
                    .tools
                    .iter()
                    .map(move |t| (*key, adapter.namespace.clone(), t.name.clone()));
                // An adapter without tools still serves its endpoint.
                std::iter::once((*key, adapter.namespace.clone(), String::new())).chain(tools)
            })
            .collect()
    };
    !routes(old).is_subset(&routes(new)) || !tools(old).is_subset(&tools(new))
}

/// Chooses what serves after a load: the new version, unless it does not load at all, stopped
/// being a capability, or lost everything it served to errors; then the last good one stays.
fn decide(
    compiled: &Arc<CompiledFile>,
    last_good: Option<Arc<CompiledFile>>,
) -> (FileState, Option<Arc<CompiledFile>>) {
    let good_was_capability = last_good
        .as_ref()
        .is_some_and(|g| g.kind == FileKind::Capability);
    let good_served = last_good
        .as_ref()
        .is_some_and(|g| g.served_count() != (0, 0));
    let loads = match compiled.kind {
        FileKind::Broken => false,
        FileKind::Capability => {
            !(compiled.has_errors() && compiled.served_count() == (0, 0) && good_served)
        }
        FileKind::Consumes | FileKind::NotCapability => !good_was_capability,
    };
    if !loads {
        return match last_good {
            Some(good) => (FileState::ServingLastGood, Some(good)),
            None => (FileState::Failed, None),
        };
    }
    match compiled.kind {
        FileKind::Capability if compiled.has_errors() || !compiled.missing_binds.is_empty() => {
            (FileState::Degraded, Some(compiled.clone()))
        }
        FileKind::Capability => (FileState::Serving, Some(compiled.clone())),
        _ => (FileState::Ignored, None),
    }
}

/// A hash of the file's bytes and of every dependency's bytes (a missing file hashes as such).
fn content_hash(path: &Path, dependencies: &[PathBuf]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for file in std::iter::once(path).chain(dependencies.iter().map(PathBuf::as_path)) {
        file.hash(&mut hasher);
        match capgate_model::read::bytes(file, capgate_model::read::SPEC_LIMIT) {
            Ok(bytes) => bytes.hash(&mut hasher),
            Err(error) => error.kind().hash(&mut hasher),
        }
    }
    hasher.finish()
}

/// Every REST route as `ADDRESS METHOD /canonical/{}` (what a report lists).
fn route_names(snapshot: &Snapshot) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (key, listener) in &snapshot.listeners {
        for route in listener.rest.values() {
            out.insert(format!("{key} {} {}", route.method, route.pattern));
        }
    }
    out
}

/// Every MCP tool by listener, adapter namespace and name.
fn tool_names(snapshot: &Snapshot) -> BTreeSet<(ListenKey, &str, &str)> {
    let mut out = BTreeSet::new();
    for (key, listener) in &snapshot.listeners {
        for (namespace, adapter) in &listener.mcp {
            for tool in &adapter.tools {
                out.insert((*key, namespace.as_str(), tool.name.as_str()));
            }
        }
    }
    out
}

fn diff(old: &Snapshot, new: &Snapshot, report: &mut Report) {
    let (old_routes, new_routes) = (route_names(old), route_names(new));
    report.routes_added = new_routes.difference(&old_routes).cloned().collect();
    report.routes_removed = old_routes.difference(&new_routes).cloned().collect();
    let (old_tools, new_tools) = (tool_names(old), tool_names(new));
    let named =
        |(key, namespace, tool): &(ListenKey, &str, &str)| format!("{key} {namespace}/{tool}");
    report.tools_added = new_tools.difference(&old_tools).map(named).collect();
    report.tools_removed = old_tools.difference(&new_tools).map(named).collect();
}

mod unix_millis {
    use std::time::SystemTime;

    use serde::Serializer;

    pub fn serialize<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
        let millis = time
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        serializer.serialize_u64(millis)
    }
}

mod micros {
    use std::time::Duration;

    use serde::Serializer;

    pub fn serialize<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(d.as_micros() as u64)
    }
}

impl Catalog {
    /// Errors for the listeners `file` declares that could not be opened.
    fn listen_diagnostics(&self, file: &CompiledFile) -> Vec<Diagnostic> {
        let mut declared: BTreeMap<ListenKey, u32> = BTreeMap::new();
        for route in &file.rest {
            declared.entry(route.listen).or_insert(route.at.line);
        }
        for (key, adapter) in &file.mcp {
            declared.entry(*key).or_insert(adapter.origin.line);
        }
        let mut out = Vec::new();
        for (key, line) in declared {
            if let Some(reason) = self.listen_failures.get(&key) {
                let mut diagnostic = Diagnostic::new(
                    Severity::Error,
                    Code::ListenFailed,
                    &file.path,
                    &capgate_model::diag::Loc::new(line, ""),
                );
                diagnostic.message = format!(
                    "cannot listen on {key}: {reason}; what this file serves there is unreachable"
                );
                out.push(diagnostic);
            }
        }
        out
    }

    /// Every file's state and diagnostics (collisions included), in path order.
    pub fn status(&self) -> Vec<FileStatus> {
        self.files
            .iter()
            .map(|(path, entry)| {
                let mut diagnostics = entry.latest.diagnostics.clone();
                if let Some(extra) = self.collisions.get(entry.latest.path.as_ref()) {
                    diagnostics.extend(extra.iter().cloned());
                }
                if let Some(serving) = &entry.serving {
                    diagnostics.extend(self.listen_diagnostics(serving));
                }
                let serving = entry.serving.as_ref();
                let (rest_operations, mcp_tools) =
                    serving.map(|s| s.served_count()).unwrap_or((0, 0));
                let mut state = entry.state;
                if state == FileState::Serving
                    && diagnostics.iter().any(|d| d.severity == Severity::Error)
                {
                    state = FileState::Degraded;
                }
                FileStatus {
                    path: path.clone(),
                    state,
                    generation: entry.generation,
                    loaded_at: entry.loaded_at,
                    rest_operations,
                    mcp_tools,
                    diagnostics,
                }
            })
            .collect()
    }
}
