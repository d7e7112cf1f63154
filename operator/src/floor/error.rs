//! The operator's errors: one enum, with each step's typed errors wrapped in it.

/// Everything that can go wrong in the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed (transient: retried with backoff).
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),

    /// A referenced Secret or ConfigMap is missing or holds a bad value (user input: reported in
    /// status, nothing is changed).
    #[error(transparent)]
    Resolve(Box<ResolveError>),

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

    /// A step of the reconcile failed: which one, and why (what the operator logs and counts).
    #[error("{step}: {source}")]
    Step {
        step: Step,
        #[source]
        source: Box<Error>,
    },
}

/// The steps of a reconcile, as its errors name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Reading the StatefulSet and its pods.
    ReadRunning,
    /// Keeping the finalizer, or draining a relay being deleted.
    Deletion,
    /// Reading what the spec references, and the config-hash key.
    Resolve,
    /// Building the children.
    Build,
    /// Holding replicas being scaled away until they drained.
    Drain,
    /// Writing the children, pruning, handing a token on.
    Apply,
    /// Writing status and Events.
    Report,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::ReadRunning => "reading the StatefulSet and its pods",
            Step::Deletion => "deletion",
            Step::Resolve => "resolving references",
            Step::Build => "building the children",
            Step::Drain => "draining",
            Step::Apply => "applying the children",
            Step::Report => "reporting status",
        })
    }
}

impl From<ResolveError> for Error {
    fn from(e: ResolveError) -> Self {
        Error::Resolve(Box::new(e))
    }
}

impl Error {
    /// This error, as a failure of `step` (an error already named by a step keeps its step).
    pub fn during(self, step: Step) -> Error {
        match self {
            Error::Step { .. } => self,
            e => Error::Step {
                step,
                source: Box::new(e),
            },
        }
    }

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
            Error::Step { source, .. } => source.metric_label(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the references of a relay could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(
        "Secret {namespace}/{name} ({purpose}) does not exist; create it or fix the reference"
    )]
    SecretNotFound {
        namespace: String,
        name: String,
        purpose: &'static str,
    },
    /// The operator requires a label of every referenced Secret (`ReferableLabel`), and this
    /// one does not carry it: nothing of it is read.
    #[error(
        "Secret {namespace}/{name} ({purpose}), referenced by {field}, does not carry the label {label}, which this operator requires of every Secret an SmtpRelay references (its --secret-reference-label, the chart's secretReferenceLabel); if this relay may read it, label it: kubectl label secret -n {namespace} {name} {label}"
    )]
    SecretNotReferable {
        namespace: String,
        name: String,
        purpose: &'static str,
        field: &'static str,
        label: String,
    },
    #[error(
        "ConfigMap {namespace}/{name} ({purpose}) does not exist; create it or fix the reference"
    )]
    ConfigMapNotFound {
        namespace: String,
        name: String,
        purpose: &'static str,
    },
    #[error("{kind} {namespace}/{name} has no key {key:?} ({purpose}); add the key or set the key name in the reference")]
    KeyMissing {
        kind: &'static str,
        namespace: String,
        name: String,
        key: String,
        purpose: &'static str,
    },
    #[error("{kind} {namespace}/{name} key {key:?} is invalid: {problem}")]
    InvalidValue {
        kind: &'static str,
        namespace: String,
        name: String,
        key: String,
        problem: String,
    },
    /// The operating system's random source failed while generating the config-hash key
    /// (retried with backoff).
    #[error("generating the config-hash key: {0}")]
    Random(getrandom::Error),
    /// Issuing the serving certificate failed (retried with backoff).
    #[error(transparent)]
    Certificate(#[from] IssueError),
    /// Reading failed for a reason other than absence (retried with backoff).
    #[error("reading {kind} {namespace}/{name}: {source}")]
    Api {
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
}

impl ResolveError {
    /// The condition reason (and metrics label) for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            ResolveError::SecretNotFound { .. } => "SecretNotFound",
            ResolveError::SecretNotReferable { .. } => "SecretNotReferable",
            ResolveError::ConfigMapNotFound { .. } => "ConfigMapNotFound",
            ResolveError::KeyMissing { .. } => "SecretKeyMissing",
            ResolveError::InvalidValue { .. } => "InvalidSecretValue",
            ResolveError::Api { .. } => "kube",
            ResolveError::Random(_) => "random",
            ResolveError::Certificate(_) => "certificate",
        }
    }

    /// True when the error is the user's input rather than a transient API failure.
    pub fn is_user_error(&self) -> bool {
        !matches!(
            self,
            ResolveError::Api { .. } | ResolveError::Random(_) | ResolveError::Certificate(_)
        )
    }
}

/// Why issuing failed (retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The random source, a name or the signature.
    #[error("issuing the serving certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// The clock is outside what a certificate can say.
    #[error("issuing the serving certificate: validity out of range: {0}")]
    Time(#[from] time::error::ComponentRange),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_step_is_named_once_and_counted_by_its_cause() {
        let e = Error::MissingObjectKey(".metadata.uid")
            .during(Step::Apply)
            .during(Step::Report);
        assert_eq!(
            e.to_string(),
            "applying the children: object is missing .metadata.uid"
        );
        assert_eq!(e.metric_label(), "missing_object_key");
    }
}
