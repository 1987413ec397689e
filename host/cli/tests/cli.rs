//! The `capgate` command itself: exit codes and output of `validate`, and `stripe-sim` and
//! `demo` starting up. Everything else is tested through the library in `tests/`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn capgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_capgate"))
}

fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
        .display()
        .to_string()
}

#[test]
fn validate_passes_the_shipped_specs_and_the_corpus() {
    let output = capgate()
        .args([
            "validate",
            &repo("specs"),
            &repo("tests/data/corpus/stripe-capabilities"),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("checked 323 file(s), 323 capabilities: 0 error(s)"),
        "{}",
        stdout.lines().last().unwrap_or("")
    );
}

#[test]
fn validate_fails_on_errors_and_speaks_json() {
    let bad = repo("tests/specs/err/unknown-call.yaml");
    let output = capgate().args(["validate", &bad]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.contains("error[unknown-reference]: `call` names no consumed operation"),
        "{stdout}"
    );
    assert!(stdout.contains("unknown-call.yaml:21"), "{stdout}");

    let output = capgate()
        .args(["validate", "--format", "json", &bad])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(json["errors"].as_u64().unwrap() >= 1);
    let first = &json["files"][0]["diagnostics"][0];
    assert_eq!(first["severity"], "error");
    assert_eq!(first["found"], "api.list-thingz");

    let output = capgate()
        .args(["validate", "--deny-warnings", &repo("specs")])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "the seed has warnings");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `args` until a line of stdout contains `needle`, then kills it.
fn runs_until(args: &[&str], needle: &str) -> String {
    let mut child = capgate()
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut seen = String::new();
    let mut found = false;
    while !found && started.elapsed() < Duration::from_secs(30) {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            found = line.contains(needle);
            seen.push_str(&line);
            seen.push('\n');
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    if found {
        return seen;
    }
    panic!(
        "`capgate {}` never printed {needle:?}; printed:\n{seen}",
        args.join(" ")
    );
}

#[test]
fn demo_prints_where_everything_is() {
    // The shipped spec declares 8080 and 9090, which may be taken on a test machine: run a copy
    // that declares free ports instead.
    let dir = tempfile::tempdir().unwrap();
    let seed = std::fs::read_to_string(repo("specs/identity-sessions.yaml")).unwrap();
    let (rest, mcp) = (free_port(), free_port());
    let seed = seed
        .replace("port: 8080", &format!("port: {rest}"))
        .replace("port: 9090", &format!("port: {mcp}"));
    std::fs::write(dir.path().join("identity-sessions.yaml"), seed).unwrap();
    let out = runs_until(
        &["demo", "--specs", &dir.path().display().to_string()],
        "Ctrl-C",
    );
    assert!(
        out.contains(&format!(
            "http://127.0.0.1:{rest}/v1/v1/identity/verification-sessions"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("http://127.0.0.1:{mcp}/mcp/identity-sessions-mcp")),
        "{out}"
    );
    assert!(out.contains("Stripe stand-in   http://127.0.0.1:"), "{out}");
}
