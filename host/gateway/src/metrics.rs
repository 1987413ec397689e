//! Prometheus metrics, exposed at the admin listener's `/metrics`.
//!
//! Labels are surfaces, statuses, upstream namespaces and plugin names: never values a caller
//! controls beyond those, and never a secret.

use std::hash::Hash;
use std::sync::{OnceLock, RwLock};

use hashbrown::Equivalent;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::TypedMetric;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `rest` or `mcp`.
    pub surface: &'static str,
    /// `2xx`, `4xx`, `5xx`...
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    pub plugin: String,
    /// `on_request` or `on_response`.
    pub hook: &'static str,
    /// `ok`, `refused`, `responded`, or the failure kind (`timeout`, `trap`, ...).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ToolCallLabels {
    /// `direct` (a plain stateless call, answered without rmcp's per-request service) or `rmcp`.
    pub path: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `published` or `unchanged`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    /// A consumer's name, from the consumers file (never a caller's input).
    pub consumer: String,
    /// `admitted`, `limited` or `unavailable` (the store did not answer and `deny` applies).
    pub decision: &'static str,
    /// `local`, `redis`, or `fallback` (counted here while the shared store is away).
    pub store: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerCallLabels {
    pub consumer: String,
    pub capability: String,
    /// The REST operation or MCP tool, as the spec names it.
    pub operation: String,
    /// `2xx`, `4xx`, `5xx`...
    pub status: &'static str,
}

/// `PluginLabels` borrowed: it hashes as they do (the same fields, in the same order).
#[derive(Hash)]
struct PluginQuery<'a> {
    plugin: &'a str,
    hook: &'static str,
    outcome: &'static str,
}

impl Equivalent<PluginLabels> for PluginQuery<'_> {
    fn equivalent(&self, key: &PluginLabels) -> bool {
        self.plugin == key.plugin && self.hook == key.hook && self.outcome == key.outcome
    }
}

/// `LimitLabels` borrowed.
#[derive(Hash)]
struct LimitQuery<'a> {
    consumer: &'a str,
    decision: &'static str,
    store: &'static str,
}

impl Equivalent<LimitLabels> for LimitQuery<'_> {
    fn equivalent(&self, key: &LimitLabels) -> bool {
        self.consumer == key.consumer && self.decision == key.decision && self.store == key.store
    }
}

/// `ConsumerCallLabels` borrowed.
#[derive(Hash)]
struct ConsumerCallQuery<'a> {
    consumer: &'a str,
    capability: &'a str,
    operation: &'a str,
    status: &'static str,
}

impl Equivalent<ConsumerCallLabels> for ConsumerCallQuery<'_> {
    fn equivalent(&self, key: &ConsumerCallLabels) -> bool {
        self.consumer == key.consumer
            && self.capability == key.capability
            && self.operation == key.operation
            && self.status == key.status
    }
}

/// `UpstreamLabels` borrowed.
#[derive(Hash)]
struct UpstreamQuery<'a> {
    upstream: &'a str,
}

impl Equivalent<UpstreamLabels> for UpstreamQuery<'_> {
    fn equivalent(&self, key: &UpstreamLabels) -> bool {
        self.upstream == key.upstream
    }
}

/// The metrics of a family, found by labels the caller lends. A family's own lookup takes
/// owned labels: every count would build them (a `String` per label) and hash them with
/// SipHash under the family's lock. The index holds each metric the family made (the same
/// metric: what it counts, the family exposes), by its labels.
struct Index<L, M> {
    family: Family<L, M>,
    index: RwLock<hashbrown::HashMap<L, M, foldhash::fast::RandomState>>,
}

impl<L, M> Index<L, M>
where
    L: Clone + Hash + Eq + EncodeLabelSet + Send + Sync + std::fmt::Debug + 'static,
    M: Clone + TypedMetric + EncodeMetric + Send + Sync + std::fmt::Debug + 'static,
{
    fn new(family: &Family<L, M>) -> Index<L, M> {
        Index {
            family: family.clone(),
            index: RwLock::default(),
        }
    }

    /// Runs `record` on the metric of `query`'s labels; `labels` builds them the first time.
    fn with<Q: Hash + Equivalent<L>>(
        &self,
        query: &Q,
        labels: impl FnOnce() -> L,
        record: impl FnOnce(&M),
    ) {
        if let Some(metric) = self.index.read().expect("not poisoned").get(query) {
            record(metric);
            return;
        }
        let labels = labels();
        let metric = self.family.get_or_create(&labels).clone();
        record(&metric);
        self.index
            .write()
            .expect("not poisoned")
            .insert(labels, metric);
    }
}

/// Where a request was answered (the `surface` label of `requests`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    Rest = 0,
    Mcp = 1,
}

impl Surface {
    pub fn label(self) -> &'static str {
        match self {
            Surface::Rest => "rest",
            Surface::Mcp => "mcp",
        }
    }
}

/// Every metric of the gateway.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub upstream_seconds: Family<UpstreamLabels, Histogram>,
    pub plugin_calls: Family<PluginLabels, Counter>,
    pub tool_calls: Family<ToolCallLabels, Counter>,
    pub reloads: Family<ReloadLabels, Counter>,
    pub generation: Gauge,
    pub limit_decisions: Family<LimitLabels, Counter>,
    /// 1 while the shared limits store answers (or none is configured), else 0.
    pub limit_store_up: Gauge,
    pub access_log_dropped: Counter,
    pub consumer_calls: Family<ConsumerCallLabels, Counter>,
    /// `requests`' counters of the two surfaces by status class, taken from the family on first
    /// use: a family lookup hashes its labels under a lock on every request, this is an index.
    request_counters: [[OnceLock<Counter>; 5]; 2],
    plugin_counters: Index<PluginLabels, Counter>,
    limit_counters: Index<LimitLabels, Counter>,
    consumer_call_counters: Index<ConsumerCallLabels, Counter>,
    upstream_histograms: Index<UpstreamLabels, Histogram>,
}

fn status_class(status: u16) -> &'static str {
    STATUS_CLASSES[status_index(status)]
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn status_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("capgate");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by surface and status class",
            requests.clone(),
        );
        let upstream_seconds = Family::<UpstreamLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "upstream_request_duration_seconds",
            "Time of upstream exchanges (retries included), by consumes namespace",
            upstream_seconds.clone(),
        );
        let plugin_calls = Family::<PluginLabels, Counter>::default();
        registry.register(
            "plugin_calls",
            "Transform plugin calls, by plugin, hook and outcome",
            plugin_calls.clone(),
        );
        let tool_calls = Family::<ToolCallLabels, Counter>::default();
        registry.register(
            "mcp_tool_calls",
            "MCP tool calls of known tools, by the path that answered them",
            tool_calls.clone(),
        );
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "reloads",
            "Reloads of the specs folder, by result",
            reloads.clone(),
        );
        let generation = Gauge::default();
        registry.register(
            "generation",
            "Generation of the published snapshot",
            generation.clone(),
        );
        let limit_decisions = Family::<LimitLabels, Counter>::default();
        registry.register(
            "limit_decisions",
            "Rate-limit and quota decisions, by consumer, decision and store",
            limit_decisions.clone(),
        );
        let limit_store_up = Gauge::default();
        registry.register(
            "limit_store_up",
            "Whether the shared limits store answers (1) or decisions fall back (0)",
            limit_store_up.clone(),
        );
        let access_log_dropped = Counter::default();
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because the writer was behind",
            access_log_dropped.clone(),
        );
        let consumer_calls = Family::<ConsumerCallLabels, Counter>::default();
        registry.register(
            "consumer_calls",
            "Calls by consumers, by consumer, capability, operation or tool, and status class",
            consumer_calls.clone(),
        );
        Metrics {
            plugin_counters: Index::new(&plugin_calls),
            limit_counters: Index::new(&limit_decisions),
            consumer_call_counters: Index::new(&consumer_calls),
            upstream_histograms: Index::new(&upstream_seconds),
            consumer_calls,
            access_log_dropped,
            limit_decisions,
            limit_store_up,
            registry,
            requests,
            upstream_seconds,
            plugin_calls,
            tool_calls,
            reloads,
            generation,
            request_counters: Default::default(),
        }
    }

    /// Counts one answered request.
    pub fn request(&self, surface: Surface, status: http::StatusCode) {
        let class = status_index(status.as_u16());
        self.request_counters[surface as usize][class]
            .get_or_init(|| {
                let labels = RequestLabels {
                    surface: surface.label(),
                    status: STATUS_CLASSES[class],
                };
                self.requests.get_or_create(&labels).clone()
            })
            .inc();
    }

    /// Counts one call a consumer made (labels from the consumers file and the specs).
    pub fn consumer_call(&self, consumer: &str, capability: &str, operation: &str, status: u16) {
        let status = status_class(status);
        self.consumer_call_counters.with(
            &ConsumerCallQuery {
                consumer,
                capability,
                operation,
                status,
            },
            || ConsumerCallLabels {
                consumer: consumer.to_owned(),
                capability: capability.to_owned(),
                operation: operation.to_owned(),
                status,
            },
            |counter| {
                counter.inc();
            },
        );
    }

    pub fn plugin(&self, plugin: &str, hook: &'static str, outcome: &'static str) {
        self.plugin_counters.with(
            &PluginQuery {
                plugin,
                hook,
                outcome,
            },
            || PluginLabels {
                plugin: plugin.to_owned(),
                hook,
                outcome,
            },
            |counter| {
                counter.inc();
            },
        );
    }

    pub fn tool_call(&self, path: &'static str) {
        self.tool_calls
            .get_or_create(&ToolCallLabels { path })
            .inc();
    }

    pub fn limit_decision(&self, consumer: &str, decision: &'static str, store: &'static str) {
        self.limit_counters.with(
            &LimitQuery {
                consumer,
                decision,
                store,
            },
            || LimitLabels {
                consumer: consumer.to_owned(),
                decision,
                store,
            },
            |counter| {
                counter.inc();
            },
        );
    }

    /// Records the time of one upstream exchange of `upstream` (a consumes namespace).
    pub fn upstream_took(&self, upstream: &str, took: std::time::Duration) {
        self.upstream_histograms.with(
            &UpstreamQuery { upstream },
            || UpstreamLabels {
                upstream: upstream.to_owned(),
            },
            |histogram| histogram.observe(took.as_secs_f64()),
        );
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exposition's line for `series` (a name and its labels, as rendered), if any.
    fn value(metrics: &Metrics, series: &str) -> Option<String> {
        metrics.render().lines().find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .map(str::to_owned)
        })
    }

    /// A lent label set finds the metric its owned labels were stored under: they hash alike.
    #[test]
    fn lent_labels_find_the_metric_made_for_their_owned_labels() {
        let metrics = Metrics::new();
        let count = |plugin: &str, limit: &str, consumer: &str, upstream: &str| {
            metrics.plugin_counters.with(
                &PluginQuery {
                    plugin,
                    hook: "on_request",
                    outcome: "ok",
                },
                || panic!("plugin labels built again for {plugin}"),
                |counter| {
                    counter.inc();
                },
            );
            metrics.limit_counters.with(
                &LimitQuery {
                    consumer: limit,
                    decision: "admitted",
                    store: "local",
                },
                || panic!("limit labels built again"),
                |counter| {
                    counter.inc();
                },
            );
            metrics.consumer_call_counters.with(
                &ConsumerCallQuery {
                    consumer,
                    capability: "identity-sessions",
                    operation: "list",
                    status: "2xx",
                },
                || panic!("consumer-call labels built again"),
                |counter| {
                    counter.inc();
                },
            );
            metrics.upstream_histograms.with(
                &UpstreamQuery { upstream },
                || panic!("upstream labels built again"),
                |histogram| histogram.observe(0.001),
            );
        };
        metrics.plugin("noop.wasm", "on_request", "ok");
        metrics.limit_decision("team-a", "admitted", "local");
        metrics.consumer_call("team-a", "identity-sessions", "list", 200);
        metrics.upstream_took("stripe", std::time::Duration::from_millis(1));
        // Borrowed from strings other than the ones the labels were built from.
        let (plugin, team, upstream) = (
            String::from("noop.wasm"),
            String::from("team-a"),
            String::from("stripe"),
        );
        count(&plugin, &team, &team, &upstream);
        assert!(metrics.render().contains(
            r#"capgate_plugin_calls_total{plugin="noop.wasm",hook="on_request",outcome="ok"} 2"#
        ));
    }

    #[test]
    fn counts_by_lent_labels_reach_the_series_of_those_labels() {
        let metrics = Metrics::new();
        for _ in 0..3 {
            metrics.plugin("noop.wasm", "on_request", "ok");
        }
        metrics.plugin("noop.wasm", "on_response", "ok");
        metrics.plugin("stamp.wasm", "on_request", "ok");
        metrics.limit_decision("team-a", "admitted", "local");
        metrics.limit_decision("team-a", "admitted", "local");
        metrics.limit_decision("team-a", "limited", "local");
        metrics.consumer_call("team-a", "identity-sessions", "list", 200);
        metrics.consumer_call("team-a", "identity-sessions", "list", 201);
        metrics.consumer_call("team-a", "identity-sessions", "list", 404);
        // The same labels split differently are other series.
        metrics.consumer_call("team-a", "identity-sessions-list", "", 200);
        metrics.upstream_took("stripe", std::time::Duration::from_millis(2));
        metrics.upstream_took("stripe", std::time::Duration::from_millis(3));
        let expect = [
            (
                r#"capgate_plugin_calls_total{plugin="noop.wasm",hook="on_request",outcome="ok"}"#,
                "3",
            ),
            (
                r#"capgate_plugin_calls_total{plugin="noop.wasm",hook="on_response",outcome="ok"}"#,
                "1",
            ),
            (
                r#"capgate_plugin_calls_total{plugin="stamp.wasm",hook="on_request",outcome="ok"}"#,
                "1",
            ),
            (
                r#"capgate_limit_decisions_total{consumer="team-a",decision="admitted",store="local"}"#,
                "2",
            ),
            (
                r#"capgate_limit_decisions_total{consumer="team-a",decision="limited",store="local"}"#,
                "1",
            ),
            (
                r#"capgate_consumer_calls_total{consumer="team-a",capability="identity-sessions",operation="list",status="2xx"}"#,
                "2",
            ),
            (
                r#"capgate_consumer_calls_total{consumer="team-a",capability="identity-sessions",operation="list",status="4xx"}"#,
                "1",
            ),
            (
                r#"capgate_consumer_calls_total{consumer="team-a",capability="identity-sessions-list",operation="",status="2xx"}"#,
                "1",
            ),
            (
                r#"capgate_upstream_request_duration_seconds_count{upstream="stripe"}"#,
                "2",
            ),
            (
                r#"capgate_upstream_request_duration_seconds_sum{upstream="stripe"}"#,
                "0.005",
            ),
        ];
        for (series, count) in expect {
            assert_eq!(
                value(&metrics, series).as_deref(),
                Some(count),
                "{series} in\n{}",
                metrics.render()
            );
        }
    }
}
