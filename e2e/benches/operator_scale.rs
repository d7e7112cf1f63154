//! What the operator costs at 1, 100 and 1,000 SmtpRelays, on the project's real control plane
//! (etcd, kube-apiserver, kube-controller-manager; no node, so no relay pod ever runs and no
//! relay gets Ready: the most reconciles an idle cluster can cause).
//!
//! For each size, in its own namespace: N relays, each with its relayhost-credentials Secret,
//! are created at once; the table reports the time until every relay has status for its
//! generation with its references resolved, the operator's API requests meanwhile (its own
//! `smtp_relay_operator_api_requests_total`, watches left out); then, once the StatefulSet
//! controller has created every pod and recorded every StatefulSet's status, and the operator
//! has made no full reconcile for 10 s (the cluster is quiet), over one idle minute: the
//! operator's requests by verb, its reconciles and how many of them found nothing changed (no
//! request), every client's requests (kube-apiserver's `apiserver_request_total`: the
//! controller-manager's too), and the operator's resident memory (now and peak) with the part
//! its data holds (jemalloc's allocated bytes, `smtp_relay_operator_heap_bytes`).
//!
//! Run: `cargo build --release --workspace --bins && cargo bench -p smtp-relay-e2e --bench
//! operator_scale` (BENCH_SIZES=1,100 for fewer; BENCH_IDLE_SECONDS for another window).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use smtp_relay_e2e::operator::{self, Operator, OperatorOptions};
use smtp_relay_e2e::{tools, ControlPlane};

/// Requests by verb and resource (watches excluded).
fn apiserver_requests(cp: &ControlPlane) -> BTreeMap<String, f64> {
    let text = cp.kubectl_ok(["get", "--raw", "/metrics"]);
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |k: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or_default()
                .to_string()
        };
        let (verb, resource) = (label("verb"), label("resource"));
        if verb == "WATCH" || resource.is_empty() {
            continue;
        }
        let key = match label("subresource").as_str() {
            "" => format!("{verb} {resource}"),
            sub => format!("{verb} {resource}/{sub}"),
        };
        *out.entry(key).or_default() += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    out
}

fn delta(after: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

fn total(m: &BTreeMap<String, f64>) -> f64 {
    // An empty f64 sum is -0.0.
    m.values().sum::<f64>() + 0.0
}

/// The six largest, as "KEY count".
fn largest(m: &BTreeMap<String, f64>) -> String {
    let mut v: Vec<_> = m.iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(a.1));
    v.iter()
        .take(6)
        .map(|(k, n)| format!("{k} {n:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn operator_metric(op: &Operator, name: &str) -> f64 {
    smtp_relay_e2e::user_path::metric(&op.metrics(), name).unwrap_or(0.0)
}

/// The operator's own requests to the API server, by verb (its
/// `smtp_relay_operator_api_requests_total`), watches left out.
fn operator_requests(op: &Operator) -> BTreeMap<String, f64> {
    op.metrics()
        .lines()
        .filter_map(|l| l.strip_prefix("smtp_relay_operator_api_requests_total{verb=\""))
        .filter_map(|l| {
            let (verb, value) = l.split_once("\"} ")?;
            Some((verb.to_string(), value.trim().parse().ok()?))
        })
        .filter(|(verb, _)| verb != "WATCH")
        .collect()
}

/// Resident memory of the operator process, now and at its peak, in MiB.
fn rss_mib(op: &Operator) -> (f64, f64) {
    let status = op
        .pid()
        .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

fn relays_yaml(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                r#"apiVersion: v1
kind: Secret
metadata: {{name: login-{i}}}
stringData: {{username: user{i}, password: Bench-Password-{i}}}
---
apiVersion: smtprelay.dev/v1alpha1
kind: SmtpRelay
metadata: {{name: r{i}}}
spec:
  domain: example.org
  networks: ["10.0.0.0/24"]
  relayhost:
    host: mx.example.org
    port: 587
    credentialsSecretRef: {{name: login-{i}}}
    tls: {{level: encrypt}}
"#
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Relays of `ns` whose status describes their generation with every reference resolved.
fn converged(cp: &ControlPlane, ns: &str) -> usize {
    operator::list_json(cp, ns, "smtprelays")
        .iter()
        .filter(|r| {
            r["status"]["observedGeneration"] == r["metadata"]["generation"]
                && operator::condition(r, "SecretsResolved").is_some_and(|c| c["status"] == "True")
        })
        .count()
}

/// StatefulSets of `ns` whose status describes their generation and their one pod.
fn stateful_sets_observed(cp: &ControlPlane, ns: &str) -> usize {
    operator::list_json(cp, ns, "statefulsets")
        .iter()
        .filter(|s| {
            s["status"]["observedGeneration"] == s["metadata"]["generation"]
                && s["status"]["replicas"] == 1
                && s["status"]["currentRevision"].is_string()
        })
        .count()
}

/// Waits until the operator has made no full reconcile (one that could send a request) for
/// ten seconds.
fn wait_quiet(op: &Operator) {
    let full = || {
        operator_metric(op, "smtp_relay_operator_reconciles_total")
            - operator_metric(op, "smtp_relay_operator_reconciles_unchanged_total")
    };
    let quiet_for = Duration::from_secs(10);
    let (mut last, mut since) = (full(), Instant::now());
    tools::poll_until(Duration::from_secs(600), "the operator quiet", || {
        let now = full();
        if now != last {
            (last, since) = (now, Instant::now());
        }
        (since.elapsed() >= quiet_for).then_some(())
    });
}

struct Row {
    n: usize,
    /// Relays in the cluster during the idle window (the sizes add up).
    all: usize,
    create: Option<Duration>,
    /// The operator's requests while the relays were created and converged.
    create_requests: f64,
    /// The operator's requests per idle minute, by verb.
    idle_requests: BTreeMap<String, f64>,
    /// Every client's requests per idle minute (the controller-manager's included).
    cluster_requests: BTreeMap<String, f64>,
    reconciles: f64,
    unchanged: f64,
    rss: (f64, f64),
    /// The bytes jemalloc holds allocated for the operator's data, in MiB.
    heap: f64,
}

#[allow(
    clippy::too_many_lines,
    reason = "the benchmark's steps in order: they share their state"
)]
fn main() {
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "1,100,1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let idle = Duration::from_secs(
        std::env::var("BENCH_IDLE_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    // Once the operator is quiet, a little more for the API server's counters.
    let settle = Duration::from_secs(5);
    let cp = ControlPlane::start().expect("control plane starts");
    let op = Operator::start(&cp, OperatorOptions::default()).expect("operator starts");
    let mut rows = Vec::new();

    let measure_idle = |n: usize, all: usize, create: Option<Duration>, create_requests: f64| {
        // Fixed windows: they measure rates, they do not wait for anything.
        std::thread::sleep(settle);
        let (r0, u0) = (
            operator_metric(&op, "smtp_relay_operator_reconciles_total"),
            operator_metric(&op, "smtp_relay_operator_reconciles_unchanged_total"),
        );
        let (ops0, cluster0) = (operator_requests(&op), apiserver_requests(&cp));
        std::thread::sleep(idle);
        let (ops1, cluster1) = (operator_requests(&op), apiserver_requests(&cp));
        let per_minute = |v: f64| (v * 60.0 / idle.as_secs_f64()).max(0.0);
        Row {
            n,
            all,
            create,
            create_requests,
            idle_requests: delta(&ops1, &ops0)
                .into_iter()
                .map(|(k, v)| (k, per_minute(v)))
                .collect(),
            cluster_requests: delta(&cluster1, &cluster0)
                .into_iter()
                .map(|(k, v)| (k, per_minute(v)))
                .collect(),
            reconciles: per_minute(
                operator_metric(&op, "smtp_relay_operator_reconciles_total") - r0,
            ),
            unchanged: per_minute(
                operator_metric(&op, "smtp_relay_operator_reconciles_unchanged_total") - u0,
            ),
            rss: rss_mib(&op),
            heap: operator_metric(&op, "smtp_relay_operator_heap_bytes{state=\"allocated\"}")
                / 1_048_576.0,
        }
    };

    rows.push(measure_idle(0, 0, None, 0.0));
    let mut all = 0;
    for &n in &sizes {
        all += n;
        let ns = format!("scale-{n}");
        operator::create_namespace(&cp, &ns);
        let yaml = relays_yaml(n);
        let before = operator_requests(&op);
        let t = Instant::now();
        let out = cp.kubectl_stdin(["create", "-n", &ns, "-f", "-"], &yaml);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        tools::poll_until(
            Duration::from_secs(600),
            &format!("{n} relays with status"),
            || (converged(&cp, &ns) == n).then_some(()),
        );
        let create = t.elapsed();
        let create_requests = total(&delta(&operator_requests(&op), &before));
        eprintln!("{n} relays converged in {create:?}");
        // The idle window starts once the StatefulSet controller has created every pod (it
        // works through a thousand StatefulSets for minutes, and each change of one
        // reconciles its relay, rightly).
        tools::poll_until(
            Duration::from_secs(1200),
            &format!("{n} relay pods created"),
            || (operator::list_json(&cp, &ns, "pods").len() == n).then_some(()),
        );
        eprintln!("{n} pods created after {:?}", t.elapsed());
        // The controller-manager (20 requests a second, its default) then records each
        // StatefulSet's status, and each such change rightly reconciles its relay and may
        // update its status: the idle window starts when that has run its course.
        tools::poll_until(
            Duration::from_secs(1200),
            &format!("{n} StatefulSets with status"),
            || (stateful_sets_observed(&cp, &ns) == n).then_some(()),
        );
        wait_quiet(&op);
        eprintln!("{n} relays quiet after {:?}", t.elapsed());
        rows.push(measure_idle(n, all, Some(create), create_requests));
    }

    println!(
        "\n| relays created | create -> status | operator requests while creating | per relay | relays in the cluster | operator requests per idle minute | by verb | reconciles per idle minute | of which unchanged (no request) | all clients' requests per idle minute | largest | operator RSS MiB (peak) | of which data MiB |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|---:|---:|");
    for r in &rows {
        let create = r
            .create
            .map_or("-".to_string(), |d| format!("{:.1} s", d.as_secs_f64()));
        let created = match r.n {
            0 => "none yet".to_string(),
            n => n.to_string(),
        };
        let per_relay = if r.n > 0 {
            format!("{:.1}", r.create_requests / r.n as f64)
        } else {
            "-".into()
        };
        println!(
            "| {created} | {create} | {:.0} | {per_relay} | {} | {:.0} | {} | {:.0} | {:.0} | {:.0} | {} | {:.1} ({:.1}) | {:.1} |",
            r.create_requests,
            r.all,
            total(&r.idle_requests),
            largest(&r.idle_requests),
            r.reconciles,
            r.unchanged,
            total(&r.cluster_requests),
            largest(&r.cluster_requests),
            r.rss.0,
            r.rss.1,
            r.heap
        );
    }
    if std::env::var_os("BENCH_OPERATOR_LOG").is_some() {
        eprintln!("{}", op.logs());
        for e in cp.audit_events().expect("audit log") {
            eprintln!(
                "audit {} {} {} {}/{} {}",
                e["requestReceivedTimestamp"].as_str().unwrap_or_default(),
                e["user"]["username"].as_str().unwrap_or_default(),
                e["verb"].as_str().unwrap_or_default(),
                e["objectRef"]["resource"].as_str().unwrap_or_default(),
                e["objectRef"]["subresource"].as_str().unwrap_or_default(),
                e["objectRef"]["name"].as_str().unwrap_or_default()
            );
        }
    }
    drop(op);
    drop(cp);
}
