//! The reconcile loop: read, decide, apply with server-side apply, write status, publish Events.
//!
//! Bad input is never destructive: when the spec is rejected or a reference cannot be resolved,
//! the reconcile writes status (and a Warning Event) and changes nothing else, so the last good
//! configuration keeps running.

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{reflector, watcher, Controller, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::{debug, info, warn};

use crate::backoff::{watch_with_backoff, NoDelay};
use crate::builders::{self, hash::object_hash, BuildOptions, Desired, Names, MANAGED_BY_SELECTOR};
use crate::crd::SmtpRelay;
use crate::mapping::{referenced_config_maps, referenced_secrets, relays_for};
use crate::metrics::Metrics;
use crate::resolve::{self, RefSource};
use crate::shutdown::DRAIN_TIMEOUT;
use crate::status::{self, Outcome, Rollout};
use crate::{Error, Result};

/// The one field manager of every write.
pub const MANAGER: &str = "smtp-relay-operator";
/// Hash of the desired object last applied; an equal hash means there is nothing to write.
pub const APPLIED_HASH_ANNOTATION: &str = "smtprelay.dev/applied-hash";

/// Shared state of the reconciles.
pub struct Context {
    pub client: Client,
    reporter: Reporter,
    pub metrics: Arc<Metrics>,
    pub opts: BuildOptions,
    failures: Mutex<HashMap<ObjectRef<SmtpRelay>, u32>>,
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

    fn reset_backoff(&self, relay: &SmtpRelay) {
        if let Ok(mut f) = self.failures.lock() {
            f.remove(&ObjectRef::from_obj(relay));
        }
    }

    fn next_backoff(&self, relay: &SmtpRelay) -> Duration {
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
    /// What the applied-hash annotation covers (Secrets leave their data out: no hash of a
    /// secret value is ever written to an annotation).
    fn hash_view(&self) -> Self {
        self.clone()
    }
    /// Checks the live object for drift the hash cannot see.
    fn live_matches(&self, _live: &Self) -> bool {
        true
    }
}

impl Owned for ConfigMap {
    fn live_matches(&self, live: &Self) -> bool {
        self.data == live.data
    }
}
impl Owned for Service {
    fn live_matches(&self, live: &Self) -> bool {
        subset_of(&self.spec, &live.spec)
    }
}
impl Owned for PodDisruptionBudget {
    fn live_matches(&self, live: &Self) -> bool {
        subset_of(&self.spec, &live.spec)
    }
}
impl Owned for Secret {
    fn hash_view(&self) -> Self {
        Secret {
            data: None,
            ..self.clone()
        }
    }
    fn live_matches(&self, live: &Self) -> bool {
        self.data == live.data
    }
}
impl Owned for StatefulSet {
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
fn subset_of<T: Serialize>(desired: &T, live: &T) -> bool {
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
fn drifted_field(d: &serde_json::Value, l: &serde_json::Value, at: &str) -> Option<String> {
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

fn name_ns(meta: &kube::api::ObjectMeta) -> Result<(String, String)> {
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
fn controlled_by(meta: &kube::api::ObjectMeta, relay: &SmtpRelay) -> bool {
    meta.owner_references.iter().flatten().any(|o| {
        o.controller == Some(true) && relay.metadata.uid.as_ref().is_some_and(|uid| *uid == o.uid)
    })
}

/// A desired child and the live object under its name, read before anything is written.
struct Planned<'a, K> {
    desired: &'a K,
    live: Option<K>,
}

/// Reads the live object under `desired`'s name. One that this relay does not control (the
/// user's own, or another controller's) is never adopted: it is added to `in_the_way`.
async fn read_live<'a, K: Owned>(
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
async fn apply<K: Owned>(client: &Client, planned: Planned<'_, K>) -> Result<K> {
    let Planned { desired: obj, live } = planned;
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
    let mut obj = obj.clone();
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
fn apply_error(e: kube::Error, kind: &str, ns: &str, name: &str) -> Error {
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

/// Deletes an object the relay no longer needs, if it exists and this relay controls it.
async fn delete_owned<K: Owned>(client: &Client, relay: &SmtpRelay, name: &str) -> Result<()> {
    let ns = relay
        .namespace()
        .ok_or(Error::MissingObjectKey(".metadata.namespace"))?;
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
            crate::validate::quantity_bytes(a) == crate::validate::quantity_bytes(b)
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

/// Validates, resolves and builds; user errors become an [`Outcome`], API errors an `Err`.
pub async fn plan(
    relay: &SmtpRelay,
    src: &impl RefSource,
    opts: &BuildOptions,
) -> Result<std::result::Result<Desired, Outcome>> {
    if let Err(message) = crate::validate::validate_spec(&relay.spec) {
        return Ok(Err(Outcome::InvalidSpec { message }));
    }
    let mut resolved = match resolve::resolve(relay, src).await {
        Ok(r) => r,
        Err(e) if e.is_user_error() => {
            return Ok(Err(Outcome::Unresolved {
                reason: e.reason(),
                message: e.to_string(),
            }))
        }
        Err(e) => return Err(e.into()),
    };
    let now = jiff::Timestamp::now().as_second();
    let mut certificate_issued = None;
    if let Some((pair, note)) = resolve::issued_certificate(relay, src, now).await? {
        resolved.inbound_tls = Some(pair);
        certificate_issued = note;
    }
    // What the pods will read, judged by the relay's own rules before anything is written.
    if let Err(outcome) = crate::validate::judge_with_relay_rules(relay, &resolved) {
        return Ok(Err(outcome));
    }
    let hash_key = resolve::config_hash_key(relay, src).await?;
    match builders::build(relay, &resolved, &hash_key, opts) {
        Ok(d) => Ok(Ok(Desired {
            certificate_issued,
            ..d
        })),
        Err(Error::InvalidSpec(message)) => Ok(Err(Outcome::InvalidSpec { message })),
        Err(e) => Err(e),
    }
}

/// Applies the desired objects in dependency order and prunes the ones no longer wanted; or,
/// when an object this relay does not control stands under a child's name, writes nothing and
/// returns the [`Outcome::NameConflict`] naming every such object.
async fn apply_all(
    client: &Client,
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
        service,
        headless_service,
        stateful_set,
        pdb,
        config_hash: _,
        certificate_issued: _,
    } = d;
    let mut in_the_way = Vec::new();
    let hash_key_secret = read_live(client, relay, hash_key_secret, &mut in_the_way).await?;
    let mut secrets = Vec::new();
    for secret in [relayhost_secret, sasl_users_secret, tls_secret]
        .into_iter()
        .flatten()
    {
        secrets.push(read_live(client, relay, secret, &mut in_the_way).await?);
    }
    let config_map = read_live(client, relay, config_map, &mut in_the_way).await?;
    let headless_service = read_live(client, relay, headless_service, &mut in_the_way).await?;
    let service = read_live(client, relay, service, &mut in_the_way).await?;
    let stateful_set = read_live(client, relay, stateful_set, &mut in_the_way).await?;
    let pdb = match pdb {
        Some(p) => Some(read_live(client, relay, p, &mut in_the_way).await?),
        None => None,
    };
    if !in_the_way.is_empty() {
        return Ok(Err(Outcome::NameConflict {
            message: format!(
                "in the way, and left alone as this SmtpRelay does not control them: {}; delete or rename them, or give this SmtpRelay another name",
                in_the_way.join(", ")
            ),
        }));
    }

    let applied = async {
        // The hash key first: no hash is published before its key is stored, so a restarted
        // operator reads back the key the live hash was computed with.
        apply(client, hash_key_secret).await?;
        // Unreferenced Secrets are pruned later (prune_secrets), once no pod mounts them.
        for secret in secrets {
            apply(client, secret).await?;
        }
        apply(client, config_map).await?;
        apply(client, headless_service).await?;
        apply(client, service).await?;
        let sts = apply(client, stateful_set).await?;
        match pdb {
            Some(p) => {
                apply(client, p).await?;
            }
            None => delete_owned::<PodDisruptionBudget>(client, relay, &relay.name_any()).await?,
        }
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

/// Deletes owned Secrets the relay no longer references, once no pod of the old revision can
/// still mount them (the rollout is complete).
async fn prune_secrets(
    client: &Client,
    relay: &SmtpRelay,
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
    ] {
        if !wanted {
            delete_owned::<Secret>(client, relay, &secret_name).await?;
        }
    }
    Ok(())
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Events for notable transitions only, so a steady failure does not flood the namespace.
pub fn events_for(
    relay: &SmtpRelay,
    outcome: &Outcome,
    new: &crate::crd::SmtpRelayStatus,
) -> Vec<Event> {
    let old_ready = status::ready_condition(relay.status.as_ref());
    let new_ready = status::ready_condition(Some(new));
    let mut out = Vec::new();
    // An accepted but risky choice, once when it is made.
    for type_ in status::WARNING_CONDITIONS {
        let risky = |s: Option<&crate::crd::SmtpRelayStatus>| {
            s.and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
                .filter(|c| c.status == "False")
                .cloned()
        };
        if let (None, Some(c)) = (risky(relay.status.as_ref()), risky(Some(new))) {
            out.push(Event {
                type_: EventType::Warning,
                reason: c.reason.clone(),
                note: Some(truncate(&c.message, 1000)),
                action: "Reconcile".into(),
                secondary: None,
            });
        }
    }
    match outcome {
        Outcome::InvalidSpec { .. }
        | Outcome::Unresolved { .. }
        | Outcome::NameConflict { .. }
        | Outcome::ApplyRefused { .. } => {
            let changed = old_ready.map(|c| (&c.reason, &c.message))
                != new_ready.map(|c| (&c.reason, &c.message));
            if let (true, Some(c)) = (changed, new_ready) {
                out.push(Event {
                    type_: EventType::Warning,
                    reason: c.reason.clone(),
                    note: Some(truncate(&c.message, 1000)),
                    action: "Reconcile".into(),
                    secondary: None,
                });
            }
        }
        Outcome::Applied { config_hash } => {
            // A pod that cannot run (rejections have their own Event above).
            let stalled = |s: Option<&crate::crd::SmtpRelayStatus>| {
                s.and_then(|s| s.conditions.iter().find(|c| c.type_ == status::STALLED))
                    .filter(|c| c.status == "True")
                    .map(|c| (c.reason.clone(), c.message.clone()))
            };
            if let Some((reason, message)) = stalled(Some(new)) {
                if stalled(relay.status.as_ref()).map(|s| s.0) != Some(reason.clone()) {
                    out.push(Event {
                        type_: EventType::Warning,
                        reason,
                        note: Some(truncate(&message, 1000)),
                        action: "Reconcile".into(),
                        secondary: None,
                    });
                }
            }
            let old_hash = relay.status.as_ref().and_then(|s| s.config_hash.as_ref());
            if old_hash != Some(config_hash) {
                out.push(Event {
                    type_: EventType::Normal,
                    reason: "ConfigApplied".into(),
                    note: Some(format!(
                        "configuration {} applied",
                        &config_hash[..config_hash.len().min(12)]
                    )),
                    action: "Apply".into(),
                    secondary: None,
                });
            }
            let was_ready = old_ready.is_some_and(|c| c.status == "True");
            if let (false, Some(c)) = (was_ready, new_ready) {
                if c.status == "True" {
                    out.push(Event {
                        type_: EventType::Normal,
                        reason: "Ready".into(),
                        note: Some(truncate(&c.message, 1000)),
                        action: "Reconcile".into(),
                        secondary: None,
                    });
                }
            }
        }
    }
    out
}

/// One reconciliation of one SmtpRelay.
pub async fn reconcile(relay: Arc<SmtpRelay>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started();
    let name = relay.name_any();
    let ns = relay
        .namespace()
        .ok_or(Error::MissingObjectKey(".metadata.namespace"))?;
    if relay.metadata.deletion_timestamp.is_some() {
        // Owned objects are garbage-collected through their owner references.
        return Ok(Action::await_change());
    }
    let client = &ctx.client;
    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);

    let mut planned = plan(&relay, client, &ctx.opts).await?;
    if let Ok(desired) = &planned {
        if let Some(live) = sts_api.get_opt(&name).await? {
            if let Some(message) = storage_change(&desired.stateful_set, &live) {
                planned = Err(Outcome::InvalidSpec { message });
            }
        }
    }

    let applied = match planned {
        Ok(desired) => match apply_all(client, &relay, &desired).await? {
            Ok(sts) => Ok((desired, sts)),
            Err(conflict) => Err(conflict),
        },
        Err(outcome) => Err(outcome),
    };
    let (outcome, sts) = match applied {
        Ok((desired, sts)) => {
            let rollout = Rollout::from_stateful_set(Some(&sts), relay.spec.replicas);
            prune_secrets(client, &relay, &desired, rollout).await?;
            if let Some(note) = &desired.certificate_issued {
                let ev = Event {
                    type_: EventType::Normal,
                    reason: "CertificateIssued".into(),
                    note: Some(truncate(note, 1000)),
                    action: "Issue".into(),
                    secondary: None,
                };
                if let Err(e) = ctx.publish(&ev, &relay).await {
                    warn!(relay = %name, error = %e, "publishing event failed");
                }
            }
            (
                Outcome::Applied {
                    config_hash: desired.config_hash.clone(),
                },
                Some(sts),
            )
        }
        Err(outcome) => {
            let label = match &outcome {
                Outcome::InvalidSpec { .. } => "InvalidSpec",
                Outcome::NameConflict { .. } => "NameConflict",
                Outcome::ApplyRefused { .. } => "ApplyRefused",
                Outcome::Unresolved { reason, .. } => reason,
                Outcome::Applied { .. } => "none",
            };
            ctx.metrics.failure(label);
            warn!(relay = %name, namespace = %ns, reason = label, "input rejected or refused: see status");
            (outcome, sts_api.get_opt(&name).await?)
        }
    };

    let pods = match &sts {
        Some(_) => relay_pods(client, &relay).await?,
        None => Vec::new(),
    };
    let rollout = Rollout::from_stateful_set(sts.as_ref(), relay.spec.replicas).with_pods(&pods);
    let now = Time(jiff::Timestamp::now());
    let new_status = status::compute(&relay, &outcome, rollout, now);
    for ev in events_for(&relay, &outcome, &new_status) {
        if let Err(e) = ctx.publish(&ev, &relay).await {
            warn!(relay = %name, error = %e, "publishing event failed");
        }
    }
    if relay.status.as_ref() != Some(&new_status) {
        let api: Api<SmtpRelay> = Api::namespaced(client.clone(), &ns);
        let patch = Patch::Merge(serde_json::json!({ "status": new_status }));
        api.patch_status(&name, &PatchParams::default(), &patch)
            .await?;
    }
    ctx.reset_backoff(&relay);

    let ready = status::ready_condition(Some(&new_status)).is_some_and(|c| c.status == "True");
    Ok(match (&outcome, ready) {
        (Outcome::Applied { .. }, true) => Action::requeue(Duration::from_secs(300)),
        (Outcome::Applied { .. }, false) => Action::requeue(Duration::from_secs(15)),
        // Secrets and ConfigMaps in the way are watched (see `mapping`); the StatefulSet,
        // Service and PDB watches see only the operator's own objects, so look again soon.
        (Outcome::NameConflict { .. }, _) => Action::requeue(Duration::from_secs(30)),
        // A policy or quota may change without touching the relay: look again.
        (Outcome::ApplyRefused { .. }, _) => Action::requeue(Duration::from_secs(30)),
        _ => Action::requeue(Duration::from_secs(300)),
    })
}

/// The relay's pods (its StatefulSet's selector), so status can say what keeps one from
/// running.
async fn relay_pods(client: &Client, relay: &SmtpRelay) -> Result<Vec<Pod>> {
    let ns = relay
        .namespace()
        .ok_or(Error::MissingObjectKey(".metadata.namespace"))?;
    let selector = builders::selector_labels(relay)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    Ok(api
        .list(&ListParams::default().labels(&selector))
        .await?
        .items)
}

/// Failed reconciles (API errors) retry with per-object exponential backoff.
pub fn error_policy(relay: Arc<SmtpRelay>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failure(error.metric_label());
    let delay = ctx.next_backoff(&relay);
    warn!(relay = %relay.name_any(), namespace = ?relay.namespace(), error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

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

/// The metadata-only watch of one kind (an `Api<PartialObjectMeta<K>>` asks for
/// `PartialObjectMetadataList`: no data or spec on the wire), with its own backoff.
fn metadata_stream<K>(
    api: Api<PartialObjectMeta<K>>,
    config: watcher::Config,
) -> impl futures::Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    watch_with_backoff(watcher(api, config)).touched_objects()
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
    let ctx = Arc::new(Context::new(
        client.clone(),
        metrics,
        cfg.build.clone(),
        cfg.instance.clone(),
    ));
    // Every watch backs off on its own (see [`crate::backoff`]): behind kube-runtime's one
    // shared trigger backoff, the stale errors of an API server outage would be drained one
    // shared step at a time and keep the operator deaf long after the server is back.
    let (store, writer) = reflector::store();
    let relay_watch =
        watch_with_backoff(watcher(relays, watcher::Config::default().any_semantic()))
            .reflect(writer)
            .applied_objects();
    let owned = watcher::Config::default().labels(MANAGED_BY_SELECTOR);
    let store1 = store.clone();
    let store2 = store.clone();
    // A short debounce folds the burst of events one change causes (our own status patch, the
    // StatefulSet's status, owned objects) into one reconcile.
    let synced = store.clone();
    let shutdown = shutdown.shared();
    let controller = Controller::for_stream(relay_watch, store)
        .with_config(
            kube::runtime::controller::Config::default().debounce(Duration::from_millis(500)),
        )
        .trigger_backoff(NoDelay)
        .owns_stream(metadata_stream(
            api::<PartialObjectMeta<StatefulSet>>(&client, ns),
            owned.clone(),
        ))
        .owns_stream(metadata_stream(
            api::<PartialObjectMeta<Service>>(&client, ns),
            owned.clone(),
        ))
        .owns_stream(metadata_stream(
            api::<PartialObjectMeta<PodDisruptionBudget>>(&client, ns),
            owned,
        ))
        // One watch per kind covers both owned copies (via owner references) and the user's
        // referenced objects, so a rotated password or a new SASL user reconciles at once.
        // Metadata only: values are read by the reconcile, for the referenced objects alone,
        // so no Secret of the cluster is held in the operator's memory.
        .watches_stream(
            metadata_stream(
                api::<PartialObjectMeta<Secret>>(&client, ns),
                watcher::Config::default(),
            ),
            move |s: PartialObjectMeta<Secret>| {
                let relays = store1.state();
                relays_for(
                    &s.metadata,
                    relays.iter().map(|r| r.as_ref()),
                    referenced_secrets,
                )
            },
        )
        .watches_stream(
            metadata_stream(
                api::<PartialObjectMeta<ConfigMap>>(&client, ns),
                watcher::Config::default(),
            ),
            move |c: PartialObjectMeta<ConfigMap>| {
                let relays = store2.state();
                relays_for(
                    &c.metadata,
                    relays.iter().map(|r| r.as_ref()),
                    referenced_config_maps,
                )
            },
        )
        .graceful_shutdown_on(shutdown.clone())
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => debug!(relay = %obj.name, "reconciled"),
                Err(e) => debug!(error = %e, "reconcile error"),
            }
        });
    // kube-runtime's graceful shutdown waits for the SmtpRelay store's first sync before it can
    // finish, which never comes while the API server is down or the list is Forbidden; and a
    // reconcile stuck on a hanging API call would hold it too. So the drain is bounded.
    let drain_limit = async move {
        shutdown.await;
        if synced.wait_until_ready().now_or_never().is_none() {
            info!("stopping before the first sync of SmtpRelays: nothing to drain");
            return;
        }
        tokio::time::sleep(DRAIN_TIMEOUT).await;
        warn!(timeout = ?DRAIN_TIMEOUT, "reconciles did not finish in time; stopping them");
    };
    tokio::select! {
        () = controller => {}
        () = drain_limit => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures::{hash_key, relay};
    use crate::builders::HASH_KEY_KEY;
    use crate::crd::SecretRef;
    use http::{Request, Response, StatusCode};
    use http_body_util::BodyExt;
    use k8s_openapi::api::apps::v1::StatefulSetStatus;
    use kube::client::Body;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn mock() -> (Arc<Context>, Handle) {
        let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(svc, "mail");
        let ctx = Context::new(
            client,
            Arc::new(Metrics::default()),
            BuildOptions::default(),
            Some("test".into()),
        );
        (Arc::new(ctx), handle)
    }

    fn json(code: StatusCode, v: serde_json::Value) -> Response<Body> {
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(&v).expect("json")))
            .expect("response")
    }

    fn not_found() -> Response<Body> {
        json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
        )
    }

    /// Answers the next request after checking its method and path; returns its body.
    async fn expect(
        handle: &mut Handle,
        method: &str,
        path: &str,
        resp: Response<Body>,
    ) -> serde_json::Value {
        let (req, send) = handle.next_request().await.expect("a request");
        assert_eq!(
            (req.method().as_str(), req.uri().path()),
            (method, path),
            "unexpected request"
        );
        let bytes = req.into_body().collect().await.expect("body").to_bytes();
        send.send_response(resp);
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)
    }

    /// Answers what a rejected input produces after the StatefulSet is read: a Warning Event
    /// with `reason`, then the status patch of relay r1. Returns the patch.
    async fn expect_warning_then_status(handle: &mut Handle, reason: &str) -> serde_json::Value {
        let event = expect(
            handle,
            "POST",
            "/apis/events.k8s.io/v1/namespaces/mail/events",
            json(StatusCode::CREATED, serde_json::json!({})),
        )
        .await;
        assert_eq!(event["reason"], reason);
        assert_eq!(event["type"], "Warning");
        expect(
            handle,
            "PATCH",
            "/apis/smtprelay.dev/v1alpha1/namespaces/mail/smtprelays/r1/status",
            json(
                StatusCode::OK,
                serde_json::to_value(relay("r1")).expect("json"),
            ),
        )
        .await
    }

    async fn run_with<F>(relay: SmtpRelay, ctx: Arc<Context>, script: F) -> Result<Action>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let server = tokio::spawn(script);
        let res = tokio::time::timeout(Duration::from_secs(5), reconcile(Arc::new(relay), ctx))
            .await
            .expect("reconcile finishes");
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("script finishes")
            .expect("script passes");
        res
    }

    #[tokio::test]
    async fn missing_secret_patches_status_only() {
        let (ctx, mut handle) = mock();
        let mut r = relay("r1");
        r.spec.sasl_users_secret_ref = Some(SecretRef {
            name: "users".into(),
        });
        let res = run_with(r, ctx.clone(), async move {
            expect(
                &mut handle,
                "GET",
                "/api/v1/namespaces/mail/secrets/users",
                not_found(),
            )
            .await;
            expect(
                &mut handle,
                "GET",
                "/apis/apps/v1/namespaces/mail/statefulsets/r1",
                not_found(),
            )
            .await;
            let patch = expect_warning_then_status(&mut handle, "SecretNotFound").await;
            let ready = &patch["status"]["conditions"][0];
            assert_eq!(
                (
                    ready["type"].as_str(),
                    ready["status"].as_str(),
                    ready["reason"].as_str()
                ),
                (Some("Ready"), Some("False"), Some("SecretNotFound"))
            );
            assert!(ready["message"]
                .as_str()
                .unwrap_or_default()
                .contains("mail/users"));
            assert!(
                patch.get("spec").is_none(),
                "status patch never touches spec"
            );
            // Nothing else: no apply of any child.
            if let Ok(Some((req, _))) =
                tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await
            {
                panic!("unexpected request: {} {}", req.method(), req.uri());
            }
        })
        .await;
        assert_eq!(
            res.expect("reconciled"),
            Action::requeue(Duration::from_secs(300))
        );
    }

    #[tokio::test]
    async fn invalid_spec_changes_nothing_but_status() {
        let (ctx, mut handle) = mock();
        let mut r = relay("r1");
        r.spec.networks = vec!["10.0.0.0/33".into()];
        run_with(r, ctx, async move {
            expect(
                &mut handle,
                "GET",
                "/apis/apps/v1/namespaces/mail/statefulsets/r1",
                not_found(),
            )
            .await;
            let patch = expect_warning_then_status(&mut handle, "InvalidSpec").await;
            assert_eq!(patch["status"]["conditions"][1]["reason"], "InvalidSpec");
        })
        .await
        .expect("reconciled");
    }

    /// The live objects as the API would return them after a previous apply.
    fn live<K: Owned>(obj: &K) -> serde_json::Value {
        let mut obj = obj.clone();
        let hash = object_hash(&obj.hash_view());
        obj.annotations_mut()
            .insert(APPLIED_HASH_ANNOTATION.into(), hash);
        serde_json::to_value(obj).expect("json")
    }

    #[tokio::test]
    async fn identical_reapply_writes_nothing() {
        let (ctx, mut handle) = mock();
        let mut r = relay("r1");
        let desired = builders::build(
            &r,
            &resolve::Resolved::default(),
            &hash_key(),
            &BuildOptions::default(),
        )
        .expect("builds");
        // The live StatefulSet: what was applied, plus what the API server and the StatefulSet
        // controller add.
        let mut sts: StatefulSet =
            serde_json::from_value(live(&desired.stateful_set)).expect("sts");
        sts.metadata.generation = Some(1);
        sts.metadata.resource_version = Some("42".into());
        sts.status = Some(StatefulSetStatus {
            observed_generation: Some(1),
            replicas: 1,
            ready_replicas: Some(1),
            updated_replicas: Some(1),
            current_revision: Some("a".into()),
            update_revision: Some("a".into()),
            ..StatefulSetStatus::default()
        });
        let outcome = Outcome::Applied {
            config_hash: desired.config_hash.clone(),
        };
        let rollout = Rollout::from_stateful_set(Some(&sts), 1);
        r.status = Some(status::compute(
            &r,
            &outcome,
            rollout,
            Time(jiff::Timestamp::UNIX_EPOCH),
        ));

        let res = run_with(r, ctx, async move {
            let sts_path = "/apis/apps/v1/namespaces/mail/statefulsets/r1";
            let key_path = "/api/v1/namespaces/mail/secrets/r1-hash-key";
            let live_key = live(&desired.hash_key_secret);
            let live_sts = serde_json::to_value(&sts).expect("json");
            // As after an operator restart: the key is read back, so the hash is the same.
            expect(
                &mut handle,
                "GET",
                key_path,
                json(StatusCode::OK, live_key.clone()),
            )
            .await;
            expect(
                &mut handle,
                "GET",
                sts_path,
                json(StatusCode::OK, live_sts.clone()),
            )
            .await;
            expect(&mut handle, "GET", key_path, json(StatusCode::OK, live_key)).await;
            expect(
                &mut handle,
                "GET",
                "/api/v1/namespaces/mail/configmaps/r1-config",
                json(StatusCode::OK, live(&desired.config_map)),
            )
            .await;
            expect(
                &mut handle,
                "GET",
                "/api/v1/namespaces/mail/services/r1-headless",
                json(StatusCode::OK, live(&desired.headless_service)),
            )
            .await;
            expect(
                &mut handle,
                "GET",
                "/api/v1/namespaces/mail/services/r1",
                json(StatusCode::OK, live(&desired.service)),
            )
            .await;
            expect(&mut handle, "GET", sts_path, json(StatusCode::OK, live_sts)).await;
            expect(
                &mut handle,
                "GET",
                "/apis/policy/v1/namespaces/mail/poddisruptionbudgets/r1",
                not_found(),
            )
            .await;
            for s in ["r1-relayhost", "r1-sasl-users", "r1-tls"] {
                expect(
                    &mut handle,
                    "GET",
                    &format!("/api/v1/namespaces/mail/secrets/{s}"),
                    not_found(),
                )
                .await;
            }
            // The pods, for what keeps one from running (none here).
            let req = expect(
                &mut handle,
                "GET",
                "/api/v1/namespaces/mail/pods",
                json(
                    StatusCode::OK,
                    serde_json::json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []}),
                ),
            )
            .await;
            assert_eq!(req, serde_json::Value::Null, "a GET has no body");
            // No apply, no event, no status patch.
            if let Ok(Some((req, _))) =
                tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await
            {
                panic!("unexpected write: {} {}", req.method(), req.uri());
            }
        })
        .await;
        assert_eq!(
            res.expect("reconciled"),
            Action::requeue(Duration::from_secs(300))
        );
    }

    #[tokio::test]
    async fn changed_config_is_server_side_applied_with_one_manager() {
        let (ctx, mut handle) = mock();
        let r = relay("r1");
        let desired = builders::build(
            &r,
            &resolve::Resolved::default(),
            &hash_key(),
            &BuildOptions::default(),
        )
        .expect("builds");
        run_with(r, ctx, async move {
            let key_path = "/api/v1/namespaces/mail/secrets/r1-hash-key";
            expect(&mut handle, "GET", key_path, not_found()).await;
            expect(
                &mut handle,
                "GET",
                "/apis/apps/v1/namespaces/mail/statefulsets/r1",
                not_found(),
            )
            .await;
            // Every child is read before anything is written: none exists yet.
            for path in [
                key_path,
                "/api/v1/namespaces/mail/configmaps/r1-config",
                "/api/v1/namespaces/mail/services/r1-headless",
                "/api/v1/namespaces/mail/services/r1",
                "/apis/apps/v1/namespaces/mail/statefulsets/r1",
            ] {
                expect(&mut handle, "GET", path, not_found()).await;
            }
            // A new relay: the generated key is stored before anything carries the hash.
            let applied = expect(
                &mut handle,
                "PATCH",
                key_path,
                json(StatusCode::OK, live(&desired.hash_key_secret)),
            )
            .await;
            let key = applied["data"][HASH_KEY_KEY].as_str().unwrap_or_default();
            assert_eq!(key.len(), 44, "32 bytes, base64: {key}");
            assert_eq!(
                applied["metadata"]["ownerReferences"][0]["uid"], "uid-1",
                "owned by the relay"
            );
            let (req, send) = handle.next_request().await.expect("request");
            assert_eq!(
                req.uri().path(),
                "/api/v1/namespaces/mail/configmaps/r1-config"
            );
            assert_eq!(req.method(), "PATCH");
            let q = req.uri().query().unwrap_or_default().to_string();
            assert!(
                q.contains("fieldManager=smtp-relay-operator") && q.contains("force=true"),
                "{q}"
            );
            assert_eq!(
                req.headers()["content-type"],
                "application/apply-patch+yaml"
            );
            send.send_response(json(StatusCode::OK, live(&desired.config_map)));
            // The rest of the sequence is covered above; stop answering here.
        })
        .await
        .expect_err("the unanswered request fails the reconcile");
    }

    #[tokio::test]
    async fn an_object_the_relay_does_not_control_is_never_adopted() {
        let (ctx, mut handle) = mock();
        let r = relay("r1");
        let desired = builders::build(
            &r,
            &resolve::Resolved::default(),
            &hash_key(),
            &BuildOptions::default(),
        )
        .expect("builds");
        let res = run_with(r, ctx, async move {
            let key_path = "/api/v1/namespaces/mail/secrets/r1-hash-key";
            let sts_path = "/apis/apps/v1/namespaces/mail/statefulsets/r1";
            expect(&mut handle, "GET", key_path, not_found()).await;
            expect(&mut handle, "GET", sts_path, not_found()).await;
            expect(&mut handle, "GET", key_path, not_found()).await;
            // The user's own ConfigMap under the child's name: no owner reference.
            let mut users = desired.config_map.clone();
            users.metadata.owner_references = None;
            expect(
                &mut handle,
                "GET",
                "/api/v1/namespaces/mail/configmaps/r1-config",
                json(StatusCode::OK, serde_json::to_value(&users).expect("json")),
            )
            .await;
            for path in [
                "/api/v1/namespaces/mail/services/r1-headless",
                "/api/v1/namespaces/mail/services/r1",
                sts_path,
            ] {
                expect(&mut handle, "GET", path, not_found()).await;
            }
            // No child is written: the StatefulSet is read for status, then the Event and
            // the status patch name the ConfigMap.
            expect(&mut handle, "GET", sts_path, not_found()).await;
            let patch = expect_warning_then_status(&mut handle, "NameConflict").await;
            let ready = patch["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                .cloned()
                .expect("a Ready condition");
            assert_eq!(ready["status"], "False");
            assert_eq!(ready["reason"], "NameConflict");
            let message = ready["message"].as_str().unwrap_or_default();
            assert!(message.contains("ConfigMap mail/r1-config"), "{message}");
        })
        .await;
        res.expect("reconciled");
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(4), Duration::from_secs(40));
        assert_eq!(backoff(100), Duration::from_secs(300));
        assert_eq!(backoff(0), Duration::from_secs(5));
    }

    #[test]
    fn storage_changes_are_refused_but_equal_quantities_pass() {
        let r = relay("r1");
        let opts = BuildOptions::default();
        let base = builders::build(&r, &resolve::Resolved::default(), &hash_key(), &opts)
            .expect("builds")
            .stateful_set;
        let mut same = r.clone();
        same.spec.storage.size = "1024Mi".into();
        let same = builders::build(&same, &resolve::Resolved::default(), &hash_key(), &opts)
            .expect("builds")
            .stateful_set;
        assert_eq!(storage_change(&same, &base), None);
        let mut bigger = r.clone();
        bigger.spec.storage.size = "2Gi".into();
        let bigger = builders::build(&bigger, &resolve::Resolved::default(), &hash_key(), &opts)
            .expect("builds")
            .stateful_set;
        let msg = storage_change(&bigger, &base).expect("refused");
        assert!(msg.contains("spec.storage") && msg.contains("1Gi"));
        let mut class = r.clone();
        class.spec.storage.storage_class_name = Some("fast".into());
        let class = builders::build(&class, &resolve::Resolved::default(), &hash_key(), &opts)
            .expect("builds")
            .stateful_set;
        assert!(storage_change(&class, &base).is_some());
    }

    #[test]
    fn cleartext_relayhost_password_is_flagged_once() {
        use crate::crd::{CredentialsSecretRef, RelayhostTlsSpec, TlsLevelSpec};
        let mut r = relay("r1");
        r.spec.relayhost.credentials_secret_ref = Some(CredentialsSecretRef {
            name: "login".into(),
            username_key: "username".into(),
            password_key: "password".into(),
        });
        let ok = Outcome::Applied {
            config_hash: "h".into(),
        };
        let now = || Time(jiff::Timestamp::UNIX_EPOCH);
        let cond = |s: &crate::crd::SmtpRelayStatus| {
            s.conditions
                .iter()
                .find(|c| c.type_ == status::RELAYHOST_PASSWORD_PROTECTED)
                .map(|c| (c.status.clone(), c.reason.clone()))
                .unwrap()
        };
        // Credentials and no level: encrypt, nothing to flag.
        let s = status::compute(&r, &ok, Rollout::default(), now());
        assert_eq!(cond(&s), ("True".into(), "TLSRequired".into()));
        assert!(events_for(&r, &ok, &s)
            .iter()
            .all(|e| e.type_ != EventType::Warning));
        // An explicit may with credentials: accepted, flagged by a condition and one Warning.
        r.spec.relayhost.tls = Some(RelayhostTlsSpec {
            level: Some(TlsLevelSpec::May),
            ca_secret_key_ref: None,
            ca_config_map_key_ref: None,
        });
        let s = status::compute(&r, &ok, Rollout::default(), now());
        assert_eq!(cond(&s), ("False".into(), "CleartextAllowed".into()));
        let warnings: Vec<_> = events_for(&r, &ok, &s)
            .into_iter()
            .filter(|e| e.type_ == EventType::Warning)
            .collect();
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].reason, "CleartextAllowed");
        r.status = Some(s.clone());
        assert!(events_for(&r, &ok, &s)
            .iter()
            .all(|e| e.type_ != EventType::Warning));
    }

    #[test]
    fn drift_is_what_the_operator_set_and_no_longer_holds() {
        use serde_json::json;
        let desired = json!({"containers": [{"name": "relay", "image": "a", "readOnly": false,
            "env": [{"name": "X", "value": "1"}], "resources": {"limits": {"cpu": "0.5"}}}]});
        // Defaults added, omitempty fields dropped, others' additions, canonical quantities.
        let live = json!({"containers": [{"name": "relay", "image": "a",
            "env": [{"name": "X", "value": "1"}, {"name": "THEIRS", "value": "2"}],
            "resources": {"limits": {"cpu": "500m"}}, "imagePullPolicy": "IfNotPresent"}],
            "restartPolicy": "Always"});
        assert_eq!(drifted_field(&desired, &live, ""), None);
        let edited = json!({"containers": [{"name": "relay", "image": "b",
            "env": [{"name": "X", "value": "1"}]}]});
        assert_eq!(
            drifted_field(&desired, &edited, "").as_deref(),
            Some(".containers[0]")
        );
        let removed = json!({"containers": [{"name": "relay", "image": "a", "env": []}]});
        assert!(drifted_field(&desired, &removed, "").is_some());
    }

    #[test]
    fn a_refused_apply_names_the_object_and_other_errors_retry() {
        let api = |code: u16| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                message: "denied by policy x".into(),
                ..Default::default()
            }))
        };
        match apply_error(api(403), "StatefulSet", "mail", "r1") {
            Error::Refused(m) => {
                assert_eq!(
                    m,
                    "the API server refused StatefulSet mail/r1: denied by policy x"
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            apply_error(api(422), "Secret", "mail", "r1-tls"),
            Error::Refused(_)
        ));
        for transient in [409, 429, 500, 503] {
            assert!(
                matches!(
                    apply_error(api(transient), "StatefulSet", "mail", "r1"),
                    Error::Kube(_)
                ),
                "{transient} is retried with backoff"
            );
        }
    }

    #[test]
    fn events_only_on_transitions() {
        let mut r = relay("r1");
        let bad = Outcome::Unresolved {
            reason: "SecretNotFound",
            message: "m".into(),
        };
        let s1 = status::compute(
            &r,
            &bad,
            Rollout::default(),
            Time(jiff::Timestamp::UNIX_EPOCH),
        );
        let evs = events_for(&r, &bad, &s1);
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].type_, EventType::Warning);
        r.status = Some(s1.clone());
        assert!(
            events_for(&r, &bad, &s1).is_empty(),
            "same failure again: no new event"
        );

        let ok = Outcome::Applied {
            config_hash: "h".into(),
        };
        let done = Rollout {
            exists: true,
            replicas: 1,
            ready_replicas: 1,
            up_to_date: true,
            problem: None,
        };
        let s2 = status::compute(&r, &ok, done.clone(), Time(jiff::Timestamp::UNIX_EPOCH));
        let reasons: Vec<_> = events_for(&r, &ok, &s2)
            .into_iter()
            .map(|e| e.reason)
            .collect();
        assert_eq!(reasons, ["ConfigApplied", "Ready"]);
        r.status = Some(s2.clone());
        assert!(events_for(&r, &ok, &s2).is_empty());

        // A pod that cannot start: one Warning naming it, not one per reconcile.
        let crashing = Rollout {
            ready_replicas: 0,
            problem: Some(status::PodProblem {
                reason: "CrashLoopBackOff".into(),
                message: "pod r1-0, container relay: CrashLoopBackOff".into(),
                stalled: true,
            }),
            ..done
        };
        let s3 = status::compute(&r, &ok, crashing, Time(jiff::Timestamp::UNIX_EPOCH));
        let evs = events_for(&r, &ok, &s3);
        assert_eq!(evs.len(), 1);
        assert_eq!(
            (evs[0].type_, evs[0].reason.as_str()),
            (EventType::Warning, "CrashLoopBackOff")
        );
        assert!(evs[0]
            .note
            .as_deref()
            .unwrap()
            .starts_with("pod r1-0, container relay"));
        r.status = Some(s3.clone());
        assert!(events_for(&r, &ok, &s3).is_empty());
    }
}
