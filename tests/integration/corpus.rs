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
            capgate_model::snapshot::RestInputs::Declared(_) => Vec::new(),
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
