//! Reading capability files from disk: the YAML itself, the files it imports and its binds.
//!
//! This is the only part of the spec engine that does I/O. It returns a [`LoadedFile`] holding
//! the decoded document, the imported consumes adapters, the bound values (as secrets) and the
//! list of other files it read, so that the reload machinery knows what to watch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::decode;
use super::model::{Authentication, Consumes, Document, DocumentBody, HttpConsumes, Import};
use super::yaml;
use crate::diag::{Code, Diagnostics, Loc, file_id};
use crate::secret::Secret;

/// Format versions capgate reads as they are.
/// alpha3 (the framework's main branch) differs from alpha2 only in its version constant.
pub const SUPPORTED_VERSIONS: [&str; 3] = ["1.0.0-alpha1", "1.0.0-alpha2", "1.0.0-alpha3"];

/// One capability file after reading, with everything it pulled in.
#[derive(Debug, Clone)]
pub struct LoadedFile {
    pub path: Arc<Path>,
    pub document: Document,
    /// Imported adapters, already renamed (`as`), in the order of the `consumes` list.
    pub imports: Vec<ImportedAdapter>,
    /// Every bind variable and its value; `None` when the source lacks it.
    pub bound: BTreeMap<String, Option<Secret>>,
    /// Bind namespaces, so that `{{namespace.VAR}}` can be told from a caller input.
    pub bind_namespaces: Vec<String>,
    /// Other files this one read (imports, bind files): a change to any of them reloads this one.
    pub dependencies: Vec<PathBuf>,
    pub diagnostics: Diagnostics,
    /// The file could not be read or parsed at all.
    pub fatal: bool,
}

/// A consumes adapter loaded through `import`.
#[derive(Debug, Clone)]
pub struct ImportedAdapter {
    /// The file it came from.
    pub source: Arc<Path>,
    pub adapter: HttpConsumes,
}

/// Where bind variables without a `location` come from: explicit values first (the gateway
/// config's `env`), then, unless isolated, the process environment.
#[derive(Clone)]
pub struct Env {
    pub overrides: BTreeMap<String, String>,
    /// Read the process environment after the overrides.
    pub process: bool,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("overrides", &crate::secret::RedactedValues(&self.overrides))
            .field("process", &self.process)
            .finish()
    }
}

impl Default for Env {
    fn default() -> Self {
        Env {
            overrides: BTreeMap::new(),
            process: true,
        }
    }
}

impl Env {
    /// Only `overrides`, never the process environment (tests, reproducible validation).
    pub fn isolated(overrides: BTreeMap<String, String>) -> Env {
        Env {
            overrides,
            process: false,
        }
    }

    pub fn get(&self, key: &str) -> Option<String> {
        self.overrides
            .get(key)
            .cloned()
            .or_else(|| {
                if self.process {
                    std::env::var(key).ok()
                } else {
                    None
                }
            })
            .filter(|v| !v.is_empty())
    }
}

/// Reads and decodes the file at `path`.
pub fn load_file(path: &Path, env: &Env) -> LoadedFile {
    match crate::read::text(path, crate::read::SPEC_LIMIT) {
        Ok(text) => load_str(path, &text, env),
        Err(err) => {
            let mut loaded = empty(path);
            loaded.diagnostics.error(
                Code::UnreadableFile,
                &Loc::default(),
                format!("cannot read file: {err}"),
            );
            loaded.fatal = true;
            loaded
        }
    }
}

/// Decodes `text` as the file at `path` (imports and bind files are still read from disk,
/// relative to `path`).
pub fn load_str(path: &Path, text: &str, env: &Env) -> LoadedFile {
    let mut loaded = empty(path);
    let root = match yaml::parse(text) {
        Ok(root) => root,
        Err(err) => {
            loaded
                .diagnostics
                .error(
                    Code::YamlSyntax,
                    &Loc::new(err.line, ""),
                    format!("YAML syntax error: {}", err.message),
                )
                .found(format!("line {}, column {}", err.line, err.column));
            loaded.fatal = true;
            return loaded;
        }
    };
    if let Some(version) = successor_format(&root) {
        // The successor format renames and restructures keys: read as naftiko, it would be a
        // pile of unknown keys. One error says what it is instead.
        loaded
            .diagnostics
            .error(
                Code::UnknownVersion,
                &Loc::new(root.line, "ikanos"),
                "an Ikanos document (the successor of the naftiko format), which capgate does not read yet; not served",
            )
            .found(format!("ikanos: {version}"))
            .expected("naftiko: 1.0.0-alpha1, 1.0.0-alpha2 or 1.0.0-alpha3");
        loaded.fatal = true;
        return loaded;
    }
    loaded.document = decode::document(&root, &mut loaded.diagnostics);
    check_version(&mut loaded);
    if matches!(loaded.document.body, DocumentBody::Capability(_)) {
        resolve_imports(&mut loaded);
        resolve_binds(&mut loaded, env);
        resolve_undeclared_auth_variables(&mut loaded, env);
    }
    loaded
}

/// The version of a document in the successor format (an `ikanos` root key, no `naftiko`).
fn successor_format(root: &yaml::Node) -> Option<String> {
    let entries = root.entries()?;
    if entries.iter().any(|(key, _)| key.name == "naftiko") {
        return None;
    }
    let (_, version) = entries.iter().find(|(key, _)| key.name == "ikanos")?;
    Some(version.scalar_text().unwrap_or_default())
}

fn empty(path: &Path) -> LoadedFile {
    let id = file_id(path);
    LoadedFile {
        path: id.clone(),
        document: Document {
            version: None,
            info: Default::default(),
            binds: Vec::new(),
            body: DocumentBody::NotCapability,
        },
        imports: Vec::new(),
        bound: BTreeMap::new(),
        bind_namespaces: Vec::new(),
        dependencies: Vec::new(),
        diagnostics: Diagnostics::new(id),
        fatal: false,
    }
}

fn check_version(loaded: &mut LoadedFile) {
    let at = Loc::new(1, "naftiko");
    match (&loaded.document.version, &loaded.document.body) {
        (_, DocumentBody::NotCapability) => {
            loaded.diagnostics.info(
                Code::NotACapability,
                &Loc::default(),
                "not a capability (no `naftiko` with `capability` or `consumes`); ignored",
            );
        }
        (None, _) => {
            loaded
                .diagnostics
                .warning(
                    Code::MissingKey,
                    &at,
                    "missing `naftiko` format version; read as 1.0.0-alpha2",
                )
                .expected("`naftiko: 1.0.0-alpha2`");
        }
        (Some(version), _) if !SUPPORTED_VERSIONS.contains(&version.value.as_str()) => {
            loaded
                .diagnostics
                .warning(
                    Code::UnknownVersion,
                    &Loc::new(version.line, "naftiko"),
                    "unknown format version; read as 1.0.0-alpha2",
                )
                .found(version.value.clone())
                .expected("1.0.0-alpha1, 1.0.0-alpha2 or 1.0.0-alpha3");
        }
        _ => {}
    }
    if let DocumentBody::Consumes(_) = loaded.document.body {
        loaded.diagnostics.info(
            Code::StandaloneConsumes,
            &Loc::default(),
            "standalone consumes document: served only through the capabilities that import it",
        );
    }
}

fn resolve_imports(loaded: &mut LoadedFile) {
    let DocumentBody::Capability(capability) = &loaded.document.body else {
        return;
    };
    let base = loaded.path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let imports: Vec<Import> = capability
        .consumes
        .iter()
        .filter_map(|c| match c {
            Consumes::Import(import) => Some(import.clone()),
            _ => None,
        })
        .collect();
    for import in imports {
        let location = base.join(&import.location.value);
        loaded.dependencies.push(location.clone());
        if let Some(document) = read_import(loaded, &import, &location) {
            adopt_import(loaded, &import, &location, document);
        }
    }
}

/// Reads and decodes an imported file; its own diagnostics join the importing file's (they
/// name the imported file). `None` when it cannot be read or is not YAML: the adapter it was to
/// provide is not served, and a diagnostic at the `import` says so.
fn read_import(loaded: &mut LoadedFile, import: &Import, location: &Path) -> Option<Document> {
    let at = import.at.key("location", import.location.line);
    let text = match crate::read::text(location, crate::read::SPEC_LIMIT) {
        Ok(text) => text,
        Err(err) => {
            loaded
                .diagnostics
                .error(
                    Code::ImportUnreadable,
                    &at,
                    format!(
                        "cannot read imported file: {err}; adapter `{}` is not served",
                        import.namespace.value
                    ),
                )
                .found(location.display().to_string());
            return None;
        }
    };
    let mut imported_diags = Diagnostics::new(file_id(location));
    let document = match yaml::parse(&text) {
        Ok(root) => decode::document(&root, &mut imported_diags),
        Err(err) => {
            imported_diags.error(
                Code::YamlSyntax,
                &Loc::new(err.line, ""),
                format!("YAML syntax error: {}", err.message),
            );
            loaded.diagnostics.extend(imported_diags.into_grouped());
            loaded.diagnostics.error(
                Code::ImportInvalid,
                &at,
                format!(
                    "imported file is not valid YAML; adapter `{}` is not served",
                    import.namespace.value
                ),
            );
            return None;
        }
    };
    loaded.diagnostics.extend(imported_diags.into_grouped());
    Some(document)
}

/// Takes the adapter an import names from the imported document (renamed if the import says
/// so), with the document's binds the importing file does not declare itself.
fn adopt_import(loaded: &mut LoadedFile, import: &Import, location: &Path, document: Document) {
    let at = import.at.key("location", import.location.line);
    let adapters: Vec<&Consumes> = match &document.body {
        DocumentBody::Consumes(list) => list.iter().collect(),
        DocumentBody::Capability(capability) => {
            loaded
                .diagnostics
                .warning(Code::ImportCapability, &at, "imported file is a capability document, not a standalone consumes document; its consumes are used")
                .expected("a document with root `consumes`");
            capability.consumes.iter().collect()
        }
        DocumentBody::NotCapability => Vec::new(),
    };
    let found = adapters.into_iter().find_map(|c| match c {
        Consumes::Http(http) if http.namespace.value == import.namespace.value => {
            Some(http.clone())
        }
        _ => None,
    });
    let Some(mut adapter) = found else {
        loaded
            .diagnostics
            .error(
                Code::ImportMissingAdapter,
                &import.at.key("import", import.namespace.line),
                "imported file has no http consumes adapter with this namespace",
            )
            .found(import.namespace.value.clone())
            .expected(format!(
                "a `consumes` entry with `namespace: {}` in {}",
                import.namespace.value,
                location.display()
            ));
        return;
    };
    if let Some(rename) = &import.rename {
        adapter.namespace = rename.clone();
    }
    for bind in &document.binds {
        if !loaded
            .document
            .binds
            .iter()
            .any(|b| b.namespace == bind.namespace)
        {
            loaded.document.binds.push(bind.clone());
        }
    }
    loaded.imports.push(ImportedAdapter {
        source: file_id(location),
        adapter,
    });
}

fn resolve_binds(loaded: &mut LoadedFile, env: &Env) {
    let base = loaded.path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let binds = loaded.document.binds.clone();
    for bind in binds {
        loaded.bind_namespaces.push(bind.namespace.clone());
        let source = match &bind.location {
            None => BindSource::Environment,
            Some(location) => {
                let at = bind.at.key("location", location.line);
                match bind_file(&base, &location.value, &at, loaded) {
                    Some(values) => BindSource::File(values),
                    None => BindSource::Missing,
                }
            }
        };
        for (variable, key) in &bind.keys {
            if !is_screaming_snake(&variable.value) {
                loaded
                    .diagnostics
                    .warning(
                        Code::NamePattern,
                        &bind.at.key("keys", variable.line),
                        "bind variable is not SCREAMING_SNAKE_CASE; used as written",
                    )
                    .found(variable.value.clone())
                    .expected("a name like STRIPE_API_KEY");
            }
            let value = match &source {
                BindSource::Environment => env.get(key),
                BindSource::File(values) => values.get(key).cloned(),
                BindSource::Missing => None,
            };
            loaded
                .bound
                .insert(variable.value.clone(), value.map(Secret::new));
        }
    }
}

/// Authentication templates that name a variable no bind declares (`{{PIXELIXE_TOKEN}}` with no
/// `binds`) evidently mean the process environment: it is read from there, with a warning.
fn resolve_undeclared_auth_variables(loaded: &mut LoadedFile, env: &Env) {
    let DocumentBody::Capability(capability) = &loaded.document.body else {
        return;
    };
    let adapters = capability
        .consumes
        .iter()
        .filter_map(|c| match c {
            Consumes::Http(http) => Some(http),
            _ => None,
        })
        .chain(loaded.imports.iter().map(|i| &i.adapter));
    let mut undeclared = Vec::new();
    for adapter in adapters {
        let Some(auth) = &adapter.authentication else {
            continue;
        };
        let (texts, at): (Vec<&str>, &Loc) = match auth {
            Authentication::Bearer { token, at } => (vec![token], at),
            Authentication::ApiKey { value, at, .. } => (vec![value], at),
            Authentication::Basic {
                username,
                password,
                at,
            } => (vec![username, password], at),
            Authentication::Other { .. } => continue,
        };
        for text in texts {
            for placeholder in crate::template::placeholders(text) {
                let declared = loaded.bound.contains_key(&placeholder.name);
                let namespaced_elsewhere = placeholder
                    .namespace
                    .as_ref()
                    .is_some_and(|ns| !loaded.bind_namespaces.contains(ns));
                if !declared
                    && !namespaced_elsewhere
                    && !undeclared.iter().any(|(n, _)| n == &placeholder.name)
                {
                    undeclared.push((placeholder.name.clone(), at.clone()));
                }
            }
        }
    }
    for (name, at) in undeclared {
        loaded
            .diagnostics
            .warning(
                Code::UndeclaredVariable,
                &at,
                format!(
                    "`{{{{{name}}}}}` is not declared in `binds`; read from the process environment"
                ),
            )
            .expected(format!("a bind declaring {name}"));
        loaded
            .bound
            .insert(name.clone(), env.get(&name).map(Secret::new));
    }
}

enum BindSource {
    Environment,
    File(BTreeMap<String, String>),
    Missing,
}

/// Reads a `file://` bind source. `file:///./x` and `file:///../x` are the relative paths
/// `./x` and `../x` (how the format's own examples write them), resolved against the capability
/// file's directory; the reference engine used the working directory instead, so that is tried
/// second, with a warning.
fn bind_file(
    base: &Path,
    location: &str,
    at: &Loc,
    loaded: &mut LoadedFile,
) -> Option<BTreeMap<String, String>> {
    let Some(rest) = location.strip_prefix("file://") else {
        loaded
            .diagnostics
            .error(
                Code::BadValue,
                at,
                "bind location must be a file:// URI; its variables are unset",
            )
            .found(location.to_owned())
            .expected("file:///path/to/values.yaml or file:///./relative.yaml");
        return None;
    };
    let relative = rest
        .strip_prefix('/')
        .filter(|r| r.starts_with("./") || r.starts_with("../"));
    let candidates: Vec<PathBuf> = match relative {
        Some(relative) => vec![base.join(relative), PathBuf::from(relative)],
        None if Path::new(rest).is_absolute() => vec![PathBuf::from(rest)],
        None => vec![base.join(rest), PathBuf::from(rest)],
    };
    // Anything that exists is found, to be read (or refused: a FIFO, a device) below.
    let found = candidates.iter().position(|c| c.exists());
    let Some(index) = found else {
        loaded
            .diagnostics
            .warning(Code::BindFileMissing, at, "bind file not found; its variables are unset and the operations that need them answer 503")
            .found(location.to_owned())
            .expected(format!("a file at {}", candidates[0].display()));
        loaded.dependencies.push(candidates[0].clone());
        return None;
    };
    let path = candidates[index].clone();
    loaded.dependencies.push(path.clone());
    if index > 0 {
        loaded
            .diagnostics
            .warning(
                Code::BindFileCwd,
                at,
                "bind file found relative to the working directory, not to the capability file",
            )
            .found(path.display().to_string())
            .expected(format!("a file at {}", candidates[0].display()));
    }
    let text = match crate::read::text(&path, crate::read::SPEC_LIMIT) {
        Ok(text) => text,
        Err(err) => {
            loaded.diagnostics.error(
                Code::BindFileUnreadable,
                at,
                format!("cannot read bind file: {err}"),
            );
            return None;
        }
    };
    match serde_yaml::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(map)) => Some(
            map.into_iter()
                .filter_map(|(k, v)| match v {
                    serde_json::Value::String(s) => Some((k, s)),
                    serde_json::Value::Number(n) => Some((k, n.to_string())),
                    serde_json::Value::Bool(b) => Some((k, b.to_string())),
                    _ => None,
                })
                .collect(),
        ),
        Ok(_) => {
            loaded.diagnostics.error(
                Code::BindFileInvalid,
                at,
                "bind file must be a JSON or YAML mapping of keys to values",
            );
            None
        }
        Err(err) => {
            // The parser's message can quote the file's content, which may be secret: only its
            // position is reported.
            let position = err
                .location()
                .map(|l| format!("line {}, column {}", l.line(), l.column()))
                .unwrap_or_else(|| "unknown position".into());
            loaded.diagnostics.error(
                Code::BindFileInvalid,
                at,
                format!("bind file is not valid JSON or YAML (at {position})"),
            );
            None
        }
    }
}

fn is_screaming_snake(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}
