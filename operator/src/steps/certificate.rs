//! The serving certificate the operator issues when a relay has SASL users and no
//! `tlsSecretRef`: the relay offers AUTH only inside TLS, so one manifest must still give a
//! relay clients can log in to, encrypted.
//!
//! The relay gets its own CA ([`Authority`], ECDSA P-256, valid for [`CA_VALIDITY`]), kept in
//! the `<name>-ca-key` Secret that only the operator reads (no pod mounts it). Clients trust
//! that CA: its certificate is published in the `<name>-ca` ConfigMap (key `ca.crt`), and it
//! outlives many serving certificates. The serving certificate (ECDSA P-256) is signed by it,
//! names the relay's Services as clients reach them (and `spec.hostname`), is valid for
//! [`VALIDITY`] and is replaced when less than [`RENEW_BEFORE`] is left, when the names change,
//! or when what is stored is not one the relay's CA signed for them. A renewed serving
//! certificate changes nothing clients trust.
//!
//! The CA itself is replaced without a day on which clients lack the new one: when less than
//! [`CA_PUBLISH_BEFORE`] is left, its successor is made and published beside it; when less
//! than [`CA_SWITCH_BEFORE`] is left, the successor signs, and the old certificate stays
//! published until it expires. A `tlsSecretRef` (e.g. from cert-manager) replaces all of this.

use std::time::Duration;

use kube::ResourceExt;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

use crate::floor::contract::Names;
use crate::floor::crd::SmtpRelay;
use crate::floor::error::IssueError;
pub use crate::floor::inputs::{Authority, CaPair};

const DAY: i64 = 86_400;
/// How long an issued serving certificate is valid.
pub const VALIDITY: Duration = Duration::from_secs(90 * DAY as u64);
/// An issued serving certificate is replaced when less than this is left (a third of its life).
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * DAY as u64);
/// How long the relay's CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(3650 * DAY as u64);
/// When less than this is left of the CA, its successor is published beside it.
pub const CA_PUBLISH_BEFORE: Duration = Duration::from_secs(730 * DAY as u64);
/// When less than this is left of the CA, its successor signs (published for a year by then).
pub const CA_SWITCH_BEFORE: Duration = Duration::from_secs(365 * DAY as u64);
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
    relay.spec.issued_certificate()
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

/// The certificates of a PEM bundle, DER.
fn pem_blocks(pem: &[u8]) -> Vec<Pem> {
    Pem::iter_from_buffer(pem).filter_map(Result::ok).collect()
}

/// The expiry (seconds since the epoch) of the first certificate of `pem` (also what
/// `kubectl smtp-relay status` shows of a relay's serving certificate).
pub fn not_after(pem: &[u8]) -> Option<i64> {
    let block = pem_blocks(pem).into_iter().next()?;
    let cert = block.parse_x509().ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Whether `cert` carries a signature by the key of `ca`.
fn signed_by(cert: &X509Certificate<'_>, ca: &X509Certificate<'_>) -> bool {
    cert.issuer() == ca.subject() && cert.verify_signature(Some(ca.public_key())).is_ok()
}

/// Why a stored serving certificate must be replaced (its Display is the Event's words).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    NotPem,
    Unparsable,
    /// Issued before the relay had its own CA: clients must now trust the CA.
    SelfSigned,
    OtherIssuer,
    Expiring {
        days: i64,
    },
    NamesChanged,
}

impl std::fmt::Display for Renewal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Renewal::NotPem => f.write_str("the stored certificate is not PEM"),
            Renewal::Unparsable => f.write_str("the stored certificate does not parse"),
            Renewal::SelfSigned => f.write_str(
                "the stored certificate is self-signed, from before the relay had its own CA",
            ),
            Renewal::OtherIssuer => {
                f.write_str("the stored certificate is not signed by the relay's CA")
            }
            Renewal::Expiring { days } => write!(f, "the certificate expires in {days} days"),
            Renewal::NamesChanged => f.write_str("the relay's names changed"),
        }
    }
}

/// Why a stored serving certificate must be replaced, or `None` when it can stay: it parses,
/// was signed by `ca_cert`, names exactly `names`, and has more than [`RENEW_BEFORE`] left at
/// `now` (seconds since the epoch).
pub fn renewal_reason(
    cert_pem: &[u8],
    names: &[String],
    ca_cert: &[u8],
    now: i64,
) -> Option<Renewal> {
    let Some(pem) = pem_blocks(cert_pem).into_iter().next() else {
        return Some(Renewal::NotPem);
    };
    let Ok(cert) = pem.parse_x509() else {
        return Some(Renewal::Unparsable);
    };
    let ca = pem_blocks(ca_cert).into_iter().next();
    let signed = match ca.as_ref().map(Pem::parse_x509) {
        Some(Ok(ca)) => signed_by(&cert, &ca),
        _ => false,
    };
    if !signed {
        return Some(if cert.issuer() == cert.subject() {
            Renewal::SelfSigned
        } else {
            Renewal::OtherIssuer
        });
    }
    let left = cert.validity().not_after.timestamp() - now;
    if left < RENEW_BEFORE.as_secs() as i64 {
        return Some(Renewal::Expiring {
            days: left.max(0) / DAY,
        });
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
    (stored != wanted).then_some(Renewal::NamesChanged)
}

/// The validity of a certificate made at `now` for `validity`, an hour early for clock skew.
fn validity(params: &mut CertificateParams, now: i64, not_after: i64) -> Result<(), IssueError> {
    params.not_before = time::OffsetDateTime::from_unix_timestamp(now - 3600)?;
    params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after)?;
    Ok(())
}

/// A new CA for the relay `relay` (`namespace/name`, for its subject), valid from `now` for
/// [`CA_VALIDITY`].
pub fn new_ca(relay: &str, now: i64) -> Result<CaPair, IssueError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    // The start date tells a successor from its predecessor in a trust store.
    let since = time::OffsetDateTime::from_unix_timestamp(now)?.date();
    dn.push(
        DnType::CommonName,
        format!("smtp-relay CA for {relay} ({since})"),
    );
    dn.push(DnType::OrganizationName, "smtp-relay-operator");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, now, now + CA_VALIDITY.as_secs() as i64)?;
    let cert = params.self_signed(&key)?;
    Ok(CaPair {
        cert: cert.pem().into_bytes(),
        key: key.serialize_pem().into_bytes(),
    })
}

/// The relay's CA at `now`: `stored` while it serves, else with its successor published,
/// switched to, or made anew; with the reason when it changed. `relay` is `namespace/name`.
pub fn authority(
    stored: Option<Authority>,
    relay: &str,
    now: i64,
) -> Result<(Authority, Option<String>), IssueError> {
    let fresh = |reason: &str| -> Result<_, IssueError> {
        let authority = Authority {
            signing: new_ca(relay, now)?,
            next: None,
            retired: Vec::new(),
        };
        Ok((authority, Some(reason.to_string())))
    };
    let Some(mut a) = stored else {
        return fresh("the relay had no CA yet");
    };
    let Some(left) = not_after(&a.signing.cert).map(|t| t - now) else {
        return fresh("the stored CA certificate does not parse");
    };
    // Retired certificates go once expired: nothing they signed is valid any more.
    a.retired = pem_texts(&a.retired)
        .into_iter()
        .filter(|p| not_after(p.as_bytes()).is_some_and(|t| t > now))
        .collect::<String>()
        .into_bytes();
    let days = left.max(0) / DAY;
    if left < CA_SWITCH_BEFORE.as_secs() as i64 {
        let next = match a.next.take() {
            Some(next) => next,
            None => new_ca(relay, now)?,
        };
        let old = std::mem::replace(&mut a.signing, next);
        if left > 0 {
            a.retired = [old.cert, a.retired].concat();
        }
        let reason = format!("the CA expires in {days} days: its successor signs from now on");
        return Ok((a, Some(reason)));
    }
    if left < CA_PUBLISH_BEFORE.as_secs() as i64 && a.next.is_none() {
        a.next = Some(new_ca(relay, now)?);
        let reason = format!("the CA expires in {days} days: its successor is published beside it");
        return Ok((a, Some(reason)));
    }
    Ok((a, None))
}

/// The certificate blocks of a PEM bundle, as text, each ending in a line break.
fn pem_texts(pem: &[u8]) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    String::from_utf8_lossy(pem)
        .split_inclusive(END)
        .filter(|b| b.contains("-----BEGIN CERTIFICATE-----"))
        .map(|b| format!("{}\n", b.trim_start()))
        .collect()
}

/// What clients trust: the signing CA, its successor once published, and the earlier CAs
/// until they expire (PEM, concatenated). Never a key.
pub fn trust_bundle(a: &Authority) -> Vec<u8> {
    let mut out = a.signing.cert.clone();
    if let Some(next) = &a.next {
        out.extend_from_slice(&next.cert);
    }
    out.extend_from_slice(&a.retired);
    out
}

/// A new serving certificate for `names`, signed by `ca`, valid from an hour before `now`
/// (clock skew) for [`VALIDITY`] (never past the CA). Its `cert` is the chain clients expect:
/// the certificate, then the CA's.
pub fn issue(names: &[String], ca: &CaPair, now: i64) -> Result<Issued, IssueError> {
    let ca_key = KeyPair::from_pem(&String::from_utf8_lossy(&ca.key))?;
    let ca_cert = String::from_utf8_lossy(&ca.cert).into_owned();
    let issuer = Issuer::from_ca_cert_pem(&ca_cert, &ca_key)?;
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
    let until = now + VALIDITY.as_secs() as i64;
    validity(
        &mut params,
        now,
        not_after(&ca.cert).map_or(until, |ca| ca.min(until)),
    )?;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer)?;
    let mut chain = cert.pem().into_bytes();
    chain.extend_from_slice(&ca.cert);
    Ok(Issued {
        cert: chain,
        key: key.serialize_pem().into_bytes(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::relay;
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

    const NOW: i64 = 1_795_000_000;

    fn ca() -> CaPair {
        new_ca("mail/relay", NOW).expect("a CA")
    }

    fn issued_for(names: &[String], ca: &CaPair) -> Issued {
        issue(names, ca, NOW).expect("issued")
    }

    fn ders(pem: &[u8]) -> Vec<CertificateDer<'static>> {
        pem_blocks(pem)
            .into_iter()
            .map(|p| CertificateDer::from(p.contents))
            .collect()
    }

    /// A TLS client's verification of the chain `chain` for `name` at `at`, trusting only
    /// the certificates of `trusted` (rustls's own path building and checks).
    fn verify(chain: &[u8], trusted: &[u8], name: &str, at: i64) -> Result<(), webpki::Error> {
        let trusted = ders(trusted);
        let anchors: Vec<_> = trusted
            .iter()
            .map(|c| {
                webpki::anchor_from_trusted_cert(c)
                    .expect("an anchor")
                    .to_owned()
            })
            .collect();
        let chain = ders(chain);
        let leaf = webpki::EndEntityCert::try_from(&chain[0])?;
        leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &chain[1..],
            UnixTime::since_unix_epoch(Duration::from_secs(at as u64)),
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )?;
        let name = ServerName::try_from(name).expect("a name");
        leaf.verify_is_valid_for_subject_name(&name)
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

    /// Issue 26: the serving certificate verifies, as a TLS client verifies it, against the
    /// relay's CA alone, for every name; its chain is the certificate then the CA; a
    /// renewed one verifies against the same CA, so clients keep trusting.
    #[test]
    fn the_serving_certificate_verifies_against_the_relays_ca() {
        let names = names(&relay("relay"));
        let ca = ca();
        let c = issued_for(&names, &ca);
        let chain = ders(&c.cert);
        assert_eq!(chain.len(), 2, "the certificate and the CA's");
        assert_eq!(chain[1].as_ref(), ders(&ca.cert)[0].as_ref());
        for name in [
            "relay",
            "relay.mail.svc.cluster.local",
            "relay-1.relay-headless.mail.svc",
        ] {
            verify(&c.cert, &ca.cert, name, NOW).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        }
        assert!(verify(&c.cert, &ca.cert, "relay.example.org", NOW).is_err());
        // Another relay's CA, or the leaf itself as the anchor, is not enough.
        assert!(verify(
            &c.cert,
            &new_ca("mail/other", NOW).unwrap().cert,
            "relay",
            NOW
        )
        .is_err());
        // Renewed: a new key, the same CA, still verified by clients that trust only it.
        let later = NOW + 61 * DAY;
        let renewed = issue(&names, &ca, later).expect("renewed");
        assert!(renewed.key != c.key);
        verify(&renewed.cert, &ca.cert, "relay", later).expect("the renewed one verifies");
        assert!(
            verify(&c.cert, &ca.cert, "relay", NOW + 91 * DAY).is_err(),
            "expired"
        );
    }

    #[test]
    fn an_issued_certificate_stays_until_a_third_of_its_life_is_left() {
        let names = names(&relay("relay"));
        let ca = ca();
        let c = issued_for(&names, &ca);
        assert!(String::from_utf8_lossy(&c.cert).starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(String::from_utf8_lossy(&c.key).contains("PRIVATE KEY-----"));
        assert_eq!(renewal_reason(&c.cert, &names, &ca.cert, NOW), None);
        assert_eq!(
            renewal_reason(&c.cert, &names, &ca.cert, NOW + 59 * DAY),
            None
        );
        assert_eq!(
            renewal_reason(&c.cert, &names, &ca.cert, NOW + 61 * DAY)
                .map(|r| r.to_string())
                .as_deref(),
            Some("the certificate expires in 29 days")
        );
    }

    #[test]
    fn changed_names_another_ca_self_signed_or_garbage_are_replaced() {
        let names = names(&relay("relay"));
        let ca = ca();
        let c = issued_for(&names, &ca);
        let mut other = names.clone();
        other.push("relay.example.org".into());
        assert_eq!(
            renewal_reason(&c.cert, &other, &ca.cert, NOW)
                .map(|r| r.to_string())
                .as_deref(),
            Some("the relay's names changed")
        );
        let successor = new_ca("mail/relay", NOW).unwrap();
        assert_eq!(
            renewal_reason(&c.cert, &names, &successor.cert, NOW)
                .map(|r| r.to_string())
                .as_deref(),
            Some("the stored certificate is not signed by the relay's CA")
        );
        // What the operator issued before the relay had a CA: its self-signed certificate.
        let mut old = CertificateParams::new(names.clone()).unwrap();
        old.distinguished_name.push(DnType::CommonName, "relay");
        let key = KeyPair::generate().unwrap();
        let self_signed = old.self_signed(&key).unwrap().pem().into_bytes();
        assert_eq!(
            renewal_reason(&self_signed, &names, &ca.cert, NOW)
                .map(|r| r.to_string())
                .as_deref(),
            Some("the stored certificate is self-signed, from before the relay had its own CA")
        );
        assert!(renewal_reason(b"garbage", &names, &ca.cert, NOW).is_some());
    }

    /// The CA stays for years across serving-certificate renewals; its successor is published
    /// beside it a year before it signs, and the old one stays published until it expires.
    /// No key is ever in what clients are given.
    #[test]
    fn the_ca_is_kept_and_replaced_with_an_overlap() {
        let (a, why) = authority(None, "mail/relay", NOW).unwrap();
        assert_eq!(why.as_deref(), Some("the relay had no CA yet"));
        let bundle = String::from_utf8(trust_bundle(&a)).unwrap();
        assert!(!bundle.contains("PRIVATE KEY") && bundle.contains("BEGIN CERTIFICATE"));
        // Renewals of the serving certificate keep it.
        for day in [1, 90, 365, 7 * 365] {
            let (same, why) = authority(Some(a.clone()), "mail/relay", NOW + day * DAY).unwrap();
            assert!(same == a && why.is_none(), "day {day}");
        }
        // Two years before it expires: the successor is published, the old one still signs.
        let t = NOW + (3650 - 729) * DAY;
        let (b, why) = authority(Some(a.clone()), "mail/relay", t).unwrap();
        assert!(why
            .unwrap()
            .contains("its successor is published beside it"));
        assert!(b.signing == a.signing);
        let next = b.next.clone().expect("a successor");
        assert_eq!(ders(&trust_bundle(&b)).len(), 2);
        assert!(authority(Some(b.clone()), "mail/relay", t + DAY)
            .unwrap()
            .1
            .is_none());
        // A year before: the successor signs; the old one is published until it expires.
        let t = NOW + (3650 - 364) * DAY;
        let (c, why) = authority(Some(b), "mail/relay", t).unwrap();
        assert!(why.unwrap().contains("its successor signs from now on"));
        assert!(c.signing == next && c.next.is_none());
        assert_eq!(ders(&c.retired), ders(&a.signing.cert));
        let leaf = issue(&names(&relay("relay")), &c.signing, t).unwrap();
        verify(&leaf.cert, &trust_bundle(&c), "relay", t).expect("verifies against the bundle");
        verify(&leaf.cert, &next.cert, "relay", t).expect("a client that took the successor");
        // Once expired, the old one goes.
        let t = NOW + 3651 * DAY;
        let (d, _) = authority(Some(c), "mail/relay", t).unwrap();
        assert!(d.retired.is_empty() && d.signing == next);
        let (fresh, why) = authority(
            Some(Authority {
                signing: CaPair {
                    cert: b"garbage".to_vec(),
                    key: Vec::new(),
                },
                next: None,
                retired: Vec::new(),
            }),
            "mail/relay",
            NOW,
        )
        .unwrap();
        assert!(why.unwrap().contains("does not parse") && fresh.signing.cert != b"garbage");
    }

    #[test]
    fn a_bundle_splits_into_its_certificates() {
        let (a, b) = (ca(), ca());
        let bundle = [a.cert.clone(), b"\n".to_vec(), b.cert.clone()].concat();
        let texts = pem_texts(&bundle);
        assert_eq!(texts.len(), 2);
        assert_eq!(texts[0].as_bytes(), a.cert);
        assert_eq!(texts[1].as_bytes(), b.cert);
    }
}
