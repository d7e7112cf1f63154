//! The drain on SIGTERM, before Postfix stops: mail already accepted is delivered rather than
//! left on the volume whenever the relayhost takes it. The queue is flushed toward the
//! relayhost; the drain ends when the queue is empty, when every message still queued has had
//! its try since the flush and was deferred (the relayhost is down: waiting longer would only
//! hold the pod), or at the deadline. What is still queued stays on the spool.
//!
//! The listener stays open meanwhile: removing smtpd from master.cf and reloading would make
//! the master SIGTERM the sessions in progress, the very ones a drain should spare. A deleted
//! pod leaves its Service's endpoints at once, so new sessions stop coming anyway; the ones in
//! progress are let finish first ([`sessions_end`]), within the same deadline, so a client in
//! the middle of a message gets its 250 rather than a dropped connection.

use std::time::{Duration, Instant};

use crate::metrics::{queue_sizes, Metrics};
use crate::postfix::instance;
use crate::postfix::layout::Layout;

const POLL: Duration = Duration::from_millis(250);

/// How a drain ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drained {
    Skipped,
    Empty,
    RelayhostRefused { queued: usize },
    DeadlinePassed { queued: usize },
}

/// Inbound SMTP sessions in progress: established TCP connections whose local port is one of
/// `ports`, from the kernel's tables of this network namespace (the pod's).
pub fn sessions(ports: &[u16]) -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .map(|text| established_on(&text, ports))
        .sum()
}

/// Rows of a `/proc/net/tcp` table in state ESTABLISHED (01) with a local port in `ports`.
fn established_on(table: &str, ports: &[u16]) -> usize {
    table
        .lines()
        .skip(1)
        .filter(|row| {
            let cols: Vec<&str> = row.split_whitespace().collect();
            let local_port = cols
                .get(1)
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            cols.get(3) == Some(&"01") && local_port.is_some_and(|p| ports.contains(&p))
        })
        .count()
}

/// Waits until no inbound session is in progress on `ports`, or `deadline`. Returns how many
/// were still open then.
pub async fn sessions_end(ports: &[u16], deadline: Instant) -> usize {
    let mut logged = false;
    loop {
        let open = sessions(ports);
        if open == 0 || Instant::now() > deadline {
            return open;
        }
        if !logged {
            tracing::info!(
                sessions = open,
                "letting the SMTP sessions in progress finish"
            );
            logged = true;
        }
        tokio::time::sleep(POLL).await;
    }
}

pub async fn drain(layout: &Layout, metrics: &Metrics, timeout: Duration) -> Drained {
    if timeout.is_zero() || queue_sizes(&layout.spool_dir).iter().sum::<usize>() == 0 {
        return Drained::Skipped;
    }
    tracing::info!(
        ?timeout,
        "draining: flushing the queue toward the relayhost"
    );
    let deferred_before = metrics.deferred();
    if let Err(e) = instance::postqueue(layout, &["-f"]) {
        tracing::warn!(error = %e, "flushing the queue failed; waiting for the queue manager");
    }
    let deadline = Instant::now() + timeout;
    loop {
        let [maildrop, incoming, active, deferred, hold] = queue_sizes(&layout.spool_dir);
        let queued = maildrop + incoming + active + deferred + hold;
        let in_flight = maildrop + incoming + active;
        // Deferrals logged since the flush: one per recipient tried and refused.
        let tried = metrics.deferred().saturating_sub(deferred_before) as usize;
        if queued == 0 {
            return Drained::Empty;
        }
        if in_flight == 0 && tried >= deferred {
            return Drained::RelayhostRefused { queued };
        }
        if Instant::now() > deadline {
            return Drained::DeadlinePassed { queued };
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn established_sessions_on_the_smtp_ports() {
        // Local 0.0.0.0:25 listening, 127.0.0.1:25 established twice, a client socket whose
        // remote port is 25, a session on 2525, one on 25 closing.
        let table = "  sl  local_address rem_address   st
   0: 00000000:0019 00000000:0000 0A
   1: 0100007F:0019 0200007F:9C40 01
   2: 0100007F:0019 0300007F:9C41 01
   3: 0100007F:9C42 0100007F:0019 01
   4: 0100007F:09DD 0200007F:9C43 01
   5: 0100007F:0019 0200007F:9C44 06";
        assert_eq!(established_on(table, &[25]), 2);
        assert_eq!(established_on(table, &[25, 2525]), 3);
        assert_eq!(established_on(table, &[587]), 0);
    }
}
