//! Hot reload with real files in a temporary folder: every kind of change editors, `git` and
//! Kubernetes make, waiting on the gateway's own publish signal, never on sleeps.

use std::time::Duration;

use serde_json::{Value, json};

use capgate_model::config::{Config, Overrides};

use crate::common::{self, Harness};

/// A mock-mode capability: `GET <path>` answers `{"version": <version>}` on port `port`, and an
/// MCP adapter `<namespace>-mcp` on 9090 has one tool per name in `tools`.
fn mock(namespace: &str, path: &str, port: u16, version: &str, tools: &[&str]) -> String {
    let mut spec = format!(
        "naftiko: 1.0.0-alpha2\ncapability:\n  exposes:\n    - type: rest\n      port: {port}\n      namespace: {namespace}-rest\n      resources:\n        - path: {path}\n          operations:\n            - method: GET\n              outputParameters:\n                - name: version\n                  type: string\n                  value: \"{version}\"\n"
    );
    if !tools.is_empty() {
        spec.push_str(&format!(
            "    - type: mcp\n      port: 9090\n      namespace: {namespace}-mcp\n      tools:\n"
        ));
        for tool in tools {
            spec.push_str(&format!(
                "        - name: {tool}\n          description: answers {version}\n          outputParameters:\n            - name: version\n              type: string\n              value: \"{version}\"\n"
            ));
        }
    }
    spec
}

async fn version_at(h: &Harness, port: u16, path: &str) -> Option<String> {
    let response = h
        .http
        .get(format!("{}{path}", h.base(port).await))
        .send()
        .await
        .unwrap();
    if response.status() == 404 {
        return None;
    }
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    Some(body["version"].as_str().unwrap().to_owned())
}

fn changed(report: &capgate::reload::Report, name: &str) -> bool {
    report
        .files_added
        .iter()
        .chain(&report.files_changed)
        .chain(&report.files_removed)
        .any(|p| p.file_name().is_some_and(|n| n == name))
}

#[tokio::test]
async fn an_edit_in_place_serves_the_new_version() {
    let h = Harness::watching(&[("a.yaml", &mock("a", "/a", 8080, "one", &[]))]).await;
    assert_eq!(version_at(&h, 8080, "/a").await.as_deref(), Some("one"));
    let generation = h.gateway.generation();
    std::fs::write(
        h.specs_dir().join("a.yaml"),
        mock("a", "/a", 8080, "two", &[]),
    )
    .unwrap();
    h.published(generation, |r| changed(r, "a.yaml")).await;
    assert_eq!(version_at(&h, 8080, "/a").await.as_deref(), Some("two"));
}

#[tokio::test]
async fn write_to_a_temporary_file_then_rename() {
    let h = Harness::watching(&[("a.yaml", &mock("a", "/a", 8080, "one", &[]))]).await;
    let generation = h.gateway.generation();
    let temp = h.specs_dir().join(".a.yaml.swp");
    std::fs::write(&temp, mock("a", "/a", 8080, "two", &[])).unwrap();
    std::fs::rename(&temp, h.specs_dir().join("a.yaml")).unwrap();
    h.published(generation, |r| changed(r, "a.yaml")).await;
    assert_eq!(version_at(&h, 8080, "/a").await.as_deref(), Some("two"));
}

#[tokio::test]
async fn delete_then_recreate_and_rename_out_and_in() {
    let h = Harness::watching(&[
        ("a.yaml", &mock("a", "/a", 8080, "one", &[])),
        ("keep.yaml", &mock("keep", "/keep", 8080, "k", &[])),
    ])
    .await;
    let a = h.specs_dir().join("a.yaml");
    let generation = h.gateway.generation();
    std::fs::remove_file(&a).unwrap();
    let report = h.published(generation, |r| changed(r, "a.yaml")).await;
    assert_eq!(report.routes_removed.len(), 1, "{report:?}");
    assert_eq!(
        version_at(&h, 8080, "/a").await,
        None,
        "a deleted file's route is gone"
    );
    assert_eq!(version_at(&h, 8080, "/keep").await.as_deref(), Some("k"));

    let generation = h.gateway.generation();
    std::fs::write(&a, mock("a", "/a", 8080, "again", &[])).unwrap();
    h.published(generation, |r| changed(r, "a.yaml")).await;
    assert_eq!(version_at(&h, 8080, "/a").await.as_deref(), Some("again"));

    let outside = tempfile::tempdir().unwrap();
    let generation = h.gateway.generation();
    std::fs::rename(&a, outside.path().join("a.yaml")).unwrap();
    h.published(generation, |r| changed(r, "a.yaml")).await;
    assert_eq!(version_at(&h, 8080, "/a").await, None);
    let generation = h.gateway.generation();
    std::fs::rename(outside.path().join("a.yaml"), h.specs_dir().join("b.yaml")).unwrap();
    h.published(generation, |r| changed(r, "b.yaml")).await;
    assert_eq!(version_at(&h, 8080, "/a").await.as_deref(), Some("again"));
}

#[tokio::test]
async fn a_burst_of_three_hundred_files_loads_completely() {
    let h = Harness::watching(&[("keep.yaml", &mock("keep", "/keep", 8080, "k", &[]))]).await;
    let mut names: Vec<_> = std::fs::read_dir(common::corpus())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let generation = h.gateway.generation();
    for path in names.iter().take(300) {
        std::fs::copy(path, h.specs_dir().join(path.file_name().unwrap())).unwrap();
    }
    let mut reports = h.gateway.subscribe();
    tokio::time::timeout(Duration::from_secs(20), async {
        while h.gateway.status().len() < 301 {
            reports.changed().await.unwrap();
        }
    })
    .await
    .expect("every file of the burst is loaded");
    assert!(h.gateway.generation() > generation);
    assert!(
        h.gateway
            .status()
            .iter()
            .all(|f| f.state == capgate::reload::FileState::Serving),
        "no file is half-loaded"
    );
}

#[tokio::test]
async fn a_broken_edit_keeps_the_last_good_version_until_fixed() {
    let h = Harness::watching(&[("a.yaml", &mock("a", "/a", 8080, "good", &[]))]).await;
    let a = h.specs_dir().join("a.yaml");
    let full = mock("a", "/a", 8080, "fixed", &[]);
    // What a writer leaves mid-write: the new content up to the middle of a quoted string.
    let generation = h.gateway.generation();
    let cut = full.find("\"fixed").unwrap() + 3;
    std::fs::write(&a, &full[..cut]).unwrap();
    h.published(generation, |r| changed(r, "a.yaml")).await;
    let status = h.gateway.status();
    assert_eq!(status[0].state, capgate::reload::FileState::ServingLastGood);
    assert!(
        status[0]
            .diagnostics
            .iter()
            .any(|d| d.severity == capgate_model::diag::Severity::Error),
        "{:?}",
        status[0].diagnostics
    );
    assert_eq!(version_at(&h, 8080, "/a").await.as_deref(), Some("good"));

    let generation = h.gateway.generation();
    std::fs::write(&a, &full).unwrap();
    h.published(generation, |r| changed(r, "a.yaml")).await;
    assert_eq!(
        h.gateway.status()[0].state,
        capgate::reload::FileState::Serving
    );
    assert_eq!(version_at(&h, 8080, "/a").await.as_deref(), Some("fixed"));
}

#[cfg(unix)]
#[tokio::test]
async fn a_kubernetes_configmap_swap_is_picked_up() {
    use std::os::unix::fs::symlink;
    let h = Harness::watching(&[]).await;
    let dir = h.specs_dir();
    // The layout kubelet makes: real files in a timestamped folder, `..data` pointing at it,
    // and each key a symlink through `..data`.
    std::fs::create_dir(dir.join("..2026_11_25_01")).unwrap();
    std::fs::write(
        dir.join("..2026_11_25_01/a.yaml"),
        mock("a", "/a", 8080, "v1", &[]),
    )
    .unwrap();
    let generation = h.gateway.generation();
    symlink("..2026_11_25_01", dir.join("..data")).unwrap();
    symlink("..data/a.yaml", dir.join("a.yaml")).unwrap();
    h.published(generation, |r| changed(r, "a.yaml")).await;
    assert_eq!(version_at(&h, 8080, "/a").await.as_deref(), Some("v1"));

    // An update: a new folder, a new `..data` swapped in atomically, the old folder removed.
    std::fs::create_dir(dir.join("..2026_11_25_02")).unwrap();
    std::fs::write(
        dir.join("..2026_11_25_02/a.yaml"),
        mock("a", "/a", 8080, "v2", &[]),
    )
    .unwrap();
    let generation = h.gateway.generation();
    symlink("..2026_11_25_02", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join("..2026_11_25_01")).unwrap();
    h.published(generation, |r| changed(r, "a.yaml")).await;
    assert_eq!(version_at(&h, 8080, "/a").await.as_deref(), Some("v2"));
}

#[tokio::test]
async fn listeners_follow_the_ports_files_declare() {
    let h = Harness::watching(&[("a.yaml", &mock("a", "/a", 8080, "one", &[]))]).await;
    let old = h.gateway.local_addr(8080).await.unwrap();
    let generation = h.gateway.generation();
    std::fs::write(
        h.specs_dir().join("a.yaml"),
        mock("a", "/a", 8081, "moved", &[]),
    )
    .unwrap();
    h.published(generation, |r| changed(r, "a.yaml")).await;
    assert_eq!(version_at(&h, 8081, "/a").await.as_deref(), Some("moved"));
    assert_eq!(
        h.gateway.local_addr(8080).await,
        None,
        "no file declares 8080 any more"
    );
    // The old listener closed after draining: new connections are refused.
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(old).await.is_err() {
            refused = true;
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "{old} still accepts connections");
}

#[tokio::test]
async fn a_port_that_cannot_be_bound_is_a_diagnostic_not_a_crash() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let h = Harness::with_specs(
        &[
            ("a.yaml", &mock("a", "/a", 8080, "one", &[])),
            ("b.yaml", &mock("b", "/b", 8081, "two", &[])),
        ],
        |c| {
            c.listen.ephemeral_ports = false;
            c.listen.ports.insert(8080, taken_port);
            c.listen.ports.insert(8081, 0);
        },
    )
    .await;
    assert_eq!(
        version_at(&h, 8081, "/b").await.as_deref(),
        Some("two"),
        "other files still serve"
    );
    let status = h.gateway.status();
    let a = status.iter().find(|f| f.path.ends_with("a.yaml")).unwrap();
    let failure = a
        .diagnostics
        .iter()
        .find(|d| d.code.as_str() == "listen-failed")
        .expect("a listen-failed diagnostic");
    assert!(
        failure.message.contains("127.0.0.1:8080"),
        "{}",
        failure.message
    );
    assert_eq!(a.state, capgate::reload::FileState::Degraded);
}

#[tokio::test]
async fn in_flight_requests_finish_on_the_version_they_started_with() {
    let seed =
        std::fs::read_to_string(common::root().join("specs/identity-sessions.yaml")).unwrap();
    let h = Harness::with_specs(&[("s.yaml", &seed)], |c| c.reload.watch = true).await;
    let id = common::create_session_directly(&h.sim).await;
    h.http
        .post(format!("{}/_sim/faults", h.sim.base_url()))
        .json(&json!({"status": null, "delay_ms": 1500, "count": 1}))
        .send()
        .await
        .unwrap();
    let url = format!("{}/{id}", h.sessions().await);
    let before = h.sim.requests().len();
    let slow = tokio::spawn({
        let http = h.http.clone();
        async move { http.get(url).send().await.unwrap() }
    });
    while h.sim.requests().len() == before {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // While the request waits upstream, its route is removed.
    let generation = h.gateway.generation();
    std::fs::write(
        h.specs_dir().join("s.yaml"),
        seed.replace(
            "/v1/v1/identity/verification-sessions/{session}:",
            "/v2/gone/{session}:",
        )
        .replace(
            "path: /v1/v1/identity/verification-sessions/{session}\n",
            "path: /v2/gone/{session}\n",
        ),
    )
    .unwrap();
    h.published(generation, |r| changed(r, "s.yaml")).await;
    let response = slow.await.unwrap();
    assert_eq!(
        response.status(),
        200,
        "the in-flight request finished on the old version"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], id.as_str());
    let gone = h
        .http
        .get(format!("{}/{id}", h.sessions().await))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404, "new requests see the new version");
}

#[tokio::test]
async fn imported_and_bind_files_reload_what_reads_them() {
    let outside = tempfile::tempdir().unwrap();
    let consumes = |path: &str| {
        format!(
            "naftiko: 1.0.0-alpha2\nconsumes:\n  - type: http\n    namespace: sessions\n    baseUri: https://api.stripe.com\n    authentication:\n      type: bearer\n      token: \"{{{{TOKEN}}}}\"\n    resources:\n      - name: list\n        path: {path}\n        operations:\n          - name: list\n            method: GET\n"
        )
    };
    std::fs::write(
        outside.path().join("consumes.yaml"),
        consumes("/v1/identity/verification_sessions"),
    )
    .unwrap();
    std::fs::write(
        outside.path().join("secrets.yaml"),
        "token: sk_test_first\n",
    )
    .unwrap();
    let capability = format!(
        "naftiko: 1.0.0-alpha2\nbinds:\n  - namespace: secrets\n    location: file://{}\n    keys:\n      TOKEN: token\ncapability:\n  consumes:\n    - import: sessions\n      location: {}\n  exposes:\n    - type: rest\n      port: 8080\n      namespace: r\n      resources:\n        - path: /list\n          operations:\n            - method: GET\n              call: sessions.list\n",
        outside.path().join("secrets.yaml").display(),
        outside.path().join("consumes.yaml").display(),
    );
    let h = Harness::watching(&[("importer.yaml", &capability)]).await;
    let url = format!("{}/list", h.base(8080).await);
    assert_eq!(h.http.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(
        h.sim.requests().last().unwrap().header("authorization"),
        Some("Bearer sk_test_first")
    );

    let generation = h.gateway.generation();
    std::fs::write(
        outside.path().join("secrets.yaml"),
        "token: sk_test_second\n",
    )
    .unwrap();
    h.published(generation, |r| changed(r, "importer.yaml"))
        .await;
    h.http.get(&url).send().await.unwrap();
    assert_eq!(
        h.sim.requests().last().unwrap().header("authorization"),
        Some("Bearer sk_test_second")
    );

    let generation = h.gateway.generation();
    std::fs::write(
        outside.path().join("consumes.yaml"),
        consumes("/v1/identity/verification_sessions/vs_x"),
    )
    .unwrap();
    h.published(generation, |r| changed(r, "importer.yaml"))
        .await;
    h.http.get(&url).send().await.unwrap();
    assert_eq!(
        h.sim.requests().last().unwrap().path,
        "/v1/identity/verification_sessions/vs_x"
    );
}

#[tokio::test]
async fn the_admin_listener_shows_health_readiness_and_every_file() {
    let h = Harness::with_specs(
        &[
            ("a.yaml", &mock("a", "/a", 8080, "one", &[])),
            ("broken.yaml", "naftiko: [\n"),
        ],
        |c| c.admin.address = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
    )
    .await;
    let admin = format!("http://{}", h.gateway.admin_addr().expect("admin is open"));
    assert_eq!(
        h.http
            .get(format!("{admin}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let ready = h.http.get(format!("{admin}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let status: Value = h
        .http
        .get(format!("{admin}/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["ready"], true);
    let files = status["files"].as_array().unwrap();
    let state = |name: &str| {
        files
            .iter()
            .find(|f| f["path"].as_str().unwrap().ends_with(name))
            .unwrap()
            .clone()
    };
    assert_eq!(state("a.yaml")["state"], "serving");
    let broken = state("broken.yaml");
    assert_eq!(broken["state"], "failed");
    assert_eq!(broken["diagnostics"][0]["code"], "yaml-syntax");
    assert!(broken["generation"].as_u64().unwrap() >= 1);
    assert!(broken["loaded_at"].as_u64().unwrap() > 1_700_000_000_000);
    assert_eq!(status["listeners"][0]["rest_routes"], 1);
    // Secrets never show: the test key is configured, and nowhere in the status.
    assert!(!status.to_string().contains(common::KEY));
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_then_stops_accepting() {
    let h = Harness::seed().await;
    let id = common::create_session_directly(&h.sim).await;
    h.http
        .post(format!("{}/_sim/faults", h.sim.base_url()))
        .json(&json!({"status": null, "delay_ms": 800, "count": 1}))
        .send()
        .await
        .unwrap();
    let addr = h.gateway.local_addr(8080).await.unwrap();
    let url = format!("{}/{id}", h.sessions().await);
    let before = h.sim.requests().len();
    let slow = tokio::spawn({
        let http = h.http.clone();
        async move { http.get(url).send().await.unwrap() }
    });
    while h.sim.requests().len() == before {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    h.gateway.shutdown().await;
    let response = slow.await.unwrap();
    assert_eq!(response.status(), 200, "the in-flight request finished");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connections after shutdown"
    );
}

/// An MCP client that reports `notifications/tools/list_changed` on a channel.
#[derive(Clone)]
pub struct Notified(pub tokio::sync::mpsc::UnboundedSender<()>);

impl rmcp::ClientHandler for Notified {
    async fn on_tool_list_changed(
        &self,
        _context: rmcp::service::NotificationContext<rmcp::RoleClient>,
    ) {
        let _ = self.0.send(());
    }
}

async fn notified_client(
    url: String,
) -> (
    rmcp::service::RunningService<rmcp::RoleClient, Notified>,
    tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    use rmcp::ServiceExt;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let client = Notified(tx)
        .serve(rmcp::transport::StreamableHttpClientTransport::from_uri(
            url,
        ))
        .await
        .unwrap();
    (client, rx)
}

fn tool_names(tools: Vec<rmcp::model::Tool>) -> Vec<String> {
    tools.into_iter().map(|t| t.name.to_string()).collect()
}

#[tokio::test]
async fn mcp_clients_hear_of_changes_to_their_adapter_only() {
    let h = Harness::watching(&[
        ("a.yaml", &mock("a", "/a", 8080, "one", &["t1"])),
        ("b.yaml", &mock("b", "/b", 8080, "b", &["u1"])),
    ])
    .await;
    let base = h.base(9090).await;
    let (legacy_a, mut heard_a) = notified_client(format!("{base}/mcp/a-mcp")).await;
    let (legacy_b, mut heard_b) = notified_client(format!("{base}/mcp/b-mcp")).await;
    let modern_a = crate::mcp::modern_client(&format!("{base}/mcp/a-mcp")).await;
    let mut subscription = modern_a
        .peer()
        .listen(
            rmcp::model::SubscriptionFilter::builder()
                .tools_list_changed()
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(tool_names(legacy_a.list_all_tools().await.unwrap()), ["t1"]);

    let generation = h.gateway.generation();
    std::fs::write(
        h.specs_dir().join("a.yaml"),
        mock("a", "/a", 8080, "two", &["t1", "t2"]),
    )
    .unwrap();
    h.published(generation, |r| changed(r, "a.yaml")).await;
    tokio::time::timeout(Duration::from_secs(1), heard_a.recv())
        .await
        .expect("the legacy session hears of the change within 1 s")
        .unwrap();
    let notification = tokio::time::timeout(Duration::from_secs(1), subscription.next())
        .await
        .expect("the 2026 subscription hears of the change within 1 s")
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            notification,
            rmcp::model::ServerNotification::ToolListChangedNotification(_)
        ),
        "{notification:?}"
    );
    assert_eq!(
        tool_names(legacy_a.list_all_tools().await.unwrap()),
        ["t1", "t2"]
    );
    assert_eq!(
        tool_names(modern_a.list_all_tools().await.unwrap()),
        ["t1", "t2"]
    );
    // The other adapter did not change, so its client is not told anything.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), heard_b.recv())
            .await
            .is_err()
    );
    assert_eq!(tool_names(legacy_b.list_all_tools().await.unwrap()), ["u1"]);

    // A change that leaves the tools as they were (a REST-only edit) notifies nobody.
    let generation = h.gateway.generation();
    std::fs::write(
        h.specs_dir().join("a.yaml"),
        mock("a", "/a2", 8080, "two", &["t1", "t2"]),
    )
    .unwrap();
    h.published(generation, |r| changed(r, "a.yaml")).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), heard_a.recv())
            .await
            .is_err()
    );
    legacy_a.cancel().await.unwrap();
    legacy_b.cancel().await.unwrap();
    modern_a.cancel().await.unwrap();
}

/// A changed config file applies its upstream overrides and bind values at once, and the
/// command-line settings keep winning over it, through spec reloads and config reloads alike.
#[tokio::test]
async fn a_changed_config_file_applies_and_command_line_settings_keep_winning() {
    let seed =
        std::fs::read_to_string(common::root().join("specs/identity-sessions.yaml")).unwrap();
    let outside = tempfile::tempdir().unwrap();
    let file = outside.path().join("capgate.yaml");
    let config_text = |key: &str| {
        format!(
            "listen: {{ ephemeral_ports: true, force_address: 127.0.0.1 }}\nadmin: {{ address: null }}\nreload: {{ debounce: 20 }}\nupstreams:\n  - {{ namespace: '*', base_uri: 'http://127.0.0.1:9' }}\nenv: {{ STRIPE_API_KEY: {key} }}\n"
        )
    };
    std::fs::write(&file, config_text("sk_test_from_file")).unwrap();
    let h = Harness::with_specs(&[("identity-sessions.yaml", &seed)], |c| {
        let on_command_line = Overrides {
            specs: Some(c.specs.clone()),
            upstreams: c.upstreams.clone(),
            ..Overrides::default()
        };
        *c = Config::from_file(&file)
            .unwrap()
            .with_overrides(on_command_line);
    })
    .await;
    async fn list(h: &Harness) -> reqwest::StatusCode {
        h.http
            .get(h.sessions().await)
            .send()
            .await
            .unwrap()
            .status()
    }
    let key_sent = |h: &Harness| {
        h.sim
            .requests()
            .last()
            .and_then(|r| r.header("authorization").map(str::to_owned))
    };
    assert_eq!(list(&h).await, 200, "the command line's upstream wins");
    assert_eq!(key_sent(&h).as_deref(), Some("Bearer sk_test_from_file"));

    // A spec reload re-reads the config file: the command-line upstream still wins.
    let generation = h.gateway.generation();
    std::fs::write(
        h.specs_dir().join("identity-sessions.yaml"),
        format!("{seed}\n# edited\n"),
    )
    .unwrap();
    h.published(generation, |r| changed(r, "identity-sessions.yaml"))
        .await;
    assert_eq!(list(&h).await, 200);

    // A new bind value in the config file recompiles every capability with it.
    let generation = h.gateway.generation();
    std::fs::write(&file, config_text("sk_test_rotated")).unwrap();
    h.published(generation, |r| changed(r, "identity-sessions.yaml"))
        .await;
    assert_eq!(list(&h).await, 200);
    assert_eq!(key_sent(&h).as_deref(), Some("Bearer sk_test_rotated"));
}

/// Writes one version of a ConfigMap volume as kubelet does: the files in a new timestamped
/// folder, a `..data` link swapped to it atomically (a new link renamed over the old), a key
/// link through `..data` for each file, the previous folder removed.
#[cfg(unix)]
fn configmap<T: AsRef<[u8]>>(dir: &std::path::Path, version: u32, files: &[(&str, T)]) {
    use std::os::unix::fs::symlink;
    let stamp = format!("..2026_12_03_{version:02}");
    std::fs::create_dir_all(dir.join(&stamp)).unwrap();
    for (name, content) in files {
        std::fs::write(dir.join(&stamp).join(name), content).unwrap();
    }
    symlink(&stamp, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    for (name, _) in files {
        let key = dir.join(name);
        if std::fs::symlink_metadata(&key).is_err() {
            symlink(format!("..data/{name}"), &key).unwrap();
        }
    }
    if version > 1 {
        let _ = std::fs::remove_dir_all(dir.join(format!("..2026_12_03_{:02}", version - 1)));
    }
}

/// Specs, plugins, the consumers file and the gateway config each mounted from a ConfigMap, all
/// four updated at once while a client keeps calling: no call fails, and each change is served.
#[cfg(unix)]
#[tokio::test]
async fn configmaps_of_specs_consumers_and_config_swap_under_load() {
    use capgate_model::consumers::{digest, hex};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let root = tempfile::tempdir().unwrap();
    let (specs, consumers, config_dir, plugins) = (
        root.path().join("specs"),
        root.path().join("consumers"),
        root.path().join("config"),
        root.path().join("plugins"),
    );
    for dir in [&specs, &consumers, &config_dir, &plugins] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let sim_a = stripe_sim::StripeSim::start(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let sim_b = stripe_sim::StripeSim::start(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let (first_key, second_key) = (
        "cg_00000000000000000000000000000000000000000000c0f1",
        "cg_00000000000000000000000000000000000000000000c0f2",
    );
    let consumer = |keys: &[&str]| {
        let mut text = String::from("consumers:\n  - name: team\n    keys:\n");
        for key in keys {
            text.push_str(&format!(
                "      - sha256: {}\n        prefix: cg_0000\n",
                hex(&digest(key))
            ));
        }
        text + "    scopes:\n      - access: any\n"
    };
    let config_text = |sim: &stripe_sim::StripeSim| {
        format!(
            "specs: {}\nlisten: {{ephemeral_ports: true, force_address: 127.0.0.1}}\nadmin: {{address: null}}\nreload: {{watch: true}}\nenv: {{STRIPE_API_KEY: {}}}\nupstreams:\n  - {{namespace: \"*\", base_uri: \"{}\"}}\nconsumers:\n  file: {}\n  require:\n    - {{capability: identity-sessions}}\nplugins:\n  dir: {}\n  bindings:\n    - {{plugin: stamp.wasm, capabilities: [identity-*], operations: [identity-sessions.getidentityverificationsessions], config: {{value: v2}}, on_error: fail-closed}}\n",
            specs.display(),
            common::KEY,
            sim.base_url(),
            consumers.join("consumers.yaml").display(),
            plugins.display()
        )
    };
    let seed =
        std::fs::read_to_string(common::root().join("specs/identity-sessions.yaml")).unwrap();
    configmap(&specs, 1, &[("identity-sessions.yaml", seed.clone())]);
    configmap(&consumers, 1, &[("consumers.yaml", consumer(&[first_key]))]);
    // The bound plugin is first a no-op, then the stamping one.
    let plugin = |name: &str| std::fs::read(common::plugin_wasm(name)).unwrap();
    configmap(&plugins, 1, &[("stamp.wasm", plugin("noop"))]);
    configmap(&config_dir, 1, &[("capgate.yaml", config_text(&sim_a))]);
    let config = Config::from_file(&config_dir.join("capgate.yaml")).unwrap();
    let gateway = capgate::start(config).await;
    let base = |port| {
        let gateway = gateway.clone();
        async move { format!("http://{}", gateway.local_addr(port).await.unwrap()) }
    };
    let list = format!(
        "{}/v1/v1/identity/verification-sessions?limit=1",
        base(8080).await
    );
    let http = reqwest::Client::new();

    // A client calling all along.
    let (stop, calls, failures) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let load = {
        let (http, list, stop, calls, failures) = (
            http.clone(),
            list.clone(),
            stop.clone(),
            calls.clone(),
            failures.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let status = http
                    .get(&list)
                    .bearer_auth(first_key)
                    .send()
                    .await
                    .map(|r| r.status());
                calls.fetch_add(1, Ordering::Relaxed);
                if !matches!(status, Ok(s) if s == 200) {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!sim_a.requests().is_empty());

    // One deploy: a new spec file, a second key, the upstream moved to another stand-in.
    let ping = mock("ping", "/ping", 8081, "v2", &[]);
    configmap(
        &specs,
        2,
        &[("identity-sessions.yaml", seed), ("ping.yaml", ping)],
    );
    configmap(
        &consumers,
        2,
        &[("consumers.yaml", consumer(&[first_key, second_key]))],
    );
    configmap(&config_dir, 2, &[("capgate.yaml", config_text(&sim_b))]);
    configmap(&plugins, 2, &[("stamp.wasm", plugin("stamp"))]);
    let served = async {
        loop {
            let ping_served = match gateway.local_addr(8081).await {
                Some(addr) => http
                    .get(format!("http://{addr}/ping"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200),
                None => false,
            };
            let answer = http.get(&list).bearer_auth(second_key).send().await;
            let second_key_works = answer.as_ref().is_ok_and(|r| r.status() == 200);
            let stamped = answer.is_ok_and(|r| {
                r.headers()
                    .get("x-capgate-stamp")
                    .is_some_and(|v| v.as_bytes().ends_with(b"v2"))
            });
            if ping_served && second_key_works && stamped && !sim_b.requests().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(15), served)
        .await
        .expect("the new spec, key, plugin and upstream are all served");
    // The old upstream gets nothing new once the config applies.
    let on_a = sim_a.requests().len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert_eq!(
        sim_a.requests().len(),
        on_a,
        "calls still reach the old upstream"
    );
    let calls = calls.load(Ordering::Relaxed);
    assert!(calls > 20, "{calls}");
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "failed calls of {calls}"
    );
    gateway.close();
}
