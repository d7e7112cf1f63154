//! The user's path, end to end on the real node (issue 8): nothing emulated.
//!
//! 1. A node comes up ([`ControlPlane::with_node`]) and gets both images from their tarballs,
//!    as a pull from the registry would give them.
//! 2. `helm install` (Helm 4) of the previous release (`e2e/previous-release`): its chart, with
//!    its default values but the tag of its own images, built from its sources by
//!    `scripts/build-images.sh --previous`. The operator runs as a pod of its image (the
//!    chart's ServiceAccount, RBAC, probes, security context) and its Deployment becomes Ready.
//! 3. In a namespace labelled Pod Security `baseline`, the chart's unauthenticated example
//!    SmtpRelay, its relayhost an `smtp-sink` on the node IP and its networks holding the
//!    address the relay sees for a client on the host.
//! 4. The relay's StatefulSet pod runs Ready under the kubelet (its security context, startup,
//!    readiness and liveness probes, volumes), its spool claim is Bound to a local volume, the
//!    SmtpRelay says Ready=True.
//! 5. The Service's name resolves at the cluster DNS to its ClusterIP, and a mail sent from the
//!    host to ClusterIP:25 (through kube-proxy) is delivered at the sink.
//! 6. A message queued while the relayhost is down survives the relay pod's deletion: the new
//!    pod finds it on the same volume and delivers it once the relayhost is back.
//! 7. The operator's pod deleted: its Deployment brings a new one, which reconciles the relay
//!    (its `/metrics`, scraped through the chart's metrics Service), leaves the running relay
//!    alone and keeps its status right; mail still goes through.
//! 8. The upgrade, as the README tells it, with mail queued on two replicas (the relayhost
//!    down): `helm upgrade` (Helm 4) to this checkout's chart, the relay image held, rolls the
//!    operator out and restarts no relay (same pods, no restart, the StatefulSet's template
//!    revision unchanged); the new operator brings the CRD to its version.
//!    Its pods keep sharing the node's users, which `UserNamespaced=False` says.
//! 9. Then the relay image of this checkout (`helm upgrade` with the defaults): each relay
//!    rolls one pod at a time, the highest ordinal first, the next only once it is Ready with
//!    the new image, and in its own user namespace now (issue 32); with the relayhost back,
//!    every queued message is delivered from the same spools. From the node, the relay's
//!    processes run as the pod's unprivileged UIDs, their capabilities held in the pod's user
//!    namespace (root in it cannot give a file to a node UID outside the pod's range); the
//!    status says `UserNamespaced=True`, and Pod Security `restricted` names only the
//!    capabilities, not root, while `baseline` admits the pods. `kubectl smtp-relay status`
//!    (the project's kubectl plugin, issue 30) shows both replicas and their queues, and
//!    `kubectl smtp-relay queue` lists the six messages they hold, holds and releases one,
//!    deletes a seventh (only with `--yes` from a script), retries and flushes;
//!    `kubectl smtp-relay send` follows a test message to its deferral, and once the
//!    relayhost is back another to its 250. What the previous release's relay delivered named
//!    its client (this host) in a Received line; what this checkout's delivers does not.
//! 10. The relay's NetworkPolicy, enforced by the node's kube-network-policies: the operator's
//!     pod reads the relay pods' metrics through it; a pod of a namespace it names reaches
//!     SMTP, one of another namespace does not until its address is named, and all do once it
//!     is turned off.
//! 11. The relay deleted with its namespace; then README.md's quick start, its marked blocks run
//!     as written (issue 39: docs that are run): a client pod, a relay trusting it, a test mail
//!     shown delivered and found at the sink, docs/operations.md's queue inspection on it,
//!     everything removed.
//! 12. The chart's namespaced mode (`watchNamespace`, issue 26): its RBAC a Role in one
//!     namespace, where a relay runs to Ready and is read; a relay elsewhere is left alone.
//! 13. `helm uninstall` with Helm 4 removes the operator and keeps the CRD.
//!
//! Needs root, the tools of `scripts/install-deps.sh` and the images of
//! `scripts/build-images.sh`. One test: there is one node per machine.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use smtp_relay_e2e::mail::{self, smtp_ready};
use smtp_relay_e2e::operator;
use smtp_relay_e2e::plugin::Plugin;
use smtp_relay_e2e::user_path::{self, NODE_IP};
use smtp_relay_e2e::{doc_blocks, host_perl, tools, ControlPlane};

/// Generous: the machine has two cores, shared with builds.
const WAIT: Duration = Duration::from_secs(180);
const NS: &str = "mail";
const RCPT: &str = "someone@example.net";
const FROM: &str = "app@client.test";
/// The recipient of the message `kubectl smtp-relay queue delete` deletes.
const DOOMED: &str = "doomed@example.net";

struct Phases {
    begin: Instant,
    last: Instant,
}

impl Phases {
    fn done(&mut self, what: &str) {
        eprintln!(
            "[user_path] {what}: {:.1}s (total {:.1}s)",
            self.last.elapsed().as_secs_f64(),
            self.begin.elapsed().as_secs_f64()
        );
        self.last = Instant::now();
    }
}

fn ok<T>(r: Result<T, String>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one scenario, step by step: its steps share their state"
)]
fn user_path_chart_operator_pod_relay_pod_and_mail_through_the_service() {
    let mut phases = Phases {
        begin: Instant::now(),
        last: Instant::now(),
    };
    // Before the node: a missing image fails at once.
    ok(user_path::image_tarballs());
    let previous = ok(user_path::previous_release());
    let cp = ControlPlane::with_node().expect("control plane with a node starts");
    phases.done("node Ready, DNS answering");
    ok(user_path::import_images(&cp));
    for tar in &previous.tarballs {
        cp.import_image(tar)
            .expect("the previous release's image imports");
    }
    phases.done("images of this checkout and of the previous release imported");

    // 2. The previous release, installed with Helm 4: its chart, default values but its own
    //    images' tag (upgraded to this checkout's in steps 8 and 9).
    let previous_dir = tempfile::tempdir().expect("a directory for the previous chart");
    let previous_chart = ok(user_path::previous_chart(previous_dir.path()));
    let previous_images = [
        format!("image.tag={}", previous.version),
        format!("relayImage.tag={}", previous.version),
    ];
    let previous_images: Vec<&str> = previous_images.iter().map(String::as_str).collect();
    let release = ok(user_path::helm4_install(
        &cp,
        &previous_chart,
        &previous_images,
    ));
    operator::wait_crd_served(&cp);
    let deployment =
        operator::get_json(&cp, &release.namespace, "deployment", &release.release).unwrap();
    let template = &deployment["spec"]["template"]["spec"];
    assert_eq!(
        template["containers"][0]["image"],
        format!(
            "ghcr.io/smtp-relay-operator/smtp-relay-operator:{}",
            previous.version
        )
    );
    let operator_pod = ok(user_path::wait_operator_ready(&cp, &release, WAIT));
    let pod = operator::get_json(&cp, &release.namespace, "pod", &operator_pod).unwrap();
    assert_eq!(pod["spec"]["serviceAccountName"], release.service_account);
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    phases.done("chart installed, operator pod Ready");

    // 3. The relay, its relayhost a sink on the node IP.
    operator::create_namespace(&cp, NS);
    let sink_port = mail::free_port_at(NODE_IP);
    let sink_addr = SocketAddr::from((NODE_IP, sink_port));
    let sink = ok(user_path::node_sink(sink_port));
    // A client on the host connects to the ClusterIP from the node IP (the Service route is on
    // the bridge), and kube-proxy does not masquerade traffic from inside the cluster CIDR.
    let client_network = format!("{NODE_IP}/32");
    let (manifest, relay) = ok(user_path::example_relay(sink_addr, &client_network, true));
    operator::apply(&cp, NS, &manifest);

    // 4. Its pod Ready under the kubelet, the SmtpRelay Ready.
    let pod = ok(user_path::wait_relay_ready(&cp, NS, &relay, WAIT));
    let container = &pod["spec"]["containers"][0];
    assert_eq!(
        container["image"],
        format!(
            "ghcr.io/smtp-relay-operator/smtp-relay:{}",
            previous.version
        ),
        "the relay runs the previous release's relay image"
    );
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert!(container[probe]["exec"].is_object(), "{probe} is set");
    }
    let status = &pod["status"]["containerStatuses"][0];
    assert_eq!(status["restartCount"], 0, "{status}");
    let (pvc, pv) = ok(user_path::relay_claim(&cp, NS, &relay));
    let spool = user_path::volume_dir(&pv).expect("a hostPath volume");
    assert!(
        spool.starts_with(cp.dir()),
        "{} is a local volume of the node",
        spool.display()
    );
    assert_eq!(pv["spec"]["claimRef"]["name"], pvc["metadata"]["name"]);
    let relay_uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
    phases.done("relay pod Ready, claim Bound, SmtpRelay Ready");

    // 5. DNS, then a mail through the Service.
    let ip = ok(user_path::cluster_ip(&cp, NS, &relay));
    let resolved = ok(user_path::wait(
        &cp,
        NS,
        WAIT,
        "the Service's name at the cluster DNS",
        || {
            user_path::resolve_service(NS, &relay)
                .ok()
                .filter(|a| !a.is_empty())
        },
    ));
    assert_eq!(resolved, vec![ip], "{relay}.{NS}.svc.cluster.local");
    let service = SocketAddr::from((ip, 25));
    // kube-proxy programs the endpoint shortly after the pod turns Ready.
    ok(user_path::wait(
        &cp,
        NS,
        WAIT,
        "SMTP at the ClusterIP",
        || smtp_ready(service).then_some(()),
    ));
    let first = mail::marker("user-path");
    // A refusal (e.g. the client's address outside `networks`) fails at once, not after WAIT.
    user_path::send_from_host(service, FROM, RCPT, &first)
        .unwrap_or_else(|e| panic!("{e}\n{}", user_path::diagnose(&cp, NS)));
    let got = sink
        .wait_for(RCPT, &first, WAIT)
        .unwrap_or_else(|e| panic!("{e}\n{}", user_path::diagnose(&cp, NS)));
    // The relay's Received header names the client as it saw it: the node IP.
    assert!(
        got.text.contains(&format!("[{NODE_IP}]")),
        "the relay saw the client as {NODE_IP}:\n{}",
        got.headers()
    );
    phases.done("DNS answered, mail delivered through the Service");

    // 6. The relayhost goes down; a message waits in the spool, on the volume.
    drop(sink);
    let queued = mail::marker("user-path-queued");
    ok(user_path::send_from_host(service, FROM, RCPT, &queued));
    let pod_name = format!("{relay}-0");
    ok(user_path::wait(
        &cp,
        NS,
        WAIT,
        "the message deferred in the spool volume",
        || {
            (mail::queued(&spool) >= 1
                && user_path::pod_logs(&cp, NS, &pod_name).contains("status=deferred"))
            .then_some(())
        },
    ));
    phases.done("relayhost down, message deferred on the volume");
    cp.kubectl_ok(["delete", "pod", "-n", NS, &pod_name, "--wait=false"]);
    let pod = ok(user_path::wait(
        &cp,
        NS,
        WAIT,
        "a new relay pod Ready",
        || {
            user_path::relay_ready(&cp, NS, &relay)
                .filter(|p| p["metadata"]["uid"] != relay_uid.as_str())
        },
    ));
    let (pvc_after, _) = ok(user_path::relay_claim(&cp, NS, &relay));
    assert_eq!(
        pvc_after["spec"]["volumeName"], pvc["spec"]["volumeName"],
        "the new pod has the same volume"
    );
    phases.done("relay pod deleted, new pod Ready on the same volume");
    let sink = ok(user_path::node_sink(sink_port));
    sink.wait_for(RCPT, &queued, WAIT).unwrap_or_else(|e| {
        panic!(
            "{e}\nqueue: {}\n{}",
            mail::spool_report(&spool),
            user_path::diagnose(&cp, NS)
        )
    });
    phases.done("relayhost back, the queued message delivered by the new pod");

    // 7. The operator's pod goes away; the relay is left alone.
    let relay_uid = pod["metadata"]["uid"].clone();
    let sts_generation = |cp: &ControlPlane| -> Value {
        operator::get_json(cp, NS, "statefulset", &relay).unwrap()["metadata"]["generation"].clone()
    };
    let generation = sts_generation(&cp);
    cp.kubectl_ok([
        "delete",
        "pod",
        "-n",
        &release.namespace,
        &operator_pod,
        "--wait=false",
    ]);
    let new_operator = ok(user_path::wait(
        &cp,
        &release.namespace,
        WAIT,
        "a new operator pod Ready",
        || user_path::operator_ready(&cp, &release).filter(|p| *p != operator_pod),
    ));
    // The new pod reconciled the relay (a controller reconciles everything it finds when it
    // starts), without a failure: its counters, scraped through the chart's metrics Service
    // (which now has only the new pod behind it).
    let metrics = ok(user_path::wait_reconciled(&cp, &release, WAIT));
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("smtp_relay_operator_reconcile_failures_total{")),
        "no failed reconcile:\n{metrics}"
    );
    phases.done("operator pod deleted, new one Ready and reconciling");
    let pod = ok(user_path::wait_relay_ready(&cp, NS, &relay, WAIT));
    assert_eq!(
        pod["metadata"]["uid"], relay_uid,
        "the relay pod kept running"
    );
    assert_eq!(pod["status"]["containerStatuses"][0]["restartCount"], 0);
    assert_eq!(
        sts_generation(&cp),
        generation,
        "the StatefulSet is unchanged"
    );
    let after = mail::marker("user-path-after-operator");
    ok(user_path::send_from_host(service, FROM, RCPT, &after));
    let delivered = ok(sink.wait_for(RCPT, &after, WAIT));
    // The previous release's relay image names its client (this host, through the Service)
    // in its Received line; this checkout's does not (phase 9).
    assert!(
        delivered.text.contains(&format!("[{NODE_IP}])")),
        "{}",
        delivered.text
    );
    phases.done("relay untouched, status Ready, mail delivered");

    // 8. The upgrade of the operator alone, the relay image held (README, "Upgrading"), with
    //    mail queued on two replicas while the relayhost is down.
    operator::patch_relay(&cp, NS, &relay, r#"{"spec":{"replicas":2}}"#);
    let before = ok(user_path::wait(
        &cp,
        NS,
        WAIT,
        "two relay pods Ready",
        || user_path::relay_pods_ready(&cp, NS, &relay, 2),
    ));
    let spools: Vec<_> = (0..2)
        .map(|i| {
            let (_, pv) = ok(user_path::pod_claim(&cp, NS, &format!("{relay}-{i}")));
            user_path::volume_dir(&pv).expect("a hostPath volume")
        })
        .collect();
    drop(sink);
    let held: Vec<String> = (0..6)
        .map(|i| {
            let m = mail::marker(&format!("user-path-upgrade-{i}"));
            ok(user_path::send_from_host(service, FROM, RCPT, &m));
            m
        })
        .collect();
    ok(user_path::wait(
        &cp,
        NS,
        WAIT,
        "the six messages queued on the two spool volumes",
        || (spools.iter().map(|s| mail::queued(s)).sum::<usize>() == held.len()).then_some(()),
    ));
    let queued_on: Vec<usize> = spools.iter().map(|s| mail::queued(s)).collect();
    eprintln!("[user_path] queued before the upgrade, per pod: {queued_on:?}");
    let revision = |cp: &ControlPlane| -> Value {
        operator::get_json(cp, NS, "statefulset", &relay).unwrap()["status"]["updateRevision"]
            .clone()
    };
    let revision_before = revision(&cp);
    let uids: Vec<Value> = before
        .iter()
        .map(|p| p["metadata"]["uid"].clone())
        .collect();
    phases.done("two replicas, six messages queued, relayhost down");

    let held_relay_image = format!("relayImage.tag={}", previous.version);
    ok(user_path::helm4_upgrade(&cp, &["--set", &held_relay_image]));
    ok(user_path::kubectl(
        &cp,
        &[
            "rollout",
            "status",
            "deployment",
            &release.release,
            "-n",
            &release.namespace,
            "--timeout=180s",
        ],
    ));
    let upgraded_operator = ok(user_path::wait_operator_ready(&cp, &release, WAIT));
    assert_ne!(
        upgraded_operator, new_operator,
        "the upgrade rolled the operator out"
    );
    let pod = operator::get_json(&cp, &release.namespace, "pod", &upgraded_operator).unwrap();
    assert_eq!(
        pod["spec"]["containers"][0]["image"],
        format!(
            "ghcr.io/smtp-relay-operator/smtp-relay-operator:{}",
            env!("CARGO_PKG_VERSION")
        )
    );
    // The upgraded operator brought the previous chart's CRD up to its own version (Helm
    // never upgrades a chart's crds/), with the RBAC this chart grants for it.
    let crd_version = ok(user_path::wait(
        &cp,
        &release.namespace,
        WAIT,
        "the operator to upgrade the CRD",
        || {
            let crd = operator::get_json(&cp, "default", "crd", "smtprelays.smtprelay.dev")?;
            let version = crd["metadata"]["annotations"]["smtprelay.dev/operator-version"]
                .as_str()?
                .to_string();
            (version == env!("CARGO_PKG_VERSION")).then_some(version)
        },
    ));
    // The new operator reconciled the relay ...
    ok(user_path::wait_reconciled(&cp, &release, WAIT));
    // ... and restarted nothing: the same pods, no restart, the same template revision.
    let after = ok(user_path::wait(
        &cp,
        NS,
        WAIT,
        "two relay pods Ready",
        || user_path::relay_pods_ready(&cp, NS, &relay, 2),
    ));
    for (pod, uid) in after.iter().zip(&uids) {
        assert_eq!(
            &pod["metadata"]["uid"], uid,
            "{} kept running through the operator's upgrade",
            pod["metadata"]["name"]
        );
        assert_eq!(pod["status"]["containerStatuses"][0]["restartCount"], 0);
    }
    assert_eq!(
        revision(&cp),
        revision_before,
        "the operator's upgrade changed no relay pod template"
    );
    // Pods of the previous operator keep sharing the node's users, and the status says so.
    let shares = ok(user_path::wait(
        &cp,
        NS,
        WAIT,
        "UserNamespaced=False for pods that predate user namespaces",
        || {
            user_path::relay_condition(&cp, NS, &relay, "UserNamespaced")
                .filter(|c| c["status"] == "False")
        },
    ));
    assert_eq!(shares["reason"], "SharesNodeUsers", "{shares}");
    assert!(
        shares["message"]
            .as_str()
            .is_some_and(|m| m.contains("next rollout")),
        "{shares}"
    );
    let logs = user_path::pod_logs(&cp, &release.namespace, &upgraded_operator);
    assert!(!logs.contains("Forbidden"), "operator log:\n{logs}");
    eprintln!("[user_path] CRD at operator version {crd_version}");
    phases.done("helm4 upgrade of the operator: no relay restarted, CRD upgraded");

    // 9. The relay image of this checkout: the relay rolls one pod at a time, the highest
    //    ordinal (the canary) first; the other waits until it is Ready with the new image.
    //    `--reset-values`: given no values, Helm would reuse the last ones, the hold included.
    ok(user_path::helm4_upgrade(&cp, &["--reset-values"]));
    let new_image = format!(
        "ghcr.io/smtp-relay-operator/smtp-relay:{}",
        env!("CARGO_PKG_VERSION")
    );
    let replaced = |p: &Value, i: usize| {
        p["metadata"]["uid"] != uids[i] || !p["metadata"]["deletionTimestamp"].is_null()
    };
    let runs_new = |p: &Value| {
        p["spec"]["containers"][0]["image"] == new_image.as_str() && user_path::pod_ready(p)
    };
    let mut canary_first = None;
    let rolled = ok(user_path::wait(
        &cp,
        NS,
        WAIT,
        "both relay pods replaced by pods of the new relay image",
        || {
            let first = operator::get_json(&cp, NS, "pod", &format!("{relay}-0"));
            let canary = operator::get_json(&cp, NS, "pod", &format!("{relay}-1"));
            if canary_first.is_none() && first.as_ref().is_none_or(|p| replaced(p, 0)) {
                canary_first = Some(canary.as_ref().is_some_and(runs_new));
            }
            let pods = user_path::relay_pods_ready(&cp, NS, &relay, 2)?;
            pods.iter().all(runs_new).then_some(pods)
        },
    ));
    assert_eq!(
        canary_first,
        Some(true),
        "{relay}-0 was replaced only once {relay}-1 ran the new image, Ready"
    );
    assert_ne!(revision(&cp), revision_before);
    for pod in &rolled {
        assert_eq!(pod["status"]["containerStatuses"][0]["restartCount"], 0);
    }
    phases.done("relay image upgraded, one pod at a time, canary first");
    the_relay_pods_root_is_nobody_on_the_node(&cp, &relay, &rolled);
    phases.done(
        "user namespaces: unprivileged UIDs on the node, restricted names only the capabilities",
    );
    the_kubectl_plugin_reports_the_relay(&cp, &relay, service);
    let deferred_test = the_kubectl_plugin_sends_a_test_message(&cp, &relay, false);
    phases
        .done("kubectl smtp-relay: status, queue list, hold, release, delete, retry, flush, send");
    let sink = ok(user_path::node_sink(sink_port));
    ok(sink.wait_for_subject(RCPT, &deferred_test, WAIT));
    for m in &held {
        sink.wait_for(RCPT, m, WAIT).unwrap_or_else(|e| {
            panic!(
                "{e}\nqueues: {}\n{}",
                spools
                    .iter()
                    .map(|s| mail::spool_report(s))
                    .collect::<Vec<_>>()
                    .join("\n"),
                user_path::diagnose(&cp, NS)
            )
        });
    }
    let upgraded = mail::marker("user-path-after-upgrade");
    ok(user_path::send_from_host(service, FROM, RCPT, &upgraded));
    let delivered = ok(sink.wait_for(RCPT, &upgraded, WAIT));
    // Issue 27: by default no Received line names the client.
    assert!(
        !delivered.text.contains(&format!("[{NODE_IP}]"))
            && delivered.text.contains("\nReceived: by "),
        "{}",
        delivered.text
    );
    let sent_test = the_kubectl_plugin_sends_a_test_message(&cp, &relay, true);
    ok(sink.wait_for_subject(RCPT, &sent_test, WAIT));
    assert!(
        !sink
            .messages()
            .iter()
            .any(|m| m.rcpts.iter().any(|r| r.eq_ignore_ascii_case(DOOMED))),
        "the message deleted with kubectl smtp-relay queue delete never arrived"
    );
    phases.done("relayhost back: the six messages queued across both upgrades delivered");

    // 10. The relay's NetworkPolicy, enforced by the node: the operator's pod read the new
    //     pods' queues through it, and SMTP comes only from whom it admits.
    the_network_policy_admits_whom_it_says(&cp, &relay, service);
    phases.done("the NetworkPolicy admits the operator, the namespace and the CIDR it names");

    // 11. The relay deleted (its queue empty) with its namespace; then README.md's quick start,
    //     its marked blocks run as written, on the operator this checkout installed.
    cp.kubectl_ok(["delete", "smtprelay", "-n", NS, &relay, "--timeout=120s"]);
    cp.kubectl_ok(["delete", "namespace", NS, "--timeout=120s"]);
    the_quick_start_delivers_as_written(&cp, &sink, sink_port);
    phases.done("README's quick start, as written: a test mail delivered, everything removed");

    // 12. The chart's namespaced mode (issue 26): its RBAC a Role in one namespace.
    the_namespaced_mode_runs_a_relay_there_alone(&cp, &release, &sink, sink_addr);
    phases.done("namespaced mode: a relay of its namespace Ready and read, another left alone");

    // 13. `helm uninstall` (Helm 4): the operator and its RBAC go, the CRD stays (Helm never
    //    deletes a chart's CRDs: that would delete every SmtpRelay of the cluster).
    ok(user_path::helm4(
        &cp,
        &[
            "uninstall",
            &release.release,
            "--namespace",
            &release.namespace,
            "--wait",
            "--timeout",
            "120s",
        ],
    ));
    assert!(
        cp.kubectl([
            "get",
            "deployment",
            &release.release,
            "-n",
            &release.namespace
        ])
        .status
        .code()
            != Some(0),
        "the operator's Deployment is gone"
    );
    let cluster_rbac = cp.kubectl_ok(["get", "clusterroles,clusterrolebindings", "-o", "name"]);
    assert!(
        !cluster_rbac.contains(&release.release),
        "its ClusterRoles and bindings are gone:\n{cluster_rbac}"
    );
    assert!(
        cp.kubectl(["get", "crd", "smtprelays.smtprelay.dev"])
            .status
            .success(),
        "the CRD stays"
    );
    phases.done("relay deleted, helm4 uninstall: the operator gone, the CRD kept");
    drop(sink);
    drop(cp);
    phases.done("node stopped");
}

/// Phase 12: `helm upgrade --set watchNamespace=team` turns the operator's ClusterRole for
/// relays into a Role in `team`. The operator, rolled out with it, runs a relay of `team` to
/// Ready (StatefulSet, Secrets, Services, NetworkPolicy, pods read, metrics scraped through the
/// policy) and deletes it; a relay in `other` gets nothing: no children, no status. The relay of
/// `team` speaks the PROXY protocol on port 2525, and its NetworkPolicy admits that port only
/// from `proxyProtocolSourceRanges` (issue 26): the pod named there gets the banner after its
/// PROXY header, another pod's connection times out.
fn the_namespaced_mode_runs_a_relay_there_alone(
    cp: &ControlPlane,
    release: &operator::ChartRelease,
    sink: &mail::Sink,
    relayhost: SocketAddr,
) {
    let (team, other) = ("team", "other");
    // No Pod Security label on team: its perl pods mount the host's /usr (hostPath), which
    // baseline forbids; the relay runs there too.
    cp.kubectl_ok(["create", "namespace", team]);
    operator::create_namespace(cp, other);
    let balancer = ok(host_perl::run_pod(cp, team, "balancer", "", "sleep 3600"));
    ok(host_perl::run_pod(cp, team, "stranger", "", "sleep 3600"));
    let watch = format!("watchNamespace={team}");
    ok(user_path::helm4_upgrade(
        cp,
        &["--reset-values", "--set", &watch],
    ));
    ok(user_path::wait_operator_ready(cp, release, WAIT));
    let roles = cp.kubectl_ok(["get", "roles", "-n", team, "-o", "name"]);
    assert!(
        roles.contains(&release.release),
        "the chart grants a Role in {team}: {roles}"
    );
    let (manifest, relay) = ok(user_path::example_relay(relayhost, "10.0.0.0/24", false));
    operator::apply(cp, other, &manifest);
    let mut behind_a_balancer: Value =
        serde_json::from_str(&manifest).unwrap_or_else(|e| panic!("the relay's JSON: {e}"));
    behind_a_balancer["spec"]["service"]["proxyProtocol"] = true.into();
    behind_a_balancer["spec"]["service"]["proxyProtocolSourceRanges"] =
        serde_json::json!([format!("{balancer}/32")]);
    // A staging relay (issue 27): whatever the recipients, mail goes to one mailbox; and one
    // message a minute per client.
    behind_a_balancer["spec"]["sandbox"] =
        serde_json::json!({"mode": "CatchAll", "mailbox": "qa-inbox@example.net"});
    behind_a_balancer["spec"]["rateLimits"] = serde_json::json!({"perClient": {"messages": 1}});
    operator::apply(cp, team, &behind_a_balancer.to_string());
    ok(user_path::wait_relay_ready(cp, team, &relay, WAIT));
    ok(user_path::wait(
        cp,
        team,
        WAIT,
        "status.queue read from the pod",
        || {
            let r = operator::get_json(cp, team, "smtprelay", &relay)?;
            (!r["status"]["queue"]["pods"].as_array()?.is_empty()).then_some(())
        },
    ));
    let ignored = operator::get_json(cp, other, "smtprelay", &relay)
        .unwrap_or_else(|| panic!("{other}/{relay} exists"));
    // The API server's schema defaults give every SmtpRelay a status of zeros; the operator's
    // would hold conditions.
    assert!(
        ignored["status"]["conditions"].is_null() && ignored["metadata"]["finalizers"].is_null(),
        "a relay outside {team} is left alone: {}",
        ignored["status"]
    );
    assert!(
        operator::get_json(cp, other, "statefulset", &relay).is_none(),
        "no StatefulSet for a relay outside {team}"
    );
    let pod_ip = operator::get_json(cp, team, "pod", &format!("{relay}-0"))
        .and_then(|p| p["status"]["podIP"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("{team}/{relay}-0 has an IP"));
    let proxied =
        |client: &str| host_perl::exec(cp, team, client, PROXY_THEN_FIRST_LINE, &[&pod_ip, "2525"]);
    ok(user_path::wait(
        cp,
        team,
        WAIT,
        "the balancer admitted on 2525",
        || proxied("balancer").ok().filter(|b| b.starts_with("220")),
    ));
    ok(user_path::wait(
        cp,
        team,
        WAIT,
        "a stranger refused on 2525",
        // Dropped at the network: a timeout, not a refusal by the pod.
        || {
            proxied("stranger")
                .err()
                .filter(|e| e.contains("timeout") && !e.contains("refused"))
        },
    ));
    a_sandboxed_relay_mails_only_its_mailbox(cp, team, &relay, sink, &pod_ip);
    a_pod_that_cannot_mount_its_spool_is_named(cp, team, &relay);
    for ns in [team, other] {
        cp.kubectl_ok(["delete", "smtprelay", "-n", ns, &relay, "--timeout=120s"]);
    }
}

/// Phase 12, continued (issue 27): the relay of `team` is a CatchAll sandbox, and `kubectl get`
/// says so; a message the balancer relays for a client of `networks` (its PROXY header says
/// 10.0.0.5) to a customer reaches the sink addressed to the sandbox's mailbox alone, the
/// customer named in its `X-Sandbox-Recipient` header; the client's second message goes over
/// its limit of one a minute.
fn a_sandboxed_relay_mails_only_its_mailbox(
    cp: &ControlPlane,
    ns: &str,
    relay: &str,
    sink: &mail::Sink,
    pod_ip: &str,
) {
    let listed = cp.kubectl_ok(["get", "smtpr", "-n", ns, relay]);
    assert!(
        listed.lines().next().is_some_and(|h| h.contains("SANDBOX"))
            && listed.contains("CatchAll qa-inbox@example.net"),
        "kubectl get shows the sandbox:\n{listed}"
    );
    let subject = mail::marker("sandboxed");
    let answer = ok(host_perl::exec(
        cp,
        ns,
        "balancer",
        PROXY_THEN_SEND,
        &[pod_ip, "2525", "customer@example.net", &subject],
    ));
    assert!(answer.starts_with("250"), "end of DATA: {answer}");
    let got = sink
        .wait_for_subject("qa-inbox@example.net", &subject, WAIT)
        .unwrap_or_else(|e| panic!("the sandbox's mailbox got the message: {e}"));
    assert_eq!(got.rcpts, ["qa-inbox@example.net"]);
    assert!(
        got.text
            .contains("X-Sandbox-Recipient: <customer@example.net>"),
        "{}",
        got.text
    );
    assert!(
        !sink.delivered_to("customer@example.net"),
        "the customer got nothing"
    );
    // The client's second message within the minute: told to retry later, by the limit on
    // the address its PROXY header gave.
    let limited = host_perl::exec(
        cp,
        ns,
        "balancer",
        PROXY_THEN_SEND,
        &[pod_ip, "2525", "customer@example.net", "over the limit"],
    );
    assert!(
        limited
            .as_ref()
            .is_err_and(|e| e.contains("450 4.7.1 Error: too much mail from 10.0.0.5")),
        "the second message in a minute: {limited:?}"
    );
}

/// One message through a PROXY-protocol port for a client the header says is 10.0.0.5:
/// `ARGV`: address, port, recipient, subject; prints the reply to the end of DATA.
const PROXY_THEN_SEND: &str = r#"$s = IO::Socket::INET->new(PeerAddr => $ARGV[0], PeerPort => $ARGV[1], Timeout => 3) or die "connect: timeout $@\n"; alarm 20; print $s "PROXY TCP4 10.0.0.5 192.0.2.20 40000 25\r\n"; sub reply { my $l; do { $l = <$s>; defined $l or die "closed\n" } while ($l =~ /^\d\d\d-/); $l } reply(); for $c ("EHLO balancer.test", "MAIL FROM:<app\@example.net>", "RCPT TO:<$ARGV[2]>", "DATA") { print $s "$c\r\n"; $l = reply(); $l =~ /^[23]/ or die "$c: $l" } print $s "Subject: $ARGV[3]\r\n\r\n$ARGV[3]\r\n.\r\n"; print reply(); print $s "QUIT\r\n""#;

/// Phase 12, continued: the spool directory of the relay's pod gone from the node (a disk
/// lost, a volume the node cannot mount), the pod that replaces it stays ContainerCreating,
/// where only its Events say why: status names the kubelet's FailedMount, read from them
/// through the namespaced mode's Role; with the directory back, the next pod starts on it.
fn a_pod_that_cannot_mount_its_spool_is_named(cp: &ControlPlane, ns: &str, relay: &str) {
    let pod = format!("{relay}-0");
    let (_, pv) = ok(user_path::pod_claim(cp, ns, &pod));
    let dir =
        user_path::volume_dir(&pv).unwrap_or_else(|| panic!("{pod} has a hostPath volume: {pv}"));
    let away = dir.with_extension("away");
    std::fs::rename(&dir, &away).unwrap_or_else(|e| panic!("moving {}: {e}", dir.display()));
    cp.kubectl_ok(["delete", "pod", "-n", ns, &pod, "--timeout=120s"]);
    let message = ok(user_path::wait(
        cp,
        ns,
        WAIT,
        "Ready=False FailedMount, from the new pod's Events",
        || {
            let c = user_path::relay_condition(cp, ns, relay, "Ready")?;
            (c["reason"] == "FailedMount")
                .then(|| c["message"].as_str().unwrap_or_default().to_string())
        },
    ));
    eprintln!("[user_path] Ready of a relay whose pod cannot mount its spool: {message}");
    assert!(
        message.starts_with(&format!(
            "pod {pod} does not start: FailedMount (MountVolume.SetUp failed for volume"
        )) && message.contains("is not a directory"),
        "{message}"
    );
    std::fs::rename(&away, &dir).unwrap_or_else(|e| panic!("restoring {}: {e}", dir.display()));
    // The kubelet retries the mount with a growing backoff: a new pod mounts at once.
    cp.kubectl_ok(["delete", "pod", "-n", ns, &pod, "--wait=false"]);
    ok(user_path::wait_relay_ready(cp, ns, relay, WAIT));
}

/// Like [`host_perl::READ_FIRST_LINE`], after a PROXY protocol v1 header, as a load balancer
/// sends one: the first line the relay's PROXY port answers.
const PROXY_THEN_FIRST_LINE: &str = r#"$s = IO::Socket::INET->new(PeerAddr => $ARGV[0], PeerPort => $ARGV[1], Timeout => 3) or die "connect: timeout $@\n"; alarm 10; print $s "PROXY TCP4 192.0.2.10 192.0.2.20 40000 25\r\n"; print scalar <$s>"#;

/// Phase 11: README.md's quick start, the blocks marked `<!-- run: quickstart -->` in order, in
/// one bash with `set -eu`, as a user would paste them: its relayhost is the sink, its relay
/// image the chart's default (this checkout's). Before its last block (which removes what it
/// made), the blocks of docs/operations.md marked `<!-- run: operations -->` (the queue in
/// status, Postfix's queue tools in the pod) on the relay it made. The mail reached the sink,
/// and the script removed what it made.
fn the_quick_start_delivers_as_written(cp: &ControlPlane, sink: &mail::Sink, sink_port: u16) {
    let marked = |page: &str, name: &str| {
        let text = std::fs::read_to_string(tools::workspace_root().join(page)).unwrap_or_default();
        let blocks = doc_blocks::marked_blocks(&text, name)
            .unwrap_or_else(|e| panic!("{page}'s {name} blocks: {e}"));
        assert!(!blocks.is_empty(), "{page} has blocks marked {name}");
        blocks
            .into_iter()
            .map(|b| {
                assert_eq!(b.lang, "sh", "{page} line {}: a shell block", b.line);
                format!("# {page} line {}\n{}\n", b.line, b.code)
            })
            .collect::<Vec<_>>()
    };
    let mut quick_start = marked("README.md", "quickstart");
    assert!(quick_start.len() >= 3, "README.md's quick start is marked");
    let cleanup = quick_start.pop().unwrap_or_default();
    let mut script = String::from("set -eu\n");
    script.extend(quick_start);
    script.extend(marked("docs/operations.md", "operations"));
    script.push_str(&cleanup);
    let to = "quickstart@example.net";
    let path = tools::path_with_dir_of(&tools::bin("kubectl"));
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env("PATH", path)
        .env("KUBECONFIG", cp.kubeconfig())
        .env("DOMAIN", "example.net")
        .env("RELAYHOST", NODE_IP.to_string())
        .env("RELAYHOST_PORT", sink_port.to_string())
        .env("TO", to)
        .output()
        .unwrap_or_else(|e| panic!("bash: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "README.md's quick start failed ({}):\n{}\n{}\n{}",
        out.status,
        user_path::tail(&stdout, 40),
        user_path::tail(&String::from_utf8_lossy(&out.stderr), 40),
        user_path::diagnose(cp, NS)
    );
    assert!(
        stdout.contains("status=sent"),
        "it showed the delivery:\n{stdout}"
    );
    assert!(
        stdout.contains("Mail queue is empty"),
        "postqueue -p listed the relay's queue, delivered:\n{stdout}"
    );
    assert!(
        sink.messages()
            .iter()
            .any(|m| m.rcpts.iter().any(|r| r.eq_ignore_ascii_case(to))),
        "the quick start's mail reached the relayhost"
    );
    assert!(
        !cp.kubectl(["get", "namespace", NS]).status.success(),
        "the quick start removed its namespace"
    );
}

/// Phase 9, after the rollout of the relay image (issue 32): the pods run with `hostUsers:
/// false`; the relay reports its root's node UID, which the status shows; from the node, every
/// process of each relay container runs as a UID of its pod's range, in a user namespace that
/// is not the node's, the master (root in the pod) with exactly the relay's capabilities; root
/// in the pod, CHOWN notwithstanding, cannot give a file to a node UID outside that range. Pod
/// Security: `restricted` refuses the pod for its capabilities alone (and for root too without
/// the user namespace); `baseline` admits it.
fn the_relay_pods_root_is_nobody_on_the_node(cp: &ControlPlane, relay: &str, pods: &[Value]) {
    use smtp_relay_e2e::node_processes::{self, capability_bits};
    use smtp_relay_operator::steps::build::statefulset::CAPABILITIES;

    let isolated = ok(user_path::wait(
        cp,
        NS,
        WAIT,
        "UserNamespaced=True once the replicas reported their root's node UID",
        || {
            user_path::relay_condition(cp, NS, relay, "UserNamespaced")
                .filter(|c| c["status"] == "True")
        },
    ));
    let smtpr = operator::get_json(cp, NS, "smtprelay", relay).unwrap_or_default();
    let reported: Vec<(String, u64)> = smtpr["status"]["queue"]["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["pod"].as_str()?.to_string(), p["rootNodeUid"].as_u64()?)))
        .collect();
    assert_eq!(reported.len(), pods.len(), "{isolated}\n{reported:?}");
    let own_namespace = node_processes::own_user_namespace();
    let caps = capability_bits(&CAPABILITIES);
    for pod in pods {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        assert_eq!(pod["spec"]["hostUsers"], false, "{name}");
        let root = reported
            .iter()
            .find(|(p, _)| p == name)
            .map(|(_, uid)| *uid)
            .unwrap_or_else(|| panic!("{name} reported its root's node UID: {reported:?}"));
        // The kubelet gives each pod 65536 UIDs, none of them the node's first 65536.
        assert!(root >= 65_536, "{name}: root is node UID {root}");
        let id = pod["status"]["containerStatuses"][0]["containerID"]
            .as_str()
            .and_then(|id| id.strip_prefix("containerd://"))
            .unwrap_or_else(|| panic!("{name}'s container ID"));
        let processes = node_processes::of_container(id);
        assert!(
            processes.iter().any(|p| p.name == "master"),
            "{name}: Postfix's master among {processes:?}"
        );
        for p in &processes {
            assert!(
                (root..root + 65_536).contains(&u64::from(p.uid)),
                "{name}: {p:?} runs as a UID of the pod's range from {root}"
            );
            assert_ne!(p.user_namespace, own_namespace, "{name}: {p:?}");
        }
        let master = processes.iter().find(|p| p.name == "master");
        assert_eq!(
            master.map(|m| (u64::from(m.uid), m.effective_capabilities)),
            Some((root, caps)),
            "{name}: the master is root in the pod, with the relay's capabilities only"
        );
        // Those capabilities hold in the pod's namespace only: CHOWN to a node UID outside the
        // pod's range fails, while one inside it works.
        let probe = format!(
            "f={RUN_DIR}/userns-probe; touch $f && chown 100 $f && ! chown 65536 $f 2>/dev/null; r=$?; rm -f $f; exit $r",
            RUN_DIR = smtp_relay_operator::floor::contract::RUN_DIR
        );
        let exec = cp.kubectl([
            "exec", "-n", NS, name, "-c", "relay", "--", "sh", "-c", &probe,
        ]);
        assert!(
            exec.status.success(),
            "{name}: root in the pod gave a file to UID 100 but not to 65536: {}",
            String::from_utf8_lossy(&exec.stderr)
        );
    }

    pod_security_names_only_the_capabilities(cp, relay);
}

/// Pod Security, asked of the API server with a pod of the relay's template (see
/// [`the_relay_pods_root_is_nobody_on_the_node`]).
fn pod_security_names_only_the_capabilities(cp: &ControlPlane, relay: &str) {
    let sts = operator::get_json(cp, NS, "statefulset", relay).unwrap_or_default();
    let mut template = sts["spec"]["template"]["spec"].clone();
    // The spool comes from the claim template; a pod of its own gets an emptyDir.
    if let Some(volumes) = template["volumes"].as_array_mut() {
        volumes.push(serde_json::json!({
            "name": smtp_relay_operator::floor::contract::SPOOL_VOLUME,
            "emptyDir": {},
        }));
    }
    let dry_run = |level: &str, spec: &Value| {
        let ns = format!("psa-{level}");
        if operator::get_json(cp, "default", "namespace", &ns).is_none() {
            cp.kubectl_ok(["create", "namespace", &ns]);
            cp.kubectl_ok([
                "label",
                "namespace",
                &ns,
                &format!("pod-security.kubernetes.io/enforce={level}"),
            ]);
        }
        let pod = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "relay-pod-security", "namespace": ns},
            "spec": spec,
        });
        let out = cp.kubectl_stdin(["create", "--dry-run=server", "-f", "-"], &pod.to_string());
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let mut sharing = template.clone();
    if let Some(spec) = sharing.as_object_mut() {
        spec.remove("hostUsers");
    }
    let (admitted, refusal) = dry_run("baseline", &template);
    assert!(admitted, "baseline admits the relay pod: {refusal}");
    let (admitted, refusal) = dry_run("restricted", &template);
    assert!(!admitted, "restricted refuses the relay pod");
    assert!(
        refusal.contains("unrestricted capabilities")
            && !refusal.contains("runAsNonRoot")
            && !refusal.contains("runAsUser"),
        "in a user namespace, restricted refuses only the capabilities: {refusal}"
    );
    let (_, refusal) = dry_run("restricted", &sharing);
    assert!(
        refusal.contains("runAsNonRoot") && refusal.contains("runAsUser=0"),
        "sharing the node's users, restricted refuses root as well: {refusal}"
    );
    for level in ["baseline", "restricted"] {
        cp.kubectl_ok([
            "delete",
            "namespace",
            &format!("psa-{level}"),
            "--wait=false",
        ]);
    }
}

/// Phase 9, continued (issue 30): `kubectl smtp-relay status`, found by kubectl on PATH as
/// users install it, shows the relay Ready with both replicas and their queues, as text and as
/// JSON; `queue list` the six messages held on them, each with its pod and Postfix's reason.
fn the_kubectl_plugin_reports_the_relay(cp: &ControlPlane, relay: &str, service: SocketAddr) {
    let plugin = Plugin::new(cp, NS);
    let run = |args: &[&str]| plugin.run(args);
    let listed = |args: &[&str]| plugin.listed(relay, args);
    let text = run(&["status", relay]);
    eprintln!("[user_path] kubectl smtp-relay status {relay} -n {NS}:\n{text}");
    assert!(
        text.starts_with(&format!(
            "SmtpRelay {NS}/{relay}: Ready=True (RelayReady), 2/2 replicas ready"
        )),
        "{text}"
    );
    for i in 0..2 {
        assert!(text.contains(&format!("\n  {relay}-{i}  ")), "{text}");
    }
    let json: Value =
        serde_json::from_str(&run(&["status", relay, "-o", "json"])).unwrap_or_default();
    let pods = json[0]["pods"].as_array().cloned().unwrap_or_default();
    assert_eq!(pods.len(), 2, "{json}");
    assert!(
        pods.iter().all(|p| p["rootNodeUid"].as_u64() > Some(0)),
        "{json}"
    );

    // The six messages held while the relayhost is down, from each pod's own Postfix.
    let text = run(&["queue", "list", relay]);
    eprintln!("[user_path] kubectl smtp-relay queue list {relay} -n {NS}:\n{text}");
    assert!(text.ends_with("6 message(s)\n"), "{text}");
    // Each replica retries its deferred mail now and then: a message in a delivery attempt is
    // in the active queue for that moment, so wait for all six to be back in deferred.
    let messages = ok(user_path::wait(
        cp,
        NS,
        WAIT,
        "the six messages in the deferred queue",
        || Some(listed(&["--deferred"])).filter(|m| m.len() == 6),
    ));
    for m in &messages {
        assert!(
            m["pod"] == format!("{relay}-0").as_str() || m["pod"] == format!("{relay}-1").as_str(),
            "{m}"
        );
        assert_eq!(m["recipients"][0]["address"], RCPT, "{m}");
        assert!(
            m["recipients"][0]["delay_reason"]
                .as_str()
                .is_some_and(|r| r.contains("Connection refused")),
            "{m}"
        );
    }
    assert_eq!(
        run(&["queue", "list", relay, "--recipient", "nobody@"]),
        "no message queued\n"
    );

    the_kubectl_plugin_acts_on_the_queue(&plugin, relay, service, &messages);
}

/// Phase 9, continued: `kubectl smtp-relay queue hold|release|delete|retry|flush` on the six
/// held messages (`messages`, as `queue list` gave them) and a seventh.
fn the_kubectl_plugin_acts_on_the_queue(
    plugin: &Plugin<'_>,
    relay: &str,
    service: SocketAddr,
    messages: &[Value],
) {
    let (run, output) = (
        |args: &[&str]| plugin.run(args),
        |args: &[&str]| plugin.output(args),
    );
    let listed = |args: &[&str]| plugin.listed(relay, args);
    // Hold one of them by its ID, on the replica that has it; release it.
    let (id, pod) = (
        messages[0]["queue_id"].as_str().unwrap_or_default(),
        messages[0]["pod"].as_str().unwrap_or_default(),
    );
    assert_eq!(
        run(&["queue", "hold", relay, id]),
        format!("{pod}: 1 message(s) put on hold\n")
    );
    let held = listed(&["--hold"]);
    assert_eq!(
        held.iter().map(|m| &m["queue_id"]).collect::<Vec<_>>(),
        [id],
        "{held:?}"
    );
    assert_eq!(
        run(&["queue", "release", relay, "--hold"]),
        format!("{pod}: 1 message(s) released from hold\n")
    );
    assert!(listed(&["--hold"]).is_empty());

    // A seventh message, deleted: not without --yes from a script, then with it.
    let doomed = mail::marker("user-path-doomed");
    ok(user_path::send_from_host(service, FROM, DOOMED, &doomed));
    ok(user_path::wait(
        plugin.cp,
        NS,
        WAIT,
        "the seventh message queued",
        || (listed(&["--recipient", DOOMED]).len() == 1).then_some(()),
    ));
    let refused = output(&["queue", "delete", relay, "--recipient", DOOMED]);
    assert!(
        !refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("add --yes"),
        "{refused:?}"
    );
    assert_eq!(listed(&[]).len(), 7, "nothing deleted without --yes");
    let deleted = run(&["queue", "delete", relay, "--recipient", DOOMED, "--yes"]);
    assert!(deleted.ends_with(": 1 message(s) deleted\n"), "{deleted}");
    assert_eq!(listed(&[]).len(), 6);
    assert!(
        !output(&["queue", "delete", relay, "--yes"])
            .status
            .success(),
        "no IDs, filter or --all: refused"
    );

    // Retry and flush reach every replica (the relayhost is still down: the mail stays).
    let retried = run(&["queue", "retry", relay, "--deferred"]);
    assert!(retried.contains("scheduled for delivery now"), "{retried}");
    let flushed = run(&["queue", "flush", relay]);
    assert_eq!(
        flushed,
        format!("{relay}-0: deferred mail flushed\n{relay}-1: deferred mail flushed\n")
    );
}

/// Phase 9, continued: `kubectl smtp-relay send` queues a test message in a replica's own
/// Postfix and follows it through that pod's log: with the relayhost down (`up` false) to
/// its deferral, exiting non-zero and saying why; with it up, to the relayhost's 250. The
/// message's marker, for the sink.
fn the_kubectl_plugin_sends_a_test_message(cp: &ControlPlane, relay: &str, up: bool) -> String {
    let plugin = Plugin::new(cp, NS);
    let marker = mail::marker(if up {
        "plugin-send"
    } else {
        "plugin-send-deferred"
    });
    let pod = format!("{relay}-{}", u8::from(!up));
    let out = plugin.output(&[
        "send",
        relay,
        "--to",
        RCPT,
        "--subject",
        &marker,
        "--pod",
        &pod,
    ]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    eprintln!(
        "[user_path] kubectl smtp-relay send {relay} --to {RCPT} --pod {pod}:\n{stdout}{stderr}"
    );
    assert!(
        stdout.starts_with(&format!(
            "{pod}: queued by sendmail: Message-ID <kubectl-smtp-relay."
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{pod}: accepted by Postfix: queue ID ")),
        "{stdout}"
    );
    if up {
        assert!(out.status.success(), "{stdout}{stderr}");
        assert!(
            stdout.contains(&format!("{pod}: to=<{RCPT}>: sent (2.0.0) relay=")),
            "{stdout}"
        );
        assert!(
            stdout.ends_with("delivered: every recipient accepted by the next server\n"),
            "{stdout}"
        );
    } else {
        assert!(!out.status.success(), "{stdout}{stderr}");
        assert!(
            stdout.contains(&format!(
                "{pod}: to=<{RCPT}>: deferred (4.4.1) relay=none: "
            )),
            "{stdout}"
        );
        assert!(
            stderr.contains(&format!("is not delivered: <{RCPT}> deferred")),
            "{stderr}"
        );
    }
    marker
}

/// Phase 10: the operator's pod (in its own namespace) read both new pods' queues after the
/// policy was there; a pod of `apps` (named in `smtpFromNamespaces`) gets the SMTP banner
/// through the Service, one of `elsewhere` does not (its connection times out: the network, not
/// Postfix) until `smtpFromCidrs` names its address, and every pod does once the policy is
/// turned off.
fn the_network_policy_admits_whom_it_says(cp: &ControlPlane, relay: &str, service: SocketAddr) {
    let policy = operator::get_json(cp, NS, "networkpolicy", relay)
        .unwrap_or_else(|| panic!("the operator keeps the NetworkPolicy {NS}/{relay}"));
    let Some(hash) = operator::get_json(cp, NS, "smtprelay", relay)
        .and_then(|r| r["status"]["configHash"].as_str().map(str::to_string))
    else {
        panic!("{relay} has a config hash");
    };
    ok(user_path::wait(
        cp,
        NS,
        WAIT,
        "status.queue read from both new pods",
        || {
            let r = operator::get_json(cp, NS, "smtprelay", relay)?;
            let pods = r["status"]["queue"]["pods"].as_array()?.clone();
            (pods.len() == 2 && pods.iter().all(|p| p["configRevision"] == hash.as_str()))
                .then_some(())
        },
    ));
    perl_client(cp, "apps");
    let elsewhere = perl_client(cp, "elsewhere");
    let banner = |ns: &str| smtp_banner(cp, ns, service);
    let wait_for = |what: &str, ns: &str, admitted: bool| {
        ok(user_path::wait(cp, NS, WAIT, what, || {
            (banner(ns).is_ok() == admitted).then_some(())
        }))
    };
    operator::patch_relay(
        cp,
        NS,
        relay,
        r#"{"spec":{"networkPolicy":{"smtpFromNamespaces":["apps"]}}}"#,
    );
    wait_for("a pod of apps admitted", "apps", true);
    wait_for("a pod of elsewhere refused", "elsewhere", false);
    match banner("elsewhere") {
        Err(refused) => assert!(
            refused.contains("timeout"),
            "refused at the network: {refused}\n{policy}"
        ),
        Ok(banner) => panic!("a pod of elsewhere got {banner:?}\n{policy}"),
    }
    let admitted = ok(banner("apps"));
    assert!(admitted.starts_with("220 "), "{admitted}");
    operator::patch_relay(
        cp,
        NS,
        relay,
        &format!(r#"{{"spec":{{"networkPolicy":{{"smtpFromCidrs":["{elsewhere}/32"]}}}}}}"#),
    );
    wait_for(
        "a pod of elsewhere admitted by its address",
        "elsewhere",
        true,
    );
    operator::patch_relay(
        cp,
        NS,
        relay,
        r#"{"spec":{"networkPolicy":{"enabled":false,"smtpFromCidrs":null,"smtpFromNamespaces":null}}}"#,
    );
    ok(user_path::wait(
        cp,
        NS,
        WAIT,
        "the NetworkPolicy deleted",
        || {
            operator::get_json(cp, NS, "networkpolicy", relay)
                .is_none()
                .then_some(())
        },
    ));
    wait_for("a pod of apps admitted", "apps", true);
    for ns in ["apps", "elsewhere"] {
        cp.kubectl_ok(["delete", "namespace", ns, "--wait=false"]);
    }
}

/// A pod `client` in namespace `ns` (created here) for [`smtp_banner`]
/// ([`host_perl::run_pod`]); returns its IP once it runs.
fn perl_client(cp: &ControlPlane, ns: &str) -> String {
    cp.kubectl_ok(["create", "namespace", ns]);
    ok(host_perl::run_pod(cp, ns, "client", "", "sleep 3600"))
}

/// The SMTP banner the relay's Service answers to the client pod of `ns`, or why not (a 3 s
/// connect timeout: `timeout`).
fn smtp_banner(cp: &ControlPlane, ns: &str, service: SocketAddr) -> Result<String, String> {
    host_perl::exec(
        cp,
        ns,
        "client",
        host_perl::READ_FIRST_LINE,
        &[&service.ip().to_string(), &service.port().to_string()],
    )
}
