//! Mail waiting and flowing, in status. Every [`INTERVAL`] (a new relay's first time within
//! [`FIRST_LOOK`]) the running pods of each relay are asked for their queue (their metrics page, the one the drain reads), and `status.queue` is
//! patched when what it says changed: so `kubectl get smtpr` answers "is mail flowing?" without
//! a dashboard. Idle relays cost no write; timestamps, not ages, keep the numbers still while
//! nothing happens.
//!
//! This is the one writer of `status.queue`: the reconcile leaves it as it is, and the
//! fingerprint does not hash it (a queue that moves is no reason to reconcile).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};
use smtp_relay::metrics::QueueReport;
use tracing::{debug, warn};

use crate::context::Context;
use crate::floor::crd::{
    PodConfigRefused, PodDeliveryProblem, PodQueueStatus, QueueStatus, SmtpRelay, TokenStatus,
};
use crate::floor::running::{truncate, REFUSAL_MAX};
use crate::observe::scrape::{scrape, SCRAPES_AT_ONCE};

/// How often each relay's queue is read.
pub const INTERVAL: Duration = Duration::from_secs(30);

/// How soon a relay whose status has no queue yet is looked at, once a pod of it runs: a new
/// relay shows its queue in `kubectl get smtpr` within seconds, not half a minute.
pub const FIRST_LOOK: Duration = Duration::from_secs(5);

/// The pods of `relay` that run (and so have a metrics endpoint), by name: only those its
/// StatefulSet controls, not any pod that wears its labels.
fn running_pods(relay: &SmtpRelay, pods: &Store<Pod>) -> Vec<std::sync::Arc<Pod>> {
    let mut of = crate::observe::fingerprint::pods_of(relay, pods);
    let name = relay.name_any();
    of.retain(|p| {
        let controlled = p
            .owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && o.kind == "StatefulSet" && o.name == name);
        controlled
            && p.status
                .as_ref()
                .is_some_and(|s| s.phase.as_deref() == Some("Running") && s.pod_ip.is_some())
    });
    of
}

fn time(unix_seconds: u64) -> Option<Time> {
    let secs = i64::try_from(unix_seconds).ok().filter(|s| *s > 0)?;
    jiff::Timestamp::from_second(secs).ok().map(Time)
}

fn login_name(state: &str) -> &'static str {
    match state {
        "accepted" => "Accepted",
        "refused" => "Refused",
        "unverified" => "Unverified",
        _ => "Unknown",
    }
}

/// A pod's token, when it logs in with OAuth2 (it then has had a token or tried for one).
fn token_status(q: &QueueReport) -> Option<TokenStatus> {
    (q.oauth2_expiry_timestamp > 0 || q.oauth2_failures > 0).then(|| TokenStatus {
        expires_time: time(q.oauth2_expiry_timestamp),
        failures_in_a_row: q.oauth2_failures,
        last_error: q.oauth2_last_error.clone(),
    })
}

/// The relay's token health: the soonest expiry, the most failures, an error if any.
fn worst_token(pods: &[PodQueueStatus]) -> Option<TokenStatus> {
    let tokens: Vec<&TokenStatus> = pods
        .iter()
        .filter_map(|p| p.relayhost_token.as_ref())
        .collect();
    (!tokens.is_empty()).then(|| TokenStatus {
        expires_time: tokens
            .iter()
            .filter_map(|t| t.expires_time.clone())
            .min_by_key(|t| t.0),
        failures_in_a_row: tokens
            .iter()
            .map(|t| t.failures_in_a_row)
            .max()
            .unwrap_or(0),
        last_error: tokens.iter().find_map(|t| t.last_error.clone()),
    })
}

/// `bytes` rounded down to a whole MiB: a spool's free space moves by a few bytes as Postfix
/// writes, which is no reason to rewrite status.
fn whole_mib(bytes: u64) -> u64 {
    bytes - bytes % (1 << 20)
}

/// `status.queue` from what each running pod said; `None` without running pods.
pub fn summarize(reports: &[(String, Result<QueueReport, String>)]) -> Option<QueueStatus> {
    if reports.is_empty() {
        return None;
    }
    let pods: Vec<PodQueueStatus> = reports
        .iter()
        .map(|(pod, report)| match report {
            Ok(q) => PodQueueStatus {
                pod: pod.clone(),
                messages: Some(q.queued),
                deferred: Some(q.deferred),
                oldest_message_time: time(q.oldest_timestamp),
                last_delivery_time: time(q.last_delivery_timestamp),
                relayhost_login: Some(login_name(q.relayhost_login).into()),
                relayhost_token: token_status(q),
                spool_free_bytes: q.spool_free_bytes.map(whole_mib),
                spool_size_bytes: q.spool_size_bytes.map(whole_mib),
                // Said by a relay that reports its spool (an older image does not).
                spool_nearly_full: q.spool_free_bytes.map(|_| q.spool_nearly_full),
                config_revision: q.config_revision.clone(),
                config_refused: q.config_refused.as_ref().map(|r| PodConfigRefused {
                    revision: r.revision.clone(),
                    error: truncate(&r.error, REFUSAL_MAX),
                }),
                delivery_problem: q.delivery_problem.as_ref().map(|d| PodDeliveryProblem {
                    reason: truncate(&d.reason, 16),
                    detail: truncate(&d.detail, REFUSAL_MAX),
                }),
                root_node_uid: q.root_node_uid,
                unreadable: None,
            },
            Err(why) => PodQueueStatus {
                pod: pod.clone(),
                unreadable: Some(why.clone()),
                ..PodQueueStatus::default()
            },
        })
        .collect();
    let logins: Vec<&str> = pods
        .iter()
        .filter_map(|p| p.relayhost_login.as_deref())
        .collect();
    Some(QueueStatus {
        messages: pods.iter().filter_map(|p| p.messages).sum(),
        deferred: pods.iter().filter_map(|p| p.deferred).sum(),
        oldest_message_time: pods
            .iter()
            .filter_map(|p| p.oldest_message_time.clone())
            .min_by_key(|t| t.0),
        last_delivery_time: pods
            .iter()
            .filter_map(|p| p.last_delivery_time.clone())
            .max_by_key(|t| t.0),
        relayhost_token: worst_token(&pods),
        spool_nearly_full: pods
            .iter()
            .filter(|p| p.spool_nearly_full == Some(true))
            .map(|p| p.pod.clone())
            .collect(),
        relayhost_login: ["Unverified", "Refused", "Accepted"]
            .into_iter()
            .find(|state| logins.contains(state))
            .unwrap_or("Unknown")
            .into(),
        pods,
    })
}

/// The Event of a change in the relay's token health: failing, or working again.
pub fn token_event(before: Option<&QueueStatus>, after: Option<&QueueStatus>) -> Option<Event> {
    let failures = |q: Option<&QueueStatus>| {
        q.and_then(|q| q.relayhost_token.as_ref())
            .map_or(0, |t| t.failures_in_a_row)
    };
    let (was, now) = (failures(before), failures(after));
    if was == 0 && now > 0 {
        let error = after
            .and_then(|q| q.relayhost_token.as_ref())
            .and_then(|t| t.last_error.clone())
            .unwrap_or_else(|| "an error".into());
        Some(Event {
            type_: EventType::Warning,
            reason: "RelayhostTokenFailing".into(),
            note: Some(format!(
                "the OAuth2 token endpoint answered {error}; the relay keeps the current token until it expires and retries, mail waits in the queue meanwhile; check spec.relayhost.oauth2 and the Secret of its secretRef (status.queue.relayhostToken)"
            )),
            action: "RefreshToken".into(),
            secondary: None,
        })
    } else if was > 0 && now == 0 && after.is_some_and(|q| q.relayhost_token.is_some()) {
        Some(Event {
            type_: EventType::Normal,
            reason: "RelayhostTokenRefreshed".into(),
            note: Some("the OAuth2 token endpoint issued a token again".into()),
            action: "RefreshToken".into(),
            secondary: None,
        })
    } else {
        None
    }
}

/// The Event of a change in the spools' room: a replica's spool nearly full (new mail is
/// refused with 452 below its reserve), or every spool with room again.
pub fn spool_event(before: Option<&QueueStatus>, after: Option<&QueueStatus>) -> Option<Event> {
    let full = |q: Option<&QueueStatus>| q.map(|q| q.spool_nearly_full.clone()).unwrap_or_default();
    let (was, now) = (full(before), full(after));
    let newly: Vec<&str> = now
        .iter()
        .filter(|p| !was.contains(p))
        .map(String::as_str)
        .collect();
    if !newly.is_empty() {
        Some(Event {
            type_: EventType::Warning,
            reason: "SpoolNearlyFull".into(),
            note: Some(format!(
                "the spool volume of {} is nearly full (less than twice its reserve free): below the reserve new mail is answered 452 (retry later) and what was accepted is kept; deliver the queue (is the relayhost up?) or give the relay a larger spec.storage.size (status.queue.pods[].spoolFreeBytes)",
                newly.join(", ")
            )),
            action: "ReadQueue".into(),
            secondary: None,
        })
    } else if !was.is_empty() && now.is_empty() && after.is_some() {
        Some(Event {
            type_: EventType::Normal,
            reason: "SpoolSpaceRecovered".into(),
            note: Some("every replica's spool volume has room again".into()),
            action: "ReadQueue".into(),
            secondary: None,
        })
    } else {
        None
    }
}

/// Whether a relay is to be read now: [`INTERVAL`] after its last reading, or at once while
/// its status has no queue and a pod of it runs. A relay without a queue and without running
/// pods has nothing to say.
fn due(
    last: Option<std::time::Instant>,
    has_queue: bool,
    runs: bool,
    now: std::time::Instant,
) -> bool {
    match (has_queue, runs) {
        (false, false) => false,
        (false, true) => true,
        (true, _) => last.is_none_or(|t| now.duration_since(t) >= INTERVAL),
    }
}

/// Reads the queue of every relay in `relays` that is [`due`], and patches the statuses that
/// changed; `last` remembers when each was read.
async fn observe_once(
    ctx: &Context,
    relays: &Store<SmtpRelay>,
    pods: &Store<Pod>,
    last: &mut std::collections::HashMap<
        kube::runtime::reflector::ObjectRef<SmtpRelay>,
        std::time::Instant,
    >,
) {
    let client = &ctx.client;
    let now = Instant::now();
    let state = relays.state();
    last.retain(|key, _| {
        state
            .iter()
            .any(|r| &ObjectRef::from_obj(r.as_ref()) == key)
    });
    let mut work = Vec::new();
    for relay in state {
        let key = ObjectRef::from_obj(relay.as_ref());
        let running = running_pods(&relay, pods);
        let has_queue = relay.status.as_ref().is_some_and(|s| s.queue.is_some());
        if due(last.get(&key).copied(), has_queue, !running.is_empty(), now) {
            last.insert(key, now);
            work.push((relay, running));
        }
    }
    futures::stream::iter(work)
        .map(|(relay, running): (std::sync::Arc<SmtpRelay>, _)| async move {
            // Each scrape waits for its permit: a relay with many replicas holds no more.
            let reports = futures::future::join_all(running.iter().map(|pod| async move {
                (pod.name_any(), scrape(pod).await)
            }))
            .await;
            (relay, reports)
        })
        .buffer_unordered(SCRAPES_AT_ONCE)
        .for_each_concurrent(SCRAPES_AT_ONCE, |(relay, reports)| async move {
            let queue = summarize(&reports);
            let before = relay.status.as_ref().and_then(|s| s.queue.as_ref());
            if before == queue.as_ref() {
                return;
            }
            for event in [
                token_event(before, queue.as_ref()),
                spool_event(before, queue.as_ref()),
            ]
            .into_iter()
            .flatten()
            {
                ctx.publish_or_log(&event, &relay).await;
            }
            if let Err(e) = patch_queue(client, &relay, queue.as_ref()).await {
                warn!(relay = %relay.name_any(), namespace = ?relay.namespace(), error = %e, "cannot write status.queue");
            }
        })
        .await;
}

async fn patch_queue(
    client: &Client,
    relay: &SmtpRelay,
    queue: Option<&QueueStatus>,
) -> crate::floor::error::Result<()> {
    let ns = relay.namespace_checked()?;
    let api: Api<SmtpRelay> = Api::namespaced(client.clone(), &ns);
    let patch = Patch::Merge(queue_patch(queue));
    api.patch_status(&relay.name_any(), &PatchParams::default(), &patch)
        .await?;
    debug!(relay = %relay.name_any(), namespace = %ns, "status.queue written");
    Ok(())
}

/// The merge patch writing `queue`: a field it no longer has is sent as null, as a merge patch
/// keeps whatever it does not mention (the pods' list is replaced whole).
fn queue_patch(queue: Option<&QueueStatus>) -> serde_json::Value {
    let mut value = serde_json::to_value(queue).unwrap_or_default();
    if let Some(fields) = value.as_object_mut() {
        for optional in [
            "oldestMessageTime",
            "lastDeliveryTime",
            "spoolNearlyFull",
            "pods",
        ] {
            fields.entry(optional).or_insert(serde_json::Value::Null);
        }
    }
    serde_json::json!({ "status": { "queue": value } })
}

/// Reads every relay's queue each [`INTERVAL`] (a new one's after [`FIRST_LOOK`]) until
/// `shutdown` resolves.
pub async fn observe(
    ctx: std::sync::Arc<Context>,
    relays: Store<SmtpRelay>,
    pods: Store<Pod>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let shutdown = shutdown.fuse();
    futures::pin_mut!(shutdown);
    let mut ticks = tokio::time::interval(FIRST_LOOK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = HashMap::new();
    loop {
        futures::select! {
            () = shutdown => return,
            _ = ticks.tick().fuse() => {}
        }
        if relays.wait_until_ready().now_or_never().is_none() {
            continue;
        }
        observe_once(&ctx, &relays, &pods, &mut last).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    #[test]
    fn only_the_pods_of_the_relays_statefulset_are_scraped() {
        let relay = crate::fixtures::relay("r1");
        let pod = |name: &str, controller: Option<&str>| Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("mail".into()),
                labels: Some(crate::floor::contract::selector_labels(&relay)),
                owner_references: controller.map(|c| {
                    vec![OwnerReference {
                        kind: "StatefulSet".into(),
                        name: c.into(),
                        controller: Some(true),
                        ..OwnerReference::default()
                    }]
                }),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some("10.0.0.9".into()),
                ..PodStatus::default()
            }),
            ..Pod::default()
        };
        let pods = crate::fixtures::store(vec![
            pod("r1-0", Some("r1")),
            pod("wears-its-labels", None),
            pod("another-0", Some("another")),
        ]);
        let names: Vec<String> = running_pods(&relay, &pods)
            .iter()
            .map(|p| p.name_any())
            .collect();
        assert_eq!(names, ["r1-0"]);
    }

    fn report(
        queued: u64,
        deferred: u64,
        oldest: u64,
        last: u64,
        login: &'static str,
    ) -> QueueReport {
        QueueReport {
            queued,
            deferred,
            oldest_timestamp: oldest,
            last_delivery_timestamp: last,
            relayhost_login: login,
            ..QueueReport::default()
        }
    }

    #[test]
    fn the_summary_says_which_configuration_each_pod_runs_and_what_it_refused() {
        let refusing = QueueReport {
            config_revision: Some("h0".into()),
            config_refused: Some(smtp_relay::metrics::ConfigRefusal {
                revision: "h1".into(),
                error: format!("warning: {}", "x".repeat(1000)),
            }),
            ..QueueReport::default()
        };
        let running = QueueReport {
            config_revision: Some("h1".into()),
            ..QueueReport::default()
        };
        let queue =
            summarize(&[("r1-0".into(), Ok(refusing)), ("r1-1".into(), Ok(running))]).unwrap();
        let (p0, p1) = (&queue.pods[0], &queue.pods[1]);
        assert_eq!(p0.config_revision.as_deref(), Some("h0"));
        let refused = p0.config_refused.as_ref().unwrap();
        assert_eq!(refused.revision, "h1");
        assert!(refused.error.starts_with("warning: x") && refused.error.len() <= REFUSAL_MAX + 3);
        assert_eq!(p1.config_revision.as_deref(), Some("h1"));
        assert_eq!(p1.config_refused, None);
    }

    #[test]
    fn the_summary_adds_the_pods_and_names_the_unreadable() {
        let queue = summarize(&[
            (
                "r-0".into(),
                Ok(report(3, 2, 1_800_000_100, 1_800_000_500, "accepted")),
            ),
            (
                "r-1".into(),
                Ok(report(4, 4, 1_800_000_050, 1_800_000_400, "unknown")),
            ),
            ("r-2".into(), Err("no answer in 3s".into())),
        ])
        .expect("pods ran");
        assert_eq!((queue.messages, queue.deferred), (7, 6));
        assert_eq!(queue.oldest_message_time, time(1_800_000_050));
        assert_eq!(queue.last_delivery_time, time(1_800_000_500));
        assert_eq!(queue.relayhost_login, "Accepted");
        assert_eq!(queue.pods[2].unreadable.as_deref(), Some("no answer in 3s"));
        let yaml = serde_json::to_value(&queue).unwrap();
        assert_eq!(yaml["oldestMessageTime"], "2027-01-15T08:00:50Z");
        assert_eq!(yaml["pods"][0]["relayhostLogin"], "Accepted");
    }

    #[test]
    fn one_refused_login_is_the_answer_and_empty_queues_have_no_times() {
        let queue = summarize(&[
            ("r-0".into(), Ok(report(0, 0, 0, 1_800_000_500, "accepted"))),
            ("r-1".into(), Ok(report(0, 0, 0, 0, "refused"))),
        ])
        .unwrap();
        assert_eq!(queue.relayhost_login, "Refused");
        assert_eq!(queue.oldest_message_time, None);
        assert_eq!(queue.pods[1].last_delivery_time, None);
        assert_eq!(summarize(&[]), None);
    }

    #[test]
    fn a_patch_removes_what_the_queue_no_longer_has() {
        let emptied = summarize(&[("r-0".into(), Ok(report(0, 0, 0, 1_800_000_500, "unknown")))]);
        let patch = queue_patch(emptied.as_ref());
        let queue = &patch["status"]["queue"];
        assert_eq!(queue["messages"], 0);
        assert!(queue["oldestMessageTime"].is_null(), "{patch}");
        assert_eq!(queue["lastDeliveryTime"], "2027-01-15T08:08:20Z");
        assert!(queue.as_object().unwrap().contains_key("oldestMessageTime"));
        // No pod runs: the whole queue goes.
        assert_eq!(
            queue_patch(None),
            serde_json::json!({"status": {"queue": null}})
        );
    }

    #[test]
    fn token_health_is_the_worst_replica_and_its_changes_are_events() {
        let with_token = |expiry: u64, failures: u64, error: Option<&str>| QueueReport {
            oauth2_expiry_timestamp: expiry,
            oauth2_failures: failures,
            oauth2_last_error: error.map(str::to_string),
            ..report(0, 0, 0, 0, "accepted")
        };
        let healthy = summarize(&[
            ("r-0".into(), Ok(with_token(1_800_003_600, 0, None))),
            ("r-1".into(), Ok(with_token(1_800_003_000, 0, None))),
        ]);
        let token = healthy.as_ref().unwrap().relayhost_token.clone().unwrap();
        assert_eq!(token.expires_time, time(1_800_003_000));
        assert_eq!(token.failures_in_a_row, 0);
        let failing = summarize(&[
            ("r-0".into(), Ok(with_token(1_800_003_600, 0, None))),
            (
                "r-1".into(),
                Ok(with_token(1_800_003_000, 3, Some("invalid_client"))),
            ),
        ]);
        let token = failing.as_ref().unwrap().relayhost_token.clone().unwrap();
        assert_eq!(
            (token.failures_in_a_row, token.last_error.as_deref()),
            (3, Some("invalid_client"))
        );

        let warning = token_event(healthy.as_ref(), failing.as_ref()).expect("an Event");
        assert_eq!(warning.reason, "RelayhostTokenFailing");
        assert!(warning.note.unwrap().contains("invalid_client"));
        assert!(token_event(failing.as_ref(), failing.as_ref()).is_none());
        let back = token_event(failing.as_ref(), healthy.as_ref()).expect("an Event");
        assert_eq!(back.reason, "RelayhostTokenRefreshed");
        // Without OAuth2 there is no token to speak of.
        let plain = summarize(&[("r-0".into(), Ok(report(0, 0, 0, 0, "accepted")))]);
        assert_eq!(plain.unwrap().relayhost_token, None);
    }

    /// Issue 40: the spool's room per replica, rounded to MiB, the nearly full ones named at
    /// the top, and an Event when one fills up and when all have room again.
    #[test]
    fn a_nearly_full_spool_is_named_in_status_and_an_event() {
        let spool = |free: u64, full: bool| QueueReport {
            spool_free_bytes: Some(free),
            spool_size_bytes: Some(1_073_741_824 + 12_345),
            spool_nearly_full: full,
            ..report(3, 3, 1_800_000_100, 0, "unknown")
        };
        let roomy = summarize(&[
            ("r-0".into(), Ok(spool(900 * 1_048_576 + 77, false))),
            ("r-1".into(), Ok(report(0, 0, 0, 0, "unknown"))),
        ]);
        let q = roomy.as_ref().unwrap();
        assert!(q.spool_nearly_full.is_empty());
        assert_eq!(q.pods[0].spool_free_bytes, Some(900 * 1_048_576));
        assert_eq!(q.pods[0].spool_size_bytes, Some(1_073_741_824));
        assert_eq!(q.pods[0].spool_nearly_full, Some(false));
        // An older relay image says nothing of its spool.
        assert_eq!(
            (q.pods[1].spool_free_bytes, q.pods[1].spool_nearly_full),
            (None, None)
        );
        let json = serde_json::to_value(q).unwrap();
        assert!(json.get("spoolNearlyFull").is_none(), "{json}");
        assert_eq!(json["pods"][0]["spoolFreeBytes"], 943_718_400);

        let full = summarize(&[
            ("r-0".into(), Ok(spool(40 * 1_048_576, true))),
            ("r-1".into(), Ok(report(0, 0, 0, 0, "unknown"))),
        ]);
        let q = full.as_ref().unwrap();
        assert_eq!(q.spool_nearly_full, ["r-0"]);
        assert_eq!(q.pods[0].spool_nearly_full, Some(true));
        let json = serde_json::to_value(q).unwrap();
        assert_eq!(json["spoolNearlyFull"], serde_json::json!(["r-0"]));
        assert_eq!(json["pods"][0]["spoolNearlyFull"], true);

        let warning = spool_event(roomy.as_ref(), full.as_ref()).expect("an Event");
        assert_eq!(
            (warning.type_, warning.reason.as_str()),
            (EventType::Warning, "SpoolNearlyFull")
        );
        assert!(warning.note.unwrap().contains("r-0"));
        assert!(spool_event(full.as_ref(), full.as_ref()).is_none());
        let back = spool_event(full.as_ref(), roomy.as_ref()).expect("an Event");
        assert_eq!(back.reason, "SpoolSpaceRecovered");
        assert!(spool_event(roomy.as_ref(), roomy.as_ref()).is_none());
        // The patch clears the list once every spool has room.
        let patch = queue_patch(roomy.as_ref());
        assert!(
            patch["status"]["queue"]["spoolNearlyFull"].is_null(),
            "{patch}"
        );
        assert!(patch["status"]["queue"]
            .as_object()
            .unwrap()
            .contains_key("spoolNearlyFull"));
    }

    #[test]
    fn a_new_relay_is_read_at_once_then_every_interval() {
        let now = Instant::now();
        let ago = |secs| Some(now - Duration::from_secs(secs));
        // No queue in status yet: read as soon as a pod runs, whenever it was read last.
        assert!(due(ago(1), false, true, now));
        assert!(!due(None, false, false, now));
        // With a queue: every INTERVAL, and once after the operator starts.
        assert!(due(None, true, true, now));
        assert!(!due(ago(10), true, true, now));
        assert!(due(ago(30), true, true, now));
        // Its pods gone: read once more, to clear the queue.
        assert!(due(ago(30), true, false, now));
    }

    #[test]
    fn an_idle_relay_says_the_same_twice() {
        // Timestamps, not ages: nothing moves while nothing happens, so nothing is written.
        let idle = || summarize(&[("r-0".into(), Ok(report(0, 0, 0, 1_800_000_500, "accepted")))]);
        assert_eq!(idle(), idle());
    }
}
