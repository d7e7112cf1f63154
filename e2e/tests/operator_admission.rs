//! What the API server itself says about our manifests: the CRD's schema and CEL rules reject
//! bad SmtpRelays at admission with a message naming the field; the chart's rendered manifests
//! pass a server-side dry run; and the chart installed with `watchNamespace` (a Role, no
//! ClusterRole) is enough for an operator watching that namespace only.
//!
//! One control plane for all of it. Run `cargo build --workspace --bins` first.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use smtp_relay_e2e::operator::{self, condition, get_json, Operator, OperatorOptions};
use smtp_relay_e2e::{tools, ControlPlane};

#[test]
fn api_server_admits_only_valid_relays_and_chart_manifests() {
    let begin = Instant::now();
    let cp = ControlPlane::start().expect("control plane starts");
    eprintln!("control plane ready in {:?}", cp.startup_time());

    let t = Instant::now();
    namespaced_operator(&cp);
    eprintln!("phase namespaced operator: {:?}", t.elapsed());
    let t = Instant::now();
    leader_election(&cp);
    eprintln!("phase leader election: {:?}", t.elapsed());
    let t = Instant::now();
    admission(&cp);
    eprintln!("phase admission: {:?}", t.elapsed());
    let t = Instant::now();
    server_dry_run(&cp);
    eprintln!("phase server dry run: {:?}", t.elapsed());
    eprintln!("all phases: {:?}", begin.elapsed());
}

fn relay_json(ns: &str, name: &str, spec: Value) -> String {
    json!({
        "apiVersion": "smtprelay.dev/v1alpha1",
        "kind": "SmtpRelay",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    })
    .to_string()
}

/// The chart with `watchNamespace=team-a` grants a Role in team-a only; the operator run with
/// exactly that reconciles team-a's relays, with no authorization error, and leaves team-b alone.
#[allow(
    clippy::too_many_lines,
    reason = "one scenario, step by step: its steps share their state"
)]
fn namespaced_operator(cp: &ControlPlane) {
    for ns in ["team-a", "team-b"] {
        operator::create_namespace(cp, ns);
    }
    let op = Operator::start(
        cp,
        OperatorOptions {
            namespace: "team-ops".into(),
            watch_namespace: Some("team-a".into()),
            ..OperatorOptions::default()
        },
    )
    .expect("operator starts");
    // The chart made a Role, not a ClusterRole.
    let roles = cp.kubectl_ok(["get", "roles", "-n", "team-a", "-o", "name"]);
    assert!(
        roles.contains("role.rbac.authorization.k8s.io/smtp-relay-operator"),
        "{roles}"
    );
    let cluster_roles = cp.kubectl_ok(["get", "clusterroles", "-o", "name"]);
    assert!(
        !cluster_roles.contains("smtp-relay-operator"),
        "no ClusterRole with watchNamespace: {cluster_roles}"
    );
    // ...and the ServiceAccount may not read Secrets elsewhere.
    let denied = cp.kubectl([
        "auth",
        "can-i",
        "list",
        "secrets",
        "-n",
        "team-b",
        "--as",
        &op.user(),
    ]);
    assert_eq!(String::from_utf8_lossy(&denied.stdout).trim(), "no");

    let spec = json!({
        "domain": "example.net",
        "networks": ["10.0.0.0/24"],
        "relayhost": {"host": "10.1.0.1"},
    });
    for ns in ["team-b", "team-a"] {
        operator::apply(cp, ns, &relay_json(ns, "mail", spec.clone()));
    }
    let relay = op.wait_for(Duration::from_secs(45), "team-a/mail to get status", || {
        let r = get_json(cp, "team-a", "smtprelay", "mail")?;
        let ok = condition(&r, "SecretsResolved").is_some_and(|c| c["status"] == "True");
        (ok && r["status"]["configHash"].is_string()).then_some(r)
    });
    assert_eq!(relay["status"]["observedGeneration"], 1);
    for (kind, name) in [
        ("statefulset", "mail"),
        ("configmap", "mail-config"),
        ("service", "mail"),
    ] {
        assert!(
            get_json(cp, "team-a", kind, name).is_some(),
            "{kind} team-a/{name}"
        );
    }
    // The unwatched namespace is untouched (its relay was applied first).
    let other = get_json(cp, "team-b", "smtprelay", "mail").unwrap();
    assert!(
        other["status"].is_null(),
        "team-b is not watched: {}",
        other["status"]
    );
    assert!(get_json(cp, "team-b", "statefulset", "mail").is_none());
    let logs = op.logs();
    for bad in ["forbidden", "Forbidden", " 403"] {
        assert!(!logs.contains(bad), "operator log has {bad:?}:\n{logs}");
    }
    // The control: the same check sees a ServiceAccount the chart gave no RBAC.
    let bare = Operator::start(
        cp,
        OperatorOptions {
            namespace: "no-rbac".into(),
            helm_set: vec!["rbac.create=false".into()],
            ..OperatorOptions::default()
        },
    )
    .expect("operator starts");
    bare.wait_for(
        Duration::from_secs(30),
        "Forbidden in the log of an operator without RBAC",
        || bare.logs().contains("forbidden").then_some(()),
    );
    // Even with every watch failing Forbidden, SIGTERM stops the operator promptly.
    let mut bare = bare;
    assert!(
        bare.stop(),
        "an operator whose watches fail Forbidden did not stop on SIGTERM; log tail:\n{}",
        bare.log_tail(20)
    );
    let writes = operator::writes_by(cp, &op.user()).expect("audit log");
    assert!(
        writes
            .iter()
            .all(|e| e["objectRef"]["namespace"] == "team-a"),
        "every write of the namespaced operator is in team-a"
    );
    assert!(
        writes.iter().all(|e| e["responseStatus"]["code"]
            .as_i64()
            .is_some_and(|c| c < 400)),
        "no write was refused"
    );
}

/// Each invalid spec is refused by the API server (not by the operator) with a message naming
/// the field; a valid one is admitted.
#[allow(clippy::too_many_lines, reason = "a table: one entry per invalid spec")]
fn admission(cp: &ControlPlane) {
    let ns = "adm";
    operator::create_namespace(cp, ns);
    let base = json!({
        "domain": "example.net",
        "relayhost": {"host": "mx.example.net"},
    });
    let with = |patch: Value| {
        let mut spec = base.clone();
        merge(&mut spec, patch);
        spec
    };
    let cases: Vec<(&str, Value, Vec<&str>)> = vec![
        (
            "bad CIDR",
            with(json!({"networks": ["10.0.0.0/33"]})),
            vec!["spec.networks", "CIDR"],
        ),
        (
            "not an address",
            with(json!({"networks": ["10.0.0.0/24", "localhost"]})),
            vec!["spec.networks", "CIDR"],
        ),
        (
            "relayhost port 0",
            with(json!({"relayhost": {"port": 0}})),
            vec!["spec.relayhost.port", "greater than or equal to 1"],
        ),
        (
            "relayhost port 70000",
            with(json!({"relayhost": {"port": 70000}})),
            vec!["spec.relayhost.port", "less than or equal to 65535"],
        ),
        (
            "service port 0",
            with(json!({"service": {"port": 0}})),
            vec!["spec.service.port"],
        ),
        (
            "mode and customRestrictions",
            with(json!({"mode": "Strict", "customRestrictions": ["permit_mynetworks", "reject"]})),
            vec!["spec", "mutually exclusive"],
        ),
        (
            "unknown mode",
            with(json!({"mode": "Open"})),
            vec!["spec.mode", "Unsupported value"],
        ),
        (
            "restriction with a space",
            with(json!({"customRestrictions": ["permit mynetworks"]})),
            vec!["spec.customRestrictions[0]"],
        ),
        (
            "bad domain",
            with(json!({"domain": "not a domain"})),
            vec!["spec.domain"],
        ),
        (
            "bad relay domain",
            with(json!({"relayDomains": ["example.net", "-bad-.example"]})),
            vec!["spec.relayDomains[1]"],
        ),
        (
            "bad hostname",
            with(json!({"hostname": "under_score.example"})),
            vec!["spec.hostname"],
        ),
        (
            "bad postmaster",
            with(json!({"postmaster": "nobody"})),
            vec!["spec.postmaster"],
        ),
        (
            "replicas 0",
            with(json!({"replicas": 0})),
            vec!["spec.replicas", "greater than or equal to 1"],
        ),
        (
            "bad tls level",
            with(json!({"relayhost": {"tls": {"level": "strict"}}})),
            vec!["spec.relayhost.tls.level", "Unsupported value"],
        ),
        (
            "two CA sources",
            with(json!({"relayhost": {"tls": {
                "caSecretKeyRef": {"name": "ca"},
                "caConfigMapKeyRef": {"name": "ca"}
            }}})),
            vec!["spec.relayhost.tls", "at most one"],
        ),
        (
            "relayhost with brackets and port",
            with(json!({"relayhost": {"host": "[10.1.0.1]:25"}})),
            vec!["spec.relayhost", "DNS name or an IP address"],
        ),
        (
            "mxLookup on an IP",
            with(json!({"relayhost": {"host": "10.1.0.1", "mxLookup": true}})),
            vec!["spec.relayhost", "mxLookup"],
        ),
        (
            "networks of everyone (an open relay)",
            with(json!({"networks": ["10.0.0.0/8", "::/0"]})),
            vec!["spec.networks", "open relay"],
        ),
        (
            "bad postconf key",
            with(json!({"postconf": {"bad-key": "x"}})),
            vec!["spec.postconf", "Postfix parameter names"],
        ),
        (
            "bad storage size",
            with(json!({"storage": {"size": "lots"}})),
            vec!["spec.storage.size"],
        ),
        (
            "bad retention",
            with(json!({"storage": {"retention": {"whenDeleted": "Maybe"}}})),
            vec!["spec.storage.retention.whenDeleted", "Unsupported value"],
        ),
        (
            "externalTrafficPolicy on ClusterIP",
            with(json!({"service": {"externalTrafficPolicy": "Local"}})),
            vec!["spec.service", "externalTrafficPolicy"],
        ),
        (
            "loadBalancerIP not an IP",
            with(json!({"service": {"type": "LoadBalancer", "loadBalancerIP": "lb.example"}})),
            vec!["spec.service.loadBalancerIP", "IP address"],
        ),
        (
            "OAuth2 and a password",
            with(json!({"relayhost": {
                "credentialsSecretRef": {"name": "login"},
                "oauth2": {"provider": "Google", "user": "a@example.net", "secretRef": {"name": "g"}}
            }})),
            vec!["spec.relayhost", "oauth2", "exclusive"],
        ),
        (
            "Microsoft 365 without a tenant",
            with(json!({"relayhost": {"oauth2": {
                "provider": "Microsoft365", "user": "a@example.net", "secretRef": {"name": "app"}
            }}})),
            vec!["spec.relayhost.oauth2", "tenant is required"],
        ),
        (
            "a generic provider without a token endpoint",
            with(json!({"relayhost": {"oauth2": {
                "provider": "Generic", "user": "a@example.net", "secretRef": {"name": "app"}
            }}})),
            vec!["spec.relayhost.oauth2", "tokenEndpoint is required"],
        ),
        (
            "a token endpoint in clear text",
            with(json!({"relayhost": {"oauth2": {
                "provider": "Generic", "user": "a@example.net", "secretRef": {"name": "app"},
                "tokenEndpoint": "http://idp.example.net/token"
            }}})),
            vec!["spec.relayhost.oauth2", "https://"],
        ),
        (
            "an unknown provider",
            with(json!({"relayhost": {"oauth2": {
                "provider": "Yahoo", "user": "a@example.net", "secretRef": {"name": "app"}
            }}})),
            vec!["spec.relayhost.oauth2.provider", "Unsupported value"],
        ),
        (
            "no relayhost",
            json!({"domain": "example.net"}),
            vec!["spec.relayhost", "Required value"],
        ),
        (
            "no domain",
            json!({"relayhost": {"host": "mx.example.net"}}),
            vec!["spec.domain", "Required value"],
        ),
    ];
    let mut failures = Vec::new();
    for (i, (what, spec, needles)) in cases.iter().enumerate() {
        let name = format!("bad-{i}");
        let out = cp.kubectl_stdin(["create", "-f", "-"], &relay_json(ns, &name, spec.clone()));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            failures.push(format!("{what}: admitted {spec}"));
            continue;
        }
        eprintln!("  {what}: {}", stderr.trim());
        if !stderr.contains("is invalid") {
            failures.push(format!("{what}: not a validation error: {stderr}"));
        }
        for n in needles {
            if !stderr.contains(n) {
                failures.push(format!("{what}: message lacks {n:?}: {stderr}"));
            }
        }
    }
    assert!(failures.is_empty(), "admission:\n{}", failures.join("\n"));
    let left = cp.kubectl_ok(["get", "smtprelays", "-n", ns, "-o", "name"]);
    assert!(left.trim().is_empty(), "nothing invalid was stored: {left}");

    // The sample made to fail: every broken field is named in one answer.
    let sample =
        std::fs::read_to_string(tools::workspace_root().join("operator/yaml/relay-invalid.yaml"))
            .unwrap();
    let out = cp.kubectl_stdin(["create", "-n", ns, "-f", "-"], &sample);
    assert!(!out.status.success(), "relay-invalid.yaml was admitted");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for n in [
        "spec.domain",
        "spec.networks",
        "spec.relayhost.port",
        "spec.replicas",
        "spec.postconf",
        "mutually exclusive",
    ] {
        assert!(
            stderr.contains(n),
            "relay-invalid.yaml: no {n:?} in {stderr}"
        );
    }

    // The control: the base spec is admitted, defaults filled in by the API server.
    operator::apply(cp, ns, &relay_json(ns, "good", base));
    let good = get_json(cp, ns, "smtprelay", "good").unwrap();
    assert_eq!(good["spec"]["replicas"], 1);
    assert_eq!(good["spec"]["relayhost"]["port"], 25);
    assert_eq!(good["spec"]["storage"]["size"], "1Gi");
    assert_eq!(
        good["spec"]["storage"]["retention"]["whenDeleted"],
        "Retain"
    );
    // An update is validated as strictly as a create.
    let out = cp.kubectl([
        "patch",
        "smtprelay",
        "good",
        "-n",
        ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"relayhost":{"port":70000}}}"#,
    ]);
    assert!(!out.status.success(), "an invalid update was admitted");
    assert!(String::from_utf8_lossy(&out.stderr).contains("spec.relayhost.port"));
}

fn merge(into: &mut Value, patch: Value) {
    match (into, patch) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

/// `deploy/render.sh ARGS | kubectl apply --dry-run=server -f -`, as its header says.
fn dry_run(cp: &ControlPlane, args: &[&str]) {
    let root = tools::workspace_root();
    let out = Command::new(root.join("deploy/render.sh"))
        .args(args)
        .env("HELM", tools::bin("helm"))
        .stdin(Stdio::null())
        .output()
        .expect("run deploy/render.sh");
    assert!(
        out.status.success(),
        "deploy/render.sh {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifests = String::from_utf8(out.stdout).unwrap();
    let res = cp.kubectl_stdin(["apply", "--dry-run=server", "-f", "-"], &manifests);
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(
        res.status.success(),
        "server dry run of deploy/render.sh {args:?} failed:\n{}\n{stdout}",
        String::from_utf8_lossy(&res.stderr)
    );
    let objects = manifests.matches("\nkind: ").count();
    let applied = stdout
        .lines()
        .filter(|l| l.contains("(server dry run)"))
        .count();
    assert!(
        applied >= objects && objects >= 5,
        "every object went through the dry run ({applied} of {objects}):\n{stdout}"
    );
}

/// The chart's manifests, as rendered for a plain install, are accepted by a real API server.
fn server_dry_run(cp: &ControlPlane) {
    // Namespaced objects need their namespace to exist (a dry run creates nothing).
    for ns in ["smtp-relay-system", "mail"] {
        operator::create_namespace(cp, ns);
    }
    dry_run(cp, &[]);
    dry_run(cp, &["--set", "watchNamespace=mail"]);
    dry_run(
        cp,
        &[
            "--set",
            "replicaCount=2",
            "--set",
            "podDisruptionBudget.enabled=true",
        ],
    );
    dry_run(
        cp,
        &[
            "--set",
            "networkPolicy.enabled=true",
            "--set",
            "leaderElection.enabled=true",
        ],
    );
    // SmtpRelays in the release are checked against the installed CRD's schema.
    dry_run(
        cp,
        &[
            "--set-json",
            r#"relays=[{"name":"mail","namespace":"mail","spec":{"domain":"example.net","networks":["10.0.0.0/24"],"relayhost":{"host":"10.1.0.1"}}}]"#,
        ],
    );
    // (serviceMonitor.enabled needs the Prometheus Operator's CRDs, which this cluster lacks.)
}

fn lease_holder(cp: &ControlPlane, ns: &str) -> Option<String> {
    get_json(cp, ns, "lease", "smtp-relay-operator")?["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_string)
}

/// Two operators with `--leader-election` and the chart's `leaderElection.enabled` RBAC (a Role
/// on Leases in the release namespace): one leads and reconciles; on SIGTERM it hands the Lease
/// over and the standby takes over at once.
fn leader_election(cp: &ControlPlane) {
    let ns = "ha-ops";
    let opts = |instance: &str| OperatorOptions {
        namespace: ns.into(),
        helm_set: vec!["leaderElection.enabled=true".into()],
        extra_args: vec![
            "--leader-election".into(),
            "--lease-duration-seconds".into(),
            "4".into(),
        ],
        instance: Some(instance.into()),
        ..OperatorOptions::default()
    };
    let mut a = Operator::start(cp, opts("a")).expect("operator a starts");
    a.wait_for(Duration::from_secs(30), "a to hold the Lease", || {
        (lease_holder(cp, ns).as_deref() == Some("e2e-ha-ops-a")).then_some(())
    });
    let b = Operator::start(cp, opts("b")).expect("operator b starts");
    operator::create_namespace(cp, "ha-mail");
    let spec = json!({"domain": "example.net", "relayhost": {"host": "10.1.0.1"}});
    operator::apply(cp, "ha-mail", &relay_json("ha-mail", "mail", spec));
    a.wait_for(
        Duration::from_secs(45),
        "the leader to write status",
        || {
            get_json(cp, "ha-mail", "smtprelay", "mail")
                .filter(|r| r["status"]["observedGeneration"] == 1)
        },
    );
    assert!(
        !b.current_logs().contains("reconciled relay="),
        "the standby reconciles nothing"
    );
    assert_eq!(lease_holder(cp, ns).as_deref(), Some("e2e-ha-ops-a"));

    // SIGTERM releases the Lease: the standby takes over well before it would expire.
    let t = Instant::now();
    assert!(a.stop(), "the leader exits on SIGTERM");
    b.wait_for(Duration::from_secs(20), "b to take the Lease", || {
        (lease_holder(cp, ns).as_deref() == Some("e2e-ha-ops-b")).then_some(())
    });
    eprintln!("  Lease handed over in {:?}", t.elapsed());
    cp.kubectl_ok([
        "patch",
        "smtprelay",
        "mail",
        "-n",
        "ha-mail",
        "--type=merge",
        "-p",
        r#"{"spec":{"networks":["10.9.0.0/16"]}}"#,
    ]);
    b.wait_for(
        Duration::from_secs(45),
        "the new leader to reconcile",
        || {
            get_json(cp, "ha-mail", "smtprelay", "mail")
                .filter(|r| r["status"]["observedGeneration"] == 2)
        },
    );
    for (who, logs) in [("a", a.logs()), ("b", b.logs())] {
        for bad in ["forbidden", "Forbidden", " 403"] {
            assert!(
                !logs.contains(bad),
                "operator {who} log has {bad:?}:\n{logs}"
            );
        }
    }
}
