//! What every reconcile shares: the API client, the Event recorder's identity, the metrics,
//! the build options, the per-relay backoff and the watches' caches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::events::{Event, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use tracing::{debug, warn};

use crate::floor::contract::{BuildOptions, MANAGER};
use crate::floor::crd::SmtpRelay;
use crate::observe::fingerprint::{Memory, Stores};
use crate::runtime::metrics::Metrics;

/// Shared state of the reconciles.
pub struct Context {
    pub client: Client,
    pub(crate) reporter: Reporter,
    pub metrics: Arc<Metrics>,
    pub opts: BuildOptions,
    pub(crate) failures: Mutex<HashMap<ObjectRef<SmtpRelay>, u32>>,
    /// The watches' caches, for the fingerprint of idle relays (none in unit tests: every
    /// reconcile is full).
    pub(crate) stores: Option<Stores>,
    pub(crate) memory: Memory,
}

impl Context {
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        opts: BuildOptions,
        instance: Option<String>,
    ) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance,
        };
        Context {
            reporter,
            client,
            metrics,
            opts,
            failures: Mutex::new(HashMap::new()),
            stores: None,
            memory: Memory::default(),
        }
    }

    /// With the watches' caches: an idle relay's reconcile makes no request.
    pub fn with_stores(self, stores: Stores) -> Self {
        Context {
            stores: Some(stores),
            ..self
        }
    }

    /// Publishes an Event; a failure is logged, never fails the reconcile. A namespace being
    /// deleted takes no new Event: expected, so not a warning (nor a "forbidden" in the log
    /// that would hide a real RBAC failure).
    pub(crate) async fn publish_or_log(&self, ev: &Event, relay: &SmtpRelay) {
        match self.publish(ev, relay).await {
            Ok(()) => {}
            Err(e) if namespace_terminating(&e) => {
                debug!(relay = %relay.name_any(), reason = %ev.reason, "no Event: the namespace is being deleted");
            }
            Err(e) => warn!(relay = %relay.name_any(), error = %e, "publishing event failed"),
        }
    }

    /// Publishes `ev` as an Event of its own. [`events_for`] already publishes only on
    /// transitions; kube-runtime's Recorder would also fold every Event with the same reason
    /// into one series that keeps the first note, so a second, different problem (another
    /// missing Secret) would show the first one's message in `kubectl describe`. A Recorder
    /// per Event has no series to fold into.
    async fn publish(&self, ev: &Event, relay: &SmtpRelay) -> kube::Result<()> {
        Recorder::new(self.client.clone(), self.reporter.clone())
            .publish(ev, &relay.object_ref(&()))
            .await
    }

    pub(crate) fn reset_backoff(&self, relay: &SmtpRelay) {
        if let Ok(mut f) = self.failures.lock() {
            f.remove(&ObjectRef::from_obj(relay));
        }
    }

    pub(crate) fn next_backoff(&self, relay: &SmtpRelay) -> Duration {
        let n = match self.failures.lock() {
            Ok(mut f) => {
                let n = f.entry(ObjectRef::from_obj(relay)).or_insert(0);
                *n = n.saturating_add(1);
                *n
            }
            Err(_) => 1,
        };
        backoff(n)
    }
}

/// Exponential backoff: 5 s, 10 s, 20 s, … capped at 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(6);
    Duration::from_secs((5u64 << exp).min(300))
}

/// The API server's refusal to create anything in a namespace being deleted.
pub(crate) fn namespace_terminating(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.details.as_ref().is_some_and(|d| {
        d.causes.iter().any(|c| c.reason == "NamespaceTerminating")
    }))
}
