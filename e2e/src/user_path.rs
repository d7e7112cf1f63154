//! The user's path on the real node ([`ControlPlane::with_node`]): the images as a registry
//! would serve them, `helm install` of the chart with its default values (the operator runs as
//! a pod of its image), an SmtpRelay from the chart's examples, its relay pod under the real
//! kubelet, and mail through its Service. Shared by `e2e/tests/user_path.rs` and the demo
//! (`scripts/demo.sh`).
//!
//! The steps return `Err` with a diagnosis (`kubectl describe`, events, pod logs) rather than
//! panicking, so the demo can report a failed step and the test can put it in its panic.

use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::mail;
use crate::operator::{self, ChartRelease};
use crate::tools::{self, poll};
use crate::ControlPlane;

/// The node's address on the pod bridge: pods reach the host there, and the host's
/// connections to Services leave from it.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
/// The kube-dns Service (CoreDNS on the node).
pub const CLUSTER_DNS: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// Where the chart is installed, as its README says.
pub const OPERATOR_NAMESPACE: &str = "smtp-relay-system";
/// The example the user path applies: the seed's unauthenticated relay.
pub const EXAMPLE: &str = "charts/smtp-relay-operator/examples/unauthenticated-relay.yaml";
/// The images `scripts/build-images.sh` exports, tagged as the chart's defaults reference them.
pub const IMAGES: [&str; 2] = ["smtp-relay-operator", "smtp-relay"];

/// The image tarballs of `scripts/build-images.sh`.
pub fn image_tarballs() -> Result<Vec<PathBuf>, String> {
    IMAGES
        .iter()
        .map(|name| {
            let path = tools::workspace_root()
                .join(".cache/images")
                .join(format!("{name}.tar"));
            if path.is_file() {
                Ok(path)
            } else {
                Err(format!(
                    "{} not found: run scripts/build-images.sh first",
                    path.display()
                ))
            }
        })
        .collect()
}

/// Imports both images into the node's containerd: what a pull from ghcr.io would give it.
pub fn import_images(cp: &ControlPlane) -> Result<(), String> {
    for tar in image_tarballs()? {
        cp.import_image(&tar).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// `helm install` of the chart with its default values into [`OPERATOR_NAMESPACE`]: the
/// operator runs as the chart's Deployment, from the image the chart names.
pub fn install_chart(cp: &ControlPlane) -> ChartRelease {
    operator::helm_install_chart(cp, OPERATOR_NAMESPACE, &[])
}

/// The previous release of this project (`e2e/previous-release`, its first line that is not a
/// comment): the user path installs its chart and images, then upgrades to this checkout.
pub fn previous_commit() -> &'static str {
    include_str!("../previous-release")
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or_default()
}

/// The previous release's images, as `scripts/build-images.sh --previous` exports them.
pub struct PreviousRelease {
    /// The tag of both images: `<version>-previous.<12 hex of the commit>`.
    pub version: String,
    pub tarballs: Vec<PathBuf>,
}

/// The previous release's image tarballs and their tag, or what to run to make them.
pub fn previous_release() -> Result<PreviousRelease, String> {
    let dir = tools::workspace_root().join(".cache/images/previous");
    let missing = |what: &std::path::Path| {
        format!(
            "{} not found: run scripts/build-images.sh --previous first",
            what.display()
        )
    };
    let version_file = dir.join("VERSION");
    let version = fs::read_to_string(&version_file)
        .map_err(|_| missing(&version_file))?
        .trim()
        .to_string();
    let want = format!(
        "-previous.{}",
        previous_commit().get(..12).unwrap_or_default()
    );
    if !version.ends_with(&want) {
        return Err(format!(
            "{} is {version}, not of e2e/previous-release ({}): run scripts/build-images.sh --previous",
            dir.display(),
            previous_commit()
        ));
    }
    let tarballs = IMAGES
        .iter()
        .map(|name| {
            let path = dir.join(format!("{name}.tar"));
            path.is_file()
                .then_some(path.clone())
                .ok_or_else(|| missing(&path))
        })
        .collect::<Result<_, _>>()?;
    Ok(PreviousRelease { version, tarballs })
}

/// The chart as it was at [`previous_commit`], taken from the repository's history
/// (`git archive`) into `dir`: what a user who installed the previous version has.
pub fn previous_chart(dir: &std::path::Path) -> Result<PathBuf, String> {
    let commit = previous_commit();
    let out = std::process::Command::new("git")
        .current_dir(tools::workspace_root())
        .args([
            "archive",
            "--format=tar",
            commit,
            "charts/smtp-relay-operator",
        ])
        .output()
        .map_err(|e| format!("git archive: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "git archive {commit}: {} (a clone with its history is needed)",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let mut tar = std::process::Command::new("tar")
        .args(["-x", "-C"])
        .arg(dir)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("tar: {e}"))?;
    if let Some(mut stdin) = tar.stdin.take() {
        io::Write::write_all(&mut stdin, &out.stdout).map_err(|e| format!("tar: {e}"))?;
    }
    let status = tar.wait().map_err(|e| format!("tar: {e}"))?;
    if !status.success() {
        return Err(format!("tar -x: {status}"));
    }
    Ok(dir.join("charts/smtp-relay-operator"))
}

/// Runs Helm 4 (`helm4 ARGS…`) against the control plane, returning its standard output, or
/// what it said as `Err`.
pub fn helm4(cp: &ControlPlane, args: &[&str]) -> Result<String, String> {
    let out = cp.helm4(args);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "helm4 {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `helm4 install` of `chart` (a directory) with its default values into
/// [`OPERATOR_NAMESPACE`], as the README tells users (with Helm 4 instead of Helm 3).
pub fn helm4_install(
    cp: &ControlPlane,
    chart: &std::path::Path,
    values: &[&str],
) -> Result<ChartRelease, String> {
    let chart = chart.display().to_string();
    let mut args = vec![
        "install",
        operator::RELEASE,
        &chart,
        "--namespace",
        OPERATOR_NAMESPACE,
        "--create-namespace",
    ];
    for v in values {
        args.extend(["--set", v]);
    }
    helm4(cp, &args)?;
    Ok(ChartRelease {
        namespace: OPERATOR_NAMESPACE.into(),
        release: operator::RELEASE.into(),
        service_account: operator::RELEASE.into(),
    })
}

/// `helm4 upgrade` of the release to this checkout's chart with the flags `more` (`--set`,
/// `--reset-values`), as the README tells users.
pub fn helm4_upgrade(cp: &ControlPlane, more: &[&str]) -> Result<String, String> {
    let chart = tools::workspace_root()
        .join("charts/smtp-relay-operator")
        .display()
        .to_string();
    let mut args = vec![
        "upgrade",
        operator::RELEASE,
        &chart,
        "--namespace",
        OPERATOR_NAMESPACE,
    ];
    args.extend(more);
    helm4(cp, &args)
}

/// Runs kubectl, returning its standard output, or its standard error as `Err`.
pub fn kubectl(cp: &ControlPlane, args: &[&str]) -> Result<String, String> {
    let out = cp.kubectl(args);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// What to read when a wait in `namespace` fails: its pods described, its events, each pod's
/// logs (and the previous container's, after a restart), and the kubelet's log tail.
pub fn diagnose(cp: &ControlPlane, namespace: &str) -> String {
    let text = |args: &[&str]| {
        let out = cp.kubectl(args);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let mut out = format!("=== kubectl get all,pvc -n {namespace} -o wide\n");
    out += &text(&["get", "all,pvc", "-n", namespace, "-o", "wide"]);
    out += &format!("=== kubectl describe pods -n {namespace}\n");
    out += &text(&["describe", "pods", "-n", namespace]);
    out += &format!("=== events in {namespace}\n");
    out += &text(&["get", "events", "-n", namespace, "--sort-by=.lastTimestamp"]);
    let pods = text(&["get", "pods", "-n", namespace, "-o", "name"]);
    for pod in pods.lines().filter(|l| l.starts_with("pod/")) {
        out += &format!("=== kubectl logs -n {namespace} {pod} (tail)\n");
        out += &text(&[
            "logs",
            "-n",
            namespace,
            pod,
            "--all-containers",
            "--tail=40",
        ]);
        // What waits on its spool, and where: a message that is neither delivered nor deferred
        // (incoming/, active/) and Postfix's own lines about it.
        let queue = text(&[
            "exec", "-n", namespace, pod, "-c", "relay", "--", "sh", "-c",
            "postqueue -c /run/smtp-relay/postfix -p; ls -lR --time-style=+%T /var/spool/postfix/incoming /var/spool/postfix/active /var/spool/postfix/deferred",
        ]);
        out += &format!("=== the spool of {pod}\n{}", tail(&queue, 40));
        let log = text(&["logs", "-n", namespace, pod, "-c", "relay"]);
        let skipped: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("qmgr") && !l.contains("removed"))
            .collect();
        out += &format!(
            "=== qmgr's lines in {pod}'s log ({}; the last ones)\n{}\n",
            skipped.len(),
            skipped[skipped.len().saturating_sub(15)..].join("\n")
        );
        let previous = cp.kubectl(["logs", "-n", namespace, pod, "--previous", "--tail=40"]);
        if previous.status.success() {
            out += &format!("=== previous container of {pod}\n");
            out += &String::from_utf8_lossy(&previous.stdout);
        }
    }
    out += &format!("=== SmtpRelays of {namespace} (status)\n");
    out += &text(&[
        "get",
        "smtprelays",
        "-n",
        namespace,
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}{': '}{.status}{\"\\n\"}{end}",
    ]);
    out += "=== the operator's log (tail)\n";
    out += &text(&[
        "logs",
        "-n",
        "smtp-relay-system",
        "-l",
        "app.kubernetes.io/name=smtp-relay-operator",
        "--tail=60",
    ]);
    let kubelet = fs::read_to_string(cp.dir().join("node/logs/kubelet.log")).unwrap_or_default();
    out += "=== kubelet.log (tail)\n";
    out += &tail(&kubelet, 30);
    // What the node's NetworkPolicy controller dropped.
    let netpol = fs::read_to_string(cp.dir().join("node/logs/netpol.log")).unwrap_or_default();
    let drops: Vec<&str> = netpol
        .lines()
        .filter(|l| l.contains("verdict=\"drop\""))
        .collect();
    out += &format!("=== netpol.log: {} drops, the last ones\n", drops.len());
    out += &drops[drops.len().saturating_sub(10)..].join("\n");
    out
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Polls `f` until it returns `Some` or `timeout` passes; on timeout, `Err` with the
/// diagnosis of `namespace`.
pub fn wait<T>(
    cp: &ControlPlane,
    namespace: &str,
    timeout: Duration,
    what: &str,
    f: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    poll(what, timeout, f).map_err(|e| format!("{e}\n{}", diagnose(cp, namespace)))
}

/// Waits until the chart's Deployment has all its replicas updated and Ready (its readiness
/// probe, `/readyz`, passing under the kubelet), and returns the operator pod's name.
pub fn wait_operator_ready(
    cp: &ControlPlane,
    release: &ChartRelease,
    timeout: Duration,
) -> Result<String, String> {
    wait(
        cp,
        &release.namespace,
        timeout,
        "the operator Deployment Ready",
        || operator_ready(cp, release),
    )
}

/// Waits until the operator behind the chart's metrics Service has reconciled at least once
/// (a controller reconciles everything it finds when it starts), and returns its `/metrics`.
pub fn wait_reconciled(
    cp: &ControlPlane,
    release: &ChartRelease,
    timeout: Duration,
) -> Result<String, String> {
    wait(
        cp,
        &release.namespace,
        timeout,
        "the operator's first reconcile in its /metrics",
        || {
            let text = operator_metrics(cp, release).ok()?;
            (metric(&text, "smtp_relay_operator_reconciles_total")? >= 1.0).then_some(text)
        },
    )
}

/// The operator pod's name when the chart's Deployment is rolled out and its one pod Ready.
pub fn operator_ready(cp: &ControlPlane, release: &ChartRelease) -> Option<String> {
    let ns = &release.namespace;
    let d = operator::get_json(cp, ns, "deployment", &release.release)?;
    let want = d["spec"]["replicas"].as_i64()?;
    let s = &d["status"];
    let ready = s["readyReplicas"].as_i64() == Some(want)
        && s["updatedReplicas"].as_i64() == Some(want)
        && s["replicas"].as_i64() == Some(want)
        && s["observedGeneration"] == d["metadata"]["generation"];
    if !ready {
        return None;
    }
    let pods = operator::list_json(cp, ns, "pods");
    let running: Vec<&Value> = pods
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null() && pod_ready(p))
        .collect();
    match running[..] {
        [pod] => pod["metadata"]["name"].as_str().map(str::to_owned),
        _ => None,
    }
}

/// Whether a pod is Running with its Ready condition True.
pub fn pod_ready(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running"
        && operator::condition(pod, "Ready").is_some_and(|c| c["status"] == "True")
}

/// Postfix settings for the relay on this machine: quick retries of deferred mail (so a
/// relayhost that comes back is tried within seconds, not Postfix's default minutes).
pub fn quick_retry_postconf() -> serde_json::Map<String, Value> {
    [
        ("queue_run_delay", "1s"),
        ("minimal_backoff_time", "1s"),
        ("maximal_backoff_time", "2s"),
        ("smtp_connect_timeout", "5s"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Value::from(v)))
    .collect()
}

/// The SmtpRelay of [`EXAMPLE`], adapted to this machine: its relayhost is `relayhost` (a
/// sink on the host), and `client_network` is added to its networks (the address the relay
/// sees for a client on the host: the host's connections to the Service leave from the node
/// IP, and kube-proxy does not masquerade traffic from inside the cluster CIDR). When
/// `quick_retries`, postconf makes deferred mail retry within seconds. Returned as JSON
/// (kubectl reads it), with the relay's name.
pub fn example_relay(
    relayhost: SocketAddr,
    client_network: &str,
    quick_retries: bool,
) -> Result<(String, String), String> {
    let path = tools::workspace_root().join(EXAMPLE);
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut doc: Value = serde_yaml::from_str(&text).map_err(|e| format!("{EXAMPLE}: {e}"))?;
    if doc["kind"] != "SmtpRelay" {
        return Err(format!("{EXAMPLE} is no longer one SmtpRelay"));
    }
    let name = doc["metadata"]["name"]
        .as_str()
        .ok_or_else(|| format!("{EXAMPLE} has no name"))?
        .to_string();
    let spec = &mut doc["spec"];
    spec["relayhost"]["host"] = relayhost.ip().to_string().into();
    spec["relayhost"]["port"] = relayhost.port().into();
    spec["networks"]
        .as_array_mut()
        .ok_or_else(|| format!("{EXAMPLE} has no networks"))?
        .push(client_network.into());
    if quick_retries {
        spec["postconf"] = Value::Object(quick_retry_postconf());
    }
    Ok((doc.to_string(), name))
}

/// Waits until the relay's StatefulSet pod is Running and Ready under the kubelet (startup
/// and readiness probes passed), and the SmtpRelay Ready=True for its current generation with
/// one ready replica. Returns the pod.
pub fn wait_relay_ready(
    cp: &ControlPlane,
    ns: &str,
    relay: &str,
    timeout: Duration,
) -> Result<Value, String> {
    wait(
        cp,
        ns,
        timeout,
        &format!("pod {ns}/{relay}-0 Ready and SmtpRelay {relay} Ready=True"),
        || relay_ready(cp, ns, relay),
    )
}

/// The SmtpRelay's condition `type_`, once it has one.
pub fn relay_condition(cp: &ControlPlane, ns: &str, relay: &str, type_: &str) -> Option<Value> {
    operator::condition(&operator::get_json(cp, ns, "smtprelay", relay)?, type_).cloned()
}

/// The relay's pod, when it is Ready and the SmtpRelay says Ready=True (see
/// [`wait_relay_ready`]).
pub fn relay_ready(cp: &ControlPlane, ns: &str, relay: &str) -> Option<Value> {
    relay_pods_ready(cp, ns, relay, 1)?.pop()
}

/// Pods `<relay>-0` to `<relay>-<replicas - 1>`, in order, when every one is Ready and not
/// terminating and the SmtpRelay says Ready=True with that many ready replicas.
pub fn relay_pods_ready(
    cp: &ControlPlane,
    ns: &str,
    relay: &str,
    replicas: usize,
) -> Option<Vec<Value>> {
    let pods = (0..replicas)
        .map(|i| operator::get_json(cp, ns, "pod", &format!("{relay}-{i}")))
        .collect::<Option<Vec<Value>>>()?;
    if !pods
        .iter()
        .all(|p| pod_ready(p) && p["metadata"]["deletionTimestamp"].is_null())
    {
        return None;
    }
    let r = operator::get_json(cp, ns, "smtprelay", relay)?;
    let ready = operator::condition(&r, "Ready")?;
    (ready["status"] == "True"
        && r["status"]["readyReplicas"] == replicas
        && r["status"]["observedGeneration"] == r["metadata"]["generation"])
        .then_some(pods)
}

/// The claim of the relay's pod (`spool-<relay>-0` or whatever the StatefulSet names it),
/// as `(claim, volume)` once Bound.
pub fn relay_claim(cp: &ControlPlane, ns: &str, relay: &str) -> Result<(Value, Value), String> {
    pod_claim(cp, ns, &format!("{relay}-0"))
}

/// The spool claim of relay pod `ns/pod` (Bound) and its volume.
pub fn pod_claim(cp: &ControlPlane, ns: &str, pod: &str) -> Result<(Value, Value), String> {
    let pvcs = operator::list_json(cp, ns, "pvc");
    let suffix = format!("-{pod}");
    let pvc = pvcs
        .into_iter()
        .find(|p| {
            p["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.ends_with(&suffix))
        })
        .ok_or_else(|| format!("no claim of pod {pod} in {ns}"))?;
    if pvc["status"]["phase"] != "Bound" {
        return Err(format!("claim not Bound: {}", pvc["status"]));
    }
    let volume = pvc["spec"]["volumeName"].as_str().unwrap_or_default();
    let pv = kubectl(cp, &["get", "pv", volume, "-o", "json"])?;
    let pv = serde_json::from_str(&pv).map_err(|e| format!("volume {volume}: {e}"))?;
    Ok((pvc, pv))
}

/// The host directory of a local (hostPath) persistent volume: on this node, the relay's
/// Postfix spool.
pub fn volume_dir(pv: &Value) -> Option<PathBuf> {
    pv["spec"]["hostPath"]["path"].as_str().map(PathBuf::from)
}

/// The ClusterIP of Service `ns/name`.
pub fn cluster_ip(cp: &ControlPlane, ns: &str, name: &str) -> Result<Ipv4Addr, String> {
    let svc = operator::get_json(cp, ns, "service", name)
        .ok_or_else(|| format!("no Service {ns}/{name}"))?;
    svc["spec"]["clusterIP"]
        .as_str()
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| format!("Service {ns}/{name} has no ClusterIP: {}", svc["spec"]))
}

/// Asks `server` for the A records of `name` over UDP (one query; CoreDNS answers cluster
/// names itself).
pub fn lookup_a(server: SocketAddr, name: &str) -> io::Result<Vec<Ipv4Addr>> {
    let mut query = vec![0x4e, 0x21, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    socket.send_to(&query, server)?;
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf)?;
    let reply = &buf[..n];
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    if n < 12 || reply[..2] != query[..2] {
        return Err(bad("short reply or wrong id"));
    }
    if reply[3] & 0x0f != 0 {
        return Err(bad(&format!("rcode {}", reply[3] & 0x0f)));
    }
    let answers = u16::from_be_bytes([reply[6], reply[7]]);
    // Skip the question: it is ours, echoed.
    let mut at = query.len();
    let mut out = Vec::new();
    for _ in 0..answers {
        // The owner name: a pointer (two bytes) or labels up to a zero byte.
        while at < n {
            match reply[at] {
                0 => {
                    at += 1;
                    break;
                }
                b if b & 0xc0 == 0xc0 => {
                    at += 2;
                    break;
                }
                b => at += 1 + b as usize,
            }
        }
        let field = reply
            .get(at..at + 10)
            .ok_or_else(|| bad("truncated answer"))?;
        let kind = u16::from_be_bytes([field[0], field[1]]);
        let len = u16::from_be_bytes([field[8], field[9]]) as usize;
        at += 10;
        let data = reply
            .get(at..at + len)
            .ok_or_else(|| bad("truncated data"))?;
        if kind == 1 && len == 4 {
            out.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        at += len;
    }
    Ok(out)
}

/// Resolves `<service>.<ns>.svc.cluster.local` at the kube-dns ClusterIP, as a pod would.
pub fn resolve_service(ns: &str, service: &str) -> Result<Vec<Ipv4Addr>, String> {
    let name = format!("{service}.{ns}.svc.cluster.local");
    lookup_a(SocketAddr::from((CLUSTER_DNS, 53)), &name)
        .map_err(|e| format!("DNS query for {name} at {CLUSTER_DNS}: {e}"))
}

/// Sends one message from the host (the kernel picks the source address, as for any client
/// here) to `addr`; `Err` carries the relay's refusal.
pub fn send_from_host(
    addr: SocketAddr,
    from: &str,
    to: &str,
    marker: &str,
) -> Result<String, String> {
    mail::send(addr, Ipv4Addr::UNSPECIFIED, None, from, to, marker)
}

/// A sink on the node IP at `port`, where relay pods reach it through the bridge (the node's
/// egress guard lets pods reach this machine's own addresses).
pub fn node_sink(port: u16) -> Result<mail::Sink, String> {
    mail::Sink::start_at(SocketAddr::from((NODE_IP, port)), mail::DEADLINE)
}

/// `kubectl logs` of a pod's current container, empty when there are none yet.
pub fn pod_logs(cp: &ControlPlane, ns: &str, pod: &str) -> String {
    String::from_utf8_lossy(&cp.kubectl(["logs", "-n", ns, pod]).stdout).into_owned()
}

/// The value of an unlabelled Prometheus sample `name` in `text`.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The operator's `/metrics` through the chart's metrics Service (its ClusterIP, through
/// kube-proxy), as Prometheus would scrape it.
pub fn operator_metrics(cp: &ControlPlane, release: &ChartRelease) -> Result<String, String> {
    let service = format!("{}-metrics", release.release);
    let ip = cluster_ip(cp, &release.namespace, &service)?;
    let svc = operator::get_json(cp, &release.namespace, "service", &service)
        .ok_or_else(|| format!("no Service {service}"))?;
    let port = svc["spec"]["ports"][0]["port"].as_u64().unwrap_or(0) as u16;
    match tools::http_get(SocketAddr::from((ip, port)), "/metrics") {
        Some((200, body)) => Ok(body),
        other => Err(format!("GET /metrics at {ip}:{port}: {other:?}")),
    }
}
