//! What the headers of mail leaving the relay reveal (issue 27): by default no Received line
//! Postfix wrote names its client (inside a cluster, a pod's address and name), the relay's
//! own and an earlier Postfix hop's alike; `headers.revealClient` keeps them; `headers.remove`
//! drops the headers it names. Against real Postfix, the sink as the relayhost.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use common::*;
use smtp_relay::config_file::HeadersFile;
use smtp_relay::settings::Mode;

/// A message as an application inside the platform sends it: through a sidecar Postfix first
/// (its Received line names the pod), with a mailer's headers.
fn content(subject: &str) -> String {
    format!(
        "Received: from app-7f9c4.internal (unknown [10.244.3.7])\r\n\tby sidecar.internal (Postfix) with ESMTP id 4jjAbC1xyz\r\n\tfor <ops@elsewhere.org>; Mon,  7 Dec 2026 14:00:00 +0000 (UTC)\r\nFrom: <app@example.net>\r\nTo: <ops@elsewhere.org>\r\nSubject: {subject}\r\nX-Mailer: app-mailer 1.2 on pod app-7f9c4\r\nX-Originating-IP: [10.244.3.7]\r\nUser-Agent: app/1.0\r\n\r\nThe body mentions 10.244.3.7 and stays as written.\r\n"
    )
}

/// Sends `content(subject)` from the network client (HELO client.test, 127.0.0.2) through a
/// relay with `headers`; the message as the relayhost got it.
fn relayed(headers: Option<HeadersFile>, subject: &str) -> String {
    let sink = start_sink();
    let mut cfg = config(sink.port(), Mode::Strict);
    cfg.headers = headers;
    let relay = RelaySpec::new(Input::file(cfg)).start();
    let mut conn = connect(relay.addr(), NET_CLIENT);
    send_verbatim(
        &mut conn,
        "app@example.net",
        &["ops@example.net"],
        content(subject).as_bytes(),
    )
    .unwrap();
    let _ = conn.quit();
    let m = sink
        .wait_for_subject("ops@example.net", subject, DEADLINE)
        .unwrap();
    relay.wait_queue_empty();
    // The sink's own lines (X-Client-Addr and the like) name the relay, not the client.
    m.text
        .split_once("\nReceived: ")
        .map(|(_, rest)| format!("Received: {rest}"))
        .unwrap_or(m.text)
}

/// The Received headers of `text`, each with its folded lines joined.
fn received(text: &str) -> Vec<String> {
    let headers = text.split("\r\n\r\n").next().unwrap_or(text);
    let mut out: Vec<String> = Vec::new();
    for line in headers.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.push(' ');
                last.push_str(line.trim());
            }
        } else {
            out.push(line.to_string());
        }
    }
    // The sink's own line, on top, is not the relay's doing.
    out.retain(|h| h.starts_with("Received:") && !h.contains("(smtp-sink)"));
    out
}

#[test]
fn by_default_no_received_line_names_a_client() {
    let text = relayed(None, "private by default");
    let lines = received(&text);
    assert_eq!(lines.len(), 2, "{text}");
    for line in &lines {
        assert!(line.starts_with("Received: by "), "{line}");
        for secret in ["127.0.0.2", "client.test", "10.244.3.7", "app-7f9c4"] {
            assert!(!line.contains(secret), "{secret} in {line}");
        }
    }
    // The relay's own line keeps what a receiver uses: who, how, the queue ID, the date.
    assert!(
        lines[0].starts_with("Received: by relay.example.net (Postfix) with ESMTP id ")
            && lines[0].contains("for <ops@example.net>; "),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("Received: by sidecar.internal (Postfix) with ESMTP id 4jjAbC1xyz"),
        "{}",
        lines[1]
    );
    // Nothing else is touched.
    for kept in [
        "X-Mailer: app-mailer 1.2 on pod app-7f9c4",
        "User-Agent: app/1.0",
        "The body mentions 10.244.3.7 and stays as written.",
    ] {
        assert!(text.contains(kept), "{kept} in\n{text}");
    }
}

#[test]
fn reveal_client_keeps_the_received_lines_and_remove_drops_headers() {
    let text = relayed(
        Some(HeadersFile {
            reveal_client: true,
            remove: vec!["x-mailer".into(), "X-Originating-IP".into()],
        }),
        "client revealed",
    );
    let lines = received(&text);
    assert!(
        lines[0].starts_with("Received: from client.test (")
            && lines[0].contains("[127.0.0.2]) by relay.example.net (Postfix) with ESMTP id "),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("Received: from app-7f9c4.internal (unknown [10.244.3.7])"),
        "{}",
        lines[1]
    );
    for removed in ["X-Mailer:", "X-Originating-IP:"] {
        assert!(!text.contains(removed), "{removed} in\n{text}");
    }
    assert!(text.contains("User-Agent: app/1.0"), "{text}");
}
