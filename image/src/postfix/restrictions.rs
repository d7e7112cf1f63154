//! What each relay mode means in Postfix terms. This is the only place that knows it.

use crate::error::{ConfigError, ConfigResult};
use crate::settings::{Mode, RelayPolicy};

/// `smtpd_relay_restrictions` for a mode, exactly as the original image set it.
pub fn relay_restrictions(mode: Mode) -> &'static [&'static str] {
    match mode {
        Mode::Strict => &[
            "reject_unauth_destination",
            "permit_sasl_authenticated",
            "permit_mynetworks",
            "reject",
        ],
        Mode::AllowSaslAuthNoDomain => &[
            "permit_sasl_authenticated",
            "reject_unauth_destination",
            "permit_mynetworks",
            "reject",
        ],
        Mode::AllowNetAuthNoDomain => &[
            "permit_mynetworks",
            "reject_unauth_destination",
            "permit_sasl_authenticated",
            "reject",
        ],
        Mode::AllowAuthNoDomain => &["permit_sasl_authenticated", "permit_mynetworks", "reject"],
    }
}

pub fn policy_restrictions(policy: &RelayPolicy) -> Vec<String> {
    match policy {
        RelayPolicy::Mode(mode) => relay_restrictions(*mode)
            .iter()
            .map(|s| s.to_string())
            .collect(),
        RelayPolicy::Custom(list) => list.clone(),
    }
}

/// Restrictions that stand alone.
const SIMPLE: &[&str] = &[
    "permit",
    "reject",
    "defer",
    "defer_if_permit",
    "defer_if_reject",
    "warn_if_reject",
    "permit_mynetworks",
    "permit_sasl_authenticated",
    "permit_auth_destination",
    "permit_tls_clientcerts",
    "permit_tls_all_clientcerts",
    "permit_inet_interfaces",
    "reject_unauth_destination",
    "defer_unauth_destination",
    "reject_unauth_pipelining",
    "reject_unknown_client_hostname",
    "reject_unknown_reverse_client_hostname",
    "reject_unknown_helo_hostname",
    "reject_invalid_helo_hostname",
    "reject_non_fqdn_helo_hostname",
    "reject_unknown_sender_domain",
    "reject_non_fqdn_sender",
    "reject_unverified_sender",
    "reject_unknown_recipient_domain",
    "reject_non_fqdn_recipient",
    "reject_unverified_recipient",
    "reject_unlisted_recipient",
    "reject_unlisted_sender",
    "reject_multi_recipient_bounce",
    "reject_plaintext_session",
    "reject_sender_login_mismatch",
    "reject_authenticated_sender_login_mismatch",
    "reject_known_sender_login_mismatch",
    "reject_unauthenticated_sender_login_mismatch",
    "reject_unknown_address",
];

/// Restrictions followed by one argument (a table, a DNS list, a service or a delay).
const WITH_ARGUMENT: &[&str] = &[
    "check_client_access",
    "check_reverse_client_hostname_access",
    "check_client_a_access",
    "check_client_mx_access",
    "check_client_ns_access",
    "check_helo_access",
    "check_helo_a_access",
    "check_helo_mx_access",
    "check_helo_ns_access",
    "check_sender_access",
    "check_sender_a_access",
    "check_sender_mx_access",
    "check_sender_ns_access",
    "check_recipient_access",
    "check_recipient_a_access",
    "check_recipient_mx_access",
    "check_recipient_ns_access",
    "check_ccert_access",
    "check_sasl_access",
    "check_policy_service",
    "reject_rbl_client",
    "reject_rhsbl_client",
    "reject_rhsbl_reverse_client",
    "reject_rhsbl_helo",
    "reject_rhsbl_sender",
    "reject_rhsbl_recipient",
    "permit_dnswl_client",
    "permit_rhswl_client",
    "sleep",
];

/// Postfix refuses to relay at all unless one of these is present; we refuse earlier, with a
/// message, instead of starting a relay that rejects every recipient.
const SAFETY_NETS: &[&str] = &[
    "reject",
    "defer",
    "defer_if_permit",
    "reject_unauth_destination",
    "defer_unauth_destination",
];

/// What an anonymous client outside the trusted networks meets first in a restriction list.
#[derive(Debug, PartialEq, Eq)]
enum FirstDecision {
    /// `permit`, at this index: an open relay.
    Permit(usize),
    /// A safety net that rejects or defers it.
    Refused,
    /// Nothing decides (e.g. `warn_if_reject reject`, which only logs): the list runs out,
    /// and a list that runs out permits.
    RunsOut,
}

/// Walks a list that [`check_custom`]'s token checks accepted, as Postfix would for an
/// anonymous client from outside `networks` sending to an outside domain. Access tables and
/// policy services are trusted not to permit everyone (as [`super::relay_guard::open_relay`]
/// does); `warn_if_reject` turns the next restriction's rejection into a log line.
fn first_decision(tokens: &[String]) -> FirstDecision {
    let mut i = 0;
    while let Some(token) = tokens.get(i) {
        match token.as_str() {
            "permit" => return FirstDecision::Permit(i),
            "warn_if_reject" => i += 1,
            t if SAFETY_NETS.contains(&t) => return FirstDecision::Refused,
            t if WITH_ARGUMENT.contains(&t) => i += 1,
            _ => {}
        }
        i += 1;
    }
    FirstDecision::RunsOut
}

/// Checks a custom restriction list token by token, then what it decides for an anonymous
/// client from outside: a list that would let it relay is refused here, naming the entry,
/// rather than by the relay's start-time check inside a new pod, which would crash-loop.
pub fn check_custom(field: &str, tokens: &[String]) -> ConfigResult<()> {
    if tokens.is_empty() {
        return Err(ConfigError::invalid(field, "the restriction list is empty"));
    }
    let mut iter = tokens.iter();
    while let Some(token) = iter.next() {
        if SIMPLE.contains(&token.as_str()) {
            continue;
        }
        if WITH_ARGUMENT.contains(&token.as_str()) {
            let arg = iter.next().ok_or_else(|| {
                ConfigError::invalid(
                    field,
                    format!("{token} needs an argument (a table, list or service)"),
                )
            })?;
            if arg.contains(['\n', '\r'])
                || SIMPLE.contains(&arg.as_str())
                || WITH_ARGUMENT.contains(&arg.as_str())
            {
                return Err(ConfigError::invalid(
                    field,
                    format!("{token} needs an argument, got {arg:?}"),
                ));
            }
            continue;
        }
        return Err(ConfigError::invalid(
            field,
            format!("{token:?} is not a Postfix relay restriction"),
        ));
    }
    if !tokens.iter().any(|t| SAFETY_NETS.contains(&t.as_str())) {
        return Err(ConfigError::invalid(
            field,
            "the list must contain reject, defer or reject_unauth_destination, or Postfix would refuse all mail",
        ));
    }
    match first_decision(tokens) {
        FirstDecision::Refused => Ok(()),
        FirstDecision::Permit(index) => Err(ConfigError::invalid(
            format!("{field}[{index}]"),
            "refusing to start an open relay: permit comes before any reject, defer or reject_unauth_destination, so any client could relay to any domain; put reject_unauth_destination first, or use permit_mynetworks and permit_sasl_authenticated",
        )),
        FirstDecision::RunsOut => Err(ConfigError::invalid(
            field,
            "refusing to start an open relay: no reject, defer or reject_unauth_destination takes effect (warn_if_reject only logs the next one), so the list runs out and permits any client to relay to any domain",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn every_mode_ends_by_rejecting() {
        for mode in Mode::ALL {
            assert_eq!(relay_restrictions(mode).last(), Some(&"reject"));
            check_custom("m", &policy_restrictions(&RelayPolicy::Mode(mode))).unwrap();
        }
    }

    #[test]
    fn custom_lists() {
        check_custom(
            "m",
            &tokens("permit_mynetworks check_client_access cidr:/etc/x reject"),
        )
        .unwrap();
        assert!(
            check_custom("m", &tokens("permit_mynetworks permit")).is_err(),
            "no safety net"
        );
        assert!(check_custom("m", &tokens("permit_everyone reject")).is_err());
        assert!(check_custom("m", &tokens("reject check_client_access")).is_err());
        assert!(check_custom("m", &[]).is_err());
    }

    /// Issue 24: `[permit, reject]` passed these checks and the operator, then every new pod
    /// refused to start an open relay and crash-looped. Refused here now, naming the entry.
    #[test]
    fn a_list_that_permits_anyone_first_is_refused_naming_the_entry() {
        let err = check_custom("spec.customRestrictions", &tokens("permit reject"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "spec.customRestrictions[0]: refusing to start an open relay: permit comes before any reject"
            ),
            "{err}"
        );
        let err = check_custom(
            "c",
            &tokens("permit_sasl_authenticated check_client_access cidr:/x permit reject"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("c[3]: refusing to start an open relay: permit"),
            "{err}"
        );
        let err = check_custom("c", &tokens("permit_mynetworks warn_if_reject reject"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("c: refusing to start an open relay") && err.contains("runs out"),
            "{err}"
        );
        // A safety net first, or permit after it, is closed.
        for ok in [
            "reject_unauth_destination permit",
            "permit_mynetworks reject_unauth_destination permit",
            "permit_mynetworks warn_if_reject reject_unauth_pipelining reject",
            "defer_if_permit permit",
        ] {
            check_custom("c", &tokens(ok)).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let err = check_custom("c", &tokens("permit_mynetworks permit_everyone reject"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("c: \"permit_everyone\""), "{err}");
    }
}
