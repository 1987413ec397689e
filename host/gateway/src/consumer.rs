//! Consumers at the front door: who a request is (by its API key), whether the adapter it
//! reaches requires a consumer (`consumers.require`), and what that consumer may call.
//!
//! The consumers file is read on the reload thread like the specs; a version with errors is
//! reported and the last good set stays. A request reads the current set once (an
//! `ArcSwap`). Keys are taken from `Authorization: Bearer cg_...` or `X-Api-Key`; an unknown,
//! expired or malformed key is a 401 that says nothing of which consumers exist.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use globset::{Glob, GlobMatcher};
use http::HeaderMap;
use serde_json::{Value, json};

use crate::error::GatewayError;
use capgate_model::config::ConsumersConfig;
use capgate_model::consumers::{self, Consumer, ConsumerSet, Target};
use capgate_model::diag::Diagnostic;

/// The consumers of the gateway and where they are required.
pub struct Consumers {
    file: Option<PathBuf>,
    require: Vec<(GlobMatcher, GlobMatcher, Option<u16>)>,
    set: ArcSwap<ConsumerSet>,
    /// The file's text last read and the diagnostics of the last read that failed.
    last: Mutex<(Option<Vec<u8>>, Vec<Diagnostic>)>,
    /// Each consumer's limits' theoretical arrival times (GCRA), in seconds since `epoch`.
    arrivals: Mutex<HashMap<(String, usize), f64>>,
    epoch: Instant,
}

/// How one limit stands after a request it admitted.
#[derive(Debug, Clone, Copy)]
pub struct Standing {
    pub burst: u32,
    pub remaining: u32,
    /// Seconds until the limit is full again.
    pub reset: f64,
    /// The window the policy is stated in: `burst / rate` seconds.
    pub window: f64,
}

/// A caller identified by its key.
#[derive(Debug, Clone)]
pub struct Caller {
    pub consumer: Arc<Consumer>,
    /// The key's public prefix, for logs.
    pub key_prefix: String,
}

impl Consumers {
    pub fn new(config: &ConsumersConfig) -> Consumers {
        let glob = |pattern: &str| {
            Glob::new(pattern)
                .unwrap_or_else(|_| Glob::new("*").expect("a valid glob"))
                .compile_matcher()
        };
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
            arrivals: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
        };
        consumers.refresh();
        consumers
    }

    /// The file to watch, if any.
    pub fn file(&self) -> Option<&PathBuf> {
        self.file.as_ref()
    }

    /// Re-reads the consumers file if its bytes changed; returns whether the set changed. A
    /// file with errors keeps the last good set (its diagnostics are in [`Consumers::status`]).
    pub fn refresh(&self) -> bool {
        let Some(path) = &self.file else {
            return false;
        };
        let bytes = capgate_model::read::bytes(path, capgate_model::read::SPEC_LIMIT).ok();
        let mut last = self.last.lock().expect("not poisoned");
        if last.0.is_some() && last.0 == bytes {
            return false;
        }
        last.0 = bytes;
        match consumers::load(path) {
            Ok(set) => {
                tracing::info!(file = %path.display(), consumers = set.consumers.len(), "consumers loaded");
                self.set.store(Arc::new(set));
                last.1.clear();
                true
            }
            Err(diagnostics) => {
                for d in &diagnostics {
                    tracing::error!(file = %path.display(), line = d.line, key = %d.path, "{}", d.message);
                }
                tracing::error!(file = %path.display(), "the consumers file has errors; the last good consumers stay");
                last.1 = diagnostics;
                false
            }
        }
    }

    /// Whether the adapter `adapter` of `capability`, declared on `port`, requires a consumer.
    pub fn required(&self, port: u16, capability: &str, adapter: &str) -> bool {
        self.require.iter().any(|(c, a, p)| {
            p.is_none_or(|p| p == port) && c.is_match(capability) && a.is_match(adapter)
        })
    }

    /// Who the request is, by its key.
    pub fn identify(&self, headers: &HeaderMap) -> Result<Caller, GatewayError> {
        let unauthorized = GatewayError::Unauthorized { scheme: "Bearer" };
        let key = key_of(headers).ok_or(unauthorized.clone())?;
        let set = self.set.load();
        let (consumer, api_key) = set
            .authenticate(key, SystemTime::now())
            .ok_or(unauthorized)?;
        Ok(Caller {
            consumer: consumer.clone(),
            key_prefix: api_key.prefix.clone(),
        })
    }

    /// Counts a request of `caller` to `capability` against its limits (GCRA: a sustained rate
    /// with a burst), in this process. Past one, the 429 says when to retry.
    pub fn admit(
        &self,
        caller: &Caller,
        capability: &str,
    ) -> Result<Option<Standing>, GatewayError> {
        let consumer = &caller.consumer;
        if consumer.limits.is_empty() {
            return Ok(None);
        }
        let now = self.epoch.elapsed().as_secs_f64();
        let mut arrivals = self.arrivals.lock().expect("not poisoned");
        let mut tightest: Option<Standing> = None;
        let mut updates = Vec::new();
        for (index, limit) in consumer.limits.iter().enumerate() {
            if !limit.capability.is_match(capability) {
                continue;
            }
            let interval = 1.0 / limit.rate;
            let tolerance = interval * f64::from(limit.burst.max(1) - 1);
            let key = (consumer.name.clone(), index);
            let tat = arrivals.get(&key).copied().unwrap_or(now).max(now);
            if tat - now > tolerance {
                let retry_after = tat - now - tolerance;
                return Err(GatewayError::RateLimited {
                    retry_after: std::time::Duration::from_secs_f64(retry_after),
                    burst: limit.burst,
                    window: (f64::from(limit.burst) / limit.rate).ceil().max(1.0) as u64,
                });
            }
            let next = tat + interval;
            let used = ((next - now) / interval).ceil() as u32;
            let standing = Standing {
                burst: limit.burst,
                remaining: limit.burst.saturating_sub(used),
                reset: next - now,
                window: f64::from(limit.burst) / limit.rate,
            };
            if tightest.is_none_or(|t| standing.remaining < t.remaining) {
                tightest = Some(standing);
            }
            updates.push((key, next));
        }
        // Only a request every limit admits counts against them.
        arrivals.extend(updates);
        Ok(tightest)
    }

    /// Consumers with their labels, scopes and key prefixes (never a digest), and the last
    /// failed read's diagnostics.
    pub fn status(&self) -> Value {
        let set = self.set.load();
        let consumers: Vec<Value> = set
            .consumers
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "labels": c.labels,
                    "metadata_keys": c.metadata.keys().collect::<Vec<_>>(),
                    "keys": c.keys,
                    "scopes": c.scopes.iter().map(|s| json!({
                        "capability": s.capability.glob().glob(),
                        "adapter": s.adapter.glob().glob(),
                        "name": s.name.glob().glob(),
                        "access": s.access,
                    })).collect::<Vec<_>>(),
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
    pub fn may(&self, target: &Target<'_>) -> bool {
        self.consumer.may(target)
    }

    /// The 403 for a call this caller may not make.
    pub fn refused(&self, what: &str) -> GatewayError {
        GatewayError::NoGrant {
            consumer: self.consumer.name.clone(),
            what: what.to_owned(),
        }
    }
}

/// The key a request carries: `Authorization: Bearer <key>`, else `X-Api-Key`.
fn key_of(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
}
