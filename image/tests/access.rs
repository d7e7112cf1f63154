//! Who may send as whom, and to whom (issue 27), against real Postfix: allowed senders and
//! recipients refuse the rest with a 5xx at RCPT time, for every client; a SASL user bound to
//! senders may use only those, while other users and the clients of `networks` keep what they
//! had.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use common::*;
use smtp_relay::config_file::{RecipientsFile, SenderBindingFile, SendersFile};
use smtp_relay::settings::Mode;

/// The reply to `RCPT TO:<to>` after `MAIL FROM:<from>` on `conn`, which is then reset.
fn rcpt(
    conn: &mut lettre::transport::smtp::client::SmtpConnection,
    from: &str,
    to: &str,
) -> (u16, String) {
    let (code, text) = reply(conn, &format!("MAIL FROM:<{from}>"));
    assert_eq!(code, 250, "MAIL FROM:<{from}>: {text}");
    let answer = reply(conn, &format!("RCPT TO:<{to}>"));
    let (code, text) = reply(conn, "RSET");
    assert_eq!(code, 250, "RSET: {text}");
    answer
}

#[test]
fn senders_and_recipients_outside_the_lists_are_refused_at_rcpt_time() {
    let sink = start_sink();
    // Clients of networks may relay anywhere: only the lists restrict them.
    let mut cfg = config(sink.port(), Mode::AllowNetAuthNoDomain);
    cfg.senders = Some(SendersFile {
        allowed: vec!["example.net".into(), "Alerts@partner.example".into()],
        ..SendersFile::default()
    });
    cfg.recipients = Some(RecipientsFile {
        allowed: vec!["elsewhere.org".into(), "ops@example.net".into()],
    });
    let relay = RelaySpec::new(Input::file(cfg)).start();
    let mut conn = connect(relay.addr(), NET_CLIENT);
    for (from, to, expected) in [
        ("app@example.net", "ops@example.net", 250),
        // A domain covers its subdomains, an address matches in any case.
        ("app@mail.example.net", "x@elsewhere.org", 250),
        ("alerts@PARTNER.example", "x@eu.elsewhere.org", 250),
        ("someone@partner.example", "ops@example.net", 553),
        ("app@example.net.evil.example", "ops@example.net", 553),
        ("app@notexample.net", "ops@example.net", 553),
        ("", "ops@example.net", 553),
        ("app@example.net", "other@example.net", 550),
        ("app@example.net", "x@elsewhere.org.evil.example", 550),
    ] {
        let (code, text) = rcpt(&mut conn, from, to);
        assert_eq!(code, expected, "<{from}> to <{to}>: {text}");
        match code {
            553 => assert!(
                text.contains("Sender address rejected: not among the senders this relay accepts"),
                "{text}"
            ),
            550 => assert!(
                text.contains(
                    "Recipient address rejected: not among the recipients this relay sends to"
                ),
                "{text}"
            ),
            _ => {}
        }
    }
    // What is accepted is delivered.
    send_on(&mut conn, "app@example.net", "ops@example.net", "allowed-1").unwrap();
    let _ = conn.quit();
    sink.wait_for("ops@example.net", "allowed-1", DEADLINE)
        .unwrap();
}

#[test]
fn a_bound_user_sends_only_as_its_senders() {
    let sink = start_sink();
    let relay = bound_relay(&sink);
    let owned = "Sender address rejected: not owned by user";

    // The bound user, by its name and by its name in the relay domain's realm.
    for login_name in [USER.to_string(), format!("{USER}@{DOMAIN}")] {
        let mut conn = connect(relay.addr(), OTHER_CLIENT);
        login(&mut conn, &login_name, USER_PASSWORD).unwrap();
        for (from, expected) in [
            ("billing@example.net", 250),
            ("BILLING@example.net", 250),
            ("x@notify.example.net", 250),
            ("x@eu.notify.example.net", 250),
            ("other@example.net", 553),
            ("billing@example.net.evil.example", 553),
        ] {
            let (code, text) = rcpt(&mut conn, from, "ops@example.net");
            assert_eq!(code, expected, "{login_name} as <{from}>: {text}");
            if code == 553 {
                assert!(text.contains(owned), "{text}");
            }
        }
        send_on(
            &mut conn,
            "billing@example.net",
            "ops@example.net",
            &login_name,
        )
        .unwrap();
        let _ = conn.quit();
        sink.wait_for("ops@example.net", &login_name, DEADLINE)
            .unwrap();
    }

    // Another user, and a client of networks, send as anyone, as before.
    let mut conn = connect(relay.addr(), OTHER_CLIENT);
    login(&mut conn, "app2", "app2 secret").unwrap();
    for from in ["billing@example.net", "other@example.net"] {
        let (code, text) = rcpt(&mut conn, from, "ops@example.net");
        assert_eq!(code, 250, "app2 as <{from}>: {text}");
    }
    let _ = conn.quit();
    let mut conn = connect(relay.addr(), NET_CLIENT);
    let (code, text) = rcpt(&mut conn, "other@example.net", "ops@example.net");
    assert_eq!(code, 250, "a client of networks: {text}");
    let _ = conn.quit();
}

/// The relay's [`USER`] bound to `billing@example.net` and the domain `notify.example.net`;
/// `app2` unbound. Its `postconf` leaves the login out of the macros Postfix sends milters
/// at MAIL FROM: the relay's milter asks for it itself.
fn bound_relay(sink: &Sink) -> Relay {
    let mut spec = RelaySpec::new(Input::file(config(sink.port(), Mode::Strict)));
    if let Input::File(cfg) = &mut spec.input {
        cfg.postconf
            .insert("milter_mail_macros".into(), "i {mail_addr}".into());
    }
    let users = spec.path("users");
    SecretVolume::create(
        users.clone(),
        &[(USER, USER_PASSWORD), ("app2", "app2 secret")],
    );
    if let Input::File(cfg) = &mut spec.input {
        cfg.sasl_users_dir = Some(users);
        cfg.senders = Some(SendersFile {
            bindings: vec![SenderBindingFile {
                user: USER.into(),
                senders: vec!["billing@example.net".into(), "notify.example.net".into()],
            }],
            ..SendersFile::default()
        });
    }
    spec.start()
}

/// A message from the CEO in its `From:` header.
fn ceo(marker: &str) -> Vec<u8> {
    format!(
        "From: CEO <ceo@example.net>\r\nTo: <ops@example.net>\r\nSubject: {marker}\r\n\r\n{marker}\r\n"
    )
    .into_bytes()
}

/// The bound user's envelope sender is its own, the `From:` header a receiver shows is not:
/// refused at the end of DATA by the relay's milter, naming the address and the user. Another
/// user, and a client of networks, send the same header as before.
#[test]
fn a_bound_users_from_header_is_held_to_its_senders() {
    let sink = start_sink();
    let relay = bound_relay(&sink);
    let mut conn = connect(relay.addr(), OTHER_CLIENT);
    login(&mut conn, USER, USER_PASSWORD).unwrap();
    let refused = send_verbatim(
        &mut conn,
        "billing@example.net",
        &["ops@example.net"],
        &ceo("spoofed"),
    )
    .unwrap_err();
    assert!(
        refused.contains("550")
            && refused.contains("<ceo@example.net>: From header rejected: not owned by user app1"),
        "{refused}"
    );
    let _ = conn.quit();
    let mut conn = connect(relay.addr(), OTHER_CLIENT);
    login(&mut conn, "app2", "app2 secret").unwrap();
    send_verbatim(
        &mut conn,
        "app2@example.net",
        &["ops@example.net"],
        &ceo("app2-ceo"),
    )
    .unwrap();
    let _ = conn.quit();
    let mut conn = connect(relay.addr(), NET_CLIENT);
    send_verbatim(
        &mut conn,
        "net@example.net",
        &["ops@example.net"],
        &ceo("net-ceo"),
    )
    .unwrap();
    let _ = conn.quit();
    for marker in ["app2-ceo", "net-ceo"] {
        sink.wait_for_subject("ops@example.net", marker, DEADLINE)
            .unwrap();
    }
    let log = relay.mail_log();
    assert!(!log.contains("warning: milter"), "{log}");
}

/// A milter smtpd cannot reach defers the session (smtpd opens its milter connection at the
/// client's), so a bound user's message is never let through unchecked, whatever `postconf`
/// says of milters.
#[test]
fn without_its_milter_a_bound_user_is_told_to_retry() {
    let sink = start_sink();
    let relay = bound_relay(&sink);
    let socket = relay
        .spec()
        .spool_dir()
        .join(smtp_relay::postfix::layout::MILTER_SOCKET);
    std::fs::remove_file(&socket).unwrap();
    let mut conn = connect(relay.addr(), OTHER_CLIENT);
    let refused = login(&mut conn, USER, USER_PASSWORD)
        .and_then(|_| {
            send_on(
                &mut conn,
                "billing@example.net",
                "ops@example.net",
                "unchecked",
            )
        })
        .unwrap_err();
    assert!(refused.contains("transient error (45"), "{refused}");
    let _ = conn.quit();
}
