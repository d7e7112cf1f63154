//! The config file the operator mounts from a ConfigMap, with secrets referenced as files.

use std::fs;
use std::path::Path;

use crate::config_file::RelayConfigFile;
use crate::error::{ConfigError, ConfigResult};
use crate::inputs::{self, env::checked_credentials, read_secret_file, readable_file};
use crate::postfix::relay_guard;
use crate::settings::{self, InboundTls, RelayPolicy, Relayhost, SaslUserSource, Settings};
use crate::validate;

pub fn load(path: &Path) -> ConfigResult<Settings> {
    let field = path.display().to_string();
    let text =
        fs::read_to_string(path).map_err(|e| ConfigError::unreadable("--config", path, e))?;
    let file: RelayConfigFile = serde_yaml::from_str(&text)
        .map_err(|e| ConfigError::invalid(&field, format!("not a valid relay config: {e}")))?;
    settings(&file, &field)
}

/// Validates a parsed config file and reads the secret files it points at. `origin` prefixes
/// field names in errors (the config file's path).
pub fn settings(file: &RelayConfigFile, origin: &str) -> ConfigResult<Settings> {
    settings_with(file, &|name| format!("{origin}: {name}"), &Disk)
}

/// Where the files a config file names come from.
pub trait Mounted {
    /// A secret file's text, as [`read_secret_file`] reads it.
    fn secret(&self, field: &str, path: &Path) -> ConfigResult<String>;
    /// A file that must be there and readable (a certificate, a key, a CA bundle).
    fn file(&self, field: &str, path: &Path) -> ConfigResult<()>;
    /// The directory of SASL users: there, and (when the users are known now) each one valid.
    fn users(&self, field: &str, dir: &Path) -> ConfigResult<()>;
}

/// The relay's own files.
pub struct Disk;

impl Mounted for Disk {
    fn secret(&self, field: &str, path: &Path) -> ConfigResult<String> {
        read_secret_file(field, path)
    }
    fn file(&self, field: &str, path: &Path) -> ConfigResult<()> {
        readable_file(field, path).map(|_| ())
    }
    fn users(&self, field: &str, dir: &Path) -> ConfigResult<()> {
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
    fn secret(&self, field: &str, path: &Path) -> ConfigResult<String> {
        let bytes = self.files.get(path).cloned().ok_or_else(|| {
            ConfigError::invalid(field, format!("{} is not mounted", path.display()))
        })?;
        inputs::secret_text(field, path, bytes)
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
    fn users(&self, field: &str, dir: &Path) -> ConfigResult<()> {
        for (name, bytes) in &self.users {
            let path = dir.join(name);
            validate::sasl_user(field, name)?;
            let password = inputs::secret_text(field, &path, bytes.clone())?;
            validate::password(&format!("{field} ({name})"), &password)?;
        }
        Ok(())
    }
}

/// [`settings()`], with `field` naming each field in errors and the files read from `mounted`:
/// the one judge of a config file, for the relay and for the operator.
#[allow(
    clippy::too_many_lines,
    reason = "one step per field of the config file, in its order: the table reads best whole"
)]
pub fn settings_with(
    file: &RelayConfigFile,
    field: &dyn Fn(&str) -> String,
    mounted: &impl Mounted,
) -> ConfigResult<Settings> {
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
        return Err(ConfigError::invalid(
            field("relayhost.port"),
            "must be from 1 to 65535",
        ));
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
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::invalid(
                field("relayhost.usernameFile"),
                "is required with passwordFile",
            ))
        }
    };
    let relayhost_tls_level = inputs::tls_level(
        &field("relayhost.tlsLevel"),
        None,
        rh.tls_level,
        rh.implicit_tls,
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
            ))
        }
        (_, Some(list)) => {
            crate::postfix::restrictions::check_custom(&field("customRestrictions"), list)?;
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
            })
        })
        .transpose()?;
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
    }

    Ok(Settings {
        hostname,
        domain,
        networks,
        relay_domains,
        relayhost,
        relayhost_credentials,
        relayhost_tls_level,
        relayhost_tls_ca_file,
        postmaster,
        strict_sender: file.strict_sender,
        policy,
        sasl_users,
        inbound_tls,
        proxy_protocol_port: file
            .proxy_protocol_port
            .map(|port| validate::proxy_protocol_port(&field("proxyProtocolPort"), port))
            .transpose()?,
        postconf: file.postconf.clone(),
        postconf_field_prefix: field("postconf."),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config_file::RelayhostFile;
    use crate::settings::Mode;

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
    fn yaml_round_trip_rejects_unknown_fields() {
        let text = "domain: example.net\nrelayhost: {host: relay, port: 25}\nbogus: 1\n";
        let err = serde_yaml::from_str::<RelayConfigFile>(text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
    }
}
