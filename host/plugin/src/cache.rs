//! The compiled-artifact cache: a plugin compiled once is written to `PluginsConfig::cache_dir`
//! (named by the engine's compatibility hash and the file's SHA-256, with a trailing checksum)
//! and read back on the next load, but only from a directory and files of this user's that
//! nobody else can write. Loading the compiled component into a plugin is `host`'s.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::Digest;
use wasmtime::Engine;
use wasmtime::component::Component;

/// SHA-256 of a plugin file, in hex: what `Plugin::digest` shows, what tells `refresh` the
/// file changed, and what names its artifact here.
pub(crate) fn digest(bytes: &[u8]) -> String {
    hex(&sha2::Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compiles a plugin file, or loads it from the artifact cache in `configured` (if that is a
/// directory `cache_dir` accepts), and writes what it compiled there.
pub(crate) fn compile(
    engine: &Engine,
    configured: Option<&Path>,
    bytes: &[u8],
    digest: &str,
) -> Result<Component, String> {
    let Some(cache) = cache_dir(configured) else {
        return Component::from_binary(engine, bytes)
            .map_err(|e| format!("not a valid component: {e:#}"));
    };
    let mut engine_hash = std::collections::hash_map::DefaultHasher::new();
    engine
        .precompile_compatibility_hash()
        .hash(&mut engine_hash);
    let artifact = cache.join(format!("{:016x}-{digest}.cwasm", engine_hash.finish()));
    if artifact.exists() {
        match deserialize(engine, &artifact) {
            Ok(component) => return Ok(component),
            Err(error) => {
                tracing::warn!(artifact = %artifact.display(), %error, "cached plugin artifact unusable; compiling again")
            }
        }
    }
    let component = Component::from_binary(engine, bytes)
        .map_err(|e| format!("not a valid component: {e:#}"))?;
    match component.serialize() {
        Ok(mut serialized) => {
            let checksum = sha2::Sha256::digest(&serialized);
            serialized.extend_from_slice(&checksum);
            let temp = cache.join(format!(".{digest}.{}.tmp", std::process::id()));
            if std::fs::write(&temp, serialized)
                .and_then(|()| std::fs::rename(&temp, &artifact))
                .is_err()
            {
                let _ = std::fs::remove_file(&temp);
                tracing::warn!(dir = %cache.display(), "cannot write the plugin artifact cache");
            }
        }
        Err(error) => tracing::warn!(%error, "cannot serialize a compiled plugin"),
    }
    Ok(component)
}

/// The artifact cache, if it is a directory only this user can write.
fn cache_dir(configured: Option<&Path>) -> Option<PathBuf> {
    let dir = configured?.to_path_buf();
    if std::fs::create_dir_all(&dir).is_err() {
        return None;
    }
    // Looked at without following links: whoever owns a link could point it elsewhere
    // after this check.
    let private = |meta: &std::fs::Metadata| {
        meta.file_type().is_dir() && owned_by_me(meta) && !writable_by_others(meta)
    };
    let mut meta = std::fs::symlink_metadata(&dir).ok()?;
    if meta.file_type().is_dir() && owned_by_me(&meta) && !private(&meta) {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        }
        meta = std::fs::symlink_metadata(&dir).ok()?;
    }
    if !private(&meta) {
        tracing::warn!(dir = %dir.display(), "the plugin artifact cache is not a directory of this user's that only it can write; not used");
        return None;
    }
    Some(dir)
}

/// Deserializes an artifact this gateway compiled and wrote itself.
/// Reads a cached artifact back: a regular file (not a link) of this user's, whose trailing
/// SHA-256 matches its contents, so a file cut short by a crash is never run.
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, artifact: &Path) -> Result<Component, String> {
    let meta = std::fs::symlink_metadata(artifact).map_err(|e| e.to_string())?;
    if !meta.file_type().is_file() || !owned_by_me(&meta) {
        return Err("not a regular file of this user's".into());
    }
    let bytes = std::fs::read(artifact).map_err(|e| e.to_string())?;
    let Some((code, digest)) = bytes.split_last_chunk::<32>() else {
        return Err("too short".into());
    };
    if sha2::Sha256::digest(code).as_slice() != digest {
        return Err("its checksum does not match".into());
    }
    // SAFETY: `Component::deserialize` runs native code from these bytes. They come from the
    // artifact cache, which `cache_dir` only uses when it is a directory (not a link) owned by
    // this user and not writable by anyone else, and which only `compile` writes (from
    // `Component::serialize`, with its checksum). wasmtime also checks that the artifact was
    // made by a compatible engine.
    unsafe { Component::deserialize(engine, code) }.map_err(|e| format!("{e:#}"))
}

/// Whether users other than the owner may write a file or directory.
fn writable_by_others(meta: &std::fs::Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        meta.mode() & 0o022 != 0
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        false
    }
}

/// Whether a file or directory belongs to the user this process runs as.
#[allow(unsafe_code)]
fn owned_by_me(meta: &std::fs::Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: `geteuid` has no preconditions and cannot fail.
        meta.uid() == unsafe { libc::geteuid() }
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        true
    }
}
