//! Load generation: closed-loop at a fixed concurrency and open-loop at a fixed rate.
//!
//! Open-loop latency is measured from the moment a request was *scheduled*, not sent, so a
//! stalled server cannot hide its stall (no coordinated omission).

use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build(connector)
}

/// One request to send over and over.
#[derive(Clone, Debug)]
pub struct Target {
    pub name: String,
    pub method: Method,
    pub uri: Uri,
    pub headers: Vec<(String, String)>,
    pub body: Option<Bytes>,
}

impl Target {
    pub fn get(name: &str, uri: &str) -> Target {
        Target {
            name: name.to_owned(),
            method: Method::GET,
            uri: uri.parse().expect("a valid URI"),
            headers: Vec::new(),
            body: None,
        }
    }

    fn request(&self) -> Request<Full<Bytes>> {
        let mut builder = Request::builder()
            .method(self.method.clone())
            .uri(self.uri.clone());
        for (k, v) in &self.headers {
            builder = builder.header(k, v);
        }
        builder
            .body(Full::new(self.body.clone().unwrap_or_default()))
            .expect("a valid request")
    }
}

/// What a run measured.
pub struct Stats {
    pub ok: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Latency in microseconds.
    pub latency: Histogram<u64>,
}

impl Stats {
    pub fn empty() -> Stats {
        Stats {
            ok: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            latency: histogram(),
        }
    }

    /// Counts one request: its latency if it succeeded, `None` if it failed.
    fn count(&mut self, latency: Option<Duration>) {
        match latency {
            Some(latency) => {
                self.latency.record(latency.as_micros().max(1) as u64).ok();
                self.ok += 1;
            }
            None => self.errors += 1,
        }
    }

    /// Adds another run's counts and latencies to this one.
    pub fn merge(&mut self, other: &Stats) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        self.latency
            .add(&other.latency)
            .expect("same histogram bounds");
    }

    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    pub fn p50_ms(&self) -> f64 {
        self.latency.value_at_quantile(0.50) as f64 / 1000.0
    }

    pub fn p99_ms(&self) -> f64 {
        self.latency.value_at_quantile(0.99) as f64 / 1000.0
    }
}

async fn send(client: &HttpClient, target: &Target) -> bool {
    match client.request(target.request()).await {
        Ok(response) => {
            let ok = response.status().is_success();
            ok & response.into_body().collect().await.is_ok()
        }
        Err(_) => false,
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// `concurrency` workers send back to back for `duration`.
pub async fn fixed_concurrency(
    client: &HttpClient,
    target: &Target,
    concurrency: usize,
    duration: Duration,
) -> Stats {
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, target) = (client.clone(), target.clone());
            tokio::spawn(async move {
                let mut stats = Stats::empty();
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    stats.count(send(&client, &target).await.then(|| sent.elapsed()));
                }
                stats
            })
        })
        .collect();
    let mut stats = Stats::empty();
    for worker in workers {
        stats.merge(&worker.await.unwrap_or_else(|_| Stats::empty()));
    }
    stats.elapsed = started.elapsed();
    stats
}

/// Sends `rate` requests per second for `duration`, each timed from its scheduled start.
///
/// The generator runs on a thread of its own with a single-threaded runtime and its own
/// connections: pacing, sending and reading the responses never hand work to another thread, so
/// the generator wakes the machine once per request and leaves the cores to the servers being
/// measured. Requests are paced by a `timerfd` (precise to microseconds); tokio's own timer has a
/// 1 ms granularity, which at 2,000 requests/s would send them in pairs every millisecond.
pub async fn fixed_rate(target: &Target, rate: u64, duration: Duration) -> Stats {
    let target = target.clone();
    let (done, stats) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("bench-load".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the load generator");
            let _ = done.send(runtime.block_on(paced(target, rate, duration)));
        })
        .expect("the load generator's thread starts");
    stats.await.expect("the load generator does not panic")
}

async fn paced(target: Target, rate: u64, duration: Duration) -> Stats {
    let client = client();
    // Open the connections the rate needs before the clock starts, as a long-running client has.
    let warm: Vec<_> = (0..8)
        .map(|_| {
            let (client, target) = (client.clone(), target.clone());
            tokio::spawn(async move { send(&client, &target).await })
        })
        .collect();
    for w in warm {
        let _ = w.await;
    }
    let total = (rate as f64 * duration.as_secs_f64()) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut timer = Timer::new().expect("a timerfd");
    let started = Instant::now();
    let mut requests = Vec::with_capacity(total as usize);
    for i in 0..total {
        let scheduled = started + interval.mul_f64(i as f64);
        timer
            .sleep_until(scheduled)
            .await
            .expect("the pacing timer works");
        let (client, target) = (client.clone(), target.clone());
        requests.push(tokio::spawn(async move {
            send(&client, &target).await.then(|| scheduled.elapsed())
        }));
    }
    let mut stats = Stats::empty();
    for request in requests {
        stats.count(request.await.ok().flatten());
    }
    stats.elapsed = started.elapsed();
    stats
}

/// A one-shot `timerfd` awaited through the runtime's reactor: microsecond sleeps without a
/// thread of their own.
struct Timer(tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>);

#[allow(unsafe_code)]
impl Timer {
    fn new() -> std::io::Result<Timer> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain system call; the descriptor it returns is owned by the `OwnedFd`.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor nothing else owns; the `OwnedFd` keeps it open, and
        // the same, for as long as the `AsyncFd` that owns it exists.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let fd = unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(std::io::Error::from)?;
        Ok(Timer(fd))
    }

    /// Returns at `deadline` (at once if it has passed). A timer that fails is an error: the
    /// run's pacing, and so its figures, would be wrong.
    async fn sleep_until(&mut self, deadline: Instant) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let wait = deadline.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            return Ok(());
        }
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: wait.as_secs() as libc::time_t,
                tv_nsec: wait.subsec_nanos() as libc::c_long,
            },
        };
        let fd = self.0.get_ref().as_raw_fd();
        // SAFETY: `spec` is a valid itimerspec and `fd` a timerfd this struct owns.
        if unsafe { libc::timerfd_settime(fd, 0, &spec, std::ptr::null_mut()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        loop {
            let mut ready = self.0.readable().await?;
            let mut expirations = [0u8; 8];
            // SAFETY: reads at most 8 bytes into a buffer of 8.
            let read = unsafe { libc::read(fd, expirations.as_mut_ptr().cast(), 8) };
            if read == 8 {
                return Ok(());
            }
            ready.clear_ready();
        }
    }
}

/// Sends one request and returns the status and body (for setup and checks).
pub async fn once(client: &HttpClient, target: &Target) -> anyhow::Result<(u16, Bytes)> {
    let response = client.request(target.request()).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}
