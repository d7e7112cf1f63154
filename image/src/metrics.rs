//! Prometheus metrics of the relay: counters read from Postfix's mail log as it streams past,
//! and queue sizes counted in the spool when scraped.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::mail_log::{delivery, is_dsn, is_queue_id, postfix_program, Delivery};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

/// A command smtpd refused: its SMTP reply code and why, as one of a few fixed reasons.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub code: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    pub limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UserLimitLabels {
    pub user: String,
    pub limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabel {
    pub queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RevisionLabel {
    pub revision: String,
}

/// A configuration revision the relay refused, and why: the one series of
/// `smtp_relay_config_refused_info` while the refusal stands.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub revision: String,
    pub error: String,
}

/// Postfix queues worth watching; a growing `deferred` means the relayhost refuses or is down.
pub const QUEUES: [&str; 5] = ["maildrop", "incoming", "active", "deferred", "hold"];

/// Why smtpd refused a command: the text of its reply that says so, and the label; anything
/// else is `other` (a fixed set: label values stay bounded whatever clients send).
const REJECT_REASONS: [(&str, &str); 8] = [
    ("Relay access denied", "relay_denied"),
    ("Sender address rejected", "sender"),
    ("Recipient address rejected", "recipient"),
    ("Client host rejected", "client"),
    ("Helo command rejected", "helo"),
    ("size exceeds", "size"),
    ("Message size", "size"),
    // The spool's reserve (queue_minfree): 452, retry later.
    ("Insufficient system storage", "storage"),
];

/// Longest line of the mail log read whole (Postfix's own lines are far shorter: a few kB at
/// most, with every address and HELO name in them at SMTP's line length limit).
pub const LOG_LINE_MAX: usize = 64 * 1024;

/// Why a delivery attempt to the relayhost failed (deferred or bounced).
pub const RELAYHOST_ERRORS: [&str; 5] = ["connect", "tls", "login", "refused", "other"];

/// What the relayhost answered to the last login: `unknown` until a delivery with credentials
/// succeeds or a login fails (and always without credentials).
pub const LOGIN_STATES: [&str; 4] = ["accepted", "refused", "unverified", "unknown"];

/// Why an OAuth2 token refresh failed: OAuth2's error codes (RFC 6749, 5.2), then the relay's
/// own; every value `oauth2::TokenError::code` gives.
pub const TOKEN_ERRORS: [&str; 10] = [
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "refused",
    "unreachable",
    "bad_response",
    "bad_key",
];

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    spool_dir: PathBuf,
    pub deliveries: Family<StatusLabel, Counter>,
    pub rejects: Family<RejectLabels, Counter>,
    pub relayhost_errors: Family<ReasonLabel, Counter>,
    delivery_problem: Family<ProblemLabels, Gauge>,
    relayhost_login: Family<StateLabel, Gauge>,
    /// Whether the relay logs in to its relayhost (credentials configured).
    logs_in: Arc<std::sync::atomic::AtomicBool>,
    pub connections: Counter,
    pub sasl_failures: Counter,
    /// Clients refused a connection, a message or a recipient over a limit per client.
    pub rate_limited: Family<LimitLabel, Counter>,
    /// Recipients refused over a limit per SASL user, by user and limit.
    pub user_rate_limited: Family<UserLimitLabels, Counter>,
    pub queue: Family<QueueLabel, Gauge>,
    pub sasl_users: Gauge,
    pub reloads: Counter,
    pub config_errors: Counter,
    pub postfix_up: Gauge,
    pub draining: Gauge,
    /// The node UID root in this container is (see [`Metrics::set_root_node_uid`]).
    root_node_uid: Gauge,
    /// When mail was last delivered to the relayhost (or the relay started), and whether any
    /// was since the start.
    last_sent: Arc<Mutex<(std::time::Instant, Option<std::time::SystemTime>)>>,
    since_last_sent: Gauge,
    last_sent_at: Gauge,
    oldest: Gauge,
    oldest_at: Gauge,
    oauth2_expiry: Gauge,
    oauth2_refreshes: Family<ResultLabel, Counter>,
    oauth2_failures_in_a_row: Gauge,
    oauth2_last_error: Family<ErrorLabel, Gauge>,
    /// The last walk of the spool and when: scrapes in a burst share one walk.
    spool_walk: Arc<Mutex<Option<(std::time::Instant, SpoolWalk)>>>,
    /// The spool's reserve (Postfix's `queue_minfree`), in bytes; 0 until the relay says.
    spool_reserve: Arc<std::sync::atomic::AtomicU64>,
    spool_free: Gauge,
    spool_size: Gauge,
    spool_reserve_bytes: Gauge,
    spool_nearly_full: Gauge,
    /// The revision of the configuration Postfix runs: one series at most.
    config_revision: Family<RevisionLabel, Gauge>,
    /// The revision refused last, while the refusal stands: one series at most.
    config_refused: Family<RefusedLabels, Gauge>,
    /// Self-checks of a configuration that failed (see `crate::self_check`).
    pub self_check_failures: Counter,
    /// What the self-check reads from the mail log (see [`LogWatch`]).
    log_watch: Arc<Mutex<LogWatch>>,
}

/// The mail log as the self-check reads it: how many times the master said it reloaded its
/// configuration, and the first line since the last [`Metrics::mark_log`] saying that the
/// configuration is broken (see [`config_problem`]).
#[derive(Debug, Default)]
struct LogWatch {
    reloads: u64,
    /// The line kept, with its rank (see [`problem_rank`]).
    first_problem: Option<(u8, String)>,
}

/// Which of several problem lines a refusal names, lowest first: a table that is unavailable
/// (Postfix names its type and path: `hash:/etc/postfix/missing is unavailable. open database
/// ...`), then a program that gave up, then the rest (an `error: open database ...` line comes
/// just before the one about the table, and says less).
fn problem_rank(line: &str) -> u8 {
    let message = line.split_once(": ").map_or(line, |(_, m)| m);
    if message.starts_with("warning: ") && message.contains(" is unavailable") {
        0
    } else if message.starts_with("fatal: ") || message.starts_with("panic: ") {
        1
    } else {
        2
    }
}

/// Where the mail log was when a self-check began (see [`Metrics::mark_log`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogMark {
    reloads: u64,
}

/// The longest log line a refusal keeps: enough for Postfix's words about a table or a
/// restriction, short enough for a label value and a status condition.
pub const PROBLEM_LINE_MAX: usize = 300;

/// The messages in each queue (in the order of [`QUEUES`]), the oldest one's arrival, and
/// the space on the spool's file system (`None` when it cannot be read).
type SpoolWalk = (
    [usize; 5],
    Option<std::time::SystemTime>,
    Option<SpoolSpace>,
);

/// The spool's file system, as smtpd sees it (`statvfs` of the queue directory): the bytes
/// an unprivileged process may still write, and its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolSpace {
    pub free: u64,
    pub size: u64,
}

/// "Nearly full": less free than this many times the reserve. smtpd refuses new mail below
/// one reserve; the warning comes while there is as much again.
pub const NEARLY_FULL_RESERVES: u64 = 2;

/// Whether a spool with `free` bytes left is nearly full under `reserve` (never without one).
pub fn nearly_full(free: u64, reserve: u64) -> bool {
    reserve > 0 && free < reserve.saturating_mul(NEARLY_FULL_RESERVES)
}

/// How long a walk of the spool answers scrapes.
const SPOOL_WALK_FRESH: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

impl Metrics {
    pub fn new(spool_dir: &Path) -> Self {
        let mut registry = Registry::with_prefix("smtp_relay");
        let mut m = Metrics {
            registry: Arc::default(),
            spool_dir: spool_dir.to_path_buf(),
            deliveries: Family::default(),
            rejects: Family::default(),
            relayhost_errors: Family::default(),
            delivery_problem: Family::default(),
            relayhost_login: Family::default(),
            logs_in: Arc::default(),
            connections: Counter::default(),
            sasl_failures: Counter::default(),
            rate_limited: Family::default(),
            user_rate_limited: Family::default(),
            queue: Family::default(),
            sasl_users: Gauge::default(),
            reloads: Counter::default(),
            config_errors: Counter::default(),
            postfix_up: Gauge::default(),
            draining: Gauge::default(),
            root_node_uid: Gauge::default(),
            last_sent: Arc::new(Mutex::new((std::time::Instant::now(), None))),
            since_last_sent: Gauge::default(),
            last_sent_at: Gauge::default(),
            oldest: Gauge::default(),
            oldest_at: Gauge::default(),
            oauth2_expiry: Gauge::default(),
            oauth2_refreshes: Family::default(),
            oauth2_failures_in_a_row: Gauge::default(),
            oauth2_last_error: Family::default(),
            spool_walk: Arc::default(),
            spool_reserve: Arc::default(),
            spool_free: Gauge::default(),
            spool_size: Gauge::default(),
            spool_reserve_bytes: Gauge::default(),
            spool_nearly_full: Gauge::default(),
            config_revision: Family::default(),
            config_refused: Family::default(),
            self_check_failures: Counter::default(),
            log_watch: Arc::default(),
        };
        // Every series exists from the start at 0, so rate() and alerts see the first event.
        // (Rejects by code appear with their first one: codes vary by reason.)
        for status in ["sent", "deferred", "bounced", "expired"] {
            let _ = m.deliveries.get_or_create(&StatusLabel {
                status: status.into(),
            });
        }
        for reason in RELAYHOST_ERRORS {
            let _ = m.relayhost_errors.get_or_create(&ReasonLabel {
                reason: reason.into(),
            });
        }
        m.set_login("unknown");
        // Unknown until the supervisor read it: never 0, the node's root, by default.
        m.set_root_node_uid(None);
        m.register(&mut registry);
        m.registry = Arc::new(Mutex::new(registry));
        m
    }

    /// The series and their help texts: the page's one table of contents.
    #[allow(clippy::too_many_lines, reason = "a table: one entry per series")]
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "deliveries",
            "Delivery attempts to the relayhost by final status (sent, deferred, bounced, expired)",
            self.deliveries.clone(),
        );
        registry.register(
            "smtpd_rejects",
            "Commands rejected by smtpd, by SMTP reply code and reason (relay_denied, sender, recipient, client, helo, size, other)",
            self.rejects.clone(),
        );
        registry.register(
            "relayhost_errors",
            "Delivery attempts to the relayhost that failed, by cause: connect (unreachable), tls, login (it refused the credentials), refused (it answered with an error code), other",
            self.relayhost_errors.clone(),
        );
        registry.register(
            "relayhost_login",
            "What the relayhost answered to the last login: 1 for the current state (accepted, refused, unknown: no login yet, or no credentials)",
            self.relayhost_login.clone(),
        );
        registry.register(
            "smtpd_connections",
            "Client connections accepted by smtpd",
            self.connections.clone(),
        );
        registry.register(
            "sasl_auth_failures",
            "Failed SASL logins of clients",
            self.sasl_failures.clone(),
        );
        registry.register(
            "smtpd_rate_limited",
            "Clients told to retry later over a limit per client (rateLimits.perClient), by limit: connections, messages, recipients; the relay's log names each client",
            self.rate_limited.clone(),
        );
        registry.register(
            "user_rate_limited",
            "Recipients a SASL user was told to retry later over a limit per user (rateLimits.perUser), by user and limit: connections, messages, recipients",
            self.user_rate_limited.clone(),
        );
        registry.register(
            "queue_messages",
            "Messages in each Postfix queue",
            self.queue.clone(),
        );
        registry.register(
            "sasl_users",
            "SASL users in the database",
            self.sasl_users.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration changes applied without restart",
            self.reloads.clone(),
        );
        registry.register(
            "config_errors",
            "Configuration changes refused because they were invalid",
            self.config_errors.clone(),
        );
        registry.register(
            "postfix_up",
            "1 while the Postfix master runs",
            self.postfix_up.clone(),
        );
        registry.register(
            "root_node_uid",
            "The UID on the node that root in this container is, from /proc/self/uid_map: 0 when it is the node's root (the pod shares the node's users: hostUsers true, or a runtime that ignored hostUsers: false), else the start of the pod's unprivileged range; -1 when the map could not be read",
            self.root_node_uid.clone(),
        );
        registry.register(
            "draining",
            "1 while this replica is asked to drain (scaled away or its relay deleted): out of the Service, delivering its queue",
            self.draining.clone(),
        );
        registry.register(
            "seconds_since_last_delivery",
            "Seconds since a message was last delivered to the relayhost (or the relay started): grows while mail waits on a relayhost that refuses it or is down",
            self.since_last_sent.clone(),
        );
        registry.register(
            "last_delivery_timestamp_seconds",
            "When a message was last delivered to the relayhost, in seconds since the epoch (0: none since the relay started)",
            self.last_sent_at.clone(),
        );
        registry.register(
            "queue_oldest_message_age_seconds",
            "Age of the oldest message on the spool, in any queue (0 when empty)",
            self.oldest.clone(),
        );
        registry.register(
            "oauth2_token_expiry_timestamp_seconds",
            "When the OAuth2 access token for the relayhost expires, in seconds since the epoch (0: none)",
            self.oauth2_expiry.clone(),
        );
        registry.register(
            "oauth2_token_refreshes",
            "OAuth2 token requests by result: ok, or the error (invalid_client, invalid_grant, invalid_scope, unauthorized_client, invalid_request, unsupported_grant_type, refused, unreachable, bad_response, bad_key)",
            self.oauth2_refreshes.clone(),
        );
        registry.register(
            "oauth2_last_error",
            "1 for the error of the last OAuth2 token request while requests fail (none once one succeeds)",
            self.oauth2_last_error.clone(),
        );
        registry.register(
            "oauth2_token_refresh_failures_in_a_row",
            "OAuth2 token requests failed since the last one that succeeded",
            self.oauth2_failures_in_a_row.clone(),
        );
        registry.register(
            "queue_oldest_message_timestamp_seconds",
            "When the oldest message on the spool arrived, in seconds since the epoch (0 when empty)",
            self.oldest_at.clone(),
        );
        registry.register(
            "spool_free_bytes",
            "Bytes free on the spool's file system for Postfix (statvfs of the queue directory)",
            self.spool_free.clone(),
        );
        registry.register(
            "spool_size_bytes",
            "Size of the spool's file system in bytes",
            self.spool_size.clone(),
        );
        registry.register(
            "spool_reserve_bytes",
            "The spool's reserve (Postfix's queue_minfree): below this much free space smtpd answers new mail with 452 (retry later)",
            self.spool_reserve_bytes.clone(),
        );
        registry.register(
            "spool_nearly_full",
            "1 while the spool's file system has less than twice the reserve free: new mail is refused (452) once less than the reserve is",
            self.spool_nearly_full.clone(),
        );
        registry.register(
            "config_revision_info",
            "1 for the revision of the configuration Postfix runs (the operator's config hash; absent when the relay was given none)",
            self.config_revision.clone(),
        );
        registry.register(
            "config_refused_info",
            "1 for the configuration revision this replica refused, with why (Postfix's own log line, or the SMTP reply of the self-check, or the validation error), while the refusal stands: until a later configuration passes",
            self.config_refused.clone(),
        );
        registry.register(
            "delivery_problem_info",
            "1 for why the last attempt to hand mail to the relayhost failed (reason as in relayhost_errors_total; detail in Postfix's own words, without anything a client wrote), until mail reaches the relayhost again",
            self.delivery_problem.clone(),
        );
        registry.register(
            "self_check_failures",
            "Self-checks (an SMTP session to the local listener after each start and reload) that a configuration failed",
            self.self_check_failures.clone(),
        );
    }

    /// The node UID root in this container is, `None` when unknown (served as -1).
    pub fn set_root_node_uid(&self, uid: Option<u32>) {
        self.root_node_uid.set(uid.map_or(-1, i64::from));
    }

    /// The revision of the configuration Postfix runs now; `None`: none known.
    pub fn set_config_revision(&self, revision: Option<&str>) {
        self.config_revision.clear();
        if let Some(revision) = revision {
            self.config_revision
                .get_or_create(&RevisionLabel {
                    revision: revision.into(),
                })
                .set(1);
        }
    }

    /// The revision refused and why (`""` for a configuration without a revision), or `None`
    /// once a later configuration passed.
    pub fn set_config_refused(&self, refused: Option<(&str, &str)>) {
        self.config_refused.clear();
        if let Some((revision, error)) = refused {
            self.config_refused
                .get_or_create(&RefusedLabels {
                    revision: revision.into(),
                    error: bounded_line(error),
                })
                .set(1);
        }
    }

    /// Marks where the mail log is: [`Metrics::config_problem`] then says only what came
    /// after, and [`Metrics::reloaded_since`] whether the master reloaded since.
    pub fn mark_log(&self) -> LogMark {
        let mut watch = self.log_watch.lock().unwrap_or_else(|e| e.into_inner());
        watch.first_problem = None;
        LogMark {
            reloads: watch.reloads,
        }
    }

    /// The line since the last [`Metrics::mark_log`] saying that the configuration is broken
    /// (see [`config_problem`]): the first, or a first that says more (see `problem_rank`).
    pub fn config_problem(&self) -> Option<String> {
        let watch = self.log_watch.lock().unwrap_or_else(|e| e.into_inner());
        watch.first_problem.as_ref().map(|(_, line)| line.clone())
    }

    /// Whether the master logged a reload of its configuration after `mark`.
    pub fn reloaded_since(&self, mark: LogMark) -> bool {
        let watch = self.log_watch.lock().unwrap_or_else(|e| e.into_inner());
        watch.reloads > mark.reloads
    }

    /// Follows the lines the self-check reads: the master's reloads, config problems.
    fn watch_log_line(&self, program: &str, message: &str) {
        let reload = program == "master" && message.starts_with("reload -- ");
        let problem = config_problem(program, message);
        if reload || problem.is_some() {
            let mut watch = self.log_watch.lock().unwrap_or_else(|e| e.into_inner());
            if reload {
                watch.reloads += 1;
            }
            if let Some(line) = problem {
                let rank = problem_rank(&line);
                if watch
                    .first_problem
                    .as_ref()
                    .is_none_or(|(kept, _)| rank < *kept)
                {
                    watch.first_problem = Some((rank, line));
                }
            }
        }
    }

    /// The spool's reserve in force (Postfix's `queue_minfree`), in bytes.
    pub fn set_spool_reserve(&self, bytes: u64) {
        self.spool_reserve
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// The OAuth2 access token in use: when it expires (0 without one).
    pub fn oauth2_token(&self, expires_at: Option<std::time::SystemTime>) {
        self.oauth2_expiry.set(expires_at.map_or(0, unix_seconds));
    }

    /// Counts a token refresh, `Ok` or failed with an error code; the failures in a row.
    pub fn oauth2_refreshed(&self, error: Option<&str>) -> u32 {
        self.oauth2_refreshes
            .get_or_create(&ResultLabel {
                result: error.unwrap_or("ok").into(),
            })
            .inc();
        // The last error alone is 1 (none after a success); codes come from a fixed set.
        for code in TOKEN_ERRORS {
            let was = self
                .oauth2_last_error
                .get(&ErrorLabel { error: code.into() });
            if was.is_some() || Some(code) == error {
                self.oauth2_last_error
                    .get_or_create(&ErrorLabel { error: code.into() })
                    .set(i64::from(Some(code) == error));
            }
        }
        match error {
            None => {
                self.oauth2_failures_in_a_row.set(0);
                0
            }
            Some(_) => {
                let n = self.oauth2_failures_in_a_row.inc() + 1;
                u32::try_from(n).unwrap_or(u32::MAX)
            }
        }
    }

    /// Says whether the relay logs in to its relayhost; without credentials the login state
    /// stays `unknown`.
    pub fn set_logs_in(&self, logs_in: bool) {
        let before = self
            .logs_in
            .swap(logs_in, std::sync::atomic::Ordering::Relaxed);
        if before != logs_in {
            self.set_login("unknown");
        }
    }

    fn set_login(&self, state: &str) {
        for s in LOGIN_STATES {
            self.relayhost_login
                .get_or_create(&StateLabel { state: s.into() })
                .set(i64::from(s == state));
        }
    }

    /// Updates counters from one line of Postfix's mail log.
    ///
    /// Only Postfix's own words are read: each line is parsed along the layout Postfix writes,
    /// and whatever a client chose (addresses, HELO name, commands it quoted) is stepped over
    /// by its delimiters, never searched. Lines that are not in the expected layout change
    /// nothing.
    pub fn observe_log_line(&self, line: &str) {
        let Some((program, message)) = postfix_program(line) else {
            return;
        };
        self.watch_log_line(program, message);
        match program {
            "smtp" | "relay" | "error" | "lmtp" => {
                if let Some(attempt) = delivery(message) {
                    self.delivery(program, attempt);
                }
            }
            "smtpd" => {
                if message.starts_with("connect from ") {
                    self.connections.inc();
                } else if let Some((code, reason)) =
                    reject(message).filter(|_| !self_check_reject(message))
                {
                    self.rejects
                        .get_or_create(&RejectLabels {
                            code: bounded_code(code),
                            reason: reason.into(),
                        })
                        .inc();
                } else if sasl_login_failed(message) {
                    self.sasl_failures.inc();
                } else if let Some(limit) = rate_limited(message) {
                    self.rate_limited
                        .get_or_create(&LimitLabel {
                            limit: limit.into(),
                        })
                        .inc();
                }
            }
            _ => {}
        }
    }

    /// One recipient's delivery attempt: `status=sent (...)`, `status=deferred (...)`, ...
    fn delivery(&self, program: &str, attempt: Delivery<'_>) {
        let Delivery { status, why, .. } = attempt;
        let to_relayhost = program != "error";
        if status == "sent" {
            let mut last = self.last_sent.lock().unwrap_or_else(|e| e.into_inner());
            *last = (
                std::time::Instant::now(),
                Some(std::time::SystemTime::now()),
            );
            if to_relayhost {
                self.delivery_problem.clear();
                if self.logs_in.load(std::sync::atomic::Ordering::Relaxed) {
                    self.set_login("accepted");
                }
            }
        } else if to_relayhost && matches!(status, "deferred" | "bounced") {
            let reason = relayhost_error(why);
            let logs_in = self.logs_in.load(std::sync::atomic::Ordering::Relaxed);
            if reason == "login" {
                self.set_login("refused");
            } else if reason == "tls" && logs_in && unverified(why) {
                // The relayhost did not prove its name: no login was sent.
                self.set_login("unverified");
            }
            self.relayhost_errors
                .get_or_create(&ReasonLabel {
                    reason: reason.into(),
                })
                .inc();
            self.delivery_problem.clear();
            self.delivery_problem
                .get_or_create(&ProblemLabels {
                    reason: reason.into(),
                    detail: problem_detail(reason, why),
                })
                .set(1);
        }
        self.deliveries
            .get_or_create(&StatusLabel {
                status: bounded_status(status),
            })
            .inc();
    }

    /// Follows Postfix's mail log on `log` until it ends: each line is counted (see
    /// [`Metrics::observe_log_line`]) and written to `echo` (the relay's stdout).
    ///
    /// Any bytes are taken, as a stop would leave the log's pipe to fill and Postfix's logging
    /// to block: a line that is not UTF-8 (Postfix passes 8-bit text of a client to its log
    /// once `smtputf8_enable = yes`, e.g. a header that `header_checks` logs, with only a loose
    /// check) is read with its bad bytes replaced by U+FFFD; a line longer than
    /// [`LOG_LINE_MAX`] is cut there, its rest skipped up to the next newline (never read as a
    /// line of its own) and it is not counted; a failed write to `echo` is ignored. Only a
    /// failed read ends it early.
    pub async fn follow_log<R>(
        &self,
        mut log: R,
        mut echo: impl std::io::Write,
    ) -> std::io::Result<()>
    where
        R: tokio::io::AsyncBufRead + Unpin,
    {
        use tokio::io::AsyncBufReadExt as _;
        let mut line: Vec<u8> = Vec::with_capacity(1024);
        let mut cut = false;
        loop {
            let chunk = match log.fill_buf().await {
                Ok(chunk) => chunk,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if chunk.is_empty() {
                if !line.is_empty() || cut {
                    self.take_log_line(&line, cut, &mut echo);
                }
                return Ok(());
            }
            let newline = chunk.iter().position(|&b| b == b'\n');
            let part = &chunk[..newline.unwrap_or(chunk.len())];
            let room = LOG_LINE_MAX.saturating_sub(line.len());
            if part.len() > room {
                cut = true;
            }
            line.extend_from_slice(&part[..part.len().min(room)]);
            let used = newline.map_or(chunk.len(), |at| at + 1);
            log.consume(used);
            if newline.is_some() {
                self.take_log_line(&line, cut, &mut echo);
                line.clear();
                cut = false;
            }
        }
    }

    /// One line of the mail log, as read by [`Metrics::follow_log`].
    fn take_log_line(&self, bytes: &[u8], cut: bool, echo: &mut impl std::io::Write) {
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        let text = String::from_utf8_lossy(bytes);
        if cut {
            let _ = writeln!(echo, "{text} [cut at {LOG_LINE_MAX} bytes]");
            return;
        }
        // A line the parser cannot take (a bug) costs that line, never the pump.
        let counted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.observe_log_line(&text);
        }));
        if counted.is_err() {
            tracing::error!("a mail log line could not be read for the metrics");
        }
        let _ = writeln!(echo, "{text}");
    }

    /// Deliveries logged as deferred so far.
    pub fn deferred(&self) -> u64 {
        self.deliveries
            .get_or_create(&StatusLabel {
                status: "deferred".into(),
            })
            .get()
    }

    /// The spool, walked at most once a [`SPOOL_WALK_FRESH`]: concurrent scrapes wait for the
    /// walk in progress and share it. It blocks: call [`Metrics::encode`] off the runtime's
    /// workers ([`serve`] does).
    fn spool_walk(&self) -> SpoolWalk {
        let mut last = self.spool_walk.lock().unwrap_or_else(|e| e.into_inner());
        match *last {
            Some((at, walk)) if at.elapsed() < SPOOL_WALK_FRESH => walk,
            _ => {
                let walk = spool_scan(&self.spool_dir);
                *last = Some((std::time::Instant::now(), walk));
                walk
            }
        }
    }

    /// As if the last walk were a [`SPOOL_WALK_FRESH`] old.
    #[cfg(test)]
    fn forget_spool_walk(&self) {
        *self.spool_walk.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub fn encode(&self) -> String {
        let (sizes, oldest, space) = self.spool_walk();
        for (queue, n) in QUEUES.into_iter().zip(sizes) {
            self.queue
                .get_or_create(&QueueLabel {
                    queue: queue.to_string(),
                })
                .set(n as i64);
        }
        let (idle, sent_at) = {
            let last = self.last_sent.lock().unwrap_or_else(|e| e.into_inner());
            (last.0.elapsed(), last.1)
        };
        self.since_last_sent
            .set(i64::try_from(idle.as_secs()).unwrap_or(i64::MAX));
        self.last_sent_at.set(sent_at.map_or(0, unix_seconds));
        self.oldest.set(
            oldest
                .and_then(|t| t.elapsed().ok())
                .map_or(0, |age| i64::try_from(age.as_secs()).unwrap_or(i64::MAX)),
        );
        self.oldest_at.set(oldest.map_or(0, unix_seconds));
        let reserve = self
            .spool_reserve
            .load(std::sync::atomic::Ordering::Relaxed);
        let bytes = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.spool_reserve_bytes.set(bytes(reserve));
        if let Some(space) = space {
            self.spool_free.set(bytes(space.free));
            self.spool_size.set(bytes(space.size));
            self.spool_nearly_full
                .set(i64::from(nearly_full(space.free, reserve)));
        }
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}

/// What the operator reads from a relay's metrics page to drain it: whether it was asked to
/// drain, and what its queues still hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueReport {
    pub draining: bool,
    /// Every message on the spool, in any queue.
    pub queued: u64,
    /// Of those, waiting for a retry after the relayhost deferred them (or could not be
    /// reached).
    pub deferred: u64,
    /// Of those, put on hold by an administrator: no drain delivers them.
    pub hold: u64,
    /// Seconds since mail was last delivered to the relayhost (or the relay started).
    pub seconds_since_delivery: u64,
    /// Age of the oldest message on the spool, in seconds.
    pub oldest_seconds: u64,
    /// When the oldest message on the spool arrived (seconds since the epoch), 0 when empty.
    pub oldest_timestamp: u64,
    /// When mail was last delivered to the relayhost (seconds since the epoch), 0: not since
    /// the relay started.
    pub last_delivery_timestamp: u64,
    /// The relayhost's answer to the last login: one of [`LOGIN_STATES`].
    pub relayhost_login: &'static str,
    /// With an OAuth2 login: when the current token expires (seconds since the epoch), 0 for
    /// none.
    pub oauth2_expiry_timestamp: u64,
    /// With an OAuth2 login: token requests failed since the last success, and the last one's
    /// error.
    pub oauth2_failures: u64,
    pub oauth2_last_error: Option<String>,
    /// Bytes free on the spool's file system, and its size (`None` from a relay that does not
    /// say: an older image, or a spool it could not read).
    pub spool_free_bytes: Option<u64>,
    pub spool_size_bytes: Option<u64>,
    /// Less than twice the reserve is free: new mail is refused (452) below one reserve.
    pub spool_nearly_full: bool,
    /// The revision of the configuration Postfix runs (`None`: none known, or an older image).
    pub config_revision: Option<String>,
    /// A configuration this replica refused, while the refusal stands.
    pub config_refused: Option<ConfigRefusal>,
    /// Why mail does not reach the relayhost, from the last failed attempt until the next
    /// delivery.
    pub delivery_problem: Option<DeliveryProblem>,
    /// The node UID root in the container is: 0 for the node's root (`None`: unknown, or an
    /// older image).
    pub root_node_uid: Option<u32>,
}

/// Why mail does not reach the relayhost: the one series of
/// `smtp_relay_delivery_problem_info` from a failed attempt until the next delivery.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProblemLabels {
    pub reason: String,
    pub detail: String,
}

/// Why the last attempt to hand mail to the relayhost failed, while no delivery has succeeded
/// since: `reason` is one of `connect`, `tls`, `login`, `refused`, `other` (as in
/// `smtp_relay_relayhost_errors_total`), `detail` Postfix's own words (see [`problem_detail`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryProblem {
    pub reason: String,
    pub detail: String,
}

/// A configuration a replica refused: its revision (empty when it had none) and why, in
/// Postfix's words when Postfix gave any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigRefusal {
    pub revision: String,
    pub error: String,
}

impl QueueReport {
    /// Reads the report from the text [`Metrics::encode`] serves; `None` when the page is not a
    /// relay's (no queue gauge).
    pub fn parse(page: &str) -> Option<QueueReport> {
        let mut report = QueueReport {
            relayhost_login: "unknown",
            ..QueueReport::default()
        };
        let mut seen_queue = false;
        for line in page.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            let n = if value.is_finite() && value > 0.0 {
                value as u64
            } else {
                0
            };
            if series == "smtp_relay_draining" {
                report.draining = n == 1;
            } else if series == "smtp_relay_root_node_uid" {
                // -1: the relay could not read its map.
                report.root_node_uid = (value >= 0.0).then(|| u32::try_from(n).ok()).flatten();
            } else if series == "smtp_relay_seconds_since_last_delivery" {
                report.seconds_since_delivery = n;
            } else if series == "smtp_relay_queue_oldest_message_age_seconds" {
                report.oldest_seconds = n;
            } else if series == "smtp_relay_queue_oldest_message_timestamp_seconds" {
                report.oldest_timestamp = n;
            } else if series == "smtp_relay_last_delivery_timestamp_seconds" {
                report.last_delivery_timestamp = n;
            } else if series == "smtp_relay_oauth2_token_expiry_timestamp_seconds" {
                report.oauth2_expiry_timestamp = n;
            } else if series == "smtp_relay_oauth2_token_refresh_failures_in_a_row" {
                report.oauth2_failures = n;
            } else if series == "smtp_relay_spool_free_bytes" {
                report.spool_free_bytes = Some(n);
            } else if series == "smtp_relay_spool_size_bytes" {
                report.spool_size_bytes = Some(n);
            } else if series == "smtp_relay_spool_nearly_full" {
                report.spool_nearly_full = n == 1;
            } else if let Some(labels) = series.strip_prefix("smtp_relay_config_revision_info{") {
                if n == 1 {
                    report.config_revision = label_values(labels)
                        .and_then(|mut l| l.remove("revision"))
                        .filter(|r| !r.is_empty());
                }
            } else if let Some(labels) = series.strip_prefix("smtp_relay_config_refused_info{") {
                if n == 1 {
                    report.config_refused = label_values(labels).and_then(|mut l| {
                        Some(ConfigRefusal {
                            revision: l.remove("revision")?,
                            error: l.remove("error")?,
                        })
                    });
                }
            } else if let Some(labels) = series.strip_prefix("smtp_relay_delivery_problem_info{") {
                if n == 1 {
                    report.delivery_problem = label_values(labels).and_then(|mut l| {
                        Some(DeliveryProblem {
                            reason: l.remove("reason")?,
                            detail: l.remove("detail")?,
                        })
                    });
                }
            } else if let Some(labels) = series.strip_prefix("smtp_relay_oauth2_last_error") {
                if n == 1 {
                    report.oauth2_last_error = labels
                        .strip_prefix("{error=\"")
                        .and_then(|l| l.strip_suffix("\"}"))
                        .map(str::to_string);
                }
            } else if let Some(labels) = series.strip_prefix("smtp_relay_relayhost_login") {
                if n == 1 {
                    if let Some(state) = LOGIN_STATES
                        .into_iter()
                        .find(|s| labels.contains(&format!("state=\"{s}\"")))
                    {
                        report.relayhost_login = state;
                    }
                }
            } else if let Some(labels) = series.strip_prefix("smtp_relay_queue_messages") {
                seen_queue = true;
                report.queued += n;
                if labels.contains("queue=\"deferred\"") {
                    report.deferred = n;
                } else if labels.contains("queue=\"hold\"") {
                    report.hold = n;
                }
            }
        }
        seen_queue.then_some(report)
    }
}

/// The labels of a series as the text format writes them, from after the `{` to the closing
/// `}`: `name="value",...`, each value's `\\`, `\"` and `\n` unescaped. `None` when the text
/// is not in that form.
fn label_values(text: &str) -> Option<std::collections::BTreeMap<String, String>> {
    let mut labels = std::collections::BTreeMap::new();
    let mut rest = text;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return after.is_empty().then_some(labels);
        }
        let (name, after) = rest.split_once("=\"")?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return None;
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => match chars.next()? {
                    (_, 'n') => value.push('\n'),
                    (_, c) => value.push(c),
                },
                (i, '"') => break i + 1,
                (_, c) => value.push(c),
            }
        };
        labels.insert(name.to_string(), value);
        rest = &after[end..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// Whether an smtpd reject line is the relay's own self-check's (`crate::self_check`): from
/// loopback, with its HELO name, so a restart or reload counts no reject. A remote client
/// cannot write it: the address in brackets is Postfix's, and loopback is the pod's own.
fn self_check_reject(message: &str) -> bool {
    let client = message
        .split_once(" RCPT from ")
        .and_then(|(_, rest)| rest.split_once("]: "))
        .map(|(client, _)| client);
    let from_loopback = client.is_some_and(|c| c.ends_with("[127.0.0.1") || c.ends_with("[::1"));
    from_loopback
        && message
            .trim_end()
            .strip_suffix('>')
            .and_then(|m| m.strip_suffix(crate::self_check::HELO))
            .is_some_and(|m| m.ends_with(" helo=<"))
}

/// The warnings of a Postfix program that say its configuration is broken, by what follows
/// `warning: `. Tight on purpose: the line ends up in the operator's status, so only words
/// Postfix writes about its own configuration qualify, at the start of its message, where no
/// client text can be (a client's words come after Postfix's: `non-SMTP command from
/// NAME[ADDR]: ...`, or a key in `TABLE lookup error for "..."`, which is why that warning is
/// not one of these).
const CONFIG_WARNINGS: [&str; 5] = [
    // smtpd_check: a restriction name it does not know (from the configuration).
    "unknown smtpd restriction: ",
    "unsupported dictionary type: ",
    "bad numerical configuration: ",
    // A policy service or proxymap that does not answer (a name from the configuration).
    "problem talking to server ",
    // A milter of smtpd_milters that does not answer: smtpd defers every command (4.7.1).
    "connect to Milter service ",
];

/// Whether one message of Postfix's mail log (`program`'s, after its prefix) says that the
/// configuration is broken; the line to report, `program: message` cut at
/// [`PROBLEM_LINE_MAX`], if it does:
///
/// - `fatal: `, `panic: ` or `error: `: a Postfix program gave up (its own words: a client
///   cannot start a message of Postfix's);
/// - `warning: TYPE:NAME is unavailable. ...`: a lookup table that cannot be opened (a
///   missing `hash:` file, an unknown type): smtpd answers `451 4.3.5 Server configuration
///   error` to whatever needs it. TYPE:NAME comes from the configuration; a client's name
///   (`NAME[ADDR]`) never has a `:` nor a `[` in that place;
/// - `warning: ` followed by one of `CONFIG_WARNINGS`.
pub fn config_problem(program: &str, message: &str) -> Option<String> {
    let (severity, rest) = message.split_once(": ")?;
    let problem = match severity {
        "fatal" | "panic" | "error" => true,
        "warning" => {
            let table_unavailable = rest.split_once(' ').is_some_and(|(table, after)| {
                table.contains(':') && !table.contains('[') && after.starts_with("is unavailable")
            });
            table_unavailable || CONFIG_WARNINGS.iter().any(|w| rest.starts_with(w))
        }
        _ => false,
    };
    problem.then(|| bounded_line(&format!("{program}: {message}")))
}

/// `text` fit for a label value and a status message: control characters replaced, cut at
/// [`PROBLEM_LINE_MAX`] bytes on a character boundary.
fn bounded_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(PROBLEM_LINE_MAX));
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > PROBLEM_LINE_MAX {
            break;
        }
        out.push(c);
    }
    out
}

/// Where the address that ends `text` (with its `>`) starts: the index of its `<`. The
/// reverse of [`address_end`]: after the domain (no `"` nor `<` in it), a quoted local part
/// opens at the first `"` back that is preceded by an even number of `\` (each `\` inside the
/// quotes escapes one character; a quote after an odd number is an escaped one).
fn address_start(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let body = bytes.strip_suffix(b">")?;
    let mut i = body.len();
    // Back over the domain and an unquoted local part, to the '<' or a closing quote.
    loop {
        i = i.checked_sub(1)?;
        match body[i] {
            b'<' => return Some(i),
            b'"' => break,
            _ => {}
        }
    }
    // Back over the quoted local part, to its opening quote; a '<' must come before it.
    loop {
        i = i.checked_sub(1)?;
        if body[i] == b'"' {
            let backslashes = body[..i].iter().rev().take_while(|&&b| b == b'\\').count();
            if backslashes % 2 == 0 {
                let open = i.checked_sub(1)?;
                return (body[open] == b'<').then_some(open);
            }
        }
    }
}

/// An address as Postfix logs it (external form) in its internal form, as smtpd's replies
/// name it: the local part's quotes and escapes removed.
fn unquoted(address: &str) -> std::borrow::Cow<'_, str> {
    let Some(quoted) = address.strip_prefix('"') else {
        return address.into();
    };
    let mut local = String::with_capacity(address.len());
    let mut chars = quoted.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => local.extend(chars.next().map(|(_, c)| c)),
            '"' => {
                local.push_str(&quoted[i + 1..]);
                return local.into();
            }
            _ => local.push(c),
        }
    }
    address.into()
}

/// What a client's values in a reject line are: `from=<S> to=<R> proto=P helo=<H>`, each but
/// `proto` maybe absent.
#[derive(Debug, Default, PartialEq, Eq)]
struct ClientValues<'a> {
    sender: Option<&'a str>,
    recipient: Option<&'a str>,
    helo: Option<&'a str>,
}

/// Splits `TEXT; from=<S> to=<R> proto=P helo=<H>` (smtpd's reply, then the client's values)
/// into the reply and the values, reading from the right: the HELO name holds no `<` (smtpd
/// writes `?` for it, as for spaces and `>`), the protocol is one word, and the addresses'
/// starts are found by [`address_start`]. `None` when the end of the line is not in that
/// layout.
fn client_values(text: &str) -> Option<(&str, ClientValues<'_>)> {
    let mut values = ClientValues::default();
    let mut rest = text;
    if let Some((before, helo)) = rest
        .strip_suffix('>')
        .and_then(|r| r.rsplit_once(" helo=<"))
        .filter(|(_, helo)| !helo.contains(['<', '>']))
    {
        values.helo = Some(helo);
        rest = before;
    }
    let (before, proto) = rest.rsplit_once(" proto=")?;
    if proto.is_empty() || !proto.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    rest = before;
    for (key, slot) in [
        (" to=", &mut values.recipient),
        (" from=", &mut values.sender),
    ] {
        if !rest.ends_with('>') {
            continue;
        }
        let start = address_start(rest)?;
        let (before, address) = rest.split_at(start);
        if let Some(before) = before.strip_suffix(key) {
            *slot = address.get(1..address.len() - 1);
            rest = before;
        } else if key == " to=" {
            // A sender alone.
            continue;
        } else {
            return None;
        }
    }
    Some((rest.strip_suffix(';')?, values))
}

/// A reject line of smtpd, in the layout Postfix writes: `QUEUEID: reject: CMD from
/// NAME[ADDR]: CODE X.Y.Z TEXT; from=<S> to=<R> proto=P helo=<H>`, where TEXT is
/// `<WHAT>: REASON` (WHAT: the address, HELO name or client it refused, as the client gave it)
/// or a REASON alone. Returns the code and the reason (see [`REJECT_REASONS`]), read from
/// REASON only: WHAT is found by its value (the client's values at the end of the line are
/// stepped over from the right, see [`client_values`]), so whatever the client sent, the words
/// read are smtpd's. A WHAT that is none of the values (or a line whose end is not in that
/// layout) gives `other`.
fn reject(message: &str) -> Option<(&str, &'static str)> {
    let (queue_id, rest) = message.split_once(": reject: ")?;
    if queue_id != "NOQUEUE" && !is_queue_id(queue_id) {
        return None;
    }
    let (command, rest) = rest.split_once(" from ")?;
    if command.is_empty() || !command.bytes().all(|b| b.is_ascii_uppercase() || b == b'-') {
        return None;
    }
    let (client, rest) = client_name(rest)?;
    let (code, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let rest = match rest.split_once(' ') {
        Some((dsn, text)) if is_dsn(dsn) => text,
        _ => rest,
    };
    let Some((text, values)) = client_values(rest) else {
        // Not smtpd's layout: a reply naming what it refused cannot be told from the client's
        // values; one naming nothing is smtpd's words up to the first ';'.
        return Some(match rest.strip_prefix('<') {
            Some(_) => (code, "other"),
            None => (code, reject_reason(rest.split(';').next().unwrap_or(""))),
        });
    };
    let reason = match text.strip_prefix('<') {
        None => text,
        Some(named) => {
            let address = client.split_once('[').map(|(_, a)| a.trim_end_matches(']'));
            let candidates = [
                values.recipient.map(unquoted),
                values.sender.map(unquoted),
                values.helo.map(Into::into),
                Some(client.into()),
                address.map(Into::into),
                Some(command.into()),
            ];
            let Some(reason) = candidates
                .iter()
                .flatten()
                .filter_map(|what| named.strip_prefix(what.as_ref())?.strip_prefix(">: "))
                // The longest WHAT leaves the shortest REASON: a part of smtpd's words.
                .min_by_key(|reason| reason.len())
            else {
                return Some((code, "other"));
            };
            reason
        }
    };
    Some((code, reject_reason(reason)))
}

/// `NAME[ADDR]: rest` or `NAME[ADDR]:PORT: rest` (with `smtpd_client_port_logging`) →
/// (`NAME[ADDR]`, `rest`). NAME is `unknown` or a name whose address was checked in the DNS.
fn client_name(text: &str) -> Option<(&str, &str)> {
    let close = text.find(']')?;
    let (client, rest) = text.split_at(close + 1);
    if !client.contains('[') || client.contains(' ') {
        return None;
    }
    let rest = rest.strip_prefix(':')?;
    let rest = rest.strip_prefix(' ').or_else(|| {
        rest.trim_start_matches(|c: char| c.is_ascii_digit())
            .strip_prefix(": ")
    })?;
    Some((client, rest))
}

/// `warning: NAME[ADDR]: SASL MECHANISM authentication failed: ...`: smtpd's words around
/// the client's name and the mechanism it named (one word: commands are split at spaces).
fn sasl_login_failed(message: &str) -> bool {
    let Some((_, rest)) = message.strip_prefix("warning: ").and_then(client_name) else {
        return false;
    };
    rest.strip_prefix("SASL ")
        .and_then(|r| r.split_once(' '))
        .is_some_and(|(mechanism, r)| {
            !mechanism.is_empty() && r.starts_with("authentication failed")
        })
}

/// Messages in each of Postfix's queues under `spool`, in the order of [`QUEUES`].
pub fn queue_sizes(spool: &Path) -> [usize; 5] {
    spool_scan(spool).0
}

/// One walk of the spool: the messages in each queue (in the order of [`QUEUES`]), and when
/// the oldest of them arrived.
fn spool_scan(spool: &Path) -> SpoolWalk {
    let scans = QUEUES.map(|q| scan(&spool.join(q)));
    let oldest = scans.iter().filter_map(|(_, t)| *t).min();
    (scans.map(|(n, _)| n), oldest, spool_space(spool))
}

/// The space on the file system of `spool`, as Postfix's `fsspace` reads it: blocks
/// available to unprivileged users (smtpd runs as `postfix`), in fragment-size units.
#[allow(
    clippy::useless_conversion,
    reason = "c_ulong and fsblkcnt_t are 32 bits wide on some targets"
)]
pub fn spool_space(spool: &Path) -> Option<SpoolSpace> {
    let fs = nix::sys::statvfs::statvfs(spool).ok()?;
    let unit = u64::from(fs.fragment_size());
    Some(SpoolSpace {
        free: u64::from(fs.blocks_available()).saturating_mul(unit),
        size: u64::from(fs.blocks()).saturating_mul(unit),
    })
}

fn unix_seconds(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Postfix's delivery statuses; anything else (a future one) is `other`.
fn bounded_status(status: &str) -> String {
    match status {
        "sent" | "deferred" | "bounced" | "expired" | "undeliverable" => status.into(),
        _ => "other".into(),
    }
}

/// A three-digit SMTP code as logged, or `other`.
fn bounded_code(code: &str) -> String {
    if code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()) {
        code.into()
    } else {
        "other".into()
    }
}

/// The reason of an smtpd reject, from smtpd's words (see [`REJECT_REASONS`]): the first said.
/// Which limit per client smtpd's warning says a client went over (anvil's count, Postfix's
/// own words before the client's name): connections, messages or recipients.
fn rate_limited(message: &str) -> Option<&'static str> {
    let what = message
        .strip_prefix("warning: ")?
        .split_once(" rate limit exceeded: ")?
        .0;
    match what {
        "Connection" => Some("connections"),
        "Message delivery request" => Some("messages"),
        "Recipient address" => Some("recipients"),
        _ => None,
    }
}

fn reject_reason(text: &str) -> &'static str {
    REJECT_REASONS
        .iter()
        .filter_map(|(said, reason)| text.find(said).map(|at| (at, *reason)))
        .min_by_key(|(at, _)| *at)
        .map_or("other", |(_, reason)| reason)
}

/// The cause of a failed delivery attempt to the relayhost, from the text Postfix logs after
/// `status=deferred (` or `status=bounced (` (one of [`RELAYHOST_ERRORS`]). Only Postfix's
/// own words are read: what the relayhost answered follows ` said: ` and may quote the
/// client's addresses back.
/// Whether Postfix deferred the mail because the relayhost's certificate was not verified (its
/// own words, before any answer of the server).
fn unverified(why: &str) -> bool {
    let own = why.split_once(" said: ").map_or(why, |(own, _)| own);
    own.contains("certificate not verified") || own.contains("certificate verification failed")
}

/// The reason of a failed attempt in two: Postfix's own words, and the relayhost's reply when
/// it answered (after `said: `), without the `delivery temporarily suspended: ` of a
/// destination Postfix stopped trying for a while.
fn own_and_answer(why: &str) -> (&str, Option<&str>) {
    let why = why
        .strip_prefix("delivery temporarily suspended: ")
        .unwrap_or(why);
    match why.split_once(" said: ") {
        Some((own, answer)) => (own, Some(answer)),
        None => (why, None),
    }
}

fn relayhost_error(why: &str) -> &'static str {
    let (own, answer) = own_and_answer(why);
    let answered = answer.is_some();
    if own.contains("SASL authentication failed") || own.contains("cannot authenticate") {
        "login"
    } else if own.contains("TLS") || own.contains("certificate") {
        "tls"
    } else if answered {
        "refused"
    } else if own.starts_with("connect to ")
        || own.contains("lost connection")
        || own.contains("conversation with")
        || own.contains("Host or domain name not found")
        || own.contains("Name service error")
    {
        "connect"
    } else {
        "other"
    }
}

/// Postfix's words for why an attempt failed, keeping nothing a client wrote: a client chooses
/// its sender and recipients, and the relayhost's reply may quote them. For `connect`, `tls`
/// and `login`, Postfix's own part (before any `said:`), which names the relayhost and what
/// went wrong; for `refused`, the relayhost's status codes and the command it refused; for
/// `other`, nothing (the pod's log has the line).
pub fn problem_detail(reason: &str, why: &str) -> String {
    let (own, answer) = own_and_answer(why);
    let detail = match reason {
        "connect" | "tls" | "login" => own.to_string(),
        "refused" => {
            let answer = answer.unwrap_or_default();
            let codes: Vec<&str> = answer
                .split_whitespace()
                .take(2)
                .take_while(|w| w.chars().all(|c| c.is_ascii_digit() || c == '.'))
                .collect();
            // Postfix's own suffix, when it is one of its commands (the reply before it is the
            // relayhost's, which may quote what a client wrote).
            let command = [
                "EHLO",
                "HELO",
                "STARTTLS",
                "AUTH",
                "MAIL FROM",
                "RCPT TO",
                "DATA",
                "end of DATA",
            ]
            .into_iter()
            .map(|c| format!("(in reply to {c} command)"))
            .find(|tail| answer.ends_with(tail.as_str()));
            let mut text = format!("the relayhost answered {}", codes.join(" "));
            if let Some(command) = command {
                text.push(' ');
                text.push_str(&command);
            }
            text
        }
        _ => String::new(),
    };
    bounded_line(&detail)
}

/// The number of queue files under `dir`, and the oldest one's arrival time.
fn scan(dir: &Path) -> (usize, Option<std::time::SystemTime>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, None);
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => scan(&e.path()),
            Ok(t) if t.is_file() => (1, arrival_time(&e.path())),
            _ => (0, None),
        })
        .fold((0, None), |(n, oldest), (m, t)| {
            (n + m, oldest.into_iter().chain(t).min())
        })
}

/// When the message in a queue file arrived: its time record, which cleanup writes once. Not
/// the file's modification time: the queue manager sets that of a deferred message to its next
/// retry, in the future. The file's birth time where the record cannot be read.
fn arrival_time(queue_file: &Path) -> Option<std::time::SystemTime> {
    let mut head = [0u8; 512];
    let read = std::fs::File::open(queue_file)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .unwrap_or(0);
    time_record(&head[..read])
        .or_else(|| std::fs::metadata(queue_file).and_then(|m| m.created()).ok())
}

/// The arrival time in the first records of a Postfix queue file: records are a type byte, a
/// length (7 bits a byte, least significant first, the high bit saying another byte follows)
/// and the data; the time record (`T`) holds "seconds microseconds".
fn time_record(mut records: &[u8]) -> Option<std::time::SystemTime> {
    while let Some((&kind, rest)) = records.split_first() {
        let (mut len, mut shift, mut rest) = (0usize, 0u32, rest);
        loop {
            let (&b, tail) = rest.split_first()?;
            len |= usize::from(b & 0x7f).checked_shl(shift)?;
            shift += 7;
            rest = tail;
            if b & 0x80 == 0 {
                break;
            }
        }
        let data = rest.get(..len)?;
        if kind == b'T' {
            let secs: u64 = std::str::from_utf8(data)
                .ok()?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            return Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs));
        }
        records = &rest[len..];
    }
    None
}

/// Serves `/metrics` until the task is dropped, within the limits of every small endpoint
/// ([`crate::http_server`]). The spool is walked on a blocking thread, never on a worker of the
/// runtime that also runs the liveness heartbeat, the OAuth2 socketmap and the signals.
pub async fn serve(metrics: Metrics, listen: std::net::SocketAddr) -> std::io::Result<()> {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::{routing::get, Router};
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let m = metrics.clone();
            async move {
                match tokio::task::spawn_blocking(move || m.encode()).await {
                    Ok(page) => (
                        [(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        page,
                    )
                        .into_response(),
                    Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                }
            }
        }),
    );
    crate::http_server::serve(
        bind(listen).await?,
        app,
        crate::http_server::LIMITS,
        std::future::pending(),
    )
    .await
}

/// Binds `listen`. `[::]` means every address of both families, as for SMTP: dual stack
/// where the kernel has IPv6 (an IPv6-only or dual-stack pod), IPv4 alone where it has none.
async fn bind(listen: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(listen).await {
        Err(e)
            if listen.ip() == std::net::Ipv6Addr::UNSPECIFIED
                && e.kind() != std::io::ErrorKind::AddrInUse =>
        {
            tracing::info!(error = %e, "no IPv6 here: metrics on IPv4 only");
            tokio::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, listen.port())).await
        }
        bound => bound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_over_a_limit_is_counted_by_the_limit_from_postfix_words() {
        assert_eq!(
            rate_limited("warning: Message delivery request rate limit exceeded: 3 from client.test[127.0.0.2] for service smtp"),
            Some("messages")
        );
        assert_eq!(
            rate_limited(
                "warning: Connection rate limit exceeded: 4 from x[127.0.0.2] for service smtp"
            ),
            Some("connections")
        );
        assert_eq!(
            rate_limited("warning: Recipient address rate limit exceeded: 3 from x[127.0.0.2] for service smtp"),
            Some("recipients")
        );
        // What a client writes comes after the count, never before it.
        assert_eq!(
            rate_limited("warning: Illegal address syntax from x rate limit exceeded: [1.2.3.4]"),
            None
        );
    }
    use crate::mail_log::address_end;

    #[test]
    fn the_self_checks_reject_is_not_counted_and_no_client_can_pass_for_it() {
        let own = "NOQUEUE: reject: RCPT from unknown[127.0.0.1]: 554 5.7.1 <postmaster@example.net>: Recipient address rejected: Access denied; from=<> to=<postmaster@example.net> proto=ESMTP helo=<self-check.smtp-relay.invalid>";
        assert!(self_check_reject(own));
        assert!(self_check_reject(&own.replace("[127.0.0.1]", "[::1]")));
        // Another client naming the self-check's HELO, or a local client with its own.
        assert!(!self_check_reject(
            &own.replace("unknown[127.0.0.1]", "host[10.0.0.5]")
        ));
        assert!(!self_check_reject(
            &own.replace("self-check.smtp-relay.invalid", "app.test")
        ));
        // A client writing the loopback text into its address.
        let forged = "NOQUEUE: reject: RCPT from unknown[10.0.0.5]: 554 5.7.1 <x[127.0.0.1]: y>: Relay access denied; from=<a> to=<x[127.0.0.1]: y> proto=ESMTP helo=<self-check.smtp-relay.invalid>";
        assert!(!self_check_reject(forged));
        let metrics = Metrics::new(std::path::Path::new("/nonexistent"));
        metrics.observe_log_line(&format!("Dec  6 08:50:44 relay postfix/smtpd[1]: {own}"));
        assert!(!metrics.encode().contains("smtp_relay_smtpd_rejects_total{"));
    }

    #[tokio::test]
    async fn the_unspecified_ipv6_address_serves_both_families() {
        let listener = bind("[::]:0".parse().unwrap()).await.expect("bound");
        let port = listener.local_addr().unwrap().port();
        for addr in ["127.0.0.1", "[::1]"] {
            let addr = format!("{addr}:{port}");
            let accepted = tokio::join!(listener.accept(), tokio::net::TcpStream::connect(&addr));
            assert!(
                accepted.0.is_ok() && accepted.1.is_ok(),
                "{addr}: {accepted:?}"
            );
        }
    }

    #[test]
    fn the_time_record_is_found_after_records_of_any_length() {
        // A 200-byte record first: its length takes two bytes (200 = 0b1_1001000).
        let mut file = vec![b'C', 0x80 | (200 & 0x7f), 200 >> 7];
        file.extend([b' '; 200]);
        file.extend(b"T\x111795989469 414319");
        assert_eq!(
            time_record(&file),
            Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_989_469))
        );
        // Cut short, or without a time record: nothing, never a wrong time.
        assert_eq!(time_record(&file[..150]), None);
        assert_eq!(time_record(b"C\x02abX\x01z"), None);
    }

    /// Issue 40: the spool's free space and size are statvfs's, and it is nearly full below
    /// twice the reserve; the operator reads all three from the page.
    #[test]
    fn the_spool_space_and_nearly_full_are_on_the_page() {
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::new(dir.path());
        let space = spool_space(dir.path()).expect("statvfs of a directory");
        assert!(space.size > 0 && space.free <= space.size, "{space:?}");
        // No reserve said yet: never nearly full.
        let report = QueueReport::parse(&m.encode()).unwrap();
        assert!(!report.spool_nearly_full);
        let (free, size) = (
            report.spool_free_bytes.expect("free bytes"),
            report.spool_size_bytes.expect("size"),
        );
        assert_eq!(size, space.size);
        // Free space moves with whatever else writes to the file system: roughly.
        assert!(
            free.abs_diff(space.free) < space.size / 10 + (1 << 30),
            "{free}"
        );
        assert_page(
            &m,
            &[
                "smtp_relay_spool_reserve_bytes 0",
                "smtp_relay_spool_nearly_full 0",
            ],
            &[],
        );

        // A reserve over half the free space: nearly full.
        m.set_spool_reserve(free / 2 + 1);
        m.forget_spool_walk();
        assert!(QueueReport::parse(&m.encode()).unwrap().spool_nearly_full);
        assert_page(
            &m,
            &[
                &format!("smtp_relay_spool_reserve_bytes {}", free / 2 + 1),
                "smtp_relay_spool_nearly_full 1",
            ],
            &[],
        );
        m.set_spool_reserve(1);
        m.forget_spool_walk();
        assert!(!QueueReport::parse(&m.encode()).unwrap().spool_nearly_full);

        assert!(nearly_full(199, 100) && !nearly_full(200, 100) && !nearly_full(0, 0));
        // A page of an older relay, without the spool's series: nothing said.
        let old = QueueReport::parse("smtp_relay_queue_messages{queue=\"deferred\"} 0\n").unwrap();
        assert_eq!(
            (
                old.spool_free_bytes,
                old.spool_size_bytes,
                old.spool_nearly_full
            ),
            (None, None, false)
        );
        let parsed = QueueReport::parse(
            "smtp_relay_queue_messages{queue=\"deferred\"} 0\nsmtp_relay_spool_free_bytes 1.2e+07\nsmtp_relay_spool_size_bytes 67108864\nsmtp_relay_spool_nearly_full 1\n",
        )
        .unwrap();
        assert_eq!(
            (
                parsed.spool_free_bytes,
                parsed.spool_size_bytes,
                parsed.spool_nearly_full
            ),
            (Some(12_000_000), Some(67_108_864), true)
        );
        // The reserve's refusal is counted as its own reason.
        m.observe_log_line("Dec 06 08:51:53 relay postfix/smtpd[6342]: NOQUEUE: reject: MAIL from unknown[127.0.0.2]: 452 4.3.1 Insufficient system storage; proto=ESMTP helo=<client.test>");
        assert_page(
            &m,
            &["smtp_relay_smtpd_rejects_total{code=\"452\",reason=\"storage\"} 1"],
            &[],
        );
    }

    #[test]
    fn the_queue_report_reads_what_encode_serves() {
        let dir = tempfile::tempdir().unwrap();
        for (queue, files) in [("deferred", 2), ("hold", 1), ("active", 1)] {
            let d = dir.path().join(queue).join("A");
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..files {
                std::fs::write(d.join(format!("q{i}")), "").unwrap();
            }
        }
        let m = Metrics::new(dir.path());
        let report = QueueReport::parse(&m.encode()).expect("a relay's page");
        let now = unix_seconds(std::time::SystemTime::now()) as u64;
        assert!(
            (now - 60..=now).contains(&report.oldest_timestamp),
            "{report:?}"
        );
        assert_eq!(
            report,
            QueueReport {
                draining: false,
                queued: 4,
                deferred: 2,
                hold: 1,
                seconds_since_delivery: 0,
                oldest_seconds: 0,
                oldest_timestamp: report.oldest_timestamp,
                last_delivery_timestamp: 0,
                relayhost_login: "unknown",
                oauth2_expiry_timestamp: 0,
                oauth2_failures: 0,
                oauth2_last_error: None,
                spool_free_bytes: report.spool_free_bytes,
                spool_size_bytes: report.spool_size_bytes,
                spool_nearly_full: false,
                config_revision: None,
                config_refused: None,
                delivery_problem: None,
                root_node_uid: None,
            }
        );
        // Root's UID on the node, the node's root included (issue 32).
        for uid in [0, 65_536, 2_465_529_856, u32::MAX] {
            m.set_root_node_uid(Some(uid));
            assert_eq!(
                QueueReport::parse(&m.encode()).unwrap().root_node_uid,
                Some(uid)
            );
        }
        // An OAuth2 login failing twice, then working: the page says so, then forgets the error.
        m.oauth2_refreshed(Some("invalid_grant"));
        m.oauth2_refreshed(Some("invalid_client"));
        let failing = QueueReport::parse(&m.encode()).unwrap();
        assert_eq!(
            (
                failing.oauth2_failures,
                failing.oauth2_last_error.as_deref()
            ),
            (2, Some("invalid_client"))
        );
        m.oauth2_refreshed(None);
        let working = QueueReport::parse(&m.encode()).unwrap();
        assert_eq!(
            (working.oauth2_failures, working.oauth2_last_error),
            (0, None)
        );
        m.draining.set(1);
        assert!(QueueReport::parse(&m.encode()).is_some_and(|r| r.draining));
        // The oldest message's age is its time record's, whatever the file's times say.
        let hour_ago = unix_seconds(std::time::SystemTime::now()) - 3600;
        let time = format!("{hour_ago} 414319");
        let mut queue_file = b"C\x05    1".to_vec();
        queue_file.push(b'T');
        queue_file.push(time.len() as u8);
        queue_file.extend(time.as_bytes());
        queue_file.extend(b"A\x02ab");
        std::fs::write(dir.path().join("deferred/A/q1"), queue_file).unwrap();
        // A second ago's walk still answers...
        assert_eq!(QueueReport::parse(&m.encode()).unwrap().oldest_seconds, 0);
        // ...until it is a second old.
        m.forget_spool_walk();
        let report = QueueReport::parse(&m.encode()).unwrap();
        assert!((3600..3700).contains(&report.oldest_seconds), "{report:?}");
        assert!(
            (now - 3700..now - 3500).contains(&report.oldest_timestamp),
            "{report:?}"
        );
        assert_eq!(QueueReport::parse("other_metric 1\n"), None);
    }

    /// Issue 24: the running revision and a refusal are on the page, and the operator reads
    /// them back whatever the error says: quotes, backslashes, line breaks, braces, commas.
    #[test]
    fn the_queue_report_reads_the_revision_and_a_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::new(dir.path());
        let report = QueueReport::parse(&m.encode()).unwrap();
        assert_eq!(
            (report.config_revision, report.config_refused),
            (None, None)
        );
        assert_page(
            &m,
            &["smtp_relay_self_check_failures_total 0"],
            &["config_revision_info{"],
        );

        m.set_config_revision(Some("0123456789abcdef"));
        let error = r#"smtpd: warning: hash:/etc/postfix/a "b" \c\ is unavailable. x} 1, y="z",
next"#;
        m.set_config_refused(Some(("fedcba", error)));
        let page = m.encode();
        assert!(
            page.contains("smtp_relay_config_revision_info{revision=\"0123456789abcdef\"} 1"),
            "{page}"
        );
        let report = QueueReport::parse(&page).unwrap();
        assert_eq!(report.config_revision.as_deref(), Some("0123456789abcdef"));
        assert_eq!(
            report.config_refused,
            Some(ConfigRefusal {
                revision: "fedcba".into(),
                // The line break became a space on the way in: a label holds one line.
                error: error.replace('\n', " "),
            })
        );
        // The escapes of the text format, read back.
        let parsed = QueueReport::parse(concat!(
            "smtp_relay_queue_messages{queue=\"hold\"} 0\n",
            r#"smtp_relay_config_refused_info{revision="b",error="a \"q\" \\ back\nslash"} 1"#,
            "\n",
        ))
        .unwrap();
        assert_eq!(
            parsed.config_refused.map(|r| r.error).as_deref(),
            Some("a \"q\" \\ back\nslash")
        );
        // A refusal cleared, a revision unknown again: neither is read.
        m.set_config_refused(None);
        m.set_config_revision(None);
        let report = QueueReport::parse(&m.encode()).unwrap();
        assert_eq!(
            (report.config_revision, report.config_refused),
            (None, None)
        );
        // Labels not in the text format's form are not read.
        for labels in [
            "revision=\"a\"",
            "revision=\"a\"} x",
            "re vision=\"a\",error=\"b\"}",
            "revision=\"a\",error=\"b",
        ] {
            assert_eq!(label_values(labels), None, "{labels}");
        }
        assert_eq!(
            label_values("a=\"1\",b_2=\"x\\\\y\"}").map(|l| l.into_iter().collect::<Vec<_>>()),
            Some(vec![
                ("a".into(), "1".into()),
                ("b_2".into(), "x\\y".into())
            ])
        );
    }

    /// Only Postfix's words about its own configuration are a config problem; what a client
    /// sends, which Postfix quotes in its log, never is.
    #[test]
    fn config_problems_are_postfixs_words_only() {
        let problem = |line: &str| {
            let (program, message) = postfix_program(line)?;
            config_problem(program, message)
        };
        let prefix = "Dec  6 08:50:44 relay postfix/smtpd[6347]: ";
        for (message, expected) in [
            (
                "warning: hash:/etc/postfix/missing is unavailable. open database /etc/postfix/missing.db: No such file or directory",
                true,
            ),
            ("warning: unknown smtpd restriction: \"bogus_check\"", true),
            ("warning: problem talking to server private/policy: Connection refused", true),
            ("fatal: bad numerical configuration: smtpd_timeout = x", true),
            ("fatal: open /etc/postfix/main.cf: No such file or directory", true),
            ("panic: myfree: corrupt or unallocated memory block", true),
            // A table lookup that failed names the key a client sent: not read.
            ("warning: hash:/etc/postfix/missing lookup error for \"fatal: x is unavailable\"", false),
            // Client text after Postfix's words.
            ("warning: non-SMTP command from unknown[127.0.0.3]: fatal: hash:x is unavailable", false),
            ("warning: unknown[127.0.0.3]: SASL PLAIN authentication failed: hash:x is unavailable", false),
            ("warning: hostname a:b does not resolve to address 127.0.0.3", false),
            ("connect from unknown[127.0.0.3]", false),
            ("NOQUEUE: reject: RCPT from unknown[127.0.0.3]: 451 4.3.5 Server configuration error; from=<fatal: x> to=<postmaster@example.net> proto=ESMTP helo=<y>", false),
            ("warning: database /etc/postfix/access.db is older than source file /etc/postfix/access", false),
        ] {
            let line = format!("{prefix}{message}");
            assert_eq!(problem(&line).is_some(), expected, "{line}");
            if expected {
                assert_eq!(problem(&line).unwrap(), format!("smtpd: {message}"));
            }
        }
        // Not a Postfix line at all.
        assert_eq!(problem("fatal: hash:x is unavailable"), None);
        // Cut at PROBLEM_LINE_MAX, on a character boundary.
        let long = format!("{prefix}fatal: {}", "é".repeat(400));
        let kept = problem(&long).unwrap();
        assert!(
            kept.len() <= PROBLEM_LINE_MAX && kept.len() > PROBLEM_LINE_MAX - 2,
            "{}",
            kept.len()
        );
    }

    /// The self-check's view of the log: the first problem since the mark, and the master's
    /// reloads.
    #[test]
    fn the_log_watch_keeps_the_first_problem_since_the_mark() {
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::new(dir.path());
        let line = |program: &str, message: &str| {
            m.observe_log_line(&format!(
                "Dec  6 08:50:44 relay postfix/{program}[12]: {message}"
            ));
        };
        line("smtpd", "fatal: before the mark");
        let mark = m.mark_log();
        assert_eq!(m.config_problem(), None);
        assert!(!m.reloaded_since(mark));
        line(
            "master",
            "reload -- version 3.7.11, configuration /etc/postfix",
        );
        // Postfix 3.7 says `error: open database` first; the line naming the table wins.
        line(
            "smtpd",
            "error: open database /a.db: No such file or directory",
        );
        assert_eq!(
            m.config_problem().as_deref(),
            Some("smtpd: error: open database /a.db: No such file or directory")
        );
        line("smtpd", "warning: hash:/a is unavailable. first");
        line("smtpd", "warning: hash:/b is unavailable. second");
        line("smtpd", "fatal: third");
        assert!(m.reloaded_since(mark));
        assert_eq!(
            m.config_problem().as_deref(),
            Some("smtpd: warning: hash:/a is unavailable. first")
        );
        let mark = m.mark_log();
        assert!(!m.reloaded_since(mark));
        assert_eq!(m.config_problem(), None);
    }

    #[test]
    fn a_relayhost_that_did_not_prove_its_name_is_unverified_not_refused() {
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::new(dir.path());
        m.set_logs_in(true);
        m.observe_log_line("Nov 25 02:30:01 relay postfix/smtp[13]: 4XYZ: to=<a@example.net>, relay=mx.example.net[10.0.0.5]:587, delay=0.1, delays=0.1/0/0/0, dsn=4.7.5, status=deferred (Server certificate not verified)");
        assert_eq!(
            QueueReport::parse(&m.encode()).unwrap().relayhost_login,
            "unverified"
        );
        // The server's own answer cannot say so: it is not Postfix's word.
        let m = Metrics::new(dir.path());
        m.set_logs_in(true);
        m.observe_log_line("Nov 25 02:30:01 relay postfix/smtp[13]: 4XYZ: to=<a@example.net>, relay=mx.example.net[10.0.0.5]:587, delay=0.1, delays=0.1/0/0/0, dsn=4.0.0, status=deferred (host mx.example.net[10.0.0.5] said: 421 TLS certificate not verified (in reply to MAIL FROM command))");
        assert_eq!(
            QueueReport::parse(&m.encode()).unwrap().relayhost_login,
            "unknown"
        );
    }

    /// Issue 39: why mail does not reach the relayhost, in Postfix's words and without what a
    /// client wrote, from the failed attempt until the next delivery; the operator reads it.
    #[test]
    fn the_delivery_problem_stands_until_mail_gets_through() {
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::new(dir.path());
        let attempt = |status: &str| {
            m.observe_log_line(&format!("Nov 25 02:30:01 relay postfix/smtp[13]: 4XYZ: to=<evil@x.org>, relay=mx.example.net[10.0.0.5]:587, delay=0.1, delays=0.1/0/0/0, dsn=4.0.0, status={status}"));
        };
        let problem = || QueueReport::parse(&m.encode()).unwrap().delivery_problem;
        assert_eq!(problem(), None);
        attempt("deferred (connect to mx.example.net[10.0.0.5]:587: Connection refused)");
        assert_eq!(
            problem(),
            Some(DeliveryProblem {
                reason: "connect".into(),
                detail: "connect to mx.example.net[10.0.0.5]:587: Connection refused".into(),
            })
        );
        // The relayhost's reply quotes the recipient a client chose: only its codes and the
        // command are kept.
        attempt("deferred (host mx.example.net[10.0.0.5] said: 452 4.2.2 <inj\"ected@x.org>: Mailbox full (in reply to RCPT TO command))");
        let p = problem().unwrap();
        assert_eq!(p.reason, "refused");
        assert_eq!(
            p.detail,
            "the relayhost answered 452 4.2.2 (in reply to RCPT TO command)"
        );
        attempt("deferred (SASL authentication failed; server mx.example.net[10.0.0.5] said: 535 5.7.8 Error: authentication failed: <x@y>)");
        assert_eq!(
            problem().unwrap().detail,
            "SASL authentication failed; server mx.example.net[10.0.0.5]"
        );
        attempt("deferred (mail for evil.example loops back to myself)");
        assert_eq!(
            problem().unwrap(),
            DeliveryProblem {
                reason: "other".into(),
                detail: String::new()
            }
        );
        attempt("sent (250 2.0.0 Ok: queued as 5F)");
        assert_eq!(problem(), None, "gone with the next delivery");
        assert!(!m.encode().contains("evil"), "nothing a client wrote");
    }

    #[test]
    fn counts_from_log_lines() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("deferred/A")).unwrap();
        std::fs::write(dir.path().join("deferred/A/ABC123"), "").unwrap();
        let m = Metrics::new(dir.path());
        m.set_logs_in(true);
        m.observe_log_line(
            "Nov 25 02:30:00 relay postfix/smtpd[12]: connect from unknown[127.0.0.3]",
        );
        m.observe_log_line("Nov 25 02:30:00 relay postfix/smtpd[12]: NOQUEUE: reject: RCPT from unknown[127.0.0.3]: 554 5.7.1 <a@b.c>: Relay access denied; from=<x@example.net> to=<a@b.c> proto=ESMTP helo=<t>");
        m.observe_log_line("Nov 25 02:30:01 relay postfix/smtp[13]: 4XYZ: to=<a@example.net>, relay=127.0.0.1[127.0.0.1]:2526, delay=0.1, delays=0.1/0/0/0, dsn=2.0.0, status=sent (250 Ok)");
        m.observe_log_line("Nov 25 02:30:01 relay postfix/relay[13]: 4XYZ: to=<b@example.net>, relay=none, delay=0.1, delays=0.1/0/0/0, dsn=4.4.1, status=deferred (connect to 127.0.0.1[127.0.0.1]:2526: Connection refused)");
        m.observe_log_line("Nov 25 02:30:02 relay postfix/smtpd[12]: warning: unknown[127.0.0.3]: SASL PLAIN authentication failed: authentication failure");
        m.observe_log_line("Nov 25 02:30:03 relay postfix/smtp[14]: 5ABC: to=<c@example.net>, relay=up[127.0.0.1]:2526, conn_use=2, delay=0.2, delays=0.1/0/0/0.1, dsn=5.1.1, status=bounced (host up[127.0.0.1] said: 550 5.1.1 no such user (in reply to RCPT TO command))");
        m.observe_log_line("Nov 25 02:30:04 relay postfix/smtpd[12]: NOQUEUE: reject: RCPT from unknown[127.0.0.3]: 450 4.7.1 <x>: Helo command rejected: Host not found; from=<> to=<a@b.c> proto=ESMTP helo=<x>");
        assert!(m
            .encode()
            .contains("smtp_relay_relayhost_login{state=\"accepted\"} 1"));
        m.observe_log_line("Nov 25 02:30:05 relay postfix/smtp[14]: 6ABC: to=<d@example.net>, relay=up[127.0.0.1]:2526, delay=0.2, delays=0.1/0/0/0.1, dsn=4.7.8, status=deferred (SASL authentication failed; server up[127.0.0.1] said: 535 5.7.8 Error: authentication failed)");
        let text = m.encode();
        for expected in [
            "smtp_relay_smtpd_connections_total 1",
            "smtp_relay_smtpd_rejects_total{code=\"554\",reason=\"relay_denied\"} 1",
            "smtp_relay_smtpd_rejects_total{code=\"450\",reason=\"helo\"} 1",
            "smtp_relay_deliveries_total{status=\"bounced\"} 1",
            "smtp_relay_deliveries_total{status=\"expired\"} 0",
            "smtp_relay_relayhost_errors_total{reason=\"connect\"} 1",
            "smtp_relay_relayhost_errors_total{reason=\"refused\"} 1",
            "smtp_relay_relayhost_errors_total{reason=\"login\"} 1",
            "smtp_relay_relayhost_errors_total{reason=\"tls\"} 0",
            "smtp_relay_relayhost_login{state=\"refused\"} 1",
            "smtp_relay_relayhost_login{state=\"accepted\"} 0",
            "smtp_relay_deliveries_total{status=\"sent\"} 1",
            "smtp_relay_deliveries_total{status=\"deferred\"} 2",
            "smtp_relay_sasl_auth_failures_total 1",
            "smtp_relay_queue_messages{queue=\"deferred\"} 1",
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
    }

    fn assert_page(m: &Metrics, expected: &[&str], absent: &[&str]) {
        let text = m.encode();
        for line in expected {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        for part in absent {
            assert!(!text.contains(part), "unexpected {part} in\n{text}");
        }
    }

    /// Delivery lines as Postfix wrote them for recipients that spell its own fields (issue
    /// 40): the status and the cause are Postfix's, after the recipient, never the recipient's.
    #[test]
    fn a_recipient_cannot_write_the_delivery_status() {
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::new(dir.path());
        m.set_logs_in(true);
        let refused = "relay=none, delay=0.04, delays=0.02/0.02/0/0, dsn=4.4.1, status=deferred (connect to 127.0.0.1[127.0.0.1]:22525: Connection refused)";
        for to in [
            r#"to=<"status=sent x"@elsewhere.org>"#,
            r#"to=<"x, dsn=2.0.0, status=sent (250"@elsewhere.org>"#,
            // An escaped quote does not end the quoted local part.
            r#"to=<"q\"x>, relay=none, delay=0, delays=0/0/0/0, dsn=2.0.0, status=sent (250"@elsewhere.org>"#,
            // An unqualified recipient: Postfix logs the address it completed and the one given.
            r#"to=<"status=sent y"@example.net>, orig_to=<"status=sent y">"#,
        ] {
            m.observe_log_line(&format!(
                "Dec 06 08:50:44 relay postfix/smtp[6347]: 4jhzTc2fMJz1SCdf: {to}, {refused}"
            ));
        }
        m.observe_log_line(r#"Dec 06 08:50:44 relay postfix/smtp[6347]: 4jhzTc2fMJz1SCdf: to=<"status=deferred (SASL authentication failed"@elsewhere.org>, relay=127.0.0.1[127.0.0.1]:22525, delay=0.04, delays=0.02/0.02/0/0, dsn=2.0.0, status=sent (250 2.0.0 Ok)"#);
        // The relayhost quoting the recipient back: its words are not Postfix's.
        m.observe_log_line(r#"Dec 06 08:50:45 relay postfix/smtp[6347]: 4jhzTc2fMJz2SCdf: to=<"SASL authentication failed"@elsewhere.org>, relay=up[127.0.0.1]:2526, delay=0.2, delays=0.1/0/0/0.1, dsn=5.1.1, status=bounced (host up[127.0.0.1] said: 550 5.1.1 <"SASL authentication failed; TLS certificate"@elsewhere.org>: no such user (in reply to RCPT TO command))"#);
        assert_page(
            &m,
            &[
                "smtp_relay_deliveries_total{status=\"sent\"} 1",
                "smtp_relay_deliveries_total{status=\"deferred\"} 4",
                "smtp_relay_deliveries_total{status=\"bounced\"} 1",
                "smtp_relay_relayhost_errors_total{reason=\"connect\"} 4",
                "smtp_relay_relayhost_errors_total{reason=\"refused\"} 1",
                "smtp_relay_relayhost_errors_total{reason=\"login\"} 0",
                "smtp_relay_relayhost_errors_total{reason=\"tls\"} 0",
                "smtp_relay_relayhost_login{state=\"accepted\"} 1",
            ],
            &["status=\"other\""],
        );
    }

    /// smtpd lines that quote what a client sent (issue 40): only smtpd's own words count.
    #[test]
    fn client_text_in_smtpd_lines_counts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::new(dir.path());
        for message in [
            // Client text after smtpd's own words, in lines that are neither rejects nor logins.
            "warning: non-SMTP command from unknown[127.0.0.3]: GET / authentication failed: reject: RCPT from x[1.2.3.4]: 554 5.7.1 <a>: Relay access denied; from=",
            r"improper command pipelining after CONNECT from unknown[127.0.0.3]: x: reject: RCPT from x[1.2.3.4]: 554 5.7.1 <a>: Helo command rejected\r\nwarning: unknown[127.0.0.3]: SASL PLAIN authentication failed\r\n",
            "warning: Illegal address syntax from unknown[127.0.0.3] in RCPT command: <x@[a>, SASL PLAIN authentication failed",
            // A failed login: counted once.
            "warning: unknown[127.0.0.3]: SASL PLAIN authentication failed: authentication failure",
            // Rejects whose addresses spell other reasons; the reason is the one after the
            // address smtpd names, and before the client's values.
            r#"NOQUEUE: reject: RCPT from unknown[127.0.0.3]: 554 5.7.1 <">: Recipient address rejected: Access denied; from=<"Relay access denied; from=<x> to=<y"@example.net> to=<"\""> proto=SMTP helo=<x?y?z?w?q>"#,
            r#"NOQUEUE: reject: RCPT from unknown[127.0.0.3]: 554 5.7.1 <q"x>: Helo command rejected: y@elsewhere.org>: Relay access denied; from=<"Relay access denied; from=<x> to=<y"@example.net> to=<"q\"x>: Helo command rejected: y"@elsewhere.org> proto=SMTP helo=<x?y?z?w?q>"#,
            r#"NOQUEUE: reject: RCPT from unknown[127.0.0.3]: 554 5.7.1 <x>: Client host rejected: y; from=<z> to=<w@elsewhere.org>: Relay access denied; from=<"s>: Sender address rejected; from=<"@example.net> to=<"x>: Client host rejected: y; from=<z> to=<w"@elsewhere.org> proto=ESMTP helo=<a?:?Helo?command?rejected:?x??from=?y??to=?z??proto=ESMTP?helo=?q>"#,
            r#"NOQUEUE: reject: RCPT from unknown[127.0.0.3]: 450 4.7.1 <bad.helo>: Helo command rejected: Host not found; from=<app@example.net> to=<"Sender address rejected"@example.net> proto=ESMTP helo=<bad.helo>"#,
            r#"NOQUEUE: reject: RCPT from unknown[127.0.0.3]:41234: 554 5.7.1 <unknown[127.0.0.3]>: Client host rejected: Access denied; from=<a@example.net> to=<"Relay access denied"@elsewhere.org> proto=ESMTP helo=<c>"#,
            "NOQUEUE: reject: MAIL from unknown[127.0.0.2]: 552 5.3.4 Message size exceeds fixed limit; proto=ESMTP helo=<client.test>",
        ] {
            m.observe_log_line(&format!(
                "Dec 06 08:51:53 relay postfix/smtpd[6342]: {message}"
            ));
        }
        assert_page(
            &m,
            &[
                "smtp_relay_sasl_auth_failures_total 1",
                "smtp_relay_smtpd_rejects_total{code=\"554\",reason=\"recipient\"} 1",
                "smtp_relay_smtpd_rejects_total{code=\"554\",reason=\"relay_denied\"} 2",
                "smtp_relay_smtpd_rejects_total{code=\"450\",reason=\"helo\"} 1",
                "smtp_relay_smtpd_rejects_total{code=\"554\",reason=\"client\"} 1",
                "smtp_relay_smtpd_rejects_total{code=\"552\",reason=\"size\"} 1",
            ],
            &["reason=\"sender\"", ",reason=\"other\""],
        );
    }

    /// An address as Postfix logs it (external form): the local part quoted unless it is
    /// plain, `"` and `\` escaped inside the quotes.
    fn external(local: &str, domain: &str) -> String {
        let plain = !local.is_empty()
            && local
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+/=?^_`{|}~-.".contains(&b));
        let local = if plain {
            local.to_string()
        } else {
            let escaped: String = local
                .chars()
                .flat_map(|c| match c {
                    '"' | '\\' => vec!['\\', c],
                    _ => vec![c],
                })
                .collect();
            format!("\"{escaped}\"")
        };
        if domain.is_empty() {
            local
        } else {
            format!("{local}@{domain}")
        }
    }

    /// Local parts made of Postfix's own words and delimiters, deterministically shuffled.
    fn hostile_local_parts() -> Vec<String> {
        const PIECES: [&str; 24] = [
            "status=sent",
            "status=deferred (",
            "SASL authentication failed",
            ", dsn=2.0.0, ",
            ", relay=none",
            ", orig_to=<",
            ">",
            "<",
            "\"",
            "\\",
            ";",
            " from=<",
            " to=<",
            " proto=ESMTP",
            " helo=<",
            ">: ",
            "Relay access denied",
            "Sender address rejected",
            "Helo command rejected",
            "a",
            "@",
            " ",
            "(",
            ")",
        ];
        let mut seed: u64 = 40;
        let mut next = move |n: usize| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((seed >> 33) as usize) % n
        };
        let mut parts: Vec<String> = PIECES.iter().map(|p| p.to_string()).collect();
        for _ in 0..2000 {
            let n = 1 + next(8);
            parts.push((0..n).map(|_| PIECES[next(PIECES.len())]).collect());
        }
        parts
    }

    #[test]
    fn hostile_addresses_are_stepped_over_both_ways() {
        for local in hostile_local_parts() {
            for domain in ["elsewhere.org", "[127.0.0.9]", ""] {
                let logged = external(&local, domain);
                let line = format!("to=<{logged}>, relay=none");
                assert_eq!(address_end(&line[4..]), Some(logged.len() + 1), "{line}");
                let tail = format!("reply; from=<{logged}>");
                assert_eq!(address_start(&tail), Some(12), "{tail}");
                let internal = if domain.is_empty() {
                    local.clone()
                } else {
                    format!("{local}@{domain}")
                };
                assert_eq!(unquoted(&logged), internal, "{logged}");
            }
            let rcpt = external(&local, "elsewhere.org");
            let sender = external(&format!("{local}x"), "example.net");
            let delivery_line = format!(
                "Dec  6 08:50:44 relay postfix/smtp[6347]: 4jhzTc2fMJz1SCdf: to=<{rcpt}>, orig_to=<{sender}>, relay=none, delay=0.04, delays=0.02/0.02/0/0, dsn=4.4.1, status=deferred (connect to 127.0.0.1[127.0.0.1]:25: Connection refused)"
            );
            let message = postfix_program(&delivery_line).unwrap().1;
            assert_eq!(
                delivery(message).map(|d| (d.status, d.why)),
                Some((
                    "deferred",
                    "connect to 127.0.0.1[127.0.0.1]:25: Connection refused"
                )),
                "{delivery_line}"
            );
            for (named, reason, expected) in [
                (
                    format!("{local}@elsewhere.org"),
                    "Relay access denied",
                    "relay_denied",
                ),
                (
                    format!("{local}x@example.net"),
                    "Sender address rejected: not owned",
                    "sender",
                ),
                (
                    "h?e:l=o".to_string(),
                    "Helo command rejected: Host not found",
                    "helo",
                ),
                (
                    "unknown[127.0.0.3]".to_string(),
                    "Client host rejected: Access denied",
                    "client",
                ),
            ] {
                let message = format!("NOQUEUE: reject: RCPT from unknown[127.0.0.3]: 554 5.7.1 <{named}>: {reason}; from=<{sender}> to=<{rcpt}> proto=ESMTP helo=<h?e:l=o>");
                assert_eq!(reject(&message), Some(("554", expected)), "{message}");
            }
        }
    }

    /// The log pump takes any bytes (issue 40): a line that is not UTF-8 and a line too long
    /// to read whole stop nothing, and the rest of a cut line is never read as a line.
    #[tokio::test]
    async fn the_log_pump_survives_any_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::new(dir.path());
        let sent = |id: &str| {
            format!("Dec  6 08:53:56 relay postfix/smtp[11]: {id}: to=<a@elsewhere.org>, relay=127.0.0.1[127.0.0.1]:25, delay=0.1, delays=0.1/0/0/0, dsn=2.0.0, status=sent (250 2.0.0 Ok)")
        };
        let mut log = Vec::new();
        log.extend(sent("A1").as_bytes());
        log.push(b'\n');
        log.extend(b"Dec  6 08:53:56 relay postfix/cleanup[12]: B1: warning: header Subject: bad \xc2\x80\x80 \xff\xfe end from unknown[127.0.0.2]; from=<a@example.net> to=<okk@elsewhere.org> proto=ESMTP helo=<x>\n");
        // Past the cut, a line of its own would count a delivery: it is skipped.
        log.extend(vec![b'x'; LOG_LINE_MAX]);
        log.extend(sent("FAKE").as_bytes());
        log.push(b'\n');
        log.extend(sent("C1").as_bytes());
        log.extend(b"\r\n");
        // The last line, without its newline when the pipe closes.
        log.extend(sent("D1").as_bytes());
        let mut echo = Vec::new();
        let reader = tokio::io::BufReader::with_capacity(13, &log[..]);
        m.follow_log(reader, &mut echo).await.unwrap();
        assert_page(&m, &["smtp_relay_deliveries_total{status=\"sent\"} 3"], &[]);
        let echo = String::from_utf8(echo).expect("the echo is UTF-8");
        let lines: Vec<&str> = echo.lines().collect();
        assert_eq!(lines.len(), 5, "{echo:.300}");
        assert!(
            lines[1].contains("bad \u{80}\u{fffd} \u{fffd}\u{fffd} end"),
            "{}",
            lines[1]
        );
        assert!(lines[2].ends_with("xxx [cut at 65536 bytes]"));
        assert!(lines[2].len() < LOG_LINE_MAX + 100);
        assert_eq!(lines[3], sent("C1"));
        assert_eq!(lines[4], sent("D1"));
    }
}
