//! What tracing costs: the same retrieve at a fixed rate through two gateways, one with tracing
//! off and one sampling every request to an OTLP/HTTP sink, in alternating rounds.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use crate::load::{self, Target};
use crate::procs::{self, Proc};
use crate::scenarios::{repo, seed_text, stand_in};
use crate::{Series, table};

/// An OTLP/HTTP receiver that takes every export and keeps only a count of its bytes.
async fn sink() -> anyhow::Result<(SocketAddr, Arc<AtomicU64>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let bytes = Arc::new(AtomicU64::new(0));
    let counted = bytes.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: http::Request<_>| {
                    let counted = counted.clone();
                    async move {
                        let body = BodyExt::collect(request.into_body()).await?.to_bytes();
                        counted.fetch_add(body.len() as u64, Ordering::Relaxed);
                        let mut response = http::Response::new(Full::new(Bytes::new()));
                        response.headers_mut().insert(
                            "content-type",
                            http::HeaderValue::from_static("application/x-protobuf"),
                        );
                        Ok::<_, hyper::Error>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((addr, bytes))
}

/// A config serving the seed on a free port, traced to `collector` when given.
fn setup(dir: &Path, collector: Option<SocketAddr>) -> anyhow::Result<(std::path::PathBuf, u16)> {
    let name = if collector.is_some() { "on" } else { "off" };
    let specs = dir.join(format!("specs-{name}"));
    std::fs::create_dir_all(&specs)?;
    std::fs::write(specs.join("identity-sessions.yaml"), seed_text())?;
    let port = procs::free_port();
    let tracing = collector.map_or(String::new(), |addr| {
        format!("tracing:\n  exporter: otlp\n  endpoint: http://{addr}\n  sample_ratio: 1.0\n")
    });
    let config = dir.join(format!("capgate-{name}.yaml"));
    std::fs::write(
        &config,
        format!(
            "specs: {}\nadmin: {{ address: null }}\nlisten: {{ ports: {{ 8080: {port}, 9090: {} }} }}\nreload: {{ watch: false }}\n{tracing}",
            specs.display(),
            procs::free_port(),
        ),
    )?;
    Ok((config, port))
}

pub async fn tracing(rate: u64, duration: Duration, rounds: usize) -> anyhow::Result<()> {
    let _ = repo();
    let client = load::client();
    let stand = stand_in(&client).await?;
    let (collector, exported) = sink().await?;
    let dir = tempfile::tempdir()?;
    let (off_config, off_port) = setup(dir.path(), None)?;
    let (on_config, on_port) = setup(dir.path(), Some(collector))?;
    let off = procs::gateway_with_config(&off_config, stand.addr)?;
    let on = procs::gateway_with_config(&on_config, stand.addr)?;
    for port in [off_port, on_port] {
        procs::wait_for_port(
            SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(20),
        )?;
    }
    let id = &stand.session;
    let route =
        |port: u16| format!("http://127.0.0.1:{port}/v1/v1/identity/verification-sessions/{id}");
    let targets = [
        Target::get("tracing off", &route(off_port)),
        Target::get("tracing on, every request sampled", &route(on_port)),
    ];
    let gateways: [&Proc; 2] = [&off, &on];
    for target in &targets {
        let (status, _) = load::once(&client, target).await?;
        anyhow::ensure!(status == 200, "{}: {status}", target.name);
        load::fixed_rate(target, rate, Duration::from_secs(1)).await;
    }
    let mut series = targets.clone().map(|t| Series::new(&t.name));
    let mut cpu: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        eprintln!("tracing round {}/{rounds}", round + 1);
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let before = gateways[i].cpu_time();
            let stats = load::fixed_rate(&targets[i], rate, duration).await;
            if let Some(us) = gateways[i].cpu_per_request(before, stats.ok) {
                cpu[i].push(us);
            }
            series[i].runs.push(stats);
        }
    }
    // Spans leave in batches: give the last one time to go.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let exported = exported.load(Ordering::Relaxed);
    anyhow::ensure!(exported > 0, "the traced gateway exported nothing");
    table(
        &format!("REST at a fixed rate of {rate} requests/s, a session retrieved"),
        &series.iter().collect::<Vec<_>>(),
    );
    let [cpu_off, cpu_on] = cpu.map(crate::median);
    println!(
        "\ntracing adds {:.3} ms at p50 (target <= 0.05) and {:.3} ms at p99; gateway CPU per request {cpu_off:.0} us off, {cpu_on:.0} us on; {:.1} MB of OTLP exported",
        series[1].p50() - series[0].p50(),
        series[1].p99() - series[0].p99(),
        exported as f64 / 1e6
    );
    Ok(())
}
