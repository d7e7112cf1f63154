//! The operator against a real API server and controller manager, running as the chart's
//! ServiceAccount (so the chart's RBAC is what it gets): the examples become owned children with
//! status; spec updates roll the config hash; identical re-applies and resyncs write nothing;
//! rotated Secrets reach the owned copies at once; broken references change nothing that runs;
//! deletion follows the queue volume retention policy; an operator crash mid-flight converges
//! without duplicates.
//!
//! Each phase is its own named test, reported on its own line; one control plane and one
//! operator serve them all (a start costs seconds) and each phase has its own namespace. Run
//! `cargo build --workspace --bins` first; `-- <phase>` runs one phase.

// Tests may panic: `harness = false`, so clippy does not see the phases as tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use smtp_relay_e2e::operator::{
    self, condition, controlled_by, get_json, list_json, Operator, OperatorOptions,
    CONFIG_HASH_ANNOTATION,
};
use smtp_relay_e2e::phases::{self, Order, Phase};
use smtp_relay_e2e::{tools, ControlPlane};
use smtp_relay_operator::floor::owned::OwnedKind;

/// How long the operator may take to act on a change.
const CONVERGE: Duration = Duration::from_secs(45);
/// A watch-driven reaction: well under the 15 s requeue of a relay whose pods are not ready,
/// so meeting it proves the change was seen through a watch, not a periodic resync.
const AT_ONCE: Duration = Duration::from_secs(10);

/// Whether an audit record's `objectRef.resource` is a kind the operator owns (the
/// operator's one list of them).
fn child_resource(e: &Value) -> bool {
    OwnedKind::from_plural(e["objectRef"]["resource"].as_str().unwrap_or("")).is_some()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(tools::workspace_root().join(path))
        .unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn b64_decode(s: &str) -> String {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap_or_else(|e| panic!("base64 {s:?}: {e}"));
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Fields drop in order: the operator stops while the API server still answers.
struct Ctx {
    op: Operator,
    cp: ControlPlane,
}

impl Ctx {
    fn start() -> Ctx {
        let cp = ControlPlane::start().expect("control plane starts");
        eprintln!("control plane ready in {:?}", cp.startup_time());
        let op = Operator::start(&cp, OperatorOptions::default()).expect("operator starts");
        Ctx { op, cp }
    }

    fn relay(&self, ns: &str, name: &str) -> Value {
        get_json(&self.cp, ns, "smtprelay", name)
            .unwrap_or_else(|| panic!("SmtpRelay {ns}/{name} exists"))
    }

    /// Waits until the operator has written status for the relay's current generation with the
    /// spec valid and every reference resolved; returns the relay.
    fn wait_applied(&self, ns: &str, name: &str) -> Value {
        self.op.wait_for(
            CONVERGE,
            &format!("status of {ns}/{name} for its generation, resolved"),
            || {
                let r = get_json(&self.cp, ns, "smtprelay", name)?;
                let current = r["status"]["observedGeneration"] == r["metadata"]["generation"];
                let ok = |t| condition(&r, t).is_some_and(|c| c["status"] == "True");
                (current
                    && ok("ConfigValid")
                    && ok("SecretsResolved")
                    && r["status"]["configHash"].is_string())
                .then_some(r)
            },
        )
    }

    /// Waits until the relay's Ready condition has `reason` for its current generation.
    fn wait_ready_reason(&self, ns: &str, name: &str, reasons: &[&str]) -> Value {
        self.op.wait_for(
            CONVERGE,
            &format!("{ns}/{name} Ready reason in {reasons:?}"),
            || {
                let r = get_json(&self.cp, ns, "smtprelay", name)?;
                let current = r["status"]["observedGeneration"] == r["metadata"]["generation"];
                let c = condition(&r, "Ready")?;
                (current && reasons.iter().any(|x| c["reason"] == *x)).then_some(r)
            },
        )
    }

    fn get(&self, ns: &str, kind: &str, name: &str) -> Option<Value> {
        get_json(&self.cp, ns, kind, name)
    }

    fn must(&self, ns: &str, kind: &str, name: &str) -> Value {
        self.get(ns, kind, name)
            .unwrap_or_else(|| panic!("{kind} {ns}/{name} exists"))
    }

    fn template_hash(&self, ns: &str, name: &str) -> String {
        let sts = self.must(ns, "statefulset", name);
        sts["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]
            .as_str()
            .unwrap_or_else(|| panic!("StatefulSet {ns}/{name} has {CONFIG_HASH_ANNOTATION}"))
            .to_string()
    }

    /// Number of audit events so far: a mark for [`Self::operator_writes_since`].
    fn mark(&self) -> usize {
        self.cp.audit_events().expect("audit log").len()
    }

    /// Writes by the operator's ServiceAccount since `mark`.
    fn operator_writes_since(&self, mark: usize) -> Vec<Value> {
        let user = self.op.user();
        self.cp
            .audit_events()
            .expect("audit log")
            .into_iter()
            .skip(mark)
            .filter(|e| {
                e["user"]["username"] == user.as_str()
                    && matches!(
                        e["verb"].as_str(),
                        Some("create" | "update" | "patch" | "delete")
                    )
            })
            .collect()
    }

    /// Writes by the operator's ServiceAccount to the kinds it owns since `mark`.
    fn child_writes_since(&self, mark: usize) -> Vec<Value> {
        self.operator_writes_since(mark)
            .into_iter()
            .filter(child_resource)
            .collect()
    }

    /// `kubectl patch --type=merge` of an SmtpRelay, as a user edits one.
    fn patch_relay(&self, ns: &str, name: &str, patch: &str) {
        operator::patch_relay(&self.cp, ns, name, patch);
    }

    fn secret_value(&self, ns: &str, name: &str, key: &str) -> Option<String> {
        let s = self.get(ns, "secret", name)?;
        s["data"][key].as_str().map(b64_decode)
    }

    /// Reconciles of `relay` logged by the operator's current run.
    /// Waits until the operator neither writes nor finishes a reconcile of `relay` for 1.5 s: the
    /// follow-up reconciles of an earlier step (its own writes, the StatefulSet controller's
    /// status) are over. kube-runtime folds a new trigger into a reconcile already waiting for the
    /// same relay, so a step that checks *which* watch triggered a reconcile starts from here.
    fn wait_quiet(&self, relay: &str) {
        self.op.wait_for(CONVERGE, "the operator to go quiet", || {
            let m = self.mark();
            let n = self.reconciles(relay);
            std::thread::sleep(Duration::from_millis(1500));
            (self.operator_writes_since(m).is_empty() && self.reconciles(relay) == n).then_some(())
        });
    }

    /// The triggers kube-runtime logged for the reconciles of `relay` in this run.
    fn reconcile_reasons(&self, ns: &str, relay: &str) -> Vec<String> {
        let object = format!("object.ref=SmtpRelay.v1alpha1.smtprelay.dev/{relay}.{ns}");
        self.op
            .current_logs()
            .lines()
            .filter(|l| l.contains(&object))
            .filter_map(|l| l.split("object.reason=").nth(1))
            .filter_map(|r| r.split("}:").next())
            .map(str::to_string)
            .fold(Vec::new(), |mut reasons, r| {
                if reasons.last() != Some(&r) {
                    reasons.push(r);
                }
                reasons
            })
    }

    fn reconciles(&self, relay: &str) -> usize {
        self.op
            .current_logs()
            .matches(&format!("reconciled relay={relay}"))
            .count()
    }
}

fn describe(events: &[Value]) -> String {
    events
        .iter()
        .map(|e| {
            format!(
                "{} {} {}/{} ({})",
                e["verb"].as_str().unwrap_or(""),
                e["objectRef"]["resource"].as_str().unwrap_or(""),
                e["objectRef"]["namespace"].as_str().unwrap_or(""),
                e["objectRef"]["name"].as_str().unwrap_or(""),
                e["objectRef"]["subresource"].as_str().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// What an example should produce.
struct Expect {
    ns: &'static str,
    name: &'static str,
    relayhost_secret: bool,
    sasl_users: bool,
    pdb: bool,
}

/// Each phase is a named test (`cargo test --test operator_lifecycle -- --list`); they run in
/// order over one control plane and one operator, started by the first phase that runs and
/// stopped once every phase is done. Each has its own namespace: one that fails does not stop
/// the next.
fn main() -> std::process::ExitCode {
    let phases: [Phase<Ctx>; 10] = [
        ("examples", examples),
        ("update_and_noop", update_and_noop),
        ("rotation", rotation),
        ("bad_references", bad_references),
        ("name_conflict", name_conflict),
        ("apply_refused", apply_refused),
        ("restart_mid_flight", restart_mid_flight),
        ("autoscaler", autoscaler),
        ("deletion_and_retention", deletion),
        ("clean_log", clean_log),
    ];
    phases::run(Order::Independent, Ctx::start, &phases)
}

const PDB_RELAY: &str = r#"
apiVersion: v1
kind: Secret
metadata:
  name: upstream-login
stringData:
  username: pdb-login-4bq
  password: Pdb-Secret-Value-7Yh2
---
apiVersion: smtprelay.dev/v1alpha1
kind: SmtpRelay
metadata:
  name: ha
spec:
  domain: example.org
  networks: ["10.0.0.0/24"]
  replicas: 2
  relayhost:
    host: mx.example.org
    port: 587
    credentialsSecretRef:
      name: upstream-login
    tls:
      level: encrypt      # chosen: encrypted, the relayhost unverified (flagged)
  storage:
    size: 100Mi
    retention:
      whenDeleted: Delete
"#;

/// Every example becomes its children, owned by the relay, with status; no Secret value leaks.
#[allow(
    clippy::too_many_lines,
    reason = "one phase, step by step: its steps share their state"
)]
fn examples(ctx: &mut Ctx) {
    let cp = &ctx.cp;
    // An example after the Secrets it references, as its comments tell users to create them:
    // the examples hold none; the tests' placeholders are in operator/tests/example-secrets/.
    let with_secrets = |stem: &str| {
        read(&format!("operator/tests/example-secrets/{stem}.yaml"))
            + "---\n"
            + &read(&format!("charts/smtp-relay-operator/examples/{stem}.yaml"))
    };
    let cases = [
        (
            "ex-unauth",
            read("charts/smtp-relay-operator/examples/unauthenticated-relay.yaml"),
        ),
        ("ex-auth", with_secrets("authenticated-proxy")),
        ("ex-existing", with_secrets("existing-credentials")),
        (
            "yaml-unauth",
            read("operator/yaml/relay-unauthenticated.yaml"),
        ),
        ("yaml-sasl", read("operator/yaml/relay-sasl-proxy.yaml")),
        ("ha", PDB_RELAY.to_string()),
    ];
    for (ns, yaml) in &cases {
        operator::create_namespace(cp, ns);
        operator::apply(cp, ns, yaml);
    }
    let expects = [
        Expect {
            ns: "ex-unauth",
            name: "smtp-relay",
            relayhost_secret: false,
            sasl_users: false,
            pdb: false,
        },
        Expect {
            ns: "ex-auth",
            name: "smtp-relay-auth",
            relayhost_secret: true,
            sasl_users: true,
            pdb: false,
        },
        Expect {
            ns: "ex-existing",
            name: "smtp-relay-existing",
            relayhost_secret: true,
            sasl_users: true,
            pdb: false,
        },
        Expect {
            ns: "yaml-unauth",
            name: "smtp-relay",
            relayhost_secret: false,
            sasl_users: false,
            pdb: false,
        },
        Expect {
            ns: "yaml-sasl",
            name: "smtp-relay-auth",
            relayhost_secret: true,
            sasl_users: true,
            pdb: false,
        },
        Expect {
            ns: "ha",
            name: "ha",
            relayhost_secret: true,
            sasl_users: false,
            pdb: true,
        },
    ];
    for e in &expects {
        let (ns, name) = (e.ns, e.name);
        let t = Instant::now();
        ctx.wait_applied(ns, name);
        // No pods run (no nodes): not Ready, for want of pods, with the inputs all fine.
        let relay = ctx.wait_ready_reason(ns, name, &["PodsNotReady", "RolloutInProgress"]);
        let ready = condition(&relay, "Ready").unwrap();
        assert_eq!(ready["status"], "False", "{ns}/{name}: {ready}");
        assert!(
            ready["message"].as_str().unwrap().contains("pods"),
            "{ns}/{name}: {ready}"
        );
        for c in relay["status"]["conditions"].as_array().unwrap() {
            assert_eq!(c["observedGeneration"], relay["metadata"]["generation"]);
            assert!(c["reason"].as_str().is_some_and(|r| !r.is_empty()), "{c}");
            assert!(c["lastTransitionTime"].is_string(), "{c}");
        }
        let port = relay["spec"]["service"]["port"].as_i64().unwrap_or(25);
        assert_eq!(
            relay["status"]["endpoint"],
            format!("{name}.{ns}.svc:{port}"),
            "{ns}/{name} endpoint"
        );
        let hash = relay["status"]["configHash"].as_str().unwrap();
        assert!(hash.len() >= 16, "{ns}/{name} configHash {hash}");
        assert_eq!(
            ctx.template_hash(ns, name),
            hash,
            "{ns}/{name}: pod template config hash = status.configHash"
        );
        let relay = ctx.relay(ns, name);

        let mut wanted = vec![
            ("configmap", format!("{name}-config")),
            ("service", name.to_string()),
            ("service", format!("{name}-headless")),
            ("statefulset", name.to_string()),
        ];
        if e.relayhost_secret {
            wanted.push(("secret", format!("{name}-relayhost")));
        }
        if e.sasl_users {
            wanted.push(("secret", format!("{name}-sasl-users")));
            // Issue 26: the certificate the operator issues, signed by the relay's CA, whose
            // key only the operator reads and whose certificate clients are given.
            wanted.push(("secret", format!("{name}-tls")));
            wanted.push(("secret", format!("{name}-ca-key")));
            wanted.push(("configmap", format!("{name}-ca")));
            assert_issued_certificate_and_its_ca(ctx, ns, name);
        }
        if e.pdb {
            wanted.push(("poddisruptionbudget", name.to_string()));
        } else {
            assert!(
                ctx.get(ns, "poddisruptionbudget", name).is_none(),
                "{ns}/{name}: no PodDisruptionBudget with one replica"
            );
        }
        for (kind, child) in &wanted {
            let obj = ctx.must(ns, kind, child);
            assert!(
                controlled_by(&obj, &relay),
                "{kind} {ns}/{child} has a controller owner reference to the SmtpRelay: {}",
                obj["metadata"]["ownerReferences"]
            );
        }
        // Everything labelled as this relay's is owned by it (no orphans, no strays), but its
        // drain guard, owned by nothing on purpose, which names the relay it guards.
        for kind in ["configmaps", "secrets", "services", "statefulsets", "pdb"] {
            let selector = format!(
                "app.kubernetes.io/managed-by=smtp-relay-operator,app.kubernetes.io/instance={name}"
            );
            let out = cp.kubectl_ok(["get", kind, "-n", ns, "-l", &selector, "-o", "json"]);
            let list: Value = serde_json::from_str(&out).unwrap();
            for obj in list["items"].as_array().unwrap() {
                if obj["metadata"]["name"] == format!("{name}-drain-guard") {
                    assert_eq!(
                        obj["metadata"]["annotations"]["smtprelay.dev/guards-relay-uid"],
                        relay["metadata"]["uid"],
                        "{ns}/{name}'s drain guard names it"
                    );
                    assert!(obj["metadata"]["ownerReferences"].is_null());
                    continue;
                }
                assert!(
                    controlled_by(obj, &relay),
                    "{kind} {ns}/{} is labelled as the relay's but not owned by it",
                    obj["metadata"]["name"]
                );
            }
        }
        // The copy holds the source's values.
        if e.relayhost_secret {
            let cred = &relay["spec"]["relayhost"]["credentialsSecretRef"];
            let src = cred["name"].as_str().unwrap();
            let pk = cred["passwordKey"].as_str().unwrap_or("password");
            assert_eq!(
                ctx.secret_value(ns, &format!("{name}-relayhost"), "password"),
                ctx.secret_value(ns, src, pk),
                "{ns}/{name}: the owned relayhost Secret copies the password"
            );
        }
        // Issue 26: with a login, a level that proves nothing is flagged, once, with a
        // Warning Event; the default (secure) is not.
        if e.relayhost_secret {
            let level = relay["spec"]["relayhost"]["tls"]["level"].as_str();
            let verified = condition(&relay, "RelayhostVerified").unwrap();
            if matches!(level, Some("none" | "may" | "encrypt" | "dane")) {
                assert_eq!(verified["status"], "False", "{ns}/{name}: {verified}");
                assert_eq!(verified["reason"], "UnverifiedRelayhost");
                wait_warning_event(ctx, ns, name, "UnverifiedRelayhost", "set secure");
            } else {
                assert_eq!(verified["status"], "True", "{ns}/{name}: {verified}");
            }
        }
        let pdb_replicas = relay["spec"]["replicas"].as_i64().unwrap();
        let sts = ctx.must(ns, "statefulset", name);
        assert_eq!(sts["spec"]["replicas"].as_i64(), Some(pdb_replicas));
        // The statefulset controller created the queue claims from the claim template.
        for i in 0..pdb_replicas {
            ctx.op.wait_for(CONVERGE, "the queue PVC", || {
                ctx.get(ns, "pvc", &format!("spool-{name}-{i}"))
            });
        }
        assert_no_secret_leak(ctx, ns, name);
        eprintln!("  {ns}/{name} checked in {:?}", t.elapsed());
    }
}

/// No value of a user Secret in the namespace appears in the ConfigMaps, the relay's status,
/// the namespace's Events or the operator's log.
/// Issue 26: a relay with SASL users and no `tlsSecretRef` gets a certificate signed by its own
/// CA: `<name>-ca` holds the CA's certificate and no key (named in `status.caConfigMap`), the
/// chain in `tls.crt` of `<name>-tls` ends in it, and no pod mounts `<name>-ca-key`.
fn assert_issued_certificate_and_its_ca(ctx: &Ctx, ns: &str, name: &str) {
    let relay = ctx.relay(ns, name);
    assert_eq!(
        relay["status"]["caConfigMap"],
        format!("{name}-ca"),
        "{ns}/{name}: status names the CA clients trust"
    );
    let ca = ctx.must(ns, "configmap", &format!("{name}-ca"));
    let ca = ca["data"]["ca.crt"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        ca.starts_with("-----BEGIN CERTIFICATE-----") && !ca.contains("PRIVATE KEY"),
        "{ns}/{name}-ca holds the CA's certificate, no key"
    );
    let chain = ctx
        .secret_value(ns, &format!("{name}-tls"), "tls.crt")
        .unwrap_or_default();
    assert_eq!(
        chain.matches("BEGIN CERTIFICATE").count(),
        2,
        "{ns}/{name}: leaf + CA"
    );
    assert!(
        chain.ends_with(&ca),
        "{ns}/{name}: the chain ends in the published CA"
    );
    assert_eq!(
        ctx.secret_value(ns, &format!("{name}-ca-key"), "ca.crt")
            .as_deref(),
        Some(ca.as_str())
    );
    let sts = ctx.must(ns, "statefulset", name).to_string();
    assert!(
        !sts.contains(&format!("{name}-ca-key")),
        "{ns}/{name}: no pod mounts the CA's key"
    );
}

fn assert_no_secret_leak(ctx: &Ctx, ns: &str, relay: &str) {
    let mut values = BTreeSet::new();
    // Every Secret's: the user's, the owned copies and the config-hash key.
    for s in list_json(&ctx.cp, ns, "secrets") {
        if let Some(data) = s["data"].as_object() {
            for v in data.values() {
                let v = b64_decode(v.as_str().unwrap_or(""));
                if v.len() >= 6 {
                    values.insert(v);
                }
            }
        }
    }
    let mut haystacks = vec![
        (
            "ConfigMaps".to_string(),
            serde_json::to_string(&list_json(&ctx.cp, ns, "configmaps")).unwrap(),
        ),
        (
            "status".to_string(),
            ctx.relay(ns, relay)["status"].to_string(),
        ),
        (
            "Events".to_string(),
            serde_json::to_string(&list_json(&ctx.cp, ns, "events")).unwrap(),
        ),
        ("operator log".to_string(), ctx.op.logs()),
    ];
    // Annotations of every object (a hash or a copy there would be a leak too).
    // (User objects applied with kubectl carry their own manifest in last-applied-configuration:
    // that is kubectl's doing, so only the operator's objects are looked at.)
    for kind in ["statefulsets", "services", "secrets", "configmaps"] {
        for o in list_json(&ctx.cp, ns, kind) {
            if !o["metadata"]["ownerReferences"].is_array() {
                continue;
            }
            haystacks.push((
                format!("{kind} annotations"),
                o["metadata"]["annotations"].to_string(),
            ));
        }
    }
    for v in &values {
        for (what, text) in &haystacks {
            assert!(
                !text.contains(v.as_str()),
                "a Secret value of {ns} appears in the {what}"
            );
        }
    }
}

/// A spec update rolls the config hash; an identical re-apply, a metadata-only change and a
/// full resync after an operator restart write nothing at all.
#[allow(
    clippy::too_many_lines,
    reason = "one phase, step by step: its steps share their state"
)]
fn update_and_noop(ctx: &mut Ctx) {
    let (ns, name) = ("ex-auth", "smtp-relay-auth");
    let before = ctx.wait_applied(ns, name);
    let old_hash = before["status"]["configHash"].as_str().unwrap().to_string();

    ctx.patch_relay(ns, name, r#"{"spec":{"networks":["127.0.0.0/8","10.0.0.0/24","192.168.7.0/24"],"postconf":{"compatibility_level":"2","smtpd_banner":"$myhostname ESMTP"}}}"#);
    let gen = ctx.relay(ns, name)["metadata"]["generation"].clone();
    let after = ctx.op.wait_for(CONVERGE, "the new config hash", || {
        let r = ctx.relay(ns, name);
        (r["status"]["observedGeneration"] == gen && r["status"]["configHash"] != old_hash.as_str())
            .then_some(r)
    });
    let new_hash = after["status"]["configHash"].as_str().unwrap().to_string();
    assert_eq!(ctx.template_hash(ns, name), new_hash);
    let cm = ctx.must(ns, "configmap", &format!("{name}-config"));
    let cm_text = cm["data"].to_string();
    assert!(
        cm_text.contains("192.168.7.0/24") && cm_text.contains("smtpd_banner"),
        "ConfigMap carries the new spec: {cm_text}"
    );
    // Let the burst settle: the StatefulSet controller updates its status after the new revision.
    ctx.wait_ready_reason(ns, name, &["PodsNotReady", "RolloutInProgress"]);
    ctx.wait_quiet(name);

    // 1. An identical re-apply of the example (as edited) changes nothing server-side.
    let mark = ctx.mark();
    let live = ctx.relay(ns, name);
    let rv = live["metadata"]["resourceVersion"].clone();
    ctx.patch_relay(
        ns,
        name,
        r#"{"spec":{"networks":["127.0.0.0/8","10.0.0.0/24","192.168.7.0/24"]}}"#,
    );
    assert_eq!(
        ctx.relay(ns, name)["metadata"]["resourceVersion"],
        rv,
        "an identical patch is a no-op"
    );
    // 2. A metadata-only change makes the operator reconcile: it must find nothing to write.
    let n = ctx.reconciles(name);
    ctx.cp
        .kubectl_ok(["annotate", "smtprelay", name, "-n", ns, "e2e/poke=1"]);
    ctx.op
        .wait_for(CONVERGE, "a reconcile after the annotation", || {
            (ctx.reconciles(name) > n).then_some(())
        });
    let writes = ctx.operator_writes_since(mark);
    assert!(
        writes.is_empty(),
        "a reconcile with nothing changed wrote:\n{}",
        describe(&writes)
    );

    // 3. A restarted operator resyncs everything: still nothing to write, for any relay.
    let mark = ctx.mark();
    ctx.op.restart().expect("operator restarts");
    let relays: Vec<(String, String)> = [
        "ex-unauth",
        "ex-auth",
        "ex-existing",
        "yaml-unauth",
        "yaml-sasl",
        "ha",
    ]
    .iter()
    .flat_map(|ns| {
        list_json(&ctx.cp, ns, "smtprelays").into_iter().map(|r| {
            (
                ns.to_string(),
                r["metadata"]["name"].as_str().unwrap().to_string(),
            )
        })
    })
    .collect();
    ctx.op.wait_for(
        CONVERGE,
        "a reconcile of every relay after the restart",
        || {
            let logs = ctx.op.current_logs();
            relays
                .iter()
                .all(|(ns, name)| {
                    logs.contains(&format!(
                        "object.ref=SmtpRelay.v1alpha1.smtprelay.dev/{name}.{ns}"
                    ))
                })
                .then_some(())
        },
    );
    // The reconciles logged their start; give each time to finish (all reconciled lines).
    ctx.op
        .wait_for(CONVERGE, "every resync reconcile to finish", || {
            (ctx.op.current_logs().matches("reconciled relay=").count() >= relays.len())
                .then_some(())
        });
    let writes = ctx.operator_writes_since(mark);
    let children: Vec<_> = writes
        .iter()
        .filter(|e| child_resource(e))
        .cloned()
        .collect();
    assert!(
        children.is_empty(),
        "a resync after restart rewrote children:\n{}",
        describe(&children)
    );
    assert!(
        writes.is_empty(),
        "a resync after restart wrote (status or events):\n{}",
        describe(&writes)
    );
    assert_eq!(ctx.template_hash(ns, name), new_hash);

    // Drift: someone changes the pod template's image and the Service's target by hand; the
    // operator puts back what it set (the resync above shows it writes nothing when nothing
    // drifted).
    ctx.cp.kubectl_ok([
        "patch",
        "statefulset",
        "-n",
        ns,
        name,
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/template/spec/containers/0/image","value":"edited/by-hand:1"}]"#,
    ]);
    ctx.cp.kubectl_ok([
        "patch",
        "service",
        "-n",
        ns,
        name,
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/ports/0/targetPort","value":"metrics"}]"#,
    ]);
    ctx.op.wait_for(CONVERGE, "the hand edits reverted", || {
        let sts = ctx.must(ns, "statefulset", name);
        let image = &sts["spec"]["template"]["spec"]["containers"][0]["image"];
        let svc = ctx.must(ns, "service", name);
        (image != "edited/by-hand:1" && svc["spec"]["ports"][0]["targetPort"] == "smtp")
            .then_some(())
    });
    assert_eq!(ctx.template_hash(ns, name), new_hash);
}

/// Changing the relayhost credentials updates the owned copy and the config hash at once;
/// changing the SASL users updates their owned copy and not the hash.
fn rotation(ctx: &mut Ctx) {
    let (ns, name) = ("ex-auth", "smtp-relay-auth");
    let relay = ctx.wait_applied(ns, name);
    let old_hash = relay["status"]["configHash"].as_str().unwrap().to_string();
    let owned = format!("{name}-relayhost");
    // The step before left follow-up reconciles of this relay; one still waiting when the Secret
    // changes would absorb the Secret's trigger (and its logged reason).
    ctx.wait_quiet(name);

    let t = Instant::now();
    operator::apply(
        &ctx.cp,
        ns,
        r#"
apiVersion: v1
kind: Secret
metadata:
  name: relayhost-credentials
type: Opaque
stringData:
  username: sasl-user-login
  password: Rotated-Pass-Kj38x
"#,
    );
    ctx.op
        .wait_for(AT_ONCE, "the rotated password in the owned Secret", || {
            (ctx.secret_value(ns, &owned, "password").as_deref() == Some("Rotated-Pass-Kj38x"))
                .then_some(())
        });
    let new_hash = ctx.op.wait_for(AT_ONCE, "a new config hash", || {
        let h = ctx.template_hash(ns, name);
        (h != old_hash).then_some(h)
    });
    eprintln!("relayhost password rotated in {:?}", t.elapsed());
    ctx.op
        .wait_for(CONVERGE, "status.configHash to follow", || {
            (ctx.relay(ns, name)["status"]["configHash"] == new_hash.as_str()).then_some(())
        });
    let reasons = ctx.reconcile_reasons(ns, name);
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("related object updated: Secret.v1./relayhost-credentials.ex-auth")),
        "the reconcile was triggered by the Secret watch; the triggers logged: {reasons:#?}"
    );

    // SASL users: the owned copy follows, the pods keep their template (hot reload).
    let sts_before = ctx.must(ns, "statefulset", name);
    let t = Instant::now();
    operator::apply(
        &ctx.cp,
        ns,
        r#"
apiVersion: v1
kind: Secret
metadata:
  name: smtp-relay-auth-users
type: Opaque
stringData:
  app1: change-me-app1
  app2: change-me-app2
  app3: New-User-Pass-3Lq
"#,
    );
    let users = format!("{name}-sasl-users");
    ctx.op
        .wait_for(AT_ONCE, "the new SASL user in the owned Secret", || {
            (ctx.secret_value(ns, &users, "app3").as_deref() == Some("New-User-Pass-3Lq"))
                .then_some(())
        });
    eprintln!("SASL user added in {:?}", t.elapsed());
    ctx.wait_applied(ns, name);
    assert_eq!(
        ctx.template_hash(ns, name),
        new_hash,
        "SASL users do not change the hash"
    );
    let sts_after = ctx.must(ns, "statefulset", name);
    assert_eq!(
        sts_after["metadata"]["generation"], sts_before["metadata"]["generation"],
        "the StatefulSet spec is untouched by a SASL user change"
    );
    assert_eq!(
        ctx.relay(ns, name)["status"]["configHash"],
        new_hash.as_str()
    );
    assert_no_secret_leak(ctx, ns, name);
}

/// Resource versions of what runs: the StatefulSet, its claims, the owned Secrets and ConfigMap.
fn running_versions(ctx: &Ctx, ns: &str, name: &str) -> Vec<(String, Value)> {
    let mut v = Vec::new();
    for (kind, obj) in [
        ("statefulset", name.to_string()),
        ("pvc", format!("spool-{name}-0")),
        ("secret", format!("{name}-relayhost")),
        ("secret", format!("{name}-sasl-users")),
        ("configmap", format!("{name}-config")),
    ] {
        let o = ctx.must(ns, kind, &obj);
        v.push((
            format!("{kind}/{obj}"),
            o["metadata"]["resourceVersion"].clone(),
        ));
    }
    v
}

/// A missing Secret, then a Secret without the key: Ready=False naming them, a Warning Event,
/// nothing that runs is touched; fixing the Secret recovers.
#[allow(
    clippy::too_many_lines,
    reason = "one phase, step by step: its steps share their state"
)]
fn bad_references(ctx: &mut Ctx) {
    let (ns, name) = ("yaml-sasl", "smtp-relay-auth");
    ctx.wait_ready_reason(ns, name, &["PodsNotReady", "RolloutInProgress"]);
    let hash = ctx.relay(ns, name)["status"]["configHash"].clone();
    let before = running_versions(ctx, ns, name);
    let mark = ctx.mark();

    // 1. The reference names a Secret that does not exist.
    ctx.patch_relay(
        ns,
        name,
        r#"{"spec":{"relayhost":{"credentialsSecretRef":{"name":"rotated-login"}}}}"#,
    );
    let r = ctx.wait_ready_reason(ns, name, &["SecretNotFound"]);
    let ready = condition(&r, "Ready").unwrap().clone();
    assert_eq!(ready["status"], "False");
    let msg = ready["message"].as_str().unwrap();
    assert!(
        msg.contains("rotated-login"),
        "message names the Secret: {msg}"
    );
    let sr = condition(&r, "SecretsResolved").unwrap();
    assert_eq!(sr["status"], "False", "{sr}");
    assert_eq!(sr["reason"], "SecretNotFound");
    assert_eq!(
        r["status"]["configHash"], hash,
        "status keeps the running hash"
    );
    wait_warning_event(ctx, ns, name, "SecretNotFound", "rotated-login");
    // A second missing Secret: same reason, another message, and the Event says so (not the
    // first Secret's name, as a series of the first Event would).
    ctx.patch_relay(
        ns,
        name,
        r#"{"spec":{"relayhost":{"credentialsSecretRef":{"name":"misspelt-login"}}}}"#,
    );
    let r = ctx
        .op
        .wait_for(CONVERGE, "status naming misspelt-login", || {
            let r = ctx.relay(ns, name);
            condition(&r, "Ready")?["message"]
                .as_str()?
                .contains("misspelt-login")
                .then_some(r)
        });
    assert_eq!(condition(&r, "Ready").unwrap()["reason"], "SecretNotFound");
    wait_warning_event(ctx, ns, name, "SecretNotFound", "misspelt-login");
    ctx.patch_relay(
        ns,
        name,
        r#"{"spec":{"relayhost":{"credentialsSecretRef":{"name":"rotated-login"}}}}"#,
    );
    ctx.wait_ready_reason(ns, name, &["SecretNotFound"]);

    // 2. The Secret appears without the password key.
    operator::apply(
        &ctx.cp,
        ns,
        r#"
apiVersion: v1
kind: Secret
metadata:
  name: rotated-login
stringData:
  username: rotated-user
"#,
    );
    let r = ctx.wait_ready_reason(ns, name, &["SecretKeyMissing"]);
    let msg = condition(&r, "Ready").unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("rotated-login") && msg.contains("password"),
        "message names the Secret and the key: {msg}"
    );
    wait_warning_event(ctx, ns, name, "SecretKeyMissing", "password");

    // Nothing that runs was touched.
    assert_eq!(
        running_versions(ctx, ns, name),
        before,
        "what runs is untouched"
    );
    let writes = ctx.child_writes_since(mark);
    assert!(
        writes.is_empty(),
        "the operator wrote children while references were broken:\n{}",
        describe(&writes)
    );
    assert_eq!(ctx.template_hash(ns, name), hash.as_str().unwrap());

    // 3. Fixed: conditions recover, the new password is copied.
    operator::apply(
        &ctx.cp,
        ns,
        r#"
apiVersion: v1
kind: Secret
metadata:
  name: rotated-login
stringData:
  username: rotated-user
  password: Fixed-Pass-Wq27
"#,
    );
    let r = ctx.wait_ready_reason(ns, name, &["PodsNotReady", "RolloutInProgress"]);
    assert_eq!(condition(&r, "SecretsResolved").unwrap()["status"], "True");
    assert_eq!(
        ctx.secret_value(ns, &format!("{name}-relayhost"), "password")
            .as_deref(),
        Some("Fixed-Pass-Wq27")
    );
    assert_ne!(r["status"]["configHash"], hash, "new credentials, new hash");
    assert_eq!(
        ctx.template_hash(ns, name),
        r["status"]["configHash"].as_str().unwrap()
    );
    assert_no_secret_leak(ctx, ns, name);

    // 4. A storage change the StatefulSet cannot take is refused by the operator, not applied.
    let before = running_versions(ctx, ns, name);
    let mark = ctx.mark();
    ctx.patch_relay(ns, name, r#"{"spec":{"storage":{"size":"5Gi"}}}"#);
    let r = ctx.wait_ready_reason(ns, name, &["InvalidSpec"]);
    let cv = condition(&r, "ConfigValid").unwrap();
    assert_eq!(cv["status"], "False", "{cv}");
    assert!(
        cv["message"].as_str().unwrap().contains("spec.storage"),
        "the message names the field: {cv}"
    );
    wait_warning_event(ctx, ns, name, "InvalidSpec", "spec.storage");
    assert_eq!(
        running_versions(ctx, ns, name),
        before,
        "what runs is untouched"
    );
    let writes = ctx.child_writes_since(mark);
    assert!(writes.is_empty(), "wrote children:\n{}", describe(&writes));
    ctx.patch_relay(ns, name, r#"{"spec":{"storage":{"size":"2Gi"}}}"#);
    let r = ctx.wait_ready_reason(ns, name, &["PodsNotReady", "RolloutInProgress"]);
    assert_eq!(condition(&r, "ConfigValid").unwrap()["status"], "True");

    // 5. Input the API server admits but the relay would refuse (issue 9: before, each rolled
    // the pods into a configuration error): judged by the relay's own rules, refused naming the
    // field, nothing written. The corpus of such inputs is operator/tests/parity.yaml.
    let before = running_versions(ctx, ns, name);
    let mark = ctx.mark();
    for (patch, field, problem) in [
        (
            r#"{"spec":{"networks":["10.0.0.1/24"]}}"#,
            "spec.networks",
            "did you mean 10.0.0.0/24?",
        ),
        (
            r#"{"spec":{"networks":["10.0.0.0/24"],"postconf":{"message_size_limt":"1"}}}"#,
            "spec.postconf.message_size_limt",
            "is not a Postfix parameter",
        ),
    ] {
        ctx.patch_relay(ns, name, patch);
        let r = ctx
            .op
            .wait_for(CONVERGE, &format!("InvalidSpec naming {field}"), || {
                let r = ctx.relay(ns, name);
                let m = condition(&r, "Ready")?["message"].as_str()?.to_string();
                (m.contains(field) && m.contains(problem)).then_some(r)
            });
        assert_eq!(condition(&r, "Ready").unwrap()["reason"], "InvalidSpec");
        wait_warning_event(ctx, ns, name, "InvalidSpec", problem);
    }
    assert_eq!(
        running_versions(ctx, ns, name),
        before,
        "what runs is untouched"
    );
    let writes = ctx.child_writes_since(mark);
    assert!(writes.is_empty(), "wrote children:\n{}", describe(&writes));
    ctx.patch_relay(ns, name, r#"{"spec":{"postconf":null}}"#);
    let r = ctx.wait_ready_reason(ns, name, &["PodsNotReady", "RolloutInProgress"]);
    assert_eq!(condition(&r, "ConfigValid").unwrap()["status"], "True");
}

/// An object the user made under a child's name (here a ConfigMap named like the relay's own)
/// is never adopted: the relay reports NameConflict naming it, publishes a Warning Event and
/// writes no child; once the user removes it, the relay converges.
fn name_conflict(ctx: &mut Ctx) {
    let (ns, name) = ("clash", "clash");
    operator::create_namespace(&ctx.cp, ns);
    operator::apply(
        &ctx.cp,
        ns,
        r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: clash-config
data:
  mine: "the user's, not the operator's"
"#,
    );
    let users = ctx.must(ns, "configmap", "clash-config");
    let mark = ctx.mark();
    operator::apply(
        &ctx.cp,
        ns,
        r#"
apiVersion: smtprelay.dev/v1alpha1
kind: SmtpRelay
metadata:
  name: clash
spec:
  domain: example.org
  networks: ["10.2.0.0/16"]
  relayhost: {host: mx.example.org}
"#,
    );
    let r = ctx.wait_ready_reason(ns, name, &["NameConflict"]);
    let ready = condition(&r, "Ready").unwrap();
    assert_eq!(ready["status"], "False", "{ready}");
    let msg = ready["message"].as_str().unwrap();
    assert!(
        msg.contains("ConfigMap clash/clash-config"),
        "the message names the object in the way: {msg}"
    );
    wait_warning_event(
        ctx,
        ns,
        name,
        "NameConflict",
        "ConfigMap clash/clash-config",
    );
    let after = ctx.must(ns, "configmap", "clash-config");
    assert_eq!(
        after["metadata"]["resourceVersion"], users["metadata"]["resourceVersion"],
        "the user's ConfigMap is untouched"
    );
    assert!(!controlled_by(&after, &r), "not adopted: {after}");
    assert!(
        ctx.get(ns, "statefulset", name).is_none(),
        "no relay runs in a half-built state"
    );
    let writes = ctx.child_writes_since(mark);
    assert!(writes.is_empty(), "wrote children:\n{}", describe(&writes));

    // The user removes their ConfigMap: the relay takes the name and converges.
    ctx.cp
        .kubectl_ok(["delete", "configmap", "clash-config", "-n", ns]);
    let r = ctx.wait_ready_reason(ns, name, &["PodsNotReady", "RolloutInProgress"]);
    assert!(controlled_by(
        &ctx.must(ns, "configmap", "clash-config"),
        &r
    ));
    // The spec sets no mode: the Mode column shows the one in force, not a blank.
    assert_eq!(r["status"]["mode"], "Strict");
    let table = ctx.cp.kubectl_ok(["get", "smtpr", name, "-n", ns]);
    let (head, row) = table.trim().split_once('\n').expect("a header and a row");
    let mode_at = head.find("MODE").expect("a MODE column");
    assert!(
        row.get(mode_at..).is_some_and(|r| r.starts_with("Strict")),
        "kubectl get shows the mode in force:\n{table}"
    );
    ctx.cp
        .kubectl_ok(["delete", "namespace", ns, "--wait=false"]);
}

/// A platform's admission policy (a ValidatingAdmissionPolicy, as Kyverno or Gatekeeper would
/// do with a webhook) refuses the relay's StatefulSet: status names the object and the policy's
/// message (Ready=False, ApplyRefused, kstatus Stalled), a Warning Event says so; once the
/// policy allows it, the relay converges by itself.
fn apply_refused(ctx: &mut Ctx) {
    let (ns, name) = ("policed", "policed");
    operator::create_namespace(&ctx.cp, ns);
    const POLICY: &str = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata:
  name: statefulsets-need-a-team-label
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
      - apiGroups: [apps]
        apiVersions: [v1]
        operations: [CREATE, UPDATE]
        resources: [statefulsets]
    namespaceSelector:
      matchLabels: {kubernetes.io/metadata.name: policed}
  validations:
    - expression: "has(object.metadata.labels) && 'team' in object.metadata.labels"
      message: "every StatefulSet needs a team label"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata:
  name: statefulsets-need-a-team-label
spec:
  policyName: statefulsets-need-a-team-label
  validationActions: [Deny]
"#;
    let out = ctx.cp.kubectl_stdin(["apply", "-f", "-"], POLICY);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The policy is in force once a StatefulSet of ours is refused by it.
    let probe = r#"{"apiVersion":"apps/v1","kind":"StatefulSet","metadata":{"name":"probe"},"spec":{"selector":{"matchLabels":{"a":"b"}},"serviceName":"x","template":{"metadata":{"labels":{"a":"b"}},"spec":{"containers":[{"name":"c","image":"i"}]}}}}"#;
    ctx.op.wait_for(CONVERGE, "the policy in force", || {
        let out = ctx
            .cp
            .kubectl_stdin(["apply", "--dry-run=server", "-n", ns, "-f", "-"], probe);
        String::from_utf8_lossy(&out.stderr)
            .contains("every StatefulSet needs a team label")
            .then_some(())
    });
    operator::apply(
        &ctx.cp,
        ns,
        r#"
apiVersion: smtprelay.dev/v1alpha1
kind: SmtpRelay
metadata:
  name: policed
spec:
  domain: example.org
  networks: ["10.2.0.0/16"]
  relayhost: {host: mx.example.org}
"#,
    );
    let r = ctx.wait_ready_reason(ns, name, &["ApplyRefused"]);
    let ready = condition(&r, "Ready").unwrap();
    let msg = ready["message"].as_str().unwrap();
    assert!(
        msg.contains("StatefulSet policed/policed")
            && msg.contains("every StatefulSet needs a team label"),
        "the object and the policy's message: {msg}"
    );
    let stalled = condition(&r, "Stalled").unwrap();
    assert_eq!(
        (&stalled["status"], &stalled["reason"]),
        (&"True".into(), &"ApplyRefused".into())
    );
    wait_warning_event(ctx, ns, name, "ApplyRefused", "StatefulSet policed/policed");

    // The platform team relaxes the policy: the relay converges without anyone touching it.
    ctx.cp.kubectl_ok([
        "delete",
        "validatingadmissionpolicybinding",
        "statefulsets-need-a-team-label",
    ]);
    ctx.cp.kubectl_ok([
        "delete",
        "validatingadmissionpolicy",
        "statefulsets-need-a-team-label",
    ]);
    ctx.wait_ready_reason(ns, name, &["PodsNotReady", "RolloutInProgress"]);
    assert!(ctx.get(ns, "statefulset", name).is_some());
    ctx.cp
        .kubectl_ok(["delete", "namespace", ns, "--wait=false"]);
}

fn wait_warning_event(ctx: &Ctx, ns: &str, relay: &str, reason: &str, mentions: &str) {
    wait_event(ctx, ns, relay, "Warning", reason, mentions);
}

fn wait_normal_event(ctx: &Ctx, ns: &str, relay: &str, reason: &str) {
    wait_event(ctx, ns, relay, "Normal", reason, "");
}

fn wait_event(ctx: &Ctx, ns: &str, relay: &str, type_: &str, reason: &str, mentions: &str) {
    ctx.op
        .wait_for(CONVERGE, &format!("a {type_} Event {reason}"), || {
            list_json(&ctx.cp, ns, "events").into_iter().find(|e| {
                e["type"] == type_
                    && e["reason"] == reason
                    && e["involvedObject"]["kind"] == "SmtpRelay"
                    && e["involvedObject"]["name"] == relay
                    && e["message"].as_str().is_some_and(|m| m.contains(mentions))
            })
        });
}

const FLIGHT_RELAY: &str = r#"
apiVersion: v1
kind: Secret
metadata:
  name: login
stringData:
  username: flight-user
  password: Flight-Pass-Zr81
---
apiVersion: smtprelay.dev/v1alpha1
kind: SmtpRelay
metadata:
  name: flight
spec:
  domain: example.com
  networks: ["10.1.0.0/16"]
  replicas: 2
  relayhost:
    host: relay.example.com
    credentialsSecretRef:
      name: login
"#;

/// A relay of one replica for docs/operations.md's HorizontalPodAutoscaler.
const SCALED_RELAY: &str = r#"
apiVersion: smtprelay.dev/v1alpha1
kind: SmtpRelay
metadata:
  name: smtp-relay
spec:
  domain: example.com
  networks: ["10.1.0.0/16"]
  relayhost:
    host: relay.example.com
"#;

/// How long the controller manager's HorizontalPodAutoscaler may take to act on a new
/// autoscaler for a new kind: its discovery of the CRD's scale subresource is refreshed every
/// 30 s, and each autoscaler is synced every 15 s.
const HPA_ACTS: Duration = Duration::from_secs(120);

/// docs/operations.md's HorizontalPodAutoscaler (the block marked `run: autoscaler`), applied
/// as written to a relay of one replica: the real controller manager reads the relay through
/// the scale subresource and raises it to `minReplicas` (which needs no metric; no metrics
/// adapter runs here, and the autoscaler says so), and the operator follows with the
/// StatefulSet.
fn autoscaler(ctx: &mut Ctx) {
    let ns = "mail";
    operator::create_namespace(&ctx.cp, ns);
    operator::apply(&ctx.cp, ns, SCALED_RELAY);
    ctx.wait_applied(ns, "smtp-relay");
    let page = read("docs/operations.md");
    let blocks = smtp_relay_e2e::doc_blocks::marked_blocks(&page, "autoscaler")
        .unwrap_or_else(|e| panic!("docs/operations.md's autoscaler block: {e}"));
    let [block] = blocks.as_slice() else {
        panic!("docs/operations.md has one block marked autoscaler: {blocks:?}");
    };
    assert_eq!(block.lang, "yaml");
    operator::apply(&ctx.cp, ns, &block.code);
    let min = serde_yaml::from_str::<Value>(&block.code).unwrap()["spec"]["minReplicas"].clone();
    assert_eq!(min, 2);
    ctx.op
        .wait_for(HPA_ACTS, "the autoscaler to scale the relay", || {
            let r = ctx.relay(ns, "smtp-relay");
            let sts = ctx.get(ns, "statefulset", "smtp-relay")?;
            (r["spec"]["replicas"] == min && sts["spec"]["replicas"] == min).then_some(())
        });
    let hpa = ctx.must(ns, "horizontalpodautoscaler", "smtp-relay");
    let reason = |t: &str| {
        hpa["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == t))
            .map(|c| format!("{}={}", c["status"], c["reason"]))
            .unwrap_or_default()
    };
    assert_eq!(hpa["status"]["desiredReplicas"], min, "{hpa}");
    assert!(reason("AbleToScale").starts_with("\"True\""), "{hpa}");
    // Its PodDisruptionBudget, as for any relay of two replicas.
    ctx.op
        .wait_for(CONVERGE, "the PodDisruptionBudget of two replicas", || {
            ctx.get(ns, "poddisruptionbudget", "smtp-relay")
        });
    ctx.cp
        .kubectl_ok(["delete", "horizontalpodautoscaler", "smtp-relay", "-n", ns]);
}

/// The operator killed (SIGKILL) while it applies a new relay, the spec changed while it is
/// down: the next run converges, duplicates nothing and leaves no error in status. (An API
/// server outage is e2e/tests/operator_outage.rs.)
#[allow(
    clippy::too_many_lines,
    reason = "one phase, step by step: its steps share their state"
)]
fn restart_mid_flight(ctx: &mut Ctx) {
    let ns = "flight";
    operator::create_namespace(&ctx.cp, ns);
    operator::apply(&ctx.cp, ns, FLIGHT_RELAY);
    // Crash as soon as it starts working on it.
    ctx.op
        .wait_for(CONVERGE, "the operator to start applying", || {
            ctx.op.current_logs().contains("ns=flight").then_some(())
        });
    ctx.op.kill();
    // The spec changes while no operator runs.
    operator::patch_relay(
        &ctx.cp,
        ns,
        "flight",
        r#"{"spec":{"networks":["10.1.0.0/16","10.2.0.0/16"]}}"#,
    );
    ctx.op.resume().expect("operator resumes");
    let r = ctx.wait_ready_reason(ns, "flight", &["PodsNotReady", "RolloutInProgress"]);
    assert_eq!(
        r["status"]["observedGeneration"],
        r["metadata"]["generation"]
    );
    // Stalled is an abnormal-true (kstatus) condition; Ready, Progressing, Reconciling,
    // RelayhostLogin, ConfigProven (a pod's self-check), Delivering (the pods' queues) and
    // UserNamespaced (what the pods report) follow the pods, which never run here.
    for c in r["status"]["conditions"].as_array().unwrap() {
        let healthy = match c["type"].as_str().unwrap_or_default() {
            "Ready" | "Progressing" | "Reconciling" | "RelayhostLogin" | "ConfigProven"
            | "Delivering" | "UserNamespaced" => continue,
            "Stalled" | "Draining" => "False",
            _ => "True",
        };
        assert_eq!(c["status"], healthy, "no error left in status: {c}");
    }
    let hash = r["status"]["configHash"].as_str().unwrap();
    assert_eq!(ctx.template_hash(ns, "flight"), hash);
    let cm = ctx.must(ns, "configmap", "flight-config");
    assert!(cm["data"].to_string().contains("10.2.0.0/16"));
    // Exactly one of each child.
    let selector = "app.kubernetes.io/instance=flight";
    let count = |kind: &str| -> Vec<String> {
        let out = ctx
            .cp
            .kubectl_ok(["get", kind, "-n", ns, "-l", selector, "-o", "name"]);
        out.lines().map(str::to_string).collect()
    };
    assert_eq!(count("statefulsets"), ["statefulset.apps/flight"]);
    assert_eq!(count("configmaps"), ["configmap/flight-config"]);
    assert_eq!(
        count("services"),
        ["service/flight", "service/flight-headless"]
    );
    assert_eq!(
        count("poddisruptionbudgets"),
        ["poddisruptionbudget.policy/flight"]
    );
    assert_eq!(
        count("networkpolicies"),
        ["networkpolicy.networking.k8s.io/flight"]
    );
    let policy = ctx.must(ns, "networkpolicy", "flight");
    let ports: Vec<i64> = policy["spec"]["ingress"]
        .as_array()
        .expect("ingress rules")
        .iter()
        .filter_map(|r| r["ports"][0]["port"].as_i64())
        .collect();
    assert_eq!(ports, [25, 9154], "{policy}");
    // Turned off, the policy goes; the cluster's own policies then decide.
    operator::patch_relay(
        &ctx.cp,
        ns,
        "flight",
        r#"{"spec":{"networkPolicy":{"enabled":false}}}"#,
    );
    ctx.op.wait_for(CONVERGE, "the NetworkPolicy to go", || {
        ctx.get(ns, "networkpolicy", "flight")
            .is_none()
            .then_some(())
    });
    operator::patch_relay(&ctx.cp, ns, "flight", r#"{"spec":{"networkPolicy":null}}"#);
    ctx.op
        .wait_for(CONVERGE, "the NetworkPolicy to come back", || {
            ctx.get(ns, "networkpolicy", "flight").map(drop)
        });
    let secrets = count("secrets");
    assert!(
        secrets.contains(&"secret/flight-relayhost".to_string()),
        "{secrets:?}"
    );
    let pvcs = ctx.cp.kubectl_ok(["get", "pvc", "-n", ns, "-o", "name"]);
    assert_eq!(
        pvcs.lines().collect::<Vec<_>>(),
        [
            "persistentvolumeclaim/spool-flight-0",
            "persistentvolumeclaim/spool-flight-1"
        ]
    );
    assert!(ctx.op.is_running());

    // Down to one replica: the PodDisruptionBudget is deleted (it would block every drain).
    operator::patch_relay(&ctx.cp, ns, "flight", r#"{"spec":{"replicas":1}}"#);
    ctx.op
        .wait_for(CONVERGE, "the PodDisruptionBudget to go", || {
            ctx.get(ns, "poddisruptionbudget", "flight")
                .is_none()
                .then_some(())
        });
    // The departing replica's pod never runs here (no node): its spool cannot be read, so the
    // StatefulSet keeps it, and status says so, until the user gives up.
    let message = ctx
        .op
        .wait_for(CONVERGE, "the drain reported as waiting", || {
            let r = ctx.relay(ns, "flight");
            let c = condition(&r, "Draining")?;
            (c["status"] == "True" && c["reason"] == "DrainWaiting")
                .then(|| c["message"].as_str().unwrap_or_default().to_string())
        });
    assert!(
        message.contains("flight-1 (not running") && message.contains("abandon-drain"),
        "{message}"
    );
    assert_eq!(ctx.must(ns, "statefulset", "flight")["spec"]["replicas"], 2);
    wait_warning_event(ctx, ns, "flight", "DrainWaiting", "flight-1");
    let asked = |ctx: &Ctx| {
        ctx.get(ns, "pod", "flight-1")
            .is_some_and(|p| p["metadata"]["annotations"]["smtprelay.dev/drain"] == "true")
    };
    assert!(asked(ctx), "the departing pod is asked to drain");
    // Scaling up again cancels the drain: the pod never left, so it serves again on its own
    // spool (never two Postfix instances on one).
    let scale = |replicas: u8| {
        operator::patch_relay(
            &ctx.cp,
            ns,
            "flight",
            &format!(r#"{{"spec":{{"replicas":{replicas}}}}}"#),
        )
    };
    scale(2);
    ctx.op.wait_for(CONVERGE, "the drain cancelled", || {
        let r = ctx.relay(ns, "flight");
        (condition(&r, "Draining")?["status"] == "False" && !asked(ctx)).then_some(())
    });
    assert_eq!(ctx.must(ns, "statefulset", "flight")["spec"]["replicas"], 2);
    scale(1);
    ctx.op.wait_for(CONVERGE, "draining again", || {
        let r = ctx.relay(ns, "flight");
        (condition(&r, "Draining")?["status"] == "True" && asked(ctx)).then_some(())
    });
    ctx.cp.kubectl_ok([
        "annotate",
        "smtprelay",
        "flight",
        "-n",
        ns,
        "smtprelay.dev/abandon-drain=true",
    ]);
    ctx.op.wait_for(CONVERGE, "the drain given up", || {
        let r = ctx.relay(ns, "flight");
        let sts = ctx.get(ns, "statefulset", "flight")?;
        (condition(&r, "Draining")?["reason"] == "DrainAbandoned" && sts["spec"]["replicas"] == 1)
            .then_some(())
    });
    wait_warning_event(ctx, ns, "flight", "DrainAbandoned", "flight-1");
    let deletes: Vec<_> = ctx
        .operator_writes_since(0)
        .into_iter()
        .filter(|e| e["verb"] == "delete")
        .collect();
    // The NetworkPolicy when it was turned off, then the PodDisruptionBudget once per
    // scale-down to one replica.
    assert_eq!(
        describe(&deletes),
        [
            "delete networkpolicies flight/flight ()",
            "delete poddisruptionbudgets flight/flight ()",
            "delete poddisruptionbudgets flight/flight ()"
        ]
        .join("\n"),
        "the operator deleted only the NetworkPolicy turned off and the PodDisruptionBudget"
    );
}

/// Deleting a relay removes its children through the garbage collector, after its pods drained
/// when its volumes go too (here given up: the pods never run); queue claims follow
/// `storage.retention.whenDeleted`.
#[allow(
    clippy::too_many_lines,
    reason = "one phase, step by step: its steps share their state"
)]
fn deletion(ctx: &mut Ctx) {
    orphan_delete_leaves_the_relay_running(ctx);
    // "ha" has whenDeleted: Delete (2 claims), and is deleted in the foreground, as Argo CD
    // does: the garbage collector takes the children before the owner. "ex-unauth" keeps the
    // default, Retain, and is deleted in the background.
    let ha_sts_uid = ctx.must("ha", "statefulset", "ha")["metadata"]["uid"].clone();
    ctx.cp.kubectl_ok([
        "delete",
        "smtprelay",
        "ha",
        "-n",
        "ha",
        "--cascade=foreground",
        "--wait=false",
    ]);
    ctx.cp.kubectl_ok([
        "delete",
        "smtprelay",
        "smtp-relay",
        "-n",
        "ex-unauth",
        "--wait=false",
    ]);
    // "ha" is held by its finalizer while its pods drain; they never run here (no node), so
    // the deletion waits, says so, and goes on once the user gives up.
    let r = ctx.relay("ha", "ha");
    assert!(
        r["metadata"]["finalizers"]
            .to_string()
            .contains("smtprelay.dev/drain-queues"),
        "{}",
        r["metadata"]
    );
    let message = ctx
        .op
        .wait_for(CONVERGE, "the deletion held for the drain", || {
            let r = ctx.get("ha", "smtprelay", "ha")?;
            let c = condition(&r, "Draining")?;
            (c["status"] == "True" && c["reason"] == "DrainWaiting")
                .then(|| c["message"].as_str().unwrap_or_default().to_string())
        });
    assert!(
        message.contains("ha-0 (not running") && message.contains("at most"),
        "{message}"
    );
    // The garbage collector has finished with the relay's own dependents: its Services are
    // gone; the StatefulSet, its pods' ConfigMap and both claims stand, the guard their owner.
    ctx.op.wait_for(
        CONVERGE,
        "the foreground delete to take what the relay alone owned",
        || {
            let r = ctx.get("ha", "smtprelay", "ha")?;
            let waiting = r["metadata"]["finalizers"]
                .to_string()
                .contains("foregroundDeletion");
            (!waiting && ctx.get("ha", "service", "ha").is_none()).then_some(())
        },
    );
    let sts = ctx.must("ha", "statefulset", "ha");
    assert_eq!(
        sts["metadata"]["uid"], ha_sts_uid,
        "the StatefulSet the foreground delete found is the one still running"
    );
    assert!(
        sts["metadata"]["deletionTimestamp"].is_null(),
        "not being deleted"
    );
    let owners = sts["metadata"]["ownerReferences"].to_string();
    assert!(
        owners.contains("ha-drain-guard") && !owners.contains("SmtpRelay"),
        "{owners}"
    );
    assert!(ctx.get("ha", "configmap", "ha-config").is_some(), "held");
    assert_eq!(list_json(&ctx.cp, "ha", "pvc").len(), 2, "both claims held");
    wait_warning_event(ctx, "ha", "ha", "DrainWaiting", "ha-1");
    ctx.cp.kubectl_ok([
        "annotate",
        "smtprelay",
        "ha",
        "-n",
        "ha",
        "smtprelay.dev/abandon-drain=true",
    ]);
    wait_warning_event(ctx, "ha", "ha", "DrainAbandoned", "ha-0");
    for (ns, name) in [("ha", "ha"), ("ex-unauth", "smtp-relay")] {
        ctx.op.wait_for(
            Duration::from_secs(90),
            &format!("the children of {ns}/{name} to be garbage-collected"),
            || {
                let left: Vec<_> = [
                    ("smtprelay", name.to_string()),
                    ("statefulset", name.to_string()),
                    ("configmap", format!("{name}-config")),
                    ("configmap", format!("{name}-drain-guard")),
                    ("service", name.to_string()),
                    ("service", format!("{name}-headless")),
                    ("secret", format!("{name}-relayhost")),
                    ("poddisruptionbudget", name.to_string()),
                    ("pod", format!("{name}-0")),
                ]
                .into_iter()
                .filter(|(k, n)| ctx.get(ns, k, n).is_some())
                .collect();
                left.is_empty().then_some(())
            },
        );
    }
    ctx.op.wait_for(
        Duration::from_secs(90),
        "the queue claims of ha (whenDeleted: Delete) to be deleted",
        || list_json(&ctx.cp, "ha", "pvc").is_empty().then_some(()),
    );
    let kept = list_json(&ctx.cp, "ex-unauth", "pvc");
    assert_eq!(
        kept.len(),
        1,
        "the queue claim of a Retain relay outlives it"
    );
    assert_eq!(kept[0]["metadata"]["name"], "spool-smtp-relay-0");
    assert!(
        kept[0]["metadata"]["deletionTimestamp"].is_null(),
        "the retained claim is not being deleted"
    );
    let owners = &kept[0]["metadata"]["ownerReferences"];
    assert!(
        owners.is_null() || owners.as_array().is_some_and(|a| a.is_empty()),
        "a retained claim has no owner to be collected with: {owners}"
    );
}

/// A relay whose volumes go with it, deleted with propagation orphan: the finalizer lets it go
/// at once, nothing drains, and its children keep running, owned by the drain guard alone;
/// deleting the guard then deletes them.
fn orphan_delete_leaves_the_relay_running(ctx: &mut Ctx) {
    const NAME: &str = "kept";
    operator::apply(
        &ctx.cp,
        "ha",
        &format!(
            r#"
apiVersion: smtprelay.dev/v1alpha1
kind: SmtpRelay
metadata:
  name: {NAME}
spec:
  domain: example.org
  networks: ["10.0.0.0/24"]
  relayhost: {{host: mx.example.org, port: 25}}
  storage: {{size: 100Mi, retention: {{whenDeleted: Delete}}}}
"#
        ),
    );
    ctx.wait_applied("ha", NAME);
    let guard = ctx.must("ha", "configmap", &format!("{NAME}-drain-guard"));
    assert!(
        guard["metadata"]["ownerReferences"].is_null(),
        "the guard is owned by nothing: {}",
        guard["metadata"]
    );
    let sts = ctx.must("ha", "statefulset", NAME);
    assert!(
        sts["metadata"]["ownerReferences"]
            .to_string()
            .contains(&format!("{NAME}-drain-guard")),
        "{}",
        sts["metadata"]
    );
    let pod = format!("{NAME}-0");
    ctx.op
        .wait_for(CONVERGE, "its pod", || ctx.get("ha", "pod", &pod));
    ctx.cp.kubectl_ok([
        "delete",
        "smtprelay",
        NAME,
        "-n",
        "ha",
        "--cascade=orphan",
        "--timeout=60s",
    ]);
    assert!(ctx.get("ha", "smtprelay", NAME).is_none(), "let go at once");
    wait_normal_event(ctx, "ha", NAME, "Orphaned");
    for (kind, name) in [
        ("statefulset", NAME.to_string()),
        ("service", NAME.to_string()),
        ("configmap", format!("{NAME}-config")),
    ] {
        let obj = ctx.must("ha", kind, &name);
        assert!(
            obj["metadata"]["deletionTimestamp"].is_null()
                && !obj["metadata"]["ownerReferences"]
                    .to_string()
                    .contains("SmtpRelay"),
            "{kind} {name} kept, orphaned: {}",
            obj["metadata"]
        );
    }
    let pod = ctx.must("ha", "pod", &pod);
    assert!(
        pod["metadata"]["annotations"]["smtprelay.dev/drain"].is_null(),
        "not asked to drain: {}",
        pod["metadata"]
    );
    // The guard is the handle: deleting it deletes what it kept.
    ctx.cp.kubectl_ok([
        "delete",
        "configmap",
        &format!("{NAME}-drain-guard"),
        "-n",
        "ha",
    ]);
    ctx.op.wait_for(
        Duration::from_secs(90),
        "the orphaned relay to go with its guard",
        || {
            (ctx.get("ha", "statefulset", NAME).is_none()
                && ctx
                    .get("ha", "configmap", &format!("{NAME}-config"))
                    .is_none())
            .then_some(())
        },
    );
    // Its claim stays (the StatefulSet retains its volumes); the next phase counts claims.
    ctx.cp.kubectl_ok([
        "delete",
        "pvc",
        &format!("spool-{NAME}-0"),
        "-n",
        "ha",
        "--wait=false",
    ]);
}

/// The operator's log holds no authorization failure and no panic over the whole run.
fn clean_log(ctx: &mut Ctx) {
    let logs = ctx.op.logs();
    for bad in ["forbidden", "Forbidden", " 403", "panicked"] {
        assert!(
            !logs.contains(bad),
            "the operator log has {bad:?}:\n{}",
            logs.lines()
                .filter(|l| l.contains(bad))
                .take(10)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
