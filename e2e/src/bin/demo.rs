//! The whole project on this machine, end to end, for a newcomer: a real Kubernetes control
//! plane, the Helm chart, the operator (as the chart's ServiceAccount), the chart's
//! authenticated-proxy example SmtpRelay, its relay pod run for real (this machine plays the
//! kubelet), and one mail through it to a sink, shown as received.
//!
//! `scripts/demo.sh` builds everything and runs it; by hand:
//!
//! ```sh
//! scripts/install-deps.sh && cargo build --workspace --bins
//! cargo run -p smtp-relay-e2e --bin demo
//! ```
//!
//! Builds nothing itself. Needs root and Postfix (`apt-get install postfix sasl2-bin
//! libsasl2-modules`). Exits 0 when the mail arrived and everything stopped cleanly, 1 otherwise
//! (with the failing step named). `E2E_KEEP_DIRS=1` keeps the state directories.

use std::fs;
use std::io::Read;
use std::panic::{self, AssertUnwindSafe};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::Value;
use smtp_relay_e2e::mail::{self, marker, smtp_relay_send, Sink, Upstream};
use smtp_relay_e2e::operator::{self, Operator, OperatorOptions};
use smtp_relay_e2e::pod::Kubelet;
use smtp_relay_e2e::{tools, ControlPlane};

const NS: &str = "mail";
const EXAMPLE: &str = "charts/smtp-relay-operator/examples/authenticated-proxy.yaml";
const DEADLINE: Duration = Duration::from_secs(90);
const STEPS: usize = 9;

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

/// A random password (hex), so the demo never uses the example's placeholders.
fn random_password() -> Result<String, String> {
    let mut bytes = [0u8; 12];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| format!("reading /dev/urandom: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn check_prerequisites() -> Result<(), String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err("run the demo as root: the relay pod runs Postfix and mount namespaces".into());
    }
    for tool in ["postfix", "smtp-sink", "saslpasswd2", "unshare", "nsenter"] {
        let found = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
            .iter()
            .any(|d| std::path::Path::new(d).join(tool).exists());
        if !found {
            return Err(format!(
                "{tool} is missing: apt-get install postfix sasl2-bin libsasl2-modules util-linux"
            ));
        }
    }
    for tool in ["controlplane", "kubectl", "helm"] {
        let path = tools::workspace_root().join(".cache/bin").join(tool);
        if !path.is_file() {
            return Err(format!(
                "{} is missing: run scripts/install-deps.sh",
                path.display()
            ));
        }
    }
    for bin in ["smtp-relay", "smtp-relay-operator"] {
        // target_bin panics with the fix; check first for a plain message.
        let found = panic::catch_unwind(|| tools::target_bin(bin)).is_ok();
        if !found {
            return Err(format!(
                "{bin} is not built: run `cargo build --workspace --bins` first"
            ));
        }
    }
    Ok(())
}

/// The chart's example as YAML documents.
fn load_example() -> Result<Vec<serde_yaml::Value>, String> {
    let path = tools::workspace_root().join(EXAMPLE);
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        docs.push(serde::Deserialize::deserialize(doc).map_err(|e| format!("{EXAMPLE}: {e}"))?);
    }
    Ok(docs)
}

/// The name of the relayhost credentials Secret and the login in it.
fn example_relayhost_login(docs: &[serde_yaml::Value]) -> Result<(String, String), String> {
    let secret = docs
        .iter()
        .find(|d| d["kind"] == "SmtpRelay")
        .and_then(|d| d["spec"]["relayhost"]["credentialsSecretRef"]["name"].as_str())
        .ok_or(format!(
            "{EXAMPLE} has no SmtpRelay with relayhost credentials"
        ))?;
    let login = docs
        .iter()
        .find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == secret)
        .and_then(|d| d["stringData"]["username"].as_str())
        .ok_or(format!(
            "{EXAMPLE} has no Secret {secret} with stringData.username"
        ))?;
    Ok((secret.to_string(), login.to_string()))
}

/// The example, adapted to this machine: the relayhost is the local upstream relay, the
/// passwords are fresh (never the placeholders), and Postfix is told there is no DNS.
struct Adapted {
    manifest: String,
    relay: String,
    user: String,
    user_password: String,
}

fn adapt_example(
    mut docs: Vec<serde_yaml::Value>,
    relayhost_secret: &str,
    relayhost_password: &str,
    upstream_port: u16,
) -> Result<Adapted, String> {
    let mut relay = String::new();
    let (mut user, mut user_password) = (String::new(), String::new());
    for doc in &mut docs {
        match doc["kind"].as_str() {
            Some("Secret") => {
                let is_relayhost = doc["metadata"]["name"] == relayhost_secret;
                let data = doc["stringData"]
                    .as_mapping_mut()
                    .ok_or("a Secret of the example has no stringData")?;
                if is_relayhost {
                    data.insert("password".into(), relayhost_password.into());
                } else {
                    for (k, v) in data.iter_mut() {
                        let pw = random_password()?;
                        if user.is_empty() {
                            user = k.as_str().unwrap_or_default().to_string();
                            user_password = pw.clone();
                        }
                        *v = pw.into();
                    }
                }
            }
            Some("SmtpRelay") => {
                relay = doc["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let spec = &mut doc["spec"];
                spec["relayhost"]["host"] = "127.0.0.1".into();
                spec["relayhost"]["port"] = u64::from(upstream_port).into();
                let postconf = spec["postconf"]
                    .as_mapping_mut()
                    .ok_or("the example SmtpRelay has no postconf")?;
                for (k, v) in mail::loopback_postconf() {
                    postconf.insert(k.into(), v.into());
                }
            }
            _ => {}
        }
    }
    if relay.is_empty() || user.is_empty() {
        return Err(format!(
            "{EXAMPLE} no longer has an SmtpRelay and a SASL users Secret"
        ));
    }
    // As JSON (a v1 List): serde_yaml writes the string "no" unquoted, which the API server's
    // YAML 1.1 reads as a boolean.
    let items = docs
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let manifest =
        serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string();
    Ok(Adapted {
        manifest,
        relay,
        user,
        user_password,
    })
}

fn kubectl_ok(cp: &ControlPlane, args: &[&str]) -> Result<String, String> {
    let out = cp.kubectl(args);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn conditions_table(relay: &Value) -> String {
    let mut out = format!("{:<16} {:<7} {:<20} MESSAGE\n", "TYPE", "STATUS", "REASON");
    for c in relay["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        out.push_str(&format!(
            "{:<16} {:<7} {:<20} {}\n",
            c["type"].as_str().unwrap_or_default(),
            c["status"].as_str().unwrap_or_default(),
            c["reason"].as_str().unwrap_or_default(),
            c["message"].as_str().unwrap_or_default()
        ));
    }
    out
}

fn run(demo: &mut Demo) -> Result<(), String> {
    demo.step("Checking prerequisites (root, Postfix, tools, built binaries)");
    check_prerequisites()?;
    say("ok");

    demo.step(
        "Starting a Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager)",
    );
    let cp = ControlPlane::start().map_err(|e| e.to_string())?;
    say(&format!(
        "ready in {:.1}s; kubeconfig: {}",
        cp.startup_time().as_secs_f64(),
        cp.kubeconfig().display()
    ));
    say(&kubectl_ok(&cp, &["version"])?);

    demo.step("helm install the chart, and start the operator as the chart's ServiceAccount");
    let mut op = Operator::start(&cp, OperatorOptions::default());
    say(&format!(
        "release {} in namespace {}; the operator runs here as {} (its Deployment stays Pending: no nodes)",
        op.release().release,
        op.release().namespace,
        op.user()
    ));

    demo.step(
        "Starting the mail world outside the cluster: a sink, and the relayhost in front of it",
    );
    let sink = Sink::start()?;
    let docs = load_example()?;
    let (relayhost_secret, relayhost_login) = example_relayhost_login(&docs)?;
    let relayhost_password = random_password()?;
    let upstream = Upstream::start(&sink, &[(&relayhost_login, &relayhost_password)])?;
    let adapted = adapt_example(
        docs,
        &relayhost_secret,
        &relayhost_password,
        upstream.addr.port(),
    )?;
    say(&format!(
        "sink (smtp-sink) on {}; relayhost (a second smtp-relay, requiring AUTH as {}) on {}",
        sink.addr, relayhost_login, upstream.addr
    ));

    demo.step(&format!(
        "kubectl apply -n {NS} the chart's example {EXAMPLE} (relayhost: the local one; fresh passwords)"
    ));
    operator::create_namespace(&cp, NS);
    // Through stdin: the Secrets' values never appear on a command line or in this output.
    let out = cp.kubectl_stdin(["apply", "-n", NS, "-f", "-"], &adapted.manifest);
    if !out.status.success() {
        return Err(format!(
            "kubectl apply: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    say(String::from_utf8_lossy(&out.stdout).trim());
    let relay = adapted.relay.clone();
    let sts = op.wait_for(DEADLINE, "the operator to create the StatefulSet", || {
        operator::get_json(&cp, NS, "statefulset", &relay)
    });
    say(&kubectl_ok(
        &cp,
        &["get", "statefulset,configmap,secret,service", "-n", NS],
    )?);
    let c = &sts["spec"]["template"]["spec"]["containers"][0];
    say(&format!("pod template command: {}", c["command"]));

    demo.step(
        "Running the relay pod on this machine (playing the kubelet), probing it, marking it ready",
    );
    let kubelet = Kubelet::new();
    let mut pod = kubelet
        .run_statefulset_pod(&cp, NS, &relay)
        .map_err(|e| e.to_string())?;
    say(&format!(
        "pod {} (uid {}) runs `{}` in its own mount/UTS/PID namespaces, volumes bind-mounted",
        pod.name(),
        pod.uid(),
        c["command"]
            .as_array()
            .map(|a| a
                .iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(" "))
            .unwrap_or_default()
    ));
    say(&format!(
        "pod IP {} (loopback stand-in; RELAY_LISTEN={}, the one deviation from the template)",
        pod.pod_ip(),
        pod.env("RELAY_LISTEN").unwrap_or_default()
    ));
    pod.wait_ready(DEADLINE).map_err(|e| e.to_string())?;
    say("readiness probe `smtp-relay probe` passed inside the pod");
    pod.mark_ready(&cp).map_err(|e| e.to_string())?;
    let ready = op.wait_for(DEADLINE, "SmtpRelay Ready=True", || {
        let r = operator::get_json(&cp, NS, "smtprelay", &relay)?;
        let c = operator::condition(&r, "Ready")?;
        (c["status"] == "True" && r["status"]["readyReplicas"] == 1).then_some(r)
    });
    say("Pod status written (Running, Ready); the StatefulSet counts it; the SmtpRelay is Ready");
    say(&kubectl_ok(
        &cp,
        &["get", "pod,pvc", "-n", NS, "-o", "wide"],
    )?);

    demo.step(&format!(
        "Sending a mail through the relay as SASL user {} (smtp-relay send)",
        adapted.user
    ));
    let m = marker("demo");
    let rcpt = "someone@elsewhere.org";
    let from = format!("{}@example.net", adapted.user);
    let reply = smtp_relay_send(
        pod.smtp_addr(),
        Some((&adapted.user, &adapted.user_password)),
        &from,
        rcpt,
        &m,
    )?;
    say(&format!("relay answered: {reply}"));
    let got = sink.wait_for(rcpt, &m, DEADLINE).map_err(|e| {
        format!(
            "{e}\n--- relay pod log (tail)\n{}\n--- relayhost log (tail)\n{}",
            tail(&pod.logs(), 30),
            tail(&upstream.log(), 30)
        )
    })?;
    say("delivered at the sink (client -> relay pod -> relayhost with AUTH -> sink):");
    say(&got.headers());
    for line in pod.logs().lines().filter(|l| l.contains("status=sent")) {
        say(&format!("relay log: {}", line.trim()));
    }

    demo.step("kubectl get smtpr, and the SmtpRelay's status conditions");
    say(&kubectl_ok(&cp, &["get", "smtpr", "-n", NS])?);
    say(&conditions_table(&ready));

    demo.step("Stopping everything (pod with SIGTERM, operator, relayhost, sink, control plane)");
    let status = pod.stop().map_err(|e| e.to_string())?;
    say(&format!(
        "relay pod stopped: {}",
        smtp_relay_e2e::pod::RelayPod::describe_status(status)
    ));
    drop(pod);
    if !op.stop() {
        return Err("the operator did not stop within its deadline of SIGTERM".into());
    }
    say("operator stopped");
    drop(upstream);
    drop(sink);
    drop(kubelet);
    drop(op);
    drop(cp);
    say("relayhost, sink and control plane stopped");
    demo.done();
    Ok(())
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn main() -> ExitCode {
    let mut demo = Demo {
        start: Instant::now(),
        step: 0,
        step_start: Instant::now(),
        current: String::new(),
    };
    println!("smtp-relay-operator demo: an SmtpRelay on a real control plane, its pod run here, one mail through it");
    let result = panic::catch_unwind(AssertUnwindSafe(|| run(&mut demo)));
    let failure = match result {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(_) => Some("see the panic message above".to_string()),
    };
    match failure {
        None => {
            println!(
                "\nDemo succeeded in {:.1}s: the mail went through the relay pod and everything stopped.",
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
