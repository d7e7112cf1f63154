//! `send`: a test message queued in a relay pod's Postfix (`smtp-relay enqueue`, through
//! pods/exec), then followed through that pod's mail log (pods/log) to its delivery: the queue
//! ID cleanup gave it, each recipient's outcome as the delivery agent logged it.
//!
//! The log is read with the image's own reader of Postfix's layout (`smtp_relay::mail_log`):
//! lines are found by the message's Message-ID, then by its queue ID, never by searching a
//! line for words a sender could have written.

use smtp_relay::mail_log::{self, Delivery};

/// One recipient's outcome, as the delivery agent logged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub to: String,
    pub relay: String,
    pub dsn: String,
    pub status: String,
    pub why: String,
}

impl From<Delivery<'_>> for Outcome {
    fn from(d: Delivery<'_>) -> Self {
        Outcome {
            to: d.to.to_string(),
            relay: d.relay.to_string(),
            dsn: d.dsn.to_string(),
            status: d.status.to_string(),
            why: d.why.to_string(),
        }
    }
}

/// What the log has said of one test message so far.
#[derive(Debug)]
pub struct Follow {
    message_id: String,
    recipients: usize,
    queue_id: Option<String>,
    /// The latest outcome of each recipient, in the order first logged.
    outcomes: Vec<Outcome>,
    /// cleanup refused, discarded or held it (its words).
    stopped: Option<String>,
    removed: bool,
}

impl Follow {
    /// Follows the message with `message_id` (without `<>`) sent to `recipients` addresses.
    pub fn new(message_id: &str, recipients: usize) -> Follow {
        Follow {
            message_id: message_id.to_string(),
            recipients,
            queue_id: None,
            outcomes: Vec::new(),
            stopped: None,
            removed: false,
        }
    }

    /// Takes one line of the pod's log; what to show of it, if it is about the message.
    pub fn line(&mut self, line: &str) -> Option<String> {
        let (program, message) = mail_log::postfix_program(line)?;
        let Some(queue_id) = self.queue_id.clone() else {
            let (id, message_id) = mail_log::message_id(message)?;
            if program != "cleanup" || message_id != self.message_id {
                return None;
            }
            self.queue_id = Some(id.to_string());
            return Some(format!("accepted by Postfix: queue ID {id}"));
        };
        let (id, rest) = mail_log::queued_message(message)?;
        if id != queue_id {
            return None;
        }
        if let Some(d) = mail_log::delivery(message) {
            let outcome = Outcome::from(d);
            let shown = format!(
                "to=<{}>: {} ({}) relay={}: {}",
                outcome.to, outcome.status, outcome.dsn, outcome.relay, outcome.why
            );
            match self.outcomes.iter_mut().find(|o| o.to == outcome.to) {
                Some(known) => *known = outcome,
                None => self.outcomes.push(outcome),
            }
            return Some(shown);
        }
        if mail_log::removed(message).is_some() {
            self.removed = true;
            return Some("removed from the queue".to_string());
        }
        if program == "cleanup"
            && ["reject:", "milter-reject:", "discard:", "hold:"]
                .iter()
                .any(|w| rest.starts_with(w))
        {
            self.stopped = Some(rest.to_string());
            return Some(format!("cleanup: {rest}"));
        }
        if program == "bounce" {
            return Some(format!("bounce: {rest}"));
        }
        None
    }

    /// Whether the log has said all it will on this attempt: the message left the queue, was
    /// stopped by cleanup, or every recipient has an outcome.
    pub fn done(&self) -> bool {
        self.removed || self.stopped.is_some() || self.outcomes.len() >= self.recipients
    }

    /// Every recipient's message was accepted by the next server.
    pub fn delivered(&self) -> bool {
        self.stopped.is_none()
            && self.outcomes.len() >= self.recipients
            && self.outcomes.iter().all(|o| o.status == "sent")
    }

    /// Why the message is not (yet) delivered, for the command's error.
    pub fn verdict(&self) -> Option<String> {
        if self.delivered() {
            return None;
        }
        if let Some(stopped) = &self.stopped {
            return Some(format!("Postfix's cleanup stopped it: {stopped}"));
        }
        let Some(queue_id) = &self.queue_id else {
            return Some(
                "Postfix has not logged taking the message (is pickup running?)".to_string(),
            );
        };
        let pending: Vec<String> = self
            .outcomes
            .iter()
            .filter(|o| o.status != "sent")
            .map(|o| format!("<{}> {}", o.to, o.status))
            .collect();
        let missing = self.recipients.saturating_sub(self.outcomes.len());
        let mut why = pending.join(", ");
        if missing > 0 {
            if !why.is_empty() {
                why.push_str("; ");
            }
            why.push_str(&format!("{missing} recipient(s) without an outcome yet"));
        }
        Some(format!("{queue_id} is not delivered: {why}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "kubectl-smtp-relay.1@example.net";

    fn line(program: &str, message: &str) -> String {
        format!("Dec  7 14:00:01 mail-0 postfix/{program}[42]: {message}")
    }

    #[test]
    fn the_message_is_found_by_its_message_id_then_by_its_queue_id() {
        let mut f = Follow::new(ID, 2);
        // Another message's lines, and a sender's Message-ID naming ours elsewhere.
        assert_eq!(f.line(&line("cleanup", "AAA1: message-id=<other@x>")), None);
        assert_eq!(
            f.line(&line("smtp", "AAA1: to=<a@x>, relay=r[1.2.3.4]:25, delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent (250 ok)")),
            None
        );
        assert_eq!(
            f.line(&line("cleanup", &format!("BBB2: message-id=<{ID}>"))),
            Some("accepted by Postfix: queue ID BBB2".into())
        );
        assert!(!f.done());
        assert_eq!(
            f.line(&line("smtp", "BBB2: to=<a@example.org>, relay=relayhost[10.0.0.5]:587, delay=0.4, delays=0.1/0/0.2/0.1, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as X)")),
            Some("to=<a@example.org>: sent (2.0.0) relay=relayhost[10.0.0.5]:587: 250 2.0.0 Ok: queued as X".into())
        );
        assert!(!f.done(), "one recipient of two");
        f.line(&line("smtp", "BBB2: to=<b@example.org>, relay=relayhost[10.0.0.5]:587, delay=0.4, delays=0.1/0/0.2/0.1, dsn=2.0.0, status=sent (250 2.0.0 Ok)"));
        assert!(f.done() && f.delivered());
        assert_eq!(f.verdict(), None);
        assert_eq!(
            f.line(&line("qmgr", "BBB2: removed")),
            Some("removed from the queue".into())
        );
    }

    #[test]
    fn a_deferred_or_stopped_message_is_not_delivered_and_says_why() {
        let mut f = Follow::new(ID, 1);
        f.line(&line("cleanup", &format!("CCC3: message-id=<{ID}>")));
        f.line(&line("smtp", "CCC3: to=<a@example.org>, relay=none, delay=30, delays=0/0/30/0, dsn=4.4.1, status=deferred (connect to relayhost[10.0.0.5]:587: Connection refused)"));
        assert!(f.done() && !f.delivered());
        assert_eq!(
            f.verdict(),
            Some("CCC3 is not delivered: <a@example.org> deferred".into())
        );

        let mut f = Follow::new(ID, 1);
        f.line(&line("cleanup", &format!("DDD4: message-id=<{ID}>")));
        f.line(&line(
            "cleanup",
            "DDD4: milter-reject: END-OF-MESSAGE from local; 5.7.1 no",
        ));
        assert!(f.done() && !f.delivered());
        assert!(f.verdict().unwrap().contains("milter-reject"));

        let f = Follow::new(ID, 1);
        assert!(!f.done());
        assert!(f.verdict().unwrap().contains("pickup"));
    }
}
