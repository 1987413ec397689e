//! The seed's six REST operations through capgate to the Stripe stand-in: what the stand-in
//! received and what the caller got.

use serde_json::{Value, json};

use crate::common::{self, Harness, KEY};

#[tokio::test]
async fn create_sends_stripe_form_encoding_and_passes_back_headers() {
    let h = Harness::seed().await;
    let response = h
        .http
        .post(h.sessions().await)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("stripe-version", "2026-08-26.dahlia")
        .header("idempotency-key", "create-1")
        .body("type=document&metadata[order]=6735&options[document][allowed_types][]=passport&options[document][allowed_types][]=id_card&options[document][require_matching_selfie]=true")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let request_id = response.headers()["request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(request_id.starts_with("req_"), "{request_id}");
    assert_eq!(response.headers()["idempotency-key"], "create-1");
    let session: Value = response.json().await.unwrap();
    assert_eq!(session["object"], "identity.verification_session");
    assert_eq!(session["status"], "requires_input");
    assert_eq!(session["metadata"], json!({"order": "6735"}));

    let received = h.sim.requests();
    assert_eq!(received.len(), 1);
    let r = &received[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/v1/identity/verification_sessions");
    assert_eq!(r.query, None);
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(
        r.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(r.header("stripe-version"), Some("2026-08-26.dahlia"));
    assert_eq!(r.header("idempotency-key"), Some("create-1"));
    // Exactly what Stripe's SDKs send: brackets, indexed arrays, booleans as words.
    assert_eq!(
        r.body,
        "type=document&metadata[order]=6735&options[document][allowed_types][0]=passport\
         &options[document][allowed_types][1]=id_card&options[document][require_matching_selfie]=true"
    );
}

#[tokio::test]
async fn a_json_body_goes_upstream_as_the_same_form() {
    let h = Harness::seed().await;
    let response = h
        .http
        .post(h.sessions().await)
        .json(&json!({"type": "id_number", "metadata": {"a": "1", "b": ""}, "client_reference_id": "user-7"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let r = &h.sim.requests()[0];
    assert_eq!(
        r.body,
        "type=id_number&metadata[a]=1&metadata[b]=&client_reference_id=user-7"
    );
    assert_eq!(r.form()["metadata"], json!({"a": "1", "b": ""}));
}

#[tokio::test]
async fn list_encodes_brackets_in_the_query_and_never_sends_a_body() {
    let h = Harness::seed().await;
    for _ in 0..3 {
        common::create_session_directly(&h.sim).await;
    }
    let url = format!(
        "{}?limit=2&expand[]=data.verified_outputs&created[gte]=1&status=requires_input",
        h.sessions().await
    );
    // Fields in a GET's body are refused, not sent on as query parameters.
    let before = h.sim.requests().len();
    let refused = h
        .http
        .get(&url)
        .json(&json!({"status": "verified"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    assert_eq!(h.sim.requests().len(), before);
    let response = h.http.get(url).json(&json!({})).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("request-id"));
    let list: Value = response.json().await.unwrap();
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    assert_eq!(list["has_more"], true);

    let r = h.sim.requests().pop().unwrap();
    assert_eq!(r.method, "GET");
    assert_eq!(r.path, "/v1/identity/verification_sessions");
    assert_eq!(r.body, "");
    assert_eq!(r.header("content-type"), None);
    assert_eq!(
        r.query.as_deref(),
        Some("created[gte]=1&expand[0]=data.verified_outputs&limit=2&status=requires_input")
    );
    assert_eq!(
        Value::Object(r.query_form()),
        json!({"created": {"gte": "1"}, "expand": ["data.verified_outputs"], "limit": "2", "status": "requires_input"})
    );
}

#[tokio::test]
async fn retrieve_update_cancel_and_redact() {
    let h = Harness::seed().await;
    let base = h.sessions().await;
    let id = common::create_session_directly(&h.sim).await;

    let got: Value = h
        .http
        .get(format!("{base}/{id}?expand[0]=verified_outputs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["id"], id.as_str());
    let r = h.sim.requests().pop().unwrap();
    assert_eq!(
        (r.method.as_str(), r.path.clone()),
        ("GET", format!("/v1/identity/verification_sessions/{id}"))
    );
    assert_eq!(r.query.as_deref(), Some("expand[0]=verified_outputs"));

    let updated = h
        .http
        .post(format!("{base}/{id}"))
        .form(&[("metadata[step]", "2")])
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), 200);
    let updated: Value = updated.json().await.unwrap();
    assert_eq!(updated["metadata"]["step"], "2");
    let r = h.sim.requests().pop().unwrap();
    assert_eq!(
        (r.method.as_str(), r.path.clone(), r.body.as_str()),
        (
            "POST",
            format!("/v1/identity/verification_sessions/{id}"),
            "metadata[step]=2"
        )
    );

    let canceled = h
        .http
        .post(format!("{base}/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(canceled.status(), 200);
    let canceled: Value = canceled.json().await.unwrap();
    assert_eq!(canceled["status"], "canceled");
    let r = h.sim.requests().pop().unwrap();
    assert_eq!(
        (r.method.as_str(), r.path.clone(), r.body.as_str()),
        (
            "POST",
            format!("/v1/identity/verification_sessions/{id}/cancel"),
            ""
        )
    );

    let redacted = h
        .http
        .post(format!("{base}/{id}/redact"))
        .send()
        .await
        .unwrap();
    assert_eq!(redacted.status(), 200);
    let redacted: Value = redacted.json().await.unwrap();
    assert_eq!(redacted["redaction"]["status"], "processing");
    assert_eq!(
        h.sim.requests().pop().unwrap().path,
        format!("/v1/identity/verification_sessions/{id}/redact")
    );

    // A disallowed transition is Stripe's own 400, passed through.
    let again = h
        .http
        .post(format!("{base}/{id}"))
        .form(&[("metadata[x]", "y")])
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 400);
    let body: Value = again.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn stripe_errors_pass_through_unchanged() {
    let h = Harness::seed().await;
    let direct = reqwest::Client::new()
        .get(format!(
            "{}/v1/identity/verification_sessions/vs_nope",
            h.sim.base_url()
        ))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    let direct_status = direct.status();
    let direct_body: Value = direct.json().await.unwrap();
    let through = h
        .http
        .get(format!("{}/vs_nope", h.sessions().await))
        .send()
        .await
        .unwrap();
    assert_eq!(through.status(), direct_status);
    assert_eq!(through.status(), 404);
    assert!(
        through.headers()["request-id"]
            .to_str()
            .unwrap()
            .starts_with("req_")
    );
    let body: Value = through.json().await.unwrap();
    assert_eq!(body, direct_body);
    assert_eq!(body["error"]["code"], "resource_missing");
    assert_eq!(
        body["error"]["message"],
        "No such verification_session: 'vs_nope'"
    );
}

#[tokio::test]
async fn unknown_stripe_parameters_are_stripes_to_refuse() {
    let h = Harness::seed().await;
    let response = h
        .http
        .post(h.sessions().await)
        .form(&[("type", "document"), ("colour", "blue")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "parameter_unknown");
    assert_eq!(body["error"]["param"], "colour");
}

#[tokio::test]
async fn bodies_in_both_array_styles_arrive_identically() {
    let h = Harness::seed().await;
    let url = h.sessions().await;
    for body in [
        "type=document&options[document][allowed_types][]=passport&options[document][allowed_types][]=driving_license",
        "type=document&options%5Bdocument%5D%5Ballowed_types%5D%5B0%5D=passport&options%5Bdocument%5D%5Ballowed_types%5D%5B1%5D=driving_license",
    ] {
        let response = h
            .http
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }
    let bodies: Vec<String> = h.sim.requests().into_iter().map(|r| r.body).collect();
    assert_eq!(bodies[0], bodies[1]);
    assert_eq!(
        bodies[0],
        "type=document&options[document][allowed_types][0]=passport&options[document][allowed_types][1]=driving_license"
    );
}

/// A capability whose REST adapter takes the caller's key in the query, with a called route, a
/// forward route and a cookie parameter.
const CALLER_KEY_SPEC: &str = r#"naftiko: 1.0.0-alpha2
info: {label: Caller keys in the query}
binds:
- namespace: env
  keys: {STRIPE_API_KEY: STRIPE_API_KEY, CALLER_KEY: CALLER_KEY, HINT: HINT}
capability:
  consumes:
  - type: http
    namespace: stripe
    baseUri: https://api.stripe.com
    authentication: {type: bearer, token: '{{env.STRIPE_API_KEY}}'}
    resources:
    - name: sessions
      path: /v1/identity/verification_sessions
      operations:
      - name: list
        method: GET
        inputParameters:
        - {name: limit, in: query, type: integer}
        - {name: hint, in: cookie, type: string}
        - {name: Stripe-Context, in: header, value: '{{env.HINT}}'}
  exposes:
  - type: rest
    namespace: api
    port: 8080
    authentication: {type: apikey, key: api_key, placement: query, value: '{{env.CALLER_KEY}}'}
    resources:
    - path: /sessions
      name: sessions
      operations:
      - {method: GET, name: list, call: stripe.list}
    - path: /raw/{{path}}
      name: raw
      forward: {targetNamespace: stripe}
"#;

#[tokio::test]
async fn a_caller_key_in_the_query_is_checked_and_never_sent_on() {
    let h = Harness::with_specs(&[("keys.yaml", CALLER_KEY_SPEC)], |c| {
        c.env.insert("CALLER_KEY".into(), "ck_caller_secret".into());
        c.env.insert("HINT".into(), "ctx_1".into());
    })
    .await;
    let base = h.base(8080).await;
    let get = |path: &str| h.http.get(format!("{base}{path}")).send();

    assert_eq!(get("/sessions?limit=2").await.unwrap().status(), 401);
    assert_eq!(
        get("/sessions?api_key=wrong&limit=2")
            .await
            .unwrap()
            .status(),
        401
    );
    let response = get("/sessions?api_key=ck_caller_secret&limit=2")
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let response = get("/raw/v1/identity/verification_sessions?limit=1&api_key=ck_caller_secret")
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());

    let received = h.sim.requests();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].query.as_deref(), Some("limit=2"));
    assert_eq!(received[1].query.as_deref(), Some("limit=1"));
    for r in &received {
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {KEY}").as_str())
        );
        assert!(!format!("{r:?}").contains("ck_caller_secret"), "{r:?}");
    }
    // A header built from a bound variable still goes out (after transforms would have run).
    assert_eq!(received[0].header("stripe-context"), Some("ctx_1"));

    // A cookie value cannot carry a second cookie.
    let (status, body) = {
        let r = get("/sessions?api_key=ck_caller_secret&hint=a%3B%20admin%3D1")
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "hint");
    assert_eq!(h.sim.requests().len(), 2, "the bad cookie was not sent");
}

#[tokio::test]
async fn a_body_field_given_as_null_is_sent_as_stripes_unset() {
    let spec = r#"naftiko: 1.0.0-alpha2
info: {label: Declared body fields}
binds:
- namespace: env
  keys: {STRIPE_API_KEY: STRIPE_API_KEY}
capability:
  consumes:
  - type: http
    namespace: stripe
    baseUri: https://api.stripe.com
    authentication: {type: bearer, token: '{{env.STRIPE_API_KEY}}'}
    resources:
    - name: session
      path: /v1/identity/verification_sessions/{{session}}
      operations:
      - name: update
        method: POST
        inputParameters:
        - {name: session, in: path, type: string, required: true}
        - {name: metadata, in: body, type: object}
        - {name: type, in: body, type: string}
  exposes:
  - type: rest
    namespace: api
    port: 8080
    resources:
    - path: /sessions/{{session}}
      name: session
      operations:
      - {method: POST, name: update, call: stripe.update}
"#;
    let h = Harness::with_specs(&[("update.yaml", spec)], |_| {}).await;
    let id = common::create_session_directly(&h.sim).await;
    let response = h
        .http
        .post(format!("{}/sessions/{id}", h.base(8080).await))
        .json(&json!({"metadata": null, "type": "id_number"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let sent = h.sim.requests().pop().unwrap();
    assert_eq!(sent.body, "metadata=&type=id_number");
}

/// A forward route carries what its consumes adapter declares for every call: adapter-level
/// `inputParameters` with a value, a constant header, one from a bound variable and a query
/// value, as the format's reference engine sends them.
#[tokio::test]
async fn a_forward_route_carries_the_adapters_own_values() {
    let spec = r#"naftiko: 1.0.0-alpha2
info: {label: Forward with adapter values}
binds:
- namespace: env
  keys: {STRIPE_API_KEY: STRIPE_API_KEY, HINT: HINT}
capability:
  consumes:
  - type: http
    namespace: stripe
    baseUri: https://api.stripe.com
    authentication: {type: bearer, token: '{{env.STRIPE_API_KEY}}'}
    inputParameters:
    - {name: Stripe-Version, in: header, value: '2024-06-20'}
    - {name: Stripe-Context, in: header, value: '{{env.HINT}}'}
    - {name: limit, in: query, value: '3'}
    resources:
    - name: sessions
      path: /v1/identity/verification_sessions
      operations:
      - {name: list, method: GET}
  exposes:
  - type: rest
    namespace: api
    port: 8080
    resources:
    - path: /raw/{{path}}
      name: raw
      forward: {targetNamespace: stripe}
"#;
    let h = Harness::with_specs(&[("forward.yaml", spec)], |c| {
        c.env.insert("HINT".into(), "ctx_1".into());
    })
    .await;
    let base = h.base(8080).await;
    let response = h
        .http
        .get(format!(
            "{base}/raw/v1/identity/verification_sessions?status=verified"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let received = h.sim.requests();
    let forwarded = received.last().unwrap();
    assert_eq!(forwarded.header("stripe-version"), Some("2024-06-20"));
    assert_eq!(forwarded.header("stripe-context"), Some("ctx_1"));
    let query = forwarded.query.as_deref().unwrap_or("");
    assert!(
        query.contains("status=verified") && query.contains("limit=3"),
        "{query}"
    );
}

/// A REST body is checked against the operation's real schema (Stripe's OpenAPI description)
/// before anything is sent: an unknown field or a value outside an enum is a 400 naming it.
#[tokio::test]
async fn a_rest_body_is_checked_against_the_upstreams_schema() {
    let h = Harness::seed().await;
    let sessions = h.sessions().await;
    let post =
        |form: &'static [(&'static str, &'static str)]| h.http.post(&sessions).form(form).send();
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: [Case; 3] = [
        (&[("type", "selfie")], "parameter_invalid", "type"),
        (
            &[("type", "document"), ("colour", "red")],
            "parameter_unknown",
            "colour",
        ),
        (
            &[
                ("type", "document"),
                ("options[document][allowed_types][0]", "library_card"),
            ],
            "parameter_invalid",
            "options[document][allowed_types][0]",
        ),
    ];
    for (form, code, param) in cases {
        let response = post(form).await.unwrap();
        assert_eq!(response.status(), 400, "{form:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{body}");
        assert_eq!(body["error"]["param"], param, "{body}");
    }
    assert!(
        h.sim.requests().is_empty(),
        "a refused body reached the upstream"
    );
    let good = post(&[
        ("type", "document"),
        ("options[document][allowed_types][0]", "passport"),
    ])
    .await
    .unwrap();
    assert_eq!(good.status(), 200, "{}", good.text().await.unwrap());
}
