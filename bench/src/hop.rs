//! The proxy hop side by side with nginx (issue 22): the same retrieve through nginx and
//! through capgate, in front of the same minimal upstream, in one run.
//!
//! The upstream is an nginx of its own answering the stand-in's 1.2 KB VerificationSession from
//! memory, so that what the proxies are measured on costs next to nothing behind them. The proxy
//! under test (nginx, doing the same path rewrite and `Authorization` injection capgate does,
//! or capgate on the shipped seed) runs with the same number of workers, pinned to its own CPUs;
//! the upstream, the load generator (`wrk` for the closed loop, the bench's one-thread paced
//! generator for the fixed rate) and this process share the other CPUs. Every process is started
//! here from a generated config in a temporary folder, and stopped when the run ends.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;

use crate::cpus::{pin, pin_this_process};
use crate::load::{self, Target};
use crate::procs::{self, Proc};
use crate::scenarios;
use crate::{Series, median};

/// What `capgate-bench hop` is asked for.
pub struct Hop {
    pub concurrency: usize,
    pub rate: u64,
    pub seconds: u64,
    pub rounds: usize,
    /// Workers of each proxy (tokio workers for capgate, worker processes for nginx).
    pub workers: usize,
    /// The CPUs the proxies run on; everything else runs on the others.
    pub proxy_cpus: Vec<usize>,
}

/// One closed-loop run, as wrk reported it, with the proxy's CPU time per request.
pub(crate) struct Closed {
    pub(crate) rps: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) errors: u64,
    pub(crate) cpu_us: Option<f64>,
}

/// A proxy (or the upstream itself) and the processes whose CPU time it spends.
struct Subject {
    target: Target,
    /// Pids whose CPU time is the proxy's (empty for the upstream measured directly).
    pids: Vec<u32>,
}

impl Subject {
    fn cpu_time(&self) -> Option<Duration> {
        if self.pids.is_empty() {
            return None;
        }
        self.pids
            .iter()
            .map(|pid| procs::cpu_time(&pid.to_string()))
            .sum()
    }
}

pub async fn hop(hop: Hop) -> anyhow::Result<()> {
    for tool in ["nginx", "wrk"] {
        anyhow::ensure!(
            which(tool),
            "`{tool}` is not installed: apt-get install nginx wrk (Debian packages)"
        );
    }
    let load_cpus = crate::cpus::others(&hop.proxy_cpus, "proxy")?;
    // This process, and so wrk, the paced generator's threads and the upstream it starts, run
    // on the load CPUs; the proxies are pinned to theirs when spawned.
    pin_this_process(&load_cpus)?;
    let temp = tempfile::tempdir()?;
    let client = load::client();

    // The body the upstream answers: a real retrieve of the stand-in's.
    let body = {
        let stand = scenarios::stand_in(&client).await?;
        let mut get = Target::get(
            "retrieve",
            &format!(
                "http://{}/v1/identity/verification_sessions/{}",
                stand.addr, stand.session
            ),
        );
        get.headers = vec![(
            "authorization".into(),
            "Bearer sk_test_capgate_bench".into(),
        )];
        let (status, body) = load::once(&client, &get).await?;
        anyhow::ensure!(status == 200, "the stand-in's retrieve answered {status}");
        (stand.session, body)
    };
    let (session, body) = body;
    let upstream_port = procs::free_port();
    let upstream = nginx(
        &temp.path().join("upstream"),
        &upstream_config(upstream_port, &session, &body)?,
        &load_cpus,
    )?;
    let upstream_addr = SocketAddr::from(([127, 0, 0, 1], upstream_port));
    procs::wait_for_port(upstream_addr, Duration::from_secs(10))?;

    let nginx_port = procs::free_port();
    let proxy = nginx(
        &temp.path().join("proxy"),
        &proxy_config(nginx_port, upstream_port, hop.workers),
        &hop.proxy_cpus,
    )?;
    procs::wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], nginx_port)),
        Duration::from_secs(10),
    )?;

    let specs = temp.path().join("specs");
    std::fs::create_dir_all(&specs)?;
    std::fs::write(specs.join("identity-sessions.yaml"), scenarios::seed_text())?;
    let (rest_port, mcp_port) = (procs::free_port(), procs::free_port());
    let gateway = capgate(
        &specs,
        upstream_addr,
        rest_port,
        mcp_port,
        hop.workers,
        &hop.proxy_cpus,
    )?;
    for port in [rest_port, mcp_port] {
        procs::wait_for_port(
            SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(10),
        )?;
    }

    let path = format!("/v1/identity/verification_sessions/{session}");
    let mut direct = Target::get(
        "the upstream directly",
        &format!("http://{upstream_addr}{path}"),
    );
    direct.headers = vec![(
        "authorization".into(),
        "Bearer sk_test_capgate_bench".into(),
    )];
    let through = format!("/v1/v1/identity/verification-sessions/{session}");
    let via_nginx = Target::get("nginx", &format!("http://127.0.0.1:{nginx_port}{through}"));
    let via_capgate = Target::get(
        "capgate (REST)",
        &format!("http://127.0.0.1:{rest_port}{through}"),
    );
    let mut via_mcp = scenarios::mcp_call(
        &format!("http://127.0.0.1:{mcp_port}/mcp/identity-sessions-mcp"),
        "stripe-get-identity-verification-sessions-2",
        serde_json::json!({"session": session}),
    );
    via_mcp.name = "capgate (MCP tools/call)".into();

    // Every path answers the same session before anything is measured.
    let expected: serde_json::Value = serde_json::from_slice(&body)?;
    for target in [&direct, &via_nginx, &via_capgate] {
        let (status, got) = load::once(&client, target).await?;
        anyhow::ensure!(status == 200, "{} answered {status}", target.name);
        let got: serde_json::Value = serde_json::from_slice(&got)
            .with_context(|| format!("{} did not answer JSON", target.name))?;
        anyhow::ensure!(got == expected, "{} answered another body", target.name);
    }
    let (status, got) = load::once(&client, &via_mcp).await?;
    anyhow::ensure!(
        status == 200 && String::from_utf8_lossy(&got).contains(&session),
        "the MCP call failed: {status} {}",
        String::from_utf8_lossy(&got)
    );

    let nginx_pids = nginx_worker_pids(&proxy)?;
    let subjects = [
        Subject {
            target: direct,
            pids: Vec::new(),
        },
        Subject {
            target: via_nginx,
            pids: nginx_pids,
        },
        Subject {
            target: via_capgate,
            pids: vec![gateway.pid()],
        },
        Subject {
            target: via_mcp,
            pids: vec![gateway.pid()],
        },
    ];
    let scripts: Vec<_> = subjects
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let script = temp.path().join(format!("target-{i}.lua"));
            std::fs::write(&script, wrk_script(&s.target)).map(|()| script)
        })
        .collect::<Result<_, _>>()?;
    // Warm-up: connections, caches, the allocator's arenas.
    for (subject, script) in subjects.iter().zip(&scripts) {
        wrk(&subject.target, script, hop.concurrency, 2)?;
    }

    let duration = Duration::from_secs(hop.seconds);
    let mut closed: Vec<Vec<Closed>> = subjects.iter().map(|_| Vec::new()).collect();
    // The fixed rate: the upstream directly, nginx and capgate's REST route.
    let mut paced: Vec<Series> = subjects[..3]
        .iter()
        .map(|s| Series::new(&s.target.name))
        .collect();
    let mut paced_cpu: Vec<Vec<f64>> = vec![Vec::new(); 3];
    for round in 0..hop.rounds {
        eprintln!("round {}/{}", round + 1, hop.rounds);
        let mut order: Vec<usize> = (0..subjects.len()).collect();
        order.rotate_left(round % subjects.len());
        if round % 2 == 1 {
            order.reverse();
        }
        for &i in &order {
            let subject = &subjects[i];
            let before = subject.cpu_time();
            let mut run = wrk(&subject.target, &scripts[i], hop.concurrency, hop.seconds)?;
            run.cpu_us = per_request(before, subject.cpu_time(), run.rps * hop.seconds as f64);
            closed[i].push(run);
        }
        for &i in order.iter().filter(|&&i| i < 3) {
            let subject = &subjects[i];
            let before = subject.cpu_time();
            let stats = load::fixed_rate(&subject.target, hop.rate, duration).await;
            if let Some(cpu) = per_request(before, subject.cpu_time(), stats.ok as f64) {
                paced_cpu[i].push(cpu);
            }
            paced[i].runs.push(stats);
        }
    }
    drop((gateway, proxy, upstream));
    report(&hop, &subjects, &closed, &paced, &paced_cpu);
    Ok(())
}

fn report(
    hop: &Hop,
    subjects: &[Subject],
    closed: &[Vec<Closed>],
    paced: &[Series],
    paced_cpu: &[Vec<f64>],
) {
    let med = |runs: &[Closed], f: fn(&Closed) -> f64| median(runs.iter().map(f).collect());
    let cpu = |runs: &[Closed]| {
        let values: Vec<f64> = runs.iter().filter_map(|r| r.cpu_us).collect();
        (!values.is_empty()).then(|| median(values))
    };
    println!(
        "## The proxy hop: nginx and capgate side by side ({} rounds of {} s, {} worker(s) each on CPU {:?}; medians of rounds)",
        hop.rounds, hop.seconds, hop.workers, hop.proxy_cpus
    );
    println!(
        "\n### Closed loop: wrk, {} connections, one thread\n",
        hop.concurrency
    );
    println!("| target | req/s | proxy CPU us/request | p50 ms | p99 ms | errors |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (subject, runs) in subjects.iter().zip(closed) {
        println!(
            "| {} | {:.0} | {} | {:.3} | {:.3} | {} |",
            subject.target.name,
            med(runs, |r| r.rps),
            cpu(runs).map_or("-".into(), |c| format!("{c:.1}")),
            med(runs, |r| r.p50_ms),
            med(runs, |r| r.p99_ms),
            runs.iter().map(|r| r.errors).sum::<u64>()
        );
    }
    let (nginx, rest, mcp) = (&closed[1], &closed[2], &closed[3]);
    let throughput = med(rest, |r| r.rps) / med(nginx, |r| r.rps);
    println!(
        "\ncapgate/nginx throughput {throughput:.2} (target >= 0.90); MCP/REST throughput {:.2} (target >= 0.80)",
        med(mcp, |r| r.rps) / med(rest, |r| r.rps)
    );
    if let (Some(c), Some(n)) = (cpu(rest), cpu(nginx)) {
        println!(
            "capgate/nginx CPU per request {:.2} (target <= 1.15)",
            c / n
        );
    }
    println!(
        "\n### Fixed rate: {} requests/s (open loop; all requests of all rounds)\n",
        hop.rate
    );
    println!(
        "| target | p50 ms | p99 ms | adds at p50 ms | adds at p99 ms | proxy CPU us/request | errors |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let base = &paced[0];
    for (series, cpu) in paced.iter().zip(paced_cpu) {
        let cpu = if cpu.is_empty() {
            "-".to_owned()
        } else {
            format!("{:.1}", median(cpu.clone()))
        };
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {cpu} | {} |",
            series.name,
            series.p50(),
            series.p99(),
            series.p50() - base.p50(),
            series.p99() - base.p99(),
            series.runs.iter().map(|s| s.errors).sum::<u64>()
        );
    }
    let nginx_p99 = paced[1].p99() - base.p99();
    let capgate_p99 = paced[2].p99() - base.p99();
    println!(
        "\ncapgate adds {:.3} ms at p99, nginx {:.3} ms: capgate - nginx = {:+.3} ms (target <= +0.100)",
        capgate_p99,
        nginx_p99,
        capgate_p99 - nginx_p99
    );
}

/// CPU time per request in microseconds between two readings.
pub(crate) fn per_request(
    before: Option<Duration>,
    after: Option<Duration>,
    requests: f64,
) -> Option<f64> {
    let used = after?.checked_sub(before?)?;
    (requests >= 1.0).then(|| used.as_secs_f64() * 1e6 / requests)
}

/// The upstream: `/v1/identity/verification_sessions/<id>` answers `body`, anything else 404.
fn upstream_config(port: u16, session: &str, body: &Bytes) -> anyhow::Result<String> {
    let text = std::str::from_utf8(body).context("the session is not UTF-8")?;
    // nginx strings interpolate `$` and end at the quote; the stand-in's JSON has neither.
    anyhow::ensure!(
        !text.contains(['\'', '$', '\\']),
        "the session's JSON holds a character the upstream's config cannot quote"
    );
    Ok(format!(
        "{prelude}
http {{
    {common}
    server {{
        listen 127.0.0.1:{port};
        location = /v1/identity/verification_sessions/{session} {{
            default_type application/json;
            return 200 '{text}';
        }}
    }}
}}
",
        prelude = prelude(1),
        common = HTTP_COMMON,
    ))
}

/// nginx as the proxy: the path rewritten to Stripe's, the key injected, upstream keep-alive.
fn proxy_config(port: u16, upstream: u16, workers: usize) -> String {
    format!(
        "{prelude}
http {{
    {common}
    upstream stripe {{
        server 127.0.0.1:{upstream};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location /v1/v1/identity/verification-sessions/ {{
            proxy_pass http://stripe/v1/identity/verification_sessions/;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Authorization \"Bearer sk_test_capgate_bench\";
        }}
    }}
}}
",
        prelude = prelude(workers),
        common = HTTP_COMMON,
    )
}

fn prelude(workers: usize) -> String {
    format!(
        "daemon off;
master_process on;
worker_processes {workers};
pid nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}"
    )
}

/// What both nginx configs share: no access log, temp files inside the prefix, and connections
/// kept for the whole run (nginx closes a client connection after 1,000 requests by default,
/// which capgate does not; the hop, not the reconnection, is what is compared).
const HTTP_COMMON: &str = "access_log off;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;";

/// An nginx master, stopped (workers too) when dropped: killing the master alone would leave
/// its workers running.
struct Nginx(Proc);

impl Drop for Nginx {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: a plain signal to a child this process started and has not reaped.
        unsafe { libc::kill(self.0.pid() as libc::pid_t, libc::SIGTERM) };
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.0.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Starts nginx with `config` in `prefix`, its processes pinned to `cpus`.
fn nginx(prefix: &Path, config: &str, cpus: &[usize]) -> anyhow::Result<Nginx> {
    std::fs::create_dir_all(prefix.join("tmp"))?;
    let file = prefix.join("nginx.conf");
    std::fs::write(&file, config)?;
    let mut command = Command::new("nginx");
    command
        .arg("-p")
        .arg(prefix)
        .arg("-c")
        .arg(&file)
        .arg("-e")
        .arg("stderr")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    pin(&mut command, cpus);
    Ok(Nginx(Proc {
        child: command.spawn().context("starting nginx")?,
    }))
}

/// The pids of a running nginx's worker processes (the master's children).
fn nginx_worker_pids(master: &Nginx) -> anyhow::Result<Vec<u32>> {
    let pid = master.0.pid();
    // The workers start just after the master opens its port.
    std::thread::sleep(Duration::from_millis(200));
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let pids: Vec<u32> = children
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    anyhow::ensure!(!pids.is_empty(), "nginx {pid} has no worker processes");
    Ok(pids)
}

fn capgate(
    specs: &Path,
    upstream: SocketAddr,
    rest_port: u16,
    mcp_port: u16,
    workers: usize,
    cpus: &[usize],
) -> anyhow::Result<Proc> {
    let mut command = Command::new(procs::capgate_binary());
    command
        .args(["serve", "--no-watch", "--admin", "off", "--specs"])
        .arg(specs)
        .args(["--upstream", &format!("*=http://{upstream}")])
        .args(["--port", &format!("8080={rest_port}")])
        .args(["--port", &format!("9090={mcp_port}")])
        .args(["--workers", &workers.to_string()])
        .env("STRIPE_API_KEY", "sk_test_capgate_bench")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    pin(&mut command, cpus);
    Ok(Proc {
        child: command.spawn().context("starting capgate")?,
    })
}

/// A wrk script sending `target`'s request (method, headers, body).
pub(crate) fn wrk_script(target: &Target) -> String {
    let mut script = format!("wrk.method = \"{}\"\n", target.method);
    for (name, value) in &target.headers {
        let _ = writeln!(script, "wrk.headers[\"{name}\"] = [==[{value}]==]");
    }
    if let Some(body) = &target.body {
        let _ = writeln!(
            script,
            "wrk.body = [==[{}]==]",
            String::from_utf8_lossy(body)
        );
    }
    script
}

/// Runs wrk (one thread, `connections` connections) against `target` for `seconds`.
pub(crate) fn wrk(
    target: &Target,
    script: &Path,
    connections: usize,
    seconds: u64,
) -> anyhow::Result<Closed> {
    let output = Command::new("wrk")
        .args(["-t1", "--latency"])
        .args(["-c", &connections.to_string()])
        .args(["-d", &format!("{seconds}s")])
        .arg("-s")
        .arg(script)
        .arg(target.uri.to_string())
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "wrk failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    parse_wrk(&text).with_context(|| format!("cannot read wrk's report:\n{text}"))
}

fn parse_wrk(text: &str) -> anyhow::Result<Closed> {
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
    };
    let rps: f64 = field("Requests/sec:").context("no Requests/sec")?.parse()?;
    let p50 = latency_ms(field("50%").context("no 50% latency")?)?;
    let p99 = latency_ms(field("99%").context("no 99% latency")?)?;
    let mut errors = 0;
    if let Some(non_2xx) = field("Non-2xx or 3xx responses:") {
        errors += non_2xx.parse::<u64>()?;
    }
    if let Some(socket) = field("Socket errors:") {
        // "connect 0, read 0, write 0, timeout 0"
        errors += socket
            .split(',')
            .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    Ok(Closed {
        rps,
        p50_ms: p50,
        p99_ms: p99,
        errors,
        cpu_us: None,
    })
}

/// wrk's `1.23ms`, `456.00us`, `1.01s` in milliseconds.
fn latency_ms(text: &str) -> anyhow::Result<f64> {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e3)
    } else {
        anyhow::bail!("unknown latency unit in {text:?}")
    };
    Ok(number.parse::<f64>()? * factor)
}

pub(crate) fn which(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths)
            .any(|dir| dir.join(tool).is_file() || dir.join("sbin").join(tool).is_file())
    }) || Path::new("/usr/sbin").join(tool).is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrks_report() {
        let report = "Running 5s test @ http://127.0.0.1:1/x
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   710.52us  120.11us   5.20ms   90.00%
    Req/Sec    45.12k     1.20k   47.00k    80.00%
  Latency Distribution
     50%  690.00us
     75%  750.00us
     90%  820.00us
     99%    1.20ms
  224512 requests in 5.00s, 300.00MB read
  Non-2xx or 3xx responses: 3
  Socket errors: connect 0, read 2, write 0, timeout 1
Requests/sec:  44902.40
Transfer/sec:     60.00MB
";
        let closed = parse_wrk(report).unwrap();
        assert_eq!(closed.rps, 44902.40);
        assert!((closed.p50_ms - 0.69).abs() < 1e-9);
        assert!((closed.p99_ms - 1.2).abs() < 1e-9);
        assert_eq!(closed.errors, 6);
        assert!(parse_wrk("garbage").is_err());
        assert!(latency_ms("3parsecs").is_err());
    }
}
