//! One relay's report, built from what the API server holds (the SmtpRelay, its status as the
//! operator wrote it, its Warning Events) and rendered as text or serialized: pure, so what a
//! user sees is tested without a cluster.

use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use serde::Serialize;
use smtp_relay_operator::floor::crd::{PodQueueStatus, SmtpRelay};

/// Warning Events shown per relay, newest first.
pub const EVENTS_SHOWN: usize = 5;

/// What `kubectl smtp-relay status` says about one relay.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub name: String,
    pub namespace: String,
    /// `True`, `False` or `Unknown`, and the reason.
    pub ready: String,
    pub ready_reason: String,
    pub replicas: i32,
    pub ready_replicas: i32,
    pub desired_replicas: i32,
    pub mode: Option<String>,
    /// Where a sandboxed relay's mail goes instead of its recipients.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    pub endpoint: Option<String>,
    pub relayhost: String,
    /// Delivering, and every condition that is not in its healthy state.
    pub attention: Vec<Condition>,
    pub messages: Option<u64>,
    pub deferred: Option<u64>,
    pub oldest_message_time: Option<Time>,
    pub last_delivery_time: Option<Time>,
    pub relayhost_login: Option<String>,
    pub pods: Vec<PodQueueStatus>,
    /// The newest [`EVENTS_SHOWN`] Warning Events about the relay.
    pub warnings: Vec<Warning>,
    /// The certificate the relay serves to clients' STARTTLS, with SASL users or a TLS Secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<Certificate>,
}

/// The serving certificate, as its Secret (`<name>-tls`, the pods' copy) holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Certificate {
    pub secret: String,
    /// When it expires (seconds since the epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_after: Option<i64>,
    /// Why it could not be read (your RBAC on Secrets, a Secret not there yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
}

/// A Warning Event, as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Warning {
    /// When it last happened (seconds since the epoch).
    pub last_seen: i64,
    pub reason: String,
    pub message: String,
    pub count: i32,
}

/// The status a condition has when nothing needs attention: False for the ones that are
/// abnormal when True (kstatus), True for the rest.
fn healthy_status(type_: &str) -> &'static str {
    match type_ {
        "Stalled" | "Reconciling" | "Draining" | "Progressing" => "False",
        _ => "True",
    }
}

impl Report {
    /// The report of `relay`, with the Warning Events about it (any order) and its serving
    /// certificate as read.
    pub fn new(relay: &SmtpRelay, events: &[Event], certificate: Option<Certificate>) -> Report {
        let status = relay.status.clone().unwrap_or_default();
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
        let attention = status
            .conditions
            .iter()
            .filter(|c| c.type_ != "Ready")
            .filter(|c| c.type_ == "Delivering" || c.status != healthy_status(&c.type_))
            .cloned()
            .collect();
        let queue = status.queue.as_ref();
        let rh = &relay.spec.relayhost;
        Report {
            name: relay.name_any(),
            namespace: relay.namespace().unwrap_or_default(),
            ready: ready.map_or("Unknown", |c| c.status.as_str()).into(),
            ready_reason: ready.map_or("NotObserved", |c| c.reason.as_str()).into(),
            replicas: status.replicas,
            ready_replicas: status.ready_replicas,
            desired_replicas: relay.spec.replicas,
            mode: status.mode.clone(),
            sandbox: status.sandbox.clone(),
            endpoint: status.endpoint.clone(),
            relayhost: format!("{}:{}", rh.host, rh.port),
            attention,
            messages: queue.map(|q| q.messages),
            deferred: queue.map(|q| q.deferred),
            oldest_message_time: queue.and_then(|q| q.oldest_message_time.clone()),
            last_delivery_time: queue.and_then(|q| q.last_delivery_time.clone()),
            relayhost_login: queue.map(|q| q.relayhost_login.clone()),
            pods: queue.map(|q| q.pods.clone()).unwrap_or_default(),
            warnings: warnings(events),
            certificate,
        }
    }

    /// The report as text, times relative to `now` (seconds since the epoch).
    pub fn text(&self, now: i64) -> String {
        let mut out = format!(
            "SmtpRelay {}/{}: Ready={} ({}), {}/{} replicas ready",
            self.namespace,
            self.name,
            self.ready,
            self.ready_reason,
            self.ready_replicas,
            self.desired_replicas
        );
        if let Some(mode) = &self.mode {
            out += &format!(", mode {mode}");
        }
        out += "\n";
        if let Some(sandbox) = &self.sandbox {
            out += &format!("  sandbox    {sandbox}: no mail reaches its recipients\n");
        }
        if let Some(endpoint) = &self.endpoint {
            out += &format!("  endpoint   {endpoint}\n");
        }
        out += &format!("  relayhost  {}", self.relayhost);
        if let Some(login) = self.relayhost_login.as_deref().filter(|l| *l != "Unknown") {
            out += &format!(", last login {login}");
        }
        match &self.last_delivery_time {
            Some(t) => out += &format!(", last delivery {}", ago(now, t)),
            None if self.messages.is_some() => out += ", no delivery since the pods started",
            None => {}
        }
        out += "\n";
        if let (Some(messages), Some(deferred)) = (self.messages, self.deferred) {
            out += &format!("  queue      {messages} message(s), {deferred} deferred");
            if let Some(t) = &self.oldest_message_time {
                out += &format!(", oldest {}", ago(now, t));
            }
            out += "\n";
        }
        if let Some(c) = &self.certificate {
            out += &format!("  tls        {}", c.secret);
            match (c.not_after, &c.unreadable) {
                (Some(t), _) => {
                    let when = jiff::Timestamp::from_second(t)
                        .map(|t| t.to_string())
                        .unwrap_or_default();
                    let left = t - now;
                    if left < 0 {
                        out += &format!(", EXPIRED {when} ({} ago)", days(-left));
                    } else {
                        out += &format!(", valid until {when} (in {})", days(left));
                    }
                }
                (None, Some(why)) => out += &format!(" (not readable: {why})"),
                (None, None) => out += " (no certificate in it)",
            }
            out += "\n";
        }
        out += "\nConditions:\n";
        for c in &self.attention {
            out += &format!("  {}={} {}: {}\n", c.type_, c.status, c.reason, c.message);
        }
        if !self.pods.is_empty() {
            out += "\nReplicas:\n";
            let rows: Vec<[String; 6]> = self.pods.iter().map(|p| pod_row(p, now)).collect();
            out += &table(
                &["POD", "QUEUED", "DEFERRED", "OLDEST", "CONFIG", "NOTE"],
                &rows,
            );
        }
        if !self.warnings.is_empty() {
            out += "\nRecent warnings:\n";
            for w in &self.warnings {
                let times = if w.count > 1 {
                    format!(" (x{})", w.count)
                } else {
                    String::new()
                };
                out += &format!(
                    "  {} {}{times}: {}\n",
                    ago_seconds(now - w.last_seen),
                    w.reason,
                    w.message
                );
            }
        }
        out
    }
}

/// One replica's row: its queue, the configuration it runs, and what is wrong with it.
fn pod_row(p: &PodQueueStatus, now: i64) -> [String; 6] {
    let number = |n: Option<u64>| n.map_or_else(|| "-".to_string(), |n| n.to_string());
    let mut notes = Vec::new();
    if let Some(why) = &p.unreadable {
        notes.push(format!("unreadable: {why}"));
    }
    if let Some(d) = &p.delivery_problem {
        notes.push(format!("delivery failing ({}): {}", d.reason, d.detail));
    }
    if let Some(r) = &p.config_refused {
        notes.push(format!("refused configuration {}: {}", r.revision, r.error));
    }
    if p.spool_nearly_full == Some(true) {
        notes.push("spool nearly full".into());
    }
    if p.root_node_uid == Some(0) {
        notes.push("root is the node's root".into());
    }
    [
        p.pod.clone(),
        number(p.messages),
        number(p.deferred),
        p.oldest_message_time
            .as_ref()
            .map_or_else(|| "-".to_string(), |t| ago(now, t)),
        // The first 12 characters, as the relay's log shows a revision.
        p.config_revision
            .as_deref()
            .map_or_else(|| "-".into(), |r| r.chars().take(12).collect()),
        notes.join("; "),
    ]
}

/// Columns padded to their widest cell, the last one as it is.
pub(crate) fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::from("  ");
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == N {
                text += cell;
            } else {
                text += &format!("{cell:<width$}  ", width = widths[i]);
            }
        }
        text.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out += &line(row.iter().map(String::as_str).collect());
    }
    out
}

/// The newest Warning Events first, at most [`EVENTS_SHOWN`].
fn warnings(events: &[Event]) -> Vec<Warning> {
    let mut shown: Vec<Warning> = events
        .iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .map(|e| Warning {
            last_seen: e
                .last_timestamp
                .as_ref()
                .map(|t| t.0.as_second())
                .or_else(|| e.event_time.as_ref().map(|t| t.0.as_second()))
                .unwrap_or_default(),
            reason: e.reason.clone().unwrap_or_default(),
            message: e.message.clone().unwrap_or_default(),
            count: e.count.unwrap_or(1),
        })
        .collect();
    shown.sort_by_key(|w| std::cmp::Reverse(w.last_seen));
    shown.truncate(EVENTS_SHOWN);
    shown
}

/// A duration in whole days, hours under two days.
fn days(seconds: i64) -> String {
    if seconds < 2 * 86_400 {
        format!("{}h", seconds / 3600)
    } else {
        format!("{}d", seconds / 86_400)
    }
}

/// How long before `now` `t` was, as kubectl shows ages.
fn ago(now: i64, t: &Time) -> String {
    ago_seconds(now - t.0.as_second())
}

pub(crate) fn ago_seconds(seconds: i64) -> String {
    let s = seconds.max(0);
    let text = if s < 120 {
        format!("{s}s")
    } else if s < 7200 {
        format!("{}m", s / 60)
    } else if s < 2 * 86_400 {
        format!("{}h", s / 3600)
    } else {
        format!("{}d", s / 86_400)
    };
    format!("{text} ago")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ObjectReference;
    use smtp_relay_operator::floor::crd::{
        PodConfigRefused, PodDeliveryProblem, QueueStatus, SmtpRelayStatus,
    };

    fn t(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).unwrap())
    }

    fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: t(0),
            observed_generation: Some(1),
        }
    }

    fn event(reason: &str, type_: &str, at: i64, count: i32) -> Event {
        Event {
            type_: Some(type_.into()),
            reason: Some(reason.into()),
            message: Some(format!("{reason} happened")),
            last_timestamp: Some(t(at)),
            count: Some(count),
            involved_object: ObjectReference::default(),
            ..Event::default()
        }
    }

    fn relay() -> SmtpRelay {
        let mut r: SmtpRelay = serde_yaml::from_str(
            "apiVersion: smtprelay.dev/v1alpha1\nkind: SmtpRelay\nmetadata: {name: smtp-relay, namespace: mail}\nspec:\n  domain: example.net\n  replicas: 2\n  relayhost: {host: mx.example.net, port: 587}\n",
        )
        .unwrap();
        r.status = Some(SmtpRelayStatus {
            conditions: vec![
                condition("Ready", "True", "RelayReady", "every pod is ready"),
                condition(
                    "Delivering",
                    "False",
                    "RelayhostUnreachable",
                    "smtp-relay-0: connect to mx.example.net: Connection refused",
                ),
                condition("ConfigValid", "True", "Valid", "accepted"),
                condition("Stalled", "False", "NotStalled", ""),
                condition(
                    "UserNamespaced",
                    "False",
                    "SharesNodeUsers",
                    "spec.hostUsers is true",
                ),
            ],
            replicas: 2,
            ready_replicas: 2,
            mode: Some("Strict".into()),
            endpoint: Some("smtp-relay.mail.svc:25".into()),
            queue: Some(QueueStatus {
                messages: 3,
                deferred: 2,
                oldest_message_time: Some(t(1_000)),
                relayhost_login: "Accepted".into(),
                pods: vec![
                    PodQueueStatus {
                        pod: "smtp-relay-0".into(),
                        messages: Some(3),
                        deferred: Some(2),
                        oldest_message_time: Some(t(1_000)),
                        config_revision: Some(
                            "07f089ad55cb43f5789700788d05d674a16e11b9daac8a6e1658a93578995e".into(),
                        ),
                        delivery_problem: Some(PodDeliveryProblem {
                            reason: "connect".into(),
                            detail: "Connection refused".into(),
                        }),
                        config_refused: Some(PodConfigRefused {
                            revision: "b1".into(),
                            error: "bad".into(),
                        }),
                        root_node_uid: Some(0),
                        ..PodQueueStatus::default()
                    },
                    PodQueueStatus {
                        pod: "smtp-relay-1".into(),
                        unreadable: Some("no answer in 3s".into()),
                        ..PodQueueStatus::default()
                    },
                ],
                ..QueueStatus::default()
            }),
            ..SmtpRelayStatus::default()
        });
        r
    }

    #[test]
    fn the_text_shows_what_needs_attention_per_replica() {
        let events = [
            event("DeliveryFailing", "Warning", 1_500, 3),
            event("ConfigApplied", "Normal", 1_550, 1),
            event("ConfigRefused", "Warning", 1_560, 1),
        ];
        let certificate = Certificate {
            secret: "smtp-relay-tls".into(),
            not_after: Some(1_600 + 89 * 86_400 + 100),
            unreadable: None,
        };
        let text = Report::new(&relay(), &events, Some(certificate)).text(1_600);
        assert_eq!(
            text,
            "SmtpRelay mail/smtp-relay: Ready=True (RelayReady), 2/2 replicas ready, mode Strict
  endpoint   smtp-relay.mail.svc:25
  relayhost  mx.example.net:587, last login Accepted, no delivery since the pods started
  queue      3 message(s), 2 deferred, oldest 10m ago
  tls        smtp-relay-tls, valid until 1970-03-31T00:28:20Z (in 89d)

Conditions:
  Delivering=False RelayhostUnreachable: smtp-relay-0: connect to mx.example.net: Connection refused
  UserNamespaced=False SharesNodeUsers: spec.hostUsers is true

Replicas:
  POD           QUEUED  DEFERRED  OLDEST   CONFIG        NOTE
  smtp-relay-0  3       2         10m ago  07f089ad55cb  delivery failing (connect): Connection refused; refused configuration b1: bad; root is the node's root
  smtp-relay-1  -       -         -        -             unreadable: no answer in 3s

Recent warnings:
  40s ago ConfigRefused: ConfigRefused happened
  100s ago DeliveryFailing (x3): DeliveryFailing happened
"
        );
    }

    #[test]
    fn a_relay_without_status_says_so() {
        let mut r = relay();
        r.status = None;
        let report = Report::new(&r, &[], None);
        assert_eq!(
            (report.ready.as_str(), report.ready_reason.as_str()),
            ("Unknown", "NotObserved")
        );
        assert_eq!(
            report.text(0),
            "SmtpRelay mail/smtp-relay: Ready=Unknown (NotObserved), 0/2 replicas ready\n  relayhost  mx.example.net:587\n\nConditions:\n"
        );
    }

    #[test]
    fn a_sandboxed_relay_says_where_its_mail_goes() {
        let mut r = relay();
        if let Some(s) = r.status.as_mut() {
            s.sandbox = Some("CatchAll qa@example.net".into());
        }
        let text = Report::new(&r, &[], None).text(1_600);
        assert!(
            text.contains(
                "\n  sandbox    CatchAll qa@example.net: no mail reaches its recipients\n"
            ),
            "{text}"
        );
        assert!(!Report::new(&relay(), &[], None)
            .text(1_600)
            .contains("sandbox"));
    }

    #[test]
    fn at_most_the_newest_warnings_are_kept() {
        let events: Vec<Event> = (0..9)
            .map(|i| event(&format!("W{i}"), "Warning", i, 1))
            .collect();
        let kept: Vec<String> = Report::new(&relay(), &events, None)
            .warnings
            .into_iter()
            .map(|w| w.reason)
            .collect();
        assert_eq!(kept, ["W8", "W7", "W6", "W5", "W4"]);
    }

    #[test]
    fn the_json_form_names_the_fields_as_the_api_does() {
        let json = serde_json::to_value(Report::new(&relay(), &[], None)).unwrap();
        assert_eq!(json["readyReplicas"], 2);
        assert_eq!(json["pods"][0]["rootNodeUid"], 0);
        assert_eq!(json["attention"][0]["type"], "Delivering");
    }
}
