//! Transform plugins: WebAssembly components (`wit/transform.wit`) run around the upstream call
//! of an operation, sandboxed, time- and memory-limited, hot-reloaded.
//!
//! ```text
//! plugins/*.wasm --load (blocking pool; on-disk artifact cache)--> Component --> InstancePre
//!   --> Arc<Plugin> in an ArcSwap map (a broken file keeps the previous version)
//! per call: semaphore slot -> fresh Store (memory cap, epoch deadline; yields after a tick of CPU)
//!   -> instantiate from the pool -> on-request / on-response -> drop the store
//! ```
//!
//! Only this module knows wasmtime. A plugin gets minimal WASI (streams and the CLI
//! interfaces: no filesystem, network, clocks or environment) and the `log` import; its
//! stderr is captured into the gateway's log. It sees requests before credentials are added.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use serde::Serialize;
use serde_json::Value;
use sha2::Digest;
use tokio::sync::{Semaphore, SemaphorePermit};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store,
    StoreLimits, StoreLimitsBuilder, Trap, UpdateDeadline,
};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use capgate_model::config::PluginsConfig;
use capgate_model::exchange::{Payload, UpstreamRequest, UpstreamResponse};
use capgate_model::snapshot::TransformRef;

/// The host side of `wit/transform.wit`, in a module of its own: the WIT package is named
/// `capgate`, like this crate.
mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "transform",
        exports: { default: async },
    });
}

use bindings::capgate::transform::types::Level;
use bindings::{Context, PluginError, Request, RequestAction, Response, Transform, TransformPre};

/// How much of a plugin's stderr is kept for the log.
const STDERR_CAPACITY: usize = 16 * 1024;
/// The longest message one `log` call writes; the rest is cut.
const LOG_MESSAGE_LIMIT: usize = 2048;
/// What one call may write through `log` in all; past it, its messages are dropped (with one
/// warning), so a plugin cannot flood the gateway's log, or block its thread on a full one.
const LOG_CALL_BUDGET: usize = 16 * 1024;
/// How many more headers a plugin may return than it was shown; more is a malformed result.
const MAX_HEADERS: usize = 100;
/// What each `log` line costs from the budget besides its text (the line's own fields).
const LOG_LINE_COST: usize = 64;
/// What one plugin instance may hold. The pool has this much for every call slot, so a call
/// that has its slot never fails for want of pool capacity, whatever other plugins hold; a
/// component that needs more does not load.
const MAX_CORE_INSTANCES: usize = 8;
const MAX_MEMORIES: usize = 2;
const MAX_TABLES: usize = 8;

/// What a store holds during one call.
struct State {
    /// Made when the plugin first calls WASI: a plugin without `std` never does, and a call
    /// that does not need one is spared building it (seeding its random generators and all).
    wasi: Option<WasiCtx>,
    table: ResourceTable,
    limits: Limits,
    plugin: Arc<str>,
    request_id: Arc<str>,
    /// The plugin's stderr (panic messages, allocation failures), read after a trap.
    stderr: MemoryOutputPipe,
    /// What is left of the call's `log` budget, in bytes.
    log_left: usize,
    /// Whether the budget ran out (and that was said).
    log_cut: bool,
    /// Keeps the epoch ticking while this store exists.
    _running: Running,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let stderr = &self.stderr;
        WasiCtxView {
            ctx: self
                .wasi
                .get_or_insert_with(|| WasiCtx::builder().stderr(stderr.clone()).build()),
            table: &mut self.table,
        }
    }
}

impl wasmtime_wasi_io::IoView for State {
    fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

impl bindings::capgate::transform::types::Host for State {}

impl bindings::capgate::transform::host::Host for State {
    fn log(&mut self, level: Level, message: String) {
        let (plugin, request_id) = (&*self.plugin, &*self.request_id);
        if self.log_left == 0 {
            if !std::mem::replace(&mut self.log_cut, true) {
                tracing::warn!(
                    plugin,
                    request_id,
                    limit_bytes = LOG_CALL_BUDGET,
                    "plugin log budget of this call used up; its further messages are dropped"
                );
            }
            return;
        }
        let message = printable(&message, LOG_MESSAGE_LIMIT.min(self.log_left));
        self.log_left = self.log_left.saturating_sub(message.len() + LOG_LINE_COST);
        match level {
            Level::Trace => tracing::trace!(plugin, request_id, "{message}"),
            Level::Debug => tracing::debug!(plugin, request_id, "{message}"),
            Level::Info => tracing::info!(plugin, request_id, "{message}"),
            Level::Warn => tracing::warn!(plugin, request_id, "{message}"),
            Level::Error => tracing::error!(plugin, request_id, "{message}"),
        }
    }
}

/// A look at the plugins folder.
type Scan = (Vec<(String, PathBuf)>, Vec<String>);

/// The `.wasm` files of the plugins folder (not hidden ones), by name, and the names of those
/// that could not be looked at now (a link to nowhere readable, say): those keep their state.
fn wasm_files(dir: &Path) -> std::io::Result<Scan> {
    let (mut present, mut unreadable) = (Vec::new(), Vec::new());
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        if name.starts_with('.') || path.extension().is_none_or(|e| e != "wasm") {
            continue;
        }
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => present.push((name, path)),
            Ok(_) => {}
            // Deleted between listing and looking: absent.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(plugin = %name, %error, "cannot look at a plugin file; it keeps its state");
                unreadable.push(name);
            }
        }
    }
    Ok((present, unreadable))
}

/// A plugin's text as one log line: at most `limit` bytes (cut at a character), control
/// characters escaped, so a plugin cannot forge lines of its own.
fn printable(text: &str, limit: usize) -> String {
    let mut out = String::with_capacity(text.len().min(limit));
    for c in text.chars() {
        let before = out.len();
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        if out.len() > limit {
            out.truncate(before);
            break;
        }
    }
    out
}

/// A store's limits: the memory cap counts all of the instance's memories together, and
/// remembers whether it refused to grow one.
struct Limits {
    store: StoreLimits,
    memory_cap: usize,
    memory_used: usize,
    /// What the last grant added to `memory_used`, taken back if the growth then failed.
    memory_granted: usize,
    memory_refused: bool,
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self
            .memory_used
            .saturating_sub(current)
            .saturating_add(desired);
        let granted =
            total <= self.memory_cap && self.store.memory_growing(current, desired, maximum)?;
        if granted {
            self.memory_granted = total.saturating_sub(self.memory_used);
            self.memory_used = total;
        }
        self.memory_refused |= !granted;
        Ok(granted)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.memory_used -= std::mem::take(&mut self.memory_granted);
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.store.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.store.instances()
    }

    fn tables(&self) -> usize {
        self.store.tables()
    }

    fn memories(&self) -> usize {
        self.store.memories()
    }
}

/// A loaded plugin file.
pub struct Plugin {
    /// The file name, as bindings name it (`redact_pii.wasm`).
    pub file: String,
    pub name: Arc<str>,
    pub version: String,
    /// Whether the plugin's `on-request` does anything (it is not called otherwise).
    pub handles_requests: bool,
    /// Whether the plugin's `on-response` does anything.
    pub handles_responses: bool,
    pub needs_request_body: bool,
    pub needs_response_body: bool,
    /// SHA-256 of the file.
    pub digest: String,
    pre: TransformPre<State>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("file", &self.file)
            .field("name", &self.name)
            .field("version", &self.version)
            .finish()
    }
}

/// The state of one plugin file, for the admin endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct PluginStatus {
    pub file: String,
    /// `loaded`, `serving-last-good` or `failed`.
    pub state: &'static str,
    pub name: Option<String>,
    pub version: Option<String>,
    pub digest: Option<String>,
    pub error: Option<String>,
}

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
pub struct CallContext {
    pub capability: String,
    pub operation: String,
    pub request_id: Arc<str>,
}

/// The loaded plugins at one moment, by file name. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct PluginSet(Arc<HashMap<String, Arc<Plugin>>>);

impl PluginSet {
    /// The plugin a binding names (`redact_pii.wasm`).
    pub fn get(&self, file: &str) -> Option<&Arc<Plugin>> {
        self.0.get(file)
    }

    /// The file names, sorted.
    pub fn files(&self) -> std::collections::BTreeSet<String> {
        self.0.keys().cloned().collect()
    }
}

/// Every plugin and the machinery to run them.
pub struct Plugins {
    ticker: Ticker,
    engine: Engine,
    linker: Linker<State>,
    config: PluginsConfig,
    loaded: ArcSwap<HashMap<String, Arc<Plugin>>>,
    /// Per file: the digest last tried and its status.
    files: Mutex<BTreeMap<String, (String, PluginStatus)>>,
    slots: Arc<Semaphore>,
}

impl std::fmt::Debug for Plugins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugins")
            .field("dir", &self.config.dir)
            .finish()
    }
}

/// A plugin host error at startup.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the plugin host: {0}")]
pub struct HostError(String);

impl Plugins {
    /// Creates the engine (pooling allocator, epoch interruption) and the linker, and starts the
    /// epoch ticker.
    pub fn new(config: &PluginsConfig) -> Result<Plugins, HostError> {
        let slots = config.max_concurrent_calls.max(1);
        let mut pool = PoolingAllocationConfig::default();
        let per_slot = |n: usize| (slots * n) as u32;
        pool.total_component_instances(per_slot(1))
            .total_core_instances(per_slot(MAX_CORE_INSTANCES))
            .total_memories(per_slot(MAX_MEMORIES))
            .total_tables(per_slot(MAX_TABLES))
            .total_stacks(per_slot(1))
            .max_memory_size(config.max_memory_mib * 1024 * 1024)
            .max_memories_per_component(MAX_MEMORIES as u32)
            .max_tables_per_component(MAX_TABLES as u32)
            .max_core_instances_per_component(MAX_CORE_INSTANCES as u32)
            .max_component_instance_size(1024 * 1024)
            .max_core_instance_size(1024 * 1024)
            .linear_memory_keep_resident(512 * 1024)
            .table_keep_resident(64 * 1024)
            .async_stack_keep_resident(128 * 1024);
        let mut wasm = wasmtime::Config::new();
        wasm.wasm_component_model(true)
            .epoch_interruption(true)
            .max_wasm_stack(512 * 1024)
            .async_stack_size(1024 * 1024)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm).map_err(|e| HostError(e.to_string()))?;
        let mut linker: Linker<State> = Linker::new(&engine);
        link(&mut linker).map_err(|e| HostError(e.to_string()))?;
        let ticker = Ticker::start(&engine, config.epoch_tick);
        Ok(Plugins {
            ticker,
            engine,
            linker,
            config: config.clone(),
            loaded: ArcSwap::from_pointee(HashMap::new()),
            files: Mutex::new(BTreeMap::new()),
            slots: Arc::new(Semaphore::new(slots)),
        })
    }

    pub fn config(&self) -> &PluginsConfig {
        &self.config
    }

    /// The loaded version of a plugin file.
    pub fn get(&self, file: &str) -> Option<Arc<Plugin>> {
        self.loaded.load().get(file).cloned()
    }

    /// Every loaded plugin as it is now: what a published snapshot pins, so that a request runs
    /// one version of each plugin from its first hook to its last.
    pub fn loaded(&self) -> PluginSet {
        PluginSet(self.loaded.load_full())
    }

    /// Every plugin file's state.
    pub fn status(&self) -> Vec<PluginStatus> {
        self.files
            .lock()
            .expect("not poisoned")
            .values()
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// Rescans the plugins folder and loads the files that changed (blocking: compiles). A file
    /// that fails to load keeps its previous version. Returns the files whose state changed.
    pub fn refresh(&self) -> Vec<String> {
        let Some(dir) = &self.config.dir else {
            return Vec::new();
        };
        let (mut present, unreadable) = match wasm_files(dir) {
            Ok(scan) => scan,
            // A folder that is gone has no plugins; one that cannot be read now (out of file
            // descriptors, a network file system's hiccup) keeps the plugins it had.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => (Vec::new(), Vec::new()),
            Err(error) => {
                tracing::warn!(dir = %dir.display(), %error, "cannot read the plugins folder; the loaded plugins stay");
                return Vec::new();
            }
        };
        present.sort();
        let mut changed = Vec::new();
        let mut loaded = (**self.loaded.load()).clone();
        let mut files = self.files.lock().expect("not poisoned");
        files.retain(|name, _| {
            let keep = present.iter().any(|(n, _)| n == name) || unreadable.contains(name);
            if !keep {
                loaded.remove(name);
                changed.push(name.clone());
            }
            keep
        });
        for (name, path) in present {
            let bytes = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                Err(error) => {
                    tracing::warn!(plugin = %name, %error, "cannot read plugin file");
                    continue;
                }
            };
            let digest = hex(&sha2::Sha256::digest(&bytes));
            if files.get(&name).is_some_and(|(tried, _)| tried == &digest) {
                continue;
            }
            changed.push(name.clone());
            let started = Instant::now();
            match self.load(&name, &bytes, &digest) {
                Ok(plugin) => {
                    tracing::info!(plugin = %name, name = %plugin.name, version = %plugin.version, took_ms = started.elapsed().as_millis() as u64, "plugin loaded");
                    let status = PluginStatus {
                        file: name.clone(),
                        state: "loaded",
                        name: Some(plugin.name.to_string()),
                        version: Some(plugin.version.clone()),
                        digest: Some(digest.clone()),
                        error: None,
                    };
                    loaded.insert(name.clone(), Arc::new(plugin));
                    files.insert(name, (digest, status));
                }
                Err(error) => {
                    let previous = loaded.get(&name);
                    tracing::error!(plugin = %name, %error, keeps_previous = previous.is_some(), "plugin does not load");
                    let status = PluginStatus {
                        file: name.clone(),
                        state: if previous.is_some() {
                            "serving-last-good"
                        } else {
                            "failed"
                        },
                        name: previous.map(|p| p.name.to_string()),
                        version: previous.map(|p| p.version.clone()),
                        digest: previous.map(|p| p.digest.clone()),
                        error: Some(error),
                    };
                    files.insert(name, (digest, status));
                }
            }
        }
        self.loaded.store(Arc::new(loaded));
        changed
    }

    /// Compiles (or loads from the cache), links and asks the plugin for its info.
    fn load(&self, file: &str, bytes: &[u8], digest: &str) -> Result<Plugin, String> {
        let component = self.compile(bytes, digest)?;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            format!(
                "does not fit the capgate:transform world or imports what is not offered: {e:#}"
            )
        })?;
        let pre = TransformPre::new(pre)
            .map_err(|e| format!("does not export the transform world: {e:#}"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| e.to_string())?;
        let info = runtime.block_on(async {
            let _slot = self.slots.acquire().await.expect("never closed");
            let mut store = self.store(
                Arc::from(file),
                Arc::from("load"),
                16 * 1024 * 1024,
                Duration::from_millis(1000),
            );
            let instance = pre
                .instantiate_async(&mut store)
                .await
                .map_err(|e| format!("cannot instantiate: {e:#}"))?;
            instance
                .call_info(&mut store)
                .await
                .map_err(|e| format!("info() failed: {}", classify(&e, &mut store)))
        })?;
        Ok(Plugin {
            file: file.to_owned(),
            name: Arc::from(info.name),
            version: info.version,
            handles_requests: info.handles_requests,
            handles_responses: info.handles_responses,
            needs_request_body: info.needs_request_body,
            needs_response_body: info.needs_response_body,
            digest: digest.to_owned(),
            pre,
        })
    }

    fn compile(&self, bytes: &[u8], digest: &str) -> Result<Component, String> {
        let Some(cache) = self.cache_dir() else {
            return Component::from_binary(&self.engine, bytes)
                .map_err(|e| format!("not a valid component: {e:#}"));
        };
        let mut engine_hash = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut engine_hash);
        let artifact = cache.join(format!("{:016x}-{digest}.cwasm", engine_hash.finish()));
        if artifact.exists() {
            match deserialize(&self.engine, &artifact) {
                Ok(component) => return Ok(component),
                Err(error) => {
                    tracing::warn!(artifact = %artifact.display(), %error, "cached plugin artifact unusable; compiling again")
                }
            }
        }
        let component = Component::from_binary(&self.engine, bytes)
            .map_err(|e| format!("not a valid component: {e:#}"))?;
        match component.serialize() {
            Ok(mut serialized) => {
                let checksum = sha2::Sha256::digest(&serialized);
                serialized.extend_from_slice(&checksum);
                let temp = cache.join(format!(".{digest}.{}.tmp", std::process::id()));
                if std::fs::write(&temp, serialized)
                    .and_then(|()| std::fs::rename(&temp, &artifact))
                    .is_err()
                {
                    let _ = std::fs::remove_file(&temp);
                    tracing::warn!(dir = %cache.display(), "cannot write the plugin artifact cache");
                }
            }
            Err(error) => tracing::warn!(%error, "cannot serialize a compiled plugin"),
        }
        Ok(component)
    }

    /// The artifact cache, if it is a directory only this user can write.
    fn cache_dir(&self) -> Option<PathBuf> {
        let dir = self.config.cache_dir.clone()?;
        if std::fs::create_dir_all(&dir).is_err() {
            return None;
        }
        // Looked at without following links: whoever owns a link could point it elsewhere
        // after this check.
        let private = |meta: &std::fs::Metadata| {
            meta.file_type().is_dir() && owned_by_me(meta) && !writable_by_others(meta)
        };
        let mut meta = std::fs::symlink_metadata(&dir).ok()?;
        if meta.file_type().is_dir() && owned_by_me(&meta) && !private(&meta) {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
            }
            meta = std::fs::symlink_metadata(&dir).ok()?;
        }
        if !private(&meta) {
            tracing::warn!(dir = %dir.display(), "the plugin artifact cache is not a directory of this user's that only it can write; not used");
            return None;
        }
        Some(dir)
    }

    fn store(
        &self,
        plugin: Arc<str>,
        request_id: Arc<str>,
        memory: usize,
        timeout: Duration,
    ) -> Store<State> {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        let limits = Limits {
            store: StoreLimitsBuilder::new()
                .memory_size(memory)
                .instances(MAX_CORE_INSTANCES)
                .tables(MAX_TABLES)
                .memories(MAX_MEMORIES)
                .build(),
            memory_cap: memory,
            memory_used: 0,
            memory_granted: 0,
            memory_refused: false,
        };
        let mut store = Store::new(
            &self.engine,
            State {
                wasi: None,
                table: ResourceTable::new(),
                limits,
                plugin,
                request_id,
                stderr,
                log_left: LOG_CALL_BUDGET,
                log_cut: false,
                _running: self.ticker.running(),
            },
        );
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(1);
        // A plugin that has had a whole tick of CPU since it last gave the thread back gives it
        // back at the next tick (fairness); a call that merely runs across a tick goes on, rather
        // than queueing behind every other task for its last microseconds. Its deadline counts
        // the CPU time it used, not wall time: neither waiting to be scheduled again after a
        // yield nor the OS preempting the thread on a busy machine may turn a quick plugin into a
        // timeout, while a plugin that loops still burns through its budget.
        let tick = self.config.epoch_tick;
        let budget = Arc::new(Mutex::new(CpuBudget::start(tick)));
        store.epoch_deadline_callback(move |_| {
            let mut clock = budget.lock().expect("not poisoned");
            let used = clock.used();
            if used >= timeout {
                return Ok(UpdateDeadline::Interrupt);
            }
            if used < clock.yielded_at + tick {
                return Ok(UpdateDeadline::Continue(1));
            }
            clock.yielded_at = used;
            drop(clock);
            let budget = budget.clone();
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(async move {
                    tokio::task::yield_now().await;
                    // The call may resume on another thread: measure from here, on that one.
                    budget.lock().expect("not poisoned").resume();
                }),
            ))
        });
        store
    }

    /// A fresh instance of `plugin` for one call, in a store of its own with the transform's
    /// memory cap and deadline, holding one of the pool's slots until it is dropped.
    async fn instantiate(
        &self,
        plugin: &Plugin,
        transform: &TransformRef,
        context: &CallContext,
    ) -> Result<(Store<State>, Transform, SemaphorePermit<'_>), Failure> {
        let slot = self.slots.acquire().await.expect("never closed");
        let mut store = self.store(
            plugin.name.clone(),
            context.request_id.clone(),
            transform.memory,
            transform.timeout,
        );
        let instance = plugin
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| classify(&e, &mut store))?;
        Ok((store, instance, slot))
    }

    /// Runs `on-request` of `plugin` (the one `transform` names, as the caller resolved it).
    pub async fn on_request(
        &self,
        plugin: &Plugin,
        transform: &TransformRef,
        context: &CallContext,
        request: UpstreamRequest,
    ) -> Result<RequestOutcome, Failure> {
        if !plugin.handles_requests {
            return Ok(RequestOutcome::Skipped(request));
        }
        let (mut store, instance, _slot) = self.instantiate(plugin, transform, context).await?;
        let wit_request = to_wit_request(&request, plugin.needs_request_body);
        let result = instance
            .call_on_request(&mut store, &wit_context(transform, context), &wit_request)
            .await
            .map_err(|e| classify(&e, &mut store))?;
        log_stderr(store.data());
        match result {
            Ok(RequestAction::Forward(changed)) => Ok(RequestOutcome::Forward(from_wit_request(
                changed,
                request,
                plugin.needs_request_body,
            )?)),
            Ok(RequestAction::Respond(response)) => Ok(RequestOutcome::Respond(from_wit_response(
                response, None, None,
            )?)),
            Err(error) => Ok(RequestOutcome::Refused(refusal(error)?)),
        }
    }

    /// Runs `on-response` of `plugin` (the one `transform` names, as the caller resolved it).
    pub async fn on_response(
        &self,
        plugin: &Plugin,
        transform: &TransformRef,
        context: &CallContext,
        response: UpstreamResponse,
    ) -> Result<ResponseOutcome, Failure> {
        if !plugin.handles_responses {
            return Ok(ResponseOutcome::Skipped(response));
        }
        let (mut store, instance, _slot) = self.instantiate(plugin, transform, context).await?;
        let wit_response = Response {
            status: response.status.as_u16(),
            headers: headers_to_wit(&response.headers),
            body: plugin.needs_response_body.then(|| response.body.to_vec()),
        };
        let result = instance
            .call_on_response(&mut store, &wit_context(transform, context), &wit_response)
            .await
            .map_err(|e| classify(&e, &mut store))?;
        log_stderr(store.data());
        match result {
            Ok(changed) => {
                let original = (!plugin.needs_response_body).then(|| response.body.clone());
                Ok(ResponseOutcome::Forward(from_wit_response(
                    changed,
                    original,
                    Some(&response),
                )?))
            }
            Err(error) => Ok(ResponseOutcome::Refused(refusal(error)?)),
        }
    }
}

/// The CPU time one plugin call has used, counted per stretch it ran on one thread.
///
/// Reading a thread's CPU clock is a system call, and most calls end long before their first
/// epoch tick: so the first stretch is not clocked. It is charged its wall time, capped at one
/// tick (the epoch callback that first asks comes at the first tick after the call started; a
/// thread preempted meanwhile has not used more than that), and the CPU clock is read from then
/// on. A looping plugin is therefore stopped after at least its timeout of CPU time, and at most
/// one tick more.
struct CpuBudget {
    used: Duration,
    /// `used` when the call last gave its thread back (or zero).
    yielded_at: Duration,
    /// The thread the current stretch runs on, and its CPU clock when the stretch began; `None`
    /// during the first, unclocked stretch.
    stretch: Option<(std::thread::ThreadId, Duration)>,
    started: Instant,
    tick: Duration,
}

impl CpuBudget {
    fn start(tick: Duration) -> CpuBudget {
        CpuBudget {
            used: Duration::ZERO,
            yielded_at: Duration::ZERO,
            stretch: None,
            started: Instant::now(),
            tick,
        }
    }

    /// The CPU time used so far (read on the thread the call is running on).
    fn used(&mut self) -> Duration {
        match self.stretch {
            None => {
                self.used += self.started.elapsed().min(self.tick);
                self.resume();
            }
            Some((thread, began)) if thread == std::thread::current().id() => {
                let now = thread_cpu_time();
                self.used += now.saturating_sub(began);
                self.stretch = Some((thread, now));
            }
            // Moved without passing through a yield: that stretch cannot be measured; start one.
            Some(_) => self.resume(),
        }
        self.used
    }

    /// Starts a new stretch on the current thread.
    fn resume(&mut self) {
        self.stretch = Some((std::thread::current().id(), thread_cpu_time()));
    }
}

/// The calling thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`).
#[cfg(unix)]
#[allow(unsafe_code)]
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; the clock id is a constant every unix has.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } == 0;
    if !ok {
        return wall_clock();
    }
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

#[cfg(not(unix))]
fn thread_cpu_time() -> Duration {
    wall_clock()
}

/// Where there is no thread CPU clock, wall time stands in for it (a deadline still holds).
#[cfg_attr(unix, allow(dead_code))]
fn wall_clock() -> Duration {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed()
}

/// Deserializes an artifact this gateway compiled and wrote itself.
/// Reads a cached artifact back: a regular file (not a link) of this user's, whose trailing
/// SHA-256 matches its contents, so a file cut short by a crash is never run.
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, artifact: &Path) -> Result<Component, String> {
    let meta = std::fs::symlink_metadata(artifact).map_err(|e| e.to_string())?;
    if !meta.file_type().is_file() || !owned_by_me(&meta) {
        return Err("not a regular file of this user's".into());
    }
    let bytes = std::fs::read(artifact).map_err(|e| e.to_string())?;
    let Some((code, digest)) = bytes.split_last_chunk::<32>() else {
        return Err("too short".into());
    };
    if sha2::Sha256::digest(code).as_slice() != digest {
        return Err("its checksum does not match".into());
    }
    // SAFETY: `Component::deserialize` runs native code from these bytes. They come from the
    // artifact cache, which `cache_dir` only uses when it is a directory (not a link) owned by
    // this user and not writable by anyone else, and which only `compile` writes (from
    // `Component::serialize`, with its checksum). wasmtime also checks that the artifact was
    // made by a compatible engine.
    unsafe { Component::deserialize(engine, code) }.map_err(|e| format!("{e:#}"))
}

/// Whether users other than the owner may write a file or directory.
fn writable_by_others(meta: &std::fs::Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        meta.mode() & 0o022 != 0
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        false
    }
}

/// Whether a file or directory belongs to the user this process runs as.
#[allow(unsafe_code)]
fn owned_by_me(meta: &std::fs::Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: `geteuid` has no preconditions and cannot fail.
        meta.uid() == unsafe { libc::geteuid() }
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        true
    }
}

/// Minimal WASI (streams and CLI only) and the `host` interface.
fn link(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    use wasmtime_wasi::cli::{WasiCli, WasiCliCtxView, WasiCliView};
    use wasmtime_wasi::p2::bindings::cli;
    fn view(state: &mut State) -> WasiCliCtxView<'_> {
        state.cli()
    }
    wasmtime_wasi_io::add_to_linker_async(linker)?;
    cli::exit::add_to_linker::<State, WasiCli>(linker, view)?;
    cli::environment::add_to_linker::<State, WasiCli>(linker, view)?;
    cli::stdin::add_to_linker::<State, WasiCli>(linker, view)?;
    cli::stdout::add_to_linker::<State, WasiCli>(linker, view)?;
    cli::stderr::add_to_linker::<State, WasiCli>(linker, view)?;
    cli::terminal_input::add_to_linker::<State, WasiCli>(linker, view)?;
    cli::terminal_output::add_to_linker::<State, WasiCli>(linker, view)?;
    cli::terminal_stdin::add_to_linker::<State, WasiCli>(linker, view)?;
    cli::terminal_stdout::add_to_linker::<State, WasiCli>(linker, view)?;
    cli::terminal_stderr::add_to_linker::<State, WasiCli>(linker, view)?;
    Transform::add_to_linker::<State, HasSelf<State>>(linker, |state| state)?;
    Ok(())
}

/// The thread that advances the engine's epoch every tick, while plugin calls are running.
///
/// A gateway without plugin calls should not wake up a thousand times a second: the thread
/// parks once no store has existed for `LINGER_TICKS` ticks in a row, and the next store wakes
/// it (`Ticker::running`). The linger keeps a gateway with steady plugin traffic from waking the
/// thread at each call: a store that finds the thread ticking costs no system call.
struct Ticker {
    state: Arc<TickerState>,
    thread: std::thread::Thread,
}

/// Ticks in a row without a store after which the epoch thread parks.
const LINGER_TICKS: u64 = 100;

#[derive(Default)]
struct TickerState {
    /// Stores in existence.
    running: AtomicUsize,
    stopped: AtomicBool,
    /// Epochs advanced so far.
    ticks: AtomicU64,
    /// Whether the thread is parked (or about to park).
    parked: AtomicBool,
}

impl Ticker {
    fn start(engine: &Engine, tick: Duration) -> Ticker {
        let weak = engine.weak();
        let state = Arc::new(TickerState::default());
        let shared = state.clone();
        let thread = std::thread::Builder::new()
            .name("capgate-plugin-epoch".into())
            .spawn(move || {
                // Starts parked: no store yet.
                let mut idle = LINGER_TICKS;
                while !shared.stopped.load(Ordering::Acquire) {
                    if shared.running.load(Ordering::Acquire) > 0 {
                        idle = 0;
                    } else if idle >= LINGER_TICKS {
                        // `running` and `drop` unpark; an unpark before this park is not lost.
                        shared.parked.store(true, Ordering::Release);
                        std::thread::park();
                        shared.parked.store(false, Ordering::Release);
                        continue;
                    } else {
                        idle += 1;
                    }
                    std::thread::sleep(tick);
                    let Some(engine) = weak.upgrade() else { break };
                    engine.increment_epoch();
                    shared.ticks.fetch_add(1, Ordering::Relaxed);
                }
            })
            .expect("the epoch thread starts")
            .thread()
            .clone();
        Ticker { state, thread }
    }

    /// Keeps the epoch advancing until the returned guard is dropped.
    fn running(&self) -> Running {
        if self.state.running.fetch_add(1, Ordering::AcqRel) == 0 {
            self.thread.unpark();
        }
        Running(self.state.clone())
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::Release);
        self.thread.unpark();
    }
}

/// One plugin store in existence (see `Ticker`).
struct Running(Arc<TickerState>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Logs what a call wrote to stderr, if anything, and returns it.
fn log_stderr(state: &State) -> String {
    let stderr = String::from_utf8_lossy(&state.stderr.contents()).into_owned();
    if !stderr.trim().is_empty() {
        let text = printable(stderr.trim_end(), STDERR_CAPACITY);
        tracing::warn!(plugin = %state.plugin, request_id = %state.request_id, stderr = %text, "plugin stderr");
    }
    stderr
}

/// Turns a wasmtime error into a failure, and logs what the plugin wrote to stderr (a Rust panic
/// message, an allocation failure). That text stays in the log: it is the plugin's internal
/// detail, and a failure's text reaches callers.
fn classify(error: &wasmtime::Error, store: &mut Store<State>) -> Failure {
    let state = store.data();
    let stderr = log_stderr(state);
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Failure::Timeout,
        // A trap after the cap refused memory (whatever the plugin's runtime then did), or
        // Rust std's allocation failure message.
        Some(Trap::UnreachableCodeReached)
            if state.limits.memory_refused || stderr.contains("memory allocation of") =>
        {
            Failure::OutOfMemory
        }
        Some(trap) => Failure::Trap(trap.to_string()),
        None => Failure::Trap(format!("{error:#}")),
    }
}

fn wit_context(transform: &TransformRef, context: &CallContext) -> Context {
    Context {
        capability: context.capability.clone(),
        operation: context.operation.clone(),
        request_id: context.request_id.to_string(),
        config: transform.config.to_string(),
    }
}

fn headers_to_wit(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| *name != http::header::AUTHORIZATION)
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// A plugin's headers, of which there may be at most [`MAX_HEADERS`] more than it was `shown`.
fn headers_from_wit(headers: Vec<(String, String)>, shown: usize) -> Result<HeaderMap, Failure> {
    if headers.len() > shown + MAX_HEADERS {
        return Err(Failure::Malformed(format!(
            "{} headers returned for {shown}; at most {MAX_HEADERS} more are accepted",
            headers.len()
        )));
    }
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let name = HeaderName::try_from(name.as_str())
            .map_err(|_| Failure::Malformed(format!("invalid header name {name:?}")))?;
        let value = HeaderValue::try_from(value.as_str())
            .map_err(|_| Failure::Malformed(format!("invalid value for header {name}")))?;
        map.append(name, value);
    }
    Ok(map)
}

fn to_wit_request(request: &UpstreamRequest, with_body: bool) -> Request {
    // A body rendered from bound variables is never shown (and so never changed).
    let with_body = with_body && !request.sealed.hides_body;
    let body = if with_body {
        request.body.as_ref().map(|payload| match payload {
            Payload::Structured(value) | Payload::Form(value) => {
                serde_json::to_vec(value).expect("JSON values serialize")
            }
            Payload::Raw { bytes, .. } => bytes.to_vec(),
        })
    } else {
        None
    };
    Request {
        method: request.method.as_str().to_owned(),
        path: request.path.clone(),
        query: request
            .query
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect(),
        headers: headers_to_wit(&request.headers),
        body,
    }
}

fn from_wit_request(
    changed: Request,
    original: UpstreamRequest,
    with_body: bool,
) -> Result<UpstreamRequest, Failure> {
    let method = Method::from_bytes(changed.method.as_bytes())
        .map_err(|_| Failure::Malformed(format!("invalid method {:?}", changed.method)))?;
    if !stays_on_its_path(&changed.path) {
        return Err(Failure::Malformed(format!(
            "invalid path {:?}",
            changed.path
        )));
    }
    let mut query = Vec::with_capacity(changed.query.len());
    for (name, text) in changed.query {
        let value: Value = serde_json::from_str(&text).map_err(|_| {
            Failure::Malformed(format!("query parameter {name:?} is not JSON text"))
        })?;
        query.push((name, value));
    }
    let headers = headers_from_wit(changed.headers, original.headers.len())?;
    let body = if !with_body || original.sealed.hides_body {
        original.body
    } else {
        match (changed.body, original.body) {
            (None, _) => None,
            (Some(bytes), Some(Payload::Raw { content_type, .. })) => Some(Payload::Raw {
                bytes: Bytes::from(bytes),
                content_type,
            }),
            (Some(bytes), Some(Payload::Form(_))) => Some(Payload::Form(parse_json_body(&bytes)?)),
            (Some(bytes), _) => Some(Payload::Structured(parse_json_body(&bytes)?)),
        }
    };
    Ok(UpstreamRequest {
        method,
        path: changed.path,
        query,
        headers,
        body,
        sealed: original.sealed,
    })
}

/// Whether a path a plugin returned is one the upstream URL takes as it is: absolute, no
/// query, fragment or backslash, and no segment that is (or decodes to) `.` or `..` (URL
/// parsers read `%2e%2e` as `..` and a backslash as `/`).
fn stays_on_its_path(path: &str) -> bool {
    path.starts_with('/')
        && !path.contains(['?', '#', '\\', ' '])
        && path[1..].split('/').all(|segment| {
            let decoded = percent_encoding::percent_decode_str(segment).decode_utf8_lossy();
            decoded != "." && decoded != ".."
        })
}

fn parse_json_body(bytes: &[u8]) -> Result<Value, Failure> {
    serde_json::from_slice(bytes)
        .map_err(|e| Failure::Malformed(format!("the request body is not JSON: {e}")))
}

/// Builds a response from a plugin's. Headers it added or changed relative to `before` (all of
/// them when it answered instead of the upstream) are recorded as going to the caller.
fn from_wit_response(
    response: Response,
    original_body: Option<Bytes>,
    before: Option<&UpstreamResponse>,
) -> Result<UpstreamResponse, Failure> {
    let status = StatusCode::from_u16(response.status)
        .map_err(|_| Failure::Malformed(format!("invalid status {}", response.status)))?;
    let headers = headers_from_wit(response.headers, before.map_or(0, |b| b.headers.len()))?;
    let body = match (response.body, original_body) {
        (Some(bytes), _) => Bytes::from(bytes),
        (None, Some(original)) => original,
        (None, None) => Bytes::new(),
    };
    // What an earlier plugin added stays only if this one kept it: a later plugin can remove it.
    let mut from_plugins = HeaderMap::new();
    for (name, value) in &headers {
        let has = |map: &HeaderMap| map.get_all(name).iter().any(|v| v == value);
        let from_upstream = before.is_some_and(|b| has(&b.headers) && !has(&b.from_plugins));
        if !from_upstream
            && name != http::header::CONTENT_LENGTH
            && name != http::header::TRANSFER_ENCODING
        {
            from_plugins.append(name.clone(), value.clone());
        }
    }
    Ok(UpstreamResponse {
        status,
        headers,
        body,
        from_plugins,
    })
}

fn refusal(error: PluginError) -> Result<Refusal, Failure> {
    let status = StatusCode::from_u16(error.status)
        .ok()
        .filter(|s| s.is_client_error() || s.is_server_error())
        .ok_or_else(|| {
            Failure::Malformed(format!(
                "a refusal needs a 4xx or 5xx status, not {}",
                error.status
            ))
        })?;
    Ok(Refusal {
        status,
        code: error.code,
        message: error.message,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_counts_cpu_time_not_waiting() {
        let tick = Duration::from_millis(1);
        let mut budget = CpuBudget::start(tick);
        // The first stretch is not clocked: it is charged its wall time, at most one tick.
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(budget.used(), tick);
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            budget.used() < Duration::from_millis(10),
            "sleeping used {:?}",
            budget.used()
        );
        let spun = Instant::now();
        while budget.used() < Duration::from_millis(20) {
            assert!(
                spun.elapsed() < Duration::from_secs(10),
                "CPU time never advanced"
            );
        }
        // Moving to another thread starts a new stretch there and keeps what was used.
        let moved = std::thread::spawn(move || budget.used())
            .join()
            .expect("no panic");
        assert!(
            moved >= Duration::from_millis(20),
            "lost the used time: {moved:?}"
        );
    }

    #[test]
    fn the_epoch_ticks_while_stores_exist_and_parks_when_idle() {
        let engine = Engine::default();
        let ticker = Ticker::start(&engine, Duration::from_millis(1));
        let ticks = || ticker.state.ticks.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(ticks(), 0, "ticked with no store");
        let running = ticker.running();
        let waited = Instant::now();
        while ticks() < 5 {
            assert!(waited.elapsed() < Duration::from_secs(10), "never ticked");
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(running);
        let last_store = ticks();
        while !ticker.state.parked.load(Ordering::Acquire) {
            assert!(waited.elapsed() < Duration::from_secs(10), "never parked");
            std::thread::sleep(Duration::from_millis(1));
        }
        // It lingered for the next store, then parked.
        let parked = ticks();
        assert!(
            parked - last_store >= LINGER_TICKS,
            "parked after {} idle ticks",
            parked - last_store
        );
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(ticks(), parked, "kept ticking when idle");
        // And it wakes again for the next one.
        let _running = ticker.running();
        while ticks() == parked {
            assert!(waited.elapsed() < Duration::from_secs(10), "did not wake");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_later_plugin_can_remove_a_header_an_earlier_one_added() {
        let upstream = UpstreamResponse {
            status: StatusCode::OK,
            headers: HeaderMap::from_iter([(
                HeaderName::from_static("request-id"),
                HeaderValue::from_static("req_1"),
            )]),
            body: Bytes::new(),
            from_plugins: HeaderMap::new(),
        };
        let wit = |headers: &[(&str, &str)]| Response {
            status: 200,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: None,
        };
        let first = from_wit_response(
            wit(&[("request-id", "req_1"), ("x-a", "1"), ("x-b", "2")]),
            Some(Bytes::new()),
            Some(&upstream),
        )
        .unwrap();
        let names = |r: &UpstreamResponse| r.from_plugins.keys().cloned().collect::<Vec<_>>();
        assert_eq!(names(&first), ["x-a", "x-b"]);
        let second = from_wit_response(
            wit(&[("request-id", "req_1"), ("x-b", "2"), ("x-c", "3")]),
            Some(Bytes::new()),
            Some(&first),
        )
        .unwrap();
        assert_eq!(names(&second), ["x-b", "x-c"]);
    }

    #[test]
    fn the_memory_cap_counts_every_memory_of_the_instance() {
        let mib = 1024 * 1024;
        let mut limits = Limits {
            store: StoreLimitsBuilder::new().memory_size(16 * mib).build(),
            memory_cap: 16 * mib,
            memory_used: 0,
            memory_granted: 0,
            memory_refused: false,
        };
        assert!(limits.memory_growing(0, 10 * mib, None).unwrap());
        assert!(limits.memory_growing(0, 4 * mib, None).unwrap());
        // Each memory is under 16 MiB, but together they would not be.
        assert!(!limits.memory_growing(4 * mib, 8 * mib, None).unwrap());
        assert!(limits.memory_refused);
        assert!(limits.memory_growing(4 * mib, 6 * mib, None).unwrap());
        assert_eq!(limits.memory_used, 16 * mib);
        // A growth granted here that wasmtime then fails (the host could not map it, say) is
        // taken back.
        limits.memory_used = 10 * mib;
        assert!(limits.memory_growing(6 * mib, 9 * mib, None).unwrap());
        limits
            .memory_grow_failed(wasmtime::Error::msg("cannot map"))
            .unwrap();
        assert_eq!(limits.memory_used, 10 * mib);
    }

    #[test]
    fn a_call_logs_within_its_budget() {
        use bindings::capgate::transform::host::Host as _;
        let plugins = Plugins::new(&PluginsConfig::default()).unwrap();
        let mut store = plugins.store(
            Arc::from("p"),
            Arc::from("req_1"),
            1 << 20,
            Duration::from_millis(10),
        );
        let state = store.data_mut();
        let mut lines = 0;
        while !state.log_cut {
            state.log(Level::Debug, String::new());
            lines += 1;
            assert!(lines < 1000, "empty messages must use the budget up too");
        }
        // Each line costs its text and LOG_LINE_COST: 16 KiB / 64 lines, plus the one refused.
        assert_eq!(lines, LOG_CALL_BUDGET / LOG_LINE_COST + 1);
        assert_eq!(state.log_left, 0);
    }

    #[test]
    fn plugin_text_is_one_bounded_log_line() {
        assert_eq!(printable("a\nforged line", 100), "a\\nforged line");
        assert_eq!(printable("ééé", 5), "éé");
        assert_eq!(printable(&"x".repeat(5000), LOG_MESSAGE_LIMIT).len(), 2048);
    }

    #[test]
    fn plugin_results_are_validated() {
        let original = UpstreamRequest {
            method: Method::POST,
            path: "/v1/x".into(),
            query: vec![],
            headers: HeaderMap::new(),
            body: Some(Payload::Structured(serde_json::json!({"a": 1}))),
            sealed: Default::default(),
        };
        let garbage = Request {
            method: "NOT A METHOD".into(),
            path: "/v1/x".into(),
            query: vec![],
            headers: vec![],
            body: None,
        };
        assert!(matches!(
            from_wit_request(garbage, original.clone(), true),
            Err(Failure::Malformed(_))
        ));
        for path in [
            "/v1/x/../../admin",
            "/v1/x/%2e%2e/admin",
            "/v1/x/%2E./admin",
            "/v1/x/..",
            "/v1/x\\..\\admin",
            "/v1/x?y=..",
            "v1/x",
        ] {
            let climbing = Request {
                method: "GET".into(),
                path: path.into(),
                query: vec![],
                headers: vec![],
                body: None,
            };
            assert!(
                matches!(
                    from_wit_request(climbing, original.clone(), true),
                    Err(Failure::Malformed(_))
                ),
                "{path}"
            );
        }
        assert!(stays_on_its_path("/v1/sessions/vs_1%2F..%2Fx"));
        let too_many = Request {
            method: "GET".into(),
            path: "/v1/x".into(),
            query: vec![],
            headers: (0..=MAX_HEADERS)
                .map(|i| (format!("x-{i}"), "1".into()))
                .collect(),
            body: None,
        };
        assert!(matches!(
            from_wit_request(too_many, original.clone(), true),
            Err(Failure::Malformed(_))
        ));
        let fine = Request {
            method: "POST".into(),
            path: "/v1/y".into(),
            query: vec![("expand".into(), "[\"a\"]".into())],
            headers: vec![("x-a".into(), "1".into())],
            body: Some(b"{\"b\":2}".to_vec()),
        };
        let request = from_wit_request(fine, original, true).unwrap();
        assert_eq!(
            request.query,
            vec![("expand".to_owned(), serde_json::json!(["a"]))]
        );
        assert_eq!(
            request.body,
            Some(Payload::Structured(serde_json::json!({"b": 2})))
        );
        assert!(
            refusal(PluginError {
                status: 200,
                code: "x".into(),
                message: "y".into()
            })
            .is_err()
        );
    }
}
