//! What the API server itself says about our manifests: the CRD's schema and CEL rules reject
//! bad SmtpRelays at admission with a message naming the field; the chart's rendered manifests
//! pass a server-side dry run; the chart installed with `watchNamespace` (a Role, and a
//! ClusterRole only for the CRD) is enough for an operator watching that namespace only; and an
//! older CRD left by `helm upgrade` is upgraded by the operator at startup, never a newer one.
//!
//! One control plane for all of it. Run `cargo build --workspace --bins` first.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use smtp_relay_e2e::operator::{self, condition, get_json, Operator, OperatorOptions};
use smtp_relay_e2e::{tools, ControlPlane};
use smtp_relay_operator::crdgen::{VERSION, VERSION_ANNOTATION};

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
    let t = Instant::now();
    crd_upgrade(&cp);
    eprintln!("phase crd upgrade: {:?}", t.elapsed());
    eprintln!("all phases: {:?}", begin.elapsed());
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
            extra_args: vec![
                "--allowed-relay-images=registry.internal/mail/".into(),
                "--secret-reference-label=smtprelay.dev/referable=true".into(),
            ],
            ..OperatorOptions::default()
        },
    )
    .expect("operator starts");
    // The chart made a Role, and a ClusterRole only for the CRD (cluster-scoped): get and
    // patch on that one.
    let roles = cp.kubectl_ok(["get", "roles", "-n", "team-a", "-o", "name"]);
    assert!(
        roles.contains("role.rbac.authorization.k8s.io/smtp-relay-operator"),
        "{roles}"
    );
    let cluster_roles = cp.kubectl_ok(["get", "clusterroles", "-o", "name"]);
    let ours: Vec<&str> = cluster_roles
        .lines()
        .filter(|r| r.contains("smtp-relay-operator"))
        .collect();
    assert_eq!(
        ours,
        ["clusterrole.rbac.authorization.k8s.io/team-ops-smtp-relay-operator-crd-upgrade"],
        "with watchNamespace, the one ClusterRole is the CRD's"
    );
    for (verb, resource, allowed) in [
        ("get", CRD_RESOURCE, "yes"),
        ("patch", CRD_RESOURCE, "yes"),
        ("delete", CRD_RESOURCE, "no"),
        ("create", "customresourcedefinitions", "no"),
        ("list", "customresourcedefinitions", "no"),
        ("patch", "customresourcedefinitions/other.example.com", "no"),
    ] {
        let out = cp.kubectl(["auth", "can-i", verb, resource, "--as", &op.user()]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            allowed,
            "can the namespaced operator {verb} {resource}?"
        );
    }
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
        operator::apply(
            cp,
            ns,
            &operator::relay_object(ns, "mail", spec.clone()).to_string(),
        );
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
    // With an image allow-list, a relay naming another image is refused before anything is
    // read or written for it: no child, status naming spec.image and the list.
    let mut foreign = spec.clone();
    foreign["image"] = json!("docker.io/attacker/relay:1");
    operator::apply(
        cp,
        "team-a",
        &operator::relay_object("team-a", "foreign", foreign).to_string(),
    );
    let refused = op.wait_for(Duration::from_secs(45), "team-a/foreign refused", || {
        let r = get_json(cp, "team-a", "smtprelay", "foreign")?;
        condition(&r, "Ready")
            .filter(|c| c["status"] == "False")
            .cloned()
    });
    let message = refused["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("spec.image docker.io/attacker/relay:1 is not allowed")
            && message.contains("registry.internal/mail/"),
        "{refused}"
    );
    for kind in ["statefulset", "configmap", "service"] {
        assert!(get_json(cp, "team-a", kind, "foreign").is_none(), "{kind}");
    }
    // With a referable-Secret label, a relay referencing a Secret without it is refused
    // before anything is read or written for it, naming the field, the Secret and the label;
    // once its owner labels it, the relay resolves it.
    cp.kubectl_ok([
        "create",
        "secret",
        "generic",
        "login",
        "-n",
        "team-a",
        "--from-literal=username=relay",
        "--from-literal=password=s3cret",
    ]);
    let mut login = spec.clone();
    login["relayhost"] =
        json!({"host": "relay.example.net", "credentialsSecretRef": {"name": "login"}});
    operator::apply(
        cp,
        "team-a",
        &operator::relay_object("team-a", "unlabelled", login).to_string(),
    );
    let refused = op.wait_for(Duration::from_secs(45), "team-a/unlabelled refused", || {
        let r = get_json(cp, "team-a", "smtprelay", "unlabelled")?;
        condition(&r, "Ready")
            .filter(|c| c["status"] == "False" && c["reason"] == "SecretNotReferable")
            .cloned()
    });
    let message = refused["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("Secret team-a/login")
            && message.contains("spec.relayhost.credentialsSecretRef")
            && message
                .contains("kubectl label secret -n team-a login smtprelay.dev/referable=true"),
        "{refused}"
    );
    for kind in ["statefulset", "configmap", "service"] {
        assert!(
            get_json(cp, "team-a", kind, "unlabelled").is_none(),
            "{kind}"
        );
    }
    cp.kubectl_ok([
        "label",
        "secret",
        "-n",
        "team-a",
        "login",
        "smtprelay.dev/referable=true",
    ]);
    op.wait_for(
        Duration::from_secs(45),
        "team-a/unlabelled resolved once labelled",
        || {
            let r = get_json(cp, "team-a", "smtprelay", "unlabelled")?;
            condition(&r, "SecretsResolved")
                .filter(|c| c["status"] == "True")
                .map(|_| ())
        },
    );
    // A relayhost login at TLS level none is refused unless the spec acknowledges it.
    let mut cleartext = spec.clone();
    cleartext["relayhost"] = json!({"host": "relay.example.net",
        "credentialsSecretRef": {"name": "login"}, "tls": {"level": "none"}});
    operator::apply(
        cp,
        "team-a",
        &operator::relay_object("team-a", "cleartext", cleartext).to_string(),
    );
    let refused = op.wait_for(Duration::from_secs(45), "team-a/cleartext refused", || {
        let r = get_json(cp, "team-a", "smtprelay", "cleartext")?;
        condition(&r, "Ready")
            .filter(|c| c["status"] == "False" && c["reason"] == "InvalidSpec")
            .cloned()
    });
    let message = refused["message"].as_str().unwrap_or_default();
    assert!(
        message
            .starts_with("spec.relayhost.tls.level: none with spec.relayhost.credentialsSecretRef")
            && message.contains("spec.relayhost.tls.allowCleartextCredentials: true"),
        "{refused}"
    );
    assert!(get_json(cp, "team-a", "statefulset", "cleartext").is_none());
    // The unwatched namespace is untouched (its relay was applied first).
    let other = get_json(cp, "team-b", "smtprelay", "mail").unwrap();
    // Only the CRD's default status: nobody observed it.
    assert!(
        other["status"]["observedGeneration"] == 0 && other["status"]["conditions"].is_null(),
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
            "a header a message needs, to remove",
            with(json!({"headers": {"remove": ["X-Mailer", "content-type"]}})),
            vec!["spec.headers.remove", "cannot name From, Date, Received"],
        ),
        (
            "a header name with its colon",
            with(json!({"headers": {"remove": ["X-Mailer:"]}})),
            vec!["spec.headers.remove[0]", "should match"],
        ),
        (
            "headers beside postconf.smtp_header_checks",
            with(json!({"headers": {}, "postconf": {"smtp_header_checks": "regexp:/etc/x"}})),
            vec!["spec", "both set Postfix's smtp_header_checks"],
        ),
        (
            "a sender that is neither an address nor a domain",
            with(json!({"senders": {"allowed": ["*.example.net"]}})),
            vec!["spec.senders.allowed[0]", "should match"],
        ),
        (
            "a recipient listed twice",
            with(json!({"recipients": {"allowed": ["ops@example.net", "ops@example.net"]}})),
            vec!["spec.recipients.allowed[1]", "Duplicate value"],
        ),
        (
            "a user bound twice",
            with(json!({"senders": {"bindings": [
                {"user": "app1", "senders": ["a@example.net"]},
                {"user": "app1", "senders": ["b@example.net"]}]}})),
            vec!["spec.senders.bindings[1]", "Duplicate value"],
        ),
        (
            "a user bound to no sender",
            with(json!({"senders": {"bindings": [{"user": "app1", "senders": []}]}})),
            vec!["spec.senders.bindings[0].senders", "at least 1 items"],
        ),
        (
            "sender bindings beside postconf.smtpd_sender_login_maps",
            with(
                json!({"senders": {"bindings": [{"user": "app1", "senders": ["example.net"]}]},
                "postconf": {"smtpd_sender_login_maps": "hash:/etc/x"}}),
            ),
            vec![
                "spec",
                "both set Postfix's smtpd_sender_login_maps and smtpd_milters",
            ],
        ),
        (
            "limits per client that limit nothing",
            with(json!({"rateLimits": {"perClient": {}}})),
            vec!["spec.rateLimits.perClient", "sets no limit"],
        ),
        (
            "limits per user on a relay without users",
            with(json!({"rateLimits": {"perUser": {"messages": 10}}})),
            vec![
                "spec",
                "rateLimits.perUser counts what each SASL user sends",
            ],
        ),
        (
            "a limit of zero messages",
            with(json!({"rateLimits": {"perClient": {"messages": 0}}})),
            vec![
                "spec.rateLimits.perClient.messages",
                "should be greater than or equal to 1",
            ],
        ),
        (
            "a catch-all sandbox without its mailbox",
            with(json!({"sandbox": {"mode": "CatchAll"}})),
            vec![
                "spec.sandbox",
                "sandbox.mailbox is where a CatchAll sandbox delivers",
            ],
        ),
        (
            "submission ports without SASL users",
            with(json!({"submission": {"implicitTls": true}})),
            vec!["spec", "submission ports are where SASL users send"],
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
            "PROXY protocol from anyone",
            with(json!({"service": {"proxyProtocol": true}})),
            vec!["spec.service", "proxyProtocolSourceRanges"],
        ),
        (
            "PROXY protocol from every address",
            with(
                json!({"service": {"proxyProtocol": true, "proxyProtocolSourceRanges": ["0.0.0.0/0"]}}),
            ),
            vec!["spec.service.proxyProtocolSourceRanges", "every address"],
        ),
        (
            "SMTP from a namespace that is no name",
            with(json!({"networkPolicy": {"smtpFromNamespaces": ["Apps"]}})),
            vec!["spec.networkPolicy.smtpFromNamespaces[0]"],
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
        let out = cp.kubectl_stdin(
            ["create", "-f", "-"],
            &operator::relay_object(ns, &name, spec.clone()).to_string(),
        );
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
    operator::apply(
        cp,
        ns,
        &operator::relay_object(ns, "good", base).to_string(),
    );
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
    operator::apply(
        cp,
        "ha-mail",
        &operator::relay_object("ha-mail", "mail", spec).to_string(),
    );
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

const CRD_NAME: &str = "smtprelays.smtprelay.dev";
const CRD_RESOURCE: &str = "customresourcedefinitions/smtprelays.smtprelay.dev";
/// The property the older CRD of [`crd_upgrade`] lacks.
const NEW_FIELD: &str = "tlsMinVersion";

/// The CRD the chart installs, as JSON.
fn chart_crd() -> Value {
    let path = tools::workspace_root()
        .join("charts/smtp-relay-operator/crds/smtprelay.dev_smtprelays.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

fn served_crd(cp: &ControlPlane) -> Value {
    serde_json::from_str(&cp.kubectl_ok([
        "get",
        "crd",
        CRD_NAME,
        "-o",
        "json",
        "--show-managed-fields",
    ]))
    .unwrap()
}

fn crd_version(crd: &Value) -> Option<&str> {
    crd["metadata"]["annotations"][VERSION_ANNOTATION].as_str()
}

/// Where `a` and `b` first differ, numbers compared by value (YAML's `1.0` is JSON's `1`).
fn first_difference(path: &str, a: &Value, b: &Value) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let (xa, yb) = (
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                );
                first_difference(&format!("{path}.{k}"), xa, yb)
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (xa, yb))| first_difference(&format!("{path}[{i}]"), xa, yb)),
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => None,
        _ if a == b => None,
        _ => Some(format!("{path}: {a} != {b}")),
    }
}

/// The schema of `spec`'s properties.
fn spec_properties(crd: &Value) -> &Value {
    &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
}

/// The chart's CRD as another operator version wrote it: annotated `version`, and without
/// [`NEW_FIELD`] (a field that version does not know).
fn crd_of_version(chart: &Value, version: &str) -> Value {
    let mut crd = chart.clone();
    crd["metadata"]["annotations"][VERSION_ANNOTATION] = json!(version);
    let props = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"];
    assert!(props.as_object_mut().unwrap().remove(NEW_FIELD).is_some());
    crd
}

/// Server-side applies `crd` as `manager` would (a chart's install, another operator), taking
/// every field it sets.
fn install_crd(cp: &ControlPlane, crd: &Value, manager: &str) {
    let out = cp.kubectl_stdin(
        [
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager",
            manager,
            "-f",
            "-",
        ],
        &crd.to_string(),
    );
    assert!(
        out.status.success(),
        "applying the CRD as {manager}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The operator's writes to CRDs so far.
fn crd_writes(cp: &ControlPlane, op: &Operator) -> Vec<Value> {
    operator::writes_by(cp, &op.user())
        .expect("audit log")
        .into_iter()
        .filter(|e| e["objectRef"]["resource"] == "customresourcedefinitions")
        .collect()
}

/// `kubectl apply` of `relay` with the API server's default field validation (`Warn`, what
/// Helm and most clients get; kubectl asks for `Strict`): a field the schema lacks is dropped,
/// with a warning the user may never see.
fn apply_as_helm_would(cp: &ControlPlane, ns: &str, relay: &str) {
    let out = cp.kubectl_stdin(["apply", "--validate=warn", "-n", ns, "-f", "-"], relay);
    assert!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether the API server keeps `spec.tlsMinVersion` of `relay` (a server-side dry run, field
/// validation `Warn`): the schema it serves switches a moment after the CRD changed.
fn keeps_the_new_field(cp: &ControlPlane, ns: &str, relay: &str) -> bool {
    let out = cp.kubectl_stdin(
        [
            "apply",
            "--dry-run=server",
            "--validate=warn",
            "-n",
            ns,
            "-o",
            "json",
            "-f",
            "-",
        ],
        relay,
    );
    assert!(
        out.status.success(),
        "dry run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let obj: Value = serde_json::from_slice(&out.stdout).unwrap();
    obj["spec"].get(NEW_FIELD).is_some()
}

/// What the operator made of the relay's `tlsMinVersion`: the message of its InboundTLSModern
/// condition, once status is written for the relay's generation.
fn tls_message(op: &Operator, cp: &ControlPlane, ns: &str) -> String {
    op.wait_for(
        Duration::from_secs(45),
        "the relay's status for its generation",
        || {
            let r = get_json(cp, ns, "smtprelay", "mail")?;
            let current = r["status"]["observedGeneration"] == r["metadata"]["generation"];
            let c = condition(&r, "InboundTLSModern")?;
            current.then(|| c["message"].as_str().unwrap_or_default().to_string())
        },
    )
}

/// Writes the CRD of an older operator, as `helm upgrade` leaves it (Helm never upgrades
/// `crds/`), and waits until the API server serves its schema.
fn install_older_crd(cp: &ControlPlane, chart: &Value, ns: &str, relay: &str) {
    install_crd(cp, &crd_of_version(chart, OLDER), "e2e-older-release");
    assert!(spec_properties(&served_crd(cp)).get(NEW_FIELD).is_none());
    tools::poll_until(Duration::from_secs(10), "the older schema served", || {
        (!keeps_the_new_field(cp, ns, relay)).then_some(())
    });
}

/// The version of the older CRD.
const OLDER: &str = "0.0.1";

/// Helm never upgrades `crds/`: after `helm upgrade` the CRD is an older operator's, and the API
/// server prunes a relay's field it lacks. The operator, at startup, server-side applies its own
/// CRD over the older one, so the relay keeps the field and the operator acts on it; a CRD a
/// newer operator wrote is left alone; without the grant (`crds.upgrade=false`, or RBAC
/// managed elsewhere without it) a warning names the fix and the operator runs on.
#[allow(
    clippy::too_many_lines,
    reason = "one scenario, step by step: its steps share their state"
)]
fn crd_upgrade(cp: &ControlPlane) {
    let chart = chart_crd();
    assert_eq!(
        crd_version(&chart),
        Some(VERSION),
        "the chart's CRD is this version's"
    );
    assert_eq!(
        crd_version(&served_crd(cp)),
        Some(VERSION),
        "helm installed the chart's"
    );
    assert_eq!(
        smtp_relay_operator::runtime::crd_upgrade::decide_for_this_operator(Some(OLDER)),
        Some(smtp_relay_operator::runtime::crd_upgrade::Decision::Upgrade)
    );
    let ns = "crd-a";
    operator::create_namespace(cp, ns);
    let relay = operator::relay_object(
        ns,
        "mail",
        json!({
            "domain": "example.net",
            "networks": ["10.0.0.0/24"],
            "relayhost": {"host": "10.1.0.1"},
            NEW_FIELD: "TLSv1.0",
        }),
    )
    .to_string();

    // The defect: under the older CRD, the relay's new field is silently dropped.
    install_older_crd(cp, &chart, ns, &relay);
    apply_as_helm_would(cp, ns, &relay);
    let stored = get_json(cp, ns, "smtprelay", "mail").unwrap();
    assert!(stored["spec"].get(NEW_FIELD).is_none(), "pruned: {stored}");

    // The operator starts (the chart's defaults, in single-namespace mode): before it is ready,
    // the served CRD is its own, whole, applied by its field manager with one patch.
    let t = Instant::now();
    let mut op = Operator::start(
        cp,
        OperatorOptions {
            namespace: "crd-ops".into(),
            watch_namespace: Some(ns.into()),
            ..OperatorOptions::default()
        },
    )
    .expect("operator starts");
    eprintln!("  chart installed, operator ready in {:?}", t.elapsed());
    let served = served_crd(cp);
    assert_eq!(
        crd_version(&served),
        Some(VERSION),
        "the operator upgraded the CRD; log tail:\n{}",
        op.log_tail(20)
    );
    assert_eq!(
        spec_properties(&served)[NEW_FIELD],
        spec_properties(&chart)[NEW_FIELD],
        "the property is back"
    );
    assert_eq!(
        first_difference(
            "versions",
            &served["spec"]["versions"],
            &chart["spec"]["versions"]
        ),
        None,
        "the served CRD is the operator's, whole"
    );
    let applied = served["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["manager"] == operator::FIELD_MANAGER && m["operation"] == "Apply");
    assert!(applied, "applied by the operator's field manager");
    let writes = crd_writes(cp, &op);
    assert_eq!(writes.len(), 1, "one write: {writes:?}");
    assert_eq!(writes[0]["verb"], "patch");
    assert_eq!(writes[0]["objectRef"]["name"], CRD_NAME);
    assert_eq!(writes[0]["responseStatus"]["code"], 200);
    assert!(op.current_logs().contains("upgraded the SmtpRelay CRD"));

    // The user applies the relay again: the field is kept now, and the operator acts on it.
    tools::poll_until(Duration::from_secs(10), "the new schema served", || {
        keeps_the_new_field(cp, ns, &relay).then_some(())
    });
    apply_as_helm_would(cp, ns, &relay);
    let stored = get_json(cp, ns, "smtprelay", "mail").unwrap();
    assert_eq!(stored["spec"][NEW_FIELD], "TLSv1.0", "kept: {stored}");
    let message = tls_message(&op, cp, ns);
    assert!(
        message.contains("spec.tlsMinVersion TLSv1.0"),
        "the operator sees it: {message}"
    );

    // A newer operator's CRD is never downgraded.
    install_crd(cp, &crd_of_version(&chart, "999.0.0"), "e2e-newer-operator");
    op.restart().expect("operator restarts");
    let served = served_crd(cp);
    assert_eq!(crd_version(&served), Some("999.0.0"));
    assert!(spec_properties(&served).get(NEW_FIELD).is_none());
    assert_eq!(crd_writes(cp, &op).len(), 1, "no write since the upgrade");
    assert!(op
        .current_logs()
        .contains("a newer operator's; left as it is"));
    let logs = op.logs();
    for bad in ["forbidden", "Forbidden", " 403", "WARN"] {
        assert!(!logs.contains(bad), "operator log has {bad:?}:\n{logs}");
    }

    // Turned off (`helm upgrade --set crds.upgrade=false`, which again leaves the CRD alone):
    // the grant is gone, and an operator asking anyway (RBAC managed elsewhere, without it)
    // logs a warning naming the fix, leaves the CRD, and runs on.
    install_older_crd(cp, &chart, ns, &relay);
    let chart_dir = tools::workspace_root().join("charts/smtp-relay-operator");
    let out = cp.helm([
        "upgrade",
        operator::RELEASE,
        chart_dir.to_str().unwrap(),
        "-n",
        "crd-ops",
        "--reuse-values",
        "--set",
        "crds.upgrade=false",
    ]);
    assert!(
        out.status.success(),
        "helm upgrade: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(crd_version(&served_crd(cp)), Some(OLDER), "helm left crds/");
    tools::poll_until(Duration::from_secs(10), "the grant gone", || {
        let out = cp.kubectl(["auth", "can-i", "get", CRD_RESOURCE, "--as", &op.user()]);
        (String::from_utf8_lossy(&out.stdout).trim() == "no").then_some(())
    });
    op.restart().expect("operator restarts");
    let warning = op
        .current_logs()
        .lines()
        .find(|l| l.contains("cannot upgrade the SmtpRelay CRD"))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no warning; log tail:\n{}", op.log_tail(20)));
    assert!(
        warning.contains("WARN")
            && warning.contains("forbidden")
            && warning.contains("crds.upgrade=true")
            && warning.contains("kubectl apply --server-side --force-conflicts"),
        "{warning}"
    );
    assert_eq!(crd_version(&served_crd(cp)), Some(OLDER));
    assert_eq!(crd_writes(cp, &op).len(), 1, "no write without the grant");
    operator::patch_relay(cp, ns, "mail", r#"{"spec":{"networks":["10.9.0.0/16"]}}"#);
    let generation =
        get_json(cp, ns, "smtprelay", "mail").unwrap()["metadata"]["generation"].clone();
    op.wait_for(Duration::from_secs(45), "the operator to run on", || {
        let r = get_json(cp, ns, "smtprelay", "mail")?;
        (r["status"]["observedGeneration"] == generation).then_some(())
    });
    op.stop();
    // As it was, for whatever runs next.
    install_crd(cp, &chart, "e2e-restore");
}
