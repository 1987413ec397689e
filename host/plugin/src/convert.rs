//! Conversions between the WIT types a plugin sees and returns and the gateway's
//! `UpstreamRequest`/`UpstreamResponse`, with the validation of what a plugin returns (method,
//! path, headers, bodies, refusal status): anything unusable is `Failure::Malformed`. Running
//! the plugin is `host`'s; these functions know nothing of wasmtime.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use serde_json::Value;

use capgate_model::exchange::{Payload, UpstreamRequest, UpstreamResponse};
use capgate_model::snapshot::TransformRef;

use crate::bindings::{Context, PluginError, Request, Response};
use crate::{CallContext, Failure, Refusal};

/// How many more headers a plugin may return than it was shown; more is a malformed result.
const MAX_HEADERS: usize = 100;

pub(crate) fn wit_context(transform: &TransformRef, context: &CallContext<'_>) -> Context {
    Context {
        capability: context.capability.to_owned(),
        operation: context.operation.to_owned(),
        request_id: context.request_id.to_string(),
        config: transform.config.to_string(),
    }
}

/// Makes `into` the context `wit_context` would build, reusing its strings' buffers.
pub(crate) fn refill_context(
    into: &mut Context,
    transform: &TransformRef,
    context: &CallContext<'_>,
) {
    refill(&mut into.capability, context.capability);
    refill(&mut into.operation, context.operation);
    refill(&mut into.request_id, &context.request_id);
    refill(&mut into.config, &transform.config);
}

/// Makes `into` the text of `value`, reusing its buffer.
fn refill(into: &mut String, value: &str) {
    into.clear();
    into.push_str(value);
}

/// Makes `into` the list of `(name, value)` pairs a plugin is shown of `headers` (all but
/// `Authorization`), reusing the strings it holds.
fn refill_headers(into: &mut Vec<(String, String)>, headers: &HeaderMap) {
    let mut shown = 0;
    for (name, value) in headers {
        if name == http::header::AUTHORIZATION {
            continue;
        }
        // Header values are mostly ASCII: checked as UTF-8 first, lossy only when not.
        let value = match value.to_str() {
            Ok(text) => std::borrow::Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(value.as_bytes()),
        };
        match into.get_mut(shown) {
            Some((n, v)) => {
                refill(n, name.as_str());
                refill(v, &value);
            }
            None => into.push((name.as_str().to_owned(), value.into_owned())),
        }
        shown += 1;
    }
    into.truncate(shown);
}

/// A plugin's headers, of which there may be at most [`MAX_HEADERS`] more than it was `shown`.
fn headers_from_wit(headers: Vec<(String, String)>, shown: usize) -> Result<HeaderMap, Failure> {
    if headers.len() > shown + MAX_HEADERS {
        return Err(Failure::Malformed(format!(
            "{} headers returned for {shown}; at most {MAX_HEADERS} more are accepted",
            headers.len()
        )));
    }
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let name = HeaderName::try_from(name.as_str())
            .map_err(|_| Failure::Malformed(format!("invalid header name {name:?}")))?;
        let value = HeaderValue::try_from(value.as_str())
            .map_err(|_| Failure::Malformed(format!("invalid value for header {name}")))?;
        map.append(name, value);
    }
    Ok(map)
}

pub(crate) fn to_wit_request(request: &UpstreamRequest, with_body: bool) -> Request {
    let mut shown = Request {
        method: String::new(),
        path: String::new(),
        query: Vec::new(),
        headers: Vec::new(),
        body: None,
    };
    refill_request(&mut shown, request, with_body);
    shown
}

/// Makes `into` the request `to_wit_request` would build, reusing the buffers it holds.
pub(crate) fn refill_request(into: &mut Request, request: &UpstreamRequest, with_body: bool) {
    use std::fmt::Write as _;
    refill(&mut into.method, request.method.as_str());
    refill(&mut into.path, &request.path);
    into.query.truncate(request.query.len());
    for (i, (name, value)) in request.query.iter().enumerate() {
        if i == into.query.len() {
            into.query.push((String::new(), String::new()));
        }
        let (n, v) = &mut into.query[i];
        refill(n, name);
        v.clear();
        write!(v, "{value}").expect("writing to a String cannot fail");
    }
    refill_headers(&mut into.headers, &request.headers);
    // A body rendered from bound variables is never shown (and so never changed).
    let body = request
        .body
        .as_ref()
        .filter(|_| with_body && !request.sealed.hides_body);
    match body {
        None => into.body = None,
        Some(payload) => {
            let bytes = into.body.get_or_insert_with(Vec::new);
            bytes.clear();
            match payload {
                Payload::Structured(value) | Payload::Form(value) => {
                    serde_json::to_writer(&mut *bytes, value).expect("JSON values serialize");
                }
                Payload::Raw { bytes: raw, .. } => bytes.extend_from_slice(raw),
            }
        }
    }
}

/// Whether the request a plugin returned is the one it was `shown`, so that `original` can go
/// on as it is: rebuilding it would give the same request at the cost of re-reading every part
/// (methods, paths, JSON texts, header names and values). `Authorization` is shown to no plugin,
/// so an original carrying one is rebuilt without it, as any other.
pub(crate) fn request_unchanged(
    changed: &Request,
    shown: &Request,
    original: &UpstreamRequest,
) -> bool {
    changed == shown && !original.headers.contains_key(http::header::AUTHORIZATION)
}

pub(crate) fn from_wit_request(
    changed: Request,
    original: UpstreamRequest,
    with_body: bool,
) -> Result<UpstreamRequest, Failure> {
    let method = Method::from_bytes(changed.method.as_bytes())
        .map_err(|_| Failure::Malformed(format!("invalid method {:?}", changed.method)))?;
    if !stays_on_its_path(&changed.path) {
        return Err(Failure::Malformed(format!(
            "invalid path {:?}",
            changed.path
        )));
    }
    let mut query = Vec::with_capacity(changed.query.len());
    for (name, text) in changed.query {
        let value: Value = serde_json::from_str(&text).map_err(|_| {
            Failure::Malformed(format!("query parameter {name:?} is not JSON text"))
        })?;
        query.push((name, value));
    }
    let headers = headers_from_wit(changed.headers, original.headers.len())?;
    let body = if !with_body || original.sealed.hides_body {
        original.body
    } else {
        match (changed.body, original.body) {
            (None, _) => None,
            (Some(bytes), Some(Payload::Raw { content_type, .. })) => Some(Payload::Raw {
                bytes: Bytes::from(bytes),
                content_type,
            }),
            (Some(bytes), Some(Payload::Form(_))) => Some(Payload::Form(parse_json_body(&bytes)?)),
            (Some(bytes), _) => Some(Payload::Structured(parse_json_body(&bytes)?)),
        }
    };
    Ok(UpstreamRequest {
        method,
        path: changed.path,
        query,
        headers,
        body,
        sealed: original.sealed,
    })
}

/// Whether a path a plugin returned is one the upstream URL takes as it is: absolute, no
/// query, fragment or backslash, and no segment that is (or decodes to) `.` or `..` (URL
/// parsers read `%2e%2e` as `..` and a backslash as `/`).
fn stays_on_its_path(path: &str) -> bool {
    path.starts_with('/')
        && !path.contains(['?', '#', '\\', ' '])
        && path[1..].split('/').all(|segment| {
            let decoded = percent_encoding::percent_decode_str(segment).decode_utf8_lossy();
            decoded != "." && decoded != ".."
        })
}

fn parse_json_body(bytes: &[u8]) -> Result<Value, Failure> {
    serde_json::from_slice(bytes)
        .map_err(|e| Failure::Malformed(format!("the request body is not JSON: {e}")))
}

/// The response a plugin's `on-response` is shown: its body only if the plugin asked for it.
pub(crate) fn to_wit_response(response: &UpstreamResponse, with_body: bool) -> Response {
    let mut shown = Response {
        status: 0,
        headers: Vec::new(),
        body: None,
    };
    refill_response(&mut shown, response, with_body);
    shown
}

/// Makes `into` the response `to_wit_response` would build, reusing the buffers it holds.
pub(crate) fn refill_response(into: &mut Response, response: &UpstreamResponse, with_body: bool) {
    into.status = response.status.as_u16();
    refill_headers(&mut into.headers, &response.headers);
    if with_body {
        let bytes = into.body.get_or_insert_with(Vec::new);
        bytes.clear();
        bytes.extend_from_slice(&response.body);
    } else {
        into.body = None;
    }
}

/// Whether the response a plugin returned is the one it was `shown`, so that `original` can go
/// on as it is (see [`request_unchanged`]). Headers earlier plugins added are rebuilt, to keep
/// the record of which ones go to the caller.
pub(crate) fn response_unchanged(
    changed: &Response,
    shown: &Response,
    original: &UpstreamResponse,
) -> bool {
    changed == shown
        && original.from_plugins.is_empty()
        && !original.headers.contains_key(http::header::AUTHORIZATION)
}

/// Builds a response from a plugin's. Headers it added or changed relative to `before` (all of
/// them when it answered instead of the upstream) are recorded as going to the caller.
pub(crate) fn from_wit_response(
    response: Response,
    original_body: Option<Bytes>,
    before: Option<&UpstreamResponse>,
) -> Result<UpstreamResponse, Failure> {
    let status = StatusCode::from_u16(response.status)
        .map_err(|_| Failure::Malformed(format!("invalid status {}", response.status)))?;
    let headers = headers_from_wit(response.headers, before.map_or(0, |b| b.headers.len()))?;
    let body = match (response.body, original_body) {
        (Some(bytes), _) => Bytes::from(bytes),
        (None, Some(original)) => original,
        (None, None) => Bytes::new(),
    };
    // What an earlier plugin added stays only if this one kept it: a later plugin can remove it.
    let mut from_plugins = HeaderMap::new();
    for (name, value) in &headers {
        let has = |map: &HeaderMap| map.get_all(name).iter().any(|v| v == value);
        let from_upstream = before.is_some_and(|b| has(&b.headers) && !has(&b.from_plugins));
        if !from_upstream
            && name != http::header::CONTENT_LENGTH
            && name != http::header::TRANSFER_ENCODING
        {
            from_plugins.append(name.clone(), value.clone());
        }
    }
    Ok(UpstreamResponse {
        status,
        headers,
        body,
        from_plugins,
    })
}

pub(crate) fn refusal(error: PluginError) -> Result<Refusal, Failure> {
    let status = StatusCode::from_u16(error.status)
        .ok()
        .filter(|s| s.is_client_error() || s.is_server_error())
        .ok_or_else(|| {
            Failure::Malformed(format!(
                "a refusal needs a 4xx or 5xx status, not {}",
                error.status
            ))
        })?;
    Ok(Refusal {
        status,
        code: error.code,
        message: error.message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn a_later_plugin_can_remove_a_header_an_earlier_one_added() {
        let upstream = UpstreamResponse {
            status: StatusCode::OK,
            headers: HeaderMap::from_iter([(
                HeaderName::from_static("request-id"),
                HeaderValue::from_static("req_1"),
            )]),
            body: Bytes::new(),
            from_plugins: HeaderMap::new(),
        };
        let wit = |headers: &[(&str, &str)]| Response {
            status: 200,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: None,
        };
        let first = from_wit_response(
            wit(&[("request-id", "req_1"), ("x-a", "1"), ("x-b", "2")]),
            Some(Bytes::new()),
            Some(&upstream),
        )
        .unwrap();
        let names = |r: &UpstreamResponse| r.from_plugins.keys().cloned().collect::<Vec<_>>();
        assert_eq!(names(&first), ["x-a", "x-b"]);
        let second = from_wit_response(
            wit(&[("request-id", "req_1"), ("x-b", "2"), ("x-c", "3")]),
            Some(Bytes::new()),
            Some(&first),
        )
        .unwrap();
        assert_eq!(names(&second), ["x-b", "x-c"]);
    }

    /// What the fast paths hand on for a result the plugin did not change is what rebuilding
    /// the result would give; anything else is rebuilt.
    #[test]
    fn an_unchanged_result_is_the_original_and_what_rebuilding_it_gives() {
        let header = |n: &'static str, v: &'static str| {
            (HeaderName::from_static(n), HeaderValue::from_static(v))
        };
        let headers = HeaderMap::from_iter([
            header("stripe-version", "2024-06-20"),
            header("x-a", "1"),
            header("x-a", "2"),
            header("idempotency-key", "k_1"),
        ]);
        let bodies = [
            None,
            Some(Payload::Structured(
                serde_json::json!({"a": 1, "b": [1.5, "x", null]}),
            )),
            Some(Payload::Form(
                serde_json::json!({"metadata": {"k": "v"}, "n": 3}),
            )),
            Some(Payload::Raw {
                bytes: Bytes::from_static(b"raw"),
                content_type: "text/plain".into(),
            }),
        ];
        for body in bodies {
            for with_body in [false, true] {
                let original = UpstreamRequest {
                    method: Method::POST,
                    path: "/v1/identity/verification_sessions/vs_1".into(),
                    query: vec![
                        ("expand".into(), serde_json::json!(["a", "b"])),
                        ("limit".into(), serde_json::json!(3)),
                        ("starting_after".into(), serde_json::json!("vs_0")),
                    ],
                    headers: headers.clone(),
                    body: body.clone(),
                    sealed: Default::default(),
                };
                let shown = to_wit_request(&original, with_body);
                assert!(request_unchanged(&shown.clone(), &shown, &original));
                let rebuilt = from_wit_request(shown.clone(), original.clone(), with_body);
                assert_eq!(
                    rebuilt.unwrap(),
                    original,
                    "{body:?}, body shown: {with_body}"
                );
                let mut changed = shown.clone();
                changed.headers[1].1 = "9".into();
                assert!(!request_unchanged(&changed, &shown, &original));
                let mut authorized = original.clone();
                let (name, value) = header("authorization", "Bearer x");
                authorized.headers.insert(name, value);
                let shown = to_wit_request(&authorized, with_body);
                assert!(!request_unchanged(&shown.clone(), &shown, &authorized));
            }
        }
        for with_body in [false, true] {
            let original = UpstreamResponse {
                status: StatusCode::OK,
                headers: headers.clone(),
                body: Bytes::from_static(b"{\"id\":\"vs_1\"}"),
                from_plugins: HeaderMap::new(),
            };
            let shown = to_wit_response(&original, with_body);
            assert!(response_unchanged(&shown.clone(), &shown, &original));
            let kept = (!with_body).then(|| original.body.clone());
            let rebuilt = from_wit_response(shown.clone(), kept, Some(&original)).unwrap();
            assert_eq!(rebuilt.status, original.status);
            assert_eq!(rebuilt.headers, original.headers);
            assert_eq!(rebuilt.body, original.body);
            assert!(rebuilt.from_plugins.is_empty());
            let mut changed = shown.clone();
            changed.status = 201;
            assert!(!response_unchanged(&changed, &shown, &original));
            // Headers an earlier plugin added are rebuilt, to keep their record.
            let mut added = original.clone();
            let (name, value) = header("x-a", "1");
            added.from_plugins.append(name, value);
            let shown = to_wit_response(&added, with_body);
            assert!(!response_unchanged(&shown.clone(), &shown, &added));
        }
    }

    /// A value refilled from what an earlier call was shown is what building it afresh gives,
    /// whatever the earlier one held (more or fewer headers, query pairs, a body or none).
    #[test]
    fn a_refilled_value_is_the_one_built_afresh() {
        let header = |n: &'static str, v: &'static str| {
            (HeaderName::from_static(n), HeaderValue::from_static(v))
        };
        let many = HeaderMap::from_iter([
            header("stripe-version", "2024-06-20"),
            header("x-a", "1"),
            header("authorization", "Bearer secret"),
            header("x-a", "2"),
        ]);
        let requests = [
            UpstreamRequest {
                method: Method::POST,
                path: "/v1/identity/verification_sessions".into(),
                query: vec![
                    ("expand".into(), serde_json::json!(["a"])),
                    ("limit".into(), serde_json::json!(3)),
                ],
                headers: many.clone(),
                body: Some(Payload::Form(serde_json::json!({"type": "document"}))),
                sealed: Default::default(),
            },
            UpstreamRequest {
                method: Method::GET,
                path: "/v1/x".into(),
                query: vec![],
                headers: HeaderMap::new(),
                body: None,
                sealed: Default::default(),
            },
            UpstreamRequest {
                method: Method::DELETE,
                path: "/v1/identity/verification_sessions/vs_1".into(),
                query: vec![("a".into(), serde_json::json!("b"))],
                headers: HeaderMap::from_iter([header("x-b", "3")]),
                body: Some(Payload::Raw {
                    bytes: Bytes::from_static(b"raw"),
                    content_type: "text/plain".into(),
                }),
                sealed: Default::default(),
            },
        ];
        for with_body in [true, false] {
            let mut kept = to_wit_request(&requests[0], true);
            for request in requests.iter().chain(requests.iter().rev()) {
                refill_request(&mut kept, request, with_body);
                assert_eq!(kept, to_wit_request(request, with_body));
            }
        }
        // A value that is not UTF-8 is shown as its lossy text.
        let latin = HeaderValue::from_bytes(b"caf\xc3\xa9 \xff").unwrap();
        let odd = HeaderMap::from_iter([(HeaderName::from_static("x-c"), latin)]);
        let responses = [many, HeaderMap::new(), odd].map(|headers| UpstreamResponse {
            status: StatusCode::OK,
            headers,
            body: Bytes::from_static(b"{}"),
            from_plugins: HeaderMap::new(),
        });
        for with_body in [true, false] {
            let mut kept = to_wit_response(&responses[0], true);
            for response in responses.iter().chain(responses.iter().rev()) {
                refill_response(&mut kept, response, with_body);
                assert_eq!(kept, to_wit_response(response, with_body));
            }
        }
        let transform = TransformRef {
            plugin: "p.wasm".into(),
            config: "{\"a\":1}".into(),
            on_error: Default::default(),
            timeout: std::time::Duration::from_millis(10),
            memory: 1 << 20,
            reuse: true,
        };
        let context = CallContext {
            capability: "identity-sessions",
            operation: "identity-sessions.list",
            request_id: "req_1".into(),
        };
        let mut kept = wit_context(&transform, &context);
        let other = CallContext {
            capability: "c",
            operation: "identity-sessions.list",
            request_id: "req_200000".into(),
        };
        refill_context(&mut kept, &transform, &other);
        assert_eq!(kept, wit_context(&transform, &other));
    }

    #[test]
    fn plugin_results_are_validated() {
        let original = UpstreamRequest {
            method: Method::POST,
            path: "/v1/x".into(),
            query: vec![],
            headers: HeaderMap::new(),
            body: Some(Payload::Structured(serde_json::json!({"a": 1}))),
            sealed: Default::default(),
        };
        let garbage = Request {
            method: "NOT A METHOD".into(),
            path: "/v1/x".into(),
            query: vec![],
            headers: vec![],
            body: None,
        };
        assert!(matches!(
            from_wit_request(garbage, original.clone(), true),
            Err(Failure::Malformed(_))
        ));
        for path in [
            "/v1/x/../../admin",
            "/v1/x/%2e%2e/admin",
            "/v1/x/%2E./admin",
            "/v1/x/..",
            "/v1/x\\..\\admin",
            "/v1/x?y=..",
            "v1/x",
        ] {
            let climbing = Request {
                method: "GET".into(),
                path: path.into(),
                query: vec![],
                headers: vec![],
                body: None,
            };
            assert!(
                matches!(
                    from_wit_request(climbing, original.clone(), true),
                    Err(Failure::Malformed(_))
                ),
                "{path}"
            );
        }
        assert!(stays_on_its_path("/v1/sessions/vs_1%2F..%2Fx"));
        let too_many = Request {
            method: "GET".into(),
            path: "/v1/x".into(),
            query: vec![],
            headers: (0..=MAX_HEADERS)
                .map(|i| (format!("x-{i}"), "1".into()))
                .collect(),
            body: None,
        };
        assert!(matches!(
            from_wit_request(too_many, original.clone(), true),
            Err(Failure::Malformed(_))
        ));
        let fine = Request {
            method: "POST".into(),
            path: "/v1/y".into(),
            query: vec![("expand".into(), "[\"a\"]".into())],
            headers: vec![("x-a".into(), "1".into())],
            body: Some(b"{\"b\":2}".to_vec()),
        };
        let request = from_wit_request(fine, original, true).unwrap();
        assert_eq!(
            request.query,
            vec![("expand".to_owned(), serde_json::json!(["a"]))]
        );
        assert_eq!(
            request.body,
            Some(Payload::Structured(serde_json::json!({"b": 2})))
        );
        assert!(
            refusal(PluginError {
                status: 200,
                code: "x".into(),
                message: "y".into()
            })
            .is_err()
        );
    }
}
