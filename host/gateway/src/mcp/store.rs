//! Legacy (2025-11-25) MCP sessions shared by a fleet: what a client sent in `initialize`, kept
//! in Redis (`mcp.session_store`) under a digest of the session id, so that a replica that did
//! not open a session can restore it (rmcp replays the handshake from it) and serve it.
//!
//! Only the session's state travels: a `notifications/tools/list_changed` or a
//! `subscriptions/listen` stream is delivered by the replica that holds the stream, which sees
//! the same reloads as every other. An entry lives as long as the session may idle
//! (`mcp.session_idle_timeout`), refreshed on each restore; a closed session's entry is removed.
//! Redis being away costs only cross-replica restores (a 404 asks the client for a new
//! session), never a request to the replica that holds the session.

use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use rmcp::transport::streamable_http_server::session::store::{
    SessionState, SessionStore, SessionStoreError,
};

use capgate_model::consumers;

/// Sessions kept in Redis.
pub struct RedisSessions {
    connection: ConnectionManager,
    ttl: Duration,
    timeout: Duration,
}

impl RedisSessions {
    /// Sessions at `url` (connected lazily), each kept `ttl` after its last restore.
    pub fn new(url: &str, ttl: Duration, timeout: Duration) -> Result<RedisSessions, String> {
        let connection = crate::limits::connect(url, timeout)
            .map_err(|e| format!("mcp.session_store: {e} ({})", e.category()))?;
        Ok(RedisSessions {
            connection,
            ttl,
            timeout,
        })
    }

    /// The key of `session_id`: a digest, so that Redis never holds a usable session id.
    fn key(session_id: &str) -> String {
        format!(
            "capgate:mcp:session:{}",
            consumers::hex(&consumers::digest(session_id))
        )
    }

    async fn bounded<T>(
        &self,
        what: &str,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, SessionStoreError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                Err(format!("the MCP session store could not {what}: {error}").into())
            }
            Err(_) => Err(format!(
                "the MCP session store did not {what} within {:?}",
                self.timeout
            )
            .into()),
        }
    }
}

#[async_trait::async_trait]
impl SessionStore for RedisSessions {
    async fn load(&self, session_id: &str) -> Result<Option<SessionState>, SessionStoreError> {
        let mut connection = self.connection.clone();
        let key = RedisSessions::key(session_id);
        let ttl = self.ttl.as_millis() as i64;
        let found: Option<String> = self
            .bounded("read a session", async move {
                let found: Option<String> = connection.get(&key).await?;
                if found.is_some() {
                    let _: bool = connection.pexpire(&key, ttl).await?;
                }
                Ok(found)
            })
            .await?;
        match found {
            None => Ok(None),
            Some(json) => Ok(Some(serde_json::from_str(&json)?)),
        }
    }

    async fn store(&self, session_id: &str, state: &SessionState) -> Result<(), SessionStoreError> {
        let json = serde_json::to_string(state)?;
        let mut connection = self.connection.clone();
        let key = RedisSessions::key(session_id);
        let ttl = self.ttl.as_millis() as u64;
        self.bounded("keep a session", async move {
            connection.pset_ex::<_, _, ()>(&key, json, ttl).await
        })
        .await
    }

    async fn delete(&self, session_id: &str) -> Result<(), SessionStoreError> {
        let mut connection = self.connection.clone();
        let key = RedisSessions::key(session_id);
        self.bounded("forget a session", async move {
            connection.del::<_, ()>(&key).await
        })
        .await
    }
}
