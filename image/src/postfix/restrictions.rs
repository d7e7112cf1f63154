//! What each relay mode means in Postfix terms, and what a restriction list lets an anonymous
//! stranger do: the only place that knows either ([`walk`] serves the checks of the inputs, the
//! start-time check of `relay_guard` and the operator's status alike).

use std::net::IpAddr;

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
    "permit_mx_backup",
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

/// What a restriction before the safety net can permit, besides clients in `networks` and
/// logged-in ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Permits {
    /// Strangers: the relay read its table, and it says OK to every client (`static:OK`) or to
    /// any client that writes the right value (an inline sender table with `OK`: the client
    /// writes its sender itself). An open relay, which no field can vouch for.
    Strangers(String),
    /// Whoever a table the relay cannot read (a file), a policy service, a client certificate
    /// or a DNS list lets through: an open relay as soon as it lets a stranger through, which
    /// only whoever wrote it can tell.
    Unread(String),
}

/// A restriction before the safety net that can permit a client neither in `networks` nor
/// logged in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opening {
    /// Its index in the list (the restriction's, not its argument's).
    pub index: usize,
    /// The restriction as written, with its argument (`check_sender_access hash:/etc/x`).
    pub entry: String,
    pub permits: Permits,
}

impl Opening {
    /// What it can permit, and why, in words.
    pub fn why(&self) -> &str {
        match &self.permits {
            Permits::Strangers(why) | Permits::Unread(why) => why,
        }
    }
}

/// What an anonymous client outside `networks` sending to an outside domain meets in a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Walk {
    /// The restrictions before the decision that may permit it, on what the relay cannot read:
    /// the relay's safety rests on them.
    pub rests_on: Vec<Opening>,
    pub decision: Decision,
}

/// What decides for that client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The safety net at this index rejects or defers it (unless one of
    /// [`Walk::rests_on`] permitted it first).
    Refused(usize),
    /// `permit` at this index (or `permit_mynetworks`, when `networks` holds every address):
    /// an open relay.
    Permit(usize),
    /// A restriction whose table the relay read permits strangers: an open relay.
    Strangers(Opening),
    /// Nothing decides (e.g. `warn_if_reject reject`, which only logs): the list runs out, and
    /// a list that runs out permits.
    RunsOut,
}

/// Walks a restriction list as Postfix would for an anonymous client from outside `networks`
/// sending to an outside domain (from inside, when `everyone_in_networks`), up to what decides
/// for it, noting on the way every restriction that could permit it. Tables, policy services,
/// client certificates and DNS lists are not assumed harmless (issue 26): `static:` and
/// `inline:` tables are read, the rest may permit anyone. `warn_if_reject` turns the next
/// restriction's rejection into a log line.
pub fn walk<S: AsRef<str>>(tokens: &[S], everyone_in_networks: bool) -> Walk {
    let mut rests_on = Vec::new();
    let mut warned = false;
    let mut i = 0;
    while let Some(token) = tokens.get(i).map(AsRef::as_ref) {
        let arg = if WITH_ARGUMENT.contains(&token) {
            tokens.get(i + 1).map(AsRef::as_ref)
        } else {
            None
        };
        let decision = match token {
            "permit" => Some(Decision::Permit(i)),
            "permit_mynetworks" if everyone_in_networks => Some(Decision::Permit(i)),
            t if SAFETY_NETS.contains(&t) && !warned => Some(Decision::Refused(i)),
            _ => None,
        };
        if let Some(decision) = decision {
            return Walk { rests_on, decision };
        }
        if let Some(permits) = can_permit(token, arg) {
            let opening = Opening {
                index: i,
                entry: arg.map_or_else(|| token.to_string(), |a| format!("{token} {a}")),
                permits,
            };
            match opening.permits {
                Permits::Strangers(_) => {
                    return Walk {
                        rests_on,
                        decision: Decision::Strangers(opening),
                    }
                }
                Permits::Unread(_) => rests_on.push(opening),
            }
        }
        warned = token == "warn_if_reject";
        i += if arg.is_some() { 2 } else { 1 };
    }
    Walk {
        rests_on,
        decision: Decision::RunsOut,
    }
}

/// What `token` (with `arg`, its table, list or service) can permit that is neither in
/// `networks` nor logged in, or `None` when it cannot. `permit_auth_destination` only permits
/// mail to the relay's own domains, `permit_inet_interfaces` only the relay's own addresses,
/// and `check_sasl_access` looks up a login an anonymous client does not have.
fn can_permit(token: &str, arg: Option<&str>) -> Option<Permits> {
    let arg = arg.unwrap_or("(nothing)");
    let unread = |why: String| Some(Permits::Unread(why));
    match token {
        "permit_tls_all_clientcerts" => unread(
            "permits any client with a certificate from a CA the relay trusts, whoever it was issued to"
                .into(),
        ),
        "permit_tls_clientcerts" => {
            unread("permits any client whose certificate relay_clientcerts lists".into())
        }
        "permit_mx_backup" => unread(
            "permits mail to any domain whose MX records name this relay, which anyone can publish for a domain of their own"
                .into(),
        ),
        "check_policy_service" => unread(format!(
            "permits any client the policy service {arg} answers OK for"
        )),
        "permit_dnswl_client" | "permit_rhswl_client" => unread(format!(
            "permits any client the DNS list {arg} lists, which its operator decides"
        )),
        "check_sasl_access" => None,
        t if t.starts_with("check_") && t.ends_with("_access") => table_permits(t, arg),
        _ => None,
    }
}

/// What an access check's lookup key is, for whom its entries can permit.
enum Key {
    /// A value the client chooses (its sender, recipient, HELO name, or DNS records it can
    /// publish): any entry that permits, permits anyone who writes it.
    ClientControlled(String),
    /// The client's address or verified host name: an address entry trusts that client as
    /// `networks` does; a host name trusts whoever holds that domain's DNS.
    Client,
    /// The client certificate's fingerprint.
    Certificate,
}

fn key(check: &str) -> Key {
    let inner = check
        .trim_start_matches("check_")
        .trim_end_matches("_access");
    let (subject, records) = match inner.rsplit_once('_') {
        Some((s, r @ ("a" | "mx" | "ns"))) => (s, Some(r.to_ascii_uppercase())),
        _ => (inner, None),
    };
    let written = match subject {
        "client" if records.is_none() => return Key::Client,
        "ccert" => return Key::Certificate,
        "client" => "its host name, which whoever holds its address's reverse DNS writes",
        "sender" => "the sender address (MAIL FROM), which the client writes itself",
        "recipient" => "the recipient address (RCPT TO), which the client writes itself",
        "helo" => "its HELO name, which the client writes itself",
        "reverse_client_hostname" => "its reverse DNS name, which whoever holds its address writes",
        other => other,
    };
    Key::ClientControlled(match records {
        Some(r) => format!("the {r} records of {written}"),
        None => written.to_string(),
    })
}

/// What `check` with `table` can permit: `static:` and `inline:` tables are read, and so are
/// the tables `unionmap:`, `pipemap:` and `proxy:` make of them; any other (a file: `hash:`,
/// `regexp:`, `cidr:`, ...) may answer OK for anyone.
fn table_permits(check: &str, table: &str) -> Option<Permits> {
    let table = without_proxy(table);
    // A union answers what each member answers (joined): it permits what any member permits,
    // whatever the members beside it that the relay cannot read.
    if let Some(parts) = members("unionmap", table) {
        return parts
            .into_iter()
            .map(|part| table_permits(check, part))
            .fold(None, stronger);
    }
    // A pipeline that ends in a union is the union of the pipelines that end in each member:
    // each member looks up the same key.
    if let Some((last, before)) = members("pipemap", table)
        .as_deref()
        .and_then(<[&str]>::split_last)
    {
        if let Some(parts) = members("unionmap", without_proxy(last)) {
            return parts
                .into_iter()
                .map(|part| {
                    let stages: Vec<&str> = before.iter().copied().chain([part]).collect();
                    table_permits(check, &format!("pipemap:{{{}}}", stages.join(", ")))
                })
                .fold(None, stronger);
        }
    }
    read_permits(key(check), read(table))
}

/// What a table the relay read (or could not) permits, looked up by `key`.
fn read_permits(key: Key, lookup: Lookup) -> Option<Permits> {
    let (entries, other) = match lookup {
        Lookup::Read { entries, other } => (entries, other),
        Lookup::Unread { table, answers } => {
            // A pipeline whose readable last stage never permits never permits.
            if answers.is_some_and(|a| a.iter().all(|v| says(v) == Says::Not)) {
                return None;
            }
            let by = match &key {
                Key::ClientControlled(what) => what.as_str(),
                Key::Client => "its address or host name",
                Key::Certificate => "its certificate",
            };
            return Some(Permits::Unread(format!(
                "can permit a client by {by}, and the relay cannot read {table}"
            )));
        }
    };
    if let Some(value) = other {
        let whom = if entries.is_empty() {
            "every client"
        } else {
            "every client it does not list"
        };
        match says(&value) {
            Says::Not => {}
            Says::Permits => {
                return Some(Permits::Strangers(format!("answers {value} for {whom}")))
            }
            Says::Unknown => {
                return Some(Permits::Unread(format!(
                    "answers {value} for {whom}, which the relay cannot read (a restriction class?)"
                )))
            }
        }
    }
    entries_permit(key, entries)
}

/// What the entries of a table the relay read permit, looked up by `key`.
fn entries_permit(key: Key, entries: Vec<(String, String)>) -> Option<Permits> {
    let permitting: Vec<(String, String, Says)> = entries
        .into_iter()
        .map(|(k, v)| {
            let s = says(&v);
            (k, v, s)
        })
        .filter(|(_, _, s)| *s != Says::Not)
        .collect();
    let listed = |only: &dyn Fn(&(String, String, Says)) -> bool| {
        permitting
            .iter()
            .filter(|e| only(e))
            .map(|(k, v, _)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match key {
        Key::ClientControlled(what) => {
            if permitting.iter().any(|(_, _, s)| *s == Says::Permits) {
                Some(Permits::Strangers(format!(
                    "permits any client that gives {}: the lookup key is {what}",
                    listed(&|(_, _, s)| *s == Says::Permits)
                )))
            } else if permitting.is_empty() {
                None
            } else {
                Some(Permits::Unread(format!(
                    "can permit a client by {what} ({}), and the relay cannot read what that answer permits",
                    listed(&|_| true)
                )))
            }
        }
        Key::Client => {
            let unknown = |(k, _, s): &(String, String, Says)| {
                k.eq_ignore_ascii_case("unknown") && *s == Says::Permits
            };
            if permitting.iter().any(unknown) {
                return Some(Permits::Strangers(
                    "permits every client without a reverse DNS name (the key unknown)".into(),
                ));
            }
            let by_name = |(k, _, _): &(String, String, Says)| k.parse::<IpAddr>().is_err();
            if permitting.iter().any(by_name) {
                Some(Permits::Unread(format!(
                    "permits clients by host name or partial address ({}), which whoever holds that DNS or address block decides; only whole IP addresses are trusted as networks are",
                    listed(&by_name)
                )))
            } else {
                // Whole addresses: those clients are trusted as `networks` trusts them.
                None
            }
        }
        Key::Certificate if permitting.is_empty() => None,
        Key::Certificate => Some(Permits::Unread(format!(
            "permits the clients whose certificate fingerprints it lists ({})",
            listed(&|_| true)
        ))),
    }
}

/// A table as the relay reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Lookup {
    /// Its answer for each key it lists, and for any other key (`static:`).
    Read {
        entries: Vec<(String, String)>,
        other: Option<String>,
    },
    /// A table the relay cannot read (named), and the answers it can give when they are
    /// known: a pipemap whose last stage the relay reads answers only what that stage holds.
    Unread {
        table: String,
        answers: Option<Vec<String>>,
    },
}

impl Lookup {
    fn unread(table: &str) -> Self {
        Lookup::Unread {
            table: table.to_string(),
            answers: None,
        }
    }
}

/// Reads `static:`, `inline:`, and the `pipemap:`, `unionmap:` and `proxy:` tables made of
/// them (postconf(5), DATABASE_README).
fn read(table: &str) -> Lookup {
    let table = without_proxy(table);
    let composed = |kind, join: fn(Lookup, Lookup) -> Lookup| {
        members(kind, table).map(|parts| {
            parts
                .into_iter()
                .map(read)
                .reduce(join)
                .unwrap_or_else(|| Lookup::unread(table))
        })
    };
    if let Some(lookup) = composed("pipemap", pipe).or_else(|| composed("unionmap", union)) {
        return lookup;
    }
    let (kind, rest) = table.split_once(':').unwrap_or((table, ""));
    match kind {
        "static" => Lookup::Read {
            entries: Vec::new(),
            other: Some(unbrace(rest).to_string()),
        },
        "inline" => inline_entries(rest).map_or_else(
            || Lookup::unread(table),
            |entries| Lookup::Read {
                entries,
                other: None,
            },
        ),
        _ => Lookup::unread(table),
    }
}

/// A read table's answer for `key`: its entry (Postfix folds the case of access lookups), or
/// its answer for any other key.
fn answer<'a>(
    entries: &'a [(String, String)],
    other: &'a Option<String>,
    key: &str,
) -> Option<&'a String> {
    entries
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
        .or(other.as_ref())
}

/// `first` then `next` in a pipemap: each answer of `first` is the key `next` looks up, and
/// a key `first` does not find goes no further.
fn pipe(first: Lookup, next: Lookup) -> Lookup {
    match (first, next) {
        (
            Lookup::Read { entries, other },
            Lookup::Read {
                entries: next_entries,
                other: next_other,
            },
        ) => {
            let then = |v: &str| answer(&next_entries, &next_other, v).cloned();
            Lookup::Read {
                entries: entries
                    .into_iter()
                    .filter_map(|(k, v)| Some((k, then(&v)?)))
                    .collect(),
                other: other.and_then(|v| then(&v)),
            }
        }
        (Lookup::Read { entries, other }, _) if entries.is_empty() && other.is_none() => {
            Lookup::Read { entries, other }
        }
        (Lookup::Read { .. }, unread @ Lookup::Unread { .. }) => unread,
        (Lookup::Unread { table, .. }, Lookup::Read { entries, other }) => Lookup::Unread {
            table,
            answers: Some(entries.into_iter().map(|(_, v)| v).chain(other).collect()),
        },
        (Lookup::Unread { table, .. }, Lookup::Unread { answers, .. }) => {
            Lookup::Unread { table, answers }
        }
    }
}

/// Two members of a unionmap: every key is looked up in both, and what both find is joined
/// with a comma.
fn union(a: Lookup, b: Lookup) -> Lookup {
    match (a, b) {
        (
            Lookup::Read { entries, other },
            Lookup::Read {
                entries: b_entries,
                other: b_other,
            },
        ) => {
            let joined = |found: [Option<&String>; 2]| {
                let found: Vec<&str> = found.into_iter().flatten().map(String::as_str).collect();
                (!found.is_empty()).then(|| found.join(","))
            };
            let mut keys: Vec<&String> = Vec::new();
            for (k, _) in entries.iter().chain(&b_entries) {
                if !keys.iter().any(|seen| seen.eq_ignore_ascii_case(k)) {
                    keys.push(k);
                }
            }
            Lookup::Read {
                entries: keys
                    .into_iter()
                    .filter_map(|k| {
                        let v =
                            joined([answer(&entries, &other, k), answer(&b_entries, &b_other, k)])?;
                        Some((k.clone(), v))
                    })
                    .collect(),
                other: joined([other.as_ref(), b_other.as_ref()]),
            }
        }
        (Lookup::Unread { table, .. }, _) | (_, Lookup::Unread { table, .. }) => Lookup::Unread {
            table,
            answers: None,
        },
    }
}

/// The members of a `kind:{a, b, ...}` table, or `None` when it is not one.
fn members<'a>(kind: &str, table: &'a str) -> Option<Vec<&'a str>> {
    let inner = table
        .strip_prefix(kind)?
        .strip_prefix(':')?
        .trim()
        .strip_prefix('{')?
        .strip_suffix('}')?;
    Some(split_braced(inner))
}

/// A `proxy:` table is the table the proxymap server reads for the relay.
fn without_proxy(table: &str) -> &str {
    let mut table = table.trim();
    while let Some(rest) = table.strip_prefix("proxy:") {
        table = rest;
    }
    table
}

/// The more dangerous of two answers: strangers, then what the relay cannot read.
fn stronger(a: Option<Permits>, b: Option<Permits>) -> Option<Permits> {
    match (&a, &b) {
        (Some(Permits::Strangers(_)), _) => a,
        (_, Some(Permits::Strangers(_))) | (None, _) => b,
        (Some(_), _) => a,
    }
}

/// What an access table's answer does to the client (access(5)), case-insensitively.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Says {
    /// `OK`, `RELAY`, an all-numeric answer, or a `permit*` restriction.
    Permits,
    /// An action that does not permit (`DUNNO`, `REJECT`, `4NN text`, `HOLD`, ...).
    Not,
    /// A restriction class or a table the relay cannot read.
    Unknown,
}

/// The actions of access(5) that never permit; their text does not matter.
const ACTIONS: &[&str] = &[
    "dunno",
    "reject",
    "defer",
    "defer_if_reject",
    "defer_if_permit",
    "bcc",
    "discard",
    "filter",
    "hold",
    "prepend",
    "redirect",
    "info",
    "warn",
];

fn says(value: &str) -> Says {
    let words: Vec<String> = value
        .split([',', ' ', '\t'])
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    let Some(first) = words.first() else {
        return Says::Not;
    };
    let numeric = value.trim().bytes().all(|b| b.is_ascii_digit());
    if first == "ok" || first == "relay" || numeric {
        return Says::Permits;
    }
    let code = first.len() == 3
        && first.starts_with(['4', '5'])
        && first.bytes().all(|b| b.is_ascii_digit());
    if code || ACTIONS.contains(&first.as_str()) {
        return Says::Not;
    }
    // A restriction list: any permit in it permits.
    if words.iter().any(|w| w.starts_with("permit")) {
        Says::Permits
    } else if words.iter().all(|w| SIMPLE.contains(&w.as_str())) {
        Says::Not
    } else {
        Says::Unknown
    }
}

/// `{text}` without its braces and white space; other text as it is.
fn unbrace(text: &str) -> &str {
    let t = text.trim();
    t.strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .map_or(t, str::trim)
}

/// The entries of an `inline:{ key=value, { key = text } }` table, or `None` when it is not
/// one.
fn inline_entries(rest: &str) -> Option<Vec<(String, String)>> {
    let inner = rest.trim().strip_prefix('{')?.strip_suffix('}')?;
    split_braced(inner)
        .into_iter()
        .map(|entry| {
            let (k, v) = unbrace(entry).split_once('=')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

/// Splits at commas and white space outside braces, as Postfix splits lists.
pub fn split_braced(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0usize, None);
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' | ' ' | '\t' | '\n' | '\r' if depth == 0 => {
                if let Some(s) = start.take() {
                    out.push(&text[s..i]);
                }
                continue;
            }
            _ => {}
        }
        start.get_or_insert(i);
    }
    if let Some(s) = start {
        out.push(&text[s..]);
    }
    out
}

/// Whether the input vouches for the restrictions whose tables the relay cannot read
/// (`trustRestrictionTables`), and how it names that choice in a refusal.
#[derive(Debug, Clone, Copy)]
pub struct Vouch<'a> {
    pub field: &'a str,
    pub given: bool,
}

/// Checks a custom restriction list token by token, then what it decides for an anonymous
/// client from outside: a list that would let it relay is refused here, naming the entry,
/// rather than by the relay's start-time check inside a new pod, which would crash-loop. So is
/// a list whose safety rests on what the relay cannot read (a file table, a policy service, a
/// client certificate, a DNS list), unless `vouch` says its author means it.
pub fn check_custom(field: &str, tokens: &[String], vouch: Vouch) -> ConfigResult<()> {
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
    let walk = walk(tokens, false);
    match walk.decision {
        Decision::Refused(net) => match walk.rests_on.split_first() {
            Some((first, others)) if !vouch.given => Err(ConfigError::invalid(
                format!("{field}[{}]", first.index),
                format!(
                    "refusing a relay that may be open: {} {}; it comes before {} ({field}[{net}]), which refuses strangers, so any client it lets through relays to any domain, not only those in networks or logged in{}; remove it, move it after {}, or set {} to vouch that it permits only clients you trust",
                    first.entry,
                    first.why(),
                    tokens[net],
                    also(field, others),
                    tokens[net],
                    vouch.field,
                ),
            )),
            _ => Ok(()),
        },
        Decision::Permit(index) => Err(ConfigError::invalid(
            format!("{field}[{index}]"),
            "refusing to start an open relay: permit comes before any reject, defer or reject_unauth_destination, so any client could relay to any domain; put reject_unauth_destination first, or use permit_mynetworks and permit_sasl_authenticated",
        )),
        Decision::Strangers(o) => Err(ConfigError::invalid(
            format!("{field}[{}]", o.index),
            format!(
                "refusing to start an open relay: {} {}, before any reject, defer or reject_unauth_destination, so anyone could relay to any domain; remove it, or move it after reject_unauth_destination ({} cannot vouch for it: the relay read the table, and it permits strangers)",
                o.entry,
                o.why(),
                vouch.field,
            ),
        )),
        Decision::RunsOut => Err(ConfigError::invalid(
            field,
            "refusing to start an open relay: no reject, defer or reject_unauth_destination takes effect (warn_if_reject only logs the next one), so the list runs out and permits any client to relay to any domain",
        )),
    }
}

/// The other entries a refusal's safety rests on, named.
fn also(field: &str, others: &[Opening]) -> String {
    if others.is_empty() {
        return String::new();
    }
    let named: Vec<String> = others
        .iter()
        .map(|o| format!("{field}[{}] ({})", o.index, o.entry))
        .collect();
    format!("; so may {}", named.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No vouch for what the relay cannot read.
    const NO: Vouch = Vouch {
        field: "trust",
        given: false,
    };

    /// The input vouches for it.
    const YES: Vouch = Vouch {
        field: "trust",
        given: true,
    };

    fn tokens(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn every_mode_ends_by_rejecting() {
        for mode in Mode::ALL {
            assert_eq!(relay_restrictions(mode).last(), Some(&"reject"));
            check_custom("m", &policy_restrictions(&RelayPolicy::Mode(mode)), NO).unwrap();
        }
    }

    #[test]
    fn custom_lists() {
        check_custom(
            "m",
            &tokens("permit_mynetworks check_client_access cidr:/etc/x reject"),
            YES,
        )
        .unwrap();
        assert!(
            check_custom("m", &tokens("permit_mynetworks permit"), NO).is_err(),
            "no safety net"
        );
        assert!(check_custom("m", &tokens("permit_everyone reject"), NO).is_err());
        assert!(check_custom("m", &tokens("reject check_client_access"), NO).is_err());
        assert!(check_custom("m", &[], NO).is_err());
    }

    /// Issue 24: `[permit, reject]` passed these checks and the operator, then every new pod
    /// refused to start an open relay and crash-looped. Refused here now, naming the entry.
    #[test]
    fn a_list_that_permits_anyone_first_is_refused_naming_the_entry() {
        let err = check_custom("spec.customRestrictions", &tokens("permit reject"), NO)
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
            NO,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("c[3]: refusing to start an open relay: permit"),
            "{err}"
        );
        let err = check_custom("c", &tokens("permit_mynetworks warn_if_reject reject"), NO)
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
            check_custom("c", &tokens(ok), NO).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let err = check_custom("c", &tokens("permit_mynetworks permit_everyone reject"), NO)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("c: \"permit_everyone\""), "{err}");
    }

    /// Issue 26: "our apps send as example.net", written as a sender table before the safety
    /// net, lets anyone who writes `MAIL FROM:<x@example.net>` relay anywhere. Refused, naming
    /// the entry, and no vouch accepts it: the relay read the table.
    #[test]
    fn the_issues_sender_table_is_an_open_relay_whatever_the_vouch() {
        let list = tokens("permit_mynetworks permit_sasl_authenticated check_sender_access inline:{example.net=OK} reject_unauth_destination");
        for vouch in [NO, YES] {
            let err = check_custom("spec.customRestrictions", &list, vouch)
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("spec.customRestrictions[2]: refusing to start an open relay: check_sender_access inline:{example.net=OK} permits any client that gives example.net=OK")
                    && err.contains("the sender address (MAIL FROM), which the client writes itself")
                    && err.contains("move it after reject_unauth_destination")
                    && err.contains("trust cannot vouch for it"),
                "{err}"
            );
        }
        // After the safety net it only decides for those already allowed to relay.
        let after = tokens("permit_mynetworks reject_unauth_destination check_sender_access inline:{example.net=OK}");
        check_custom("c", &after, NO).unwrap();
    }

    /// Each restriction that can say OK to a stranger from what the relay cannot read, the
    /// index of the restriction in it, and what the refusal says it can permit.
    const UNREAD: &[(&str, usize, &str)] = &[
        (
            "check_sender_access hash:/etc/postfix/senders",
            0,
            "the relay cannot read hash:/etc/postfix/senders",
        ),
        (
            "check_client_access cidr:/etc/x",
            0,
            "by its address or host name",
        ),
        (
            "check_recipient_access regexp:/etc/x",
            0,
            "the recipient address (RCPT TO)",
        ),
        ("check_helo_access pcre:/etc/x", 0, "its HELO name"),
        (
            "check_reverse_client_hostname_access lmdb:/etc/x",
            0,
            "its reverse DNS name",
        ),
        (
            "check_sender_mx_access texthash:/etc/x",
            0,
            "the MX records of the sender address",
        ),
        (
            "check_client_a_access hash:/etc/x",
            0,
            "the A records of its host name",
        ),
        (
            "check_policy_service inet:127.0.0.1:10023",
            0,
            "the policy service inet:127.0.0.1:10023 answers OK for",
        ),
        (
            "permit_dnswl_client list.dnswl.org",
            0,
            "the DNS list list.dnswl.org lists",
        ),
        (
            "permit_rhswl_client rhs.example",
            0,
            "the DNS list rhs.example",
        ),
        (
            "permit_tls_all_clientcerts",
            0,
            "a certificate from a CA the relay trusts",
        ),
        ("permit_tls_clientcerts", 0, "relay_clientcerts"),
        ("check_ccert_access hash:/etc/x", 0, "by its certificate"),
        (
            "check_ccert_access inline:{AB:CD=OK}",
            0,
            "certificate fingerprints it lists (AB:CD=OK)",
        ),
        ("permit_mx_backup", 0, "MX records name this relay"),
        (
            "check_client_access inline:{mail.example.org=OK}",
            0,
            "by host name or partial address (mail.example.org=OK)",
        ),
        ("check_client_access inline:{10.1=OK}", 0, "(10.1=OK)"),
        (
            "check_sender_access inline:{example.net=myclass}",
            0,
            "(example.net=myclass)",
        ),
        (
            "check_sender_access static:myclass",
            0,
            "answers myclass for every client",
        ),
        (
            "warn_if_reject reject_unknown_sender_domain check_sender_access hash:/x",
            2,
            "hash:/x",
        ),
    ];

    /// Every kind of restriction that can say OK to a stranger before the safety net: refused
    /// without the vouch, naming the entry and the ways out; accepted with it.
    #[test]
    fn what_the_relay_cannot_read_needs_a_vouch() {
        for &(list, entry, says) in UNREAD {
            let list = tokens(&format!(
                "permit_mynetworks {list} reject_unauth_destination reject"
            ));
            let at = entry + 1;
            let err = check_custom("c", &list, NO)
                .expect_err(&list.join(" "))
                .to_string();
            assert!(
                err.starts_with(&format!("c[{at}]: refusing a relay that may be open: "))
                    && err.contains(says)
                    && err.contains("before reject_unauth_destination (c[")
                    && err.contains(
                        "remove it, move it after reject_unauth_destination, or set trust to vouch"
                    ),
                "{list:?}: {err}"
            );
            check_custom("c", &list, YES).unwrap_or_else(|e| panic!("{list:?}: {e}"));
        }
        // Several: the first is named, the others too.
        let err = check_custom(
            "c",
            &tokens("check_policy_service unix:private/policy permit_tls_all_clientcerts reject_unauth_destination"),
            NO,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("c[0]:") && err.contains("so may c[2] (permit_tls_all_clientcerts)"),
            "{err}"
        );
    }

    /// `static:` and `inline:` tables are read: what permits strangers is an open relay, what
    /// only trusts whole client addresses is like `networks`, what never permits is harmless.
    #[test]
    fn static_and_inline_tables_are_read() {
        for (list, says) in [
            (
                "check_client_access static:OK",
                "answers OK for every client",
            ),
            (
                "check_sender_access static:{relay}",
                "answers relay for every client",
            ),
            (
                "check_helo_access static:1234",
                "answers 1234 for every client",
            ),
            (
                "check_recipient_access static:permit",
                "answers permit for every client",
            ),
            (
                "check_ccert_access static:OK",
                "answers OK for every client",
            ),
            (
                "check_helo_access inline:{relay.example.net=ok}",
                "relay.example.net=ok",
            ),
            (
                "check_sender_access inline:{{example.net=RELAY}}",
                "example.net=RELAY",
            ),
            (
                "check_recipient_access inline:{x@example.org=20240101}",
                "x@example.org=20240101",
            ),
            (
                "check_sender_access inline:{a.example=REJECT,b.example=permit_auth_destination}",
                "b.example=permit_auth_destination",
            ),
            (
                "check_reverse_client_hostname_access inline:{trusted.example=OK}",
                "its reverse DNS name",
            ),
            (
                "check_client_access inline:{unknown=OK}",
                "without a reverse DNS name",
            ),
        ] {
            let list = tokens(&format!("{list} reject_unauth_destination"));
            for vouch in [NO, YES] {
                let err = check_custom("c", &list, vouch)
                    .expect_err(&list.join(" "))
                    .to_string();
                assert!(
                    err.starts_with("c[0]: refusing to start an open relay: ")
                        && err.contains(says),
                    "{list:?}: {err}"
                );
            }
        }
        for harmless in [
            "check_client_access inline:{10.0.0.5=OK}",
            "check_client_access inline:{10.0.0.5=OK,2001:db8::25=RELAY,spam.example=REJECT}",
            "check_sender_access inline:{spam.example=REJECT}",
            "check_sender_access inline:{spam.example=DEFER_IF_PERMIT,x.example=DUNNO}",
            "check_sender_access static:DUNNO",
            "check_sender_access static:{REJECT}",
            "check_sasl_access hash:/etc/x",
            "check_sender_access inline:{x.example=reject_unverified_sender}",
            "reject_rbl_client zen.spamhaus.org",
            "sleep 1",
            "permit_auth_destination",
            "permit_inet_interfaces",
        ] {
            let list = tokens(&format!(
                "permit_mynetworks {harmless} reject_unauth_destination"
            ));
            check_custom("c", &list, NO).unwrap_or_else(|e| panic!("{harmless}: {e}"));
        }
    }

    /// Issue 26: `unionmap:`, `pipemap:` and `proxy:` tables hid the `static:` and `inline:`
    /// tables in them, so with the vouch `unionmap:{static:OK,hash:/x}` opened the relay. They
    /// are read through: a union permits what any member permits, a pipeline answers what its
    /// last stage answers for the keys that reach it, and only what the relay cannot read
    /// needs the vouch.
    #[test]
    fn compound_tables_are_read_through() {
        for (table, says) in [
            (
                "check_client_access unionmap:{static:OK,hash:/etc/x}",
                "answers OK for every client",
            ),
            (
                "check_client_access unionmap:{proxy:hash:/etc/x,static:{RELAY}}",
                "answers RELAY for every client",
            ),
            (
                "check_sender_access proxy:unionmap:{hash:/etc/x,inline:{example.net=OK}}",
                "permits any client that gives example.net=OK",
            ),
            (
                "check_sender_access pipemap:{inline:{example.net=x},static:OK}",
                "permits any client that gives example.net=OK",
            ),
            (
                "check_helo_access pipemap:{static:a,inline:{A=ok}}",
                "answers ok for every client",
            ),
            (
                "check_sender_access pipemap:{inline:{example.net=x},unionmap:{hash:/etc/x,static:OK}}",
                "permits any client that gives example.net=OK",
            ),
            (
                "check_client_access unionmap:{inline:{10.0.0.5=OK},pipemap:{static:x,unionmap:{static:REJECT,inline:{x=OK}}}}",
                "answers OK for every client",
            ),
        ] {
            let list = tokens(&format!("permit_mynetworks {table} reject_unauth_destination"));
            for vouch in [NO, YES] {
                let err = check_custom("spec.customRestrictions", &list, vouch)
                    .expect_err(table)
                    .to_string();
                assert!(
                    err.starts_with(&format!(
                        "spec.customRestrictions[1]: refusing to start an open relay: {table} {says}"
                    )) && err.contains("trust cannot vouch for it"),
                    "{table}: {err}"
                );
            }
        }
        for (table, unread) in [
            (
                "check_client_access pipemap:{hash:/etc/x,static:OK}",
                "hash:/etc/x",
            ),
            (
                "check_sender_access pipemap:{static:x,cidr:/etc/x}",
                "cidr:/etc/x",
            ),
            (
                "check_sender_access unionmap:{inline:{a.example=REJECT},regexp:/etc/x}",
                "regexp:/etc/x",
            ),
            ("check_sender_access proxy:hash:/etc/x", "hash:/etc/x"),
            (
                "check_sender_access pipemap:{hash:/etc/x,inline:{a=REJECT,b=OK}}",
                "hash:/etc/x",
            ),
        ] {
            let list = tokens(&format!(
                "permit_mynetworks {table} reject_unauth_destination"
            ));
            let err = check_custom("c", &list, NO).expect_err(table).to_string();
            assert!(
                err.starts_with(&format!(
                    "c[1]: refusing a relay that may be open: {table} "
                )) && err.contains(&format!("the relay cannot read {unread};")),
                "{table}: {err}"
            );
            check_custom("c", &list, YES).unwrap_or_else(|e| panic!("{table}: {e}"));
        }
        // What never permits, whatever the keys that reach it, needs no vouch.
        for harmless in [
            "check_sender_access pipemap:{hash:/etc/x,static:REJECT}",
            "check_sender_access pipemap:{hash:/etc/x,inline:{a=REJECT,b=DUNNO}}",
            "check_sender_access pipemap:{inline:{example.net=x},inline:{y=OK}}",
            "check_sender_access pipemap:{static:x,proxy:inline:{y=OK}}",
            "check_sender_access unionmap:{static:DUNNO,inline:{spam.example=REJECT}}",
            "check_client_access unionmap:{inline:{10.0.0.5=OK},inline:{10.0.0.6=RELAY}}",
        ] {
            let list = tokens(&format!(
                "permit_mynetworks {harmless} reject_unauth_destination"
            ));
            check_custom("c", &list, NO).unwrap_or_else(|e| panic!("{harmless}: {e}"));
        }
    }

    #[test]
    fn access_answers_are_read_as_postfix_reads_them() {
        for permits in [
            "OK",
            "ok",
            "RELAY",
            "1700000000",
            "permit",
            "PERMIT_MYNETWORKS",
            "reject_unknown_sender_domain, permit",
        ] {
            assert_eq!(says(permits), Says::Permits, "{permits}");
        }
        for not in [
            "DUNNO",
            "REJECT no",
            "550 go away",
            "450",
            "4.7.1",
            "defer_if_permit x",
            "HOLD",
            "DISCARD",
            "reject_unverified_sender",
            "",
        ] {
            // "450" is all-numeric: Postfix reads it as OK.
            if not == "450" {
                assert_eq!(says(not), Says::Permits);
                continue;
            }
            assert_eq!(
                says(not),
                if not == "4.7.1" {
                    Says::Unknown
                } else {
                    Says::Not
                },
                "{not}"
            );
        }
        assert_eq!(says("myclass"), Says::Unknown);
        assert_eq!(
            split_braced("a, inline:{ x=OK, { y = z w } } b"),
            vec!["a", "inline:{ x=OK, { y = z w } }", "b"]
        );
        assert_eq!(
            inline_entries("{ x=OK, { y = z w } }"),
            Some(vec![("x".into(), "OK".into()), ("y".into(), "z w".into())])
        );
    }

    /// `warn_if_reject` only softens a rejection: a permit after it still permits.
    #[test]
    fn a_permit_after_warn_if_reject_still_permits() {
        let err = check_custom("c", &tokens("warn_if_reject permit reject"), NO)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("c[1]: refusing to start an open relay: permit"),
            "{err}"
        );
    }
}
