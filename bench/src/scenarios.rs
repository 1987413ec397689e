//! The scenarios of issues 3 to 5: MCP overhead, reload latency and memory, soak under reloads,
//! plugin hook overhead.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http::Method;

use crate::load::{self, HttpClient, Stats, Target};
use crate::procs::{self, Proc};
use crate::{Series, table};

pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn seed_text() -> String {
    std::fs::read_to_string(repo().join("specs/identity-sessions.yaml")).expect("the seed spec")
}

/// A stand-in with one session.
pub struct Stand {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub session: String,
}

/// The stand-in with one verified session (so that responses carry personal fields).
pub async fn stand_in(client: &HttpClient) -> anyhow::Result<Stand> {
    let stand = unverified_stand_in(client).await?;
    let mut verify = Target::get(
        "verify",
        &format!(
            "http://{}/_sim/verification_sessions/{}/verified",
            stand.addr, stand.session
        ),
    );
    verify.method = Method::POST;
    load::once(client, &verify).await?;
    Ok(stand)
}

/// The stand-in with one session just created (`requires_input`).
pub async fn unverified_stand_in(client: &HttpClient) -> anyhow::Result<Stand> {
    let port = procs::free_port();
    let proc = procs::stripe_sim(port)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut create = Target::get(
        "create",
        &format!("http://{addr}/v1/identity/verification_sessions"),
    );
    create.method = Method::POST;
    create.headers = vec![
        (
            "authorization".into(),
            "Bearer sk_test_capgate_bench".into(),
        ),
        (
            "content-type".into(),
            "application/x-www-form-urlencoded".into(),
        ),
    ];
    create.body = Some("type=document&metadata[bench]=1".into());
    let (status, body) = load::once(client, &create).await?;
    anyhow::ensure!(status == 200, "creating a session failed: {status}");
    let session: serde_json::Value = serde_json::from_slice(&body)?;
    let id = session["id"].as_str().expect("an id").to_owned();
    Ok(Stand {
        proc,
        addr,
        session: id,
    })
}

/// A tools/call of the 2026-07-28 era (stateless: no session to set up).
pub fn mcp_call(url: &str, tool: &str, arguments: serde_json::Value) -> Target {
    let body = serde_json::json!({
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {
            "name": tool,
            "arguments": arguments,
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {}
            }
        }
    });
    Target {
        name: "through capgate (MCP tools/call)".into(),
        method: Method::POST,
        uri: url.parse().expect("a valid URI"),
        headers: vec![
            ("content-type".into(), "application/json".into()),
            (
                "accept".into(),
                "application/json, text/event-stream".into(),
            ),
            ("mcp-protocol-version".into(), "2026-07-28".into()),
            ("mcp-method".into(), "tools/call".into()),
            ("mcp-name".into(), tool.into()),
        ],
        body: Some(Bytes::from(body.to_string())),
    }
}

/// A stand-in with one session, and a gateway serving the seed in front of it.
pub struct Setup {
    pub sim: Stand,
    pub gateway: Proc,
    _specs: tempfile::TempDir,
    pub mcp_port: u16,
    pub direct: Target,
    pub through: Target,
}

/// Starts a gateway on the seed (no watching) in front of `sim`, and checks both paths answer.
pub async fn setup(sim: Stand) -> anyhow::Result<Setup> {
    let specs = tempfile::tempdir()?;
    std::fs::write(specs.path().join("identity-sessions.yaml"), seed_text())?;
    let (rest_port, mcp_port) = (procs::free_port(), procs::free_port());
    let gateway = procs::gateway(
        specs.path(),
        sim.addr,
        &[(8080, rest_port), (9090, mcp_port)],
        &["--no-watch"],
    )?;
    for port in [rest_port, mcp_port] {
        procs::wait_for_port(
            SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(10),
        )?;
    }
    let id = &sim.session;
    let mut direct = Target::get(
        "stand-in directly",
        &format!("http://{}/v1/identity/verification_sessions/{id}", sim.addr),
    );
    direct.headers = vec![(
        "authorization".into(),
        "Bearer sk_test_capgate_bench".into(),
    )];
    let through = Target::get(
        "through capgate (REST)",
        &format!("http://127.0.0.1:{rest_port}/v1/v1/identity/verification-sessions/{id}"),
    );
    let client = load::client();
    for target in [&direct, &through] {
        let (status, _) = load::once(&client, target).await?;
        anyhow::ensure!(status == 200, "{} answers {status}", target.name);
    }
    Ok(Setup {
        sim,
        gateway,
        _specs: specs,
        mcp_port,
        direct,
        through,
    })
}

/// MCP tools/call versus the REST route versus the stand-in, same operation, same load.
pub async fn mcp(
    rate: u64,
    concurrency: usize,
    duration: Duration,
    rounds: usize,
) -> anyhow::Result<()> {
    let client = load::client();
    let setup = setup(stand_in(&client).await?).await?;
    let (direct, rest, id) = (&setup.direct, &setup.through, &setup.sim.session);
    let mcp_port = setup.mcp_port;
    let mcp = mcp_call(
        &format!("http://127.0.0.1:{mcp_port}/mcp/identity-sessions-mcp"),
        "stripe-get-identity-verification-sessions-2",
        serde_json::json!({"session": id}),
    );
    let (status, body) = load::once(&client, &mcp).await?;
    anyhow::ensure!(
        status == 200 && String::from_utf8_lossy(&body).contains("structuredContent"),
        "MCP call failed: {status} {}",
        String::from_utf8_lossy(&body)
    );
    let targets = [direct, rest, &mcp];
    for target in targets {
        load::fixed_concurrency(&client, target, concurrency, Duration::from_secs(1)).await;
    }
    let mut by_rate: Vec<Series> = targets.iter().map(|t| Series::new(&t.name)).collect();
    let mut by_concurrency: Vec<Series> = targets.iter().map(|t| Series::new(&t.name)).collect();
    // REST and MCP at the same time, half the rate each: whatever the machine does in those
    // seconds, it does to both.
    let mut side_by_side = [Series::new(&rest.name), Series::new(&mcp.name)];
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        let mut order: Vec<usize> = (0..targets.len()).collect();
        order.rotate_left(round % targets.len());
        for &i in &order {
            by_rate[i]
                .runs
                .push(load::fixed_rate(targets[i], rate, duration).await);
        }
        let (r, m) = tokio::join!(
            load::fixed_rate(rest, rate / 2, duration),
            load::fixed_rate(&mcp, rate / 2, duration)
        );
        side_by_side[0].runs.push(r);
        side_by_side[1].runs.push(m);
        for &i in &order {
            by_concurrency[i]
                .runs
                .push(load::fixed_concurrency(&client, targets[i], concurrency, duration).await);
        }
    }
    println!(
        "## MCP: tools/call vs REST vs the stand-in, retrieving one session ({rounds} rounds of {}s; req/s: median of rounds; latency: all requests)",
        duration.as_secs()
    );
    table(
        &format!("Fixed rate: {rate} requests/s"),
        &by_rate.iter().collect::<Vec<_>>(),
    );
    println!(
        "\nMCP adds {:.3} ms at p50 and {:.3} ms at p99 over REST at the same rate (target: <= 0.5 ms at p99)",
        by_rate[2].p50() - by_rate[1].p50(),
        by_rate[2].p99() - by_rate[1].p99()
    );
    table(
        &format!(
            "Side by side: REST and MCP at {} requests/s each, at the same time",
            rate / 2
        ),
        &side_by_side.iter().collect::<Vec<_>>(),
    );
    println!(
        "\nMCP adds {:.3} ms at p50 and {:.3} ms at p99 over REST in the same seconds (target: <= 0.5 ms at p99)",
        side_by_side[1].p50() - side_by_side[0].p50(),
        side_by_side[1].p99() - side_by_side[0].p99()
    );
    table(
        &format!("Fixed concurrency: {concurrency}"),
        &by_concurrency.iter().collect::<Vec<_>>(),
    );
    println!(
        "\nMCP/REST throughput {:.2}; MCP adds {:.3} ms at p99 over REST at the same concurrency",
        by_concurrency[2].rps() / by_concurrency[1].rps(),
        by_concurrency[2].p99() - by_concurrency[1].p99()
    );
    Ok(())
}

/// A capability whose REST route is `GET /probe/<marker>`, for reload measurements.
fn probe(marker: &str, port: u16) -> String {
    format!(
        "naftiko: 1.0.0-alpha2\ncapability:\n  exposes:\n    - type: rest\n      port: {port}\n      namespace: probe\n      resources:\n        - path: /probe/{marker}\n          operations:\n            - method: GET\n              outputParameters:\n                - name: marker\n                  type: string\n                  value: \"{marker}\"\n"
    )
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let temp = path.with_extension("tmp~");
    std::fs::write(&temp, text)?;
    std::fs::rename(&temp, path)
}

struct Watched {
    gateway: Proc,
    specs: tempfile::TempDir,
    port: u16,
}

fn watched_gateway(
    sim: SocketAddr,
    with_corpus: bool,
    debounce_ms: u64,
    schemas: bool,
) -> anyhow::Result<Watched> {
    let specs = tempfile::tempdir()?;
    if with_corpus {
        let corpus = repo().join("tests/data/corpus/stripe-capabilities");
        for entry in std::fs::read_dir(corpus)? {
            let entry = entry?;
            std::fs::copy(entry.path(), specs.path().join(entry.file_name()))?;
        }
    }
    let port = procs::free_port();
    std::fs::write(specs.path().join("probe.yaml"), probe("p0", 7001))?;
    let config = specs
        .path()
        .join("..")
        .join(format!("capgate-bench-{}.yaml", std::process::id()));
    let mut config_text = format!(
        "specs: {}\nadmin: {{ address: null }}\nlisten: {{ ports: {{ 7001: {port}, 8080: {}, 9090: {} }} }}\nreload: {{ debounce: {debounce_ms} }}\n",
        specs.path().display(),
        procs::free_port(),
        procs::free_port()
    );
    if !schemas {
        config_text.push_str("schemas: { stripe: false }\n");
    }
    std::fs::write(&config, config_text)?;
    let gateway = procs::gateway_with_config(&config, sim)?;
    procs::wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(30),
    )?;
    Ok(Watched {
        gateway,
        specs,
        port,
    })
}

/// Writes a new probe route and waits until it answers; returns the time it took.
async fn reload_once(
    client: &HttpClient,
    watched: &Watched,
    marker: &str,
) -> anyhow::Result<Duration> {
    let target = Target::get(
        "probe",
        &format!("http://127.0.0.1:{}/probe/{marker}", watched.port),
    );
    let started = Instant::now();
    write_atomically(
        &watched.specs.path().join("probe.yaml"),
        &probe(marker, 7001),
    )?;
    loop {
        if let Ok((200, _)) = load::once(client, &target).await {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(10),
            "the new route never answered"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// File write to new route answering, with 1 file and with the 322 corpus files; memory after
/// many reloads against memory after the first.
pub async fn reload(samples: usize, reloads: usize) -> anyhow::Result<()> {
    let client = load::client();
    let stand = stand_in(&client).await?;
    println!(
        "## Reload latency: file written -> new route answering ({samples} reloads each, default 100 ms debounce)\n"
    );
    println!("| specs loaded | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|");
    // Tool schemas from Stripe's description (the default), and without (`stripe: false`).
    for (name, corpus, schemas) in [
        ("1 file", false, true),
        ("1 file, schemas off", false, false),
        ("322 corpus files + 1", true, true),
        ("322 corpus files + 1, schemas off", true, false),
    ] {
        let watched = watched_gateway(stand.addr, corpus, 100, schemas)?;
        let mut histogram = hdrhistogram::Histogram::<u64>::new(3)?;
        for i in 0..samples {
            let took = reload_once(&client, &watched, &format!("s{i}")).await?;
            histogram.record(took.as_micros() as u64)?;
        }
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} |",
            histogram.value_at_quantile(0.5) as f64 / 1000.0,
            histogram.value_at_quantile(0.99) as f64 / 1000.0,
            histogram.max() as f64 / 1000.0
        );
    }
    let watched = watched_gateway(stand.addr, true, 5, true)?;
    reload_once(&client, &watched, "first").await?;
    let first = watched.gateway.rss_kib().unwrap_or(0);
    println!(
        "\nMemory with the 322 corpus files (RSS, every {} reloads):\n",
        reloads / 5
    );
    println!("| reloads | RSS MiB | vs after the first |");
    println!("|---:|---:|---:|");
    let row = |count: usize, rss: u64| {
        println!(
            "| {count} | {:.1} | {:+.1} % |",
            rss as f64 / 1024.0,
            (rss as f64 - first as f64) * 100.0 / first as f64
        )
    };
    row(1, first);
    for i in 1..=reloads {
        reload_once(&client, &watched, &format!("m{i}")).await?;
        if i % (reloads / 5).max(1) == 0 {
            row(i + 1, watched.gateway.rss_kib().unwrap_or(0));
        }
    }
    println!("\n(target: within 5 % after 1000 reloads)");
    Ok(())
}

/// How hard and how long to soak.
pub struct Soak {
    pub rest_rate: u64,
    pub mcp_rate: u64,
    /// Length of one phase (quiet or reloading).
    pub phase: Duration,
    pub rounds: usize,
    /// Changes to the specs folder in all, spread evenly over the reloading phases.
    pub changes: usize,
}

/// Constant load on REST and MCP while the specs folder changes. Quiet and reloading phases
/// alternate over several rounds (the order flips every round), so both see the same machine.
pub async fn soak(soak: Soak) -> anyhow::Result<()> {
    let Soak {
        rest_rate,
        mcp_rate,
        phase,
        rounds,
        changes,
    } = soak;
    anyhow::ensure!(rounds > 0, "--rounds must be at least 1");
    let client = load::client();
    let stand = stand_in(&client).await?;
    let specs = tempfile::tempdir()?;
    let seed = seed_text();
    std::fs::write(specs.path().join("identity-sessions.yaml"), &seed)?;
    // The churned files declare ports 7101 and 7102; the config maps them to free ones.
    let (rest_port, mcp_port, churn_a, churn_b) = (
        procs::free_port(),
        procs::free_port(),
        procs::free_port(),
        procs::free_port(),
    );
    let config = specs
        .path()
        .join("..")
        .join(format!("capgate-soak-{}.yaml", std::process::id()));
    std::fs::write(
        &config,
        format!(
            "specs: {}\nadmin: {{ address: null }}\nlisten: {{ ports: {{ 8080: {rest_port}, 9090: {mcp_port}, 7101: {churn_a}, 7102: {churn_b} }} }}\n",
            specs.path().display()
        ),
    )?;
    let _gateway = procs::gateway_with_config(&config, stand.addr)?;
    procs::wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], mcp_port)),
        Duration::from_secs(10),
    )?;
    let id = stand.session.clone();
    let rest = Target::get(
        "REST",
        &format!("http://127.0.0.1:{rest_port}/v1/v1/identity/verification-sessions/{id}"),
    );
    let mut mcp = mcp_call(
        &format!("http://127.0.0.1:{mcp_port}/mcp/identity-sessions-mcp"),
        "stripe-get-identity-verification-sessions-2",
        serde_json::json!({"session": id}),
    );
    mcp.name = "MCP".into();
    load::fixed_concurrency(&client, &rest, 8, Duration::from_secs(1)).await;
    let load = || async {
        tokio::join!(
            load::fixed_rate(&rest, rest_rate, phase),
            load::fixed_rate(&mcp, mcp_rate, phase)
        )
    };
    let [mut quiet_rest, mut quiet_mcp, mut busy_rest, mut busy_mcp] =
        [(); 4].map(|_| Stats::empty());
    let per_phase = changes.div_ceil(rounds);
    let mut made = 0;
    // p99 while reloading / p99 of the adjacent quiet phase, per round and surface.
    let (mut rest_ratios, mut mcp_ratios) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let mut p99s = [[0.0; 2]; 2];
        for reloading in [round % 2 == 1, round % 2 == 0] {
            if reloading {
                let batch = per_phase.min(changes - made);
                let (dir, seed, first) = (specs.path().to_path_buf(), seed.clone(), made);
                let churn = tokio::spawn(async move {
                    churn(
                        &dir,
                        &seed,
                        first..first + batch,
                        phase / batch.max(1) as u32,
                        [7101, 7102],
                    )
                    .await
                });
                let (r, m) = load().await;
                made += churn.await??;
                p99s[1] = [r.p99_ms(), m.p99_ms()];
                busy_rest.merge(&r);
                busy_mcp.merge(&m);
            } else {
                let (r, m) = load().await;
                p99s[0] = [r.p99_ms(), m.p99_ms()];
                quiet_rest.merge(&r);
                quiet_mcp.merge(&m);
            }
        }
        rest_ratios.push(p99s[1][0] / p99s[0][0]);
        mcp_ratios.push(p99s[1][1] / p99s[0][1]);
        eprintln!(
            "round {round}: p99 reloading / quiet: REST {:.2}, MCP {:.2}",
            rest_ratios[round], mcp_ratios[round]
        );
    }
    println!(
        "## Soak: {rest_rate} REST + {mcp_rate} MCP requests/s, {rounds} rounds of {} s quiet and {} s reloading ({made} changes to the specs folder)\n",
        phase.as_secs(),
        phase.as_secs()
    );
    println!("| phase | surface | requests | failed | p50 ms | p99 ms |");
    println!("|---|---|---:|---:|---:|---:|");
    for (name, surface, stats) in [
        ("no reloads", "REST", &quiet_rest),
        ("no reloads", "MCP", &quiet_mcp),
        ("reloading", "REST", &busy_rest),
        ("reloading", "MCP", &busy_mcp),
    ] {
        println!(
            "| {name} | {surface} | {} | {} | {:.3} | {:.3} |",
            stats.ok + stats.errors,
            stats.errors,
            stats.p50_ms(),
            stats.p99_ms()
        );
    }
    let ratio = |busy: &Stats, quiet: &Stats| busy.p99_ms() / quiet.p99_ms();
    println!(
        "\np99 during reloads / p99 without, median of the {rounds} rounds: REST {:.2}, MCP {:.2} \
         (all rounds pooled: REST {:.2}, MCP {:.2}; target <= 1.10)",
        crate::median(rest_ratios),
        crate::median(mcp_ratios),
        ratio(&busy_rest, &quiet_rest),
        ratio(&busy_mcp, &quiet_mcp),
    );
    println!(
        "failed requests: {} (target 0)",
        busy_rest.errors + busy_mcp.errors + quiet_rest.errors + quiet_mcp.errors
    );
    Ok(())
}

/// Makes the changes numbered `changes`, one every `interval`: edits, broken edits and fixes, added and
/// deleted files, port moves, and edits of the seed that keep its routes.
async fn churn(
    dir: &Path,
    seed: &str,
    changes: std::ops::Range<usize>,
    interval: Duration,
    ports: [u16; 2],
) -> anyhow::Result<usize> {
    let count = changes.len();
    let mover = |port: u16, marker: &str| {
        probe(marker, port).replace("namespace: probe", "namespace: mover")
    };
    for i in changes {
        tokio::time::sleep(interval).await;
        match i % 7 {
            0 => write_atomically(&dir.join("churn.yaml"), &probe(&format!("c{i}"), ports[0]))?,
            1 => std::fs::write(
                dir.join("churn.yaml"),
                "naftiko: 1.0.0-alpha2\ncapability: [broken\n",
            )?,
            2 => std::fs::write(
                dir.join(format!("added-{i}.yaml")),
                probe(&format!("a{i}"), ports[0])
                    .replace("namespace: probe", &format!("namespace: added-{i}")),
            )?,
            3 => {
                if let Some(added) = std::fs::read_dir(dir)?
                    .flatten()
                    .find(|e| e.file_name().to_string_lossy().starts_with("added-"))
                {
                    std::fs::remove_file(added.path())?;
                }
            }
            4 => write_atomically(
                &dir.join("mover.yaml"),
                &mover(ports[i / 7 % 2], &format!("m{i}")),
            )?,
            5 => write_atomically(
                &dir.join("identity-sessions.yaml"),
                &seed.replace("6 operations.", &format!("6 operations (edit {i}).")),
            )?,
            _ => std::fs::write(dir.join("churn.yaml"), probe(&format!("f{i}"), ports[1]))?,
        }
    }
    Ok(count)
}

/// Plugin hook overhead measured in process: one call = a pooled instance, the hook, the
/// store dropped. Also REST throughput with and without redact-pii at the same concurrency.
pub async fn plugin(
    bound: Bound,
    iterations: usize,
    concurrency: usize,
    rate: u64,
    duration: Duration,
    rounds: usize,
) -> anyhow::Result<()> {
    use capgate_model::config::{FailurePolicy, PluginsConfig};
    use capgate_model::exchange::{UpstreamRequest, UpstreamResponse};
    use capgate_model::snapshot::TransformRef;
    use capgate_plugin::{CallContext, Plugins, RequestOutcome, ResponseOutcome};

    let plugins_dir = repo().join("plugins/target/wasm32-wasip2/release");
    anyhow::ensure!(
        plugins_dir.join("noop.wasm").exists(),
        "build the plugins first: (cd plugins && cargo build --release --target wasm32-wasip2)"
    );
    let config = PluginsConfig {
        dir: Some(plugins_dir),
        cache_dir: None,
        ..PluginsConfig::default()
    };
    let plugins = Arc::new(Plugins::new(&config)?);
    let blocking = plugins.clone();
    tokio::task::spawn_blocking(move || blocking.refresh()).await?;
    let transform = |file: &str| TransformRef {
        plugin: file.into(),
        config: Arc::from("{}"),
        on_error: FailurePolicy::FailClosed,
        timeout: Duration::from_millis(100),
        memory: 16 * 1024 * 1024,
        reuse: false,
    };
    let context = CallContext {
        capability: "identity-sessions",
        operation: "identity-sessions.getidentityverificationsessionssession",
        request_id: Arc::from("req_bench"),
    };
    let request = UpstreamRequest {
        method: Method::GET,
        path: "/v1/identity/verification_sessions/vs_1".into(),
        query: vec![("expand".into(), serde_json::json!(["verified_outputs"]))],
        headers: http::HeaderMap::new(),
        body: None,
        sealed: Default::default(),
    };
    let response_of = |size: usize| {
        let body = crate::scenarios::session_body(size);
        UpstreamResponse {
            status: http::StatusCode::OK,
            headers: http::HeaderMap::new(),
            body: Bytes::from(body),
            from_plugins: http::HeaderMap::new(),
        }
    };
    let noop = transform("noop.wasm");
    let noop_std = transform("noop_std.wasm");
    let redact = transform("redact_pii.wasm");
    // On-request hooks get no body (size 0); on-response hooks a session body of that size.
    let hooks = [
        ("no-op plugin (no std, no WASI), on-request", &noop, 0),
        (
            "no-op plugin with std (WASI linked), on-request",
            &noop_std,
            0,
        ),
        ("redact-pii, on-response, 1 KB body", &redact, 1024),
        ("redact-pii, on-response, 100 KB body", &redact, 100 * 1024),
    ];
    // Per hook, the p50 and p99 of every round (in microseconds).
    let mut p50s = vec![Vec::new(); hooks.len()];
    let mut p99s = vec![Vec::new(); hooks.len()];
    for _ in 0..rounds {
        for (i, &(label, hook, size)) in hooks.iter().enumerate() {
            let plugin = plugins
                .get(&hook.plugin)
                .ok_or_else(|| anyhow::anyhow!("{label}: {} is not loaded", hook.plugin))?;
            let calls = if size > 10_000 {
                iterations / 10
            } else {
                iterations
            };
            let response = response_of(size.max(1));
            let mut h = hdrhistogram::Histogram::<u64>::new(3).expect("valid");
            for call in 0..calls + 50 {
                let started = Instant::now();
                let ran = if size == 0 {
                    let outcome = plugins
                        .on_request(&plugin, hook, &context, request.clone())
                        .await;
                    matches!(outcome, Ok(RequestOutcome::Forward(_)))
                } else {
                    let outcome = plugins
                        .on_response(&plugin, hook, &context, response.clone())
                        .await;
                    matches!(outcome, Ok(ResponseOutcome::Forward(_)))
                };
                let elapsed = started.elapsed();
                anyhow::ensure!(ran, "{label}: the plugin did not run");
                if call >= 50 {
                    h.record(elapsed.as_nanos() as u64)?;
                }
            }
            p50s[i].push(h.value_at_quantile(0.5) as f64 / 1000.0);
            p99s[i].push(h.value_at_quantile(0.99) as f64 / 1000.0);
        }
    }
    println!(
        "## Plugin hooks, measured in process ({rounds} rounds of {iterations} calls, 1/10 of that at 100 KB; a fresh pooled instance per call)\n"
    );
    println!("| hook | p50 us (median) | p99 us (median) | p50 us, each round |");
    println!("|---|---:|---:|---|");
    for (i, (label, _, _)) in hooks.iter().enumerate() {
        let each: Vec<String> = p50s[i].iter().map(|v| format!("{v:.1}")).collect();
        println!(
            "| {label} | {:.1} | {:.1} | {} |",
            crate::median(p50s[i].clone()),
            crate::median(p99s[i].clone()),
            each.join(", ")
        );
    }
    println!("\nTargets: the no-op hook adds at most 20 us at p50 and 80 us at p99.");
    println!(
        "\n## Plugin hooks back to back in process: CPU per call (1 s per row; the process's CPU time, epoch thread included)\n"
    );
    println!("| hook | tasks | calls/s | CPU us per call |");
    println!("|---|---:|---:|---:|");
    for (label, hook, size) in [hooks[0], hooks[2]] {
        for tasks in [1, 2] {
            let response = (size > 0).then(|| response_of(size));
            let (calls, cpu) =
                back_to_back(&plugins, hook, &context, &request, response, tasks).await?;
            println!("| {label} | {tasks} | {calls:.0} | {cpu:.1} |");
        }
    }
    rest_with_and_without_plugin(bound, concurrency, rate, duration, rounds).await
}

/// Calls a hook from `tasks` tasks for a second, back to back (`on-response` with `response`,
/// else `on-request`): calls per second and the process's CPU time per call (us). Says whether
/// concurrent calls slow each other down, and what a call costs with nothing else running.
async fn back_to_back(
    plugins: &Arc<capgate_plugin::Plugins>,
    hook: &capgate_model::snapshot::TransformRef,
    context: &capgate_plugin::CallContext<'static>,
    request: &capgate_model::exchange::UpstreamRequest,
    response: Option<capgate_model::exchange::UpstreamResponse>,
    tasks: usize,
) -> anyhow::Result<(f64, f64)> {
    let period = Duration::from_secs(1);
    let before = procs::cpu_time("self");
    let started = Instant::now();
    let workers: Vec<_> = (0..tasks)
        .map(|_| {
            let (plugins, hook, context) = (plugins.clone(), hook.clone(), context.clone());
            let plugin = plugins.get(&hook.plugin).expect("the plugin is loaded");
            let (request, response) = (request.clone(), response.clone());
            tokio::spawn(async move {
                let mut calls = 0u64;
                while started.elapsed() < period {
                    let ran = match &response {
                        None => plugins
                            .on_request(&plugin, &hook, &context, request.clone())
                            .await
                            .is_ok(),
                        Some(r) => plugins
                            .on_response(&plugin, &hook, &context, r.clone())
                            .await
                            .is_ok(),
                    };
                    anyhow::ensure!(ran, "the plugin failed");
                    calls += 1;
                    // Let the other tasks on this worker have their turn.
                    if calls.is_multiple_of(8) {
                        tokio::task::yield_now().await;
                    }
                }
                Ok(calls)
            })
        })
        .collect();
    let mut calls = 0;
    for worker in workers {
        calls += worker.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = procs::cpu_time("self")
        .zip(before)
        .and_then(|(after, before)| after.checked_sub(before))
        .map_or(f64::NAN, |used| {
            used.as_secs_f64() * 1e6 / calls.max(1) as f64
        });
    Ok((calls as f64 / elapsed, cpu))
}

/// A VerificationSession-shaped JSON body of about `size` bytes.
pub fn session_body(size: usize) -> Vec<u8> {
    let mut value = serde_json::json!({
        "id": "vs_bench", "object": "identity.verification_session", "status": "verified",
        "verified_outputs": {"first_name": "Jenny", "last_name": "Rosen", "dob": {"day": 1, "month": 1, "year": 1990},
            "address": {"line1": "1 Main St", "city": "Springfield", "postal_code": "12345", "country": "US"}, "id_number": "000000000"},
        "provided_details": {"email": "jenny@example.com", "phone": "+15555550100"},
        "metadata": {}
    });
    let mut i = 0;
    while serde_json::to_vec(&value).expect("serializes").len() < size {
        value["metadata"][format!("key_{i}")] = serde_json::Value::String("x".repeat(48));
        i += 1;
    }
    serde_json::to_vec(&value).expect("serializes")
}

/// The plugin bound for the throughput comparison.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Bound {
    RedactPii,
    Noop,
    NoopStd,
}

impl Bound {
    fn file(self) -> &'static str {
        match self {
            Bound::RedactPii => "redact_pii.wasm",
            Bound::Noop => "noop.wasm",
            Bound::NoopStd => "noop_std.wasm",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Bound::RedactPii => "redact-pii",
            Bound::Noop => "the no-op plugin",
            Bound::NoopStd => "the no-op plugin with std",
        }
    }
}

/// REST throughput of the same retrieve with and without a plugin bound, same gateway.
async fn rest_with_and_without_plugin(
    bound: Bound,
    concurrency: usize,
    rate: u64,
    duration: Duration,
    rounds: usize,
) -> anyhow::Result<()> {
    let client = load::client();
    let stand = stand_in(&client).await?;
    let specs = tempfile::tempdir()?;
    let seed = seed_text();
    std::fs::write(specs.path().join("identity-sessions.yaml"), &seed)?;
    // A twin of the seed on other paths and namespaces, with no plugin bound.
    let twin = seed
        .replace("/v1/v1/", "/plain/v1/")
        .replace("identity-sessions", "plain-sessions");
    std::fs::write(specs.path().join("plain-sessions.yaml"), twin)?;
    let plugins_dir = repo().join("plugins/target/wasm32-wasip2/release");
    let rest_port = procs::free_port();
    let config = specs
        .path()
        .join("..")
        .join(format!("capgate-plugin-bench-{}.yaml", std::process::id()));
    std::fs::write(
        &config,
        format!(
            "specs: {}\nadmin: {{ address: null }}\nlisten: {{ ports: {{ 8080: {rest_port}, 9090: {} }} }}\nreload: {{ watch: false }}\nplugins:\n  dir: {}\n  bindings:\n    - plugin: {}\n      capabilities: [identity-sessions]\n      operations: [\"*\"]\n",
            specs.path().display(),
            procs::free_port(),
            plugins_dir.display(),
            bound.file(),
        ),
    )?;
    let gateway = procs::gateway_with_config(&config, stand.addr)?;
    procs::wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], rest_port)),
        Duration::from_secs(10),
    )?;
    let id = &stand.session;
    let with = Target::get(
        &format!("with {}", bound.name()),
        &format!(
            "http://127.0.0.1:{rest_port}/v1/v1/identity/verification-sessions/{id}?expand[]=verified_outputs"
        ),
    );
    let without = Target::get(
        "without plugin",
        &format!(
            "http://127.0.0.1:{rest_port}/plain/v1/identity/verification-sessions/{id}?expand[]=verified_outputs"
        ),
    );
    let (status, body) = load::once(&client, &with).await?;
    anyhow::ensure!(
        status == 200
            && (bound != Bound::RedactPii || String::from_utf8_lossy(&body).contains("[redacted]")),
        "the plugin is not applied: {status}"
    );
    for target in [&with, &without] {
        load::fixed_concurrency(&client, target, concurrency, Duration::from_secs(1)).await;
    }
    let targets = [&without, &with];
    let procs = [&gateway, &stand.proc];
    let compared = alternate(targets, procs, rounds, "", |i| {
        load::fixed_concurrency(&client, targets[i], concurrency, duration)
    })
    .await?;
    table(
        &format!(
            "REST at concurrency {concurrency}, a verified session retrieved with verified_outputs expanded"
        ),
        &compared.series.iter().collect::<Vec<_>>(),
    );
    println!(
        "\nthroughput with {} / without: {:.2} (target for redact-pii >= 0.90)",
        bound.name(),
        compared.series[1].rps() / compared.series[0].rps()
    );
    compared.print_cpu(bound);
    if rate == 0 {
        return Ok(());
    }
    // The same comparison below saturation: what the plugin adds to latency, and to the
    // gateway's CPU when it does not compete with the load generator and the stand-in for it.
    let compared = alternate(targets, procs, rounds, "fixed rate, ", |i| {
        load::fixed_rate(targets[i], rate, duration)
    })
    .await?;
    let series = &compared.series;
    table(
        &format!("REST at a fixed rate of {rate} requests/s, the same retrieve"),
        &series.iter().collect::<Vec<_>>(),
    );
    println!(
        "\n{} adds {:.3} ms at p50 and {:.3} ms at p99",
        bound.name(),
        series[1].p50() - series[0].p50(),
        series[1].p99() - series[0].p99()
    );
    compared.print_cpu(bound);
    Ok(())
}

/// Runs of the route without the plugin and the route with it, and the CPU per request (us)
/// the gateway and the stand-in spent in each run: far steadier than throughput on a shared
/// machine, and it says where the time goes.
pub(crate) struct Compared {
    pub(crate) series: [Series; 2],
    pub(crate) gateway_cpu: [Vec<f64>; 2],
    pub(crate) stand_in_cpu: [Vec<f64>; 2],
}

/// Runs `targets` (without, with) alternately for `rounds` (the order flips every round; `run`
/// is given the index of the target to load), reading the CPU time of `procs` (gateway,
/// stand-in) around each run.
pub(crate) async fn alternate<F: Future<Output = Stats>>(
    targets: [&Target; 2],
    procs: [&Proc; 2],
    rounds: usize,
    phase: &str,
    mut run: impl FnMut(usize) -> F,
) -> anyhow::Result<Compared> {
    let mut compared = Compared {
        series: targets.map(|t| Series::new(&t.name)),
        gateway_cpu: [Vec::new(), Vec::new()],
        stand_in_cpu: [Vec::new(), Vec::new()],
    };
    let [gateway, stand_in] = procs;
    for round in 0..rounds {
        eprintln!("{phase}round {}/{rounds}", round + 1);
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let before = (gateway.cpu_time(), stand_in.cpu_time());
            let stats = run(i).await;
            let read = "reading a process's CPU time";
            let gateway_cpu = gateway.cpu_per_request(before.0, stats.ok).context(read)?;
            let stand_in_cpu = stand_in.cpu_per_request(before.1, stats.ok).context(read)?;
            compared.gateway_cpu[i].push(gateway_cpu);
            compared.stand_in_cpu[i].push(stand_in_cpu);
            compared.series[i].runs.push(stats);
        }
    }
    Ok(compared)
}

impl Compared {
    /// Prints the gateway's and the stand-in's CPU per request, without and with the plugin
    /// (the median of each's rounds).
    fn print_cpu(&self, bound: Bound) {
        let [gateway_without, gateway_with] = self.gateway_cpu.clone().map(crate::median);
        let [stand_in_without, stand_in_with] = self.stand_in_cpu.clone().map(crate::median);
        println!(
            "CPU per request (median of rounds): gateway {gateway_without:.0} us without, {gateway_with:.0} us with {} (+{:.0}); stand-in {stand_in_without:.0} / {stand_in_with:.0} us",
            bound.name(),
            gateway_with - gateway_without,
        );
    }
}

/// REST latency at a fixed rate with the 322 corpus files loaded, alone and while `/status`
/// (about 1.2 MB with the corpus) is polled at `polls` per second, in alternating rounds.
pub async fn status_poll(
    corpus: &Path,
    rate: u64,
    polls: u64,
    duration: Duration,
    rounds: usize,
) -> anyhow::Result<()> {
    let client = load::client();
    let sim = unverified_stand_in(&client).await?;
    let (rest_port, mcp_port, admin_port) =
        (procs::free_port(), procs::free_port(), procs::free_port());
    let admin = format!("127.0.0.1:{admin_port}");
    let _gateway = procs::gateway(
        corpus,
        sim.addr,
        &[(8080, rest_port), (9090, mcp_port)],
        &["--no-watch", "--admin", &admin],
    )?;
    let through = Target::get(
        "REST",
        &format!(
            "http://127.0.0.1:{rest_port}/v1/v1/identity/verification-sessions/{}",
            sim.session
        ),
    );
    let started = Instant::now();
    while !matches!(load::once(&client, &through).await, Ok((200, _))) {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "capgate did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = Target::get("status", &format!("http://{admin}/status"));
    let (code, body) = load::once(&client, &status).await?;
    anyhow::ensure!(code == 200, "/status answers {code}");
    // Warm up, then alternate which goes first.
    load::fixed_rate(&through, rate, Duration::from_secs(1)).await;
    let (mut quiet, mut polled) = (
        Series::new("REST alone"),
        Series::new(&format!("REST while /status is polled {polls}/s")),
    );
    let mut poll_times = Vec::new();
    for round in 0..rounds {
        for polling in if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        } {
            if !polling {
                quiet
                    .runs
                    .push(load::fixed_rate(&through, rate, duration).await);
                continue;
            }
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let poller = {
                let (stop, client, status) = (stop.clone(), client.clone(), status.clone());
                tokio::spawn(async move {
                    let mut times = Vec::new();
                    let mut tick =
                        tokio::time::interval(Duration::from_millis(1000 / polls.max(1)));
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        tick.tick().await;
                        let sent = Instant::now();
                        if let Ok((200, _)) = load::once(&client, &status).await {
                            times.push(sent.elapsed().as_secs_f64() * 1000.0);
                        }
                    }
                    times
                })
            };
            polled
                .runs
                .push(load::fixed_rate(&through, rate, duration).await);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            poll_times.extend(poller.await?);
        }
    }
    println!(
        "## /status polled while REST runs at {rate} requests/s (322 corpus files; {rounds} rounds of {}s)",
        duration.as_secs()
    );
    table("REST latency", &[&quiet, &polled]);
    println!(
        "\npolling /status ({:.2} MB, {} polls, median {:.2} ms each) moves REST p50 by {:+.3} ms and p99 by {:+.3} ms (target: p50 < 0.05 ms)",
        body.len() as f64 / 1e6,
        poll_times.len(),
        crate::median(poll_times.clone()),
        polled.p50() - quiet.p50(),
        polled.p99() - quiet.p99()
    );
    Ok(())
}
