//! One accepted connection's bookkeeping: what it may hold and how long it may stall.
//!
//! - [`Admission`]: the per-listener and per-peer connection caps. A connection over a cap is
//!   closed at once, before any byte is read; the guard it gets otherwise gives its place back
//!   when the connection ends.
//! - [`Tracked`]: the socket, noting when a write has been waiting (a client that does not read
//!   fills its receive window, and then every write waits).
//! - [`Watch`]: open streams, when the connection last had none, and the responses still to be
//!   sent with their sizes and ages. [`Watch::verdict`] tells the connection's task when to close
//!   it: idle too long (gracefully), or a response or a write stalled past the write deadline
//!   (at once).

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use std::convert::Infallible;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::response::HttpBody;

/// How many connections a listener admits, in all and from one address.
pub struct Admission {
    max: usize,
    per_peer: usize,
    open: AtomicUsize,
    peers: Mutex<HashMap<IpAddr, usize>>,
    /// Told when the last connection ends (draining waits for it).
    pub(super) drained: tokio::sync::Notify,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Listener,
    Peer,
}

impl Admission {
    /// `0` for either cap turns it off.
    pub fn new(max: usize, per_peer: usize) -> Arc<Admission> {
        Arc::new(Admission {
            max: if max == 0 { usize::MAX } else { max },
            per_peer: if per_peer == 0 { usize::MAX } else { per_peer },
            open: AtomicUsize::new(0),
            peers: Mutex::new(HashMap::new()),
            drained: tokio::sync::Notify::new(),
        })
    }

    /// Admits a connection from `peer`, or says which cap it is over.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Admitted, Refusal> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Listener);
        }
        let mut peers = self.peers.lock().expect("not poisoned");
        let count = peers.entry(peer).or_insert(0);
        if *count >= self.per_peer {
            drop(peers);
            self.release_open();
            return Err(Refusal::Peer);
        }
        *count += 1;
        Ok(Admitted {
            admission: self.clone(),
            peer,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    fn release_open(&self) {
        if self.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.drained.notify_waiters();
        }
    }
}

/// An admitted connection's place; given back on drop.
pub struct Admitted {
    admission: Arc<Admission>,
    peer: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut peers = self.admission.peers.lock().expect("not poisoned");
        if let Some(count) = peers.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                peers.remove(&self.peer);
            }
        }
        drop(peers);
        self.admission.release_open();
    }
}

/// Milliseconds since `epoch`, never 0 (0 means "not set").
fn millis_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64 + 1
}

/// The state of one connection, shared by its socket, its requests and its task.
pub struct Watch {
    epoch: Instant,
    /// Requests being answered or responses being sent.
    streams: AtomicUsize,
    /// When `streams` last fell to 0.
    idle_since: AtomicU64,
    /// When a write started waiting, 0 when none is.
    write_blocked_since: AtomicU64,
    /// Responses of known size not yet sent in full: (id, when made, bytes).
    unsent: Mutex<Vec<(u64, u64, usize)>>,
    unsent_bytes: AtomicUsize,
    next_id: AtomicU64,
}

/// What a connection's task should do now.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// No stream for the idle timeout: close gracefully (HTTP/2 GOAWAY).
    Idle,
    /// A response or a write waited past the write deadline: close at once.
    Stalled,
}

impl Watch {
    pub fn new() -> Arc<Watch> {
        let epoch = Instant::now();
        Arc::new(Watch {
            epoch,
            streams: AtomicUsize::new(0),
            idle_since: AtomicU64::new(millis_since(epoch)),
            write_blocked_since: AtomicU64::new(0),
            unsent: Mutex::new(Vec::new()),
            unsent_bytes: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
        })
    }

    /// A request started; the guard ends its stream when dropped (with the response body).
    pub fn stream(self: &Arc<Self>) -> Stream {
        self.streams.fetch_add(1, Ordering::AcqRel);
        Stream {
            watch: self.clone(),
            unsent: None,
        }
    }

    /// Response bytes waiting on this connection.
    pub fn unsent_bytes(&self) -> usize {
        self.unsent_bytes.load(Ordering::Acquire)
    }

    /// Whether to close the connection, given the idle timeout and the write deadline (zero
    /// turns either off).
    pub fn verdict(&self, idle_timeout: Duration, write_timeout: Duration) -> Verdict {
        let now = millis_since(self.epoch);
        let older_than = |since: u64, limit: Duration| {
            since != 0 && now.saturating_sub(since) >= limit.as_millis() as u64
        };
        if !write_timeout.is_zero() {
            if older_than(
                self.write_blocked_since.load(Ordering::Acquire),
                write_timeout,
            ) {
                return Verdict::Stalled;
            }
            let unsent = self.unsent.lock().expect("not poisoned");
            if unsent
                .iter()
                .any(|&(_, made, _)| older_than(made, write_timeout))
            {
                return Verdict::Stalled;
            }
        }
        if !idle_timeout.is_zero()
            && self.streams.load(Ordering::Acquire) == 0
            && older_than(self.idle_since.load(Ordering::Acquire), idle_timeout)
        {
            return Verdict::Idle;
        }
        Verdict::Keep
    }
}

/// One request's stream on a connection, from its first byte until its response is sent (or
/// abandoned).
pub struct Stream {
    watch: Arc<Watch>,
    unsent: Option<(u64, usize)>,
}

impl Stream {
    /// Counts a response of `bytes` as waiting to be sent, until [`Stream::sent`] or drop.
    pub fn sending(&mut self, bytes: usize) {
        let watch = &self.watch;
        let id = watch.next_id.fetch_add(1, Ordering::Relaxed);
        watch.unsent_bytes.fetch_add(bytes, Ordering::AcqRel);
        watch
            .unsent
            .lock()
            .expect("not poisoned")
            .push((id, millis_since(watch.epoch), bytes));
        self.unsent = Some((id, bytes));
    }

    /// The response is sent in full.
    pub fn sent(&mut self) {
        if let Some((id, bytes)) = self.unsent.take() {
            let watch = &self.watch;
            watch.unsent_bytes.fetch_sub(bytes, Ordering::AcqRel);
            watch
                .unsent
                .lock()
                .expect("not poisoned")
                .retain(|&(other, _, _)| other != id);
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.sent();
        let watch = &self.watch;
        if watch.streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            watch
                .idle_since
                .store(millis_since(watch.epoch), Ordering::Release);
        }
    }
}

/// A response body that keeps its stream open until it is sent, counts its bytes as unsent
/// until then, and hands them to hyper at most [`CHUNK`] at a time: HTTP/2 asks for the next
/// chunk only when the client's window has room, so a client that never opens its window holds
/// one chunk in hyper's buffers, and the rest stays here, counted and under the write deadline.
pub struct Body {
    body: HttpBody,
    rest: Bytes,
    stream: Stream,
}

/// The most of a response handed to hyper at once (HTTP/2's default frame size).
pub const CHUNK: usize = 16 * 1024;

impl Body {
    pub fn new(body: HttpBody, mut stream: Stream) -> Self {
        if let Some(bytes) = http_body::Body::size_hint(&body).exact().filter(|&n| n > 0) {
            stream.sending(bytes as usize);
        }
        Body {
            body,
            rest: Bytes::new(),
            stream,
        }
    }

    fn chunk(&mut self) -> Bytes {
        let n = self.rest.len().min(CHUNK);
        self.rest.split_to(n)
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if this.rest.is_empty() {
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => this.rest = data,
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                Poll::Ready(None) => {
                    this.stream.sent();
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(never))) => match never {},
                Poll::Pending => return Poll::Pending,
            }
        }
        let chunk = this.chunk();
        if this.rest.is_empty() && this.body.is_end_stream() {
            this.stream.sent();
        }
        Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let inner = self.body.size_hint();
        let rest = self.rest.len() as u64;
        match inner.exact() {
            Some(exact) => http_body::SizeHint::with_exact(exact + rest),
            None => {
                let mut hint = http_body::SizeHint::new();
                hint.set_lower(inner.lower() + rest);
                hint
            }
        }
    }
}

/// The socket, noting in its [`Watch`] when a write is waiting for the client to read.
pub struct Tracked<S> {
    socket: S,
    watch: Arc<Watch>,
}

impl<S> Tracked<S> {
    pub fn new(socket: S, watch: Arc<Watch>) -> Self {
        Tracked { socket, watch }
    }

    fn note<T>(&self, poll: Poll<T>) -> Poll<T> {
        let blocked = &self.watch.write_blocked_since;
        match poll {
            Poll::Pending => {
                if blocked.load(Ordering::Relaxed) == 0 {
                    blocked.store(millis_since(self.watch.epoch), Ordering::Release);
                }
            }
            Poll::Ready(_) => {
                if blocked.load(Ordering::Relaxed) != 0 {
                    blocked.store(0, Ordering::Release);
                }
            }
        }
        poll
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.socket).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.socket).poll_write(cx, buf);
        self.note(poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.socket).poll_write_vectored(cx, bufs);
        self.note(poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.socket).poll_flush(cx);
        self.note(poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.socket).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_per_listener_and_per_peer_and_give_places_back() {
        let admission = Admission::new(3, 2);
        let (a, b): (IpAddr, IpAddr) = ([127, 0, 0, 2].into(), [127, 0, 0, 3].into());
        let first = admission.admit(a).unwrap();
        let _second = admission.admit(a).unwrap();
        assert_eq!(admission.admit(a).err(), Some(Refusal::Peer));
        let _third = admission.admit(b).unwrap();
        assert_eq!(admission.admit(b).err(), Some(Refusal::Listener));
        assert_eq!(admission.open(), 3);
        drop(first);
        assert!(admission.admit(a).is_ok());
    }

    #[test]
    fn a_connection_is_idle_only_without_streams_and_stalled_by_an_old_response() {
        let watch = Watch::new();
        let zero = Duration::ZERO;
        assert_eq!(watch.verdict(zero, zero), Verdict::Keep);
        let mut stream = watch.stream();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(watch.verdict(Duration::from_millis(1), zero), Verdict::Keep);
        stream.sending(100);
        assert_eq!(watch.unsent_bytes(), 100);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            watch.verdict(zero, Duration::from_millis(1)),
            Verdict::Stalled
        );
        drop(stream);
        assert_eq!(watch.unsent_bytes(), 0);
        assert_eq!(watch.verdict(zero, Duration::from_millis(1)), Verdict::Keep);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(watch.verdict(Duration::from_millis(1), zero), Verdict::Idle);
    }
}
