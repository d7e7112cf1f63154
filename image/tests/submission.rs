//! The submission ports (issue 27), against real Postfix: 587 requires STARTTLS before
//! anything else, 465 speaks TLS from the first byte, and on both only a SASL user gets past
//! `RCPT TO`, a client of `networks` included; after the login the relay's own restrictions
//! decide, as on port 25.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use common::*;
use lettre::transport::smtp::authentication::Mechanism;
use lettre::transport::smtp::client::{SmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use smtp_relay::config_file::SubmissionFile;
use smtp_relay::settings::Mode;
use std::path::PathBuf;
use std::time::Duration;

struct Submission {
    relay: Relay,
    cert: PathBuf,
    starttls: u16,
    implicit_tls: u16,
}

fn relay(sink: &Sink) -> Submission {
    let (starttls, implicit_tls) = (free_port(), free_port());
    let mut spec = RelaySpec::new(Input::file(config(sink.port(), Mode::Strict)));
    let cert = with_user_and_certificate(&mut spec);
    if let Input::File(cfg) = &mut spec.input {
        cfg.submission = Some(SubmissionFile {
            starttls_port: Some(starttls),
            implicit_tls_port: Some(implicit_tls),
        });
    }
    let relay = spec.start();
    poll("the implicit TLS port", DEADLINE, || {
        smtps_ready(loopback(implicit_tls)).then_some(())
    });
    Submission {
        relay,
        cert,
        starttls,
        implicit_tls,
    }
}

/// A session to `port` from `source`, in TLS from the first byte when `tls` is given.
fn session(port: u16, source: [u8; 4], tls: Option<&TlsParameters>) -> SmtpConnection {
    SmtpConnection::connect(
        loopback(port),
        Some(Duration::from_secs(30)),
        &ClientId::Domain("client.test".into()),
        tls,
        Some(ip(source)),
    )
    .unwrap_or_else(|e| panic!("connecting to {port}: {e}"))
}

/// `RCPT TO:<to>` after `MAIL FROM:<app@example.net>`: its code and text.
fn rcpt(conn: &mut SmtpConnection, to: &str) -> (u16, String) {
    let (code, text) = reply(conn, "MAIL FROM:<app@example.net>");
    assert_eq!(code, 250, "MAIL FROM: {text}");
    let answer = reply(conn, &format!("RCPT TO:<{to}>"));
    reply(conn, "RSET");
    answer
}

#[test]
fn the_starttls_port_takes_mail_only_inside_tls_and_after_a_login() {
    let sink = start_sink();
    let s = relay(&sink);
    let hello = ClientId::Domain("client.test".into());

    // Before STARTTLS: no AUTH offered, and no mail taken, from a client of networks too.
    let mut conn = session(s.starttls, NET_CLIENT, None);
    assert!(!conn.server_info().supports_auth_mechanism(Mechanism::Plain));
    let (code, text) = reply(&mut conn, "MAIL FROM:<app@example.net>");
    assert_eq!(code, 530, "MAIL before STARTTLS: {text}");
    assert!(text.contains("STARTTLS"), "{text}");

    // Inside TLS without a login: refused at RCPT, whoever the client is.
    conn.starttls(&tls_params(&s.cert), &hello).unwrap();
    let (code, text) = rcpt(&mut conn, "ops@example.net");
    assert_eq!(code, 554, "no login: {text}");
    assert!(
        text.contains("Client host rejected: Access denied"),
        "{text}"
    );

    // Logged in: the relay's restrictions, Strict here (the relay domains only).
    login(&mut conn, USER, USER_PASSWORD).unwrap();
    let (code, text) = rcpt(&mut conn, "x@elsewhere.org");
    assert_eq!(
        code, 554,
        "Strict keeps a user to the relay domains: {text}"
    );
    assert!(text.contains("Relay access denied"), "{text}");
    send_on(
        &mut conn,
        "app@example.net",
        "ops@example.net",
        "submission-587",
    )
    .unwrap();
    let _ = conn.quit();
    sink.wait_for("ops@example.net", "submission-587", DEADLINE)
        .unwrap();
}

#[test]
fn the_implicit_tls_port_speaks_tls_first_and_requires_a_login() {
    let sink = start_sink();
    let s = relay(&sink);
    let tls = tls_params(&s.cert);

    let mut conn = session(s.implicit_tls, NET_CLIENT, Some(&tls));
    assert!(conn.is_encrypted());
    let (code, text) = rcpt(&mut conn, "ops@example.net");
    assert_eq!(code, 554, "no login: {text}");
    login(&mut conn, USER, USER_PASSWORD).unwrap();
    send_on(
        &mut conn,
        "app@example.net",
        "ops@example.net",
        "submission-465",
    )
    .unwrap();
    let _ = conn.quit();
    sink.wait_for("ops@example.net", "submission-465", DEADLINE)
        .unwrap();

    // Plain text there is no SMTP: the client's EHLO meets a TLS handshake.
    let plain = SmtpConnection::connect(
        loopback(s.implicit_tls),
        Some(Duration::from_secs(5)),
        &ClientId::Domain("client.test".into()),
        None,
        None,
    );
    assert!(
        plain.is_err(),
        "a plain-text session on the implicit TLS port"
    );
    // Port 25 is as it was: a client of networks sends without a login.
    send(
        s.relay.addr(),
        NET_CLIENT,
        None,
        "app@example.net",
        "ops@example.net",
        "port-25",
    )
    .unwrap();
}
