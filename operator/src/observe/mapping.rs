//! Which relays a Secret or ConfigMap event concerns: the relay that owns it, every relay in its
//! namespace that references it, and every relay one of whose children would take its name.
//! This is what makes a rotated password or a new SASL user reconcile at once, and a relay
//! blocked by someone else's object under a child's name converge as soon as that object goes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;

use crate::floor::contract::Names;
use crate::floor::crd::{SmtpRelay, SmtpRelaySpec};

/// Names of the Secrets a spec references.
pub fn referenced_secrets(spec: &SmtpRelaySpec) -> Vec<&str> {
    let mut out = Vec::new();
    if let Some(r) = &spec.relayhost.credentials_secret_ref {
        out.push(r.name.as_str());
    }
    if let Some(o) = &spec.relayhost.oauth2 {
        out.push(o.secret_ref.name.as_str());
    }
    if let Some(r) = spec
        .relayhost
        .tls
        .as_ref()
        .and_then(|t| t.ca_secret_key_ref.as_ref())
    {
        out.push(r.name.as_str());
    }
    if let Some(r) = &spec.sasl_users_secret_ref {
        out.push(r.name.as_str());
    }
    if let Some(r) = &spec.tls_secret_ref {
        out.push(r.name.as_str());
    }
    out
}

/// Names of the ConfigMaps a spec references.
pub fn referenced_config_maps(spec: &SmtpRelaySpec) -> Vec<&str> {
    spec.relayhost
        .tls
        .as_ref()
        .and_then(|t| t.ca_config_map_key_ref.as_ref())
        .map(|r| vec![r.name.as_str()])
        .unwrap_or_default()
}

/// The SmtpRelay that controls an object, from its owner references.
pub fn controlling_relay(meta: &ObjectMeta) -> Option<ObjectRef<SmtpRelay>> {
    let ns = meta.namespace.as_deref()?;
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| {
            o.controller == Some(true)
                && o.kind == "SmtpRelay"
                && o.api_version.starts_with("smtprelay.dev/")
        })
        .map(|o| ObjectRef::new(&o.name).within(ns))
}

/// Relays to reconcile when an object with `meta` changes. `refs` lists the names a spec
/// references (use [`referenced_secrets`] or [`referenced_config_maps`]).
pub fn relays_for<'a, I>(
    meta: &ObjectMeta,
    relays: I,
    refs: fn(&SmtpRelaySpec) -> Vec<&str>,
) -> Vec<ObjectRef<SmtpRelay>>
where
    I: IntoIterator<Item = &'a SmtpRelay>,
{
    let mut out: Vec<ObjectRef<SmtpRelay>> = controlling_relay(meta).into_iter().collect();
    let (Some(ns), Some(name)) = (meta.namespace.as_deref(), meta.name.as_deref()) else {
        return out;
    };
    for relay in relays {
        let concerned = refs(&relay.spec).contains(&name)
            || Names::all(&relay.name_any()).iter().any(|n| n == name);
        if relay.namespace().as_deref() == Some(ns) && concerned {
            let r = ObjectRef::from_obj(relay);
            if !out.contains(&r) {
                out.push(r);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::relay;
    use crate::floor::crd::{CredentialsSecretRef, KeyRef, RelayhostTlsSpec, SecretRef};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use kube::Resource;

    fn meta(ns: &str, name: &str) -> ObjectMeta {
        ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            ..ObjectMeta::default()
        }
    }

    fn relays() -> Vec<SmtpRelay> {
        let mut a = relay("a");
        a.spec.relayhost.credentials_secret_ref = Some(CredentialsSecretRef {
            name: "login".into(),
            username_key: "username".into(),
            password_key: "password".into(),
        });
        a.spec.sasl_users_secret_ref = Some(SecretRef {
            name: "users".into(),
        });
        let mut b = relay("b");
        b.spec.sasl_users_secret_ref = Some(SecretRef {
            name: "users".into(),
        });
        b.spec.tls_secret_ref = Some(SecretRef {
            name: "cert".into(),
        });
        b.spec.relayhost.tls = Some(RelayhostTlsSpec {
            level: Default::default(),
            ca_secret_key_ref: None,
            ca_config_map_key_ref: Some(KeyRef {
                name: "ca".into(),
                key: "ca.crt".into(),
            }),
            allow_cleartext_credentials: false,
        });
        let mut other_ns = relay("c");
        other_ns.metadata.namespace = Some("elsewhere".into());
        other_ns.spec.sasl_users_secret_ref = Some(SecretRef {
            name: "users".into(),
        });
        vec![a, b, other_ns]
    }

    fn names(v: Vec<ObjectRef<SmtpRelay>>) -> Vec<String> {
        v.into_iter().map(|r| r.name).collect()
    }

    #[test]
    fn secret_maps_to_referencing_relays_in_its_namespace() {
        let rs = relays();
        assert_eq!(
            names(relays_for(&meta("mail", "users"), &rs, referenced_secrets)),
            ["a", "b"]
        );
        assert_eq!(
            names(relays_for(&meta("mail", "login"), &rs, referenced_secrets)),
            ["a"]
        );
        assert_eq!(
            names(relays_for(&meta("mail", "cert"), &rs, referenced_secrets)),
            ["b"]
        );
        assert!(relays_for(&meta("mail", "unrelated"), &rs, referenced_secrets).is_empty());
        assert_eq!(
            names(relays_for(
                &meta("elsewhere", "users"),
                &rs,
                referenced_secrets
            )),
            ["c"]
        );
    }

    #[test]
    fn config_map_maps_to_ca_references() {
        let rs = relays();
        assert_eq!(
            names(relays_for(&meta("mail", "ca"), &rs, referenced_config_maps)),
            ["b"]
        );
        assert!(relays_for(&meta("mail", "users"), &rs, referenced_config_maps).is_empty());
    }

    #[test]
    fn owned_objects_map_to_their_controller() {
        let rs = relays();
        // A name no relay would give a child: only the owner reference maps it.
        let mut m = meta("mail", "copied-users");
        m.owner_references = Some(vec![rs[0].controller_owner_ref(&()).expect("owner")]);
        assert_eq!(names(relays_for(&m, &rs, referenced_secrets)), ["a"]);
        // A non-controller reference or a foreign kind is ignored.
        m.owner_references = Some(vec![OwnerReference {
            api_version: "apps/v1".into(),
            kind: "StatefulSet".into(),
            name: "a".into(),
            uid: "u".into(),
            controller: Some(true),
            ..OwnerReference::default()
        }]);
        assert!(relays_for(&m, &rs, referenced_secrets).is_empty());
    }

    #[test]
    fn an_object_named_like_a_child_maps_to_that_relay() {
        // Someone else's object under a child's name blocks the relay (NameConflict): its
        // removal must reconcile the relay at once.
        let rs = relays();
        for name in ["a-config", "a-tls", "a-hash-key", "a-headless"] {
            assert_eq!(
                names(relays_for(&meta("mail", name), &rs, referenced_config_maps)),
                ["a"],
                "{name}"
            );
        }
        assert!(relays_for(&meta("elsewhere", "a-config"), &rs, referenced_secrets).is_empty());
    }

    #[test]
    fn owned_and_referenced_is_listed_once() {
        let rs = relays();
        let mut m = meta("mail", "users");
        m.owner_references = Some(vec![rs[0].controller_owner_ref(&()).expect("owner")]);
        assert_eq!(names(relays_for(&m, &rs, referenced_secrets)), ["a", "b"]);
    }
}
