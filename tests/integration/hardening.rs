//! Issue 23's attacks on the whole gateway, each made for real and bounded in time: files that
//! never finish reading, connection and session hoarding, a folder that disappears, slow
//! readers. Each test checks that REST, MCP and `/healthz` keep answering other clients.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{self, Harness};

/// The seed spec.
fn seed() -> String {
    std::fs::read_to_string(common::root().join("specs/identity-sessions.yaml")).unwrap()
}

fn with_admin(config: &mut capgate_model::config::Config) {
    config.admin.address = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
}

/// Asserts, within 5 s, that the admin endpoints, a REST call and an MCP `tools/list` of the
/// seed all answer.
async fn still_serving(h: &Harness) {
    let check = async {
        let admin = format!("http://{}", h.gateway.admin_addr().expect("admin is open"));
        let client = reqwest::Client::new();
        for path in ["/healthz", "/readyz", "/status"] {
            let response = client.get(format!("{admin}{path}")).send().await.unwrap();
            assert_eq!(response.status(), 200, "{path}");
        }
        let rest = client
            .get(format!("{}?limit=1", h.sessions().await))
            .send()
            .await
            .unwrap();
        assert_eq!(rest.status(), 200, "REST");
        let mcp = client
            .post(crate::mcp::mcp_url(h).await)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/list")
            .body(
                json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": {
                    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                    "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
                    "io.modelcontextprotocol/clientCapabilities": {}}}})
                .to_string(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(mcp.status(), 200, "MCP");
        let text = mcp.text().await.unwrap();
        assert!(
            text.contains("stripe-get-identity-verification-sessions"),
            "{text}"
        );
    };
    tokio::time::timeout(Duration::from_secs(5), check)
        .await
        .expect("the gateway answers within 5 s");
}

/// A capability whose adapter is imported from `import` and whose token is bound from `bind`.
fn importer(import: &std::path::Path, bind: &str) -> String {
    format!(
        "naftiko: 1.0.0-alpha2\nbinds:\n  - namespace: secrets\n    location: {bind}\n    keys:\n      TOKEN: token\ncapability:\n  consumes:\n    - import: sessions\n      location: {}\n  exposes:\n    - type: rest\n      port: 8080\n      namespace: r\n      resources:\n        - path: /list\n          operations:\n            - method: GET\n              call: sessions.list\n",
        import.display()
    )
}

fn mkfifo(path: &std::path::Path) {
    let made = std::process::Command::new("mkfifo").arg(path).status();
    assert!(made.unwrap().success(), "mkfifo {}", path.display());
}

async fn file_status(h: &Harness, name: &str) -> Value {
    let admin = format!("http://{}", h.gateway.admin_addr().unwrap());
    let status: Value = reqwest::get(format!("{admin}/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    status["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"].as_str().unwrap().ends_with(name))
        .unwrap_or_else(|| panic!("{name} is not in /status: {status}"))
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_that_never_finish_reading_are_diagnostics_not_a_frozen_gateway() {
    let h = Harness::with_specs(&[("identity-sessions.yaml", &seed())], |c| {
        c.reload.watch = true;
        with_admin(c);
    })
    .await;
    still_serving(&h).await;
    let generation = h.gateway.generation();
    let dir = h.specs_dir();
    let outside = tempfile::tempdir().unwrap();
    let fifo = outside.path().join("consumes.yaml");
    mkfifo(&fifo);
    // A FIFO named like a capability, one imported, a device bound, and two link loops.
    mkfifo(&dir.join("pipe.yaml"));
    std::fs::write(
        dir.join("imports-fifo.yaml"),
        importer(&fifo, "file:///dev/null"),
    )
    .unwrap();
    std::fs::write(
        outside.path().join("ok-consumes.yaml"),
        "naftiko: 1.0.0-alpha2\nconsumes:\n  - type: http\n    namespace: sessions\n    baseUri: https://api.stripe.com\n    resources:\n      - name: list\n        path: /v1/identity/verification_sessions\n        operations:\n          - name: list\n            method: GET\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("binds-zero.yaml"),
        importer(&outside.path().join("ok-consumes.yaml"), "file:///dev/zero"),
    )
    .unwrap();
    std::os::unix::fs::symlink(".", dir.join("loop1")).unwrap();
    std::os::unix::fs::symlink(".", dir.join("loop2")).unwrap();
    // Probes while the reload runs, as a kubernetes kubelet would send them.
    still_serving(&h).await;
    h.published(generation, |r| r.files_added.len() >= 3).await;
    still_serving(&h).await;

    let pipe = file_status(&h, "pipe.yaml").await;
    assert_eq!(pipe["state"], "failed");
    assert!(
        pipe["diagnostics"][0]["message"]
            .as_str()
            .unwrap()
            .contains("a FIFO"),
        "{pipe}"
    );
    let imports = file_status(&h, "imports-fifo.yaml").await;
    let text = imports["diagnostics"].to_string();
    assert!(
        text.contains("import-unreadable") && text.contains("a FIFO"),
        "{imports}"
    );
    let zero = file_status(&h, "binds-zero.yaml").await;
    let text = zero["diagnostics"].to_string();
    assert!(
        text.contains("bind-file-unreadable") && text.contains("a character device"),
        "{zero}"
    );
    // The loops are walked once: the seed is listed once, not once per loop.
    let admin = format!("http://{}", h.gateway.admin_addr().unwrap());
    let status: Value = reqwest::get(format!("{admin}/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let seeds = status["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| {
            f["path"]
                .as_str()
                .unwrap()
                .ends_with("identity-sessions.yaml")
        })
        .count();
    assert_eq!(seeds, 1, "{status}");
}
