//! Limits per SASL user (issue 27), against real Postfix and the relay's own policy service:
//! over a limit a user's recipients get a 4xx (it retries later), nothing bounces, other users
//! and anonymous clients of `networks` go on; under load from many sessions at once the limit
//! lets exactly its count through.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use common::*;
use lettre::transport::smtp::client::SmtpConnection;
use smtp_relay::config_file::{LimitsFile, RateLimitsFile};

const OTHER_USER: &str = "app2";
const OTHER_PASSWORD: &str = "app2 secret";

/// A relay whose users [`USER`] and [`OTHER_USER`] are held to `limits` per hour.
fn limited(sink: &Sink, limits: LimitsFile) -> Relay {
    let mut spec = RelaySpec::new(Input::file(config(
        sink.port(),
        smtp_relay::settings::Mode::Strict,
    )));
    with_user_and_certificate(&mut spec);
    let users = spec.path("users");
    SecretVolume::create(
        users,
        &[(USER, USER_PASSWORD), (OTHER_USER, OTHER_PASSWORD)],
    );
    if let Input::File(cfg) = &mut spec.input {
        cfg.rate_limits = Some(RateLimitsFile {
            // Long enough that no count expires during the test.
            interval_seconds: Some(3600),
            per_client: None,
            per_user: Some(limits),
        });
    }
    spec.start()
}

fn logged_in(relay: &Relay, user: &str, password: &str) -> SmtpConnection {
    let mut conn = connect(relay.addr(), OTHER_CLIENT);
    login(&mut conn, user, password).unwrap();
    conn
}

/// The relay's count of `user`'s refusals over `limit`, once it is at least `n`.
fn wait_counted(relay: &Relay, user: &str, limit: &str, n: f64) {
    relay.wait_metric(
        &format!("smtp_relay_user_rate_limited_total{{user=\"{user}\",limit=\"{limit}\"}}"),
        n,
    );
}

#[test]
fn over_its_message_limit_a_user_is_told_to_retry_and_nobody_else_is() {
    let sink = start_sink();
    let relay = limited(
        &sink,
        LimitsFile {
            messages: Some(2),
            ..Default::default()
        },
    );
    // Two messages, the first to two recipients (one message), in two sessions.
    let mut conn = logged_in(&relay, USER, USER_PASSWORD);
    send_verbatim(
        &mut conn,
        "app@example.net",
        &["a@example.net", "b@example.net"],
        &message("app@example.net", "a@example.net", "limited-0"),
    )
    .unwrap();
    let _ = conn.quit();
    let mut conn = logged_in(&relay, USER, USER_PASSWORD);
    send_on(&mut conn, "app@example.net", "a@example.net", "limited-1").unwrap();
    // The third is refused at its recipient, with the limit named.
    let (code, text) = reply(&mut conn, "MAIL FROM:<app@example.net>");
    assert_eq!(code, 250, "{text}");
    let (code, text) = reply(&mut conn, "RCPT TO:<a@example.net>");
    assert_eq!(code, 450, "the third message: {text}");
    assert!(
        text.contains("4.7.1") && text.contains("limit per login reached: 2 messages per 3600 s"),
        "{text}"
    );
    let _ = conn.quit();
    // The same user logged in with its realm is the same user.
    let mut conn = logged_in(&relay, &format!("{USER}@{DOMAIN}"), USER_PASSWORD);
    let refused = send_on(&mut conn, "app@example.net", "a@example.net", "realm").unwrap_err();
    assert!(refused.contains("450"), "{refused}");
    let _ = conn.quit();
    wait_counted(&relay, USER, "messages", 2.0);

    // Another user has its own count, and an anonymous client of networks is not held back.
    let mut conn = logged_in(&relay, OTHER_USER, OTHER_PASSWORD);
    for i in 0..2 {
        send_on(
            &mut conn,
            "other@example.net",
            "a@example.net",
            &format!("other-{i}"),
        )
        .unwrap();
    }
    let _ = conn.quit();
    let mut conn = connect(relay.addr(), NET_CLIENT);
    for i in 0..3 {
        send_on(
            &mut conn,
            "net@example.net",
            "a@example.net",
            &format!("net-{i}"),
        )
        .unwrap();
    }
    let _ = conn.quit();
    for marker in ["limited-1", "other-1", "net-2"] {
        sink.wait_for("a@example.net", marker, DEADLINE).unwrap();
    }
    sink.wait_for("b@example.net", "limited-0", DEADLINE)
        .unwrap();
    relay.wait_queue_empty();
    let log = relay.mail_log();
    assert!(!log.contains("status=bounced"), "nothing bounces");
    assert!(!log.contains("problem talking to server"), "{log}");
}

#[test]
fn over_its_recipient_and_session_limits_a_user_is_told_to_retry() {
    let sink = start_sink();
    let relay = limited(
        &sink,
        LimitsFile {
            recipients: Some(2),
            connections: Some(2),
            ..Default::default()
        },
    );
    let mut conn = logged_in(&relay, USER, USER_PASSWORD);
    let (code, text) = reply(&mut conn, "MAIL FROM:<app@example.net>");
    assert_eq!(code, 250, "{text}");
    for rcpt in ["a@example.net", "b@example.net"] {
        let (code, text) = reply(&mut conn, &format!("RCPT TO:<{rcpt}>"));
        assert_eq!(code, 250, "{rcpt}: {text}");
    }
    let (code, text) = reply(&mut conn, "RCPT TO:<c@example.net>");
    assert_eq!(code, 450, "the third recipient: {text}");
    assert!(text.contains("2 recipients per 3600 s"), "{text}");
    let _ = conn.quit();
    wait_counted(&relay, USER, "recipients", 1.0);

    // Sessions: a second counts at its first recipient (refused here, over the recipients'
    // limit: not counted); the user whose sessions are all used is refused in a third.
    let relay = limited(
        &sink,
        LimitsFile {
            connections: Some(2),
            ..Default::default()
        },
    );
    for i in 0..2 {
        let mut conn = logged_in(&relay, USER, USER_PASSWORD);
        send_on(
            &mut conn,
            "app@example.net",
            "a@example.net",
            &format!("session-{i}"),
        )
        .unwrap();
        // More messages in a session counted already pass.
        send_on(
            &mut conn,
            "app@example.net",
            "a@example.net",
            &format!("again-{i}"),
        )
        .unwrap();
        let _ = conn.quit();
    }
    let mut conn = logged_in(&relay, USER, USER_PASSWORD);
    let refused = send_on(&mut conn, "app@example.net", "a@example.net", "third").unwrap_err();
    assert!(refused.contains("2 sessions per 3600 s"), "{refused}");
    let _ = conn.quit();
    wait_counted(&relay, USER, "connections", 1.0);
    sink.wait_for("a@example.net", "again-1", DEADLINE).unwrap();
}

/// Many sessions of one user at once, each sending messages as fast as it can: the policy
/// service lets exactly the limit through, refuses the rest with a 4xx, and never fails
/// (smtpd would then defer with its `default_action`, or log a problem talking to it).
#[test]
fn under_load_a_limit_lets_exactly_its_count_through() {
    const SESSIONS: usize = 16;
    const EACH: usize = 25;
    const LIMIT: usize = 150;
    let sink = start_sink();
    let relay = limited(
        &sink,
        LimitsFile {
            messages: Some(LIMIT as u32),
            ..Default::default()
        },
    );
    let addr = relay.addr();
    let outcomes: Vec<(usize, usize, Vec<String>)> = std::thread::scope(|scope| {
        let sessions: Vec<_> = (0..SESSIONS)
            .map(|s| {
                scope.spawn(move || {
                    let session = || {
                        let mut conn = connect(addr, OTHER_CLIENT);
                        login(&mut conn, USER, USER_PASSWORD).unwrap();
                        conn
                    };
                    let mut conn = session();
                    let (mut sent, mut deferred, mut other) = (0, 0, Vec::new());
                    for m in 0..EACH {
                        match send_on(
                            &mut conn,
                            "app@example.net",
                            "load@example.net",
                            &format!("load-{s}-{m}"),
                        ) {
                            Ok(_) => sent += 1,
                            Err(e) if e.contains("limit per login reached") => {
                                deferred += 1;
                                // lettre closes a session after a refusal.
                                conn = session();
                            }
                            Err(e) => other.push(e),
                        }
                    }
                    let _ = conn.quit();
                    (sent, deferred, other)
                })
            })
            .collect();
        sessions.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let sent: usize = outcomes.iter().map(|o| o.0).sum();
    let deferred: usize = outcomes.iter().map(|o| o.1).sum();
    let other: Vec<&String> = outcomes.iter().flat_map(|o| &o.2).collect();
    assert!(other.is_empty(), "refusals other than the limit: {other:?}");
    assert_eq!(sent, LIMIT, "accepted");
    assert_eq!(deferred, SESSIONS * EACH - LIMIT, "told to retry");
    wait_counted(&relay, USER, "messages", (SESSIONS * EACH - LIMIT) as f64);
    relay.poll_flushing("every accepted message delivered", || {
        (sink
            .recipients()
            .iter()
            .filter(|r| r.as_str() == "load@example.net")
            .count()
            == LIMIT)
            .then_some(())
    });
    let log = relay.mail_log();
    assert!(!log.contains("problem talking to server"), "{log}");
    assert!(!log.contains("4.3.5"), "{log}");
}

/// A policy service smtpd cannot reach defers the recipients of users (with the relay's own
/// words, whatever `postconf` says of policy services): it never lets them through uncounted.
#[test]
fn without_its_policy_service_a_user_is_told_to_retry() {
    let sink = start_sink();
    let relay = limited(
        &sink,
        LimitsFile {
            messages: Some(100),
            ..Default::default()
        },
    );
    // Before any smtpd connected to it, the socket goes away.
    let socket = relay
        .spec()
        .spool_dir()
        .join(smtp_relay::postfix::layout::POLICY_SOCKET);
    std::fs::remove_file(&socket).unwrap();
    let mut conn = logged_in(&relay, USER, USER_PASSWORD);
    let refused = send_on(&mut conn, "app@example.net", "a@example.net", "unchecked").unwrap_err();
    assert!(
        refused.contains("451") && refused.contains("the limits per login cannot be checked"),
        "{refused}"
    );
    let _ = conn.quit();
    // Anonymous clients of networks are not asked about: they never wait on the service.
    send(
        relay.addr(),
        NET_CLIENT,
        None,
        "net@example.net",
        "a@example.net",
        "net",
    )
    .unwrap();
    sink.wait_for("a@example.net", "net", DEADLINE).unwrap();
}
