//! Deleting an SmtpRelay whose queue volumes go with it (`whenDeleted: Delete`) without
//! destroying queued mail. A finalizer ([`FINALIZER`]) holds the SmtpRelay, and so its
//! StatefulSet and volumes, while every pod drains as a replica being scaled away does
//! ([`crate::drain`]): out of the Service, delivering its queue. The finalizer goes, and
//! garbage collection with it, once every queue is empty; after
//! `spec.storage.retention.drainBeforeDeleteSeconds` (a Warning Event says what was left); or
//! when the user annotates the SmtpRelay [`ABANDON_ANNOTATION`]. Meanwhile the condition
//! Draining says what is held and where, so a deletion never hangs silently.
//!
//! The finalizer is there only while it is wanted: added when `whenDeleted` is Delete, removed
//! when it is Retain (the volumes then keep the mail) or the drain time is 0.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, ResourceExt};
use tracing::info;

use crate::apply::merge_patch;
use crate::controller::{patch_status, Context};
use crate::crd::{RetentionPolicy, SmtpRelay};
use crate::drain::{self, Departing, ABANDON_ANNOTATION};
use crate::events::{drain_event, truncate};
use crate::status;
use crate::Result;

/// Holds a relay being deleted until its queues are drained.
pub const FINALIZER: &str = "smtprelay.dev/drain-queues";

/// Whether deleting this relay must drain first.
pub fn wanted(relay: &SmtpRelay) -> bool {
    let r = &relay.spec.storage.retention;
    r.when_deleted == RetentionPolicy::Delete && r.drain_before_delete_seconds > 0
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

/// The decision, from the pods as seen, the user's annotation and the time since deletion.
pub fn decide(pods: &[Departing], abandon: bool, elapsed: Duration, timeout: Duration) -> Verdict {
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

/// The deletion step: drains every pod, reports, and removes the finalizer when [`decide`]
/// says so. A relay without the finalizer is left to garbage collection.
pub async fn finalize(relay: &SmtpRelay, ctx: &Context, pods: &[Pod]) -> Result<Action> {
    if !has_finalizer(relay) {
        return Ok(Action::await_change());
    }
    let ns = relay.namespace_checked()?;
    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let mut seen = Vec::new();
    for pod in pods {
        seen.push(drain::departing(&pod_api, pod).await?);
    }
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
    match decide(&seen, abandon, elapsed, timeout) {
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
            patch_finalizers(&ctx.client, relay, next).await?;
            Ok(Action::await_change())
        }
    }
}

/// Sets the Draining condition of a relay being deleted (and an Event when its reason
/// changes); the other conditions stay as they were.
async fn report(relay: &SmtpRelay, ctx: &Context, reason: &str, message: String) -> Result<()> {
    let old = relay.status.clone().unwrap_or_default();
    let before = status::find_condition(Some(&old), status::DRAINING).cloned();
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
            decide(&empty, false, s(1), s(900)),
            Verdict::Release {
                reason: "Drained",
                warning: false,
                ..
            }
        ));
        assert!(matches!(
            decide(&[], false, s(1), s(900)),
            Verdict::Release {
                reason: "Drained",
                ..
            }
        ));
        let holding = [pod("r-0", Some(0)), pod("r-1", Some(7))];
        match decide(&holding, false, s(100), s(900)) {
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
            decide(&[pod("r-0", None)], false, s(1), s(900)),
            Verdict::Wait { .. }
        ));
        match decide(&holding, true, s(100), s(900)) {
            Verdict::Release {
                reason: "DrainAbandoned",
                warning: true,
                message,
            } => assert!(message.contains("r-1 (7 queued"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decide(&holding, false, s(900), s(900)),
            Verdict::Release {
                reason: "DrainTimedOut",
                warning: true,
                ..
            }
        ));
    }

    #[test]
    fn the_finalizer_is_wanted_only_when_volumes_go_with_the_relay() {
        let mut r = crate::fixtures::relay("r");
        assert!(!wanted(&r), "Retain keeps the mail on the volumes");
        r.spec.storage.retention.when_deleted = RetentionPolicy::Delete;
        assert!(wanted(&r));
        r.spec.storage.retention.drain_before_delete_seconds = 0;
        assert!(!wanted(&r), "0: delete at once");
    }
}
