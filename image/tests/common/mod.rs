//! Test harness: real `smtp-relay run` instances (real Postfix), real `smtp-sink` upstreams, and
//! SMTP clients speaking from chosen loopback addresses. Every process started here is stopped
//! by a Drop guard, also when a test panics. Nothing waits a fixed time for a server: every wait
//! polls with a deadline.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{SmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;
use lettre::Address;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use smtp_relay::config_file::{InboundTlsFile, RelayConfigFile, RelayhostFile};
use smtp_relay::settings::{Mode, TlsLevel};
use tempfile::TempDir;

use smtp_relay_e2e::mail::{keep_if_failing, kill_master, spool_report, PortRange};
use smtp_relay_e2e::tools::stop_child;

// The SMTP test support shared with the e2e crate; each test binary uses a part of it.
#[allow(unused_imports)]
pub use smtp_relay_e2e::mail::{
    loopback_postconf, marker, master_pid, message, queued, smtp_ready, Sink,
};
#[allow(unused_imports)]
pub use smtp_relay_e2e::secret_volume::SecretVolume;

/// The relay domain of every test relay.
pub const DOMAIN: &str = "example.net";
/// A domain outside the relay domains.
pub const EXTERNAL: &str = "elsewhere.org";
/// Client address inside the test relays' `networks`.
pub const NET_CLIENT: [u8; 4] = [127, 0, 0, 2];
/// Client address outside them (anonymous unless it logs in).
pub const OTHER_CLIENT: [u8; 4] = [127, 0, 0, 3];
/// The one SASL user most tests register.
pub const USER: &str = "app1";
pub const USER_PASSWORD: &str = "app1 secret";

/// Generous: two cores run several relays, sinks and cargo's other test threads at once.
pub const DEADLINE: Duration = Duration::from_secs(45);

/// The relay's XOAUTH2 mechanism as `scripts/install-deps.sh` builds it (the image's is in
/// /usr/lib/smtp-relay/sasl2).
pub fn sasl_plugin_dir() -> PathBuf {
    let dir = smtp_relay_e2e::tools::workspace_root().join(".cache/lib/sasl2");
    assert!(
        dir.join("libsmtprelayxoauth2.so").is_file(),
        "{} has no libsmtprelayxoauth2.so: run scripts/install-deps.sh",
        dir.display()
    );
    dir
}

/// Fails the test with a clear message when Postfix and its tools are not installed.
pub fn require_postfix() {
    static CHECK: Once = Once::new();
    CHECK.call_once(|| {
        let missing: Vec<&str> = [
            "postfix",
            "smtp-sink",
            "smtp-source",
            "saslpasswd2",
            "openssl",
        ]
        .into_iter()
        .filter(|tool| {
            !["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
                .iter()
                .any(|dir| Path::new(dir).join(tool).exists())
        })
        .collect();
        if !missing.is_empty() {
            panic!(
                "these tests run a real Postfix and need {missing:?}: \
                 apt-get install postfix sasl2-bin libsasl2-modules openssl (smtp-sink and \
                 smtp-source come with postfix), and run them as root"
            );
        }
        if !nix::unistd::Uid::effective().is_root() {
            panic!("these tests run a real Postfix instance and must run as root");
        }
    });
}

/// A TCP port on 127.0.0.1 that nothing listens on, from 20000-31999: apart from the e2e
/// tests' range, which may run at the same time.
pub fn free_port() -> u16 {
    static PORTS: PortRange = PortRange::new(20_000, 120);
    PORTS.free_port()
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn poll<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    smtp_relay_e2e::tools::poll(what, timeout, f).unwrap_or_else(|e| panic!("{e}"))
}

// ---------------------------------------------------------------------------------------------
// The sink: Postfix's smtp-sink, dumping every transaction to a file.

/// An smtp-sink on a fresh port that writes each transaction to its own file.
pub fn start_sink() -> Sink {
    start_sink_on(free_port())
}

pub fn start_sink_on(port: u16) -> Sink {
    require_postfix();
    Sink::start_on(port, DEADLINE).unwrap_or_else(|e| panic!("{e}"))
}

// ---------------------------------------------------------------------------------------------
// The relay under test: `smtp-relay run` with its own directories and ports.

/// How a relay is configured: the operator's config file, or the seed's environment variables.
#[derive(Debug, Clone)]
pub enum Input {
    File(Box<RelayConfigFile>),
    Env(BTreeMap<String, String>),
}

impl Input {
    pub fn file(cfg: RelayConfigFile) -> Input {
        Input::File(Box::new(cfg))
    }
}

/// A config file relaying to `[127.0.0.1]:upstream_port`, clients in 127.0.0.2/32.
pub fn config(upstream_port: u16, mode: Mode) -> RelayConfigFile {
    RelayConfigFile {
        domain: DOMAIN.into(),
        hostname: Some("relay.example.net".into()),
        networks: vec!["127.0.0.2/32".into()],
        relayhost: RelayhostFile {
            host: "127.0.0.1".into(),
            port: upstream_port,
            // The relayhost is on loopback without TLS: said explicitly, as the relay otherwise
            // requires TLS once it has credentials for the relayhost.
            tls_level: Some(TlsLevel::None),
            ..Default::default()
        },
        mode: Some(mode),
        postconf: loopback_postconf(),
        ..Default::default()
    }
}

/// The seed's variables for a relay to `[127.0.0.1]:upstream_port`, clients in 127.0.0.2/32.
pub fn env(upstream_port: u16, mode: &str) -> BTreeMap<String, String> {
    let mut vars: BTreeMap<String, String> = [
        ("RELAY_MYDOMAIN", DOMAIN.to_string()),
        ("RELAY_MYHOSTNAME", "relay.example.net".to_string()),
        ("RELAY_HOST", format!("[127.0.0.1]:{upstream_port}")),
        ("RELAY_MYNETWORKS", "127.0.0.2/32".to_string()),
        ("RELAY_MODE", mode.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (k, v) in loopback_postconf() {
        vars.insert(format!("POSTCONF_{k}"), v);
    }
    vars
}

/// A relay's directories and inputs, before it starts (and after it stopped: the spool stays).
pub struct RelaySpec {
    pub dir: TempDir,
    pub input: Input,
    pub port: u16,
    /// `RELAY_LISTEN` when not 127.0.0.1:`port` (e.g. `[::]:port`, both families).
    pub listen: Option<String>,
    pub metrics_port: u16,
    pub reload_interval_secs: u64,
    /// Give the relay the test certificate when it has SASL users and no certificate of its own
    /// (it refuses to start without one): true unless a test wants to see that refusal.
    pub test_tls: bool,
    /// The relay speaks TLS from the first byte (`smtpd_tls_wrappermode`, SMTPS): readiness is
    /// a TLS handshake and a banner, not a plain-text banner.
    pub implicit_tls: bool,
    /// More environment variables of `smtp-relay run` (e.g. `RELAY_POD_ANNOTATIONS`).
    pub env: BTreeMap<String, String>,
    /// A config file the test lays out itself (a ConfigMap volume, with its `revision`),
    /// given as `--config` instead of the one written from `input`.
    pub mounted_config: Option<PathBuf>,
}

impl RelaySpec {
    pub fn new(input: Input) -> RelaySpec {
        require_postfix();
        RelaySpec {
            dir: tempfile::tempdir().expect("tempdir"),
            input,
            port: free_port(),
            listen: None,
            metrics_port: free_port(),
            reload_interval_secs: 1,
            test_tls: true,
            implicit_tls: false,
            env: BTreeMap::new(),
            mounted_config: None,
        }
    }

    /// The test certificate for `localhost` in this spec's directory, made on first use.
    pub fn test_cert(&self) -> (PathBuf, PathBuf) {
        let dir = self.path("test-tls");
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        if !cert.exists() {
            fs::create_dir_all(&dir).unwrap();
            return self_signed_cert(&dir);
        }
        (cert, key)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    pub fn postfix_dir(&self) -> PathBuf {
        self.path("postfix")
    }
    pub fn spool_dir(&self) -> PathBuf {
        self.path("spool")
    }
    pub fn data_dir(&self) -> PathBuf {
        self.path("data")
    }
    pub fn config_path(&self) -> PathBuf {
        self.path("relay.yaml")
    }
    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    /// Writes a file (creating parent directories), e.g. a secret.
    pub fn write(&self, rel: &str, content: &str) -> PathBuf {
        let path = self.path(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, content).unwrap();
        path
    }

    /// (Re)writes relay.yaml from `self.input` atomically, as a ConfigMap update would.
    pub fn write_config_file(&self) {
        if let Input::File(cfg) = &self.input {
            let mut cfg = cfg.clone();
            if self.test_tls && cfg.sasl_users_dir.is_some() && cfg.inbound_tls.is_none() {
                let (cert_file, key_file) = self.test_cert();
                cfg.inbound_tls = Some(InboundTlsFile {
                    cert_file,
                    key_file,
                });
            }
            write_atomically(
                &self.config_path(),
                &serde_yaml::to_string(&cfg).expect("yaml"),
            );
        }
    }

    /// The command line and environment of `smtp-relay run` for this spec.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_smtp-relay"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env(
                "RELAY_LISTEN",
                self.listen
                    .clone()
                    .unwrap_or_else(|| self.addr().to_string()),
            )
            .env("RELAY_POSTFIX_DIR", self.postfix_dir())
            .env("RELAY_SPOOL_DIR", self.spool_dir())
            .env("RELAY_DATA_DIR", self.data_dir())
            .env("RELAY_SASL_PLUGIN_DIR", sasl_plugin_dir())
            .env(
                "RELAY_METRICS_LISTEN",
                loopback(self.metrics_port).to_string(),
            )
            .env(
                "RELAY_RELOAD_INTERVAL",
                self.reload_interval_secs.to_string(),
            )
            .envs(&self.env)
            .arg("run");
        if let Some(config) = &self.mounted_config {
            cmd.arg("--config").arg(config);
            return cmd;
        }
        match &self.input {
            Input::File(_) => {
                self.write_config_file();
                cmd.arg("--config").arg(self.config_path());
            }
            Input::Env(vars) => {
                cmd.envs(vars);
                let users = self.postfix_dir().join("client_sasl_passwd");
                if self.test_tls && users.exists() && !vars.contains_key("RELAY_TLS_CERT") {
                    let (cert, key) = self.test_cert();
                    cmd.env("RELAY_TLS_CERT", cert).env("RELAY_TLS_KEY", key);
                }
            }
        }
        cmd
    }

    /// Runs `smtp-relay run` expecting it to exit by itself (bad input); returns its output.
    pub fn run_to_exit(&self) -> Output {
        let mut child = self
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting smtp-relay");
        let pid = child.id();
        let status = poll("smtp-relay to exit", DEADLINE, || {
            child.try_wait().expect("wait")
        });
        let _ = pid;
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_end(&mut stdout)
            .unwrap();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_end(&mut stderr)
            .unwrap();
        Output {
            status,
            stdout,
            stderr,
        }
    }

    /// Starts the relay and waits until it answers SMTP.
    pub fn start(self) -> Relay {
        let implicit_tls = self.implicit_tls;
        let mut relay = self.spawn();
        let addr = relay.addr();
        poll(
            &format!("the relay on {addr} to answer SMTP"),
            DEADLINE,
            || {
                relay.exited_before_serving();
                let ready = if implicit_tls {
                    smtps_ready(addr)
                } else {
                    smtp_ready(addr)
                };
                ready.then_some(())
            },
        );
        relay
    }

    /// [`RelaySpec::start`], timed: from the spawn to the first SMTP banner, polled every 5 ms
    /// (for the benchmark of start latency).
    pub fn start_timed(self) -> (Relay, Duration) {
        let started = std::time::Instant::now();
        let mut relay = self.spawn();
        let addr = relay.addr();
        loop {
            relay.exited_before_serving();
            if smtp_ready(addr) {
                return (relay, started.elapsed());
            }
            assert!(
                started.elapsed() < DEADLINE,
                "the relay on {addr} never answered"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn spawn(self) -> Relay {
        let stdout = fs::File::create(self.path("relay.stdout")).unwrap();
        let stderr = fs::File::create(self.path("relay.stderr")).unwrap();
        let child = self
            .command()
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("starting smtp-relay");
        Relay {
            child: Some(child),
            spec: Some(self),
        }
    }
}

pub struct Relay {
    child: Option<Child>,
    spec: Option<RelaySpec>,
}

impl Relay {
    /// Fails the test when the relay exited (a start that went wrong), with its output.
    fn exited_before_serving(&mut self) {
        if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
            panic!(
                "smtp-relay exited before serving ({status}):\n{}",
                self.output()
            );
        }
    }

    pub fn spec(&self) -> &RelaySpec {
        self.spec.as_ref().unwrap()
    }
    pub fn spec_mut(&mut self) -> &mut RelaySpec {
        self.spec.as_mut().unwrap()
    }
    pub fn addr(&self) -> SocketAddr {
        self.spec().addr()
    }
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// The Postfix mail log (the relay's stdout).
    pub fn mail_log(&self) -> String {
        fs::read_to_string(self.spec().path("relay.stdout")).unwrap_or_default()
    }

    /// stdout and stderr, for failure messages.
    pub fn output(&self) -> String {
        let err = fs::read_to_string(self.spec().path("relay.stderr")).unwrap_or_default();
        format!("--- stdout\n{}--- stderr\n{err}", self.mail_log())
    }

    /// The PID in Postfix's master.pid.
    pub fn master_pid(&self) -> Option<i32> {
        master_pid(&self.spec().spool_dir())
    }

    /// Messages in the queue (incoming, active, deferred, hold, maildrop).
    pub fn queued(&self) -> usize {
        queued(&self.spec().spool_dir())
    }

    /// Waits until the mail log shows a delivery to `rcpt` deferred.
    pub fn wait_deferred(&self, rcpt: &str) {
        let to = format!("to=<{rcpt}>");
        poll(&format!("the relay to defer {rcpt}"), DEADLINE, || {
            self.mail_log()
                .lines()
                .any(|l| l.contains(&to) && l.contains("status=deferred"))
                .then_some(())
        });
    }

    /// Waits until Postfix's queue is empty.
    pub fn wait_queue_empty(&self) {
        poll("the relay's queue to empty", DEADLINE, || {
            (self.queued() == 0).then_some(())
        });
    }

    /// Waits for `f` once a relayhost that was down is back, asking Postfix every two seconds
    /// to deliver its queue now (`postqueue -f`), as an operator does when the relayhost returns.
    ///
    /// Waiting for the tests' one-second retry alone races with Postfix: when qmgr meets a
    /// message whose delivery agent has reported but not yet released the queue file's lock
    /// (a retry time of one second rounds down to no wait at all), it logs `skipped, still
    /// being delivered` and parks the message in `incoming/` for a fixed 60 s. A flush makes
    /// qmgr scan every queue without regard to those times.
    pub fn poll_flushing<T>(&self, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let mut flushed = Instant::now();
        self.flush();
        poll(what, DEADLINE, || {
            if flushed.elapsed() >= Duration::from_secs(2) {
                flushed = Instant::now();
                self.flush();
            }
            f()
        })
    }

    /// `postqueue -f` against the relay's Postfix.
    pub fn flush(&self) {
        let out = Command::new("postqueue")
            .arg("-c")
            .arg(self.spec().postfix_dir())
            .arg("-f")
            .output()
            .expect("running postqueue");
        assert!(
            out.status.success(),
            "postqueue -f: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// GET /metrics.
    pub fn metrics(&self) -> String {
        http_get(loopback(self.spec().metrics_port), "/metrics")
    }

    /// The value of one metric line, e.g. `smtp_relay_config_errors_total`.
    /// Waits (flushing the queue, so the log that feeds some metrics moves) until the
    /// series `name_and_labels` is at least `n`.
    pub fn wait_metric(&self, name_and_labels: &str, n: f64) {
        self.poll_flushing(name_and_labels, || {
            self.metric(name_and_labels).filter(|v| *v >= n).map(|_| ())
        });
    }
    pub fn metric(&self, name_and_labels: &str) -> Option<f64> {
        metric_value(&self.metrics(), name_and_labels)
    }

    /// SIGTERM, then waits for the exit; returns the status and the spec (its spool kept).
    pub fn stop(mut self) -> (ExitStatus, RelaySpec) {
        let mut child = self.child.take().unwrap();
        let status = stop_child(&mut child, DEADLINE);
        let spec = self.spec.take().unwrap();
        let status = status.unwrap_or_else(|| {
            kill_master(&spec.spool_dir());
            panic!("smtp-relay did not stop within {DEADLINE:?} of SIGTERM");
        });
        (status, spec)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let Some(spec) = &self.spec else { return };
        let failing = std::thread::panicking();
        if failing {
            // What the relay held and how it was started, written before it stops.
            let _ = fs::write(spec.path("queue.txt"), spool_report(&spec.spool_dir()));
            let _ = fs::write(spec.path("command.txt"), format!("{:?}\n", spec.command()));
            let out = self.output();
            let tail: Vec<&str> = out.lines().rev().take(80).collect();
            eprintln!(
                "=== relay on {} (last lines of its output):\n{}",
                spec.addr(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        if let Some(child) = &mut self.child {
            stop_child(child, Duration::from_secs(20));
        }
        // Whatever happened to smtp-relay (killed by the test, or by stop_child), no master of
        // its spool outlives the test.
        kill_master(&spec.spool_dir());
        if let Some(spec) = &mut self.spec {
            let what = format!(
                "relay on {} (relay.stdout is its mail log; queue.txt, command.txt, spool/)",
                spec.addr()
            );
            keep_if_failing(&mut spec.dir, &what);
        }
    }
}

pub fn process_alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
        && fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

/// The body of `GET path`, which must answer 200.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    match smtp_relay_e2e::tools::http_get(addr, path) {
        Some((200, body)) => body,
        other => panic!("GET {path} from {addr}: {other:?}"),
    }
}

pub fn metric_value(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Replaces a file the way a config or secret update does: never half-written.
pub fn write_atomically(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp-test");
    fs::write(&tmp, content).unwrap();
    fs::rename(&tmp, path).unwrap();
}

// ---------------------------------------------------------------------------------------------
// SMTP clients from chosen loopback addresses.

pub fn ip(a: [u8; 4]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(a))
}

/// Connects from `source` and sends EHLO.
pub fn connect(addr: SocketAddr, source: [u8; 4]) -> SmtpConnection {
    SmtpConnection::connect(
        addr,
        Some(Duration::from_secs(30)),
        &ClientId::Domain("client.test".into()),
        None,
        Some(ip(source)),
    )
    .unwrap_or_else(|e| panic!("connecting to {addr} from {source:?}: {e}"))
}

/// A command line sent verbatim (lettre's typed commands refuse odd addresses on purpose).
pub struct Raw(pub String);

impl fmt::Display for Raw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\r\n", self.0)
    }
}

/// The reply code of a command, whether positive or not.
pub fn reply(conn: &mut SmtpConnection, line: &str) -> (u16, String) {
    match conn.command(Raw(line.to_string())) {
        Ok(r) => (
            u16::from(r.code()),
            r.message().collect::<Vec<_>>().join(" "),
        ),
        Err(e) => (
            e.status()
                .map(u16::from)
                .unwrap_or_else(|| panic!("{line}: no SMTP reply: {e}")),
            e.to_string(),
        ),
    }
}

/// Logs in, after STARTTLS if the session is not encrypted yet (the relay offers AUTH only
/// inside TLS). The certificate is not checked here: `inbound_tls.rs` checks it.
pub fn login(conn: &mut SmtpConnection, user: &str, password: &str) -> Result<Response, String> {
    if !conn.is_encrypted() {
        let tls = TlsParameters::builder("localhost".into())
            .dangerous_accept_invalid_certs(true)
            .build()
            .map_err(|e| e.to_string())?;
        conn.starttls(&tls, &ClientId::Domain("client.test".into()))
            .map_err(|e| format!("STARTTLS before AUTH: {e}"))?;
    }
    conn.auth(
        &[Mechanism::Plain, Mechanism::Login],
        &Credentials::new(user.into(), password.into()),
    )
    .map_err(|e| e.to_string())
}

/// One whole transaction on an open connection; `Err` carries the first refusal.
pub fn send_on(
    conn: &mut SmtpConnection,
    from: &str,
    to: &str,
    marker: &str,
) -> Result<Response, String> {
    let envelope = Envelope::new(
        Some(from.parse::<Address>().unwrap()),
        vec![to.parse::<Address>().unwrap()],
    )
    .unwrap();
    conn.send(&envelope, &message(from, to, marker))
        .map_err(|e| e.to_string())
}

/// Sends one message on an open connection, its envelope addresses written verbatim between
/// `<` and `>` (lettre's typed addresses refuse quoted local parts such as
/// `"status=sent x"@example.net`) and its content as given, any bytes. Every recipient must be
/// accepted; `Err` carries the first refusal.
pub fn send_verbatim(
    conn: &mut SmtpConnection,
    from: &str,
    to: &[&str],
    content: &[u8],
) -> Result<Response, String> {
    let commands = std::iter::once(format!("MAIL FROM:<{from}>"))
        .chain(to.iter().map(|rcpt| format!("RCPT TO:<{rcpt}>")))
        .chain(std::iter::once("DATA".to_string()));
    for command in commands {
        let (code, text) = reply(conn, &command);
        if code >= 400 {
            return Err(format!("{command}: {code} {text}"));
        }
    }
    conn.message(content).map_err(|e| e.to_string())
}

/// One SMTP session from 127.0.0.1 whose command lines are sent as bytes, verbatim (a HELO
/// that is not UTF-8, say), each followed by CRLF. Returns the code of each reply, the
/// greeting's first.
pub fn raw_session(addr: SocketAddr, lines: &[&[u8]]) -> Vec<u16> {
    use std::io::{BufRead, BufReader, Write};
    let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut read_reply = || {
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line).unwrap();
            assert!(n > 0, "{addr} closed the session");
            // The last line of a reply has a space after its code.
            if line.get(3) != Some(&b'-') {
                let code = String::from_utf8_lossy(line.get(..3).unwrap_or_default());
                return code.parse::<u16>().unwrap_or(0);
            }
        }
    };
    let mut codes = vec![read_reply()];
    for line in lines {
        writer.write_all(line).unwrap();
        writer.write_all(b"\r\n").unwrap();
        codes.push(read_reply());
    }
    codes
}

/// Connects from `source`, logs in if asked, and sends one message.
pub fn send(
    addr: SocketAddr,
    source: [u8; 4],
    auth: Option<(&str, &str)>,
    from: &str,
    to: &str,
    marker: &str,
) -> Result<Response, String> {
    let mut conn = connect(addr, source);
    if let Some((user, password)) = auth {
        login(&mut conn, user, password)?;
    }
    let result = send_on(&mut conn, from, to, marker);
    let _ = conn.quit();
    result
}

/// Whether an SMTPS server (TLS from the first byte) at `addr` completes a handshake and greets.
pub fn smtps_ready(addr: SocketAddr) -> bool {
    let Ok(tls) = TlsParameters::builder("localhost".into())
        .dangerous_accept_invalid_certs(true)
        .build()
    else {
        return false;
    };
    SmtpConnection::connect(
        addr,
        Some(Duration::from_secs(5)),
        &ClientId::Domain("client.test".into()),
        Some(&tls),
        None,
    )
    .map(|mut c| {
        let _ = c.quit();
    })
    .is_ok()
}

/// TLS parameters trusting exactly the test certificate.
pub fn tls_params(cert: &Path) -> TlsParameters {
    use lettre::transport::smtp::client::Certificate;
    let pem = fs::read(cert).unwrap();
    TlsParameters::builder("localhost".into())
        .add_root_certificate(Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap()
}

/// Gives a config-file relay the SASL user [`USER`] and a self-signed certificate for
/// `localhost`, made in its directory; returns the certificate.
pub fn with_user_and_certificate(spec: &mut RelaySpec) -> PathBuf {
    let users = spec.path("users");
    SecretVolume::create(users.clone(), &[(USER, USER_PASSWORD)]);
    let dir = spec.path("tls");
    fs::create_dir_all(&dir).unwrap();
    let (cert_file, key_file) = self_signed_cert(&dir);
    if let Input::File(cfg) = &mut spec.input {
        cfg.sasl_users_dir = Some(users);
        cfg.inbound_tls = Some(smtp_relay::config_file::InboundTlsFile {
            cert_file: cert_file.clone(),
            key_file,
        });
    }
    cert_file
}

/// A self-signed certificate for `localhost` and 127.0.0.1, made with the openssl CLI.
pub fn self_signed_cert(dir: &Path) -> (PathBuf, PathBuf) {
    smtp_relay_e2e::mail::self_signed_cert(dir).unwrap_or_else(|e| panic!("{e}"))
}

/// A certificate for 127.0.0.1 and `localhost` signed by a test CA: (CA, certificate, key).
pub fn ca_signed_cert(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    smtp_relay_e2e::mail::ca_signed_cert_for(dir, Ipv4Addr::LOCALHOST)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The scripted relayhost and the token endpoint, on loopback (see `smtp_relay_e2e::relayhost`).
#[allow(unused_imports)]
pub use smtp_relay_e2e::relayhost::{
    ScriptedRelayhost, ServiceAccountCheck, TokenCheck, TokenPolicy, TokenServer,
};
