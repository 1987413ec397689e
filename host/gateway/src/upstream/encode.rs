//! Encoding a prepared request for the wire, by the upstream's profile (`stripe`: form bodies
//! and indexed query arrays; `default`: JSON), with its sealed values joined in and the
//! adapter's credentials added. This is where secret values are read, after transforms ran.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use serde_json::Value;

use capgate_model::config::ProfileName;
use capgate_model::exchange::{Payload, UpstreamRequest};
use capgate_model::form::{self, ArrayStyle};
use capgate_model::secret::Secret;
use capgate_model::snapshot::{Auth, UpstreamAdapter};
use capgate_model::template::Scope;

use crate::error::GatewayError;

/// A request ready for the wire; secret values are in here and nowhere else.
pub(super) struct Encoded {
    pub(super) method: Method,
    pub(super) url: url::Url,
    pub(super) headers: HeaderMap,
    pub(super) body: Option<Bytes>,
    pub(super) basic: Option<(String, String)>,
}

pub(super) fn encode(
    adapter: &UpstreamAdapter,
    request: &UpstreamRequest,
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
    let with_sealed_fields = |value: &Value| -> Option<Value> {
        let Value::Object(object) = value else {
            return None;
        };
        let mut object = object.clone();
        object.extend(sealed.body.iter().map(|(k, v)| (k.clone(), v.clone())));
        Some(Value::Object(object))
    };
    let merged = if sealed.body.is_empty() {
        None
    } else {
        match &request.body {
            None if !matches!(request.method, Method::GET | Method::DELETE | Method::HEAD) => {
                Some(Payload::Structured(Value::Object(sealed.body.clone())))
            }
            Some(Payload::Structured(value)) => with_sealed_fields(value).map(Payload::Structured),
            _ => None,
        }
    };
    let request_body = merged.as_ref().or(request.body.as_ref());
    let mut basic = None;
    let scope = BindScope(&adapter.binds);
    match &adapter.auth {
        None => {}
        Some(Auth::Bearer(token)) => {
            let token = token.render_text(&scope).unwrap_or_default();
            let mut value = HeaderValue::try_from(format!("Bearer {token}"))
                .map_err(|_| misconfigured(adapter))?;
            value.set_sensitive(true);
            headers.insert(http::header::AUTHORIZATION, value);
        }
        Some(Auth::ApiKeyHeader { name, value }) => {
            let text = value.render_text(&scope).unwrap_or_default();
            let mut value =
                HeaderValue::try_from(text.as_ref()).map_err(|_| misconfigured(adapter))?;
            value.set_sensitive(true);
            headers.insert(name.clone(), value);
        }
        Some(Auth::ApiKeyQuery { name, value }) => {
            let text = value.render_text(&scope).unwrap_or_default();
            form::append_pair(&mut query, name, &Value::String(text.into_owned()), style);
        }
        Some(Auth::Basic { username, password }) => {
            basic = Some((
                username
                    .render_text(&scope)
                    .unwrap_or_default()
                    .into_owned(),
                password
                    .render_text(&scope)
                    .unwrap_or_default()
                    .into_owned(),
            ));
        }
    }
    let body = match request_body {
        None => None,
        Some(Payload::Structured(value)) => match adapter.profile {
            ProfileName::Stripe => Some(form_body(value, &mut headers)?),
            ProfileName::Default => {
                set_content_type(&mut headers, "application/json");
                Some(Bytes::from(
                    serde_json::to_vec(value).expect("JSON values serialize"),
                ))
            }
        },
        Some(Payload::Form(value)) => Some(form_body(value, &mut headers)?),
        Some(Payload::Raw {
            bytes,
            content_type,
        }) => {
            set_content_type(&mut headers, content_type);
            Some(bytes.clone())
        }
    };
    let url = request_url(
        &adapter.base_uri,
        adapter.base_url.as_ref(),
        &request.path,
        &query,
    )
    .map_err(|e| GatewayError::UpstreamInvalid {
        upstream: adapter.namespace.clone(),
        detail: format!("cannot build the upstream URL: {e}"),
    })?;
    Ok(Encoded {
        method: request.method.clone(),
        url,
        headers,
        body,
        basic,
    })
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

struct BindScope<'a>(&'a std::collections::BTreeMap<String, Option<Secret>>);

impl Scope for BindScope<'_> {
    fn input(&self, _: &str) -> Option<&Value> {
        None
    }

    fn bound(&self, variable: &str) -> Option<&str> {
        self.0.get(variable)?.as_ref().map(Secret::expose)
    }
}

/// The URL of an upstream request: `base_uri` + `path` + `?query`. With the base already
/// parsed (`plain_base`), only the path and query are parsed, not the scheme and host again.
pub(super) fn request_url(
    base_uri: &str,
    base: Option<&url::Url>,
    path: &str,
    query: &str,
) -> Result<url::Url, url::ParseError> {
    match base {
        Some(base) if !path.contains(['?', '#']) => {
            let mut url = base.clone();
            let mut full = String::with_capacity(base.path().len() + path.len());
            full.push_str(base.path().trim_end_matches('/'));
            full.push_str(path);
            url.set_path(&full);
            if !query.is_empty() {
                url.set_query(Some(query));
            }
            Ok(url)
        }
        _ => {
            let mut url = format!("{base_uri}{path}");
            if !query.is_empty() {
                url.push(if url.contains('?') { '&' } else { '?' });
                url.push_str(query);
            }
            url::Url::parse(&url)
        }
    }
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
            ] {
                for query in ["", "expand[0]=verified_outputs&created[gte]=1", "a=%20b c"] {
                    let fast = request_url(base, Some(&parsed), path, query).unwrap();
                    let whole = request_url(base, None, path, query).unwrap();
                    assert_eq!(fast.as_str(), whole.as_str(), "{base} {path} {query}");
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
