use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use clap::{Parser, Subcommand};
use kube::Client;
use smtp_relay_operator::builders::{BuildOptions, DEFAULT_RELAY_IMAGE};
use smtp_relay_operator::controller::{self, RunConfig};
use smtp_relay_operator::http::{self, HttpState};
use smtp_relay_operator::leader::LeaderElector;
use smtp_relay_operator::metrics::Metrics;
use smtp_relay_operator::telemetry::{self, LogFormat};
use smtp_relay_operator::{crdgen, shutdown, Error};
use tokio::sync::watch;
use tracing::{error, info, warn};

/// Kubernetes operator that turns an SmtpRelay resource into a running Postfix relay.
#[derive(Parser, Debug)]
#[command(name = "smtp-relay-operator", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the SmtpRelay CustomResourceDefinition as YAML.
    Crd,
    /// Run the controller.
    Run(RunArgs),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Namespace to watch; all namespaces when empty.
    #[arg(long, env = "WATCH_NAMESPACE", default_value = "")]
    namespace: String,
    /// Relay image used when an SmtpRelay does not set spec.image.
    #[arg(long, env = "RELAY_IMAGE", default_value = DEFAULT_RELAY_IMAGE)]
    relay_image: String,
    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Elect a leader with a Lease so several replicas can run.
    #[arg(long, env = "LEADER_ELECTION", default_value_t = false)]
    leader_election: bool,
    /// Name of the leader election Lease.
    #[arg(long, env = "LEASE_NAME", default_value = "smtp-relay-operator")]
    lease_name: String,
    /// Namespace of the leader election Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Lease duration in seconds; a standby takes over this long after the leader stops renewing.
    #[arg(long, env = "LEASE_DURATION_SECONDS", default_value_t = 15)]
    lease_duration_seconds: u64,
    /// Identity of this replica (Lease holder, Event reporter); the pod name.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a graceful stop (SIGTERM/SIGINT) may take before the process exits anyway; a
    /// second signal exits at once.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECONDS", default_value_t = 10)]
    shutdown_timeout_seconds: u64,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => match crdgen::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                std::process::ExitCode::FAILURE
            }
        },
        Command::Run(args) => {
            telemetry::init(args.log_format);
            match run(args).await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    error!(error = %e, "operator stopped");
                    std::process::ExitCode::FAILURE
                }
            }
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

async fn run(args: RunArgs) -> Result<(), Error> {
    // Stop on SIGTERM/SIGINT (bounded by the deadline; a second signal exits at once), or when
    // leadership is lost.
    let (stop_tx, stop_rx) = watch::channel(false);
    let deadline = shutdown::deadline(args.shutdown_timeout_seconds);
    let mut signals = Signals::new();
    let stop_on_signal = stop_tx.clone();
    tokio::spawn(async move {
        signals.recv().await;
        info!(
            ?deadline,
            "shutdown requested; stopping gracefully (a second signal exits at once)"
        );
        shutdown::arm_watchdog(deadline);
        let _ = stop_on_signal.send(true);
        signals.recv().await;
        shutdown::force_exit();
    });
    let wait_stop = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let stop_started = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
            Instant::now()
        }
    };
    let stop_started = tokio::spawn(stop_started);

    let client = tokio::select! {
        c = Client::try_default() => c?,
        _ = wait_stop(stop_rx.clone()) => return Ok(()),
    };
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let state = HttpState {
        metrics: metrics.clone(),
        ready: ready.clone(),
    };
    let addr = args.http_addr;
    // The endpoints outlive the controller's drain (so /healthz keeps answering) and stop last.
    let (http_stop_tx, http_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let http_server = tokio::spawn(async move {
        let stop = async move {
            let _ = http_stop_rx.await;
        };
        if let Err(e) = http::serve(addr, state, stop).await {
            error!(error = %e, %addr, "HTTP server failed");
        }
    });

    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("smtp-relay-operator-{}", std::process::id()));
    let cfg = RunConfig {
        namespace: Some(args.namespace.clone()).filter(|n| !n.is_empty()),
        build: BuildOptions {
            relay_image: args.relay_image.clone(),
        },
        instance: Some(identity.clone()),
    };

    let elector = if args.leader_election {
        let elector = Arc::new(LeaderElector::new(
            client.clone(),
            &args.lease_namespace,
            &args.lease_name,
            &identity,
            Duration::from_secs(args.lease_duration_seconds.max(2)),
        ));
        ready.store(true, Ordering::Relaxed);
        let stood_by = tokio::select! {
            _ = elector.acquire() => false,
            _ = wait_stop(stop_rx.clone()) => true,
        };
        if stood_by {
            stop_http(http_stop_tx, http_server).await;
            info!("stopped while standing by");
            return Ok(());
        }
        metrics.leader.set(1);
        let holder = elector.clone();
        let lost = Arc::new(AtomicBool::new(false));
        let lost2 = lost.clone();
        let stop_on_loss = stop_tx.clone();
        tokio::spawn(async move {
            holder.hold().await;
            lost2.store(true, Ordering::Relaxed);
            let _ = stop_on_loss.send(true);
        });
        Some((elector, lost))
    } else {
        None
    };

    ready.store(true, Ordering::Relaxed);
    info!(namespace = ?cfg.namespace, image = %cfg.build.relay_image, "controller starting");
    controller::run(client, cfg, metrics.clone(), wait_stop(stop_rx)).await;
    ready.store(false, Ordering::Relaxed);
    metrics.leader.set(0);

    let mut result = Ok(());
    if let Some((elector, lost)) = elector {
        if lost.load(Ordering::Relaxed) {
            result = Err(Error::Leader(
                "lost the lease; exiting so a fresh replica stands by".into(),
            ));
        } else {
            // Bounded: with the API server down this must not eat the whole deadline.
            let elapsed = if stop_started.is_finished() {
                stop_started.await.map(|t| t.elapsed()).unwrap_or_default()
            } else {
                Duration::ZERO
            };
            let budget = shutdown::step_timeout(deadline, elapsed, shutdown::RELEASE_TIMEOUT);
            if tokio::time::timeout(budget, elector.release())
                .await
                .is_err()
            {
                warn!(timeout = ?budget, "releasing the lease timed out; a standby takes over when it expires");
            }
        }
    }
    stop_http(http_stop_tx, http_server).await;
    if result.is_ok() {
        info!("controller stopped");
    }
    result
}

/// Stops the HTTP server, waiting a moment for open requests.
async fn stop_http(stop: tokio::sync::oneshot::Sender<()>, server: tokio::task::JoinHandle<()>) {
    let _ = stop.send(());
    let abort = server.abort_handle();
    if tokio::time::timeout(Duration::from_secs(1), server)
        .await
        .is_err()
    {
        abort.abort();
    }
}
