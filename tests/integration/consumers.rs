//! Consumers (issue 19): API keys, scopes on REST and MCP, and the consumers file reloaded
//! like the specs.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{self, Harness};
use capgate_model::config::Requirement;
use capgate_model::consumers::{digest, hex};

const READER: &str = "cg_00000000000000000000000000000000000000000000aaaa";
const WRITER: &str = "cg_00000000000000000000000000000000000000000000bbbb";
const EXPIRED: &str = "cg_00000000000000000000000000000000000000000000cccc";
const LIMITED: &str = "cg_00000000000000000000000000000000000000000000dddd";
const QUOTA: &str = "cg_00000000000000000000000000000000000000000000eeee";

fn key(key: &str, extra: &str) -> String {
    format!(
        "      - sha256: {}\n        prefix: {}\n{extra}",
        hex(&digest(key)),
        &key[..7]
    )
}

/// A reader (GETs and read-only tools of every capability), and a writer (the other routes
/// and tools) of identity ones.
fn consumers_file(writer_access: &str) -> String {
    format!(
        "consumers:\n  - name: reader\n    keys:\n{}{}    scopes:\n      - access: read\n  - name: writer\n    keys:\n{}    scopes:\n      - capability: identity-*\n        access: {writer_access}\n  - name: limited\n    keys:\n{}    scopes:\n      - access: any\n    limits:\n      - rate: 2\n        burst: 3\n  - name: quota\n    keys:\n{}    scopes:\n      - access: any\n    limits:\n      - quota: 2\n        per: day\n        name: \"*-2\"\n",
        key(READER, ""),
        key(EXPIRED, "        expires_at: 1000\n"),
        key(WRITER, ""),
        key(LIMITED, ""),
        key(QUOTA, "")
    )
}

async fn harness(dir: &tempfile::TempDir) -> Harness {
    let seed =
        std::fs::read_to_string(common::root().join("specs/identity-sessions.yaml")).unwrap();
    let file = dir.path().join("consumers.yaml");
    std::fs::write(&file, consumers_file("write")).unwrap();
    Harness::with_specs(&[("identity-sessions.yaml", &seed)], |c| {
        c.reload.watch = true;
        c.admin.address = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        c.consumers.file = Some(file);
        c.consumers.require = vec![Requirement::default()];
    })
    .await
}

#[tokio::test]
async fn rest_needs_a_consumers_key_and_its_scopes_decide() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(&dir).await;
    let sessions = h.sessions().await;
    let list = |key: Option<&str>| {
        let mut request = h.http.get(format!("{sessions}?limit=1"));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send()
    };
    // No key: a 401 asking for one.
    let response = list(None).await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer realm=\"capgate\""
    );
    // An unknown key, an expired key: the same 401, naming no consumer.
    let mut bodies = Vec::new();
    for key in [Some("cg_unknown"), Some(EXPIRED)] {
        let response = list(key).await.unwrap();
        assert_eq!(response.status(), 401, "{key:?}");
        assert_eq!(
            response.headers()["www-authenticate"],
            "Bearer realm=\"capgate\", error=\"invalid_token\", error_description=\"the credentials are unknown or expired\""
        );
        bodies.push(response.text().await.unwrap());
    }
    assert!(bodies.iter().all(|b| b == &bodies[0]), "{bodies:?}");
    assert!(!bodies[0].contains("reader") && !bodies[0].contains("writer"));
    // A malformed `Authorization` says so.
    let malformed = h
        .http
        .get(format!("{sessions}?limit=1"))
        .header("authorization", "Basic cmVhZGVyOg==")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 401);
    assert!(
        malformed.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("is not `Bearer <key or token>`")
    );
    // The reader reads, and may not write.
    assert_eq!(list(Some(READER)).await.unwrap().status(), 200);
    let create = |key: &str| {
        h.http
            .post(&sessions)
            .bearer_auth(key)
            .form(&[("type", "document")])
            .send()
    };
    let refused = create(READER).await.unwrap();
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "permission_denied", "{body}");
    assert_eq!(create(WRITER).await.unwrap().status(), 200);
    // X-Api-Key works too; the consumer's key never reaches the upstream.
    let by_header = h
        .http
        .get(format!("{sessions}?limit=1"))
        .header("x-api-key", READER)
        .send()
        .await
        .unwrap();
    assert_eq!(by_header.status(), 200);
    for request in h.sim.requests() {
        let seen = format!("{request:?}");
        assert!(!seen.contains(READER) && !seen.contains(WRITER), "{seen}");
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {}", common::KEY).as_str())
        );
    }

    // The consumers file reloads: the writer loses write access...
    let generation = h.gateway.generation();
    std::fs::write(dir.path().join("consumers.yaml"), consumers_file("read")).unwrap();
    let wait = async {
        while create(WRITER).await.unwrap().status() != 403 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .expect("the edit applies");
    // ...and a broken edit keeps the last good set, with a diagnostic naming its line.
    std::fs::write(
        dir.path().join("consumers.yaml"),
        consumers_file("read").replace(
            "access: read\n  - name: writer",
            "acess: read\n  - name: writer",
        ),
    )
    .unwrap();
    let admin = format!("http://{}", h.gateway.admin_addr().unwrap());
    let wait = async {
        loop {
            let status: Value = reqwest::get(format!("{admin}/status"))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if status["consumers"]["diagnostics"]
                .as_array()
                .is_some_and(|d| !d.is_empty())
            {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let status = tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .expect("a diagnostic");
    let diagnostic = &status["consumers"]["diagnostics"][0];
    assert_eq!(diagnostic["code"], "unknown-key", "{diagnostic}");
    assert_eq!(diagnostic["line"], 10, "{diagnostic}");
    assert_eq!(
        list(Some(READER)).await.unwrap().status(),
        200,
        "the last good set serves"
    );
    // /status shows consumers, their prefixes, scopes, limits and last use, never a digest.
    let listed = status["consumers"]["consumers"].as_array().unwrap();
    let reader = listed.iter().find(|c| c["name"] == "reader").unwrap();
    assert!(
        reader["last_used"].as_str().unwrap().ends_with('Z'),
        "{reader}"
    );
    let limited = listed.iter().find(|c| c["name"] == "limited").unwrap();
    assert_eq!(limited["last_used"], Value::Null, "never called");
    assert_eq!(limited["limits"][0]["policy"], "burst", "{limited}");
    assert_eq!(limited["limits"][0]["calls"], 3, "{limited}");
    let text = status.to_string();
    assert!(text.contains("cg_0000"), "{text}");
    assert!(!text.contains(&hex(&digest(READER))), "a digest in /status");
    let _ = generation;
}

/// A 2026-era `tools/list`, with `key` as a bearer token.
async fn tools_list(h: &Harness, key: Option<&str>) -> (u16, Value) {
    let mut request = h
        .http
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
        );
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn names(list: &Value) -> Vec<String> {
    list["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn mcp_consumers_see_only_the_tools_their_scopes_grant() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(&dir).await;
    let (status, _) = tools_list(&h, None).await;
    assert_eq!(status, 401);
    let (status, reader) = tools_list(&h, Some(READER)).await;
    assert_eq!(status, 200);
    assert_eq!(
        names(&reader),
        [
            "stripe-get-identity-verification-sessions",
            "stripe-get-identity-verification-sessions-2"
        ]
    );
    // `write` grants the other four (the POSTs), not the reads.
    let (_, writer) = tools_list(&h, Some(WRITER)).await;
    let writes = names(&writer);
    assert_eq!(writes.len(), 4, "{writes:?}");
    assert!(
        writes.iter().all(|n| n.starts_with("stripe-post-")),
        "{writes:?}"
    );
    // A tool the reader does not see does not exist for it, on the direct path and rmcp's.
    let call = |key: &'static str, progress: bool| {
        let mut params = json!({"name": "stripe-post-identity-verification-sessions",
            "arguments": {"body": {"type": "document"}},
            "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
                "io.modelcontextprotocol/clientCapabilities": {}}});
        if progress {
            params["_meta"]["progressToken"] = json!("p");
        }
        let h = &h;
        async move {
            let response = h
                .http
                .post(crate::mcp::mcp_url(h).await)
                .bearer_auth(key)
                .header("accept", "application/json, text/event-stream")
                .header("content-type", "application/json")
                .header("mcp-protocol-version", "2026-07-28")
                .header("mcp-method", "tools/call")
                .header("mcp-name", "stripe-post-identity-verification-sessions")
                .body(
                    json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": params})
                        .to_string(),
                )
                .send()
                .await
                .unwrap();
            response.text().await.unwrap()
        }
    };
    let before = h.sim.requests().len();
    for progress in [false, true] {
        let answer = call(READER, progress).await;
        assert!(answer.contains("unknown tool"), "{answer}");
    }
    assert_eq!(
        h.sim.requests().len(),
        before,
        "a hidden tool reached the upstream"
    );
    let answer = call(WRITER, false).await;
    assert!(
        answer.contains("\"isError\":false") || answer.contains("verification_session"),
        "{answer}"
    );
}

/// A 2025-11-25 session opened with `key`, and what it hears of tool list changes.
async fn notified_session(
    url: &str,
    key: &str,
) -> (
    rmcp::service::RunningService<rmcp::RoleClient, crate::reload::Notified>,
    tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    use rmcp::ServiceExt;
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(url.to_owned()).auth_header(key),
    );
    let session = crate::reload::Notified(tx).serve(transport).await.unwrap();
    (session, rx)
}

#[tokio::test]
async fn only_consumers_whose_visible_tools_change_hear_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(&dir).await;
    let url = crate::mcp::mcp_url(&h).await;
    let (reader, mut reader_heard) = notified_session(&url, READER).await;
    let (writer, mut writer_heard) = notified_session(&url, WRITER).await;
    assert_eq!(reader.list_all_tools().await.unwrap().len(), 2);
    assert_eq!(writer.list_all_tools().await.unwrap().len(), 4);

    // The writer may now read as well; the reader's scopes are as they were.
    std::fs::write(dir.path().join("consumers.yaml"), consumers_file("any")).unwrap();
    tokio::time::timeout(Duration::from_secs(5), writer_heard.recv())
        .await
        .expect("the writer's session hears that its tools changed")
        .unwrap();
    assert_eq!(writer.list_all_tools().await.unwrap().len(), 6);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), reader_heard.recv())
            .await
            .is_err(),
        "the reader's tools did not change, and it was told they had"
    );
    assert_eq!(reader.list_all_tools().await.unwrap().len(), 2);

    // An edit that changes nobody's tools (a new consumer's key for another team) tells the
    // new consumer's sessions only, and there are none.
    let mut edited = consumers_file("any");
    edited.push_str(&format!(
        "  - name: newcomer\n    keys:\n{}    scopes:\n      - access: read\n",
        key("cg_00000000000000000000000000000000000000000000ffff", "")
    ));
    std::fs::write(dir.path().join("consumers.yaml"), edited).unwrap();
    // The newcomer's key working is the sign that the edit was loaded.
    let started = std::time::Instant::now();
    while tools_list(
        &h,
        Some("cg_00000000000000000000000000000000000000000000ffff"),
    )
    .await
    .0 != 200
    {
        assert!(started.elapsed() < Duration::from_secs(5), "never reloaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for heard in [&mut reader_heard, &mut writer_heard] {
        assert!(
            tokio::time::timeout(Duration::from_millis(300), heard.recv())
                .await
                .is_err(),
            "a session was told of a change that did not touch its tools"
        );
    }
    reader.cancel().await.unwrap();
    writer.cancel().await.unwrap();
}

/// The official Python SDK, given a consumer's key, sees only that consumer's tools.
#[tokio::test]
async fn the_python_sdk_with_a_bearer_key_sees_only_its_tools() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(&dir).await;
    let url = crate::mcp::mcp_url(&h).await;
    let output = tokio::process::Command::new(common::tools::python())
        .arg(common::root().join("tests/clients/python_mcp_consumer.py"))
        .arg(&url)
        .arg(READER)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_slice(&output.stdout).unwrap();
    for mode in ["legacy", "auto"] {
        assert_eq!(
            seen[mode],
            json!([
                "stripe-get-identity-verification-sessions",
                "stripe-get-identity-verification-sessions-2"
            ]),
            "{mode}"
        );
    }
}

#[tokio::test]
async fn a_consumer_past_its_rate_gets_429_with_when_to_retry() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(&dir).await;
    let url = format!("{}?limit=1", h.sessions().await);
    let get = || h.http.get(&url).bearer_auth(LIMITED).send();
    // A burst of three, then the rate (2/s).
    for _ in 0..3 {
        assert_eq!(get().await.unwrap().status(), 200);
    }
    let limited = get().await.unwrap();
    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers()["retry-after"], "1");
    assert_eq!(limited.headers()["ratelimit-policy"], "\"burst\";q=3;w=2");
    assert_eq!(limited.headers()["ratelimit"], "\"burst\";r=0;t=1");
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit", "{body}");
    // Another consumer is not held back.
    let other = h.http.get(&url).bearer_auth(READER).send().await.unwrap();
    assert_eq!(other.status(), 200);
    // Listing tools costs nothing; a stateless tool call counts against the same limit, and
    // past it is an HTTP 429 whose JSON-RPC error says when to retry.
    let (status, _) = tools_list(&h, Some(LIMITED)).await;
    assert_eq!(status, 200);
    let (status, answer) =
        stateless_call(&h, LIMITED, "stripe-get-identity-verification-sessions").await;
    assert_eq!(status, 429, "{answer}");
    assert_eq!(answer["error"]["code"], -32029, "{answer}");
    assert!(
        answer["error"]["data"]["retry_after_ms"].as_u64().unwrap() > 0,
        "{answer}"
    );
    assert_eq!(
        answer["error"]["data"]["policy"]["name"], "burst",
        "{answer}"
    );
    // In a 2025-11-25 session the refusal is the call's JSON-RPC error, with the same data.
    let url = crate::mcp::mcp_url(&h).await;
    let session = open_session(&h, &url, LIMITED).await;
    let answer = session_call(
        &h,
        &url,
        LIMITED,
        &session,
        "stripe-get-identity-verification-sessions",
    )
    .await;
    assert_eq!(answer["error"]["code"], -32029, "{answer}");
    assert!(
        answer["error"]["data"]["retry_after_ms"].as_u64().unwrap() > 0,
        "{answer}"
    );
    // Half a second later, one more is allowed.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let admitted = get().await.unwrap();
    assert_eq!(admitted.status(), 200);
    // A consumer's successful answers say how its tightest limit stands.
    assert_eq!(admitted.headers()["ratelimit-policy"], "\"burst\";q=3;w=2");
    assert!(
        admitted.headers()["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"burst\";r=0;t="),
        "{:?}",
        admitted.headers()["ratelimit"]
    );
    let metrics = h.gateway.metrics().render();
    assert!(
        metrics.contains("capgate_limit_decisions_total{consumer=\"limited\",decision=\"limited\",store=\"local\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("capgate_consumer_calls_total{consumer=\"limited\",capability=\"identity-sessions\",operation=\"getidentityverificationsessions\",status=\"4xx\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_quota_counts_only_the_calls_its_globs_name() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(&dir).await;
    // The quota (2 a day) names the tools ending in `-2` (retrieve one session): listing
    // sessions is free, retrieving counts.
    let list = "stripe-get-identity-verification-sessions";
    let retrieve = "stripe-get-identity-verification-sessions-2";
    for _ in 0..4 {
        let (status, answer) = stateless_call(&h, QUOTA, list).await;
        assert_eq!(status, 200, "{answer}");
    }
    for _ in 0..2 {
        let (status, answer) = stateless_call(&h, QUOTA, retrieve).await;
        assert_eq!(status, 200, "{answer}");
    }
    let (status, answer) = stateless_call(&h, QUOTA, retrieve).await;
    assert_eq!(status, 429, "{answer}");
    assert_eq!(answer["error"]["data"]["policy"]["name"], "day", "{answer}");
    assert_eq!(answer["error"]["data"]["policy"]["calls"], 2, "{answer}");
    // Retry when the UTC day ends.
    let retry_ms = answer["error"]["data"]["retry_after_ms"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let to_midnight = 86_400 - now % 86_400;
    assert!(
        retry_ms / 1000 <= to_midnight && retry_ms / 1000 + 5 >= to_midnight,
        "{retry_ms} ms vs {to_midnight} s"
    );
}

/// A 2026-07-28 (stateless) `tools/call` of `tool` with `key`; its status and JSON body.
async fn stateless_call(h: &Harness, key: &str, tool: &str) -> (u16, Value) {
    let id = if tool.ends_with("-2") {
        common::create_session_directly(&h.sim).await
    } else {
        String::new()
    };
    let arguments = if tool.ends_with("-2") {
        json!({"session": id})
    } else {
        json!({})
    };
    let response = h
        .http
        .post(crate::mcp::mcp_url(h).await)
        .bearer_auth(key)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", tool)
        .body(
            json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
                "name": tool, "arguments": arguments,
                "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                    "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
                    "io.modelcontextprotocol/clientCapabilities": {}}}})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, json_of(&response.text().await.unwrap()))
}

/// The JSON-RPC message of a JSON or SSE answer.
fn json_of(text: &str) -> Value {
    if let Ok(value) = serde_json::from_str(text) {
        return value;
    }
    text.lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .filter_map(|data| serde_json::from_str::<Value>(data.trim()).ok())
        .find(|message| message.get("id").is_some())
        .unwrap_or(Value::Null)
}

/// Opens a 2025-11-25 session with `key`; its id.
async fn open_session(h: &Harness, url: &str, key: &str) -> String {
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}});
    let response = h
        .http
        .post(url)
        .bearer_auth(key)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .body(initialize.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = response.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let initialized = h
        .http
        .post(url)
        .bearer_auth(key)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-session-id", &id)
        .header("mcp-protocol-version", "2025-11-25")
        .body(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(initialized.status(), 202);
    id
}

/// A `tools/call` of `tool` (no arguments) in session `id`; its JSON-RPC answer.
async fn session_call(h: &Harness, url: &str, key: &str, id: &str, tool: &str) -> Value {
    let response = h
        .http
        .post(url)
        .bearer_auth(key)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-session-id", id)
        .header("mcp-protocol-version", "2025-11-25")
        .body(
            json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                "params": {"name": tool, "arguments": {}}})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    json_of(&response.text().await.unwrap())
}

#[tokio::test]
async fn the_access_log_says_who_called_what_and_nothing_secret() {
    let dir = tempfile::tempdir().unwrap();
    let seed =
        std::fs::read_to_string(common::root().join("specs/identity-sessions.yaml")).unwrap();
    let file = dir.path().join("consumers.yaml");
    std::fs::write(&file, consumers_file("write")).unwrap();
    let log = dir.path().join("access.log");
    let h = Harness::with_specs(&[("identity-sessions.yaml", &seed)], |c| {
        c.consumers.file = Some(file);
        c.consumers.require = vec![Requirement::default()];
        c.log.access.to = log.display().to_string();
    })
    .await;
    let session = common::create_session_directly(&h.sim).await;
    let retrieve = format!("{}/{session}", h.sessions().await);
    let got = h
        .http
        .get(&retrieve)
        .bearer_auth(READER)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    let refused = h
        .http
        .post(h.sessions().await)
        .bearer_auth(READER)
        .form(&[("type", "document")])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let (status, _) = stateless_call(&h, READER, "stripe-get-identity-verification-sessions").await;
    assert_eq!(status, 200);
    // Past its burst (3), a consumer's tool call is refused at the front door: logged too.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let (status, _) =
            stateless_call(&h, LIMITED, "stripe-get-identity-verification-sessions").await;
        statuses.push(status);
    }
    assert_eq!(statuses, [200, 200, 200, 429]);

    let lines = async {
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.lines().count() >= 7 && text.contains("\"limit\":\"limited\"") {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let text = tokio::time::timeout(Duration::from_secs(10), lines)
        .await
        .expect("access log lines");
    let entries: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let rest = &entries[0];
    assert_eq!(rest["surface"], "rest");
    assert_eq!(rest["consumer"], "reader");
    assert_eq!(rest["credential"], "cg_0000");
    assert_eq!(rest["capability"], "identity-sessions");
    assert_eq!(rest["method"], "GET");
    // The route's template, not the path with the session's id.
    assert_eq!(
        rest["route"], "/v1/v1/identity/verification-sessions/{session}",
        "{rest}"
    );
    assert_eq!(rest["status"], 200);
    assert_eq!(rest["upstream_status"], 200);
    assert!(rest["upstream_ms"].as_f64().unwrap() > 0.0, "{rest}");
    assert!(rest["duration_ms"].as_f64().unwrap() >= rest["upstream_ms"].as_f64().unwrap());
    assert!(rest["bytes_out"].as_u64().unwrap() > 0);
    assert!(rest["request_id"].as_str().unwrap().starts_with("req_"));
    let denied = &entries[1];
    assert_eq!(denied["status"], 403);
    assert_eq!(denied["upstream_status"], Value::Null);
    let mcp = entries
        .iter()
        .find(|e| e["surface"] == "mcp")
        .expect("an MCP line");
    assert_eq!(
        mcp["operation"],
        "stripe-get-identity-verification-sessions"
    );
    assert_eq!(mcp["route"], "tools/call");
    assert_eq!(mcp["upstream_status"], 200);
    let refused = entries
        .iter()
        .find(|e| e["limit"] == "limited")
        .expect("the refused call's line");
    assert_eq!(refused["consumer"], "limited");
    assert_eq!(refused["status"], 429);
    assert_eq!(refused["upstream_status"], Value::Null);
    // Never a key, the upstream's key, a session's id or secret, or a body.
    for secret in [
        READER,
        WRITER,
        LIMITED,
        common::KEY,
        &session,
        "client_secret",
    ] {
        assert!(
            !text.contains(secret),
            "{secret} in the access log:\n{text}"
        );
    }
}

#[tokio::test]
async fn a_consumers_metadata_reaches_the_upstream_through_templates() {
    let dir = tempfile::tempdir().unwrap();
    // One spec for every team: the list operation sends `Stripe-Account` from the consumer.
    let seed = std::fs::read_to_string(common::root().join("specs/identity-sessions.yaml"))
        .unwrap()
        .replacen(
            "        inputParameters:\n        - name: created\n",
            "        inputParameters:\n        - name: Stripe-Account\n          in: header\n          value: '{{consumer.stripe_account}}'\n        - name: created\n",
            1,
        );
    let file = dir.path().join("consumers.yaml");
    std::fs::write(
        &file,
        format!(
            "consumers:\n  - name: team-a\n    metadata: {{stripe_account: acct_team_a}}\n    keys:\n{}    scopes:\n      - access: any\n  - name: team-b\n    keys:\n{}    scopes:\n      - access: any\n",
            key(READER, ""),
            key(WRITER, "")
        ),
    )
    .unwrap();
    let h = Harness::with_specs(&[("identity-sessions.yaml", &seed)], |c| {
        c.consumers.file = Some(file);
        c.consumers.require = vec![Requirement::default()];
    })
    .await;
    let sessions = h.sessions().await;
    for key in [READER, WRITER] {
        let response = h
            .http
            .get(format!("{sessions}?limit=1"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    // The same through MCP: the tool's call reads the same operation.
    let (status, _) = stateless_call(&h, READER, "stripe-get-identity-verification-sessions").await;
    assert_eq!(status, 200);
    let seen: Vec<Option<String>> = h
        .sim
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/identity/verification_sessions")
        .map(|r| r.header("stripe-account").map(str::to_owned))
        .collect();
    assert_eq!(
        seen,
        [
            Some("acct_team_a".to_owned()),
            None,
            Some("acct_team_a".to_owned())
        ],
        "team-a's account, and none for team-b, which has no such metadata"
    );
}

#[tokio::test]
async fn calls_past_an_upstream_accounts_budget_wait_briefly_or_are_shed() {
    let seed =
        std::fs::read_to_string(common::root().join("specs/identity-sessions.yaml")).unwrap();
    // The stand-in taken for api.stripe.com: five calls a second per account, a 250 ms wait.
    let h = Harness::with_specs(&[("identity-sessions.yaml", &seed)], |c| {
        let sim = c.upstreams[0].base_uri.clone().unwrap();
        c.limits.upstream_budget.stripe_origins = vec![sim];
        c.limits.upstream_budget.stripe_test_rate = 5.0;
        c.limits.upstream_budget.max_wait = Duration::from_millis(250);
    })
    .await;
    let url = format!("{}?limit=1", h.sessions().await);
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let (http, url) = (h.http.clone(), url.clone());
            tokio::spawn(async move { http.get(url).send().await.unwrap() })
        })
        .collect();
    let mut statuses = Vec::new();
    let mut shed = None;
    for call in calls {
        let response = call.await.unwrap();
        statuses.push(response.status().as_u16());
        if response.status() == 503 {
            shed = Some(response);
        }
    }
    // A second's worth at once (5), one more 200 ms later (within the 250 ms wait), the rest
    // shed before they reach the upstream.
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        6,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 503).count(),
        14,
        "{statuses:?}"
    );
    assert_eq!(h.sim.requests().len(), 6);
    let shed = shed.unwrap();
    assert!(shed.headers().contains_key("retry-after"));
    let body: Value = shed.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_budget_exhausted", "{body}");
    assert!(!body.to_string().contains(common::KEY), "{body}");
}
