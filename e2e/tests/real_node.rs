//! Smoke test of the real node (`ControlPlane::with_node`): the node is Ready, pods get
//! addresses on the bridge, a StatefulSet's claim binds to a local volume, Services work from
//! the host through kube-proxy, CoreDNS answers at the kube-dns ClusterIP, a pod reaches the
//! API server by name with its ServiceAccount, a NetworkPolicy refuses a pod it does not admit
//! at the network (kube-network-policies) and lets the one it admits through, the egress
//! guard is in place, a node run that was killed outright is cleaned up by the next one, a
//! restart on the same directory brings the pods back, and a stop leaves the host clean (nothing
//! of the kubelet left in /var/lib/kubelet either).
//!
//! One test, not several: there is one node per machine, and its start-up dominates the time.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::collections::BTreeSet;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use smtp_relay_e2e::user_path::lookup_a;
use smtp_relay_e2e::{host_perl, tools, ControlPlane};

const WAIT: Duration = Duration::from_secs(90);

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one scenario, step by step: its steps share their state"
)]
fn real_node_runs_pods_volumes_services_and_dns_and_cleans_up() {
    let begin = Instant::now();
    let netns_before = netns();
    let mut first = ControlPlane::with_node().expect("control plane with a node starts");
    eprintln!("node ready in {:?}", first.startup_time());
    let socket = first.containerd_socket().expect("containerd socket");
    assert!(socket.exists(), "{} exists", socket.display());
    // Images come in through containerd's socket: importing the pause image again is a no-op.
    first
        .import_image(&tools::bin("pause.tar"))
        .expect("image import");

    assert_guard_in_place();
    assert_eq!(
        first.kubectl_ok([
            "get",
            "node",
            "e2e-node",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]),
        "True"
    );

    // The kubelet evicts only when the node's disk is truly nearly full: its thresholds
    // are absolute. This machine kind keeps most of its disk's free blocks for root, so a
    // percentage of the disk's size was crossed by a second checkout's build beside the node,
    // and the kubelet evicted the operator's pod (DiskPressure) in the middle of a suite.
    let config: serde_json::Value = serde_json::from_str(&first.kubectl_ok([
        "get",
        "--raw",
        "/api/v1/nodes/e2e-node/proxy/configz",
    ]))
    .expect("the kubelet's configz is JSON");
    let hard = &config["kubeletconfig"]["evictionHard"];
    for signal in ["nodefs.available", "imagefs.available"] {
        let threshold = hard[signal].as_str().unwrap_or_default();
        assert!(
            threshold.ends_with("Mi") || threshold.ends_with("Gi"),
            "evictionHard {signal} is {threshold:?}, not an absolute size: {hard}"
        );
    }
    assert!(
        config["kubeletconfig"]["evictionSoft"]
            .as_object()
            .is_none_or(|soft| soft.is_empty()),
        "no soft eviction: {config}"
    );

    // The versions the go.mod files pin, as the node reports them.
    let node_info = |field: &str| {
        first.kubectl_ok([
            "get",
            "node",
            "e2e-node",
            "-o",
            &format!("jsonpath={{.status.nodeInfo.{field}}}"),
        ])
    };
    assert_eq!(
        node_info("kubeletVersion"),
        tools::go_mod_requirement("e2e/controlplane/go.mod", "k8s.io/kubernetes")
    );
    assert_eq!(
        node_info("containerRuntimeVersion"),
        format!(
            "containerd://{}",
            tools::go_mod_requirement("e2e/runtime/go.mod", "github.com/containerd/containerd/v2")
                .trim_start_matches('v')
        )
    );

    first.kubectl_ok(["create", "namespace", "smoke"]);
    let ip = run_pause_pod(&first, "smoke", "pause");
    assert!(ip.starts_with("10.88."), "pod IP {ip} is on the pod bridge");

    // A StatefulSet with a volumeClaimTemplate: the claim binds to a local volume and the pod
    // runs with it mounted.
    let out = first.kubectl_stdin(["apply", "-f", "-"], STATEFUL_SET);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tools::poll_until(WAIT, "claim data-store-0 Bound", || {
        let phase = first.kubectl_ok([
            "get",
            "pvc",
            "-n",
            "smoke",
            "data-store-0",
            "-o",
            "jsonpath={.status.phase}",
            "--ignore-not-found",
        ]);
        (phase == "Bound").then_some(())
    });
    wait_running(&first, "smoke", "store-0");

    // From the host: the kubernetes Service answers at its ClusterIP (kube-proxy's rules lead
    // to the API server on the node IP, whose certificate names 10.96.0.1)...
    let readyz = first.kubectl_ok(["--server=https://10.96.0.1:443", "get", "--raw", "/readyz"]);
    assert_eq!(readyz, "ok");
    // ...and CoreDNS answers at the kube-dns ClusterIP.
    let dns: SocketAddr = "10.96.0.10:53".parse().expect("address");
    assert_eq!(
        lookup_a(dns, "kubernetes.default.svc.cluster.local").expect("DNS answer"),
        vec![Ipv4Addr::new(10, 96, 0, 1)]
    );

    // From a pod: the API server through the kubernetes Service, found by cluster DNS, with
    // the pod's ServiceAccount token (kube-proxy's DNAT for pods, the serving certificate's
    // names, CoreDNS from the pod network).
    assert_eq!(
        kubectl_in_pod(&first, "smoke", "in-cluster"),
        "ok",
        "readyz from a pod"
    );

    network_policy_is_enforced(&first);
    assert_guard_in_place();

    // A crash: the control plane is killed outright. Its pods, shims, mounts, bridge and
    // chains stay behind; the next run must clean them up and start as if from scratch.
    let first_dir = first.dir().to_path_buf();
    first.kill();
    let mut second = ControlPlane::with_node().expect("a second node starts after a crash");
    eprintln!("second node ready in {:?}", second.startup_time());
    assert!(
        mounts_under(&first_dir).is_empty(),
        "the crashed run's mounts are gone: {:?}",
        mounts_under(&first_dir)
    );
    assert_guard_in_place();
    second.kubectl_ok(["create", "namespace", "smoke"]);
    let ip = run_pause_pod(&second, "smoke", "again");
    assert!(ip.starts_with("10.88."), "pod IP {ip}");
    drop(first);

    // An API server outage on a node (ControlPlane::restart: kill, start on the same
    // directory): the node comes back and runs the pod again, in a new sandbox.
    second.restart().expect("the node control plane restarts");
    eprintln!("node restarted in {:?}", second.startup_time());
    tools::poll_until(WAIT, "pod smoke/again running again", || {
        let out = second.kubectl_ok([
            "get",
            "pod",
            "-n",
            "smoke",
            "again",
            "-o",
            "jsonpath={.status.phase} {.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].ready}",
        ]);
        let fields: Vec<&str> = out.split(' ').collect();
        (fields.len() == 3 && fields[0] == "Running" && fields[1] != "0" && fields[2] == "true")
            .then_some(())
    });

    // A clean stop leaves nothing on the host.
    let second_dir = second.dir().to_path_buf();
    let stopping = Instant::now();
    second.stop();
    eprintln!("node stopped in {:?}", stopping.elapsed());
    assert!(mounts_under(&second_dir).is_empty(), "no mounts left");
    assert!(
        !Command::new("ip")
            .args(["link", "show", "e2ebr0"])
            .output()
            .expect("run ip")
            .status
            .success(),
        "the bridge is gone"
    );
    let netns_left: Vec<_> = netns().difference(&netns_before).cloned().collect();
    assert!(netns_left.is_empty(), "pinned netns left: {netns_left:?}");
    let chains = iptables(&["-t", "mangle", "-S"]);
    assert!(
        !chains.contains("E2E-NODE-GUARD"),
        "guard removed: {chains}"
    );
    let nat = iptables(&["-t", "nat", "-S"]);
    assert!(
        !nat.contains("KUBE-SERVICES"),
        "kube-proxy chains removed: {nat}"
    );
    assert!(
        !Path::new("/sys/fs/cgroup/pids/kubepods").exists(),
        "pod cgroups removed"
    );
    assert!(
        !chains.contains(NETPOL_CHAIN),
        "the NetworkPolicy diversion removed: {chains}"
    );
    // Nothing under the kubelet's fixed directory: its serving certificate is in the node's
    // own directory (--cert-dir), its device-plugin socket removed.
    assert!(
        second_dir.join("node/kubelet/pki/kubelet.crt").is_file(),
        "the kubelet's serving certificate is in the node's directory"
    );
    for path in [
        "/var/lib/kubelet/pki/kubelet.crt",
        "/var/lib/kubelet/device-plugins/kubelet.sock",
    ] {
        assert!(!Path::new(path).exists(), "{path} left on the host");
    }
    let leftovers: Vec<String> = fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|e| fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&*second_dir.to_string_lossy()))
        .collect();
    assert!(
        leftovers.is_empty(),
        "no node processes left: {leftovers:?}"
    );
    eprintln!("real node test took {:?}", begin.elapsed());
}

/// The iptables chain (mangle table) that diverts the first packets of pod connections to the
/// NetworkPolicy controller's NFQUEUE.
const NETPOL_CHAIN: &str = "E2E-NODE-NETPOL";

/// The port the netpol pods listen on, and their Service's.
const PORT: u16 = 8080;

/// A NetworkPolicy refuses, at the network, a pod it does not admit and lets the one it admits
/// through, to the pod's IP and through a Service's ClusterIP, until it is deleted; pods it does
/// not select are not affected. Three pods run the host's perl (the pause image with the host's
/// /usr mounted), each answering `hello` on TCP 8080: `server`, which the policy selects,
/// `granted` (labelled `access: granted`) and `other`. Once the policy is in force, `other`'s
/// connection attempts to `server` time out (the controller drops the SYN: no reset, no
/// answer), while `granted` still gets its `hello`, and `other` still reaches `granted`.
fn network_policy_is_enforced(cp: &ControlPlane) {
    let started = Instant::now();
    let chain = iptables(&["-t", "mangle", "-S", NETPOL_CHAIN]);
    assert!(
        chain.contains("-j NFQUEUE"),
        "the diversion to the controller's queue is in place: {chain}"
    );
    let postrouting = iptables(&["-t", "mangle", "-S", "POSTROUTING"]);
    assert_eq!(
        postrouting.matches(&format!("-j {NETPOL_CHAIN}")).count(),
        1,
        "one jump to the diversion: {postrouting}"
    );
    cp.kubectl_ok(["create", "namespace", "netpol"]);
    let server = perl_pod(cp, "server", "app: server");
    let granted = perl_pod(cp, "granted", "access: granted");
    let _ = perl_pod(cp, "other", "access: none");
    let out = cp.kubectl_stdin(["apply", "-f", "-"], SERVER_SERVICE);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cluster_ip = cp.kubectl_ok([
        "get",
        "service",
        "-n",
        "netpol",
        "server",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    // Before any policy: everyone reaches the server, by its IP and by its Service.
    for client in ["granted", "other"] {
        for to in [&server, &cluster_ip] {
            tools::poll_until(WAIT, &format!("{client} reaches {to}"), || {
                connect(cp, client, to).ok()
            });
        }
    }

    let out = cp.kubectl_stdin(["apply", "-f", "-"], SERVER_POLICY);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let applied = Instant::now();
    let refused = tools::poll_until(WAIT, "the policy refuses other", || {
        connect(cp, "other", &server).err()
    });
    eprintln!(
        "the policy refused other after {:?}: {refused}",
        applied.elapsed()
    );
    assert!(
        refused.contains("timeout"),
        "dropped at the network, not refused by the server: {refused}"
    );
    let through_service = connect(cp, "other", &cluster_ip);
    assert!(
        through_service
            .as_ref()
            .is_err_and(|e| e.contains("timeout")),
        "the policy refuses other through the Service too: {through_service:?}"
    );
    for to in [&server, &cluster_ip] {
        assert_eq!(
            connect(cp, "granted", to),
            Ok("hello".to_owned()),
            "the policy admits granted to {to}"
        );
    }
    // other is selected by no policy: its connections elsewhere go on.
    assert_eq!(
        connect(cp, "other", &granted),
        Ok("hello".to_owned()),
        "other reaches a pod no policy selects"
    );
    let log = fs::read_to_string(cp.dir().join("node/logs/netpol.log")).expect("netpol's log");
    assert!(
        log.contains("verdict=\"drop\""),
        "the controller dropped the connection (its log)"
    );

    cp.kubectl_ok(["delete", "networkpolicy", "-n", "netpol", "server-ingress"]);
    let deleted = Instant::now();
    tools::poll_until(
        WAIT,
        "other reaches the server once the policy is gone",
        || connect(cp, "other", &server).ok(),
    );
    eprintln!(
        "other reached the server {:?} after the policy was deleted",
        deleted.elapsed()
    );
    eprintln!("network policy phase took {:?}", started.elapsed());
}

/// The Service of the netpol server pod.
const SERVER_SERVICE: &str = r"
apiVersion: v1
kind: Service
metadata:
  name: server
  namespace: netpol
spec:
  selector: {app: server}
  ports:
    - {protocol: TCP, port: 8080, targetPort: 8080}
";

/// Admits pods labelled `access: granted` to the server's port 8080, and nothing else.
const SERVER_POLICY: &str = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: server-ingress
  namespace: netpol
spec:
  podSelector:
    matchLabels: {app: server}
  policyTypes: [Ingress]
  ingress:
    - from:
        - podSelector:
            matchLabels: {access: granted}
      ports:
        - {protocol: TCP, port: 8080}
";

/// Runs a pod in namespace netpol with one label, answering `hello` to every connection on
/// port 8080 ([`host_perl`]), and returns its IP once it is Running.
fn perl_pod(cp: &ControlPlane, name: &str, label: &str) -> String {
    let server = format!(
        r#"$s = IO::Socket::INET->new(LocalPort => {PORT}, Listen => 16, ReuseAddr => 1) or die "listen: $@"; while (1) {{ $c = $s->accept or next; print $c "hello\n"; close $c }}"#
    );
    host_perl::run_pod(cp, "netpol", name, label, &server).unwrap_or_else(|e| panic!("{e}"))
}

/// Connects from pod `client` (namespace netpol) to `to`:8080 with a 3 s timeout and returns
/// what the server says, or the client's error.
fn connect(cp: &ControlPlane, client: &str, to: &str) -> Result<String, String> {
    host_perl::exec(
        cp,
        "netpol",
        client,
        host_perl::READ_FIRST_LINE,
        &[to, &PORT.to_string()],
    )
    .and_then(|said| if said == "hello" { Ok(said) } else { Err(said) })
}

const STATEFUL_SET: &str = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: store
  namespace: smoke
spec:
  serviceName: store
  replicas: 1
  selector:
    matchLabels: {app: store}
  template:
    metadata:
      labels: {app: store}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: pause
          image: localhost/pause:3.10
          imagePullPolicy: Never
          volumeMounts:
            - {name: data, mountPath: /data}
  volumeClaimTemplates:
    - metadata:
        name: data
      spec:
        accessModes: [ReadWriteOnce]
        resources:
          requests:
            storage: 64Mi
"#;

/// Runs a pod of the pause image and returns its IP once it is Running.
fn run_pause_pod(cp: &ControlPlane, ns: &str, name: &str) -> String {
    let pod = format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: pause
      image: localhost/pause:3.10
      imagePullPolicy: Never
"#
    );
    let out = cp.kubectl_stdin(["apply", "-f", "-"], &pod);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_running(cp, ns, name)
}

/// Runs the host's kubectl in a pod (the pause image with kubectl and the host's libraries
/// mounted read-only; kubectl is linked against glibc) to read /readyz at
/// kubernetes.default.svc.cluster.local with the pod's in-cluster credentials, and returns
/// its output.
fn kubectl_in_pod(cp: &ControlPlane, ns: &str, name: &str) -> String {
    let kubectl = tools::bin("kubectl");
    let pod = format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
spec:
  restartPolicy: Never
  containers:
    - name: kubectl
      image: localhost/pause:3.10
      imagePullPolicy: Never
      command: [/kubectl, get, --raw, /readyz]
      env:
        - {{name: HOME, value: /tmp}}
        # In-cluster configuration (the pod's token and CA), with the API server's name
        # instead of the IP the kubelet puts there, so that cluster DNS is used.
        - {{name: KUBERNETES_SERVICE_HOST, value: kubernetes.default.svc.cluster.local}}
      volumeMounts:
        - {{name: kubectl, mountPath: /kubectl, readOnly: true}}
        - {{name: lib, mountPath: /lib, readOnly: true}}
        - {{name: lib64, mountPath: /lib64, readOnly: true}}
  volumes:
    - {{name: kubectl, hostPath: {{path: {kubectl}, type: File}}}}
    - {{name: lib, hostPath: {{path: /usr/lib, type: Directory}}}}
    - {{name: lib64, hostPath: {{path: /usr/lib64, type: Directory}}}}
"#,
        kubectl = kubectl.display()
    );
    let out = cp.kubectl_stdin(["apply", "-f", "-"], &pod);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let phase = tools::poll_until(WAIT, &format!("pod {ns}/{name} finished"), || {
        let phase = cp.kubectl_ok([
            "get",
            "pod",
            "-n",
            ns,
            name,
            "-o",
            "jsonpath={.status.phase}",
        ]);
        (phase == "Succeeded" || phase == "Failed").then_some(phase)
    });
    let logs = cp.kubectl_ok(["logs", "-n", ns, name]);
    assert_eq!(phase, "Succeeded", "kubectl in a pod: {logs}");
    logs.trim().to_owned()
}

/// Waits for a pod to be Running and returns its IP.
fn wait_running(cp: &ControlPlane, ns: &str, name: &str) -> String {
    host_perl::wait_running(cp, ns, name).unwrap_or_else(|e| panic!("{e}"))
}

fn assert_guard_in_place() {
    let guard = iptables(&["-t", "mangle", "-S", "E2E-NODE-GUARD"]);
    assert!(guard.contains("-j DROP"), "guard drops: {guard}");
    let prerouting = iptables(&["-t", "mangle", "-S", "PREROUTING"]);
    assert!(
        prerouting.contains("-i e2ebr0 -j E2E-NODE-GUARD"),
        "guard hooked on the bridge: {prerouting}"
    );
}

fn iptables(args: &[&str]) -> String {
    let out = Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .expect("run iptables");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The pinned network namespaces (containerd's for the pods, and any other program's).
fn netns() -> BTreeSet<String> {
    fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Mount points at or under dir, from /proc/self/mountinfo.
fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    fs::read_to_string("/proc/self/mountinfo")
        .expect("read mountinfo")
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}
