//! Be the kubelet for a relay pod: run a StatefulSet's pod for real on this machine.
//!
//! The control plane has no nodes, so the StatefulSet controller's pods stay Pending. A
//! [`Kubelet`] reads such a Pod (made by the controller from the StatefulSet's template, at its
//! update revision), lays out its volumes as the kubelet does, and runs its container's command
//! with its environment:
//!
//! - Secret and ConfigMap volumes are directories in the kubelet's atomic-writer layout: a
//!   timestamped directory `..<ts>` holding the files (with `defaultMode` or the item's `mode`,
//!   `items` respected), a `..data` symlink to it, and one symlink per top-level key into
//!   `..data/`. [`RelayPod::sync`] re-projects changed data with an atomic `..data` swap, as
//!   the kubelet does after a Secret update.
//! - emptyDirs are directories per Pod object; a `persistentVolumeClaim` (the `spool` claim of
//!   the volumeClaimTemplate) is a directory per claim name that lives as long as the
//!   [`Kubelet`], across pod restarts, offered to the API as a hostPath PersistentVolume
//!   pre-bound to the claim (so the claim shows Bound, as on a node with storage).
//! - The container runs in its own mount, UTS (hostname = pod name) and PID namespaces (the
//!   command is PID 1; when it dies every process of the pod dies with it), with each volume
//!   bind-mounted at its `mountPath` (read-only where the mount says so) and, with
//!   `readOnlyRootFilesystem`, the root filesystem remounted read-only inside the namespace.
//!   Mount points missing on the host (`/etc/smtp-relay/...`, `/run/smtp-relay`, `/data`) are
//!   created there, empty. The mounts are invisible outside the namespace; the host's
//!   `/var/spool/postfix` is untouched.
//! - The image's binary is this workspace's `smtp-relay`, linked into the kubelet's state
//!   directory (first on PATH), where no pod mount can hide it; the rest of the root
//!   filesystem is this machine's (Debian with Postfix, like the image).
//!
//! The one deviation from the template: there is no pod network, so each pod gets a loopback
//! "pod IP" (127.0.x.y) and the unspecified address (`0.0.0.0` or `[::]`) in `RELAY_LISTEN` and
//! `RELAY_METRICS_LISTEN` is replaced by it, keeping the template's ports (25 and 9154).
//!
//! Readiness is the template's exec probe run inside the pod's namespaces
//! ([`RelayPod::probe`]); [`RelayPod::mark_ready`] then writes the Pod's status as a kubelet
//! would (phase Running, Ready=True, podIP), so the StatefulSet controller counts it ready.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, DirBuilderExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{sethostname, Pid};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::ControlPlane;

/// How long to wait for the StatefulSet controller to create or replace a pod.
pub const POD_DEADLINE: Duration = Duration::from_secs(90);
/// The container image's PATH (Debian's default), after the directory of `smtp-relay`.
const IMAGE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Where kubelets keep their state (pod volumes, claims); each in its own directory, removed on
/// drop.
pub const STATE_ROOT: &str = "/var/lib/smtp-relay-e2e";
/// Variables whose unspecified address becomes the pod IP.
const LISTEN_VARS: [&str; 2] = ["RELAY_LISTEN", "RELAY_METRICS_LISTEN"];

/// What went wrong running a pod.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PodError(pub String);

impl From<io::Error> for PodError {
    fn from(e: io::Error) -> Self {
        PodError(format!("io error: {e}"))
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, PodError> {
    Err(PodError(msg.into()))
}

pub type Result<T, E = PodError> = std::result::Result<T, E>;

/// The workspace's `smtp-relay` binary (built by `cargo build --workspace --bins`).
pub fn relay_bin() -> PathBuf {
    crate::tools::target_bin("smtp-relay")
}

// ---------------------------------------------------------------------------------------------
// Volumes in the kubelet's atomic-writer layout.

/// Files of one volume: relative path → (content, mode).
pub type Payload = BTreeMap<PathBuf, (Vec<u8>, u32)>;

/// Writes `payload` into `dir` as the kubelet's AtomicWriter does, unless `dir` already holds
/// exactly that: files in a new `..<timestamp>` directory, a `..data_tmp` symlink to it renamed
/// over `..data`, a `name -> ..data/name` symlink per top-level entry, stale top-level entries
/// and the previous timestamped directory removed. Returns whether anything changed.
pub fn atomic_write(dir: &Path, payload: &Payload) -> io::Result<bool> {
    fs::create_dir_all(dir)?;
    if read_payload(dir).as_ref() == Some(payload) {
        return Ok(false);
    }
    let old = fs::read_link(dir.join("..data")).ok();
    let ts = timestamp_dir_name();
    let ts_dir = dir.join(&ts);
    fs::DirBuilder::new().mode(0o755).create(&ts_dir)?;
    for (rel, (content, mode)) in payload {
        check_relative(rel)?;
        let path = ts_dir.join(rel);
        if let Some(parent) = path.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)?;
        }
        fs::write(&path, content)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(*mode))?;
    }
    let tmp = dir.join("..data_tmp");
    let _ = fs::remove_file(&tmp);
    symlink(&ts, &tmp)?;
    fs::rename(&tmp, dir.join("..data"))?;
    let top: Vec<String> = payload.keys().filter_map(|p| top_level(p)).collect();
    for name in &top {
        let link = dir.join(name);
        if fs::symlink_metadata(&link).is_err() {
            symlink(format!("..data/{name}"), &link)?;
        }
    }
    for entry in fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !top.contains(&name) {
            fs::remove_file(entry.path())?;
        }
    }
    if let Some(old) = old {
        if old != Path::new(&ts) {
            fs::remove_dir_all(dir.join(old))?;
        }
    }
    Ok(true)
}

fn check_relative(rel: &Path) -> io::Result<()> {
    if rel.components().all(|c| matches!(c, Component::Normal(_))) && !rel.as_os_str().is_empty() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("volume path {} must be relative, without ..", rel.display()),
        ))
    }
}

fn top_level(rel: &Path) -> Option<String> {
    rel.components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
}

/// What `dir` holds now under `..data`, in payload form.
fn read_payload(dir: &Path) -> Option<Payload> {
    fn walk(base: &Path, rel: &Path, out: &mut Payload) -> io::Result<()> {
        for entry in fs::read_dir(base.join(rel))? {
            let entry = entry?;
            let rel = rel.join(entry.file_name());
            let meta = entry.metadata()?;
            if meta.is_dir() {
                walk(base, &rel, out)?;
            } else {
                let mode = meta.permissions().mode() & 0o7777;
                out.insert(rel.clone(), (fs::read(base.join(&rel))?, mode));
            }
        }
        Ok(())
    }
    let data = dir.join("..data");
    fs::read_link(&data).ok()?;
    let mut out = Payload::new();
    walk(&data, Path::new(""), &mut out).ok()?;
    Some(out)
}

/// `..2026_11_25_02_40_00.123456789`: the kubelet's timestamped directory name.
fn timestamp_dir_name() -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "..{y:04}_{m:02}_{d:02}_{:02}_{:02}_{:02}.{}{}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        now.subsec_nanos(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    )
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

// ---------------------------------------------------------------------------------------------
// Reading objects.

fn get_json(cp: &ControlPlane, namespace: &str, kind: &str, name: &str) -> Result<Option<Value>> {
    let out = cp.kubectl(["get", kind, name, "-n", namespace, "-o", "json"]);
    if out.status.success() {
        return serde_json::from_slice(&out.stdout)
            .map(Some)
            .map_err(|e| PodError(format!("kubectl get {kind} {name}: {e}")));
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("NotFound") {
        Ok(None)
    } else {
        err(format!("kubectl get {kind} {namespace}/{name}: {stderr}"))
    }
}

fn mode_of(v: &Value, default: u32) -> u32 {
    v.as_u64().map(|m| m as u32).unwrap_or(default)
}

/// A volume's source, as the kubelet sees it.
#[derive(Debug, Clone)]
enum Source {
    Secret {
        name: String,
        items: Option<Vec<Value>>,
        default_mode: u32,
        optional: bool,
    },
    ConfigMap {
        name: String,
        items: Option<Vec<Value>>,
        default_mode: u32,
        optional: bool,
    },
    EmptyDir,
    Claim(String),
}

impl Source {
    fn parse(v: &Value) -> Result<Source> {
        let name = v["name"].as_str().unwrap_or_default();
        let items = |s: &Value| s["items"].as_array().cloned();
        if let Some(s) = v.get("secret") {
            Ok(Source::Secret {
                name: s["secretName"].as_str().unwrap_or_default().into(),
                items: items(s),
                default_mode: mode_of(&s["defaultMode"], 0o644),
                optional: s["optional"].as_bool().unwrap_or(false),
            })
        } else if let Some(s) = v.get("configMap") {
            Ok(Source::ConfigMap {
                name: s["name"].as_str().unwrap_or_default().into(),
                items: items(s),
                default_mode: mode_of(&s["defaultMode"], 0o644),
                optional: s["optional"].as_bool().unwrap_or(false),
            })
        } else if v.get("emptyDir").is_some() {
            Ok(Source::EmptyDir)
        } else if let Some(c) = v.get("persistentVolumeClaim") {
            Ok(Source::Claim(
                c["claimName"].as_str().unwrap_or_default().into(),
            ))
        } else {
            err(format!(
                "volume {name}: only secret, configMap, emptyDir and persistentVolumeClaim are supported: {v}"
            ))
        }
    }

    /// The files the volume should hold now, read from the API server.
    fn payload(&self, cp: &ControlPlane, namespace: &str) -> Result<Payload> {
        let (kind, name, items, default_mode, optional) = match self {
            Source::Secret {
                name,
                items,
                default_mode,
                optional,
            } => ("secret", name, items, *default_mode, *optional),
            Source::ConfigMap {
                name,
                items,
                default_mode,
                optional,
            } => ("configmap", name, items, *default_mode, *optional),
            Source::EmptyDir | Source::Claim(_) => return Ok(Payload::new()),
        };
        let Some(obj) = get_json(cp, namespace, kind, name)? else {
            if optional {
                return Ok(Payload::new());
            }
            return err(format!(
                "{kind} {namespace}/{name} not found (a kubelet would keep the pod in ContainerCreating)"
            ));
        };
        let mut data: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let b64 = base64::engine::general_purpose::STANDARD;
        let decode = |k: &str, v: &Value| {
            b64.decode(v.as_str().unwrap_or_default())
                .map_err(|e| PodError(format!("{kind} {name} key {k}: {e}")))
        };
        if kind == "secret" {
            for (k, v) in obj["data"].as_object().into_iter().flatten() {
                data.insert(k.clone(), decode(k, v)?);
            }
        } else {
            for (k, v) in obj["data"].as_object().into_iter().flatten() {
                data.insert(
                    k.clone(),
                    v.as_str().unwrap_or_default().as_bytes().to_vec(),
                );
            }
            for (k, v) in obj["binaryData"].as_object().into_iter().flatten() {
                data.insert(k.clone(), decode(k, v)?);
            }
        }
        let mut payload = Payload::new();
        match items {
            None => {
                for (k, v) in data {
                    payload.insert(PathBuf::from(k), (v, default_mode));
                }
            }
            Some(items) => {
                for item in items {
                    let key = item["key"].as_str().unwrap_or_default();
                    let path = item["path"].as_str().unwrap_or(key);
                    let Some(v) = data.get(key) else {
                        if optional {
                            continue;
                        }
                        return err(format!("{kind} {namespace}/{name} has no key {key}"));
                    };
                    payload.insert(
                        PathBuf::from(path),
                        (v.clone(), mode_of(&item["mode"], default_mode)),
                    );
                }
            }
        }
        Ok(payload)
    }
}

// ---------------------------------------------------------------------------------------------
// The kubelet.

/// This machine as a node: a state directory holding the persistent volumes (one directory per
/// claim, kept across pod restarts) and each pod's directory, and the loopback pod IPs it hands
/// out. Removed on drop (`E2E_KEEP_DIRS=1` keeps it). Drop every [`RelayPod`] before it.
pub struct Kubelet {
    dir: Arc<TempDir>,
    ips: std::sync::Mutex<BTreeMap<String, Ipv4Addr>>,
}

impl Default for Kubelet {
    fn default() -> Self {
        Self::new()
    }
}

impl Kubelet {
    pub fn new() -> Kubelet {
        // Not under /tmp: the pods mount an emptyDir there, which would hide their volumes.
        fs::create_dir_all(STATE_ROOT).expect("kubelet state root");
        let dir = tempfile::Builder::new()
            .prefix("kubelet-")
            .tempdir_in(STATE_ROOT)
            .expect("kubelet state directory");
        Kubelet {
            dir: Arc::new(dir),
            ips: Default::default(),
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The "image": a directory holding the workspace's `smtp-relay`, as the container image
    /// carries it in /usr/local/bin. The build directory itself may sit under a path a pod
    /// mounts over (a checkout in /tmp is hidden by the pod's /tmp emptyDir).
    fn image_bin_dir(&self) -> Result<PathBuf> {
        let dir = self.dir().join("image/bin");
        let installed = dir.join("smtp-relay");
        if !installed.exists() {
            fs::create_dir_all(&dir).map_err(|e| PodError(format!("{}: {e}", dir.display())))?;
            let source = relay_bin();
            if fs::hard_link(&source, &installed).is_err() {
                fs::copy(&source, &installed).map_err(|e| {
                    PodError(format!("installing {} in the image: {e}", source.display()))
                })?;
            }
        }
        Ok(dir)
    }

    /// The directory backing a PersistentVolumeClaim: kept across pod restarts.
    pub fn claim_dir(&self, claim: &str) -> PathBuf {
        self.dir().join("claims").join(claim)
    }

    /// The loopback address standing for `pod`'s IP: 127.0.x.y, the same for the same pod name
    /// for the life of this kubelet, and free on port 25 when first handed out.
    pub fn pod_ip(&self, pod: &str) -> Ipv4Addr {
        let mut ips = self.ips.lock().expect("ips lock");
        if let Some(ip) = ips.get(pod) {
            return *ip;
        }
        static NEXT: AtomicU32 = AtomicU32::new(0);
        // Spread processes over 127.<10..250>.*, so concurrent test binaries rarely meet.
        let third = 10 + (std::process::id() % 240) as u8;
        loop {
            let n = NEXT.fetch_add(1, Ordering::SeqCst);
            assert!(
                n < 250,
                "no loopback pod IP free on ports 25 and 9154 in 127.{third}.0.0/24: \
                 is something listening on 0.0.0.0:25 (the host's Postfix? `postfix stop`)?"
            );
            let ip = Ipv4Addr::new(127, third, 0, 2 + n as u8);
            let free = TcpListener::bind((ip, 25)).is_ok() && TcpListener::bind((ip, 9154)).is_ok();
            if free && !ips.values().any(|v| *v == ip) {
                ips.insert(pod.to_string(), ip);
                return ip;
            }
        }
    }

    /// Runs ordinal 0 of StatefulSet `namespace/statefulset`: waits until the controller has
    /// seen the StatefulSet's latest generation and its Pod exists at the update revision (not
    /// being deleted), then starts it. See [`Self::run_pod`].
    pub fn run_statefulset_pod(
        &self,
        cp: &ControlPlane,
        namespace: &str,
        statefulset: &str,
    ) -> Result<RelayPod> {
        let pod_name = format!("{statefulset}-0");
        let start = Instant::now();
        loop {
            let last;
            if let Some(sts) = get_json(cp, namespace, "statefulset", statefulset)? {
                let generation = sts["metadata"]["generation"].as_i64();
                let observed = sts["status"]["observedGeneration"].as_i64();
                let revision = sts["status"]["updateRevision"].as_str().unwrap_or_default();
                if let Some(pod) = get_json(cp, namespace, "pod", &pod_name)? {
                    let pod_rev = pod["metadata"]["labels"]["controller-revision-hash"]
                        .as_str()
                        .unwrap_or_default();
                    let deleting = pod["metadata"].get("deletionTimestamp").is_some();
                    if observed == generation && pod_rev == revision && !deleting {
                        check_pod_matches_template(&pod, &sts)?;
                        return self.run_pod(cp, &pod);
                    }
                    last = format!(
                        "pod {pod_name} at revision {pod_rev}, StatefulSet generation {generation:?} observed {observed:?} update revision {revision}, deleting: {deleting}"
                    );
                } else {
                    last = format!("no pod {pod_name} yet");
                }
            } else {
                last = format!("no StatefulSet {namespace}/{statefulset}");
            }
            if start.elapsed() > POD_DEADLINE {
                return err(format!(
                    "the StatefulSet controller did not make pod {namespace}/{pod_name} at the update revision within {POD_DEADLINE:?}: {last}"
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs `pod` (a Pod object as JSON): projects its volumes, then starts its one container
    /// in new namespaces with the volumes mounted, and waits until its PID 1 is up.
    pub fn run_pod(&self, cp: &ControlPlane, pod: &Value) -> Result<RelayPod> {
        let namespace = pod["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let name = pod["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let uid = pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let containers = pod["spec"]["containers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let [container] = containers.as_slice() else {
            return err(format!(
                "pod {name}: exactly one container is supported, found {}",
                containers.len()
            ));
        };
        let pod_ip = self.pod_ip(&name);
        let pod_dir = self.dir().join("pods").join(&uid);
        fs::create_dir_all(&pod_dir)?;

        // Volumes.
        let mut volumes = Vec::new();
        for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            let vname = v["name"].as_str().unwrap_or_default().to_string();
            let source = Source::parse(v)?;
            let dir = match &source {
                Source::Claim(claim) => self.claim_dir(claim),
                _ => pod_dir.join("volumes").join(&vname),
            };
            fs::create_dir_all(&dir)?;
            if let Source::Claim(claim) = &source {
                bind_claim(cp, &namespace, claim, &dir)?;
            }
            let payload = source.payload(cp, &namespace)?;
            if matches!(source, Source::Secret { .. } | Source::ConfigMap { .. }) {
                atomic_write(&dir, &payload)?;
            }
            volumes.push(ProjectedVolume {
                name: vname,
                source,
                dir,
            });
        }

        // Mounts, parents before children.
        let mut mounts = Vec::new();
        for m in container["volumeMounts"].as_array().into_iter().flatten() {
            let vname = m["name"].as_str().unwrap_or_default();
            let target = PathBuf::from(m["mountPath"].as_str().unwrap_or_default());
            if m.get("subPath").is_some() || m.get("subPathExpr").is_some() {
                return err(format!("mount {vname}: subPath is not supported"));
            }
            let Some(vol) = volumes.iter().find(|v| v.name == vname) else {
                return err(format!("mount {vname}: no such volume"));
            };
            if !target.is_absolute() {
                return err(format!(
                    "mount {vname}: mountPath {} is not absolute",
                    target.display()
                ));
            }
            mounts.push(Mount {
                source: vol.dir.clone(),
                target,
                read_only: m["readOnly"].as_bool().unwrap_or(false),
            });
        }
        mounts.sort_by_key(|m| m.target.components().count());

        // Command and environment.
        let mut argv: Vec<String> = Vec::new();
        for part in ["command", "args"] {
            for a in container[part].as_array().into_iter().flatten() {
                argv.push(a.as_str().unwrap_or_default().to_string());
            }
        }
        if argv.is_empty() {
            return err(format!(
                "pod {name}: the container has no command (the image's entrypoint is not known here)"
            ));
        }
        let env = container_env(container, &name, pod_ip, &self.image_bin_dir()?)?;
        let read_only_root = container["securityContext"]["readOnlyRootFilesystem"]
            .as_bool()
            .unwrap_or(false);

        let log_path = pod_dir.join("container.log");
        let mut pod = RelayPod {
            namespace,
            name,
            uid,
            pod_ip,
            container: container.clone(),
            env,
            volumes,
            child: None,
            pid1: None,
            log_path,
            started: SystemTime::now(),
            _state: self.dir.clone(),
        };
        pod.spawn(&argv, &mounts, read_only_root)?;
        Ok(pod)
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        if std::env::var_os("E2E_KEEP_DIRS").is_some() {
            eprintln!("keeping kubelet directory {}", self.dir().display());
            // Leak one reference so the TempDir is never removed.
            std::mem::forget(self.dir.clone());
        }
    }
}

/// Provisions the claim as a kubelet's node would find it: a hostPath PersistentVolume on the
/// claim's directory, pre-bound to the claim (`claimRef`), and waits until the controller
/// manager's PersistentVolume binder has bound the claim. A no-op when it is bound already.
fn bind_claim(cp: &ControlPlane, namespace: &str, claim: &str, dir: &Path) -> Result<()> {
    let start = Instant::now();
    let pvc = loop {
        if let Some(pvc) = get_json(cp, namespace, "persistentvolumeclaim", claim)? {
            break pvc;
        }
        if start.elapsed() > POD_DEADLINE {
            return err(format!("no PersistentVolumeClaim {namespace}/{claim}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if pvc["status"]["phase"] == "Bound" {
        return Ok(());
    }
    let pv = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": format!("e2e-{namespace}-{claim}"),
            "labels": {"smtprelay.dev/e2e-kubelet": "true"},
        },
        "spec": {
            "capacity": {"storage": pvc["spec"]["resources"]["requests"]["storage"].as_str().unwrap_or("1Gi")},
            "accessModes": pvc["spec"]["accessModes"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": pvc["spec"]["storageClassName"].as_str().unwrap_or(""),
            "hostPath": {"path": dir, "type": "Directory"},
            "claimRef": {"namespace": namespace, "name": claim},
        }
    });
    let out = cp.kubectl_stdin(["apply", "-f", "-"], &pv.to_string());
    if !out.status.success() {
        return err(format!(
            "creating the PersistentVolume for {namespace}/{claim}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    loop {
        let phase = get_json(cp, namespace, "persistentvolumeclaim", claim)?
            .map(|p| p["status"]["phase"].clone());
        if phase == Some(json!("Bound")) {
            return Ok(());
        }
        if start.elapsed() > POD_DEADLINE {
            return err(format!(
                "PersistentVolumeClaim {namespace}/{claim} not bound after {POD_DEADLINE:?} (phase {phase:?})"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The pod's own spec must be the StatefulSet's template (the controller adds only hostname,
/// subdomain and the claim volumes): the same command, env and mounts.
fn check_pod_matches_template(pod: &Value, sts: &Value) -> Result<()> {
    let t = &sts["spec"]["template"]["spec"]["containers"][0];
    let p = &pod["spec"]["containers"][0];
    for field in ["command", "args", "env", "volumeMounts", "readinessProbe"] {
        if t[field] != p[field] {
            return err(format!(
                "pod {} differs from the StatefulSet template in {field}",
                pod["metadata"]["name"]
            ));
        }
    }
    Ok(())
}

/// The container's environment: its `env` values (valueFrom is not supported), with the
/// unspecified address of the listen variables replaced by the pod IP, plus PATH and HOSTNAME
/// as a container runtime sets them.
fn container_env(
    container: &Value,
    pod: &str,
    pod_ip: Ipv4Addr,
    bin_dir: &Path,
) -> Result<Vec<(String, String)>> {
    let mut env = vec![
        (
            "PATH".to_string(),
            format!("{}:{IMAGE_PATH}", bin_dir.display()),
        ),
        ("HOSTNAME".to_string(), pod.to_string()),
    ];
    for e in container["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap_or_default().to_string();
        let Some(value) = e["value"].as_str() else {
            return err(format!("env {name}: only literal values are supported"));
        };
        let mut value = value.to_string();
        if LISTEN_VARS.contains(&name.as_str()) {
            if let Ok(addr) = value.parse::<SocketAddr>() {
                if addr.ip().is_unspecified() {
                    value = SocketAddr::from((pod_ip, addr.port())).to_string();
                }
            }
        }
        env.retain(|(k, _)| *k != name);
        env.push((name, value));
    }
    Ok(env)
}

struct ProjectedVolume {
    name: String,
    source: Source,
    dir: PathBuf,
}

struct Mount {
    source: PathBuf,
    target: PathBuf,
    read_only: bool,
}

/// A running relay pod. Stopped (SIGKILL to its PID 1, which takes every process of the pod
/// with it) when dropped; [`Self::stop`] is the graceful way.
pub struct RelayPod {
    namespace: String,
    name: String,
    uid: String,
    pod_ip: Ipv4Addr,
    container: Value,
    env: Vec<(String, String)>,
    volumes: Vec<ProjectedVolume>,
    /// The `unshare` process; its forked child is the pod's PID 1.
    child: Option<Child>,
    pid1: Option<i32>,
    log_path: PathBuf,
    started: SystemTime,
    _state: Arc<TempDir>,
}

impl fmt::Debug for RelayPod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayPod")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("uid", &self.uid)
            .field("pod_ip", &self.pod_ip)
            .field("pid1", &self.pid1)
            .finish()
    }
}

impl RelayPod {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Pod object's uid (a StatefulSet roll replaces the Pod: a new uid).
    pub fn uid(&self) -> &str {
        &self.uid
    }

    pub fn pod_ip(&self) -> Ipv4Addr {
        self.pod_ip
    }

    /// The value of one environment variable of the container, as it runs.
    pub fn env(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Where smtpd listens: `RELAY_LISTEN` with the pod IP.
    pub fn smtp_addr(&self) -> SocketAddr {
        self.env("RELAY_LISTEN")
            .and_then(|v| v.parse().ok())
            .unwrap_or(SocketAddr::from((self.pod_ip, 25)))
    }

    /// The container's output (Postfix's mail log and smtp-relay's lines), like `kubectl logs`.
    pub fn logs(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The host directory of a volume (for a claim, the persistent directory).
    pub fn volume_dir(&self, volume: &str) -> Option<&Path> {
        self.volumes
            .iter()
            .find(|v| v.name == volume)
            .map(|v| v.dir.as_path())
    }

    /// True while the pod's PID 1 runs.
    pub fn running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn spawn(&mut self, argv: &[String], mounts: &[Mount], read_only_root: bool) -> Result<()> {
        for m in mounts {
            fs::create_dir_all(&m.target).map_err(|e| {
                PodError(format!(
                    "creating mount point {} on the host: {e}",
                    m.target.display()
                ))
            })?;
        }
        // A mount over a parent of a later source would hide that source.
        for m in mounts {
            if let Some(hidden) = mounts.iter().find(|o| o.source.starts_with(&m.target)) {
                return err(format!(
                    "mount point {} would hide volume source {}",
                    m.target.display(),
                    hidden.source.display()
                ));
            }
        }
        // Everything the child needs is prepared here: between fork and exec only system calls
        // run (no allocation).
        let cstr = |p: &Path| CString::new(p.as_os_str().as_bytes()).expect("no NUL in paths");
        let plan: Vec<(CString, CString, bool)> = mounts
            .iter()
            .map(|m| (cstr(&m.source), cstr(&m.target), m.read_only))
            .collect();
        let hostname = std::ffi::OsString::from(&self.name);
        let root = cstr(Path::new("/"));

        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--fork", "--kill-child", "--mount-proc", "--"])
            .args(argv)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let none: Option<&std::ffi::CStr> = None;
        // SAFETY: the closure only makes system calls on data prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                // On failure, name the step on stderr (the pod's log): no allocation here.
                let step = |what: &'static str, r: nix::Result<()>| -> io::Result<()> {
                    r.map_err(|e| {
                        let _ = nix::unistd::write(std::io::stderr(), b"pod setup failed: ");
                        let _ = nix::unistd::write(std::io::stderr(), what.as_bytes());
                        let _ = nix::unistd::write(std::io::stderr(), b"\n");
                        io::Error::from_raw_os_error(e as i32)
                    })
                };
                // If the thread that started the pod dies, so does the pod.
                step(
                    "prctl(PR_SET_PDEATHSIG)",
                    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL),
                )?;
                step(
                    "unshare(CLONE_NEWNS|CLONE_NEWUTS)",
                    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS),
                )?;
                step(
                    "mount --make-rprivate /",
                    mount(
                        none,
                        root.as_c_str(),
                        none,
                        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                        none,
                    ),
                )?;
                step("sethostname", sethostname(&hostname))?;
                for (source, target, read_only) in &plan {
                    step(
                        "bind mount of a volume",
                        mount(
                            Some(source.as_c_str()),
                            target.as_c_str(),
                            none,
                            MsFlags::MS_BIND | MsFlags::MS_REC,
                            none,
                        ),
                    )?;
                    if *read_only {
                        step(
                            "read-only remount of a volume",
                            mount(
                                none,
                                target.as_c_str(),
                                none,
                                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
                                none,
                            ),
                        )?;
                    }
                }
                if read_only_root {
                    step(
                        "read-only remount of /",
                        mount(
                            none,
                            root.as_c_str(),
                            none,
                            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
                            none,
                        ),
                    )?;
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            PodError(format!(
                "starting pod {}: {e}\n{}",
                self.name,
                tail(&self.logs(), 5)
            ))
        })?;
        let unshare_pid = child.id();
        self.child = Some(child);
        self.started = SystemTime::now();
        // PID 1 of the pod is unshare's only child.
        let children = format!("/proc/{unshare_pid}/task/{unshare_pid}/children");
        let start = Instant::now();
        loop {
            if let Some(pid) = fs::read_to_string(&children)
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse().ok())
            {
                self.pid1 = Some(pid);
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok()?) {
                self.child = None;
                return err(format!(
                    "pod {} exited at once ({status}):\n{}",
                    self.name,
                    self.logs()
                ));
            }
            if start.elapsed() > Duration::from_secs(10) {
                return err(format!("pod {}: no PID 1 after 10 s", self.name));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Runs the container's readiness probe (`exec`) inside the pod's namespaces, with the
    /// container's environment and the probe's `timeoutSeconds`. Ok when it exits 0; Err with
    /// its output otherwise.
    pub fn probe(&mut self) -> Result<()> {
        self.exec_probe("readinessProbe")
    }

    /// Like [`Self::probe`] for `startupProbe`, `livenessProbe` or `readinessProbe`.
    pub fn exec_probe(&mut self, which: &str) -> Result<()> {
        let probe = &self.container[which];
        let argv: Vec<String> = probe["exec"]["command"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| a.as_str().unwrap_or_default().to_string())
            .collect();
        if argv.is_empty() {
            return err(format!("the container has no exec {which}"));
        }
        let timeout = Duration::from_secs(probe["timeoutSeconds"].as_u64().unwrap_or(1));
        let (status, output) = self.exec(&argv, timeout)?;
        if status.success() {
            Ok(())
        } else {
            err(format!(
                "{which} {argv:?} failed ({status}): {}",
                output.trim()
            ))
        }
    }

    /// Runs `argv` inside the pod (its mount, UTS and PID namespaces, the container's
    /// environment), like `kubectl exec`; returns its exit status and output (stdout then
    /// stderr, interleaved). Err if it cannot start or outlives `timeout` (it is then killed
    /// with the pod at the latest: it runs in the pod's PID namespace).
    pub fn exec<S: AsRef<str>>(
        &mut self,
        argv: &[S],
        timeout: Duration,
    ) -> Result<(ExitStatus, String)> {
        let argv: Vec<&str> = argv.iter().map(AsRef::as_ref).collect();
        let Some(pid1) = self.pid1.filter(|_| self.running()) else {
            return err(format!(
                "pod {} is not running:\n{}",
                self.name,
                tail(&self.logs(), 40)
            ));
        };
        static N: AtomicU32 = AtomicU32::new(0);
        let out_path = self
            .log_path
            .with_file_name(format!("exec-{}.out", N.fetch_add(1, Ordering::SeqCst)));
        let out = File::create(&out_path)?;
        let mut child = Command::new("nsenter")
            .args([
                "--target",
                &pid1.to_string(),
                "--mount",
                "--uts",
                "--pid",
                "--",
            ])
            .args(&argv)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .map_err(|e| PodError(format!("running {argv:?} in the pod with nsenter: {e}")))?;
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                let _ = fs::remove_file(&out_path);
                return err(format!("{argv:?} timed out after {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let output = fs::read_to_string(&out_path).unwrap_or_default();
        let _ = fs::remove_file(&out_path);
        Ok((status, output))
    }

    /// Probes until the probe passes or `timeout` runs out (a startup probe's job), failing at
    /// once if the container exits.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            let last = match self.probe() {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if !self.running() {
                return err(format!(
                    "pod {} exited before it was ready:\n{}",
                    self.name,
                    tail(&self.logs(), 60)
                ));
            }
            if start.elapsed() > timeout {
                return err(format!(
                    "pod {} not ready after {timeout:?}: {last}\n{}",
                    self.name,
                    tail(&self.logs(), 60)
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Writes the Pod's status as a kubelet does after a passing readiness probe: phase
    /// Running, conditions PodScheduled/Initialized/ContainersReady/Ready True, podIP, the
    /// container running and ready.
    pub fn mark_ready(&self, cp: &ControlPlane) -> Result<()> {
        let now = rfc3339(SystemTime::now());
        let started = rfc3339(self.started);
        let cond = |t: &str| json!({"type": t, "status": "True", "lastTransitionTime": now});
        let ip = self.pod_ip.to_string();
        let status = json!({
            "status": {
                "phase": "Running",
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "hostIP": "127.0.0.1",
                "hostIPs": [{"ip": "127.0.0.1"}],
                "startTime": started,
                "conditions": [
                    cond("PodReadyToStartContainers"),
                    cond("Initialized"),
                    cond("ContainersReady"),
                    cond("Ready"),
                    cond("PodScheduled"),
                ],
                "containerStatuses": [{
                    "name": self.container["name"],
                    "image": self.container["image"],
                    "imageID": "",
                    "containerID": format!("e2e://{}", self.pid1.unwrap_or_default()),
                    "ready": true,
                    "started": true,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": started}},
                }],
            }
        });
        let out = cp.kubectl([
            "patch",
            "pod",
            &self.name,
            "-n",
            &self.namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ]);
        if !out.status.success() {
            return err(format!(
                "patching the status of pod {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    /// True when the Pod object this pod runs is gone or being deleted (a StatefulSet roll
    /// deletes it): a kubelet then stops the container.
    pub fn deleted(&self, cp: &ControlPlane) -> Result<bool> {
        Ok(match get_json(cp, &self.namespace, "pod", &self.name)? {
            None => true,
            Some(p) => {
                p["metadata"]["uid"].as_str() != Some(&self.uid)
                    || p["metadata"].get("deletionTimestamp").is_some()
            }
        })
    }

    /// Re-reads the Secrets and ConfigMaps of the volumes and swaps in changed data atomically
    /// (`..data`), as the kubelet does after an update. Returns the names of the volumes that
    /// changed.
    pub fn sync(&self, cp: &ControlPlane) -> Result<Vec<String>> {
        let mut changed = Vec::new();
        for v in &self.volumes {
            if !matches!(v.source, Source::Secret { .. } | Source::ConfigMap { .. }) {
                continue;
            }
            let payload = v.source.payload(cp, &self.namespace)?;
            if atomic_write(&v.dir, &payload)? {
                changed.push(v.name.clone());
            }
        }
        Ok(changed)
    }

    /// Stops the pod as the kubelet does: SIGTERM to PID 1, SIGKILL after
    /// `terminationGracePeriodSeconds` (60 s by default). Ok with the exit status when it
    /// exited 0 by itself; Err otherwise.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        self.stop_within(Duration::from_secs(60))
    }

    pub fn stop_within(&mut self, grace: Duration) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            return err(format!("pod {} is not running", self.name));
        };
        if let Some(pid) = self.pid1 {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return if status.success() {
                    Ok(status)
                } else {
                    err(format!(
                        "pod {} exited with {status} after SIGTERM:\n{}",
                        self.name,
                        tail(&self.logs(), 40)
                    ))
                };
            }
            if start.elapsed() > grace {
                self.child = Some(child);
                self.kill();
                return err(format!(
                    "pod {} did not stop within {grace:?} of SIGTERM; killed",
                    self.name
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL to PID 1 (the kernel then kills every process of the pod) and to unshare.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = self.pid1 {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The exit code of a stopped pod's PID 1, for messages.
    pub fn describe_status(status: ExitStatus) -> String {
        match (status.code(), status.signal()) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(s)) => format!("killed by signal {s}"),
            _ => status.to_string(),
        }
    }
}

impl Drop for RelayPod {
    fn drop(&mut self) {
        if self.child.is_some() && std::thread::panicking() {
            eprintln!(
                "=== pod {} (last lines of its log):\n{}",
                self.name,
                tail(&self.logs(), 80)
            );
        }
        self.kill();
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// RFC 3339 UTC, seconds precision (the API's metav1.Time).
fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_417), (2025, 11, 25));
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(86_399)),
            "1970-01-01T23:59:59Z"
        );
    }

    #[test]
    fn atomic_writer_layout_and_swap() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("vol");
        let mut p = Payload::new();
        p.insert("a".into(), (b"1".to_vec(), 0o400));
        p.insert("sub/b".into(), (b"2".to_vec(), 0o444));
        assert!(atomic_write(&dir, &p).unwrap());
        assert!(!atomic_write(&dir, &p).unwrap(), "same data: no swap");
        let data = fs::read_link(dir.join("..data")).unwrap();
        assert!(data.to_string_lossy().starts_with("..20"));
        assert_eq!(fs::read_link(dir.join("a")).unwrap(), Path::new("..data/a"));
        assert_eq!(
            fs::read_link(dir.join("sub")).unwrap(),
            Path::new("..data/sub")
        );
        assert_eq!(fs::read(dir.join("sub/b")).unwrap(), b"2");
        let mode = fs::metadata(dir.join("a")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o400);

        let mut q = Payload::new();
        q.insert("c".into(), (b"3".to_vec(), 0o400));
        assert!(atomic_write(&dir, &q).unwrap());
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with("..20"))
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["..data", "c"],
            "stale keys and the old directory are gone"
        );
        assert_ne!(fs::read_link(dir.join("..data")).unwrap(), data);
        assert!(!dir.join(&data).exists());
    }
}
