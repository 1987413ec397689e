//! Listeners: TCP listeners serving HTTP/1 and HTTP/2 with hyper, with read deadlines and a
//! graceful drain. [`Listeners`] keeps one per (address, declared port), opened and closed as
//! snapshots come and go; the admin listener runs the same accept loop ([`serve`]).
//!
//! This module knows nothing of what is served: each listener answers through a [`Handler`]
//! (the front door, or the admin endpoints). A listener only knows its key.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use capgate_model::snapshot::ListenKey;

use crate::error::GatewayError;
use crate::response::HttpResponse;

mod connection;

pub use connection::{Admission, Refusal};
use connection::{Admitted, Tracked, Verdict, Watch};

/// What answers the requests of one listener.
pub trait Handler: Clone + Send + Sync + 'static {
    fn handle(&self, request: http::Request<Incoming>)
    -> impl Future<Output = HttpResponse> + Send;
}

/// The address of the client a request came from, in the request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

/// How every listener treats its connections.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// `limits.request_read_timeout`: for a connection's first bytes, every request's headers
    /// and (through [`ReadDeadline`]) its body; zero turns it off.
    pub read_timeout: Duration,
    /// `reload.drain_timeout`: how long a closing listener waits for its connections.
    pub drain_timeout: Duration,
    /// `limits.max_connections`: open connections per listener (0: no cap).
    pub max_connections: usize,
    /// `limits.max_connections_per_peer`: open connections per listener from one IP address
    /// (0: no cap).
    pub max_connections_per_peer: usize,
    /// `limits.idle_timeout`: a connection without a request in progress for this long is
    /// closed (gracefully; HTTP/2 with GOAWAY). 0 turns it off.
    pub idle_timeout: Duration,
    /// `limits.keep_alive_interval`: HTTP/2 pings this often, and a peer that does not answer
    /// one within it is disconnected. 0 turns pings off.
    pub keep_alive_interval: Duration,
    /// `limits.response_write_timeout`: how long a response (and any one write) may wait for
    /// the client to read it; past it, the connection is closed. 0 turns it off.
    pub write_timeout: Duration,
    /// `limits.max_unsent_response_bytes`: response bytes a connection may leave unread;
    /// further responses on it get 503 until it reads. 0 turns it off.
    pub max_unsent_bytes: usize,
}

/// A request body that must arrive in full within a time limit, counted from when it is first
/// read: past it, reading fails with [`ReadError::TimedOut`]. A body that is already complete
/// (a GET's) costs no timer.
pub struct ReadDeadline<B> {
    body: B,
    limit: Duration,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> ReadDeadline<B> {
    pub fn new(body: B, limit: Duration) -> Self {
        ReadDeadline {
            body,
            limit,
            deadline: None,
        }
    }
}

/// Why a [`ReadDeadline`] body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the request body could not be read: {0}")]
    Body(Box<dyn std::error::Error + Send + Sync>),
    #[error("the request body did not arrive within {} ms", .0.as_millis())]
    TimedOut(Duration),
}

impl<B> http_body::Body for ReadDeadline<B>
where
    B: http_body::Body + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = ReadError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, ReadError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(|e| ReadError::Body(e.into()))));
        }
        if this.limit.is_zero() {
            return Poll::Pending;
        }
        let limit = this.limit;
        let deadline = this
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(ReadError::TimedOut(limit)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The listeners currently open.
#[derive(Default)]
pub struct Listeners {
    running: BTreeMap<ListenKey, Running>,
}

struct Running {
    local: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// A listener that could not be opened.
#[derive(Debug, Clone)]
pub struct BindFailure {
    pub key: ListenKey,
    pub address: SocketAddr,
    pub error: String,
}

impl Listeners {
    pub fn bound(&self) -> Vec<(ListenKey, SocketAddr)> {
        self.running.iter().map(|(k, r)| (*k, r.local)).collect()
    }

    /// Opens the listeners in `wanted` that are not open and closes (draining) the others.
    /// `bind_port` maps a declared port to the one to bind; `handler` makes each new
    /// listener's handler.
    pub async fn reconcile<H: Handler>(
        &mut self,
        wanted: &[ListenKey],
        settings: Settings,
        bind_port: impl Fn(u16) -> u16,
        handler: impl Fn(ListenKey) -> H,
    ) -> Vec<BindFailure> {
        let closing: Vec<ListenKey> = self
            .running
            .keys()
            .filter(|k| !wanted.contains(k))
            .copied()
            .collect();
        for key in closing {
            if let Some(running) = self.running.remove(&key) {
                tracing::info!(listener = %key, address = %running.local, "closing listener: no capability declares it any more");
                running.stop.cancel();
                // Draining happens in the listener's own task; nothing waits for it here.
                drop(running.task);
            }
        }
        let mut failures = Vec::new();
        for key in wanted {
            if self.running.contains_key(key) {
                continue;
            }
            let port = bind_port(key.port);
            let address = key.socket_addr(port);
            match TcpListener::bind(address).await {
                Ok(listener) => {
                    let local = listener.local_addr().unwrap_or(address);
                    let stop = CancellationToken::new();
                    let task = tokio::spawn(serve(
                        listener,
                        key.to_string(),
                        handler(*key),
                        settings,
                        stop.clone(),
                    ));
                    tracing::info!(listener = %key, address = %local, "listening");
                    self.running.insert(*key, Running { local, stop, task });
                }
                Err(error) => {
                    tracing::error!(listener = %key, %address, %error, "cannot open listener");
                    failures.push(BindFailure {
                        key: *key,
                        address,
                        error: error.to_string(),
                    });
                }
            }
        }
        failures
    }

    /// Stops accepting on every listener and waits until their connections finished or the
    /// drain deadline passed.
    pub async fn shutdown(&mut self) {
        let running = std::mem::take(&mut self.running);
        for r in running.values() {
            r.stop.cancel();
        }
        for (_, r) in running {
            let _ = r.task.await;
        }
    }
}

/// Accepts connections on `listener` and answers them with `handler` until `stop`, then lets
/// the open connections finish within the drain deadline. `name` names the listener in logs.
///
/// Connections over the listener's or the peer's cap are closed at once; `accept` errors (out
/// of file descriptors) back off, doubling from 10 ms to 1 s, and are logged once per burst.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    name: String,
    handler: H,
    settings: Settings,
    stop: CancellationToken,
) {
    let admission = Admission::new(settings.max_connections, settings.max_connections_per_peer);
    let mut bursts = Bursts::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                let delay = bursts.accept_failed(&name, &error);
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        bursts.accepted(&name);
        let admitted = match admission.admit(peer.ip()) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                bursts.refused(&name, refusal, peer.ip());
                drop(stream);
                continue;
            }
        };
        tokio::spawn(connection(
            stream,
            peer,
            admitted,
            handler.clone(),
            settings,
            stop.clone(),
        ));
    }
    drop(listener);
    if let Some(summary) = bursts.summary() {
        tracing::warn!(listener = %name, "{summary}");
    }
    let deadline = settings.drain_timeout;
    let drained = async {
        loop {
            let notified = admission.drained.notified();
            if admission.open() == 0 {
                return;
            }
            notified.await;
        }
    };
    tokio::select! {
        () = drained => tracing::debug!(listener = %name, "drained"),
        () = tokio::time::sleep(deadline) => {
            tracing::warn!(listener = %name, deadline_ms = deadline.as_millis() as u64, "drain deadline passed; closing the remaining connections");
        }
    }
}

/// Serves one admitted connection until it ends, is closed for idling or stalling, or the
/// listener stops (then gracefully: in-flight requests finish).
async fn connection<H: Handler>(
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    admitted: Admitted,
    handler: H,
    settings: Settings,
    stop: CancellationToken,
) {
    let _admitted = admitted;
    let _ = stream.set_nodelay(true);
    let read_timeout = Some(settings.read_timeout).filter(|t| !t.is_zero());
    let watch = Watch::new();
    let asked = Arc::new(AtomicBool::new(false));
    let service = {
        let (asked, watch) = (asked.clone(), watch.clone());
        hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
            asked.store(true, Ordering::Relaxed);
            request.extensions_mut().insert(Peer(peer));
            let handler = handler.clone();
            let stream = watch.stream();
            let watch = watch.clone();
            async move {
                let response = handler.handle(request).await;
                let response = within_unsent_cap(response, &watch, settings.max_unsent_bytes);
                Ok::<_, Infallible>(response.map(|body| connection::Body::new(body, stream)))
            }
        })
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A caller that trickles its headers is disconnected (and so is an HTTP/1 connection idle
    // that long between requests), rather than holding a task.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(read_timeout);
    let keep_alive = Some(settings.keep_alive_interval).filter(|t| !t.is_zero());
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(keep_alive)
        .keep_alive_timeout(settings.keep_alive_interval.max(Duration::from_secs(1)))
        .max_concurrent_streams(MAX_STREAMS)
        .max_send_buf_size(SEND_BUFFER);
    let io = TokioIo::new(Tracked::new(stream, watch.clone()));
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    // Until its first request, a connection gets the read timeout too: one that sends nothing,
    // or stalls before HTTP/1 headers or in HTTP/2's preface, is closed.
    let first_request = async {
        match read_timeout {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(first_request);
    let mut checks = tokio::time::interval(CHECK_EVERY);
    checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closing = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            () = &mut first_request, if !asked.load(Ordering::Relaxed) => {
                tracing::debug!("no request within the read timeout; closing the connection");
                return;
            }
            () = stop.cancelled(), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = checks.tick() => match watch.verdict(settings.idle_timeout, settings.write_timeout) {
                Verdict::Keep => {}
                Verdict::Idle if !closing => {
                    tracing::debug!("idle connection; closing it");
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
                Verdict::Idle => {}
                Verdict::Stalled => {
                    tracing::debug!(unsent_bytes = watch.unsent_bytes(), "a response waited past the write deadline; closing the connection");
                    return;
                }
            },
        }
    }
}

/// How often a connection checks whether it idles or stalls.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Concurrent HTTP/2 streams per connection.
const MAX_STREAMS: u32 = 100;
/// What HTTP/2 buffers per stream for a client that has not opened its window.
const SEND_BUFFER: usize = 64 * 1024;

/// `response`, or a 503 when its bytes would take what this connection leaves unread over
/// `cap`.
fn within_unsent_cap(response: HttpResponse, watch: &Watch, cap: usize) -> HttpResponse {
    let size = http_body::Body::size_hint(response.body())
        .exact()
        .unwrap_or(0) as usize;
    let waiting = watch.unsent_bytes();
    if cap == 0 || waiting == 0 || waiting.saturating_add(size) <= cap {
        return response;
    }
    tracing::debug!(
        waiting,
        size,
        "a connection leaves too many response bytes unread"
    );
    crate::response::error(&GatewayError::SlowReader { limit: cap })
}

/// Accept failures and refused connections, counted per burst so that each burst is logged
/// once, when it starts, and summed up when it ends.
#[derive(Default)]
struct Bursts {
    failures: u64,
    refused: u64,
    delay: Duration,
}

impl Bursts {
    fn accept_failed(&mut self, name: &str, error: &std::io::Error) -> Duration {
        if self.failures == 0 {
            tracing::warn!(listener = %name, %error, "accept failed (out of file descriptors?); backing off, and logging this burst once");
        }
        self.failures += 1;
        self.delay = (self.delay * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
        self.delay
    }

    fn refused(&mut self, name: &str, refusal: Refusal, peer: std::net::IpAddr) {
        if self.refused == 0 {
            let cap = match refusal {
                Refusal::Listener => "the listener's connection cap (limits.max_connections)",
                Refusal::Peer => "the per-address cap (limits.max_connections_per_peer)",
            };
            tracing::warn!(listener = %name, %peer, "refusing connections over {cap}; logging this burst once");
        }
        self.refused += 1;
    }

    fn accepted(&mut self, name: &str) {
        if self.failures > 0 {
            tracing::info!(listener = %name, failures = self.failures, "accepting again");
            self.failures = 0;
            self.delay = Duration::ZERO;
        }
    }

    fn summary(&self) -> Option<String> {
        (self.refused > 0).then(|| format!("{} connections refused over a cap", self.refused))
    }
}

/// Raises the soft limit on open files to the hard one (a listener's connection cap is
/// pointless under a 1,024-descriptor soft limit), and returns the limit now in force.
#[cfg(unix)]
#[allow(unsafe_code)]
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` and `setrlimit` only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            limit = raised;
        }
    }
    Ok(limit.rlim_cur)
}

#[cfg(not(unix))]
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    Ok(0)
}
