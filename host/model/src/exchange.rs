//! What crosses the upstream hop: the request a call prepares and the response it gets, in the
//! form transform plugins see and change. The types only: building, encoding and sending them
//! is the gateway's `upstream` module.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Method, StatusCode};
use serde_json::{Map, Value};

/// Caller headers that a proxy of Stripe forwards (names built once: a lookup by `&str`
/// parses the name on every call).
pub static FORWARDED_HEADERS: [HeaderName; 4] = [
    HeaderName::from_static("stripe-version"),
    HeaderName::from_static("stripe-account"),
    HeaderName::from_static("stripe-context"),
    HeaderName::from_static("idempotency-key"),
];

/// Upstream headers passed back to callers.
pub const PASSED_BACK_HEADERS: [&str; 5] = [
    "request-id",
    "idempotency-key",
    "idempotent-replayed",
    "stripe-should-retry",
    "retry-after",
];

/// An upstream request before encoding and before auth: what request transforms see (all but
/// `sealed`).
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamRequest {
    pub method: Method,
    /// The path after the adapter's base URI, percent-encoded.
    pub path: String,
    /// Structured query parameters, encoded by the profile when sent.
    pub query: Vec<(String, Value)>,
    pub headers: HeaderMap,
    pub body: Option<Payload>,
    pub sealed: Sealed,
}

/// Header, cookie, query and body parameters whose values come from bound variables (secrets,
/// like the adapter's auth): transforms never see them; they join the request when it is
/// encoded. A body field of the same name as one a transform set wins over it. A body rendered
/// from a template that reads bound variables is not shown to transforms at all (`hides_body`),
/// and they cannot change it.
#[derive(Clone, Default, PartialEq)]
pub struct Sealed {
    pub headers: HeaderMap,
    pub query: Vec<(String, Value)>,
    pub body: Map<String, Value>,
    pub hides_body: bool,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealed")
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field(
                "query",
                &self.query.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("body", &self.body.keys().collect::<Vec<_>>())
            .field("hides_body", &self.hides_body)
            .finish()
    }
}

/// A request body before encoding.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// Encoded by the profile: form for Stripe, JSON otherwise.
    Structured(Value),
    /// Always form-encoded.
    Form(Value),
    Raw {
        bytes: Bytes,
        content_type: String,
    },
}

#[derive(Debug, Clone)]
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Headers transform plugins added or changed: they reach the caller, unlike upstream
    /// headers, of which only `PASSED_BACK_HEADERS` do.
    pub from_plugins: HeaderMap,
}

impl UpstreamResponse {
    pub fn content_type(&self) -> Option<&str> {
        self.headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
    }
}
