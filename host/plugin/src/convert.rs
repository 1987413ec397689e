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

pub(crate) fn wit_context(transform: &TransformRef, context: &CallContext) -> Context {
    Context {
        capability: context.capability.clone(),
        operation: context.operation.clone(),
        request_id: context.request_id.to_string(),
        config: transform.config.to_string(),
    }
}

fn headers_to_wit(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| *name != http::header::AUTHORIZATION)
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect()
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
    // A body rendered from bound variables is never shown (and so never changed).
    let with_body = with_body && !request.sealed.hides_body;
    let body = if with_body {
        request.body.as_ref().map(|payload| match payload {
            Payload::Structured(value) | Payload::Form(value) => {
                serde_json::to_vec(value).expect("JSON values serialize")
            }
            Payload::Raw { bytes, .. } => bytes.to_vec(),
        })
    } else {
        None
    };
    Request {
        method: request.method.as_str().to_owned(),
        path: request.path.clone(),
        query: request
            .query
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect(),
        headers: headers_to_wit(&request.headers),
        body,
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
    Response {
        status: response.status.as_u16(),
        headers: headers_to_wit(&response.headers),
        body: with_body.then(|| response.body.to_vec()),
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
