//! The config file the operator mounts from a ConfigMap, with secrets referenced as files.

use std::fs;
use std::path::Path;

use crate::config_file::{LimitsFile, RateLimitsFile, RelayConfigFile};
use crate::error::{ConfigError, ConfigResult};
use crate::inputs::{self, env::checked_credentials, readable_file, FileRefusal};
use crate::json_error::{json_kind, json_position, json_problem};
use crate::postfix::relay_guard;
use crate::settings::{
    self, HeaderPolicy, InboundTls, Limits, MailAccess, RelayPolicy, Relayhost, SaslUserSource,
    Settings,
};
use crate::validate;

pub fn load(path: &Path) -> ConfigResult<Settings> {
    let text =
        fs::read_to_string(path).map_err(|e| ConfigError::unreadable("--config", path, e))?;
    from_text(&text, path)
}

/// The settings of a config file's `text`, errors named after `path`. A copy of the file kept
/// elsewhere (the last good one on the spool) reads exactly as the file: the paths it names
/// are taken as written, never relative to where the text was read from.
pub fn from_text(text: &str, path: &Path) -> ConfigResult<Settings> {
    let field = path.display().to_string();
    let file: RelayConfigFile = serde_yaml::from_str(text)
        .map_err(|e| ConfigError::invalid(&field, format!("not a valid relay config: {e}")))?;
    settings(&file, &field)
}

/// Validates a parsed config file and reads the secret files it points at. `origin` prefixes
/// field names in errors (the config file's path).
pub fn settings(file: &RelayConfigFile, origin: &str) -> ConfigResult<Settings> {
    Ok(settings_with(
        file,
        &|name| format!("{origin}: {name}"),
        &Disk,
    )?)
}

/// Why [`settings_with`] refuses a config file: one of its fields, or the content of a file it
/// names, told apart so that a caller who mounted the file can say where it comes from.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    File(#[from] FileRefusal),
}

/// The same words, for what reports a [`ConfigError`].
impl From<Refusal> for ConfigError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Config(e) => e,
            Refusal::File(f) => f.into(),
        }
    }
}

/// Where the files a config file names come from.
pub trait Mounted {
    /// A secret file's text, as [`inputs::read_secret_file`] reads it.
    fn secret(&self, field: &str, path: &Path) -> Result<String, Refusal>;
    /// A file that must be there and readable (a certificate, a key, a CA bundle).
    fn file(&self, field: &str, path: &Path) -> ConfigResult<()>;
    /// The directory of SASL users: there, and (when the users are known now) each one valid.
    fn users(&self, field: &str, dir: &Path) -> Result<(), Refusal>;
}

/// The relay's own files.
pub struct Disk;

impl Mounted for Disk {
    fn secret(&self, field: &str, path: &Path) -> Result<String, Refusal> {
        let bytes = fs::read(path).map_err(|e| ConfigError::unreadable(field, path, e))?;
        Ok(inputs::secret_text(field, path, bytes)?)
    }
    fn file(&self, field: &str, path: &Path) -> ConfigResult<()> {
        readable_file(field, path).map(|_| ())
    }
    fn users(&self, field: &str, dir: &Path) -> Result<(), Refusal> {
        // The users themselves are read (and checked) at every reload: crate::sasl.
        fs::read_dir(dir).map_err(|e| ConfigError::unreadable(field, dir, e))?;
        Ok(())
    }
}

/// The files the operator is about to mount, in memory: it judges a spec with exactly the
/// rules the relay applies, before it writes anything. Paths not listed are missing.
#[derive(Default)]
pub struct InMemory {
    pub files: std::collections::BTreeMap<std::path::PathBuf, Vec<u8>>,
    /// The users directory's files (name, content).
    pub users: std::collections::BTreeMap<String, Vec<u8>>,
}

impl Mounted for InMemory {
    fn secret(&self, field: &str, path: &Path) -> Result<String, Refusal> {
        let bytes = self.files.get(path).cloned().ok_or_else(|| {
            ConfigError::invalid(field, format!("{} is not mounted", path.display()))
        })?;
        Ok(inputs::secret_text(field, path, bytes)?)
    }
    fn file(&self, field: &str, path: &Path) -> ConfigResult<()> {
        match self.files.contains_key(path) {
            true => Ok(()),
            false => Err(ConfigError::invalid(
                field,
                format!("{} is not mounted", path.display()),
            )),
        }
    }
    fn users(&self, field: &str, dir: &Path) -> Result<(), Refusal> {
        for (name, bytes) in &self.users {
            let path = dir.join(name);
            validate::sasl_user(field, name)?;
            let password = inputs::secret_text(field, &path, bytes.clone())?;
            validate::password(&format!("{field} ({name})"), &password)?;
        }
        Ok(())
    }
}

/// The OAuth2 login of `relayhost.oauth2`: its grant from the files given, each read now.
fn oauth2_settings(
    o: &crate::config_file::OAuth2File,
    field: &dyn Fn(&str) -> String,
    mounted: &impl Mounted,
) -> Result<settings::OAuth2Settings, Refusal> {
    use crate::settings::{Grant, OAuth2Settings, Secret};
    let f = |name: &str| field(&format!("relayhost.oauth2.{name}"));
    let user = validate::email(&f("user"), &o.user)?;
    let token_endpoint = validate::token_endpoint(&f("tokenEndpoint"), &o.token_endpoint)?;
    let scope = o
        .scope
        .as_deref()
        .map(|s| validate::single_line(&f("scope"), s).map(|()| s.to_string()))
        .transpose()?;
    let token = |name: &str, path: &Path| -> Result<String, Refusal> {
        let value = mounted.secret(&f(name), path)?;
        if value.is_empty() || value.chars().any(char::is_whitespace) {
            return Err(FileRefusal::new(
                f(name),
                path,
                "must hold one value without spaces or line breaks",
            )
            .into());
        }
        Ok(value)
    };
    let grant = match (
        &o.service_account_key_file,
        &o.refresh_token_file,
        &o.client_id_file,
        &o.client_secret_file,
    ) {
        (Some(key_file), _, _, _) => {
            let text = mounted.secret(&f("serviceAccountKeyFile"), key_file)?;
            let key = service_account_key(&text).map_err(|problem| {
                FileRefusal::new(
                    f("serviceAccountKeyFile"),
                    key_file,
                    format!(
                        "is not a service account key (a JSON object with client_email and private_key): {problem}"
                    ),
                )
            })?;
            if crate::oauth2::pem_body(&key.private_key).is_none() {
                return Err(FileRefusal::new(
                    f("serviceAccountKeyFile"),
                    key_file,
                    "holds a private_key that is not a PEM \"PRIVATE KEY\" block: download a new JSON key of the service account",
                )
                .into());
            }
            Grant::ServiceAccount {
                client_email: key.client_email,
                private_key: Secret(key.private_key),
            }
        }
        (None, Some(refresh), Some(id), secret) => Grant::RefreshToken {
            client_id: token("clientIdFile", id)?,
            client_secret: secret
                .as_ref()
                .map(|p| token("clientSecretFile", p).map(Secret))
                .transpose()?,
            refresh_token: Secret(token("refreshTokenFile", refresh)?),
        },
        (None, None, Some(id), Some(secret)) => Grant::ClientCredentials {
            client_id: token("clientIdFile", id)?,
            client_secret: Secret(token("clientSecretFile", secret)?),
        },
        _ => {
            return Err(ConfigError::invalid(
                field("relayhost.oauth2"),
                "give clientIdFile and clientSecretFile (client credentials, e.g. a Microsoft 365 app), refreshTokenFile with clientIdFile (a delegated login), or serviceAccountKeyFile (a Google service account)",
            )
            .into())
        }
    };
    let shared_refresh_token_secret =
        match (&o.shared_refresh_token_secret, &grant) {
            (None, _) => None,
            (Some(name), Grant::RefreshToken { .. }) => {
                validate::object_name(&f("sharedRefreshTokenSecret"), name)?;
                Some(name.clone())
            }
            (Some(_), _) => return Err(ConfigError::invalid(
                f("sharedRefreshTokenSecret"),
                "only a delegated login (refreshTokenFile) has a refresh token to share: remove it",
            )
            .into()),
        };
    Ok(OAuth2Settings {
        user,
        token_endpoint,
        scope,
        grant,
        ca_file: None,
        shared_refresh_token_secret,
    })
}

/// A Google service account key from its file's text, or what is wrong with it, said without
/// a word of the file: serde_json's own messages quote the value they stumble on (`invalid
/// type: string "…"`), and a key stored JSON-encoded as a string would be quoted whole, its
/// private key included, into the relay's log and the SmtpRelay's status and Events. The
/// problem names the JSON field, the kind of error and where it is (line and column).
fn service_account_key(text: &str) -> Result<crate::oauth2::ServiceAccountKey, String> {
    use serde_json::Value;
    let key = serde_json::from_str::<crate::oauth2::ServiceAccountKey>(text);
    // Where serde_json stumbled, if it did; what on, from the JSON's shape.
    let at = key.as_ref().err().map(json_position).unwrap_or_default();
    let value = serde_json::from_str::<Value>(text)
        .map_err(|e| format!("{}{}", json_problem(&e), json_position(&e)))?;
    // (An array would do for serde, its items taken as the fields in order.)
    let Value::Object(object) = &value else {
        let hint = match value {
            Value::String(_) => {
                ": was the key JSON-encoded a second time? Store the key file as downloaded"
            }
            _ => "",
        };
        return Err(format!(
            "the file holds a JSON {}, not an object{at}{hint}",
            json_kind(&value)
        ));
    };
    for (name, required) in [
        ("client_email", true),
        ("private_key", true),
        ("token_uri", false),
    ] {
        match (object.get(name), required) {
            (Some(Value::String(_)), _) | (None | Some(Value::Null), false) => {}
            (None, true) => return Err(format!("its {name} is missing{at}")),
            (Some(other), _) => {
                return Err(format!(
                    "its {name} is a JSON {}, not a string{at}",
                    json_kind(other)
                ))
            }
        }
    }
    key.map_err(|e| format!("{}{at}", json_problem(&e)))
}

/// [`settings()`], with `field` naming each field in errors and the files read from `mounted`:
/// the one judge of a config file, for the relay and for the operator. A refusal of a file's
/// content is a [`Refusal::File`], which names the file apart from what is wrong with it.
#[allow(
    clippy::too_many_lines,
    reason = "one step per field of the config file, in its order: the table reads best whole"
)]
pub fn settings_with(
    file: &RelayConfigFile,
    field: &dyn Fn(&str) -> String,
    mounted: &impl Mounted,
) -> Result<Settings, Refusal> {
    let domain = validate::domain(&field("domain"), &file.domain)?;
    let hostname = file
        .hostname
        .as_deref()
        .map(|h| validate::domain(&field("hostname"), h))
        .transpose()?;
    let networks = file
        .networks
        .iter()
        .map(|n| validate::network(&field("networks"), n))
        .collect::<ConfigResult<Vec<_>>>()?;
    relay_guard::check_networks(&field("networks"), &networks)?;
    let relay_domains = file
        .relay_domains
        .iter()
        .map(|d| validate::domain(&field("relayDomains"), d))
        .collect::<ConfigResult<Vec<_>>>()?;
    let relay_domains = crate::settings::relay_domains(&domain, relay_domains);

    let rh = &file.relayhost;
    validate::relayhost_host(&field("relayhost.host"), &rh.host)?;
    if rh.port == 0 {
        return Err(
            ConfigError::invalid(field("relayhost.port"), "must be from 1 to 65535").into(),
        );
    }
    let relayhost = Relayhost {
        host: rh.host.to_ascii_lowercase(),
        port: rh.port,
        mx_lookup: rh.mx_lookup,
        implicit_tls: rh.implicit_tls,
    };
    let relayhost_credentials = match (&rh.username_file, &rh.password_file) {
        (None, None) => None,
        (Some(user), Some(pass)) => {
            let (uf, pf) = (
                field("relayhost.usernameFile"),
                field("relayhost.passwordFile"),
            );
            let login = mounted.secret(&uf, user)?;
            let password = mounted.secret(&pf, pass)?;
            Some(checked_credentials(&uf, &pf, &login, &password)?)
        }
        (Some(_), None) => {
            return Err(ConfigError::invalid(
                field("relayhost.passwordFile"),
                "is required with usernameFile",
            )
            .into())
        }
        (None, Some(_)) => {
            return Err(ConfigError::invalid(
                field("relayhost.usernameFile"),
                "is required with passwordFile",
            )
            .into())
        }
    };
    let relayhost_oauth2 = match &rh.oauth2 {
        None => None,
        Some(_) if relayhost_credentials.is_some() => return Err(ConfigError::invalid(
            field("relayhost.oauth2"),
            "and usernameFile/passwordFile are exclusive: log in with OAuth2 or with a password",
        )
        .into()),
        Some(o) => Some(oauth2_settings(o, field, mounted)?),
    };
    // (The CA bundle is checked below; the token endpoint trusts it too.)
    let relayhost_oauth2 = relayhost_oauth2.map(|o| settings::OAuth2Settings {
        ca_file: rh.tls_ca_file.clone(),
        ..o
    });
    let logs_in = relayhost_credentials.is_some() || relayhost_oauth2.is_some();
    let relayhost_tls_level = inputs::tls_level(
        &field("relayhost.tlsLevel"),
        None,
        rh.tls_level,
        rh.implicit_tls,
        logs_in,
    )?;
    let relayhost_tls_ca_file = match &rh.tls_ca_file {
        Some(path) => {
            mounted.file(&field("relayhost.tlsCaFile"), path)?;
            Some(path.clone())
        }
        None => inputs::default_ca_file(),
    };

    let postmaster = file
        .postmaster
        .as_deref()
        .map(|p| validate::email(&field("postmaster"), p))
        .transpose()?;
    let policy = match (&file.mode, &file.custom_restrictions) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                field("customRestrictions"),
                "mode and customRestrictions are exclusive; set only one",
            )
            .into())
        }
        (_, Some(list)) => {
            let vouch = crate::postfix::restrictions::Vouch {
                field: &field("trustRestrictionTables"),
                given: file.trust_restriction_tables,
            };
            crate::postfix::restrictions::check_custom(&field("customRestrictions"), list, vouch)?;
            RelayPolicy::Custom(list.clone())
        }
        (mode, None) => RelayPolicy::Mode(mode.unwrap_or_default()),
    };
    let sasl_users = match &file.sasl_users_dir {
        None => SaslUserSource::None,
        Some(dir) => {
            mounted.users(&field("saslUsersDir"), dir)?;
            SaslUserSource::Directory(dir.clone())
        }
    };
    let inbound_tls = file
        .inbound_tls
        .as_ref()
        .map(|tls| -> ConfigResult<InboundTls> {
            mounted.file(&field("inboundTls.certFile"), &tls.cert_file)?;
            mounted.file(&field("inboundTls.keyFile"), &tls.key_file)?;
            Ok(InboundTls {
                cert_file: tls.cert_file.clone(),
                key_file: tls.key_file.clone(),
                min_version: file.inbound_tls_min_version.unwrap_or_default(),
            })
        })
        .transpose()?;
    if let (Some(min), None) = (file.inbound_tls_min_version, &inbound_tls) {
        return Err(ConfigError::invalid(
            field("inboundTlsMinVersion"),
            format!("is {min}, but the relay offers clients no TLS: give inboundTls (certFile and keyFile), or remove it"),
        ).into());
    }
    settings::require_tls_for_sasl(
        &sasl_users,
        inbound_tls.as_ref(),
        &field("inboundTls"),
        "Give inboundTls.certFile and inboundTls.keyFile (the operator does: from spec.tlsSecretRef, or a certificate it issues), or remove saslUsersDir",
    )?;
    for (name, value) in &file.postconf {
        validate::postconf_name(&field("postconf"), name)?;
        validate::postconf_known(&field(&format!("postconf.{name}")), name)?;
        relay_guard::check_postconf(&field(&format!("postconf.{name}")), name)?;
        validate::single_line(&field(&format!("postconf.{name}")), value)?;
        validate::postconf_value(&field(&format!("postconf.{name}")), name, value)?;
    }
    relay_guard::check_spool_reserve(&field("postconf.queue_minfree"), &file.postconf)?;
    // The login goes only to a relayhost that proves its identity, unless a level says
    // otherwise: a relayhost given by address needs a CA or a level, and a known provider's
    // relayhost proves its name, always.
    settings::require_relayhost_identity(
        &relayhost,
        relayhost_tls_level,
        logs_in,
        rh.tls_ca_file.is_some(),
        &field("relayhost.host"),
        &format!(
            "Give its host name (its certificate must name it); or the CA that signed its certificate, which must then carry {} as an IP address subjectAltName (spec.relayhost.tls.caSecretKeyRef or caConfigMapKeyRef; relay.yaml: relayhost.tlsCaFile); or choose a level explicitly in spec.relayhost.tls.level (relay.yaml: relayhost.tlsLevel): encrypt encrypts, but anyone who answers receives the login, and is flagged",
            relayhost.host
        ),
    )?;
    if let Some(o) = &relayhost_oauth2 {
        settings::require_verified_provider(
            &o.token_endpoint,
            relayhost_tls_level,
            relayhost.mx_lookup,
            &field("relayhost.tlsLevel"),
        )?;
    }

    let ports = file.submission.clone().unwrap_or_default();
    let submission = inputs::submission_ports(
        ports.starttls_port,
        ports.implicit_tls_port,
        &sasl_users,
        &|implicit| {
            field(if implicit {
                "submission.implicitTlsPort"
            } else {
                "submission.starttlsPort"
            })
        },
        "give saslUsersDir, or remove it",
    )?;
    let user_limits = user_limits(file, &sasl_users, field)?;
    Ok(Settings {
        hostname,
        domain,
        networks,
        relay_domains,
        relayhost,
        relayhost_credentials,
        relayhost_oauth2,
        relayhost_tls_level,
        relayhost_tls_ca_file,
        relayhost_delivery_interval_secs: rh
            .delivery_interval_seconds
            .map(|n| validate::delivery_interval(&field("relayhost.deliveryIntervalSeconds"), n))
            .transpose()?,
        postmaster,
        strict_sender: file.strict_sender,
        policy,
        trust_restriction_tables: file.trust_restriction_tables,
        sasl_users,
        inbound_tls,
        proxy_protocol_port: file
            .proxy_protocol_port
            .map(|port| validate::listen_port(&field("proxyProtocolPort"), port))
            .transpose()?,
        submission,
        headers: header_policy(file, field)?,
        access: mail_access(file, field)?,
        client_limits: client_limits(file, field)?,
        user_limits,
        sandbox: file
            .sandbox
            .as_ref()
            .map(|sb| {
                let (all, mailbox, prefix) = (
                    field("sandbox"),
                    field("sandbox.mailbox"),
                    field("postconf."),
                );
                inputs::sandbox(
                    sb.mode,
                    sb.mailbox.as_deref(),
                    &file.postconf,
                    &inputs::SandboxFields {
                        sandbox: &all,
                        mailbox: &mailbox,
                        postconf_prefix: &prefix,
                    },
                )
            })
            .transpose()?,
        postconf: file.postconf.clone(),
        postconf_field_prefix: field("postconf."),
    })
}

/// `headers`, validated ([`inputs::header_policy`]); omitted, the defaults.
fn header_policy(
    file: &RelayConfigFile,
    field: &dyn Fn(&str) -> String,
) -> ConfigResult<HeaderPolicy> {
    let Some(headers) = &file.headers else {
        return Ok(HeaderPolicy::default());
    };
    let remove = strs(&headers.remove);
    let (all, list, prefix) = (
        field("headers"),
        field("headers.remove"),
        field("postconf."),
    );
    inputs::header_policy(
        headers.reveal_client,
        &remove,
        &file.postconf,
        &inputs::HeaderFields {
            headers: &all,
            remove: &list,
            postconf_prefix: &prefix,
        },
    )
}

/// `rateLimits.perClient`, validated ([`inputs::client_limits`]); omitted, no limit.
fn client_limits(
    file: &RelayConfigFile,
    field: &dyn Fn(&str) -> String,
) -> ConfigResult<Option<Limits>> {
    let Some((interval, per_client)) = limits_file(file, |l| l.per_client.as_ref()) else {
        return Ok(None);
    };
    let (all, interval_field, prefix) = (
        field("rateLimits.perClient"),
        field("rateLimits.intervalSeconds"),
        field("postconf."),
    );
    inputs::client_limits(
        interval,
        per_client.counts(),
        &file.postconf,
        &inputs::LimitFields {
            limits: &all,
            interval: &interval_field,
            postconf_prefix: &prefix,
        },
    )
    .map(Some)
}

/// `rateLimits.perUser`, validated ([`inputs::user_limits`]); omitted, no limit.
fn user_limits(
    file: &RelayConfigFile,
    users: &SaslUserSource,
    field: &dyn Fn(&str) -> String,
) -> ConfigResult<Option<Limits>> {
    let Some((interval, per_user)) = limits_file(file, |l| l.per_user.as_ref()) else {
        return Ok(None);
    };
    let (all, interval_field, prefix) = (
        field("rateLimits.perUser"),
        field("rateLimits.intervalSeconds"),
        field("postconf."),
    );
    inputs::user_limits(
        interval,
        per_user.counts(),
        users,
        &file.postconf,
        &inputs::LimitFields {
            limits: &all,
            interval: &interval_field,
            postconf_prefix: &prefix,
        },
        "give saslUsersDir, or remove it",
    )
    .map(Some)
}

/// The interval and one set of limits of `rateLimits`, when both are there.
fn limits_file<'a>(
    file: &'a RelayConfigFile,
    which: impl Fn(&'a RateLimitsFile) -> Option<&'a LimitsFile>,
) -> Option<(Option<u32>, &'a LimitsFile)> {
    let limits = file.rate_limits.as_ref()?;
    which(limits).map(|l| (limits.interval_seconds, l))
}

/// The entries of a list as the inputs read them.
fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `senders` and `recipients`, validated ([`inputs::mail_access`]); omitted, nothing
/// restricted.
fn mail_access(file: &RelayConfigFile, field: &dyn Fn(&str) -> String) -> ConfigResult<MailAccess> {
    let senders = file.senders.clone().unwrap_or_default();
    let recipients = file.recipients.clone().unwrap_or_default();
    let input = inputs::AccessInput {
        allowed_senders: strs(&senders.allowed),
        allowed_recipients: strs(&recipients.allowed),
        bindings: senders
            .bindings
            .iter()
            .map(|b| (b.user.as_str(), strs(&b.senders)))
            .collect(),
    };
    let binding = |i: usize, part: &str| field(&format!("senders.bindings[{i}].{part}"));
    let (allowed, to, bindings, prefix) = (
        field("senders.allowed"),
        field("recipients.allowed"),
        field("senders.bindings"),
        field("postconf."),
    );
    inputs::mail_access(
        &input,
        &file.postconf,
        &inputs::AccessFields {
            senders: &allowed,
            recipients: &to,
            bindings: &bindings,
            binding: &binding,
            postconf_prefix: &prefix,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config_file::{HeadersFile, RelayhostFile};
    use crate::settings::{Mode, TlsLevel};

    /// `postconf` entries as the config file holds them.
    fn entries(postconf: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
        postconf
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn base() -> RelayConfigFile {
        RelayConfigFile {
            domain: "example.net".into(),
            relayhost: RelayhostFile {
                host: "smtp.example.net".into(),
                port: 587,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn secrets_come_from_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("username"), "relay-user\n").unwrap();
        fs::write(dir.path().join("password"), " spaced } pass, wörd=:\n").unwrap();
        let mut f = base();
        f.relayhost.username_file = Some(dir.path().join("username"));
        f.relayhost.password_file = Some(dir.path().join("password"));
        f.mode = Some(Mode::AllowAuthNoDomain);
        let s = settings(&f, "relay.yaml").unwrap();
        let creds = s.relayhost_credentials.unwrap();
        assert_eq!(creds.login, "relay-user");
        assert_eq!(creds.password, " spaced } pass, wörd=:");
        assert_eq!(s.policy, RelayPolicy::Mode(Mode::AllowAuthNoDomain));
    }

    #[test]
    fn errors_name_the_field() {
        let mut f = base();
        f.networks = vec!["10.0.0.0/99".into()];
        assert!(settings(&f, "relay.yaml")
            .unwrap_err()
            .to_string()
            .starts_with("relay.yaml: networks:"));
        let mut f = base();
        f.mode = Some(Mode::Strict);
        f.custom_restrictions = Some(vec!["reject".into()]);
        assert!(settings(&f, "relay.yaml")
            .unwrap_err()
            .to_string()
            .contains("exclusive"));
        let mut f = base();
        f.relayhost.password_file = Some("/nonexistent/password".into());
        assert!(settings(&f, "relay.yaml")
            .unwrap_err()
            .to_string()
            .contains("relayhost.usernameFile"));
        let mut f = base();
        f.sasl_users_dir = Some("/nonexistent/users".into());
        assert!(settings(&f, "relay.yaml")
            .unwrap_err()
            .to_string()
            .contains("saslUsersDir"));
    }

    #[test]
    fn limits_per_client_are_counts_over_an_interval() {
        use crate::config_file::{LimitsFile, RateLimitsFile};
        let with = |interval: Option<u32>, limits: LimitsFile, postconf: &[(&str, &str)]| {
            let mut f = base();
            f.rate_limits = Some(RateLimitsFile {
                interval_seconds: interval,
                per_client: Some(limits),
                per_user: None,
            });
            f.postconf = entries(postconf);
            settings(&f, "relay.yaml").map(|s| s.client_limits)
        };
        let messages = |n| LimitsFile {
            messages: Some(n),
            ..Default::default()
        };
        let l = with(None, messages(100), &[]).unwrap().unwrap();
        assert_eq!(
            (l.interval_secs, l.messages, l.connections),
            (60, Some(100), None)
        );
        let err = |r: ConfigResult<Option<crate::settings::Limits>>| r.unwrap_err().to_string();
        assert!(err(with(None, messages(0), &[])).starts_with(
            "relay.yaml: rateLimits.perClient: a limit of 0 would refuse every client"
        ));
        assert!(err(with(None, LimitsFile::default(), &[]))
            .starts_with("relay.yaml: rateLimits.perClient: sets no limit"));
        assert!(err(with(Some(0), messages(1), &[]))
            .starts_with("relay.yaml: rateLimits.intervalSeconds: 0 is not an interval"));
        assert_eq!(
            err(with(None, messages(1), &[("anvil_rate_time_unit", "30s")])),
            "relay.yaml: rateLimits.perClient: and relay.yaml: postconf.anvil_rate_time_unit both set Postfix's anvil_rate_time_unit: keep one"
        );
    }

    #[test]
    fn limits_per_user_need_users() {
        use crate::config_file::{LimitsFile, RateLimitsFile};
        let mut f = base();
        f.rate_limits = Some(RateLimitsFile {
            interval_seconds: Some(600),
            per_client: None,
            per_user: Some(LimitsFile {
                recipients: Some(10),
                ..Default::default()
            }),
        });
        let err = settings(&f, "relay.yaml").unwrap_err().to_string();
        assert_eq!(
            err,
            "relay.yaml: rateLimits.perUser: counts what each SASL user sends, and the relay has none: give saslUsersDir, or remove it"
        );
    }

    #[test]
    fn a_sandbox_has_a_mailbox_exactly_when_it_delivers_to_one() {
        use crate::config_file::{SandboxFile, SandboxMode};
        use crate::settings::Sandbox;
        let with = |mode, mailbox: Option<&str>, postconf: &[(&str, &str)]| {
            let mut f = base();
            f.sandbox = Some(SandboxFile {
                mode,
                mailbox: mailbox.map(str::to_string),
            });
            f.postconf = entries(postconf);
            settings(&f, "relay.yaml").map(|s| s.sandbox)
        };
        assert_eq!(
            with(SandboxMode::CatchAll, Some("QA@example.net"), &[]).unwrap(),
            Some(Sandbox::CatchAll("QA@example.net".into()))
        );
        assert_eq!(
            with(SandboxMode::Hold, None, &[]).unwrap(),
            Some(Sandbox::Hold)
        );
        let err = |r: ConfigResult<Option<Sandbox>>| r.unwrap_err().to_string();
        assert!(err(with(SandboxMode::CatchAll, None, &[]))
            .starts_with("relay.yaml: sandbox.mailbox: is missing"));
        assert!(err(with(SandboxMode::Discard, Some("qa@example.net"), &[]))
            .starts_with("relay.yaml: sandbox.mailbox: is only for a CatchAll sandbox"));
        assert!(err(with(SandboxMode::CatchAll, Some("qa"), &[]))
            .starts_with("relay.yaml: sandbox.mailbox: \"qa\" is not an e-mail address"));
        assert_eq!(
            err(with(
                SandboxMode::Hold,
                None,
                &[("recipient_canonical_maps", "hash:/etc/x")]
            )),
            "relay.yaml: sandbox: and relay.yaml: postconf.recipient_canonical_maps both set Postfix's recipient_canonical_maps: keep one"
        );
    }

    #[test]
    fn submission_ports_need_sasl_users_and_ports_of_their_own() {
        use crate::config_file::SubmissionFile;
        let mut f = base();
        f.submission = Some(SubmissionFile {
            starttls_port: Some(587),
            implicit_tls_port: None,
        });
        assert_eq!(
            settings(&f, "relay.yaml").unwrap_err().to_string(),
            "relay.yaml: submission.starttlsPort: is a port where only SASL users send, and the relay has none: give saslUsersDir, or remove it"
        );
        f.submission = Some(SubmissionFile {
            starttls_port: None,
            implicit_tls_port: Some(0),
        });
        assert!(settings(&f, "relay.yaml")
            .unwrap_err()
            .to_string()
            .starts_with("relay.yaml: submission.implicitTlsPort: 0 is not a port"));
    }

    #[test]
    fn sender_and_recipient_lists_are_checked_with_the_field_named() {
        use crate::config_file::{RecipientsFile, SenderBindingFile, SendersFile};
        use crate::settings::MailPattern;
        let binding = |user: &str, senders: &[&str]| SenderBindingFile {
            user: user.into(),
            senders: senders.iter().map(|s| s.to_string()).collect(),
        };
        let refused = |senders: SendersFile, postconf: &[(&str, &str)]| {
            let mut f = base();
            f.senders = Some(senders);
            f.postconf = entries(postconf);
            settings(&f, "relay.yaml").unwrap_err().to_string()
        };
        let allowed = |list: &[&str]| SendersFile {
            allowed: list.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let bound = |b: Vec<SenderBindingFile>| SendersFile {
            bindings: b,
            ..Default::default()
        };
        assert!(refused(allowed(&["a b@example.net"]), &[])
            .starts_with("relay.yaml: senders.allowed: \"a b@example.net\" is not an address"));
        assert!(refused(allowed(&["@example.net"]), &[])
            .contains("has no local part: write the domain alone (example.net)"));
        assert!(refused(allowed(&["*.example.net"]), &[])
            .contains("is neither an address nor a domain"));
        assert!(
            refused(bound(vec![binding("app 1", &["example.net"])]), &[]).starts_with(
                "relay.yaml: senders.bindings[0].user: \"app 1\" is not a valid SASL user name"
            )
        );
        assert!(refused(
            bound(vec![
                binding("a", &["example.net"]),
                binding("a", &["x.example"])
            ]),
            &[]
        )
        .starts_with("relay.yaml: senders.bindings[1].user: \"a\" is bound twice"));
        assert!(refused(bound(vec![binding("a", &[])]), &[])
            .starts_with("relay.yaml: senders.bindings[0].senders: \"a\" is bound to no sender"));
        assert!(refused(bound(vec![binding("a", &["x@@y"])]), &[])
            .starts_with("relay.yaml: senders.bindings[0].senders: \"x@@y\""));
        assert_eq!(
            refused(
                bound(vec![binding("a", &["example.net"])]),
                &[("smtpd_sender_login_maps", "hash:/etc/postfix/logins")]
            ),
            "relay.yaml: senders.bindings: and relay.yaml: postconf.smtpd_sender_login_maps both set Postfix's smtpd_sender_login_maps: keep one"
        );
        assert_eq!(
            refused(
                bound(vec![binding("a", &["example.net"])]),
                &[("smtpd_milters", "inet:127.0.0.1:8891")]
            ),
            "relay.yaml: senders.bindings: and relay.yaml: postconf.smtpd_milters both set Postfix's smtpd_milters: keep one"
        );
        let many: Vec<String> = (0..129).map(|i| format!("d{i}.example")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(refused(allowed(&many), &[]).contains("at most 128"));

        let mut f = base();
        f.senders = Some(SendersFile {
            allowed: vec!["Alerts@Example.NET".into()],
            bindings: vec![binding("app1", &["billing.example.net"])],
        });
        f.recipients = Some(RecipientsFile {
            allowed: vec!["example.org.".into()],
        });
        let s = settings(&f, "relay.yaml").unwrap();
        assert_eq!(
            s.access.allowed_senders,
            [MailPattern::Address("alerts@example.net".into())]
        );
        assert_eq!(
            s.access.allowed_recipients,
            [MailPattern::Domain("example.org".into())]
        );
        assert_eq!(s.access.sender_bindings[0].user, "app1");
    }

    #[test]
    fn headers_are_checked_and_own_their_postfix_parameter() {
        let refused = |headers: HeadersFile, postconf: &[(&str, &str)]| {
            let mut f = base();
            f.headers = Some(headers);
            f.postconf = entries(postconf);
            settings(&f, "relay.yaml").unwrap_err().to_string()
        };
        let remove = |names: &[&str]| HeadersFile {
            remove: names.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        };
        assert!(refused(remove(&["X-Mailer:"]), &[])
            .starts_with("relay.yaml: headers.remove: \"X-Mailer:\" is not a header name"));
        assert!(refused(remove(&["Received"]), &[]).contains("Received cannot be removed"));
        assert!(refused(remove(&["content-type"]), &[]).contains("cannot be removed"));
        let many: Vec<String> = (0..33).map(|i| format!("X-H{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(refused(remove(&many), &[]).contains("at most 32"));
        assert_eq!(
            refused(
                HeadersFile::default(),
                &[("smtp_header_checks", "regexp:/etc/postfix/mine")]
            ),
            "relay.yaml: headers: and relay.yaml: postconf.smtp_header_checks both set Postfix's smtp_header_checks: keep one"
        );
        let mut f = base();
        f.headers = Some(remove(&["X-Mailer", "X-Originating-IP"]));
        let s = settings(&f, "relay.yaml").unwrap();
        assert_eq!(s.headers.remove, ["X-Mailer", "X-Originating-IP"]);
        assert!(!s.headers.reveal_client);
    }

    /// Issue 24: a refusal of a file's content holds the file apart from what is wrong with
    /// it, so the operator can name the Secret key the file comes from; the relay's own
    /// message names the file by its path, as it always did.
    #[test]
    fn a_refused_file_is_held_apart_from_its_problem() {
        let dir = tempfile::tempdir().unwrap();
        let (user, pass) = (dir.path().join("username"), dir.path().join("password"));
        fs::write(&user, "relay-user").unwrap();
        fs::write(&pass, b"hunter2\xff").unwrap();
        let mut f = base();
        f.relayhost.username_file = Some(user.clone());
        f.relayhost.password_file = Some(pass.clone());
        let err = settings(&f, "relay.yaml").unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "relay.yaml: relayhost.passwordFile: {} is not UTF-8 text; store it as UTF-8",
                pass.display()
            )
        );
        let mut mounted = InMemory::default();
        mounted.files.insert(user, b"relay-user".to_vec());
        mounted.files.insert(pass.clone(), b"hunter2\xff".to_vec());
        match settings_with(&f, &|n| format!("spec: {n}"), &mounted) {
            Err(Refusal::File(refused)) => assert_eq!(
                refused,
                FileRefusal::new(
                    "spec: relayhost.passwordFile",
                    pass,
                    "is not UTF-8 text; store it as UTF-8"
                )
            ),
            other => panic!("{other:?}"),
        }
        // A SASL user's file is named by the user, in the users' directory.
        let mut f = base();
        f.sasl_users_dir = Some("/users".into());
        let mut mounted = InMemory::default();
        mounted.users.insert("app".into(), b"\xfehunter2".to_vec());
        match settings_with(&f, &|n| n.to_string(), &mounted) {
            Err(Refusal::File(refused)) => {
                assert_eq!(refused.path, Path::new("/users/app"));
                assert_eq!(
                    refused.to_string(),
                    "saslUsersDir: /users/app is not UTF-8 text; store it as UTF-8"
                );
            }
            other => panic!("{other:?}"),
        }
        // What is not a file's content stays the field's.
        let mut f = base();
        f.domain = "not a domain".into();
        assert!(matches!(
            settings_with(&f, &|n| n.to_string(), &InMemory::default()),
            Err(Refusal::Config(_))
        ));
    }

    /// Issue 26: a login to a relayhost given by address needs the CA that signed its
    /// certificate (matched against its IP subjectAltName) or a level chosen explicitly; the
    /// refusal names the host and both ways out, in the operator's words too.
    #[test]
    fn a_login_to_an_ip_address_needs_a_ca_or_a_level() {
        let dir = tempfile::tempdir().unwrap();
        for (name, value) in [("username", "user"), ("password", "pw"), ("ca.crt", "CA")] {
            fs::write(dir.path().join(name), value).unwrap();
        }
        let with = |f: &dyn Fn(&mut RelayhostFile)| {
            let mut file = base();
            file.relayhost.host = "10.1.0.1".into();
            file.relayhost.username_file = Some(dir.path().join("username"));
            file.relayhost.password_file = Some(dir.path().join("password"));
            f(&mut file.relayhost);
            settings(&file, "relay.yaml")
        };
        let err = with(&|_| {}).unwrap_err().to_string();
        assert!(
            err.starts_with("relay.yaml: relayhost.host: 10.1.0.1 is an IP address")
                && err.contains("caSecretKeyRef")
                && err.contains("spec.relayhost.tls.level"),
            "{err}"
        );
        let s = with(&|r| r.tls_ca_file = Some(dir.path().join("ca.crt"))).unwrap();
        assert_eq!(s.relayhost_tls(), TlsLevel::Secure);
        assert!(!s.relayhost_unverified());
        let s = with(&|r| r.tls_level = Some(TlsLevel::Encrypt)).unwrap();
        assert!(s.relayhost_unverified());
        // Without a login there is nothing to hand over.
        let mut f = base();
        f.relayhost.host = "10.1.0.1".into();
        assert!(settings(&f, "relay.yaml").is_ok());
    }

    #[test]
    fn yaml_round_trip_rejects_unknown_fields() {
        let text = "domain: example.net\nrelayhost: {host: relay, port: 25}\nbogus: 1\n";
        let err = serde_yaml::from_str::<RelayConfigFile>(text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
    }

    /// Issue 25: `relayhost.deliveryIntervalSeconds` is read by that name, left out when not
    /// given, and refused when it paces nothing or more than Postfix can count.
    #[test]
    fn the_delivery_interval_is_read_and_checked() {
        let text = "domain: example.net\nrelayhost: {host: smtp.example.net, deliveryIntervalSeconds: 6}\n";
        let f: RelayConfigFile = serde_yaml::from_str(text).unwrap();
        assert_eq!(f.relayhost.delivery_interval_seconds, Some(6));
        assert_eq!(
            settings(&f, "relay.yaml")
                .unwrap()
                .relayhost_delivery_interval_secs,
            Some(6)
        );
        let written = serde_yaml::to_string(&base()).unwrap();
        assert!(!written.contains("deliveryInterval"), "{written}");
        assert_eq!(
            settings(&base(), "relay.yaml")
                .unwrap()
                .relayhost_delivery_interval_secs,
            None
        );
        for (seconds, says) in [
            (0, "0 paces nothing"),
            (u32::MAX, "more seconds than Postfix can count"),
        ] {
            let mut f = base();
            f.relayhost.delivery_interval_seconds = Some(seconds);
            let err = settings(&f, "relay.yaml").unwrap_err().to_string();
            assert!(
                err.starts_with("relay.yaml: relayhost.deliveryIntervalSeconds: ")
                    && err.contains(says),
                "{err}"
            );
        }
        // The longest is still a time Postfix reads, the kept connection's one second more too.
        let mut f = base();
        f.relayhost.delivery_interval_seconds = Some(validate::MAX_DELIVERY_INTERVAL);
        let s = settings(&f, "relay.yaml").unwrap();
        let layout = crate::postfix::layout::Layout {
            config_dir: "/run/pf".into(),
            spool_dir: "/var/spool/postfix".into(),
            data_dir: "/data".into(),
            listen: "[::]:25".into(),
        };
        for (name, value) in crate::postfix::main_cf::parameters(&s, &layout) {
            crate::postfix::types::check(&name, &name, &value).unwrap();
        }
    }

    /// Issue 26: `inboundTlsMinVersion` is read by its `TLSv1.x` name, defaults to TLS 1.2,
    /// and means something only with `inboundTls`.
    #[test]
    fn the_inbound_tls_floor_goes_with_the_certificate() {
        use crate::settings::TlsMinVersion;
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        fs::write(&cert, "certificate").unwrap();
        fs::write(&key, "key").unwrap();
        let text = format!(
            "domain: example.net\nrelayhost: {{host: smtp.example.net}}\ninboundTls: {{certFile: {}, keyFile: {}}}\n",
            cert.display(),
            key.display()
        );
        let mut f: RelayConfigFile = serde_yaml::from_str(&text).unwrap();
        let min = |f: &RelayConfigFile| {
            settings(f, "relay.yaml")
                .unwrap()
                .inbound_tls
                .unwrap()
                .min_version
        };
        assert_eq!(min(&f), TlsMinVersion::Tls1_2);
        let legacy: RelayConfigFile =
            serde_yaml::from_str(&format!("{text}inboundTlsMinVersion: TLSv1.0\n")).unwrap();
        assert_eq!(min(&legacy), TlsMinVersion::Tls1_0);
        assert!(
            serde_yaml::from_str::<RelayConfigFile>(&format!("{text}inboundTlsMinVersion: 1.0\n"))
                .is_err(),
            "a number is not a version"
        );
        f.inbound_tls = None;
        f.inbound_tls_min_version = Some(TlsMinVersion::Tls1_0);
        let err = settings(&f, "relay.yaml").unwrap_err().to_string();
        assert!(
            err.starts_with(
                "relay.yaml: inboundTlsMinVersion: is TLSv1.0, but the relay offers clients no TLS"
            ),
            "{err}"
        );
    }

    const OAUTH2_ENDPOINT: &str = "https://login.microsoftonline.com/t/oauth2/v2.0/token";

    /// A directory with an OAuth2 app's files: `id`, `secret`, `rt` (a refresh token).
    fn oauth2_app_files() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, value) in [("id", "app-id\n"), ("secret", "s3cret"), ("rt", "refresh")] {
            fs::write(dir.path().join(name), value).unwrap();
        }
        dir
    }

    /// A login as `sender@example.net` with the client id of [`oauth2_app_files`].
    fn oauth2_login(dir: &Path, endpoint: &str) -> crate::config_file::OAuth2File {
        crate::config_file::OAuth2File {
            user: "sender@example.net".into(),
            token_endpoint: endpoint.into(),
            client_id_file: Some(dir.join("id")),
            ..Default::default()
        }
    }

    /// The settings of the base config with `o` as its OAuth2 login.
    fn file(o: crate::config_file::OAuth2File) -> ConfigResult<Settings> {
        let mut f = base();
        f.relayhost.oauth2 = Some(o);
        settings(&f, "relay.yaml")
    }

    #[test]
    fn an_oauth2_login_is_one_grant_named_by_its_files() {
        use crate::config_file::OAuth2File;
        use crate::settings::Grant;
        let dir = oauth2_app_files();
        let login = |endpoint: &str| oauth2_login(dir.path(), endpoint);
        let endpoint = OAUTH2_ENDPOINT;

        let credentials = file(OAuth2File {
            client_secret_file: Some(dir.path().join("secret")),
            ..login(endpoint)
        })
        .unwrap();
        assert!(matches!(
            credentials.relayhost_oauth2.as_ref().unwrap().grant,
            Grant::ClientCredentials { ref client_id, .. } if client_id == "app-id"
        ));
        // A login without TLS would send the token in clear, and with TLS to whoever answers:
        // the default is to require TLS and the relayhost's name in its certificate.
        assert_eq!(credentials.relayhost_tls(), TlsLevel::Secure);
        // Microsoft's relayhosts always prove their names: no weaker level for this login.
        for level in [TlsLevel::Encrypt, TlsLevel::May] {
            let mut f = base();
            f.relayhost.tls_level = Some(level);
            f.relayhost.oauth2 = Some(OAuth2File {
                client_secret_file: Some(dir.path().join("secret")),
                ..login(endpoint)
            });
            let err = settings(&f, "relay.yaml").unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("relay.yaml: relayhost.tlsLevel: {level} does not"))
                    && err.contains("Microsoft 365"),
                "{err}"
            );
        }

        let delegated = file(OAuth2File {
            refresh_token_file: Some(dir.path().join("rt")),
            ..login(endpoint)
        })
        .unwrap();
        assert!(matches!(
            delegated.relayhost_oauth2.unwrap().grant,
            Grant::RefreshToken {
                client_secret: None,
                ..
            }
        ));

        let err = |o: OAuth2File| file(o).unwrap_err().to_string();
        let missing = err(login(endpoint));
        assert!(
            missing.contains("relayhost.oauth2") && missing.contains("clientSecretFile"),
            "{missing}"
        );
        let clear = err(OAuth2File {
            client_secret_file: Some(dir.path().join("secret")),
            ..login("http://login.example.com/token")
        });
        assert!(
            clear.contains("relayhost.oauth2.tokenEndpoint") && clear.contains("https://"),
            "{clear}"
        );
        assert!(file(OAuth2File {
            client_secret_file: Some(dir.path().join("secret")),
            ..login("http://127.0.0.1:8080/token")
        })
        .is_ok());

        let mut both = base();
        both.relayhost.username_file = Some(dir.path().join("id"));
        both.relayhost.password_file = Some(dir.path().join("secret"));
        both.relayhost.oauth2 = Some(OAuth2File {
            client_secret_file: Some(dir.path().join("secret")),
            ..login(endpoint)
        });
        let exclusive = settings(&both, "relay.yaml").unwrap_err().to_string();
        assert!(
            exclusive.contains("relayhost.oauth2") && exclusive.contains("exclusive"),
            "{exclusive}"
        );
    }

    /// The private key of the fake service account keys below: never in a message.
    const KEY_MARKER: &str = "FAKE-PRIVATE-KEY-MARKER-Zq7Xw3";

    /// A fake Google service account key file's text, its `private_key` JSON value given.
    fn fake_key(private_key: &str) -> String {
        format!(
            r#"{{"type": "service_account", "client_email": "relay@fake-project.iam.gserviceaccount.com", "private_key": {private_key}}}"#
        )
    }

    /// The refusals of a config whose OAuth2 login is the service account key `text` (the
    /// file's content): by the relay, reading it from disk, and by the operator, in memory.
    fn service_account_key_refusals(text: &str) -> [String; 2] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serviceAccount.json");
        fs::write(&path, text).unwrap();
        let mut f = base();
        f.relayhost.oauth2 = Some(crate::config_file::OAuth2File {
            user: "sender@example.net".into(),
            token_endpoint: "https://oauth2.googleapis.com/token".into(),
            service_account_key_file: Some(path.clone()),
            ..Default::default()
        });
        let disk = settings(&f, "relay.yaml").unwrap_err().to_string();
        let mut mounted = InMemory::default();
        mounted.files.insert(path, text.as_bytes().to_vec());
        let memory = settings_with(&f, &|n| format!("spec: {n}"), &mounted)
            .unwrap_err()
            .to_string();
        [disk, memory]
    }

    /// `message` holds nothing of the secret `value`: not the fake private key, not the
    /// e-mail address, not any run of 16 characters of it.
    fn says_nothing_of(message: &str, value: &str) {
        for secret in [KEY_MARKER, "BEGIN PRIVATE KEY", "relay@fake-project"] {
            assert!(!message.contains(secret), "{secret:?} in: {message}");
        }
        let chars: Vec<char> = value.chars().collect();
        for window in chars.windows(16) {
            let piece: String = window.iter().collect();
            assert!(
                !message.contains(&piece),
                "{piece:?} of the value in: {message}"
            );
        }
    }

    /// A key stored JSON-encoded as a string: serde_json's message was `invalid type: string
    /// "{\"client_email\": …, \"private_key\": \"-----BEGIN PRIVATE KEY-----…"`, the whole key,
    /// in the relay's log and (the operator judging it alike) the SmtpRelay's status and Events.
    #[test]
    fn a_service_account_key_stored_as_a_json_string_is_not_quoted() {
        let key = fake_key(&format!(
            r#""-----BEGIN PRIVATE KEY-----\n{KEY_MARKER}\n-----END PRIVATE KEY-----\n""#
        ));
        let text = serde_json::to_string(&key).unwrap();
        for message in service_account_key_refusals(&text) {
            says_nothing_of(&message, &text);
            says_nothing_of(&message, &key);
            assert!(
                message.contains("serviceAccountKeyFile")
                    && message.contains("holds a JSON string, not an object at line 1, column")
                    && message.contains("JSON-encoded a second time"),
                "{message}"
            );
        }
    }

    /// Every other way a key file can be wrong is told by the field, the kind of problem and
    /// where it is, never by a piece of the file.
    #[test]
    fn a_bad_service_account_key_is_described_without_its_content() {
        let pem =
            format!(r#""-----BEGIN PRIVATE KEY-----\n{KEY_MARKER}\n-----END PRIVATE KEY-----\n""#);
        let cases = [
            // serde_json: invalid type: integer `…`, expected a string
            (
                fake_key("4242424242424242424242"),
                "its private_key is a JSON number, not a string at line 1",
            ),
            (
                fake_key(&format!("[{pem}]")),
                "its private_key is a JSON array, not a string at line 1",
            ),
            (
                fake_key(&format!(r#"{{"pem": {pem}}}"#)),
                "its private_key is a JSON object, not a string at line 1",
            ),
            (
                format!(r#"{{"client_email": 7, "private_key": {pem}}}"#),
                "its client_email is a JSON number, not a string at line 1",
            ),
            (
                format!(
                    r#"{{"client_email": "relay@fake-project.iam", "private_key": {pem}, "token_uri": ["{KEY_MARKER}"]}}"#
                ),
                "its token_uri is a JSON array, not a string at line 1",
            ),
            (
                r#"{"client_email": "relay@fake-project.iam"}"#.to_string(),
                "its private_key is missing at line 1",
            ),
            (
                format!("[{pem}, {pem}]"),
                "the file holds a JSON array, not an object",
            ),
            // A key cut short in its private key.
            (
                fake_key(&format!(r#""-----BEGIN PRIVATE KEY-----\n{KEY_MARKER}"#)),
                "it is not valid JSON (it ends in the middle of a value) at line 1",
            ),
            // A key with something after it.
            (
                format!("{}\n{KEY_MARKER}", fake_key(&pem)),
                "it is not valid JSON (a syntax error) at line 2, column 1",
            ),
            (
                fake_key(&format!("{pem} {pem}")),
                "it is not valid JSON (a syntax error) at line 1",
            ),
        ];
        for (text, says) in cases {
            for message in service_account_key_refusals(&text) {
                says_nothing_of(&message, &text);
                assert!(
                    message.contains("serviceAccountKeyFile") && message.contains(says),
                    "{says:?} for {text}: {message}"
                );
            }
        }
        // A key in good form but without a PEM private key: its message was always safe.
        let text = fake_key(&format!(r#""{KEY_MARKER}""#));
        for message in service_account_key_refusals(&text) {
            says_nothing_of(&message, &text);
            assert!(message.contains("not a PEM"), "{message}");
        }
    }

    #[test]
    fn only_a_delegated_login_shares_its_refresh_token() {
        use crate::config_file::OAuth2File;
        let dir = oauth2_app_files();
        let login = |endpoint: &str| oauth2_login(dir.path(), endpoint);
        let endpoint = OAUTH2_ENDPOINT;
        let err = |o: OAuth2File| file(o).unwrap_err().to_string();
        let shared = file(OAuth2File {
            refresh_token_file: Some(dir.path().join("rt")),
            shared_refresh_token_secret: Some("relay-oauth2-token".into()),
            ..login(endpoint)
        })
        .unwrap();
        assert_eq!(
            shared
                .relayhost_oauth2
                .unwrap()
                .shared_refresh_token_secret
                .as_deref(),
            Some("relay-oauth2-token")
        );
        let not_delegated = err(OAuth2File {
            client_secret_file: Some(dir.path().join("secret")),
            shared_refresh_token_secret: Some("relay-oauth2-token".into()),
            ..login(endpoint)
        });
        assert!(
            not_delegated.contains("relayhost.oauth2.sharedRefreshTokenSecret")
                && not_delegated.contains("refreshTokenFile"),
            "{not_delegated}"
        );
        let bad_name = err(OAuth2File {
            refresh_token_file: Some(dir.path().join("rt")),
            shared_refresh_token_secret: Some("Relay_Token".into()),
            ..login(endpoint)
        });
        assert!(
            bad_name.contains("sharedRefreshTokenSecret") && bad_name.contains("object name"),
            "{bad_name}"
        );
    }
}
