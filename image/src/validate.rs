//! Syntax checks shared by both input paths. Each takes the name of the input it checks, so
//! the error can point at it.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::error::{ConfigError, ConfigResult};
use crate::postfix::types::is_postfix_parameter;
use crate::settings::{MailPattern, Relayhost};

/// A DNS domain name (RFC 1123 labels), returned lower-cased without a trailing dot.
pub fn domain(field: &str, value: &str) -> ConfigResult<String> {
    let name = value.trim().trim_end_matches('.').to_ascii_lowercase();
    let bad = |why: &str| {
        ConfigError::invalid(
            field,
            format!("{value:?} is not a valid domain name ({why}); use a name like example.net"),
        )
    };
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.len() > 253 {
        return Err(bad("longer than 253 characters"));
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(bad("each dot-separated label must have 1 to 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(bad("only letters, digits, '-' and '.' are allowed"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("a label cannot start or end with '-'"));
        }
    }
    Ok(name)
}

/// A client network in CIDR form; a bare address means just that host.
pub fn network(field: &str, value: &str) -> ConfigResult<IpNet> {
    let value = value.trim();
    let net = match value.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => match value.parse::<IpAddr>() {
            Ok(addr) => IpNet::from(addr),
            Err(_) => {
                return Err(ConfigError::invalid(
                    field,
                    format!("{value:?} is not a network; use CIDR notation such as 10.0.0.0/24"),
                ))
            }
        },
    };
    if net.trunc() != net {
        return Err(ConfigError::invalid(
            field,
            format!("{value} has host bits set; did you mean {}?", net.trunc()),
        ));
    }
    Ok(net)
}

/// An e-mail address of the form local@domain.
pub fn email(field: &str, value: &str) -> ConfigResult<String> {
    let value = value.trim();
    let invalid = || {
        ConfigError::invalid(
            field,
            format!("{value:?} is not an e-mail address; use a form like postmaster@example.net"),
        )
    };
    let (local, dom) = value.rsplit_once('@').ok_or_else(invalid)?;
    if local.is_empty()
        || !local
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"<>()[]\\,;:\"@".contains(&b))
    {
        return Err(invalid());
    }
    let dom = domain(field, dom).map_err(|_| invalid())?;
    Ok(format!("{local}@{dom}"))
}

/// The seed's `RELAY_HOST` syntax: `host`, `host:port`, `[host]` or `[host]:port`. Brackets
/// suppress the MX lookup, as in Postfix.
pub fn relayhost(field: &str, value: &str) -> ConfigResult<Relayhost> {
    let value = value.trim();
    let invalid = |why: &str| {
        ConfigError::invalid(
            field,
            format!("{value:?} is not a relayhost ({why}); use host:port or [host]:port, e.g. [smtp.example.net]:587"),
        )
    };
    let (host, rest, mx_lookup) = if let Some(inner) = value.strip_prefix('[') {
        let (host, rest) = inner
            .split_once(']')
            .ok_or_else(|| invalid("missing ']'"))?;
        (host, rest, false)
    } else {
        match value.rsplit_once(':') {
            Some((host, _)) => (host, &value[host.len()..], true),
            None => (value, "", true),
        }
    };
    let port = match rest {
        "" => 25,
        _ => rest
            .strip_prefix(':')
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| invalid("the port must be a number from 1 to 65535"))?,
    };
    relayhost_host(field, host)?;
    Ok(Relayhost {
        host: host.to_ascii_lowercase(),
        port,
        mx_lookup,
        implicit_tls: false,
    })
}

/// A relayhost name: a domain name or an IP address.
pub fn relayhost_host(field: &str, host: &str) -> ConfigResult<()> {
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    domain(field, host).map(|_| ())
}

/// A Postfix parameter name as accepted by `postconf`. Most are lower-case, but not all:
/// `smtp_tls_CAfile`, `smtpd_tls_CApath`, ... (whether Postfix knows the name is checked
/// against `postconf -d` later).
pub fn postconf_name(field: &str, name: &str) -> ConfigResult<()> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(ConfigError::invalid(
            field,
            format!("{name:?} is not a Postfix parameter name (letters, digits and '_')"),
        ));
    }
    Ok(())
}

/// A value that fits on one main.cf line.
/// An OAuth2 token endpoint: an `https://` URL (the client secret crosses the network), or
/// `http://` to a loopback address (a local token proxy, tests).
pub fn token_endpoint(field: &str, value: &str) -> ConfigResult<String> {
    let url = reqwest::Url::parse(value)
        .map_err(|e| ConfigError::invalid(field, format!("{value:?} is not a URL: {e}")))?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    match url.scheme() {
        "https" if url.host().is_some() => Ok(value.to_string()),
        "http" if loopback => Ok(value.to_string()),
        _ => Err(ConfigError::invalid(
            field,
            format!("{value:?} must be an https:// URL: the client's secret and the tokens travel over it"),
        )),
    }
}

pub fn single_line(field: &str, value: &str) -> ConfigResult<()> {
    if value.contains(['\n', '\r', '\0']) {
        return Err(ConfigError::invalid(
            field,
            "the value contains a line break or NUL; Postfix settings must be a single line",
        ));
    }
    Ok(())
}

/// A Kubernetes object name (a DNS-1123 subdomain: what a Secret may be called).
pub fn object_name(field: &str, name: &str) -> ConfigResult<()> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(ConfigError::invalid(
            field,
            format!("{name:?} is not a Kubernetes object name: lowercase letters, digits, '-' and '.', at most 253, starting and ending with a letter or digit"),
        ));
    }
    Ok(())
}

/// An entry of a sender or recipient list: an address (`noreply@example.net`), or a domain
/// (`example.net`), which covers its subdomains too. The local part is kept to what
/// applications send from: letters, digits, `.`, `_`, `+` and `-`. Lower-cased, as Postfix
/// matches addresses in any case.
pub fn mail_pattern(field: &str, value: &str) -> ConfigResult<MailPattern> {
    let value = value.trim();
    let Some((local, dom)) = value.rsplit_once('@') else {
        return domain(field, value).map(MailPattern::Domain).map_err(|_| {
            ConfigError::invalid(
                field,
                format!("{value:?} is neither an address nor a domain; {MAIL_PATTERN_RULE}"),
            )
        });
    };
    if local.is_empty() {
        return Err(ConfigError::invalid(
            field,
            format!("{value:?} has no local part: write the domain alone ({dom}), which covers every address in it"),
        ));
    }
    if local.len() > 64
        || local.starts_with('.')
        || !local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
    {
        return Err(ConfigError::invalid(
            field,
            format!("{value:?} is not an address this relay matches; {MAIL_PATTERN_RULE}"),
        ));
    }
    let dom = domain(field, dom).map_err(|_| {
        ConfigError::invalid(
            field,
            format!("{value:?} does not end in a domain name; {MAIL_PATTERN_RULE}"),
        )
    })?;
    Ok(MailPattern::Address(format!(
        "{}@{dom}",
        local.to_ascii_lowercase()
    )))
}

/// What a sender or recipient list entry may be, for messages.
pub const MAIL_PATTERN_RULE: &str = "use an address such as noreply@example.net (a local part of letters, digits, '.', '_', '+' and '-', at most 64) or a domain such as example.net, which covers its subdomains";

/// The same rule as a regular expression, for the CRD's schema.
pub const MAIL_PATTERN_PATTERN: &str = r"^([A-Za-z0-9_+-][A-Za-z0-9._+-]{0,63}@)?([a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?\.)*[a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?$";

/// The most entries a sender or recipient list may have, and the most users bound to senders.
pub const MAIL_PATTERNS_MAX: usize = 128;

/// A SASL user name. Users are registered in the relay domain's realm, so a login is `name` or
/// `name@domain`.
pub fn sasl_user(field: &str, name: &str) -> ConfigResult<()> {
    if !is_sasl_user(name) {
        return Err(ConfigError::invalid(
            field,
            format!("{name:?} is not a valid SASL user name: {SASL_USER_RULE}"),
        ));
    }
    Ok(())
}

/// What a SASL user name may be, for messages.
pub const SASL_USER_RULE: &str =
    "use letters, digits, '.', '_', '+' and '-', starting with a letter or digit";

/// The same rule as a regular expression, for the CRD's schema.
pub const SASL_USER_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._+-]*$";

/// Whether `name` is a SASL user name the relay registers (see [`sasl_user`]); for a name read
/// from inside a secret file, whose message must not quote it (it may be part of a password).
pub fn is_sasl_user(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
}

/// A `postconf` entry's name: one Postfix knows.
pub fn postconf_known(field: &str, name: &str) -> ConfigResult<()> {
    if !is_postfix_parameter(name) {
        return Err(ConfigError::invalid(
            field,
            format!("{name:?} is not a Postfix parameter (see `postconf -d` for the list)"),
        ));
    }
    Ok(())
}

/// A `postconf` entry's value: one Postfix can read as the parameter's type (integer, size,
/// time with its unit, boolean; [`crate::postfix::types`]), so no daemon dies on it after a
/// reload. A value that refers to other parameters (`$name`) is left to Postfix.
pub fn postconf_value(field: &str, name: &str, value: &str) -> ConfigResult<()> {
    crate::postfix::types::check(field, name, value)
}

/// The longest interval between deliveries to the relayhost: Postfix reads a time as a C `int`
/// of seconds, and the connection is kept one second longer.
pub const MAX_DELIVERY_INTERVAL: u32 = i32::MAX.unsigned_abs() - 1;

/// The interval between deliveries to the relayhost, in seconds: at least one (without pacing
/// the field is left out), and a time Postfix can read.
pub fn delivery_interval(field: &str, seconds: u32) -> ConfigResult<u32> {
    if seconds == 0 {
        return Err(ConfigError::invalid(
            field,
            "0 paces nothing: give at least 1 second, or leave it out",
        ));
    }
    let max = MAX_DELIVERY_INTERVAL;
    if seconds > max {
        return Err(ConfigError::invalid(
            field,
            format!("{seconds} is more seconds than Postfix can count (at most {max})"),
        ));
    }
    Ok(seconds)
}

/// A port a second smtpd listens on (the PROXY-protocol one, a submission one): not 0.
pub fn listen_port(field: &str, port: u16) -> ConfigResult<u16> {
    if port == 0 {
        return Err(ConfigError::invalid(field, "0 is not a port to listen on"));
    }
    Ok(port)
}

/// Headers a message cannot do without, or whose removal would hide its path: never removed
/// by `headers.remove` (the Received lines' client is hidden by default instead).
pub const KEPT_HEADERS: [&str; 4] = ["from", "date", "received", "mime-version"];

/// The most headers `headers.remove` may name.
pub const REMOVED_HEADERS_MAX: usize = 32;

/// The pattern of a header name `headers.remove` takes (the CRD's too).
pub const REMOVED_HEADER_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$";

/// A header name to remove from what leaves the relay: letters, digits, `-`, `_` and `.`
/// (every header name in use; RFC 5322 allows more, which a regular expression would have to
/// quote), starting with a letter or digit, at most 64 characters; none of [`KEPT_HEADERS`]
/// nor a `Content-` header (the message's structure). Returned as written.
pub fn removed_header(field: &str, name: &str) -> ConfigResult<String> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    if name.is_empty()
        || name.len() > 64
        || !name.bytes().all(allowed)
        || !name.starts_with(|c: char| c.is_ascii_alphanumeric())
    {
        return Err(ConfigError::invalid(
            field,
            format!("{name:?} is not a header name this relay removes: letters, digits, '-', '_' and '.', at most 64, as in X-Mailer (no ':')"),
        ));
    }
    let lower = name.to_ascii_lowercase();
    if KEPT_HEADERS.contains(&lower.as_str()) || lower.starts_with("content-") {
        return Err(ConfigError::invalid(
            field,
            format!("{name} cannot be removed: a message needs it, or it records the message's path (the relay hides the client in Received lines already)"),
        ));
    }
    Ok(name.to_string())
}

/// A secret (password) that Postfix and Cyrus SASL can carry unchanged.
pub fn password(field: &str, value: &str) -> ConfigResult<()> {
    if value.is_empty() {
        return Err(ConfigError::invalid(field, "the password is empty"));
    }
    if value.contains(['\n', '\r', '\0']) {
        return Err(ConfigError::invalid(
            field,
            "the password contains a line break or NUL, which SMTP authentication cannot carry",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postfix_parameters() {
        assert!(is_postfix_parameter("message_size_limit"));
        assert!(is_postfix_parameter("smtp_tls_CAfile"));
        assert!(!is_postfix_parameter("message_size_limt"));
        assert!(!is_postfix_parameter("# The parameter names Postfix knows"));
        let err = postconf_known("spec.postconf.x", "message_size_limt").unwrap_err();
        assert!(err
            .to_string()
            .starts_with("spec.postconf.x: \"message_size_limt\" is not a Postfix parameter"));
    }

    #[test]
    fn domains() {
        assert_eq!(domain("D", "Example.NET.").unwrap(), "example.net");
        assert!(domain("D", "bad_domain.net").is_err());
        assert!(domain("D", "-a.net").is_err());
        assert!(domain("D", "a..net").is_err());
        let err = domain("RELAY_MYDOMAIN", "").unwrap_err().to_string();
        assert!(err.starts_with("RELAY_MYDOMAIN:"), "{err}");
    }

    #[test]
    fn networks() {
        assert_eq!(
            network("N", "10.0.0.0/24").unwrap().to_string(),
            "10.0.0.0/24"
        );
        assert_eq!(network("N", "10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
        assert_eq!(network("N", "fd00::/8").unwrap().to_string(), "fd00::/8");
        let err = network("N", "10.0.0.1/24").unwrap_err().to_string();
        assert!(err.contains("did you mean 10.0.0.0/24"), "{err}");
        assert!(network("N", "10.0.0.0/33").is_err());
        assert!(network("N", "everyone").is_err());
    }

    #[test]
    fn relayhosts() {
        let r = relayhost("H", "[10.1.0.1]:25").unwrap();
        assert_eq!(
            (r.host.as_str(), r.port, r.mx_lookup),
            ("10.1.0.1", 25, false)
        );
        let r = relayhost("H", "relay:2525").unwrap();
        assert_eq!(
            (r.host.as_str(), r.port, r.mx_lookup),
            ("relay", 2525, true)
        );
        let r = relayhost("H", "smtp.example.net").unwrap();
        assert_eq!((r.port, r.mx_lookup), (25, true));
        let r = relayhost("H", "[smtp.example.net]").unwrap();
        assert_eq!((r.port, r.mx_lookup), (25, false));
        assert!(relayhost("H", "[relay:25").is_err());
        assert!(relayhost("H", "relay:0").is_err());
        assert!(relayhost("H", "relay:http").is_err());
        assert!(relayhost("H", "").is_err());
    }

    #[test]
    fn emails_users_passwords() {
        assert_eq!(
            email("P", "Postmaster@Example.net").unwrap(),
            "Postmaster@example.net"
        );
        assert!(email("P", "postmaster").is_err());
        assert!(email("P", "a b@example.net").is_err());
        assert!(sasl_user("U", "app-1.mail").is_ok());
        assert!(sasl_user("U", "..data").is_err());
        assert!(sasl_user("U", "a b").is_err());
        assert!(password("P", "p a}s:s,w=ö").is_ok());
        assert!(password("P", "line\nbreak").is_err());
        assert!(postconf_name("X", "message_size_limit").is_ok());
        assert!(postconf_name("X", "smtp_tls_CAfile").is_ok());
        assert!(postconf_name("X", "Message-Size").is_err());
    }
}
