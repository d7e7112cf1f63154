//! `kubectl smtp-relay`: day-to-day operations of SmtpRelays from kubectl (issue 30).
//!
//! Installed as `kubectl-smtp_relay` on PATH, kubectl runs it for `kubectl smtp-relay ...`. It
//! talks to the API server as kubectl does (the current context of KUBECONFIG, the user's own
//! RBAC) and reads only what the operator publishes: the SmtpRelay, its status and its Events.
//!
//! - `status [NAME]`: one screen per relay: Ready, the conditions that need attention, each
//!   replica's queue and what is wrong with it, the recent Warning Events; `-o json|yaml`.
//! - `queue list NAME`: every message queued on any replica, from each pod's own Postfix
//!   (`postqueue -j` through pods/exec, as `kubectl exec` runs it), with filters.

#![forbid(unsafe_code)]

mod queue;
mod report;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{AttachParams, ListParams};
use kube::{Api, Client, ResourceExt};
use smtp_relay_operator::floor::contract::{CONTAINER_NAME, POSTFIX_CONFIG_DIR};
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
    /// The mail queued on the relay's replicas.
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
}

#[derive(Subcommand)]
enum QueueCommand {
    /// Every message queued on the relay's replicas: pod, queue ID, queue, size, arrival,
    /// sender, recipients, the last delivery error.
    List {
        name: String,
        /// Only senders containing this (case-insensitive).
        #[arg(long)]
        sender: Option<String>,
        /// Only messages with a recipient containing this (case-insensitive).
        #[arg(long)]
        recipient: Option<String>,
        /// Only messages that arrived at least this long ago (30m, 2h, 1d).
        #[arg(long, value_parser = queue::seconds)]
        older_than: Option<i64>,
        /// Only deferred messages.
        #[arg(long)]
        deferred: bool,
        /// Only messages on hold.
        #[arg(long)]
        hold: bool,
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
        Command::Queue {
            command:
                QueueCommand::List {
                    name,
                    sender,
                    recipient,
                    older_than,
                    deferred,
                    hold,
                    output,
                },
        } => {
            let filter = queue::Filter {
                sender,
                recipient,
                older_than,
                queues: [("deferred", deferred), ("hold", hold)]
                    .into_iter()
                    .filter(|(_, on)| *on)
                    .map(|(q, _)| q.to_string())
                    .collect(),
            };
            queue_list(&client, &namespace, &name, &filter, output).await
        }
    }
}

/// The most of one pod's `postqueue -j` output that is read (a message is a few hundred bytes).
const QUEUE_OUTPUT_CAP: u64 = 256 * 1024 * 1024;

/// `queue list`: each running replica's queue, read by its own Postfix, filtered. A replica
/// that does not answer is named on stderr, and the exit code says so, after the others'.
async fn queue_list(
    client: &Client,
    namespace: &str,
    name: &str,
    filter: &queue::Filter,
    output: Output,
) -> anyhow::Result<()> {
    let pods = relay_pods(client, namespace, name).await?;
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut messages = Vec::new();
    let mut failed = Vec::new();
    for pod in &pods {
        match postqueue(&api, pod)
            .await
            .and_then(|out| queue::parse(pod, &out))
        {
            Ok(found) => messages.extend(found),
            Err(why) => failed.push(why),
        }
    }
    let now = jiff::Timestamp::now().as_second();
    messages.retain(|m| filter.matches(m, now));
    match output {
        Output::Text => print!("{}", queue::text(&messages, now)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&messages)?),
        Output::Yaml => print!("{}", serde_yaml::to_string(&messages)?),
    }
    if !failed.is_empty() {
        anyhow::bail!("not every replica answered:\n  {}", failed.join("\n  "));
    }
    Ok(())
}

/// The running pods of the relay `name`, by its scale selector (`status.selector`).
async fn relay_pods(client: &Client, namespace: &str, name: &str) -> anyhow::Result<Vec<String>> {
    let relays: Api<SmtpRelay> = Api::namespaced(client.clone(), namespace);
    let relay = relays
        .get_opt(name)
        .await
        .with_context(|| format!("reading SmtpRelay {name}"))?
        .with_context(|| format!("no SmtpRelay {name} in namespace {namespace}"))?;
    let selector = relay
        .status
        .and_then(|s| s.selector)
        .with_context(|| format!("SmtpRelay {name} has no pods yet (no status.selector)"))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut names: Vec<String> = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .context("listing the relay's pods")?
        .items
        .into_iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .map(|p| p.name_any())
        .collect();
    names.sort();
    Ok(names)
}

/// `postqueue -j` in the pod's relay container; why not, naming the pod.
async fn postqueue(api: &Api<Pod>, pod: &str) -> Result<String, String> {
    use tokio::io::AsyncReadExt;
    let params = AttachParams::default()
        .container(CONTAINER_NAME)
        .stdin(false)
        .stdout(true)
        .stderr(true);
    let command = ["postqueue", "-c", POSTFIX_CONFIG_DIR, "-j"];
    let mut process = api
        .exec(pod, command, &params)
        .await
        .map_err(|e| format!("{pod}: exec: {e}"))?;
    let (Some(stdout), Some(stderr)) = (process.stdout(), process.stderr()) else {
        return Err(format!("{pod}: exec gave no output streams"));
    };
    let status = process.take_status();
    let (mut out, mut err) = (String::new(), String::new());
    let (mut stdout, mut stderr) = (stdout.take(QUEUE_OUTPUT_CAP), stderr.take(64 * 1024));
    let (read_out, _) = tokio::join!(
        stdout.read_to_string(&mut out),
        stderr.read_to_string(&mut err)
    );
    read_out.map_err(|e| format!("{pod}: reading postqueue's output: {e}"))?;
    let status = match status {
        Some(status) => status.await,
        None => None,
    };
    let _ = process.join().await;
    match status {
        Some(s) if s.status.as_deref() != Some("Success") => Err(format!(
            "{pod}: postqueue -j failed: {}",
            if err.trim().is_empty() {
                s.message.unwrap_or_default()
            } else {
                err.trim().to_string()
            }
        )),
        _ => Ok(out),
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
