//! Stripe's form encoding: nested objects and arrays in bracket notation.
//!
//! `metadata[order]=6735`, `options[document][allowed_types][0]=passport`, `expand[0]=a` (what
//! the official SDKs send) and `expand[]=a` (the docs' curl examples), with brackets raw or
//! percent-encoded. [`encode`] writes what the SDKs write; [`decode`] reads all of it into JSON.
//! The byte-level percent-encoding is `form_urlencoded`'s; the bracket structure is here.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde_json::{Map, Value};

/// How arrays are written by [`encode_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArrayStyle {
    /// `a[0]=x&a[1]=y`, as Stripe's SDKs send.
    Indexed,
    /// `a=x&a=y`, the common convention of other APIs for query strings.
    Repeated,
}

/// Encodes a JSON object as Stripe form data: booleans as `true`/`false`, numbers as text, `null`
/// and `""` as an empty value (Stripe's "unset"); empty objects and arrays are left out, as the
/// SDKs do.
pub fn encode(object: &Map<String, Value>) -> String {
    encode_with(object, ArrayStyle::Indexed)
}

/// Encodes with the given array style; nested objects always use brackets.
pub fn encode_with(object: &Map<String, Value>, style: ArrayStyle) -> String {
    let mut out = String::new();
    for (key, value) in object {
        write_pairs(&mut out, &escape(key), value, style);
    }
    out
}

/// Encodes one named value (a query parameter, say) and appends it to `out`.
pub fn append_pair(out: &mut String, name: &str, value: &Value, style: ArrayStyle) {
    write_pairs(out, &escape(name), value, style);
}

fn write_pairs(out: &mut String, key: &str, value: &Value, style: ArrayStyle) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                write_pairs(out, &format!("{key}[{}]", escape(k)), v, style);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                match (style, item) {
                    (ArrayStyle::Repeated, Value::Object(_) | Value::Array(_))
                    | (ArrayStyle::Indexed, _) => {
                        write_pairs(out, &format!("{key}[{i}]"), item, style)
                    }
                    (ArrayStyle::Repeated, _) => write_pairs(out, key, item, style),
                }
            }
        }
        scalar => {
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str(key);
            out.push('=');
            let text = scalar_text(scalar);
            out.extend(form_urlencoded::byte_serialize(text.as_bytes()));
        }
    }
}

fn escape(segment: &str) -> String {
    form_urlencoded::byte_serialize(segment.as_bytes()).collect()
}

/// The text of a scalar as Stripe expects it; `null` is the empty "unset" value.
pub fn scalar_text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => {
            let mut text = String::new();
            let _ = write!(text, "{other}");
            text
        }
    }
}

/// How deeply a decoded parameter may nest (`a[b][c]` is 3). Stripe's own objects nest a few
/// levels; the limit keeps a hostile key of a million brackets from recursing the decoder (and
/// the drop of what it built) off the end of the stack.
pub const MAX_DEPTH: usize = 32;

/// A form body or query string that cannot be read as nested parameters. Each names the
/// parameter, shortened to its first 100 characters (a name can be as long as the body).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error("invalid parameter name `{0}`: unbalanced brackets")]
    Brackets(String),
    #[error("parameter `{0}` is given both as a value and as a nested object or array")]
    Conflict(String),
    #[error("array index in `{0}` is too large")]
    Index(String),
    #[error("parameter `{0}` nests deeper than {MAX_DEPTH} levels")]
    Depth(String),
}

impl FormError {
    /// The (shortened) parameter name the error is about.
    pub fn name(&self) -> &str {
        match self {
            FormError::Brackets(name)
            | FormError::Conflict(name)
            | FormError::Index(name)
            | FormError::Depth(name) => name,
        }
    }
}

/// A parameter name as errors show it.
fn shown(key: &str) -> String {
    const LIMIT: usize = 100;
    match key.char_indices().nth(LIMIT) {
        Some((end, _)) => format!("{}...", &key[..end]),
        None => key.to_owned(),
    }
}

/// Decodes `a=1&b[c]=2&d[]=x&d[]=y&e[0]=z` into a JSON object. Every scalar is a string. A
/// plain key given more than once (`a=x&a=y`) becomes an array.
pub fn decode(input: &[u8]) -> Result<Map<String, Value>, FormError> {
    let mut root = Tree::Branch(Branch::default());
    for (key, value) in form_urlencoded::parse(input) {
        if key.is_empty() {
            continue;
        }
        let path = split_key(&key)?;
        insert(&mut root, &path, value.into_owned(), &key)?;
    }
    match into_value(root) {
        Value::Object(map) => Ok(map),
        _ => unreachable!("the root is a branch with named children"),
    }
}

/// One step of a bracketed key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Segment {
    Name(String),
    Index(usize),
    Append,
}

fn split_key(key: &str) -> Result<Vec<Segment>, FormError> {
    let bad = || FormError::Brackets(shown(key));
    let (base, mut rest) = match key.find('[') {
        Some(i) => (&key[..i], &key[i..]),
        None => (key, ""),
    };
    if base.is_empty() || base.contains(']') {
        return Err(bad());
    }
    let mut path = vec![Segment::Name(base.to_owned())];
    while !rest.is_empty() {
        if path.len() == MAX_DEPTH {
            return Err(FormError::Depth(shown(key)));
        }
        let inner_end = rest.find(']').ok_or_else(bad)?;
        if !rest.starts_with('[') {
            return Err(bad());
        }
        let inner = &rest[1..inner_end];
        if inner.contains('[') {
            return Err(bad());
        }
        path.push(if inner.is_empty() {
            Segment::Append
        } else if inner.bytes().all(|b| b.is_ascii_digit()) && inner.len() <= 4 {
            Segment::Index(inner.parse().map_err(|_| FormError::Index(shown(key)))?)
        } else if inner.bytes().all(|b| b.is_ascii_digit()) {
            return Err(FormError::Index(shown(key)));
        } else {
            Segment::Name(inner.to_owned())
        });
        rest = &rest[inner_end + 1..];
    }
    Ok(path)
}

/// The parsed structure before it is known whether a level is an array or an object.
#[derive(Debug)]
enum Tree {
    Leaf(String),
    Branch(Branch),
}

/// One level's children in the order given, with an index of the named and numbered ones, so
/// a body of a hundred thousand parameters decodes in linear time, not quadratic.
#[derive(Debug, Default)]
struct Branch {
    children: Vec<(Segment, Tree)>,
    index: HashMap<Segment, usize>,
    /// Whether some child is `[]` (an array element) or a name (an object field): a level
    /// cannot be both.
    appended: bool,
    named: bool,
    /// Whether a child is anything but an appended leaf (so not a repeated key's values).
    structured: bool,
}

impl Branch {
    fn get_mut(&mut self, segment: &Segment) -> Option<&mut Tree> {
        let &i = self.index.get(segment)?;
        Some(&mut self.children[i].1)
    }

    /// Adds a child; `None` if the level would then be both an array and an object.
    fn push(&mut self, segment: Segment, tree: Tree) -> Option<&mut Tree> {
        match &segment {
            Segment::Append if self.named => return None,
            Segment::Append => self.appended = true,
            Segment::Name(_) if self.appended => return None,
            Segment::Name(_) => self.named = true,
            Segment::Index(_) => {}
        }
        self.structured |= segment != Segment::Append || matches!(tree, Tree::Branch(_));
        if segment != Segment::Append {
            self.index.insert(segment.clone(), self.children.len());
        }
        self.children.push((segment, tree));
        Some(&mut self.children.last_mut().expect("just pushed").1)
    }

    /// Whether this level holds only the values of a repeated plain key (`a=x&a=y`).
    fn is_repeated_values(&self) -> bool {
        !self.structured
    }
}

fn insert(node: &mut Tree, path: &[Segment], value: String, key: &str) -> Result<(), FormError> {
    let Tree::Branch(branch) = node else {
        return Err(FormError::Conflict(shown(key)));
    };
    let (first, rest) = path
        .split_first()
        .expect("a key has at least its base name");
    if rest.is_empty() {
        let conflict = || FormError::Conflict(shown(key));
        let repeatable = matches!(first, Segment::Name(_));
        match branch.get_mut(first) {
            None => {
                branch
                    .push(first.clone(), Tree::Leaf(value))
                    .ok_or_else(conflict)?;
            }
            // A plain name given again collects its values in order.
            Some(Tree::Branch(values)) if repeatable && values.is_repeated_values() => {
                values.push(Segment::Append, Tree::Leaf(value));
            }
            Some(Tree::Branch(_)) => return Err(conflict()),
            Some(existing @ Tree::Leaf(_)) if repeatable => {
                let Tree::Leaf(previous) =
                    std::mem::replace(existing, Tree::Branch(Branch::default()))
                else {
                    unreachable!("matched a leaf")
                };
                let Tree::Branch(values) = existing else {
                    unreachable!("just replaced")
                };
                values.push(Segment::Append, Tree::Leaf(previous));
                values.push(Segment::Append, Tree::Leaf(value));
            }
            Some(Tree::Leaf(existing)) => *existing = value,
        }
        return Ok(());
    }
    // `a[][b]=1` starts a new element; consecutive keys of one element are not recoverable
    // from this notation, so each `[]` opens its own.
    let child = if first == &Segment::Append || branch.get_mut(first).is_none() {
        branch
            .push(first.clone(), Tree::Branch(Branch::default()))
            .ok_or_else(|| FormError::Conflict(shown(key)))?
    } else {
        branch.get_mut(first).expect("just checked")
    };
    match child {
        Tree::Leaf(_) => Err(FormError::Conflict(shown(key))),
        branch => insert(branch, rest, value, key),
    }
}

fn into_value(tree: Tree) -> Value {
    match tree {
        Tree::Leaf(text) => Value::String(text),
        Tree::Branch(Branch { children, .. }) => {
            let is_array = !children.is_empty()
                && children
                    .iter()
                    .all(|(s, _)| matches!(s, Segment::Index(_) | Segment::Append));
            if is_array {
                let mut indexed: Vec<(usize, usize, Tree)> = children
                    .into_iter()
                    .enumerate()
                    .map(|(order, (segment, tree))| match segment {
                        Segment::Index(i) => (i, order, tree),
                        _ => (usize::MAX, order, tree),
                    })
                    .collect();
                indexed.sort_by_key(|(i, order, _)| (*i, *order));
                Value::Array(indexed.into_iter().map(|(_, _, t)| into_value(t)).collect())
            } else {
                Value::Object(
                    children
                        .into_iter()
                        .map(|(segment, tree)| {
                            let key = match segment {
                                Segment::Name(name) => name,
                                Segment::Index(i) => i.to_string(),
                                Segment::Append => String::new(),
                            };
                            (key, into_value(tree))
                        })
                        .collect(),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn obj(value: Value) -> Map<String, Value> {
        value.as_object().expect("object").clone()
    }

    #[test]
    fn encodes_like_the_stripe_sdks() {
        let body = obj(json!({
            "type": "document",
            "metadata": {"order": "6735", "note": "a b&c"},
            "options": {"document": {"allowed_types": ["passport", "id_card"], "require_matching_selfie": true}},
            "client_reference_id": null,
            "return_url": "",
            "amount": 2000,
            "empty": {}
        }));
        assert_eq!(
            encode(&body),
            "type=document&metadata[order]=6735&metadata[note]=a+b%26c\
             &options[document][allowed_types][0]=passport&options[document][allowed_types][1]=id_card\
             &options[document][require_matching_selfie]=true&client_reference_id=&return_url=&amount=2000"
        );
    }

    #[test]
    fn repeated_style_for_plain_query_arrays() {
        let query = obj(json!({"expand": ["a", "b"], "created": {"gte": 1}}));
        assert_eq!(
            encode_with(&query, ArrayStyle::Repeated),
            "expand=a&expand=b&created[gte]=1"
        );
    }

    #[test]
    fn decodes_every_array_style_and_encoded_brackets() {
        let a = decode(b"expand[]=a&expand[]=b&created[gte]=1").unwrap();
        let b = decode(b"expand[0]=a&expand[1]=b&created%5Bgte%5D=1").unwrap();
        let c = decode(b"expand%5B%5D=a&expand%5B%5D=b&created[gte]=1").unwrap();
        let expected = obj(json!({"expand": ["a", "b"], "created": {"gte": "1"}}));
        assert_eq!(a, expected);
        assert_eq!(b, expected);
        assert_eq!(c, expected);
    }

    #[test]
    fn decodes_out_of_order_indexes_and_arrays_of_objects() {
        let v = decode(b"a[1]=y&a[0]=x&items[0][price]=p1&items[0][quantity]=2&items[1][price]=p2")
            .unwrap();
        assert_eq!(
            Value::Object(v),
            json!({"a": ["x", "y"], "items": [{"price": "p1", "quantity": "2"}, {"price": "p2"}]})
        );
    }

    #[test]
    fn empty_values_are_kept_as_unset() {
        let v = decode(b"metadata[k]=&metadata=").unwrap_err();
        assert_eq!(v, FormError::Conflict("metadata".into()));
        let v = decode(b"metadata[k]=").unwrap();
        assert_eq!(Value::Object(v), json!({"metadata": {"k": ""}}));
    }

    #[test]
    fn repeated_plain_keys_become_arrays() {
        let v = decode(b"status=a&status=b").unwrap();
        assert_eq!(Value::Object(v), json!({"status": ["a", "b"]}));
    }

    #[test]
    fn rejects_malformed_keys_naming_them() {
        assert_eq!(
            decode(b"a[b=1").unwrap_err(),
            FormError::Brackets("a[b".into())
        );
        assert_eq!(
            decode(b"[x]=1").unwrap_err(),
            FormError::Brackets("[x]".into())
        );
        assert_eq!(
            decode(b"a=1&a[b]=2").unwrap_err(),
            FormError::Conflict("a[b]".into())
        );
        assert!(matches!(
            decode(b"a[99999999]=1").unwrap_err(),
            FormError::Index(_)
        ));
    }

    #[test]
    fn a_key_repeated_many_times_keeps_every_value() {
        let v = decode(b"status=a&status=b&status=c").unwrap();
        assert_eq!(Value::Object(v), json!({"status": ["a", "b", "c"]}));
        assert_eq!(
            decode(b"a=x&a=y&a[b]=z").unwrap_err(),
            FormError::Conflict("a[b]".into())
        );
    }

    #[test]
    fn nesting_is_bounded_and_long_names_are_shortened_in_errors() {
        let fine = format!("a{}=1", "[b]".repeat(MAX_DEPTH - 1));
        assert!(decode(fine.as_bytes()).is_ok());
        let deep = format!("a{}=1", "[b]".repeat(MAX_DEPTH));
        assert!(matches!(decode(deep.as_bytes()), Err(FormError::Depth(_))));
        // A million levels: refused before any recursion, naming the start of the key only.
        let hostile = format!("a{}=1", "[b]".repeat(1_000_000));
        let error = decode(hostile.as_bytes()).unwrap_err();
        assert_eq!(error.name(), format!("a{}...", "[b]".repeat(33)));
        assert!(error.to_string().len() < 200, "{error}");
    }

    #[test]
    fn a_key_repeated_a_hundred_thousand_times_decodes() {
        let body = vec!["a=1"; 100_000].join("&");
        let decoded = decode(body.as_bytes()).unwrap();
        assert_eq!(decoded["a"].as_array().unwrap().len(), 100_000);
    }

    #[test]
    fn a_hundred_thousand_parameters_decode() {
        let body: Vec<String> = (0..100_000).map(|i| format!("k{i}={i}")).collect();
        let decoded = decode(body.join("&").as_bytes()).unwrap();
        assert_eq!(decoded.len(), 100_000);
        assert_eq!(decoded["k99999"], json!("99999"));
    }

    /// Values that the form notation can represent exactly: string leaves, non-empty
    /// containers, object keys that are not all digits and hold no brackets.
    fn representable() -> impl Strategy<Value = Value> {
        let leaf = "[a-zA-Z0-9 _.&=%+/?#\u{e9}-]{0,12}".prop_map(Value::String);
        let key = "[a-zA-Z_][a-zA-Z0-9_ .-]{0,8}";
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 1..4).prop_map(Value::Array),
                prop::collection::btree_map(key, inner, 1..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(map in prop::collection::btree_map("[a-zA-Z_][a-zA-Z0-9_]{0,8}", representable(), 0..5)) {
            let object: Map<String, Value> = map.into_iter().collect();
            let encoded = encode(&object);
            let decoded = decode(encoded.as_bytes()).expect("our own encoding decodes");
            prop_assert_eq!(Value::Object(decoded), Value::Object(object));
        }

        #[test]
        fn decode_never_panics(input in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&input);
        }
    }
}
