//! The gateway's own errors, and their one mapping to HTTP statuses and Stripe-shaped bodies.
//!
//! Upstream error responses are not errors here: they pass through as they are. A
//! [`GatewayError`] is something capgate itself refuses or fails at. Each knows whose fault it
//! is and whether retrying can help; details meant for operators are logged where the error is
//! made, never put in the message a caller sees.

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Value, json};

/// Who caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Caller,
    Spec,
    Upstream,
    Plugin,
    Gateway,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// Input the operation cannot take: a missing, unknown or malformed parameter or body.
    #[error("{message}")]
    BadRequest {
        code: &'static str,
        message: String,
        param: Option<String>,
    },
    #[error("Unrecognized request URL ({method}: {path})")]
    NotFound { method: Method, path: String },
    #[error("{method} is not allowed on {path}; allowed: {}", allowed_list(.allowed))]
    MethodNotAllowed {
        method: Method,
        path: String,
        allowed: Vec<Method>,
    },
    #[error("authentication required: send valid {scheme} credentials")]
    Unauthorized { scheme: &'static str },
    /// Consumer credentials that do not hold: an unknown or expired key, a bad token. The
    /// description says what is wrong with the credential, never which consumers exist.
    #[error("invalid credentials: {description}")]
    InvalidCredentials { description: &'static str },
    /// A consumer past one of its rate limits.
    #[error("rate limit exceeded: retry in {} ms", .retry_after.as_millis().max(1))]
    RateLimited {
        retry_after: Duration,
        /// The limit that refused, for the `RateLimit-Policy` header.
        policy: capgate_model::consumers::Policy,
    },
    /// The upstream account's budget has no room soon enough (`limits.upstream_budget`).
    #[error("upstream {upstream} is at its rate budget; retry shortly")]
    UpstreamBudget {
        upstream: String,
        retry_after: Duration,
    },
    /// The shared limits store did not answer in time and `limits.on_store_error` is `deny`.
    #[error("rate limits cannot be checked right now; retry shortly")]
    LimitStoreUnavailable,
    /// A consumer without a scope that grants the call.
    #[error("consumer {consumer} may not call {what}")]
    NoGrant { consumer: String, what: String },
    /// A `Host` or `Origin` that the listener's allow-list does not name.
    #[error("{what} {value:?} is not allowed here (see rest.allowed_{what}s)")]
    NotAllowed { what: &'static str, value: String },
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request body did not arrive within {} ms", .after.as_millis())]
    RequestTimeout { after: Duration },
    /// The upstream request this call would make has a URL longer than the gateway sends.
    #[error(
        "the upstream request URL would be {length} bytes long, more than the limit of {limit}; send fewer or shorter parameters"
    )]
    UriTooLong { length: usize, limit: usize },
    /// The connection has more response bytes waiting than a client that reads may leave.
    #[error(
        "more than {limit} bytes of responses are waiting for this connection to read them; read them, or open another connection"
    )]
    SlowReader { limit: usize },
    /// The operation cannot run as configured (a bound variable without a value, say).
    #[error("{message}")]
    NotConfigured { message: String },
    #[error("upstream {upstream} is unreachable")]
    UpstreamUnreachable { upstream: String },
    #[error("upstream {upstream} returned an invalid response: {detail}")]
    UpstreamInvalid { upstream: String, detail: String },
    #[error("upstream {upstream} did not answer within {} ms", .after.as_millis())]
    UpstreamTimeout { upstream: String, after: Duration },
    #[error("transform plugin {plugin} failed: {detail}")]
    Plugin { plugin: String, detail: String },
    /// A plugin refused the request, with its own status, code and message.
    #[error("{message}")]
    Refused {
        plugin: String,
        status: StatusCode,
        code: String,
        message: String,
    },
    #[error("internal error")]
    Internal,
}

fn allowed_list(allowed: &[Method]) -> String {
    allowed
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

impl GatewayError {
    pub fn bad_request(
        code: &'static str,
        message: impl Into<String>,
        param: Option<&str>,
    ) -> Self {
        GatewayError::BadRequest {
            code,
            message: message.into(),
            param: param.map(str::to_owned),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            GatewayError::Unauthorized { .. } | GatewayError::InvalidCredentials { .. } => {
                StatusCode::UNAUTHORIZED
            }
            GatewayError::NotAllowed { .. } | GatewayError::NoGrant { .. } => StatusCode::FORBIDDEN,
            GatewayError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::LimitStoreUnavailable | GatewayError::UpstreamBudget { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            GatewayError::NotFound { .. } => StatusCode::NOT_FOUND,
            GatewayError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            GatewayError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            GatewayError::SlowReader { .. } => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::NotConfigured { .. } => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::UpstreamUnreachable { .. }
            | GatewayError::UpstreamInvalid { .. }
            | GatewayError::Plugin { .. } => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::Refused { status, .. } => *status,
            GatewayError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            GatewayError::BadRequest { .. }
            | GatewayError::Unauthorized { .. }
            | GatewayError::InvalidCredentials { .. }
            | GatewayError::NotAllowed { .. }
            | GatewayError::NoGrant { .. }
            | GatewayError::RateLimited { .. }
            | GatewayError::NotFound { .. }
            | GatewayError::MethodNotAllowed { .. }
            | GatewayError::PayloadTooLarge { .. }
            | GatewayError::RequestTimeout { .. }
            | GatewayError::UriTooLong { .. }
            | GatewayError::SlowReader { .. } => Fault::Caller,
            GatewayError::NotConfigured { .. } => Fault::Spec,
            GatewayError::UpstreamUnreachable { .. }
            | GatewayError::UpstreamInvalid { .. }
            | GatewayError::UpstreamTimeout { .. } => Fault::Upstream,
            GatewayError::Plugin { .. } => Fault::Plugin,
            GatewayError::Refused { status, .. } if status.is_client_error() => Fault::Caller,
            GatewayError::Refused { .. } => Fault::Plugin,
            GatewayError::Internal | GatewayError::LimitStoreUnavailable => Fault::Gateway,
            GatewayError::UpstreamBudget { .. } => Fault::Upstream,
        }
    }

    /// Whether the same request may succeed if retried later.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            GatewayError::UpstreamUnreachable { .. }
                | GatewayError::UpstreamTimeout { .. }
                | GatewayError::NotConfigured { .. }
                | GatewayError::LimitStoreUnavailable
                | GatewayError::RateLimited { .. }
                | GatewayError::UpstreamBudget { .. }
        )
    }

    /// Stripe's error `code` for this error.
    pub fn code(&self) -> &str {
        match self {
            GatewayError::BadRequest { code, .. } => code,
            GatewayError::Refused { code, .. } => code,
            GatewayError::Unauthorized { .. } => "authentication_required",
            GatewayError::InvalidCredentials { .. } => "invalid_credentials",
            GatewayError::NotAllowed { what: "host", .. } => "host_not_allowed",
            GatewayError::NotAllowed { .. } => "origin_not_allowed",
            GatewayError::NoGrant { .. } => "permission_denied",
            GatewayError::RateLimited { .. } => "rate_limit",
            GatewayError::LimitStoreUnavailable => "rate_limit_store_unavailable",
            GatewayError::UpstreamBudget { .. } => "upstream_budget_exhausted",
            GatewayError::NotFound { .. } => "resource_missing",
            GatewayError::MethodNotAllowed { .. } => "method_not_allowed",
            GatewayError::PayloadTooLarge { .. } => "request_too_large",
            GatewayError::RequestTimeout { .. } => "request_timeout",
            GatewayError::UriTooLong { .. } => "uri_too_long",
            GatewayError::SlowReader { .. } => "slow_reader",
            GatewayError::NotConfigured { .. } => "not_configured",
            GatewayError::UpstreamUnreachable { .. } => "upstream_unreachable",
            GatewayError::UpstreamInvalid { .. } => "upstream_invalid_response",
            GatewayError::UpstreamTimeout { .. } => "upstream_timeout",
            GatewayError::Plugin { .. } => "plugin_failed",
            GatewayError::Internal => "internal_error",
        }
    }

    /// The body callers get: Stripe's error envelope.
    pub fn to_json(&self) -> Value {
        let kind = match self.fault() {
            Fault::Caller => "invalid_request_error",
            _ => "api_error",
        };
        let mut error = json!({
            "type": kind,
            "code": self.code(),
            "message": self.to_string(),
        });
        if let GatewayError::BadRequest {
            param: Some(param), ..
        } = self
        {
            error["param"] = Value::String(param.clone());
        }
        json!({ "error": error })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_stripes_shape_and_status() {
        let e = GatewayError::bad_request(
            "parameter_missing",
            "missing required argument \"session\"",
            Some("session"),
        );
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            e.to_json(),
            json!({"error": {"type": "invalid_request_error", "code": "parameter_missing", "message": "missing required argument \"session\"", "param": "session"}})
        );
        let e = GatewayError::NotFound {
            method: Method::GET,
            path: "/v1/nope".into(),
        };
        assert_eq!(e.to_string(), "Unrecognized request URL (GET: /v1/nope)");
        let e = GatewayError::UpstreamTimeout {
            upstream: "identity-sessions".into(),
            after: Duration::from_millis(250),
        };
        assert_eq!(e.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(e.to_json()["error"]["type"], "api_error");
        assert!(e.retryable());
    }
}
