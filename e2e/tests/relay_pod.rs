//! The relay pod under the real kubelet, following its inputs as they change in a cluster
//! (issue 8). On the node of [`ControlPlane::with_node`], with the operator installed by the
//! chart as a pod of its image:
//!
//! 1. An SmtpRelay in mode `AllowSaslAuthNoDomain` with SASL users and relayhost credentials;
//!    its relayhost is an upstream relay on the node IP that requires AUTH (real Postfix,
//!    `mail::Upstream`) and hands mail to a sink.
//! 2. The pod as the kubelet runs it: the security context in force (capability bounding set,
//!    no new privileges, seccomp, read-only root, read-only config, writable emptyDirs), the
//!    Secret volume in the kubelet's layout with the template's mode, the command as PID 1,
//!    its own hostname; the probes pass (no restart).
//! 3. The mode, through the Service from the host: a SASL user may send anywhere (logged in
//!    inside STARTTLS, verified against the relay's CA (ConfigMap `<name>-ca`), which signed the
//!    certificate the operator issued for the Service's names: AUTH
//!    is never offered before TLS), a `networks` client only to the relay domain, and an
//!    anonymous client outside `networks` (a shell in the pod, sending to the pod's own IP)
//!    nowhere. The relay logs in to the upstream inside TLS too, once the upstream proved it
//!    is the node IP (the default with credentials, `secure`: its certificate, from the test
//!    CA given in `caSecretKeyRef`, carries the address as an IP subjectAltName).
//! 4. A SASL user added to the user's Secret: the operator updates its copy, the pod template
//!    is unchanged, the kubelet swaps the volume in place and the running relay lets the new
//!    user send, in the same pod, without a restart; `kubectl smtp-relay users` lists both.
//!    4b. A new serving certificate (the operator issues one when `<name>-tls` is deleted, as at
//!    a renewal): signed by the same CA, the pod template unchanged, the volume swapped in
//!    place, Postfix reloaded by the relay: the same pod serves it to clients that trust the CA.
//! 5. The relayhost password rotated (at the upstream first, then in the Secret): the operator
//!    changes the template's config hash, the StatefulSet controller replaces the pod, and the
//!    new pod logs in with the new password. Then a `postconf` value smtpd cannot use: the
//!    new pod's Postfix refuses it in its self-check and runs the last good configuration
//!    (kept on its volume), so the one replica still takes and delivers mail; status names
//!    the field and Postfix's words; reverting moves it back.
//! 6. An image that cannot run the relay (the operator's image: no `smtp-relay` in it): the
//!    SmtpRelay's status names the pod, the container, the kubelet's reason and how the last
//!    run ended (Ready=False, kstatus Stalled=True, a Warning Event); back to the relay image,
//!    the relay is Ready again.
//!
//! 7. OAuth2 client credentials against an HTTPS token endpoint; 8. a delegated login whose
//!    provider rotates the refresh token at every refresh, two replicas sharing the newest and
//!    the operator writing it back, no pod restarted; 9. back to a login without a refresh
//!    token, what only the delegated login needed is pruned and a new pod still runs.
//!
//! Each step is one or more named phases (`-- --list`), run in order over one node, one chart
//! install and one relay, set up by the first phase and torn down after the last
//! (`e2e/src/phases.rs`): after a failed phase the rest are skipped, as each builds on the one
//! before.
//!
//! A message queued while the relayhost is down surviving the pod's deletion is in
//! `user_path.rs`. Needs root, Postfix, the tools of `scripts/install-deps.sh` and the images
//! of `scripts/build-images.sh`. One environment for every phase: there is one node per
//! machine.

// Tests may panic: `harness = false`, so clippy does not see the phases as tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use smtp_relay_e2e::mail::{self, marker, Sink, StartTls, Upstream};
use smtp_relay_e2e::operator::{self, ChartRelease};
use smtp_relay_e2e::phases::{self, Order, Phase};
use smtp_relay_e2e::plugin::Plugin;
use smtp_relay_e2e::relayhost::{ScriptedRelayhost, TokenPolicy, TokenServer};
use smtp_relay_e2e::user_path::{self, NODE_IP};
use smtp_relay_e2e::ControlPlane;

/// Generous: the machine has two cores, shared with builds.
const WAIT: Duration = Duration::from_secs(180);
const NS: &str = "mail";
const RELAY: &str = "relay";
const POD: &str = "relay-0";

const RELAYHOST_LOGIN: &str = "relay-login";
const RELAYHOST_PW1: &str = "first relayhost password: }, =";
const RELAYHOST_PW2: &str = "second relayhost password";
const APP1_PW: &str = "app1 password";
/// Messages each SASL user may send per hour (`rateLimits.perUser`).
const USER_MESSAGES: usize = 20;
const APP2_PW: &str = "app2 password";
const OAUTH2_CLIENT_ID: &str = "relay-app";
const OAUTH2_CLIENT_SECRET: &str = "oauth2-client-secret-never-shown";

/// The capabilities of the template's security context (`CHOWN DAC_OVERRIDE FOWNER SETUID
/// SETGID NET_BIND_SERVICE KILL`, all others dropped), as the kernel's bit mask.
const CAPABILITY_MASK: u64 = 1 << 0 | 1 << 1 | 1 << 3 | 1 << 5 | 1 << 6 | 1 << 7 | 1 << 10;

struct Timer(Instant);

impl Timer {
    fn step(&self, what: &str) {
        eprintln!(
            "[relay_pod {:>6.1}s] {what}",
            self.0.elapsed().as_secs_f64()
        );
    }
}

fn ok<T>(r: Result<T, String>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

fn relayhost_secret(password: &str) -> String {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "relayhost-credentials", "namespace": NS},
        "type": "Opaque",
        "stringData": {"username": RELAYHOST_LOGIN, "password": password},
    })
    .to_string()
}

fn users_secret(users: &[(&str, &str)]) -> String {
    let data: serde_json::Map<String, Value> = users
        .iter()
        .map(|(u, p)| (u.to_string(), Value::from(*p)))
        .collect();
    serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "sasl-users", "namespace": NS},
        "type": "Opaque",
        "stringData": data,
    })
    .to_string()
}

/// The CA that signed the upstream's certificate, as the relayhost CA's Secret.
fn relayhost_ca_secret(ca_pem: &str) -> String {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "relayhost-ca", "namespace": NS},
        "type": "Opaque",
        "stringData": {"ca.crt": ca_pem},
    })
    .to_string()
}

/// Clients on the host reach the Service from the node IP: that is the `networks` client.
fn smtp_relay(upstream: SocketAddr) -> String {
    serde_json::json!({
        "apiVersion": "smtprelay.dev/v1alpha1", "kind": "SmtpRelay",
        "metadata": {"name": RELAY, "namespace": NS},
        "spec": {
            "domain": "example.net",
            "hostname": "relay.example.net",
            "networks": [format!("{NODE_IP}/32")],
            "mode": "AllowSaslAuthNoDomain",
            "relayhost": {
                "host": upstream.ip().to_string(),
                "port": upstream.port(),
                "credentialsSecretRef": {
                    "name": "relayhost-credentials",
                    "usernameKey": "username",
                    "passwordKey": "password",
                },
                // No level: secure, the default with a login. The upstream is reached by
                // address, so the CA that certified the address is given.
                "tls": {"caSecretKeyRef": {"name": "relayhost-ca", "key": "ca.crt"}},
            },
            "saslUsersSecretRef": {"name": "sasl-users"},
            // Issue 27, on the node: app1 sends only as itself; mail goes only to the two
            // domains the phases send to.
            "senders": {"bindings": [{"user": "app1", "senders": ["app1@example.net"]}]},
            "recipients": {"allowed": ["example.net", "elsewhere.org"]},
            // And the submission ports, on the pod and the Service.
            "submission": {"starttls": true, "implicitTls": true},
            // And limits per user: app2 goes over its own (phase 4); app1 sends fewer than
            // 20 messages in any pod's life.
            "rateLimits": {"intervalSeconds": 3600, "perUser": {"messages": USER_MESSAGES}},
            "postconf": user_path::quick_retry_postconf(),
        }
    })
    .to_string()
}

/// `kubectl apply` from stdin, so Secrets never reach a command line, and no manifest in the
/// failure message.
fn apply(cp: &ControlPlane, manifest: &str) {
    let out = cp.kubectl_stdin(["apply", "-f", "-"], manifest);
    assert!(
        out.status.success(),
        "kubectl apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn get(cp: &ControlPlane, kind: &str, name: &str) -> Option<Value> {
    operator::get_json(cp, NS, kind, name)
}

fn template_hash(cp: &ControlPlane) -> Option<String> {
    get(cp, "statefulset", RELAY)?["spec"]["template"]["metadata"]["annotations"]
        [operator::CONFIG_HASH_ANNOTATION]
        .as_str()
        .map(str::to_string)
}

/// `sh -c script` in the relay container, through the API server and the kubelet: (success,
/// stdout and stderr).
fn sh(cp: &ControlPlane, script: &str) -> (bool, String) {
    let out = cp.kubectl([
        "exec", "-n", NS, POD, "-c", "relay", "--", "sh", "-c", script,
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text.trim().to_string())
}

fn sh_ok(cp: &ControlPlane, script: &str) -> String {
    let (success, out) = sh(cp, script);
    assert!(success, "in the pod, `{script}` failed: {out}");
    out
}

/// A field of `/proc/1/status` in the pod (the relay, PID 1).
fn status_field(status: &str, field: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in /proc/1/status:\n{status}"))
        .trim()
        .to_string()
}

/// What the kubelet and containerd made of the template.
fn check_pod_as_run(cp: &ControlPlane, pod: &Value) {
    let status = sh_ok(cp, "cat /proc/1/status");
    let mask = |f: &str| u64::from_str_radix(&status_field(&status, f), 16).unwrap();
    assert_eq!(
        mask("CapBnd"),
        CAPABILITY_MASK,
        "capabilities: all dropped but the template's"
    );
    assert_eq!(status_field(&status, "NoNewPrivs"), "1");
    assert_eq!(
        status_field(&status, "Seccomp"),
        "2",
        "RuntimeDefault filter"
    );
    let cmdline = sh_ok(cp, "tr '\\0' ' ' < /proc/1/cmdline");
    assert!(
        cmdline.starts_with("smtp-relay run --config"),
        "the container command is PID 1: {cmdline}"
    );
    assert_eq!(sh_ok(cp, "uname -n"), POD, "the pod's own hostname");

    let (wrote, out) = sh(cp, "touch /root-is-read-only");
    assert!(!wrote, "readOnlyRootFilesystem: {out}");
    let (wrote, out) = sh(cp, "touch /etc/smtp-relay/config/x");
    assert!(!wrote, "the config volume is mounted read-only: {out}");
    sh_ok(
        cp,
        "touch /data/x /tmp/x /run/smtp-relay/x && rm /data/x /tmp/x /run/smtp-relay/x",
    );

    // The Secret volume in the kubelet's layout, with the template's defaultMode.
    let users = "/etc/smtp-relay/sasl-users";
    assert!(sh_ok(cp, &format!("readlink {users}/..data")).starts_with("..20"));
    assert_eq!(sh_ok(cp, &format!("readlink {users}/app1")), "..data/app1");
    assert_eq!(sh_ok(cp, &format!("stat -L -c %a {users}/app1")), "400");

    // The probes passed under the kubelet, and none restarted the container.
    let container = &pod["status"]["containerStatuses"][0];
    assert_eq!(container["ready"], true, "{container}");
    assert_eq!(container["restartCount"], 0, "{container}");
}

/// The reasons of the namespace's Events.
fn event_reasons(cp: &ControlPlane) -> String {
    cp.kubectl_ok([
        "get",
        "events",
        "-n",
        NS,
        "-o",
        "jsonpath={.items[*].reason}",
    ])
}

/// What clients trust for the certificate the operator issued (issue 26): `ca.crt` of the
/// relay's CA ConfigMap `<name>-ca`, never a key; the `<name>-tls` Secret holds a certificate
/// that CA signed, and its chain.
fn issued_certificate(cp: &ControlPlane) -> Vec<u8> {
    let name = format!("{RELAY}-tls");
    let secret = get(cp, "secret", &name).expect("the issued certificate's Secret");
    assert_eq!(
        secret["metadata"]["annotations"]["smtprelay.dev/issued-certificate"], "true",
        "{name} holds an issued certificate"
    );
    let ca = format!("{RELAY}-ca");
    let config_map = get(cp, "configmap", &ca).expect("the relay's CA ConfigMap");
    let pem = config_map["data"]["ca.crt"].as_str().expect("ca.crt");
    assert!(
        pem.contains("-----BEGIN CERTIFICATE-----") && !pem.contains("PRIVATE KEY"),
        "{ca} holds the CA's certificate and no key"
    );
    pem.as_bytes().to_vec()
}

/// The image's own client in the relay's pod, anonymous, to the pod's own IP: a client outside
/// `networks`. `Err` carries the refusal.
fn send_from_pod(cp: &ControlPlane, pod_ip: &str, to: &str) -> Result<String, String> {
    let (success, out) = sh(
        cp,
        &format!(
            "smtp-relay send --server {pod_ip}:25 --starttls never --from app@example.net \
             --subject anonymous --body anonymous {to}"
        ),
    );
    if success {
        Ok(out)
    } else {
        Err(out)
    }
}

fn main() -> std::process::ExitCode {
    let phases: [Phase<Env>; 18] = [
        (
            "the_relay_pod_runs_with_sasl_users_and_a_relayhost_login",
            the_relay_pod_runs_with_sasl_users_and_a_relayhost_login,
        ),
        (
            "the_pod_runs_as_its_template_says",
            the_pod_runs_as_its_template_says,
        ),
        (
            "auth_is_offered_only_inside_tls_with_the_issued_certificate",
            auth_is_offered_only_inside_tls_with_the_issued_certificate,
        ),
        (
            "sasl_users_send_anywhere_networks_to_the_domain_anonymous_nowhere",
            sasl_users_send_anywhere_networks_to_the_domain_anonymous_nowhere,
        ),
        (
            "submission_ports_and_sender_bindings_hold_through_the_service",
            submission_ports_and_sender_bindings_hold_through_the_service,
        ),
        (
            "the_in_pod_test_message_goes_to_a_verified_relayhost",
            the_in_pod_test_message_goes_to_a_verified_relayhost,
        ),
        (
            "a_sasl_user_added_applies_in_place_without_a_restart",
            a_sasl_user_added_applies_in_place_without_a_restart,
        ),
        (
            "a_renewed_certificate_reaches_the_pod_without_a_restart",
            a_renewed_certificate_reaches_the_pod_without_a_restart,
        ),
        (
            "a_rotated_relayhost_password_replaces_the_pod",
            a_rotated_relayhost_password_replaces_the_pod,
        ),
        (
            "a_value_postfix_refuses_leaves_the_one_pod_serving_the_last_good",
            a_value_postfix_refuses_leaves_the_one_pod_serving_the_last_good,
        ),
        (
            "status_names_the_pod_that_cannot_run_until_the_image_is_fixed",
            status_names_the_pod_that_cannot_run_until_the_image_is_fixed,
        ),
        (
            "oauth2_client_credentials_deliver_after_auth_xoauth2",
            oauth2_client_credentials_deliver_after_auth_xoauth2,
        ),
        (
            "the_oauth2_login_shows_in_status_and_no_secret_leaks",
            the_oauth2_login_shows_in_status_and_no_secret_leaks,
        ),
        (
            "a_delegated_login_runs_two_replicas_as_their_own_service_account",
            a_delegated_login_runs_two_replicas_as_their_own_service_account,
        ),
        (
            "rotated_refresh_tokens_are_shared_and_written_back_without_a_restart",
            rotated_refresh_tokens_are_shared_and_written_back_without_a_restart,
        ),
        (
            "the_delegated_login_delivers_and_no_token_leaks",
            the_delegated_login_delivers_and_no_token_leaks,
        ),
        (
            "without_a_refresh_token_its_secret_and_service_account_are_pruned",
            without_a_refresh_token_its_secret_and_service_account_are_pruned,
        ),
        (
            "the_operator_log_has_no_forbidden_and_no_password",
            the_operator_log_has_no_forbidden_and_no_password,
        ),
    ];
    phases::run(Order::Sequential, Env::start, &phases)
}

/// The node with the chart's operator, the relay's upstream and sink, and what each phase
/// hands on to the next. Fields drop in order: the servers before the node.
struct Env {
    t: Timer,
    release: ChartRelease,
    operator_pod: String,
    /// The first relay pod as it was Ready, its uid and its address.
    pod: Value,
    pod_uid: Value,
    pod_ip: String,
    /// The Service's SMTP address and the certificate the operator issued for its names.
    service: Option<SocketAddr>,
    cert: Vec<u8>,
    /// The pod template's config hash before the SASL user was added.
    hash_before: Option<String>,
    /// The OAuth2 client credentials login, from its phase on.
    oauth2: Option<OAuth2>,
    /// The delegated login, from its phase on.
    delegated: Option<Delegated>,
    upstream: Upstream,
    sink: Sink,
    cp: ControlPlane,
}

/// An HTTPS token endpoint issuing client credentials tokens, and a relayhost that takes mail
/// only after `AUTH XOAUTH2` with one of them.
struct OAuth2 {
    xoauth2: ScriptedRelayhost,
    endpoint: TokenServer,
    /// The relay pod that logged in, and the tokens issued by then.
    pod: String,
    issued: Vec<String>,
    /// The endpoint's certificate and key (files, signed by the test CA), and their directory.
    cert: PathBuf,
    key: PathBuf,
    _certs: tempfile::TempDir,
}

/// A token endpoint that rotates the refresh token at every refresh, and its relayhost.
struct Delegated {
    relayhost: ScriptedRelayhost,
    server: TokenServer,
    /// The two pods as they first ran with the delegated login, and the template's hash then.
    running: Vec<Value>,
    hash: Option<String>,
    /// The refresh token everyone agreed on, and how many write-backs were seen.
    converged: String,
    written: usize,
}

impl Env {
    fn start() -> Env {
        let t = Timer(Instant::now());
        ok(user_path::image_tarballs());
        let cp = ControlPlane::with_node().expect("control plane with a node starts");
        ok(user_path::import_images(&cp));
        let release = user_path::install_chart(&cp);
        let operator_pod = ok(user_path::wait_operator_ready(&cp, &release, WAIT));
        t.step("node up, images imported, chart installed, operator pod Ready");
        let sink = Sink::start().expect("sink");
        let upstream = Upstream::start_at(&sink, NODE_IP, &[(RELAYHOST_LOGIN, RELAYHOST_PW1)])
            .expect("upstream relay");
        Env {
            t,
            release,
            operator_pod,
            pod: Value::Null,
            pod_uid: Value::Null,
            pod_ip: String::new(),
            service: None,
            cert: Vec::new(),
            hash_before: None,
            oauth2: None,
            delegated: None,
            upstream,
            sink,
            cp,
        }
    }

    fn wait<T>(&self, what: &str, f: impl FnMut() -> Option<T>) -> T {
        ok(user_path::wait(&self.cp, NS, WAIT, what, f))
    }

    /// A failure's message with the upstream's log and the namespace's diagnosis.
    fn diagnose(&self, e: String) -> String {
        format!(
            "{e}\n--- upstream\n{}\n{}",
            self.upstream.log(),
            user_path::diagnose(&self.cp, NS)
        )
    }

    /// One message to the Service from the host, inside STARTTLS (the issued certificate
    /// checked), logged in as `auth`; `Err` carries the refusal.
    fn try_send(
        &self,
        auth: Option<(&str, &str)>,
        from: &str,
        to: &str,
        m: &str,
    ) -> Result<String, String> {
        let service = self.service.expect("the Service's address");
        let tls_name = tls_name();
        let tls = StartTls {
            name: &tls_name,
            ca_pem: &self.cert,
        };
        mail::send_tls(
            service,
            Ipv4Addr::UNSPECIFIED,
            Some(&tls),
            auth,
            from,
            to,
            m,
        )
    }

    /// [`Self::try_send`], which must be accepted.
    fn send(&self, auth: Option<(&str, &str)>, from: &str, to: &str, m: &str) {
        self.try_send(auth, from, to, m)
            .unwrap_or_else(|e| panic!("{}", self.diagnose(e)));
    }

    fn oauth2(&self) -> &OAuth2 {
        self.oauth2.as_ref().expect("the OAuth2 login's phase ran")
    }

    fn delegated(&self) -> &Delegated {
        self.delegated
            .as_ref()
            .expect("the delegated login's phase ran")
    }
}

/// The name the issued certificate carries: the Service's.
fn tls_name() -> String {
    format!("{RELAY}.{NS}.svc")
}

const APP1: Option<(&str, &str)> = Some(("app1", APP1_PW));

/// A Secret's value, decoded.
fn secret_value(cp: &ControlPlane, name: &str, key: &str) -> Option<String> {
    use base64::Engine;
    let b64 = get(cp, "secret", name)?["data"][key].as_str()?.to_string();
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    String::from_utf8(bytes).ok()
}

/// The uids of the relay's two pods, when both are Ready and none is being deleted.
fn pod_uids(cp: &ControlPlane) -> Option<Vec<Value>> {
    let pods = cp.kubectl_ok([
        "get",
        "pods",
        "-n",
        NS,
        "-l",
        "app.kubernetes.io/instance=relay",
        "-o",
        "json",
    ]);
    let pods: Value = serde_json::from_str(&pods).ok()?;
    let items = pods["items"].as_array()?;
    let ready = items.len() == 2
        && items
            .iter()
            .all(|p| user_path::pod_ready(p) && p["metadata"]["deletionTimestamp"].is_null());
    ready.then(|| items.iter().map(|p| p["metadata"]["uid"].clone()).collect())
}

/// The SmtpRelay's generation observed and its StatefulSet rolled out, both replicas Ready.
fn sts_settled(cp: &ControlPlane) -> Option<()> {
    let r = get(cp, "smtprelay", RELAY)?;
    let sts = get(cp, "statefulset", RELAY)?;
    let st = &sts["status"];
    (r["status"]["observedGeneration"] == r["metadata"]["generation"]
        && st["readyReplicas"] == 2
        && st["updatedReplicas"] == 2
        && st["currentRevision"] == st["updateRevision"])
        .then_some(())
}

/// The Secret holding the refresh token the replicas share, and their ServiceAccount (Role,
/// RoleBinding).
fn shared_token_secret() -> String {
    format!("{RELAY}-oauth2-token")
}

fn oauth2_account() -> String {
    format!("{RELAY}-oauth2")
}

/// 1. An SmtpRelay in mode `AllowSaslAuthNoDomain` with SASL users and relayhost credentials,
///    its relayhost an upstream relay on the node IP that requires AUTH: its pod Ready.
fn the_relay_pod_runs_with_sasl_users_and_a_relayhost_login(env: &mut Env) {
    let cp = &env.cp;
    operator::create_namespace(cp, NS);
    apply(cp, &relayhost_secret(RELAYHOST_PW1));
    apply(cp, &relayhost_ca_secret(&ok(env.upstream.ca_pem())));
    apply(cp, &users_secret(&[("app1", APP1_PW)]));
    apply(cp, &smtp_relay(env.upstream.addr));
    let pod = ok(user_path::wait_relay_ready(cp, NS, RELAY, WAIT));
    env.pod_uid = pod["metadata"]["uid"].clone();
    env.pod_ip = pod["status"]["podIP"].as_str().unwrap().to_string();
    env.pod = pod;
    env.t.step(&format!(
        "relay pod Ready at {}, SmtpRelay Ready",
        env.pod_ip
    ));
}

/// 2. The pod as the kubelet runs it: the security context, the volumes, the command as PID 1,
///    its own hostname; the probes pass (no restart).
fn the_pod_runs_as_its_template_says(env: &mut Env) {
    check_pod_as_run(&env.cp, &env.pod);
    env.t
        .step("security context, volumes, command and probes as the template says");
}

/// 3. SMTP at the Service's ClusterIP; AUTH is never offered before STARTTLS, whose
///    certificate is the one the operator issued for the Service's names, verified against
///    the relay's CA (the `<name>-ca` ConfigMap).
fn auth_is_offered_only_inside_tls_with_the_issued_certificate(env: &mut Env) {
    let cp = &env.cp;
    let service = SocketAddr::from((ok(user_path::cluster_ip(cp, NS, RELAY)), 25));
    env.wait("SMTP at the ClusterIP", || {
        mail::smtp_ready(service).then_some(())
    });
    let cert = issued_certificate(cp);
    let clear = mail::send(
        service,
        Ipv4Addr::UNSPECIFIED,
        APP1,
        "app1@example.net",
        "a@elsewhere.org",
        "x",
    );
    assert!(
        clear
            .as_ref()
            .is_err_and(|e| e.contains("No compatible authentication mechanism")),
        "no AUTH offered before STARTTLS: {clear:?}"
    );
    env.service = Some(service);
    env.cert = cert;
    env.t.step(&format!(
        "SMTP at {service}: no AUTH before STARTTLS, the issued certificate names {}",
        tls_name()
    ));
}

/// Issue 27 on the node: the submission ports through the Service (STARTTLS on 587, TLS first
/// on 465, the issued certificate checked; nothing there without a login, from `networks`
/// either), and a user bound to its sender and the recipient list refuse the rest.
fn submission_ports_and_sender_bindings_hold_through_the_service(env: &mut Env) {
    let service = env.service.expect("the Service's address");
    let host = Ipv4Addr::UNSPECIFIED;
    let tls_name = tls_name();
    let tls = StartTls {
        name: &tls_name,
        ca_pem: &env.cert,
    };
    let submission = SocketAddr::new(service.ip(), 587);
    let submissions = SocketAddr::new(service.ip(), 465);
    let m = marker("submission");
    mail::send_tls(
        submission,
        host,
        Some(&tls),
        APP1,
        "app1@example.net",
        "s@elsewhere.org",
        &m,
    )
    .unwrap_or_else(|e| panic!("{}", env.diagnose(e)));
    let m2 = marker("submissions");
    mail::send_implicit_tls(
        submissions,
        host,
        &tls,
        APP1,
        "app1@example.net",
        "s@elsewhere.org",
        &m2,
    )
    .unwrap_or_else(|e| panic!("{}", env.diagnose(e)));
    for m in [&m, &m2] {
        env.sink
            .wait_for("s@elsewhere.org", m, WAIT)
            .unwrap_or_else(|e| panic!("{}", env.diagnose(e)));
    }
    let refused = mail::send_tls(
        submission,
        host,
        Some(&tls),
        None,
        "app@example.net",
        "ops@example.net",
        "n",
    );
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("554") && e.contains("Client host rejected")),
        "no login on the submission port: {refused:?}"
    );
    // The bound user as another sender, and to a recipient outside the list.
    for (from, to, says) in [
        (
            "billing@example.net",
            "a@elsewhere.org",
            ("553", "5.7.1 <billing@example.net>: Sender address rejected: not owned by user app1"),
        ),
        (
            "app1@example.net",
            "a@elsewhere.net",
            ("550", "5.7.1 <a@elsewhere.net>: Recipient address rejected: not among the recipients this relay sends to"),
        ),
    ] {
        let refused = env.try_send(APP1, from, to, "n");
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.contains(says.0) && e.contains(says.1)),
            "app1 as <{from}> to <{to}>: {refused:?}"
        );
    }
    // Its envelope sender its own, its From: header another's: the relay's milter refuses it.
    let spoofed = mail::message("ceo@example.net", "a@elsewhere.org", "spoofed");
    let refused = mail::send_tls_message(
        submission,
        host,
        Some(&tls),
        APP1,
        ("app1@example.net", "a@elsewhere.org"),
        &spoofed,
    );
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("550")
            && e.contains("<ceo@example.net>: From header rejected: not owned by user app1")),
        "app1 with another's From: header: {refused:?}"
    );
    env.t.step("submission: 587 and 465 take a login's mail, refuse mail without; app1 only as itself (envelope and From: header), only to the listed domains");
}

/// 3, continued. A SASL user may send anywhere (inside TLS), a `networks` client (the host,
///    seen as the node IP) only to the relay domain, an anonymous client outside `networks`
///    (a shell in the pod, sending to the pod's own IP) nowhere.
fn sasl_users_send_anywhere_networks_to_the_domain_anonymous_nowhere(env: &mut Env) {
    let cp = &env.cp;
    let service = env.service.expect("the Service's address");
    let m = marker("sasl");
    env.send(APP1, "app1@example.net", "a@elsewhere.org", &m);
    let got = env
        .sink
        .wait_for("a@elsewhere.org", &m, WAIT)
        .unwrap_or_else(|e| panic!("{}", env.diagnose(e)));
    assert_eq!(got.from, "app1@example.net");
    let host = Ipv4Addr::UNSPECIFIED;
    let m = marker("net");
    mail::send(
        service,
        host,
        None,
        "app@example.net",
        "ops@example.net",
        &m,
    )
    .unwrap_or_else(|e| panic!("{}", env.diagnose(e)));
    env.sink
        .wait_for("ops@example.net", &m, WAIT)
        .unwrap_or_else(|e| panic!("{}", env.diagnose(e)));
    let refused = mail::send(
        service,
        host,
        None,
        "app@example.net",
        "x@elsewhere.org",
        "n",
    );
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("554")),
        "a networks client relaying elsewhere: {refused:?}"
    );
    for to in ["ops@example.net", "x@elsewhere.org"] {
        let refused = send_from_pod(cp, &env.pod_ip, to);
        assert!(
            refused.as_ref().is_err_and(|e| e.contains("554")),
            "an anonymous client outside networks, to {to}: {refused:?}"
        );
    }
    let events = event_reasons(cp);
    assert!(events.contains("CertificateIssued"), "events: {events}");
    env.t.step(
        "mode AllowSaslAuthNoDomain through the Service: SASL inside TLS anywhere, networks to domain, anonymous nowhere",
    );
}

/// 3, continued. The chart README's test message from inside the pod (the password on stdin,
///    the login inside STARTTLS, verified against the mounted certificate) reaches the sink;
///    the relay logged in to an upstream that proved it is the node IP (issue 26).
fn the_in_pod_test_message_goes_to_a_verified_relayhost(env: &mut Env) {
    let cp = &env.cp;
    let tls_name = tls_name();
    let out = cp.kubectl_stdin(
        [
            "exec",
            "-i",
            "-n",
            NS,
            POD,
            "-c",
            "relay",
            "--",
            "smtp-relay",
            "send",
            "--user",
            "app1",
            "--password-file",
            "/dev/stdin",
            "--tls-name",
            &tls_name,
            "--ca-file",
            "/etc/smtp-relay/tls/tls.crt",
            "-f",
            "app1@example.net",
            "d@elsewhere.org",
        ],
        APP1_PW,
    );
    assert!(
        out.status.success(),
        "smtp-relay send in the pod: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.wait("the pod's test message at the sink", || {
        env.sink.delivered_to("d@elsewhere.org").then_some(())
    });
    // Issue 26: the login went to an upstream that proved it is the node IP, and the status
    // says the relayhost is verified.
    let relay = get(cp, "smtprelay", RELAY).unwrap();
    let verified = operator::condition(&relay, "RelayhostVerified").unwrap();
    assert_eq!(
        (&verified["status"], &verified["reason"]),
        (&Value::from("True"), &Value::from("RelayhostVerified")),
        "{verified}"
    );
    assert!(env.upstream.log().contains("sasl_username=relay-login"));
    env.t
        .step("the in-pod test message delivered; the upstream verified (secure) before the login");
}

/// 4. A SASL user added to the user's Secret: the operator updates its copy, the pod template
///    is unchanged, the kubelet swaps the volume in place and the running relay lets the new
///    user send, in the same pod, without a restart; until its limit of messages per hour.
fn a_sasl_user_added_applies_in_place_without_a_restart(env: &mut Env) {
    let cp = &env.cp;
    let hash_before = template_hash(cp).expect("config hash");
    apply(cp, &users_secret(&[("app1", APP1_PW), ("app2", APP2_PW)]));
    env.wait("the owned SASL users Secret to hold app2", || {
        get(cp, "secret", &format!("{RELAY}-sasl-users"))?["data"]
            .get("app2")
            .map(|_| ())
    });
    let m = marker("app2");
    let app2 = Some(("app2", APP2_PW));
    env.wait(
        "app2 to be able to send (the kubelet's volume update, the relay's reload)",
        || {
            env.try_send(app2, "app2@example.net", "b@elsewhere.org", &m)
                .ok()
        },
    );
    env.sink
        .wait_for("b@elsewhere.org", &m, WAIT)
        .unwrap_or_else(|e| panic!("{}", env.diagnose(e)));
    // Issue 27: app2's limit of messages per hour, counted by the policy service of the
    // pod's supervisor on the spool's volume: that one message, then 19 more, then a 4xx.
    let mut sent = 1;
    let refused = loop {
        match env.try_send(
            app2,
            "app2@example.net",
            "b@elsewhere.org",
            &marker("burst"),
        ) {
            Ok(_) if sent <= USER_MESSAGES => sent += 1,
            Ok(_) => panic!("app2 sent {sent} messages, over its limit of {USER_MESSAGES}"),
            Err(e) => break e,
        }
    };
    assert!(
        sent == USER_MESSAGES
            && refused.contains("450")
            && refused.contains(&format!(
                "limit per login reached: {USER_MESSAGES} messages per 3600 s"
            )),
        "app2 after {sent} messages: {refused}"
    );
    let users = sh_ok(cp, "smtp-relay users");
    assert!(
        users.contains("app1") && users.contains("app2"),
        "the relay's database lists both users: {users}"
    );
    // And `kubectl smtp-relay users` (issue 30), from the same database through pods/exec;
    // its status shows the certificate the operator issued.
    let plugin = Plugin::new(cp, NS);
    let status = plugin.run(&["status", RELAY]);
    assert!(
        status.contains(&format!("\n  tls        {RELAY}-tls, valid until ")),
        "{status}"
    );
    let listed = plugin.run(&["users", RELAY]);
    let sorted = |text: &str| {
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        lines.sort();
        lines
    };
    assert_eq!(
        sorted(&listed),
        sorted(&users),
        "kubectl smtp-relay users lists what the pod's database has"
    );
    assert_eq!(template_hash(cp), Some(hash_before.clone()));
    let pod = get(cp, "pod", POD).expect("the relay pod");
    assert_eq!(pod["metadata"]["uid"], env.pod_uid, "the same pod");
    assert_eq!(pod["status"]["containerStatuses"][0]["restartCount"], 0);
    env.hash_before = Some(hash_before);
    env.t
        .step("SASL user added: volume swapped in place, app2 sent, same pod, no restart");
}

/// 4b. A new serving certificate (issue 26; here the operator issues it because `<name>-tls` was
///     deleted, as it does at a renewal): signed by the same CA, so clients that trust the CA
///     ConfigMap keep trusting; the pod template is unchanged, the kubelet swaps the volume in
///     place and the relay reloads Postfix: the same pod serves it, without a restart.
fn a_renewed_certificate_reaches_the_pod_without_a_restart(env: &mut Env) {
    let cp = &env.cp;
    let hash_before = template_hash(cp).expect("config hash");
    let name = format!("{RELAY}-tls");
    let leaf = |cp: &ControlPlane| {
        get(cp, "secret", &name)?["data"]["tls.crt"]
            .as_str()
            .map(str::to_string)
    };
    let before = leaf(cp).expect("the issued certificate");
    cp.kubectl_ok(["delete", "secret", "-n", NS, &name]);
    env.wait("the operator to issue a new certificate", || {
        leaf(cp).filter(|l| *l != before)
    });
    assert_eq!(issued_certificate(cp), env.cert, "the same CA");
    env.wait("the relay to reload Postfix for it", || {
        String::from_utf8_lossy(&cp.kubectl(["logs", "-n", NS, POD, "-c", "relay"]).stdout)
            .contains("the certificate offered to clients changed")
            .then_some(())
    });
    let m = marker("renewed");
    env.send(APP1, "app1@example.net", "r@elsewhere.org", &m);
    env.sink
        .wait_for("r@elsewhere.org", &m, WAIT)
        .unwrap_or_else(|e| panic!("{}", env.diagnose(e)));
    assert_eq!(template_hash(cp), Some(hash_before));
    let pod = get(cp, "pod", POD).expect("the relay pod");
    assert_eq!(pod["metadata"]["uid"], env.pod_uid, "the same pod");
    assert_eq!(pod["status"]["containerStatuses"][0]["restartCount"], 0);
    env.t.step(
        "a new certificate from the same CA: volume swapped in place, Postfix reloaded, same pod",
    );
}

/// 5. The relayhost password rotated, at the upstream first (mail would defer meanwhile), then
///    in the Secret: a new config hash, a new pod, which logs in with the new password.
fn a_rotated_relayhost_password_replaces_the_pod(env: &mut Env) {
    let cp = &env.cp;
    let hash_before = env.hash_before.clone().expect("the config hash before");
    env.upstream
        .set_users(&[(RELAYHOST_LOGIN, RELAYHOST_PW2)])
        .expect("rotate at the upstream");
    apply(cp, &relayhost_secret(RELAYHOST_PW2));
    env.wait("a new config hash on the pod template", || {
        template_hash(cp).filter(|h| *h != hash_before)
    });
    let pod = env.wait("a new relay pod Ready", || {
        user_path::relay_ready(cp, NS, RELAY).filter(|p| p["metadata"]["uid"] != env.pod_uid)
    });
    assert_eq!(pod["status"]["containerStatuses"][0]["restartCount"], 0);
    let m = marker("rotated");
    env.send(APP1, "app1@example.net", "c@elsewhere.org", &m);
    env.sink
        .wait_for("c@elsewhere.org", &m, WAIT)
        .unwrap_or_else(|e| panic!("{}", env.diagnose(e)));
    assert!(
        env.upstream.log().contains("sasl_username=relay-login"),
        "the upstream saw the relay log in"
    );
    env.t
        .step("relayhost password rotated: pod replaced, mail delivered with the new password");
}

/// 5, continued. One replica and a `postconf` value smtpd cannot use (a transport table the image
///    does not have): the new pod's Postfix refuses it in its self-check and runs the last good
///    configuration from its volume, so the relay keeps taking and delivering mail instead of
///    going down; status names the field and Postfix's words. Reverting moves it back.
fn a_value_postfix_refuses_leaves_the_one_pod_serving_the_last_good(env: &mut Env) {
    let cp = &env.cp;
    let hash_before = template_hash(cp).expect("config hash");
    operator::patch_relay(cp, NS, RELAY, operator::UNUSABLE_TABLE);
    let refused = env.wait("the pod's Postfix to refuse the new configuration", || {
        let r = get(cp, "smtprelay", RELAY)?;
        operator::condition(&r, "ConfigProven")
            .filter(|c| c["status"] == "False")
            .cloned()
    });
    let message = refused["message"].as_str().unwrap_or_default();
    assert_eq!(refused["reason"], "ConfigRefused", "{refused}");
    assert!(
        message.contains(POD)
            && message.contains("spec.postconf.transport_maps")
            && message.contains("hash:/etc/postfix/missing"),
        "status names the pod, the field and Postfix's words: {message}"
    );
    // The pod is Ready (the relay is not: its configuration is refused).
    let pod = env.wait("the new pod Ready on its last good configuration", || {
        get(cp, "pod", POD).filter(|p| {
            user_path::pod_ready(p)
                && p["metadata"]["deletionTimestamp"].is_null()
                && operator::config_hash(p) != hash_before
        })
    });
    assert_eq!(
        pod["status"]["containerStatuses"][0]["restartCount"], 0,
        "no crash loop"
    );
    let m = marker("refused");
    env.send(APP1, "app1@example.net", "d@elsewhere.org", &m);
    env.sink
        .wait_for("d@elsewhere.org", &m, WAIT)
        .unwrap_or_else(|e| panic!("{}", env.diagnose(e)));
    env.t.step(&format!("refused, still delivering: {message}"));
    operator::patch_relay(cp, NS, RELAY, operator::UNUSABLE_TABLE_REVERTED);
    env.wait("the reverted configuration proven", || {
        let r = get(cp, "smtprelay", RELAY)?;
        let proven = operator::condition(&r, "ConfigProven")?["status"] == "True";
        let pod = user_path::relay_ready(cp, NS, RELAY)?;
        (proven && operator::config_hash(&pod) == hash_before).then_some(())
    });
    env.t
        .step("reverted: the pod runs the proven configuration, Ready");
}

/// `spec.image` set (or unset, with `Value::Null`), never pulled.
fn patch_image(cp: &ControlPlane, image: Value) {
    let p = serde_json::json!({"spec": {"image": image, "imagePullPolicy": "Never"}});
    cp.kubectl_ok([
        "patch",
        "smtprelay",
        "-n",
        NS,
        RELAY,
        "--type",
        "merge",
        "-p",
        &p.to_string(),
    ]);
}

/// 6. An image that cannot run the relay (the operator's image: no `smtp-relay` in it): the
///    SmtpRelay's status names the pod, the container, the kubelet's reason and how the last
///    run ended (Ready=False, kstatus Stalled=True, a Warning Event); back to the relay image,
///    the relay is Ready again.
fn status_names_the_pod_that_cannot_run_until_the_image_is_fixed(env: &mut Env) {
    let cp = &env.cp;
    patch_image(
        cp,
        format!(
            "ghcr.io/smtp-relay-operator/smtp-relay-operator:{}",
            env!("CARGO_PKG_VERSION")
        )
        .into(),
    );
    let stalled = env.wait("the SmtpRelay Stalled on the pod that cannot start", || {
        let r = get(cp, "smtprelay", RELAY)?;
        let stalled = operator::condition(&r, "Stalled")?["status"] == "True";
        let current = r["status"]["observedGeneration"] == r["metadata"]["generation"];
        (stalled && current).then_some(r)
    });
    let ready = operator::condition(&stalled, "Ready").unwrap();
    let message = ready["message"].as_str().unwrap_or_default();
    assert_eq!(ready["status"], "False", "{ready}");
    assert!(
        ["CrashLoopBackOff", "RunContainerError"].contains(&ready["reason"].as_str().unwrap_or("")),
        "{ready}"
    );
    assert!(
        message.starts_with(&format!("pod {POD}, container relay: "))
            && message.contains("smtp-relay"),
        "the pod, the container and what failed: {message}"
    );
    assert_eq!(
        operator::condition(&stalled, "Reconciling").unwrap()["status"],
        "False"
    );
    let events = event_reasons(cp);
    assert!(
        events.contains(ready["reason"].as_str().unwrap()),
        "a Warning Event: {events}"
    );
    env.t.step(&format!(
        "an image that cannot run: {}: {message}",
        ready["reason"]
    ));
    patch_image(cp, Value::Null);
    ok(user_path::wait_relay_ready(cp, NS, RELAY, WAIT));
    env.t.step("back to the relay image: Ready again");
}

/// 7. OAuth2: the relay logs in with XOAUTH2, through the image's own Cyrus mechanism, with
///    tokens from an HTTPS token endpoint it trusts through the relayhost's CA; the relayhost
///    takes mail only with one of that endpoint's unexpired tokens.
fn oauth2_client_credentials_deliver_after_auth_xoauth2(env: &mut Env) {
    let cp = &env.cp;
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = ok(mail::ca_signed_cert_for(certs.path(), NODE_IP));
    let endpoint = ok(TokenServer::start_at(
        NODE_IP,
        TokenPolicy {
            client_id: OAUTH2_CLIENT_ID.into(),
            client_secret: OAUTH2_CLIENT_SECRET.into(),
            refresh_token: String::new(),
            rotate: false,
            lifetime: Duration::from_secs(3600),
            delay: Duration::ZERO,
            service_account: None,
        },
        Some((&cert, &key)),
    ));
    let xoauth2 = ok(ScriptedRelayhost::start_at(NODE_IP, Some(endpoint.check())));
    apply(
        cp,
        &serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "oauth2-app", "namespace": NS},
            "stringData": {"clientId": OAUTH2_CLIENT_ID, "clientSecret": OAUTH2_CLIENT_SECRET},
        })
        .to_string(),
    );
    apply(
        cp,
        &serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "idp-ca", "namespace": NS},
            "stringData": {"ca.crt": std::fs::read_to_string(&ca).unwrap()},
        })
        .to_string(),
    );
    let relayhost = serde_json::json!({"spec": {"relayhost": {
        "host": NODE_IP.to_string(),
        "port": xoauth2.addr().port(),
        "credentialsSecretRef": null,
        "oauth2": {
            "provider": "Generic",
            "tokenEndpoint": endpoint.url(),
            "user": "sender@example.net",
            "secretRef": {"name": "oauth2-app"},
        },
        // The scripted relayhost offers no STARTTLS: said explicitly, acknowledged, and flagged.
        "tls": {"level": "none", "allowCleartextCredentials": true,
                "caSecretKeyRef": {"name": "idp-ca", "key": "ca.crt"}},
    }}});
    let before = user_path::relay_ready(cp, NS, RELAY).map(|p| p["metadata"]["uid"].clone());
    operator::patch_relay(cp, NS, RELAY, &relayhost.to_string());
    let pod = env.wait("a relay pod Ready with the OAuth2 login", || {
        let r = get(cp, "smtprelay", RELAY)?;
        let current = r["status"]["observedGeneration"] == r["metadata"]["generation"];
        let pod = user_path::relay_ready(cp, NS, RELAY)?;
        (current && Some(&pod["metadata"]["uid"]) != before.as_ref()).then_some(pod)
    });
    let m = marker("oauth2");
    env.send(APP1, "app1@example.net", "oauth2@elsewhere.org", &m);
    env.wait("the message at the relayhost, after AUTH XOAUTH2", || {
        xoauth2
            .delivered()
            .contains(&"oauth2@elsewhere.org".to_string())
            .then_some(())
    });
    let issued = endpoint.issued();
    assert!(!issued.is_empty() && xoauth2.transcript().contains("AUTH XOAUTH2 "));
    env.oauth2 = Some(OAuth2 {
        xoauth2,
        endpoint,
        pod: pod["metadata"]["name"].as_str().unwrap().to_string(),
        issued,
        cert,
        key,
        _certs: certs,
    });
}

/// 7, continued. `status.queue` shows the token and the accepted login, the RelayhostLogin
///    condition and `kubectl get smtpr` say why mail would wait, the relayhost password is
///    flagged as an access token's; neither the client secret nor a token is anywhere users
///    look.
fn the_oauth2_login_shows_in_status_and_no_secret_leaks(env: &mut Env) {
    let cp = &env.cp;
    let oauth2 = env.oauth2();
    let queue = env.wait("status.queue with the token and the accepted login", || {
        let r = get(cp, "smtprelay", RELAY)?;
        let q = &r["status"]["queue"];
        (q["relayhostLogin"] == "Accepted" && q["relayhostToken"]["expiresTime"].is_string())
            .then(|| q.clone())
    });
    // Why mail would wait, in conditions and in `kubectl get smtpr`.
    env.wait("the RelayhostLogin condition True", || {
        let r = get(cp, "smtprelay", RELAY)?;
        let c = operator::condition(&r, "RelayhostLogin")?;
        (c["status"] == "True" && c["reason"] == "LoginAccepted").then_some(())
    });
    let table = cp.kubectl_ok(["get", "smtpr", "-n", NS]);
    assert!(
        table.contains("RELAYHOST LOGIN") && table.contains("LoginAccepted"),
        "{table}"
    );
    let relay = get(cp, "smtprelay", RELAY).unwrap();
    let flagged = operator::condition(&relay, "RelayhostPasswordProtected").unwrap();
    assert_eq!(flagged["status"], "False", "{flagged}");
    assert!(
        flagged["message"]
            .as_str()
            .unwrap_or_default()
            .contains("access token"),
        "{flagged}"
    );
    // Neither the client secret nor a token anywhere users look.
    let mut seen = user_path::pod_logs(cp, NS, &oauth2.pod);
    seen.push_str(&cp.kubectl_ok(["get", "configmap,events,smtprelay", "-n", NS, "-o", "yaml"]));
    for secret in oauth2
        .issued
        .iter()
        .map(String::as_str)
        .chain([OAUTH2_CLIENT_SECRET])
    {
        assert!(
            !seen.contains(secret),
            "{secret} in a log, ConfigMap, Event or status"
        );
    }
    env.t.step(&format!(
        "OAuth2: delivered after AUTH XOAUTH2 with {} token(s) from the HTTPS endpoint; status.queue: {queue}",
        oauth2.issued.len()
    ));
}

/// The refresh token the user consented with: the delegated login's first.
const CONSENTED: &str = "refresh-token-as-consented";

/// 8. A delegated login at a provider that rotates refresh tokens and refuses a used one, with
///    short-lived tokens: two replicas, Ready, running as their own ServiceAccount (they share
///    the newest refresh token through `<relay>-oauth2-token`).
fn a_delegated_login_runs_two_replicas_as_their_own_service_account(env: &mut Env) {
    let cp = &env.cp;
    let oauth2 = env.oauth2();
    let server = ok(TokenServer::start_at(
        NODE_IP,
        TokenPolicy {
            client_id: OAUTH2_CLIENT_ID.into(),
            client_secret: String::new(),
            refresh_token: CONSENTED.into(),
            rotate: true,
            lifetime: Duration::from_secs(20),
            delay: Duration::ZERO,
            service_account: None,
        },
        Some((&oauth2.cert, &oauth2.key)),
    ));
    let relayhost = ok(ScriptedRelayhost::start_at(NODE_IP, Some(server.check())));
    apply(
        cp,
        &serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "oauth2-delegated", "namespace": NS},
            "stringData": {"clientId": OAUTH2_CLIENT_ID, "refreshToken": CONSENTED},
        })
        .to_string(),
    );
    operator::patch_relay(
        cp,
        NS,
        RELAY,
        &serde_json::json!({"spec": {"replicas": 2, "relayhost": {
            "port": relayhost.addr().port(),
            "oauth2": {"tokenEndpoint": server.url(), "secretRef": {"name": "oauth2-delegated"}},
        }}})
        .to_string(),
    );
    let running = env.wait("two replicas Ready with the delegated login", || {
        sts_settled(cp)?;
        pod_uids(cp)
    });
    let hash = template_hash(cp);
    let sts = get(cp, "statefulset", RELAY).unwrap();
    assert_eq!(
        sts["spec"]["template"]["spec"]["serviceAccountName"],
        oauth2_account().as_str(),
        "the pods run as their own ServiceAccount"
    );
    env.delegated = Some(Delegated {
        relayhost,
        server,
        running,
        hash,
        converged: String::new(),
        written: 0,
    });
}

/// 8, continued. Rotations go on (a refresh every 15 s per replica): the replicas share each
///    new refresh token, the operator writes it back into the user's Secret, and neither a
///    rotation nor a write-back restarts a pod or changes the template.
fn rotated_refresh_tokens_are_shared_and_written_back_without_a_restart(env: &mut Env) {
    let cp = &env.cp;
    let delegated = env.delegated();
    // Wait for two write-backs after the pods were running: each is a rotation the replicas
    // shared and the operator copied back.
    let mut written = Vec::new();
    env.wait(
        "two rotated refresh tokens written back into the user's Secret",
        || {
            let now = secret_value(cp, "oauth2-delegated", "refreshToken")?;
            if now != CONSENTED && written.last() != Some(&now) {
                written.push(now);
            }
            (written.len() >= 3).then_some(())
        },
    );
    let converged = env.wait(
        "the user's Secret, the shared Secret and the provider agreeing on the refresh token",
        || {
            let accepted = delegated.server.policy().refresh_token;
            let user = secret_value(cp, "oauth2-delegated", "refreshToken")?;
            let shared = secret_value(cp, &shared_token_secret(), "refreshToken")?;
            (user == accepted && shared == accepted).then_some(accepted)
        },
    );
    assert_eq!(
        pod_uids(cp),
        Some(delegated.running.clone()),
        "no pod was replaced"
    );
    assert_eq!(
        template_hash(cp),
        delegated.hash,
        "the template did not change"
    );
    let delegated = env
        .delegated
        .as_mut()
        .expect("the delegated login's phase ran");
    delegated.converged = converged;
    delegated.written = written.len();
}

/// 8, continued. The delegated login delivers; both replicas hold an access token; an Event
///    says a refresh token was written back; neither a refresh token nor an access token is
///    anywhere users look.
fn the_delegated_login_delivers_and_no_token_leaks(env: &mut Env) {
    let cp = &env.cp;
    let delegated = env.delegated();
    let m = marker("delegated");
    env.send(APP1, "app1@example.net", "delegated@elsewhere.org", &m);
    env.wait(
        "the message at the relayhost, after AUTH XOAUTH2 with a delegated token",
        || {
            delegated
                .relayhost
                .delivered()
                .contains(&"delegated@elsewhere.org".to_string())
                .then_some(())
        },
    );
    let queue = env.wait("both replicas holding an access token", || {
        let r = get(cp, "smtprelay", RELAY)?;
        let pods = r["status"]["queue"]["pods"].as_array()?.clone();
        (pods.len() == 2
            && pods
                .iter()
                .all(|p| p["relayhostToken"]["expiresTime"].is_string()))
        .then_some(r["status"]["queue"].clone())
    });
    assert!(
        event_reasons(cp).contains("RefreshTokenWrittenBack"),
        "{}",
        event_reasons(cp)
    );
    let requests = delegated.server.requests();
    let refused = requests.iter().filter(|r| *r == "invalid_grant").count();
    // Nowhere users look: not the refresh tokens, not the access tokens.
    let mut seen = String::new();
    for pod in ["relay-0", "relay-1"] {
        seen.push_str(&user_path::pod_logs(cp, NS, pod));
    }
    seen.push_str(&cp.kubectl_ok(["get", "configmap,events,smtprelay", "-n", NS, "-o", "yaml"]));
    for secret in delegated
        .server
        .issued()
        .iter()
        .map(String::as_str)
        .chain([delegated.converged.as_str(), CONSENTED])
    {
        assert!(
            !seen.contains(secret),
            "{secret} in a log, ConfigMap, Event or status"
        );
    }
    env.t.step(&format!(
        "OAuth2 delegated, 2 replicas: {} token requests ({refused} refused as a used refresh token and retried), {} write-backs seen, no pod replaced; status.queue: {queue}",
        requests.len(),
        delegated.written
    ));
}

/// 9. Back to a login without a refresh token (step 7's client credentials): once the pods run
///    without it, the shared token's Secret and the pods' ServiceAccount, Role and RoleBinding
///    are pruned (the Secret found through the watch's cache), the template names none of
///    them, and a pod made now (a node drained, an eviction) is admitted and runs.
fn without_a_refresh_token_its_secret_and_service_account_are_pruned(env: &mut Env) {
    let cp = &env.cp;
    let oauth2 = env.oauth2();
    operator::patch_relay(
        cp,
        NS,
        RELAY,
        &serde_json::json!({"spec": {"relayhost": {
            "port": oauth2.xoauth2.addr().port(),
            "oauth2": {"tokenEndpoint": oauth2.endpoint.url(), "secretRef": {"name": "oauth2-app"}},
        }}})
        .to_string(),
    );
    let (shared, account) = (shared_token_secret(), oauth2_account());
    env.wait(
        "the shared token's Secret and the pods' ServiceAccount, Role and RoleBinding pruned",
        || {
            sts_settled(cp)?;
            pod_uids(cp)?;
            [
                ("secret", shared.as_str()),
                ("serviceaccount", account.as_str()),
                ("role", account.as_str()),
                ("rolebinding", account.as_str()),
            ]
            .iter()
            .all(|(kind, name)| get(cp, kind, name).is_none())
            .then_some(())
        },
    );
    let template = get(cp, "statefulset", RELAY).unwrap()["spec"]["template"]["spec"].clone();
    assert!(
        template["serviceAccountName"].is_null()
            && template["serviceAccount"].is_null()
            && template["automountServiceAccountToken"] == false
            && !template["volumes"].to_string().contains("kube-api-access"),
        "the pod template still names the pruned ServiceAccount: serviceAccountName {}, serviceAccount {}, volumes {}",
        template["serviceAccountName"],
        template["serviceAccount"],
        template["volumes"]
    );
    // A pod made now (a node drained, an eviction) is admitted and runs.
    let before = env.wait("two replicas Ready", || pod_uids(cp));
    cp.kubectl_ok([
        "delete",
        "pod",
        "-n",
        NS,
        &format!("{RELAY}-1"),
        "--wait=false",
    ]);
    env.wait("the deleted replica made again and Ready", || {
        let now = pod_uids(cp)?;
        (now.iter().filter(|u| before.contains(u)).count() == 1).then_some(())
    });
    env.t.step("login without a refresh token: the shared token's Secret and the pods' ServiceAccount, Role and RoleBinding pruned; a new pod runs");
}

/// Through everything above, the operator was never refused by RBAC and never logged a
/// password.
fn the_operator_log_has_no_forbidden_and_no_password(env: &mut Env) {
    let logs = user_path::pod_logs(&env.cp, &env.release.namespace, &env.operator_pod);
    assert!(!logs.contains("Forbidden"), "operator log:\n{logs}");
    for secret in [RELAYHOST_PW1, RELAYHOST_PW2, APP1_PW, APP2_PW] {
        assert!(!logs.contains(secret), "a password in the operator's log");
    }
}
