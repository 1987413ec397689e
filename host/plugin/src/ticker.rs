//! The epoch thread that lets plugin calls be interrupted: `Ticker` advances the engine's epoch
//! every tick while stores exist, and `Running` is the guard each store holds. What a store does
//! at each epoch (yield, time out) is in `store`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

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
    pub(crate) fn running(&self) -> Running {
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
pub(crate) struct Running(Arc<TickerState>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

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
