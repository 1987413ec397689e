//! `capgate-bench`: capgate against the Stripe stand-in, measured in one run.
//!
//! Every comparison alternates its variants in several rounds within one process run and
//! reports ratios and differences, because the machine is shared and noisy: absolute numbers from
//! different runs are not comparable, ratios from one run are. Throughput is the median of the
//! rounds; latency percentiles are taken over every request of every round.

mod chain;
mod cpus;
mod fleet;
mod hop;
mod load;
mod null_proxy;
mod procs;
mod scenarios;
mod traced;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

use load::{Stats, Target};

#[derive(Parser)]
#[command(about = "Benchmarks of capgate against the Stripe stand-in")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// REST through capgate versus the stand-in directly: fixed rate and fixed concurrency.
    Rest {
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// A minimal hyper reverse proxy (started by `rest` as a process of its own).
    #[command(hide = true)]
    NullProxy {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        upstream: SocketAddr,
    },
    /// MCP tools/call versus the REST route versus the stand-in directly.
    Mcp {
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Reload latency (file written to new route answering) and memory after many reloads.
    Reload {
        #[arg(long, default_value_t = 50)]
        samples: usize,
        #[arg(long, default_value_t = 1000)]
        reloads: usize,
    },
    /// Constant REST and MCP load while the specs folder changes.
    Soak {
        #[arg(long, default_value_t = 1500)]
        rest_rate: u64,
        #[arg(long, default_value_t = 500)]
        mcp_rate: u64,
        /// Seconds of each phase (quiet and reloading) per round.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Rounds of one quiet and one reloading phase, in alternating order.
        #[arg(long, default_value_t = 4)]
        rounds: usize,
        /// Changes to the specs folder in all, spread over the reloading phases (0: an A/A
        /// control that shows the noise floor of the p99 ratio).
        #[arg(long, default_value_t = 100)]
        changes: usize,
    },
    /// Plugin hook overhead in process, and REST throughput with and without redact-pii.
    Plugin {
        /// The plugin bound for the throughput comparison.
        #[arg(long, value_enum, default_value = "redact-pii")]
        bound: scenarios::Bound,
        #[arg(long, default_value_t = 5000)]
        iterations: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Also compare at this fixed rate, below saturation (requests/s; 0: skip).
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// REST latency with the corpus loaded, alone and while `/status` is polled.
    StatusPoll {
        #[arg(long, default_value = "tests/data/corpus/stripe-capabilities")]
        corpus: PathBuf,
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        /// `/status` requests per second while polling.
        #[arg(long, default_value_t = 10)]
        polls: u64,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 4)]
        rounds: usize,
    },
    /// The consumer chain (API key, rate limit, no-op plugin) against the bare route, and its
    /// limit in Redis against in process.
    Chain {
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 4)]
        rounds: usize,
        /// `serve --workers` of both gateways (default: `serve`'s own, one per core).
        #[arg(long)]
        workers: Option<u16>,
        /// Pin both gateways to these CPUs (comma-separated), and this process, the stand-in
        /// and Redis to the others (default: nothing pinned).
        #[arg(long, value_delimiter = ',')]
        gateway_cpus: Vec<usize>,
    },
    /// The same retrieve with tracing off and with every request traced to an OTLP sink.
    Tracing {
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 4)]
        rounds: usize,
    },
    /// HAProxy in front of one and of three replicas, and a rolling restart under load.
    Fleet {
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 4)]
        rounds: usize,
    },
    /// The proxy hop: nginx and capgate side by side in front of one minimal upstream, each
    /// with the same workers pinned to the same CPUs (needs nginx and wrk).
    Hop {
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// The fixed rate for added latency (requests/s).
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 4)]
        rounds: usize,
        /// Workers of each proxy.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// The CPUs the proxies run on (comma-separated); the rest run on the others.
        #[arg(long, value_delimiter = ',', default_value = "0")]
        proxy_cpus: Vec<usize>,
    },
    /// Startup time and peak memory with one file and with all 322 corpus files.
    Footprint {
        /// The corpus folder.
        #[arg(long, default_value = "tests/data/corpus/stripe-capabilities")]
        corpus: PathBuf,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Rest {
            rate,
            concurrency,
            seconds,
            rounds,
        } => rest(rate, concurrency, Duration::from_secs(seconds), rounds).await,
        Scenario::Hop {
            concurrency,
            rate,
            seconds,
            rounds,
            workers,
            proxy_cpus,
        } => {
            hop::hop(hop::Hop {
                concurrency,
                rate,
                seconds,
                rounds,
                workers,
                proxy_cpus,
            })
            .await
        }
        Scenario::Footprint { corpus, rounds } => footprint(&corpus, rounds).await,
        Scenario::Fleet {
            concurrency,
            seconds,
            rounds,
        } => fleet::fleet(concurrency, Duration::from_secs(seconds), rounds).await,
        Scenario::Chain {
            rate,
            concurrency,
            seconds,
            rounds,
            workers,
            gateway_cpus,
        } => {
            let duration = Duration::from_secs(seconds);
            let shape = chain::Shape {
                workers,
                gateway_cpus,
            };
            chain::chain(rate, concurrency, duration, rounds, shape).await
        }
        Scenario::Tracing {
            rate,
            seconds,
            rounds,
        } => traced::tracing(rate, Duration::from_secs(seconds), rounds).await,
        Scenario::StatusPoll {
            corpus,
            rate,
            polls,
            seconds,
            rounds,
        } => {
            scenarios::status_poll(&corpus, rate, polls, Duration::from_secs(seconds), rounds).await
        }
        Scenario::NullProxy { listen, upstream } => null_proxy::run(listen, upstream).await,
        Scenario::Mcp {
            rate,
            concurrency,
            seconds,
            rounds,
        } => scenarios::mcp(rate, concurrency, Duration::from_secs(seconds), rounds).await,
        Scenario::Reload { samples, reloads } => scenarios::reload(samples, reloads).await,
        Scenario::Soak {
            rest_rate,
            mcp_rate,
            seconds,
            rounds,
            changes,
        } => {
            let soak = scenarios::Soak {
                rest_rate,
                mcp_rate,
                phase: Duration::from_secs(seconds),
                rounds,
                changes,
            };
            scenarios::soak(soak).await
        }
        Scenario::Plugin {
            bound,
            iterations,
            concurrency,
            rate,
            seconds,
            rounds,
        } => {
            scenarios::plugin(
                bound,
                iterations,
                concurrency,
                rate,
                Duration::from_secs(seconds),
                rounds,
            )
            .await
        }
    }
}

pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    values[values.len() / 2]
}

pub(crate) struct Series {
    name: String,
    pub(crate) runs: Vec<Stats>,
}

impl Series {
    pub(crate) fn new(name: &str) -> Series {
        Series {
            name: name.to_owned(),
            runs: Vec::new(),
        }
    }

    pub(crate) fn rps(&self) -> f64 {
        median(self.runs.iter().map(Stats::rps).collect())
    }

    /// The p50 of every request of every round.
    pub(crate) fn p50(&self) -> f64 {
        self.pooled().p50_ms()
    }

    /// The p99 of every request of every round: with many short rounds alternating between the
    /// targets, each target's requests meet the machine's slow stretches alike, where the median
    /// of a few rounds' p99 would depend on which round a stretch fell in.
    pub(crate) fn p99(&self) -> f64 {
        self.pooled().p99_ms()
    }

    fn pooled(&self) -> Stats {
        let mut all = Stats::empty();
        for run in &self.runs {
            all.merge(run);
        }
        all
    }

    fn errors(&self) -> u64 {
        self.runs.iter().map(|s| s.errors).sum()
    }

    fn row(&self) -> String {
        format!(
            "| {} | {:.0} | {:.3} | {:.3} | {} |",
            self.name,
            self.rps(),
            self.p50(),
            self.p99(),
            self.errors()
        )
    }
}

pub(crate) fn table(title: &str, series: &[&Series]) {
    println!("\n### {title}\n");
    println!("| target | req/s | p50 ms | p99 ms | errors |");
    println!("|---|---:|---:|---:|---:|");
    for s in series {
        println!("{}", s.row());
    }
}

/// Prints `rows` as a table, then what the second row adds to the first at p50 and p99.
fn difference(title: &str, rows: &[&Series], subject: &str, context: &str) {
    table(title, rows);
    let (base, other) = (rows[0], rows[1]);
    println!(
        "\n{subject} {:.3} ms at p50 and {:.3} ms at p99 {context}",
        other.p50() - base.p50(),
        other.p99() - base.p99()
    );
}

async fn rest(
    rate: u64,
    concurrency: usize,
    duration: Duration,
    rounds: usize,
) -> anyhow::Result<()> {
    let setup = scenarios::setup(scenarios::unverified_stand_in(&load::client()).await?).await?;
    let client = load::client();
    let (proxy, proxy_addr) = procs::null_proxy(setup.sim.addr)?;
    let mut proxied = setup.direct.clone();
    proxied.name = "through a minimal hyper proxy".into();
    proxied.uri = format!(
        "http://{proxy_addr}{}",
        setup.direct.uri.path_and_query().expect("a path")
    )
    .parse()?;
    anyhow::ensure!(
        load::once(&client, &proxied).await?.0 == 200,
        "the minimal proxy does not answer"
    );
    // Warm up connections and caches on every path.
    for target in [&setup.direct, &proxied, &setup.through] {
        load::fixed_concurrency(&client, target, concurrency, Duration::from_secs(1)).await;
    }
    let mut rate_direct = Series::new(&setup.direct.name);
    let mut rate_through = Series::new(&setup.through.name);
    let mut conc_direct = Series::new(&setup.direct.name);
    let mut conc_through = Series::new(&setup.through.name);
    // Both at the full rate at the same time: whatever the machine does in those seconds, it
    // does to both (and the stand-in carries twice the load, so this is the harsher setting).
    let mut side_direct = Series::new(&setup.direct.name);
    let mut side_through = Series::new(&setup.through.name);
    // And capgate against the minimal proxy, the same way.
    let mut rate_proxied = Series::new(&proxied.name);
    let mut side_proxied = Series::new(&proxied.name);
    let mut side_through_vs_proxied = Series::new(&setup.through.name);
    // CPU time per request (us) of capgate and of the minimal proxy in the one-after-the-other
    // runs: unlike latency, hardly moved by what else the machine is doing.
    let mut cpu_through = Vec::new();
    let mut cpu_proxied = Vec::new();
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        // Alternate which goes first, so drift in machine load hits both alike.
        let order: [(&Target, bool); 2] = if round % 2 == 0 {
            [(&setup.direct, true), (&setup.through, false)]
        } else {
            [(&setup.through, false), (&setup.direct, true)]
        };
        for (target, is_direct) in order {
            let before = setup.gateway.cpu_time();
            let stats = load::fixed_rate(target, rate, duration).await;
            if is_direct {
                rate_direct.runs.push(stats)
            } else {
                cpu_through.extend(setup.gateway.cpu_per_request(before, stats.ok));
                rate_through.runs.push(stats)
            }
        }
        let (direct, through) = tokio::join!(
            load::fixed_rate(&setup.direct, rate, duration),
            load::fixed_rate(&setup.through, rate, duration)
        );
        side_direct.runs.push(direct);
        side_through.runs.push(through);
        let before = proxy.cpu_time();
        let stats = load::fixed_rate(&proxied, rate, duration).await;
        cpu_proxied.extend(proxy.cpu_per_request(before, stats.ok));
        rate_proxied.runs.push(stats);
        let (proxy, through) = tokio::join!(
            load::fixed_rate(&proxied, rate, duration),
            load::fixed_rate(&setup.through, rate, duration)
        );
        side_proxied.runs.push(proxy);
        side_through_vs_proxied.runs.push(through);
        for (target, is_direct) in order {
            let stats = load::fixed_concurrency(&client, target, concurrency, duration).await;
            if is_direct {
                conc_direct.runs.push(stats)
            } else {
                conc_through.runs.push(stats)
            }
        }
    }
    println!(
        "## REST: GET a VerificationSession ({rounds} rounds of {}s; req/s: median of rounds; latency: all requests)",
        duration.as_secs()
    );
    difference(
        &format!("Fixed rate: {rate} requests/s (open loop)"),
        &[&rate_direct, &rate_through],
        "capgate adds",
        "(targets: <= 0.3 ms, <= 1 ms)",
    );
    difference(
        &format!("Side by side: both at {rate} requests/s, at the same time"),
        &[&side_direct, &side_through],
        "capgate adds",
        "in the same seconds (targets: <= 0.3 ms, <= 1 ms)",
    );
    difference(
        &format!("A minimal hyper proxy (one more hop, nothing else) at {rate} requests/s"),
        &[&rate_direct, &rate_proxied, &rate_through],
        "the minimal proxy adds",
        "over the stand-in (one after the other)",
    );
    difference(
        &format!("Side by side: the minimal proxy and capgate, both at {rate} requests/s"),
        &[&side_proxied, &side_through_vs_proxied],
        "capgate adds",
        "over the minimal proxy in the same seconds",
    );
    if !cpu_through.is_empty() && !cpu_proxied.is_empty() {
        println!(
            "\nCPU per request at {rate} requests/s (median of rounds): capgate {:.0} us, the minimal proxy {:.0} us",
            median(cpu_through),
            median(cpu_proxied)
        );
    }
    table(
        &format!("Fixed concurrency: {concurrency} (closed loop)"),
        &[&conc_direct, &conc_through],
    );
    println!(
        "\nthroughput ratio capgate/direct: {:.2}; p50 ratio {:.2}; p99 ratio {:.2}",
        conc_through.rps() / conc_direct.rps(),
        conc_through.p50() / conc_direct.p50(),
        conc_through.p99() / conc_direct.p99()
    );
    if let Some(kib) = setup.gateway.peak_rss_kib() {
        println!(
            "capgate peak RSS during the run: {:.1} MiB",
            kib as f64 / 1024.0
        );
    }
    Ok(())
}

async fn footprint(corpus: &std::path::Path, rounds: usize) -> anyhow::Result<()> {
    let sim_port = procs::free_port();
    let _sim = procs::stripe_sim(sim_port)?;
    let sim_addr = SocketAddr::from(([127, 0, 0, 1], sim_port));
    let one = tempfile::tempdir()?;
    std::fs::copy(
        corpus.join("identity-sessions.yaml"),
        one.path().join("identity-sessions.yaml"),
    )?;
    let client = load::client();
    // Tool schemas from Stripe's OpenAPI description (the default) and without (`stripe: false`).
    let off = one
        .path()
        .join("..")
        .join(format!("capgate-no-schemas-{}.yaml", std::process::id()));
    std::fs::write(&off, "schemas: { stripe: false }\n")?;
    let off = off.display().to_string();
    println!("## Footprint: startup to first answer, and peak memory ({rounds} rounds, medians)\n");
    println!("| specs | startup ms | peak RSS MiB | RSS after 1 s of load MiB |");
    println!("|---|---:|---:|---:|");
    for (name, dir, extra) in [
        ("1 file (the seed)", one.path(), None),
        ("1 file, schemas off", one.path(), Some(off.as_str())),
        ("all 322 corpus files", corpus, None),
        (
            "all 322 corpus files, schemas off",
            corpus,
            Some(off.as_str()),
        ),
    ] {
        let mut startup = Vec::new();
        let mut peak = Vec::new();
        let mut after = Vec::new();
        for _ in 0..rounds {
            let rest_port = procs::free_port();
            let mcp_port = procs::free_port();
            let started = Instant::now();
            let mut args = vec!["--no-watch"];
            if let Some(config) = extra {
                args.extend(["--config", config]);
            }
            let gateway =
                procs::gateway(dir, sim_addr, &[(8080, rest_port), (9090, mcp_port)], &args)?;
            let target = Target::get(
                "list",
                &format!(
                    "http://127.0.0.1:{rest_port}/v1/v1/identity/verification-sessions?limit=1"
                ),
            );
            // Ready means: the route answers (listeners open only after every file is compiled).
            loop {
                if started.elapsed() > Duration::from_secs(30) {
                    anyhow::bail!("capgate did not answer within 30 s");
                }
                if let Ok((200, _)) = load::once(&client, &target).await {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            startup.push(started.elapsed().as_secs_f64() * 1000.0);
            load::fixed_concurrency(&client, &target, 8, Duration::from_secs(1)).await;
            peak.push(gateway.peak_rss_kib().unwrap_or(0) as f64 / 1024.0);
            after.push(gateway.rss_kib().unwrap_or(0) as f64 / 1024.0);
        }
        println!(
            "| {name} | {:.0} | {:.1} | {:.1} |",
            median(startup),
            median(peak),
            median(after)
        );
    }
    Ok(())
}
