//! Legacy (2025-era) MCP sessions under a budget: at most `mcp.max_sessions` per listener (all
//! its endpoints together) and `mcp.max_sessions_per_peer` per client address, each closed after
//! `mcp.session_idle_timeout` without use. A new session over a budget takes the place of the
//! longest-idle one (the peer's own, over the per-peer budget; anyone's on the listener, over
//! the listener's), so a client that hoards sessions only evicts itself, and newcomers are
//! never refused.
//!
//! [`Budgeted`] wraps rmcp's `LocalSessionManager` of one endpoint and books every session in
//! its listener's [`Book`]. rmcp creates a session inside the request's own task, so the
//! caller's address reaches `create_session` as a task-local ([`PEER`]) set around the call.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures_util::Stream;
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::transport::streamable_http_server::session::local::{
    LocalSessionManager, LocalSessionManagerError,
};
use rmcp::transport::streamable_http_server::session::{
    RestoreOutcome, ServerSseMessage, SessionId, SessionManager,
};

tokio::task_local! {
    /// The address of the client whose request is being served.
    pub static PEER: IpAddr;
}

/// The sessions of one listener, by id.
pub struct Book {
    max: usize,
    per_peer: usize,
    idle: Duration,
    sessions: Mutex<HashMap<SessionId, Booked>>,
    /// Open `subscriptions/listen` streams: in all, and by client address.
    streams: Mutex<(usize, HashMap<IpAddr, usize>)>,
    max_streams: usize,
    streams_per_peer: usize,
}

/// An open `subscriptions/listen` stream's place in its listener's [`Book`]; given back on
/// drop (when the stream's response body is dropped).
pub struct StreamPlace {
    book: Arc<Book>,
    peer: IpAddr,
}

impl Drop for StreamPlace {
    fn drop(&mut self) {
        let mut streams = self.book.streams.lock().expect("not poisoned");
        streams.0 -= 1;
        if let Some(count) = streams.1.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                streams.1.remove(&self.peer);
            }
        }
    }
}

struct Booked {
    peer: IpAddr,
    last_used: Instant,
    /// The endpoint's manager, to close the session when it is evicted.
    manager: Weak<LocalSessionManager>,
}

impl Book {
    /// `0` for a budget turns it off.
    pub fn new(config: &capgate_model::config::McpConfig) -> Arc<Book> {
        let unlimited = |n: usize| if n == 0 { usize::MAX } else { n };
        Arc::new(Book {
            max: unlimited(config.max_sessions),
            per_peer: unlimited(config.max_sessions_per_peer),
            idle: config.session_idle_timeout,
            sessions: Mutex::new(HashMap::new()),
            streams: Mutex::new((0, HashMap::new())),
            max_streams: unlimited(config.max_listen_streams),
            streams_per_peer: unlimited(config.max_listen_streams_per_peer),
        })
    }

    /// A place for one more `subscriptions/listen` stream of `peer`, or why there is none.
    pub fn open_stream(self: &Arc<Self>, peer: IpAddr) -> Result<StreamPlace, &'static str> {
        let mut streams = self.streams.lock().expect("not poisoned");
        if streams.0 >= self.max_streams {
            return Err(
                "this listener has as many subscriptions/listen streams open as it keeps (mcp.max_listen_streams)",
            );
        }
        let mine = streams.1.entry(peer).or_insert(0);
        if *mine >= self.streams_per_peer {
            return Err(
                "this client has as many subscriptions/listen streams open as it may (mcp.max_listen_streams_per_peer)",
            );
        }
        *mine += 1;
        streams.0 += 1;
        Ok(StreamPlace {
            book: self.clone(),
            peer,
        })
    }

    /// Sessions booked now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.sessions.lock().expect("not poisoned").len()
    }

    fn touch(&self, id: &SessionId) {
        if let Some(booked) = self.sessions.lock().expect("not poisoned").get_mut(id) {
            booked.last_used = Instant::now();
        }
    }

    fn forget(&self, id: &SessionId) {
        self.sessions.lock().expect("not poisoned").remove(id);
    }

    /// Removes what must go for one more session of `peer` to fit: sessions idle past the
    /// timeout (rmcp has closed them already), then the peer's longest-idle one while it is at
    /// its budget, then the listener's longest-idle one while it is at its cap. Returns the
    /// sessions to close.
    fn make_room(&self, peer: IpAddr) -> Vec<(SessionId, Weak<LocalSessionManager>)> {
        let mut sessions = self.sessions.lock().expect("not poisoned");
        let mut out = Vec::new();
        let idle = self.idle;
        sessions.retain(|id, booked| {
            let alive = booked.last_used.elapsed() < idle;
            if !alive {
                out.push((id.clone(), booked.manager.clone()));
            }
            alive
        });
        let oldest = |sessions: &HashMap<SessionId, Booked>, of: Option<IpAddr>| {
            sessions
                .iter()
                .filter(|(_, b)| of.is_none_or(|p| b.peer == p))
                .min_by_key(|(_, b)| b.last_used)
                .map(|(id, _)| id.clone())
        };
        while sessions.values().filter(|b| b.peer == peer).count() >= self.per_peer {
            let Some(id) = oldest(&sessions, Some(peer)) else {
                break;
            };
            let booked = sessions.remove(&id).expect("just found");
            tracing::info!(%peer, "a client over its MCP session budget: closing its longest-idle session");
            out.push((id, booked.manager));
        }
        while sessions.len() >= self.max {
            let Some(id) = oldest(&sessions, None) else {
                break;
            };
            let booked = sessions.remove(&id).expect("just found");
            tracing::info!(peer = %booked.peer, "the listener is at its MCP session cap: closing the longest-idle session");
            out.push((id, booked.manager));
        }
        out
    }
}

/// One endpoint's session manager, booking its sessions in the listener's [`Book`].
pub struct Budgeted {
    pub inner: Arc<LocalSessionManager>,
    pub book: Arc<Book>,
}

impl SessionManager for Budgeted {
    type Error = LocalSessionManagerError;
    type Transport = <LocalSessionManager as SessionManager>::Transport;

    async fn create_session(&self) -> Result<(SessionId, Self::Transport), Self::Error> {
        let peer = PEER
            .try_with(|peer| *peer)
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        for (id, manager) in self.book.make_room(peer) {
            if let Some(manager) = manager.upgrade() {
                let _ = manager.close_session(&id).await;
            }
        }
        let (id, transport) = self.inner.create_session().await?;
        self.book.sessions.lock().expect("not poisoned").insert(
            id.clone(),
            Booked {
                peer,
                last_used: Instant::now(),
                manager: Arc::downgrade(&self.inner),
            },
        );
        Ok((id, transport))
    }

    async fn initialize_session(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<ServerJsonRpcMessage, Self::Error> {
        self.book.touch(id);
        self.inner.initialize_session(id, message).await
    }

    async fn has_session(&self, id: &SessionId) -> Result<bool, Self::Error> {
        self.inner.has_session(id).await
    }

    async fn close_session(&self, id: &SessionId) -> Result<(), Self::Error> {
        self.book.forget(id);
        self.inner.close_session(id).await
    }

    async fn create_stream(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.book.touch(id);
        self.inner.create_stream(id, message).await
    }

    async fn accept_message(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<(), Self::Error> {
        self.book.touch(id);
        self.inner.accept_message(id, message).await
    }

    async fn create_standalone_stream(
        &self,
        id: &SessionId,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.book.touch(id);
        self.inner.create_standalone_stream(id).await
    }

    async fn resume(
        &self,
        id: &SessionId,
        last_event_id: String,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.book.touch(id);
        self.inner.resume(id, last_event_id).await
    }

    async fn restore_session(
        &self,
        id: SessionId,
    ) -> Result<RestoreOutcome<Self::Transport>, Self::Error> {
        self.inner.restore_session(id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book_one(book: &Book, id: &str, peer: [u8; 4], age: Duration) {
        book.sessions.lock().unwrap().insert(
            Arc::from(id),
            Booked {
                peer: IpAddr::from(peer),
                last_used: Instant::now() - age,
                manager: Weak::new(),
            },
        );
    }

    fn ids(out: &[(SessionId, Weak<LocalSessionManager>)]) -> Vec<String> {
        out.iter().map(|(id, _)| id.to_string()).collect()
    }

    fn config(max: usize, per_peer: usize, idle: Duration) -> capgate_model::config::McpConfig {
        capgate_model::config::McpConfig {
            max_sessions: max,
            max_sessions_per_peer: per_peer,
            session_idle_timeout: idle,
            ..Default::default()
        }
    }

    #[test]
    fn room_is_made_by_evicting_the_longest_idle_the_peers_own_first() {
        let s = Duration::from_secs;
        let book = Book::new(&config(4, 2, s(600)));
        book_one(&book, "a-old", [10, 0, 0, 1], s(50));
        book_one(&book, "a-new", [10, 0, 0, 1], s(10));
        book_one(&book, "b-old", [10, 0, 0, 2], s(90));
        // Peer a is at its budget: its own longest-idle session goes, not b's older one.
        assert_eq!(ids(&book.make_room([10, 0, 0, 1].into())), ["a-old"]);
        book_one(&book, "a-3", [10, 0, 0, 1], s(0));
        book_one(&book, "c-1", [10, 0, 0, 3], s(5));
        // The listener is at its cap of 4: the longest-idle of all goes.
        assert_eq!(book.len(), 4);
        assert_eq!(ids(&book.make_room([10, 0, 0, 4].into())), ["b-old"]);
        // Sessions idle past the timeout are dropped first.
        let book = Book::new(&config(0, 0, s(60)));
        book_one(&book, "stale", [10, 0, 0, 1], s(61));
        assert_eq!(ids(&book.make_room([10, 0, 0, 1].into())), ["stale"]);
        assert_eq!(book.len(), 0);
    }
}
