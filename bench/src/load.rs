//! Load generation: closed-loop at a fixed concurrency and open-loop at a fixed rate.
//!
//! Open-loop latency is measured from the moment a request was *scheduled*, not sent, so a
//! stalled server cannot hide its stall (no coordinated omission).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Mutex;

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
    let latency = Arc::new(Mutex::new(histogram()));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, target, latency, ok, errors) = (
            client.clone(),
            target.clone(),
            latency.clone(),
            ok.clone(),
            errors.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut local = histogram();
            while Instant::now() < deadline {
                let t = Instant::now();
                if send(&client, &target).await {
                    local.record(t.elapsed().as_micros().max(1) as u64).ok();
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            latency.lock().await.add(&local).ok();
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let latency = Arc::try_unwrap(latency)
        .expect("workers are done")
        .into_inner();
    Stats {
        ok: ok.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        latency,
    }
}

/// Sends `rate` requests per second for `duration`, each timed from its scheduled start.
///
/// The requests are paced by a thread of their own that sleeps until each scheduled instant
/// (`nanosleep`, precise to tens of microseconds) and hands the request to the runtime. Tokio's
/// own timer has a 1 ms granularity: at 2,000 requests/s it would send them in pairs every
/// millisecond, and the second of each pair would queue behind the first.
pub async fn fixed_rate(
    client: &HttpClient,
    target: &Target,
    rate: u64,
    duration: Duration,
) -> Stats {
    let latency = Arc::new(std::sync::Mutex::new(histogram()));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let total = (rate as f64 * duration.as_secs_f64()) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let started = Instant::now();
    let runtime = tokio::runtime::Handle::current();
    let (client, target) = (client.clone(), target.clone());
    let (pace_latency, pace_ok, pace_errors) = (latency.clone(), ok.clone(), errors.clone());
    let tasks = tokio::task::spawn_blocking(move || {
        let mut tasks = Vec::with_capacity(total as usize);
        for i in 0..total {
            let scheduled = started + interval.mul_f64(i as f64);
            let now = Instant::now();
            if scheduled > now {
                std::thread::sleep(scheduled - now);
            }
            let (client, target, latency, ok, errors) = (
                client.clone(),
                target.clone(),
                pace_latency.clone(),
                pace_ok.clone(),
                pace_errors.clone(),
            );
            tasks.push(runtime.spawn(async move {
                if send(&client, &target).await {
                    let micros = scheduled.elapsed().as_micros().max(1) as u64;
                    latency.lock().expect("not poisoned").record(micros).ok();
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        tasks
    })
    .await
    .expect("the pacing thread does not panic");
    for t in tasks {
        let _ = t.await;
    }
    let latency = Arc::try_unwrap(latency)
        .expect("tasks are done")
        .into_inner()
        .expect("not poisoned");
    Stats {
        ok: ok.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        latency,
    }
}

/// Sends one request and returns the status and body (for setup and checks).
pub async fn once(client: &HttpClient, target: &Target) -> anyhow::Result<(u16, Bytes)> {
    let response = client.request(target.request()).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}
