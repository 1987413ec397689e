//! The REST router: path patterns by segment, static segments before variables.
//!
//! Patterns come from spec files (`/v1/customers/{customer}`, `{{x}}` too). Two patterns that
//! differ only in variable names are the same route, so each route keeps its own variable names
//! and the tree only knows "a variable here". Matching is per segment, percent-decoded, with
//! backtracking so that `/a/search` and `/a/{id}/x` both work.

use std::borrow::Cow;
use std::collections::HashMap;

use http::Method;
use percent_encoding::percent_decode_str;

/// One segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Static(String),
    Variable(String),
    /// The rest of the path, any number of segments (forward routes).
    Rest(String),
}

/// Parses a spec path into segments; the error names the offending segment.
pub fn parse_pattern(path: &str) -> Result<Vec<Segment>, String> {
    let trimmed = path.trim();
    let trimmed = trimmed.strip_prefix('/').unwrap_or(trimmed);
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    trimmed
        .split('/')
        .map(|segment| {
            let inner = segment
                .strip_prefix("{{")
                .and_then(|s| s.strip_suffix("}}"))
                .or_else(|| segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')));
            match inner {
                Some(name) if is_name(name.trim()) => Ok(Segment::Variable(name.trim().to_owned())),
                Some(_) => Err(format!("invalid path variable `{segment}`")),
                None if segment.contains('{') || segment.contains('}') => Err(format!(
                    "path segment `{segment}` mixes text and a variable; a variable must be a whole segment"
                )),
                None => Ok(Segment::Static(segment.to_owned())),
            }
        })
        .collect()
}

fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// The shape of a pattern with variable names erased, used to detect collisions and in messages.
pub fn canonical(segments: &[Segment]) -> String {
    let mut out = String::new();
    for segment in segments {
        out.push('/');
        match segment {
            Segment::Static(s) => out.push_str(s),
            Segment::Variable(_) => out.push_str("{}"),
            Segment::Rest(_) => out.push_str("{*}"),
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

#[derive(Debug)]
struct Endpoint<T> {
    method: Method,
    names: Vec<String>,
    value: T,
}

#[derive(Debug)]
struct Node<T> {
    /// Keyed by the spec's segments, so a fast unkeyed hash is safe: requests only look up.
    statics: HashMap<String, Node<T>, foldhash::fast::FixedState>,
    variable: Option<Box<Node<T>>>,
    rest: Vec<Endpoint<T>>,
    endpoints: Vec<Endpoint<T>>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            statics: HashMap::default(),
            variable: None,
            rest: Vec::new(),
            endpoints: Vec::new(),
        }
    }
}

/// Routes by method and path.
#[derive(Debug)]
pub struct Router<T> {
    root: Node<T>,
    len: usize,
}

impl<T> Default for Router<T> {
    fn default() -> Self {
        Router {
            root: Node::default(),
            len: 0,
        }
    }
}

/// The result of a lookup.
#[derive(Debug)]
pub enum Match<'r, T> {
    Found {
        value: &'r T,
        /// Variable name and percent-decoded value, in path order.
        params: Vec<(&'r str, String)>,
    },
    /// The path exists for other methods.
    MethodNotAllowed(Vec<Method>),
    NotFound,
}

impl<T> Router<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a route; when the same method and shape is taken, returns the value back with the
    /// existing one so the caller can report the collision.
    pub fn insert(
        &mut self,
        method: Method,
        segments: &[Segment],
        value: T,
    ) -> Result<(), (T, &T)> {
        let mut node = &mut self.root;
        let mut names = Vec::new();
        let mut rest_name = None;
        for segment in segments {
            match segment {
                Segment::Static(s) => node = node.statics.entry(s.clone()).or_default(),
                Segment::Variable(name) => {
                    names.push(name.clone());
                    node = node.variable.get_or_insert_with(Default::default);
                }
                Segment::Rest(name) => {
                    rest_name = Some(name.clone());
                    break;
                }
            }
        }
        let list = match rest_name {
            Some(name) => {
                names.push(name);
                &mut node.rest
            }
            None => &mut node.endpoints,
        };
        if let Some(i) = list.iter().position(|e| e.method == method) {
            return Err((value, &list[i].value));
        }
        list.push(Endpoint {
            method,
            names,
            value,
        });
        self.len += 1;
        Ok(())
    }

    /// Finds the route for `method` and a raw (still percent-encoded) `path`.
    pub fn find(&self, method: &Method, path: &str) -> Match<'_, T> {
        let trimmed = path.strip_prefix('/').unwrap_or(path);
        let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
        let remaining = Some(trimmed).filter(|t| !t.is_empty());
        let mut values = Vec::new();
        let mut allowed = Vec::new();
        match find_in(&self.root, method, remaining, &mut values, &mut allowed) {
            // `values` holds exactly the matched route's values: each is popped on a miss.
            Some(endpoint) => Match::Found {
                value: &endpoint.value,
                params: endpoint
                    .names
                    .iter()
                    .map(String::as_str)
                    .zip(values)
                    .collect(),
            },
            None if !allowed.is_empty() => {
                allowed.sort_by(|a: &Method, b| a.as_str().cmp(b.as_str()));
                allowed.dedup();
                Match::MethodNotAllowed(allowed)
            }
            None => Match::NotFound,
        }
    }

    /// Every route, in no particular order.
    pub fn values(&self) -> Vec<&T> {
        let mut out = Vec::new();
        collect(&self.root, &mut out);
        out
    }
}

fn collect<'r, T>(node: &'r Node<T>, out: &mut Vec<&'r T>) {
    out.extend(node.endpoints.iter().map(|e| &e.value));
    out.extend(node.rest.iter().map(|e| &e.value));
    for child in node.statics.values() {
        collect(child, out);
    }
    if let Some(child) = &node.variable {
        collect(child, out);
    }
}

/// The endpoint for the `remaining` segments of a path (`None` once all are matched) under
/// `node`, with the values of the variables matched on the way pushed onto `values` (and
/// popped again where a branch fails). Segments are split off one at a time, as they are
/// reached: a lookup allocates nothing for the segments it walks.
fn find_in<'r, T>(
    node: &'r Node<T>,
    method: &Method,
    remaining: Option<&str>,
    values: &mut Vec<String>,
    allowed: &mut Vec<Method>,
) -> Option<&'r Endpoint<T>> {
    let Some(remaining) = remaining else {
        if let Some(e) = node.endpoints.iter().find(|e| e.method == *method) {
            return Some(e);
        }
        allowed.extend(node.endpoints.iter().map(|e| e.method.clone()));
        return None;
    };
    let (head, tail) = match remaining.bytes().position(|b| b == b'/') {
        Some(slash) => (&remaining[..slash], Some(&remaining[slash + 1..])),
        None => (remaining, None),
    };
    let segment = decode(head);
    if let Some(child) = node.statics.get(segment.as_ref())
        && let Some(found) = find_in(child, method, tail, values, allowed)
    {
        return Some(found);
    }
    if let Some(child) = &node.variable
        && !segment.is_empty()
    {
        values.push(segment.into_owned());
        if let Some(found) = find_in(child, method, tail, values, allowed) {
            return Some(found);
        }
        values.pop();
    }
    if !node.rest.is_empty() {
        if let Some(e) = node.rest.iter().find(|e| e.method == *method) {
            // The rest stays percent-encoded: it is forwarded, segment by segment.
            values.push(remaining.to_owned());
            return Some(e);
        }
        allowed.extend(node.rest.iter().map(|e| e.method.clone()));
    }
    None
}

/// A path segment percent-decoded; borrowed (and not scanned twice) when it has no escapes.
fn decode(segment: &str) -> Cow<'_, str> {
    if segment.contains('%') {
        percent_decode_str(segment).decode_utf8_lossy()
    } else {
        Cow::Borrowed(segment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(routes: &[(&str, &str)]) -> Router<String> {
        let mut r = Router::default();
        for (method, path) in routes {
            let segments = parse_pattern(path).unwrap();
            r.insert(
                method.parse().unwrap(),
                &segments,
                format!("{method} {path}"),
            )
            .unwrap();
        }
        r
    }

    fn found(m: Match<'_, String>) -> (String, Vec<(String, String)>) {
        match m {
            Match::Found { value, params } => (
                value.clone(),
                params.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            ),
            other => panic!("not found: {other:?}"),
        }
    }

    #[test]
    fn statics_win_over_variables_with_backtracking() {
        let r = router(&[
            ("GET", "/v1/customers/search"),
            ("GET", "/v1/customers/{customer}"),
            ("GET", "/v1/customers/{id}/balance"),
            ("GET", "/v1/customers/search/{{x}}/deep"),
        ]);
        assert_eq!(
            found(r.find(&Method::GET, "/v1/customers/search")).0,
            "GET /v1/customers/search"
        );
        let (v, p) = found(r.find(&Method::GET, "/v1/customers/cus_1"));
        assert_eq!(v, "GET /v1/customers/{customer}");
        assert_eq!(p, vec![("customer".into(), "cus_1".into())]);
        let (_, p) = found(r.find(&Method::GET, "/v1/customers/search/balance"));
        assert_eq!(p, vec![("id".into(), "search".into())]);
    }

    #[test]
    fn variables_are_percent_decoded_and_whole_segments() {
        let r = router(&[("GET", "/s/{session}")]);
        let (_, p) = found(r.find(&Method::GET, "/s/vs_1%2F..%2Fx"));
        assert_eq!(p[0].1, "vs_1/../x");
        assert!(matches!(r.find(&Method::GET, "/s/a/b"), Match::NotFound));
        assert!(matches!(r.find(&Method::GET, "/s/"), Match::NotFound));
    }

    #[test]
    fn method_not_allowed_lists_methods() {
        let r = router(&[("GET", "/a"), ("POST", "/a")]);
        match r.find(&Method::DELETE, "/a") {
            Match::MethodNotAllowed(m) => assert_eq!(m, vec![Method::GET, Method::POST]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn same_shape_collides_whatever_the_names() {
        let mut r = router(&[("GET", "/a/{x}")]);
        let segments = parse_pattern("/a/{{y}}").unwrap();
        let (back, existing) = r
            .insert(Method::GET, &segments, "second".into())
            .unwrap_err();
        assert_eq!(back, "second");
        assert_eq!(existing, "GET /a/{x}");
    }

    #[test]
    fn rest_segments_capture_the_remainder_encoded() {
        let mut r: Router<&str> = Router::default();
        r.insert(
            Method::GET,
            &[Segment::Static("fwd".into()), Segment::Rest("path".into())],
            "f",
        )
        .unwrap();
        match r.find(&Method::GET, "/fwd/a/b%20c") {
            Match::Found { params, .. } => assert_eq!(params, vec![("path", "a/b%20c".to_owned())]),
            other => panic!("{other:?}"),
        }
        // Empty segments inside the rest are kept; a rest needs at least one segment.
        match r.find(&Method::GET, "/fwd/a//b/") {
            Match::Found { params, .. } => assert_eq!(params, vec![("path", "a//b".to_owned())]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(r.find(&Method::GET, "/fwd"), Match::NotFound));
        assert!(matches!(
            r.find(&Method::POST, "/fwd/a"),
            Match::MethodNotAllowed(m) if m == vec![Method::GET]
        ));
    }

    #[test]
    fn rejects_mixed_segments() {
        assert!(parse_pattern("/a/x-{id}").unwrap_err().contains("x-{id}"));
        assert_eq!(canonical(&parse_pattern("/a/{x}/b").unwrap()), "/a/{}/b");
    }
}
