//! JSONPath selections for output mapping and exposed body parameters.
//!
//! Wraps `serde_json_path` (RFC 9535) and accepts the format's spellings of the root (`$` and
//! `$.`) and paths written without the leading `$`.

use serde_json::Value;
use serde_json_path::JsonPath;

/// A compiled selection.
#[derive(Debug, Clone)]
pub struct Selector {
    kind: Kind,
    text: String,
}

#[derive(Debug, Clone)]
enum Kind {
    Root,
    /// A path that selects at most one node.
    Single(JsonPath),
    /// A path with wildcards, descendants, filters or slices: selects a list.
    Many(JsonPath),
}

impl PartialEq for Selector {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Selector {
    /// Parses a path; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Selector, String> {
        let trimmed = text.trim();
        let kind = match trimmed {
            "$" | "$." | "" | "." => Kind::Root,
            _ => {
                let normalized = if trimmed.starts_with('$') {
                    trimmed.to_owned()
                } else if trimmed.starts_with('[') {
                    format!("${trimmed}")
                } else {
                    format!("$.{}", trimmed.trim_start_matches('.'))
                };
                let path = JsonPath::parse(&normalized).map_err(|e| e.to_string())?;
                let many = normalized.contains('*')
                    || normalized.contains("..")
                    || normalized.contains("[?")
                    || normalized.contains(':')
                    || normalized.contains(',');
                if many {
                    Kind::Many(path)
                } else {
                    Kind::Single(path)
                }
            }
        };
        Ok(Selector {
            kind,
            text: trimmed.to_owned(),
        })
    }

    pub fn root() -> Selector {
        Selector {
            kind: Kind::Root,
            text: "$".into(),
        }
    }

    pub fn is_root(&self) -> bool {
        matches!(self.kind, Kind::Root)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The selected value: the node itself for single paths (`None` when nothing matches), an
    /// array of matches for the others.
    pub fn select<'v>(&self, value: &'v Value) -> Option<std::borrow::Cow<'v, Value>> {
        use std::borrow::Cow;
        match &self.kind {
            Kind::Root => Some(Cow::Borrowed(value)),
            Kind::Single(path) => path.query(value).first().map(Cow::Borrowed),
            Kind::Many(path) => Some(Cow::Owned(Value::Array(
                path.query(value).all().into_iter().cloned().collect(),
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn root_spellings_and_paths() {
        let doc = json!({"a": {"b": [1, {"c": "x"}]}, "list": [{"id": 1}, {"id": 2}]});
        for root in ["$", "$.", ""] {
            assert!(Selector::parse(root).unwrap().is_root());
        }
        let p = Selector::parse("$.a.b[1].c").unwrap();
        assert_eq!(p.select(&doc).unwrap().as_ref(), &json!("x"));
        let p = Selector::parse("a.b[0]").unwrap();
        assert_eq!(p.select(&doc).unwrap().as_ref(), &json!(1));
        let p = Selector::parse("$.list[*].id").unwrap();
        assert_eq!(p.select(&doc).unwrap().as_ref(), &json!([1, 2]));
        assert!(Selector::parse("$.nope").unwrap().select(&doc).is_none());
        assert!(Selector::parse("$.[").is_err());
    }
}
