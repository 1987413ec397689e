//! `{{...}}` templates: the format's Mustache-like placeholders.
//!
//! A template is parsed once at compile time into literal text and references. Each reference
//! is resolved at compile time to either a caller input or a bound variable ([`Ref`]), so that
//! rendering on the request path is a lookup, never a guess.

use std::borrow::Cow;

use serde_json::{Map, Value};

/// What a `{{...}}` placeholder refers to, decided at compile time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Ref {
    /// A caller input by name (a path variable, query parameter, body field or tool argument).
    Input(String),
    /// A variable from `binds`.
    Bind(String),
    /// A value of the calling consumer's `metadata` (`{{consumer.stripe_account}}`): absent
    /// when no consumer calls or it has no such value. Sealed like a bound value.
    Consumer(String),
}

/// A placeholder as written: `{{name}}` or `{{namespace.name}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder {
    pub namespace: Option<String>,
    pub name: String,
}

impl Placeholder {
    fn parse(text: &str) -> Placeholder {
        let text = text.trim();
        match text.split_once('.') {
            Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() => Placeholder {
                namespace: Some(namespace.to_owned()),
                name: name.to_owned(),
            },
            _ => Placeholder {
                namespace: None,
                name: text.to_owned(),
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Ref(Ref),
}

/// A compiled template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// Where rendering finds values.
pub trait Scope {
    fn input(&self, name: &str) -> Option<&Value>;
    fn bound(&self, variable: &str) -> Option<&str>;
    /// A value of the calling consumer's metadata.
    fn consumer(&self, _key: &str) -> Option<&str> {
        None
    }
}

/// The scope of templates that may name only bound variables (credentials, an adapter's fixed
/// values): no inputs, no consumer.
pub struct BindScope<'a>(pub &'a std::collections::BTreeMap<String, Option<crate::secret::Secret>>);

impl Scope for BindScope<'_> {
    fn input(&self, _: &str) -> Option<&Value> {
        None
    }

    fn bound(&self, variable: &str) -> Option<&str> {
        self.0
            .get(variable)?
            .as_ref()
            .map(crate::secret::Secret::expose)
    }
}

/// The placeholders of `text`, in order; `None` when `text` has no `{{`.
pub fn placeholders(text: &str) -> Vec<Placeholder> {
    split(text)
        .into_iter()
        .filter_map(|piece| match piece {
            Piece::Placeholder(p) => Some(p),
            Piece::Text(_) => None,
        })
        .collect()
}

/// Whether `text` contains a placeholder.
pub fn has_placeholders(text: &str) -> bool {
    text.contains("{{") && !placeholders(text).is_empty()
}

enum Piece {
    Text(String),
    Placeholder(Placeholder),
}

fn split(text: &str) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start + 2..].find("}}") else {
            break;
        };
        if start > 0 {
            pieces.push(Piece::Text(rest[..start].to_owned()));
        }
        pieces.push(Piece::Placeholder(Placeholder::parse(
            &rest[start + 2..start + 2 + len],
        )));
        rest = &rest[start + 2 + len + 2..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_owned()));
    }
    pieces
}

impl Template {
    /// Parses `text`, resolving each placeholder with `resolve`.
    pub fn compile(text: &str, mut resolve: impl FnMut(&Placeholder) -> Ref) -> Template {
        let parts = split(text)
            .into_iter()
            .map(|piece| match piece {
                Piece::Text(t) => Part::Text(t),
                Piece::Placeholder(p) => Part::Ref(resolve(&p)),
            })
            .collect();
        Template { parts }
    }

    /// A template that renders `text` as it is.
    pub fn literal(text: &str) -> Template {
        Template {
            parts: vec![Part::Text(text.to_owned())],
        }
    }

    pub fn refs(&self) -> impl Iterator<Item = &Ref> {
        self.parts.iter().filter_map(|p| match p {
            Part::Ref(r) => Some(r),
            Part::Text(_) => None,
        })
    }

    /// Whether rendering reads a bound variable or a consumer's value (so the result may hold
    /// a secret).
    pub fn reads_binds(&self) -> bool {
        self.refs()
            .any(|r| matches!(r, Ref::Bind(_) | Ref::Consumer(_)))
    }

    /// The template is exactly one placeholder (so it can render to a non-string value).
    pub fn single_ref(&self) -> Option<&Ref> {
        match self.parts.as_slice() {
            [Part::Ref(r)] => Some(r),
            _ => None,
        }
    }

    /// Renders to text. `None` when the template is a single placeholder whose value is absent
    /// (so the caller can leave the parameter out); absent values inside longer text render
    /// empty.
    pub fn render_text<'a>(&'a self, scope: &'a dyn Scope) -> Option<Cow<'a, str>> {
        match self.parts.as_slice() {
            [Part::Text(t)] => return Some(Cow::Borrowed(t)),
            [Part::Ref(r)] => return lookup(r, scope).map(|v| Cow::Owned(value_text(&v))),
            _ => {}
        }
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Ref(r) => {
                    if let Some(v) = lookup(r, scope) {
                        out.push_str(&value_text(&v));
                    }
                }
            }
        }
        Some(Cow::Owned(out))
    }

    /// Renders to a JSON value: a single placeholder keeps its value's type (an integer stays an
    /// integer); anything else is a string. `None` when a single placeholder is absent.
    pub fn render_value(&self, scope: &dyn Scope) -> Option<Value> {
        if let Some(r) = self.single_ref() {
            return lookup(r, scope).map(Cow::into_owned);
        }
        self.render_text(scope)
            .map(|t| Value::String(t.into_owned()))
    }
}

fn lookup<'a>(r: &Ref, scope: &'a dyn Scope) -> Option<Cow<'a, Value>> {
    match r {
        Ref::Input(name) => scope.input(name).map(Cow::Borrowed),
        Ref::Bind(variable) => scope
            .bound(variable)
            .map(|v| Cow::Owned(Value::String(v.to_owned()))),
        Ref::Consumer(key) => scope
            .consumer(key)
            .map(|v| Cow::Owned(Value::String(v.to_owned()))),
    }
}

/// A value as template text: strings as they are, everything else as JSON.
pub fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A JSON value whose strings are templates (a `body: {type: json, data: ...}`, a mock output).
#[derive(Debug, Clone, PartialEq)]
pub enum ValueTemplate {
    Constant(Value),
    Template(Template),
    Array(Vec<ValueTemplate>),
    Object(Vec<(String, ValueTemplate)>),
}

impl ValueTemplate {
    pub fn compile(value: &Value, resolve: &mut impl FnMut(&Placeholder) -> Ref) -> ValueTemplate {
        match value {
            Value::String(s) if has_placeholders(s) => {
                ValueTemplate::Template(Template::compile(s, &mut *resolve))
            }
            Value::Array(items) => {
                ValueTemplate::Array(items.iter().map(|v| Self::compile(v, resolve)).collect())
            }
            Value::Object(map) => ValueTemplate::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), Self::compile(v, resolve)))
                    .collect(),
            ),
            other => ValueTemplate::Constant(other.clone()),
        }
    }

    pub fn refs(&self) -> Vec<&Ref> {
        let mut out = Vec::new();
        self.collect_refs(&mut out);
        out
    }

    fn collect_refs<'a>(&'a self, out: &mut Vec<&'a Ref>) {
        match self {
            ValueTemplate::Constant(_) => {}
            ValueTemplate::Template(t) => out.extend(t.refs()),
            ValueTemplate::Array(items) => items.iter().for_each(|i| i.collect_refs(out)),
            ValueTemplate::Object(entries) => entries.iter().for_each(|(_, v)| v.collect_refs(out)),
        }
    }

    /// Renders the value; object fields whose template is a single absent placeholder are left
    /// out (so an optional `{{tools.customer}}` is not sent as an empty "unset" value).
    pub fn render(&self, scope: &dyn Scope) -> Option<Value> {
        match self {
            ValueTemplate::Constant(v) => Some(v.clone()),
            ValueTemplate::Template(t) => t.render_value(scope),
            ValueTemplate::Array(items) => Some(Value::Array(
                items.iter().filter_map(|i| i.render(scope)).collect(),
            )),
            ValueTemplate::Object(entries) => {
                let mut map = Map::new();
                for (k, v) in entries {
                    if let Some(value) = v.render(scope) {
                        map.insert(k.clone(), value);
                    }
                }
                Some(Value::Object(map))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct TestScope(Map<String, Value>);

    impl Scope for TestScope {
        fn input(&self, name: &str) -> Option<&Value> {
            self.0.get(name)
        }
        fn bound(&self, variable: &str) -> Option<&str> {
            (variable == "TOKEN").then_some("t0k")
        }
    }

    fn resolve(p: &Placeholder) -> Ref {
        if p.name == "TOKEN" {
            Ref::Bind(p.name.clone())
        } else {
            Ref::Input(p.name.clone())
        }
    }

    #[test]
    fn parses_namespaced_and_plain_placeholders() {
        assert_eq!(
            placeholders("a {{env.STRIPE_API_KEY}} b {{ x }}"),
            vec![
                Placeholder {
                    namespace: Some("env".into()),
                    name: "STRIPE_API_KEY".into()
                },
                Placeholder {
                    namespace: None,
                    name: "x".into()
                },
            ]
        );
        assert!(!has_placeholders("no {{ end"));
    }

    #[test]
    fn renders_text_values_and_absence() {
        let scope = TestScope(
            json!({"amount": 2000, "s": "v"})
                .as_object()
                .unwrap()
                .clone(),
        );
        let t = Template::compile("Bearer {{TOKEN}}", resolve);
        assert_eq!(t.render_text(&scope).unwrap(), "Bearer t0k");
        let t = Template::compile("{{amount}}", resolve);
        assert_eq!(t.render_value(&scope), Some(json!(2000)));
        let t = Template::compile("{{missing}}", resolve);
        assert_eq!(t.render_value(&scope), None);
        let t = Template::compile("x-{{missing}}-{{s}}", resolve);
        assert_eq!(t.render_text(&scope).unwrap(), "x--v");
    }

    #[test]
    fn value_templates_leave_out_absent_fields() {
        let scope = TestScope(
            json!({"amount": 5, "currency": "usd"})
                .as_object()
                .unwrap()
                .clone(),
        );
        let data = json!({"amount": "{{tools.amount}}", "currency": "{{tools.currency}}", "customer": "{{tools.customer}}", "fixed": 1});
        let t = ValueTemplate::compile(&data, &mut |p| Ref::Input(p.name.clone()));
        assert_eq!(
            t.render(&scope),
            Some(json!({"amount": 5, "currency": "usd", "fixed": 1}))
        );
    }
}
