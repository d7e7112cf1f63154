//! The mapping from settings to Postfix parameters. No other module writes a parameter name.

use std::collections::BTreeMap;
use std::path::Path;

use ipnet::IpNet;

use crate::postfix::layout::{Layout, POLICY_SOCKET};
use crate::postfix::{access, restrictions, sandbox};
use crate::settings::{
    self, HeaderPolicy, Limits, Relayhost, SaslUserSource, Settings, TlsLevel, TlsMinVersion,
};

/// Debian's shared files (postfix-files, dynamicmaps.cf) stay where the package put them while
/// the configuration lives elsewhere.
pub const META_DIRECTORY: &str = "/etc/postfix";

/// Debian's CA bundle, used to verify the relayhost when no CA file is given.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The hashed certificate directory that holds [`SYSTEM_CA_BUNDLE`]'s certificates.
pub const SYSTEM_CA_DIR: &str = "/etc/ssl/certs";

/// Notices sent to the postmaster: Postfix's own default, the problems only the postmaster can
/// fix. The original image also sent `policy` and `protocol` (a transcript of every refused
/// client), which lets anyone knocking at the relay double its traffic to the relayhost; the
/// seed's list can be restored with `postconf: {notify_classes: ...}` (see the README).
const NOTIFY_CLASSES: &str = "resource, software";

/// What no client may negotiate, whatever `TlsMinVersion` allows: no authentication (anonymous
/// DH, which Postfix's own lists keep for opportunistic TLS), no encryption, export grade, RC4,
/// DES and 3DES (Sweet32), MD5 MACs; and pre-shared-key and SRP suites, which the relay has no
/// keys for. OpenSSL cipher-string names, as `smtpd_tls_exclude_ciphers` takes them.
const NEVER_CIPHERS: &str = "aNULL, eNULL, EXPORT, RC4, DES, 3DES, MD5, PSK, SRP";

/// Besides [`NEVER_CIPHERS`], from TLS 1.2 on: every suite with a MAC of its own (the CBC
/// suites: `SHA1`, and the TLS 1.2 CBC ones with `SHA256`/`SHA384`; the AEAD suites' MAC is
/// `AEAD`, so GCM, CCM and ChaCha20-Poly1305 stay) and static RSA key exchange (`kRSA`: no
/// forward secrecy). What is left at TLS 1.2 is ECDHE and DHE with AEAD ciphers, which a
/// scanner grades clean; TLS 1.3's own suites are OpenSSL's defaults, all AEAD.
const MODERN_EXCLUDED: &str = "SHA1, SHA256, SHA384, kRSA";

/// The parameters that set the inbound TLS floor (protocols, ciphers, who picks the suite).
/// `postconf` may set them; a spec that does is flagged by the operator, as the floor is then
/// the user's (see [`inbound_tls_overridden`]).
pub const INBOUND_TLS_FLOOR: [&str; 9] = [
    "smtpd_tls_protocols",
    "smtpd_tls_mandatory_protocols",
    "smtpd_tls_ciphers",
    "smtpd_tls_mandatory_ciphers",
    "smtpd_tls_exclude_ciphers",
    "smtpd_tls_mandatory_exclude_ciphers",
    "tls_preempt_cipherlist",
    "smtpd_tls_eecdh_grade",
    "smtpd_tls_dh1024_param_file",
];

/// The `postconf` entries that replace part of the inbound TLS floor, by name.
pub fn inbound_tls_overridden<'a>(postconf: impl IntoIterator<Item = &'a String>) -> Vec<&'a str> {
    postconf
        .into_iter()
        .map(String::as_str)
        .filter(|name| INBOUND_TLS_FLOOR.contains(name))
        .collect()
}

/// The inbound TLS floor for `min`: (`smtpd_tls_protocols`, `smtpd_tls_ciphers` grade,
/// `smtpd_tls_exclude_ciphers`). Mandatory TLS (`smtpd_tls_security_level = encrypt` through
/// `postconf`) gets the same.
pub fn inbound_tls_floor(min: TlsMinVersion) -> (&'static str, &'static str, String) {
    let protocols = match min {
        TlsMinVersion::Tls1_0 => ">=TLSv1",
        TlsMinVersion::Tls1_1 => ">=TLSv1.1",
        TlsMinVersion::Tls1_2 => ">=TLSv1.2",
        TlsMinVersion::Tls1_3 => ">=TLSv1.3",
    };
    if min.is_legacy() {
        // TLS 1.0 and 1.1 have only CBC suites with SHA-1 MACs (and RC4, excluded): what the
        // legacy clients need stays, the rest of the exclusions too.
        (protocols, "medium", NEVER_CIPHERS.to_string())
    } else {
        (
            protocols,
            "high",
            format!("{NEVER_CIPHERS}, {MODERN_EXCLUDED}"),
        )
    }
}

/// `relayhost` as Postfix writes it: brackets turn off the MX lookup.
pub fn relayhost_value(relayhost: &Relayhost) -> String {
    if relayhost.mx_lookup {
        format!("{}:{}", relayhost.host, relayhost.port)
    } else {
        format!("[{}]:{}", relayhost.host, relayhost.port)
    }
}

/// The names the relayhost's certificate must carry at level `secure`
/// (`smtp_tls_secure_cert_match`). A relayhost used as given (`[host]`): exactly its name, or
/// for an IP address its IP subjectAltName (OpenSSL takes an address for an address: with
/// Postfix's default `nexthop, dot-nexthop` an IP relayhost could never match, as the
/// `.10.1.0.1` it adds is then checked too). With MX lookups, Postfix's default: the domain or
/// a host under it, as the MX hosts' own names come from DNS, which nothing authenticates.
pub fn secure_cert_match(relayhost: &Relayhost) -> &'static str {
    if relayhost.mx_lookup && !settings::is_ip_address(&relayhost.host) {
        "nexthop, dot-nexthop"
    } else {
        "nexthop"
    }
}

/// A network as mynetworks reads it: IPv6 addresses in brackets (`[fd00::]/64`). Unbracketed,
/// Postfix takes `fd00::/64` for a `type:table` lookup and fails every client with 451.
pub fn network_value(net: &IpNet) -> String {
    match net {
        IpNet::V4(v4) => v4.to_string(),
        IpNet::V6(v6) => format!("[{}]/{}", v6.addr(), v6.prefix_len()),
    }
}

/// Postfix's default `message_size_limit` (`postconf -d`), which the relay keeps.
pub const DEFAULT_MESSAGE_SIZE_LIMIT: u64 = 10_240_000;

/// The least spool reserve the relay derives, whatever the size limit (and without one):
/// room for what Postfix writes itself while smtpd refuses new mail (defer and bounce logs,
/// notices to the postmaster, the queue manager's work).
pub const SPOOL_RESERVE_FLOOR: u64 = 32 * 1024 * 1024;

/// The `message_size_limit` in force: `postconf`'s when it is a number, else Postfix's
/// default (also for a `$reference`, which Postfix expands and the relay cannot). 0 is no
/// limit.
pub fn message_size_limit(postconf: &BTreeMap<String, String>) -> u64 {
    postconf
        .get("message_size_limit")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(DEFAULT_MESSAGE_SIZE_LIMIT)
}

/// The least `queue_minfree` that means anything: smtpd refuses `MAIL FROM` by itself while
/// the queue file system has less than 1.5 times `message_size_limit` free (postconf(5),
/// queue_minfree), so a smaller reserve is never reached; and at least one byte, as 0 turns
/// the reserve off.
pub fn least_queue_minfree(message_size_limit: u64) -> u64 {
    (message_size_limit.saturating_mul(3).div_ceil(2)).max(1)
}

/// The spool reserve (`queue_minfree`): smtpd answers `452 4.3.1 Insufficient system storage`
/// to new mail while the spool's volume has less free space than this, so the volume never
/// fills and what got its 250 stays intact. `postconf`'s `queue_minfree` when given (checked
/// by `relay_guard::check_spool_reserve`), else twice `message_size_limit` (a session that
/// passed the check still writes one whole message; the same again stays for Postfix's own
/// files and concurrent sessions) and at least [`SPOOL_RESERVE_FLOOR`].
pub fn spool_reserve(postconf: &BTreeMap<String, String>) -> u64 {
    if let Some(n) = postconf
        .get("queue_minfree")
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        return n;
    }
    derived_spool_reserve(message_size_limit(postconf))
}

/// The reserve the relay derives for a `message_size_limit` (see [`spool_reserve`]).
pub fn derived_spool_reserve(message_size_limit: u64) -> u64 {
    message_size_limit
        .saturating_mul(2)
        .max(SPOOL_RESERVE_FLOOR)
}

/// Why a spool volume of `volume` bytes is too small for the reserve (see [`spool_reserve`]):
/// at least half of it must hold mail, or smtpd would refuse nearly everything. `None` when
/// it is large enough.
pub fn spool_volume_problem(volume: u64, postconf: &BTreeMap<String, String>) -> Option<String> {
    let reserve = spool_reserve(postconf);
    let least = reserve.saturating_mul(2);
    (volume < least).then(|| {
        let mib = |b: u64| b.div_ceil(1024 * 1024);
        format!(
            "leaves no room for mail: the relay keeps {} MiB of it free (twice message_size_limit, at least {} MiB; queue_minfree when set) and refuses new mail below that; give at least {}Mi, or lower message_size_limit",
            mib(reserve),
            mib(SPOOL_RESERVE_FLOOR),
            mib(least)
        )
    })
}

/// All main.cf parameters, in a stable order; user overrides (`postconf`) come last and win.
#[allow(
    clippy::too_many_lines,
    reason = "one line per main.cf parameter: the table reads best whole"
)]
pub fn parameters(s: &Settings, layout: &Layout) -> Vec<(String, String)> {
    let mut p = Params::default();
    p.set("compatibility_level", "3.6");
    p.set("queue_directory", layout.spool_dir.display());
    p.set("data_directory", layout.postfix_data_dir().display());
    // Queue IDs unique across instances and time (not derived from the inode number), so a
    // spool's messages can be moved to or drained by another instance without clashing.
    p.set("enable_long_queue_ids", "yes");
    p.set("meta_directory", META_DIRECTORY);
    p.set("maillog_file", "/dev/stdout");
    p.set("maillog_file_prefixes", "/var, /dev/stdout");
    p.set("inet_interfaces", "all");
    // Both families, so an IPv6 or dual-stack pod is reachable (see master_cf::service_name),
    // and IPv6 clients can be matched by mynetworks.
    p.set("inet_protocols", "all");
    p.set("biff", "no");
    p.set("append_dot_mydomain", "no");
    p.set("readme_directory", "no");
    p.set("smtputf8_enable", "no");
    p.set("disable_vrfy_command", "yes");
    p.set("smtpd_banner", "$myhostname ESMTP $mail_name RELAY");
    // SMTP smuggling: only <CR><LF>.<CR><LF> ends a message, a bare <LF> inside it is read as
    // <CR><LF>. Postfix exempts $mynetworks by default, which for a relay is every client that
    // matters, so the exemption list is emptied. `reject` (refuse any bare <LF>) is stricter
    // but breaks applications that send mixed line endings; it stays a `postconf` choice.
    p.set("smtpd_forbid_bare_newline", "normalize");
    p.set("smtpd_forbid_bare_newline_exclusions", "");
    // A full spool refuses cleanly (issue 40): smtpd answers 452 (retry later) while less than
    // the reserve is free, before the volume fills and Postfix fails writing what it accepted.
    // A `postconf` queue_minfree replaces it below.
    p.set("queue_minfree", spool_reserve(&s.postconf));

    // Identity and what is relayed where.
    if let Some(hostname) = &s.hostname {
        p.set("myhostname", hostname);
    }
    p.set("mydomain", &s.domain);
    p.set("myorigin", "$mydomain");
    // A relay never delivers locally: every domain, its own included, goes to the relayhost.
    p.set("mydestination", "");
    p.set("local_recipient_maps", "");
    p.set(
        "local_transport",
        "error:5.1.1 local delivery is disabled on this relay",
    );
    p.set("alias_maps", "");
    p.set("alias_database", "");
    p.set("relay_domains", s.relay_domains.join(", "));
    p.set(
        "mynetworks",
        s.networks
            .iter()
            .map(network_value)
            .collect::<Vec<_>>()
            .join(", "),
    );
    p.set("relayhost", relayhost_value(&s.relayhost));
    p.set(
        "smtpd_relay_restrictions",
        restrictions::policy_restrictions(&s.policy).join(", "),
    );
    let routing = format!(
        "check_recipient_access regexp:{}",
        layout.routing_table().display()
    );
    p.set(
        "smtpd_recipient_restrictions",
        [
            Some(routing),
            access::recipient_restriction(&s.access, layout),
            s.user_limits.is_some().then(user_limits_restriction),
        ]
        .into_iter()
        .flatten()
        .chain(sandbox::recipient_restrictions(s.sandbox.as_ref(), layout))
        .collect::<Vec<_>>()
        .join(", "),
    );
    for (name, value) in sandbox::parameters(s.sandbox.as_ref()) {
        p.set(name, value);
    }
    for (name, value) in client_limits(s.client_limits.as_ref()) {
        p.set(name, value);
    }
    for (name, value) in user_limits(s.user_limits.as_ref()) {
        p.set(name, value);
    }
    if let Some(list) = access::sender_restrictions(s, layout) {
        p.set("smtpd_sender_restrictions", list);
    }
    if let Some(map) = access::sender_login_maps(&s.access, layout) {
        p.set(access::SENDER_LOGIN_MAPS, map);
    }
    if let Some(milters) = access::milters(&s.access) {
        p.set(access::MILTERS, milters);
    }

    let postmaster = s
        .postmaster
        .clone()
        .unwrap_or_else(|| format!("postmaster@{}", s.domain));
    p.set("notify_classes", NOTIFY_CLASSES);
    for recipient in [
        "bounce_notice_recipient",
        "2bounce_notice_recipient",
        "delay_notice_recipient",
        "error_notice_recipient",
    ] {
        p.set(recipient, &postmaster);
    }

    // Clients authenticating to us.
    if s.sasl_users != SaslUserSource::None {
        p.set("smtpd_sasl_auth_enable", "yes");
        p.set("smtpd_sasl_type", "cyrus");
        p.set("smtpd_sasl_path", "smtpd");
        p.set("cyrus_sasl_config_path", layout.sasl_config_dir().display());
        p.set("smtpd_sasl_local_domain", "$mydomain");
        p.set("smtpd_sasl_security_options", "noanonymous");
        p.set("broken_sasl_auth_clients", "yes");
    }
    match &s.inbound_tls {
        Some(tls) => {
            p.set("smtpd_tls_cert_file", tls.cert_file.display());
            p.set("smtpd_tls_key_file", tls.key_file.display());
            p.set("smtpd_tls_security_level", "may");
            // Passwords never cross the network in clear text once we can offer TLS.
            p.set("smtpd_tls_auth_only", "yes");
            // And the TLS they cross in is one a scanner grades clean (issue 26): Postfix's
            // defaults take TLS 1.0 and 1.1, anonymous suites, CBC with SHA-1, and the
            // client's order. Every smtpd reads these, the PROXY-protocol port's too.
            let (protocols, grade, excluded) = inbound_tls_floor(tls.min_version);
            for prefix in ["smtpd_tls_", "smtpd_tls_mandatory_"] {
                p.set(&format!("{prefix}protocols"), protocols);
                p.set(&format!("{prefix}ciphers"), grade);
                p.set(&format!("{prefix}exclude_ciphers"), &excluded);
            }
            // The server's order, strongest first, not the client's (for smtpd only: the
            // smtp client ignores it).
            p.set("tls_preempt_cipherlist", "yes");
        }
        None => p.set("smtpd_tls_security_level", "none"),
    }

    // Us authenticating to the relayhost.
    if s.logs_in() {
        p.set("smtp_sasl_auth_enable", "yes");
        if s.relayhost_oauth2.is_some() {
            // The supervisor answers with the mailbox and a current token, which the relay's
            // own XOAUTH2 mechanism sends (image/sasl-xoauth2); Cyrus finds it through
            // SASL_PATH, which Postfix passes to its smtp processes.
            p.set(
                "smtp_sasl_password_maps",
                format!(
                    "socketmap:unix:{}:xoauth2",
                    layout.oauth2_socket().display()
                ),
            );
            p.set("smtp_sasl_mechanism_filter", "xoauth2");
            p.set(
                "import_environment",
                format!(
                    "MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C POSTLOG_SERVICE POSTLOG_HOSTNAME SASL_PATH={}:{}",
                    crate::postfix::layout::sasl_plugin_dir().display(),
                    crate::postfix::layout::SYSTEM_SASL_PLUGIN_DIR
                ),
            );
        } else {
            p.set(
                "smtp_sasl_password_maps",
                format!("texthash:{}", layout.relayhost_passwd().display()),
            );
        }
        // Plain-text mechanisms (PLAIN, LOGIN) only inside TLS, unless the user chose a level
        // that allows a session without it (`none`, `may`): then the choice is theirs, and
        // flagged (Settings::relayhost_password_in_clear).
        let unencrypted = if s.relayhost_password_in_clear() {
            "noanonymous"
        } else {
            "noanonymous, noplaintext"
        };
        p.set("smtp_sasl_security_options", unencrypted);
        p.set("smtp_sasl_tls_security_options", "noanonymous");
    }
    let level = s.relayhost_tls();
    p.set("smtp_tls_security_level", level.as_str());
    if s.logs_in() {
        // The login travels over TLS 1.2 or newer, never a suite without authentication,
        // encryption or a sound cipher: Postfix's own floor for the smtp client lets an old
        // relayhost negotiate TLS 1.0 with CBC-SHA1. At the levels that require TLS
        // (encrypt and above) these are the ones that apply.
        p.set("smtp_tls_mandatory_protocols", ">=TLSv1.2");
        p.set("smtp_tls_mandatory_exclude_ciphers", NEVER_CIPHERS);
    }
    if level == TlsLevel::Secure {
        p.set(
            "smtp_tls_secure_cert_match",
            secure_cert_match(&s.relayhost),
        );
    }
    if s.relayhost.implicit_tls {
        p.set("smtp_tls_wrappermode", "yes");
    }
    match &s.relayhost_tls_ca_file {
        // Every smtp process start parses a CAfile whole (the system bundle: ~150 certificates,
        // tens of milliseconds), even at level `may` where nothing is verified; with smtp
        // processes recycled every 100 deliveries that cost ~20% more CPU per message than a
        // bare relay. The bundle's directory holds the same certificates hashed
        // (update-ca-certificates writes both), which OpenSSL reads only when it verifies.
        Some(ca) if ca.as_path() == Path::new(SYSTEM_CA_BUNDLE) => {
            p.set("smtp_tls_CApath", SYSTEM_CA_DIR);
        }
        Some(ca) => p.set("smtp_tls_CAfile", ca.display()),
        None => {}
    }
    p.set(
        "smtp_tls_session_cache_database",
        format!("btree:{}/smtp_scache", layout.postfix_data_dir().display()),
    );
    // Deliveries to the relayhost share connections: kept open between deliveries even without
    // a backlog (Postfix matches the relayhost's bare name, without brackets or port), TLS ones
    // too (through tlsproxy), so one handshake and one login serve many messages: 1.33 times
    // the messages per second through STARTTLS with 20 clients, 1.35 with one (BENCHMARKS.md).
    // An IPv6 address cannot be listed (Postfix would read "2001:db8::1" as a type:table):
    // such a relayhost keeps the on-demand cache only.
    if !s.relayhost.host.contains(':') {
        p.set("smtp_connection_cache_destinations", &s.relayhost.host);
    }
    p.set("smtp_tls_connection_reuse", "yes");
    // Pacing, for a relayhost that takes only so many messages a minute from a mailbox
    // (Microsoft 365: 30): with a rate delay the queue manager hands the relayhost one message
    // at a time, at most one every `interval`. The cached connection outlives the delay, so one
    // login serves many messages; and, as Postfix advises with a rate delay, a larger failed
    // cohort limit keeps one failed connection from deferring all mail at once.
    if let Some(interval) = s.relayhost_delivery_interval_secs {
        for (name, value) in crate::config_file::pacing(interval) {
            p.set(name, value);
        }
    }
    if smtp_header_checks(&s.headers).is_some() {
        p.set(
            HEADER_CHECKS_PARAMETER,
            format!("regexp:{}", layout.header_checks().display()),
        );
    }

    for (name, value) in &s.postconf {
        p.set(name, value);
    }
    p.0
}

/// The Postfix parameter that `headers` sets: checks of the smtp client, so they apply to what
/// leaves the relay, mail already queued included, and never to what clients see.
pub const HEADER_CHECKS_PARAMETER: &str = "smtp_header_checks";

/// The regexp table of [`HEADER_CHECKS_PARAMETER`] for `headers`; `None` when it has nothing
/// to do (the client revealed, nothing removed).
///
/// The client's part of a Received line Postfix wrote, `Received: from HELO (NAME [ADDRESS])
/// ... by HOST (Postfix) with PROTO id QUEUEID ...`, is cut: what is left starts at `by`. The
/// match is greedy, so it cuts at the last ` by HOST (Postfix) with ` of the header: Postfix's
/// own is after the client's HELO name (a client may write anything there), so the client's
/// part always goes; a recipient address after it that spells one cuts more, never less. A
/// header spans its folded lines (regexp tables see it whole, and `.` matches their line
/// breaks), which REPLACE keeps. Lines of other Postfix servers the message went through inside
/// the platform are cut the same way. Removed headers are matched by name, any case.
pub fn smtp_header_checks(headers: &HeaderPolicy) -> Option<String> {
    if headers.reveal_client && headers.remove.is_empty() {
        return None;
    }
    let mut table =
        String::from("# Generated by smtp-relay: headers of the mail that leaves the relay.\n");
    if !headers.reveal_client {
        table.push_str(
            "/^Received: from .*[[:space:]]by ([^[:space:]]+) \\(Postfix\\) with (.*)$/ REPLACE Received: by ${1} (Postfix) with ${2}\n",
        );
    }
    for name in &headers.remove {
        table.push_str(&format!("/^{}:/ IGNORE\n", access::literal(name)));
    }
    Some(table)
}

/// The parameters of the limits per client, in [`CLIENT_LIMIT_PARAMETERS`]' order: the
/// interval, each limit given, and no exception (Postfix spares `$mynetworks`, which on a
/// relay is every client that matters).
pub fn client_limits(limits: Option<&Limits>) -> Vec<(&'static str, String)> {
    let Some(l) = limits else {
        return Vec::new();
    };
    let [interval, connections, messages, recipients, exceptions] = CLIENT_LIMIT_PARAMETERS;
    let mut out = vec![(interval, format!("{}s", l.interval_secs))];
    for (name, limit) in [
        (connections, l.connections),
        (messages, l.messages),
        (recipients, l.recipients),
    ] {
        if let Some(n) = limit {
            out.push((name, n.to_string()));
        }
    }
    out.push((exceptions, String::new()));
    out
}

/// The parameters the limits per client set; `postconf` may not set them beside the limits.
pub const CLIENT_LIMIT_PARAMETERS: [&str; 5] = [
    "anvil_rate_time_unit",
    "smtpd_client_connection_rate_limit",
    "smtpd_client_message_rate_limit",
    "smtpd_client_recipient_rate_limit",
    "smtpd_client_event_limit_exceptions",
];

/// The restriction class that asks the relay's policy service about a recipient of a SASL
/// user (limits per user: [`crate::policy`]).
const USER_LIMITS_CLASS: &str = "smtp_relay_user_limits";

/// The parameters the limits per user set; `postconf` may not set them beside the limits.
pub const USER_LIMIT_PARAMETERS: [&str; 2] = ["smtpd_restriction_classes", USER_LIMITS_CLASS];

/// The parameters of the limits per user, in [`USER_LIMIT_PARAMETERS`]' order: the class,
/// and what it does. The service answers `DUNNO` or a 4xx; when smtpd cannot reach it, the
/// recipient is deferred with the `default_action` given here, which no `postconf` entry
/// overrides.
fn user_limits(limits: Option<&Limits>) -> Vec<(&'static str, String)> {
    if limits.is_none() {
        return Vec::new();
    }
    let [classes, class] = USER_LIMIT_PARAMETERS;
    vec![
        (classes, USER_LIMITS_CLASS.to_string()),
        (
            class,
            format!(
                "check_policy_service {{ unix:{POLICY_SOCKET}, {{ default_action = 451 4.3.5 the limits per login cannot be checked; retry later }} }}"
            ),
        ),
    ]
}

/// What `smtpd_recipient_restrictions` adds for the limits per user: the class, for logged-in
/// clients only (`check_sasl_access` does nothing for others, so they never wait on the
/// service).
fn user_limits_restriction() -> String {
    format!("check_sasl_access static:{USER_LIMITS_CLASS}")
}

pub fn render(params: &[(String, String)]) -> String {
    let mut out = String::from("# Generated by smtp-relay at start-up; edits are overwritten.\n");
    for (name, value) in params {
        out.push_str(name);
        out.push_str(" = ");
        out.push_str(value);
        out.push('\n');
    }
    out
}

/// Relayhost credentials as a `texthash:` map. Postfix splits the value at the first ':', and
/// takes the rest of the line verbatim, so any password without a line break survives.
pub fn relayhost_passwd(s: &Settings) -> Option<String> {
    s.relayhost_credentials.as_ref().map(|c| {
        format!(
            "{} {}:{}\n",
            relayhost_value(&s.relayhost),
            c.login,
            c.password
        )
    })
}

/// Sender-specified routing (`user%host@`, `host!user@`, `"user@host"@`) would let a client
/// use the relayhost as an open relay towards the routed host.
pub const ROUTING_TABLE: &str = "/[%!@].*@/ 550 5.7.1 Sender-specified routing is not allowed\n";

/// Cyrus SASL server configuration for smtpd, reading users from the sasldb.
pub fn smtpd_sasl_conf(layout: &Layout) -> String {
    format!(
        "pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN CRAM-MD5 DIGEST-MD5\nsasldb_path: {}\n",
        layout.sasldb().display()
    )
}

#[derive(Default)]
struct Params(Vec<(String, String)>);

impl Params {
    fn set(&mut self, name: &str, value: impl ToString) {
        let value = value.to_string();
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name.to_string(), value)),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::settings::{Credentials, InboundTls, Mode, RelayPolicy};
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    pub fn settings() -> Settings {
        Settings {
            hostname: Some("smtp-relay.example.net".into()),
            domain: "example.net".into(),
            networks: vec!["10.0.0.0/24".parse().unwrap()],
            relay_domains: vec!["example.net".into(), "example.org".into()],
            relayhost: Relayhost {
                host: "10.1.0.1".into(),
                port: 25,
                mx_lookup: false,
                implicit_tls: false,
            },
            relayhost_credentials: None,
            relayhost_oauth2: None,
            relayhost_tls_level: None,
            relayhost_tls_ca_file: None,
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
            postconf: BTreeMap::new(),
            postconf_field_prefix: "POSTCONF_".into(),
        }
    }

    fn layout() -> Layout {
        Layout {
            config_dir: "/run/pf".into(),
            spool_dir: "/var/spool/postfix".into(),
            data_dir: "/data".into(),
            listen: "0.0.0.0:25".into(),
        }
    }

    fn get<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn header_checks_cut_the_client_and_remove_what_is_named() {
        let table = smtp_header_checks(&HeaderPolicy::default()).unwrap();
        assert!(table.contains(
            "/^Received: from .*[[:space:]]by ([^[:space:]]+) \\(Postfix\\) with (.*)$/ REPLACE Received: by ${1} (Postfix) with ${2}\n"
        ));
        let revealed = HeaderPolicy {
            reveal_client: true,
            remove: vec![],
        };
        assert_eq!(smtp_header_checks(&revealed), None);
        let removing = HeaderPolicy {
            reveal_client: true,
            remove: vec!["X-Mailer".into(), "X.Odd_Name".into()],
        };
        let table = smtp_header_checks(&removing).unwrap();
        assert!(!table.contains("Received"));
        assert!(
            table.ends_with("/^X-Mailer:/ IGNORE\n/^X[.]Odd_Name:/ IGNORE\n"),
            "{table}"
        );
        let mut s = settings();
        let layout = layout();
        assert!(parameters(&s, &layout)
            .iter()
            .any(|(k, v)| k == HEADER_CHECKS_PARAMETER && v.starts_with("regexp:")));
        s.headers = revealed;
        assert!(!parameters(&s, &layout)
            .iter()
            .any(|(k, _)| k == HEADER_CHECKS_PARAMETER));
    }

    #[test]
    fn strict_mode_relay() {
        let p = parameters(&settings(), &layout());
        assert_eq!(get(&p, "relayhost"), Some("[10.1.0.1]:25"));
        // Queue IDs that stay unique when a spool is drained by another instance.
        assert_eq!(get(&p, "enable_long_queue_ids"), Some("yes"));
        assert_eq!(get(&p, "mydestination"), Some(""));
        assert_eq!(get(&p, "mynetworks"), Some("10.0.0.0/24"));
        assert_eq!(get(&p, "relay_domains"), Some("example.net, example.org"));
        assert_eq!(
            get(&p, "smtpd_relay_restrictions"),
            Some("reject_unauth_destination, permit_sasl_authenticated, permit_mynetworks, reject")
        );
        assert_eq!(
            get(&p, "bounce_notice_recipient"),
            Some("postmaster@example.net")
        );
        assert_eq!(get(&p, "smtpd_sasl_auth_enable"), None, "no users, no AUTH");
        assert_eq!(get(&p, "smtp_sasl_auth_enable"), None);
        assert_eq!(get(&p, "smtpd_sender_restrictions"), None);
    }

    #[test]
    fn ipv6_networks_are_bracketed() {
        let mut s = settings();
        s.networks = vec!["fd00::/64".parse().unwrap(), "127.0.0.0/8".parse().unwrap()];
        let p = parameters(&s, &layout());
        assert_eq!(get(&p, "mynetworks"), Some("[fd00::]/64, 127.0.0.0/8"));
        assert_eq!(get(&p, "inet_protocols"), Some("all"));
    }

    #[test]
    fn connections_to_the_relayhost_are_kept_by_its_bare_name() {
        let mut s = settings();
        let p = parameters(&s, &layout());
        assert_eq!(
            get(&p, "smtp_connection_cache_destinations"),
            Some(s.relayhost.host.as_str())
        );
        assert_eq!(get(&p, "smtp_tls_connection_reuse"), Some("yes"));
        s.relayhost.host = "2001:db8::25".into();
        let p = parameters(&s, &layout());
        assert_eq!(get(&p, "smtp_connection_cache_destinations"), None);
        assert_eq!(get(&p, "smtp_tls_connection_reuse"), Some("yes"));
    }

    #[test]
    fn credentials_tls_and_users() {
        let mut s = settings();
        s.relayhost_credentials = Some(Credentials {
            login: "u".into(),
            password: "p w}:,".into(),
        });
        s.relayhost_tls_level = Some(TlsLevel::Verify);
        s.relayhost_tls_ca_file = Some(PathBuf::from("/ca.pem"));
        s.sasl_users = SaslUserSource::Directory("/users".into());
        s.inbound_tls = Some(InboundTls {
            cert_file: "/tls/tls.crt".into(),
            key_file: "/tls/tls.key".into(),
            min_version: TlsMinVersion::default(),
        });
        let p = parameters(&s, &layout());
        assert_eq!(
            get(&p, "smtp_sasl_password_maps"),
            Some("texthash:/run/pf/relayhost_passwd")
        );
        assert_eq!(get(&p, "smtp_tls_security_level"), Some("verify"));
        assert_eq!(get(&p, "smtp_tls_CAfile"), Some("/ca.pem"));
        assert_eq!(get(&p, "smtpd_sasl_auth_enable"), Some("yes"));
        assert_eq!(get(&p, "smtpd_tls_auth_only"), Some("yes"));
        assert_eq!(
            get(&p, "smtp_sasl_security_options"),
            Some("noanonymous, noplaintext")
        );
        assert_eq!(
            get(&p, "smtp_sasl_tls_security_options"),
            Some("noanonymous")
        );
        assert_eq!(relayhost_passwd(&s).unwrap(), "[10.1.0.1]:25 u:p w}:,\n");
        assert!(
            !render(&p).contains("p w}"),
            "main.cf never holds the password"
        );
    }

    /// Issue 26: with a login and no level, the relayhost must prove its name (`secure`),
    /// checked against the name as given; an explicit none or may allows plain text.
    #[test]
    fn credentials_default_to_secure_and_an_explicit_may_allows_plaintext() {
        let mut s = settings();
        s.relayhost.host = "smtp.example.net".into();
        let p = parameters(&s, &layout());
        assert_eq!(get(&p, "smtp_tls_security_level"), Some("may"));
        assert_eq!(get(&p, "smtp_tls_secure_cert_match"), None);
        s.relayhost_credentials = Some(Credentials {
            login: "u".into(),
            password: "p".into(),
        });
        let p = parameters(&s, &layout());
        assert_eq!(get(&p, "smtp_tls_security_level"), Some("secure"));
        assert_eq!(get(&p, "smtp_tls_secure_cert_match"), Some("nexthop"));
        assert_eq!(
            get(&p, "smtp_tls_mandatory_protocols"),
            Some(">=TLSv1.2"),
            "the login never over TLS 1.0 or 1.1"
        );
        assert!(get(&p, "smtp_tls_mandatory_exclude_ciphers").is_some_and(|c| c.contains("aNULL")));
        assert_eq!(
            get(&p, "smtp_sasl_security_options"),
            Some("noanonymous, noplaintext")
        );
        assert!(!s.relayhost_password_in_clear());
        assert!(!s.relayhost_unverified());
        for level in [TlsLevel::None, TlsLevel::May] {
            s.relayhost_tls_level = Some(level);
            let p = parameters(&s, &layout());
            assert_eq!(get(&p, "smtp_tls_security_level"), Some(level.as_str()));
            assert_eq!(get(&p, "smtp_tls_secure_cert_match"), None);
            assert_eq!(get(&p, "smtp_sasl_security_options"), Some("noanonymous"));
            assert!(s.relayhost_password_in_clear());
            assert!(s.relayhost_unverified());
        }
        // encrypt, the old default: encrypted, any certificate accepted, only when chosen.
        s.relayhost_tls_level = Some(TlsLevel::Encrypt);
        let p = parameters(&s, &layout());
        assert_eq!(get(&p, "smtp_tls_security_level"), Some("encrypt"));
        assert!(!s.relayhost_password_in_clear());
        assert!(s.relayhost_unverified());
    }

    /// The names a certificate must carry at `secure`: the relayhost as given (an IP address
    /// as an IP subjectAltName), or with MX lookups its domain and the hosts under it.
    #[test]
    fn a_secure_relayhost_is_matched_by_the_name_it_was_given() {
        let mut s = settings();
        s.relayhost_tls_level = Some(TlsLevel::Secure);
        let matched = |s: &Settings| {
            get(&parameters(s, &layout()), "smtp_tls_secure_cert_match").map(str::to_string)
        };
        assert_eq!(matched(&s).as_deref(), Some("nexthop"), "an IP address");
        s.relayhost.host = "smtp.example.net".into();
        assert_eq!(matched(&s).as_deref(), Some("nexthop"));
        s.relayhost.mx_lookup = true;
        assert_eq!(matched(&s).as_deref(), Some("nexthop, dot-nexthop"));
        s.relayhost_tls_level = Some(TlsLevel::Verify);
        assert_eq!(matched(&s), None, "verify has its own match, the host name");
    }

    /// Issue 26: the STARTTLS that AUTH travels in is TLS 1.2 or newer with forward-secret
    /// AEAD suites in the server's order, unless a legacy floor is asked for; then TLS 1.0 and
    /// CBC come back, but never anonymous, null, export, RC4 or (3)DES suites. The smtpd
    /// parameters are written only when the relay offers TLS.
    #[test]
    fn inbound_tls_is_modern_unless_a_legacy_floor_is_asked_for() {
        let mut s = settings();
        let p = parameters(&s, &layout());
        for name in INBOUND_TLS_FLOOR {
            assert_eq!(get(&p, name), None, "no TLS offered, no {name}");
        }
        s.inbound_tls = Some(InboundTls {
            cert_file: "/tls/tls.crt".into(),
            key_file: "/tls/tls.key".into(),
            min_version: TlsMinVersion::default(),
        });
        let p = parameters(&s, &layout());
        let never = "aNULL, eNULL, EXPORT, RC4, DES, 3DES, MD5, PSK, SRP";
        for prefix in ["smtpd_tls_", "smtpd_tls_mandatory_"] {
            assert_eq!(get(&p, &format!("{prefix}protocols")), Some(">=TLSv1.2"));
            assert_eq!(get(&p, &format!("{prefix}ciphers")), Some("high"));
            assert_eq!(
                get(&p, &format!("{prefix}exclude_ciphers")),
                Some(format!("{never}, SHA1, SHA256, SHA384, kRSA").as_str())
            );
        }
        assert_eq!(get(&p, "tls_preempt_cipherlist"), Some("yes"));
        assert_eq!(get(&p, "smtpd_tls_auth_only"), Some("yes"));

        let floor = |min: TlsMinVersion| {
            let mut s = s.clone();
            if let Some(tls) = &mut s.inbound_tls {
                tls.min_version = min;
            }
            let p = parameters(&s, &layout());
            let get = |name: &str| get(&p, name).unwrap_or_default().to_string();
            assert_eq!(
                get("smtpd_tls_protocols"),
                get("smtpd_tls_mandatory_protocols")
            );
            assert_eq!(get("smtpd_tls_ciphers"), get("smtpd_tls_mandatory_ciphers"));
            assert_eq!(
                get("smtpd_tls_exclude_ciphers"),
                get("smtpd_tls_mandatory_exclude_ciphers")
            );
            assert_eq!(get("tls_preempt_cipherlist"), "yes", "{min}");
            (
                get("smtpd_tls_protocols"),
                get("smtpd_tls_ciphers"),
                get("smtpd_tls_exclude_ciphers"),
            )
        };
        for (min, protocols) in [
            (TlsMinVersion::Tls1_0, ">=TLSv1"),
            (TlsMinVersion::Tls1_1, ">=TLSv1.1"),
        ] {
            assert_eq!(
                floor(min),
                (protocols.into(), "medium".into(), never.into()),
                "{min}"
            );
        }
        assert_eq!(floor(TlsMinVersion::Tls1_3).0, ">=TLSv1.3");
        assert_eq!(floor(TlsMinVersion::Tls1_3).1, "high");
    }

    #[test]
    fn a_postconf_entry_that_replaces_the_inbound_tls_floor_is_named() {
        let postconf: BTreeMap<String, String> = [
            ("message_size_limit", "1000"),
            ("smtpd_tls_protocols", ">=TLSv1"),
            ("tls_preempt_cipherlist", "no"),
            ("smtpd_tls_loglevel", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            inbound_tls_overridden(postconf.keys()),
            ["smtpd_tls_protocols", "tls_preempt_cipherlist"]
        );
    }

    #[test]
    fn postconf_overrides_come_last_and_win() {
        let mut s = settings();
        s.postconf.insert("smtpd_banner".into(), "custom".into());
        s.postconf
            .insert("message_size_limit".into(), "1000".into());
        let p = parameters(&s, &layout());
        assert_eq!(get(&p, "smtpd_banner"), Some("custom"));
        assert_eq!(
            p.last().map(|(n, _)| n.as_str()),
            Some("message_size_limit")
        );
        assert_eq!(p.iter().filter(|(n, _)| n == "smtpd_banner").count(), 1);
    }

    /// Issue 25: the pacing of a relayhost that limits messages per mailbox is the image's to
    /// write, from one number (the operator used to write these parameters itself); `postconf`
    /// still has the last word.
    #[test]
    fn a_delivery_interval_paces_the_relayhost_and_postconf_overrides_it() {
        const PACING: [&str; 3] = [
            "default_destination_rate_delay",
            "smtp_connection_cache_time_limit",
            "default_destination_concurrency_failed_cohort_limit",
        ];
        let mut s = settings();
        let p = parameters(&s, &layout());
        for name in PACING {
            assert_eq!(get(&p, name), None, "no interval, no {name}");
        }
        s.relayhost_delivery_interval_secs = Some(6);
        let p = parameters(&s, &layout());
        let paced: Vec<_> = PACING.iter().map(|name| get(&p, name)).collect();
        assert_eq!(paced, [Some("6s"), Some("7s"), Some("10")]);
        s.relayhost_delivery_interval_secs = Some(u32::MAX);
        let p = parameters(&s, &layout());
        assert_eq!(
            get(&p, "smtp_connection_cache_time_limit"),
            Some("4294967296s"),
            "no overflow"
        );
        s.relayhost_delivery_interval_secs = Some(2);
        s.postconf
            .insert("smtp_connection_cache_time_limit".into(), "30s".into());
        let p = parameters(&s, &layout());
        assert_eq!(get(&p, "default_destination_rate_delay"), Some("2s"));
        assert_eq!(get(&p, "smtp_connection_cache_time_limit"), Some("30s"));
        assert_eq!(
            p.iter()
                .filter(|(n, _)| n == "smtp_connection_cache_time_limit")
                .count(),
            1
        );
    }

    #[test]
    fn the_system_ca_bundle_is_read_through_its_hashed_directory() {
        let mut s = settings();
        s.relayhost_tls_ca_file = Some(PathBuf::from(SYSTEM_CA_BUNDLE));
        let p = parameters(&s, &layout());
        assert_eq!(get(&p, "smtp_tls_CApath"), Some("/etc/ssl/certs"));
        assert_eq!(get(&p, "smtp_tls_CAfile"), None);
    }

    #[test]
    fn implicit_tls() {
        let mut s = settings();
        s.relayhost.implicit_tls = true;
        s.relayhost_tls_level = Some(TlsLevel::Encrypt);
        let p = parameters(&s, &layout());
        assert_eq!(get(&p, "smtp_tls_wrappermode"), Some("yes"));
        assert_eq!(get(&p, "smtp_tls_security_level"), Some("encrypt"));
    }

    /// Issue 40: a volume that the reserve would take most of is refused, naming what it needs.
    #[test]
    fn a_spool_volume_holds_twice_the_reserve() {
        let none = BTreeMap::new();
        assert_eq!(spool_volume_problem(64 * 1024 * 1024, &none), None);
        let small = spool_volume_problem(63 * 1024 * 1024, &none).expect("too small");
        assert!(
            small.contains("keeps 32 MiB") && small.contains("at least 64Mi"),
            "{small}"
        );
        let big = BTreeMap::from([("message_size_limit".to_string(), "52428800".to_string())]);
        let problem = spool_volume_problem(150 * 1024 * 1024, &big).expect("too small");
        assert!(problem.contains("at least 200Mi"), "{problem}");
    }

    /// Issue 40: the reserve is twice the size limit in force, at least the floor, unless
    /// `postconf` gives one; it is always in main.cf.
    #[test]
    fn the_spool_reserve_follows_the_size_limit() {
        let pc = |entries: &[(&str, &str)]| -> BTreeMap<String, String> {
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        // Postfix's default limit (10240000): twice is 20480000, under the 32 MiB floor.
        assert_eq!(spool_reserve(&pc(&[])), SPOOL_RESERVE_FLOOR);
        assert_eq!(SPOOL_RESERVE_FLOOR, 33_554_432);
        assert_eq!(
            spool_reserve(&pc(&[("message_size_limit", "52428800")])),
            104_857_600
        );
        // No limit, or one the relay cannot read: the floor, or twice the default.
        assert_eq!(
            spool_reserve(&pc(&[("message_size_limit", "0")])),
            SPOOL_RESERVE_FLOOR
        );
        assert_eq!(
            message_size_limit(&pc(&[("message_size_limit", "$other")])),
            DEFAULT_MESSAGE_SIZE_LIMIT
        );
        assert_eq!(
            spool_reserve(&pc(&[
                ("message_size_limit", "52428800"),
                ("queue_minfree", "99999999")
            ])),
            99_999_999
        );
        assert_eq!(least_queue_minfree(10_240_000), 15_360_000);
        assert_eq!(least_queue_minfree(1001), 1502);
        assert_eq!(least_queue_minfree(0), 1);
        // Never below what Postfix's own check asks: the derived reserve means something.
        for limit in [0, 1, 1000, 10_240_000, 52_428_800, u64::MAX / 2] {
            let derived = spool_reserve(&pc(&[("message_size_limit", &limit.to_string())]));
            assert!(derived >= least_queue_minfree(limit), "{limit}");
        }

        let mut s = settings();
        let layout = layout();
        let reserve =
            |s: &Settings| get(&parameters(s, &layout), "queue_minfree").map(String::from);
        assert_eq!(reserve(&s).as_deref(), Some("33554432"));
        s.postconf
            .insert("message_size_limit".into(), "52428800".into());
        assert_eq!(reserve(&s).as_deref(), Some("104857600"));
        s.postconf
            .insert("queue_minfree".into(), "200000000".into());
        assert_eq!(reserve(&s).as_deref(), Some("200000000"));
    }
}
