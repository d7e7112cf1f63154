//! Deleting an SmtpRelay whose queue volumes go with it (`whenDeleted: Delete`) without
//! destroying queued mail, whatever the propagation policy of the delete.
//!
//! - A finalizer ([`FINALIZER`]) holds the SmtpRelay while every pod drains as a replica being
//!   scaled away does ([`crate::steps::drain`]): out of the Service, delivering its queue.
//! - The drain guard ([`crate::steps::build::configmap::drain_guard`]), a ConfigMap owned by
//!   nothing, is the second owner of every child but the Services, so the garbage collector
//!   leaves the StatefulSet, its pods and what they mount standing even when the delete is a
//!   foreground one (Argo CD's), which takes the children before the owner. The volumes are
//!   never the garbage collector's: the StatefulSet retains them, and this step deletes them.
//! - "No pods" never means "drained": the pods the StatefulSet should have are waited for, and
//!   with no StatefulSet at all, the volumes are kept (a Warning Event names them).
//! - Deleted with propagation orphan, the relay keeps running: the finalizer goes at once,
//!   nothing drains, and the guard stays as the children's owner.
//!
//! The finalizer goes, and the guard and volumes with it, once every queue is empty; after
//! `spec.storage.retention.drainBeforeDeleteSeconds` (a Warning Event says what was left); or
//! when the user annotates the SmtpRelay [`ABANDON_ANNOTATION`]. Meanwhile the condition
//! Draining says what is held and where, so a deletion never hangs silently.
//!
//! The finalizer is there only while it is wanted: added when `whenDeleted` is Delete, removed
//! when it is Retain (the volumes then keep the mail).

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{DeleteParams, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, ResourceExt};
use tracing::info;

use crate::context::Context;
use crate::floor::contract::{pod_selector, Names, ABANDON_ANNOTATION, FINALIZER, SPOOL_VOLUME};
use crate::floor::crd::{find_condition, SmtpRelay};
use crate::floor::error::Result;
use crate::floor::running::{truncate, Departing};
use crate::steps::apply::{delete_guard, merge_patch};
use crate::steps::build::configmap::guards;
use crate::steps::drain;
use crate::steps::report::events::drain_event;
use crate::steps::report::{patch_status, status};

/// The finalizer the API server puts on an object deleted with propagation orphan, until the
/// garbage collector has taken the owner references off its dependents.
const ORPHAN_FINALIZER: &str = "orphan";

/// Whether deleting this relay is the operator's to finish: it drains first (unless
/// `drainBeforeDeleteSeconds` is 0), then deletes the volumes.
pub fn wanted(relay: &SmtpRelay) -> bool {
    relay.spec.storage.retention.operator_deletes_volumes()
}

/// Whether the relay is deleted with propagation orphan: the API server's `orphan` finalizer
/// is still there, or the garbage collector already took the relay's reference off its Service
/// (`service`, as read). A background delete leaves that reference until the relay is gone; a
/// foreground one deletes the Service. The Service is the witness because it is the one child
/// the drain guard does not own.
pub fn orphaned(relay: &SmtpRelay, service: Option<&ObjectMeta>) -> bool {
    let uid = relay.metadata.uid.as_deref();
    relay.finalizers().iter().any(|f| f == ORPHAN_FINALIZER)
        || service.is_some_and(|s| {
            s.deletion_timestamp.is_none()
                && !s
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| Some(o.uid.as_str()) == uid)
        })
}

fn has_finalizer(relay: &SmtpRelay) -> bool {
    relay.finalizers().iter().any(|f| f == FINALIZER)
}

/// Adds or removes the finalizer so it is there exactly when [`wanted`].
pub async fn keep_finalizer(client: &kube::Client, relay: &SmtpRelay) -> Result<()> {
    let (want, has) = (wanted(relay), has_finalizer(relay));
    if want == has {
        return Ok(());
    }
    let current = relay.finalizers().to_vec();
    let next: Vec<String> = match want {
        true => current
            .iter()
            .cloned()
            .chain([FINALIZER.to_string()])
            .collect(),
        false => current
            .iter()
            .filter(|f| *f != FINALIZER)
            .cloned()
            .collect(),
    };
    info!(relay = %relay.name_any(), add = want, "updating the drain finalizer");
    patch_finalizers(client, relay, next).await
}

async fn patch_finalizers(
    client: &kube::Client,
    relay: &SmtpRelay,
    next: Vec<String>,
) -> Result<()> {
    let ns = relay.namespace_checked()?;
    let api: Api<SmtpRelay> = Api::namespaced(client.clone(), &ns);
    // The resourceVersion makes the API server refuse the patch (409, retried) if the list
    // changed since it was read: another controller's finalizer is never dropped.
    let patch = serde_json::json!({"metadata": {
        "finalizers": next,
        "resourceVersion": relay.resource_version(),
    }});
    merge_patch(&api, &relay.name_any(), &patch).await
}

/// What to do with a relay being deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Keep holding it: its pods are still draining.
    Wait { stuck: bool, message: String },
    /// Let it go: the Event to publish says why.
    Release {
        reason: &'static str,
        warning: bool,
        message: String,
    },
}

/// The decision, from the pods the StatefulSet should have as seen (`None`: there is no
/// StatefulSet), the user's annotation and the time since deletion.
pub fn decide(
    pods: Option<&[Departing]>,
    abandon: bool,
    elapsed: Duration,
    timeout: Duration,
) -> Verdict {
    let Some(pods) = pods else {
        return Verdict::Release {
            reason: "VolumesKept",
            warning: true,
            message: "the StatefulSet is gone, so no pod can deliver what its volumes hold: deleting the relay and keeping its volumes; a new SmtpRelay of the same name delivers what they hold, or delete them".into(),
        };
    };
    let list = || {
        pods.iter()
            .map(Departing::describe)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if pods.iter().all(Departing::drained) {
        return Verdict::Release {
            reason: "Drained",
            warning: false,
            message: "every replica delivered its queue; deleting the relay and its volumes".into(),
        };
    }
    if abandon {
        return Verdict::Release {
            reason: "DrainAbandoned",
            warning: true,
            message: format!(
                "deleting without waiting ({ABANDON_ANNOTATION}); destroyed with the volumes: {}",
                list()
            ),
        };
    }
    if elapsed >= timeout {
        return Verdict::Release {
            reason: "DrainTimedOut",
            warning: true,
            message: format!(
                "spec.storage.retention.drainBeforeDeleteSeconds ({}) passed; destroyed with the volumes: {}",
                timeout.as_secs(),
                list()
            ),
        };
    }
    Verdict::Wait {
        stuck: pods.iter().any(Departing::stuck),
        message: format!(
            "deleting once every replica has delivered its queue (at most {} s more): {}; to delete now, annotate the SmtpRelay {ABANDON_ANNOTATION}=true",
            timeout.saturating_sub(elapsed).as_secs(),
            list()
        ),
    }
}

/// The deletion step: lets an orphaned relay run on; otherwise drains every pod the
/// StatefulSet (`live`) should have, reports, and when [`decide`] says so deletes the volumes
/// and the drain guard and removes the finalizer. A relay without the finalizer is left to
/// garbage collection.
pub async fn finalize(
    relay: &SmtpRelay,
    ctx: &Context,
    live: Option<&StatefulSet>,
    pods: &[Pod],
) -> Result<Action> {
    if !has_finalizer(relay) {
        return Ok(Action::await_change());
    }
    let ns = relay.namespace_checked()?;
    let name = relay.name_any();
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let service = services.get_metadata_opt(&name).await?;
    if orphaned(relay, service.as_ref().map(|s| &s.metadata)) {
        let note = format!(
            "deleted with propagation orphan: the StatefulSet, its pods, volumes and Services keep running, without draining; the ConfigMap {} owns them now, and deleting it deletes them",
            Names::drain_guard(&name)
        );
        release(relay, ctx, "Orphaned", false, note).await?;
        return Ok(Action::await_change());
    }
    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let seen = match live {
        Some(sts) => Some(departing(&pod_api, sts, pods).await?),
        None => None,
    };
    let deleted_at = relay
        .metadata
        .deletion_timestamp
        .as_ref()
        .map_or(jiff::Timestamp::now(), |t| t.0);
    let elapsed = jiff::Timestamp::now()
        .duration_since(deleted_at)
        .unsigned_abs();
    let timeout = Duration::from_secs(u64::from(
        relay.spec.storage.retention.drain_before_delete_seconds,
    ));
    let abandon = drain::abandoned(relay);
    match decide(seen.as_deref(), abandon, elapsed, timeout) {
        Verdict::Wait { stuck, message } => {
            let reason = if stuck { "DrainWaiting" } else { "Draining" };
            report(relay, ctx, reason, message).await?;
            Ok(Action::requeue(drain::REQUEUE))
        }
        Verdict::Release {
            reason,
            warning,
            message,
        } => {
            if live.is_some() {
                delete_volumes(relay, ctx).await?;
            }
            let guards_api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
            let guard = guards_api
                .get_opt(&Names::drain_guard(&name))
                .await?
                .filter(|g| guards(&g.metadata, relay));
            delete_guard(&ctx.client, relay, guard).await?;
            release(relay, ctx, reason, warning, message).await?;
            Ok(Action::await_change())
        }
    }
}

/// Every pod the StatefulSet `sts` should have (a missing one cannot deliver: it is waited
/// for), and any other of its pods still there, each asked to drain and read.
async fn departing(api: &Api<Pod>, sts: &StatefulSet, pods: &[Pod]) -> Result<Vec<Departing>> {
    let replicas = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let mut names: Vec<String> = (0..replicas.max(0))
        .map(|i| format!("{}-{i}", sts.name_any()))
        .collect();
    for pod in pods {
        if !names.contains(&pod.name_any()) {
            names.push(pod.name_any());
        }
    }
    let mut seen = Vec::new();
    for name in names {
        seen.push(match pods.iter().find(|p| p.name_any() == name) {
            Some(pod) => drain::departing(api, pod).await?,
            None => Departing {
                pod: name,
                ready: false,
                queue: None,
            },
        });
    }
    Ok(seen)
}

/// Deletes the relay's queue volumes: the StatefulSet names each claim
/// `<template>-<statefulset>-<ordinal>` and labels it with its selector. A claim still
/// mounted is removed once its pod is gone (the API server's claim protection).
async fn delete_volumes(relay: &SmtpRelay, ctx: &Context) -> Result<()> {
    let ns = relay.namespace_checked()?;
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let selector = pod_selector(relay);
    let prefix = format!("{SPOOL_VOLUME}-{}-", relay.name_any());
    for claim in api.list(&ListParams::default().labels(&selector)).await? {
        let name = claim.name_any();
        let ordinal = name.strip_prefix(&prefix);
        if !ordinal.is_some_and(|o| !o.is_empty() && o.bytes().all(|b| b.is_ascii_digit())) {
            continue;
        }
        if claim.metadata.deletion_timestamp.is_some() {
            continue;
        }
        info!(claim = %name, %ns, "deleting a drained queue volume");
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Publishes why the relay is let go and removes the finalizer.
async fn release(
    relay: &SmtpRelay,
    ctx: &Context,
    reason: &'static str,
    warning: bool,
    message: String,
) -> Result<()> {
    let ev = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.into(),
        note: Some(truncate(&message, 1000)),
        action: "Delete".into(),
        secondary: None,
    };
    ctx.publish_or_log(&ev, relay).await;
    let next = relay
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    patch_finalizers(&ctx.client, relay, next).await
}

/// Sets the Draining condition of a relay being deleted (and an Event when its reason
/// changes); the other conditions stay as they were.
async fn report(relay: &SmtpRelay, ctx: &Context, reason: &str, message: String) -> Result<()> {
    let old = relay.status.clone().unwrap_or_default();
    let before = find_condition(Some(&old), status::DRAINING).cloned();
    let condition = status::condition_at(
        status::DRAINING,
        Some(true),
        reason,
        message,
        relay.metadata.generation,
        &Time(jiff::Timestamp::now()),
        before.as_ref(),
    );
    if before.as_ref() == Some(&condition) {
        return Ok(());
    }
    if let Some(ev) = drain_event(before.as_ref(), &condition) {
        let ev = Event {
            action: "Delete".into(),
            ..ev
        };
        ctx.publish_or_log(&ev, relay).await;
    }
    let mut new = old;
    new.conditions.retain(|c| c.type_ != status::DRAINING);
    new.conditions.push(condition);
    patch_status(ctx, relay, &new).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::floor::crd::RetentionPolicy;
    use smtp_relay::metrics::QueueReport;

    fn pod(name: &str, queued: Option<u64>) -> Departing {
        Departing {
            pod: name.into(),
            ready: false,
            queue: queued.map(|queued| QueueReport {
                draining: true,
                queued,
                deferred: queued,
                seconds_since_delivery: 300,
                ..QueueReport::default()
            }),
        }
    }

    #[test]
    fn a_deleted_relay_is_held_until_drained_given_up_or_timed_out() {
        let s = Duration::from_secs;
        let empty = [pod("r-0", Some(0)), pod("r-1", Some(0))];
        assert!(matches!(
            decide(Some(&empty), false, s(1), s(900)),
            Verdict::Release {
                reason: "Drained",
                warning: false,
                ..
            }
        ));
        assert!(matches!(
            decide(Some(&[]), false, s(1), s(900)),
            Verdict::Release {
                reason: "Drained",
                ..
            }
        ));
        let holding = [pod("r-0", Some(0)), pod("r-1", Some(7))];
        match decide(Some(&holding), false, s(100), s(900)) {
            Verdict::Wait { stuck, message } => {
                assert!(stuck);
                for part in ["r-1 (7 queued", "at most 800 s more", ABANDON_ANNOTATION] {
                    assert!(message.contains(part), "{part}: {message}");
                }
            }
            other => panic!("{other:?}"),
        }
        // A pod that does not run: its spool cannot be read, so it is waited for too.
        assert!(matches!(
            decide(Some(&[pod("r-0", None)]), false, s(1), s(900)),
            Verdict::Wait { .. }
        ));
        match decide(Some(&holding), true, s(100), s(900)) {
            Verdict::Release {
                reason: "DrainAbandoned",
                warning: true,
                message,
            } => assert!(message.contains("r-1 (7 queued"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decide(Some(&holding), false, s(900), s(900)),
            Verdict::Release {
                reason: "DrainTimedOut",
                warning: true,
                ..
            }
        ));
    }

    #[test]
    fn no_statefulset_is_no_drain_and_its_volumes_are_kept() {
        // A StatefulSet gone before its pods drained (the old foreground delete): no pod can
        // read the volumes, so they are kept and the Event says so, never "Drained".
        match decide(
            None,
            false,
            Duration::from_secs(1),
            Duration::from_secs(900),
        ) {
            Verdict::Release {
                reason: "VolumesKept",
                warning: true,
                message,
            } => assert!(message.contains("keeping its volumes"), "{message}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_finalizer_is_wanted_only_when_volumes_go_with_the_relay() {
        let mut r = crate::fixtures::relay("r");
        assert!(!wanted(&r), "Retain keeps the mail on the volumes");
        r.spec.storage.retention.when_deleted = RetentionPolicy::Delete;
        assert!(wanted(&r));
        r.spec.storage.retention.drain_before_delete_seconds = 0;
        assert!(
            wanted(&r),
            "0: no drain, but the operator still deletes the volumes itself"
        );
    }

    #[test]
    fn an_orphan_delete_is_told_by_its_finalizer_or_by_the_service() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
        let mut r = crate::fixtures::relay("r");
        let uid = r.metadata.uid.clone().expect("the fixture has a uid");
        let mine = ObjectMeta {
            owner_references: Some(vec![OwnerReference {
                uid: uid.clone(),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        };
        let orphaned_service = ObjectMeta::default();
        // Background: the Service still refers to the relay. Foreground: it is gone or going.
        assert!(!orphaned(&r, Some(&mine)));
        assert!(!orphaned(&r, None));
        let going = ObjectMeta {
            deletion_timestamp: Some(Time(jiff::Timestamp::now())),
            ..ObjectMeta::default()
        };
        assert!(!orphaned(&r, Some(&going)));
        // Orphan: the garbage collector took the reference off, or has yet to.
        assert!(orphaned(&r, Some(&orphaned_service)));
        r.metadata.finalizers = Some(vec!["orphan".into(), FINALIZER.into()]);
        assert!(orphaned(&r, Some(&mine)));
    }
}
