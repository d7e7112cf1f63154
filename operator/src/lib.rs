//! smtp-relay-operator: turns one `SmtpRelay` resource into a running, secure, durable Postfix
//! relay (ConfigMap, owned Secrets, StatefulSet, Services, PodDisruptionBudget).
//!
//! Layout, in the order of the reconcile's steps ([`controller::reconcile`]):
//! 0. unchanged: [`fingerprint`] hashes what the reconcile would read, from the watches'
//!    metadata caches; when nothing changed since the last full reconcile, no request is made;
//! 1. read what runs: the StatefulSet and its pods (a relay being deleted goes to
//!    [`deletion`], which drains it before its volumes go);
//! 2. dereference, validate, build: [`resolve`] reads referenced Secrets and ConfigMaps (the
//!    only API reads of this step), [`validate`] checks the spec and has the relay image judge
//!    what would be written (the result, a `Validated`, is the builders' only input),
//!    [`certificate`] issues the serving certificate, and [`builders`] are pure functions from
//!    it to the children;
//! 3. drain: [`drain`] keeps replicas being scaled away until they delivered their queues;
//! 4. apply: [`apply`] writes what changed or drifted and prunes what is no longer wanted;
//! 5. report: [`status`] computes conditions from the rollout, [`events`] chooses the Events;
//! 6. requeue.
//!
//! Around them: [`crd`] holds the resource types, [`watches`] decides what triggers a reconcile
//! and [`mapping`] which relays a Secret or ConfigMap concerns; [`metrics`], [`http`] and
//! [`leader`] keep operations out of it, and [`runtime`] holds the process around it (signals,
//! endpoints, leadership).

pub mod apply;
pub mod backoff;
pub mod builders;
pub mod certificate;
pub mod controller;
pub mod crd;
pub mod crdgen;
pub mod deletion;
pub mod drain;
pub mod events;
pub mod fingerprint;
#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod golden;
pub mod http;
pub mod leader;
pub mod mapping;
pub mod metrics;
#[cfg(test)]
mod parity;
pub mod queue;
pub mod resolve;
pub mod runtime;
pub mod shutdown;
pub mod status;
pub mod telemetry;
pub mod validate;
pub mod watches;
pub mod writeback;

/// Everything that can go wrong in the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed (transient: retried with backoff).
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),

    /// A referenced Secret or ConfigMap is missing or holds a bad value (user input: reported in
    /// status, nothing is changed).
    #[error(transparent)]
    Resolve(Box<resolve::ResolveError>),

    /// The spec cannot be turned into a relay (user input: reported in status).
    #[error("invalid spec: {0}")]
    InvalidSpec(String),

    /// An object could not be serialized (a bug).
    #[error("serialization failed: {0}")]
    Serialization(String),

    /// The object lacks a field the API always sets (name, namespace, uid).
    #[error("object is missing {0}")]
    MissingObjectKey(&'static str),

    /// Leader election failed.
    #[error("leader election: {0}")]
    Leader(String),

    /// The API server refused to apply a child (an admission policy or webhook, a quota, an
    /// invalid object): reported in status naming the object, retried later.
    #[error("{0}")]
    Refused(String),
}

impl From<resolve::ResolveError> for Error {
    fn from(e: resolve::ResolveError) -> Self {
        Error::Resolve(Box::new(e))
    }
}

impl Error {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Resolve(e) => e.reason(),
            Error::InvalidSpec(_) => "InvalidSpec",
            Error::Serialization(_) => "serialization",
            Error::MissingObjectKey(_) => "missing_object_key",
            Error::Leader(_) => "leader",
            Error::Refused(_) => "ApplyRefused",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
