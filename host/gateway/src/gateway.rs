//! The running gateway: its lifecycle, and what ties the layers together. The front door
//! (`front`) answers requests, `reload` builds and publishes what they see, `server` keeps the
//! listeners; this module starts them, runs a reload when the watcher says so, applies live
//! changes of the config file, and reports state to `admin`.
//!
//! ```text
//! start:    admin listener (not ready) -> load + compile every file -> publish -> ready
//!           -> watch the specs folder, the files capabilities read, the config file
//! reload:   on the reload thread: refresh plugins, then the catalog -> publish (MCP endpoints
//!           first, then the snapshot with its plugins, then list_changed, then close removed
//!           MCP endpoints) -> open/close listeners -> tell subscribers
//! shutdown: stop watching -> close MCP streams -> stop accepting -> drain (deadline) -> exit
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::front::{Door, Published, RestPolicy, Shared};
use crate::invoke::Invoker;
use crate::mcp::Hub;
use crate::metrics::Metrics;
use crate::reload::{Catalog, FileStatus, ReloadThread, Report, Watcher, publish};
use crate::server::{self, Listeners};
use crate::upstream::Client;
use capgate_model::compile;
use capgate_model::config::Config;
use capgate_model::snapshot::{ListenKey, Snapshot};
use capgate_model::spec::Env;
use capgate_plugin::Plugins;

/// The state of the catalog, the plugins and the listeners after a reload, read-only.
#[derive(Default)]
pub struct View {
    pub generation: u64,
    pub files: Vec<FileStatus>,
    /// Plugin files with their state, when plugins are configured.
    pub plugins: Option<Vec<capgate_plugin::PluginStatus>>,
    /// Every open listener: its declared key and bound address.
    pub listeners: Vec<(ListenKey, SocketAddr)>,
    /// Every file a change to which may change what is served (specs, what they read, the
    /// config file).
    watched: Vec<PathBuf>,
    /// A change that takes something away waits for its quiet period: refresh again after it.
    recheck_after: Option<Duration>,
}

impl View {
    /// Whether some declared listener could not be opened.
    fn listen_failing(&self) -> bool {
        self.files.iter().any(|f| {
            f.diagnostics
                .iter()
                .any(|d| d.code == capgate_model::diag::Code::ListenFailed)
        })
    }
}

/// A running gateway. Cheap to clone; every clone is the same gateway.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) shared: Arc<Shared>,
    /// Locked only by the reload in turn (holding `reloading`), on the reload thread or after
    /// it finished: never by a request or an admin call, which read `view`. Locked past a
    /// poisoning: a reload that panicked (a bug) must not take every later reload down with it.
    catalog: Arc<Mutex<Catalog>>,
    /// What the catalog, the plugins and the listeners looked like after the last reload: what
    /// admin endpoints and the watch loop read, without waiting on a reload in progress.
    view: ArcSwap<View>,
    listeners: tokio::sync::Mutex<Listeners>,
    /// Reloads run one at a time, in order.
    reloading: tokio::sync::Mutex<()>,
    /// Where reloads read and compile.
    reload_thread: ReloadThread,
    published: watch::Sender<Arc<Report>>,
    ready: AtomicBool,
    stop: CancellationToken,
    admin: Mutex<Option<SocketAddr>>,
}

impl Gateway {
    /// A gateway that serves nothing yet; [`crate::start`] opens its admin listener and then
    /// calls [`Gateway::load`].
    pub fn new(config: Config) -> Gateway {
        let catalog = Catalog::new(
            config.specs.clone(),
            env_of(&config),
            options_of(&config),
            // Without a watcher nothing refreshes again: a shrink is published at once then.
            if config.reload.watch {
                config.reload.debounce
            } else {
                Duration::ZERO
            },
        );
        let metrics = Arc::new(Metrics::new());
        let plugins = start_plugins(&config);
        let invoker = Arc::new(Invoker::new(
            Client::new(&config.limits, &config.retry),
            plugins,
            metrics.clone(),
            crate::access::AccessLog::new(&config.log.access, metrics.clone()),
            crate::trace::Tracing::new(&config.tracing),
        ));
        let mcp = Hub::new(invoker.clone(), config.mcp.clone());
        let shared = Arc::new(Shared {
            rest_policy: RestPolicy::new(&config.rest),
            consumers: Arc::new(crate::consumer::Consumers::new(
                &config.consumers,
                &config.limits,
                metrics.clone(),
            )),
            metrics,
            config,
            published: ArcSwap::from_pointee(Published::default()),
            invoker,
            mcp,
        });
        Gateway {
            inner: Arc::new(Inner {
                shared,
                catalog: Arc::new(Mutex::new(catalog)),
                view: ArcSwap::from_pointee(View::default()),
                listeners: tokio::sync::Mutex::new(Listeners::default()),
                reloading: tokio::sync::Mutex::new(()),
                reload_thread: ReloadThread::start(),
                published: watch::channel(Arc::new(Report::default())).0,
                ready: AtomicBool::new(false),
                stop: CancellationToken::new(),
                admin: Mutex::new(None),
            }),
        }
    }

    /// Loads every capability file, publishes the first snapshot, opens its listeners, says it
    /// is ready and, if configured, starts watching for changes.
    pub async fn load(&self) {
        // Watch before the first load, so that a change made while it runs is not missed.
        let watching = if self.config().reload.watch {
            let (wake, woken) = mpsc::channel(1);
            match Watcher::start(self.config().reload.debounce, wake) {
                Ok(mut watcher) => {
                    watcher.watch(&self.watched_dirs(), self.config().source.clone());
                    Some((watcher, woken))
                }
                Err(error) => {
                    tracing::error!(%error, "cannot watch for changes; reloads need a restart");
                    None
                }
            }
        } else {
            None
        };
        self.reload().await;
        self.inner.ready.store(true, Ordering::SeqCst);
        if let Some((watcher, woken)) = watching {
            tokio::spawn(watch_loop(self.clone(), watcher, woken));
        }
    }

    /// Records where the admin listener listens (`admin_addr`).
    pub(crate) fn set_admin_addr(&self, address: SocketAddr) {
        *self.inner.admin.lock().expect("not poisoned") = Some(address);
    }

    /// Cancelled when the gateway stops: background work (the admin listener too) ends then.
    pub fn stopping(&self) -> CancellationToken {
        self.inner.stop.clone()
    }

    pub fn config(&self) -> &Config {
        &self.inner.shared.config
    }

    /// The folders watched as a whole: the specs folder and the plugins folder.
    fn watched_dirs(&self) -> Vec<PathBuf> {
        let config = self.config();
        std::iter::once(config.specs.clone())
            .chain(config.plugins.dir.clone())
            .collect()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.shared.metrics
    }

    /// Every plugin file's state, when plugins are configured.
    pub fn plugins(&self) -> Option<Vec<capgate_plugin::PluginStatus>> {
        self.view().plugins.clone()
    }

    /// Idle plugin instances kept for bindings with `instances: reused` (0 without plugins).
    pub fn idle_plugin_instances(&self) -> usize {
        self.inner
            .shared
            .invoker
            .plugins()
            .map_or(0, |p| p.idle_instances())
    }

    /// The consumers and where they are required.
    pub fn consumers(&self) -> &crate::consumer::Consumers {
        &self.inner.shared.consumers
    }

    /// The state after the last reload; never waits for one in progress.
    pub fn view(&self) -> Arc<View> {
        self.inner.view.load_full()
    }

    /// Re-reads what changed and publishes it; `None` when nothing changed.
    pub async fn reload(&self) -> Option<Arc<Report>> {
        let _turn = self.inner.reloading.lock().await;
        let report = self.reload_in_turn().await;
        self.reconcile_listeners_in_turn().await;
        self.update_view();
        report
    }

    /// [`Gateway::reload`]'s work, the caller holding `reloading`.
    async fn reload_in_turn(&self) -> Option<Arc<Report>> {
        let shared = &self.inner.shared;
        let previous = shared.published.load().snapshot.clone();
        let catalog = self.inner.catalog.clone();
        let plugins = shared.invoker.plugins().cloned();
        let bound = !self.config().plugins.bindings.is_empty();
        let consumers = shared.consumers.clone();
        let Some((plugins_changed, loaded, refreshed, consumers_changed)) = self
            .inner
            .reload_thread
            .run(move || {
                let consumers_changed = consumers.refresh();
                let plugins_changed = plugins.as_ref().map(|p| p.refresh()).unwrap_or_default();
                let loaded = plugins.map(|p| p.loaded()).unwrap_or_default();
                let mut catalog = catalog.lock().unwrap_or_else(PoisonError::into_inner);
                if bound {
                    catalog.set_loaded_plugins(loaded.files());
                }
                let refreshed = catalog.refresh(&previous);
                (plugins_changed, loaded, refreshed, consumers_changed)
            })
            .await
        else {
            tracing::error!(
                "reloading panicked (a bug); the running capabilities and plugins stay"
            );
            return None;
        };
        if let Some(changed) = &consumers_changed {
            // Sessions of consumers whose scopes now show other tools list them again.
            shared.mcp.notify_consumers(changed);
        }
        let report = match refreshed {
            Some((snapshot, mut report)) => {
                report.plugins_changed = plugins_changed;
                publish::publish(shared, snapshot, loaded, &report);
                Some(report)
            }
            None if !plugins_changed.is_empty() => {
                // Plugins changed but no capability did: the snapshot stays.
                publish::publish_plugins(shared, loaded);
                tracing::info!(plugins = ?plugins_changed, "plugins reloaded");
                Some(Report {
                    generation: self.generation(),
                    plugins_changed,
                    ..Report::default()
                })
            }
            None => {
                publish::count(shared, "unchanged");
                None
            }
        };
        report.map(|report| {
            let report = Arc::new(report);
            self.inner.published.send_replace(report.clone());
            report
        })
    }

    /// Publishes the state of the catalog, the plugins and the listeners for readers; the
    /// caller holds `reloading`, so the catalog lock is free.
    fn update_view(&self) {
        let catalog = self
            .inner
            .catalog
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut watched: Vec<PathBuf> = catalog.watched_files().into_iter().collect();
        watched.extend(self.config().source.clone());
        watched.extend(self.inner.shared.consumers.file().cloned());
        let listeners = self
            .inner
            .listeners
            .try_lock()
            .map(|l| l.bound())
            .unwrap_or_else(|_| self.view().listeners.clone());
        self.inner.view.store(Arc::new(View {
            generation: catalog.generation(),
            files: catalog.status(),
            plugins: self.inner.shared.invoker.plugins().map(|p| p.status()),
            listeners,
            watched,
            recheck_after: catalog.has_pending().then(|| catalog.quiet()),
        }));
    }

    /// Retries the listeners that could not be opened.
    async fn reconcile_listeners(&self) {
        let _turn = self.inner.reloading.lock().await;
        self.reconcile_listeners_in_turn().await;
        self.update_view();
    }

    /// Opens the listeners the current snapshot declares and closes the others; records the
    /// ones that cannot be opened so the files declaring them say so. The caller holds
    /// `reloading`.
    async fn reconcile_listeners_in_turn(&self) {
        let wanted: Vec<ListenKey> = self
            .inner
            .shared
            .published
            .load()
            .snapshot
            .listeners
            .keys()
            .copied()
            .collect();
        let shared = &self.inner.shared;
        let listen = &shared.config.listen;
        let failures = self
            .inner
            .listeners
            .lock()
            .await
            .reconcile(
                &wanted,
                self.connection_settings(),
                |port| listen.bind_port(port),
                |key| Door {
                    shared: shared.clone(),
                    key,
                },
            )
            .await;
        let failures: BTreeMap<ListenKey, String> =
            failures.into_iter().map(|f| (f.key, f.error)).collect();
        self.inner
            .catalog
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set_listen_failures(failures);
    }

    /// How every listener, the admin one too, treats its connections.
    pub fn connection_settings(&self) -> server::Settings {
        let limits = &self.config().limits;
        server::Settings {
            read_timeout: limits.request_read_timeout,
            drain_timeout: self.config().reload.drain_timeout,
            max_connections: limits.max_connections,
            max_connections_per_peer: limits.max_connections_per_peer,
            idle_timeout: limits.idle_timeout,
            keep_alive_interval: limits.keep_alive_interval,
            write_timeout: limits.response_write_timeout,
            max_unsent_bytes: limits.max_unsent_response_bytes,
        }
    }

    /// Every published report: the current one now, and each next one as it happens.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Report>> {
        self.inner.published.subscribe()
    }

    /// The address the listener for a declared port is bound to (the first, if several
    /// addresses declare it).
    pub async fn local_addr(&self, declared_port: u16) -> Option<SocketAddr> {
        let listeners = self.inner.listeners.lock().await;
        listeners
            .bound()
            .into_iter()
            .find(|(key, _)| key.port == declared_port)
            .map(|(_, addr)| addr)
    }

    /// Every open listener: its declared key and bound address.
    pub async fn listeners(&self) -> Vec<(ListenKey, SocketAddr)> {
        self.view().listeners.clone()
    }

    /// The admin listener's address, if it is open.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        *self.inner.admin.lock().expect("not poisoned")
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.shared.published.load().snapshot.clone()
    }

    /// Whether the first load is done.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::SeqCst)
    }

    /// Every file's state after the last reload.
    pub fn status(&self) -> Vec<FileStatus> {
        self.view().files.clone()
    }

    pub fn generation(&self) -> u64 {
        self.view().generation
    }

    /// Stops the background work (watching, the admin listener) and closes MCP streams without
    /// waiting; listeners stop when the runtime does. For owners that cannot await.
    pub fn close(&self) {
        self.inner.stop.cancel();
        self.inner.shared.mcp.close_all();
    }

    /// Stops watching, closes MCP streams, stops accepting and lets in-flight requests finish
    /// within the drain deadline.
    pub async fn shutdown(&self) {
        self.inner.stop.cancel();
        // Long-lived MCP streams end first, so connections can drain.
        self.inner.shared.mcp.close_all();
        self.inner.listeners.lock().await.shutdown().await;
        // The spans of the last requests still go out (bounded: a dead collector costs 2 s).
        self.inner
            .shared
            .invoker
            .tracing()
            .shutdown(Duration::from_secs(2))
            .await;
    }
}

fn env_of(config: &Config) -> Env {
    Env {
        overrides: config.env.clone(),
        process: true,
    }
}

fn options_of(config: &Config) -> compile::Options {
    let (schemas, errors) = compile::Schemas::load(&config.schemas);
    for error in errors {
        tracing::error!("{error}; tools of its namespaces keep their declared schemas");
    }
    compile::Options {
        schemas,
        listen: config.listen.clone(),
        upstreams: config.upstreams.clone(),
        transforms: config.plugins.bindings.clone(),
        loaded_plugins: None,
    }
}

/// The plugin host, when plugins are configured; a host that cannot start is logged and its
/// bindings fail closed.
fn start_plugins(config: &Config) -> Option<Arc<Plugins>> {
    if config.plugins.dir.is_none() && config.plugins.bindings.is_empty() {
        return None;
    }
    match Plugins::new(&config.plugins) {
        Ok(plugins) => Some(Arc::new(plugins)),
        Err(error) => {
            tracing::error!(%error, "plugins are configured but the plugin host cannot start; their operations fail");
            None
        }
    }
}

/// Reloads after every batch of file changes, and retries listeners that could not be opened.
async fn watch_loop(gateway: Gateway, mut watcher: Watcher, mut woken: mpsc::Receiver<()>) {
    let config = gateway.config();
    let mut current = config.clone();
    let watched = |gateway: &Gateway| gateway.view().watched.clone();
    watcher.watch(&gateway.watched_dirs(), watched(&gateway));
    // Once a second: is a watched folder gone or replaced (its kernel watch is then dead)?
    // Every fifth: retry listeners that could not be opened.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u64;
    // When to refresh again for a change that waits for its quiet period.
    let mut recheck_at: Option<tokio::time::Instant> = None;
    loop {
        if recheck_at.is_none()
            && let Some(after) = gateway.view().recheck_after
        {
            recheck_at = Some(tokio::time::Instant::now() + after + Duration::from_millis(10));
        }
        let recheck = recheck_at.unwrap_or_else(tokio::time::Instant::now);
        tokio::select! {
            () = tokio::time::sleep_until(recheck), if recheck_at.is_some() => {
                recheck_at = None;
                gateway.reload().await;
            }
            () = gateway.inner.stop.cancelled() => return,
            woke = woken.recv() => {
                if woke.is_none() {
                    return;
                }
                // Re-arm before reading, so that nothing written after the read is missed.
                if watcher.stale() {
                    watcher.watch(&gateway.watched_dirs(), watched(&gateway));
                }
                gateway.apply_config_changes(&mut current).await;
                gateway.reload().await;
                watcher.watch(&gateway.watched_dirs(), watched(&gateway));
            }
            _ = tick.tick() => {
                ticks += 1;
                if watcher.stale() {
                    watcher.watch(&gateway.watched_dirs(), watched(&gateway));
                    gateway.reload().await;
                    watcher.watch(&gateway.watched_dirs(), watched(&gateway));
                }
                if ticks.is_multiple_of(5) && gateway.view().listen_failing() {
                    gateway.reconcile_listeners().await;
                }
            }
        }
    }
}

impl Gateway {
    /// Re-reads the config file, if any. What compilation depends on (upstream overrides, bind
    /// values) applies at once; other changed settings are reported as needing a restart. A
    /// config file that no longer parses is reported and ignored.
    async fn apply_config_changes(&self, current: &mut Config) {
        let (Some(path), Some(reread)) = (current.source.clone(), current.reread()) else {
            return;
        };
        let next = match reread {
            Ok(next) => next,
            Err(error) => {
                tracing::error!(%error, "the changed config file is not valid; keeping the running configuration");
                return;
            }
        };
        let compile_inputs = |c: &Config| {
            (
                c.upstreams.clone(),
                c.env.clone(),
                c.plugins.bindings.clone(),
            )
        };
        if compile_inputs(&next) != compile_inputs(current) {
            tracing::info!(config = %path.display(), "upstream overrides or bind values changed; recompiling every capability");
            // Listening settings are not reloaded: keep compiling with the running ones.
            let options = compile::Options {
                listen: self.config().listen.clone(),
                upstreams: next.upstreams.clone(),
                transforms: next.plugins.bindings.clone(),
                loaded_plugins: None,
                // Schema sources are read at start, and kept.
                schemas: Default::default(),
            };
            let _turn = self.inner.reloading.lock().await;
            let mut catalog = self
                .inner
                .catalog
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let options = compile::Options {
                schemas: catalog.options().schemas.clone(),
                ..options
            };
            catalog.reconfigure(env_of(&next), options);
        }
        let rest = |c: &Config| {
            let mut c = c.clone();
            c.upstreams.clear();
            c.env.clear();
            c.plugins.bindings.clear();
            serde_json::to_string(&c).unwrap_or_default()
        };
        if rest(&next) != rest(current) {
            tracing::warn!(config = %path.display(), "settings other than upstreams and env changed; they take effect after a restart");
        }
        *current = next;
    }
}
