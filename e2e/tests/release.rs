//! What a release publishes besides the images, as docs/versioning.md states it, without a
//! cluster: one version in every place that carries it; CHANGELOG.md kept in its format, its
//! first entry the version the sources build; the chart's Artifact Hub annotations what
//! Artifact Hub reads and what `scripts/set-version.sh` writes; and a release workflow that
//! refuses an undated release, signs every image and the chart, and attests provenance and
//! SBOMs. The SBOMs' contents are checked on the built images (`tests/images.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::collections::BTreeSet;
use std::process::Command;

use serde_yaml::Value;
use smtp_relay_e2e::tools::workspace_root;

fn read(rel: &str) -> String {
    std::fs::read_to_string(workspace_root().join(rel))
        .unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

fn yaml(rel: &str) -> Value {
    serde_yaml::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not YAML: {e}"))
}

fn chart() -> Value {
    yaml("charts/smtp-relay-operator/Chart.yaml")
}

/// One of Chart.yaml's annotations, itself YAML.
fn annotation(name: &str) -> Value {
    let text = chart()["annotations"][name]
        .as_str()
        .unwrap_or_else(|| panic!("Chart.yaml has no annotation {name}"))
        .to_owned();
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("annotation {name} is not YAML: {e}"))
}

fn seq(v: &Value) -> &Vec<Value> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("not a list: {v:?}"))
}

fn string(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

/// One entry of CHANGELOG.md: `## [VERSION] - DATE` and its changes by section.
#[derive(Debug)]
struct Entry {
    version: String,
    date: String,
    changes: Vec<(String, String)>,
}

const SECTIONS: [&str; 6] = [
    "Added",
    "Changed",
    "Deprecated",
    "Removed",
    "Fixed",
    "Security",
];

fn changelog() -> Vec<Entry> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut section: Option<String> = None;
    for line in read("CHANGELOG.md").lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            let (version, date) = heading
                .split_once(" - ")
                .unwrap_or_else(|| panic!("CHANGELOG.md: {line:?} is not \"## [X.Y.Z] - DATE\""));
            let version = version
                .strip_prefix('[')
                .and_then(|v| v.strip_suffix(']'))
                .unwrap_or_else(|| panic!("CHANGELOG.md: {line:?}: the version is not in [ ]"));
            entries.push(Entry {
                version: version.to_owned(),
                date: date.to_owned(),
                changes: Vec::new(),
            });
            section = None;
        } else if let Some(name) = line.strip_prefix("### ") {
            assert!(
                SECTIONS.contains(&name),
                "CHANGELOG.md: section {name:?} is none of {SECTIONS:?}"
            );
            assert!(
                !entries.is_empty(),
                "CHANGELOG.md: {line:?} before any entry"
            );
            section = Some(name.to_owned());
        } else if let Some(text) = line.strip_prefix("- ") {
            if let (Some(entry), Some(section)) = (entries.last_mut(), &section) {
                entry.changes.push((section.clone(), text.to_owned()));
            }
        } else if line.starts_with("  ") && !line.trim().is_empty() {
            if let Some((_, text)) = entries.last_mut().and_then(|e| e.changes.last_mut()) {
                text.push(' ');
                text.push_str(line.trim());
            }
        }
    }
    entries
}

/// X.Y.Z as numbers (a pre-release suffix is ignored: versions here differ in X.Y.Z).
fn numbers(version: &str) -> (u64, u64, u64) {
    let core = version.split('-').next().unwrap();
    let parts: Vec<u64> = core
        .split('.')
        .map(|p| {
            p.parse()
                .unwrap_or_else(|_| panic!("{version} is not X.Y.Z"))
        })
        .collect();
    assert_eq!(parts.len(), 3, "{version} is not X.Y.Z");
    (parts[0], parts[1], parts[2])
}

fn is_date(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

#[test]
fn one_version_in_every_place_that_carries_it() {
    let version = env!("CARGO_PKG_VERSION");
    let chart = chart();
    assert_eq!(
        chart["version"], version,
        "Chart.yaml version != the crates'"
    );
    assert_eq!(
        chart["appVersion"], version,
        "Chart.yaml appVersion != the crates'"
    );
    assert_eq!(
        changelog()[0].version,
        version,
        "CHANGELOG.md's first entry is not the version the sources build (scripts/set-version.sh)"
    );
    // Every crate of the workspace takes the workspace's version.
    for member in ["operator", "image", "plugin", "e2e"] {
        let manifest = read(&format!("{member}/Cargo.toml"));
        assert!(
            manifest.contains("version.workspace = true"),
            "{member}/Cargo.toml has a version of its own"
        );
    }
    // The images: the chart's defaults follow appVersion, the operator's built-in relay image
    // is its own version, and Artifact Hub lists both at it.
    let values = yaml("charts/smtp-relay-operator/values.yaml");
    let mut repositories = Vec::new();
    for key in ["image", "relayImage"] {
        assert_eq!(
            values[key]["tag"], "",
            "{key}.tag must default to appVersion"
        );
        repositories.push(string(&values[key]["repository"]).to_owned());
    }
    assert_eq!(
        smtp_relay_operator::floor::contract::DEFAULT_RELAY_IMAGE,
        format!("{}:{version}", repositories[1])
    );
    let listed: Vec<String> = seq(&annotation("artifacthub.io/images"))
        .iter()
        .map(|i| string(&i["image"]).to_owned())
        .collect();
    let expected: Vec<String> = repositories
        .iter()
        .map(|r| format!("{r}:{version}"))
        .collect();
    assert_eq!(listed, expected, "artifacthub.io/images");
}

#[test]
fn changelog_is_kept_as_docs_versioning_says() {
    let entries = changelog();
    assert!(!entries.is_empty(), "CHANGELOG.md has no entry");
    for (i, entry) in entries.iter().enumerate() {
        assert!(
            is_date(&entry.date) || (i == 0 && entry.date == "Unreleased"),
            "CHANGELOG.md [{}]: {:?} is neither YYYY-MM-DD nor (first entry only) Unreleased",
            entry.version,
            entry.date
        );
        assert!(
            !entry.changes.is_empty() || (i == 0 && entry.date == "Unreleased"),
            "CHANGELOG.md [{}] lists no change",
            entry.version
        );
        for (section, text) in &entry.changes {
            if text.contains("Breaking:") {
                assert!(
                    text.starts_with("**Breaking:**")
                        && (section == "Changed" || section == "Removed"),
                    "CHANGELOG.md [{}]: a breaking change starts with **Breaking:** under Changed \
                     or Removed: {text}",
                    entry.version
                );
            }
        }
        if let Some(older) = entries.get(i + 1) {
            assert!(
                numbers(&entry.version) > numbers(&older.version),
                "CHANGELOG.md: [{}] is listed above [{}], which is not older",
                entry.version,
                older.version
            );
        }
    }
}

#[test]
fn chart_annotations_are_what_set_version_writes() {
    let out = Command::new("bash")
        .arg(workspace_root().join("scripts/set-version.sh"))
        .arg("--check")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn artifact_hub_annotations_describe_the_chart() {
    let chart = chart();
    let annotations = &chart["annotations"];
    let license = env!("CARGO_PKG_LICENSE");
    assert_eq!(
        annotations["artifacthub.io/license"], license,
        "the chart's licence is the crates'"
    );
    assert!(read("LICENSE").starts_with(&format!("{license} License")));
    assert_eq!(annotations["artifacthub.io/operator"], "true");
    let capabilities = [
        "Basic Install",
        "Seamless Upgrades",
        "Full Lifecycle",
        "Deep Insights",
        "Auto Pilot",
    ];
    assert!(
        capabilities.contains(&string(&annotations["artifacthub.io/operatorCapabilities"])),
        "artifacthub.io/operatorCapabilities is none of {capabilities:?}"
    );
    for link in seq(&annotation("artifacthub.io/links")) {
        assert!(!string(&link["name"]).is_empty());
        let url = string(&link["url"]);
        let home = string(&chart["home"]);
        assert!(url.starts_with(home), "{url} is not under {home}");
        // A link into the repository names a file that exists.
        if let Some(path) = url.strip_prefix(&format!("{home}/blob/main/")) {
            assert!(workspace_root().join(path).is_file(), "{url}: no {path}");
        }
    }

    // The CRD as the chart ships it.
    let crd = yaml("crds/smtprelay.dev_smtprelays.yaml");
    let kind = string(&crd["spec"]["names"]["kind"]);
    let group = string(&crd["spec"]["group"]);
    let served: BTreeSet<&str> = seq(&crd["spec"]["versions"])
        .iter()
        .filter(|v| v["served"] == true)
        .map(|v| string(&v["name"]))
        .collect();
    for listed in seq(&annotation("artifacthub.io/crds")) {
        assert_eq!(listed["kind"], kind);
        assert_eq!(listed["name"], crd["metadata"]["name"]);
        assert!(served.contains(string(&listed["version"])), "{listed:?}");
    }
    let examples = annotation("artifacthub.io/crdsExamples");
    let example: Value = serde_yaml::from_str(&read(
        "charts/smtp-relay-operator/examples/unauthenticated-relay.yaml",
    ))
    .unwrap();
    assert_eq!(seq(&examples), &vec![example.clone()]);
    let api_version = string(&example["apiVersion"]);
    let (example_group, example_version) = api_version.split_once('/').unwrap();
    assert_eq!(
        (example_group, example["kind"].as_str()),
        (group, Some(kind))
    );
    assert!(
        served.contains(example_version),
        "{api_version} is not served"
    );

    // Each image on the platforms the release builds.
    let workflow = yaml(".github/workflows/release.yml");
    let platforms: Vec<Value> = seq(&workflow["jobs"]["build"]["strategy"]["matrix"]["platform"])
        .iter()
        .map(|p| p["os"].clone())
        .collect();
    for image in seq(&annotation("artifacthub.io/images")) {
        assert_eq!(seq(&image["platforms"]), &platforms, "{image:?}");
    }
    let kinds = [
        "added",
        "changed",
        "deprecated",
        "removed",
        "fixed",
        "security",
    ];
    // Empty while a just-opened entry (scripts/set-version.sh X.Y.Z) lists no change yet.
    let changes = annotation("artifacthub.io/changes")
        .as_sequence()
        .cloned()
        .unwrap_or_default();
    let first = &changelog()[0];
    assert_eq!(changes.len(), first.changes.len());
    for (change, (section, text)) in changes.iter().zip(&first.changes) {
        assert!(kinds.contains(&string(&change["kind"])));
        assert_eq!(change["kind"], section.to_lowercase().as_str());
        assert_eq!(change["description"], text.as_str());
    }
}

#[test]
fn artifact_hub_repository_metadata_is_pushed_beside_the_chart() {
    let metadata = yaml("charts/artifacthub-repo.yml");
    for (key, value) in metadata.as_mapping().unwrap() {
        let key = string(key);
        assert!(
            ["repositoryID", "owners", "ignore"].contains(&key),
            "charts/artifacthub-repo.yml: {key} is not a field Artifact Hub reads"
        );
        if key == "owners" {
            for owner in seq(value) {
                assert!(string(&owner["email"]).contains('@'), "{owner:?}");
            }
        }
    }
    let run = job_runs(&yaml(".github/workflows/release.yml"), "chart");
    for needle in [
        "oras push \"$REGISTRY/$OWNER/charts/smtp-relay-operator:artifacthub.io\"",
        "application/vnd.cncf.artifacthub.config.v1+yaml",
        "charts/artifacthub-repo.yml:application/vnd.cncf.artifacthub.repository-metadata.layer.v1.yaml",
    ] {
        assert!(run.contains(needle), "the chart job does not run {needle}");
    }
}

/// Every `run` of a job, one after another.
fn job_runs(workflow: &Value, job: &str) -> String {
    seq(&workflow["jobs"][job]["steps"])
        .iter()
        .filter_map(|s| s["run"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The steps of a job that use an action (`owner/name@...`).
fn uses<'a>(workflow: &'a Value, job: &str, action: &str) -> Vec<&'a Value> {
    seq(&workflow["jobs"][job]["steps"])
        .iter()
        .filter(|s| {
            s["uses"]
                .as_str()
                .is_some_and(|u| u.split('@').next() == Some(action))
        })
        .collect()
}

fn may_sign(workflow: &Value, job: &str, attest: bool) {
    let permissions = &workflow["jobs"][job]["permissions"];
    assert_eq!(permissions["id-token"], "write", "{job}: id-token: write");
    if attest {
        assert_eq!(
            permissions["attestations"], "write",
            "{job}: attestations: write"
        );
    }
}

#[test]
fn release_workflow_signs_and_attests_what_it_publishes() {
    let workflow = yaml(".github/workflows/release.yml");

    // A tag is refused unless the chart's version and the CHANGELOG's dated entry name it.
    let version = job_runs(&workflow, "version");
    for needle in ["^version:", "CHANGELOG.md", "[0-9]{4}-[0-9]{2}-[0-9]{2}"] {
        assert!(
            version.contains(needle),
            "the version job does not check {needle}"
        );
    }

    // Each platform's image: provenance and an SBOM, both attested on its digest.
    may_sign(&workflow, "build", true);
    let build = uses(&workflow, "build", "docker/build-push-action")[0];
    assert_eq!(build["with"]["provenance"], false);
    let digest = "${{ steps.build.outputs.digest }}";
    let provenance = uses(&workflow, "build", "actions/attest-build-provenance");
    assert_eq!(provenance.len(), 1);
    assert_eq!(provenance[0]["with"]["subject-digest"], digest);
    assert_eq!(provenance[0]["with"]["push-to-registry"], true);
    let sbom = uses(&workflow, "build", "anchore/sbom-action")[0];
    assert_eq!(sbom["with"]["format"], "spdx-json");
    assert!(string(&sbom["with"]["image"]).ends_with(&format!("@{digest}")));
    let attested = uses(&workflow, "build", "actions/attest-sbom")[0];
    assert_eq!(attested["with"]["subject-digest"], digest);
    assert_eq!(attested["with"]["sbom-path"], sbom["with"]["output-file"]);

    // The multi-arch index and the images in it: signed by digest.
    may_sign(&workflow, "images", false);
    assert_eq!(
        uses(&workflow, "images", "sigstore/cosign-installer").len(),
        1
    );
    assert!(
        job_runs(&workflow, "images").contains("cosign sign --yes --recursive \"$IMAGE@$DIGEST\"")
    );

    // The chart: signed and attested by the digest helm push printed.
    may_sign(&workflow, "chart", true);
    let chart = job_runs(&workflow, "chart");
    assert!(
        chart.contains("cosign sign --yes \"$REGISTRY/$OWNER/charts/smtp-relay-operator@$DIGEST\"")
    );
    assert_eq!(
        uses(&workflow, "chart", "actions/attest-build-provenance")[0]["with"]["subject-digest"],
        "${{ steps.push.outputs.digest }}"
    );

    // The plugin's archives: attested by path.
    may_sign(&workflow, "plugin", true);
    assert_eq!(
        uses(&workflow, "plugin", "actions/attest-build-provenance")[0]["with"]["subject-path"],
        "dist/*.tar.gz"
    );

    // README says how to verify, with the identity this workflow signs as.
    let readme = read("README.md");
    let identity = "https://github.com/smtp-relay-operator/smtp-relay-operator/.github/workflows/release.yml@refs/tags/v";
    assert!(readme.contains("## Verifying a release"));
    assert!(
        readme.contains(identity),
        "README.md names no signing identity {identity}"
    );
    assert!(readme.contains("https://token.actions.githubusercontent.com"));
}

#[test]
fn cargo_auditable_is_one_version_everywhere() {
    let pinned = read("scripts/build-images.sh")
        .lines()
        .find_map(|l| {
            l.strip_prefix("CARGO_AUDITABLE_VERSION=\"${CARGO_AUDITABLE_VERSION:-")
                .and_then(|v| v.strip_suffix("}\""))
                .map(str::to_owned)
        })
        .expect("scripts/build-images.sh pins CARGO_AUDITABLE_VERSION");
    for file in [
        "image/Dockerfile",
        "operator/Dockerfile",
        ".github/workflows/release.yml",
    ] {
        let text = read(file);
        let named: Vec<&str> = text
            .match_indices("cargo-auditable@")
            .map(|(at, m)| {
                text[at + m.len()..]
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '.'))
                    .next()
                    .unwrap()
            })
            .collect();
        assert!(!named.is_empty(), "{file} does not install cargo-auditable");
        assert!(
            named.iter().all(|v| *v == pinned),
            "{file} installs cargo-auditable {named:?}, build-images.sh {pinned}"
        );
        assert!(
            text.contains("cargo auditable build --release --locked"),
            "{file} builds without cargo-auditable"
        );
    }
}
