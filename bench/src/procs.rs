//! The processes under test: the capgate binary built next to this one, run as the Stripe
//! stand-in and as the gateway, on free loopback ports.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        status_field(self.pid(), "VmHWM:")
    }

    /// Current resident memory (VmRSS), in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        status_field(self.pid(), "VmRSS:")
    }

    /// CPU time (user + system, all threads) used so far, in clock-tick resolution.
    pub fn cpu_time(&self) -> Option<Duration> {
        cpu_time(&self.pid().to_string())
    }

    /// The CPU time used since `before` (a `cpu_time` reading) per request, in microseconds.
    pub fn cpu_per_request(&self, before: Option<Duration>, requests: u64) -> Option<f64> {
        let used = self.cpu_time()?.checked_sub(before?)?;
        Some(used.as_secs_f64() * 1e6 / requests.max(1) as f64)
    }
}

/// CPU time (user + system, all threads) a process (a pid, or `self`) used so far, in
/// clock-tick resolution.
pub fn cpu_time(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // /proc counts in USER_HZ, which Linux fixes at 100 on every architecture we run on.
    Some(Duration::from_millis(ticks * 10))
}

fn status_field(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The `capgate` binary next to this executable (same cargo profile), or the one
/// `CAPGATE_BENCH_BINARY` names (to measure another build, such as the previous commit's, in
/// alternation with this one).
pub fn capgate_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("CAPGATE_BENCH_BINARY") {
        let path = PathBuf::from(path);
        assert!(
            path.exists(),
            "CAPGATE_BENCH_BINARY {} not found",
            path.display()
        );
        return path;
    }
    let me = std::env::current_exe().expect("the current executable");
    let path = me.parent().expect("a directory").join("capgate");
    assert!(
        path.exists(),
        "{} not found: build it first (cargo build --release -p capgate-cli)",
        path.display()
    );
    path
}

/// A port no listener holds now, and never handed out before in this process (the OS may give
/// a port it just released to the next `bind(0)`, and two servers must not be told the same).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Waits until `addr` accepts connections.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    anyhow::bail!("{addr} did not open within {timeout:?}")
}

pub fn stripe_sim(port: u16) -> anyhow::Result<Proc> {
    let child = Command::new(capgate_binary())
        .args(["stripe-sim", "--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let proc = Proc { child };
    wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(10),
    )?;
    Ok(proc)
}

/// Starts the minimal hyper proxy (`capgate-bench null-proxy`) in front of `upstream`.
pub fn null_proxy(upstream: SocketAddr) -> anyhow::Result<(Proc, SocketAddr)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let child = Command::new(std::env::current_exe()?)
        .args(["null-proxy", "--listen", &addr.to_string()])
        .args(["--upstream", &upstream.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let proc = Proc { child };
    wait_for_port(addr, Duration::from_secs(10))?;
    Ok((proc, addr))
}

/// Starts the gateway on `specs`, every upstream pointed at `sim`, declared ports remapped.
pub fn gateway(
    specs: &Path,
    sim: SocketAddr,
    ports: &[(u16, u16)],
    extra: &[&str],
) -> anyhow::Result<Proc> {
    let mut command = Command::new(capgate_binary());
    command
        .args(["serve", "--specs"])
        .arg(specs)
        .args(["--upstream", &format!("*=http://{sim}")])
        .args(if extra.contains(&"--admin") {
            &[][..]
        } else {
            &["--admin", "off"][..]
        })
        .args(extra)
        .env("STRIPE_API_KEY", "sk_test_capgate_bench")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (declared, actual) in ports {
        command.args(["--port", &format!("{declared}={actual}")]);
    }
    Ok(Proc {
        child: command.spawn()?,
    })
}

/// Starts the gateway with a config file (for settings the command line does not have).
pub fn gateway_with_config(config: &Path, sim: SocketAddr) -> anyhow::Result<Proc> {
    gateway_shaped(config, sim, None, &[])
}

/// `gateway_with_config`, with `serve --workers` when `workers` is given, and the gateway's
/// process pinned to `cpus` unless that is empty.
pub fn gateway_shaped(
    config: &Path,
    sim: SocketAddr,
    workers: Option<u16>,
    cpus: &[usize],
) -> anyhow::Result<Proc> {
    let mut command = Command::new(capgate_binary());
    command.args(["serve", "--config"]).arg(config);
    if let Some(workers) = workers {
        command.args(["--workers", &workers.to_string()]);
    }
    if !cpus.is_empty() {
        crate::cpus::pin(&mut command, cpus);
    }
    let child = command
        .args(["--upstream", &format!("*=http://{sim}")])
        .env("STRIPE_API_KEY", "sk_test_capgate_bench")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    Ok(Proc { child })
}
