//! A rotated OAuth2 refresh token goes back into the user's Secret, so that Secret always
//! holds a token the provider still takes: for a relay re-created from it, for a new pod
//! starting before it reads the shared one, and for whoever looks. The relay pods keep the
//! newest token in `<name>-oauth2-token` (see [`crate::steps::build::oauth2`]); the operator copies
//! it only when it replaced the token the user's Secret holds (the relay's own rule,
//! `Rotated::replaces`), so a token the user put there anew (a new consent) is never
//! overwritten.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, ResourceExt};
use smtp_relay::oauth2::rotation::Rotated;
use smtp_relay::settings::Secret as Token;
use tracing::{debug, info, warn};

use crate::context::Context;
use crate::floor::contract::{Names, ReferableLabel, REFRESH_TOKEN};
use crate::floor::crd::SmtpRelay;
use crate::floor::error::Result;
use crate::floor::verdict::Desired;
use crate::steps::resolve::trim_line_end;

/// The token to write into the user's Secret in place of `configured`, if any.
pub fn newer_token(shared: &BTreeMap<String, Vec<u8>>, configured: &[u8]) -> Option<Token> {
    let rotated = Rotated::from_data(shared)?;
    let configured = Token(String::from_utf8(trim_line_end(configured.to_vec())).ok()?);
    (rotated.token != configured && rotated.replaces(&configured)).then_some(rotated.token)
}

fn data_of(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect()
}

/// Whether the operator may write into the user's Secret: when it requires a label of
/// referable Secrets (`--secret-reference-label`), only into one that carries it (resolve
/// refused the relay otherwise; the label may have gone since).
fn may_write_into(secret: &Secret, label: Option<&ReferableLabel>) -> bool {
    label.is_none_or(|l| l.marks(secret.labels()))
}

/// Writes the newest refresh token the pods share back into the user's Secret, when it
/// replaced the one there; a compare-and-swap on the Secret's version, so a user's change
/// meanwhile wins. Announced with a Normal Event (no token in it).
pub async fn step(relay: &SmtpRelay, ctx: &Context, desired: &Desired) -> Result<()> {
    let Some(oauth2) = relay.spec.relayhost.oauth2.as_ref() else {
        return Ok(());
    };
    if desired.oauth2_sharing.is_none() {
        return Ok(());
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &relay.namespace_checked()?);
    let shared = Names::oauth2_token_secret(&relay.name_any());
    let Some(shared) = api.get_opt(&shared).await? else {
        return Ok(());
    };
    let user_secret = &oauth2.secret_ref.name;
    let Some(user) = api.get_opt(user_secret).await? else {
        return Ok(());
    };
    if !may_write_into(&user, ctx.opts.secret_reference_label.as_ref()) {
        debug!(secret = %user_secret, "the Secret does not carry the referable label; not written");
        return Ok(());
    }
    let key = REFRESH_TOKEN.secret_key;
    let Some(configured) = data_of(&user).remove(key) else {
        return Ok(());
    };
    let Some(newest) = newer_token(&data_of(&shared), &configured) else {
        return Ok(());
    };
    // A compare-and-swap: the API server refuses the patch (409) if the Secret changed since
    // it was read.
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": user.resource_version()},
        "data": {key: k8s_openapi::ByteString(newest.0.into_bytes())},
    });
    match api
        .patch(user_secret, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            info!(relay = %relay.name_any(), secret = %user_secret, "wrote the rotated refresh token back");
            let ev = Event {
                type_: EventType::Normal,
                reason: "RefreshTokenWrittenBack".into(),
                note: Some(format!(
                    "the provider rotated the refresh token; wrote the newest into Secret {user_secret} (key {key}) so every replica and a new relay start from it"
                )),
                action: "WriteBack".into(),
                secondary: None,
            };
            ctx.publish_or_log(&ev, relay).await;
            Ok(())
        }
        // The user's Secret changed meanwhile: the next reconcile decides again.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            debug!(secret = %user_secret, "the Secret changed meanwhile; not written");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 403 => {
            warn!(secret = %user_secret, message = %e.message, "not allowed to write the rotated refresh token back; the relay pods keep sharing it");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 26: with `--secret-reference-label`, a rotated token is written only into a
    /// Secret that carries the label.
    #[test]
    fn a_token_is_written_back_only_into_a_labelled_secret_when_a_label_is_required() {
        let label: ReferableLabel = "smtprelay.dev/referable=true".parse().expect("key=value");
        let mut secret = Secret::default();
        assert!(may_write_into(&secret, None), "no label required");
        assert!(!may_write_into(&secret, Some(&label)));
        secret.metadata.labels = Some(BTreeMap::from([(
            "smtprelay.dev/referable".to_string(),
            "yes".to_string(),
        )]));
        assert!(!may_write_into(&secret, Some(&label)), "another value");
        secret.metadata.labels = Some(BTreeMap::from([(
            "smtprelay.dev/referable".to_string(),
            "true".to_string(),
        )]));
        assert!(may_write_into(&secret, Some(&label)));
    }

    #[test]
    fn only_a_token_that_replaced_the_users_is_written_back() {
        let first = Rotated::after(None, &Token("configured".into()), Token("rt-1".into()));
        let second = Rotated::after(Some(&first), &Token("rt-1".into()), Token("rt-2".into()));
        let shared = second.to_data();
        assert_eq!(
            newer_token(&shared, b"configured\n").map(|t| t.0),
            Some("rt-2".into())
        );
        assert_eq!(
            newer_token(&shared, b"rt-1").map(|t| t.0),
            Some("rt-2".into())
        );
        // Already the newest; a new consent; nothing shared yet.
        assert!(newer_token(&shared, b"rt-2").is_none());
        assert!(newer_token(&shared, b"consented-again").is_none());
        assert!(newer_token(&BTreeMap::new(), b"configured").is_none());
    }
}
