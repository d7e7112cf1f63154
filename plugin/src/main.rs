//! `kubectl smtp-relay`: day-to-day operations of SmtpRelays from kubectl (issue 30).
//!
//! Installed as `kubectl-smtp_relay` on PATH, kubectl runs it for `kubectl smtp-relay ...`. It
//! talks to the API server as kubectl does (the current context of KUBECONFIG, the user's own
//! RBAC) and reads only what the operator publishes: the SmtpRelay, its status and its Events.
//!
//! - `status [NAME]`: one screen per relay: Ready, the conditions that need attention, each
//!   replica's queue and what is wrong with it, the recent Warning Events; `-o json|yaml`.

#![forbid(unsafe_code)]

mod report;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use k8s_openapi::api::core::v1::Event;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use smtp_relay_operator::floor::crd::SmtpRelay;

use report::Report;

#[derive(Parser)]
#[command(
    name = "kubectl smtp-relay",
    version,
    about = "Day-to-day operations of SmtpRelays: kubectl smtp-relay status [NAME]"
)]
struct Cli {
    /// The namespace (default: the current context's).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long, global = true)]
    all_namespaces: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Ready, the conditions that need attention, each replica's queue, recent warnings.
    Status {
        /// The SmtpRelay (default: every one of the namespace).
        name: Option<String>,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
    Yaml,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("cannot reach the cluster (KUBECONFIG, the current context)")?;
    let namespace = cli
        .namespace
        .unwrap_or_else(|| client.default_namespace().to_string());
    match cli.command {
        Command::Status { name, output } => {
            let reports = status(&client, &namespace, cli.all_namespaces, name.as_deref()).await?;
            print(&reports, output)
        }
    }
}

/// The report of the relay `name`, or of every relay of the namespace (of every namespace with
/// `all`).
async fn status(
    client: &Client,
    namespace: &str,
    all: bool,
    name: Option<&str>,
) -> anyhow::Result<Vec<Report>> {
    let relays: Api<SmtpRelay> = if all {
        Api::all(client.clone())
    } else {
        Api::namespaced(client.clone(), namespace)
    };
    let mut found = match name {
        Some(name) => vec![relays
            .get_opt(name)
            .await
            .with_context(|| format!("reading SmtpRelay {name}"))?
            .with_context(|| format!("no SmtpRelay {name} in namespace {namespace}"))?],
        None => {
            relays
                .list(&ListParams::default())
                .await
                .context("listing SmtpRelays")?
                .items
        }
    };
    if found.is_empty() {
        anyhow::bail!(
            "no SmtpRelay in {}",
            if all {
                "any namespace".to_string()
            } else {
                format!("namespace {namespace}")
            }
        );
    }
    found.sort_by_key(|r| (r.namespace(), r.name_any()));
    let mut reports = Vec::new();
    for relay in &found {
        let ns = relay.namespace().unwrap_or_default();
        let events: Api<Event> = Api::namespaced(client.clone(), &ns);
        let fields = format!(
            "involvedObject.kind=SmtpRelay,involvedObject.name={},type=Warning",
            relay.name_any()
        );
        // Events are the user's to read or not: without them the rest still helps.
        let events = events
            .list(&ListParams::default().fields(&fields))
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        reports.push(Report::new(relay, &events));
    }
    Ok(reports)
}

fn print(reports: &[Report], output: Output) -> anyhow::Result<()> {
    match output {
        Output::Text => {
            let now = jiff::Timestamp::now().as_second();
            let texts: Vec<String> = reports.iter().map(|r| r.text(now)).collect();
            print!("{}", texts.join("\n"));
        }
        Output::Json => println!("{}", serde_json::to_string_pretty(reports)?),
        Output::Yaml => print!("{}", serde_yaml::to_string(reports)?),
    }
    Ok(())
}
