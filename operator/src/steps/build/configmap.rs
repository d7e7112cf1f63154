//! The ConfigMap `<name>-config` holding `relay.yaml`, and the drain guard.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use smtp_relay::config_file::RelayConfigFile;

use crate::floor::contract::{child_meta, labels, Names, CA_KEY, CONFIG_KEY, GUARDS_ANNOTATION};
use crate::floor::crd::SmtpRelay;
use crate::floor::error::{Error, Result};
use crate::floor::inputs::Resolved;
use crate::steps::certificate;

pub fn config_map(relay: &SmtpRelay, file: &RelayConfigFile) -> Result<ConfigMap> {
    let yaml = serde_yaml::to_string(file).map_err(|e| Error::Serialization(e.to_string()))?;
    Ok(ConfigMap {
        metadata: child_meta(relay, Names::config_map(&relay.name_any()), "config")?,
        data: Some(BTreeMap::from([(CONFIG_KEY.to_string(), yaml)])),
        ..ConfigMap::default()
    })
}

/// With a certificate the operator issues, the ConfigMap `<name>-ca`: the relay's CA
/// certificates clients trust (key `ca.crt`: the signing CA, its successor once published,
/// earlier ones until they expire), never a key.
pub fn ca_config_map(relay: &SmtpRelay, resolved: &Resolved) -> Result<Option<ConfigMap>> {
    let Some(authority) = &resolved.issued_ca else {
        return Ok(None);
    };
    let bundle = String::from_utf8_lossy(&certificate::trust_bundle(authority)).into_owned();
    Ok(Some(ConfigMap {
        metadata: child_meta(relay, Names::ca_config_map(&relay.name_any()), "ca")?,
        data: Some(BTreeMap::from([(CA_KEY.to_string(), bundle)])),
        ..ConfigMap::default()
    }))
}

/// With `whenDeleted: Delete`, the ConfigMap `<name>-drain-guard`: owned by nothing, it is the
/// second owner of every child but the Services. The garbage collector deletes an object only
/// once none of its owners is left standing, so whatever propagation deletes the SmtpRelay
/// (foreground, as Argo CD does, takes the children first), the StatefulSet, its pods and
/// what they mount stay until the operator has drained the queues and deletes the guard
/// itself. The Services are left to the SmtpRelay alone: a deleted relay takes no new mail.
pub fn drain_guard(relay: &SmtpRelay) -> Result<Option<ConfigMap>> {
    if !relay.spec.storage.retention.operator_deletes_volumes() {
        return Ok(None);
    }
    let name = relay.name_any();
    let uid = relay
        .meta()
        .uid
        .clone()
        .ok_or(Error::MissingObjectKey(".metadata.uid"))?;
    let note = format!(
        "Keeps the StatefulSet, pods, ConfigMap and Secrets of SmtpRelay {name} from the garbage collector while its queues drain on deletion (spec.storage.retention.whenDeleted: Delete). The operator deletes it once they are drained. Left behind only when the SmtpRelay was deleted with propagation orphan: deleting it then deletes the relay it kept."
    );
    Ok(Some(ConfigMap {
        metadata: ObjectMeta {
            name: Some(Names::drain_guard(&name)),
            namespace: Some(relay.namespace_checked()?),
            labels: Some(labels(relay, "drain-guard")),
            annotations: Some(BTreeMap::from([(GUARDS_ANNOTATION.to_string(), uid)])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([("README".to_string(), note)])),
        ..ConfigMap::default()
    }))
}

/// The owner reference a child carries to its relay's drain guard (never the controller).
pub fn guard_owner_ref(guard: &ConfigMap) -> Result<OwnerReference> {
    Ok(OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: guard
            .metadata
            .name
            .clone()
            .ok_or(Error::MissingObjectKey(".metadata.name"))?,
        uid: guard
            .metadata
            .uid
            .clone()
            .ok_or(Error::MissingObjectKey(".metadata.uid"))?,
        controller: None,
        block_owner_deletion: None,
    })
}

/// Whether `guard` is the drain guard of `relay` (not a ConfigMap of someone else's, nor one
/// left by an earlier SmtpRelay of the same name).
pub fn guards(guard: &ObjectMeta, relay: &SmtpRelay) -> bool {
    let uid = relay.meta().uid.as_ref();
    uid.is_some()
        && guard
            .annotations
            .as_ref()
            .and_then(|a| a.get(GUARDS_ANNOTATION))
            == uid
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::relay;
    use crate::floor::crd::RetentionPolicy;

    #[test]
    fn only_a_relay_whose_volumes_go_with_it_has_a_drain_guard_owned_by_nothing() {
        let mut r = relay("r1");
        assert!(drain_guard(&r).expect("builds").is_none(), "Retain");
        r.spec.storage.retention.when_deleted = RetentionPolicy::Delete;
        let mut g = drain_guard(&r).expect("builds").expect("a guard");
        assert_eq!(g.metadata.name.as_deref(), Some("r1-drain-guard"));
        assert!(g.metadata.owner_references.is_none(), "owned by nothing");
        assert!(guards(&g.metadata, &r));
        let mut other = r.clone();
        other.metadata.uid = Some("another-incarnation".into());
        assert!(!guards(&g.metadata, &other));
        assert!(guard_owner_ref(&g).is_err(), "no uid before it is created");
        g.metadata.uid = Some("guard-uid".into());
        let o = guard_owner_ref(&g).expect("a reference");
        assert_eq!(
            (o.kind.as_str(), o.uid.as_str()),
            ("ConfigMap", "guard-uid")
        );
        assert_eq!(o.controller, None, "the relay stays the controller");
    }
}
