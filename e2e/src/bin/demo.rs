//! The whole project on this machine, end to end, for a newcomer: the user's path on a real
//! single-node Kubernetes (etcd, kube-apiserver, controller manager, scheduler, kubelet on
//! containerd, kube-proxy, CoreDNS). Both images imported as a registry would serve them,
//! `helm install` of the chart with its default values (the operator runs as a pod), the
//! chart's unauthenticated example SmtpRelay (its relayhost a sink on this machine), its relay
//! pod Ready under the kubelet, one mail sent to the relay's Service and shown delivered. The
//! same steps as `e2e/tests/user_path.rs`, from `smtp_relay_e2e::user_path`.
//!
//! `scripts/demo.sh` installs and builds everything (tools, binaries, images) and runs it; by
//! hand:
//!
//! ```sh
//! scripts/install-deps.sh && scripts/build-images.sh
//! cargo run -p smtp-relay-e2e --bin demo [-- --keep]
//! ```
//!
//! `--keep` leaves everything running after the mail and prints the KUBECONFIG to explore it
//! with kubectl; Ctrl-C (or SIGTERM) then tears it down. Builds nothing itself. Needs root (the
//! node). Exits 0 when the mail arrived and everything stopped, 1 otherwise (with the failing
//! step named).

use std::net::SocketAddr;
use std::panic::{self, AssertUnwindSafe};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use serde_json::Value;
use smtp_relay_e2e::mail::{self, smtp_ready};
use smtp_relay_e2e::operator;
use smtp_relay_e2e::user_path::{self, NODE_IP};
use smtp_relay_e2e::{tools, ControlPlane};

const NS: &str = "mail";
const DEADLINE: Duration = Duration::from_secs(180);
const STEPS: usize = 9;
const RCPT: &str = "someone@example.net";
const FROM: &str = "app@client.test";

struct Demo {
    start: Instant,
    step: usize,
    step_start: Instant,
    current: String,
}

impl Demo {
    fn step(&mut self, title: &str) {
        self.done();
        self.step += 1;
        self.current = title.to_string();
        self.step_start = Instant::now();
        println!("\n==> [{}/{STEPS}] {title}", self.step);
    }

    fn done(&self) {
        if self.step > 0 {
            println!(
                "    ({:.1}s; {:.1}s in all)",
                self.step_start.elapsed().as_secs_f64(),
                self.start.elapsed().as_secs_f64()
            );
        }
    }
}

fn say(text: &str) {
    for line in text.lines() {
        println!("    {line}");
    }
}

fn check_prerequisites() -> Result<(), String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err("run the demo as root: the node (containerd, kubelet, bridge) needs it".into());
    }
    for tool in [
        "controlplane",
        "kubectl",
        "helm",
        "kubelet",
        "kube-proxy",
        "coredns",
        "pause.tar",
    ] {
        let path = tools::workspace_root().join(".cache/bin").join(tool);
        if !path.is_file() {
            return Err(format!(
                "{} is missing: run scripts/install-deps.sh",
                path.display()
            ));
        }
    }
    if !["/usr/sbin/smtp-sink", "/usr/bin/smtp-sink"]
        .iter()
        .any(|p| std::path::Path::new(p).exists())
    {
        return Err("smtp-sink is missing: apt-get install postfix".into());
    }
    user_path::image_tarballs().map(|_| ())
}

fn conditions_table(relay: &Value) -> String {
    let mut out = format!("{:<26} {:<7} {:<20} MESSAGE\n", "TYPE", "STATUS", "REASON");
    for c in relay["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        out.push_str(&format!(
            "{:<26} {:<7} {:<20} {}\n",
            c["type"].as_str().unwrap_or_default(),
            c["status"].as_str().unwrap_or_default(),
            c["reason"].as_str().unwrap_or_default(),
            c["message"].as_str().unwrap_or_default()
        ));
    }
    out
}

/// Blocks until SIGINT or SIGTERM. The signals are blocked only now, once every child runs,
/// so none of them inherits the mask; they are unblocked after.
fn wait_for_signal() -> Result<Signal, String> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().map_err(|e| e.to_string())?;
    let signal = set.wait().map_err(|e| e.to_string());
    let _ = set.thread_unblock();
    signal
}

fn run(demo: &mut Demo, keep: bool) -> Result<(), String> {
    demo.step("Checking prerequisites (root, tools, the two images)");
    check_prerequisites()?;
    say("ok");

    demo.step("Starting a single-node Kubernetes on this machine");
    let cp = ControlPlane::with_node().map_err(|e| e.to_string())?;
    say(&format!(
        "ready in {:.1}s: etcd, kube-apiserver, controller manager, scheduler, kubelet on containerd, kube-proxy, CoreDNS",
        cp.startup_time().as_secs_f64()
    ));
    say(&user_path::kubectl(&cp, &["get", "nodes", "-o", "wide"])?);

    demo.step("Importing the images (.cache/images/*.tar) into the node's containerd");
    user_path::import_images(&cp)?;
    for tar in user_path::image_tarballs()? {
        say(&format!("imported {}", tar.display()));
    }

    demo.step("helm install the chart (default values): the operator runs as a pod");
    let release = user_path::install_chart(&cp);
    let operator_pod = user_path::wait_operator_ready(&cp, &release, DEADLINE)?;
    say(&format!(
        "release {} in {}; pod {} Ready, as ServiceAccount {}",
        release.release,
        release.namespace,
        operator_pod,
        release.user()
    ));
    say(&user_path::kubectl(
        &cp,
        &[
            "get",
            "deployment,pods,services",
            "-n",
            &release.namespace,
            "-o",
            "wide",
        ],
    )?);

    demo.step(&format!(
        "A relayhost (smtp-sink) on the node IP, and the chart's example SmtpRelay in namespace {NS}"
    ));
    let sink_port = mail::free_port_at(NODE_IP);
    let sink_addr = SocketAddr::from((NODE_IP, sink_port));
    let sink = user_path::node_sink(sink_port)?;
    say(&format!(
        "sink on {sink_addr} (pods reach the node IP through the bridge)"
    ));
    operator::create_namespace(&cp, NS);
    // The host's connections to a ClusterIP leave from the node IP: let that client relay.
    let client_network = format!("{NODE_IP}/32");
    let (manifest, relay) = user_path::example_relay(sink_addr, &client_network, false)?;
    say(&format!(
        "kubectl apply -n {NS} -f {} (relayhost {sink_addr}, networks + {client_network})",
        user_path::EXAMPLE
    ));
    say(operator::apply(&cp, NS, &manifest).trim());

    demo.step("Waiting for the relay pod (real kubelet, probes, spool volume) and Ready=True");
    let pod = user_path::wait_relay_ready(&cp, NS, &relay, DEADLINE)?;
    say(&format!(
        "pod {} Ready on {} (IP {})",
        pod["metadata"]["name"].as_str().unwrap_or_default(),
        pod["spec"]["nodeName"].as_str().unwrap_or_default(),
        pod["status"]["podIP"].as_str().unwrap_or_default()
    ));
    say(&user_path::kubectl(
        &cp,
        &[
            "get",
            "smtpr,statefulset,pods,services,pvc",
            "-n",
            NS,
            "-o",
            "wide",
        ],
    )?);

    demo.step("Cluster DNS: the relay's Service by name");
    let ip = user_path::cluster_ip(&cp, NS, &relay)?;
    let name = format!("{relay}.{NS}.svc.cluster.local");
    let resolved = user_path::wait(
        &cp,
        NS,
        DEADLINE,
        &format!("{name} at the cluster DNS"),
        || {
            user_path::resolve_service(NS, &relay)
                .ok()
                .filter(|a| !a.is_empty())
        },
    )?;
    say(&format!(
        "{name} -> {resolved:?} (asked {}; the Service's ClusterIP is {ip})",
        user_path::CLUSTER_DNS
    ));
    if resolved != [ip] {
        return Err(format!("{name} resolved to {resolved:?}, not {ip}"));
    }

    demo.step(&format!(
        "Sending a mail to {RCPT} through the Service ({ip}:25)"
    ));
    let service = SocketAddr::from((ip, 25));
    user_path::wait(&cp, NS, DEADLINE, "SMTP at the ClusterIP", || {
        smtp_ready(service).then_some(())
    })?;
    let m = mail::marker("demo");
    let reply = user_path::send_from_host(service, FROM, RCPT, &m)?;
    say(&format!("relay answered: {reply}"));
    let got = sink
        .wait_for(RCPT, &m, DEADLINE)
        .map_err(|e| format!("{e}\n{}", user_path::diagnose(&cp, NS)))?;
    say("delivered at the sink (host -> kube-proxy -> relay pod -> sink on the node IP):");
    say(&got.headers());
    let pod_name = format!("{relay}-0");
    for line in user_path::pod_logs(&cp, NS, &pod_name)
        .lines()
        .filter(|l| l.contains("status=sent"))
    {
        say(&format!("relay log: {}", line.trim()));
    }

    demo.step("kubectl get smtpr, and the SmtpRelay's status conditions");
    say(&user_path::kubectl(&cp, &["get", "smtpr", "-n", NS])?);
    let r = operator::get_json(&cp, NS, "smtprelay", &relay)
        .ok_or_else(|| format!("SmtpRelay {NS}/{relay} is gone"))?;
    say(&conditions_table(&r));

    if keep {
        demo.done();
        println!("\nEverything keeps running. In another shell:\n");
        println!("    export KUBECONFIG={}", cp.kubeconfig().display());
        println!(
            "    {} get smtpr,pods,svc -A",
            tools::bin("kubectl").display()
        );
        println!(
            "    {} logs -n {NS} {pod_name}",
            tools::bin("kubectl").display()
        );
        println!("\nThe sink on {sink_addr} keeps recording mail sent to {ip}:25.");
        println!(
            "Press Ctrl-C (or send SIGTERM to {}) to tear it all down.",
            std::process::id()
        );
        let signal = wait_for_signal()?;
        println!("\n{signal}: tearing down");
    }
    let stopping = Instant::now();
    drop(sink);
    drop(cp);
    println!(
        "\nStopped the sink and the node (pods, daemons, bridge, rules) in {:.1}s",
        stopping.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> ExitCode {
    let mut keep = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--keep" => keep = true,
            "-h" | "--help" => {
                println!("usage: demo [--keep]\n  --keep  leave the node running after the mail, for kubectl; Ctrl-C stops it");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("unknown argument {other:?} (usage: demo [--keep])");
                return ExitCode::FAILURE;
            }
        }
    }
    let mut demo = Demo {
        start: Instant::now(),
        step: 0,
        step_start: Instant::now(),
        current: String::new(),
    };
    println!("smtp-relay-operator demo: the chart and an SmtpRelay on a real single-node Kubernetes, one mail through it");
    let result = panic::catch_unwind(AssertUnwindSafe(|| run(&mut demo, keep)));
    let failure = match result {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(_) => Some("see the panic message above".to_string()),
    };
    match failure {
        None => {
            println!(
                "\nDemo succeeded in {:.1}s: the mail went through the relay's Service and everything stopped.",
                demo.start.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Some(e) => {
            eprintln!(
                "\nDemo FAILED at step {}/{STEPS} ({}) after {:.1}s:\n{e}",
                demo.step,
                demo.current,
                demo.start.elapsed().as_secs_f64()
            );
            eprintln!(
                "Demo FAILED at step {}/{STEPS}: {}",
                demo.step, demo.current
            );
            ExitCode::FAILURE
        }
    }
}
