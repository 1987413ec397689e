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
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use capgate_model::snapshot::ListenKey;

use crate::response::HttpResponse;

/// What answers the requests of one listener.
pub trait Handler: Clone + Send + Sync + 'static {
    fn handle(&self, request: http::Request<Incoming>)
    -> impl Future<Output = HttpResponse> + Send;
}

/// How every listener treats its connections.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// `limits.request_read_timeout`: for a connection's first bytes, every request's headers
    /// and (through [`ReadDeadline`]) its body; zero turns it off.
    pub read_timeout: Duration,
    /// `reload.drain_timeout`: how long a closing listener waits for its connections.
    pub drain_timeout: Duration,
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
pub async fn serve<H: Handler>(
    listener: TcpListener,
    name: String,
    handler: H,
    settings: Settings,
    stop: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        let (stream, _) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = %name, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let read_timeout = Some(settings.read_timeout).filter(|t| !t.is_zero());
        let asked = Arc::new(AtomicBool::new(false));
        let service = {
            let asked = asked.clone();
            let handler = handler.clone();
            hyper::service::service_fn(move |request: http::Request<Incoming>| {
                asked.store(true, Ordering::Relaxed);
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler.handle(request).await) }
            })
        };
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            // A caller that trickles its headers is disconnected (and so is an HTTP/1
            // connection idle that long between requests), rather than holding a task.
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(read_timeout);
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            let connection = watcher.watch(connection.into_owned());
            tokio::pin!(connection);
            // Until its first request, a connection gets the read timeout too: one that sends
            // nothing, or stalls before HTTP/1 headers or in HTTP/2's preface, is closed.
            if let Some(limit) = read_timeout {
                tokio::select! {
                    result = &mut connection => {
                        if let Err(error) = result {
                            tracing::debug!(%error, "connection ended with an error");
                        }
                        return;
                    }
                    () = tokio::time::sleep(limit) => {
                        if !asked.load(Ordering::Relaxed) {
                            tracing::debug!("no request within the read timeout; closing the connection");
                            return;
                        }
                    }
                }
            }
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let deadline = settings.drain_timeout;
    tokio::select! {
        () = graceful.shutdown() => tracing::debug!(listener = %name, "drained"),
        () = tokio::time::sleep(deadline) => {
            tracing::warn!(listener = %name, deadline_ms = deadline.as_millis() as u64, "drain deadline passed; closing the remaining connections");
        }
    }
}
