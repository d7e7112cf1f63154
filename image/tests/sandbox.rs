//! The staging sandbox (issue 27), against real Postfix: whatever its recipients, a message
//! accepted by a sandboxed relay goes to the one catch-all mailbox (once, its recipients kept
//! in headers, its `To:` as written), waits in the hold queue, or is dropped; never to a
//! recipient.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use common::*;
use smtp_relay::config_file::{SandboxFile, SandboxMode};
use smtp_relay::settings::Mode;

/// A relay whose networks clients send anywhere, sandboxed as `sandbox` says, and one message
/// sent through it from a client of networks to two outside recipients.
fn sandboxed(sink: &Sink, sandbox: SandboxFile, marker: &str) -> Relay {
    let mut cfg = config(sink.port(), Mode::AllowNetAuthNoDomain);
    cfg.sandbox = Some(sandbox);
    let relay = RelaySpec::new(Input::file(cfg)).start();
    let mut conn = connect(relay.addr(), NET_CLIENT);
    let content = format!(
        "From: <app@example.net>\r\nTo: <customer@elsewhere.org>, <other@partner.example>\r\nSubject: {marker}\r\n\r\n{marker}\r\n"
    );
    send_verbatim(
        &mut conn,
        "app@example.net",
        &["customer@elsewhere.org", "Other@partner.example"],
        content.as_bytes(),
    )
    .unwrap();
    let _ = conn.quit();
    relay
}

#[test]
fn a_catch_all_sandbox_delivers_every_message_to_its_mailbox_once() {
    let sink = start_sink();
    let relay = sandboxed(
        &sink,
        SandboxFile {
            mode: SandboxMode::CatchAll,
            mailbox: Some("qa-inbox@example.net".into()),
        },
        "sandboxed-1",
    );
    let m = sink
        .wait_for_subject("qa-inbox@example.net", "sandboxed-1", DEADLINE)
        .unwrap();
    relay.wait_queue_empty();
    assert_eq!(
        m.rcpts,
        ["qa-inbox@example.net"],
        "one copy, to the mailbox"
    );
    for header in [
        "X-Sandbox-Recipient: <customer@elsewhere.org>",
        "X-Sandbox-Recipient: <other@partner.example>",
        "To: <customer@elsewhere.org>, <other@partner.example>",
    ] {
        assert!(m.text.contains(header), "{header} in\n{}", m.text);
    }
    for rcpt in ["customer@elsewhere.org", "other@partner.example"] {
        assert!(!sink.delivered_to(rcpt), "{rcpt} got mail from a sandbox");
    }
}

#[test]
fn a_hold_sandbox_keeps_every_message_in_the_hold_queue() {
    let sink = start_sink();
    let relay = sandboxed(
        &sink,
        SandboxFile {
            mode: SandboxMode::Hold,
            mailbox: None,
        },
        "sandboxed-2",
    );
    relay.poll_flushing("the message held", || {
        relay
            .mail_log()
            .contains("Recipient address triggers HOLD action")
            .then_some(())
    });
    assert_eq!(relay.queued(), 1, "the message waits in the hold queue");
    assert!(sink.messages().is_empty(), "nothing delivered");
}

#[test]
fn a_discard_sandbox_accepts_and_drops_every_message() {
    let sink = start_sink();
    let relay = sandboxed(
        &sink,
        SandboxFile {
            mode: SandboxMode::Discard,
            mailbox: None,
        },
        "sandboxed-3",
    );
    relay.poll_flushing("the message dropped", || {
        relay
            .mail_log()
            .contains("Recipient address triggers DISCARD action")
            .then_some(())
    });
    relay.wait_queue_empty();
    assert!(sink.messages().is_empty(), "nothing delivered");
}
