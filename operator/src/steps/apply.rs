//! Writing a relay's children: read what lives under each child's name (never adopting what
//! is not the relay's own), server-side apply only what changed or drifted, and prune what is
//! no longer wanted.

use std::fmt::Debug;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::{debug, info};

use crate::floor::contract::{Names, APPLIED_HASH_ANNOTATION, MANAGER};
use crate::floor::crd::SmtpRelay;
use crate::floor::error::{Error, Result};
use crate::floor::owned::OwnedKind;
use crate::floor::running::Rollout;
use crate::floor::verdict::{Desired, Outcome};
use crate::observe::fingerprint::Stores;
use crate::steps::build::configmap::{guard_owner_ref, guards};
use crate::steps::build::hash::object_hash;

/// Objects the operator applies, and how to tell a live copy already matches.
pub trait Owned:
    Resource<Scope = NamespaceResourceScope, DynamicType = ()>
    + Clone
    + Serialize
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
    /// Its entry in the one list of owned kinds.
    const KIND: OwnedKind;
    /// What the applied-hash annotation covers (Secrets leave their data out: no hash of a
    /// secret value is ever written to an annotation).
    fn hash_view(&self) -> Self {
        self.clone()
    }
    /// Checks the live object for drift the hash cannot see.
    fn live_matches(&self, _live: &Self) -> bool {
        true
    }
    /// The watch's metadata cache of this kind, where the operator keeps one.
    fn cache(_stores: &Stores) -> Option<&Store<PartialObjectMeta<Self>>> {
        None
    }
}

impl Owned for ConfigMap {
    const KIND: OwnedKind = OwnedKind::ConfigMap;
    fn cache(stores: &Stores) -> Option<&Store<PartialObjectMeta<Self>>> {
        Some(&stores.config_maps)
    }
    fn live_matches(&self, live: &Self) -> bool {
        self.data == live.data
    }
}
impl Owned for Service {
    const KIND: OwnedKind = OwnedKind::Service;
    fn cache(stores: &Stores) -> Option<&Store<PartialObjectMeta<Self>>> {
        Some(&stores.services)
    }
    fn live_matches(&self, live: &Self) -> bool {
        subset_of(&self.spec, &live.spec)
    }
}
impl Owned for PodDisruptionBudget {
    const KIND: OwnedKind = OwnedKind::PodDisruptionBudget;
    fn cache(stores: &Stores) -> Option<&Store<PartialObjectMeta<Self>>> {
        Some(&stores.pdbs)
    }
    fn live_matches(&self, live: &Self) -> bool {
        subset_of(&self.spec, &live.spec)
    }
}
impl Owned for NetworkPolicy {
    const KIND: OwnedKind = OwnedKind::NetworkPolicy;
    fn cache(stores: &Stores) -> Option<&Store<PartialObjectMeta<Self>>> {
        Some(&stores.network_policies)
    }
    fn live_matches(&self, live: &Self) -> bool {
        subset_of(&self.spec, &live.spec)
    }
}
impl Owned for Secret {
    const KIND: OwnedKind = OwnedKind::Secret;
    fn cache(stores: &Stores) -> Option<&Store<PartialObjectMeta<Self>>> {
        Some(&stores.secrets)
    }
    fn hash_view(&self) -> Self {
        Secret {
            data: None,
            ..self.clone()
        }
    }
    /// A Secret applied without data (the pods write it) matches whatever data it holds.
    fn live_matches(&self, live: &Self) -> bool {
        self.data.is_none() || self.data == live.data
    }
}
impl Owned for ServiceAccount {
    const KIND: OwnedKind = OwnedKind::ServiceAccount;
}
impl Owned for Role {
    const KIND: OwnedKind = OwnedKind::Role;
    fn live_matches(&self, live: &Self) -> bool {
        subset_of(&self.rules, &live.rules)
    }
}
impl Owned for RoleBinding {
    const KIND: OwnedKind = OwnedKind::RoleBinding;
    fn live_matches(&self, live: &Self) -> bool {
        subset_of(&self.subjects, &live.subjects)
    }
}
impl Owned for StatefulSet {
    const KIND: OwnedKind = OwnedKind::StatefulSet;
    fn cache(stores: &Stores) -> Option<&Store<PartialObjectMeta<Self>>> {
        Some(&stores.stateful_sets)
    }
    fn live_matches(&self, live: &Self) -> bool {
        let replicas = |s: &StatefulSet| s.spec.as_ref().and_then(|s| s.replicas);
        let template = |s: &StatefulSet| s.spec.as_ref().map(|s| s.template.clone());
        replicas(self) == replicas(live) && subset_of(&template(self), &template(live))
    }
}

/// Drift: whether everything the operator sets in `desired` is still so in `live`. The API
/// server only adds to what was applied (defaults, status), so a field that differs or went
/// missing was changed by someone else, and the next (forced) apply puts it back. What others
/// added is left to them, as server-side apply leaves the fields of other managers. Resource
/// quantities are left out: the server rewrites them in canonical form ("0.5" becomes "500m").
pub(crate) fn subset_of<T: Serialize>(desired: &T, live: &T) -> bool {
    match (serde_json::to_value(desired), serde_json::to_value(live)) {
        (Ok(d), Ok(l)) => match drifted_field(&d, &l, "") {
            None => true,
            Some(field) => {
                info!(%field, "drift: a field the operator sets was changed; applying again");
                false
            }
        },
        _ => false,
    }
}

/// The first field of `d` that `l` does not hold, as a JSON path.
pub(crate) fn drifted_field(
    d: &serde_json::Value,
    l: &serde_json::Value,
    at: &str,
) -> Option<String> {
    use serde_json::Value;
    match (d, l) {
        (Value::Object(d), Value::Object(l)) => d.iter().find_map(|(k, dv)| {
            let path = format!("{at}.{k}");
            match l.get(k) {
                _ if k == "resources" => None,
                Some(lv) => drifted_field(dv, lv, &path),
                // Applied empty (or false, 0, ""), stored absent: Go's omitempty.
                None if dv.is_null()
                    || dv == &Value::Bool(false)
                    || dv.as_i64() == Some(0)
                    || dv.as_str() == Some("")
                    || dv.as_array().is_some_and(|a| a.is_empty())
                    || dv.as_object().is_some_and(|o| o.is_empty()) =>
                {
                    None
                }
                None => Some(path),
            }
        }),
        // Every element the operator set is still there; elements others added stay (as
        // server-side apply leaves the fields other managers own).
        (Value::Array(d), Value::Array(l)) => d.iter().enumerate().find_map(|(i, d)| {
            let path = format!("{at}[{i}]");
            match l.iter().any(|l| drifted_field(d, l, &path).is_none()) {
                true => None,
                false => Some(path),
            }
        }),
        (d, l) if d == l => None,
        _ => Some(at.to_string()),
    }
}

pub(crate) fn name_ns(meta: &kube::api::ObjectMeta) -> Result<(String, String)> {
    Ok((
        meta.name
            .clone()
            .ok_or(Error::MissingObjectKey(".metadata.name"))?,
        meta.namespace
            .clone()
            .ok_or(Error::MissingObjectKey(".metadata.namespace"))?,
    ))
}

/// True when `relay` is the controller of the object with this metadata.
pub(crate) fn controlled_by(meta: &kube::api::ObjectMeta, relay: &SmtpRelay) -> bool {
    meta.owner_references.iter().flatten().any(|o| {
        o.controller == Some(true) && relay.metadata.uid.as_ref().is_some_and(|uid| *uid == o.uid)
    })
}

/// A desired child and the live object under its name, read before anything is written.
pub(crate) struct Planned<'a, K> {
    desired: &'a K,
    live: Option<K>,
}

/// Reads the live object under `desired`'s name. One that this relay does not control (the
/// user's own, or another controller's) is never adopted: it is added to `in_the_way`.
/// [`read_live`] of a child the relay may not want.
async fn read_wanted<'a, K: Owned>(
    client: &Client,
    relay: &SmtpRelay,
    desired: Option<&'a K>,
    in_the_way: &mut Vec<String>,
) -> Result<Option<Planned<'a, K>>> {
    match desired {
        Some(d) => Ok(Some(read_live(client, relay, d, in_the_way).await?)),
        None => Ok(None),
    }
}

pub(crate) async fn read_live<'a, K: Owned>(
    client: &Client,
    relay: &SmtpRelay,
    desired: &'a K,
    in_the_way: &mut Vec<String>,
) -> Result<Planned<'a, K>> {
    let (name, ns) = name_ns(desired.meta())?;
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    let live = api.get_opt(&name).await?;
    if let Some(live) = &live {
        if !controlled_by(live.meta(), relay) {
            in_the_way.push(format!("{} {ns}/{name}", K::kind(&())));
        }
    }
    Ok(Planned { desired, live })
}

/// Server-side applies the desired object unless the live one already carries its hash.
pub(crate) async fn apply<K: Owned>(client: &Client, planned: Planned<'_, K>) -> Result<K> {
    apply_guarded(client, planned, None).await
}

/// [`apply`], with the relay's drain guard as a second owner when there is one
/// ([`crate::steps::build::configmap::drain_guard`]).
pub(crate) async fn apply_guarded<K: Owned>(
    client: &Client,
    planned: Planned<'_, K>,
    guard: Option<&OwnerReference>,
) -> Result<K> {
    let Planned { desired, live } = planned;
    let mut obj = desired.clone();
    if let Some(guard) = guard {
        obj.meta_mut()
            .owner_references
            .get_or_insert_with(Vec::new)
            .push(guard.clone());
    }
    let (name, ns) = name_ns(obj.meta())?;
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    let hash = object_hash(&obj.hash_view());
    if let Some(live) = live {
        let same = live.annotations().get(APPLIED_HASH_ANNOTATION) == Some(&hash)
            && obj.live_matches(&live)
            && live.meta().deletion_timestamp.is_none();
        if same {
            debug!(kind = K::kind(&()).as_ref(), %name, "unchanged, not applied");
            return Ok(live);
        }
    }
    obj.annotations_mut()
        .insert(APPLIED_HASH_ANNOTATION.into(), hash);
    info!(kind = K::kind(&()).as_ref(), %name, %ns, "applying");
    let params = PatchParams::apply(MANAGER).force();
    api.patch(&name, &params, &Patch::Apply(&obj))
        .await
        .map_err(|e| apply_error(e, &K::kind(&()), &ns, &name))
}

/// An API server's refusal of a child (4xx other than a conflict or throttling: an admission
/// policy or webhook, a quota, an invalid object) becomes [`Error::Refused`] naming it, for
/// status; anything else stays an API error, retried with backoff.
pub(crate) fn apply_error(e: kube::Error, kind: &str, ns: &str, name: &str) -> Error {
    match &e {
        kube::Error::Api(s) if (400..500).contains(&s.code) && ![409, 429].contains(&s.code) => {
            Error::Refused(format!(
                "the API server refused {kind} {ns}/{name}: {}",
                s.message
            ))
        }
        _ => Error::Kube(e),
    }
}

/// Merge-patches `name` (metadata the operator keeps: a pod's drain annotation, a relay's
/// finalizers); an object gone meanwhile is left alone, the next reconcile sees it missing.
pub(crate) async fn merge_patch<K>(
    api: &Api<K>,
    name: &str,
    patch: &serde_json::Value,
) -> Result<()>
where
    K: Clone + DeserializeOwned + Debug,
{
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether the watch's cache of `K` knows `name` does not exist: it has synced and does not
/// hold it. One created since reaches the cache through the watch, which reconciles its owner
/// again (and the fingerprint sees it). Without a cache of the kind, nothing is known.
fn known_absent<K: Owned>(stores: Option<&Stores>, ns: &str, name: &str) -> bool {
    stores
        .and_then(K::cache)
        .is_some_and(|cache| !crate::observe::fingerprint::may_exist(cache, ns, name))
}

/// Deletes an object the relay no longer needs, if it exists and this relay controls it; one
/// the watch's cache knows is absent is not asked for.
/// Applies a child the relay may or may not want (named after the relay), or deletes the one
/// it no longer wants.
async fn apply_or_delete<K: Owned>(
    client: &Client,
    stores: Option<&Stores>,
    relay: &SmtpRelay,
    wanted: Option<Planned<'_, K>>,
    guard: Option<&OwnerReference>,
) -> Result<()> {
    match wanted {
        Some(p) => apply_guarded(client, p, guard).await.map(drop),
        None => delete_owned::<K>(client, stores, relay, &relay.name_any()).await,
    }
}

pub(crate) async fn delete_owned<K: Owned>(
    client: &Client,
    stores: Option<&Stores>,
    relay: &SmtpRelay,
    name: &str,
) -> Result<()> {
    let ns = relay.namespace_checked()?;
    if known_absent::<K>(stores, &ns, name) {
        return Ok(());
    }
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    let Some(live) = api.get_opt(name).await? else {
        return Ok(());
    };
    if controlled_by(live.meta(), relay) {
        info!(kind = K::kind(&()).as_ref(), %name, %ns, "deleting, no longer needed");
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The spec's storage differs from the live StatefulSet's immutable claim template.
pub fn storage_change(desired: &StatefulSet, live: &StatefulSet) -> Option<String> {
    let claim = |s: &StatefulSet| {
        s.spec
            .as_ref()
            .and_then(|s| s.volume_claim_templates.as_ref())
            .and_then(|v| {
                v.iter()
                    .find(|c| c.metadata.name.as_deref() == Some("spool"))
                    .cloned()
            })
            .and_then(|c| c.spec)
    };
    let (want, have) = (claim(desired)?, claim(live)?);
    let size = |c: &k8s_openapi::api::core::v1::PersistentVolumeClaimSpec| {
        c.resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .map(|q| q.0.clone())
    };
    let (want_size, have_size) = (size(&want), size(&have));
    let same_size = match (&want_size, &have_size) {
        (Some(a), Some(b)) => {
            crate::floor::crd::quantity_bytes(a) == crate::floor::crd::quantity_bytes(b)
        }
        (a, b) => a == b,
    };
    if !same_size || want.storage_class_name != have.storage_class_name {
        return Some(format!(
            "spec.storage cannot change once the relay exists (queue volumes are immutable): it has size {} and storageClassName {}; revert spec.storage, or create a new SmtpRelay and drain this one",
            have_size.unwrap_or_default(),
            have.storage_class_name.unwrap_or_else(|| "(cluster default)".into())
        ));
    }
    None
}

/// Applies the desired objects in dependency order and prunes the ones no longer wanted; or,
/// when an object this relay does not control stands under a child's name, writes nothing and
/// returns the [`Outcome::NameConflict`] naming every such object.
pub(crate) async fn apply_all(
    client: &Client,
    stores: Option<&Stores>,
    relay: &SmtpRelay,
    d: &Desired,
) -> Result<std::result::Result<StatefulSet, Outcome>> {
    // Every child, so a new one does not compile until it is read, checked and applied here.
    let Desired {
        config_map,
        hash_key_secret,
        relayhost_secret,
        sasl_users_secret,
        tls_secret,
        ca_key_secret,
        ca_config_map,
        service,
        headless_service,
        stateful_set,
        oauth2_sharing,
        pdb,
        network_policy,
        drain_guard,
    } = d;
    let mut in_the_way = Vec::new();
    let hash_key_secret = read_live(client, relay, hash_key_secret, &mut in_the_way).await?;
    let mut secrets = Vec::new();
    for secret in [
        ca_key_secret,
        relayhost_secret,
        sasl_users_secret,
        tls_secret,
    ]
    .into_iter()
    .flatten()
    {
        secrets.push(read_live(client, relay, secret, &mut in_the_way).await?);
    }
    let sharing = match oauth2_sharing {
        Some(s) => Some((
            read_live(client, relay, &s.secret, &mut in_the_way).await?,
            read_live(client, relay, &s.service_account, &mut in_the_way).await?,
            read_live(client, relay, &s.role, &mut in_the_way).await?,
            read_live(client, relay, &s.role_binding, &mut in_the_way).await?,
        )),
        None => None,
    };
    let config_map = read_live(client, relay, config_map, &mut in_the_way).await?;
    let ca_config_map = read_wanted(client, relay, ca_config_map.as_ref(), &mut in_the_way).await?;
    let headless_service = read_live(client, relay, headless_service, &mut in_the_way).await?;
    let service = read_live(client, relay, service, &mut in_the_way).await?;
    let stateful_set = read_live(client, relay, stateful_set, &mut in_the_way).await?;
    let pdb = read_wanted(client, relay, pdb.as_ref(), &mut in_the_way).await?;
    let network_policy =
        read_wanted(client, relay, network_policy.as_ref(), &mut in_the_way).await?;
    let live_sts = stateful_set.live.as_ref();
    let guard = read_guard(
        client,
        stores,
        relay,
        drain_guard.as_ref(),
        live_sts,
        &mut in_the_way,
    );
    let guard = guard.await?;
    if !in_the_way.is_empty() {
        return Ok(Err(name_conflict(&in_the_way)));
    }
    let applied = async {
        let guard = settle_guard(client, relay, guard).await?;
        let guard = guard.as_ref();
        // The hash key first: no hash is published before its key is stored, so a restarted
        // operator reads back the key the live hash was computed with.
        apply_guarded(client, hash_key_secret, guard).await?;
        // The CA before what it signed (its key is the first of the Secrets).
        if let Some(ca) = ca_config_map {
            apply_guarded(client, ca, guard).await?;
        }
        // Unreferenced Secrets are pruned later (prune_secrets), once no pod mounts them.
        for secret in secrets {
            apply_guarded(client, secret, guard).await?;
        }
        // The pods' ServiceAccount and what it may do, before pods that run as it.
        if let Some((secret, account, role, binding)) = sharing {
            apply_guarded(client, secret, guard).await?;
            apply_guarded(client, account, guard).await?;
            apply_guarded(client, role, guard).await?;
            apply_guarded(client, binding, guard).await?;
        }
        apply_guarded(client, config_map, guard).await?;
        // Who may reach the pods, before there is a Service to reach them through; kept by
        // the drain guard while the pods drain.
        apply_or_delete(client, stores, relay, network_policy, guard).await?;
        // The Services are the relay's alone: a deleted relay takes no new mail.
        apply(client, headless_service).await?;
        apply(client, service).await?;
        let sts = apply_guarded(client, stateful_set, guard).await?;
        apply_or_delete(client, stores, relay, pdb, guard).await?;
        Ok(sts)
    };
    match applied.await {
        Ok(sts) => Ok(Ok(sts)),
        Err(Error::Refused(message)) => Ok(Err(Outcome::ApplyRefused {
            message: format!("{message}; fix what refused it (a policy, a quota) or the spec"),
        })),
        Err(e) => Err(e),
    }
}

/// What a reconcile says when objects the relay does not control stand under its children's
/// names.
fn name_conflict(in_the_way: &[String]) -> Outcome {
    Outcome::NameConflict {
        message: format!(
            "in the way, and left alone as this SmtpRelay does not control them: {}; delete or rename them, or give this SmtpRelay another name",
            in_the_way.join(", ")
        ),
    }
}

/// The relay's drain guard as read: to apply (with the live one, if any), or one to delete.
enum Guard<'a> {
    Wanted(Planned<'a, ConfigMap>),
    Unwanted(Option<ConfigMap>),
}

/// Reads the drain guard, wanted or not. A ConfigMap under its name that does not guard this
/// relay is in the way (when wanted) or left alone (when not). An unwanted one is asked for
/// only when it may be there: the cache holds the name, or (without caches) the live
/// StatefulSet still refers to it.
async fn read_guard<'a>(
    client: &Client,
    stores: Option<&Stores>,
    relay: &SmtpRelay,
    desired: Option<&'a ConfigMap>,
    live_sts: Option<&StatefulSet>,
    in_the_way: &mut Vec<String>,
) -> Result<Guard<'a>> {
    let ns = relay.namespace_checked()?;
    let name = Names::drain_guard(&relay.name_any());
    let absent = match stores {
        Some(_) => known_absent::<ConfigMap>(stores, &ns, &name),
        None => !live_sts.is_some_and(|s| {
            s.owner_references()
                .iter()
                .any(|o| o.kind == "ConfigMap" && o.name == name)
        }),
    };
    let live = match desired.is_none() && absent {
        true => None,
        false => {
            Api::<ConfigMap>::namespaced(client.clone(), &ns)
                .get_opt(&name)
                .await?
        }
    };
    let ours = live.as_ref().is_some_and(|l| guards(&l.metadata, relay));
    Ok(match desired {
        Some(desired) => {
            if live.is_some() && !ours {
                in_the_way.push(format!("ConfigMap {ns}/{name}"));
            }
            Guard::Wanted(Planned { desired, live })
        }
        None => Guard::Unwanted(live.filter(|_| ours)),
    })
}

/// The drain guard before anything it guards, which refers to it by its uid; or, when no
/// longer wanted, gone (the children drop it as they are applied).
async fn settle_guard(
    client: &Client,
    relay: &SmtpRelay,
    guard: Guard<'_>,
) -> Result<Option<OwnerReference>> {
    match guard {
        Guard::Wanted(planned) => Ok(Some(guard_owner_ref(&apply(client, planned).await?)?)),
        Guard::Unwanted(live) => {
            delete_guard(client, relay, live).await?;
            Ok(None)
        }
    }
}

/// Deletes the relay's drain guard (`live`, read as [`guards`] it). While the relay stands,
/// that only drops a second owner: the garbage collector removes the reference from the
/// children, which the relay still owns.
pub(crate) async fn delete_guard(
    client: &Client,
    relay: &SmtpRelay,
    live: Option<ConfigMap>,
) -> Result<()> {
    let Some(live) = live else { return Ok(()) };
    let (name, ns) = name_ns(&live.metadata)?;
    info!(%name, %ns, relay = %relay.name_any(), "deleting the drain guard");
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    // Only the guard that was read: one made anew meanwhile is another's.
    let params = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: live.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Deletes owned Secrets the relay no longer references, and the pods' ServiceAccount once no
/// delegated OAuth2 login needs it, once no pod of the old revision can still use them (the
/// rollout is complete).
pub(crate) async fn prune_secrets(
    client: &Client,
    relay: &SmtpRelay,
    stores: Option<&Stores>,
    d: &Desired,
    rollout: Rollout,
) -> Result<()> {
    if !rollout.up_to_date {
        return Ok(());
    }
    let name = relay.name_any();
    for (wanted, secret_name) in [
        (d.relayhost_secret.is_some(), Names::relayhost_secret(&name)),
        (
            d.sasl_users_secret.is_some(),
            Names::sasl_users_secret(&name),
        ),
        (d.tls_secret.is_some(), Names::tls_secret(&name)),
        (d.ca_key_secret.is_some(), Names::ca_key_secret(&name)),
    ] {
        if !wanted {
            delete_owned::<Secret>(client, stores, relay, &secret_name).await?;
        }
    }
    if d.ca_config_map.is_none() {
        let ca = Names::ca_config_map(&name);
        delete_owned::<ConfigMap>(client, stores, relay, &ca).await?;
    }
    // The refresh token's Secret goes last, so while it exists, so may the rest.
    let token = Names::oauth2_token_secret(&name);
    let ns = relay.namespace_checked()?;
    if d.oauth2_sharing.is_none()
        && !known_absent::<Secret>(stores, &ns, &token)
        && Api::<Secret>::namespaced(client.clone(), &ns)
            .get_metadata_opt(&token)
            .await?
            .is_some()
    {
        let identity = Names::oauth2_identity(&name);
        delete_owned::<RoleBinding>(client, stores, relay, &identity).await?;
        delete_owned::<Role>(client, stores, relay, &identity).await?;
        delete_owned::<ServiceAccount>(client, stores, relay, &identity).await?;
        delete_owned::<Secret>(client, stores, relay, &token).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::floor::owned::Watched;

    /// The one list of owned kinds and the types the operator applies agree: each kind has its
    /// `Owned` impl, under the same names, with a cache exactly when the kind is watched.
    #[test]
    fn every_owned_kind_is_applied_and_cached_as_the_list_says() {
        fn check<K: Owned>(stores: &Stores, seen: &mut Vec<OwnedKind>) {
            assert_eq!(K::KIND.kind(), K::kind(&()).as_ref());
            assert_eq!(K::KIND.group(), K::group(&()).as_ref());
            assert_eq!(K::KIND.plural(), K::plural(&()).as_ref());
            assert_eq!(
                K::cache(stores).is_some(),
                K::KIND.watched() != Watched::No,
                "{:?}",
                K::KIND
            );
            seen.push(K::KIND);
        }
        let stores = crate::fixtures::stores_with_secrets(&[]);
        let mut seen = Vec::new();
        check::<ConfigMap>(&stores, &mut seen);
        check::<Secret>(&stores, &mut seen);
        check::<Service>(&stores, &mut seen);
        check::<StatefulSet>(&stores, &mut seen);
        check::<PodDisruptionBudget>(&stores, &mut seen);
        check::<NetworkPolicy>(&stores, &mut seen);
        check::<ServiceAccount>(&stores, &mut seen);
        check::<Role>(&stores, &mut seen);
        check::<RoleBinding>(&stores, &mut seen);
        seen.sort();
        let mut all = OwnedKind::ALL.to_vec();
        all.sort();
        assert_eq!(seen, all, "a kind of the list without its Owned impl here");
    }
}
