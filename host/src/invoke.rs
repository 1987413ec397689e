//! The one request pipeline that REST routes and MCP tools share.
//!
//! ```text
//! inputs --prepare--> UpstreamRequest --(request transforms)--> upstream::Client::send
//!   --> UpstreamResponse --(response transforms)--> output mapping --> Outcome
//! ```
//!
//! Surfaces turn their requests into [`Inputs`] and an [`Outcome`] back into their own
//! responses; everything between (auth, encoding, limits, retries, mapping) happens here once.

use std::borrow::Cow;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use serde_json::{Map, Value};

use crate::error::GatewayError;
use crate::snapshot::{Action, Operation, Output, Shape};
use crate::template::Scope;
use crate::upstream::{self, Client, PASSED_BACK_HEADERS, UpstreamResponse};

/// What a caller gave an operation.
#[derive(Debug, Default)]
pub struct Inputs {
    /// Inputs by name: path variables, query parameters, body fields and `body` (REST), or
    /// tool arguments (MCP).
    pub values: Map<String, Value>,
    /// Caller headers; only the ones Stripe proxies forward (or a forward route trusts) are used.
    pub headers: HeaderMap,
    /// For forward routes: the raw request to pass through.
    pub forward: Option<ForwardInput>,
}

#[derive(Debug)]
pub struct ForwardInput {
    pub method: Method,
    /// The rest of the path after the route's prefix, still percent-encoded.
    pub rest: String,
    pub query: Option<String>,
    pub body: Bytes,
}

/// What an operation produced: the status, the headers to pass back and the body.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Body,
}

#[derive(Debug, Clone)]
pub enum Body {
    /// A JSON value built by output mapping or a mock.
    Json(Value),
    /// Upstream bytes passed through, with their content type in `Outcome::headers`.
    Raw(Bytes),
}

impl Outcome {
    /// The body as bytes, serializing JSON.
    pub fn body_bytes(&self) -> Bytes {
        match &self.body {
            Body::Json(value) => {
                Bytes::from(serde_json::to_vec(value).expect("JSON values serialize"))
            }
            Body::Raw(bytes) => bytes.clone(),
        }
    }

    /// The body as JSON, parsing raw bytes; `None` when they are not JSON.
    pub fn body_json(&self) -> Option<Cow<'_, Value>> {
        match &self.body {
            Body::Json(value) => Some(Cow::Borrowed(value)),
            Body::Raw(bytes) => serde_json::from_slice(bytes).ok().map(Cow::Owned),
        }
    }
}

/// Runs operations. One per gateway; cheap to share.
#[derive(Debug)]
pub struct Invoker {
    client: Client,
}

impl Invoker {
    pub fn new(client: Client) -> Invoker {
        Invoker { client }
    }

    /// Runs `operation` with `inputs`.
    pub async fn invoke(
        &self,
        operation: &Operation,
        inputs: Inputs,
    ) -> Result<Outcome, GatewayError> {
        match &operation.action {
            Action::Unavailable { message, .. } => Err(GatewayError::NotConfigured {
                message: message.clone(),
            }),
            Action::Mock => {
                let scope = InputScope(&inputs.values);
                let body = match &operation.output {
                    Output::Shape(shape) => {
                        apply(shape, &Value::Object(inputs.values.clone()), &scope)
                    }
                    Output::PassThrough => Value::Object(Map::new()),
                };
                Ok(json_outcome(StatusCode::OK, HeaderMap::new(), body))
            }
            Action::Call(call) => {
                let request = upstream::prepare(call, &inputs.values, &inputs.headers)?;
                let response = self.client.send(&call.upstream.adapter, request).await?;
                let scope = InputScope(&inputs.values);
                shape_response(
                    operation,
                    response,
                    &call.upstream.adapter.namespace,
                    &scope,
                )
            }
            Action::Forward(forward) => {
                let Some(raw) = inputs.forward else {
                    return Err(GatewayError::Internal);
                };
                let request = upstream::forward_request(
                    &raw.method,
                    &raw.rest,
                    raw.query.as_deref(),
                    &inputs.headers,
                    &forward.trusted_headers,
                    raw.body,
                )?;
                let response = self.client.send(&forward.adapter, request).await?;
                Ok(pass_through(response))
            }
        }
    }
}

fn shape_response(
    operation: &Operation,
    response: UpstreamResponse,
    upstream: &str,
    scope: &dyn Scope,
) -> Result<Outcome, GatewayError> {
    let shape = match &operation.output {
        Output::Shape(shape) if response.status.is_success() => shape,
        // Errors and unmapped outputs pass through exactly as the upstream sent them.
        _ => return Ok(pass_through(response)),
    };
    let value: Value =
        serde_json::from_slice(&response.body).map_err(|e| GatewayError::UpstreamInvalid {
            upstream: upstream.to_owned(),
            detail: format!("the response is not JSON ({e}), so it cannot be mapped"),
        })?;
    let body = apply(shape, &value, scope);
    Ok(json_outcome(
        response.status,
        passed_back(&response.headers),
        body,
    ))
}

fn pass_through(response: UpstreamResponse) -> Outcome {
    let mut headers = passed_back(&response.headers);
    if let Some(content_type) = response.headers.get(http::header::CONTENT_TYPE) {
        headers.insert(http::header::CONTENT_TYPE, content_type.clone());
    }
    Outcome {
        status: response.status,
        headers,
        body: Body::Raw(response.body),
    }
}

fn json_outcome(status: StatusCode, mut headers: HeaderMap, body: Value) -> Outcome {
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Outcome {
        status,
        headers,
        body: Body::Json(body),
    }
}

/// The upstream headers a caller gets back.
fn passed_back(upstream: &HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for name in PASSED_BACK_HEADERS {
        for value in upstream.get_all(name) {
            headers.append(HeaderName::from_static(name), value.clone());
        }
    }
    headers
}

struct InputScope<'a>(&'a Map<String, Value>);

impl Scope for InputScope<'_> {
    fn input(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    fn bound(&self, _: &str) -> Option<&str> {
        None
    }
}

/// Builds an output from `value` (the upstream response, or the inputs for mocks).
pub fn apply(shape: &Shape, value: &Value, scope: &dyn Scope) -> Value {
    match shape {
        Shape::Select(selector) => selector
            .select(value)
            .map(Cow::into_owned)
            .unwrap_or(Value::Null),
        Shape::Object { at, properties } => {
            let base = match at {
                Some(selector) => match selector.select(value) {
                    Some(base) => base,
                    None => return Value::Null,
                },
                None => Cow::Borrowed(value),
            };
            Value::Object(
                properties
                    .iter()
                    .map(|(name, shape)| (name.clone(), apply(shape, &base, scope)))
                    .collect(),
            )
        }
        Shape::Array { at, items } => match at.select(value).as_deref() {
            Some(Value::Array(elements)) => {
                Value::Array(elements.iter().map(|e| apply(items, e, scope)).collect())
            }
            Some(Value::Null) | None => Value::Null,
            Some(single) => Value::Array(vec![apply(items, single, scope)]),
        },
        Shape::Constant(v) => v.clone(),
        Shape::Mock(template) => template.render(scope).unwrap_or(Value::Null),
    }
}
