//! The seed's MCP tools through rmcp's own client, in both protocol eras, to the stand-in.

use std::collections::BTreeSet;
use std::time::Duration;

use rmcp::model::{CallToolRequestParams, CallToolResult, ClientConfig, ProtocolVersion, Tool};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientLifecycleMode, ClientServiceExt, RoleClient, ServiceExt};
use serde_json::{Map, Value, json};

use crate::common::{self, Harness, KEY};

pub type Client = RunningService<RoleClient, ClientConfig>;

/// A legacy (2025-11-25, `initialize` and sessions) client.
pub async fn legacy_client(url: &str) -> Client {
    ClientConfig::default()
        .serve(StreamableHttpClientTransport::from_uri(url.to_owned()))
        .await
        .expect("the legacy handshake succeeds")
}

/// A 2026-07-28 (stateless, `server/discover`) client.
pub async fn modern_client(url: &str) -> Client {
    ClientConfig::default()
        .serve_with_lifecycle(
            StreamableHttpClientTransport::from_uri(url.to_owned()),
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .expect("discovery succeeds")
}

pub async fn mcp_url(h: &Harness) -> String {
    format!("{}/mcp/identity-sessions-mcp", h.base(9090).await)
}

fn args(value: Value) -> Map<String, Value> {
    value.as_object().expect("an object").clone()
}

pub async fn call(client: &Client, name: &str, arguments: Value) -> CallToolResult {
    client
        .call_tool(CallToolRequestParams::new(name.to_owned()).with_arguments(args(arguments)))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn text_of(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

const SEED_TOOLS: [&str; 6] = [
    "stripe-get-identity-verification-sessions",
    "stripe-post-identity-verification-sessions",
    "stripe-get-identity-verification-sessions-2",
    "stripe-post-identity-verification-sessions-2",
    "stripe-post-identity-verification-sessions-3",
    "stripe-post-identity-verification-sessions-4",
];

fn check_seed_tools(tools: &[Tool]) {
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(names, SEED_TOOLS);
    let list = &tools[0];
    let a = list.annotations.as_ref().expect("annotations");
    assert_eq!(
        (
            a.read_only_hint,
            a.destructive_hint,
            a.idempotent_hint,
            a.open_world_hint
        ),
        (Some(true), Some(false), Some(true), None),
        "only the hints the file gives (it gives no openWorld)"
    );
    let create = &tools[1];
    let a = create.annotations.as_ref().unwrap();
    assert_eq!(
        (a.read_only_hint, a.idempotent_hint),
        (Some(false), Some(false))
    );
    assert_eq!(
        create.description.as_deref(),
        Some("Stripe Post   Identity Verification Sessions")
    );
    let schema = Value::Object((*list.input_schema).clone());
    assert_eq!(schema["type"], "object");
    assert_eq!(schema["properties"]["limit"]["type"], "integer");
    assert_eq!(
        schema["properties"]["expand"],
        json!({"type": "array", "items": {"type": "string"}, "description": "Specifies which fields in the response should be expanded."})
    );
    assert!(schema["properties"]["created"]["anyOf"].is_array());
    assert!(
        schema["properties"].get("body").is_none(),
        "a GET takes no body"
    );
    let schema = Value::Object((*tools[2].input_schema).clone());
    assert_eq!(schema["required"], json!(["session"]));
    // The create tool's opaque body is announced with Stripe's real parameters (the shipped
    // OpenAPI description), as arguments of their own; `body` stays, optional.
    let schema = Value::Object((*create.input_schema).clone());
    assert_eq!(schema["properties"]["body"]["type"], "object");
    assert!(schema.get("required").is_none(), "{schema}");
    let properties = schema["properties"].as_object().unwrap();
    for name in [
        "type",
        "metadata",
        "options",
        "return_url",
        "client_reference_id",
    ] {
        assert!(properties.contains_key(name), "{name} missing: {schema}");
    }
    assert_eq!(
        schema["properties"]["type"]["enum"],
        json!(["document", "id_number"])
    );
    assert!(
        schema["properties"]["options"]["properties"]["document"]["anyOf"].is_array(),
        "{schema}"
    );
}

/// A call with the body's fields as arguments of their own reaches Stripe as the form body
/// the old `body: {...}` call sent; `tools/list` of the seed stays small.
/// A description attached in the gateway config (YAML, by namespace glob) is the schema source
/// for the adapters it names, and `stripe: false` turns Stripe's off: the seed's create tool is
/// then described, and its REST body checked, by the attached file alone; with neither, its
/// body is the file's opaque object again.
#[tokio::test]
async fn an_attached_description_replaces_stripes_and_off_means_opaque() {
    use capgate_model::config::SchemaSource;
    let seed =
        std::fs::read_to_string(common::root().join("specs/identity-sessions.yaml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let description = dir.path().join("widgets.yaml");
    std::fs::write(
        &description,
        "openapi: 3.0.0\npaths:\n  /v1/identity/verification_sessions:\n    post:\n      requestBody:\n        content:\n          application/x-www-form-urlencoded:\n            schema:\n              type: object\n              additionalProperties: false\n              properties:\n                colour:\n                  type: string\n                  enum: [red, blue]\n                  description: The session's colour. Only two exist.\n",
    )
    .unwrap();
    let create = "stripe-post-identity-verification-sessions";
    let tool_schema = |tools: Vec<Tool>| {
        let tool = tools.into_iter().find(|t| t.name == create).unwrap();
        Value::Object(tool.input_schema.as_ref().clone())
    };

    let attached = description.clone();
    let h = Harness::with_specs(&[("identity-sessions.yaml", &seed)], move |c| {
        c.schemas.stripe = false;
        c.schemas.sources = vec![SchemaSource {
            namespace: "identity-*".into(),
            file: attached,
        }];
    })
    .await;
    let schema = tool_schema(
        legacy_client(&mcp_url(&h).await)
            .await
            .list_all_tools()
            .await
            .unwrap(),
    );
    assert_eq!(
        schema["properties"]["colour"]["enum"],
        json!(["red", "blue"]),
        "{schema}"
    );
    assert!(schema["properties"].get("type").is_none(), "{schema}");
    let sessions = h.sessions().await;
    for (form, code, param) in [
        (&[("colour", "green")][..], "parameter_invalid", "colour"),
        (&[("type", "document")][..], "parameter_unknown", "type"),
    ] {
        let response = h.http.post(&sessions).form(form).send().await.unwrap();
        assert_eq!(response.status(), 400, "{form:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            (
                body["error"]["code"].as_str(),
                body["error"]["param"].as_str()
            ),
            (Some(code), Some(param)),
            "{body}"
        );
    }
    assert!(h.sim.requests().is_empty(), "a refused body was sent");
    h.gateway.shutdown().await;

    let h = Harness::with_specs(&[("identity-sessions.yaml", &seed)], |c| {
        c.schemas.stripe = false;
    })
    .await;
    let schema = tool_schema(
        legacy_client(&mcp_url(&h).await)
            .await
            .list_all_tools()
            .await
            .unwrap(),
    );
    let properties: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
    assert!(properties.contains(&&"body".to_owned()), "{schema}");
    assert!(schema["properties"].get("type").is_none(), "{schema}");
}

#[tokio::test]
async fn flattened_arguments_reach_the_upstream_as_the_form_body() {
    let h = Harness::seed().await;
    let url = mcp_url(&h).await;
    for client in [legacy_client(&url).await, modern_client(&url).await] {
        let listed = client.list_all_tools().await.unwrap();
        let size = serde_json::to_vec(&listed).unwrap().len();
        assert!(size < 64 * 1024, "tools/list is {size} bytes");
        let before = h.sim.requests().len();
        let flat = call(
            &client,
            "stripe-post-identity-verification-sessions",
            json!({"type": "document", "metadata": {"team": "kyc"}, "options": {"document": {"require_matching_selfie": true}}}),
        )
        .await;
        assert_eq!(flat.is_error, Some(false), "{flat:?}");
        let nested = call(
            &client,
            "stripe-post-identity-verification-sessions",
            json!({"body": {"type": "document", "metadata": {"team": "kyc"}, "options": {"document": {"require_matching_selfie": true}}}}),
        )
        .await;
        assert_eq!(nested.is_error, Some(false), "{nested:?}");
        let sent: Vec<String> = h.sim.requests()[before..]
            .iter()
            .map(|r| r.body.clone())
            .collect();
        assert_eq!(sent.len(), 2);
        assert_eq!(
            sent[0], sent[1],
            "flattened and nested calls send the same form"
        );
        assert!(
            sent[0].contains("type=document")
                && sent[0].contains("metadata[team]=kyc")
                && sent[0].contains("options[document][require_matching_selfie]=true"),
            "{}",
            sent[0]
        );
        // An argument that is neither an input nor a body field is still refused.
        let wrong = call(
            &client,
            "stripe-post-identity-verification-sessions",
            json!({"type": "document", "colour": "red"}),
        )
        .await;
        assert_eq!(wrong.is_error, Some(true));
        // A body field outside its enum is refused before the upstream, naming it.
        let before = h.sim.requests().len();
        let bad = call(
            &client,
            "stripe-post-identity-verification-sessions",
            json!({"type": "selfie"}),
        )
        .await;
        assert_eq!(bad.is_error, Some(true));
        assert_eq!(
            bad.structured_content.as_ref().unwrap()["error"]["param"],
            "type",
            "{bad:?}"
        );
        assert_eq!(h.sim.requests().len(), before);
    }
}

#[tokio::test]
async fn both_eras_list_the_seeds_six_tools() {
    let h = Harness::seed().await;
    let url = mcp_url(&h).await;
    let legacy = legacy_client(&url).await;
    let info = legacy.peer_info().expect("server info");
    let server = info.server_info.as_ref().expect("server info");
    assert_eq!(
        server.name, "identity-sessions-mcp",
        "the adapter's namespace"
    );
    assert_eq!(
        server.title.as_deref(),
        Some("Stripe Identity API — Sessions")
    );
    assert_eq!(server.version, "2026-05-19", "the file's `info.modified`");
    assert!(
        info.instructions
            .as_deref()
            .unwrap()
            .starts_with("MCP adapter for Stripe Identity API")
    );
    check_seed_tools(&legacy.list_all_tools().await.unwrap());
    legacy.cancel().await.unwrap();

    let modern = modern_client(&url).await;
    check_seed_tools(&modern.list_all_tools().await.unwrap());
    modern.cancel().await.unwrap();

    // The only MCP adapter on its port is also at /mcp.
    let default = legacy_client(&format!("{}/mcp", h.base(9090).await)).await;
    assert_eq!(default.list_all_tools().await.unwrap().len(), 6);
    default.cancel().await.unwrap();
}

/// Every property of the derived schemas is a parameter Stripe's API really takes, with a
/// compatible type; `body` stands for the form body and its properties are the request body's.
#[tokio::test]
async fn seed_schemas_match_stripes_openapi() {
    let h = Harness::seed().await;
    let client = legacy_client(&mcp_url(&h).await).await;
    let tools = client.list_all_tools().await.unwrap();
    let openapi: Value = serde_json::from_str(
        &std::fs::read_to_string(common::shared().join("stripe/identity-openapi.json")).unwrap(),
    )
    .unwrap();
    let operations = [
        ("get", "/v1/identity/verification_sessions"),
        ("post", "/v1/identity/verification_sessions"),
        ("get", "/v1/identity/verification_sessions/{session}"),
        ("post", "/v1/identity/verification_sessions/{session}"),
        (
            "post",
            "/v1/identity/verification_sessions/{session}/cancel",
        ),
        (
            "post",
            "/v1/identity/verification_sessions/{session}/redact",
        ),
    ];
    for (tool, (method, path)) in tools.iter().zip(operations) {
        let op = &openapi["paths"][path][method];
        let params: Vec<&Value> = op["parameters"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        let body = &op["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"];
        let schema = Value::Object((*tool.input_schema).clone());
        let required: BTreeSet<&str> = schema["required"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap()).collect())
            .unwrap_or_default();
        for (name, property) in schema["properties"].as_object().unwrap() {
            if name == "body" {
                assert!(
                    body.is_object(),
                    "{}: `body` on an operation without a request body",
                    tool.name
                );
                assert_eq!(property["type"], "object");
                continue;
            }
            // A body field announced as an argument of its own: Stripe's own schema for it.
            if let Some(field) = body["properties"].get(name) {
                assert_eq!(
                    property.get("type"),
                    field.get("type"),
                    "{}: {name}",
                    tool.name
                );
                assert_eq!(
                    property.get("enum"),
                    field.get("enum"),
                    "{}: {name}",
                    tool.name
                );
                continue;
            }
            let param = params
                .iter()
                .find(|p| p["name"] == name.as_str())
                .unwrap_or_else(|| {
                    panic!(
                        "{}: `{name}` is not a parameter of {method} {path}",
                        tool.name
                    )
                });
            let real = &param["schema"];
            let declared_types: BTreeSet<String> = match real.get("anyOf") {
                Some(alternatives) => alternatives
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a["type"].as_str().unwrap().to_owned())
                    .collect(),
                None => BTreeSet::from([real["type"].as_str().unwrap().to_owned()]),
            };
            let ours: BTreeSet<String> = match property.get("anyOf") {
                Some(alternatives) => alternatives
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a["type"].as_str().unwrap().to_owned())
                    .collect(),
                None => BTreeSet::from([property["type"].as_str().unwrap().to_owned()]),
            };
            assert_eq!(ours, declared_types, "{}: type of `{name}`", tool.name);
            assert_eq!(
                required.contains(name.as_str()),
                param["required"] == true,
                "{}: required of `{name}`",
                tool.name
            );
        }
        // Every path and query parameter of the API is reachable, except the Connect-era
        // filters the generated file does not declare.
        for param in &params {
            let name = param["name"].as_str().unwrap();
            let skipped = [
                "client_reference_id",
                "related_customer",
                "related_customer_account",
            ];
            assert!(
                schema["properties"].get(name).is_some() || skipped.contains(&name),
                "{}: `{name}` is missing",
                tool.name
            );
        }
    }
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn every_seed_tool_calls_through_to_the_stand_in() {
    let h = Harness::seed().await;
    let client = legacy_client(&mcp_url(&h).await).await;

    let created = call(&client, SEED_TOOLS[1], json!({"body": {"type": "document", "metadata": {"order": "6735"}, "options": {"document": {"allowed_types": ["passport"]}}}})).await;
    assert_eq!(created.is_error, Some(false));
    let session = created
        .structured_content
        .clone()
        .expect("structured content");
    assert_eq!(
        serde_json::from_str::<Value>(&text_of(&created)).unwrap(),
        session,
        "the text copy is the same JSON"
    );
    let id = session["id"].as_str().unwrap().to_owned();
    let r = h.sim.requests().pop().unwrap();
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/v1/identity/verification_sessions")
    );
    assert_eq!(
        r.body,
        "type=document&metadata[order]=6735&options[document][allowed_types][0]=passport"
    );
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert!(
        r.header("idempotency-key").is_some(),
        "POSTs carry an idempotency key"
    );

    let listed = call(
        &client,
        SEED_TOOLS[0],
        json!({"limit": 1, "expand": ["data.verified_outputs"], "created": {"gte": 1}}),
    )
    .await;
    assert_eq!(
        listed.structured_content.as_ref().unwrap()["data"][0]["id"],
        id.as_str()
    );
    let r = h.sim.requests().pop().unwrap();
    assert_eq!(
        r.query.as_deref(),
        Some("created[gte]=1&expand[0]=data.verified_outputs&limit=1")
    );

    let got = call(&client, SEED_TOOLS[2], json!({"session": id})).await;
    assert_eq!(
        got.structured_content.as_ref().unwrap()["status"],
        "requires_input"
    );

    let updated = call(
        &client,
        SEED_TOOLS[3],
        json!({"session": id, "body": {"metadata": {"step": "2"}}}),
    )
    .await;
    assert_eq!(
        updated.structured_content.as_ref().unwrap()["metadata"],
        json!({"order": "6735", "step": "2"})
    );

    let canceled = call(&client, SEED_TOOLS[4], json!({"session": id})).await;
    assert_eq!(
        canceled.structured_content.as_ref().unwrap()["status"],
        "canceled"
    );
    assert_eq!(
        h.sim.requests().pop().unwrap().path,
        format!("/v1/identity/verification_sessions/{id}/cancel")
    );

    let redacted = call(&client, SEED_TOOLS[5], json!({"session": id})).await;
    assert_eq!(
        redacted.structured_content.as_ref().unwrap()["redaction"]["status"],
        "processing"
    );
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn errors_are_tool_results_and_unknown_tools_are_protocol_errors() {
    let h = Harness::seed().await;
    for client in [
        legacy_client(&mcp_url(&h).await).await,
        modern_client(&mcp_url(&h).await).await,
    ] {
        let missing = call(&client, SEED_TOOLS[2], json!({"session": "vs_nope"})).await;
        assert_eq!(missing.is_error, Some(true));
        let body = missing.structured_content.unwrap();
        assert_eq!(body["error"]["code"], "resource_missing");
        assert_eq!(body["status"], 404);

        let before = h.sim.requests().len();
        let bad = call(&client, SEED_TOOLS[0], json!({"limit": "ten"})).await;
        assert_eq!(bad.is_error, Some(true));
        let text = text_of(&bad);
        assert!(
            text.contains("\"limit\"") && text.contains("expected an integer"),
            "{text}"
        );
        let bad = call(&client, SEED_TOOLS[2], json!({})).await;
        assert!(
            text_of(&bad).contains("missing required argument \"session\""),
            "{}",
            text_of(&bad)
        );
        let bad = call(
            &client,
            SEED_TOOLS[2],
            json!({"session": "vs_1", "colour": "blue"}),
        )
        .await;
        assert!(
            text_of(&bad).contains("unknown argument \"colour\""),
            "{}",
            text_of(&bad)
        );
        assert_eq!(
            h.sim.requests().len(),
            before,
            "bad arguments never reach the upstream"
        );

        let unknown = client
            .call_tool(CallToolRequestParams::new("no-such-tool").with_arguments(Map::new()))
            .await
            .unwrap_err();
        let message = unknown.to_string();
        assert!(
            message.contains("-32602") || message.contains("unknown tool"),
            "{message}"
        );
        client.cancel().await.unwrap();
    }
}

/// The stand-in's next answer takes 3 s.
async fn slow_down_next_upstream_call(h: &Harness) {
    h.http
        .post(format!("{}/_sim/faults", h.sim.base_url()))
        .json(&json!({"status": null, "delay_ms": 3000, "count": 1}))
        .send()
        .await
        .unwrap();
}

/// Waits until the stand-in saw a request abandoned, well before its 3 s delay ended.
async fn wait_until_abandoned(h: &Harness, started: std::time::Instant) {
    while h.sim.abandoned() == 0 {
        assert!(
            started.elapsed() < Duration::from_millis(2500),
            "the upstream request was not aborted before its delay ended"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_cancelled_call_aborts_its_upstream_request() {
    let h = Harness::seed().await;
    let client = legacy_client(&mcp_url(&h).await).await;
    slow_down_next_upstream_call(&h).await;
    let request = rmcp::model::ClientRequest::CallToolRequest(rmcp::model::CallToolRequest::new(
        CallToolRequestParams::new(SEED_TOOLS[0].to_owned()).with_arguments(Map::new()),
    ));
    let handle = client
        .send_cancellable_request(request, rmcp::service::PeerRequestOptions::no_options())
        .await
        .unwrap();
    // Wait until the upstream request is in flight, then cancel.
    let started = std::time::Instant::now();
    while h.sim.requests().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the call never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handle
        .cancel(Some("the user changed their mind".into()))
        .await
        .unwrap();
    wait_until_abandoned(&h, started).await;
    assert_eq!(h.sim.abandoned(), 1);
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn caller_tokens_are_never_forwarded_upstream() {
    let h = Harness::seed().await;
    let config = StreamableHttpClientTransportConfig::with_uri(mcp_url(&h).await)
        .auth_header("caller-secret-token");
    let client = ClientConfig::default()
        .serve(StreamableHttpClientTransport::from_config(config))
        .await
        .unwrap();
    call(&client, SEED_TOOLS[0], json!({})).await;
    let r = h.sim.requests().pop().unwrap();
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert!(
        r.headers
            .iter()
            .all(|(_, v)| !v.contains("caller-secret-token"))
    );
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn origins_hosts_and_sizes_are_checked() {
    let h = Harness::seed().await;
    let url = mcp_url(&h).await;
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let post = |origin: Option<&str>, host: Option<&str>, body: String| {
        let mut request = h
            .http
            .post(&url)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body(body);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        if let Some(host) = host {
            request = request.header("host", host);
        }
        request.send()
    };
    assert_eq!(
        post(None, None, initialize.to_string())
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        post(Some("http://localhost:3000"), None, initialize.to_string())
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        post(Some("https://evil.example"), None, initialize.to_string())
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        post(None, Some("evil.example"), initialize.to_string())
            .await
            .unwrap()
            .status(),
        403
    );
    let huge = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"padding": "x".repeat(2 * 1024 * 1024)}});
    assert_eq!(
        post(None, None, huge.to_string()).await.unwrap().status(),
        413
    );
}

#[tokio::test]
async fn a_load_balancer_host_can_be_allowed() {
    let seed =
        std::fs::read_to_string(common::root().join("specs/identity-sessions.yaml")).unwrap();
    let h = Harness::with_specs(&[("s.yaml", &seed)], |c| {
        c.mcp.allowed_hosts = vec!["gateway.example.com".into()];
        c.mcp.trust_forwarded_host = true;
    })
    .await;
    let url = mcp_url(&h).await;
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let send = |host: &'static str, forwarded: Option<&'static str>| {
        let mut request = h
            .http
            .post(&url)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .header("host", host)
            .body(initialize.to_string());
        if let Some(forwarded) = forwarded {
            request = request.header("x-forwarded-host", forwarded);
        }
        request.send()
    };
    assert_eq!(
        send("gateway.example.com:443", None)
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        send("10.0.0.7:9090", Some("gateway.example.com"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(send("10.0.0.7:9090", None).await.unwrap().status(), 403);
    assert_eq!(
        send("127.0.0.1", Some("evil.example"))
            .await
            .unwrap()
            .status(),
        403
    );
}

#[tokio::test]
async fn each_corpus_adapter_lists_only_its_own_tools() {
    let h = Harness::with_dir(&common::corpus()).await;
    let base = h.base(9090).await;
    let snapshot = h.gateway.snapshot();
    let listener = snapshot
        .listeners
        .iter()
        .find(|(k, _)| k.port == 9090)
        .unwrap()
        .1;
    assert_eq!(listener.mcp.len(), 322);
    for namespace in [
        "identity-sessions-mcp",
        "accounts-account-mcp",
        "accounts-account-2-mcp",
        "invoice-delete-mcp",
    ] {
        let client = legacy_client(&format!("{base}/mcp/{namespace}")).await;
        let tools: Vec<String> = client
            .list_all_tools()
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.name.to_string())
            .collect();
        let expected: Vec<String> = listener.mcp[namespace]
            .tools
            .iter()
            .map(|t| t.name.clone())
            .collect();
        assert_eq!(tools, expected, "{namespace}");
        client.cancel().await.unwrap();
    }
    // With several adapters, /mcp alone is ambiguous and says so.
    let response = h
        .http
        .post(format!("{base}/mcp"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert!(response.text().await.unwrap().contains("/mcp/<namespace>"));
}

/// A plain stateless `tools/call` is answered by capgate's direct path, everything else by
/// rmcp; both must give the same answer, byte for byte. Two gateways (direct path on and off),
/// each with its own empty stand-in, get the same requests.
#[tokio::test]
async fn the_direct_tool_call_path_answers_as_rmcp_does() {
    let direct = Harness::seed().await;
    let seed =
        std::fs::read_to_string(common::root().join("specs/identity-sessions.yaml")).unwrap();
    let via_rmcp = Harness::with_specs(&[("identity-sessions.yaml", &seed)], |c| {
        c.mcp.direct_tool_calls = false
    })
    .await;
    let meta = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"}
    });
    let plain = |id: Value, name: &str, arguments: Option<Value>| {
        let mut params = json!({"name": name, "_meta": meta.clone()});
        if let Some(arguments) = arguments {
            params["arguments"] = arguments;
        }
        (
            name.to_owned(),
            json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params}),
        )
    };
    // Answered directly: success, upstream error, bad arguments, no arguments, a string id.
    let direct_ones = [
        plain(json!(1), SEED_TOOLS[0], Some(json!({"limit": 2}))),
        plain(json!(2), SEED_TOOLS[2], Some(json!({"session": "vs_nope"}))),
        plain(json!(3), SEED_TOOLS[0], Some(json!({"limit": "ten"}))),
        plain(json!("four"), SEED_TOOLS[0], None),
        plain(json!(5), SEED_TOOLS[2], Some(json!({"sessionx": 1}))),
    ];
    // Left to rmcp: an unknown tool, a progress token, a `_meta` version contradicting the header.
    let mut progress = plain(json!(6), SEED_TOOLS[0], Some(json!({})));
    progress.1["params"]["_meta"]["progressToken"] = json!("p");
    let mut legacy = plain(json!(7), SEED_TOOLS[0], Some(json!({})));
    legacy.1["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = json!("2025-11-25");
    let rmcp_ones = [plain(json!(8), "no-such-tool", None), progress, legacy];
    // And a malformed `Host` (rmcp refuses it before anything else).
    let bad_host = plain(json!(9), SEED_TOOLS[0], Some(json!({})));
    let cases = direct_ones
        .iter()
        .chain(&rmcp_ones)
        .map(|(name, body)| (name, body, None))
        .chain([(&bad_host.0, &bad_host.1, Some("[::1]:1:2"))]);
    let cases: Vec<_> = cases.collect();

    let mut answers = Vec::new();
    for h in [&direct, &via_rmcp] {
        let url = mcp_url(h).await;
        let mut mine = Vec::new();
        for (name, body, host) in &cases {
            let mut request = h.http.post(&url);
            if let Some(host) = host {
                request = request.header("host", *host);
            }
            let response = request
                .header("accept", "application/json, text/event-stream")
                .header("content-type", "application/json")
                .header("mcp-protocol-version", "2026-07-28")
                .header("mcp-method", "tools/call")
                .header("mcp-name", name.as_str())
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            let status = response.status();
            let content_type = response.headers().get("content-type").cloned();
            mine.push((status, content_type, response.text().await.unwrap()));
        }
        answers.push(mine);
    }
    for (i, (a, b)) in answers[0].iter().zip(&answers[1]).enumerate() {
        assert_eq!(a, b, "request {i} is answered differently by the two paths");
    }
    let (status, _, body) = &answers[0][1];
    assert_eq!(*status, 200);
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["result"]["structuredContent"]["status"], 404, "{body}");
    assert_eq!(body["result"]["isError"], true);

    let count = |h: &Harness, path: &str| {
        let metrics = h.gateway.metrics().render();
        let line = format!("capgate_mcp_tool_calls_total{{path=\"{path}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .map_or(0, |n| n.parse::<u64>().unwrap())
    };
    assert_eq!(count(&direct, "direct"), direct_ones.len() as u64);
    // Only the call with a progress token reaches a tool through rmcp: it refuses the unknown
    // tool and the contradicting version before any call.
    assert_eq!(answers[0][7].0, 400, "{}", answers[0][7].2);
    assert_eq!(answers[0][8].0, 400, "{}", answers[0][8].2);
    assert_eq!(count(&direct, "rmcp"), 1);
    assert_eq!(count(&via_rmcp, "direct"), 0);
    assert_eq!(count(&via_rmcp, "rmcp"), direct_ones.len() as u64 + 1);

    // A progress token gets its notifications, streamed by rmcp.
    let (status, content_type, stream) = &answers[0][6];
    assert_eq!(*status, 200);
    assert_eq!(content_type.as_ref().unwrap(), "text/event-stream");
    assert_eq!(
        stream.matches("notifications/progress").count(),
        3,
        "{stream}"
    );

    // rmcp's own client always sends a progress token, so its calls take rmcp's path.
    let client = modern_client(&mcp_url(&direct).await).await;
    let listed = call(&client, SEED_TOOLS[0], json!({"limit": 1})).await;
    assert_eq!(listed.is_error, Some(false));
    assert_eq!(count(&direct, "rmcp"), 2);
    client.cancel().await.unwrap();
}

/// A client that hangs up on a direct tool call aborts its upstream request too.
#[tokio::test]
async fn a_dropped_direct_call_aborts_its_upstream_request() {
    let h = Harness::seed().await;
    slow_down_next_upstream_call(&h).await;
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": SEED_TOOLS[0], "arguments": {},
        "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}
        }
    }});
    let started = std::time::Instant::now();
    let gave_up = h
        .http
        .post(mcp_url(&h).await)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", SEED_TOOLS[0])
        .body(body.to_string())
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(gave_up.is_err(), "the upstream was told to take 3 s");
    wait_until_abandoned(&h, started).await;
    let metrics = h.gateway.metrics().render();
    assert!(
        metrics.contains("capgate_mcp_tool_calls_total{path=\"direct\"} 1"),
        "{metrics}"
    );
}

/// Opens a legacy (2025-11-25) session with `client` at `url`; its id.
pub async fn open_session(client: &reqwest::Client, url: &str) -> String {
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let response = client
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .body(initialize.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned()
}

/// Whether the legacy session `id` is still open (its `notifications/initialized` accepted).
pub async fn session_open(client: &reqwest::Client, url: &str, id: &str) -> bool {
    let response = client
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-session-id", id)
        .header("mcp-protocol-version", "2025-11-25")
        .body(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string())
        .send()
        .await
        .unwrap();
    match response.status().as_u16() {
        202 => true,
        404 => false,
        other => panic!("unexpected status {other} for a session"),
    }
}

#[tokio::test]
async fn past_the_listeners_session_cap_the_longest_idle_session_makes_room() {
    let seed =
        std::fs::read_to_string(common::root().join("specs/identity-sessions.yaml")).unwrap();
    let h = Harness::with_specs(&[("s.yaml", &seed)], |c| c.mcp.max_sessions = 2).await;
    let url = mcp_url(&h).await;
    let first = open_session(&h.http, &url).await;
    let second = open_session(&h.http, &url).await;
    // The first is used after the second: the second is now the longest idle.
    assert!(session_open(&h.http, &url, &first).await);
    // A newcomer is never refused; the longest-idle session makes room.
    let third = open_session(&h.http, &url).await;
    assert!(
        !session_open(&h.http, &url, &second).await,
        "the longest-idle session stays"
    );
    assert!(session_open(&h.http, &url, &first).await);
    assert!(session_open(&h.http, &url, &third).await);
    // Closing one makes room without evicting anyone.
    let closed = h
        .http
        .delete(&url)
        .header("mcp-session-id", &first)
        .send()
        .await
        .unwrap();
    assert_eq!(closed.status(), 204, "a clean termination for the SDKs");
    let fourth = open_session(&h.http, &url).await;
    assert!(session_open(&h.http, &url, &third).await);
    assert!(session_open(&h.http, &url, &fourth).await);
}

/// A gateway on the seed with `from` replaced by `to` (once), which must be in it.
async fn seed_edited(from: &str, to: &str) -> Harness {
    let seed =
        std::fs::read_to_string(common::root().join("specs/identity-sessions.yaml")).unwrap();
    assert!(seed.contains(from), "the seed changed shape");
    let seed = seed.replacen(from, to, 1);
    Harness::with_specs(&[("identity-sessions.yaml", &seed)], |_| {}).await
}

/// As the format's reference engine answers: a tool whose mapped output is an array returns the
/// array itself as its text (no `structuredContent`, which must be an object); annotations say
/// only what the file says, and a tool without hints or label has none.
#[tokio::test]
async fn an_array_output_is_the_text_itself_and_annotations_are_only_the_files() {
    let h = seed_edited(
        "        body: tools.body\n      outputParameters:\n      - type: object\n        mapping: $.\n    - name: stripe-post-identity-verification-sessions\n      description: Stripe Post   Identity Verification Sessions\n      hints:\n        readOnly: false\n        destructive: false\n        idempotent: false\n",
        "        body: tools.body\n      outputParameters:\n      - type: array\n        mapping: $.data\n    - name: stripe-post-identity-verification-sessions\n      description: Stripe Post   Identity Verification Sessions\n",
    )
    .await;
    common::create_session_directly(&h.sim).await;
    let url = mcp_url(&h).await;
    for client in [legacy_client(&url).await, modern_client(&url).await] {
        let tools = client.list_all_tools().await.unwrap();
        let create = tools
            .iter()
            .find(|t| t.name == "stripe-post-identity-verification-sessions")
            .unwrap();
        assert!(create.annotations.is_none(), "{:?}", create.annotations);
        let result = call(
            &client,
            "stripe-get-identity-verification-sessions",
            json!({}),
        )
        .await;
        assert_eq!(result.is_error, Some(false));
        assert!(result.structured_content.is_none(), "{result:?}");
        let listed: Value = serde_json::from_str(&text_of(&result)).unwrap();
        let sessions = listed.as_array().expect("the bare array");
        assert!(!sessions.is_empty());
        assert_eq!(sessions[0]["object"], "identity.verification_session");
    }
}

/// A scalar output is the value itself as the text (its JSON, which the reference engine's
/// clients parse), with no `structuredContent`; a tool's `label` is its title, in its annotations
/// too, next to only the hints the file gives.
#[tokio::test]
async fn a_scalar_output_is_the_text_itself_and_a_label_is_the_title() {
    let h = seed_edited(
        "        body: tools.body\n      outputParameters:\n      - type: object\n        mapping: $.\n    - name: stripe-post-identity-verification-sessions-2\n      description: Stripe Post   Identity Verification Sessions Session\n      hints:\n        readOnly: false\n        destructive: false\n        idempotent: false\n",
        "        body: tools.body\n      outputParameters:\n      - type: string\n        mapping: $.status\n    - name: stripe-post-identity-verification-sessions-2\n      label: Update a verification session\n      description: Stripe Post   Identity Verification Sessions Session\n      hints:\n        idempotent: false\n",
    )
    .await;
    let session = common::create_session_directly(&h.sim).await;
    let url = mcp_url(&h).await;
    for client in [legacy_client(&url).await, modern_client(&url).await] {
        let tools = client.list_all_tools().await.unwrap();
        let update = tools
            .iter()
            .find(|t| t.name == "stripe-post-identity-verification-sessions-2")
            .unwrap();
        assert_eq!(
            update.title.as_deref(),
            Some("Update a verification session")
        );
        let annotations = update.annotations.as_ref().expect("a label and a hint");
        assert_eq!(
            annotations.title.as_deref(),
            Some("Update a verification session")
        );
        assert_eq!(annotations.idempotent_hint, Some(false));
        assert_eq!(annotations.read_only_hint, None, "not in the file");
        assert_eq!(annotations.destructive_hint, None, "not in the file");
        let result = call(
            &client,
            "stripe-get-identity-verification-sessions-2",
            json!({"session": session}),
        )
        .await;
        assert_eq!(result.is_error, Some(false), "{result:?}");
        assert!(result.structured_content.is_none(), "{result:?}");
        let value: Value = serde_json::from_str(&text_of(&result)).unwrap();
        assert_eq!(value, json!("requires_input"));
    }
}

/// A listener with one MCP adapter answers it at `/` too (the reference engine serves any
/// path); with two, `/` is a 404 that lists the endpoints.
#[tokio::test]
async fn the_only_adapter_of_a_listener_answers_at_the_root_too() {
    let seed =
        std::fs::read_to_string(common::root().join("specs/identity-sessions.yaml")).unwrap();
    let h = Harness::with_specs(&[("identity-sessions.yaml", &seed)], |_| {}).await;
    let root = format!("{}/", h.base(9090).await);
    let client = legacy_client(&root).await;
    assert_eq!(client.list_all_tools().await.unwrap().len(), 6);

    // A second adapter on the same port: only `/mcp/<namespace>` then.
    let twin = seed
        .replace("identity-sessions-mcp", "twin-mcp")
        .replace("port: 8080", "port: 8081");
    let h = Harness::with_specs(
        &[("identity-sessions.yaml", &seed), ("twin.yaml", &twin)],
        |_| {},
    )
    .await;
    let root = format!("{}/", h.base(9090).await);
    let response = h
        .http
        .post(&root)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .body(json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let text = response.text().await.unwrap();
    assert!(
        text.contains("identity-sessions-mcp") && text.contains("twin-mcp"),
        "{text}"
    );
}
