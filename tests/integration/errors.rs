//! The gateway's own errors: statuses and Stripe's error shape; and path injection.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{self, Harness};

async fn error_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    assert_eq!(response.headers()["content-type"], "application/json");
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn routing_errors() {
    let h = Harness::seed().await;
    let base = h.base(8080).await;
    let (status, body) =
        error_of(h.http.get(format!("{base}/v1/nope")).send().await.unwrap()).await;
    assert_eq!(status, 404);
    assert_eq!(
        body,
        json!({"error": {"type": "invalid_request_error", "code": "resource_missing", "message": "Unrecognized request URL (GET: /v1/nope)"}})
    );

    let response = h.http.delete(h.sessions().await).send().await.unwrap();
    assert_eq!(response.headers()["allow"], "GET, POST");
    let (status, body) = error_of(response).await;
    assert_eq!(status, 405);
    assert_eq!(body["error"]["code"], "method_not_allowed");
    assert!(h.sim.requests().is_empty());
}

#[tokio::test]
async fn bad_input_is_400_naming_the_problem() {
    let h = Harness::seed().await;
    let url = h.sessions().await;
    let (status, body) = error_of(
        h.http
            .post(&url)
            .header("content-type", "application/json")
            .body("{\"type\": ")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("invalid JSON body"),
        "{body}"
    );

    let (status, body) =
        error_of(h.http.get(format!("{url}?limit=ten")).send().await.unwrap()).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "limit");
    assert_eq!(body["error"]["code"], "parameter_invalid");

    let (status, body) = error_of(
        h.http
            .get(format!("{url}?colour=blue"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        body["error"],
        json!({"type": "invalid_request_error", "code": "parameter_unknown", "message": "Received unknown parameter: colour", "param": "colour"})
    );

    let (status, body) = error_of(h.http.post(&url).send().await.unwrap()).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "parameter_missing");
    assert_eq!(body["error"]["param"], "body");

    let (status, body) = error_of(
        h.http
            .post(&url)
            .header("content-type", "text/csv")
            .body("a,b")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("text/csv")
    );

    let (status, body) = error_of(
        h.http
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("a[b=1")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"].as_str().unwrap().contains("a[b"),
        "{body}"
    );
    assert!(h.sim.requests().is_empty(), "nothing reached the upstream");
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let seed =
        std::fs::read_to_string(common::root().join("specs/identity-sessions.yaml")).unwrap();
    let h = Harness::with_specs(&[("s.yaml", &seed)], |c| c.limits.max_body_bytes = 1024).await;
    let big = format!("type=document&metadata[x]={}", "a".repeat(2000));
    let (status, body) = error_of(
        h.http
            .post(h.sessions().await)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(big)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "request_too_large");
    assert!(h.sim.requests().is_empty());
}

#[tokio::test]
async fn a_missing_secret_is_503_naming_the_variable_not_its_value() {
    let seed =
        std::fs::read_to_string(common::root().join("specs/identity-sessions.yaml")).unwrap();
    let h = Harness::with_specs(&[("s.yaml", &seed)], |c| {
        c.env.clear();
        c.env.insert("UNRELATED".into(), "x".into());
    })
    .await;
    // The process environment of the test runner must not provide the key either.
    if std::env::var("STRIPE_API_KEY").is_ok() {
        return;
    }
    let (status, body) = error_of(h.http.get(h.sessions().await).send().await.unwrap()).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["type"], "api_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("STRIPE_API_KEY")
    );
    let states = h.gateway.status();
    assert_eq!(states[0].state, capgate::reload::FileState::Degraded);
}

#[tokio::test]
async fn an_unreachable_upstream_is_502_and_a_slow_one_504() {
    let seed =
        std::fs::read_to_string(common::root().join("specs/identity-sessions.yaml")).unwrap();
    // A port that was just free: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let h = Harness::with_specs(&[("s.yaml", &seed)], |c| {
        c.upstreams[0].base_uri = Some(format!("http://{closed}"));
        c.retry.max_retries = 0;
    })
    .await;
    let (status, body) = error_of(h.http.get(h.sessions().await).send().await.unwrap()).await;
    assert_eq!(status, 502);
    assert_eq!(
        body["error"],
        json!({"type": "api_error", "code": "upstream_unreachable", "message": "upstream identity-sessions is unreachable"})
    );

    let h = Harness::with_specs(&[("s.yaml", &seed)], |c| {
        c.limits.upstream_timeout = Duration::from_millis(300)
    })
    .await;
    h.http
        .post(format!("{}/_sim/faults", h.sim.base_url()))
        .json(&json!({"status": null, "delay_ms": 2000, "count": 1}))
        .send()
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (status, body) = error_of(h.http.get(h.sessions().await).send().await.unwrap()).await;
    assert_eq!(status, 504);
    assert_eq!(body["error"]["code"], "upstream_timeout");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "the timeout cut the wait short"
    );
}

#[tokio::test]
async fn retries_follow_stripes_rules_with_one_idempotency_key() {
    let h = Harness::seed().await;
    let faults = format!("{}/_sim/faults", h.sim.base_url());
    h.http
        .post(&faults)
        .json(&json!({"status": 500, "count": 1, "method": "POST"}))
        .send()
        .await
        .unwrap();
    let response = h
        .http
        .post(h.sessions().await)
        .form(&[("type", "document")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let received = h.sim.requests();
    assert_eq!(received.len(), 2, "one failure, one retry");
    let key = received[0]
        .header("idempotency-key")
        .expect("the gateway added a key")
        .to_owned();
    assert_eq!(received[1].header("idempotency-key"), Some(key.as_str()));

    // Stripe-Should-Retry: false is final.
    h.http
        .post(&faults)
        .json(&json!({"status": 500, "count": 1, "should_retry": false}))
        .send()
        .await
        .unwrap();
    let response = h.http.get(h.sessions().await).send().await.unwrap();
    assert_eq!(response.status(), 500);
    assert_eq!(response.headers()["stripe-should-retry"], "false");
    assert_eq!(h.sim.requests().len(), 3);

    // A 429 without the header is not retried; with `true` it is.
    h.http
        .post(&faults)
        .json(&json!({"status": 429, "count": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        h.http
            .get(h.sessions().await)
            .send()
            .await
            .unwrap()
            .status(),
        429
    );
    h.http
        .post(&faults)
        .json(&json!({"status": 429, "count": 1, "should_retry": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        h.http
            .get(h.sessions().await)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

/// Sends a raw HTTP/1.1 request, so that no client normalizes the path first.
async fn raw_get(addr: std::net::SocketAddr, path: &str) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response.split(' ').nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn session_ids_can_never_reach_another_upstream_path() {
    let h = Harness::seed().await;
    let addr = h.gateway.local_addr(8080).await.unwrap();
    let prefix = "/v1/v1/identity/verification-sessions";
    let attempts = [
        "../../v1/charges",
        "..%2F..%2Fv1%2Fcharges",
        "vs_1%2F..%2Fx",
        "a%3Fb%3Dc",
        "a?b=c",
        "a%23b",
        "a#b",
        "%2e%2e",
        "%2E%2E/cancel",
        "..",
        ".",
        "%252e%252e",
        "a%5C..%5Cb",
        "vs_1/../../../v1/charges",
    ];
    for attempt in attempts {
        for suffix in ["", "/cancel"] {
            let status = raw_get(addr, &format!("{prefix}/{attempt}{suffix}")).await;
            assert!(
                matches!(status, 400 | 404 | 405),
                "{attempt}{suffix}: {status}"
            );
        }
    }
    for request in h.sim.requests() {
        let rest = request
            .path
            .strip_prefix("/v1/identity/verification_sessions/")
            .unwrap_or_else(|| panic!("reached {}", request.path));
        assert!(
            !rest.contains('/'),
            "more than one segment: {}",
            request.path
        );
        assert!(
            rest != "." && rest != ".." && !rest.eq_ignore_ascii_case("%2e%2e"),
            "{}",
            request.path
        );
        assert_eq!(
            request.query, None,
            "a query was injected: {:?}",
            request.query
        );
    }
    // The encoded attempts did reach the stand-in, as one opaque segment each.
    let paths: Vec<String> = h.sim.requests().into_iter().map(|r| r.path).collect();
    assert!(
        paths.contains(&"/v1/identity/verification_sessions/..%2F..%2Fv1%2Fcharges".to_owned()),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"/v1/identity/verification_sessions/a%3Fb%3Dc".to_owned()),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"/v1/identity/verification_sessions/%252e%252e".to_owned()),
        "{paths:?}"
    );
}

#[tokio::test]
async fn hostile_input_is_400_and_the_gateway_keeps_serving() {
    let h = Harness::seed().await;
    let url = h.sessions().await;
    let form = |body: String| {
        h.http
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    // A key nested ~300,000 levels deep (just under the 1 MiB body limit): refused by name,
    // without recursing the decoder off the end of the stack.
    let deep = format!("a{}=1", "[b]".repeat(300_000));
    let (status, body) = error_of(form(deep).await.unwrap()).await;
    assert_eq!(status, 400);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("nests deeper than 32 levels"), "{body}");
    assert!(message.len() < 300, "the key is shortened: {message}");
    assert!(
        body["error"]["param"]
            .as_str()
            .unwrap()
            .starts_with("a[b][b]")
    );

    // A bad value whose text the error cuts inside a two-byte character.
    let limit = format!("{}{}", "a".repeat(55), "%C3%A9".repeat(5));
    let (status, body) = error_of(
        h.http
            .get(format!("{url}?limit={limit}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "limit");

    assert!(h.sim.requests().is_empty(), "nothing reached the upstream");

    // A hundred thousand parameters are read, passed on, and refused by the stand-in as unknown.
    let many: Vec<String> = (0..100_000).map(|i| format!("p{i}=1")).collect();
    let (status, body) = error_of(form(many.join("&")).await.unwrap()).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "parameter_unknown", "{body}");

    let response = h.http.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_caller_that_trickles_its_request_is_cut_off() {
    let seed =
        std::fs::read_to_string(common::root().join("specs/identity-sessions.yaml")).unwrap();
    let h = Harness::with_specs(&[("s.yaml", &seed)], |c| {
        c.limits.request_read_timeout = Duration::from_millis(300);
    })
    .await;
    let url = reqwest::Url::parse(&h.sessions().await).unwrap();
    let address = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap());

    // Headers complete, body promised but never sent: 408 in Stripe's shape.
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 100\r\n\r\ntype=doc",
        url.path()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
        .await
        .expect("answered within the read timeout")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");

    // Headers never finished: the connection is closed.
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    stream
        .write_all(format!("GET {} HTTP/1.1\r\nhost: x\r\n", url.path()).as_bytes())
        .await
        .unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .expect("closed within the read timeout");
    assert!(
        read.is_err() || !String::from_utf8_lossy(&rest).contains("200 OK"),
        "{rest:?}"
    );

    // The MCP surface: a body that never finishes is not waited for either.
    let mcp = reqwest::Url::parse(&h.base(9090).await).unwrap();
    let mut stream = tokio::net::TcpStream::connect(format!(
        "{}:{}",
        mcp.host_str().unwrap(),
        mcp.port().unwrap()
    ))
    .await
    .unwrap();
    let head = "POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\naccept: application/json, text/event-stream\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"jsonrpc\"";
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
        .await
        .expect("answered within the read timeout")
        .unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 5") || answer.starts_with("HTTP/1.1 4"),
        "{answer}"
    );
    assert!(answer.contains("did not arrive within 300 ms"), "{answer}");

    // Nothing sent at all (nor an HTTP/2 preface finished): closed too.
    for opening in ["", "PRI * HTTP/2.0\r\n"] {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        stream.write_all(opening.as_bytes()).await.unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
            .await
            .expect("closed within the read timeout");
        assert!(read.is_err() || rest.is_empty(), "{opening:?}: {rest:?}");
    }

    assert!(h.sim.requests().is_empty(), "nothing reached the upstream");
    assert_eq!(h.http.get(url).send().await.unwrap().status(), 200);
}

/// Stripe is reached over TLS, and a certificate no trusted root vouches for is refused: the
/// server sees a TLS handshake the client aborts, and the caller a 502, with nothing sent.
#[tokio::test]
async fn an_https_upstream_with_an_untrusted_certificate_is_refused() {
    use std::sync::Arc;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der()).unwrap();
    let tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (handshakes, mut outcomes) = tokio::sync::mpsc::unbounded_channel();
    let server = tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let outcome = acceptor
                .accept(stream)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string());
            let _ = handshakes.send(outcome);
        }
    });

    let seed =
        std::fs::read_to_string(common::root().join("specs/identity-sessions.yaml")).unwrap();
    let h = Harness::with_specs(&[("s.yaml", &seed)], |c| {
        c.upstreams[0].base_uri = Some(format!("https://localhost:{port}"));
        c.retry.max_retries = 0;
    })
    .await;
    let (status, body) = error_of(h.http.get(h.sessions().await).send().await.unwrap()).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "upstream_unreachable", "{body}");
    let outcome = tokio::time::timeout(Duration::from_secs(5), outcomes.recv())
        .await
        .expect("the gateway never connected")
        .unwrap();
    let refusal = outcome.expect_err("the handshake with an untrusted certificate completed");
    assert!(
        refusal.contains("UnknownCA") || refusal.contains("BadCertificate"),
        "the client aborted for another reason: {refusal}"
    );
    server.abort();
}
