//! The checks the controller repeats after admission. The CRD schema and its CEL rules reject
//! most bad specs at the API server; these catch what admission cannot express (postconf
//! values) and protect against clusters that skipped validation. A failure names the field and
//! the fix, and leaves the running relay untouched.

pub mod relay_config;

use std::collections::BTreeMap;
use std::fmt;

use ipnet::IpNet;
use smtp_relay::config_file::RelayConfigFile;
use smtp_relay::inputs::file::{settings_with, InMemory, Refusal};
use smtp_relay::postfix::{main_cf, relay_guard};
use smtp_relay::settings;
use smtp_relay::validate;

use crate::floor::contract::{
    file_at, Mount, PodFile, CLIENT_ID, CLIENT_SECRET, INBOUND_TLS_CERT, INBOUND_TLS_KEY,
    REFRESH_TOKEN, RELAYHOST_CA, RELAYHOST_PASSWORD, RELAYHOST_USERNAME, SERVICE_ACCOUNT,
};
use crate::floor::crd::{quantity_bytes, SmtpRelay, SmtpRelaySpec};
use crate::floor::inputs::Resolved;
use crate::floor::verdict::Outcome;

/// Whether the operator may run `spec.image`: always when `allowed` is empty (the default) or
/// the spec names no image (the operator's own relay image, `default`, is allowed too);
/// otherwise it must be a repository of `allowed` (any tag or digest of it) or lie under an
/// entry ending in `/`. The operator's option `--allowed-relay-images` (the chart's
/// `allowedRelayImages`): without it, whoever creates an SmtpRelay runs any image.
pub fn image_allowed(
    spec: &SmtpRelaySpec,
    default: &str,
    allowed: &[String],
) -> Result<(), String> {
    let Some(image) = spec.image.as_deref() else {
        return Ok(());
    };
    let matches = |entry: &String| {
        if entry.ends_with('/') {
            return image.starts_with(entry.as_str());
        }
        image == entry
            || image
                .strip_prefix(entry.as_str())
                .is_some_and(|rest| rest.starts_with(':') || rest.starts_with('@'))
    };
    if allowed.is_empty() || image == default || allowed.iter().any(matches) {
        return Ok(());
    }
    Err(format!(
        "spec.image {image} is not allowed here: this operator runs relay images only from {} (its --allowed-relay-images, the chart's allowedRelayImages); name one of those, or leave spec.image out for the operator's own relay image",
        allowed.join(", ")
    ))
}

/// A relay whose spec passed [`validate_spec`]: the first step to [`Validated`].
pub struct CheckedSpec<'a>(&'a SmtpRelay);

impl<'a> CheckedSpec<'a> {
    /// Checks the spec (what admission may have skipped), before any reference is read.
    pub fn new(relay: &'a SmtpRelay) -> Result<Self, Outcome> {
        validate_spec(&relay.spec).map_err(|message| Outcome::InvalidSpec { message })?;
        Ok(CheckedSpec(relay))
    }

    /// With its references resolved, judged by the relay's own rules.
    pub fn judge(self, resolved: Resolved) -> Result<Validated<'a>, Outcome> {
        let file = judge_with_relay_rules(self.0, &resolved)?;
        Ok(Validated {
            relay: self.0,
            resolved,
            file,
        })
    }
}

/// The builders' only input: a relay whose spec was checked, whose references were resolved
/// and whose configuration the relay's own rules accept. Made only by [`CheckedSpec::judge`],
/// so validation can be neither skipped nor run twice.
pub struct Validated<'a> {
    relay: &'a SmtpRelay,
    resolved: Resolved,
    /// The config file the relay's rules judged: the one the ConfigMap carries.
    file: RelayConfigFile,
}

impl<'a> Validated<'a> {
    pub fn relay(&self) -> &'a SmtpRelay {
        self.relay
    }
    pub fn resolved(&self) -> &Resolved {
        &self.resolved
    }
    pub fn relay_config_file(&self) -> &RelayConfigFile {
        &self.file
    }
}

/// Judges what the relay pods would read, the `relay.yaml` the operator is about to write and
/// the files of the Secrets it is about to mount, with the relay image's own rules
/// ([`settings_with`]): the one judge, so nothing the operator writes makes a pod exit with a
/// configuration error. A refusal names the spec field and the fix; one of a mounted file's
/// content names the reference the file comes from (the field, the Secret and its key), never
/// the file's path in the pods, which the user never wrote.
fn judge_with_relay_rules(
    relay: &SmtpRelay,
    resolved: &Resolved,
) -> Result<RelayConfigFile, Outcome> {
    let file = crate::steps::judge::relay_config::relay_config_file(relay, resolved);
    let mounts = Mounts::of(relay, resolved);
    let named = mounts.named_fields(relay);
    let field = |name: &str| named.get(name).cloned().unwrap_or_else(|| spec_field(name));
    let refusal = |message: String| {
        if named.values().any(|n| message.starts_with(n.as_str())) {
            Outcome::Unresolved {
                reason: "InvalidSecretValue",
                message,
            }
        } else {
            refusal(message)
        }
    };
    match settings_with(&file, &field, &mounts.files) {
        Ok(_) => Ok(file),
        Err(Refusal::File(refused)) => Err(
            match file_at(&refused.path).and_then(|f| mounts.origins.get(&f)) {
                Some(origin) => Outcome::Unresolved {
                    reason: "InvalidSecretValue",
                    message: format!("{origin} {}", refused.problem),
                },
                // Not a file the operator mounts: the relay's words (a bug, not the user's).
                None => refusal(refused.to_string()),
            },
        ),
        Err(Refusal::Config(e)) => Err(refusal(e.to_string())),
    }
}

/// A refusal of the relay's rules in their words: a secret value's, or the spec's.
fn refusal(message: String) -> Outcome {
    if message.starts_with(SECRET_FIELDS_PREFIX) {
        Outcome::Unresolved {
            reason: "InvalidSecretValue",
            message,
        }
    } else {
        Outcome::InvalidSpec { message }
    }
}

/// The files the relay pods will read from the owned Secrets, in memory, each with what the
/// user wrote that it comes from.
#[derive(Default)]
struct Mounts<'a> {
    files: InMemory,
    /// A file mounted from a copy of a user's object; a file the operator made (the serving
    /// certificate it issues) has none.
    origins: BTreeMap<PodFile<'a>, Origin<'a>>,
}

impl<'a> Mounts<'a> {
    /// The files of `resolved`, at their paths in the pods, and the references of the spec
    /// that `resolve` read them from.
    fn of(relay: &'a SmtpRelay, resolved: &'a Resolved) -> Self {
        let spec = &relay.spec;
        let namespace = relay.metadata.namespace.as_deref().unwrap_or_default();
        let secret = |field, name: &'a str, key: &'a str| Origin {
            field,
            kind: "Secret",
            namespace,
            name,
            key,
        };
        let mut mounts = Mounts::default();
        if let Some(login) = &resolved.relayhost_login {
            let r = spec.relayhost.credentials_secret_ref.as_ref();
            let field = "spec.relayhost.credentialsSecretRef";
            mounts.mount(
                RELAYHOST_USERNAME,
                login.username.clone().into_bytes(),
                r.map(|r| secret(field, &r.name, &r.username_key)),
            );
            mounts.mount(
                RELAYHOST_PASSWORD,
                login.password.clone(),
                r.map(|r| secret(field, &r.name, &r.password_key)),
            );
        }
        if let Some(keys) = &resolved.relayhost_oauth2 {
            let r = spec.relayhost.oauth2.as_ref().map(|o| &o.secret_ref);
            for (key, value) in [
                (CLIENT_ID, &keys.client_id),
                (CLIENT_SECRET, &keys.client_secret),
                (REFRESH_TOKEN, &keys.refresh_token),
                (SERVICE_ACCOUNT, &keys.service_account),
            ] {
                if let Some(value) = value {
                    mounts.mount(
                        key.pod_file(),
                        value.clone(),
                        r.map(|r| {
                            secret("spec.relayhost.oauth2.secretRef", &r.name, key.secret_key)
                        }),
                    );
                }
            }
        }
        if let Some(ca) = &resolved.relayhost_ca {
            let tls = spec.relayhost.tls.as_ref();
            let origin = match (
                tls.and_then(|t| t.ca_secret_key_ref.as_ref()),
                tls.and_then(|t| t.ca_config_map_key_ref.as_ref()),
            ) {
                (Some(r), _) => Some(secret("spec.relayhost.tls.caSecretKeyRef", &r.name, &r.key)),
                (None, Some(r)) => Some(Origin {
                    field: "spec.relayhost.tls.caConfigMapKeyRef",
                    kind: "ConfigMap",
                    namespace,
                    name: &r.name,
                    key: &r.key,
                }),
                (None, None) => None,
            };
            mounts.mount(RELAYHOST_CA, ca.clone(), origin);
        }
        if let Some(tls) = &resolved.inbound_tls {
            // Without tlsSecretRef, the certificate is the one the operator issues.
            let r = spec.tls_secret_ref.as_ref();
            for (file, value) in [(INBOUND_TLS_CERT, &tls.cert), (INBOUND_TLS_KEY, &tls.key)] {
                mounts.mount(
                    file,
                    value.clone(),
                    r.map(|r| secret("spec.tlsSecretRef", &r.name, file.key)),
                );
            }
        }
        if let Some(users) = &resolved.sasl_users {
            // The relay reads them as the files of one directory, named by the users.
            mounts.files.users = users.clone();
            if let Some(r) = &spec.sasl_users_secret_ref {
                for user in users.keys() {
                    mounts.origins.insert(
                        Mount::SaslUsers.file(user),
                        secret("spec.saslUsersSecretRef", &r.name, user),
                    );
                }
            }
        }
        mounts
    }

    /// The `relay.yaml` fields of files and Secrets, named by what the user wrote (the spec
    /// field, the Secret and, for one file, its key), for the relay's refusals that name a
    /// field rather than a file.
    fn named_fields(&self, relay: &SmtpRelay) -> BTreeMap<&'static str, String> {
        let mut named = BTreeMap::new();
        let files = [
            ("relayhost.usernameFile", RELAYHOST_USERNAME),
            ("relayhost.passwordFile", RELAYHOST_PASSWORD),
            ("relayhost.tlsCaFile", RELAYHOST_CA),
            ("relayhost.oauth2.clientIdFile", CLIENT_ID.pod_file()),
            (
                "relayhost.oauth2.clientSecretFile",
                CLIENT_SECRET.pod_file(),
            ),
            (
                "relayhost.oauth2.refreshTokenFile",
                REFRESH_TOKEN.pod_file(),
            ),
            (
                "relayhost.oauth2.serviceAccountKeyFile",
                SERVICE_ACCOUNT.pod_file(),
            ),
        ];
        for (name, file) in files {
            if let Some(origin) = self.origins.get(&file) {
                named.insert(name, origin.to_string());
            }
        }
        // Whole Secrets, for what the relay judges of all their keys together.
        let spec = &relay.spec;
        let namespace = relay.metadata.namespace.as_deref().unwrap_or_default();
        let whole = [
            (
                "relayhost.oauth2",
                "spec.relayhost.oauth2.secretRef",
                spec.relayhost
                    .oauth2
                    .as_ref()
                    .map(|o| o.secret_ref.name.as_str()),
                " (keys clientId, clientSecret, refreshToken, serviceAccount.json)",
            ),
            (
                "saslUsersDir",
                "spec.saslUsersSecretRef",
                spec.sasl_users_secret_ref.as_ref().map(|r| r.name.as_str()),
                "",
            ),
        ];
        for (name, field, secret, keys) in whole {
            if let Some(secret) = secret {
                named.insert(name, format!("{field}: Secret {namespace}/{secret}{keys}"));
            }
        }
        named
    }

    fn mount(&mut self, file: PodFile<'a>, value: Vec<u8>, origin: Option<Origin<'a>>) {
        self.files.files.insert(file.path(), value);
        if let Some(origin) = origin {
            self.origins.insert(file, origin);
        }
    }
}

/// What the user wrote that a mounted file comes from: the spec field of the reference, and
/// the key of the object it names. Said as `<field>: Secret <namespace>/<name> key "<key>"`.
struct Origin<'a> {
    field: &'static str,
    kind: &'static str,
    namespace: &'a str,
    name: &'a str,
    key: &'a str,
}

impl fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Origin {
            field,
            kind,
            namespace,
            name,
            key,
        } = self;
        write!(f, "{field}: {kind} {namespace}/{name} key {key:?}")
    }
}

/// How the fields of secret values are named, so a refusal is told apart from the spec's.
const SECRET_FIELDS_PREFIX: &str = "the Secret of ";

/// The spec field (or referenced Secret) a `relay.yaml` field comes from.
pub fn spec_field(name: &str) -> String {
    let secret = |of: &str| format!("{SECRET_FIELDS_PREFIX}{of}");
    match name {
        "relayhost.usernameFile" => secret("spec.relayhost.credentialsSecretRef (usernameKey)"),
        "relayhost.passwordFile" => secret("spec.relayhost.credentialsSecretRef (passwordKey)"),
        "relayhost.tlsCaFile" => secret("spec.relayhost.tls (CA bundle)"),
        "relayhost.tlsLevel" => "spec.relayhost.tls.level".into(),
        "relayhost.oauth2" => secret(
            "spec.relayhost.oauth2.secretRef (keys clientId, clientSecret, refreshToken, serviceAccount.json)",
        ),
        "relayhost.oauth2.clientIdFile" => secret("spec.relayhost.oauth2.secretRef (clientId)"),
        "relayhost.oauth2.clientSecretFile" => {
            secret("spec.relayhost.oauth2.secretRef (clientSecret)")
        }
        "relayhost.oauth2.refreshTokenFile" => {
            secret("spec.relayhost.oauth2.secretRef (refreshToken)")
        }
        "relayhost.oauth2.serviceAccountKeyFile" => {
            secret("spec.relayhost.oauth2.secretRef (serviceAccount.json)")
        }
        "saslUsersDir" => secret("spec.saslUsersSecretRef"),
        n if n.starts_with("inboundTls") => secret("spec.tlsSecretRef"),
        "proxyProtocolPort" => "spec.service.proxyProtocol".into(),
        n => format!("spec.{n}"),
    }
}

/// RFC 1123 DNS name, as in [`crate::floor::crd::DOMAIN_PATTERN`].
pub fn is_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

pub fn is_postconf_key(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_host(s: &str) -> bool {
    is_domain(s) || s.parse::<std::net::IpAddr>().is_ok()
}

/// Validates a spec; the error is a message for the user naming the field.
pub fn validate_spec(spec: &SmtpRelaySpec) -> Result<(), String> {
    validate_names(spec)?;
    validate_networks(spec)?;
    validate_reachability(spec)?;
    validate_relayhost(spec)?;
    validate_restrictions(spec)?;
    validate_postconf(spec)?;
    validate_queue(spec)
}

/// The DNS names and addresses: domain, hostname, relay domains, postmaster.
fn validate_names(spec: &SmtpRelaySpec) -> Result<(), String> {
    if !is_domain(&spec.domain) {
        return Err(format!(
            "spec.domain {:?} is not a DNS domain name (e.g. example.net)",
            spec.domain
        ));
    }
    if let Some(h) = &spec.hostname {
        if !is_domain(h) {
            return Err(format!("spec.hostname {h:?} is not a DNS name"));
        }
    }
    for d in &spec.relay_domains {
        if !is_domain(d) {
            return Err(format!(
                "spec.relayDomains entry {d:?} is not a DNS domain name"
            ));
        }
    }
    if let Some(p) = &spec.postmaster {
        if p.split('@').count() != 2 || p.chars().any(char::is_whitespace) {
            return Err(format!("spec.postmaster {p:?} is not an email address"));
        }
    }
    Ok(())
}

/// The trusted networks, under the relay image's rules on what may open the relay.
fn validate_networks(spec: &SmtpRelaySpec) -> Result<(), String> {
    let mut networks = Vec::new();
    for n in &spec.networks {
        match n.parse::<IpNet>() {
            Ok(net) => networks.push(net),
            Err(_) => {
                return Err(format!(
                    "spec.networks entry {n:?} is not a CIDR (e.g. 10.0.0.0/24 or fd00::/64)"
                ))
            }
        }
    }
    // The relay image owns the rules on what may open the relay; the relay applies them again
    // at start.
    relay_guard::check_networks("spec.networks", &networks).map_err(|e| e.to_string())?;
    Ok(())
}

/// Who may reach the pods: the PROXY-protocol sources and the NetworkPolicy's lists (the CRD
/// says the same; this holds for objects written under an older one).
fn validate_reachability(spec: &SmtpRelaySpec) -> Result<(), String> {
    let service = &spec.service;
    if service.proxy_protocol && service.proxy_protocol_source_ranges.is_empty() {
        return Err("spec.service.proxyProtocol needs spec.service.proxyProtocolSourceRanges: the load balancer's addresses (CIDR), the only peers whose PROXY header names the client; anyone else reaching the port could claim an address inside networks".into());
    }
    let cidrs = |field: &str, list: &[String], everything_refused: bool| {
        for n in list {
            let net = n.parse::<IpNet>().map_err(|_| {
                format!("{field} entry {n:?} is not a CIDR (e.g. 10.0.0.0/24 or fd00::/64)")
            })?;
            if everything_refused && net.prefix_len() == 0 {
                return Err(format!(
                    "{field} entry {n:?} covers every address: anyone could claim any client address; name the load balancer's ranges"
                ));
            }
        }
        Ok(())
    };
    cidrs(
        "spec.service.proxyProtocolSourceRanges",
        &service.proxy_protocol_source_ranges,
        true,
    )?;
    let policy = &spec.network_policy;
    cidrs(
        "spec.networkPolicy.smtpFromCidrs",
        &policy.smtp_from_cidrs,
        false,
    )?;
    for (field, names) in [
        (
            "spec.networkPolicy.smtpFromNamespaces",
            &policy.smtp_from_namespaces,
        ),
        (
            "spec.networkPolicy.metricsFromNamespaces",
            &policy.metrics_from_namespaces,
        ),
    ] {
        if let Some(n) = names.iter().find(|n| !is_namespace_name(n)) {
            return Err(format!("{field} entry {n:?} is not a namespace name"));
        }
    }
    Ok(())
}

/// A namespace name as a label value (`kubernetes.io/metadata.name`): a DNS label.
pub fn is_namespace_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Where mail goes, and the ports, replicas and storage that carry it.
fn validate_relayhost(spec: &SmtpRelaySpec) -> Result<(), String> {
    let rh = &spec.relayhost;
    if !is_host(&rh.host) {
        return Err(format!(
            "spec.relayhost.host {:?} must be a DNS name or an IP address, without brackets or port",
            rh.host
        ));
    }
    if rh.mx_lookup && rh.host.parse::<std::net::IpAddr>().is_ok() {
        return Err("spec.relayhost.mxLookup needs a domain name, not an IP address".into());
    }
    for (field, port) in [
        ("spec.relayhost.port", rh.port),
        ("spec.service.port", spec.service.port),
    ] {
        if !(1..=65535).contains(&port) {
            return Err(format!("{field} {port} is outside 1-65535"));
        }
    }
    if let Some(tls) = &rh.tls {
        if tls.ca_secret_key_ref.is_some() && tls.ca_config_map_key_ref.is_some() {
            return Err(
                "spec.relayhost.tls: set at most one of caSecretKeyRef and caConfigMapKeyRef"
                    .into(),
            );
        }
    }
    cleartext_login_acknowledged(spec)?;
    if spec.replicas < 1 {
        return Err(format!(
            "spec.replicas {} must be at least 1",
            spec.replicas
        ));
    }
    let Some(volume) = quantity_bytes(&spec.storage.size) else {
        return Err(format!(
            "spec.storage.size {:?} is not a storage quantity (e.g. 1Gi or 500Mi)",
            spec.storage.size
        ));
    };
    let volume = u64::try_from(volume).unwrap_or(u64::MAX);
    if let Some(problem) = main_cf::spool_volume_problem(volume, &spec.postconf) {
        return Err(format!("spec.storage.size {} {problem}", spec.storage.size));
    }
    Ok(())
}

/// A login (a password or an OAuth2 token) at a TLS level that lets it travel in clear text
/// (none, may: the image's rule, [`settings::relayhost_password_in_clear`]) runs only when
/// `spec.relayhost.tls.allowCleartextCredentials` says the user means it (issue 26); then
/// `RelayhostPasswordProtected=False` and a Warning Event report it.
fn cleartext_login_acknowledged(spec: &SmtpRelaySpec) -> Result<(), String> {
    let rh = &spec.relayhost;
    let tls = rh.tls.as_ref();
    let explicit = tls.and_then(|t| t.level).map(settings::TlsLevel::from);
    let credentials = rh.credentials_secret_ref.is_some() || rh.oauth2.is_some();
    if !settings::relayhost_password_in_clear(explicit, credentials)
        || tls.is_some_and(|t| t.allow_cleartext_credentials)
    {
        return Ok(());
    }
    let (field, what) = if rh.oauth2.is_some() {
        ("spec.relayhost.oauth2", "access token")
    } else {
        ("spec.relayhost.credentialsSecretRef", "password")
    };
    Err(format!(
        "spec.relayhost.tls.level: {} with {field} lets the {what} travel in clear text: a relayhost that offers no STARTTLS, or anyone on the path, would receive it; remove the level (the default with a login is secure) or set encrypt or stronger, or, if you mean it, set spec.relayhost.tls.allowCleartextCredentials: true (reported by RelayhostPasswordProtected=False and a Warning Event)",
        settings::relayhost_tls(explicit, credentials)
    ))
}

/// The mode or the custom restriction list.
fn validate_restrictions(spec: &SmtpRelaySpec) -> Result<(), String> {
    match (&spec.mode, &spec.custom_restrictions) {
        (Some(_), Some(_)) => {
            return Err(
                "spec.mode and spec.customRestrictions are mutually exclusive; remove one".into(),
            )
        }
        (None, Some(list)) if list.is_empty() => {
            return Err("spec.customRestrictions must not be empty".into())
        }
        _ => {}
    }
    for r in spec.custom_restrictions.iter().flatten() {
        if r.is_empty() || r.chars().any(|c| c.is_whitespace() || c == ',') {
            return Err(format!(
                "spec.customRestrictions entry {r:?} must be one restriction without spaces or commas"
            ));
        }
    }
    Ok(())
}

/// The Postfix parameters set by hand.
fn validate_postconf(spec: &SmtpRelaySpec) -> Result<(), String> {
    for (k, v) in &spec.postconf {
        if !is_postconf_key(k) {
            return Err(format!(
                "spec.postconf key {k:?} is not a Postfix parameter name (letters, digits, underscores, starting with a lowercase letter)"
            ));
        }
        relay_guard::check_postconf(&format!("spec.postconf.{k}"), k).map_err(|e| e.to_string())?;
        if v.contains(['\n', '\r', '\0']) {
            return Err(format!(
                "spec.postconf.{k} contains a line break; Postfix parameters are one line"
            ));
        }
        // The relay's own judges of the name and the value, with the same messages.
        let field = format!("spec.postconf.{k}");
        validate::postconf_known(&field, k).map_err(|e| e.to_string())?;
        validate::postconf_value(&field, k, v).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The queue's lifetimes: each a time Postfix reads, set by its field or by `postconf`, not
/// both (one would silently win).
fn validate_queue(spec: &SmtpRelaySpec) -> Result<(), String> {
    for q in spec.queue.parameters() {
        let Some(value) = q.value else { continue };
        if spec.postconf.contains_key(q.parameter) {
            return Err(format!(
                "{} and spec.postconf.{} both set Postfix's {}: remove the postconf entry",
                q.field, q.parameter, q.parameter
            ));
        }
        validate::postconf_value(q.field, q.parameter, &value).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::relay;

    fn spec() -> SmtpRelaySpec {
        relay("r").spec
    }

    fn err(f: impl FnOnce(&mut SmtpRelaySpec)) -> String {
        let mut s = spec();
        f(&mut s);
        validate_spec(&s).expect_err("should be rejected")
    }

    #[test]
    fn only_allowed_relay_images_run_when_the_operator_lists_them() {
        let with = |image: Option<&str>| {
            let mut r = crate::fixtures::relay("r");
            r.spec.image = image.map(Into::into);
            r.spec
        };
        let default = crate::floor::contract::DEFAULT_RELAY_IMAGE;
        let allowed = vec![
            "ghcr.io/smtp-relay-operator/smtp-relay".to_string(),
            "registry.internal/mail/".to_string(),
        ];
        for ok in [
            None,
            Some(default),
            Some("ghcr.io/smtp-relay-operator/smtp-relay"),
            Some("ghcr.io/smtp-relay-operator/smtp-relay:0.2.0"),
            Some("ghcr.io/smtp-relay-operator/smtp-relay@sha256:0123"),
            Some("registry.internal/mail/relay:1"),
        ] {
            assert_eq!(
                image_allowed(&with(ok), default, &allowed),
                Ok(()),
                "{ok:?}"
            );
        }
        for refused in [
            "ghcr.io/smtp-relay-operator/smtp-relay-evil:1",
            "ghcr.io/smtp-relay-operator/smtp-relay/x:1",
            "registry.internal/mail-other/relay:1",
            "docker.io/attacker/relay:latest",
        ] {
            let err = image_allowed(&with(Some(refused)), default, &allowed).unwrap_err();
            assert!(
                err.starts_with(&format!("spec.image {refused} is not allowed here"))
                    && err.contains("registry.internal/mail/")
                    && err.contains("allowedRelayImages"),
                "{err}"
            );
        }
        // No list: any image, as before.
        assert_eq!(
            image_allowed(&with(Some("docker.io/attacker/relay:latest")), default, &[]),
            Ok(())
        );
    }

    #[test]
    fn fixture_is_valid() {
        assert_eq!(validate_spec(&spec()), Ok(()));
    }

    /// Issue 26: PROXY headers only from named sources; the policy's lists are what they say.
    #[test]
    fn who_may_reach_the_pods_is_checked() {
        let e = err(|s| s.service.proxy_protocol = true);
        assert!(
            e.starts_with(
                "spec.service.proxyProtocol needs spec.service.proxyProtocolSourceRanges"
            ),
            "{e}"
        );
        fn ranges(r: &'static [&'static str]) -> impl FnOnce(&mut SmtpRelaySpec) {
            move |s: &mut SmtpRelaySpec| {
                s.service.proxy_protocol = true;
                s.service.proxy_protocol_source_ranges = r.iter().map(|x| x.to_string()).collect();
            }
        }
        assert!(err(ranges(&["::/0"])).contains("covers every address"));
        assert!(
            err(ranges(&["10.0.0.0/8", "lb"])).contains("proxyProtocolSourceRanges entry \"lb\"")
        );
        let mut ok = spec();
        ranges(&["10.0.0.0/8"])(&mut ok);
        assert_eq!(validate_spec(&ok), Ok(()));
        assert!(err(|s| s.network_policy.smtp_from_cidrs = vec!["x".into()])
            .contains("spec.networkPolicy.smtpFromCidrs"));
        assert!(
            err(|s| s.network_policy.metrics_from_namespaces = vec!["Mon".into()])
                .contains("spec.networkPolicy.metricsFromNamespaces entry \"Mon\"")
        );
    }

    /// Issue 39: the queue's lifetimes are typed fields; a value Postfix would not read is
    /// refused naming the field, and a lifetime set both by its field and by `postconf` is
    /// refused rather than one of them silently winning.
    #[test]
    fn the_queue_lifetimes_are_checked_and_set_one_way() {
        let mut ok = spec();
        ok.queue.lifetime = Some("12h".into());
        ok.queue.bounce_lifetime = Some("1d".into());
        assert_eq!(validate_spec(&ok), Ok(()));
        assert_eq!(ok.queue_lifetime(), ("12h", "spec.queue.lifetime"));
        let e = err(|s| s.queue.lifetime = Some("99999999999w".into()));
        assert!(
            e.starts_with("spec.queue.lifetime: ") && e.contains("is not a time"),
            "{e}"
        );
        let e = err(|s| {
            s.queue.bounce_lifetime = Some("2d".into());
            s.postconf
                .insert("bounce_queue_lifetime".into(), "3d".into());
        });
        assert_eq!(
            e,
            "spec.queue.bounceLifetime and spec.postconf.bounce_queue_lifetime both set Postfix's bounce_queue_lifetime: remove the postconf entry"
        );
        let mut by_postconf = spec();
        by_postconf
            .postconf
            .insert("maximal_queue_lifetime".into(), "2d".into());
        assert_eq!(
            validate_spec(&by_postconf),
            Ok(()),
            "the postconf way alone"
        );
        assert_eq!(
            by_postconf.queue_lifetime(),
            ("2d", "spec.postconf.maximal_queue_lifetime")
        );
        assert_eq!(spec().queue_lifetime(), ("5d", "Postfix's default"));
        let e = err(|s| s.queue.lifetime = Some("101d".into()));
        assert!(
            e.starts_with("spec.queue.lifetime: \"101d\" is more than 8640000s (100 days)"),
            "{e}"
        );
    }

    #[test]
    fn rejects_bad_fields_naming_them() {
        assert!(err(|s| s.domain = "not a domain".into()).contains("spec.domain"));
        assert!(err(|s| s.domain = "-bad.example".into()).contains("spec.domain"));
        assert!(err(|s| s.networks = vec!["10.0.0.0/33".into()]).contains("spec.networks"));
        assert!(err(|s| s.networks = vec!["10.0.0.1".into()]).contains("spec.networks"));
        assert!(err(|s| s.relay_domains = vec!["a b".into()]).contains("spec.relayDomains"));
        assert!(err(|s| s.relayhost.host = "[10.1.0.1]:25".into()).contains("spec.relayhost.host"));
        assert!(err(|s| {
            s.relayhost.host = "10.1.0.1".into();
            s.relayhost.mx_lookup = true
        })
        .contains("mxLookup"));
        assert!(err(|s| s.relayhost.port = 70000).contains("spec.relayhost.port"));
        assert!(err(|s| s.service.port = 0).contains("spec.service.port"));
        assert!(err(|s| s.replicas = 0).contains("spec.replicas"));
        assert!(err(|s| {
            s.mode = Some(crate::floor::crd::RelayMode::Strict);
            s.custom_restrictions = Some(vec!["reject".into()])
        })
        .contains("mutually exclusive"));
        assert!(
            err(|s| s.custom_restrictions = Some(vec!["permit_mynetworks, reject".into()]))
                .contains("customRestrictions")
        );
        assert!(err(|s| s
            .postconf
            .insert("Bad-Key".into(), "x".into())
            .map_or((), |_| ()))
        .contains("Bad-Key"));
        assert!(err(|s| s
            .postconf
            .insert("myhostname".into(), "a\nb".into())
            .map_or((), |_| ()))
        .contains("line break"));
        assert!(err(|s| s.postmaster = Some("nobody".into())).contains("postmaster"));
        assert!(err(|s| s.storage.size = "lots".into()).contains("storage.size"));
        // Issue 40: the spool's reserve needs room beside it.
        assert!(err(|s| s.storage.size = "16Mi".into())
            .contains("spec.storage.size 16Mi leaves no room"));
    }

    #[test]
    fn refuses_what_would_open_the_relay() {
        let e = err(|s| s.networks = vec!["10.0.0.0/8".into(), "::/0".into()]);
        assert!(
            e.contains("spec.networks") && e.contains("every IPv6"),
            "{e}"
        );
        for (key, owner) in [
            ("mynetworks", "networks"),
            ("smtpd_relay_restrictions", "customRestrictions"),
            ("smtpd_sasl_security_options", "SASL users"),
        ] {
            let e = err(|s| {
                s.postconf.insert(key.into(), "x".into());
            });
            assert!(
                e.contains(&format!("spec.postconf.{key}")) && e.contains(owner),
                "{e}"
            );
        }
    }

    /// An OAuth2 Secret is judged by the relay's rules, and a refusal names the Secret's keys,
    /// not the files the relay reads.
    #[test]
    fn an_oauth2_secret_is_judged_and_refusals_name_its_keys() {
        use crate::floor::inputs::OAuth2Keys;
        let mut relay = crate::fixtures::relay("m365");
        relay.spec.relayhost.oauth2 = Some(
            serde_json::from_value(serde_json::json!({
                "provider": "Microsoft365",
                "tenant": "contoso.onmicrosoft.com",
                "user": "sender@contoso.com",
                "secretRef": {"name": "app"}
            }))
            .unwrap(),
        );
        let judge = |keys: OAuth2Keys| {
            CheckedSpec::new(&relay).unwrap().judge(Resolved {
                relayhost_oauth2: Some(keys),
                ..Resolved::default()
            })
        };
        let app = OAuth2Keys {
            client_id: Some(b"app-id".to_vec()),
            client_secret: Some(b"s3cret".to_vec()),
            ..OAuth2Keys::default()
        };
        let file = judge(app.clone()).expect("client credentials").file;
        let oauth2 = file.relayhost.oauth2.expect("an OAuth2 login");
        assert_eq!(
            oauth2.scope.as_deref(),
            Some("https://outlook.office365.com/.default")
        );
        let refused = |keys, expected: &str| match judge(keys) {
            Err(Outcome::Unresolved { reason, message }) => {
                assert_eq!(reason, "InvalidSecretValue");
                assert!(message.contains(expected), "{message}");
            }
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("accepted"),
        };
        refused(
            OAuth2Keys {
                client_secret: None,
                ..app.clone()
            },
            "spec.relayhost.oauth2.secretRef: Secret mail/app (keys clientId, clientSecret",
        );
        refused(
            OAuth2Keys {
                client_secret: Some(b"two words".to_vec()),
                ..app
            },
            "spec.relayhost.oauth2.secretRef: Secret mail/app key \"clientSecret\" must hold one value",
        );
    }

    /// Issue 24: a value the relay refuses by its field, not its file (a password ending in
    /// white space), is named by the Secret and key the user wrote too.
    #[test]
    fn a_refused_password_is_named_by_its_secret_and_key_not_its_relay_field() {
        use crate::floor::inputs::RelayhostLogin;
        let mut relay = crate::fixtures::relay("r1");
        relay.spec.relayhost.credentials_secret_ref = Some(
            serde_json::from_value(serde_json::json!({"name": "login", "passwordKey": "pass"}))
                .unwrap(),
        );
        let judged = CheckedSpec::new(&relay).unwrap().judge(Resolved {
            relayhost_login: Some(RelayhostLogin {
                username: "user".into(),
                password: b"s3cret ".to_vec(),
            }),
            ..Resolved::default()
        });
        match judged {
            Err(Outcome::Unresolved { reason, message }) => {
                assert_eq!(reason, "InvalidSecretValue");
                assert!(
                    message.starts_with(
                        "spec.relayhost.credentialsSecretRef: Secret mail/login key \"pass\""
                    ),
                    "{message}"
                );
                assert!(!message.contains("s3cret"), "{message}");
            }
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("accepted"),
        }
    }

    /// Issue 26: a password or token at TLS level none or may may travel in clear text; it is
    /// refused unless `allowCleartextCredentials` says the user means it, naming the field, the
    /// login and the ways out. Without a login, or at a level that encrypts, nothing is asked.
    #[test]
    fn a_login_in_clear_text_needs_an_acknowledgement() {
        use crate::floor::crd::{CredentialsSecretRef, RelayhostTlsSpec, TlsLevelSpec};
        let tls = |level, allow| {
            Some(RelayhostTlsSpec {
                level: Some(level),
                ca_secret_key_ref: None,
                ca_config_map_key_ref: None,
                allow_cleartext_credentials: allow,
            })
        };
        let checked = |relay: &SmtpRelay| CheckedSpec::new(relay).map(|_| ());
        let refused = |relay: &SmtpRelay| match checked(relay) {
            Err(Outcome::InvalidSpec { message }) => message,
            other => panic!("{other:?}"),
        };
        let mut password = crate::fixtures::relay("password");
        password.spec.relayhost.credentials_secret_ref = Some(CredentialsSecretRef {
            name: "login".into(),
            username_key: "username".into(),
            password_key: "password".into(),
        });
        let mut token = crate::fixtures::relay("token");
        token.spec.relayhost.oauth2 = Some(
            serde_json::from_value(serde_json::json!({"provider": "Generic",
                "tokenEndpoint": "https://idp.example.net/token", "user": "sender@example.net",
                "secretRef": {"name": "app"}}))
            .unwrap(),
        );
        for (mut relay, level, says) in [
            (
                password.clone(),
                TlsLevelSpec::None,
                "none with spec.relayhost.credentialsSecretRef lets the password",
            ),
            (
                password.clone(),
                TlsLevelSpec::May,
                "may with spec.relayhost.credentialsSecretRef lets the password",
            ),
            (
                token,
                TlsLevelSpec::May,
                "may with spec.relayhost.oauth2 lets the access token",
            ),
        ] {
            relay.spec.relayhost.tls = tls(level, false);
            let message = refused(&relay);
            assert!(
                message.starts_with(&format!(
                    "spec.relayhost.tls.level: {says} travel in clear text"
                )) && message.contains("set spec.relayhost.tls.allowCleartextCredentials: true")
                    && message.contains("the default with a login is secure"),
                "{message}"
            );
            relay.spec.relayhost.tls = tls(level, true);
            checked(&relay).unwrap();
        }
        // A level that encrypts, or no login, asks for nothing.
        password.spec.relayhost.tls = tls(TlsLevelSpec::Encrypt, false);
        checked(&password).unwrap();
        let mut anonymous = crate::fixtures::relay("anonymous");
        anonymous.spec.relayhost.tls = tls(TlsLevelSpec::None, false);
        checked(&anonymous).unwrap();
    }

    /// Issue 26: a login goes only to a relayhost that proved its identity. A relayhost given
    /// by address needs the CA that certifies it or a level said explicitly, and Microsoft's
    /// and Google's relayhosts always prove their names: the relay's rules refuse the rest,
    /// naming the field and the ways out in the spec's words.
    #[test]
    fn a_login_goes_only_to_a_relayhost_that_can_prove_its_identity() {
        use crate::floor::crd::{RelayhostTlsSpec, TlsLevelSpec};
        use crate::floor::inputs::{OAuth2Keys, RelayhostLogin};
        let invalid = |relay: &SmtpRelay, resolved: Resolved| match CheckedSpec::new(relay)
            .unwrap()
            .judge(resolved)
        {
            Err(Outcome::InvalidSpec { message }) => message,
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("accepted"),
        };
        let login = || Resolved {
            relayhost_login: Some(RelayhostLogin {
                username: "user".into(),
                password: b"secret".to_vec(),
            }),
            ..Resolved::default()
        };
        let mut relay = crate::fixtures::relay("by-address");
        relay.spec.relayhost.host = "10.1.0.1".into();
        relay.spec.relayhost.credentials_secret_ref =
            Some(crate::floor::crd::CredentialsSecretRef {
                name: "login".into(),
                username_key: "username".into(),
                password_key: "password".into(),
            });
        let message = invalid(&relay, login());
        assert!(
            message.starts_with("spec.relayhost.host: 10.1.0.1 is an IP address")
                && message.contains("spec.relayhost.tls.caSecretKeyRef or caConfigMapKeyRef")
                && message.contains("spec.relayhost.tls.level"),
            "{message}"
        );
        relay.spec.relayhost.tls = Some(RelayhostTlsSpec {
            level: Some(TlsLevelSpec::Encrypt),
            ca_secret_key_ref: None,
            ca_config_map_key_ref: None,
            allow_cleartext_credentials: false,
        });
        assert!(CheckedSpec::new(&relay).unwrap().judge(login()).is_ok());

        for (provider, o) in [
            (
                "Microsoft365",
                serde_json::json!({"provider": "Microsoft365", "tenant": "contoso.onmicrosoft.com",
                    "user": "sender@contoso.com", "secretRef": {"name": "app"}}),
            ),
            (
                "Google",
                serde_json::json!({"provider": "Google", "user": "sender@contoso.com",
                    "secretRef": {"name": "app"}}),
            ),
        ] {
            let mut relay = crate::fixtures::relay("provider");
            relay.spec.relayhost.oauth2 = Some(serde_json::from_value(o).unwrap());
            relay.spec.relayhost.tls = Some(RelayhostTlsSpec {
                level: Some(TlsLevelSpec::Encrypt),
                ca_secret_key_ref: None,
                ca_config_map_key_ref: None,
                allow_cleartext_credentials: false,
            });
            let keys = || Resolved {
                relayhost_oauth2: Some(OAuth2Keys {
                    client_id: Some(b"app-id".to_vec()),
                    client_secret: Some(b"s3cret".to_vec()),
                    service_account: None,
                    ..OAuth2Keys::default()
                }),
                ..Resolved::default()
            };
            let message = invalid(&relay, keys());
            assert!(
                message.starts_with(
                    "spec.relayhost.tls.level: encrypt does not make the relayhost prove its name"
                ) && message.contains("set secure"),
                "{provider}: {message}"
            );
            relay.spec.relayhost.tls = None;
            assert!(
                CheckedSpec::new(&relay).unwrap().judge(keys()).is_ok(),
                "{provider}"
            );
        }
    }

    /// A refusal of the relay's rules, `(reason, message)`, of `relay` with `resolved`.
    fn refusal(relay: &SmtpRelay, resolved: Resolved) -> (&'static str, String) {
        match CheckedSpec::new(relay).unwrap().judge(resolved) {
            Err(Outcome::Unresolved { reason, message }) => (reason, message),
            Err(Outcome::InvalidSpec { message }) => ("InvalidSpec", message),
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("accepted"),
        }
    }

    /// A relay logging in with the Secret `mail/relay-creds`, its keys `user` and `pass`.
    fn with_login(password: &[u8]) -> (SmtpRelay, Resolved) {
        use crate::floor::inputs::RelayhostLogin;
        let mut relay = crate::fixtures::relay("r");
        relay.spec.relayhost.credentials_secret_ref =
            Some(crate::floor::crd::CredentialsSecretRef {
                name: "relay-creds".into(),
                username_key: "user".into(),
                password_key: "pass".into(),
            });
        let resolved = Resolved {
            relayhost_login: Some(RelayhostLogin {
                username: "relay-login".into(),
                password: password.to_vec(),
            }),
            ..Resolved::default()
        };
        (relay, resolved)
    }

    /// A relay with the SASL users of the Secret `mail/app-users`, and a certificate for them.
    fn with_users(users: &[(&str, &[u8])]) -> (SmtpRelay, Resolved) {
        use crate::floor::crd::SecretRef;
        use crate::floor::inputs::TlsPair;
        let mut relay = crate::fixtures::relay("r");
        relay.spec.sasl_users_secret_ref = Some(SecretRef {
            name: "app-users".into(),
        });
        let resolved = Resolved {
            sasl_users: Some(
                users
                    .iter()
                    .map(|(name, password)| (name.to_string(), password.to_vec()))
                    .collect(),
            ),
            inbound_tls: Some(TlsPair {
                cert: b"cert".to_vec(),
                key: b"key".to_vec(),
            }),
            ..Resolved::default()
        };
        (relay, resolved)
    }

    /// Issue 24: a value the relay's rules refuse is named as the user wrote it, the spec
    /// field, the Secret and its key (`pass`, not the file `password` it becomes), and never
    /// by the path of the file in the relay pods, which the user never wrote.
    #[test]
    fn a_password_that_is_not_utf8_is_named_by_its_secret_and_key() {
        let (relay, resolved) = with_login(b"hunter2\xff");
        let (reason, message) = refusal(&relay, resolved);
        assert_eq!(reason, "InvalidSecretValue", "{message}");
        assert!(
            message.starts_with(
                "spec.relayhost.credentialsSecretRef: Secret mail/relay-creds key \"pass\" is not UTF-8 text; store it as UTF-8"
            ),
            "{message}"
        );
        assert!(!message.contains("/etc/smtp-relay"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }

    /// The same for a SASL user's password: its key is the user's name.
    #[test]
    fn a_sasl_password_that_is_not_utf8_is_named_by_its_secret_and_key() {
        let (relay, resolved) = with_users(&[("app", b"pw-of-app"), ("billing", b"hunter2\xfe")]);
        let (reason, message) = refusal(&relay, resolved);
        assert_eq!(reason, "InvalidSecretValue", "{message}");
        assert!(
            message.starts_with(
                "spec.saslUsersSecretRef: Secret mail/app-users key \"billing\" is not UTF-8 text; store it as UTF-8"
            ),
            "{message}"
        );
        assert!(!message.contains("/etc/smtp-relay"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }

    /// Every refusal of a mounted file's content names the reference, never the file in the
    /// pods, and says nothing of the value: not UTF-8, not one value, not a service account key.
    #[test]
    fn refusals_of_secret_values_name_the_reference_and_never_the_value() {
        use crate::floor::inputs::OAuth2Keys;
        const MARKER: &str = "FAKE-SECRET-MARKER-Hq4v9";
        let oauth2 = |provider: serde_json::Value, keys: OAuth2Keys| {
            let mut relay = crate::fixtures::relay("r");
            relay.spec.relayhost.oauth2 = Some(serde_json::from_value(provider).unwrap());
            let resolved = Resolved {
                relayhost_oauth2: Some(keys),
                ..Resolved::default()
            };
            (relay, resolved)
        };
        let microsoft = || {
            serde_json::json!({"provider": "Microsoft365", "tenant": "contoso.onmicrosoft.com",
                "user": "sender@contoso.com", "secretRef": {"name": "app"}})
        };
        let google = serde_json::json!({"provider": "Google", "user": "sender@contoso.com",
            "secretRef": {"name": "google-key"}});
        let key = format!(
            r#"{{"client_email": "relay@fake.iam", "private_key": "-----BEGIN PRIVATE KEY-----\n{MARKER}\n-----END PRIVATE KEY-----\n"}}"#
        );
        let cases = [
            {
                let (relay, resolved) = with_login(&[MARKER.as_bytes(), b"\xff"].concat());
                (
                    relay,
                    resolved,
                    "spec.relayhost.credentialsSecretRef: Secret mail/relay-creds key \"pass\" is not UTF-8 text",
                )
            },
            {
                let (relay, resolved) =
                    with_users(&[("app", &[MARKER.as_bytes(), b"\xc3"].concat())]);
                (
                    relay,
                    resolved,
                    "spec.saslUsersSecretRef: Secret mail/app-users key \"app\" is not UTF-8 text",
                )
            },
            {
                let (relay, resolved) = oauth2(
                    microsoft(),
                    OAuth2Keys {
                        client_id: Some(b"app-id".to_vec()),
                        client_secret: Some(format!("two {MARKER}").into_bytes()),
                        ..OAuth2Keys::default()
                    },
                );
                (
                    relay,
                    resolved,
                    "spec.relayhost.oauth2.secretRef: Secret mail/app key \"clientSecret\" must hold one value without spaces or line breaks",
                )
            },
            {
                let (relay, resolved) = oauth2(
                    microsoft(),
                    OAuth2Keys {
                        client_id: Some([MARKER.as_bytes(), b"\xff"].concat()),
                        client_secret: Some(b"s3cret".to_vec()),
                        ..OAuth2Keys::default()
                    },
                );
                (
                    relay,
                    resolved,
                    "spec.relayhost.oauth2.secretRef: Secret mail/app key \"clientId\" is not UTF-8 text",
                )
            },
            {
                // A key stored JSON-encoded a second time, as a string.
                let (relay, resolved) = oauth2(
                    google,
                    OAuth2Keys {
                        service_account: Some(serde_json::to_string(&key).unwrap().into_bytes()),
                        ..OAuth2Keys::default()
                    },
                );
                (
                    relay,
                    resolved,
                    "spec.relayhost.oauth2.secretRef: Secret mail/google-key key \"serviceAccount.json\" is not a service account key",
                )
            },
        ];
        for (relay, resolved, says) in cases {
            let (reason, message) = refusal(&relay, resolved);
            assert_eq!(reason, "InvalidSecretValue", "{message}");
            assert!(message.starts_with(says), "{says:?} in: {message}");
            assert!(!message.contains("/etc/smtp-relay"), "{message}");
            assert!(!message.contains(MARKER), "{message}");
            assert!(!message.contains("relay@fake"), "{message}");
        }
    }

    #[test]
    fn accepts_ipv6_and_ip_relayhost() {
        let mut s = spec();
        s.networks = vec!["fd00::/64".into(), "127.0.0.0/8".into()];
        s.relayhost.host = "2001:db8::1".into();
        assert_eq!(validate_spec(&s), Ok(()));
    }

    #[test]
    fn domains_and_keys() {
        assert!(is_domain("example.net") && is_domain("a-b.c1.example") && is_domain("localhost"));
        assert!(
            !is_domain("")
                && !is_domain("a..b")
                && !is_domain("a_b.net")
                && !is_domain(&"a".repeat(64))
        );
        assert!(
            is_postconf_key("message_size_limit")
                && is_postconf_key("smtpd_tls_security_level")
                && is_postconf_key("smtp_tls_CAfile")
        );
        assert!(
            !is_postconf_key("1abc")
                && !is_postconf_key("Abc")
                && !is_postconf_key("")
                && !is_postconf_key("a-b")
        );
    }

    #[test]
    fn quantities() {
        assert_eq!(quantity_bytes("1Gi"), Some(1 << 30));
        assert_eq!(quantity_bytes("1024Mi"), quantity_bytes("1Gi"));
        assert_eq!(quantity_bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(quantity_bytes("500M"), Some(500_000_000));
        assert_eq!(quantity_bytes("12345"), Some(12345));
        assert_eq!(quantity_bytes("1Xi"), None);
        assert_eq!(quantity_bytes("Gi"), None);
        assert_eq!(quantity_bytes("1.2.3Gi"), None);
        assert_eq!(
            quantity_bytes("99999999999999999999999999999999999999999Ei"),
            None
        );
    }
}
