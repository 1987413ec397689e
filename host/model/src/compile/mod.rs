//! From loaded files to a [`Snapshot`]: resolving references, templates, routes and collisions.
//!
//! Compilation is pure: no I/O, no clock, no environment. [`compile_file`] turns one loaded
//! file into a [`CompiledFile`] (its routes, tools and diagnostics); [`assemble`] merges compiled
//! files into listeners, resolving collisions by file path order. Keeping the two apart lets a
//! reload recompile only the files that changed.

mod auth;
mod consumes;
mod expose;
mod inputs;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{ListenConfig, TransformBinding, UpstreamOverride};
use crate::diag::{Code, Diagnostic, Diagnostics, Loc, Severity};
use crate::route::{Segment, canonical};
use crate::snapshot::{ListenKey, Listener, Location, McpAdapter, Origin, RestRoute, Snapshot};
use crate::spec::{DocumentBody, LoadedFile, ParamIn};

#[cfg(test)]
pub(crate) use inputs::input_spec;
pub use inputs::schema_for;

/// Settings that shape compilation (from the gateway config, never from spec files).
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub listen: ListenConfig,
    pub upstreams: Vec<UpstreamOverride>,
    /// Plugin bindings; an operation gets every binding that selects it, in config order.
    pub transforms: Vec<TransformBinding>,
    /// The plugin files the gateway has loaded, when it knows: a binding that selects an
    /// operation but names a file not among them is a warning on that operation. `None` (as in
    /// `capgate validate`) checks nothing.
    pub loaded_plugins: Option<BTreeSet<String>>,
    pub schemas: Schemas,
}

/// The schema sources compilation uses (`config.schemas`, with the files read).
#[derive(Debug, Clone)]
pub struct Schemas {
    pub stripe: bool,
    /// Namespace glob and description.
    pub sources: Vec<(String, Arc<crate::openapi::OpenApi>)>,
}

impl Default for Schemas {
    fn default() -> Self {
        Schemas {
            stripe: true,
            sources: Vec::new(),
        }
    }
}

impl Schemas {
    /// Reads the descriptions `config` names; one that cannot be read is reported and left out.
    pub fn load(config: &crate::config::SchemasConfig) -> (Schemas, Vec<String>) {
        let mut errors = Vec::new();
        let mut sources = Vec::new();
        for source in &config.sources {
            let parsed = crate::read::bytes(&source.file, 64 * 1024 * 1024)
                .map_err(|e| e.to_string())
                .and_then(|bytes| crate::openapi::OpenApi::parse(&bytes));
            match parsed {
                Ok(api) => sources.push((source.namespace.clone(), Arc::new(api))),
                Err(error) => errors.push(format!(
                    "schema source {} (for {}): {error}",
                    source.file.display(),
                    source.namespace
                )),
            }
        }
        (
            Schemas {
                stripe: config.stripe,
                sources,
            },
            errors,
        )
    }

    /// The descriptions for an adapter: its attached ones, then Stripe's for the Stripe profile.
    pub fn for_adapter(
        &self,
        adapter: &crate::snapshot::UpstreamAdapter,
    ) -> Vec<Arc<crate::openapi::OpenApi>> {
        let mut out: Vec<Arc<crate::openapi::OpenApi>> = self
            .sources
            .iter()
            .filter(|(glob, _)| consumes::namespace_matches(glob, &adapter.namespace))
            .map(|(_, api)| api.clone())
            .collect();
        if self.stripe && adapter.profile == crate::config::ProfileName::Stripe {
            out.extend(crate::openapi::stripe().iter().cloned());
        }
        out
    }
}

/// What kind of file a compiled file was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileKind {
    Capability,
    /// A standalone consumes document, used through imports.
    Consumes,
    NotCapability,
    /// Could not be read or parsed.
    Broken,
}

/// One file's contribution to the snapshot.
#[derive(Debug)]
pub struct CompiledFile {
    pub path: Arc<Path>,
    pub kind: FileKind,
    pub rest: Vec<PlannedRoute>,
    pub mcp: Vec<(ListenKey, Arc<McpAdapter>)>,
    pub diagnostics: Vec<Diagnostic>,
    /// Bound variables without a value that some served operation needs.
    pub missing_binds: BTreeSet<String>,
    /// Other files read to load this one.
    pub dependencies: Vec<PathBuf>,
}

impl CompiledFile {
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }

    /// The number of REST operations and MCP tools this file serves (before collisions).
    pub fn served_count(&self) -> (usize, usize) {
        (
            self.rest.len(),
            self.mcp.iter().map(|(_, a)| a.tools.len()).sum(),
        )
    }
}

/// A REST route before it is merged into a listener.
#[derive(Debug)]
pub struct PlannedRoute {
    pub listen: ListenKey,
    pub segments: Vec<Segment>,
    pub route: Arc<RestRoute>,
    pub at: Loc,
}

/// Where a parameter declared `in: <place>` is, on a request; `None` for `environment`.
/// A name as the corpus's generator may have respelled it: `-` and `_` alike, case ignored.
/// Two names with the same fold are meant to be one.
pub(crate) fn fold_spelling(name: &str) -> String {
    name.replace('-', "_").to_ascii_lowercase()
}

pub(crate) fn location_of(place: ParamIn) -> Option<Location> {
    match place {
        ParamIn::Query => Some(Location::Query),
        ParamIn::Path => Some(Location::Path),
        ParamIn::Header => Some(Location::Header),
        ParamIn::Cookie => Some(Location::Cookie),
        ParamIn::Body => Some(Location::Body),
        ParamIn::Environment => None,
    }
}

/// The capability name of a file: its name without the extension.
pub fn capability_name(path: &Path) -> Arc<str> {
    Arc::from(
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string()),
    )
}

/// Compiles one loaded file.
pub fn compile_file(loaded: &LoadedFile, options: &Options) -> CompiledFile {
    let mut diags = loaded.diagnostics.clone();
    let mut compiled = CompiledFile {
        path: loaded.path.clone(),
        kind: FileKind::Capability,
        rest: Vec::new(),
        mcp: Vec::new(),
        diagnostics: Vec::new(),
        missing_binds: BTreeSet::new(),
        dependencies: loaded.dependencies.clone(),
    };
    if loaded.fatal {
        compiled.kind = FileKind::Broken;
    } else {
        match &loaded.document.body {
            DocumentBody::Capability(capability) => {
                let origin = Origin {
                    file: loaded.path.clone(),
                    capability: capability_name(&loaded.path),
                    line: capability.at.line,
                };
                for unsupported in &capability.unsupported {
                    diags
                        .error(
                            Code::Unsupported,
                            &unsupported.at,
                            format!(
                                "`{}` is not served yet; the rest of the capability is",
                                unsupported.feature
                            ),
                        )
                        .found(unsupported.feature.clone());
                }
                let upstreams = consumes::compile(loaded, capability, options, &mut diags);
                let mut cx = expose::Context {
                    loaded,
                    origin,
                    upstreams: &upstreams,
                    options,
                    diags: &mut diags,
                    missing_binds: BTreeSet::new(),
                    enriched: 0,
                };
                let (rest, mcp) = expose::compile(&mut cx, capability);
                // One note per file for everything taken from the schema sources.
                let mut taken = Vec::new();
                if cx.enriched > 0 {
                    taken.push(format!("{} tool(s) announce the operation's request schema instead of an opaque body", cx.enriched));
                }
                let (query, body, ops) = consumes::described_params(&upstreams);
                let params = match (query, body) {
                    (0, 0) => None,
                    (query, 0) => Some(format!("{query} query parameter(s)")),
                    (0, body) => Some(format!("{body} body parameter(s)")),
                    (query, body) => Some(format!("{query} query and {body} body parameter(s)")),
                };
                if let Some(params) = params {
                    taken.push(format!(
                        "{params} of {ops} operation(s) that the file does not declare are added"
                    ));
                }
                if !taken.is_empty() {
                    cx.diags.info(
                        Code::SchemaSource,
                        &Loc::default(),
                        format!(
                            "from the upstream's OpenAPI description: {}",
                            taken.join("; ")
                        ),
                    );
                }
                compiled.missing_binds = cx.missing_binds;
                compiled.rest = rest;
                compiled.mcp = mcp;
            }
            DocumentBody::Consumes(_) => compiled.kind = FileKind::Consumes,
            DocumentBody::NotCapability => compiled.kind = FileKind::NotCapability,
        }
    }
    compiled.diagnostics = diags.into_grouped();
    compiled
        .diagnostics
        .sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    compiled
}

/// Resolves an adapter's listen address: the config's forced address, else the spec's, else the
/// config's default. `localhost` is the IPv4 loopback.
pub(crate) fn listen_address(
    spec: Option<&crate::spec::Spanned<String>>,
    listen: &ListenConfig,
    at: &Loc,
    diags: &mut Diagnostics,
) -> Option<IpAddr> {
    if let Some(forced) = listen.force_address {
        return Some(forced);
    }
    let Some(address) = spec else {
        return Some(listen.address);
    };
    match address.value.as_str() {
        "localhost" => Some(IpAddr::from([127, 0, 0, 1])),
        text => {
            match text.parse::<IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    diags
                    .error(Code::BadValue, &at.key("address", address.line), "listen address must be an IP address or `localhost`; adapter not served")
                    .found(text.to_owned())
                    .expected("an IP address such as 0.0.0.0 or 127.0.0.1, or localhost");
                    None
                }
            }
        }
    }
}

/// Merges compiled files into a snapshot. Files are taken in path order: a REST (method, path)
/// or MCP namespace on a listener goes to the first file that claims it, and every later claim
/// gets a warning naming both files. Returns the collision diagnostics by file.
pub fn assemble(
    files: &[Arc<CompiledFile>],
    generation: u64,
) -> (Snapshot, BTreeMap<Arc<Path>, Vec<Diagnostic>>) {
    let mut sorted: Vec<&Arc<CompiledFile>> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut listeners: BTreeMap<ListenKey, Listener> = BTreeMap::new();
    let mut collisions: BTreeMap<Arc<Path>, Vec<Diagnostic>> = BTreeMap::new();
    for file in sorted {
        let mut diags = Diagnostics::new(file.path.clone());
        for planned in &file.rest {
            let listener = listeners.entry(planned.listen).or_default();
            if let Err((_, existing)) = listener.rest.insert(
                planned.route.method.clone(),
                &planned.segments,
                planned.route.clone(),
            ) {
                let owner = &existing.operation.origin.file;
                let message = if owner == &file.path {
                    format!(
                        "REST route {} {} on {} is declared twice in this file; the first declaration serves it",
                        planned.route.method,
                        canonical(&planned.segments),
                        planned.listen
                    )
                } else {
                    format!(
                        "REST route {} {} on {} is also declared by {}, which sorts first and serves it",
                        planned.route.method,
                        canonical(&planned.segments),
                        planned.listen,
                        owner.display()
                    )
                };
                diags
                    .warning(Code::RouteCollision, &planned.at, message)
                    .found(planned.route.path.clone())
                    .expected(format!(
                        "a (method, path) no other file on port {} declares",
                        planned.listen.port
                    ));
            }
        }
        for (key, adapter) in &file.mcp {
            let listener = listeners.entry(*key).or_default();
            match listener.mcp.get(&adapter.namespace) {
                Some(existing) => {
                    let owner = &existing.origin.file;
                    let at = Loc::new(adapter.origin.line, "");
                    diags
                        .warning(Code::McpNamespaceCollision, &at, format!("MCP adapter `{}` on {} is also declared by {}, which sorts first and serves it", adapter.namespace, key, owner.display()))
                        .found(adapter.namespace.clone());
                }
                None => {
                    listener
                        .mcp
                        .insert(adapter.namespace.clone(), adapter.clone());
                }
            }
        }
        let found = diags.into_grouped();
        if !found.is_empty() {
            collisions.insert(file.path.clone(), found);
        }
    }
    let snapshot = Snapshot {
        generation,
        listeners: listeners
            .into_iter()
            .map(|(k, v)| (k, Arc::new(v)))
            .collect(),
    };
    (snapshot, collisions)
}
