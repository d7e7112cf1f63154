//! The PodDisruptionBudget `<name>`: only with more than one replica (with one, a budget of
//! maxUnavailable 1 would protect nothing and one of 0 would block node drains).

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use crate::floor::contract::{child_meta, selector_labels};
use crate::floor::crd::SmtpRelay;
use crate::floor::error::Result;

pub fn pdb(relay: &SmtpRelay) -> Result<Option<PodDisruptionBudget>> {
    if relay.spec.replicas <= 1 {
        return Ok(None);
    }
    Ok(Some(PodDisruptionBudget {
        metadata: child_meta(relay, relay.name_any(), "relay")?,
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(relay)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }))
}
