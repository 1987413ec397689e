//! `capgate validate`: load and compile files exactly as `serve` does, and report.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};

use crate::compile::{self, FileKind};
use crate::diag::{Code, Diagnostic, Tally};
use crate::spec::{self, Env};

/// The result of validating a set of files.
#[derive(Debug)]
pub struct Summary {
    pub files: Vec<FileReport>,
    pub tally: Tally,
}

#[derive(Debug)]
pub struct FileReport {
    pub path: PathBuf,
    pub kind: FileKind,
    pub diagnostics: Vec<Diagnostic>,
}

/// Validates files and folders together, as one gateway would serve them (so collisions between
/// them are reported too).
pub fn validate(paths: &[PathBuf]) -> Summary {
    let mut files = Vec::new();
    let mut unreadable = Vec::new();
    for path in paths {
        if path.is_dir() {
            match spec::list_files(path) {
                Ok(found) => files.extend(found),
                Err(error) => unreadable.push((path.clone(), error.to_string())),
            }
        } else {
            files.push(path.clone());
        }
    }
    files.sort();
    files.dedup();
    let env = Env::default();
    let options = compile::Options::default();
    let compiled: Vec<Arc<compile::CompiledFile>> = files
        .iter()
        .map(|path| {
            Arc::new(compile::compile_file(
                &spec::load_file(path, &env),
                &options,
            ))
        })
        .collect();
    let (_, mut collisions) = compile::assemble(&compiled, 0);
    let mut reports: Vec<FileReport> = compiled
        .iter()
        .map(|file| {
            let mut diagnostics = file.diagnostics.clone();
            if let Some(extra) = collisions.remove(&file.path) {
                diagnostics.extend(extra);
            }
            diagnostics.sort_by_key(|d| (d.file.clone(), d.line));
            FileReport {
                path: file.path.to_path_buf(),
                kind: file.kind,
                diagnostics,
            }
        })
        .collect();
    for (path, error) in unreadable {
        let file = crate::diag::file_id(&path);
        let mut diags = crate::diag::Diagnostics::new(file);
        diags.error(
            Code::UnreadableFile,
            &Default::default(),
            format!("cannot read folder: {error}"),
        );
        reports.push(FileReport {
            path,
            kind: FileKind::Broken,
            diagnostics: diags.into_grouped(),
        });
    }
    let tally = Tally::of(reports.iter().flat_map(|r| &r.diagnostics));
    Summary {
        files: reports,
        tally,
    }
}

impl Summary {
    /// Adds a consumers file's report (it is not a capability: its kind is `not-capability`).
    pub fn with_consumers_file(mut self, path: &Path) -> Summary {
        let diagnostics = match crate::consumers::load(path) {
            Ok(_) => Vec::new(),
            Err(diagnostics) => diagnostics,
        };
        self.files.push(FileReport {
            path: path.to_owned(),
            kind: FileKind::NotCapability,
            diagnostics,
        });
        self.tally = Tally::of(self.files.iter().flat_map(|r| &r.diagnostics));
        self
    }
}

impl Summary {
    /// Diagnostics as a compiler prints them, then one summary line.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        for report in &self.files {
            for diagnostic in &report.diagnostics {
                out.push_str(&diagnostic.to_string());
                out.push('\n');
            }
        }
        let capabilities = self
            .files
            .iter()
            .filter(|f| f.kind == FileKind::Capability)
            .count();
        out.push_str(&format!(
            "checked {} file(s), {} capabilit{}: {} error(s), {} warning(s), {} note(s)\n",
            self.files.len(),
            capabilities,
            if capabilities == 1 { "y" } else { "ies" },
            self.tally.errors,
            self.tally.warnings,
            self.tally.infos
        ));
        out
    }

    pub fn to_json(&self) -> Value {
        json!({
            "files": self.files.iter().map(|f| json!({
                "path": f.path,
                "kind": f.kind,
                "diagnostics": f.diagnostics,
            })).collect::<Vec<_>>(),
            "errors": self.tally.errors,
            "warnings": self.tally.warnings,
            "infos": self.tally.infos,
        })
    }

    /// The report of one file.
    pub fn file(&self, path: &Path) -> Option<&FileReport> {
        self.files.iter().find(|f| f.path == path)
    }
}
