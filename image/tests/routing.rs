//! Recipient and sender checks against real Postfix: sender-specified routing never turns a
//! client allowed only to the relay domains into an open relay, and the strict sender check.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use common::*;
use smtp_relay::settings::Mode;

#[test]
fn sender_routing_tricks_are_refused() {
    let sink = start_sink();
    // STRICT: the client in `networks` may relay to the relay domain only.
    let relay = RelaySpec::new(Input::file(config(sink.port(), Mode::Strict))).start();
    let tricks = [
        ("percent hack", "victim%elsewhere.org@example.net"),
        ("bang path", "elsewhere.org!victim@example.net"),
        ("source route", "@example.net:victim@elsewhere.org"),
        (
            "source route through two hops",
            "@example.net,@relay.example.net:victim@elsewhere.org",
        ),
        (
            "quoted local part with @",
            "\"victim@elsewhere.org\"@example.net",
        ),
        (
            "quoted percent hack",
            "\"victim%elsewhere.org\"@example.net",
        ),
        ("IP literal", "victim@[127.0.0.9]"),
        ("IP literal of the relay itself", "victim@[127.0.0.1]"),
        ("IPv6 literal", "victim@[IPv6:::1]"),
    ];
    let mut accepted = Vec::new();
    for (what, rcpt) in tricks {
        let mut conn = connect(relay.addr(), NET_CLIENT);
        let (code, text) = reply(&mut conn, "MAIL FROM:<app@example.net>");
        assert_eq!(code, 250, "{text}");
        let (code, text) = reply(&mut conn, &format!("RCPT TO:<{rcpt}>"));
        if code < 400 {
            accepted.push(format!("{what} <{rcpt}>: {code} {text}"));
        } else {
            assert!(
                code >= 500,
                "{what}: a refusal must be permanent: {code} {text}"
            );
        }
        let _ = conn.quit();
    }
    assert!(
        accepted.is_empty(),
        "sender-specified routing accepted:\n{}",
        accepted.join("\n")
    );

    // The same client still relays to the relay domain, and nothing else reached the sink.
    let mark = marker("routing");
    send(
        relay.addr(),
        NET_CLIENT,
        None,
        "app@example.net",
        "user@example.net",
        &mark,
    )
    .unwrap();
    sink.wait_for("user@example.net", &mark, DEADLINE).unwrap();
    relay.wait_queue_empty();
    let strays: Vec<String> = sink
        .recipients()
        .into_iter()
        .filter(|r| r != "user@example.net" && r != "postmaster@example.net")
        .collect();
    assert!(strays.is_empty(), "delivered: {strays:?}");
}

/// MAIL FROM `sender`, RCPT TO a relay-domain address; true when the RCPT is accepted (Postfix
/// applies sender restrictions at RCPT).
fn sender_accepted(relay: &Relay, sender: &str) -> bool {
    let mut conn = connect(relay.addr(), NET_CLIENT);
    let (code, text) = reply(&mut conn, &format!("MAIL FROM:<{sender}>"));
    assert_eq!(code, 250, "MAIL FROM:<{sender}>: {text}");
    let (code, _) = reply(&mut conn, "RCPT TO:<user@example.net>");
    let _ = conn.quit();
    code == 250
}

#[test]
fn strict_sender_accepts_every_relay_domain_and_nothing_else() {
    let sink = start_sink();
    let mut cfg = config(sink.port(), Mode::Strict);
    cfg.relay_domains = vec![DOMAIN.into(), "example.org".into()];
    cfg.strict_sender = true;
    let relay = RelaySpec::new(Input::file(cfg)).start();
    assert!(sender_accepted(&relay, "app@example.net"));
    assert!(
        sender_accepted(&relay, "app@example.org"),
        "every relay domain is a valid sender domain (the seed accepted only RELAY_MYDOMAIN)"
    );
    assert!(!sender_accepted(&relay, "app@evil.example.com"));
    assert!(!sender_accepted(&relay, "app@notexample.net"));
    assert!(!sender_accepted(&relay, "app@example.net.evil.example.com"));
    // Postfix's access maps (like relay_domains) match subdomains of a listed domain
    // (parent_domain_matches_subdomains), as in the seed.
    assert!(sender_accepted(&relay, "app@mail.example.net"));
    let mark = marker("strict-sender");
    send(
        relay.addr(),
        NET_CLIENT,
        None,
        "app@example.org",
        "user@example.net",
        &mark,
    )
    .unwrap();
    sink.wait_for("user@example.net", &mark, DEADLINE).unwrap();
}

#[test]
fn the_relays_own_domain_stays_a_relay_domain_when_others_are_listed() {
    // relayDomains lists only another domain: the relay's own domain is still relayed to and,
    // with strictSender, still a valid sender domain (it used to be refused as a sender).
    let sink = start_sink();
    let mut cfg = config(sink.port(), Mode::Strict);
    cfg.relay_domains = vec!["example.org".into()];
    cfg.strict_sender = true;
    let relay = RelaySpec::new(Input::file(cfg)).start();
    assert!(sender_accepted(&relay, "app@example.net"));
    assert!(sender_accepted(&relay, "app@example.org"));
    assert!(!sender_accepted(&relay, "app@elsewhere.org"));
    for rcpt in ["user@example.net", "user@example.org"] {
        let mark = marker("own-domain");
        send(
            relay.addr(),
            NET_CLIENT,
            None,
            "app@example.net",
            rcpt,
            &mark,
        )
        .unwrap();
        sink.wait_for(rcpt, &mark, DEADLINE).unwrap();
    }
}

#[test]
fn without_strict_sender_any_sender_is_accepted() {
    let sink = start_sink();
    let mut env = env(sink.port(), "STRICT");
    env.insert("RELAY_STRICT_SENDER_MYDOMAIN".into(), "false".into());
    let relay = RelaySpec::new(Input::Env(env)).start();
    assert!(sender_accepted(&relay, "app@example.net"));
    assert!(sender_accepted(&relay, "app@evil.example.com"));
    let mark = marker("any-sender");
    send(
        relay.addr(),
        NET_CLIENT,
        None,
        "app@evil.example.com",
        "user@example.net",
        &mark,
    )
    .unwrap();
    assert_eq!(
        sink.wait_for("user@example.net", &mark, DEADLINE)
            .unwrap()
            .from,
        "app@evil.example.com"
    );
}

#[test]
fn strict_sender_from_the_environment() {
    let sink = start_sink();
    let mut env = env(sink.port(), "STRICT");
    env.insert("RELAY_STRICT_SENDER_MYDOMAIN".into(), "true".into());
    env.insert("RELAY_DOMAINS".into(), "example.net example.org".into());
    let relay = RelaySpec::new(Input::Env(env)).start();
    assert!(sender_accepted(&relay, "app@example.net"));
    assert!(sender_accepted(&relay, "app@example.org"));
    assert!(!sender_accepted(&relay, "app@evil.example.com"));
}

/// A raw SMTP session on `stream`: sends `line` (CRLF added) and returns the reply's last line.
fn say(stream: &mut std::net::TcpStream, line: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    if !line.is_empty() {
        stream.write_all(format!("{line}\r\n").as_bytes()).unwrap();
    }
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut last = String::new();
    loop {
        let mut l = String::new();
        if reader.read_line(&mut l).unwrap_or(0) == 0 {
            return last;
        }
        last = l.trim_end().to_string();
        if last.as_bytes().get(3) != Some(&b'-') {
            return last;
        }
    }
}

/// Issue 13, point 5: behind a load balancer that speaks the PROXY protocol, the relay takes
/// the client address from the header, on its own port only: `networks` sees the real client,
/// a connection without the header is dropped, and the SMTP port still trusts the real peer.
#[test]
fn the_proxy_protocol_port_takes_the_client_address_from_the_header() {
    let sink = start_sink();
    let proxy_port = free_port();
    let mut spec = RelaySpec::new(Input::file(config(sink.port(), Mode::Strict)));
    if let Input::File(cfg) = &mut spec.input {
        cfg.proxy_protocol_port = Some(proxy_port);
    }
    let relay = spec.start();
    let proxied = loopback(proxy_port);
    // The load balancer (here 127.0.0.1, outside networks) forwards a client in networks.
    let mut s = std::net::TcpStream::connect(proxied).expect("the PROXY port listens");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let banner = say(&mut s, "PROXY TCP4 127.0.0.2 127.0.0.1 40000 25");
    assert!(banner.starts_with("220"), "{banner}");
    assert!(say(&mut s, "EHLO lb.test").starts_with("250"));
    assert!(say(&mut s, "MAIL FROM:<app@example.net>").starts_with("250"));
    let rcpt = say(&mut s, "RCPT TO:<proxied@example.net>");
    assert!(
        rcpt.starts_with("250"),
        "the header's client is in networks: {rcpt}"
    );
    assert!(say(&mut s, "DATA").starts_with("354"));
    let mark = marker("proxied");
    let body = String::from_utf8(message("app@example.net", "proxied@example.net", &mark)).unwrap();
    let end = say(&mut s, &format!("{}\r\n.", body.trim_end()));
    assert!(end.starts_with("250"), "{end}");
    let _ = say(&mut s, "QUIT");
    sink.wait_for("proxied@example.net", &mark, DEADLINE)
        .unwrap();
    // smtpd logs the client it took the message from (the Received line that leaves the relay
    // does not name it: `headers.rs`).
    let log = relay.mail_log();
    assert!(
        log.contains(": client=unknown[127.0.0.2]"),
        "the relay saw the header's client:\n{log}"
    );

    // Without the header, the PROXY port serves nobody.
    let mut s = std::net::TcpStream::connect(proxied).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let answer = say(&mut s, "EHLO direct.test");
    assert!(
        !answer.starts_with("250"),
        "no session without a header: {answer:?}"
    );
    // Postfix logs the refusal (through postlogd, a moment later).
    poll("the refused header in the mail log", DEADLINE, || {
        relay.mail_log().contains("proxy").then_some(())
    });

    // The SMTP port still trusts the real peer: a PROXY line there is no header.
    let mut conn = connect(relay.addr(), OTHER_CLIENT);
    let (code, _) = reply(&mut conn, "PROXY TCP4 127.0.0.2 127.0.0.1 40000 25");
    assert!(code >= 500, "{code}");
    let (code, _) = reply(&mut conn, "MAIL FROM:<app@example.net>");
    assert_eq!(code, 250);
    let (code, text) = reply(&mut conn, "RCPT TO:<x@example.net>");
    assert!(
        code >= 500,
        "a client outside networks on the SMTP port: {code} {text}"
    );
}
