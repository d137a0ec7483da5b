//! What the gateway counts, for `GET /metrics` on the admin listener (Prometheus / OpenMetrics
//! text, through `prometheus-client`).
//!
//! The request path only increments atomics behind already-created label sets: one
//! [`Metrics::request`] per request, from the chain's closing step (`Gateway::finish`), so every
//! outcome is counted once. What the enforcer owns (blocks, the XDP counters) is read at scrape
//! time instead ([`kernel::KernelCollector`]), not copied on every change.
//!
//! Every label is bounded: decisions and method classes are fixed sets, callers come from the
//! configuration (and can be switched off), tool names are capped at [`MAX_TOOL_LABELS`]
//! distinct values (then `_other`), and no label ever holds a key, a header or an argument.

mod fleet;
mod kernel;
mod oauth;

pub use fleet::FleetCollector;
pub use kernel::KernelCollector;
pub use oauth::OAuthCollector;

use std::{
    collections::HashSet,
    sync::{Arc, RwLock, atomic::AtomicBool},
    time::Duration,
};

use prometheus_client::{
    encoding::{EncodeLabelSet, LabelSetEncoder},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

use crate::{
    audit::Decision,
    mcp::jsonrpc::{Kind, Message},
    protection::OffenseCounts,
};

/// Distinct tool names labelled; calls of further tools count under `_other`. Tool names come
/// from clients (authenticated ones), so the set must not grow with what they send.
pub const MAX_TOOL_LABELS: usize = 500;

/// The gateway's metrics, shared by every worker.
pub struct Metrics {
    registry: Registry,
    caller_labels: bool,
    requests: Family<RequestLabels, Counter>,
    tool_calls: Family<[(&'static str, Arc<str>); 1], Counter>,
    tool_names: RwLock<HashSet<Arc<str>>>,
    added: Histogram,
    upstream_headers: Histogram,
    rate_limited: Family<[(&'static str, &'static str); 1], Counter>,
    reloads: Family<[(&'static str, &'static str); 1], Counter>,
    open_connections: Gauge,
    open_streams: Gauge,
    pub upstream: PoolStats,
    /// Blocks and XDP counters, as of the last scrape's snapshot.
    pub kernel: Arc<KernelCollector>,
    /// The fleet's Redis link, as of the last scrape (fleet mode).
    pub fleet: Arc<FleetCollector>,
    /// The OAuth issuers' keys, as of the last scrape.
    pub oauth: Arc<OAuthCollector>,
}

/// The labels of `mcp_gateway_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct RequestLabels {
    decision: &'static str,
    method: &'static str,
    caller: Option<Arc<str>>,
}

impl EncodeLabelSet for RequestLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("decision", self.decision).encode(encoder.encode_label())?;
        ("method", self.method).encode(encoder.encode_label())?;
        if let Some(caller) = &self.caller {
            ("caller", &**caller).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

/// Upstream connection pools, all workers together.
#[derive(Debug, Clone, Default)]
pub struct PoolStats {
    /// Connections opened so far.
    pub opened: Counter,
    /// Idle connections waiting in the pools now.
    pub idle: Gauge,
    /// Requests sent on a connection that had served another before.
    pub reused: Counter,
}

/// The audit log's writes: how long a write takes (to the file, or to the fsync that commits
/// it) and how many failed.
#[derive(Debug, Clone)]
pub struct AuditStats {
    pub write_seconds: Histogram,
    pub failures: Counter,
    /// The last write failed.
    pub failing: Arc<AtomicBool>,
}

impl Default for AuditStats {
    fn default() -> Self {
        Self {
            write_seconds: latency_histogram(),
            failures: Counter::default(),
            failing: Arc::default(),
        }
    }
}

fn latency_histogram() -> Histogram {
    // 25 µs to ~3.3 s.
    Histogram::new(exponential_buckets(0.000_025, 2.0, 18))
}

/// What a finished request reports.
pub struct RequestRecord<'a> {
    pub decision: Decision,
    pub method: &'static str,
    pub caller: Option<&'a str>,
    pub messages: &'a [Message],
    /// From arrival until sent upstream, or until answered when refused.
    pub added: Duration,
    /// From sent upstream until the upstream's response headers, when forwarded.
    pub upstream_headers: Option<Duration>,
}

impl Metrics {
    /// `audit` are the audit log's own statistics, exported here.
    pub fn new(caller_labels: bool, audit: &AuditStats, offenses: &OffenseCounts) -> Self {
        let mut metrics = Self {
            registry: Registry::with_prefix("mcp_gateway"),
            caller_labels,
            requests: Family::default(),
            tool_calls: Family::default(),
            tool_names: RwLock::default(),
            added: latency_histogram(),
            upstream_headers: latency_histogram(),
            rate_limited: Family::default(),
            reloads: Family::default(),
            open_connections: Gauge::default(),
            open_streams: Gauge::default(),
            upstream: PoolStats::default(),
            kernel: Arc::default(),
            fleet: Arc::default(),
            oauth: Arc::default(),
        };
        metrics.register(audit, offenses);
        metrics
    }

    fn register(&mut self, audit: &AuditStats, offenses: &OffenseCounts) {
        let registry = &mut self.registry;
        registry.register(
            "requests",
            "Requests answered, by decision, JSON-RPC method class and caller",
            self.requests.clone(),
        );
        registry.register(
            "tool_calls",
            "tools/call messages authenticated callers sent, by tool",
            self.tool_calls.clone(),
        );
        registry.register_with_unit(
            "added",
            "Time the gateway spent on a request before forwarding it (or answering a refusal)",
            Unit::Seconds,
            self.added.clone(),
        );
        registry.register_with_unit(
            "upstream_headers",
            "Time from forwarding a request to the upstream's response headers",
            Unit::Seconds,
            self.upstream_headers.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit, by scope (caller or tool)",
            self.rate_limited.clone(),
        );
        registry.register(
            "offenses",
            "Offenses counted towards blocks, by kind",
            offenses.clone(),
        );
        registry.register(
            "reloads",
            "Policy reloads, by outcome",
            self.reloads.clone(),
        );
        registry.register(
            "open_connections",
            "Client connections open now",
            self.open_connections.clone(),
        );
        registry.register(
            "open_streams",
            "Event streams (SSE) being relayed now",
            self.open_streams.clone(),
        );
        registry.register_with_unit(
            "audit_write",
            "Time to write (and sync, with fsync) audit lines",
            Unit::Seconds,
            audit.write_seconds.clone(),
        );
        registry.register(
            "audit_write_failures",
            "Audit writes that failed (their requests were refused)",
            audit.failures.clone(),
        );
        registry.register(
            "upstream_connections_opened",
            "Connections opened to the upstream",
            self.upstream.opened.clone(),
        );
        registry.register(
            "upstream_connections_idle",
            "Idle upstream connections waiting in the pools",
            self.upstream.idle.clone(),
        );
        registry.register(
            "upstream_requests_reused",
            "Requests sent on an upstream connection that served one before",
            self.upstream.reused.clone(),
        );
        registry.register_collector(Box::new(Arc::clone(&self.kernel)));
        registry.register_collector(Box::new(Arc::clone(&self.fleet)));
        registry.register_collector(Box::new(Arc::clone(&self.oauth)));
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Counts one finished request.
    pub fn request(&self, record: &RequestRecord<'_>) {
        let caller = record.caller.filter(|_| self.caller_labels).map(Arc::from);
        self.requests
            .get_or_create(&RequestLabels {
                decision: record.decision.as_str(),
                method: record.method,
                caller,
            })
            .inc();
        self.added.observe(record.added.as_secs_f64());
        if let Some(upstream) = record.upstream_headers {
            self.upstream_headers.observe(upstream.as_secs_f64());
        }
        if record.caller.is_some() {
            for tool in record.messages.iter().filter_map(Message::called_tool) {
                let label = self.tool_label(tool);
                self.tool_calls.get_or_create(&[("tool", label)]).inc();
            }
        }
    }

    /// The tool's own name while fewer than [`MAX_TOOL_LABELS`] are in use, else `_other`.
    fn tool_label(&self, tool: &str) -> Arc<str> {
        let known = self
            .tool_names
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(tool)
            .cloned();
        if let Some(name) = known {
            return name;
        }
        let mut names = self
            .tool_names
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if names.len() >= MAX_TOOL_LABELS {
            return Arc::from("_other");
        }
        let name: Arc<str> = Arc::from(tool);
        names.insert(Arc::clone(&name));
        name
    }

    pub fn rate_limited(&self, tool: bool) {
        let scope = if tool { "tool" } else { "caller" };
        self.rate_limited.get_or_create(&[("scope", scope)]).inc();
    }

    pub fn reload(&self, applied: bool) {
        let outcome = if applied { "applied" } else { "rejected" };
        self.reloads.get_or_create(&[("outcome", outcome)]).inc();
    }

    /// Counts a connection open until the guard drops.
    pub fn connection(&self) -> GaugeGuard {
        GaugeGuard::new(&self.open_connections)
    }

    /// Counts a stream open until the guard drops.
    pub fn stream(&self) -> GaugeGuard {
        GaugeGuard::new(&self.open_streams)
    }
}

/// The class of a request for the `method` label: what its messages ask for, or what the HTTP
/// method does when there is no body.
pub fn method_class(http: &hyper::Method, messages: &[Message]) -> &'static str {
    match messages {
        [] if http == hyper::Method::GET => "stream",
        [] if http == hyper::Method::DELETE => "session_end",
        // Refused before its body was read (unauthenticated, too large...).
        [] => "unread",
        [message] => match message.kind {
            Kind::ToolCall => "tools/call",
            Kind::PromptGet => "prompts/get",
            Kind::ResourceRead => "resources/read",
            Kind::ResourceSubscription => "resources/subscribe",
            Kind::PromptCompletion | Kind::ResourceCompletion => "completion/complete",
            Kind::List => "list",
            Kind::Negotiation if message.method.as_deref() == Some("initialize") => "initialize",
            Kind::Negotiation => "server/discover",
            Kind::Listen => "subscriptions/listen",
            Kind::TaskFollowUp => "tasks",
            Kind::OtherRequest => "other",
            Kind::Notification => "notification",
            Kind::Response => "response",
        },
        _ => "batch",
    }
}

/// Decrements its gauge when dropped.
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_labels_stop_growing_at_the_cap_and_known_tools_keep_theirs() {
        let metrics = Metrics::new(true, &AuditStats::default(), &OffenseCounts::default());
        assert_eq!(&*metrics.tool_label("echo"), "echo");
        for n in 1..MAX_TOOL_LABELS {
            metrics.tool_label(&format!("tool-{n}"));
        }
        assert_eq!(&*metrics.tool_label("one-too-many"), "_other");
        assert_eq!(&*metrics.tool_label("echo"), "echo");
        assert_eq!(metrics.tool_names.read().unwrap().len(), MAX_TOOL_LABELS);
    }
}
