//! The verdict of a reconcile: the children to apply, or what to report instead.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};

/// What the reconcile did with the spec.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The desired objects were applied (or already matched).
    Applied { config_hash: String },
    /// The spec was rejected; nothing was changed.
    InvalidSpec { message: String },
    /// A referenced object is missing or malformed; nothing was changed.
    Unresolved {
        reason: &'static str,
        message: String,
    },
    /// An object this relay does not control stands under a child's name; nothing was changed.
    NameConflict { message: String },
    /// The API server refused a child (admission policy, quota, invalid object); what was
    /// applied before it stays.
    ApplyRefused { message: String },
}

impl Outcome {
    pub fn rejection(&self) -> Option<(&str, &str)> {
        match self {
            Outcome::Applied { .. } => None,
            Outcome::InvalidSpec { message } => Some(("InvalidSpec", message)),
            Outcome::Unresolved { reason, message } => Some((reason, message)),
            Outcome::NameConflict { message } => Some(("NameConflict", message)),
            Outcome::ApplyRefused { message } => Some(("ApplyRefused", message)),
        }
    }
}

/// Every object one relay should own, computed from spec and resolved references.
#[derive(Debug, Clone)]
pub struct Desired {
    pub config_map: ConfigMap,
    pub hash_key_secret: Secret,
    pub relayhost_secret: Option<Secret>,
    pub sasl_users_secret: Option<Secret>,
    pub tls_secret: Option<Secret>,
    /// With a certificate the operator issues: `<name>-ca-key`, the relay's CA and its key,
    /// which no pod mounts, and `<name>-ca`, its certificate for clients.
    pub ca_key_secret: Option<Secret>,
    pub ca_config_map: Option<ConfigMap>,
    pub service: Service,
    pub headless_service: Service,
    pub stateful_set: StatefulSet,
    /// With a delegated OAuth2 login: the Secret the pods share the refresh token through, and
    /// their ServiceAccount allowed to.
    pub oauth2_sharing: Option<Sharing>,
    pub pdb: Option<PodDisruptionBudget>,
    /// Unless `spec.networkPolicy.enabled` is false: who may reach the pods.
    pub network_policy: Option<NetworkPolicy>,
    /// With `whenDeleted: Delete`: the drain guard, a second owner of every child but the
    /// Services (`steps::build::configmap::drain_guard`).
    pub drain_guard: Option<ConfigMap>,
}

/// What a reconcile decided before writing anything: apply these children, or report why not
/// and leave what runs as it is.
#[derive(Debug, Clone)]
pub enum Plan {
    Apply(Box<Applying>),
    Report(Outcome),
}

/// Children to apply, and what the reconcile says of them once applied.
#[derive(Debug, Clone)]
pub struct Applying {
    pub desired: Desired,
    /// The keyed hash of the configuration the pods run: their template's annotation, and
    /// `status.configHash` once applied.
    pub config_hash: String,
    /// The note of the Event to publish once applied, when the operator issued a new serving
    /// certificate for this reconcile ([`crate::steps::certificate`]).
    pub certificate_issued: Option<String>,
}

/// What sharing the refresh token takes.
#[derive(Debug, Clone)]
pub struct Sharing {
    /// `<name>-oauth2-token`, created without data: the relay pods write it.
    pub secret: Secret,
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
}
