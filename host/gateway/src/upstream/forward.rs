//! The upstream request of a forward route: the caller's request passed on, its path checked
//! segment by segment so it can never climb out of the adapter's base URI.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Method};

use capgate_model::exchange::{Payload, Sealed, UpstreamRequest};
use capgate_model::snapshot::{Location, UpstreamAdapter};
use capgate_model::template::{BindScope, Ref};

use super::prepare::SEGMENT;
use crate::error::GatewayError;

/// The request of a forward route: the rest of the caller's path (each segment checked and
/// re-encoded, so it can never climb out of the base URI), its query string as it is, the
/// trusted headers and the body (never on GET or HEAD).
pub fn forward_request(
    method: &Method,
    rest: &str,
    raw_query: Option<&str>,
    caller_headers: &HeaderMap,
    trusted: &[HeaderName],
    body: Bytes,
) -> Result<UpstreamRequest, GatewayError> {
    let mut path = String::new();
    for segment in rest.split('/') {
        let decoded = percent_encoding::percent_decode_str(segment).decode_utf8_lossy();
        if decoded == "." || decoded == ".." || decoded.contains('/') || decoded.contains('\\') {
            return Err(GatewayError::bad_request(
                "parameter_invalid",
                format!("invalid path segment {segment:?} in a forwarded path"),
                None,
            ));
        }
        path.push('/');
        path.extend(percent_encoding::utf8_percent_encode(&decoded, SEGMENT));
    }
    if let Some(query) = raw_query.filter(|q| !q.is_empty()) {
        path.push('?');
        path.push_str(query);
    }
    let mut headers = HeaderMap::new();
    for name in trusted {
        for value in caller_headers.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    let content_type = caller_headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let sends_body = !matches!(*method, Method::GET | Method::HEAD);
    let body = (sends_body && !body.is_empty()).then_some(Payload::Raw {
        bytes: body,
        content_type,
    });
    Ok(UpstreamRequest {
        method: method.clone(),
        path,
        query: Vec::new(),
        headers,
        body,
        sealed: Sealed::default(),
    })
}

/// Adds the adapter's own header and query values (adapter-level `inputParameters` with a
/// `value`) to a forwarded request, as every operation of the adapter sends them; a value read
/// from bound variables is sealed (transforms never see it).
pub fn with_fixed(adapter: &UpstreamAdapter, request: &mut UpstreamRequest) {
    let scope = BindScope(&adapter.binds);
    for param in &adapter.fixed {
        let Some(template) = &param.value else {
            continue;
        };
        let Some(value) = template.render(&scope) else {
            continue;
        };
        let secret = template.refs().iter().any(|r| matches!(r, Ref::Bind(_)));
        match param.location {
            Location::Header => {
                let text = capgate_model::template::value_text(&value);
                let (Ok(name), Ok(mut value)) = (
                    HeaderName::try_from(param.name.as_str()),
                    http::HeaderValue::try_from(text),
                ) else {
                    continue;
                };
                let headers = if secret {
                    value.set_sensitive(true);
                    &mut request.sealed.headers
                } else {
                    &mut request.headers
                };
                headers.insert(name, value);
            }
            Location::Query if secret => request.sealed.query.push((param.name.clone(), value)),
            Location::Query => request.query.push((param.name.clone(), value)),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_paths_cannot_climb() {
        let headers = HeaderMap::new();
        for bad in ["a/../b", "%2e%2e/x", "a/%2E", "a%2Fb"] {
            assert!(
                forward_request(&Method::GET, bad, None, &headers, &[], Bytes::new()).is_err(),
                "{bad}"
            );
        }
        let req = forward_request(
            &Method::GET,
            "a/b%20c",
            Some("x=1"),
            &headers,
            &[],
            Bytes::new(),
        )
        .unwrap();
        assert_eq!(req.path, "/a/b%20c?x=1");
        // A body goes on with POST and DELETE, never with GET or HEAD.
        let body = || Bytes::from_static(b"a=1");
        for (method, sent) in [
            (Method::POST, true),
            (Method::DELETE, true),
            (Method::GET, false),
            (Method::HEAD, false),
        ] {
            let req = forward_request(&method, "a", None, &headers, &[], body()).unwrap();
            assert_eq!(req.body.is_some(), sent, "{method}");
        }
    }
}
