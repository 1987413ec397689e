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

/// A TCP connection to `addr` from the loopback address `from` (any 127.0.0.x is local).
async fn connect_from(from: [u8; 4], addr: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Whether the server closed `stream` (end of file or a reset) within `within`; reads and
/// drops whatever arrives meanwhile.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0; 64 * 1024];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read).await.is_ok()
}

/// Connects from `from` until a connection is admitted and answers (at most 5 s): a place
/// given back is noticed when the server reads the end of the closed connection.
async fn admitted_again(from: [u8; 4], addr: SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for _ in 0..50 {
        let mut stream = connect_from(from, addr).await;
        let request = b"GET /v1/v1/identity/verification-sessions?limit=1 HTTP/1.1\r\nHost: localhost\r\n\r\n";
        let mut buf = [0; 16];
        if stream.write_all(request).await.is_ok()
            && matches!(stream.read(&mut buf).await, Ok(n) if buf[..n].starts_with(b"HTTP/1.1 200"))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no connection from {from:?} admitted within 5 s");
}

/// Sends one HTTP/1.1 request for the seed's list on `stream` and reads the answer's status
/// line.
async fn one_request(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /v1/v1/identity/verification-sessions?limit=1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0; 64 * 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_connection() {
    let h = Harness::with_specs(&[("identity-sessions.yaml", &seed())], |c| {
        with_admin(c);
        c.limits.max_connections_per_peer = 20;
    })
    .await;
    let rest = h.gateway.local_addr(8080).await.unwrap();
    let mut hoard = Vec::new();
    for _ in 0..20 {
        let mut stream = connect_from([127, 0, 0, 2], rest).await;
        assert_eq!(one_request(&mut stream).await, "HTTP/1.1 200 OK");
        hoard.push(stream);
    }
    // The twenty-first from the same address is closed before it is read.
    let mut over = connect_from([127, 0, 0, 2], rest).await;
    assert!(closed_within(&mut over, Duration::from_secs(2)).await);
    // Everyone else is served, and so are the twenty already open.
    still_serving(&h).await;
    assert_eq!(one_request(&mut hoard[0]).await, "HTTP/1.1 200 OK");
    // A place given back is taken again.
    drop(hoard.pop());
    admitted_again([127, 0, 0, 2], rest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_over_its_connection_cap_closes_new_connections_cleanly() {
    let h = Harness::with_specs(&[("identity-sessions.yaml", &seed())], |c| {
        c.limits.max_connections = 3;
    })
    .await;
    let rest = h.gateway.local_addr(8080).await.unwrap();
    let mut open = Vec::new();
    for last in 4..7 {
        let mut stream = connect_from([127, 0, 0, last], rest).await;
        assert_eq!(one_request(&mut stream).await, "HTTP/1.1 200 OK");
        open.push(stream);
    }
    let mut over = connect_from([127, 0, 0, 7], rest).await;
    assert!(closed_within(&mut over, Duration::from_secs(2)).await);
    drop(open.pop());
    admitted_again([127, 0, 0, 7], rest).await;
}

/// An HTTP/2 connection (prior knowledge) to `addr`, with the given stream window; the
/// connection's own task is returned to be awaited.
async fn http2(
    addr: SocketAddr,
    window: u32,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(window)
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    (sender, tokio::spawn(connection))
}

fn list_request(addr: SocketAddr) -> http::Request<http_body_util::Empty<bytes::Bytes>> {
    http::Request::get(format!(
        "http://{addr}/v1/v1/identity/verification-sessions?limit=40"
    ))
    .header("host", "localhost")
    .body(http_body_util::Empty::new())
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed() {
    let h = Harness::with_specs(&[("identity-sessions.yaml", &seed())], |c| {
        c.limits.idle_timeout = Duration::from_secs(1);
    })
    .await;
    let rest = h.gateway.local_addr(8080).await.unwrap();
    let (mut sender, connection) = http2(rest, 65_535).await;
    let response = sender.send_request(list_request(rest)).await.unwrap();
    assert_eq!(response.status(), 200);
    drop(response);
    // The server says GOAWAY once the connection has idled a second.
    let ended = tokio::time::timeout(Duration::from_secs(5), connection).await;
    assert!(
        ended.is_ok(),
        "the idle HTTP/2 connection is still open after 5 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_opens_its_window_is_disconnected_and_capped() {
    let h = Harness::with_specs(&[("identity-sessions.yaml", &seed())], |c| {
        with_admin(c);
        c.limits.response_write_timeout = Duration::from_secs(1);
        c.limits.max_unsent_response_bytes = 20_000;
    })
    .await;
    // Forty sessions make the list's answer larger than the cap and than the 16 KiB the
    // gateway hands to hyper at once.
    for _ in 0..40 {
        common::create_session_directly(&h.sim).await;
    }
    let rest = h.gateway.local_addr(8080).await.unwrap();
    let (mut sender, connection) = http2(rest, 0).await;
    // Headers are not flow-controlled: the first answer's status arrives, its body cannot.
    let first = sender.send_request(list_request(rest)).await.unwrap();
    assert_eq!(first.status(), 200);
    // While that body waits, another response over the cap is refused.
    let second = sender.send_request(list_request(rest)).await.unwrap();
    assert_eq!(second.status(), 503);
    still_serving(&h).await;
    // Past the write deadline the connection is closed.
    let ended = tokio::time::timeout(Duration::from_secs(5), connection).await;
    assert!(
        ended.is_ok(),
        "a stalled HTTP/2 connection is still open after 5 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_client_that_never_reads_is_disconnected() {
    use tokio::io::AsyncWriteExt;
    let h = Harness::with_specs(&[("identity-sessions.yaml", &seed())], |c| {
        with_admin(c);
        c.limits.response_write_timeout = Duration::from_secs(1);
    })
    .await;
    let admin = h.gateway.admin_addr().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(admin).await.unwrap();
    // Far more answers than the socket buffers hold, pipelined, and never read.
    let requests = b"GET /status HTTP/1.1\r\nHost: localhost\r\n\r\n".repeat(3_000);
    stream.write_all(&requests).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    still_serving(&h).await;
    assert!(
        closed_within(&mut stream, Duration::from_secs(5)).await,
        "a connection that never reads is still open"
    );
}

/// A mock capability answering `GET /v` on 8080 with `{"version": version}`.
fn versioned(version: &str) -> String {
    format!(
        "naftiko: 1.0.0-alpha2\ncapability:\n  exposes:\n    - type: rest\n      port: 8080\n      namespace: v\n      resources:\n        - path: /v\n          operations:\n            - method: GET\n              outputParameters:\n                - name: version\n                  type: string\n                  value: \"{version}\"\n"
    )
}

/// Waits (at most 10 s) until `GET /v` answers `version`.
async fn serves_version(h: &Harness, version: &str) {
    let url = format!("{}/v", h.base(8080).await);
    let wait = async {
        loop {
            if let Ok(response) = h.http.get(&url).send().await
                && let Ok(body) = response.json::<Value>().await
                && body["version"] == version
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("version {version} not served within 10 s"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_survives_the_specs_folder_disappearing_for_a_moment() {
    let parent = tempfile::tempdir().unwrap();
    let specs = parent.path().join("specs");
    std::fs::create_dir(&specs).unwrap();
    std::fs::write(specs.join("v.yaml"), versioned("one")).unwrap();
    let sim = stripe_sim::StripeSim::start(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let mut config = common::test_config(&specs, &sim);
    config.reload.watch = true;
    with_admin(&mut config);
    let h = Harness {
        gateway: capgate::start(config).await,
        sim,
        specs: tempfile::tempdir().unwrap(),
        http: reqwest::Client::new(),
    };
    serves_version(&h, "one").await;

    // Moved away and back (the same folder), then edited.
    let away = parent.path().join("specs.away");
    std::fs::rename(&specs, &away).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::rename(&away, &specs).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(specs.join("v.yaml"), versioned("two")).unwrap();
    serves_version(&h, "two").await;

    // Removed and made again (another folder), with another version inside.
    std::fs::remove_dir_all(&specs).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::create_dir(&specs).unwrap();
    std::fs::write(specs.join("v.yaml"), versioned("three")).unwrap();
    serves_version(&h, "three").await;
    // And it is watched: a later edit is served too.
    std::fs::write(specs.join("v.yaml"), versioned("four")).unwrap();
    serves_version(&h, "four").await;
    let state = file_status(&h, "v.yaml").await;
    assert_eq!(state["state"], "serving", "{state}");
}

/// A mock capability with `GET /v` on 8080 and, when `tool`, an MCP adapter `v-mcp` on 9090
/// with one tool.
fn with_tool(version: &str, tool: bool) -> String {
    let mut spec = versioned(version);
    if tool {
        spec.push_str(&format!(
            "    - type: mcp\n      port: 9090\n      namespace: v-mcp\n      tools:\n        - name: version\n          description: answers {version}\n          outputParameters:\n            - name: version\n              type: string\n              value: \"{version}\"\n"
        ));
    }
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_cut_off_mid_write_does_not_close_what_it_serves() {
    let h = Harness::with_specs(&[("v.yaml", &with_tool("one", true))], |c| {
        c.reload.watch = true;
        c.reload.debounce = Duration::from_millis(300);
    })
    .await;
    serves_version(&h, "one").await;
    let mcp = format!("{}/mcp/v-mcp", h.base(9090).await);
    let mcp_answers = || async {
        let response = reqwest::Client::new()
            .post(&mcp)
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
            .await;
        response.is_ok_and(|r| r.status() == 200)
    };
    assert!(mcp_answers().await);
    let generation = h.gateway.generation();

    // A non-atomic rewrite that pauses past the debounce with only the first half written:
    // the MCP adapter is missing from what is on disk for a while.
    let path = h.specs_dir().join("v.yaml");
    let full = with_tool("two", true);
    let half = with_tool("two", false);
    std::fs::write(&path, &half).unwrap();
    let pause = tokio::time::Instant::now() + Duration::from_millis(500);
    while tokio::time::Instant::now() < pause {
        assert!(
            mcp_answers().await,
            "the MCP adapter closed while its file was half written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        h.gateway.generation(),
        generation,
        "the half-written file was published"
    );
    std::fs::write(&path, &full).unwrap();
    serves_version(&h, "two").await;
    assert!(mcp_answers().await);

    // A real removal of the adapter is published, one quiet period after the reload that saw it.
    std::fs::write(&path, with_tool("three", false)).unwrap();
    serves_version(&h, "three").await;
    assert!(!mcp_answers().await, "the removed adapter is still served");
}

#[tokio::test]
async fn a_request_too_long_to_send_is_the_callers_414_before_any_attempt() {
    let h = Harness::seed().await;
    let sessions = h.sessions().await;
    let long_id = format!("vs_{}", "a".repeat(60_000));
    let expands: String = (0..4_000).map(|i| format!("&expand[]=f{i}")).collect();
    for url in [
        format!("{sessions}/{long_id}"),
        format!("{sessions}?limit=1{expands}"),
    ] {
        let started = std::time::Instant::now();
        let response = h.http.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 414);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
        assert_eq!(body["error"]["code"], "uri_too_long", "{body}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "retried: {:?}",
            started.elapsed()
        );
    }
    assert!(
        h.sim.requests().is_empty(),
        "an attempt reached the upstream"
    );
}

/// An upstream on a free port that answers every request with `answer`, recording each
/// request's head and body as text.
async fn raw_upstream(
    answer: String,
) -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = upstream.local_addr().unwrap();
    let seen: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let recorded = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = upstream.accept().await {
            let (recorded, answer) = (recorded.clone(), answer.clone());
            tokio::spawn(async move {
                let mut buf = vec![0; 64 * 1024];
                let mut pending = String::new();
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    pending.push_str(&String::from_utf8_lossy(&buf[..n]));
                    // Every complete request (a head, and a body of its content-length).
                    while let Some(end) = pending.find("\r\n\r\n") {
                        let head = pending[..end].to_ascii_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map(|v| v.trim().parse().unwrap())
                            .unwrap_or(0);
                        if pending.len() < end + 4 + length {
                            break;
                        }
                        let request: String = pending.drain(..end + 4 + length).collect();
                        recorded.lock().unwrap().push(request);
                        if stream.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (address, seen)
}

#[tokio::test]
async fn an_answer_the_client_cannot_read_is_one_502_without_retry() {
    // An upstream that answers every request with 150 headers (the client reads at most 100).
    let mut answer = String::from("HTTP/1.1 200 OK\r\n");
    for i in 0..150 {
        answer.push_str(&format!("x-header-{i}: v\r\n"));
    }
    answer.push_str("content-length: 2\r\n\r\n{}");
    let (address, requests) = raw_upstream(answer).await;
    let h = Harness::with_specs(&[("identity-sessions.yaml", &seed())], |c| {
        c.upstreams[0].base_uri = Some(format!("http://{address}"));
    })
    .await;
    let response = h
        .http
        .get(format!("{}?limit=1", h.sessions().await))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_invalid_response", "{body}");
    assert_eq!(requests.lock().unwrap().len(), 1, "the call was retried");
}

#[tokio::test]
async fn forwarded_methods_are_retried_only_when_a_retry_cannot_act_twice() {
    let answer = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\n{}".to_owned();
    let (address, requests) = raw_upstream(answer).await;
    let spec = "naftiko: 1.0.0-alpha2\ncapability:\n  consumes:\n    - type: http\n      namespace: stripe\n      baseUri: https://api.stripe.com\n      resources:\n        - name: none\n          path: /v1/none\n          operations:\n            - name: none\n              method: GET\n  exposes:\n    - type: rest\n      port: 8080\n      namespace: raw\n      resources:\n        - path: /raw/{{path}}\n          forward: {targetNamespace: stripe}\n";
    let h = Harness::with_specs(&[("forward.yaml", spec)], |c| {
        c.upstreams[0].base_uri = Some(format!("http://{address}"));
    })
    .await;
    let url = format!("{}/raw/v1/things/t_1", h.base(8080).await);
    let mut expected = 0;
    for (method, attempts) in [
        (http::Method::PATCH, 1),
        (http::Method::PUT, 1),
        (http::Method::DELETE, 3),
        (http::Method::POST, 3),
    ] {
        let response = h
            .http
            .request(method.clone(), &url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("a=1")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 503, "{method}");
        expected += attempts;
        let seen = requests.lock().unwrap().clone();
        assert_eq!(seen.len(), expected, "{method}: {seen:?}");
        let last = seen.last().unwrap();
        assert!(
            last.starts_with(&format!("{method} /v1/things/t_1 ")),
            "{last}"
        );
        // A forward passes the body on, DELETE's too (as ARCHITECTURE.md says).
        assert!(last.ends_with("\r\n\r\na=1"), "{method}: {last}");
        if method == http::Method::POST {
            let keys: std::collections::BTreeSet<String> = seen[seen.len() - 3..]
                .iter()
                .map(|r| {
                    r.lines()
                        .find(|l| l.to_ascii_lowercase().starts_with("idempotency-key"))
                        .unwrap()
                        .to_owned()
                })
                .collect();
            assert_eq!(keys.len(), 1, "each attempt carries the same key: {keys:?}");
        }
    }
}

#[tokio::test]
async fn rest_listeners_check_host_and_origin_as_mcp_does() {
    let h = Harness::seed().await;
    let sessions = h.sessions().await;
    let create = |host: Option<&str>, origin: Option<&str>| {
        let mut request = h
            .http
            .post(&sessions)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("type=document");
        if let Some(host) = host {
            request = request.header("host", host);
        }
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };
    // A cross-site form POST from a page elsewhere, and a rebinding host name: refused, in
    // Stripe's error shape, before anything reaches the upstream.
    for (host, origin, code) in [
        (None, Some("https://evil.example"), "origin_not_allowed"),
        (Some("rebind.evil.example:8080"), None, "host_not_allowed"),
    ] {
        let response = create(host, origin).await.unwrap();
        assert_eq!(response.status(), 403);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{body}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }
    assert!(
        h.sim.requests().is_empty(),
        "a refused request reached the upstream"
    );
    // Loopback names, no Origin (not a browser), and a local page are served.
    for (host, origin) in [
        (None, None),
        (Some("localhost:8080"), None),
        (None, Some("http://localhost:3000")),
    ] {
        assert_eq!(
            create(host, origin).await.unwrap().status(),
            200,
            "{host:?} {origin:?}"
        );
    }

    // `rest.allowed_hosts: []` allows any host (behind a balancer that checks it).
    let open = Harness::with_specs(&[("identity-sessions.yaml", &seed())], |c| {
        c.rest.allowed_hosts = Some(Vec::new());
    })
    .await;
    let response = open
        .http
        .get(format!("{}?limit=1", open.sessions().await))
        .header("host", "api.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hoarding_mcp_sessions_only_evicts_its_own() {
    let h = Harness::with_specs(&[("identity-sessions.yaml", &seed())], |c| {
        with_admin(c);
        c.mcp.max_sessions_per_peer = 3;
    })
    .await;
    let url = crate::mcp::mcp_url(&h).await;
    let neighbour = reqwest::Client::new();
    let theirs = crate::mcp::open_session(&neighbour, &url).await;
    let hoarder = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let mut hoarded = Vec::new();
    for _ in 0..30 {
        hoarded.push(crate::mcp::open_session(&hoarder, &url).await);
    }
    still_serving(&h).await;
    // The neighbour's session survives; the hoarder keeps only its three newest.
    assert!(crate::mcp::session_open(&neighbour, &url, &theirs).await);
    let mut open = Vec::new();
    for id in &hoarded {
        open.push(crate::mcp::session_open(&hoarder, &url, id).await);
    }
    let expected: Vec<bool> = (0..30).map(|i| i >= 27).collect();
    assert_eq!(open, expected);
    // And a new client still gets a session.
    crate::mcp::open_session(&neighbour, &url).await;
}

#[tokio::test]
async fn a_body_given_to_a_get_is_refused_not_dropped() {
    let spec = "naftiko: 1.0.0-alpha2\ncapability:\n  consumes:\n    - type: http\n      namespace: stripe\n      baseUri: https://api.stripe.com\n      resources:\n        - name: sessions\n          path: /v1/identity/verification_sessions\n          operations:\n            - name: list\n              method: GET\n              inputParameters:\n                - {name: limit, in: query, type: integer}\n                - {name: body, in: body, type: object}\n  exposes:\n    - type: rest\n      port: 8080\n      namespace: r\n      resources:\n        - path: /list\n          operations:\n            - method: GET\n              call: stripe.list\n              with: {limit: rest.limit, body: rest.body}\n";
    let h = Harness::with_specs(&[("g.yaml", spec)], |_| {}).await;
    let url = format!("{}/list?limit=1", h.base(8080).await);
    let refused = h
        .http
        .get(&url)
        .json(&json!({"body": {"status": "verified"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let body: Value = refused.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("in the query string"), "{body}");
    assert!(
        h.sim.requests().is_empty(),
        "the call went out without its body"
    );
    // Without one, the call goes out as before.
    h.http.get(&url).send().await.unwrap();
    assert_eq!(h.sim.requests().len(), 1);
}

/// Opens a 2026-era `subscriptions/listen` stream with `client`; the response (its body is the
/// open stream) and its status.
async fn listen(client: &reqwest::Client, url: &str) -> reqwest::Response {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "subscriptions/listen", "params": {
        "notifications": {"toolsListChanged": true},
        "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {}}}});
    client
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "subscriptions/listen")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_streams_are_budgeted_per_client() {
    let h = Harness::with_specs(&[("identity-sessions.yaml", &seed())], |c| {
        with_admin(c);
        c.mcp.max_listen_streams_per_peer = 2;
    })
    .await;
    let url = crate::mcp::mcp_url(&h).await;
    let hoarder = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..2 {
        let stream = listen(&hoarder, &url).await;
        assert_eq!(stream.status(), 200);
        held.push(stream);
    }
    let over = listen(&hoarder, &url).await;
    assert_eq!(over.status(), 429);
    assert!(over.headers().contains_key("retry-after"));
    // Another client is served, and so is everything else.
    let neighbour = listen(&reqwest::Client::new(), &url).await;
    assert_eq!(neighbour.status(), 200);
    still_serving(&h).await;
    // A stream closed gives its place back.
    drop(held.pop());
    let wait = async {
        loop {
            let again = listen(&hoarder, &url).await;
            if again.status() == 200 {
                return again;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let _again = tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .expect("a closed stream's place is given back");
}

#[tokio::test]
async fn pass_through_keeps_location_and_content_encoding_and_json_types_take_parameters() {
    let answer = "HTTP/1.1 201 Created\r\nlocation: /v1/things/t_2\r\ncontent-encoding: gzip\r\ncontent-type: application/octet-stream\r\ncontent-length: 3\r\n\r\nabc".to_owned();
    let (address, _) = raw_upstream(answer).await;
    let spec = "naftiko: 1.0.0-alpha2\ncapability:\n  consumes:\n    - type: http\n      namespace: stripe\n      baseUri: https://api.stripe.com\n      resources:\n        - name: none\n          path: /v1/none\n          operations:\n            - name: none\n              method: GET\n  exposes:\n    - type: rest\n      port: 8080\n      namespace: raw\n      resources:\n        - path: /raw/{{path}}\n          forward: {targetNamespace: stripe}\n";
    let h = Harness::with_specs(&[("forward.yaml", spec)], |c| {
        c.upstreams[0].base_uri = Some(format!("http://{address}"));
    })
    .await;
    let response = h
        .http
        .post(format!("{}/raw/v1/things", h.base(8080).await))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["location"], "/v1/things/t_2");
    assert_eq!(response.headers()["content-encoding"], "gzip");
    assert_eq!(response.bytes().await.unwrap().as_ref(), b"abc");

    // A JSON media type with parameters is JSON.
    let seed = Harness::seed().await;
    let created = seed
        .http
        .post(seed.sessions().await)
        .header("content-type", "application/vnd.api+json; charset=utf-8")
        .body(r#"{"type": "document"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 200, "{}", created.text().await.unwrap());
}

#[tokio::test]
async fn the_admin_token_guards_status_and_metrics_but_not_probes() {
    // Any variable set for the test process will do as the token's source.
    let token = std::env::var("CARGO_PKG_NAME").expect("cargo sets it for tests");
    let h = Harness::with_specs(&[("identity-sessions.yaml", &seed())], |c| {
        with_admin(c);
        c.admin.token_env = Some("CARGO_PKG_NAME".into());
    })
    .await;
    let admin = format!("http://{}", h.gateway.admin_addr().expect("admin is open"));
    for path in ["/healthz", "/readyz"] {
        let response = h.http.get(format!("{admin}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    for path in ["/status", "/metrics"] {
        let response = h.http.get(format!("{admin}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 401, "{path}");
        assert!(response.headers().contains_key("www-authenticate"));
        let wrong = h
            .http
            .get(format!("{admin}{path}"))
            .bearer_auth("not-it")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path}");
        let right = h
            .http
            .get(format!("{admin}{path}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(right.status(), 200, "{path}");
        assert!(
            !right
                .text()
                .await
                .unwrap()
                .contains(&format!("Bearer {token}"))
        );
    }
    // A token variable that is not set keeps the admin listener closed, not open to all.
    let closed = Harness::with_specs(&[("identity-sessions.yaml", &seed())], |c| {
        with_admin(c);
        c.admin.token_env = Some("CAPGATE_TEST_NO_SUCH_VARIABLE".into());
    })
    .await;
    assert_eq!(closed.gateway.admin_addr(), None);
}
