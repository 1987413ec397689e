//! Who may call from where: the `Host` allow-list (against DNS rebinding) and the `Origin`
//! allow-list (against cross-site requests from browsers), shared by REST and MCP.
//!
//! A `Host` is compared without its port, case-insensitively; behind a trusted proxy the first
//! `X-Forwarded-Host` counts instead. An `Origin` is `scheme://host[:port]`, compared with
//! default ports filled in; an allowed entry may end in `:*` (any port). A request without an
//! `Origin` passes the origin check: browsers always send one on cross-site requests.

use http::{HeaderMap, Uri};

/// The host a request names: the first `X-Forwarded-Host` when trusted, else `Host`, else the
/// URI's authority (HTTP/2).
pub fn host_of<'a>(headers: &'a HeaderMap, uri: &'a Uri, trust_forwarded: bool) -> &'a str {
    let forwarded = trust_forwarded
        .then(|| {
            headers
                .get("x-forwarded-host")
                .and_then(|v| v.to_str().ok())
        })
        .flatten()
        .and_then(|v| v.split(',').next())
        .map(str::trim);
    forwarded
        .or_else(|| {
            headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
        })
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .unwrap_or("")
}

/// Whether `host` (with or without a port) is on `allowed`; an empty list allows any host.
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let name = host_without_port(host);
    allowed
        .iter()
        .any(|a| a.eq_ignore_ascii_case(name) || a.eq_ignore_ascii_case(host))
}

/// Whether the request's `Origin`, if it has one, is on `allowed`.
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> Result<(), String> {
    let Some(origin) = headers.get(http::header::ORIGIN) else {
        return Ok(());
    };
    let text = origin.to_str().unwrap_or("");
    let Some((scheme, host, port)) = parse(text) else {
        return Err(text.to_owned());
    };
    let matches = allowed.iter().any(|entry| {
        let (base, any_port) = match entry.strip_suffix(":*") {
            Some(base) => (base, true),
            None => (entry.as_str(), false),
        };
        match parse(base) {
            Some((s, h, p)) => {
                s.eq_ignore_ascii_case(scheme)
                    && h.eq_ignore_ascii_case(host)
                    && (any_port || p == port)
            }
            None => false,
        }
    });
    if matches {
        Ok(())
    } else {
        Err(text.to_owned())
    }
}

/// `scheme://host[:port]` as (scheme, host, port), the scheme's default port filled in.
fn parse(origin: &str) -> Option<(&str, &str, u16)> {
    let (scheme, rest) = origin.split_once("://")?;
    let default = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let (host, tail) = match rest.strip_prefix('[') {
        Some(v6) => v6.split_once(']')?,
        None => match rest.split_once(':') {
            Some((host, port)) => (host, &rest[host.len()..][..port.len() + 1]),
            None => (rest, ""),
        },
    };
    let port = match tail {
        "" => default,
        tail => tail.strip_prefix(':')?.parse().ok()?,
    };
    (!host.is_empty()).then_some((scheme, host, port))
}

/// `host` without a `:port` (and an IPv6 literal without its brackets).
pub fn host_without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.contains(':') => {
            name
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::ORIGIN, origin.parse().unwrap());
        h
    }

    #[test]
    fn origins_match_with_default_ports_and_wildcards() {
        let allowed = vec![
            "http://localhost:*".to_owned(),
            "https://app.example.com".to_owned(),
        ];
        assert!(origin_allowed(&HeaderMap::new(), &allowed).is_ok());
        assert!(origin_allowed(&headers("http://localhost:3000"), &allowed).is_ok());
        assert!(origin_allowed(&headers("https://app.example.com:443"), &allowed).is_ok());
        assert!(origin_allowed(&headers("https://app.example.com"), &allowed).is_ok());
        assert!(origin_allowed(&headers("https://app.example.com:8443"), &allowed).is_err());
        assert!(origin_allowed(&headers("https://evil.example"), &allowed).is_err());
        assert!(origin_allowed(&headers("null"), &allowed).is_err());
        let v6 = vec!["http://[::1]:*".to_owned()];
        assert!(origin_allowed(&headers("http://[::1]:8080"), &v6).is_ok());
    }

    #[test]
    fn hosts_are_compared_without_ports() {
        assert_eq!(host_without_port("localhost:9090"), "localhost");
        assert_eq!(host_without_port("[::1]:9090"), "::1");
        assert_eq!(host_without_port("example.com"), "example.com");
        assert_eq!(host_without_port("::1"), "::1");
    }

    #[test]
    fn hosts_match_without_their_port() {
        let allowed = vec!["localhost".to_owned(), "::1".to_owned()];
        assert!(host_allowed("localhost:8080", &allowed));
        assert!(host_allowed("[::1]:8080", &allowed));
        assert!(!host_allowed("evil.example:8080", &allowed));
        assert!(host_allowed("anything", &[]));
    }
}
