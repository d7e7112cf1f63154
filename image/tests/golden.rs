//! Golden files of what Postfix sees: `main.cf` and `master.cf` for each relay mode, as the
//! relay writes them for the operator's config file (`image/tests/golden/`), and `main.cf` with
//! the legacy clients' TLS floor and with paced deliveries. A change to the generated
//! configuration shows as a diff in review. Regenerate with
//! `UPDATE_GOLDEN=1 cargo test -p smtp-relay --test golden`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use smtp_relay::config_file::{InboundTlsFile, RelayConfigFile, RelayhostFile};
use smtp_relay::inputs::file::{settings_with, InMemory};
use smtp_relay::postfix::layout::Layout;
use smtp_relay::postfix::{main_cf, master_cf};
use smtp_relay::settings::{Mode, TlsMinVersion};

/// The operator's layout in a relay pod.
fn layout() -> Layout {
    Layout {
        config_dir: "/run/smtp-relay/postfix".into(),
        spool_dir: "/var/spool/postfix".into(),
        data_dir: "/data".into(),
        listen: "[::]:25".into(),
    }
}

/// A relay of each mode as the operator configures it: SASL users and an issued certificate
/// where the mode has logins, relayhost credentials, a PROXY-protocol port for one of them.
fn config(mode: Mode) -> (RelayConfigFile, InMemory) {
    let logins = mode != Mode::Strict;
    let file = RelayConfigFile {
        domain: "example.net".into(),
        hostname: Some("relay.example.net".into()),
        networks: vec!["10.0.0.0/24".into(), "fd00::/64".into()],
        relay_domains: vec!["example.org".into()],
        relayhost: RelayhostFile {
            host: "smtp.example.net".into(),
            port: 587,
            username_file: Some("/etc/smtp-relay/relayhost/username".into()),
            password_file: Some("/etc/smtp-relay/relayhost/password".into()),
            ..RelayhostFile::default()
        },
        mode: Some(mode),
        sasl_users_dir: logins.then(|| PathBuf::from("/etc/smtp-relay/sasl-users")),
        inbound_tls: logins.then(|| InboundTlsFile {
            cert_file: "/etc/smtp-relay/tls/tls.crt".into(),
            key_file: "/etc/smtp-relay/tls/tls.key".into(),
        }),
        proxy_protocol_port: (mode == Mode::AllowNetAuthNoDomain).then_some(2525),
        postconf: BTreeMap::from([("message_size_limit".into(), "20480000".into())]),
        ..RelayConfigFile::default()
    };
    let mut mounted = InMemory::default();
    for (path, value) in [
        ("/etc/smtp-relay/relayhost/username", "relay-login"),
        ("/etc/smtp-relay/relayhost/password", "secret"),
        ("/etc/smtp-relay/tls/tls.crt", "certificate"),
        ("/etc/smtp-relay/tls/tls.key", "key"),
    ] {
        mounted.files.insert(path.into(), value.as_bytes().to_vec());
    }
    mounted.users.insert("app1".into(), b"secret".to_vec());
    (file, mounted)
}

/// Compares `text` with the golden file `name`, or writes it with UPDATE_GOLDEN=1.
fn golden(name: &str, text: &str) -> Option<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, text).expect("write golden file");
        return None;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    (want != text).then(|| {
        format!(
            "{} differs from what the relay writes now; if the change is meant, run \
             UPDATE_GOLDEN=1 cargo test -p smtp-relay --test golden and review the diff",
            path.display()
        )
    })
}

#[test]
fn main_cf_and_master_cf_of_every_mode() {
    let mut stale = Vec::new();
    for mode in Mode::ALL {
        let (file, mounted) = config(mode);
        let settings = settings_with(&file, &|n| format!("relay.yaml: {n}"), &mounted)
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        let name = mode.seed_name().to_ascii_lowercase();
        let main = main_cf::render(&main_cf::parameters(&settings, &layout()));
        let master =
            master_cf::render(&layout(), settings.proxy_protocol_port, settings.submission)
                .expect("master.cf");
        stale.extend(golden(&format!("main.cf.{name}"), &main));
        stale.extend(golden(&format!("master.cf.{name}"), &master));
    }
    // Issue 26: the opt-down for legacy clients (`spec.tlsMinVersion: TLSv1.0`).
    let (mut file, mounted) = config(Mode::AllowSaslAuthNoDomain);
    file.inbound_tls_min_version = Some(TlsMinVersion::Tls1_0);
    let settings =
        settings_with(&file, &|n| format!("relay.yaml: {n}"), &mounted).expect("legacy TLS");
    let main = main_cf::render(&main_cf::parameters(&settings, &layout()));
    stale.extend(golden("main.cf.legacy_tls", &main));
    // Issue 25: deliveries to the relayhost paced, one every 6 s (what the operator writes for
    // Microsoft 365 with 3 replicas); `postconf` still comes last.
    let (mut file, mounted) = config(Mode::Strict);
    file.relayhost.delivery_interval_seconds = Some(6);
    let settings =
        settings_with(&file, &|n| format!("relay.yaml: {n}"), &mounted).expect("delivery interval");
    let main = main_cf::render(&main_cf::parameters(&settings, &layout()));
    stale.extend(golden("main.cf.delivery_interval", &main));
    assert!(stale.is_empty(), "{}", stale.join("\n"));
}

/// Issue 27: what the relay writes for who may send what, to whom, how fast, and where.
#[test]
fn main_cf_and_tables_of_the_sending_rules() {
    let mut stale = Vec::new();
    // Issue 27: the headers of what leaves, by default (the client cut from Received lines)
    // and with headers removed.
    let (mut file, mounted) = config(Mode::Strict);
    for (name, headers) in [
        ("smtp_header_checks.default", None),
        (
            "smtp_header_checks.remove",
            Some(smtp_relay::config_file::HeadersFile {
                reveal_client: false,
                remove: vec![
                    "X-Originating-IP".into(),
                    "User-Agent".into(),
                    "X-Mailer".into(),
                ],
            }),
        ),
    ] {
        file.headers = headers;
        let settings =
            settings_with(&file, &|n| format!("relay.yaml: {n}"), &mounted).expect("headers");
        let table = main_cf::smtp_header_checks(&settings.headers).unwrap_or_default();
        stale.extend(golden(name, &table));
    }
    // Issue 27: a catch-all sandbox.
    let (mut file, mounted) = config(Mode::Strict);
    file.sandbox = Some(smtp_relay::config_file::SandboxFile {
        mode: smtp_relay::config_file::SandboxMode::CatchAll,
        mailbox: Some("qa-inbox@example.net".into()),
    });
    let settings =
        settings_with(&file, &|n| format!("relay.yaml: {n}"), &mounted).expect("sandbox");
    let main = main_cf::render(&main_cf::parameters(&settings, &layout()));
    stale.extend(golden("main.cf.sandbox", &main));
    let table = smtp_relay::postfix::sandbox::table(settings.sandbox.as_ref()).unwrap_or_default();
    stale.extend(golden("sandbox_recipients.regexp", &table));
    // Issue 27: limits per client and per user (who need users: those of the next mode).
    let (mut file, mounted) = config(Mode::Strict);
    let (with_users, _) = config(Mode::AllowSaslAuthNoDomain);
    file.sasl_users_dir = with_users.sasl_users_dir;
    file.inbound_tls = with_users.inbound_tls;
    file.rate_limits = Some(smtp_relay::config_file::RateLimitsFile {
        interval_seconds: None,
        per_client: Some(smtp_relay::config_file::LimitsFile {
            connections: Some(60),
            messages: Some(100),
            recipients: Some(500),
        }),
        per_user: Some(smtp_relay::config_file::LimitsFile {
            messages: Some(50),
            ..Default::default()
        }),
    });
    let settings =
        settings_with(&file, &|n| format!("relay.yaml: {n}"), &mounted).expect("rate limits");
    let main = main_cf::render(&main_cf::parameters(&settings, &layout()));
    stale.extend(golden("main.cf.rate_limits", &main));
    // Issue 27: the submission ports.
    let (mut file, mounted) = config(Mode::AllowSaslAuthNoDomain);
    file.submission = Some(smtp_relay::config_file::SubmissionFile {
        starttls_port: Some(587),
        implicit_tls_port: Some(465),
    });
    let settings =
        settings_with(&file, &|n| format!("relay.yaml: {n}"), &mounted).expect("submission");
    let master = master_cf::render(&layout(), settings.proxy_protocol_port, settings.submission)
        .expect("master.cf");
    stale.extend(golden("master.cf.submission", &master));
    // Issue 27: who may send as whom, and to whom: main.cf and the tables it reads.
    let (mut file, mounted) = config(Mode::Strict);
    file.strict_sender = true;
    file.senders = Some(smtp_relay::config_file::SendersFile {
        allowed: vec!["alerts@monitoring.example".into()],
        bindings: vec![
            smtp_relay::config_file::SenderBindingFile {
                user: "billing".into(),
                senders: vec!["billing@example.net".into(), "invoices.example.net".into()],
            },
            smtp_relay::config_file::SenderBindingFile {
                user: "shop".into(),
                senders: vec!["example.net".into()],
            },
        ],
    });
    file.recipients = Some(smtp_relay::config_file::RecipientsFile {
        allowed: vec!["example.net".into(), "ops@partner.example".into()],
    });
    let settings = settings_with(&file, &|n| format!("relay.yaml: {n}"), &mounted).expect("access");
    let main = main_cf::render(&main_cf::parameters(&settings, &layout()));
    stale.extend(golden("main.cf.access", &main));
    for (path, table) in smtp_relay::postfix::access::tables(&settings, &layout()) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        stale.extend(golden(&name, &table));
    }
    assert!(stale.is_empty(), "{}", stale.join("\n"));
}
