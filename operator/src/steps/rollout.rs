//! The progressive rollout: a new configuration reaches one pod first.
//!
//! A pod applies `relay.yaml` only when the ConfigMap's revision is its own template's config
//! hash (the relay image's revision gating), so a new configuration reaches a replica only
//! when the StatefulSet replaces it. This step sets the StatefulSet's partition so that the
//! rolling update replaces the canary (the highest ordinal, the first a rolling update takes)
//! and stops there until the canary runs the new configuration, is Ready, and says on its
//! metrics page that Postfix passed the self-check with it (a real SMTP session against the
//! new smtpd). Then the partition opens and the other replicas follow one at a time.
//!
//! A canary that refuses the configuration runs its last good one and says why; the partition
//! stays, so the other replicas never see the bad configuration, and status names the spec
//! field and Postfix's own error line. Fixing or reverting the spec moves the canary on.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use smtp_relay::metrics::QueueReport;
use tracing::debug;

use crate::floor::contract::CONFIG_HASH_ANNOTATION;
use crate::floor::crd::{config_refusals, PodQueueStatus, SmtpRelay, SmtpRelaySpec};
use crate::floor::running::{ordinal, pod_ready, truncate, Canary, Refusal, REFUSAL_MAX};
use crate::floor::verdict::Desired;
use crate::steps::build::statefulset::rolling_update;

/// How soon a reconcile looks again while the canary proves a configuration.
pub const REQUEUE: Duration = Duration::from_secs(5);

/// What a pod says of its configuration on its metrics page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Said {
    /// The configuration it runs, when the image tells (an image from before the progressive
    /// rollout does not: its readiness is all there is to go on).
    pub running: Option<String>,
    /// The configuration it refused, and Postfix's words.
    pub refused: Option<(String, String)>,
}

impl Said {
    pub fn from_report(report: &QueueReport) -> Said {
        Said {
            running: report.config_revision.clone(),
            refused: report
                .config_refused
                .as_ref()
                .map(|r| (r.revision.clone(), r.error.clone())),
        }
    }
}

/// The canary as seen: its name, its template's config hash, readiness, and (when read) what
/// it said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub pod: String,
    pub revision: Option<String>,
    pub ready: bool,
    pub said: Option<Said>,
}

/// The decision: the partition, and where the canary stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub partition: i32,
    pub canary: Canary,
}

/// Whether the canary must be read: it runs the desired configuration, which is not proven
/// yet or not yet on every replica, and it is Ready (a pod that is not has nothing to say
/// yet: its metrics page comes up with Postfix; one that cannot start is `pod_problem`'s).
pub fn must_read(
    desired: &str,
    canary: Option<&Seen>,
    others_behind: bool,
    proven: Option<&str>,
) -> bool {
    canary.is_some_and(|c| c.ready && c.revision.as_deref() == Some(desired))
        && (others_behind || proven != Some(desired))
}

/// Decides the partition. `replicas` the StatefulSet is to have; `others_behind`: a replica
/// below the canary runs another configuration; `proven`: the configuration last proven
/// (`status.provenConfigHash`).
pub fn decide(
    spec: &SmtpRelaySpec,
    desired: &str,
    replicas: i32,
    canary: Option<&Seen>,
    others_behind: bool,
    proven: Option<&str>,
) -> Decision {
    let open = |canary| Decision {
        partition: 0,
        canary,
    };
    let canary_ordinal = replicas - 1;
    if canary_ordinal <= 0 && !others_behind {
        // One replica (or none): nothing to hold back; the pod itself keeps its last good
        // configuration when it refuses a new one, and says so.
        return match canary {
            Some(seen) if seen.revision.as_deref() == Some(desired) => {
                open(judge(spec, desired, seen, proven, others_behind))
            }
            Some(seen) => open(Canary::Proving {
                pod: seen.pod.clone(),
                revision: desired.into(),
            }),
            None => open(Canary::Settled),
        };
    }
    let hold = |canary| Decision {
        partition: canary_ordinal.max(0),
        canary,
    };
    match canary {
        Some(seen) if seen.revision.as_deref() == Some(desired) => {
            match judge(spec, desired, seen, proven, others_behind) {
                c @ (Canary::Proven { .. } | Canary::Settled) => open(c),
                c => hold(c),
            }
        }
        // The StatefulSet has yet to replace the canary: hold the others meanwhile.
        Some(seen) => hold(Canary::Proving {
            pod: seen.pod.clone(),
            revision: desired.into(),
        }),
        None if others_behind => hold(Canary::Proving {
            pod: String::new(),
            revision: desired.into(),
        }),
        None => open(Canary::Settled),
    }
}

/// Where a canary that runs the desired template stands, from what it said.
fn judge(
    spec: &SmtpRelaySpec,
    desired: &str,
    seen: &Seen,
    proven: Option<&str>,
    others_behind: bool,
) -> Canary {
    let pod = seen.pod.clone();
    let revision = desired.to_string();
    if proven == Some(desired) && !others_behind {
        return Canary::Settled;
    }
    match &seen.said {
        Some(Said {
            refused: Some((refused, error)),
            running,
        }) if refused == desired => Canary::Refused(Refusal {
            pod,
            revision,
            running: running.clone(),
            error: truncate(error, REFUSAL_MAX),
            suspects: suspects(spec, error),
            canary: true,
        }),
        Some(Said {
            running: Some(running),
            ..
        }) if running == desired && seen.ready => Canary::Proven { pod, revision },
        // An image that does not say which configuration it runs: Ready is its proof.
        Some(Said {
            running: None,
            refused: None,
        }) if seen.ready => Canary::Proven { pod, revision },
        _ => Canary::Proving { pod, revision },
    }
}

/// The spec fields Postfix's error points at: a `postconf` entry whose name, or a word of
/// whose value, the error quotes; a `customRestrictions` entry it quotes.
pub fn suspects(spec: &SmtpRelaySpec, error: &str) -> Vec<String> {
    let quoted = |word: &str| word.len() >= 4 && error.contains(word);
    let mut out: Vec<String> = spec
        .postconf
        .iter()
        .filter(|(name, value)| {
            quoted(name)
                || value
                    .split(|c: char| c.is_whitespace() || c == ',')
                    .any(quoted)
        })
        .map(|(name, _)| format!("spec.postconf.{name}"))
        .collect();
    for (i, r) in spec.custom_restrictions.iter().flatten().enumerate() {
        if r.split_whitespace().any(quoted) {
            out.push(format!("spec.customRestrictions[{i}]"));
        }
    }
    out
}

/// A replica that refused the desired configuration although the canary proved it (something
/// of its own: its node, its volume), as the queue observer last read it
/// ([`crate::floor::crd::config_refusals`]): it keeps serving its last good configuration,
/// and status names it (its error already bounded by the observer). `current`: the names of
/// the replicas that are to stay.
pub fn later_refusal(
    spec: &SmtpRelaySpec,
    desired: &str,
    refusals: &[&PodQueueStatus],
    current: &[String],
) -> Option<Refusal> {
    refusals.iter().find_map(|status| {
        let refused = status.config_refused.as_ref()?;
        (refused.revision == desired && current.contains(&status.pod)).then(|| Refusal {
            pod: status.pod.clone(),
            revision: desired.to_string(),
            running: status.config_revision.clone(),
            error: refused.error.clone(),
            suspects: suspects(spec, &refused.error),
            canary: false,
        })
    })
}

fn revision(pod: &Pod) -> Option<String> {
    pod.annotations().get(CONFIG_HASH_ANNOTATION).cloned()
}

/// The step: reads the canary when it must, and sets the partition of the desired
/// StatefulSet. With no StatefulSet yet, every pod starts on the desired configuration.
pub async fn step(
    relay: &SmtpRelay,
    live: Option<&StatefulSet>,
    pods: &[Pod],
    desired: &mut Desired,
    config_hash: &str,
) -> Canary {
    if live.is_none() {
        return Canary::Settled;
    }
    let name = relay.name_any();
    let replicas = relay.spec.replicas;
    let current: Vec<(i32, &Pod)> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| ordinal(&name, &p.name_any()).map(|o| (o, p)))
        .filter(|(o, _)| *o < replicas)
        .collect();
    let canary_pod = current
        .iter()
        .find(|(o, _)| *o == replicas - 1)
        .map(|(_, p)| *p);
    let others_behind = pods
        .iter()
        .filter_map(|p| ordinal(&name, &p.name_any()).map(|o| (o, p)))
        .any(|(o, p)| o < replicas - 1 && revision(p).as_deref() != Some(config_hash));
    let proven = relay
        .status
        .as_ref()
        .and_then(|s| s.proven_config_hash.as_deref());
    let mut seen = canary_pod.map(|p| Seen {
        pod: p.name_any(),
        revision: revision(p),
        ready: pod_ready(p),
        said: None,
    });
    if let (Some(s), Some(pod)) = (seen.as_mut(), canary_pod) {
        if must_read(config_hash, Some(s), others_behind, proven) {
            s.said = crate::observe::scrape::scrape(pod)
                .await
                .inspect_err(
                    |why| debug!(pod = %s.pod, %why, "cannot read the canary's self-check yet"),
                )
                .ok()
                .map(|r| Said::from_report(&r));
        }
    }
    let decision = decide(
        &relay.spec,
        config_hash,
        replicas,
        seen.as_ref(),
        others_behind,
        proven,
    );
    if let Some(spec) = desired.stateful_set.spec.as_mut() {
        spec.update_strategy = Some(rolling_update(decision.partition));
    }
    match decision.canary {
        c @ (Canary::Settled | Canary::Proven { .. }) => {
            let names: Vec<String> = current.iter().map(|(_, p)| p.name_any()).collect();
            later_refusal(&relay.spec, config_hash, &config_refusals(relay), &names)
                .map_or(c, Canary::Refused)
        }
        c => c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::relay;

    fn seen(revision: &str, ready: bool, said: Option<Said>) -> Seen {
        Seen {
            pod: "r-2".into(),
            revision: Some(revision.into()),
            ready,
            said,
        }
    }

    fn runs(revision: &str) -> Option<Said> {
        Some(Said {
            running: Some(revision.into()),
            refused: None,
        })
    }

    fn spec() -> SmtpRelaySpec {
        let mut r = relay("r");
        r.spec.replicas = 3;
        r.spec
            .postconf
            .insert("transport_maps".into(), "hash:/etc/postfix/missing".into());
        r.spec.postconf.insert("smtpd_timeout".into(), "30s".into());
        r.spec
    }

    #[test]
    fn a_later_replica_that_refused_the_desired_configuration_is_named() {
        let status = |refused: &str| PodQueueStatus {
            pod: "r-0".into(),
            config_revision: Some("h0".into()),
            config_refused: Some(crate::floor::crd::PodConfigRefused {
                revision: refused.into(),
                error:
                    "RCPT TO answered 451 4.3.5; warning: hash:/etc/postfix/missing is unavailable"
                        .into(),
            }),
            ..PodQueueStatus::default()
        };
        let current = vec!["r-0".to_string(), "r-1".to_string(), "r-2".to_string()];
        let refusing = status("h1");
        let found = later_refusal(&spec(), "h1", &[&refusing], &current).unwrap();
        assert_eq!(
            (
                found.pod.as_str(),
                found.revision.as_str(),
                found.running.as_deref()
            ),
            ("r-0", "h1", Some("h0"))
        );
        assert!(!found.canary);
        assert_eq!(found.suspects, ["spec.postconf.transport_maps"]);
        // A refusal of another configuration (an older one, since reverted) is no news.
        let older = status("h9");
        assert_eq!(later_refusal(&spec(), "h1", &[&older], &current), None);
        // Nor is one of a pod that is gone (a scale-down) or on its way out.
        assert_eq!(
            later_refusal(&spec(), "h1", &[&refusing], &current[1..]),
            None
        );
    }

    #[test]
    fn the_others_wait_until_the_canary_runs_the_new_configuration_and_passed() {
        let s = spec();
        // The StatefulSet has not replaced the canary yet.
        let d = decide(
            &s,
            "new",
            3,
            Some(&seen("old", true, None)),
            true,
            Some("old"),
        );
        assert_eq!(d.partition, 2);
        assert!(d.canary.waiting());
        // Replaced, not ready or not reported yet.
        for canary in [
            seen("new", false, runs("new")),
            seen("new", true, None),
            seen("new", true, runs("old")),
        ] {
            let d = decide(&s, "new", 3, Some(&canary), true, Some("old"));
            assert_eq!(d.partition, 2, "{canary:?}");
            assert!(d.canary.waiting());
        }
        // Ready and passed: the others follow.
        let d = decide(
            &s,
            "new",
            3,
            Some(&seen("new", true, runs("new"))),
            true,
            Some("old"),
        );
        assert_eq!(d.partition, 0);
        assert_eq!(d.canary.proven(), Some("new"));
    }

    #[test]
    fn a_refused_configuration_holds_the_others_and_names_the_field() {
        let s = spec();
        let said = Some(Said {
            running: Some("old".into()),
            refused: Some((
                "new".into(),
                "RCPT TO answered 451 4.3.0 Temporary lookup failure; postfix/trivial-rewrite: warning: hash:/etc/postfix/missing is unavailable. open database /etc/postfix/missing.db: No such file or directory".into(),
            )),
        });
        let d = decide(
            &s,
            "new",
            3,
            Some(&seen("new", true, said)),
            true,
            Some("old"),
        );
        assert_eq!(d.partition, 2);
        let Canary::Refused(r) = d.canary else {
            panic!("{:?}", d.canary)
        };
        assert_eq!(r.suspects, ["spec.postconf.transport_maps"]);
        assert_eq!(r.running.as_deref(), Some("old"));
        assert!(r.error.contains("is unavailable"));
        // A refusal of an older configuration is history, not this rollout's.
        let said = Some(Said {
            running: Some("new".into()),
            refused: Some(("older".into(), "x".into())),
        });
        let d = decide(
            &s,
            "new",
            3,
            Some(&seen("new", true, said)),
            true,
            Some("old"),
        );
        assert_eq!(d.partition, 0);
    }

    #[test]
    fn one_replica_is_never_held_and_still_reports_a_refusal() {
        let s = spec();
        let said = Some(Said {
            running: Some("old".into()),
            refused: Some(("new".into(), "bad".into())),
        });
        let d = decide(
            &s,
            "new",
            1,
            Some(&seen("new", true, said)),
            false,
            Some("old"),
        );
        assert_eq!(d.partition, 0);
        assert!(matches!(d.canary, Canary::Refused(_)));
        let d = decide(
            &s,
            "new",
            1,
            Some(&seen("new", true, runs("new"))),
            false,
            Some("old"),
        );
        assert_eq!(d.canary.proven(), Some("new"));
    }

    #[test]
    fn a_proven_configuration_on_every_replica_is_settled_without_reading_the_canary() {
        let s = spec();
        let canary = seen("new", true, None);
        assert!(!must_read("new", Some(&canary), false, Some("new")));
        assert!(must_read("new", Some(&canary), true, Some("new")));
        assert!(must_read("new", Some(&canary), false, Some("old")));
        assert!(!must_read(
            "new",
            Some(&seen("old", true, None)),
            true,
            Some("old")
        ));
        let d = decide(&s, "new", 3, Some(&canary), false, Some("new"));
        assert_eq!((d.partition, d.canary), (0, Canary::Settled));
        // No canary pod yet and nobody behind: a new or scaled-up relay.
        assert_eq!(decide(&s, "new", 3, None, false, None).partition, 0);
    }

    #[test]
    fn an_image_that_does_not_tell_its_revision_is_proven_by_readiness() {
        let s = spec();
        let silent = Some(Said::default());
        let d = decide(
            &s,
            "new",
            3,
            Some(&seen("new", true, silent.clone())),
            true,
            None,
        );
        assert_eq!(d.partition, 0);
        let d = decide(&s, "new", 3, Some(&seen("new", false, silent)), true, None);
        assert_eq!(d.partition, 2);
    }

    #[test]
    fn suspects_are_the_fields_the_error_quotes() {
        let s = spec();
        assert_eq!(
            suspects(
                &s,
                "fatal: bad numerical configuration: smtpd_timeout = 5 minutes"
            ),
            ["spec.postconf.smtpd_timeout"]
        );
        assert!(suspects(&s, "connection refused").is_empty());
        let mut s = s;
        s.custom_restrictions = Some(vec![
            "permit_mynetworks".into(),
            "reject_bogus_thing".into(),
        ]);
        assert_eq!(
            suspects(
                &s,
                "warning: unknown smtpd restriction: \"reject_bogus_thing\""
            ),
            ["spec.customRestrictions[1]"]
        );
    }
}
