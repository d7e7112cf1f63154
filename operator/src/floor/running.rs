//! What runs: the rollout read from the StatefulSet and its pods, what keeps a pod from
//! running, and the drain of replicas being scaled away.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use smtp_relay::metrics::QueueReport;

use crate::floor::contract::{ABANDON_ANNOTATION, SPOOL_VOLUME};

/// Rollout facts read from the StatefulSet and its pods.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rollout {
    pub exists: bool,
    pub replicas: i32,
    pub ready_replicas: i32,
    pub up_to_date: bool,
    /// What keeps a pod from running, if anything (see [`pod_problem`]).
    pub problem: Option<PodProblem>,
    /// Replicas being scaled away and what they still hold.
    pub drain: Drain,
    /// A new configuration on its first pod, before the other replicas take it.
    pub canary: Canary,
    /// The running template's pods share the node's users (it does not set `hostUsers:
    /// false`).
    pub pods_share_node_users: bool,
}

/// A new configuration reaches one pod first, the canary (the highest ordinal, which the
/// StatefulSet's rolling update replaces first); the StatefulSet's partition keeps the other
/// replicas on the configuration they run until the canary has shown, by Postfix's own
/// self-check in the pod, that the new one works (`steps::rollout`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Canary {
    /// No new configuration on its way: every pod runs the proven one.
    #[default]
    Settled,
    /// The canary does not run the new configuration yet, or has not reported its
    /// self-check.
    Proving { pod: String, revision: String },
    /// The canary runs the new configuration and passed its self-check: the other replicas
    /// follow, one at a time.
    Proven { pod: String, revision: String },
    /// The canary's Postfix refused the new configuration; it runs the last good one, and
    /// the other replicas keep theirs.
    Refused(Refusal),
}

/// Longest Postfix error kept from a pod's report of a refusal (status and Events).
pub const REFUSAL_MAX: usize = 400;

/// A configuration a pod's self-check refused, in Postfix's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub pod: String,
    /// The refused configuration's hash.
    pub revision: String,
    /// What the pod runs instead (its last good configuration), when it said.
    pub running: Option<String>,
    /// The SMTP reply and Postfix's log line, as the pod reported them.
    pub error: String,
    /// The spec fields the error points at (`spec.postconf.<name>`), when it names one.
    pub suspects: Vec<String>,
    /// Refused by the canary, so the other replicas are held back; `false`: by a later
    /// replica, after the canary proved the configuration and the others took it.
    pub canary: bool,
}

impl Canary {
    /// The configuration the canary proved, if it just did.
    pub fn proven(&self) -> Option<&str> {
        match self {
            Canary::Proven { revision, .. } => Some(revision),
            _ => None,
        }
    }

    /// Whether the rollout waits on the canary (the reconcile looks again soon).
    pub fn waiting(&self) -> bool {
        matches!(self, Canary::Proving { .. })
    }
}

/// What keeps a relay pod from running, read from its container statuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodProblem {
    /// The kubelet's reason: `CrashLoopBackOff`, `ImagePullBackOff`, `OOMKilled`, ...
    pub reason: String,
    /// The pod, the container, the kubelet's message, and how the last run ended (with the
    /// start of the relay's own termination message: it writes its fatal errors there).
    pub message: String,
    /// True when the pod will not get better without a change (kstatus `Stalled`).
    pub stalled: bool,
}

/// Waiting reasons of a container that will not start without a change.
const STALLED_REASONS: [&str; 8] = [
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// Longest termination message kept in a condition.
const TERMINATION_MESSAGE_MAX: usize = 400;

/// The latest Warning Event of a pod that does not start (see [`not_starting`]): the kubelet's
/// reason (`FailedMount`, `FailedCreatePodSandBox`, `FailedAttachVolume`) and words, which are
/// only there: the pod's status says `ContainerCreating` and nothing more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodWarning {
    pub pod: String,
    pub reason: String,
    pub message: String,
}

/// How long a scheduled pod may take to start its containers before its Events are read: a
/// volume to attach and an image to pull take a while; a mount or a sandbox that fails is
/// retried by the kubelet for ever.
pub const NOT_STARTING_AFTER_SECONDS: i64 = 30;

/// The pods (by name) that were scheduled more than [`NOT_STARTING_AFTER_SECONDS`] before `now`
/// (Unix seconds) and have no container that ever started: stuck where only their Events say
/// why. At most [`NOT_STARTING_READ_MAX`], so a large relay that cannot start costs a few
/// requests, not one per pod.
pub fn not_starting(pods: &[Pod], now: i64) -> Vec<String> {
    let mut names = unstarted(pods, now, NOT_STARTING_AFTER_SECONDS);
    names.truncate(NOT_STARTING_READ_MAX);
    names
}

/// Whether a scheduled pod has not started any container yet: the relay is looked at again
/// soon (its pod's status may not change again while it fails to start).
pub fn starting(pods: &[Pod], now: i64) -> bool {
    !unstarted(pods, now, -1).is_empty()
}

/// The pods (by name) scheduled more than `after` seconds before `now` whose containers never
/// started.
fn unstarted(pods: &[Pod], now: i64, after: i64) -> Vec<String> {
    let mut names: Vec<String> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            let Some(status) = p.status.as_ref() else {
                return false;
            };
            let scheduled_at = status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "PodScheduled" && c.status == "True")
                .and_then(|c| c.last_transition_time.as_ref())
                .map(|t| t.0.as_second());
            let started = status.container_statuses.iter().flatten().any(|c| {
                c.started == Some(true)
                    || c.restart_count > 0
                    || c.state
                        .as_ref()
                        .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
            });
            status.phase.as_deref() == Some("Pending")
                && !started
                && scheduled_at.is_some_and(|at| now - at > after)
        })
        .map(|p| p.name_any())
        .collect();
    names.sort();
    names
}

/// The most pods whose Events one reconcile reads.
pub const NOT_STARTING_READ_MAX: usize = 3;

/// The first problem of the first troubled pod (by name): a pod the scheduler cannot place
/// (its words: which nodes, and why not), a container waiting for a reason in
/// `STALLED_REASONS`, one that just terminated with a failure, or a pod that does not start,
/// with its latest Warning Event (`warnings`).
pub fn pod_problem(pods: &[Pod], warnings: &[PodWarning]) -> Option<PodProblem> {
    // A pod being deleted (a rollout, a scale-down) ends as it ends: not a problem to report.
    let mut pods: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    pods.sort_by_key(|p| p.name_any());
    pods.into_iter().find_map(|pod| {
        let status = pod.status.as_ref()?;
        if let Some(unscheduled) = unschedulable(pod) {
            return Some(unscheduled);
        }
        if let Some(w) = warnings.iter().find(|w| w.pod == pod.name_any()) {
            return Some(PodProblem {
                reason: w.reason.clone(),
                message: format!(
                    "pod {} does not start: {} ({})",
                    w.pod,
                    w.reason,
                    truncate(&w.message, TERMINATION_MESSAGE_MAX)
                ),
                stalled: false,
            });
        }
        let containers = status
            .init_container_statuses
            .iter()
            .flatten()
            .chain(status.container_statuses.iter().flatten());
        containers.into_iter().find_map(|c| {
            let state = c.state.as_ref()?;
            let last = c
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .or(state.terminated.as_ref());
            let ended = last.map(|t| {
                let mut text = format!(
                    "; last run ended: {} (exit code {})",
                    t.reason.as_deref().unwrap_or("terminated"),
                    t.exit_code
                );
                if let Some(m) = relay_message(t) {
                    text += &format!(": {}", truncate(m, TERMINATION_MESSAGE_MAX));
                }
                text
            });
            let (reason, detail, stalled) = if let Some(w) = &state.waiting {
                let reason = w.reason.clone().unwrap_or_default();
                if !STALLED_REASONS.contains(&reason.as_str()) {
                    return None;
                }
                (reason, w.message.clone(), true)
            } else {
                let t = state.terminated.as_ref().filter(|t| t.exit_code != 0)?;
                let reason = t.reason.clone().unwrap_or_else(|| "Error".into());
                (reason, None, false)
            };
            let mut message = format!("pod {}, container {}: {reason}", pod.name_any(), c.name);
            if let Some(d) = detail.filter(|d| !d.is_empty()) {
                message += &format!(" ({d})");
            }
            message += &ended.unwrap_or_default();
            Some(PodProblem {
                reason,
                message,
                stalled,
            })
        })
    })
}

/// A pod the scheduler could not place (`PodScheduled=False`): its reason (`Unschedulable`,
/// `SchedulingGated`) and message, which name the nodes and why none fits (resources, node
/// selector or affinity, taints, a volume claim that cannot bind). Not stalled: a node may
/// come, or a claim bind.
fn unschedulable(pod: &Pod) -> Option<PodProblem> {
    let condition = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
    let reason = condition
        .reason
        .clone()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "Unschedulable".into());
    let mut message = format!("pod {}: not scheduled: {reason}", pod.name_any());
    if let Some(m) = condition.message.as_deref().filter(|m| !m.is_empty()) {
        message += &format!(" ({})", truncate(m, TERMINATION_MESSAGE_MAX));
    }
    Some(PodProblem {
        reason,
        message,
        stalled: false,
    })
}

/// The termination message the relay wrote itself. A run it ended (exit code 1 to 127) always
/// leaves its own message; a container killed by a signal (128 and up: OOMKilled, a failed
/// liveness probe) has none, and the kubelet puts the tail of its log there instead, which
/// quotes what clients sent (HELO names, addresses): never shown.
fn relay_message(t: &k8s_openapi::api::core::v1::ContainerStateTerminated) -> Option<&str> {
    (1..128)
        .contains(&t.exit_code)
        .then_some(t.message.as_deref())
        .flatten()
        .map(str::trim)
        .filter(|m| !m.is_empty())
}

/// The first `max` bytes of `s` (on a character boundary), marked as cut when cut: what a
/// message says first is what failed (status conditions, Event notes).
/// The ordinal of `pod` in relay `relay`'s StatefulSet (`<relay>-<n>`); `None` for another's.
pub fn ordinal(relay: &str, pod: &str) -> Option<i32> {
    pod.strip_prefix(relay)?.strip_prefix('-')?.parse().ok()
}

/// Whether the kubelet says `pod` is Ready (its readiness probe: the SMTP probe).
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl Rollout {
    pub fn from_stateful_set(sts: Option<&StatefulSet>, desired_replicas: i32) -> Rollout {
        let Some(sts) = sts else {
            return Rollout::default();
        };
        let st = sts.status.clone().unwrap_or_default();
        let observed = st.observed_generation.unwrap_or(0) >= sts.metadata.generation.unwrap_or(0);
        let revisions_match = match (&st.current_revision, &st.update_revision) {
            (Some(c), Some(u)) => c == u,
            _ => false,
        };
        Rollout {
            exists: true,
            replicas: st.replicas,
            ready_replicas: st.ready_replicas.unwrap_or(0),
            up_to_date: observed
                && revisions_match
                && st.updated_replicas.unwrap_or(0) >= desired_replicas
                && st.replicas == desired_replicas,
            problem: None,
            drain: Drain::None,
            canary: Canary::Settled,
            pods_share_node_users: sts
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .is_none_or(|p| p.host_users != Some(false)),
        }
    }

    /// With the canary of a new configuration.
    pub fn with_canary(self, canary: Canary) -> Rollout {
        Rollout { canary, ..self }
    }

    /// With the drain of replicas being scaled away.
    pub fn with_drain(self, drain: Drain) -> Rollout {
        Rollout { drain, ..self }
    }

    /// With the problem of the relay's pods, if any; `warnings` are the latest Warning Event
    /// of each pod [`not_starting`] named.
    pub fn with_pods(self, pods: &[Pod], warnings: &[PodWarning]) -> Rollout {
        Rollout {
            problem: pod_problem(pods, warnings),
            ..self
        }
    }

    /// Every replica runs the current configuration and is ready.
    pub fn complete(&self, desired: i32) -> bool {
        self.exists && self.up_to_date && self.ready_replicas >= desired
    }
}

/// A departing replica that has delivered nothing for this long while mail waits is stuck (the
/// relayhost refuses the mail or is down).
pub const STUCK_AFTER_SECONDS: u64 = 60;

/// A replica being scaled away, as last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Departing {
    pub pod: String,
    /// Still in the Service (its readiness probe has not failed yet).
    pub ready: bool,
    /// What its metrics say; `None` when the pod does not run or cannot be reached.
    pub queue: Option<QueueReport>,
}

impl Departing {
    /// Out of the Service, asked to drain, and nothing left on its spool.
    pub(crate) fn drained(&self) -> bool {
        !self.ready
            && self
                .queue
                .as_ref()
                .is_some_and(|q| q.draining && q.queued == 0)
    }

    pub(crate) fn describe(&self) -> String {
        match &self.queue {
            None => format!("{} (not running: its queue cannot be read)", self.pod),
            Some(q) if q.queued == 0 && self.ready => {
                format!("{} (empty, leaving the Service)", self.pod)
            }
            Some(q) if q.queued == 0 => format!("{} (empty)", self.pod),
            Some(q) => {
                let mut parts = vec![format!("{} queued", q.queued)];
                if q.deferred > 0 {
                    parts.push(format!("{} deferred by the relayhost", q.deferred));
                }
                if q.hold > 0 {
                    parts.push(format!("{} on hold", q.hold));
                }
                parts.push(format!("oldest {}", age(q.oldest_seconds)));
                // The StatefulSet names each claim <template>-<pod>.
                format!(
                    "{} ({}, on volume {SPOOL_VOLUME}-{})",
                    self.pod,
                    parts.join(", "),
                    self.pod
                )
            }
        }
    }

    /// Nothing will move without a change: the pod does not run, all it holds is on hold, or
    /// it has delivered nothing for [`STUCK_AFTER_SECONDS`] (the relayhost refuses or is down).
    pub(crate) fn stuck(&self) -> bool {
        match &self.queue {
            None => true,
            Some(q) => {
                q.queued > 0
                    && (q.hold >= q.queued || q.seconds_since_delivery >= STUCK_AFTER_SECONDS)
            }
        }
    }
}

/// What the drain step decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Drain {
    /// Nothing is being scaled away.
    #[default]
    None,
    /// Replicas `want..hold` are draining; the StatefulSet keeps `hold` replicas meanwhile.
    InProgress {
        want: i32,
        hold: i32,
        departing: Vec<Departing>,
    },
    /// The replicas drained (or the drain was abandoned): the StatefulSet goes from `from` to
    /// `to` replicas now.
    Done {
        from: i32,
        to: i32,
        /// What was still queued when a user gave up.
        abandoned: Option<String>,
    },
}

impl Drain {
    /// `(draining, reason, message)` of the `Draining` condition; `None` when nothing is being
    /// scaled away.
    pub fn condition(&self) -> Option<(bool, &'static str, String)> {
        match self {
            Drain::None => None,
            Drain::InProgress {
                want,
                hold,
                departing,
            } => {
                let list = departing
                    .iter()
                    .map(Departing::describe)
                    .collect::<Vec<_>>()
                    .join(", ");
                let stuck = departing.iter().any(Departing::stuck);
                let (reason, then) = if stuck {
                    (
                        "DrainWaiting",
                        format!(
                            "; the drain goes on when the relayhost takes the mail and the pods run; to give up, annotate the SmtpRelay {ABANDON_ANNOTATION}=true (a Retain volume keeps what is queued)"
                        ),
                    )
                } else {
                    ("Draining", String::new())
                };
                Some((
                    true,
                    reason,
                    format!(
                        "scaling from {hold} to {want} replicas once the departing ones have delivered their queues: {list}{then}"
                    ),
                ))
            }
            Drain::Done {
                from,
                to,
                abandoned: None,
            } => Some((
                false,
                "Drained",
                format!("the departing replicas delivered their queues; scaled from {from} to {to}"),
            )),
            Drain::Done {
                from,
                to,
                abandoned: Some(held),
            } => Some((
                false,
                "DrainAbandoned",
                format!(
                    "scaled from {from} to {to} without waiting ({ABANDON_ANNOTATION}); still queued then: {held}; remove the annotation so later scale-downs drain again"
                ),
            )),
        }
    }
}

/// A duration for people: seconds, minutes or hours.
fn age(seconds: u64) -> String {
    match seconds {
        0..120 => format!("{seconds}s"),
        120..7200 => format!("{}m", seconds / 60),
        _ => format!("{}h", seconds / 3600),
    }
}
