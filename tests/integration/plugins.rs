//! Transform plugins (WebAssembly components) around the seed's operations, through REST and
//! MCP: the example plugins' effects, chains, misbehaving plugins, fail-open, hot reload.

use std::path::Path;
use std::time::{Duration, Instant};

use capgate_model::config::{FailurePolicy, TransformBinding};
use serde_json::{Value, json};

use crate::common::{self, Harness};
use crate::mcp::{call, legacy_client, mcp_url};

const RETRIEVE: &str = "identity-sessions.getidentityverificationsessionssession";
const CREATE: &str = "identity-sessions.postidentityverificationsessions";
const LIST: &str = "identity-sessions.getidentityverificationsessions";

fn binding(plugin: &str, operation: &str, config: Value) -> TransformBinding {
    TransformBinding {
        plugin: format!("{plugin}.wasm"),
        capabilities: vec!["identity-*".into()],
        operations: vec![operation.into()],
        config,
        on_error: FailurePolicy::FailClosed,
        timeout_ms: 200,
        memory_mib: 16,
        instances: Default::default(),
    }
}

/// A plugins folder holding copies of the named example plugins.
fn plugins_folder(plugins: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for plugin in plugins {
        std::fs::copy(
            common::plugin_wasm(plugin),
            dir.path().join(format!("{plugin}.wasm")),
        )
        .unwrap();
    }
    dir
}

/// The seed with `bindings`, the named plugins copied into a plugins folder.
async fn harness(
    plugins: &[&str],
    bindings: Vec<TransformBinding>,
) -> (Harness, tempfile::TempDir) {
    let seed =
        std::fs::read_to_string(common::root().join("specs/identity-sessions.yaml")).unwrap();
    harness_of(&seed, plugins, bindings).await
}

/// `spec` with `bindings`, the named plugins copied into a plugins folder.
async fn harness_of(
    spec: &str,
    plugins: &[&str],
    bindings: Vec<TransformBinding>,
) -> (Harness, tempfile::TempDir) {
    let dir = plugins_folder(plugins);
    let plugins_dir = dir.path().to_path_buf();
    let h = Harness::with_specs(&[("identity-sessions.yaml", spec)], move |c| {
        c.plugins.dir = Some(plugins_dir);
        c.plugins.bindings = bindings;
        c.plugins.max_concurrent_calls = 32;
        c.admin.address = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        c.reload.watch = true;
        c.reload.debounce = Duration::from_millis(50);
    })
    .await;
    (h, dir)
}

async fn verified_session(h: &Harness) -> String {
    let id = common::create_session_directly(&h.sim).await;
    let response = h
        .http
        .post(format!(
            "{}/_sim/verification_sessions/{id}/verified",
            h.sim.base_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    id
}

#[tokio::test]
async fn redact_pii_masks_personal_fields_through_rest_and_mcp() {
    let config =
        json!({"allow": ["verified_outputs.first_name"], "fields": ["client_reference_id"]});
    let (h, _dir) = harness(
        &["redact_pii"],
        vec![binding("redact_pii", RETRIEVE, config)],
    )
    .await;
    let id = verified_session(&h).await;

    let response = h
        .http
        .get(format!(
            "{}/{id}?expand[]=verified_outputs",
            h.sessions().await
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let redacted: usize = response.headers()["capgate-redacted"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(redacted > 3, "{redacted}");
    let session: Value = response.json().await.unwrap();
    let outputs = &session["verified_outputs"];
    assert_ne!(outputs["first_name"], "[redacted]", "allowed by the config");
    assert_eq!(outputs["last_name"], "[redacted]");
    assert_eq!(outputs["address"]["line1"], "[redacted]");
    assert_eq!(session["id"], id.as_str(), "other fields are untouched");

    // The same operation through MCP goes through the same plugin.
    let client = legacy_client(&mcp_url(&h).await).await;
    let result = call(
        &client,
        "stripe-get-identity-verification-sessions-2",
        json!({"session": id, "expand": ["verified_outputs"]}),
    )
    .await;
    let structured = result.structured_content.unwrap();
    assert_eq!(structured["verified_outputs"]["last_name"], "[redacted]");
    client.cancel().await.unwrap();

    // redact-pii declares it only handles responses: its request hook is never run.
    let metrics = h.gateway.metrics().render();
    let calls = |hook: &str| {
        metrics
            .lines()
            .filter(|l| {
                l.contains("plugin=\"redact_pii") && l.contains(&format!("hook=\"{hook}\""))
            })
            .count()
    };
    assert_eq!(calls("on_request"), 0, "{metrics}");
    assert_eq!(calls("on_response"), 1, "{metrics}");
}

/// A plugin host in this process, on a folder holding the named plugins.
async fn in_process(
    plugins: &[&str],
) -> (std::sync::Arc<capgate_plugin::Plugins>, tempfile::TempDir) {
    let dir = plugins_folder(plugins);
    let config = capgate_model::config::PluginsConfig {
        dir: Some(dir.path().to_path_buf()),
        cache_dir: None,
        ..capgate_model::config::PluginsConfig::default()
    };
    let host = std::sync::Arc::new(capgate_plugin::Plugins::new(&config).unwrap());
    let loader = host.clone();
    let loaded = tokio::task::spawn_blocking(move || loader.refresh())
        .await
        .unwrap();
    assert_eq!(loaded.len(), plugins.len(), "{loaded:?}");
    (host, dir)
}

fn transform(plugin: &str, timeout: Duration) -> capgate_model::snapshot::TransformRef {
    capgate_model::snapshot::TransformRef {
        plugin: format!("{plugin}.wasm"),
        config: "{}".into(),
        on_error: FailurePolicy::FailClosed,
        timeout,
        memory: 16 * 1024 * 1024,
        reuse: false,
    }
}

/// The upstream request of the list operation, with `headers`, as a hook is given it.
fn list_request(headers: http::HeaderMap) -> capgate_model::exchange::UpstreamRequest {
    capgate_model::exchange::UpstreamRequest {
        method: http::Method::GET,
        path: "/v1/identity/verification_sessions".into(),
        query: Vec::new(),
        headers,
        body: None,
        sealed: Default::default(),
    }
}

fn context(operation: &str) -> capgate_plugin::CallContext<'_> {
    capgate_plugin::CallContext {
        capability: "identity-sessions",
        operation,
        request_id: "req_in_process".into(),
    }
}

/// A plugin stuck in a loop gives its thread back every tick or two until its deadline stops
/// it: on a runtime with a single thread, another task keeps getting turns meanwhile.
#[tokio::test(flavor = "current_thread")]
async fn a_looping_plugin_gives_its_thread_back_until_its_deadline() {
    use capgate_plugin::Failure;

    let (plugins, _dir) = in_process(&["spin"]).await;
    let deadline = Duration::from_secs(1);
    let spinning = tokio::spawn(async move {
        let request = list_request(http::HeaderMap::new());
        let started = Instant::now();
        let spin = transform("spin", deadline);
        let plugin = plugins.get(&spin.plugin).expect("spin is loaded");
        let outcome = plugins
            .on_request(&plugin, &spin, &context(LIST), request)
            .await;
        (outcome, started.elapsed())
    });
    let (mut turns, mut longest, mut last) = (0, Duration::ZERO, Instant::now());
    while !spinning.is_finished() {
        tokio::task::yield_now().await;
        let now = Instant::now();
        longest = longest.max(now - last);
        last = now;
        turns += 1;
    }
    let (outcome, took) = spinning.await.unwrap();
    assert!(matches!(outcome, Err(Failure::Timeout)), "{outcome:?}");
    assert!(took >= deadline, "stopped after {took:?}");
    // It yields after each millisecond it runs; without yielding it would hold the thread for
    // its whole second.
    assert!(turns >= 10, "the other task ran {turns} times");
    assert!(
        longest < deadline / 4,
        "the plugin held the only thread for {longest:?}"
    );
}

/// redact-pii runs on 32 KiB of stack (`plugins/small-stack.rs`, to keep its memory, reset after
/// every call, at one page): it still masks a document as deep as its masker reads (128 levels),
/// and refuses a deeper one rather than let it through unmasked.
#[tokio::test]
async fn redact_pii_masks_the_deepest_documents_and_refuses_deeper_ones() {
    use capgate_model::exchange::UpstreamResponse;
    use capgate_plugin::ResponseOutcome;

    let (plugins, _dir) = in_process(&["redact_pii"]).await;
    let nested = |levels: usize| {
        let mut deep = json!("Jenny");
        for _ in 0..levels {
            deep = json!({ "a": deep });
        }
        json!({ "id": "vs_1", "verified_outputs": deep })
    };
    let transform = transform("redact_pii", Duration::from_millis(200));
    let context = context(RETRIEVE);
    let response = |body: Value| UpstreamResponse {
        status: http::StatusCode::OK,
        headers: http::HeaderMap::new(),
        body: serde_json::to_vec(&body).unwrap().into(),
        from_plugins: http::HeaderMap::new(),
    };

    // The document itself and `verified_outputs` are two of the 128 levels.
    let levels = 126;
    let plugin = plugins
        .get(&transform.plugin)
        .expect("redact-pii is loaded");
    let outcome = plugins
        .on_response(&plugin, &transform, &context, response(nested(levels)))
        .await;
    let Ok(ResponseOutcome::Forward(masked)) = outcome else {
        panic!("{outcome:?}");
    };
    let masked: Value = serde_json::from_slice(&masked.body).unwrap();
    let mut leaf = &masked["verified_outputs"];
    for _ in 0..levels {
        leaf = &leaf["a"];
    }
    assert_eq!(leaf, "[redacted]");

    let outcome = plugins
        .on_response(&plugin, &transform, &context, response(nested(levels + 8)))
        .await;
    let Ok(ResponseOutcome::Refused(refusal)) = outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(refusal.status, 502);
    assert_eq!(refusal.code, "response_unreadable");
}

#[tokio::test]
async fn require_metadata_refuses_and_stamps_defaults() {
    let config = json!({"required": ["order_id"], "defaults": {"source": "capgate"}});
    let (h, _dir) = harness(
        &["require_metadata"],
        vec![binding("require_metadata", CREATE, config)],
    )
    .await;
    let url = h.sessions().await;
    let refused = h
        .http
        .post(&url)
        .form(&[("type", "document")])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["code"], "parameter_missing");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("metadata[order_id]")
    );
    assert!(
        h.sim.requests().is_empty(),
        "a refused create never reaches Stripe"
    );

    let accepted = h
        .http
        .post(&url)
        .form(&[("type", "document"), ("metadata[order_id]", "42")])
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 200);
    let sent = h.sim.requests().pop().unwrap();
    assert_eq!(
        Value::Object(sent.form())["metadata"],
        json!({"order_id": "42", "source": "capgate"})
    );

    let client = legacy_client(&mcp_url(&h).await).await;
    let result = call(
        &client,
        "stripe-post-identity-verification-sessions",
        json!({"body": {"type": "document"}}),
    )
    .await;
    assert_eq!(result.is_error, Some(true));
    assert_eq!(
        result.structured_content.unwrap()["error"]["code"],
        "parameter_missing"
    );
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn return_url_allowlist_answers_without_calling_stripe() {
    let config = json!({"hosts": ["shop.example.com", "*.trusted.example"]});
    let (h, _dir) = harness(
        &["return_url_allowlist"],
        vec![binding("return_url_allowlist", CREATE, config)],
    )
    .await;
    let url = h.sessions().await;
    let refused = h
        .http
        .post(&url)
        .form(&[
            ("type", "document"),
            ("return_url", "https://evil.example/done"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "url_invalid");
    assert_eq!(body["error"]["param"], "return_url");
    assert!(h.sim.requests().is_empty());
    for allowed in [
        "https://shop.example.com/done",
        "https://eu.trusted.example/x",
    ] {
        let response = h
            .http
            .post(&url)
            .form(&[("type", "document"), ("return_url", allowed)])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{allowed}");
    }
    assert_eq!(h.sim.requests().len(), 2);
}

#[tokio::test]
async fn a_chain_runs_in_order_and_never_sees_credentials() {
    let (h, _dir) = harness(
        &["stamp"],
        vec![
            binding("stamp", LIST, json!({"value": "first"})),
            binding("stamp", LIST, json!({"value": "second"})),
        ],
    )
    .await;
    let response = h
        .http
        .get(h.sessions().await)
        .header("stripe-version", "2026-08-26.dahlia")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Requests go through the chain in order, responses in reverse order.
    let stamps: Vec<&str> = response
        .headers()
        .get_all("x-capgate-stamp")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(stamps, ["second", "first"]);
    let sent = h.sim.requests().pop().unwrap();
    let sent_stamps: Vec<&str> = sent
        .headers
        .iter()
        .filter(|(k, _)| k == "x-capgate-stamp")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(sent_stamps, ["first", "second"]);
    let saw: Vec<&str> = sent
        .headers
        .iter()
        .filter(|(k, _)| k == "x-capgate-stamp-saw")
        .map(|(_, v)| v.as_str())
        .collect();
    assert!(saw[0].contains("stripe-version"), "{saw:?}");
    assert!(
        saw.iter().all(|s| !s.contains("authorization")),
        "a plugin saw credentials: {saw:?}"
    );
    assert_eq!(
        sent.header("authorization"),
        Some(format!("Bearer {}", common::KEY).as_str()),
        "credentials are added after"
    );
}

#[tokio::test]
async fn parameters_built_from_bound_values_are_added_after_plugins() {
    // The list operation also sends the bound key in a header and a cookie of its own, and in a
    // header the REST route's `with:` fills from it.
    let seed =
        std::fs::read_to_string(common::root().join("specs/identity-sessions.yaml")).unwrap();
    let list_inputs = "        inputParameters:\n        - name: created\n";
    assert!(seed.contains(list_inputs));
    let spec = seed.replacen(
        list_inputs,
        &format!(
            "        inputParameters:\n        - {{name: X-Upstream-Token, in: header, value: '{{{{env.STRIPE_API_KEY}}}}'}}\n        - {{name: token, in: cookie, value: 'k={{{{env.STRIPE_API_KEY}}}}'}}\n        - {{name: X-From-With, in: header}}\n{}",
            &list_inputs["        inputParameters:\n".len()..]
        ),
        1,
    );
    let list_with = "        with:\n          created: rest.created\n";
    assert!(spec.contains(list_with));
    let spec = spec.replacen(
        list_with,
        "        with:\n          X-From-With: 'w {{env.STRIPE_API_KEY}}'\n          created: rest.created\n",
        1,
    );
    let (h, _dir) = harness_of(&spec, &["stamp"], vec![binding("stamp", LIST, json!({}))]).await;
    let response = h.http.get(h.sessions().await).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let sent = h.sim.requests().pop().unwrap();
    let saw = sent.header("x-capgate-stamp-saw").unwrap();
    assert!(
        !saw.contains("x-upstream-token"),
        "the plugin saw a secret: {saw}"
    );
    assert!(!saw.contains("cookie"), "the plugin saw a secret: {saw}");
    assert!(
        !saw.contains("x-from-with"),
        "the plugin saw a secret: {saw}"
    );
    assert_eq!(
        sent.header("x-from-with"),
        Some(format!("w {}", common::KEY).as_str())
    );
    assert_eq!(
        sent.header("x-upstream-token"),
        Some(common::KEY),
        "it is still sent"
    );
    assert_eq!(
        sent.header("cookie"),
        Some(format!("token=k={}", common::KEY).as_str())
    );
}

/// Every plugin call gets a fresh instance: the `stamp` plugin counts its calls in a static,
/// and always reports one, on the request and on the response.
#[tokio::test]
async fn every_call_gets_a_fresh_instance() {
    let (h, _dir) = harness(
        &["stamp"],
        vec![binding("stamp", LIST, json!({"value": "s"}))],
    )
    .await;
    for round in 0..8 {
        let response = h.http.get(h.sessions().await).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["x-capgate-stamp-calls"],
            "1",
            "round {round}"
        );
        let sent = h.sim.requests().pop().unwrap();
        assert_eq!(
            sent.header("x-capgate-stamp-calls"),
            Some("1"),
            "round {round}"
        );
    }
}

/// A binding with `instances: reused` runs its calls in the instance earlier calls left: the
/// `stamp` plugin's count goes on across hooks and requests (one request at a time: one
/// instance), and `/status` shows it idle between requests.
#[tokio::test]
async fn a_reusing_binding_keeps_its_instance_across_calls() {
    let mut reused = binding("stamp", LIST, json!({"value": "s"}));
    reused.instances = capgate_model::config::InstancePolicy::Reused;
    let (h, _dir) = harness(&["stamp"], vec![reused]).await;
    for round in 0..6u32 {
        let response = h.http.get(h.sessions().await).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let sent = h.sim.requests().pop().unwrap();
        assert_eq!(
            sent.header("x-capgate-stamp-calls"),
            Some((2 * round + 1).to_string().as_str()),
            "round {round}: the request hook"
        );
        assert_eq!(
            response.headers()["x-capgate-stamp-calls"],
            (2 * round + 2).to_string().as_str(),
            "round {round}: the response hook"
        );
        assert_eq!(h.gateway.idle_plugin_instances(), 1, "round {round}");
    }
    let admin = h.gateway.admin_addr().expect("admin is open");
    let status: Value = h
        .http
        .get(format!("http://{admin}/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["plugins"]["idle_instances"], 1, "{status}");
    assert_eq!(status["plugins"]["bindings"][0]["instances"], "reused");
}

/// A reused instance is given back only after a call that did not fail, and never runs under a
/// memory cap smaller than what it holds: a panicking or out-of-memory plugin fails every call
/// the same way (a fresh instance each time, not a poisoned one), and nothing is left idle.
#[tokio::test]
async fn a_reused_instance_that_fails_is_never_reused() {
    use capgate_plugin::Failure;

    let (plugins, _dir) = in_process(&["panic", "oom", "stamp"]).await;
    let request = || list_request(http::HeaderMap::new());
    let reused = |plugin: &str, memory: usize| capgate_model::snapshot::TransformRef {
        memory,
        reuse: true,
        ..transform(plugin, Duration::from_millis(500))
    };
    for (name, expected) in [("panic", "trap"), ("oom", "out_of_memory")] {
        let transform = reused(name, 16 << 20);
        let plugin = plugins.get(&transform.plugin).unwrap();
        for call in 0..3 {
            let outcome = plugins
                .on_request(&plugin, &transform, &context(LIST), request())
                .await;
            let Err(failure) = outcome else {
                panic!("{name}, call {call}: {outcome:?}")
            };
            assert_eq!(failure.kind(), expected, "{name}, call {call}: {failure}");
            assert!(
                !failure.to_string().contains("cannot enter"),
                "{name}, call {call}: a poisoned instance was reused: {failure}"
            );
            assert_eq!(plugins.idle_instances(), 0, "{name}, call {call}");
        }
    }
    // stamp leaves its instance idle; a call with a cap below what that instance holds gets a
    // fresh instance, which cannot even get its first pages under 64 KiB.
    let roomy = reused("stamp", 16 << 20);
    let stamp = plugins.get(&roomy.plugin).unwrap();
    let outcome = plugins
        .on_request(&stamp, &roomy, &context(LIST), request())
        .await;
    assert!(
        matches!(outcome, Ok(capgate_plugin::RequestOutcome::Forward(_))),
        "{outcome:?}"
    );
    assert_eq!(plugins.idle_instances(), 1);
    let tight = reused("stamp", 64 << 10);
    let outcome = plugins
        .on_request(&stamp, &tight, &context(LIST), request())
        .await;
    assert!(
        matches!(outcome, Err(Failure::OutOfMemory | Failure::Trap(_))),
        "the idle instance ran under a cap below its memory: {outcome:?}"
    );
    assert_eq!(plugins.idle_instances(), 0);
}

/// The kit's allocator for plugins without `std` rewinds when a call has freed everything: a
/// reused `noop` instance serves thousands of calls within a 1 MiB cap that the calls'
/// arguments together would pass many times over if nothing were given back.
#[tokio::test]
async fn a_reused_instance_without_std_serves_on_the_same_memory() {
    let (plugins, _dir) = in_process(&["noop"]).await;
    let transform = capgate_model::snapshot::TransformRef {
        memory: 1 << 20,
        reuse: true,
        ..transform("noop", Duration::from_millis(500))
    };
    let plugin = plugins.get(&transform.plugin).unwrap();
    let mut headers = http::HeaderMap::new();
    for i in 0..10 {
        headers.insert(
            http::HeaderName::try_from(format!("x-header-{i}")).unwrap(),
            http::HeaderValue::from_str(&"v".repeat(100)).unwrap(),
        );
    }
    for call in 0..5000 {
        let request = list_request(headers.clone());
        let outcome = plugins
            .on_request(&plugin, &transform, &context(LIST), request)
            .await;
        assert!(
            matches!(outcome, Ok(capgate_plugin::RequestOutcome::Forward(_))),
            "call {call}: {outcome:?}"
        );
    }
    assert_eq!(plugins.idle_instances(), 1);
}

/// Every misbehaving plugin fails only its own request, within its deadline, while the gateway
/// goes on serving other requests at the same time.
#[tokio::test]
async fn misbehaving_plugins_fail_only_their_request() {
    let bindings = vec![
        binding("spin", LIST, json!({})),
        binding("panic", CREATE, json!({})),
        binding(
            "oom",
            "identity-sessions.postidentityverificationsessionssessioncancel",
            json!({}),
        ),
        binding(
            "garbage",
            "identity-sessions.postidentityverificationsessionssession",
            json!({}),
        ),
    ];
    let (h, _dir) = harness(&["spin", "panic", "oom", "garbage"], bindings).await;
    let base = h.sessions().await;
    let id = common::create_session_directly(&h.sim).await;
    let before = h.sim.requests().len();

    // While the looping plugin holds its request, an unplugged route answers promptly.
    let spinning = tokio::spawn({
        let (http, url) = (h.http.clone(), base.clone());
        async move {
            let started = Instant::now();
            let response = http.get(url).send().await.unwrap();
            (
                started.elapsed(),
                response.status(),
                response.json::<Value>().await.unwrap(),
            )
        }
    });
    let other = h.http.get(format!("{base}/{id}")).send().await.unwrap();
    assert_eq!(
        other.status(),
        200,
        "the gateway keeps serving during a runaway plugin"
    );
    let (took, status, body) = spinning.await.unwrap();
    assert_eq!(status, 502);
    assert!(
        took < Duration::from_secs(2),
        "stopped at its 200 ms deadline, took {took:?}"
    );
    assert_eq!(body["error"]["code"], "plugin_failed");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("spin.wasm"),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("deadline"),
        "{body}"
    );

    let panicked = h
        .http
        .post(&base)
        .form(&[("type", "document")])
        .send()
        .await
        .unwrap();
    assert_eq!(panicked.status(), 502);
    let body: Value = panicked.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("panic.wasm"),
        "{body}"
    );
    assert!(
        !body.to_string().contains("deliberate panic"),
        "what the plugin wrote to stderr goes to the log, not to the caller: {body}"
    );

    let oom = h
        .http
        .post(format!("{base}/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(oom.status(), 502);
    let body: Value = oom.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("out of memory"),
        "{body}"
    );

    let garbage = h
        .http
        .post(format!("{base}/{id}"))
        .form(&[("metadata[a]", "b")])
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), 502);
    let body: Value = garbage.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .ends_with("failed: the plugin returned an unusable result"),
        "{body}"
    );

    // None of it reached the upstream, and the gateway still works.
    assert_eq!(
        h.sim.requests().len(),
        before + 1,
        "only the unplugged retrieve reached the stand-in"
    );
    assert_eq!(
        h.http
            .get(format!("{base}/{id}"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let metrics = h.gateway.metrics().render();
    for outcome in ["timeout", "trap", "out_of_memory", "malformed_result"] {
        assert!(
            metrics.contains(&format!("outcome=\"{outcome}\"")),
            "no {outcome} in metrics:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn fail_open_lets_the_request_through() {
    let mut open = binding("panic", CREATE, json!({}));
    open.on_error = FailurePolicy::FailOpen;
    let (h, _dir) = harness(&["panic"], vec![open]).await;
    let response = h
        .http
        .post(h.sessions().await)
        .form(&[("type", "document")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(h.sim.requests().len(), 1);
}

#[tokio::test]
async fn replacing_and_breaking_a_plugin_while_serving() {
    let (h, dir) = harness(&[], vec![binding("live", LIST, json!({"value": "v2"}))]).await;
    let live = dir.path().join("live.wasm");
    let url = h.sessions().await;
    let install = |from: &Path| {
        let temp = dir.path().join(".live.wasm.tmp");
        std::fs::copy(from, &temp).unwrap();
        std::fs::rename(&temp, &live).unwrap();
    };

    // Not there yet: fail-closed, and the file says so from the start.
    assert_eq!(h.http.get(&url).send().await.unwrap().status(), 502);
    let unloaded = |h: &Harness| -> Vec<String> {
        h.gateway.status()[0]
            .diagnostics
            .iter()
            .filter(|d| d.code.as_str() == "plugin-not-loaded")
            .map(|d| d.found.clone().unwrap_or_default())
            .collect()
    };
    assert_eq!(unloaded(&h), ["live.wasm"]);

    let generation = h.gateway.subscribe().borrow().generation;
    install(&common::plugin_wasm("noop"));
    h.published(generation.saturating_sub(1), |r| {
        r.plugins_changed.iter().any(|p| p == "live.wasm")
    })
    .await;
    let response = h.http.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("x-capgate-stamp").is_none());
    assert!(
        unloaded(&h).is_empty(),
        "the warning goes once the file loads"
    );

    let mut reports = h.gateway.subscribe();
    reports.borrow_and_update();
    install(&common::plugin_wasm("stamp"));
    tokio::time::timeout(Duration::from_secs(10), reports.changed())
        .await
        .unwrap()
        .unwrap();
    let response = h.http.get(&url).send().await.unwrap();
    assert_eq!(
        response.headers()["x-capgate-stamp"],
        "v2",
        "the new version serves new requests"
    );

    // A broken file keeps the previous version serving, and says why.
    let mut reports = h.gateway.subscribe();
    reports.borrow_and_update();
    std::fs::write(&live, b"\0asm but not really").unwrap();
    tokio::time::timeout(Duration::from_secs(10), reports.changed())
        .await
        .unwrap()
        .unwrap();
    let response = h.http.get(&url).send().await.unwrap();
    assert_eq!(response.headers()["x-capgate-stamp"], "v2");
    let status = h.gateway.plugins().unwrap();
    let file = status.iter().find(|p| p.file == "live.wasm").unwrap();
    assert_eq!(file.state.as_str(), "serving-last-good");
    assert!(
        file.error
            .as_deref()
            .unwrap()
            .contains("not a valid component"),
        "{:?}",
        file.error
    );
}

/// The compiled-artifact cache: a damaged artifact is never run (the plugin is compiled again
/// and the artifact rewritten), and a cache folder that is a link is not used at all.
#[test]
fn the_artifact_cache_runs_only_its_own_intact_files() {
    let dir = plugins_folder(&["noop"]);
    let scratch = tempfile::tempdir().unwrap();
    let load = |cache: std::path::PathBuf| {
        let config = capgate_model::config::PluginsConfig {
            dir: Some(dir.path().to_path_buf()),
            cache_dir: Some(cache),
            ..capgate_model::config::PluginsConfig::default()
        };
        let host = capgate_plugin::Plugins::new(&config).unwrap();
        assert_eq!(host.refresh(), ["noop.wasm"]);
        assert!(host.get("noop.wasm").is_some());
    };
    let artifacts = |cache: &Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(cache)
            .map(|entries| {
                entries
                    .map(|e| e.unwrap().path())
                    .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
                    .collect()
            })
            .unwrap_or_default()
    };

    let cache = scratch.path().join("cache");
    load(cache.clone());
    let [artifact] = artifacts(&cache).try_into().unwrap();
    let intact = std::fs::read(&artifact).unwrap();

    // Cut short, as a crash while writing would leave it, or one byte changed in the middle
    // of its code: compiled again, written again.
    let mut flipped = intact.clone();
    flipped[intact.len() / 2] ^= 0x40;
    for damaged in [intact[..intact.len() / 2].to_vec(), flipped] {
        std::fs::write(&artifact, damaged).unwrap();
        load(cache.clone());
        assert!(
            std::fs::read(&artifact).unwrap() == intact,
            "a damaged artifact was used instead of compiled again"
        );
    }

    // A link to a folder of this user's is refused all the same: nothing is written through it.
    let elsewhere = scratch.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let link = scratch.path().join("link");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    load(link.clone());
    assert!(artifacts(&elsewhere).is_empty());
}

/// A request in flight across a reload runs one version of everything, REST and MCP alike: the
/// routes, tools and transform bindings of the snapshot it pinned, and the plugin versions
/// published with that snapshot, from its first hook to its last.
#[tokio::test]
async fn a_request_in_flight_across_a_reload_sees_one_version_of_everything() {
    let config = json!({"fields": ["client_reference_id"]});
    let (h, dir) = harness(&[], vec![binding("live", RETRIEVE, config)]).await;
    let live = dir.path().join("live.wasm");
    let install = |plugin: &str| {
        let temp = dir.path().join(".live.wasm.tmp");
        std::fs::copy(common::plugin_wasm(plugin), &temp).unwrap();
        std::fs::rename(&temp, &live).unwrap();
    };
    let generation = h.gateway.subscribe().borrow().generation;
    install("redact_pii");
    h.published(generation.saturating_sub(1), |r| {
        r.plugins_changed.iter().any(|p| p == "live.wasm")
    })
    .await;
    let id = verified_session(&h).await;
    let client = legacy_client(&mcp_url(&h).await).await;

    // Both calls wait upstream while the spec and the plugin change under them.
    h.http
        .post(format!("{}/_sim/faults", h.sim.base_url()))
        .json(&json!({"status": null, "delay_ms": 2000, "count": 2}))
        .send()
        .await
        .unwrap();
    let before = h.sim.requests().len();
    let rest = tokio::spawn({
        let (http, url) = (h.http.clone(), h.sessions().await);
        let url = format!("{url}/{id}?expand[]=verified_outputs");
        async move {
            let response = http.get(url).send().await.unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        }
    });
    let mcp = tokio::spawn({
        let id = id.clone();
        async move {
            let arguments = json!({"session": id, "expand": ["verified_outputs"]});
            let result = call(
                &client,
                "stripe-get-identity-verification-sessions-2",
                arguments,
            );
            let result = result.await;
            client.cancel().await.unwrap();
            result
        }
    });
    while h.sim.requests().len() < before + 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let mut reports = h.gateway.subscribe();
    reports.borrow_and_update();
    let spec_file = h.specs_dir().join("identity-sessions.yaml");
    let seed = std::fs::read_to_string(&spec_file).unwrap();
    std::fs::write(
        &spec_file,
        seed.replace(
            "/v1/v1/identity/verification-sessions/{session}:",
            "/v2/sessions/{session}:",
        )
        .replace(
            "path: /v1/v1/identity/verification-sessions/{session}\n",
            "path: /v2/sessions/{session}\n",
        )
        .replace(
            "- name: stripe-get-identity-verification-sessions-2\n",
            "- name: retrieve-session\n",
        ),
    )
    .unwrap();
    install("noop");
    let (mut spec_published, mut plugin_published) = (false, false);
    tokio::time::timeout(Duration::from_secs(10), async {
        while !(spec_published && plugin_published) {
            reports.changed().await.unwrap();
            let report = reports.borrow_and_update();
            spec_published |= !report.files_changed.is_empty();
            plugin_published |= report.plugins_changed.iter().any(|p| p == "live.wasm");
        }
    })
    .await
    .expect("the spec and the plugin are published within 10 s");
    assert!(
        !rest.is_finished() && !mcp.is_finished(),
        "both calls were still in flight when the new version was published"
    );

    let (status, session) = rest.await.unwrap();
    assert_eq!(status, 200, "{session}");
    assert_eq!(session["id"], id.as_str());
    assert_eq!(
        session["verified_outputs"]["last_name"], "[redacted]",
        "the REST call ran the plugin version it started with"
    );
    let result = mcp.await.unwrap();
    let structured = result.structured_content.expect("a structured result");
    assert_eq!(
        structured["verified_outputs"]["last_name"], "[redacted]",
        "the MCP call ran the plugin version it started with"
    );

    // New requests see the new version of everything.
    let old = format!("{}/{id}", h.sessions().await);
    assert_eq!(h.http.get(&old).send().await.unwrap().status(), 404);
    let new = format!(
        "{}/v2/sessions/{id}?expand[]=verified_outputs",
        h.base(8080).await
    );
    let response = h.http.get(&new).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let session: Value = response.json().await.unwrap();
    assert_ne!(session["verified_outputs"]["last_name"], "[redacted]");
    let client = legacy_client(&mcp_url(&h).await).await;
    let tools = client.list_all_tools().await.unwrap();
    assert!(tools.iter().any(|t| t.name == "retrieve-session"));
    client.cancel().await.unwrap();
}
