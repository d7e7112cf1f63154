//! The four relay modes against real Postfix: who may relay where, exactly as in
//! shared/reference/seed-modes.md, checked at RCPT and, for accepted mail, at the sink.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use common::*;
use smtp_relay::settings::Mode;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Client {
    /// Inside `networks`, no login.
    Net,
    /// Outside `networks`, SASL-authenticated.
    Sasl,
    /// Outside `networks`, no login.
    Anon,
}

/// seed-modes.md, "Who may relay where": (net in, net out, sasl in, sasl out, anon in, anon out).
fn seed_table(mode: Mode) -> [bool; 6] {
    match mode {
        Mode::Strict => [true, false, true, false, false, false],
        Mode::AllowSaslAuthNoDomain => [true, false, true, true, false, false],
        Mode::AllowNetAuthNoDomain => [true, true, true, false, false, false],
        Mode::AllowAuthNoDomain => [true, true, true, true, false, false],
    }
}

fn matrix(mode: Mode) {
    let sink = start_sink();
    let mut spec = RelaySpec::new(Input::file(config(sink.port(), mode)));
    let users = spec.path("users");
    SecretVolume::create(users.clone(), &[(USER, USER_PASSWORD)]);
    if let Input::File(cfg) = &mut spec.input {
        cfg.sasl_users_dir = Some(users);
    }
    let relay = spec.start();
    let tag = mode.seed_name().to_ascii_lowercase().replace('_', "-");

    let expected = seed_table(mode);
    let mut cells = Vec::new();
    for (i, (client, inside)) in [
        (Client::Net, true),
        (Client::Net, false),
        (Client::Sasl, true),
        (Client::Sasl, false),
        (Client::Anon, true),
        (Client::Anon, false),
    ]
    .into_iter()
    .enumerate()
    {
        let domain = if inside { DOMAIN } else { EXTERNAL };
        let rcpt = format!(
            "{tag}-{}-{}@{domain}",
            format!("{client:?}").to_ascii_lowercase(),
            if inside { "in" } else { "out" }
        );
        let source = if client == Client::Net {
            NET_CLIENT
        } else {
            OTHER_CLIENT
        };
        let mut conn = connect(relay.addr(), source);
        if client == Client::Sasl {
            login(&mut conn, USER, USER_PASSWORD)
                .unwrap_or_else(|e| panic!("{mode}: login as {USER}: {e}"));
        }
        let (code, text) = reply(&mut conn, "MAIL FROM:<app@example.net>");
        assert_eq!(code, 250, "{mode}: MAIL FROM: {text}");
        let (code, text) = reply(&mut conn, &format!("RCPT TO:<{rcpt}>"));
        let accepted = code == 250;
        let mark = marker(&tag);
        if accepted {
            let (code, text) = reply(&mut conn, "DATA");
            assert_eq!(code, 354, "{mode}: DATA: {text}");
            let r = conn
                .message(&message("app@example.net", &rcpt, &mark))
                .unwrap_or_else(|e| panic!("{mode}: end of DATA for {rcpt}: {e}"));
            assert_eq!(u16::from(r.code()), 250);
        } else {
            assert!(
                (500..600).contains(&code),
                "{mode}: {rcpt} got neither 250 nor a refusal: {code} {text}"
            );
        }
        let _ = conn.quit();
        cells.push((client, inside, rcpt, accepted, expected[i], mark, text));
    }

    let wrong: Vec<String> = cells
        .iter()
        .filter(|c| c.3 != c.4)
        .map(|(client, inside, rcpt, accepted, expected, _, text)| {
            format!(
                "{client:?} to {} ({rcpt}): accepted={accepted}, seed says {expected}: {text}",
                if *inside { "relay domain" } else { "external" }
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{mode} differs from the seed at RCPT:\n{}",
        wrong.join("\n")
    );

    for (_, _, rcpt, accepted, _, mark, _) in &cells {
        if *accepted {
            let m = sink.wait_for(rcpt, mark, DEADLINE).unwrap();
            assert_eq!(m.from, "app@example.net");
            assert_eq!(m.rcpts, vec![rcpt.clone()]);
        }
    }
    relay.wait_queue_empty();
    for (_, _, rcpt, accepted, _, _, _) in &cells {
        if !accepted {
            assert!(
                !sink.delivered_to(rcpt),
                "{mode}: refused {rcpt} was delivered"
            );
        }
    }
    // No postmaster notice per refusal either (notify_classes no longer has `policy`, see
    // secure_defaults.rs): the sink got exactly the accepted messages.
    let relayed = sink.messages();
    assert_eq!(
        relayed.len(),
        cells.iter().filter(|c| c.3).count(),
        "{mode}: the sink got exactly the accepted messages: {relayed:?}"
    );
    let (status, _) = relay.stop();
    assert_eq!(status.code(), Some(0), "clean exit on SIGTERM");
}

#[test]
fn mode_strict() {
    matrix(Mode::Strict);
}

#[test]
fn mode_allow_saslauth_nodomain() {
    matrix(Mode::AllowSaslAuthNoDomain);
}

#[test]
fn mode_allow_netauth_nodomain() {
    matrix(Mode::AllowNetAuthNoDomain);
}

#[test]
fn mode_allow_auth_nodomain() {
    matrix(Mode::AllowAuthNoDomain);
}
