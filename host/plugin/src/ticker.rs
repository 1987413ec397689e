//! The epoch thread that lets plugin calls be interrupted: `Ticker` advances the engine's epoch
//! every tick while stores exist, and `Running` is the guard each store holds. What a store does
//! at each epoch (yield, time out) is in `store`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use wasmtime::Engine;

/// The thread that advances the engine's epoch every tick, while plugin calls are running.
///
/// A gateway without plugin calls should not wake up a thousand times a second: the thread
/// parks once no store has existed for `LINGER_TICKS` ticks in a row, and the next store wakes
/// it (`Ticker::running`). The linger keeps a gateway with steady plugin traffic from waking the
/// thread at each call: a store that finds the thread ticking costs no system call.
pub(crate) struct Ticker {
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
    /// Nanoseconds between the latest tick and the one before it (or the wake-up before it):
    /// a tick is late when the thread waited for a CPU (see `Priority`).
    covered: AtomicU64,
}

impl Ticker {
    pub(crate) fn start(engine: &Engine, tick: Duration) -> Ticker {
        let weak = engine.weak();
        let state = Arc::new(TickerState::default());
        let shared = state.clone();
        let thread = std::thread::Builder::new()
            .name("capgate-plugin-epoch".into())
            .spawn(move || {
                // Starts parked: no store yet.
                let mut idle = LINGER_TICKS;
                let mut priority = Priority::default();
                let mut last = Instant::now();
                while !shared.stopped.load(Ordering::Acquire) {
                    if shared.running.load(Ordering::Acquire) > 0 {
                        idle = 0;
                    } else if idle >= LINGER_TICKS {
                        // A store that comes after this sees `parked` and unparks (both sides
                        // write, then read the other's flag, all `SeqCst`: one of them sees the
                        // other's write); an unpark before this park is not lost.
                        shared.parked.store(true, Ordering::SeqCst);
                        if shared.running.load(Ordering::SeqCst) == 0 {
                            std::thread::park();
                        }
                        shared.parked.store(false, Ordering::SeqCst);
                        last = Instant::now();
                        continue;
                    } else {
                        idle += 1;
                    }
                    std::thread::sleep(tick);
                    let Some(engine) = weak.upgrade() else { break };
                    let now = Instant::now();
                    let covered = now.duration_since(last).as_nanos();
                    shared
                        .covered
                        .store(covered.try_into().unwrap_or(u64::MAX), Ordering::Release);
                    last = now;
                    engine.increment_epoch();
                    shared.ticks.fetch_add(1, Ordering::Relaxed);
                    priority.set(shared.running.load(Ordering::Acquire) > 0);
                }
            })
            .expect("the epoch thread starts")
            .thread()
            .clone();
        Ticker { state, thread }
    }

    /// Keeps the epoch advancing until the returned guard is dropped.
    pub(crate) fn running(&self) -> Running {
        // Unparking a thread that is not parked still writes to its parker: a store made while
        // the thread ticks (most of them, under load) leaves it alone.
        if self.state.running.fetch_add(1, Ordering::SeqCst) == 0
            && self.state.parked.load(Ordering::SeqCst)
        {
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

/// How the epoch thread competes for a CPU with the threads serving requests.
///
/// A tick that preempts a request's thread costs that thread a context switch each way and
/// its caches, a thousand times a second, whether or not a plugin call needs the tick: on the
/// consumer chain's bench (one worker, one CPU) that was about 6 % of its throughput. Most
/// ticks find no call running, and a call that starts after one needs none before the next.
/// So while the last tick found no call running, the thread runs as a batch thread
/// (`SCHED_BATCH`): its wake-ups do not preempt; it ticks as soon as a CPU is free, or at the
/// scheduler's next tick on a busy one. Once a tick finds a call running (one that may run
/// long), the thread takes back its normal priority, and its ticks preempt again until one
/// finds none running. A call that loops is therefore first interrupted up to a scheduler
/// tick late, once, and on time from then on.
#[derive(Debug, Default)]
struct Priority {
    batch: bool,
}

impl Priority {
    /// Preempts (normal scheduling) while `calls_running`, else runs as a batch thread.
    fn set(&mut self, calls_running: bool) {
        let batch = !calls_running;
        if batch != self.batch {
            self.batch = batch;
            set_batch_scheduling(batch);
        }
    }
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn set_batch_scheduling(batch: bool) {
    let policy = if batch {
        libc::SCHED_BATCH
    } else {
        libc::SCHED_OTHER
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: thread 0 is the calling thread, and `param` is a valid sched_param (priority 0
    // is the only one these two policies take). A failure leaves the policy as it was.
    unsafe { libc::sched_setscheduler(0, policy, &param) };
}

#[cfg(not(target_os = "linux"))]
fn set_batch_scheduling(_batch: bool) {}

/// One plugin store in existence (see `Ticker`).
pub(crate) struct Running(Arc<TickerState>);

impl Running {
    /// How long the latest tick covered: the time since the tick (or the wake-up) before it,
    /// at least one tick, more when the thread waited for a CPU. A call first asked at this
    /// tick started no earlier than that.
    pub(crate) fn covered(&self) -> Duration {
        Duration::from_nanos(self.0.covered.load(Ordering::Acquire))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    #[allow(unsafe_code)]
    fn the_epoch_thread_preempts_only_while_a_call_runs() {
        // On a thread of its own: the policy is the calling thread's.
        std::thread::spawn(|| {
            // SAFETY: thread 0 is the calling thread.
            let policy = || unsafe { libc::sched_getscheduler(0) };
            let mut priority = Priority::default();
            assert_eq!(policy(), libc::SCHED_OTHER);
            priority.set(false);
            assert_eq!(policy(), libc::SCHED_BATCH, "no call running: batch");
            priority.set(false);
            assert_eq!(policy(), libc::SCHED_BATCH);
            priority.set(true);
            assert_eq!(policy(), libc::SCHED_OTHER, "a call running: preempts");
        })
        .join()
        .expect("no panic");
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
}
