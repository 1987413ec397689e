//! A small owned YAML tree that remembers the line of every node.
//!
//! Capability files are read leniently (see `spec::decode`), which needs the line of every key
//! to report deviations precisely. This module turns `saphyr`'s marked nodes into [`Node`] and
//! knows nothing about the capability format.

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};
use serde_json::Value;

/// One YAML node with its 1-based line.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub line: u32,
    pub value: NodeValue,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Keys in document order; non-string keys are rendered to strings.
    Map(Vec<(Key, Node)>),
}

/// A mapping key and its line.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub name: String,
    pub line: u32,
}

/// A YAML syntax error with its position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SyntaxError {
    pub line: u32,
    pub column: u32,
    pub message: String,
}

/// Parses the first document of `source`; an empty stream is `Null`.
pub fn parse(source: &str) -> Result<Node, SyntaxError> {
    let documents = MarkedYaml::load_from_str(source).map_err(|e| SyntaxError {
        line: e.marker().line() as u32,
        column: e.marker().col() as u32 + 1,
        message: e.info().to_owned(),
    })?;
    Ok(match documents.into_iter().next() {
        Some(document) => convert(&document),
        None => Node {
            line: 1,
            value: NodeValue::Null,
        },
    })
}

fn convert(node: &MarkedYaml<'_>) -> Node {
    let line = node.span.start.line() as u32;
    let value = match &node.data {
        YamlData::Value(scalar) => scalar_value(scalar),
        YamlData::Representation(text, _, _) => NodeValue::Str(text.to_string()),
        YamlData::Tagged(_, inner) => return convert(inner),
        YamlData::Sequence(items) => NodeValue::Seq(items.iter().map(convert).collect()),
        YamlData::Mapping(entries) => NodeValue::Map(
            entries
                .iter()
                .map(|(k, v)| {
                    let key = Key {
                        name: key_text(k),
                        line: k.span.start.line() as u32,
                    };
                    (key, convert(v))
                })
                .collect(),
        ),
        YamlData::Alias(_) | YamlData::BadValue => NodeValue::Null,
    };
    Node { line, value }
}

fn scalar_value(scalar: &Scalar<'_>) -> NodeValue {
    match scalar {
        Scalar::Null => NodeValue::Null,
        Scalar::Boolean(b) => NodeValue::Bool(*b),
        Scalar::Integer(i) => NodeValue::Int(*i),
        Scalar::FloatingPoint(f) => NodeValue::Float(f.into_inner()),
        Scalar::String(s) => NodeValue::Str(s.to_string()),
    }
}

fn key_text(key: &MarkedYaml<'_>) -> String {
    match &key.data {
        YamlData::Value(Scalar::String(s)) => s.to_string(),
        YamlData::Value(Scalar::Integer(i)) => i.to_string(),
        YamlData::Value(Scalar::Boolean(b)) => b.to_string(),
        YamlData::Value(Scalar::FloatingPoint(f)) => f.to_string(),
        YamlData::Value(Scalar::Null) => "null".to_owned(),
        YamlData::Representation(text, _, _) => text.to_string(),
        _ => "<complex key>".to_owned(),
    }
}

impl Node {
    /// A short human name of this node's kind, for "found ..." in diagnostics.
    pub fn kind(&self) -> &'static str {
        match self.value {
            NodeValue::Null => "null",
            NodeValue::Bool(_) => "a boolean",
            NodeValue::Int(_) => "an integer",
            NodeValue::Float(_) => "a number",
            NodeValue::Str(_) => "a string",
            NodeValue::Seq(_) => "a list",
            NodeValue::Map(_) => "a mapping",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            NodeValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The scalar as text, for fields that accept any scalar (a port written as a string, say).
    pub fn scalar_text(&self) -> Option<String> {
        match &self.value {
            NodeValue::Str(s) => Some(s.clone()),
            NodeValue::Int(i) => Some(i.to_string()),
            NodeValue::Float(f) => Some(f.to_string()),
            NodeValue::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    pub fn entries(&self) -> Option<&[(Key, Node)]> {
        match &self.value {
            NodeValue::Map(entries) => Some(entries),
            _ => None,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entries()?
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| v)
    }

    /// This node as JSON (mappings keep their document order).
    pub fn to_json(&self) -> Value {
        match &self.value {
            NodeValue::Null => Value::Null,
            NodeValue::Bool(b) => Value::Bool(*b),
            NodeValue::Int(i) => Value::from(*i),
            NodeValue::Float(f) => serde_json::Number::from_f64(*f)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            NodeValue::Str(s) => Value::String(s.clone()),
            NodeValue::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            NodeValue::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.name.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_lines_and_types() {
        let node = parse("# c\n---\na: 1\nb:\n  - 'x'\n  - true\nc: \"8080\"\n").unwrap();
        let entries = node.entries().unwrap();
        assert_eq!(entries[0].0.name, "a");
        assert_eq!(entries[0].0.line, 3);
        assert_eq!(entries[0].1.value, NodeValue::Int(1));
        let b = node.get("b").unwrap();
        let NodeValue::Seq(items) = &b.value else {
            panic!("b is a list")
        };
        assert_eq!(items[0].line, 5);
        assert_eq!(items[1].value, NodeValue::Bool(true));
        assert_eq!(node.get("c").unwrap().value, NodeValue::Str("8080".into()));
    }

    #[test]
    fn reports_syntax_errors_with_position() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.line >= 1, "{err:?}");
        assert!(!err.message.is_empty());
    }
}
