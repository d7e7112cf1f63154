//! The process around the controller, so that `main` reads as a story: the stop signal (SIGTERM
//! or SIGINT, bounded by a deadline; a second signal exits at once), the lifetime of the HTTP
//! endpoints, leadership (wait for the Lease, hold it, release it on the way out), and the
//! SmtpRelay CRD's upgrade at startup ([`crd_upgrade`]).

pub mod backoff;
pub mod crd_upgrade;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod shutdown;
pub mod telemetry;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::floor::error::{Error, Result};
use crate::runtime::leader::LeaderElector;
use crate::runtime::metrics::Metrics;
use http::HttpState;

/// The stop request: set once by a signal or by the loss of leadership.
#[derive(Clone)]
pub struct Runtime {
    stop_tx: watch::Sender<bool>,
    stop_rx: watch::Receiver<bool>,
    deadline: Duration,
    /// When the stop was requested (for the time left of the deadline).
    stop_started: Arc<std::sync::Mutex<Option<Instant>>>,
}

impl Runtime {
    /// Listens for SIGTERM/SIGINT: the first requests a graceful stop and arms a watchdog that
    /// exits the process `deadline` later; the second exits at once.
    pub fn start(deadline: Duration) -> Self {
        let (stop_tx, stop_rx) = watch::channel(false);
        let rt = Runtime {
            stop_tx,
            stop_rx,
            deadline,
            stop_started: Arc::default(),
        };
        let on_signal = rt.clone();
        let mut signals = Signals::new();
        tokio::spawn(async move {
            signals.recv().await;
            info!(
                deadline = ?on_signal.deadline,
                "shutdown requested; stopping gracefully (a second signal exits at once)"
            );
            shutdown::arm_watchdog(on_signal.deadline);
            on_signal.request_stop();
            signals.recv().await;
            shutdown::force_exit();
        });
        rt
    }

    fn request_stop(&self) {
        if let Ok(mut started) = self.stop_started.lock() {
            started.get_or_insert_with(Instant::now);
        }
        let _ = self.stop_tx.send(true);
    }

    /// Resolves once a stop was requested.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    /// Runs `work` unless a stop comes first (then `None`).
    pub async fn unless_stopped<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            out = work => Some(out),
            _ = self.stopped() => None,
        }
    }

    /// How long a shutdown step may still take: `step`, but no longer than what is left of the
    /// deadline.
    fn step_budget(&self, step: Duration) -> Duration {
        let elapsed = self
            .stop_started
            .lock()
            .ok()
            .and_then(|s| s.map(|t| t.elapsed()))
            .unwrap_or_default();
        shutdown::step_timeout(self.deadline, elapsed, step)
    }

    /// Serves /metrics, /healthz and /readyz until [`Endpoints::stop`]; the endpoints outlive
    /// the controller's drain (so /healthz keeps answering) and stop last.
    pub fn serve_http(&self, addr: SocketAddr, metrics: Arc<Metrics>) -> Endpoints {
        let ready = Arc::new(AtomicBool::new(false));
        let state = HttpState {
            metrics,
            ready: ready.clone(),
        };
        let (stop, stop_rx) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let stop = async move {
                let _ = stop_rx.await;
            };
            if let Err(e) = http::serve(addr, state, stop).await {
                error!(error = %e, %addr, "HTTP server failed");
            }
        });
        Endpoints {
            ready,
            stop,
            server,
        }
    }

    /// Stands by until this replica holds the Lease, then keeps renewing it; losing it requests
    /// a stop. `None` when a stop came while standing by.
    pub async fn lead(
        &self,
        client: Client,
        lease: LeaseConfig<'_>,
        metrics: &Metrics,
    ) -> Option<Leadership> {
        let elector = Arc::new(LeaderElector::new(
            client,
            lease.namespace,
            lease.name,
            lease.identity,
            lease.duration.max(Duration::from_secs(2)),
        ));
        self.unless_stopped(elector.acquire()).await?;
        metrics.leader.set(1);
        let lost = Arc::new(AtomicBool::new(false));
        let (holder, lost_flag, rt) = (elector.clone(), lost.clone(), self.clone());
        tokio::spawn(async move {
            holder.hold().await;
            lost_flag.store(true, Ordering::Relaxed);
            rt.request_stop();
        });
        Some(Leadership { elector, lost })
    }

    /// Gives up leadership after the controller stopped: an error when the Lease was lost (so
    /// a fresh replica stands by), else the Lease is released within the deadline.
    pub async fn resign(&self, leadership: Leadership, metrics: &Metrics) -> Result<()> {
        metrics.leader.set(0);
        if leadership.lost.load(Ordering::Relaxed) {
            return Err(Error::Leader(
                "lost the lease; exiting so a fresh replica stands by".into(),
            ));
        }
        // Bounded: with the API server down this must not eat the whole deadline.
        let budget = self.step_budget(shutdown::RELEASE_TIMEOUT);
        if tokio::time::timeout(budget, leadership.elector.release())
            .await
            .is_err()
        {
            warn!(timeout = ?budget, "releasing the lease timed out; a standby takes over when it expires");
        }
        Ok(())
    }
}

/// Where the Lease lives and who holds it.
pub struct LeaseConfig<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub identity: &'a str,
    pub duration: Duration,
}

/// The Lease this replica holds.
pub struct Leadership {
    elector: Arc<LeaderElector>,
    lost: Arc<AtomicBool>,
}

/// The running HTTP endpoints.
pub struct Endpoints {
    ready: Arc<AtomicBool>,
    stop: oneshot::Sender<()>,
    server: JoinHandle<()>,
}

impl Endpoints {
    /// What /readyz answers.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Stops the server, waiting a moment for open requests.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let abort = self.server.abort_handle();
        if tokio::time::timeout(Duration::from_secs(1), self.server)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

/// SIGTERM and SIGINT, registered once so a second signal is never lost.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        Signals {
            #[cfg(unix)]
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok(),
        }
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(term) = self.term.as_mut() {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stop_request_ends_the_work_and_starts_the_deadline() {
        let rt = Runtime::start(Duration::from_secs(10));
        assert_eq!(
            rt.step_budget(Duration::from_secs(3)),
            Duration::from_secs(3)
        );
        rt.request_stop();
        assert_eq!(rt.unless_stopped(std::future::pending::<()>()).await, None);
        tokio::time::timeout(Duration::from_secs(1), rt.stopped())
            .await
            .expect("stopped resolves after the request");
        assert!(rt.step_budget(Duration::from_secs(30)) <= Duration::from_secs(10));
    }
}
