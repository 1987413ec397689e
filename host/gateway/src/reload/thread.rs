//! The reload thread: where reloads read files and compile, off the request-serving threads.

/// The one thread reloads read and compile on: blocking work, kept off the request-serving
/// threads. One thread rather than a pool because reloads run one at a time anyway, and because
/// the allocator then keeps their memory in one arena: on a pool, each reload's garbage landed in
/// whichever thread's arena it ran on, and RSS crept up ~10 % over the first few hundred reloads
/// (see BENCHMARKS.md).
pub struct ReloadThread {
    jobs: std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>,
}

impl ReloadThread {
    /// Starts the thread; it ends when the gateway is dropped.
    pub fn start() -> ReloadThread {
        let (jobs, queue) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        std::thread::Builder::new()
            .name("capgate-reload".into())
            .spawn(move || {
                for job in queue {
                    // A panicking job (a bug) fails its caller, not the thread.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    give_back_free_memory();
                }
            })
            .expect("can start a thread");
        ReloadThread { jobs }
    }

    /// Runs a job on the thread; `None` if it panicked (a bug: the caller keeps what it had).
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (done, result) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = done.send(job());
            }))
            .expect("the reload thread outlives the gateway");
        result.await.ok()
    }
}

/// How the reload thread gives freed memory back, when the binary's allocator is not the
/// system's (`set_memory_release`).
static RELEASE: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Sets how the reload thread returns the memory a reload freed to the system, for a binary
/// with its own global allocator (glibc's `malloc_trim` does nothing for mimalloc's heaps).
/// The first call wins.
pub fn set_memory_release(release: fn()) {
    let _ = RELEASE.set(release);
}

/// Returns the memory a reload freed (the previous snapshot's, the parse trees') to the system:
/// allocators keep it otherwise, and RSS would creep up with reloads.
fn give_back_free_memory() {
    match RELEASE.get() {
        Some(release) => release(),
        None => trim_system_heap(),
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim_system_heap() {
    // SAFETY: `malloc_trim` only releases free heap pages; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_system_heap() {}
