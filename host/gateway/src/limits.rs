//! Consumers' rate limits and quotas: counted in this process, or shared by every replica
//! through Redis (`limits.store: redis://...`).
//!
//! A call is admitted only when every limit that counts it has room, and only an admitted call
//! is counted (the check and the count are one step: a mutex here, one Lua script in Redis).
//! Rates are GCRA (a theoretical arrival time per limit); quotas count calls per calendar
//! period (UTC), in a counter per period.
//!
//! A decision never waits on Redis for more than `limits.store_timeout`. Past it, or when Redis
//! is unreachable, the store is marked down (one log line), `limits.on_store_error` decides
//! (`local`: counted here, each limit divided by `limits.replicas`; `deny`: 503), and a
//! background probe marks it up again when Redis answers (one log line).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use redis::aio::ConnectionManager;

use crate::error::GatewayError;
use crate::metrics::Metrics;
use capgate_model::config::{LimitStore, Limits, OnStoreError};
use capgate_model::consumers::{Limit, LimitKind, Policy};

/// How the tightest limit stands after an admitted call.
#[derive(Debug, Clone, Copy)]
pub struct Standing {
    pub policy: Policy,
    pub remaining: u64,
    /// Seconds until the limit has all its room again (a rate) or its period ends (a quota).
    pub reset: u64,
}

/// Where the decisions are made.
pub struct Limiter {
    local: Local,
    shared: Option<Arc<Shared>>,
    on_error: OnStoreError,
    replicas: u32,
    metrics: Arc<Metrics>,
}

/// One call's limits, with the key of each one's counter.
pub struct Counted<'a> {
    pub consumer: &'a str,
    pub limits: Vec<&'a Limit>,
}

impl Limiter {
    pub fn new(config: &Limits, metrics: Arc<Metrics>) -> Limiter {
        let shared = match &config.store {
            LimitStore::Local => None,
            LimitStore::Redis(url) => match Shared::new(url, config.store_timeout) {
                Ok(shared) => Some(Arc::new(shared)),
                Err(error) => {
                    // A URL the client refuses: say so, and count locally.
                    tracing::error!(store = %config.store.shown(), "limits store unusable: {error}; counting in this process");
                    None
                }
            },
        };
        metrics.limit_store_up.set(i64::from(
            shared.is_some() || config.store == LimitStore::Local,
        ));
        Limiter {
            local: Local::default(),
            shared,
            on_error: config.on_store_error,
            replicas: config.replicas.max(1),
            metrics,
        }
    }

    /// Admits the call or says when to retry; counts it against every limit when admitted.
    pub async fn admit(&self, call: &Counted<'_>) -> Result<Option<Standing>, GatewayError> {
        if call.limits.is_empty() {
            return Ok(None);
        }
        let (store, decision) = match &self.shared {
            None => ("local", self.local.decide(call, 1)),
            Some(shared) if shared.is_up() => match shared.decide(call).await {
                Ok(decision) => ("redis", decision),
                Err(error) => {
                    shared.down(&error, self.metrics.clone());
                    self.fallback(call)?
                }
            },
            Some(_) => self.fallback(call)?,
        };
        let outcome = if decision.is_ok() {
            "admitted"
        } else {
            "limited"
        };
        self.metrics.limit_decision(call.consumer, outcome, store);
        decision
    }

    /// The decision while the shared store is away.
    fn fallback(
        &self,
        call: &Counted<'_>,
    ) -> Result<(&'static str, Result<Option<Standing>, GatewayError>), GatewayError> {
        match self.on_error {
            OnStoreError::Local => Ok(("fallback", self.local.decide(call, self.replicas))),
            OnStoreError::Deny => {
                self.metrics
                    .limit_decision(call.consumer, "unavailable", "fallback");
                Err(GatewayError::LimitStoreUnavailable)
            }
        }
    }
}

/// Counters in this process.
#[derive(Default)]
struct Local {
    counters: Mutex<hashbrown::HashMap<CounterKey, Counter, foldhash::fast::RandomState>>,
    epoch: OnceInstant,
}

/// Whose counter: a consumer's name and a limit's id (`Limit::id`).
#[derive(Debug, Hash, PartialEq, Eq)]
struct CounterKey {
    consumer: String,
    limit: String,
}

/// `CounterKey` borrowed: looked up without building the key (it hashes as the key does).
#[derive(Hash)]
struct CounterQuery<'a> {
    consumer: &'a str,
    limit: &'a str,
}

impl hashbrown::Equivalent<CounterKey> for CounterQuery<'_> {
    fn equivalent(&self, key: &CounterKey) -> bool {
        self.consumer == key.consumer && self.limit == key.limit
    }
}

/// The start of this process's clock for theoretical arrival times.
struct OnceInstant(Instant);

impl Default for OnceInstant {
    fn default() -> Self {
        OnceInstant(Instant::now())
    }
}

#[derive(Debug, Clone, Copy)]
enum Counter {
    /// A rate's theoretical arrival time, in seconds since `Local::epoch`.
    Arrival(f64),
    /// A quota's calls in the period starting at `start` (Unix seconds).
    Used { start: u64, calls: u64 },
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Local {
    /// Decides with each limit divided by `share` (the replicas that would share it).
    fn decide(&self, call: &Counted<'_>, share: u32) -> Result<Option<Standing>, GatewayError> {
        let now = Now {
            since_epoch: self.epoch.0.elapsed().as_secs_f64(),
            unix: unix_now(),
        };
        let share = f64::from(share);
        let mut counters = self.counters.lock().expect("not poisoned");
        let consumer = call.consumer;
        fn query<'a>(consumer: &'a str, limit: &'a Limit) -> CounterQuery<'a> {
            CounterQuery {
                consumer,
                limit: &limit.id,
            }
        }
        // Every limit is checked before any counts the call.
        let mut tightest: Option<Standing> = None;
        for limit in &call.limits {
            let (_, standing) = next(limit, counters.get(&query(consumer, limit)), now, share)?;
            if tightest.is_none_or(|t| standing.remaining < t.remaining) {
                tightest = Some(standing);
            }
        }
        for (i, limit) in call.limits.iter().enumerate() {
            // Two limits alike (the same id) are one counter, counted once.
            if call.limits[..i].iter().any(|l| l.id == limit.id) {
                continue;
            }
            // Checked above with the same counter and clocks: it admits.
            let current = counters.get_mut(&query(consumer, limit));
            let (counter, _) = next(limit, current.as_deref(), now, share)?;
            match current {
                Some(current) => *current = counter,
                None => {
                    let key = CounterKey {
                        consumer: call.consumer.to_owned(),
                        limit: limit.id.clone(),
                    };
                    counters.insert(key, counter);
                }
            }
        }
        Ok(tightest)
    }
}

/// The moment of a decision, on both clocks it uses.
#[derive(Debug, Clone, Copy)]
struct Now {
    /// Seconds since `Local::epoch`, for a rate's theoretical arrival time.
    since_epoch: f64,
    /// Unix seconds, for a quota's period.
    unix: u64,
}

/// What `limit` does with one more call at `now`, its counter being `current`: the counter
/// after the call and where the call leaves the limit, or the refusal.
fn next(
    limit: &Limit,
    current: Option<&Counter>,
    now: Now,
    share: f64,
) -> Result<(Counter, Standing), GatewayError> {
    let policy = limit.kind.policy();
    match limit.kind {
        LimitKind::Rate { rate, burst } => {
            let now = now.since_epoch;
            let burst = (f64::from(burst) / share).floor().max(1.0);
            let interval = share / rate;
            let tolerance = interval * (burst - 1.0);
            let tat = match current {
                Some(Counter::Arrival(tat)) => tat.max(now),
                _ => now,
            };
            if tat - now > tolerance {
                return Err(limited(tat - now - tolerance, policy));
            }
            let next = tat + interval;
            let remaining = ((tolerance - (next - now)) / interval).floor() + 1.0;
            let standing = Standing {
                policy,
                remaining: remaining.max(0.0) as u64,
                reset: (next - now).ceil() as u64,
            };
            Ok((Counter::Arrival(next), standing))
        }
        LimitKind::Quota { calls, per } => {
            let unix = now.unix;
            let allowed = (calls as f64 / share).floor() as u64;
            let (start, end) = per.window(unix);
            let used = match current {
                Some(Counter::Used { start: s, calls }) if *s == start => *calls,
                _ => 0,
            };
            if used >= allowed {
                return Err(limited((end - unix) as f64, policy));
            }
            let standing = Standing {
                policy,
                remaining: allowed - used - 1,
                reset: end - unix,
            };
            Ok((
                Counter::Used {
                    start,
                    calls: used + 1,
                },
                standing,
            ))
        }
    }
}

fn limited(retry_after_seconds: f64, policy: Policy) -> GatewayError {
    GatewayError::RateLimited {
        retry_after: Duration::from_secs_f64(retry_after_seconds.max(0.001)),
        policy,
    }
}

/// The limits every replica shares, in Redis.
struct Shared {
    connection: ConnectionManager,
    script: redis::Script,
    timeout: Duration,
    up: AtomicBool,
    probing: AtomicBool,
}

/// Checks every limit of a call, then counts it against all of them, in one step. `KEYS[i]` is a
/// limit's counter; `ARGV[3i-2..3i]` its kind and numbers: `r`, the interval and the tolerance
/// (milliseconds) for a rate, `q`, the calls allowed and the period's end (Unix seconds) for a
/// quota. Time is Redis's own, so replicas' clocks need not agree. Returns `{0, i, wait_ms}`
/// when limit `i` refuses, else `{1, remaining_1, reset_ms_1, ...}`.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local next = {}
local out = {1}
for i = 1, #KEYS do
  local kind, a, b = ARGV[3*i-2], tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  local v = tonumber(redis.call('GET', KEYS[i]))
  if kind == 'r' then
    local tat = math.max(v or now, now)
    if tat - now > b then return {0, i, math.ceil(tat - now - b)} end
    next[i] = tat + a
    out[#out + 1] = math.floor((b - (next[i] - now)) / a) + 1
    out[#out + 1] = math.ceil(next[i] - now)
  else
    local used = v or 0
    if used >= a then return {0, i, math.max(b * 1000 - now, 1)} end
    next[i] = used + 1
    out[#out + 1] = a - used - 1
    out[#out + 1] = math.max(b * 1000 - now, 0)
  end
end
for i = 1, #KEYS do
  local kind, b = ARGV[3*i-2], tonumber(ARGV[3*i])
  if kind == 'r' then
    redis.call('SET', KEYS[i], string.format('%.3f', next[i]), 'PX', math.ceil(next[i] - now) + 1000)
  else
    redis.call('SET', KEYS[i], next[i], 'PXAT', b * 1000 + 60000)
  end
end
return out
";

/// A lazily connected, reconnecting Redis connection whose every call is bounded by
/// `timeout` (shared limits, and the MCP session store).
pub(crate) fn connect(url: &str, timeout: Duration) -> redis::RedisResult<ConnectionManager> {
    let client = redis::Client::open(url)?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, config)
}

impl Shared {
    fn new(url: &str, timeout: Duration) -> redis::RedisResult<Shared> {
        let connection = connect(url, timeout)?;
        Ok(Shared {
            connection,
            script: redis::Script::new(SCRIPT),
            timeout,
            up: AtomicBool::new(true),
            probing: AtomicBool::new(false),
        })
    }

    fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    async fn decide(
        &self,
        call: &Counted<'_>,
    ) -> Result<Result<Option<Standing>, GatewayError>, String> {
        let unix = unix_now();
        let mut invocation = self.script.prepare_invoke();
        for limit in &call.limits {
            let key = format!("capgate:limit:{}:{}", call.consumer, limit.id);
            match limit.kind {
                LimitKind::Rate { rate, burst } => {
                    let interval = 1000.0 / rate;
                    invocation
                        .key(key)
                        .arg("r")
                        .arg(interval)
                        .arg(interval * f64::from(burst.max(1) - 1));
                }
                LimitKind::Quota { calls, per } => {
                    let (start, end) = per.window(unix);
                    invocation
                        .key(format!("{key}:{start}"))
                        .arg("q")
                        .arg(calls)
                        .arg(end);
                }
            }
        }
        let mut connection = self.connection.clone();
        let answer: Vec<i64> = match tokio::time::timeout(
            self.timeout,
            invocation.invoke_async(&mut connection),
        )
        .await
        {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => return Err(error.to_string()),
            Err(_) => return Err(format!("no answer within {:?}", self.timeout)),
        };
        Ok(read_answer(&answer, &call.limits))
    }

    /// Marks the store down (once) and probes it until it answers again.
    fn down(self: &Arc<Self>, error: &str, metrics: Arc<Metrics>) {
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                "limits store unreachable ({error}); deciding by limits.on_store_error until it answers"
            );
            metrics.limit_store_up.set(0);
        }
        if self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let shared = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let mut connection = shared.connection.clone();
                let ping = redis::cmd("PING");
                let answer = ping.query_async::<String>(&mut connection);
                if let Ok(Ok(_)) = tokio::time::timeout(shared.timeout, answer).await {
                    shared.up.store(true, Ordering::Release);
                    shared.probing.store(false, Ordering::Release);
                    metrics.limit_store_up.set(1);
                    tracing::info!("limits store answers again; limits are shared again");
                    return;
                }
            }
        });
    }
}

/// The script's answer as a decision.
fn read_answer(answer: &[i64], limits: &[&Limit]) -> Result<Option<Standing>, GatewayError> {
    match answer {
        [0, index, wait_ms, ..] => {
            let limit = limits[(*index as usize).saturating_sub(1).min(limits.len() - 1)];
            Err(GatewayError::RateLimited {
                retry_after: Duration::from_millis((*wait_ms).max(1) as u64),
                policy: limit.kind.policy(),
            })
        }
        [1, rest @ ..] => {
            let mut tightest: Option<Standing> = None;
            for (limit, pair) in limits.iter().zip(rest.chunks(2)) {
                let standing = Standing {
                    policy: limit.kind.policy(),
                    remaining: pair[0].max(0) as u64,
                    reset: (pair.get(1).copied().unwrap_or(0).max(0) as u64).div_ceil(1000),
                };
                if tightest.is_none_or(|t| standing.remaining < t.remaining) {
                    tightest = Some(standing);
                }
            }
            Ok(tightest)
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capgate_model::consumers::Period;
    use capgate_model::glob::Pattern;

    fn limit(kind: LimitKind) -> Limit {
        let any = Pattern::any();
        Limit {
            capability: any.clone(),
            name: any,
            kind,
            id: format!("{kind:?}"),
        }
    }

    #[test]
    fn a_rate_admits_its_burst_then_says_when_to_retry() {
        let local = Local::default();
        let rate = limit(LimitKind::Rate {
            rate: 1.0,
            burst: 3,
        });
        let call = Counted {
            consumer: "a",
            limits: vec![&rate],
        };
        let remaining: Vec<u64> = (0..3)
            .map(|_| local.decide(&call, 1).unwrap().unwrap().remaining)
            .collect();
        assert_eq!(remaining, [2, 1, 0]);
        match local.decide(&call, 1) {
            Err(GatewayError::RateLimited {
                retry_after,
                policy,
            }) => {
                assert!(retry_after > Duration::from_millis(900), "{retry_after:?}");
                assert_eq!(policy.quota, 3);
            }
            other => panic!("{other:?}"),
        }
        // Another consumer has its own counter.
        let other = Counted {
            consumer: "b",
            limits: vec![&rate],
        };
        assert!(local.decide(&other, 1).is_ok());
    }

    #[test]
    fn a_refused_call_is_not_counted_by_the_limits_that_had_room() {
        let local = Local::default();
        let roomy = limit(LimitKind::Quota {
            calls: 10,
            per: Period::Day,
        });
        let tight = limit(LimitKind::Rate {
            rate: 0.001,
            burst: 1,
        });
        let call = Counted {
            consumer: "a",
            limits: vec![&roomy, &tight],
        };
        assert_eq!(local.decide(&call, 1).unwrap().unwrap().remaining, 0);
        for _ in 0..5 {
            assert!(local.decide(&call, 1).is_err());
        }
        let quota_only = Counted {
            consumer: "a",
            limits: vec![&roomy],
        };
        assert_eq!(local.decide(&quota_only, 1).unwrap().unwrap().remaining, 8);
    }

    #[test]
    fn a_share_divides_each_limit() {
        let local = Local::default();
        let quota = limit(LimitKind::Quota {
            calls: 10,
            per: Period::Hour,
        });
        let call = Counted {
            consumer: "a",
            limits: vec![&quota],
        };
        let admitted = (0..10).filter(|_| local.decide(&call, 3).is_ok()).count();
        assert_eq!(admitted, 3);
    }
}
