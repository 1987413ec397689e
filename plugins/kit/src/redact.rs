//! Masking the values of a JSON document by dotted path, in one pass over its bytes.
//!
//! Only masked values are rewritten. Everything else (key order, spacing, the spelling of
//! numbers) stays byte for byte what the upstream sent, no document tree is built, and the
//! parts of the document no path can reach are only scanned (and validated), never copied
//! piecemeal.
//!
//! The rules, for a value at path `P` (the object keys from the document's root):
//! - it is masked when a field `F` names `P` or one of its ancestors, reached through objects
//!   only (no array between the root and `F`), unless an allowed path `A` that starts with `F`
//!   names `P` or an ancestor of `P` up to `F`; below `F`, arrays add nothing to the path;
//! - strings become `"[redacted]"`, numbers and booleans `null`; `null` and strings already
//!   `"[redacted]"` stay as they are and are not counted; objects and arrays are masked value
//!   by value.
//! - Paths are split at dots, so a key that holds a dot cannot be named (and is masked with
//!   its parent).
//! - A Stripe list (`{"object": "list", "data": [...]}`) has each of its `data` items masked as
//!   a document of its own.

use alloc::borrow::{Cow, ToOwned};
use alloc::string::String;
use alloc::vec::Vec;

/// What to mask: dotted paths of fields (`verified_outputs`, `metadata.email`), and paths at
/// or under them to let through (`verified_outputs.first_name`).
pub struct Redaction {
    fields: Vec<Vec<String>>,
    allow: Vec<Vec<String>>,
}

/// A masked string.
const MASKED: &[u8] = b"\"[redacted]\"";
/// How deep documents may nest (as serde_json allows).
const MAX_DEPTH: usize = 128;

impl Redaction {
    pub fn new(fields: &[String], allow: &[String]) -> Redaction {
        let split = |paths: &[String]| -> Vec<Vec<String>> {
            paths
                .iter()
                .map(|p| p.split('.').map(str::to_owned).collect())
                .collect()
        };
        Redaction {
            fields: split(fields),
            allow: split(allow),
        }
    }

    /// Masks `body`: the new body and how many values were masked, or `None` when `body` is
    /// not a JSON document.
    pub fn apply(&self, body: &[u8]) -> Option<(Vec<u8>, usize)> {
        core::str::from_utf8(body).ok()?;
        let list = is_stripe_list(body);
        let mut walk = Walk {
            input: body,
            pos: 0,
            copied: 0,
            out: Vec::new(),
            count: 0,
            redaction: self,
            list,
        };
        walk.space();
        walk.value(&mut Vec::new(), 0, true)?;
        walk.space();
        if walk.pos != body.len() {
            return None;
        }
        walk.out.extend_from_slice(&body[walk.copied..]);
        Some((walk.out, walk.count))
    }

    /// Whether the value at `path` is masked.
    fn masks(&self, path: &[Segment]) -> bool {
        self.fields.iter().any(|field| {
            names(field, path)
                && !self
                    .allow
                    .iter()
                    .any(|allowed| allowed.len() >= field.len() && is_key_prefix(allowed, path))
        })
    }

    /// Whether a field lies below `path` (which must then be reached through objects only).
    fn leads_somewhere(&self, path: &[Segment]) -> bool {
        path.iter().all(|s| matches!(s, Segment::Key(_)))
            && self
                .fields
                .iter()
                .any(|field| field.len() > path.len() && names(&field[..path.len()], path))
    }
}

/// What the items of an array are.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Items {
    /// Values that may be masked, at the array's path.
    Relevant,
    /// Values nothing masks: only validated.
    Skipped,
    /// Documents of their own (a Stripe list's `data`), masked from their own root.
    Documents,
}

/// One step of a path: an object key, or an array item.
enum Segment<'a> {
    Key(Cow<'a, str>),
    Item,
}

/// Whether `field` names `path` or one of its ancestors, through object keys only.
fn names(field: &[String], path: &[Segment]) -> bool {
    path.len() >= field.len()
        && field
            .iter()
            .zip(path)
            .all(|(part, segment)| matches!(segment, Segment::Key(key) if key == part))
}

/// Whether `allowed` is a prefix of the object keys of `path` (array items left out).
fn is_key_prefix(allowed: &[String], path: &[Segment]) -> bool {
    let mut keys = path.iter().filter_map(|s| match s {
        Segment::Key(key) => Some(key),
        Segment::Item => None,
    });
    allowed
        .iter()
        .all(|part| keys.next().is_some_and(|k| k == part))
}

/// Whether the document's root is an object with `"object": "list"` and an array `data`.
fn is_stripe_list(body: &[u8]) -> bool {
    let mut scan = Walk::scanner(body);
    scan.space();
    if scan.peek() != Some(b'{') {
        return false;
    }
    scan.pos += 1;
    let (mut list, mut data) = (false, false);
    scan.space();
    loop {
        let Some(key) = scan.member() else {
            return false;
        };
        match &body[key] {
            b"object" => {
                let Some(value) = scan.string() else {
                    return false;
                };
                list = &body[value] == b"list";
            }
            b"data" => {
                data = scan.peek() == Some(b'[');
                if scan.value(&mut Vec::new(), 0, false).is_none() {
                    return false;
                }
            }
            _ => {
                if scan.value(&mut Vec::new(), 0, false).is_none() {
                    return false;
                }
            }
        }
        if list && data {
            return true;
        }
        if scan.more(b'}') != Some(true) {
            return false;
        }
    }
}

/// A pass over a document: validates it, and writes it to `out` with masked values replaced.
struct Walk<'a, 'r> {
    input: &'a [u8],
    pos: usize,
    /// `input[..copied]` is in `out` (with replacements).
    copied: usize,
    out: Vec<u8>,
    count: usize,
    redaction: &'r Redaction,
    /// The root is a Stripe list: its `data` items are documents of their own.
    list: bool,
}

static NOTHING: Redaction = Redaction {
    fields: Vec::new(),
    allow: Vec::new(),
};

impl<'a> Walk<'a, 'static> {
    /// A walk that masks nothing, for looking around a document.
    fn scanner(input: &'a [u8]) -> Self {
        Walk {
            input,
            pos: 0,
            copied: 0,
            out: Vec::new(),
            count: 0,
            redaction: &NOTHING,
            list: false,
        }
    }
}

impl<'a> Walk<'a, '_> {
    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    /// Replaces `input[start..self.pos]` with `with` in the output.
    fn replace(&mut self, start: usize, with: &[u8]) {
        self.out.extend_from_slice(&self.input[self.copied..start]);
        self.out.extend_from_slice(with);
        self.copied = self.pos;
        self.count += 1;
    }

    /// One value at `path`. `relevant`: whether anything at or under `path` may be masked
    /// (when not, the value is only validated).
    fn value(&mut self, path: &mut Vec<Segment<'a>>, depth: usize, relevant: bool) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        let masked = relevant && self.redaction.masks(path);
        let start = self.pos;
        match self.peek()? {
            b'{' => {
                let below = relevant && (masked || self.redaction.leads_somewhere(path));
                self.object(path, depth, below)
            }
            b'[' => {
                let below = relevant && (masked || self.redaction.leads_somewhere(path));
                let items = if below {
                    Items::Relevant
                } else {
                    Items::Skipped
                };
                self.array(path, depth, items)
            }
            b'"' => {
                let content = self.string()?;
                if masked && &self.input[content] != b"[redacted]" {
                    self.replace(start, MASKED);
                }
                Some(())
            }
            b'n' => self.literal(b"null"),
            b't' | b'f' => {
                self.literal(if self.peek() == Some(b't') {
                    b"true"
                } else {
                    b"false"
                })?;
                if masked {
                    self.replace(start, b"null");
                }
                Some(())
            }
            _ => {
                self.number()?;
                if masked {
                    self.replace(start, b"null");
                }
                Some(())
            }
        }
    }

    fn object(&mut self, path: &mut Vec<Segment<'a>>, depth: usize, relevant: bool) -> Option<()> {
        let root_list = self.list && depth == 0;
        self.pos += 1;
        self.space();
        if self.peek()? == b'}' {
            self.pos += 1;
            return Some(());
        }
        loop {
            let key = self.member()?;
            if root_list && &self.input[key.clone()] == b"data" {
                // Each item of a list is a document of its own.
                self.array(&mut Vec::new(), depth, Items::Documents)?;
            } else if relevant && !root_list {
                path.push(Segment::Key(decode(&self.input[key])?));
                self.value(path, depth + 1, true)?;
                path.pop();
            } else {
                self.value(path, depth + 1, false)?;
            }
            if !self.more(b'}')? {
                return Some(());
            }
        }
    }

    fn array(&mut self, path: &mut Vec<Segment<'a>>, depth: usize, items: Items) -> Option<()> {
        (self.peek()? == b'[').then_some(())?;
        self.pos += 1;
        self.space();
        if self.peek()? == b']' {
            self.pos += 1;
            return Some(());
        }
        if items == Items::Relevant {
            path.push(Segment::Item);
        }
        loop {
            match items {
                Items::Documents => self.value(&mut Vec::new(), depth + 1, true)?,
                _ => self.value(path, depth + 1, items == Items::Relevant)?,
            }
            if !self.more(b']')? {
                break;
            }
        }
        if items == Items::Relevant {
            path.pop();
        }
        Some(())
    }

    /// An object member's key and colon; returns the key's content range, and leaves the
    /// position at the value.
    fn member(&mut self) -> Option<core::ops::Range<usize>> {
        let key = self.string()?;
        self.space();
        (self.peek()? == b':').then_some(())?;
        self.pos += 1;
        self.space();
        Some(key)
    }

    /// After a member or item: `true` past a comma (another follows), `false` past `close`.
    fn more(&mut self, close: u8) -> Option<bool> {
        self.space();
        let next = self.peek()?;
        self.pos += 1;
        if next == b',' {
            self.space();
            Some(true)
        } else {
            (next == close).then_some(false)
        }
    }

    /// A string; returns the range of its content (between the quotes, still escaped).
    fn string(&mut self) -> Option<core::ops::Range<usize>> {
        (self.peek()? == b'"').then_some(())?;
        self.pos += 1;
        let start = self.pos;
        loop {
            // Most of a string is plain text: find its next quote, escape or control byte.
            self.pos += self.input[self.pos..]
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
            match self.peek()? {
                b'"' => {
                    self.pos += 1;
                    return Some(start..self.pos - 1);
                }
                b'\\' => {
                    self.pos += 1;
                    match self.peek()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.pos += 1,
                        b'u' => {
                            let hex = self.input.get(self.pos + 1..self.pos + 5)?;
                            hex.iter().all(u8::is_ascii_hexdigit).then_some(())?;
                            self.pos += 5;
                        }
                        _ => return None,
                    }
                }
                // A control byte, which JSON strings may not hold.
                _ => return None,
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.input[self.pos..].starts_with(word).then_some(())?;
        self.pos += word.len();
        Some(())
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek()? {
            b'0' => self.pos += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            self.peek().filter(u8::is_ascii_digit)?;
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            self.peek().filter(u8::is_ascii_digit)?;
            self.digits();
        }
        Some(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
    }
}

/// A string's content, unescaped (borrowed when it has no escapes). `None` for escapes that do
/// not make a valid string (a lone surrogate).
fn decode(raw: &[u8]) -> Option<Cow<'_, str>> {
    let text = core::str::from_utf8(raw).ok()?;
    if !raw.contains(&b'\\') {
        return Some(Cow::Borrowed(text));
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'u' => {
                let first = hex4(&mut chars)?;
                let code = if (0xD800..0xDC00).contains(&first) {
                    (chars.next()? == '\\' && chars.next()? == 'u').then_some(())?;
                    let second = hex4(&mut chars)?;
                    (0xDC00..0xE000).contains(&second).then_some(())?;
                    0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
                } else {
                    first
                };
                out.push(char::from_u32(code)?);
            }
            other => out.push(other),
        }
    }
    Some(Cow::Owned(out))
}

/// The four hex digits of a `\\u` escape.
fn hex4(chars: &mut core::str::Chars) -> Option<u32> {
    u32::from_str_radix(chars.as_str().get(..4)?, 16)
        .ok()
        .inspect(|_| {
            chars.nth(3);
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn redact(body: &str, fields: &[&str], allow: &[&str]) -> Option<(String, usize)> {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (out, count) = Redaction::new(&owned(fields), &owned(allow)).apply(body.as_bytes())?;
        Some((String::from_utf8(out).expect("UTF-8"), count))
    }

    fn parsed(text: &str) -> Value {
        serde_json::from_str(text).expect("the output is JSON")
    }

    #[test]
    fn masks_fields_and_keeps_everything_else_byte_for_byte() {
        let body = r#"{ "id": "vs_1", "verified_outputs": {"first_name": "Jenny", "dob": {"day": 1, "year": 1990}, "none": null, "flag": true},
            "provided_details": {"email": "j@example.com"}, "n": 1.50e3 }"#;
        let (out, count) = redact(body, &["verified_outputs", "provided_details"], &[]).unwrap();
        assert_eq!(count, 5);
        assert_eq!(
            out,
            r#"{ "id": "vs_1", "verified_outputs": {"first_name": "[redacted]", "dob": {"day": null, "year": null}, "none": null, "flag": null},
            "provided_details": {"email": "[redacted]"}, "n": 1.50e3 }"#
        );
    }

    #[test]
    fn allowed_paths_and_dotted_fields() {
        let body = r#"{"verified_outputs": {"first_name": "Jenny", "last_name": "Rosen", "address": {"line1": "1 Main", "city": "X"}},
            "metadata": {"email": "a@b.c", "plan": "pro"}, "client_reference_id": "u_1"}"#;
        let (out, count) = redact(
            body,
            &["verified_outputs", "metadata.email", "client_reference_id"],
            &[
                "verified_outputs.first_name",
                "verified_outputs.address.city",
            ],
        )
        .unwrap();
        let out = parsed(&out);
        assert_eq!(out["verified_outputs"]["first_name"], "Jenny");
        assert_eq!(out["verified_outputs"]["last_name"], "[redacted]");
        assert_eq!(out["verified_outputs"]["address"]["line1"], "[redacted]");
        assert_eq!(out["verified_outputs"]["address"]["city"], "X");
        assert_eq!(
            out["metadata"],
            json!({"email": "[redacted]", "plan": "pro"})
        );
        assert_eq!(out["client_reference_id"], "[redacted]");
        assert_eq!(count, 4);
    }

    #[test]
    fn an_allowed_parent_does_not_cover_a_more_specific_field() {
        // `allow: verified_outputs` lets the field `verified_outputs` through, not the field
        // `verified_outputs.dob`, which is named on its own.
        let body = r#"{"verified_outputs": {"first_name": "J", "dob": {"day": 1}}}"#;
        let (out, count) = redact(
            body,
            &["verified_outputs", "verified_outputs.dob"],
            &["verified_outputs"],
        )
        .unwrap();
        assert_eq!(
            parsed(&out),
            json!({"verified_outputs": {"first_name": "J", "dob": {"day": null}}})
        );
        assert_eq!(count, 1);
    }

    #[test]
    fn arrays_are_transparent_below_a_field_but_not_above_it() {
        let body =
            r#"{"provided_details": {"phones": ["1", "2", {"n": 3}]}, "items": [{"secret": "s"}]}"#;
        let (out, count) = redact(body, &["provided_details", "items.secret"], &[]).unwrap();
        assert_eq!(
            parsed(&out),
            json!({"provided_details": {"phones": ["[redacted]", "[redacted]", {"n": null}]}, "items": [{"secret": "s"}]})
        );
        assert_eq!(count, 3);
    }

    #[test]
    fn lists_mask_each_item_and_nothing_else() {
        let body = r#"{"object": "list", "url": "/v1/x", "data": [
            {"id": "a", "verified_outputs": {"first_name": "A"}},
            {"id": "b", "verified_outputs": null},
            {"id": "c", "verified_outputs": {"first_name": "[redacted]", "last_name": "C"}}], "has_more": false}"#;
        let (out, count) = redact(body, &["verified_outputs", "url", "has_more"], &[]).unwrap();
        let out = parsed(&out);
        assert_eq!(
            out["data"][0]["verified_outputs"]["first_name"],
            "[redacted]"
        );
        assert_eq!(out["data"][1]["verified_outputs"], Value::Null);
        assert_eq!(
            out["data"][2]["verified_outputs"]["last_name"],
            "[redacted]"
        );
        assert_eq!(out["url"], "/v1/x", "not an item's field");
        assert_eq!(out["has_more"], false);
        assert_eq!(count, 2, "already redacted values are not counted");
        // `data` before `object`, and `data` that is not an array: not a list.
        let (out, _) =
            redact(r#"{"data": [{"url": 1}], "object": "list"}"#, &["url"], &[]).unwrap();
        assert_eq!(parsed(&out)["data"][0]["url"], Value::Null);
        let (out, count) = redact(
            r#"{"object": "list", "data": {"url": 1}, "url": "u"}"#,
            &["url"],
            &[],
        )
        .unwrap();
        assert_eq!(
            parsed(&out),
            json!({"object": "list", "data": {"url": 1}, "url": "[redacted]"})
        );
        assert_eq!(count, 1);
    }

    #[test]
    fn escaped_keys_match_their_text() {
        let body = r#"{"verified\u005foutputs": {"na\"me": "x"}, "caf\u00e9": "y"}"#;
        let (out, count) = redact(body, &["verified_outputs", "café"], &[]).unwrap();
        assert_eq!(count, 2);
        assert_eq!(
            parsed(&out),
            json!({"verified_outputs": {"na\"me": "[redacted]"}, "café": "[redacted]"})
        );
    }

    #[test]
    fn what_is_not_json_is_refused() {
        for bad in [
            "",
            "{",
            "{\"a\": }",
            "{\"a\": 1,}",
            "[1 2]",
            "{\"a\" 1}",
            "01",
            "1.",
            "-",
            "1e",
            "\"\\x\"",
            "\"\u{1}\"",
            "tru",
            "{} {}",
            "{\"a\": \"\\ud800\"}x",
            "nul",
        ] {
            assert!(redact(bad, &["a"], &[]).is_none(), "{bad:?}");
        }
        assert!(
            Redaction::new(&[], &[]).apply(b"\"\xff\"").is_none(),
            "not UTF-8"
        );
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(redact(&deep, &["a"], &[]).is_none(), "too deep");
        let ok = "[".repeat(100) + &"]".repeat(100);
        assert!(redact(&ok, &["a"], &[]).is_some());
    }

    #[test]
    fn agrees_with_serde_json_on_what_is_json() {
        for text in [
            "0",
            "-0.5e-3",
            "1E+2",
            "[]",
            "{}",
            " [ 1 , { \"a\" : [ true , false , null ] } ] ",
            "\"\\u00e9\\n\\/\"",
            "\"é\"",
            "[1,2",
            "{\"a\":1}}",
            "[01]",
            "[.5]",
            "[+1]",
            "[1.e3]",
            "[\"a\nb\"]",
            "{\"a\":tRue}",
        ] {
            let ours = redact(text, &["a"], &[]).is_some();
            let theirs = serde_json::from_str::<Value>(text).is_ok();
            assert_eq!(ours, theirs, "{text:?}");
        }
    }

    /// The masking as redact-pii first did it, on a parsed document (fields one after the other).
    fn reference(body: &mut Value, fields: &[String], allow: &[String]) -> usize {
        fn mask(value: &mut Value, path: &str, allow: &[String]) -> usize {
            if allow.iter().any(|a| a == path) {
                return 0;
            }
            match value {
                Value::Null => 0,
                Value::Object(map) => map
                    .iter_mut()
                    .map(|(k, v)| mask(v, &format!("{path}.{k}"), allow))
                    .sum(),
                Value::Array(items) => items.iter_mut().map(|v| mask(v, path, allow)).sum(),
                Value::String(s) if s == "[redacted]" => 0,
                Value::String(_) => {
                    *value = Value::String("[redacted]".into());
                    1
                }
                _ => {
                    *value = Value::Null;
                    1
                }
            }
        }
        fn object(object: &mut Value, fields: &[String], allow: &[String]) -> usize {
            let mut count = 0;
            'fields: for field in fields {
                let mut path: Vec<&str> = field.split('.').collect();
                let last = path.pop().unwrap();
                let mut node = &mut *object;
                for part in &path {
                    match node.get_mut(*part) {
                        Some(next) => node = next,
                        None => continue 'fields,
                    }
                }
                if let Some(value) = node.get_mut(last) {
                    count += mask(value, field, allow);
                }
            }
            count
        }
        let is_list = body.get("object").and_then(Value::as_str) == Some("list");
        match body.get_mut("data").and_then(Value::as_array_mut) {
            Some(items) if is_list => items
                .iter_mut()
                .map(|item| object(item, fields, allow))
                .sum(),
            _ => object(body, fields, allow),
        }
    }

    /// A small deterministic generator (xorshift).
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }

        fn key(&mut self) -> String {
            ["a", "b", "data", "object", "verified_outputs"][self.below(5) as usize].to_owned()
        }

        fn path(&mut self) -> String {
            (0..1 + self.below(3))
                .map(|_| self.key())
                .collect::<Vec<_>>()
                .join(".")
        }

        fn value(&mut self, depth: u32) -> Value {
            match self.below(if depth > 3 { 6 } else { 9 }) {
                0 => Value::Null,
                1 => json!(self.below(2) == 0),
                2 => json!(self.below(1000) as f64 / 8.0 - 40.0),
                3 => json!("[redacted]"),
                4 => json!("list"),
                5 => json!("text \"quoted\" é"),
                6 | 7 => Value::Object(
                    (0..self.below(4))
                        .map(|_| (self.key(), self.value(depth + 1)))
                        .collect(),
                ),
                _ => Value::Array((0..self.below(4)).map(|_| self.value(depth + 1)).collect()),
            }
        }
    }

    #[test]
    fn agrees_with_the_masking_on_a_parsed_document() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for case in 0..20_000 {
            let mut document = rng.value(0);
            if case % 3 == 0 {
                document = json!({"object": "list", "data": [rng.value(1), rng.value(1)], "a": rng.value(1)});
            }
            let fields: Vec<String> = (0..1 + rng.below(3)).map(|_| rng.path()).collect();
            let allow: Vec<String> = (0..rng.below(3)).map(|_| rng.path()).collect();
            let text = if case % 2 == 0 {
                serde_json::to_string(&document).unwrap()
            } else {
                serde_json::to_string_pretty(&document).unwrap()
            };
            let (out, count) = Redaction::new(&fields, &allow)
                .apply(text.as_bytes())
                .expect("JSON");
            let mut expected = document.clone();
            let expected_count = reference(&mut expected, &fields, &allow);
            let out: Value = serde_json::from_slice(&out).expect("the output is JSON");
            assert_eq!(
                (out, count),
                (expected, expected_count),
                "case {case}: {text} fields {fields:?} allow {allow:?}"
            );
        }
    }

    #[test]
    fn masked_documents_stay_json_and_the_same_apart_from_the_masked_values() {
        // A document of every kind of value, masked under every field it has: the output
        // parses and equals the input with exactly the masked values replaced.
        let body = json!({
            "a": {"s": "x", "n": -1.5, "t": true, "z": null, "arr": [1, "y", [false]], "o": {}},
            "b": [{"c": "keep"}], "d": "keep"
        });
        let text = serde_json::to_string_pretty(&body).unwrap();
        let (out, count) = redact(&text, &["a"], &["a.o"]).unwrap();
        assert_eq!(count, 6);
        assert_eq!(
            parsed(&out),
            json!({
                "a": {"s": "[redacted]", "n": null, "t": null, "z": null, "arr": [null, "[redacted]", [null]], "o": {}},
                "b": [{"c": "keep"}], "d": "keep"
            })
        );
        let (unchanged, none) = redact(&text, &["nothing.here"], &[]).unwrap();
        assert_eq!((unchanged.as_str(), none), (text.as_str(), 0));
    }
}
