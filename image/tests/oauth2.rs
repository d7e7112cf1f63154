//! OAuth2 login to the relayhost, for real: a local token endpoint (client credentials, refresh
//! tokens with rotation, refusals, short-lived tokens) and a relayhost that takes mail only
//! after `AUTH XOAUTH2` with one of that endpoint's tokens, unexpired. Postfix sends the login
//! through the relay's own Cyrus mechanism (image/sasl-xoauth2) with the token the supervisor
//! serves it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::time::Duration;

use common::*;
use smtp_relay::config_file::OAuth2File;
use smtp_relay::settings::{Mode, TlsLevel};

const CLIENT_ID: &str = "00000000-app";
const CLIENT_SECRET: &str = "client-secret-never-logged";
const REFRESH_TOKEN: &str = "rt-configured";
const SENDER: &str = "sender@example.net";

fn policy(lifetime_secs: u64, rotate: bool) -> TokenPolicy {
    TokenPolicy {
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        refresh_token: REFRESH_TOKEN.into(),
        rotate,
        lifetime: Duration::from_secs(lifetime_secs),
        delay: Duration::ZERO,
        service_account: None,
    }
}

/// A relay logging in to `relayhost` with tokens from `endpoint`: client credentials, or a
/// refresh token when `refresh` is set.
fn relay(relayhost: &ScriptedRelayhost, endpoint: &TokenServer, refresh: bool) -> RelaySpec {
    let mut spec = RelaySpec::new(Input::file(config(
        relayhost.addr().port(),
        Mode::AllowNetAuthNoDomain,
    )));
    let id = spec.write("oauth2/client-id", CLIENT_ID);
    let secret = spec.write("oauth2/client-secret", &format!("{CLIENT_SECRET}\n"));
    let refresh_token = refresh.then(|| spec.write("oauth2/refresh-token", REFRESH_TOKEN));
    if let Input::File(cfg) = &mut spec.input {
        cfg.relayhost.oauth2 = Some(OAuth2File {
            user: SENDER.into(),
            token_endpoint: endpoint.url(),
            scope: Some("https://outlook.office365.com/.default".into()),
            client_id_file: Some(id),
            client_secret_file: (!refresh).then_some(secret),
            refresh_token_file: refresh_token,
            service_account_key_file: None,
            shared_refresh_token_secret: None,
        });
        // The relayhost is on loopback without STARTTLS: said explicitly (the default with a
        // login is to require TLS, and the token would never be sent).
        cfg.relayhost.tls_level = Some(TlsLevel::None);
    }
    spec
}

fn send_numbered(relay: &Relay, tag: &str, i: usize) -> String {
    let rcpt = format!("{tag}{i}@elsewhere.org");
    send(
        relay.addr(),
        NET_CLIENT,
        None,
        "app@example.net",
        &rcpt,
        &marker(&rcpt),
    )
    .unwrap_or_else(|e| panic!("{rcpt}: the relay refused the message: {e}"));
    rcpt
}

fn wait_delivered(relayhost: &ScriptedRelayhost, relay: &Relay, rcpts: &[String]) {
    poll("every message at the relayhost", DEADLINE, || {
        let got = relayhost.delivered();
        rcpts.iter().all(|r| got.contains(r)).then_some(())
    });
    assert!(
        !relay.mail_log().contains("status=bounced"),
        "nothing bounced:\n{}",
        relay.output()
    );
}

/// Tokens live 3 s; mail keeps coming for about three of their lifetimes. Every login uses a
/// token the endpoint issued and that has not expired (the relayhost refuses any other), the
/// token is replaced before it expires, and no message is lost or returned.
#[test]
fn client_credentials_log_in_with_fresh_tokens_through_a_burst() {
    let endpoint = TokenServer::start(policy(3, false));
    let relayhost = ScriptedRelayhost::start_with(Some(endpoint.check()));
    let mut spec = relay(&relayhost, &endpoint, false);
    // A new connection, so a new login, for every message: no connection kept for the
    // relayhost (the default keeps them, and a session once logged in outlives its token).
    if let Input::File(cfg) = &mut spec.input {
        cfg.postconf
            .insert("smtp_connection_cache_on_demand".into(), "no".into());
        cfg.postconf
            .insert("smtp_connection_cache_destinations".into(), String::new());
    }
    let relay = spec.start();
    poll("the first token", DEADLINE, || {
        (relay.metric("smtp_relay_oauth2_token_expiry_timestamp_seconds") > Some(0.0)).then_some(())
    });
    let started = std::time::Instant::now();
    let mut rcpts = Vec::new();
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(9) {
        rcpts.push(send_numbered(&relay, "burst", i));
        i += 1;
        std::thread::sleep(Duration::from_millis(150));
    }
    wait_delivered(&relayhost, &relay, &rcpts);
    // Refreshed before it expires, a token is always there: no message even waited.
    assert_eq!(
        relay.mail_log().matches("status=deferred").count(),
        0,
        "a message waited for a token:\n{}",
        relay.mail_log()
    );
    let issued = endpoint.issued();
    assert!(issued.len() >= 3, "a token every ~2 s over 9 s: {issued:?}");
    let transcript = relayhost.transcript();
    let logins = transcript.matches("AUTH XOAUTH2 ").count();
    assert!(
        logins >= rcpts.len(),
        "{logins} logins for {} messages",
        rcpts.len()
    );
    assert!(
        !transcript.contains("Authentication unsuccessful")
            && !relay.mail_log().contains("SASL authentication failed"),
        "no login was refused:\n{}",
        relay.mail_log()
    );
    assert_eq!(
        relay.metric("smtp_relay_relayhost_login{state=\"accepted\"}"),
        Some(1.0)
    );
    assert!(relay.metric("smtp_relay_oauth2_token_refreshes_total{result=\"ok\"}") >= Some(3.0));
    let expiry = relay
        .metric("smtp_relay_oauth2_token_expiry_timestamp_seconds")
        .unwrap();
    assert!(expiry > 1.7e9, "{expiry}");

    // The secret and the tokens are nowhere but in memory and the secret's own file.
    let mut seen = relay.output();
    for file in ["main.cf", "master.cf", "relay.yaml"] {
        seen.push_str(
            &std::fs::read_to_string(relay.spec().postfix_dir().join(file)).unwrap_or_default(),
        );
    }
    seen.push_str(&std::fs::read_to_string(relay.spec().config_path()).unwrap_or_default());
    for secret in issued.iter().map(String::as_str).chain([CLIENT_SECRET]) {
        assert!(
            !seen.contains(secret),
            "{secret} appears in the relay's logs or configuration"
        );
    }
}

/// Postfix asks the token's socketmap for the login of every server it delivers to; only the
/// relayhost gets one. A `transport_maps` entry routing a domain to another server (which
/// offers AUTH, and takes mail without it) delivers there without any AUTH, so without the
/// token, while the relayhost on the same address (another port) still gets its login.
#[test]
fn the_token_goes_to_the_relayhost_alone() {
    let endpoint = TokenServer::start(policy(3600, false));
    let relayhost = ScriptedRelayhost::start_with(Some(endpoint.check()));
    let other = ScriptedRelayhost::start();
    let mut spec = relay(&relayhost, &endpoint, false);
    if let Input::File(cfg) = &mut spec.input {
        cfg.postconf.insert(
            "transport_maps".into(),
            format!(
                "inline:{{routed.example=smtp:[127.0.0.1]:{}}}",
                other.addr().port()
            ),
        );
    }
    let relay = spec.start();
    let to_relayhost = send_numbered(&relay, "relayhost", 0);
    let routed = "someone@routed.example";
    send(
        relay.addr(),
        NET_CLIENT,
        None,
        "app@example.net",
        routed,
        &marker(routed),
    )
    .unwrap_or_else(|e| panic!("{routed}: the relay refused the message: {e}"));
    wait_delivered(&relayhost, &relay, &[to_relayhost]);
    // The other server either takes the mail or is sent a login (which it refuses).
    poll(
        "the routed message to reach the other server",
        DEADLINE,
        || {
            (other.delivered().iter().any(|r| r == routed) || other.transcript().contains("AUTH"))
                .then_some(())
        },
    );
    let transcript = other.transcript();
    assert!(
        !transcript.contains("AUTH"),
        "the other server was sent a login:\n{transcript}\n{}",
        relay.mail_log()
    );
    assert_eq!(other.delivered(), [routed]);
    assert!(relayhost.transcript().contains("AUTH XOAUTH2 "));
}

/// A slow token endpoint (1.5 s to answer): Postfix starts only once the first token is there
/// (or after 5 s), so the first message is sent at once instead of waiting, deferred, for the
/// next queue run.
#[test]
fn the_first_message_finds_a_token() {
    let endpoint = TokenServer::start(TokenPolicy {
        delay: Duration::from_millis(1500),
        ..policy(60, false)
    });
    let relayhost = ScriptedRelayhost::start_with(Some(endpoint.check()));
    let relay = relay(&relayhost, &endpoint, false).start();
    let rcpt = send_numbered(&relay, "first", 0);
    wait_delivered(&relayhost, &relay, std::slice::from_ref(&rcpt));
    assert_eq!(
        relay.mail_log().matches("status=deferred").count(),
        0,
        "the first message waited for a token:\n{}",
        relay.mail_log()
    );
}

/// A provider that rotates refresh tokens refuses the old one after each refresh: the relay
/// follows the rotation, keeps the newest in a 0600 file on the spool's volume, and after a
/// restart uses it (the configured one is refused by then).
#[test]
fn a_rotated_refresh_token_is_followed_and_survives_a_restart() {
    let endpoint = TokenServer::start(policy(2, true));
    let relayhost = ScriptedRelayhost::start_with(Some(endpoint.check()));
    let relay = relay(&relayhost, &endpoint, true).start();
    poll(
        "three refreshes, each rotating the refresh token",
        DEADLINE,
        || {
            (endpoint
                .requests()
                .iter()
                .filter(|r| *r == "refresh_token")
                .count()
                >= 3)
                .then_some(())
        },
    );
    let rcpt = send_numbered(&relay, "rotated", 0);
    wait_delivered(&relayhost, &relay, &[rcpt]);
    assert!(
        !endpoint.requests().iter().any(|r| r == "invalid_grant"),
        "the relay always sent the current refresh token: {:?}",
        endpoint.requests()
    );
    let kept = relay
        .spec()
        .spool_dir()
        .join("smtp-relay/oauth2-refresh-token");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let (status, spec) = relay.stop();
    assert!(status.success(), "{status:?}");
    assert_ne!(
        endpoint.policy().refresh_token,
        REFRESH_TOKEN,
        "rotated away"
    );
    let relay = spec.start();
    let rcpt = send_numbered(&relay, "rotated", 1);
    wait_delivered(&relayhost, &relay, &[rcpt]);
    assert!(!endpoint.requests().iter().any(|r| r == "invalid_grant"));
}

/// The operator writes a rotated refresh token back into the configured one (the user's
/// Secret, then the pod's file). The relay takes the change without refreshing early (a
/// provider rotating at every refresh would otherwise be asked again at every write-back), and
/// a relay starting without its volume's copy logs in with the written-back token.
#[test]
fn a_refresh_token_written_back_is_taken_without_an_early_refresh() {
    let endpoint = TokenServer::start(policy(3600, true));
    let relayhost = ScriptedRelayhost::start_with(Some(endpoint.check()));
    let relay = relay(&relayhost, &endpoint, true).start();
    let refreshes = || {
        endpoint
            .requests()
            .iter()
            .filter(|r| *r == "refresh_token")
            .count()
    };
    poll("the first refresh", DEADLINE, || {
        (refreshes() == 1).then_some(())
    });
    let rotated = endpoint.policy().refresh_token;
    assert_ne!(rotated, REFRESH_TOKEN);
    let applied = || relay.output().matches("applied changed inputs").count();
    let before = applied();
    relay.spec().write("oauth2/refresh-token", &rotated);
    poll(
        "the relay to apply the written-back token",
        DEADLINE,
        || (applied() > before).then_some(()),
    );
    let rcpt = send_numbered(&relay, "written-back", 0);
    wait_delivered(&relayhost, &relay, &[rcpt]);
    assert_eq!(refreshes(), 1, "{:?}", endpoint.requests());

    let (status, spec) = relay.stop();
    assert!(status.success(), "{status:?}");
    std::fs::remove_file(spec.spool_dir().join("smtp-relay/oauth2-refresh-token")).unwrap();
    let relay = spec.start();
    let rcpt = send_numbered(&relay, "written-back", 1);
    wait_delivered(&relayhost, &relay, &[rcpt]);
    assert!(
        !endpoint.requests().iter().any(|r| r == "invalid_grant"),
        "{:?}",
        endpoint.requests()
    );
}

/// A Google service account with domain-wide delegation, end to end: the relay signs an
/// assertion with the account's key (PKCS#8 from the JSON key file) for the mailbox, and the
/// token endpoint checks it as Google's does, with the public key alone (signature, issuer,
/// subject, scope, audience, lifetime) before it issues a token the relayhost takes. A key the
/// endpoint does not know gets nothing: the mail waits.
#[test]
fn a_google_service_account_logs_in_with_a_signed_assertion() {
    const ACCOUNT: &str = "relay@project.iam.gserviceaccount.com";
    const SCOPE: &str = "https://mail.google.com/";
    let keys = tempfile::tempdir().unwrap();
    let key = |name: &str| -> (String, Vec<u8>) {
        let pem = keys.path().join(format!("{name}.pem"));
        let out = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&pem)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let public = std::process::Command::new("openssl")
            .args(["rsa", "-RSAPublicKey_out", "-outform", "DER", "-in"])
            .arg(&pem)
            .output()
            .unwrap();
        assert!(public.status.success(), "{public:?}");
        (std::fs::read_to_string(&pem).unwrap(), public.stdout)
    };
    let (private_pem, public_der) = key("account");
    let (_, other_public_der) = key("other");
    let endpoint_for = |public_key_der: Vec<u8>| {
        TokenServer::start(TokenPolicy {
            service_account: Some(ServiceAccountCheck {
                client_email: ACCOUNT.into(),
                public_key_der,
                subject: SENDER.into(),
                scope: SCOPE.into(),
            }),
            ..policy(3600, false)
        })
    };
    let start = |endpoint: &TokenServer, relayhost: &ScriptedRelayhost| {
        let mut spec = RelaySpec::new(Input::file(config(
            relayhost.addr().port(),
            Mode::AllowNetAuthNoDomain,
        )));
        let json = serde_json::json!({
            "type": "service_account",
            "client_email": ACCOUNT,
            "private_key": private_pem,
            "token_uri": endpoint.url(),
        });
        let key_file = spec.write("oauth2/service-account.json", &json.to_string());
        if let Input::File(cfg) = &mut spec.input {
            cfg.relayhost.oauth2 = Some(OAuth2File {
                user: SENDER.into(),
                token_endpoint: endpoint.url(),
                scope: Some(SCOPE.into()),
                client_id_file: None,
                client_secret_file: None,
                refresh_token_file: None,
                service_account_key_file: Some(key_file),
                shared_refresh_token_secret: None,
            });
            cfg.relayhost.tls_level = Some(TlsLevel::None);
        }
        spec.start()
    };

    let endpoint = endpoint_for(public_der);
    let relayhost = ScriptedRelayhost::start_with(Some(endpoint.check()));
    let relay = start(&endpoint, &relayhost);
    let rcpt = send_numbered(&relay, "google", 0);
    wait_delivered(&relayhost, &relay, &[rcpt]);
    assert_eq!(
        endpoint.requests(),
        ["service_account"],
        "{:?}",
        endpoint.refusals()
    );
    assert!(!relay.output().contains("PRIVATE KEY"));
    drop(relay);

    // The endpoint knows another key: the assertion is refused, nothing is sent.
    let stranger = endpoint_for(other_public_der);
    let relayhost = ScriptedRelayhost::start_with(Some(stranger.check()));
    let relay = start(&stranger, &relayhost);
    let rcpt = send_numbered(&relay, "google", 1);
    relay.wait_deferred(&rcpt);
    assert!(stranger.issued().is_empty());
    assert!(
        stranger
            .refusals()
            .iter()
            .all(|r| r == "the signature is not the account's"),
        "{:?}",
        stranger.refusals()
    );
}

/// A wrong client secret: no token, so no login; the mail waits (deferred, never bounced) and
/// the metrics say why. Once the secret is right (a Secret update), it is delivered.
#[test]
fn a_refused_client_waits_and_delivers_once_the_secret_is_fixed() {
    let endpoint = TokenServer::start(policy(60, false));
    let relayhost = ScriptedRelayhost::start_with(Some(endpoint.check()));
    let spec = relay(&relayhost, &endpoint, false);
    let secret = spec.path("oauth2/client-secret");
    write_atomically(&secret, "the-wrong-secret");
    let relay = spec.start();
    let rcpt = send_numbered(&relay, "refused", 0);
    relay.wait_deferred(&rcpt);
    poll("the refusal counted", DEADLINE, || {
        (relay.metric("smtp_relay_oauth2_token_refreshes_total{result=\"invalid_client\"}")
            >= Some(1.0))
        .then_some(())
    });
    assert!(relay.metric("smtp_relay_oauth2_token_refresh_failures_in_a_row") >= Some(1.0));
    assert!(relay.queued() >= 1, "the message waits");
    assert!(relayhost.delivered().is_empty());

    write_atomically(&secret, CLIENT_SECRET);
    relay.poll_flushing("the message at the relayhost", || {
        relayhost.delivered().contains(&rcpt).then_some(())
    });
    assert!(!relay.mail_log().contains("status=bounced"));
    assert_eq!(
        relay.metric("smtp_relay_oauth2_token_refresh_failures_in_a_row"),
        Some(0.0)
    );
}

/// A token the relayhost does not take (say, without the mailbox's SMTP AUTH permission):
/// the 334 challenge and 535 end the login, the mail is deferred, and the metrics say the
/// relayhost refused the login.
#[test]
fn a_token_the_relayhost_refuses_defers_the_mail() {
    let endpoint = TokenServer::start(policy(60, false));
    let relayhost =
        ScriptedRelayhost::start_with(Some(std::sync::Arc::new(|_: &str, _: &str| false)));
    let relay = relay(&relayhost, &endpoint, false).start();
    let rcpt = send_numbered(&relay, "nope", 0);
    relay.wait_deferred(&rcpt);
    assert!(
        relay.mail_log().contains("SASL authentication failed"),
        "{}",
        relay.mail_log()
    );
    assert_eq!(
        relay.metric("smtp_relay_relayhost_login{state=\"refused\"}"),
        Some(1.0)
    );
    let transcript = relayhost.transcript();
    assert!(transcript.contains("AUTH XOAUTH2 "), "{transcript}");
    assert!(relayhost.delivered().is_empty());
}
