//! A fleet on this machine (issue 20): HAProxy (Debian's package, started on free ports by the
//! test) in front of three `capgate serve` replicas sharing one `redis-server`, one specs folder
//! mounted the way a ConfigMap is, and the Stripe stand-in. Checks that requests spread over
//! the replicas, a consumer's limit holds fleet-wide, an MCP session opened through the
//! balancer keeps working without affinity (replicas restore it from Redis),
//! a rolling restart under load fails no request, and a spec change reaches every replica.

mod support;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Running, free_port, redis, signal, wait_for_port};

const OPEN: &str = "cg_00000000000000000000000000000000000000000000f0e1";
const LIMITED: &str = "cg_00000000000000000000000000000000000000000000f0e2";
const RATE: u64 = 20;

/// One replica's ports.
#[derive(Clone, Copy)]
struct Ports {
    rest: u16,
    mcp: u16,
    ping: u16,
    admin: u16,
}

fn replica(dir: &Path, index: usize, ports: Ports, sim: &str, redis: u16) -> Running {
    let config = dir.join(format!("replica-{index}.yaml"));
    std::fs::write(
        &config,
        format!(
            "specs: {}\nlisten:\n  ports: {{8080: {}, 9090: {}, 8081: {}}}\nadmin:\n  address: 127.0.0.1:{}\nupstreams:\n  - {{namespace: \"*\", base_uri: \"{sim}\"}}\nenv: {{STRIPE_API_KEY: {}}}\nconsumers:\n  file: {}\n  require:\n    - capability: identity-sessions\nlimits:\n  store: redis://127.0.0.1:{redis}/0\n  store_timeout: 150\n  replicas: 3\n  max_connections_per_peer: 0\nmcp:\n  max_sessions_per_peer: 0\n  session_store: redis://127.0.0.1:{redis}/1\nreload:\n  drain_timeout: 5000\n",
            dir.join("specs").display(),
            ports.rest,
            ports.mcp,
            ports.ping,
            ports.admin,
            stripe_sim::DEMO_KEY,
            dir.join("consumers.yaml").display(),
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_capgate"))
        .args(["serve", "--config", &config.display().to_string()])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Running(child)
}

fn haproxy_config(rest: u16, mcp: u16, replicas: &[Ports]) -> String {
    let mut text = format!(
        "global\n  maxconn 2000\ndefaults\n  mode http\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n  retries 3\n  option redispatch 1\n  retry-on all-retryable-errors\nfrontend rest\n  bind 127.0.0.1:{rest}\n  default_backend rest\nfrontend mcp\n  bind 127.0.0.1:{mcp}\n  default_backend mcp\nbackend rest\n  balance roundrobin\n  option httpchk\n  http-check send meth GET uri /readyz\n  default-server inter 100ms fall 1 rise 2\n"
    );
    for (i, p) in replicas.iter().enumerate() {
        text.push_str(&format!(
            "  server r{i} 127.0.0.1:{} check port {}\n",
            p.rest, p.admin
        ));
    }
    // No affinity: a 2025-11-25 session is kept in Redis (`mcp.session_store`), and the
    // replica a request lands on restores it when it did not open it.
    text.push_str("backend mcp\n  balance roundrobin\n  option httpchk\n  http-check send meth GET uri /readyz\n  default-server inter 100ms fall 1 rise 2\n");
    for (i, p) in replicas.iter().enumerate() {
        text.push_str(&format!(
            "  server m{i} 127.0.0.1:{} check port {}\n",
            p.mcp, p.admin
        ));
    }
    text
}

/// A ConfigMap-style folder: files in a timestamped folder, `..data` swapped to it, key links.
fn configmap(dir: &Path, version: u32, files: &[(&str, String)]) {
    let stamp = format!("..2026_12_03_{version:02}");
    std::fs::create_dir_all(dir.join(&stamp)).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(&stamp).join(name), text).unwrap();
    }
    symlink(&stamp, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    for (name, _) in files {
        if std::fs::symlink_metadata(dir.join(name)).is_err() {
            symlink(format!("..data/{name}"), dir.join(name)).unwrap();
        }
    }
}

async fn ready(http: &reqwest::Client, admin: u16) {
    let started = Instant::now();
    while !http
        .get(format!("http://127.0.0.1:{admin}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "a replica never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metric(http: &reqwest::Client, admin: u16, line_start: &str) -> u64 {
    let Ok(response) = http
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
    else {
        return 0;
    };
    response
        .text()
        .await
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// Calls `url` with `key` from `tasks` tasks until `stop`: (calls, failures, admitted).
fn load(
    http: &reqwest::Client,
    url: &str,
    key: &'static str,
    tasks: usize,
    stop: &Arc<AtomicBool>,
) -> (
    Arc<AtomicU64>,
    Arc<AtomicU64>,
    Arc<AtomicU64>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let (calls, failures, admitted) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let handles = (0..tasks)
        .map(|_| {
            let (http, url, stop) = (http.clone(), url.to_owned(), stop.clone());
            let (calls, failures, admitted) = (calls.clone(), failures.clone(), admitted.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let status = http
                        .get(&url)
                        .bearer_auth(key)
                        .send()
                        .await
                        .map(|r| r.status().as_u16());
                    calls.fetch_add(1, Ordering::Relaxed);
                    match status {
                        Ok(200) => {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(429) if key == LIMITED => {}
                        other => {
                            eprintln!("failed call: {other:?}");
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    (calls, failures, admitted, handles)
}

async fn stop_load(stop: &Arc<AtomicBool>, handles: Vec<tokio::task::JoinHandle<()>>) {
    stop.store(true, Ordering::Relaxed);
    for handle in handles {
        handle.await.unwrap();
    }
}

/// An MCP request through the balancer; the session id it returned (if any) and the JSON-RPC
/// answer.
async fn mcp_post(
    http: &reqwest::Client,
    url: &str,
    session: Option<&str>,
    body: Value,
) -> (u16, Option<String>, Value) {
    let mut request = http
        .post(url)
        .bearer_auth(OPEN)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(session) = session {
        request = request
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", "2025-11-25");
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let id = response
        .headers()
        .get("mcp-session-id")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = response.text().await.unwrap();
    let message = serde_json::from_str(&text).ok().or_else(|| {
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
            .find(|m| m.get("id").is_some())
    });
    (status, id, message.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_behind_haproxy_shares_limits_keeps_sessions_and_restarts_without_failures() {
    let dir = tempfile::tempdir().unwrap();
    let digest = |key: &str| capgate_model::consumers::hex(&capgate_model::consumers::digest(key));
    std::fs::write(
        dir.path().join("consumers.yaml"),
        format!(
            "consumers:\n  - name: open\n    keys:\n      - {{sha256: {}, prefix: cg_0000}}\n    scopes:\n      - access: any\n  - name: limited\n    keys:\n      - {{sha256: {}, prefix: cg_0000}}\n    scopes:\n      - access: any\n    limits:\n      - {{rate: {RATE}, burst: {RATE}}}\n",
            digest(OPEN),
            digest(LIMITED)
        ),
    )
    .unwrap();
    let specs = dir.path().join("specs");
    std::fs::create_dir_all(&specs).unwrap();
    let seed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../specs/identity-sessions.yaml"),
    )
    .unwrap();
    configmap(&specs, 1, &[("identity-sessions.yaml", seed.clone())]);
    let sim = stripe_sim::StripeSim::start(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let redis_port = free_port();
    let _redis = redis(redis_port);
    let ports: Vec<Ports> = (0..3)
        .map(|_| Ports {
            rest: free_port(),
            mcp: free_port(),
            ping: free_port(),
            admin: free_port(),
        })
        .collect();
    let mut replicas: Vec<Running> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| replica(dir.path(), i, *p, &sim.base_url(), redis_port))
        .collect();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    for p in &ports {
        ready(&http, p.admin).await;
    }
    let (front_rest, front_mcp) = (free_port(), free_port());
    let haproxy_cfg: PathBuf = dir.path().join("haproxy.cfg");
    std::fs::write(&haproxy_cfg, haproxy_config(front_rest, front_mcp, &ports)).unwrap();
    let _haproxy = Running(
        Command::new("haproxy")
            .args(["-f", &haproxy_cfg.display().to_string(), "-db"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy (Debian's haproxy package; .ci/run installs it)"),
    );
    wait_for_port(front_rest, "haproxy");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let list =
        format!("http://127.0.0.1:{front_rest}/v1/v1/identity/verification-sessions?limit=1");

    // 1. Requests spread over every replica.
    for _ in 0..60 {
        let status = http
            .get(&list)
            .bearer_auth(OPEN)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
    }
    let served_line = "capgate_requests_total{surface=\"rest\",status=\"2xx\"}";
    for p in &ports {
        let served = metric(&http, p.admin, served_line).await;
        assert!(served >= 10, "a replica served {served} of 60");
    }

    // 2. One consumer's limit holds fleet-wide: over 3 s, the burst and the rate, within 10 %.
    let stop = Arc::new(AtomicBool::new(false));
    let (_, failures, admitted, handles) = load(&http, &list, LIMITED, 6, &stop);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_load(&stop, handles).await;
    let (admitted, expected) = (admitted.load(Ordering::Relaxed), RATE + 3 * RATE);
    eprintln!("fleet-wide limit: {admitted} admitted, {expected} expected");
    assert!(
        admitted.abs_diff(expected) * 10 <= expected,
        "{admitted} vs {expected}"
    );
    assert_eq!(failures.load(Ordering::Relaxed), 0);

    // 3. An MCP session opened through the balancer keeps working, wherever round-robin sends
    // its requests (no affinity), and on each replica asked directly.
    let mcp_url = format!("http://127.0.0.1:{front_mcp}/mcp/identity-sessions-mcp");
    let (status, session, _) = mcp_post(&http, &mcp_url, None, json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "fleet", "version": "1"}}})).await;
    assert_eq!(status, 200);
    let session = session.expect("a session id");
    let (status, _, _) = mcp_post(
        &http,
        &mcp_url,
        Some(&session),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    assert_eq!(status, 202);
    for id in 2..8 {
        let (status, _, answer) = mcp_post(&http, &mcp_url, Some(&session), json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": "stripe-get-identity-verification-sessions", "arguments": {}}})).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["result"]["isError"], false, "{answer}");
    }
    for (i, p) in ports.iter().enumerate() {
        let direct = format!("http://127.0.0.1:{}/mcp/identity-sessions-mcp", p.mcp);
        let (status, _, answer) = mcp_post(
            &http,
            &direct,
            Some(&session),
            json!({"jsonrpc": "2.0", "id": 10 + i, "method": "tools/list"}),
        )
        .await;
        assert_eq!(status, 200, "replica {i}: {answer}");
        assert!(
            answer["result"]["tools"]
                .as_array()
                .is_some_and(|t| t.len() == 6),
            "replica {i}: {answer}"
        );
        // A session no replica opened is not made up: the client is told to start again.
        let (status, _, answer) = mcp_post(
            &http,
            &direct,
            Some("not-a-session"),
            json!({"jsonrpc": "2.0", "id": 20 + i, "method": "tools/list"}),
        )
        .await;
        assert_eq!(status, 404, "replica {i}: {answer}");
    }

    // 4. A rolling restart under load fails no request.
    let stop = Arc::new(AtomicBool::new(false));
    let (calls, failures, _, handles) = load(&http, &list, OPEN, 4, &stop);
    for (i, p) in ports.iter().enumerate() {
        signal(&replicas[i], "-TERM");
        let started = Instant::now();
        while replicas[i].0.try_wait().unwrap().is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "replica {i} did not stop"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        replicas[i] = replica(dir.path(), i, *p, &sim.base_url(), redis_port);
        ready(&http, p.admin).await;
        // Two health checks (rise 2, every 100 ms) before the balancer sends to it again.
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    stop_load(&stop, handles).await;
    let (calls, failures) = (
        calls.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed),
    );
    eprintln!("rolling restart: {calls} calls, {failures} failed");
    assert!(calls > 100, "{calls}");
    assert_eq!(failures, 0, "failed calls during the rolling restart");

    // 5. A spec change delivered to every replica (the ConfigMap swap) is served by all.
    let ping = "naftiko: 1.0.0-alpha2\ncapability:\n  exposes:\n    - type: rest\n      port: 8081\n      namespace: ping\n      resources:\n        - path: /ping\n          operations:\n            - method: GET\n              outputParameters:\n                - name: ok\n                  type: boolean\n                  const: true\n".to_owned();
    let swapped = Instant::now();
    configmap(
        &specs,
        2,
        &[("identity-sessions.yaml", seed), ("ping.yaml", ping)],
    );
    let mut pending: Vec<u16> = ports.iter().map(|p| p.ping).collect();
    while !pending.is_empty() {
        assert!(
            swapped.elapsed() < Duration::from_secs(10),
            "not served by {pending:?}"
        );
        let mut still = Vec::new();
        for port in pending {
            let served = http
                .get(format!("http://127.0.0.1:{port}/ping"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if !served {
                still.push(port);
            }
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "spec change served by all 3 replicas {} ms after the swap",
        swapped.elapsed().as_millis()
    );
}
