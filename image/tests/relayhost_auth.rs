//! Relayhost credentials with awkward passwords, proven by authenticating for real: the upstream
//! is a second `smtp-relay run` that only relays for SASL users, in front of the sink.

mod common;

use common::*;
use smtp_relay::settings::Mode;

/// Passwords that broke the seed's `inline:{relayhost=login:password}` map, and then some.
const PASSWORDS: [(&str, &str); 4] = [
    ("awkward1", "p a}s:s,w=ö rd"),
    ("awkward2", "}{,=: \"'\\$ü€"),
    ("awkward3", "  starts with spaces"),
    ("awkward4", "#not a comment"),
];

/// An upstream that accepts only SASL users (no networks), relaying everything to `sink`.
fn upstream(sink: &Sink, users: &[(&str, &str)]) -> Relay {
    let mut cfg = config(sink.port(), Mode::AllowAuthNoDomain);
    cfg.networks.clear();
    cfg.hostname = Some("upstream.example.net".into());
    let spec = RelaySpec::new(Input::file(cfg));
    let dir = spec.path("users");
    SecretVolume::create(dir.clone(), users);
    let mut spec = spec;
    if let Input::File(cfg) = &mut spec.input {
        cfg.sasl_users_dir = Some(dir);
    }
    spec.start()
}

/// The relay under test, with credentials for `upstream` from files (the operator's path).
fn relay_with_credential_files(upstream: &Relay, user: &str, password: &str) -> Relay {
    let mut spec = RelaySpec::new(Input::file(config(
        upstream.addr().port(),
        Mode::AllowNetAuthNoDomain,
    )));
    let username = spec.write("relayhost/username", &format!("{user}\n"));
    let password_file = spec.write("relayhost/password", password);
    if let Input::File(cfg) = &mut spec.input {
        cfg.relayhost.username_file = Some(username);
        cfg.relayhost.password_file = Some(password_file);
    }
    spec.start()
}

fn relay_and_deliver(relay: &Relay, sink: &Sink, tag: &str) {
    let mark = marker(tag);
    let rcpt = format!("{tag}@elsewhere.org");
    send(
        relay.addr(),
        NET_CLIENT,
        None,
        "app@example.net",
        &rcpt,
        &mark,
    )
    .unwrap_or_else(|e| panic!("{tag}: the relay refused the message: {e}"));
    let m = sink.wait_for(&rcpt, &mark, DEADLINE).unwrap();
    assert!(
        m.text.contains("upstream.example.net"),
        "{tag}: the message went through the upstream:\n{}",
        m.text
    );
}

#[test]
fn awkward_passwords_from_files_authenticate_at_the_upstream() {
    let sink = start_sink();
    let upstream = upstream(&sink, &PASSWORDS);
    for (user, password) in PASSWORDS {
        let mut conn = connect(upstream.addr(), OTHER_CLIENT);
        login(&mut conn, user, password)
            .unwrap_or_else(|e| panic!("{user} logs in at the upstream directly: {e}"));
    }
    let relays: Vec<(&str, Relay)> = PASSWORDS
        .iter()
        .map(|(user, password)| {
            (
                *user,
                relay_with_credential_files(&upstream, user, password),
            )
        })
        .collect();
    for (user, relay) in &relays {
        relay_and_deliver(relay, &sink, user);
        assert!(
            upstream
                .mail_log()
                .contains(&format!("sasl_username={user}@example.net")),
            "{user} logged in at the upstream"
        );
    }
}

#[test]
fn awkward_password_from_the_environment_authenticates_at_the_upstream() {
    let sink = start_sink();
    let password = "env pa}s:s,w=ö rd";
    let upstream = upstream(&sink, &[("envuser", password)]);
    let mut vars = env(upstream.addr().port(), "ALLOW_NETAUTH_NODOMAIN");
    vars.insert("RELAY_LOGIN".into(), "envuser".into());
    vars.insert("RELAY_PASSWORD".into(), password.into());
    let relay = RelaySpec::new(Input::Env(vars)).start();
    relay_and_deliver(&relay, &sink, "envuser");
}

#[test]
fn password_ending_in_white_space_is_a_config_error() {
    // Postfix strips trailing white space from lookup-table values: such a password could never
    // authenticate, so the relay refuses it at start-up instead of deferring mail forever.
    let mut spec = RelaySpec::new(Input::file(config(free_port(), Mode::Strict)));
    let username = spec.write("relayhost/username", "user");
    let password = spec.write("relayhost/password", "ends with a space \n");
    if let Input::File(cfg) = &mut spec.input {
        cfg.relayhost.username_file = Some(username);
        cfg.relayhost.password_file = Some(password);
    }
    let out = spec.run_to_exit();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("relayhost.passwordFile"), "{stderr}");
}

#[test]
fn wrong_password_is_deferred_not_delivered() {
    let sink = start_sink();
    let upstream = upstream(&sink, &[("rightuser", "the right password")]);
    let relay = relay_with_credential_files(&upstream, "rightuser", "the wrong password");
    let mark = marker("wrong");
    send(
        relay.addr(),
        NET_CLIENT,
        None,
        "app@example.net",
        "wrong@elsewhere.org",
        &mark,
    )
    .expect("the relay itself accepts the message");
    poll("the relay to defer the message", DEADLINE, || {
        relay
            .mail_log()
            .lines()
            .any(|l| l.contains("to=<wrong@elsewhere.org>") && l.contains("status=deferred"))
            .then_some(())
    });
    assert!(
        relay.mail_log().contains("SASL authentication failed"),
        "deferred because the upstream refused the login"
    );
    assert!(relay.queued() >= 1, "the message stays queued");
    assert!(!sink.delivered_to("wrong@elsewhere.org"));
}
