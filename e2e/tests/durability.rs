//! Nothing lost (issue 16), on the real node: mail that got its 250 is delivered, through a
//! SIGKILL of every relay container, a node "reboot", and a scale-down whose departing volume
//! is deleted (`whenScaled: Delete`), with the operator restarted in the middle of its drain.
//!
//! 1. Two relay replicas, their relayhost down (nothing listens where it points).
//!    Then a `postconf` value both judges accept but smtpd cannot use (a transport table that
//!    is not in the image: every RCPT would get `451 4.3.0`) reaches the canary alone:
//!    its Postfix refuses it in the self-check and it keeps the last good configuration, the
//!    other replica never sees it (same pod, same template), both still accept mail, status
//!    names the field and Postfix's words and one Warning Event says so; reverting the spec
//!    moves the canary back and the other pod is never touched. Then a table that only the
//!    canary's volume holds: the canary passes, the other replica refuses and keeps serving
//!    its last good configuration, and status names it (read from every replica's metrics).
//! 2. N messages, accepted by both pods (sent to each pod's IP in turn), deferred on their
//!    spool volumes.
//! 3. Every relay container killed with SIGKILL (through containerd, as the OOM killer or a
//!    crash would): the kubelet restarts them on the same volumes.
//! 4. The node "reboots": the control plane, the kubelet, containerd and every pod are killed
//!    outright and started again on the same directory (`ControlPlane::restart`).
//! 5. `kubectl scale` 2 -> 1 (the scale subresource) with the relayhost still down: the
//!    departing pod leaves the Service and drains, its mail stays, the StatefulSet keeps it;
//!    status says so. The operator pod is deleted in the middle: its successor carries on.
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
//! 8. A full spool refuses cleanly (issue 40): a relay with default settings on a small volume
//!    that really fills (class `local-sized`: a tmpfs of the claim's size), its relayhost
//!    down, takes mail until smtpd answers 452 (retry later) with its reserve still free;
//!    status and a Warning Event name the replica, every accepted message is on the spool, and
//!    once the relayhost is up all are delivered, status clears and new mail is accepted.
//!
//! Each step is a named phase (`-- --list`), run in order over one node, one chart install and
//! one relay, set up by the first phase and torn down after the last (`e2e/src/phases.rs`):
//! after a failed phase the rest are skipped, as each builds on the one before.
//!
//! Needs root, the tools of `scripts/install-deps.sh` and the images of
//! `scripts/build-images.sh`. One environment for every phase: there is one node per machine.

// Tests may panic: `harness = false`, so clippy does not see the phases as tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::Value;
use smtp_relay_e2e::mail::{self, Sink};
use smtp_relay_e2e::operator::{self, ChartRelease};
use smtp_relay_e2e::phases::{self, Order, Phase};
use smtp_relay_e2e::user_path::{self, NODE_IP};
use smtp_relay_e2e::ControlPlane;

const WAIT: Duration = Duration::from_secs(180);
const NS: &str = "mail";
const RELAY: &str = "durable";
/// Messages accepted while the relayhost is down.
const N: usize = 60;
/// Messages queued when the relay is deleted.
const M: usize = 10;

fn main() -> std::process::ExitCode {
    let phases: [Phase<Env>; 14] = [
        (
            "two_replicas_ready_with_the_relayhost_down",
            two_replicas_ready_with_the_relayhost_down,
        ),
        (
            "a_value_postfix_refuses_stops_at_the_first_pod",
            a_value_postfix_refuses_stops_at_the_first_pod,
        ),
        (
            "a_replica_refusing_what_the_canary_proved_is_named",
            a_replica_refusing_what_the_canary_proved_is_named,
        ),
        (
            "accepted_mail_is_queued_on_both_spools_and_counted_in_status",
            accepted_mail_is_queued_on_both_spools_and_counted_in_status,
        ),
        (
            "sigkilled_relay_containers_restart_on_their_volumes",
            sigkilled_relay_containers_restart_on_their_volumes,
        ),
        (
            "the_queues_survive_a_node_reboot",
            the_queues_survive_a_node_reboot,
        ),
        (
            "scale_down_drains_the_departing_replica_out_of_the_service",
            scale_down_drains_the_departing_replica_out_of_the_service,
        ),
        (
            "a_new_operator_keeps_holding_the_draining_replica_and_its_mail",
            a_new_operator_keeps_holding_the_draining_replica_and_its_mail,
        ),
        (
            "every_message_is_delivered_once_the_relayhost_is_up",
            every_message_is_delivered_once_the_relayhost_is_up,
        ),
        (
            "the_drained_replica_and_its_volume_go_only_after_delivery",
            the_drained_replica_and_its_volume_go_only_after_delivery,
        ),
        (
            "a_foreground_deletion_is_held_while_the_pod_drains_its_mail",
            a_foreground_deletion_is_held_while_the_pod_drains_its_mail,
        ),
        (
            "the_relay_and_its_volume_go_once_the_last_mail_is_delivered",
            the_relay_and_its_volume_go_once_the_last_mail_is_delivered,
        ),
        (
            "a_full_spool_answers_452_and_keeps_what_it_accepted",
            a_full_spool_answers_452_and_keeps_what_it_accepted,
        ),
        (
            "the_full_spool_delivers_and_takes_mail_again",
            the_full_spool_delivers_and_takes_mail_again,
        ),
    ];
    phases::run(Order::Sequential, Env::start, &phases)
}

/// The node with the chart's operator, and what each phase hands on to the next. Fields drop
/// in order: the sink before the node.
struct Env {
    begin: Instant,
    release: ChartRelease,
    /// Where the relays' relayhost is: nothing listens there but during
    /// [`every_message_is_delivered_once_the_relayhost_is_up`],
    /// [`the_relay_and_its_volume_go_once_the_last_mail_is_delivered`] and
    /// [`the_full_spool_delivers_and_takes_mail_again`].
    relayhost: SocketAddr,
    /// The two relay pods as they were first Ready, by name.
    pods: BTreeMap<String, Value>,
    /// The N messages accepted while the relayhost was down.
    markers: Vec<String>,
    /// The sink listening at the relayhost's address, while it is up.
    sink: Option<Sink>,
    /// The M messages queued before the deletion.
    last: Vec<String>,
    /// The messages the small relay accepted until its spool was nearly full, and its pod's
    /// address.
    filled: Vec<String>,
    small_ip: Option<Ipv4Addr>,
    cp: ControlPlane,
}

impl Env {
    fn start() -> Env {
        let begin = Instant::now();
        ok(user_path::image_tarballs());
        let cp = ControlPlane::with_node().expect("control plane with a node starts");
        ok(user_path::import_images(&cp));
        let release = user_path::install_chart(&cp);
        ok(user_path::wait_operator_ready(&cp, &release, WAIT));
        operator::create_namespace(&cp, NS);
        let relayhost = SocketAddr::from((NODE_IP, mail::free_port_at(NODE_IP)));
        step(
            begin,
            "node up, images imported, chart installed, operator Ready",
        );
        Env {
            begin,
            release,
            relayhost,
            pods: BTreeMap::new(),
            markers: Vec::new(),
            sink: None,
            last: Vec::new(),
            filled: Vec::new(),
            small_ip: None,
            cp,
        }
    }

    fn step(&self, what: &str) {
        step(self.begin, what);
    }

    fn wait<T>(&self, what: &str, f: impl FnMut() -> Option<T>) -> T {
        ok(user_path::wait(&self.cp, NS, WAIT, what, f))
    }

    /// Waits until `sink` holds every message of `markers`, and returns all it holds.
    fn wait_delivered(&self, sink: &Sink, what: &str, markers: &[String]) -> Vec<mail::Dumped> {
        self.wait(what, || {
            let got = sink.messages();
            markers
                .iter()
                .all(|m| got.iter().any(|d| d.text.contains(m.as_str())))
                .then_some(got)
        })
    }
}

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

/// The pod that leaves on the scale 2 -> 1.
fn departing() -> String {
    format!("{RELAY}-1")
}

/// The Draining condition's message, while it is True and the departing pod, marked for
/// draining, is out of the Service (not Ready).
fn draining(cp: &ControlPlane) -> Option<String> {
    let relay = operator::get_json(cp, NS, "smtprelay", RELAY)?;
    let c = operator::condition(&relay, "Draining")?;
    let pod = operator::get_json(cp, NS, "pod", &departing())?;
    (c["status"] == "True"
        && pod["metadata"]["annotations"]["smtprelay.dev/drain"] == "true"
        && !user_path::pod_ready(&pod))
    .then(|| c["message"].as_str().unwrap_or_default().to_string())
}

/// 1. Two relay replicas, their relayhost down (nothing listens where it points).
///    kstatus, as Flux and `kubectl wait` users read it, says InProgress until the operator
///    has seen both pods Ready, then Current.
fn two_replicas_ready_with_the_relayhost_down(env: &mut Env) {
    let cp = &env.cp;
    operator::apply(cp, NS, &relay(env.relayhost));
    let mut seen = BTreeMap::new();
    let current = env.wait("kstatus Current, with both pods Ready", || {
        let relay = operator::get_json(cp, NS, "smtprelay", RELAY)?;
        let pods = ready_pods(cp);
        let (status, message) = ok(operator::kstatus(&relay));
        *seen.entry(status.clone()).or_insert(0) += 1;
        assert!(
            status == "InProgress" || (status == "Current" && pods.is_some()),
            "kstatus {status} ({message}) with {} pods Ready",
            pods.as_ref().map_or(0, BTreeMap::len)
        );
        (status == "Current").then_some(pods?)
    });
    env.pods = current;
    env.step(&format!(
        "two relay pods Ready, the relayhost down; kstatus readings on the way: {seen:?}"
    ));
}

/// The reply to RCPT TO:<to> from the host to `pod` (banner, EHLO, MAIL FROM, RCPT, then
/// RSET and QUIT: nothing is queued).
fn rcpt_reply(pod: SocketAddr, to: &str) -> Result<String, String> {
    use std::io::{BufRead, BufReader, Write};
    let stream = std::net::TcpStream::connect_timeout(&pod, Duration::from_secs(10))
        .map_err(|e| format!("{pod}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    // The last line of a reply (`250 ...`, not `250-...`).
    let mut reply = || -> Result<String, String> {
        loop {
            let mut line = String::new();
            let n = reader
                .read_line(&mut line)
                .map_err(|e| format!("{pod}: {e}"))?;
            if n == 0 {
                return Err(format!("{pod} closed the connection"));
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(line.trim_end().to_string());
            }
        }
    };
    reply()?;
    let mut last = String::new();
    for command in [
        "EHLO client.test",
        "MAIL FROM:<app@client.test>",
        &format!("RCPT TO:<{to}>"),
    ] {
        writer
            .write_all(format!("{command}\r\n").as_bytes())
            .map_err(|e| e.to_string())?;
        last = reply()?;
    }
    let _ = writer.write_all(b"RSET\r\nQUIT\r\n");
    Ok(last)
}

/// The StatefulSet's partition: the pods below it keep their configuration.
fn partition(cp: &ControlPlane) -> Option<i64> {
    operator::get_json(cp, NS, "statefulset", RELAY)?["spec"]["updateStrategy"]["rollingUpdate"]
        ["partition"]
        .as_i64()
}

/// The relay's condition `type_`, when present.
/// Waits until every pod runs configuration `hash`, proven, and the partition is open.
fn wait_proven_everywhere(env: &Env, hash: &str) {
    let cp = &env.cp;
    env.wait("the reverted configuration proven on every pod", || {
        let proven = relay_condition(cp, "ConfigProven")?;
        let pods = ready_pods(cp)?;
        (proven["status"] == "True"
            && pods.values().all(|p| operator::config_hash(p) == hash)
            && partition(cp) == Some(0))
        .then_some(())
    });
}

fn relay_condition(cp: &ControlPlane, type_: &str) -> Option<Value> {
    user_path::relay_condition(cp, NS, RELAY, type_)
}

/// 1, continued. A value smtpd cannot use stops at the canary; reverting it moves the canary back.
fn a_value_postfix_refuses_stops_at_the_first_pod(env: &mut Env) {
    let cp = &env.cp;
    let first = env.pods["durable-0"].clone();
    let before = operator::config_hash(&first).to_string();
    // On the old operator, every RCPT of every pod at once would be answered 451 4.3.0.
    operator::patch_relay(cp, NS, RELAY, operator::UNUSABLE_TABLE);
    let refused = env.wait("the canary's Postfix to refuse the configuration", || {
        relay_condition(cp, "ConfigProven").filter(|c| c["status"] == "False")
    });
    let message = refused["message"].as_str().unwrap_or_default();
    assert_eq!(refused["reason"], "ConfigRefused", "{refused}");
    // kstatus: Failed, with the refusal's words.
    let (status, said) = ok(operator::kstatus(
        &operator::get_json(cp, NS, "smtprelay", RELAY).unwrap(),
    ));
    assert_eq!(status, "Failed", "kstatus: {said}");
    assert!(
        said.contains("spec.postconf.transport_maps"),
        "kstatus: {said}"
    );
    for text in [
        "durable-1",
        "spec.postconf.transport_maps",
        "hash:/etc/postfix/missing",
    ] {
        assert!(message.contains(text), "status names {text}: {message}");
    }
    let ready = relay_condition(cp, "Ready").unwrap();
    let stalled = relay_condition(cp, "Stalled").unwrap();
    assert_eq!(
        (&ready["status"], &ready["reason"], &stalled["status"]),
        (
            &Value::from("False"),
            &Value::from("ConfigRefused"),
            &Value::from("True")
        ),
        "Ready {ready}, Stalled {stalled}"
    );
    env.step(&format!("refused: {message}"));
    // The other replica never saw it: the same pod on the same template, held by the partition.
    assert_eq!(partition(cp), Some(1));
    let pods = env.wait("both pods Ready", || ready_pods(cp));
    let zero = &pods["durable-0"];
    assert_eq!(
        zero["metadata"]["uid"], first["metadata"]["uid"],
        "durable-0 untouched"
    );
    assert_eq!(operator::config_hash(zero), before);
    assert_eq!(restarts(zero), 0);
    assert_ne!(
        operator::config_hash(&pods["durable-1"]),
        before,
        "the canary has the new template"
    );
    // Both still accept mail: the canary runs its last good configuration.
    for (name, pod) in &pods {
        let ip: Ipv4Addr = pod["status"]["podIP"].as_str().unwrap().parse().unwrap();
        let reply = ok(rcpt_reply(SocketAddr::from((ip, 25)), "probe@example.net"));
        assert!(reply.starts_with("250"), "{name} answers RCPT with {reply}");
    }
    let warnings = cp.kubectl_ok([
        "get",
        "events",
        "-n",
        NS,
        "--field-selector",
        "type=Warning,reason=ConfigRefused",
        "-o",
        "name",
    ]);
    assert_eq!(warnings.lines().count(), 1, "one Warning Event: {warnings}");
    // Reverting the spec moves the canary back; durable-0 is never touched.
    operator::patch_relay(cp, NS, RELAY, operator::UNUSABLE_TABLE_REVERTED);
    wait_proven_everywhere(env, &before);
    env.wait("kstatus Current again", || {
        let relay = operator::get_json(cp, NS, "smtprelay", RELAY)?;
        (ok(operator::kstatus(&relay)).0 == "Current").then_some(())
    });
    let pods = env.wait("both pods Ready", || ready_pods(cp));
    assert_eq!(
        pods["durable-0"]["metadata"]["uid"],
        first["metadata"]["uid"]
    );
    assert_eq!(restarts(&pods["durable-0"]), 0);
    env.pods = pods;
    env.step("reverted: the canary runs the proven configuration again, durable-0 untouched");
}

/// A table only the canary's volume holds: the canary passes the configuration, the other
/// replica then takes it and its Postfix refuses it (something of that pod's own). It keeps
/// serving its last good configuration, and status names it, from what the queue observer
/// reads of every replica, not only the canary.
fn a_replica_refusing_what_the_canary_proved_is_named(env: &mut Env) {
    let cp = &env.cp;
    let before = operator::config_hash(&env.pods["durable-0"]).to_string();
    let (_, pv) = ok(user_path::pod_claim(cp, NS, "durable-1"));
    let table = user_path::volume_dir(&pv)
        .expect("a hostPath volume")
        .join(LOCAL_TABLE);
    std::fs::write(&table, "nowhere.invalid error:unused\n").expect("the canary's table");
    operator::patch_relay(
        cp,
        NS,
        RELAY,
        &format!(
            r#"{{"spec":{{"postconf":{{"transport_maps":"texthash:/var/spool/postfix/{LOCAL_TABLE}"}}}}}}"#
        ),
    );
    let refused = env.wait("durable-0's refusal in status", || {
        relay_condition(cp, "ConfigProven").filter(|c| {
            c["status"] == "False"
                && c["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("durable-0 "))
        })
    });
    let message = refused["message"].as_str().unwrap_or_default();
    for text in [
        "although the canary passed it",
        "spec.postconf.transport_maps",
        LOCAL_TABLE,
    ] {
        assert!(message.contains(text), "status names {text}: {message}");
    }
    assert_eq!(partition(cp), Some(0), "the canary had proven it");
    // The replica reports the refusal first, then the last good configuration it falls back
    // to once that passed its own self-check: a reading between the two has no revision yet.
    let zero = env.wait("durable-0 back on the last good configuration", || {
        let relay = operator::get_json(cp, NS, "smtprelay", RELAY)?;
        let pods = relay["status"]["queue"]["pods"].as_array()?.clone();
        let zero = pods.into_iter().find(|p| p["pod"] == "durable-0")?;
        (zero["configRevision"] == before.as_str()).then_some(zero)
    });
    assert!(zero["configRefused"]["error"].is_string(), "{zero}");
    // durable-0 still accepts mail, on its last good configuration.
    let pods = env.wait("both pods Ready", || ready_pods(cp));
    let ip: Ipv4Addr = pods["durable-0"]["status"]["podIP"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let reply = ok(rcpt_reply(SocketAddr::from((ip, 25)), "probe@example.net"));
    assert!(
        reply.starts_with("250"),
        "durable-0 answers RCPT with {reply}"
    );
    env.step(&format!("named: {message}"));
    operator::patch_relay(cp, NS, RELAY, operator::UNUSABLE_TABLE_REVERTED);
    wait_proven_everywhere(env, &before);
    std::fs::remove_file(&table).expect("the canary's table removed");
    env.pods = env.wait("both pods Ready", || ready_pods(cp));
    env.step("reverted: every pod runs the proven configuration again");
}

/// The table of [`a_replica_refusing_what_the_canary_proved_is_named`], at the root of a spool
/// volume.
const LOCAL_TABLE: &str = "canary-only-transport";

/// 2. N messages, each pod taking half, all accepted and queued; `status.queue` and `kubectl
///    get smtpr` count them.
fn accepted_mail_is_queued_on_both_spools_and_counted_in_status(env: &mut Env) {
    let cp = &env.cp;
    let ips: Vec<Ipv4Addr> = env
        .pods
        .values()
        .map(|p| p["status"]["podIP"].as_str().unwrap().parse().unwrap())
        .collect();
    env.markers = (0..N)
        .map(|i| mail::marker(&format!("durable{i}")))
        .collect();
    for (i, marker) in env.markers.iter().enumerate() {
        let pod = SocketAddr::from((ips[i % 2], 25));
        let rcpt = format!("durable{i}@example.net");
        user_path::send_from_host(pod, "app@client.test", &rcpt, marker).unwrap_or_else(|e| {
            panic!("message {i} to {pod}: {e}\n{}", user_path::diagnose(cp, NS))
        });
    }
    env.wait("every message on a spool", || {
        (queued(cp, 0) + queued(cp, 1) >= N).then_some(())
    });
    env.step(&format!(
        "{N} accepted, queued {} + {}",
        queued(cp, 0),
        queued(cp, 1)
    ));
    // status.queue says so, from the pods' metrics: what `kubectl get smtpr` shows.
    let queue = env.wait("status.queue to count every message, deferred", || {
        let relay = operator::get_json(cp, NS, "smtprelay", RELAY)?;
        let q = &relay["status"]["queue"];
        (q["messages"] == N && q["deferred"] == N && q["pods"].as_array()?.len() == 2)
            .then(|| q.clone())
    });
    assert!(queue["oldestMessageTime"].is_string(), "{queue}");
    assert_eq!(
        queue["relayhostLogin"], "Unknown",
        "no credentials: {queue}"
    );
    // Ready (it accepts mail), and not Delivering, in Postfix's words.
    let delivering = env.wait("Delivering False: the relayhost cannot be reached", || {
        let relay = operator::get_json(cp, NS, "smtprelay", RELAY)?;
        let c = operator::condition(&relay, "Delivering")?;
        (c["status"] == "False").then(|| c.clone())
    });
    let message = delivering["message"].as_str().unwrap_or_default();
    assert!(
        delivering["reason"] == "RelayhostUnreachable"
            && message.contains("Connection refused")
            && message.contains(&format!("{}-0", RELAY)),
        "{delivering}"
    );
    assert_eq!(
        relay_condition(cp, "Ready").map(|c| c["status"].clone()),
        Some(serde_json::json!("True")),
        "still accepting mail"
    );
    env.step(&format!("Delivering: {message}"));
    let table = cp.kubectl_ok(["get", "smtpr", "-n", NS]);
    assert!(
        table
            .lines()
            .next()
            .is_some_and(|h| h.contains("DELIVERING"))
            && table.lines().nth(1).is_some_and(|r| r.contains(" False ")),
        "kubectl get smtpr shows it:\n{table}"
    );
    assert!(
        table.lines().next().is_some_and(|h| h.contains("QUEUED"))
            && table
                .lines()
                .nth(1)
                .is_some_and(|r| r.contains(&format!(" {N} "))),
        "kubectl get smtpr shows the queue:\n{table}"
    );
    env.step(&format!("status.queue: {queue}"));
}

/// 3. Every relay container killed with SIGKILL through containerd, as the OOM killer or a
///    crash would: the kubelet restarts them on the same volumes.
fn sigkilled_relay_containers_restart_on_their_volumes(env: &mut Env) {
    let cp = &env.cp;
    for pod in env.pods.values() {
        let id = pod["status"]["containerStatuses"][0]["containerID"]
            .as_str()
            .and_then(|c| c.strip_prefix("containerd://"))
            .expect("a containerd container");
        cp.ctr(&["task", "kill", "-a", "-s", "SIGKILL", id])
            .unwrap_or_else(|e| panic!("{e}"));
    }
    env.wait("both pods restarted and Ready", || {
        ready_pods(cp).filter(|p| p.values().all(|p| restarts(p) >= 1))
    });
    env.step("every container SIGKILLed, restarted by the kubelet");
    delivery_failure_stands(env, "the restart");
}

/// Once the restarted replicas' queues are read again, `Delivering` still says what it said:
/// a replica that has not tried the relayhost since it started does not make mail leave.
fn delivery_failure_stands(env: &Env, after: &str) {
    let cp = &env.cp;
    env.wait("status.queue read again from both replicas", || {
        let relay = operator::get_json(cp, NS, "smtprelay", RELAY)?;
        let pods = relay["status"]["queue"]["pods"].as_array()?.clone();
        (pods.len() == 2
            && pods
                .iter()
                .all(|p| p["unreadable"].is_null() && p["deferred"].as_u64() > Some(0)))
        .then_some(())
    });
    let c = relay_condition(cp, "Delivering").expect("a Delivering condition");
    assert!(
        c["status"] == "False" && c["reason"] == "RelayhostUnreachable",
        "Delivering after {after}: {c}"
    );
    env.step(&format!(
        "after {after}, Delivering still False: {}",
        c["reason"]
    ));
}

/// 4. The node reboots: the control plane, the kubelet, containerd and every pod killed
///    outright and started again on the same directory; the queues are still there.
fn the_queues_survive_a_node_reboot(env: &mut Env) {
    env.cp.restart().expect("the node comes back");
    let cp = &env.cp;
    env.wait("both pods Ready after the reboot", || ready_pods(cp));
    env.step("node rebooted, both pods Ready again");
    assert!(
        queued(cp, 0) + queued(cp, 1) >= N,
        "the queues are still there: {} + {}",
        queued(cp, 0),
        queued(cp, 1)
    );
    delivery_failure_stands(env, "the reboot");
}

/// 5. `kubectl scale` 2 -> 1 with the relayhost down: the departing pod leaves the Service and
///    drains.
fn scale_down_drains_the_departing_replica_out_of_the_service(env: &mut Env) {
    let cp = &env.cp;
    let held = queued(cp, 1);
    assert!(held > 0, "the departing replica holds mail");
    // As users scale workloads (issue 30): the scale subresource, whose selector lists the pods.
    let scale: serde_json::Value = serde_json::from_str(&cp.kubectl_ok([
        "get",
        "smtprelay",
        RELAY,
        "-n",
        NS,
        "--subresource=scale",
        "-o",
        "json",
    ]))
    .unwrap_or_default();
    assert_eq!(
        (&scale["spec"]["replicas"], &scale["status"]["replicas"]),
        (&serde_json::json!(2), &serde_json::json!(2)),
        "{scale}"
    );
    let selector = scale["status"]["selector"].as_str().unwrap_or_default();
    let pods = cp.kubectl_ok(["get", "pods", "-n", NS, "-l", selector, "-o", "name"]);
    assert_eq!(pods.lines().count(), 2, "{selector}: {pods}");
    cp.kubectl_ok(["scale", "smtprelay", RELAY, "-n", NS, "--replicas=1"]);
    let message = env.wait("the departing pod out of the Service and draining", || {
        draining(cp)
    });
    assert!(message.contains(&departing()), "{message}");
    env.step(&format!("scaled to 1: {message}"));
}

/// 5, continued. The operator is replaced in the middle of the drain; its successor holds the
///    replica, its volume and its mail.
fn a_new_operator_keeps_holding_the_draining_replica_and_its_mail(env: &mut Env) {
    let (cp, release) = (&env.cp, &env.release);
    let first = ok(user_path::wait_operator_ready(cp, release, WAIT));
    cp.kubectl_ok(["delete", "pod", "-n", &release.namespace, &first]);
    let second = ok(user_path::wait(
        cp,
        &release.namespace,
        WAIT,
        "a new operator pod Ready",
        || user_path::operator_ready(cp, release).filter(|p| *p != first),
    ));
    // Two reconciles by the new operator (a draining relay is looked at every 10 s): each saw
    // the drain in the cluster and held the replica.
    let reconciles = ok(user_path::wait(
        cp,
        &release.namespace,
        WAIT,
        "the new operator reconciling the draining relay",
        || {
            let text = user_path::operator_metrics(cp, release).ok()?;
            user_path::metric(&text, "smtp_relay_operator_reconciles_total").filter(|n| *n >= 2.0)
        },
    ));
    assert!(
        draining(cp).is_some(),
        "still draining after {reconciles} reconciles"
    );
    assert_eq!(
        sts_replicas(cp),
        Some(2),
        "the StatefulSet keeps the draining replica"
    );
    assert!(claim(cp, 1).is_some(), "its volume is kept");
    assert!(queued(cp, 1) > 0, "its mail is still there");
    env.step(&format!(
        "operator replaced ({first} -> {second}) mid-drain; {reconciles} reconciles later the replica and its mail are held"
    ));
}

/// 6. The relayhost comes up: all N are delivered, none lost. Duplicates are counted and
///    reported (Postfix may deliver a message twice when killed between the relayhost's 250
///    and its own bookkeeping).
fn every_message_is_delivered_once_the_relayhost_is_up(env: &mut Env) {
    let sink = ok(user_path::node_sink(env.relayhost.port()));
    let delivered = env.wait_delivered(&sink, "all messages delivered", &env.markers);
    let mut copies: BTreeMap<&str, usize> = BTreeMap::new();
    for m in &env.markers {
        let n = delivered
            .iter()
            .filter(|d| d.text.contains(m.as_str()))
            .count();
        copies.insert(m.as_str(), n);
    }
    let duplicates: Vec<_> = copies.iter().filter(|(_, n)| **n > 1).collect();
    env.step(&format!(
        "{N} of {N} delivered after the relayhost came up; {} delivered more than once",
        duplicates.len()
    ));
    if !duplicates.is_empty() {
        eprintln!("duplicates (delivered, not lost): {duplicates:?}");
    }
    env.sink = Some(sink);
}

/// 6, continued. Only once everything is delivered does the StatefulSet scale to 1 and the
///    departing volume go; Events say so, and `status.queue` shows the queues empty with the
///    last delivery's time. Then the relayhost goes down again.
fn the_drained_replica_and_its_volume_go_only_after_delivery(env: &mut Env) {
    let cp = &env.cp;
    let drained = env.wait(
        "scaled to 1 once drained, the departing volume deleted",
        || {
            let relay = operator::get_json(cp, NS, "smtprelay", RELAY)?;
            let c = operator::condition(&relay, "Draining")?;
            (c["reason"] == "Drained"
                && sts_replicas(cp) == Some(1)
                && operator::get_json(cp, NS, "pod", &departing()).is_none()
                && claim(cp, 1).is_none())
            .then(|| c["message"].as_str().unwrap_or_default().to_string())
        },
    );
    env.step(&format!("drained: {drained}"));
    let events = cp.kubectl_ok(["get", "events", "-n", NS, "-o", "json"]);
    for reason in ["Draining", "Drained"] {
        assert!(
            events.contains(&format!("\"reason\": \"{reason}\"")),
            "an Event {reason}"
        );
    }
    env.wait("the queues empty", || {
        (queued(cp, 0) + queued(cp, 1) == 0).then_some(())
    });
    let flowing = env.wait("status.queue empty, with the last delivery's time", || {
        let relay = operator::get_json(cp, NS, "smtprelay", RELAY)?;
        let q = &relay["status"]["queue"];
        // The oldest message's time goes with the last message.
        (q["messages"] == 0
            && q["lastDeliveryTime"].is_string()
            && q.get("oldestMessageTime").is_none())
        .then(|| q.clone())
    });
    env.step(&format!("status.queue after delivery: {flowing}"));
    let delivering = env.wait("Delivering True again", || {
        let c = relay_condition(cp, "Delivering")?;
        (c["status"] == "True").then_some(c)
    });
    let events = cp.kubectl_ok(["get", "events", "-n", NS, "-o", "json"]);
    assert!(
        events.contains("\"reason\": \"RelayhostUnreachable\"")
            && events.contains("\"reason\": \"DeliveringAgain\""),
        "an Event when mail stopped and one when it left again; the Events:\n{}\nthe operator's warnings:\n{}",
        event_timeline(cp),
        operator_warnings(cp, &env.release),
    );
    env.step(&format!("Delivering: {delivering}"));
    env.sink = None;
}

/// The namespace's Events in the order they were made: time, type, reason and the start of
/// the note.
fn event_timeline(cp: &ControlPlane) -> String {
    let mut lines: Vec<String> = operator::list_json(cp, NS, "events")
        .iter()
        .map(|e| {
            let when = e["eventTime"]
                .as_str()
                .or_else(|| e["firstTimestamp"].as_str())
                .unwrap_or("?");
            let note: String = e["message"]
                .as_str()
                .unwrap_or("")
                .chars()
                .take(160)
                .collect();
            format!("{when} {} {} {note}", e["type"], e["reason"])
        })
        .collect();
    lines.sort();
    lines.join("\n")
}

/// The operator's log lines at WARN or above (the Events it could not publish among them).
fn operator_warnings(cp: &ControlPlane, release: &ChartRelease) -> String {
    let deployment = format!("deployment/{}", release.release);
    let out = cp.kubectl(["logs", "-n", &release.namespace, &deployment, "--tail=2000"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// 7. Deleted with `whenDeleted: Delete` while M messages wait, in the foreground as Argo CD
///    deletes: the garbage collector takes what the relay alone owned, while its finalizer
///    holds it and the drain guard its StatefulSet, pod and volume, with the mail.
fn a_foreground_deletion_is_held_while_the_pod_drains_its_mail(env: &mut Env) {
    let cp = &env.cp;
    operator::patch_relay(
        cp,
        NS,
        RELAY,
        r#"{"spec":{"storage":{"retention":{"whenDeleted":"Delete"}}}}"#,
    );
    env.wait("the drain finalizer added", || {
        let relay = operator::get_json(cp, NS, "smtprelay", RELAY)?;
        relay["metadata"]["finalizers"]
            .to_string()
            .contains("smtprelay.dev/drain-queues")
            .then_some(())
    });
    let pod0 = env.wait("the staying pod Ready", || {
        operator::get_json(cp, NS, "pod", &format!("{RELAY}-0")).filter(user_path::pod_ready)
    });
    let ip: Ipv4Addr = pod0["status"]["podIP"].as_str().unwrap().parse().unwrap();
    env.last = (0..M)
        .map(|i| mail::marker(&format!("deleted{i}")))
        .collect();
    for (i, marker) in env.last.iter().enumerate() {
        let rcpt = format!("deleted{i}@example.net");
        user_path::send_from_host(SocketAddr::from((ip, 25)), "app@client.test", &rcpt, marker)
            .unwrap_or_else(|e| panic!("message {i}: {e}\n{}", user_path::diagnose(cp, NS)));
    }
    env.wait("the last messages queued", || {
        (queued(cp, 0) >= M).then_some(())
    });
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
    let message = env.wait("the deletion held while the pod drains", || {
        let relay = operator::get_json(cp, NS, "smtprelay", RELAY)?;
        let c = operator::condition(&relay, "Draining")?;
        let pod = operator::get_json(cp, NS, "pod", &format!("{RELAY}-0"))?;
        (c["status"] == "True" && !user_path::pod_ready(&pod))
            .then(|| c["message"].as_str().unwrap_or_default().to_string())
    });
    // The foreground delete is through with what the relay alone owned (its Services), and
    // the pod that holds the mail is the one that took it, still running.
    env.wait(
        "the garbage collector done with the relay's own dependents",
        || {
            let relay = operator::get_json(cp, NS, "smtprelay", RELAY)?;
            let waiting = relay["metadata"]["finalizers"]
                .to_string()
                .contains("foregroundDeletion");
            (!waiting && operator::get_json(cp, NS, "service", RELAY).is_none()).then_some(())
        },
    );
    let pod = operator::get_json(cp, NS, "pod", &format!("{RELAY}-0")).expect("the pod");
    assert_eq!(
        pod["metadata"]["uid"], pod_uid,
        "the same pod, never restarted"
    );
    assert!(
        pod["metadata"]["deletionTimestamp"].is_null(),
        "not being deleted"
    );
    assert!(
        claim(cp, 0).is_some_and(|c| c["metadata"]["deletionTimestamp"].is_null())
            && queued(cp, 0) >= M,
        "held with its mail"
    );
    env.step(&format!("deleted, held: {message}"));
}

/// 7, continued. The relayhost comes up: the M are delivered, and only then do the relay, its
///    StatefulSet, its drain guard and its volume go.
fn the_relay_and_its_volume_go_once_the_last_mail_is_delivered(env: &mut Env) {
    let cp = &env.cp;
    let sink = ok(user_path::node_sink(env.relayhost.port()));
    env.wait_delivered(&sink, "the last messages delivered", &env.last);
    env.wait("the relay and its volume gone once drained", || {
        (operator::get_json(cp, NS, "smtprelay", RELAY).is_none()
            && operator::get_json(cp, NS, "statefulset", RELAY).is_none()
            && operator::get_json(cp, NS, "configmap", &format!("{RELAY}-drain-guard")).is_none()
            && claim(cp, 0).is_none())
        .then_some(())
    });
    env.step(&format!(
        "{M} of {M} delivered, then the relay and its volume deleted"
    ));
    drop(sink);
}

/// The relay of [`a_full_spool_answers_452_keeps_its_mail_and_recovers`].
const SMALL: &str = "small";
const MIB: u64 = 1 << 20;
/// Its spool: a volume that really fills (a tmpfs of this size), three times the relay's own
/// reserve for the default `message_size_limit` (the reserve's floor, 32 MiB).
const SMALL_SPOOL_MIB: u64 = 96;
const RESERVE: u64 = 32 * MIB;

/// The small relay's `status.queue`.
fn small_queue(cp: &ControlPlane) -> Option<Value> {
    operator::get_json(cp, NS, "smtprelay", SMALL).map(|r| r["status"]["queue"].clone())
}

/// 8. A relay with default settings on a small volume that fills, its relayhost down: mail
///    until smtpd refuses. The refusal is 452 (retry later) with the reserve still free,
///    status and a Warning Event name the replica, every accepted message is on the spool.
fn a_full_spool_answers_452_and_keeps_what_it_accepted(env: &mut Env) {
    let cp = &env.cp;
    let relay = serde_json::json!({
        "apiVersion": "smtprelay.dev/v1alpha1", "kind": "SmtpRelay",
        "metadata": {"name": SMALL, "namespace": NS},
        "spec": {
            "domain": "example.net",
            "networks": [format!("{NODE_IP}/32")],
            "relayhost": {"host": env.relayhost.ip().to_string(), "port": env.relayhost.port()},
            "postconf": user_path::quick_retry_postconf(),
            "storage": {"size": format!("{SMALL_SPOOL_MIB}Mi"), "storageClassName": "local-sized"},
        }
    });
    operator::apply(cp, NS, &relay.to_string());
    let pod = format!("{SMALL}-0");
    let ready = env.wait("the small relay's pod Ready", || {
        operator::get_json(cp, NS, "pod", &pod).filter(user_path::pod_ready)
    });
    let ip: Ipv4Addr = ready["status"]["podIP"].as_str().unwrap().parse().unwrap();
    env.small_ip = Some(ip);
    // The relay measures the volume it got: the tmpfs, not the node's disk.
    let q = env.wait("status.queue to show the spool's size", || {
        small_queue(cp).filter(|q| q["pods"][0]["spoolSizeBytes"].is_u64())
    });
    assert_eq!(q["pods"][0]["spoolSizeBytes"], SMALL_SPOOL_MIB * MIB, "{q}");
    env.step(&format!("{SMALL} Ready on a {SMALL_SPOOL_MIB} MiB volume"));

    // One trusted client sends until refused: about (96 - 32) / 3 messages of 3 MB.
    let refusal = loop {
        assert!(
            env.filled.len() < 40,
            "40 messages of 3 MB accepted on a {SMALL_SPOOL_MIB} MiB spool: no reserve"
        );
        let marker = mail::marker("fill");
        let to = format!("fill{}@example.net", env.filled.len());
        let pod_addr = SocketAddr::from((ip, 25));
        match mail::send_big(pod_addr, "app@client.test", &to, &marker, 3_000_000) {
            Ok(_) => env.filled.push(marker),
            Err(e) => break e,
        }
    };
    assert!(
        refusal.contains("452") && refusal.contains("Insufficient system storage"),
        "refused with {refusal}\n{}",
        user_path::diagnose(cp, NS)
    );
    assert!(env.filled.len() >= 10, "only {} accepted", env.filled.len());
    env.step(&format!(
        "{} messages of 3 MB accepted, then: {refusal}",
        env.filled.len()
    ));

    // What got its 250 is on the spool; the reserve is still free there.
    let (_, pv) = ok(user_path::pod_claim(cp, NS, &pod));
    let spool = user_path::volume_dir(&pv).expect("a hostPath volume");
    let queued = mail::queued(&spool);
    assert!(
        queued >= env.filled.len(),
        "{queued} queued of {} accepted",
        env.filled.len()
    );
    let q = env.wait("status.queue to name the nearly full spool", || {
        small_queue(cp).filter(|q| q["spoolNearlyFull"] == serde_json::json!([pod]))
    });
    let free = q["pods"][0]["spoolFreeBytes"].as_u64().unwrap_or_default();
    assert!(
        (RESERVE - 4 * MIB..2 * RESERVE).contains(&free),
        "the reserve stays free (about {RESERVE} bytes): {q}"
    );
    let warning = env.wait("a Warning Event SpoolNearlyFull", || {
        let events = cp.kubectl_ok([
            "get",
            "events",
            "-n",
            NS,
            "--field-selector",
            &format!("type=Warning,reason=SpoolNearlyFull,involvedObject.name={SMALL}"),
            "-o",
            "jsonpath={.items[*].message}",
        ]);
        (!events.is_empty()).then_some(events)
    });
    assert!(warning.contains(&pod), "{warning}");
    env.step(&format!(
        "{queued} on the spool, {} MiB free; status and Event: {warning}",
        free / MIB
    ));
}

/// 8, continued. The relayhost comes up: everything accepted is delivered, status says the
///    spool has room, and new mail is accepted and delivered.
fn the_full_spool_delivers_and_takes_mail_again(env: &mut Env) {
    let cp = &env.cp;
    let sink = ok(user_path::node_sink(env.relayhost.port()));
    env.wait_delivered(&sink, "every accepted message delivered", &env.filled);
    env.wait("status.queue to say the spool has room", || {
        small_queue(cp).filter(|q| {
            let full = q["spoolNearlyFull"]
                .as_array()
                .is_some_and(|a| !a.is_empty());
            !full && q["messages"] == 0
        })
    });
    let marker = mail::marker("after");
    let pod = SocketAddr::from((env.small_ip.expect("the small relay's pod"), 25));
    mail::send_big(
        pod,
        "app@client.test",
        "after@example.net",
        &marker,
        3_000_000,
    )
    .unwrap_or_else(|e| panic!("new mail once space returned: {e}"));
    env.wait_delivered(&sink, "the new message delivered", &[marker]);
    let n = env.filled.len();
    env.step(&format!(
        "{n} of {n} delivered once the relayhost came up; new mail accepted and delivered"
    ));
}
