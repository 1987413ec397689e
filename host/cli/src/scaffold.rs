//! `capgate plugin new NAME`: a new transform plugin crate that builds as it is.
//!
//! The crate carries its own copy of the WIT package, so it builds anywhere, and starts as a
//! pass-through with the three exports filled in.

use std::path::{Path, PathBuf};

const WIT: &str = include_str!("../../../wit/transform.wit");

/// The same build settings as the example plugins: a small stack, because a plugin's memory is
/// reset after every call and its size is what that costs.
const CARGO_CONFIG: &str = include_str!("../../../plugins/.cargo/config.toml");

/// Creates `<dir>/<name>/` with `Cargo.toml`, `src/lib.rs` and `wit/transform.wit`. Refuses an
/// invalid name or an existing folder. Returns the crate's folder.
pub fn new_plugin(dir: &Path, name: &str) -> Result<PathBuf, String> {
    let valid = !name.is_empty()
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        return Err(format!(
            "invalid plugin name \"{name}\": use lower-case letters, digits and -, starting with a letter"
        ));
    }
    let root = dir.join(name);
    if root.exists() {
        return Err(format!("{} already exists", root.display()));
    }
    std::fs::create_dir_all(root.join("src"))
        .map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    std::fs::create_dir_all(root.join("wit"))
        .map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    let write = |path: PathBuf, text: &str| {
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    write(root.join("wit/transform.wit"), WIT)?;
    std::fs::create_dir_all(root.join(".cargo"))
        .map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    write(root.join(".cargo/config.toml"), CARGO_CONFIG)?;
    write(root.join("Cargo.toml"), &cargo_toml(name))?;
    write(root.join("src/lib.rs"), &lib_rs(name))?;
    Ok(root)
}

fn cargo_toml(name: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

# Its own workspace, so that it builds wherever it is: remove these two lines to make it a
# member of an existing one.
[workspace]

[lib]
crate-type = ["cdylib"]

[dependencies]
wit-bindgen = {{ version = "0.63", default-features = false, features = ["macros", "realloc"] }}
serde_json = "1"

[profile.release]
# Speed over size: a plugin runs on every request it is bound to.
opt-level = 3
lto = true
# Keep function names so traps show where they happened.
strip = "debuginfo"

[lints.clippy]
# The generated bindings pass every field of a record as an argument.
too_many_arguments = "allow"
"#
    )
}

fn lib_rs(name: &str) -> String {
    let module = name.replace('-', "_");
    format!(
        r#"//! `{name}`: a capgate transform plugin.
//!
//! Build: `cargo build --release --target wasm32-wasip2`, then copy
//! `target/wasm32-wasip2/release/{module}.wasm` into the gateway's plugins folder and bind it to
//! operations in the gateway config (see plugins/README.md).

wit_bindgen::generate!({{ path: "wit", world: "transform" }});

use capgate::transform::host::log;
use capgate::transform::types::Level;

struct Plugin;

impl Guest for Plugin {{
    fn info() -> PluginInfo {{
        PluginInfo {{
            name: "{name}".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            // Say which hooks do something: the others are never called (each call costs a
            // fresh instance).
            handles_requests: true,
            handles_responses: false,
            // Ask only for the bodies you read: they are copied in and out of the sandbox.
            needs_request_body: false,
            needs_response_body: false,
        }}
    }}

    fn on_request(ctx: Context, req: Request) -> Result<RequestAction, PluginError> {{
        // `ctx.config` is the binding's config as JSON text.
        log(Level::Debug, &format!("{{}} {{}} for {{}}", req.method, req.path, ctx.operation));
        Ok(RequestAction::Forward(req))
    }}

    fn on_response(_ctx: Context, resp: Response) -> Result<Response, PluginError> {{
        Ok(resp)
    }}
}}

export!(Plugin);
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_a_crate_and_refuses_bad_names_and_existing_folders() {
        let dir = tempfile::tempdir().unwrap();
        let root = new_plugin(dir.path(), "audit-log").unwrap();
        assert!(root.join("wit/transform.wit").is_file());
        assert!(
            std::fs::read_to_string(root.join(".cargo/config.toml"))
                .unwrap()
                .contains("stack-size")
        );
        let lib = std::fs::read_to_string(root.join("src/lib.rs")).unwrap();
        assert!(lib.contains("name: \"audit-log\""));
        assert!(lib.contains("audit_log.wasm"));
        assert!(
            new_plugin(dir.path(), "audit-log")
                .unwrap_err()
                .contains("already exists")
        );
        assert!(
            new_plugin(dir.path(), "Bad Name")
                .unwrap_err()
                .contains("Bad Name")
        );
    }
}
