//! The per-call store: its `State` (the WASI context, made only if the plugin calls WASI, and
//! the host `log` import with its budget), the memory cap (`Limits`), the deadline in CPU time
//! (`CpuBudget`, checked at each epoch), and what a call's stderr and errors turn into. The
//! epoch thread itself is in `ticker`; which plugin runs in a store is `host`'s.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{
    Engine, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, Trap, UpdateDeadline,
};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::Failure;
use crate::bindings;
use crate::bindings::capgate::transform::types::Level;
use crate::bindings::{Context, Request, Response};
use crate::host::{MAX_CORE_INSTANCES, MAX_MEMORIES, MAX_TABLES};
use crate::ticker::{Running, Ticker};

/// How much of a plugin's stderr is kept for the log.
const STDERR_CAPACITY: usize = 16 * 1024;
/// The longest message one `log` call writes; the rest is cut.
const LOG_MESSAGE_LIMIT: usize = 2048;
/// What one call may write through `log` in all; past it, its messages are dropped (with one
/// warning), so a plugin cannot flood the gateway's log, or block its thread on a full one.
const LOG_CALL_BUDGET: usize = 16 * 1024;
/// What each `log` line costs from the budget besides its text (the line's own fields).
const LOG_LINE_COST: usize = 64;

/// What a store holds during one call.
pub(crate) struct State {
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
    /// The current call's CPU time and deadline, which the epoch callback checks.
    budget: Arc<Mutex<CpuBudget>>,
    /// Keeps the epoch ticking during a call (an idle reused store holds none).
    running: Option<Running>,
    /// What the last calls were shown, kept for the next call of a reused instance.
    pub(crate) kept: Kept,
}

/// The WIT values a store's last calls were shown, kept so that the next call of a reused
/// instance refills their strings rather than allocating new ones (`convert::refill_*`).
#[derive(Default)]
pub(crate) struct Kept {
    pub(crate) context: Option<Context>,
    pub(crate) request: Option<Request>,
    pub(crate) response: Option<Response>,
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

impl Limits {
    fn new(memory: usize) -> Limits {
        Limits {
            store: Limits::store_limits(memory),
            memory_cap: memory,
            memory_used: 0,
            memory_granted: 0,
            memory_refused: false,
        }
    }

    fn store_limits(memory: usize) -> StoreLimits {
        StoreLimitsBuilder::new()
            .memory_size(memory)
            .instances(MAX_CORE_INSTANCES)
            .tables(MAX_TABLES)
            .memories(MAX_MEMORIES)
            .build()
    }

    /// The cap of the next call of a reused instance; what its memories hold stays counted.
    fn rearm(&mut self, memory: usize) {
        self.store = Limits::store_limits(memory);
        self.memory_cap = memory;
        self.memory_refused = false;
    }
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

/// A store for one call of `plugin`: `memory` is its cap over all its memories, `timeout` its
/// deadline in CPU time, checked at each epoch `tick` of `ticker` (which it keeps ticking).
pub(crate) fn new_store(
    engine: &Engine,
    ticker: &Ticker,
    tick: Duration,
    plugin: Arc<str>,
    request_id: Arc<str>,
    memory: usize,
    timeout: Duration,
) -> Store<State> {
    let budget = Arc::new(Mutex::new(CpuBudget::start(tick, timeout)));
    let mut store = Store::new(
        engine,
        State {
            wasi: None,
            table: ResourceTable::new(),
            limits: Limits::new(memory),
            plugin,
            request_id,
            stderr: MemoryOutputPipe::new(STDERR_CAPACITY),
            log_left: LOG_CALL_BUDGET,
            log_cut: false,
            budget: budget.clone(),
            running: Some(ticker.running()),
            kept: Kept::default(),
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
    store.epoch_deadline_callback(move |store| {
        let covered = store.data().running.as_ref().map(Running::covered);
        let mut clock = budget.lock().expect("not poisoned");
        let used = clock.used(covered.unwrap_or_default());
        if used >= clock.timeout {
            return Ok(UpdateDeadline::Interrupt);
        }
        if used < clock.yielded_at + clock.tick {
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

/// Whether a store that has just served a call without failing, which wrote `stderr`, may
/// serve another: it wrote nothing (the pipe is never emptied) and its memory cap never
/// refused it.
pub(crate) fn reusable(store: &Store<State>, stderr: &str) -> bool {
    stderr.is_empty() && !store.data().limits.memory_refused
}

/// Parks a store between calls: the epoch no longer ticks for it.
pub(crate) fn park(store: &mut Store<State>) {
    store.data_mut().running = None;
}

/// Readies a parked store for its next call, as `new_store` would have made it: a fresh
/// deadline and log budget, this call's request id and memory cap. `None` when the memory its
/// instance already holds is more than `memory` allows.
pub(crate) fn rearm(
    mut store: Store<State>,
    ticker: &Ticker,
    tick: Duration,
    request_id: Arc<str>,
    memory: usize,
    timeout: Duration,
) -> Option<Store<State>> {
    let state = store.data_mut();
    if state.limits.memory_used > memory {
        return None;
    }
    state.limits.rearm(memory);
    state.request_id = request_id;
    state.log_left = LOG_CALL_BUDGET;
    state.log_cut = false;
    *state.budget.lock().expect("not poisoned") = CpuBudget::start(tick, timeout);
    state.running = Some(ticker.running());
    store.set_epoch_deadline(1);
    Some(store)
}

/// The CPU time one plugin call has used, counted per stretch it ran on one thread.
///
/// Reading a thread's CPU clock is a system call, and most calls end long before their first
/// epoch tick: so the first stretch is not clocked. It is charged its wall time, capped at what
/// the tick that first asks covered (that tick is the first after the call started: one tick,
/// or more when the epoch thread waited for a CPU, see `ticker::Priority`), and the CPU clock
/// is read from then on.
///
/// That charge is a guess: wall time also runs while the thread is preempted or the machine
/// stalls, and a stall delays the epoch thread too, so the tick that asks covers it. A quick
/// call caught by a 10 ms stall of the host was charged 10 ms, and failed its deadline, under
/// load on the bench (BENCHMARKS.md, issue 19). So the guess alone never ends a call: it is
/// charged at most the timeout less one tick, and only clocked CPU time takes a call past its
/// deadline. A looping plugin is therefore stopped after at least its timeout of CPU time, and
/// at most one tick more (or, when its first tick came late, about as late as that tick was).
struct CpuBudget {
    used: Duration,
    /// `used` when the call last gave its thread back (or zero).
    yielded_at: Duration,
    /// The thread the current stretch runs on, and its CPU clock when the stretch began; `None`
    /// during the first, unclocked stretch.
    stretch: Option<(std::thread::ThreadId, Duration)>,
    started: Instant,
    tick: Duration,
    /// The CPU time the call may use.
    timeout: Duration,
}

impl CpuBudget {
    fn start(tick: Duration, timeout: Duration) -> CpuBudget {
        CpuBudget {
            used: Duration::ZERO,
            yielded_at: Duration::ZERO,
            stretch: None,
            started: Instant::now(),
            tick,
            timeout,
        }
    }

    /// The CPU time used so far (read on the thread the call is running on), asked at a tick
    /// that `covered` this long (see `CpuBudget`).
    fn used(&mut self, covered: Duration) -> Duration {
        match self.stretch {
            None => {
                let guess = self.started.elapsed().min(covered.max(self.tick));
                self.used += guess.min(self.timeout.saturating_sub(self.tick));
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

/// Logs what a call wrote to stderr, if anything, and returns it.
pub(crate) fn log_stderr(state: &State) -> String {
    // Only WASI writes to stderr, and a plugin that never called WASI has no context for it.
    if state.wasi.is_none() {
        return String::new();
    }
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
pub(crate) fn classify(error: &wasmtime::Error, store: &mut Store<State>) -> Failure {
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

#[cfg(test)]
mod tests {
    use capgate_model::config::PluginsConfig;

    use crate::Plugins;

    use super::*;

    #[test]
    fn the_deadline_counts_cpu_time_not_waiting() {
        let tick = Duration::from_millis(1);
        let mut budget = CpuBudget::start(tick, Duration::from_secs(1));
        // The first stretch is not clocked: it is charged its wall time, at most what the tick
        // that asks covered (never less than a tick).
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(budget.used(Duration::ZERO), tick);
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            budget.used(tick) < Duration::from_millis(10),
            "sleeping used {:?}",
            budget.used(tick)
        );
        let spun = Instant::now();
        while budget.used(tick) < Duration::from_millis(20) {
            assert!(
                spun.elapsed() < Duration::from_secs(10),
                "CPU time never advanced"
            );
        }
        // Moving to another thread starts a new stretch there and keeps what was used.
        let moved = std::thread::spawn(move || budget.used(tick))
            .join()
            .expect("no panic");
        assert!(
            moved >= Duration::from_millis(20),
            "lost the used time: {moved:?}"
        );
    }

    #[test]
    fn a_first_stretch_asked_at_a_late_tick_is_charged_up_to_what_that_tick_covered() {
        let tick = Duration::from_millis(1);
        // The epoch thread waited for a CPU: its tick came 5 ms after the one before.
        let mut budget = CpuBudget::start(tick, Duration::from_secs(1));
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(budget.used(5 * tick), 5 * tick);
        // A stretch shorter than the tick covered is charged its wall time.
        let mut budget = CpuBudget::start(tick, Duration::from_secs(1));
        std::thread::sleep(Duration::from_millis(3));
        let used = budget.used(Duration::from_secs(1));
        assert!(
            used >= Duration::from_millis(3) && used < Duration::from_secs(1),
            "charged {used:?}"
        );
    }

    #[test]
    fn a_stall_in_the_first_stretch_alone_never_takes_a_call_past_its_deadline() {
        let (tick, timeout) = (Duration::from_millis(1), Duration::from_millis(10));
        // The host stalled for 30 ms while a quick call ran: the epoch thread stalled with it,
        // so its tick covered the stall too.
        let mut budget = CpuBudget::start(tick, timeout);
        std::thread::sleep(Duration::from_millis(30));
        let used = budget.used(Duration::from_millis(30));
        assert_eq!(
            used,
            timeout - tick,
            "the guess is capped below the deadline"
        );
        // From then on the CPU clock counts: sleeping adds next to nothing, spinning does.
        std::thread::sleep(Duration::from_millis(20));
        assert!(budget.used(tick) < timeout, "waiting was charged");
        let spun = Instant::now();
        while budget.used(tick) < timeout {
            assert!(
                spun.elapsed() < Duration::from_secs(10),
                "CPU time never advanced"
            );
        }
    }

    #[test]
    fn the_memory_cap_counts_every_memory_of_the_instance() {
        let mib = 1024 * 1024;
        let mut limits = Limits::new(16 * mib);
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
}
