//! Everything the stand-in remembers, behind one mutex: the sessions, the idempotency cache,
//! the queue of injected faults and the log of requests received.
//!
//! Methods here are synchronous and quick; callers hold the lock only around one of them and
//! never across an `.await`. Parsing and validation happen before (`params`), transport after
//! (`http`).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::RecordedRequest;
use super::error::ApiError;
use super::params::{CreateParams, Cursor, Expand, ListParams, UpdateParams};
use super::session::{LastError, Report, Session, View, random_id};

/// How long Stripe keeps an idempotent result.
const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Requests kept for `requests()`; the oldest go first so a long-running sim stays bounded.
const MAX_RECORDED: usize = 100_000;

/// Who is asking, from the API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub key: String,
    pub livemode: bool,
    /// A restricted (`rk_`) key, which may see `verified_outputs.dob` and `id_number`.
    pub restricted: bool,
}

/// One fault, as posted to `/_sim/faults`; `count` says how many matching requests it hits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default = "one")]
    pub count: u32,
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub should_retry: Option<bool>,
    #[serde(default)]
    pub retry_after: Option<u64>,
    #[serde(default)]
    pub delay_ms: Option<u64>,
}

fn one() -> u32 {
    1
}

impl Fault {
    fn matches(&self, method: &str, path: &str) -> bool {
        self.method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|prefix| path.starts_with(prefix))
    }
}

/// What makes two idempotent requests "the same": method, path and decoded parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Fingerprint {
    pub method: String,
    pub path: String,
    pub params: Map<String, Value>,
}

/// A stored first answer.
#[derive(Debug, Clone)]
pub struct StoredResponse {
    pub status: u16,
    pub body: Bytes,
    pub request_id: String,
}

#[derive(Debug)]
enum Entry {
    InFlight(Fingerprint),
    Done {
        fingerprint: Fingerprint,
        response: StoredResponse,
        at: Instant,
    },
}

/// What to do with an idempotent request.
#[derive(Debug)]
pub enum Begin {
    /// The key was free and is now reserved for this request.
    Proceed,
    Replay(StoredResponse),
    Mismatch,
    InUse,
}

/// The idempotency cache is keyed by API key and `Idempotency-Key`, as Stripe scopes keys to
/// the account that sent them.
pub type IdempotencyScope = (String, String);

#[derive(Debug, Default)]
pub struct State {
    sessions: Vec<Session>,
    index: HashMap<String, usize>,
    next_seq: u64,
    idempotency: HashMap<IdempotencyScope, Entry>,
    faults: VecDeque<Fault>,
    requests: VecDeque<RecordedRequest>,
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl State {
    pub fn reset(&mut self) {
        *self = State::default();
    }

    pub fn record(&mut self, request: RecordedRequest) {
        if self.requests.len() >= MAX_RECORDED {
            self.requests.pop_front();
        }
        self.requests.push_back(request);
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.requests.iter().cloned().collect()
    }

    pub fn clear_requests(&mut self) {
        self.requests.clear();
    }

    pub fn add_fault(&mut self, fault: Fault) {
        self.faults.push_back(fault);
    }

    pub fn faults(&self) -> Vec<Fault> {
        self.faults.iter().cloned().collect()
    }

    pub fn clear_faults(&mut self) {
        self.faults.clear();
    }

    /// Consumes one use of the first fault that matches, in the order they were added.
    pub fn take_fault(&mut self, method: &str, path: &str) -> Option<Fault> {
        let position = self.faults.iter().position(|f| f.matches(method, path))?;
        let fault = self.faults.get_mut(position)?;
        fault.count = fault.count.saturating_sub(1);
        let taken = Fault {
            count: 1,
            ..fault.clone()
        };
        if fault.count == 0 {
            self.faults.remove(position);
        }
        Some(taken)
    }

    pub fn idempotency_begin(
        &mut self,
        scope: &IdempotencyScope,
        fingerprint: Fingerprint,
    ) -> Begin {
        let now = Instant::now();
        self.idempotency.retain(|_, entry| match entry {
            Entry::InFlight(_) => true,
            Entry::Done { at, .. } => now.duration_since(*at) < IDEMPOTENCY_TTL,
        });
        match self.idempotency.get(scope) {
            Some(Entry::InFlight(_)) => Begin::InUse,
            Some(Entry::Done {
                fingerprint: first,
                response,
                ..
            }) => {
                if *first == fingerprint {
                    Begin::Replay(response.clone())
                } else {
                    Begin::Mismatch
                }
            }
            None => {
                self.idempotency
                    .insert(scope.clone(), Entry::InFlight(fingerprint));
                Begin::Proceed
            }
        }
    }

    /// Ends a reservation: stores the answer for replay, or frees the key when the answer is
    /// not one Stripe would store.
    pub fn idempotency_finish(
        &mut self,
        scope: &IdempotencyScope,
        response: Option<StoredResponse>,
    ) {
        let Some(Entry::InFlight(fingerprint)) = self.idempotency.remove(scope) else {
            return;
        };
        if let Some(response) = response {
            self.idempotency.insert(
                scope.clone(),
                Entry::Done {
                    fingerprint,
                    response,
                    at: Instant::now(),
                },
            );
        }
    }

    fn find(&self, id: &str, livemode: bool) -> Option<usize> {
        self.index
            .get(id)
            .copied()
            .filter(|&i| self.sessions.get(i).is_some_and(|s| s.livemode == livemode))
    }

    fn session_mut(&mut self, caller: &Caller, id: &str) -> Result<&mut Session, ApiError> {
        let index = self
            .find(id, caller.livemode)
            .ok_or_else(|| ApiError::no_such_session("session", id).replayable())?;
        self.sessions
            .get_mut(index)
            .ok_or_else(|| ApiError::no_such_session("session", id).replayable())
    }

    pub fn create(&mut self, caller: &Caller, params: CreateParams) -> Result<Value, ApiError> {
        let expand = params.expand.clone();
        let seq = self.next_seq;
        let session = Session::create(seq, now_unix(), caller.livemode, params)?;
        self.next_seq += 1;
        self.index.insert(session.id.clone(), self.sessions.len());
        let rendered = session.render(view(caller, &expand));
        self.sessions.push(session);
        Ok(rendered)
    }

    pub fn retrieve(
        &mut self,
        caller: &Caller,
        id: &str,
        expand: &Expand,
    ) -> Result<Value, ApiError> {
        let session = self.session_mut(caller, id)?;
        Ok(session.render(view(caller, expand)))
    }

    pub fn update(
        &mut self,
        caller: &Caller,
        id: &str,
        params: UpdateParams,
    ) -> Result<Value, ApiError> {
        let expand = params.expand.clone();
        let session = self.session_mut(caller, id)?;
        session.update(params)?;
        Ok(session.render(view(caller, &expand)))
    }

    pub fn cancel(
        &mut self,
        caller: &Caller,
        id: &str,
        expand: &Expand,
    ) -> Result<Value, ApiError> {
        let session = self.session_mut(caller, id)?;
        session.cancel()?;
        Ok(session.render(view(caller, expand)))
    }

    pub fn redact(
        &mut self,
        caller: &Caller,
        id: &str,
        expand: &Expand,
    ) -> Result<Value, ApiError> {
        let session = self.session_mut(caller, id)?;
        session.redact()?;
        Ok(session.render(view(caller, expand)))
    }

    /// A page of sessions, newest first; the cursor is placed in the unfiltered order so a
    /// cursor object that a filter hides still marks a position, as with Stripe.
    pub fn list(&self, caller: &Caller, params: &ListParams) -> Result<Value, ApiError> {
        let mut ordered: Vec<&Session> = self
            .sessions
            .iter()
            .filter(|s| s.livemode == caller.livemode)
            .collect();
        ordered.sort_by_key(|s| std::cmp::Reverse((s.created, s.seq)));
        let position = |param: &str, id: &str| -> Result<(i64, u64), ApiError> {
            self.find(id, caller.livemode)
                .and_then(|i| self.sessions.get(i))
                .map(|s| (s.created, s.seq))
                .ok_or_else(|| {
                    let mut error = ApiError::no_such_session(param, id);
                    error.status = 400;
                    error
                })
        };
        let matching = ordered.into_iter().filter(|s| {
            params.created.matches(s.created)
                && params.status.is_none_or(|status| s.status == status)
                && params
                    .client_reference_id
                    .as_ref()
                    .is_none_or(|v| s.client_reference_id.as_ref() == Some(v))
                && params
                    .related_customer
                    .as_ref()
                    .is_none_or(|v| s.related_customer.as_ref() == Some(v))
                && params
                    .related_customer_account
                    .as_ref()
                    .is_none_or(|v| s.related_customer_account.as_ref() == Some(v))
        });
        let (page, has_more): (Vec<&Session>, bool) = match &params.cursor {
            None => {
                let candidates: Vec<&Session> = matching.collect();
                let has_more = candidates.len() > params.limit;
                (
                    candidates.into_iter().take(params.limit).collect(),
                    has_more,
                )
            }
            Some(Cursor::StartingAfter(id)) => {
                let cursor = position("starting_after", id)?;
                let candidates: Vec<&Session> =
                    matching.filter(|s| (s.created, s.seq) < cursor).collect();
                let has_more = candidates.len() > params.limit;
                (
                    candidates.into_iter().take(params.limit).collect(),
                    has_more,
                )
            }
            Some(Cursor::EndingBefore(id)) => {
                let cursor = position("ending_before", id)?;
                let candidates: Vec<&Session> =
                    matching.filter(|s| (s.created, s.seq) > cursor).collect();
                let has_more = candidates.len() > params.limit;
                let skip = candidates.len().saturating_sub(params.limit);
                (candidates.into_iter().skip(skip).collect(), has_more)
            }
        };
        let view = view(caller, &params.expand);
        let data: Vec<Value> = page.into_iter().map(|s| s.render(view)).collect();
        Ok(json!({
            "object": "list",
            "data": data,
            "has_more": has_more,
            "url": "/v1/identity/verification_sessions",
        }))
    }

    /// Runs one `/_sim` step on a session found in either mode, returning it fully expanded.
    pub fn simulate(&mut self, id: &str, step: SimStep) -> Result<Value, ApiError> {
        let index = self
            .index
            .get(id)
            .copied()
            .ok_or_else(|| ApiError::no_such_session("session", id))?;
        let session = self
            .sessions
            .get_mut(index)
            .ok_or_else(|| ApiError::no_such_session("session", id))?;
        match step {
            SimStep::Processing => session.start_processing()?,
            SimStep::Verified => session.verify(Report {
                id: random_id("vr_", 24),
                created: now_unix(),
            })?,
            SimStep::RequiresInput(error) => session.fail(error)?,
            SimStep::Redacted => session.finish_redaction()?,
        }
        let expand = Expand::everything();
        Ok(session.render(View {
            expand: &expand,
            restricted: true,
        }))
    }
}

/// A step only the `/_sim` controls can take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimStep {
    Processing,
    Verified,
    RequiresInput(LastError),
    Redacted,
}

fn view<'a>(caller: &Caller, expand: &'a Expand) -> View<'a> {
    View {
        expand,
        restricted: caller.restricted,
    }
}
