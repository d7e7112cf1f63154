//! The one place that decides what `postconf` may never undo: which Postfix parameters only the
//! relay's own fields may set (those that decide who may relay, and those that protect the
//! relayhost login), which `networks` would trust everyone, whether an effective Postfix
//! configuration lets an anonymous client from outside `networks` relay to an outside domain,
//! and whether it could send the relayhost password in clear text. Both input paths and the
//! operator use these functions; nothing else repeats them.

use ipnet::IpNet;

use crate::error::{ConfigError, ConfigResult};
use crate::postfix::restrictions::{self, Decision};

/// Parameters that decide who may relay, with the field that owns each. `postconf` (and
/// `POSTCONF_*`) may not set them: one line there would silently undo what the fields say.
///
/// - `mynetworks`, `mynetworks_style`: who is trusted without a login (`networks`).
/// - `relay_domains`: where anyone may send (`relayDomains`).
/// - `smtpd_*_restrictions`: the access decisions themselves. Only `smtpd_relay_restrictions`
///   can open the relay, but the recipient list carries the sender-routing guard and the
///   sender list `strictSender`, and extra checks (RBLs, access tables) belong in
///   `customRestrictions`, which keeps its safety net.
/// - `smtpd_sasl_*`, `cyrus_sasl_config_path`: who counts as authenticated (the SASL users).
/// - `smtpd_tls_auth_only`: whether passwords may cross the network in clear text.
/// - `smtpd_authorized_xclient_hosts`: XCLIENT lets the listed hosts claim any client address,
///   one inside `networks` included.
/// - `smtpd_upstream_proxy_protocol`: with it, the client address comes from a header that
///   anyone who reaches the port can write.
const OWNED: &[(&str, &str)] = &[
    ("mynetworks", "networks"),
    ("mynetworks_style", "networks"),
    ("relay_domains", "relayDomains"),
    ("smtpd_tls_auth_only", "tlsSecretRef"),
    ("cyrus_sasl_config_path", "the SASL users"),
    (
        "smtpd_authorized_xclient_hosts",
        "no field: XCLIENT would let those hosts claim an address inside networks",
    ),
    (
        "smtpd_upstream_proxy_protocol",
        "proxyProtocolPort (RELAY_PROXY_PROTOCOL_PORT): a second port for the load balancer, so the SMTP port keeps trusting the real peer",
    ),
];

/// The TLS level towards the relayhost, in each input's words.
const LEVEL: &str = "relayhost.tls.level (relay.yaml: relayhost.tlsLevel; RELAY_USE_TLS, RELAY_TLS_VERIFY); with a login it defaults to secure, and a level there that does not verify the relayhost (encrypt, dane; none or may, which also allow clear text) is accepted and flagged";
/// The CA that verifies the relayhost.
const CA: &str = "relayhost.tls.caSecretKeyRef or caConfigMapKeyRef (relay.yaml: relayhost.tlsCaFile; RELAY_TLS_CA); without one, the system CAs";
/// The relayhost login.
const LOGIN: &str = "relayhost.credentialsSecretRef or relayhost.oauth2 (relay.yaml: relayhost.usernameFile and passwordFile, or oauth2; RELAY_LOGIN and RELAY_PASSWORD)";
/// The relayhost, which the login goes to and its certificate must name.
const RELAYHOST: &str = "relayhost.host, port and mxLookup (RELAY_HOST)";
/// Protocols and ciphers: no field, the defaults are the strong end already.
const TLS_FLOOR: &str = "no field: with a login the relay requires TLS 1.2 or newer towards the relayhost and excludes anonymous, null, export, RC4, DES, 3DES and MD5 suites";

/// Parameters that protect the relayhost login, with the field that owns each, beyond the
/// `smtp_tls_*` and `smtp_sasl_*` prefixes (see [`HARMLESS`]). Whatever `postconf` says, the
/// login must go only to the relayhost the fields name, only inside TLS unless the fields chose
/// a level of `none` or `may` (which the operator flags with `RelayhostPasswordProtected=False`),
/// to a relayhost verified as the fields say (by default `secure`: a trusted certificate that
/// names it; a weaker level is flagged with `RelayhostVerified=False`), over TLS no weaker than
/// the defaults:
///
/// - the TLS level and what overrides it: `smtp_tls_security_level`, per destination
///   `smtp_tls_policy_maps` and the obsolete `smtp_tls_per_site`, the obsolete
///   `smtp_use_tls`, `smtp_enforce_tls`, `smtp_tls_enforce_peername`, and
///   `smtp_tls_dane_insecure_mx_policy` (which turns `dane` into `may`);
/// - which mechanisms may run outside TLS: `smtp_sasl_security_options` (`noplaintext` keeps
///   PLAIN, LOGIN and XOAUTH2 inside TLS), and inside it `smtp_sasl_tls_security_options`,
///   `smtp_sasl_tls_verified_security_options`; they follow the level;
/// - the login itself: `smtp_sasl_auth_enable`, `smtp_sasl_password_maps` (the password or the
///   OAuth2 socketmap), `smtp_sasl_type`, `smtp_sasl_path` (the SASL implementation, which
///   applies those options);
/// - where it goes: `relayhost` (the OAuth2 socketmap answers any destination);
/// - whom to trust: `smtp_tls_CAfile`, `smtp_tls_CApath`, `smtp_tls_trust_anchor_file`,
///   `tls_append_default_CA` (system CAs besides a private one), the names a certificate must
///   carry (`smtp_tls_verify_cert_match`, `smtp_tls_secure_cert_match`), the fingerprint
///   digest (`smtp_tls_fingerprint_digest`: MD5 or SHA-1 would weaken `fingerprint`);
/// - `smtp_tls_wrappermode` (implicit TLS);
/// - the protocol and cipher floor: `smtp_tls_protocols`, `smtp_tls_mandatory_protocols`,
///   `smtp_tls_ciphers`, `smtp_tls_mandatory_ciphers`, `smtp_tls_exclude_ciphers`,
///   `smtp_tls_mandatory_exclude_ciphers`, and the global `tls_*_cipherlist` (an
///   `@SECLEVEL=0` there lets TLS 1.0 and NULL ciphers back in), `tls_config_file` and
///   `tls_config_name` (an OpenSSL configuration can do the same), `tls_ssl_options`
///   (`legacy_server_connect` re-enables insecure renegotiation). A name alone cannot tell a
///   weaker value from a stronger one, and there is nothing stronger to ask for: the
///   relay's floor with a login is TLS 1.2 or newer (`smtp_tls_mandatory_protocols`).
///
/// - `smtp_sender_dependent_authentication` (the login looked up by sender first) and
///   `info_log_address_format` (unquoted addresses in the log the metrics read);
/// - `lmtp_sasl_*`: an `lmtp:` route to the relayhost with the OAuth2 socketmap as its password
///   map would carry the token without TLS.
///
/// Left open: the rest of `lmtp_*` (the relay delivers nothing over LMTP), `tlsproxy_client_*` (the
/// smtp client sends its own level, CAs and matching with every request to tlsproxy, which
/// only preloads these), and everything on the inbound side (`smtpd_tls_*`; AUTH there is
/// guarded by `smtpd_tls_auth_only`).
const RELAYHOST_OWNED: &[(&str, &str)] = &[
    ("smtp_tls_security_level", LEVEL),
    ("smtp_tls_policy_maps", LEVEL),
    ("smtp_tls_per_site", LEVEL),
    ("smtp_use_tls", LEVEL),
    ("smtp_enforce_tls", LEVEL),
    ("smtp_tls_enforce_peername", LEVEL),
    ("smtp_tls_dane_insecure_mx_policy", LEVEL),
    ("smtp_sasl_security_options", LEVEL),
    ("smtp_sasl_tls_security_options", LEVEL),
    ("smtp_sasl_tls_verified_security_options", LEVEL),
    ("smtp_sasl_auth_enable", LOGIN),
    ("smtp_sasl_password_maps", LOGIN),
    ("smtp_sasl_type", LOGIN),
    ("smtp_sasl_path", LOGIN),
    ("relayhost", RELAYHOST),
    ("smtp_tls_CAfile", CA),
    ("smtp_tls_CApath", CA),
    ("smtp_tls_trust_anchor_file", CA),
    ("tls_append_default_CA", CA),
    (
        "smtp_tls_verify_cert_match",
        "relayhost.host (RELAY_HOST): at level verify or secure its certificate must name it",
    ),
    (
        "smtp_tls_secure_cert_match",
        "relayhost.host (RELAY_HOST): at level verify or secure its certificate must name it",
    ),
    (
        "smtp_tls_fingerprint_digest",
        "no field: give smtp_tls_fingerprint_cert_match SHA-256 fingerprints (openssl x509 -noout -fingerprint -sha256)",
    ),
    (
        "smtp_tls_wrappermode",
        "relayhost.implicitTls (relay.yaml: relayhost.implicitTls; RELAY_SMTPS)",
    ),
    ("smtp_tls_protocols", TLS_FLOOR),
    ("smtp_tls_mandatory_protocols", TLS_FLOOR),
    ("smtp_tls_ciphers", TLS_FLOOR),
    ("smtp_tls_mandatory_ciphers", TLS_FLOOR),
    ("smtp_tls_exclude_ciphers", TLS_FLOOR),
    ("smtp_tls_mandatory_exclude_ciphers", TLS_FLOOR),
    ("tls_high_cipherlist", TLS_FLOOR),
    ("tls_medium_cipherlist", TLS_FLOOR),
    ("tls_low_cipherlist", TLS_FLOOR),
    ("tls_export_cipherlist", TLS_FLOOR),
    ("tls_null_cipherlist", TLS_FLOOR),
    ("tls_config_file", TLS_FLOOR),
    ("tls_config_name", TLS_FLOOR),
    ("tls_ssl_options", TLS_FLOOR),
    (
        "smtp_sender_dependent_authentication",
        "no field: the login is looked up by sender first, and a sender's quoted local part can spell the relayhost's key",
    ),
    (
        "info_log_address_format",
        "no field: the relay's metrics read Postfix's log in its default format, where addresses are quoted; unquoted, a client's address could write what the metrics count",
    ),
];

/// The `smtp_tls_*` and `smtp_sasl_*` parameters `postconf` may set: they tune the relayhost
/// connection without weakening its login. Every other parameter of those prefixes is owned
/// (a prefix rule, not a list of the dangerous ones), so a parameter a newer Postfix adds is
/// refused until someone judges it, rather than slipping through; Postfix 3.7's are all
/// judged here or in [`RELAYHOST_OWNED`].
///
/// - logging, caches and connection reuse: `smtp_tls_loglevel`, `smtp_tls_note_starttls_offer`,
///   `smtp_tls_session_cache_*`, `smtp_tls_connection_reuse`, `smtp_sasl_auth_cache_*` (only
///   refused logins, their passwords hashed), `smtp_sasl_auth_soft_bounce`;
/// - a client certificate for the relayhost: `smtp_tls_{,d,ec}cert_file`,
///   `smtp_tls_{,d,ec}key_file`, `smtp_tls_chain_files`;
/// - `smtp_tls_fingerprint_cert_match`: the fingerprints trusted at level `fingerprint`, which
///   only the level field chooses, and which has no other field;
/// - `smtp_tls_servername` (SNI), `smtp_tls_scert_verifydepth`,
///   `smtp_tls_block_early_mail_reply`, `smtp_tls_force_insecure_host_tlsa_lookup`: they add
///   checks or change none;
/// - `smtp_sasl_mechanism_filter`: it only narrows what the relayhost offers (e.g. `login`
///   for a server whose GSSAPI fails); the security options still decide what may run outside
///   TLS.
const HARMLESS: &[&str] = &[
    "smtp_tls_loglevel",
    "smtp_tls_note_starttls_offer",
    "smtp_tls_session_cache_database",
    "smtp_tls_session_cache_timeout",
    "smtp_tls_connection_reuse",
    "smtp_tls_block_early_mail_reply",
    "smtp_tls_cert_file",
    "smtp_tls_key_file",
    "smtp_tls_dcert_file",
    "smtp_tls_dkey_file",
    "smtp_tls_eccert_file",
    "smtp_tls_eckey_file",
    "smtp_tls_chain_files",
    "smtp_tls_fingerprint_cert_match",
    "smtp_tls_servername",
    "smtp_tls_scert_verifydepth",
    "smtp_tls_force_insecure_host_tlsa_lookup",
    "smtp_sasl_auth_cache_name",
    "smtp_sasl_auth_cache_time",
    "smtp_sasl_auth_soft_bounce",
    "smtp_sasl_mechanism_filter",
];

/// What a parameter that `postconf` may not set protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protects {
    /// Who may relay (`OWNED`).
    Relay,
    /// The relayhost login (`RELAYHOST_OWNED`, the `smtp_tls_*` and `smtp_sasl_*` prefixes).
    RelayhostLogin,
}

/// What `name` protects and the field that owns it, when `postconf` may not set it.
fn rule(name: &str) -> Option<(Protects, &'static str)> {
    if let Some((_, owner)) = OWNED.iter().find(|(n, _)| *n == name) {
        return Some((Protects::Relay, owner));
    }
    if name.starts_with("smtpd_sasl_") {
        return Some((
            Protects::Relay,
            "the SASL users (saslUsersSecretRef, or client_sasl_passwd)",
        ));
    }
    if name.starts_with("smtpd_") && name.ends_with("_restrictions") {
        return Some((
            Protects::Relay,
            "mode or customRestrictions (and strictSender)",
        ));
    }
    if let Some((_, owner)) = RELAYHOST_OWNED.iter().find(|(n, _)| *n == name) {
        return Some((Protects::RelayhostLogin, owner));
    }
    if name.starts_with("lmtp_sasl_") {
        return Some((
            Protects::RelayhostLogin,
            "no field: an lmtp: route with this login would carry the relayhost's password or token without TLS",
        ));
    }
    if (name.starts_with("smtp_tls_") || name.starts_with("smtp_sasl_"))
        && !HARMLESS.contains(&name)
    {
        return Some((
            Protects::RelayhostLogin,
            "no field: a TLS or SASL parameter of the relayhost connection not known to be harmless",
        ));
    }
    None
}

/// The field that owns `name`, when `postconf` may not set it.
pub fn owner(name: &str) -> Option<&'static str> {
    rule(name).map(|(_, owner)| owner)
}

/// What `name` protects, when `postconf` may not set it.
pub fn protects(name: &str) -> Option<Protects> {
    rule(name).map(|(protects, _)| protects)
}

/// Refuses a `postconf` entry that decides who may relay or protects the relayhost login.
/// `field` names the entry.
pub fn check_postconf(field: &str, name: &str) -> ConfigResult<()> {
    match rule(name) {
        None => Ok(()),
        Some((protects, owner)) => {
            let what = match protects {
                Protects::Relay => "decides who may relay",
                Protects::RelayhostLogin => "protects the relayhost login",
            };
            Err(ConfigError::invalid(
                field,
                format!("{name} {what} and cannot be set here; it is set from {owner}"),
            ))
        }
    }
}

/// Refuses a `postconf` `queue_minfree` that would leave the spool without its reserve
/// (issue 40): 0 turns it off, and less than 1.5 times the `message_size_limit` in force is
/// never reached (smtpd refuses by itself below that, see
/// [`crate::postfix::main_cf::least_queue_minfree`]); a `$reference` cannot be checked nor
/// read by the relay's spool metrics. `field` names the `queue_minfree` entry; without one the
/// relay derives the reserve itself ([`crate::postfix::main_cf::spool_reserve`]).
pub fn check_spool_reserve(
    field: &str,
    postconf: &std::collections::BTreeMap<String, String>,
) -> ConfigResult<()> {
    use crate::postfix::main_cf;
    let Some(value) = postconf.get("queue_minfree") else {
        return Ok(());
    };
    let limit = main_cf::message_size_limit(postconf);
    let least = main_cf::least_queue_minfree(limit);
    let derived = main_cf::derived_spool_reserve(limit);
    let advice = format!(
        "the spool's reserve: smtpd answers 452 (retry later) to new mail while less than this is free on the spool volume, so it never fills; give at least {least} bytes (1.5 times message_size_limit, {limit}), or leave it out for the relay's own {derived} bytes (twice message_size_limit, at least {} bytes)",
        main_cf::SPOOL_RESERVE_FLOOR
    );
    let n = match value.trim().parse::<u64>() {
        Ok(n) => n,
        Err(_) => {
            return Err(ConfigError::invalid(
                field,
                format!("{value:?} is not a whole number of bytes: queue_minfree is {advice}"),
            ))
        }
    };
    if n == 0 {
        return Err(ConfigError::invalid(field, format!("0 turns off {advice}")));
    }
    if n < least {
        return Err(ConfigError::invalid(
            field,
            format!("{n} is less than 1.5 times message_size_limit, so it is never reached; queue_minfree is {advice}"),
        ));
    }
    Ok(())
}

/// The address families whose every address `networks` trusts (e.g. 0.0.0.0/0, or 0.0.0.0/1
/// with 128.0.0.0/1), as "IPv4" / "IPv6".
pub fn everyone_trusted(networks: &[IpNet]) -> Vec<&'static str> {
    IpNet::aggregate(&networks.to_vec())
        .into_iter()
        .filter(|n| n.prefix_len() == 0)
        .map(|n| match n {
            IpNet::V4(_) => "IPv4",
            IpNet::V6(_) => "IPv6",
        })
        .collect()
}

/// Refuses `networks` that trust every address of a family: an open relay.
pub fn check_networks(field: &str, networks: &[IpNet]) -> ConfigResult<()> {
    let all = everyone_trusted(networks);
    if all.is_empty() {
        return Ok(());
    }
    Err(ConfigError::invalid(
        field,
        format!(
            "the networks cover every {} address, so anyone could relay through this server; list only the client networks (e.g. the pod network 10.244.0.0/16)",
            all.join(" and ")
        ),
    ))
}

/// What Postfix actually runs with, as `postconf -x` prints it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effective {
    pub mynetworks: String,
    pub relay_restrictions: String,
    pub recipient_restrictions: String,
    /// `smtp_tls_security_level`: whether TLS towards the relayhost is required.
    pub tls_level: String,
    /// `smtp_sasl_auth_enable`: whether the relay logs in to the relayhost.
    pub sasl_auth_enable: String,
    /// `smtp_sasl_security_options`: which mechanisms may run outside TLS.
    pub sasl_security_options: String,
    /// `smtp_sasl_tls_security_options`: which may run inside TLS (not a clear-text question).
    pub sasl_tls_security_options: String,
    /// `smtp_tls_policy_maps`: a TLS level per destination, overriding the one above.
    pub tls_policy_maps: String,
    /// `smtp_tls_per_site`: the obsolete form of the policy maps, still obeyed.
    pub tls_per_site: String,
}

impl Effective {
    /// The parameters to ask `postconf -x` for, in the order [`Effective::from_postconf`] reads.
    pub const PARAMETERS: [&'static str; 9] = [
        "mynetworks",
        "smtpd_relay_restrictions",
        "smtpd_recipient_restrictions",
        "smtp_tls_security_level",
        "smtp_sasl_auth_enable",
        "smtp_sasl_security_options",
        "smtp_sasl_tls_security_options",
        "smtp_tls_policy_maps",
        "smtp_tls_per_site",
    ];

    /// Parses `name = value` lines.
    pub fn from_postconf(text: &str) -> Effective {
        let mut e = Effective::default();
        for line in text.lines() {
            let (name, value) = match line.split_once('=') {
                Some((n, v)) => (n.trim(), v.trim().to_string()),
                None => continue,
            };
            match name {
                "mynetworks" => e.mynetworks = value,
                "smtpd_relay_restrictions" => e.relay_restrictions = value,
                "smtpd_recipient_restrictions" => e.recipient_restrictions = value,
                "smtp_tls_security_level" => e.tls_level = value,
                "smtp_sasl_auth_enable" => e.sasl_auth_enable = value,
                "smtp_sasl_security_options" => e.sasl_security_options = value,
                "smtp_sasl_tls_security_options" => e.sasl_tls_security_options = value,
                "smtp_tls_policy_maps" => e.tls_policy_maps = value,
                "smtp_tls_per_site" => e.tls_per_site = value,
                _ => {}
            }
        }
        e
    }
}

/// Why the relayhost password (or OAuth2 token) could leave in clear text under `e`, or `None`
/// when it cannot. The last line of defence behind [`check_postconf`], as [`open_relay`] is
/// for the relay: whatever the inputs were, with a login either TLS is required
/// (`smtp_tls_security_level` encrypt or stronger; `dane` is not, it falls back to `may`
/// without TLSA records) or plain-text mechanisms stay inside TLS (`noplaintext` in
/// `smtp_sasl_security_options`), and no per-destination policy overrides the level.
///
/// `cleartext_chosen`: the fields chose a level of `none` or `may` with the login
/// ([`crate::settings::Settings::relayhost_password_in_clear`]); the relay then allows
/// plain-text mechanisms outside TLS on purpose, and the operator flags it
/// (`RelayhostPasswordProtected=False`), so only the policy maps are refused then.
pub fn relayhost_login_in_clear(e: &Effective, cleartext_chosen: bool) -> Option<String> {
    if !matches!(
        e.sasl_auth_enable.to_ascii_lowercase().as_str(),
        "yes" | "true"
    ) {
        return None;
    }
    for (name, value) in [
        ("smtp_tls_policy_maps", &e.tls_policy_maps),
        ("smtp_tls_per_site", &e.tls_per_site),
    ] {
        if !value.is_empty() {
            return Some(format!(
                "the relayhost login could be sent without TLS: {name} ({value}) can give the relayhost another TLS level than relayhost.tls.level"
            ));
        }
    }
    let tls_required = matches!(
        e.tls_level.as_str(),
        "encrypt" | "dane-only" | "fingerprint" | "verify" | "secure"
    );
    let plaintext_outside_tls = !list(&e.sasl_security_options).any(|o| o == "noplaintext");
    if tls_required || !plaintext_outside_tls || cleartext_chosen {
        return None;
    }
    Some(format!(
        "the relayhost password could be sent in clear text: smtp_tls_security_level is {:?} and smtp_sasl_security_options ({}) allows PLAIN and LOGIN outside TLS, yet relayhost.tls.level does not choose none or may",
        e.tls_level, e.sasl_security_options
    ))
}

/// Why an anonymous client outside `networks` could relay to an outside domain under `e`, or
/// could if a table, policy service, client certificate or DNS list the relay cannot read said
/// so, or `None` when it cannot. The latter is accepted only when the input vouched for them
/// (`tables_vouched`: `trustRestrictionTables`); a table the relay reads and finds permitting
/// strangers (`static:OK`) never is ([`restrictions::walk`] judges both lists).
pub fn open_relay(e: &Effective, tables_vouched: bool) -> Option<String> {
    let networks: Vec<IpNet> = list(&e.mynetworks).filter_map(parse_network).collect();
    // The worst client: when `networks` hold every address of a family, that family's clients
    // are all "inside"; otherwise some outside client exists.
    let everyone_inside = !everyone_trusted(&networks).is_empty();
    let relay = restrictions::split_braced(&e.relay_restrictions);
    let recipient = restrictions::split_braced(&e.recipient_restrictions);
    // Postfix checks both lists; an empty relay list means only the recipient list decides.
    let relay_says = if relay.is_empty() {
        Passes::Yes
    } else {
        passes(&restrictions::walk(&relay, everyone_inside))
    };
    let recipient_says = passes(&restrictions::walk(&recipient, everyone_inside));
    let rests_on = match (relay_says, recipient_says) {
        (Passes::No, _) | (_, Passes::No) => return None,
        (Passes::Yes, Passes::Yes) => Vec::new(),
        (Passes::Yes, Passes::If(entries)) | (Passes::If(entries), Passes::Yes) => entries,
        (Passes::If(mut a), Passes::If(b)) => {
            a.extend(b);
            a
        }
    };
    if rests_on.is_empty() {
        let why = if everyone_inside {
            format!("mynetworks ({}) holds every address", e.mynetworks)
        } else {
            format!(
                "smtpd_relay_restrictions ({}) and smtpd_recipient_restrictions ({}) permit it",
                e.relay_restrictions, e.recipient_restrictions
            )
        };
        return Some(format!(
            "refusing to start an open relay: an anonymous client outside the trusted networks could relay to any domain: {why}"
        ));
    }
    if tables_vouched {
        return None;
    }
    Some(format!(
        "refusing a relay that may be open: an anonymous client outside the trusted networks could relay to any domain if {} let it through, and nothing vouches for them (trustRestrictionTables, RELAY_TRUST_RESTRICTION_TABLES)",
        rests_on.join("; or if ")
    ))
}

/// Whether a stranger passes one restriction list.
enum Passes {
    Yes,
    No,
    /// If one of these (entries, with what they can permit) lets it through.
    If(Vec<String>),
}

fn passes(walk: &restrictions::Walk) -> Passes {
    match &walk.decision {
        Decision::Refused(_) if walk.rests_on.is_empty() => Passes::No,
        Decision::Refused(_) => Passes::If(
            walk.rests_on
                .iter()
                .map(|o| format!("{} ({})", o.entry, o.why()))
                .collect(),
        ),
        Decision::Permit(_) | Decision::Strangers(_) | Decision::RunsOut => Passes::Yes,
    }
}

fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split([',', ' ', '\t']).filter(|t| !t.is_empty())
}

/// A mynetworks entry as Postfix writes it (`10.0.0.0/8`, `[fd00::]/64`, `[::1]`); tables and
/// negations are not addresses.
fn parse_network(entry: &str) -> Option<IpNet> {
    let plain = entry.replace(['[', ']'], "");
    plain
        .parse::<IpNet>()
        .ok()
        .or_else(|| plain.parse::<std::net::IpAddr>().ok().map(IpNet::from))
        .map(|n| n.trunc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_safety_net_made_a_warning_is_no_safety_net() {
        let e = |relay: &str| Effective {
            mynetworks: "10.0.0.0/24".into(),
            relay_restrictions: relay.into(),
            recipient_restrictions: String::new(),
            ..Effective::default()
        };
        assert!(open_relay(
            &e("permit_mynetworks, warn_if_reject, reject_unauth_destination"),
            false
        )
        .is_some());
        assert!(open_relay(
            &e("permit_mynetworks, warn_if_reject, reject_unauth_destination, reject"),
            false
        )
        .is_none());
    }

    /// Issue 26: the start-time check assumed tables and policy services never permit, so a
    /// sender table saying OK before the safety net passed it. What permits strangers is an
    /// open relay; what the relay cannot read runs only when the input vouched for it; the
    /// relay's own recipient list (a routing regexp) changes neither.
    #[test]
    fn tables_before_the_safety_net_are_not_assumed_harmless() {
        let e = |relay: &str| Effective {
            mynetworks: "10.0.0.0/24".into(),
            relay_restrictions: relay.into(),
            recipient_restrictions: "check_recipient_access regexp:/run/pf/routing".into(),
            ..Effective::default()
        };
        for open in [
            "permit_mynetworks, permit_sasl_authenticated, check_sender_access inline:{example.net=OK}, reject_unauth_destination",
            "permit_mynetworks, check_sender_access inline:{ a.example=REJECT, example.net=OK }, reject_unauth_destination",
            "check_client_access static:OK, reject_unauth_destination",
            "check_helo_access static:{RELAY}, reject",
        ] {
            for vouched in [false, true] {
                let why = open_relay(&e(open), vouched).expect(open);
                assert!(
                    why.starts_with("refusing to start an open relay:"),
                    "{open}: {why}"
                );
            }
        }
        for unread in [
            "permit_mynetworks, check_sender_access hash:/etc/postfix/senders, reject_unauth_destination",
            "check_policy_service inet:127.0.0.1:10023, reject_unauth_destination",
            "permit_tls_all_clientcerts, reject",
            "permit_dnswl_client list.dnswl.org, defer_unauth_destination",
            "permit_mx_backup, reject_unauth_destination",
            "check_client_access inline:{mail.example.org=OK}, reject",
        ] {
            let why = open_relay(&e(unread), false).expect(unread);
            assert!(
                why.starts_with("refusing a relay that may be open:")
                    && why.contains("trustRestrictionTables"),
                "{unread}: {why}"
            );
            assert_eq!(open_relay(&e(unread), true), None, "{unread}");
        }
        for closed in [
            "permit_mynetworks, check_client_access inline:{10.0.0.9=OK, 192.0.2.1=OK}, reject_unauth_destination",
            "permit_mynetworks, reject_unauth_destination, check_sender_access hash:/x",
            "check_sasl_access hash:/x, permit_sasl_authenticated, reject",
        ] {
            assert_eq!(open_relay(&e(closed), false), None, "{closed}");
        }
    }

    /// Issue 40: a `queue_minfree` that leaves the spool without its reserve is refused,
    /// naming the entry and what to give; one that means something wins.
    #[test]
    fn a_spool_reserve_that_is_off_or_never_reached_is_refused() {
        let pc = |entries: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let refused = |entries: &[(&str, &str)]| {
            check_spool_reserve("spec.postconf.queue_minfree", &pc(entries))
                .expect_err("refused")
                .to_string()
        };
        let e = refused(&[("queue_minfree", "0")]);
        assert!(
            e.starts_with("spec.postconf.queue_minfree: 0 turns off the spool's reserve")
                && e.contains(
                    "give at least 15360000 bytes (1.5 times message_size_limit, 10240000)"
                )
                && e.contains("the relay's own 33554432 bytes"),
            "{e}"
        );
        // Postfix's own check (1.5 times the size limit) comes first: never reached.
        let e = refused(&[("queue_minfree", "15359999")]);
        assert!(
            e.contains("15359999 is less than 1.5 times message_size_limit"),
            "{e}"
        );
        let e = refused(&[
            ("message_size_limit", "52428800"),
            ("queue_minfree", "20000000"),
        ]);
        assert!(
            e.contains("at least 78643200 bytes") && e.contains("own 104857600 bytes"),
            "{e}"
        );
        let e = refused(&[("queue_minfree", "$message_size_limit")]);
        assert!(e.contains("is not a whole number of bytes"), "{e}");
        for ok in [
            pc(&[]),
            pc(&[("queue_minfree", "15360000")]),
            pc(&[("queue_minfree", " 1073741824 ")]),
            pc(&[("message_size_limit", "1000"), ("queue_minfree", "1500")]),
            // No size limit: any reserve above 0 means something.
            pc(&[("message_size_limit", "0"), ("queue_minfree", "1")]),
        ] {
            check_spool_reserve("q", &ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
    }

    #[test]
    fn the_login_lookups_and_the_log_format_the_metrics_read_are_owned() {
        for name in [
            "smtp_sender_dependent_authentication",
            "info_log_address_format",
            "lmtp_sasl_password_maps",
            "lmtp_sasl_auth_enable",
        ] {
            let err = check_postconf(&format!("postconf.{name}"), name)
                .expect_err(name)
                .to_string();
            assert!(err.contains(name) && err.contains("no field"), "{err}");
        }
        assert!(check_postconf("postconf.lmtp_tcp_port", "lmtp_tcp_port").is_ok());
    }
    use crate::postfix::layout::Layout;
    use crate::postfix::main_cf;
    use crate::settings::{
        Credentials, Mode, RelayPolicy, Relayhost, SaslUserSource, Settings, TlsLevel,
    };

    fn effective(networks: &str, relay: &str) -> Effective {
        Effective {
            mynetworks: networks.into(),
            relay_restrictions: relay.into(),
            recipient_restrictions: "check_recipient_access regexp:/x".into(),
            ..Effective::default()
        }
    }

    /// Settings with a relayhost password, `level` and `postconf`, as both input paths make
    /// them.
    fn with_login(level: Option<TlsLevel>, postconf: &[(&str, &str)]) -> Settings {
        Settings {
            hostname: None,
            domain: "example.net".into(),
            networks: vec!["10.0.0.0/24".parse().unwrap()],
            relay_domains: vec!["example.net".into()],
            relayhost: Relayhost {
                host: "smtp.example.net".into(),
                port: 587,
                mx_lookup: false,
                implicit_tls: false,
            },
            relayhost_credentials: Some(Credentials {
                login: "user".into(),
                password: "secret".into(),
            }),
            relayhost_oauth2: None,
            relayhost_tls_level: level,
            relayhost_tls_ca_file: Some("/ca.pem".into()),
            relayhost_delivery_interval_secs: None,
            postmaster: None,
            strict_sender: false,
            policy: RelayPolicy::Mode(Mode::Strict),
            trust_restriction_tables: false,
            sasl_users: SaslUserSource::None,
            inbound_tls: None,
            proxy_protocol_port: None,
            submission: Default::default(),
            headers: Default::default(),
            access: Default::default(),
            sandbox: None,
            client_limits: None,
            user_limits: None,
            postconf: postconf
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            postconf_field_prefix: "POSTCONF_".into(),
        }
    }

    /// What `postconf -x` would print for the main.cf the relay writes from `s`.
    fn effective_of(s: &Settings) -> Effective {
        let layout = Layout {
            config_dir: "/run/pf".into(),
            spool_dir: "/var/spool/postfix".into(),
            data_dir: "/data".into(),
            listen: "0.0.0.0:25".into(),
        };
        Effective::from_postconf(&main_cf::render(&main_cf::parameters(s, &layout)))
    }

    #[test]
    fn owned_parameters_name_their_field() {
        for (name, field) in [
            ("mynetworks", "networks"),
            ("relay_domains", "relayDomains"),
            ("smtpd_relay_restrictions", "customRestrictions"),
            ("smtpd_client_restrictions", "customRestrictions"),
            ("smtpd_sasl_auth_enable", "SASL users"),
            ("smtpd_tls_auth_only", "tlsSecretRef"),
        ] {
            let err = check_postconf("postconf", name).unwrap_err().to_string();
            assert!(err.contains(field), "{name}: {err}");
        }
        assert!(check_postconf("p", "message_size_limit").is_ok());
        assert!(check_postconf("p", "smtpd_tls_security_level").is_ok());
    }

    /// Issue 26: `postconf: {smtp_tls_security_level: none, smtp_sasl_security_options:
    /// noanonymous}` sent the relayhost password in clear text while the status said it went
    /// only inside TLS. What protects the login belongs to its fields now.
    #[test]
    fn relayhost_login_parameters_name_their_field() {
        let level = "relayhost.tls.level";
        let ca = "caSecretKeyRef";
        let login = "credentialsSecretRef";
        let floor = "TLS 1.2";
        for (name, field) in [
            ("smtp_tls_security_level", level),
            ("smtp_tls_security_level", "RELAY_USE_TLS"),
            ("smtp_use_tls", level),
            ("smtp_enforce_tls", level),
            ("smtp_tls_enforce_peername", level),
            ("smtp_tls_policy_maps", level),
            ("smtp_tls_per_site", level),
            ("smtp_tls_dane_insecure_mx_policy", level),
            ("smtp_sasl_security_options", level),
            ("smtp_sasl_tls_security_options", level),
            ("smtp_sasl_tls_verified_security_options", level),
            ("smtp_sasl_auth_enable", login),
            ("smtp_sasl_password_maps", login),
            ("smtp_sasl_password_maps", "oauth2"),
            ("smtp_sasl_type", login),
            ("smtp_sasl_path", login),
            ("smtp_tls_CAfile", ca),
            ("smtp_tls_CApath", "RELAY_TLS_CA"),
            ("smtp_tls_trust_anchor_file", ca),
            ("tls_append_default_CA", ca),
            ("smtp_tls_verify_cert_match", "relayhost.host"),
            ("smtp_tls_secure_cert_match", "relayhost.host"),
            ("smtp_tls_fingerprint_digest", "SHA-256"),
            ("smtp_tls_wrappermode", "implicitTls"),
            ("smtp_tls_wrappermode", "RELAY_SMTPS"),
            ("smtp_tls_protocols", floor),
            ("smtp_tls_mandatory_protocols", floor),
            ("smtp_tls_ciphers", floor),
            ("smtp_tls_mandatory_ciphers", floor),
            ("smtp_tls_exclude_ciphers", floor),
            ("smtp_tls_mandatory_exclude_ciphers", floor),
            ("tls_medium_cipherlist", floor),
            ("tls_null_cipherlist", floor),
            ("tls_config_file", floor),
            ("tls_ssl_options", floor),
            ("relayhost", "RELAY_HOST"),
            // A parameter a newer Postfix adds is refused until it is judged harmless.
            ("smtp_tls_enable_rpk", "not known to be harmless"),
            ("smtp_sasl_something_new", "not known to be harmless"),
        ] {
            let err = check_postconf("POSTCONF_x", name)
                .expect_err(name)
                .to_string();
            assert!(
                err.contains(field)
                    && err.contains(name)
                    && err.contains("protects the relayhost login"),
                "{name}: {err}"
            );
        }
    }

    /// Tuning that cannot weaken the login stays open to `postconf`.
    #[test]
    fn harmless_relayhost_tuning_is_accepted() {
        for name in [
            "smtp_tls_loglevel",
            "smtp_tls_session_cache_timeout",
            "smtp_tls_session_cache_database",
            "smtp_tls_connection_reuse",
            "smtp_tls_block_early_mail_reply",
            "smtp_tls_note_starttls_offer",
            "smtp_tls_cert_file",
            "smtp_tls_key_file",
            "smtp_tls_chain_files",
            "smtp_tls_fingerprint_cert_match",
            "smtp_tls_servername",
            "smtp_tls_scert_verifydepth",
            "smtp_sasl_mechanism_filter",
            "smtp_sasl_auth_soft_bounce",
            "smtp_sasl_auth_cache_name",
            "smtp_sasl_auth_cache_time",
            "smtp_connection_cache_destinations",
            "smtp_dns_support_level",
            "lmtp_tls_security_level",
            "tlsproxy_client_loglevel",
            "tls_eecdh_auto_curves",
        ] {
            assert_eq!(owner(name), None, "{name}");
            assert!(check_postconf("p", name).is_ok(), "{name}");
        }
    }

    #[test]
    fn networks_trusting_everyone() {
        let nets = |s: &[&str]| s.iter().map(|n| n.parse().unwrap()).collect::<Vec<IpNet>>();
        assert!(check_networks("n", &nets(&["10.0.0.0/8", "fd00::/8"])).is_ok());
        assert!(check_networks("n", &nets(&["0.0.0.0/0"])).is_err());
        assert!(check_networks("n", &nets(&["::/0"])).is_err());
        let err = check_networks("n", &nets(&["0.0.0.0/1", "128.0.0.0/1"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("every IPv4 address"), "{err}");
    }

    #[test]
    fn the_modes_are_closed_and_permit_is_open() {
        use crate::postfix::restrictions::relay_restrictions;
        for mode in Mode::ALL {
            let e = effective(
                "10.0.0.0/8, [fd00::]/64",
                &relay_restrictions(mode).join(", "),
            );
            assert_eq!(open_relay(&e, false), None, "{mode}");
        }
        assert!(open_relay(&effective("10.0.0.0/8", "permit"), false).is_some());
        assert!(open_relay(&effective("10.0.0.0/8", "permit_sasl_authenticated"), false).is_some());
        let everyone = effective("0.0.0.0/0", "permit_mynetworks, reject");
        assert!(open_relay(&everyone, false)
            .unwrap()
            .contains("every address"));
        let everyone6 = effective("[::]/0", "permit_mynetworks, reject_unauth_destination");
        assert!(open_relay(&everyone6, false).is_some());
        // Postfix's own default, and a list that ends without a decision.
        let default = effective(
            "127.0.0.0/8",
            "permit_mynetworks, permit_sasl_authenticated, defer_unauth_destination",
        );
        assert_eq!(open_relay(&default, false), None);
    }

    #[test]
    fn postconf_output_is_parsed() {
        let e = Effective::from_postconf(
            "mynetworks = [::1]/128, 127.0.0.2/32\nsmtpd_relay_restrictions = permit\nsmtpd_recipient_restrictions =\nsmtp_tls_security_level = encrypt\nsmtp_sasl_auth_enable = yes\nsmtp_sasl_security_options = noanonymous, noplaintext\nsmtp_sasl_tls_security_options = noanonymous\nsmtp_tls_policy_maps =\nsmtp_tls_per_site = hash:/x\n",
        );
        assert_eq!(e.mynetworks, "[::1]/128, 127.0.0.2/32");
        assert_eq!(e.relay_restrictions, "permit");
        assert_eq!(e.recipient_restrictions, "");
        assert_eq!(e.tls_level, "encrypt");
        assert_eq!(e.sasl_auth_enable, "yes");
        assert_eq!(e.sasl_security_options, "noanonymous, noplaintext");
        assert_eq!(e.sasl_tls_security_options, "noanonymous");
        assert_eq!(e.tls_policy_maps, "");
        assert_eq!(e.tls_per_site, "hash:/x");
        for name in Effective::PARAMETERS {
            assert!(
                name == "mynetworks" || name.starts_with("smtpd_") || owner(name).is_some(),
                "{name}: read at start, so owned by a field"
            );
        }
    }

    /// Every parameter the relay writes from the relayhost fields is theirs: `postconf` cannot
    /// undo one of them; what it may still tune there is in `HARMLESS`.
    #[test]
    fn what_the_relayhost_fields_write_is_owned() {
        let mut s = with_login(Some(TlsLevel::Verify), &[]);
        s.relayhost.implicit_tls = true;
        let layout = Layout {
            config_dir: "/run/pf".into(),
            spool_dir: "/var/spool/postfix".into(),
            data_dir: "/data".into(),
            listen: "0.0.0.0:25".into(),
        };
        let written: Vec<String> = main_cf::parameters(&s, &layout)
            .into_iter()
            .map(|(name, _)| name)
            .filter(|name| {
                name == "relayhost"
                    || name.starts_with("smtp_tls_")
                    || name.starts_with("smtp_sasl_")
            })
            .collect();
        for name in [
            "relayhost",
            "smtp_sasl_auth_enable",
            "smtp_sasl_password_maps",
            "smtp_sasl_security_options",
            "smtp_sasl_tls_security_options",
            "smtp_tls_security_level",
            "smtp_tls_wrappermode",
            "smtp_tls_CAfile",
        ] {
            assert!(written.iter().any(|w| w == name), "{name} is written");
            assert_eq!(protects(name), Some(Protects::RelayhostLogin), "{name}");
        }
        for name in &written {
            assert!(
                owner(name).is_some() || HARMLESS.contains(&name.as_str()),
                "{name}"
            );
        }
        // At the default level with a login, the names the certificate must carry too.
        let secure = main_cf::parameters(&with_login(None, &[]), &layout);
        assert!(secure
            .iter()
            .any(|(n, v)| n == "smtp_tls_secure_cert_match" && v == "nexthop"));
        assert_eq!(
            protects("smtp_tls_secure_cert_match"),
            Some(Protects::RelayhostLogin)
        );
        // The relay's own tuning stays the user's to change.
        assert!(written.iter().any(|w| w == "smtp_tls_connection_reuse"));
        assert!(owner("smtp_tls_connection_reuse").is_none());
        assert!(owner("smtp_tls_session_cache_database").is_none());
    }

    /// The relay's own configurations never trip the start-time check: with a login, TLS is
    /// required or plain-text mechanisms stay inside it, unless the fields chose none or may.
    #[test]
    fn the_relays_own_login_configurations_keep_the_password_in_tls() {
        for level in TlsLevel::ALL.map(Some).into_iter().chain([None]) {
            let s = with_login(level, &[]);
            let e = effective_of(&s);
            assert_eq!(e.sasl_auth_enable, "yes");
            assert_eq!(
                relayhost_login_in_clear(&e, s.relayhost_password_in_clear()),
                None,
                "{level:?}"
            );
            if s.relayhost_password_in_clear() {
                // The explicit none/may is what allows plain text: without it, refused.
                assert!(
                    relayhost_login_in_clear(&e, false).is_some(),
                    "{level:?}: plain text outside TLS is only for an explicit choice"
                );
            }
        }
        // No login, nothing to protect.
        let mut s = with_login(Some(TlsLevel::None), &[]);
        s.relayhost_credentials = None;
        assert_eq!(relayhost_login_in_clear(&effective_of(&s), false), None);
    }

    /// Issue 26's configuration, had it got past [`check_postconf`]: refused at start.
    #[test]
    fn issue_26_is_refused_at_start_too() {
        let s = with_login(
            None,
            &[
                ("smtp_tls_security_level", "none"),
                ("smtp_sasl_security_options", "noanonymous"),
            ],
        );
        assert!(!s.relayhost_password_in_clear(), "the fields say secure");
        let why = relayhost_login_in_clear(&effective_of(&s), false).expect("refused");
        assert!(
            why.contains("clear text") && why.contains("\"none\"") && why.contains("noanonymous"),
            "{why}"
        );
        // TLS off alone keeps plain-text mechanisms out (noplaintext): mail waits, the
        // password stays home.
        let s = with_login(None, &[("smtp_tls_security_level", "none")]);
        assert_eq!(relayhost_login_in_clear(&effective_of(&s), false), None);
        // A policy table could give the relayhost any level: refused even with none or may.
        for chosen in [false, true] {
            let s = with_login(
                Some(TlsLevel::May),
                &[(
                    "smtp_tls_policy_maps",
                    "inline:{[smtp.example.net]:587=none}",
                )],
            );
            let why = relayhost_login_in_clear(&effective_of(&s), chosen).expect("refused");
            assert!(why.contains("smtp_tls_policy_maps"), "{why}");
        }
        let per_site = Effective {
            sasl_auth_enable: "yes".into(),
            tls_level: "encrypt".into(),
            sasl_security_options: "noanonymous, noplaintext".into(),
            tls_per_site: "hash:/etc/postfix/tls_per_site".into(),
            ..Effective::default()
        };
        assert!(relayhost_login_in_clear(&per_site, false).is_some());
    }
}
