//! Hashes: the configuration hash that rolls the pods, and the per-object hash that lets the
//! controller skip writes when nothing changed.

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use serde::Serialize;
use sha2::{Digest, Sha256};

fn feed(h: &mut Sha256, section: &str, entries: impl IntoIterator<Item = (String, Vec<u8>)>) {
    h.update(section.as_bytes());
    h.update([0]);
    for (k, v) in entries {
        h.update((k.len() as u64).to_be_bytes());
        h.update(k.as_bytes());
        h.update((v.len() as u64).to_be_bytes());
        h.update(&v);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of the ConfigMap data and the relayhost and TLS Secret data. SASL users are left out on
/// purpose: the relay hot-reloads them, so a user change must not restart the pods.
pub fn config_hash(cm: &ConfigMap, relayhost: Option<&Secret>, tls: Option<&Secret>) -> String {
    let mut h = Sha256::new();
    let cm_data = cm.data.clone().unwrap_or_default();
    feed(
        &mut h,
        "configmap",
        cm_data.into_iter().map(|(k, v)| (k, v.into_bytes())),
    );
    for (section, s) in [("relayhost", relayhost), ("tls", tls)] {
        let data = s.and_then(|s| s.data.clone()).unwrap_or_default();
        feed(&mut h, section, data.into_iter().map(|(k, v)| (k, v.0)));
    }
    hex(&h.finalize())
}

/// sha256 of an object's JSON form (used on non-secret objects only).
pub fn object_hash<T: Serialize>(obj: &T) -> String {
    let bytes = serde_json::to_vec(obj).unwrap_or_default();
    hex(&Sha256::digest(&bytes))
}
