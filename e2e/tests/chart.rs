//! The Helm chart, rendered offline with `helm template`: lint, every documented option, the
//! values schema rejecting wrong values, least-privilege RBAC, the restricted securityContext,
//! and the generated copies (chart CRD, deploy/ manifest) being up to date.
//!
//! The server-side dry-run against a real API server lives elsewhere in the e2e suite; it gets
//! its manifests from `deploy/render.sh [helm template flags]`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde::Deserialize;
use serde_yaml::Value;
use smtp_relay_operator::floor::owned::OwnedKind;

const RELEASE: &str = "smtp-relay-operator";
const NAMESPACE: &str = "smtp-relay-system";
/// The chart's minimum Kubernetes version: pinned so renders do not depend on how helm was built.
const KUBE_VERSION: &str = "1.34.0";
const CRD_FILE: &str = "smtprelay.dev_smtprelays.yaml";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

fn chart_dir() -> PathBuf {
    root().join("charts/smtp-relay-operator")
}

fn helm() -> PathBuf {
    helm_bin("helm")
}

/// Helm 3 (`helm`) or Helm 4 (`helm4`), as `scripts/install-deps.sh` builds them.
fn helm_bin(name: &str) -> PathBuf {
    let helm = root().join(".cache/bin").join(name);
    assert!(
        helm.is_file(),
        "{name} not found at {}: run scripts/install-deps.sh",
        helm.display()
    );
    helm
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// `helm template` of the chart with `values` (YAML) on top of the defaults; Err holds stderr.
fn try_render(values: &str) -> Result<Vec<Value>, String> {
    try_render_with(&helm(), values)
}

/// [`try_render`] with the Helm binary `helm`.
fn try_render_with(helm: &Path, values: &str) -> Result<Vec<Value>, String> {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), values).unwrap();
    let out = run(Command::new(helm)
        .current_dir(root())
        .args(["template", RELEASE, "charts/smtp-relay-operator"])
        .args(["--namespace", NAMESPACE, "--kube-version", KUBE_VERSION])
        .arg("--values")
        .arg(file.path()));
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(parse_docs(&String::from_utf8(out.stdout).unwrap()))
}

fn render(values: &str) -> Vec<Value> {
    try_render(values).unwrap_or_else(|e| panic!("helm template failed for\n{values}\n{e}"))
}

/// Every non-empty document of a multi-document YAML stream.
fn parse_docs(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

fn all_of<'a>(docs: &'a [Value], k: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| kind(d) == k).collect()
}

fn one<'a>(docs: &'a [Value], k: &str) -> &'a Value {
    let found = all_of(docs, k);
    assert_eq!(found.len(), 1, "expected one {k}, got {}", found.len());
    found[0]
}

fn kinds(docs: &[Value]) -> Vec<String> {
    let mut k: Vec<String> = docs.iter().map(|d| kind(d).to_string()).collect();
    k.sort();
    k
}

fn pod_spec(docs: &[Value]) -> &Value {
    &one(docs, "Deployment")["spec"]["template"]["spec"]
}

fn container(docs: &[Value]) -> &Value {
    &pod_spec(docs)["containers"][0]
}

fn args(docs: &[Value]) -> Vec<String> {
    container(docs)["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

fn yaml(text: &str) -> Value {
    serde_yaml::from_str(text).unwrap()
}

fn chart_field(field: &str) -> String {
    let chart = yaml(&std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap());
    chart[field].as_str().unwrap().to_string()
}

fn app_version() -> String {
    chart_field("appVersion")
}

// ---------------------------------------------------------------------------------------------
// Lint and defaults

/// Values turning every optional part on, so lint and the invariants see every template.
const EVERYTHING: &str = r#"
replicaCount: 2
watchNamespace: mail
serviceMonitor: {enabled: true, labels: {release: prometheus}}
relayPodMonitor: {enabled: true, labels: {release: prometheus}}
podDisruptionBudget: {enabled: true}
networkPolicy: {enabled: true}
image: {pullSecrets: [{name: regcred}]}
relays:
  - name: mail
    namespace: mail
    spec: {domain: example.net, relayhost: {host: 10.1.0.1}}
"#;

#[test]
fn helm_lint_is_clean() {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), EVERYTHING).unwrap();
    for (helm, extra) in ["helm", "helm4"].into_iter().flat_map(|h| {
        [
            (h, vec![]),
            (
                h,
                vec!["--values".to_string(), file.path().display().to_string()],
            ),
        ]
    }) {
        let out = run(Command::new(helm_bin(helm))
            .current_dir(root())
            .args(["lint", "--strict", "charts/smtp-relay-operator"])
            .args(["--namespace", NAMESPACE, "--kube-version", KUBE_VERSION])
            .args(&extra));
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{helm} lint {extra:?} failed:\n{text}"
        );
        assert!(
            !text.contains("[WARNING]") && !text.contains("[ERROR]"),
            "{helm} lint {extra:?} is not clean:\n{text}"
        );
    }
}

#[test]
fn defaults_render_a_cluster_wide_operator() {
    let docs = render("");
    assert_eq!(
        kinds(&docs),
        [
            "ClusterRole",
            "ClusterRole",
            "ClusterRoleBinding",
            "ClusterRoleBinding",
            "Deployment",
            "Service",
            "ServiceAccount"
        ]
    );
    for d in &docs {
        // Cluster-scoped objects have no namespace; every other one is in the release namespace.
        if !kind(d).starts_with("Cluster") {
            assert_eq!(d["metadata"]["namespace"], NAMESPACE, "{}", kind(d));
        }
    }
    let v = app_version();
    let c = container(&docs);
    assert_eq!(
        c["image"],
        format!("ghcr.io/smtp-relay-operator/smtp-relay-operator:{v}")
    );
    assert_eq!(c["imagePullPolicy"], "IfNotPresent");
    assert_eq!(
        args(&docs),
        [
            "run".to_string(),
            "--http-addr=0.0.0.0:8080".into(),
            "--log-format=json".into(),
            format!("--relay-image=ghcr.io/smtp-relay-operator/smtp-relay:{v}"),
        ]
    );
    assert_eq!(c["env"][0]["name"], "POD_NAMESPACE");
    assert_eq!(
        c["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(c["env"][1]["name"], "POD_NAME");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["resources"]["requests"]["memory"], "64Mi");
    let deploy = one(&docs, "Deployment");
    assert_eq!(deploy["spec"]["replicas"], 1);
    // No lease with one replica: Recreate keeps two operators from overlapping in a rollout.
    assert_eq!(deploy["spec"]["strategy"]["type"], "Recreate");
    let sa = one(&docs, "ServiceAccount")["metadata"]["name"].clone();
    assert_eq!(pod_spec(&docs)["serviceAccountName"], sa);
    let svc = one(&docs, "Service");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "http-metrics");
    assert_eq!(
        svc["spec"]["selector"],
        deploy["spec"]["selector"]["matchLabels"]
    );
}

// ---------------------------------------------------------------------------------------------
// Every documented option

struct Case {
    name: &'static str,
    values: &'static str,
    check: fn(&[Value]),
}

const CASES: &[Case] = &[
    Case {
        name: "watchNamespace gives a Role in that namespace; a ClusterRole only for the CRD",
        values: "watchNamespace: mail",
        check: |docs| {
            // The one cluster-wide grant: the CRD upgrade (a CRD is cluster-scoped).
            let crd_upgrade = format!("{NAMESPACE}-{RELEASE}-crd-upgrade");
            assert_eq!(one(docs, "ClusterRole")["metadata"]["name"], crd_upgrade);
            assert_eq!(
                one(docs, "ClusterRoleBinding")["metadata"]["name"],
                crd_upgrade
            );
            let role = one(docs, "Role");
            assert_eq!(role["metadata"]["namespace"], "mail");
            let rb = one(docs, "RoleBinding");
            assert_eq!(rb["metadata"]["namespace"], "mail");
            assert_eq!(rb["roleRef"]["kind"], "Role");
            assert_eq!(rb["subjects"][0]["namespace"], NAMESPACE);
            assert!(args(docs).contains(&"--namespace=mail".to_string()));
        },
    },
    Case {
        name: "allowedRelayImages reaches the operator as its allow-list",
        values: "allowedRelayImages: [registry.internal/mail/, ghcr.io/acme/relay]",
        check: |docs| {
            assert!(args(docs).contains(
                &"--allowed-relay-images=registry.internal/mail/,ghcr.io/acme/relay".to_string()
            ));
        },
    },
    Case {
        name: "secretReferenceLabel reaches the operator as the label referable Secrets carry",
        values: "secretReferenceLabel: smtprelay.dev/referable=true",
        check: |docs| {
            assert!(args(docs)
                .contains(&"--secret-reference-label=smtprelay.dev/referable=true".to_string()));
        },
    },
    Case {
        name: "relayNetworkPolicy reaches the operator: off, or Prometheus's namespace admitted",
        values: "relayNetworkPolicy: {enabled: false, metricsFromNamespaces: [monitoring, obs]}",
        check: |docs| {
            let args = args(docs);
            assert!(args.contains(&"--relay-network-policies=false".to_string()));
            assert!(args.contains(&"--relay-metrics-from-namespaces=monitoring,obs".to_string()));
        },
    },
    Case {
        name: "serviceMonitor.enabled creates a ServiceMonitor on the metrics port",
        values: "serviceMonitor: {enabled: true, labels: {release: prometheus}, interval: 15s}",
        check: |docs| {
            let sm = one(docs, "ServiceMonitor");
            assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
            assert_eq!(sm["metadata"]["labels"]["release"], "prometheus");
            assert_eq!(sm["spec"]["endpoints"][0]["port"], "http-metrics");
            assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
            assert_eq!(sm["spec"]["endpoints"][0]["interval"], "15s");
            let svc = one(docs, "Service");
            assert_eq!(
                sm["spec"]["selector"]["matchLabels"],
                svc["spec"]["selector"]
            );
        },
    },
    Case {
        name: "relayPodMonitor.enabled scrapes every relay pod's metrics port",
        values: "relayPodMonitor: {enabled: true, labels: {release: prometheus}, interval: 20s}",
        check: |docs| {
            let pm = one(docs, "PodMonitor");
            assert_eq!(pm["apiVersion"], "monitoring.coreos.com/v1");
            assert_eq!(pm["metadata"]["labels"]["release"], "prometheus");
            assert_eq!(pm["spec"]["namespaceSelector"]["any"], true);
            let labels = &pm["spec"]["selector"]["matchLabels"];
            assert_eq!(labels["app.kubernetes.io/name"], "smtp-relay");
            assert_eq!(
                labels["app.kubernetes.io/managed-by"],
                "smtp-relay-operator"
            );
            let ep = &pm["spec"]["podMetricsEndpoints"][0];
            assert_eq!(
                (&ep["port"], &ep["interval"]),
                (&"metrics".into(), &"20s".into())
            );
        },
    },
    Case {
        name: "replicaCount 2 turns leader election on, with a lease Role",
        values: "replicaCount: 2",
        check: |docs| {
            let a = args(docs);
            assert!(a.contains(&"--leader-election".to_string()), "{a:?}");
            assert!(a.contains(&format!("--lease-name={RELEASE}")), "{a:?}");
            assert_eq!(one(docs, "Deployment")["spec"]["replicas"], 2);
            assert_eq!(
                one(docs, "Deployment")["spec"]["strategy"]["type"],
                "RollingUpdate"
            );
            let role = one(docs, "Role");
            assert_eq!(role["metadata"]["namespace"], NAMESPACE);
            assert_eq!(
                role["rules"],
                yaml(
                    r#"[{apiGroups: [coordination.k8s.io], resources: [leases], verbs: [get, create, update]}]"#
                )
            );
            assert_eq!(
                one(docs, "RoleBinding")["roleRef"]["name"],
                role["metadata"]["name"]
            );
        },
    },
    Case {
        name: "leaderElection.enabled with one replica",
        values: "leaderElection: {enabled: true, leaseName: my-lease}",
        check: |docs| {
            let a = args(docs);
            assert!(a.contains(&"--leader-election".to_string()), "{a:?}");
            assert!(a.contains(&"--lease-name=my-lease".to_string()), "{a:?}");
            assert_eq!(one(docs, "Role")["rules"][0]["resources"][0], "leases");
        },
    },
    Case {
        name: "relays create SmtpRelay objects",
        values: r#"
relays:
  - name: mail
    labels: {team: platform}
    annotations: {note: kept}
    spec: {domain: example.net, networks: [10.0.0.0/24], relayhost: {host: 10.1.0.1, port: 25}}
  - name: other
    namespace: apps
    spec: {domain: example.org, relayhost: {host: smtp.example.org, port: 587}}
"#,
        check: |docs| {
            let relays = all_of(docs, "SmtpRelay");
            assert_eq!(relays.len(), 2);
            assert_eq!(relays[0]["apiVersion"], "smtprelay.dev/v1alpha1");
            assert_eq!(relays[0]["metadata"]["name"], "mail");
            assert_eq!(relays[0]["metadata"]["namespace"], NAMESPACE);
            assert_eq!(relays[0]["metadata"]["labels"]["team"], "platform");
            assert_eq!(relays[0]["spec"]["networks"][0], "10.0.0.0/24");
            assert_eq!(relays[1]["metadata"]["namespace"], "apps");
            assert_eq!(relays[1]["spec"]["relayhost"]["port"], 587);
            // Not the operator's selector labels: relay pods must never match them.
            assert!(relays[0]["metadata"]["labels"]
                .get("app.kubernetes.io/name")
                .is_none());
            // After the operator, so Argo CD deletes them first (reverse waves) and the
            // operator is still there to drain and release them.
            for r in &relays {
                assert_eq!(
                    r["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"],
                    "1"
                );
            }
            assert_eq!(relays[0]["metadata"]["annotations"]["note"], "kept");
        },
    },
    Case {
        name: "image settings: tag, pull policy, pull secrets, relay image digest",
        values: r#"
image: {tag: "1.2.3", pullPolicy: Always, pullSecrets: [{name: regcred}]}
relayImage: {repository: registry.example/relay, digest: "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}
"#,
        check: |docs| {
            let c = container(docs);
            assert_eq!(
                c["image"],
                "ghcr.io/smtp-relay-operator/smtp-relay-operator:1.2.3"
            );
            assert_eq!(c["imagePullPolicy"], "Always");
            assert_eq!(
                pod_spec(docs)["imagePullSecrets"],
                yaml("[{name: regcred}]")
            );
            assert!(args(docs).contains(
                &"--relay-image=registry.example/relay@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".to_string()
            ));
        },
    },
    Case {
        name: "scheduling and pod metadata",
        values: r#"
resources: {requests: {cpu: 10m, memory: 32Mi}, limits: {cpu: "1", memory: 1Gi}}
nodeSelector: {kubernetes.io/os: linux}
tolerations: [{key: dedicated, operator: Equal, value: infra, effect: NoSchedule}]
affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: [{matchExpressions: [{key: zone, operator: In, values: [a]}]}]}}}
topologySpreadConstraints: [{maxSkew: 1, topologyKey: zone, whenUnsatisfiable: ScheduleAnyway}]
priorityClassName: system-cluster-critical
podAnnotations: {example.com/note: hi}
podLabels: {team: platform}
extraEnv: [{name: RUST_LOG, value: debug}]
"#,
        check: |docs| {
            let pod = pod_spec(docs);
            assert_eq!(container(docs)["resources"]["limits"]["memory"], "1Gi");
            assert_eq!(pod["nodeSelector"]["kubernetes.io/os"], "linux");
            assert_eq!(pod["tolerations"][0]["key"], "dedicated");
            assert!(pod["affinity"]["nodeAffinity"].is_mapping());
            assert_eq!(pod["topologySpreadConstraints"][0]["maxSkew"], 1);
            assert_eq!(pod["priorityClassName"], "system-cluster-critical");
            let meta = &one(docs, "Deployment")["spec"]["template"]["metadata"];
            assert_eq!(meta["annotations"]["example.com/note"], "hi");
            assert_eq!(meta["labels"]["team"], "platform");
            assert_eq!(container(docs)["env"][2]["name"], "RUST_LOG");
        },
    },
    Case {
        name: "logFormat text and another port",
        values: "{logFormat: text, httpPort: 9090, metrics: {service: {port: 9090}}}",
        check: |docs| {
            let a = args(docs);
            assert!(a.contains(&"--log-format=text".to_string()), "{a:?}");
            assert!(a.contains(&"--http-addr=0.0.0.0:9090".to_string()), "{a:?}");
            assert_eq!(container(docs)["ports"][0]["containerPort"], 9090);
            assert_eq!(one(docs, "Service")["spec"]["ports"][0]["port"], 9090);
        },
    },
    Case {
        name: "podDisruptionBudget with maxUnavailable by default",
        values: "podDisruptionBudget: {enabled: true}",
        check: |docs| {
            let pdb = one(docs, "PodDisruptionBudget");
            assert_eq!(pdb["spec"]["maxUnavailable"], 1);
            assert!(pdb["spec"].get("minAvailable").is_none());
        },
    },
    Case {
        name: "podDisruptionBudget with minAvailable",
        values: "{replicaCount: 3, podDisruptionBudget: {enabled: true, minAvailable: 50%}}",
        check: |docs| {
            let pdb = one(docs, "PodDisruptionBudget");
            assert_eq!(pdb["spec"]["minAvailable"], "50%");
            assert!(pdb["spec"].get("maxUnavailable").is_none());
        },
    },
    Case {
        name: "an existing ServiceAccount and externally managed RBAC",
        values: "{serviceAccount: {create: false, name: ops}, rbac: {create: false}}",
        check: |docs| {
            assert_eq!(kinds(docs), ["Deployment", "Service"]);
            assert_eq!(pod_spec(docs)["serviceAccountName"], "ops");
        },
    },
    Case {
        name: "networkPolicy allows DNS and the API server out, metrics in",
        values: r#"
networkPolicy:
  enabled: true
  apiServerTo: [{ipBlock: {cidr: 10.96.0.1/32}}]
  metricsFrom: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}}]
"#,
        check: |docs| {
            let np = one(docs, "NetworkPolicy");
            let spec = &np["spec"];
            assert_eq!(
                spec["podSelector"]["matchLabels"],
                one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
            );
            assert_eq!(spec["policyTypes"], yaml("[Ingress, Egress]"));
            assert_eq!(spec["ingress"][0]["ports"][0]["port"], "http-metrics");
            assert_eq!(
                spec["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]
                    ["kubernetes.io/metadata.name"],
                "monitoring"
            );
            assert_eq!(spec["egress"][0]["ports"][0]["port"], 53);
            assert_eq!(spec["egress"][1]["ports"][1]["port"], 6443);
            assert_eq!(
                spec["egress"][1]["to"][0]["ipBlock"]["cidr"],
                "10.96.0.1/32"
            );
        },
    },
    Case {
        name: "no metrics Service",
        values: "metrics: {service: {enabled: false}}",
        check: |docs| assert!(all_of(docs, "Service").is_empty()),
    },
    Case {
        name: "crds.upgrade false: no CRD grant, and the operator leaves the CRD alone",
        values: "crds: {upgrade: false}",
        check: |docs| {
            assert_eq!(
                kinds(docs)
                    .iter()
                    .filter(|k| k.starts_with("Cluster"))
                    .count(),
                2
            );
            assert!(!one(docs, "ClusterRole")["metadata"]["name"]
                .as_str()
                .unwrap()
                .ends_with("-crd-upgrade"));
            assert!(args(docs).contains(&"--crd-upgrade=false".to_string()));
        },
    },
    Case {
        name: "no crds key (helm upgrade --reuse-values from an older chart): the upgrade is on",
        values: "crds: null",
        check: |docs| {
            let name = format!("{NAMESPACE}-{RELEASE}-crd-upgrade");
            assert!(all_of(docs, "ClusterRole")
                .iter()
                .any(|r| r["metadata"]["name"] == name.as_str()));
            assert!(!args(docs).iter().any(|a| a.starts_with("--crd-upgrade")));
        },
    },
    Case {
        name: "fullnameOverride names every object",
        values: "fullnameOverride: relay-op",
        check: |docs| {
            assert_eq!(one(docs, "Deployment")["metadata"]["name"], "relay-op");
            assert_eq!(one(docs, "ServiceAccount")["metadata"]["name"], "relay-op");
        },
    },
];

#[test]
fn every_documented_option_renders() {
    for case in CASES {
        let docs = render(case.values);
        // A failed check names the case: the panic message alone would not.
        let result = std::panic::catch_unwind(|| (case.check)(&docs));
        assert!(result.is_ok(), "case failed: {}", case.name);
    }
}

// ---------------------------------------------------------------------------------------------
// Invariants over every value set

fn every_render() -> Vec<(String, Vec<Value>)> {
    let mut all = vec![
        ("defaults".to_string(), render("")),
        ("everything".to_string(), render(EVERYTHING)),
    ];
    all.extend(CASES.iter().map(|c| (c.name.to_string(), render(c.values))));
    all
}

/// Helm 4 renders every case into the same objects as Helm 3 (its output differs only in
/// blank lines between documents): users may install with either.
#[test]
fn helm_4_renders_the_objects_helm_3_does() {
    let helm4 = helm_bin("helm4");
    let cases = [("defaults", ""), ("everything", EVERYTHING)]
        .into_iter()
        .chain(CASES.iter().map(|c| (c.name, c.values)));
    for (name, values) in cases {
        let by_4 = try_render_with(&helm4, values)
            .unwrap_or_else(|e| panic!("helm4 template failed for {name}:\n{e}"));
        assert_eq!(by_4, render(values), "{name}: Helm 4 renders other objects");
    }
}

#[test]
fn no_rbac_rule_uses_a_wildcard() {
    for (name, docs) in every_render() {
        for role in docs
            .iter()
            .filter(|d| kind(d) == "Role" || kind(d) == "ClusterRole")
        {
            for rule in role["rules"].as_sequence().unwrap() {
                for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
                    for item in rule[field].as_sequence().into_iter().flatten() {
                        assert!(
                            !item.as_str().unwrap().contains('*'),
                            "{name}: wildcard in {field} of {:?}",
                            role["metadata"]["name"]
                        );
                    }
                }
                assert!(rule.get("nonResourceURLs").is_none(), "{name}");
            }
        }
    }
}

/// What the operator needs beyond the kinds it owns (operator/RBAC.md).
const OPERATOR_RULES: &str = r#"
- {apiGroups: [smtprelay.dev], resources: [smtprelays], verbs: [get, list, watch, patch]}
- {apiGroups: [smtprelay.dev], resources: [smtprelays/status], verbs: [patch]}
- {apiGroups: [""], resources: [persistentvolumeclaims], verbs: [list, delete]}
- {apiGroups: [""], resources: [pods], verbs: [list, watch, patch]}
- {apiGroups: [""], resources: [events], verbs: [create, patch, list]}
- {apiGroups: [events.k8s.io], resources: [events], verbs: [create, patch]}
"#;

/// The CRD upgrade at startup (operator/RBAC.md): get and patch on the one CRD, by name.
const CRD_UPGRADE_RULES: &str = r#"
- {apiGroups: [apiextensions.k8s.io], resources: [customresourcedefinitions], resourceNames: [smtprelays.smtprelay.dev], verbs: [get, patch]}
"#;

/// What a grant covers: (API group, resource, the resource names it is limited to; none: all).
type Grant = (String, String, Vec<String>);

/// The verbs each rule list grants, by (API group, resource, resource names).
fn grants(rules: &Value) -> BTreeMap<Grant, BTreeSet<String>> {
    let mut out: BTreeMap<Grant, BTreeSet<String>> = BTreeMap::new();
    let strings = |v: &Value| -> Vec<String> {
        v.as_sequence()
            .into_iter()
            .flatten()
            .map(|s| s.as_str().unwrap_or_default().to_string())
            .collect()
    };
    for rule in rules.as_sequence().into_iter().flatten() {
        let mut names = strings(&rule["resourceNames"]);
        names.sort();
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                out.entry((group.clone(), resource, names.clone()))
                    .or_default()
                    .extend(strings(&rule["verbs"]));
            }
        }
    }
    out
}

/// The one object of `kind` named `name`.
fn named<'a>(docs: &'a [Value], k: &str, name: &str) -> Option<&'a Value> {
    let found: Vec<_> = all_of(docs, k)
        .into_iter()
        .filter(|d| d["metadata"]["name"] == name)
        .collect();
    assert!(found.len() <= 1, "{} {k} named {name}", found.len());
    found.first().copied()
}

/// Exactly the operator's contract, nothing more: the rules above, and for each kind of the
/// operator's one list of owned kinds the verbs it says the operator needs, in a ClusterRole
/// (or a Role in the watched namespace); and, unless `crds.upgrade` is false, get and patch on
/// the SmtpRelay CRD in a ClusterRole of its own (a CRD is cluster-scoped). Every role bound to
/// the operator is one of these.
#[test]
fn rbac_grants_exactly_the_operator_contract() {
    let mut expected = grants(&yaml(OPERATOR_RULES));
    for kind in OwnedKind::ALL {
        let verbs = kind.verbs().into_iter().map(String::from).collect();
        expected.insert(
            (kind.group().into(), kind.plural().into(), Vec::new()),
            verbs,
        );
    }
    let crd_upgrade = format!("{NAMESPACE}-{RELEASE}-crd-upgrade");
    for (values, main_kind, main_name) in [
        ("", "ClusterRole", format!("{NAMESPACE}-{RELEASE}")),
        ("watchNamespace: mail", "Role", RELEASE.to_string()),
    ] {
        for upgrade in [true, false] {
            let values = format!("{values}\ncrds: {{upgrade: {upgrade}}}\n");
            let docs = render(&values);
            let case = format!("values {values:?}");
            let main = named(&docs, main_kind, &main_name)
                .unwrap_or_else(|| panic!("{case}: no {main_kind} {main_name}"));
            assert_eq!(grants(&main["rules"]), expected, "{case}");
            let crd_role = named(&docs, "ClusterRole", &crd_upgrade);
            let crd_binding = named(&docs, "ClusterRoleBinding", &crd_upgrade);
            let mut roles: Vec<String> = docs
                .iter()
                .filter(|d| kind(d) == "Role" || kind(d) == "ClusterRole")
                .map(|d| d["metadata"]["name"].as_str().unwrap().to_string())
                .collect();
            roles.sort();
            if upgrade {
                let role = crd_role.unwrap_or_else(|| panic!("{case}: no {crd_upgrade}"));
                assert_eq!(
                    grants(&role["rules"]),
                    grants(&yaml(CRD_UPGRADE_RULES)),
                    "{case}"
                );
                let binding = crd_binding.unwrap_or_else(|| panic!("{case}: no binding"));
                assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
                assert_eq!(binding["roleRef"]["name"], crd_upgrade.as_str());
                assert_eq!(
                    binding["subjects"],
                    yaml(&format!(
                        "[{{kind: ServiceAccount, name: {RELEASE}, namespace: {NAMESPACE}}}]"
                    ))
                );
                assert!(!args(&docs).iter().any(|a| a.starts_with("--crd-upgrade")));
                let mut want = vec![main_name.clone(), crd_upgrade.clone()];
                want.sort();
                assert_eq!(roles, want, "{case}");
            } else {
                assert!(crd_role.is_none() && crd_binding.is_none(), "{case}");
                assert!(args(&docs).contains(&"--crd-upgrade=false".to_string()));
                assert_eq!(roles, std::slice::from_ref(&main_name), "{case}");
            }
        }
    }
}

#[test]
fn operator_pod_meets_the_restricted_profile() {
    for (name, docs) in every_render() {
        let pod = pod_spec(&docs);
        let psc = &pod["securityContext"];
        assert_eq!(psc["runAsNonRoot"], true, "{name}");
        assert_eq!(psc["runAsUser"], 65532, "{name}");
        assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault", "{name}");
        for c in pod["containers"].as_sequence().unwrap() {
            let sc = &c["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
            assert_eq!(sc["runAsNonRoot"], true, "{name}");
            assert_eq!(sc["runAsUser"], 65532, "{name}");
            assert_eq!(sc["capabilities"]["drop"], yaml("[ALL]"), "{name}");
            assert!(sc["capabilities"].get("add").is_none(), "{name}");
            assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{name}");
        }
        assert!(pod.get("hostNetwork").is_none() && pod.get("hostPID").is_none());
    }
}

// ---------------------------------------------------------------------------------------------
// Wrong values fail with a message naming them

#[test]
fn wrong_values_are_rejected_naming_the_value() {
    let cases = [
        (r#"replicaCount: "two""#, "/replicaCount"),
        ("logFormat: xml", "/logFormat"),
        ("replicasCount: 2", "'replicasCount'"),
        ("image: {pullPolicy: Sometimes}", "/image/pullPolicy"),
        ("image: {pullSecrets: [regcred]}", "/image/pullSecrets/0"),
        ("image: {tagg: v1}", "'tagg'"),
        ("watchNamespace: Mail_NS", "/watchNamespace"),
        ("allowedRelayImages: [\"a,b\"]", "/allowedRelayImages/0"),
        ("secretReferenceLabel: referable", "/secretReferenceLabel"),
        ("secretReferenceLabel: \"a=b, c=d\"", "/secretReferenceLabel"),
        ("crds: {upgrade: sometimes}", "/crds/upgrade"),
        ("crds: {upgrades: true}", "'upgrades'"),
        ("serviceMonitor: {enabled: yes please}", "/serviceMonitor/enabled"),
        ("serviceMonitor: {interval: soon}", "/serviceMonitor/interval"),
        ("podDisruptionBudget: {minAvailable: lots}", "/podDisruptionBudget/minAvailable"),
        ("relays: [{spec: {domain: x}}]", "/relays/0"),
        ("relays: [{name: Bad_Name, spec: {domain: x, relayhost: {host: h}}}]", "/relays/0/name"),
        ("nodeSelector: {zone: 1}", "/nodeSelector/zone"),
        ("networkPolicy: {apiServerPorts: []}", "/networkPolicy/apiServerPorts"),
        (
            "{serviceMonitor: {enabled: true}, metrics: {service: {enabled: false}}}",
            "metrics.service.enabled",
        ),
        (
            "{serviceAccount: {create: false}}",
            "serviceAccount.name is required",
        ),
        (
            "{watchNamespace: mail, relays: [{name: r, namespace: other, spec: {domain: x, relayhost: {host: h}}}]}",
            "relays[0] (r) is in namespace \"other\"",
        ),
    ];
    for (values, needle) in cases {
        match try_render(values) {
            Ok(_) => panic!("helm template accepted wrong values: {values}"),
            Err(e) => assert!(
                e.contains(needle),
                "error for {values} does not mention {needle:?}:\n{e}"
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// NOTES.txt (helm template does not print it: render it through a copy of the chart)

fn render_notes(values: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("smtp-relay-operator");
    copy_dir(&chart_dir(), &copy);
    std::fs::write(
        copy.join("templates/zz-notes-probe.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\ndata:\n  notes: {{ include \"smtp-relay-operator/templates/NOTES.txt\" . | toJson }}\n",
    )
    .unwrap();
    let file = dir.path().join("values.yaml");
    std::fs::write(&file, values).unwrap();
    let out = run(Command::new(helm())
        .args(["template", RELEASE])
        .arg(&copy)
        .args(["--namespace", NAMESPACE, "--kube-version", KUBE_VERSION])
        .args(["--show-only", "templates/zz-notes-probe.yaml", "--values"])
        .arg(&file));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cm = yaml(&String::from_utf8(out.stdout).unwrap());
    cm["data"]["notes"].as_str().unwrap().to_string()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The SmtpRelay NOTES.txt suggests applying (its `cat <<'YAML'` here-document).
fn notes_example() -> Value {
    let notes = render_notes("");
    let body: Vec<&str> = notes
        .lines()
        .skip_while(|l| !l.contains("<<'YAML'"))
        .skip(1)
        .take_while(|l| l.trim() != "YAML")
        .collect();
    let indent = body[0].len() - body[0].trim_start().len();
    let text: Vec<&str> = body.iter().map(|l| l.get(indent..).unwrap_or("")).collect();
    yaml(&text.join("\n"))
}

#[test]
fn notes_tell_what_to_apply_next() {
    let notes = render_notes("");
    assert!(notes.contains("kind: SmtpRelay"), "{notes}");
    assert!(notes.contains("kubectl get smtpr"), "{notes}");
    assert!(notes.contains("all namespaces"), "{notes}");
    let notes = render_notes("watchNamespace: mail");
    assert!(notes.contains("kubectl apply -n mail"), "{notes}");
    let notes =
        render_notes("relays: [{name: r, spec: {domain: example.net, relayhost: {host: h}}}]");
    assert!(notes.contains("created 1 SmtpRelay"), "{notes}");
}

// ---------------------------------------------------------------------------------------------
// Generated copies

#[test]
fn chart_crd_copy_is_identical_to_the_generated_crd() {
    let src = root().join("crds").join(CRD_FILE);
    let copy = chart_dir().join("crds").join(CRD_FILE);
    let src_text = std::fs::read_to_string(&src).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; generate it: cargo run -p smtp-relay-operator -- crd > crds/{CRD_FILE}",
            src.display()
        )
    });
    let copy_text = std::fs::read_to_string(&copy).unwrap_or_default();
    assert!(
        src_text == copy_text,
        "{} is stale: run charts/sync-crds.sh",
        copy.display()
    );
    // The chart must carry nothing else there: helm would install it too.
    let entries = std::fs::read_dir(chart_dir().join("crds")).unwrap().count();
    assert_eq!(
        entries, 1,
        "charts/smtp-relay-operator/crds/ holds extra files"
    );
}

#[test]
fn deploy_manifest_is_up_to_date() {
    let out = run(Command::new(root().join("deploy/render.sh"))
        .current_dir(root())
        .env("HELM", helm()));
    assert!(
        out.status.success(),
        "deploy/render.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let committed =
        std::fs::read_to_string(root().join("deploy/smtp-relay-operator.yaml")).unwrap_or_default();
    assert!(
        committed.as_bytes() == out.stdout.as_slice(),
        "deploy/smtp-relay-operator.yaml is stale: run deploy/render.sh > deploy/smtp-relay-operator.yaml"
    );
    // It installs everything in one apply: Namespace first, then the CRD, then the operator.
    let docs = parse_docs(&committed);
    assert_eq!(kind(&docs[0]), "Namespace");
    assert_eq!(docs[0]["metadata"]["name"], NAMESPACE);
    assert_eq!(kind(&docs[1]), "CustomResourceDefinition");
    assert_eq!(one(&docs, "Deployment")["metadata"]["namespace"], NAMESPACE);
}

// ---------------------------------------------------------------------------------------------
// Documentation: the README covers every seed setting and every value

fn readme() -> String {
    std::fs::read_to_string(chart_dir().join("README.md")).unwrap()
}

#[test]
fn readme_maps_every_seed_setting() {
    let readme = readme();
    let seed = [
        "RELAY_MYHOSTNAME",
        "RELAY_MYDOMAIN",
        "RELAY_MYNETWORKS",
        "RELAY_DOMAINS",
        "RELAY_HOST",
        "RELAY_LOGIN",
        "RELAY_PASSWORD",
        "RELAY_USE_TLS",
        "RELAY_TLS_VERIFY",
        "RELAY_TLS_CA",
        "RELAY_POSTMASTER",
        "RELAY_STRICT_SENDER_MYDOMAIN",
        "RELAY_MODE",
        "RELAY_EXTRAS_SETTINGS",
        "POSTCONF_",
        "/data",
        "/var/spool/postfix",
        "/etc/postfix/sasl_passwd",
        "client_sasl_passwd",
        "saslpasswd.sh",
        "listpasswd.sh",
        "smtp_client.py",
    ];
    // The setting must appear in the first column of a table row.
    let first_cells: Vec<&str> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| ")?.split(" | ").next())
        .collect();
    for s in seed {
        assert!(
            first_cells.iter().any(|c| c.contains(s)),
            "README.md has no mapping row for {s}"
        );
    }
}

/// Keys of the README's values table (first column of rows starting with "| `").
fn readme_value_keys() -> Vec<String> {
    let readme = readme();
    let table = readme
        .split("## Values")
        .nth(1)
        .expect("a ## Values section");
    table
        .lines()
        .take_while(|l| !l.starts_with("## "))
        .filter_map(|l| l.strip_prefix("| `"))
        .map(|l| l.split('`').next().unwrap().to_string())
        .collect()
}

#[test]
fn readme_documents_every_value() {
    let documented = readme_value_keys();
    let values = yaml(&std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap());
    // Walk values.yaml: a documented key covers everything below it (free-form maps like
    // resources); an undocumented map is walked into; an undocumented leaf is a gap.
    fn walk(v: &Value, prefix: &str, documented: &[String], seen: &mut Vec<String>) {
        for (k, child) in v.as_mapping().unwrap() {
            let path = format!("{prefix}{}", k.as_str().unwrap());
            if documented.contains(&path) {
                seen.push(path);
            } else if child.as_mapping().is_some_and(|m| !m.is_empty()) {
                walk(child, &format!("{path}."), documented, seen);
            } else {
                panic!("values.yaml key {path} is missing from the README's values table");
            }
        }
    }
    let mut seen = Vec::new();
    walk(&values, "", &documented, &mut seen);
    for key in &documented {
        assert!(
            seen.contains(key),
            "README documents {key}, which values.yaml lacks"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Examples match the CRD

/// The v1alpha1 openAPIV3Schema of the generated CRD.
fn crd_schema() -> Value {
    let path = root().join("crds").join(CRD_FILE);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; generate it: cargo run -p smtp-relay-operator -- crd > crds/{CRD_FILE}",
            path.display()
        )
    });
    let crd = parse_docs(&text).remove(0);
    let versions = crd["spec"]["versions"].as_sequence().unwrap();
    let v1alpha1 = versions
        .iter()
        .find(|v| v["name"] == "v1alpha1")
        .expect("CRD has v1alpha1");
    v1alpha1["schema"]["openAPIV3Schema"].clone()
}

/// A structural check of `v` against an OpenAPI schema: field names, types, enums, required
/// fields and integer ranges. Patterns and CEL rules are left to the API server (the e2e suite's
/// server-side dry-run); this catches the misspelt or misplaced fields that break examples.
fn check_schema(v: &Value, schema: &Value, path: &str, errs: &mut Vec<String>) {
    if schema["x-kubernetes-int-or-string"] == true {
        if !(v.is_i64() || v.is_string()) {
            errs.push(format!("{path}: want integer or string"));
        }
        return;
    }
    if let Some(allowed) = schema["enum"].as_sequence() {
        if !allowed.contains(v) {
            errs.push(format!("{path}: {v:?} is not one of {allowed:?}"));
        }
    }
    match schema["type"].as_str() {
        Some("object") => {
            let Some(map) = v.as_mapping() else {
                return errs.push(format!("{path}: want an object"));
            };
            for req in schema["required"].as_sequence().into_iter().flatten() {
                if !map.contains_key(req) {
                    errs.push(format!(
                        "{path}: missing required {}",
                        req.as_str().unwrap_or_default()
                    ));
                }
            }
            for (k, child) in map {
                let key = k.as_str().unwrap_or_default();
                let sub = format!("{path}.{key}");
                if let Some(s) = schema["properties"].get(key) {
                    check_schema(child, s, &sub, errs);
                } else if schema["additionalProperties"].is_mapping() {
                    check_schema(child, &schema["additionalProperties"], &sub, errs);
                } else if schema["x-kubernetes-preserve-unknown-fields"] != true
                    && schema["additionalProperties"] != true
                {
                    errs.push(format!("{sub}: unknown field"));
                }
            }
        }
        Some("array") => match v.as_sequence() {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    check_schema(item, &schema["items"], &format!("{path}[{i}]"), errs);
                }
            }
            None => errs.push(format!("{path}: want an array")),
        },
        Some("string") if !v.is_string() => errs.push(format!("{path}: want a string")),
        Some("boolean") if !v.is_bool() => errs.push(format!("{path}: want a boolean")),
        Some("integer") => match v.as_i64() {
            None => errs.push(format!("{path}: want an integer")),
            Some(n) => {
                let below = schema["minimum"].as_f64().is_some_and(|m| (n as f64) < m);
                let above = schema["maximum"].as_f64().is_some_and(|m| (n as f64) > m);
                if below || above {
                    errs.push(format!("{path}: {n} out of range"));
                }
            }
        },
        _ => {}
    }
}

/// Every SmtpRelay the project shows users: the examples, the Argo CD Application's relays, the
/// Argo CD health samples' specs and the chart's relays rendered from values.
fn shown_relays() -> Vec<(String, Value)> {
    let mut relays = Vec::new();
    for entry in std::fs::read_dir(chart_dir().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        for doc in parse_docs(&std::fs::read_to_string(&path).unwrap()) {
            if kind(&doc) == "SmtpRelay" {
                relays.push((path.display().to_string(), doc));
            }
        }
    }
    let app = yaml(&std::fs::read_to_string(root().join("argocd/application.yaml")).unwrap());
    let app_values = serde_yaml::to_string(&app["spec"]["source"]["helm"]["valuesObject"]).unwrap();
    for doc in all_of(&render(&app_values), "SmtpRelay") {
        relays.push(("argocd/application.yaml".into(), doc.clone()));
    }
    relays.push(("templates/NOTES.txt".into(), notes_example()));
    for entry in std::fs::read_dir(root().join("argocd/testdata")).unwrap() {
        let path = entry.unwrap().path();
        let doc = yaml(&std::fs::read_to_string(&path).unwrap());
        relays.push((path.display().to_string(), doc));
    }
    relays
}

#[test]
fn every_shown_smtp_relay_matches_the_crd_schema() {
    let schema = crd_schema();
    assert!(
        schema["properties"]["spec"]["properties"]["relayhost"].is_mapping(),
        "the CRD schema has no spec.relayhost: the check would be vacuous"
    );
    let relays = shown_relays();
    assert!(relays.len() >= 5, "found only {} SmtpRelays", relays.len());
    let mut errs = Vec::new();
    for (source, relay) in &relays {
        assert_eq!(relay["apiVersion"], "smtprelay.dev/v1alpha1", "{source}");
        // Only the spec: metadata is the API server's ObjectMeta, status the operator's.
        let mut found = Vec::new();
        check_schema(
            &relay["spec"],
            &schema["properties"]["spec"],
            ".spec",
            &mut found,
        );
        errs.extend(found.into_iter().map(|e| format!("{source}: {e}")));
    }
    assert!(errs.is_empty(), "{}", errs.join("\n"));
}

#[test]
fn schema_check_catches_misspelt_fields() {
    // The checker itself: a schema excerpt and a relay with typical mistakes.
    let schema = yaml(
        r#"
type: object
properties:
  spec:
    type: object
    required: [domain]
    properties:
      domain: {type: string}
      mode: {type: string, enum: [Strict]}
      replicas: {type: integer, minimum: 1}
      postconf: {type: object, additionalProperties: {type: string}}
"#,
    );
    let relay = yaml("spec: {domian: x, mode: strict, replicas: 0, postconf: {a: 1}}");
    let mut errs = Vec::new();
    check_schema(&relay, &schema, "", &mut errs);
    let text = errs.join("\n");
    for needle in [
        ".spec: missing required domain",
        ".spec.domian: unknown field",
        ".spec.mode",
        ".spec.replicas: 0 out of range",
        ".spec.postconf.a: want a string",
    ] {
        assert!(text.contains(needle), "{needle} not reported in:\n{text}");
    }
}

/// A `kubectl create secret` command shown in an example's comments.
#[derive(Debug)]
struct CreateSecret {
    name: String,
    namespace: Option<String>,
    /// Keys given with `--from-literal` (their values are typed on the command line).
    literal: BTreeSet<String>,
    /// Keys given with `--from-file` (their values stay out of the shell history).
    file: BTreeSet<String>,
}

impl CreateSecret {
    fn keys(&self) -> BTreeSet<String> {
        self.literal.union(&self.file).cloned().collect()
    }
}

/// The `kubectl create secret generic|tls NAME ...` commands in the comments of `text`, with
/// continuation lines (`\`) joined.
fn create_secret_commands(text: &str) -> Vec<CreateSecret> {
    let mut lines = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let Some(comment) = line.trim_start().strip_prefix('#') else {
            continue;
        };
        let comment = comment.trim();
        match comment.strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head);
                pending.push(' ');
            }
            None => {
                pending.push_str(comment);
                lines.push(std::mem::take(&mut pending));
            }
        }
    }
    let mut out = Vec::new();
    for line in lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(at) = words
            .windows(3)
            .position(|w| w == ["kubectl", "create", "secret"])
        else {
            continue;
        };
        let (Some(kind), Some(name)) = (words.get(at + 3), words.get(at + 4)) else {
            continue;
        };
        let mut cmd = CreateSecret {
            name: name.to_string(),
            namespace: None,
            literal: BTreeSet::new(),
            file: BTreeSet::new(),
        };
        if *kind == "tls" {
            cmd.file
                .extend(["tls.crt".to_string(), "tls.key".to_string()]);
        }
        let mut rest = words.iter().skip(at + 5);
        while let Some(w) = rest.next() {
            if *w == "-n" || *w == "--namespace" {
                cmd.namespace = rest.next().map(|n| (*n).to_string());
            } else if let Some(ns) = w.strip_prefix("--namespace=") {
                cmd.namespace = Some(ns.to_string());
            } else if let Some(kv) = w.strip_prefix("--from-literal=") {
                cmd.literal
                    .insert(kv.split('=').next().unwrap().to_string());
            } else if let Some(kv) = w.strip_prefix("--from-file=") {
                let key = match kv.split_once('=') {
                    Some((k, _)) => k,
                    None => kv.rsplit('/').next().unwrap(),
                };
                cmd.file.insert(key.to_string());
            }
        }
        out.push(cmd);
    }
    out
}

fn example_secrets_dir() -> PathBuf {
    root().join("operator/tests/example-secrets")
}

/// The Secrets a spec references, each with the key sets the relay reads from it (any one of
/// them; none listed: any keys), and the keys whose values are no secret (a login, a client
/// ID), which a command may give with `--from-literal`.
fn keys_read(
    spec: &smtp_relay_operator::floor::crd::SmtpRelaySpec,
) -> (BTreeMap<String, Vec<BTreeSet<String>>>, BTreeSet<String>) {
    let mut wanted: BTreeMap<String, Vec<BTreeSet<String>>> = BTreeMap::new();
    let set = |keys: &[&str]| {
        keys.iter()
            .map(|k| (*k).to_string())
            .collect::<BTreeSet<_>>()
    };
    let mut add = |name: &str, sets: Vec<BTreeSet<String>>| {
        wanted.entry(name.to_string()).or_default().extend(sets);
    };
    let mut literal_ok: BTreeSet<String> = set(&["clientId"]);
    for secret in smtp_relay_operator::observe::mapping::referenced_secrets(spec) {
        add(secret, Vec::new());
    }
    if let Some(c) = &spec.relayhost.credentials_secret_ref {
        add(&c.name, vec![set(&[&c.username_key, &c.password_key])]);
        literal_ok.insert(c.username_key.clone());
    }
    if let Some(o) = &spec.relayhost.oauth2 {
        let grants = [
            &["clientId", "clientSecret"][..],
            &["serviceAccount.json"],
            &["clientId", "refreshToken"],
            &["clientId", "clientSecret", "refreshToken"],
        ];
        add(&o.secret_ref.name, grants.iter().map(|g| set(g)).collect());
    }
    if let Some(r) = spec
        .relayhost
        .tls
        .as_ref()
        .and_then(|t| t.ca_secret_key_ref.as_ref())
    {
        add(&r.name, vec![set(&[&r.key])]);
    }
    if let Some(r) = &spec.tls_secret_ref {
        add(&r.name, vec![set(&["tls.crt", "tls.key"])]);
    }
    (wanted, literal_ok)
}

/// What an example must say about every Secret its SmtpRelay references, and the keys each
/// must have. Rules in [`examples_create_no_secret_and_show_how_to_create_each`].
fn example_findings(
    stem: &str,
    text: &str,
    fixtures: Option<&str>,
) -> (Option<String>, Vec<String>) {
    let mut errs = Vec::new();
    let docs = parse_docs(text);
    for doc in &docs {
        if kind(doc) != "SmtpRelay" {
            errs.push(format!(
                "{stem}: contains a {} {:?}: `kubectl apply` of the example would overwrite \
                 the user's own; show the command that creates it in a comment instead",
                kind(doc),
                doc["metadata"]["name"]
            ));
        }
    }
    let relays = all_of(&docs, "SmtpRelay");
    let [relay] = relays[..] else {
        errs.push(format!("{stem}: {} SmtpRelays, not one", relays.len()));
        return (None, errs);
    };
    let name = relay["metadata"]["name"].as_str().map(str::to_string);
    let service = relay["spec"]["service"]["type"]
        .as_str()
        .unwrap_or("ClusterIP");
    if service != "ClusterIP" {
        errs.push(format!(
            "{stem}: a {service} Service: examples keep the relay inside the cluster \
             (ClusterIP) and say in a comment how to expose it"
        ));
    }
    let typed: smtp_relay_operator::floor::crd::SmtpRelay =
        serde_yaml::from_value(relay.clone()).unwrap();
    let (wanted, literal_ok) = keys_read(&typed.spec);
    let commands = create_secret_commands(text);
    for (secret, sets) in &wanted {
        let Some(cmd) = commands.iter().find(|c| &c.name == secret) else {
            errs.push(format!(
                "{stem}: references Secret {secret:?} but its comments show no \
                 `kubectl create secret generic {secret} -n mail ...`"
            ));
            continue;
        };
        if cmd.namespace.as_deref() != Some("mail") {
            errs.push(format!(
                "{stem}: the command for {secret:?} lacks `-n mail`"
            ));
        }
        let keys = cmd.keys();
        if keys.is_empty() || !(sets.is_empty() || sets.contains(&keys)) {
            errs.push(format!(
                "{stem}: the command for {secret:?} creates keys {keys:?}; the SmtpRelay reads \
                 one of {sets:?}"
            ));
        }
        for key in cmd.literal.difference(&literal_ok) {
            errs.push(format!(
                "{stem}: {secret:?} key {key:?} is a secret value given with --from-literal: \
                 use --from-file so it stays out of the shell history"
            ));
        }
    }
    for cmd in &commands {
        if !wanted.contains_key(&cmd.name) {
            errs.push(format!(
                "{stem}: a command creates Secret {:?}, which the SmtpRelay does not reference",
                cmd.name
            ));
        }
    }
    errs.extend(fixture_findings(stem, &commands, fixtures));
    (name, errs)
}

/// The tests' stand-ins for an example's Secrets (operator/tests/example-secrets/<stem>.yaml)
/// are the Secrets its commands create, with the same keys.
fn fixture_findings(stem: &str, commands: &[CreateSecret], fixtures: Option<&str>) -> Vec<String> {
    let fixture: BTreeMap<String, BTreeSet<String>> = parse_docs(fixtures.unwrap_or_default())
        .iter()
        .filter(|d| kind(d) == "Secret")
        .map(|s| {
            let keys = s["stringData"]
                .as_mapping()
                .into_iter()
                .flatten()
                .map(|(k, _)| k.as_str().unwrap().to_string())
                .collect();
            (s["metadata"]["name"].as_str().unwrap().to_string(), keys)
        })
        .collect();
    let shown: BTreeMap<String, BTreeSet<String>> = commands
        .iter()
        .map(|c| (c.name.clone(), c.keys()))
        .collect();
    if fixture == shown {
        return Vec::new();
    }
    vec![format!(
        "{stem}: operator/tests/example-secrets/{stem}.yaml holds the Secrets {fixture:?}; \
             the example's commands create {shown:?}"
    )]
}

/// The examples are applied with `kubectl apply -f`: one that carried a Secret would overwrite
/// the user's real one (for a delegated OAuth2 login, a refresh token that only a new sign-in
/// gives back). So no example contains a Secret; each shows, in its comments, the
/// `kubectl create secret ... -n mail` command for every Secret it references, with the keys
/// the relay reads and secret values from files; the tests' placeholder Secrets
/// (operator/tests/example-secrets/) match those commands; and no two examples share a relay
/// name or a Secret name, so applying one never replaces another. And an example is not about
/// exposure: its relay gets a ClusterIP Service (the quick start's must not put port 25 on a
/// load balancer); its comments say how to expose it.
#[test]
fn examples_create_no_secret_and_show_how_to_create_each() {
    let mut errs = Vec::new();
    let mut relays: BTreeMap<String, String> = BTreeMap::new();
    let mut secrets: BTreeMap<String, String> = BTreeMap::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(chart_dir().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    assert!(paths.len() >= 5, "examples: {paths:?}");
    let mut stems = BTreeSet::new();
    for path in &paths {
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(path).unwrap();
        let fixture = std::fs::read_to_string(example_secrets_dir().join(format!("{stem}.yaml")));
        let (name, found) = example_findings(&stem, &text, fixture.ok().as_deref());
        errs.extend(found);
        if let Some(name) = name {
            if let Some(other) = relays.insert(name.clone(), stem.clone()) {
                errs.push(format!(
                    "{stem}: relay name {name:?} is also {other}'s: applying one replaces the other"
                ));
            }
        }
        for cmd in create_secret_commands(&text) {
            if let Some(other) = secrets.insert(cmd.name.clone(), stem.clone()) {
                errs.push(format!(
                    "{stem}: Secret {:?} is also {other}'s: name it after this example",
                    cmd.name
                ));
            }
        }
        stems.insert(stem);
    }
    // No fixture without its example.
    for entry in std::fs::read_dir(example_secrets_dir())
        .into_iter()
        .flatten()
    {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        if !stems.contains(&stem) {
            errs.push(format!("{}: no example {stem}.yaml", path.display()));
        }
    }
    assert!(errs.is_empty(), "{}", errs.join("\n"));
}

/// The README's table of examples lists every example, each with the Secrets its commands
/// create (the ones to create before applying it).
#[test]
fn readme_lists_every_example_with_the_secrets_to_create() {
    let readme = readme();
    let mut errs = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(chart_dir().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    for path in &paths {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let link = format!("| [`examples/{file}`](examples/{file}) |");
        let Some(row) = readme.lines().find(|l| l.starts_with(&link)) else {
            errs.push(format!("README.md's Examples table has no row for {file}"));
            continue;
        };
        let last = row.trim_end_matches('|').rsplit('|').next().unwrap();
        let listed: BTreeSet<String> = last
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect();
        let text = std::fs::read_to_string(path).unwrap();
        let created: BTreeSet<String> = create_secret_commands(&text)
            .into_iter()
            .map(|c| c.name)
            .collect();
        if listed != created {
            errs.push(format!(
                "README.md lists {listed:?} as the Secrets to create for {file}; its commands \
                 create {created:?}"
            ));
        }
    }
    assert!(errs.is_empty(), "{}", errs.join("\n"));
}

#[test]
fn the_examples_rule_catches_what_it_should() {
    // The rule itself, on small examples: each line of `bad` breaks it once.
    let relay = |extra: &str| {
        format!(
            "apiVersion: smtprelay.dev/v1alpha1\nkind: SmtpRelay\nmetadata: {{name: r}}\n\
             spec:\n  domain: example.net\n  relayhost:\n    host: smtp.example.net\n{extra}"
        )
    };
    let login = "    credentialsSecretRef: {name: login}\n";
    let good = "#   kubectl create secret generic login -n mail \\\n\
                #     --from-literal=username=me --from-file=password=./password\n"
        .to_string()
        + &relay(login);
    let fixture = "kind: Secret\nmetadata: {name: login}\nstringData: {username: a, password: b}\n";
    let (name, errs) = example_findings("good", &good, Some(fixture));
    assert_eq!(name.as_deref(), Some("r"));
    assert!(errs.is_empty(), "{errs:?}");
    let cases = [
        // The Secret in the file.
        (
            format!("{good}---\n{fixture}"),
            Some(fixture),
            "contains a Secret",
        ),
        // No command at all.
        (
            relay(login),
            Some(fixture),
            "show no `kubectl create secret",
        ),
        // The password on the command line.
        (
            good.replace(
                "--from-file=password=./password",
                "--from-literal=password=x",
            ),
            Some(fixture),
            "--from-literal",
        ),
        // A key the relay does not read.
        (
            good.replace("password=./", "pass=./"),
            Some(fixture),
            "creates keys",
        ),
        // Another namespace.
        (
            good.replace("-n mail", "-n other"),
            Some(fixture),
            "lacks `-n mail`",
        ),
        // No fixture for the tests.
        (good.clone(), None, "example-secrets"),
        // Exposed.
        (
            good.clone() + "  service: {type: LoadBalancer}\n",
            Some(fixture),
            "a LoadBalancer Service",
        ),
    ];
    for (text, fixture, needle) in cases {
        let (_, errs) = example_findings("bad", &text, fixture);
        assert!(
            errs.iter().any(|e| e.contains(needle)),
            "{needle:?} not reported for\n{text}\ngot {errs:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The values schema checks `relays[].spec` with the CRD's own spec schema

/// The CRD's spec schema as JSON Schema for values.schema.json. Two changes: `nullable` becomes
/// a "null" type, and objects with fixed properties refuse unknown keys. The API server would
/// silently prune a misspelt field; Helm then fails instead, naming it.
fn values_spec_schema(crd: &serde_json::Value) -> serde_json::Value {
    use serde_json::{json, Value as J};
    let J::Object(map) = crd else {
        return crd.clone();
    };
    let mut out = serde_json::Map::new();
    for (k, v) in map {
        match k.as_str() {
            // Kubernetes extensions and CEL rules mean nothing to JSON Schema.
            k if k.starts_with("x-kubernetes-") || k == "nullable" => {}
            "properties" => {
                let props = v.as_object().unwrap();
                let props = props
                    .iter()
                    .map(|(name, s)| (name.clone(), values_spec_schema(s)))
                    .collect();
                out.insert(k.clone(), J::Object(props));
            }
            "items" | "additionalProperties" if v.is_object() => {
                out.insert(k.clone(), values_spec_schema(v));
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    if map.get("nullable") == Some(&J::Bool(true)) {
        if let Some(t) = out.get("type").cloned() {
            out.insert("type".into(), json!([t, "null"]));
        }
        if let Some(J::Array(e)) = out.get_mut("enum") {
            if !e.contains(&J::Null) {
                e.push(J::Null);
            }
        }
    }
    let preserves = map.get("x-kubernetes-preserve-unknown-fields") == Some(&J::Bool(true));
    if map.contains_key("properties") && !map.contains_key("additionalProperties") && !preserves {
        out.insert("additionalProperties".into(), J::Bool(false));
    }
    J::Object(out)
}

fn expected_values_schema() -> (PathBuf, String) {
    let path = chart_dir().join("values.schema.json");
    let mut schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let crd_spec = serde_json::to_value(&crd_schema()["properties"]["spec"]).unwrap();
    schema["definitions"]["smtpRelaySpec"] = values_spec_schema(&crd_spec);
    (path, serde_json::to_string_pretty(&schema).unwrap() + "\n")
}

/// `UPDATE=1` rewrites values.schema.json (charts/sync-crds.sh does it after copying the CRD).
#[test]
fn values_schema_embeds_the_crd_spec_schema() {
    let (path, expected) = expected_values_schema();
    if std::env::var_os("UPDATE").is_some() {
        std::fs::write(&path, &expected).unwrap();
    }
    let current = std::fs::read_to_string(&path).unwrap();
    assert!(
        current == expected,
        "{} is stale (definitions.smtpRelaySpec must be the CRD's spec schema): run charts/sync-crds.sh",
        path.display()
    );
    let schema: serde_json::Value = serde_json::from_str(&current).unwrap();
    assert_eq!(
        schema["properties"]["relays"]["items"]["properties"]["spec"]["$ref"],
        "#/definitions/smtpRelaySpec"
    );
}

#[test]
fn values_schema_rejects_wrong_relay_specs() {
    let cases = [
        (
            "relays: [{name: r, spec: {domain: example.net, relayhost: {hots: h}}}]",
            "/relays/0/spec/relayhost",
        ),
        (
            "relays: [{name: r, spec: {domain: example.net, relayhost: {host: h}, mode: STRICT}}]",
            "/relays/0/spec/mode",
        ),
        (
            "relays: [{name: r, spec: {domain: example.net, relayhost: {host: h, port: 0}}}]",
            "/relays/0/spec/relayhost/port",
        ),
        (
            "relays: [{name: r, spec: {domain: example.net, relayhost: {host: h}, replica: 2}}]",
            "'replica'",
        ),
    ];
    for (values, needle) in cases {
        match try_render(values) {
            Ok(_) => panic!("helm template accepted a wrong relay spec: {values}"),
            Err(e) => assert!(e.contains(needle), "{values}: no {needle:?} in\n{e}"),
        }
    }
}

#[test]
fn packaged_chart_renders_like_the_source() {
    // What users install from a chart repository is the .tgz: .helmignore must keep every
    // template, the CRD and the schema in it.
    let dir = tempfile::tempdir().unwrap();
    let out = run(Command::new(helm())
        .current_dir(root())
        .args(["package", "charts/smtp-relay-operator", "--destination"])
        .arg(dir.path()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tgz = dir.path().join(format!(
        "smtp-relay-operator-{}.tgz",
        chart_field("version")
    ));
    let render_from = |chart: &Path| {
        let out = run(Command::new(helm())
            .args(["template", RELEASE])
            .arg(chart)
            .args(["--namespace", NAMESPACE, "--kube-version", KUBE_VERSION])
            .args(["--include-crds", "--set", "replicaCount=two"]));
        // The schema travels too: a wrong value still fails.
        assert!(
            !out.status.success(),
            "{} lost its values schema",
            chart.display()
        );
        let out = run(Command::new(helm())
            .args(["template", RELEASE])
            .arg(chart)
            .args(["--namespace", NAMESPACE, "--kube-version", KUBE_VERSION])
            .arg("--include-crds"));
        assert!(out.status.success());
        parse_docs(&String::from_utf8(out.stdout).unwrap())
    };
    assert_eq!(render_from(&tgz), render_from(&chart_dir()));
}

// ---------------------------------------------------------------------------------------------
// Alerts and dashboard, checked by Prometheus' own promtool

fn promtool(args: &[&str], dir: &Path) -> Output {
    run(Command::new(smtp_relay_e2e::tools::bin("promtool"))
        .current_dir(dir)
        .args(args))
}

/// The PrometheusRule the chart renders with `values`, as a Prometheus rules file.
fn rules_file(values: &str) -> String {
    let docs = render(values);
    let rule = one(&docs, "PrometheusRule");
    let mut file = serde_yaml::Mapping::new();
    file.insert("groups".into(), rule["spec"]["groups"].clone());
    serde_yaml::to_string(&file).unwrap()
}

/// `promtool test rules` of e2e/alerts/alerts.test.yaml against the rules rendered with
/// `values`; the output, and whether every test passed.
fn alert_tests(values: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yaml"), rules_file(values)).unwrap();
    std::fs::copy(
        root().join("e2e/alerts/alerts.test.yaml"),
        dir.path().join("alerts.test.yaml"),
    )
    .unwrap();
    let check = promtool(&["check", "rules", "rules.yaml"], dir.path());
    assert!(
        check.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let out = promtool(&["test", "rules", "alerts.test.yaml"], dir.path());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

const MONITORING: &str = "prometheusRule: {enabled: true}\ngrafanaDashboard: {enabled: true}\nrelayPodMonitor: {enabled: true}\n";

#[test]
fn the_alerts_pass_promtool_and_their_unit_tests() {
    let (passed, out) = alert_tests(MONITORING);
    assert!(passed, "promtool test rules:\n{out}");
    assert!(out.contains("SUCCESS"), "{out}");
    // Every alert of the chart has a unit test.
    let rules: Value = serde_yaml::from_str(&rules_file(MONITORING)).unwrap();
    let tests = std::fs::read_to_string(root().join("e2e/alerts/alerts.test.yaml")).unwrap();
    let alerts: Vec<&str> = rules["groups"][0]["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|r| r["alert"].as_str())
        .collect();
    assert_eq!(alerts.len(), 14, "{alerts:?}");
    for alert in alerts {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "{alert} has no test in e2e/alerts/alerts.test.yaml"
        );
    }
}

/// The unit tests can fail: with the oldest-message threshold at an hour, the alert the tests
/// expect at 40 minutes does not fire.
#[test]
fn the_alert_tests_fail_when_a_threshold_moves() {
    let (passed, out) = alert_tests(&format!(
        "{MONITORING}prometheusRule: {{enabled: true, oldestMessageMinutes: 60}}\n"
    ));
    assert!(!passed, "{out}");
    assert!(out.contains("SmtpRelayOldestMessageTooOld"), "{out}");
    assert!(!out.contains("SmtpRelayQueueGrowing"), "{out}");
}

#[test]
fn the_dashboard_is_the_file_and_every_query_parses() {
    let docs = render(MONITORING);
    let cm = all_of(&docs, "ConfigMap")
        .into_iter()
        .find(|c| c["metadata"]["name"] == "smtp-relay-operator-dashboard")
        .expect("the dashboard ConfigMap");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let file = std::fs::read_to_string(chart_dir().join("dashboards/smtp-relay.json")).unwrap();
    let shipped = cm["data"]["smtp-relay.json"].as_str().unwrap();
    assert_eq!(shipped.trim_end(), file.trim_end());
    let dashboard: serde_json::Value = serde_json::from_str(shipped).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() >= 15, "{exprs:?}");
    // Grafana's variables as Prometheus sees them once substituted.
    let rules: Vec<serde_json::Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let e = e
                .replace("$__rate_interval", "5m")
                .replace("$__range", "6h")
                .replace("$namespace", ".*")
                .replace("$relay", ".*");
            serde_json::json!({"record": format!("dashboard:panel_{i}"), "expr": e})
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(dir.path().join("dashboard.yaml"), file.to_string()).unwrap();
    let out = promtool(&["check", "rules", "dashboard.yaml"], dir.path());
    assert!(
        out.status.success(),
        "the dashboard's queries:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
