//! The operator binary, run out of cluster against a [`ControlPlane`] with exactly the RBAC the
//! Helm chart grants it.
//!
//! [`Operator::start`] installs the chart (`helm install`, which also creates the CRD, the
//! ServiceAccount and its Role or ClusterRole), asks the API server for a token of the chart's
//! ServiceAccount (`kubectl create token`), writes a kubeconfig holding only that token, and runs
//! `target/debug/smtp-relay-operator run` with it. Every request of the operator is thus
//! authenticated as `system:serviceaccount:<namespace>:smtp-relay-operator` and authorized by
//! the chart's rules: a missing permission shows up as `Forbidden` in [`Operator::logs`] and as
//! status that never gets written. The chart's own Deployment stays Pending (no nodes).
//!
//! ```no_run
//! use std::time::Duration;
//! use smtp_relay_e2e::operator::{self, Operator, OperatorOptions};
//! use smtp_relay_e2e::ControlPlane;
//!
//! let cp = ControlPlane::start().expect("control plane");
//! let op = Operator::start(&cp, OperatorOptions::default()).expect("operator");
//! cp.kubectl_ok(["create", "namespace", "mail"]);
//! operator::apply(&cp, "mail", "apiVersion: smtprelay.dev/v1alpha1\nkind: SmtpRelay\n...");
//! let relay = op.wait_for(Duration::from_secs(30), "status", || {
//!     operator::get_json(&cp, "mail", "smtprelay", "smtp-relay")
//!         .filter(|r| r["status"]["configHash"].is_string())
//! });
//! assert!(!op.logs().contains("Forbidden"));
//! # let _ = relay;
//! ```

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::tools;
use crate::ControlPlane;

/// The Helm release name; the chart's full name (ServiceAccount, Deployment) is the same.
pub const RELEASE: &str = "smtp-relay-operator";
/// The operator's field manager (every server-side apply it makes).
pub const FIELD_MANAGER: &str = "smtp-relay-operator";
/// The pod template annotation carrying the configuration hash.
pub const CONFIG_HASH_ANNOTATION: &str = "smtprelay.dev/config-hash";
/// A merge patch setting a `postconf` value that `postfix check` and both judges accept but
/// smtpd cannot use: a transport table the image does not have, so every RCPT would be
/// answered `451 4.3.0`. [`UNUSABLE_TABLE_REVERTED`] takes it out again.
pub const UNUSABLE_TABLE: &str =
    r#"{"spec":{"postconf":{"transport_maps":"hash:/etc/postfix/missing"}}}"#;
pub const UNUSABLE_TABLE_REVERTED: &str = r#"{"spec":{"postconf":{"transport_maps":null}}}"#;
/// How long a graceful stop may take before the operator is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the operator may take to answer `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the operator could not be started: a file of its own not read or written, or the
/// process not spawned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] serde_yaml::Error),
}

impl Error {
    fn io(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> Error {
        let what = what.to_string();
        move |source| Error::Io { what, source }
    }
}

/// How to install the chart and run the operator.
#[derive(Debug, Clone)]
pub struct OperatorOptions {
    /// The release namespace: the chart's ServiceAccount lives there (created if missing).
    pub namespace: String,
    /// `--namespace` of the operator and the chart's `watchNamespace` (a Role there instead of
    /// a ClusterRole); all namespaces when `None`.
    pub watch_namespace: Option<String>,
    /// Extra `helm install --set` values, each `key=value`.
    pub helm_set: Vec<String>,
    /// Extra arguments of `smtp-relay-operator run`.
    pub extra_args: Vec<String>,
    /// Tells apart several operators of one release (leader election): their `--identity` is
    /// `e2e-<namespace>-<instance>` and their log `operator-<namespace>-<instance>.log`.
    pub instance: Option<String>,
}

impl Default for OperatorOptions {
    fn default() -> Self {
        OperatorOptions {
            namespace: "smtp-relay-system".into(),
            watch_namespace: None,
            helm_set: Vec::new(),
            extra_args: Vec::new(),
            instance: None,
        }
    }
}

/// An installed release of the chart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChartRelease {
    pub namespace: String,
    pub release: String,
    /// The chart's ServiceAccount, the operator's identity.
    pub service_account: String,
}

impl ChartRelease {
    /// The API server's user name of the ServiceAccount, as audit events record it
    /// (`user.username`).
    pub fn user(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace, self.service_account
        )
    }
}

/// `helm install smtp-relay-operator charts/smtp-relay-operator -n NAMESPACE --create-namespace
/// --set K=V…` into the control plane (CRD included). The real API server reports its version,
/// so no `--kube-version` is needed. Installing a release that exists already does nothing.
///
/// # Panics
///
/// If helm fails, with its output.
pub fn helm_install_chart(
    cp: &ControlPlane,
    namespace: &str,
    extra_set_args: &[&str],
) -> ChartRelease {
    let release = ChartRelease {
        namespace: namespace.into(),
        release: RELEASE.into(),
        service_account: RELEASE.into(),
    };
    if cp
        .helm(["status", RELEASE, "-n", namespace])
        .status
        .success()
    {
        return release;
    }
    let chart = tools::workspace_root().join("charts/smtp-relay-operator");
    let mut args: Vec<String> = vec![
        "install".into(),
        RELEASE.into(),
        chart.display().to_string(),
        "--namespace".into(),
        namespace.into(),
        "--create-namespace".into(),
    ];
    for s in extra_set_args {
        args.push("--set".into());
        args.push((*s).into());
    }
    let out = cp.helm(&args);
    assert!(
        out.status.success(),
        "helm {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    wait_crd_served(cp);
    release
}

/// Waits until the API serves the SmtpRelay CRD, which helm creates from the chart's `crds/`.
///
/// # Panics
///
/// If it is not served within 30 s.
pub fn wait_crd_served(cp: &ControlPlane) {
    tools::poll_until(
        Duration::from_secs(30),
        "the SmtpRelay CRD to be served",
        || {
            cp.kubectl(["get", "smtprelays", "-A"])
                .status
                .success()
                .then_some(())
        },
    );
}

/// A kubeconfig for the control plane's server and CA that authenticates with a fresh token of
/// ServiceAccount `namespace/name` (`kubectl create token`): a real ServiceAccount login, not
/// impersonation.
///
/// # Panics
///
/// If kubectl fails or prints no token.
pub fn service_account_kubeconfig(
    cp: &ControlPlane,
    namespace: &str,
    name: &str,
) -> Result<PathBuf, Error> {
    let token = cp.kubectl_ok(["create", "token", name, "-n", namespace, "--duration=24h"]);
    let token = token.trim();
    assert!(!token.is_empty(), "kubectl create token printed nothing");
    let admin = cp.kubeconfig();
    let text =
        fs::read_to_string(&admin).map_err(Error::io(format!("read {}", admin.display())))?;
    let mut config: serde_yaml::Value = serde_yaml::from_str(&text)?;
    let mut user = serde_yaml::Mapping::new();
    user.insert("token".into(), token.into());
    config["users"][0]["user"] = serde_yaml::Value::Mapping(user);
    let path = cp
        .dir()
        .join(format!("kubeconfig-token-{namespace}-{name}"));
    fs::write(&path, serde_yaml::to_string(&config)?)
        .map_err(Error::io(format!("write {}", path.display())))?;
    Ok(path)
}

/// A running `smtp-relay-operator run`, stopped (SIGTERM, then SIGKILL after a deadline) on
/// drop. Its output (text logs, `RUST_LOG=info,smtp_relay_operator=debug` unless
/// `E2E_OPERATOR_RUST_LOG` says otherwise) is appended to
/// [`Operator::log_path`] across restarts.
pub struct Operator {
    child: Mutex<Option<Child>>,
    release: ChartRelease,
    kubeconfig: PathBuf,
    log_path: PathBuf,
    http_addr: SocketAddr,
    args: Vec<String>,
    /// Byte offset of the current run's output in the log file.
    run_offset: u64,
}

impl Operator {
    /// Installs the chart (unless installed), then starts the operator as the chart's
    /// ServiceAccount and waits until `/readyz` answers 200. `Err` when its kubeconfig or log
    /// cannot be written or the process not spawned.
    ///
    /// # Panics
    ///
    /// If the chart cannot be installed or the operator does not become ready.
    pub fn start(cp: &ControlPlane, opts: OperatorOptions) -> Result<Operator, Error> {
        let mut set: Vec<&str> = opts.helm_set.iter().map(String::as_str).collect();
        let watch = opts
            .watch_namespace
            .as_ref()
            .map(|ns| format!("watchNamespace={ns}"));
        if let Some(w) = &watch {
            set.push(w);
        }
        let release = helm_install_chart(cp, &opts.namespace, &set);
        let kubeconfig =
            service_account_kubeconfig(cp, &release.namespace, &release.service_account)?;
        let port = tools::free_port().map_err(Error::io("a free port on 127.0.0.1"))?;
        let http_addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let suffix = match &opts.instance {
            Some(i) => format!("{}-{i}", release.namespace),
            None => release.namespace.clone(),
        };
        let mut args: Vec<String> = vec![
            "run".into(),
            "--http-addr".into(),
            http_addr.to_string(),
            "--log-format".into(),
            "text".into(),
            "--identity".into(),
            format!("e2e-{suffix}"),
            "--lease-namespace".into(),
            release.namespace.clone(),
        ];
        if let Some(ns) = &opts.watch_namespace {
            args.push("--namespace".into());
            args.push(ns.clone());
        }
        args.extend(opts.extra_args.iter().cloned());
        let log_path = cp.dir().join(format!("operator-{suffix}.log"));
        let mut op = Operator {
            child: Mutex::new(None),
            release,
            kubeconfig,
            log_path,
            http_addr,
            args,
            run_offset: 0,
        };
        op.spawn()?;
        Ok(op)
    }

    /// The running process, if any; a panic elsewhere while it was held leaves it as it was.
    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn spawn(&mut self) -> Result<(), Error> {
        let log_error = || Error::io(format!("operator log {}", self.log_path.display()));
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(log_error())?;
        writeln!(log, "---- starting smtp-relay-operator ----").map_err(log_error())?;
        let stdout = log.try_clone().map_err(log_error())?;
        self.run_offset = log.metadata().map(|m| m.len()).unwrap_or(0);
        let bin = tools::target_bin("smtp-relay-operator");
        // setpriv --pdeathsig: the operator gets SIGTERM if the test dies without dropping it.
        let mut cmd = if Path::new("/usr/bin/setpriv").is_file() {
            let mut c = Command::new("/usr/bin/setpriv");
            c.args(["--pdeathsig", "TERM", "--"]).arg(bin);
            c
        } else {
            Command::new(bin)
        };
        cmd.args(&self.args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env(
                "RUST_LOG",
                std::env::var("E2E_OPERATOR_RUST_LOG")
                    .unwrap_or_else(|_| "info,smtp_relay_operator=debug".into()),
            )
            .env("NO_COLOR", "1")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .env_remove("WATCH_NAMESPACE")
            .env_remove("HTTP_ADDR")
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .env_remove("LEADER_ELECTION")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log);
        let child = cmd
            .spawn()
            .map_err(Error::io("cannot start smtp-relay-operator"))?;
        *self.child() = Some(child);
        self.wait_for(READY_TIMEOUT, "the operator's /readyz", || {
            matches!(self.http_get("/readyz"), Some((200, _))).then_some(())
        });
        Ok(())
    }

    /// The process id of the running operator.
    pub fn pid(&self) -> Option<u32> {
        self.child().as_ref().map(Child::id)
    }

    /// The chart release the operator runs as.
    pub fn release(&self) -> &ChartRelease {
        &self.release
    }

    /// The API server user name of the operator (`system:serviceaccount:NS:SA`).
    pub fn user(&self) -> String {
        self.release.user()
    }

    /// The kubeconfig holding the ServiceAccount's token.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served (a free loopback port).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The log file (all runs).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the operator printed, over all its runs.
    pub fn logs(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// What the current run printed.
    pub fn current_logs(&self) -> String {
        let text = fs::read(&self.log_path).unwrap_or_default();
        let start = (self.run_offset as usize).min(text.len());
        String::from_utf8_lossy(&text[start..]).into_owned()
    }

    /// The last lines of the log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.logs();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// `GET path` on the operator's HTTP port: (status code, body), or None when it does not
    /// answer.
    pub fn http_get(&self, path: &str) -> Option<(u16, String)> {
        tools::http_get(self.http_addr, path)
    }

    /// The Prometheus text of `/metrics`.
    pub fn metrics(&self) -> String {
        match self.http_get("/metrics") {
            Some((200, body)) => body,
            other => panic!("GET /metrics: {other:?}"),
        }
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        match self.child().as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Polls `f` until it returns `Some` or `timeout` passes, like [`tools::poll_until`], but
    /// fails at once if the operator exits, and puts the operator's log tail in the panic.
    pub fn wait_for<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(20);
        loop {
            if let Some(v) = f() {
                return v;
            }
            {
                let mut guard = self.child();
                if let Some(c) = guard.as_mut() {
                    if let Ok(Some(status)) = c.try_wait() {
                        guard.take();
                        drop(guard);
                        panic!(
                            "the operator exited ({status}) while waiting for {what}; log tail:\n{}",
                            self.log_tail(60)
                        );
                    }
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; operator log tail:\n{}",
                    self.log_tail(60)
                );
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// Stops the operator gracefully (SIGTERM; SIGKILL after 15 s). Returns whether it exited
    /// by itself.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child().take() else {
            return true;
        };
        tools::stop_child(&mut child, STOP_TIMEOUT).is_some()
    }

    /// Kills the operator outright (SIGKILL), as a crash or OOM would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the operator gracefully and starts it again with the same arguments and token
    /// (same HTTP port); waits until it is ready.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.stop();
        self.spawn()
    }

    /// Starts the operator again after [`Self::kill`] or [`Self::stop`]; does nothing if it runs.
    pub fn resume(&mut self) -> Result<(), Error> {
        if self.is_running() {
            return Ok(());
        }
        self.spawn()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `kubectl apply -n NAMESPACE -f -` of `yaml`; returns kubectl's output.
///
/// # Panics
///
/// If kubectl fails, with its standard error.
pub fn apply(cp: &ControlPlane, namespace: &str, yaml: &str) -> String {
    let out = cp.kubectl_stdin(["apply", "-n", namespace, "-f", "-"], yaml);
    assert!(
        out.status.success(),
        "kubectl apply -n {namespace} failed ({}):\n{}\nmanifest:\n{yaml}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kubectl create namespace NAME` (labelled Pod Security `baseline`, which relay pods need);
/// an existing namespace is fine.
/// Merge-patches SmtpRelay `ns/name` (as `kubectl patch --type=merge`), panicking on failure.
pub fn patch_relay(cp: &ControlPlane, ns: &str, name: &str, patch: &str) -> String {
    cp.kubectl_ok([
        "patch",
        "smtprelay",
        name,
        "-n",
        ns,
        "--type=merge",
        "-p",
        patch,
    ])
}

pub fn create_namespace(cp: &ControlPlane, name: &str) {
    apply(
        cp,
        name,
        &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    pod-security.kubernetes.io/enforce: baseline\n"
        ),
    );
}

/// The configuration hash a pod (or a pod template) carries, empty without one.
pub fn config_hash(pod: &Value) -> &str {
    pod["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]
        .as_str()
        .unwrap_or_default()
}

/// `kubectl get KIND NAME -n NAMESPACE -o json`, or None if it does not exist.
///
/// # Panics
///
/// On any other kubectl failure, or output that is not JSON.
pub fn get_json(cp: &ControlPlane, namespace: &str, kind: &str, name: &str) -> Option<Value> {
    let out = cp.kubectl(["get", kind, name, "-n", namespace, "-o", "json"]);
    if out.status.success() {
        return match serde_json::from_slice(&out.stdout) {
            Ok(v) => Some(v),
            Err(e) => panic!("kubectl get {kind} {name} -n {namespace} printed no JSON: {e}"),
        };
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("NotFound") || err.contains("not found") {
        return None;
    }
    panic!("kubectl get {kind} {name} -n {namespace} failed: {err}");
}

/// `kubectl get KIND -n NAMESPACE -o json` → the items.
///
/// # Panics
///
/// If kubectl fails or prints no JSON.
pub fn list_json(cp: &ControlPlane, namespace: &str, kind: &str) -> Vec<Value> {
    let text = cp.kubectl_ok(["get", kind, "-n", namespace, "-o", "json"]);
    let list: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("kubectl get {kind} -n {namespace} printed no JSON: {e}"));
    list["items"].as_array().cloned().unwrap_or_default()
}

/// An SmtpRelay `ns/name` with `spec`, as the API server takes it.
pub fn relay_object(ns: &str, name: &str, spec: Value) -> Value {
    serde_json::json!({
        "apiVersion": "smtprelay.dev/v1alpha1",
        "kind": "SmtpRelay",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    })
}

/// Whether `relay` (an SmtpRelay object) is the controller owner of `obj`.
pub fn controlled_by(obj: &Value, relay: &Value) -> bool {
    obj["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|refs| {
            refs.iter().any(|o| {
                o["controller"] == true
                    && o["kind"] == "SmtpRelay"
                    && o["apiVersion"] == "smtprelay.dev/v1alpha1"
                    && o["uid"] == relay["metadata"]["uid"]
                    && o["name"] == relay["metadata"]["name"]
            })
        })
}

/// The condition of `type_` in an object's `status.conditions`.
pub fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// What kstatus (the library Flux, kpt and cli-utils users rely on) computes for `obj`: its
/// status (`Current`, `InProgress`, `Failed`, ...) and message, from `.cache/bin/kstatus`
/// (`e2e/kstatus`, built by `scripts/install-deps.sh`).
pub fn kstatus(obj: &Value) -> Result<(String, String), String> {
    let mut child = Command::new(tools::bin("kstatus"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running kstatus: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(obj.to_string().as_bytes())
            .map_err(|e| format!("writing to kstatus: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("kstatus: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "kstatus: {}",
            String::from_utf8_lossy(&out.stderr).trim_end()
        ));
    }
    let result: Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("kstatus printed: {e}"))?;
    let field = |k: &str| result[k].as_str().unwrap_or_default().to_string();
    Ok((field("status"), field("message")))
}

/// Audit events of writes (create, update, patch, delete) by `user`, in order.
pub fn writes_by(cp: &ControlPlane, user: &str) -> Result<Vec<Value>, crate::Error> {
    Ok(cp
        .audit_events()?
        .into_iter()
        .filter(|e| {
            e["user"]["username"] == user
                && matches!(
                    e["verb"].as_str(),
                    Some("create" | "update" | "patch" | "delete")
                )
        })
        .collect())
}
