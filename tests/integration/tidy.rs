//! Checks that keep the map true, in the manner of rust-analyzer's tidy tests: every source file
//! opens with a `//!` paragraph saying what lives there, every file ARCHITECTURE.md names exists,
//! and every source file of the gateway's crates (but crate and folder roots) is on the
//! code map.

use std::path::{Path, PathBuf};

use crate::common;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source folders whose files must all open with a module doc.
fn source_dirs() -> Vec<PathBuf> {
    let root = common::root();
    ["model", "plugin", "gateway", "cli", "stripe-sim"]
        .iter()
        .map(|c| root.join("host").join(c).join("src"))
        .chain([root.join("bench/src"), root.join("tests/integration")])
        .collect()
}

/// Paths in backticks that ARCHITECTURE.md names, such as `host/model/src/snapshot.rs`.
fn named_in_the_map() -> Vec<String> {
    let text = std::fs::read_to_string(common::root().join("ARCHITECTURE.md")).unwrap();
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|token| {
            ["host/", "tests/", "bench/", "plugins/", "wit/", "specs/"]
                .iter()
                .any(|prefix| token.starts_with(prefix))
                && !token.contains(' ')
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_source_file_opens_with_a_module_doc() {
    let root = common::root();
    let mut files = Vec::new();
    for dir in source_dirs() {
        rust_files(&dir, &mut files);
    }
    assert!(files.len() > 50, "found only {} files", files.len());
    let undocumented: Vec<String> = files
        .iter()
        .filter(|file| {
            let text = std::fs::read_to_string(file).unwrap();
            !text
                .lines()
                .find(|line| !line.trim().is_empty())
                .is_some_and(|line| line.starts_with("//!"))
        })
        .map(|file| file.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    assert!(
        undocumented.is_empty(),
        "these files do not open with a `//!` paragraph saying what lives there:\n{}",
        undocumented.join("\n")
    );
}

#[test]
fn every_file_the_map_names_exists_and_every_gateway_file_is_on_it() {
    let root = common::root();
    let named = named_in_the_map();
    assert!(
        named.len() > 40,
        "ARCHITECTURE.md names only {} files",
        named.len()
    );
    let missing: Vec<&String> = named
        .iter()
        .filter(|path| !root.join(path.trim_end_matches('/')).exists())
        .collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names files that do not exist: {missing:?}"
    );
    let mut files = Vec::new();
    for crate_dir in ["model", "plugin", "gateway", "cli"] {
        rust_files(&root.join("host").join(crate_dir).join("src"), &mut files);
    }
    let unmapped: Vec<String> = files
        .iter()
        .map(|file| file.strip_prefix(&root).unwrap().display().to_string())
        // Crate and folder roots (`lib.rs`, `mod.rs`) are the crate's and the folder's rows.
        .filter(|file| !file.ends_with("/lib.rs") && !file.ends_with("/mod.rs"))
        .filter(|file| !named.contains(file))
        .collect();
    assert!(
        unmapped.is_empty(),
        "these files are not on ARCHITECTURE.md's code map: {unmapped:?}"
    );
}

/// The gateway crate's layers, bottom-up, as ARCHITECTURE.md draws them: a module may use
/// only the modules before it (and itself), so the edge has no import cycle.
const GATEWAY_LAYERS: [&str; 20] = [
    "error", "tls", "metrics", "trace", "access", "response", "server", "origin", "jwt", "limits",
    "consumer", "auth", "upstream", "invoke", "rest", "mcp", "front", "reload", "gateway", "admin",
];

#[test]
fn gateway_modules_use_only_the_layers_below_them() {
    let src = common::root().join("host/gateway/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut upward = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let first = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_owned();
        if module == "lib" {
            continue;
        }
        let rank = GATEWAY_LAYERS
            .iter()
            .position(|m| *m == module)
            .unwrap_or_else(|| panic!("module `{module}` is not in GATEWAY_LAYERS"));
        let text = std::fs::read_to_string(file).unwrap();
        for used in text.split("crate::").skip(1) {
            let name: String = used
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if let Some(used_rank) = GATEWAY_LAYERS.iter().position(|m| *m == name)
                && used_rank > rank
            {
                upward.push(format!("{} uses crate::{name}", relative.display()));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "modules reach up the layers (an import cycle in the making):\n{}",
        upward.join("\n")
    );
}

/// `deploy/` stays whole: every file its kustomization names exists, its copy of the seed is the
/// shipped seed, and its gateway config is one capgate reads (`host/cli/tests/image.rs` runs it).
#[test]
fn the_kubernetes_deployment_is_complete_and_in_step() {
    let deploy = common::root().join("deploy");
    let kustomization = std::fs::read_to_string(deploy.join("kustomization.yaml")).unwrap();
    let mut named = 0;
    for line in kustomization.lines() {
        let item = line.trim_start();
        if let Some(file) = item.strip_prefix("- ")
            && (file.ends_with(".yaml") || file.ends_with(".yml"))
        {
            assert!(deploy.join(file).is_file(), "deploy/{file} is missing");
            named += 1;
        }
    }
    assert!(named >= 6, "{named} files named");
    assert_eq!(
        std::fs::read_to_string(deploy.join("specs/identity-sessions.yaml")).unwrap(),
        std::fs::read_to_string(common::root().join("specs/identity-sessions.yaml")).unwrap(),
        "deploy/specs/identity-sessions.yaml is a copy of specs/ (kustomize reads only its own folder)"
    );
    capgate_model::config::Config::from_file(&deploy.join("config/capgate.yaml"))
        .expect("the deployment's config is valid");
}
