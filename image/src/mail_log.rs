//! Postfix's mail log, line by line: which program wrote a line, and what a line about one
//! queued message says (a delivery attempt for one recipient, the Message-ID cleanup saw, the
//! message leaving the queue). Read by the relay's metrics as the log streams past, and by the
//! kubectl plugin following a test message through a pod's log.
//!
//! A line holds what clients sent (addresses, Message-IDs, the relayhost's replies): each
//! reader here takes Postfix's own fields by their place in Postfix's layout, never by
//! searching the whole line for a word.

/// `Dec  6 08:50:44 host postfix/smtpd[123]: message` → ("smtpd", "message"). The prefix
/// (time, host, `syslog_name/program[pid]`) is Postfix's and holds no `": "`: the first one
/// ends it, whatever the message says.
pub fn postfix_program(line: &str) -> Option<(&str, &str)> {
    let (prefix, message) = line.split_once(": ")?;
    let tag = prefix.rsplit(' ').next()?;
    let (name, pid) = tag.strip_suffix(']')?.rsplit_once('[')?;
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (_, program) = name.rsplit_once('/')?;
    Some((program, message))
}

/// A message about one queued message, `QUEUEID: rest` → (QUEUEID, rest).
pub fn queued_message(message: &str) -> Option<(&str, &str)> {
    let (queue_id, rest) = message.split_once(": ")?;
    is_queue_id(queue_id).then_some((queue_id, rest))
}

/// cleanup's `QUEUEID: message-id=<ID>` → (QUEUEID, ID): the message's `Message-ID` header
/// as cleanup found it (a sender's words, so only ever compared, whole, with an ID one knows).
pub fn message_id(message: &str) -> Option<(&str, &str)> {
    let (queue_id, rest) = queued_message(message)?;
    let id = rest.strip_prefix("message-id=<")?.strip_suffix('>')?;
    Some((queue_id, id))
}

/// qmgr's `QUEUEID: removed`: the message left the queue (delivered, bounced or deleted).
pub fn removed(message: &str) -> Option<&str> {
    let (queue_id, rest) = queued_message(message)?;
    (rest == "removed").then_some(queue_id)
}

/// What a delivery agent logged for one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery<'a> {
    pub queue_id: &'a str,
    /// The recipient as Postfix logs it (external form, without `<>`).
    pub to: &'a str,
    /// Where it went: `host[address]:port`, or `none` when no server was reached.
    pub relay: &'a str,
    /// The enhanced status code: `2.0.0`, `4.4.1`.
    pub dsn: &'a str,
    /// `sent`, `deferred`, `bounced`, ...
    pub status: &'a str,
    /// The text in parentheses after the status: why.
    pub why: &'a str,
}

/// A delivery agent's line about one recipient, in the layout Postfix writes:
/// `QUEUEID: to=<ADDRESS>[, orig_to=<ADDRESS>], relay=..., [conn_use=N, ]delay=...,
/// delays=..., dsn=X.Y.Z, status=STATUS (WHY)`. The addresses are the client's; everything
/// after them is Postfix's, so they are stepped over (see [`address_end`]) and the fields
/// are read after them.
pub fn delivery(message: &str) -> Option<Delivery<'_>> {
    let (queue_id, rest) = queued_message(message)?;
    let rest = rest.strip_prefix("to=<")?;
    let end = address_end(rest)?;
    let to = rest.get(..end - 1)?;
    let mut rest = rest.get(end..)?;
    if let Some(orig) = rest.strip_prefix(", orig_to=<") {
        rest = orig.get(address_end(orig)?..)?;
    }
    let rest = rest.strip_prefix(", relay=")?;
    let (relay, _) = rest.split_once(", ")?;
    let (_, rest) = rest.split_once(", dsn=")?;
    let (dsn, rest) = rest.split_once(", status=")?;
    if !is_dsn(dsn) {
        return None;
    }
    let (status, why) = rest.split_once(' ').unwrap_or((rest, ""));
    let why = why
        .strip_prefix('(')
        .and_then(|w| w.strip_suffix(')'))
        .unwrap_or(why);
    Some(Delivery {
        queue_id,
        to,
        relay,
        dsn,
        status,
        why,
    })
}

/// A queue ID: letters and digits (short or long form).
pub fn is_queue_id(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// An enhanced status code: `2.0.0`, `4.4.1`, `5.7.139`.
pub fn is_dsn(dsn: &str) -> bool {
    let parts: Vec<&str> = dsn.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Where an address Postfix logged between `<` and `>` ends: the index just past its `>`, in
/// `text` that starts right after the `<`.
///
/// Postfix logs addresses in their external form (`info_log_address_format = external`): a
/// local part that holds anything but letters, digits and a few marks is quoted
/// (`"status=sent x"@example.net`), and inside the quotes `"` and `\` are escaped with `\`
/// (as are 8-bit characters, which the log then shows as `?`). The domain holds no `>`, `"`
/// or `<`: smtpd refuses such an address (`501 5.1.3 Bad recipient address syntax`). So the
/// first `>` outside quotes ends the address.
pub fn address_end(text: &str) -> Option<usize> {
    let (mut quoted, mut escaped) = (false, false);
    for (i, b) in text.bytes().enumerate() {
        if escaped {
            escaped = false;
        } else if quoted {
            match b {
                b'\\' => escaped = true,
                b'"' => quoted = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => quoted = true,
                b'>' => return Some(i + 1),
                _ => {}
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_line_gives_postfix_fields_after_the_recipient() {
        let line = r#"Dec  7 14:00:01 mail-0 postfix/smtp[88]: 4Q2x1Z3kLmz5: to=<"x, relay=evil, dsn=2.0.0, status=sent (y"@example.net>, orig_to=<ops>, relay=relayhost[10.0.0.5]:587, delay=0.41, delays=0.01/0.01/0.2/0.19, dsn=4.7.0, status=deferred (SASL authentication failed)"#;
        let (program, message) = postfix_program(line).unwrap();
        assert_eq!(program, "smtp");
        assert_eq!(
            delivery(message),
            Some(Delivery {
                queue_id: "4Q2x1Z3kLmz5",
                to: r#""x, relay=evil, dsn=2.0.0, status=sent (y"@example.net"#,
                relay: "relayhost[10.0.0.5]:587",
                dsn: "4.7.0",
                status: "deferred",
                why: "SASL authentication failed",
            })
        );
    }

    #[test]
    fn message_ids_and_removals_are_read_for_their_queue_id() {
        assert_eq!(
            message_id("4Q2x1Z3kLmz5: message-id=<a.b@mail-0>"),
            Some(("4Q2x1Z3kLmz5", "a.b@mail-0"))
        );
        assert_eq!(message_id("4Q2x1Z3kLmz5: message-id=a@b"), None);
        assert_eq!(removed("4Q2x1Z3kLmz5: removed"), Some("4Q2x1Z3kLmz5"));
        assert_eq!(removed("4Q2x1Z3kLmz5: removed by postsuper"), None);
        assert_eq!(
            queued_message("4Q2x1Z3kLmz5: milter-reject: END-OF-MESSAGE"),
            Some(("4Q2x1Z3kLmz5", "milter-reject: END-OF-MESSAGE"))
        );
    }
}
