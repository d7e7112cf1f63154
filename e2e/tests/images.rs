//! The images `scripts/build-images.sh` builds, as a node gets them: the docker-archive
//! tarballs in `.cache/images/`.
//!
//! - Their tags are exactly the references the chart's default values render, and the one the
//!   operator uses for relays by default, so a node holding them runs the chart unchanged.
//! - The relay image holds everything the relay runs (Postfix, the two SASL tools), stays
//!   under its size budget, and carries no perl; the operator image runs as non-root and has no
//!   shell.
//! - On a private containerd (the script's `--verify-only`): imported, then run with runc, the
//!   relay starts Postfix and answers its probe, the operator prints its CRD.
//!
//! The tarballs must be built first (`scripts/build-images.sh`); the run check needs root.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use smtp_relay_e2e::tools::workspace_root;

const REGISTRY: &str = "ghcr.io/smtp-relay-operator";
/// The relay image had 185 MB, 47 of it perl that only sasl2-bin's scripts used.
const RELAY_BUDGET_BYTES: u64 = 100_000_000;
const OPERATOR_BUDGET_BYTES: u64 = 40_000_000;

fn app_version() -> String {
    let chart: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(workspace_root().join("charts/smtp-relay-operator/Chart.yaml"))
            .unwrap(),
    )
    .unwrap();
    chart["appVersion"].as_str().unwrap().to_string()
}

fn tarball(name: &str) -> PathBuf {
    let path = workspace_root()
        .join(".cache/images")
        .join(format!("{name}.tar"));
    assert!(
        path.is_file(),
        "{} not found: run scripts/build-images.sh (as root) first",
        path.display()
    );
    path
}

/// `tar -xOf archive member`: one member's content.
fn tar_member(archive: &Path, member: &str) -> Vec<u8> {
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(archive)
        .arg(member)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tar -xOf {} {member}: {}",
        archive.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A docker-archive: its manifest entry (one image) and that image's config.
struct Archive {
    path: PathBuf,
    manifest: Value,
    config: Value,
}

impl Archive {
    fn open(name: &str) -> Archive {
        let path = tarball(name);
        let manifests: Value = serde_json::from_slice(&tar_member(&path, "manifest.json")).unwrap();
        let manifest = manifests.as_array().unwrap()[0].clone();
        let config =
            serde_json::from_slice(&tar_member(&path, manifest["Config"].as_str().unwrap()))
                .unwrap();
        Archive {
            path,
            manifest,
            config,
        }
    }

    fn tags(&self) -> Vec<String> {
        self.manifest["RepoTags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect()
    }

    /// Every path in the image's layers (without a leading `./` or `/`).
    fn files(&self) -> BTreeSet<String> {
        let mut files = BTreeSet::new();
        for layer in self.manifest["Layers"].as_array().unwrap() {
            let content = tar_member(&self.path, layer.as_str().unwrap());
            let mut tar = Command::new("tar")
                .arg("-t")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = tar.stdin.take().unwrap();
            let writer = std::thread::spawn(move || {
                use std::io::Write;
                stdin.write_all(&content).unwrap();
            });
            let out = tar.wait_with_output().unwrap();
            writer.join().unwrap();
            assert!(out.status.success(), "listing layer {layer}");
            for line in String::from_utf8(out.stdout).unwrap().lines() {
                let path = line.trim_start_matches("./").trim_start_matches('/');
                files.insert(path.trim_end_matches('/').to_string());
            }
        }
        files
    }

    fn size(&self) -> u64 {
        std::fs::metadata(&self.path).unwrap().len()
    }
}

fn assert_has(files: &BTreeSet<String>, image: &str, wanted: &[&str]) {
    let missing: Vec<_> = wanted.iter().filter(|f| !files.contains(**f)).collect();
    assert!(missing.is_empty(), "{image} lacks {missing:?}");
}

#[test]
fn tags_are_the_charts_default_references() {
    let v = app_version();
    let relay = Archive::open("smtp-relay");
    let operator = Archive::open("smtp-relay-operator");
    assert_eq!(relay.tags(), [format!("{REGISTRY}/smtp-relay:{v}")]);
    assert_eq!(
        operator.tags(),
        [format!("{REGISTRY}/smtp-relay-operator:{v}")]
    );
    // The operator's built-in default relay image (used without --relay-image) is tagged with
    // the workspace's version, which this crate shares.
    assert_eq!(
        env!("CARGO_PKG_VERSION"),
        v,
        "workspace version != chart appVersion"
    );
}

#[test]
fn relay_image_holds_what_the_relay_runs_and_stays_small() {
    let relay = Archive::open("smtp-relay");
    let files = relay.files();
    assert_has(
        &files,
        "relay image",
        &[
            "usr/local/bin/smtp-relay",
            "usr/sbin/postfix",
            "usr/sbin/postconf",
            "usr/lib/postfix/sbin/master",
            "usr/lib/postfix/sbin/smtpd",
            "usr/sbin/saslpasswd2",
            "usr/sbin/sasldblistusers2",
            "etc/ssl/certs/ca-certificates.crt",
            // postfix check runs postfix-script with these.
            "usr/bin/dash",
            "usr/bin/find",
            "usr/bin/sed",
            "usr/bin/cmp",
        ],
    );
    assert!(
        !files.contains("usr/bin/perl"),
        "perl is back in the relay image"
    );
    assert!(
        relay.size() < RELAY_BUDGET_BYTES,
        "relay image is {} bytes, over its {RELAY_BUDGET_BYTES} budget",
        relay.size()
    );
    let config = &relay.config["config"];
    assert_eq!(config["Entrypoint"], serde_json::json!(["smtp-relay"]));
    assert_eq!(config["Cmd"], serde_json::json!(["run"]));
    assert_eq!(
        config["Healthcheck"]["Test"],
        serde_json::json!(["CMD", "smtp-relay", "probe"])
    );
}

#[test]
fn operator_image_is_non_root_and_minimal() {
    let operator = Archive::open("smtp-relay-operator");
    let files = operator.files();
    assert_has(
        &files,
        "operator image",
        &[
            "usr/local/bin/smtp-relay-operator",
            "etc/ssl/certs/ca-certificates.crt",
            "etc/passwd",
        ],
    );
    for shell in ["usr/bin/sh", "usr/bin/dash", "usr/bin/bash"] {
        assert!(!files.contains(shell), "operator image has {shell}");
    }
    assert!(
        operator.size() < OPERATOR_BUDGET_BYTES,
        "operator image is {} bytes, over its {OPERATOR_BUDGET_BYTES} budget",
        operator.size()
    );
    let config = &operator.config["config"];
    // Numeric: the chart's runAsNonRoot can only be checked against a numeric user.
    assert_eq!(config["User"], "65532:65532");
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/usr/local/bin/smtp-relay-operator"])
    );
}

/// Imported into a private containerd and run with runc: the checks of
/// `scripts/build-images.sh --verify-only` (root only: containerd, overlay mounts, runc).
#[test]
fn images_run_on_a_private_containerd() {
    tarball("smtp-relay");
    tarball("smtp-relay-operator");
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "running the images needs root (containerd, runc)"
    );
    let out = Command::new(workspace_root().join("scripts/build-images.sh"))
        .arg("--verify-only")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "build-images.sh --verify-only:\n{log}"
    );
    for said in [
        "relay: smtp-relay ",
        "relay: ran Postfix, answered the probe, listed its SASL user",
        "operator: smtp-relay-operator ",
        "operator: runs as user 65532:65532",
    ] {
        assert!(log.contains(said), "no {said:?} in\n{log}");
    }
}

/// The release workflow publishes the images under the references the chart's default values
/// render (`<repository>:<appVersion>` when the tag is empty), and the chart next to them.
#[test]
fn release_workflow_publishes_what_the_chart_references() {
    let root = workspace_root();
    let read = |p: &str| -> serde_yaml::Value {
        serde_yaml::from_str(&std::fs::read_to_string(root.join(p)).unwrap()).unwrap()
    };
    let workflow = read(".github/workflows/release.yml");
    let values = read("charts/smtp-relay-operator/values.yaml");
    let env = &workflow["env"];
    let owner = format!(
        "{}/{}",
        env["REGISTRY"].as_str().unwrap(),
        env["OWNER"].as_str().unwrap()
    );
    let jobs = &workflow["jobs"];

    // Built: one Dockerfile per image, each existing.
    let built: BTreeSet<String> = jobs["build"]["strategy"]["matrix"]["image"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|i| {
            let dockerfile = i["dockerfile"].as_str().unwrap();
            assert!(root.join(dockerfile).is_file(), "{dockerfile} missing");
            i["name"].as_str().unwrap().to_string()
        })
        .collect();
    let platforms: BTreeSet<&str> = jobs["build"]["strategy"]["matrix"]["platform"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p["os"].as_str().unwrap())
        .collect();
    assert_eq!(platforms, BTreeSet::from(["linux/amd64", "linux/arm64"]));

    // Tagged: <registry>/<owner>/<name>:<the version job's appVersion>.
    let tag_step = jobs["images"]["steps"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|s| {
            s["run"]
                .as_str()
                .is_some_and(|r| r.contains("imagetools create"))
        })
        .expect("a step tagging the multi-arch images");
    assert_eq!(
        tag_step["env"]["IMAGE"],
        "${{ env.REGISTRY }}/${{ env.OWNER }}/${{ matrix.name }}"
    );
    assert_eq!(
        tag_step["env"]["TAG"],
        "${{ needs.version.outputs.app_version }}"
    );
    let version_run = jobs["version"]["steps"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|s| s["run"].as_str())
        .collect::<String>();
    assert!(
        version_run.contains("/^appVersion:/") && version_run.contains("Chart.yaml"),
        "the version job must read the chart's appVersion"
    );
    let tagged: BTreeSet<String> = jobs["images"]["strategy"]["matrix"]["name"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect();
    assert_eq!(tagged, built, "every built image is tagged");

    // What the chart references by default.
    for key in ["image", "relayImage"] {
        let repository = values[key]["repository"].as_str().unwrap();
        assert_eq!(
            values[key]["tag"], "",
            "{key}.tag must default to appVersion"
        );
        let name = repository
            .strip_prefix(&format!("{owner}/"))
            .unwrap_or_else(|| panic!("{key}.repository {repository} is not under {owner}"));
        assert!(tagged.contains(name), "{repository} is not published");
    }

    // The chart, after the images.
    let chart = &jobs["chart"];
    assert!(chart["needs"]
        .as_sequence()
        .unwrap()
        .contains(&serde_yaml::Value::from("images")));
    let chart_run = chart["steps"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|s| s["run"].as_str())
        .collect::<String>();
    assert!(chart_run.contains("helm push dist/*.tgz \"oci://$REGISTRY/$OWNER/charts\""));
}
