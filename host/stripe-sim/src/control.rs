//! The test-only controls under `/_sim/`: moving sessions along their lifecycle the way the
//! hosted verification page would, injecting faults, reading the request log, resetting.
//!
//! Nothing here is part of Stripe's API: no auth, JSON bodies in and out, and these requests
//! are never recorded. The routes:
//!
//! ```text
//! POST   /_sim/verification_sessions/{id}/processing | verified | requires_input | redacted
//! POST   /_sim/faults      GET /_sim/faults      DELETE /_sim/faults
//! GET    /_sim/requests    DELETE /_sim/requests
//! POST   /_sim/reset
//! ```

use bytes::Bytes;
use http::{Method, Request};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Shared;
use super::error::ApiError;
use super::http::{HttpResponse, error_response, read_body, respond, to_bytes};
use super::session::{LAST_ERROR_CODES, LastError};
use super::store::{Fault, SimStep};

/// The longest delay a fault may ask for, so a typo cannot hang a test run for hours.
const MAX_DELAY_MS: u64 = 10 * 60 * 1000;

/// The body of `POST /_sim/verification_sessions/{id}/requires_input`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FailBody {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

pub async fn handle(shared: &Shared, request: Request<Incoming>, request_id: &str) -> HttpResponse {
    let (parts, body) = request.into_parts();
    let body = match read_body(&parts.headers, body).await {
        Ok(body) => body,
        Err(error) => return error_response(request_id, &error, Vec::new()),
    };
    let path = parts.uri.path();
    match run(shared, &parts.method, path, &body) {
        Ok(value) => respond(request_id, 200, to_bytes(&value), Vec::new()),
        Err(error) => error_response(request_id, &error, Vec::new()),
    }
}

fn run(shared: &Shared, method: &Method, path: &str, body: &Bytes) -> Result<Value, ApiError> {
    let segments: Vec<&str> = path.trim_start_matches("/_sim/").split('/').collect();
    match (method, segments.as_slice()) {
        (&Method::POST, ["reset"]) => {
            shared.lock().reset();
            Ok(json!({"reset": true}))
        }
        (&Method::GET, ["requests"]) => Ok(json!({"data": shared.lock().requests()})),
        (&Method::DELETE, ["requests"]) => {
            shared.lock().clear_requests();
            Ok(json!({"data": []}))
        }
        (&Method::GET, ["faults"]) => Ok(json!({"data": shared.lock().faults()})),
        (&Method::DELETE, ["faults"]) => {
            shared.lock().clear_faults();
            Ok(json!({"data": []}))
        }
        (&Method::POST, ["faults"]) => {
            let fault: Fault = json_body(body)?;
            check_fault(&fault)?;
            let mut state = shared.lock();
            state.add_fault(fault);
            Ok(json!({"data": state.faults()}))
        }
        (&Method::POST, ["verification_sessions", raw_id, step]) => {
            let id = percent_encoding::percent_decode_str(raw_id)
                .decode_utf8_lossy()
                .into_owned();
            let step = match *step {
                "processing" => SimStep::Processing,
                "verified" => SimStep::Verified,
                "redacted" => SimStep::Redacted,
                "requires_input" => SimStep::RequiresInput(last_error(body)?),
                _ => return Err(ApiError::unrecognized_url(method.as_str(), path)),
            };
            shared.lock().simulate(&id, step)
        }
        _ => Err(ApiError::unrecognized_url(method.as_str(), path)),
    }
}

fn json_body<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, ApiError> {
    let text: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(text)
        .map_err(|error| ApiError::bad_request(format!("invalid JSON body: {error}")))
}

fn check_fault(fault: &Fault) -> Result<(), ApiError> {
    if let Some(status) = fault.status
        && !(400..=599).contains(&status)
    {
        return Err(ApiError::invalid(
            "status",
            format!("fault status {status} is not an error status (400-599)"),
        ));
    }
    if fault.status.is_none() && fault.delay_ms.is_none() {
        return Err(ApiError::invalid(
            "status",
            "a fault needs a status, a delay_ms, or both",
        ));
    }
    if fault.count == 0 {
        return Err(ApiError::invalid(
            "count",
            "fault count 0 would never apply",
        ));
    }
    if let Some(delay) = fault.delay_ms
        && delay > MAX_DELAY_MS
    {
        return Err(ApiError::invalid(
            "delay_ms",
            format!("fault delay_ms {delay} is over the limit of {MAX_DELAY_MS}"),
        ));
    }
    Ok(())
}

fn last_error(body: &Bytes) -> Result<LastError, ApiError> {
    let body: FailBody = json_body(body)?;
    let code = body
        .code
        .unwrap_or_else(|| "document_unverified_other".into());
    if !LAST_ERROR_CODES.contains(&code.as_str()) {
        return Err(ApiError::invalid(
            "code",
            format!(
                "unknown last_error code {code:?}; expected one of {}",
                LAST_ERROR_CODES.join(", ")
            ),
        ));
    }
    let reason = body
        .reason
        .unwrap_or_else(|| "The verification check failed (simulated).".into());
    Ok(LastError { code, reason })
}
