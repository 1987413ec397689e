//! Encoding a prepared request for the wire, by the upstream's profile (`stripe`: form bodies
//! and indexed query arrays; `default`: JSON), with its sealed values joined in and the
//! adapter's credentials added. This is where secret values are read, after transforms ran.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use serde_json::Value;

use capgate_model::config::ProfileName;
use capgate_model::exchange::{Payload, UpstreamRequest};
use capgate_model::form::{self, ArrayStyle};
use capgate_model::snapshot::{Credentials, UpstreamAdapter};

use crate::error::GatewayError;

/// A request ready for the wire; secret values are in here and nowhere else.
pub(super) struct Encoded {
    pub(super) method: Method,
    /// Absolute (scheme, authority, path and query), and a valid `http::Uri`.
    pub(super) url: String,
    /// Where `url`'s path begins: `url[path_at..]` is an HTTP/1.1 request target.
    pub(super) path_at: usize,
    pub(super) headers: HeaderMap,
    pub(super) body: Option<Bytes>,
    /// `Authorization: Basic ...` (sensitive), for an adapter with basic credentials.
    pub(super) basic: Option<HeaderValue>,
}

/// Encodes `request` for `adapter`; a URL longer than `max_url_bytes` (no server takes it) is
/// the caller's to shorten, refused before any attempt.
pub(super) fn encode(
    adapter: &UpstreamAdapter,
    request: &UpstreamRequest,
    max_url_bytes: usize,
) -> Result<Encoded, GatewayError> {
    let style = match adapter.profile {
        ProfileName::Stripe => ArrayStyle::Indexed,
        ProfileName::Default => ArrayStyle::Repeated,
    };
    let sealed = &request.sealed;
    let mut query = String::new();
    for (name, value) in request.query.iter().chain(&sealed.query) {
        form::append_pair(&mut query, name, value, style);
    }
    let mut headers = request.headers.clone();
    for (name, value) in &sealed.headers {
        let mut value = value.clone();
        value.set_sensitive(true);
        headers.append(name.clone(), value);
    }
    let merged = with_sealed_body(request);
    let request_body = merged.as_ref().or(request.body.as_ref());
    let basic = add_credentials(adapter, &mut headers, &mut query, style)?;
    let body = match request_body {
        None => None,
        Some(payload) => Some(body_bytes(adapter.profile, payload, &mut headers)?),
    };
    let (url, checked) = request_url(
        &adapter.base_uri,
        adapter.base_url.as_ref(),
        &request.path,
        &query,
    )
    .map_err(|e| GatewayError::UpstreamInvalid {
        upstream: adapter.namespace.clone(),
        detail: format!("cannot build the upstream URL: {e}"),
    })?;
    let length = url.len();
    if length > max_url_bytes {
        return Err(GatewayError::UriTooLong {
            length,
            limit: max_url_bytes,
        });
    }
    let (url, path_at) = match checked {
        Some(path_at) => (url, path_at),
        None => wire_url(&url).map_err(|e| GatewayError::UpstreamInvalid {
            upstream: adapter.namespace.clone(),
            detail: format!("cannot build the upstream URL: {e}"),
        })?,
    };
    Ok(Encoded {
        method: request.method.clone(),
        url,
        path_at,
        headers,
        body,
        basic,
    })
}

impl Encoded {
    /// The HTTP/1.1 request target: the path and query.
    pub(super) fn target(&self) -> &str {
        &self.url[self.path_at..]
    }
}

/// `url` parsed as `http::Uri` (absolute) and written back as it will be sent, with where its
/// path begins.
fn wire_url(url: &str) -> Result<(String, usize), String> {
    let uri = http::Uri::try_from(url).map_err(|e| e.to_string())?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(format!("`{url}` is not an absolute URL"));
    };
    let target = uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| !p.is_empty())
        .unwrap_or("/");
    let mut wire = format!("{scheme}://{authority}");
    let path_at = wire.len();
    if !target.starts_with('/') {
        wire.push('/');
    }
    wire.push_str(target);
    Ok((wire, path_at))
}

/// The body with the sealed body fields joined in (they win over a transform's field of the
/// same name); `None` when there are none, or the body is not an object to join them to.
fn with_sealed_body(request: &UpstreamRequest) -> Option<Payload> {
    let sealed = &request.sealed.body;
    if sealed.is_empty() {
        return None;
    }
    match &request.body {
        None if !matches!(request.method, Method::GET | Method::DELETE | Method::HEAD) => {
            Some(Payload::Structured(Value::Object(sealed.clone())))
        }
        Some(Payload::Structured(Value::Object(object))) => {
            let mut object = object.clone();
            object.extend(sealed.iter().map(|(k, v)| (k.clone(), v.clone())));
            Some(Payload::Structured(Value::Object(object)))
        }
        _ => None,
    }
}

/// Adds the adapter's credentials (rendered when the snapshot was built): a header or a query
/// parameter, or basic credentials (returned, for the client to set).
fn add_credentials(
    adapter: &UpstreamAdapter,
    headers: &mut HeaderMap,
    query: &mut String,
    style: ArrayStyle,
) -> Result<Option<HeaderValue>, GatewayError> {
    match &adapter.credentials {
        Credentials::None => {}
        Credentials::Header(name, value) => {
            headers.insert(name.clone(), value.clone());
        }
        Credentials::Query { name, value } => {
            let value = Value::String(value.expose().to_owned());
            form::append_pair(query, name, &value, style);
        }
        Credentials::Basic(value) => return Ok(Some(value.clone())),
        Credentials::Invalid => return Err(misconfigured(adapter)),
    }
    Ok(None)
}

/// A body's bytes by the profile (structured bodies: form for Stripe, JSON otherwise), with its
/// content type unless a header already set one.
fn body_bytes(
    profile: ProfileName,
    payload: &Payload,
    headers: &mut HeaderMap,
) -> Result<Bytes, GatewayError> {
    match payload {
        Payload::Structured(value) => match profile {
            ProfileName::Stripe => form_body(value, headers),
            ProfileName::Default => {
                set_content_type(headers, "application/json");
                Ok(Bytes::from(
                    serde_json::to_vec(value).expect("JSON values serialize"),
                ))
            }
        },
        Payload::Form(value) => form_body(value, headers),
        Payload::Raw {
            bytes,
            content_type,
        } => {
            set_content_type(headers, content_type);
            Ok(bytes.clone())
        }
    }
}

fn form_body(value: &Value, headers: &mut HeaderMap) -> Result<Bytes, GatewayError> {
    let Value::Object(object) = value else {
        return Err(GatewayError::bad_request(
            "parameter_invalid",
            "the request body must be an object of parameters",
            Some("body"),
        ));
    };
    set_content_type(headers, "application/x-www-form-urlencoded");
    Ok(Bytes::from(form::encode(object)))
}

fn set_content_type(headers: &mut HeaderMap, content_type: &str) {
    if !headers.contains_key(http::header::CONTENT_TYPE)
        && let Ok(value) = HeaderValue::try_from(content_type)
    {
        headers.insert(http::header::CONTENT_TYPE, value);
    }
}

fn misconfigured(adapter: &UpstreamAdapter) -> GatewayError {
    GatewayError::NotConfigured {
        message: format!(
            "the credentials of upstream {} are not a valid header value",
            adapter.namespace
        ),
    }
}

/// The URL of an upstream request: `base_uri` + `path` + `?query`, as `url` serializes it,
/// and where its path begins when that is known to be a valid `http::Uri` already.
///
/// With the base already parsed (a plain base, whose origin is a valid `http::Uri`), a path
/// and query that `url` would keep as they are (no dot segments, nothing it percent-encodes,
/// so nothing `http::Uri` refuses) are joined as text, and nothing is parsed; anything else is
/// parsed whole.
pub(super) fn request_url(
    base_uri: &str,
    base: Option<&url::Url>,
    path: &str,
    query: &str,
) -> Result<(String, Option<usize>), url::ParseError> {
    match base {
        Some(base) if kept_path(path) && kept_query(query) => {
            let origin = &base[..url::Position::BeforePath];
            let prefix = base.path().trim_end_matches('/');
            let mut url =
                String::with_capacity(origin.len() + prefix.len() + path.len() + query.len() + 1);
            url.push_str(origin);
            url.push_str(prefix);
            url.push_str(path);
            if !query.is_empty() {
                url.push('?');
                url.push_str(query);
            }
            Ok((url, Some(origin.len())))
        }
        Some(base) if !path.contains(['?', '#']) => {
            let mut url = base.clone();
            let mut full = String::with_capacity(base.path().len() + path.len());
            full.push_str(base.path().trim_end_matches('/'));
            full.push_str(path);
            url.set_path(&full);
            if !query.is_empty() {
                url.set_query(Some(query));
            }
            Ok((url.into(), None))
        }
        _ => {
            let mut url = format!("{base_uri}{path}");
            if !query.is_empty() {
                url.push(if url.contains('?') { '&' } else { '?' });
                url.push_str(query);
            }
            url::Url::parse(&url).map(|url| (String::from(url), None))
        }
    }
}

/// Whether `url` keeps `path` exactly as it is: it starts with `/`, holds only unreserved
/// characters, sub-delimiters, `:`, `@`, `/` and well-formed `%XX` escapes (none of them a
/// dot), and has no `.` or `..` segment.
fn kept_path(path: &str) -> bool {
    path.starts_with('/') && well_escaped(path, b"-._~!$&'()*+,;=:@/") && !has_dot_segment(path)
}

/// Whether `path` has a `.` or `..` segment (one pass over its bytes, no split).
fn has_dot_segment(path: &str) -> bool {
    let bytes = path.as_bytes();
    bytes.iter().enumerate().any(|(i, &b)| {
        b == b'.'
            && (i == 0 || bytes[i - 1] == b'/')
            && matches!(&bytes[i + 1..], [] | [b'/', ..] | [b'.'] | [b'.', b'/', ..])
    })
}

/// Whether `url` keeps `query` exactly as it is (for the schemes with a default port, which
/// percent-encode `'` in a query: it is not kept).
fn kept_query(query: &str) -> bool {
    well_escaped(query, b"-._~!$&()*+,;=:@/?[]")
}

/// Whether `text` holds only ASCII alphanumerics, `others`, and `%XX` escapes that decode to
/// anything but a dot (which `url` would read as part of a dot segment).
fn well_escaped(text: &str, others: &[u8]) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            match (bytes.get(i + 1), bytes.get(i + 2)) {
                (Some(h), Some(l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                    if *h == b'2' && l.eq_ignore_ascii_case(&b'e') {
                        return false;
                    }
                    i += 3;
                    continue;
                }
                _ => return false,
            }
        }
        if !(b.is_ascii_alphanumeric() || others.contains(&b)) {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use capgate_model::snapshot::plain_base;

    #[test]
    fn request_urls_built_from_a_parsed_base_are_the_urls_parsed_whole() {
        for base in [
            "http://127.0.0.1:12111",
            "https://api.stripe.com",
            "https://h.example/base",
            "https://H.Example:443/b%20ase",
            "http://[::1]:8080/v",
        ] {
            let parsed = plain_base(base).expect("a plain base");
            for path in [
                "/v1/identity/verification_sessions/vs_1",
                "/v1/identity/verification_sessions/vs_1%2F..%2Fx",
                "/v1/x/%2e%2e/y",
                "/v1/../../charges",
                "/a b/ü/%7E",
                "",
                "/",
                "/v1/.hidden/a..b/...",
                "/v1/./x",
                "/v1/x/.",
                "/v1/x/..",
                "/..",
                "/v1//./x",
                "/v1/x./.y/z.",
                "/v1/%2E%2e/x",
                "/v1/%41%zz",
                "/v1/a;b=c/@x:y/!$&'()*+,",
                "/v1/[x]|^`{}\\\"<>",
            ] {
                for query in [
                    "",
                    "expand[0]=verified_outputs&created[gte]=1",
                    "a=%20b c",
                    "q='x'&r=%27",
                    "a=b?c/d:e@f!$()*+,;",
                    "a=%zz",
                    "a=`{}|^\"<>",
                ] {
                    let (fast, checked) = request_url(base, Some(&parsed), path, query).unwrap();
                    let (whole, _) = request_url(base, None, path, query).unwrap();
                    assert_eq!(fast, whole, "{base} {path} {query}");
                    // What is sent unparsed is what `http::Uri` reads, to the byte.
                    if let Some(at) = checked {
                        let (wire, path_at) = wire_url(&fast).unwrap();
                        assert_eq!((&fast, at), (&wire, path_at), "{base} {path} {query}");
                    }
                }
            }
        }
        for not_plain in [
            "https://h.example/?key=1",
            "https://h.example/#f",
            "mailto:a@b",
            "{{env.BASE}}",
        ] {
            assert!(plain_base(not_plain).is_none(), "{not_plain}");
        }
    }
}
