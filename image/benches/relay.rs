//! Throughput of `smtp-relay run` against a bare, hand-written Postfix relay on the same machine.
//!
//!     cargo bench -p smtp-relay --bench relay
//!
//! Each run starts a fresh instance (fresh spool) in front of a fresh `smtp-sink -c`, warms it up,
//! then times `smtp-source -s 20 -l 1024 -m N` through it until the sink has counted all N
//! messages and the relay's queue is empty. The two relays alternate order over several rounds.
//! BENCH_MESSAGES (default 5000), BENCH_ROUNDS (default 3), BENCH_SIZE (bytes, default 1024) and
//! BENCH_SESSIONS (default 20) change the run. `BENCH_ONLY=latency` measures start and change
//! latency only; `BENCH_ONLY=settings` measures Postfix settings that may raise the ceiling,
//! each against smtp-relay's defaults (see [`CANDIDATES`]). `BENCH_ONLY=user-limits` measures
//! what limits per SASL user (`rateLimits.perUser`, the relay's policy service in the
//! supervisor, asked about every recipient of a logged-in client) cost: BENCH_SESSIONS sessions
//! logged in over STARTTLS send BENCH_MESSAGES messages through smtp-relay with a SASL user and
//! no limits, and through the same relay with limits per user that are never reached,
//! alternating; the whole relay's CPU and the supervisor's own per message (see
//! [`user_limits`]). Needs root and Postfix (postfix, smtp-sink, smtp-source), like the tests.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::chown;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use smtp_relay::config_file::{LimitsFile, RateLimitsFile};
use smtp_relay::settings::{Mode, TlsLevel};

/// Concurrent client sessions: `BENCH_SESSIONS`, default 20.
fn sessions() -> u64 {
    env_number("BENCH_SESSIONS", 20)
}
const WARMUP: u64 = 200;
const RUN_DEADLINE: Duration = Duration::from_secs(300);

/// Message size in bytes: `BENCH_SIZE`, default 1 KiB.
fn size() -> u64 {
    env_number("BENCH_SIZE", 1024)
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `smtp-sink -c`: counts messages; its counter line is read from stdout.
struct CountingSink {
    child: Child,
    port: u16,
    count: Arc<AtomicU64>,
}

impl CountingSink {
    fn start() -> CountingSink {
        let port = free_port();
        let mut child = Command::new("smtp-sink")
            .args(["-u", "postfix", "-c"])
            .arg(loopback(port).to_string())
            .arg("256")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting smtp-sink");
        let count = Arc::new(AtomicU64::new(0));
        let mut stdout = child.stdout.take().unwrap();
        let c = count.clone();
        std::thread::spawn(move || {
            // "sess=1 quit=1 mesg=2\r" repeated; keep the latest mesg= value.
            let mut buf = [0u8; 8192];
            let mut line = Vec::new();
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                for &b in &buf[..n] {
                    if b == b'\r' || b == b'\n' {
                        let text = String::from_utf8_lossy(&line);
                        if let Some(v) = text
                            .split_whitespace()
                            .find_map(|f| f.strip_prefix("mesg="))
                            .and_then(|v| v.parse().ok())
                        {
                            c.store(v, Ordering::SeqCst);
                        }
                        line.clear();
                    } else {
                        line.push(b);
                    }
                }
            }
        });
        poll("smtp-sink to listen", DEADLINE, || {
            smtp_ready(loopback(port)).then_some(())
        });
        CountingSink { child, port, count }
    }
}

impl Drop for CountingSink {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

/// The relay under test, one way or the other.
enum Instance {
    SmtpRelay(Relay),
    Bare(BareRelay),
}

impl Instance {
    fn port(&self) -> u16 {
        match self {
            Instance::SmtpRelay(r) => r.addr().port(),
            Instance::Bare(b) => b.0.port,
        }
    }
    fn spool(&self) -> PathBuf {
        match self {
            Instance::SmtpRelay(r) => r.spec().spool_dir(),
            Instance::Bare(b) => b.0.spool(),
        }
    }
}

fn start_smtp_relay(sink_port: u16, tls: bool, extra: &[(&str, &str)]) -> Instance {
    let mut spec = smtp_relay_spec(sink_port);
    if let Input::File(cfg) = &mut spec.input {
        if tls {
            cfg.relayhost.tls_level = Some(TlsLevel::Encrypt);
        }
        for (k, v) in extra {
            cfg.postconf.insert(k.to_string(), v.to_string());
        }
    }
    Instance::SmtpRelay(spec.start())
}

/// smtp-relay as the benchmarks run it: the image's defaults, relaying to `sink_port`.
fn smtp_relay_spec(sink_port: u16) -> RelaySpec {
    let mut cfg = config(sink_port, Mode::Strict);
    cfg.networks = vec!["127.0.0.1/32".into()];
    // Only what a machine without DNS needs; everything else as the image configures it.
    cfg.postconf = BTreeMap::from([
        ("smtpd_peername_lookup".to_string(), "no".to_string()),
        ("smtp_dns_support_level".to_string(), "disabled".to_string()),
    ]);
    // BENCH_RELAY_POSTCONF="name=value;name=value" adds overrides, to find where time goes.
    if let Ok(extra) = std::env::var("BENCH_RELAY_POSTCONF") {
        for item in extra.split(';').filter(|i| !i.trim().is_empty()) {
            let (k, v) = item.split_once('=').expect("name=value");
            cfg.postconf.insert(k.trim().into(), v.trim().into());
        }
    }
    RelaySpec::new(Input::file(cfg))
}

/// A Postfix instance written by hand in a temporary directory: `main_cf` (given the
/// directory), one smtpd on a free loopback port, and [`BARE_SERVICES`].
struct HandWritten {
    dir: tempfile::TempDir,
    port: u16,
    /// From `postfix start` to the first SMTP banner, polled every 5 ms.
    started_in: Duration,
}

/// A minimal relay written by hand: what an administrator would configure without smtp-relay.
struct BareRelay(HandWritten);

const BARE_SERVICES: &str = "\
pickup     unix  n       -       n       60      1       pickup
cleanup    unix  n       -       n       -       0       cleanup
qmgr       unix  n       -       n       300     1       qmgr
rewrite    unix  -       -       n       -       -       trivial-rewrite
bounce     unix  -       -       n       -       0       bounce
defer      unix  -       -       n       -       0       bounce
trace      unix  -       -       n       -       0       bounce
verify     unix  -       -       n       -       1       verify
flush      unix  n       -       n       1000?   0       flush
proxymap   unix  -       -       n       -       -       proxymap
smtp       unix  -       -       n       -       -       smtp
relay      unix  -       -       n       -       -       smtp
showq      unix  n       -       n       -       -       showq
error      unix  -       -       n       -       -       error
retry      unix  -       -       n       -       -       error
discard    unix  -       -       n       -       -       discard
anvil      unix  -       -       n       -       1       anvil
scache     unix  -       -       n       -       1       scache
postlog    unix-dgram n  -       n       -       1       postlogd
";

impl HandWritten {
    fn start(main_cf: impl Fn(&str) -> String, more_services: &str) -> HandWritten {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let etc = dir.path().join("etc");
        let data = dir.path().join("data");
        fs::create_dir_all(&etc).unwrap();
        fs::create_dir_all(dir.path().join("spool")).unwrap();
        fs::create_dir_all(&data).unwrap();
        let (uid, _) = smtp_relay::postfix::instance::postfix_ids().unwrap();
        chown(&data, Some(uid), None).unwrap();
        let d = dir.path().display().to_string();
        let common = format!(
            "compatibility_level = 3.6
queue_directory = {d}/spool
data_directory = {d}/data
meta_directory = /etc/postfix
mydestination =
local_recipient_maps =
local_transport = error:local delivery is disabled
alias_maps =
alias_database =
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
smtputf8_enable = no
biff = no
maillog_file = {d}/maillog
maillog_file_prefixes = {d}
"
        );
        fs::write(etc.join("main.cf"), common + &main_cf(&d)).unwrap();
        fs::write(
            etc.join("master.cf"),
            format!("127.0.0.1:{port} inet n - n - - smtpd\n{BARE_SERVICES}{more_services}"),
        )
        .unwrap();
        // `postfix start` waits ~1.5 s for a main.cf written within the last seconds.
        let _ = fs::File::options()
            .write(true)
            .open(etc.join("main.cf"))
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(10));
        let started = Instant::now();
        let out = Command::new("postfix")
            .arg("-c")
            .arg(&etc)
            .arg("start")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "postfix start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        while !smtp_ready(loopback(port)) {
            assert!(
                started.elapsed() < DEADLINE,
                "the hand-written Postfix never answered"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        HandWritten {
            dir,
            port,
            started_in: started.elapsed(),
        }
    }

    fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }
}

impl BareRelay {
    fn start(sink_port: u16) -> BareRelay {
        BareRelay(HandWritten::start(
            |_| {
                format!(
                    "myhostname = bare.example.net
mydomain = example.net
myorigin = $mydomain
relay_domains = example.net
mynetworks = 127.0.0.1/32
relayhost = [127.0.0.1]:{sink_port}
smtpd_relay_restrictions = reject_unauth_destination, permit_sasl_authenticated, permit_mynetworks, reject
"
                )
            },
            "",
        ))
    }
}

/// The relayhost of the TLS settings: a Postfix that takes mail over STARTTLS (a fresh
/// self-signed certificate) and discards it, counting the messages in its log.
struct TlsSink {
    postfix: HandWritten,
    /// How far its log was read, and the messages counted up to there.
    read: std::sync::Mutex<(u64, u64)>,
}

impl TlsSink {
    fn start() -> TlsSink {
        let postfix = HandWritten::start(
            |d| {
                let out = Command::new("openssl")
                    .args([
                        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    ])
                    .args(["-subj", "/CN=sink.example.net"])
                    .args(["-keyout", &format!("{d}/key.pem")])
                    .args(["-out", &format!("{d}/cert.pem")])
                    .output()
                    .expect("openssl");
                assert!(out.status.success(), "openssl req");
                format!(
                    "myhostname = sink.example.net
relay_domains = example.net
mynetworks = 127.0.0.1/32
relay_transport = discard:
default_transport = discard:
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_tls_security_level = may
smtpd_tls_cert_file = {d}/cert.pem
smtpd_tls_key_file = {d}/key.pem
"
                )
            },
            "tlsmgr     unix  -       -       n       1000?   1       tlsmgr\n",
        );
        TlsSink {
            postfix,
            read: std::sync::Mutex::new((0, 0)),
        }
    }
}

/// Where the relay under test delivers.
trait Sink {
    fn port(&self) -> u16;
    /// Messages received so far.
    fn count(&self) -> u64;
}

impl Sink for CountingSink {
    fn port(&self) -> u16 {
        self.port
    }
    fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }
}

impl Sink for TlsSink {
    fn port(&self) -> u16 {
        self.postfix.port
    }
    fn count(&self) -> u64 {
        use std::io::{Seek, SeekFrom};
        let mut read = self.read.lock().unwrap();
        let Ok(mut log) = fs::File::open(self.postfix.dir.path().join("maillog")) else {
            return 0;
        };
        let mut more = Vec::new();
        if log.seek(SeekFrom::Start(read.0)).is_ok() && log.read_to_end(&mut more).is_ok() {
            // Whole lines only: the last may be half written.
            let whole = more.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            let lines = String::from_utf8_lossy(&more[..whole]);
            read.1 += lines
                .lines()
                .filter(|l| l.contains(" status=sent "))
                .count() as u64;
            read.0 += whole as u64;
        }
        read.1
    }
}

impl Drop for HandWritten {
    fn drop(&mut self) {
        let spool = self.spool();
        if let Some(pid) = master_pid(&spool) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            let start = Instant::now();
            while process_alive(pid) && start.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(20));
            }
            if process_alive(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

fn smtp_source(port: u16, messages: u64) {
    let out = Command::new("smtp-source")
        .args(["-s", &sessions().to_string(), "-l", &size().to_string()])
        .args(["-m", &messages.to_string()])
        .args(["-f", "bench@example.net", "-t", "sink@example.net"])
        .arg(loopback(port).to_string())
        .output()
        .expect("running smtp-source");
    assert!(
        out.status.success(),
        "smtp-source: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// CPU seconds (user + system) used so far by a process and its reaped children.
fn cpu_of(pid: u32, with_children: bool) -> f64 {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    // utime, stime, cutime, cstime are fields 14-17 of stat, 12-15 after the name.
    let ticks = f[11] + f[12] + if with_children { f[13] + f[14] } else { 0.0 };
    ticks
        / nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100) as f64
}

/// The processes of a running relay: the Postfix master, the daemons it runs, and for
/// smtp-relay its own process (the log pump and metrics).
fn relay_processes(spool: &std::path::Path, supervisor: Option<u32>) -> (u32, Vec<u32>) {
    let master = master_pid(spool).expect("master.pid") as u32;
    let mut others: Vec<u32> = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
            let ppid = stat[stat.rfind(')')? + 2..]
                .split_whitespace()
                .nth(1)?
                .parse::<u32>()
                .ok()?;
            (ppid == master).then_some(pid)
        })
        .collect();
    others.extend(supervisor);
    (master, others)
}

fn supervisor_of(instance: &Instance) -> Option<u32> {
    match instance {
        Instance::SmtpRelay(relay) => Some(relay.pid()),
        Instance::Bare(_) => None,
    }
}

/// CPU seconds used so far by the whole relay: the master with every daemon it started (reaped
/// ones are in its children's times, live ones are read one by one) and the supervisor.
fn relay_cpu(instance: &Instance) -> f64 {
    let (master, others) = relay_processes(&instance.spool(), supervisor_of(instance));
    cpu_of(master, true)
        + others
            .into_iter()
            .map(|pid| cpu_of(pid, false))
            .sum::<f64>()
}

/// The relay's memory now, in MiB: the proportional set size (shared pages divided among the
/// processes sharing them) of all its processes.
fn relay_pss_mib(spool: &std::path::Path, supervisor: Option<u32>) -> f64 {
    let (master, others) = relay_processes(spool, supervisor);
    let kib: u64 = std::iter::once(master)
        .chain(others)
        .filter_map(|pid| {
            let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
            rollup
                .lines()
                .find_map(|l| l.strip_prefix("Pss:"))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .sum();
    kib as f64 / 1024.0
}

/// Samples [`relay_pss_mib`] every 100 ms until dropped; the peak seen.
struct PeakMemory {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<f64>>,
}

impl PeakMemory {
    fn watch(instance: &Instance) -> PeakMemory {
        let (spool, supervisor) = (instance.spool(), supervisor_of(instance));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak: f64 = 0.0;
            while !stopping.load(Ordering::Relaxed) {
                peak = peak.max(relay_pss_mib(&spool, supervisor));
                std::thread::sleep(Duration::from_millis(100));
            }
            peak
        });
        PeakMemory {
            stop,
            thread: Some(thread),
        }
    }

    fn peak(mut self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map_or(0.0, |t| t.join().unwrap_or(0.0))
    }
}

/// Sends `messages` through `instance` and returns the seconds until the sink counted them all
/// and the relay's queue is empty.
fn drive(instance: &Instance, sink: &dyn Sink, messages: u64) -> f64 {
    drive_with(instance, sink, messages, || {
        smtp_source(instance.port(), messages)
    })
}

/// [`drive`], the messages sent by `send`.
fn drive_with(instance: &Instance, sink: &dyn Sink, messages: u64, send: impl FnOnce()) -> f64 {
    let before = sink.count();
    let start = Instant::now();
    send();
    let spool = instance.spool();
    loop {
        if sink.count() >= before + messages && queued(&spool) == 0 {
            return start.elapsed().as_secs_f64();
        }
        assert!(
            start.elapsed() < RUN_DEADLINE,
            "only {} of {messages} messages arrived in {RUN_DEADLINE:?}",
            sink.count() - before
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    SmtpRelay,
    Bare,
}

/// Messages per second, CPU milliseconds the relay spent per message, and its peak memory
/// (MiB, PSS) under that load.
fn measure(kind: Kind, messages: u64) -> Measured {
    let sink = CountingSink::start();
    let instance = match kind {
        Kind::SmtpRelay => start_smtp_relay(sink.port, false, &[]),
        Kind::Bare => Instance::Bare(BareRelay::start(sink.port)),
    };
    measure_on(instance, &sink, messages)
}

/// smtp-relay with Postfix settings added to its own, into smtp-sink or, with `tls`, through
/// STARTTLS into a [`TlsSink`]: as [`measure`].
fn measure_with(tls: bool, extra: &[(&str, &str)], messages: u64) -> Measured {
    let sink: Box<dyn Sink> = if tls {
        Box::new(TlsSink::start())
    } else {
        Box::new(CountingSink::start())
    };
    let instance = start_smtp_relay(sink.port(), tls, extra);
    measure_on(instance, sink.as_ref(), messages)
}

fn measure_on(instance: Instance, sink: &dyn Sink, messages: u64) -> Measured {
    // Just started, before any mail: the master and its resident daemons (and the supervisor).
    let rest = relay_pss_mib(&instance.spool(), supervisor_of(&instance));
    drive(&instance, sink, WARMUP);
    let cpu_before = relay_cpu(&instance);
    let memory = PeakMemory::watch(&instance);
    let secs = drive(&instance, sink, messages);
    let peak = memory.peak();
    let cpu = relay_cpu(&instance) - cpu_before;
    if let Instance::SmtpRelay(relay) = instance {
        let (status, _) = relay.stop();
        assert_eq!(status.code(), Some(0));
    }
    Measured {
        rate: messages as f64 / secs,
        cpu_ms: cpu * 1000.0 / messages as f64,
        peak,
        rest,
    }
}

/// What one instance did under load.
#[derive(Clone, Copy, Default)]
struct Measured {
    /// Messages per second.
    rate: f64,
    /// CPU milliseconds the relay spent per message.
    cpu_ms: f64,
    /// Peak memory under load (MiB, PSS of all its processes).
    peak: f64,
    /// Memory just after start, before any mail (MiB, PSS).
    rest: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Start latency: from spawning `smtp-relay run` (or `postfix start` of the bare relay) to the
/// first 220 banner, each polled every 5 ms, `rounds` times, alternating.
fn start_latency(rounds: u64) {
    println!("\nstart: spawn to the 220 banner, polled every 5 ms");
    println!("{:>5}  {:>14}  {:>10}", "round", "smtp-relay ms", "bare ms");
    let sink = CountingSink::start();
    let (mut ours, mut bare) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let mut pair = [0.0; 2];
        for first in [round % 2 == 1, round % 2 == 0] {
            if first {
                let (relay, took) = smtp_relay_spec(sink.port).start_timed();
                pair[0] = took.as_secs_f64() * 1000.0;
                let (status, _) = relay.stop();
                assert_eq!(status.code(), Some(0));
            } else {
                pair[1] = BareRelay::start(sink.port).0.started_in.as_secs_f64() * 1000.0;
            }
        }
        println!("{round:>5}  {:>14.0}  {:>10.0}", pair[0], pair[1]);
        ours.push(pair[0]);
        bare.push(pair[1]);
    }
    let (o, b) = (median(ours), median(bare));
    println!("{:>5}  {o:>14.0}  {b:>10.0}", "median");
}

/// A SASL user added: from the atomic swap of the users' directory (as the kubelet updates a
/// Secret volume) to that user's first successful login, polled every 10 ms, with the relay's
/// default reload interval.
fn sasl_change_latency(rounds: u64) {
    println!(
        "\nSASL user added: directory swapped to the first successful login (reload interval 2 s)"
    );
    println!("{:>5}  {:>10}", "round", "ms");
    let sink = CountingSink::start();
    let mut spec = smtp_relay_spec(sink.port);
    spec.reload_interval_secs = 2;
    let dir = spec.path("users");
    let mut users = SecretVolume::create(dir.clone(), &[(USER, USER_PASSWORD)]);
    if let Input::File(cfg) = &mut spec.input {
        cfg.sasl_users_dir = Some(dir);
    }
    let relay = spec.start();
    let mut took = Vec::new();
    for round in 1..=rounds {
        let name = format!("added{round}");
        let mut all = vec![(USER, USER_PASSWORD)];
        all.push((name.as_str(), "added password"));
        let started = Instant::now();
        users.update(&all);
        loop {
            let mut conn = connect(relay.addr(), OTHER_CLIENT);
            let ok = login(&mut conn, &name, "added password").is_ok();
            let _ = conn.quit();
            if ok {
                break;
            }
            assert!(started.elapsed() < DEADLINE, "{name} never logged in");
            std::thread::sleep(Duration::from_millis(10));
        }
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        println!("{round:>5}  {ms:>10.0}");
        took.push(ms);
        // Apart from the reload ticks, not in step with them.
        std::thread::sleep(Duration::from_millis(700));
    }
    println!("{:>5}  {:>10.0}", "median", median(took));
    let (status, _) = relay.stop();
    assert_eq!(status.code(), Some(0));
}

/// A Postfix setting (or several) that may raise the relay's ceiling.
struct Candidate {
    name: &'static str,
    /// Through STARTTLS to the relayhost (a [`TlsSink`]) rather than into smtp-sink.
    tls: bool,
    settings: &'static [(&'static str, &'static str)],
}

/// Each tried on top of smtp-relay's own settings.
const CANDIDATES: &[Candidate] = &[
    // smtp-relay's defaults since the measurements in BENCHMARKS.md; these two undo them.
    Candidate {
        name: "before: connections to the relayhost cached on demand only",
        tls: false,
        settings: &[("smtp_connection_cache_destinations", "")],
    },
    Candidate {
        name: "before: TLS connections to the relayhost never reused",
        tls: true,
        settings: &[
            ("smtp_tls_connection_reuse", "no"),
            ("smtp_connection_cache_destinations", ""),
        ],
    },
    Candidate {
        name: "40 deliveries at once (default 20)",
        tls: false,
        settings: &[("default_destination_concurrency_limit", "40")],
    },
    Candidate {
        name: "10 deliveries at once",
        tls: false,
        settings: &[("default_destination_concurrency_limit", "10")],
    },
    Candidate {
        name: "deliveries start at 20 at once (default 5)",
        tls: false,
        settings: &[("initial_destination_concurrency", "20")],
    },
    Candidate {
        name: "no inflow flow control (unsafe: the queue may grow without bound)",
        tls: false,
        settings: &[("in_flow_delay", "0s")],
    },
];

/// Each of [`CANDIDATES`] against smtp-relay's defaults (into the same kind of sink),
/// alternating, `rounds` times: the median messages per second of both and their ratio.
/// `BENCH_CANDIDATES` (substrings of their names, comma-separated) picks some.
fn settings(rounds: u64, messages: u64) {
    let picked = std::env::var("BENCH_CANDIDATES").unwrap_or_default();
    println!(
        "smtp-source -s {} -l {} -m {messages}, {rounds} rounds per setting, alternating \
         with smtp-relay's defaults",
        sessions(),
        size()
    );
    println!(
        "| setting | defaults msg/s | with it msg/s | ratio | defaults cpu ms/msg | with it cpu ms/msg |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for c in CANDIDATES {
        if !picked.is_empty() && !picked.split(',').any(|p| c.name.contains(p.trim())) {
            continue;
        }
        let (mut base, mut with) = (Vec::new(), Vec::new());
        let (mut base_cpu, mut with_cpu) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let tuned_first = round % 2 == 1;
            for tuned in [tuned_first, !tuned_first] {
                let settings = if tuned { c.settings } else { &[] };
                let Measured {
                    rate, cpu_ms: cpu, ..
                } = measure_with(c.tls, settings, messages);
                let (rates, cpus) = if tuned {
                    (&mut with, &mut with_cpu)
                } else {
                    (&mut base, &mut base_cpu)
                };
                rates.push(rate);
                cpus.push(cpu);
            }
        }
        let settings: Vec<String> = c
            .settings
            .iter()
            .map(|(k, v)| format!("`{k} = {v}`"))
            .collect();
        let (b, w) = (median(base), median(with));
        println!(
            "| {}: {} | {b:.0} | {w:.0} | {:.3} | {:.2} | {:.2} |",
            c.name,
            settings.join(", "),
            w / b,
            median(base_cpu),
            median(with_cpu)
        );
    }
}

/// smtp-relay with the SASL user [`USER`] (and a self-signed certificate for STARTTLS), into
/// `sink_port`; with `limited`, limits per user so high that no run reaches them, so that
/// smtpd asks the relay's policy service about every recipient of the user and is always told
/// `DUNNO`.
fn start_user_relay(sink_port: u16, limited: bool) -> Instance {
    let mut spec = smtp_relay_spec(sink_port);
    with_user_and_certificate(&mut spec);
    if let Input::File(cfg) = &mut spec.input {
        cfg.rate_limits = limited.then_some(RateLimitsFile {
            interval_seconds: Some(3600),
            per_client: None,
            per_user: Some(LimitsFile {
                connections: Some(1_000_000),
                messages: Some(1_000_000),
                recipients: Some(10_000_000),
            }),
        });
    }
    let relay = spec.start();
    // The policy service is asked exactly when there are limits per user.
    let main_cf = fs::read_to_string(relay.spec().postfix_dir().join("main.cf")).unwrap();
    assert_eq!(
        main_cf.contains("smtp_relay_user_limits"),
        limited,
        "the policy service in main.cf"
    );
    Instance::SmtpRelay(relay)
}

/// [`sessions`] clients at once, each in one session from [`OTHER_CLIENT`] (outside the
/// relay's networks) logged in as [`USER`] after STARTTLS, sending its share of `messages`
/// one after the other, each to one recipient of the relay's domain.
fn authenticated_source(addr: std::net::SocketAddr, messages: u64) {
    let sessions = sessions();
    std::thread::scope(|scope| {
        for s in 0..sessions {
            let share = messages / sessions + u64::from(s < messages % sessions);
            scope.spawn(move || {
                let mut conn = connect(addr, OTHER_CLIENT);
                login(&mut conn, USER, USER_PASSWORD).unwrap();
                let (from, to) = (format!("bench@{DOMAIN}"), format!("sink@{DOMAIN}"));
                for m in 0..share {
                    send_on(&mut conn, &from, &to, &format!("bench-{s}-{m}"))
                        .unwrap_or_else(|e| panic!("session {s}, message {m}: {e}"));
                }
                let _ = conn.quit();
            });
        }
    });
}

/// What one relay with a SASL user did under [`authenticated_source`]'s load.
#[derive(Clone, Copy, Default)]
struct UserMeasured {
    /// Messages per second.
    rate: f64,
    /// CPU milliseconds the whole relay spent per message.
    cpu_ms: f64,
    /// Of which the supervisor (`smtp-relay run`, where the policy service runs).
    supervisor_ms: f64,
}

fn measure_user(limited: bool, messages: u64) -> UserMeasured {
    let sink = CountingSink::start();
    let instance = start_user_relay(sink.port, limited);
    let addr = loopback(instance.port());
    let supervisor = supervisor_of(&instance).unwrap();
    drive_with(&instance, &sink, WARMUP, || {
        authenticated_source(addr, WARMUP)
    });
    let (cpu_before, supervisor_before) = (relay_cpu(&instance), cpu_of(supervisor, false));
    let secs = drive_with(&instance, &sink, messages, || {
        authenticated_source(addr, messages)
    });
    let cpu = relay_cpu(&instance) - cpu_before;
    let supervisor_cpu = cpu_of(supervisor, false) - supervisor_before;
    if let Instance::SmtpRelay(relay) = instance {
        let log = relay.mail_log();
        assert!(
            !log.contains("problem talking to server"),
            "smtpd could not ask the policy service"
        );
        let (status, _) = relay.stop();
        assert_eq!(status.code(), Some(0));
    }
    let per_message = |secs: f64| secs * 1000.0 / messages as f64;
    UserMeasured {
        rate: messages as f64 / secs,
        cpu_ms: per_message(cpu),
        supervisor_ms: per_message(supervisor_cpu),
    }
}

/// smtp-relay with a SASL user and no limits per user, against the same relay with limits per
/// user that are never reached (the policy service asked about every recipient), alternating,
/// `rounds` times; authenticated sessions, since anonymous clients never ask the service.
fn user_limits(rounds: u64, messages: u64) {
    println!(
        "{} authenticated sessions (STARTTLS, AUTH) sending {messages} messages into \
         smtp-sink -c, {rounds} rounds, after a {WARMUP}-message warm-up per instance; \
         \"limits\": rateLimits.perUser of 1,000,000 sessions, 1,000,000 messages and \
         10,000,000 recipients per 3600 s",
        sessions()
    );
    println!(
        "| round | order | no limits msg/s | cpu ms/msg | supervisor ms/msg | limits msg/s | cpu ms/msg | supervisor ms/msg |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
    let row = |round: &str, order: &str, n: &UserMeasured, l: &UserMeasured| {
        println!(
            "| {round} | {order} | {:.0} | {:.2} | {:.3} | {:.0} | {:.2} | {:.3} |",
            n.rate, n.cpu_ms, n.supervisor_ms, l.rate, l.cpu_ms, l.supervisor_ms
        );
    };
    let mut all = [Vec::new(), Vec::new()];
    for round in 1..=rounds {
        let limited_first = round % 2 == 0;
        let mut results = [UserMeasured::default(); 2];
        for limited in [limited_first, !limited_first] {
            results[limited as usize] = measure_user(limited, messages);
        }
        let order = if limited_first {
            "limits, then none"
        } else {
            "none, then limits"
        };
        row(&round.to_string(), order, &results[0], &results[1]);
        for (limited, result) in results.into_iter().enumerate() {
            all[limited].push(result);
        }
    }
    let medians = |of: &[UserMeasured]| UserMeasured {
        rate: median(of.iter().map(|m| m.rate).collect()),
        cpu_ms: median(of.iter().map(|m| m.cpu_ms).collect()),
        supervisor_ms: median(of.iter().map(|m| m.supervisor_ms).collect()),
    };
    let (none, limits) = (medians(&all[0]), medians(&all[1]));
    row("median", "", &none, &limits);
    println!(
        "ratios limits / no limits (medians): msg/s {:.3}, cpu per message {:.3}, \
         supervisor cpu per message {:.3}",
        limits.rate / none.rate,
        limits.cpu_ms / none.cpu_ms,
        limits.supervisor_ms / none.supervisor_ms
    );
    println!(
        "difference limits - no limits (medians): supervisor {:+.3} ms/msg, whole relay \
         {:+.2} ms/msg",
        limits.supervisor_ms - none.supervisor_ms,
        limits.cpu_ms - none.cpu_ms
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would pass nothing useful to us.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    require_postfix();
    if std::env::var("BENCH_ONLY").as_deref() == Ok("settings") {
        settings(
            env_number("BENCH_ROUNDS", 3),
            env_number("BENCH_MESSAGES", 5000),
        );
        return;
    }
    if std::env::var("BENCH_ONLY").as_deref() == Ok("user-limits") {
        user_limits(
            env_number("BENCH_ROUNDS", 3),
            env_number("BENCH_MESSAGES", 5000),
        );
        return;
    }
    if std::env::var("BENCH_ONLY").as_deref() == Ok("latency") {
        start_latency(env_number("BENCH_ROUNDS", 5));
        sasl_change_latency(env_number("BENCH_ROUNDS", 5));
        return;
    }
    let messages = env_number("BENCH_MESSAGES", 5000);
    let rounds = env_number("BENCH_ROUNDS", 3);
    println!(
        "smtp-source -s {} -l {} -m {messages} into smtp-sink -c, {rounds} rounds, \
         after a {WARMUP}-message warm-up per instance",
        sessions(),
        size()
    );
    println!(
        "| round | order | smtp-relay msg/s | cpu ms/msg | peak MiB | at rest MiB | bare msg/s | cpu ms/msg | peak MiB | at rest MiB |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let row = |round: &str, order: &str, r: &Measured, b: &Measured| {
        println!(
            "| {round} | {order} | {:.0} | {:.2} | {:.1} | {:.1} | {:.0} | {:.2} | {:.1} | {:.1} |",
            r.rate, r.cpu_ms, r.peak, r.rest, b.rate, b.cpu_ms, b.peak, b.rest
        );
    };
    let mut all = [Vec::new(), Vec::new()];
    for round in 1..=rounds {
        let order = if round % 2 == 1 {
            [Kind::SmtpRelay, Kind::Bare]
        } else {
            [Kind::Bare, Kind::SmtpRelay]
        };
        let mut results = [Measured::default(); 2];
        for kind in order {
            results[(kind == Kind::Bare) as usize] = measure(kind, messages);
        }
        let order = if order[0] == Kind::SmtpRelay {
            "smtp-relay, then bare"
        } else {
            "bare, then smtp-relay"
        };
        row(&round.to_string(), order, &results[0], &results[1]);
        for (kind, result) in results.into_iter().enumerate() {
            all[kind].push(result);
        }
    }
    let medians = |of: &[Measured]| Measured {
        rate: median(of.iter().map(|m| m.rate).collect()),
        cpu_ms: median(of.iter().map(|m| m.cpu_ms).collect()),
        peak: median(of.iter().map(|m| m.peak).collect()),
        rest: median(of.iter().map(|m| m.rest).collect()),
    };
    let (relay, bare) = (medians(&all[0]), medians(&all[1]));
    row("median", "", &relay, &bare);
    let (r, b, rc, bc) = (relay.rate, bare.rate, relay.cpu_ms, bare.cpu_ms);
    println!("ratio smtp-relay / bare, msg/s (medians): {:.3}", r / b);
    println!(
        "ratio bare / smtp-relay, cpu per message (medians): {:.3}",
        bc / rc
    );
    start_latency(5);
    sasl_change_latency(5);
}
