//! `Plugins`, the plugin host: the engine (pooling allocator, epoch interruption) and its
//! linker (minimal WASI and the `host` interface), loading and hot-reloading the plugins folder
//! (a broken file keeps serving its last good version), and running a plugin's hooks. Also the
//! types it hands out: `Plugin`, `PluginSet`, `PluginStatus` and `PluginState`. What a call's
//! store holds is in `store`, the artifact cache in `cache`, the WIT conversions in `convert`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::{Semaphore, SemaphorePermit};
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

use capgate_model::config::PluginsConfig;
use capgate_model::exchange::{UpstreamRequest, UpstreamResponse};
use capgate_model::snapshot::TransformRef;

use crate::bindings::{Context, RequestAction, Transform, TransformPre};
use crate::convert::{
    from_wit_request, from_wit_response, refill_context, refill_request, refill_response, refusal,
    request_unchanged, response_unchanged, to_wit_request, to_wit_response, wit_context,
};
use crate::store::{State, classify, log_stderr, new_store, park, rearm, reusable};
use crate::ticker::Ticker;
use crate::{CallContext, Failure, HostError, RequestOutcome, ResponseOutcome, cache};

/// What one plugin instance may hold. The pool has this much for every call slot, so a call
/// that has its slot never fails for want of pool capacity, whatever other plugins hold; a
/// component that needs more does not load.
pub(crate) const MAX_CORE_INSTANCES: usize = 8;
pub(crate) const MAX_MEMORIES: usize = 2;
pub(crate) const MAX_TABLES: usize = 8;

/// A look at the plugins folder.
type Scan = (Vec<(String, PathBuf)>, Vec<String>);

/// The digest last tried of each file, and its status, by file name.
type Tried = BTreeMap<String, (String, PluginStatus)>;

/// Loaded plugins by file name (names from the folder, looked up on every hook: a fast hash).
type Loaded = HashMap<String, Arc<Plugin>, foldhash::fast::RandomState>;

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
    /// Idle instances left by calls of bindings with `instances: reused`, the last one left
    /// last. They go with this version of the plugin.
    warm: Mutex<Vec<Warm>>,
}

/// An idle instance and its store, counted among the host's idle instances while it exists.
struct Warm {
    store: Store<State>,
    instance: Transform,
    _idle: Idle,
}

/// One of the host's idle instances: counted from `Idle::reserve` until dropped.
struct Idle(Arc<AtomicUsize>);

impl Idle {
    /// Counts one more idle instance, unless there are `most` already.
    fn reserve(count: &Arc<AtomicUsize>, most: usize) -> Option<Idle> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < most).then_some(n + 1)
            })
            .ok()
            .map(|_| Idle(count.clone()))
    }
}

impl Drop for Idle {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An instance serving one call, and the pool slot it holds until dropped.
struct Call<'a> {
    store: Store<State>,
    instance: Transform,
    _slot: SemaphorePermit<'a>,
}

impl Call<'_> {
    /// The plugin's `context` for this call: the one the store's last call was given, refilled,
    /// or a new one. The caller hands it back to the store after the call.
    fn context(&mut self, transform: &TransformRef, context: &CallContext<'_>) -> Context {
        match self.store.data_mut().kept.context.take() {
            Some(mut kept) => {
                refill_context(&mut kept, transform, context);
                kept
            }
            None => wit_context(transform, context),
        }
    }
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

/// Where one plugin file stands, for the admin endpoint: serialized as `loaded`,
/// `serving-last-good` or `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PluginState {
    /// Its current contents loaded, and serve.
    Loaded,
    /// Its current contents do not load; the version loaded before serves.
    ServingLastGood,
    /// Its current contents do not load, and no earlier version did.
    Failed,
}

impl PluginState {
    /// The state as the admin endpoint spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginState::Loaded => "loaded",
            PluginState::ServingLastGood => "serving-last-good",
            PluginState::Failed => "failed",
        }
    }
}

/// The state of one plugin file, for the admin endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct PluginStatus {
    pub file: String,
    /// `loaded`, `serving-last-good` or `failed`.
    pub state: PluginState,
    pub name: Option<String>,
    pub version: Option<String>,
    pub digest: Option<String>,
    pub error: Option<String>,
}

/// The loaded plugins at one moment, by file name. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct PluginSet(Arc<Loaded>);

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
    loaded: ArcSwap<Loaded>,
    /// Per file: the digest last tried and its status.
    files: Mutex<Tried>,
    slots: Arc<Semaphore>,
    /// Idle instances kept, all plugins together (at most `config.warm_instances`).
    idle: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Plugins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugins")
            .field("dir", &self.config.dir)
            .finish()
    }
}

impl Plugins {
    /// Creates the engine (pooling allocator, epoch interruption) and the linker, and starts the
    /// epoch ticker.
    pub fn new(config: &PluginsConfig) -> Result<Plugins, HostError> {
        let slots = config.max_concurrent_calls.max(1);
        let mut pool = PoolingAllocationConfig::default();
        // Every call slot's share, and as many again for the idle instances kept.
        let per_slot = |n: usize| ((slots + config.warm_instances) * n) as u32;
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
            loaded: ArcSwap::from_pointee(Loaded::default()),
            files: Mutex::new(BTreeMap::new()),
            slots: Arc::new(Semaphore::new(slots)),
            idle: Arc::new(AtomicUsize::new(0)),
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

    /// Idle instances kept for bindings with `instances: reused`, all plugins together.
    pub fn idle_instances(&self) -> usize {
        self.idle.load(Ordering::Acquire)
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
            if self.refresh_file(&name, &path, &mut loaded, &mut files) {
                changed.push(name);
            }
        }
        self.loaded.store(Arc::new(loaded));
        changed
    }

    /// Loads one file of the folder if it changed since it was last tried, and records the
    /// outcome in `loaded` (the new version, or the previous one kept) and `files` (its status).
    /// Returns whether it was tried (its state changed).
    fn refresh_file(
        &self,
        name: &str,
        path: &Path,
        loaded: &mut Loaded,
        files: &mut Tried,
    ) -> bool {
        let bytes = match capgate_model::read::bytes(path, capgate_model::read::PLUGIN_LIMIT) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::warn!(plugin = %name, %error, "cannot read plugin file");
                return false;
            }
        };
        let digest = cache::digest(&bytes);
        if files.get(name).is_some_and(|(tried, _)| tried == &digest) {
            return false;
        }
        let started = Instant::now();
        match self.load(name, &bytes, &digest) {
            Ok(plugin) => {
                tracing::info!(plugin = %name, name = %plugin.name, version = %plugin.version, took_ms = started.elapsed().as_millis() as u64, "plugin loaded");
                let status = PluginStatus {
                    file: name.to_owned(),
                    state: PluginState::Loaded,
                    name: Some(plugin.name.to_string()),
                    version: Some(plugin.version.clone()),
                    digest: Some(digest.clone()),
                    error: None,
                };
                loaded.insert(name.to_owned(), Arc::new(plugin));
                files.insert(name.to_owned(), (digest, status));
            }
            Err(error) => {
                let previous = loaded.get(name);
                tracing::error!(plugin = %name, %error, keeps_previous = previous.is_some(), "plugin does not load");
                let status = PluginStatus {
                    file: name.to_owned(),
                    state: if previous.is_some() {
                        PluginState::ServingLastGood
                    } else {
                        PluginState::Failed
                    },
                    name: previous.map(|p| p.name.to_string()),
                    version: previous.map(|p| p.version.clone()),
                    digest: previous.map(|p| p.digest.clone()),
                    error: Some(error),
                };
                files.insert(name.to_owned(), (digest, status));
            }
        }
        true
    }

    /// Compiles (or loads from the cache), links and asks the plugin for its info.
    fn load(&self, file: &str, bytes: &[u8], digest: &str) -> Result<Plugin, String> {
        let component = cache::compile(
            &self.engine,
            self.config.cache_dir.as_deref(),
            bytes,
            digest,
        )?;
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
            warm: Mutex::new(Vec::new()),
        })
    }

    /// A store for one call (see `store::new_store`), ticking with this host's epoch.
    pub(crate) fn store(
        &self,
        plugin: Arc<str>,
        request_id: Arc<str>,
        memory: usize,
        timeout: Duration,
    ) -> Store<State> {
        new_store(
            &self.engine,
            &self.ticker,
            self.config.epoch_tick,
            plugin,
            request_id,
            memory,
            timeout,
        )
    }

    /// An instance of `plugin` for one call, with the transform's memory cap and deadline,
    /// holding one of the pool's slots until it is dropped: an idle one an earlier call left
    /// when the binding reuses instances and there is one, else a fresh one in a store of its
    /// own.
    async fn instantiate(
        &self,
        plugin: &Plugin,
        transform: &TransformRef,
        context: &CallContext<'_>,
    ) -> Result<Call<'_>, Failure> {
        let slot = self.slots.acquire().await.expect("never closed");
        if transform.reuse {
            while let Some(Warm {
                store, instance, ..
            }) = plugin.warm.lock().expect("not poisoned").pop()
            {
                let rearmed = rearm(
                    store,
                    &self.ticker,
                    self.config.epoch_tick,
                    context.request_id.clone(),
                    transform.memory,
                    transform.timeout,
                );
                if let Some(store) = rearmed {
                    return Ok(Call {
                        store,
                        instance,
                        _slot: slot,
                    });
                }
            }
        }
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
        Ok(Call {
            store,
            instance,
            _slot: slot,
        })
    }

    /// After a call that did not fail, and wrote `stderr`: keeps its instance idle for the next
    /// call when the binding reuses instances, the instance is still sound, and fewer than
    /// `warm_instances` are idle; drops it otherwise.
    fn release(&self, plugin: &Plugin, transform: &TransformRef, call: Call<'_>, stderr: &str) {
        let Call {
            mut store,
            instance,
            ..
        } = call;
        if !transform.reuse || !reusable(&store, stderr) {
            return;
        }
        let Some(idle) = Idle::reserve(&self.idle, self.config.warm_instances) else {
            return;
        };
        park(&mut store);
        plugin.warm.lock().expect("not poisoned").push(Warm {
            store,
            instance,
            _idle: idle,
        });
    }

    /// Runs `on-request` of `plugin` (the one `transform` names, as the caller resolved it).
    pub async fn on_request(
        &self,
        plugin: &Plugin,
        transform: &TransformRef,
        context: &CallContext<'_>,
        request: UpstreamRequest,
    ) -> Result<RequestOutcome, Failure> {
        if !plugin.handles_requests {
            return Ok(RequestOutcome::Skipped(request));
        }
        let mut call = self.instantiate(plugin, transform, context).await?;
        let wit_context = call.context(transform, context);
        let kept = call.store.data_mut().kept.request.take();
        let wit_request = match kept {
            Some(mut shown) => {
                refill_request(&mut shown, &request, plugin.needs_request_body);
                shown
            }
            None => to_wit_request(&request, plugin.needs_request_body),
        };
        let result = call
            .instance
            .call_on_request(&mut call.store, &wit_context, &wit_request)
            .await
            .map_err(|e| classify(&e, &mut call.store))?;
        let unchanged = matches!(&result, Ok(RequestAction::Forward(changed))
            if request_unchanged(changed, &wit_request, &request));
        let kept = &mut call.store.data_mut().kept;
        (kept.context, kept.request) = (Some(wit_context), Some(wit_request));
        let stderr = log_stderr(call.store.data());
        self.release(plugin, transform, call, &stderr);
        match result {
            Ok(RequestAction::Forward(_)) if unchanged => Ok(RequestOutcome::Forward(request)),
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
        context: &CallContext<'_>,
        response: UpstreamResponse,
    ) -> Result<ResponseOutcome, Failure> {
        if !plugin.handles_responses {
            return Ok(ResponseOutcome::Skipped(response));
        }
        let mut call = self.instantiate(plugin, transform, context).await?;
        let wit_context = call.context(transform, context);
        let kept = call.store.data_mut().kept.response.take();
        let wit_response = match kept {
            Some(mut shown) => {
                refill_response(&mut shown, &response, plugin.needs_response_body);
                shown
            }
            None => to_wit_response(&response, plugin.needs_response_body),
        };
        let result = call
            .instance
            .call_on_response(&mut call.store, &wit_context, &wit_response)
            .await
            .map_err(|e| classify(&e, &mut call.store))?;
        let unchanged = matches!(&result, Ok(changed)
            if response_unchanged(changed, &wit_response, &response));
        let kept = &mut call.store.data_mut().kept;
        (kept.context, kept.response) = (Some(wit_context), Some(wit_response));
        let stderr = log_stderr(call.store.data());
        self.release(plugin, transform, call, &stderr);
        match result {
            Ok(_) if unchanged => Ok(ResponseOutcome::Forward(response)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugin_state_is_spelled_as_the_admin_endpoint_shows_it() {
        for state in [
            PluginState::Loaded,
            PluginState::ServingLastGood,
            PluginState::Failed,
        ] {
            assert_eq!(
                serde_json::to_value(state).unwrap(),
                serde_json::Value::from(state.as_str())
            );
        }
        assert_eq!(PluginState::ServingLastGood.as_str(), "serving-last-good");
    }
}
