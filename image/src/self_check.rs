//! The self-check: after Postfix starts, and after every reload of a new configuration, one
//! real SMTP session against the local listener says whether smtpd can serve with that
//! configuration. `postfix check` and the relay's own checks read the files; they cannot see
//! what only a running smtpd finds: a lookup table that cannot be opened, a restriction it does
//! not know, a policy service that is not there. smtpd then answers `451 4.3.5 Server
//! configuration error` to every recipient, or dies on each connection, while the banner (all
//! the probes look at) stays fine.
//!
//! The session: banner, EHLO, `MAIL FROM:<>`, `RCPT TO:<postmaster@DOMAIN>`, RSET, QUIT; no
//! DATA, so nothing is ever queued. How each reply is judged: [`judge`].

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lettre::transport::smtp::client::{SmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;

/// How long one self-check may take, connecting included (a relay just started may need a
/// moment before it listens).
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The name the self-check gives in EHLO: a syntactically valid name that resolves nowhere
/// (`.invalid`), so it passes the syntax checks of HELO restrictions and is nobody's.
pub const HELO: &str = "self-check.smtp-relay.invalid";

/// How often a listener that refuses connections (not up yet) is tried again.
const RETRY: Duration = Duration::from_millis(100);

/// The steps of the session whose replies are judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The banner and the reply to EHLO.
    Greeting,
    Mail,
    Rcpt,
}

/// What a reply says of the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go on with the next step.
    Next,
    /// smtpd ran its restrictions and answered: the configuration serves.
    Passed,
    /// A temporary refusal that need not be the configuration's fault (greylisting, a full
    /// spool): it passes unless Postfix logged a problem with its configuration meanwhile
    /// (the caller reads the log).
    Deferred,
    /// smtpd cannot serve with this configuration.
    Failed,
}

/// A session that passed: served, or deferred (see [`Verdict::Deferred`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Passed {
    Served,
    Deferred { command: String, reply: String },
}

/// Judges the reply `code` (with `text`, the rest of its first line: `4.3.5 Server
/// configuration error`) to `step`.
///
/// - The banner and EHLO must be positive.
/// - To MAIL, a 2xx goes on; to RCPT, a 2xx passes.
/// - A 5xx to MAIL or RCPT passes: a policy answer (a restriction that rejects the null sender
///   or this recipient from this client), so the restrictions loaded and ran.
/// - A 4xx to MAIL or RCPT fails when it says that the server is unwell: 421 (closing), an
///   enhanced status code of class 4.3 (mail system: 4.3.5 `Server configuration error`, 4.3.0
///   `Temporary lookup failure` of a table) or none at all. 4.3.1 (`Insufficient system
///   storage`, the spool's reserve) is not a configuration's fault: a full spool must not turn
///   a good configuration into a refused one, nor stop a pod that holds mail. It and the other
///   4xx replies (4.1.x address verification, 4.7.x greylisting, an unknown client name, but
///   also a milter that does not answer) are [`Verdict::Deferred`]: the log tells them apart.
pub fn judge(step: Step, code: u16, text: &str) -> Verdict {
    match (step, code / 100) {
        (Step::Greeting, 2) | (Step::Mail, 2) => Verdict::Next,
        (Step::Rcpt, 2) => Verdict::Passed,
        (Step::Greeting, _) => Verdict::Failed,
        (_, 5) => Verdict::Passed,
        (_, 4) if code != 421 && !server_unwell(text) => Verdict::Deferred,
        _ => Verdict::Failed,
    }
}

/// Whether a 4xx reply's text says that the server itself is unwell (see [`judge`]).
fn server_unwell(text: &str) -> bool {
    let enhanced = text.split_whitespace().next().unwrap_or("");
    let parts: Vec<&str> = enhanced.split('.').collect();
    let is_enhanced = parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
    if !is_enhanced {
        return true;
    }
    parts[1] == "3" && enhanced != "4.3.1"
}

/// Why a self-check failed, in the words of the SMTP session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// smtpd answered a command in a way that says it cannot serve.
    #[error("{command} was answered {reply}")]
    Refused { command: String, reply: String },
    /// The session ended without a reply (smtpd died, or the TLS handshake failed).
    #[error("the session to {address} ended at {command}: {detail}")]
    Dropped {
        address: SocketAddr,
        command: String,
        detail: String,
    },
    #[error("nothing answered on {addresses}: {detail}")]
    Unreachable { addresses: String, detail: String },
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    /// The connection was taken but no banner came in time: every smtpd is busy with other
    /// clients (the process limit), which says nothing of the configuration.
    #[error("no banner from {address} in time (every smtpd busy?): {detail}")]
    Busy { address: SocketAddr, detail: String },
}

impl Failure {
    /// Whether the session says nothing of the configuration: smtpd never got to it.
    pub fn inconclusive(&self) -> bool {
        matches!(self, Failure::Busy { .. })
    }
}

/// What to check: the listener's local addresses (best first, as
/// [`crate::smtp_client::local_addresses`] gives them), the relay's domain, and whether the
/// listener speaks TLS from the first byte (`smtpd_tls_wrappermode`).
#[derive(Debug, Clone)]
pub struct Target {
    pub addresses: Vec<SocketAddr>,
    pub domain: String,
    pub implicit_tls: bool,
}

/// Runs the self-check against `target` within `timeout`. The session is blocking (lettre's)
/// and runs on a blocking thread; each of its reads and writes is bounded by what is left of
/// `timeout` too, so the thread does not outlive it by more than that.
pub async fn check(target: Target, timeout: Duration) -> Result<Passed, Failure> {
    let deadline = Instant::now() + timeout;
    let session = tokio::task::spawn_blocking(move || check_until(&target, deadline));
    match tokio::time::timeout(timeout + Duration::from_secs(1), session).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) | Err(_) => Err(Failure::TimedOut(timeout)),
    }
}

/// One session, tried again while nothing listens yet (a master just started), until
/// `deadline`.
fn check_until(target: &Target, deadline: Instant) -> Result<Passed, Failure> {
    loop {
        let mut unreachable = Vec::new();
        for &address in &target.addresses {
            match session(target, address, deadline) {
                Attempt::Done(result) => return result,
                Attempt::Unreachable(detail) => unreachable.push(format!("{address}: {detail}")),
            }
        }
        if Instant::now() + RETRY >= deadline {
            return Err(Failure::Unreachable {
                addresses: target
                    .addresses
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                detail: unreachable.join("; "),
            });
        }
        std::thread::sleep(RETRY);
    }
}

enum Attempt {
    Done(Result<Passed, Failure>),
    /// The connection was refused: nothing listens (yet) at that address.
    Unreachable(String),
}

/// A command line sent as written.
struct Raw<'a>(&'a str);

impl fmt::Display for Raw<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\r\n", self.0)
    }
}

fn session(target: &Target, address: SocketAddr, deadline: Instant) -> Attempt {
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(10));
    let tls = match target.implicit_tls.then(|| {
        // The listener's own certificate is not the point here: whatever it is, smtpd serves.
        TlsParameters::builder("localhost".into())
            .dangerous_accept_invalid_certs(true)
            .build()
    }) {
        None => None,
        Some(Ok(tls)) => Some(tls),
        Some(Err(e)) => {
            return Attempt::Done(Err(Failure::Dropped {
                address,
                command: "the TLS handshake".into(),
                detail: e.to_string(),
            }))
        }
    };
    let hello = ClientId::Domain(HELO.into());
    let mut conn = match SmtpConnection::connect(address, Some(left), &hello, tls.as_ref(), None) {
        Ok(conn) => conn,
        Err(e) if connection_refused(&e) => return Attempt::Unreachable(e.to_string()),
        Err(e) if timed_out(&e) => {
            return Attempt::Done(Err(Failure::Busy {
                address,
                detail: e.to_string(),
            }))
        }
        Err(e) => return Attempt::Done(Err(greeting_failed(address, &e))),
    };
    let rcpt = format!("RCPT TO:<postmaster@{}>", target.domain);
    let mut result = Ok(Passed::Served);
    for (step, command) in [(Step::Mail, "MAIL FROM:<>"), (Step::Rcpt, rcpt.as_str())] {
        let (code, text) = match conn.command(Raw(command)) {
            Ok(reply) => (
                u16::from(reply.code()),
                reply.message().collect::<Vec<_>>().join(" "),
            ),
            Err(e) => match e.status() {
                Some(code) => (u16::from(code), reply_text(&e)),
                None => {
                    result = Err(dropped(address, command, &e));
                    break;
                }
            },
        };
        match judge(step, code, &text) {
            Verdict::Next => continue,
            Verdict::Passed => break,
            Verdict::Deferred => {
                result = Ok(Passed::Deferred {
                    command: command.into(),
                    reply: format!("{code} {text}"),
                });
                break;
            }
            Verdict::Failed => {
                result = Err(Failure::Refused {
                    command: command.into(),
                    reply: format!("{code} {text}"),
                });
                break;
            }
        }
    }
    // Nothing was sent after RCPT: RSET drops the transaction, nothing is queued.
    let _ = conn.command(Raw("RSET"));
    let _ = conn.quit();
    Attempt::Done(result)
}

/// A failed banner or EHLO (only a positive reply passes them): the reply, or the drop.
fn greeting_failed(address: SocketAddr, e: &lettre::transport::smtp::Error) -> Failure {
    const COMMAND: &str = "the banner or EHLO";
    match e.status() {
        Some(code) => Failure::Refused {
            command: COMMAND.into(),
            reply: format!("{} {}", u16::from(code), reply_text(e)),
        },
        None => dropped(address, COMMAND, e),
    }
}

fn dropped(address: SocketAddr, command: &str, e: &lettre::transport::smtp::Error) -> Failure {
    Failure::Dropped {
        address,
        command: command.into(),
        detail: e.to_string(),
    }
}

/// The text of a negative reply lettre turned into an error: its source.
fn reply_text(e: &lettre::transport::smtp::Error) -> String {
    std::error::Error::source(e).map_or_else(String::new, ToString::to_string)
}

/// Whether lettre failed because the connection was refused (nothing listens).
fn connection_refused(e: &lettre::transport::smtp::Error) -> bool {
    io_kind(e).is_some_and(|k| k == std::io::ErrorKind::ConnectionRefused)
}

/// Whether lettre gave up waiting for a reply (a read that timed out).
fn timed_out(e: &lettre::transport::smtp::Error) -> bool {
    io_kind(e).is_some_and(|k| {
        matches!(
            k,
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
        )
    })
}

/// The kind of the I/O error under a lettre error, if one is.
fn io_kind(e: &lettre::transport::smtp::Error) -> Option<std::io::ErrorKind> {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        source = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_judged_by_step() {
        use Step::*;
        use Verdict::*;
        for (step, code, text, expected) in [
            (Greeting, 220, "relay.example.net ESMTP", Next),
            (Greeting, 250, "relay.example.net", Next),
            (Greeting, 421, "4.3.2 Service shutting down", Failed),
            (Greeting, 554, "5.7.1 go away", Failed),
            (Mail, 250, "2.1.0 Ok", Next),
            (Rcpt, 250, "2.1.5 Ok", Passed),
            // A policy answer: the restrictions ran.
            (Mail, 553, "5.7.1 Sender address rejected", Passed),
            (
                Rcpt,
                554,
                "5.7.1 <postmaster@example.net>: Relay access denied",
                Passed,
            ),
            // The configuration is broken.
            (Rcpt, 451, "4.3.5 Server configuration error", Failed),
            (
                Rcpt,
                451,
                "4.3.0 <postmaster@example.net>: Temporary lookup failure",
                Failed,
            ),
            (Mail, 451, "4.3.5 Server configuration problem", Failed),
            (
                Rcpt,
                421,
                "4.7.0 relay.example.net Error: too many errors",
                Failed,
            ),
            (Rcpt, 450, "no enhanced code", Failed),
            // A full spool, greylisting, verification, a milter: the log tells.
            (Mail, 452, "4.3.1 Insufficient system storage", Deferred),
            (
                Rcpt,
                450,
                "4.7.1 <postmaster@example.net>: Greylisted",
                Deferred,
            ),
            (
                Rcpt,
                450,
                "4.1.1 <postmaster@example.net>: unverified address",
                Deferred,
            ),
            (
                Mail,
                451,
                "4.7.1 Service unavailable - try again later",
                Deferred,
            ),
            (Rcpt, 354, "End data with <CR><LF>.<CR><LF>", Failed),
        ] {
            assert_eq!(judge(step, code, text), expected, "{step:?} {code} {text}");
        }
    }

    /// Nothing listening, within the deadline: said so, in time.
    #[tokio::test]
    async fn a_listener_that_is_not_there_fails_in_time() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let target = Target {
            addresses: vec![SocketAddr::from(([127, 0, 0, 1], port))],
            domain: "example.net".into(),
            implicit_tls: false,
        };
        let started = Instant::now();
        let err = check(target, Duration::from_millis(500)).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(
            matches!(&err, Failure::Unreachable { detail, .. } if !detail.is_empty()),
            "{err}"
        );
    }

    /// A server that answers like a broken smtpd, and one that drops the session: the reply
    /// and the drop are named; the session never gets to DATA.
    #[tokio::test]
    async fn a_refusing_or_dropping_server_fails() {
        use std::io::{BufRead, BufReader, Write};
        let serve = |answers: &'static [&'static str]| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let server = std::thread::spawn(move || {
                let (stream, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                let mut commands = Vec::new();
                writer.write_all(b"220 test ESMTP\r\n").unwrap();
                for answer in answers {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap() == 0 {
                        break;
                    }
                    commands.push(line.trim_end().to_string());
                    if answer.is_empty() {
                        return commands;
                    }
                    writer.write_all(answer.as_bytes()).unwrap();
                }
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    commands.push(line.trim_end().to_string());
                    line.clear();
                    let _ = writer.write_all(b"250 2.0.0 Ok\r\n");
                }
                commands
            });
            (addr, server)
        };
        let target = |addr| Target {
            addresses: vec![addr],
            domain: "example.net".into(),
            implicit_tls: false,
        };
        let (addr, server) = serve(&[
            "250-test\r\n250 8BITMIME\r\n",
            "250 2.1.0 Ok\r\n",
            "451 4.3.5 Server configuration error\r\n",
        ]);
        let err = check(target(addr), TIMEOUT).await.unwrap_err();
        assert_eq!(
            err,
            Failure::Refused {
                command: "RCPT TO:<postmaster@example.net>".into(),
                reply: "451 4.3.5 Server configuration error".into()
            }
        );
        let commands = server.join().unwrap();
        assert_eq!(
            commands,
            [
                format!("EHLO {HELO}").as_str(),
                "MAIL FROM:<>",
                "RCPT TO:<postmaster@example.net>",
                "RSET",
                "QUIT"
            ]
        );

        let (addr, server) = serve(&["250 test\r\n", ""]);
        let err = check(target(addr), TIMEOUT).await.unwrap_err();
        assert!(
            matches!(&err, Failure::Dropped { command, .. } if command == "MAIL FROM:<>"),
            "{err}"
        );
        server.join().unwrap();

        let (addr, server) = serve(&[
            "250 test\r\n",
            "250 2.1.0 Ok\r\n",
            "554 5.7.1 <postmaster@example.net>: Relay access denied\r\n",
        ]);
        assert_eq!(
            check(target(addr), TIMEOUT).await,
            Ok(Passed::Served),
            "a policy answer passes"
        );
        server.join().unwrap();

        // A temporary refusal: deferred, for the caller to read the log; RCPT is not sent.
        let (addr, server) = serve(&[
            "250 test\r\n",
            "451 4.7.1 Service unavailable - try again later\r\n",
        ]);
        assert_eq!(
            check(target(addr), TIMEOUT).await,
            Ok(Passed::Deferred {
                command: "MAIL FROM:<>".into(),
                reply: "451 4.7.1 Service unavailable - try again later".into()
            })
        );
        let commands = server.join().unwrap();
        assert_eq!(commands[1..], ["MAIL FROM:<>", "RSET", "QUIT"]);
    }
}
