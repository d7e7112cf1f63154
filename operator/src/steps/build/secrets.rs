//! The Secrets the relay owns: copies of the referenced user Secrets (and CA ConfigMap), so a
//! later missing or malformed source never breaks running or restarting pods.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::ResourceExt;

use crate::floor::contract::{
    child_meta, Names, CA_KEY, CA_KEY_KEY, HASH_KEY_KEY, ISSUED_ANNOTATION, NEXT_CA_CRT_KEY,
    NEXT_CA_KEY_KEY, PASSWORD_KEY, RETIRED_CA_CRT_KEY, TLS_CRT_KEY, TLS_KEY_KEY, USERNAME_KEY,
};
use crate::floor::crd::SmtpRelay;
use crate::floor::error::Result;
use crate::floor::inputs::{HashKey, Resolved};
use crate::steps::certificate;

fn secret(
    relay: &SmtpRelay,
    name: String,
    component: &str,
    type_: &str,
    data: BTreeMap<String, Vec<u8>>,
) -> Result<Secret> {
    Ok(Secret {
        metadata: child_meta(relay, name, component)?,
        type_: Some(type_.into()),
        data: Some(data.into_iter().map(|(k, v)| (k, ByteString(v))).collect()),
        ..Secret::default()
    })
}

/// `<name>-relayhost`: `username`, `password`, the OAuth2 keys (`oauth2-*`) and `ca.crt`, as
/// configured.
pub fn relayhost_secret(relay: &SmtpRelay, resolved: &Resolved) -> Result<Option<Secret>> {
    let mut data = BTreeMap::new();
    if let Some(login) = &resolved.relayhost_login {
        data.insert(
            USERNAME_KEY.to_string(),
            login.username.clone().into_bytes(),
        );
        data.insert(PASSWORD_KEY.to_string(), login.password.clone());
    }
    if let Some(keys) = &resolved.relayhost_oauth2 {
        for (file, value) in keys.files() {
            data.insert(file.to_string(), value.clone());
        }
    }
    if let Some(ca) = &resolved.relayhost_ca {
        data.insert(CA_KEY.to_string(), ca.clone());
    }
    if data.is_empty() {
        return Ok(None);
    }
    let name = Names::relayhost_secret(&relay.name_any());
    secret(relay, name, "relayhost-credentials", "Opaque", data).map(Some)
}

/// `<name>-sasl-users`: one key per user, the value being the password.
pub fn sasl_users_secret(relay: &SmtpRelay, resolved: &Resolved) -> Result<Option<Secret>> {
    let Some(users) = &resolved.sasl_users else {
        return Ok(None);
    };
    let name = Names::sasl_users_secret(&relay.name_any());
    secret(relay, name, "sasl-users", "Opaque", users.clone()).map(Some)
}

/// `<name>-tls`: the inbound certificate and key (type `kubernetes.io/tls`): a copy of the
/// `tlsSecretRef`'s, or the one the operator issued (annotated so; `tls.crt` is the chain,
/// the certificate then its CA, and `ca.crt` what clients trust, as in `<name>-ca`).
pub fn tls_secret(relay: &SmtpRelay, resolved: &Resolved) -> Result<Option<Secret>> {
    let Some(tls) = &resolved.inbound_tls else {
        return Ok(None);
    };
    let mut data = BTreeMap::from([
        (TLS_CRT_KEY.to_string(), tls.cert.clone()),
        (TLS_KEY_KEY.to_string(), tls.key.clone()),
    ]);
    if let Some(authority) = &resolved.issued_ca {
        data.insert(CA_KEY.to_string(), certificate::trust_bundle(authority));
    }
    let name = Names::tls_secret(&relay.name_any());
    let mut secret = secret(relay, name, "tls", "kubernetes.io/tls", data)?;
    if certificate::wanted(relay) {
        secret.metadata.annotations = Some(BTreeMap::from([(
            ISSUED_ANNOTATION.to_string(),
            "true".to_string(),
        )]));
    }
    Ok(Some(secret))
}

/// `<name>-ca-key`: the relay's CA and its key, with a certificate the operator issues
/// ([`certificate`]). No pod mounts it: only the operator reads it, to sign.
pub fn ca_key_secret(relay: &SmtpRelay, resolved: &Resolved) -> Result<Option<Secret>> {
    let Some(a) = &resolved.issued_ca else {
        return Ok(None);
    };
    let mut data = BTreeMap::from([
        (CA_KEY.to_string(), a.signing.cert.clone()),
        (CA_KEY_KEY.to_string(), a.signing.key.clone()),
    ]);
    if let Some(next) = &a.next {
        data.insert(NEXT_CA_CRT_KEY.to_string(), next.cert.clone());
        data.insert(NEXT_CA_KEY_KEY.to_string(), next.key.clone());
    }
    if !a.retired.is_empty() {
        data.insert(RETIRED_CA_CRT_KEY.to_string(), a.retired.clone());
    }
    let name = Names::ca_key_secret(&relay.name_any());
    secret(relay, name, "ca-key", "Opaque", data).map(Some)
}

/// `<name>-hash-key`: the key of the config hash. No pod mounts it; it is kept only so the hash
/// stays the same across reconciles and operator restarts.
pub fn hash_key_secret(relay: &SmtpRelay, key: &HashKey) -> Result<Secret> {
    let data = BTreeMap::from([(HASH_KEY_KEY.to_string(), key.as_bytes().to_vec())]);
    let name = Names::hash_key_secret(&relay.name_any());
    secret(relay, name, "config-hash-key", "Opaque", data)
}
