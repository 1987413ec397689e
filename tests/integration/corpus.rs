//! The 322 real Stripe capability files, all together.

use crate::common;

/// All 322 files served by one gateway: every file serves, the shared ports carry every
/// adapter, and every REST route that won its collisions reaches the upstream.
#[tokio::test]
async fn all_corpus_files_serve_together() {
    let h = crate::common::Harness::with_dir(&common::corpus()).await;
    let status = h.gateway.status();
    assert_eq!(status.len(), 322);
    for file in &status {
        assert_eq!(
            file.state,
            capgate::reload::FileState::Serving,
            "{}",
            file.path.display()
        );
    }
    let snapshot = h.gateway.snapshot();
    assert_eq!(
        snapshot.listeners.len(),
        2,
        "REST on 8080 and MCP on 9090, shared by all"
    );
    let rest = snapshot
        .listeners
        .iter()
        .find(|(k, _)| k.port == 8080)
        .unwrap()
        .1;
    let mcp = snapshot
        .listeners
        .iter()
        .find(|(k, _)| k.port == 9090)
        .unwrap()
        .1;
    assert_eq!(mcp.mcp.len(), 322, "one MCP endpoint per file");
    assert_eq!(mcp.mcp.values().map(|a| a.tools.len()).sum::<usize>(), 1600);
    // Every x.yaml has a near-twin x-2.yaml with the same routes: the first file serves them.
    let collisions: usize = status
        .iter()
        .flat_map(|f| &f.diagnostics)
        .filter(|d| d.code.as_str() == "route-collision")
        .map(|d| 1 + d.also_at.len())
        .sum();
    let routes = rest.rest.values();
    assert!(routes.len() > 300, "{}", routes.len());
    assert_eq!(
        routes.len() + collisions,
        1600,
        "every REST operation either serves or collided"
    );

    let base = h.base(8080).await;
    let mut expected = 0;
    for route in routes {
        let path: String = route
            .path
            .split('/')
            .map(|s| if s.starts_with('{') { "x1" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        // Required inputs other than path variables (a search's `query`, say) get a value too.
        let required: Vec<(String, serde_json::Value)> = match &route.inputs {
            capgate_model::snapshot::RestInputs::Implicit { specs, .. } => specs
                .iter()
                .filter(|s| {
                    s.required
                        && s.name != "body"
                        && !route.path.contains(&format!("{{{}}}", s.name))
                })
                .map(|s| (s.name.clone(), sample(&s.ty)))
                .collect(),
            capgate_model::snapshot::RestInputs::Declared { .. } => Vec::new(),
        };
        let mut request = h
            .http
            .request(route.method.clone(), format!("{base}{path}"));
        let mut values = serde_json::Map::new();
        // A field the upstream does not know, unless its schema is known (then it is checked:
        // an unknown field would be refused before the upstream, which is what this test
        // looks for).
        let checked = matches!(&route.operation.action,
            capgate_model::snapshot::Action::Call(call) if call.upstream.body_schema.is_some());
        if !checked {
            values.insert("probe".into(), serde_json::json!("1"));
        }
        values.extend(required);
        // What the operation's description requires of the body, as it would be sent.
        if let capgate_model::snapshot::Action::Call(call) = &route.operation.action
            && let Some(schema) = &call.upstream.body_schema
            && let serde_json::Value::Object(needed) =
                sample_of(&serde_json::Value::Object(schema.as_ref().clone()))
        {
            values.extend(needed);
        }
        if route.method == http::Method::POST {
            request = request.json(&values);
        } else {
            values.remove("probe");
            let query = capgate_model::form::encode(&values);
            request = h
                .http
                .request(route.method.clone(), format!("{base}{path}?{query}"));
        }
        let response = request.send().await.unwrap();
        let from_upstream = response
            .headers()
            .get("request-id")
            .is_some_and(|v| v.to_str().unwrap().starts_with("req_"));
        assert!(
            from_upstream,
            "{} {} answered {} without reaching the upstream",
            route.method,
            route.path,
            response.status()
        );
        expected += 1;
    }
    assert_eq!(h.sim.requests().len(), expected);
}

/// A value that `schema` (an OpenAPI schema as capgate keeps it) accepts, with every
/// property it requires, at every depth.
fn sample_of(schema: &serde_json::Value) -> serde_json::Value {
    use serde_json::{Value, json};
    if let Some(Value::Array(alternatives)) = schema.get("anyOf") {
        return alternatives.first().map(sample_of).unwrap_or(json!("x"));
    }
    if let Some(Value::Array(allowed)) = schema.get("enum")
        && let Some(first) = allowed.iter().find(|v| v.as_str() != Some(""))
    {
        return first.clone();
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let mut object = serde_json::Map::new();
            for name in schema["required"].as_array().into_iter().flatten() {
                let name = name.as_str().unwrap();
                object.insert(name.to_owned(), sample_of(&schema["properties"][name]));
            }
            Value::Object(object)
        }
        Some("array") => json!([sample_of(&schema["items"])]),
        Some("integer") | Some("number") => json!(1),
        Some("boolean") => json!(true),
        _ => json!("x"),
    }
}

/// A value of the given type, to fill a required input.
fn sample(ty: &capgate_model::snapshot::ParamType) -> serde_json::Value {
    use capgate_model::snapshot::ParamType;
    match ty {
        ParamType::Integer | ParamType::Number | ParamType::RangeFilter => serde_json::json!(1),
        ParamType::Boolean => serde_json::json!(true),
        ParamType::Array => serde_json::json!(["x1"]),
        ParamType::Object => serde_json::json!({"type": "x1"}),
        ParamType::String | ParamType::Any => serde_json::json!("x1"),
    }
}

/// A file that leaves out query parameters of an operation (terminal's configuration list
/// declares neither `expand` nor `is_account_default`) gets them from Stripe's description:
/// the tool announces them with the description's schemas, a note says so, and both
/// surfaces send them to the upstream; an argument of the wrong type is still refused.
#[tokio::test]
async fn query_parameters_a_file_leaves_out_come_from_the_description() {
    use serde_json::json;
    let text = std::fs::read_to_string(common::corpus().join("terminal-terminal.yaml")).unwrap();
    let h = common::Harness::with_specs(&[("terminal-terminal.yaml", &text)], |_| {}).await;
    let status = h.gateway.status();
    // One note for the file says all that was taken from the description.
    let notes: Vec<_> = status[0]
        .diagnostics
        .iter()
        .filter(|d| d.code.as_str() == "schema-source" && d.line == 0)
        .collect();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0]
            .message
            .contains("6 tool(s) announce the operation's request schema")
            && notes[0]
                .message
                .contains("6 query parameter(s) of 5 operation(s)"),
        "{}",
        notes[0].message
    );

    let url = format!("{}/mcp/terminal-terminal-mcp", h.base(9090).await);
    let client = crate::mcp::modern_client(&url).await;
    let tools = client.list_all_tools().await.unwrap();
    let tool = tools
        .iter()
        .find(|t| t.name == "stripe-list-terminal-configurations")
        .unwrap();
    let properties = tool.input_schema["properties"].as_object().unwrap();
    assert_eq!(properties["is_account_default"]["type"], "boolean");
    assert_eq!(properties["expand"]["type"], "array");
    assert_eq!(properties["expand"]["items"]["type"], "string");
    assert!(
        properties["is_account_default"]["description"]
            .as_str()
            .unwrap()
            .contains("account"),
        "{properties:?}"
    );
    // What the file declares keeps its own announcement.
    assert_eq!(properties["limit"]["type"], "integer");

    // The stand-in serves Identity only: it answers Stripe's 404 for this path, which is
    // enough to see what was sent.
    let before = h.sim.requests().len();
    crate::mcp::call(
        &client,
        "stripe-list-terminal-configurations",
        json!({"is_account_default": true, "expand": ["data.tipping"], "limit": 3}),
    )
    .await;
    assert_eq!(h.sim.requests().len(), before + 1);
    let sent = h.sim.requests().pop().unwrap();
    assert_eq!(sent.path, "/v1/terminal/configurations");
    let query = sent.query.unwrap_or_default();
    for pair in [
        "is_account_default=true",
        "expand[0]=data.tipping",
        "limit=3",
    ] {
        assert!(
            query
                .split('&')
                .any(|p| p == pair || p == pair.replace('[', "%5B").replace(']', "%5D")),
            "{pair} not in {query}"
        );
    }
    let wrong = crate::mcp::call(
        &client,
        "stripe-list-terminal-configurations",
        json!({"is_account_default": "yes"}),
    )
    .await;
    assert_eq!(wrong.is_error, Some(true), "{wrong:?}");
    assert!(
        format!("{wrong:?}").contains("is_account_default"),
        "{wrong:?}"
    );
    assert_eq!(
        h.sim.requests().len(),
        before + 1,
        "refused before the upstream"
    );

    // REST: the route takes them too (before, `expand` was refused as an unknown parameter).
    let before = h.sim.requests().len();
    let response = h
        .http
        .get(format!(
            "{}/v1/v1/terminal/configurations?expand[]=data.tipping&is_account_default=false",
            h.base(8080).await
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404, "the stand-in's answer");
    let requests = h.sim.requests();
    assert_eq!(requests.len(), before + 1);
    let query = requests.last().unwrap().query.clone().unwrap_or_default();
    assert!(
        query.contains("is_account_default=false") && query.contains("data.tipping"),
        "{query}"
    );
}

/// The corpus's `/v1/Invoice Items` (a generator's title case where Stripe has
/// `/v1/invoiceitems`) is sent as the path its author meant, with a warning naming both;
/// before, Stripe got `/v1/Invoice%20Items/...` and answered 404.
#[tokio::test]
async fn a_title_cased_path_is_sent_as_the_descriptions() {
    let text = std::fs::read_to_string(common::corpus().join("invoice-delete.yaml")).unwrap();
    let h = common::Harness::with_specs(&[("invoice-delete.yaml", &text)], |_| {}).await;
    let status = h.gateway.status();
    let warning = status[0]
        .diagnostics
        .iter()
        .find(|d| d.code.as_str() == "name-mismatch" && d.message.contains("/v1/invoiceitems"))
        .unwrap_or_else(|| panic!("{:?}", status[0].diagnostics));
    assert!(
        warning.message.contains("`/v1/invoiceitems/{invoiceitem}`"),
        "{}",
        warning.message
    );
    assert!(
        !status[0]
            .diagnostics
            .iter()
            .any(|d| d.code.as_str() == "path-encoded"),
        "{:?}",
        status[0].diagnostics
    );
    let response = h
        .http
        .delete(format!("{}/v1/v1/invoice-items/ii_123", h.base(8080).await))
        .send()
        .await
        .unwrap();
    assert!(response.headers().contains_key("request-id"));
    let sent = h.sim.requests().pop().expect("the upstream was called");
    assert_eq!(sent.method, "DELETE");
    assert_eq!(sent.path, "/v1/invoiceitems/ii_123");
}

/// What an operation requires (its OpenAPI description says so) is asked for before anything
/// is sent: a PaymentIntent without `currency` is Stripe's 400 `parameter_missing`, from the
/// gateway; with it, the call goes on.
#[tokio::test]
async fn a_required_parameter_left_out_is_refused_naming_it() {
    let file = "payment-intents-post.yaml";
    let text = std::fs::read_to_string(common::corpus().join(file)).unwrap();
    let h = common::Harness::with_specs(&[(file, &text)], |_| {}).await;
    let url = format!("{}/v1/v1/payment-intents", h.base(8080).await);
    let response = h
        .http
        .post(&url)
        .form(&[("amount", "2000")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "parameter_missing", "{body}");
    assert_eq!(body["error"]["param"], "currency", "{body}");
    assert!(h.sim.requests().is_empty(), "a refused call reached Stripe");
    h.http
        .post(&url)
        .form(&[("amount", "2000"), ("currency", "usd")])
        .send()
        .await
        .unwrap();
    let sent = h.sim.requests().pop().expect("the complete call was sent");
    assert_eq!(sent.path, "/v1/payment_intents");

    // The file's tool for it announces the real parameters, not its opaque `body`.
    let url = format!("{}/mcp/payment-intents-post-mcp", h.base(9090).await);
    let client = crate::mcp::modern_client(&url).await;
    let tools = client.list_all_tools().await.unwrap();
    let create = tools
        .iter()
        .find(|t| t.name == "stripe-post-payment-intents")
        .expect("the create tool");
    let properties = create.input_schema["properties"].as_object().unwrap();
    for name in [
        "amount",
        "currency",
        "customer",
        "metadata",
        "payment_method_types",
    ] {
        assert!(properties.contains_key(name), "{name}: {properties:?}");
    }
    assert_eq!(properties["amount"]["type"], "integer");
    // What the operation requires is required of the (flattened) arguments, as announced.
    let required = create.input_schema["required"].as_array().unwrap();
    for name in ["amount", "currency"] {
        assert!(required.contains(&serde_json::json!(name)), "{required:?}");
    }
    let sent_before = h.sim.requests().len();
    let refused = crate::mcp::call(
        &client,
        "stripe-post-payment-intents",
        serde_json::json!({"amount": 5}),
    )
    .await;
    assert_eq!(refused.is_error, Some(true), "{refused:?}");
    assert!(
        format!("{refused:?}").contains("currency"),
        "the refusal names what is missing: {refused:?}"
    );
    assert_eq!(
        h.sim.requests().len(),
        sent_before,
        "a refused call was sent"
    );
}

/// An operation that declares its body as `in: body` parameters, and only some of them, takes
/// the description's others too: a tool's flattened argument and a REST form field of those
/// names reach Stripe in the form body (`tests/specs/ok/body-params-described.yaml`).
#[tokio::test]
async fn body_parameters_a_file_leaves_out_come_from_the_description() {
    let file = "body-params-described.yaml";
    let text = std::fs::read_to_string(common::root().join("tests/specs/ok").join(file)).unwrap();
    let h = common::Harness::with_specs(&[(file, &text)], |_| {}).await;
    let url = format!("{}/mcp/identity-mcp", h.base(9090).await);
    let client = crate::mcp::modern_client(&url).await;
    let tools = client.list_all_tools().await.unwrap();
    let properties = tools[0].input_schema["properties"].as_object().unwrap();
    assert!(properties.contains_key("metadata"), "{properties:?}");
    assert_eq!(
        properties["type"]["description"], "The kind of check, as this file says.",
        "the declared one keeps the file's words"
    );
    let called = crate::mcp::call(
        &client,
        "create-session",
        serde_json::json!({"type": "document", "metadata": {"team": "kyc"}}),
    )
    .await;
    // The file declares no credentials: the stand-in answers 401, having seen the form.
    assert_eq!(called.is_error, Some(true), "{called:?}");
    let sent = h.sim.requests().pop().expect("the call was sent");
    assert_eq!(sent.form()["metadata"]["team"], "kyc", "{}", sent.body);

    let response = h
        .http
        .post(format!("{}/v1/sessions", h.base(8080).await))
        .form(&[
            ("type", "document"),
            ("return_url", "https://example.com/back"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401, "{}", response.text().await.unwrap());
    let sent = h.sim.requests().pop().expect("the call was sent");
    assert_eq!(
        sent.form()["return_url"],
        "https://example.com/back",
        "{}",
        sent.body
    );
}
