//! The stand-in's errors and their one mapping to Stripe's error envelope.
//!
//! An [`ApiError`] is what the simulated Stripe refuses: its HTTP status, Stripe's error `type`,
//! an optional `code` and `param`, and whether an idempotent request that ended in it is stored
//! for replay. The wire messages copy Stripe's wording (capitalised, as Stripe writes them),
//! because clients and tests compare against what the real API says. Nothing here touches
//! sockets or session state.

use serde_json::{Map, Value, json};

/// Stripe's error `type` values (`api_errors.type` in the OpenAPI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    Api,
    Idempotency,
    InvalidRequest,
}

impl ErrorType {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::Api => "api_error",
            ErrorType::Idempotency => "idempotency_error",
            ErrorType::InvalidRequest => "invalid_request_error",
        }
    }
}

/// A refusal in Stripe's shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: u16,
    pub kind: ErrorType,
    pub code: Option<&'static str>,
    pub message: String,
    pub param: Option<String>,
    /// Whether an idempotent request answered with this error keeps the answer for replay.
    /// Stripe stores results only once an endpoint started executing: validation failures,
    /// authentication failures and rate limits are not stored, so a corrected retry with the
    /// same key still runs.
    pub replayable: bool,
}

impl ApiError {
    fn new(status: u16, kind: ErrorType, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            code: None,
            message: message.into(),
            param: None,
            replayable: false,
        }
    }

    fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// Marks an error raised by an endpoint that started executing (a state conflict, a
    /// missing object), which idempotency stores like a success.
    pub fn replayable(mut self) -> Self {
        self.replayable = true;
        self
    }

    /// A malformed or out-of-range parameter, without one of Stripe's specific codes.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::new(400, ErrorType::InvalidRequest, message).with_param(param)
    }

    /// A 400 that is not about one parameter (a JSON body, say).
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, ErrorType::InvalidRequest, message)
    }

    pub fn unknown_parameter(param: impl Into<String>) -> Self {
        let param = param.into();
        ApiError::new(
            400,
            ErrorType::InvalidRequest,
            format!("Received unknown parameter: {param}"),
        )
        .with_code("parameter_unknown")
        .with_param(param)
    }

    pub fn missing_parameter(param: impl Into<String>) -> Self {
        let param = param.into();
        ApiError::new(
            400,
            ErrorType::InvalidRequest,
            format!("Missing required param: {param}."),
        )
        .with_code("parameter_missing")
        .with_param(param)
    }

    /// An empty value for a parameter that cannot be unset.
    pub fn empty_parameter(param: impl Into<String>) -> Self {
        let param = param.into();
        ApiError::new(
            400,
            ErrorType::InvalidRequest,
            format!(
                "You passed an empty string for '{param}'. We assume empty values are an attempt \
                 to unset a parameter; however '{param}' cannot be unset. You should remove \
                 '{param}' from your request or supply a non-empty value."
            ),
        )
        .with_code("parameter_invalid_empty")
        .with_param(param)
    }

    pub fn invalid_integer(param: impl Into<String>, value: &str) -> Self {
        ApiError::new(
            400,
            ErrorType::InvalidRequest,
            format!("Invalid integer: {value}"),
        )
        .with_code("parameter_invalid_integer")
        .with_param(param)
    }

    /// A value outside an enum, worded as Stripe words it (`Invalid status: must be one of ...`).
    pub fn invalid_enum(param: impl Into<String>, allowed: &[&str]) -> Self {
        let param = param.into();
        let allowed = match allowed {
            [] => String::new(),
            [only] => (*only).to_owned(),
            [first, second] => format!("{first} or {second}"),
            [init @ .., last] => format!("{}, or {last}", init.join(", ")),
        };
        ApiError::new(
            400,
            ErrorType::InvalidRequest,
            format!("Invalid {param}: must be one of {allowed}"),
        )
        .with_param(param)
    }

    /// A missing object; the message is Stripe's, naming the id as it was asked for.
    pub fn no_such_session(param: &str, id: &str) -> Self {
        ApiError::new(
            404,
            ErrorType::InvalidRequest,
            format!("No such verification_session: '{id}'"),
        )
        .with_code("resource_missing")
        .with_param(param)
    }

    /// A lifecycle step the session's state does not allow.
    pub fn state(message: impl Into<String>) -> Self {
        ApiError::new(400, ErrorType::InvalidRequest, message).replayable()
    }

    pub fn unrecognized_url(method: &str, path: &str) -> Self {
        ApiError::new(
            404,
            ErrorType::InvalidRequest,
            format!("Unrecognized request URL ({method}: {path})"),
        )
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(401, ErrorType::InvalidRequest, message)
    }

    pub fn too_large(limit: usize) -> Self {
        ApiError::new(
            413,
            ErrorType::InvalidRequest,
            format!("Request body too large: the limit is {limit} bytes"),
        )
    }

    pub fn idempotency_mismatch(key: &str) -> Self {
        ApiError::new(
            400,
            ErrorType::Idempotency,
            format!(
                "Keys for idempotent requests can only be used with the same parameters they \
                 were first used with. Try using a key other than '{key}' if you meant to \
                 execute a different request."
            ),
        )
    }

    pub fn idempotency_in_use(key: &str) -> Self {
        ApiError::new(
            409,
            ErrorType::InvalidRequest,
            format!(
                "There is currently another in-progress request using this Idempotent Key \
                 (that probably means you submitted twice, and the other request is still going \
                 through): {key}. Please try again later."
            ),
        )
        .with_code("idempotency_key_in_use")
    }

    /// The error an injected fault answers with, shaped as Stripe answers that status.
    pub fn injected(status: u16) -> Self {
        match status {
            429 => ApiError::new(
                429,
                ErrorType::InvalidRequest,
                "Request rate limit exceeded. You can learn more about rate limits here \
                 https://stripe.com/docs/rate-limits.",
            )
            .with_code("rate_limit"),
            409 => ApiError::new(
                409,
                ErrorType::InvalidRequest,
                "This object cannot be accessed right now because another API request or \
                 Stripe process is currently accessing it. If you see this error \
                 intermittently, retry the request.",
            )
            .with_code("lock_timeout"),
            500..=599 => ApiError::new(
                status,
                ErrorType::Api,
                "An unknown error occurred (injected by stripe-sim)",
            ),
            _ => ApiError::new(
                status,
                ErrorType::InvalidRequest,
                format!("Injected fault: status {status}"),
            ),
        }
    }

    /// The `{"error": {...}}` envelope, keys in Stripe's order.
    pub fn to_json(&self) -> Value {
        let mut error = Map::new();
        if let Some(code) = self.code {
            error.insert("code".into(), json!(code));
            error.insert(
                "doc_url".into(),
                json!(format!(
                    "https://stripe.com/docs/error-codes/{}",
                    code.replace('_', "-")
                )),
            );
        }
        error.insert("message".into(), json!(self.message));
        if let Some(param) = &self.param {
            error.insert("param".into(), json!(param));
        }
        error.insert("type".into(), json!(self.kind.as_str()));
        json!({ "error": error })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_carries_code_doc_url_and_param() {
        let body = ApiError::unknown_parameter("options[foo]").to_json();
        assert_eq!(body["error"]["code"], "parameter_unknown");
        assert_eq!(body["error"]["param"], "options[foo]");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(
            body["error"]["doc_url"],
            "https://stripe.com/docs/error-codes/parameter-unknown"
        );
    }

    #[test]
    fn enum_message_lists_the_choices() {
        let error = ApiError::invalid_enum("status", &["canceled", "verified"]);
        assert_eq!(
            error.message,
            "Invalid status: must be one of canceled or verified"
        );
        let error = ApiError::invalid_enum("type", &["a", "b", "c"]);
        assert_eq!(error.message, "Invalid type: must be one of a, b, or c");
    }
}
