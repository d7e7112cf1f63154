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
fn logged(log: &str, program: &str, text: &str) -> usize {
    log.lines()
        .filter(|l| l.contains(program) && l.contains(text))
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
