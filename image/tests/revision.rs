//! Issue 24, a bad value stops at one pod: relays given the pod's config-hash annotation (a
//! downward-API file) and a ConfigMap volume holding `relay.yaml` and its `revision`, laid out
//! as the kubelet lays them out. A pod applies only its own revision and keeps following its
//! SASL users; Postfix's self-check refuses what smtpd cannot serve with, and the relay then
//! runs its last good configuration from its spool, or stops saying why when it has none.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use common::*;
use smtp_relay::config_file::{InboundTlsFile, RelayConfigFile};
use smtp_relay::metrics::{ConfigRefusal, QueueReport};
use smtp_relay::settings::Mode;

/// Two config hashes, as the operator writes them.
const A: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const B: &str = "b0c1d2e3f405162738495a6b7c8d9eafb0c1d2e3f405162738495a6b7c8d9eaf";

/// A value both judges accept and `postfix check` too, but smtpd cannot serve with: a table
/// that is not there. Every RCPT gets `451 4.3.0 Temporary lookup failure`.
const MISSING_TABLE: (&str, &str) = ("transport_maps", "hash:/etc/postfix/missing");

fn yaml(cfg: &RelayConfigFile) -> String {
    serde_yaml::to_string(cfg).unwrap()
}

/// `cfg` with a value smtpd cannot serve with.
fn broken(cfg: &RelayConfigFile) -> RelayConfigFile {
    let mut cfg = cfg.clone();
    cfg.postconf
        .insert(MISSING_TABLE.0.into(), MISSING_TABLE.1.into());
    cfg
}

/// The ConfigMap volume: `relay.yaml` as `cfg`, `revision` as `revision`; the relay reads it.
fn mount(spec: &mut RelaySpec, cfg: &RelayConfigFile, revision: &str) -> SecretVolume {
    let dir = spec.path("config");
    let volume = SecretVolume::create(
        dir.clone(),
        &[
            ("relay.yaml", &yaml(cfg)),
            ("revision", &format!("{revision}\n")),
        ],
    );
    spec.mounted_config = Some(dir.join("relay.yaml"));
    volume
}

/// The pod's annotations as the kubelet writes them, its template's config hash `own` among
/// them.
fn annotate(spec: &mut RelaySpec, own: &str) {
    let path = spec.write(
        "podinfo/annotations",
        &format!(
            "kubectl.kubernetes.io/default-container=\"relay\"\nsmtprelay.dev/config-hash=\"{own}\"\n"
        ),
    );
    spec.env
        .insert("RELAY_POD_ANNOTATIONS".into(), path.display().to_string());
}

fn report(relay: &Relay) -> QueueReport {
    QueueReport::parse(&relay.metrics()).expect("a relay's metrics page")
}

/// Waits until the relay says it runs `revision` (its self-check passed).
fn wait_running(relay: &Relay, revision: &str) {
    poll(&format!("the relay to run {revision}"), DEADLINE, || {
        (report(relay).config_revision.as_deref() == Some(revision)).then_some(())
    });
}

/// The last good copy on the relay's spool.
fn last_good(spool: &Path) -> Option<String> {
    std::fs::read_to_string(spool.join("smtp-relay/last-good.yaml")).ok()
}

/// Waits until the supervisor checked its inputs `n` more times (its heartbeat).
fn wait_ticks(relay: &Relay, n: usize) {
    let beat: PathBuf = relay.spec().postfix_dir().join("supervisor.heartbeat");
    let at = || std::fs::metadata(&beat).and_then(|m| m.modified()).ok();
    let mut last: Option<SystemTime> = at();
    for _ in 0..n {
        last = Some(poll("a tick of the supervisor", DEADLINE, || {
            at().filter(|t| Some(*t) != last)
        }));
    }
}

/// Relays one message from `source` to `rcpt` and waits for the sink to have it.
fn relay_one(relay: &Relay, sink: &Sink, source: [u8; 4], rcpt: &str) -> Result<(), String> {
    let mark = marker(rcpt);
    send(relay.addr(), source, None, "app@example.net", rcpt, &mark)?;
    sink.wait_for(rcpt, &mark, DEADLINE).map(|_| ())
}

fn main_cf(relay: &Relay) -> String {
    std::fs::read_to_string(relay.spec().postfix_dir().join("main.cf")).unwrap()
}

fn can_login(relay: &Relay, user: &str, password: &str) -> bool {
    let mut conn = connect(relay.addr(), OTHER_CLIENT);
    let ok = login(&mut conn, user, password).is_ok();
    let _ = conn.quit();
    ok
}

/// (a) A pod of template A ignores the ConfigMap's revision B (a canary's), still follows its
/// SASL users, and, restarted while the rollout is halted, runs its last good A from its spool
/// without waiting for a revision that is not its own.
#[test]
fn a_pod_runs_only_its_own_revision_and_restarts_on_its_last_good() {
    let sink = start_sink();
    let mut spec = RelaySpec::new(Input::file(config(sink.port(), Mode::Strict)));
    let users_dir = spec.path("users");
    let mut users = SecretVolume::create(users_dir.clone(), &[("app1", "first password")]);
    let mut a = config(sink.port(), Mode::Strict);
    a.sasl_users_dir = Some(users_dir);
    let (cert_file, key_file) = spec.test_cert();
    a.inbound_tls = Some(InboundTlsFile {
        cert_file,
        key_file,
    });
    let mut volume = mount(&mut spec, &a, A);
    annotate(&mut spec, A);
    let relay = spec.start();
    wait_running(&relay, A);
    let kept = last_good(&relay.spec().spool_dir()).expect("the last good copy");
    assert!(kept.contains(A) && kept.ends_with(&yaml(&a)), "{kept}");
    relay_one(&relay, &sink, NET_CLIENT, "first@example.net").unwrap();
    assert!(relay_one(&relay, &sink, OTHER_CLIENT, "outsider@example.net").is_err());

    // The ConfigMap now holds a canary's revision: wider networks, for pods of template B.
    let mut b = a.clone();
    b.networks.push("127.0.0.3/32".into());
    volume.update(&[("relay.yaml", &yaml(&b)), ("revision", B)]);
    let held = "the config file is another template's revision: keeping the running configuration";
    poll("the relay to hold revision B", DEADLINE, || {
        relay.output().contains(held).then_some(())
    });
    // The SASL users are followed whatever the revision.
    users.update(&[("app1", "changed password"), ("app2", "second password")]);
    poll("app2 to log in", DEADLINE, || {
        can_login(&relay, "app2", "second password").then_some(())
    });
    wait_ticks(&relay, 2);
    assert_eq!(relay.output().matches(held).count(), 1, "said once");
    assert!(
        main_cf(&relay).contains("mynetworks = 127.0.0.2/32\n"),
        "main.cf untouched"
    );
    assert!(relay_one(&relay, &sink, OTHER_CLIENT, "outsider2@example.net").is_err());
    assert_eq!(report(&relay).config_revision.as_deref(), Some(A));
    assert_eq!(report(&relay).config_refused, None);

    // Restarted during the halted rollout: its last good A, at once (waiting for its revision
    // would take RELAY_REVISION_WAIT, 90 s, past DEADLINE).
    let (status, spec) = relay.stop();
    assert_eq!(status.code(), Some(0));
    let relay = spec.start();
    wait_running(&relay, A);
    assert!(
        relay
            .output()
            .contains("running this pod's last good configuration"),
        "{}",
        relay.output()
    );
    relay_one(&relay, &sink, NET_CLIENT, "second@example.net").unwrap();
    assert!(relay_one(&relay, &sink, OTHER_CLIENT, "outsider3@example.net").is_err());
    assert!(can_login(&relay, "app2", "second password"));
    let (status, _) = relay.stop();
    assert_eq!(status.code(), Some(0));
}

/// (b) The canary: a pod of template B whose `relay.yaml` B smtpd cannot serve with, its spool
/// holding the last good A. Postfix refuses B in the self-check; the pod runs A, takes mail,
/// and its metrics page names B and Postfix's own line. B is not tried again.
#[test]
fn a_revision_postfix_refuses_leaves_the_pod_on_its_last_good() {
    let sink = start_sink();
    let a = config(sink.port(), Mode::Strict);
    let mut spec = RelaySpec::new(Input::file(a.clone()));
    let mut volume = mount(&mut spec, &a, A);
    annotate(&mut spec, A);
    let relay = spec.start();
    wait_running(&relay, A);
    let (status, mut spec) = relay.stop();
    assert_eq!(status.code(), Some(0));

    // The StatefulSet replaced the pod with template B; the ConfigMap holds B.
    volume.update(&[("relay.yaml", &yaml(&broken(&a))), ("revision", B)]);
    annotate(&mut spec, B);
    let relay = spec.start();
    let refused = poll("the relay to report B refused", DEADLINE, || {
        report(&relay).config_refused
    });
    assert_eq!(refused.revision, B);
    assert!(
        refused
            .error
            .contains("warning: hash:/etc/postfix/missing is unavailable"),
        "{refused:?}"
    );
    wait_running(&relay, A);
    assert_eq!(
        relay.metric("smtp_relay_self_check_failures_total"),
        Some(1.0)
    );
    assert!(!main_cf(&relay).contains(MISSING_TABLE.1), "main.cf is A's");
    relay_one(&relay, &sink, NET_CLIENT, "canary@example.net").expect("A takes mail");
    let err = relay.output();
    assert!(
        err.contains(
            "Postfix refused the configuration in its self-check; running the last good one"
        ),
        "{err}"
    );
    // Not tried again while the ConfigMap says B.
    wait_ticks(&relay, 3);
    assert_eq!(
        relay.metric("smtp_relay_self_check_failures_total"),
        Some(1.0)
    );
    assert_eq!(
        report(&relay).config_refused,
        Some(ConfigRefusal {
            revision: B.into(),
            error: refused.error
        })
    );
    let kept = last_good(&relay.spec().spool_dir()).unwrap();
    assert!(
        kept.contains(A) && !kept.contains(MISSING_TABLE.1),
        "{kept}"
    );
    let (status, _) = relay.stop();
    assert_eq!(status.code(), Some(0));
}

/// (c) The same pod without a last good configuration (a new replica): Postfix is stopped and
/// the relay ends with exit code 2, its termination message naming the revision and Postfix's
/// words.
#[test]
fn a_revision_postfix_refuses_without_a_last_good_stops_the_relay() {
    let sink = start_sink();
    let b = broken(&config(sink.port(), Mode::Strict));
    let mut spec = RelaySpec::new(Input::file(b.clone()));
    let _volume = mount(&mut spec, &b, B);
    annotate(&mut spec, B);
    let log = spec.write("termination-log", "");
    spec.env
        .insert("RELAY_TERMINATION_LOG".into(), log.display().to_string());
    let out = spec.run_to_exit();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let message = std::fs::read_to_string(&log).unwrap();
    assert!(
        message.starts_with(&format!(
            "configuration revision {} failed Postfix's self-check: RCPT TO:<postmaster@example.net> was answered 451 4.3.0",
            &B[..12]
        )) && message.contains("Postfix logged: trivial-rewrite: warning: hash:/etc/postfix/missing is unavailable"),
        "{message}"
    );
    if let Some(pid) = master_pid(&spec.spool_dir()) {
        assert!(!process_alive(pid), "the master {pid} was stopped");
    }
    assert_eq!(last_good(&spec.spool_dir()), None);
}

/// A change in place (no revisions: the plain config file) that smtpd cannot serve with is
/// rolled back at once: the relay never stays on it, says so, and does not try it again; a
/// good change after it is applied and ends the refusal.
#[test]
fn a_change_postfix_refuses_is_rolled_back_at_once() {
    let sink = start_sink();
    let spec = RelaySpec::new(Input::file(config(sink.port(), Mode::Strict)));
    let relay = spec.start();
    let Input::File(good) = relay.spec().input.clone() else {
        unreachable!()
    };
    // The first tick comes after the first self-check.
    wait_ticks(&relay, 1);
    assert_eq!(report(&relay).config_revision, None, "no revision given");
    write_atomically(&relay.spec().config_path(), &yaml(&broken(&good)));
    let refused = poll("the change to be refused", DEADLINE, || {
        report(&relay).config_refused
    });
    assert_eq!(refused.revision, "");
    assert!(refused.error.contains("is unavailable"), "{refused:?}");
    poll("the previous configuration to be back", DEADLINE, || {
        relay
            .output()
            .contains("the previous configuration serves again")
            .then_some(())
    });
    assert!(!main_cf(&relay).contains(MISSING_TABLE.1), "restored");
    // New smtpd processes (several sessions) serve with the previous configuration.
    for n in 0..3 {
        relay_one(&relay, &sink, NET_CLIENT, &format!("after{n}@example.net")).unwrap();
    }
    wait_ticks(&relay, 3);
    assert_eq!(
        relay.metric("smtp_relay_self_check_failures_total"),
        Some(1.0),
        "not tried again"
    );
    assert_eq!(
        relay.output().matches("restoring the previous one").count(),
        1
    );

    let mut wider = (*good).clone();
    wider.networks.push("127.0.0.3/32".into());
    write_atomically(&relay.spec().config_path(), &yaml(&wider));
    poll("the good change to be applied", DEADLINE, || {
        relay_one(&relay, &sink, OTHER_CLIENT, "outsider@example.net").ok()
    });
    poll("the refusal to end", DEADLINE, || {
        report(&relay).config_refused.is_none().then_some(())
    });
    let (status, _) = relay.stop();
    assert_eq!(status.code(), Some(0));
}

/// A pod of a new template started before the kubelet projected the new ConfigMap waits for
/// its revision (nothing listens meanwhile), then runs it; one whose revision never comes goes
/// on with the file mounted after RELAY_REVISION_WAIT.
#[test]
fn a_new_pod_waits_for_its_revision() {
    let sink = start_sink();
    let a = config(sink.port(), Mode::Strict);
    let mut b = a.clone();
    b.networks.push("127.0.0.3/32".into());
    let mut spec = RelaySpec::new(Input::file(b.clone()));
    let mut volume = mount(&mut spec, &a, A);
    annotate(&mut spec, B);
    spec.env.insert("RELAY_REVISION_WAIT".into(), "40".into());
    let addr = spec.addr();
    let relay = {
        let spec_path = spec.path("relay.stderr");
        let starting = std::thread::spawn(move || spec.start());
        poll("the relay to wait for its revision", DEADLINE, || {
            std::fs::read_to_string(&spec_path)
                .ok()
                .filter(|e| e.contains("waiting for the config file of this pod's revision"))
        });
        assert!(!smtp_ready(addr), "nothing listens while it waits");
        volume.update(&[("relay.yaml", &yaml(&b)), ("revision", B)]);
        starting.join().unwrap()
    };
    wait_running(&relay, B);
    relay_one(&relay, &sink, OTHER_CLIENT, "outsider@example.net").expect("B's networks");
    let (_, mut spec) = relay.stop();

    // Its revision never comes: A, after the wait, said with a warning.
    volume.update(&[("relay.yaml", &yaml(&a)), ("revision", A)]);
    std::fs::remove_file(spec.spool_dir().join("smtp-relay/last-good.yaml")).unwrap();
    spec.env.insert("RELAY_REVISION_WAIT".into(), "1".into());
    let relay = spec.start();
    wait_running(&relay, A);
    assert!(relay
        .output()
        .contains("the config file of this pod's revision did not come"));
    assert!(relay_one(&relay, &sink, OTHER_CLIENT, "outsider2@example.net").is_err());
}
