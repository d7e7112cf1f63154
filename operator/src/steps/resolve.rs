//! Reading the Secrets and ConfigMaps an `SmtpRelay` references into a typed, validated bundle.
//! This is the only part of "build" that talks to the API; everything after it is pure.
//!
//! Values are checked here (fail closed): a malformed value is reported with the object and key
//! it came from and how to fix it, and the value itself never appears in any message.

use std::collections::BTreeMap;
use std::future::Future;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client, ResourceExt};

use crate::floor::contract::{
    Names, ReferableLabel, CA_KEY, CA_KEY_KEY, CLIENT_ID, CLIENT_SECRET, HASH_KEY_KEY,
    ISSUED_ANNOTATION, NEXT_CA_CRT_KEY, NEXT_CA_KEY_KEY, REFRESH_TOKEN, RETIRED_CA_CRT_KEY,
    SERVICE_ACCOUNT, TLS_CRT_KEY, TLS_KEY_KEY,
};
use crate::floor::crd::SmtpRelay;
use crate::floor::error::ResolveError;
use crate::floor::inputs::{
    Authority, CaPair, HashKey, OAuth2Keys, RelayhostLogin, Resolved, TlsPair,
};
use crate::steps::certificate;

/// Where referenced objects are read from: the API, or a map in tests.
pub trait RefSource: Sync {
    fn secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<Secret>, kube::Error>> + Send;
    fn config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<ConfigMap>, kube::Error>> + Send;
}

impl RefSource for Client {
    async fn secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>, kube::Error> {
        Api::<Secret>::namespaced(self.clone(), namespace)
            .get_opt(name)
            .await
    }
    async fn config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ConfigMap>, kube::Error> {
        Api::<ConfigMap>::namespaced(self.clone(), namespace)
            .get_opt(name)
            .await
    }
}

/// Reads and validates every object `relay` references; with `referable`, only Secrets that
/// carry that label (any other is refused before its data is read).
pub async fn resolve(
    relay: &SmtpRelay,
    src: &impl RefSource,
    referable: Option<&ReferableLabel>,
) -> Result<Resolved, ResolveError> {
    let ns = relay.metadata.namespace.clone().unwrap_or_default();
    let spec = &relay.spec;
    let mut out = Resolved::default();
    let secret_data = |name: &str, purpose: &'static str, field: &'static str| {
        let reading = Reading {
            ns: &ns,
            purpose,
            field,
            referable,
        };
        secret_data(src, reading, name.to_string())
    };

    if let Some(r) = &spec.relayhost.credentials_secret_ref {
        let purpose = "relayhost credentials";
        let data = secret_data(&r.name, purpose, "spec.relayhost.credentialsSecretRef").await?;
        let loc = Loc::secret(&ns, &r.name);
        let user = take(&data, &loc, &r.username_key, purpose)?;
        let pass = take(&data, &loc, &r.password_key, purpose)?;
        let username = check_login(&loc, &r.username_key, user)?;
        let password = check_password(&loc, &r.password_key, pass)?;
        out.relayhost_login = Some(RelayhostLogin { username, password });
    }

    if let Some(o) = &spec.relayhost.oauth2 {
        let purpose = "relayhost OAuth2 login";
        let data = secret_data(
            &o.secret_ref.name,
            purpose,
            "spec.relayhost.oauth2.secretRef",
        )
        .await?;
        let get = |key: &str| data.get(key).cloned().map(trim_line_end);
        let keys = OAuth2Keys {
            client_id: get(CLIENT_ID.secret_key),
            client_secret: get(CLIENT_SECRET.secret_key),
            refresh_token: get(REFRESH_TOKEN.secret_key),
            service_account: data.get(SERVICE_ACCOUNT.secret_key).cloned(),
        };
        if keys == OAuth2Keys::default() {
            return Err(ResolveError::KeyMissing {
                kind: "Secret",
                namespace: ns.clone(),
                name: o.secret_ref.name.clone(),
                key: CLIENT_ID.secret_key.into(),
                purpose,
            });
        }
        out.relayhost_oauth2 = Some(keys);
    }

    if let Some(tls) = &spec.relayhost.tls {
        let purpose = "relayhost CA bundle";
        if let Some(r) = &tls.ca_secret_key_ref {
            let data = secret_data(&r.name, purpose, "spec.relayhost.tls.caSecretKeyRef").await?;
            let loc = Loc::secret(&ns, &r.name);
            let ca = take(&data, &loc, &r.key, purpose)?;
            out.relayhost_ca = Some(check_pem_cert(&loc, &r.key, ca)?);
        } else if let Some(r) = &tls.ca_config_map_key_ref {
            let data = config_map_data(src, &ns, &r.name, purpose).await?;
            let loc = Loc::config_map(&ns, &r.name);
            let ca = take(&data, &loc, &r.key, purpose)?;
            out.relayhost_ca = Some(check_pem_cert(&loc, &r.key, ca)?);
        }
    }

    if let Some(r) = &spec.sasl_users_secret_ref {
        let purpose = "SASL users";
        let data = secret_data(&r.name, purpose, "spec.saslUsersSecretRef").await?;
        let loc = Loc::secret(&ns, &r.name);
        let mut users = BTreeMap::new();
        for (user, pass) in data {
            check_sasl_user(&loc, &user)?;
            let pass = check_password(&loc, &user, pass)?;
            users.insert(user, pass);
        }
        out.sasl_users = Some(users);
    }

    if let Some(r) = &spec.tls_secret_ref {
        let purpose = "inbound TLS certificate";
        let data = secret_data(&r.name, purpose, "spec.tlsSecretRef").await?;
        let loc = Loc::secret(&ns, &r.name);
        let cert = take(&data, &loc, TLS_CRT_KEY, purpose)?;
        let key = take(&data, &loc, TLS_KEY_KEY, purpose)?;
        let cert = check_pem_cert(&loc, TLS_CRT_KEY, cert)?;
        let key = check_pem_key(&loc, TLS_KEY_KEY, key)?;
        out.inbound_tls = Some(TlsPair { cert, key });
    }

    Ok(out)
}

/// The key of the relay's config hash: read back from the owned `<name>-hash-key` Secret, so the
/// hash stays the same across reconciles and operator restarts, or generated when that Secret is
/// absent, is not controlled by this relay, or holds no well-formed key (the reconcile then
/// applies the Secret before anything that carries the hash).
pub async fn config_hash_key(
    relay: &SmtpRelay,
    src: &impl RefSource,
) -> Result<HashKey, ResolveError> {
    let stored = owned_secret(relay, src, &Names::hash_key_secret(&relay.name_any()))
        .await?
        .and_then(|s| s.data)
        .and_then(|d| d.get(HASH_KEY_KEY).and_then(|v| HashKey::from_slice(&v.0)));
    match stored {
        Some(key) => Ok(key),
        None => HashKey::generate().map_err(ResolveError::Random),
    }
}

/// The relay's own Secret `name`, if it exists and the relay controls it (a Secret of someone
/// else's under that name is not read as ours).
async fn owned_secret(
    relay: &SmtpRelay,
    src: &impl RefSource,
    name: &str,
) -> Result<Option<Secret>, ResolveError> {
    let ns = relay.namespace().unwrap_or_default();
    let live = src
        .secret(&ns, name)
        .await
        .map_err(|source| ResolveError::Api {
            kind: "Secret",
            namespace: ns.clone(),
            name: name.to_string(),
            source: Box::new(source),
        })?;
    Ok(live.filter(|s| {
        s.owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && Some(&o.uid) == relay.metadata.uid.as_ref())
    }))
}

/// The serving certificate the operator issues ([`certificate`]), the CA that signed it, and
/// the note of the Event that says what changed, if anything.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedTls {
    pub pair: TlsPair,
    pub authority: Authority,
    pub note: Option<String>,
}

/// The CA kept in the owned `<name>-ca-key` Secret, while the relay controls it.
async fn stored_authority(
    relay: &SmtpRelay,
    src: &impl RefSource,
) -> Result<Option<Authority>, ResolveError> {
    let name = Names::ca_key_secret(&relay.name_any());
    let Some(data) = owned_secret(relay, src, &name).await?.and_then(|s| s.data) else {
        return Ok(None);
    };
    let get = |key: &str| data.get(key).map(|v| v.0.clone());
    let pair = |cert: &str, key: &str| {
        Some(CaPair {
            cert: get(cert)?,
            key: get(key)?,
        })
    };
    Ok(pair(CA_KEY, CA_KEY_KEY).map(|signing| Authority {
        signing,
        next: pair(NEXT_CA_CRT_KEY, NEXT_CA_KEY_KEY),
        retired: get(RETIRED_CA_CRT_KEY).unwrap_or_default(),
    }))
}

/// The certificate the operator issues for a relay with SASL users and no `tlsSecretRef`
/// ([`certificate`]): the one stored in the owned `<name>-tls` Secret while it is the
/// operator's, was signed by the relay's CA, names the relay and is far from expiry; otherwise
/// a new one. The CA is the one kept in `<name>-ca-key`, made once and replaced years later
/// ([`certificate::authority`]). `None` when the relay needs no issued certificate. `now` is
/// in seconds since the epoch.
pub async fn issued_certificate(
    relay: &SmtpRelay,
    src: &impl RefSource,
    now: i64,
) -> Result<Option<IssuedTls>, ResolveError> {
    if !certificate::wanted(relay) {
        return Ok(None);
    }
    let relay_name = relay.name_any();
    let ns = relay.namespace().unwrap_or_default();
    let stored_ca = stored_authority(relay, src).await?;
    let (authority, ca_changed) =
        certificate::authority(stored_ca, &format!("{ns}/{relay_name}"), now)?;
    let secret = Names::tls_secret(&relay_name);
    let config_map = Names::ca_config_map(&relay_name);
    let names = certificate::names(relay);
    let stored = owned_secret(relay, src, &secret)
        .await?
        .filter(|s| s.annotations().get(ISSUED_ANNOTATION) == Some(&"true".into()))
        .and_then(|s| s.data)
        .and_then(|d| Some((d.get(TLS_CRT_KEY)?.0.clone(), d.get(TLS_KEY_KEY)?.0.clone())));
    let trust = format!(
        "clients that verify trust ca.crt of ConfigMap {config_map}, or set spec.tlsSecretRef"
    );
    let reason = match stored {
        Some((cert, key)) => {
            match certificate::renewal_reason(&cert, &names, &authority.signing.cert, now) {
                None => {
                    let note =
                        ca_changed.map(|why| format!("the relay's CA changed: {why}; {trust}"));
                    let pair = TlsPair { cert, key };
                    return Ok(Some(IssuedTls {
                        pair,
                        authority,
                        note,
                    }));
                }
                Some(reason) => Some(reason),
            }
        }
        None => None,
    };
    let issued = certificate::issue(&names, &authority.signing, now)?;
    let mut note = format!(
        "issued a serving certificate for {}, valid {} days, signed by the relay's CA ({}); {trust}",
        names.join(", "),
        certificate::VALIDITY.as_secs() / 86_400,
        reason
            .as_ref()
            .map_or_else(|| "none was issued yet".to_string(), ToString::to_string)
    );
    if reason == Some(certificate::Renewal::SelfSigned) {
        note.push_str(&format!(
            ". Clients that trusted tls.crt of Secret {secret} must now trust ca.crt of ConfigMap {config_map}: it stays when the serving certificate is renewed"
        ));
    }
    let pair = TlsPair {
        cert: issued.cert,
        key: issued.key,
    };
    Ok(Some(IssuedTls {
        pair,
        authority,
        note: Some(note),
    }))
}

/// Where a value came from, for messages.
struct Loc<'a> {
    kind: &'static str,
    namespace: &'a str,
    name: &'a str,
}

impl<'a> Loc<'a> {
    fn secret(namespace: &'a str, name: &'a str) -> Self {
        Loc {
            kind: "Secret",
            namespace,
            name,
        }
    }
    fn config_map(namespace: &'a str, name: &'a str) -> Self {
        Loc {
            kind: "ConfigMap",
            namespace,
            name,
        }
    }
    fn invalid(&self, key: &str, problem: impl Into<String>) -> ResolveError {
        ResolveError::InvalidValue {
            kind: self.kind,
            namespace: self.namespace.into(),
            name: self.name.into(),
            key: key.into(),
            problem: problem.into(),
        }
    }
}

/// What a referenced Secret is read for: its namespace, its purpose and the field that names
/// it (for messages), and the label it must carry, if any.
struct Reading<'a> {
    ns: &'a str,
    purpose: &'static str,
    field: &'static str,
    referable: Option<&'a ReferableLabel>,
}

async fn secret_data(
    src: &impl RefSource,
    reading: Reading<'_>,
    name: String,
) -> Result<BTreeMap<String, Vec<u8>>, ResolveError> {
    let Reading {
        ns,
        purpose,
        field,
        referable,
    } = reading;
    match src.secret(ns, &name).await {
        Ok(Some(s)) => match referable {
            Some(label) if !label.marks(s.labels()) => Err(ResolveError::SecretNotReferable {
                namespace: ns.into(),
                name,
                purpose,
                field,
                label: label.to_string(),
            }),
            _ => Ok(s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect()),
        },
        Ok(None) => Err(ResolveError::SecretNotFound {
            namespace: ns.into(),
            name,
            purpose,
        }),
        Err(source) => Err(ResolveError::Api {
            kind: "Secret",
            namespace: ns.into(),
            name,
            source: Box::new(source),
        }),
    }
}

async fn config_map_data(
    src: &impl RefSource,
    ns: &str,
    name: &str,
    purpose: &'static str,
) -> Result<BTreeMap<String, Vec<u8>>, ResolveError> {
    match src.config_map(ns, name).await {
        Ok(Some(cm)) => {
            let mut out: BTreeMap<String, Vec<u8>> = cm
                .binary_data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            for (k, v) in cm.data.unwrap_or_default() {
                out.insert(k, v.into_bytes());
            }
            Ok(out)
        }
        Ok(None) => Err(ResolveError::ConfigMapNotFound {
            namespace: ns.into(),
            name: name.into(),
            purpose,
        }),
        Err(source) => Err(ResolveError::Api {
            kind: "ConfigMap",
            namespace: ns.into(),
            name: name.into(),
            source: Box::new(source),
        }),
    }
}

fn take(
    data: &BTreeMap<String, Vec<u8>>,
    loc: &Loc<'_>,
    key: &str,
    purpose: &'static str,
) -> Result<Vec<u8>, ResolveError> {
    data.get(key)
        .cloned()
        .ok_or_else(|| ResolveError::KeyMissing {
            kind: loc.kind,
            namespace: loc.namespace.into(),
            name: loc.name.into(),
            key: key.into(),
            purpose,
        })
}

/// Strips the trailing line break that `--from-file` and editors leave behind.
pub(crate) fn trim_line_end(mut v: Vec<u8>) -> Vec<u8> {
    while matches!(v.last(), Some(b'\n') | Some(b'\r')) {
        v.pop();
    }
    v
}

fn check_login(loc: &Loc<'_>, key: &str, v: Vec<u8>) -> Result<String, ResolveError> {
    let v = trim_line_end(v);
    let s = String::from_utf8(v).map_err(|_| loc.invalid(key, "the login is not UTF-8 text"))?;
    if s.is_empty() {
        return Err(loc.invalid(key, "the login is empty"));
    }
    if s.len() > 256 {
        return Err(loc.invalid(key, "the login is longer than 256 bytes"));
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(loc.invalid(key, "the login contains whitespace or control characters"));
    }
    Ok(s)
}

fn check_password(loc: &Loc<'_>, key: &str, v: Vec<u8>) -> Result<Vec<u8>, ResolveError> {
    let v = trim_line_end(v);
    if v.is_empty() {
        return Err(loc.invalid(key, "the password is empty"));
    }
    if v.len() > 1024 {
        return Err(loc.invalid(key, "the password is longer than 1024 bytes"));
    }
    if v.iter().any(|b| matches!(b, b'\n' | b'\r' | 0)) {
        return Err(loc.invalid(
            key,
            "the password contains a line break or NUL byte; store it on one line",
        ));
    }
    Ok(v)
}

/// A SASL user name: it becomes a file name in the mounted directory and a Cyrus SASL login.
pub fn is_valid_sasl_user(user: &str) -> bool {
    let mut chars = user.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    first_ok
        && user.len() <= 64
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn check_sasl_user(loc: &Loc<'_>, user: &str) -> Result<(), ResolveError> {
    if is_valid_sasl_user(user) {
        Ok(())
    } else {
        Err(loc.invalid(
            user,
            "invalid SASL user name: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        ))
    }
}

fn check_pem_cert(loc: &Loc<'_>, key: &str, v: Vec<u8>) -> Result<Vec<u8>, ResolveError> {
    match std::str::from_utf8(&v) {
        Ok(s)
            if s.contains("-----BEGIN CERTIFICATE-----")
                && s.contains("-----END CERTIFICATE-----") =>
        {
            Ok(v)
        }
        _ => Err(loc.invalid(
            key,
            "not a PEM certificate (expected -----BEGIN CERTIFICATE----- blocks)",
        )),
    }
}

fn check_pem_key(loc: &Loc<'_>, key: &str, v: Vec<u8>) -> Result<Vec<u8>, ResolveError> {
    match std::str::from_utf8(&v) {
        Ok(s) if s.contains("-----BEGIN ") && s.contains("PRIVATE KEY-----") => Ok(v),
        _ => Err(loc.invalid(
            key,
            "not a PEM private key (expected a -----BEGIN ... PRIVATE KEY----- block)",
        )),
    }
}

#[cfg(test)]
pub(crate) mod fake {
    use super::*;
    use k8s_openapi::ByteString;
    use std::collections::HashMap;

    /// Referenced objects held in memory.
    #[derive(Default)]
    pub struct FakeRefs {
        pub secrets: HashMap<String, BTreeMap<String, Vec<u8>>>,
        /// Secret name → uid of the relay controlling it.
        pub secret_owners: HashMap<String, String>,
        pub secret_annotations: HashMap<String, BTreeMap<String, String>>,
        pub secret_labels: HashMap<String, BTreeMap<String, String>>,
        pub config_maps: HashMap<String, BTreeMap<String, String>>,
    }

    impl FakeRefs {
        pub fn secret(mut self, name: &str, data: &[(&str, &str)]) -> Self {
            self.secrets.insert(
                name.into(),
                data.iter()
                    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                    .collect(),
            );
            self
        }
    }

    impl RefSource for FakeRefs {
        async fn secret(&self, _ns: &str, name: &str) -> Result<Option<Secret>, kube::Error> {
            Ok(self.secrets.get(name).map(|d| Secret {
                data: Some(
                    d.iter()
                        .map(|(k, v)| (k.clone(), ByteString(v.clone())))
                        .collect(),
                ),
                metadata: kube::api::ObjectMeta {
                    owner_references: self.secret_owners.get(name).map(|uid| {
                        vec![
                            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                                controller: Some(true),
                                uid: uid.clone(),
                                ..Default::default()
                            },
                        ]
                    }),
                    annotations: self.secret_annotations.get(name).cloned(),
                    labels: self.secret_labels.get(name).cloned(),
                    ..Default::default()
                },
                ..Secret::default()
            }))
        }
        async fn config_map(
            &self,
            _ns: &str,
            name: &str,
        ) -> Result<Option<ConfigMap>, kube::Error> {
            Ok(self.config_maps.get(name).map(|d| ConfigMap {
                data: Some(d.clone()),
                ..ConfigMap::default()
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeRefs;
    use super::*;
    use crate::fixtures::relay;
    use crate::floor::crd::{CredentialsSecretRef, KeyRef, RelayhostTlsSpec, SecretRef};

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";

    fn full_relay() -> SmtpRelay {
        let mut r = relay("r1");
        r.spec.relayhost.credentials_secret_ref = Some(CredentialsSecretRef {
            name: "login".into(),
            username_key: "user".into(),
            password_key: "pass".into(),
        });
        r.spec.relayhost.tls = Some(RelayhostTlsSpec {
            level: Default::default(),
            ca_secret_key_ref: None,
            ca_config_map_key_ref: Some(KeyRef {
                name: "ca".into(),
                key: "ca.crt".into(),
            }),
            allow_cleartext_credentials: false,
        });
        r.spec.sasl_users_secret_ref = Some(SecretRef {
            name: "users".into(),
        });
        r.spec.tls_secret_ref = Some(SecretRef {
            name: "cert".into(),
        });
        r
    }

    fn refs() -> FakeRefs {
        let mut f = FakeRefs::default()
            .secret(
                "login",
                &[("user", "relay-login\n"), ("pass", "p@ss word}\n")],
            )
            .secret("users", &[("app1", "pw1"), ("app.two", "pw2")])
            .secret("cert", &[("tls.crt", CERT), ("tls.key", KEY)]);
        f.config_maps.insert(
            "ca".into(),
            BTreeMap::from([("ca.crt".to_string(), CERT.to_string())]),
        );
        f
    }

    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn resolves_everything_and_trims_line_ends() {
        let res = block(resolve(&full_relay(), &refs(), None)).expect("resolves");
        let login = res.relayhost_login.as_ref().expect("login");
        assert_eq!(login.username, "relay-login");
        assert_eq!(login.password, b"p@ss word}");
        assert_eq!(res.relayhost_ca.as_deref(), Some(CERT.as_bytes()));
        assert_eq!(res.sasl_users.as_ref().map(|u| u.len()), Some(2));
        assert!(res.inbound_tls.is_some());
        let dbg = format!("{res:?}");
        assert!(
            !dbg.contains("p@ss") && !dbg.contains("pw1"),
            "Debug leaks secrets: {dbg}"
        );
    }

    #[test]
    fn nothing_referenced_nothing_read() {
        let res = block(resolve(&relay("r1"), &FakeRefs::default(), None)).expect("resolves");
        assert_eq!(res, Resolved::default());
    }

    fn resolve_err(f: FakeRefs) -> ResolveError {
        block(resolve(&full_relay(), &f, None)).expect_err("should fail")
    }

    /// Issue 26: with the operator's `--secret-reference-label`, every Secret a relay
    /// references must carry the label, or nothing of it is read: the refusal names the Secret,
    /// the field that references it and the label to add. A ConfigMap needs none.
    #[test]
    fn only_labelled_secrets_are_read_when_the_operator_requires_a_label() {
        let label: ReferableLabel = "smtprelay.dev/referable=true".parse().expect("key=value");
        let labelled = |names: &[&str]| {
            let mut f = refs();
            for name in names {
                f.secret_labels.insert(
                    name.to_string(),
                    BTreeMap::from([("smtprelay.dev/referable".to_string(), "true".to_string())]),
                );
            }
            f
        };
        let all = ["login", "users", "cert"];
        block(resolve(&full_relay(), &labelled(&all), Some(&label))).expect("all labelled");
        for (missing, field) in [
            ("login", "spec.relayhost.credentialsSecretRef"),
            ("users", "spec.saslUsersSecretRef"),
            ("cert", "spec.tlsSecretRef"),
        ] {
            let others: Vec<&str> = all.iter().copied().filter(|n| *n != missing).collect();
            let e =
                block(resolve(&full_relay(), &labelled(&others), Some(&label))).expect_err(missing);
            assert_eq!(e.reason(), "SecretNotReferable");
            let message = e.to_string();
            assert!(
                message.starts_with(&format!("Secret mail/{missing} ("))
                    && message.contains(&format!("referenced by {field}, does not carry the label smtprelay.dev/referable=true"))
                    && message.ends_with(&format!(
                        "kubectl label secret -n mail {missing} smtprelay.dev/referable=true"
                    )),
                "{message}"
            );
        }
        // Another value is not the label; without the option, any Secret is read.
        let mut wrong = labelled(&all);
        wrong.secret_labels.insert(
            "login".into(),
            BTreeMap::from([("smtprelay.dev/referable".to_string(), "false".to_string())]),
        );
        assert_eq!(
            block(resolve(&full_relay(), &wrong, Some(&label)))
                .expect_err("wrong value")
                .reason(),
            "SecretNotReferable"
        );
        block(resolve(&full_relay(), &refs(), None)).expect("no label required");
        for bad in ["", "referable", "=true", "a=b=c", "a b=c", "a=b,c=d"] {
            assert!(bad.parse::<ReferableLabel>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn missing_objects_and_keys_name_what_to_fix() {
        let mut f = refs();
        f.secrets.remove("users");
        let e = resolve_err(f);
        assert_eq!(e.reason(), "SecretNotFound");
        assert!(e.to_string().contains("mail/users") && e.to_string().contains("SASL users"));

        let mut f = refs();
        f.secrets.get_mut("login").map(|d| d.remove("pass"));
        let e = resolve_err(f);
        assert_eq!(e.reason(), "SecretKeyMissing");
        assert!(e.to_string().contains("\"pass\""));

        let mut f = refs();
        f.config_maps.clear();
        assert_eq!(resolve_err(f).reason(), "ConfigMapNotFound");
        assert!(e.is_user_error());
    }

    #[test]
    fn malformed_values_are_rejected_without_echoing_them() {
        let f = refs().secret("users", &[("app1", "line1\nline2")]);
        let e = resolve_err(f);
        assert_eq!(e.reason(), "InvalidSecretValue");
        assert!(!e.to_string().contains("line1"));

        let f = refs().secret("users", &[(".hidden", "pw")]);
        assert!(resolve_err(f).to_string().contains("SASL user name"));

        let f = refs().secret("cert", &[("tls.crt", "garbage"), ("tls.key", KEY)]);
        assert!(resolve_err(f).to_string().contains("PEM certificate"));

        let f = refs().secret("cert", &[("tls.crt", CERT), ("tls.key", "secret-garbage")]);
        let e = resolve_err(f);
        assert!(
            e.to_string().contains("PEM private key") && !e.to_string().contains("secret-garbage")
        );

        let mut f = refs();
        f.config_maps.insert(
            "ca".into(),
            BTreeMap::from([("ca.crt".to_string(), "nope".to_string())]),
        );
        assert!(resolve_err(f).to_string().contains("ConfigMap mail/ca"));

        let f = refs().secret("login", &[("user", "two words"), ("pass", "x")]);
        assert!(resolve_err(f).to_string().contains("whitespace"));

        let f = refs().secret("login", &[("user", "u"), ("pass", "\n")]);
        assert!(resolve_err(f).to_string().contains("empty"));
    }

    #[test]
    fn hash_key_is_read_back_from_the_owned_secret() {
        let r = relay("r1");
        let stored = [3u8; crate::floor::inputs::HASH_KEY_LEN];
        let mut f = FakeRefs::default();
        f.secrets.insert(
            "r1-hash-key".into(),
            BTreeMap::from([(HASH_KEY_KEY.to_string(), stored.to_vec())]),
        );
        f.secret_owners.insert("r1-hash-key".into(), "uid-1".into());
        let key = block(config_hash_key(&r, &f)).expect("key");
        assert_eq!(key, HashKey::from_bytes(stored));
        assert_eq!(
            format!("{key:?}"),
            "HashKey(..)",
            "Debug never prints the key"
        );

        // Not controlled by this relay (planted or left over): not trusted, a new key instead.
        f.secret_owners
            .insert("r1-hash-key".into(), "someone-else".into());
        let key = block(config_hash_key(&r, &f)).expect("key");
        assert_ne!(key, HashKey::from_bytes(stored));
    }

    #[test]
    fn hash_key_is_generated_when_absent_or_malformed() {
        let r = relay("r1");
        let a = block(config_hash_key(&r, &FakeRefs::default())).expect("key");
        let b = block(config_hash_key(&r, &FakeRefs::default())).expect("key");
        assert_ne!(a, b, "random, not derived from the relay");
        let mut f = FakeRefs::default().secret("r1-hash-key", &[(HASH_KEY_KEY, "short")]);
        f.secret_owners.insert("r1-hash-key".into(), "uid-1".into());
        let c = block(config_hash_key(&r, &f)).expect("key");
        assert_eq!(c.as_bytes().len(), crate::floor::inputs::HASH_KEY_LEN);
        assert_ne!(c.as_bytes(), b"short");
    }

    /// What a reconcile applied for `issued`: `<name>-tls` and `<name>-ca-key`, owned by the
    /// relay, as the builders make them.
    fn stored(issued: &IssuedTls) -> FakeRefs {
        let r = relay("r1");
        let resolved = Resolved {
            inbound_tls: Some(issued.pair.clone()),
            issued_ca: Some(issued.authority.clone()),
            ..Resolved::default()
        };
        let mut f = FakeRefs::default();
        let mut r = r;
        r.spec.sasl_users_secret_ref = Some(crate::floor::crd::SecretRef { name: "u".into() });
        for s in [
            crate::steps::build::secrets::tls_secret(&r, &resolved),
            crate::steps::build::secrets::ca_key_secret(&r, &resolved),
        ] {
            let s = s.expect("built").expect("wanted");
            let name = s.name_any();
            f.secrets.insert(
                name.clone(),
                s.data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect(),
            );
            f.secret_owners.insert(name.clone(), "uid-1".into());
            f.secret_annotations
                .insert(name, s.metadata.annotations.unwrap_or_default());
        }
        f
    }

    #[test]
    fn the_serving_certificate_is_issued_once_and_read_back() {
        let now = 1_795_000_000;
        let mut r = relay("r1");
        assert!(block(issued_certificate(&r, &FakeRefs::default(), now))
            .unwrap()
            .is_none());
        r.spec.sasl_users_secret_ref = Some(crate::floor::crd::SecretRef { name: "u".into() });
        let first = block(issued_certificate(&r, &FakeRefs::default(), now))
            .unwrap()
            .expect("issued: SASL users and no tlsSecretRef");
        let note = first.note.clone().expect("a new certificate is announced");
        assert!(note.contains("r1.mail.svc.cluster.local"), "{note}");
        assert!(note.contains("(none was issued yet)"), "{note}");
        assert!(note.contains("trust ca.crt of ConfigMap r1-ca"), "{note}");

        // Stored in the owned, annotated Secrets: read back, not issued again.
        let f = stored(&first);
        let again = block(issued_certificate(&r, &f, now)).unwrap().unwrap();
        assert!(again.pair == first.pair && again.authority == first.authority);
        assert!(again.note.is_none());
        // Renewed well before expiry, by the same CA.
        let later = now + 61 * 86_400;
        let renewed = block(issued_certificate(&r, &f, later)).unwrap().unwrap();
        assert!(renewed.pair != first.pair && renewed.authority == first.authority);
        assert!(renewed.note.unwrap().contains("expires in 29 days"));
        // A copy of a user's certificate (no annotation) or a Secret of someone else's is
        // never taken for an issued one; nor a CA of someone else's for the relay's.
        let mut other = stored(&first);
        other.secret_annotations.clear();
        other
            .secret_owners
            .insert("r1-ca-key".into(), "someone-else".into());
        let fresh = block(issued_certificate(&r, &other, now)).unwrap().unwrap();
        assert!(fresh.pair != first.pair && fresh.authority != first.authority);
        // With a tlsSecretRef the user's certificate is used instead.
        r.spec.tls_secret_ref = Some(crate::floor::crd::SecretRef { name: "c".into() });
        assert!(block(issued_certificate(&r, &f, now)).unwrap().is_none());
    }

    /// Issue 26: a relay whose `<name>-tls` holds the self-signed certificate the operator
    /// issued before relays had a CA gets its CA and a certificate it signed at the next
    /// reconcile, said once; the reconcile after keeps both.
    #[test]
    fn a_self_signed_certificate_of_old_is_replaced_once() {
        let now = 1_795_000_000;
        let mut r = relay("r1");
        r.spec.sasl_users_secret_ref = Some(crate::floor::crd::SecretRef { name: "u".into() });
        let names = certificate::names(&r);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "r1");
        let old = params.self_signed(&key).unwrap();
        let mut f = FakeRefs::default().secret(
            "r1-tls",
            &[("tls.crt", &old.pem()), ("tls.key", &key.serialize_pem())],
        );
        f.secret_owners.insert("r1-tls".into(), "uid-1".into());
        f.secret_annotations.insert(
            "r1-tls".into(),
            BTreeMap::from([(ISSUED_ANNOTATION.into(), "true".into())]),
        );
        let migrated = block(issued_certificate(&r, &f, now)).unwrap().unwrap();
        let note = migrated.note.clone().expect("said");
        assert!(
            note.contains("self-signed")
                && note.contains("Clients that trusted tls.crt of Secret r1-tls must now trust ca.crt of ConfigMap r1-ca"),
            "{note}"
        );
        assert!(migrated.pair.cert != old.pem().into_bytes());
        let f = stored(&migrated);
        let next = block(issued_certificate(&r, &f, now + 60))
            .unwrap()
            .unwrap();
        assert!(
            next == IssuedTls {
                note: None,
                ..migrated
            },
            "once, no loop"
        );
    }

    #[test]
    fn sasl_user_names() {
        assert!(
            is_valid_sasl_user("app1") && is_valid_sasl_user("a.b-c_d") && is_valid_sasl_user("9")
        );
        assert!(
            !is_valid_sasl_user("") && !is_valid_sasl_user(".a") && !is_valid_sasl_user("..data")
        );
        assert!(
            !is_valid_sasl_user("-a")
                && !is_valid_sasl_user("a b")
                && !is_valid_sasl_user(&"a".repeat(65))
        );
    }
}
