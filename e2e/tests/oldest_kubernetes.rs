//! The oldest Kubernetes minor README.md supports, proven without a node (issue 37). The control
//! plane built from `e2e/controlplane/oldest/go.mod` (`.cache/bin/controlplane-oldest`, built by
//! `scripts/install-deps.sh`) runs next to the newest one (`e2e/controlplane/go.mod`):
//!
//! - it reports the version of that go.mod (the binary is not stale);
//! - `crds/smtprelay.dev_smtprelays.yaml`, applied server-side, is Established: every field of it
//!   is known there and every CEL rule compiles;
//! - the chart installs (its `kubeVersion` admits the server) and the operator, with the chart's
//!   RBAC, reconciles a relay with a relayhost login and SASL users
//!   (`operator/yaml/relay-sasl-proxy.yaml`) into its ConfigMap, Secrets, StatefulSet and
//!   Services; the StatefulSet controller makes its claim and pod (Pending), and the relay waits
//!   for pods. No write of the operator's is refused (a field the server lacks would be), and
//!   the server keeps every field of the children the newest keeps (none dropped behind a
//!   feature gate that is off there);
//! - both API servers admit and refuse alike, naming the same fields with the same messages, in
//!   server-side dry runs of: one input breaking each CEL rule of the CRD (each rule's message
//!   must come back), `operator/yaml/relay-invalid.yaml`, and the relay of every case of the
//!   parity corpus (`operator/tests/parity.yaml`), which both admit. The one difference seen:
//!   for a CEL rule, 1.34 shows the invalid value as its type (`"object"`), 1.35 nothing or the
//!   value ([`refusal_items`] leaves it out);
//! - the operator refuses every bad case of the parity corpus, saying what the corpus says,
//!   before writing a child, and accepts every good one.
//!
//! Run `cargo build --workspace --bins` and `scripts/install-deps.sh` first.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use smtp_relay_e2e::controlplane::oldest_kubernetes_version;
use smtp_relay_e2e::operator::{
    self, condition, controlled_by, get_json, relay_object, Operator, OperatorOptions,
};
use smtp_relay_e2e::{tools, ControlPlane};

/// How long the operator may take to converge on what a phase applied.
const CONVERGE: Duration = Duration::from_secs(90);
const CRD_FILE: &str = "crds/smtprelay.dev_smtprelays.yaml";
const CRD_NAME: &str = "smtprelays.smtprelay.dev";

/// Runs `f`, printing how long it took as `[oldest_kubernetes] NAME: 1.2s`.
fn timed<T>(name: &str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let v = f();
    eprintln!(
        "[oldest_kubernetes] {name}: {:.1}s",
        t.elapsed().as_secs_f64()
    );
    v
}

#[test]
fn the_oldest_supported_kubernetes_runs_the_crd_the_chart_and_the_operator() {
    let begin = Instant::now();
    let version = oldest_kubernetes_version().expect("e2e/controlplane/oldest/go.mod");
    let oldest = timed("oldest control plane start", || {
        ControlPlane::start_oldest().expect(
            "the oldest control plane starts (scripts/install-deps.sh builds \
             .cache/bin/controlplane-oldest)",
        )
    });
    eprintln!(
        "[oldest_kubernetes] {version} ready in {:.1}s",
        oldest.startup_time().as_secs_f64()
    );
    timed("server version", || server_version(&oldest, &version));
    timed("crd established", || install_crd(&oldest));
    let op = timed("chart and operator", || {
        Operator::start(&oldest, OperatorOptions::default()).expect("operator starts")
    });
    let kept = timed("relay reconciled", || reconcile_relay(&oldest, &op));
    {
        // The newest, for comparison: what it keeps of the same children, what it refuses.
        let newest = timed("newest control plane start", || {
            ControlPlane::start().expect("the newest control plane starts")
        });
        timed("newest crd established", || install_crd(&newest));
        let newest_op = timed("newest chart and operator", || {
            Operator::start(&newest, OperatorOptions::default()).expect("operator starts")
        });
        let newest_kept = timed("newest relay reconciled", || {
            reconcile_relay(&newest, &newest_op)
        });
        let dropped: Vec<_> = kept.missing.difference(&newest_kept.missing).collect();
        assert!(
            dropped.is_empty(),
            "the oldest API server dropped fields of the operator's children that the newest \
             keeps (a field behind a feature gate that is off there): {dropped:#?}"
        );
        timed("admission as on the newest", || admission(&oldest, &newest));
    }
    timed("parity corpus", || parity(&oldest, &op));
    let writes = refused_writes(&oldest, &op.user());
    assert!(
        writes.is_empty(),
        "the API server refused writes of the operator's:\n{}",
        writes.join("\n")
    );
    eprintln!(
        "[oldest_kubernetes] total: {:.1}s",
        begin.elapsed().as_secs_f64()
    );
}

/// The API server says it is the version of the oldest module: the binary is not stale.
fn server_version(cp: &ControlPlane, version: &str) {
    let out = cp.kubectl_ok(["version", "-o", "json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["serverVersion"]["gitVersion"], version,
        ".cache/bin/controlplane-oldest is not the Kubernetes of e2e/controlplane/oldest/go.mod: \
         run scripts/install-deps.sh"
    );
}

/// The CRD file, applied server-side (a field of it this API server does not know is an
/// error), then Established with its names accepted. A CEL rule that does not compile here
/// refuses the apply.
fn install_crd(cp: &ControlPlane) {
    let crd = std::fs::read_to_string(tools::workspace_root().join(CRD_FILE)).unwrap();
    let out = cp.kubectl_stdin(
        [
            "apply",
            "--server-side",
            "--field-manager=e2e-oldest",
            "-f",
            "-",
        ],
        &crd,
    );
    assert!(
        out.status.success(),
        "{CRD_FILE} was refused:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stored = tools::poll_until(Duration::from_secs(30), "the CRD to be Established", || {
        let out = cp.kubectl(["get", "crd", CRD_NAME, "-o", "json"]);
        let crd: Value = serde_json::from_slice(&out.stdout).ok()?;
        let established = condition(&crd, "Established")?["status"] == "True";
        established.then_some(crd)
    });
    for c in stored["status"]["conditions"].as_array().unwrap() {
        let expected = if c["type"] == "NonStructuralSchema" {
            "False"
        } else {
            "True"
        };
        assert_eq!(c["status"], expected, "CRD condition {c}");
    }
    operator::wait_crd_served(cp);
}

/// What [`reconcile_relay`] found.
struct Reconciled {
    /// The paths of fields the operator applied to the children that the server does not show
    /// ([`missing_fields`]).
    missing: BTreeSet<String>,
}

/// A relay with a relayhost login and SASL users (the sample `relay-sasl-proxy.yaml`):
/// reconciled into children the API server accepts, the relay waiting for pods.
fn reconcile_relay(cp: &ControlPlane, op: &Operator) -> Reconciled {
    let (ns, name) = ("mail", "smtp-relay-auth");
    operator::create_namespace(cp, ns);
    let sample = std::fs::read_to_string(
        tools::workspace_root().join("operator/yaml/relay-sasl-proxy.yaml"),
    )
    .unwrap();
    operator::apply(cp, ns, &sample);
    let relay = op.wait_for(CONVERGE, "the relay waiting for its pods", || {
        let r = get_json(cp, ns, "smtprelay", name)?;
        let current = r["status"]["observedGeneration"] == r["metadata"]["generation"];
        let ok = |t| condition(&r, t).is_some_and(|c| c["status"] == "True");
        let waiting = condition(&r, "Ready").is_some_and(|c| {
            c["status"] == "False"
                && ["PodsNotReady", "RolloutInProgress"]
                    .contains(&c["reason"].as_str().unwrap_or_default())
        });
        (current && ok("ConfigValid") && ok("SecretsResolved") && waiting).then_some(r)
    });
    let hash = relay["status"]["configHash"].as_str().unwrap();
    assert!(hash.len() >= 16, "configHash {hash}");
    assert_eq!(relay["status"]["endpoint"], format!("{name}.{ns}.svc:25"));
    let children = [
        ("configmap", format!("{name}-config")),
        ("secret", format!("{name}-relayhost")),
        ("secret", format!("{name}-sasl-users")),
        ("service", name.to_string()),
        ("service", format!("{name}-headless")),
        ("statefulset", name.to_string()),
    ];
    for (kind, child) in &children {
        let obj =
            get_json(cp, ns, kind, child).unwrap_or_else(|| panic!("{kind} {ns}/{child} exists"));
        assert!(
            controlled_by(&obj, &relay),
            "{kind} {ns}/{child} is controlled by the relay: {}",
            obj["metadata"]["ownerReferences"]
        );
    }
    let mut missing = BTreeSet::new();
    for (kind, child) in &children {
        let obj: Value = serde_json::from_str(&cp.kubectl_ok([
            "get",
            kind,
            child,
            "-n",
            ns,
            "-o",
            "json",
            "--show-managed-fields",
        ]))
        .unwrap();
        let entries = obj["metadata"]["managedFields"].as_array().unwrap();
        assert!(
            entries
                .iter()
                .any(|e| e["manager"] == operator::FIELD_MANAGER),
            "{kind}/{child} has no fields of the operator's"
        );
        for entry in entries {
            if entry["manager"] == operator::FIELD_MANAGER {
                missing_fields(
                    &entry["fieldsV1"],
                    &obj,
                    &format!("{kind}/{child}"),
                    &mut missing,
                );
            }
        }
    }
    let sts = get_json(cp, ns, "statefulset", name).unwrap();
    assert_eq!(
        operator::config_hash(&sts["spec"]["template"]),
        hash,
        "the pod template carries status.configHash"
    );
    // The StatefulSet controller of this version takes the template: its claim and pod exist
    // (Pending: no node).
    op.wait_for(CONVERGE, "the relay's claim and pod", || {
        get_json(cp, ns, "pvc", &format!("spool-{name}-0"))?;
        get_json(cp, ns, "pod", &format!("{name}-0"))
    });
    Reconciled { missing }
}

/// The paths of `fields` (a managed-fields entry's `fieldsV1`: `f:NAME` a field, `k:{...}` the
/// list item with those keys, `v:VALUE` a set's value, `.` the node itself) that `obj` lacks:
/// zero values the server does not show (`readOnly: false`), and what it silently dropped (a
/// field behind a feature gate that is off).
fn missing_fields(fields: &Value, obj: &Value, path: &str, missing: &mut BTreeSet<String>) {
    let Some(fields) = fields.as_object() else {
        return;
    };
    for (key, sub) in fields {
        let here = format!("{path}.{key}");
        let found = if key == "." {
            continue;
        } else if let Some(name) = key.strip_prefix("f:") {
            obj.get(name).filter(|v| !v.is_null())
        } else if let Some(item) = key.strip_prefix("k:") {
            let item: Value = serde_json::from_str(item).unwrap();
            obj.as_array().and_then(|list| {
                list.iter().find(|candidate| {
                    item.as_object()
                        .unwrap()
                        .iter()
                        .all(|(k, v)| &candidate[k] == v)
                })
            })
        } else if let Some(value) = key.strip_prefix("v:") {
            let value: Value = serde_json::from_str(value).unwrap();
            obj.as_array()
                .and_then(|list| list.iter().find(|v| **v == value))
        } else {
            panic!("{here}: a managed-fields key of an unknown kind");
        };
        match found {
            Some(child) => missing_fields(sub, child, &here, missing),
            None => {
                missing.insert(here);
            }
        }
    }
}

/// Writes of `user` the API server answered with an error (400 and up), as audit lines.
fn refused_writes(cp: &ControlPlane, user: &str) -> Vec<String> {
    operator::writes_by(cp, user)
        .expect("audit log")
        .into_iter()
        .filter(|e| {
            let code = e["responseStatus"]["code"].as_u64().unwrap_or(0);
            // A create of what exists already is how some writers ask; nothing was refused.
            code >= 400 && code != 409
        })
        .map(|e| {
            format!(
                "{} {} {}",
                e["verb"], e["requestURI"], e["responseStatus"]["code"]
            )
        })
        .collect()
}

/// The base relay every admission case and parity case changes: the operator's test fixture.
fn base_spec() -> Value {
    json!({
        "domain": "example.net",
        "networks": ["10.0.0.0/24"],
        "relayhost": {"host": "mail.example.net"},
    })
}

/// A JSON merge patch (RFC 7386): `null` removes.
fn merge(into: &mut Value, patch: &Value) {
    match (into, patch) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                if v.is_null() {
                    a.remove(k);
                } else {
                    merge(a.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (a, b) => *a = b.clone(),
    }
}

/// Each breaks one CEL rule of the CRD, merged into [`base_spec`]. Every rule must be broken by
/// one of them: `admission` fails naming a rule whose message no refusal carried.
fn cel_cases() -> Vec<Value> {
    let oauth2 = |provider: &str| json!({"provider": provider, "user": "a@example.net", "secretRef": {"name": "app"}});
    vec![
        json!({"mode": "Strict", "customRestrictions": ["permit_mynetworks", "reject"]}),
        json!({"networks": ["10.0.0.0/24", "localhost"]}),
        json!({"networks": ["10.0.0.0/8", "::/0"]}),
        json!({"postconf": {"Bad-Key": "x"}}),
        json!({"relayhost": {"host": "[10.1.0.1]:25"}}),
        json!({"relayhost": {"host": "10.1.0.1", "mxLookup": true}}),
        json!({"relayhost": {"credentialsSecretRef": {"name": "login"}, "oauth2": oauth2("Google")}}),
        json!({"relayhost": {"oauth2": oauth2("Microsoft365")}}),
        json!({"relayhost": {"oauth2": oauth2("Generic")}}),
        json!({"relayhost": {"oauth2": {"provider": "Generic", "user": "a@example.net",
            "secretRef": {"name": "app"}, "tokenEndpoint": "http://idp.example.net/token"}}}),
        json!({"relayhost": {"tls": {"caSecretKeyRef": {"name": "ca"}, "caConfigMapKeyRef": {"name": "ca"}}}}),
        json!({"service": {"externalTrafficPolicy": "Local"}}),
        json!({"service": {"type": "NodePort", "loadBalancerIP": "10.0.0.1"}}),
        json!({"service": {"type": "LoadBalancer", "loadBalancerIP": "lb.example"}}),
        json!({"service": {"proxyProtocol": true}}),
        json!({"service": {"proxyProtocol": true, "proxyProtocolSourceRanges": ["lb"]}}),
        json!({"service": {"proxyProtocol": true, "proxyProtocolSourceRanges": ["0.0.0.0/0"]}}),
        json!({"networkPolicy": {"smtpFromCidrs": ["10.0.0.0/8", "apps"]}}),
        json!({"headers": {"remove": ["X-Mailer", "DATE"]}}),
        json!({"headers": {}, "postconf": {"smtp_header_checks": "regexp:/etc/x"}}),
        json!({"senders": {"bindings": [{"user": "app1", "senders": ["example.net"]}]},
            "postconf": {"smtpd_sender_login_maps": "hash:/etc/x"}}),
        json!({"submission": {"starttls": true}}),
        json!({"sandbox": {"mode": "CatchAll"}}),
        json!({"sandbox": {"mode": "Discard", "mailbox": "qa@example.net"}}),
        json!({"rateLimits": {"perClient": {}}}),
        json!({"rateLimits": {"perClient": {"messages": 10}},
            "postconf": {"anvil_rate_time_unit": "30s"}}),
        json!({"rateLimits": {"perUser": {}}, "saslUsersSecretRef": {"name": "users"}}),
        json!({"rateLimits": {"perUser": {"messages": 10}}}),
        json!({"rateLimits": {"perUser": {"messages": 10}}, "saslUsersSecretRef": {"name": "users"},
            "postconf": {"smtpd_restriction_classes": "mine"}}),
    ]
}

/// The messages of the CRD's CEL rules (`x-kubernetes-validations`), anywhere in its schema.
fn cel_messages() -> BTreeSet<String> {
    fn walk(v: &Value, found: &mut BTreeSet<String>) {
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    if k == "x-kubernetes-validations" {
                        for rule in child.as_array().unwrap() {
                            let message = rule["message"].as_str().unwrap_or_else(|| {
                                panic!("{CRD_FILE}: a CEL rule without a message: {rule}")
                            });
                            found.insert(message.to_owned());
                        }
                    } else {
                        walk(child, found);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, found)),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(tools::workspace_root().join(CRD_FILE)).unwrap();
    let crd: Value = serde_yaml::from_str(&text).unwrap();
    let mut found = BTreeSet::new();
    walk(&crd, &mut found);
    assert!(!found.is_empty(), "{CRD_FILE} has no CEL rules");
    found
}

/// `kubectl create --dry-run=server` of `object`: Ok, or the refusal.
fn dry_run(cp: &ControlPlane, object: &str) -> Result<(), String> {
    let out = cp.kubectl_stdin(
        ["create", "--dry-run=server", "-o", "name", "-f", "-"],
        object,
    );
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// A refusal as its (field, message) pairs, without what it shows as the invalid value: for a
/// CEL rule 1.34 shows the type (`Invalid value: "object": MESSAGE`), 1.35 nothing or the value.
fn refusal_items(refusal: &str) -> BTreeSet<(String, String)> {
    let body = refusal
        .split_once(" is invalid: ")
        .map_or(refusal, |(_, b)| b);
    body.split("\n* ")
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| match item.split_once(": Invalid value: ") {
            Some((field, shown)) => {
                let message = shown
                    .strip_prefix('"')
                    .and_then(|quoted| quoted.split_once("\": "))
                    .map_or(shown, |(_, m)| m);
                (field.to_owned(), message.to_owned())
            }
            None => (String::new(), item.to_owned()),
        })
        .collect()
}

/// The API server of the oldest version admits and refuses as the newest does, with the same
/// messages on the same fields ([`refusal_items`]): every CEL rule's own case, the invalid sample, and the parity corpus' relays.
fn admission(oldest: &ControlPlane, newest: &ControlPlane) {
    let ns = "admission";
    for cp in [oldest, newest] {
        operator::create_namespace(cp, ns);
    }
    let mut inputs: Vec<(String, String, bool)> = Vec::new(); // (what, object, must be refused)
    for (i, patch) in cel_cases().iter().enumerate() {
        let mut spec = base_spec();
        merge(&mut spec, patch);
        let object = relay_object(ns, &format!("cel-{i}"), spec).to_string();
        inputs.push((format!("CEL case {patch}"), object, true));
    }
    let sample =
        std::fs::read_to_string(tools::workspace_root().join("operator/yaml/relay-invalid.yaml"))
            .unwrap();
    let mut sample: Value = serde_yaml::from_str(&sample).unwrap();
    sample["metadata"]["namespace"] = ns.into();
    inputs.push(("relay-invalid.yaml".into(), sample.to_string(), true));
    for (i, (what, relay, _)) in parity_relays(ns).into_iter().enumerate() {
        let mut relay = relay;
        relay["metadata"]["name"] = format!("parity-{i}").into();
        // The API server admits every one: the operator and the relay judge them.
        inputs.push((format!("parity case {what:?}"), relay.to_string(), false));
    }

    // Both servers at once: each answer is a kubectl run.
    let judge = |cp: &ControlPlane| -> Vec<Result<(), String>> {
        inputs.iter().map(|(_, o, _)| dry_run(cp, o)).collect()
    };
    let (olds, news) = std::thread::scope(|s| {
        let olds = s.spawn(|| judge(oldest));
        let news = judge(newest);
        (olds.join().unwrap(), news)
    });
    let mut failures = Vec::new();
    let mut refusals = String::new();
    for (((what, _, refused), old), new) in inputs.iter().zip(olds).zip(news) {
        if old.as_ref().map_err(|e| refusal_items(e)) != new.as_ref().map_err(|e| refusal_items(e))
        {
            failures.push(format!(
                "{what}: the oldest answers {old:?}, the newest {new:?}"
            ));
        }
        match (&old, refused) {
            (Ok(()), true) => failures.push(format!("{what}: admitted")),
            (Err(e), false) => failures.push(format!("{what}: refused: {e}")),
            (Err(e), true) if !e.contains("is invalid") => {
                failures.push(format!("{what}: not a validation error: {e}"));
            }
            (Err(e), true) => {
                refusals.push_str(e);
                refusals.push('\n');
            }
            _ => {}
        }
    }
    for message in cel_messages() {
        if !refusals.contains(&message) {
            failures.push(format!(
                "no case broke the CEL rule saying {message:?}: add one to cel_cases"
            ));
        }
    }
    for field in [
        "spec.domain",
        "spec.networks",
        "spec.relayhost.port",
        "spec.replicas",
        "spec.postconf",
    ] {
        if !refusals.contains(field) {
            failures.push(format!("relay-invalid.yaml: no refusal names {field}"));
        }
    }
    assert!(
        failures.is_empty(),
        "admission on the oldest Kubernetes:\n{}",
        failures.join("\n")
    );
    eprintln!(
        "[oldest_kubernetes] {} inputs judged alike by both API servers",
        inputs.len()
    );
}

/// A corpus value as bytes: `base64:` for what is not text.
fn corpus_bytes(v: &str) -> Vec<u8> {
    match v.strip_prefix("base64:") {
        Some(b) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .expect("base64 in the corpus"),
        None => v.as_bytes().to_vec(),
    }
}

/// One parity case's objects in namespace `ns`, as `operator/src/parity.rs` builds them: the
/// relay `parity` (the case's spec merged into the base relay) referencing Secrets `login`
/// and `users` when the case has them.
struct ParityCase {
    name: String,
    bad: bool,
    /// What the operator's refusal must say (`operator_says`, else `says`).
    says: String,
    relay: Value,
    secrets: Vec<Value>,
}

fn parity_cases(ns_of: impl Fn(usize) -> String) -> Vec<ParityCase> {
    let text = std::fs::read_to_string(tools::workspace_root().join("operator/tests/parity.yaml"))
        .unwrap();
    let corpus: Value = serde_yaml::from_str(&text).unwrap();
    let b64 = |v: &Value| {
        base64::engine::general_purpose::STANDARD.encode(corpus_bytes(v.as_str().unwrap()))
    };
    let mut cases = Vec::new();
    for (bad, list) in [(true, &corpus["bad"]), (false, &corpus["good"])] {
        for case in list.as_array().unwrap() {
            let ns = ns_of(cases.len());
            let mut spec = base_spec();
            if !case["spec"].is_null() {
                merge(&mut spec, &case["spec"]);
            }
            let mut secrets = Vec::new();
            if let Some(login) = case["login"].as_object() {
                spec["relayhost"]["credentialsSecretRef"] = json!({"name": "login"});
                secrets.push(json!({
                    "apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": "login", "namespace": ns},
                    "data": {"username": b64(&login["username"]), "password": b64(&login["password"])},
                }));
            }
            if let Some(users) = case["users"].as_object() {
                spec["saslUsersSecretRef"] = json!({"name": "users"});
                let data: serde_json::Map<String, Value> = users
                    .iter()
                    .map(|(k, v)| (k.clone(), b64(v).into()))
                    .collect();
                secrets.push(json!({
                    "apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": "users", "namespace": ns},
                    "data": data,
                }));
            }
            let says = case["operator_says"]
                .as_str()
                .or(case["says"].as_str())
                .unwrap_or_default()
                // The corpus' Secrets live in namespace mail; here each case has its own.
                .replace("Secret mail/", &format!("Secret {ns}/"));
            cases.push(ParityCase {
                name: case["name"].as_str().unwrap().to_owned(),
                bad,
                says,
                relay: relay_object(&ns, "parity", spec),
                secrets,
            });
        }
    }
    cases
}

/// The corpus' relays, all in namespace `ns`: (case name, relay, bad).
fn parity_relays(ns: &str) -> Vec<(String, Value, bool)> {
    parity_cases(|_| ns.to_owned())
        .into_iter()
        .map(|c| (c.name, c.relay, c.bad))
        .collect()
}

/// Every case of the parity corpus, each in a namespace of its own: the bad ones refused by
/// the operator naming what the corpus says, before any child is written; the good ones
/// accepted.
fn parity(cp: &ControlPlane, op: &Operator) {
    let cases = parity_cases(|i| format!("parity-{i}"));
    let mut items = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        items.push(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": format!("parity-{i}"),
                "labels": {"pod-security.kubernetes.io/enforce": "baseline"}},
        }));
        items.extend(case.secrets.iter().cloned());
        items.push(case.relay.clone());
    }
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string();
    let out = cp.kubectl_stdin(["apply", "-f", "-"], &list);
    assert!(
        out.status.success(),
        "applying the parity corpus failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let verdict = |case: &ParityCase, r: &Value| -> Result<(), String> {
        if r["status"]["observedGeneration"] != r["metadata"]["generation"] {
            return Err("no status for its generation yet".into());
        }
        let ready = condition(r, "Ready").ok_or("no Ready condition")?;
        let valid = condition(r, "ConfigValid").ok_or("no ConfigValid condition")?;
        let message = ready["message"].as_str().unwrap_or_default();
        let refused = ready["status"] == "False"
            && ready["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("Invalid"));
        match (case.bad, refused) {
            (true, true) if message.contains(&case.says) => Ok(()),
            (true, _) => Err(format!("not refused saying {:?}: Ready {ready}", case.says)),
            (false, false) if valid["status"] == "True" => Ok(()),
            (false, _) => Err(format!("refused: Ready {ready}, ConfigValid {valid}")),
        }
    };
    let judged = tools::poll(
        "the operator's verdict on every parity case",
        CONVERGE,
        || {
            let text = cp.kubectl_ok(["get", "smtprelays", "-A", "-o", "json"]);
            let list: Value = serde_json::from_str(&text).unwrap();
            let relays = list["items"].as_array().cloned().unwrap_or_default();
            let all = cases.iter().enumerate().all(|(i, case)| {
                relays
                    .iter()
                    .find(|r| r["metadata"]["namespace"] == format!("parity-{i}"))
                    .is_some_and(|r| verdict(case, r).is_ok())
            });
            all.then_some(())
        },
    );
    if let Err(timeout) = judged {
        let mut wrong = Vec::new();
        for (i, case) in cases.iter().enumerate() {
            let ns = format!("parity-{i}");
            let r = get_json(cp, &ns, "smtprelay", "parity").unwrap_or_default();
            if let Err(e) = verdict(case, &r) {
                wrong.push(format!("{ns} {:?}: {e}", case.name));
            }
        }
        panic!(
            "{timeout}:\n{}\noperator log tail:\n{}",
            wrong.join("\n"),
            op.log_tail(40)
        );
    }
    // Refused before anything was written: no child of a bad case exists.
    let text = cp.kubectl_ok(["get", "statefulsets,configmaps", "-A", "-o", "json"]);
    let list: Value = serde_json::from_str(&text).unwrap();
    let label = "app.kubernetes.io/managed-by";
    for obj in list["items"].as_array().unwrap() {
        let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default();
        let Some(i) = ns
            .strip_prefix("parity-")
            .and_then(|i| i.parse::<usize>().ok())
        else {
            continue;
        };
        assert!(
            !cases[i].bad || obj["metadata"]["labels"][label] != "smtp-relay-operator",
            "bad parity case {:?} got a child: {} {ns}/{}",
            cases[i].name,
            obj["kind"],
            obj["metadata"]["name"]
        );
    }
    let bad = cases.iter().filter(|c| c.bad).count();
    eprintln!(
        "[oldest_kubernetes] parity: {bad} bad cases refused, {} good ones accepted",
        cases.len() - bad
    );
}
