//! The serving certificate the operator issues when a relay has SASL users and no
//! `tlsSecretRef`: the relay offers AUTH only inside TLS, so one manifest must still give a
//! relay clients can log in to, encrypted.
//!
//! The certificate is self-signed (ECDSA P-256), names the relay's Services as clients reach
//! them (and `spec.hostname`), is valid for [`VALIDITY`] and is replaced when less than
//! [`RENEW_BEFORE`] is left, when the names change, or when what is stored is not one the
//! operator issued for them. Clients that verify trust `tls.crt` of the `<name>-tls` Secret;
//! a `tlsSecretRef` (e.g. from cert-manager) replaces it.

use std::time::Duration;

use kube::ResourceExt;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
use x509_parser::extensions::GeneralName;
use x509_parser::pem::parse_x509_pem;

use crate::floor::contract::Names;
use crate::floor::crd::SmtpRelay;
use crate::floor::error::IssueError;

/// How long an issued certificate is valid.
pub const VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// An issued certificate is replaced when less than this is left (a third of its life).
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// The cluster's DNS domain, as kubelets are configured by default.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// A certificate and its key, PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

/// Whether the operator issues the relay's certificate: it has SASL users and no certificate
/// of the user's.
pub fn wanted(relay: &SmtpRelay) -> bool {
    relay.spec.sasl_users_secret_ref.is_some() && relay.spec.tls_secret_ref.is_none()
}

/// The DNS names clients use for the relay: its Service in every short and long form, its
/// pods through the headless Service, and `spec.hostname` when set.
pub fn names(relay: &SmtpRelay) -> Vec<String> {
    let name = relay.name_any();
    let ns = relay.namespace().unwrap_or_default();
    let headless = Names::headless_service(&name);
    let mut out = vec![
        name.clone(),
        format!("{name}.{ns}"),
        format!("{name}.{ns}.svc"),
        format!("{name}.{ns}.svc.{CLUSTER_DOMAIN}"),
        format!("*.{headless}.{ns}.svc"),
        format!("*.{headless}.{ns}.svc.{CLUSTER_DOMAIN}"),
    ];
    if let Some(host) = &relay.spec.hostname {
        let host = host.to_ascii_lowercase();
        if !out.contains(&host) {
            out.push(host);
        }
    }
    out
}

/// Why a stored certificate must be replaced, or `None` when it can stay: it parses, names
/// exactly `names`, and has more than [`RENEW_BEFORE`] left at `now` (seconds since the epoch).
pub fn renewal_reason(cert_pem: &[u8], names: &[String], now: i64) -> Option<String> {
    let Ok((_, pem)) = parse_x509_pem(cert_pem) else {
        return Some("the stored certificate is not PEM".into());
    };
    let Ok(cert) = pem.parse_x509() else {
        return Some("the stored certificate does not parse".into());
    };
    let not_after = cert.validity().not_after.timestamp();
    let left = not_after - now;
    if left < RENEW_BEFORE.as_secs() as i64 {
        return Some(format!(
            "the certificate expires in {} days",
            left.max(0) / 86_400
        ));
    }
    let mut stored: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let mut wanted = names.to_vec();
    stored.sort();
    wanted.sort();
    (stored != wanted).then(|| "the relay's names changed".into())
}

/// A new self-signed certificate for `names`, valid from an hour before `now` (clock skew)
/// for [`VALIDITY`].
pub fn issue(names: &[String], now: i64) -> Result<Issued, IssueError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = names
        .iter()
        .map(|n| n.clone().try_into().map(SanType::DnsName))
        .collect::<Result<_, _>>()?;
    let mut dn = DistinguishedName::new();
    if let Some(first) = names.iter().find(|n| !n.starts_with('*')) {
        dn.push(DnType::CommonName, first.clone());
    }
    dn.push(DnType::OrganizationName, "smtp-relay-operator");
    params.distinguished_name = dn;
    params.not_before = time::OffsetDateTime::from_unix_timestamp(now - 3600)?;
    params.not_after = time::OffsetDateTime::from_unix_timestamp(now + VALIDITY.as_secs() as i64)?;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&key)?;
    Ok(Issued {
        cert: cert.pem().into_bytes(),
        key: key.serialize_pem().into_bytes(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::relay;

    const NOW: i64 = 1_795_000_000;

    fn issued_for(names: &[String]) -> Issued {
        issue(names, NOW).expect("issued")
    }

    #[test]
    fn names_are_the_services_and_the_hostname() {
        let mut r = relay("relay");
        r.spec.hostname = Some("Mail.Example.NET".into());
        let n = names(&r);
        assert_eq!(n[0], r.name_any());
        assert!(n.contains(&format!(
            "{}.{}.svc.cluster.local",
            r.name_any(),
            r.namespace().unwrap()
        )));
        assert!(n.contains(&"mail.example.net".to_string()));
    }

    #[test]
    fn an_issued_certificate_stays_until_a_third_of_its_life_is_left() {
        let names = names(&relay("relay"));
        let c = issued_for(&names);
        assert!(String::from_utf8_lossy(&c.cert).starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(String::from_utf8_lossy(&c.key).contains("PRIVATE KEY-----"));
        assert_eq!(renewal_reason(&c.cert, &names, NOW), None);
        let day = 86_400;
        assert_eq!(renewal_reason(&c.cert, &names, NOW + 59 * day), None);
        assert_eq!(
            renewal_reason(&c.cert, &names, NOW + 61 * day).as_deref(),
            Some("the certificate expires in 29 days")
        );
    }

    #[test]
    fn changed_names_or_garbage_are_replaced() {
        let names = names(&relay("relay"));
        let c = issued_for(&names);
        let mut other = names.clone();
        other.push("relay.example.org".into());
        assert_eq!(
            renewal_reason(&c.cert, &other, NOW).as_deref(),
            Some("the relay's names changed")
        );
        assert!(renewal_reason(b"garbage", &names, NOW).is_some());
    }
}
