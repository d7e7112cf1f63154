//! A brief API server outage (the control plane killed and started again on the same data):
//! the operator must survive it and act on changes soon after the server is back.
//!
//! Run `cargo build --workspace --bins` first.

use std::time::{Duration, Instant};

use smtp_relay_e2e::operator::{self, condition, get_json, Operator, OperatorOptions};
use smtp_relay_e2e::ControlPlane;

/// How long after the API server is back the operator may take to act on a spec change: two
/// of the watchers' first retry delays, far below the 5 min resync.
const AFTER_OUTAGE: Duration = Duration::from_secs(30);

const RELAY: &str = r#"
apiVersion: smtprelay.dev/v1alpha1
kind: SmtpRelay
metadata:
  name: mail
spec:
  domain: example.com
  networks: ["10.1.0.0/16"]
  relayhost:
    host: relay.example.com
"#;

#[test]
fn operator_acts_on_changes_soon_after_an_api_server_outage() {
    let mut cp = ControlPlane::start().expect("control plane starts");
    let mut op = Operator::start(&cp, OperatorOptions::default()).expect("operator starts");
    let ns = "outage";
    operator::create_namespace(&cp, ns);
    operator::apply(&cp, ns, RELAY);
    op.wait_for(Duration::from_secs(45), "the relay's first status", || {
        get_json(&cp, ns, "smtprelay", "mail").filter(|r| r["status"]["configHash"].is_string())
    });

    cp.kill();
    // A deliberate outage of a few seconds: every watch of the operator fails meanwhile.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        op.is_running(),
        "the operator survives an API server outage"
    );
    cp.resume().expect("control plane resumes");
    let back = Instant::now();
    operator::patch_relay(
        &cp,
        ns,
        "mail",
        r#"{"spec":{"networks":["10.1.0.0/16","10.2.0.0/16"]}}"#,
    );
    op.wait_for(
        AFTER_OUTAGE,
        "the operator to act on a change after the outage",
        || {
            let r = get_json(&cp, ns, "smtprelay", "mail")?;
            let current = r["status"]["observedGeneration"] == r["metadata"]["generation"];
            let valid = condition(&r, "SecretsResolved").is_some_and(|c| c["status"] == "True");
            (current && valid).then_some(())
        },
    );
    eprintln!(
        "converged {:?} after the API server came back",
        back.elapsed()
    );
    let cm = get_json(&cp, ns, "configmap", "mail-config").expect("ConfigMap");
    assert!(cm["data"].to_string().contains("10.2.0.0/16"));
    assert!(op.is_running());
    op.stop();
}

#[test]
fn operator_stops_promptly_on_sigterm_while_the_api_server_is_down() {
    let mut cp = ControlPlane::start().expect("control plane starts");
    let mut op = Operator::start(&cp, OperatorOptions::default()).expect("operator starts");
    cp.kill();
    // Let the watches fail a few times, as in any outage longer than a blip.
    std::thread::sleep(Duration::from_secs(5));
    let t = Instant::now();
    let graceful = op.stop();
    eprintln!("stopped in {:?}", t.elapsed());
    assert!(
        graceful,
        "the operator did not exit within 15 s of SIGTERM; log tail:\n{}",
        op.log_tail(20)
    );
}
