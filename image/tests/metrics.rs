//! The relay's metrics against Postfix's own mail log: a real relay is driven through known
//! numbers of delivered, deferred and bounced messages, refused recipients, failed client
//! logins and an unreachable relayhost, and every counter equals both the number the test
//! caused and the number of lines Postfix logged for it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use common::*;
use lettre::address::Envelope;
use lettre::Address;
use smtp_relay::settings::Mode;

const SENT: usize = 5;
const DEFERRED: usize = 3;
const BOUNCED: usize = 2;
const RELAY_DENIED: usize = 4;
const SASL_FAILURES: usize = 2;
const UNREACHABLE: usize = 3;

/// Lines of the mail log from `program` (e.g. `postfix/smtp[`) containing `text`.
/// Lines of `program` saying `text`, but for the relay's own self-check session (its HELO
/// name), which each start adds.
fn logged(log: &str, program: &str, text: &str) -> usize {
    log.lines()
        .filter(|l| l.contains(program) && l.contains(text))
        .filter(|l| !l.contains(smtp_relay::self_check::HELO))
        .count()
}

/// One message from the null sender (as bounces are: no notice comes back for it).
fn send_from_null_sender(relay: &Relay, to: &str) {
    let mut conn = connect(relay.addr(), NET_CLIENT);
    let envelope = Envelope::new(None, vec![to.parse::<Address>().unwrap()]).unwrap();
    conn.send(&envelope, &message("", to, &marker(to)))
        .unwrap_or_else(|e| panic!("{to}: the relay refused the message: {e}"));
    let _ = conn.quit();
}

fn send_from_network(relay: &Relay, to: &str) {
    send(
        relay.addr(),
        NET_CLIENT,
        None,
        "app@example.net",
        to,
        &marker(to),
    )
    .unwrap_or_else(|e| panic!("{to}: the relay refused the message: {e}"));
}

/// Sends what the constants say, and waits until Postfix logged the relayhost's answers; the
/// relayhost is stopped half-way, so the last messages find it unreachable.
fn drive(relay: &Relay, relayhost: ScriptedRelayhost) {
    for i in 0..SENT {
        send_from_network(relay, &format!("ok{i}@elsewhere.org"));
    }
    for i in 0..DEFERRED {
        send_from_network(relay, &format!("defer{i}@elsewhere.org"));
    }
    for i in 0..BOUNCED {
        send_from_null_sender(relay, &format!("bounce{i}@elsewhere.org"));
    }
    for i in 0..RELAY_DENIED {
        let refused = send(
            relay.addr(),
            OTHER_CLIENT,
            None,
            "app@example.net",
            &format!("denied{i}@elsewhere.org"),
            "denied",
        );
        assert!(
            refused.as_ref().is_err_and(|e| e.contains("554")),
            "{refused:?}"
        );
    }
    for _ in 0..SASL_FAILURES {
        let mut conn = connect(relay.addr(), OTHER_CLIENT);
        assert!(login(&mut conn, USER, "not the password").is_err());
        let _ = conn.quit();
    }
    let settled = |sent, deferred, bounced| {
        let log = relay.mail_log();
        (logged(&log, "postfix/smtp[", "status=sent") == sent
            && logged(&log, "postfix/smtp[", "status=deferred") == deferred
            && logged(&log, "postfix/smtp[", "status=bounced") == bounced)
            .then_some(())
    };
    poll("the relayhost's answers in the mail log", DEADLINE, || {
        settled(SENT, DEFERRED, BOUNCED)
    });

    // The relayhost goes away: its port refuses connections.
    drop(relayhost);
    for i in 0..UNREACHABLE {
        send_from_network(relay, &format!("unreachable{i}@elsewhere.org"));
    }
    poll(
        "the unreachable relayhost in the mail log",
        DEADLINE,
        || settled(SENT, DEFERRED + UNREACHABLE, BOUNCED),
    );
}

/// Each row: a series, what the test caused, what Postfix logged for it.
fn expected(log: &str) -> [(&'static str, usize, usize); 7] {
    [
        (
            "smtp_relay_deliveries_total{status=\"sent\"}",
            SENT,
            logged(log, "postfix/smtp[", "status=sent"),
        ),
        (
            "smtp_relay_deliveries_total{status=\"deferred\"}",
            DEFERRED + UNREACHABLE,
            logged(log, "postfix/smtp[", "status=deferred"),
        ),
        (
            "smtp_relay_deliveries_total{status=\"bounced\"}",
            BOUNCED,
            logged(log, "postfix/smtp[", "status=bounced"),
        ),
        (
            "smtp_relay_relayhost_errors_total{reason=\"refused\"}",
            DEFERRED + BOUNCED,
            logged(log, "postfix/smtp[", " said: "),
        ),
        (
            "smtp_relay_relayhost_errors_total{reason=\"connect\"}",
            UNREACHABLE,
            logged(log, "postfix/smtp[", "Connection refused)"),
        ),
        (
            "smtp_relay_smtpd_rejects_total{code=\"554\",reason=\"relay_denied\"}",
            RELAY_DENIED,
            logged(log, "postfix/smtpd[", "Relay access denied"),
        ),
        (
            "smtp_relay_sasl_auth_failures_total",
            SASL_FAILURES,
            logged(log, "postfix/smtpd[", "authentication failed"),
        ),
    ]
}

#[test]
fn every_counter_equals_what_postfix_logged() {
    let relayhost = ScriptedRelayhost::start();
    let mut cfg = config(relayhost.addr().port(), Mode::AllowNetAuthNoDomain);
    // One delivery attempt per message during the test: retries would make the deferred count
    // depend on timing.
    for key in [
        "queue_run_delay",
        "minimal_backoff_time",
        "maximal_backoff_time",
    ] {
        cfg.postconf.insert(key.into(), "3600s".into());
    }
    let mut spec = RelaySpec::new(Input::file(cfg));
    let users = spec.path("users");
    SecretVolume::create(users.clone(), &[(USER, USER_PASSWORD)]);
    if let Input::File(cfg) = &mut spec.input {
        cfg.sasl_users_dir = Some(users);
    }
    let relay = spec.start();

    drive(&relay, relayhost);

    let log = relay.mail_log();
    let metrics = relay.metrics();
    let value = |series: &str| {
        metric_value(&metrics, series).unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
            as usize
    };
    let rows = expected(&log);
    for (series, caused, in_log) in rows {
        assert_eq!(
            (value(series), in_log),
            (caused, caused),
            "{series}: (metric, mail log) against what the test caused\n{}",
            relay.output()
        );
    }
    // Every connection smtpd logged, the readiness checks' included.
    assert_eq!(
        value("smtp_relay_smtpd_connections_total"),
        logged(&log, "postfix/smtpd[", ": connect from ")
    );
    for reason in ["login", "tls", "other"] {
        assert_eq!(
            value(&format!(
                "smtp_relay_relayhost_errors_total{{reason=\"{reason}\"}}"
            )),
            0,
            "{reason}"
        );
    }
    // No credentials for the relayhost: no login to report on.
    assert_eq!(value("smtp_relay_relayhost_login{state=\"unknown\"}"), 1);

    // The queues, counted on the spool: the deferred and the unreachable wait.
    let waiting = DEFERRED + UNREACHABLE;
    assert_eq!(
        value("smtp_relay_queue_messages{queue=\"deferred\"}"),
        waiting
    );
    assert_eq!(relay.queued(), waiting);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as usize;
    let oldest = value("smtp_relay_queue_oldest_message_timestamp_seconds");
    let last_delivery = value("smtp_relay_last_delivery_timestamp_seconds");
    assert!(
        (now - 300..=now).contains(&oldest),
        "oldest message at {oldest}, now {now}"
    );
    assert!(
        (now - 300..=now).contains(&last_delivery),
        "last delivery at {last_delivery}, now {now}"
    );
}

// ---------------------------------------------------------------------------------------------
// Issue 40: what a client sends never changes what the relay reports.

/// One delivery attempt per message: a retry would make the counts depend on timing.
fn one_attempt_each(cfg: &mut smtp_relay::config_file::RelayConfigFile) {
    for key in [
        "queue_run_delay",
        "minimal_backoff_time",
        "maximal_backoff_time",
    ] {
        cfg.postconf.insert(key.into(), "3600s".into());
    }
}

fn value(relay: &Relay, series: &str) -> usize {
    relay
        .metric(series)
        .unwrap_or_else(|| panic!("no {series} in\n{}", relay.metrics())) as usize
}

/// Recipients that spell Postfix's own fields (`status=sent`, `SASL authentication failed`)
/// come before Postfix's fields in its delivery lines: the relay counts what Postfix did, and
/// the relayhost login's state follows the relayhost's answers, whatever the recipients say.
#[test]
fn a_recipient_cannot_count_a_delivery_nor_fail_the_login() {
    let sink = start_sink();
    let mut cfg = config(sink.port(), Mode::AllowNetAuthNoDomain);
    one_attempt_each(&mut cfg);
    let mut spec = RelaySpec::new(Input::file(cfg));
    // smtp-sink takes any login: the relay logs in, and the login is accepted.
    let username = spec.write("relayhost/username", "relay\n");
    let password = spec.write("relayhost/password", "relay secret");
    if let Input::File(cfg) = &mut spec.input {
        cfg.relayhost.username_file = Some(username);
        cfg.relayhost.password_file = Some(password);
    }
    let relay = spec.start();

    // Delivered, to a recipient saying the relayhost refused the login. (The waits below look
    // for more of each line than the recipients spell.)
    let mut conn = connect(relay.addr(), NET_CLIENT);
    send_verbatim(
        &mut conn,
        "app@example.net",
        &[r#""status=deferred (SASL authentication failed"@elsewhere.org"#],
        &message("app@example.net", "x@elsewhere.org", &marker("login")),
    )
    .unwrap();
    let _ = conn.quit();
    poll("the delivery in the mail log", DEADLINE, || {
        (logged(
            &relay.mail_log(),
            "/smtp[",
            "dsn=2.0.0, status=sent (250 2.0.0",
        ) == 1)
            .then_some(())
    });
    let login = |state: &str| {
        value(
            &relay,
            &format!("smtp_relay_relayhost_login{{state=\"{state}\"}}"),
        )
    };
    assert_eq!(
        (
            value(&relay, "smtp_relay_deliveries_total{status=\"sent\"}"),
            value(&relay, "smtp_relay_deliveries_total{status=\"deferred\"}"),
            value(
                &relay,
                "smtp_relay_relayhost_errors_total{reason=\"login\"}"
            ),
            login("accepted"),
            login("refused"),
        ),
        (1, 0, 0, 1, 0),
        "(sent, deferred, login errors, login accepted, login refused)\n{}",
        relay.output()
    );

    // The relayhost goes away: recipients saying their mail was sent wait in the queue. The
    // last one is unqualified: Postfix logs it completed (to=) and as given (orig_to=).
    drop(sink);
    let liars = [
        r#""status=sent x"@elsewhere.org"#,
        r#""x, dsn=2.0.0, status=sent (250"@elsewhere.org"#,
        r#""q\"x>, relay=127.0.0.1[127.0.0.1]:25, delay=0, delays=0/0/0/0, dsn=2.0.0, status=sent (250"@elsewhere.org"#,
        r#""status=sent y""#,
    ];
    let mut conn = connect(relay.addr(), NET_CLIENT);
    send_verbatim(
        &mut conn,
        "app@example.net",
        &liars,
        &message("app@example.net", "x@elsewhere.org", &marker("liars")),
    )
    .unwrap();
    let _ = conn.quit();
    poll("the deferrals in the mail log", DEADLINE, || {
        (logged(&relay.mail_log(), "/smtp[", "dsn=4.4.1, status=deferred (") == liars.len())
            .then_some(())
    });
    let log = relay.mail_log();
    assert_eq!(
        logged(&log, "/smtp[", "orig_to=<\"status=sent y\">"),
        1,
        "{log}"
    );
    assert_eq!(
        (
            value(&relay, "smtp_relay_deliveries_total{status=\"sent\"}"),
            value(&relay, "smtp_relay_deliveries_total{status=\"deferred\"}"),
            value(
                &relay,
                "smtp_relay_relayhost_errors_total{reason=\"connect\"}"
            ),
            value(
                &relay,
                "smtp_relay_relayhost_errors_total{reason=\"login\"}"
            ),
            login("accepted"),
        ),
        (1, liars.len(), liars.len(), 0, 1),
        "(sent, deferred, connect errors, login errors, login accepted)\n{}",
        relay.output()
    );
    // The message waits on the spool for the relayhost (once qmgr moved it to deferred).
    poll("the message deferred on the spool", DEADLINE, || {
        (relay.queued() == 1).then_some(())
    });
}

/// smtpd quotes clients in its log (their addresses and HELO name in reject lines, their
/// commands in warnings): a client spelling a reason, a reject or a failed login counts none
/// of them; each reject counts once, by smtpd's own reason.
#[test]
fn client_text_in_smtpd_lines_counts_nothing() {
    let sink = start_sink();
    let relay =
        RelaySpec::new(Input::file(config(sink.port(), Mode::AllowNetAuthNoDomain))).start();

    // Refused relaying, with addresses spelling other reasons and smtpd's own delimiters.
    let mut conn = connect(relay.addr(), OTHER_CLIENT);
    let refused = send_verbatim(
        &mut conn,
        r#""Sender address rejected; from=<x> to=<y"@example.net"#,
        &[r#""x>: Helo command rejected: y; from=<z> to=<w"@elsewhere.org"#],
        b"",
    );
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("554")),
        "{refused:?}"
    );
    // A command that is no SMTP, quoted by smtpd's warning before it hangs up.
    let (code, _) = reply(
        &mut conn,
        "GET / authentication failed: reject: RCPT from x[1.2.3.4]: 554 5.7.1 <a>: Helo command rejected",
    );
    assert_eq!(code, 221);
    // Sender-specified routing refused, from a client that may relay.
    let mut conn = connect(relay.addr(), NET_CLIENT);
    let refused = send_verbatim(
        &mut conn,
        r#""Relay access denied"@example.net"#,
        &[r#""a@b"@elsewhere.org"#],
        b"",
    );
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("550")),
        "{refused:?}"
    );
    let _ = conn.quit();
    // Commands sent before the greeting, which smtpd quotes ("improper command pipelining");
    // the second is no SMTP either, quoted again.
    {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(relay.addr()).unwrap();
        stream
            .write_all(b"HELO x: reject: RCPT from x[1.2.3.4]: 554 5.7.1 <a>: Relay access denied\r\nwarning: unknown[1.2.3.4]: SASL PLAIN authentication failed\r\nQUIT\r\n")
            .unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let _ = stream.read_to_end(&mut Vec::new());
    }

    poll("smtpd's lines in the mail log", DEADLINE, || {
        let log = relay.mail_log();
        (logged(&log, "postfix/smtpd[", "NOQUEUE: reject: RCPT from") == 2
            && logged(&log, "postfix/smtpd[", "non-SMTP command from") == 2
            && logged(&log, "postfix/smtpd[", "improper command pipelining") == 1)
            .then_some(())
    });
    let metrics = relay.metrics();
    let mut rejects: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("smtp_relay_smtpd_rejects_total{"))
        .collect();
    rejects.sort_unstable();
    assert_eq!(
        (
            rejects,
            metric_value(&metrics, "smtp_relay_sasl_auth_failures_total"),
        ),
        (
            vec![
                "smtp_relay_smtpd_rejects_total{code=\"550\",reason=\"recipient\"} 1",
                "smtp_relay_smtpd_rejects_total{code=\"554\",reason=\"relay_denied\"} 1",
            ],
            Some(0.0)
        ),
        "(every reject series, failed logins)\n{}",
        relay.output()
    );
}

/// Postfix passes a client's 8-bit text to its log once `smtputf8_enable = yes`, checking it
/// only loosely: a header that `header_checks` logs puts bytes that are not UTF-8 in the log.
/// The relay reads on, counting the deliveries after it. (A HELO name or an address that is
/// not UTF-8 never reaches the log: smtpd refuses it, 500 5.5.2, without logging it; with
/// `smtputf8_enable = no`, the relay's default, Postfix logs every 8-bit byte as `?`.)
#[test]
fn bytes_that_are_not_utf8_in_the_log_stop_no_counting() {
    let sink = start_sink();
    let mut cfg = config(sink.port(), Mode::AllowNetAuthNoDomain);
    one_attempt_each(&mut cfg);
    let mut spec = RelaySpec::new(Input::file(cfg));
    let checks = spec.write("header_checks", "/^Subject:/ WARN\n");
    if let Input::File(cfg) = &mut spec.input {
        cfg.postconf.insert("smtputf8_enable".into(), "yes".into());
        cfg.postconf.insert(
            "header_checks".into(),
            format!("regexp:{}", checks.display()),
        );
    }
    let relay = spec.start();

    let codes = raw_session(
        relay.addr(),
        &[
            b"EHLO \xff\xfeclient",
            b"MAIL FROM:<a\xc3\xa9\xa9@example.net>",
            b"QUIT",
        ],
    );
    assert_eq!(codes, [220, 500, 500, 221]);

    let mut conn = connect(relay.addr(), NET_CLIENT);
    send_verbatim(
        &mut conn,
        "app@example.net",
        &["first@elsewhere.org"],
        b"Subject: bad \xc3\xa9\xa9 \xff end\r\n\r\nbody\r\n",
    )
    .unwrap();
    send_verbatim(
        &mut conn,
        "app@example.net",
        &["second@elsewhere.org"],
        b"Subject: plain\r\n\r\nbody\r\n",
    )
    .unwrap();
    let _ = conn.quit();
    // (The sink's dumps are read as UTF-8, so the metrics and the log tell the deliveries.)
    poll("both deliveries counted", DEADLINE, || {
        (relay.metric("smtp_relay_deliveries_total{status=\"sent\"}") == Some(2.0)).then_some(())
    });
    let log = relay.mail_log();
    assert_eq!(logged(&log, "/smtp[", "status=sent"), 2, "{log}");
    assert_eq!(
        logged(
            &log,
            "postfix/cleanup[",
            "warning: header Subject: bad \u{e9}\u{fffd} ? end"
        ),
        1,
        "{log}"
    );
}

/// An address for the metrics that cannot be read ends the relay, as any other fatal error,
/// with a termination message of its own: the pod takes only that file
/// (`terminationMessagePolicy: File`), never its log, which quotes clients.
#[test]
fn a_metrics_address_that_cannot_be_read_is_the_termination_message() {
    let mut vars = env(25, "STRICT");
    vars.insert("RELAY_METRICS_LISTEN".into(), "nowhere:9154".into());
    let spec = RelaySpec::new(Input::Env(vars.clone()));
    let log = spec.write("termination-log", "");
    vars.insert("RELAY_TERMINATION_LOG".into(), log.display().to_string());
    let spec = RelaySpec {
        input: Input::Env(vars),
        ..spec
    };
    let out = spec.run_to_exit();
    assert_eq!(out.status.code(), Some(2));
    let message = std::fs::read_to_string(&log).unwrap();
    assert!(
        message.contains("invalid value 'nowhere:9154' for '--metrics-listen"),
        "{message:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
