//! STARTTLS towards clients: AUTH is offered only inside TLS. (Without a certificate, SASL
//! users are refused at start: `bad_input.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use common::*;
use lettre::transport::smtp::authentication::Mechanism;
use lettre::transport::smtp::extension::{ClientId, Extension};
use smtp_relay::config_file::InboundTlsFile;
use smtp_relay::settings::{Mode, TlsMinVersion};
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn relay(sink: &Sink) -> (Relay, std::path::PathBuf) {
    relay_with(sink, None)
}

/// A relay with SASL users and a certificate, its clients' TLS floor `min` (the default when
/// `None`).
fn relay_with(sink: &Sink, min: Option<TlsMinVersion>) -> (Relay, std::path::PathBuf) {
    let mut cfg = config(sink.port(), Mode::AllowSaslAuthNoDomain);
    cfg.networks.clear();
    cfg.inbound_tls_min_version = min;
    let mut spec = RelaySpec::new(Input::file(cfg));
    let cert_file = with_user_and_certificate(&mut spec);
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

// ---------------------------------------------------------------------------------------------
// Issue 26: what a TLS scanner sees on the STARTTLS port, from real handshakes with the
// `openssl` command (`s_client -starttls smtp`), which, unlike the test's SMTP client, can be
// told to offer one protocol or one class of suites, old ones included (`@SECLEVEL=0`).

/// A STARTTLS handshake with the relay, `args` choosing what the client offers: the
/// negotiated protocol and suite, or why there was none.
fn handshake(addr: SocketAddr, args: &[&str]) -> Result<(String, String), String> {
    let mut child = Command::new("openssl")
        .args(["s_client", "-brief", "-starttls", "smtp", "-connect"])
        .arg(addr.to_string())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client (Debian package openssl)");
    // QUIT ends the session once the handshake is done; s_client then exits.
    let _ = child.stdin.take().unwrap().write_all(b"QUIT\r\n");
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    match (field("Protocol version:"), field("Ciphersuite:")) {
        (Some(protocol), Some(suite)) => Ok((protocol, suite)),
        _ => Err(text
            .lines()
            .filter(|l| l.contains("error") || l.contains("alert"))
            .collect::<Vec<_>>()
            .join(" | ")),
    }
}

/// An AEAD suite: GCM, CCM or ChaCha20-Poly1305 (every TLS 1.3 suite is one).
fn is_aead(suite: &str) -> bool {
    ["GCM", "CCM", "CHACHA20"].iter().any(|a| suite.contains(a))
}

/// The TLS 1.2 suites of an OpenSSL cipher class that this machine's OpenSSL (the relay's
/// Postfix links the same library) can offer at all, even at security level 0.
fn suites_of(class: &str) -> Vec<String> {
    let out = Command::new("openssl")
        .args(["ciphers", "-s", "-tls1_2", "-ciphersuites", ""])
        .arg(format!("{class}:@SECLEVEL=0"))
        .output()
        .expect("openssl ciphers");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .split(':')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Every protocol and suite class a scanner grades, against a relay with SASL users and the
/// default floor: TLS 1.2 and 1.3 only; at TLS 1.2 no anonymous, null, export, RC4, (3)DES,
/// MD5, CBC (SHA-1, SHA-256 or SHA-384 MACs) or static-RSA suite, whatever the client offers;
/// the server's order, not the client's, so the strongest suite both know wins.
#[test]
fn the_starttls_port_offers_only_what_a_scanner_grades_clean() {
    let sink = start_sink();
    let (relay, _) = relay(&sink);
    let addr = relay.addr();
    let old = ["-cipher", "ALL:@SECLEVEL=0"];

    for protocol in ["-tls1", "-tls1_1"] {
        let got = handshake(addr, &[&[protocol][..], &old[..]].concat());
        assert!(got.is_err(), "{protocol} is refused: {got:?}");
    }
    let (protocol, suite) = handshake(addr, &["-tls1_2"]).expect("TLS 1.2");
    assert_eq!(protocol, "TLSv1.2");
    assert!(
        is_aead(&suite) && suite.starts_with("ECDHE-"),
        "forward secret and AEAD: {suite}"
    );
    let (protocol, suite) = handshake(addr, &["-tls1_3"]).expect("TLS 1.3");
    assert_eq!(protocol, "TLSv1.3");
    assert!(is_aead(&suite), "{suite}");

    // Each class alone, as a scanner offers it. A class this OpenSSL does not have (RC4,
    // 3DES, EXPORT in Debian's OpenSSL 3) cannot be negotiated by the relay's either.
    let mut tried = Vec::new();
    for class in [
        "aNULL", "eNULL", "EXPORT", "RC4", "3DES", "DES", "MD5", "SHA1", "SHA256", "SHA384", "kRSA",
    ] {
        if suites_of(class).is_empty() {
            continue;
        }
        let cipher = format!("{class}:@SECLEVEL=0");
        let got = handshake(addr, &["-tls1_2", "-cipher", &cipher]);
        assert!(got.is_err(), "{class} suites are refused: {got:?}");
        tried.push(class);
    }
    for class in ["aNULL", "eNULL", "SHA1", "kRSA"] {
        assert!(tried.contains(&class), "{class} was offered: {tried:?}");
    }
    // All the weak ones at once, as a client that knows nothing better.
    let got = handshake(
        addr,
        &[
            "-tls1_2",
            "-cipher",
            "aNULL:eNULL:RC4:3DES:SHA1:@SECLEVEL=0",
        ],
    );
    assert!(got.is_err(), "{got:?}");

    // Server preference: the client lists AES-128 first, the relay picks AES-256.
    let (_, suite) = handshake(
        addr,
        &[
            "-tls1_2",
            "-cipher",
            "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384",
        ],
    )
    .expect("TLS 1.2 with two good suites");
    assert_eq!(suite, "ECDHE-RSA-AES256-GCM-SHA384", "the server's order");
    let (_, suite) = handshake(
        addr,
        &[
            "-tls1_3",
            "-ciphersuites",
            "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384",
        ],
    )
    .expect("TLS 1.3 with two suites");
    assert_eq!(suite, "TLS_AES_256_GCM_SHA384", "the server's order");
}

/// The opt-down for legacy devices (`inboundTlsMinVersion: TLSv1.0`): TLS 1.0 and 1.1 with
/// their CBC suites come back, anonymous and null suites stay out, and the server's order
/// still gives a modern client an AEAD suite over the CBC one it lists first.
#[test]
fn a_legacy_floor_lets_tls_1_0_in_and_nothing_anonymous() {
    let sink = start_sink();
    let (relay, _) = relay_with(&sink, Some(TlsMinVersion::Tls1_0));
    let addr = relay.addr();
    let old = ["-cipher", "ALL:@SECLEVEL=0"];

    for (flag, name) in [("-tls1", "TLSv1"), ("-tls1_1", "TLSv1.1")] {
        let (protocol, suite) =
            handshake(addr, &[&[flag][..], &old[..]].concat()).expect("a legacy protocol");
        assert_eq!(protocol, name);
        assert!(suite.ends_with("-SHA") && !suite.contains("ADH"), "{suite}");
    }
    for protocol in ["-tls1", "-tls1_2"] {
        for class in ["aNULL", "eNULL"] {
            let cipher = format!("{class}:@SECLEVEL=0");
            let got = handshake(addr, &[protocol, "-cipher", &cipher]);
            assert!(got.is_err(), "{protocol} {class}: {got:?}");
        }
    }
    let (_, suite) = handshake(
        addr,
        &[
            "-tls1_2",
            "-cipher",
            "AES128-SHA:ECDHE-RSA-AES256-GCM-SHA384:@SECLEVEL=0",
        ],
    )
    .expect("TLS 1.2");
    assert_eq!(suite, "ECDHE-RSA-AES256-GCM-SHA384", "the server's order");
    let (_, suite) = handshake(addr, &["-tls1_2", "-cipher", "SHA1:@SECLEVEL=0"])
        .expect("CBC-SHA1 for the devices that need it");
    assert!(suite.ends_with("-SHA"), "{suite}");
}

/// Issue 26: a renewed certificate, written into the mounted Secret as the kubelet does, is
/// served to the next client without restarting Postfix: the supervisor reloads it, so an
/// smtpd that already served the old one (and waits, idle, for the next session) is replaced.
#[test]
fn a_renewed_certificate_is_served_without_a_restart() {
    let sink = start_sink();
    let mut cfg = config(sink.port(), Mode::AllowSaslAuthNoDomain);
    cfg.networks.clear();
    let mut spec = RelaySpec::new(Input::file(cfg));
    let users = spec.path("users");
    SecretVolume::create(users.clone(), &[(USER, USER_PASSWORD)]);
    let pair = |name: &str| {
        let dir = spec.path(name);
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = self_signed_cert(&dir);
        let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
        (cert.clone(), read(&cert), read(&key))
    };
    let (first, first_crt, first_key) = pair("first");
    let (renewed, renewed_crt, renewed_key) = pair("renewed");
    let dir = spec.path("tls");
    let mut tls = SecretVolume::create(
        dir.clone(),
        &[("tls.crt", &first_crt), ("tls.key", &first_key)],
    );
    if let Input::File(cfg) = &mut spec.input {
        cfg.sasl_users_dir = Some(users);
        cfg.inbound_tls = Some(InboundTlsFile {
            cert_file: dir.join("tls.crt"),
            key_file: dir.join("tls.key"),
        });
    }
    let relay = spec.start();
    let master = relay.master_pid().expect("master.pid");
    let starttls = |trusted: &std::path::Path| {
        let mut conn = connect(relay.addr(), OTHER_CLIENT);
        let ok = conn
            .starttls(
                &tls_params(trusted),
                &ClientId::Domain("client.test".into()),
            )
            .is_ok();
        let _ = conn.quit();
        ok
    };
    assert!(starttls(&first), "the first certificate is served");

    tls.update(&[("tls.crt", &renewed_crt), ("tls.key", &renewed_key)]);
    // A new smtpd may read the new files before the reload; the reload replaces the ones that
    // still hold the old certificate, idle between sessions.
    poll("the supervisor to reload Postfix", DEADLINE, || {
        relay
            .output()
            .contains("the certificate offered to clients changed")
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    for _ in 0..5 {
        assert!(starttls(&renewed), "the renewed certificate is served");
        assert!(!starttls(&first), "the first one is no longer served");
    }
    assert_eq!(relay.master_pid(), Some(master), "same Postfix master");
    assert_eq!(
        relay.mail_log().matches("daemon started").count(),
        1,
        "Postfix never restarted"
    );
}
