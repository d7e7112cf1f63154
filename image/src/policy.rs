//! The relay's own policy service: limits per SASL user. smtpd asks it about each recipient
//! (`check_policy_service`, Postfix's policy delegation protocol, SMTPD_POLICY_README) over a
//! unix socket in a directory of root's in the spool ([`crate::postfix::layout::POLICY_SOCKET`]),
//! and it answers `DUNNO`, or a 4xx when the logged-in user is over a limit: the client retries
//! later, nothing bounces. Anonymous clients are not its business (`DUNNO`).
//!
//! Counts live in this process: each replica counts on its own (a user whose sessions the
//! Service spreads over N replicas may send up to N times a limit), and a restart starts them
//! afresh. A window per user opens at its first counted recipient and lasts the interval, as
//! Postfix's anvil counts clients. smtpd keeps one connection to the service per process, and a
//! process serves one SMTP session at a time, so a session and a message are told apart on
//! that connection alone: a new client address and port is a new session (a connection, in
//! the limits' words), a new `instance` a new message. Only what is let through is counted:
//! a recipient told to retry later costs nothing.
//!
//! Bounded: a request of at most [`REQUEST_MAX`] bytes, [`CONNECTIONS_MAX`] connections (more
//! wait to be accepted), a connection idle for [`IDLE`] closed (smtpd closes its own after
//! 300 s), at most [`USERS_MAX`] users counted at once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};

use crate::metrics::{Metrics, UserLimitLabels};
use crate::settings::Limits;

/// The longest request read, in bytes (smtpd's are a few hundred; a client certificate's
/// names make them longer).
pub const REQUEST_MAX: usize = 64 * 1024;
/// Connections served at once; smtpd opens one per process.
pub const CONNECTIONS_MAX: usize = 1024;
/// A connection without a request for this long is closed.
pub const IDLE: Duration = Duration::from_secs(600);
/// Users counted at once. Users are the SASL users of the relay, so this is reached only by
/// thousands of them within one interval; a user beyond it is told to retry later.
pub const USERS_MAX: usize = 10_000;

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Connections,
    Messages,
    Recipients,
}

impl Limit {
    const ALL: [Limit; 3] = [Limit::Connections, Limit::Messages, Limit::Recipients];

    /// Its name in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Limit::Connections => "connections",
            Limit::Messages => "messages",
            Limit::Recipients => "recipients",
        }
    }

    /// What it counts, as the client is told: a "connection" is a session in which the user
    /// names a recipient.
    fn counted(self) -> &'static str {
        match self {
            Limit::Connections => "sessions",
            Limit::Messages | Limit::Recipients => self.name(),
        }
    }

    fn of(self, limits: &Limits) -> Option<u32> {
        match self {
            Limit::Connections => limits.connections,
            Limit::Messages => limits.messages,
            Limit::Recipients => limits.recipients,
        }
    }
}

/// The answer to one recipient of a logged-in user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within its limits (or there are none): counted.
    Pass,
    /// This limit is reached: retry later. `first` is the first refusal of its window.
    Over { limit: Limit, first: bool },
    /// [`USERS_MAX`] users are counted already.
    Full,
}

/// One user's counts in its current window.
#[derive(Debug)]
struct Window {
    opened: Instant,
    counts: [u32; 3],
    /// Which limits were reported in this window already (logged once per window).
    reported: [bool; 3],
}

/// The counts of every user, and the limits they are held to.
#[derive(Debug, Default)]
pub struct Limiter {
    limits: Option<Limits>,
    /// Users live in the relay domain's realm and log in as `user` or `user@realm`: one count.
    realm: String,
    windows: HashMap<String, Window>,
}

impl Limiter {
    /// Follows the settings in force: new limits apply to the open windows.
    pub fn set(&mut self, limits: Option<Limits>, realm: &str) {
        self.limits = limits;
        realm.clone_into(&mut self.realm);
        if limits.is_none() {
            self.windows.clear();
        }
    }

    /// The name `login` is counted under: without the realm.
    pub fn user<'a>(&self, login: &'a str) -> &'a str {
        crate::settings::user_of_login(login, &self.realm)
    }

    /// Counts a recipient of `user` at `now`, the first of a session (`new_session`) or of a
    /// message (`new_message`), unless that would pass a limit.
    pub fn check(
        &mut self,
        now: Instant,
        user: &str,
        new_session: bool,
        new_message: bool,
    ) -> Verdict {
        let Some(limits) = self.limits else {
            return Verdict::Pass;
        };
        let interval = Duration::from_secs(u64::from(limits.interval_secs));
        if !self.windows.contains_key(user) && self.windows.len() >= USERS_MAX {
            self.windows
                .retain(|_, w| now.saturating_duration_since(w.opened) < interval);
            if self.windows.len() >= USERS_MAX {
                return Verdict::Full;
            }
        }
        let window = self
            .windows
            .entry(user.to_string())
            .or_insert_with(|| Window {
                opened: now,
                counts: [0; 3],
                reported: [false; 3],
            });
        if now.saturating_duration_since(window.opened) >= interval {
            *window = Window {
                opened: now,
                counts: [0; 3],
                reported: [false; 3],
            };
        }
        let adds = [u32::from(new_session), u32::from(new_message), 1];
        for (i, limit) in Limit::ALL.into_iter().enumerate() {
            let Some(max) = limit.of(&limits) else {
                continue;
            };
            if adds[i] > 0 && window.counts[i] >= max {
                let first = !window.reported[i];
                window.reported[i] = true;
                return Verdict::Over { limit, first };
            }
        }
        for (count, add) in window.counts.iter_mut().zip(adds) {
            *count = count.saturating_add(add);
        }
        Verdict::Pass
    }
}

/// The limiter, shared by the connections and the supervisor that follows the settings.
pub type SharedLimiter = Arc<Mutex<Limiter>>;

/// What one connection last let through: the session (client address and port) and message
/// (`instance`) counted.
#[derive(Debug, Default)]
struct Counted {
    session: Option<String>,
    instance: Option<String>,
}

/// One request's attributes that matter here.
#[derive(Debug, Default, PartialEq, Eq)]
struct Request {
    request: String,
    protocol_state: String,
    sasl_username: String,
    client_address: String,
    client_port: String,
    instance: String,
}

impl Request {
    /// Reads `name=value` lines; other attributes are skipped.
    fn from_lines(text: &str) -> Request {
        let mut r = Request::default();
        for line in text.lines() {
            let Some((name, value)) = line.split_once('=') else {
                continue;
            };
            let slot = match name {
                "request" => &mut r.request,
                "protocol_state" => &mut r.protocol_state,
                "sasl_username" => &mut r.sasl_username,
                "client_address" => &mut r.client_address,
                "client_port" => &mut r.client_port,
                "instance" => &mut r.instance,
                _ => continue,
            };
            value.clone_into(slot);
        }
        r
    }
}

/// The answer to a request (the `action=` line's value), counting it when it is a recipient
/// of a logged-in user.
fn answer(
    request: &Request,
    counted: &mut Counted,
    limiter: &SharedLimiter,
    metrics: &Metrics,
    now: Instant,
) -> String {
    const DUNNO: &str = "DUNNO";
    if request.request != "smtpd_access_policy"
        || request.protocol_state != "RCPT"
        || request.sasl_username.is_empty()
    {
        return DUNNO.into();
    }
    let session = format!("{} {}", request.client_address, request.client_port);
    let new_session = counted.session.as_deref() != Some(session.as_str());
    let new_message = new_session || counted.instance.as_deref() != Some(&request.instance);
    let mut limiter = limiter.lock().unwrap_or_else(|e| e.into_inner());
    let user = limiter.user(&request.sasl_username).to_string();
    let verdict = limiter.check(now, &user, new_session, new_message);
    let limits = limiter.limits;
    drop(limiter);
    match (verdict, limits) {
        (Verdict::Pass, _) => {
            counted.session = Some(session);
            counted.instance = Some(request.instance.clone());
            DUNNO.into()
        }
        (Verdict::Over { limit, first }, Some(limits)) => {
            let max = limit.of(&limits).unwrap_or_default();
            let per = limits.interval_secs;
            metrics
                .user_rate_limited
                .get_or_create(&UserLimitLabels {
                    user: user.clone(),
                    limit: limit.name().into(),
                })
                .inc();
            if first {
                tracing::warn!(%user, limit = limit.name(), max, per_seconds = per, "a SASL user reached a limit per user; its recipients are told to retry later until the interval ends");
            }
            let what = limit.counted();
            format!("450 4.7.1 limit per login reached: {max} {what} per {per} s; retry later")
        }
        (Verdict::Over { .. }, None) => DUNNO.into(),
        (Verdict::Full, _) => {
            tracing::warn!(%user, users = USERS_MAX, "too many SASL users are counted to count one more; it is told to retry later");
            "451 4.3.2 too many logins are being counted; retry later".into()
        }
    }
}

/// Serves smtpd's policy requests on `path` until the task is dropped.
pub async fn serve(path: PathBuf, limiter: SharedLimiter, metrics: Metrics) -> std::io::Result<()> {
    crate::local_socket::serve_bounded(&path, CONNECTIONS_MAX, "policy", |stream| {
        let (limiter, metrics) = (limiter.clone(), metrics.clone());
        async move { session(stream, &limiter, &metrics).await }
    })
    .await
}

/// One smtpd's connection: requests (attribute lines ending with an empty line), each
/// answered `action=...` and an empty line.
async fn session(
    stream: tokio::net::UnixStream,
    limiter: &SharedLimiter,
    metrics: &Metrics,
) -> std::io::Result<()> {
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let mut counted = Counted::default();
    let mut request = Vec::new();
    loop {
        request.clear();
        loop {
            let room = (REQUEST_MAX - request.len()) as u64;
            let mut bounded = (&mut reader).take(room);
            let read = bounded.read_until(b'\n', &mut request);
            let n = match tokio::time::timeout(IDLE, read).await {
                Ok(n) => n?,
                Err(_) => return Ok(()),
            };
            if n == 0 {
                if request.len() >= REQUEST_MAX {
                    return Err(std::io::Error::other("policy request too long"));
                }
                return Ok(());
            }
            if request.ends_with(b"\n\n") || request == b"\n" {
                break;
            }
        }
        let text = String::from_utf8_lossy(&request);
        let action = answer(
            &Request::from_lines(&text),
            &mut counted,
            limiter,
            metrics,
            Instant::now(),
        );
        writer
            .write_all(format!("action={action}\n\n").as_bytes())
            .await?;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn limits(connections: Option<u32>, messages: Option<u32>, recipients: Option<u32>) -> Limits {
        Limits {
            interval_secs: 60,
            connections,
            messages,
            recipients,
        }
    }

    fn limiter(l: Limits) -> Limiter {
        let mut limiter = Limiter::default();
        limiter.set(Some(l), "example.com");
        limiter
    }

    #[test]
    fn each_limit_counts_what_it_names_and_only_what_passes() {
        let t = Instant::now();
        let mut l = limiter(limits(None, Some(2), None));
        // A message to three recipients is one message.
        assert_eq!(l.check(t, "app", true, true), Verdict::Pass);
        assert_eq!(l.check(t, "app", false, false), Verdict::Pass);
        assert_eq!(l.check(t, "app", false, false), Verdict::Pass);
        assert_eq!(l.check(t, "app", false, true), Verdict::Pass);
        let over = Verdict::Over {
            limit: Limit::Messages,
            first: true,
        };
        assert_eq!(l.check(t, "app", false, true), over);
        assert_eq!(
            l.check(t, "app", true, true),
            Verdict::Over {
                limit: Limit::Messages,
                first: false
            }
        );
        // More recipients of a message already counted still pass; another user is apart.
        assert_eq!(l.check(t, "app", false, false), Verdict::Pass);
        assert_eq!(l.check(t, "other", true, true), Verdict::Pass);
        // The window ends after the interval.
        let later = t + Duration::from_secs(60);
        assert_eq!(l.check(later, "app", true, true), Verdict::Pass);

        let mut l = limiter(limits(Some(1), None, Some(3)));
        assert_eq!(l.check(t, "app", true, true), Verdict::Pass);
        assert_eq!(
            l.check(t, "app", true, true),
            Verdict::Over {
                limit: Limit::Connections,
                first: true
            }
        );
        assert_eq!(l.check(t, "app", false, true), Verdict::Pass);
        assert_eq!(l.check(t, "app", false, false), Verdict::Pass);
        assert_eq!(
            l.check(t, "app", false, false),
            Verdict::Over {
                limit: Limit::Recipients,
                first: true
            }
        );
    }

    #[test]
    fn a_login_with_the_realm_is_the_same_user() {
        let l = limiter(limits(None, Some(1), None));
        assert_eq!(l.user("app@Example.com"), "app");
        assert_eq!(l.user("app"), "app");
        assert_eq!(l.user("app@other.example"), "app@other.example");
    }

    #[test]
    fn users_beyond_the_most_counted_wait_until_windows_end() {
        let t = Instant::now();
        let mut l = limiter(limits(None, Some(5), None));
        for i in 0..USERS_MAX {
            assert_eq!(l.check(t, &format!("u{i}"), true, true), Verdict::Pass);
        }
        assert_eq!(l.check(t, "one-more", true, true), Verdict::Full);
        assert_eq!(l.check(t, "u7", true, true), Verdict::Pass);
        let later = t + Duration::from_secs(61);
        assert_eq!(l.check(later, "one-more", true, true), Verdict::Pass);
        assert_eq!(l.windows.len(), 1);
    }

    #[test]
    fn requests_are_read_by_their_attributes() {
        let r = Request::from_lines(
            "request=smtpd_access_policy\nprotocol_state=RCPT\nsasl_username=app\nclient_address=10.1.2.3\nclient_port=40000\ninstance=a1.b2.c3.0\nrecipient=x@y=z\n\n",
        );
        assert_eq!(
            r,
            Request {
                request: "smtpd_access_policy".into(),
                protocol_state: "RCPT".into(),
                sasl_username: "app".into(),
                client_address: "10.1.2.3".into(),
                client_port: "40000".into(),
                instance: "a1.b2.c3.0".into(),
            }
        );
    }

    #[test]
    fn anonymous_clients_and_other_states_are_not_counted() {
        let shared: SharedLimiter = Arc::new(Mutex::new(limiter(limits(None, Some(1), None))));
        let metrics = Metrics::new(std::path::Path::new("/nonexistent"));
        let mut counted = Counted::default();
        let t = Instant::now();
        let mut request = Request {
            request: "smtpd_access_policy".into(),
            protocol_state: "RCPT".into(),
            sasl_username: String::new(),
            client_address: "10.0.0.1".into(),
            client_port: "1".into(),
            instance: "i1".into(),
        };
        for _ in 0..3 {
            assert_eq!(
                answer(&request, &mut counted, &shared, &metrics, t),
                "DUNNO"
            );
        }
        request.sasl_username = "app@example.com".into();
        request.protocol_state = "DATA".into();
        assert_eq!(
            answer(&request, &mut counted, &shared, &metrics, t),
            "DUNNO"
        );
        request.protocol_state = "RCPT".into();
        assert_eq!(
            answer(&request, &mut counted, &shared, &metrics, t),
            "DUNNO"
        );
        // Same message, another recipient: passes; the next message does not.
        assert_eq!(
            answer(&request, &mut counted, &shared, &metrics, t),
            "DUNNO"
        );
        request.instance = "i2".into();
        let refused = answer(&request, &mut counted, &shared, &metrics, t);
        assert_eq!(
            refused,
            "450 4.7.1 limit per login reached: 1 messages per 60 s; retry later"
        );
        assert!(metrics
            .encode()
            .contains(r#"smtp_relay_user_rate_limited_total{user="app",limit="messages"} 1"#));
    }
}
