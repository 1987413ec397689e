//! Authentication of callers on exposed adapters (`authentication` under `exposes`).
//!
//! An adapter that declares authentication is never served open: requests must carry the
//! declared bearer token, API key or basic credentials, compared in constant time with the bound
//! value. This and `upstream` are the only modules that read secret values.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use http::{HeaderMap, HeaderName};

use crate::error::GatewayError;
use crate::secret::Secret;
use crate::template::{Scope, Template};

/// How callers of one exposed adapter prove who they are.
#[derive(Debug)]
pub struct CallerAuth {
    pub scheme: Scheme,
    pub binds: Arc<BTreeMap<String, Option<Secret>>>,
    /// Bound variables the credentials need that have no value: every request gets 503.
    pub missing: Vec<String>,
}

#[derive(Debug)]
pub enum Scheme {
    Bearer(Template),
    ApiKeyHeader {
        name: HeaderName,
        value: Template,
    },
    ApiKeyQuery {
        name: String,
        value: Template,
    },
    Basic {
        username: Template,
        password: Template,
    },
}

impl Scheme {
    fn name(&self) -> &'static str {
        match self {
            Scheme::Bearer(_) => "Bearer",
            Scheme::Basic { .. } => "Basic",
            Scheme::ApiKeyHeader { .. } | Scheme::ApiKeyQuery { .. } => "ApiKey",
        }
    }
}

struct Binds<'a>(&'a BTreeMap<String, Option<Secret>>);

impl Scope for Binds<'_> {
    fn input(&self, _: &str) -> Option<&serde_json::Value> {
        None
    }

    fn bound(&self, variable: &str) -> Option<&str> {
        self.0.get(variable)?.as_ref().map(Secret::expose)
    }
}

impl CallerAuth {
    /// Checks a request's credentials.
    pub fn check(&self, headers: &HeaderMap, query: Option<&str>) -> Result<(), GatewayError> {
        if !self.missing.is_empty() {
            return Err(GatewayError::NotConfigured {
                message: format!(
                    "caller authentication is not configured: bound variable {} has no value",
                    self.missing.join(", ")
                ),
            });
        }
        let scope = Binds(&self.binds);
        let expected = |t: &Template| {
            t.render_text(&scope)
                .map(|c| c.into_owned())
                .unwrap_or_default()
        };
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let ok = match &self.scheme {
            Scheme::Bearer(token) => header("authorization")
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .is_some_and(|given| {
                    constant_time_eq(given.trim().as_bytes(), expected(token).as_bytes())
                }),
            Scheme::ApiKeyHeader { name, value } => header(name.as_str()).is_some_and(|given| {
                constant_time_eq(given.as_bytes(), expected(value).as_bytes())
            }),
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
                scheme: self.scheme.name(),
            })
        }
    }
}

/// Compares without an early exit, so the time taken does not tell how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() || b.is_empty() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::Ref;

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

    fn bind(_: &crate::template::Placeholder) -> Ref {
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
            a.check(&headers, None),
            Err(GatewayError::Unauthorized { .. })
        ));
        headers.insert("authorization", "Bearer s3cret".parse().unwrap());
        assert!(a.check(&headers, None).is_ok());
        headers.insert("authorization", "Bearer s3cre".parse().unwrap());
        assert!(a.check(&headers, None).is_err());
        let b = auth(
            Scheme::Basic {
                username: Template::literal("u"),
                password: Template::compile("{{TOKEN}}", bind),
            },
            Some("pw"),
        );
        let encoded = base64::engine::general_purpose::STANDARD.encode("u:pw");
        headers.insert("authorization", format!("Basic {encoded}").parse().unwrap());
        assert!(b.check(&headers, None).is_ok());
    }

    #[test]
    fn missing_secret_is_not_configured() {
        let a = auth(Scheme::Bearer(Template::compile("{{TOKEN}}", bind)), None);
        let err = a.check(&HeaderMap::new(), None).unwrap_err();
        assert_eq!(err.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert!(err.to_string().contains("TOKEN"));
    }
}
