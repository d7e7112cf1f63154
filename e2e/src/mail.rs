//! The world outside a relay pod: an `smtp-sink` that records every message, an upstream relay
//! (a second `smtp-relay run`, requiring AUTH) in front of it, and SMTP clients that speak from a
//! chosen loopback address. Every process is stopped by a Drop guard, also when a test panics;
//! every wait polls with a deadline.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, SmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::Address;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::secret_volume::SecretVolume;
use crate::tools::{poll, stop_child, target_bin};

/// How long a mail server may take to start, or a message to arrive.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Hands out TCP ports on 127.0.0.1 that nothing listens on, from a per-process block of 100
/// within `first .. first + blocks * 100`, below the kernel's ephemeral range (32768+), so
/// parallel test processes (and the relays' outgoing connections) never take the same port.
pub struct PortRange {
    first: u16,
    blocks: u16,
    next: AtomicU16,
}

impl PortRange {
    pub const fn new(first: u16, blocks: u16) -> PortRange {
        PortRange {
            first,
            blocks,
            next: AtomicU16::new(0),
        }
    }

    /// The next port of this process's block that nothing listens on.
    pub fn free_port(&self) -> u16 {
        let base = self.first + (std::process::id() % self.blocks as u32) as u16 * 100;
        let end = self.first + self.blocks * 100;
        let _ = self
            .next
            .compare_exchange(0, base, Ordering::SeqCst, Ordering::SeqCst);
        loop {
            let port = self.next.fetch_add(1, Ordering::SeqCst);
            assert!(port < end, "ran out of test ports");
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
}

/// A TCP port on 127.0.0.1 that nothing listens on, from 12000-17999: apart from the image
/// tests' range (20000-31999), which may run at the same time.
pub fn free_port() -> u16 {
    static PORTS: PortRange = PortRange::new(12_000, 60);
    PORTS.free_port()
}

/// A port from [`free_port`]'s range that is also free on `ip` (another address of this
/// machine). Below the ephemeral range on purpose: a listener stopped and started again on it
/// (a relayhost going down and up) never finds it taken by an outgoing connection.
pub fn free_port_at(ip: Ipv4Addr) -> u16 {
    loop {
        let port = free_port();
        if TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
}

/// A listener on a port of [`free_port`]'s range on `ip`, kept: for a server that binds its
/// own port. [`free_port_at`] finds a port free by binding it and closing the socket at once,
/// but while another thread of the test process spawns a child (a relay, a Postfix command),
/// the child holds a copy of every open socket from its fork until its exec, so the probe's
/// listener may still be listening when the caller binds the port again: "Address already in
/// use" (one test of `image/tests/oauth2.rs` in CI). Taken here, the port is bound once and
/// kept; one found taken anyway is said on standard error, with its holder (`ss`), and the
/// next one is taken.
pub fn bind_free_at(ip: Ipv4Addr) -> std::io::Result<TcpListener> {
    loop {
        let port = free_port_at(ip);
        match TcpListener::bind((ip, port)) {
            Ok(listener) => return Ok(listener),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                let holder = std::process::Command::new("ss")
                    .args(["-tanpH", &format!("sport = :{port}")])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                    .unwrap_or_default();
                eprintln!("{ip}:{port} was taken after it was found free ({holder}); the next one");
            }
            Err(e) => return Err(e),
        }
    }
}

/// True once `addr` accepts a connection and greets with 220.
pub fn smtp_ready(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    let ok = BufReader::new(&stream).read_line(&mut line).is_ok() && line.starts_with("220");
    let _ = stream.write_all(b"QUIT\r\n");
    ok
}

// ---------------------------------------------------------------------------------------------
// The sink.

/// One message as the sink recorded it: `smtp-sink -d` writes the envelope as `X-Client-Addr`,
/// `X-Mail-Args` and `X-Rcpt-Args` headers above the message.
#[derive(Debug, Clone)]
pub struct Dumped {
    pub client: String,
    pub from: String,
    pub rcpts: Vec<String>,
    pub text: String,
}

impl Dumped {
    /// The envelope and the header section (everything above the first empty line).
    pub fn headers(&self) -> String {
        let mut out = Vec::new();
        for line in self.text.lines() {
            if line.trim().is_empty() {
                break;
            }
            out.push(line);
        }
        out.join("\n")
    }
}

/// Postfix's `smtp-sink` (on 127.0.0.1 unless [`Sink::start_at`] says otherwise), writing each
/// transaction to its own file.
pub struct Sink {
    child: Child,
    pub addr: SocketAddr,
    dir: TempDir,
}

impl Sink {
    /// An smtp-sink on a fresh port, listening within [`DEADLINE`].
    pub fn start() -> Result<Sink, String> {
        Self::start_on(free_port(), DEADLINE)
    }

    /// An smtp-sink on 127.0.0.1:`port`, listening within `timeout`, with no dump yet.
    pub fn start_on(port: u16, timeout: Duration) -> Result<Sink, String> {
        Self::start_at(SocketAddr::from(([127, 0, 0, 1], port)), timeout)
    }

    /// An smtp-sink on `addr`, any address of this machine: e.g. the node IP, which pods
    /// reach through the bridge while loopback stays theirs. Listening within `timeout`.
    pub fn start_at(addr: SocketAddr, timeout: Duration) -> Result<Sink, String> {
        let dir = tempfile::Builder::new()
            .prefix("sink-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        // smtp-sink writes as the postfix user.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777))
            .map_err(|e| e.to_string())?;
        let child = Command::new("smtp-sink")
            .args(["-u", "postfix", "-d"])
            .arg(dir.path().join("m."))
            .arg(addr.to_string())
            .arg("100")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting smtp-sink (apt-get install postfix): {e}"))?;
        let mut sink = Sink { child, addr, dir };
        poll("smtp-sink to listen", timeout, || {
            if let Ok(Some(status)) = sink.child.try_wait() {
                return Some(Err(format!("smtp-sink exited: {status}")));
            }
            smtp_ready(addr).then_some(Ok(()))
        })??;
        // Nothing is cleared here: the readiness probe leaves no dump (it sends no MAIL), and a
        // message that arrived since the sink began listening (a relay retrying its deferred
        // mail) is exactly what the caller is waiting for.
        Ok(sink)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every complete transaction recorded so far.
    pub fn messages(&self) -> Vec<Dumped> {
        let mut out = Vec::new();
        let Ok(entries) = fs::read_dir(self.dir.path()) else {
            return out;
        };
        for entry in entries.flatten() {
            // Bytes, not UTF-8 text: a message with 8-bit content is still a message (read as
            // text, it would be skipped and never found).
            let Ok(bytes) = fs::read(entry.path()) else {
                continue;
            };
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let header = |name: &str| {
                text.lines()
                    .filter_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_string())
                    .collect::<Vec<_>>()
            };
            let angle = |v: &str| {
                v.split_whitespace()
                    .next()
                    .unwrap_or("")
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            };
            let Some(from) = header("X-Mail-Args:").first().map(|v| angle(v)) else {
                continue;
            };
            out.push(Dumped {
                client: header("X-Client-Addr:").join(""),
                from,
                rcpts: header("X-Rcpt-Args:").iter().map(|v| angle(v)).collect(),
                text,
            });
        }
        out
    }

    /// Waits for the message whose body ends with `marker`'s end line (see [`message`]).
    pub fn wait_for(&self, rcpt: &str, marker: &str, timeout: Duration) -> Result<Dumped, String> {
        let end = end_marker(marker);
        poll(
            &format!("a message for {rcpt} with marker {marker} at the sink"),
            timeout,
            || {
                self.messages().into_iter().find(|m| {
                    m.text.contains(&end) && m.rcpts.iter().any(|r| r.eq_ignore_ascii_case(rcpt))
                })
            },
        )
    }

    /// Waits for a message to `rcpt` whose Subject is `subject` (one written by a program this
    /// project does not compose, such as `kubectl smtp-relay send`): found once the sink has
    /// the header, which is all it tells.
    pub fn wait_for_subject(
        &self,
        rcpt: &str,
        subject: &str,
        timeout: Duration,
    ) -> Result<Dumped, String> {
        let line = format!("Subject: {subject}");
        poll(
            &format!("a message for {rcpt} with subject {subject} at the sink"),
            timeout,
            || {
                self.messages().into_iter().find(|m| {
                    m.text.lines().any(|l| l.trim_end() == line)
                        && m.rcpts.iter().any(|r| r.eq_ignore_ascii_case(rcpt))
                })
            },
        )
    }

    pub fn has(&self, marker: &str) -> bool {
        let end = end_marker(marker);
        self.messages().iter().any(|m| m.text.contains(&end))
    }

    /// All recipients delivered so far.
    pub fn recipients(&self) -> Vec<String> {
        self.messages().into_iter().flat_map(|m| m.rcpts).collect()
    }

    pub fn delivered_to(&self, rcpt: &str) -> bool {
        self.messages()
            .iter()
            .any(|m| m.rcpts.iter().any(|r| r.eq_ignore_ascii_case(rcpt)))
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(5));
        keep_if_failing(&mut self.dir, &format!("smtp-sink on {}", self.addr));
    }
}

// ---------------------------------------------------------------------------------------------
// The upstream relay.

/// Postfix settings a relay needs on a machine without DNS, and quick retries of deferred mail.
pub fn loopback_postconf() -> BTreeMap<String, String> {
    [
        ("smtpd_peername_lookup", "no"),
        ("smtp_dns_support_level", "disabled"),
        ("queue_run_delay", "1s"),
        ("minimal_backoff_time", "1s"),
        ("maximal_backoff_time", "2s"),
        ("smtp_connect_timeout", "5s"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// A self-signed certificate for `localhost` and 127.0.0.1 in `dir` (`tls.crt`, `tls.key`),
/// made with the openssl CLI: what a relay with SASL users needs, as it offers AUTH only
/// inside TLS.
pub fn self_signed_cert(dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let cert = dir.join("tls.crt");
    let key = dir.join("tls.key");
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .map_err(|e| format!("running openssl (apt-get install openssl): {e}"))?;
    if !out.status.success() {
        return Err(format!("openssl: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok((cert, key))
}

/// A test CA and a certificate it signed for `localhost` and `ip` (an IP subjectAltName, which
/// Postfix matches a `[ip]` relayhost against at levels secure and verify; also as a DNS name):
/// (ca.crt, tls.crt, tls.key).
pub fn ca_signed_cert_for(dir: &Path, ip: Ipv4Addr) -> Result<(PathBuf, PathBuf, PathBuf), String> {
    let (ca, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
    let (cert, key, csr) = (
        dir.join("tls.crt"),
        dir.join("tls.key"),
        dir.join("tls.csr"),
    );
    let ext = dir.join("tls.ext");
    fs::write(
        &ext,
        format!(
            "subjectAltName=DNS:localhost,DNS:{ip},IP:{ip}\nbasicConstraints=critical,CA:FALSE\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    const EC: [&str; 5] = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let run = |cmd: &mut Command| -> Result<(), String> {
        let out = cmd
            .output()
            .map_err(|e| format!("running openssl (apt-get install openssl): {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("openssl: {}", String::from_utf8_lossy(&out.stderr)))
        }
    };
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-days",
            "2",
            "-subj",
            "/CN=smtp-relay test CA",
        ])
        .args(EC)
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .arg("-keyout")
        .arg(&ca_key)
        .arg("-out")
        .arg(&ca))?;
    run(Command::new("openssl")
        .args(["req", "-subj", "/CN=localhost"])
        .args(EC)
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr))?;
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
        .arg("-in")
        .arg(&csr)
        .arg("-CA")
        .arg(&ca)
        .arg("-CAkey")
        .arg(&ca_key)
        .arg("-extfile")
        .arg(&ext)
        .arg("-out")
        .arg(&cert))?;
    Ok((ca, cert, key))
}

/// The workspace's `smtp-relay` binary (built by `cargo build --workspace --bins`).
pub fn relay_bin() -> PathBuf {
    target_bin("smtp-relay")
}

/// The relayhost of the relay under test: a second `smtp-relay run` (real Postfix) on
/// 127.0.0.1 (or an address of [`Upstream::start_at`]'s choosing), that relays only for its SASL users (no `networks`) and hands all mail to a
/// [`Sink`]. Its users live in a kubelet-style Secret directory, so a password rotates in
/// place. Stopped on drop; [`Upstream::stop`] and [`Upstream::start_again`] take it down and up
/// on the same port and queue (the relayhost being unreachable for a while). Its certificate
/// is signed by a test CA ([`Upstream::ca_pem`]) for its address, as an IP subjectAltName: what
/// a relay logging in to it at the default level (`secure`) verifies.
pub struct Upstream {
    child: Option<Child>,
    pub addr: SocketAddr,
    users: SecretVolume,
    dir: TempDir,
}

impl Upstream {
    /// On 127.0.0.1, handing mail to `sink`, with SASL users `users` (name, password).
    pub fn start(sink: &Sink, users: &[(&str, &str)]) -> Result<Upstream, String> {
        Upstream::start_at(sink, Ipv4Addr::LOCALHOST, users)
    }

    /// On a free port of `ip`, an address of this machine: e.g. the node IP, where relay pods
    /// reach it.
    pub fn start_at(sink: &Sink, ip: Ipv4Addr, users: &[(&str, &str)]) -> Result<Upstream, String> {
        let dir = tempfile::Builder::new()
            .prefix("upstream-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let users_dir = dir.path().join("users");
        // A relay with SASL users offers AUTH inside STARTTLS only, so it needs a certificate;
        // one from a CA the relay under test can be given, naming the address it is reached at.
        let (_, cert, key) = ca_signed_cert_for(dir.path(), ip)?;
        let config = serde_json::json!({
            "domain": "example.net",
            "hostname": "upstream.example.net",
            "networks": [],
            "relayhost": {"host": sink.addr.ip().to_string(), "port": sink.port(), "mxLookup": false},
            "mode": "AllowAuthNoDomain",
            "saslUsersDir": users_dir,
            "inboundTls": {"certFile": cert, "keyFile": key},
            "postconf": loopback_postconf(),
        });
        fs::write(
            dir.path().join("relay.yaml"),
            serde_yaml::to_string(&config).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        let users = SecretVolume::with_mode(users_dir, 0o400, users).map_err(|e| e.to_string())?;
        let mut up = Upstream {
            child: None,
            addr: SocketAddr::from((ip, free_port_at(ip))),
            users,
            dir,
        };
        up.start_again()?;
        Ok(up)
    }

    /// The PEM of the test CA that signed its certificate: the relayhost CA to give the relay
    /// under test (`spec.relayhost.tls.caSecretKeyRef`).
    pub fn ca_pem(&self) -> Result<String, String> {
        fs::read_to_string(self.dir.path().join("ca.crt")).map_err(|e| e.to_string())
    }

    /// Replaces the SASL users (name, password) the way a Secret update does; the relay
    /// reloads them within a second or two.
    pub fn set_users(&self, users: &[(&str, &str)]) -> Result<(), String> {
        self.users.write(users).map_err(|e| e.to_string())
    }

    /// Starts it (again, on the same port and queue) and waits until it answers SMTP.
    pub fn start_again(&mut self) -> Result<(), String> {
        if self.child.is_some() {
            return Ok(());
        }
        let d = self.dir.path();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("upstream.log"))
            .map_err(|e| e.to_string())?;
        let child = Command::new(relay_bin())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RELAY_LISTEN", self.addr.to_string())
            .env("RELAY_POSTFIX_DIR", d.join("postfix"))
            .env("RELAY_SPOOL_DIR", d.join("spool"))
            .env("RELAY_DATA_DIR", d.join("data"))
            .env("RELAY_RELOAD_INTERVAL", "1")
            .arg("run")
            .arg("--config")
            .arg(d.join("relay.yaml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting the upstream smtp-relay: {e}"))?;
        self.child = Some(child);
        let addr = self.addr;
        let result = poll(
            &format!("the upstream relay on {addr} to answer SMTP"),
            DEADLINE,
            || {
                if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok()?) {
                    return Some(Err(format!("the upstream relay exited: {status}")));
                }
                smtp_ready(addr).then_some(Ok(()))
            },
        );
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) | Err(e) => {
                self.stop();
                Err(format!("{e}\n{}", self.log()))
            }
        }
    }

    /// SIGTERM; the relayhost is down until [`Self::start_again`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if stop_child(&mut child, Duration::from_secs(30)).is_none() {
                kill_master(&self.dir.path().join("spool"));
            }
        }
    }

    /// Its output: the Postfix mail log and smtp-relay's own lines.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("upstream.log")).unwrap_or_default()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let spool = self.dir.path().join("spool");
        let _ = fs::write(self.dir.path().join("queue.txt"), spool_report(&spool));
        self.stop();
        keep_if_failing(
            &mut self.dir,
            &format!("upstream relay on {} (upstream.log, queue.txt)", self.addr),
        );
    }
}

/// Last resort when smtp-relay had to be killed: its Postfix master would survive it. Only a
/// live process named `master` is killed: a stale pid file may name a recycled pid.
pub fn kill_master(spool: &Path) {
    if let Some(pid) = master_pid(spool) {
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "master" {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// The PID in Postfix's `pid/master.pid` under `spool`.
pub fn master_pid(spool: &Path) -> Option<i32> {
    fs::read_to_string(spool.join("pid/master.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Messages in a Postfix queue under `spool` (maildrop, incoming, active, deferred, hold).
pub fn queued(spool: &Path) -> usize {
    ["maildrop", "incoming", "active", "deferred", "hold"]
        .iter()
        .map(|q| files_under(&spool.join(q)).len())
        .sum()
}

// ---------------------------------------------------------------------------------------------
// What a failing test leaves behind.

/// When the current test is failing (its thread is panicking), keeps `dir` instead of deleting
/// it and names it on stderr, which the test's failure output shows: its logs, queue and dumps
/// can be read after the run. Returns whether it was kept.
pub fn keep_if_failing(dir: &mut TempDir, what: &str) -> bool {
    if !std::thread::panicking() {
        return false;
    }
    dir.disable_cleanup(true);
    eprintln!("=== kept for diagnosis: {what}: {}", dir.path().display());
    true
}

/// What a Postfix spool holds, for a failure report: every queued message by queue, with its
/// size and time (a deferred message's time is its next retry), and the reasons Postfix
/// recorded for deferring or bouncing it. Reads files only, so the master need not be running.
pub fn spool_report(spool: &Path) -> String {
    let now = std::time::SystemTime::now();
    let mut out = String::new();
    for queue in [
        "maildrop", "incoming", "active", "deferred", "hold", "corrupt",
    ] {
        for file in files_under(&spool.join(queue)) {
            let meta = fs::metadata(&file).ok();
            let size = meta.as_ref().map_or(0, |m| m.len());
            // Postfix sets a deferred file's time to its next delivery attempt.
            let when = match meta.and_then(|m| m.modified().ok()) {
                Some(t) => match t.duration_since(now) {
                    Ok(ahead) => format!("time now+{:.1}s", ahead.as_secs_f64()),
                    Err(e) => format!("time now-{:.1}s", e.duration().as_secs_f64()),
                },
                None => "time unknown".into(),
            };
            let id = file.file_name().unwrap_or_default().to_string_lossy();
            out.push_str(&format!("{queue}/{id} {size} bytes, {when}\n"));
        }
    }
    if out.is_empty() {
        out.push_str("(no queued messages)\n");
    }
    for log in ["defer", "bounce"] {
        for file in files_under(&spool.join(log)) {
            let id = file.file_name().unwrap_or_default().to_string_lossy();
            let text = fs::read_to_string(&file).unwrap_or_default();
            out.push_str(&format!("--- {log}/{id}\n{text}"));
        }
    }
    out
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files = Vec::new();
    for entry in entries.flatten() {
        match entry.file_type() {
            Ok(t) if t.is_dir() => files.extend(files_under(&entry.path())),
            Ok(t) if t.is_file() => files.push(entry.path()),
            _ => {}
        }
    }
    files.sort();
    files
}

// ---------------------------------------------------------------------------------------------
// Clients.

/// A unique token to find a message at the sink.
pub fn marker(tag: &str) -> String {
    static N: AtomicU16 = AtomicU16::new(0);
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

fn end_marker(marker: &str) -> String {
    format!("end-of-{marker}")
}

/// A small message whose last body line identifies it, so a half-written dump never matches.
pub fn message(from: &str, to: &str, marker: &str) -> Vec<u8> {
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {marker}\r\nMessage-ID: <{marker}@client.test>\r\n\r\nTest message {marker}.\r\n{}\r\n",
        end_marker(marker)
    )
    .into_bytes()
}

/// [`message`], padded with body lines to about `size` bytes (its last line still the marker's).
pub fn big_message(from: &str, to: &str, marker: &str, size: usize) -> Vec<u8> {
    let small = message(from, to, marker);
    let body = small
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(small.len(), |at| at + 4);
    let line = format!("{}\r\n", "x".repeat(76));
    let mut out = small[..body].to_vec();
    while out.len() + (small.len() - body) < size {
        out.extend_from_slice(line.as_bytes());
    }
    out.extend_from_slice(&small[body..]);
    out
}

/// Sends one [`big_message`] of about `size` bytes to `addr`, from any local address, without
/// SIZE in MAIL FROM (as most applications send). `Err` carries the first refusal.
pub fn send_big(
    addr: SocketAddr,
    from: &str,
    to: &str,
    marker: &str,
    size: usize,
) -> Result<String, String> {
    let body = big_message(from, to, marker, size);
    transmit(
        addr,
        Ipv4Addr::UNSPECIFIED,
        Tls::None,
        None,
        from,
        to,
        &body,
    )
}

/// Connects to `addr` from `source` (a loopback address), logs in if asked, sends one message.
/// `Err` carries the first refusal.
pub fn send(
    addr: SocketAddr,
    source: Ipv4Addr,
    auth: Option<(&str, &str)>,
    from: &str,
    to: &str,
    marker: &str,
) -> Result<String, String> {
    send_tls(addr, source, None, auth, from, to, marker)
}

/// TLS towards a relay (STARTTLS, or from the first byte): the name its certificate must
/// carry, and the certificate (PEM) that signed it (or is it, when self-signed).
pub struct StartTls<'a> {
    pub name: &'a str,
    pub ca_pem: &'a [u8],
}

/// [`send`], after STARTTLS when `tls` is given (the certificate checked against it).
pub fn send_tls(
    addr: SocketAddr,
    source: Ipv4Addr,
    tls: Option<&StartTls<'_>>,
    auth: Option<(&str, &str)>,
    from: &str,
    to: &str,
    marker: &str,
) -> Result<String, String> {
    let tls = tls.map_or(Tls::None, Tls::Upgraded);
    transmit(
        addr,
        source,
        tls,
        auth,
        from,
        to,
        &message(from, to, marker),
    )
}

/// [`send_tls`] of a message given whole (its headers may name another sender than the
/// envelope's `(from, to)`).
pub fn send_tls_message(
    addr: SocketAddr,
    source: Ipv4Addr,
    tls: Option<&StartTls<'_>>,
    auth: Option<(&str, &str)>,
    (from, to): (&str, &str),
    body: &[u8],
) -> Result<String, String> {
    let tls = tls.map_or(Tls::None, Tls::Upgraded);
    transmit(addr, source, tls, auth, from, to, body)
}

/// [`send`] in TLS from the first byte (a submissions port, 465).
pub fn send_implicit_tls(
    addr: SocketAddr,
    source: Ipv4Addr,
    tls: &StartTls<'_>,
    auth: Option<(&str, &str)>,
    from: &str,
    to: &str,
    marker: &str,
) -> Result<String, String> {
    transmit(
        addr,
        source,
        Tls::Implicit(tls),
        auth,
        from,
        to,
        &message(from, to, marker),
    )
}

/// How a session is encrypted: not, after STARTTLS, or from the first byte.
#[derive(Clone, Copy)]
enum Tls<'a> {
    None,
    Upgraded(&'a StartTls<'a>),
    Implicit(&'a StartTls<'a>),
}

/// TLS parameters that trust `tls.ca_pem` for `tls.name`.
fn parameters(tls: &StartTls<'_>) -> Result<TlsParameters, String> {
    let ca = Certificate::from_pem(tls.ca_pem).map_err(|e| format!("the CA: {e}"))?;
    TlsParameters::builder(tls.name.into())
        .add_root_certificate(ca)
        .build()
        .map_err(|e| e.to_string())
}

/// One SMTP session that sends `body` from `from` to `to`: TLS and AUTH when asked.
fn transmit(
    addr: SocketAddr,
    source: Ipv4Addr,
    tls: Tls<'_>,
    auth: Option<(&str, &str)>,
    from: &str,
    to: &str,
    body: &[u8],
) -> Result<String, String> {
    let hello = ClientId::Domain("client.test".into());
    let implicit = match tls {
        Tls::Implicit(t) => Some(parameters(t)?),
        _ => None,
    };
    let mut conn = SmtpConnection::connect(
        addr,
        Some(Duration::from_secs(30)),
        &hello,
        implicit.as_ref(),
        Some(IpAddr::V4(source)),
    )
    .map_err(|e| format!("connecting to {addr} from {source}: {e}"))?;
    if let Tls::Upgraded(tls) = tls {
        conn.starttls(&parameters(tls)?, &hello)
            .map_err(|e| format!("STARTTLS to {addr} as {}: {e}", tls.name))?;
    }
    if let Some((user, password)) = auth {
        conn.auth(
            &[Mechanism::Plain, Mechanism::Login],
            &Credentials::new(user.into(), password.into()),
        )
        .map_err(|e| format!("AUTH as {user}: {e}"))?;
    }
    let envelope = Envelope::new(
        Some(from.parse::<Address>().map_err(|e| e.to_string())?),
        vec![to.parse::<Address>().map_err(|e| e.to_string())?],
    )
    .map_err(|e| e.to_string())?;
    let result = conn
        .send(&envelope, body)
        .map(|r| r.message().collect::<Vec<_>>().join(" "))
        .map_err(|e| e.to_string());
    let _ = conn.quit();
    result
}
