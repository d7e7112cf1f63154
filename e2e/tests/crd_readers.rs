//! What users' own programs read of an SmtpRelay through its CRD (issue 31), on a control plane
//! without the operator.
//!
//! kstatus, the library Flux, kpt and cli-utils users wait on (`e2e/kstatus`), reads an
//! SmtpRelay the way the operator means it: InProgress from the moment it is
//! created until the operator has observed it, Current once its Ready condition says so for
//! the generation in force, InProgress again when the spec changes, Failed while Stalled.
//!
//! The statuses are written as the operator writes them (`kubectl patch --subresource=status`);
//! the real node's durability suite asks kstatus about relays the operator runs.
//!
//! `kubectl explain` shows the fields' documentation, as the CRD's schema carries it.
//!
//! Needs `scripts/install-deps.sh --lint` (controlplane, kubectl, kstatus).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::time::Duration;

use serde_json::{json, Value};
use smtp_relay_e2e::operator;
use smtp_relay_e2e::{tools, ControlPlane};

const NS: &str = "kstatus";

fn relay(cp: &ControlPlane) -> Value {
    operator::get_json(cp, NS, "smtprelay", "r").expect("the relay")
}

fn status_patch(cp: &ControlPlane, status: &Value) {
    let patch = json!({ "status": status }).to_string();
    cp.kubectl_ok([
        "patch",
        "smtprelay",
        "r",
        "-n",
        NS,
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch,
    ]);
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message,
           "lastTransitionTime": "2026-12-06T00:00:00Z"})
}

/// A control plane serving the CRD of `crds/`, as a user's cluster does once it is installed.
fn with_crd() -> ControlPlane {
    let cp = ControlPlane::start().expect("control plane starts");
    let crd = tools::workspace_root().join("crds/smtprelay.dev_smtprelays.yaml");
    cp.kubectl_ok([
        "apply",
        "--server-side",
        "-f",
        crd.to_str().expect("a path"),
    ]);
    operator::wait_crd_served(&cp);
    cp
}

#[test]
fn kubectl_explain_shows_the_fields_documentation() {
    let cp = with_crd();
    // The API server publishes a new CRD's OpenAPI schema, which explain reads, a little
    // after serving it.
    let relayhost = tools::poll_until(
        Duration::from_secs(30),
        "kubectl explain to find the SmtpRelay schema",
        || {
            let out = cp.kubectl(["explain", "smtprelay.spec.relayhost"]);
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        },
    );
    for text in [
        "KIND:       SmtpRelay",
        "FIELD: relayhost <Object>",
        // The field's own fields, each with its type.
        "credentialsSecretRef\t<Object>",
        "oauth2\t<Object>",
        "tls\t<Object>",
    ] {
        assert!(relayhost.contains(text), "{text:?} in:\n{relayhost}");
    }
    let field = "smtprelay.spec.relayhost.tls.allowCleartextCredentials";
    let ack = cp.kubectl_ok(["explain", field]);
    assert!(
        ack.contains("<boolean>") && ack.contains("clear text"),
        "{ack}"
    );
}

#[test]
fn kstatus_waits_for_the_operator_then_follows_its_conditions() {
    let cp = with_crd();
    operator::create_namespace(&cp, NS);
    let object = operator::relay_object(
        NS,
        "r",
        json!({"domain": "example.net", "relayhost": {"host": "smtp.example.net"}}),
    );
    operator::apply(&cp, NS, &object.to_string());

    // Nobody has observed it: InProgress, not the Current an object without status reads as.
    let fresh = relay(&cp);
    assert_eq!(fresh["status"]["observedGeneration"], 0, "{fresh}");
    let (status, message) = operator::kstatus(&fresh).expect("kstatus");
    assert_eq!(
        (status.as_str(), message.as_str()),
        (
            "InProgress",
            "SmtpRelay generation is 1, but latest observed generation is 0"
        )
    );

    // The operator observed generation 1 and the pods are Ready: Current.
    status_patch(
        &cp,
        &json!({"observedGeneration": 1, "conditions": [
            condition("Ready", "True", "Ready", "every replica is Ready"),
            condition("Reconciling", "False", "Reconciled", "the spec in force"),
            condition("Stalled", "False", "NotStalled", "nothing refused")]}),
    );
    assert_eq!(
        operator::kstatus(&relay(&cp)).expect("kstatus").0,
        "Current"
    );

    // A spec change: InProgress until the operator observes it.
    operator::patch_relay(&cp, NS, "r", r#"{"spec":{"replicas":2}}"#);
    assert_eq!(
        operator::kstatus(&relay(&cp)).expect("kstatus").0,
        "InProgress"
    );

    // Refused and stalled: Failed, with the operator's words.
    status_patch(
        &cp,
        &json!({"observedGeneration": 2, "conditions": [
            condition("Ready", "False", "ConfigRefused", "spec.postconf.x: refused"),
            condition("Reconciling", "False", "Reconciled", "the spec in force"),
            condition("Stalled", "True", "ConfigRefused", "spec.postconf.x: refused")]}),
    );
    let (status, message) = operator::kstatus(&relay(&cp)).expect("kstatus");
    assert_eq!(
        (status.as_str(), message.as_str()),
        ("Failed", "spec.postconf.x: refused")
    );
}
