use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use smtp_relay::postfix::layout::Layout;
use smtp_relay::run::{self, RunOptions, Source};
use smtp_relay::smtp_client::{self, SendRequest, StartTls};

/// A Postfix relay restricted to one domain: the entrypoint of the smtp-relay image.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the inputs, configure Postfix and run it in the foreground.
    ///
    /// Inputs come from --config (the file the operator mounts, secrets as files) or, without
    /// it, from the original image's environment variables:
    ///
    ///   RELAY_MYDOMAIN (required)   the one domain this relay serves
    ///   RELAY_HOST (required)       relayhost: host, host:port, [host] or [host]:port
    ///   RELAY_MYHOSTNAME            the relay's host name (banner, HELO)
    ///   RELAY_MYNETWORKS            networks allowed to relay without login (space separated CIDRs)
    ///   RELAY_DOMAINS               more recipient domains of the strict modes (RELAY_MYDOMAIN
    ///                               always is one)
    ///   RELAY_LOGIN, RELAY_PASSWORD credentials for the relayhost (or POSTFIX_DIR/sasl_passwd)
    ///   RELAY_USE_TLS               yes: require TLS to the relayhost; no: never use it
    ///   RELAY_TLS_VERIFY            none|may|encrypt|dane|dane-only|fingerprint|verify|secure
    ///                               (with a login the default is secure: the relayhost's
    ///                               certificate must name RELAY_HOST; an IP address needs
    ///                               RELAY_TLS_CA or a level; a weaker one is your choice)
    ///   RELAY_TLS_CA                CA file for the relayhost's certificate (default: the
    ///                               system CAs)
    ///   RELAY_ALLOW_CLEARTEXT_CREDENTIALS  yes: a login may go out at level none or may
    ///                               (refused without it: the password could travel in clear)
    ///   RELAY_SMTPS                 yes: implicit TLS to the relayhost (default: when port is 465)
    ///   RELAY_POSTMASTER            receives bounce and error notices (default postmaster@domain)
    ///   RELAY_STRICT_SENDER_MYDOMAIN  true: senders must belong to the relay domains
    ///   RELAY_MODE                  STRICT | ALLOW_SASLAUTH_NODOMAIN | ALLOW_NETAUTH_NODOMAIN |
    ///                               ALLOW_AUTH_NODOMAIN, or a list of Postfix relay restrictions
    ///   RELAY_TLS_CERT, RELAY_TLS_KEY  offer STARTTLS to clients; AUTH only after it
    ///   RELAY_TLS_MIN_VERSION       oldest TLS clients may use: TLSv1.2 (default), TLSv1.3, or
    ///                               TLSv1.0|TLSv1.1 for legacy devices (CBC suites come back)
    ///   RELAY_EXTRAS_SETTINGS       (deprecated) space separated name=value Postfix settings
    ///   POSTCONF_<name>=<value>     any Postfix parameter, applied last
    ///   POSTFIX_DIR/client_sasl_passwd  SASL users, "USERNAME PASSWORD" per line
    #[command(verbatim_doc_comment)]
    Run(RunArgs),
    /// Check that the relay answers SMTP: banner, EHLO, NOOP, QUIT (readiness and startup
    /// probes); with --liveness, only that it is alive, without SMTP (liveness probe).
    Probe {
        /// Address of the relay; defaults to where `run` listens (RELAY_LISTEN).
        #[arg(long, env = "RELAY_LISTEN", default_value = "[::]:25")]
        address: String,
        /// Deadline for each step, in seconds.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
        /// Check liveness instead: the Postfix master runs and the supervisor checked its
        /// inputs within --max-silence seconds. Cheap and without SMTP, so a busy relay is
        /// never restarted for a slow banner.
        #[arg(long)]
        liveness: bool,
        /// With --liveness: how long the supervisor may go without checking its inputs.
        #[arg(long, default_value_t = 60)]
        max_silence: u64,
        /// With --liveness: where `run` writes Postfix's configuration (RELAY_POSTFIX_DIR).
        #[arg(long, env = "RELAY_POSTFIX_DIR", default_value = "/etc/postfix")]
        postfix_dir: PathBuf,
        /// With --liveness: the mail queue, which holds master.pid (RELAY_SPOOL_DIR).
        #[arg(long, env = "RELAY_SPOOL_DIR", default_value = "/var/spool/postfix")]
        spool_dir: PathBuf,
        /// Check readiness: fail while the pod is asked to drain (so it leaves the Service),
        /// else as without it.
        #[arg(long, conflicts_with = "liveness")]
        readiness: bool,
        /// With --readiness: the pod's annotations (RELAY_POD_ANNOTATIONS).
        #[arg(long, env = "RELAY_POD_ANNOTATIONS")]
        pod_annotations: Option<PathBuf>,
    },
    /// Stops the Postfix master if the supervisor dies without doing it (started by `run`).
    #[command(hide = true)]
    GuardMaster {
        #[arg(long)]
        master: i32,
        #[arg(long)]
        supervisor: i32,
        #[arg(long, default_value_t = 60)]
        stop_timeout: u64,
    },
    /// Send a test message (replaces the original image's smtp_client.py).
    Send(SendArgs),
    /// Queue a test message in this relay's own Postfix, with its `sendmail`: it goes out
    /// through the relayhost as a client's mail does (smtpd's restrictions do not apply: it
    /// comes from inside the pod). Prints its Message-ID, by which the mail log names its
    /// queue ID (`kubectl smtp-relay send` follows it there).
    Enqueue(EnqueueArgs),
    /// List the SASL users registered in the relay's database (never their passwords).
    Users {
        #[arg(long, env = "RELAY_DATA_DIR", default_value = "/data")]
        data_dir: PathBuf,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Relay config file (YAML); without it the RELAY_* variables are read.
    #[arg(long, env = "RELAY_CONFIG")]
    config: Option<PathBuf>,
    /// Address and port smtpd listens on; `[::]:PORT` is every address, IPv4 and IPv6.
    #[arg(long, env = "RELAY_LISTEN", default_value = "[::]:25")]
    listen: String,
    /// Directory for the generated Postfix configuration.
    #[arg(long, env = "RELAY_POSTFIX_DIR", default_value = "/etc/postfix")]
    postfix_dir: PathBuf,
    /// The mail queue; keep it on a persistent volume.
    #[arg(long, env = "RELAY_SPOOL_DIR", default_value = "/var/spool/postfix")]
    spool_dir: PathBuf,
    /// SASL user database and Postfix data.
    #[arg(long, env = "RELAY_DATA_DIR", default_value = "/data")]
    data_dir: PathBuf,
    /// Serve Prometheus metrics at http://ADDRESS/metrics (off when unset).
    #[arg(long, env = "RELAY_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Seconds between checks of the inputs for changes (mounted Secrets, the config file).
    #[arg(long, env = "RELAY_RELOAD_INTERVAL", default_value_t = 2)]
    reload_interval: u64,
    /// On SIGTERM, at most this many seconds to deliver the queue to the relayhost before
    /// stopping Postfix (less when the relayhost refuses it). Mail still queued after it stays
    /// on the spool. 0 stops at once.
    #[arg(long, env = "RELAY_DRAIN_TIMEOUT", default_value_t = 25)]
    drain_timeout: u64,
    /// Where a fatal error is also written, for Kubernetes to show as the container's
    /// termination message; only when the file exists (the kubelet creates it).
    #[arg(long, env = "RELAY_TERMINATION_LOG", default_value = TERMINATION_LOG)]
    termination_log: PathBuf,
    /// The pod's annotations as a downward API file: the operator asks a replica to drain
    /// (scaled away, or its relay deleted) with `smtprelay.dev/drain: "true"`, and gives the
    /// pod's configuration revision with `smtprelay.dev/config-hash`: the config file is
    /// applied only while the `revision` file beside it says the same.
    #[arg(long, env = "RELAY_POD_ANNOTATIONS")]
    pod_annotations: Option<PathBuf>,
    /// At start, at most this many seconds to wait for the config file of the pod's own
    /// revision (the kubelet may still be projecting a new ConfigMap) before going on with the
    /// one mounted.
    #[arg(long, env = "RELAY_REVISION_WAIT", default_value_t = smtp_relay::revision::DEFAULT_WAIT.as_secs())]
    revision_wait: u64,
}

/// The test message of `send` and `enqueue`.
#[derive(Args)]
struct MessageArgs {
    /// The sender (envelope and From:).
    #[arg(long, short)]
    from: String,
    /// Recipients.
    #[arg(required = true)]
    to: Vec<String>,
    #[arg(long, short = 'j', default_value = "smtp-relay test message")]
    subject: String,
    #[arg(long, default_value = "This is a test message from smtp-relay.")]
    body: String,
}

#[derive(Args)]
struct SendArgs {
    /// Relay address.
    #[arg(long, short, env = "RELAY_LISTEN", default_value = "[::]:25")]
    server: String,
    #[command(flatten)]
    message: MessageArgs,
    /// SASL login; the password is read from SMTP_PASSWORD or --password-file, never from the
    /// command line.
    #[arg(long, short)]
    user: Option<String>,
    #[arg(long)]
    password_file: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = StartTls::Opportunistic)]
    starttls: StartTls,
    /// Server name expected in its certificate (default: the server's address).
    #[arg(long)]
    tls_name: Option<String>,
    /// Extra CA certificate (PEM) to trust.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

#[derive(Args)]
struct EnqueueArgs {
    #[command(flatten)]
    message: MessageArgs,
    /// The Message-ID, without <> (default: one made of the time, the process and the host).
    #[arg(long)]
    message_id: Option<String>,
    /// Where `run` writes Postfix's configuration (RELAY_POSTFIX_DIR).
    #[arg(long, env = "RELAY_POSTFIX_DIR", default_value = "/etc/postfix")]
    postfix_dir: PathBuf,
    /// Postfix's sendmail.
    #[arg(long, default_value = "/usr/sbin/sendmail")]
    sendmail: PathBuf,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // `run` is the container's process: its arguments' errors end it like its own.
            if e.use_stderr() && std::env::args_os().nth(1).is_some_and(|a| a == "run") {
                let path = std::env::var_os("RELAY_TERMINATION_LOG")
                    .map_or_else(|| PathBuf::from(TERMINATION_LOG), PathBuf::from);
                // Its first line says what is wrong (the rest: usage, and where help is).
                let rendered = e.render().to_string();
                let first = rendered.lines().next().unwrap_or_default();
                let what = first.strip_prefix("error: ").unwrap_or(first);
                write_termination_message(&path, &format!("invalid arguments: {what}"));
            }
            e.exit()
        }
    };
    match cli.command {
        Command::Run(args) => run_relay(args),
        Command::Probe {
            liveness: true,
            max_silence,
            postfix_dir,
            spool_dir,
            ..
        } => {
            let layout = Layout {
                config_dir: postfix_dir,
                spool_dir,
                data_dir: PathBuf::new(),
                listen: String::new(),
            };
            report(smtp_relay::liveness::check(
                &layout,
                Duration::from_secs(max_silence),
            ))
        }
        Command::Probe {
            readiness: true,
            pod_annotations: Some(annotations),
            ..
        } if smtp_relay::drain::requested(&annotations) => report::<&str>(Err(
            "draining (scaled away or deleted): out of the Service until the queue is delivered",
        )),
        Command::Probe {
            address, timeout, ..
        } => {
            let result = smtp_client::local_addresses(&address)
                .and_then(|all| smtp_client::probe_any(&all, Duration::from_secs(timeout)));
            report(result.map(|()| "ok".to_string()))
        }
        Command::GuardMaster {
            master,
            supervisor,
            stop_timeout,
        } => {
            let done = smtp_relay::guard::watch(
                nix::unistd::Pid::from_raw(master),
                nix::unistd::Pid::from_raw(supervisor),
                Duration::from_secs(stop_timeout),
            );
            tracing::debug!("{done}");
            ExitCode::SUCCESS
        }
        Command::Send(args) => report(send(args)),
        Command::Enqueue(args) => report(enqueue(args)),
        Command::Users { data_dir } => {
            let layout = Layout {
                config_dir: PathBuf::new(),
                spool_dir: PathBuf::new(),
                data_dir,
                listen: String::new(),
            };
            match smtp_relay::sasl::list(&layout) {
                Ok(users) => {
                    users.iter().for_each(|u| println!("{u}"));
                    ExitCode::SUCCESS
                }
                Err(e) => report(Err(e)),
            }
        }
    }
}

fn run_relay(args: RunArgs) -> ExitCode {
    let source = match args.config {
        Some(path) => Source::File(path),
        None => Source::Env(
            std::env::vars()
                .filter(|(k, _)| {
                    k.starts_with("RELAY_")
                        || k.starts_with(smtp_relay::inputs::env::POSTCONF_PREFIX)
                })
                .collect(),
        ),
    };
    let opts = RunOptions {
        source,
        layout: Layout {
            config_dir: args.postfix_dir,
            spool_dir: args.spool_dir,
            data_dir: args.data_dir,
            listen: args.listen,
        },
        metrics_listen: args.metrics_listen,
        reload_interval: Duration::from_secs(args.reload_interval.max(1)),
        stop_timeout: Duration::from_secs(60),
        drain_timeout: Duration::from_secs(args.drain_timeout),
        termination_log: args.termination_log,
        pod_annotations: args.pod_annotations,
        revision_wait: Duration::from_secs(args.revision_wait),
    };
    let termination_log = opts.termination_log.clone();
    write_termination_message_on_panic(termination_log.clone());
    let code = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(run::run(opts)),
        Err(e) => {
            let message = format!("cannot start the async runtime: {e}");
            eprintln!("smtp-relay: {message}");
            write_termination_message(&termination_log, &message);
            return ExitCode::FAILURE;
        }
    };
    // Every fatal path of `run` writes its message; should one not, the status still says
    // that the relay failed, and where to look.
    if code != ExitCode::SUCCESS
        && std::fs::metadata(&termination_log).is_ok_and(|m| m.is_file() && m.len() == 0)
    {
        let number = [
            run::exit::POSTFIX_DIED,
            run::exit::BAD_CONFIG,
            run::exit::SETUP_FAILED,
        ]
        .into_iter()
        .find(|&n| ExitCode::from(n) == code)
        .map_or_else(|| "non-zero".to_string(), |n| n.to_string());
        write_termination_message(
            &termination_log,
            &format!("smtp-relay failed (exit code {number}); its log on stderr says why"),
        );
    }
    code
}

/// Where Kubernetes reads a container's termination message (`terminationMessagePath`).
const TERMINATION_LOG: &str = "/dev/termination-log";

/// Writes the relay's termination message, when the file exists (the kubelet creates it; the
/// pod's `terminationMessagePolicy: File` makes it the only source of the message, so the
/// log, which quotes clients, never becomes the pod's or the SmtpRelay's status).
fn write_termination_message(path: &std::path::Path, message: &str) {
    if path.is_file() {
        if let Err(e) = std::fs::write(path, format!("{message}\n")) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the termination message");
        }
    }
}

/// A panic of the main thread ends the relay: it says so in the termination message, with
/// where it happened. Not what it said: a panic's text may quote what it was reading (a log
/// line, so a client's words); that text is on stderr. Tokio catches its tasks' panics, which
/// end nothing, so panics of other threads write nothing.
fn write_termination_message_on_panic(path: PathBuf) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        if std::thread::current().name() == Some("main") {
            let at = info.location().map_or_else(String::new, |l| {
                format!(" at {}:{}:{}", l.file(), l.line(), l.column())
            });
            write_termination_message(
                &path,
                &format!("smtp-relay panicked{at}; its log on stderr says more"),
            );
        }
    }));
}

fn send(args: SendArgs) -> Result<String, String> {
    let server = smtp_client::local_address(&args.server).map_err(|e| e.to_string())?;
    let login = match args.user {
        None => None,
        Some(user) => {
            let password = match (&args.password_file, std::env::var("SMTP_PASSWORD")) {
                (Some(path), _) => smtp_relay::inputs::read_secret_file("--password-file", path)
                    .map_err(|e| e.to_string())?,
                (None, Ok(pw)) => pw,
                (None, Err(_)) => {
                    return Err(
                        "--user needs a password: set SMTP_PASSWORD or --password-file".into(),
                    )
                }
            };
            Some((user, password))
        }
    };
    let MessageArgs {
        from,
        to,
        subject,
        body,
    } = args.message;
    let req = SendRequest {
        server,
        from,
        to,
        subject,
        body,
        login,
        starttls: args.starttls,
        tls_name: args.tls_name.unwrap_or_else(|| server.ip().to_string()),
        ca_file: args.ca_file,
        timeout: Duration::from_secs(args.timeout),
    };
    smtp_client::send(&req).map_err(|e| e.to_string())
}

fn report<E: ToString>(result: Result<String, E>) -> ExitCode {
    match result {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("smtp-relay: {}", e.to_string());
            ExitCode::FAILURE
        }
    }
}

fn enqueue(args: EnqueueArgs) -> Result<String, String> {
    let message_id = args.message_id.unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        let host = if host.is_empty() { "localhost" } else { &host };
        format!("smtp-relay-enqueue.{nanos:x}.{}@{host}", std::process::id())
    });
    let req = smtp_client::EnqueueRequest {
        sendmail: args.sendmail,
        config_dir: args.postfix_dir,
        from: args.message.from,
        to: args.message.to,
        subject: args.message.subject,
        body: args.message.body,
        message_id,
    };
    smtp_client::enqueue(&req)
        .map(|()| format!("queued by sendmail: Message-ID <{}>", req.message_id))
        .map_err(|e| e.to_string())
}
