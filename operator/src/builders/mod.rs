//! Pure functions from an `SmtpRelay` (and its resolved references) to every object it owns.
//! Nothing here talks to the API, so the whole desired state is computable in tests.

pub mod configmap;
pub mod hash;
pub mod pdb;
pub mod relay_config;
pub mod secrets;
pub mod service;
pub mod statefulset;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::crd::SmtpRelay;
use crate::resolve::Resolved;
use crate::{Error, Result};

/// Image used when neither `spec.image` nor `--relay-image` says otherwise.
pub const DEFAULT_RELAY_IMAGE: &str = concat!(
    "ghcr.io/smtp-relay-operator/smtp-relay:",
    env!("CARGO_PKG_VERSION")
);

/// Pod template annotation that rolls the pods when the configuration changes.
pub const CONFIG_HASH_ANNOTATION: &str = "smtprelay.dev/config-hash";

pub const CONFIG_DIR: &str = "/etc/smtp-relay/config";
pub const CONFIG_KEY: &str = "relay.yaml";
pub const RELAYHOST_DIR: &str = "/etc/smtp-relay/relayhost";
pub const SASL_USERS_DIR: &str = "/etc/smtp-relay/sasl-users";
pub const TLS_DIR: &str = "/etc/smtp-relay/tls";
pub const RUN_DIR: &str = "/run/smtp-relay";
pub const DATA_DIR: &str = "/data";
pub const SPOOL_DIR: &str = "/var/spool/postfix";
pub const SMTP_PORT: i32 = 25;
pub const METRICS_PORT: i32 = 9154;

/// Keys of the owned relayhost Secret.
pub const USERNAME_KEY: &str = "username";
pub const PASSWORD_KEY: &str = "password";
pub const CA_KEY: &str = "ca.crt";

/// Operator-wide settings that shape the built objects.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub relay_image: String,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            relay_image: DEFAULT_RELAY_IMAGE.into(),
        }
    }
}

/// Names of the owned objects.
pub struct Names;

impl Names {
    pub fn config_map(relay: &str) -> String {
        format!("{relay}-config")
    }
    pub fn relayhost_secret(relay: &str) -> String {
        format!("{relay}-relayhost")
    }
    pub fn sasl_users_secret(relay: &str) -> String {
        format!("{relay}-sasl-users")
    }
    pub fn tls_secret(relay: &str) -> String {
        format!("{relay}-tls")
    }
    pub fn headless_service(relay: &str) -> String {
        format!("{relay}-headless")
    }
}

/// Labels selecting one relay's pods (immutable: never add to these).
pub fn selector_labels(relay: &SmtpRelay) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "smtp-relay".to_string(),
        ),
        ("app.kubernetes.io/instance".to_string(), relay.name_any()),
    ])
}

/// Labels of every owned object.
pub fn labels(relay: &SmtpRelay, component: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(relay);
    l.insert(
        "app.kubernetes.io/managed-by".into(),
        "smtp-relay-operator".into(),
    );
    l.insert("app.kubernetes.io/component".into(), component.into());
    l
}

/// The label selector matching objects managed by this operator.
pub const MANAGED_BY_SELECTOR: &str = "app.kubernetes.io/managed-by=smtp-relay-operator";

fn owner_ref(relay: &SmtpRelay) -> Result<OwnerReference> {
    relay
        .controller_owner_ref(&())
        .ok_or(Error::MissingObjectKey(".metadata.uid"))
}

/// Metadata of an owned object: name, namespace, labels, controller owner reference.
pub fn child_meta(relay: &SmtpRelay, name: String, component: &str) -> Result<ObjectMeta> {
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(
            relay
                .namespace()
                .ok_or(Error::MissingObjectKey(".metadata.namespace"))?,
        ),
        labels: Some(labels(relay, component)),
        owner_references: Some(vec![owner_ref(relay)?]),
        ..ObjectMeta::default()
    })
}

/// Every object one relay should own, computed from spec and resolved references.
#[derive(Debug, Clone)]
pub struct Desired {
    pub config_map: ConfigMap,
    pub relayhost_secret: Option<Secret>,
    pub sasl_users_secret: Option<Secret>,
    pub tls_secret: Option<Secret>,
    pub service: Service,
    pub headless_service: Service,
    pub stateful_set: StatefulSet,
    pub pdb: Option<PodDisruptionBudget>,
    pub config_hash: String,
}

/// Builds the desired state. Fails only on a spec the controller rejects.
pub fn build(relay: &SmtpRelay, resolved: &Resolved, opts: &BuildOptions) -> Result<Desired> {
    crate::validate::validate_spec(&relay.spec).map_err(Error::InvalidSpec)?;
    let file = relay_config::relay_config_file(&relay.spec, resolved);
    let config_map = configmap::config_map(relay, &file)?;
    let relayhost_secret = secrets::relayhost_secret(relay, resolved)?;
    let sasl_users_secret = secrets::sasl_users_secret(relay, resolved)?;
    let tls_secret = secrets::tls_secret(relay, resolved)?;
    let config_hash =
        hash::config_hash(&config_map, relayhost_secret.as_ref(), tls_secret.as_ref());
    let stateful_set = statefulset::stateful_set(
        relay,
        &statefulset::Mounts {
            relayhost: relayhost_secret.is_some(),
            sasl_users: sasl_users_secret.is_some(),
            tls: tls_secret.is_some(),
        },
        &config_hash,
        opts,
    )?;
    Ok(Desired {
        config_map,
        relayhost_secret,
        sasl_users_secret,
        tls_secret,
        service: service::service(relay)?,
        headless_service: service::headless_service(relay)?,
        stateful_set,
        pdb: pdb::pdb(relay)?,
        config_hash,
    })
}

#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use crate::crd::{RelayhostSpec, SmtpRelaySpec};

    /// A minimal relay as the API server would return it (defaults applied).
    pub fn relay(name: &str) -> SmtpRelay {
        let spec: SmtpRelaySpec = serde_json::from_value(serde_json::json!({
            "domain": "example.net",
            "networks": ["10.0.0.0/24"],
            "relayhost": {"host": "mail.example.net"}
        }))
        .expect("valid spec");
        let _: &RelayhostSpec = &spec.relayhost;
        let mut r = SmtpRelay::new(name, spec);
        r.metadata.namespace = Some("mail".into());
        r.metadata.uid = Some("uid-1".into());
        r.metadata.generation = Some(1);
        r
    }
}
