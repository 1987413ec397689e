//! Calling upstream APIs: building the request from a call's arguments, encoding it by the
//! upstream's profile, adding auth, sending it with timeouts, a bounded pool and retries.
//!
//! This is the only module that holds the HTTP client and the only one that reads secret
//! values (`Secret::expose`), after request transforms ran. [`prepare`] builds an
//! [`UpstreamRequest`] that plugins may see (no auth, body still JSON); [`Client::send`] encodes
//! and sends it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use crate::error::GatewayError;
use capgate_model::config::{Limits, ProfileName, RetryPolicy};
use capgate_model::exchange::{
    FORWARDED_HEADERS, Payload, Sealed, UpstreamRequest, UpstreamResponse,
};
use capgate_model::form::{self, ArrayStyle};
use capgate_model::secret::Secret;
use capgate_model::snapshot::{Auth, BodyPlan, Call, PathPart, UpstreamAdapter};
use capgate_model::spec::ParamIn;
use capgate_model::template::Scope;

/// Values templates can read while a request is prepared: the call's arguments first, then the
/// caller's inputs, and the adapter's bound variables.
struct ArgumentScope<'a> {
    args: &'a Map<String, Value>,
    inputs: &'a Map<String, Value>,
    binds: &'a std::collections::BTreeMap<String, Option<Secret>>,
}

impl Scope for ArgumentScope<'_> {
    fn input(&self, name: &str) -> Option<&Value> {
        self.args.get(name).or_else(|| self.inputs.get(name))
    }

    fn bound(&self, variable: &str) -> Option<&str> {
        self.binds.get(variable)?.as_ref().map(Secret::expose)
    }
}

/// Characters kept as they are in a path parameter: RFC 3986 unreserved only, so a value is
/// always exactly one segment.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Builds the upstream request of `call` from the caller's `inputs` (path variables, query
/// parameters, body fields and `body`, or tool arguments) and forwarded caller headers.
pub fn prepare(
    call: &Call,
    inputs: &Map<String, Value>,
    caller_headers: &HeaderMap,
) -> Result<UpstreamRequest, GatewayError> {
    let upstream = &call.upstream;
    let empty = Map::new();
    let mut args = Map::new();
    {
        let scope = ArgumentScope {
            args: &empty,
            inputs,
            binds: &upstream.adapter.binds,
        };
        for (name, source) in &call.with {
            let value = match source {
                capgate_model::snapshot::Source::Input(input) => inputs.get(input).cloned(),
                capgate_model::snapshot::Source::Template(t) => t.render_value(&scope),
                capgate_model::snapshot::Source::Constant(v) => Some(v.clone()),
            };
            if let Some(value) = value {
                args.insert(name.clone(), value);
            }
        }
    }
    for param in &upstream.params {
        if !args.contains_key(&param.name)
            && !call.with.iter().any(|(n, _)| n == &param.name)
            && let Some(value) = inputs.get(&param.name)
        {
            args.insert(param.name.clone(), value.clone());
        }
    }
    let scope = ArgumentScope {
        args: &args,
        inputs,
        binds: &upstream.adapter.binds,
    };
    let sends_body = !matches!(upstream.method, Method::GET | Method::DELETE | Method::HEAD);
    let mut path_values: HashMap<&str, String> = HashMap::new();
    let mut query = Vec::new();
    let mut headers = HeaderMap::new();
    let mut body_fields = Map::new();
    let mut whole_body: Option<Value> = None;
    let mut sealed = Sealed {
        hides_body: call.hides_body,
        ..Sealed::default()
    };
    for (param, &secret) in upstream.params.iter().zip(&call.sealed) {
        let value = match &param.value {
            Some(template) => template.render(&scope),
            None => args.get(&param.name).cloned(),
        };
        let value = match value {
            Some(Value::Null) | None => {
                if param.spec.required && (sends_body || param.location != ParamIn::Body) {
                    return Err(GatewayError::bad_request(
                        "parameter_missing",
                        format!("Missing required param: {}.", param.name),
                        Some(&param.name),
                    ));
                }
                // To Stripe, a body field given as `null` is sent (its "unset": an empty
                // value), unlike one not given at all.
                if value.is_some()
                    && upstream.adapter.profile == ProfileName::Stripe
                    && sends_body
                    && param.location == ParamIn::Body
                    && param.name != "body"
                {
                    body_fields.insert(param.name.clone(), Value::Null);
                }
                continue;
            }
            Some(value) => value,
        };
        match param.location {
            ParamIn::Path => {
                let text = capgate_model::template::value_text(&value);
                if text.is_empty() || text == "." || text == ".." {
                    return Err(GatewayError::bad_request(
                        "parameter_invalid",
                        format!("Invalid value for path parameter {}: {text:?}", param.name),
                        Some(&param.name),
                    ));
                }
                path_values.insert(&param.name, text);
            }
            ParamIn::Query if secret => sealed.query.push((param.name.clone(), value)),
            ParamIn::Query => query.push((param.name.clone(), value)),
            ParamIn::Header => {
                let headers = if secret {
                    &mut sealed.headers
                } else {
                    &mut headers
                };
                let text = capgate_model::template::value_text(&value);
                match (
                    HeaderName::try_from(param.name.as_str()),
                    HeaderValue::try_from(text),
                ) {
                    (Ok(name), Ok(value)) => {
                        headers.append(name, value);
                    }
                    _ => {
                        return Err(GatewayError::bad_request(
                            "parameter_invalid",
                            format!("Invalid value for header parameter {}", param.name),
                            Some(&param.name),
                        ));
                    }
                }
            }
            ParamIn::Cookie => {
                let headers = if secret {
                    &mut sealed.headers
                } else {
                    &mut headers
                };
                // Only RFC 6265's cookie octets: a `;` would add a cookie of the caller's own.
                let text = capgate_model::template::value_text(&value);
                let octet = |c: char| c.is_ascii_graphic() && !matches!(c, '"' | ',' | ';' | '\\');
                match HeaderValue::try_from(format!("{}={text}", param.name)) {
                    Ok(cookie) if text.chars().all(octet) => {
                        headers.append(http::header::COOKIE, cookie);
                    }
                    _ => {
                        return Err(GatewayError::bad_request(
                            "parameter_invalid",
                            format!(
                                "Invalid value for cookie parameter {}: only visible ASCII \
                                 characters other than '\"', ',', ';' and '\\' are allowed",
                                param.name
                            ),
                            Some(&param.name),
                        ));
                    }
                }
            }
            ParamIn::Body if !sends_body => {}
            ParamIn::Body
                if param.name == "body"
                    && (value.is_object() || whole_body.is_none() && !value.is_object()) =>
            {
                sealed.hides_body |= secret;
                whole_body = Some(value);
            }
            // Body parameters are sent only when they build the body.
            ParamIn::Body if secret && matches!(upstream.body, BodyPlan::FromParams) => {
                sealed.body.insert(param.name.clone(), value);
            }
            ParamIn::Body => {
                body_fields.insert(param.name.clone(), value);
            }
            ParamIn::Environment => {}
        }
    }
    let mut path = String::new();
    for part in &upstream.path {
        match part {
            PathPart::Literal(text) => path.push_str(text),
            PathPart::Param(name) => match path_values.get(name.as_str()) {
                Some(value) => path.extend(percent_encoding::utf8_percent_encode(value, SEGMENT)),
                None => {
                    return Err(GatewayError::bad_request(
                        "parameter_missing",
                        format!("Missing required param: {name}."),
                        Some(name),
                    ));
                }
            },
        }
    }
    for name in FORWARDED_HEADERS {
        for value in caller_headers.get_all(name) {
            headers.append(HeaderName::from_static(name), value.clone());
        }
    }
    let body = if !sends_body {
        None
    } else {
        match &upstream.body {
            BodyPlan::None => None,
            BodyPlan::FromParams => match (whole_body, body_fields.is_empty()) {
                (None, true) => None,
                (None, false) => Some(Payload::Structured(Value::Object(body_fields))),
                (Some(Value::Object(mut whole)), _) => {
                    whole.extend(body_fields);
                    Some(Payload::Structured(Value::Object(whole)))
                }
                (Some(other), _) => Some(Payload::Structured(other)),
            },
            BodyPlan::Structured(template) => template.render(&scope).map(Payload::Structured),
            BodyPlan::Form(template) => template.render(&scope).map(Payload::Form),
            BodyPlan::Text {
                template,
                content_type,
            } => template.render_text(&scope).map(|text| Payload::Raw {
                bytes: Bytes::from(text.into_owned()),
                content_type: (*content_type).to_owned(),
            }),
        }
    };
    Ok(UpstreamRequest {
        method: upstream.method.clone(),
        path,
        query,
        headers,
        body,
        sealed,
    })
}

/// The HTTP client shared by every upstream call.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    limits: Limits,
    retry: RetryPolicy,
    /// One semaphore per origin bounds concurrent upstream requests.
    slots: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Client {
    pub fn new(limits: &Limits, retry: &RetryPolicy) -> Client {
        // One TLS stack (rustls with ring); installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(limits.upstream_connect_timeout)
            .pool_max_idle_per_host(limits.upstream_max_idle)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("capgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the HTTP client's settings are valid");
        Client {
            http,
            limits: limits.clone(),
            retry: retry.clone(),
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, origin: &str) -> Arc<Semaphore> {
        let mut slots = self.slots.lock().expect("not poisoned");
        if let Some(slot) = slots.get(origin) {
            return slot.clone();
        }
        slots
            .entry(origin.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.limits.upstream_max_connections)))
            .clone()
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
        let may_retry =
            self.retry.max_retries > 0 && retry_allowed(adapter.profile, &request.method);
        if may_retry
            && adapter.profile == ProfileName::Stripe
            && request.method == Method::POST
            && !request.headers.contains_key("idempotency-key")
        {
            // Stripe's SDKs put a key on every POST so that a retry cannot act twice.
            let key = format!("capgate-{}", random_id());
            request.headers.insert(
                "idempotency-key",
                HeaderValue::try_from(key).expect("ascii"),
            );
        }
        let encoded = encode(adapter, &request)?;
        let slot = self.slot(&adapter.origin);
        let mut attempt = 0u32;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(timeout());
            }
            let outcome = tokio::time::timeout(remaining, async {
                let _permit = slot.acquire().await.expect("semaphores are never closed");
                self.exchange(adapter, &encoded).await
            })
            .await;
            let retry_reason = match outcome {
                Err(_) => return Err(timeout()),
                Ok(Ok(response)) => {
                    let should = should_retry(&response);
                    if !(may_retry && should && attempt < self.retry.max_retries) {
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
        adapter: &UpstreamAdapter,
        encoded: &Encoded,
    ) -> Result<UpstreamResponse, Failure> {
        let mut builder = self
            .http
            .request(encoded.method.clone(), encoded.url.clone())
            .headers(encoded.headers.clone());
        if let Some(body) = &encoded.body {
            builder = builder.body(body.clone());
        }
        if let Some((user, password)) = &encoded.basic {
            builder = builder.basic_auth(user, Some(password));
        }
        let mut response = builder.send().await.map_err(|e| {
            if e.is_timeout() {
                Failure::Timeout
            } else {
                Failure::Connect(without_url(&e))
            }
        })?;
        let status = response.status();
        let headers = std::mem::take(response.headers_mut());
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > self.limits.max_upstream_body_bytes {
                        return Err(Failure::Invalid(format!(
                            "response body larger than {} bytes",
                            self.limits.max_upstream_body_bytes
                        )));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err(Failure::Connect(without_url(&e))),
            }
        }
        let _ = adapter;
        Ok(UpstreamResponse {
            status,
            headers,
            body: Bytes::from(body),
            from_plugins: HeaderMap::new(),
        })
    }
}

/// A failed exchange, before the retry decision.
enum Failure {
    Connect(String),
    Timeout,
    Invalid(String),
}

/// A reqwest error's text without its URL (which may carry an API key in the query).
fn without_url(error: &reqwest::Error) -> String {
    let mut error = error.to_string();
    if let Some(i) = error.find(" for url (") {
        error.truncate(i);
    }
    error
}

/// Whether a failed request of `method` may be retried at all: with Stripe, any method (POSTs
/// carry an idempotency key); elsewhere only methods that are idempotent by definition.
fn retry_allowed(profile: ProfileName, method: &Method) -> bool {
    match profile {
        ProfileName::Stripe => true,
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
        .get("stripe-should-retry")
        .and_then(|v| v.to_str().ok())
    {
        Some("true") => return true,
        Some("false") => return false,
        _ => {}
    }
    response.status == StatusCode::CONFLICT || response.status.is_server_error()
}

/// A request ready for the wire; secret values are in here and nowhere else.
struct Encoded {
    method: Method,
    url: url::Url,
    headers: HeaderMap,
    body: Option<Bytes>,
    basic: Option<(String, String)>,
}

fn encode(adapter: &UpstreamAdapter, request: &UpstreamRequest) -> Result<Encoded, GatewayError> {
    let style = match adapter.profile {
        ProfileName::Stripe => ArrayStyle::Indexed,
        ProfileName::Default => ArrayStyle::Repeated,
    };
    let sealed = &request.sealed;
    let mut query = String::new();
    for (name, value) in request.query.iter().chain(&sealed.query) {
        form::append_pair(&mut query, name, value, style);
    }
    let mut headers = request.headers.clone();
    for (name, value) in &sealed.headers {
        let mut value = value.clone();
        value.set_sensitive(true);
        headers.append(name.clone(), value);
    }
    let with_sealed_fields = |value: &Value| -> Option<Value> {
        let Value::Object(object) = value else {
            return None;
        };
        let mut object = object.clone();
        object.extend(sealed.body.iter().map(|(k, v)| (k.clone(), v.clone())));
        Some(Value::Object(object))
    };
    let merged = if sealed.body.is_empty() {
        None
    } else {
        match &request.body {
            None if !matches!(request.method, Method::GET | Method::DELETE | Method::HEAD) => {
                Some(Payload::Structured(Value::Object(sealed.body.clone())))
            }
            Some(Payload::Structured(value)) => with_sealed_fields(value).map(Payload::Structured),
            _ => None,
        }
    };
    let request_body = merged.as_ref().or(request.body.as_ref());
    let mut basic = None;
    let scope = BindScope(&adapter.binds);
    match &adapter.auth {
        None => {}
        Some(Auth::Bearer(token)) => {
            let token = token.render_text(&scope).unwrap_or_default();
            let mut value = HeaderValue::try_from(format!("Bearer {token}"))
                .map_err(|_| misconfigured(adapter))?;
            value.set_sensitive(true);
            headers.insert(http::header::AUTHORIZATION, value);
        }
        Some(Auth::ApiKeyHeader { name, value }) => {
            let text = value.render_text(&scope).unwrap_or_default();
            let mut value =
                HeaderValue::try_from(text.as_ref()).map_err(|_| misconfigured(adapter))?;
            value.set_sensitive(true);
            headers.insert(name.clone(), value);
        }
        Some(Auth::ApiKeyQuery { name, value }) => {
            let text = value.render_text(&scope).unwrap_or_default();
            form::append_pair(&mut query, name, &Value::String(text.into_owned()), style);
        }
        Some(Auth::Basic { username, password }) => {
            basic = Some((
                username
                    .render_text(&scope)
                    .unwrap_or_default()
                    .into_owned(),
                password
                    .render_text(&scope)
                    .unwrap_or_default()
                    .into_owned(),
            ));
        }
    }
    let body = match request_body {
        None => None,
        Some(Payload::Structured(value)) => match adapter.profile {
            ProfileName::Stripe => Some(form_body(value, &mut headers)?),
            ProfileName::Default => {
                set_content_type(&mut headers, "application/json");
                Some(Bytes::from(
                    serde_json::to_vec(value).expect("JSON values serialize"),
                ))
            }
        },
        Some(Payload::Form(value)) => Some(form_body(value, &mut headers)?),
        Some(Payload::Raw {
            bytes,
            content_type,
        }) => {
            set_content_type(&mut headers, content_type);
            Some(bytes.clone())
        }
    };
    let url = request_url(
        &adapter.base_uri,
        adapter.base_url.as_ref(),
        &request.path,
        &query,
    )
    .map_err(|e| GatewayError::UpstreamInvalid {
        upstream: adapter.namespace.clone(),
        detail: format!("cannot build the upstream URL: {e}"),
    })?;
    Ok(Encoded {
        method: request.method.clone(),
        url,
        headers,
        body,
        basic,
    })
}

fn form_body(value: &Value, headers: &mut HeaderMap) -> Result<Bytes, GatewayError> {
    let Value::Object(object) = value else {
        return Err(GatewayError::bad_request(
            "parameter_invalid",
            "the request body must be an object of parameters",
            Some("body"),
        ));
    };
    set_content_type(headers, "application/x-www-form-urlencoded");
    Ok(Bytes::from(form::encode(object)))
}

fn set_content_type(headers: &mut HeaderMap, content_type: &str) {
    if !headers.contains_key(http::header::CONTENT_TYPE)
        && let Ok(value) = HeaderValue::try_from(content_type)
    {
        headers.insert(http::header::CONTENT_TYPE, value);
    }
}

fn misconfigured(adapter: &UpstreamAdapter) -> GatewayError {
    GatewayError::NotConfigured {
        message: format!(
            "the credentials of upstream {} are not a valid header value",
            adapter.namespace
        ),
    }
}

struct BindScope<'a>(&'a std::collections::BTreeMap<String, Option<Secret>>);

impl Scope for BindScope<'_> {
    fn input(&self, _: &str) -> Option<&Value> {
        None
    }

    fn bound(&self, variable: &str) -> Option<&str> {
        self.0.get(variable)?.as_ref().map(Secret::expose)
    }
}

/// The URL of an upstream request: `base_uri` + `path` + `?query`. With the base already
/// parsed (`plain_base`), only the path and query are parsed, not the scheme and host again.
fn request_url(
    base_uri: &str,
    base: Option<&url::Url>,
    path: &str,
    query: &str,
) -> Result<url::Url, url::ParseError> {
    match base {
        Some(base) if !path.contains(['?', '#']) => {
            let mut url = base.clone();
            let mut full = String::with_capacity(base.path().len() + path.len());
            full.push_str(base.path().trim_end_matches('/'));
            full.push_str(path);
            url.set_path(&full);
            if !query.is_empty() {
                url.set_query(Some(query));
            }
            Ok(url)
        }
        _ => {
            let mut url = format!("{base_uri}{path}");
            if !query.is_empty() {
                url.push(if url.contains('?') { '&' } else { '?' });
                url.push_str(query);
            }
            url::Url::parse(&url)
        }
    }
}

/// A random identifier of 24 lowercase alphanumerics.
pub fn random_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..24)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// The request of a forward route: the rest of the caller's path (each segment checked and
/// re-encoded, so it can never climb out of the base URI), its query string as it is, the
/// trusted headers and the body (never on GET or HEAD).
pub fn forward_request(
    method: &Method,
    rest: &str,
    raw_query: Option<&str>,
    caller_headers: &HeaderMap,
    trusted: &[HeaderName],
    body: Bytes,
) -> Result<UpstreamRequest, GatewayError> {
    let mut path = String::new();
    for segment in rest.split('/') {
        let decoded = percent_encoding::percent_decode_str(segment).decode_utf8_lossy();
        if decoded == "." || decoded == ".." || decoded.contains('/') || decoded.contains('\\') {
            return Err(GatewayError::bad_request(
                "parameter_invalid",
                format!("invalid path segment {segment:?} in a forwarded path"),
                None,
            ));
        }
        path.push('/');
        path.extend(percent_encoding::utf8_percent_encode(&decoded, SEGMENT));
    }
    if let Some(query) = raw_query.filter(|q| !q.is_empty()) {
        path.push('?');
        path.push_str(query);
    }
    let mut headers = HeaderMap::new();
    for name in trusted {
        for value in caller_headers.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    let content_type = caller_headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let sends_body = !matches!(*method, Method::GET | Method::HEAD);
    let body = (sends_body && !body.is_empty()).then_some(Payload::Raw {
        bytes: body,
        content_type,
    });
    Ok(UpstreamRequest {
        method: method.clone(),
        path,
        query: Vec::new(),
        headers,
        body,
        sealed: Sealed::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use capgate_model::snapshot::plain_base;

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
        assert!(retry_allowed(ProfileName::Stripe, &Method::POST));
        assert!(!retry_allowed(ProfileName::Default, &Method::POST));
    }

    #[test]
    fn request_urls_built_from_a_parsed_base_are_the_urls_parsed_whole() {
        for base in [
            "http://127.0.0.1:12111",
            "https://api.stripe.com",
            "https://h.example/base",
            "https://H.Example:443/b%20ase",
            "http://[::1]:8080/v",
        ] {
            let parsed = plain_base(base).expect("a plain base");
            for path in [
                "/v1/identity/verification_sessions/vs_1",
                "/v1/identity/verification_sessions/vs_1%2F..%2Fx",
                "/v1/x/%2e%2e/y",
                "/v1/../../charges",
                "/a b/ü/%7E",
                "",
                "/",
            ] {
                for query in ["", "expand[0]=verified_outputs&created[gte]=1", "a=%20b c"] {
                    let fast = request_url(base, Some(&parsed), path, query).unwrap();
                    let whole = request_url(base, None, path, query).unwrap();
                    assert_eq!(fast.as_str(), whole.as_str(), "{base} {path} {query}");
                }
            }
        }
        for not_plain in [
            "https://h.example/?key=1",
            "https://h.example/#f",
            "mailto:a@b",
            "{{env.BASE}}",
        ] {
            assert!(plain_base(not_plain).is_none(), "{not_plain}");
        }
    }

    #[test]
    fn forwarded_paths_cannot_climb() {
        let headers = HeaderMap::new();
        for bad in ["a/../b", "%2e%2e/x", "a/%2E", "a%2Fb"] {
            assert!(
                forward_request(&Method::GET, bad, None, &headers, &[], Bytes::new()).is_err(),
                "{bad}"
            );
        }
        let req = forward_request(
            &Method::GET,
            "a/b%20c",
            Some("x=1"),
            &headers,
            &[],
            Bytes::new(),
        )
        .unwrap();
        assert_eq!(req.path, "/a/b%20c?x=1");
        // A body goes on with POST and DELETE, never with GET or HEAD.
        let body = || Bytes::from_static(b"a=1");
        for (method, sent) in [
            (Method::POST, true),
            (Method::DELETE, true),
            (Method::GET, false),
            (Method::HEAD, false),
        ] {
            let req = forward_request(&method, "a", None, &headers, &[], body()).unwrap();
            assert_eq!(req.body.is_some(), sent, "{method}");
        }
    }
}
