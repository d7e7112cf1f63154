//! The relay config file: what the operator mounts from a ConfigMap (as `relay.yaml`). It holds
//! no secret: credentials and SASL users are referenced as paths of files mounted from Secrets.
//! The operator builds this type and serializes it; `smtp-relay run --config` reads it back, so
//! both sides share one definition.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::settings::{Mode, TlsLevel, TlsMinVersion};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RelayConfigFile {
    /// The one domain this relay serves (Postfix `mydomain`).
    pub domain: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Client networks allowed to relay without authentication (CIDR).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<String>,
    /// Recipient domains relayed in the strict modes; defaults to `[domain]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relay_domains: Vec<String>,
    pub relayhost: RelayhostFile,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postmaster: Option<String>,
    #[serde(default)]
    pub strict_sender: bool,
    /// A named mode; exclusive with `customRestrictions`. Defaults to `Strict`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_restrictions: Option<Vec<String>>,
    /// Vouches for what `customRestrictions` holds before its safety net that the relay cannot
    /// read and that could let a stranger relay: access tables read from files (`hash:`,
    /// `regexp:`, `cidr:`, ...), policy services, client certificates, DNS whitelists,
    /// `permit_mx_backup`. Without it such a list is refused, as it may be an open relay. A
    /// table the relay reads and finds permitting strangers (`static:OK`, an inline sender
    /// table with `OK`) stays refused. Omitted when false, so the configuration hash of every
    /// relay without it stays what it was.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub trust_restriction_tables: bool,
    /// Directory with one file per SASL user (file name = user, content = password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_users_dir: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_tls: Option<InboundTlsFile>,
    /// The oldest TLS version clients may use with `inboundTls`: `TLSv1.2` when omitted
    /// (forward-secret AEAD suites only); `TLSv1.0` or `TLSv1.1` for legacy devices (CBC
    /// suites come back, never anonymous, null, export, RC4 or 3DES ones); `TLSv1.3`. Only
    /// with `inboundTls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_tls_min_version: Option<TlsMinVersion>,
    /// A second SMTP port, on the listen address, for a load balancer that speaks the PROXY
    /// protocol: the client address comes from its header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol_port: Option<u16>,
    /// Ports where only SASL users send, inside TLS (needs `saslUsersDir` and `inboundTls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submission: Option<SubmissionFile>,
    /// What the headers of mail leaving the relay reveal. Omitted: the client hidden in the
    /// Received lines, no header removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<HeadersFile>,
    /// Which senders the relay accepts, and which SASL users may send only as whom.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub senders: Option<SendersFile>,
    /// Which recipients the relay sends to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipients: Option<RecipientsFile>,
    /// A staging sandbox: every accepted message goes to one mailbox, is held or is dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxFile>,
    /// How much each client may do per interval (per replica).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<RateLimitsFile>,
    /// Extra Postfix parameters, applied last.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub postconf: BTreeMap<String, String>,
}

/// The submission ports, on the listen address: each is a smtpd where AUTH is required
/// before `RCPT TO`, with the relay's restrictions and TLS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubmissionFile {
    /// STARTTLS required before anything else (587, `submission`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starttls_port: Option<u16>,
    /// TLS from the first byte (465, `submissions`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub implicit_tls_port: Option<u16>,
}

/// Rate limits: over one, the client gets a 4xx and retries later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitsFile {
    /// The interval the limits count over; 60 when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_seconds: Option<u32>,
    /// Per client address, on each replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_client: Option<LimitsFile>,
    /// Per SASL user, on each replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_user: Option<LimitsFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitsFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipients: Option<u32>,
}

impl LimitsFile {
    /// `[connections, messages, recipients]`.
    pub fn counts(&self) -> [Option<u32>; 3] {
        [self.connections, self.messages, self.recipients]
    }
}

/// What a sandbox does with every accepted message (its recipients kept in
/// `X-Sandbox-Recipient:` headers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SandboxFile {
    pub mode: SandboxMode,
    /// With `CatchAll`: the one mailbox every message goes to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailbox: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxMode {
    /// Delivered to `mailbox` instead of its recipients.
    CatchAll,
    /// Kept in the hold queue.
    Hold,
    /// Accepted and dropped.
    Discard,
}

/// Entries are addresses (`noreply@example.net`) or domains (`example.net`, with its
/// subdomains).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SendersFile {
    /// The senders any client may use (with `strictSender`, the relay domains too); with it,
    /// every other sender is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed: Vec<String>,
    /// SASL users who may send only as the senders listed for them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bindings: Vec<SenderBindingFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SenderBindingFile {
    pub user: String,
    pub senders: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecipientsFile {
    /// The recipients any client may send to; with it, every other is refused at RCPT TO.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeadersFile {
    /// Keep the client's name, address and HELO name in the Received lines Postfix writes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reveal_client: bool,
    /// Header names removed from every message that leaves the relay (`X-Originating-IP`,
    /// `User-Agent`, `X-Mailer`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RelayhostFile {
    pub host: String,
    #[serde(default = "default_relayhost_port")]
    pub port: u16,
    #[serde(default)]
    pub mx_lookup: bool,
    #[serde(default)]
    pub implicit_tls: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Postfix `smtp_tls_security_level`. Omitted: `secure` with a login (the relayhost's
    /// certificate, from a trusted CA, must name `host`; an IP address then needs
    /// `tlsCaFile`), `may` without; `encrypt` with implicit TLS and no login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_level: Option<TlsLevel>,
    /// The CA bundle that verifies the relayhost, instead of the system CAs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
    /// Log in with OAuth2 (XOAUTH2) instead of a password; exclusive with `usernameFile` and
    /// `passwordFile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<OAuth2File>,
    /// One delivery to the relayhost at most every this many seconds, per replica (at least 1):
    /// for a relayhost that takes only so many messages a minute from a mailbox (Microsoft 365:
    /// 30), the operator sharing the limit out over the replicas. Deliveries then go one at a
    /// time on a connection kept open past the interval. Omitted: no pacing. `postconf`
    /// overrides what it sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_interval_seconds: Option<u32>,
}

/// An OAuth2 login: the mailbox, where tokens come from, and the files of the grant. The grant
/// follows from the files given: `serviceAccountKeyFile` (a Google service account), else
/// `refreshTokenFile` (delegated, with `clientIdFile` and maybe `clientSecretFile`), else
/// `clientIdFile` and `clientSecretFile` (client credentials).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OAuth2File {
    pub user: String,
    /// HTTPS (plain HTTP only to a loopback address).
    pub token_endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_key_file: Option<PathBuf>,
    /// With `refreshTokenFile`, in Kubernetes: a Secret in the pod's namespace where the
    /// replicas share the newest refresh token of a provider that rotates it (the pod's
    /// ServiceAccount needs `get` and `patch` on it; the operator sets this up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_refresh_token_secret: Option<String>,
}

/// The Postfix parameters of a delivery interval (see `RelayhostFile::delivery_interval_seconds`):
/// `main.cf` and [`RelayConfigFile::hash_form`] read them from here.
pub fn pacing(interval: u32) -> [(&'static str, String); 3] {
    [
        ("default_destination_rate_delay", format!("{interval}s")),
        (
            "smtp_connection_cache_time_limit",
            format!("{}s", u64::from(interval) + 1),
        ),
        (
            "default_destination_concurrency_failed_cohort_limit",
            "10".to_string(),
        ),
    ]
}

impl RelayConfigFile {
    /// The file as the operator's configuration hash reads it: a delivery interval written
    /// as the `postconf` entries it renders to (the user's own entries win, as in `main.cf`).
    /// Operators before `deliveryIntervalSeconds` wrote those entries themselves, so a relay
    /// whose Postfix configuration is the same keeps the same hash across an operator
    /// upgrade, and no pod restarts.
    pub fn hash_form(&self) -> RelayConfigFile {
        let mut file = self.clone();
        if let Some(interval) = file.relayhost.delivery_interval_seconds.take() {
            for (name, value) in pacing(interval) {
                file.postconf.entry(name.to_string()).or_insert(value);
            }
        }
        file
    }
}

fn default_relayhost_port() -> u16 {
    25
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboundTlsFile {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_form_writes_a_delivery_interval_as_the_postconf_it_renders_to() {
        let mut file = RelayConfigFile::default();
        assert_eq!(file.hash_form(), file, "no interval, nothing to fold");
        file.relayhost.delivery_interval_seconds = Some(6);
        file.postconf
            .insert("smtp_connection_cache_time_limit".into(), "30s".into());
        let hashed = file.hash_form();
        assert_eq!(hashed.relayhost.delivery_interval_seconds, None);
        let get = |k: &str| hashed.postconf.get(k).map(String::as_str);
        assert_eq!(get("default_destination_rate_delay"), Some("6s"));
        assert_eq!(
            get("smtp_connection_cache_time_limit"),
            Some("30s"),
            "the user's wins"
        );
        assert_eq!(
            get("default_destination_concurrency_failed_cohort_limit"),
            Some("10")
        );
    }
}
