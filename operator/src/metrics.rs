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
pub struct VerbLabels {
    pub verb: String,
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
    pub duration: Histogram,
    pub leader: Gauge,
    pub api_requests: Family<VerbLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("smtp_relay_operator");
        let reconciles = Counter::default();
        let unchanged = Counter::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        let leader = Gauge::default();
        let api_requests = Family::<VerbLabels, Counter>::default();
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
            api_requests,
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

    /// Counts a request to the API server.
    pub fn api_request(&self, method: &http::Method, uri: &http::Uri) {
        self.api_requests
            .get_or_create(&VerbLabels {
                verb: api_verb(method, uri).to_string(),
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
