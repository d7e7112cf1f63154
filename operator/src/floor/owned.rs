//! The kinds of object a relay owns: one list, read by the watches and their caches, the
//! fingerprint, the apply and prune step, the chart's RBAC test and the end-to-end audit.
//!
//! A new child kind is a variant here (with what the operator does to it), a builder, a field
//! of [`crate::floor::verdict::Desired`], and then what the compiler asks for: its `Owned`
//! impl in `steps::apply`, its cache in `watch::fingerprint` and its arm in the watches.

/// A kind of object the operator creates for a relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OwnedKind {
    ConfigMap,
    Secret,
    Service,
    StatefulSet,
    PodDisruptionBudget,
    NetworkPolicy,
    ServiceAccount,
    Role,
    RoleBinding,
}

/// How the operator follows a kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watched {
    /// The metadata of the operator's own objects (its `managed-by` label): a change or a
    /// deletion reconciles the owning relay at once.
    Owned,
    /// The metadata of every object of the kind in the watched namespaces: the relay's own,
    /// and the ones users reference (a rotated password reconciles at once).
    All,
    /// Not watched: read before each write and repaired by the next full reconcile.
    No,
}

impl OwnedKind {
    /// Every owned kind, in the order the operator applies them.
    pub const ALL: [OwnedKind; 9] = [
        OwnedKind::Secret,
        OwnedKind::ServiceAccount,
        OwnedKind::Role,
        OwnedKind::RoleBinding,
        OwnedKind::ConfigMap,
        OwnedKind::NetworkPolicy,
        OwnedKind::Service,
        OwnedKind::StatefulSet,
        OwnedKind::PodDisruptionBudget,
    ];

    /// The kind, as in `kind:`.
    pub const fn kind(self) -> &'static str {
        match self {
            OwnedKind::ConfigMap => "ConfigMap",
            OwnedKind::Secret => "Secret",
            OwnedKind::Service => "Service",
            OwnedKind::StatefulSet => "StatefulSet",
            OwnedKind::PodDisruptionBudget => "PodDisruptionBudget",
            OwnedKind::NetworkPolicy => "NetworkPolicy",
            OwnedKind::ServiceAccount => "ServiceAccount",
            OwnedKind::Role => "Role",
            OwnedKind::RoleBinding => "RoleBinding",
        }
    }

    /// The API group (`""` for the core group).
    pub const fn group(self) -> &'static str {
        match self {
            OwnedKind::ConfigMap
            | OwnedKind::Secret
            | OwnedKind::Service
            | OwnedKind::ServiceAccount => "",
            OwnedKind::StatefulSet => "apps",
            OwnedKind::PodDisruptionBudget => "policy",
            OwnedKind::NetworkPolicy => "networking.k8s.io",
            OwnedKind::Role | OwnedKind::RoleBinding => "rbac.authorization.k8s.io",
        }
    }

    /// The resource, as in a URL, an RBAC rule and an audit record.
    pub const fn plural(self) -> &'static str {
        match self {
            OwnedKind::ConfigMap => "configmaps",
            OwnedKind::Secret => "secrets",
            OwnedKind::Service => "services",
            OwnedKind::StatefulSet => "statefulsets",
            OwnedKind::PodDisruptionBudget => "poddisruptionbudgets",
            OwnedKind::NetworkPolicy => "networkpolicies",
            OwnedKind::ServiceAccount => "serviceaccounts",
            OwnedKind::Role => "roles",
            OwnedKind::RoleBinding => "rolebindings",
        }
    }

    /// The path of the group and version, as in a URL (`/api/v1`, `/apis/apps/v1`).
    pub const fn api_path(self) -> &'static str {
        match self.group().as_bytes() {
            b"" => "/api/v1",
            b"apps" => "/apis/apps/v1",
            b"policy" => "/apis/policy/v1",
            b"networking.k8s.io" => "/apis/networking.k8s.io/v1",
            _ => "/apis/rbac.authorization.k8s.io/v1",
        }
    }

    /// How the operator follows the kind.
    pub const fn watched(self) -> Watched {
        match self {
            OwnedKind::ConfigMap | OwnedKind::Secret => Watched::All,
            OwnedKind::Service
            | OwnedKind::StatefulSet
            | OwnedKind::PodDisruptionBudget
            | OwnedKind::NetworkPolicy => Watched::Owned,
            OwnedKind::ServiceAccount | OwnedKind::Role | OwnedKind::RoleBinding => Watched::No,
        }
    }

    /// Whether the operator deletes objects of the kind itself (a child no longer wanted, a
    /// Secret no pod mounts, the drain guard); the others go with the relay, by garbage
    /// collection.
    pub const fn deleted(self) -> bool {
        !matches!(self, OwnedKind::Service | OwnedKind::StatefulSet)
    }

    /// The RBAC verbs the operator needs on the kind: `get` to read a child before writing
    /// it, `list` and `watch` for a watched kind, `create` and `patch` for server-side
    /// apply, `delete` for a kind it deletes.
    pub fn verbs(self) -> Vec<&'static str> {
        let mut verbs = vec!["get"];
        if self.watched() != Watched::No {
            verbs.extend(["list", "watch"]);
        }
        verbs.extend(["create", "patch"]);
        if self.deleted() {
            verbs.push("delete");
        }
        verbs
    }

    /// The kind of a resource name (`statefulsets`), if the operator owns it.
    pub fn from_plural(plural: &str) -> Option<OwnedKind> {
        OwnedKind::ALL.into_iter().find(|k| k.plural() == plural)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_listed_once_with_its_own_names() {
        let mut kinds = OwnedKind::ALL.to_vec();
        kinds.sort();
        kinds.dedup();
        assert_eq!(kinds.len(), OwnedKind::ALL.len());
        for k in OwnedKind::ALL {
            assert_eq!(OwnedKind::from_plural(k.plural()), Some(k));
            let kind = k.kind().to_lowercase();
            let plural = match kind.strip_suffix('y') {
                Some(stem) => format!("{stem}ies"),
                None => format!("{kind}s"),
            };
            assert_eq!(k.plural(), plural);
        }
    }

    #[test]
    fn the_verbs_follow_from_what_the_operator_does() {
        assert_eq!(
            OwnedKind::StatefulSet.verbs(),
            ["get", "list", "watch", "create", "patch"]
        );
        assert_eq!(
            OwnedKind::Secret.verbs(),
            ["get", "list", "watch", "create", "patch", "delete"]
        );
        assert_eq!(
            OwnedKind::Role.verbs(),
            ["get", "create", "patch", "delete"]
        );
        assert_eq!(
            OwnedKind::Role.api_path(),
            "/apis/rbac.authorization.k8s.io/v1"
        );
    }
}
