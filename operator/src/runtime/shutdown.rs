//! Bounded shutdown: on SIGTERM/SIGINT the operator stops gracefully (controller drained, Lease
//! released, HTTP server stopped) but never takes longer than a deadline; a second signal exits
//! at once. A watch that keeps failing (API server down, Forbidden) must not keep a pod in
//! Terminating until the kubelet kills it.

use std::time::Duration;

use tracing::{error, warn};

/// Default time a graceful stop may take before the process exits anyway; well inside the
/// kubelet's default 30 s grace period.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

/// Longest the controller may take to let running reconciles finish after a stop request.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest a single shutdown step talking to the API server (releasing the Lease) may take.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

/// How the process ended after a shutdown request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Everything stopped in time.
    Graceful,
    /// The deadline passed first.
    DeadlineExceeded,
    /// A second signal arrived.
    Forced,
}

impl Stop {
    /// The process exit code.
    pub fn exit_code(self) -> i32 {
        match self {
            Stop::Graceful => 0,
            Stop::DeadlineExceeded | Stop::Forced => 1,
        }
    }
}

/// The deadline for `--shutdown-timeout-seconds`: at least one second, so a graceful stop can
/// happen at all.
pub fn deadline(seconds: u64) -> Duration {
    Duration::from_secs(seconds.max(1))
}

/// How long a step may take: `step`, but no longer than what is left of the deadline.
pub fn step_timeout(deadline: Duration, elapsed: Duration, step: Duration) -> Duration {
    deadline.saturating_sub(elapsed).min(step)
}

/// Exits the process `deadline` from now unless it has ended by itself. A plain thread, so it
/// fires even if the async runtime is stuck or shutting down.
pub fn arm_watchdog(deadline: Duration) {
    let spawned = std::thread::Builder::new()
        .name("shutdown-deadline".into())
        .spawn(move || {
            std::thread::sleep(deadline);
            error!(
                deadline = ?deadline,
                "graceful shutdown did not finish in time; exiting anyway"
            );
            std::process::exit(Stop::DeadlineExceeded.exit_code());
        });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start the shutdown deadline thread");
    }
}

/// Exits at once after a second shutdown signal.
pub fn force_exit() -> ! {
    warn!("second shutdown signal; exiting at once");
    std::process::exit(Stop::Forced.exit_code());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(Stop::Graceful.exit_code(), 0);
        assert_ne!(Stop::DeadlineExceeded.exit_code(), 0);
        assert_ne!(Stop::Forced.exit_code(), 0);
    }

    #[test]
    fn deadline_is_at_least_a_second() {
        assert_eq!(deadline(0), Duration::from_secs(1));
        assert_eq!(deadline(10), DEFAULT_DEADLINE);
        assert!(
            DEFAULT_DEADLINE < Duration::from_secs(30),
            "inside the kubelet's grace period"
        );
    }

    #[test]
    fn steps_fit_in_what_is_left() {
        let s = Duration::from_secs;
        assert_eq!(step_timeout(s(10), s(2), RELEASE_TIMEOUT), RELEASE_TIMEOUT);
        assert_eq!(step_timeout(s(10), s(9), RELEASE_TIMEOUT), s(1));
        assert_eq!(step_timeout(s(10), s(12), RELEASE_TIMEOUT), Duration::ZERO);
    }
}
