//! The one response type every surface answers with, and the one mapping from a
//! [`GatewayError`] to a response: its status, Stripe's error envelope, and the headers the error
//! calls for (`WWW-Authenticate`, `Allow`). REST, MCP, the front door and the admin listener all
//! answer through here; nothing above this module builds an error body of its own.

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use crate::error::GatewayError;

/// Every response body: buffered bytes or rmcp's event streams.
pub type HttpBody = BoxBody<Bytes, Infallible>;
pub type HttpResponse = http::Response<HttpBody>;

pub fn full(bytes: impl Into<Bytes>) -> HttpBody {
    Full::new(bytes.into()).boxed()
}

/// The response for a gateway error: its status and Stripe's error envelope.
pub fn error(error: &GatewayError) -> HttpResponse {
    let body = serde_json::to_vec(&error.to_json()).expect("JSON values serialize");
    let mut response = Response::new(full(Bytes::from(body)));
    *response.status_mut() = error.status();
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(value) = www_authenticate(error, None) {
        response
            .headers_mut()
            .insert(http::header::WWW_AUTHENTICATE, value);
    }
    if let GatewayError::RateLimited {
        retry_after,
        policy,
    } = error
    {
        let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
        rate_limit_headers(response.headers_mut(), policy, 0, seconds);
    }
    if let GatewayError::LimitStoreUnavailable = error {
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(1));
    }
    if let GatewayError::UpstreamBudget { retry_after, .. } = error {
        let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if let GatewayError::MethodNotAllowed { allowed, .. } = error
        && let Ok(value) = HeaderValue::try_from(
            allowed
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", "),
        )
    {
        response.headers_mut().insert(http::header::ALLOW, value);
    }
    response
}

/// A plain JSON response.
pub fn json(status: StatusCode, value: &Value) -> HttpResponse {
    json_bytes(
        status,
        serde_json::to_vec(value).expect("JSON values serialize"),
    )
}

/// A response of JSON already serialized.
pub fn json_bytes(status: StatusCode, body: impl Into<Bytes>) -> HttpResponse {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The `WWW-Authenticate` challenge of a 401 (RFC 6750): the scheme, where an MCP endpoint's
/// protected resource metadata is (RFC 9728), and for credentials that were sent but do not
/// hold, `error="invalid_token"` with a description.
pub fn www_authenticate(
    error: &GatewayError,
    resource_metadata: Option<&str>,
) -> Option<HeaderValue> {
    let mut challenge = match error {
        GatewayError::Unauthorized { scheme } => format!("{scheme} realm=\"capgate\""),
        GatewayError::InvalidCredentials { .. } => "Bearer realm=\"capgate\"".to_owned(),
        _ => return None,
    };
    if let Some(url) = resource_metadata {
        challenge.push_str(&format!(", resource_metadata=\"{url}\""));
    }
    if let GatewayError::InvalidCredentials { description } = error {
        challenge.push_str(&format!(
            ", error=\"invalid_token\", error_description=\"{description}\""
        ));
    }
    HeaderValue::try_from(challenge).ok()
}

/// The IETF `RateLimit-Policy` and `RateLimit` headers (draft-ietf-httpapi-ratelimit-headers):
/// the limit, and what is left of it for `reset` seconds.
pub fn rate_limit_headers(
    headers: &mut http::HeaderMap,
    policy: &capgate_model::consumers::Policy,
    remaining: u64,
    reset: u64,
) {
    static RATELIMIT_POLICY: http::HeaderName = http::HeaderName::from_static("ratelimit-policy");
    static RATELIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit");
    let name = policy.name;
    if let Ok(value) =
        HeaderValue::try_from(format!("\"{name}\";q={};w={}", policy.quota, policy.window))
    {
        headers.insert(RATELIMIT_POLICY.clone(), value);
    }
    if let Ok(value) = HeaderValue::try_from(format!("\"{name}\";r={remaining};t={reset}")) {
        headers.insert(RATELIMIT.clone(), value);
    }
}
