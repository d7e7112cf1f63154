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

use std::path::Path;
use std::time::{Duration, Instant};

use crate::metrics::{queue_sizes, Metrics};
use crate::postfix::instance;
use crate::postfix::layout::Layout;

const POLL: Duration = Duration::from_millis(250);

/// The pod annotation with which the operator asks a replica to drain: it is being scaled away,
/// or its relay deleted. The replica leaves the Service (its readiness probe fails), keeps its
/// listener for the sessions in progress, and delivers its queue; the operator removes the pod
/// only once the queue is empty. Removing the annotation (scaling up again) cancels the drain.
pub const DRAIN_ANNOTATION: &str = "smtprelay.dev/drain";

/// How often a draining replica asks Postfix to try its queue again.
pub const FLUSH_EVERY: Duration = Duration::from_secs(15);

/// Whether the pod's annotations, as the downward API writes them (`key="value"` per line),
/// ask for a drain. A missing or unreadable file asks for nothing.
pub fn requested(annotations: &Path) -> bool {
    std::fs::read_to_string(annotations)
        .map(|text| asks_to_drain(&text))
        .unwrap_or(false)
}

fn asks_to_drain(annotations: &str) -> bool {
    crate::revision::annotation(annotations, DRAIN_ANNOTATION).as_deref() == Some("true")
}

/// How a drain ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drained {
    Skipped,
    Empty,
    RelayhostRefused { queued: usize },
    DeadlinePassed { queued: usize },
}

/// A drain asked through the pod's annotations ([`DRAIN_ANNOTATION`]), followed at each of the
/// supervisor's ticks: it starts, flushes the queue every [`FLUSH_EVERY`] while mail waits, and
/// ends if the annotation goes away.
pub struct AskedDrain {
    annotations: Option<std::path::PathBuf>,
    last_flush: Option<Instant>,
}

impl AskedDrain {
    /// Follows the downward API file `annotations`; none: never asked.
    pub fn new(annotations: Option<std::path::PathBuf>) -> Self {
        AskedDrain {
            annotations,
            last_flush: None,
        }
    }

    pub fn tick(&mut self, layout: &Layout, metrics: &Metrics) {
        let asked = self.annotations.as_deref().is_some_and(requested);
        match (asked, self.last_flush) {
            (false, None) => {}
            (false, Some(_)) => {
                tracing::info!("no longer asked to drain: serving again");
                metrics.draining.set(0);
                self.last_flush = None;
            }
            (true, last) => {
                let queued: usize = queue_sizes(&layout.spool_dir).iter().sum();
                if last.is_none() {
                    tracing::info!(
                        queued,
                        "asked to drain: leaving the Service and delivering the queue"
                    );
                    metrics.draining.set(1);
                }
                if last.is_none_or(|t| t.elapsed() >= FLUSH_EVERY) {
                    if queued > 0 {
                        if let Err(e) = instance::postqueue(layout, &["-f"]) {
                            tracing::warn!(error = %e, "cannot flush the queue");
                        }
                    }
                    self.last_flush = Some(Instant::now());
                }
            }
        }
    }
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
    fn only_the_drain_annotation_set_to_true_asks_for_a_drain() {
        let file = |text: &str| asks_to_drain(text);
        assert!(file("a=\"b\"\nsmtprelay.dev/drain=\"true\"\n"));
        assert!(!file("smtprelay.dev/drain=\"false\"\n"));
        assert!(!file("other/drain=\"true\"\n"));
        assert!(!file("note=\"smtprelay.dev/drain=true\"\n"));
        assert!(!file(""));
        assert!(!requested(Path::new("/nonexistent/annotations")));
    }

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
