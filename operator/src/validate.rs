//! The checks the controller repeats after admission. The CRD schema and its CEL rules reject
//! most bad specs at the API server; these catch what admission cannot express (postconf
//! values) and protect against clusters that skipped validation. A failure names the field and
//! the fix, and leaves the running relay untouched.

use ipnet::IpNet;

use crate::crd::SmtpRelaySpec;

/// RFC 1123 DNS name, as in [`crate::crd::DOMAIN_PATTERN`].
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
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn is_host(s: &str) -> bool {
    is_domain(s) || s.parse::<std::net::IpAddr>().is_ok()
}

/// Validates a spec; the error is a message for the user.
pub fn validate_spec(spec: &SmtpRelaySpec) -> Result<(), String> {
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
    for n in &spec.networks {
        if n.parse::<IpNet>().is_err() {
            return Err(format!(
                "spec.networks entry {n:?} is not a CIDR (e.g. 10.0.0.0/24 or fd00::/64)"
            ));
        }
    }
    for d in &spec.relay_domains {
        if !is_domain(d) {
            return Err(format!(
                "spec.relayDomains entry {d:?} is not a DNS domain name"
            ));
        }
    }
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
    if spec.replicas < 1 {
        return Err(format!(
            "spec.replicas {} must be at least 1",
            spec.replicas
        ));
    }
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
    if let Some(p) = &spec.postmaster {
        if p.split('@').count() != 2 || p.chars().any(char::is_whitespace) {
            return Err(format!("spec.postmaster {p:?} is not an email address"));
        }
    }
    if quantity_bytes(&spec.storage.size).is_none() {
        return Err(format!(
            "spec.storage.size {:?} is not a storage quantity (e.g. 1Gi or 500Mi)",
            spec.storage.size
        ));
    }
    for (k, v) in &spec.postconf {
        if !is_postconf_key(k) {
            return Err(format!(
                "spec.postconf key {k:?} is not a Postfix parameter name (lowercase letters, digits, underscores)"
            ));
        }
        if v.contains(['\n', '\r', '\0']) {
            return Err(format!(
                "spec.postconf.{k} contains a line break; Postfix parameters are one line"
            ));
        }
    }
    Ok(())
}

/// Bytes of a storage quantity such as `1Gi`, `500M` or `1.5Gi` (the forms of
/// [`crate::crd::QUANTITY_PATTERN`]); `None` when malformed.
pub fn quantity_bytes(q: &str) -> Option<u128> {
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let mult: u128 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        _ => return None,
    };
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if int.is_empty() || frac.len() > 9 || !frac.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let int: u128 = int.parse().ok()?;
    let frac_val: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    let scale = 10u128.pow(frac.len() as u32);
    int.checked_mul(mult)?
        .checked_add(frac_val.checked_mul(mult)? / scale)
}
