//! The `capgate` command itself: exit codes and output of `validate`, and `stripe-sim` and
//! `demo` starting up. Everything else is tested through the library in `tests/`.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::free_port;

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

#[test]
fn validate_checks_a_consumers_file_and_names_the_bad_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("consumers.yaml");
    std::fs::write(
        &file,
        "consumers:\n  - name: a\n    limits:\n      - quota: 10\n        per: fortnight\n",
    )
    .unwrap();
    let output = capgate()
        .args(["validate", "--consumers", &file.display().to_string()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("consumers.yaml:5"), "{stdout}");
    assert!(stdout.contains("unknown period"), "{stdout}");
    std::fs::write(&file, "consumers:\n  - name: a\n").unwrap();
    let output = capgate()
        .args(["validate", "--consumers", &file.display().to_string()])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
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

/// A folder with the shipped seed declaring free ports (8080 and 9090 may be taken on a test
/// machine), and those ports: REST's, then MCP's.
fn seed_on_free_ports() -> (tempfile::TempDir, u16, u16) {
    let dir = tempfile::tempdir().unwrap();
    let seed = std::fs::read_to_string(repo("specs/identity-sessions.yaml")).unwrap();
    let (rest, mcp) = (free_port(), free_port());
    let seed = seed
        .replace("port: 8080", &format!("port: {rest}"))
        .replace("port: 9090", &format!("port: {mcp}"));
    std::fs::write(dir.path().join("identity-sessions.yaml"), seed).unwrap();
    (dir, rest, mcp)
}

#[test]
fn demo_prints_where_everything_is() {
    let (dir, rest, mcp) = seed_on_free_ports();
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

#[test]
fn demo_with_a_consumer_prints_its_key_and_requires_it() {
    let (dir, rest, _) = seed_on_free_ports();
    let mut child = capgate()
        .args([
            "demo",
            "--consumer",
            "--specs",
            &dir.path().display().to_string(),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut printed = String::new();
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        printed.push_str(&line);
        printed.push('\n');
        if line.contains("Ctrl-C") {
            break;
        }
    }
    let key = printed
        .split_whitespace()
        .find(|word| word.starts_with("cg_") && word.len() > 40)
        .map(str::to_owned);
    let path = "/v1/v1/identity/verification-sessions?limit=1";
    let bearer = key.as_ref().map(|key| format!("Bearer {key}"));
    let answers: Vec<_> = bearer
        .iter()
        .flat_map(|bearer| {
            (0..8).map(|_| get_with(rest, path, &[("authorization", bearer)]).map(|(s, _)| s))
        })
        .collect();
    let without = get(rest, path).map(|(status, _)| status);
    let _ = child.kill();
    let _ = child.wait();
    assert!(key.is_some(), "no key printed:\n{printed}");
    assert!(
        printed.contains(&format!("-H 'Authorization: Bearer {}'", key.unwrap())),
        "the commands do not send the key:\n{printed}"
    );
    assert_eq!(without, Some(401), "a call without a key");
    // A burst of 5, then one call per second: the first five pass, the eighth does not.
    assert_eq!(
        answers[..5],
        [Some(200); 5],
        "the demo consumer's calls: {answers:?}"
    );
    assert_eq!(answers[7], Some(429), "past the burst: {answers:?}");
}

/// A POST over a fresh HTTP/1.1 connection; the answer's head and body.
fn post(port: u16, path: &str, headers: &[(&str, &str)], body: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (head.to_owned(), body.to_owned())
}

#[test]
fn debug_logs_never_show_tool_arguments_or_results() {
    let (dir, _, mcp) = seed_on_free_ports();
    let log = dir.path().join("stderr.log");
    let mut child = capgate()
        .args(["demo", "--specs", &dir.path().display().to_string()])
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        match lines.next() {
            Some(Ok(line)) if line.contains("Ctrl-C") => break,
            Some(Ok(_)) => {}
            _ => panic!("the demo stopped before it was ready"),
        }
    }
    // A legacy session, so that the call goes through rmcp's own service and its logging.
    let path = "/mcp/identity-sessions-mcp";
    let marker = "marker-7f3a@example.com";
    let (head, _) = post(
        mcp,
        path,
        &[],
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#,
    );
    let session = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("mcp-session-id: ")
                .map(|_| l[16..].trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no session: {head}"));
    let session_headers = [
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    post(
        mcp,
        path,
        &session_headers,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    );
    let call = format!(
        r#"{{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{{"name":"stripe-post-identity-verification-sessions","arguments":{{"body":{{"type":"document","metadata":{{"email":"{marker}"}}}}}}}}}}"#
    );
    let (_, answer) = post(mcp, path, &session_headers, &call);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        answer.contains(marker),
        "the call did not go through: {answer}"
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("DEBUG"), "debug logging was not on");
    assert!(
        !logged.contains(marker),
        "a tool argument or result reached the log"
    );
}

/// A GET over a fresh HTTP/1.1 connection; the status code and body.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    get_with(port, path, &[])
}

/// A GET with `headers` over a fresh HTTP/1.1 connection; the status code and body.
fn get_with(port: u16, path: &str, headers: &[(&str, &str)]) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Polls `port` until `path` answers 200, for at most 30 s.
fn until_ok(port: u16, path: &str) -> String {
    let started = Instant::now();
    loop {
        match get(port, path) {
            Some((200, body)) => return body,
            _ if started.elapsed() > Duration::from_secs(30) => {
                panic!("{path} on {port} never answered 200")
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[test]
fn one_worker_serves_rest_and_mcp_and_reloads_on_one_thread() {
    // `--workers 1` is a current-thread runtime: everything (listeners, upstream calls, the
    // watcher's reloads being published) has to work without a second request thread.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let sim_port = free_port();
    let _sim = Killed(
        capgate()
            .args(["stripe-sim", "--listen", &format!("127.0.0.1:{sim_port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let seed = std::fs::read_to_string(repo("specs/identity-sessions.yaml")).unwrap();
    let (rest, mcp, moved) = (free_port(), free_port(), free_port());
    let on_ports = |rest: u16| {
        seed.replace("port: 8080", &format!("port: {rest}"))
            .replace("port: 9090", &format!("port: {mcp}"))
    };
    let spec = dir.path().join("identity-sessions.yaml");
    std::fs::write(&spec, on_ports(rest)).unwrap();
    let gateway = capgate()
        .args([
            "serve",
            "--workers",
            "1",
            "--admin",
            "off",
            "--specs",
            &dir.path().display().to_string(),
            "--upstream",
            &format!("*=http://127.0.0.1:{sim_port}"),
        ])
        .env("STRIPE_API_KEY", "sk_test_capgate_demo")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _gateway = Killed(gateway);
    let list = "/v1/v1/identity/verification-sessions?limit=1";
    let body = until_ok(rest, list);
    assert!(body.contains(r#""object":"list""#), "{body}");

    let (head, answer) = post(
        mcp,
        "/mcp/identity-sessions-mcp",
        &[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "stripe-post-identity-verification-sessions"),
        ],
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"stripe-post-identity-verification-sessions","arguments":{"body":{"type":"document"}},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/clientInfo":{"name":"t","version":"1"}}}}"#,
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{answer}");
    assert!(answer.contains("vs_"), "no session was created: {answer}");

    // A reload moves the REST listener; the new port answers and the old one closes.
    std::fs::write(&spec, on_ports(moved)).unwrap();
    let body = until_ok(moved, list);
    assert!(body.contains(r#""object":"list""#), "{body}");
    let started = Instant::now();
    while get(rest, list).is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the old REST port still answers after the reload"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
