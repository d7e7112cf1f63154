//! Hashes: the configuration hash that rolls the pods, and the per-object hash that lets the
//! controller skip writes when nothing changed.

use crate::floor::inputs::HashKey;
use hmac::{Hmac, KeyInit, Mac};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use serde::Serialize;
use sha2::{Digest, Sha256};

fn feed(h: &mut Hmac<Sha256>, section: &str, entries: impl IntoIterator<Item = (String, Vec<u8>)>) {
    h.update(section.as_bytes());
    h.update(&[0]);
    for (k, v) in entries {
        h.update(&(k.len() as u64).to_be_bytes());
        h.update(k.as_bytes());
        h.update(&(v.len() as u64).to_be_bytes());
        h.update(&v);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// HMAC-SHA256, keyed with the relay's [`HashKey`], of the ConfigMap data and the relayhost and
/// TLS Secret data. SASL users and an OAuth2 refresh token are left out on purpose: the relay
/// hot-reloads them, so their change must not restart the pods.
///
/// Keyed because the result is published (pod-template annotation, `status.configHash`) to anyone
/// who may read pods, StatefulSets or SmtpRelays, and it covers the relayhost password: a plain
/// digest would be a verifier against which a weak password could be guessed offline.
pub fn config_hash(
    key: &HashKey,
    cm: &ConfigMap,
    relayhost: Option<&Secret>,
    tls: Option<&Secret>,
) -> String {
    // HMAC takes keys of any length: new_from_slice cannot fail.
    #[allow(clippy::expect_used)]
    let mut h = <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_bytes())
        .expect("HMAC accepts keys of any length");
    let cm_data = cm.data.clone().unwrap_or_default();
    feed(
        &mut h,
        "configmap",
        cm_data.into_iter().map(|(k, v)| (k, v.into_bytes())),
    );
    for (section, s) in [("relayhost", relayhost), ("tls", tls)] {
        let data = s.and_then(|s| s.data.clone()).unwrap_or_default();
        // A refresh token is left out: a provider that rotates it changes it at every refresh
        // (the operator writes the newest back), and the relay follows it without a restart.
        let data = data
            .into_iter()
            .filter(|(k, _)| k != crate::floor::contract::REFRESH_TOKEN.file);
        feed(&mut h, section, data.map(|(k, v)| (k, v.0)));
    }
    hex(&h.finalize().into_bytes())
}

/// sha256 of an object's JSON form (used on non-secret objects only).
pub fn object_hash<T: Serialize>(obj: &T) -> String {
    let bytes = serde_json::to_vec(obj).unwrap_or_default();
    hex(&Sha256::digest(&bytes))
}
