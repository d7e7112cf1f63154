//! A full spool refuses cleanly (issue 40), against real Postfix: the spool on a small tmpfs,
//! filled to just above the relay's reserve, then by mail until smtpd answers 452. Every
//! message that got its 250 stays in the queue and is delivered once the relayhost is back, the
//! metrics say the spool is nearly full, and mail is accepted again once space returns.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use smtp_relay::settings::Mode;

const MIB: u64 = 1 << 20;
/// The relay's own reserve for a 1 MiB size limit: its floor, 32 MiB.
const RESERVE: u64 = 32 * MIB;

/// A tmpfs mounted for the test, unmounted when dropped (also when the test fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size_mib: u64) -> Tmpfs {
        fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size_mib}m,mode=0755"))
            .arg("tmpfs")
            .arg(dir)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mount -t tmpfs on {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a process that still holds a file there does not keep the mount.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = fs::remove_dir(&self.0);
    }
}

/// A message of about `size` bytes whose last body line identifies it (see `Sink::has`).
fn big_message(to: &str, marker: &str, size: usize) -> Vec<u8> {
    let small = message("app@example.net", to, marker);
    let at = small.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let line = format!("{}\r\n", "x".repeat(76));
    let mut out = small[..at].to_vec();
    while out.len() < size {
        out.extend_from_slice(line.as_bytes());
    }
    out.extend_from_slice(&small[at..]);
    out
}

/// One message from inside `networks`; `Err` carries the first refusal.
fn send_big(relay: &Relay, marker: &str, size: usize) -> Result<(), String> {
    let to = "rcpt@example.net";
    let mut conn = connect(relay.addr(), NET_CLIENT);
    let sent = send_verbatim(
        &mut conn,
        "app@example.net",
        &[to],
        &big_message(to, marker, size),
    );
    let _ = conn.quit();
    sent.map(|_| ())
}

/// Whether a queue file on `spool` holds `marker`.
fn in_queue(spool: &Path, marker: &str) -> bool {
    fn walk(dir: &Path, marker: &[u8]) -> bool {
        let Ok(entries) = fs::read_dir(dir) else {
            return false;
        };
        entries.flatten().any(|e| {
            let path = e.path();
            if path.is_dir() {
                walk(&path, marker)
            } else {
                fs::read(&path).is_ok_and(|b| b.windows(marker.len()).any(|w| w == marker))
            }
        })
    }
    ["maildrop", "incoming", "active", "deferred", "hold"]
        .iter()
        .any(|q| walk(&spool.join(q), marker.as_bytes()))
}

/// Fills the file system of `dir` with a file until `free` bytes are left.
fn fill_until(dir: &Path, ballast: &Path, free: u64) {
    let space = smtp_relay::metrics::spool_space(dir).unwrap();
    let mut left = space.free.checked_sub(free).expect("more free than wanted");
    let mut f = fs::File::create(ballast).unwrap();
    let chunk = vec![0u8; MIB as usize];
    while left > 0 {
        let n = left.min(MIB) as usize;
        f.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    f.sync_all().unwrap();
}

#[test]
fn a_full_spool_answers_452_keeps_what_it_accepted_and_recovers() {
    let upstream = free_port();
    let mut cfg = config(upstream, Mode::Strict);
    cfg.postconf
        .insert("message_size_limit".into(), MIB.to_string());
    let spec = RelaySpec::new(Input::file(cfg));
    // Declared before the relay: dropped after it, once Postfix has stopped.
    let _tmpfs = Tmpfs::mount(&spec.spool_dir(), 96);
    let spool = spec.spool_dir();
    let relay = spec.start();

    // The reserve is in main.cf and on the metrics page, with the spool's size.
    let main_cf = fs::read_to_string(relay.spec().postfix_dir().join("main.cf")).unwrap();
    assert!(
        main_cf.contains(&format!("\nqueue_minfree = {RESERVE}\n")),
        "{main_cf}"
    );
    let report = || smtp_relay::metrics::QueueReport::parse(&relay.metrics()).unwrap();
    let first = report();
    assert_eq!(first.spool_size_bytes, Some(96 * MIB), "{first:?}");
    assert!(!first.spool_nearly_full, "{first:?}");
    assert_eq!(
        relay.metric("smtp_relay_spool_reserve_bytes"),
        Some(RESERVE as f64)
    );

    // Something else fills the volume to 3 MiB above the reserve: nearly full.
    let ballast = spool.join("ballast");
    fill_until(&spool, &ballast, RESERVE + 3 * MIB);
    poll("the metrics to say nearly full", DEADLINE, || {
        report().spool_nearly_full.then_some(())
    });

    // Mail until smtpd refuses: 452, retry later, before the volume is full.
    let mut accepted = Vec::new();
    let refusal = loop {
        assert!(
            accepted.len() < 30,
            "30 messages of 400 kB accepted with 3 MiB above the reserve: no reserve"
        );
        let marker = marker("fill");
        match send_big(&relay, &marker, 400_000) {
            Ok(()) => accepted.push(marker),
            Err(e) => break e,
        }
    };
    assert!(
        refusal.contains("452") && refusal.contains("Insufficient system storage"),
        "{refusal}"
    );
    assert!(!accepted.is_empty(), "nothing accepted above the reserve");
    let free = smtp_relay::metrics::spool_space(&spool).unwrap().free;
    assert!(free > MIB, "the volume filled up: {free} bytes free");

    // What got its 250 is on the spool, whole.
    for marker in &accepted {
        assert!(
            in_queue(&spool, &format!("end-of-{marker}")),
            "{marker} is not in the queue"
        );
    }
    poll("the metrics to count the refusal", DEADLINE, || {
        relay
            .metric("smtp_relay_smtpd_rejects_total{code=\"452\",reason=\"storage\"}")
            .filter(|n| *n >= 1.0)
    });
    poll(
        "the metrics to say less than the reserve is free",
        DEADLINE,
        || {
            let full = report();
            (full.spool_nearly_full && full.spool_free_bytes.is_some_and(|f| f < RESERVE))
                .then_some(())
        },
    );

    // Space returns: new mail is accepted again.
    fs::remove_file(&ballast).unwrap();
    let after = marker("after");
    poll(
        "a message to be accepted once space returns",
        DEADLINE,
        || send_big(&relay, &after, 10_000).ok(),
    );
    accepted.push(after);

    // The relayhost comes back: everything that got its 250 is delivered.
    let sink = start_sink_on(upstream);
    let delivered = || {
        let texts: Vec<String> = sink.messages().into_iter().map(|m| m.text).collect();
        accepted
            .iter()
            .filter(|m| texts.iter().any(|t| t.contains(&format!("end-of-{m}"))))
            .count()
    };
    relay.poll_flushing("every accepted message at the sink", || {
        (delivered() == accepted.len()).then_some(())
    });
    poll("the metrics to say the spool has room", DEADLINE, || {
        (!report().spool_nearly_full).then_some(())
    });
    relay.stop();
}
