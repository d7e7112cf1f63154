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

/// Certificate and key offered to clients with STARTTLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
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
    pub relayhost_oauth2: Option<crate::oauth2::OAuth2Settings>,
    pub relayhost_tls_level: Option<TlsLevel>,
    pub relayhost_tls_ca_file: Option<PathBuf>,
    pub postmaster: Option<String>,
    pub strict_sender: bool,
    pub policy: RelayPolicy,
    pub sasl_users: SaslUserSource,
    pub inbound_tls: Option<InboundTls>,
    /// A second smtpd on this port of the listen address expecting the PROXY protocol (v1 or
    /// v2) from a load balancer, which gives the client address. Anyone who reaches the port
    /// can claim any address: only the load balancer may.
    pub proxy_protocol_port: Option<u16>,
    /// Extra Postfix parameters, applied last so they override everything above.
    pub postconf: BTreeMap<String, String>,
    /// How errors name a `postconf` entry: this prefix followed by the parameter name
    /// (`POSTCONF_` for the environment, `relay.yaml: postconf.` for the config file).
    pub postconf_field_prefix: String,
}

/// The TLS level towards the relayhost. With credentials and no level given it is `encrypt`:
/// at `may`, a relayhost (or anyone on the path) that does not offer STARTTLS would receive the
/// password in clear text. The operator uses this too, to flag a spec.
pub fn relayhost_tls(explicit: Option<TlsLevel>, has_credentials: bool) -> TlsLevel {
    match (explicit, has_credentials) {
        (Some(level), _) => level,
        (None, true) => TlsLevel::Encrypt,
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
}
