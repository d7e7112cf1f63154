//! What makes a relay reconcile: the SmtpRelay watch, metadata-only watches of the owned kinds
//! (by label) and of the Secrets and ConfigMaps a relay may reference, each with its own
//! backoff; and the controller loop's lifetime.

pub mod queue;

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodStatus, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::NamespaceResourceScope;
use kube::api::ObjectMeta;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{reflector, watcher, Controller, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{debug, info, warn};

use crate::context::Context;
use crate::controller::{error_policy, reconcile};
use crate::floor::contract::{BuildOptions, MANAGED_BY_SELECTOR};
use crate::floor::crd::SmtpRelay;
use crate::floor::error::Result;
use crate::floor::owned::Watched;
use crate::observe::fingerprint::Stores;
use crate::observe::mapping::{referenced_config_maps, referenced_secrets, relays_for};
use crate::runtime::backoff::{watch_with_backoff, NoDelay};
use crate::runtime::metrics::Metrics;
use crate::runtime::shutdown::DRAIN_TIMEOUT;
use crate::steps::apply::Owned;

/// Reconciles running at once: enough to keep the API server busy, few enough that a burst
/// (the operator starting with a thousand relays) holds a bounded amount of memory.
const CONCURRENCY: u16 = 32;

/// Where `kubectl apply` keeps what it applied.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Settings of the controller loop.
#[derive(Debug, Clone, Default)]
pub struct RunConfig {
    /// Namespace to watch; all namespaces when `None`.
    pub namespace: Option<String>,
    pub build: BuildOptions,
    /// Name of this operator replica (Event reporter instance).
    pub instance: Option<String>,
}

fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// What the caches keep of an object's metadata, the rest dropped on arrival: its name,
/// namespace and resourceVersion (all [`crate::observe::fingerprint`] reads), the references to an
/// SmtpRelay owning it (the watches' triggers), and of a `pod` the `app.kubernetes.io/` labels
/// (its relay, [`relay_of_pod`]) and its controlling StatefulSet (only the relay's own pods
/// are scraped, [`crate::watch::queue`]). Not kept: managedFields,
/// annotations (where `kubectl apply` keeps a whole copy of what it applied; of a Secret, its
/// data), other labels and owners, uids and timestamps; for a thousand relays, several thousand
/// objects of which nothing else is read.
fn cached_meta(meta: ObjectMeta, pod: bool) -> ObjectMeta {
    let owner_references = meta
        .owner_references
        .map(|refs| {
            refs.into_iter()
                .filter(|o| {
                    o.kind == SmtpRelay::kind(&())
                        || (pod && o.kind == "StatefulSet" && o.controller == Some(true))
                })
                .collect::<Vec<_>>()
        })
        .filter(|refs| !refs.is_empty());
    let labels = meta
        .labels
        .filter(|_| pod)
        .map(|labels| {
            labels
                .into_iter()
                .filter(|(k, _)| k.starts_with("app.kubernetes.io/"))
                .collect::<std::collections::BTreeMap<_, _>>()
        })
        .filter(|labels| !labels.is_empty());
    ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        resource_version: meta.resource_version,
        owner_references,
        labels,
        ..ObjectMeta::default()
    }
}

/// The metadata-only watch of one owned kind (an `Api<PartialObjectMeta<K>>` asks for
/// `PartialObjectMetadataList`: no data or spec on the wire), with its own backoff, kept in a
/// cache (for [`crate::observe::fingerprint`]).
fn metadata_stream<K: Owned>(
    client: &Client,
    ns: Option<&str>,
) -> (
    Store<PartialObjectMeta<K>>,
    impl futures::Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static,
) {
    // As the one list of owned kinds says: the operator's own objects, or every one.
    let config = match K::KIND.watched() {
        Watched::Owned => watcher::Config::default().labels(MANAGED_BY_SELECTOR),
        Watched::All | Watched::No => watcher::Config::default(),
    };
    let api = api::<PartialObjectMeta<K>>(client, ns);
    let (store, writer) = reflector::store();
    let stream = watch_with_backoff(watcher(api, config))
        .modify(|o| {
            o.types = None;
            o.metadata = cached_meta(std::mem::take(&mut o.metadata), false);
        })
        .reflect(writer)
        .touched_objects();
    (store, stream)
}

/// The owned pods' watch, cached for the fingerprint (their resourceVersions) and for
/// [`crate::watch::queue`] (where each runs): everything else of a pod (but its name, labels and owner)
/// is dropped on arrival.
fn pod_stream(
    api: Api<Pod>,
    config: watcher::Config,
) -> (
    Store<Pod>,
    impl futures::Stream<Item = Result<Pod, watcher::Error>> + Send + 'static,
) {
    let (store, writer) = reflector::store();
    let stream = watch_with_backoff(watcher(api, config))
        .modify(|p| {
            p.metadata = cached_meta(std::mem::take(&mut p.metadata), true);
            p.spec = None;
            if let Some(status) = p.status.as_mut() {
                *status = PodStatus {
                    phase: status.phase.take(),
                    pod_ip: status.pod_ip.take(),
                    ..PodStatus::default()
                };
            }
        })
        .reflect(writer)
        .touched_objects();
    (store, stream)
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    cfg: RunConfig,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let ns = cfg.namespace.as_deref();
    let relays: Api<SmtpRelay> = api(&client, ns);
    if let Err(e) = relays
        .list(&kube::api::ListParams::default().limit(1))
        .await
    {
        warn!(error = %e, "cannot list SmtpRelays; is the CRD installed and RBAC granted?");
    }
    let ctx = Context::new(
        client.clone(),
        metrics,
        cfg.build.clone(),
        cfg.instance.clone(),
    );
    // Every watch backs off on its own (see [`crate::runtime::backoff`]): behind kube-runtime's one
    // shared trigger backoff, the stale errors of an API server outage would be drained one
    // shared step at a time and keep the operator deaf long after the server is back.
    let (store, writer) = reflector::store();
    let relay_watch =
        watch_with_backoff(watcher(relays, watcher::Config::default().any_semantic()))
            // kubectl apply and Argo CD's client-side sync keep a whole copy of the applied
            // relay in an annotation; nothing reads it.
            .modify(|r| {
                r.managed_fields_mut().clear();
                r.annotations_mut().remove(LAST_APPLIED);
            })
            .reflect(writer)
            .applied_objects();
    let owned = watcher::Config::default().labels(MANAGED_BY_SELECTOR);
    let (stateful_sets, sts_watch) = metadata_stream::<StatefulSet>(&client, ns);
    let (services, service_watch) = metadata_stream::<Service>(&client, ns);
    let (pdbs, pdb_watch) = metadata_stream::<PodDisruptionBudget>(&client, ns);
    let (network_policies, network_policy_watch) = metadata_stream::<NetworkPolicy>(&client, ns);
    let (pods, pod_watch) = pod_stream(api::<Pod>(&client, ns), owned);
    // One watch per kind covers both owned copies (via owner references) and the user's
    // referenced objects, so a rotated password or a new SASL user reconciles at once.
    // Metadata only: values are read by the reconcile, for the referenced objects alone, so no
    // Secret of the cluster is held in the operator's memory.
    let (secrets, secret_watch) = metadata_stream::<Secret>(&client, ns);
    let (config_maps, config_map_watch) = metadata_stream::<ConfigMap>(&client, ns);
    let ctx = Arc::new(ctx.with_stores(Stores {
        secrets,
        config_maps,
        stateful_sets,
        services,
        pdbs,
        network_policies,
        pods: pods.clone(),
    }));
    let store1 = store.clone();
    let store2 = store.clone();
    // A short debounce folds the burst of events one change causes (our own status patch, the
    // StatefulSet's status, owned objects) into one reconcile.
    let synced = store.clone();
    let shutdown = shutdown.shared();
    ctx.metrics.count_relays(store.clone());
    let controller = Controller::for_stream(relay_watch, store)
        .with_config(
            kube::runtime::controller::Config::default()
                .debounce(Duration::from_millis(500))
                .concurrency(CONCURRENCY),
        )
        .trigger_backoff(NoDelay)
        .owns_stream(sts_watch)
        .owns_stream(service_watch)
        .owns_stream(pdb_watch)
        .owns_stream(network_policy_watch)
        // A pod that changes (ready, restarting, crashing) reconciles its relay at once: status
        // follows the pods without polling.
        .watches_stream(pod_watch, |p: Pod| relay_of_pod(&p.metadata))
        .watches_stream(secret_watch, move |s: PartialObjectMeta<Secret>| {
            let relays = store1.state();
            relays_for(
                &s.metadata,
                relays.iter().map(|r| r.as_ref()),
                referenced_secrets,
            )
        })
        .watches_stream(config_map_watch, move |c: PartialObjectMeta<ConfigMap>| {
            let relays = store2.state();
            relays_for(
                &c.metadata,
                relays.iter().map(|r| r.as_ref()),
                referenced_config_maps,
            )
        })
        .graceful_shutdown_on(shutdown.clone())
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => debug!(relay = %obj.name, "reconciled"),
                Err(e) => debug!(error = %e, "reconcile error"),
            }
        });
    // status.queue, from the pods' metrics (see `queue`).
    let queues = crate::watch::queue::observe(ctx.clone(), synced.clone(), pods, shutdown.clone());
    tokio::select! {
        ((), ()) = futures::future::join(controller, queues) => {}
        () = drain_limit(shutdown, synced) => {}
    }
}

/// kube-runtime's graceful shutdown waits for the SmtpRelay store's first sync before it can
/// finish, which never comes while the API server is down or the list is Forbidden; and a
/// reconcile stuck on a hanging API call would hold it too. So the drain is bounded: it ends
/// `DRAIN_TIMEOUT` after `shutdown`, or at once when the relays never synced.
async fn drain_limit(shutdown: impl Future<Output = ()>, synced: Store<SmtpRelay>) {
    shutdown.await;
    if synced.wait_until_ready().now_or_never().is_none() {
        info!("stopping before the first sync of SmtpRelays: nothing to drain");
        return;
    }
    tokio::time::sleep(DRAIN_TIMEOUT).await;
    warn!(timeout = ?DRAIN_TIMEOUT, "reconciles did not finish in time; stopping them");
}

/// The relay a pod belongs to, by its selector labels.
fn relay_of_pod(meta: &kube::api::ObjectMeta) -> Option<ObjectRef<SmtpRelay>> {
    let labels = meta.labels.as_ref()?;
    if labels.get("app.kubernetes.io/name").map(String::as_str) != Some("smtp-relay") {
        return None;
    }
    let name = labels.get("app.kubernetes.io/instance")?;
    Some(ObjectRef::new(name).within(meta.namespace.as_deref()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use std::collections::BTreeMap;

    fn owner(kind: &str, name: &str) -> OwnerReference {
        OwnerReference {
            api_version: match kind {
                "SmtpRelay" => SmtpRelay::api_version(&()).into_owned(),
                _ => "apps/v1".into(),
            },
            kind: kind.into(),
            name: name.into(),
            uid: "u".into(),
            controller: Some(true),
            ..OwnerReference::default()
        }
    }

    fn meta() -> ObjectMeta {
        ObjectMeta {
            name: Some("mail-0".into()),
            namespace: Some("apps".into()),
            resource_version: Some("42".into()),
            uid: Some("1234".into()),
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/name".into(), "smtp-relay".into()),
                ("app.kubernetes.io/instance".into(), "mail".into()),
                ("controller-revision-hash".into(), "mail-5d8".into()),
            ])),
            annotations: Some(BTreeMap::from([(LAST_APPLIED.into(), "{}".into())])),
            owner_references: Some(vec![
                owner("StatefulSet", "mail"),
                owner("SmtpRelay", "mail"),
            ]),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn the_caches_keep_what_the_fingerprint_and_the_triggers_read() {
        let kept = cached_meta(meta(), false);
        assert_eq!(
            kept,
            ObjectMeta {
                name: Some("mail-0".into()),
                namespace: Some("apps".into()),
                resource_version: Some("42".into()),
                owner_references: Some(vec![owner("SmtpRelay", "mail")]),
                ..ObjectMeta::default()
            }
        );
        assert_eq!(
            crate::observe::mapping::controlling_relay(&kept),
            Some(ObjectRef::new("mail").within("apps"))
        );
        let pod = cached_meta(meta(), true);
        assert_eq!(
            pod.owner_references
                .iter()
                .flatten()
                .map(|o| o.kind.as_str())
                .collect::<Vec<_>>(),
            ["StatefulSet", "SmtpRelay"],
            "a pod's controller is kept: only the relay's StatefulSet's pods are scraped"
        );
        assert_eq!(
            pod.labels
                .as_ref()
                .map(|l| l.keys().cloned().collect::<Vec<_>>()),
            Some(vec![
                "app.kubernetes.io/instance".to_string(),
                "app.kubernetes.io/name".to_string()
            ])
        );
        assert_eq!(relay_of_pod(&pod), relay_of_pod(&meta()));
        assert!(relay_of_pod(&pod).is_some());
    }
}
