//! Scale-down without stranding mail. When `spec.replicas` goes down, the replicas being scaled
//! away are asked to drain ([`DRAIN_ANNOTATION`] on the pod, which the relay reads through the
//! downward API): each leaves the Service (its readiness probe fails), keeps its listener for
//! the sessions in progress and delivers its queue. The StatefulSet keeps them until their
//! queues, read from their metrics, are empty; only then are replicas lowered, and only then can
//! a `whenScaled: Delete` volume go. Scaling up again before the end cancels the drain: the pods
//! never left, so two Postfix instances never share a spool.
//!
//! A drain that cannot finish (the relayhost refuses or is down, a pod is not running) holds
//! the replicas and says so in status and an Event; annotating the SmtpRelay with
//! [`ABANDON_ANNOTATION`] gives up on it explicitly.
//!
//! Everything is read from the cluster on each reconcile (the StatefulSet's replicas, the pods'
//! annotations and metrics), so an operator restart in the middle of a drain carries on.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use crate::floor::crd::SmtpRelay;
use crate::floor::error::Result;
use crate::floor::verdict::Desired;
use crate::steps::apply::merge_patch;

use crate::floor::contract::ABANDON_ANNOTATION;
use crate::floor::running::{ordinal, pod_ready, Departing, Drain};
pub use smtp_relay::drain::DRAIN_ANNOTATION;

/// How often a relay that is draining is looked at again.
pub const REQUEUE: Duration = Duration::from_secs(10);

/// The decision, from what was seen: `want` replicas in the spec, `live` in the StatefulSet.
pub fn decide(want: i32, live: Option<i32>, departing: Vec<Departing>, abandon: bool) -> Drain {
    let Some(live) = live.filter(|live| *live > want) else {
        return Drain::None;
    };
    if abandon {
        let held = departing
            .iter()
            .map(Departing::describe)
            .collect::<Vec<_>>()
            .join(", ");
        return Drain::Done {
            from: live,
            to: want,
            abandoned: Some(held),
        };
    }
    if departing.iter().all(Departing::drained) {
        return Drain::Done {
            from: live,
            to: want,
            abandoned: None,
        };
    }
    Drain::InProgress {
        want,
        hold: live,
        departing,
    }
}

/// The step: marks the pods (drain the departing ones, serve with the others), reads the
/// departing ones' queues, decides, and holds the StatefulSet's replicas in `desired` while
/// they drain.
pub async fn step(
    client: &kube::Client,
    relay: &SmtpRelay,
    live: Option<&StatefulSet>,
    pods: &[Pod],
    desired: &mut Desired,
) -> Result<Drain> {
    let want = relay.spec.replicas;
    let live_replicas = live.and_then(|s| s.spec.as_ref()).and_then(|s| s.replicas);
    let name = relay.name_any();
    let ns = relay.namespace_checked()?;
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);

    let mut departing = Vec::new();
    for pod in pods {
        let Some(ordinal) = ordinal(&name, &pod.name_any()) else {
            continue;
        };
        let leaving = live_replicas.is_some_and(|live| ordinal >= want && ordinal < live);
        if leaving {
            departing.push(self::departing(&api, pod).await?);
        } else if asked(pod) {
            mark(&api, pod, false).await?;
        }
    }
    // A departing replica without a pod (not scheduled yet, or gone): its spool cannot be read.
    if let Some(live) = live_replicas {
        for ordinal in want.max(0)..live {
            let pod = format!("{name}-{ordinal}");
            if !departing.iter().any(|d| d.pod == pod) {
                departing.push(Departing {
                    pod,
                    ready: false,
                    queue: None,
                });
            }
        }
    }
    departing.sort_by(|a, b| a.pod.cmp(&b.pod));

    let drain = decide(want, live_replicas, departing, abandoned(relay));
    if let Drain::InProgress { hold, .. } = &drain {
        if let Some(spec) = desired.stateful_set.spec.as_mut() {
            spec.replicas = Some(*hold);
        }
    }
    Ok(drain)
}

/// Asks `pod` to drain (once) and reads what it holds.
pub(crate) async fn departing(api: &Api<Pod>, pod: &Pod) -> Result<Departing> {
    if !asked(pod) {
        mark(api, pod, true).await?;
    }
    Ok(Departing {
        pod: pod.name_any(),
        ready: pod_ready(pod),
        queue: crate::observe::scrape::scrape(pod)
            .await
            .inspect_err(|why| warn!(pod = %pod.name_any(), %why, "cannot read the queue of a departing replica"))
            .ok(),
    })
}

/// Whether the user gave up on draining this relay ([`ABANDON_ANNOTATION`]).
pub(crate) fn abandoned(relay: &SmtpRelay) -> bool {
    relay
        .annotations()
        .get(ABANDON_ANNOTATION)
        .is_some_and(|v| v == "true")
}

/// The ordinal of a StatefulSet pod `<relay>-<n>`.
fn asked(pod: &Pod) -> bool {
    pod.annotations()
        .get(DRAIN_ANNOTATION)
        .is_some_and(|v| v == "true")
}

/// Sets or removes the drain annotation (a merge patch of the annotations only).
async fn mark(api: &Api<Pod>, pod: &Pod, drain: bool) -> Result<()> {
    let value = match drain {
        true => serde_json::Value::String("true".into()),
        false => serde_json::Value::Null,
    };
    info!(pod = %pod.name_any(), drain, "marking the pod");
    let patch = serde_json::json!({"metadata": {"annotations": {DRAIN_ANNOTATION: value}}});
    merge_patch(api, &pod.name_any(), &patch).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtp_relay::metrics::QueueReport;

    /// A departing pod; `queue`: (draining, queued, deferred), and stuck when more than one is
    /// deferred.
    fn departing(pod: &str, ready: bool, queue: Option<(bool, u64, u64)>) -> Departing {
        Departing {
            pod: pod.into(),
            ready,
            queue: queue.map(|(draining, queued, deferred)| QueueReport {
                draining,
                queued,
                deferred,
                hold: 0,
                seconds_since_delivery: if deferred > 1 { 600 } else { 5 },
                ..QueueReport::default()
            }),
        }
    }

    #[test]
    fn replicas_go_down_only_once_the_departing_ones_are_empty_and_out_of_the_service() {
        assert_eq!(decide(2, Some(2), vec![], false), Drain::None);
        assert_eq!(decide(3, Some(2), vec![], false), Drain::None);
        assert_eq!(decide(1, None, vec![], false), Drain::None);
        for not_yet in [
            departing("r-1", false, Some((true, 3, 0))),
            // Empty, but still in the Service: new mail may come.
            departing("r-1", true, Some((true, 0, 0))),
            // Empty, but the relay has not seen the request yet.
            departing("r-1", false, Some((false, 0, 0))),
            departing("r-1", false, None),
        ] {
            let d = decide(1, Some(2), vec![not_yet.clone()], false);
            assert!(
                matches!(
                    d,
                    Drain::InProgress {
                        hold: 2,
                        want: 1,
                        ..
                    }
                ),
                "{not_yet:?}: {d:?}"
            );
        }
        assert_eq!(
            decide(
                1,
                Some(2),
                vec![departing("r-1", false, Some((true, 0, 0)))],
                false
            ),
            Drain::Done {
                from: 2,
                to: 1,
                abandoned: None
            }
        );
        let given_up = decide(
            1,
            Some(2),
            vec![departing("r-1", false, Some((true, 4, 4)))],
            true,
        );
        assert!(
            matches!(&given_up, Drain::Done { abandoned: Some(held), .. } if held.contains("4 queued")),
            "{given_up:?}"
        );
    }

    #[test]
    fn the_condition_says_what_is_held_where_and_how_to_give_up() {
        let waiting = decide(
            1,
            Some(3),
            vec![
                departing("r-1", false, Some((true, 5, 5))),
                departing("r-2", false, Some((true, 0, 0))),
            ],
            false,
        );
        let (draining, reason, message) = waiting.condition().expect("a condition");
        assert!(draining);
        assert_eq!(reason, "DrainWaiting");
        for part in [
            "from 3 to 1",
            "r-1 (5 queued, 5 deferred by the relayhost, oldest 0s, on volume spool-r-1)",
            "r-2 (empty)",
            ABANDON_ANNOTATION,
        ] {
            assert!(message.contains(part), "{part}: {message}");
        }
        let moving = decide(
            1,
            Some(2),
            vec![departing("r-1", false, Some((true, 5, 1)))],
            false,
        );
        assert_eq!(moving.condition().map(|c| c.1), Some("Draining"));
        assert_eq!(Drain::None.condition(), None);
    }

    #[test]
    fn ordinals_are_read_from_the_pod_names_of_this_relay_only() {
        assert_eq!(ordinal("relay", "relay-0"), Some(0));
        assert_eq!(ordinal("relay", "relay-12"), Some(12));
        assert_eq!(ordinal("relay", "relay-b-1"), None);
        assert_eq!(ordinal("relay", "other-1"), None);
    }
}
