//! Consumers at the front door: who a request is (by its API key), whether the adapter it
//! reaches requires a consumer (`consumers.require`), and what that consumer may call.
//!
//! The consumers file is read on the reload thread like the specs; a version with errors is
//! reported and the last good set stays. A request reads the current set once (an
//! `ArcSwap`). Keys are taken from `Authorization: Bearer cg_...` or `X-Api-Key`; an unknown,
//! expired or malformed key is a 401 that says nothing of which consumers exist.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use http::HeaderMap;
use opentelemetry::KeyValue;
use serde_json::{Value, json};

use crate::error::GatewayError;
use crate::jwt::Issuers;
use crate::limits::{Counted, Limiter, Standing};
use crate::metrics::Metrics;
use capgate_model::config::{ConsumersConfig, Limits};
use capgate_model::consumers::{self, Call, Consumer, ConsumerSet, Scope, Target};
use capgate_model::diag::Diagnostic;
use capgate_model::glob::Pattern;

/// The consumers of the gateway and where they are required.
pub struct Consumers {
    file: Option<PathBuf>,
    require: Vec<(Pattern, Pattern, Option<u16>)>,
    set: ArcSwap<ConsumerSet>,
    /// The file's text last read and the diagnostics of the last read that failed.
    last: Mutex<(Option<Vec<u8>>, Vec<Diagnostic>)>,
    limiter: Limiter,
    issuers: Issuers,
    public_url: Option<String>,
    /// When each consumer was last identified (Unix seconds; 0: not yet), kept across reloads.
    /// Names are the consumers file's, never a caller's input: a fast hash of them will do.
    last_use: ArcSwap<HashMap<String, Arc<AtomicU64>, foldhash::fast::RandomState>>,
}

/// A consumers file that loaded with changes: the set it replaced, and the new one.
pub struct Changed {
    pub before: Arc<ConsumerSet>,
    pub after: Arc<ConsumerSet>,
}

/// A caller identified by its key or token.
#[derive(Debug, Clone)]
pub struct Caller {
    pub consumer: Arc<Consumer>,
    /// The key's public prefix (`cg_3f9a`) or the token's issuer and key id, for logs.
    pub credential: String,
    /// A token's scopes, which narrow the consumer's own.
    pub token_scopes: Option<Arc<[Scope]>>,
}

impl Consumers {
    pub fn new(config: &ConsumersConfig, limits: &Limits, metrics: Arc<Metrics>) -> Consumers {
        // A glob that does not parse requires a consumer everywhere rather than nowhere.
        let glob = |pattern: &str| Pattern::new(pattern).unwrap_or_else(|_| Pattern::any());
        let require = config
            .require
            .iter()
            .map(|r| (glob(&r.capability), glob(&r.adapter), r.port))
            .collect();
        let consumers = Consumers {
            file: config.file.clone(),
            require,
            set: ArcSwap::from_pointee(ConsumerSet::default()),
            last: Mutex::new((None, Vec::new())),
            limiter: Limiter::new(limits, metrics),
            issuers: Issuers::new(&config.jwt),
            last_use: ArcSwap::from_pointee(HashMap::default()),
            public_url: config
                .public_url
                .as_ref()
                .map(|u| u.trim_end_matches('/').to_owned()),
        };
        consumers.refresh();
        consumers
    }

    /// The file to watch, if any.
    pub fn file(&self) -> Option<&PathBuf> {
        self.file.as_ref()
    }

    /// Re-reads the consumers file if its bytes changed; returns the set before and after
    /// when it changed. A file with errors keeps the last good set (its diagnostics are in
    /// [`Consumers::status`]).
    pub fn refresh(&self) -> Option<Changed> {
        let Some(path) = &self.file else {
            return None;
        };
        let bytes = capgate_model::read::bytes(path, capgate_model::read::SPEC_LIMIT).ok();
        let mut last = self.last.lock().expect("not poisoned");
        if last.0.is_some() && last.0 == bytes {
            return None;
        }
        // The bytes just compared are the ones parsed: a write between two reads cannot leave
        // a set that differs from what the next comparison sees.
        let loaded = match bytes.as_deref().map(std::str::from_utf8) {
            Some(Ok(text)) => consumers::parse(&Arc::from(path.as_path()), text),
            // Unreadable or not UTF-8: `load` says which, with the file's diagnostic.
            _ => consumers::load(path),
        };
        last.0 = bytes;
        match loaded {
            Ok(set) => {
                tracing::info!(file = %path.display(), consumers = set.consumers.len(), "consumers loaded");
                let previous = self.last_use.load();
                let last_use = set
                    .consumers
                    .iter()
                    .map(|c| {
                        let at = previous.get(&c.name).cloned().unwrap_or_default();
                        (c.name.clone(), at)
                    })
                    .collect();
                self.last_use.store(Arc::new(last_use));
                let after = Arc::new(set);
                let before = self.set.swap(after.clone());
                last.1.clear();
                Some(Changed { before, after })
            }
            Err(diagnostics) => {
                for d in &diagnostics {
                    tracing::error!(file = %path.display(), line = d.line, key = %d.path, "{}", d.message);
                }
                tracing::error!(file = %path.display(), "the consumers file has errors; the last good consumers stay");
                last.1 = diagnostics;
                None
            }
        }
    }

    /// Whether the adapter `adapter` of `capability`, declared on `port`, requires a consumer.
    pub fn required(&self, port: u16, capability: &str, adapter: &str) -> bool {
        self.require.iter().any(|(c, a, p)| {
            p.is_none_or(|p| p == port) && c.is_match(capability) && a.is_match(adapter)
        })
    }

    /// Who the request is, by its API key or JWT: no credentials is a 401 that asks for them;
    /// credentials that do not hold are a 401 that says what is wrong with them (never which
    /// consumers exist).
    pub async fn identify(&self, headers: &HeaderMap) -> Result<Caller, GatewayError> {
        let span = crate::trace::span("auth", crate::trace::Kind::Internal, Vec::new);
        let identified = self.identify_by_credential(headers).await;
        if let Some(span) = span {
            match &identified {
                Ok(caller) => {
                    span.set(KeyValue::new(
                        "capgate.consumer.name",
                        caller.consumer.name.clone(),
                    ));
                }
                Err(error) => span.fail(error.code().to_owned()),
            }
        }
        let caller = identified?;
        if let Some(at) = self.last_use.load().get(&caller.consumer.name) {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            at.store(now, Ordering::Relaxed);
        }
        Ok(caller)
    }

    async fn identify_by_credential(&self, headers: &HeaderMap) -> Result<Caller, GatewayError> {
        let credential = credential_of(headers)?;
        let set = self.set.load();
        if Issuers::looks_like_jwt(credential) && !self.issuers.is_empty() {
            let verified = self
                .issuers
                .verify(credential)
                .await
                .map_err(|description| GatewayError::InvalidCredentials { description })?;
            let consumer = set
                .get(&verified.consumer)
                .ok_or(GatewayError::InvalidCredentials {
                    description: "the token names no consumer of this gateway",
                })?;
            return Ok(Caller {
                consumer: consumer.clone(),
                credential: verified.credential,
                token_scopes: verified.scopes,
            });
        }
        let (consumer, api_key) = set.authenticate(credential, SystemTime::now()).ok_or(
            GatewayError::InvalidCredentials {
                description: "the credentials are unknown or expired",
            },
        )?;
        Ok(Caller {
            consumer: consumer.clone(),
            credential: api_key.prefix.clone(),
            token_scopes: None,
        })
    }

    /// Starts refreshing the JWT issuers' keys (on the current runtime).
    pub fn start(&self) {
        self.issuers.start_refreshing();
    }

    /// The gateway's public base URL: `consumers.public_url`, else `http://` and the request's
    /// `Host` (when it is a well-formed authority).
    pub fn public_base(&self, headers: &HeaderMap) -> String {
        if let Some(url) = &self.public_url {
            return url.clone();
        }
        let host = headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .filter(|h| http::uri::Authority::try_from(*h).is_ok())
            .unwrap_or("localhost");
        format!("http://{host}")
    }

    /// The JWT issuers, for the protected resource metadata.
    pub fn issuers(&self) -> Vec<&str> {
        self.issuers.names()
    }

    /// Counts `call` against the caller's limits that count it (in this process or in the
    /// shared store); past one, the 429 says when to retry.
    pub async fn admit(
        &self,
        caller: &Caller,
        call: &Call<'_>,
    ) -> Result<Option<Standing>, GatewayError> {
        let consumer = &caller.consumer;
        if consumer.limits.is_empty() {
            return Ok(None);
        }
        let counted = Counted {
            consumer: &consumer.name,
            limits: consumer.limits.iter().filter(|l| l.counts(call)).collect(),
        };
        let span = crate::trace::span("rate_limit", crate::trace::Kind::Internal, Vec::new);
        let decision = self.limiter.admit(&counted).await;
        if let Some(span) = span {
            match &decision {
                Ok(standing) => {
                    span.set(KeyValue::new("capgate.limit.decision", "admitted"));
                    if let Some(standing) = standing {
                        span.set(KeyValue::new(
                            "capgate.limit.remaining",
                            standing.remaining as i64,
                        ));
                    }
                }
                Err(GatewayError::RateLimited { .. }) => {
                    span.set(KeyValue::new("capgate.limit.decision", "limited"));
                }
                Err(error) => {
                    span.set(KeyValue::new("capgate.limit.decision", "unavailable"));
                    span.fail(error.code().to_owned());
                }
            }
        }
        decision
    }

    /// Consumers with their labels, scopes and key prefixes (never a digest), and the last
    /// failed read's diagnostics.
    pub fn status(&self) -> Value {
        let set = self.set.load();
        let last_use = self.last_use.load();
        let consumers: Vec<Value> = set
            .consumers
            .iter()
            .map(|c| {
                let used = last_use
                    .get(&c.name)
                    .map_or(0, |at| at.load(Ordering::Relaxed));
                json!({
                    "name": c.name,
                    "last_used": (used > 0).then(|| capgate_model::calendar::rfc3339_millis(
                        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(used))),
                    "labels": c.labels,
                    "metadata_keys": c.metadata.keys().collect::<Vec<_>>(),
                    "keys": c.keys,
                    "scopes": c.scopes.iter().map(|s| json!({
                        "capability": s.capability.as_str(),
                        "adapter": s.adapter.as_str(),
                        "name": s.name.as_str(),
                        "access": s.access,
                    })).collect::<Vec<_>>(),
                    "limits": c.limits.iter().map(|l| {
                        let policy = l.kind.policy();
                        json!({
                            "policy": policy.name,
                            "calls": policy.quota,
                            "window_seconds": policy.window,
                            "capability": l.capability.as_str(),
                            "name": l.name.as_str(),
                        })
                    }).collect::<Vec<_>>(),
                })
            })
            .collect();
        let last = self.last.lock().expect("not poisoned");
        json!({
            "file": self.file,
            "consumers": consumers,
            "diagnostics": last.1,
        })
    }
}

impl Caller {
    /// Whether the consumer's scopes grant `target`, and the token's too when it has some.
    pub fn may(&self, target: &Target<'_>) -> bool {
        self.consumer.may(target)
            && self
                .token_scopes
                .as_ref()
                .is_none_or(|scopes| scopes.iter().any(|s| s.grants(target)))
    }

    /// The 403 for a call this caller may not make.
    pub fn refused(&self, what: &str) -> GatewayError {
        GatewayError::NoGrant {
            consumer: self.consumer.name.clone(),
            what: what.to_owned(),
        }
    }
}

/// The credential a request carries: `Authorization: Bearer <key or token>`, else
/// `X-Api-Key`. None is a 401 that asks for one; an `Authorization` of another scheme, or one
/// that is not text, is a 401 that says so.
fn credential_of(headers: &HeaderMap) -> Result<&str, GatewayError> {
    if let Some(value) = headers.get(http::header::AUTHORIZATION) {
        let malformed = GatewayError::InvalidCredentials {
            description: "Authorization is not `Bearer <key or token>`",
        };
        let text = value.to_str().map_err(|_| malformed.clone())?;
        let (scheme, token) = text.split_once(' ').ok_or(malformed.clone())?;
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
            return Err(malformed);
        }
        return Ok(token);
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .ok_or(GatewayError::Unauthorized { scheme: "Bearer" })
}
