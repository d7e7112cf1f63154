//! The Events a reconcile publishes: notable transitions only, so a steady failure does not
//! flood the namespace.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::runtime::events::{Event, EventType};

use crate::floor::crd::{find_condition, ready_condition, SmtpRelay, SmtpRelayStatus};
use crate::floor::running::truncate;
use crate::floor::verdict::Outcome;
use crate::steps::report::status;
use smtp_relay::revision;

/// Condition `type_` of `s` when its status is `value`.
fn condition_is<'a>(
    s: Option<&'a SmtpRelayStatus>,
    type_: &str,
    value: &str,
) -> Option<&'a Condition> {
    find_condition(s, type_).filter(|c| c.status == value)
}

/// An Event telling what condition `c` says: its reason, and its message as the note.
fn about(type_: EventType, c: &Condition) -> Event {
    Event {
        type_,
        reason: c.reason.clone(),
        note: Some(truncate(&c.message, 1000)),
        action: "Reconcile".into(),
        secondary: None,
    }
}

/// The Event of a Draining condition whose reason changed from `before`: Normal when a drain
/// starts or ends, Warning when it waits on something or was given up.
pub(crate) fn drain_event(before: Option<&Condition>, c: &Condition) -> Option<Event> {
    if before.map(|o| &o.reason) == Some(&c.reason) {
        return None;
    }
    match c.reason.as_str() {
        "Draining" | "Drained" => Some(about(EventType::Normal, c)),
        "DrainWaiting" | "DrainAbandoned" => Some(about(EventType::Warning, c)),
        _ => None,
    }
}

/// The Event of a Delivering condition that changed: a Warning when mail stops reaching the
/// relayhost or for another reason, a Normal one when it reaches it again.
pub(crate) fn delivery_event(before: Option<&Condition>, c: &Condition) -> Option<Event> {
    let was = before.map(|o| (o.status.as_str(), o.reason.as_str()));
    match (was, c.status.as_str()) {
        (Some(("False", reason)), "False") if reason == c.reason => None,
        (_, "False") => Some(about(EventType::Warning, c)),
        (Some(("False", _)), "True") => Some(Event {
            reason: "DeliveringAgain".into(),
            note: Some("mail reaches the relayhost again".into()),
            ..about(EventType::Normal, c)
        }),
        _ => None,
    }
}

/// Events for notable transitions only, so a steady failure does not flood the namespace.
pub fn events_for(relay: &SmtpRelay, outcome: &Outcome, new: &SmtpRelayStatus) -> Vec<Event> {
    let old_ready = ready_condition(relay.status.as_ref());
    let new_ready = ready_condition(Some(new));
    let mut out = Vec::new();
    // An accepted but risky choice, once when it is made.
    for type_ in status::WARNING_CONDITIONS {
        let before = condition_is(relay.status.as_ref(), type_, "False");
        if let (None, Some(c)) = (before, condition_is(Some(new), type_, "False")) {
            out.push(about(EventType::Warning, c));
        }
    }
    // Mail stopping (why, once per reason) and leaving again: what the pods do, whatever
    // became of the last change of the spec.
    if let Some(c) = find_condition(Some(new), status::DELIVERING) {
        let before = find_condition(relay.status.as_ref(), status::DELIVERING);
        out.extend(delivery_event(before, c));
    }
    match outcome {
        Outcome::InvalidSpec { .. }
        | Outcome::Unresolved { .. }
        | Outcome::NameConflict { .. }
        | Outcome::ApplyRefused { .. } => {
            let changed = old_ready.map(|c| (&c.reason, &c.message))
                != new_ready.map(|c| (&c.reason, &c.message));
            if let (true, Some(c)) = (changed, new_ready) {
                out.push(about(EventType::Warning, c));
            }
        }
        Outcome::Applied { config_hash } => {
            // A pod that cannot run (rejections have their own Event above).
            // A configuration the canary's Postfix refused, once per refusal (its own Event,
            // not Stalled's).
            if let Some(c) = condition_is(Some(new), status::CONFIG_PROVEN, "False") {
                let before = condition_is(relay.status.as_ref(), status::CONFIG_PROVEN, "False");
                if before.map(|o| &o.message) != Some(&c.message) {
                    out.push(about(EventType::Warning, c));
                }
            }
            if let Some(c) = condition_is(Some(new), status::STALLED, "True")
                .filter(|c| c.reason != status::CONFIG_REFUSED)
            {
                let before = condition_is(relay.status.as_ref(), status::STALLED, "True");
                if before.map(|o| &o.reason) != Some(&c.reason) {
                    out.push(about(EventType::Warning, c));
                }
            }
            let old_hash = relay.status.as_ref().and_then(|s| s.config_hash.as_ref());
            if old_hash != Some(config_hash) {
                out.push(Event {
                    type_: EventType::Normal,
                    reason: "ConfigApplied".into(),
                    note: Some(format!(
                        "configuration {} applied",
                        revision::short(config_hash)
                    )),
                    action: "Apply".into(),
                    secondary: None,
                });
            }
            // A drain starting, waiting on the relayhost, done or given up.
            if let Some(c) = find_condition(Some(new), status::DRAINING) {
                let before = find_condition(relay.status.as_ref(), status::DRAINING);
                out.extend(drain_event(before, c));
            }
            let was_ready = old_ready.is_some_and(|c| c.status == "True");
            if let (false, Some(c)) = (was_ready, new_ready) {
                if c.status == "True" {
                    out.push(Event {
                        reason: "Ready".into(),
                        ..about(EventType::Normal, c)
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivering(status: &str, reason: &str) -> Condition {
        Condition {
            type_: status::DELIVERING.into(),
            status: status.into(),
            reason: reason.into(),
            message: format!("{reason} message"),
            observed_generation: None,
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::UNIX_EPOCH,
            ),
        }
    }

    /// Once when mail stops (and when its reason changes), once when it leaves again; a steady
    /// failure publishes nothing more.
    #[test]
    fn delivery_events_on_transitions_only() {
        let down = delivering("False", "RelayhostUnreachable");
        let reasons = |before: Option<&Condition>, now: &Condition| {
            delivery_event(before, now).map(|e| (e.type_ == EventType::Warning, e.reason))
        };
        assert_eq!(
            reasons(Some(&delivering("True", "NothingWaiting")), &down),
            Some((true, "RelayhostUnreachable".into()))
        );
        assert_eq!(
            reasons(None, &down),
            Some((true, "RelayhostUnreachable".into()))
        );
        assert_eq!(reasons(Some(&down), &down), None);
        assert_eq!(
            reasons(Some(&down), &delivering("False", "RelayhostTLSFailed")),
            Some((true, "RelayhostTLSFailed".into()))
        );
        assert_eq!(
            reasons(Some(&down), &delivering("True", "NothingWaiting")),
            Some((false, "DeliveringAgain".into()))
        );
        let fine = delivering("True", "Retrying");
        assert_eq!(
            reasons(Some(&delivering("True", "NothingWaiting")), &fine),
            None
        );
        assert_eq!(reasons(None, &delivering("Unknown", "NotObserved")), None);
    }
}
