//! `Pattern`: a glob of a consumers file or the gateway config (scopes, limits, `require`),
//! matched on every call. Most are `*` or a plain name; those are answered without the regex
//! engine a compiled glob runs, which costs more than the rest of a scope check.

use globset::{Glob, GlobMatcher};

/// A glob as written, and how it is matched.
#[derive(Debug, Clone)]
pub struct Pattern {
    text: String,
    matcher: Matcher,
}

#[derive(Debug, Clone)]
enum Matcher {
    /// `*`: anything, the empty name too.
    Any,
    /// No wildcard, class, alternative or escape: the name itself.
    Exact,
    Glob(GlobMatcher),
}

impl Pattern {
    /// `*`.
    pub fn any() -> Pattern {
        Pattern {
            text: "*".into(),
            matcher: Matcher::Any,
        }
    }

    /// Parses `text` as a glob (globset's syntax: `*`, `?`, `[...]`, `{a,b}`, `\` escapes).
    pub fn new(text: &str) -> Result<Pattern, globset::Error> {
        let matcher = if text == "*" {
            Matcher::Any
        } else if !text.contains(['*', '?', '[', ']', '{', '}', '\\']) {
            Matcher::Exact
        } else {
            Matcher::Glob(Glob::new(text)?.compile_matcher())
        };
        Ok(Pattern {
            text: text.to_owned(),
            matcher,
        })
    }

    pub fn is_match(&self, name: &str) -> bool {
        match &self.matcher {
            Matcher::Any => true,
            Matcher::Exact => self.text == name,
            Matcher::Glob(glob) => glob.is_match(name),
        }
    }

    /// The glob as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shortcuts answer as globset does, for the names a call can carry.
    #[test]
    fn a_pattern_matches_as_its_glob_does() {
        let names = [
            "",
            "identity-sessions",
            "identity-sessions-v2",
            "Identity-Sessions",
            "a/b",
            "retrieve_verification_session",
            "*",
            "ids.v1",
        ];
        for text in [
            "*",
            "identity-sessions",
            "identity-*",
            "*-sessions",
            "retrieve_*_session",
            "ids.v1",
            "a/b",
            "{identity,billing}-sessions",
            "identity-session?",
            "[Ii]dentity-sessions",
            "\\*",
            "",
        ] {
            let pattern = Pattern::new(text).expect("a valid glob");
            let glob = Glob::new(text).expect("a valid glob").compile_matcher();
            assert_eq!(pattern.as_str(), text);
            for name in names {
                assert_eq!(
                    pattern.is_match(name),
                    glob.is_match(name),
                    "{text:?} against {name:?}"
                );
            }
        }
        assert!(Pattern::any().is_match("anything/at all"));
        assert!(Pattern::new("[").is_err(), "an unclosed class is no glob");
    }
}
