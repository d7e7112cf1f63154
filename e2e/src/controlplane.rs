//! A real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager) in one child
//! process, for tests.
//!
//! The admin user of [`ControlPlane::kubeconfig`] is in `system:masters`. Authorization is
//! `Node,RBAC`, so `kubectl --as=system:serviceaccount:NS:NAME` checks what a ServiceAccount
//! may really do. Every write (create, update, patch, delete) is recorded at Metadata level in
//! [`ControlPlane::audit_log`]. There are no nodes (pods stay Pending), unless it is started
//! with [`ControlPlane::with_node`]: then a real node runs too (containerd, kubelet, kube-proxy,
//! CoreDNS, the scheduler; see `e2e/controlplane/README.md`). One node per machine: it needs
//! root, and tests of one binary should share it (isolating themselves by namespace).
//!
//! [`ControlPlane::start_oldest`] runs the same control plane built against the oldest
//! Kubernetes minor README.md supports (`e2e/controlplane/oldest/go.mod`, the one place that
//! names it; [`oldest_kubernetes_version`] reads it).

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::tools;

/// How long the control plane may take to become ready. Override with
/// `E2E_CONTROLPLANE_TIMEOUT_SECS`.
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a graceful stop may take before the process is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// The same with a node: its pods get a 10 s grace period, then the daemons stop.
const NODE_STOP_TIMEOUT: Duration = Duration::from_secs(90);
/// The control plane of `e2e/controlplane/go.mod`, in `.cache/bin`.
const BINARY: &str = "controlplane";
/// The control plane of `e2e/controlplane/oldest/go.mod`, in `.cache/bin`.
const OLDEST_BINARY: &str = "controlplane-oldest";
/// The module that builds [`OLDEST_BINARY`], relative to the workspace root.
const OLDEST_GO_MOD: &str = "e2e/controlplane/oldest/go.mod";

/// Why the control plane could not be started, or a file of its directory not read or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("io error: {0}")]
    Io(#[from] io::Error),
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] serde_yaml::Error),
    #[error("audit log line {line} is not JSON: {source}")]
    AuditLog {
        line: usize,
        source: serde_json::Error,
    },
    #[error("control plane exited before it was ready ({status}); log tail:\n{log}")]
    Exited {
        status: std::process::ExitStatus,
        log: String,
    },
    #[error("control plane not ready after {0:?}; log tail:\n{1}")]
    Timeout(Duration, String),
}

/// A running control plane in its own temporary directory; stopped (SIGTERM, then SIGKILL
/// after a deadline) and its directory removed on drop. Set `E2E_KEEP_DIRS=1` to keep the
/// directory for inspection.
pub struct ControlPlane {
    child: Option<Child>,
    dir: tempfile::TempDir,
    started: Duration,
    node: bool,
    /// The tool in `.cache/bin` that runs it.
    binary: &'static str,
}

impl ControlPlane {
    /// Starts a control plane in a new temporary directory and waits until it is ready.
    pub fn start() -> Result<Self, Error> {
        Self::start_inner(false, BINARY)
    }

    /// As [`Self::start`], with the control plane built against the oldest supported
    /// Kubernetes (`.cache/bin/controlplane-oldest`, from `e2e/controlplane/oldest/go.mod`:
    /// the same sources, that module's Kubernetes). No node: its node components are not built.
    pub fn start_oldest() -> Result<Self, Error> {
        Self::start_inner(false, OLDEST_BINARY)
    }

    /// Starts a control plane with a real node (`controlplane --node`) and waits until the
    /// node is Ready and the cluster DNS answers. Needs root and the tools of
    /// `scripts/install-node-deps.sh`; waits for a node that is still shutting down, fails if
    /// another one runs on this machine. Whatever a killed previous run left on the host is
    /// cleaned up first.
    ///
    /// Pods run images imported with [`Self::import_image`] (or the pause image
    /// `localhost/pause:3.10`); nothing is pulled: use `imagePullPolicy: Never` or
    /// `IfNotPresent` with a tag other than `latest`. The default StorageClass `local` gets a
    /// hostPath volume for every claim; the class `local-sized` a tmpfs of the claim's size,
    /// which fills up as a real volume does (its data goes with the node). Pods reach the API server at `kubernetes.default`
    /// (10.96.0.1) and cluster DNS at 10.96.0.10; nothing they send may leave the machine.
    /// NetworkPolicies are enforced from the node's start (sigs.k8s.io/kube-network-policies,
    /// e2e/netpol): a connection they refuse is dropped, so the client times out.
    pub fn with_node() -> Result<Self, Error> {
        Self::start_inner(true, BINARY)
    }

    fn start_inner(node: bool, binary: &'static str) -> Result<Self, Error> {
        let dir = tempfile::Builder::new().prefix("controlplane-").tempdir()?;
        let mut cp = ControlPlane {
            child: None,
            dir,
            started: Duration::ZERO,
            node,
            binary,
        };
        cp.resume()?;
        Ok(cp)
    }

    /// The node's containerd socket (with [`Self::with_node`]); its images are in namespace
    /// `k8s.io`.
    pub fn containerd_socket(&self) -> Option<PathBuf> {
        self.node
            .then(|| self.dir().join("node/containerd/containerd.sock"))
    }

    /// Imports an image archive (docker-archive or OCI layout tarball, as `buildah push` or
    /// `docker save` write) into the node's containerd, where the kubelet finds it.
    pub fn import_image(&self, archive: &Path) -> io::Result<()> {
        let archive = archive.to_string_lossy();
        self.ctr(&["images", "import", &archive])
    }

    /// Runs the node's `ctr ARGS…` on its containerd, in the kubelet's namespace `k8s.io`; an
    /// error names the command and holds ctr's own words.
    pub fn ctr(&self, args: &[&str]) -> io::Result<()> {
        let socket = self.containerd_socket().ok_or_else(|| {
            io::Error::new(io::ErrorKind::Unsupported, "control plane has no node")
        })?;
        let out = Command::new(tools::bin("ctr"))
            .arg("--address")
            .arg(socket)
            .args(["-n", "k8s.io"])
            .args(args)
            .output()?;
        if out.status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "ctr {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// The state directory: etcd data, certificates, kubeconfig, audit log and
    /// `controlplane.log` (the process' output, appended across restarts).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The admin kubeconfig (user `admin`, group `system:masters`, namespace `default`).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir().join("kubeconfig")
    }

    /// A kubeconfig that acts as ServiceAccount `namespace/name` by impersonation (`as:`), so
    /// a program run with it has exactly that ServiceAccount's RBAC permissions (the API server
    /// adds the `system:serviceaccounts` groups). The ServiceAccount need not exist yet.
    pub fn kubeconfig_as_service_account(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<PathBuf, Error> {
        let text = fs::read_to_string(self.kubeconfig())?;
        let mut config: serde_yaml::Value = serde_yaml::from_str(&text)?;
        let user = &mut config["users"][0]["user"];
        user["as"] = format!("system:serviceaccount:{namespace}:{name}").into();
        let path = self.dir().join(format!("kubeconfig-sa-{namespace}-{name}"));
        fs::write(&path, serde_yaml::to_string(&config)?)?;
        Ok(path)
    }

    /// The audit log: one JSON `audit.k8s.io/v1` Event a line, for every write.
    pub fn audit_log(&self) -> PathBuf {
        self.dir().join("audit.log")
    }

    /// How long the last (re)start took until the API server was ready.
    pub fn startup_time(&self) -> Duration {
        self.started
    }

    /// All audit events recorded so far (writes only, at Metadata level). Useful fields:
    /// `verb`, `user.username`, `impersonatedUser.username`, `objectRef.{resource,namespace,name}`,
    /// `requestURI` (holds `fieldManager=` for apply and patch), `userAgent`,
    /// `responseStatus.code`. Empty while there is no log yet; `Err` names a line that is not
    /// JSON.
    pub fn audit_events(&self) -> Result<Vec<serde_json::Value>, Error> {
        let text = fs::read_to_string(self.audit_log()).unwrap_or_default();
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|source| Error::AuditLog {
                    line: i + 1,
                    source,
                })
            })
            .collect()
    }

    /// Runs `.cache/bin/kubectl --kubeconfig KUBECONFIG ARGS…`.
    pub fn kubectl<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.kubectl_stdin(args, "")
    }

    /// Like [`Self::kubectl`], with `input` on standard input (e.g. `apply -f -`).
    pub fn kubectl_stdin<I, S>(&self, args: I, input: &str) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(tools::bin("kubectl"));
        cmd.arg("--kubeconfig").arg(self.kubeconfig()).args(args);
        run_with_input(cmd, input)
    }

    /// Runs kubectl and returns its standard output.
    ///
    /// # Panics
    ///
    /// If kubectl fails, with its standard error.
    pub fn kubectl_ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args
            .into_iter()
            .map(|a| a.as_ref().to_os_string())
            .collect();
        let out = self.kubectl(&args);
        assert!(
            out.status.success(),
            "kubectl {:?} failed ({}):\n{}",
            args,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `.cache/bin/helm --kubeconfig KUBECONFIG ARGS…` (Helm 3), with helm's cache, config
    /// and data directories inside the state directory so no user state leaks in.
    pub fn helm<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.helm_of("helm", args)
    }

    /// As [`Self::helm`], with Helm 4 (`.cache/bin/helm4`). Both share the state directory's
    /// helm home: a release is the cluster's, whichever Helm installed it.
    pub fn helm4<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.helm_of("helm4", args)
    }

    fn helm_of<I, S>(&self, binary: &str, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let home = self.dir().join("helm");
        let mut cmd = Command::new(tools::bin(binary));
        cmd.arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"));
        run_with_input(cmd, "")
    }

    /// Kills the process outright (SIGKILL), as a crash would: the API server is unreachable
    /// until [`Self::resume`]. Data stays in the directory.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the control plane again on the same directory (same data, keys, ports and
    /// kubeconfig) and waits until it is ready. Does nothing else if it is running.
    pub fn resume(&mut self) -> Result<(), Error> {
        if self.child.is_some() {
            return Ok(());
        }
        let dir = self.dir().to_path_buf();
        let ready = dir.join("ready");
        // A killed process leaves its marker behind.
        match fs::remove_file(&ready) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        let log_path = dir.join("controlplane.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        writeln!(&log, "---- starting controlplane ----")?;
        let begin = Instant::now();
        let mut cmd = Command::new(tools::bin(self.binary));
        cmd.arg("--dir").arg(&dir).arg("--exit-with-parent");
        if self.node {
            cmd.arg("--node");
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group, so a terminal's Ctrl-C reaches only the test runner; with
            // the runner gone, --exit-with-parent makes it shut down within a second.
            .process_group(0);
        let mut child = cmd.spawn()?;

        let timeout = std::env::var("E2E_CONTROLPLANE_TIMEOUT_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_READY_TIMEOUT);
        let deadline = begin + timeout;
        let mut poll = Duration::from_millis(20);
        loop {
            if ready.exists() {
                self.started = begin.elapsed();
                self.child = Some(child);
                return Ok(());
            }
            match child.try_wait() {
                Ok(None) => {}
                Ok(Some(status)) => {
                    return Err(Error::Exited {
                        status,
                        log: log_tail(&log_path),
                    });
                }
                Err(e) => {
                    tools::stop_child(&mut child, self.stop_timeout());
                    return Err(e.into());
                }
            }
            if Instant::now() >= deadline {
                tools::stop_child(&mut child, self.stop_timeout());
                return Err(Error::Timeout(timeout, log_tail(&log_path)));
            }
            std::thread::sleep(poll);
            poll = (poll * 2).min(Duration::from_millis(200));
        }
    }

    /// Kills the process and starts it again on the same directory: a brief API server outage.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.kill();
        self.resume()
    }

    /// Stops the process gracefully (SIGTERM), killing it if it takes longer than 30 s (90 s
    /// with a node, which stops its pods and cleans the host up first).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        tools::stop_child(&mut child, self.stop_timeout());
    }

    /// How long a graceful stop may take.
    fn stop_timeout(&self) -> Duration {
        if self.node {
            NODE_STOP_TIMEOUT
        } else {
            STOP_TIMEOUT
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
        if std::env::var_os("E2E_KEEP_DIRS").is_some() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "keeping control plane directory {}",
                self.dir.path().display()
            );
        }
    }
}

/// The Kubernetes version [`ControlPlane::start_oldest`] runs, as `e2e/controlplane/oldest/go.mod`
/// requires `k8s.io/kubernetes` (`v1.X.Y`); `Err` when the file cannot be read or requires none.
pub fn oldest_kubernetes_version() -> io::Result<String> {
    let path = tools::workspace_root().join(OLDEST_GO_MOD);
    let text = fs::read_to_string(&path)?;
    go_mod_kubernetes(&text).map(str::to_owned).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} requires no k8s.io/kubernetes v1.x", path.display()),
        )
    })
}

/// The version a go.mod requires of `k8s.io/kubernetes` (the `v1.x.y` of its require line, not
/// the `v0.0.0` its staging modules are replaced from).
pub fn go_mod_kubernetes(go_mod: &str) -> Option<&str> {
    go_mod.lines().find_map(|l| {
        let l = l.trim();
        let l = l.strip_prefix("require ").map_or(l, str::trim_start);
        let version = l
            .strip_prefix("k8s.io/kubernetes ")?
            .split_whitespace()
            .next()?;
        version.starts_with("v1.").then_some(version)
    })
}

fn run_with_input(mut cmd: Command, input: &str) -> Output {
    let program = format!("{:?}", cmd.get_program());
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let input = input.to_owned();
    // A writer thread, so a large input cannot deadlock against a full output pipe.
    let writer = child.stdin.take().map(|mut stdin| {
        std::thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        })
    });
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {program}: {e}"));
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    out
}

fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
