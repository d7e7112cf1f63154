use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use smtp_relay_operator::crdgen;
use smtp_relay_operator::floor::contract::DEFAULT_RELAY_IMAGE;
use smtp_relay_operator::floor::contract::{BuildOptions, ReferableLabel};
use smtp_relay_operator::floor::error::Error;
use smtp_relay_operator::runtime::crd_upgrade;
use smtp_relay_operator::runtime::metrics::{self, Metrics};
use smtp_relay_operator::runtime::shutdown;
use smtp_relay_operator::runtime::telemetry::{self, LogFormat};
use smtp_relay_operator::runtime::{LeaseConfig, Runtime};
use smtp_relay_operator::watch::{self, RunConfig};
use tracing::{error, info};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    /// Run the controller (boxed: its arguments dwarf the other command's).
    Run(Box<RunArgs>),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Namespace to watch; all namespaces when empty.
    #[arg(long, env = "WATCH_NAMESPACE", default_value = "")]
    namespace: String,
    /// Relay image used when an SmtpRelay does not set spec.image.
    #[arg(long, env = "RELAY_IMAGE", default_value = DEFAULT_RELAY_IMAGE)]
    relay_image: String,
    /// The images an SmtpRelay's spec.image may name, comma-separated: a repository
    /// (`ghcr.io/org/relay`: any tag or digest of it) or a prefix ending in `/` (every
    /// repository under it). Empty: any image.
    #[arg(long, env = "ALLOWED_RELAY_IMAGES", value_delimiter = ',', num_args = 0..)]
    allowed_relay_images: Vec<String>,
    /// A label (`key=value`, e.g. `smtprelay.dev/referable=true`) every Secret an SmtpRelay
    /// references must carry, and every Secret a rotated OAuth2 token is written back into: a
    /// relay referencing another is refused before anything is read or written for it.
    /// Omitted: any Secret of the relay's namespace.
    #[arg(long, env = "SECRET_REFERENCE_LABEL")]
    secret_reference_label: Option<ReferableLabel>,
    /// Keep a NetworkPolicy for every relay (who may reach its SMTP, PROXY-protocol and metrics
    /// ports: see the CRD's spec.networkPolicy). false: none, and the operator deletes those
    /// it made; the cluster's own policies decide.
    #[arg(long, env = "RELAY_NETWORK_POLICIES", default_value_t = true, action = clap::ArgAction::Set)]
    relay_network_policies: bool,
    /// Namespaces whose pods may read every relay's metrics, comma-separated (the one your
    /// Prometheus runs in), besides the operator's own and each relay's
    /// spec.networkPolicy.metricsFromNamespaces.
    #[arg(
        long,
        env = "RELAY_METRICS_FROM_NAMESPACES",
        value_delimiter = ',',
        num_args = 0..,
        value_parser = namespace_name
    )]
    relay_metrics_from_namespaces: Vec<String>,
    /// Give every relay's pods their own user namespace (`hostUsers: false`: root in a relay
    /// pod is an unprivileged UID on the node) unless its spec.hostUsers says otherwise.
    /// false: the pods of relays that do not set it share the node's users, for nodes whose
    /// runtime lacks user namespaces.
    #[arg(long, env = "RELAY_USER_NAMESPACES", default_value_t = true, action = clap::ArgAction::Set)]
    relay_user_namespaces: bool,
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
    /// The operator's own namespace: where its leader election Lease is, and whose pods the
    /// relays' NetworkPolicies admit to their metrics.
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
    /// At startup, server-side apply this operator's SmtpRelay CRD over a served one that is
    /// older (never creating, deleting or downgrading it); false leaves the CRD to you.
    #[arg(
        long,
        env = "CRD_UPGRADE",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    crd_upgrade: bool,
}

/// A namespace name, as `--relay-metrics-from-namespaces` takes it.
fn namespace_name(s: &str) -> Result<String, String> {
    let s = s.trim();
    // An empty value (the variable set to nothing) names none.
    if s.is_empty() || smtp_relay_operator::steps::judge::is_namespace_name(s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a namespace name (lowercase letters, digits and '-')"
        ))
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => match crdgen::crd_yaml() {
            Ok(yaml) => {
                use std::io::Write as _;
                // A reader that stops early (`| grep -q`, `| head`) is no error: print!
                // would panic on the closed pipe.
                match std::io::stdout().lock().write_all(yaml.as_bytes()) {
                    Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                        eprintln!("writing the CRD: {e}");
                        std::process::ExitCode::FAILURE
                    }
                    _ => std::process::ExitCode::SUCCESS,
                }
            }
            Err(e) => {
                eprintln!("{e}");
                std::process::ExitCode::FAILURE
            }
        },
        Command::Run(args) => {
            telemetry::init(args.log_format);
            match run(*args).await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    error!(error = %e, "operator stopped");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}

async fn run(args: RunArgs) -> Result<(), Error> {
    let rt = Runtime::start(shutdown::deadline(args.shutdown_timeout_seconds));
    let metrics = Arc::new(Metrics::default());
    let Some(client) = rt
        .unless_stopped(metrics::counted_client(metrics.clone()))
        .await
        .transpose()?
    else {
        return Ok(());
    };
    let endpoints = rt.serve_http(args.http_addr, metrics.clone());
    // Before anything reads an SmtpRelay: the API server then serves (and prunes by) this
    // version's schema. Its failure is a warning; the operator runs on.
    if args.crd_upgrade
        && rt
            .unless_stopped(crd_upgrade::upgrade(client.clone()))
            .await
            .is_none()
    {
        endpoints.stop().await;
        info!("stopped while upgrading the CRD");
        return Ok(());
    }
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("smtp-relay-operator-{}", std::process::id()));

    // A replica standing by for the Lease is ready: it can take over.
    endpoints.set_ready(true);
    let leadership = match args.leader_election {
        false => None,
        true => match rt
            .lead(client.clone(), lease(&args, &identity), &metrics)
            .await
        {
            Some(leadership) => Some(leadership),
            None => {
                endpoints.stop().await;
                info!("stopped while standing by");
                return Ok(());
            }
        },
    };

    let cfg = RunConfig {
        namespace: Some(args.namespace.clone()).filter(|n| !n.is_empty()),
        build: BuildOptions {
            relay_image: args.relay_image.clone(),
            allowed_relay_images: args
                .allowed_relay_images
                .iter()
                .map(|i| i.trim().to_string())
                .filter(|i| !i.is_empty())
                .collect(),
            secret_reference_label: args.secret_reference_label.clone(),
            operator_namespace: args.lease_namespace.clone(),
            network_policies: args.relay_network_policies,
            metrics_from_namespaces: args
                .relay_metrics_from_namespaces
                .iter()
                .filter(|n| !n.is_empty())
                .cloned()
                .collect(),
            user_namespaces: args.relay_user_namespaces,
        },
        instance: Some(identity),
    };
    info!(namespace = ?cfg.namespace, image = %cfg.build.relay_image, allowed_images = ?cfg.build.allowed_relay_images, secret_reference_label = ?cfg.build.secret_reference_label, "controller starting");
    watch::run(client, cfg, metrics.clone(), rt.stopped()).await;
    endpoints.set_ready(false);

    let result = match leadership {
        Some(leadership) => rt.resign(leadership, &metrics).await,
        None => Ok(()),
    };
    endpoints.stop().await;
    if result.is_ok() {
        info!("controller stopped");
    }
    result
}

fn lease<'a>(args: &'a RunArgs, identity: &'a str) -> LeaseConfig<'a> {
    LeaseConfig {
        namespace: &args.lease_namespace,
        name: &args.lease_name,
        identity,
        duration: Duration::from_secs(args.lease_duration_seconds),
    }
}
