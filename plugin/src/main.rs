//! `kubectl smtp-relay`: day-to-day operations of SmtpRelays from kubectl (issue 30).
//!
//! Installed as `kubectl-smtp_relay` on PATH, kubectl runs it for `kubectl smtp-relay ...`. It
//! talks to the API server as kubectl does (the current context of KUBECONFIG, the user's own
//! RBAC): it reads what the operator publishes (the SmtpRelay, its status, its Events, the
//! serving certificate's Secret) and runs Postfix's own commands in the relay pods (pods/exec).
//!
//! - `status [NAME]`: one screen per relay: Ready, the conditions that need attention, the
//!   serving certificate's expiry, each replica's queue and what is wrong with it, the recent
//!   Warning Events; `-o json|yaml`.
//! - `queue list NAME`: every message queued on any replica, from each pod's own Postfix
//!   (`postqueue -j` through pods/exec, as `kubectl exec` runs it), with filters.
//! - `queue hold|release|delete|retry NAME [ID...]` (or filters, or `--all`): each message on
//!   the replica that holds it, with `postsuper` and `postqueue -i`; `delete` asks first unless
//!   `--yes`. `queue flush NAME`: every replica retries its deferred mail now.
//! - `send NAME --to ADDRESS`: a test message queued in a relay pod's own Postfix, followed
//!   through the pod's mail log (pods/log) to each recipient's delivery.
//! - `users NAME`: the SASL users the relay's replicas serve (never a password).

#![forbid(unsafe_code)]

mod queue;
mod report;
mod send;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use k8s_openapi::api::core::v1::{Event, Pod, Secret};
use kube::api::{AttachParams, ListParams};
use kube::{Api, Client, ResourceExt};
use smtp_relay_operator::floor::contract::{Names, CONTAINER_NAME, POSTFIX_CONFIG_DIR};
use smtp_relay_operator::floor::crd::SmtpRelay;
use smtp_relay_operator::steps::certificate::not_after;

use report::Report;

#[derive(Parser)]
#[command(
    name = "kubectl smtp-relay",
    bin_name = "kubectl smtp-relay",
    version,
    about = "Day-to-day operations of SmtpRelays: status, the queue across replicas, test mail, SASL users"
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
    /// The SASL users the relay serves, as its replicas' databases list them (never a
    /// password).
    Users {
        /// The SmtpRelay.
        name: String,
    },
    /// A test message from inside the cluster, followed to its delivery.
    ///
    /// Queued in a relay pod's own Postfix (from inside the pod, so the relay's client rules
    /// do not apply: this tests the way out, through the relayhost), then followed through
    /// that pod's mail log to each recipient's outcome. Exits non-zero unless every recipient
    /// was accepted by the next server.
    Send {
        /// The SmtpRelay.
        name: String,
        /// A recipient (repeat for more).
        #[arg(long, required = true)]
        to: Vec<String>,
        /// The sender (default: the OAuth2 login's mailbox, else the relay's postmaster).
        #[arg(long)]
        from: Option<String>,
        #[arg(long, default_value = "Test message from kubectl smtp-relay send")]
        subject: String,
        /// The relay pod to send from (default: the first running one).
        #[arg(long)]
        pod: Option<String>,
        /// How long to follow the log for the outcome (30s, 2m).
        #[arg(long, value_parser = queue::seconds, default_value = "60s")]
        wait: i64,
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
        /// The SmtpRelay.
        name: String,
        #[command(flatten)]
        select: Select,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Put messages on hold: no delivery, no expiry, until released.
    Hold(Acting),
    /// Release held messages: back to the deferred queue, delivered at once.
    Release(Acting),
    /// Delete messages: they are neither delivered nor returned to their sender.
    Delete {
        #[command(flatten)]
        acting: Acting,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Try to deliver deferred messages now.
    Retry(Acting),
    /// Try to deliver every deferred message of every replica now.
    Flush {
        /// The SmtpRelay.
        name: String,
    },
}

/// Which messages a queue command applies to: every filter given must hold.
#[derive(Args, Clone)]
struct Select {
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
}

impl Select {
    fn filter(&self) -> queue::Filter {
        queue::Filter {
            sender: self.sender.clone(),
            recipient: self.recipient.clone(),
            older_than: self.older_than,
            queues: [("deferred", self.deferred), ("hold", self.hold)]
                .into_iter()
                .filter(|(_, on)| *on)
                .map(|(q, _)| q.to_string())
                .collect(),
        }
    }
}

/// The relay and the messages an action applies to: queue IDs, filters, or `--all`.
#[derive(Args, Clone)]
struct Acting {
    /// The SmtpRelay.
    name: String,
    /// Queue IDs (as `queue list` shows them).
    ids: Vec<String>,
    #[command(flatten)]
    select: Select,
    /// Every message (with the filters, if any).
    #[arg(long)]
    all: bool,
}

impl Acting {
    /// The messages of `messages` it applies to (see [`queue::select`]).
    fn chosen<'a>(
        &self,
        messages: &'a [queue::Message],
    ) -> anyhow::Result<Vec<&'a queue::Message>> {
        let now = jiff::Timestamp::now().as_second();
        queue::select(messages, &self.ids, &self.select.filter(), self.all, now)
            .map_err(anyhow::Error::msg)
    }
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
        Command::Users { name } => users(&client, &namespace, &name).await,
        Command::Send {
            name,
            to,
            from,
            subject,
            pod,
            wait,
        } => {
            let test = TestMail {
                to,
                from,
                subject,
                pod,
                wait: std::time::Duration::from_secs(wait.unsigned_abs()),
            };
            send_test(&client, &namespace, &name, test).await
        }
        Command::Queue { command } => {
            let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
            match command {
                QueueCommand::List {
                    name,
                    select,
                    output,
                } => queue_list(&client, &api, &namespace, &name, &select.filter(), output).await,
                QueueCommand::Hold(a) => {
                    act(&client, &api, &namespace, &a, queue::Action::Hold).await
                }
                QueueCommand::Release(a) => {
                    act(&client, &api, &namespace, &a, queue::Action::Release).await
                }
                QueueCommand::Retry(a) => {
                    act(&client, &api, &namespace, &a, queue::Action::Retry).await
                }
                QueueCommand::Delete { acting, yes } => {
                    if !yes {
                        confirm_delete(&client, &api, &namespace, &acting).await?;
                    }
                    act(&client, &api, &namespace, &acting, queue::Action::Delete).await
                }
                QueueCommand::Flush { name } => flush(&client, &api, &namespace, &name).await,
            }
        }
    }
}

/// The most of a command's output in a pod that is read (`postqueue -j`, the largest: a few
/// hundred bytes a message).
const EXEC_OUTPUT_CAP: u64 = 256 * 1024 * 1024;

/// Every message queued on the relay's running replicas, each read by its own Postfix, and
/// the replicas that did not answer (naming why).
async fn queued(
    client: &Client,
    api: &Api<Pod>,
    namespace: &str,
    name: &str,
) -> anyhow::Result<(Vec<queue::Message>, Vec<String>)> {
    let mut messages = Vec::new();
    let mut failed = Vec::new();
    for pod in relay_pods(client, namespace, name).await? {
        let listed = exec(api, &pod, &["postqueue", "-c", POSTFIX_CONFIG_DIR, "-j"])
            .await
            .and_then(|out| queue::parse(&pod, &out));
        match listed {
            Ok(found) => messages.extend(found),
            Err(why) => failed.push(why),
        }
    }
    Ok((messages, failed))
}

/// Fails naming the replicas that did not answer, once the others' work is shown.
fn all_answered(failed: &[String]) -> anyhow::Result<()> {
    if !failed.is_empty() {
        anyhow::bail!("not every replica answered:\n  {}", failed.join("\n  "));
    }
    Ok(())
}

/// `queue list`: each running replica's queue, read by its own Postfix, filtered. A replica
/// that does not answer is named on stderr, and the exit code says so, after the others'.
async fn queue_list(
    client: &Client,
    api: &Api<Pod>,
    namespace: &str,
    name: &str,
    filter: &queue::Filter,
    output: Output,
) -> anyhow::Result<()> {
    let (mut messages, failed) = queued(client, api, namespace, name).await?;
    let now = jiff::Timestamp::now().as_second();
    messages.retain(|m| filter.matches(m, now));
    match output {
        Output::Text => print!("{}", queue::text(&messages, now)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&messages)?),
        Output::Yaml => print!("{}", serde_yaml::to_string(&messages)?),
    }
    all_answered(&failed)
}

/// `queue hold|release|delete|retry`: the selected messages, each on the replica that holds
/// it, with Postfix's own commands; says what it did per pod.
async fn act(
    client: &Client,
    api: &Api<Pod>,
    namespace: &str,
    acting: &Acting,
    action: queue::Action,
) -> anyhow::Result<()> {
    let (messages, mut failed) = queued(client, api, namespace, &acting.name).await?;
    let chosen = acting.chosen(&messages)?;
    let mut by_pod: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for m in &chosen {
        by_pod.entry(&m.pod).or_default().push(&m.queue_id);
    }
    if by_pod.is_empty() {
        println!("no message matched");
    }
    for (pod, ids) in by_pod {
        let mut done = 0;
        for (command, count) in action.commands(POSTFIX_CONFIG_DIR, &ids) {
            let args: Vec<&str> = command.iter().map(String::as_str).collect();
            match exec(api, pod, &args).await {
                Ok(_) => done += count,
                Err(why) => failed.push(why),
            }
        }
        println!("{pod}: {done} message(s) {}", action.done());
    }
    all_answered(&failed)
}

/// Asks before `queue delete` deletes what it selected: on a terminal, y to go on; elsewhere,
/// `--yes` is needed.
async fn confirm_delete(
    client: &Client,
    api: &Api<Pod>,
    namespace: &str,
    acting: &Acting,
) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    let (messages, _) = queued(client, api, namespace, &acting.name).await?;
    let chosen = acting.chosen(&messages)?;
    if chosen.is_empty() {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "{} message(s) would be deleted, neither delivered nor returned to their sender: add --yes",
            chosen.len()
        );
    }
    let shown: Vec<queue::Message> = chosen.into_iter().cloned().collect();
    print!(
        "{}",
        queue::text(&shown, jiff::Timestamp::now().as_second())
    );
    print!("Delete these {} message(s)? They are neither delivered nor returned to their sender. [y/N] ", shown.len());
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if !matches!(answer.trim(), "y" | "Y" | "yes") {
        anyhow::bail!("nothing deleted");
    }
    Ok(())
}

/// `users`: each running replica's SASL users (`smtp-relay users` in the pod); one list when
/// they agree, per pod while they differ (a change on its way).
async fn users(client: &Client, namespace: &str, name: &str) -> anyhow::Result<()> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut lists = Vec::new();
    let mut failed = Vec::new();
    for pod in relay_pods(client, namespace, name).await? {
        match exec(&api, &pod, &["smtp-relay", "users"]).await {
            Ok(out) => {
                let mut users: Vec<String> = out.lines().map(str::to_string).collect();
                users.sort();
                lists.push((pod, users));
            }
            Err(why) => failed.push(why),
        }
    }
    print!("{}", users_text(&lists));
    all_answered(&failed)
}

/// The users of each pod: one list when every pod has the same.
fn users_text(lists: &[(String, Vec<String>)]) -> String {
    let show = |users: &[String]| {
        if users.is_empty() {
            "no SASL users\n".to_string()
        } else {
            users.iter().map(|u| format!("{u}\n")).collect()
        }
    };
    match lists {
        [] => String::new(),
        [(_, first), rest @ ..] if rest.iter().all(|(_, u)| u == first) => show(first),
        _ => lists
            .iter()
            .map(|(pod, users)| format!("{pod}:\n{}", show(users)))
            .collect(),
    }
}

/// What `send` sends, and how long it follows the log.
struct TestMail {
    to: Vec<String>,
    from: Option<String>,
    subject: String,
    pod: Option<String>,
    wait: std::time::Duration,
}

/// `send`: the test message queued in one pod's Postfix (`smtp-relay enqueue`), then that
/// pod's log followed until every recipient has an outcome, or `wait` is over.
async fn send_test(
    client: &Client,
    namespace: &str,
    name: &str,
    test: TestMail,
) -> anyhow::Result<()> {
    use futures::AsyncBufReadExt as _;
    use futures::StreamExt as _;
    let relays: Api<SmtpRelay> = Api::namespaced(client.clone(), namespace);
    let relay = get_relay(&relays, name, namespace).await?;
    let pods = running_pods(client, &relay).await?;
    let pod = match test.pod {
        Some(pod) if pods.contains(&pod) => pod,
        Some(pod) => anyhow::bail!("{pod} is not a running pod of SmtpRelay {name}"),
        None => pods
            .into_iter()
            .next()
            .with_context(|| format!("SmtpRelay {name} has no running pod"))?,
    };
    let from = test.from.unwrap_or_else(|| default_sender(&relay));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let message_id = format!(
        "kubectl-smtp-relay.{nanos:x}.{}@{}",
        std::process::id(),
        relay.spec.domain
    );
    let body = format!(
        "A test message of SmtpRelay {namespace}/{name}, queued in {pod} by kubectl smtp-relay send."
    );
    let mut command = vec![
        "smtp-relay",
        "enqueue",
        "--postfix-dir",
        POSTFIX_CONFIG_DIR,
        "--from",
        &from,
        "--subject",
        &test.subject,
        "--body",
        &body,
        "--message-id",
        &message_id,
        "--",
    ];
    command.extend(test.to.iter().map(String::as_str));
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let queued = exec(&api, &pod, &command)
        .await
        .map_err(anyhow::Error::msg)?;
    println!("{pod}: {}", queued.trim());

    let params = kube::api::LogParams {
        container: Some(CONTAINER_NAME.to_string()),
        follow: true,
        // From before the message was queued (the pod's clock, not this machine's).
        since_seconds: Some(LOG_LOOKBACK_SECONDS),
        ..Default::default()
    };
    let log = api
        .log_stream(&pod, &params)
        .await
        .with_context(|| format!("{pod}: reading its log"))?;
    let mut lines = log.lines();
    let mut follow = send::Follow::new(&message_id, test.to.len());
    let deadline = tokio::time::Instant::now() + test.wait;
    while !follow.done() {
        let next = tokio::time::timeout_at(deadline, lines.next()).await;
        match next {
            Ok(Some(Ok(line))) => {
                if let Some(shown) = follow.line(&line) {
                    println!("{pod}: {shown}");
                }
            }
            Ok(Some(Err(e))) => anyhow::bail!("{pod}: reading its log: {e}"),
            Ok(None) => anyhow::bail!("{pod}: its log ended (the pod stopped?)"),
            Err(_) => {
                println!(
                    "{pod}: no outcome for every recipient within {}s; `kubectl smtp-relay queue list {name}` shows the message while it is queued",
                    test.wait.as_secs()
                );
                break;
            }
        }
    }
    match follow.verdict() {
        None => {
            println!("delivered: every recipient accepted by the next server");
            Ok(())
        }
        Some(why) => anyhow::bail!("{pod}: {why}"),
    }
}

/// How far back `send` reads the pod's log: the message was queued just before.
const LOG_LOOKBACK_SECONDS: i64 = 120;

/// The sender of a test message when none is given: the mailbox the relayhost login is for
/// (OAuth2: the relayhost refuses any other), else the address that gets the relay's notices.
fn default_sender(relay: &SmtpRelay) -> String {
    let spec = &relay.spec;
    spec.relayhost
        .oauth2
        .as_ref()
        .map(|o| o.user.clone())
        .or_else(|| spec.postmaster.clone())
        .unwrap_or_else(|| format!("postmaster@{}", spec.domain))
}

/// `queue flush`: every replica's Postfix tries its deferred mail now.
async fn flush(client: &Client, api: &Api<Pod>, namespace: &str, name: &str) -> anyhow::Result<()> {
    let mut failed = Vec::new();
    for pod in relay_pods(client, namespace, name).await? {
        match exec(api, &pod, &["postqueue", "-c", POSTFIX_CONFIG_DIR, "-f"]).await {
            Ok(_) => println!("{pod}: deferred mail flushed"),
            Err(why) => failed.push(why),
        }
    }
    all_answered(&failed)
}

/// The SmtpRelay `name`; an error naming it and the namespace when there is none.
async fn get_relay(
    relays: &Api<SmtpRelay>,
    name: &str,
    namespace: &str,
) -> anyhow::Result<SmtpRelay> {
    relays
        .get_opt(name)
        .await
        .with_context(|| format!("reading SmtpRelay {name}"))?
        .with_context(|| format!("no SmtpRelay {name} in namespace {namespace}"))
}

/// The running pods of the relay `name` (see [`running_pods`]).
async fn relay_pods(client: &Client, namespace: &str, name: &str) -> anyhow::Result<Vec<String>> {
    let relays: Api<SmtpRelay> = Api::namespaced(client.clone(), namespace);
    running_pods(client, &get_relay(&relays, name, namespace).await?).await
}

/// The running pods of `relay`, by its scale selector (`status.selector`).
async fn running_pods(client: &Client, relay: &SmtpRelay) -> anyhow::Result<Vec<String>> {
    let (name, namespace) = (relay.name_any(), relay.namespace().unwrap_or_default());
    let selector = relay
        .status
        .as_ref()
        .and_then(|s| s.selector.clone())
        .with_context(|| format!("SmtpRelay {name} has no pods yet (no status.selector)"))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
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

/// `command` in the pod's relay container: its output (at most [`EXEC_OUTPUT_CAP`] bytes); why
/// not, naming the pod and the command.
async fn exec(api: &Api<Pod>, pod: &str, command: &[&str]) -> Result<String, String> {
    use tokio::io::AsyncReadExt;
    let what = command.first().copied().unwrap_or_default();
    let params = AttachParams::default()
        .container(CONTAINER_NAME)
        .stdin(false)
        .stdout(true)
        .stderr(true);
    let mut process = api
        .exec(pod, command.to_vec(), &params)
        .await
        .map_err(|e| format!("{pod}: exec {what}: {e}"))?;
    let (Some(stdout), Some(stderr)) = (process.stdout(), process.stderr()) else {
        return Err(format!("{pod}: exec {what} gave no output streams"));
    };
    let status = process.take_status();
    let (mut out, mut err) = (String::new(), String::new());
    let (mut stdout, mut stderr) = (stdout.take(EXEC_OUTPUT_CAP), stderr.take(64 * 1024));
    let (read_out, _) = tokio::join!(
        stdout.read_to_string(&mut out),
        stderr.read_to_string(&mut err)
    );
    read_out.map_err(|e| format!("{pod}: reading {what}'s output: {e}"))?;
    let status = match status {
        Some(status) => status.await,
        None => None,
    };
    let _ = process.join().await;
    match status {
        Some(s) if s.status.as_deref() != Some("Success") => Err(format!(
            "{pod}: {what} failed: {}",
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
        Some(name) => vec![get_relay(&relays, name, namespace).await?],
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
        reports.push(Report::new(
            relay,
            &events,
            certificate(client, relay).await,
        ));
    }
    Ok(reports)
}

/// The certificate a relay serves to STARTTLS (with SASL users or a TLS Secret), from the
/// pods' copy `<name>-tls`, read with the user's RBAC: only its expiry is kept.
async fn certificate(client: &Client, relay: &SmtpRelay) -> Option<report::Certificate> {
    let spec = &relay.spec;
    if spec.tls_secret_ref.is_none() && !spec.issued_certificate() {
        return None;
    }
    let secret = Names::tls_secret(&relay.name_any());
    let api: Api<Secret> = Api::namespaced(client.clone(), &relay.namespace().unwrap_or_default());
    let (not_after, unreadable) = match api.get_opt(&secret).await {
        Ok(Some(s)) => (
            s.data
                .as_ref()
                .and_then(|d| d.get("tls.crt"))
                .and_then(|pem| not_after(&pem.0)),
            None,
        ),
        Ok(None) => (None, Some("not there yet".to_string())),
        Err(kube::Error::Api(e)) => (None, Some(e.reason.clone())),
        Err(e) => (None, Some(e.to_string())),
    };
    Some(report::Certificate {
        secret,
        not_after,
        unreadable,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_listed_once_when_the_replicas_agree() {
        let pod = |name: &str, users: &[&str]| {
            (
                name.to_string(),
                users.iter().map(|u| u.to_string()).collect::<Vec<_>>(),
            )
        };
        let same = [pod("r-0", &["a", "b"]), pod("r-1", &["a", "b"])];
        assert_eq!(users_text(&same), "a\nb\n");
        let moving = [pod("r-0", &["a", "b"]), pod("r-1", &["a"])];
        assert_eq!(users_text(&moving), "r-0:\na\nb\nr-1:\na\n");
        assert_eq!(users_text(&[pod("r-0", &[])]), "no SASL users\n");
    }

    /// README.md shows `kubectl smtp-relay --help` as it is.
    #[test]
    fn the_readme_shows_the_help_as_it_is() {
        use clap::CommandFactory as _;
        let help = Cli::command().render_help().to_string();
        let readme = include_str!("../../README.md");
        let shown = readme
            .split_once("$ kubectl smtp-relay --help\n")
            .and_then(|(_, rest)| rest.split_once("```"))
            .map(|(block, _)| block)
            .expect("README.md shows `$ kubectl smtp-relay --help` in a block");
        let commands = |text: &str| -> String {
            text.split_once("\nOptions:")
                .map_or(text, |(head, _)| head)
                .trim_end()
                .to_string()
        };
        assert_eq!(commands(shown), commands(&help));
    }

    /// The krew manifest the release fills in installs this binary, from the archives the
    /// release workflow builds.
    #[test]
    fn the_krew_manifest_installs_this_binary() {
        let manifest = include_str!("../krew/smtp-relay.yaml")
            .replace("VERSION", "1.2.3")
            .replace("SHA256_AMD64", "a")
            .replace("SHA256_ARM64", "b");
        let manifest: serde_yaml::Value = serde_yaml::from_str(&manifest).unwrap();
        let workflow = include_str!("../../.github/workflows/release.yml");
        let platforms = manifest["spec"]["platforms"].as_sequence().unwrap();
        assert_eq!(platforms.len(), 2);
        for p in platforms {
            assert_eq!(p["bin"].as_str(), Some(env!("CARGO_BIN_NAME")));
            let uri = p["uri"].as_str().unwrap();
            let arch = p["selector"]["matchLabels"]["arch"].as_str().unwrap();
            assert!(
                uri.ends_with(&format!("/v1.2.3/kubectl-smtp_relay-linux-{arch}.tar.gz")),
                "{uri}"
            );
            assert!(workflow.contains(&format!("- arch: {arch}")), "{arch}");
        }
        assert!(workflow.contains("kubectl-smtp_relay-linux-${{ matrix.platform.arch }}.tar.gz"));
    }
}
