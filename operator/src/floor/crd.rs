//! The `SmtpRelay` custom resource (`smtprelay.dev/v1alpha1`).
//!
//! Every field carries a doc comment: it becomes the schema description, so
//! `kubectl explain smtprelay.spec` is the manual. Defaults live in the schema (serde defaults are
//! emitted as OpenAPI `default`s), so the API server fills them in and the operator never writes
//! the spec. Admission validation is expressed with OpenAPI types, patterns and CEL rules
//! (`x-kubernetes-validations`); [`crate::steps::judge`] repeats the checks the controller relies on.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, ResourceRequirements, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use smtp_relay::settings::{Mode, TlsLevel, TlsMinVersion};
use smtp_relay::validate::{MAIL_PATTERN_PATTERN, REMOVED_HEADER_PATTERN, SASL_USER_PATTERN};

/// A DNS name (RFC 1123 labels, dot separated, at most 253 characters).
pub const DOMAIN_PATTERN: &str = r"^([a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?\.)*[a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?$";
/// One token of a Postfix restriction list: no whitespace and no commas.
pub const RESTRICTION_PATTERN: &str = r"^[A-Za-z0-9_:./{}=@+-]+$";
/// A storage size: a decimal number with an optional binary or decimal SI suffix.
pub const QUANTITY_PATTERN: &str = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$";
/// An email address, loosely: one `@`, no whitespace.
pub const EMAIL_PATTERN: &str = r"^[^@\s]+@[^@\s]+$";

/// Desired state of an SMTP relay: a Postfix server that accepts mail from allowed clients and
/// hands it to one upstream relayhost.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "smtprelay.dev",
    version = "v1alpha1",
    kind = "SmtpRelay",
    plural = "smtprelays",
    shortname = "smtpr",
    namespaced,
    status = "SmtpRelayStatus",
    // `kubectl scale smtpr` and a HorizontalPodAutoscaler: scaling in drains as a spec change
    // does.
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    derive = "PartialEq",
    doc = "SmtpRelay runs a secure, durable Postfix relay that accepts mail from allowed networks and SASL users and forwards it to one relayhost.",
    printcolumn = r#"{"name":"Domain","type":"string","jsonPath":".spec.domain"}"#,
    printcolumn = r#"{"name":"Relayhost","type":"string","jsonPath":".spec.relayhost.host"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".status.mode"}"#,
    printcolumn = r#"{"name":"Sandbox","type":"string","jsonPath":".status.sandbox"}"#,
    printcolumn = r#"{"name":"Ready Replicas","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Delivering","type":"string","jsonPath":".status.conditions[?(@.type==\"Delivering\")].status"}"#,
    printcolumn = r#"{"name":"Queued","type":"integer","jsonPath":".status.queue.messages"}"#,
    printcolumn = r#"{"name":"Last Delivery","type":"date","jsonPath":".status.queue.lastDeliveryTime"}"#,
    printcolumn = r#"{"name":"Relayhost Login","type":"string","jsonPath":".status.conditions[?(@.type==\"RelayhostLogin\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!(has(self.mode) && has(self.customRestrictions))",
        "message": "mode and customRestrictions are mutually exclusive: set one of them (mode defaults to Strict)"
    },
    {
        "rule": "!(has(self.headers) && has(self.postconf) && 'smtp_header_checks' in self.postconf)",
        "message": "headers and postconf.smtp_header_checks both set Postfix's smtp_header_checks: keep one"
    },
    {
        "rule": "!(has(self.rateLimits) && has(self.rateLimits.perClient) && has(self.postconf) && ['anvil_rate_time_unit', 'smtpd_client_connection_rate_limit', 'smtpd_client_message_rate_limit', 'smtpd_client_recipient_rate_limit', 'smtpd_client_event_limit_exceptions'].exists(p, p in self.postconf))",
        "message": "rateLimits.perClient and postconf both set Postfix's limits per client (anvil_rate_time_unit, smtpd_client_*_rate_limit, smtpd_client_event_limit_exceptions): keep one"
    },
    {
        "rule": "!(has(self.rateLimits) && has(self.rateLimits.perUser) && has(self.postconf) && ['smtpd_restriction_classes', 'smtp_relay_user_limits'].exists(p, p in self.postconf))",
        "message": "rateLimits.perUser sets Postfix's smtpd_restriction_classes (its class smtp_relay_user_limits asks the relay's policy service): remove it from postconf"
    },
    {
        "rule": "!(has(self.rateLimits) && has(self.rateLimits.perUser)) || has(self.saslUsersSecretRef)",
        "message": "rateLimits.perUser counts what each SASL user sends, and the relay has none: set saslUsersSecretRef, or remove rateLimits.perUser"
    },
    {
        "rule": "!has(self.submission) || has(self.saslUsersSecretRef)",
        "message": "submission ports are where SASL users send, after logging in: set saslUsersSecretRef, or remove submission"
    },
    {
        "rule": "!(has(self.senders) && has(self.senders.bindings) && has(self.postconf) && ['smtpd_sender_login_maps', 'smtpd_milters'].exists(p, p in self.postconf))",
        "message": "senders.bindings and postconf both set Postfix's smtpd_sender_login_maps and smtpd_milters (the relay's milter checks the From: header): keep one"
    }
]))]
pub struct SmtpRelaySpec {
    /// The one domain this relay serves (Postfix `mydomain`; `myorigin` is set to it). Mail is
    /// relayed for this domain and for `relayDomains`.
    #[schemars(length(min = 1, max = 253), regex(pattern = DOMAIN_PATTERN))]
    pub domain: String,

    /// Host name the relay announces in its SMTP banner and HELO (Postfix `myhostname`). Defaults
    /// to the pod's host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DOMAIN_PATTERN))]
    pub hostname: Option<String>,

    /// Client networks (CIDR, IPv4 or IPv6) allowed to relay without authentication (Postfix
    /// `mynetworks`). Pod and node networks are not added implicitly. Networks covering every
    /// address (0.0.0.0/0, ::/0) are refused: that is an open relay.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 64)))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.all(n, isCIDR(n))", "message": "every network must be a CIDR such as 10.0.0.0/24 or fd00::/64"},
        {"rule": "self.all(n, !isCIDR(n) || cidr(n).prefixLength() > 0)", "message": "a network covering every address (0.0.0.0/0 or ::/0) would make an open relay"}
    ]))]
    pub networks: Vec<String>,

    /// Recipient domains relayed in the restricting modes (Postfix `relay_domains`) besides
    /// `domain`, which is always one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253), regex(pattern = DOMAIN_PATTERN)))]
    pub relay_domains: Vec<String>,

    /// The upstream server every accepted message is handed to.
    pub relayhost: RelayhostSpec,

    /// Address that receives bounce, delay and error notices. Defaults to `postmaster@<domain>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 254), regex(pattern = EMAIL_PATTERN))]
    pub postmaster: Option<String>,

    /// When true, the envelope sender must belong to `domain` or one of `relayDomains`.
    #[serde(default)]
    pub strict_sender: bool,

    /// Who may relay where; one of the four modes of the original image. Omitted means `Strict`.
    /// Mutually exclusive with `customRestrictions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<RelayMode>,

    /// An explicit Postfix `smtpd_relay_restrictions` list, one restriction per item, for expert
    /// use. Mutually exclusive with `mode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32), inner(length(min = 1, max = 256), regex(pattern = RESTRICTION_PATTERN)))]
    pub custom_restrictions: Option<Vec<String>>,

    /// Vouches for what `customRestrictions` holds before its safety net (the first
    /// `reject_unauth_destination`, `reject` or `defer...`) that the relay cannot read and that
    /// could let a stranger relay: access tables read from files (`check_*_access hash:...`,
    /// `regexp:`, `cidr:`, ...), `check_policy_service`, client certificates
    /// (`permit_tls_clientcerts`, `permit_tls_all_clientcerts`, `check_ccert_access`), DNS
    /// whitelists (`permit_dnswl_client`, `permit_rhswl_client`) and `permit_mx_backup`. Without
    /// it such a list is refused, because whoever those let through relays to any domain. With
    /// it the relay's safety rests on them, and the `RelayClosedToStrangers` condition says so.
    /// A table the relay reads and finds permitting strangers (`static:OK`, or
    /// `check_sender_access inline:{example.net=OK}`, as the client writes its sender itself)
    /// stays refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub trust_restriction_tables: bool,

    /// SASL users allowed to authenticate to this relay: a Secret in the same namespace with one
    /// key per user name, whose value is that user's password. Adding, changing or removing a key
    /// takes effect without restarting the relay. AUTH is offered only inside TLS (STARTTLS), so
    /// passwords never cross the network in clear text: see `tlsSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_users_secret_ref: Option<SecretRef>,

    /// Certificate offered to clients with STARTTLS: a Secret of type `kubernetes.io/tls` (keys
    /// `tls.crt` and `tls.key`) in the same namespace, e.g. from cert-manager. Without it, a relay
    /// with `saslUsersSecretRef` gets a certificate the operator issues for the Service's DNS
    /// names and `hostname` (Secret `<name>-tls`, valid 90 days, renewed 30 days before expiry
    /// without restarting the pods), signed by the relay's own CA: clients that verify trust
    /// `ca.crt` of the ConfigMap `<name>-ca`, which stays across renewals (the CA is valid 10
    /// years; its successor is published there two years ahead). The CA's key is in the Secret
    /// `<name>-ca-key`, which no pod mounts. A relay without SASL users offers no STARTTLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_ref: Option<SecretRef>,

    /// The oldest TLS version clients may use with STARTTLS (where SASL users log in). Omitted:
    /// TLSv1.2, with forward-secret AEAD suites only (ECDHE or DHE with AES-GCM, AES-CCM or
    /// ChaCha20-Poly1305), the server's order; what a TLS scanner grades clean. TLSv1.3 is
    /// stricter. TLSv1.0 and TLSv1.1 are for legacy devices that cannot do better: CBC suites
    /// with SHA-1 MACs and RSA key exchange come back (never anonymous, null, export, RC4 or
    /// 3DES ones), and the condition InboundTLSModern=False and a Warning Event say so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // Omitted rather than null: a plain enum, like the other optional fields.
    #[schemars(with = "TlsMinVersionSpec")]
    pub tls_min_version: Option<TlsMinVersionSpec>,

    /// Submission ports for mail clients and applications that send with a login (RFC 8314),
    /// on the pods and the Service beside SMTP's: `starttls` opens 587 (STARTTLS required
    /// before anything else), `implicitTls` 465 (TLS from the first byte). On both, only SASL
    /// users get past `RCPT TO` (`networks` trusts no one there), with the certificate, TLS
    /// floor and restrictions of port 25. Needs `saslUsersSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submission: Option<SubmissionSpec>,

    /// What the headers of mail leaving the relay reveal. Omitted: no `Received:` line a Postfix
    /// server wrote names its client (inside a cluster, a pod's address and name: the relay's
    /// own line and those of Postfix servers before it keep only their `by` part), and no
    /// header is removed. Exclusive with `postconf.smtp_header_checks`, which replaces all of
    /// this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<HeadersSpec>,

    /// Which senders (`MAIL FROM`) the relay accepts, and SASL users bound to the senders they
    /// may use. Omitted: any sender (with `strictSender`, only `domain` and `relayDomains`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub senders: Option<SendersSpec>,

    /// Which recipients the relay sends to. Omitted: any the mode lets through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipients: Option<RecipientsSpec>,

    /// A staging sandbox, for test and staging clusters where mail must never reach real
    /// recipients: mail is accepted as usual, each message keeps its original envelope
    /// recipients in `X-Sandbox-Recipient:` headers, and then goes to one mailbox, waits in
    /// the hold queue, or is dropped. `status.sandbox` and the `Sandbox` column of
    /// `kubectl get smtpr` say so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxSpec>,

    /// How much each client address and each SASL user may do per interval. Over a limit, the
    /// client gets a 4xx and retries later: nothing bounces. The metrics
    /// `smtp_relay_smtpd_rate_limited_total{limit}` and
    /// `smtp_relay_user_rate_limited_total{user,limit}`, and the chart's alerts
    /// `SmtpRelayClientsRateLimited` and `SmtpRelayUsersRateLimited`, say it happened; the
    /// relay's log names the client or user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<RateLimitsSpec>,

    /// Extra Postfix `main.cf` parameters, applied last so they override every generated value.
    /// Keys are Postfix parameter names (letters, digits and underscores, starting with a
    /// lowercase letter, e.g. `message_size_limit` or `smtpd_tls_CApath`). Values are strings:
    /// quote `"yes"` and `"no"`, which YAML would otherwise read as booleans. Parameters that
    /// decide who may relay (`mynetworks`, `relay_domains`, `smtpd_*_restrictions`,
    /// `smtpd_sasl_*`, `smtpd_tls_auth_only`, ...) and those that protect the relayhost login
    /// (`smtp_tls_security_level`, `smtp_sasl_*security_options`, the CAs, the protocols and
    /// ciphers, and any `smtp_tls_*` or `smtp_sasl_*` not known to be harmless) are refused:
    /// set the field that owns them. Values are checked against the type Postfix reads each
    /// parameter as (an integer, a size, a time such as `300s`, `yes`/`no`), so none makes its
    /// daemons die after a reload.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.all(k, k.matches('^[a-z][a-zA-Z0-9_]*$'))", "message": "postconf keys must be Postfix parameter names: letters, digits and underscores, starting with a lowercase letter"}
    ]))]
    pub postconf: BTreeMap<String, String>,

    /// Number of relay pods. Each pod has its own mail queue volume. Scaling down drains first:
    /// the departing pods leave the Service and deliver their queues, and go only once they are
    /// empty (condition Draining; annotate the SmtpRelay smtprelay.dev/abandon-drain=true to
    /// give up waiting).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: i32,

    /// The persistent volume holding each pod's mail queue (`/var/spool/postfix`), so accepted
    /// mail survives restarts.
    #[serde(default)]
    pub storage: StorageSpec,

    /// What a relay pod does when it is stopped (a rollout, a scale-down, a drained node).
    #[serde(default)]
    pub shutdown: ShutdownSpec,

    /// How long mail may wait in the queue before it returns to its sender.
    #[serde(default, skip_serializing_if = "QueueSpec::is_empty")]
    pub queue: QueueSpec,

    /// The Service clients connect to.
    #[serde(default)]
    pub service: ServiceSpec,

    /// The NetworkPolicy `<name>` the operator keeps for the relay pods: who may reach SMTP,
    /// the PROXY-protocol port and metrics. It takes effect where the cluster runs a
    /// NetworkPolicy implementation (most CNIs do).
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,

    /// Relay container image. Defaults to the image the operator was built or configured with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// Image pull policy of the relay container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,

    /// Secrets used to pull the relay image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,

    /// CPU and memory requests and limits of the relay container, replacing the defaults
    /// whole: requests of 50m CPU and 128Mi memory, a 512Mi memory limit and no CPU limit
    /// (sized in BENCHMARKS.md: 12 MiB at rest, 93 MiB with 20 clients sending at full speed).
    /// A relay that ran without resources before gets the defaults with its next rollout (a
    /// configuration or image change), not on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Node labels the relay pods must be scheduled on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations of the relay pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Affinity rules of the relay pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// Extra annotations on the relay pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,

    /// Extra labels on the relay pods (the operator's own `app.kubernetes.io` labels win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,

    /// Whether the relay pods share the node's users (the pods' `hostUsers`). Unset: the
    /// operator's choice, false unless it runs with `--relay-user-namespaces=false` (the
    /// chart's `relayUserNamespaces: false`). false: each pod has its own user namespace, so
    /// Postfix's master is root in its container and an unprivileged UID on the node (needs
    /// containerd 2.0+ with runc 1.2+, or CRI-O 1.25+; Linux 6.3+). Set true only where the
    /// nodes cannot: a runtime without user namespaces (the kubelet then refuses to start the
    /// pods: they stay ContainerCreating, with a FailedCreatePodSandBox Event), or spool
    /// storage that refuses idmapped mounts (NFS). The
    /// `UserNamespaced` condition says what the pods report. A relay that ran before user
    /// namespaces were the operator's default gets one with its next rollout (a configuration
    /// or image change), not on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_users: Option<bool>,
}

/// What the headers of mail leaving the relay reveal (Postfix `smtp_header_checks`, applied
/// when a message leaves, so mail already queued follows a change too).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeadersSpec {
    /// Keep the client (the name it gave in HELO, its name and address) in the `Received:`
    /// lines, as Postfix writes them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reveal_client: bool,
    /// Headers removed from every message that leaves the relay, by name, any case:
    /// `X-Originating-IP`, `User-Agent`, `X-Mailer`. Letters, digits, `-`, `_` and `.`; never
    /// `From`, `Date`, `Received`, `MIME-Version` or a `Content-` header.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 64), regex(pattern = REMOVED_HEADER_PATTERN)))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.all(h, !(h.lowerAscii() in ['from', 'date', 'received', 'mime-version']) && !h.lowerAscii().startsWith('content-'))", "message": "headers.remove cannot name From, Date, Received, MIME-Version or a Content- header: a message needs them, or they record its path (the client is hidden in Received lines already)"}
    ]))]
    pub remove: Vec<String>,
}

/// Limits over an interval.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitsSpec {
    /// The interval the limits count over, in seconds (for `perClient`, Postfix's
    /// `anvil_rate_time_unit`). Omitted: 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub interval_seconds: Option<u32>,
    /// Limits per client address, counted on each replica by Postfix's anvil (a client whose
    /// connections the Service spreads over N replicas may do up to N times as much), for
    /// every client, those of `networks` included (Postfix's `smtpd_client_*_rate_limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_client: Option<LimitsSpec>,
    /// Limits per SASL user (a login as `user` or `user@domain` is one user), counted on each
    /// replica by the relay's own policy service: over one, that user's recipients get `450
    /// 4.7.1 limit per login reached: N messages per S s; retry later`, and other users and
    /// clients go on. Needs `saslUsersSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_user: Option<LimitsSpec>,
}

/// What one client address or SASL user may do per interval; at least one.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.connections) || has(self.messages) || has(self.recipients)", "message": "sets no limit: give connections, messages or recipients"}
]))]
pub struct LimitsSpec {
    /// Connections a client opens (over it: `421`); for a user, SMTP sessions in which it
    /// names a recipient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub connections: Option<u32>,
    /// Messages sent, a message to several recipients being one (over it, for a client:
    /// `450 4.7.1 Error: too much mail from ADDRESS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub messages: Option<u32>,
    /// Recipients named (over it, for a client: `450 4.7.1 Error: too many recipients from
    /// ADDRESS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub recipients: Option<u32>,
}

/// What a sandboxed relay does with every message it accepts.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "(self.mode == 'CatchAll') == has(self.mailbox)", "message": "sandbox.mailbox is where a CatchAll sandbox delivers every message: set it with CatchAll, and only then"}
]))]
pub struct SandboxSpec {
    /// `CatchAll`: every message goes, once, to `mailbox` instead of its recipients (`To:`
    /// and `Cc:` stay as written). `Hold`: every message waits in the hold queue (`kubectl
    /// smtp-relay queue` lists it; `postsuper -H` releases, `-d` deletes). `Discard`: every
    /// message is accepted and dropped.
    pub mode: SandboxMode,
    /// With `CatchAll`: the mailbox every message goes to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 254), regex(pattern = EMAIL_PATTERN))]
    pub mailbox: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SandboxMode {
    CatchAll,
    Hold,
    Discard,
}

impl From<SandboxMode> for smtp_relay::config_file::SandboxMode {
    fn from(m: SandboxMode) -> Self {
        match m {
            SandboxMode::CatchAll => Self::CatchAll,
            SandboxMode::Hold => Self::Hold,
            SandboxMode::Discard => Self::Discard,
        }
    }
}

impl SandboxSpec {
    /// The sandbox in a few words, as the relay's own summary says it.
    pub fn summary(&self) -> String {
        match (self.mode, &self.mailbox) {
            (SandboxMode::CatchAll, Some(mailbox)) => format!("CatchAll {mailbox}"),
            (mode, _) => format!("{mode:?}"),
        }
    }
}

/// Which submission ports the relay opens.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubmissionSpec {
    /// Port 587 (`submission`): STARTTLS, then AUTH.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub starttls: bool,
    /// Port 465 (`submissions`): TLS from the first byte, then AUTH.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub implicit_tls: bool,
}

/// Senders the relay accepts. Entries are addresses (`noreply@example.net`: a local part of
/// letters, digits, `.`, `_`, `+` and `-`) or domains (`example.net`, which covers its
/// subdomains), matched in any case.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SendersSpec {
    /// The senders any client may use; with it (or `strictSender`, which adds `domain` and
    /// `relayDomains`), every other sender, the empty one of bounces included, is refused
    /// with `553 5.7.1 ... not among the senders this relay accepts` at `RCPT TO`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128), inner(length(min = 1, max = 318), regex(pattern = MAIL_PATTERN_PATTERN)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub allowed: Vec<String>,
    /// SASL users (keys of `saslUsersSecretRef`) who may send only as the senders listed for
    /// them: another envelope sender gets `553 5.7.1 ... not owned by user NAME` at `RCPT
    /// TO`, another address in the `From:` header `550 5.7.1 <ADDRESS>: From header
    /// rejected: not owned by user NAME` at the end of `DATA` (the relay's own milter). Users
    /// not listed, and the clients of `networks`, are not restricted by this. Exclusive with
    /// `postconf.smtpd_sender_login_maps` and `postconf.smtpd_milters`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["user"]))]
    pub bindings: Vec<SenderBindingSpec>,
}

/// A SASL user and the only senders it may use.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SenderBindingSpec {
    /// The user's name, as in `saslUsersSecretRef` (it logs in as `NAME` or `NAME@domain`).
    #[schemars(length(min = 1, max = 255), regex(pattern = SASL_USER_PATTERN))]
    pub user: String,
    /// Addresses or domains (with their subdomains) the user may send as.
    #[schemars(length(min = 1, max = 128), inner(length(min = 1, max = 318), regex(pattern = MAIL_PATTERN_PATTERN)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub senders: Vec<String>,
}

/// Recipients the relay sends to; entries as in `senders`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecipientsSpec {
    /// The recipients any client may send to; with it, every other is refused with
    /// `550 5.7.1 ... not among the recipients this relay sends to` at `RCPT TO`, so it never
    /// becomes a bounce.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128), inner(length(min = 1, max = 318), regex(pattern = MAIL_PATTERN_PATTERN)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub allowed: Vec<String>,
}

fn default_replicas() -> i32 {
    1
}

/// Who may relay where. The names are the original image's `RELAY_MODE` values in CamelCase.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum RelayMode {
    /// Clients in `networks` and SASL users may send only to the relay domains.
    #[default]
    Strict,
    /// SASL users may send anywhere; clients in `networks` only to the relay domains.
    AllowSaslAuthNoDomain,
    /// Clients in `networks` may send anywhere; SASL users only to the relay domains.
    AllowNetAuthNoDomain,
    /// Clients in `networks` and SASL users may send anywhere.
    AllowAuthNoDomain,
}

impl From<RelayMode> for Mode {
    fn from(m: RelayMode) -> Mode {
        match m {
            RelayMode::Strict => Mode::Strict,
            RelayMode::AllowSaslAuthNoDomain => Mode::AllowSaslAuthNoDomain,
            RelayMode::AllowNetAuthNoDomain => Mode::AllowNetAuthNoDomain,
            RelayMode::AllowAuthNoDomain => Mode::AllowAuthNoDomain,
        }
    }
}

/// The upstream server all mail is handed to.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.host.matches('^([a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?\\\\.)*[a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?$') || isIP(self.host)",
     "message": "relayhost.host must be a DNS name or an IP address, without brackets or port"},
    {"rule": "!self.mxLookup || !isIP(self.host)", "message": "mxLookup needs a domain name, not an IP address"},
    {"rule": "!(has(self.oauth2) && has(self.credentialsSecretRef))", "message": "relayhost.oauth2 and relayhost.credentialsSecretRef are exclusive: log in with OAuth2 or with a password"}
]))]
pub struct RelayhostSpec {
    /// DNS name or IP address of the relayhost, without brackets or port.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,

    /// TCP port of the relayhost (25, 587 for submission, 465 with `implicitTls`).
    #[serde(default = "default_smtp_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// When true, the MX records of `host` are looked up; when false (the default) `host` is
    /// connected to directly (Postfix's `[host]` form).
    #[serde(default)]
    pub mx_lookup: bool,

    /// Use TLS from the first byte (SMTPS) instead of STARTTLS. Omitted: true on port 465,
    /// where relayhosts expect it (as the original image does), false elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub implicit_tls: Option<bool>,

    /// Login to present to the relayhost: a Secret in the same namespace. Its values are copied
    /// into a Secret owned by this relay, so the relay keeps working if the source is later broken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<CredentialsSecretRef>,

    /// TLS towards the relayhost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RelayhostTlsSpec>,

    /// Log in with OAuth2 (XOAUTH2) instead of a password: Microsoft 365 and Google Workspace
    /// no longer take passwords. The relay obtains access tokens and refreshes them itself.
    /// Exclusive with `credentialsSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<OAuth2Spec>,
}

/// Where access tokens come from.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum OAuth2Provider {
    /// Microsoft Entra ID (`login.microsoftonline.com/<tenant>`), for smtp.office365.com.
    Microsoft365,
    /// Google (`oauth2.googleapis.com`), for smtp.gmail.com.
    Google,
    /// Any OAuth2 token endpoint: `tokenEndpoint` is required.
    Generic,
}

/// An OAuth2 login to the relayhost. The Secret's keys choose the grant:
/// `clientId` and `clientSecret`: client credentials (a Microsoft 365 app with the
/// `SMTP.SendAsApp` permission); `refreshToken` with `clientId` (and `clientSecret` when the app
/// has one): a delegated login; `serviceAccount.json`: a Google service account key with
/// domain-wide delegation for `https://mail.google.com/`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.provider != 'Microsoft365' || has(self.tenant)", "message": "relayhost.oauth2.tenant is required with provider Microsoft365: the Entra tenant ID or domain"},
    {"rule": "self.provider != 'Generic' || has(self.tokenEndpoint)", "message": "relayhost.oauth2.tokenEndpoint is required with provider Generic"},
    {"rule": "!has(self.tokenEndpoint) || self.tokenEndpoint.startsWith('https://')", "message": "relayhost.oauth2.tokenEndpoint must be an https:// URL: the client's secret and the tokens travel over it"}
]))]
pub struct OAuth2Spec {
    pub provider: OAuth2Provider,
    /// The mailbox to send as (XOAUTH2's user).
    #[schemars(length(min = 3, max = 254))]
    pub user: String,
    /// Microsoft 365: the Entra tenant ID or its domain (`contoso.onmicrosoft.com`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[A-Za-z0-9.-]+$"))]
    pub tenant: Option<String>,
    /// The token endpoint, in place of the provider's (required with `Generic`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 9, max = 2048))]
    pub token_endpoint: Option<String>,
    /// The scope asked for, in place of the provider's: Microsoft 365
    /// `https://outlook.office365.com/.default` (client credentials) or
    /// `https://outlook.office365.com/SMTP.Send offline_access` (delegated); Google
    /// `https://mail.google.com/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub scope: Option<String>,
    /// The Secret (same namespace) with the grant's keys: `clientId`, `clientSecret`,
    /// `refreshToken`, `serviceAccount.json`. Copied into a Secret the relay owns.
    pub secret_ref: OAuth2SecretRef,
}

/// The Secret of an OAuth2 login.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OAuth2SecretRef {
    /// Name of the Secret (same namespace as the SmtpRelay).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

impl OAuth2Spec {
    /// The token endpoint: the one given, or the provider's.
    pub fn token_endpoint(&self) -> String {
        match (&self.token_endpoint, self.provider) {
            (Some(e), _) => e.clone(),
            (None, OAuth2Provider::Microsoft365) => format!(
                "https://login.microsoftonline.com/{}/oauth2/v2.0/token",
                self.tenant.as_deref().unwrap_or("common")
            ),
            (None, OAuth2Provider::Google | OAuth2Provider::Generic) => {
                "https://oauth2.googleapis.com/token".into()
            }
        }
    }

    /// The scope: the one given, or the provider's for the grant (`delegated`: a refresh token).
    pub fn scope(&self, delegated: bool) -> Option<String> {
        match (&self.scope, self.provider) {
            (Some(s), _) => Some(s.clone()),
            (None, OAuth2Provider::Microsoft365) if delegated => {
                Some("https://outlook.office365.com/SMTP.Send offline_access".into())
            }
            (None, OAuth2Provider::Microsoft365) => {
                Some("https://outlook.office365.com/.default".into())
            }
            (None, OAuth2Provider::Google) => Some("https://mail.google.com/".into()),
            (None, OAuth2Provider::Generic) => None,
        }
    }
}

fn default_smtp_port() -> i32 {
    25
}

/// A Secret holding the relayhost login and password.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    /// Name of the Secret (same namespace as the SmtpRelay).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key of the login in the Secret.
    #[serde(default = "default_username_key")]
    #[schemars(length(min = 1, max = 253))]
    pub username_key: String,
    /// Key of the password in the Secret.
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1, max = 253))]
    pub password_key: String,
}

fn default_username_key() -> String {
    "username".into()
}
fn default_password_key() -> String {
    "password".into()
}

/// TLS settings towards the relayhost.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!(has(self.caSecretKeyRef) && has(self.caConfigMapKeyRef))", "message": "set at most one of caSecretKeyRef and caConfigMapKeyRef"}
]))]
pub struct RelayhostTlsSpec {
    /// Postfix `smtp_tls_security_level`: none, may (opportunistic), encrypt, dane, dane-only,
    /// fingerprint, verify or secure. Omitted: `secure` with `credentialsSecretRef` or `oauth2`
    /// (the login goes only to a relayhost that proved its name: a certificate from the system
    /// CAs, or the CA below, that names `host`; an IP address `host` then needs the CA below
    /// and a certificate carrying the address as an IP subjectAltName), `may` otherwise. With a
    /// login, a level that does not verify the relayhost (none, may, encrypt, dane) is accepted
    /// but reported by the `RelayhostVerified=False` condition (none and may also by
    /// `RelayhostPasswordProtected=False`: they allow clear text, and are refused unless
    /// `allowCleartextCredentials` says you mean it) and a Warning Event; with Microsoft 365's
    /// or Google's OAuth2 login it is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // Omitted rather than null: a plain enum, like the other optional fields.
    #[schemars(with = "TlsLevelSpec")]
    pub level: Option<TlsLevelSpec>,
    /// PEM CA bundle used to verify the relayhost's certificate (instead of the image's system
    /// CA bundle, the default), from a Secret key: a private CA, or the one that certifies an
    /// IP address `host`. An OAuth2 token endpoint is trusted with it too, besides the system
    /// CAs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_key_ref: Option<KeyRef>,
    /// PEM CA bundle used to verify the relayhost's certificate, from a ConfigMap key (and an
    /// OAuth2 token endpoint's, besides the system CAs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_config_map_key_ref: Option<KeyRef>,
    /// Says you mean a `level` of none or may with `credentialsSecretRef` or `oauth2`: a
    /// relayhost that offers no STARTTLS, or anyone on the path, then receives the password or
    /// token in clear text. Without it such a spec is refused; with it, it runs, reported by
    /// the `RelayhostPasswordProtected=False` condition and a Warning Event.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_cleartext_credentials: bool,
}

/// Postfix `smtp_tls_security_level`.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TlsLevelSpec {
    None,
    #[default]
    May,
    Encrypt,
    Dane,
    DaneOnly,
    Fingerprint,
    Verify,
    Secure,
}

impl From<TlsLevelSpec> for TlsLevel {
    fn from(l: TlsLevelSpec) -> TlsLevel {
        match l {
            TlsLevelSpec::None => TlsLevel::None,
            TlsLevelSpec::May => TlsLevel::May,
            TlsLevelSpec::Encrypt => TlsLevel::Encrypt,
            TlsLevelSpec::Dane => TlsLevel::Dane,
            TlsLevelSpec::DaneOnly => TlsLevel::DaneOnly,
            TlsLevelSpec::Fingerprint => TlsLevel::Fingerprint,
            TlsLevelSpec::Verify => TlsLevel::Verify,
            TlsLevelSpec::Secure => TlsLevel::Secure,
        }
    }
}

/// The oldest TLS version clients may use (Postfix `smtpd_tls_protocols`).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum TlsMinVersionSpec {
    #[serde(rename = "TLSv1.0")]
    Tls1_0,
    #[serde(rename = "TLSv1.1")]
    Tls1_1,
    #[default]
    #[serde(rename = "TLSv1.2")]
    Tls1_2,
    #[serde(rename = "TLSv1.3")]
    Tls1_3,
}

impl From<TlsMinVersionSpec> for TlsMinVersion {
    fn from(v: TlsMinVersionSpec) -> TlsMinVersion {
        match v {
            TlsMinVersionSpec::Tls1_0 => TlsMinVersion::Tls1_0,
            TlsMinVersionSpec::Tls1_1 => TlsMinVersion::Tls1_1,
            TlsMinVersionSpec::Tls1_2 => TlsMinVersion::Tls1_2,
            TlsMinVersionSpec::Tls1_3 => TlsMinVersion::Tls1_3,
        }
    }
}

/// A key of a Secret or ConfigMap in the same namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyRef {
    /// Name of the object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the object.
    #[serde(default = "default_ca_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_ca_key() -> String {
    "ca.crt".into()
}

/// A Secret in the same namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Shutdown of a relay pod.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShutdownSpec {
    /// On SIGTERM the pod leaves the Service, then delivers its queue to the relayhost for at
    /// most this many seconds (less when the queue empties or every message was tried and
    /// deferred); what is still queued stays on the volume for the next pod. The pod's
    /// termination grace period is this plus 35 seconds for Postfix to stop. 0 stops at once.
    #[serde(default = "default_drain_seconds")]
    #[schemars(range(min = 0, max = 3600))]
    pub drain_seconds: u32,
}

fn default_drain_seconds() -> u32 {
    25
}

impl Default for ShutdownSpec {
    fn default() -> Self {
        ShutdownSpec {
            drain_seconds: default_drain_seconds(),
        }
    }
}

/// A Postfix time: a whole number from 1 with a unit, s, m, h, d or w (e.g. `5d`, `12h`).
pub const POSTFIX_TIME_PATTERN: &str = "^[1-9][0-9]{0,5}[smhdw]$";

/// How long mail waits in the queue. Mail that got its 250 is delivered, or returned to its
/// sender (a bounce naming the last error) once it has waited `lifetime`. Each field, unset,
/// keeps Postfix's default (5d) and may then be set through `postconf` instead; not both.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueSpec {
    /// How long a message is retried before it returns to its sender (Postfix
    /// `maximal_queue_lifetime`): a number and a unit, s, m, h, d or w, at most 100d. Default
    /// 5d. While it waits, condition Delivering says why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = POSTFIX_TIME_PATTERN))]
    pub lifetime: Option<String>,
    /// The same for the relay's own bounces, the non-delivery reports it sends back to
    /// senders (Postfix `bounce_queue_lifetime`); after it they are dropped. At most 100d;
    /// default 5d.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = POSTFIX_TIME_PATTERN))]
    pub bounce_lifetime: Option<String>,
}

/// A queue field, the Postfix parameter it sets and the field's value.
pub struct QueueParameter {
    pub field: &'static str,
    pub parameter: &'static str,
    pub value: Option<String>,
}

/// Postfix's default for both queue lifetimes (`postconf -d`).
pub const POSTFIX_QUEUE_LIFETIME: &str = "5d";

impl QueueSpec {
    pub fn is_empty(&self) -> bool {
        self == &QueueSpec::default()
    }

    /// Each field with the Postfix parameter it sets, in `main.cf` order.
    pub fn parameters(&self) -> [QueueParameter; 2] {
        [
            QueueParameter {
                field: "spec.queue.bounceLifetime",
                parameter: "bounce_queue_lifetime",
                value: self.bounce_lifetime.clone(),
            },
            QueueParameter {
                field: "spec.queue.lifetime",
                parameter: "maximal_queue_lifetime",
                value: self.lifetime.clone(),
            },
        ]
    }
}

/// Mail queue storage.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of each pod's queue volume, as a Kubernetes quantity (e.g. 1Gi, 500Mi). Cannot be
    /// changed once the relay exists (StatefulSet volume claim templates are immutable).
    #[serde(default = "default_storage_size")]
    #[schemars(length(min = 1, max = 32), regex(pattern = QUANTITY_PATTERN))]
    pub size: String,
    /// StorageClass of the queue volumes; the cluster default when omitted. Cannot be changed
    /// once the relay exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
    /// What happens to queue volumes when the relay is deleted or scaled down (StatefulSet
    /// `persistentVolumeClaimRetentionPolicy`). Retain keeps undelivered mail.
    #[serde(default)]
    pub retention: RetentionSpec,
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            size: default_storage_size(),
            storage_class_name: None,
            retention: RetentionSpec::default(),
        }
    }
}

fn default_storage_size() -> String {
    "1Gi".into()
}

/// Queue volume retention.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionSpec {
    /// Retain or Delete the queue volumes when the SmtpRelay is deleted. With Delete, deleting
    /// the SmtpRelay (background or foreground, as Argo CD does) drains first: its pods leave
    /// the Service and deliver their queues, and the operator deletes the volumes once they are
    /// empty, after drainBeforeDeleteSeconds, or when the SmtpRelay is annotated
    /// smtprelay.dev/abandon-drain=true (condition Draining, Events). Meanwhile the ConfigMap
    /// `<name>-drain-guard` keeps the pods from the garbage collector. Deleted with propagation
    /// orphan, the relay keeps running, owned by that ConfigMap.
    #[serde(default)]
    pub when_deleted: RetentionPolicy,
    /// Retain or Delete the queue volume of a pod removed by scaling down. The pod delivers its
    /// queue before it goes (see replicas), so Delete removes an empty volume; only a drain
    /// given up with smtprelay.dev/abandon-drain destroys what was still queued.
    #[serde(default)]
    pub when_scaled: RetentionPolicy,
    /// With whenDeleted: Delete, how long deleting the SmtpRelay waits for its pods to deliver
    /// their queues before the volumes are deleted with whatever is left (a Warning Event says
    /// how much). 0 deletes at once, without draining.
    #[serde(default = "default_drain_before_delete_seconds")]
    #[schemars(range(max = 86400))]
    pub drain_before_delete_seconds: u32,
}

impl Default for RetentionSpec {
    fn default() -> Self {
        RetentionSpec {
            when_deleted: RetentionPolicy::default(),
            when_scaled: RetentionPolicy::default(),
            drain_before_delete_seconds: default_drain_before_delete_seconds(),
        }
    }
}

fn default_drain_before_delete_seconds() -> u32 {
    900
}

impl RetentionSpec {
    /// Whether the operator itself deletes the queue volumes when the SmtpRelay goes, after
    /// its pods drained (or gave up): `whenDeleted: Delete`. Such a relay carries the drain
    /// finalizer and the drain guard, so no garbage-collection path deletes its pods or
    /// volumes behind the operator's back (see the operator's `deletion` module).
    pub fn operator_deletes_volumes(&self) -> bool {
        self.when_deleted == RetentionPolicy::Delete
    }
}

/// Whether a volume is kept.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum RetentionPolicy {
    #[default]
    Retain,
    Delete,
}

impl RetentionPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RetentionPolicy::Retain => "Retain",
            RetentionPolicy::Delete => "Delete",
        }
    }
}

/// The Service in front of the relay pods.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.externalTrafficPolicy) || self.type != 'ClusterIP'", "message": "externalTrafficPolicy needs type NodePort or LoadBalancer"},
    {"rule": "!has(self.loadBalancerIP) || self.type == 'LoadBalancer'", "message": "loadBalancerIP needs type LoadBalancer"},
    {"rule": "!has(self.proxyProtocol) || !self.proxyProtocol || has(self.proxyProtocolSourceRanges)", "message": "proxyProtocol needs proxyProtocolSourceRanges: the load balancer's addresses, the only peers whose PROXY header the relay may trust"}
]))]
pub struct ServiceSpec {
    /// Service type.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Port clients connect to; it targets the pods' port 25.
    #[serde(default = "default_smtp_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Annotations on the Service (for example for a cloud load balancer).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Cluster or Local; Local keeps client source addresses, which `networks` relies on.
    /// Defaults to Local for NodePort and LoadBalancer: with Cluster, clients arriving through
    /// another node appear with a node's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_traffic_policy: Option<TrafficPolicy>,
    /// Requested load balancer address, where the cloud supports it.
    #[serde(
        default,
        rename = "loadBalancerIP",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "isIP(self)", "message": "loadBalancerIP must be an IP address"}]))]
    #[schemars(length(max = 45))]
    pub load_balancer_ip: Option<String>,
    /// The load balancer in front of this Service sends the PROXY protocol header (v1 or v2:
    /// e.g. an AWS NLB with proxy protocol, HAProxy `send-proxy`). The Service's port then
    /// targets the pods' `smtp-proxy` port (2525), where the relay takes the client address
    /// from that header, so `networks` matches the real client. Anyone who reaches port 2525
    /// of a pod could claim any address: let only the load balancer reach it (a
    /// NetworkPolicy). The condition ClientAddressVerified=False and a Warning Event say so.
    /// Clients inside the cluster use `<name>-headless` (port 25 of each pod), which trusts the
    /// real peer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub proxy_protocol: bool,
    /// The addresses (CIDR) the load balancer's connections come from: its subnets, or the
    /// proxy addresses the cloud documents. Required with `proxyProtocol`: the relay's
    /// NetworkPolicy admits the PROXY-protocol port only from them, so no one else can send
    /// a header claiming an address inside `networks`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 64)))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.all(n, isCIDR(n))", "message": "every range must be a CIDR such as 10.0.0.0/24 or fd00::/64"},
        {"rule": "self.all(n, !isCIDR(n) || cidr(n).prefixLength() > 0)", "message": "a range covering every address (0.0.0.0/0 or ::/0) would let anyone claim any client address"}
    ]))]
    pub proxy_protocol_source_ranges: Vec<String>,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        ServiceSpec {
            type_: ServiceType::default(),
            port: default_smtp_port(),
            annotations: BTreeMap::new(),
            external_traffic_policy: None,
            load_balancer_ip: None,
            proxy_protocol: false,
            proxy_protocol_source_ranges: Vec::new(),
        }
    }
}

/// A namespace name (a DNS label).
pub const NAMESPACE_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// Who may reach the relay pods' ports, as the NetworkPolicy `<name>` says.
///
/// SMTP (port 25) is admitted from `networks`, `smtpFromCidrs` and the pods of
/// `smtpFromNamespaces`; a relay with `saslUsersSecretRef` and neither list admits SMTP from
/// anywhere, as its clients log in from wherever they are. The PROXY-protocol port is admitted
/// only from `service.proxyProtocolSourceRanges`; metrics only from the operator's namespace and
/// `metricsFromNamespaces`. Nothing else reaches the pods.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// False: the operator keeps no NetworkPolicy for this relay (and deletes its own), and
    /// the cluster's other policies alone decide who reaches the pods.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// More sources of SMTP besides `networks` (CIDR): say, clients that log in with SASL.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 64)))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.all(n, isCIDR(n))", "message": "every source must be a CIDR such as 10.0.0.0/24 or fd00::/64"}
    ]))]
    pub smtp_from_cidrs: Vec<String>,
    /// Namespaces whose pods may connect to SMTP, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 63), regex(pattern = NAMESPACE_PATTERN)))]
    pub smtp_from_namespaces: Vec<String>,
    /// Namespaces whose pods may read the relay's metrics (port 9154), by name: say, the one
    /// Prometheus runs in. The operator's own namespace always may.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 63), regex(pattern = NAMESPACE_PATTERN)))]
    pub metrics_from_namespaces: Vec<String>,
}

fn default_true() -> bool {
    true
}

impl Default for NetworkPolicySpec {
    fn default() -> Self {
        NetworkPolicySpec {
            enabled: true,
            smtp_from_cidrs: Vec::new(),
            smtp_from_namespaces: Vec::new(),
            metrics_from_namespaces: Vec::new(),
        }
    }
}

/// Kubernetes Service type.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// Service external traffic policy.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum TrafficPolicy {
    Cluster,
    Local,
}

impl TrafficPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficPolicy::Cluster => "Cluster",
            TrafficPolicy::Local => "Local",
        }
    }
}

/// Container image pull policy.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// Observed state, written by the operator only.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct SmtpRelayStatus {
    /// Ready (the relay accepts mail), and the conditions explaining it: ConfigValid,
    /// SecretsResolved, Progressing, ConfigProven (the canary's Postfix passed its self-check
    /// with the configuration, or refused it: `ConfigRefused` names the field and Postfix's
    /// error); Delivering (False while mail waits because the last attempt to hand it to the
    /// relayhost failed, naming why in Postfix's words); RelayhostPasswordProtected,
    /// RelayhostVerified, RelayhostLogin (with a login: the relayhost's and the OAuth2 token
    /// endpoint's last answers, from the pods), ClientAddressVerified (False: a PROXY header
    /// names the client), InboundTLSModern (clients' STARTTLS), RelayClosedToStrangers (False:
    /// the safety rests on restrictions vouched for by trustRestrictionTables), QueuedMailKept
    /// (False: a retention policy deletes queue volumes), UserNamespaced (True: every running
    /// replica reports that its root is an unprivileged UID on the node), Draining (replicas
    /// being scaled away deliver their queues); kstatus Reconciling (still converging by
    /// itself) and Stalled (a rejected input, or a pod that cannot run: needs a change).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The spec generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods of the StatefulSet.
    #[serde(default)]
    pub replicas: i32,
    /// Pods passing their SMTP readiness probe.
    #[serde(default)]
    pub ready_replicas: i32,
    /// The relay pods' label selector, as `kubectl get pods -l` takes it: the scale
    /// subresource's, which a HorizontalPodAutoscaler reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Where clients connect: `<service>.<namespace>.svc:<port>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// With a certificate the operator issues (SASL users and no `tlsSecretRef`): the
    /// ConfigMap whose `ca.crt` clients that verify trust, the relay's own CA, which stays
    /// across renewals of the certificate. Null otherwise.
    #[serde(default)]
    pub ca_config_map: Option<String>,
    /// Hash of the applied configuration (the pods' `smtprelay.dev/config-hash`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// The last configuration a pod ran and passed Postfix's self-check with (the canary of a
    /// rollout): until a new `configHash` is proven, the other replicas keep this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proven_config_hash: Option<String>,
    /// The relay mode of the applied configuration: `spec.mode`, `Strict` when neither it nor
    /// `customRestrictions` is set, `Custom` with `customRestrictions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The sandbox of the applied configuration, when it has one: `CatchAll MAILBOX`, `Hold`
    /// or `Discard` (the `Sandbox` column of `kubectl get smtpr`): no mail reaches its
    /// recipients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// Mail waiting on the replicas' spools and whether it flows, read from each running
    /// pod's metrics every 30 s, a new relay's within 5 s (written only when it changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueStatus>,
}

/// Mail waiting and flowing, over every replica that answered, and per replica.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct QueueStatus {
    /// Messages on the spools, in any queue.
    pub messages: u64,
    /// Of those, waiting for a retry: the relayhost deferred them or could not be reached.
    pub deferred: u64,
    /// When the oldest waiting message arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_message_time: Option<Time>,
    /// When mail last reached the relayhost (since the pods started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivery_time: Option<Time>,
    /// The relayhost's answer to the last login: `Refused` when any replica's last login was
    /// refused, else `Accepted` when one was accepted, else `Unknown` (no login yet, or no
    /// credentials).
    pub relayhost_login: String,
    /// With an OAuth2 login: the access token's health over the replicas (the soonest expiry,
    /// the most failures in a row, the last error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relayhost_token: Option<TokenStatus>,
    /// The replicas whose spool volume is nearly full (less than twice the spool's reserve
    /// free): below the reserve they answer new mail with 452 (retry later) and keep what they
    /// accepted; deliver the queue (is the relayhost up?) or give the relay a larger
    /// `spec.storage.size`. Absent while every spool has room.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spool_nearly_full: Vec<String>,
    /// Each running replica, by pod name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["pod"]))]
    pub pods: Vec<PodQueueStatus>,
}

/// An OAuth2 access token, as a replica holds it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TokenStatus {
    /// When the current token expires; absent while there is none (mail waits meanwhile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_time: Option<Time>,
    /// Token requests failed since the last one that succeeded.
    pub failures_in_a_row: u64,
    /// The token endpoint's error for the last failed request (`invalid_client`,
    /// `invalid_grant`, `unreachable`, ...), while requests fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// One replica's queue; `unreadable` when its metrics did not answer.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodQueueStatus {
    pub pod: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deferred: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_message_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivery_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relayhost_login: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relayhost_token: Option<TokenStatus>,
    /// Free space on the spool volume, in bytes rounded down to a whole MiB (so an idle
    /// relay's status stays still).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool_free_bytes: Option<u64>,
    /// Size of the spool volume, in bytes rounded down to a whole MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool_size_bytes: Option<u64>,
    /// Less than twice the spool's reserve is free: below one reserve, new mail is answered
    /// 452 (retry later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool_nearly_full: Option<bool>,
    /// The configuration revision (the config hash) this replica's Postfix runs, as it says
    /// (an older relay image does not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_revision: Option<String>,
    /// A configuration this replica's Postfix refused: it keeps running `configRevision`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_refused: Option<PodConfigRefused>,
    /// Why this replica's last attempt to hand mail to the relayhost failed, until mail
    /// reaches the relayhost again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_problem: Option<PodDeliveryProblem>,
    /// The UID on the node that root in this replica is, as the relay read it from its
    /// `/proc/self/uid_map`: 0 when it is the node's root (no user namespace), else the start
    /// of the pod's unprivileged range (an older relay image does not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_node_uid: Option<u32>,
    /// Why the numbers are missing (the metrics endpoint did not answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
}

/// Why a replica's mail does not reach the relayhost.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodDeliveryProblem {
    /// `connect` (the relayhost cannot be reached), `tls` (no TLS, or a certificate that does
    /// not prove the relayhost's name), `login` (the login was refused), `refused` (the
    /// relayhost refused the mail, for now), or `other` (the pod's log says).
    pub reason: String,
    /// Postfix's own words, without anything a client wrote.
    pub detail: String,
}

/// A configuration a replica refused, and why in Postfix's own words.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodConfigRefused {
    /// The refused configuration's revision (its config hash).
    pub revision: String,
    /// Postfix's own log line (or the self-check's SMTP reply).
    pub error: String,
}

impl RelayhostSpec {
    /// Whether the relay speaks TLS from the first byte: as the spec says, else on port 465.
    pub fn implicit_tls(&self) -> bool {
        self.implicit_tls.unwrap_or(self.port == 465)
    }
}

impl SmtpRelaySpec {
    /// How long mail is retried before it returns to its sender, as in force, and what set
    /// it: the field, else a `postconf` entry, else Postfix's default.
    pub fn queue_lifetime(&self) -> (&str, &'static str) {
        if let Some(v) = self.queue.lifetime.as_deref() {
            (v, "spec.queue.lifetime")
        } else if let Some(v) = self.postconf.get("maximal_queue_lifetime") {
            (v, "spec.postconf.maximal_queue_lifetime")
        } else {
            (POSTFIX_QUEUE_LIFETIME, "Postfix's default")
        }
    }

    /// Whether the operator issues the relay's certificate (`steps::certificate`): it has SASL
    /// users and no certificate of the user's.
    pub fn issued_certificate(&self) -> bool {
        self.sasl_users_secret_ref.is_some() && self.tls_secret_ref.is_none()
    }

    /// The mode in force as status shows it: the mode's name, or `Custom`.
    pub fn mode_in_force(&self) -> String {
        match self.effective_mode() {
            Some(m) => format!("{m:?}"),
            None => "Custom".into(),
        }
    }

    /// The named mode in force (Strict when neither mode nor customRestrictions is set).
    pub fn effective_mode(&self) -> Option<RelayMode> {
        match (&self.mode, &self.custom_restrictions) {
            (Some(m), _) => Some(*m),
            (None, Some(_)) => None,
            (None, None) => Some(RelayMode::Strict),
        }
    }
}

impl SmtpRelay {
    /// The relay's namespace: always set by the API server on this namespaced resource, an
    /// error (not a panic) on an object that lacks it.
    pub fn namespace_checked(&self) -> crate::floor::error::Result<String> {
        kube::ResourceExt::namespace(self).ok_or(crate::floor::error::Error::MissingObjectKey(
            ".metadata.namespace",
        ))
    }
}

/// Bytes of a storage quantity such as `1Gi`, `500M` or `1.5Gi` (the forms of
/// [`crate::floor::crd::QUANTITY_PATTERN`]); `None` when malformed.
pub fn quantity_bytes(q: &str) -> Option<u128> {
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let mult: u128 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        _ => return None,
    };
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if int.is_empty() || frac.len() > 9 || !frac.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let int: u128 = int.parse().ok()?;
    let frac_val: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    let scale = 10u128.pow(frac.len() as u32);
    int.checked_mul(mult)?
        .checked_add(frac_val.checked_mul(mult)? / scale)
}

/// The Ready condition of a status, if any.
pub fn ready_condition(status: Option<&SmtpRelayStatus>) -> Option<&Condition> {
    find_condition(status, READY)
}

/// The condition `type_` of a status, if any.
pub fn find_condition<'a>(
    status: Option<&'a SmtpRelayStatus>,
    type_: &str,
) -> Option<&'a Condition> {
    status?.conditions.iter().find(|c| c.type_ == type_)
}

pub const READY: &str = "Ready";

/// The replicas as the queue observer last read them (`status.queue.pods`); `None` before it
/// read any.
pub fn read_pods(relay: &SmtpRelay) -> Option<&[PodQueueStatus]> {
    Some(relay.status.as_ref()?.queue.as_ref()?.pods.as_slice())
}

/// The replicas that say they refused a configuration, as the queue observer last read them
/// (`status.queue.pods[].configRefused`): the rollout names them, and a reconcile follows a
/// change of them (see `fingerprint`).
pub fn config_refusals(relay: &SmtpRelay) -> Vec<&PodQueueStatus> {
    read_pods(relay)
        .unwrap_or_default()
        .iter()
        .filter(|p| p.config_refused.is_some())
        .collect()
}

/// What the `Delivering` condition depends on in `status.queue`: which replicas have mail
/// waiting and why it does not leave (no counts or times), so a reconcile follows a change of
/// it (see `fingerprint`).
pub fn delivery_health(relay: &SmtpRelay) -> impl std::hash::Hash + '_ {
    read_pods(relay).map(|pods| {
        pods.iter()
            .map(|p| {
                (
                    p.pod.as_str(),
                    p.deferred.is_some_and(|d| d > 0),
                    p.delivery_problem.as_ref(),
                    p.last_delivery_time.is_some(),
                )
            })
            .collect::<Vec<_>>()
    })
}

/// What the `UserNamespaced` condition depends on in `status.queue`: which replicas said
/// whether their root is the node's root (see `fingerprint`), not the UIDs themselves.
pub fn isolation_health(relay: &SmtpRelay) -> impl std::hash::Hash + '_ {
    read_pods(relay).map(|pods| {
        pods.iter()
            .map(|p| (p.pod.as_str(), p.root_node_uid.map(|uid| uid == 0)))
            .collect::<Vec<_>>()
    })
}

/// What the `RelayhostLogin` condition depends on in `status.queue`: a reconcile follows a
/// change of it (see `fingerprint`), and nothing else the queue observer writes.
pub fn login_health(relay: &SmtpRelay) -> impl std::hash::Hash + '_ {
    relay
        .status
        .as_ref()
        .and_then(|s| s.queue.as_ref())
        .map(|q| {
            let token = q.relayhost_token.as_ref().map(|t| {
                (
                    t.failures_in_a_row > 0,
                    t.last_error.as_deref(),
                    t.expires_time.is_some(),
                )
            });
            let pods: Vec<_> = q
                .pods
                .iter()
                .map(|p| {
                    (
                        p.pod.as_str(),
                        p.relayhost_login.as_deref(),
                        p.relayhost_token
                            .as_ref()
                            .is_some_and(|t| t.failures_in_a_row > 0),
                    )
                })
                .collect();
            (q.relayhost_login.as_str(), token, pods)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_enums_convert_to_the_image_enums_by_name() {
        for m in [
            RelayMode::Strict,
            RelayMode::AllowSaslAuthNoDomain,
            RelayMode::AllowNetAuthNoDomain,
            RelayMode::AllowAuthNoDomain,
        ] {
            let ours = serde_json::to_value(m).expect("json");
            let theirs = serde_json::to_value(Mode::from(m)).expect("json");
            assert_eq!(ours, theirs);
        }
        for m in [
            SandboxMode::CatchAll,
            SandboxMode::Hold,
            SandboxMode::Discard,
        ] {
            let ours = serde_json::to_value(m).expect("json");
            let theirs =
                serde_json::to_value(smtp_relay::config_file::SandboxMode::from(m)).expect("json");
            assert_eq!(ours, theirs);
        }
        for l in [
            TlsLevelSpec::None,
            TlsLevelSpec::May,
            TlsLevelSpec::Encrypt,
            TlsLevelSpec::Dane,
            TlsLevelSpec::DaneOnly,
            TlsLevelSpec::Fingerprint,
            TlsLevelSpec::Verify,
            TlsLevelSpec::Secure,
        ] {
            let ours = serde_json::to_value(l).expect("json");
            assert_eq!(ours.as_str(), Some(TlsLevel::from(l).as_str()));
        }
        for v in [
            TlsMinVersionSpec::Tls1_0,
            TlsMinVersionSpec::Tls1_1,
            TlsMinVersionSpec::Tls1_2,
            TlsMinVersionSpec::Tls1_3,
        ] {
            let ours = serde_json::to_value(v).expect("json");
            let theirs = serde_json::to_value(TlsMinVersion::from(v)).expect("json");
            assert_eq!(ours, theirs);
            assert_eq!(ours.as_str(), Some(TlsMinVersion::from(v).as_str()));
        }
        assert_eq!(
            TlsMinVersion::from(TlsMinVersionSpec::default()),
            TlsMinVersion::default(),
            "one default"
        );
    }

    #[test]
    fn effective_mode() {
        let mut spec: SmtpRelaySpec = serde_json::from_value(serde_json::json!({
            "domain": "example.net", "relayhost": {"host": "mx.example.net"}
        }))
        .expect("spec");
        assert_eq!(spec.effective_mode(), Some(RelayMode::Strict));
        assert_eq!(spec.mode_in_force(), "Strict");
        spec.custom_restrictions = Some(vec!["reject".into()]);
        assert_eq!(spec.effective_mode(), None);
        assert_eq!(spec.mode_in_force(), "Custom");
        spec.mode = Some(RelayMode::AllowAuthNoDomain);
        assert_eq!(spec.effective_mode(), Some(RelayMode::AllowAuthNoDomain));
        // The names users write in spec.mode.
        assert_eq!(spec.mode_in_force(), "AllowAuthNoDomain");
    }
}
