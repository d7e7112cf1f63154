//! The original image's environment variables (drop-in compatible with `docker run -e ...`),
//! plus the files it read from the Postfix directory: `sasl_passwd` (relayhost credentials) and
//! `client_sasl_passwd` (bulk SASL users).

use std::collections::BTreeMap;
use std::path::Path;

use crate::config_file::SandboxMode;
use crate::error::{ConfigError, ConfigResult};
use crate::inputs::{self, readable_file};
use crate::postfix::relay_guard;
use crate::postfix::restrictions::Vouch;
use crate::settings::{
    self, Credentials, HeaderPolicy, InboundTls, Limits, MailAccess, RelayPolicy, Sandbox,
    SaslUserSource, Settings, TlsLevel, TlsMinVersion,
};
use crate::validate;

pub const POSTCONF_PREFIX: &str = "POSTCONF_";
/// Vouches for what a `RELAY_MODE` list holds before its safety net that the relay cannot
/// read (`Settings::trust_restriction_tables`).
const TRUST_TABLES: &str = "RELAY_TRUST_RESTRICTION_TABLES";
/// Acknowledges that a relayhost login goes out at a TLS level of `none` or `may`, where a
/// relayhost that offers no STARTTLS (or anyone on the path) receives the password.
const CLEARTEXT_ACK: &str = "RELAY_ALLOW_CLEARTEXT_CREDENTIALS";

/// Builds settings from environment variables. `postfix_dir` is where the original image's
/// optional `sasl_passwd` and `client_sasl_passwd` files are looked for.
#[allow(
    clippy::too_many_lines,
    reason = "one step per variable, in the seed's order: the table reads best whole"
)]
pub fn settings(vars: &BTreeMap<String, String>, postfix_dir: &Path) -> ConfigResult<Settings> {
    let get = |name: &str| vars.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    let required = |name: &str, example: &str| {
        get(name).ok_or_else(|| {
            ConfigError::invalid(name, format!("is required; set it, e.g. {name}={example}"))
        })
    };

    let domain = validate::domain("RELAY_MYDOMAIN", required("RELAY_MYDOMAIN", "example.net")?)?;
    let mut relayhost = validate::relayhost(
        "RELAY_HOST",
        required("RELAY_HOST", "[smtp.example.net]:587")?,
    )?;
    relayhost.implicit_tls = match get("RELAY_SMTPS") {
        Some(v) => boolean("RELAY_SMTPS", v)?,
        None => relayhost.port == 465,
    };
    let hostname = get("RELAY_MYHOSTNAME")
        .map(|h| validate::domain("RELAY_MYHOSTNAME", h))
        .transpose()?;
    let networks = list(get("RELAY_MYNETWORKS"))
        .map(|n| validate::network("RELAY_MYNETWORKS", n))
        .collect::<ConfigResult<Vec<_>>>()?;
    relay_guard::check_networks("RELAY_MYNETWORKS", &networks)?;
    let relay_domains = list(get("RELAY_DOMAINS"))
        .map(|d| validate::domain("RELAY_DOMAINS", d))
        .collect::<ConfigResult<Vec<_>>>()?;
    let relay_domains = crate::settings::relay_domains(&domain, relay_domains);

    let relayhost_credentials = credentials(vars, postfix_dir, &relayhost_key(&relayhost))?;
    let use_tls = get("RELAY_USE_TLS")
        .map(|v| boolean("RELAY_USE_TLS", v))
        .transpose()?;
    let verify = get("RELAY_TLS_VERIFY")
        .map(|v| {
            TlsLevel::parse(v).ok_or_else(|| {
                ConfigError::invalid(
                    "RELAY_TLS_VERIFY",
                    format!(
                        "{v:?} is not a TLS level; use one of {}",
                        TlsLevel::ALL.map(TlsLevel::as_str).join(", ")
                    ),
                )
            })
        })
        .transpose()?;
    let relayhost_tls_level = inputs::tls_level(
        "RELAY_USE_TLS",
        use_tls,
        verify,
        relayhost.implicit_tls,
        relayhost_credentials.is_some(),
    )?;
    let cleartext_acknowledged = get(CLEARTEXT_ACK)
        .map(|v| boolean(CLEARTEXT_ACK, v))
        .transpose()?
        .unwrap_or(false);
    if let Some(level) = relayhost_tls_level.filter(|_| {
        settings::relayhost_password_in_clear(relayhost_tls_level, relayhost_credentials.is_some())
            && !cleartext_acknowledged
    }) {
        let field = if verify.is_some() {
            "RELAY_TLS_VERIFY"
        } else {
            "RELAY_USE_TLS"
        };
        return Err(ConfigError::invalid(
            field,
            format!(
                "with a relayhost login, TLS level {level} lets the password cross the network in clear text (a relayhost that offers no STARTTLS, or anyone on the path, would receive it); remove {field} (the default with a login is secure), or set {CLEARTEXT_ACK}=yes to accept that"
            ),
        ));
    }
    let relayhost_tls_ca_file = match get("RELAY_TLS_CA") {
        Some(path) => Some(readable_file("RELAY_TLS_CA", Path::new(path))?),
        None => inputs::default_ca_file(),
    };

    let postmaster = get("RELAY_POSTMASTER")
        .map(|p| validate::email("RELAY_POSTMASTER", p))
        .transpose()?;
    let strict_sender = get("RELAY_STRICT_SENDER_MYDOMAIN")
        .map(|v| boolean("RELAY_STRICT_SENDER_MYDOMAIN", v))
        .transpose()?
        .unwrap_or(false);
    let trust_restriction_tables = get(TRUST_TABLES)
        .map(|v| boolean(TRUST_TABLES, v))
        .transpose()?
        .unwrap_or(false);
    let policy = match get("RELAY_MODE") {
        Some(mode) => inputs::policy_from_mode_text(
            "RELAY_MODE",
            mode,
            Vouch {
                field: TRUST_TABLES,
                given: trust_restriction_tables,
            },
        )?,
        None => RelayPolicy::Mode(Default::default()),
    };

    let users_file = postfix_dir.join("client_sasl_passwd");
    let sasl_users = if users_file.exists() {
        SaslUserSource::PasswdFile(users_file)
    } else {
        SaslUserSource::None
    };
    let min_version = get("RELAY_TLS_MIN_VERSION")
        .map(|v| {
            TlsMinVersion::parse(v).ok_or_else(|| {
                ConfigError::invalid(
                    "RELAY_TLS_MIN_VERSION",
                    format!(
                        "{v:?} is not a TLS version; use one of {} (TLSv1.0 and TLSv1.1 only for legacy clients)",
                        TlsMinVersion::ALL.map(TlsMinVersion::as_str).join(", ")
                    ),
                )
            })
        })
        .transpose()?;
    let inbound_tls = match (get("RELAY_TLS_CERT"), get("RELAY_TLS_KEY")) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some(InboundTls {
            cert_file: readable_file("RELAY_TLS_CERT", Path::new(cert))?,
            key_file: readable_file("RELAY_TLS_KEY", Path::new(key))?,
            min_version: min_version.unwrap_or_default(),
        }),
        (Some(_), None) => {
            return Err(ConfigError::invalid(
                "RELAY_TLS_KEY",
                "is required when RELAY_TLS_CERT is set",
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::invalid(
                "RELAY_TLS_CERT",
                "is required when RELAY_TLS_KEY is set",
            ))
        }
    };

    if let (Some(min), None) = (min_version, &inbound_tls) {
        return Err(ConfigError::invalid(
            "RELAY_TLS_MIN_VERSION",
            format!("is {min}, but the relay offers clients no TLS: set RELAY_TLS_CERT and RELAY_TLS_KEY, or unset it"),
        ));
    }
    settings::require_tls_for_sasl(
        &sasl_users,
        inbound_tls.as_ref(),
        "RELAY_TLS_CERT",
        "Set RELAY_TLS_CERT and RELAY_TLS_KEY to a certificate and its key (PEM files), or remove client_sasl_passwd",
    )?;
    let postconf = postconf(vars)?;
    settings::require_relayhost_identity(
        &relayhost,
        relayhost_tls_level,
        relayhost_credentials.is_some(),
        get("RELAY_TLS_CA").is_some(),
        "RELAY_HOST",
        &format!(
            "Set RELAY_HOST to its host name (its certificate must name it), or RELAY_TLS_CA to the CA that signed its certificate (which must then carry {} as an IP address subjectAltName), or choose a level in RELAY_TLS_VERIFY (encrypt: encrypted, but anyone who answers on the path gets the password)",
            relayhost.host
        ),
    )?;

    let submission = inputs::submission_ports(
        port(&get, SUBMISSION)?,
        port(&get, SUBMISSIONS)?,
        &sasl_users,
        &|implicit| if implicit { SUBMISSIONS } else { SUBMISSION }.to_string(),
        "give users in client_sasl_passwd, or unset it",
    )?;
    let client_limits = client_limits(&get, &postconf)?;
    let user_limits = user_limits(&get, &sasl_users, &postconf)?;
    interval_without_limits(&get, [client_limits.as_ref(), user_limits.as_ref()])?;
    Ok(Settings {
        hostname,
        domain,
        networks,
        relay_domains,
        relayhost,
        relayhost_credentials,
        relayhost_oauth2: None,
        relayhost_tls_level,
        relayhost_tls_ca_file,
        relayhost_delivery_interval_secs: None,
        postmaster,
        strict_sender,
        policy,
        trust_restriction_tables,
        sasl_users,
        inbound_tls,
        proxy_protocol_port: port(&get, "RELAY_PROXY_PROTOCOL_PORT")?
            .map(|p| validate::listen_port("RELAY_PROXY_PROTOCOL_PORT", p))
            .transpose()?,
        submission,
        headers: header_policy(&get, &postconf)?,
        access: mail_access(&get, &postconf)?,
        sandbox: sandbox(&get, &postconf)?,
        client_limits,
        user_limits,
        postconf,
        postconf_field_prefix: POSTCONF_PREFIX.to_string(),
    })
}

/// `RELAY_CLIENT_CONNECTION_LIMIT`, `RELAY_CLIENT_MESSAGE_LIMIT`,
/// `RELAY_CLIENT_RECIPIENT_LIMIT` (each per `RELAY_RATE_INTERVAL` seconds, 60 by default),
/// validated ([`inputs::client_limits`]); none set, no limit.
fn client_limits<'a>(
    get: &impl Fn(&str) -> Option<&'a str>,
    postconf: &BTreeMap<String, String>,
) -> ConfigResult<Option<Limits>> {
    const LIMITS: &str =
        "RELAY_CLIENT_CONNECTION_LIMIT, RELAY_CLIENT_MESSAGE_LIMIT, RELAY_CLIENT_RECIPIENT_LIMIT";
    let (interval, counts) = limit_counts(get, "RELAY_CLIENT")?;
    if counts.iter().all(Option::is_none) {
        return Ok(None);
    }
    inputs::client_limits(
        interval,
        counts,
        postconf,
        &inputs::LimitFields {
            limits: LIMITS,
            interval: RATE_INTERVAL,
            postconf_prefix: POSTCONF_PREFIX,
        },
    )
    .map(Some)
}

/// `RELAY_USER_CONNECTION_LIMIT`, `RELAY_USER_MESSAGE_LIMIT`, `RELAY_USER_RECIPIENT_LIMIT`
/// (each per `RELAY_RATE_INTERVAL` seconds), validated ([`inputs::user_limits`]); none set,
/// no limit.
fn user_limits<'a>(
    get: &impl Fn(&str) -> Option<&'a str>,
    users: &SaslUserSource,
    postconf: &BTreeMap<String, String>,
) -> ConfigResult<Option<Limits>> {
    const LIMITS: &str =
        "RELAY_USER_CONNECTION_LIMIT, RELAY_USER_MESSAGE_LIMIT, RELAY_USER_RECIPIENT_LIMIT";
    let (interval, counts) = limit_counts(get, "RELAY_USER")?;
    if counts.iter().all(Option::is_none) {
        return Ok(None);
    }
    inputs::user_limits(
        interval,
        counts,
        users,
        postconf,
        &inputs::LimitFields {
            limits: LIMITS,
            interval: RATE_INTERVAL,
            postconf_prefix: POSTCONF_PREFIX,
        },
        "give users in client_sasl_passwd, or unset them",
    )
    .map(Some)
}

const RATE_INTERVAL: &str = "RELAY_RATE_INTERVAL";

/// The interval and the `{prefix}_CONNECTION_LIMIT`, `_MESSAGE_LIMIT` and `_RECIPIENT_LIMIT`
/// counts.
fn limit_counts<'a>(
    get: &impl Fn(&str) -> Option<&'a str>,
    prefix: &str,
) -> ConfigResult<(Option<u32>, [Option<u32>; 3])> {
    let count = |name: &str| number::<u32>(get, name, "a count");
    let counts = [
        count(&format!("{prefix}_CONNECTION_LIMIT"))?,
        count(&format!("{prefix}_MESSAGE_LIMIT"))?,
        count(&format!("{prefix}_RECIPIENT_LIMIT"))?,
    ];
    Ok((count(RATE_INTERVAL)?, counts))
}

/// `RELAY_RATE_INTERVAL` is the interval of limits: alone, it limits nothing.
fn interval_without_limits<'a>(
    get: &impl Fn(&str) -> Option<&'a str>,
    limits: [Option<&Limits>; 2],
) -> ConfigResult<()> {
    if get(RATE_INTERVAL).is_some() && limits.iter().all(Option::is_none) {
        return Err(ConfigError::invalid(
            RATE_INTERVAL,
            "is the interval of limits, and none is set: give RELAY_CLIENT_*_LIMIT or RELAY_USER_*_LIMIT, or unset it",
        ));
    }
    Ok(())
}

/// `RELAY_SANDBOX`: `hold`, `discard`, or the address of a catch-all mailbox.
fn sandbox<'a>(
    get: &impl Fn(&str) -> Option<&'a str>,
    postconf: &BTreeMap<String, String>,
) -> ConfigResult<Option<Sandbox>> {
    const SANDBOX: &str = "RELAY_SANDBOX";
    let Some(value) = get(SANDBOX).map(str::trim) else {
        return Ok(None);
    };
    let (mode, mailbox) = match value.to_ascii_lowercase().as_str() {
        "hold" => (SandboxMode::Hold, None),
        "discard" => (SandboxMode::Discard, None),
        _ => (SandboxMode::CatchAll, Some(value)),
    };
    inputs::sandbox(
        mode,
        mailbox,
        postconf,
        &inputs::SandboxFields {
            sandbox: SANDBOX,
            mailbox: SANDBOX,
            postconf_prefix: POSTCONF_PREFIX,
        },
    )
    .map(Some)
}

/// The submission ports: STARTTLS (587) and implicit TLS (465).
const SUBMISSION: &str = "RELAY_SUBMISSION_PORT";
const SUBMISSIONS: &str = "RELAY_SUBMISSIONS_PORT";

/// A port number from `name`, if set.
fn port<'a>(get: &impl Fn(&str) -> Option<&'a str>, name: &str) -> ConfigResult<Option<u16>> {
    number(get, name, "a port number")
}

/// A number from `name`, if set; `what` it must be, for the error.
fn number<'a, T: std::str::FromStr>(
    get: &impl Fn(&str) -> Option<&'a str>,
    name: &str,
    what: &str,
) -> ConfigResult<Option<T>> {
    get(name)
        .map(|v| {
            v.trim()
                .parse::<T>()
                .map_err(|_| ConfigError::invalid(name, format!("{v:?} is not {what}")))
        })
        .transpose()
}

/// `RELAY_ALLOWED_SENDERS`, `RELAY_ALLOWED_RECIPIENTS` (addresses or domains, space or comma
/// separated) and `RELAY_SENDER_BINDINGS` (`user:sender,sender;user:sender`), validated
/// ([`inputs::mail_access`]); none set, nothing restricted.
fn mail_access<'a>(
    get: &impl Fn(&str) -> Option<&'a str>,
    postconf: &BTreeMap<String, String>,
) -> ConfigResult<MailAccess> {
    const SENDERS: &str = "RELAY_ALLOWED_SENDERS";
    const RECIPIENTS: &str = "RELAY_ALLOWED_RECIPIENTS";
    const BINDINGS: &str = "RELAY_SENDER_BINDINGS";
    let bindings = get(BINDINGS)
        .unwrap_or_default()
        .split(';')
        .filter(|b| !b.trim().is_empty())
        .map(|b| {
            let (user, senders) = b.split_once(':').ok_or_else(|| {
                ConfigError::invalid(
                    BINDINGS,
                    format!(
                        "{:?} is not user:sender,sender (bindings are separated by ';')",
                        b.trim()
                    ),
                )
            })?;
            Ok((user.trim(), list(Some(senders)).collect()))
        })
        .collect::<ConfigResult<Vec<_>>>()?;
    let input = inputs::AccessInput {
        allowed_senders: list(get(SENDERS)).collect(),
        allowed_recipients: list(get(RECIPIENTS)).collect(),
        bindings,
    };
    inputs::mail_access(
        &input,
        postconf,
        &inputs::AccessFields {
            senders: SENDERS,
            recipients: RECIPIENTS,
            bindings: BINDINGS,
            binding: &|_, _| BINDINGS.to_string(),
            postconf_prefix: POSTCONF_PREFIX,
        },
    )
}

/// `RELAY_REVEAL_CLIENT` (yes: keep the client in the Received lines) and
/// `RELAY_REMOVE_HEADERS` (header names, space separated), validated
/// ([`inputs::header_policy`]); neither set, the defaults.
fn header_policy<'a>(
    get: &impl Fn(&str) -> Option<&'a str>,
    postconf: &BTreeMap<String, String>,
) -> ConfigResult<HeaderPolicy> {
    const REVEAL: &str = "RELAY_REVEAL_CLIENT";
    const REMOVE: &str = "RELAY_REMOVE_HEADERS";
    let (reveal, remove) = (get(REVEAL), get(REMOVE));
    if reveal.is_none() && remove.is_none() {
        return Ok(HeaderPolicy::default());
    }
    let reveal_client = reveal
        .map(|v| boolean(REVEAL, v))
        .transpose()?
        .unwrap_or(false);
    let remove: Vec<&str> = list(remove).collect();
    inputs::header_policy(
        reveal_client,
        &remove,
        postconf,
        &inputs::HeaderFields {
            headers: &format!("{REVEAL}/{REMOVE}"),
            remove: REMOVE,
            postconf_prefix: POSTCONF_PREFIX,
        },
    )
}

/// `RELAY_EXTRAS_SETTINGS` (deprecated, space separated `name=value`) then `POSTCONF_<name>`.
fn postconf(vars: &BTreeMap<String, String>) -> ConfigResult<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    if let Some(extras) = vars.get("RELAY_EXTRAS_SETTINGS") {
        for item in extras.split_whitespace() {
            let (name, value) = item.split_once('=').ok_or_else(|| {
                ConfigError::invalid(
                    "RELAY_EXTRAS_SETTINGS",
                    format!("{item:?} is not name=value; prefer POSTCONF_<name>=<value>"),
                )
            })?;
            validate::postconf_name("RELAY_EXTRAS_SETTINGS", name)?;
            validate::postconf_known("RELAY_EXTRAS_SETTINGS", name)?;
            relay_guard::check_postconf("RELAY_EXTRAS_SETTINGS", name)?;
            validate::postconf_value(&format!("RELAY_EXTRAS_SETTINGS ({name})"), name, value)?;
            out.insert(name.to_string(), value.to_string());
        }
    }
    for (key, value) in vars {
        if let Some(name) = key.strip_prefix(POSTCONF_PREFIX) {
            validate::postconf_name(key, name)?;
            validate::postconf_known(key, name)?;
            relay_guard::check_postconf(key, name)?;
            validate::single_line(key, value)?;
            validate::postconf_value(key, name, value)?;
            out.insert(name.to_string(), value.trim().to_string());
        }
    }
    let reserve_field = format!("{POSTCONF_PREFIX}queue_minfree");
    let reserve_field = if vars.contains_key(&reserve_field) {
        reserve_field
    } else {
        "RELAY_EXTRAS_SETTINGS (queue_minfree)".to_string()
    };
    relay_guard::check_spool_reserve(&reserve_field, &out)?;
    Ok(out)
}

/// Relayhost credentials from RELAY_LOGIN/RELAY_PASSWORD, or else from the original image's
/// `sasl_passwd` file (`relayhost login:password` lines).
fn credentials(
    vars: &BTreeMap<String, String>,
    postfix_dir: &Path,
    relayhost_key: &str,
) -> ConfigResult<Option<Credentials>> {
    // Passwords are taken verbatim: surrounding spaces may be part of them.
    let login = vars.get("RELAY_LOGIN").filter(|v| !v.is_empty());
    let password = vars.get("RELAY_PASSWORD").filter(|v| !v.is_empty());
    match (login, password) {
        (Some(login), Some(password)) => {
            return checked_credentials("RELAY_LOGIN", "RELAY_PASSWORD", login, password).map(Some)
        }
        (Some(_), None) => {
            return Err(ConfigError::invalid(
                "RELAY_PASSWORD",
                "is required when RELAY_LOGIN is set",
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::invalid(
                "RELAY_LOGIN",
                "is required when RELAY_PASSWORD is set",
            ))
        }
        (None, None) => {}
    }
    let path = postfix_dir.join("sasl_passwd");
    if !path.exists() {
        return Ok(None);
    }
    let field = path.display().to_string();
    let text = inputs::read_secret_file(&field, &path)?;
    let entries: Vec<(&str, &str)> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(char::is_whitespace))
        .collect();
    let chosen = entries
        .iter()
        .find(|(key, _)| *key == relayhost_key)
        .or(if entries.len() == 1 { entries.first() } else { None })
        .ok_or_else(|| {
            ConfigError::invalid(
                &field,
                format!("has no line for the relayhost {relayhost_key}; write `{relayhost_key} login:password`"),
            )
        })?;
    let (login, password) = chosen.1.trim_start().split_once(':').ok_or_else(|| {
        ConfigError::invalid(&field, "the credentials must be written login:password")
    })?;
    checked_credentials(&field, &field, login, password).map(Some)
}

pub fn checked_credentials(
    login_field: &str,
    password_field: &str,
    login: &str,
    password: &str,
) -> ConfigResult<Credentials> {
    if login.is_empty()
        || login.contains([':', '\n', '\r', '\0'])
        || login.chars().any(char::is_whitespace)
    {
        return Err(ConfigError::invalid(
            login_field,
            "the login must be non-empty, without ':' or white space (Postfix separates login and password with ':')",
        ));
    }
    validate::password(password_field, password)?;
    // Postfix trims trailing white space from every lookup-table value (texthash, regexp,
    // inline, static alike), so such a password would reach the relayhost shortened and every
    // delivery would be deferred with "authentication failed". Leading white space survives: it
    // follows "login:".
    if password.ends_with(char::is_whitespace) {
        return Err(ConfigError::invalid(
            password_field,
            "the relayhost password ends with white space, which Postfix strips from its lookup tables; the relayhost would be sent a different password",
        ));
    }
    Ok(Credentials {
        login: login.to_string(),
        password: password.to_string(),
    })
}

/// The key Postfix looks credentials up by: the relayhost exactly as written in main.cf.
pub fn relayhost_key(relayhost: &crate::settings::Relayhost) -> String {
    crate::postfix::main_cf::relayhost_value(relayhost)
}

fn list(value: Option<&str>) -> impl Iterator<Item = &str> {
    value
        .unwrap_or("")
        .split([' ', ',', '\t', '\n'])
        .filter(|s| !s.is_empty())
}

fn boolean(field: &str, value: &str) -> ConfigResult<bool> {
    match value.to_ascii_lowercase().as_str() {
        "yes" | "true" | "1" | "on" => Ok(true),
        "no" | "false" | "0" | "off" => Ok(false),
        _ => Err(ConfigError::invalid(
            field,
            format!("{value:?} is not a boolean; use yes or no"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Mode;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn minimal() -> Vec<(&'static str, &'static str)> {
        vec![
            ("RELAY_MYDOMAIN", "example.net"),
            ("RELAY_HOST", "[10.1.0.1]:25"),
        ]
    }

    fn nodir() -> &'static Path {
        Path::new("/nonexistent-smtp-relay-test")
    }

    #[test]
    fn seed_compose_example() {
        let mut vars = minimal();
        vars.extend([
            ("RELAY_POSTMASTER", "postmaster@example.net"),
            ("RELAY_MYHOSTNAME", "smtp-relay.example.net"),
            ("RELAY_MYNETWORKS", "127.0.0.0/8 10.0.0.0/24"),
            ("RELAY_MODE", "ALLOW_SASLAUTH_NODOMAIN"),
            ("RELAY_LOGIN", "sasl-user-login"),
            ("RELAY_PASSWORD", "xx} x,x:x=ö"),
            ("RELAY_USE_TLS", "no"),
            ("POSTCONF_compatibility_level", "2"),
        ]);
        // The seed sent this password in clear text without a word; here it takes a choice.
        let err = settings(&env(&vars), nodir()).unwrap_err().to_string();
        assert!(
            err.starts_with("RELAY_USE_TLS: with a relayhost login, TLS level none")
                && err.contains("RELAY_ALLOW_CLEARTEXT_CREDENTIALS=yes")
                && !err.contains("xx} x"),
            "{err}"
        );
        vars.push(("RELAY_ALLOW_CLEARTEXT_CREDENTIALS", "yes"));
        let s = settings(&env(&vars), nodir()).unwrap();
        assert_eq!(s.domain, "example.net");
        assert_eq!(s.relay_domains, vec!["example.net"]);
        assert_eq!(s.networks.len(), 2);
        assert_eq!(s.policy, RelayPolicy::Mode(Mode::AllowSaslAuthNoDomain));
        assert_eq!(
            s.relayhost_credentials.as_ref().unwrap().password,
            "xx} x,x:x=ö"
        );
        assert_eq!(s.relayhost_tls_level, Some(TlsLevel::None));
        assert_eq!(s.postconf["compatibility_level"], "2");
        assert!(
            !format!("{s:?}").contains("xx}"),
            "Debug must not print the password"
        );
    }

    #[test]
    fn missing_mandatory_variables_are_named() {
        let err = settings(&env(&[("RELAY_HOST", "relay")]), nodir())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("RELAY_MYDOMAIN: is required"), "{err}");
        let err = settings(&env(&[("RELAY_MYDOMAIN", "example.net")]), nodir())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("RELAY_HOST: is required"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        for (var, value) in [
            ("RELAY_MODE", "OPEN_RELAY"),
            ("RELAY_MYNETWORKS", "10.0.0.0/8 nowhere"),
            ("RELAY_TLS_VERIFY", "always"),
            ("RELAY_USE_TLS", "maybe"),
            ("RELAY_POSTMASTER", "nobody"),
            ("RELAY_LOGIN", "user"),
            ("POSTCONF_Bad-Name", "1"),
            ("RELAY_TLS_CA", "/nonexistent/ca.pem"),
        ] {
            let mut vars = minimal();
            vars.push((var, value));
            let err = settings(&env(&vars), nodir()).unwrap_err().to_string();
            let named = if var == "RELAY_LOGIN" {
                "RELAY_PASSWORD"
            } else {
                var
            };
            assert!(
                err.starts_with(&format!("{named}:")),
                "{var}={value}: {err}"
            );
        }
    }

    #[test]
    fn custom_restriction_list_is_accepted_when_postfix_knows_every_token() {
        let mut vars = minimal();
        vars.push((
            "RELAY_MODE",
            "permit_mynetworks, reject_unauth_destination, reject",
        ));
        let s = settings(&env(&vars), nodir()).unwrap();
        assert_eq!(
            s.policy,
            RelayPolicy::Custom(vec![
                "permit_mynetworks".into(),
                "reject_unauth_destination".into(),
                "reject".into()
            ])
        );
    }

    #[test]
    fn tls_variables() {
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut vars = minimal();
            vars.extend_from_slice(extra);
            settings(&env(&vars), nodir())
        };
        assert_eq!(with(&[]).unwrap().relayhost_tls_level, None);
        assert_eq!(
            with(&[("RELAY_USE_TLS", "yes")])
                .unwrap()
                .relayhost_tls_level,
            Some(TlsLevel::Encrypt)
        );
        assert_eq!(
            with(&[("RELAY_TLS_VERIFY", "verify")])
                .unwrap()
                .relayhost_tls_level,
            Some(TlsLevel::Verify),
            "the level applies without a login (unlike the original image)"
        );
        assert!(with(&[("RELAY_USE_TLS", "no"), ("RELAY_TLS_VERIFY", "secure")]).is_err());
        let mut vars = vec![
            ("RELAY_MYDOMAIN", "example.net"),
            ("RELAY_HOST", "[smtp.example.net]:465"),
        ];
        vars.push(("RELAY_TLS_VERIFY", "secure"));
        let s = settings(&env(&vars), nodir()).unwrap();
        assert!(s.relayhost.implicit_tls);
        assert_eq!(s.relayhost_tls_level, Some(TlsLevel::Secure));
    }

    /// Issue 26: with a login the relayhost proves its identity (`secure`); neither
    /// `RELAY_USE_TLS=yes` nor implicit TLS weakens that to `encrypt`, and a relayhost given by
    /// address needs a CA or a level said explicitly.
    #[test]
    fn a_login_goes_only_to_a_relayhost_that_proves_its_identity() {
        let ca = tempfile::NamedTempFile::new().unwrap();
        let ca = ca.path().display().to_string();
        let with = |extra: &[(&'static str, &str)]| {
            let mut vars: Vec<(&str, &str)> = minimal();
            vars.extend([("RELAY_LOGIN", "user"), ("RELAY_PASSWORD", "secret")]);
            vars.extend_from_slice(extra);
            settings(&env(&vars), nodir())
        };
        let by_name = with(&[("RELAY_HOST", "[smtp.example.net]:587")]).unwrap();
        assert_eq!(by_name.relayhost_tls_level, None);
        assert_eq!(by_name.relayhost_tls(), TlsLevel::Secure);
        assert!(!by_name.relayhost_unverified());
        for extra in [
            vec![
                ("RELAY_HOST", "[smtp.example.net]:587"),
                ("RELAY_USE_TLS", "yes"),
            ],
            vec![("RELAY_HOST", "[smtp.example.net]:465")],
        ] {
            let s = with(&extra).unwrap();
            assert_eq!(s.relayhost_tls(), TlsLevel::Secure, "{extra:?}");
        }
        // Without a login, RELAY_USE_TLS=yes and SMTPS still mean encrypt.
        let mut vars = minimal();
        vars.push(("RELAY_USE_TLS", "yes"));
        let s = settings(&env(&vars), nodir()).unwrap();
        assert_eq!(s.relayhost_tls(), TlsLevel::Encrypt);

        for refused in [vec![], vec![("RELAY_USE_TLS", "yes")]] {
            let err = with(&refused).unwrap_err().to_string();
            assert!(
                err.starts_with("RELAY_HOST: 10.1.0.1 is an IP address")
                    && err.contains("RELAY_TLS_CA")
                    && err.contains("RELAY_TLS_VERIFY"),
                "{refused:?}: {err}"
            );
        }
        let with_ca = with(&[("RELAY_TLS_CA", ca.as_str())]).unwrap();
        assert_eq!(with_ca.relayhost_tls(), TlsLevel::Secure);
        let chosen = with(&[("RELAY_TLS_VERIFY", "encrypt")]).unwrap();
        assert_eq!(chosen.relayhost_tls(), TlsLevel::Encrypt);
        assert!(chosen.relayhost_unverified() && !chosen.relayhost_password_in_clear());
    }

    /// Issue 26: a login at a level that allows clear text (`none`, `may`) needs
    /// `RELAY_ALLOW_CLEARTEXT_CREDENTIALS=yes`; the refusal names the variable that chose it.
    #[test]
    fn a_login_in_clear_text_needs_an_acknowledgement() {
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut vars = minimal();
            vars.extend_from_slice(extra);
            settings(&env(&vars), nodir())
        };
        let login = [("RELAY_LOGIN", "user"), ("RELAY_PASSWORD", "secret")];
        for (choice, field) in [
            (("RELAY_USE_TLS", "no"), "RELAY_USE_TLS"),
            (("RELAY_TLS_VERIFY", "may"), "RELAY_TLS_VERIFY"),
            (("RELAY_TLS_VERIFY", "none"), "RELAY_TLS_VERIFY"),
        ] {
            let err = with(&[login[0], login[1], choice]).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("{field}: with a relayhost login"))
                    && err.contains("RELAY_ALLOW_CLEARTEXT_CREDENTIALS=yes")
                    && !err.contains("secret"),
                "{choice:?}: {err}"
            );
            let ack = ("RELAY_ALLOW_CLEARTEXT_CREDENTIALS", "yes");
            let s = with(&[login[0], login[1], choice, ack]).unwrap();
            assert!(s.relayhost_password_in_clear(), "{choice:?}");
            // Without a login there is no password to protect.
            assert!(with(&[choice]).is_ok(), "{choice:?}");
        }
        let ack = ("RELAY_ALLOW_CLEARTEXT_CREDENTIALS", "maybe");
        let err = with(&[login[0], login[1], ack]).unwrap_err().to_string();
        assert!(
            err.starts_with("RELAY_ALLOW_CLEARTEXT_CREDENTIALS"),
            "{err}"
        );
    }

    #[test]
    fn proxy_protocol_port() {
        let with = |v: &str| {
            let mut vars = minimal();
            vars.push(("RELAY_PROXY_PROTOCOL_PORT", v));
            settings(&env(&vars), nodir())
        };
        assert_eq!(with("2525").unwrap().proxy_protocol_port, Some(2525));
        assert_eq!(
            settings(&env(&minimal()), nodir())
                .unwrap()
                .proxy_protocol_port,
            None
        );
        for bad in ["smtp", "0", "70000"] {
            let err = with(bad).unwrap_err().to_string();
            assert!(
                err.starts_with("RELAY_PROXY_PROTOCOL_PORT:"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn limits_per_client_come_from_their_variables() {
        let mut vars = minimal();
        vars.extend([
            ("RELAY_CLIENT_MESSAGE_LIMIT", "100"),
            ("RELAY_RATE_INTERVAL", "3600"),
        ]);
        let l = settings(&env(&vars), nodir())
            .unwrap()
            .client_limits
            .unwrap();
        assert_eq!(
            (l.interval_secs, l.messages, l.recipients),
            (3600, Some(100), None)
        );
        let mut vars = minimal();
        vars.push(("RELAY_RATE_INTERVAL", "60"));
        let err = settings(&env(&vars), nodir()).unwrap_err().to_string();
        assert!(
            err.starts_with("RELAY_RATE_INTERVAL: is the interval of limits, and none is set"),
            "{err}"
        );
    }

    #[test]
    fn limits_per_user_come_from_their_variables_and_need_users() {
        let mut vars = minimal();
        vars.push(("RELAY_USER_MESSAGE_LIMIT", "20"));
        let err = settings(&env(&vars), nodir()).unwrap_err().to_string();
        assert!(
            err.starts_with("RELAY_USER_CONNECTION_LIMIT, RELAY_USER_MESSAGE_LIMIT, RELAY_USER_RECIPIENT_LIMIT: counts what each SASL user sends, and the relay has none"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("client_sasl_passwd"), "app1 secret1\n").unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert, "certificate").unwrap();
        std::fs::write(&key, "key").unwrap();
        let (cert, key) = (cert.display().to_string(), key.display().to_string());
        vars.extend([
            ("RELAY_TLS_CERT", cert.as_str()),
            ("RELAY_TLS_KEY", key.as_str()),
            ("RELAY_USER_RECIPIENT_LIMIT", "100"),
        ]);
        let s = settings(&env(&vars), dir.path()).unwrap();
        assert_eq!(s.client_limits, None);
        let l = s.user_limits.unwrap();
        assert_eq!(
            (l.interval_secs, l.connections, l.messages, l.recipients),
            (60, None, Some(20), Some(100))
        );
        vars.push(("POSTCONF_smtpd_restriction_classes", "mine"));
        let err = settings(&env(&vars), dir.path()).unwrap_err().to_string();
        assert!(err.contains("smtpd_restriction_classes"), "{err}");
    }

    #[test]
    fn the_sandbox_is_hold_discard_or_a_mailbox() {
        let with = |v: &'static str| {
            let mut vars = minimal();
            vars.push(("RELAY_SANDBOX", v));
            settings(&env(&vars), nodir()).map(|s| s.sandbox)
        };
        assert_eq!(with("Hold").unwrap(), Some(Sandbox::Hold));
        assert_eq!(with("discard").unwrap(), Some(Sandbox::Discard));
        assert_eq!(
            with("qa@example.net").unwrap(),
            Some(Sandbox::CatchAll("qa@example.net".into()))
        );
        let err = with("holdd").unwrap_err().to_string();
        assert!(
            err.starts_with("RELAY_SANDBOX: \"holdd\" is not an e-mail address"),
            "{err}"
        );
    }

    #[test]
    fn sender_and_recipient_lists_come_from_three_variables() {
        use crate::settings::MailPattern;
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut vars = minimal();
            vars.extend_from_slice(extra);
            settings(&env(&vars), nodir())
        };
        let s = with(&[
            (
                "RELAY_ALLOWED_SENDERS",
                "example.net, alerts@partner.example",
            ),
            ("RELAY_ALLOWED_RECIPIENTS", "ops@example.net"),
            (
                "RELAY_SENDER_BINDINGS",
                "app1: billing@example.net, notify.example.net; app2:app2@example.net;",
            ),
        ])
        .unwrap()
        .access;
        assert_eq!(s.allowed_senders.len(), 2);
        assert_eq!(
            s.allowed_recipients,
            [MailPattern::Address("ops@example.net".into())]
        );
        assert_eq!(s.sender_bindings.len(), 2);
        assert_eq!(s.sender_bindings[0].user, "app1");
        assert_eq!(
            s.sender_bindings[0].senders,
            [
                MailPattern::Address("billing@example.net".into()),
                MailPattern::Domain("notify.example.net".into())
            ]
        );
        let err = with(&[("RELAY_SENDER_BINDINGS", "app1 billing@example.net")])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "RELAY_SENDER_BINDINGS: \"app1 billing@example.net\" is not user:sender,sender"
            ),
            "{err}"
        );
        let err = with(&[("RELAY_ALLOWED_RECIPIENTS", "ops@")])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("RELAY_ALLOWED_RECIPIENTS: "), "{err}");
    }

    #[test]
    fn header_privacy_from_the_environment() {
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut vars = minimal();
            vars.extend_from_slice(extra);
            settings(&env(&vars), nodir())
        };
        let default = with(&[]).unwrap().headers;
        assert!(!default.reveal_client && default.remove.is_empty());
        let chosen = with(&[
            ("RELAY_REVEAL_CLIENT", "yes"),
            ("RELAY_REMOVE_HEADERS", "X-Mailer User-Agent"),
        ])
        .unwrap()
        .headers;
        assert!(chosen.reveal_client);
        assert_eq!(chosen.remove, ["X-Mailer", "User-Agent"]);
        let err = with(&[("RELAY_REMOVE_HEADERS", "Date")])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("RELAY_REMOVE_HEADERS: Date cannot be removed"),
            "{err}"
        );
        let err = with(&[
            ("RELAY_REVEAL_CLIENT", "no"),
            ("POSTCONF_smtp_header_checks", "regexp:/x"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("both set Postfix's smtp_header_checks"),
            "{err}"
        );
    }

    #[test]
    fn sasl_passwd_files_from_the_postfix_dir() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("sasl_passwd"),
            "[smtp.example.net]:25 sasl-user-login:pa ss:wo}rd\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("client_sasl_passwd"), "app1 secret1\n").unwrap();
        // Users without a certificate are refused: AUTH is only offered inside TLS.
        let err = settings(&env(&minimal()), dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("RELAY_TLS_CERT: SASL users are configured but no TLS certificate"),
            "{err}"
        );
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert, "certificate").unwrap();
        std::fs::write(&key, "key").unwrap();
        let mut vars = minimal();
        let (cert, key) = (cert.display().to_string(), key.display().to_string());
        vars.extend([
            ("RELAY_HOST", "[smtp.example.net]:25"),
            ("RELAY_TLS_CERT", cert.as_str()),
            ("RELAY_TLS_KEY", key.as_str()),
        ]);
        let s = settings(&env(&vars), dir.path()).unwrap();
        let creds = s.relayhost_credentials.unwrap();
        assert_eq!(
            (creds.login.as_str(), creds.password.as_str()),
            ("sasl-user-login", "pa ss:wo}rd")
        );
        assert_eq!(
            s.sasl_users,
            SaslUserSource::PasswdFile(dir.path().join("client_sasl_passwd"))
        );
    }

    /// Issue 26: RELAY_TLS_MIN_VERSION sets the clients' TLS floor, by its `TLSv1.x` name,
    /// and only goes with a certificate.
    #[test]
    fn tls_min_version() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert, "certificate").unwrap();
        std::fs::write(&key, "key").unwrap();
        let (cert, key) = (cert.display().to_string(), key.display().to_string());
        let with = |extra: &[(&'static str, &str)]| {
            let mut vars: Vec<(&str, &str)> = minimal();
            vars.extend_from_slice(extra);
            settings(&env(&vars), nodir())
        };
        let tls = [
            ("RELAY_TLS_CERT", cert.as_str()),
            ("RELAY_TLS_KEY", key.as_str()),
        ];
        let min = |extra: &[(&'static str, &str)]| {
            let mut vars = tls.to_vec();
            vars.extend_from_slice(extra);
            with(&vars).map(|s| s.inbound_tls.unwrap().min_version)
        };
        assert_eq!(min(&[]).unwrap(), TlsMinVersion::Tls1_2);
        assert_eq!(
            min(&[("RELAY_TLS_MIN_VERSION", "TLSv1.0")]).unwrap(),
            TlsMinVersion::Tls1_0
        );
        assert_eq!(
            min(&[("RELAY_TLS_MIN_VERSION", "TLSv1.3")]).unwrap(),
            TlsMinVersion::Tls1_3
        );
        let err = min(&[("RELAY_TLS_MIN_VERSION", "1.0")])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("RELAY_TLS_MIN_VERSION: \"1.0\" is not a TLS version")
                && err.contains("TLSv1.0, TLSv1.1, TLSv1.2, TLSv1.3"),
            "{err}"
        );
        let err = with(&[("RELAY_TLS_MIN_VERSION", "TLSv1.0")])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "RELAY_TLS_MIN_VERSION: is TLSv1.0, but the relay offers clients no TLS"
            ),
            "{err}"
        );
    }

    #[test]
    fn relayhost_password_with_trailing_white_space_is_refused() {
        let mut vars = minimal();
        vars.extend([
            ("RELAY_HOST", "[smtp.example.net]:587"),
            ("RELAY_LOGIN", "user"),
            ("RELAY_PASSWORD", "  leading is fine"),
        ]);
        assert!(settings(&env(&vars), nodir()).is_ok());
        let mut vars = minimal();
        vars.extend([
            ("RELAY_LOGIN", "user"),
            ("RELAY_PASSWORD", "trailing is not "),
        ]);
        let err = settings(&env(&vars), nodir()).unwrap_err().to_string();
        assert!(err.starts_with("RELAY_PASSWORD: "), "{err}");
    }

    #[test]
    fn extras_settings_then_postconf() {
        let mut vars = minimal();
        vars.push((
            "RELAY_EXTRAS_SETTINGS",
            "message_size_limit=1000 smtpd_helo_required=yes",
        ));
        vars.push(("POSTCONF_message_size_limit", "2000"));
        let s = settings(&env(&vars), nodir()).unwrap();
        assert_eq!(s.postconf["message_size_limit"], "2000");
        assert_eq!(s.postconf["smtpd_helo_required"], "yes");
    }
}
