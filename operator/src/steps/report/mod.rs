//! Report: status computed from what runs, and the Events of what changed.

pub mod events;
pub mod status;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};

use crate::context::Context;
use crate::floor::crd::SmtpRelay;
use crate::floor::error::Result;
use crate::floor::running::Rollout;
use crate::floor::verdict::Outcome;
use events::events_for;

/// Step 5: publishes the Events of what changed and patches status when it differs.
pub async fn report(
    relay: &SmtpRelay,
    ctx: &Context,
    outcome: &Outcome,
    rollout: Rollout,
) -> Result<crate::floor::crd::SmtpRelayStatus> {
    let wide = status::OperatorWide {
        network_policies: ctx.opts.network_policies,
        user_namespaces: ctx.opts.user_namespaces,
    };
    let new_status =
        status::compute_with(relay, outcome, rollout, Time(jiff::Timestamp::now()), wide);
    for ev in events_for(relay, outcome, &new_status) {
        ctx.publish_or_log(&ev, relay).await;
    }
    if relay.status.as_ref() != Some(&new_status) {
        patch_status(ctx, relay, &new_status).await?;
    }
    Ok(new_status)
}

/// Writes a relay's status (a merge patch of the status subresource: never the spec).
pub async fn patch_status(
    ctx: &Context,
    relay: &SmtpRelay,
    status: &crate::floor::crd::SmtpRelayStatus,
) -> Result<()> {
    let ns = relay.namespace_checked()?;
    let api: Api<SmtpRelay> = Api::namespaced(ctx.client.clone(), &ns);
    // Without the queue, which `queue::observe` alone writes (a merge patch leaves it).
    let status = crate::floor::crd::SmtpRelayStatus {
        queue: None,
        ..status.clone()
    };
    let patch = Patch::Merge(serde_json::json!({ "status": status }));
    api.patch_status(&relay.name_any(), &PatchParams::default(), &patch)
        .await?;
    Ok(())
}
