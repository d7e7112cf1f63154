//! Secure by default (issue 13), against real Postfix on loopback: what a relay configured with
//! nothing but the required fields refuses to do.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use smtp_relay::settings::Mode;

/// A raw SMTP session: lettre would never send a bare <LF>, which is the point here.
struct RawSession {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
}

impl RawSession {
    fn open(addr: SocketAddr) -> RawSession {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        let mut s = RawSession { reader, stream };
        let banner = s.reply();
        assert!(banner.starts_with("220"), "banner: {banner}");
        s
    }

    /// One whole reply (every line of a multi-line one), or "" at end of stream.
    fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
                return all;
            }
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }

    fn send(&mut self, bytes: &str) {
        self.stream.write_all(bytes.as_bytes()).unwrap();
    }

    fn command(&mut self, line: &str) -> String {
        self.send(&format!("{line}\r\n"));
        self.reply()
    }

    /// Every reply until the server closes the connection.
    fn rest(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let r = self.reply();
            if r.is_empty() {
                return out;
            }
            out.push(r);
        }
    }
}

/// Point 7, SMTP smuggling: a client in `networks` (whom Postfix exempts by default) ends its
/// DATA with a bare `<LF>.<LF>` followed by a second, smuggled transaction. The relay must read
/// all of it as one message ending at `<CR><LF>.<CR><LF>`, and relay nothing to the smuggled
/// recipient.
#[test]
fn a_bare_lf_dot_lf_does_not_end_a_message() {
    let sink = start_sink();
    let mut cfg = config(sink.port(), Mode::Strict);
    cfg.networks = vec!["127.0.0.1/32".into()];
    let relay = RelaySpec::new(Input::file(cfg)).start();

    let mark = marker("smuggling");
    let rcpt = format!("victim@{DOMAIN}");
    let smuggled = format!("smuggled@{DOMAIN}");
    let mut s = RawSession::open(relay.addr());
    assert!(s.command("EHLO client.test").starts_with("250"));
    assert!(s.command("MAIL FROM:<app@example.net>").starts_with("250"));
    assert!(s.command(&format!("RCPT TO:<{rcpt}>")).starts_with("250"));
    assert!(s.command("DATA").starts_with("354"));
    s.send(&format!(
        "Subject: {mark}\r\n\r\nfirst part\n.\nMAIL FROM:<ceo@example.net>\r\n\
         RCPT TO:<{smuggled}>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n.\r\n\
         QUIT\r\n"
    ));
    let replies = s.rest();
    let accepted = replies.iter().filter(|r| r.starts_with("250")).count();
    assert_eq!(
        accepted, 1,
        "one message, ended only by <CR><LF>.<CR><LF>: {replies:?}"
    );

    let m = poll("the message at the sink", DEADLINE, || {
        sink.messages().into_iter().find(|m| m.text.contains(&mark))
    });
    assert_eq!(m.rcpts, vec![rcpt]);
    assert!(
        m.text.contains("smuggled body"),
        "the would-be second message is part of the first one's body:\n{}",
        m.text
    );
    relay.wait_queue_empty();
    assert!(
        !sink.delivered_to(&smuggled),
        "a smuggled transaction was relayed"
    );
}

/// Point 6, postmaster amplification: a refused client costs the relayhost nothing. The seed
/// sent the postmaster a transcript of every refused session (`notify_classes` with `policy`).
#[test]
fn a_refused_client_sends_no_notice_to_the_postmaster() {
    let sink = start_sink();
    let relay = RelaySpec::new(Input::file(config(sink.port(), Mode::Strict))).start();

    // An anonymous outside client tries to relay; the session ends with the connection closed,
    // by which time smtpd has queued any notice.
    let mut s = RawSession::open(relay.addr());
    assert!(s.command("EHLO client.test").starts_with("250"));
    assert!(s.command("MAIL FROM:<spam@spam.test>").starts_with("250"));
    let refused = s.command(&format!("RCPT TO:<someone@{EXTERNAL}>"));
    assert!(refused.starts_with("554"), "relay refused: {refused}");
    assert!(s.command("QUIT").starts_with("221"));
    assert!(s.rest().is_empty());

    // A legitimate message after it: once it is through and the queue is empty, a notice
    // would have been delivered too.
    let mark = marker("after-refusal");
    let rcpt = format!("app@{DOMAIN}");
    send(
        relay.addr(),
        NET_CLIENT,
        None,
        "app@example.net",
        &rcpt,
        &mark,
    )
    .unwrap();
    sink.wait_for(&rcpt, &mark, DEADLINE).unwrap();
    relay.wait_queue_empty();
    let postmaster = format!("postmaster@{DOMAIN}");
    assert!(
        !sink.delivered_to(&postmaster),
        "the postmaster got a notice about a refused client: {:?}",
        sink.messages()
    );
}

/// Point 3, IPv6: an IPv6 network in `networks` works (mynetworks needs it in brackets, else
/// every client gets "451 4.3.0 Temporary lookup failure", IPv4 ones included), and a relay
/// listening on `[::]` answers and probes on both 127.0.0.1 and ::1.
#[test]
fn ipv6_clients_and_networks_on_a_dual_stack_relay() {
    let sink = start_sink();
    let mut cfg = config(sink.port(), Mode::Strict);
    cfg.networks = vec!["fd00::/64".into(), "::1/128".into(), "127.0.0.2/32".into()];
    let mut spec = RelaySpec::new(Input::file(cfg));
    spec.listen = Some(format!("[::]:{}", spec.port));
    // start() waits for SMTP on 127.0.0.1: the IPv4 side.
    let relay = spec.start();
    let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, relay.addr().port()));

    let rcpt = format!("app@{DOMAIN}");
    let mark4 = marker("ipv4-client");
    send(
        relay.addr(),
        NET_CLIENT,
        None,
        "app@example.net",
        &rcpt,
        &mark4,
    )
    .unwrap_or_else(|e| panic!("127.0.0.2, inside networks: {e}"));
    let mark6 = marker("ipv6-client");
    let mut conn = lettre::transport::smtp::client::SmtpConnection::connect(
        v6,
        Some(Duration::from_secs(30)),
        &lettre::transport::smtp::extension::ClientId::Domain("client.test".into()),
        None,
        None,
    )
    .unwrap_or_else(|e| panic!("connecting to {v6}: {e}"));
    send_on(&mut conn, "app@example.net", &rcpt, &mark6)
        .unwrap_or_else(|e| panic!("::1, inside networks: {e}"));
    let _ = conn.quit();
    sink.wait_for(&rcpt, &mark4, DEADLINE).unwrap();
    sink.wait_for(&rcpt, &mark6, DEADLINE).unwrap();

    for address in [format!("[::]:{}", v6.port()), v6.to_string()] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_smtp-relay"))
            .args(["probe", "--address", &address])
            .env_remove("RELAY_LISTEN")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "probe {address}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Under a kubelet the relay's configuration directory (`/run/smtp-relay/postfix`) and its data
/// directory (`/data`: the SASL database, the OAuth2 socket) live on emptyDir volumes, which
/// are created world-writable (0777), and they outlive a restart of the container. The postfix
/// user, which smtpd facing the network runs as, could plant or swap files there that the root
/// master and supervisor read. The relay makes each directory it writes into root's and 0755
/// before it writes anything, and takes the others' write access from the volume holding the
/// configuration directory (whoever can write there can swap that directory whole). Here as
/// after a restart: the directories are there already, 0777, one of them the postfix user's.
#[test]
fn directories_root_reads_are_not_writable_by_others() {
    use std::fs;
    use std::os::unix::fs::{chown, MetadataExt as _, PermissionsExt as _};
    let sink = start_sink();
    let mut spec = RelaySpec::new(Input::file(config(
        sink.port(),
        Mode::AllowSaslAuthNoDomain,
    )));
    let users = spec.path("users");
    SecretVolume::create(users.clone(), &[(USER, USER_PASSWORD)]);
    if let Input::File(cfg) = &mut spec.input {
        cfg.sasl_users_dir = Some(users);
    }
    let (postfix_uid, postfix_gid) = smtp_relay::postfix::instance::postfix_ids().unwrap();
    let (config_dir, data_dir) = (spec.postfix_dir(), spec.data_dir());
    let sasl_dir = config_dir.join("sasl");
    let volume = spec.dir.path().to_path_buf();
    for dir in [&sasl_dir, &data_dir] {
        fs::create_dir_all(dir).unwrap();
    }
    for dir in [&volume, &config_dir, &sasl_dir, &data_dir] {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o777)).unwrap();
    }
    chown(&config_dir, Some(postfix_uid), Some(postfix_gid)).unwrap();

    let relay = spec.start();
    let mode = |dir: &std::path::Path| fs::metadata(dir).unwrap().mode() & 0o7777;
    for dir in [&config_dir, &sasl_dir, &data_dir] {
        let meta = fs::metadata(dir).unwrap();
        assert_eq!(
            format!("{:o} {}:{}", mode(dir), meta.uid(), meta.gid()),
            "755 0:0",
            "{} (mode owner:group)",
            dir.display()
        );
    }
    let volume_mode = mode(&volume);
    assert_eq!(
        volume_mode & 0o022,
        0,
        "{} holds the configuration directory: {volume_mode:o}",
        volume.display()
    );
    // smtpd still reads the SASL database through the data directory.
    let rcpt = format!("app@{EXTERNAL}");
    let mark = marker("after-prepared-directories");
    send(
        relay.addr(),
        OTHER_CLIENT,
        Some((USER, USER_PASSWORD)),
        "app@example.net",
        &rcpt,
        &mark,
    )
    .unwrap_or_else(|e| panic!("a SASL user relays: {e}"));
    sink.wait_for(&rcpt, &mark, DEADLINE).unwrap();
}
