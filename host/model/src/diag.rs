//! Diagnostics: what the spec engine says about a file, in the shape a compiler would.
//!
//! Every deviation from the format that capgate tolerates, and every part it refuses, becomes one
//! [`Diagnostic`] with the file, line, key path, what was found and what was expected. Nothing here
//! decides what is served; `compile` does that and records its reasons here.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

/// How much a diagnostic matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// A note, for example a YAML file in the folder that is not a capability.
    Info,
    /// A deviation that was tolerated with a stated meaning.
    Warning,
    /// The named part (operation, adapter, capability) is not served.
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// The kind of a finding: a stable identifier that tools and tests can match on, rendered in
/// kebab-case (`unknown-key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Code {
    BadJsonpath,
    BadPath,
    BadToolName,
    BadType,
    BadValue,
    BindFileCwd,
    BindFileInvalid,
    BindFileMissing,
    BindFileUnreadable,
    BodyOnGet,
    CoercedType,
    ConstantReference,
    DuplicateNamespace,
    DuplicateOperation,
    DuplicateTool,
    EmptyResource,
    IgnoredKey,
    ImportCapability,
    ImportInvalid,
    ImportMissingAdapter,
    ImportUnreadable,
    ListenFailed,
    McpNamespaceCollision,
    MissingBind,
    MissingKey,
    NameMismatch,
    NamePattern,
    NoAction,
    NotACapability,
    PathEncoded,
    PluginNotLoaded,
    RouteCollision,
    SchemaExtension,
    SchemaSource,
    StandaloneConsumes,
    TrailingSlash,
    UndeclaredPathVariable,
    UndeclaredVariable,
    UnknownKey,
    UnknownReference,
    UnknownVersion,
    UnknownWith,
    UnreadableFile,
    UnservedReference,
    Unsupported,
    ValueAsMapping,
    YamlSyntax,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BadJsonpath => "bad-jsonpath",
            Code::BadPath => "bad-path",
            Code::BadToolName => "bad-tool-name",
            Code::BadType => "bad-type",
            Code::BadValue => "bad-value",
            Code::BindFileCwd => "bind-file-cwd",
            Code::BindFileInvalid => "bind-file-invalid",
            Code::BindFileMissing => "bind-file-missing",
            Code::BindFileUnreadable => "bind-file-unreadable",
            Code::BodyOnGet => "body-on-get",
            Code::CoercedType => "coerced-type",
            Code::ConstantReference => "constant-reference",
            Code::DuplicateNamespace => "duplicate-namespace",
            Code::DuplicateOperation => "duplicate-operation",
            Code::DuplicateTool => "duplicate-tool",
            Code::EmptyResource => "empty-resource",
            Code::IgnoredKey => "ignored-key",
            Code::ImportCapability => "import-capability",
            Code::ImportInvalid => "import-invalid",
            Code::ImportMissingAdapter => "import-missing-adapter",
            Code::ImportUnreadable => "import-unreadable",
            Code::ListenFailed => "listen-failed",
            Code::McpNamespaceCollision => "mcp-namespace-collision",
            Code::MissingBind => "missing-bind",
            Code::MissingKey => "missing-key",
            Code::NameMismatch => "name-mismatch",
            Code::NamePattern => "name-pattern",
            Code::NoAction => "no-action",
            Code::NotACapability => "not-a-capability",
            Code::PathEncoded => "path-encoded",
            Code::PluginNotLoaded => "plugin-not-loaded",
            Code::RouteCollision => "route-collision",
            Code::SchemaExtension => "schema-extension",
            Code::SchemaSource => "schema-source",
            Code::StandaloneConsumes => "standalone-consumes",
            Code::TrailingSlash => "trailing-slash",
            Code::UndeclaredPathVariable => "undeclared-path-variable",
            Code::UndeclaredVariable => "undeclared-variable",
            Code::UnknownKey => "unknown-key",
            Code::UnknownReference => "unknown-reference",
            Code::UnknownVersion => "unknown-version",
            Code::UnknownWith => "unknown-with",
            Code::UnreadableFile => "unreadable-file",
            Code::UnservedReference => "unserved-reference",
            Code::Unsupported => "unsupported",
            Code::ValueAsMapping => "value-as-mapping",
            Code::YamlSyntax => "yaml-syntax",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One finding about one place in one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// The kind of finding, for example `unknown-key`.
    pub code: Code,
    pub file: Arc<Path>,
    /// 1-based line; 0 when the finding is about the whole file.
    pub line: u32,
    /// Key path inside the document, for example `capability.exposes[0].tools[2].call`.
    pub path: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub found: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// Further lines where the same finding was made (grouped to keep output readable).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub also_at: Vec<u32>,
}

impl Diagnostic {
    pub fn new(severity: Severity, code: Code, file: &Arc<Path>, at: &Loc) -> Self {
        Diagnostic {
            severity,
            code,
            file: file.clone(),
            line: at.line,
            path: at.path.clone(),
            message: String::new(),
            found: None,
            expected: None,
            also_at: Vec::new(),
        }
    }

    /// Records what the file had at this place.
    pub fn found(&mut self, found: impl Into<String>) -> &mut Self {
        self.found = Some(found.into());
        self
    }

    /// Records what the format (or capgate) expects at this place.
    pub fn expected(&mut self, expected: impl Into<String>) -> &mut Self {
        self.expected = Some(expected.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    /// Renders like a compiler: `warning[code]: message`, then `--> file:line`, the key path and
    /// the found/expected pair.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}[{}]: {}", self.severity, self.code, self.message)?;
        if self.line > 0 {
            writeln!(f, "  --> {}:{}", self.file.display(), self.line)?;
        } else {
            writeln!(f, "  --> {}", self.file.display())?;
        }
        if !self.path.is_empty() {
            writeln!(f, "   = at: {}", self.path)?;
        }
        if let Some(found) = &self.found {
            writeln!(f, "   = found: {found}")?;
        }
        if let Some(expected) = &self.expected {
            writeln!(f, "   = expected: {expected}")?;
        }
        if !self.also_at.is_empty() {
            let lines: Vec<String> = self.also_at.iter().map(u32::to_string).collect();
            writeln!(
                f,
                "   = also at {} more place(s), lines {}",
                self.also_at.len(),
                lines.join(", ")
            )?;
        }
        Ok(())
    }
}

/// Where a piece of a document came from: its line and its key path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Loc {
    pub line: u32,
    pub path: String,
}

impl Loc {
    pub fn new(line: u32, path: impl Into<String>) -> Self {
        Loc {
            line,
            path: path.into(),
        }
    }

    /// The location of `key` under this one, at `line`.
    pub fn key(&self, key: &str, line: u32) -> Loc {
        let path = if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        };
        Loc { line, path }
    }

    /// The location of item `index` of the list at this location.
    pub fn index(&self, index: usize, line: u32) -> Loc {
        Loc {
            line,
            path: format!("{}[{index}]", self.path),
        }
    }
}

/// Diagnostics collected for one file.
#[derive(Debug, Clone)]
pub struct Diagnostics {
    file: Arc<Path>,
    items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn new(file: Arc<Path>) -> Self {
        Diagnostics {
            file,
            items: Vec::new(),
        }
    }

    pub fn file(&self) -> &Arc<Path> {
        &self.file
    }

    pub fn error(&mut self, code: Code, at: &Loc, message: impl Into<String>) -> &mut Diagnostic {
        self.push(Severity::Error, code, at, message)
    }

    pub fn warning(&mut self, code: Code, at: &Loc, message: impl Into<String>) -> &mut Diagnostic {
        self.push(Severity::Warning, code, at, message)
    }

    pub fn info(&mut self, code: Code, at: &Loc, message: impl Into<String>) -> &mut Diagnostic {
        self.push(Severity::Info, code, at, message)
    }

    fn push(
        &mut self,
        severity: Severity,
        code: Code,
        at: &Loc,
        message: impl Into<String>,
    ) -> &mut Diagnostic {
        let mut diagnostic = Diagnostic::new(severity, code, &self.file, at);
        diagnostic.message = message.into();
        self.items.push(diagnostic);
        self.items.last_mut().expect("just pushed")
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|d| d.severity == Severity::Error)
    }

    pub fn extend(&mut self, other: impl IntoIterator<Item = Diagnostic>) {
        self.items.extend(other);
    }

    /// Groups findings that differ only by place (same severity, code, message, found and
    /// expected) into one diagnostic listing the other lines, so that a generated file with a
    /// thousand identical deviations reads as one finding.
    pub fn into_grouped(self) -> Vec<Diagnostic> {
        let mut out: Vec<Diagnostic> = Vec::with_capacity(self.items.len());
        let mut index = std::collections::HashMap::new();
        for diagnostic in self.items {
            let key = (
                diagnostic.severity,
                diagnostic.code,
                diagnostic.message.clone(),
                diagnostic.found.clone(),
                diagnostic.expected.clone(),
            );
            match index.get(&key) {
                Some(&i) => {
                    let first: &mut Diagnostic = &mut out[i];
                    if diagnostic.line != first.line && !first.also_at.contains(&diagnostic.line) {
                        first.also_at.push(diagnostic.line);
                    }
                }
                None => {
                    index.insert(key, out.len());
                    out.push(diagnostic);
                }
            }
        }
        out
    }
}

/// Counts of diagnostics by severity, for summaries.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub errors: usize,
    pub warnings: usize,
    pub infos: usize,
}

impl Tally {
    pub fn of<'a>(diagnostics: impl IntoIterator<Item = &'a Diagnostic>) -> Tally {
        let mut tally = Tally::default();
        for d in diagnostics {
            match d.severity {
                Severity::Error => tally.errors += 1,
                Severity::Warning => tally.warnings += 1,
                Severity::Info => tally.infos += 1,
            }
        }
        tally
    }
}

/// Turns a path into the shared form diagnostics carry.
pub fn file_id(path: impl Into<PathBuf>) -> Arc<Path> {
    Arc::from(path.into().into_boxed_path())
}
