//! The wire: accepting connections with hyper, and the path of one Stripe request from bytes
//! to answer.
//!
//! A request under `/v1/` goes through these phases, in this order:
//!
//! ```text
//! read body (1 MiB) -> record -> injected fault? -> auth -> route -> parameters
//!   -> idempotency (reserve / replay / refuse) -> injected delay -> operation -> store answer
//! ```
//!
//! An injected error answers before auth and idempotency, like a failing load balancer. An
//! injected delay alone ("answer normally, but late") holds the request after its idempotency
//! key is reserved, so the request is genuinely in flight, as a slow Stripe request is.
//! `/_sim/` requests go to `control`; any other path is an unrecognized URL.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::error::ApiError;
use super::session::random_id;
use super::store::{Begin, Caller, Fault, Fingerprint, IdempotencyScope, StoredResponse};
use super::{RecordedRequest, Shared, control, params};

/// The largest request body read, as a Stripe request is never larger.
pub const BODY_LIMIT: usize = 1024 * 1024;
/// The deepest bracket nesting read in a parameter name; Stripe's own objects need five.
const MAX_NESTING: usize = 16;
/// Stripe's limit on `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 255;
const API_KEY_PREFIXES: &[&str] = &["sk_test_", "sk_live_", "rk_test_", "rk_live_"];

/// Accepts until `stop` turns true; each connection also ends then.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stopped| *stopped) => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "stripe-sim: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(shared, request).await) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                result = connection => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "stripe-sim: connection ended with an error");
                    }
                }
                _ = stop.wait_for(|stopped| *stopped) => {}
            }
        });
    }
}

pub type HttpResponse = Response<Full<Bytes>>;

/// Counts a request whose handling was dropped before it produced an answer: the client (a
/// gateway that cancelled its upstream call, say) went away while it was in progress.
struct Unanswered {
    shared: Arc<Shared>,
    answered: bool,
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if !self.answered {
            self.shared
                .abandoned
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> HttpResponse {
    let mut guard = Unanswered {
        shared: shared.clone(),
        answered: false,
    };
    let response = answer(shared, request).await;
    guard.answered = true;
    response
}

async fn answer(shared: Arc<Shared>, request: Request<Incoming>) -> HttpResponse {
    let request_id = random_id("req_", 24);
    let path = request.uri().path().to_owned();
    tracing::debug!(method = %request.method(), %path, %request_id, "stripe-sim request");
    if path == "/_sim" || path.starts_with("/_sim/") {
        return control::handle(&shared, request, &request_id).await;
    }
    if path == "/v1" || path.starts_with("/v1/") {
        return stripe(&shared, request, &request_id).await;
    }
    let error = ApiError::unrecognized_url(request.method().as_str(), &path);
    error_response(&request_id, &error, Vec::new())
}

/// One Stripe operation, once routed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Operation {
    List,
    Create,
    Retrieve(String),
    Update(String),
    Cancel(String),
    Redact(String),
}

fn route(method: &Method, path: &str) -> Option<Operation> {
    let rest = path.strip_prefix("/v1/identity/verification_sessions")?;
    if rest.is_empty() {
        return match *method {
            Method::GET => Some(Operation::List),
            Method::POST => Some(Operation::Create),
            _ => None,
        };
    }
    let segments: Vec<&str> = rest.strip_prefix('/')?.split('/').collect();
    let id = |raw: &str| {
        percent_encoding::percent_decode_str(raw)
            .decode_utf8_lossy()
            .into_owned()
    };
    match (method, segments.as_slice()) {
        (_, ["", ..]) => None,
        (&Method::GET, [raw]) => Some(Operation::Retrieve(id(raw))),
        (&Method::POST, [raw]) => Some(Operation::Update(id(raw))),
        (&Method::POST, [raw, "cancel"]) => Some(Operation::Cancel(id(raw))),
        (&Method::POST, [raw, "redact"]) => Some(Operation::Redact(id(raw))),
        _ => None,
    }
}

/// Reads at most [`BODY_LIMIT`] bytes; larger bodies are a 413.
pub async fn read_body(headers: &HeaderMap, body: Incoming) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > BODY_LIMIT as u64) {
        return Err(ApiError::too_large(BODY_LIMIT));
    }
    match Limited::new(body, BODY_LIMIT).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::too_large(BODY_LIMIT))
        }
        Err(error) => Err(ApiError::bad_request(format!(
            "The request body could not be read: {error}"
        ))),
    }
}

async fn stripe(shared: &Shared, request: Request<Incoming>, request_id: &str) -> HttpResponse {
    let (parts, body) = request.into_parts();
    let method = parts.method.as_str().to_owned();
    let path = parts.uri.path().to_owned();
    let body = read_body(&parts.headers, body).await;
    shared.lock().record(RecordedRequest {
        method: method.clone(),
        path: path.clone(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body
            .as_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default(),
    });

    // Every answer to a POST that carried a key echoes it, errors included.
    let idempotency_header = (parts.method == Method::POST)
        .then(|| parts.headers.get("idempotency-key").cloned())
        .flatten();
    let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::new();
    if let Some(key) = &idempotency_header {
        headers.push((HeaderName::from_static("idempotency-key"), key.clone()));
    }

    let mut held = None;
    let fault = shared.lock().take_fault(&method, &path);
    if let Some(fault) = fault {
        match fault.status {
            Some(status) => return injected(request_id, &fault, status, headers).await,
            None => held = fault.delay_ms,
        }
    }

    let answer = async {
        let body = body?;
        let caller = authenticate(&parts.headers)?;
        let operation = route(&parts.method, &path)
            .ok_or_else(|| ApiError::unrecognized_url(&method, &path))?;
        let form = parameters(&parts.method, &parts.headers, parts.uri.query(), &body)?;
        Ok::<_, ApiError>((caller, operation, form))
    };
    let (caller, operation, form) = match answer.await {
        Ok(ready) => ready,
        Err(error) => return error_response(request_id, &error, headers),
    };

    let mut reservation = None;
    if let Some(key) = &idempotency_header {
        let key = match key.to_str() {
            Ok(key) if key.chars().count() <= MAX_IDEMPOTENCY_KEY => key.to_owned(),
            Ok(key) => {
                let error = ApiError::bad_request(format!(
                    "Idempotency-Key has {} characters; it can be at most {MAX_IDEMPOTENCY_KEY}",
                    key.chars().count()
                ));
                return error_response(request_id, &error, headers);
            }
            Err(_) => {
                let error = ApiError::bad_request("Idempotency-Key must be visible ASCII text");
                return error_response(request_id, &error, headers);
            }
        };
        let scope: IdempotencyScope = (caller.key.clone(), key.clone());
        let fingerprint = Fingerprint {
            method: method.clone(),
            path: path.clone(),
            params: form.clone(),
        };
        let begin = shared.lock().idempotency_begin(&scope, fingerprint);
        match begin {
            Begin::Proceed => reservation = Some(Reservation::new(shared, scope)),
            Begin::Replay(stored) => {
                headers.push((
                    HeaderName::from_static("idempotent-replayed"),
                    HeaderValue::from_static("true"),
                ));
                return respond(&stored.request_id, stored.status, stored.body, headers);
            }
            Begin::Mismatch => {
                return error_response(request_id, &ApiError::idempotency_mismatch(&key), headers);
            }
            Begin::InUse => {
                return error_response(request_id, &ApiError::idempotency_in_use(&key), headers);
            }
        }
    }

    if let Some(ms) = held {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    let (status, body, store) = match execute(shared, &caller, operation, &form) {
        Ok(object) => (200, to_bytes(&object), true),
        Err(error) => (error.status, to_bytes(&error.to_json()), error.replayable),
    };
    if let Some(reservation) = reservation {
        reservation.finish(store.then(|| StoredResponse {
            status,
            body: body.clone(),
            request_id: request_id.to_owned(),
        }));
    }
    respond(request_id, status, body, headers)
}

/// Parses then runs one operation; the state lock is held only for the run.
fn execute(
    shared: &Shared,
    caller: &Caller,
    operation: Operation,
    form: &Map<String, Value>,
) -> Result<Value, ApiError> {
    match operation {
        Operation::List => {
            let params = params::list(form)?;
            shared.lock().list(caller, &params)
        }
        Operation::Create => {
            let params = params::create(form)?;
            shared.lock().create(caller, params)
        }
        Operation::Retrieve(id) => {
            let expand = params::expand_only(form)?;
            shared.lock().retrieve(caller, &id, &expand)
        }
        Operation::Update(id) => {
            let params = params::update(form)?;
            shared.lock().update(caller, &id, params)
        }
        Operation::Cancel(id) => {
            let expand = params::expand_only(form)?;
            shared.lock().cancel(caller, &id, &expand)
        }
        Operation::Redact(id) => {
            let expand = params::expand_only(form)?;
            shared.lock().redact(caller, &id, &expand)
        }
    }
}

/// A reserved idempotency key; dropping it unfinished (the client went away mid-request)
/// frees the key so that a retry is not refused forever.
struct Reservation<'a> {
    shared: &'a Shared,
    scope: Option<IdempotencyScope>,
}

impl<'a> Reservation<'a> {
    fn new(shared: &'a Shared, scope: IdempotencyScope) -> Self {
        Reservation {
            shared,
            scope: Some(scope),
        }
    }

    fn finish(mut self, response: Option<StoredResponse>) {
        if let Some(scope) = self.scope.take() {
            self.shared.lock().idempotency_finish(&scope, response);
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Some(scope) = self.scope.take() {
            self.shared.lock().idempotency_finish(&scope, None);
        }
    }
}

async fn injected(
    request_id: &str,
    fault: &Fault,
    status: u16,
    mut headers: Vec<(HeaderName, HeaderValue)>,
) -> HttpResponse {
    if let Some(ms) = fault.delay_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(retry) = fault.should_retry {
        headers.push((
            HeaderName::from_static("stripe-should-retry"),
            HeaderValue::from_static(if retry { "true" } else { "false" }),
        ));
    }
    if let Some(seconds) = fault.retry_after {
        headers.push((
            HeaderName::from_static("retry-after"),
            HeaderValue::from(seconds),
        ));
    }
    error_response(request_id, &ApiError::injected(status), headers)
}

/// The parameters of a request: the query string for GET and DELETE, the form body for POST.
fn parameters(
    method: &Method,
    headers: &HeaderMap,
    query: Option<&str>,
    body: &[u8],
) -> Result<Map<String, Value>, ApiError> {
    if *method != Method::POST {
        return decode_form(query.unwrap_or("").as_bytes());
    }
    let content_type = headers
        .get(CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase());
    let essence = content_type
        .as_deref()
        .map(|t| t.split(';').next().unwrap_or("").trim().to_owned());
    let looks_like_json = matches!(
        body.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'[')
    );
    match essence.as_deref() {
        Some("application/x-www-form-urlencoded") => {}
        Some(t) if t == "application/json" || t.ends_with("+json") => return Err(json_body()),
        None | Some("") if looks_like_json => return Err(json_body()),
        None | Some("") => {}
        Some(other) if body.is_empty() => {
            tracing::debug!(
                content_type = other,
                "stripe-sim: empty body with a content type"
            );
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Invalid request: unsupported Content-Type {other}. If error persists and you \
                 need assistance, please contact support@stripe.com. Request bodies must be \
                 application/x-www-form-urlencoded."
            )));
        }
    }
    decode_form(body)
}

fn json_body() -> ApiError {
    ApiError::bad_request(
        "Invalid request: request bodies must be application/x-www-form-urlencoded, not JSON. \
         Stripe's API takes form-encoded parameters (metadata[key]=value).",
    )
}

/// Decodes a form, refusing bytes that are not UTF-8 once percent-decoded (which
/// `form_urlencoded` would otherwise replace silently).
fn decode_form(input: &[u8]) -> Result<Map<String, Value>, ApiError> {
    for pair in input.split(|&b| b == b'&') {
        let plus_as_space: Vec<u8> = pair
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect();
        if std::str::from_utf8(&plus_as_space).is_err()
            || percent_encoding::percent_decode(&plus_as_space)
                .decode_utf8()
                .is_err()
        {
            return Err(ApiError::bad_request(format!(
                "Invalid request: parameter `{}` is not valid UTF-8",
                String::from_utf8_lossy(pair)
                    .chars()
                    .take(100)
                    .collect::<String>()
            )));
        }
    }
    // Nesting is bounded before the recursive decoder sees it, so a hostile key such as
    // `a[a][a]...` a million levels deep cannot exhaust the stack.
    for (key, _) in form_urlencoded::parse(input) {
        if key.matches('[').count() > MAX_NESTING {
            return Err(ApiError::invalid(
                key.chars().take(100).collect::<String>(),
                format!(
                    "Invalid request: parameters can be nested at most {MAX_NESTING} levels deep"
                ),
            ));
        }
    }
    capgate_model::form::decode(input).map_err(|error| {
        ApiError::invalid(error.name().to_owned(), format!("Invalid request: {error}"))
    })
}

/// The caller from `Authorization: Bearer <key>` or `Basic base64(<key>:)`.
fn authenticate(headers: &HeaderMap) -> Result<Caller, ApiError> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "You did not provide an API key. You need to provide your API key in the \
             Authorization header, using Bearer auth (e.g. 'Authorization: Bearer \
             YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details, or \
             we can help at https://support.stripe.com/.",
        ));
    };
    let header = String::from_utf8_lossy(value.as_bytes()).into_owned();
    let (scheme, credentials) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    let credentials = credentials.trim();
    let key = if scheme.eq_ignore_ascii_case("bearer") {
        credentials.to_owned()
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64_decode(credentials)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "Invalid API Key provided: the Basic credentials are not valid base64",
                )
            })?;
        match decoded.split_once(':') {
            Some((key, _)) => key.to_owned(),
            None => decoded,
        }
    } else {
        return Err(ApiError::unauthorized(format!(
            "Invalid API Key provided: {}",
            mask(&header)
        )));
    };
    let valid = API_KEY_PREFIXES.iter().find_map(|prefix| {
        key.strip_prefix(prefix)
            .filter(|rest| {
                !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            })
            .map(|_| *prefix)
    });
    match valid {
        Some(prefix) => Ok(Caller {
            livemode: prefix.ends_with("live_"),
            restricted: prefix.starts_with("rk_"),
            key,
        }),
        None => Err(ApiError::unauthorized(format!(
            "Invalid API Key provided: {}",
            mask(&key)
        ))),
    }
}

/// A key as Stripe shows it in errors: the start and, for long keys, the last four characters;
/// never the whole key.
fn mask(key: &str) -> String {
    let chars: Vec<char> = key.chars().take(200).collect();
    let shown = (chars.len() / 2).min(8);
    let tail = if chars.len() >= 20 { 4 } else { 0 };
    let hidden = chars.len().saturating_sub(shown + tail).max(3);
    let mut masked: String = chars.iter().take(shown).collect();
    masked.extend(std::iter::repeat_n('*', hidden));
    masked.extend(chars.iter().skip(chars.len().saturating_sub(tail)));
    masked
}

/// Standard base64 with optional padding; `None` on anything else.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut buffer = 0u32;
    let mut bits = 0u32;
    for byte in text.bytes() {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((buffer >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

pub fn to_bytes(value: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

pub fn error_response(
    request_id: &str,
    error: &ApiError,
    headers: Vec<(HeaderName, HeaderValue)>,
) -> HttpResponse {
    respond(
        request_id,
        error.status,
        to_bytes(&error.to_json()),
        headers,
    )
}

/// Every answer: JSON, with a `Request-Id`.
pub fn respond(
    request_id: &str,
    status: u16,
    body: Bytes,
    headers: Vec<(HeaderName, HeaderValue)>,
) -> HttpResponse {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let map = response.headers_mut();
    map.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(id) = HeaderValue::from_str(request_id) {
        map.insert(HeaderName::from_static("request-id"), id);
    }
    for (name, value) in headers {
        map.insert(name, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_decode_the_session_segment() {
        assert_eq!(
            route(&Method::GET, "/v1/identity/verification_sessions/vs_%41b"),
            Some(Operation::Retrieve("vs_Ab".into()))
        );
        assert_eq!(
            route(
                &Method::POST,
                "/v1/identity/verification_sessions/vs_1/cancel"
            ),
            Some(Operation::Cancel("vs_1".into()))
        );
        assert_eq!(
            route(&Method::DELETE, "/v1/identity/verification_sessions/vs_1"),
            None
        );
        assert_eq!(
            route(&Method::GET, "/v1/identity/verification_sessions/"),
            None
        );
        assert_eq!(
            route(&Method::GET, "/v1/identity/verification_sessionsX"),
            None
        );
        assert_eq!(
            route(
                &Method::POST,
                "/v1/identity/verification_sessions/vs_1/cancel/x"
            ),
            None
        );
    }

    #[test]
    fn masks_never_show_the_whole_key() {
        assert_eq!(mask("sk_test_x"), "sk_t*****");
        let long = "sk_test_51HxYzAbCdEfGhIjKlMn";
        let masked = mask(long);
        assert!(masked.starts_with("sk_test_") && masked.ends_with("KlMn"));
        assert!(!masked.contains("51HxYz"));
        assert_eq!(mask(""), "***");
    }

    #[test]
    fn base64_round_trips_basic_credentials() {
        assert_eq!(
            base64_decode("c2tfdGVzdF94Og==").as_deref(),
            Some(&b"sk_test_x:"[..])
        );
        assert_eq!(
            base64_decode("c2tfdGVzdF94Og").as_deref(),
            Some(&b"sk_test_x:"[..])
        );
        assert_eq!(base64_decode("not base64!"), None);
    }

    #[test]
    fn forms_with_bad_utf8_are_refused() {
        assert!(decode_form(b"a=%FF").is_err());
        assert!(decode_form(b"a=\xff").is_err());
        assert!(decode_form(b"a=%C3%A9").is_ok());
    }

    #[test]
    fn deep_nesting_is_refused_before_decoding() {
        let deep = format!("a{}=1", "[b]".repeat(100_000));
        assert!(decode_form(deep.as_bytes()).is_err());
        let fine = format!("a{}=1", "[b]".repeat(MAX_NESTING));
        assert!(decode_form(fine.as_bytes()).is_ok());
    }
}
