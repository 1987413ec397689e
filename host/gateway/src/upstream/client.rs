//! The HTTP client every upstream call goes through (connections pooled per origin by
//! [`super::pool`]: HTTP/1.1 of capgate's own, HTTP/2 on hyper; rustls verified against the
//! platform's roots): a bounded number of requests per origin, connect and request timeouts,
//! and retries by Stripe's SDK rules (with the Stripe profile, a POST gets an
//! `Idempotency-Key` before its first attempt and keeps it).
//!
//! hyper rather than reqwest: reqwest's layers (redirect policy, URL to URI conversion, its own
//! header defaults) cost half of a proxied request's CPU (BENCHMARKS.md, issue 22), and none of
//! them is used here. What reqwest did that callers can see is kept: `User-Agent` and
//! `Accept: */*` unless set, basic credentials, no redirects followed, HTTP/2 by ALPN over TLS.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use opentelemetry::KeyValue;

use capgate_model::config::{Limits, ProfileName, RetryPolicy};
use capgate_model::exchange::{UpstreamRequest, UpstreamResponse};
use capgate_model::snapshot::UpstreamAdapter;

use super::budget::{Budgets, Shed};
use super::encode::{Encoded, encode};
use super::h1;
use super::pool::{Origin, Outgoing, Pool, SendError};
use super::random_id;
use crate::error::GatewayError;

/// What every upstream request says it is, unless it says otherwise.
const USER_AGENT: &str = concat!("capgate/", env!("CARGO_PKG_VERSION"));
static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
static STRIPE_SHOULD_RETRY: HeaderName = HeaderName::from_static("stripe-should-retry");

/// The HTTP client shared by every upstream call.
#[derive(Debug)]
pub struct Client {
    pool: Pool,
    limits: Limits,
    retry: RetryPolicy,
    budgets: Budgets,
}

impl Client {
    pub fn new(limits: &Limits, retry: &RetryPolicy) -> Client {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(limits.upstream_connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(crate::tls::client_config())
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(tcp);
        Client {
            pool: Pool::new(
                connector,
                limits.upstream_max_idle,
                limits.upstream_max_connections,
            ),
            limits: limits.clone(),
            retry: retry.clone(),
            budgets: Budgets::new(&limits.upstream_budget, limits.replicas),
        }
    }

    /// Sends `request` to `adapter`, retrying what Stripe's SDKs would retry, within the
    /// configured total timeout.
    pub async fn send(
        &self,
        adapter: &UpstreamAdapter,
        mut request: UpstreamRequest,
    ) -> Result<UpstreamResponse, GatewayError> {
        let started = Instant::now();
        let deadline = started + self.limits.upstream_timeout;
        let timeout = || GatewayError::UpstreamTimeout {
            upstream: adapter.namespace.clone(),
            after: self.limits.upstream_timeout,
        };
        if self.retry.max_retries > 0
            && adapter.profile == ProfileName::Stripe
            && request.method == Method::POST
            && !request.headers.contains_key(&IDEMPOTENCY_KEY)
        {
            // Stripe's SDKs put a key on every POST so that a retry cannot act twice.
            let key = format!("capgate-{}", random_id());
            request.headers.insert(
                IDEMPOTENCY_KEY.clone(),
                HeaderValue::try_from(key).expect("ascii"),
            );
        }
        let may_retry = self.retry.max_retries > 0
            && retry_allowed(
                adapter.profile,
                &request.method,
                request.headers.contains_key(&IDEMPOTENCY_KEY),
            );
        let mut encoded = encode(adapter, &request, self.limits.max_upstream_url_bytes)?;
        // What every attempt sends unless the request says otherwise, added once, not per
        // attempt.
        let headers = &mut encoded.headers;
        if !headers.contains_key(http::header::USER_AGENT) {
            headers.insert(
                http::header::USER_AGENT,
                HeaderValue::from_static(USER_AGENT),
            );
        }
        if !headers.contains_key(http::header::ACCEPT) {
            headers.insert(http::header::ACCEPT, HeaderValue::from_static("*/*"));
        }
        let origin = self.pool.origin(&adapter.origin);
        let mut attempt = 0u32;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(timeout());
            }
            // Each attempt counts against the account's budget, retries too.
            if let Err(Shed(retry_after)) = self
                .budgets
                .take(&adapter.origin, adapter.profile, &encoded.headers)
                .await
            {
                tracing::warn!(upstream = %adapter.namespace, "upstream budget exhausted; call shed");
                return Err(GatewayError::UpstreamBudget {
                    upstream: adapter.namespace.clone(),
                    retry_after,
                });
            }
            let span = attempt_span(&encoded, attempt);
            let outcome = tokio::time::timeout(remaining, async {
                let _permit = origin
                    .slots
                    .acquire()
                    .await
                    .expect("semaphores are never closed");
                self.exchange(&origin, &encoded, span.as_ref()).await
            })
            .await;
            if let Some(span) = span {
                match &outcome {
                    Ok(Ok(response)) => {
                        let status = response.status.as_u16();
                        span.set(KeyValue::new(
                            "http.response.status_code",
                            i64::from(status),
                        ));
                        if status >= 400 {
                            span.fail(status.to_string());
                        }
                    }
                    Err(_) | Ok(Err(Failure::Timeout)) => span.fail("timeout"),
                    Ok(Err(Failure::Connect(_))) => span.fail("connect"),
                    Ok(Err(Failure::Invalid(_))) => span.fail("invalid_response"),
                }
            }
            let retry_reason = match outcome {
                Err(_) => return Err(timeout()),
                Ok(Ok(response)) => {
                    let should = should_retry(&response);
                    if !(may_retry && should && attempt < self.retry.max_retries) {
                        crate::access::upstream_answered(response.status.as_u16(), attempt);
                        return Ok(response);
                    }
                    format!("status {}", response.status.as_u16())
                }
                Ok(Err(Failure::Connect(detail))) => {
                    if !(may_retry && attempt < self.retry.max_retries) {
                        tracing::warn!(upstream = %adapter.namespace, error = %detail, "upstream unreachable");
                        return Err(GatewayError::UpstreamUnreachable {
                            upstream: adapter.namespace.clone(),
                        });
                    }
                    detail
                }
                Ok(Err(Failure::Timeout)) => return Err(timeout()),
                Ok(Err(Failure::Invalid(detail))) => {
                    return Err(GatewayError::UpstreamInvalid {
                        upstream: adapter.namespace.clone(),
                        detail,
                    });
                }
            };
            attempt += 1;
            let delay = self.backoff(attempt);
            tracing::info!(upstream = %adapter.namespace, attempt, reason = %retry_reason, delay_ms = delay.as_millis() as u64, "retrying upstream call");
            if Instant::now() + delay >= deadline {
                return Err(timeout());
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// min(base * 2^(n-1), max), plus up to 25 % jitter, as Stripe's SDKs back off.
    fn backoff(&self, attempt: u32) -> Duration {
        let exponential = self
            .retry
            .base_delay
            .saturating_mul(1u32 << (attempt - 1).min(16))
            .min(self.retry.max_delay);
        let jitter = exponential.mul_f64(rand::random::<f64>() * 0.25);
        exponential + jitter
    }

    async fn exchange(
        &self,
        origin: &Arc<Origin>,
        encoded: &Encoded,
        span: Option<&crate::trace::Child>,
    ) -> Result<UpstreamResponse, Failure> {
        // This attempt's own headers; `HeaderMap::new` allocates nothing while it stays empty.
        let mut extra = HeaderMap::new();
        if let Some(span) = span {
            span.inject(&mut extra);
        }
        if let Some(basic) = &encoded.basic {
            extra.insert(http::header::AUTHORIZATION, basic.clone());
        }
        let request = Outgoing {
            method: &encoded.method,
            url: &encoded.url,
            target: encoded.target(),
            headers: &encoded.headers,
            extra: &extra,
            body: encoded.body.as_ref().unwrap_or(&EMPTY),
        };
        let limit = self.limits.max_upstream_body_bytes;
        let answer = self
            .pool
            .send(origin, &request, limit)
            .await
            .map_err(|e| match e {
                // The connect timeout (the whole call's deadline is the caller's).
                SendError::Connect(e) if timed_out(&*e) => Failure::Timeout,
                SendError::Connect(e) => Failure::Connect(chain(&*e)),
                // The upstream answered, but not in a form the client reads (more than 100
                // headers, say): asking again gets the same answer.
                SendError::Http2(e) if unreadable_answer(&e) => {
                    Failure::Invalid(format!("its answer could not be read: {}", chain(&e)))
                }
                SendError::Http2(e) => Failure::Connect(chain(&e)),
                SendError::Http1(h1::Error::Invalid(detail)) => {
                    Failure::Invalid(format!("its answer could not be read: {detail}"))
                }
                SendError::Http1(h1::Error::Io { error, .. }) => Failure::Connect(chain(&error)),
                SendError::Http1(h1::Error::TooLarge(limit)) | SendError::TooLarge(limit) => {
                    Failure::Invalid(format!("response body larger than {limit} bytes"))
                }
            })?;
        Ok(UpstreamResponse {
            status: answer.status,
            headers: answer.headers,
            body: answer.body,
            from_plugins: HeaderMap::new(),
        })
    }
}

/// The body of a request that has none.
static EMPTY: Bytes = Bytes::new();

/// The span of one attempt (kind client, named by its method as HTTP client spans are), when
/// the request is traced. Its URL is recorded without the query, which may carry bound values.
fn attempt_span(encoded: &Encoded, attempt: u32) -> Option<crate::trace::Child> {
    crate::trace::span(
        encoded.method.as_str().to_owned(),
        crate::trace::Kind::Client,
        || {
            let uri = http::Uri::try_from(encoded.url.as_str()).unwrap_or_default();
            let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            let mut attributes = vec![
                KeyValue::new("http.request.method", encoded.method.as_str().to_owned()),
                KeyValue::new("server.address", uri.host().unwrap_or("").to_owned()),
                KeyValue::new("server.port", i64::from(port)),
                KeyValue::new(
                    "url.full",
                    format!(
                        "{}://{}{}",
                        uri.scheme_str().unwrap_or("http"),
                        uri.authority().map_or("", |a| a.as_str()),
                        uri.path()
                    ),
                ),
            ];
            if attempt > 0 {
                attributes.push(KeyValue::new(
                    "http.request.resend_count",
                    i64::from(attempt),
                ));
            }
            attributes
        },
    )
}

/// A failed exchange, before the retry decision.
enum Failure {
    Connect(String),
    Timeout,
    Invalid(String),
}

/// Whether the request reached the upstream and its answer could not be parsed.
fn unreadable_answer(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(hyper) = e.downcast_ref::<hyper::Error>() {
            return hyper.is_parse() || hyper.is_parse_status() || hyper.is_parse_too_large();
        }
        source = e.source();
    }
    false
}

/// Whether an I/O timeout (connecting took longer than the connect timeout) caused `error`.
fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::TimedOut;
        }
        source = e.source();
    }
    false
}

/// An error and its causes, `: `-separated (the client's errors name no URL, whose query may
/// carry an API key).
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}

/// Whether a failed request of `method` may be retried at all. With Stripe, as its SDKs do:
/// GET, HEAD, DELETE and OPTIONS, and any request carrying an `Idempotency-Key` (every POST
/// does: the gateway adds one); a forwarded PUT or PATCH without a key is sent once. Elsewhere
/// only methods that are idempotent by definition.
fn retry_allowed(profile: ProfileName, method: &Method, has_key: bool) -> bool {
    match profile {
        ProfileName::Stripe => {
            has_key
                || matches!(
                    *method,
                    Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS
                )
        }
        ProfileName::Default => matches!(
            *method,
            Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
        ),
    }
}

/// Stripe's SDK rule: `Stripe-Should-Retry` decides when present; else 409 and 5xx retry.
fn should_retry(response: &UpstreamResponse) -> bool {
    match response
        .headers
        .get(&STRIPE_SHOULD_RETRY)
        .and_then(|v| v.to_str().ok())
    {
        Some("true") => return true,
        Some("false") => return false,
        _ => {}
    }
    response.status == StatusCode::CONFLICT || response.status.is_server_error()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_rules_follow_stripes_sdks() {
        let response = |status: u16, header: Option<&str>| {
            let mut headers = HeaderMap::new();
            if let Some(h) = header {
                headers.insert("stripe-should-retry", HeaderValue::from_str(h).unwrap());
            }
            UpstreamResponse {
                status: StatusCode::from_u16(status).unwrap(),
                headers,
                body: Bytes::new(),
                from_plugins: HeaderMap::new(),
            }
        };
        assert!(should_retry(&response(409, None)));
        assert!(should_retry(&response(503, None)));
        assert!(!should_retry(&response(503, Some("false"))));
        assert!(should_retry(&response(429, Some("true"))));
        assert!(!should_retry(&response(429, None)));
        assert!(!should_retry(&response(400, None)));
        assert!(retry_allowed(ProfileName::Stripe, &Method::POST, true));
        assert!(retry_allowed(ProfileName::Stripe, &Method::GET, false));
        for method in [Method::PATCH, Method::PUT, Method::POST] {
            assert!(
                !retry_allowed(ProfileName::Stripe, &method, false),
                "{method}"
            );
            assert!(
                retry_allowed(ProfileName::Stripe, &method, true),
                "{method}"
            );
        }
        assert!(!retry_allowed(ProfileName::Default, &Method::POST, true));
    }
}
