//! Consumers: who calls the gateway, with which credentials, and what they may call.
//!
//! A consumers file (YAML, named by `consumers.file` in the gateway config) lists consumers:
//!
//! ```yaml
//! consumers:
//!   - name: payments-team
//!     labels: {team: payments}
//!     metadata: {stripe_account: acct_1}
//!     keys:
//!       - sha256: 9f86d081884c7d65...   # of the whole key; the key itself is never stored
//!         prefix: cg_3f9a                # shown in logs and /status
//!         expires_at: 1798761600         # optional, Unix seconds
//!     scopes:
//!       - capability: identity-*         # globs; each defaults to "*"
//!         adapter: "*"
//!         name: list-*                   # an operation or tool name
//!         access: read                   # read (GET routes, read-only tools), write, any
//!     limits:
//!       - rate: 10                       # calls per second, sustained
//!         burst: 20                      # calls at once (default: the rate, rounded up)
//!         capability: identity-*         # optional globs: only these capabilities' calls
//!         name: create-*                 #   and these operations or tools
//!       - quota: 10000                   # calls per calendar hour, day or month (UTC)
//!         per: day
//! ```
//!
//! API keys are `cg_` and 48 hex digits (192 random bits); only their SHA-256 is kept, and a
//! key is found by its digest, compared in constant time. The file is strict: an unknown key,
//! a bad hash, a bad glob or a duplicate name is an error naming its line, and a file with
//! errors is not used (the gateway keeps its last good set).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::glob::Pattern;
use serde::Serialize;

use crate::diag::{Code, Diagnostic, Diagnostics, Loc};
use crate::spec::yaml::{self, Node, NodeValue};

/// Every consumer of a consumers file, and their keys by digest.
#[derive(Debug, Default)]
pub struct ConsumerSet {
    pub consumers: Vec<Arc<Consumer>>,
    /// Digests are SHA-256 outputs, so a fast hash of them is as good as any.
    by_digest: HashMap<[u8; 32], (usize, usize), foldhash::fast::RandomState>,
}

#[derive(Debug)]
pub struct Consumer {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Values templates may use (`{{consumer.stripe_account}}`).
    pub metadata: BTreeMap<String, String>,
    pub keys: Vec<ApiKey>,
    pub scopes: Vec<Scope>,
    pub limits: Vec<Limit>,
}

/// A limit on the calls of the capabilities matching `capability` whose operation or tool name
/// matches `name`: a rate with a burst, or a quota per calendar period (UTC).
#[derive(Debug, Clone)]
pub struct Limit {
    pub capability: Pattern,
    pub name: Pattern,
    pub kind: LimitKind,
    /// What identifies the limit's counter: its kind, numbers and globs, so an edited limit
    /// starts afresh and a reordered file keeps its counts.
    pub id: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LimitKind {
    /// GCRA: `rate` calls per second sustained, `burst` at once.
    Rate { rate: f64, burst: u32 },
    /// At most `calls` in each `per` (an hour, a day or a month, starting on the UTC boundary).
    Quota { calls: u64, per: Period },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Hour,
    Day,
    Month,
}

impl Period {
    /// The period holding `unix` (seconds): its start and its end.
    pub fn window(self, unix: u64) -> (u64, u64) {
        const HOUR: u64 = 3600;
        const DAY: u64 = 86_400;
        match self {
            Period::Hour => (unix - unix % HOUR, unix - unix % HOUR + HOUR),
            Period::Day => (unix - unix % DAY, unix - unix % DAY + DAY),
            Period::Month => {
                let (year, month, _) = crate::calendar::civil_from_days((unix / DAY) as i64);
                let start = crate::calendar::days_from_civil(year, month, 1) as u64 * DAY;
                let (year, month) = if month == 12 {
                    (year + 1, 1)
                } else {
                    (year, month + 1)
                };
                (
                    start,
                    crate::calendar::days_from_civil(year, month, 1) as u64 * DAY,
                )
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Period::Hour => "hour",
            Period::Day => "day",
            Period::Month => "month",
        }
    }
}

/// A limit as the IETF `RateLimit-Policy` header states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// `burst` for a rate, `hour` / `day` / `month` for a quota.
    pub name: &'static str,
    /// Calls allowed in the window.
    pub quota: u64,
    /// The window, in seconds (a month counts as 30 days here).
    pub window: u64,
}

impl LimitKind {
    pub fn policy(self) -> Policy {
        match self {
            LimitKind::Rate { rate, burst } => Policy {
                name: "burst",
                quota: u64::from(burst),
                window: (f64::from(burst) / rate).ceil().max(1.0) as u64,
            },
            LimitKind::Quota { calls, per } => Policy {
                name: per.name(),
                quota: calls,
                window: match per {
                    Period::Hour => 3600,
                    Period::Day => 86_400,
                    Period::Month => 30 * 86_400,
                },
            },
        }
    }
}

/// What one call is, for a limit to count it.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub capability: &'a str,
    /// The operation (REST) or tool (MCP) name.
    pub name: &'a str,
}

impl Limit {
    pub fn counts(&self, call: &Call<'_>) -> bool {
        self.capability.is_match(call.capability) && self.name.is_match(call.name)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ApiKey {
    #[serde(skip)]
    pub digest: [u8; 32],
    pub prefix: String,
    #[serde(with = "unix_seconds")]
    pub expires_at: Option<SystemTime>,
}

/// What a consumer may call: every part a glob.
#[derive(Debug, Clone)]
pub struct Scope {
    pub capability: Pattern,
    pub adapter: Pattern,
    pub name: Pattern,
    pub access: Access,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// GET (and HEAD) routes, and tools whose `readOnly` hint is true.
    Read,
    /// Everything else.
    Write,
    Any,
}

/// What a call is, for a scope to match.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub capability: &'a str,
    pub adapter: &'a str,
    pub name: &'a str,
    pub read_only: bool,
}

impl Consumer {
    /// Whether some scope grants `target`.
    pub fn may(&self, target: &Target<'_>) -> bool {
        self.scopes.iter().any(|scope| scope.grants(target))
    }
}

impl Scope {
    /// A scope as a token carries it: `ACCESS`, `CAPABILITY:ACCESS` or
    /// `CAPABILITY:NAME:ACCESS` (globs; ACCESS is read, write or any). Anything else (an
    /// `openid`, a bad glob) is not a capgate scope: `None`.
    pub fn from_token(token: &str) -> Option<Scope> {
        let mut parts: Vec<&str> = token.split(':').collect();
        let access = match parts.pop()? {
            "read" => Access::Read,
            "write" => Access::Write,
            "any" => Access::Any,
            _ => return None,
        };
        let glob = |part: Option<&&str>| -> Option<Pattern> {
            Pattern::new(part.copied().unwrap_or("*")).ok()
        };
        if parts.len() > 2 {
            return None;
        }
        Some(Scope {
            capability: glob(parts.first())?,
            adapter: glob(None)?,
            name: glob(parts.get(1))?,
            access,
        })
    }

    pub fn grants(&self, target: &Target<'_>) -> bool {
        let access = match self.access {
            Access::Any => true,
            Access::Read => target.read_only,
            Access::Write => !target.read_only,
        };
        access
            && self.capability.is_match(target.capability)
            && self.adapter.is_match(target.adapter)
            && self.name.is_match(target.name)
    }
}

/// A key's digest: what a consumers file keeps.
pub fn digest(key: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(key.as_bytes()).into()
}

/// The public part of a key, for logs: `cg_` and its first four digits.
pub fn prefix_of(key: &str) -> String {
    key.chars().take(7).collect()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl ConsumerSet {
    /// The consumer whose key `key` is, unless it expired by `now`.
    pub fn authenticate(&self, key: &str, now: SystemTime) -> Option<(&Arc<Consumer>, &ApiKey)> {
        let given = digest(key);
        let &(consumer, index) = self.by_digest.get(&given)?;
        let consumer = &self.consumers[consumer];
        let api_key = &consumer.keys[index];
        if !constant_time_eq(&api_key.digest, &given) {
            return None;
        }
        if api_key.expires_at.is_some_and(|at| at <= now) {
            return None;
        }
        Some((consumer, api_key))
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Consumer>> {
        self.consumers.iter().find(|c| c.name == name)
    }
}

/// Reads and checks a consumers file; its diagnostics when it has errors.
pub fn load(path: &Path) -> Result<ConsumerSet, Vec<Diagnostic>> {
    let file: Arc<Path> = Arc::from(path);
    match crate::read::text(path, crate::read::SPEC_LIMIT) {
        Ok(text) => parse(&file, &text),
        Err(error) => {
            let mut diags = Diagnostics::new(file);
            diags.error(
                Code::UnreadableFile,
                &Loc::default(),
                format!("cannot read the consumers file: {error}"),
            );
            Err(diags.into_grouped())
        }
    }
}

/// Decodes a consumers file's text.
pub fn parse(file: &Arc<Path>, text: &str) -> Result<ConsumerSet, Vec<Diagnostic>> {
    let mut diags = Diagnostics::new(file.clone());
    let root = match yaml::parse(text) {
        Ok(root) => root,
        Err(error) => {
            diags.error(Code::YamlSyntax, &Loc::new(error.line, ""), error.message);
            return Err(diags.into_grouped());
        }
    };
    let mut set = ConsumerSet::default();
    let at = Loc::new(root.line, "");
    match keys_of(&root, &at, &["consumers"], &mut diags).get("consumers") {
        Some(Node {
            value: NodeValue::Seq(items),
            ..
        }) => {
            for (i, item) in items.iter().enumerate() {
                let at = Loc::new(item.line, format!("consumers[{i}]"));
                if let Some(consumer) = consumer(item, &at, &mut diags) {
                    if set.get(&consumer.name).is_some() {
                        diags
                            .error(
                                Code::BadValue,
                                &at,
                                "a consumer of this name is already listed",
                            )
                            .found(consumer.name.clone());
                        continue;
                    }
                    let index = set.consumers.len();
                    for (k, key) in consumer.keys.iter().enumerate() {
                        if set.by_digest.insert(key.digest, (index, k)).is_some() {
                            diags.error(
                                Code::BadValue,
                                &at.key("keys", item.line),
                                format!("key {} is listed twice", key.prefix),
                            );
                        }
                    }
                    set.consumers.push(Arc::new(consumer));
                }
            }
        }
        // `consumers:` with nothing yet.
        Some(Node {
            value: NodeValue::Null,
            ..
        }) => {}
        Some(other) => {
            diags.error(
                Code::BadType,
                &at.key("consumers", other.line),
                "`consumers` must be a list",
            );
        }
        None => {
            diags.error(
                Code::MissingKey,
                &at,
                "a consumers file has a `consumers` list",
            );
        }
    }
    if diags.has_errors() {
        Err(diags.into_grouped())
    } else {
        Ok(set)
    }
}

/// The entries of a mapping node by name; unknown keys (not in `allowed`) are errors.
fn keys_of<'a>(
    node: &'a Node,
    at: &Loc,
    allowed: &[&str],
    diags: &mut Diagnostics,
) -> BTreeMap<&'a str, &'a Node> {
    let mut out = BTreeMap::new();
    let Some(entries) = node.entries() else {
        diags.error(
            Code::BadType,
            at,
            format!("expected a mapping, found {}", node.kind()),
        );
        return out;
    };
    for (key, value) in entries {
        if allowed.contains(&key.name.as_str()) {
            out.insert(key.name.as_str(), value);
        } else {
            diags
                .error(
                    Code::UnknownKey,
                    &at.key(&key.name, key.line),
                    "unknown key",
                )
                .expected(allowed.join(", "));
        }
    }
    out
}

fn items<'a>(node: &'a Node, at: &Loc, diags: &mut Diagnostics) -> &'a [Node] {
    match &node.value {
        NodeValue::Seq(items) => items,
        _ => {
            diags.error(
                Code::BadType,
                at,
                format!("expected a list, found {}", node.kind()),
            );
            &[]
        }
    }
}

fn text(node: &Node, at: &Loc, diags: &mut Diagnostics) -> Option<String> {
    let text = node.scalar_text();
    if text.is_none() {
        diags.error(
            Code::BadType,
            at,
            format!("expected a string, found {}", node.kind()),
        );
    }
    text
}

fn strings(node: &Node, at: &Loc, diags: &mut Diagnostics) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(entries) = node.entries() else {
        diags.error(
            Code::BadType,
            at,
            format!("expected a mapping, found {}", node.kind()),
        );
        return out;
    };
    for (key, value) in entries {
        if let Some(text) = text(value, &at.key(&key.name, key.line), diags) {
            out.insert(key.name.clone(), text);
        }
    }
    out
}

fn consumer(node: &Node, at: &Loc, diags: &mut Diagnostics) -> Option<Consumer> {
    let keys = keys_of(
        node,
        at,
        &["name", "labels", "metadata", "keys", "scopes", "limits"],
        diags,
    );
    let Some(name_node) = keys.get("name") else {
        diags.error(Code::MissingKey, at, "a consumer has a `name`");
        return None;
    };
    let name = text(name_node, &at.key("name", name_node.line), diags)?;
    let labels = keys
        .get("labels")
        .map(|n| strings(n, &at.key("labels", n.line), diags));
    let metadata = keys
        .get("metadata")
        .map(|n| strings(n, &at.key("metadata", n.line), diags));
    let mut api_keys = Vec::new();
    if let Some(node) = keys.get("keys") {
        for (i, item) in items(node, &at.key("keys", node.line), diags)
            .iter()
            .enumerate()
        {
            let at = at.key(&format!("keys[{i}]"), item.line);
            api_keys.extend(api_key(item, &at, diags));
        }
    }
    let mut scopes = Vec::new();
    if let Some(node) = keys.get("scopes") {
        for (i, item) in items(node, &at.key("scopes", node.line), diags)
            .iter()
            .enumerate()
        {
            let at = at.key(&format!("scopes[{i}]"), item.line);
            scopes.extend(scope(item, &at, diags));
        }
    }
    let mut limits = Vec::new();
    if let Some(node) = keys.get("limits") {
        for (i, item) in items(node, &at.key("limits", node.line), diags)
            .iter()
            .enumerate()
        {
            let at = at.key(&format!("limits[{i}]"), item.line);
            limits.extend(limit(item, &at, diags));
        }
    }
    Some(Consumer {
        name,
        labels: labels.unwrap_or_default(),
        metadata: metadata.unwrap_or_default(),
        keys: api_keys,
        scopes,
        limits,
    })
}

fn api_key(node: &Node, at: &Loc, diags: &mut Diagnostics) -> Option<ApiKey> {
    let keys = keys_of(node, at, &["sha256", "prefix", "expires_at"], diags);
    let hash = keys
        .get("sha256")
        .and_then(|n| text(n, &at.key("sha256", n.line), diags));
    let Some(hash) = hash else {
        diags.error(Code::MissingKey, at, "a key has its `sha256` digest");
        return None;
    };
    let Some(digest) = hex32(&hash) else {
        diags
            .error(Code::BadValue, at, "a key's `sha256` is 64 hex digits")
            .found(format!("{} characters", hash.len()));
        return None;
    };
    let prefix = keys
        .get("prefix")
        .and_then(|n| text(n, &at.key("prefix", n.line), diags))
        .unwrap_or_else(|| "cg_????".to_owned());
    let expires_at = match keys.get("expires_at").map(|n| &n.value) {
        None | Some(NodeValue::Null) => None,
        Some(NodeValue::Int(seconds)) if *seconds >= 0 => {
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(*seconds as u64))
        }
        Some(_) => {
            diags.error(Code::BadValue, at, "`expires_at` is a time in Unix seconds");
            return None;
        }
    };
    Some(ApiKey {
        digest,
        prefix,
        expires_at,
    })
}

fn scope(node: &Node, at: &Loc, diags: &mut Diagnostics) -> Option<Scope> {
    let keys = keys_of(
        node,
        at,
        &["capability", "adapter", "name", "access"],
        diags,
    );
    let capability = glob_at(&keys, "capability", at, diags)?;
    let adapter = glob_at(&keys, "adapter", at, diags)?;
    let name = glob_at(&keys, "name", at, diags)?;
    let access = match keys.get("access").and_then(|n| n.as_str()) {
        None => Access::Any,
        Some("read") => Access::Read,
        Some("write") => Access::Write,
        Some("any") => Access::Any,
        Some(other) => {
            diags
                .error(Code::BadValue, &at.key("access", at.line), "unknown access")
                .found(other.to_owned())
                .expected("read, write or any");
            return None;
        }
    };
    Some(Scope {
        capability,
        adapter,
        name,
        access,
    })
}

fn glob_at(
    keys: &BTreeMap<&str, &Node>,
    key: &str,
    at: &Loc,
    diags: &mut Diagnostics,
) -> Option<Pattern> {
    let Some(node) = keys.get(key) else {
        return Some(Pattern::any());
    };
    let at = at.key(key, node.line);
    let pattern = text(node, &at, diags)?;
    match Pattern::new(&pattern) {
        Ok(glob) => Some(glob),
        Err(error) => {
            diags
                .error(Code::BadValue, &at, format!("not a glob: {error}"))
                .found(pattern);
            None
        }
    }
}

fn limit(node: &Node, at: &Loc, diags: &mut Diagnostics) -> Option<Limit> {
    let keys = keys_of(
        node,
        at,
        &["rate", "burst", "quota", "per", "capability", "name"],
        diags,
    );
    let number = |key: &str, diags: &mut Diagnostics| -> Option<f64> {
        let node = keys.get(key)?;
        match node.value {
            NodeValue::Int(n) if n > 0 => Some(n as f64),
            NodeValue::Float(f) if f > 0.0 && f.is_finite() => Some(f),
            _ => {
                diags.error(
                    Code::BadValue,
                    &at.key(key, node.line),
                    format!("`{key}` is a positive number"),
                );
                None
            }
        }
    };
    let kind = match (keys.contains_key("rate"), keys.contains_key("quota")) {
        (true, false) => {
            if let Some(node) = keys.get("per") {
                diags.error(
                    Code::UnknownKey,
                    &at.key("per", node.line),
                    "`per` goes with `quota`, not with `rate` (a rate is per second)",
                );
                return None;
            }
            let rate = number("rate", diags)?;
            let burst = match keys.get("burst") {
                None => rate.ceil() as u32,
                Some(_) => number("burst", diags)?.ceil() as u32,
            };
            LimitKind::Rate { rate, burst }
        }
        (false, true) => {
            if let Some(node) = keys.get("burst") {
                diags.error(
                    Code::UnknownKey,
                    &at.key("burst", node.line),
                    "`burst` goes with `rate`, not with `quota`",
                );
                return None;
            }
            let calls = number("quota", diags)?.ceil() as u64;
            let per = match keys.get("per").map(|n| (n, n.as_str())) {
                Some((_, Some("hour"))) => Period::Hour,
                Some((_, Some("day"))) => Period::Day,
                Some((_, Some("month"))) => Period::Month,
                Some((node, other)) => {
                    diags
                        .error(Code::BadValue, &at.key("per", node.line), "unknown period")
                        .found(other.unwrap_or("").to_owned())
                        .expected("hour, day or month");
                    return None;
                }
                None => {
                    diags.error(
                        Code::MissingKey,
                        at,
                        "a quota says what it is `per`: hour, day or month",
                    );
                    return None;
                }
            };
            LimitKind::Quota { calls, per }
        }
        _ => {
            diags.error(
                Code::MissingKey,
                at,
                "a limit has either a `rate` (calls per second, with a `burst`) or a `quota` (calls `per` hour, day or month)",
            );
            return None;
        }
    };
    let capability = glob_at(&keys, "capability", at, diags)?;
    let name = glob_at(&keys, "name", at, diags)?;
    let id = match kind {
        LimitKind::Rate { rate, burst } => format!("rate={rate}/{burst}"),
        LimitKind::Quota { calls, per } => format!("quota={calls}/{}", per.name()),
    };
    let id = format!("{id}|{}|{}", capability.as_str(), name.as_str());
    Some(Limit {
        capability,
        name,
        kind,
        id,
    })
}

fn hex32(text: &str) -> Option<[u8; 32]> {
    let text = text.strip_prefix("sha256:").unwrap_or(text);
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The hex digits of a digest, as a consumers file writes it.
pub fn hex(digest: &[u8; 32]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

mod unix_seconds {
    use std::time::SystemTime;

    use serde::Serializer;

    pub fn serialize<S: Serializer>(
        time: &Option<SystemTime>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match time.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()) {
            Some(d) => serializer.serialize_some(&d.as_secs()),
            None => serializer.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Arc<Path> {
        Arc::from(Path::new("consumers.yaml"))
    }

    const KEY: &str = "cg_000102030405060708090a0b0c0d0e0f1011121314151617";

    fn sample(expires: &str) -> String {
        format!(
            "consumers:\n  - name: payments\n    metadata: {{stripe_account: acct_1}}\n    keys:\n      - sha256: {}\n        prefix: cg_0001\n{expires}    scopes:\n      - capability: identity-*\n        access: read\n",
            hex(&digest(KEY))
        )
    }

    #[test]
    fn a_key_finds_its_consumer_and_scopes_decide() {
        let set = parse(&file(), &sample("")).unwrap();
        let (consumer, key) = set.authenticate(KEY, SystemTime::now()).unwrap();
        assert_eq!(consumer.name, "payments");
        assert_eq!(key.prefix, "cg_0001");
        assert_eq!(consumer.metadata["stripe_account"], "acct_1");
        assert!(set.authenticate("cg_nope", SystemTime::now()).is_none());
        let target = |capability, read_only| Target {
            capability,
            adapter: "any",
            name: "list",
            read_only,
        };
        assert!(consumer.may(&target("identity-sessions", true)));
        assert!(
            !consumer.may(&target("identity-sessions", false)),
            "read only"
        );
        assert!(
            !consumer.may(&target("customers", true)),
            "another capability"
        );
    }

    #[test]
    fn token_scopes_name_capability_name_and_access() {
        let target = Target {
            capability: "identity-sessions",
            adapter: "rest",
            name: "stripe-get-x",
            read_only: true,
        };
        for (token, grants) in [
            ("read", true),
            ("write", false),
            ("identity-*:read", true),
            ("billing-*:any", false),
            ("identity-*:stripe-get-*:read", true),
            ("identity-*:stripe-post-*:any", false),
        ] {
            let scope = Scope::from_token(token).unwrap();
            assert_eq!(scope.grants(&target), grants, "{token}");
        }
        for other in ["openid", "profile:email", "a:b:c:read", ""] {
            assert!(Scope::from_token(other).is_none(), "{other}");
        }
    }

    #[test]
    fn an_expired_key_stops_working() {
        let set = parse(&file(), &sample("        expires_at: 1000\n")).unwrap();
        assert!(set.authenticate(KEY, SystemTime::now()).is_none());
    }

    #[test]
    fn periods_start_on_utc_boundaries() {
        // 2024-02-29T13:45:00Z: a leap day.
        let t = 1_709_214_300;
        assert_eq!(Period::Hour.window(t), (1_709_211_600, 1_709_215_200));
        assert_eq!(Period::Day.window(t), (1_709_164_800, 1_709_251_200));
        // February 2024 began 2024-02-01 and March on 2024-03-01.
        assert_eq!(Period::Month.window(t), (1_706_745_600, 1_709_251_200));
        // December rolls over into January of the next year.
        let december = 1_798_675_200; // 2026-12-31T00:00:00Z
        assert_eq!(
            Period::Month.window(december),
            (1_796_083_200, 1_798_761_600)
        );
    }

    #[test]
    fn limits_are_rates_or_quotas() {
        let text = "consumers:\n  - name: a\n    limits:\n      - rate: 5\n        name: create-*\n      - quota: 100\n        per: day\n";
        let set = parse(&file(), text).unwrap();
        let limits = &set.consumers[0].limits;
        assert_eq!(
            limits[0].kind,
            LimitKind::Rate {
                rate: 5.0,
                burst: 5
            }
        );
        assert!(limits[0].counts(&Call {
            capability: "x",
            name: "create-session"
        }));
        assert!(!limits[0].counts(&Call {
            capability: "x",
            name: "list-sessions"
        }));
        assert_eq!(
            limits[1].kind,
            LimitKind::Quota {
                calls: 100,
                per: Period::Day
            }
        );
        let bad = "consumers:\n  - name: a\n    limits:\n      - quota: 100\n        per: week\n      - rate: 1\n        quota: 2\n";
        let errors = parse(&file(), bad).unwrap_err();
        assert!(
            errors.iter().any(|d| d.message.contains("unknown period")),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|d| d.message.contains("either a `rate`")),
            "{errors:?}"
        );
    }

    #[test]
    fn errors_name_their_line_and_key() {
        let text = "consumers:\n  - name: a\n    scopes:\n      - access: sometimes\n    colour: red\n  - name: a\n";
        let errors = parse(&file(), text).unwrap_err();
        let lines: Vec<(u32, &str)> = errors.iter().map(|d| (d.line, d.path.as_str())).collect();
        assert!(lines.contains(&(5, "consumers[0].colour")), "{lines:?}");
        assert!(
            errors.iter().any(|d| d.message.contains("unknown access")),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|d| d.message.contains("already listed")),
            "{errors:?}"
        );
    }
}
