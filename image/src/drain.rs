//! The drain on SIGTERM, before Postfix stops: mail already accepted is delivered rather than
//! left on the volume whenever the relayhost takes it. The queue is flushed toward the
//! relayhost; the drain ends when the queue is empty, when every message still queued has had
//! its try since the flush and was deferred (the relayhost is down: waiting longer would only
//! hold the pod), or at the deadline. What is still queued stays on the spool.
//!
//! The listener stays open meanwhile: removing smtpd from master.cf and reloading would make
//! the master SIGTERM the sessions in progress, the very ones a drain should spare. A deleted
//! pod leaves its Service's endpoints at once, so new sessions stop coming anyway.

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
