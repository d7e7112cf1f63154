//! Every bad input stops `smtp-relay run` with exit code 2 and one line naming the variable,
//! field or file, before any Postfix process starts.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::path::Path;

use common::*;
use smtp_relay::settings::Mode;

/// Runs the relay, expects exit code 2 with one line on stderr containing `named`, and checks
/// that nothing of Postfix was started.
fn refused(spec: RelaySpec, named: &str) {
    let out = spec.run_to_exit();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        out.status.code(),
        Some(2),
        "exit code for {named}: {stderr}"
    );
    assert_eq!(lines.len(), 1, "one line for {named}: {stderr}");
    assert!(lines[0].contains(named), "the line names {named}: {stderr}");
    assert!(
        out.stdout.is_empty(),
        "no mail log: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        master_pid(&spec.spool_dir()).is_none(),
        "no master.pid for {named}"
    );
    assert!(
        !smtp_ready(spec.addr()),
        "nothing listens on {} for {named}",
        spec.addr()
    );
    assert!(
        processes_mentioning(&spec.postfix_dir()).is_empty(),
        "no Postfix process for {named}: {:?}",
        processes_mentioning(&spec.postfix_dir())
    );
}

/// PIDs whose command line mentions `path` (a Postfix master or daemon of this instance).
fn processes_mentioning(path: &Path) -> Vec<String> {
    let needle = path.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(&needle).then_some(cmdline)
        })
        .collect()
}

fn env_without(name: &str) -> RelaySpec {
    let mut vars = env(25, "STRICT");
    vars.remove(name);
    RelaySpec::new(Input::Env(vars))
}

fn env_with(name: &str, value: &str) -> RelaySpec {
    let mut vars = env(25, "STRICT");
    vars.insert(name.into(), value.into());
    RelaySpec::new(Input::Env(vars))
}

#[test]
fn missing_mydomain() {
    refused(env_without("RELAY_MYDOMAIN"), "RELAY_MYDOMAIN");
}

#[test]
fn missing_relay_host() {
    refused(env_without("RELAY_HOST"), "RELAY_HOST");
}

#[test]
fn unknown_mode() {
    refused(env_with("RELAY_MODE", "OPEN_RELAY"), "RELAY_MODE");
}

#[test]
fn invalid_network() {
    refused(
        env_with("RELAY_MYNETWORKS", "127.0.0.2/32 10.0.0.0/33"),
        "RELAY_MYNETWORKS",
    );
    let mut cfg = config(25, Mode::Strict);
    cfg.networks = vec!["10.0.0.1/24".into()];
    refused(RelaySpec::new(Input::file(cfg)), "networks");
}

#[test]
fn unknown_postconf_parameter() {
    refused(
        env_with("POSTCONF_not_a_param", "1"),
        "POSTCONF_not_a_param",
    );
    let mut cfg = config(25, Mode::Strict);
    cfg.postconf.insert("not_a_param".into(), "1".into());
    refused(RelaySpec::new(Input::file(cfg)), "postconf.not_a_param");
}

/// The list of parameters the relay and the operator judge `postconf` by is the image's
/// Postfix's own (`postconf -d`); after a Postfix upgrade this fails until it is regenerated.
#[test]
fn the_postfix_parameter_list_is_current() {
    let out = std::process::Command::new("postconf")
        .arg("-d")
        .output()
        .expect("postconf (apt-get install postfix)");
    let mut known: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(" =").map(|(n, _)| n.to_string()))
        .collect();
    known.sort();
    known.dedup();
    let listed: Vec<String> = include_str!("../src/postfix/parameters.txt")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    let missing: Vec<&String> = known.iter().filter(|k| !listed.contains(k)).collect();
    let extra: Vec<&String> = listed.iter().filter(|l| !known.contains(l)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "image/src/postfix/parameters.txt is stale (missing {missing:?}, unknown to Postfix \
         {extra:?}): regenerate it with the command in its header"
    );
}

/// The candidates of the table of parameter types are the image's Postfix's own: every
/// parameter whose default (`postconf -dx`) is a number, a time or yes/no has a line, and each
/// typed line agrees with its default. After a Postfix upgrade this fails until the table is
/// regenerated (the command and the way its verdicts were found are in its header).
#[test]
fn the_postfix_parameter_type_table_is_current() {
    require_postfix();
    let out = std::process::Command::new("postconf")
        .arg("-dx")
        .output()
        .expect("postconf (apt-get install postfix)");
    let defaults: std::collections::BTreeMap<String, String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_once(" = ")
                .or_else(|| l.strip_suffix(" =").map(|n| (n, "")))
        })
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    let looks = |v: &str| -> Option<String> {
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if digits(v.strip_prefix('-').unwrap_or(v)) {
            Some("integer".into())
        } else if v.len() > 1 && digits(&v[..v.len() - 1]) && v.ends_with(['s', 'm', 'h', 'd', 'w'])
        {
            Some(format!("time:{}", &v[v.len() - 1..]))
        } else if v.eq_ignore_ascii_case("yes") || v.eq_ignore_ascii_case("no") {
            Some("boolean".into())
        } else {
            None
        }
    };
    let candidates: Vec<&String> = defaults
        .iter()
        .filter(|(_, v)| looks(v).is_some())
        .map(|(n, _)| n)
        .collect();
    let mut listed = Vec::new();
    let mut disagree = Vec::new();
    for line in include_str!("../src/postfix/parameter-types.txt")
        .lines()
        .filter(|l| !l.starts_with('#'))
    {
        let mut words = line.split_whitespace();
        let (name, kind) = (words.next().unwrap(), words.next().unwrap());
        listed.push(name.to_string());
        let default = defaults.get(name).map(String::as_str).unwrap_or("");
        let kind = if kind == "size" { "integer" } else { kind };
        if kind != "any" && looks(default).as_deref() != Some(kind) {
            disagree.push(format!("{name} ({kind}, default {default:?})"));
        }
    }
    let missing: Vec<&&String> = candidates.iter().filter(|c| !listed.contains(c)).collect();
    let extra: Vec<&String> = listed.iter().filter(|l| !candidates.contains(l)).collect();
    assert!(
        missing.is_empty() && extra.is_empty() && disagree.is_empty(),
        "image/src/postfix/parameter-types.txt is stale (missing {missing:?}, no longer \
         candidates {extra:?}, type and default disagree {disagree:?}): regenerate it as its \
         header says"
    );
}

/// Issue 24: a value Postfix's daemons cannot read (`smtpd_recipient_limit = 1k` passed
/// `postfix check`, then every smtpd died with "bad numerical configuration") is refused
/// before Postfix starts, naming the entry and what Postfix expects, from either input.
#[test]
fn postconf_values_of_the_wrong_type_are_refused() {
    refused(
        env_with("POSTCONF_smtpd_recipient_limit", "1k"),
        "POSTCONF_smtpd_recipient_limit: \"1k\" is not a whole number: Postfix reads this parameter as an integer",
    );
    refused(
        env_with("POSTCONF_smtpd_timeout", "5 minutes"),
        "POSTCONF_smtpd_timeout: \"5 minutes\" is not a time",
    );
    refused(
        env_with("RELAY_EXTRAS_SETTINGS", "message_size_limit=lots"),
        "RELAY_EXTRAS_SETTINGS (message_size_limit): \"lots\" is not a whole number",
    );
    let mut cfg = config(25, Mode::Strict);
    cfg.postconf
        .insert("smtpd_client_connection_count_limit".into(), "fifty".into());
    refused(
        RelaySpec::new(Input::file(cfg)),
        "postconf.smtpd_client_connection_count_limit: \"fifty\" is not a whole number",
    );
}

/// The other half of issue 24: values of the right type, in every form Postfix reads, still
/// start Postfix, and smtpd (which died on the bad ones) answers and relays.
#[test]
fn postconf_values_postfix_reads_still_start_it() {
    let sink = start_sink();
    let mut vars = env(sink.port(), "STRICT");
    for (name, value) in [
        ("smtpd_timeout", "300s"),
        ("smtpd_recipient_limit", "1000"),
        ("smtpd_client_connection_count_limit", "+50"),
        ("message_size_limit", "52428800"),
        ("maximal_queue_lifetime", "2"),
        ("smtpd_tls_loglevel", "1"),
        ("smtpd_tls_received_header", "YES"),
        ("smtpd_error_sleep_time", "1s"),
        ("smtpd_soft_error_limit", "$default_process_limit"),
    ] {
        vars.insert(format!("POSTCONF_{name}"), value.into());
    }
    let relay = RelaySpec::new(Input::Env(vars)).start();
    let main_cf = std::fs::read_to_string(relay.spec().postfix_dir().join("main.cf")).unwrap();
    assert!(
        main_cf.contains("\nsmtpd_recipient_limit = 1000\n"),
        "{main_cf}"
    );
    send(
        relay.addr(),
        [127, 0, 0, 2],
        None,
        "app@example.net",
        "someone@example.net",
        "typed-values",
    )
    .unwrap();
    sink.wait_for("someone@example.net", "typed-values", DEADLINE)
        .unwrap();
    let (status, _) = relay.stop();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn unreadable_secret_files() {
    // Root reads any file, so "unreadable" is a directory where a file should be, or nothing.
    let mut spec = RelaySpec::new(Input::file(config(25, Mode::Strict)));
    let username = spec.write("relayhost/username", "user");
    std::fs::create_dir_all(spec.path("relayhost/password")).unwrap();
    let password = spec.path("relayhost/password");
    if let Input::File(cfg) = &mut spec.input {
        cfg.relayhost.username_file = Some(username);
        cfg.relayhost.password_file = Some(password);
    }
    refused(spec, "relayhost.passwordFile");

    let mut spec = RelaySpec::new(Input::file(config(25, Mode::Strict)));
    if let Input::File(cfg) = &mut spec.input {
        cfg.sasl_users_dir = Some("/nonexistent/smtp-relay-users".into());
    }
    refused(spec, "saslUsersDir");

    let mut vars = env(25, "STRICT");
    vars.insert("RELAY_TLS_CERT".into(), "/nonexistent/tls.crt".into());
    vars.insert("RELAY_TLS_KEY".into(), "/nonexistent/tls.key".into());
    refused(RelaySpec::new(Input::Env(vars)), "RELAY_TLS_CERT");

    let spec = RelaySpec::new(Input::Env(env(25, "STRICT")));
    spec.write(
        "postfix/client_sasl_passwd",
        "app1 fine\nno-password-here\n",
    );
    refused(spec, "client_sasl_passwd:2");
}

/// Issue 13, point 1: AUTH is only offered inside TLS, so SASL users without a certificate
/// are refused (the seed offered AUTH in clear text on port 25), from either input.
#[test]
fn sasl_users_without_a_certificate() {
    let mut spec = RelaySpec::new(Input::file(config(25, Mode::AllowSaslAuthNoDomain)));
    let users = spec.path("users");
    SecretVolume::create(users.clone(), &[("app1", "secret")]);
    if let Input::File(cfg) = &mut spec.input {
        cfg.sasl_users_dir = Some(users);
    }
    spec.test_tls = false;
    refused(
        spec,
        "inboundTls: SASL users are configured but no TLS certificate",
    );

    let mut spec = RelaySpec::new(Input::Env(env(25, "ALLOW_SASLAUTH_NODOMAIN")));
    spec.write("postfix/client_sasl_passwd", "app1 secret\n");
    spec.test_tls = false;
    refused(
        spec,
        "RELAY_TLS_CERT: SASL users are configured but no TLS certificate",
    );
}

#[test]
fn bad_config_file() {
    let spec = RelaySpec::new(Input::file(config(25, Mode::Strict)));
    let path = spec.config_path();
    let mut cmd = spec.command();
    // command() wrote the file from the spec; replace it with one holding an unknown field.
    std::fs::write(
        &path,
        "domain: example.net\nrelayhost: {host: 127.0.0.1}\nbogus: 1\n",
    )
    .unwrap();
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("relay.yaml") && stderr.contains("bogus"),
        "{stderr}"
    );
    assert!(master_pid(&spec.spool_dir()).is_none());
}

#[test]
fn postconf_names_with_upper_case_letters_are_accepted() {
    // smtpd_tls_CApath and friends are real Postfix parameters with capitals (the smtp_
    // ones protect the relayhost login and belong to its fields).
    let sink = start_sink();
    let mut vars = env(sink.port(), "STRICT");
    vars.insert("POSTCONF_smtpd_tls_CApath".into(), "/etc/ssl/certs".into());
    let relay = RelaySpec::new(Input::Env(vars)).start();
    let main_cf = std::fs::read_to_string(relay.spec().postfix_dir().join("main.cf")).unwrap();
    assert!(
        main_cf.contains("\nsmtpd_tls_CApath = /etc/ssl/certs\n"),
        "{main_cf}"
    );
    let (status, _) = relay.stop();
    assert_eq!(status.code(), Some(0));
}

/// Issue 13, point 4: `POSTCONF_*` and `postconf` cannot set a parameter that decides who may
/// relay; the message names the entry and the field that owns the parameter.
#[test]
fn postconf_cannot_decide_who_may_relay() {
    for (name, value) in [
        ("mynetworks", "0.0.0.0/0"),
        ("smtpd_relay_restrictions", "permit"),
        ("smtpd_recipient_restrictions", "permit"),
        ("smtpd_sasl_auth_enable", "yes"),
        ("smtpd_tls_auth_only", "no"),
        ("relay_domains", "elsewhere.org"),
    ] {
        let why = format!("{name} decides who may relay and cannot be set here");
        refused(
            env_with(&format!("POSTCONF_{name}"), value),
            &format!("POSTCONF_{name}: {why}"),
        );
        let mut cfg = config(25, Mode::Strict);
        cfg.postconf.insert(name.into(), value.into());
        refused(
            RelaySpec::new(Input::file(cfg)),
            &format!("postconf.{name}: {why}"),
        );
    }
}

/// Issue 13, point 4: networks that hold every address make an open relay.
#[test]
fn networks_covering_every_address() {
    refused(
        env_with("RELAY_MYNETWORKS", "0.0.0.0/1 128.0.0.0/1"),
        "RELAY_MYNETWORKS: the networks cover every IPv4 address",
    );
    let mut cfg = config(25, Mode::Strict);
    cfg.networks = vec!["10.0.0.0/8".into(), "::/0".into()];
    refused(
        RelaySpec::new(Input::file(cfg)),
        "networks: the networks cover every IPv6 address",
    );
}

/// Issue 13, point 4, and issue 24: a custom list that has `reject` but permits everyone first
/// is an open relay. The relay's start-time check of the configuration Postfix would run with
/// refused it inside every new pod, which then crash-looped; the list's own check refuses it
/// now, naming the entry, so the operator does too before writing anything.
#[test]
fn an_effective_open_relay_does_not_start() {
    let mut cfg = config(25, Mode::Strict);
    cfg.mode = None;
    cfg.custom_restrictions = Some(vec!["permit".into(), "reject".into()]);
    refused(
        RelaySpec::new(Input::file(cfg)),
        "customRestrictions[0]: refusing to start an open relay: permit comes before any reject, defer or reject_unauth_destination, so any client could relay to any domain",
    );
    refused(
        env_with("RELAY_MODE", "permit_sasl_authenticated permit reject"),
        "RELAY_MODE[1]: refusing to start an open relay: permit comes before any reject",
    );
}

/// Issue 26: "our apps send as example.net" written as a sender table before the safety net
/// is the classic open relay (anyone who writes `MAIL FROM:<x@example.net>` relays anywhere):
/// refused, naming the entry, whatever vouches for it. A table the relay cannot read is refused
/// too, unless the input vouches for it: then the relay starts with it.
#[test]
fn a_table_before_the_safety_net_starts_only_when_vouched_for() {
    let with = |list: &[&str], trust: bool| {
        let mut cfg = config(25, Mode::Strict);
        cfg.mode = None;
        cfg.trust_restriction_tables = trust;
        cfg.custom_restrictions = Some(list.iter().map(|t| t.to_string()).collect());
        cfg
    };
    let issue = [
        "permit_mynetworks",
        "permit_sasl_authenticated",
        "check_sender_access",
        "inline:{example.net=OK}",
        "reject_unauth_destination",
    ];
    for trust in [false, true] {
        refused(
            RelaySpec::new(Input::file(with(&issue, trust))),
            "customRestrictions[2]: refusing to start an open relay: check_sender_access inline:{example.net=OK} permits any client that gives example.net=OK",
        );
    }
    refused(
        env_with(
            "RELAY_MODE",
            "permit_mynetworks check_sender_access texthash:/etc/postfix/senders reject_unauth_destination",
        ),
        "RELAY_MODE[1]: refusing a relay that may be open: check_sender_access texthash:/etc/postfix/senders",
    );
    // A relay whose list holds a table from a file (texthash: needs no postmap), in its own
    // directory.
    let from_a_file = |trust: bool| {
        let mut spec = RelaySpec::new(Input::file(with(&["reject"], false)));
        let table = format!(
            "texthash:{}",
            spec.write("senders", "example.org OK\n").display()
        );
        let list = [
            "permit_mynetworks",
            "check_sender_access",
            table.as_str(),
            "reject_unauth_destination",
        ];
        spec.input = Input::file(with(&list, trust));
        (spec, table)
    };
    let (spec, table) = from_a_file(false);
    refused(
        spec,
        &format!(
            "customRestrictions[1]: refusing a relay that may be open: check_sender_access {table}"
        ),
    );
    let (spec, table) = from_a_file(true);
    let relay = spec.start();
    let main_cf = std::fs::read_to_string(relay.spec().postfix_dir().join("main.cf")).unwrap();
    assert!(main_cf.contains(&table), "{main_cf}");
    relay.stop();
}

/// A fatal error is also the container's termination message (the file the kubelet gives at
/// `terminationMessagePath`), so the pod's status and the SmtpRelay's say why it stopped.
#[test]
fn a_configuration_error_is_the_termination_message() {
    let mut vars = env(25, "STRICT");
    vars.insert("RELAY_MYNETWORKS".into(), "10.0.0.1/24".into());
    let spec = RelaySpec::new(Input::Env(vars.clone()));
    let log = spec.write("termination-log", "");
    vars.insert("RELAY_TERMINATION_LOG".into(), log.display().to_string());
    let spec = RelaySpec {
        input: Input::Env(vars),
        ..spec
    };
    let out = spec.run_to_exit();
    assert_eq!(out.status.code(), Some(2));
    let message = std::fs::read_to_string(&log).unwrap();
    assert!(
        message.starts_with("configuration error: RELAY_MYNETWORKS")
            && message.contains("did you mean 10.0.0.0/24?"),
        "{message}"
    );
    // Where the file does not exist (not under a kubelet), nothing is created.
    let mut vars = env(25, "STRICT");
    vars.insert("RELAY_MYNETWORKS".into(), "10.0.0.1/24".into());
    let spec = RelaySpec::new(Input::Env(vars.clone()));
    let absent = spec.path("no-termination-log");
    vars.insert("RELAY_TERMINATION_LOG".into(), absent.display().to_string());
    let spec = RelaySpec {
        input: Input::Env(vars),
        ..spec
    };
    assert_eq!(spec.run_to_exit().status.code(), Some(2));
    assert!(!absent.exists());
}

/// A Secret's content never reaches a message. A Google service account key stored
/// JSON-encoded as a string made serde_json say `invalid type: string "{\"client_email\": …,
/// \"private_key\": \"-----BEGIN PRIVATE KEY-----…"`: the whole key, on stderr and in the
/// termination message (which the operator's status shows). Now the line names the field and
/// where the JSON went wrong, nothing of the key; `client_sasl_passwd` likewise for a line
/// whose first word is not a user name (`login:password ...` would have quoted the password).
#[test]
fn a_bad_secret_file_is_refused_without_quoting_it() {
    const MARKER: &str = "FAKE-PRIVATE-KEY-MARKER-k3Vb9";
    let key = format!(
        r#"{{"type": "service_account", "client_email": "relay@fake-project.iam.gserviceaccount.com", "private_key": "-----BEGIN PRIVATE KEY-----\n{MARKER}\n-----END PRIVATE KEY-----\n"}}"#
    );
    let mut spec = RelaySpec::new(Input::file(config(25, Mode::Strict)));
    let key_file = spec.write(
        "relayhost/serviceAccount.json",
        &serde_json::to_string(&key).unwrap(),
    );
    if let Input::File(cfg) = &mut spec.input {
        cfg.relayhost.oauth2 = Some(smtp_relay::config_file::OAuth2File {
            user: "sender@example.net".into(),
            token_endpoint: "https://oauth2.googleapis.com/token".into(),
            service_account_key_file: Some(key_file),
            ..Default::default()
        });
    }
    let log = spec.write("termination-log", "");
    let out = spec
        .command()
        .env("RELAY_TERMINATION_LOG", &log)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let message = std::fs::read_to_string(&log).unwrap();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    for text in [&*stderr, &message] {
        for secret in [MARKER, "PRIVATE KEY-----", "relay@fake-project"] {
            assert!(!text.contains(secret), "{secret:?} in: {text}");
        }
        assert!(
            text.contains("relayhost.oauth2.serviceAccountKeyFile")
                && text.contains("holds a JSON string, not an object at line 1, column"),
            "{text}"
        );
    }

    let spec = RelaySpec::new(Input::Env(env(25, "STRICT")));
    spec.write(
        "postfix/client_sasl_passwd",
        "app1 fine\napp2:Pw-MARKER-7Qz and more\n",
    );
    let out = spec.run_to_exit();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("client_sasl_passwd:2") && !stderr.contains("MARKER"),
        "{stderr}"
    );
}
