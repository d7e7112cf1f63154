//! Limits per client (issue 27), against real Postfix: over a limit of messages, recipients or
//! connections per interval, a client of `networks` too gets a 4xx (it retries later) and
//! nothing bounces; the relay counts each refusal by limit on its metrics page.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use common::*;
use smtp_relay::config_file::{LimitsFile, RateLimitsFile};
use smtp_relay::settings::Mode;

fn limited(sink: &Sink, limits: LimitsFile) -> Relay {
    let mut cfg = config(sink.port(), Mode::Strict);
    cfg.rate_limits = Some(RateLimitsFile {
        // Long enough that no count expires during the test.
        interval_seconds: Some(3600),
        per_client: Some(limits),
        per_user: None,
    });
    RelaySpec::new(Input::file(cfg)).start()
}

/// The relay's count of refusals over `limit`, once it is at least `n`.
fn wait_counted(relay: &Relay, limit: &str, n: f64) {
    relay.wait_metric(
        &format!("smtp_relay_smtpd_rate_limited_total{{limit=\"{limit}\"}}"),
        n,
    );
}

#[test]
fn over_its_message_limit_a_client_of_networks_is_told_to_retry() {
    let sink = start_sink();
    let relay = limited(
        &sink,
        LimitsFile {
            messages: Some(2),
            ..Default::default()
        },
    );
    let mut conn = connect(relay.addr(), NET_CLIENT);
    for i in 0..2 {
        send_on(
            &mut conn,
            "app@example.net",
            "ops@example.net",
            &format!("limited-{i}"),
        )
        .unwrap();
    }
    let (code, text) = reply(&mut conn, "MAIL FROM:<app@example.net>");
    assert_eq!(code, 450, "the third message: {text}");
    assert!(text.contains("too much mail"), "{text}");
    let _ = conn.quit();
    wait_counted(&relay, "messages", 1.0);
    for i in 0..2 {
        sink.wait_for("ops@example.net", &format!("limited-{i}"), DEADLINE)
            .unwrap();
    }
    relay.wait_queue_empty();
    assert!(
        !relay.mail_log().contains("status=bounced"),
        "nothing bounces"
    );
}

#[test]
fn over_its_recipient_and_connection_limits_a_client_is_told_to_retry() {
    let sink = start_sink();
    let relay = limited(
        &sink,
        LimitsFile {
            recipients: Some(2),
            connections: Some(3),
            ..Default::default()
        },
    );
    let mut conn = connect(relay.addr(), NET_CLIENT);
    let (code, text) = reply(&mut conn, "MAIL FROM:<app@example.net>");
    assert_eq!(code, 250, "{text}");
    for rcpt in ["a@example.net", "b@example.net"] {
        let (code, text) = reply(&mut conn, &format!("RCPT TO:<{rcpt}>"));
        assert_eq!(code, 250, "{rcpt}: {text}");
    }
    let (code, text) = reply(&mut conn, "RCPT TO:<c@example.net>");
    assert_eq!(code, 450, "the third recipient: {text}");
    assert!(text.contains("too many recipients"), "{text}");
    let _ = conn.quit();
    wait_counted(&relay, "recipients", 1.0);

    // The session above was the first connection of three; the fourth is refused.
    let refused = poll("a connection over the limit", DEADLINE, || {
        let conn = lettre::transport::smtp::client::SmtpConnection::connect(
            relay.addr(),
            Some(std::time::Duration::from_secs(5)),
            &lettre::transport::smtp::extension::ClientId::Domain("client.test".into()),
            None,
            Some(ip(NET_CLIENT)),
        );
        match conn {
            Ok(mut c) => {
                let _ = c.quit();
                None
            }
            Err(e) => Some(e.to_string()),
        }
    });
    assert!(refused.contains("421"), "{refused}");
    wait_counted(&relay, "connections", 1.0);
}
