//! `smtp-relay run`: validate, configure, run Postfix in the foreground, follow input changes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use tokio::io::BufReader;
use tokio::signal::unix::{signal, SignalKind};

use crate::drain::Drained;
use crate::error::{ConfigResult, RunError};
use crate::inputs;
use crate::metrics::Metrics;
use crate::postfix::instance;
use crate::postfix::layout::Layout;
use crate::postfix::main_cf;
use crate::sasl::{self, Users};
use crate::settings::{SaslUserSource, Settings};

/// Exit codes, so an orchestrator can tell a bad configuration from a crash.
pub mod exit {
    /// Stopped by SIGTERM or SIGINT; the queue is intact on disk.
    pub const STOPPED: u8 = 0;
    /// The Postfix master exited on its own.
    pub const POSTFIX_DIED: u8 = 1;
    /// The configuration is invalid; nothing was started.
    pub const BAD_CONFIG: u8 = 2;
    /// Preparing the instance failed (files, permissions, Postfix's own checks).
    pub const SETUP_FAILED: u8 = 3;
}

/// Where the settings come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The operator's config file with secret files beside it.
    File(PathBuf),
    /// The original image's environment variables.
    Env(BTreeMap<String, String>),
}

impl Source {
    pub fn load(&self, layout: &Layout) -> ConfigResult<Settings> {
        match self {
            Source::File(path) => inputs::file::load(path),
            Source::Env(vars) => inputs::env::settings(vars, &layout.config_dir),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub source: Source,
    pub layout: Layout,
    pub metrics_listen: Option<SocketAddr>,
    /// How often inputs (mounted Secrets, the config file) are checked for changes.
    pub reload_interval: Duration,
    /// How long to wait for Postfix to stop after SIGTERM before killing it.
    pub stop_timeout: Duration,
    /// How long the drain before that may take (see [`crate::drain`]).
    pub drain_timeout: Duration,
    /// Where a fatal error is also written when the file exists: Kubernetes's
    /// `terminationMessagePath`, so `kubectl describe pod` and the SmtpRelay's status show it.
    pub termination_log: PathBuf,
    /// The pod's annotations (a downward API file), where the operator asks for a drain.
    pub pod_annotations: Option<PathBuf>,
}

/// Ends the relay with `code`: the message on stderr, and in the termination log.
fn fatal(opts: &RunOptions, code: u8, message: String) -> ExitCode {
    eprintln!("smtp-relay: {message}");
    if opts.termination_log.is_file() {
        if let Err(e) = std::fs::write(&opts.termination_log, format!("{message}\n")) {
            tracing::warn!(path = %opts.termination_log.display(), error = %e, "cannot write the termination message");
        }
    }
    ExitCode::from(code)
}

/// The running relay's configuration, kept to tell what an input change touched.
struct Applied {
    settings: Settings,
    users: Users,
}

/// Prepares the instance from the inputs: config files, then the SASL database.
fn apply(
    source: &Source,
    layout: &Layout,
    previous: Option<&Applied>,
) -> Result<Applied, RunError> {
    let settings = source.load(layout)?;
    let users = sasl::load(&settings.sasl_users)?;
    if previous.is_none_or(|p| p.settings != settings) {
        instance::write_config(&settings, layout)?;
        if settings.relayhost_password_in_clear() {
            tracing::warn!(
                level = %settings.relayhost_tls(),
                "the relayhost password may be sent unencrypted: a relayhost that offers no STARTTLS, or anyone on the path, would receive it; use TLS level encrypt or stronger"
            );
        }
    }
    let realm_changed = previous.is_some_and(|p| p.settings.domain != settings.domain);
    if settings.sasl_users != SaslUserSource::None
        && (previous.is_none_or(|p| p.users != users) || realm_changed)
    {
        sasl::install(&users, &settings.domain, layout)?;
    }
    Ok(Applied { settings, users })
}

/// Starts the Postfix master on the spool (after stopping a leftover one) and its guard, which
/// stops the master if this process dies without doing it; the guard is killed when dropped,
/// after the master stopped.
fn start_master(
    opts: &RunOptions,
) -> Result<(tokio::process::Child, u32, Option<tokio::process::Child>), ExitCode> {
    let layout = &opts.layout;
    if let Err(e) = instance::stop_leftover_master(layout, opts.stop_timeout) {
        return Err(fatal(opts, exit::SETUP_FAILED, e.to_string()));
    }
    let master = match instance::spawn_master(layout) {
        Ok(child) => child,
        Err(e) => return Err(fatal(opts, exit::SETUP_FAILED, e.to_string())),
    };
    let Some(pid) = master.id() else {
        return Err(fatal(
            opts,
            exit::POSTFIX_DIED,
            "the Postfix master exited at once".into(),
        ));
    };
    let guard = match instance::spawn_guard(pid, opts.stop_timeout) {
        Ok(guard) => Some(guard),
        Err(e) => {
            tracing::warn!(error = %e, "no guard for the master: it would outlive a killed supervisor");
            None
        }
    };
    Ok((master, pid, guard))
}

/// Reads the inputs again and applies what changed without restarting Postfix (a reload for
/// the configuration, the SASL database in place for users). A broken update never tears down
/// the running relay: it keeps serving the last good configuration and says once why the new
/// one was refused.
fn reapply(
    opts: &RunOptions,
    pid: u32,
    metrics: &Metrics,
    applied: &mut Applied,
    last_error: &mut Option<String>,
    oauth2: &OAuth2Login,
) {
    match apply(&opts.source, &opts.layout, Some(applied)) {
        Ok(next) => {
            *last_error = None;
            let config_changed = next.settings != applied.settings;
            let users_changed = next.users != applied.users;
            if config_changed {
                if let Err(e) = instance::reload(pid) {
                    tracing::error!(error = %e, "reloading postfix failed");
                }
            }
            if config_changed || users_changed {
                metrics.reloads.inc();
                metrics.sasl_users.set(next.users.0.len() as i64);
                metrics.set_logs_in(next.settings.logs_in());
                metrics.set_spool_reserve(main_cf::spool_reserve(&next.settings.postconf));
                oauth2.follow(&next.settings);
                tracing::info!(config_changed, users = ?next.users, "applied changed inputs without restarting postfix");
            }
            *applied = next;
        }
        Err(e) => {
            let text = e.to_string();
            if last_error.as_deref() != Some(text.as_str()) {
                metrics.config_errors.inc();
                tracing::error!(error = %text, "refusing changed inputs; still running the previous configuration");
                *last_error = Some(text);
            }
        }
    }
}

/// The OAuth2 login's two tasks: the refresher keeping a token fresh (for the settings it is
/// sent on reload) and the socketmap handing it to Postfix.
struct OAuth2Login {
    settings: tokio::sync::watch::Sender<Option<crate::settings::OAuth2Settings>>,
    current: crate::oauth2::Current,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl OAuth2Login {
    fn start(settings: &crate::settings::Settings, metrics: &Metrics, layout: &Layout) -> Self {
        let (tx, rx) = tokio::sync::watch::channel(settings.relayhost_oauth2.clone());
        let current = crate::oauth2::Current::default();
        let refresher = tokio::spawn(crate::oauth2::keep_fresh(
            rx,
            current.clone(),
            metrics.clone(),
            layout.oauth2_refresh_token(),
        ));
        let socket = layout.oauth2_socket();
        let served = current.clone();
        let socketmap = tokio::spawn(async move {
            if let Err(e) = crate::oauth2::serve_socketmap(socket.clone(), served).await {
                tracing::error!(socket = %socket.display(), error = %e, "the OAuth2 token socketmap stopped");
            }
        });
        OAuth2Login {
            settings: tx,
            current,
            tasks: [refresher, socketmap],
        }
    }

    /// With an OAuth2 login, waits (at most `limit`) for the first token, so the first mail
    /// is not deferred for want of one (a deferred message waits for the next queue run:
    /// minutes). A token endpoint that does not answer delays nothing longer than `limit`:
    /// mail then queues until a token comes.
    async fn first_token(&self, limit: Duration) {
        if self.settings.borrow().is_none() {
            return;
        }
        let started = std::time::Instant::now();
        while self.current.lookup().is_none() && started.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if self.current.lookup().is_none() {
            tracing::warn!(waited = ?limit, "no OAuth2 token yet; starting Postfix anyway, mail queues until one comes");
        }
    }

    /// Follows reloaded settings: a new login, or none.
    fn follow(&self, settings: &crate::settings::Settings) {
        self.settings.send_if_modified(|current| {
            let changed = *current != settings.relayhost_oauth2;
            if changed {
                current.clone_from(&settings.relayhost_oauth2);
            }
            changed
        });
    }

    fn stop(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}

pub async fn run(opts: RunOptions) -> ExitCode {
    let layout = &opts.layout;
    let mut applied = match apply(&opts.source, layout, None) {
        Ok(applied) => applied,
        Err(RunError::Config(e)) => {
            return fatal(&opts, exit::BAD_CONFIG, format!("configuration error: {e}"));
        }
        Err(e) => {
            return fatal(
                &opts,
                exit::SETUP_FAILED,
                format!("cannot prepare Postfix: {e}"),
            );
        }
    };
    let metrics = Metrics::new(&layout.spool_dir);
    metrics.sasl_users.set(applied.users.0.len() as i64);
    metrics.set_logs_in(applied.settings.logs_in());
    metrics.set_spool_reserve(main_cf::spool_reserve(&applied.settings.postconf));
    let metrics_server = opts.metrics_listen.map(|addr| {
        let m = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(m, addr).await {
                tracing::error!(%addr, error = %e, "metrics server stopped");
            }
        })
    });

    let (mut sigterm, mut sigint) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            return fatal(
                &opts,
                exit::SETUP_FAILED,
                "cannot install signal handlers".into(),
            );
        }
    };
    let oauth2 = OAuth2Login::start(&applied.settings, &metrics, layout);
    oauth2.first_token(Duration::from_secs(5)).await;
    let (mut master, pid, _guard) = match start_master(&opts) {
        Ok(started) => started,
        Err(code) => return code,
    };
    metrics.postfix_up.set(1);
    tracing::info!(pid, listen = %layout.listen, mode = ?applied.settings.policy, "postfix started");
    // The mail log: counted, and echoed to our stdout. It takes any bytes (see
    // Metrics::follow_log): a pump that stopped would leave the pipe to fill and block Postfix.
    let log_pump = master.stdout.take().map(|stdout| {
        let m = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = m
                .follow_log(BufReader::new(stdout), std::io::stdout())
                .await
            {
                tracing::error!(error = %e, "reading Postfix's mail log failed");
            }
        })
    });

    let mut ticker = tokio::time::interval(opts.reload_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error: Option<String> = None;
    let mut asked_drain = crate::drain::AskedDrain::new(opts.pod_annotations.clone());
    let mut died = None;
    let code = loop {
        tokio::select! {
            _ = sigterm.recv() => break stop(&mut master, pid, &opts, &metrics, &smtp_ports(&applied, &opts)).await,
            _ = sigint.recv() => break stop(&mut master, pid, &opts, &metrics, &smtp_ports(&applied, &opts)).await,
            status = master.wait() => {
                tracing::error!(?status, "the Postfix master exited");
                died = Some(format!("the Postfix master exited ({})", status.map_or_else(|e| e.to_string(), |s| s.to_string())));
                break exit::POSTFIX_DIED;
            }
            _ = ticker.tick() => {
                if let Err(e) = crate::liveness::beat(layout) {
                    tracing::warn!(error = %e, "cannot touch the liveness heartbeat");
                }
                reapply(&opts, pid, &metrics, &mut applied, &mut last_error, &oauth2);
                asked_drain.tick(layout, &metrics);
            }
        }
    };
    metrics.postfix_up.set(0);
    if let Some(task) = log_pump {
        // The pump ends when the master's stdout closes, after the last log line.
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    if let Some(server) = metrics_server {
        server.abort();
    }
    oauth2.stop();
    match died {
        Some(message) => fatal(&opts, code, message),
        None => ExitCode::from(code),
    }
}

/// The ports smtpd listens on: the listen address's and the PROXY-protocol one.
fn smtp_ports(applied: &Applied, opts: &RunOptions) -> Vec<u16> {
    let listen = opts
        .layout
        .listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok());
    listen
        .into_iter()
        .chain(applied.settings.proxy_protocol_port)
        .collect()
}

async fn stop(
    master: &mut tokio::process::Child,
    pid: u32,
    opts: &RunOptions,
    metrics: &Metrics,
    ports: &[u16],
) -> u8 {
    // Sessions in progress finish first (their mail joins the queue), then the queue drains;
    // both within the drain timeout.
    let started = std::time::Instant::now();
    let open = crate::drain::sessions_end(ports, started + opts.drain_timeout).await;
    if open > 0 {
        tracing::warn!(
            sessions = open,
            "drain deadline passed with SMTP sessions in progress; they are cut"
        );
    }
    let left = opts.drain_timeout.saturating_sub(started.elapsed());
    match crate::drain::drain(&opts.layout, metrics, left).await {
        Drained::Skipped => {}
        Drained::Empty => tracing::info!("drained: the queue is empty"),
        Drained::RelayhostRefused { queued } => tracing::warn!(
            queued,
            "the relayhost did not take the queued mail; it stays on the spool for the next start"
        ),
        Drained::DeadlinePassed { queued } => tracing::warn!(
            queued,
            timeout = ?opts.drain_timeout,
            "drain deadline passed; the queued mail stays on the spool"
        ),
    }
    let timeout = opts.stop_timeout;
    tracing::info!(pid, "stopping postfix");
    if let Err(e) = instance::stop(pid) {
        tracing::error!(error = %e, "signalling the master failed");
    }
    match tokio::time::timeout(timeout, master.wait()).await {
        Ok(_) => exit::STOPPED,
        Err(_) => {
            tracing::error!(?timeout, "postfix did not stop in time; killing it");
            let _ = master.kill().await;
            exit::POSTFIX_DIED
        }
    }
}
