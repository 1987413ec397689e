//! The access log: one JSON line per REST request and per MCP tool call, written off the
//! request path.
//!
//! A request fills an [`Exchange`] as it goes (the upstream layer records its attempts and
//! time, the pipeline its plugins' time) through a task-local, so no layer needs a parameter
//! for it. The line is handed to a writer thread through a bounded queue: when the queue is
//! full the line is dropped and counted (`capgate_access_log_dropped_total`), and the request
//! never waits. A line names the route template, never the raw path with its ids, and carries
//! no key, token, bound value or body.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::metrics::Metrics;
use capgate_model::config::AccessLogConfig;

tokio::task_local! {
    static CURRENT: Arc<Exchange>;
}

/// What the pipeline learns about one request's upstream side.
#[derive(Debug, Default)]
pub struct Exchange {
    upstream_status: AtomicU16,
    retries: AtomicU32,
    upstream_micros: AtomicU64,
    plugin_micros: AtomicU64,
}

/// Runs `future` with `exchange` as the request's record.
///
/// A plain function, not an `async fn`: an `async fn` keeps its argument and the future it
/// awaits in separate slots of its own state, so each such wrapper doubles the size of a
/// request's future, which is then copied whenever it moves (BENCHMARKS.md, issue 22).
pub fn recording<F: Future>(exchange: Arc<Exchange>, future: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(exchange, future)
}

/// The upstream answered `status` after `retries` retries (in the current request's record).
pub fn upstream_answered(status: u16, retries: u32) {
    let _ = CURRENT.try_with(|e| {
        e.upstream_status.store(status, Ordering::Relaxed);
        e.retries.store(retries, Ordering::Relaxed);
    });
}

/// The upstream exchange took `took`, retries included.
pub fn upstream_took(took: Duration) {
    let _ = CURRENT.try_with(|e| {
        e.upstream_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed)
    });
}

/// A plugin hook took `took`.
pub fn plugin_took(took: Duration) {
    let _ = CURRENT.try_with(|e| {
        e.plugin_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed)
    });
}

/// One line of the access log.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    pub time: String,
    pub request_id: &'a str,
    /// `rest` or `mcp`.
    pub surface: &'static str,
    pub consumer: Option<&'a str>,
    /// The key's public prefix or the token's issuer and key id.
    pub credential: Option<&'a str>,
    /// The capability (its file name without the extension).
    pub capability: Option<&'a str>,
    pub adapter: Option<&'a str>,
    /// The operation (REST) or tool (MCP).
    pub operation: Option<&'a str>,
    pub method: &'a str,
    /// The route's path template (REST) or `tools/call` (MCP).
    pub route: &'a str,
    pub status: u16,
    pub upstream_status: Option<u16>,
    pub retries: u32,
    pub duration_ms: f64,
    pub upstream_ms: f64,
    pub plugins_ms: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// `admitted` (with the tightest limit's room left), `limited`, or none when no limit
    /// applied.
    pub limit: Option<&'static str>,
    pub limit_remaining: Option<u64>,
    /// The trace this request is part of, when traced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// Where access log lines go, if anywhere.
pub struct AccessLog {
    queue: Option<SyncSender<String>>,
    metrics: Arc<Metrics>,
}

impl AccessLog {
    pub fn new(config: &AccessLogConfig, metrics: Arc<Metrics>) -> AccessLog {
        let sink: Box<dyn Write + Send> = match config.to.as_str() {
            "off" | "" => {
                return AccessLog {
                    queue: None,
                    metrics,
                };
            }
            "stdout" => Box::new(std::io::stdout()),
            path => match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                Ok(file) => Box::new(file),
                Err(error) => {
                    tracing::error!(path, %error, "cannot open the access log; access logging is off");
                    return AccessLog {
                        queue: None,
                        metrics,
                    };
                }
            },
        };
        AccessLog::with_sink(sink, config.queue, metrics)
    }

    /// Lines go to `sink`, from a thread of their own, through a queue of `queue` lines.
    fn with_sink(sink: Box<dyn Write + Send>, queue: usize, metrics: Arc<Metrics>) -> AccessLog {
        let (queue, lines) = std::sync::mpsc::sync_channel::<String>(queue.max(1));
        let spawned = std::thread::Builder::new()
            .name("capgate-access-log".into())
            .spawn(move || write_lines(sink, &lines));
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start the access log writer; access logging is off");
            return AccessLog {
                queue: None,
                metrics,
            };
        }
        AccessLog {
            queue: Some(queue),
            metrics,
        }
    }

    pub fn is_on(&self) -> bool {
        self.queue.is_some()
    }

    /// Queues `entry`'s line; drops it (counted) when the writer is behind.
    pub fn write(&self, entry: &Entry<'_>) {
        let Some(queue) = &self.queue else {
            return;
        };
        let Ok(line) = serde_json::to_string(entry) else {
            return;
        };
        match queue.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.metrics.access_log_dropped.inc();
            }
        }
    }
}

/// Writes lines as they come, flushing whenever the queue is empty.
fn write_lines(sink: Box<dyn Write + Send>, lines: &std::sync::mpsc::Receiver<String>) {
    let mut out = std::io::BufWriter::new(sink);
    while let Ok(line) = lines.recv() {
        let _ = writeln!(out, "{line}");
        while let Ok(line) = lines.try_recv() {
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    }
}

/// A request being timed and recorded, from its start.
pub struct Timing {
    pub started: Instant,
    pub exchange: Arc<Exchange>,
}

impl Timing {
    pub fn start() -> Timing {
        Timing {
            started: Instant::now(),
            exchange: Arc::new(Exchange::default()),
        }
    }

    /// Fills `entry`'s timings and upstream fields from what was recorded.
    pub fn finish(&self, entry: &mut Entry<'_>) {
        let e = &self.exchange;
        entry.time = capgate_model::calendar::rfc3339_millis(SystemTime::now());
        entry.duration_ms = millis(self.started.elapsed().as_micros() as u64);
        entry.upstream_ms = millis(e.upstream_micros.load(Ordering::Relaxed));
        entry.plugins_ms = millis(e.plugin_micros.load(Ordering::Relaxed));
        let status = e.upstream_status.load(Ordering::Relaxed);
        entry.upstream_status = (status != 0).then_some(status);
        entry.retries = e.retries.load(Ordering::Relaxed);
    }
}

fn millis(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

impl Default for Entry<'_> {
    fn default() -> Self {
        Entry {
            time: String::new(),
            request_id: "",
            surface: "rest",
            consumer: None,
            credential: None,
            capability: None,
            adapter: None,
            operation: None,
            method: "",
            route: "",
            status: 0,
            upstream_status: None,
            retries: 0,
            duration_ms: 0.0,
            upstream_ms: 0.0,
            plugins_ms: 0.0,
            bytes_in: 0,
            bytes_out: 0,
            limit: None,
            limit_remaining: None,
            trace_id: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that never finishes a write, as a full disk or a stuck pipe; it says when it is
    /// stuck.
    struct Stuck {
        entered: std::sync::mpsc::Sender<()>,
        release: std::sync::mpsc::Receiver<()>,
    }

    impl Write for Stuck {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            let _ = self.entered.send(());
            let _ = self.release.recv();
            Err(std::io::ErrorKind::BrokenPipe.into())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_writer_drops_lines_and_never_blocks_a_request() {
        let (_release, release) = std::sync::mpsc::channel();
        let (entered, stuck) = std::sync::mpsc::channel();
        let metrics = Arc::new(Metrics::new());
        let log = AccessLog::with_sink(Box::new(Stuck { entered, release }), 2, metrics.clone());
        log.write(&Entry::default());
        stuck.recv().unwrap();
        // The writer is stuck on the first line: two more fit the queue, the rest are dropped
        // and counted, and no write waits.
        for _ in 0..10 {
            log.write(&Entry::default());
        }
        assert_eq!(metrics.access_log_dropped.get(), 8);
    }
}
