//! `fleet` (issue 20): HAProxy (Debian's package, on free ports) in front of one and of three
//! capgate replicas on this 2-core machine, REST at a fixed concurrency in alternating rounds;
//! then a rolling restart (SIGTERM one replica at a time, restarted on its ports) under load,
//! counting failed requests.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::load::{self, Target};
use crate::procs::{self, Proc};
use crate::scenarios::{seed_text, unverified_stand_in};
use crate::{Series, table};

#[derive(Clone, Copy)]
struct Ports {
    rest: u16,
    admin: u16,
}

fn replica(dir: &Path, index: usize, ports: Ports, sim: SocketAddr) -> anyhow::Result<Proc> {
    let config = dir.join(format!("replica-{index}.yaml"));
    std::fs::write(
        &config,
        format!(
            "specs: {}\nlisten: {{ ports: {{ 8080: {}, 9090: {} }} }}\nadmin: {{ address: \"127.0.0.1:{}\" }}\nreload: {{ watch: false, drain_timeout: 5000 }}\nlimits: {{ max_connections_per_peer: 0 }}\n",
            dir.join("specs").display(),
            ports.rest,
            procs::free_port(),
            ports.admin
        ),
    )?;
    procs::gateway_with_config(&config, sim)
}

fn ready(admin: u16) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let answered = std::net::TcpStream::connect(("127.0.0.1", admin)).is_ok_and(|mut s| {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            answer.starts_with("HTTP/1.1 200")
        });
        if answered {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "a replica never got ready"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An HAProxy frontend per pool: `one` (the first replica) and `three`.
fn haproxy(dir: &Path, one: u16, three: u16, replicas: &[Ports]) -> anyhow::Result<Proc> {
    let mut text = format!(
        "global\n  maxconn 4000\n  nbthread 1\ndefaults\n  mode http\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n  retries 3\n  option redispatch 1\n  retry-on all-retryable-errors\n  option http-keep-alive\nfrontend one\n  bind 127.0.0.1:{one}\n  default_backend one\nfrontend three\n  bind 127.0.0.1:{three}\n  default_backend three\n"
    );
    for (name, count) in [("one", 1), ("three", 3)] {
        text.push_str(&format!(
            "backend {name}\n  balance roundrobin\n  option httpchk\n  http-check send meth GET uri /readyz\n  default-server inter 100ms fall 1 rise 2\n"
        ));
        for (i, p) in replicas.iter().take(count).enumerate() {
            text.push_str(&format!(
                "  server r{i} 127.0.0.1:{} check port {}\n",
                p.rest, p.admin
            ));
        }
    }
    let config = dir.join("haproxy.cfg");
    std::fs::write(&config, text)?;
    let child = Command::new("haproxy")
        .args(["-f", &config.display().to_string(), "-db"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("haproxy (Debian's haproxy package): {e}"))?;
    procs::wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], three)),
        Duration::from_secs(10),
    )?;
    Ok(Proc { child })
}

pub async fn fleet(concurrency: usize, duration: Duration, rounds: usize) -> anyhow::Result<()> {
    let client = load::client();
    let stand = unverified_stand_in(&client).await?;
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("specs"))?;
    std::fs::write(dir.path().join("specs/identity-sessions.yaml"), seed_text())?;
    let ports: Vec<Ports> = (0..3)
        .map(|_| Ports {
            rest: procs::free_port(),
            admin: procs::free_port(),
        })
        .collect();
    let mut replicas = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        replicas.push(replica(dir.path(), i, *p, stand.addr)?);
    }
    for p in &ports {
        ready(p.admin)?;
    }
    let (one, three) = (procs::free_port(), procs::free_port());
    let _haproxy = haproxy(dir.path(), one, three, &ports)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let path = "/v1/v1/identity/verification-sessions?limit=1";
    let targets = [
        Target::get(
            "HAProxy + 1 replica",
            &format!("http://127.0.0.1:{one}{path}"),
        ),
        Target::get(
            "HAProxy + 3 replicas",
            &format!("http://127.0.0.1:{three}{path}"),
        ),
    ];
    for target in &targets {
        let (status, _) = load::once(&client, target).await?;
        anyhow::ensure!(status == 200, "{}: {status}", target.name);
        load::fixed_concurrency(&client, target, concurrency, Duration::from_secs(1)).await;
    }
    let mut series = [Series::new(&targets[0].name), Series::new(&targets[1].name)];
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            series[i]
                .runs
                .push(load::fixed_concurrency(&client, &targets[i], concurrency, duration).await);
        }
    }
    table(
        &format!("REST through HAProxy at concurrency {concurrency}, 2 cores shared by everything"),
        &[&series[0], &series[1]],
    );
    println!(
        "\nthroughput 3 replicas / 1 replica: {:.2}",
        series[1].rps() / series[0].rps()
    );

    // A rolling restart under load.
    let load = {
        let (client, target) = (client.clone(), targets[1].clone());
        tokio::spawn(async move {
            load::fixed_concurrency(&client, &target, 8, Duration::from_secs(12)).await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let restart_started = Instant::now();
    for (i, p) in ports.iter().enumerate() {
        let pid = replicas[i].pid().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let stopped = Instant::now();
        while replicas[i].child.try_wait()?.is_none() {
            anyhow::ensure!(
                stopped.elapsed() < Duration::from_secs(20),
                "replica {i} did not stop"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        replicas[i] = replica(dir.path(), i, *p, stand.addr)?;
        ready(p.admin)?;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let restart = restart_started.elapsed();
    let stats = load.await?;
    println!(
        "\n### Rolling restart of the 3 replicas under load (8 callers through HAProxy, 12 s)\n\n{} requests, **{} failed**, the restart of all three took {:.1} s",
        stats.ok + stats.errors,
        stats.errors,
        restart.as_secs_f64()
    );
    Ok(())
}
