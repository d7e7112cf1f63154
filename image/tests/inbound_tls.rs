//! STARTTLS towards clients: AUTH is offered only inside TLS. (Without a certificate, SASL
//! users are refused at start: `bad_input.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use common::*;
use lettre::transport::smtp::authentication::Mechanism;
use lettre::transport::smtp::extension::{ClientId, Extension};
use smtp_relay::config_file::InboundTlsFile;
use smtp_relay::settings::Mode;

fn relay(sink: &Sink) -> (Relay, std::path::PathBuf) {
    let mut cfg = config(sink.port(), Mode::AllowSaslAuthNoDomain);
    cfg.networks.clear();
    let mut spec = RelaySpec::new(Input::file(cfg));
    let users = spec.path("users");
    SecretVolume::create(users.clone(), &[(USER, USER_PASSWORD)]);
    let dir = spec.path("tls");
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_file, key_file) = self_signed_cert(&dir);
    if let Input::File(cfg) = &mut spec.input {
        cfg.sasl_users_dir = Some(users);
        cfg.inbound_tls = Some(InboundTlsFile {
            cert_file: cert_file.clone(),
            key_file,
        });
    }
    (spec.start(), cert_file)
}

#[test]
fn with_inbound_tls_auth_only_after_starttls() {
    let sink = start_sink();
    let (relay, cert) = relay(&sink);

    let mut conn = connect(relay.addr(), OTHER_CLIENT);
    let info = conn.server_info().clone();
    assert!(
        info.supports_feature(Extension::StartTls),
        "EHLO offers STARTTLS: {info}"
    );
    assert!(
        !info.supports_auth_mechanism(Mechanism::Plain)
            && !info.supports_auth_mechanism(Mechanism::Login),
        "no AUTH before STARTTLS: {info}"
    );
    let (code, text) = reply(&mut conn, "AUTH PLAIN AGFwcDEAYXBwMSBzZWNyZXQ=");
    assert!(code >= 500, "AUTH in plain text is refused: {code} {text}");

    conn.starttls(&tls_params(&cert), &ClientId::Domain("client.test".into()))
        .expect("STARTTLS with the relay's certificate");
    assert!(conn.is_encrypted());
    let info = conn.server_info().clone();
    assert!(
        info.supports_auth_mechanism(Mechanism::Plain),
        "AUTH offered after STARTTLS: {info}"
    );
    assert!(login(&mut conn, USER, "wrong password").is_err());
    login(&mut conn, USER, USER_PASSWORD).expect("login inside TLS");
    let mark = marker("tls");
    send_on(&mut conn, "app@example.net", "tls@elsewhere.org", &mark)
        .expect("an authenticated client relays anywhere in ALLOW_SASLAUTH_NODOMAIN");
    let _ = conn.quit();
    sink.wait_for("tls@elsewhere.org", &mark, DEADLINE).unwrap();

    // The test client of the image speaks STARTTLS too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smtp-relay"))
        .env_clear()
        .env("SMTP_PASSWORD", USER_PASSWORD)
        .args(["send", "--server", &relay.addr().to_string()])
        .args(["--from", "app@example.net", "--user", USER])
        .args(["--starttls", "required", "--tls-name", "localhost"])
        .arg("--ca-file")
        .arg(&cert)
        .arg("send-tls@elsewhere.org")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "smtp-relay send --starttls required: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(poll("send-tls at the sink", DEADLINE, || sink
        .delivered_to("send-tls@elsewhere.org")
        .then_some(true)));
}
