//! Rate limits shared by two `capgate serve` processes through a real `redis-server` (issue 19):
//! together they hold one consumer's limit; when Redis hangs or stops, decisions fall back to
//! local counting without waiting past the budget; when it returns, limits are shared again.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod support;

use support::{Running, free_port, redis, signal};

const KEY: &str = "cg_0000000000000000000000000000000000000000000f1ee7";
/// The consumer's limit: 20 calls a second, 20 at once.
const RATE: u64 = 20;
/// What a decision may wait for Redis in this test (the default is 50 ms; the test machine is
/// loaded by the other tests).
const BUDGET_MS: u64 = 150;

/// Starts `capgate serve` with the seed on `rest` (declared 8080) and its admin on `admin`.
fn gateway(dir: &Path, name: &str, sim: &str, redis: u16, rest: u16, admin: u16) -> Running {
    let seed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../specs/identity-sessions.yaml"),
    )
    .unwrap();
    let specs = dir.join(format!("specs-{name}"));
    std::fs::create_dir_all(&specs).unwrap();
    std::fs::write(specs.join("identity-sessions.yaml"), seed).unwrap();
    let config = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &config,
        format!(
            "specs: {specs}\nlisten:\n  ports: {{8080: {rest}, 9090: 0}}\nadmin:\n  address: 127.0.0.1:{admin}\nupstreams:\n  - namespace: \"*\"\n    base_uri: {sim}\nenv:\n  STRIPE_API_KEY: {key}\nconsumers:\n  file: {consumers}\n  require:\n    - capability: \"*\"\nlimits:\n  store: redis://127.0.0.1:{redis}/0\n  store_timeout: {BUDGET_MS}\n  replicas: 2\n  max_connections_per_peer: 0\n",
            specs = specs.display(),
            key = stripe_sim::DEMO_KEY,
            consumers = dir.join("consumers.yaml").display(),
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_capgate"))
        .args(["serve", "--config", &config.display().to_string()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Running(child)
}

async fn ready(http: &reqwest::Client, admin: u16) {
    let started = Instant::now();
    loop {
        let ok = http
            .get(format!("http://127.0.0.1:{admin}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if ok {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "a gateway never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Counts of answers over a run.
#[derive(Default)]
struct Tally {
    admitted: AtomicU64,
    limited: AtomicU64,
    other: AtomicU64,
    slowest_ms: AtomicU64,
}

/// Four callers per gateway, as fast as they can, for `length`.
async fn drive(http: &reqwest::Client, ports: &[u16], length: Duration) -> Vec<Arc<Tally>> {
    let until = Instant::now() + length;
    let mut tallies = Vec::new();
    let mut tasks = Vec::new();
    for &port in ports {
        let tally = Arc::new(Tally::default());
        tallies.push(tally.clone());
        for _ in 0..4 {
            let (http, tally) = (http.clone(), tally.clone());
            let url =
                format!("http://127.0.0.1:{port}/v1/v1/identity/verification-sessions?limit=1");
            tasks.push(tokio::spawn(async move {
                while Instant::now() < until {
                    let started = Instant::now();
                    let status = http
                        .get(&url)
                        .bearer_auth(KEY)
                        .send()
                        .await
                        .map(|r| r.status().as_u16());
                    let took = started.elapsed().as_millis() as u64;
                    tally.slowest_ms.fetch_max(took, Ordering::Relaxed);
                    match status {
                        Ok(200) => tally.admitted.fetch_add(1, Ordering::Relaxed),
                        Ok(429) => tally.limited.fetch_add(1, Ordering::Relaxed),
                        _ => tally.other.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    tallies
}

async fn metric(http: &reqwest::Client, admin: u16, line_start: &str) -> u64 {
    let text = http
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn until_store_is(http: &reqwest::Client, admins: &[u16], up: u64) {
    let started = Instant::now();
    for &admin in admins {
        while metric(http, admin, "capgate_limit_store_up ").await != up {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "capgate_limit_store_up never became {up} on admin {admin}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn total(tallies: &[Arc<Tally>], pick: impl Fn(&Tally) -> &AtomicU64) -> u64 {
    tallies
        .iter()
        .map(|t| pick(t).load(Ordering::Relaxed))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_hold_one_limit_through_redis_and_fall_back_when_it_goes() {
    let dir = tempfile::tempdir().unwrap();
    let digest = capgate_model::consumers::hex(&capgate_model::consumers::digest(KEY));
    std::fs::write(
        dir.path().join("consumers.yaml"),
        format!(
            "consumers:\n  - name: fleet\n    keys:\n      - sha256: {digest}\n        prefix: cg_0000\n    scopes:\n      - access: any\n    limits:\n      - rate: {RATE}\n        burst: {RATE}\n"
        ),
    )
    .unwrap();
    let sim = stripe_sim::StripeSim::start(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let redis_port = free_port();
    let mut store = redis(redis_port);
    let (rest_a, rest_b, admin_a, admin_b) = (free_port(), free_port(), free_port(), free_port());
    let _a = gateway(
        dir.path(),
        "a",
        &sim.base_url(),
        redis_port,
        rest_a,
        admin_a,
    );
    let _b = gateway(
        dir.path(),
        "b",
        &sim.base_url(),
        redis_port,
        rest_b,
        admin_b,
    );
    // The gateway's own choice of crypto provider (reqwest is built without one).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    ready(&http, admin_a).await;
    ready(&http, admin_b).await;
    let admins = [admin_a, admin_b];

    // Shared: over 10 s, both together admit the burst and then the rate, within 10 %.
    let tallies = drive(&http, &[rest_a, rest_b], Duration::from_secs(10)).await;
    let admitted = total(&tallies, |t| &t.admitted);
    let expected = RATE + 10 * RATE;
    eprintln!(
        "shared: admitted {admitted} of {} (expected {expected}; by gateway {:?})",
        admitted + total(&tallies, |t| &t.limited),
        tallies
            .iter()
            .map(|t| t.admitted.load(Ordering::Relaxed))
            .collect::<Vec<_>>()
    );
    assert!(
        admitted.abs_diff(expected) * 10 <= expected,
        "admitted {admitted}, expected {expected} within 10 % (limited {}, other {})",
        total(&tallies, |t| &t.limited),
        total(&tallies, |t| &t.other)
    );
    for tally in &tallies {
        assert!(
            tally.admitted.load(Ordering::Relaxed) > 0,
            "one gateway admitted nothing"
        );
        assert!(
            tally.limited.load(Ordering::Relaxed) > 0,
            "one gateway was never limited"
        );
    }
    assert_eq!(
        total(&tallies, |t| &t.other),
        0,
        "answers other than 200 and 429"
    );

    // Redis hangs: decisions fall back to counting here (half the limit each) within the
    // budget, and no request waits for Redis past it (with room for the loaded machine).
    signal(&store, "-STOP");
    let tallies = drive(&http, &[rest_a, rest_b], Duration::from_secs(2)).await;
    signal(&store, "-CONT");
    assert_eq!(total(&tallies, |t| &t.other), 0);
    assert!(total(&tallies, |t| &t.admitted) > 0);
    let slowest = tallies
        .iter()
        .map(|t| t.slowest_ms.load(Ordering::Relaxed))
        .max()
        .unwrap();
    assert!(
        slowest < BUDGET_MS + 1000,
        "a request took {slowest} ms while Redis hung"
    );
    for admin in admins {
        let fallback = metric(
            &http,
            admin,
            "capgate_limit_decisions_total{consumer=\"fleet\",decision=\"admitted\",store=\"fallback\"}",
        )
        .await;
        assert!(fallback > 0, "admin {admin}: no decision fell back");
    }

    // Redis answers again: limits are shared again.
    until_store_is(&http, &admins, 1).await;
    let shared_before = metric(
        &http,
        admin_a,
        "capgate_limit_decisions_total{consumer=\"fleet\",decision=\"admitted\",store=\"redis\"}",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    drive(&http, &[rest_a], Duration::from_millis(300)).await;
    let shared_after = metric(
        &http,
        admin_a,
        "capgate_limit_decisions_total{consumer=\"fleet\",decision=\"admitted\",store=\"redis\"}",
    )
    .await;
    assert!(
        shared_after > shared_before,
        "decisions are not shared again"
    );

    // Redis stops altogether: the same fallback; started again on its port: shared again.
    drop(store);
    let tallies = drive(&http, &[rest_a, rest_b], Duration::from_secs(1)).await;
    assert_eq!(total(&tallies, |t| &t.other), 0);
    assert!(total(&tallies, |t| &t.admitted) > 0);
    until_store_is(&http, &admins, 0).await;
    store = redis(redis_port);
    until_store_is(&http, &admins, 1).await;
    drop(store);
}
