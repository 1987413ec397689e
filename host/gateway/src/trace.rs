//! Traces with OpenTelemetry: a span per request, with auth, the rate-limit decision, each
//! plugin hook and each upstream attempt under it, exported over OTLP (HTTP/protobuf or gRPC).
//!
//! Off by default, and then free: no span is made, no header read, and the one check on the
//! request path is an atomic load ([`ON`]). On, the caller's W3C `traceparent`/`tracestate`
//! (from the HTTP headers, or an MCP request's `_meta`, which wins) is continued, and each
//! upstream attempt sends its own. Finished spans go to the SDK's batch processor, which exports
//! from a thread of its own through a bounded queue: a full queue drops spans, and a slow or
//! dead collector never delays a request.
//!
//! The current request's context travels with its future (`within`), so no layer below needs a
//! parameter for it; a child span is made from whatever context is current ([`span`]), and the
//! tracer rides in that context too, so one process can run gateways that trace to different
//! collectors (the tests do).

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::HeaderMap;
use opentelemetry::context::{FutureExt, WithContext};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};

use capgate_model::config::TracingConfig;

pub use opentelemetry::trace::SpanKind as Kind;

/// How many gateways in this process trace: while none does, nothing here does any work.
static ON: AtomicUsize = AtomicUsize::new(0);

/// The wire an exporter speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    HttpProtobuf,
    Grpc,
}

/// What tracing runs with, the config file's settings over the `OTEL_*` environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The traces URL (for HTTP, with `/v1/traces`).
    pub endpoint: String,
    pub protocol: Protocol,
    pub sample_ratio: f64,
    pub service_name: String,
    pub queue: usize,
    pub export_timeout: Duration,
}

impl Settings {
    /// The settings `config` and the environment (`env`) give, or none when tracing is off.
    /// A value no setting can mean is an error naming it.
    pub fn resolve(
        config: &TracingConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Settings>, String> {
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let (exporter, from) = match &config.exporter {
            Some(exporter) => (Some(exporter.clone()), "tracing.exporter"),
            None => (env("OTEL_TRACES_EXPORTER"), "OTEL_TRACES_EXPORTER"),
        };
        match exporter.as_deref().map(str::trim) {
            None | Some("" | "none" | "off") => return Ok(None),
            Some("otlp") => {}
            Some(other) => {
                return Err(format!(
                    "{from} is {other:?}; capgate exports traces over OTLP only: use \"otlp\" or \"off\""
                ));
            }
        }
        let (protocol, from) = match &config.protocol {
            Some(protocol) => (protocol.clone(), "tracing.protocol"),
            None => match env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") {
                Some(protocol) => (protocol, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
                None => (
                    env("OTEL_EXPORTER_OTLP_PROTOCOL").unwrap_or_else(|| "http/protobuf".into()),
                    "OTEL_EXPORTER_OTLP_PROTOCOL",
                ),
            },
        };
        let protocol = match protocol.trim() {
            "http/protobuf" => Protocol::HttpProtobuf,
            "grpc" => Protocol::Grpc,
            other => {
                return Err(format!(
                    "{from} is {other:?}; use \"http/protobuf\" or \"grpc\""
                ));
            }
        };
        let base = |base: &str| match protocol {
            Protocol::HttpProtobuf if !base.trim_end_matches('/').ends_with("/v1/traces") => {
                format!("{}/v1/traces", base.trim_end_matches('/'))
            }
            _ => base.to_owned(),
        };
        let endpoint = match (&config.endpoint, env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")) {
            (Some(endpoint), _) => base(endpoint),
            (None, Some(endpoint)) => endpoint,
            (None, None) => match (env("OTEL_EXPORTER_OTLP_ENDPOINT"), protocol) {
                (Some(endpoint), _) => base(&endpoint),
                (None, Protocol::HttpProtobuf) => "http://localhost:4318/v1/traces".into(),
                (None, Protocol::Grpc) => "http://localhost:4317".into(),
            },
        };
        if let Err(error) = url::Url::parse(&endpoint) {
            return Err(format!(
                "the traces endpoint {:?} is not a URL: {error}",
                redacted(&endpoint)
            ));
        }
        let sample_ratio = match config.sample_ratio {
            Some(ratio) => ratio,
            None => sampler_ratio(env("OTEL_TRACES_SAMPLER"), env("OTEL_TRACES_SAMPLER_ARG"))?,
        };
        if !(0.0..=1.0).contains(&sample_ratio) {
            return Err(format!(
                "the sample ratio {sample_ratio} is not between 0 and 1"
            ));
        }
        let number = |name: &str| -> Result<Option<u64>, String> {
            env(name)
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .map_err(|_| format!("{name} is {v:?}, not a number"))
                })
                .transpose()
        };
        let queue = match config.queue {
            Some(queue) => queue,
            None => number("OTEL_BSP_MAX_QUEUE_SIZE")?.map_or(2048, |n| n as usize),
        };
        let export_timeout = match config.export_timeout {
            Some(timeout) => timeout,
            None => number("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")?
                .or(number("OTEL_EXPORTER_OTLP_TIMEOUT")?)
                .map_or(Duration::from_secs(10), Duration::from_millis),
        };
        Ok(Some(Settings {
            endpoint,
            protocol,
            sample_ratio,
            service_name: config
                .service_name
                .clone()
                .or_else(|| env("OTEL_SERVICE_NAME"))
                .unwrap_or_else(|| "capgate".into()),
            queue: queue.max(1),
            export_timeout,
        }))
    }
}

/// The share `OTEL_TRACES_SAMPLER` (and its argument) asks for; parent-based either way.
fn sampler_ratio(sampler: Option<String>, argument: Option<String>) -> Result<f64, String> {
    let ratio = || {
        argument.as_deref().map_or(Ok(1.0), |a| {
            a.trim()
                .parse::<f64>()
                .map_err(|_| format!("OTEL_TRACES_SAMPLER_ARG is {a:?}, not a ratio"))
        })
    };
    match sampler.as_deref().map(str::trim) {
        None | Some("" | "always_on" | "parentbased_always_on") => Ok(1.0),
        Some("always_off" | "parentbased_always_off") => Ok(0.0),
        Some("traceidratio" | "parentbased_traceidratio") => ratio(),
        Some(other) => Err(format!(
            "OTEL_TRACES_SAMPLER is {other:?}; capgate takes always_on, always_off, traceidratio \
             and their parentbased_ forms"
        )),
    }
}

/// `url` without a password or user, for messages.
fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        Ok(_) => url.to_owned(),
        // Unparsed, it may still hold credentials before an `@`.
        Err(_) => match (url.split_once("://"), url.rsplit_once('@')) {
            (Some((scheme, _)), Some((_, host))) => format!("{scheme}://…@{host}"),
            _ => url.to_owned(),
        },
    }
}

/// One gateway's tracing: off, or a provider exporting to a collector.
pub struct Tracing {
    on: Option<On>,
}

struct On {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

/// The tracer, carried in every traced request's context.
#[derive(Clone)]
struct Carried(SdkTracer);

impl Tracing {
    pub fn off() -> Tracing {
        Tracing { on: None }
    }

    /// Tracing as `config` and the process environment set it; off, with an error logged,
    /// when they cannot be followed. Builds a gRPC exporter, so it runs on the runtime.
    pub fn new(config: &TracingConfig) -> Tracing {
        let settings = match Settings::resolve(config, |name| std::env::var(name).ok()) {
            Ok(Some(settings)) => settings,
            Ok(None) => return Tracing::off(),
            Err(error) => {
                tracing::error!("tracing is off: {error}");
                return Tracing::off();
            }
        };
        match Tracing::start(&settings) {
            Ok(tracing) => {
                tracing::info!(
                    endpoint = %redacted(&settings.endpoint),
                    protocol = ?settings.protocol,
                    sample_ratio = settings.sample_ratio,
                    "exporting traces"
                );
                tracing
            }
            Err(error) => {
                tracing::error!(endpoint = %redacted(&settings.endpoint), "tracing is off: {error}");
                Tracing::off()
            }
        }
    }

    fn start(settings: &Settings) -> Result<Tracing, String> {
        let exporter = opentelemetry_otlp::SpanExporter::builder();
        let exporter = match settings.protocol {
            Protocol::HttpProtobuf => exporter
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(&settings.endpoint)
                .with_timeout(settings.export_timeout)
                .build(),
            Protocol::Grpc => exporter
                .with_tonic()
                .with_endpoint(&settings.endpoint)
                .with_timeout(settings.export_timeout)
                .build(),
        }
        .map_err(|e| e.to_string())?;
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(settings.queue)
            .with_max_export_batch_size(settings.queue.min(512))
            .build();
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch)
            .build();
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(settings.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                settings.sample_ratio,
            ))))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("capgate");
        ON.fetch_add(1, Ordering::Relaxed);
        Ok(Tracing {
            on: Some(On { provider, tracer }),
        })
    }

    pub fn is_on(&self) -> bool {
        self.on.is_some()
    }

    /// A request's span (kind server), continuing the trace the caller's `headers` carry;
    /// none when tracing is off. `describe` gives its name and attributes, and is called only
    /// when tracing is on (an untraced request builds none of them).
    pub fn request<N: Into<Cow<'static, str>>>(
        &self,
        headers: &HeaderMap,
        describe: impl FnOnce() -> (N, Vec<KeyValue>),
    ) -> Option<Traced> {
        let on = self.on.as_ref()?;
        let parent = TraceContextPropagator::new().extract(&Headers(headers));
        let (name, attributes) = describe();
        Some(on.start(name, &parent, attributes))
    }

    /// Flushes what is queued (within `timeout`) and stops exporting.
    pub async fn shutdown(&self, timeout: Duration) {
        let Some(on) = &self.on else {
            return;
        };
        let provider = on.provider.clone();
        // The SDK waits on its export thread: not on a runtime worker.
        let _ = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(timeout)).await;
    }
}

impl Drop for Tracing {
    fn drop(&mut self) {
        if self.on.is_some() {
            ON.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl On {
    fn start(
        &self,
        name: impl Into<Cow<'static, str>>,
        parent: &Context,
        attributes: Vec<KeyValue>,
    ) -> Traced {
        server_span(&Carried(self.tracer.clone()), name, parent, attributes)
    }
}

/// A server span under `parent`, in a context that carries the tracer for its children.
fn server_span(
    tracer: &Carried,
    name: impl Into<Cow<'static, str>>,
    parent: &Context,
    attributes: Vec<KeyValue>,
) -> Traced {
    let span = tracer
        .0
        .span_builder(name)
        .with_kind(SpanKind::Server)
        .with_attributes(attributes)
        .start_with_context(&tracer.0, parent);
    Traced {
        cx: parent.with_value(tracer.clone()).with_span(span),
    }
}

/// A traced request's span and the context its children are made in.
#[derive(Clone)]
pub struct Traced {
    cx: Context,
}

impl Traced {
    /// The trace's id, in hex, for the access log.
    pub fn trace_id(&self) -> String {
        self.cx.span().span_context().trace_id().to_string()
    }

    /// A server span for an MCP request, continuing the trace its `_meta` names (`traceparent`,
    /// `tracestate`) or, without one, as a child of this (the HTTP request's) span.
    pub fn request_from_meta(
        &self,
        name: impl Into<Cow<'static, str>>,
        meta: MetaContext<'_>,
        attributes: Vec<KeyValue>,
    ) -> Traced {
        let tracer = self
            .cx
            .get::<Carried>()
            .expect("a traced context carries its tracer");
        let parent = match meta.traceparent {
            Some(_) => TraceContextPropagator::new().extract(&meta),
            None => self.cx.clone(),
        };
        server_span(tracer, name, &parent, attributes)
    }

    pub fn set(&self, attribute: KeyValue) {
        self.cx.span().set_attribute(attribute);
    }

    pub fn rename(&self, name: impl Into<Cow<'static, str>>) {
        self.cx.span().update_name(name);
    }

    /// Records the answer's status: `http.response.status_code`, and an error for a 5xx (a
    /// server span's own failures; a 4xx is the caller's).
    pub fn answered(&self, status: u16) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if status >= 500 {
            span.set_attribute(KeyValue::new("error.type", status.to_string()));
            span.set_status(Status::error(""));
        }
    }
}

/// Runs `future` inside `traced`'s span, or as it is when the request is not traced.
///
/// A plain function returning either future, not an `async fn` (which would hold `future` twice
/// over: as its argument and as what it awaits). A traced future is boxed first, so the
/// context wrapper moves a pointer.
pub fn within<F: Future>(
    traced: Option<&Traced>,
    future: F,
) -> futures_util::future::Either<WithContext<Pin<Box<F>>>, F> {
    use futures_util::future::Either;
    match traced {
        Some(traced) => Either::Left(Box::pin(future).with_context(traced.cx.clone())),
        None => Either::Right(future),
    }
}

/// A span under the current request's, ended when dropped.
pub struct Child {
    cx: Context,
}

/// A span named `name` in the current request's trace; none when the request is not traced.
pub fn span(
    name: impl Into<Cow<'static, str>>,
    kind: SpanKind,
    attributes: impl FnOnce() -> Vec<KeyValue>,
) -> Option<Child> {
    if ON.load(Ordering::Relaxed) == 0 {
        return None;
    }
    let cx = Context::current();
    let tracer = cx.get::<Carried>()?;
    let span = tracer
        .0
        .span_builder(name)
        .with_kind(kind)
        .with_attributes(attributes())
        .start_with_context(&tracer.0, &cx);
    Some(Child {
        cx: cx.with_span(span),
    })
}

impl Child {
    pub fn set(&self, attribute: KeyValue) {
        self.cx.span().set_attribute(attribute);
    }

    /// Marks the span failed, with `error.type` (a short, low-cardinality reason).
    pub fn fail(&self, error_type: impl Into<opentelemetry::Value>) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new("error.type", error_type));
        span.set_status(Status::error(""));
    }

    /// Adds this span's `traceparent` (and `tracestate`) to `headers`, for the next hop.
    pub fn inject(&self, headers: &mut HeaderMap) {
        TraceContextPropagator::new().inject_context(&self.cx, &mut HeadersMut(headers));
    }
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// The W3C trace context an MCP request's `_meta` carries (SEP-414).
#[derive(Debug, Clone, Copy, Default)]
pub struct MetaContext<'a> {
    pub traceparent: Option<&'a str>,
    pub tracestate: Option<&'a str>,
}

impl<'a> MetaContext<'a> {
    pub fn of(meta: &'a serde_json::Map<String, serde_json::Value>) -> MetaContext<'a> {
        MetaContext {
            traceparent: meta.get("traceparent").and_then(serde_json::Value::as_str),
            tracestate: meta.get("tracestate").and_then(serde_json::Value::as_str),
        }
    }
}

impl Extractor for MetaContext<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => self.traceparent,
            "tracestate" => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn off_unless_asked() {
        let config = TracingConfig::default();
        assert_eq!(Settings::resolve(&config, env(&[])), Ok(None));
        let on = [
            ("OTEL_TRACES_EXPORTER", "otlp"),
            ("OTEL_SDK_DISABLED", "true"),
        ];
        assert_eq!(Settings::resolve(&config, env(&on)), Ok(None));
        let config = TracingConfig {
            exporter: Some("off".into()),
            ..TracingConfig::default()
        };
        assert_eq!(
            Settings::resolve(&config, env(&[("OTEL_TRACES_EXPORTER", "otlp")])),
            Ok(None)
        );
    }

    #[test]
    fn the_environment_fills_what_the_file_leaves_out() {
        let vars = [
            ("OTEL_TRACES_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_SERVICE_NAME", "edge"),
        ];
        let settings = Settings::resolve(&TracingConfig::default(), env(&vars))
            .unwrap()
            .unwrap();
        assert_eq!(settings.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(settings.protocol, Protocol::HttpProtobuf);
        assert_eq!(settings.sample_ratio, 0.25);
        assert_eq!(settings.service_name, "edge");
        // The file wins where it speaks; a traces endpoint is taken as it is.
        let config = TracingConfig {
            protocol: Some("grpc".into()),
            sample_ratio: Some(1.0),
            ..TracingConfig::default()
        };
        let vars = [
            ("OTEL_TRACES_EXPORTER", "otlp"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://collector:4317",
            ),
        ];
        let settings = Settings::resolve(&config, env(&vars)).unwrap().unwrap();
        assert_eq!(settings.endpoint, "http://collector:4317");
        assert_eq!(settings.protocol, Protocol::Grpc);
        assert_eq!(settings.sample_ratio, 1.0);
    }

    #[test]
    fn bad_values_are_named() {
        let on = |protocol: &str| TracingConfig {
            exporter: Some("otlp".into()),
            protocol: Some(protocol.into()),
            ..TracingConfig::default()
        };
        let error = Settings::resolve(&on("http/json"), env(&[])).unwrap_err();
        assert!(error.contains("\"http/json\""), "{error}");
        let error = Settings::resolve(
            &TracingConfig {
                exporter: Some("jaeger".into()),
                ..TracingConfig::default()
            },
            env(&[]),
        )
        .unwrap_err();
        assert!(error.contains("\"jaeger\""), "{error}");
        let vars = [
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "x"),
        ];
        let error = Settings::resolve(&on("grpc"), env(&vars)).unwrap_err();
        assert!(error.contains("\"x\""), "{error}");
        // A collector's credentials never show in an error.
        let config = TracingConfig {
            endpoint: Some("http://user:pw@".into()),
            ..on("grpc")
        };
        let error = Settings::resolve(&config, env(&[])).unwrap_err();
        assert!(!error.contains("pw"), "{error}");
    }
}
