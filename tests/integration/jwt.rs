//! JWT bearer tokens (issue 19): tokens signed in the test with RS256, ES256 and EdDSA keys, a
//! JWKS served over HTTP by a test server and rotated by `kid`, every refusal a 401 naming what
//! is wrong with the token, and the MCP endpoints' protected resource metadata (RFC 9728).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{self, Harness};
use capgate_model::config::{JwtIssuer, Requirement};

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "capgate";

fn jwt_data(name: &str) -> Vec<u8> {
    std::fs::read(common::root().join("tests/data/jwt").join(name)).unwrap()
}

/// Serves `document` at any path, over HTTP/1.1, one request per connection.
async fn jwks_server(document: Arc<Mutex<Vec<u8>>>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let document = document.lock().unwrap().clone();
            tokio::spawn(async move {
                let mut request = vec![0u8; 4096];
                let _ = stream.read(&mut request).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    document.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&document).await;
            });
        }
    });
    address
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token signed with the test key `kid` (its algorithm from its name), with `claims` over
/// the defaults (issuer, audience, consumer `agent`, 5 minutes).
fn token(kid: &str, claims: Value) -> String {
    let (alg, key) = match kid.split('-').next().unwrap() {
        "rsa" => (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(&jwt_data(&format!("{kid}.pem"))).unwrap(),
        ),
        "ec" => (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&jwt_data(&format!("{kid}.pem"))).unwrap(),
        ),
        _ => (
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(&jwt_data(&format!("{kid}.pem"))).unwrap(),
        ),
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    let mut all = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "agent", "exp": now() + 300});
    for (k, v) in claims.as_object().unwrap() {
        all[k] = v.clone();
    }
    jsonwebtoken::encode(&header, &all, &key).unwrap()
}

async fn harness(dir: &tempfile::TempDir, jwks: SocketAddr) -> Harness {
    let seed =
        std::fs::read_to_string(common::root().join("specs/identity-sessions.yaml")).unwrap();
    let file = dir.path().join("consumers.yaml");
    // `agent` has no API key: it is known only by the tokens that name it.
    std::fs::write(
        &file,
        "consumers:\n  - name: agent\n    scopes:\n      - capability: identity-*\n        access: any\n",
    )
    .unwrap();
    Harness::with_specs(&[("identity-sessions.yaml", &seed)], |c| {
        c.consumers.file = Some(file);
        c.consumers.require = vec![Requirement::default()];
        c.consumers.jwt = vec![JwtIssuer {
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            jwks_url: Some(format!("http://{jwks}/.well-known/jwks.json")),
            refresh: Duration::from_secs(1),
            ..JwtIssuer::default()
        }];
    })
    .await
}

#[tokio::test]
async fn tokens_identify_consumers_and_every_bad_token_is_a_401_that_says_why() {
    let document = Arc::new(Mutex::new(jwt_data("jwks.json")));
    let jwks = jwks_server(document.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let h = harness(&dir, jwks).await;
    let sessions = h.sessions().await;
    let list = |token: String| {
        h.http
            .get(format!("{sessions}?limit=1"))
            .bearer_auth(token)
            .send()
    };
    // Each algorithm, each with its own key.
    for kid in ["rsa-1", "ec-1", "ed-1"] {
        let response = list(token(kid, json!({}))).await.unwrap();
        assert_eq!(response.status(), 200, "{kid}");
    }
    // A token's scopes narrow the consumer's: `read` may list and may not create.
    let reader = token("ec-1", json!({"scope": "openid identity-*:read"}));
    assert_eq!(list(reader.clone()).await.unwrap().status(), 200);
    let create = h
        .http
        .post(&sessions)
        .bearer_auth(&reader)
        .form(&[("type", "document")])
        .send()
        .await
        .unwrap();
    assert_eq!(create.status(), 403);

    // What is wrong with each bad token, in the challenge and the body.
    let header_json = |alg: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
            "{{\"alg\":\"{alg}\",\"typ\":\"JWT\",\"kid\":\"rsa-1\"}}"
        ))
    };
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "agent", "exp": now() + 300, "scope": "any"})
            .to_string(),
    );
    let good = token("rsa-1", json!({}));
    let signature = good.rsplit('.').next().unwrap();
    let forged = {
        // rsa-1's header and signature over other claims.
        let mut parts: Vec<&str> = good.split('.').collect();
        parts[1] = &payload;
        parts.join(".")
    };
    let hs256 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "agent", "exp": now() + 300}),
        &EncodingKey::from_secret(b"a shared secret"),
    )
    .unwrap();
    let cases = [
        (
            token("rsa-1", json!({"exp": now() - 120})),
            "the token has expired",
        ),
        (
            token("rsa-1", json!({"nbf": now() + 600})),
            "the token is not valid yet",
        ),
        (
            token("rsa-1", json!({"aud": "someone-else"})),
            "the token is for another audience",
        ),
        (
            token("rsa-1", json!({"iss": "https://evil.test"})),
            "the token's issuer is not trusted here",
        ),
        (
            token("rsa-1", json!({"sub": "ghost"})),
            "the token names no consumer of this gateway",
        ),
        (forged, "the token's signature does not verify"),
        (
            format!("{}.{payload}.", header_json("none")),
            "the token is malformed",
        ),
        (
            format!("{}.{payload}.{signature}", header_json("HS256")),
            "the token's algorithm is not accepted (RS256, ES256 or EdDSA)",
        ),
        (
            hs256,
            "the token's algorithm is not accepted (RS256, ES256 or EdDSA)",
        ),
        (
            token("rsa-2", json!({})),
            "the token is signed by a key this issuer does not publish",
        ),
    ];
    for (bad, why) in cases {
        let response = list(bad).await.unwrap();
        assert_eq!(response.status(), 401, "{why}");
        let challenge = response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            challenge.contains("error=\"invalid_token\"")
                && challenge.contains(&format!("error_description=\"{why}\"")),
            "{why}: {challenge}"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_credentials", "{body}");
        assert!(!body.to_string().contains("agent"), "{body}");
    }

    // The issuer rotates: rsa-2 replaces rsa-1 in its JWKS, and tokens follow the key ids.
    *document.lock().unwrap() = jwt_data("jwks-rotated.json");
    let rotated = token("rsa-2", json!({}));
    let wait = async {
        while list(rotated.clone()).await.unwrap().status() != 200 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .expect("the rotated key is fetched");
    let old = list(token("rsa-1", json!({}))).await.unwrap();
    assert_eq!(old.status(), 401, "a key the issuer no longer publishes");
}

#[tokio::test]
async fn mcp_endpoints_point_to_their_protected_resource_metadata() {
    let jwks = jwks_server(Arc::new(Mutex::new(jwt_data("jwks.json")))).await;
    let dir = tempfile::tempdir().unwrap();
    let h = harness(&dir, jwks).await;
    let url = crate::mcp::mcp_url(&h).await;
    let post = |token: Option<String>| {
        let mut request = h
            .http
            .post(&url)
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
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    // Without a token: a challenge naming the metadata, and no `error` (RFC 6750, 3.1).
    let refused = post(None).await.unwrap();
    assert_eq!(refused.status(), 401);
    let challenge = refused.headers()["www-authenticate"].to_str().unwrap();
    let (_, metadata) = challenge.split_once("resource_metadata=\"").unwrap();
    let metadata = metadata.split('"').next().unwrap().to_owned();
    assert!(!challenge.contains("error="), "{challenge}");
    let (base, path) = url.split_at(url.find("/mcp").unwrap());
    assert_eq!(
        metadata,
        format!("{base}/.well-known/oauth-protected-resource{path}")
    );
    let document: Value = h
        .http
        .get(&metadata)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(document["resource"], url.as_str(), "{document}");
    assert_eq!(document["authorization_servers"], json!([ISSUER]));
    assert_eq!(document["bearer_methods_supported"], json!(["header"]));
    // A bad token: the same pointer, with what is wrong.
    let expired = post(Some(token("ed-1", json!({"exp": now() - 120}))))
        .await
        .unwrap();
    assert_eq!(expired.status(), 401);
    let challenge = expired.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains(&format!("resource_metadata=\"{metadata}\""))
            && challenge.contains("error=\"invalid_token\""),
        "{challenge}"
    );
    // A read-scoped token sees the read tools only.
    let listed: Value = post(Some(token("ed-1", json!({"scope": ["read"]}))))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = listed["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "stripe-get-identity-verification-sessions",
            "stripe-get-identity-verification-sessions-2"
        ]
    );
}
