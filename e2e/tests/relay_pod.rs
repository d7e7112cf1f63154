//! Run the pod for real: the operator turns an SmtpRelay into a StatefulSet on a real API server,
//! and this test plays the kubelet for its pod (`smtp_relay_e2e::pod`): the relay runs with the
//! template's command, env, volumes and probes against a real upstream relay requiring AUTH, and
//! mail goes through it. Then the inputs rotate as they do in a cluster: a SASL user added
//! (Secret swap, no restart), the relayhost password changed (StatefulSet roll), and a message
//! queued while the relayhost is down survives a pod restart on the same spool.
//!
//! Needs root, Postfix (`apt-get install postfix sasl2-bin libsasl2-modules`), the tools of
//! scripts/install-deps.sh and `cargo build --workspace --bins`.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde_json::Value;
use smtp_relay_e2e::mail::{self, marker, smtp_relay_send, Sink, Upstream};
use smtp_relay_e2e::operator::{self, Operator, OperatorOptions};
use smtp_relay_e2e::pod::{Kubelet, RelayPod};
use smtp_relay_e2e::{tools, ControlPlane};

const NS: &str = "mail";
const RELAY: &str = "relay";
/// The relay's `networks` client: may send to the relay domain without a login.
const NET_CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const DEADLINE: Duration = Duration::from_secs(60);

const RELAYHOST_LOGIN: &str = "relay-login";
const RELAYHOST_PW1: &str = "first relayhost password: }, =";
const RELAYHOST_PW2: &str = "second relayhost password";
const APP1_PW: &str = "app1 password";
const APP2_PW: &str = "app2 password";

struct Timer(Instant);

impl Timer {
    fn step(&self, what: &str) {
        eprintln!("[{:>6.1}s] {what}", self.0.elapsed().as_secs_f64());
    }
}

fn relayhost_secret(password: &str) -> String {
    let v = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "relayhost-credentials", "namespace": NS},
        "type": "Opaque",
        "stringData": {"username": RELAYHOST_LOGIN, "password": password},
    });
    v.to_string()
}

fn users_secret(users: &[(&str, &str)]) -> String {
    let data: serde_json::Map<String, Value> = users
        .iter()
        .map(|(u, p)| (u.to_string(), Value::from(*p)))
        .collect();
    serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "sasl-users", "namespace": NS},
        "type": "Opaque",
        "stringData": data,
    })
    .to_string()
}

fn smtp_relay(upstream_port: u16) -> String {
    let mut postconf = mail::loopback_postconf();
    postconf.insert("compatibility_level".into(), "2".into());
    serde_json::json!({
        "apiVersion": "smtprelay.dev/v1alpha1", "kind": "SmtpRelay",
        "metadata": {"name": RELAY, "namespace": NS},
        "spec": {
            "domain": "example.net",
            "hostname": "relay.example.net",
            "networks": [format!("{NET_CLIENT}/32")],
            "mode": "AllowSaslAuthNoDomain",
            "relayhost": {
                "host": "127.0.0.1",
                "port": upstream_port,
                "credentialsSecretRef": {
                    "name": "relayhost-credentials",
                    "usernameKey": "username",
                    "passwordKey": "password",
                },
                "tls": {"level": "none"},
            },
            "saslUsersSecretRef": {"name": "sasl-users"},
            "postconf": postconf,
        }
    })
    .to_string()
}

/// Secrets go through stdin, never the command line.
fn apply(cp: &ControlPlane, manifest: &str) {
    let out = cp.kubectl_stdin(["apply", "-f", "-"], manifest);
    assert!(
        out.status.success(),
        "kubectl apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn get(cp: &ControlPlane, kind: &str, name: &str) -> Option<Value> {
    operator::get_json(cp, NS, kind, name)
}

fn template_hash(cp: &ControlPlane) -> Option<String> {
    get(cp, "statefulset", RELAY)?["spec"]["template"]["metadata"]["annotations"]
        [operator::CONFIG_HASH_ANNOTATION]
        .as_str()
        .map(str::to_string)
}

/// Waits until the SmtpRelay says Ready=True with one ready replica.
fn wait_relay_ready(cp: &ControlPlane, op: &Operator) -> Value {
    op.wait_for(DEADLINE, "SmtpRelay Ready=True, readyReplicas 1", || {
        let r = get(cp, "smtprelay", RELAY)?;
        let ready = operator::condition(&r, "Ready")?;
        (ready["status"] == "True" && r["status"]["readyReplicas"] == 1).then_some(r)
    })
}

/// Runs the StatefulSet's current pod, probes it and reports it ready, as a kubelet does.
fn run_pod(cp: &ControlPlane, kubelet: &Kubelet) -> RelayPod {
    let mut pod = kubelet
        .run_statefulset_pod(cp, NS, RELAY)
        .unwrap_or_else(|e| panic!("running the relay pod: {e}"));
    pod.wait_ready(DEADLINE)
        .unwrap_or_else(|e| panic!("readiness probe: {e}"));
    pod.mark_ready(cp).unwrap_or_else(|e| panic!("{e}"));
    pod
}

/// The volumes are laid out and mounted as the kubelet and a container runtime do.
fn check_pod_layout(pod: &mut RelayPod) {
    let users = pod.volume_dir("sasl-users").expect("users volume");
    let data = std::fs::read_link(users.join("..data")).expect("..data symlink");
    assert!(data.to_string_lossy().starts_with("..20"), "{data:?}");
    assert_eq!(
        std::fs::read_link(users.join("app1")).unwrap(),
        std::path::Path::new("..data/app1")
    );
    let mode = std::fs::metadata(users.join("app1")).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o400,
        "the template's defaultMode"
    );
    let sh = |pod: &mut RelayPod, script: &str| {
        pod.exec(&["sh", "-c", script], Duration::from_secs(10))
            .expect("exec in the pod")
    };
    let (status, out) = sh(pod, "test -L /etc/smtp-relay/sasl-users/app1 && hostname");
    assert!(status.success(), "{out}");
    assert_eq!(out.trim(), pod.name(), "the pod's own hostname");
    let (status, out) = sh(pod, "touch /root-is-read-only");
    assert!(!status.success(), "readOnlyRootFilesystem: {out}");
    let (status, out) = sh(pod, "touch /etc/smtp-relay/config/x");
    assert!(
        !status.success(),
        "the config volume is mounted read-only: {out}"
    );
    let (status, out) = sh(
        pod,
        "touch /data/x /tmp/x /run/smtp-relay/x && rm /data/x /tmp/x /run/smtp-relay/x",
    );
    assert!(status.success(), "emptyDirs are writable: {out}");
    let (_, out) = sh(pod, "cat /proc/1/cmdline | tr '\\0' ' '");
    assert!(
        out.starts_with("smtp-relay run --config"),
        "the container command is PID 1: {out}"
    );
    // The StatefulSet's liveness probe (no SMTP) passes in the pod's own layout: the
    // supervisor's heartbeat and the master's pid file are where the probe looks.
    pod.exec_probe("livenessProbe")
        .unwrap_or_else(|e| panic!("liveness probe: {e}"));
}

#[test]
fn relay_pod_runs_for_real_and_follows_secret_rotation() {
    let t = Timer(Instant::now());
    let cp = ControlPlane::start().expect("control plane starts");
    t.step("control plane ready");
    let op = Operator::start(&cp, OperatorOptions::default());
    t.step("chart installed, operator running as its ServiceAccount");
    operator::create_namespace(&cp, NS);

    let sink = Sink::start().expect("sink");
    let mut upstream =
        Upstream::start(&sink, &[(RELAYHOST_LOGIN, RELAYHOST_PW1)]).expect("upstream relay");
    t.step("sink and upstream relay (AUTH required) running");

    apply(&cp, &relayhost_secret(RELAYHOST_PW1));
    apply(&cp, &users_secret(&[("app1", APP1_PW)]));
    apply(&cp, &smtp_relay(upstream.addr.port()));

    let kubelet = Kubelet::new();
    let mut pod = run_pod(&cp, &kubelet);
    let relay = wait_relay_ready(&cp, &op);
    t.step(&format!(
        "pod {} running on {} ({}), probed, marked ready; SmtpRelay Ready",
        pod.name(),
        pod.smtp_addr(),
        pod.uid()
    ));
    assert_eq!(relay["status"]["readyReplicas"], 1);
    let addr = pod.smtp_addr();
    assert_eq!(addr.port(), 25, "the template's port, on the pod IP");
    check_pod_layout(&mut pod);

    // A SASL user may send anywhere (AllowSaslAuthNoDomain), with the image's own client.
    let m = marker("sasl");
    smtp_relay_send(
        addr,
        Some(("app1", APP1_PW)),
        "app1@example.net",
        "someone@elsewhere.org",
        &m,
    )
    .unwrap_or_else(|e| panic!("app1 could not send: {e}"));
    let got = sink
        .wait_for("someone@elsewhere.org", &m, DEADLINE)
        .unwrap_or_else(|e| panic!("{e}\n{}", upstream.log()));
    assert_eq!(got.from, "app1@example.net");
    // A client outside `networks` without a login may not.
    let refused = smtp_relay_send(addr, None, "x@example.net", "someone@elsewhere.org", "no");
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("554")),
        "anonymous relaying must be refused: {refused:?}"
    );
    // A client in `networks` may send to the relay domain without a login.
    let m = marker("net");
    mail::send(
        addr,
        NET_CLIENT,
        None,
        "app@example.net",
        "ops@example.net",
        &m,
    )
    .unwrap_or_else(|e| panic!("network client refused: {e}"));
    sink.wait_for("ops@example.net", &m, DEADLINE)
        .unwrap_or_else(|e| panic!("{e}"));
    t.step("delivered at the sink: SASL user from 127.0.0.1, networks client from 127.0.0.2");

    // Rotation 1: a new SASL user. The operator updates its owned Secret; the config hash (and so
    // the pod) stays; the kubelet swaps the volume; the relay picks it up while running.
    let hash_before = template_hash(&cp).expect("config hash");
    apply(&cp, &users_secret(&[("app1", APP1_PW), ("app2", APP2_PW)]));
    op.wait_for(DEADLINE, "the owned SASL users Secret to hold app2", || {
        get(&cp, "secret", &format!("{RELAY}-sasl-users"))?["data"]
            .get("app2")
            .map(|_| ())
    });
    // Until the kubelet swaps the files, the relay does not know app2.
    let early = smtp_relay_send(
        addr,
        Some(("app2", APP2_PW)),
        "app2@example.net",
        "early@elsewhere.org",
        "early",
    );
    assert!(
        early.as_ref().is_err_and(|e| e.contains("535")),
        "app2 before the volume sync: {early:?}"
    );
    let changed = pod.sync(&cp).expect("sync");
    assert_eq!(changed, ["sasl-users"], "only the users volume changed");
    let m = marker("app2");
    tools::poll_until(DEADLINE, "app2 to be able to send", || {
        smtp_relay_send(
            addr,
            Some(("app2", APP2_PW)),
            "app2@example.net",
            "app2-rcpt@elsewhere.org",
            &m,
        )
        .ok()
    });
    sink.wait_for("app2-rcpt@elsewhere.org", &m, DEADLINE)
        .unwrap_or_else(|e| panic!("{e}"));
    let (_, users) = pod
        .exec(&["smtp-relay", "users"], Duration::from_secs(10))
        .expect("smtp-relay users in the pod");
    assert!(
        users.contains("app1") && users.contains("app2"),
        "the relay's database (in the pod's /data) lists both users: {users}"
    );
    assert_eq!(template_hash(&cp), Some(hash_before.clone()));
    assert!(!pod.deleted(&cp).unwrap(), "no restart for a new user");
    assert!(pod.running());
    t.step("SASL user added: Secret swapped in place, app2 sent, same pod");

    // Rotation 2: the relayhost password. It changes at the upstream first (mail defers
    // meanwhile), then in the referenced Secret; the operator copies it and changes the config
    // hash, the StatefulSet controller replaces the pod, and the kubelet runs the new one.
    upstream
        .set_users(&[(RELAYHOST_LOGIN, RELAYHOST_PW2)])
        .expect("rotate at the upstream");
    apply(&cp, &relayhost_secret(RELAYHOST_PW2));
    op.wait_for(DEADLINE, "a new config hash on the pod template", || {
        template_hash(&cp).filter(|h| *h != hash_before)
    });
    op.wait_for(
        DEADLINE,
        "the StatefulSet controller to delete the old pod",
        || pod.deleted(&cp).ok()?.then_some(()),
    );
    let status = pod.stop().expect("the old pod stops cleanly on SIGTERM");
    assert_eq!(status.code(), Some(0));
    let old_uid = pod.uid().to_string();
    drop(pod);
    let mut pod = run_pod(&cp, &kubelet);
    assert_ne!(pod.uid(), old_uid, "a new Pod object");
    wait_relay_ready(&cp, &op);
    let m = marker("rotated");
    smtp_relay_send(
        addr,
        Some(("app1", APP1_PW)),
        "app1@example.net",
        "rotated@elsewhere.org",
        &m,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    sink.wait_for("rotated@elsewhere.org", &m, DEADLINE)
        .unwrap_or_else(|e| panic!("{e}\n--- pod log\n{}", pod.logs()));
    t.step("relayhost password rotated: pod rolled, mail delivered with the new password");

    // The relayhost goes down; a message is queued; the pod restarts on the same spool and
    // delivers it once the relayhost is back.
    upstream.stop();
    let m = marker("queued");
    mail::send(
        addr,
        NET_CLIENT,
        None,
        "app@example.net",
        "queued@example.net",
        &m,
    )
    .unwrap_or_else(|e| panic!("the relay must accept mail while the relayhost is down: {e}"));
    let spool = pod.volume_dir("spool").expect("spool claim").to_path_buf();
    tools::poll_until(DEADLINE, "the message in the queue", || {
        (mail::queued(&spool) > 0).then_some(())
    });
    let status = pod.stop().expect("SIGTERM with mail queued");
    assert_eq!(status.code(), Some(0));
    assert!(mail::queued(&spool) > 0, "the queue survives the stop");
    assert!(!sink.has(&m));
    upstream.start_again().expect("upstream back");
    drop(pod);
    let pod = run_pod(&cp, &kubelet);
    sink.wait_for("queued@example.net", &m, DEADLINE)
        .unwrap_or_else(|e| panic!("{e}\n--- pod log\n{}", pod.logs()));
    tools::poll_until(DEADLINE, "the queue to empty", || {
        (mail::queued(&spool) == 0).then_some(())
    });
    t.step("message queued while the relayhost was down survived the restart and was delivered");
    assert!(
        !op.logs().contains("Forbidden"),
        "the operator lacked a permission:\n{}",
        op.log_tail(40)
    );
}
