//! The relay pod's contract: what the operator and the relay image agree on. Child names,
//! labels and annotations, ports, and which key of which owned Secret or ConfigMap becomes
//! which file under which mount. The Secret builders, the StatefulSet's mounts, the relay
//! configuration's paths and the judge all read it from here.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::floor::crd::SmtpRelay;
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
/// The pod's own annotations (downward API), where the operator asks a replica to drain.
pub const POD_INFO_DIR: &str = "/etc/smtp-relay/pod";
pub const RUN_DIR: &str = "/run/smtp-relay";
pub const DATA_DIR: &str = "/data";
pub const SPOOL_DIR: &str = "/var/spool/postfix";
pub const SMTP_PORT: i32 = 25;
/// The pods' port for a load balancer that speaks the PROXY protocol
/// (`spec.service.proxyProtocol`).
pub const PROXY_PROTOCOL_PORT: i32 = 2525;
pub const METRICS_PORT: i32 = 9154;

/// Keys of the owned relayhost Secret.
pub const USERNAME_KEY: &str = "username";
pub const PASSWORD_KEY: &str = "password";
pub const CA_KEY: &str = "ca.crt";
/// Key of the owned `<name>-hash-key` Secret holding the relay's [`hash::HashKey`].
pub const HASH_KEY_KEY: &str = "config-hash-key";

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
    /// Holds the key of the config hash; never mounted into a pod.
    pub fn hash_key_secret(relay: &str) -> String {
        format!("{relay}-hash-key")
    }
    pub fn headless_service(relay: &str) -> String {
        format!("{relay}-headless")
    }
    /// Where the pods share a rotated OAuth2 refresh token ([`oauth2`]).
    pub fn oauth2_token_secret(relay: &str) -> String {
        format!("{relay}-oauth2-token")
    }
    /// The pods' ServiceAccount, its Role and RoleBinding, with a delegated OAuth2 login.
    pub fn oauth2_identity(relay: &str) -> String {
        format!("{relay}-oauth2")
    }
    /// With `whenDeleted: Delete`, the ConfigMap that keeps the relay's children from the
    /// garbage collector while its queues drain on deletion ([`configmap::drain_guard`]).
    pub fn drain_guard(relay: &str) -> String {
        format!("{relay}-drain-guard")
    }
    /// Every name a child of the relay may take (the StatefulSet, the Service and the PDB are
    /// named like the relay itself).
    pub fn all(relay: &str) -> [String; 10] {
        [
            Self::drain_guard(relay),
            relay.to_string(),
            Self::config_map(relay),
            Self::relayhost_secret(relay),
            Self::sasl_users_secret(relay),
            Self::tls_secret(relay),
            Self::hash_key_secret(relay),
            Self::headless_service(relay),
            Self::oauth2_token_secret(relay),
            Self::oauth2_identity(relay),
        ]
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
        namespace: Some(relay.namespace_checked()?),
        labels: Some(labels(relay, component)),
        owner_references: Some(vec![owner_ref(relay)?]),
        ..ObjectMeta::default()
    })
}

/// A key an OAuth2 Secret may hold, and the file it becomes in the relay pods.
pub struct OAuth2Key {
    pub secret_key: &'static str,
    pub file: &'static str,
}

pub const CLIENT_ID: OAuth2Key = OAuth2Key {
    secret_key: "clientId",
    file: "oauth2-client-id",
};

pub const CLIENT_SECRET: OAuth2Key = OAuth2Key {
    secret_key: "clientSecret",
    file: "oauth2-client-secret",
};

pub const REFRESH_TOKEN: OAuth2Key = OAuth2Key {
    secret_key: "refreshToken",
    file: "oauth2-refresh-token",
};

pub const SERVICE_ACCOUNT: OAuth2Key = OAuth2Key {
    secret_key: "serviceAccount.json",
    file: "oauth2-service-account.json",
};

/// The one field manager of every write.
pub const MANAGER: &str = "smtp-relay-operator";
/// Hash of the desired object last applied; an equal hash means there is nothing to write.
pub const APPLIED_HASH_ANNOTATION: &str = "smtprelay.dev/applied-hash";

/// On the SmtpRelay, `"true"`: lower the replicas now, without waiting for the drain. Mail
/// still queued stays on a `Retain` volume, and is destroyed with a `Delete` one.
pub const ABANDON_ANNOTATION: &str = "smtprelay.dev/abandon-drain";

/// Holds a relay being deleted until its queues are drained.
pub const FINALIZER: &str = "smtprelay.dev/drain-queues";

/// Annotation on the `<name>-tls` Secret when its certificate was issued by the operator.
pub const ISSUED_ANNOTATION: &str = "smtprelay.dev/issued-certificate";

/// On the drain guard: the uid of the SmtpRelay it guards (it has no owner to say so).
pub const GUARDS_ANNOTATION: &str = "smtprelay.dev/guards-relay-uid";

pub const CONTAINER_NAME: &str = "relay";
/// The container port of `spec.service.proxyProtocol`.
pub const PROXY_PORT_NAME: &str = "smtp-proxy";
pub const SPOOL_VOLUME: &str = "spool";

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
