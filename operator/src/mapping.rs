//! Which relays a Secret or ConfigMap event concerns: the relay that owns it, and every relay in
//! its namespace that references it. This is what makes a rotated password or a new SASL user
//! reconcile at once.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;

use crate::crd::{SmtpRelay, SmtpRelaySpec};

/// Names of the Secrets a spec references.
pub fn referenced_secrets(spec: &SmtpRelaySpec) -> Vec<&str> {
    let mut out = Vec::new();
    if let Some(r) = &spec.relayhost.credentials_secret_ref {
        out.push(r.name.as_str());
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
        if relay.namespace().as_deref() == Some(ns) && refs(&relay.spec).contains(&name) {
            let r = ObjectRef::from_obj(relay);
            if !out.contains(&r) {
                out.push(r);
            }
        }
    }
    out
}
