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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HeapLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabels {
    pub verb: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadyLabels {
    pub ready: String,
}

/// How a reconcile ended, the `outcome` of its duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReconcileOutcome {
    /// Nothing changed since the last full reconcile: no request made.
    Unchanged,
    /// The children were applied (or were already as wanted) and status written.
    Applied,
    /// The input was refused (invalid spec, missing Secret, name conflict, refused apply):
    /// nothing written but status and Events.
    Rejected,
    /// A deleted relay: the finalizer's drain.
    Deleting,
    /// The API server failed a request: retried with backoff.
    Error,
}

impl ReconcileOutcome {
    fn label(self) -> &'static str {
        match self {
            ReconcileOutcome::Unchanged => "unchanged",
            ReconcileOutcome::Applied => "applied",
            ReconcileOutcome::Rejected => "rejected",
            ReconcileOutcome::Deleting => "deleting",
            ReconcileOutcome::Error => "error",
        }
    }
}

const DURATION_BUCKETS: [f64; 10] = [0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// The Kubernetes verb of a request to the API server: a GET with `watch=true` is a WATCH, a
/// GET of a collection a LIST (as the API server's own metrics name them).
pub fn api_verb(method: &http::Method, uri: &http::Uri) -> &'static str {
    let query = uri.query().unwrap_or_default();
    match *method {
        http::Method::GET
            if query
                .split('&')
                .any(|q| q == "watch=true" || q == "watch=1") =>
        {
            "WATCH"
        }
        http::Method::GET => {
            // /api/v1/namespaces/NS/KIND/NAME has an even number of segments after the group
            // version; a collection an odd one.
            let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
            let after_version = match segments.first() {
                Some(&"api") => segments.len().saturating_sub(2),
                _ => segments.len().saturating_sub(3),
            };
            let namespaced = segments.get(if segments.first() == Some(&"api") {
                2
            } else {
                3
            }) == Some(&"namespaces");
            let rest = if namespaced {
                after_version.saturating_sub(2)
            } else {
                after_version
            };
            if rest % 2 == 1 {
                "LIST"
            } else {
                "GET"
            }
        }
        http::Method::PATCH => "PATCH",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

/// The operator's metrics, registered under the `smtp_relay_operator` prefix.
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Counter,
    pub unchanged: Counter,
    pub failures: Family<ErrorLabels, Counter>,
    pub duration: Family<OutcomeLabels, Histogram, fn() -> Histogram>,
    pub leader: Gauge,
    pub api_requests: Family<VerbLabels, Counter>,
    relays: Family<ReadyLabels, Gauge>,
    heap: Family<HeapLabels, Gauge>,
    /// The controller's cache of SmtpRelays, once it runs (on the leader): counted by Ready
    /// when scraped.
    relay_store: std::sync::OnceLock<kube::runtime::reflector::Store<crate::floor::crd::SmtpRelay>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("smtp_relay_operator");
        let reconciles = Counter::default();
        let unchanged = Counter::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let duration = Family::new_with_constructor(duration_histogram as fn() -> Histogram);
        let relays = Family::<ReadyLabels, Gauge>::default();
        let leader = Gauge::default();
        let api_requests = Family::<VerbLabels, Counter>::default();
        let heap = Family::<HeapLabels, Gauge>::default();
        registry.register(
            "heap_bytes",
            "The memory allocator's bytes: allocated (the operator's data), resident (the pages it holds, most of the process's resident memory)",
            heap.clone(),
        );
        registry.register(
            "api_requests",
            "Requests to the Kubernetes API server, by verb (GET, LIST, WATCH, PATCH, ...)",
            api_requests.clone(),
        );
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
            "Duration of reconciliations, by outcome (unchanged, applied, rejected, deleting, error)",
            duration.clone(),
        );
        registry.register(
            "relays",
            "SmtpRelays by the status of their Ready condition (True, False, Unknown); on the leader",
            relays.clone(),
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
            api_requests,
            relays,
            heap,
            relay_store: std::sync::OnceLock::new(),
        }
    }
}

impl Metrics {
    /// Counts a reconcile and measures it until the returned guard drops, by the outcome set
    /// on it (`Error` when it returns early on a failed request).
    pub fn reconcile_started(&self) -> ReconcileTimer {
        self.reconciles.inc();
        ReconcileTimer {
            start: Instant::now(),
            histograms: self.duration.clone(),
            outcome: ReconcileOutcome::Error,
        }
    }

    /// Counts the relays of `store` by Ready at every scrape from now on.
    pub fn count_relays(
        &self,
        store: kube::runtime::reflector::Store<crate::floor::crd::SmtpRelay>,
    ) {
        let _ = self.relay_store.set(store);
    }

    fn count_ready(&self) {
        let Some(store) = self.relay_store.get() else {
            return;
        };
        let mut counts = [("True", 0), ("False", 0), ("Unknown", 0)];
        for relay in store.state() {
            let ready = crate::floor::crd::ready_condition(relay.status.as_ref())
                .map_or("Unknown", |c| c.status.as_str());
            let i = match ready {
                "True" => 0,
                "False" => 1,
                _ => 2,
            };
            counts[i].1 += 1;
        }
        for (ready, n) in counts {
            self.relays
                .get_or_create(&ReadyLabels {
                    ready: ready.into(),
                })
                .set(n);
        }
    }

    pub fn failure(&self, label: &str) {
        self.failures
            .get_or_create(&ErrorLabels {
                error: label.to_string(),
            })
            .inc();
    }

    /// Counts a request to the API server.
    pub fn api_request(&self, method: &http::Method, uri: &http::Uri) {
        self.api_requests
            .get_or_create(&VerbLabels {
                verb: api_verb(method, uri).to_string(),
            })
            .inc();
    }

    /// jemalloc's figures, as of now (its statistics are a snapshot taken when the epoch
    /// advances).
    fn read_heap(&self) {
        use tikv_jemalloc_ctl::{epoch, stats};
        if epoch::advance().is_err() {
            return;
        }
        for (state, bytes) in [
            ("allocated", stats::allocated::read()),
            ("resident", stats::resident::read()),
        ] {
            if let Ok(bytes) = bytes.map(i64::try_from) {
                self.heap
                    .get_or_create(&HeapLabels {
                        state: state.into(),
                    })
                    .set(bytes.unwrap_or(i64::MAX));
            }
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        self.count_ready();
        self.read_heap();
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

pub struct ReconcileTimer {
    start: Instant,
    histograms: Family<OutcomeLabels, Histogram, fn() -> Histogram>,
    outcome: ReconcileOutcome,
}

impl ReconcileTimer {
    /// How the reconcile ended.
    pub fn outcome(&mut self, outcome: ReconcileOutcome) {
        self.outcome = outcome;
    }
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histograms
            .get_or_create(&OutcomeLabels {
                outcome: self.outcome.label().into(),
            })
            .observe(self.start.elapsed().as_secs_f64());
    }
}

/// A Kubernetes client whose every request is counted in `metrics`.
pub async fn counted_client(metrics: std::sync::Arc<Metrics>) -> Result<kube::Client, kube::Error> {
    let config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    let count = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        metrics.api_request(req.method(), req.uri());
        req
    });
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&count)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jemalloc_has_the_options_built_into_it() {
        // `.cargo/config.toml`: gone from the build, the operator holds more memory at rest.
        assert_eq!(tikv_jemalloc_ctl::opt::narenas::read().ok(), Some(1));
        assert_eq!(
            tikv_jemalloc_ctl::opt::background_thread::read().ok(),
            Some(true)
        );
    }

    #[test]
    fn heap_bytes_are_in_the_metrics() {
        let text = Metrics::default().encode();
        for state in ["allocated", "resident"] {
            assert!(
                text.contains(&format!(
                    "smtp_relay_operator_heap_bytes{{state=\"{state}\"}}"
                )),
                "{text}"
            );
        }
    }

    #[test]
    fn durations_by_outcome_and_relays_by_ready() {
        let metrics = Metrics::default();
        drop(metrics.reconcile_started());
        let mut timer = metrics.reconcile_started();
        timer.outcome(ReconcileOutcome::Unchanged);
        drop(timer);
        let text = metrics.encode();
        for series in [
            "smtp_relay_operator_reconcile_duration_seconds_count{outcome=\"error\"} 1",
            "smtp_relay_operator_reconcile_duration_seconds_count{outcome=\"unchanged\"} 1",
            "smtp_relay_operator_reconciles_total 2",
        ] {
            assert!(text.contains(series), "{series} in\n{text}");
        }
        // Not the leader: no count of relays at all (not zeros that would read as none).
        assert!(!text.contains("smtp_relay_operator_relays{"), "{text}");

        let (store, mut writer) = kube::runtime::reflector::store();
        let ready = |name: &str, ok: Option<bool>| {
            let mut relay = crate::fixtures::relay(name);
            relay.status = ok.map(|ok| crate::floor::crd::SmtpRelayStatus {
                conditions: vec![crate::steps::report::status::condition_at(
                    "Ready",
                    Some(ok),
                    "Why",
                    String::new(),
                    None,
                    &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        jiff::Timestamp::UNIX_EPOCH,
                    ),
                    None,
                )],
                ..Default::default()
            });
            kube::runtime::watcher::Event::Apply(relay)
        };
        for event in [
            ready("a", Some(true)),
            ready("b", Some(true)),
            ready("c", Some(false)),
            ready("d", None),
        ] {
            writer.apply_watcher_event(&event);
        }
        metrics.count_relays(store);
        let text = metrics.encode();
        for series in [
            "smtp_relay_operator_relays{ready=\"True\"} 2",
            "smtp_relay_operator_relays{ready=\"False\"} 1",
            "smtp_relay_operator_relays{ready=\"Unknown\"} 1",
        ] {
            assert!(text.contains(series), "{series} in\n{text}");
        }
    }

    /// The series the chart's dashboard and alerts query are ones the relay and the operator
    /// serve: a renamed metric fails here, not silently on a dashboard.
    #[test]
    fn every_series_the_dashboard_and_alerts_query_exists() {
        let spool = tempfile::tempdir().unwrap();
        let relay = smtp_relay::metrics::Metrics::new(spool.path());
        relay.set_logs_in(true);
        // Families show on the page once they have a series.
        relay.observe_log_line("postfix/smtpd[1]: NOQUEUE: reject: RCPT from x[1.2.3.4]: 554 5.7.1 <a@b.c>: Relay access denied");
        relay.observe_log_line("postfix/smtpd[1]: warning: Message delivery request rate limit exceeded: 3 from x[1.2.3.4] for service smtp");
        relay.oauth2_refreshed(Some("invalid_client"));
        relay
            .user_rate_limited
            .get_or_create(&smtp_relay::metrics::UserLimitLabels {
                user: "app1".into(),
                limit: "messages".into(),
            })
            .inc();
        let operator = Metrics::default();
        let (store, _writer) = kube::runtime::reflector::store();
        operator.count_relays(store);
        operator.api_request(&http::Method::GET, &"/api/v1/pods".parse().unwrap());
        operator.failure("InvalidSpec");
        drop(operator.reconcile_started());
        let served: std::collections::BTreeSet<String> = [relay.encode(), operator.encode()]
            .iter()
            .flat_map(|page| page.lines().map(str::to_string).collect::<Vec<_>>())
            .filter(|l| l.starts_with("# TYPE "))
            .filter_map(|l| {
                let mut words = l.split_whitespace().skip(2);
                let (name, kind) = (words.next()?, words.next()?);
                Some(match kind {
                    "counter" => vec![format!("{name}_total")],
                    "histogram" => ["_bucket", "_count", "_sum"]
                        .map(|s| format!("{name}{s}"))
                        .to_vec(),
                    _ => vec![name.to_string()],
                })
            })
            .flatten()
            .collect();
        let chart =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/smtp-relay-operator");
        for file in [
            "dashboards/smtp-relay.json",
            "templates/prometheusrule.yaml",
        ] {
            let text = std::fs::read_to_string(chart.join(file)).unwrap();
            let used: std::collections::BTreeSet<&str> = text
                .match_indices("smtp_relay_")
                .map(|(at, _)| {
                    let rest = &text[at..];
                    let end = rest
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(rest.len());
                    &rest[..end]
                })
                .collect();
            assert!(used.len() > 5, "{file}: {used:?}");
            for series in used {
                assert!(
                    served.contains(series),
                    "{file} queries {series}, which nothing serves; served: {served:?}"
                );
            }
        }
    }

    #[test]
    fn verbs_are_named_as_the_api_server_names_them() {
        let verb =
            |m: &str, uri: &str| api_verb(&m.parse().expect("method"), &uri.parse().expect("uri"));
        assert_eq!(verb("GET", "/api/v1/namespaces/mail/secrets/login"), "GET");
        assert_eq!(
            verb("GET", "/api/v1/namespaces/mail/pods?labelSelector=a%3Db"),
            "LIST"
        );
        assert_eq!(
            verb("GET", "/api/v1/secrets?watch=true&resourceVersion=1"),
            "WATCH"
        );
        assert_eq!(verb("GET", "/api/v1/secrets"), "LIST");
        assert_eq!(
            verb("GET", "/apis/apps/v1/namespaces/mail/statefulsets/r1"),
            "GET"
        );
        assert_eq!(
            verb("GET", "/apis/smtprelay.dev/v1alpha1/smtprelays?limit=1"),
            "LIST"
        );
        assert_eq!(
            verb("GET", "/apis/coordination.k8s.io/v1/namespaces/x/leases/op"),
            "GET"
        );
        assert_eq!(
            verb(
                "PATCH",
                "/apis/smtprelay.dev/v1alpha1/namespaces/m/smtprelays/r/status"
            ),
            "PATCH"
        );
    }
}
