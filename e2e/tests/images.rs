//! The images `scripts/build-images.sh` builds, as a node gets them: the docker-archive
//! tarballs in `.cache/images/`.
//!
//! - Their tags are exactly the references the chart's default values render, and the one the
//!   operator uses for relays by default, so a node holding them runs the chart unchanged.
//! - The relay image holds everything the relay runs (Postfix, the two SASL tools), stays
//!   under its size budget, and carries no perl; the operator image runs as non-root and has no
//!   shell.
//! - On a private containerd (the script's `--verify-only`): imported, then run with runc, the
//!   relay starts Postfix and answers its probe (also as the operator's pod runs it), the
//!   operator prints its CRD.
//! - The operator image, run as the chart's Deployment runs it against a real API server with
//!   the chart's ServiceAccount, reconciles an SmtpRelay.
//! - Their SBOMs (SPDX, beside the tarballs) list the image's Debian packages and the crates
//!   compiled into its binary, at the versions inside.
//! - The release workflow publishes what the chart references.
//!
//! The tarballs must be built first (`scripts/build-images.sh`); the run checks need root and
//! the tools of `scripts/install-deps.sh`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use std::time::Duration;

use serde_json::Value;
use smtp_relay_e2e::operator;
use smtp_relay_e2e::tools::{self, free_port, poll, poll_until, stop_child, workspace_root};
use smtp_relay_e2e::ControlPlane;

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

    /// One file of the image: its content in the topmost layer that holds it.
    fn read(&self, path: &str) -> Option<Vec<u8>> {
        let mut found = None;
        for layer in self.manifest["Layers"].as_array().unwrap() {
            let content = tar_member(&self.path, layer.as_str().unwrap());
            let mut tar = Command::new("tar")
                .args(["-xO", "--wildcards", "--no-anchored", path])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let mut stdin = tar.stdin.take().unwrap();
            let writer = std::thread::spawn(move || {
                use std::io::Write;
                // tar stops reading once it has the member: a broken pipe is no error here.
                let _ = stdin.write_all(&content);
            });
            let out = tar.wait_with_output().unwrap();
            writer.join().unwrap();
            if out.status.success() && !out.stdout.is_empty() {
                found = Some(out.stdout);
            }
        }
        found
    }
}

/// The packages of the SBOM `scripts/build-images.sh` wrote beside an image's tarball, by kind
/// ("deb" for the dpkg database's, else the type of their package URL, "cargo"): name ->
/// version.
fn sbom(
    name: &str,
) -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>> {
    let path = workspace_root()
        .join(".cache/images")
        .join(format!("{name}.spdx.json"));
    let doc: Value = serde_json::from_slice(
        &std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e}: run scripts/build-images.sh", path.display())),
    )
    .unwrap();
    assert!(
        doc["spdxVersion"].as_str().unwrap().starts_with("SPDX-2."),
        "{name}.spdx.json is no SPDX 2 document"
    );
    let mut by_type: std::collections::BTreeMap<_, std::collections::BTreeMap<_, _>> =
        std::collections::BTreeMap::new();
    for package in doc["packages"].as_array().unwrap() {
        let purl = package["externalRefs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["referenceType"] == "purl")
            .find_map(|r| r["referenceLocator"].as_str());
        // A Debian package has a package URL only where the image names its distribution
        // (/etc/os-release, which the operator image lacks): syft's sourceInfo says it came
        // from the dpkg database either way.
        let from_dpkg = package["sourceInfo"]
            .as_str()
            .is_some_and(|s| s.contains("DPKG DB"));
        let kind = if from_dpkg {
            "deb"
        } else if let Some(kind) = purl.and_then(|p| p.strip_prefix("pkg:")?.split('/').next()) {
            kind
        } else {
            continue;
        };
        by_type.entry(kind.to_owned()).or_default().insert(
            package["name"].as_str().unwrap().to_owned(),
            package["versionInfo"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    by_type
}

/// `Package:` -> `Version:` of a dpkg status file.
fn dpkg_status(text: &str) -> std::collections::BTreeMap<String, String> {
    text.split("\n\n")
        .filter_map(|stanza| {
            let field = |name: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_owned())
            };
            Some((field("Package:")?, field("Version:")?))
        })
        .collect()
}

/// Cargo.lock's crates from crates.io: name -> versions.
fn locked_crates() -> std::collections::BTreeMap<String, BTreeSet<String>> {
    let lock = std::fs::read_to_string(workspace_root().join("Cargo.lock")).unwrap();
    let mut crates: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
    for block in lock.split("[[package]]").skip(1) {
        let field = |name: &str| {
            block.lines().find_map(|l| {
                l.strip_prefix(name)
                    .map(|v| v.trim_matches(|c| c == '"' || c == ' ').to_owned())
            })
        };
        if let (Some(name), Some(version)) = (field("name = "), field("version = ")) {
            crates.entry(name).or_default().insert(version);
        }
    }
    crates
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
    // Linked to the repository the chart names as its source (ghcr.io uses the label).
    let chart: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(workspace_root().join("charts/smtp-relay-operator/Chart.yaml"))
            .unwrap(),
    )
    .unwrap();
    let source = chart["sources"][0].as_str().unwrap();
    for image in [&relay, &operator] {
        assert_eq!(
            image.config["config"]["Labels"]["org.opencontainers.image.source"],
            source
        );
    }
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

/// Each SBOM lists every Debian package of its image at the version the image's dpkg status
/// gives, and the crates compiled into its binary (read from the binary, where cargo-auditable
/// put them) at Cargo.lock's versions: those the binary needs, none that only the operator or
/// the tests use.
#[test]
fn sboms_list_the_packages_and_crates_inside() {
    let locked = locked_crates();
    for (name, debs, crates, foreign) in [
        (
            "smtp-relay",
            &[
                "postfix",
                "libsasl2-modules",
                "sasl2-bin",
                "ca-certificates",
                "libssl3",
                "libc6",
            ][..],
            &["smtp-relay", "tokio", "rustls", "lettre", "reqwest"][..],
            // The operator's (rcgen, kube) and the tests' (tempfile, libtest-mimic).
            &["kube", "k8s-openapi", "rcgen", "tempfile", "libtest-mimic"][..],
        ),
        (
            "smtp-relay-operator",
            &["libc6", "libgcc-s1", "ca-certificates"][..],
            // The relay's library is the operator's too (the judge of input it shares).
            &[
                "smtp-relay-operator",
                "smtp-relay",
                "kube",
                "k8s-openapi",
                "rcgen",
            ][..],
            &["tempfile", "tower-test", "libtest-mimic"][..],
        ),
    ] {
        let image = Archive::open(name);
        let sbom = sbom(name);
        let status = String::from_utf8(image.read("var/lib/dpkg/status").unwrap()).unwrap();
        let installed = dpkg_status(&status);
        let listed = sbom.get("deb").cloned().unwrap_or_default();
        assert_eq!(
            listed, installed,
            "{name}.spdx.json's Debian packages differ from the image's dpkg status"
        );
        for deb in debs {
            assert!(
                listed.contains_key(*deb),
                "{name}.spdx.json lacks the package {deb}"
            );
        }
        let compiled = sbom.get("cargo").cloned().unwrap_or_default();
        for krate in crates {
            assert!(
                compiled.contains_key(*krate),
                "{name}.spdx.json lacks the crate {krate}"
            );
        }
        for krate in foreign {
            assert!(
                !compiled.contains_key(*krate),
                "{name}.spdx.json lists {krate}, which its binary does not use"
            );
        }
        // Cargo.lock lists the workspace's own crates too, at the workspace's version.
        for (krate, v) in &compiled {
            let expected = locked.get(krate).cloned().unwrap_or_default();
            assert!(
                expected.contains(v),
                "{name}.spdx.json lists {krate} {v}; Cargo.lock has {expected:?}"
            );
        }
    }
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
        "relay: ran as the operator's pod",
        "operator: smtp-relay-operator ",
        "operator: runs as user 65532:65532",
    ] {
        assert!(log.contains(said), "no {said:?} in\n{log}");
    }
}

/// The release workflow publishes the images under the references the chart's default values
/// render (`<repository>:<appVersion>` when the tag is empty), and the chart next to them.
#[test]
fn release_workflow_passes_actionlint() {
    let out = Command::new(tools::bin("actionlint"))
        .current_dir(workspace_root())
        .arg(".github/workflows/release.yml")
        .output()
        .expect("running actionlint");
    assert!(
        out.status.success(),
        "actionlint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

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

/// A containerd of the test's own (root, state, socket, runc root and FIFOs in a temporary
/// directory; CRI off; its containers' cgroups under a parent of their own), stopped and
/// cleaned up on drop. A node's containerd on the same machine is never touched.
struct PrivateContainerd {
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
    /// Parent of the containers' cgroups, removed on drop.
    cgroup_parent: String,
}

/// containerd 1.6 puts shim sockets in /run/containerd/s whatever its state directory. A
/// node's containerd keeps its socket in /run/containerd: when nothing but an empty `s` is
/// left there, it is removed on drop.
const SHIM_DIR: &str = "/run/containerd";

impl PrivateContainerd {
    fn start() -> PrivateContainerd {
        let dir = tempfile::Builder::new()
            .prefix("smtp-relay-images-test.")
            .tempdir()
            .unwrap();
        let d = dir.path().display();
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"#
        );
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.path().join("config.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd (scripts/build-images.sh installs it)");
        let ctrd = PrivateContainerd {
            dir,
            child: Some(child),
            cgroup_parent: format!("smtp-relay-images-test-{}", std::process::id()),
        };
        poll_until(Duration::from_secs(30), "private containerd", || {
            ctrd.ctr(&["version"]).status.success().then_some(())
        });
        ctrd
    }

    fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new("ctr")
            .arg("--address")
            .arg(self.dir.path().join("containerd.sock"))
            .args(["--namespace", "k8s.io"])
            .args(args)
            .output()
            .unwrap()
    }

    fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The shim's socket of container `id`, should it outlive the shim: containerd 1.6 names
    /// it sha256(address/namespace/id), so it is never another containerd's.
    fn remove_shim_socket(&self, id: &str) {
        let key = format!("{}/k8s.io/{id}", self.path("containerd.sock"));
        let out = Command::new("sh")
            .args(["-c", "printf %s \"$1\" | sha256sum", "sh", &key])
            .output()
            .unwrap();
        let sum = String::from_utf8(out.stdout).unwrap();
        let name = sum.split_whitespace().next().unwrap();
        let _ = std::fs::remove_file(Path::new(SHIM_DIR).join("s").join(name));
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, Duration::from_secs(15));
        }
        // Snapshot mounts left under the directory, deepest first, before it is removed.
        let prefix = format!("{}/", self.dir.path().display());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&prefix))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
        }
        for controller in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(controller.path().join(&self.cgroup_parent));
        }
        let entries: Vec<_> = std::fs::read_dir(SHIM_DIR)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        if entries == ["s"] {
            // remove_dir fails on a directory that is not empty: a shim's socket stays.
            let _ = std::fs::remove_dir(Path::new(SHIM_DIR).join("s"));
            let _ = std::fs::remove_dir(SHIM_DIR);
        }
    }
}

/// The operator image run by runc the way the chart's Deployment runs it (its image, args and
/// read-only root; the image's user is the pod's runAsUser), against a real API server as the
/// chart's ServiceAccount: ready, reconciles an SmtpRelay into a StatefulSet of the chart's
/// relay image, stops on SIGTERM. Only the listen address differs (loopback, host network).
#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one scenario, step by step: its steps share their state"
)]
fn operator_image_runs_as_the_charts_deployment() {
    let tar = tarball("smtp-relay-operator");
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "running the images needs root (containerd, runc)"
    );
    let cp = ControlPlane::start().expect("control plane");
    let ns = "smtp-relay-system";
    let release = operator::helm_install_chart(&cp, ns, &[]);
    let kubeconfig = operator::service_account_kubeconfig(&cp, ns, &release.service_account)
        .expect("a kubeconfig with the ServiceAccount's token");
    let deployment = operator::get_json(&cp, ns, "deployment", &release.release).unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let image = container["image"].as_str().unwrap().to_string();
    assert_eq!(
        image,
        format!("{REGISTRY}/smtp-relay-operator:{}", app_version())
    );
    let operator_image = Archive::open("smtp-relay-operator");
    assert_eq!(
        operator_image.config["config"]["User"],
        format!(
            "{}:{}",
            pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]
        )
    );
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    let http_addr = format!("127.0.0.1:{}", free_port().expect("a free port"));
    let mut args: Vec<String> = Vec::new();
    let mut relay_image = String::new();
    for arg in container["args"].as_array().unwrap() {
        let arg = arg.as_str().unwrap();
        if let Some(r) = arg.strip_prefix("--relay-image=") {
            relay_image = r.to_string();
        }
        args.push(if arg.starts_with("--http-addr=") {
            format!("--http-addr={http_addr}")
        } else {
            arg.to_string()
        });
    }
    assert_eq!(
        relay_image,
        format!("{REGISTRY}/smtp-relay:{}", app_version())
    );

    let ctrd = PrivateContainerd::start();
    ctrd.ctr_ok(&["images", "import", &tar.display().to_string()]);
    let mount = format!(
        "type=bind,src={},dst=/etc/smtp-relay-operator/kubeconfig,options=rbind:ro",
        kubeconfig.display()
    );
    let log_uri = format!("file://{}", ctrd.path("operator.log"));
    let (runc_root, fifo_dir) = (ctrd.path("runc"), ctrd.path("fifo"));
    let cgroup = format!("/{}/operator", ctrd.cgroup_parent);
    let mut run = vec![
        "run",
        "-d",
        "--net-host",
        "--read-only",
        "--runc-root",
        &runc_root,
        "--fifo-dir",
        &fifo_dir,
        "--cgroup",
        &cgroup,
        "--log-uri",
        &log_uri,
        "--mount",
        &mount,
        "--env",
        "KUBECONFIG=/etc/smtp-relay-operator/kubeconfig",
        "--env",
        "POD_NAMESPACE=smtp-relay-system",
        "--env",
        "POD_NAME=operator-image-test",
        &image,
        "operator-image-test",
        // ctr replaces the whole command line; Kubernetes' args replace only CMD.
        "/usr/local/bin/smtp-relay-operator",
    ];
    run.extend(args.iter().map(String::as_str));
    ctrd.ctr_ok(&run);
    let logs = || std::fs::read_to_string(ctrd.path("operator.log")).unwrap_or_default();

    poll_until(
        Duration::from_secs(60),
        "/readyz of the operator image",
        || {
            (tools::http_get(http_addr.parse().ok()?, "/readyz").map(|(code, _)| code) == Some(200))
                .then_some(())
        },
    );
    operator::create_namespace(&cp, "mail");
    operator::apply(
        &cp,
        "mail",
        &std::fs::read_to_string(
            workspace_root().join("charts/smtp-relay-operator/examples/unauthenticated-relay.yaml"),
        )
        .unwrap(),
    );
    let sts = poll(
        "the StatefulSet of the example SmtpRelay",
        Duration::from_secs(60),
        || operator::get_json(&cp, "mail", "statefulset", "smtp-relay"),
    )
    .unwrap_or_else(|e| panic!("{e}\noperator log:\n{}", logs()));
    assert_eq!(
        sts["spec"]["template"]["spec"]["containers"][0]["image"],
        relay_image
    );
    assert!(!logs().contains("Forbidden"), "{}", logs());

    ctrd.ctr_ok(&["task", "kill", "--signal", "SIGTERM", "operator-image-test"]);
    poll_until(Duration::from_secs(30), "the operator to stop", || {
        ctrd.ctr_ok(&["task", "ls"])
            .lines()
            .any(|l| l.starts_with("operator-image-test ") && l.contains("STOPPED"))
            .then_some(())
    });
    ctrd.ctr_ok(&["task", "delete", "operator-image-test"]);
    ctrd.ctr_ok(&["container", "delete", "operator-image-test"]);
    ctrd.remove_shim_socket("operator-image-test");
    assert!(logs().contains("controller stopped"), "{}", logs());
}
