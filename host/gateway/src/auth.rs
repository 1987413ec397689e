//! Authentication of callers on exposed adapters (`authentication` under `exposes`).
//!
//! An adapter that declares authentication is never served open: requests must carry the
//! declared bearer token, API key or basic credentials, compared in constant time with the bound
//! value, then stripped. What an adapter declares is compiled into `snapshot::CallerAuth`; this
//! module checks requests against it. This and `upstream` are the only modules of the gateway
//! that read secret values.

use base64::Engine as _;
use http::HeaderMap;

use capgate_model::snapshot::{Auth as Scheme, CallerAuth};
use capgate_model::template::{BindScope, Template};

use crate::error::GatewayError;

/// Checks a request's credentials.
pub fn check(
    auth: &CallerAuth,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<(), GatewayError> {
    if !auth.missing.is_empty() {
        return Err(GatewayError::NotConfigured {
            message: format!(
                "caller authentication is not configured: bound variable {} has no value",
                auth.missing.join(", ")
            ),
        });
    }
    let scope = BindScope(&auth.binds);
    let expected = |t: &Template| {
        t.render_text(&scope)
            .map(|c| c.into_owned())
            .unwrap_or_default()
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let ok = match &auth.scheme {
        Scheme::Bearer(token) => header("authorization")
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .is_some_and(|given| {
                constant_time_eq(given.trim().as_bytes(), expected(token).as_bytes())
            }),
        Scheme::ApiKeyHeader { name, value } => header(name.as_str())
            .is_some_and(|given| constant_time_eq(given.as_bytes(), expected(value).as_bytes())),
        Scheme::ApiKeyQuery { name, value } => query
            .map(|q| form_urlencoded::parse(q.as_bytes()))
            .and_then(|mut pairs| pairs.find(|(k, _)| k == name))
            .is_some_and(|(_, given)| {
                constant_time_eq(given.as_bytes(), expected(value).as_bytes())
            }),
        Scheme::Basic { username, password } => header("authorization")
            .and_then(|v| {
                v.strip_prefix("Basic ")
                    .or_else(|| v.strip_prefix("basic "))
            })
            .and_then(|encoded| {
                base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .ok()
            })
            .is_some_and(|decoded| {
                let wanted = format!("{}:{}", expected(username), expected(password));
                constant_time_eq(&decoded, wanted.as_bytes())
            }),
    };
    if ok {
        Ok(())
    } else {
        Err(GatewayError::Unauthorized {
            scheme: auth.scheme.scheme_name(),
        })
    }
}

/// Removes the caller's credentials from a request that passed [`check`], so
/// nothing downstream (inputs, `forward`ed headers and query, logs) ever sees them: the
/// header the scheme reads, or the query parameter, and returns the query without it.
pub fn strip(auth: &CallerAuth, headers: &mut HeaderMap, query: Option<&str>) -> Option<String> {
    match &auth.scheme {
        Scheme::Bearer(_) | Scheme::Basic { .. } => {
            headers.remove(http::header::AUTHORIZATION);
        }
        Scheme::ApiKeyHeader { name, .. } => {
            headers.remove(name);
        }
        Scheme::ApiKeyQuery { name, .. } => {
            // Only the credential's pairs go: the others keep their exact encoding.
            let kept: Vec<&str> = query?
                .split('&')
                .filter(|pair| {
                    let key = pair.split('=').next().unwrap_or_default();
                    form_urlencoded::parse(key.as_bytes())
                        .next()
                        .is_none_or(|(key, _)| key != name.as_str())
                })
                .collect();
            return (!kept.is_empty()).then(|| kept.join("&"));
        }
    }
    query.map(str::to_owned)
}

/// Compares without an early exit, so the time taken tells neither how much matched nor how
/// long the expected value is: both sides are hashed to the same length first.
fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    if expected.is_empty() {
        return false;
    }
    let (a, b) = (Sha256::digest(given), Sha256::digest(expected));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use capgate_model::secret::Secret;
    use capgate_model::template::{Placeholder, Ref};

    fn auth(scheme: Scheme, token: Option<&str>) -> CallerAuth {
        let mut binds = BTreeMap::new();
        binds.insert("TOKEN".to_owned(), token.map(Secret::new));
        CallerAuth {
            scheme,
            binds: Arc::new(binds),
            missing: if token.is_some() {
                vec![]
            } else {
                vec!["TOKEN".into()]
            },
        }
    }

    fn bind(_: &Placeholder) -> Ref {
        Ref::Bind("TOKEN".into())
    }

    #[test]
    fn bearer_and_basic() {
        let a = auth(
            Scheme::Bearer(Template::compile("{{TOKEN}}", bind)),
            Some("s3cret"),
        );
        let mut headers = HeaderMap::new();
        assert!(matches!(
            check(&a, &headers, None),
            Err(GatewayError::Unauthorized { .. })
        ));
        headers.insert("authorization", "Bearer s3cret".parse().unwrap());
        assert!(check(&a, &headers, None).is_ok());
        headers.insert("authorization", "Bearer s3cre".parse().unwrap());
        assert!(check(&a, &headers, None).is_err());
        let b = auth(
            Scheme::Basic {
                username: Template::literal("u"),
                password: Template::compile("{{TOKEN}}", bind),
            },
            Some("pw"),
        );
        let encoded = base64::engine::general_purpose::STANDARD.encode("u:pw");
        headers.insert("authorization", format!("Basic {encoded}").parse().unwrap());
        assert!(check(&b, &headers, None).is_ok());
    }

    #[test]
    fn credentials_are_stripped_after_the_check() {
        let key = auth(
            Scheme::ApiKeyQuery {
                name: "api_key".into(),
                value: Template::compile("{{TOKEN}}", bind),
            },
            Some("k 1"),
        );
        let mut headers = HeaderMap::new();
        let query = "limit=2&api_key=k+1&expand%5B%5D=a&api%5Fkey=k%201";
        assert!(check(&key, &headers, Some(query)).is_ok());
        assert_eq!(
            strip(&key, &mut headers, Some(query)).as_deref(),
            Some("limit=2&expand%5B%5D=a"),
            "every spelling of the parameter goes, the rest keeps its encoding"
        );
        assert_eq!(strip(&key, &mut headers, Some("api_key=k+1")), None);

        let bearer = auth(
            Scheme::Bearer(Template::compile("{{TOKEN}}", bind)),
            Some("t"),
        );
        headers.insert("authorization", "Bearer t".parse().unwrap());
        headers.insert("stripe-version", "v".parse().unwrap());
        assert_eq!(
            strip(&bearer, &mut headers, Some("a=1")).as_deref(),
            Some("a=1")
        );
        assert!(!headers.contains_key("authorization"));
        assert!(headers.contains_key("stripe-version"));
    }

    #[test]
    fn missing_secret_is_not_configured() {
        let a = auth(Scheme::Bearer(Template::compile("{{TOKEN}}", bind)), None);
        let err = check(&a, &HeaderMap::new(), None).unwrap_err();
        assert_eq!(err.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert!(err.to_string().contains("TOKEN"));
    }
}
