//! A delegated OAuth2 login (a refresh token) whose provider may rotate the token: the relay
//! pods share the newest one through `<name>-oauth2-token` (see the relay's
//! `oauth2::rotation`), with a ServiceAccount of their own allowed `get` and `patch` on that one
//! Secret and nothing else. The operator creates the Secret empty and never writes its data;
//! it copies the newest token back into the user's Secret ([`crate::steps::writeback`]).

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::ResourceExt;

use crate::floor::contract::{child_meta, Names};
use crate::floor::crd::SmtpRelay;
use crate::floor::error::Result;
use crate::floor::inputs::{OAuth2Keys, Resolved};
use crate::floor::verdict::Sharing;

/// The relay logs in with a refresh token (the grant the relay picks: no service account key,
/// a refresh token and a client id).
pub fn delegated(resolved: &Resolved) -> bool {
    resolved
        .relayhost_oauth2
        .as_ref()
        .is_some_and(OAuth2Keys::delegated)
}

/// The objects of [`Sharing`], for a relay with a delegated login.
pub fn sharing(relay: &SmtpRelay, resolved: &Resolved) -> Result<Option<Sharing>> {
    if !delegated(resolved) {
        return Ok(None);
    }
    let name = relay.name_any();
    let identity = Names::oauth2_identity(&name);
    let secret_name = Names::oauth2_token_secret(&name);
    let meta = |n: String| child_meta(relay, n, "oauth2-refresh-token");
    Ok(Some(Sharing {
        secret: Secret {
            metadata: meta(secret_name.clone())?,
            type_: Some("Opaque".into()),
            ..Secret::default()
        },
        service_account: ServiceAccount {
            metadata: meta(identity.clone())?,
            // Mounted by the pod spec, which says so itself.
            automount_service_account_token: Some(false),
            ..ServiceAccount::default()
        },
        role: Role {
            metadata: meta(identity.clone())?,
            rules: Some(vec![PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["secrets".into()]),
                resource_names: Some(vec![secret_name]),
                verbs: vec!["get".into(), "patch".into()],
                ..PolicyRule::default()
            }]),
        },
        role_binding: RoleBinding {
            metadata: meta(identity.clone())?,
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "Role".into(),
                name: identity.clone(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: identity,
                namespace: relay.namespace(),
                ..Subject::default()
            }]),
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::relay;

    fn keys(refresh: bool, service_account: bool) -> Resolved {
        Resolved {
            relayhost_oauth2: Some(OAuth2Keys {
                client_id: Some(b"id".to_vec()),
                client_secret: None,
                refresh_token: refresh.then(|| b"rt".to_vec()),
                service_account: service_account.then(|| b"{}".to_vec()),
            }),
            ..Resolved::default()
        }
    }

    #[test]
    fn only_a_refresh_token_login_shares_and_only_its_one_secret() {
        let r = relay("r1");
        assert!(sharing(&r, &Resolved::default()).unwrap().is_none());
        assert!(sharing(&r, &keys(false, false)).unwrap().is_none());
        assert!(sharing(&r, &keys(true, true)).unwrap().is_none());
        let s = sharing(&r, &keys(true, false)).unwrap().expect("shares");
        assert_eq!(s.secret.metadata.name.as_deref(), Some("r1-oauth2-token"));
        assert_eq!(s.secret.data, None, "the pods write it, never the operator");
        let rules = s.role.rules.expect("rules");
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0].resources.as_deref(),
            Some(&["secrets".to_string()][..])
        );
        assert_eq!(
            rules[0].resource_names.as_deref(),
            Some(&["r1-oauth2-token".to_string()][..])
        );
        assert_eq!(rules[0].verbs, ["get", "patch"]);
        let subject = &s.role_binding.subjects.expect("subjects")[0];
        assert_eq!(
            (subject.name.as_str(), s.role_binding.role_ref.name.as_str()),
            ("r1-oauth2", "r1-oauth2")
        );
        for meta in [
            &s.secret.metadata,
            &s.service_account.metadata,
            &s.role.metadata,
            &s.role_binding.metadata,
        ] {
            assert_eq!(meta.owner_references.as_ref().map(Vec::len), Some(1));
        }
    }
}
