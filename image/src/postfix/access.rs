//! Who may send as whom, and to whom (issue 27): the allowed senders (with `strict_sender`, the
//! relay domains too), the allowed recipients, and the SASL users bound to their senders. Each
//! becomes a `regexp:` table in the config directory, built here from validated entries only
//! ([`crate::validate::mail_pattern`]: letters, digits and `._+-@`, so a pattern never needs
//! more escaping than [`literal`] gives), and one or two restrictions that consult it:
//!
//! - senders: `check_sender_access` on a table whose allowed entries answer `DUNNO` (the next
//!   restriction decides) and whose last line refuses the rest with 553;
//! - recipients: `check_recipient_access` likewise, 550 at `RCPT TO`, so nothing refused here
//!   becomes a bounce later;
//! - bindings: Postfix's own sender login map (`smtpd_sender_login_maps`: a sender, the logins
//!   that own it) and `check_sasl_access`, which applies `reject_sender_login_mismatch` to the
//!   bound users only: they may send only as a sender they own, and everyone else keeps
//!   today's behaviour.

use std::collections::BTreeSet;

use crate::postfix::layout::{Layout, MILTER_SOCKET};
use crate::settings::{MailAccess, MailPattern, Settings};

/// The parameter the bindings set; `postconf` may not set it beside them.
pub const SENDER_LOGIN_MAPS: &str = "smtpd_sender_login_maps";
/// The parameter that hands messages to the relay's milter, which holds bound users' `From:`
/// headers to their senders ([`crate::milter`]).
pub const MILTERS: &str = "smtpd_milters";

/// `smtpd_milters`, when users are bound: the relay's milter, deferring when it cannot be
/// reached (a `default_action` no `postconf` entry overrides).
pub fn milters(access: &MailAccess) -> Option<String> {
    (!access.sender_bindings.is_empty())
        .then(|| format!("{{ unix:{MILTER_SOCKET}, default_action=tempfail }}"))
}

/// The restriction a bound user's login meets (Postfix's words in the 553 it answers: "Sender
/// address rejected: not owned by user ...").
const BINDING_RESTRICTION: &str = "reject_sender_login_mismatch";

/// The tables the settings need, as (path, content) pairs, for the config directory.
pub fn tables(s: &Settings, layout: &Layout) -> Vec<(std::path::PathBuf, String)> {
    [
        (layout.sender_access(), sender_access(s)),
        (layout.recipient_access(), recipient_access(&s.access)),
        (layout.sender_logins(), sender_logins(&s.access, &s.domain)),
        (layout.bound_logins(), bound_logins(&s.access, &s.domain)),
    ]
    .into_iter()
    .filter_map(|(path, table)| table.map(|t| (path, t)))
    .collect()
}

/// `smtpd_sender_restrictions`, or `None` when no sender is restricted. The bindings come
/// first: an allowed sender answers `DUNNO`, which must not spare a bound user its check.
pub fn sender_restrictions(s: &Settings, layout: &Layout) -> Option<String> {
    let mut list = Vec::new();
    if !s.access.sender_bindings.is_empty() {
        list.push(format!(
            "check_sasl_access regexp:{}",
            layout.bound_logins().display()
        ));
    }
    if !allowed_senders(s).is_empty() {
        list.push(format!(
            "check_sender_access regexp:{}",
            layout.sender_access().display()
        ));
    }
    (!list.is_empty()).then(|| list.join(", "))
}

/// What `smtpd_recipient_restrictions` adds after the routing guard, if anything.
pub fn recipient_restriction(access: &MailAccess, layout: &Layout) -> Option<String> {
    (!access.allowed_recipients.is_empty()).then(|| {
        format!(
            "check_recipient_access regexp:{}",
            layout.recipient_access().display()
        )
    })
}

/// `smtpd_sender_login_maps`, when users are bound.
pub fn sender_login_maps(access: &MailAccess, layout: &Layout) -> Option<String> {
    (!access.sender_bindings.is_empty())
        .then(|| format!("regexp:{}", layout.sender_logins().display()))
}

/// The senders every client may use: the relay domains under `strict_sender`, then the list.
fn allowed_senders(s: &Settings) -> Vec<MailPattern> {
    let strict = s
        .strict_sender
        .then(|| s.relay_domains.iter().cloned().map(MailPattern::Domain));
    strict
        .into_iter()
        .flatten()
        .chain(s.access.allowed_senders.iter().cloned())
        .collect()
}

fn sender_access(s: &Settings) -> Option<String> {
    allow_list(
        "the senders any client may use",
        &allowed_senders(s),
        "553 5.7.1 not among the senders this relay accepts",
    )
}

fn recipient_access(access: &MailAccess) -> Option<String> {
    allow_list(
        "the recipients this relay sends to",
        &access.allowed_recipients,
        "550 5.7.1 not among the recipients this relay sends to",
    )
}

/// An access table that lets `allowed` through to the next restriction and refuses the rest.
fn allow_list(what: &str, allowed: &[MailPattern], refusal: &str) -> Option<String> {
    if allowed.is_empty() {
        return None;
    }
    let mut table = format!("# Generated by smtp-relay: {what}.\n");
    for pattern in allowed {
        table.push_str(&format!("{} DUNNO\n", regexp(pattern)));
    }
    // The null sender (bounces) is looked up as `<>`, and refused with the rest.
    table.push_str(&format!("/^/ {refusal}\n"));
    Some(table)
}

/// The sender login map: each address or domain a binding names, with every login that owns
/// it. A regexp table answers with its first match, so an address comes before the domains,
/// a subdomain before its parent, and each line lists the owners of what covers it too.
fn sender_logins(access: &MailAccess, realm: &str) -> Option<String> {
    if access.sender_bindings.is_empty() {
        return None;
    }
    let patterns: BTreeSet<&MailPattern> = access
        .sender_bindings
        .iter()
        .flat_map(|b| &b.senders)
        .collect();
    let mut ordered: Vec<&MailPattern> = patterns.into_iter().collect();
    ordered.sort_by_key(|p| match p {
        MailPattern::Address(_) => (0, 0),
        MailPattern::Domain(d) => (1, usize::MAX - d.split('.').count()),
    });
    let mut table =
        String::from("# Generated by smtp-relay: the SASL logins each bound sender belongs to.\n");
    for pattern in ordered {
        let owners: Vec<String> = access
            .sender_bindings
            .iter()
            .filter(|b| {
                b.senders.iter().any(|owned| match owned {
                    MailPattern::Address(_) => owned == pattern,
                    MailPattern::Domain(d) => pattern.within(d),
                })
            })
            .flat_map(|b| logins(&b.user, realm))
            .collect();
        table.push_str(&format!("{} {}\n", regexp(pattern), owners.join(", ")));
    }
    Some(table)
}

/// The bound users, whose senders Postfix checks against [`sender_logins`].
fn bound_logins(access: &MailAccess, realm: &str) -> Option<String> {
    if access.sender_bindings.is_empty() {
        return None;
    }
    let mut table =
        String::from("# Generated by smtp-relay: the SASL users bound to their senders.\n");
    for binding in &access.sender_bindings {
        table.push_str(&format!(
            "/^{}(@{})?$/ {BINDING_RESTRICTION}\n",
            literal(&binding.user),
            literal(realm)
        ));
    }
    Some(table)
}

/// The names Postfix may know a user by: users live in the relay domain's realm, and a client
/// logs in as `user` or `user@domain`.
fn logins(user: &str, realm: &str) -> [String; 2] {
    [user.to_string(), format!("{user}@{realm}")]
}

/// The pattern as a regexp table's key (matched in any case, as Postfix's regexp tables do):
/// an address as itself, a domain as itself or any subdomain after the `@`.
fn regexp(pattern: &MailPattern) -> String {
    match pattern {
        MailPattern::Address(a) => format!("/^{}$/", literal(a)),
        MailPattern::Domain(d) => format!("/@(.+[.])?{}$/", literal(d)),
    }
}

/// Validated text (letters, digits, `-`, `_`, `@`, `.`, `+`) as a POSIX extended regular
/// expression that matches it literally: `.` and `+` go in brackets, the rest is literal
/// already.
pub fn literal(text: &str) -> String {
    text.replace('.', "[.]").replace('+', "[+]")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::SenderBinding;

    fn domain(d: &str) -> MailPattern {
        MailPattern::Domain(d.into())
    }
    fn address(a: &str) -> MailPattern {
        MailPattern::Address(a.into())
    }

    #[test]
    fn the_login_map_lists_every_owner_most_specific_first() {
        let access = MailAccess {
            sender_bindings: vec![
                SenderBinding {
                    user: "billing".into(),
                    senders: vec![domain("example.net"), address("a+b@other.example")],
                },
                SenderBinding {
                    user: "alerts".into(),
                    senders: vec![domain("alerts.example.net"), address("x@example.net")],
                },
            ],
            ..MailAccess::default()
        };
        let table = sender_logins(&access, "example.net").unwrap();
        let lines: Vec<&str> = table.lines().skip(1).collect();
        assert_eq!(
            lines,
            [
                "/^a[+]b@other[.]example$/ billing, billing@example.net",
                "/^x@example[.]net$/ billing, billing@example.net, alerts, alerts@example.net",
                "/@(.+[.])?alerts[.]example[.]net$/ billing, billing@example.net, alerts, alerts@example.net",
                "/@(.+[.])?example[.]net$/ billing, billing@example.net",
            ]
        );
        let bound = bound_logins(&access, "example.net").unwrap();
        assert!(bound.contains("/^billing(@example[.]net)?$/ reject_sender_login_mismatch\n"));
    }

    fn layout() -> Layout {
        Layout {
            config_dir: "/run/pf".into(),
            spool_dir: "/s".into(),
            data_dir: "/d".into(),
            listen: "0.0.0.0:25".into(),
        }
    }

    #[test]
    fn strict_sender_accepts_every_relay_domain_and_the_allowed_senders() {
        let mut s = crate::postfix::main_cf::tests::settings();
        s.strict_sender = true;
        s.access.allowed_senders = vec![address("alerts@monitoring.example")];
        assert_eq!(
            sender_restrictions(&s, &layout()).as_deref(),
            Some("check_sender_access regexp:/run/pf/sender_access.regexp")
        );
        assert_eq!(
            sender_access(&s).unwrap(),
            "# Generated by smtp-relay: the senders any client may use.\n\
             /@(.+[.])?example[.]net$/ DUNNO\n\
             /@(.+[.])?example[.]org$/ DUNNO\n\
             /^alerts@monitoring[.]example$/ DUNNO\n\
             /^/ 553 5.7.1 not among the senders this relay accepts\n"
        );
    }

    #[test]
    fn nothing_restricted_writes_no_table() {
        let s = crate::postfix::main_cf::tests::settings();
        let layout = layout();
        assert!(tables(&s, &layout).is_empty());
        assert_eq!(sender_restrictions(&s, &layout), None);
        assert_eq!(recipient_restriction(&s.access, &layout), None);
    }
}
