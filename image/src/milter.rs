//! The relay's own milter: a SASL user bound to its senders (`senders.bindings`) sends only
//! messages whose `From:` header names them, as Postfix's `reject_sender_login_mismatch`
//! holds its envelope sender (`MAIL FROM`) to them. smtpd hands each message's headers to it
//! (the Sendmail milter protocol, version 6, over a unix socket in a directory of root's in
//! the spool: [`crate::postfix::layout::MILTER_SOCKET`]) with the login (`{auth_authen}`);
//! for a bound user, a `From:` address none of its senders covers is refused at the end of
//! the headers, `550 5.7.1`, naming the address and the user. Anyone else's message goes on
//! untouched. The milter only reads: it asks for no change to a message.
//!
//! Bounded: a packet of at most [`PACKET_MAX`] bytes, [`FROM_MAX`] `From:` headers read per
//! message, [`CONNECTIONS_MAX`] connections (more wait to be accepted), a connection idle for
//! [`IDLE`] closed (smtpd waits 300 s for the content at most).

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr as _;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, BufReader};

use crate::settings::{MailAccess, MailPattern};

/// The longest packet read (a header line is at most Postfix's `header_size_limit`, 100 KiB).
pub const PACKET_MAX: usize = 256 * 1024;
/// `From:` headers read per message; a message with more is refused when its user is bound.
pub const FROM_MAX: usize = 8;
/// Connections served at once; smtpd opens one per session.
pub const CONNECTIONS_MAX: usize = 1024;
/// A connection without a packet for this long is closed.
pub const IDLE: Duration = Duration::from_secs(600);

/// The protocol version spoken (Postfix's `milter_protocol` default).
const VERSION: u32 = 6;
/// Steps smtpd need not send (connect, HELO, recipients, DATA, body, unknown commands), and
/// headers it need not wait for an answer to: `SMFIP_NOCONNECT | NOHELO | NORCPT | NOBODY |
/// NOUNKNOWN | NODATA | NR_HDR`.
const SKIPPED: u32 = 0x1 | 0x2 | 0x8 | 0x10 | 0x100 | 0x200 | 0x80;
const NR_HDR: u32 = 0x80;
/// The stage of MAIL FROM, in a request for macros.
const SMFIM_ENVFROM: u32 = 2;
/// The macro holding the SASL login.
const AUTH_AUTHEN: &str = "{auth_authen}";

/// The users bound to senders, and the realm their logins may carry.
#[derive(Debug, Default)]
pub struct Bindings {
    realm: String,
    users: HashMap<String, Vec<MailPattern>>,
}

/// The bindings, shared by the connections and the supervisor that follows the settings.
pub type SharedBindings = Arc<RwLock<Bindings>>;

impl Bindings {
    /// Follows the settings in force.
    pub fn set(&mut self, access: &MailAccess, realm: &str) {
        realm.clone_into(&mut self.realm);
        self.users = access
            .sender_bindings
            .iter()
            .map(|b| (b.user.clone(), b.senders.clone()))
            .collect();
    }

    /// Why `login`'s message with these `From:` header values is refused, or `None`: only a
    /// bound user's can be, when an address there is not among its senders (or none can be
    /// read).
    pub fn refusal(&self, login: &str, from: &[String]) -> Option<String> {
        let user = crate::settings::user_of_login(login, &self.realm);
        let senders = self.users.get(user)?;
        if from.len() > FROM_MAX {
            return Some(format!(
                "550 5.7.1 more than {FROM_MAX} From: headers from user {user}"
            ));
        }
        for value in from {
            let Ok(mailboxes) = lettre::message::Mailboxes::from_str(value.trim()) else {
                return Some(format!(
                    "550 5.7.1 From: header rejected: no address user {user} sends as can be read in it"
                ));
            };
            for mailbox in mailboxes {
                let address = mailbox.email.to_string().to_ascii_lowercase();
                if !senders.iter().any(|s| s.covers(&address)) {
                    return Some(format!(
                        "550 5.7.1 <{address}>: From header rejected: not owned by user {user}"
                    ));
                }
            }
        }
        None
    }
}

/// Serves smtpd's milter connections on `path` until the task is dropped.
pub async fn serve(path: PathBuf, bindings: SharedBindings) -> std::io::Result<()> {
    crate::local_socket::serve_bounded(&path, CONNECTIONS_MAX, "milter", |stream| {
        let bindings = bindings.clone();
        async move { session(stream, &bindings).await }
    })
    .await
}

/// What one message has shown so far.
#[derive(Debug, Default)]
struct Message {
    login: Option<String>,
    from: Vec<String>,
}

/// One smtpd session's connection: packets of a 4-byte length, a command byte and its data,
/// each answered when the protocol asks for an answer.
async fn session(stream: tokio::net::UnixStream, bindings: &SharedBindings) -> std::io::Result<()> {
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let mut message = Message::default();
    let mut nr_hdr = false;
    loop {
        let Some((command, data)) = read_packet(&mut reader).await? else {
            return Ok(());
        };
        let reply: Option<Vec<u8>> = match command {
            b'O' => {
                let offered = u32_at(&data, 8).unwrap_or(0);
                let asked = SKIPPED & offered;
                nr_hdr = asked & NR_HDR != 0;
                let version = u32_at(&data, 0).unwrap_or(VERSION).min(VERSION);
                let mut r = vec![b'O'];
                // The login is asked for at MAIL FROM (SMFIM_ENVFROM), whatever
                // `milter_mail_macros` says (smfi_setsymlist).
                for n in [version, 0, asked, SMFIM_ENVFROM] {
                    r.extend_from_slice(&n.to_be_bytes());
                }
                r.extend_from_slice(AUTH_AUTHEN.as_bytes());
                r.push(0);
                Some(r)
            }
            b'D' => {
                if data.first() == Some(&b'M') {
                    message.login = macro_value(&data[1..], AUTH_AUTHEN)
                        .filter(|v| !v.is_empty())
                        .map(str::to_string);
                }
                None
            }
            b'L' => {
                let mut parts = data.split(|b| *b == 0);
                let name = parts.next().unwrap_or_default();
                let value = parts.next().unwrap_or_default();
                if name.eq_ignore_ascii_case(b"from") && message.from.len() <= FROM_MAX {
                    message
                        .from
                        .push(String::from_utf8_lossy(value).into_owned());
                }
                (!nr_hdr).then(|| vec![b'c'])
            }
            b'N' => {
                let refusal = message.login.as_deref().and_then(|login| {
                    bindings
                        .read()
                        .unwrap_or_else(|e| e.into_inner())
                        .refusal(login, &message.from)
                });
                Some(match refusal {
                    Some(text) => {
                        tracing::info!(login = message.login.as_deref().unwrap_or_default(), reply = %text, "refused a message whose From: header is not its login's");
                        let mut r = vec![b'y'];
                        r.extend_from_slice(text.as_bytes());
                        r.push(0);
                        r
                    }
                    None => vec![b'c'],
                })
            }
            // The end of a message, or its abort: the next one starts afresh.
            b'E' => {
                message = Message::default();
                Some(vec![b'c'])
            }
            b'A' => {
                message = Message::default();
                None
            }
            b'K' => {
                message = Message::default();
                None
            }
            b'Q' => return Ok(()),
            // Steps asked not to be sent, if an MTA sends them anyway.
            b'C' | b'H' | b'M' | b'R' | b'T' | b'B' | b'U' => Some(vec![b'c']),
            other => {
                return Err(std::io::Error::other(format!(
                    "unknown milter command {other:#04x}"
                )))
            }
        };
        if let Some(reply) = reply {
            let len = u32::try_from(reply.len()).map_err(std::io::Error::other)?;
            writer.write_all(&len.to_be_bytes()).await?;
            writer.write_all(&reply).await?;
        }
    }
}

/// The next packet, or `None` at the end of the connection (or after [`IDLE`]).
async fn read_packet(
    reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut len = [0u8; 4];
    match tokio::time::timeout(IDLE, reader.read_exact(&mut len)).await {
        Err(_) => return Ok(None),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Ok(r) => r?,
    };
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > PACKET_MAX {
        return Err(std::io::Error::other(format!(
            "a milter packet of {len} bytes"
        )));
    }
    let mut packet = vec![0u8; len];
    tokio::time::timeout(IDLE, reader.read_exact(&mut packet))
        .await
        .map_err(|_| std::io::Error::other("a milter packet cut short"))??;
    let data = packet.split_off(1);
    Ok(Some((packet[0], data)))
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    let bytes: [u8; 4] = data.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

/// The value of macro `name` in a `D` packet's pairs (`name\0value\0...`).
fn macro_value<'a>(pairs: &'a [u8], name: &str) -> Option<&'a str> {
    let mut parts = pairs.split(|b| *b == 0);
    while let (Some(n), Some(v)) = (parts.next(), parts.next()) {
        if n == name.as_bytes() {
            return std::str::from_utf8(v).ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::settings::SenderBinding;

    fn bindings() -> Bindings {
        let mut b = Bindings::default();
        b.set(
            &MailAccess {
                sender_bindings: vec![SenderBinding {
                    user: "app1".into(),
                    senders: vec![
                        MailPattern::Address("app1@example.net".into()),
                        MailPattern::Domain("billing.example.org".into()),
                    ],
                }],
                ..Default::default()
            },
            "example.net",
        );
        b
    }

    #[test]
    fn a_bound_user_sends_only_from_its_senders() {
        let b = bindings();
        let from = |v: &str| vec![v.to_string()];
        for ok in [
            "app1@example.net",
            "App One <APP1@example.net>",
            "\"Billing\" <x@billing.example.org>",
            "y@eu.billing.example.org",
        ] {
            assert_eq!(b.refusal("app1", &from(ok)), None, "{ok}");
        }
        assert_eq!(b.refusal("app1@example.net", &[]), None, "no From: header");
        assert_eq!(
            b.refusal("app1@Example.net", &from("CEO <ceo@example.net>")),
            Some(
                "550 5.7.1 <ceo@example.net>: From header rejected: not owned by user app1".into()
            )
        );
        assert!(b
            .refusal("app1", &from("a@notbilling.example.org"))
            .is_some());
        assert!(b
            .refusal("app1", &from("app1@example.net, ceo@example.net"))
            .is_some());
        assert!(b.refusal("app1", &from("not an address")).is_some());
        // Unbound users and other realms are not this milter's business.
        assert_eq!(b.refusal("app2", &from("ceo@example.net")), None);
        assert_eq!(
            b.refusal("app1@other.example", &from("ceo@example.net")),
            None
        );
    }

    #[test]
    fn macros_are_read_from_their_pairs() {
        let pairs = b"i\0ABC123\0{auth_type}\0PLAIN\0{auth_authen}\0app1\0";
        assert_eq!(macro_value(pairs, "{auth_authen}"), Some("app1"));
        assert_eq!(macro_value(pairs, "{auth_author}"), None);
    }
}
