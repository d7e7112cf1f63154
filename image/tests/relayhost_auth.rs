//! Relayhost credentials with awkward passwords, proven by authenticating for real: the upstream
//! is a second `smtp-relay run` that only relays for SASL users, in front of the sink. And the
//! login goes only to a relayhost that proved its name (issue 26): by default (`secure`), its
//! certificate must come from a trusted CA and name the relayhost as the relay was given it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use common::*;
use smtp_relay::config_file::InboundTlsFile;
use smtp_relay::settings::{Mode, TlsLevel};

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

/// The certificate `upstream` presents (self-signed, for localhost and 127.0.0.1): the CA the
/// relay is given to verify it.
fn upstream_ca(upstream: &Relay) -> std::path::PathBuf {
    upstream.spec().test_cert().0
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
        // The default with credentials, secure: the upstream offers STARTTLS (it has SASL
        // users, so it has a certificate) and AUTH only inside it, and its certificate, given
        // as the CA, names 127.0.0.1 (an IP subjectAltName).
        cfg.relayhost.tls_level = None;
        cfg.relayhost.tls_ca_file = Some(upstream_ca(upstream));
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
    // The relay's metrics say the relayhost took the login (its status.queue shows it).
    poll(&format!("{tag}: the login accepted"), DEADLINE, || {
        (relay.metric("smtp_relay_relayhost_login{state=\"accepted\"}") == Some(1.0)).then_some(())
    });
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
    // No level: the default with credentials, secure, logs in inside STARTTLS once the
    // upstream proved it is 127.0.0.1 with a certificate from the CA given.
    vars.insert(
        "RELAY_TLS_CA".into(),
        upstream_ca(&upstream).display().to_string(),
    );
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
    relay.wait_deferred("wrong@elsewhere.org");
    assert!(
        relay.mail_log().contains("SASL authentication failed"),
        "deferred because the upstream refused the login"
    );
    assert!(relay.queued() >= 1, "the message stays queued");
    assert!(!sink.delivered_to("wrong@elsewhere.org"));
    assert_eq!(
        relay.metric("smtp_relay_relayhost_login{state=\"refused\"}"),
        Some(1.0),
        "the metrics say the relayhost refused the login"
    );
    assert!(relay.metric("smtp_relay_relayhost_errors_total{reason=\"login\"}") >= Some(1.0));
}

/// Issue 13, point 2: with credentials and no TLS level, a relayhost that offers AUTH without
/// STARTTLS never receives the password; the mail waits in the queue. (Before, the level was
/// `may` and the relay sent `AUTH PLAIN <base64 of the password>`.)
#[test]
fn a_relayhost_without_starttls_never_receives_the_password() {
    let fake = ScriptedRelayhost::start();
    let password = "never-in-clear-text";
    let mut spec = RelaySpec::new(Input::file(config(
        fake.addr().port(),
        Mode::AllowNetAuthNoDomain,
    )));
    let username = spec.write("relayhost/username", "user");
    let password_file = spec.write("relayhost/password", password);
    if let Input::File(cfg) = &mut spec.input {
        // By name (localhost is 127.0.0.1): the default level then needs no CA of its own.
        cfg.relayhost.host = "localhost".into();
        cfg.relayhost.username_file = Some(username);
        cfg.relayhost.password_file = Some(password_file);
        cfg.relayhost.tls_level = None;
    }
    let relay = spec.start();
    let mark = marker("no-starttls");
    send(
        relay.addr(),
        NET_CLIENT,
        None,
        "app@example.net",
        "someone@elsewhere.org",
        &mark,
    )
    .expect("the relay itself accepts the message");
    relay.wait_deferred("someone@elsewhere.org");
    let transcript = fake.transcript();
    assert!(
        transcript.contains("EHLO"),
        "the relay connected: {transcript}"
    );
    assert!(
        !transcript.to_ascii_uppercase().contains("AUTH") && !transcript.contains(password),
        "the relayhost got no AUTH command:\n{transcript}"
    );
    assert!(
        relay
            .mail_log()
            .contains("TLS is required, but was not offered"),
        "deferred for want of TLS"
    );
    assert!(relay.queued() >= 1, "the message stays queued");
}

/// An upstream relay like [`upstream`] that offers STARTTLS with a certificate from a test CA
/// (and, like every relay with a certificate, AUTH only after it).
fn tls_upstream(
    sink: &Sink,
    users: &[(&str, &str)],
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Relay {
    tls_upstream_with(sink, users, cert, key, false)
}

/// [`tls_upstream`], or with `implicit_tls` an SMTPS one: TLS from the first byte, as on 465.
fn tls_upstream_with(
    sink: &Sink,
    users: &[(&str, &str)],
    cert: &std::path::Path,
    key: &std::path::Path,
    implicit_tls: bool,
) -> Relay {
    let mut cfg = config(sink.port(), Mode::AllowAuthNoDomain);
    cfg.networks.clear();
    cfg.hostname = Some("upstream.example.net".into());
    cfg.inbound_tls = Some(InboundTlsFile {
        cert_file: cert.to_path_buf(),
        key_file: key.to_path_buf(),
    });
    if implicit_tls {
        cfg.postconf
            .insert("smtpd_tls_wrappermode".into(), "yes".into());
    }
    let mut spec = RelaySpec::new(Input::file(cfg));
    spec.implicit_tls = implicit_tls;
    let dir = spec.path("users");
    SecretVolume::create(dir.clone(), users);
    if let Input::File(cfg) = &mut spec.input {
        cfg.sasl_users_dir = Some(dir);
    }
    spec.start()
}

/// Issue 13, point 2: a relayhost speaking TLS from the first byte (SMTPS, port 465 in the
/// wild): `implicitTls` logs in inside it, at the default level with a login (`secure`, not
/// the `encrypt` implicit TLS alone asks for), verified against the CA given by file.
#[test]
fn credentials_travel_inside_implicit_tls_to_an_smtps_relayhost() {
    let sink = start_sink();
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = ca_signed_cert(certs.path());
    let upstream = tls_upstream_with(&sink, &[("smtpsuser", "smtps pass")], &cert, &key, true);
    let mut spec = RelaySpec::new(Input::file(config(
        upstream.addr().port(),
        Mode::AllowNetAuthNoDomain,
    )));
    let username = spec.write("relayhost/username", "smtpsuser");
    let password_file = spec.write("relayhost/password", "smtps pass");
    if let Input::File(cfg) = &mut spec.input {
        cfg.relayhost.username_file = Some(username);
        cfg.relayhost.password_file = Some(password_file);
        cfg.relayhost.implicit_tls = true;
        cfg.relayhost.tls_level = None;
        cfg.relayhost.tls_ca_file = Some(ca);
        cfg.postconf.insert("smtp_tls_loglevel".into(), "1".into());
    }
    let relay = spec.start();
    relay_and_deliver(&relay, &sink, "smtps");
    let log = relay.mail_log();
    assert!(
        log.contains("Verified TLS connection established to 127.0.0.1"),
        "{log}"
    );
    assert!(
        upstream
            .mail_log()
            .contains("sasl_username=smtpsuser@example.net"),
        "logged in at the SMTPS upstream"
    );
}

/// A certificate for `san` (e.g. `DNS:localhost,IP:127.0.0.1`) signed by the test CA of
/// [`ca_signed_cert`] made in `dir`: (certificate, key), named after `name`.
fn signed_by_test_ca(
    dir: &std::path::Path,
    name: &str,
    san: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key, csr, ext) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.csr")),
        dir.join(format!("{name}.ext")),
    );
    std::fs::write(
        &ext,
        format!("subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\n"),
    )
    .unwrap();
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(std::process::Command::new("openssl")
        .args(["req", "-subj", &format!("/CN={name}")])
        .args([
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr));
    run(std::process::Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
        .arg("-in")
        .arg(&csr)
        .arg("-CA")
        .arg(dir.join("ca.crt"))
        .arg("-CAkey")
        .arg(dir.join("ca.key"))
        .arg("-extfile")
        .arg(&ext)
        .arg("-out")
        .arg(&cert));
    (cert, key)
}

/// A relay logging in to `[host]:port` with a password, at TLS level `level` (`None`: the
/// default), trusting `ca` (`None`: the system CAs).
fn relay_logging_in_to(
    host: &str,
    port: u16,
    level: Option<TlsLevel>,
    ca: Option<&std::path::Path>,
    (user, password): (&str, &str),
) -> Relay {
    let mut spec = RelaySpec::new(Input::file(config(port, Mode::AllowNetAuthNoDomain)));
    let username = spec.write("relayhost/username", user);
    let password_file = spec.write("relayhost/password", password);
    if let Input::File(cfg) = &mut spec.input {
        cfg.relayhost.host = host.into();
        cfg.relayhost.username_file = Some(username);
        cfg.relayhost.password_file = Some(password_file);
        cfg.relayhost.tls_level = level;
        cfg.relayhost.tls_ca_file = ca.map(std::path::Path::to_path_buf);
        // Postfix logs how the TLS session was checked only from log level 1.
        cfg.postconf.insert("smtp_tls_loglevel".into(), "1".into());
    }
    spec.start()
}

/// Issue 26, (a): with a login and no level, the relay logs in once the relayhost proved its
/// name: a certificate from the CA given that names the relayhost as the relay was given it, a
/// host name (DNS subjectAltName) or an address (IP subjectAltName). Before, the default was
/// `encrypt` and Postfix checked nothing ("Trusted TLS connection": the chain, not the name).
#[test]
fn the_default_level_logs_in_once_the_relayhost_proved_its_name() {
    let sink = start_sink();
    let certs = tempfile::tempdir().unwrap();
    let (ca, _, _) = ca_signed_cert(certs.path());
    // No DNS name holding the address: 127.0.0.1 is matched as an address.
    let (cert, key) = signed_by_test_ca(certs.path(), "upstream", "DNS:localhost,IP:127.0.0.1");
    let upstream = tls_upstream(&sink, &[("tlsuser", "tls pass")], &cert, &key);
    for (host, level) in [
        ("localhost", None),
        ("127.0.0.1", None),
        ("127.0.0.1", Some(TlsLevel::Verify)),
    ] {
        let relay = relay_logging_in_to(
            host,
            upstream.addr().port(),
            level,
            Some(&ca),
            ("tlsuser", "tls pass"),
        );
        let tag = format!(
            "tls-{}-{}",
            host.replace('.', "-"),
            level.map_or("default", TlsLevel::as_str)
        );
        relay_and_deliver(&relay, &sink, &tag);
        let log = relay.mail_log();
        let verified = format!("Verified TLS connection established to {host}[127.0.0.1]");
        assert!(log.contains(&verified), "{tag}: {verified}:\n{log}");
        let m = sink
            .messages()
            .into_iter()
            .find(|m| m.rcpts.contains(&format!("{tag}@elsewhere.org")))
            .unwrap();
        assert!(
            m.text.contains("with ESMTPSA"),
            "{tag}: the upstream received it over TLS (S) after AUTH (A):\n{}",
            m.text
        );
    }
    assert!(
        upstream
            .mail_log()
            .contains("sasl_username=tlsuser@example.net"),
        "logged in at the upstream"
    );
}

/// The smtpd session summaries of `upstream`'s log (`disconnect from ... ehlo=2 starttls=1
/// ...`): every command each client sent.
fn sessions(upstream: &Relay) -> Vec<String> {
    upstream
        .mail_log()
        .lines()
        .filter(|l| l.contains("postfix/smtpd") && l.contains(": disconnect from "))
        .map(str::to_string)
        .collect()
}

/// Sends a message for `rcpt` through `relay`, which logs in to `upstream`, and checks that
/// `upstream` got no AUTH command: the message deferred (not returned) because the relayhost's
/// certificate was not verified, counted as a TLS failure, no login answered.
fn deferred_without_a_login(what: &str, upstream: &Relay, relay: &Relay, sink: &Sink, rcpt: &str) {
    send(
        relay.addr(),
        NET_CLIENT,
        None,
        "app@example.net",
        rcpt,
        &marker(rcpt),
    )
    .expect("the relay itself accepts the message");
    relay.wait_deferred(rcpt);
    let log = relay.mail_log();
    assert!(
        log.lines().any(|l| l.contains(&format!("to=<{rcpt}>"))
            && l.contains("status=deferred")
            && l.contains("Server certificate not verified")),
        "{what}: deferred because the relayhost did not prove its name:\n{log}"
    );
    assert!(!log.contains("status=bounced"), "{what}: nothing returned");
    assert!(relay.queued() >= 1, "{what}: the message stays queued");
    assert!(!sink.delivered_to(rcpt), "{what}");
    assert!(
        relay.metric("smtp_relay_relayhost_errors_total{reason=\"tls\"}") >= Some(1.0),
        "{what}: counted as a TLS failure:\n{}",
        relay.metrics()
    );
    assert_eq!(
        relay.metric("smtp_relay_relayhost_login{state=\"unverified\"}"),
        Some(1.0),
        "{what}: no login was sent, and the state says why (the operator's RelayhostLogin=False, RelayhostNotVerified)"
    );
    let seen = sessions(upstream);
    assert!(
        seen.iter().any(|l| l.contains("starttls=1")),
        "{what}: the relay reached the upstream and started TLS: {seen:?}"
    );
    assert!(
        seen.iter().all(|l| !l.contains(" auth=")),
        "{what}: no AUTH command reached the upstream: {seen:?}"
    );
}

/// A relay logging in with OAuth2 (client credentials from `endpoint`) to `[localhost]:port`
/// at the default level, trusting `ca`.
fn relay_with_oauth2_to(port: u16, ca: &std::path::Path, endpoint: &TokenServer) -> Relay {
    let mut spec = RelaySpec::new(Input::file(config(port, Mode::AllowNetAuthNoDomain)));
    let id = spec.write("oauth2/client-id", "app");
    let secret = spec.write("oauth2/client-secret", "app-secret");
    if let Input::File(cfg) = &mut spec.input {
        cfg.relayhost.host = "localhost".into();
        cfg.relayhost.tls_level = None;
        cfg.relayhost.tls_ca_file = Some(ca.to_path_buf());
        cfg.relayhost.oauth2 = Some(smtp_relay::config_file::OAuth2File {
            user: "sender@example.net".into(),
            token_endpoint: endpoint.url(),
            client_id_file: Some(id),
            client_secret_file: Some(secret),
            ..Default::default()
        });
    }
    spec.start()
}

/// Issue 26, (b): a relayhost that cannot prove its name (a certificate from the right CA for
/// another name or address, or for its name from a CA nobody gave the relay) gets neither the
/// password nor an OAuth2 token: no AUTH command reaches it, the mail waits in the queue (never
/// returned), and the relay says why (its log, and `smtp_relay_relayhost_errors_total{reason=
/// "tls"}` with no login recorded). Before, at `encrypt`, each of them received `AUTH PLAIN`.
#[test]
fn a_relayhost_that_cannot_prove_its_name_gets_no_login() {
    let sink = start_sink();
    let certs = tempfile::tempdir().unwrap();
    let (ca, _, _) = ca_signed_cert(certs.path());
    let (other_cert, other_key) =
        signed_by_test_ca(certs.path(), "other", "DNS:other.example.net,IP:192.0.2.25");
    let password = "never-to-an-impostor";
    let impostor = tls_upstream(&sink, &[("user", password)], &other_cert, &other_key);
    // A certificate for localhost and 127.0.0.1 from a CA of its own (the relay's test one).
    let own = certs.path().join("self-signed");
    std::fs::create_dir_all(&own).unwrap();
    let (own_cert, own_key) = self_signed_cert(&own);
    let unknown_ca = tls_upstream(&sink, &[("user", password)], &own_cert, &own_key);
    let endpoint = TokenServer::start(TokenPolicy {
        client_id: "app".into(),
        client_secret: "app-secret".into(),
        refresh_token: String::new(),
        rotate: false,
        lifetime: std::time::Duration::from_secs(3600),
        delay: std::time::Duration::ZERO,
        service_account: None,
    });
    let cases = [
        (
            "another name",
            &impostor,
            relay_logging_in_to(
                "localhost",
                impostor.addr().port(),
                None,
                Some(&ca),
                ("user", password),
            ),
        ),
        (
            "another address",
            &impostor,
            relay_logging_in_to(
                "127.0.0.1",
                impostor.addr().port(),
                None,
                Some(&ca),
                ("user", password),
            ),
        ),
        (
            "an unknown CA",
            &unknown_ca,
            relay_logging_in_to(
                "localhost",
                unknown_ca.addr().port(),
                None,
                None,
                ("user", password),
            ),
        ),
        (
            "an OAuth2 token",
            &impostor,
            relay_with_oauth2_to(impostor.addr().port(), &ca, &endpoint),
        ),
    ];
    for (i, (what, upstream, relay)) in cases.iter().enumerate() {
        deferred_without_a_login(
            what,
            upstream,
            relay,
            &sink,
            &format!("impostor{i}@elsewhere.org"),
        );
    }
    assert!(
        !endpoint.issued().is_empty(),
        "the OAuth2 relay had a token to hand over, and kept it"
    );
    for upstream in [&impostor, &unknown_ca] {
        assert!(
            !upstream.mail_log().contains("sasl_username="),
            "no login at {}",
            upstream.addr()
        );
    }
}

/// Issue 26, (c): `encrypt`, the old default, still encrypts without checking who answers,
/// but only when chosen (and then flagged): the same impostor receives the login.
#[test]
fn encrypt_accepts_any_certificate_only_when_chosen() {
    let sink = start_sink();
    let certs = tempfile::tempdir().unwrap();
    let (ca, _, _) = ca_signed_cert(certs.path());
    let (cert, key) = signed_by_test_ca(certs.path(), "other", "DNS:other.example.net");
    let upstream = tls_upstream(&sink, &[("tlsuser", "tls pass")], &cert, &key);
    let relay = relay_logging_in_to(
        "localhost",
        upstream.addr().port(),
        Some(TlsLevel::Encrypt),
        Some(&ca),
        ("tlsuser", "tls pass"),
    );
    relay_and_deliver(&relay, &sink, "encrypt-chosen");
    let log = relay.mail_log();
    assert!(
        log.contains("Trusted TLS connection established to localhost[127.0.0.1]")
            && !log.contains("Verified TLS connection"),
        "encrypted, the name unchecked:\n{log}"
    );
    assert!(upstream
        .mail_log()
        .contains("sasl_username=tlsuser@example.net"));
}

/// Issue 26: with a relayhost login, `postconf` cannot undo what protects it. Through every
/// input path (`POSTCONF_*`, `RELAY_EXTRAS_SETTINGS`, the config file's `postconf`), a
/// parameter that would let the password out in clear text (here: TLS off, plain-text AUTH
/// allowed outside TLS, as in the issue) stops the relay before Postfix starts, naming the
/// entry and the field that owns the parameter; the relayhost never hears from it. Before,
/// the relay started and sent `AUTH PLAIN <password>` to a relayhost without STARTTLS.
#[test]
fn postconf_cannot_let_the_relayhost_password_out_in_clear() {
    let fake = ScriptedRelayhost::start();
    let password = "never-in-clear-text";
    let with_login = |extra: &[(&str, &str)]| {
        let mut vars = env(fake.addr().port(), "ALLOW_NETAUTH_NODOMAIN");
        vars.insert("RELAY_LOGIN".into(), "user".into());
        vars.insert("RELAY_PASSWORD".into(), password.into());
        for (k, v) in extra {
            vars.insert((*k).into(), (*v).into());
        }
        RelaySpec::new(Input::Env(vars))
    };
    let from_file = {
        let mut spec = RelaySpec::new(Input::file(config(
            fake.addr().port(),
            Mode::AllowNetAuthNoDomain,
        )));
        let username = spec.write("relayhost/username", "user");
        let password_file = spec.write("relayhost/password", password);
        if let Input::File(cfg) = &mut spec.input {
            cfg.relayhost.username_file = Some(username);
            cfg.relayhost.password_file = Some(password_file);
            // The fields say: a login, so TLS (encrypt). The postconf of the issue undoes it.
            cfg.relayhost.tls_level = None;
            cfg.postconf
                .insert("smtp_tls_security_level".into(), "none".into());
            cfg.postconf
                .insert("smtp_sasl_security_options".into(), "noanonymous".into());
        }
        spec
    };
    let cases = [
        (
            from_file,
            "postconf.smtp_sasl_security_options",
            "relayhost.tlsLevel",
        ),
        (
            with_login(&[("POSTCONF_smtp_tls_security_level", "none")]),
            "POSTCONF_smtp_tls_security_level",
            "RELAY_USE_TLS",
        ),
        (
            with_login(&[(
                "RELAY_EXTRAS_SETTINGS",
                "smtp_sasl_security_options=noanonymous",
            )]),
            "RELAY_EXTRAS_SETTINGS",
            "RELAY_TLS_VERIFY",
        ),
    ];
    for (spec, entry, field) in cases {
        let stderr = refused_at_start(&spec, &fake);
        assert_eq!(stderr.trim().lines().count(), 1, "{entry}: {stderr}");
        assert!(
            stderr.contains(entry)
                && stderr.contains("protects the relayhost login")
                && stderr.contains(field),
            "{entry}: the refusal names the entry and the field that owns it: {stderr}"
        );
        assert!(master_pid(&spec.spool_dir()).is_none(), "{entry}");
    }
    assert_eq!(
        fake.transcript(),
        "",
        "the relayhost never heard from the relay"
    );
}

/// Runs `spec` expecting the relay to refuse its input (exit code 2); returns its stderr. A
/// relay that starts instead is sent a message, so the failure shows what the relayhost then
/// received, and is stopped.
fn refused_at_start(spec: &RelaySpec, relayhost: &ScriptedRelayhost) -> String {
    use std::io::Read as _;
    use std::process::Stdio;
    let mut child = spec
        .command()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let exited = poll("the relay to exit or serve", DEADLINE, || {
        match child.try_wait().unwrap() {
            Some(status) => Some(Some(status)),
            None => smtp_ready(spec.addr()).then_some(None),
        }
    });
    let Some(status) = exited else {
        let sent = send(
            spec.addr(),
            NET_CLIENT,
            None,
            "app@example.net",
            "someone@elsewhere.org",
            &marker("issue-26"),
        );
        let _ = poll_until(DEADLINE, || {
            relayhost
                .transcript()
                .to_ascii_uppercase()
                .contains("AUTH ")
        });
        smtp_relay_e2e::tools::stop_child(&mut child, DEADLINE);
        smtp_relay_e2e::mail::kill_master(&spec.spool_dir());
        panic!(
            "the relay started instead of refusing its input (message: {sent:?}); the relayhost received:\n{}",
            relayhost.transcript()
        );
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    stderr
}

/// Whether `f` holds within `timeout`, polling.
fn poll_until(timeout: std::time::Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    false
}
