//! A bound value that must never be printed.
//!
//! Values from `binds` (API keys, tokens) are wrapped in [`Secret`] as soon as they are read. Its
//! `Debug` prints a placeholder and it has no `Display` or `Serialize`, so a secret cannot reach
//! a log line, a diagnostic, a metric or an admin response by accident. [`Secret::expose`] is
//! called where a value must be used: when templates render bound variables (an adapter's
//! credentials when a snapshot is built, and `upstream`, to put them on the wire) and in
//! `auth`, to compare a caller's credentials with it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Secret(value.into())
    }

    /// The value itself; call only where it goes on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Bind values by name (the gateway config's `env`) as `Debug` shows them: names only.
pub struct RedactedValues<'a>(pub &'a BTreeMap<String, String>);

impl fmt::Debug for RedactedValues<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, format_args!("<redacted>"))))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_values_show_their_names_only() {
        let values = BTreeMap::from([("STRIPE_API_KEY".to_owned(), "sk_test_123".to_owned())]);
        let shown = format!("{:?}", RedactedValues(&values));
        assert_eq!(shown, r#"{"STRIPE_API_KEY": <redacted>}"#);
    }

    #[test]
    fn debug_never_shows_the_value() {
        let secret = Secret::new("sk_test_123");
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
        assert_eq!(secret.expose(), "sk_test_123");
    }
}

/// A URL with its password (if any) replaced by `***`: `redis://:***@host:6379/0`.
pub fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod url_tests {
    #[test]
    fn a_url_password_is_never_shown() {
        use super::redact_url_password as r;
        assert_eq!(r("redis://:hunter2@db:6379/0"), "redis://:***@db:6379/0");
        assert_eq!(r("redis://app:hunter2@db/1"), "redis://app:***@db/1");
        assert_eq!(r("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
    }
}
