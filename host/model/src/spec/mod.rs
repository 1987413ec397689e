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

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Lists the capability candidates under `dir`: every `.yaml`/`.yml` file, recursively, sorted by
/// path. Entries whose name starts with `.` are skipped (editor swap files, and the `..data`
/// machinery of Kubernetes ConfigMap volumes, whose files are reached through their symlinks).
///
/// Links are followed (ConfigMap files are links), but each folder is walked once, by identity:
/// a link back to an ancestor (`ln -s . loop`) is skipped, not walked forever, and so is
/// anything deeper than [`MAX_DEPTH`] folders.
pub fn list_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    walk(dir, 0, &mut seen, &mut out)?;
    out.sort();
    Ok(out)
}

/// How deep [`list_files`] looks under the specs folder.
pub const MAX_DEPTH: usize = 16;

fn walk(
    dir: &Path,
    depth: usize,
    seen: &mut BTreeSet<(u64, u64)>,
    out: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    if let Some(identity) = identity(&std::fs::metadata(dir)?)
        && !seen.insert(identity)
    {
        return Ok(());
    }
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
            if depth + 1 < MAX_DEPTH {
                walk(&path, depth + 1, seen, out)?;
            }
        } else if is_yaml(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// A folder's device and inode: the same folder reached by two paths has one identity.
#[cfg(unix)]
fn identity(meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    Some((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn identity(_: &std::fs::Metadata) -> Option<(u64, u64)> {
    None
}

/// Whether `path` names a YAML file by its extension.
pub fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use proptest::prelude::*;
    use serde_json::Value;

    use super::{Env, load_str};
    use crate::compile::{Options, compile_file};

    const SEED: &str = include_str!("../../../../specs/identity-sessions.yaml");

    #[cfg(unix)]
    #[test]
    fn link_loops_in_the_specs_folder_are_walked_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), "x: 1\n").unwrap();
        std::fs::create_dir(dir.path().join("team")).unwrap();
        std::fs::write(dir.path().join("team/b.yaml"), "x: 1\n").unwrap();
        for link in ["loop1", "loop2", "team/up"] {
            let target = if link.starts_with("team") { ".." } else { "." };
            std::os::unix::fs::symlink(target, dir.path().join(link)).unwrap();
        }
        let files = super::list_files(dir.path()).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.strip_prefix(dir.path()).unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["a.yaml", "team/b.yaml"]);
    }

    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[a-z{}$.\\[\\] /-]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-zA-Z]{1,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Replaces the node at a pseudo-random path of `doc` (chosen by `steps`) with `value`.
    fn graft(doc: &mut Value, steps: &[usize], value: Value) {
        let Some((step, rest)) = steps.split_first() else {
            *doc = value;
            return;
        };
        match doc {
            Value::Object(map) if !map.is_empty() => {
                let index = step % map.len();
                let child = map.values_mut().nth(index).expect("in range");
                graft(child, rest, value);
            }
            Value::Array(items) if !items.is_empty() => {
                let len = items.len();
                graft(&mut items[step % len], rest, value);
            }
            other => *other = value,
        }
    }

    fn load_and_compile(text: &str) {
        let loaded = load_str(
            Path::new("/nonexistent/fuzz.yaml"),
            text,
            &Env::isolated(Default::default()),
        );
        let _ = compile_file(&loaded, &Options::default());
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "(?s).{0,300}") {
            load_and_compile(&text);
        }

        #[test]
        fn arbitrary_yaml_documents_never_panic(doc in any_json()) {
            load_and_compile(&serde_yaml::to_string(&doc).expect("JSON is YAML"));
        }

        #[test]
        fn the_seed_with_any_part_replaced_never_panics(
            steps in prop::collection::vec(any::<usize>(), 1..8),
            value in any_json(),
        ) {
            let mut doc: Value = serde_yaml::from_str(SEED).expect("the seed parses");
            graft(&mut doc, &steps, value);
            load_and_compile(&serde_yaml::to_string(&doc).expect("JSON is YAML"));
        }

        #[test]
        fn the_seed_cut_anywhere_never_panics(cut in 0usize..SEED.len()) {
            let cut = (0..=cut).rev().find(|i| SEED.is_char_boundary(*i)).unwrap_or(0);
            load_and_compile(&SEED[..cut]);
        }
    }
}
