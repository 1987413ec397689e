//! The one request pipeline that REST routes and MCP tools share.
//!
//! ```text
//! inputs --prepare--> UpstreamRequest --plugins: on-request (in order)--> upstream::Client::send
//!   --> UpstreamResponse --plugins: on-response (reverse order)--> output mapping --> Outcome
//! ```
//!
//! Surfaces turn their requests into [`Inputs`] and an [`Outcome`] back into their own
//! responses; everything between (transforms, auth, encoding, limits, retries, mapping) happens
//! here once.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use opentelemetry::KeyValue;
use serde_json::{Map, Value};

use crate::access::AccessLog;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::trace::Tracing;
use crate::upstream::{self, Client};
use capgate_model::config::FailurePolicy;
use capgate_model::consumers::Consumer;
use capgate_model::exchange::{PASSED_BACK_HEADERS, UpstreamRequest, UpstreamResponse};
use capgate_model::snapshot::{
    Action, Operation, Output, Shape, TransformRef, UpstreamAdapter, UpstreamOperation,
};
use capgate_model::template::Scope;
use capgate_plugin::{
    CallContext, Failure, Plugin, PluginSet, Plugins, Refusal, RequestOutcome, ResponseOutcome,
};

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
    /// The gateway's id of this request, for logs and plugins.
    pub request_id: Arc<str>,
    /// The calling consumer, whose metadata templates may read (`{{consumer.x}}`).
    pub consumer: Option<Arc<Consumer>>,
}

/// A new request id: `req_` and 24 random characters.
pub fn request_id() -> Arc<str> {
    let mut id = [0u8; 4 + upstream::RANDOM_ID_LEN];
    id[..4].copy_from_slice(b"req_");
    upstream::fill_random_id(&mut id[4..]);
    Arc::from(std::str::from_utf8(&id).expect("ASCII"))
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
pub struct Invoker {
    client: Client,
    plugins: Option<Arc<Plugins>>,
    metrics: Arc<Metrics>,
    access: AccessLog,
    tracing: Tracing,
}

impl std::fmt::Debug for Invoker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invoker")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl Invoker {
    pub fn new(
        client: Client,
        plugins: Option<Arc<Plugins>>,
        metrics: Arc<Metrics>,
        access: AccessLog,
        tracing: Tracing,
    ) -> Invoker {
        Invoker {
            client,
            plugins,
            metrics,
            access,
            tracing,
        }
    }

    /// Traces (off unless configured).
    pub fn tracing(&self) -> &Tracing {
        &self.tracing
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The access log (a no-op when off).
    pub fn access(&self) -> &AccessLog {
        &self.access
    }

    pub fn plugins(&self) -> Option<&Arc<Plugins>> {
        self.plugins.as_ref()
    }

    /// The plugins loaded now (none without a plugin host).
    pub fn loaded_plugins(&self) -> PluginSet {
        self.plugins
            .as_ref()
            .map(|p| p.loaded())
            .unwrap_or_default()
    }

    /// Runs `operation` with `inputs`; its transforms run the versions in `plugins` (the set
    /// pinned with the request's snapshot).
    pub async fn invoke(
        &self,
        operation: &Operation,
        inputs: Inputs,
        plugins: &PluginSet,
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
                check_body(call, &inputs.values)?;
                let consumer = inputs.consumer.as_ref().map(|c| &c.metadata);
                let request = upstream::prepare(call, &inputs.values, &inputs.headers, consumer)?;
                let upstream = &call.upstream;
                let response = if upstream.transforms.is_empty() {
                    self.send(&upstream.adapter, request).await?
                } else {
                    let context = CallContext {
                        capability: &upstream.capability,
                        operation: &upstream.name,
                        request_id: if inputs.request_id.is_empty() {
                            request_id()
                        } else {
                            inputs.request_id.clone()
                        },
                    };
                    self.transformed(upstream, plugins, &context, request)
                        .await?
                };
                let scope = InputScope(&inputs.values);
                shape_response(operation, response, &upstream.adapter.namespace, &scope)
            }
            Action::Forward(forward) => {
                let Some(raw) = inputs.forward else {
                    return Err(GatewayError::Internal);
                };
                let mut request = upstream::forward_request(
                    &raw.method,
                    &raw.rest,
                    raw.query.as_deref(),
                    &inputs.headers,
                    &forward.trusted_headers,
                    raw.body,
                )?;
                upstream::with_fixed(&forward.adapter, &mut request);
                let response = self.send(&forward.adapter, request).await?;
                Ok(pass_through(response))
            }
        }
    }

    async fn send(
        &self,
        adapter: &UpstreamAdapter,
        request: UpstreamRequest,
    ) -> Result<UpstreamResponse, GatewayError> {
        let started = std::time::Instant::now();
        let result = self.client.send(adapter, request).await;
        let took = started.elapsed();
        crate::access::upstream_took(took);
        self.metrics.upstream_took(&adapter.namespace, took);
        result
    }

    /// The upstream call inside its plugins: `on-request` in binding order (a plugin may answer
    /// instead of the upstream, or refuse), then `on-response` in reverse order for the plugins
    /// whose `on-request` forwarded. A failing plugin fails the request (fail-closed) or is
    /// skipped (fail-open).
    async fn transformed(
        &self,
        upstream: &UpstreamOperation,
        loaded: &PluginSet,
        context: &CallContext<'_>,
        request: UpstreamRequest,
    ) -> Result<UpstreamResponse, GatewayError> {
        let Some(plugins) = &self.plugins else {
            return Err(GatewayError::Plugin {
                plugin: upstream.transforms[0].plugin.clone(),
                detail: "no plugin host is running".into(),
            });
        };
        let mut ran: Vec<(&TransformRef, &Plugin)> = Vec::new();
        let mut pending = Ok(request);
        for transform in &upstream.transforms {
            let Ok(request) = pending else {
                break;
            };
            let kept = (transform.on_error == FailurePolicy::FailOpen).then(|| request.clone());
            let started = std::time::Instant::now();
            let span = hook_span(transform, "on-request");
            let outcome = match loaded.get(&transform.plugin) {
                Some(plugin) => plugins
                    .on_request(plugin, transform, context, request)
                    .await
                    .map(|outcome| (outcome, plugin)),
                None => Err(Failure::NotLoaded),
            };
            crate::access::plugin_took(started.elapsed());
            if let Some(span) = &span {
                span.set(KeyValue::new(
                    "capgate.plugin.outcome",
                    request_outcome(&outcome),
                ));
            }
            drop(span);
            pending = match outcome {
                Ok((RequestOutcome::Skipped(request), plugin)) => {
                    ran.push((transform, plugin));
                    Ok(request)
                }
                Ok((RequestOutcome::Forward(changed), plugin)) => {
                    self.metrics.plugin(&transform.plugin, "on_request", "ok");
                    ran.push((transform, plugin));
                    Ok(changed)
                }
                Ok((RequestOutcome::Respond(response), _)) => {
                    self.metrics
                        .plugin(&transform.plugin, "on_request", "responded");
                    Err(response)
                }
                Ok((RequestOutcome::Refused(refusal), _)) => {
                    self.metrics
                        .plugin(&transform.plugin, "on_request", "refused");
                    return Err(refused(transform, refusal));
                }
                Err(failure) => {
                    self.metrics
                        .plugin(&transform.plugin, "on_request", failure.kind());
                    Ok(failed(transform, context, failure, kept)?)
                }
            };
        }
        // `pending` is the request to send, or the response a plugin answered with.
        let mut response = match pending {
            Ok(request) => self.send(&upstream.adapter, request).await?,
            Err(answered) => answered,
        };
        for (transform, plugin) in ran.into_iter().rev() {
            let kept = (transform.on_error == FailurePolicy::FailOpen).then(|| response.clone());
            let started = std::time::Instant::now();
            let span = hook_span(transform, "on-response");
            let outcome = plugins
                .on_response(plugin, transform, context, response)
                .await;
            crate::access::plugin_took(started.elapsed());
            if let Some(span) = span {
                span.set(KeyValue::new(
                    "capgate.plugin.outcome",
                    match &outcome {
                        Ok(ResponseOutcome::Skipped(_)) => "skipped",
                        Ok(ResponseOutcome::Forward(_)) => "ok",
                        Ok(ResponseOutcome::Refused(_)) => "refused",
                        Err(failure) => failure.kind(),
                    },
                ));
            }
            match outcome {
                Ok(ResponseOutcome::Skipped(unchanged)) => response = unchanged,
                Ok(ResponseOutcome::Forward(changed)) => {
                    self.metrics.plugin(&transform.plugin, "on_response", "ok");
                    response = changed;
                }
                Ok(ResponseOutcome::Refused(refusal)) => {
                    self.metrics
                        .plugin(&transform.plugin, "on_response", "refused");
                    return Err(refused(transform, refusal));
                }
                Err(failure) => {
                    self.metrics
                        .plugin(&transform.plugin, "on_response", failure.kind());
                    response = failed(transform, context, failure, kept)?;
                }
            }
        }
        Ok(response)
    }
}

/// The span of one plugin hook (`plugin on-request`), when the request is traced.
fn hook_span(transform: &TransformRef, hook: &'static str) -> Option<crate::trace::Child> {
    // A static name: `span` returns at once for a call that is not traced, and a formatted
    // one would be built for every hook of every call.
    let name = match hook {
        "on-request" => "plugin on-request",
        _ => "plugin on-response",
    };
    crate::trace::span(name, crate::trace::Kind::Internal, || {
        vec![
            KeyValue::new("capgate.plugin.name", transform.plugin.to_string()),
            KeyValue::new("capgate.plugin.hook", hook),
        ]
    })
}

/// How an `on-request` hook ended, as the plugin metrics say it.
fn request_outcome<T>(outcome: &Result<(RequestOutcome, T), Failure>) -> &'static str {
    match outcome {
        Ok((RequestOutcome::Skipped(_), _)) => "skipped",
        Ok((RequestOutcome::Forward(_), _)) => "ok",
        Ok((RequestOutcome::Respond(_), _)) => "responded",
        Ok((RequestOutcome::Refused(_), _)) => "refused",
        Err(failure) => failure.kind(),
    }
}

/// The caller's body checked against the operation's request schema (from its schema source,
/// when it has one): an unknown field, a value outside an enum or of the wrong kind, or a
/// required one left out, is the caller's 400, naming the parameter, before anything is sent.
fn check_body(
    call: &capgate_model::snapshot::Call,
    values: &Map<String, Value>,
) -> Result<(), GatewayError> {
    let Some(schema) = &call.upstream.body_schema else {
        return Ok(());
    };
    let input = call
        .with
        .iter()
        .find_map(|(name, source)| match source {
            capgate_model::snapshot::Source::Input(input) if name == "body" => Some(input.as_str()),
            _ => None,
        })
        .unwrap_or("body");
    let empty = Map::new();
    let body = match values.get(input) {
        Some(Value::Object(body)) => body,
        // No body at all: nothing to check but what the operation requires.
        None | Some(Value::Null) => &empty,
        Some(_) => return Ok(()),
    };
    // A required field the call sends as a parameter of its own (not in `body`) is there.
    let given =
        |name: &str| call.with.iter().any(|(with, _)| with == name) || values.contains_key(name);
    capgate_model::openapi::check_given(body, schema, given).map_err(|mismatch| {
        GatewayError::bad_request(mismatch.code, mismatch.message, Some(&mismatch.param))
    })
}

/// A failed plugin call: the request fails (fail-closed) or goes on with `kept` (fail-open).
fn failed<T>(
    transform: &TransformRef,
    context: &CallContext<'_>,
    failure: Failure,
    kept: Option<T>,
) -> Result<T, GatewayError> {
    match kept {
        Some(kept) => {
            tracing::warn!(plugin = %transform.plugin, operation = %context.operation, request_id = %context.request_id, failure = %failure, "plugin failed; going on without it (fail-open)");
            Ok(kept)
        }
        None => {
            tracing::warn!(plugin = %transform.plugin, operation = %context.operation, request_id = %context.request_id, failure = %failure, "plugin failed; request refused (fail-closed)");
            Err(GatewayError::Plugin {
                plugin: transform.plugin.clone(),
                detail: failure.summary().to_owned(),
            })
        }
    }
}

fn refused(transform: &TransformRef, refusal: Refusal) -> GatewayError {
    GatewayError::Refused {
        plugin: transform.plugin.clone(),
        status: refusal.status,
        code: refusal.code,
        message: refusal.message,
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
    Ok(json_outcome(response.status, passed_back(&response), body))
}

fn pass_through(response: UpstreamResponse) -> Outcome {
    let mut headers = passed_back(&response);
    // The bytes pass unchanged, so what describes them passes too: their type and encoding,
    // and where a redirect or a created resource points.
    for name in [
        http::header::CONTENT_TYPE,
        http::header::CONTENT_ENCODING,
        http::header::LOCATION,
    ] {
        if let Some(value) = response.headers.get(&name) {
            headers.insert(name, value.clone());
        }
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

/// The headers a caller gets back: Stripe's pass-back headers of the upstream, and whatever
/// transform plugins added.
fn passed_back(response: &UpstreamResponse) -> HeaderMap {
    let mut headers = HeaderMap::new();
    // One pass over the upstream's headers (a dozen), rather than a lookup per name.
    for (name, value) in &response.headers {
        if PASSED_BACK_HEADERS.contains(&name.as_str()) {
            headers.append(name.clone(), value.clone());
        }
    }
    for (name, value) in &response.from_plugins {
        headers.append(name.clone(), value.clone());
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
