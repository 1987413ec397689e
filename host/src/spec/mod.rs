//! The capability format: reading YAML files into typed, located models.
//!
//! `yaml` builds a line-aware tree, `decode` reads it leniently into the `model` types with
//! diagnostics, and `load` does the file I/O (the file, its imports, its bind sources). Nothing
//! here resolves references or decides what is served; that is `compile`.

pub mod decode;
pub mod load;
pub mod model;
pub mod yaml;

pub use load::{Env, ImportedAdapter, LoadedFile, load_file, load_str};
pub use model::*;

use std::path::{Path, PathBuf};

/// Lists the capability candidates under `dir`: every `.yaml`/`.yml` file, recursively, sorted by
/// path. Entries whose name starts with `.` are skipped (editor swap files, and the `..data`
/// machinery of Kubernetes ConfigMap volumes, whose files are reached through their symlinks).
pub fn list_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    walk(dir, &mut out)?;
    out.sort();
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        // `metadata` follows symlinks, so ConfigMap-style links to files count as files.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            walk(&path, out)?;
        } else if is_yaml(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// Whether `path` names a YAML file by its extension.
pub fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}
