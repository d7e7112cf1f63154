//! An idle relay costs nothing. The watches keep metadata-only caches (reflector stores) of
//! every object a reconcile reads: the Secrets and ConfigMaps a relay references, its owned
//! children and its pods. From them, a [`Fingerprint`] of everything a reconcile depends on
//! (the relay's spec generation, metadata and status, and the resourceVersion of each of those
//! objects) is computed without a request. When it equals the fingerprint of the last full
//! reconcile of that relay, nothing can have changed, and the reconcile returns the same
//! decision again with no API request at all.
//!
//! Not remembered (always reconciled in full): a relay being deleted or draining (their
//! progress is read from the pods' metrics), and one whose children are refused by the API
//! server or in the way (what changes that is not in the caches). A remembered decision also
//! expires after [`VALID_FOR`], so time-based work (renewing the serving certificate) happens.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::FutureExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

use crate::floor::contract::{selector_labels, Names};
use crate::floor::crd::{SmtpRelay, SmtpRelayStatus};
use crate::floor::owned::{OwnedKind, Watched};
use crate::observe::mapping::{referenced_config_maps, referenced_secrets};

/// How long a remembered decision holds without a full reconcile.
pub const VALID_FOR: Duration = Duration::from_secs(6 * 3600);

/// The metadata caches of the watches.
#[derive(Clone)]
pub struct Stores {
    pub secrets: Store<PartialObjectMeta<Secret>>,
    pub config_maps: Store<PartialObjectMeta<ConfigMap>>,
    pub stateful_sets: Store<PartialObjectMeta<StatefulSet>>,
    pub services: Store<PartialObjectMeta<Service>>,
    pub pdbs: Store<PartialObjectMeta<PodDisruptionBudget>>,
    pub network_policies: Store<PartialObjectMeta<NetworkPolicy>>,
    pub pods: Store<Pod>,
}

/// Everything a reconcile of one relay depends on, hashed in parts (see [`PARTS`]) so a log can
/// say what changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u64; 5]);

/// What each part of a [`Fingerprint`] covers.
pub const PARTS: [&str; 5] = ["relay", "secrets", "configmaps", "children", "pods"];

impl Fingerprint {
    /// The parts that differ from `other`.
    pub fn changed(&self, other: &Fingerprint) -> Vec<&'static str> {
        PARTS
            .iter()
            .zip(self.0.iter().zip(other.0.iter()))
            .filter(|(_, (a, b))| a != b)
            .map(|(p, _)| *p)
            .collect()
    }
}

fn version<K: Resource<DynamicType = ()> + Clone>(
    store: &Store<PartialObjectMeta<K>>,
    ns: &str,
    name: &str,
) -> Option<String> {
    store
        .get(&ObjectRef::new(name).within(ns))
        .and_then(|o| o.metadata.resource_version.clone())
}

fn ready<K: Resource<DynamicType = ()> + Clone>(store: &Store<K>) -> bool {
    store
        .wait_until_ready()
        .now_or_never()
        .is_some_and(|r| r.is_ok())
}

/// Whether the object may exist: the cache holds it, or has not synced yet.
pub fn may_exist<K: Resource<DynamicType = ()> + Clone>(
    store: &Store<PartialObjectMeta<K>>,
    ns: &str,
    name: &str,
) -> bool {
    !ready(store) || version(store, ns, name).is_some()
}

/// The cached pods of `relay` (its namespace, its selector labels), by name.
pub fn pods_of(relay: &SmtpRelay, pods: &Store<Pod>) -> Vec<std::sync::Arc<Pod>> {
    let ns = relay.namespace();
    let selector = selector_labels(relay);
    let mut of: Vec<_> = pods
        .state()
        .into_iter()
        .filter(|p| p.namespace() == ns)
        .filter(|p| {
            let labels = p.labels();
            selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
        .collect();
    of.sort_by_key(|p| p.name_any());
    of
}

impl Stores {
    /// The resource version of `name` in the cache of `kind`; `None` when the cache does not
    /// hold it, or the kind is not watched.
    fn version_of(&self, kind: OwnedKind, ns: &str, name: &str) -> Option<String> {
        match kind {
            OwnedKind::ConfigMap => version(&self.config_maps, ns, name),
            OwnedKind::Secret => version(&self.secrets, ns, name),
            OwnedKind::Service => version(&self.services, ns, name),
            OwnedKind::StatefulSet => version(&self.stateful_sets, ns, name),
            OwnedKind::PodDisruptionBudget => version(&self.pdbs, ns, name),
            OwnedKind::NetworkPolicy => version(&self.network_policies, ns, name),
            OwnedKind::ServiceAccount | OwnedKind::Role | OwnedKind::RoleBinding => None,
        }
    }

    /// Whether the cache of `kind` has synced (a kind that is not watched has none to wait for).
    fn synced(&self, kind: OwnedKind) -> bool {
        match kind {
            OwnedKind::ConfigMap => ready(&self.config_maps),
            OwnedKind::Secret => ready(&self.secrets),
            OwnedKind::Service => ready(&self.services),
            OwnedKind::StatefulSet => ready(&self.stateful_sets),
            OwnedKind::PodDisruptionBudget => ready(&self.pdbs),
            OwnedKind::NetworkPolicy => ready(&self.network_policies),
            OwnedKind::ServiceAccount | OwnedKind::Role | OwnedKind::RoleBinding => true,
        }
    }

    /// The relay's fingerprint; `None` until every cache has synced, and for a relay being
    /// deleted.
    pub fn fingerprint(&self, relay: &SmtpRelay) -> Option<Fingerprint> {
        let synced = OwnedKind::ALL.into_iter().all(|k| self.synced(k)) && ready(&self.pods);
        if !synced || relay.metadata.deletion_timestamp.is_some() {
            return None;
        }
        let ns = relay.namespace()?;
        let name = relay.name_any();
        let m = &relay.metadata;
        let mut relay_part = DefaultHasher::new();
        (
            &m.uid,
            m.generation,
            &m.labels,
            &m.annotations,
            &m.finalizers,
        )
            .hash(&mut relay_part);
        // Status but its queue, which `queue::observe` rewrites as mail comes and goes and which
        // no decision of the reconcile reads, but for the login's health.
        let decided_on = relay.status.as_ref().map(|s| SmtpRelayStatus {
            queue: None,
            ..s.clone()
        });
        serde_json::to_string(&decided_on)
            .ok()?
            .hash(&mut relay_part);
        // Of the queue, only what the RelayhostLogin, Delivering and UserNamespaced conditions
        // show, and which replicas refused which configuration (the rollout names them).
        crate::floor::crd::login_health(relay).hash(&mut relay_part);
        crate::floor::crd::delivery_health(relay).hash(&mut relay_part);
        crate::floor::crd::isolation_health(relay).hash(&mut relay_part);
        for p in crate::floor::crd::config_refusals(relay) {
            (&p.pod, p.config_refused.as_ref().map(|r| &r.revision)).hash(&mut relay_part);
        }

        let children = Names::all(&name);
        let mut secrets = DefaultHasher::new();
        for s in referenced_secrets(&relay.spec)
            .into_iter()
            .chain(children.iter().map(String::as_str))
        {
            (s, self.version_of(OwnedKind::Secret, &ns, s)).hash(&mut secrets);
        }
        let mut config_maps = DefaultHasher::new();
        for c in referenced_config_maps(&relay.spec)
            .into_iter()
            .chain(children.iter().map(String::as_str))
        {
            (c, self.version_of(OwnedKind::ConfigMap, &ns, c)).hash(&mut config_maps);
        }
        let mut owned = DefaultHasher::new();
        for kind in OwnedKind::ALL {
            if kind.watched() != Watched::Owned {
                continue;
            }
            for n in &children {
                (kind, n, self.version_of(kind, &ns, n)).hash(&mut owned);
            }
        }
        let pods: Vec<(String, Option<String>)> = pods_of(relay, &self.pods)
            .iter()
            .map(|p| (p.name_any(), p.metadata.resource_version.clone()))
            .collect();
        let mut pod_part = DefaultHasher::new();
        pods.hash(&mut pod_part);
        Some(Fingerprint([
            relay_part.finish(),
            secrets.finish(),
            config_maps.finish(),
            owned.finish(),
            pod_part.finish(),
        ]))
    }
}

/// What the last full reconcile of each relay saw and decided.
#[derive(Default)]
pub struct Memory(Mutex<HashMap<ObjectRef<SmtpRelay>, (Fingerprint, Instant, Action)>>);

impl Memory {
    /// The decision of the last full reconcile, when it saw the same fingerprint and has not
    /// expired.
    pub fn unchanged(&self, relay: &SmtpRelay, fp: Fingerprint) -> Option<Action> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (seen, at, action) = map.get(&ObjectRef::from_obj(relay))?;
        if *seen != fp {
            tracing::debug!(relay = %relay.name_any(), changed = ?fp.changed(seen), "reconciling in full: changed since the last time");
            return None;
        }
        (at.elapsed() < VALID_FOR).then(|| action.clone())
    }

    /// Remembers a full reconcile's fingerprint and decision, or forgets the relay's.
    pub fn set(&self, relay: &SmtpRelay, remembered: Option<(Fingerprint, Action)>) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let key = ObjectRef::from_obj(relay);
        match remembered {
            Some((fp, action)) => {
                map.insert(key, (fp, Instant::now(), action));
            }
            None => {
                map.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{cached as meta, store};

    fn pod(name: &str, rv: &str) -> Pod {
        Pod {
            metadata: meta::<Pod>(name, rv).metadata,
            ..Pod::default()
        }
    }

    fn stores(secret_rv: &str, pod_rv: &str) -> Stores {
        let mut pod = pod("r1-0", pod_rv);
        pod.metadata.labels = Some(selector_labels(&crate::fixtures::relay("r1")));
        Stores {
            secrets: store(vec![meta("users", secret_rv), meta("other", "9")]),
            config_maps: store(vec![meta("r1-config", "3")]),
            stateful_sets: store(vec![meta("r1", "4")]),
            services: store(vec![]),
            pdbs: store(vec![]),
            network_policies: store(vec![]),
            pods: store(vec![pod, self::pod("unrelated-0", "5")]),
        }
    }

    #[test]
    fn the_fingerprint_follows_what_the_relay_reads_and_nothing_else() {
        let mut r = crate::fixtures::relay("r1");
        r.spec.sasl_users_secret_ref = Some(crate::floor::crd::SecretRef {
            name: "users".into(),
        });
        let fp = |s: &Stores, r: &SmtpRelay| s.fingerprint(r).expect("synced");
        let base = fp(&stores("1", "1"), &r);
        assert_eq!(base, fp(&stores("1", "1"), &r), "stable");
        assert_ne!(
            base,
            fp(&stores("2", "1"), &r),
            "a referenced Secret changed"
        );
        assert_ne!(base, fp(&stores("1", "2"), &r), "a pod changed");
        let mut changed = r.clone();
        changed.metadata.generation = Some(2);
        assert_ne!(base, fp(&stores("1", "1"), &changed), "the spec changed");
        let mut deleting = r.clone();
        deleting.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
        );
        assert_eq!(stores("1", "1").fingerprint(&deleting), None);
        // Of the queue observer's writes, a replica's refusal counts; its numbers do not.
        let with_pods = |messages: u64, refused: Option<&str>| {
            let mut r = r.clone();
            r.status = Some(crate::floor::crd::SmtpRelayStatus {
                queue: Some(crate::floor::crd::QueueStatus {
                    pods: vec![crate::floor::crd::PodQueueStatus {
                        pod: "r1-0".into(),
                        messages: Some(messages),
                        config_refused: refused.map(|rev| crate::floor::crd::PodConfigRefused {
                            revision: rev.into(),
                            error: "warning: cannot open".into(),
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            });
            r
        };
        let quiet = fp(&stores("1", "1"), &with_pods(0, None));
        assert_eq!(
            quiet,
            fp(&stores("1", "1"), &with_pods(7, None)),
            "mail came"
        );
        let refused = fp(&stores("1", "1"), &with_pods(0, Some("h1")));
        assert_ne!(quiet, refused, "a replica refused a configuration");
        assert_ne!(
            refused,
            fp(&stores("1", "1"), &with_pods(0, Some("h2"))),
            "it refused another one"
        );

        let memory = Memory::default();
        let action = Action::requeue(Duration::from_secs(300));
        assert_eq!(memory.unchanged(&r, base), None);
        memory.set(&r, Some((base, action.clone())));
        assert_eq!(memory.unchanged(&r, base), Some(action));
        assert_eq!(memory.unchanged(&r, fp(&stores("2", "1"), &r)), None);
        memory.set(&r, None);
        assert_eq!(memory.unchanged(&r, base), None);
    }
}
