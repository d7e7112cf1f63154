//! The test sink itself: it keeps every message it accepted, also one that arrives the moment
//! it starts listening. A relay retrying a deferred message every second does exactly that when
//! a test brings its relayhost back (issue 15: the sink used to delete its dumps right after its
//! readiness probe, and so, now and then, the very message the test was waiting for).

use std::net::{Ipv4Addr, SocketAddr};
use std::thread;
use std::time::{Duration, Instant};

use smtp_relay_e2e::mail::{free_port, marker, send, Sink, DEADLINE};

/// How long the sender keeps knocking before it gives up: the sink starts well within it.
const KNOCKING: Duration = Duration::from_secs(30);

#[test]
fn a_message_arriving_as_the_sink_starts_is_kept() {
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mark = marker("as-it-starts");
    // Like a relay's queue runner, only faster: try to deliver until a server answers.
    let sender = {
        let mark = mark.clone();
        thread::spawn(move || {
            let start = Instant::now();
            loop {
                let sent = send(
                    addr,
                    Ipv4Addr::LOCALHOST,
                    None,
                    "app@example.net",
                    "early@example.org",
                    &mark,
                );
                if sent.is_ok() || start.elapsed() > KNOCKING {
                    return sent;
                }
                thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let sink = Sink::start_on(port, DEADLINE).expect("smtp-sink");
    let sent = sender.join().expect("sender thread");
    assert!(
        sent.is_ok(),
        "the sink never accepted the message: {sent:?}"
    );
    // The message was accepted with a 250, so its dump is complete or being completed: a short
    // wait is a failure deadline, not a timing claim.
    sink.wait_for("early@example.org", &mark, Duration::from_secs(10))
        .expect("the message accepted as the sink started is still there");
}
