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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabel {
    pub queue: String,
}

/// Postfix queues worth watching; a growing `deferred` means the relayhost refuses or is down.
pub const QUEUES: [&str; 5] = ["maildrop", "incoming", "active", "deferred", "hold"];

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    spool_dir: PathBuf,
    pub deliveries: Family<StatusLabel, Counter>,
    pub rejects: Family<CodeLabel, Counter>,
    pub connections: Counter,
    pub sasl_failures: Counter,
    pub queue: Family<QueueLabel, Gauge>,
    pub sasl_users: Gauge,
    pub reloads: Counter,
    pub config_errors: Counter,
    pub postfix_up: Gauge,
    pub draining: Gauge,
    /// When mail was last delivered to the relayhost (or the relay started).
    last_sent: Arc<Mutex<std::time::Instant>>,
    since_last_sent: Gauge,
    oldest: Gauge,
}

impl Metrics {
    pub fn new(spool_dir: &Path) -> Self {
        let mut registry = Registry::with_prefix("smtp_relay");
        let mut m = Metrics {
            registry: Arc::default(),
            spool_dir: spool_dir.to_path_buf(),
            deliveries: Family::default(),
            rejects: Family::default(),
            connections: Counter::default(),
            sasl_failures: Counter::default(),
            queue: Family::default(),
            sasl_users: Gauge::default(),
            reloads: Counter::default(),
            config_errors: Counter::default(),
            postfix_up: Gauge::default(),
            draining: Gauge::default(),
            last_sent: Arc::new(Mutex::new(std::time::Instant::now())),
            since_last_sent: Gauge::default(),
            oldest: Gauge::default(),
        };
        registry.register(
            "deliveries",
            "Delivery attempts to the relayhost by final status (sent, deferred, bounced, expired)",
            m.deliveries.clone(),
        );
        registry.register(
            "smtpd_rejects",
            "Commands rejected by smtpd, by SMTP reply code",
            m.rejects.clone(),
        );
        registry.register(
            "smtpd_connections",
            "Client connections accepted by smtpd",
            m.connections.clone(),
        );
        registry.register(
            "sasl_auth_failures",
            "Failed SASL logins of clients",
            m.sasl_failures.clone(),
        );
        registry.register(
            "queue_messages",
            "Messages in each Postfix queue",
            m.queue.clone(),
        );
        registry.register(
            "sasl_users",
            "SASL users in the database",
            m.sasl_users.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration changes applied without restart",
            m.reloads.clone(),
        );
        registry.register(
            "config_errors",
            "Configuration changes refused because they were invalid",
            m.config_errors.clone(),
        );
        registry.register(
            "postfix_up",
            "1 while the Postfix master runs",
            m.postfix_up.clone(),
        );
        registry.register(
            "draining",
            "1 while this replica is asked to drain (scaled away or its relay deleted): out of the Service, delivering its queue",
            m.draining.clone(),
        );
        registry.register(
            "seconds_since_last_delivery",
            "Seconds since a message was last delivered to the relayhost (or the relay started): grows while mail waits on a relayhost that refuses it or is down",
            m.since_last_sent.clone(),
        );
        registry.register(
            "queue_oldest_message_age_seconds",
            "Age of the oldest message on the spool, in any queue (0 when empty)",
            m.oldest.clone(),
        );
        m.registry = Arc::new(Mutex::new(registry));
        m
    }

    /// Updates counters from one line of Postfix's mail log.
    pub fn observe_log_line(&self, line: &str) {
        let Some((program, message)) = postfix_program(line) else {
            return;
        };
        match program {
            "smtp" | "relay" | "error" | "lmtp" => {
                if let Some(status) = field(message, "status=") {
                    if status == "sent" {
                        *self.last_sent.lock().unwrap_or_else(|e| e.into_inner()) =
                            std::time::Instant::now();
                    }
                    self.deliveries
                        .get_or_create(&StatusLabel {
                            status: status.to_string(),
                        })
                        .inc();
                }
            }
            "smtpd" => {
                if message.starts_with("connect from ") {
                    self.connections.inc();
                } else if let Some(rest) = message.split_once(": reject: ").map(|(_, r)| r) {
                    // "RCPT from host[ip]: 554 5.7.1 <...>: Relay access denied; ..."
                    if let Some(code) = rest
                        .split(": ")
                        .nth(1)
                        .and_then(|r| r.split_whitespace().next())
                    {
                        self.rejects
                            .get_or_create(&CodeLabel {
                                code: code.to_string(),
                            })
                            .inc();
                    }
                } else if message.contains("authentication failed") {
                    self.sasl_failures.inc();
                }
            }
            _ => {}
        }
    }

    /// Deliveries logged as deferred so far.
    pub fn deferred(&self) -> u64 {
        self.deliveries
            .get_or_create(&StatusLabel {
                status: "deferred".into(),
            })
            .get()
    }

    pub fn encode(&self) -> String {
        let (sizes, oldest) = spool_scan(&self.spool_dir);
        for (queue, n) in QUEUES.into_iter().zip(sizes) {
            self.queue
                .get_or_create(&QueueLabel {
                    queue: queue.to_string(),
                })
                .set(n as i64);
        }
        let idle = self
            .last_sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed();
        self.since_last_sent
            .set(i64::try_from(idle.as_secs()).unwrap_or(i64::MAX));
        self.oldest.set(i64::try_from(oldest).unwrap_or(i64::MAX));
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
}

impl QueueReport {
    /// Reads the report from the text [`Metrics::encode`] serves; `None` when the page is not a
    /// relay's (no queue gauge).
    pub fn parse(page: &str) -> Option<QueueReport> {
        let mut report = QueueReport::default();
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
            } else if series == "smtp_relay_seconds_since_last_delivery" {
                report.seconds_since_delivery = n;
            } else if series == "smtp_relay_queue_oldest_message_age_seconds" {
                report.oldest_seconds = n;
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

/// `postfix/smtpd[123]: message` → ("smtpd", "message"), wherever the line's prefix ends.
fn postfix_program(line: &str) -> Option<(&str, &str)> {
    let start = line.find("postfix")?;
    let rest = &line[start..];
    let (tag, message) = rest.split_once(": ")?;
    let program = tag.rsplit('/').next()?.split('[').next()?;
    Some((program, message))
}

fn field<'a>(message: &'a str, key: &str) -> Option<&'a str> {
    let at = message.find(key)? + key.len();
    message[at..].split([' ', ',']).next()
}

/// Messages in each of Postfix's queues under `spool`, in the order of [`QUEUES`].
pub fn queue_sizes(spool: &Path) -> [usize; 5] {
    spool_scan(spool).0
}

/// One walk of the spool: the messages in each queue (in the order of [`QUEUES`]), and the
/// seconds since the oldest of them was queued (its queue file's modification time, which
/// Postfix sets when the message arrives and keeps while it waits), 0 when empty.
fn spool_scan(spool: &Path) -> ([usize; 5], u64) {
    let scans = QUEUES.map(|q| scan(&spool.join(q)));
    let oldest = scans
        .iter()
        .filter_map(|(_, t)| *t)
        .min()
        .and_then(|t| t.elapsed().ok())
        .map_or(0, |age| age.as_secs());
    (scans.map(|(n, _)| n), oldest)
}

/// The number of queue files under `dir`, and the oldest one's modification time.
fn scan(dir: &Path) -> (usize, Option<std::time::SystemTime>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, None);
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => scan(&e.path()),
            Ok(t) if t.is_file() => (1, e.metadata().and_then(|m| m.modified()).ok()),
            _ => (0, None),
        })
        .fold((0, None), |(n, oldest), (m, t)| {
            (n + m, oldest.into_iter().chain(t).min())
        })
}

/// Serves `/metrics` until the task is dropped.
pub async fn serve(metrics: Metrics, listen: std::net::SocketAddr) -> std::io::Result<()> {
    use axum::{routing::get, Router};
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let m = metrics.clone();
            async move {
                (
                    [(
                        "content-type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    m.encode(),
                )
            }
        }),
    );
    axum::serve(bind(listen).await?, app).await
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
        assert_eq!(
            QueueReport::parse(&m.encode()),
            Some(QueueReport {
                draining: false,
                queued: 4,
                deferred: 2,
                hold: 1,
                seconds_since_delivery: 0,
                oldest_seconds: 0,
            })
        );
        m.draining.set(1);
        assert!(QueueReport::parse(&m.encode()).is_some_and(|r| r.draining));
        // The oldest message's age is its queue file's.
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(dir.path().join("deferred/A/q1"))
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
        let oldest = QueueReport::parse(&m.encode()).unwrap().oldest_seconds;
        assert!((3600..3700).contains(&oldest), "{oldest}");
        assert_eq!(QueueReport::parse("other_metric 1\n"), None);
    }

    #[test]
    fn counts_from_log_lines() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("deferred/A")).unwrap();
        std::fs::write(dir.path().join("deferred/A/ABC123"), "").unwrap();
        let m = Metrics::new(dir.path());
        m.observe_log_line(
            "Nov 25 02:30:00 relay postfix/smtpd[12]: connect from unknown[127.0.0.3]",
        );
        m.observe_log_line("Nov 25 02:30:00 relay postfix/smtpd[12]: NOQUEUE: reject: RCPT from unknown[127.0.0.3]: 554 5.7.1 <a@b.c>: Relay access denied; from=<x@example.net> to=<a@b.c> proto=ESMTP helo=<t>");
        m.observe_log_line("Nov 25 02:30:01 relay postfix/smtp[13]: 4XYZ: to=<a@example.net>, relay=127.0.0.1[127.0.0.1]:2526, delay=0.1, status=sent (250 Ok)");
        m.observe_log_line("Nov 25 02:30:01 relay postfix/relay[13]: 4XYZ: to=<b@example.net>, relay=none, delay=0.1, status=deferred (connect refused)");
        m.observe_log_line("Nov 25 02:30:02 relay postfix/smtpd[12]: warning: unknown[127.0.0.3]: SASL PLAIN authentication failed: authentication failure");
        let text = m.encode();
        for expected in [
            "smtp_relay_smtpd_connections_total 1",
            "smtp_relay_smtpd_rejects_total{code=\"554\"} 1",
            "smtp_relay_deliveries_total{status=\"sent\"} 1",
            "smtp_relay_deliveries_total{status=\"deferred\"} 1",
            "smtp_relay_sasl_auth_failures_total 1",
            "smtp_relay_queue_messages{queue=\"deferred\"} 1",
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
    }
}
