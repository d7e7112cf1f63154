//! Nothing lost (issue 16), on the real node: mail that got its 250 is delivered, through a
//! SIGKILL of every relay container, a node "reboot", and a scale-down whose departing volume
//! is deleted (`whenScaled: Delete`), with the operator restarted in the middle of its drain.
//!
//! 1. Two relay replicas, their relayhost down (nothing listens where it points).
//! 2. N messages, accepted by both pods (sent to each pod's IP in turn), deferred on their
//!    spool volumes.
//! 3. Every relay container killed with SIGKILL (through containerd, as the OOM killer or a
//!    crash would): the kubelet restarts them on the same volumes.
//! 4. The node "reboots": the control plane, the kubelet, containerd and every pod are killed
//!    outright and started again on the same directory (`ControlPlane::restart`).
//! 5. Scale 2 -> 1 with the relayhost still down: the departing pod leaves the Service and
//!    drains, its mail stays, the StatefulSet keeps it; status says so. The operator pod is
//!    deleted in the middle: its successor carries on.
//! 6. The relayhost comes up: all N are delivered, none lost; only then does the StatefulSet
//!    scale to 1 and the departing volume go. Duplicates are counted and reported (Postfix may
//!    deliver a message twice when killed between the relayhost's 250 and its own
//!    bookkeeping).
//! 7. Deletion with `whenDeleted: Delete`: the relayhost down again, M more messages queued,
//!    the SmtpRelay deleted in the foreground, as Argo CD deletes (the garbage collector takes
//!    the children before the owner). Its finalizer holds it and the drain guard its
//!    StatefulSet, pod and volume while the pod drains; the relayhost comes up, the M are
//!    delivered, and only then do the relay and its volume go.
//!
//! Needs root, the tools of `scripts/install-deps.sh` and the images of
//! `scripts/build-images.sh`. One test: there is one node per machine.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use smtp_relay_e2e::mail;
use smtp_relay_e2e::operator;
use smtp_relay_e2e::user_path::{self, NODE_IP};
use smtp_relay_e2e::ControlPlane;

const WAIT: Duration = Duration::from_secs(180);
const NS: &str = "mail";
const RELAY: &str = "durable";
/// Messages accepted while the relayhost is down.
const N: usize = 60;
/// Messages queued when the relay is deleted.
const M: usize = 10;

fn ok<T>(r: Result<T, String>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

fn step(begin: Instant, what: &str) {
    eprintln!(
        "[durability {:>6.1}s] {what}",
        begin.elapsed().as_secs_f64()
    );
}

fn relay(relayhost: SocketAddr) -> String {
    serde_json::json!({
        "apiVersion": "smtprelay.dev/v1alpha1", "kind": "SmtpRelay",
        "metadata": {"name": RELAY, "namespace": NS},
        "spec": {
            "domain": "example.net",
            "networks": [format!("{NODE_IP}/32")],
            "replicas": 2,
            "relayhost": {"host": relayhost.ip().to_string(), "port": relayhost.port()},
            "postconf": user_path::quick_retry_postconf(),
            // The departing replica's volume is deleted once it has drained, not before.
            "storage": {"retention": {"whenScaled": "Delete"}},
        }
    })
    .to_string()
}

/// The relay's pods, by name, when both are Running and Ready.
fn ready_pods(cp: &ControlPlane) -> Option<BTreeMap<String, Value>> {
    let pods: BTreeMap<String, Value> = operator::list_json(cp, NS, "pods")
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null() && user_path::pod_ready(p))
        .map(|p| {
            (
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                p,
            )
        })
        .collect();
    (pods.len() == 2).then_some(pods)
}

/// The queue volume claim of pod `ordinal`.
fn claim(cp: &ControlPlane, ordinal: usize) -> Option<Value> {
    let suffix = format!("-{RELAY}-{ordinal}");
    operator::list_json(cp, NS, "pvc").into_iter().find(|p| {
        p["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.ends_with(&suffix))
    })
}

/// Messages in the spool volume of pod `ordinal` (0 once the volume is gone).
fn queued(cp: &ControlPlane, ordinal: usize) -> usize {
    claim(cp, ordinal)
        .and_then(|pvc| {
            let volume = pvc["spec"]["volumeName"].as_str()?.to_string();
            let pv = cp.kubectl_ok(["get", "pv", &volume, "-o", "json"]);
            let pv: Value = serde_json::from_str(&pv).ok()?;
            Some(mail::queued(&user_path::volume_dir(&pv)?))
        })
        .unwrap_or(0)
}

fn restarts(pod: &Value) -> i64 {
    pod["status"]["containerStatuses"][0]["restartCount"]
        .as_i64()
        .unwrap_or(0)
}

fn sts_replicas(cp: &ControlPlane) -> Option<i64> {
    operator::get_json(cp, NS, "statefulset", RELAY)?["spec"]["replicas"].as_i64()
}

#[test]
fn accepted_mail_survives_sigkill_a_node_reboot_and_a_scale_down() {
    let begin = Instant::now();
    ok(user_path::image_tarballs());
    let mut cp = ControlPlane::with_node().expect("control plane with a node starts");
    ok(user_path::import_images(&cp));
    let release = user_path::install_chart(&cp);
    ok(user_path::wait_operator_ready(&cp, &release, WAIT));
    operator::create_namespace(&cp, NS);
    let relayhost = SocketAddr::from((NODE_IP, mail::free_port_at(NODE_IP)));
    operator::apply(&cp, NS, &relay(relayhost));
    let pods = ok(user_path::wait(
        &cp,
        NS,
        WAIT,
        "two relay pods Ready",
        || ready_pods(&cp),
    ));
    step(begin, "two relay pods Ready, the relayhost down");

    // 2. N messages, each pod taking half, all accepted.
    let ips: Vec<Ipv4Addr> = pods
        .values()
        .map(|p| p["status"]["podIP"].as_str().unwrap().parse().unwrap())
        .collect();
    let markers: Vec<String> = (0..N)
        .map(|i| mail::marker(&format!("durable{i}")))
        .collect();
    for (i, marker) in markers.iter().enumerate() {
        let pod = SocketAddr::from((ips[i % 2], 25));
        let rcpt = format!("durable{i}@example.net");
        user_path::send_from_host(pod, "app@client.test", &rcpt, marker).unwrap_or_else(|e| {
            panic!(
                "message {i} to {pod}: {e}\n{}",
                user_path::diagnose(&cp, NS)
            )
        });
    }
    ok(user_path::wait(
        &cp,
        NS,
        WAIT,
        "every message on a spool",
        || (queued(&cp, 0) + queued(&cp, 1) >= N).then_some(()),
    ));
    step(
        begin,
        &format!(
            "{N} accepted, queued {} + {}",
            queued(&cp, 0),
            queued(&cp, 1)
        ),
    );
    // status.queue says so, from the pods' metrics: what `kubectl get smtpr` shows.
    let queue = ok(user_path::wait(
        &cp,
        NS,
        WAIT,
        "status.queue to count every message, deferred",
        || {
            let relay = operator::get_json(&cp, NS, "smtprelay", RELAY)?;
            let q = &relay["status"]["queue"];
            (q["messages"] == N && q["deferred"] == N && q["pods"].as_array()?.len() == 2)
                .then(|| q.clone())
        },
    ));
    assert!(queue["oldestMessageTime"].is_string(), "{queue}");
    assert_eq!(
        queue["relayhostLogin"], "Unknown",
        "no credentials: {queue}"
    );
    let table = cp.kubectl_ok(["get", "smtpr", "-n", NS]);
    assert!(
        table.lines().next().is_some_and(|h| h.contains("QUEUED"))
            && table
                .lines()
                .nth(1)
                .is_some_and(|r| r.contains(&format!(" {N} "))),
        "kubectl get smtpr shows the queue:\n{table}"
    );
    step(begin, &format!("status.queue: {queue}"));

    // 3. SIGKILL every relay container, as containerd would deliver an OOM kill.
    let socket = cp.containerd_socket().expect("a node");
    for pod in pods.values() {
        let id = pod["status"]["containerStatuses"][0]["containerID"]
            .as_str()
            .and_then(|c| c.strip_prefix("containerd://"))
            .expect("a containerd container")
            .to_string();
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&socket)
            .args(["-n", "k8s.io", "task", "kill", "-a", "-s", "SIGKILL", &id])
            .output()
            .expect("ctr");
        assert!(
            out.status.success(),
            "ctr task kill: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    ok(user_path::wait(
        &cp,
        NS,
        WAIT,
        "both pods restarted and Ready",
        || ready_pods(&cp).filter(|p| p.values().all(|p| restarts(p) >= 1)),
    ));
    step(begin, "every container SIGKILLed, restarted by the kubelet");

    // 4. The node reboots: everything killed outright, started again on the same directory.
    cp.restart().expect("the node comes back");
    ok(user_path::wait(
        &cp,
        NS,
        WAIT,
        "both pods Ready after the reboot",
        || ready_pods(&cp),
    ));
    step(begin, "node rebooted, both pods Ready again");
    assert!(
        queued(&cp, 0) + queued(&cp, 1) >= N,
        "the queues are still there: {} + {}",
        queued(&cp, 0),
        queued(&cp, 1)
    );

    // 5. Scale 2 -> 1 with the relayhost down: the departing pod drains and is kept.
    let held = queued(&cp, 1);
    assert!(held > 0, "the departing replica holds mail");
    operator::patch_relay(&cp, NS, RELAY, r#"{"spec":{"replicas":1}}"#);
    let departing = format!("{RELAY}-1");
    let draining = |cp: &ControlPlane| {
        let relay = operator::get_json(cp, NS, "smtprelay", RELAY)?;
        let c = operator::condition(&relay, "Draining")?;
        let pod = operator::get_json(cp, NS, "pod", &departing)?;
        (c["status"] == "True"
            && pod["metadata"]["annotations"]["smtprelay.dev/drain"] == "true"
            && !user_path::pod_ready(&pod))
        .then(|| c["message"].as_str().unwrap_or_default().to_string())
    };
    let message = ok(user_path::wait(
        &cp,
        NS,
        WAIT,
        "the departing pod out of the Service and draining",
        || draining(&cp),
    ));
    assert!(message.contains(&departing), "{message}");
    step(begin, &format!("scaled to 1: {message}"));

    // The operator is replaced in the middle of the drain; its successor holds the replica.
    let first = ok(user_path::wait_operator_ready(&cp, &release, WAIT));
    cp.kubectl_ok(["delete", "pod", "-n", &release.namespace, &first]);
    let second = ok(user_path::wait(
        &cp,
        &release.namespace,
        WAIT,
        "a new operator pod Ready",
        || user_path::operator_ready(&cp, &release).filter(|p| *p != first),
    ));
    // Two reconciles by the new operator (a draining relay is looked at every 10 s): each saw
    // the drain in the cluster and held the replica.
    let reconciles = ok(user_path::wait(
        &cp,
        &release.namespace,
        WAIT,
        "the new operator reconciling the draining relay",
        || {
            let text = user_path::operator_metrics(&cp, &release).ok()?;
            user_path::metric(&text, "smtp_relay_operator_reconciles_total").filter(|n| *n >= 2.0)
        },
    ));
    assert!(
        draining(&cp).is_some(),
        "still draining after {reconciles} reconciles"
    );
    assert_eq!(
        sts_replicas(&cp),
        Some(2),
        "the StatefulSet keeps the draining replica"
    );
    assert!(claim(&cp, 1).is_some(), "its volume is kept");
    assert!(queued(&cp, 1) > 0, "its mail is still there");
    step(
        begin,
        &format!(
            "operator replaced ({first} -> {second}) mid-drain; {reconciles} reconciles later the replica and its mail are held"
        ),
    );

    // 6. The relayhost comes up: everything delivered, then the departing replica goes.
    let sink = ok(user_path::node_sink(relayhost.port()));
    let delivered = ok(user_path::wait(
        &cp,
        NS,
        WAIT,
        "all messages delivered",
        || {
            let got = sink.messages();
            markers
                .iter()
                .all(|m| got.iter().any(|d| d.text.contains(m.as_str())))
                .then_some(got)
        },
    ));
    let mut copies: BTreeMap<&str, usize> = BTreeMap::new();
    for m in &markers {
        let n = delivered
            .iter()
            .filter(|d| d.text.contains(m.as_str()))
            .count();
        copies.insert(m.as_str(), n);
    }
    let duplicates: Vec<_> = copies.iter().filter(|(_, n)| **n > 1).collect();
    step(
        begin,
        &format!(
            "{N} of {N} delivered after the relayhost came up; {} delivered more than once",
            duplicates.len()
        ),
    );
    if !duplicates.is_empty() {
        eprintln!("duplicates (delivered, not lost): {duplicates:?}");
    }
    let drained = ok(user_path::wait(
        &cp,
        NS,
        WAIT,
        "scaled to 1 once drained, the departing volume deleted",
        || {
            let relay = operator::get_json(&cp, NS, "smtprelay", RELAY)?;
            let c = operator::condition(&relay, "Draining")?;
            (c["reason"] == "Drained"
                && sts_replicas(&cp) == Some(1)
                && operator::get_json(&cp, NS, "pod", &departing).is_none()
                && claim(&cp, 1).is_none())
            .then(|| c["message"].as_str().unwrap_or_default().to_string())
        },
    ));
    step(begin, &format!("drained: {drained}"));
    let events = cp.kubectl_ok(["get", "events", "-n", NS, "-o", "json"]);
    for reason in ["Draining", "Drained"] {
        assert!(
            events.contains(&format!("\"reason\": \"{reason}\"")),
            "an Event {reason}"
        );
    }
    ok(user_path::wait(&cp, NS, WAIT, "the queues empty", || {
        (queued(&cp, 0) + queued(&cp, 1) == 0).then_some(())
    }));
    let flowing = ok(user_path::wait(
        &cp,
        NS,
        WAIT,
        "status.queue empty, with the last delivery's time",
        || {
            let relay = operator::get_json(&cp, NS, "smtprelay", RELAY)?;
            let q = &relay["status"]["queue"];
            // The oldest message's time goes with the last message.
            (q["messages"] == 0
                && q["lastDeliveryTime"].is_string()
                && q.get("oldestMessageTime").is_none())
            .then(|| q.clone())
        },
    ));
    step(begin, &format!("status.queue after delivery: {flowing}"));
    let port = sink.addr.port();
    drop(sink);

    // 7. Deleted with whenDeleted: Delete while mail waits: drained first.
    operator::patch_relay(
        &cp,
        NS,
        RELAY,
        r#"{"spec":{"storage":{"retention":{"whenDeleted":"Delete"}}}}"#,
    );
    ok(user_path::wait(
        &cp,
        NS,
        WAIT,
        "the drain finalizer added",
        || {
            let relay = operator::get_json(&cp, NS, "smtprelay", RELAY)?;
            relay["metadata"]["finalizers"]
                .to_string()
                .contains("smtprelay.dev/drain-queues")
                .then_some(())
        },
    ));
    let pod0 = ok(user_path::wait(
        &cp,
        NS,
        WAIT,
        "the staying pod Ready",
        || operator::get_json(&cp, NS, "pod", &format!("{RELAY}-0")).filter(user_path::pod_ready),
    ));
    let ip: Ipv4Addr = pod0["status"]["podIP"].as_str().unwrap().parse().unwrap();
    let last: Vec<String> = (0..M)
        .map(|i| mail::marker(&format!("deleted{i}")))
        .collect();
    for (i, marker) in last.iter().enumerate() {
        let rcpt = format!("deleted{i}@example.net");
        user_path::send_from_host(SocketAddr::from((ip, 25)), "app@client.test", &rcpt, marker)
            .unwrap_or_else(|e| panic!("message {i}: {e}\n{}", user_path::diagnose(&cp, NS)));
    }
    ok(user_path::wait(
        &cp,
        NS,
        WAIT,
        "the last messages queued",
        || (queued(&cp, 0) >= M).then_some(()),
    ));
    let pod_uid = pod0["metadata"]["uid"].clone();
    cp.kubectl_ok([
        "delete",
        "smtprelay",
        RELAY,
        "-n",
        NS,
        "--cascade=foreground",
        "--wait=false",
    ]);
    let message = ok(user_path::wait(
        &cp,
        NS,
        WAIT,
        "the deletion held while the pod drains",
        || {
            let relay = operator::get_json(&cp, NS, "smtprelay", RELAY)?;
            let c = operator::condition(&relay, "Draining")?;
            let pod = operator::get_json(&cp, NS, "pod", &format!("{RELAY}-0"))?;
            (c["status"] == "True" && !user_path::pod_ready(&pod))
                .then(|| c["message"].as_str().unwrap_or_default().to_string())
        },
    ));
    // The foreground delete is through with what the relay alone owned (its Services), and
    // the pod that holds the mail is the one that took it, still running.
    ok(user_path::wait(
        &cp,
        NS,
        WAIT,
        "the garbage collector done with the relay's own dependents",
        || {
            let relay = operator::get_json(&cp, NS, "smtprelay", RELAY)?;
            let waiting = relay["metadata"]["finalizers"]
                .to_string()
                .contains("foregroundDeletion");
            (!waiting && operator::get_json(&cp, NS, "service", RELAY).is_none()).then_some(())
        },
    ));
    let pod = operator::get_json(&cp, NS, "pod", &format!("{RELAY}-0")).expect("the pod");
    assert_eq!(
        pod["metadata"]["uid"], pod_uid,
        "the same pod, never restarted"
    );
    assert!(
        pod["metadata"]["deletionTimestamp"].is_null(),
        "not being deleted"
    );
    assert!(
        claim(&cp, 0).is_some_and(|c| c["metadata"]["deletionTimestamp"].is_null())
            && queued(&cp, 0) >= M,
        "held with its mail"
    );
    step(begin, &format!("deleted, held: {message}"));
    let sink = ok(user_path::node_sink(port));
    ok(user_path::wait(
        &cp,
        NS,
        WAIT,
        "the last messages delivered",
        || {
            let got = sink.messages();
            last.iter()
                .all(|m| got.iter().any(|d| d.text.contains(m.as_str())))
                .then_some(())
        },
    ));
    ok(user_path::wait(
        &cp,
        NS,
        WAIT,
        "the relay and its volume gone once drained",
        || {
            (operator::get_json(&cp, NS, "smtprelay", RELAY).is_none()
                && operator::get_json(&cp, NS, "statefulset", RELAY).is_none()
                && operator::get_json(&cp, NS, "configmap", &format!("{RELAY}-drain-guard"))
                    .is_none()
                && claim(&cp, 0).is_none())
            .then_some(())
        },
    ));
    step(
        begin,
        &format!("{M} of {M} delivered, then the relay and its volume deleted"),
    );
    drop(sink);
    drop(cp);
}
