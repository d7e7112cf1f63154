//! The SMTP client side of the image: the health probe, the test client that replaces the
//! original image's smtp_client.py (both use lettre), and a test message handed to the relay's
//! own Postfix by its `sendmail` (`kubectl smtp-relay send`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, SmtpConnection, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{Message, SmtpTransport, Transport};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Usage(String),
    #[error("{address}: {source}")]
    Smtp {
        address: String,
        #[source]
        source: lettre::transport::smtp::Error,
    },
    #[error("{0}")]
    Io(String),
}

/// The address to reach a relay listening on `listen`: a wildcard becomes loopback.
pub fn local_address(listen: &str) -> Result<SocketAddr, ClientError> {
    local_addresses(listen).map(|all| all[0])
}

/// The addresses to reach a relay listening on `listen`, best first. A wildcard becomes
/// loopback of both families for `[::]` (where Postfix listens on both): 127.0.0.1 first, as
/// every pod has it, then ::1 for a pod where only IPv6 answers.
pub fn local_addresses(listen: &str) -> Result<Vec<SocketAddr>, ClientError> {
    let addr = listen
        .to_socket_addrs()
        .map_err(|e| ClientError::Usage(format!("{listen:?} is not host:port: {e}")))?
        .next()
        .ok_or_else(|| ClientError::Usage(format!("{listen:?} resolves to no address")))?;
    let port = addr.port();
    Ok(match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => vec![SocketAddr::from(([127, 0, 0, 1], port))],
        ip if ip.is_unspecified() => vec![
            SocketAddr::from(([127, 0, 0, 1], port)),
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
        ],
        _ => vec![addr],
    })
}

/// [`probe`] on each address in turn; the relay is healthy when one of them answers.
pub fn probe_any(addresses: &[SocketAddr], timeout: Duration) -> Result<(), ClientError> {
    let mut errors = Vec::new();
    for addr in addresses {
        match probe(*addr, timeout) {
            Ok(()) => return Ok(()),
            Err(e) => errors.push(e.to_string()),
        }
    }
    Err(ClientError::Io(errors.join("; ")))
}

/// A real SMTP conversation: banner, EHLO, NOOP, QUIT, each step bounded by `timeout`.
pub fn probe(address: SocketAddr, timeout: Duration) -> Result<(), ClientError> {
    let err = |source| ClientError::Smtp {
        address: address.to_string(),
        source,
    };
    let hello = ClientId::Domain("smtp-relay-probe".into());
    let mut conn =
        SmtpConnection::connect(address, Some(timeout), &hello, None, None).map_err(err)?;
    if !conn.test_connected() {
        return Err(ClientError::Io(format!(
            "{address}: NOOP was not answered with 250"
        )));
    }
    conn.quit().map_err(err)?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StartTls {
    /// Plain text.
    Never,
    /// STARTTLS when the server offers it.
    Opportunistic,
    /// Fail unless STARTTLS succeeds.
    Required,
}

#[derive(Debug, Clone)]
pub struct SendRequest {
    pub server: SocketAddr,
    pub from: String,
    pub to: Vec<String>,
    pub subject: String,
    pub body: String,
    pub login: Option<(String, String)>,
    pub starttls: StartTls,
    pub tls_name: String,
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
}

/// A test message: plain text, from one address to the others, with `message_id` when given
/// (else lettre's own).
fn test_message(
    from: &str,
    to: &[String],
    subject: &str,
    body: &str,
    message_id: Option<&str>,
) -> Result<Message, ClientError> {
    let usage = |what: &str, e: &dyn std::fmt::Display| ClientError::Usage(format!("{what}: {e}"));
    let mut builder = Message::builder()
        .from(from.parse().map_err(|e| usage("--from", &e))?)
        .subject(subject)
        .header(ContentType::TEXT_PLAIN);
    if let Some(id) = message_id {
        builder = builder.message_id(Some(format!("<{id}>")));
    }
    for to in to {
        builder = builder.to(to.parse().map_err(|e| usage("recipient", &e))?);
    }
    builder
        .body(body.to_string())
        .map_err(|e| usage("message", &e))
}

/// Sends one test message; returns the server's reply to the end of DATA.
pub fn send(req: &SendRequest) -> Result<String, ClientError> {
    let usage = |what: &str, e: &dyn std::fmt::Display| ClientError::Usage(format!("{what}: {e}"));
    let message = test_message(&req.from, &req.to, &req.subject, &req.body, None)?;

    let tls = match req.starttls {
        StartTls::Never => Tls::None,
        mode => {
            let mut params = TlsParameters::builder(req.tls_name.clone());
            if let Some(ca) = &req.ca_file {
                let pem = std::fs::read(ca)
                    .map_err(|e| ClientError::Io(format!("--ca-file {}: {e}", ca.display())))?;
                params = params.add_root_certificate(
                    Certificate::from_pem(&pem).map_err(|e| usage("--ca-file", &e))?,
                );
            }
            let params = params.build().map_err(|e| usage("TLS", &e))?;
            if mode == StartTls::Required {
                Tls::Required(params)
            } else {
                Tls::Opportunistic(params)
            }
        }
    };
    let mut transport = SmtpTransport::builder_dangerous(req.server.ip().to_string())
        .port(req.server.port())
        .tls(tls)
        .timeout(Some(req.timeout));
    if let Some((user, password)) = &req.login {
        transport = transport.credentials(Credentials::new(user.clone(), password.clone()));
    }
    let response = transport
        .build()
        .send(&message)
        .map_err(|source| ClientError::Smtp {
            address: req.server.to_string(),
            source,
        })?;
    Ok(format!(
        "{} {}",
        response.code(),
        response.message().collect::<Vec<_>>().join(" ")
    ))
}

/// A test message for the relay's own Postfix to deliver, as mail from a client would go.
#[derive(Debug, Clone)]
pub struct EnqueueRequest {
    /// Postfix's `sendmail`.
    pub sendmail: PathBuf,
    /// The configuration directory of the running Postfix (`sendmail -C`).
    pub config_dir: PathBuf,
    pub from: String,
    pub to: Vec<String>,
    pub subject: String,
    pub body: String,
    /// The Message-ID (without `<>`), by which cleanup's log line names its queue ID.
    pub message_id: String,
}

/// The most of `sendmail`'s error output kept for the error message.
const SENDMAIL_STDERR_MAX: u64 = 4096;

/// Hands a test message to Postfix's `sendmail` (through `postdrop` into the maildrop queue,
/// where `pickup` takes it): the message skips smtpd's restrictions, as local mail does, and
/// goes out through the relayhost like any other. Returns when `sendmail` has queued it.
pub fn enqueue(req: &EnqueueRequest) -> Result<(), ClientError> {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    let message = test_message(
        &req.from,
        &req.to,
        &req.subject,
        &req.body,
        Some(&req.message_id),
    )?;
    let sendmail = req.sendmail.display();
    // The envelope's addresses, without the display names the headers may have.
    let envelope = message.envelope();
    let from = envelope.from().map(ToString::to_string).unwrap_or_default();
    let to: Vec<String> = envelope.to().iter().map(ToString::to_string).collect();
    // -i: a line holding only "." is text; -f: the envelope sender; "--": recipients follow.
    let mut child = Command::new(&req.sendmail)
        .arg("-C")
        .arg(&req.config_dir)
        .args(["-i", "-f", &from, "--"])
        .args(&to)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ClientError::Io(format!("cannot run {sendmail}: {e}")))?;
    let written = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(&message.formatted()));
    let mut stderr = String::new();
    if let Some(err) = child.stderr.take() {
        let _ = err.take(SENDMAIL_STDERR_MAX).read_to_string(&mut stderr);
    }
    let status = child
        .wait()
        .map_err(|e| ClientError::Io(format!("{sendmail}: {e}")))?;
    if !status.success() {
        return Err(ClientError::Io(format!(
            "{sendmail} failed ({status}): {}",
            stderr.trim()
        )));
    }
    if let Some(Err(e)) = written {
        return Err(ClientError::Io(format!("writing to {sendmail}: {e}")));
    }
    Ok(())
}
