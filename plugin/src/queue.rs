//! The mail queued across a relay's replicas, as each pod's Postfix lists it (`postqueue -j`:
//! one JSON object per message), filtered and shown: pure, so what a user sees is tested
//! without a cluster.

use serde::{Deserialize, Serialize};

/// One queued message, as `postqueue -j` gives it, and the pod that holds it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Message {
    /// The relay pod whose spool holds it (not Postfix's: added here).
    #[serde(default)]
    pub pod: String,
    /// `active`, `deferred`, `hold`, `incoming` or `maildrop`.
    pub queue_name: String,
    pub queue_id: String,
    /// When it arrived (seconds since the epoch).
    pub arrival_time: i64,
    pub message_size: u64,
    pub sender: String,
    pub recipients: Vec<Recipient>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Recipient {
    pub address: String,
    /// Why the last attempt for this recipient failed, in Postfix's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_reason: Option<String>,
}

/// Which messages to show; every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// A substring of the sender, case-insensitive.
    pub sender: Option<String>,
    /// A substring of a recipient, case-insensitive.
    pub recipient: Option<String>,
    /// Arrived at least this many seconds ago.
    pub older_than: Option<i64>,
    /// Only these queues (`deferred`, `hold`, ...); empty: every one.
    pub queues: Vec<String>,
}

impl Filter {
    pub fn matches(&self, m: &Message, now: i64) -> bool {
        let has = |text: &str, part: &str| text.to_lowercase().contains(&part.to_lowercase());
        self.sender.as_deref().is_none_or(|s| has(&m.sender, s))
            && self
                .recipient
                .as_deref()
                .is_none_or(|r| m.recipients.iter().any(|x| has(&x.address, r)))
            && self.older_than.is_none_or(|s| now - m.arrival_time >= s)
            && (self.queues.is_empty() || self.queues.contains(&m.queue_name))
    }
}

/// The messages of one pod's `postqueue -j` output; a line that is not a message is an error
/// naming the pod.
pub fn parse(pod: &str, output: &str) -> Result<Vec<Message>, String> {
    output
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            serde_json::from_str::<Message>(line)
                .map(|m| Message {
                    pod: pod.to_string(),
                    ..m
                })
                .map_err(|e| format!("{pod}: postqueue -j gave a line that is not a message ({e})"))
        })
        .collect()
}

/// What `queue hold|release|delete|retry` does to the messages it selected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Hold,
    Release,
    Delete,
    Retry,
}

/// Queue IDs per `postsuper` command line (each is at most 20 characters or so).
const IDS_PER_COMMAND: usize = 100;

impl Action {
    /// The commands that do it to `ids`, in a pod whose Postfix configuration is in `dir`, and
    /// how many IDs each names: `postsuper -h/-H/-d` by chunks, `postqueue -i` (one ID each) to
    /// retry.
    pub fn commands(self, dir: &str, ids: &[&str]) -> Vec<(Vec<String>, usize)> {
        let flag = match self {
            Action::Hold => "-h",
            Action::Release => "-H",
            Action::Delete => "-d",
            Action::Retry => {
                return ids
                    .iter()
                    .map(|id| {
                        let command = ["postqueue", "-c", dir, "-i", id].map(String::from);
                        (command.to_vec(), 1)
                    })
                    .collect();
            }
        };
        ids.chunks(IDS_PER_COMMAND)
            .map(|chunk| {
                let mut command: Vec<String> = ["postsuper", "-c", dir].map(String::from).to_vec();
                for id in chunk {
                    command.extend([flag.to_string(), (*id).to_string()]);
                }
                (command, chunk.len())
            })
            .collect()
    }

    /// What it did, in the past tense.
    pub fn done(self) -> &'static str {
        match self {
            Action::Hold => "put on hold",
            Action::Release => "released from hold",
            Action::Delete => "deleted",
            Action::Retry => "scheduled for delivery now",
        }
    }
}

/// The messages an action applies to: those named by queue ID (every ID must be queued), else
/// those the filter matches, which must then say something (or `all`): an action never applies
/// to the whole queue by accident.
pub fn select<'a>(
    messages: &'a [Message],
    ids: &[String],
    filter: &Filter,
    all: bool,
    now: i64,
) -> Result<Vec<&'a Message>, String> {
    if ids.is_empty() && *filter == Filter::default() && !all {
        return Err(
            "name queue IDs, a filter (--sender, --recipient, --older-than, --deferred, --hold) or --all"
                .into(),
        );
    }
    let missing: Vec<&str> = ids
        .iter()
        .filter(|id| !messages.iter().any(|m| &m.queue_id == *id))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "not queued on any replica: {} (kubectl smtp-relay queue list shows what is)",
            missing.join(", ")
        ));
    }
    Ok(messages
        .iter()
        .filter(|m| ids.is_empty() || ids.contains(&m.queue_id))
        .filter(|m| filter.matches(m, now))
        .collect())
}

/// A duration as the plugin takes it: a whole number and `s`, `m`, `h` or `d`.
pub fn seconds(text: &str) -> Result<i64, String> {
    let split = text.len().saturating_sub(1);
    let (number, unit) = text.split_at(split);
    let n: i64 = number
        .parse()
        .map_err(|_| format!("{text:?}: a whole number and s, m, h or d (30m, 2h, 1d)"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit is s, m, h or d (30m, 2h, 1d)")),
    };
    Ok(n.saturating_mul(unit))
}

/// The messages as a table, oldest first, times relative to `now`.
pub fn text(messages: &[Message], now: i64) -> String {
    if messages.is_empty() {
        return "no message queued\n".into();
    }
    let mut sorted: Vec<&Message> = messages.iter().collect();
    sorted.sort_by_key(|m| (m.arrival_time, m.pod.clone(), m.queue_id.clone()));
    let rows: Vec<[String; 8]> = sorted
        .iter()
        .map(|m| {
            let reasons: Vec<&str> = m
                .recipients
                .iter()
                .filter_map(|r| r.delay_reason.as_deref())
                .collect();
            [
                m.pod.clone(),
                m.queue_id.clone(),
                m.queue_name.clone(),
                m.message_size.to_string(),
                crate::report::ago_seconds(now - m.arrival_time),
                if m.sender.is_empty() {
                    "<>".into()
                } else {
                    m.sender.clone()
                },
                m.recipients
                    .iter()
                    .map(|r| r.address.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                reasons.first().copied().unwrap_or_default().to_string(),
            ]
        })
        .collect();
    let mut out = crate::report::table(
        &[
            "POD",
            "QUEUE ID",
            "QUEUE",
            "SIZE",
            "ARRIVED",
            "SENDER",
            "RECIPIENTS",
            "LAST ERROR",
        ],
        &rows,
    );
    out += &format!("{} message(s)\n", messages.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // As Postfix 3.7's postqueue -j writes them.
    const TWO: &str = r#"{"queue_name": "deferred", "queue_id": "4ZxK1Q2b3cz9sT", "arrival_time": 1000, "message_size": 1234, "forced_expire": false, "sender": "app@client.test", "recipients": [{"address": "someone@example.net", "delay_reason": "connect to 10.88.0.1[10.88.0.1]:17100: Connection refused"}]}
{"queue_name": "hold", "queue_id": "4ZxK1Q2b3dz9sU", "arrival_time": 1500, "message_size": 99, "forced_expire": false, "sender": "", "recipients": [{"address": "Other@Example.net"}]}
"#;

    #[test]
    fn postqueues_json_lines_are_read_with_their_pod() {
        let messages = parse("smtp-relay-0", TWO).unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].pod, "smtp-relay-0");
        assert_eq!(messages[1].recipients[0].delay_reason, None);
        let err = parse("smtp-relay-1", "postqueue: fatal: no such file\n").unwrap_err();
        assert!(err.starts_with("smtp-relay-1: postqueue -j gave"), "{err}");
        assert_eq!(parse("p", "").unwrap(), vec![]);
    }

    #[test]
    fn filters_combine() {
        let messages = parse("p", TWO).unwrap();
        let shown = |f: Filter| -> Vec<String> {
            messages
                .iter()
                .filter(|m| f.matches(m, 2_000))
                .map(|m| m.queue_name.clone())
                .collect()
        };
        assert_eq!(shown(Filter::default()), ["deferred", "hold"]);
        let deferred = Filter {
            queues: vec!["deferred".into()],
            ..Filter::default()
        };
        assert_eq!(shown(deferred), ["deferred"]);
        let to_other = Filter {
            recipient: Some("other@example".into()),
            ..Filter::default()
        };
        assert_eq!(shown(to_other), ["hold"]);
        let old = Filter {
            older_than: Some(seconds("10m").unwrap()),
            ..Filter::default()
        };
        assert_eq!(shown(old), ["deferred"]);
        let from_app = Filter {
            sender: Some("APP@".into()),
            queues: vec!["hold".into()],
            ..Filter::default()
        };
        assert!(shown(from_app).is_empty());
    }

    #[test]
    fn actions_name_the_ids_and_never_the_whole_queue_by_accident() {
        let messages = parse("p", TWO).unwrap();
        let ids = |v: Vec<&Message>| {
            v.into_iter()
                .map(|m| m.queue_id.clone())
                .collect::<Vec<_>>()
        };
        let err = select(&messages, &[], &Filter::default(), false, 0).unwrap_err();
        assert!(err.contains("--all"), "{err}");
        assert_eq!(
            ids(select(&messages, &[], &Filter::default(), true, 0).unwrap()).len(),
            2
        );
        let one = vec!["4ZxK1Q2b3dz9sU".to_string()];
        assert_eq!(
            ids(select(&messages, &one, &Filter::default(), false, 0).unwrap()),
            one
        );
        let err = select(&messages, &["NOPE".into()], &Filter::default(), false, 0).unwrap_err();
        assert!(err.starts_with("not queued on any replica: NOPE"), "{err}");
        let held = Filter {
            queues: vec!["hold".into()],
            ..Filter::default()
        };
        assert_eq!(ids(select(&messages, &[], &held, false, 0).unwrap()), one);
    }

    #[test]
    fn actions_are_postfixs_own_commands() {
        let dir = "/run/smtp-relay/postfix";
        let owned = |args: &[&str]| args.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        assert_eq!(
            Action::Hold.commands(dir, &["A1", "B2"]),
            [(owned(&["postsuper", "-c", dir, "-h", "A1", "-h", "B2"]), 2)]
        );
        assert_eq!(Action::Release.commands(dir, &["A1"])[0].0[3], "-H");
        assert_eq!(Action::Delete.commands(dir, &["A1"])[0].0[3], "-d");
        assert_eq!(
            Action::Retry.commands(dir, &["A1", "B2"]),
            [
                (owned(&["postqueue", "-c", dir, "-i", "A1"]), 1),
                (owned(&["postqueue", "-c", dir, "-i", "B2"]), 1)
            ]
        );
        let many: Vec<String> = (0..250).map(|i| format!("ID{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let chunks = Action::Delete.commands(dir, &many);
        assert_eq!(chunks.len(), 3);
        assert_eq!((chunks[2].0.len(), chunks[2].1), (3 + 2 * 50, 50));
    }

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(seconds("90s"), Ok(90));
        assert_eq!(seconds("2h"), Ok(7200));
        assert!(seconds("2").unwrap_err().contains("whole number"));
        assert!(seconds("2w").unwrap_err().contains("the unit"));
    }

    #[test]
    fn the_table_lists_oldest_first_with_the_last_error() {
        let mut messages = parse("smtp-relay-1", TWO).unwrap();
        messages.reverse();
        assert_eq!(
            text(&messages, 2_000),
            "  POD           QUEUE ID        QUEUE     SIZE  ARRIVED  SENDER           RECIPIENTS           LAST ERROR
  smtp-relay-1  4ZxK1Q2b3cz9sT  deferred  1234  16m ago  app@client.test  someone@example.net  connect to 10.88.0.1[10.88.0.1]:17100: Connection refused
  smtp-relay-1  4ZxK1Q2b3dz9sU  hold      99    8m ago   <>               Other@Example.net
2 message(s)
"
        );
        assert_eq!(text(&[], 0), "no message queued\n");
    }
}
