//! Changes while running: SASL users hot-reloaded from a kubelet-style Secret volume and from the
//! seed's client_sasl_passwd, config file changes applied, broken updates refused, all without
//! restarting Postfix or losing queued mail.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use common::*;
use smtp_relay::settings::Mode;

fn can_login(relay: &Relay, user: &str, password: &str) -> bool {
    let mut conn = connect(relay.addr(), OTHER_CLIENT);
    let ok = login(&mut conn, user, password).is_ok();
    let _ = conn.quit();
    ok
}

fn wait_login(relay: &Relay, user: &str, password: &str, expected: bool) {
    poll(
        &format!(
            "login {user} to {}",
            if expected { "succeed" } else { "fail" }
        ),
        DEADLINE,
        || (can_login(relay, user, password) == expected).then_some(()),
    );
}

fn daemon_starts(relay: &Relay) -> usize {
    relay.mail_log().matches("daemon started").count()
}

#[test]
fn sasl_users_directory_hot_reload_keeps_postfix_and_its_queue() {
    // The relayhost is down at first, so a message stays queued across the changes.
    let sink_port = free_port();
    let mut cfg = config(sink_port, Mode::AllowSaslAuthNoDomain);
    cfg.networks.clear();
    let mut spec = RelaySpec::new(Input::file(cfg));
    let users_dir = spec.path("users");
    let mut users = SecretVolume::create(users_dir.clone(), &[("app1", "first password")]);
    if let Input::File(cfg) = &mut spec.input {
        cfg.sasl_users_dir = Some(users_dir);
    }
    let relay = spec.start();
    let master = relay.master_pid().expect("master.pid");
    assert!(can_login(&relay, "app1", "first password"));
    assert!(!can_login(&relay, "app2", "second password"));

    let mark = marker("queued");
    send(
        relay.addr(),
        OTHER_CLIENT,
        Some(("app1", "first password")),
        "app@example.net",
        "queued@elsewhere.org",
        &mark,
    )
    .unwrap();
    poll("the message to be deferred", DEADLINE, || {
        relay.mail_log().contains("status=deferred").then_some(())
    });

    // Add a user and change a password.
    users.update(&[("app1", "changed password"), ("app2", "second password")]);
    wait_login(&relay, "app2", "second password", true);
    wait_login(&relay, "app1", "changed password", true);
    assert!(!can_login(&relay, "app1", "first password"));
    // Also as user@domain, the realm the users are registered in.
    assert!(can_login(&relay, "app2@example.net", "second password"));

    // Remove a user.
    users.update(&[("app1", "changed password")]);
    wait_login(&relay, "app2", "second password", false);
    assert!(can_login(&relay, "app1", "changed password"));
    poll("the sasl_users gauge to show 1", DEADLINE, || {
        (relay.metric("smtp_relay_sasl_users") == Some(1.0)).then_some(())
    });

    assert_eq!(relay.master_pid(), Some(master), "same Postfix master");
    assert!(process_alive(master));
    assert_eq!(daemon_starts(&relay), 1, "Postfix never restarted");
    assert_eq!(relay.queued(), 1, "the deferred message is still queued");

    // The relayhost comes up: the message queued before the changes is delivered.
    let sink = start_sink_on(sink_port);
    relay.poll_flushing("the queued message at the sink", || {
        (sink.has(&mark) && sink.delivered_to("queued@elsewhere.org")).then_some(())
    });
    let (status, _) = relay.stop();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn client_sasl_passwd_file_hot_reload() {
    let sink = start_sink();
    let mut vars = env(sink.port(), "ALLOW_SASLAUTH_NODOMAIN");
    vars.insert("RELAY_MYNETWORKS".into(), String::new());
    let spec = RelaySpec::new(Input::Env(vars));
    let file = spec.postfix_dir().join("client_sasl_passwd");
    spec.write("postfix/client_sasl_passwd", "app1 first pass}word\n");
    let relay = spec.start();
    let master = relay.master_pid();
    assert!(can_login(&relay, "app1", "first pass}word"));

    write_atomically(
        &file,
        "# users\napp1 changed password\napp2 second, pass:word\n",
    );
    wait_login(&relay, "app2", "second, pass:word", true);
    wait_login(&relay, "app1", "changed password", true);
    assert!(!can_login(&relay, "app1", "first pass}word"));

    write_atomically(&file, "app2 second, pass:word\n");
    wait_login(&relay, "app1", "changed password", false);
    assert!(can_login(&relay, "app2", "second, pass:word"));
    assert_eq!(relay.master_pid(), master);

    let mark = marker("passwd-file");
    send(
        relay.addr(),
        OTHER_CLIENT,
        Some(("app2", "second, pass:word")),
        "app@example.net",
        "passwd@elsewhere.org",
        &mark,
    )
    .unwrap();
    sink.wait_for("passwd@elsewhere.org", &mark, DEADLINE)
        .unwrap();
}

#[test]
fn broken_update_keeps_the_old_config_and_a_good_one_is_applied() {
    let sink = start_sink();
    let spec = RelaySpec::new(Input::file(config(sink.port(), Mode::Strict)));
    let relay = spec.start();
    let master = relay.master_pid();
    let relay_once = |tag: &str, source: [u8; 4]| {
        let mark = marker(tag);
        let rcpt = format!("{tag}@example.net");
        send(relay.addr(), source, None, "app@example.net", &rcpt, &mark)
            .map(|_| sink.wait_for(&rcpt, &mark, DEADLINE).unwrap())
    };
    relay_once("before", NET_CLIENT).unwrap();
    assert_eq!(relay.metric("smtp_relay_config_errors_total"), Some(0.0));

    // A broken update: an invalid network.
    let Input::File(good) = relay.spec().input.clone() else {
        unreachable!()
    };
    let mut broken = good.clone();
    broken.networks = vec!["127.0.0.2/32".into(), "10.0.0.0/33".into()];
    write_atomically(
        &relay.spec().config_path(),
        &serde_yaml::to_string(&broken).unwrap(),
    );
    poll(
        "config_errors to count the refused update",
        DEADLINE,
        || (relay.metric("smtp_relay_config_errors_total") >= Some(1.0)).then_some(()),
    );
    relay_once("during", NET_CLIENT).expect("still relays with the old configuration");
    assert!(
        relay_once("outsider", OTHER_CLIENT).is_err(),
        "still the old networks"
    );
    assert!(
        std::fs::read_to_string(relay.spec().postfix_dir().join("main.cf"))
            .unwrap()
            .contains("mynetworks = 127.0.0.2/32\n"),
        "main.cf untouched"
    );

    // A good update is applied without a restart.
    let mut wider = good;
    wider.networks = vec!["127.0.0.2/32".into(), "127.0.0.3/32".into()];
    write_atomically(
        &relay.spec().config_path(),
        &serde_yaml::to_string(&wider).unwrap(),
    );
    poll("the new network to be allowed", DEADLINE, || {
        relay_once("after", OTHER_CLIENT).ok()
    });
    // Counted once Postfix passed its self-check with it, a moment after smtpd serves it.
    poll("config_reloads to count the change", DEADLINE, || {
        (relay.metric("smtp_relay_config_reloads_total") >= Some(1.0)).then_some(())
    });
    assert_eq!(relay.master_pid(), master, "same Postfix master");
    assert_eq!(daemon_starts(&relay), 1);
    let (status, _) = relay.stop();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_refused_update_changes_no_file_postfix_reads() {
    // Postfix starts new smtpd processes all the time, and each reads main.cf afresh: a refused
    // configuration left on disk would serve every new session although the relay "refused" it.
    let sink = start_sink();
    let spec = RelaySpec::new(Input::file(config(sink.port(), Mode::Strict)));
    let relay = spec.start();
    let main_cf = relay.spec().postfix_dir().join("main.cf");
    let before = std::fs::read_to_string(&main_cf).unwrap();

    // Valid input, but an open relay once Postfix reads it: refused by the effective check.
    let Input::File(good) = relay.spec().input.clone() else {
        unreachable!()
    };
    let mut open = good.clone();
    open.mode = None;
    open.custom_restrictions = Some(vec!["permit".into(), "reject".into()]);
    write_atomically(
        &relay.spec().config_path(),
        &serde_yaml::to_string(&open).unwrap(),
    );
    poll(
        "config_errors to count the refused update",
        DEADLINE,
        || (relay.metric("smtp_relay_config_errors_total") >= Some(1.0)).then_some(()),
    );
    assert!(
        relay.output().contains("refusing to start an open relay"),
        "refused by the effective check:\n{}",
        relay.output()
    );
    assert_eq!(
        std::fs::read_to_string(&main_cf).unwrap(),
        before,
        "main.cf is the last accepted one"
    );
    // Sessions on new smtpd processes (several connections, so more than the idle one) still
    // refuse an outside client relaying to an outside domain.
    for n in 0..3 {
        let mark = marker(&format!("open-{n}"));
        let sent = send(
            relay.addr(),
            OTHER_CLIENT,
            None,
            "app@example.net",
            "victim@elsewhere.org",
            &mark,
        );
        assert!(sent.is_err(), "relayed for an outsider: {sent:?}");
    }
    assert!(!sink.delivered_to("victim@elsewhere.org"));
}
