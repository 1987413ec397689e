//! The REST surface: route a request, collect its inputs, run the operation, answer.
//!
//! Inputs come from the path, the query string (Stripe-style brackets too), headers and the
//! body (JSON, or form-encoded with brackets). Everything after input collection is `invoke`.

use std::borrow::Cow;

use bytes::Bytes;
use http::{HeaderMap, Method, Response};
use http_body_util::{BodyExt, Limited};
use opentelemetry::KeyValue;
use serde_json::{Map, Value};

use crate::error::GatewayError;
use crate::invoke::{ForwardInput, Inputs, Invoker, Outcome};
use crate::response::{self, HttpResponse, full};
use crate::server::ReadError;
use capgate_model::arguments::{ArgumentError, Problem, Strictness, validate_arguments};
use capgate_model::consumers::{Call, Target};
use capgate_model::form;
use capgate_model::route::Match;
use capgate_model::snapshot::{Action, ExposedParam, Listener, Location, RestInputs, RestRoute};
use capgate_plugin::PluginSet;

use crate::consumer::{Caller, Consumers};
use std::sync::Arc;

use crate::access::{Entry, Timing};
use crate::limits::Standing;

/// What the access log learns while a request is answered.
#[derive(Default)]
struct Seen<'a> {
    route: Option<&'a RestRoute>,
    caller: Option<Caller>,
    standing: Option<Standing>,
    limited: bool,
}

/// Answers one REST request on `listener`, and logs it (when the access log is on).
#[allow(clippy::too_many_arguments)]
pub async fn handle<B>(
    invoker: &Invoker,
    consumers: &Consumers,
    port: u16,
    listener: &Listener,
    plugins: &PluginSet,
    max_body: usize,
    request: http::Request<B>,
) -> HttpResponse
where
    B: http_body::Body<Data = Bytes> + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let timing = Timing::start();
    let request_id = crate::invoke::request_id();
    let method = request.method().clone();
    let bytes_in = request.body().size_hint().exact().unwrap_or(0);
    let mut seen = Seen::default();
    let traced = invoker.tracing().request(request.headers(), || {
        let attributes = vec![
            KeyValue::new("http.request.method", method.as_str().to_owned()),
            KeyValue::new("url.path", request.uri().path().to_owned()),
            KeyValue::new("server.port", i64::from(port)),
            KeyValue::new("capgate.request_id", request_id.to_string()),
        ];
        (method.as_str().to_owned(), attributes)
    });
    let response = crate::access::recording(
        timing.exchange.clone(),
        crate::trace::within(
            traced.as_ref(),
            // Boxed: moved into the tracing and access-log wrappers and then into this
            // function's future, the answer's state machine would be copied at each move.
            Box::pin(answer(
                invoker,
                consumers,
                port,
                listener,
                plugins,
                max_body,
                request,
                &request_id,
                &mut seen,
            )),
        ),
    )
    .await;
    if let Some(traced) = &traced {
        if let Some(route) = seen.route {
            // Named by its route template, as HTTP server spans are.
            traced.rename(format!("{method} {}", route.path));
            traced.set(KeyValue::new("http.route", route.path.clone()));
            traced.set(KeyValue::new(
                "capgate.capability",
                route.operation.origin.capability.to_string(),
            ));
            traced.set(KeyValue::new(
                "capgate.operation",
                operation_name(route).to_owned(),
            ));
        }
        if let Some(caller) = &seen.caller {
            traced.set(KeyValue::new(
                "capgate.consumer.name",
                caller.consumer.name.clone(),
            ));
        }
        traced.answered(response.status().as_u16());
    }
    if let (Some(caller), Some(route)) = (&seen.caller, seen.route) {
        invoker.metrics().consumer_call(
            &caller.consumer.name,
            &route.operation.origin.capability,
            operation_name(route),
            response.status().as_u16(),
        );
    }
    if invoker.access().is_on() {
        let operation = seen.route.map(operation_name);
        let mut entry = Entry {
            request_id: &request_id,
            surface: "rest",
            consumer: seen.caller.as_ref().map(|c| c.consumer.name.as_str()),
            credential: seen.caller.as_ref().map(|c| c.credential.as_str()),
            capability: seen.route.map(|r| &*r.operation.origin.capability),
            adapter: seen.route.map(|r| &*r.namespace),
            operation,
            method: method.as_str(),
            route: seen.route.map_or("(no route)", |r| r.path.as_str()),
            status: response.status().as_u16(),
            bytes_in,
            bytes_out: http_body::Body::size_hint(response.body())
                .exact()
                .unwrap_or(0),
            limit: if seen.limited {
                Some("limited")
            } else {
                seen.standing.map(|_| "admitted")
            },
            limit_remaining: seen.standing.map(|s| s.remaining),
            trace_id: traced.as_ref().map(crate::trace::Traced::trace_id),
            ..Entry::default()
        };
        timing.finish(&mut entry);
        invoker.access().write(&entry);
    }
    response
}

/// The operation's own name (without its adapter's namespace).
fn operation_name(route: &RestRoute) -> &str {
    route
        .operation
        .name
        .split_once('.')
        .map_or(route.operation.name.as_str(), |(_, name)| name)
}

#[allow(clippy::too_many_arguments)]
async fn answer<'a, B>(
    invoker: &Invoker,
    consumers: &Consumers,
    port: u16,
    listener: &'a Listener,
    plugins: &PluginSet,
    max_body: usize,
    request: http::Request<B>,
    request_id: &Arc<str>,
    seen: &mut Seen<'a>,
) -> HttpResponse
where
    B: http_body::Body<Data = Bytes> + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let method = request.method().clone();
    // The URI's parts are shared, not copied: the path outlives the request for the log.
    let uri = request.uri().clone();
    let path = uri.path();
    let result = match listener.rest.find(&method, path) {
        Match::NotFound => Err(GatewayError::NotFound {
            method,
            path: path.to_owned(),
        }),
        Match::MethodNotAllowed(allowed) => Err(GatewayError::MethodNotAllowed {
            method,
            path: path.to_owned(),
            allowed,
        }),
        Match::Found {
            value: route,
            params,
        } => {
            seen.route = Some(route);
            match consumer_of(consumers, port, route, request.headers(), seen).await {
                Ok(()) => {
                    let caller = seen.caller.clone();
                    let context = Context {
                        request_id: request_id.clone(),
                        caller,
                    };
                    run(invoker, plugins, route, params, max_body, context, request).await
                }
                Err(error) => Err(error),
            }
        }
    };
    match result {
        Ok(outcome) => {
            let mut response = outcome_response(outcome);
            if let Some(standing) = seen.standing {
                response::rate_limit_headers(
                    response.headers_mut(),
                    &standing.policy,
                    standing.remaining,
                    standing.reset,
                );
            }
            response
        }
        Err(error) => {
            if error.status().is_server_error() {
                tracing::warn!(%path, status = error.status().as_u16(), error = %error, "request failed");
            } else {
                tracing::debug!(%path, status = error.status().as_u16(), error = %error, "request refused");
            }
            response::error(&error)
        }
    }
}

/// Who calls, and the request's id.
struct Context {
    request_id: Arc<str>,
    caller: Option<Caller>,
}

/// The consumer calling `route`, when its adapter requires one (in `seen`): identified by its
/// key, granted the route by a scope (else 401 or 403) and admitted by its limits (else 429),
/// with how its tightest limit stands.
async fn consumer_of(
    consumers: &Consumers,
    port: u16,
    route: &RestRoute,
    headers: &HeaderMap,
    seen: &mut Seen<'_>,
) -> Result<(), GatewayError> {
    let origin = &route.operation.origin;
    if !consumers.required(port, &origin.capability, &route.namespace) {
        return Ok(());
    }
    let caller = seen.caller.insert(consumers.identify(headers).await?);
    let name = operation_name(route);
    let target = Target {
        capability: &origin.capability,
        adapter: &route.namespace,
        name,
        read_only: matches!(route.method, Method::GET | Method::HEAD),
    };
    if !caller.may(&target) {
        return Err(caller.refused(&format!("{} {}", route.method, route.path)));
    }
    let call = Call {
        capability: &origin.capability,
        name,
    };
    match consumers.admit(caller, &call).await {
        Ok(standing) => {
            seen.standing = standing;
            Ok(())
        }
        Err(error) => {
            seen.limited = matches!(error, GatewayError::RateLimited { .. });
            Err(error)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run<B>(
    invoker: &Invoker,
    plugins: &PluginSet,
    route: &RestRoute,
    params: Vec<(&str, String)>,
    max_body: usize,
    context: Context,
    request: http::Request<B>,
) -> Result<Outcome, GatewayError>
where
    B: http_body::Body<Data = Bytes> + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let (mut parts, body) = request.into_parts();
    // The caller's credentials end here: neither inputs nor a forwarded request carry them.
    // Where a consumer is required, its key replaces the adapter's own authentication.
    let query: Option<Cow<str>> = match &route.auth {
        _ if context.caller.is_some() => {
            parts.headers.remove(http::header::AUTHORIZATION);
            parts.headers.remove("x-api-key");
            parts.uri.query().map(Cow::Borrowed)
        }
        Some(auth) => {
            crate::auth::check(auth, &parts.headers, parts.uri.query())?;
            crate::auth::strip(auth, &mut parts.headers, parts.uri.query()).map(Cow::Owned)
        }
        None => parts.uri.query().map(Cow::Borrowed),
    };
    let bytes = read_body(&parts.headers, body, max_body).await?;
    if let Action::Forward(_) = route.operation.action {
        let rest = params.last().map(|(_, v)| v.clone()).unwrap_or_default();
        let inputs = Inputs {
            values: Map::new(),
            headers: parts.headers,
            forward: Some(ForwardInput {
                method: parts.method,
                rest,
                query: query.map(Cow::into_owned),
                body: bytes,
            }),
            request_id: context.request_id,
            consumer: context.caller.map(|c| c.consumer),
        };
        return invoker.invoke(&route.operation, inputs, plugins).await;
    }
    let query = form::decode(query.as_deref().unwrap_or("").as_bytes()).map_err(|e| {
        GatewayError::bad_request(
            "parameter_invalid",
            format!("invalid query string: {e}"),
            Some(e.name()),
        )
    })?;
    let body = parse_body(&parts.headers, &bytes)?;
    // A GET, HEAD or DELETE takes its parameters from the path and the query: fields in its
    // body would be sent as query parameters without the caller asking, so they are refused.
    if matches!(parts.method, Method::GET | Method::HEAD | Method::DELETE)
        && body
            .as_ref()
            .is_some_and(|b| b.as_object().is_none_or(|o| !o.is_empty()))
    {
        return Err(GatewayError::bad_request(
            "parameter_invalid",
            format!(
                "{} takes its parameters in the query string, not in a request body",
                parts.method
            ),
            None,
        ));
    }
    let values = match &route.inputs {
        RestInputs::Implicit {
            specs,
            strict_query,
        } => {
            let mut values = Map::new();
            for (name, value) in &params {
                values.insert((*name).to_owned(), Value::String(value.clone()));
            }
            for (name, value) in query {
                if *strict_query
                    && !specs.iter().any(|s| s.name == name)
                    && !values.contains_key(&name)
                {
                    return Err(GatewayError::bad_request(
                        "parameter_unknown",
                        format!("Received unknown parameter: {name}"),
                        Some(&name),
                    ));
                }
                values.entry(name).or_insert(value);
            }
            if let Some(body) = body {
                if let Value::Object(fields) = &body {
                    for (name, value) in fields {
                        values.entry(name.clone()).or_insert_with(|| value.clone());
                    }
                }
                values.insert("body".into(), body);
            }
            validate_arguments(specs, values, Strictness::FromText).map_err(argument_error)?
        }
        RestInputs::Declared {
            params: declared,
            specs,
        } => {
            let values = declared_inputs(declared, &params, query, &parts.headers, body.as_ref());
            validate_arguments(specs, values, Strictness::FromText).map_err(argument_error)?
        }
    };
    invoker
        .invoke(
            &route.operation,
            Inputs {
                values,
                headers: parts.headers,
                forward: None,
                request_id: context.request_id,
                consumer: context.caller.map(|c| c.consumer),
            },
            plugins,
        )
        .await
}

/// The whole body, within `max_body` bytes (a declared length past it is refused before
/// reading) and the listener's read deadline.
async fn read_body<B>(headers: &HeaderMap, body: B, max_body: usize) -> Result<Bytes, GatewayError>
where
    B: http_body::Body<Data = Bytes> + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    if let Some(length) = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        && length > max_body
    {
        return Err(GatewayError::PayloadTooLarge { limit: max_body });
    }
    match Limited::new(body, max_body).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error)
            if error
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(GatewayError::PayloadTooLarge { limit: max_body })
        }
        Err(error) => {
            // The listener's deadline for the whole body (`server::ReadDeadline`).
            if let Some(ReadError::TimedOut(after)) = error.downcast_ref::<ReadError>() {
                return Err(GatewayError::RequestTimeout { after: *after });
            }
            Err(GatewayError::bad_request(
                "body_unreadable",
                "the request body could not be read",
                None,
            ))
        }
    }
}

fn argument_error(e: ArgumentError) -> GatewayError {
    let code = match e.problem {
        Problem::Missing => "parameter_missing",
        Problem::Unknown => "parameter_unknown",
        Problem::Invalid => "parameter_invalid",
    };
    GatewayError::bad_request(code, e.message, Some(&e.param))
}

fn declared_inputs(
    declared: &[ExposedParam],
    params: &[(&str, String)],
    query: Map<String, Value>,
    headers: &HeaderMap,
    body: Option<&Value>,
) -> Map<String, Value> {
    let mut values = Map::new();
    for param in declared {
        let value = match param.location {
            Some(Location::Path) => params
                .iter()
                .find(|(k, _)| *k == param.name)
                .map(|(_, v)| Value::String(v.clone())),
            Some(Location::Query) => query.get(&param.name).cloned(),
            Some(Location::Header) => headers
                .get(param.name.as_str())
                .and_then(|v| v.to_str().ok())
                .map(|v| Value::String(v.to_owned())),
            Some(Location::Cookie) => cookie(headers, &param.name).map(Value::String),
            Some(Location::Body) => body.and_then(|body| match &param.selector {
                Some(selector) => selector.select(body).map(std::borrow::Cow::into_owned),
                None => body.get(&param.name).cloned(),
            }),
            // `in: environment`: never from the caller.
            None => None,
        };
        if let Some(value) = value {
            values.insert(param.name.clone(), value);
        }
    }
    for &(name, ref value) in params {
        values
            .entry(name)
            .or_insert_with(|| Value::String(value.clone()));
    }
    values
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// Reads a JSON or form-encoded body; an empty body is `None`.
fn parse_body(headers: &HeaderMap, bytes: &Bytes) -> Result<Option<Value>, GatewayError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with("application/x-www-form-urlencoded") {
        return form::decode(bytes)
            .map(|map| Some(Value::Object(map)))
            .map_err(|e| {
                GatewayError::bad_request(
                    "parameter_invalid",
                    format!("invalid form body: {e}"),
                    Some(e.name()),
                )
            });
    }
    // The media type without its parameters (`; charset=utf-8`).
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if essence.is_empty() || essence == "application/json" || essence.ends_with("+json") {
        return serde_json::from_slice(bytes).map(Some).map_err(|e| {
            GatewayError::bad_request("body_invalid", format!("invalid JSON body: {e}"), None)
        });
    }
    Err(GatewayError::bad_request(
        "content_type_unsupported",
        format!(
            "unsupported request content type \"{content_type}\": send application/json or application/x-www-form-urlencoded"
        ),
        None,
    ))
}

fn outcome_response(outcome: Outcome) -> HttpResponse {
    let body = outcome.body_bytes();
    let mut response = Response::new(full(body));
    *response.status_mut() = outcome.status;
    *response.headers_mut() = outcome.headers;
    response
}
