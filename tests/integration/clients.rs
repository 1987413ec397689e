//! Real third-party MCP clients against capgate: the official conformance suite and the
//! official Python SDK.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{self, Harness, tools};

/// The official MCP conformance suite, every server scenario, both protocol eras, against the
/// fixture capability folder; only the baselined (out-of-scope) checks may fail.
#[tokio::test]
async fn the_official_conformance_suite_passes_but_for_its_baseline() {
    let (node, suite) = (tools::node(), tools::conformance());
    let fixture =
        std::fs::read_to_string(common::root().join("tests/conformance/specs/conformance.yaml"))
            .unwrap();
    let mutator = Mutator::start().await;
    let h = Harness::with_specs(&[("conformance.yaml", &fixture)], |c| {
        c.reload.watch = true;
        c.reload.debounce = Duration::from_millis(50);
        c.upstreams.insert(
            0,
            capgate_model::config::UpstreamOverride {
                namespace: "mutator".into(),
                base_uri: Some(format!("http://{}", mutator.address)),
                profile: None,
            },
        );
    })
    .await;
    *mutator.file.lock().unwrap() = Some(h.specs_dir().join("conformance.yaml"));
    let url = format!("{}/mcp", h.base(9090).await);
    for version in ["2025-11-25", "2026-07-28"] {
        let results = tempfile::tempdir().unwrap();
        let baseline = common::root().join(format!("tests/conformance/baseline-{version}.yml"));
        let output = tokio::time::timeout(
            Duration::from_secs(600),
            tokio::process::Command::new(&node)
                .arg(&suite)
                .args([
                    "server",
                    "--url",
                    &url,
                    "--suite",
                    "all",
                    "--spec-version",
                    version,
                ])
                .arg("--expected-failures")
                .arg(&baseline)
                .arg("-o")
                .arg(results.path())
                .output(),
        )
        .await
        .expect("the suite finishes within 10 minutes")
        .expect("the suite runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "conformance {version} failed:\n{}\n{}",
            stdout
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n"),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.contains("Baseline check passed"), "{stdout}");
    }
}

/// The official Python SDK lists and calls the seed's tools in both eras.
#[tokio::test]
async fn the_python_sdk_lists_and_calls_the_seed_tools() {
    let python = tools::python();
    let h = Harness::seed().await;
    let url = format!("{}/mcp/identity-sessions-mcp", h.base(9090).await);
    let output = tokio::process::Command::new(python)
        .arg(common::root().join("tests/clients/python_mcp_client.py"))
        .arg(&url)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_slice(&output.stdout).unwrap();
    // `auto` discovers the 2026 era (capgate serves it); `legacy` is the initialize handshake.
    assert_eq!(seen["legacy"]["protocol_version"], "2025-11-25");
    assert_eq!(seen["auto"]["protocol_version"], "2026-07-28");
    for mode in ["legacy", "auto"] {
        let run = &seen[mode];
        assert_eq!(run["tools"].as_array().unwrap().len(), 6, "{mode}");
        assert_eq!(
            run["annotations"]["stripe-get-identity-verification-sessions"]["readOnlyHint"],
            true
        );
        let created = &run["created"]["structuredContent"];
        assert_eq!(created["metadata"]["client"], "python");
        // The enriched create tool: listed with Stripe's parameters, called with them flat.
        let properties = run["create_properties"].as_array().unwrap();
        for name in ["type", "metadata", "options", "return_url", "body"] {
            assert!(properties.contains(&json!(name)), "{mode}: {properties:?}");
        }
        assert_eq!(run["flat"]["isError"], false, "{}", run["flat"]);
        assert_eq!(
            run["flat"]["structuredContent"]["metadata"]["client"],
            "python-flat"
        );
        assert_eq!(run["retrieved"]["structuredContent"]["id"], created["id"]);
        assert_eq!(run["listed"]["structuredContent"]["object"], "list");
        assert_eq!(run["missing"]["isError"], true);
        assert_eq!(
            run["missing"]["structuredContent"]["error"]["code"],
            "resource_missing"
        );
        assert_eq!(run["bad_argument"]["isError"], true);
        assert!(
            run["bad_argument"]["content"][0]["text"]
                .as_str()
                .unwrap()
                .contains("\"limit\"")
        );
    }
    let creates = h
        .sim
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .count();
    assert_eq!(
        creates, 4,
        "two creates (nested and flat) per era reached the stand-in"
    );
}

/// The upstream of the fixture's `test_trigger_tool_change`: each call adds a tool to, or removes
/// it from, the fixture file the gateway serves, so the suite sees a real reload.
struct Mutator {
    address: std::net::SocketAddr,
    file: std::sync::Arc<std::sync::Mutex<Option<std::path::PathBuf>>>,
}

impl Mutator {
    async fn start() -> Mutator {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let file = std::sync::Arc::new(std::sync::Mutex::new(None::<std::path::PathBuf>));
        let target = file.clone();
        tokio::spawn(async move {
            const EXTRA: &str = "        - name: test_added_tool\n          description: Added by test_trigger_tool_change.\n          outputParameters:\n            - name: text\n              type: string\n              value: added\n";
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                if let Some(path) = target.lock().unwrap().clone() {
                    let text = std::fs::read_to_string(&path).unwrap();
                    let next = match text.strip_suffix(EXTRA) {
                        Some(without) => without.to_owned(),
                        None => format!("{text}{EXTRA}"),
                    };
                    std::fs::write(&path, next).unwrap();
                }
                let body = "{\"changed\":true}";
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            }
        });
        Mutator { address, file }
    }
}
