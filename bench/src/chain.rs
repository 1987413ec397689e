//! The consumer chain of issue 19: an API key, a rate limit and a no-op plugin on a route,
//! against the same route bare, in one gateway; then the same chain with its limit counted in
//! a real `redis-server` against in-process counting, and the chain with the plugin's
//! instances reused (`instances: reused`) against the bare route.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::hop;
use crate::load::{self, Target};
use crate::procs::{self, Proc};
use crate::scenarios::{alternate, repo, seed_text, stand_in};
use crate::{Series, table};

const KEY: &str = "cg_0000000000000000000000000000000000000000000bench";

/// Writes the specs (the seed, and a bare twin on other paths), the consumers file (one
/// consumer whose limit is never reached, so every call is counted and admitted) and a config
/// (`store`: `local` or a Redis URL) into `dir`; the config's path and the REST port.
fn setup(dir: &Path, store: &str) -> anyhow::Result<(std::path::PathBuf, u16)> {
    let specs = dir.join(format!("specs-{}", store.len()));
    std::fs::create_dir_all(&specs)?;
    let seed = seed_text();
    std::fs::write(specs.join("identity-sessions.yaml"), &seed)?;
    let twin = seed
        .replace("/v1/v1/", "/plain/v1/")
        .replace("identity-sessions", "plain-sessions");
    std::fs::write(specs.join("plain-sessions.yaml"), twin)?;
    // And one with the key and the limit but no plugin, to tell their costs apart.
    let keyed = seed
        .replace("/v1/v1/", "/keyed/v1/")
        .replace("identity-sessions", "keyed-sessions");
    std::fs::write(specs.join("keyed-sessions.yaml"), keyed)?;
    // And the whole chain with the plugin's instances reused across calls.
    let reused = seed
        .replace("/v1/v1/", "/reused/v1/")
        .replace("identity-sessions", "reused-sessions");
    std::fs::write(specs.join("reused-sessions.yaml"), reused)?;
    let digest = capgate_model::consumers::hex(&capgate_model::consumers::digest(KEY));
    let consumers = dir.join("consumers.yaml");
    std::fs::write(
        &consumers,
        format!(
            "consumers:\n  - name: bench\n    keys:\n      - sha256: {digest}\n        prefix: cg_0000\n    scopes:\n      - access: any\n    limits:\n      - rate: 1000000\n        burst: 1000000\n"
        ),
    )?;
    let rest_port = procs::free_port();
    let config = dir.join(format!("capgate-chain-{}.yaml", store.len()));
    std::fs::write(
        &config,
        format!(
            "specs: {}\nadmin: {{ address: null }}\nlisten: {{ ports: {{ 8080: {rest_port}, 9090: {} }} }}\nreload: {{ watch: false }}\nconsumers:\n  file: {}\n  require:\n    - capability: identity-sessions\n    - capability: keyed-sessions\n    - capability: reused-sessions\nlimits:\n  store: {store}\nplugins:\n  dir: {}\n  bindings:\n    - plugin: noop.wasm\n      capabilities: [identity-sessions]\n      operations: [\"*\"]\n    - plugin: noop.wasm\n      capabilities: [reused-sessions]\n      operations: [\"*\"]\n      instances: reused\n",
            specs.display(),
            procs::free_port(),
            consumers.display(),
            repo()
                .join("plugins/target/wasm32-wasip2/release")
                .display(),
        ),
    )?;
    Ok((config, rest_port))
}

fn redis_server(port: u16) -> anyhow::Result<Proc> {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("redis-server (Debian's redis-server package): {e}"))?;
    procs::wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(10),
    )?;
    Ok(Proc { child })
}

/// How the gateways run: their workers, and the CPUs they are pinned to.
pub struct Shape {
    /// `serve --workers` (`None`: `serve`'s default, one per core).
    pub workers: Option<u16>,
    /// The gateways' CPUs; this process, its load, the stand-in and Redis run on the others.
    /// Empty: nothing is pinned.
    pub gateway_cpus: Vec<usize>,
}

pub async fn chain(
    rate: u64,
    concurrency: usize,
    duration: Duration,
    rounds: usize,
    shape: Shape,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        hop::which("wrk"),
        "`wrk` is not installed: apt-get install wrk (Debian package)"
    );
    anyhow::ensure!(
        repo()
            .join("plugins/target/wasm32-wasip2/release/noop.wasm")
            .exists(),
        "build the plugins first: (cd plugins && cargo build --release --target wasm32-wasip2)"
    );
    if !shape.gateway_cpus.is_empty() {
        let others = crate::cpus::others(&shape.gateway_cpus, "gateway")?;
        // The stand-in and Redis, started below, inherit this.
        crate::cpus::pin_this_process(&others)?;
    }
    let client = load::client();
    let stand = stand_in(&client).await?;
    let dir = tempfile::tempdir()?;
    let redis_port = procs::free_port();
    let _redis = redis_server(redis_port)?;
    let (local_config, local_port) = setup(dir.path(), "local")?;
    let (shared_config, shared_port) =
        setup(dir.path(), &format!("redis://127.0.0.1:{redis_port}/0"))?;
    let (workers, cpus) = (shape.workers, &shape.gateway_cpus);
    let local = procs::gateway_shaped(&local_config, stand.addr, workers, cpus)?;
    let shared = procs::gateway_shaped(&shared_config, stand.addr, workers, cpus)?;
    for port in [local_port, shared_port] {
        procs::wait_for_port(
            SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(20),
        )?;
    }
    let id = &stand.session;
    let route = |port: u16, prefix: &str| {
        format!("http://127.0.0.1:{port}/{prefix}/v1/identity/verification-sessions/{id}")
    };
    let bare = Target::get("bare route", &route(local_port, "plain"));
    let mut full = Target::get(
        "API key + rate limit + no-op plugin",
        &route(local_port, "v1"),
    );
    full.headers = vec![("authorization".into(), format!("Bearer {KEY}"))];
    let mut keyed = full.clone();
    keyed.name = "API key + rate limit".into();
    keyed.uri = route(local_port, "keyed").parse()?;
    let mut reused = full.clone();
    reused.name = "the same, the plugin's instances reused".into();
    reused.uri = route(local_port, "reused").parse()?;
    let mut redis = full.clone();
    redis.name = "the same, limit counted in Redis".into();
    redis.uri = route(shared_port, "v1").parse()?;
    for target in [&bare, &keyed, &full, &reused, &redis] {
        let (status, _) = load::once(&client, target).await?;
        anyhow::ensure!(status == 200, "{}: {status}", target.name);
        load::fixed_concurrency(&client, target, concurrency, Duration::from_secs(1)).await;
    }
    let (status, _) = load::once(&client, &Target::get("no key", &route(local_port, "v1"))).await?;
    anyhow::ensure!(status == 401, "the chain does not ask for a key: {status}");
    match workers {
        Some(workers) => print!("Both gateways run `serve --workers {workers}`"),
        None => print!("Both gateways run `serve` with its default workers (one per core)"),
    }
    if cpus.is_empty() {
        println!(", nothing pinned.");
    } else {
        println!(", pinned to CPUs {cpus:?}; the load, the stand-in and Redis run on the others.");
    }

    let runs = Runs {
        scripts: dir.path(),
        procs: [&local, &stand.proc],
        rounds,
        concurrency,
        rate,
        duration,
    };
    runs.closed(
        [&bare, &full],
        "",
        "a session retrieved, one gateway",
        "chain / bare",
        " (target >= 0.85)",
        "with the chain",
    )
    .await?;
    // What the key and the limit cost without the plugin.
    runs.closed(
        [&bare, &keyed],
        "without the plugin, ",
        "the key and the limit alone",
        "key + limit / bare",
        "",
        "with the key and the limit",
    )
    .await?;
    // The chain with `instances: reused`: the no-op plugin's calls in instances earlier calls
    // left, rather than a fresh one per call.
    runs.closed(
        [&bare, &reused],
        "reused instances, ",
        "the chain with `instances: reused`",
        "chain (reused instances) / bare",
        " (target >= 0.85)",
        "with the chain",
    )
    .await?;
    runs.paced(
        [&bare, &reused],
        "reused instances, fixed rate, ",
        "the chain with `instances: reused`",
        "the chain (reused instances)",
    )
    .await?;
    runs.paced(
        [&bare, &full],
        "fixed rate, ",
        "the same retrieve",
        "the chain",
    )
    .await?;

    // In-process counting against Redis, each on its own gateway, alternating.
    let mut in_process = Series::new(&full.name);
    let mut in_redis = Series::new(&redis.name);
    for round in 0..rounds {
        eprintln!("redis round {}/{rounds}", round + 1);
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            if i == 0 {
                in_process
                    .runs
                    .push(load::fixed_rate(&full, rate, duration).await);
            } else {
                in_redis
                    .runs
                    .push(load::fixed_rate(&redis, rate, duration).await);
            }
        }
    }
    table(
        &format!(
            "The chain at {rate} requests/s, its limit in process and in Redis (two gateways)"
        ),
        &[&in_process, &in_redis],
    );
    println!(
        "\nRedis adds {:.3} ms at p50 (target <= 0.15) and {:.3} ms at p99",
        in_redis.p50() - in_process.p50(),
        in_redis.p99() - in_process.p99()
    );
    drop(shared);
    Ok(())
}

/// What every comparison of the bench shares: where wrk's scripts go, the gateway and stand-in
/// whose CPU is read, and the load's shape.
struct Runs<'a> {
    scripts: &'a Path,
    /// The gateway (whose routes are compared) and the stand-in.
    procs: [&'a Proc; 2],
    rounds: usize,
    concurrency: usize,
    rate: u64,
    duration: Duration,
}

impl Runs<'_> {
    /// `pair` (the bare route first) at fixed concurrency through `wrk -t1`, alternating: its
    /// table, then the throughput ratio, each side's gateway CPU per request, and how busy the
    /// gateway was.
    async fn closed(
        &self,
        pair: [&Target; 2],
        phase: &str,
        title: &str,
        ratio: &str,
        target: &str,
        with: &str,
    ) -> anyhow::Result<()> {
        let scripts = [0, 1].map(|i| self.scripts.join(format!("target-{i}.lua")));
        for (t, script) in pair.iter().zip(&scripts) {
            std::fs::write(script, hop::wrk_script(t))?;
        }
        let mut runs: [Vec<hop::Closed>; 2] = [Vec::new(), Vec::new()];
        for round in 0..self.rounds {
            eprintln!("{phase}round {}/{}", round + 1, self.rounds);
            let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                let gateway = self.procs[0];
                let before = gateway.cpu_time();
                let seconds = self.duration.as_secs();
                let mut run = hop::wrk(pair[i], &scripts[i], self.concurrency, seconds)?;
                let requests = run.rps * seconds as f64;
                run.cpu_us = hop::per_request(before, gateway.cpu_time(), requests);
                runs[i].push(run);
            }
        }
        let of = |i: usize, field: fn(&hop::Closed) -> f64| {
            crate::median(runs[i].iter().map(field).collect())
        };
        let cpu = |run: &hop::Closed| run.cpu_us.unwrap_or(f64::NAN);
        println!(
            "\n### REST at concurrency {} (wrk, median of {} rounds): {title}\n",
            self.concurrency, self.rounds
        );
        println!("| target | req/s | gateway CPU us/request | p50 ms | p99 ms | errors |");
        println!("|---|---:|---:|---:|---:|---:|");
        for (i, t) in pair.iter().enumerate() {
            let errors: u64 = runs[i].iter().map(|r| r.errors).sum();
            println!(
                "| {} | {:.0} | {:.1} | {:.3} | {:.3} | {errors} |",
                t.name,
                of(i, |r| r.rps),
                of(i, cpu),
                of(i, |r| r.p50_ms),
                of(i, |r| r.p99_ms),
            );
        }
        let [rps_bare, rps_with] = [0, 1].map(|i| of(i, |r| r.rps));
        let [cpu_bare, cpu_with] = [0, 1].map(|i| of(i, cpu));
        println!(
            "\nthroughput {ratio}: {:.2}{target}; gateway CPU per request {cpu_bare:.1} us bare, {cpu_with:.1} us {with} (bare / {with}: {:.2})",
            rps_with / rps_bare,
            cpu_bare / cpu_with,
        );
        // Near the gateway's CPUs' count, the gateway was the bottleneck; well below, the load
        // side was, and the throughput ratio understates what the chain costs.
        println!(
            "gateway busy: {:.2} cores bare, {:.2} {with}",
            cpu_bare * rps_bare / 1e6,
            cpu_with * rps_with / 1e6
        );
        Ok(())
    }

    /// `pair` (the bare route first) at the fixed rate, alternating: its table, then what the
    /// second adds at p50 and p99.
    async fn paced(
        &self,
        pair: [&Target; 2],
        phase: &str,
        title: &str,
        what: &str,
    ) -> anyhow::Result<()> {
        let compared = alternate(pair, self.procs, self.rounds, phase, |i| {
            load::fixed_rate(pair[i], self.rate, self.duration)
        })
        .await?;
        let series = &compared.series;
        table(
            &format!("REST at a fixed rate of {} requests/s: {title}", self.rate),
            &series.iter().collect::<Vec<_>>(),
        );
        println!(
            "\n{what} adds {:.3} ms at p50 (target <= 0.1) and {:.3} ms at p99",
            series[1].p50() - series[0].p50(),
            series[1].p99() - series[0].p99()
        );
        Ok(())
    }
}
