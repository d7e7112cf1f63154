//! Typed relay settings: the single model that both input paths (seed-compatible environment
//! variables, and the config file written by the operator) are turned into. Postfix parameter
//! names never appear here; `postfix::main_cf` is the one place that maps settings to them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, ConfigResult};

/// Who may relay where. The four named modes reproduce turgon37/smtp-relay exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Mode {
    /// Clients in `networks` and SASL users may send only to the relay domains.
    #[default]
    Strict,
    /// SASL users may send anywhere; clients in `networks` only to the relay domains.
    AllowSaslAuthNoDomain,
    /// Clients in `networks` may send anywhere; SASL users only to the relay domains.
    AllowNetAuthNoDomain,
    /// Clients in `networks` and SASL users may send anywhere.
    AllowAuthNoDomain,
}

impl Mode {
    pub const ALL: [Mode; 4] = [
        Mode::Strict,
        Mode::AllowSaslAuthNoDomain,
        Mode::AllowNetAuthNoDomain,
        Mode::AllowAuthNoDomain,
    ];

    /// The name used by the original image's `RELAY_MODE`.
    pub fn seed_name(self) -> &'static str {
        match self {
            Mode::Strict => "STRICT",
            Mode::AllowSaslAuthNoDomain => "ALLOW_SASLAUTH_NODOMAIN",
            Mode::AllowNetAuthNoDomain => "ALLOW_NETAUTH_NODOMAIN",
            Mode::AllowAuthNoDomain => "ALLOW_AUTH_NODOMAIN",
        }
    }

    pub fn from_seed_name(name: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.seed_name() == name)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.seed_name())
    }
}

/// How the relay restricts relaying: a named mode, or an explicit Postfix restriction list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayPolicy {
    Mode(Mode),
    /// Tokens of `smtpd_relay_restrictions`, each checked against the restrictions Postfix knows.
    Custom(Vec<String>),
}

/// TLS security level towards the relayhost (Postfix `smtp_tls_security_level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TlsLevel {
    None,
    #[default]
    May,
    Encrypt,
    Dane,
    DaneOnly,
    Fingerprint,
    Verify,
    Secure,
}

impl TlsLevel {
    pub const ALL: [TlsLevel; 8] = [
        TlsLevel::None,
        TlsLevel::May,
        TlsLevel::Encrypt,
        TlsLevel::Dane,
        TlsLevel::DaneOnly,
        TlsLevel::Fingerprint,
        TlsLevel::Verify,
        TlsLevel::Secure,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TlsLevel::None => "none",
            TlsLevel::May => "may",
            TlsLevel::Encrypt => "encrypt",
            TlsLevel::Dane => "dane",
            TlsLevel::DaneOnly => "dane-only",
            TlsLevel::Fingerprint => "fingerprint",
            TlsLevel::Verify => "verify",
            TlsLevel::Secure => "secure",
        }
    }

    pub fn parse(s: &str) -> Option<TlsLevel> {
        TlsLevel::ALL.into_iter().find(|l| l.as_str() == s)
    }
}

impl fmt::Display for TlsLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The upstream server all mail is handed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayhost {
    pub host: String,
    pub port: u16,
    /// When false the host is used as is (Postfix's `[host]` form); when true its MX records are
    /// looked up.
    pub mx_lookup: bool,
    /// Implicit TLS from the first byte (SMTPS, usually port 465) instead of STARTTLS.
    pub implicit_tls: bool,
}

/// A login and password. `Debug` never prints the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub login: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("login", &self.login)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A secret value: compared and cloned like a string, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How an access token is obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    ClientCredentials {
        client_id: String,
        client_secret: Secret,
    },
    RefreshToken {
        client_id: String,
        client_secret: Option<Secret>,
        refresh_token: Secret,
    },
    /// A Google service account key: its e-mail address and its PKCS#8 private key (PEM).
    ServiceAccount {
        client_email: String,
        private_key: Secret,
    },
}

impl Grant {
    /// The grant's name in logs.
    pub fn name(&self) -> &'static str {
        match self {
            Grant::ClientCredentials { .. } => "client_credentials",
            Grant::RefreshToken { .. } => "refresh_token",
            Grant::ServiceAccount { .. } => "service_account",
        }
    }
}

/// The OAuth2 login (XOAUTH2) to the relayhost, validated; `oauth2` mints its tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuth2Settings {
    /// The mailbox to send as: XOAUTH2's `user=`, and a service account's subject.
    pub user: String,
    pub token_endpoint: String,
    pub scope: Option<String>,
    pub grant: Grant,
    /// A CA bundle trusted besides the system's (the relayhost's, when one is given: a private
    /// PKI usually serves both).
    pub ca_file: Option<PathBuf>,
    /// The Secret (in the pod's namespace) where the replicas share a rotated refresh token.
    pub shared_refresh_token_secret: Option<String>,
}

/// Where the relay's SASL users come from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SaslUserSource {
    /// No users: only clients in `networks` may relay.
    #[default]
    None,
    /// A file of `USERNAME PASSWORD` lines (the original image's `client_sasl_passwd`).
    PasswdFile(PathBuf),
    /// A directory with one file per user, the file name being the user and its content the
    /// password (a Kubernetes Secret mounted as a volume).
    Directory(PathBuf),
}

/// Certificate and key offered to clients with STARTTLS, and the oldest TLS version they may
/// speak.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub min_version: TlsMinVersion,
}

/// The oldest TLS version clients may use on the relay's SMTP ports, where SASL users log in
/// (issue 26). The default, TLS 1.2, goes with forward-secret AEAD suites only; TLS 1.0 and 1.1
/// are for legacy devices that cannot do better, accepted and flagged (the operator's
/// `InboundTLSModern=False`): they need CBC suites with SHA-1 MACs, which scanners fail.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
pub enum TlsMinVersion {
    #[serde(rename = "TLSv1.0")]
    Tls1_0,
    #[serde(rename = "TLSv1.1")]
    Tls1_1,
    #[default]
    #[serde(rename = "TLSv1.2")]
    Tls1_2,
    #[serde(rename = "TLSv1.3")]
    Tls1_3,
}

impl TlsMinVersion {
    pub const ALL: [TlsMinVersion; 4] = [
        TlsMinVersion::Tls1_0,
        TlsMinVersion::Tls1_1,
        TlsMinVersion::Tls1_2,
        TlsMinVersion::Tls1_3,
    ];

    /// The name in every input: `TLSv1.0` ... `TLSv1.3` (a YAML `1.2` would be a number).
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMinVersion::Tls1_0 => "TLSv1.0",
            TlsMinVersion::Tls1_1 => "TLSv1.1",
            TlsMinVersion::Tls1_2 => "TLSv1.2",
            TlsMinVersion::Tls1_3 => "TLSv1.3",
        }
    }

    pub fn parse(s: &str) -> Option<TlsMinVersion> {
        TlsMinVersion::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Older than TLS 1.2: allowed for legacy clients only, and flagged.
    pub fn is_legacy(self) -> bool {
        self < TlsMinVersion::Tls1_2
    }
}

impl fmt::Display for TlsMinVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The relay domains: the relay's own `domain` first, then the listed ones, without repeats.
/// The own domain is always one: it is the domain the relay is restricted to (the seed's
/// RELAY_MYDOMAIN, Postfix's `mydomain` and `myorigin`), so its recipients are relayed and,
/// with the strict sender check, its senders are accepted, whatever else is listed.
pub fn relay_domains(domain: &str, listed: Vec<String>) -> Vec<String> {
    let mut out = vec![domain.to_string()];
    for d in listed {
        if !out.iter().any(|o| o.eq_ignore_ascii_case(&d)) {
            out.push(d);
        }
    }
    out
}

/// Everything the relay is configured from, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub hostname: Option<String>,
    pub domain: String,
    pub networks: Vec<IpNet>,
    pub relay_domains: Vec<String>,
    pub relayhost: Relayhost,
    pub relayhost_credentials: Option<Credentials>,
    /// An OAuth2 login instead of a password (exclusive with `relayhost_credentials`).
    pub relayhost_oauth2: Option<OAuth2Settings>,
    pub relayhost_tls_level: Option<TlsLevel>,
    pub relayhost_tls_ca_file: Option<PathBuf>,
    /// One delivery to the relayhost at most every this many seconds (at least 1), one at a
    /// time; `None`: no pacing.
    pub relayhost_delivery_interval_secs: Option<u32>,
    pub postmaster: Option<String>,
    pub strict_sender: bool,
    pub policy: RelayPolicy,
    /// The input vouches for the restrictions of a custom list that the relay cannot read (a
    /// file table, a policy service, client certificates, a DNS list) before its safety net:
    /// without it such a list is refused, as it may be an open relay (issue 26).
    pub trust_restriction_tables: bool,
    pub sasl_users: SaslUserSource,
    pub inbound_tls: Option<InboundTls>,
    /// A second smtpd on this port of the listen address expecting the PROXY protocol (v1 or
    /// v2) from a load balancer, which gives the client address. Anyone who reaches the port
    /// can claim any address: only the load balancer may.
    pub proxy_protocol_port: Option<u16>,
    /// Ports where SASL users submit mail, inside TLS.
    pub submission: SubmissionPorts,
    /// What leaves the relay in the headers of each message.
    pub headers: HeaderPolicy,
    /// Which senders and recipients the relay accepts, and which SASL users are bound to
    /// which senders.
    pub access: MailAccess,
    /// Where accepted mail goes instead of its recipients, on a test or staging relay.
    pub sandbox: Option<Sandbox>,
    /// How much each client address may do per interval, per replica (Postfix's anvil).
    pub client_limits: Option<Limits>,
    /// How much each SASL user may do per interval, per replica (the relay's own policy
    /// service: [`crate::policy`]).
    pub user_limits: Option<Limits>,
    /// Extra Postfix parameters, applied last so they override everything above.
    pub postconf: BTreeMap<String, String>,
    /// How errors name a `postconf` entry: this prefix followed by the parameter name
    /// (`POSTCONF_` for the environment, `relay.yaml: postconf.` for the config file).
    pub postconf_field_prefix: String,
}

/// What the headers of mail leaving the relay reveal. By default the client (its name, its
/// address, the name it gave in HELO) is cut from every Received line Postfix wrote: inside a
/// cluster it is a pod's address and name, which tell a receiver about the platform and
/// nothing about the message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderPolicy {
    /// Keep the client in the Received lines (Postfix's default).
    pub reveal_client: bool,
    /// Header names removed from every message that leaves (validated:
    /// [`crate::validate::removed_header`]).
    pub remove: Vec<String>,
}

/// Limits over an interval, counted on each replica: over one, the client gets a 4xx and
/// retries later; nothing bounces. Per client address (Postfix's anvil), they apply to every
/// client, those of `networks` too (Postfix exempts them by default); per SASL user (the
/// relay's policy service), to every logged-in client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The interval, in seconds (`anvil_rate_time_unit` for clients).
    pub interval_secs: u32,
    /// Connections per interval (for a user: sessions in which it names a recipient).
    pub connections: Option<u32>,
    /// Messages per interval.
    pub messages: Option<u32>,
    /// Recipients per interval.
    pub recipients: Option<u32>,
}

/// A staging sandbox: what happens to every accepted message instead of its delivery to its
/// recipients (each of them kept in a header: [`crate::postfix::sandbox`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sandbox {
    /// Delivered to this one mailbox (validated: [`crate::validate::email`]).
    CatchAll(String),
    /// Kept in the hold queue, where `postsuper -H` releases it and `-d` deletes it.
    Hold,
    /// Accepted and dropped.
    Discard,
}

impl Sandbox {
    /// The sandbox in a few words, for status and logs: `CatchAll qa@example.net`, `Hold`.
    pub fn summary(&self) -> String {
        match self {
            Sandbox::CatchAll(mailbox) => format!("CatchAll {mailbox}"),
            Sandbox::Hold => "Hold".into(),
            Sandbox::Discard => "Discard".into(),
        }
    }
}

/// Ports where only SASL users send, and only inside TLS (RFC 8314), each a smtpd of its own
/// on the listen address with the relay's restrictions, and AUTH required before `RCPT TO`:
/// a client's address opens nothing there, whatever a load balancer makes of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubmissionPorts {
    /// STARTTLS before anything else (the `submission` port, 587).
    pub starttls: Option<u16>,
    /// TLS from the first byte (the `submissions` port, 465).
    pub implicit_tls: Option<u16>,
}

impl SubmissionPorts {
    /// The ports, STARTTLS first.
    pub fn ports(&self) -> impl Iterator<Item = u16> {
        self.starttls.into_iter().chain(self.implicit_tls)
    }
}

/// Which senders and recipients the relay accepts beyond who may relay (issue 27). Each list
/// is optional; an empty one restricts nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailAccess {
    /// Senders any client may use. With it (or `strict_sender`, which adds the relay
    /// domains), every other `MAIL FROM` is refused.
    pub allowed_senders: Vec<MailPattern>,
    /// Recipients any client may send to; with it, every other is refused at `RCPT TO`.
    pub allowed_recipients: Vec<MailPattern>,
    /// SASL users who may send only as the senders listed for them; other users and clients
    /// of `networks` are not restricted by these.
    pub sender_bindings: Vec<SenderBinding>,
}

/// One entry of a sender or recipient list (validated: [`crate::validate::mail_pattern`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum MailPattern {
    /// One address, `local@domain`, lower-case.
    Address(String),
    /// A domain and all its subdomains, lower-case.
    Domain(String),
}

/// The user a SASL `login` is: users live in the relay domain's realm (`realm`) and log in as
/// `user` or `user@realm`.
pub fn user_of_login<'a>(login: &'a str, realm: &str) -> &'a str {
    match login.rsplit_once('@') {
        Some((user, domain)) if domain.eq_ignore_ascii_case(realm) => user,
        _ => login,
    }
}

impl MailPattern {
    /// The domain the pattern names, or the domain of its address.
    pub fn domain(&self) -> &str {
        match self {
            MailPattern::Address(a) => a.rsplit_once('@').map_or(a.as_str(), |(_, d)| d),
            MailPattern::Domain(d) => d,
        }
    }

    /// Whether the pattern's domain is `domain` or one of its subdomains, so that a domain
    /// pattern for `domain` matches every address this one does.
    pub fn within(&self, domain: &str) -> bool {
        in_domain(self.domain(), domain)
    }

    /// Whether the pattern covers `address` (lower-case): the address itself, or an address
    /// in the domain or one of its subdomains.
    pub fn covers(&self, address: &str) -> bool {
        match self {
            MailPattern::Address(a) => a == address,
            MailPattern::Domain(d) => address
                .rsplit_once('@')
                .is_some_and(|(_, domain)| in_domain(domain, d)),
        }
    }
}

/// Whether `name` is `domain` or one of its subdomains.
fn in_domain(name: &str, domain: &str) -> bool {
    name == domain
        || name
            .strip_suffix(domain)
            .is_some_and(|rest| rest.ends_with('.'))
}

impl fmt::Display for MailPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MailPattern::Address(a) => f.write_str(a),
            MailPattern::Domain(d) => f.write_str(d),
        }
    }
}

/// A SASL user and the only senders it may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderBinding {
    /// The user's name as registered (without the realm).
    pub user: String,
    pub senders: Vec<MailPattern>,
}

/// The TLS level towards the relayhost. With a login (a password or OAuth2) and no level given
/// it is `secure`: the relayhost proves its name before the password or token goes to it (a
/// certificate from a trusted CA, the system's or the one given, that names the relayhost as
/// written: a host name, or an IP address as an IP subjectAltName). `encrypt` used to be the
/// default; it encrypts but accepts any certificate, so anyone on the path who answers STARTTLS
/// with one of their own received the login (issue 26). Without a login, `may`. The operator
/// uses this too, to flag a spec.
pub fn relayhost_tls(explicit: Option<TlsLevel>, has_credentials: bool) -> TlsLevel {
    match (explicit, has_credentials) {
        (Some(level), _) => level,
        (None, true) => TlsLevel::Secure,
        (None, false) => TlsLevel::May,
    }
}

/// True when a relayhost password may cross the network unencrypted: credentials with a level
/// of `none` or `may`, which can only be chosen explicitly. Accepted, but worth a warning.
pub fn relayhost_password_in_clear(explicit: Option<TlsLevel>, has_credentials: bool) -> bool {
    has_credentials
        && matches!(
            relayhost_tls(explicit, has_credentials),
            TlsLevel::None | TlsLevel::May
        )
}

/// Whether `level` makes the relayhost prove who it is before anything goes to it: `secure`
/// (a trusted certificate naming the relayhost as written, or with `mx_lookup` its domain),
/// `verify` without `mx_lookup` (the name checked is then the relayhost's own; with MX records,
/// which nothing authenticates, it is whatever host DNS answered), `fingerprint` (the
/// certificate pinned) and `dane-only` (DNSSEC-signed TLSA records). Not `none`, `may`,
/// `encrypt` (any certificate will do) nor `dane` (without TLSA records it falls back to `may`).
pub fn proves_identity(level: TlsLevel, mx_lookup: bool) -> bool {
    match level {
        TlsLevel::Secure | TlsLevel::Fingerprint | TlsLevel::DaneOnly => true,
        TlsLevel::Verify => !mx_lookup,
        TlsLevel::None | TlsLevel::May | TlsLevel::Encrypt | TlsLevel::Dane => false,
    }
}

/// True when the relay logs in to a relayhost that need not prove who it is: a login with a
/// level that does not (see [`proves_identity`]), which can only be chosen explicitly.
/// Accepted, but worth a warning: the operator reports it (`RelayhostVerified=False`).
pub fn relayhost_unverified(
    explicit: Option<TlsLevel>,
    has_credentials: bool,
    mx_lookup: bool,
) -> bool {
    has_credentials && !proves_identity(relayhost_tls(explicit, has_credentials), mx_lookup)
}

/// Whether the relayhost is given as an IP address rather than a host name.
pub fn is_ip_address(host: &str) -> bool {
    host.parse::<std::net::IpAddr>().is_ok()
}

/// Refuses a login to a relayhost given as an IP address when nothing says how it proves its
/// identity: no TLS level and no CA. At the default level, `secure`, its certificate would have
/// to carry the address as an IP subjectAltName and come from a system CA, which public CAs
/// seldom issue: mail would wait in the queue for a certificate that never comes, so the input
/// is refused instead, saying what to give. With a CA (a private PKI), `secure` checks the
/// address against the certificate's IP subjectAltNames; with a level chosen explicitly, the
/// choice is the user's (and flagged when it proves nothing). `field` names the relayhost's
/// input, `fix` says how to give a name, a CA or a level in that input's words.
pub fn require_relayhost_identity(
    relayhost: &Relayhost,
    explicit: Option<TlsLevel>,
    logs_in: bool,
    ca_given: bool,
    field: &str,
    fix: &str,
) -> ConfigResult<()> {
    if !logs_in || explicit.is_some() || ca_given || !is_ip_address(&relayhost.host) {
        return Ok(());
    }
    Err(ConfigError::invalid(
        field,
        format!(
            "{} is an IP address and the relay logs in to it: the login goes only to a relayhost that proved its identity (TLS level secure, the default with a login), and public CAs seldom certify an IP address. {fix}",
            relayhost.host
        ),
    ))
}

/// OAuth2 providers whose relayhosts have publicly trusted certificates for their names, by the
/// host of their token endpoint: (host, provider).
const KNOWN_PROVIDERS: [(&str, &str); 6] = [
    ("login.microsoftonline.com", "Microsoft 365"),
    ("login.microsoftonline.us", "Microsoft 365"),
    ("login.partner.microsoftonline.cn", "Microsoft 365"),
    ("oauth2.googleapis.com", "Google"),
    ("accounts.google.com", "Google"),
    ("www.googleapis.com", "Google"),
];

/// The provider of an OAuth2 token endpoint whose relayhosts always prove their names
/// (Microsoft 365, Google), by the endpoint's host.
pub fn known_provider(token_endpoint: &str) -> Option<&'static str> {
    let url = reqwest::Url::parse(token_endpoint).ok()?;
    let host = url.host_str()?.to_ascii_lowercase();
    KNOWN_PROVIDERS
        .iter()
        .find(|(h, _)| *h == host)
        .map(|(_, provider)| *provider)
}

/// Refuses a TLS level that does not prove the relayhost's identity with an OAuth2 login at a
/// known provider ([`known_provider`]): its relayhosts have publicly trusted certificates for
/// their names, so `secure` always works there, and a weaker level could only hand the access
/// token to whoever answers on the path. `field` names the level's input.
pub fn require_verified_provider(
    token_endpoint: &str,
    explicit: Option<TlsLevel>,
    mx_lookup: bool,
    field: &str,
) -> ConfigResult<()> {
    let (Some(provider), Some(level)) = (known_provider(token_endpoint), explicit) else {
        return Ok(());
    };
    if proves_identity(level, mx_lookup) {
        return Ok(());
    }
    Err(ConfigError::invalid(
        field,
        format!(
            "{level} does not make the relayhost prove its name, and the OAuth2 login is {provider}'s, whose relayhosts have publicly trusted certificates for their names: {level} would hand the access token to anyone on the path who answers STARTTLS. Remove the level (with a login the default is secure) or set secure"
        ),
    ))
}

/// SASL users need a certificate: AUTH is only ever offered inside TLS (`smtpd_tls_auth_only`),
/// so users without one could never log in, and offering AUTH in clear text would send their
/// passwords over the network. `field` names the certificate's input, `fix` says how to give one.
pub fn require_tls_for_sasl(
    users: &SaslUserSource,
    tls: Option<&InboundTls>,
    field: &str,
    fix: &str,
) -> ConfigResult<()> {
    if *users == SaslUserSource::None || tls.is_some() {
        return Ok(());
    }
    Err(ConfigError::invalid(
        field,
        format!(
            "SASL users are configured but no TLS certificate: clients may only log in inside TLS, so their passwords never cross the network in clear text. {fix}"
        ),
    ))
}

impl Settings {
    /// Whether the relay logs in to its relayhost, with a password or a token.
    pub fn logs_in(&self) -> bool {
        self.relayhost_credentials.is_some() || self.relayhost_oauth2.is_some()
    }

    pub fn relayhost_tls(&self) -> TlsLevel {
        relayhost_tls(self.relayhost_tls_level, self.logs_in())
    }

    pub fn relayhost_password_in_clear(&self) -> bool {
        relayhost_password_in_clear(self.relayhost_tls_level, self.logs_in())
    }

    /// See [`relayhost_unverified`]: the login may go to a relayhost that did not prove who it
    /// is, by explicit choice.
    pub fn relayhost_unverified(&self) -> bool {
        relayhost_unverified(
            self.relayhost_tls_level,
            self.logs_in(),
            self.relayhost.mx_lookup,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_domain_is_always_a_relay_domain() {
        assert_eq!(relay_domains("example.net", vec![]), ["example.net"]);
        assert_eq!(
            relay_domains("example.net", vec!["example.org".into()]),
            ["example.net", "example.org"]
        );
        assert_eq!(
            relay_domains(
                "example.net",
                vec!["example.org".into(), "EXAMPLE.net".into()]
            ),
            ["example.net", "example.org"],
            "no repeats"
        );
    }

    /// Issue 26: a login goes only to a relayhost that proved its identity, unless a level
    /// says otherwise; without a login nothing is at stake.
    #[test]
    fn a_login_defaults_to_secure_and_weaker_levels_are_unverified() {
        assert_eq!(relayhost_tls(None, true), TlsLevel::Secure);
        assert_eq!(relayhost_tls(None, false), TlsLevel::May);
        assert!(!relayhost_unverified(None, true, false));
        assert!(!relayhost_unverified(None, true, true), "secure with MX");
        assert!(!relayhost_unverified(None, false, false));
        for level in TlsLevel::ALL {
            let proven = matches!(
                level,
                TlsLevel::Secure | TlsLevel::Verify | TlsLevel::Fingerprint | TlsLevel::DaneOnly
            );
            assert_eq!(
                relayhost_unverified(Some(level), true, false),
                !proven,
                "{level}"
            );
            assert!(!relayhost_unverified(Some(level), false, false), "{level}");
        }
        // verify checks the host DNS answered for the MX records: nothing proven.
        assert!(relayhost_unverified(Some(TlsLevel::Verify), true, true));
        assert!(!relayhost_unverified(Some(TlsLevel::Secure), true, true));
    }

    fn relayhost(host: &str) -> Relayhost {
        Relayhost {
            host: host.into(),
            port: 587,
            mx_lookup: false,
            implicit_tls: false,
        }
    }

    #[test]
    fn a_login_to_an_ip_address_needs_a_ca_or_a_level() {
        let check = |host: &str, level: Option<TlsLevel>, logs_in: bool, ca: bool| {
            require_relayhost_identity(&relayhost(host), level, logs_in, ca, "RELAY_HOST", "FIX")
        };
        let err = check("10.1.0.1", None, true, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("RELAY_HOST: 10.1.0.1 is an IP address") && err.ends_with("FIX"),
            "{err}"
        );
        assert!(check("2001:db8::25", None, true, false).is_err());
        assert!(check("10.1.0.1", None, true, true).is_ok(), "a CA");
        assert!(check("10.1.0.1", Some(TlsLevel::Encrypt), true, false).is_ok());
        assert!(check("10.1.0.1", Some(TlsLevel::Secure), true, false).is_ok());
        assert!(check("10.1.0.1", None, false, false).is_ok(), "no login");
        assert!(check("smtp.example.net", None, true, false).is_ok());
    }

    #[test]
    fn a_known_providers_relayhost_always_proves_its_name() {
        let m365 = "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token";
        let google = "https://oauth2.googleapis.com/token";
        assert_eq!(known_provider(m365), Some("Microsoft 365"));
        assert_eq!(known_provider(google), Some("Google"));
        assert_eq!(known_provider("https://idp.example.net/token"), None);
        assert_eq!(known_provider("not a url"), None);
        for endpoint in [m365, google] {
            for level in [None, Some(TlsLevel::Secure), Some(TlsLevel::Verify)] {
                assert!(
                    require_verified_provider(endpoint, level, false, "L").is_ok(),
                    "{level:?}"
                );
            }
            for level in [
                TlsLevel::None,
                TlsLevel::May,
                TlsLevel::Encrypt,
                TlsLevel::Dane,
            ] {
                let err = require_verified_provider(endpoint, Some(level), false, "L")
                    .unwrap_err()
                    .to_string();
                assert!(
                    err.starts_with(&format!("L: {level} does not make the relayhost prove"))
                        && err.contains("set secure"),
                    "{err}"
                );
            }
        }
        assert!(
            require_verified_provider(
                "https://idp.example.net/t",
                Some(TlsLevel::None),
                false,
                "L"
            )
            .is_ok(),
            "another provider's relayhost may be a test server: the choice is flagged"
        );
    }
}
