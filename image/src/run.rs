//! `smtp-relay run`: validate, configure, run Postfix in the foreground, follow input changes.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tokio::io::BufReader;
use tokio::signal::unix::{signal, SignalKind};

use crate::drain::Drained;
use crate::error::{ConfigError, ConfigResult, RunError};
use crate::inputs;
use crate::metrics::Metrics;
use crate::postfix::instance;
use crate::postfix::layout::Layout;
use crate::postfix::main_cf;
use crate::revision::{self, AtStart, ConfigText, LastGood, OnTick};
use crate::sasl::{self, Users};
use crate::self_check;
use crate::settings::{SaslUserSource, Settings};
use crate::user_namespace;

/// Exit codes, so an orchestrator can tell a bad configuration from a crash.
pub mod exit {
    /// Stopped by SIGTERM or SIGINT; the queue is intact on disk.
    pub const STOPPED: u8 = 0;
    /// The Postfix master exited on its own.
    pub const POSTFIX_DIED: u8 = 1;
    /// The configuration is invalid (nothing was started), or Postfix failed its self-check
    /// with it and there was no last good configuration to run (Postfix was stopped).
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
    /// The pod's annotations (a downward API file), where the operator asks for a drain and
    /// where the pod's own configuration revision is (see [`crate::revision`]).
    pub pod_annotations: Option<PathBuf>,
    /// How long a starting pod waits for the config file of its own revision before it goes on
    /// with the one mounted (see [`crate::revision::AtStart::Wait`]).
    pub revision_wait: Duration,
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

/// A configuration to apply: the environment's variables, or a config file's text with its
/// revision (the mounted file's, or the last good copy's).
#[derive(Debug, Clone, PartialEq)]
enum Candidate {
    Env,
    File {
        config: ConfigText,
        /// Where the text was read: errors name it.
        from: PathBuf,
    },
}

impl Candidate {
    fn revision(&self) -> Option<&str> {
        match self {
            Candidate::Env => None,
            Candidate::File { config, .. } => config.revision.as_deref(),
        }
    }

    /// The settings the candidate says, read and validated now (with the files it names).
    fn settings(&self, opts: &RunOptions) -> ConfigResult<Settings> {
        match self {
            Candidate::Env => opts.source.load(&opts.layout),
            Candidate::File { config, from } => inputs::file::from_text(&config.text, from),
        }
    }
}

/// How logs and messages name a revision: its first 12 characters, or that it has none.
fn shown(revision: Option<&str>) -> String {
    revision.map_or_else(|| "(none)".to_string(), |r| revision::short(r).to_string())
}

/// The inputs as mounted now: the environment, or the config file and its revision.
fn mounted(source: &Source) -> ConfigResult<Candidate> {
    match source {
        Source::Env(_) => Ok(Candidate::Env),
        Source::File(path) => revision::read_mounted(path)
            .map(|config| Candidate::File {
                config,
                from: path.clone(),
            })
            .map_err(|e| ConfigError::unreadable("--config", path, e)),
    }
}

/// The running relay's configuration, kept to tell what an input change touched.
struct Applied {
    settings: Settings,
    users: Users,
    candidate: Candidate,
}

/// Prepares the instance for `settings` (of `candidate`): config files, then the SASL
/// database, each only when it changed from `previous`.
fn install(
    candidate: Candidate,
    settings: Settings,
    layout: &Layout,
    previous: Option<&Applied>,
) -> Result<Applied, RunError> {
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
    Ok(Applied {
        settings,
        users,
        candidate,
    })
}

/// Reads `candidate` and prepares the instance for it.
fn install_candidate(
    candidate: Candidate,
    opts: &RunOptions,
    previous: Option<&Applied>,
) -> Result<Applied, RunError> {
    let settings = candidate.settings(opts)?;
    install(candidate, settings, &opts.layout, previous)
}

/// What a starting pod runs (see [`revision::at_start`]), and what it falls back to if that
/// fails: the last good copy, when it is of another revision than the one chosen. In
/// environment mode, or without a revision, nothing falls back: the relay behaves as it did
/// before revisions.
async fn choose(
    opts: &RunOptions,
    own: Option<&str>,
    last_good: &LastGood,
) -> ConfigResult<(Candidate, Option<Candidate>)> {
    let Source::File(path) = &opts.source else {
        return Ok((Candidate::Env, None));
    };
    let copy = last_good.load().map(|config| Candidate::File {
        config,
        from: last_good.path().to_path_buf(),
    });
    let copy_revision = copy.as_ref().and_then(Candidate::revision);
    let started = Instant::now();
    let mut waiting = false;
    let candidate = loop {
        let mounted = mounted(&opts.source);
        let choice = match &mounted {
            Ok(m) => revision::at_start(own, m.revision(), copy_revision),
            // An unreadable config file: the copy of the pod's own revision still runs.
            Err(_) if own.is_some() && copy_revision == own => AtStart::LastGood,
            Err(_) => AtStart::Mounted,
        };
        match (choice, &copy) {
            (AtStart::LastGood, Some(copy)) => {
                tracing::info!(
                    own = %shown(own),
                    mounted = %shown(mounted.as_ref().ok().and_then(Candidate::revision)),
                    copy = %last_good.path().display(),
                    "the config file is another template's revision: running this pod's last good configuration, of its own revision"
                );
                break copy.clone();
            }
            (AtStart::Wait, _) if started.elapsed() < opts.revision_wait => {
                if !waiting {
                    tracing::info!(own = %shown(own), config = %path.display(), wait = ?opts.revision_wait, "waiting for the config file of this pod's revision");
                    waiting = true;
                }
                tokio::time::sleep(revision::POLL).await;
            }
            (AtStart::Wait, _) => {
                let mounted = mounted?;
                tracing::warn!(
                    own = %shown(own),
                    mounted = %shown(mounted.revision()),
                    waited = ?opts.revision_wait,
                    "the config file of this pod's revision did not come: going on with the one mounted"
                );
                break mounted;
            }
            _ => break mounted?,
        }
    };
    let fallback =
        copy.filter(|c| candidate.revision().is_some() && c.revision() != candidate.revision());
    Ok((candidate, fallback))
}

/// The first installation, before Postfix starts. A candidate refused as invalid (or by
/// Postfix's own checks of the files) falls back to the last good copy when there is one, and
/// the refusal is returned to be reported; without one, the relay ends as it always did. A
/// failure that is not the configuration's (a file that cannot be written) ends it anyway.
fn first_install(
    opts: &RunOptions,
    candidate: Candidate,
    fallback: &mut Option<Candidate>,
) -> Result<(Applied, Option<Refused>), ExitCode> {
    let revision = candidate.revision().map(str::to_string);
    let err = match install_candidate(candidate, opts, None) {
        Ok(applied) => return Ok((applied, None)),
        Err(e) => e,
    };
    let end = |e: &RunError| match e {
        RunError::Config(e) => fatal(opts, exit::BAD_CONFIG, format!("configuration error: {e}")),
        e => fatal(
            opts,
            exit::SETUP_FAILED,
            format!("cannot prepare Postfix: {e}"),
        ),
    };
    let refused_here = matches!(err, RunError::Config(_) | RunError::Command { .. });
    let Some(copy) = fallback.take().filter(|_| refused_here) else {
        return Err(end(&err));
    };
    let copy_revision = copy.revision().map(str::to_string);
    tracing::error!(
        revision = %shown(revision.as_deref()),
        error = %err,
        last_good = %shown(copy_revision.as_deref()),
        "refusing the configuration; running the last good one"
    );
    match install_candidate(copy, opts, None) {
        Ok(applied) => Ok((
            applied,
            Some(Refused {
                revision,
                error: err.to_string(),
                settings: None,
            }),
        )),
        Err(e) => {
            tracing::error!(error = %e, "the last good configuration cannot be installed either");
            Err(end(&err))
        }
    }
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

/// A configuration refused, while the refusal stands: until a later configuration passes.
#[derive(Debug, Clone)]
struct Refused {
    revision: Option<String>,
    error: String,
    /// What failed the self-check: not tried again while the inputs say the same. `None` for a
    /// configuration refused as invalid, which is read again at every tick (that is cheap, and
    /// a file it names may come).
    settings: Option<Settings>,
}

/// A failed self-check: the SMTP session's words, and Postfix's own log line about its
/// configuration when it wrote one (see [`crate::metrics::config_problem`]).
#[derive(Debug, Clone)]
struct CheckFailure {
    session: String,
    logged: Option<String>,
    /// smtpd never got to the session (every one busy) and Postfix logged nothing wrong: it
    /// says nothing of the configuration, and is tried again at the next tick.
    inconclusive: bool,
}

impl CheckFailure {
    /// What a refusal reports: Postfix's line when there is one, else the session's words.
    fn reported(&self) -> &str {
        self.logged.as_deref().unwrap_or(&self.session)
    }
}

impl fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.session)?;
        if let Some(line) = &self.logged {
            write!(f, "; Postfix logged: {line}")?;
        }
        Ok(())
    }
}

/// After the master's SIGHUP: how long to wait for its `reload` log line, then how long for
/// the smtpd processes of the old configuration that were idle to exit (the master tells them
/// when it reloads), so the self-check meets an smtpd of the new one.
const RELOAD_WAIT: Duration = Duration::from_secs(5);
const RELOAD_SETTLE: Duration = Duration::from_millis(300);
/// After a failed session, how long Postfix's log line about it may take to come through the
/// log pump.
const LOG_LAG: Duration = Duration::from_secs(1);

/// The supervisor's state between ticks: what runs, what was refused, and what to say once.
struct Supervisor<'a> {
    opts: &'a RunOptions,
    metrics: Metrics,
    /// The pod's own revision (see [`crate::revision`]).
    own: Option<String>,
    last_good: LastGood,
    applied: Applied,
    refused: Option<Refused>,
    /// The last input error said, so it is said once.
    last_error: Option<String>,
    /// The other template's revision last held, so it is said once.
    held: Option<String>,
    /// Started without a conclusive self-check (every smtpd was busy): checked again at each
    /// tick, with the last good configuration to fall back to.
    unproven: Option<Option<Candidate>>,
    /// The digest of the certificate and key files Postfix last (re)loaded (see
    /// [`Supervisor::follow_certificate`]).
    served_certificate: Option<Vec<u8>>,
}

impl Supervisor<'_> {
    /// One SMTP session against the local listener, judged (see [`crate::self_check`]), with
    /// Postfix's first line about a broken configuration since the log was last marked
    /// ([`Metrics::mark_log`]: before the master started, or before its reload).
    async fn check(&self) -> Result<(), CheckFailure> {
        let target = self_check::Target {
            addresses: crate::smtp_client::local_addresses(&self.opts.layout.listen)
                .unwrap_or_default(),
            domain: self.applied.settings.domain.clone(),
            implicit_tls: self
                .applied
                .settings
                .postconf
                .get("smtpd_tls_wrappermode")
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("yes")),
        };
        let (session, deferred, inconclusive) =
            match self_check::check(target, self_check::TIMEOUT).await {
                Ok(self_check::Passed::Served) => return Ok(()),
                Ok(self_check::Passed::Deferred { command, reply }) => {
                    (format!("{command} was answered {reply}"), true, false)
                }
                Err(failure) => (failure.to_string(), false, failure.inconclusive()),
            };
        // Postfix's lines about the session come through the log pump a moment later; the
        // best of them is read once they had that moment.
        tokio::time::sleep(LOG_LAG).await;
        let logged = self.metrics.config_problem();
        if deferred && logged.is_none() {
            // A temporary refusal, and nothing wrong in Postfix's log: greylisting, a full
            // spool. smtpd serves.
            tracing::info!(reply = %session, "the self-check was deferred, and Postfix logged no problem with its configuration: passed");
            return Ok(());
        }
        Err(CheckFailure {
            inconclusive: inconclusive && logged.is_none(),
            session,
            logged,
        })
    }

    /// Asks the master to reload, waits until it did, and checks the configuration.
    async fn reload_and_check(&self, pid: u32) -> Result<(), CheckFailure> {
        let mark = self.metrics.mark_log();
        if let Err(e) = instance::reload(pid) {
            return Err(CheckFailure {
                session: format!("reloading Postfix failed: {e}"),
                logged: None,
                inconclusive: false,
            });
        }
        let started = Instant::now();
        while !self.metrics.reloaded_since(mark) {
            if started.elapsed() > RELOAD_WAIT {
                tracing::warn!(waited = ?RELOAD_WAIT, "the master did not log its reload; checking anyway");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(RELOAD_SETTLE).await;
        self.check().await
    }

    /// What runs passed the self-check: said on the metrics page, and kept as the last good
    /// configuration when it has a revision.
    fn passed(&self) {
        let revision = self.applied.candidate.revision();
        self.metrics.set_config_revision(revision);
        if let (Candidate::File { config, .. }, Some(revision)) =
            (&self.applied.candidate, revision)
        {
            if let Err(e) = self.last_good.save(&config.text, revision) {
                tracing::warn!(error = %e, "cannot keep the last good configuration on the spool");
            }
        }
    }

    fn refuse(&mut self, refused: Refused) {
        self.metrics.set_config_refused(Some((
            refused.revision.as_deref().unwrap_or(""),
            &refused.error,
        )));
        self.refused = Some(refused);
    }

    fn clear_refusal(&mut self) {
        if let Some(refused) = self.refused.take() {
            tracing::info!(refused = %shown(refused.revision.as_deref()), "a later configuration passed: the refusal no longer stands");
            self.metrics.set_config_refused(None);
        }
    }

    /// An input that cannot be applied: said once, counted.
    fn input_refused(&mut self, text: String) {
        if self.last_error.as_deref() != Some(text.as_str()) {
            self.metrics.config_errors.inc();
            tracing::error!(error = %text, "refusing changed inputs; still running the previous configuration");
            self.last_error = Some(text);
        }
    }
}
impl Supervisor<'_> {
    /// The self-check of the configuration Postfix started with. A failure falls back to
    /// `fallback` (the last good copy, of another revision) when there is one: installed,
    /// reloaded, checked; the refused revision is reported. `Err`: the termination message.
    async fn start_check(&mut self, pid: u32, fallback: Option<Candidate>) -> Result<(), String> {
        let failure = match self.check().await {
            Ok(()) => {
                self.passed();
                return Ok(());
            }
            Err(failure) if failure.inconclusive => {
                tracing::warn!(error = %failure, "the self-check met no free smtpd: running the configuration unproven, checking again at the next tick");
                self.unproven = Some(fallback);
                return Ok(());
            }
            Err(failure) => failure,
        };
        self.refuse_at_start(pid, fallback, failure).await
    }

    /// A configuration started unproven (see [`Supervisor::start_check`]): checked again; a
    /// refusal falls back as at start, and without a last good configuration it is reported
    /// while the relay runs on (it already serves clients: stopping it would help nobody).
    async fn check_unproven(&mut self, pid: u32) {
        let Some(fallback) = self.unproven.take() else {
            return;
        };
        let failure = match self.check().await {
            Ok(()) => return self.passed(),
            Err(failure) if failure.inconclusive => {
                self.unproven = Some(fallback);
                return;
            }
            Err(failure) => failure,
        };
        let revision = self.applied.candidate.revision().map(str::to_string);
        let error = failure.reported().to_string();
        if let Err(message) = self.refuse_at_start(pid, fallback, failure).await {
            tracing::error!(%message, "running on with the refused configuration");
            self.refuse(Refused {
                revision,
                error,
                settings: Some(self.applied.settings.clone()),
            });
        }
    }

    /// The refusal of the configuration a pod started with: the last good one runs instead,
    /// or `Err` (the termination message) when there is none or it fails too.
    async fn refuse_at_start(
        &mut self,
        pid: u32,
        fallback: Option<Candidate>,
        failure: CheckFailure,
    ) -> Result<(), String> {
        self.metrics.self_check_failures.inc();
        let revision = self.applied.candidate.revision().map(str::to_string);
        let message = match &revision {
            Some(revision) => format!(
                "configuration revision {} failed Postfix's self-check: {failure}",
                revision::short(revision)
            ),
            None => format!("the configuration failed Postfix's self-check: {failure}"),
        };
        let Some(copy) = fallback else {
            tracing::error!(revision = %shown(revision.as_deref()), error = %failure, "Postfix refused the configuration in its self-check, and there is no last good one to run");
            return Err(message);
        };
        let copy_revision = copy.revision().map(str::to_string);
        tracing::error!(
            revision = %shown(revision.as_deref()),
            error = %failure,
            last_good = %shown(copy_revision.as_deref()),
            "Postfix refused the configuration in its self-check; running the last good one"
        );
        self.refuse(Refused {
            revision,
            error: failure.reported().to_string(),
            settings: Some(self.applied.settings.clone()),
        });
        let restored = install_candidate(copy, self.opts, Some(&self.applied)).map_err(|e| {
            format!("{message}; the last good configuration cannot be installed: {e}")
        })?;
        self.applied = restored;
        match self.reload_and_check(pid).await {
            Ok(()) => {
                self.passed();
                Ok(())
            }
            Err(again) => {
                self.metrics.self_check_failures.inc();
                Err(format!(
                    "{message}; the last good configuration (revision {}) failed it too: {again}",
                    shown(copy_revision.as_deref())
                ))
            }
        }
    }

    /// Reads the inputs again and applies what changed without restarting Postfix (a reload
    /// for the configuration, the SASL database in place for users). A configuration of another
    /// template's revision is held: only the users are followed. A broken update never tears
    /// down the running relay: an invalid one is refused before anything is written, one that
    /// fails the self-check is replaced by the previous configuration at once; each is said
    /// once, and a configuration that failed is not tried again while the inputs say the same.
    async fn tick(&mut self, pid: u32, services: &Services) {
        self.tick_inputs(pid, services).await;
        self.follow_certificate(pid).await;
    }

    /// The configuration and the SASL users of [`Supervisor::tick`].
    async fn tick_inputs(&mut self, pid: u32, services: &Services) {
        if self.unproven.is_some() {
            self.check_unproven(pid).await;
        }
        let candidate = match mounted(&self.opts.source) {
            Ok(candidate) => candidate,
            Err(e) => {
                self.input_refused(e.to_string());
                self.follow_users();
                return;
            }
        };
        if revision::on_tick(self.own.as_deref(), candidate.revision()) == OnTick::Hold {
            let mounted = candidate.revision().map(str::to_string);
            if self.held != mounted {
                tracing::info!(
                    own = %shown(self.own.as_deref()),
                    mounted = %shown(mounted.as_deref()),
                    "the config file is another template's revision: keeping the running configuration"
                );
                self.held = mounted;
            }
            self.follow_users();
            return;
        }
        self.held = None;
        let settings = match candidate.settings(self.opts) {
            Ok(settings) => settings,
            Err(e) => {
                self.input_refused(e.to_string());
                self.follow_users();
                return;
            }
        };
        let tried = self.refused.as_ref().is_some_and(|r| {
            r.settings.as_ref() == Some(&settings) && r.revision.as_deref() == candidate.revision()
        });
        if tried {
            self.follow_users();
            return;
        }
        self.apply(candidate, settings, pid, services).await;
    }

    /// Applies a changed configuration (see [`Supervisor::tick`]).
    async fn apply(
        &mut self,
        candidate: Candidate,
        settings: Settings,
        pid: u32,
        services: &Services,
    ) {
        let config_changed = settings != self.applied.settings;
        let reload = postfix_must_reload(&self.applied.settings, &settings);
        let next = match install(candidate, settings, &self.opts.layout, Some(&self.applied)) {
            Ok(next) => next,
            Err(e) => {
                self.input_refused(e.to_string());
                return;
            }
        };
        self.last_error = None;
        if reload {
            if let Err(failure) = self.reload_and_check(pid).await {
                self.restore(next, &failure, pid).await;
                return;
            }
            self.served_certificate = certificate_files(&next.settings);
        }
        let users_changed = next.users != self.applied.users;
        let candidate_changed = next.candidate != self.applied.candidate;
        self.applied = next;
        self.clear_refusal();
        if reload || candidate_changed {
            self.passed();
        }
        if config_changed || users_changed {
            self.metrics.reloads.inc();
            self.publish(services);
            tracing::info!(config_changed, postfix_reloaded = reload, users = ?self.applied.users, revision = %shown(self.applied.candidate.revision()), "applied changed inputs without restarting postfix");
        }
    }

    /// A configuration that failed its self-check after a reload: the previous one goes back
    /// at once (written, reloaded, checked), and the refusal is reported.
    async fn restore(&mut self, failed: Applied, failure: &CheckFailure, pid: u32) {
        self.metrics.self_check_failures.inc();
        let revision = failed.candidate.revision().map(str::to_string);
        tracing::error!(
            revision = %shown(revision.as_deref()),
            error = %failure,
            "Postfix refused the changed configuration in its self-check; restoring the previous one"
        );
        self.refuse(Refused {
            revision,
            error: failure.reported().to_string(),
            settings: Some(failed.settings.clone()),
        });
        let previous = self.applied.settings.clone();
        match install(
            self.applied.candidate.clone(),
            previous,
            &self.opts.layout,
            Some(&failed),
        ) {
            Ok(restored) => self.applied = restored,
            Err(e) => {
                tracing::error!(error = %e, "cannot restore the previous configuration");
                return;
            }
        }
        match self.reload_and_check(pid).await {
            Ok(()) => tracing::info!("the previous configuration serves again"),
            Err(again) => {
                self.metrics.self_check_failures.inc();
                tracing::error!(error = %again, "the previous configuration fails the self-check too; keeping it, as nothing better is known");
            }
        }
    }

    /// Follows the certificate offered to clients: the kubelet replaces the files of a renewed
    /// one in the mounted Secret (the same paths, so the settings do not change), and an smtpd
    /// reads them only when it starts. A reload has the master replace its smtpd processes
    /// (each once its session ends), so every new session gets the new certificate, and no
    /// session or queued message is lost to a restart.
    async fn follow_certificate(&mut self, pid: u32) {
        let Some(now) = certificate_files(&self.applied.settings) else {
            return;
        };
        if self.served_certificate.as_ref() == Some(&now) {
            return;
        }
        self.served_certificate = Some(now);
        match self.reload_and_check(pid).await {
            Ok(()) => {
                self.metrics.reloads.inc();
                tracing::info!(
                    "the certificate offered to clients changed: Postfix reloaded to serve it"
                );
            }
            Err(failure) => {
                self.metrics.self_check_failures.inc();
                tracing::error!(error = %failure, "the certificate offered to clients changed, and Postfix fails its self-check with it");
            }
        }
    }

    /// Follows the SASL users of the running configuration (they are not part of its
    /// revision) while a changed configuration is not applied.
    fn follow_users(&mut self) {
        let settings = &self.applied.settings;
        if settings.sasl_users == SaslUserSource::None {
            return;
        }
        let users = match sasl::load(&settings.sasl_users) {
            Ok(users) if users != self.applied.users => users,
            Ok(_) => return,
            Err(e) => return self.input_refused(e.to_string()),
        };
        if let Err(e) = sasl::install(&users, &settings.domain, &self.opts.layout) {
            return self.input_refused(e.to_string());
        }
        self.metrics.reloads.inc();
        self.metrics.sasl_users.set(users.0.len() as i64);
        tracing::info!(users = ?users, "applied changed SASL users");
        self.applied.users = users;
    }

    /// Says what runs to the metrics, the OAuth2 login and the policy service.
    fn publish(&self, services: &Services) {
        let settings = &self.applied.settings;
        self.metrics
            .sasl_users
            .set(self.applied.users.0.len() as i64);
        self.metrics.set_logs_in(settings.logs_in());
        self.metrics
            .set_spool_reserve(main_cf::spool_reserve(&settings.postconf));
        services.follow(settings);
    }
}

/// A digest of the certificate and key files offered to clients, as they are now; `None`
/// without any, or while one cannot be read.
fn certificate_files(settings: &Settings) -> Option<Vec<u8>> {
    let tls = settings.inbound_tls.as_ref()?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for path in [&tls.cert_file, &tls.key_file] {
        let content = std::fs::read(path).ok()?;
        ctx.update(&(content.len() as u64).to_be_bytes());
        ctx.update(&content);
    }
    Some(ctx.finish().as_ref().to_vec())
}

/// Whether Postfix must reload to run `new` instead of `old`: anything changed but the OAuth2
/// grant (the client secret, refresh token or key), which the token refresher alone reads
/// (it follows `new` through `publish`). A reload for a rotated client secret changed
/// nothing Postfix runs, and one that lands while a delivery is being deferred can leave that
/// message out of the queue manager's sight for a minute (`image/tests/oauth2.rs`:
/// `a_refused_client_waits_and_delivers_once_the_secret_is_fixed` waited 44 s for it once).
fn postfix_must_reload(old: &Settings, new: &Settings) -> bool {
    let mut seen_by_postfix = new.clone();
    if let (Some(o), Some(n)) = (
        old.relayhost_oauth2.as_ref(),
        seen_by_postfix.relayhost_oauth2.as_mut(),
    ) {
        n.grant = o.grant.clone();
    }
    seen_by_postfix != *old
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

/// What the supervisor serves Postfix beside it.
struct Services {
    oauth2: OAuth2Login,
    policy: PolicyService,
    milter: MilterService,
}

impl Services {
    fn start(settings: &Settings, metrics: &Metrics, layout: &Layout) -> Self {
        Services {
            oauth2: OAuth2Login::start(settings, metrics, layout),
            policy: PolicyService::start(metrics, layout),
            milter: MilterService::start(layout),
        }
    }

    /// Follows the settings in force.
    fn follow(&self, settings: &Settings) {
        self.oauth2.follow(settings);
        self.policy.follow(settings);
        self.milter
            .bindings
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .set(&settings.access, &settings.domain);
    }

    fn stop(self) {
        self.oauth2.stop();
        self.policy.stop();
        self.milter.task.abort();
    }
}

/// The milter holding bound users' `From:` headers to their senders ([`crate::milter`]).
struct MilterService {
    bindings: crate::milter::SharedBindings,
    task: tokio::task::JoinHandle<()>,
}

impl MilterService {
    fn start(layout: &Layout) -> Self {
        let bindings = crate::milter::SharedBindings::default();
        let socket = layout.milter_socket();
        let served = bindings.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = crate::milter::serve(socket.clone(), served).await {
                tracing::error!(socket = %socket.display(), error = %e, "the milter stopped: messages of bound users are deferred");
            }
        });
        MilterService { bindings, task }
    }
}

/// The policy service counting SASL users' mail ([`crate::policy`]), following the limits in
/// force.
struct PolicyService {
    limiter: crate::policy::SharedLimiter,
    task: tokio::task::JoinHandle<()>,
}

impl PolicyService {
    fn start(metrics: &Metrics, layout: &Layout) -> Self {
        let limiter = crate::policy::SharedLimiter::default();
        let socket = layout.policy_socket();
        let (served, metrics) = (limiter.clone(), metrics.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = crate::policy::serve(socket.clone(), served, metrics).await {
                tracing::error!(socket = %socket.display(), error = %e, "the policy service stopped: recipients of SASL users are deferred while limits per user are set");
            }
        });
        PolicyService { limiter, task }
    }

    fn follow(&self, settings: &Settings) {
        self.limiter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set(settings.user_limits, &settings.domain);
    }

    fn stop(self) {
        self.task.abort();
    }
}

pub async fn run(opts: RunOptions) -> ExitCode {
    let layout = &opts.layout;
    let own = opts
        .pod_annotations
        .as_deref()
        .and_then(revision::own_revision);
    let last_good = LastGood::new(layout.last_good_config());
    let (candidate, mut fallback) = match choose(&opts, own.as_deref(), &last_good).await {
        Ok(chosen) => chosen,
        Err(e) => return fatal(&opts, exit::BAD_CONFIG, format!("configuration error: {e}")),
    };
    let (applied, refused) = match first_install(&opts, candidate, &mut fallback) {
        Ok(installed) => installed,
        Err(code) => return code,
    };
    let metrics = Metrics::new(&layout.spool_dir);
    metrics.set_root_node_uid(user_namespace::own_root_node_uid());
    let served_certificate = certificate_files(&applied.settings);
    let mut sup = Supervisor {
        opts: &opts,
        metrics: metrics.clone(),
        own,
        last_good,
        applied,
        refused: None,
        last_error: None,
        held: None,
        unproven: None,
        served_certificate,
    };
    if let Some(refused) = refused {
        sup.refuse(refused);
    }
    let metrics_server = opts.metrics_listen.map(|addr| {
        let m = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(m, addr).await {
                tracing::error!(%addr, error = %e, "metrics server stopped");
            }
        })
    });
    let (Ok(sigterm), Ok(sigint)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return fatal(
            &opts,
            exit::SETUP_FAILED,
            "cannot install signal handlers".into(),
        );
    };
    let services = Services::start(&sup.applied.settings, &metrics, layout);
    sup.publish(&services);
    services.oauth2.first_token(Duration::from_secs(5)).await;
    // The self-check reads Postfix's words from here on.
    metrics.mark_log();
    let (mut master, pid, _guard) = match start_master(&opts) {
        Ok(started) => started,
        Err(code) => return code,
    };
    metrics.postfix_up.set(1);
    tracing::info!(pid, listen = %layout.listen, mode = ?sup.applied.settings.policy, revision = %shown(sup.applied.candidate.revision()), "postfix started");
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

    // Alive while the self-check runs (it may take its whole timeout and a fallback's).
    if let Err(e) = crate::liveness::beat(layout) {
        tracing::warn!(error = %e, "cannot touch the liveness heartbeat");
    }
    let (code, message) = match sup.start_check(pid, fallback).await {
        Err(message) => {
            stop_now(&mut master, pid, &opts).await;
            (exit::BAD_CONFIG, Some(message))
        }
        Ok(()) => {
            sup.publish(&services);
            serve(&mut sup, &mut master, pid, (sigterm, sigint), &services).await
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
    services.stop();
    match message {
        Some(message) => fatal(&opts, code, message),
        None => ExitCode::from(code),
    }
}

/// Runs the relay until a signal stops it or the master exits: the inputs followed at every
/// tick, a drain when asked. Returns the exit code, and the message of a master that died.
async fn serve(
    sup: &mut Supervisor<'_>,
    master: &mut tokio::process::Child,
    pid: u32,
    (mut sigterm, mut sigint): (tokio::signal::unix::Signal, tokio::signal::unix::Signal),
    services: &Services,
) -> (u8, Option<String>) {
    let opts = sup.opts;
    let layout = &opts.layout;
    let mut ticker = tokio::time::interval(opts.reload_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut asked_drain = crate::drain::AskedDrain::new(opts.pod_annotations.clone());
    loop {
        tokio::select! {
            _ = sigterm.recv() => break (stop(master, pid, opts, &sup.metrics, &smtp_ports(&sup.applied, opts)).await, None),
            _ = sigint.recv() => break (stop(master, pid, opts, &sup.metrics, &smtp_ports(&sup.applied, opts)).await, None),
            status = master.wait() => {
                tracing::error!(?status, "the Postfix master exited");
                let died = format!("the Postfix master exited ({})", status.map_or_else(|e| e.to_string(), |s| s.to_string()));
                break (exit::POSTFIX_DIED, Some(died));
            }
            _ = ticker.tick() => {
                if let Err(e) = crate::liveness::beat(layout) {
                    tracing::warn!(error = %e, "cannot touch the liveness heartbeat");
                }
                sup.tick(pid, services).await;
                asked_drain.tick(layout, &sup.metrics);
            }
        }
    }
}

/// Stops a master that never served (its configuration failed the self-check): no drain, as
/// nothing was accepted that a relay with this configuration could deliver any better later.
async fn stop_now(master: &mut tokio::process::Child, pid: u32, opts: &RunOptions) {
    if let Err(e) = instance::stop(pid) {
        tracing::error!(error = %e, "signalling the master failed");
    }
    if tokio::time::timeout(opts.stop_timeout, master.wait())
        .await
        .is_err()
    {
        tracing::error!(timeout = ?opts.stop_timeout, "postfix did not stop in time; killing it");
        let _ = master.kill().await;
    }
}

/// The ports smtpd listens on: the listen address's, the PROXY-protocol one and the
/// submission ones.
fn smtp_ports(applied: &Applied, opts: &RunOptions) -> Vec<u16> {
    let listen = opts
        .layout
        .listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok());
    listen
        .into_iter()
        .chain(applied.settings.proxy_protocol_port)
        .chain(applied.settings.submission.ports())
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

#[cfg(test)]
mod tests {
    use super::postfix_must_reload;
    use crate::settings::{Grant, OAuth2Settings, Secret};

    #[test]
    fn a_new_oauth2_secret_reloads_nothing_a_new_setting_does() {
        let with = |secret: &str, user: &str| {
            let mut s = crate::postfix::main_cf::tests::settings();
            s.relayhost_oauth2 = Some(OAuth2Settings {
                user: user.into(),
                token_endpoint: "https://login.example/token".into(),
                scope: None,
                grant: Grant::ClientCredentials {
                    client_id: "id".into(),
                    client_secret: Secret(secret.into()),
                },
                ca_file: None,
                shared_refresh_token_secret: None,
            });
            s
        };
        let old = with("the-wrong-secret", "app@example.net");
        assert!(!postfix_must_reload(&old, &old));
        assert!(!postfix_must_reload(
            &old,
            &with("fixed", "app@example.net")
        ));
        assert!(postfix_must_reload(
            &old,
            &with("fixed", "other@example.net")
        ));
        let mut no_login = old.clone();
        no_login.relayhost_oauth2 = None;
        assert!(postfix_must_reload(&old, &no_login));
        let mut domain = old.clone();
        domain.domain = "example.org".into();
        assert!(postfix_must_reload(&old, &domain));
    }
}
