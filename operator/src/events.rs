//! The Events a reconcile publishes: notable transitions only, so a steady failure does not
//! flood the namespace.

use kube::runtime::events::{Event, EventType};

use crate::crd::SmtpRelay;
use crate::status::{self, Outcome};

pub(crate) fn truncate(s: &str, max: usize) -> String {
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
