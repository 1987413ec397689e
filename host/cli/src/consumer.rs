//! `capgate consumer add` and `capgate consumer rotate`: API keys made here, printed once, and
//! only their SHA-256 written to the consumers file.

use std::path::Path;
use std::time::{Duration, SystemTime};

use capgate_model::consumers;

/// One scope given on the command line.
pub struct ScopeArgs<'a> {
    pub capability: &'a str,
    pub adapter: &'a str,
    pub name: &'a str,
    pub access: &'a str,
}

/// A new random key: `cg_` and 48 hex digits (192 bits).
pub fn new_key() -> String {
    let bytes: [u8; 24] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("cg_{hex}")
}

fn key_entry(key: &str, indent: &str) -> String {
    format!(
        "{indent}- sha256: {}\n{indent}  prefix: {}\n",
        consumers::hex(&consumers::digest(key)),
        consumers::prefix_of(key)
    )
}

/// Appends a consumer with a new key to `file` (made if missing); returns the key.
pub fn add(file: &Path, name: &str, scope: &ScopeArgs<'_>) -> Result<String, String> {
    add_with_limits(file, name, scope, &[])
}

/// `add`, with `limits` (each a limit as a YAML flow mapping, `{ rate: 1, burst: 5 }`) on the
/// consumer.
pub fn add_with_limits(
    file: &Path,
    name: &str,
    scope: &ScopeArgs<'_>,
    limits: &[&str],
) -> Result<String, String> {
    let mut text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => "consumers:\n".to_owned(),
        Err(error) => return Err(format!("cannot read {}: {error}", file.display())),
    };
    let existing = check(file, &text)?;
    if existing.get(name).is_some() {
        return Err(format!(
            "{} already has a consumer named {name:?}",
            file.display()
        ));
    }
    let key = new_key();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    let quote = |s: &str| serde_json::to_string(s).expect("strings serialize");
    text.push_str(&format!("  - name: {}\n    keys:\n", quote(name)));
    text.push_str(&key_entry(&key, "      "));
    text.push_str(&format!(
        "    scopes:\n      - capability: {}\n        adapter: {}\n        name: {}\n        access: {}\n",
        quote(scope.capability),
        quote(scope.adapter),
        quote(scope.name),
        quote(scope.access)
    ));
    if !limits.is_empty() {
        text.push_str("    limits:\n");
        for limit in limits {
            text.push_str(&format!("      - {limit}\n"));
        }
    }
    check(file, &text)?;
    write(file, &text)?;
    Ok(key)
}

/// Adds a new key to consumer `name` and makes its other keys expire after `grace`; returns
/// the new key. The file is rewritten (comments are not kept).
pub fn rotate(file: &Path, name: &str, grace: Duration) -> Result<String, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|error| format!("cannot read {}: {error}", file.display()))?;
    check(file, &text)?;
    let mut doc: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|error| format!("{}: {error}", file.display()))?;
    let expires = (SystemTime::now() + grace)
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let consumer = doc["consumers"]
        .as_sequence_mut()
        .and_then(|list| list.iter_mut().find(|c| c["name"].as_str() == Some(name)))
        .ok_or_else(|| format!("{} has no consumer named {name:?}", file.display()))?;
    let key = new_key();
    let keys = &mut consumer["keys"];
    if !keys.is_sequence() {
        *keys = serde_yaml::Value::Sequence(Vec::new());
    }
    let keys = keys.as_sequence_mut().expect("a sequence");
    for old in keys.iter_mut() {
        let sooner = old["expires_at"].as_u64().is_some_and(|at| at <= expires);
        if !sooner {
            old["expires_at"] = serde_yaml::Value::from(expires);
        }
    }
    let entry: serde_yaml::Value =
        serde_yaml::from_str(&key_entry(&key, "")).expect("a key entry parses");
    keys.extend(entry.as_sequence().cloned().unwrap_or_default());
    let text = serde_yaml::to_string(&doc).map_err(|error| error.to_string())?;
    check(file, &text)?;
    write(file, &text)?;
    Ok(key)
}

fn check(file: &Path, text: &str) -> Result<consumers::ConsumerSet, String> {
    consumers::parse(&std::sync::Arc::from(file), text).map_err(|errors| {
        errors
            .iter()
            .map(|d| format!("{}:{}: {}: {}", file.display(), d.line, d.path, d.message))
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// Writes `text` to `file` atomically (a temporary file renamed over it), so the gateway
/// never reads half of it.
fn write(file: &Path, text: &str) -> Result<(), String> {
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let temporary = dir.join(format!(
        ".{}.tmp",
        file.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    std::fs::write(&temporary, text)
        .and_then(|()| std::fs::rename(&temporary, file))
        .map_err(|error| format!("cannot write {}: {error}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_and_rotated_keys_authenticate_and_old_ones_expire() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("consumers.yaml");
        let scope = ScopeArgs {
            capability: "identity-*",
            adapter: "*",
            name: "*",
            access: "read",
        };
        let first = add(&file, "payments", &scope).unwrap();
        assert!(
            add(&file, "payments", &scope).is_err(),
            "a second consumer of that name"
        );
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains(&first), "the key itself is never written");
        let set = consumers::load(&file).unwrap();
        assert!(set.authenticate(&first, SystemTime::now()).is_some());

        let second = rotate(&file, "payments", Duration::from_secs(3600)).unwrap();
        let set = consumers::load(&file).unwrap();
        let now = SystemTime::now();
        assert!(
            set.authenticate(&first, now).is_some(),
            "within the grace period"
        );
        assert!(set.authenticate(&second, now).is_some());
        let later = now + Duration::from_secs(7200);
        assert!(
            set.authenticate(&first, later).is_none(),
            "past the grace period"
        );
        assert!(set.authenticate(&second, later).is_some());
    }
}
