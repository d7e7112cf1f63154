//! Prometheus metrics of the operator, kept out of the reconcile logic.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: String,
}

/// The operator's metrics, registered under the `smtp_relay_operator` prefix.
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Counter,
    pub unchanged: Counter,
    pub failures: Family<ErrorLabels, Counter>,
    pub duration: Histogram,
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("smtp_relay_operator");
        let reconciles = Counter::default();
        let unchanged = Counter::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        let leader = Gauge::default();
        registry.register("reconciles", "Reconciliations started", reconciles.clone());
        registry.register(
            "reconciles_unchanged",
            "Reconciliations that found nothing changed since the last full one and made no API request",
            unchanged.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Reconciliations that failed or rejected their input, by error",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of reconciliations",
            duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        Metrics {
            registry,
            reconciles,
            unchanged,
            failures,
            duration,
            leader,
        }
    }
}

impl Metrics {
    /// Counts a reconcile and measures it until the returned guard drops.
    pub fn reconcile_started(&self) -> ReconcileTimer {
        self.reconciles.inc();
        ReconcileTimer {
            start: Instant::now(),
            histogram: self.duration.clone(),
        }
    }

    pub fn failure(&self, label: &str) {
        self.failures
            .get_or_create(&ErrorLabels {
                error: label.to_string(),
            })
            .inc();
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

pub struct ReconcileTimer {
    start: Instant,
    histogram: Histogram,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}
