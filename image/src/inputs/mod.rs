//! The two ways the relay is configured, both producing the same [`Settings`](crate::settings::Settings):
//! the original image's environment variables (`env`), and the config file plus secret files
//! that the operator mounts (`file`).

pub mod env;
pub mod file;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::config_file::SandboxMode;
use crate::error::{ConfigError, ConfigResult};
use crate::postfix::access::{MILTERS, SENDER_LOGIN_MAPS};
use crate::postfix::main_cf::{self, SYSTEM_CA_BUNDLE};
use crate::postfix::restrictions;
use crate::postfix::sandbox;
use crate::settings::{
    HeaderPolicy, Limits, MailAccess, Mode, RelayPolicy, Sandbox, SaslUserSource, SenderBinding,
    SubmissionPorts, TlsLevel,
};
use crate::validate;

/// A file whose content the relay refuses, with the file and what is wrong with it apart: its
/// message names the file by its path (`field: <path> <problem>`), and whoever knows where
/// the file comes from can name that instead (the operator names the key of the user's Secret
/// it is mounted from, a path the user never wrote). Never a piece of the content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {} {problem}", .path.display())]
pub struct FileRefusal {
    pub field: String,
    pub path: PathBuf,
    /// What is wrong, said of the file and following its name: `is not UTF-8 text; ...`.
    pub problem: String,
}

impl FileRefusal {
    pub fn new(
        field: impl Into<String>,
        path: impl Into<PathBuf>,
        problem: impl Into<String>,
    ) -> Self {
        FileRefusal {
            field: field.into(),
            path: path.into(),
            problem: problem.into(),
        }
    }
}

/// The same words, for what reports a [`ConfigError`].
impl From<FileRefusal> for ConfigError {
    fn from(r: FileRefusal) -> Self {
        ConfigError::invalid(r.field, format!("{} {}", r.path.display(), r.problem))
    }
}

/// Reads a secret mounted as a file. One trailing line break is dropped: files written by
/// `echo` or `kubectl create secret --from-file` usually end with one, passwords never do.
pub fn read_secret_file(field: &str, path: &Path) -> ConfigResult<String> {
    let bytes = fs::read(path).map_err(|e| ConfigError::unreadable(field, path, e))?;
    Ok(secret_text(field, path, bytes)?)
}

/// A secret file's content as the relay reads it: UTF-8 text, one trailing line break dropped.
pub fn secret_text(field: &str, path: &Path, bytes: Vec<u8>) -> Result<String, FileRefusal> {
    let mut text = String::from_utf8(bytes)
        .map_err(|_| FileRefusal::new(field, path, "is not UTF-8 text; store it as UTF-8"))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

/// Checks that a file the relay will hand to Postfix exists and is readable now, so a wrong
/// mount fails at start-up rather than at the first delivery.
pub fn readable_file(field: &str, path: &Path) -> ConfigResult<PathBuf> {
    fs::File::open(path).map_err(|e| ConfigError::unreadable(field, path, e))?;
    Ok(path.to_path_buf())
}

/// The CA bundle used when none is configured, if the system has one.
pub fn default_ca_file() -> Option<PathBuf> {
    let path = Path::new(SYSTEM_CA_BUNDLE);
    path.exists().then(|| path.to_path_buf())
}

/// A named mode or, as the original image did for any other `RELAY_MODE` value, an explicit
/// restriction list whose every token Postfix must know, and whose safety rests on nothing the
/// relay cannot read unless `vouch` says so.
pub fn policy_from_mode_text(
    field: &str,
    text: &str,
    vouch: restrictions::Vouch,
) -> ConfigResult<RelayPolicy> {
    let text = text.trim();
    if let Some(mode) = Mode::from_seed_name(text) {
        return Ok(RelayPolicy::Mode(mode));
    }
    let tokens: Vec<String> = text
        .split([',', ' ', '\t'])
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    restrictions::check_custom(field, &tokens, vouch).map_err(|e| match e {
        ConfigError::Invalid { field, problem } => ConfigError::invalid(
            field,
            format!(
                "{problem}. Use one of the modes {} or a list of Postfix relay restrictions",
                Mode::ALL.map(Mode::seed_name).join(", ")
            ),
        ),
        other => other,
    })?;
    Ok(RelayPolicy::Custom(tokens))
}

/// Relayhost TLS level from the seed's two variables, with SMTPS requiring encryption. `None`
/// leaves the default to [`crate::settings::relayhost_tls`]: with a login (`logs_in`) that is
/// `secure`, which already requires TLS, so neither `RELAY_USE_TLS=yes` nor implicit TLS
/// weakens it to `encrypt`; without a login they ask for `encrypt`.
pub fn tls_level(
    field: &str,
    use_tls: Option<bool>,
    verify: Option<TlsLevel>,
    implicit_tls: bool,
    logs_in: bool,
) -> ConfigResult<Option<TlsLevel>> {
    let required = if logs_in {
        None
    } else {
        Some(TlsLevel::Encrypt)
    };
    let level = match (use_tls, verify) {
        (Some(false), Some(level)) if level != TlsLevel::None => {
            return Err(ConfigError::invalid(
                field,
                format!(
                "TLS is turned off but the verification level is {level}; remove one of the two"
            ),
            ))
        }
        (Some(false), _) => Some(TlsLevel::None),
        (Some(true), None) => required,
        (_, level) => level,
    };
    if implicit_tls {
        return match level {
            None => Ok(required),
            Some(TlsLevel::None | TlsLevel::May) => Err(ConfigError::invalid(
                field,
                "implicit TLS (SMTPS) needs a TLS level of encrypt or stronger",
            )),
            level => Ok(level),
        };
    }
    Ok(level)
}

/// Refuses a `postconf` entry (named with `prefix`) for one of `parameters`, which `field`
/// sets: one owner for each Postfix parameter.
fn not_in_postconf(
    field: &str,
    parameters: &[&str],
    postconf: &BTreeMap<String, String>,
    prefix: &str,
) -> ConfigResult<()> {
    match parameters.iter().find(|p| postconf.contains_key(**p)) {
        Some(parameter) => Err(ConfigError::invalid(
            field,
            format!("and {prefix}{parameter} both set Postfix's {parameter}: keep one"),
        )),
        None => Ok(()),
    }
}

/// How an input names what `header_policy` reads: the headers choice as a whole, its list of
/// headers to remove, and the prefix of a `postconf` entry.
pub struct HeaderFields<'a> {
    pub headers: &'a str,
    pub remove: &'a str,
    pub postconf_prefix: &'a str,
}

/// The headers choice, validated: at most [`validate::REMOVED_HEADERS_MAX`] names to remove,
/// each one [`validate::removed_header`] takes; refused beside a `postconf` entry for the
/// parameter it sets ([`main_cf::HEADER_CHECKS_PARAMETER`]).
pub fn header_policy(
    reveal_client: bool,
    remove: &[&str],
    postconf: &BTreeMap<String, String>,
    fields: &HeaderFields<'_>,
) -> ConfigResult<HeaderPolicy> {
    not_in_postconf(
        fields.headers,
        &[main_cf::HEADER_CHECKS_PARAMETER],
        postconf,
        fields.postconf_prefix,
    )?;
    if remove.len() > validate::REMOVED_HEADERS_MAX {
        return Err(ConfigError::invalid(
            fields.remove,
            format!("names at most {} headers", validate::REMOVED_HEADERS_MAX),
        ));
    }
    let remove = remove
        .iter()
        .map(|name| validate::removed_header(fields.remove, name))
        .collect::<ConfigResult<Vec<_>>>()?;
    Ok(HeaderPolicy {
        reveal_client,
        remove,
    })
}

/// How an input names what `mail_access` reads: the allowed senders, the allowed recipients,
/// the bindings (and the `i`th binding's user and senders), and the prefix of a `postconf`
/// entry.
pub struct AccessFields<'a> {
    pub senders: &'a str,
    pub recipients: &'a str,
    pub bindings: &'a str,
    pub binding: &'a dyn Fn(usize, &str) -> String,
    pub postconf_prefix: &'a str,
}

/// What an input says about senders and recipients, unvalidated.
#[derive(Default)]
pub struct AccessInput<'a> {
    pub allowed_senders: Vec<&'a str>,
    pub allowed_recipients: Vec<&'a str>,
    /// Each bound user with its senders.
    pub bindings: Vec<(&'a str, Vec<&'a str>)>,
}

/// The senders and recipients the relay accepts, validated: each list at most
/// [`validate::MAIL_PATTERNS_MAX`] entries that [`validate::mail_pattern`] takes; each bound
/// user a SASL user name, bound once, to at least one sender; bindings refused beside a
/// `postconf` entry for what they set ([`SENDER_LOGIN_MAPS`], [`MILTERS`]).
pub fn mail_access(
    input: &AccessInput<'_>,
    postconf: &BTreeMap<String, String>,
    fields: &AccessFields<'_>,
) -> ConfigResult<MailAccess> {
    let patterns = |field: &str, entries: &[&str]| {
        if entries.len() > validate::MAIL_PATTERNS_MAX {
            return Err(ConfigError::invalid(
                field,
                format!("lists at most {} entries", validate::MAIL_PATTERNS_MAX),
            ));
        }
        entries
            .iter()
            .map(|e| validate::mail_pattern(field, e))
            .collect::<ConfigResult<Vec<_>>>()
    };
    if !input.bindings.is_empty() {
        not_in_postconf(
            fields.bindings,
            &[SENDER_LOGIN_MAPS, MILTERS],
            postconf,
            fields.postconf_prefix,
        )?;
    }
    if input.bindings.len() > validate::MAIL_PATTERNS_MAX {
        return Err(ConfigError::invalid(
            fields.bindings,
            format!("binds at most {} users", validate::MAIL_PATTERNS_MAX),
        ));
    }
    let mut sender_bindings: Vec<SenderBinding> = Vec::new();
    for (i, (user, senders)) in input.bindings.iter().enumerate() {
        let user_field = (fields.binding)(i, "user");
        let senders_field = (fields.binding)(i, "senders");
        validate::sasl_user(&user_field, user)?;
        if sender_bindings.iter().any(|b| b.user == *user) {
            return Err(ConfigError::invalid(
                user_field,
                format!("{user:?} is bound twice: list all its senders in one binding"),
            ));
        }
        if senders.is_empty() {
            return Err(ConfigError::invalid(
                senders_field,
                format!("{user:?} is bound to no sender: list the senders it may use, or remove the binding to let it send as anyone"),
            ));
        }
        sender_bindings.push(SenderBinding {
            user: user.to_string(),
            senders: patterns(&senders_field, senders)?,
        });
    }
    Ok(MailAccess {
        allowed_senders: patterns(fields.senders, &input.allowed_senders)?,
        allowed_recipients: patterns(fields.recipients, &input.allowed_recipients)?,
        sender_bindings,
    })
}

/// The submission ports, validated: real ports, only with SASL users (who alone send there),
/// whose TLS [`crate::settings::require_tls_for_sasl`] requires already. `field(port)` names
/// the STARTTLS port (`false`) or the implicit TLS one (`true`); `fix` says how to give users.
pub fn submission_ports(
    starttls: Option<u16>,
    implicit_tls: Option<u16>,
    users: &SaslUserSource,
    field: &dyn Fn(bool) -> String,
    fix: &str,
) -> ConfigResult<SubmissionPorts> {
    let ports = SubmissionPorts {
        starttls,
        implicit_tls,
    };
    for (implicit, port) in [(false, starttls), (true, implicit_tls)] {
        let Some(port) = port else { continue };
        validate::listen_port(&field(implicit), port)?;
        if *users == SaslUserSource::None {
            return Err(ConfigError::invalid(
                field(implicit),
                format!("is a port where only SASL users send, and the relay has none: {fix}"),
            ));
        }
    }
    // Each port differs from the others: master.cf's, which knows them all.
    Ok(ports)
}

/// How an input names what `sandbox` reads: the sandbox, its mailbox, and the prefix of a
/// `postconf` entry.
pub struct SandboxFields<'a> {
    pub sandbox: &'a str,
    pub mailbox: &'a str,
    pub postconf_prefix: &'a str,
}

/// The sandbox, validated: a mailbox ([`validate::email`]) with `CatchAll` and only then;
/// refused beside a `postconf` entry for a parameter it sets ([`sandbox::PARAMETERS`]).
pub fn sandbox(
    mode: SandboxMode,
    mailbox: Option<&str>,
    postconf: &BTreeMap<String, String>,
    fields: &SandboxFields<'_>,
) -> ConfigResult<Sandbox> {
    not_in_postconf(
        fields.sandbox,
        &sandbox::PARAMETERS,
        postconf,
        fields.postconf_prefix,
    )?;
    match (mode, mailbox) {
        (SandboxMode::CatchAll, Some(mailbox)) => {
            Ok(Sandbox::CatchAll(validate::email(fields.mailbox, mailbox)?))
        }
        (SandboxMode::CatchAll, None) => Err(ConfigError::invalid(
            fields.mailbox,
            "is missing: a CatchAll sandbox delivers every message to this one mailbox",
        )),
        (_, Some(_)) => Err(ConfigError::invalid(
            fields.mailbox,
            "is only for a CatchAll sandbox: a Hold or Discard one delivers nothing",
        )),
        (SandboxMode::Hold, None) => Ok(Sandbox::Hold),
        (SandboxMode::Discard, None) => Ok(Sandbox::Discard),
    }
}

/// How an input names what `client_limits` and `user_limits` read: the limits, the interval,
/// and the prefix of a `postconf` entry.
pub struct LimitFields<'a> {
    pub limits: &'a str,
    pub interval: &'a str,
    pub postconf_prefix: &'a str,
}

/// The limits per client, validated as `limits`; refused beside a `postconf` entry for a
/// parameter they set ([`main_cf::CLIENT_LIMIT_PARAMETERS`]).
pub fn client_limits(
    interval_secs: Option<u32>,
    counts: [Option<u32>; 3],
    postconf: &BTreeMap<String, String>,
    fields: &LimitFields<'_>,
) -> ConfigResult<Limits> {
    not_in_postconf(
        fields.limits,
        &main_cf::CLIENT_LIMIT_PARAMETERS,
        postconf,
        fields.postconf_prefix,
    )?;
    limits(interval_secs, counts, fields)
}

/// The limits per SASL user, validated as `limits`; refused beside a `postconf` entry for a
/// parameter they set ([`main_cf::USER_LIMIT_PARAMETERS`]), and on a relay without SASL users,
/// which has nobody to count (`fix` says how to give some).
pub fn user_limits(
    interval_secs: Option<u32>,
    counts: [Option<u32>; 3],
    users: &SaslUserSource,
    postconf: &BTreeMap<String, String>,
    fields: &LimitFields<'_>,
    fix: &str,
) -> ConfigResult<Limits> {
    not_in_postconf(
        fields.limits,
        &main_cf::USER_LIMIT_PARAMETERS,
        postconf,
        fields.postconf_prefix,
    )?;
    if *users == SaslUserSource::None {
        return Err(ConfigError::invalid(
            fields.limits,
            format!("counts what each SASL user sends, and the relay has none: {fix}"),
        ));
    }
    limits(interval_secs, counts, fields)
}

/// Limits (`[connections, messages, recipients]`) over an interval of 1 s to a day (60 s when
/// omitted): each at least 1, at least one given.
fn limits(
    interval_secs: Option<u32>,
    counts: [Option<u32>; 3],
    fields: &LimitFields<'_>,
) -> ConfigResult<Limits> {
    let interval_secs = interval_secs.unwrap_or(60);
    if !(1..=86_400).contains(&interval_secs) {
        return Err(ConfigError::invalid(
            fields.interval,
            format!("{interval_secs} is not an interval of 1 to 86400 seconds"),
        ));
    }
    if counts.contains(&Some(0)) {
        return Err(ConfigError::invalid(
            fields.limits,
            "a limit of 0 would refuse every client: remove it to leave that count unlimited",
        ));
    }
    if counts.iter().all(Option::is_none) {
        return Err(ConfigError::invalid(
            fields.limits,
            "sets no limit: give connections, messages or recipients",
        ));
    }
    let [connections, messages, recipients] = counts;
    Ok(Limits {
        interval_secs,
        connections,
        messages,
        recipients,
    })
}
