//! Stopping with mail queued, restarting on the same spool, and the image's other commands
//! (probe, send, users) and its metrics, against a running relay.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use smtp_relay::settings::Mode;

fn smtp_relay() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_smtp-relay"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NO_COLOR", "1");
    cmd
}

#[test]
fn sigterm_keeps_queued_mail_and_a_restart_delivers_it() {
    // The relayhost is a closed port: mail is accepted and stays queued.
    let closed = free_port();
    let relay = RelaySpec::new(Input::file(config(closed, Mode::Strict))).start();
    let mark = marker("queued");
    send(
        relay.addr(),
        NET_CLIENT,
        None,
        "app@example.net",
        "queued@example.net",
        &mark,
    )
    .unwrap();
    poll("the message to be deferred", DEADLINE, || {
        relay
            .mail_log()
            .contains("to=<queued@example.net>")
            .then_some(())
    });
    let master = relay.master_pid().expect("master.pid");

    let (status, mut spec) = relay.stop();
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean stop");
    assert!(!process_alive(master), "the Postfix master stopped too");
    assert_eq!(
        queued(&spec.spool_dir()),
        1,
        "the message is still in the spool"
    );

    // Same spool, a working relayhost: the message is delivered.
    let sink = start_sink();
    if let Input::File(cfg) = &mut spec.input {
        cfg.relayhost.port = sink.port();
    }
    let relay = spec.start();
    let m = sink
        .wait_for("queued@example.net", &mark, DEADLINE)
        .unwrap();
    assert_eq!(m.from, "app@example.net");
    relay.wait_queue_empty();
    let (status, _) = relay.stop();
    assert_eq!(status.code(), Some(0));
}

/// `smtp-relay enqueue` (what `kubectl smtp-relay send` runs in a pod): the message goes
/// through the running Postfix's sendmail, from a client address nothing admits, and out to
/// the relayhost; the mail log names its queue ID by the Message-ID, and its delivery by that.
#[test]
fn enqueue_hands_a_test_message_to_the_running_postfix() {
    let sink = start_sink();
    let mut cfg = config(sink.port(), Mode::Strict);
    cfg.networks = vec!["127.0.0.2/32".into()];
    let relay = RelaySpec::new(Input::file(cfg)).start();
    let out = smtp_relay()
        .args([
            "enqueue",
            "--from",
            "Ops <ops@example.net>",
            "--subject",
            "enqueued",
        ])
        .args(["--message-id", "enqueue-test.1@relay.test", "--postfix-dir"])
        .arg(relay.spec().postfix_dir())
        .args(["first@elsewhere.org", "second@elsewhere.org"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "enqueue: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "queued by sendmail: Message-ID <enqueue-test.1@relay.test>\n"
    );
    let m = poll("the enqueued message at the sink", DEADLINE, || {
        sink.messages()
            .into_iter()
            .find(|m| m.text.contains("Subject: enqueued"))
    });
    assert_eq!(m.from, "ops@example.net");
    assert_eq!(m.rcpts, ["first@elsewhere.org", "second@elsewhere.org"]);
    // The log, as the plugin reads it.
    let log = relay.mail_log();
    let queue_id = log
        .lines()
        .filter_map(smtp_relay::mail_log::postfix_program)
        .find_map(|(program, message)| {
            let (id, mid) = smtp_relay::mail_log::message_id(message)?;
            (program == "cleanup" && mid == "enqueue-test.1@relay.test").then_some(id)
        })
        .unwrap_or_else(|| panic!("cleanup names the Message-ID:\n{log}"));
    poll("both deliveries logged", DEADLINE, || {
        let log = relay.mail_log();
        let sent: Vec<String> = log
            .lines()
            .filter_map(smtp_relay::mail_log::postfix_program)
            .filter_map(|(_, message)| smtp_relay::mail_log::delivery(message))
            .filter(|d| d.queue_id == queue_id && d.status == "sent")
            .map(|d| d.to.to_string())
            .collect();
        (sent.len() == 2).then_some(())
    });
    // A sender lettre cannot read is refused before anything is queued.
    let out = smtp_relay()
        .args(["enqueue", "--from", "not an address", "--postfix-dir"])
        .arg(relay.spec().postfix_dir())
        .arg("x@elsewhere.org")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--from"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn probe_fails_fast_on_a_closed_port() {
    let start = Instant::now();
    let out = smtp_relay()
        .args(["probe", "--timeout", "5", "--address"])
        .arg(loopback(free_port()).to_string())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "a refused connection fails at once, not at the deadline"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("smtp-relay:"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one session against one running relay, step by step"
)]
fn probe_send_users_and_metrics_against_a_running_relay() {
    let sink = start_sink();
    let mut cfg = config(sink.port(), Mode::AllowSaslAuthNoDomain);
    // smtp-relay send speaks from 127.0.0.1, which is outside these networks.
    cfg.networks = vec!["127.0.0.2/32".into()];
    let mut spec = RelaySpec::new(Input::file(cfg));
    let users = spec.path("users");
    SecretVolume::create(
        users.clone(),
        &[("app1", "app1 secret"), ("app2", "app2 secret")],
    );
    if let Input::File(cfg) = &mut spec.input {
        cfg.sasl_users_dir = Some(users);
    }
    // The relay offers AUTH inside TLS only: send trusts the relay's (test) certificate.
    let (cert, _) = spec.test_cert();
    let relay = spec.start();
    let addr = relay.addr().to_string();
    let send = || {
        let mut cmd = smtp_relay();
        cmd.args(["send", "--server", &addr, "--starttls", "required"])
            .args(["--tls-name", "localhost", "--ca-file"])
            .arg(&cert);
        cmd
    };

    // probe
    let out = smtp_relay()
        .args(["probe", "--address", &addr])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "probe: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // send, authenticated with the password from SMTP_PASSWORD
    let out = send()
        .env("SMTP_PASSWORD", "app1 secret")
        .args(["--user", "app1"])
        .args(["--from", "app@example.net", "--subject", "via send"])
        .arg("send@elsewhere.org")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "send: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("250"));
    let m = poll("send's message at the sink", DEADLINE, || {
        sink.messages()
            .into_iter()
            .find(|m| m.rcpts == ["send@elsewhere.org"])
    });
    assert!(m.text.contains("Subject: via send"), "{}", m.text);
    assert!(
        relay.mail_log().contains("sasl_username=app1@example.net"),
        "send logged in"
    );

    // send without login, from outside the networks, to an external domain: refused.
    let out = send()
        .args(["--from", "app@example.net"])
        .arg("anon@elsewhere.org")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("554"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // --user without a password is a usage error.
    let out = send()
        .args(["--user", "app1"])
        .args(["--from", "app@example.net", "x@example.net"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SMTP_PASSWORD"));
    // A wrong password.
    let out = send()
        .env("SMTP_PASSWORD", "wrong")
        .args(["--user", "app1"])
        .args(["--from", "app@example.net", "x@example.net"])
        .output()
        .unwrap();
    assert!(!out.status.success());

    // users: names, never passwords
    let out = smtp_relay()
        .arg("users")
        .arg("--data-dir")
        .arg(relay.spec().data_dir())
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        listed.lines().collect::<Vec<_>>(),
        ["app1@example.net", "app2@example.net"]
    );
    assert!(!listed.contains("secret"));

    // metrics after that traffic
    relay.wait_queue_empty();
    let metrics = poll("metrics to count the traffic", DEADLINE, || {
        let text = relay.metrics();
        (metric_value(&text, "smtp_relay_deliveries_total{status=\"sent\"}") >= Some(1.0)
            && metric_value(
                &text,
                "smtp_relay_smtpd_rejects_total{code=\"554\",reason=\"relay_denied\"}",
            ) >= Some(1.0)
            && metric_value(&text, "smtp_relay_sasl_auth_failures_total") >= Some(1.0))
        .then_some(text)
    });
    for (name, expected) in [
        ("smtp_relay_queue_messages{queue=\"deferred\"}", 0.0),
        ("smtp_relay_queue_messages{queue=\"active\"}", 0.0),
        ("smtp_relay_sasl_users", 2.0),
        ("smtp_relay_postfix_up", 1.0),
        ("smtp_relay_config_errors_total", 0.0),
    ] {
        assert_eq!(
            metric_value(&metrics, name),
            Some(expected),
            "{name}\n{metrics}"
        );
    }
    assert!(metric_value(&metrics, "smtp_relay_smtpd_connections_total") >= Some(4.0));
}

#[test]
fn queue_gauge_counts_deferred_mail() {
    let relay = RelaySpec::new(Input::file(config(free_port(), Mode::Strict))).start();
    for i in 0..3 {
        send(
            relay.addr(),
            NET_CLIENT,
            None,
            "app@example.net",
            &format!("deferred{i}@example.net"),
            &marker("deferred"),
        )
        .unwrap();
    }
    poll("three queued messages in the gauges", DEADLINE, || {
        let text = relay.metrics();
        let total: f64 = ["incoming", "active", "deferred"]
            .iter()
            .filter_map(|q| {
                metric_value(
                    &text,
                    &format!("smtp_relay_queue_messages{{queue=\"{q}\"}}"),
                )
            })
            .sum();
        (total == 3.0
            && metric_value(&text, "smtp_relay_deliveries_total{status=\"deferred\"}") >= Some(3.0))
        .then_some(())
    });
}

#[test]
fn liveness_needs_no_smtp_session_and_fails_without_the_master() {
    let sink = start_sink();
    let mut cfg = config(sink.port(), Mode::Strict);
    // One smtpd at a time: a client holding its session makes the next one wait for a banner,
    // as a relay saturated with sessions does.
    cfg.postconf
        .insert("default_process_limit".into(), "1".into());
    let relay = RelaySpec::new(Input::file(cfg)).start();
    let probe = |liveness: bool| {
        let mut cmd = smtp_relay();
        cmd.args(["probe", "--timeout", "2", "--address"])
            .arg(relay.addr().to_string())
            .env("RELAY_POSTFIX_DIR", relay.spec().postfix_dir())
            .env("RELAY_SPOOL_DIR", relay.spec().spool_dir());
        if liveness {
            cmd.arg("--liveness");
        }
        cmd.output().expect("smtp-relay probe")
    };

    let busy = connect(relay.addr(), NET_CLIENT);
    let smtp = probe(false);
    assert!(
        !smtp.status.success(),
        "the SMTP probe fails while the only smtpd is busy"
    );
    let alive = probe(true);
    assert!(
        alive.status.success(),
        "liveness passes on a busy relay: {}",
        String::from_utf8_lossy(&alive.stderr)
    );
    drop(busy);
    poll("the SMTP probe to pass again", DEADLINE, || {
        probe(false).status.success().then_some(())
    });

    // The master dies: the supervisor follows it, and liveness says what is missing.
    let master = relay.master_pid().expect("master.pid");
    kill(Pid::from_raw(master), Signal::SIGKILL).expect("kill the master");
    let out = poll("liveness to fail", DEADLINE, || {
        let out = probe(true);
        (!out.status.success()).then_some(out)
    });
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Postfix master"), "{err}");
}

#[test]
fn the_master_never_outlives_its_supervisor() {
    let sink = start_sink();
    let relay = RelaySpec::new(Input::file(config(sink.port(), Mode::Strict))).start();
    let master = relay.master_pid().expect("master.pid");
    // SIGKILL of smtp-relay alone: no chance to stop Postfix itself.
    kill(Pid::from_raw(relay.pid() as i32), Signal::SIGKILL).expect("kill smtp-relay");
    poll("the master to stop with its supervisor", DEADLINE, || {
        (!process_alive(master)).then_some(())
    });
    // And a relay on the same spool starts and relays.
    let (_, spec) = relay.stop();
    let relay = spec.start();
    let mark = marker("after-kill");
    send(
        relay.addr(),
        NET_CLIENT,
        None,
        "app@example.net",
        "after@example.net",
        &mark,
    )
    .unwrap();
    sink.wait_for("after@example.net", &mark, DEADLINE).unwrap();
}

/// A Postfix master the test started itself: stopped (and reaped) when dropped, also when the
/// test fails before the relay under test stopped it.
struct Orphan(std::process::Child);

impl Drop for Orphan {
    fn drop(&mut self) {
        smtp_relay_e2e::tools::stop_child(&mut self.0, Duration::from_secs(10));
    }
}

#[test]
fn a_master_left_running_on_the_spool_is_stopped_and_the_relay_starts() {
    let sink = start_sink();
    let relay = RelaySpec::new(Input::file(config(sink.port(), Mode::Strict))).start();
    let (status, spec) = relay.stop();
    assert_eq!(status.code(), Some(0));
    // A master on this spool that no smtp-relay supervises (as an older supervisor killed
    // outright left behind), serving the port.
    let orphan = Orphan(
        Command::new("/usr/lib/postfix/sbin/master")
            .arg("-c")
            .arg(spec.postfix_dir())
            .spawn()
            .expect("starting a Postfix master by hand"),
    );
    poll("the unsupervised master to serve", DEADLINE, || {
        smtp_ready(spec.addr()).then_some(())
    });
    let orphan_pid = master_pid(&spec.spool_dir()).expect("master.pid");

    // The orphan answers on the relay's port, so start() returns at once: wait for the
    // relay's own master.
    let relay = spec.start();
    poll("the relay to run its own master", DEADLINE, || {
        relay
            .master_pid()
            .filter(|pid| *pid != orphan_pid && process_alive(*pid))
    });
    assert!(
        !process_alive(orphan_pid),
        "the unsupervised master is gone"
    );
    drop(orphan);
    assert!(
        relay.output().contains("left by an earlier supervisor"),
        "the relay says what it found:\n{}",
        relay.output()
    );
    let mark = marker("after-orphan");
    send(
        relay.addr(),
        NET_CLIENT,
        None,
        "app@example.net",
        "orphan@example.net",
        &mark,
    )
    .unwrap();
    sink.wait_for("orphan@example.net", &mark, DEADLINE)
        .unwrap();
}

/// Postfix retries deferred mail only after minutes: whatever is delivered at a stop was sent
/// by the drain, not by a retry that happened to come.
fn slow_retries(cfg: &mut smtp_relay::config_file::RelayConfigFile) {
    for (k, v) in [
        ("queue_run_delay", "300s"),
        ("minimal_backoff_time", "300s"),
        ("maximal_backoff_time", "300s"),
    ] {
        cfg.postconf.insert(k.into(), v.into());
    }
}

#[test]
fn sigterm_delivers_the_queue_before_postfix_stops() {
    let port = free_port();
    let mut cfg = config(port, Mode::Strict);
    slow_retries(&mut cfg);
    let relay = RelaySpec::new(Input::file(cfg)).start();
    let mark = marker("drained");
    send(
        relay.addr(),
        NET_CLIENT,
        None,
        "app@example.net",
        "drained@example.net",
        &mark,
    )
    .unwrap();
    relay.wait_deferred("drained@example.net");
    // The relayhost is back, but Postfix would not retry for five minutes.
    let sink = start_sink_on(port);
    let (status, spec) = relay.stop();
    assert_eq!(status.code(), Some(0));
    assert!(
        sink.has(&mark),
        "the drain delivered the queued message before the relay exited"
    );
    assert_eq!(queued(&spec.spool_dir()), 0, "nothing left on the spool");
}

/// Issue 16, shutdown: a session in the middle of a message when SIGTERM comes is let finish:
/// the client gets its 250 (not a dropped connection), the message is delivered by the drain,
/// and only then does the relay stop.
#[test]
fn sigterm_lets_a_session_in_progress_finish() {
    let sink = start_sink();
    let relay = RelaySpec::new(Input::file(config(sink.port(), Mode::Strict))).start();
    let mut conn = connect(relay.addr(), NET_CLIENT);
    for (line, code) in [
        ("MAIL FROM:<app@example.net>", 250),
        ("RCPT TO:<inflight@example.net>", 250),
        ("DATA", 354),
    ] {
        let (got, text) = reply(&mut conn, line);
        assert_eq!(got, code, "{line}: {text}");
    }
    kill(Pid::from_raw(relay.pid() as i32), Signal::SIGTERM).expect("SIGTERM");
    // The relay noticed and is waiting for the session; Postfix still runs.
    poll("the relay to wait for the session", DEADLINE, || {
        relay
            .output()
            .contains("letting the SMTP sessions in progress finish")
            .then_some(())
    });
    let mark = marker("inflight");
    let body =
        String::from_utf8(message("app@example.net", "inflight@example.net", &mark)).unwrap();
    let (code, text) = reply(&mut conn, &format!("{}\r\n.", body.trim_end()));
    assert_eq!(code, 250, "the message in progress is accepted: {text}");
    let _ = conn.quit();
    let (status, _) = relay.stop();
    assert_eq!(status.code(), Some(0));
    assert!(sink.has(&mark), "delivered before the relay exited");
}
