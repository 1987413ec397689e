//! Behaviour tests of the stand-in through its sockets: a raw HTTP/1.1 client over
//! `tokio::net::TcpStream`, every object checked against `identity-openapi.json`.
//!
//! Every reply passes through [`call`], which asserts the headers every response must carry
//! (`Request-Id: req_<24 base62>` and `Content-Type: application/json`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::openapi_check::Spec;
use super::params;
use super::{DEMO_KEY, StripeSim};

const SESSIONS: &str = "/v1/identity/verification_sessions";
const RK: &str = "rk_test_restricted123";

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn error_type(&self) -> &str {
        self.body["error"]["type"].as_str().unwrap_or("<none>")
    }

    fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("<none>")
    }

    fn error_param(&self) -> &str {
        self.body["error"]["param"].as_str().unwrap_or("<none>")
    }

    fn id(&self) -> String {
        self.body["id"].as_str().expect("an id").to_owned()
    }
}

/// One request on its own connection (`Connection: close`), read to the end.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).await.expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut payload = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"))
    {
        payload = dechunk(&payload);
    }
    let body: Value = serde_json::from_slice(&payload).unwrap_or_else(|e| {
        panic!(
            "{method} {path}: body is not JSON ({e}): {}",
            String::from_utf8_lossy(&payload)
        )
    });
    let reply = Reply {
        status,
        headers,
        body,
    };
    let request_id = reply
        .header("request-id")
        .unwrap_or_else(|| panic!("{method} {path}: no Request-Id"));
    let suffix = request_id.strip_prefix("req_").expect("req_ prefix");
    assert!(
        suffix.len() == 24 && suffix.bytes().all(|b| b.is_ascii_alphanumeric()),
        "bad Request-Id {request_id}"
    );
    assert_eq!(reply.header("content-type"), Some("application/json"));
    reply
}

/// A POST announcing a body over the 1 MiB limit; the answer comes before any body is sent,
/// so the client never writes into a socket the server has closed.
async fn oversized(addr: SocketAddr) -> Reply {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {SESSIONS} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Authorization: Bearer {DEMO_KEY}\r\nContent-Length: {}\r\n\r\n",
        1024 * 1024 + 1
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let headers = head
        .split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: serde_json::from_str(body).expect("JSON"),
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = data.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[end + 2..end + 2 + size]);
        data = &data[end + 4 + size..];
    }
    out
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

async fn post_as(
    addr: SocketAddr,
    key: &str,
    path: &str,
    body: &str,
    extra: &[(&str, &str)],
) -> Reply {
    let auth = bearer(key);
    let mut headers = vec![
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/x-www-form-urlencoded"),
    ];
    headers.extend_from_slice(extra);
    call(addr, "POST", path, &headers, body.as_bytes()).await
}

async fn post(addr: SocketAddr, path: &str, body: &str) -> Reply {
    post_as(addr, DEMO_KEY, path, body, &[]).await
}

async fn get_as(addr: SocketAddr, key: &str, path: &str) -> Reply {
    let auth = bearer(key);
    call(addr, "GET", path, &[("Authorization", auth.as_str())], b"").await
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    get_as(addr, DEMO_KEY, path).await
}

async fn sim(addr: SocketAddr, path: &str, body: Value) -> Reply {
    let body = body.to_string();
    call(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .await
}

async fn create(addr: SocketAddr, body: &str) -> Value {
    let reply = post(addr, SESSIONS, body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

async fn start() -> StripeSim {
    StripeSim::start("127.0.0.1:0".parse().expect("an address"))
        .await
        .expect("the sim starts")
}

fn session_path(id: &str, suffix: &str) -> String {
    format!("{SESSIONS}/{id}{suffix}")
}

#[track_caller]
fn assert_session(spec: &Spec, value: &Value) {
    let violations = spec.violations(spec.component("identity.verification_session"), value);
    assert!(violations.is_empty(), "{violations:#?}\n{value:#}");
}

#[track_caller]
fn assert_list(spec: &Spec, value: &Value) {
    let violations = spec.violations(spec.response(SESSIONS, "get"), value);
    assert!(violations.is_empty(), "{violations:#?}\n{value:#}");
}

#[track_caller]
fn assert_error(spec: &Spec, reply: &Reply, status: u16, kind: &str) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(reply.error_type(), kind, "{}", reply.body);
    let violations = spec.violations(spec.component("error"), &reply.body);
    assert!(violations.is_empty(), "{violations:#?}");
}

#[tokio::test]
async fn create_retrieve_update_cancel() {
    let spec = Spec::load();
    let sim = start().await;
    let addr = sim.local_addr();
    assert_eq!(sim.base_url(), format!("http://127.0.0.1:{}", addr.port()));

    let created = create(
        addr,
        "type=document&client_reference_id=user_42&metadata[order]=6735\
         &options[document][require_matching_selfie]=true&provided_details[email]=jenny%40example.com\
         &related_customer=cus_1&related_person[account]=acct_1&related_person[person]=person_1\
         &return_url=https%3A%2F%2Fexample.com",
    )
    .await;
    assert_session(&spec, &created);
    let id = created["id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("vs_") && id.len() == 27, "{id}");
    assert_eq!(created["object"], "identity.verification_session");
    assert_eq!(created["status"], "requires_input");
    assert_eq!(created["type"], "document");
    assert_eq!(created["livemode"], false);
    assert_eq!(created["client_reference_id"], "user_42");
    assert_eq!(created["metadata"], json!({"order": "6735"}));
    assert_eq!(
        created["options"],
        json!({"document": {"require_matching_selfie": true}})
    );
    assert_eq!(
        created["provided_details"],
        json!({"email": "jenny@example.com"})
    );
    assert_eq!(
        created["related_person"],
        json!({"account": "acct_1", "person": "person_1"})
    );
    assert_eq!(created["last_error"], Value::Null);
    assert_eq!(created["last_verification_report"], Value::Null);
    assert_eq!(created["redaction"], Value::Null);
    assert!(created.get("verified_outputs").is_none());
    assert!(
        created["client_secret"]
            .as_str()
            .is_some_and(|s| s.starts_with(&format!("{id}_secret_")))
    );
    assert!(
        created["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://verify.stripe.com/start/"))
    );

    let fetched = get(addr, &session_path(&id, "")).await;
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.body, created);

    // The {session} segment is percent-decoded before lookup.
    let encoded = format!("{SESSIONS}/{}", id.replacen("vs_", "vs%5F", 1));
    assert_eq!(get(addr, &encoded).await.body["id"], id.as_str());

    let updated = post(
        addr,
        &session_path(&id, ""),
        "metadata[step]=2&type=id_number&provided_details[phone]=%2B15555550100",
    )
    .await;
    assert_eq!(updated.status, 200, "{}", updated.body);
    assert_session(&spec, &updated.body);
    assert_eq!(
        updated.body["metadata"],
        json!({"order": "6735", "step": "2"})
    );
    assert_eq!(updated.body["type"], "id_number");
    assert_eq!(
        updated.body["provided_details"],
        json!({"email": "jenny@example.com", "phone": "+15555550100"})
    );

    let canceled = post(addr, &session_path(&id, "/cancel"), "").await;
    assert_eq!(canceled.status, 200);
    assert_session(&spec, &canceled.body);
    assert_eq!(canceled.body["status"], "canceled");
    assert_eq!(canceled.body["client_secret"], Value::Null);
    assert_eq!(canceled.body["url"], Value::Null);

    assert_error(
        &spec,
        &post(addr, &session_path(&id, ""), "metadata[a]=b").await,
        400,
        "invalid_request_error",
    );
    assert_error(
        &spec,
        &post(addr, &session_path(&id, "/cancel"), "").await,
        400,
        "invalid_request_error",
    );

    let missing = get(addr, &session_path("vs_nope", "")).await;
    assert_error(&spec, &missing, 404, "invalid_request_error");
    assert_eq!(missing.error_code(), "resource_missing");
    assert_eq!(missing.error_param(), "session");
    assert_eq!(
        missing.body["error"]["message"],
        "No such verification_session: 'vs_nope'"
    );
}

#[tokio::test]
async fn create_requires_a_type_or_flow_and_checks_enums() {
    let spec = Spec::load();
    let sim = start().await;
    let addr = sim.local_addr();
    let missing = post(addr, SESSIONS, "metadata[a]=b").await;
    assert_error(&spec, &missing, 400, "invalid_request_error");
    assert_eq!(missing.error_code(), "parameter_missing");
    assert_eq!(missing.error_param(), "type");

    let bad_type = post(addr, SESSIONS, "type=selfie").await;
    assert_error(&spec, &bad_type, 400, "invalid_request_error");
    assert_eq!(bad_type.error_param(), "type");

    let bad_doc = post(
        addr,
        SESSIONS,
        "type=document&options[document][allowed_types][0]=library_card",
    )
    .await;
    assert_error(&spec, &bad_doc, 400, "invalid_request_error");
    assert_eq!(bad_doc.error_param(), "options[document][allowed_types][0]");

    let bad_bool = post(
        addr,
        SESSIONS,
        "type=document&options[document][require_live_capture]=yes",
    )
    .await;
    assert_eq!(
        bad_bool.error_param(),
        "options[document][require_live_capture]"
    );

    let person = post(
        addr,
        SESSIONS,
        "type=document&related_person[account]=acct_1",
    )
    .await;
    assert_eq!(person.error_code(), "parameter_missing");
    assert_eq!(person.error_param(), "related_person[person]");

    let flow = create(addr, "verification_flow=vf_123").await;
    assert_session(&spec, &flow);
    assert_eq!(flow["type"], "verification_flow");
    assert_eq!(flow["verification_flow"], "vf_123");

    let id_number = create(addr, "type=id_number").await;
    assert_session(&spec, &id_number);
    assert_eq!(id_number["options"], json!({"id_number": {}}));

    let plain = create(addr, "type=document").await;
    assert_eq!(plain["options"], json!({"document": {}}));
    assert!(plain.get("related_person").is_none() && plain.get("verification_flow").is_none());

    let empty_type = post(
        addr,
        &session_path(plain["id"].as_str().unwrap_or_default(), ""),
        "type=",
    )
    .await;
    assert_eq!(empty_type.error_code(), "parameter_invalid_empty");
}

#[tokio::test]
async fn both_array_styles_and_encoded_brackets_read_the_same() {
    let spec = Spec::load();
    let sim = start().await;
    let addr = sim.local_addr();
    let bodies = [
        "type=document&options[document][allowed_types][0]=passport&options[document][allowed_types][1]=id_card",
        "type=document&options[document][allowed_types][]=passport&options[document][allowed_types][]=id_card",
        "type=document&options%5Bdocument%5D%5Ballowed_types%5D%5B%5D=passport\
         &options%5Bdocument%5D%5Ballowed_types%5D%5B%5D=id_card",
    ];
    for body in bodies {
        let session = create(addr, body).await;
        assert_session(&spec, &session);
        assert_eq!(
            session["options"],
            json!({"document": {"allowed_types": ["passport", "id_card"]}}),
            "{body}"
        );
    }
    for query in [
        "expand[]=data.verified_outputs",
        "expand[0]=data.verified_outputs",
        "expand%5B%5D=data.verified_outputs",
    ] {
        let list = get(addr, &format!("{SESSIONS}?{query}")).await;
        assert_eq!(list.status, 200, "{query}: {}", list.body);
        assert_list(&spec, &list.body);
        assert!(
            list.body["data"][0].get("verified_outputs").is_some(),
            "{query}"
        );
    }
}

#[tokio::test]
async fn unknown_parameters_are_named() {
    let spec = Spec::load();
    let sim = start().await;
    let addr = sim.local_addr();
    let id = create(addr, "type=document").await["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let cases = [
        (
            "POST",
            SESSIONS.to_owned(),
            "type=document&color=blue",
            "color",
        ),
        (
            "POST",
            SESSIONS.to_owned(),
            "type=document&options[email][x]=1",
            "options[email]",
        ),
        (
            "POST",
            SESSIONS.to_owned(),
            "type=document&provided_details[name]=x",
            "provided_details[name]",
        ),
        (
            "POST",
            SESSIONS.to_owned(),
            "type=document&related_person[team]=x",
            "related_person[team]",
        ),
        (
            "POST",
            session_path(&id, ""),
            "client_reference_id=x",
            "client_reference_id",
        ),
        (
            "POST",
            session_path(&id, "/cancel"),
            "metadata[a]=b",
            "metadata",
        ),
        ("GET", format!("{SESSIONS}?colour=red"), "", "colour"),
        (
            "GET",
            format!("{SESSIONS}?created[after]=1"),
            "",
            "created[after]",
        ),
        (
            "GET",
            format!("{}?limit=2", session_path(&id, "")),
            "",
            "limit",
        ),
    ];
    for (method, path, body, param) in cases {
        let reply = if method == "POST" {
            post(addr, &path, body).await
        } else {
            get(addr, &path).await
        };
        assert_error(&spec, &reply, 400, "invalid_request_error");
        assert_eq!(reply.error_code(), "parameter_unknown", "{path} {body}");
        assert_eq!(reply.error_param(), param, "{path} {body}");
        assert_eq!(
            reply.body["error"]["message"],
            format!("Received unknown parameter: {param}")
        );
    }
}

#[tokio::test]
async fn unknown_urls_get_stripes_message() {
    let spec = Spec::load();
    let sim = start().await;
    let addr = sim.local_addr();
    let reply = get(addr, "/v1/whatever").await;
    assert_error(&spec, &reply, 404, "invalid_request_error");
    assert_eq!(
        reply.body["error"]["message"],
        "Unrecognized request URL (GET: /v1/whatever)"
    );

    let auth = bearer(DEMO_KEY);
    let delete = call(
        addr,
        "DELETE",
        &session_path("vs_1", ""),
        &[("Authorization", auth.as_str())],
        b"",
    )
    .await;
    assert_eq!(
        delete.body["error"]["message"],
        "Unrecognized request URL (DELETE: /v1/identity/verification_sessions/vs_1)"
    );
    let raw = get(
        addr,
        "/v1/identity/verification_sessions/vs_1/approve%20now",
    )
    .await;
    assert_eq!(
        raw.body["error"]["message"],
        "Unrecognized request URL (GET: /v1/identity/verification_sessions/vs_1/approve%20now)"
    );
    let outside = call(addr, "GET", "/favicon.ico", &[], b"").await;
    assert_eq!(outside.status, 404);
}

#[tokio::test]
async fn api_keys_are_checked_and_masked() {
    let spec = Spec::load();
    let sim = start().await;
    let addr = sim.local_addr();
    let none = call(addr, "GET", SESSIONS, &[], b"").await;
    assert_error(&spec, &none, 401, "invalid_request_error");

    for key in [
        "pk_test_abcdefghijklmnopqrstuvwxyz",
        "sk_test_",
        "sk_test_has space",
        "whatever",
    ] {
        let reply = get_as(addr, key, SESSIONS).await;
        assert_error(&spec, &reply, 401, "invalid_request_error");
        let message = reply.body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with("Invalid API Key provided: "),
            "{message}"
        );
        assert!(
            !message.contains(key) || key.len() < 4,
            "{message} echoes {key}"
        );
    }

    // Basic auth with the key as user name, as curl -u sk_...: sends it.
    let basic = call(
        addr,
        "GET",
        SESSIONS,
        &[("Authorization", "Basic c2tfdGVzdF94Og==")],
        b"",
    )
    .await;
    assert_eq!(basic.status, 200, "{}", basic.body);

    let live = post_as(addr, "sk_live_abc", SESSIONS, "type=document", &[]).await;
    assert_eq!(live.status, 200);
    assert_eq!(live.body["livemode"], true);
    assert_session(&spec, &live.body);
    // Test keys do not see live objects.
    let hidden = get(addr, &session_path(&live.id(), "")).await;
    assert_eq!(hidden.status, 404);
    let restricted = get_as(addr, "rk_live_abc", &session_path(&live.id(), "")).await;
    assert_eq!(restricted.status, 200);
}

#[tokio::test]
async fn lists_paginate_newest_first() {
    let spec = Spec::load();
    let sim = start().await;
    let addr = sim.local_addr();
    let mut ids = Vec::new();
    for i in 0..5 {
        let session = create(
            addr,
            &format!("type=document&client_reference_id=ref_{}", i % 2),
        )
        .await;
        ids.push(session["id"].as_str().unwrap_or_default().to_owned());
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    let page_ids = |list: &Value| -> Vec<String> {
        list["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["id"].as_str().map(str::to_owned))
            .collect()
    };

    let all = get(addr, SESSIONS).await;
    assert_eq!(all.status, 200);
    assert_list(&spec, &all.body);
    assert_eq!(all.body["object"], "list");
    assert_eq!(all.body["url"], SESSIONS);
    assert_eq!(all.body["has_more"], false);
    assert_eq!(page_ids(&all.body), newest_first);

    let first = get(addr, &format!("{SESSIONS}?limit=2")).await.body;
    assert_list(&spec, &first);
    assert_eq!(page_ids(&first), newest_first[..2]);
    assert_eq!(first["has_more"], true);

    let second = get(
        addr,
        &format!("{SESSIONS}?limit=2&starting_after={}", newest_first[1]),
    )
    .await
    .body;
    assert_eq!(page_ids(&second), newest_first[2..4]);
    assert_eq!(second["has_more"], true);
    let third = get(
        addr,
        &format!("{SESSIONS}?limit=2&starting_after={}", newest_first[3]),
    )
    .await
    .body;
    assert_eq!(page_ids(&third), newest_first[4..]);
    assert_eq!(third["has_more"], false);

    let before = get(
        addr,
        &format!("{SESSIONS}?limit=2&ending_before={}", newest_first[4]),
    )
    .await
    .body;
    assert_eq!(page_ids(&before), newest_first[2..4]);
    assert_eq!(before["has_more"], true);
    let before_all = get(
        addr,
        &format!("{SESSIONS}?limit=10&ending_before={}", newest_first[2]),
    )
    .await
    .body;
    assert_eq!(page_ids(&before_all), newest_first[..2]);
    assert_eq!(before_all["has_more"], false);

    let filtered = get(addr, &format!("{SESSIONS}?client_reference_id=ref_1"))
        .await
        .body;
    assert_eq!(page_ids(&filtered), vec![ids[3].clone(), ids[1].clone()]);

    let both = get(
        addr,
        &format!(
            "{SESSIONS}?starting_after={}&ending_before={}",
            ids[0], ids[1]
        ),
    )
    .await;
    assert_error(&spec, &both, 400, "invalid_request_error");
    let unknown = get(addr, &format!("{SESSIONS}?starting_after=vs_gone")).await;
    assert_error(&spec, &unknown, 400, "invalid_request_error");
    assert_eq!(unknown.error_code(), "resource_missing");
    assert_eq!(unknown.error_param(), "starting_after");
    for limit in ["0", "101", "ten", "99999999999999999999999"] {
        let reply = get(addr, &format!("{SESSIONS}?limit={limit}")).await;
        assert_error(&spec, &reply, 400, "invalid_request_error");
        assert_eq!(reply.error_param(), "limit");
    }
    let hundred = get(addr, &format!("{SESSIONS}?limit=100")).await;
    assert_eq!(hundred.status, 200);
}

#[tokio::test]
async fn lists_filter_by_created_status_and_relations() {
    let spec = Spec::load();
    let sim = start().await;
    let addr = sim.local_addr();
    let a = create(addr, "type=document&related_customer=cus_a").await;
    let b = create(addr, "type=document&related_customer_account=acct_b").await;
    let created_a = a["created"].as_i64().expect("created");
    let created_b = b["created"].as_i64().expect("created");
    let ids = |list: &Value| -> Vec<String> {
        list["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["id"].as_str().map(str::to_owned))
            .collect()
    };

    let gte = get(addr, &format!("{SESSIONS}?created[gte]={created_a}")).await;
    assert_list(&spec, &gte.body);
    assert_eq!(ids(&gte.body).len(), 2);
    let lt = get(addr, &format!("{SESSIONS}?created%5Blt%5D={created_a}"))
        .await
        .body;
    assert!(ids(&lt).is_empty());
    let gt = get(addr, &format!("{SESSIONS}?created[gt]={created_b}"))
        .await
        .body;
    assert!(ids(&gt).is_empty());
    let lte = get(
        addr,
        &format!("{SESSIONS}?created[lte]={created_b}&created[gte]={created_a}"),
    )
    .await
    .body;
    assert_eq!(ids(&lte).len(), 2);
    let exact = get(addr, &format!("{SESSIONS}?created={created_a}"))
        .await
        .body;
    assert!(ids(&exact).contains(&a["id"].as_str().unwrap_or_default().to_owned()));
    assert!(
        exact["data"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|s| s["created"] == created_a)
    );
    let bad = get(addr, &format!("{SESSIONS}?created[gt]=soon")).await;
    assert_error(&spec, &bad, 400, "invalid_request_error");
    assert_eq!(bad.error_param(), "created[gt]");

    let by_customer = get(addr, &format!("{SESSIONS}?related_customer=cus_a"))
        .await
        .body;
    assert_eq!(
        ids(&by_customer),
        vec![a["id"].as_str().unwrap_or_default().to_owned()]
    );
    let by_account = get(addr, &format!("{SESSIONS}?related_customer_account=acct_b"))
        .await
        .body;
    assert_eq!(
        ids(&by_account),
        vec![b["id"].as_str().unwrap_or_default().to_owned()]
    );

    post(
        addr,
        &session_path(a["id"].as_str().unwrap_or_default(), "/cancel"),
        "",
    )
    .await;
    let canceled = get(addr, &format!("{SESSIONS}?status=canceled")).await.body;
    assert_list(&spec, &canceled);
    assert_eq!(
        ids(&canceled),
        vec![a["id"].as_str().unwrap_or_default().to_owned()]
    );
    let bad_status = get(addr, &format!("{SESSIONS}?status=done")).await;
    assert_error(&spec, &bad_status, 400, "invalid_request_error");
    assert_eq!(bad_status.error_param(), "status");
}

#[tokio::test]
async fn sim_controls_drive_the_lifecycle() {
    let spec = Spec::load();
    let sim = start().await;
    let addr = sim.local_addr();
    let id = create(addr, "type=document").await["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let step = |name: &str| format!("/_sim/verification_sessions/{id}/{name}");

    let processing = sim_call(addr, &step("processing"), json!({})).await;
    assert_eq!(processing.status, 200, "{}", processing.body);
    assert_session(&spec, &processing.body);
    assert_eq!(processing.body["status"], "processing");
    assert_eq!(processing.body["client_secret"], Value::Null);
    // Updating and canceling need requires_input.
    assert_error(
        &spec,
        &post(addr, &session_path(&id, ""), "metadata[a]=b").await,
        400,
        "invalid_request_error",
    );
    assert_error(
        &spec,
        &post(addr, &session_path(&id, "/cancel"), "").await,
        400,
        "invalid_request_error",
    );
    assert_error(
        &spec,
        &post(addr, &session_path(&id, "/redact"), "").await,
        400,
        "invalid_request_error",
    );

    let unknown_code = sim_call(
        addr,
        &step("requires_input"),
        json!({"code": "bad_hair_day"}),
    )
    .await;
    assert_eq!(unknown_code.status, 400);
    let failed = sim_call(
        addr,
        &step("requires_input"),
        json!({"code": "document_expired", "reason": "The document is expired."}),
    )
    .await;
    assert_eq!(failed.status, 200);
    assert_session(&spec, &failed.body);
    assert_eq!(failed.body["status"], "requires_input");
    assert_eq!(
        failed.body["last_error"],
        json!({"code": "document_expired", "reason": "The document is expired."})
    );
    assert!(failed.body["client_secret"].is_string() && failed.body["url"].is_string());

    let verified = sim_call(addr, &step("verified"), json!({})).await;
    assert_eq!(verified.status, 200);
    assert_session(&spec, &verified.body);
    assert_eq!(verified.body["status"], "verified");
    assert_eq!(verified.body["last_error"], Value::Null);
    assert!(
        verified.body["last_verification_report"]
            .as_str()
            .is_some_and(|r| r.starts_with("vr_"))
    );
    assert_eq!(verified.body["verified_outputs"]["first_name"], "Jenny");

    assert_eq!(
        sim_call(addr, &step("processing"), json!({})).await.status,
        400
    );
    assert_eq!(
        sim_call(addr, &step("redacted"), json!({})).await.status,
        400
    );
    let missing = sim_call(
        addr,
        "/_sim/verification_sessions/vs_none/verified",
        json!({}),
    )
    .await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.error_code(), "resource_missing");
    let wrong = call(addr, "POST", "/_sim/nothing", &[], b"").await;
    assert_eq!(wrong.status, 404);
}

async fn sim_call(addr: SocketAddr, path: &str, body: Value) -> Reply {
    sim(addr, path, body).await
}

#[tokio::test]
async fn redaction_replaces_personal_data() {
    let spec = Spec::load();
    let sim = start().await;
    let addr = sim.local_addr();
    let id = create(
        addr,
        "type=document&metadata[user]=42&provided_details[email]=a%40b.c",
    )
    .await["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    sim_call(
        addr,
        &format!("/_sim/verification_sessions/{id}/verified"),
        json!({}),
    )
    .await;

    let redacted = post(
        addr,
        &session_path(&id, "/redact"),
        "expand[]=verified_outputs",
    )
    .await;
    assert_eq!(redacted.status, 200, "{}", redacted.body);
    assert_session(&spec, &redacted.body);
    assert_eq!(redacted.body["status"], "verified");
    assert_eq!(redacted.body["redaction"], json!({"status": "processing"}));
    assert_eq!(redacted.body["metadata"], json!({}));
    assert_eq!(redacted.body["provided_details"]["email"], "[redacted]");
    assert_eq!(
        redacted.body["verified_outputs"]["first_name"],
        "[redacted]"
    );
    assert_eq!(
        redacted.body["verified_outputs"]["address"]["line1"],
        "[redacted]"
    );

    assert_error(
        &spec,
        &post(addr, &session_path(&id, "/redact"), "").await,
        400,
        "invalid_request_error",
    );
    assert_error(
        &spec,
        &post(addr, &session_path(&id, ""), "metadata[a]=b").await,
        400,
        "invalid_request_error",
    );
    assert_error(
        &spec,
        &post(addr, &session_path(&id, "/cancel"), "").await,
        400,
        "invalid_request_error",
    );

    let done = sim_call(
        addr,
        &format!("/_sim/verification_sessions/{id}/redacted"),
        json!({}),
    )
    .await;
    assert_eq!(done.status, 200);
    assert_session(&spec, &done.body);
    assert_eq!(done.body["redaction"], json!({"status": "redacted"}));
    let report = get(
        addr,
        &format!(
            "{}?expand[]=last_verification_report",
            session_path(&id, "")
        ),
    )
    .await;
    assert_session(&spec, &report.body);
    assert_eq!(
        report.body["last_verification_report"]["document"]["first_name"],
        "[redacted]"
    );

    // From requires_input a redaction also cancels; from canceled it is allowed too.
    let open = create(addr, "type=document").await["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let canceled = post(addr, &session_path(&open, "/redact"), "").await;
    assert_session(&spec, &canceled.body);
    assert_eq!(canceled.body["status"], "canceled");
    assert_eq!(canceled.body["redaction"], json!({"status": "processing"}));
    let other = create(addr, "type=document").await["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    post(addr, &session_path(&other, "/cancel"), "").await;
    assert_eq!(
        post(addr, &session_path(&other, "/redact"), "")
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn expand_reveals_outputs_and_reports() {
    let spec = Spec::load();
    let sim = start().await;
    let addr = sim.local_addr();
    let id = create(addr, "type=document").await["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let before = get(
        addr,
        &format!("{}?expand[]=verified_outputs", session_path(&id, "")),
    )
    .await;
    assert_session(&spec, &before.body);
    assert_eq!(before.body["verified_outputs"], Value::Null);
    sim_call(
        addr,
        &format!("/_sim/verification_sessions/{id}/verified"),
        json!({}),
    )
    .await;

    let plain = get(addr, &session_path(&id, "")).await.body;
    assert_session(&spec, &plain);
    assert!(plain.get("verified_outputs").is_none());
    assert!(plain["last_verification_report"].is_string());

    let secret = get(
        addr,
        &format!("{}?expand[]=verified_outputs", session_path(&id, "")),
    )
    .await
    .body;
    assert_session(&spec, &secret);
    assert_eq!(secret["verified_outputs"]["last_name"], "Rosen");
    assert_eq!(secret["verified_outputs"]["dob"], Value::Null);
    assert_eq!(secret["verified_outputs"]["id_number"], Value::Null);

    let sensitive = format!(
        "{}?expand[]=verified_outputs.dob&expand[]=verified_outputs.id_number",
        session_path(&id, "")
    );
    let with_sk = get(addr, &sensitive).await.body;
    assert_session(&spec, &with_sk);
    assert_eq!(with_sk["verified_outputs"]["dob"], Value::Null);
    let with_rk = get_as(addr, RK, &sensitive).await.body;
    assert_session(&spec, &with_rk);
    assert_eq!(
        with_rk["verified_outputs"]["dob"],
        json!({"day": 1, "month": 1, "year": 1990})
    );
    assert!(with_rk["verified_outputs"]["id_number"].is_string());

    let report = get(
        addr,
        &format!(
            "{}?expand[0]=last_verification_report",
            session_path(&id, "")
        ),
    )
    .await
    .body;
    assert_session(&spec, &report);
    assert_eq!(
        report["last_verification_report"]["object"],
        "identity.verification_report"
    );
    assert_eq!(
        report["last_verification_report"]["verification_session"],
        id.as_str()
    );

    let list = get(
        addr,
        &format!(
            "{SESSIONS}?expand[]=data.verified_outputs&expand[]=data.last_verification_report"
        ),
    )
    .await;
    assert_list(&spec, &list.body);
    assert_eq!(
        list.body["data"][0]["verified_outputs"]["first_name"],
        "Jenny"
    );
    assert!(list.body["data"][0]["last_verification_report"].is_object());

    let on_list = get(addr, &format!("{SESSIONS}?expand[]=verified_outputs")).await;
    assert_error(&spec, &on_list, 400, "invalid_request_error");
    let unknown = get(addr, &format!("{}?expand[]=foo", session_path(&id, ""))).await;
    assert_error(&spec, &unknown, 400, "invalid_request_error");
    assert_eq!(
        unknown.body["error"]["message"],
        "This property cannot be expanded (foo)."
    );
    let deep = get(
        addr,
        &format!("{}?expand[]=a.b.c.d.e", session_path(&id, "")),
    )
    .await;
    assert_error(&spec, &deep, 400, "invalid_request_error");
    let created = post(addr, SESSIONS, "type=document&expand[]=verified_outputs").await;
    assert_session(&spec, &created.body);
    assert_eq!(created.body["verified_outputs"], Value::Null);
}

#[tokio::test]
async fn metadata_rules() {
    let spec = Spec::load();
    let sim = start().await;
    let addr = sim.local_addr();
    let many: Vec<String> = (0..51).map(|i| format!("metadata[k{i}]=v")).collect();
    let too_many = post(addr, SESSIONS, &format!("type=document&{}", many.join("&"))).await;
    assert_error(&spec, &too_many, 400, "invalid_request_error");
    assert_eq!(too_many.error_param(), "metadata");

    let long_key = "k".repeat(41);
    let key_reply = post(
        addr,
        SESSIONS,
        &format!("type=document&metadata[{long_key}]=v"),
    )
    .await;
    assert_error(&spec, &key_reply, 400, "invalid_request_error");
    assert_eq!(key_reply.error_param(), format!("metadata[{long_key}]"));
    let long_value = post(
        addr,
        SESSIONS,
        &format!("type=document&metadata[k]={}", "v".repeat(501)),
    )
    .await;
    assert_error(&spec, &long_value, 400, "invalid_request_error");
    assert_eq!(long_value.error_param(), "metadata[k]");

    let fifty = &many[..49].join("&");
    let full = create(
        addr,
        &format!(
            "type=document&{fifty}&metadata[{}]={}",
            "x".repeat(40),
            "y".repeat(500)
        ),
    )
    .await;
    assert_eq!(full["metadata"].as_object().map(|m| m.len()), Some(50));
    let id = create(addr, "type=document&metadata[a]=1&metadata[b]=2").await["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let merged = post(addr, &session_path(&id, ""), "metadata[c]=3&metadata[a]=").await;
    assert_session(&spec, &merged.body);
    assert_eq!(merged.body["metadata"], json!({"b": "2", "c": "3"}));
    let overflow: Vec<String> = (0..49).map(|i| format!("metadata[n{i}]=v")).collect();
    let over = post(addr, &session_path(&id, ""), &overflow.join("&")).await;
    assert_error(&spec, &over, 400, "invalid_request_error");
    let cleared = post(addr, &session_path(&id, ""), "metadata=").await;
    assert_eq!(cleared.body["metadata"], json!({}));
    let not_object = post(addr, &session_path(&id, ""), "metadata=oops").await;
    assert_error(&spec, &not_object, 400, "invalid_request_error");
}

#[tokio::test]
async fn idempotent_requests_replay() {
    let spec = Spec::load();
    let sim = start().await;
    let addr = sim.local_addr();
    let key = [("Idempotency-Key", "create-1")];
    let first = post_as(
        addr,
        DEMO_KEY,
        SESSIONS,
        "type=document&metadata[a]=1",
        &key,
    )
    .await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("idempotency-key"), Some("create-1"));
    assert_eq!(first.header("idempotent-replayed"), None);
    // The same parameters in another order and array style are the same request.
    let again = post_as(
        addr,
        DEMO_KEY,
        SESSIONS,
        "metadata%5Ba%5D=1&type=document",
        &key,
    )
    .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body, first.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.header("idempotency-key"), Some("create-1"));
    assert_eq!(
        get(addr, SESSIONS).await.body["data"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    // Another API key has its own namespace.
    let other = post_as(
        addr,
        "sk_test_other",
        SESSIONS,
        "type=document&metadata[a]=1",
        &key,
    )
    .await;
    assert_eq!(other.header("idempotent-replayed"), None);

    let mismatch = post_as(addr, DEMO_KEY, SESSIONS, "type=id_number", &key).await;
    assert_error(&spec, &mismatch, 400, "idempotency_error");
    assert_eq!(mismatch.header("idempotency-key"), Some("create-1"));

    // Errors from a running endpoint are stored and replayed...
    let gone = [("Idempotency-Key", "cancel-gone")];
    let missing = post_as(
        addr,
        DEMO_KEY,
        &session_path("vs_gone", "/cancel"),
        "",
        &gone,
    )
    .await;
    assert_eq!(missing.status, 404);
    let replayed = post_as(
        addr,
        DEMO_KEY,
        &session_path("vs_gone", "/cancel"),
        "",
        &gone,
    )
    .await;
    assert_eq!(replayed.status, 404);
    assert_eq!(replayed.header("idempotent-replayed"), Some("true"));
    // ...validation failures are not, so a corrected request may reuse the key.
    let fix = [("Idempotency-Key", "fix-me")];
    let invalid = post_as(addr, DEMO_KEY, SESSIONS, "type=document&colour=red", &fix).await;
    assert_eq!(invalid.status, 400);
    let corrected = post_as(addr, DEMO_KEY, SESSIONS, "type=document", &fix).await;
    assert_eq!(corrected.status, 200);
    assert_eq!(corrected.header("idempotent-replayed"), None);
    // ...nor are authentication failures.
    let unauthorized = post_as(addr, "sk_test_", SESSIONS, "type=document", &fix).await;
    assert_eq!(unauthorized.status, 401);

    let long = "k".repeat(256);
    let too_long = post_as(
        addr,
        DEMO_KEY,
        SESSIONS,
        "type=document",
        &[("Idempotency-Key", long.as_str())],
    )
    .await;
    assert_error(&spec, &too_long, 400, "invalid_request_error");
    let max = "k".repeat(255);
    let ok = post_as(
        addr,
        DEMO_KEY,
        SESSIONS,
        "type=document",
        &[("Idempotency-Key", max.as_str())],
    )
    .await;
    assert_eq!(ok.status, 200);
    // GETs ignore the header.
    let auth = bearer(DEMO_KEY);
    let listed = call(
        addr,
        "GET",
        SESSIONS,
        &[
            ("Authorization", auth.as_str()),
            ("Idempotency-Key", "create-1"),
        ],
        b"",
    )
    .await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.header("idempotent-replayed"), None);
}

#[tokio::test]
async fn a_key_in_flight_is_refused_with_409() {
    let spec = Spec::load();
    let sim = start().await;
    let addr = sim.local_addr();
    let fault = sim_call(
        addr,
        "/_sim/faults",
        json!({"delay_ms": 700, "count": 2, "method": "POST"}),
    )
    .await;
    assert_eq!(fault.status, 200, "{}", fault.body);
    let key = [("Idempotency-Key", "slow-1")];
    let (a, b) = tokio::join!(
        post_as(addr, DEMO_KEY, SESSIONS, "type=document", &key),
        post_as(addr, DEMO_KEY, SESSIONS, "type=document", &key),
    );
    let (ok, refused) = if a.status == 200 { (a, b) } else { (b, a) };
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_error(&spec, &refused, 409, "invalid_request_error");
    assert_eq!(refused.error_code(), "idempotency_key_in_use");
    assert_eq!(refused.header("idempotency-key"), Some("slow-1"));
    let after = post_as(addr, DEMO_KEY, SESSIONS, "type=document", &key).await;
    assert_eq!(after.header("idempotent-replayed"), Some("true"));
    assert_eq!(after.body, ok.body);
}

#[tokio::test]
async fn faults_are_injected_in_order() {
    let spec = Spec::load();
    let sim = start().await;
    let addr = sim.local_addr();
    let add = |fault: Value| sim_call(addr, "/_sim/faults", fault);
    assert_eq!(
        add(json!({"status": 500, "should_retry": true}))
            .await
            .status,
        200
    );
    assert_eq!(
        add(json!({"status": 429, "retry_after": 2})).await.status,
        200
    );
    assert_eq!(
        add(json!({"status": 409, "should_retry": false, "path_prefix": "/v1/identity"}))
            .await
            .status,
        200
    );
    assert_eq!(
        add(json!({"status": 503, "method": "GET", "count": 2}))
            .await
            .status,
        200
    );

    // Faults apply before auth and idempotency.
    let server = call(
        addr,
        "POST",
        SESSIONS,
        &[("Idempotency-Key", "f-1")],
        b"type=document",
    )
    .await;
    assert_error(&spec, &server, 500, "api_error");
    assert_eq!(server.header("stripe-should-retry"), Some("true"));
    assert_eq!(server.header("idempotency-key"), Some("f-1"));
    let limited = post(addr, SESSIONS, "type=document").await;
    assert_error(&spec, &limited, 429, "invalid_request_error");
    assert_eq!(limited.error_code(), "rate_limit");
    assert_eq!(limited.header("retry-after"), Some("2"));
    let lock = post(addr, SESSIONS, "type=document").await;
    assert_error(&spec, &lock, 409, "invalid_request_error");
    assert_eq!(lock.error_code(), "lock_timeout");
    assert_eq!(lock.header("stripe-should-retry"), Some("false"));
    // The GET fault does not hit a POST.
    let created = post_as(
        addr,
        DEMO_KEY,
        SESSIONS,
        "type=document",
        &[("Idempotency-Key", "f-1")],
    )
    .await;
    assert_eq!(
        created.status, 200,
        "injected errors are not stored for idempotency"
    );
    assert_eq!(created.header("idempotent-replayed"), None);
    assert_error(&spec, &get(addr, SESSIONS).await, 503, "api_error");
    assert_eq!(
        sim_call(
            addr,
            "/_sim/faults",
            json!({"status": 502, "path_prefix": "/v1/other"})
        )
        .await
        .status,
        200
    );
    let listed = call(addr, "GET", "/_sim/faults", &[], b"").await;
    assert_eq!(listed.body["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(listed.body["data"][0]["count"], 1);
    assert_error(&spec, &get(addr, SESSIONS).await, 503, "api_error");
    assert_eq!(get(addr, SESSIONS).await.status, 200);
    assert_eq!(
        call(addr, "DELETE", "/_sim/faults", &[], b"").await.status,
        200
    );
    let listed = call(addr, "GET", "/_sim/faults", &[], b"").await;
    assert_eq!(listed.body["data"], json!([]));

    // A delay alone answers normally, late; a delay with a status answers the error late.
    add(json!({"delay_ms": 300})).await;
    let started = Instant::now();
    assert_eq!(get(addr, SESSIONS).await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    add(json!({"delay_ms": 200, "status": 504})).await;
    let started = Instant::now();
    assert_error(&spec, &get(addr, SESSIONS).await, 504, "api_error");
    assert!(started.elapsed() >= Duration::from_millis(200));

    for bad in [
        json!({"status": 200}),
        json!({}),
        json!({"status": 500, "count": 0}),
        json!({"status": 500, "colour": 1}),
    ] {
        assert_eq!(add(bad.clone()).await.status, 400, "{bad}");
    }
}

#[tokio::test]
async fn requests_are_recorded_and_reset_clears_everything() {
    let sim = start().await;
    let addr = sim.local_addr();
    let id = create(addr, "type=document&metadata[a]=1").await["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    get(addr, &format!("{SESSIONS}?limit=3&created[gte]=1")).await;
    sim_call(
        addr,
        &format!("/_sim/verification_sessions/{id}/processing"),
        json!({}),
    )
    .await;

    let recorded = sim.requests();
    assert_eq!(recorded.len(), 2, "the /_sim request is not recorded");
    assert_eq!(recorded[0].method, "POST");
    assert_eq!(recorded[0].path, SESSIONS);
    assert_eq!(
        recorded[0].header("AUTHORIZATION"),
        Some(format!("Bearer {DEMO_KEY}").as_str())
    );
    assert!(
        recorded[0]
            .headers
            .iter()
            .all(|(n, _)| *n == n.to_ascii_lowercase())
    );
    assert_eq!(
        Value::Object(recorded[0].form()),
        json!({"type": "document", "metadata": {"a": "1"}})
    );
    assert_eq!(recorded[1].query.as_deref(), Some("limit=3&created[gte]=1"));
    assert_eq!(
        Value::Object(recorded[1].query_form()),
        json!({"limit": "3", "created": {"gte": "1"}})
    );

    let over_http = call(addr, "GET", "/_sim/requests", &[], b"").await;
    assert_eq!(over_http.body["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        over_http.body["data"][0]["body"],
        "type=document&metadata[a]=1"
    );

    assert_eq!(
        call(addr, "POST", "/_sim/reset", &[], b"").await.status,
        200
    );
    assert!(sim.requests().is_empty());
    assert_eq!(get(addr, &session_path(&id, "")).await.status, 404);
}

#[tokio::test]
async fn malformed_input_gets_stripe_shaped_400s() {
    let spec = Spec::load();
    let sim = start().await;
    let addr = sim.local_addr();
    let auth = bearer(DEMO_KEY);
    let json_body = call(
        addr,
        "POST",
        SESSIONS,
        &[
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ],
        br#"{"type":"document"}"#,
    )
    .await;
    assert_error(&spec, &json_body, 400, "invalid_request_error");
    let sniffed = call(
        addr,
        "POST",
        SESSIONS,
        &[("Authorization", auth.as_str())],
        br#"{"type":"document"}"#,
    )
    .await;
    assert_error(&spec, &sniffed, 400, "invalid_request_error");

    let bodies: [&[u8]; 9] = [
        b"type=document&metadata[a=1",
        b"type=document&a=1&a[b]=2",
        b"type=%FF",
        b"type=\xff\xfe",
        b"type=document&options[document][allowed_types][99999]=passport",
        b"type=document&metadata[a][b]=c",
        b"type=document&expand=verified_outputs",
        b"type=document&options=1",
        b"type[]=document",
    ];
    for body in bodies {
        let reply = call(
            addr,
            "POST",
            SESSIONS,
            &[
                ("Authorization", auth.as_str()),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            body,
        )
        .await;
        assert_error(&spec, &reply, 400, "invalid_request_error");
    }
    for query in [
        "limit=-1",
        "limit=1e3",
        "created=abc",
        "status[]=verified",
        "expand[]=data.a.b.c.d",
        "starting_after[x]=1",
    ] {
        let reply = get(addr, &format!("{SESSIONS}?{query}")).await;
        assert_error(&spec, &reply, 400, "invalid_request_error");
    }
    let too_big = oversized(addr).await;
    assert_eq!(too_big.status, 413);
    assert_eq!(too_big.error_type(), "invalid_request_error");
    // Still serving after all of that.
    assert_eq!(get(addr, SESSIONS).await.status, 200);
}

#[test]
fn parameter_lists_match_the_openapi_description() {
    let spec = Spec::load();
    let paths = &spec.document()["paths"];
    let names = |value: &Value| -> Vec<String> {
        let mut names: Vec<String> = value
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k.clone())
            .collect();
        names.sort();
        names
    };
    let sorted = |list: &[&str]| -> Vec<String> {
        let mut names: Vec<String> = list.iter().map(|s| (*s).to_owned()).collect();
        names.sort();
        names
    };
    let body = |path: &str, method: &str| -> Value {
        paths[path][method]["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
            .clone()
    };
    let query = |path: &str, method: &str| -> Vec<String> {
        let mut names: Vec<String> = paths[path][method]["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["in"] == "query")
            .filter_map(|p| p["name"].as_str().map(str::to_owned))
            .collect();
        names.sort();
        names
    };
    let one = "/v1/identity/verification_sessions/{session}";
    let create = body(SESSIONS, "post");
    assert_eq!(names(&create["properties"]), sorted(params::CREATE_PARAMS));
    assert_eq!(
        names(&body(one, "post")["properties"]),
        sorted(params::UPDATE_PARAMS)
    );
    assert_eq!(
        names(&body(&format!("{one}/cancel"), "post")["properties"]),
        sorted(params::EXPAND_ONLY_PARAMS)
    );
    assert_eq!(
        names(&body(&format!("{one}/redact"), "post")["properties"]),
        sorted(params::EXPAND_ONLY_PARAMS)
    );
    assert_eq!(query(one, "get"), sorted(params::EXPAND_ONLY_PARAMS));
    assert_eq!(query(SESSIONS, "get"), sorted(params::LIST_PARAMS));
    let properties = &create["properties"];
    assert_eq!(
        names(&properties["options"]["properties"]),
        sorted(params::OPTIONS_PARAMS)
    );
    assert_eq!(
        names(&properties["options"]["properties"]["document"]["anyOf"][0]["properties"]),
        sorted(params::DOCUMENT_PARAMS)
    );
    assert_eq!(
        names(&properties["provided_details"]["properties"]),
        sorted(params::PROVIDED_DETAILS_PARAMS)
    );
    assert_eq!(
        names(&properties["related_person"]["properties"]),
        sorted(params::RELATED_PERSON_PARAMS)
    );
    let created = paths[SESSIONS]["get"]["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "created")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        names(&created["schema"]["anyOf"][0]["properties"]),
        sorted(params::CREATED_PARAMS)
    );
    let last_error_codes =
        &spec.component("gelato_session_last_error")["properties"]["code"]["enum"];
    assert_eq!(last_error_codes, &json!(super::session::LAST_ERROR_CODES));
}
