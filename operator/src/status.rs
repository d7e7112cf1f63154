//! Pure status computation: conditions (Kubernetes API conventions), replica counts, endpoint.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use smtp_relay::settings::{self, TlsLevel};

use crate::crd::{SmtpRelay, SmtpRelayStatus};

pub const READY: &str = "Ready";
pub const CONFIG_VALID: &str = "ConfigValid";
pub const SECRETS_RESOLVED: &str = "SecretsResolved";
pub const PROGRESSING: &str = "Progressing";
/// False when the relayhost password may be sent unencrypted (credentials with an explicit TLS
/// level of none or may): accepted, but the user should see it.
pub const RELAYHOST_PASSWORD_PROTECTED: &str = "RelayhostPasswordProtected";

/// What the reconcile did with the spec.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The desired objects were applied (or already matched).
    Applied { config_hash: String },
    /// The spec was rejected; nothing was changed.
    InvalidSpec { message: String },
    /// A referenced object is missing or malformed; nothing was changed.
    Unresolved {
        reason: &'static str,
        message: String,
    },
    /// An object this relay does not control stands under a child's name; nothing was changed.
    NameConflict { message: String },
}

impl Outcome {
    fn rejection(&self) -> Option<(&str, &str)> {
        match self {
            Outcome::Applied { .. } => None,
            Outcome::InvalidSpec { message } => Some(("InvalidSpec", message)),
            Outcome::Unresolved { reason, message } => Some((reason, message)),
            Outcome::NameConflict { message } => Some(("NameConflict", message)),
        }
    }
}

/// Rollout facts read from the StatefulSet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rollout {
    pub exists: bool,
    pub replicas: i32,
    pub ready_replicas: i32,
    pub up_to_date: bool,
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
        }
    }
}

pub fn endpoint(relay: &SmtpRelay) -> String {
    format!(
        "{}.{}.svc:{}",
        relay.name_any(),
        relay.namespace().unwrap_or_default(),
        relay.spec.service.port
    )
}

fn condition(
    type_: &str,
    ok: Option<bool>,
    reason: &str,
    message: String,
    gen: Option<i64>,
    now: &Time,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: match ok {
            Some(true) => "True",
            Some(false) => "False",
            None => "Unknown",
        }
        .into(),
        reason: reason.into(),
        message,
        last_transition_time: now.clone(),
        observed_generation: gen,
    }
}

/// Whether the relayhost password can only travel inside TLS; the rule is the relay image's.
fn relayhost_password_condition(relay: &SmtpRelay, gen: Option<i64>, now: &Time) -> Condition {
    let rh = &relay.spec.relayhost;
    let explicit = rh.tls.as_ref().and_then(|t| t.level).map(TlsLevel::from);
    let credentials = rh.credentials_secret_ref.is_some();
    let level = settings::relayhost_tls(explicit, credentials);
    let (ok, reason, message) = if !credentials {
        (
            true,
            "NoCredentials",
            "no relayhost credentials are configured".to_string(),
        )
    } else if settings::relayhost_password_in_clear(explicit, credentials) {
        (
            false,
            "CleartextAllowed",
            format!(
                "spec.relayhost.tls.level is {level} with credentialsSecretRef: a relayhost that offers no STARTTLS, or anyone on the path, would receive the password; remove the level (the default with credentials is encrypt) or set encrypt or stronger"
            ),
        )
    } else {
        (
            true,
            "TLSRequired",
            format!("the relayhost password is only sent inside TLS (level {level})"),
        )
    };
    condition(
        RELAYHOST_PASSWORD_PROTECTED,
        Some(ok),
        reason,
        message,
        gen,
        now,
    )
}

/// The status after a reconcile. `lastTransitionTime` is kept when a condition's status did not
/// change; `configHash` keeps describing what runs when the new spec was rejected.
pub fn compute(
    relay: &SmtpRelay,
    outcome: &Outcome,
    rollout: Rollout,
    now: Time,
) -> SmtpRelayStatus {
    let old = relay.status.clone().unwrap_or_default();
    let gen = relay.metadata.generation;
    let desired = relay.spec.replicas;
    let ep = endpoint(relay);

    let config_valid = match outcome {
        Outcome::InvalidSpec { message } => condition(
            CONFIG_VALID,
            Some(false),
            "InvalidSpec",
            message.clone(),
            gen,
            &now,
        ),
        _ => condition(
            CONFIG_VALID,
            Some(true),
            "Valid",
            "the spec is valid".into(),
            gen,
            &now,
        ),
    };
    let secrets = match outcome {
        Outcome::Applied { .. } | Outcome::NameConflict { .. } => condition(
            SECRETS_RESOLVED,
            Some(true),
            "Resolved",
            "every referenced Secret and ConfigMap key is present and valid".into(),
            gen,
            &now,
        ),
        Outcome::Unresolved { reason, message } => condition(
            SECRETS_RESOLVED,
            Some(false),
            reason,
            message.clone(),
            gen,
            &now,
        ),
        Outcome::InvalidSpec { .. } => condition(
            SECRETS_RESOLVED,
            None,
            "NotChecked",
            "references are not read while the spec is invalid".into(),
            gen,
            &now,
        ),
    };
    let progressing = if !rollout.exists {
        condition(
            PROGRESSING,
            Some(false),
            "NotCreated",
            "the StatefulSet does not exist yet".into(),
            gen,
            &now,
        )
    } else if rollout.up_to_date {
        condition(
            PROGRESSING,
            Some(false),
            "RolloutComplete",
            format!(
                "{} of {desired} pods run the current configuration",
                rollout.replicas
            ),
            gen,
            &now,
        )
    } else {
        condition(
            PROGRESSING,
            Some(true),
            "RollingUpdate",
            format!("rolling out the current configuration to {desired} pods"),
            gen,
            &now,
        )
    };
    let ready = if let Some((reason, message)) = outcome.rejection() {
        let keeps = if rollout.exists {
            " The last applied configuration keeps running."
        } else {
            ""
        };
        condition(
            READY,
            Some(false),
            reason,
            format!("{message}.{keeps}"),
            gen,
            &now,
        )
    } else if !rollout.up_to_date {
        condition(
            READY,
            Some(false),
            "RolloutInProgress",
            format!(
                "{} of {desired} pods ready; rollout in progress",
                rollout.ready_replicas
            ),
            gen,
            &now,
        )
    } else if rollout.ready_replicas < desired {
        condition(
            READY,
            Some(false),
            "PodsNotReady",
            format!(
                "{} of {desired} pods pass the SMTP probe",
                rollout.ready_replicas
            ),
            gen,
            &now,
        )
    } else {
        condition(
            READY,
            Some(true),
            "RelayReady",
            format!("{desired} of {desired} pods ready at {ep}"),
            gen,
            &now,
        )
    };

    let password = relayhost_password_condition(relay, gen, &now);

    let conditions = [ready, config_valid, secrets, progressing, password]
        .into_iter()
        .map(|mut c| {
            if let Some(prev) = old.conditions.iter().find(|p| p.type_ == c.type_) {
                if prev.status == c.status {
                    c.last_transition_time = prev.last_transition_time.clone();
                }
            }
            c
        })
        .collect();

    SmtpRelayStatus {
        conditions,
        observed_generation: gen,
        replicas: rollout.replicas,
        ready_replicas: rollout.ready_replicas,
        endpoint: Some(ep),
        config_hash: match outcome {
            Outcome::Applied { config_hash } => Some(config_hash.clone()),
            _ => old.config_hash,
        },
        // Like the hash: what runs, so a rejected spec does not change it.
        mode: match outcome {
            Outcome::Applied { .. } => Some(relay.spec.mode_in_force()),
            _ => old.mode,
        },
    }
}

/// The Ready condition of a status, if any.
pub fn ready_condition(status: Option<&SmtpRelayStatus>) -> Option<&Condition> {
    status?.conditions.iter().find(|c| c.type_ == READY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures::relay;
    use k8s_openapi::api::apps::v1::StatefulSetStatus;

    fn t(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).expect("time"))
    }

    fn applied() -> Outcome {
        Outcome::Applied {
            config_hash: "h1".into(),
        }
    }

    fn cond<'a>(s: &'a SmtpRelayStatus, type_: &str) -> &'a Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == type_)
            .expect("condition")
    }

    const DONE: Rollout = Rollout {
        exists: true,
        replicas: 1,
        ready_replicas: 1,
        up_to_date: true,
    };

    #[test]
    fn ready_when_rolled_out_and_ready() {
        let r = relay("r1");
        let s = compute(&r, &applied(), DONE, t(100));
        let ready = cond(&s, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "RelayReady")
        );
        assert_eq!(cond(&s, CONFIG_VALID).status, "True");
        assert_eq!(cond(&s, SECRETS_RESOLVED).status, "True");
        assert_eq!(cond(&s, PROGRESSING).status, "False");
        assert_eq!(s.endpoint.as_deref(), Some("r1.mail.svc:25"));
        assert_eq!(s.config_hash.as_deref(), Some("h1"));
        assert_eq!(s.observed_generation, Some(1));
        assert_eq!((s.replicas, s.ready_replicas), (1, 1));
        assert!(s
            .conditions
            .iter()
            .all(|c| c.observed_generation == Some(1)));
    }

    #[test]
    fn not_ready_while_rolling_or_pods_unready() {
        let r = relay("r1");
        let rolling = Rollout {
            up_to_date: false,
            ..DONE
        };
        let s = compute(&r, &applied(), rolling, t(1));
        assert_eq!(cond(&s, READY).reason, "RolloutInProgress");
        assert_eq!(cond(&s, PROGRESSING).status, "True");
        let unready = Rollout {
            ready_replicas: 0,
            ..DONE
        };
        assert_eq!(
            cond(&compute(&r, &applied(), unready, t(1)), READY).reason,
            "PodsNotReady"
        );
        let none = compute(&r, &applied(), Rollout::default(), t(1));
        assert_eq!(cond(&none, PROGRESSING).reason, "NotCreated");
    }

    #[test]
    fn rejection_keeps_last_hash_and_explains() {
        let mut r = relay("r1");
        r.status = Some(compute(&r, &applied(), DONE, t(1)));
        let out = Outcome::Unresolved {
            reason: "SecretNotFound",
            message: "Secret mail/x (SASL users) does not exist".into(),
        };
        let s = compute(&r, &out, DONE, t(2));
        let ready = cond(&s, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "SecretNotFound")
        );
        assert!(ready.message.contains("mail/x") && ready.message.contains("keeps running"));
        assert_eq!(cond(&s, SECRETS_RESOLVED).status, "False");
        assert_eq!(s.config_hash.as_deref(), Some("h1"));

        let invalid = compute(
            &r,
            &Outcome::InvalidSpec {
                message: "spec.domain bad".into(),
            },
            DONE,
            t(2),
        );
        assert_eq!(cond(&invalid, CONFIG_VALID).reason, "InvalidSpec");
        assert_eq!(cond(&invalid, SECRETS_RESOLVED).status, "Unknown");
        assert_eq!(cond(&invalid, READY).reason, "InvalidSpec");
    }

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let mut r = relay("r1");
        r.status = Some(compute(&r, &applied(), DONE, t(1)));
        let same = compute(&r, &applied(), DONE, t(50));
        assert_eq!(
            same,
            r.status.clone().expect("status"),
            "identical input, identical status: no write"
        );
        let out = Outcome::InvalidSpec {
            message: "x".into(),
        };
        let changed = compute(&r, &out, DONE, t(60));
        assert_eq!(cond(&changed, READY).last_transition_time, t(60));
        assert_eq!(cond(&changed, SECRETS_RESOLVED).last_transition_time, t(60));
        assert_eq!(cond(&changed, PROGRESSING).last_transition_time, t(1));
    }

    #[test]
    fn rollout_from_stateful_set() {
        let mut sts = StatefulSet::default();
        sts.metadata.generation = Some(2);
        sts.status = Some(StatefulSetStatus {
            observed_generation: Some(2),
            replicas: 2,
            ready_replicas: Some(2),
            updated_replicas: Some(2),
            current_revision: Some("a".into()),
            update_revision: Some("a".into()),
            ..StatefulSetStatus::default()
        });
        let r = Rollout::from_stateful_set(Some(&sts), 2);
        assert_eq!(
            r,
            Rollout {
                exists: true,
                replicas: 2,
                ready_replicas: 2,
                up_to_date: true
            }
        );
        assert!(!Rollout::from_stateful_set(Some(&sts), 3).up_to_date);
        if let Some(st) = sts.status.as_mut() {
            st.update_revision = Some("b".into());
        }
        assert!(!Rollout::from_stateful_set(Some(&sts), 2).up_to_date);
        sts.metadata.generation = Some(3);
        assert!(!Rollout::from_stateful_set(Some(&sts), 2).up_to_date);
        assert_eq!(Rollout::from_stateful_set(None, 1), Rollout::default());
    }
}
