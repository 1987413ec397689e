//! Preparing an upstream request from a call: the call's `with` arguments, each consumed
//! parameter rendered and placed (path, query, header, cookie, body; sealed when built from
//! bound variables), the path rendered, forwarded caller headers, the body built by the plan.
//!
//! What this makes is what request transforms see: no auth, the body still JSON. Encoding and
//! credentials come later (`encode`).

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde_json::{Map, Value};

use capgate_model::config::ProfileName;
use capgate_model::exchange::{FORWARDED_HEADERS, Payload, Sealed, UpstreamRequest};
use capgate_model::secret::Secret;
use capgate_model::snapshot::{
    BodyPlan, Call, Location, PathPart, Source, UpstreamOperation, UpstreamParam,
};
use capgate_model::template::{Scope, value_text};

use crate::error::GatewayError;

/// Values templates can read while a request is prepared: the call's arguments first, then the
/// caller's inputs, and the adapter's bound variables.
struct ArgumentScope<'a> {
    args: &'a Map<String, Value>,
    inputs: &'a Map<String, Value>,
    binds: &'a BTreeMap<String, Option<Secret>>,
    consumer: Option<&'a BTreeMap<String, String>>,
}

impl Scope for ArgumentScope<'_> {
    fn input(&self, name: &str) -> Option<&Value> {
        self.args.get(name).or_else(|| self.inputs.get(name))
    }

    fn bound(&self, variable: &str) -> Option<&str> {
        self.binds.get(variable)?.as_ref().map(Secret::expose)
    }

    fn consumer(&self, key: &str) -> Option<&str> {
        self.consumer?.get(key).map(String::as_str)
    }
}

/// Characters kept as they are in a path parameter: RFC 3986 unreserved only, so a value is
/// always exactly one segment.
pub(super) const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
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
    consumer: Option<&BTreeMap<String, String>>,
) -> Result<UpstreamRequest, GatewayError> {
    let upstream = &call.upstream;
    let args = arguments(call, inputs, consumer);
    let scope = ArgumentScope {
        args: &args,
        inputs,
        binds: &upstream.adapter.binds,
        consumer,
    };
    let mut placed = Placed::new(upstream, call.hides_body);
    for (param, &secret) in upstream.params.iter().zip(&call.sealed) {
        let value = match &param.value {
            Some(template) => template.render(&scope),
            None => args.get(&param.name).cloned(),
        };
        match value {
            Some(Value::Null) => placed.absent(param, true)?,
            None => placed.absent(param, false)?,
            Some(value) => placed.place(param, value, secret)?,
        }
    }
    let path = render_path(&upstream.path, &placed.path_values)?;
    // One pass over the caller's few headers, rather than a hashed lookup of each forwarded
    // name (all of them custom names, hashed byte by byte).
    for (name, value) in caller_headers {
        if FORWARDED_HEADERS.contains(name) {
            placed.headers.append(name.clone(), value.clone());
        }
    }
    let body = match placed.sends_body {
        false => None,
        true => body(
            &upstream.body,
            placed.whole_body,
            placed.body_fields,
            &scope,
        ),
    };
    Ok(UpstreamRequest {
        method: upstream.method.clone(),
        path,
        query: placed.query,
        headers: placed.headers,
        body,
        sealed: placed.sealed,
    })
}

/// The call's arguments: its `with` entries (constants, templates over the caller's inputs,
/// inputs by name), then, for each consumed parameter `with` does not mention, the caller's
/// input of the same name.
fn arguments(
    call: &Call,
    inputs: &Map<String, Value>,
    consumer: Option<&BTreeMap<String, String>>,
) -> Map<String, Value> {
    let upstream = &call.upstream;
    let empty = Map::new();
    let scope = ArgumentScope {
        args: &empty,
        inputs,
        binds: &upstream.adapter.binds,
        consumer,
    };
    let mut args = Map::new();
    for (name, source) in &call.with {
        let value = match source {
            Source::Input(input) => inputs.get(input).cloned(),
            Source::Template(t) => t.render_value(&scope),
            Source::Constant(v) => Some(v.clone()),
        };
        if let Some(value) = value {
            args.insert(name.clone(), value);
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
    args
}

/// The parameters of one request, each where its location puts it.
struct Placed<'a> {
    upstream: &'a UpstreamOperation,
    /// GET, DELETE and HEAD calls send no body (a forward route's DELETE does: `forward`).
    sends_body: bool,
    /// Path parameters by name (a handful at most: a list, not a hash map).
    path_values: Vec<(&'a str, String)>,
    query: Vec<(String, Value)>,
    headers: HeaderMap,
    body_fields: Map<String, Value>,
    whole_body: Option<Value>,
    sealed: Sealed,
}

impl<'a> Placed<'a> {
    fn new(upstream: &'a UpstreamOperation, hides_body: bool) -> Placed<'a> {
        Placed {
            upstream,
            sends_body: !matches!(upstream.method, Method::GET | Method::DELETE | Method::HEAD),
            path_values: Vec::new(),
            query: Vec::new(),
            headers: HeaderMap::new(),
            body_fields: Map::new(),
            whole_body: None,
            sealed: Sealed {
                hides_body,
                ..Sealed::default()
            },
        }
    }

    /// A parameter without a value (`null` when `given_null`): refused when required, else
    /// left out.
    fn absent(&mut self, param: &UpstreamParam, given_null: bool) -> Result<(), GatewayError> {
        if param.spec.required && (self.sends_body || param.location != Location::Body) {
            return Err(GatewayError::bad_request(
                "parameter_missing",
                format!("Missing required param: {}.", param.name),
                Some(&param.name),
            ));
        }
        // To Stripe, a body field given as `null` is sent (its "unset": an empty value), unlike
        // one not given at all.
        if given_null
            && self.upstream.adapter.profile == ProfileName::Stripe
            && self.sends_body
            && param.location == Location::Body
            && param.name != "body"
        {
            self.body_fields.insert(param.name.clone(), Value::Null);
        }
        Ok(())
    }

    /// Puts a parameter's value where its location says; `secret` values (built from bound
    /// variables) go into `sealed`, which transforms never see.
    fn place(
        &mut self,
        param: &'a UpstreamParam,
        value: Value,
        secret: bool,
    ) -> Result<(), GatewayError> {
        match param.location {
            Location::Path => {
                let text = value_text(&value);
                if text.is_empty() || text == "." || text == ".." {
                    return Err(GatewayError::bad_request(
                        "parameter_invalid",
                        format!("Invalid value for path parameter {}: {text:?}", param.name),
                        Some(&param.name),
                    ));
                }
                match self.path_values.iter_mut().find(|(n, _)| *n == param.name) {
                    Some((_, old)) => *old = text,
                    None => self.path_values.push((&param.name, text)),
                }
            }
            Location::Query if secret => self.sealed.query.push((param.name.clone(), value)),
            Location::Query => self.query.push((param.name.clone(), value)),
            Location::Header => {
                let headers = self.headers_for(secret);
                match (
                    HeaderName::try_from(param.name.as_str()),
                    HeaderValue::try_from(value_text(&value)),
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
            Location::Cookie => {
                let headers = self.headers_for(secret);
                // Only RFC 6265's cookie octets: a `;` would add a cookie of the caller's own.
                let text = value_text(&value);
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
            // A GET, DELETE or HEAD sends no body: what a caller gives for one is refused, not
            // dropped without a word (bound values there are the file's doing, and dropped).
            Location::Body if !self.sends_body => {
                let empty = value.is_null() || value.as_object().is_some_and(Map::is_empty);
                if !secret && !empty {
                    return Err(GatewayError::bad_request(
                        "parameter_invalid",
                        format!(
                            "{} sends no request body, so body parameter {} cannot be sent; \
                             send its fields as the operation's query parameters",
                            self.upstream.method, param.name
                        ),
                        Some(&param.name),
                    ));
                }
            }
            Location::Body
                if param.name == "body"
                    && (value.is_object() || self.whole_body.is_none() && !value.is_object()) =>
            {
                self.sealed.hides_body |= secret;
                self.whole_body = Some(value);
            }
            // Body parameters are sent only when they build the body.
            Location::Body if secret && matches!(self.upstream.body, BodyPlan::FromParams) => {
                self.sealed.body.insert(param.name.clone(), value);
            }
            Location::Body => {
                self.body_fields.insert(param.name.clone(), value);
            }
        }
        Ok(())
    }

    fn headers_for(&mut self, secret: bool) -> &mut HeaderMap {
        if secret {
            &mut self.sealed.headers
        } else {
            &mut self.headers
        }
    }
}

/// The upstream path with each parameter percent-encoded as one segment.
fn render_path(parts: &[PathPart], values: &[(&str, String)]) -> Result<String, GatewayError> {
    let mut path = String::new();
    for part in parts {
        match part {
            PathPart::Literal(text) => path.push_str(text),
            PathPart::Param(name) => match values.iter().find(|(n, _)| n == name) {
                Some((_, value)) => {
                    path.extend(percent_encoding::utf8_percent_encode(value, SEGMENT))
                }
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
    Ok(path)
}

/// The body a call sends, by the operation's body plan.
fn body(
    plan: &BodyPlan,
    whole_body: Option<Value>,
    body_fields: Map<String, Value>,
    scope: &ArgumentScope<'_>,
) -> Option<Payload> {
    match plan {
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
        BodyPlan::Structured(template) => template.render(scope).map(Payload::Structured),
        BodyPlan::Form(template) => template.render(scope).map(Payload::Form),
        BodyPlan::Text {
            template,
            content_type,
        } => template.render_text(scope).map(|text| Payload::Raw {
            bytes: Bytes::from(text.into_owned()),
            content_type: (*content_type).to_owned(),
        }),
    }
}
