//! The support window README.md states ("Supported versions") and what keeps it true, without a
//! cluster: the workspace's `rust-version` is the highest any locked dependency needs; README.md,
//! the chart's `kubeVersion`, operator/Cargo.toml's k8s-openapi feature and the Kubernetes the
//! e2e control plane is built from say the same Kubernetes minors, and the oldest control plane
//! (`e2e/controlplane/oldest`, the same sources) is built from the oldest; the pinned Helm is in
//! the stated range; and renovate.json parses and covers every kind of pinned version the project has.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

/// A dotted version as (major, minor, patch), missing parts 0: "1.89" == "1.89.0".
type Version = (u64, u64, u64);

fn version(text: &str) -> Version {
    let mut parts = text.trim().trim_start_matches('v').split('.').map(|p| {
        p.parse::<u64>()
            .unwrap_or_else(|_| panic!("{text:?} is not a dotted version"))
    });
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    let patch = parts.next().unwrap_or(0);
    assert!(parts.next().is_none(), "{text:?}: more than three parts");
    (major, minor, patch)
}

fn show((major, minor, patch): Version) -> String {
    format!("{major}.{minor}.{patch}")
}

/// `cargo metadata` of the workspace, from Cargo.lock as it is (`--locked`).
fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(&cargo)
        .current_dir(root())
        .args(["metadata", "--format-version", "1", "--locked"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cargo} metadata: {e}"));
    assert!(
        out.status.success(),
        "cargo metadata --locked failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn packages(meta: &Value) -> &[Value] {
    meta["packages"].as_array().unwrap()
}

fn package<'a>(meta: &'a Value, name: &str) -> &'a Value {
    packages(meta)
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no package {name} in cargo metadata"))
}

/// The workspace's `rust-version`, as every member inherits it from [workspace.package].
fn workspace_rust_version(meta: &Value) -> Version {
    let members: BTreeSet<&str> = meta["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap())
        .collect();
    let versions: BTreeSet<Version> = packages(meta)
        .iter()
        .filter(|p| members.contains(p["id"].as_str().unwrap()))
        .map(|p| {
            let rv = p["rust_version"]
                .as_str()
                .unwrap_or_else(|| panic!("workspace member {} has no rust-version", p["name"]));
            version(rv)
        })
        .collect();
    assert_eq!(
        versions.len(),
        1,
        "the workspace members disagree on rust-version: {versions:?}"
    );
    versions.into_iter().next().unwrap()
}

/// The "Supported versions" section of README.md: its lines up to the next `## ` heading.
fn readme_support_section() -> Vec<String> {
    let readme = read("README.md");
    let mut lines = readme
        .lines()
        .skip_while(|l| l.trim() != "## Supported versions");
    assert!(
        lines.next().is_some(),
        "README.md has no \"## Supported versions\" section"
    );
    lines
        .take_while(|l| !l.starts_with("## "))
        .map(str::to_owned)
        .collect()
}

/// The words after `- <label> ` on the section's bullet for `label` ("Kubernetes", "Rust", "Helm").
fn readme_bullet(label: &str) -> Vec<String> {
    let prefix = format!("- {label} ");
    let section = readme_support_section();
    let line = section
        .iter()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| {
            panic!("README.md's Supported versions has no line starting {prefix:?}")
        });
    line[prefix.len()..]
        .split_whitespace()
        .map(|w| w.trim_end_matches([',', ':', ';', '.']).to_owned())
        .collect()
}

/// README.md's Kubernetes window, `- Kubernetes 1.35 to 1.37`: the oldest and newest minors.
fn readme_kubernetes_window() -> (u64, u64) {
    let words = readme_bullet("Kubernetes");
    assert!(
        words.len() >= 3 && words[1] == "to",
        "README.md: expected \"- Kubernetes 1.X to 1.Y\", found {words:?}"
    );
    let (oldest, newest) = (version(&words[0]), version(&words[2]));
    assert!(
        oldest.0 == 1 && newest.0 == 1 && oldest.1 <= newest.1 && oldest.2 == 0 && newest.2 == 0,
        "README.md: {words:?} is not a range of Kubernetes 1.x minors"
    );
    (oldest.1, newest.1)
}

/// The minor of a k8s-openapi feature "v1_35".
fn k8s_openapi_minor(feature: &str) -> Option<u64> {
    feature.strip_prefix("v1_")?.parse().ok()
}

#[test]
fn no_locked_dependency_needs_a_newer_rust_than_the_workspace() {
    let meta = metadata();
    let workspace = workspace_rust_version(&meta);
    let mut too_new: Vec<(Version, String)> = packages(&meta)
        .iter()
        .filter_map(|p| {
            let needs = version(p["rust_version"].as_str()?);
            (needs > workspace).then(|| (needs, format!("{} {}", p["name"], p["version"])))
        })
        .collect();
    too_new.sort();
    too_new.reverse();
    assert!(
        too_new.is_empty(),
        "Cargo.toml's rust-version is {} but these locked dependencies need a newer Rust: {}. \
         Raise [workspace.package] rust-version to {} (and README.md's \"- Rust\" line with it).",
        show(workspace),
        too_new
            .iter()
            .map(|(v, name)| format!("{} needs Rust {}", name.replace('"', ""), show(*v)))
            .collect::<Vec<_>>()
            .join(", "),
        show(too_new[0].0),
    );
    // The floor is true, not merely high enough: some dependency needs exactly it.
    let highest = packages(&meta)
        .iter()
        .filter(|p| !p["source"].is_null())
        .filter_map(|p| p["rust_version"].as_str().map(version))
        .max();
    assert_eq!(
        highest,
        Some(workspace),
        "Cargo.toml's rust-version {} is above what any locked dependency needs (the highest is \
         {:?}): lower it to the true minimum",
        show(workspace),
        highest.map(show),
    );
}

#[test]
fn readme_states_the_workspace_rust_version() {
    let meta = metadata();
    let workspace = workspace_rust_version(&meta);
    let words = readme_bullet("Rust");
    assert_eq!(
        version(&words[0]),
        workspace,
        "README.md's \"- Rust {}\" is not Cargo.toml's rust-version {}",
        words[0],
        show(workspace)
    );
}

#[test]
fn readme_chart_and_operator_state_the_same_kubernetes_window() {
    let (oldest, newest) = readme_kubernetes_window();

    // The chart refuses clusters older than the window (and accepts pre-release builds such as
    // v1.35.2-eks-...: the "-0"); it sets no upper bound, so a new minor is not refused.
    let chart: serde_yaml::Value =
        serde_yaml::from_str(&read("charts/smtp-relay-operator/Chart.yaml")).unwrap();
    let kube_version = chart["kubeVersion"]
        .as_str()
        .expect("Chart.yaml has a kubeVersion");
    let expected = format!(">=1.{oldest}.0-0");
    assert_eq!(
        kube_version, expected,
        "Chart.yaml's kubeVersion {kube_version:?} does not match README.md's oldest supported \
         Kubernetes 1.{oldest}"
    );

    // k8s-openapi compiles the operator against one Kubernetes version: the oldest supported
    // one, so nothing newer is used by mistake.
    let meta = metadata();
    let operator = package(&meta, "smtp-relay-operator");
    let dependency = operator["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "k8s-openapi")
        .expect("the operator depends on k8s-openapi");
    let minors: Vec<u64> = dependency["features"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| k8s_openapi_minor(f.as_str().unwrap()))
        .collect();
    assert_eq!(
        minors,
        vec![oldest],
        "operator/Cargo.toml's k8s-openapi feature is {minors:?} (as v1_N), README.md's oldest \
         supported Kubernetes is 1.{oldest}: the feature must be v1_{oldest}"
    );

    // The window ends where the bindings do: k8s-openapi's "latest" feature.
    let k8s_openapi = package(&meta, "k8s-openapi");
    let latest = k8s_openapi["features"]["latest"]
        .as_array()
        .and_then(|l| l.first())
        .and_then(|f| k8s_openapi_minor(f.as_str()?))
        .expect("k8s-openapi has a \"latest\" feature naming v1_N");
    assert_eq!(
        newest, latest,
        "README.md's newest supported Kubernetes is 1.{newest}, k8s-openapi {} knows up to 1.{latest}",
        k8s_openapi["version"]
    );
}

/// The `k8s.io/kubernetes` version a go.mod requires.
fn go_mod_kubernetes(path: &str) -> Version {
    version(&smtp_relay_e2e::tools::go_mod_requirement(
        path,
        "k8s.io/kubernetes",
    ))
}

/// The real node runs the newest Kubernetes README.md supports (the oldest runs in
/// `e2e/controlplane/oldest`): both ends of the window are proven.
#[test]
fn the_e2e_control_plane_runs_the_newest_supported_kubernetes() {
    let (_, newest) = readme_kubernetes_window();
    let kubernetes = show(go_mod_kubernetes("e2e/controlplane/go.mod"));
    let (_, minor, _) = version(&kubernetes);
    assert_eq!(
        minor, newest,
        "the e2e control plane is Kubernetes {kubernetes}, README.md's newest supported is \
         1.{newest}: move them together (in e2e/controlplane: go get k8s.io/kubernetes@v1.{newest}.PATCH, \
         the replaces to v0.{newest}.PATCH, go mod tidy)"
    );
}

/// `e2e/controlplane/oldest` builds the e2e control plane's own sources (links, not copies)
/// against README.md's oldest supported Kubernetes, with every staging module of that release.
#[test]
fn the_oldest_e2e_control_plane_runs_the_oldest_supported_kubernetes() {
    let (oldest, _) = readme_kubernetes_window();
    let path = "e2e/controlplane/oldest/go.mod";
    let kubernetes = go_mod_kubernetes(path);
    assert_eq!(
        (kubernetes.0, kubernetes.1),
        (1, oldest),
        "{path} builds Kubernetes {}, README.md's oldest supported is 1.{oldest}: move them \
         together (in e2e/controlplane/oldest: go get k8s.io/kubernetes@v1.{oldest}.PATCH, the \
         replaces to v0.{oldest}.PATCH, go mod tidy)",
        show(kubernetes)
    );
    // k8s.io/kubernetes requires its staging modules at v0.0.0: each is replaced by the
    // release of the same minor and patch.
    let staging = format!("v0.{}.{}", kubernetes.1, kubernetes.2);
    let go_mod = read(path);
    let replaces: Vec<(&str, &str)> = go_mod
        .lines()
        .filter_map(|l| {
            let (from, to) = l.split_once("=>")?;
            let mut to = to.split_whitespace();
            let module = to.next()?;
            (module.starts_with("k8s.io/") && from.trim() == module)
                .then(|| (module, to.next().unwrap_or("")))
        })
        .collect();
    assert!(
        replaces.iter().any(|(m, _)| *m == "k8s.io/api"),
        "{path} replaces no staging module"
    );
    for (module, version) in replaces {
        assert_eq!(
            version,
            staging,
            "{path} replaces {module} by {version}, not the {staging} of k8s.io/kubernetes {}",
            show(kubernetes)
        );
    }

    // The same sources: every .go file of e2e/controlplane is linked there, and nothing else.
    let dir = root().join("e2e/controlplane");
    let names = |dir: &Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".go"))
            .collect()
    };
    let sources = names(&dir);
    let linked = names(&dir.join("oldest"));
    assert_eq!(
        linked, sources,
        "e2e/controlplane/oldest holds other .go files than e2e/controlplane (each is a link: \
         cd e2e/controlplane/oldest && ln -s ../NAME.go .)"
    );
    for name in &linked {
        let link = dir.join("oldest").join(name);
        let target = std::fs::read_link(&link)
            .unwrap_or_else(|e| panic!("e2e/controlplane/oldest/{name} is not a link: {e}"));
        assert_eq!(
            target,
            Path::new("..").join(name),
            "e2e/controlplane/oldest/{name} links elsewhere"
        );
    }
}

/// The default of `NAME="${NAME:-VALUE}"` in scripts/install-deps.sh.
fn install_deps_default(name: &str) -> String {
    let script = read("scripts/install-deps.sh");
    let marker = format!("{name}:-");
    let start = script
        .find(&marker)
        .unwrap_or_else(|| panic!("scripts/install-deps.sh sets no {name} default"))
        + marker.len();
    let rest = &script[start..];
    rest[..rest.find('}').unwrap()].to_owned()
}

#[test]
fn the_pinned_helm_is_in_the_stated_range() {
    let words = readme_bullet("Helm");
    let minimum = version(&words[0]);
    let pinned = version(&install_deps_default("HELM_VERSION"));
    assert!(
        pinned >= minimum,
        "scripts/install-deps.sh builds Helm {}, older than README.md's minimum {}",
        show(pinned),
        show(minimum)
    );
    let release = read(".github/workflows/release.yml");
    let after = &release[release
        .find("azure/setup-helm@")
        .expect("release.yml sets up Helm")..];
    let released = after
        .lines()
        .find_map(|l| l.trim().strip_prefix("version: "))
        .expect("release.yml's setup-helm has a version");
    assert!(
        version(released) >= minimum,
        "release.yml packages the chart with Helm {released}, older than README.md's minimum {}",
        show(minimum)
    );
}

fn renovate() -> Value {
    serde_json::from_str(&read("renovate.json"))
        .unwrap_or_else(|e| panic!("renovate.json is not JSON: {e}"))
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// A package rule's `matchUpdateTypes`.
fn types(rule: &Value) -> Vec<&str> {
    strings(&rule["matchUpdateTypes"])
}

/// Every `"key": true` anywhere in `v`, as JSON paths.
fn set_true(v: &Value, key: &str, path: &str, found: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let here = format!("{path}.{k}");
                if k == key && child == &Value::Bool(true) {
                    found.push(here.clone());
                }
                set_true(child, key, &here, found);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                set_true(child, key, &format!("{path}[{i}]"), found);
            }
        }
        _ => {}
    }
}

/// The Go modules the e2e builds: the control plane, the same at the oldest supported
/// Kubernetes, the node's container runtime, CoreDNS, the NetworkPolicy controller, kstatus.
const E2E_GO_MODS: [&str; 6] = [
    "e2e/controlplane/go.mod",
    "e2e/controlplane/oldest/go.mod",
    "e2e/runtime/go.mod",
    "e2e/coredns/go.mod",
    "e2e/netpol/go.mod",
    "e2e/kstatus/go.mod",
];

/// The versions a script pins: its `NAME_VERSION="${NAME_VERSION:-default}"` lines.
fn pins_of(script: &str) -> Vec<String> {
    read(script)
        .lines()
        .filter_map(|l| {
            let (name, value) = l.split_once('=')?;
            let name = name.trim();
            (name.ends_with("_VERSION") && value.starts_with(&format!("\"${{{name}:-")))
                .then(|| name.to_owned())
        })
        .collect()
}

#[test]
fn renovate_covers_every_pinned_version_and_merges_nothing_by_itself() {
    let config = renovate();

    let enabled = strings(&config["enabledManagers"]);
    for manager in [
        "cargo",          // Cargo.toml, Cargo.lock
        "gomod",          // every go.mod of e2e/ (E2E_GO_MODS)
        "github-actions", // .github/workflows/release.yml
        "helm-values",    // the chart's image references
        "custom.regex",   // the tools scripts/install-deps.sh builds, Helm in release.yml
    ] {
        assert!(
            enabled.contains(&manager),
            "renovate.json's enabledManagers lacks {manager}: {enabled:?}"
        );
    }
    // gomod finds every go.mod by itself: these are the ones the e2e builds.
    for go_mod in E2E_GO_MODS {
        assert!(root().join(go_mod).is_file(), "{go_mod} is gone");
    }
    assert!(
        strings(&config["helm-values"]["managerFilePatterns"])
            .iter()
            .any(|p| p.contains("values")),
        "renovate.json's helm-values does not read the chart's values.yaml"
    );

    // Every version scripts/install-deps.sh pins, and the Helm release.yml packages with, has
    // a regex manager.
    let custom = config["customManagers"]
        .as_array()
        .expect("renovate.json has customManagers");
    let covers = |file: &str, needle: &str| {
        custom.iter().any(|m| {
            m["customType"] == "regex"
                && strings(&m["managerFilePatterns"])
                    .iter()
                    .any(|p| p.contains(file))
                && strings(&m["matchStrings"])
                    .iter()
                    .any(|s| s.contains(needle))
                && m["datasourceTemplate"].is_string()
                && m["depNameTemplate"].is_string()
        })
    };
    for (script, first) in [
        ("install-deps", "HELM_VERSION"),
        ("build-images", "SYFT_VERSION"),
    ] {
        let pins = pins_of(&format!("scripts/{script}.sh"));
        assert!(
            pins.iter().any(|p| p == first),
            "no pins found in {script}.sh"
        );
        for pin in &pins {
            assert!(
                covers(script, &format!("{pin}:-")),
                "scripts/{script}.sh pins {pin}, which no regex manager in renovate.json updates"
            );
        }
    }
    for file in ["Dockerfile", "release"] {
        assert!(
            covers(file, "cargo-auditable@"),
            "cargo-auditable in {file} has no regex manager in renovate.json"
        );
    }
    assert!(
        covers("release", "setup-helm"),
        "the Helm version in release.yml has no regex manager in renovate.json"
    );

    // Once a week, non-major updates together, majors apart.
    let schedule = strings(&config["schedule"]);
    assert!(
        schedule.len() == 1
            && schedule[0]
                .split_whitespace()
                .nth(4)
                .is_some_and(|d| d != "*"),
        "renovate.json's schedule is not one weekly slot: {schedule:?}"
    );
    let rules = config["packageRules"].as_array().unwrap();
    assert!(
        rules.iter().any(|r| {
            r["groupName"].is_string()
                && r["matchManagers"].is_null()
                && r["matchPackageNames"].is_null()
                && ["minor", "patch"].iter().all(|t| types(r).contains(t))
                && !types(r).contains(&"major")
        }),
        "renovate.json has no rule grouping every minor and patch update"
    );
    for rule in rules.iter().filter(|r| types(r).contains(&"major")) {
        assert!(
            !rule["groupName"].is_string(),
            "renovate.json groups major updates: {rule}"
        );
    }

    // The test suite is the gate: nothing merges without a maintainer.
    let mut automerge = Vec::new();
    set_true(&config, "automerge", "", &mut automerge);
    set_true(&config, "platformAutomerge", "", &mut automerge);
    assert!(
        automerge.is_empty(),
        "renovate.json merges by itself at {automerge:?}"
    );
}
