//! Pure status computation: conditions (Kubernetes API conventions), replica counts, endpoint.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use smtp_relay::postfix::{main_cf, restrictions};
use smtp_relay::settings::{self, TlsLevel, TlsMinVersion};

use crate::floor::crd::{
    find_condition, PodDeliveryProblem, PodQueueStatus, QueueStatus, SmtpRelay, SmtpRelayStatus,
    READY,
};
use crate::floor::running::{Canary, Drain, Refusal, Rollout};
use crate::floor::verdict::Outcome;
use smtp_relay::revision;

pub const CONFIG_VALID: &str = "ConfigValid";
pub const SECRETS_RESOLVED: &str = "SecretsResolved";
pub const PROGRESSING: &str = "Progressing";
/// kstatus: True while the operator or the pods are still working towards the spec.
pub const RECONCILING: &str = "Reconciling";
/// kstatus: True when the relay cannot reach the spec without a human (a rejected spec or
/// Secret, a pod that cannot start).
pub const STALLED: &str = "Stalled";
/// False when the relayhost password may be sent unencrypted (credentials with an explicit TLS
/// level of none or may): accepted, but the user should see it.
pub const RELAYHOST_PASSWORD_PROTECTED: &str = "RelayhostPasswordProtected";
/// False when the login (a password or an OAuth2 token) may go to a relayhost that did not
/// prove who it is (an explicit TLS level that verifies nothing: none, may, encrypt, dane, or
/// verify with mxLookup): accepted, but the user should see it. The default with a login is
/// secure (issue 26).
pub const RELAYHOST_VERIFIED: &str = "RelayhostVerified";
/// False when `networks` is matched against an address a header claims
/// (`spec.service.proxyProtocol`): accepted, but the user should see it.
pub const CLIENT_ADDRESS_VERIFIED: &str = "ClientAddressVerified";
/// False when clients may use STARTTLS older or weaker than a TLS scanner grades clean: a
/// legacy `spec.tlsMinVersion` (TLSv1.0, TLSv1.1), or `postconf` replacing the relay's TLS
/// floor for clients. Accepted, but the user should see it: SASL users log in on that port
/// (issue 26).
pub const INBOUND_TLS_MODERN: &str = "InboundTLSModern";
/// False when the relay's safety rests on restrictions of `spec.customRestrictions` it cannot
/// read (an access table from a file, a policy service, client certificates, a DNS whitelist)
/// before its safety net, which `spec.trustRestrictionTables` vouched for: whoever they let
/// through relays to any domain. Accepted, but the user should see it (issue 26).
pub const RELAY_CLOSED_TO_STRANGERS: &str = "RelayClosedToStrangers";
/// Whether root in the relay pods is an unprivileged UID on the node (issue 32): True only
/// when the running template gives the pods their own user namespace and every running
/// replica reported, from its `/proc/self/uid_map`, that its root is not the node's root; False
/// when the pods share the node's users (the spec's, the operator's or an older operator's
/// choice) or a runtime ignored `hostUsers: false`.
pub const USER_NAMESPACED: &str = "UserNamespaced";
/// Conditions that are False for an accepted but risky choice; each turn to False is a
/// Warning Event.
pub const WARNING_CONDITIONS: [&str; 7] = [
    RELAYHOST_PASSWORD_PROTECTED,
    RELAYHOST_VERIFIED,
    CLIENT_ADDRESS_VERIFIED,
    QUEUED_MAIL_KEPT,
    INBOUND_TLS_MODERN,
    RELAY_CLOSED_TO_STRANGERS,
    USER_NAMESPACED,
];
/// False when a retention policy deletes queue volumes, and the mail queued on them with it.
pub const QUEUED_MAIL_KEPT: &str = "QueuedMailKept";
/// True while replicas being scaled away deliver their queues ([`crate::steps::drain`]).
pub const DRAINING: &str = "Draining";
/// With a relayhost login: whether the relay can log in (the relayhost's answer to the last
/// login, and with OAuth2 the token endpoint's), from what `queue::observe` read in the pods.
pub const RELAYHOST_LOGIN: &str = "RelayhostLogin";
/// Whether mail leaves: False while a replica has mail waiting and its last attempt to hand
/// mail to the relayhost failed, naming why in Postfix's words; from what `queue::observe`
/// read in the pods. Ready keeps meaning that the relay accepts mail.
pub const DELIVERING: &str = "Delivering";

/// Whether the configuration in the spec has been proven by a pod's Postfix: True once a pod
/// runs it and passed the self-check (a real SMTP session with it); Unknown while the canary
/// proves it; False when the canary's Postfix refused it, naming the spec field and Postfix's
/// error (the other replicas keep the last good configuration: `steps::rollout`).
pub const CONFIG_PROVEN: &str = "ConfigProven";

pub fn endpoint(relay: &SmtpRelay) -> String {
    format!(
        "{}.{}.svc:{}",
        relay.name_any(),
        relay.namespace().unwrap_or_default(),
        relay.spec.service.port
    )
}

/// A condition as [`condition`] makes it, keeping `before`'s lastTransitionTime when its
/// status did not change.
pub(crate) fn condition_at(
    type_: &str,
    ok: Option<bool>,
    reason: &str,
    message: String,
    gen: Option<i64>,
    now: &Time,
    before: Option<&Condition>,
) -> Condition {
    keep_transition_time(condition(type_, ok, reason, message, gen, now), before)
}

/// `c` with `before`'s lastTransitionTime when its status did not change.
fn keep_transition_time(mut c: Condition, before: Option<&Condition>) -> Condition {
    if let Some(before) = before.filter(|b| b.status == c.status) {
        c.last_transition_time = before.last_transition_time.clone();
    }
    c
}

fn condition(
    type_: &str,
    ok: Option<bool>,
    reason: &str,
    message: String,
    gen: Option<i64>,
    now: &Time,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: match ok {
            Some(true) => "True",
            Some(false) => "False",
            None => "Unknown",
        }
        .into(),
        reason: reason.into(),
        message,
        last_transition_time: now.clone(),
        observed_generation: gen,
    }
}

/// Whether the relayhost password can only travel inside TLS; the rule is the relay image's.
///
/// Computed from the fields alone (`relayhost.tls.level`, `credentialsSecretRef`, `oauth2`),
/// and they are the only source: `postconf` cannot set a parameter that protects the login
/// (the TLS level and what overrides it, the SASL security options, the CAs, ...; see
/// `smtp_relay::postfix::relay_guard::check_postconf`, which both [`crate::steps::judge`] and the
/// relay's own inputs apply), so a spec that tries is refused and never applied. For a spec
/// that was not applied, [`condition_in_force`] keeps describing what runs.
fn relayhost_password_condition(relay: &SmtpRelay, gen: Option<i64>, now: &Time) -> Condition {
    let rh = &relay.spec.relayhost;
    let explicit = rh.tls.as_ref().and_then(|t| t.level).map(TlsLevel::from);
    let credentials = rh.credentials_secret_ref.is_some() || rh.oauth2.is_some();
    let level = settings::relayhost_tls(explicit, credentials);
    let (ok, reason, message) = if !credentials {
        (
            true,
            "NoCredentials",
            "no relayhost credentials are configured".to_string(),
        )
    } else if settings::relayhost_password_in_clear(explicit, credentials) {
        (
            false,
            "CleartextAllowed",
            format!(
                "spec.relayhost.tls.level is {level} with {} and spec.relayhost.tls.allowCleartextCredentials: a relayhost that offers no STARTTLS, or anyone on the path, would receive the {}; remove the level (the default with a login is secure) or set secure",
                if rh.oauth2.is_some() { "oauth2" } else { "credentialsSecretRef" },
                if rh.oauth2.is_some() { "access token" } else { "password" }
            ),
        )
    } else {
        (
            true,
            "TLSRequired",
            format!("the relayhost password is only sent inside TLS (level {level})"),
        )
    };
    condition(
        RELAYHOST_PASSWORD_PROTECTED,
        Some(ok),
        reason,
        message,
        gen,
        now,
    )
}

/// Whether the login goes only to a relayhost that proved who it is; the rule is the relay
/// image's ([`settings::relayhost_unverified`]), computed from the fields alone like
/// [`relayhost_password_condition`] (`postconf` cannot set the level, the CAs or the names a
/// certificate must carry).
fn relayhost_verified_condition(relay: &SmtpRelay, gen: Option<i64>, now: &Time) -> Condition {
    let rh = &relay.spec.relayhost;
    let explicit = rh.tls.as_ref().and_then(|t| t.level).map(TlsLevel::from);
    let credentials = rh.credentials_secret_ref.is_some() || rh.oauth2.is_some();
    let level = settings::relayhost_tls(explicit, credentials);
    let (field, what) = if rh.oauth2.is_some() {
        ("oauth2", "access token")
    } else {
        ("credentialsSecretRef", "password")
    };
    let tls = rh.tls.as_ref();
    let cas = if tls.is_some_and(|t| t.ca_secret_key_ref.is_some()) {
        "the CA of spec.relayhost.tls.caSecretKeyRef"
    } else if tls.is_some_and(|t| t.ca_config_map_key_ref.is_some()) {
        "the CA of spec.relayhost.tls.caConfigMapKeyRef"
    } else {
        "the system CAs"
    };
    let named = if settings::is_ip_address(&rh.host) {
        format!("{} (an IP subjectAltName)", rh.host)
    } else if rh.mx_lookup {
        format!("{} or a host under it", rh.host)
    } else {
        rh.host.clone()
    };
    let (ok, reason, message) = if !credentials {
        (
            true,
            "NoCredentials",
            "no relayhost credentials are configured".to_string(),
        )
    } else if settings::relayhost_unverified(explicit, credentials, rh.mx_lookup) {
        let why = match level {
            TlsLevel::Verify => "verify with mxLookup checks the name of whichever host DNS answered for the MX records",
            TlsLevel::Dane => "dane verifies only with DNSSEC-signed TLSA records, and without them accepts any certificate",
            _ => "the relayhost's certificate is not verified",
        };
        (
            false,
            "UnverifiedRelayhost",
            format!(
                "spec.relayhost.tls.level is {level} with {field}: {why}, so anyone on the path who answers STARTTLS with a certificate of their own would receive the {what}; remove the level (the default with a login is secure: a certificate from {cas} that names {named}) or set secure"
            ),
        )
    } else {
        let how = match level {
            TlsLevel::Fingerprint => {
                "its certificate matches a pinned fingerprint (level fingerprint)".to_string()
            }
            TlsLevel::DaneOnly => {
                "its certificate matches its DNSSEC-signed TLSA records (level dane-only)"
                    .to_string()
            }
            _ => format!("it presents a certificate from {cas} that names {named} (level {level})"),
        };
        (
            true,
            "RelayhostVerified",
            format!("the {what} is sent only once the relayhost proved who it is: {how}"),
        )
    };
    condition(RELAYHOST_VERIFIED, Some(ok), reason, message, gen, now)
}

/// A condition computed from the spec's fields (`spec`), for the configuration in force, so it
/// never claims a protection that does not run: the spec's when it was applied; the last one's
/// when nothing of the spec was (a refused spec or Secret, a name conflict); when the API
/// server refused a child midway (some of the spec may run, the ConfigMap included), the spec's
/// only if the last one did not already say False.
fn condition_in_force(spec: Condition, outcome: &Outcome, old: &SmtpRelayStatus) -> Condition {
    let Some(last) = old.conditions.iter().find(|c| c.type_ == spec.type_) else {
        return spec;
    };
    match outcome {
        Outcome::Applied { .. } => spec,
        Outcome::InvalidSpec { .. } | Outcome::Unresolved { .. } | Outcome::NameConflict { .. } => {
            last.clone()
        }
        Outcome::ApplyRefused { .. } if last.status == "False" => last.clone(),
        Outcome::ApplyRefused { .. } => spec,
    }
}

/// What the pods last said about logging in to the relayhost (`status.queue`, written by
/// [`crate::watch::queue`]): why mail is deferred, when a login is why. `None` without a login. Only
/// states, no counts or times, so it changes when the health does (see
/// [`login_health`], part of the fingerprint).
fn relayhost_login_condition(relay: &SmtpRelay, gen: Option<i64>, now: &Time) -> Option<Condition> {
    let rh = &relay.spec.relayhost;
    if rh.credentials_secret_ref.is_none() && rh.oauth2.is_none() {
        return None;
    }
    let queue = relay.status.as_ref().and_then(|s| s.queue.as_ref());
    let pods_where = |pred: &dyn Fn(&crate::floor::crd::PodQueueStatus) -> bool| -> String {
        let names: Vec<&str> = queue
            .iter()
            .flat_map(|q| q.pods.iter())
            .filter(|p| pred(p))
            .map(|p| p.pod.as_str())
            .collect();
        if names.is_empty() {
            "a replica".into()
        } else {
            names.join(", ")
        }
    };
    let failing_token = queue
        .and_then(|q| q.relayhost_token.as_ref())
        .filter(|t| t.failures_in_a_row > 0);
    let (ok, reason, message) = match (queue, failing_token) {
        (_, Some(t)) => {
            let pods = pods_where(&|p| {
                p.relayhost_token
                    .as_ref()
                    .is_some_and(|t| t.failures_in_a_row > 0)
            });
            let error = t.last_error.as_deref().unwrap_or("an error");
            let consequence = if t.expires_time.is_some() {
                "the current access token is used until it expires, then mail waits in the queue"
            } else {
                "no access token: mail waits in the queue until one is had"
            };
            (
                Some(false),
                "TokenRefreshFailing",
                format!("{pods}: the OAuth2 token endpoint answers {error}; {consequence} (status.queue.relayhostToken; invalid_client: the app's secret; invalid_grant: the refresh token or the consent)"),
            )
        }
        (Some(q), None) if q.relayhost_login == "Refused" => (
            Some(false),
            "LoginRefused",
            format!(
                "the relayhost refused the last login of {}: mail waits in the queue; check the {}",
                pods_where(&|p| p.relayhost_login.as_deref() == Some("Refused")),
                if rh.oauth2.is_some() {
                    "mailbox's permission to send with OAuth2 (SMTP AUTH enabled, the app's access to it)"
                } else {
                    "credentials in spec.relayhost.credentialsSecretRef"
                }
            ),
        ),
        // The relay's login state when the relayhost's certificate was not verified (at
        // level secure or verify): no login was sent.
        (Some(q), None) if q.relayhost_login == "Unverified" => (
            Some(false),
            "RelayhostNotVerified",
            format!(
                "{}: the relayhost did not prove its name (a certificate from {} that names {}), so no login was sent: mail waits in the queue; check spec.relayhost.host and spec.relayhost.tls",
                pods_where(&|p| p.relayhost_login.as_deref() == Some("Unverified")),
                if rh.tls.as_ref().is_some_and(|t| {
                    t.ca_secret_key_ref.is_some() || t.ca_config_map_key_ref.is_some()
                }) {
                    "the CA given in spec.relayhost.tls"
                } else {
                    "the system CAs"
                },
                rh.host
            ),
        ),
        (Some(q), None) if q.relayhost_login == "Accepted" => (
            Some(true),
            "LoginAccepted",
            "the relayhost accepted the last login".to_string(),
        ),
        _ => (
            None,
            "NoLoginYet",
            "no replica has logged in to the relayhost yet (it logs in with the first message)"
                .to_string(),
        ),
    };
    Some(condition(RELAYHOST_LOGIN, ok, reason, message, gen, now))
}

/// Whether `networks` sees the TCP peer, or an address from a PROXY header.
fn client_address_condition(
    relay: &SmtpRelay,
    wide: OperatorWide,
    gen: Option<i64>,
    now: &Time,
) -> Condition {
    let service = &relay.spec.service;
    if service.proxy_protocol {
        let who = if !wide.network_policies {
            "the operator keeps no NetworkPolicies (--relay-network-policies=false): let only the load balancer reach it with a policy of your own".to_string()
        } else if relay.spec.network_policy.enabled {
            format!(
                "the NetworkPolicy {} admits that port only from spec.service.proxyProtocolSourceRanges ({}), where the cluster enforces NetworkPolicies",
                relay.name_any(),
                service.proxy_protocol_source_ranges.join(", ")
            )
        } else {
            "spec.networkPolicy.enabled is false: let only the load balancer reach it with a policy of your own".to_string()
        };
        condition(
            CLIENT_ADDRESS_VERIFIED,
            Some(false),
            "ProxyHeaderTrusted",
            format!(
                "spec.service.proxyProtocol: port {} of the relay pods takes the client address from the PROXY header, so whoever reaches that port could claim an address inside networks; {who}",
                crate::floor::contract::PROXY_PROTOCOL_PORT
            ),
            gen,
            now,
        )
    } else {
        condition(
            CLIENT_ADDRESS_VERIFIED,
            Some(true),
            "PeerAddress",
            "networks are matched against the address of the TCP peer".into(),
            gen,
            now,
        )
    }
}

/// [`USER_NAMESPACED`], from the template that runs (`rollout`) and what each running replica
/// said (`status.queue`, see [`crate::floor::crd::isolation_health`], part of the
/// fingerprint): never True on the template's word alone, since a runtime may ignore it.
fn user_namespace_condition(
    relay: &SmtpRelay,
    rollout: &Rollout,
    wide: OperatorWide,
    gen: Option<i64>,
    now: &Time,
) -> Condition {
    let pods = crate::floor::crd::read_pods(relay).unwrap_or_default();
    let named = |pred: &dyn Fn(&PodQueueStatus) -> bool| -> String {
        pods.iter()
            .filter(|p| pred(p))
            .map(|p| p.pod.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (ok, reason, message) = if !rollout.exists {
        (None, "NotObserved", "no relay pods run yet".to_string())
    } else if rollout.pods_share_node_users {
        let why = match relay.spec.host_users {
            Some(true) => "spec.hostUsers is true; unset it where the nodes' runtime supports user namespaces (containerd 2.0+ with runc 1.2+, CRI-O 1.25+)".to_string(),
            _ if !wide.user_namespaces => "the operator runs with --relay-user-namespaces=false (the chart's relayUserNamespaces) and spec.hostUsers is not set; set it to false where the nodes' runtime supports user namespaces".to_string(),
            _ => "the pods started before user namespaces were the operator's default: they get one with their next rollout (a change of configuration or relay image), or now by setting spec.hostUsers to false".to_string(),
        };
        (
            Some(false),
            "SharesNodeUsers",
            format!("the relay pods share the node's users, so root in them (Postfix's master) is root on the node: {why}"),
        )
    } else if pods.iter().any(|p| p.root_node_uid == Some(0)) {
        (
            Some(false),
            "RuntimeIgnoredHostUsers",
            format!(
                "root in {} is the node's root although the pods ask for hostUsers: false: the node's runtime ignores it (user namespaces need containerd 2.0+ with runc 1.2+, or CRI-O 1.25+); upgrade the nodes, or set spec.hostUsers: true to say the pods share the node's users",
                named(&|p| p.root_node_uid == Some(0))
            ),
        )
    } else if !pods.is_empty() && pods.iter().all(|p| p.root_node_uid.is_some()) {
        (
            Some(true),
            "UserNamespaced",
            format!(
                "root in each of the {} running replicas is an unprivileged UID on the node, in the pod's own user namespace (status.queue.pods[].rootNodeUid)",
                pods.len()
            ),
        )
    } else if pods.is_empty() {
        (
            None,
            "NotObserved",
            "the pods ask for their own user namespace (hostUsers: false); no running replica has said yet which node UID its root is".to_string(),
        )
    } else {
        (
            None,
            "NotObserved",
            format!(
                "the pods ask for their own user namespace (hostUsers: false); {} did not say which node UID its root is (metrics unreadable, or a relay image that does not report it)",
                named(&|p| p.root_node_uid.is_none())
            ),
        )
    };
    condition(USER_NAMESPACED, ok, reason, message, gen, now)
}

/// Whether the relay restrictions refuse every anonymous client outside `networks` sending to
/// another domain on their own, or rest on what the relay cannot read; the rule is the relay
/// image's ([`restrictions::walk`]), so the condition says what the relay's own check found.
/// Only a custom list can rest on anything: the modes are plain.
fn closed_to_strangers_condition(relay: &SmtpRelay, gen: Option<i64>, now: &Time) -> Condition {
    let field = "spec.customRestrictions";
    let walk = relay
        .spec
        .custom_restrictions
        .as_deref()
        .map(|list| restrictions::walk(list, false));
    let (ok, reason, message) = match walk {
        Some(walk) if !walk.rests_on.is_empty() => {
            let entries: Vec<String> = walk
                .rests_on
                .iter()
                .map(|o| format!("{field}[{}] ({}: {})", o.index, o.entry, o.why()))
                .collect();
            (
                false,
                "TrustsTables",
                format!(
                    "the relay's safety rests on {}: whoever they let through relays to any domain, and the relay cannot read them; spec.trustRestrictionTables vouches for them",
                    entries.join(" and ")
                ),
            )
        }
        Some(walk) if !matches!(walk.decision, restrictions::Decision::Refused(_)) => (
            false,
            "PermitsStrangers",
            format!("{field} lets an anonymous client outside networks relay to any domain"),
        ),
        _ => (
            true,
            "SafetyNetFirst",
            "the restrictions refuse every anonymous client outside networks sending to another domain"
                .to_string(),
        ),
    };
    condition(
        RELAY_CLOSED_TO_STRANGERS,
        Some(ok),
        reason,
        message,
        gen,
        now,
    )
}

/// Whether the STARTTLS clients (and SASL users) connect with is what a TLS scanner grades
/// clean: TLS 1.2 or newer, forward-secret AEAD suites, the server's order (the relay's
/// `main_cf::inbound_tls_floor`). A legacy `spec.tlsMinVersion` or a `postconf` entry that
/// replaces part of that floor (`main_cf::INBOUND_TLS_FLOOR`) is accepted and flagged; a relay
/// that offers no STARTTLS (no SASL users, no `tlsSecretRef`) has nothing to flag.
fn inbound_tls_condition(relay: &SmtpRelay, gen: Option<i64>, now: &Time) -> Condition {
    let spec = &relay.spec;
    let offered = spec.sasl_users_secret_ref.is_some() || spec.tls_secret_ref.is_some();
    let min = spec
        .tls_min_version
        .map(TlsMinVersion::from)
        .unwrap_or_default();
    let overridden = main_cf::inbound_tls_overridden(spec.postconf.keys());
    let (ok, reason, message) = if !offered {
        (
            true,
            "NoInboundTLS",
            format!(
                "the relay offers no STARTTLS (neither saslUsersSecretRef nor tlsSecretRef is set), so no client logs in{}",
                if min.is_legacy() {
                    format!("; spec.tlsMinVersion {min} applies once it does")
                } else {
                    String::new()
                }
            ),
        )
    } else if min.is_legacy() {
        let versions = if min == TlsMinVersion::Tls1_0 {
            "TLS 1.0 and 1.1"
        } else {
            "TLS 1.1"
        };
        (
            false,
            "LegacyTLSAllowed",
            format!(
                "spec.tlsMinVersion is {min}: clients may use {versions}, with CBC suites (SHA-1 MACs) and RSA key exchange, which TLS scanners fail, on the port where SASL users log in; remove it (the default, TLSv1.2, takes forward-secret AEAD suites only) once the legacy clients are gone"
            ),
        )
    } else if !overridden.is_empty() {
        (
            false,
            "InboundTLSOverridden",
            format!(
                "spec.postconf sets {}, part of the relay's TLS floor for clients (TLS 1.2 or newer, forward-secret AEAD suites, the server's order), and what the override allows is not checked; remove it from postconf and choose the floor with spec.tlsMinVersion",
                overridden.join(", ")
            ),
        )
    } else {
        (
            true,
            "ModernTLS",
            format!(
                "clients use TLS {} or newer with forward-secret AEAD suites, in the server's order",
                if min == TlsMinVersion::Tls1_3 { "1.3" } else { "1.2" }
            ),
        )
    };
    condition(INBOUND_TLS_MODERN, Some(ok), reason, message, gen, now)
}

/// [`DELIVERING`], from `status.queue` as `queue::observe` last wrote it: only which replicas
/// have mail waiting and why (see [`crate::floor::crd::delivery_health`], part of the fingerprint), so it changes
/// when delivery does, not as numbers move. The message names the times, which stay still.
///
/// A reading that says nothing of the relayhost (no pod runs, or mail waits on a replica that
/// has not tried the relayhost since it started) keeps a failure already known: a restart does
/// not make mail leave, and only a delivery or another failure ends it.
fn delivering_condition(relay: &SmtpRelay, gen: Option<i64>, now: &Time) -> Condition {
    let known_failure = || {
        find_condition(relay.status.as_ref(), DELIVERING)
            .filter(|c| c.status == "False")
            .map(|c| {
                condition(
                    DELIVERING,
                    Some(false),
                    &c.reason,
                    c.message.clone(),
                    gen,
                    now,
                )
            })
    };
    let Some(queue) = relay.status.as_ref().and_then(|s| s.queue.as_ref()) else {
        return known_failure().unwrap_or_else(|| {
            condition(
                DELIVERING,
                None,
                "NotObserved",
                "no replica's queue has been read yet".into(),
                gen,
                now,
            )
        });
    };
    if let Some((reason, message)) = delivery_failure(relay, queue) {
        return condition(DELIVERING, Some(false), reason, message, gen, now);
    }
    // Mail waits on a replica that has neither failed nor delivered since it started.
    let untried: Vec<String> = queue
        .pods
        .iter()
        .filter(|p| p.deferred.is_some_and(|d| d > 0) && p.last_delivery_time.is_none())
        .map(|p| format!("{} ({} waiting)", p.pod, p.deferred.unwrap_or_default()))
        .collect();
    if !untried.is_empty() {
        return known_failure().unwrap_or_else(|| {
            condition(
                DELIVERING,
                None,
                "NotYetTried",
                format!(
                    "mail waits on replicas that have not tried the relayhost since they started: {}; Postfix retries deferred mail on its own schedule",
                    untried.join(", ")
                ),
                gen,
                now,
            )
        });
    }
    let waiting: u64 = queue.pods.iter().filter_map(|p| p.deferred).sum();
    let (reason, message) = if waiting > 0 {
        (
            "Retrying",
            format!("{waiting} message(s) wait for a retry; the last attempt of each replica reached the relayhost"),
        )
    } else {
        (
            "NothingWaiting",
            "no mail waits for the relayhost".to_string(),
        )
    };
    condition(DELIVERING, Some(true), reason, message, gen, now)
}

/// Why mail does not leave, when a replica with mail waiting failed its last attempt: the
/// reason of the first such replica and a message naming each, in Postfix's words.
fn delivery_failure(relay: &SmtpRelay, queue: &QueueStatus) -> Option<(&'static str, String)> {
    let failing: Vec<(&str, &PodDeliveryProblem, &PodQueueStatus)> = queue
        .pods
        .iter()
        .filter(|p| p.deferred.is_some_and(|d| d > 0))
        .filter_map(|p| Some((p.pod.as_str(), p.delivery_problem.as_ref()?, p)))
        .collect();
    let (_, first, _) = failing.first()?;
    let reason = match first.reason.as_str() {
        "connect" => "RelayhostUnreachable",
        "tls" => "RelayhostTLSFailed",
        "login" => "RelayhostLoginRefused",
        "refused" => "RelayhostRefused",
        _ => "DeliveryDeferred",
    };
    let each: Vec<String> = failing
        .iter()
        .map(|(pod, problem, p)| {
            let why = if problem.detail.is_empty() {
                format!("{} (its log has Postfix's line)", problem.reason)
            } else {
                problem.detail.clone()
            };
            let since = p
                .oldest_message_time
                .as_ref()
                .map(|t| format!(", the oldest since {}", t.0))
                .unwrap_or_default();
            format!(
                "{pod}: {why} ({} waiting{since})",
                p.deferred.unwrap_or_default()
            )
        })
        .collect();
    let (lifetime, set_by) = relay.spec.queue_lifetime();
    Some((
        reason,
        format!(
            "mail does not reach the relayhost {}: {}; it stays queued and is retried, and returns to its sender once older than the queue lifetime ({lifetime}, {set_by})",
            relay.spec.relayhost.host,
            each.join("; "),
        ),
    ))
}

/// Whether queued mail outlives what is deleted. Replicas scaled away drain before their
/// volumes go ([`crate::steps::drain`]), and so do all of them when the SmtpRelay is deleted with
/// `whenDeleted: Delete` ([`crate::steps::deletion`]), unless its drain time is 0.
fn queued_mail_condition(relay: &SmtpRelay, gen: Option<i64>, now: &Time) -> Condition {
    use crate::floor::crd::RetentionPolicy::Delete;
    let r = &relay.spec.storage.retention;
    if r.when_deleted == Delete && r.drain_before_delete_seconds == 0 {
        condition(
            QUEUED_MAIL_KEPT,
            Some(false),
            "VolumesDeletedUndrained",
            "spec.storage.retention.whenDeleted is Delete and drainBeforeDeleteSeconds is 0: mail still queued when the SmtpRelay is deleted is destroyed with its volumes; set a drain time, or use Retain to keep it".into(),
            gen,
            now,
        )
    } else {
        condition(
            QUEUED_MAIL_KEPT,
            Some(true),
            if r.when_deleted == Delete {
                "DrainedBeforeDeletion"
            } else {
                "VolumesRetained"
            },
            if r.when_deleted == Delete {
                format!(
                    "replicas deliver their queues before they are scaled away, and before the SmtpRelay and its volumes are deleted (for up to {} s)",
                    r.drain_before_delete_seconds
                )
            } else {
                "replicas deliver their queues before they are scaled away, and queue volumes are kept when the SmtpRelay is deleted".into()
            },
            gen,
            now,
        )
    }
}

/// Draining: replicas being scaled away and what they hold; the last drain's outcome is kept
/// until the next one.
fn draining_condition(
    old: &SmtpRelayStatus,
    drain: &Drain,
    gen: Option<i64>,
    now: &Time,
) -> Condition {
    match drain.condition() {
        Some((draining, reason, message)) => {
            condition(DRAINING, Some(draining), reason, message, gen, now)
        }
        None => match old.conditions.iter().find(|c| c.type_ == DRAINING) {
            Some(last) if last.status == "False" => Condition {
                observed_generation: gen,
                ..last.clone()
            },
            _ => condition(
                DRAINING,
                Some(false),
                "NotDraining",
                "no replica is being scaled away".into(),
                gen,
                now,
            ),
        },
    }
}

/// ConfigValid: whether the spec was accepted.
fn config_valid_condition(outcome: &Outcome, gen: Option<i64>, now: &Time) -> Condition {
    match outcome {
        Outcome::InvalidSpec { message } => condition(
            CONFIG_VALID,
            Some(false),
            "InvalidSpec",
            message.clone(),
            gen,
            now,
        ),
        _ => condition(
            CONFIG_VALID,
            Some(true),
            "Valid",
            "the spec is valid".into(),
            gen,
            now,
        ),
    }
}

/// SecretsResolved: whether every reference was read and valid (not checked for an invalid
/// spec).
fn secrets_condition(outcome: &Outcome, gen: Option<i64>, now: &Time) -> Condition {
    match outcome {
        Outcome::Applied { .. } | Outcome::NameConflict { .. } | Outcome::ApplyRefused { .. } => {
            condition(
                SECRETS_RESOLVED,
                Some(true),
                "Resolved",
                "every referenced Secret and ConfigMap key is present and valid".into(),
                gen,
                now,
            )
        }
        Outcome::Unresolved { reason, message } => condition(
            SECRETS_RESOLVED,
            Some(false),
            reason,
            message.clone(),
            gen,
            now,
        ),
        Outcome::InvalidSpec { .. } => condition(
            SECRETS_RESOLVED,
            None,
            "NotChecked",
            "references are not read while the spec is invalid".into(),
            gen,
            now,
        ),
    }
}

/// Progressing: whether a rollout is under way.
fn progressing_condition(
    rollout: &Rollout,
    desired: i32,
    gen: Option<i64>,
    now: &Time,
) -> Condition {
    if !rollout.exists {
        condition(
            PROGRESSING,
            Some(false),
            "NotCreated",
            "the StatefulSet does not exist yet".into(),
            gen,
            now,
        )
    } else if rollout.up_to_date {
        condition(
            PROGRESSING,
            Some(false),
            "RolloutComplete",
            format!(
                "{} of {desired} pods run the current configuration",
                rollout.replicas
            ),
            gen,
            now,
        )
    } else {
        condition(
            PROGRESSING,
            Some(true),
            "RollingUpdate",
            format!("rolling out the current configuration to {desired} pods"),
            gen,
            now,
        )
    }
}

/// ConfigProven: where the canary of the configuration stands ([`Canary`]).
fn config_proven_condition(
    outcome: &Outcome,
    rollout: &Rollout,
    old: &SmtpRelayStatus,
    gen: Option<i64>,
    now: &Time,
) -> Option<Condition> {
    let c = match &rollout.canary {
        // A rejected spec changes nothing: the condition keeps describing what runs.
        _ if outcome.rejection().is_some() => return old_condition(old, CONFIG_PROVEN),
        Canary::Settled => {
            let hash = match outcome {
                Outcome::Applied { config_hash } if rollout.exists => Some(config_hash.as_str()),
                _ => old.proven_config_hash.as_deref(),
            }?;
            condition(
                CONFIG_PROVEN,
                Some(true),
                "SelfCheckPassed",
                format!("every pod runs configuration {} and Postfix passed its self-check", revision::short(hash)),
                gen,
                now,
            )
        }
        Canary::Proving { pod, revision } => condition(
            CONFIG_PROVEN,
            None,
            "Proving",
            if pod.is_empty() {
                format!("configuration {} waits for its first pod", revision::short(revision))
            } else {
                format!(
                    "configuration {} goes to {pod} first; the other pods follow once its Postfix passed the self-check",
                    revision::short(revision)
                )
            },
            gen,
            now,
        ),
        Canary::Proven { pod, revision } => condition(
            CONFIG_PROVEN,
            Some(true),
            "SelfCheckPassed",
            format!(
                "{pod} runs configuration {} and its Postfix passed the self-check; the other pods follow one at a time",
                revision::short(revision)
            ),
            gen,
            now,
        ),
        Canary::Refused(r) => condition(
            CONFIG_PROVEN,
            Some(false),
            CONFIG_REFUSED,
            refusal_message(r),
            gen,
            now,
        ),
    };
    Some(c)
}

/// Reason of a configuration the canary's Postfix refused (ConfigProven, Ready, Stalled).
pub const CONFIG_REFUSED: &str = "ConfigRefused";

/// What a refusal says: which pod refused what, in Postfix's words, what runs instead, and
/// the fix.
fn refusal_message(r: &Refusal) -> String {
    let fields = if r.suspects.is_empty() {
        "the spec".to_string()
    } else {
        r.suspects.join(", ")
    };
    let running = r
        .running
        .as_deref()
        .map(|h| format!("it keeps serving with configuration {}", revision::short(h)))
        .unwrap_or_else(|| "it keeps serving with its last good configuration".into());
    if r.canary {
        format!(
            "{} refused configuration {} in Postfix's self-check: {}; {running} and no other pod gets the refused one; fix or revert {fields}",
            r.pod,
            revision::short(&r.revision),
            r.error
        )
    } else {
        format!(
            "{} refused configuration {} in Postfix's self-check although the canary passed it: {}; {running} while the other pods run the new one; look at what differs for that pod (its node, its volume), or fix or revert {fields}",
            r.pod,
            revision::short(&r.revision),
            r.error
        )
    }
}

/// The condition `type_` as it was.
fn old_condition(old: &SmtpRelayStatus, type_: &str) -> Option<Condition> {
    old.conditions.iter().find(|c| c.type_ == type_).cloned()
}

/// Ready: the input's rejection first, then what keeps pods from running, then the rollout.
fn ready_condition_of(
    outcome: &Outcome,
    rollout: &Rollout,
    desired: i32,
    ep: &str,
    gen: Option<i64>,
    now: &Time,
) -> Condition {
    if let Some((reason, message)) = outcome.rejection() {
        let keeps = if rollout.exists {
            " The last applied configuration keeps running."
        } else {
            ""
        };
        condition(
            READY,
            Some(false),
            reason,
            format!("{message}.{keeps}"),
            gen,
            now,
        )
    } else if let Canary::Refused(r) = &rollout.canary {
        condition(
            READY,
            Some(false),
            CONFIG_REFUSED,
            format!(
                "{}; {} of {desired} pods ready",
                refusal_message(r),
                rollout.ready_replicas
            ),
            gen,
            now,
        )
    } else if let Some(p) = rollout
        .problem
        .as_ref()
        .filter(|_| !rollout.complete(desired))
    {
        condition(
            READY,
            Some(false),
            &p.reason,
            format!(
                "{}; {} of {desired} pods ready",
                p.message, rollout.ready_replicas
            ),
            gen,
            now,
        )
    } else if !rollout.up_to_date {
        condition(
            READY,
            Some(false),
            "RolloutInProgress",
            format!(
                "{} of {desired} pods ready; rollout in progress",
                rollout.ready_replicas
            ),
            gen,
            now,
        )
    } else if rollout.ready_replicas < desired {
        condition(
            READY,
            Some(false),
            "PodsNotReady",
            format!(
                "{} of {desired} pods pass the SMTP probe",
                rollout.ready_replicas
            ),
            gen,
            now,
        )
    } else {
        condition(
            READY,
            Some(true),
            "RelayReady",
            format!("{desired} of {desired} pods ready at {ep}"),
            gen,
            now,
        )
    }
}

/// kstatus: Stalled when a human must act, Reconciling while things still move by themselves.
fn kstatus_conditions(
    outcome: &Outcome,
    rollout: &Rollout,
    desired: i32,
    ready: &Condition,
    gen: Option<i64>,
    now: &Time,
) -> (Condition, Condition) {
    let stalled_by = outcome
        .rejection()
        .map(|(r, m)| (r.to_string(), m.to_string()))
        .or_else(|| {
            matches!(rollout.canary, Canary::Refused(_))
                .then(|| (ready.reason.clone(), ready.message.clone()))
        })
        .or_else(|| {
            rollout
                .problem
                .as_ref()
                .filter(|p| p.stalled && !rollout.complete(desired))
                .map(|_| (ready.reason.clone(), ready.message.clone()))
        });
    match stalled_by {
        Some((reason, message)) => (
            condition(STALLED, Some(true), &reason, message, gen, now),
            condition(
                RECONCILING,
                Some(false),
                "Stalled",
                "waiting for a change: see Stalled".into(),
                gen,
                now,
            ),
        ),
        None => (
            condition(
                STALLED,
                Some(false),
                "NotStalled",
                "nothing is in the way".into(),
                gen,
                now,
            ),
            if let Some((true, reason, message)) = rollout.drain.condition() {
                condition(RECONCILING, Some(true), reason, message, gen, now)
            } else if rollout.complete(desired) {
                condition(
                    RECONCILING,
                    Some(false),
                    "Reconciled",
                    "every pod runs the current configuration and is ready".into(),
                    gen,
                    now,
                )
            } else {
                condition(
                    RECONCILING,
                    Some(true),
                    &ready.reason,
                    ready.message.clone(),
                    gen,
                    now,
                )
            },
        ),
    }
}

/// What the operator's own options put in force for every relay, beyond its spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OperatorWide {
    /// Relays get their NetworkPolicy (`--relay-network-policies`).
    pub network_policies: bool,
    /// Relays that do not set `spec.hostUsers` run in user namespaces
    /// (`--relay-user-namespaces`).
    pub user_namespaces: bool,
}

impl Default for OperatorWide {
    fn default() -> Self {
        OperatorWide {
            network_policies: true,
            user_namespaces: true,
        }
    }
}

/// The status after a reconcile under the operator's default options (see [`compute_with`]).
pub fn compute(
    relay: &SmtpRelay,
    outcome: &Outcome,
    rollout: Rollout,
    now: Time,
) -> SmtpRelayStatus {
    compute_with(relay, outcome, rollout, now, OperatorWide::default())
}

/// The status after a reconcile. `lastTransitionTime` is kept when a condition's status did not
/// change; `configHash` keeps describing what runs when the new spec was rejected.
pub fn compute_with(
    relay: &SmtpRelay,
    outcome: &Outcome,
    rollout: Rollout,
    now: Time,
    wide: OperatorWide,
) -> SmtpRelayStatus {
    let old = relay.status.clone().unwrap_or_default();
    let gen = relay.metadata.generation;
    let desired = relay.spec.replicas;
    let ep = endpoint(relay);

    let config_valid = config_valid_condition(outcome, gen, &now);
    let secrets = secrets_condition(outcome, gen, &now);
    let progressing = progressing_condition(&rollout, desired, gen, &now);
    let ready = ready_condition_of(outcome, &rollout, desired, &ep, gen, &now);
    let password = condition_in_force(
        relayhost_password_condition(relay, gen, &now),
        outcome,
        &old,
    );
    let verified = condition_in_force(
        relayhost_verified_condition(relay, gen, &now),
        outcome,
        &old,
    );
    let client_address = client_address_condition(relay, wide, gen, &now);
    let inbound_tls = condition_in_force(inbound_tls_condition(relay, gen, &now), outcome, &old);
    let closed = condition_in_force(
        closed_to_strangers_condition(relay, gen, &now),
        outcome,
        &old,
    );
    let queued_mail = queued_mail_condition(relay, gen, &now);
    let user_namespaced = user_namespace_condition(relay, &rollout, wide, gen, &now);
    let draining = draining_condition(&old, &rollout.drain, gen, &now);
    let (stalled, reconciling) = kstatus_conditions(outcome, &rollout, desired, &ready, gen, &now);
    let login = relayhost_login_condition(relay, gen, &now);
    let delivering = delivering_condition(relay, gen, &now);
    let proven = config_proven_condition(outcome, &rollout, &old, gen, &now);

    let conditions = [
        Some(ready),
        Some(config_valid),
        Some(secrets),
        Some(progressing),
        proven,
        Some(password),
        Some(verified),
        login,
        Some(delivering),
        Some(client_address),
        Some(closed),
        Some(inbound_tls),
        Some(user_namespaced),
        Some(queued_mail),
        Some(reconciling),
        Some(stalled),
        Some(draining),
    ]
    .into_iter()
    .flatten()
    .map(|c| {
        let before = old.conditions.iter().find(|p| p.type_ == c.type_);
        keep_transition_time(c, before)
    })
    .collect();

    SmtpRelayStatus {
        conditions,
        observed_generation: gen,
        replicas: rollout.replicas,
        ready_replicas: rollout.ready_replicas,
        selector: Some(crate::floor::contract::pod_selector(relay)),
        endpoint: Some(ep),
        // Like the hash: what was applied, so a rejected spec does not change it.
        ca_config_map: match outcome {
            Outcome::Applied { .. } => relay
                .spec
                .issued_certificate()
                .then(|| crate::floor::contract::Names::ca_config_map(&relay.name_any())),
            _ => old.ca_config_map,
        },
        config_hash: match outcome {
            Outcome::Applied { config_hash } => Some(config_hash.clone()),
            _ => old.config_hash,
        },
        proven_config_hash: match (&rollout.canary, outcome) {
            (Canary::Proven { revision, .. }, _) => Some(revision.clone()),
            // A relay whose pods all started on it (a new one, or an image that predates the
            // self-check) has it proven by the pods running it.
            (Canary::Settled, Outcome::Applied { config_hash }) if rollout.complete(desired) => {
                Some(config_hash.clone())
            }
            _ => old.proven_config_hash.clone(),
        },
        // Like the hash: what runs, so a rejected spec does not change it.
        mode: match outcome {
            Outcome::Applied { .. } => Some(relay.spec.mode_in_force()),
            _ => old.mode,
        },
        sandbox: match outcome {
            Outcome::Applied { .. } => relay
                .spec
                .sandbox
                .as_ref()
                .map(crate::floor::crd::SandboxSpec::summary),
            _ => old.sandbox,
        },
        // Written by `queue::observe` alone.
        queue: old.queue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::relay;
    use crate::floor::crd::login_health;
    use crate::floor::running::pod_problem;
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::apps::v1::StatefulSetStatus;
    use k8s_openapi::api::core::v1::Pod;

    fn t(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).expect("time"))
    }

    fn applied() -> Outcome {
        Outcome::Applied {
            config_hash: "h1".into(),
        }
    }

    /// Issue 27: the sandbox in force shows in status (the `Sandbox` column); a refused spec
    /// keeps the one that runs.
    #[test]
    fn status_says_where_a_sandboxed_relay_sends_its_mail() {
        use crate::floor::crd::{SandboxMode, SandboxSpec};
        let mut r = relay("r1");
        assert_eq!(compute(&r, &applied(), DONE, t(1)).sandbox, None);
        r.spec.sandbox = Some(SandboxSpec {
            mode: SandboxMode::CatchAll,
            mailbox: Some("qa@example.net".into()),
        });
        r.status = Some(compute(&r, &applied(), DONE, t(2)));
        let shown = |r: &SmtpRelay| r.status.as_ref().and_then(|s| s.sandbox.clone());
        assert_eq!(shown(&r).as_deref(), Some("CatchAll qa@example.net"));
        r.spec.sandbox = Some(SandboxSpec {
            mode: SandboxMode::Hold,
            mailbox: None,
        });
        let refused = Outcome::InvalidSpec {
            message: "spec.domain".into(),
        };
        r.status = Some(compute(&r, &refused, DONE, t(3)));
        assert_eq!(shown(&r).as_deref(), Some("CatchAll qa@example.net"));
        r.status = Some(compute(&r, &applied(), DONE, t(4)));
        assert_eq!(shown(&r).as_deref(), Some("Hold"));
    }

    fn cond<'a>(s: &'a SmtpRelayStatus, type_: &str) -> &'a Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == type_)
            .expect("condition")
    }

    const DONE: Rollout = Rollout {
        exists: true,
        replicas: 1,
        ready_replicas: 1,
        up_to_date: true,
        problem: None,
        drain: Drain::None,
        canary: Canary::Settled,
        pods_share_node_users: false,
    };

    /// Issue 30: the scale subresource's selector picks the relay's pods, as the StatefulSet's
    /// does.
    #[test]
    fn the_scale_subresource_selects_the_relays_pods() {
        let s = compute(&relay("r1"), &applied(), DONE, t(1));
        assert_eq!(
            s.selector.as_deref(),
            Some("app.kubernetes.io/instance=r1,app.kubernetes.io/name=smtp-relay")
        );
    }

    #[test]
    fn ready_when_rolled_out_and_ready() {
        let r = relay("r1");
        let s = compute(&r, &applied(), DONE, t(100));
        let ready = cond(&s, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "RelayReady")
        );
        assert_eq!(cond(&s, CONFIG_VALID).status, "True");
        assert_eq!(cond(&s, SECRETS_RESOLVED).status, "True");
        assert_eq!(cond(&s, PROGRESSING).status, "False");
        assert_eq!(s.endpoint.as_deref(), Some("r1.mail.svc:25"));
        assert_eq!(s.config_hash.as_deref(), Some("h1"));
        assert_eq!(
            s.ca_config_map, None,
            "no SASL users: no issued certificate"
        );
        let mut with_users = r.clone();
        with_users.spec.sasl_users_secret_ref =
            Some(crate::floor::crd::SecretRef { name: "u".into() });
        let s = compute(&with_users, &applied(), DONE, t(100));
        assert_eq!(s.ca_config_map.as_deref(), Some("r1-ca"));
        assert_eq!(s.observed_generation, Some(1));
        assert_eq!((s.replicas, s.ready_replicas), (1, 1));
        assert!(s
            .conditions
            .iter()
            .all(|c| c.observed_generation == Some(1)));
    }

    #[test]
    fn a_configuration_refused_by_the_canary_stalls_names_the_field_and_keeps_the_proven_one() {
        let mut r = relay("r1");
        r.status = Some(SmtpRelayStatus {
            proven_config_hash: Some("h0".into()),
            ..SmtpRelayStatus::default()
        });
        let refused = Rollout {
            up_to_date: false,
            canary: Canary::Refused(Refusal {
                pod: "r1-1".into(),
                revision: "h1".into(),
                running: Some("h0".into()),
                error: "RCPT TO answered 451 4.3.5 Server configuration error; warning: hash:/etc/postfix/missing is unavailable".into(),
                suspects: vec!["spec.postconf.smtpd_client_restrictions".into()],
                canary: true,
            }),
            ..DONE
        };
        let s = compute(&r, &applied(), refused, t(1));
        let proven = cond(&s, CONFIG_PROVEN);
        assert_eq!(
            (proven.status.as_str(), proven.reason.as_str()),
            ("False", CONFIG_REFUSED)
        );
        for text in [
            "r1-1",
            "spec.postconf.smtpd_client_restrictions",
            "is unavailable",
            "h0",
        ] {
            assert!(proven.message.contains(text), "{text}: {}", proven.message);
        }
        assert_eq!(cond(&s, READY).reason, CONFIG_REFUSED);
        assert_eq!(cond(&s, STALLED).status, "True");
        assert_eq!(
            s.proven_config_hash.as_deref(),
            Some("h0"),
            "nothing new is proven"
        );
        // One Warning, not one per reconcile, and not a second one for Stalled.
        let events = crate::steps::report::events::events_for(&r, &applied(), &s);
        let warnings: Vec<_> = events
            .iter()
            .filter(|e| e.type_ == kube::runtime::events::EventType::Warning)
            .map(|e| e.reason.as_str())
            .collect();
        assert_eq!(warnings, [CONFIG_REFUSED]);
        r.status = Some(s.clone());
        let again = compute(
            &r,
            &applied(),
            Rollout {
                up_to_date: false,
                ..DONE
            }
            .with_canary(s_canary()),
            t(2),
        );
        assert!(
            crate::steps::report::events::events_for(&r, &applied(), &again)
                .iter()
                .all(|e| e.type_ != kube::runtime::events::EventType::Warning)
        );
    }

    fn s_canary() -> Canary {
        Canary::Refused(Refusal {
            pod: "r1-1".into(),
            revision: "h1".into(),
            running: Some("h0".into()),
            error: "RCPT TO answered 451 4.3.5 Server configuration error; warning: hash:/etc/postfix/missing is unavailable".into(),
            suspects: vec!["spec.postconf.smtpd_client_restrictions".into()],
            canary: true,
        })
    }

    #[test]
    fn a_replica_refusing_what_the_canary_proved_is_named_and_not_blamed_on_the_rollout() {
        let r = relay("r1");
        let later = Rollout {
            canary: Canary::Refused(Refusal {
                pod: "r1-0".into(),
                revision: "h1".into(),
                running: Some("h0".into()),
                error: "RCPT TO answered 451 4.3.0; warning: cannot open /data/table".into(),
                suspects: vec![],
                canary: false,
            }),
            ..DONE
        };
        let s = compute(&r, &applied(), later, t(1));
        let proven = cond(&s, CONFIG_PROVEN);
        assert_eq!(
            (proven.status.as_str(), proven.reason.as_str()),
            ("False", CONFIG_REFUSED)
        );
        assert!(
            proven.message.starts_with("r1-0 refused configuration ")
                && proven.message.contains("although the canary passed it")
                && proven.message.contains("cannot open /data/table")
                && !proven.message.contains("no other pod gets"),
            "{}",
            proven.message
        );
        assert_eq!(cond(&s, READY).reason, CONFIG_REFUSED);
    }

    #[test]
    fn a_proven_configuration_is_remembered_and_the_rollout_goes_on() {
        let r = relay("r1");
        let proving = Rollout {
            up_to_date: false,
            ..DONE
        }
        .with_canary(Canary::Proving {
            pod: "r1-1".into(),
            revision: "h1".into(),
        });
        let s = compute(&r, &applied(), proving, t(1));
        assert_eq!(cond(&s, CONFIG_PROVEN).status, "Unknown");
        assert_eq!(cond(&s, STALLED).status, "False");
        assert_eq!(s.proven_config_hash, None);
        let proven = Rollout {
            up_to_date: false,
            ..DONE
        }
        .with_canary(Canary::Proven {
            pod: "r1-1".into(),
            revision: "h1".into(),
        });
        let s = compute(&r, &applied(), proven, t(1));
        assert_eq!(cond(&s, CONFIG_PROVEN).status, "True");
        assert_eq!(s.proven_config_hash.as_deref(), Some("h1"));
        assert_eq!(cond(&s, READY).reason, "RolloutInProgress");
        // A relay whose pods all started on its configuration has it proven by them.
        let s = compute(&r, &applied(), DONE, t(1));
        assert_eq!(s.proven_config_hash.as_deref(), Some("h1"));
        assert_eq!(cond(&s, CONFIG_PROVEN).status, "True");
    }

    #[test]
    fn not_ready_while_rolling_or_pods_unready() {
        let r = relay("r1");
        let rolling = Rollout {
            up_to_date: false,
            ..DONE
        };
        let s = compute(&r, &applied(), rolling, t(1));
        assert_eq!(cond(&s, READY).reason, "RolloutInProgress");
        assert_eq!(cond(&s, PROGRESSING).status, "True");
        let unready = Rollout {
            ready_replicas: 0,
            ..DONE
        };
        assert_eq!(
            cond(&compute(&r, &applied(), unready, t(1)), READY).reason,
            "PodsNotReady"
        );
        let none = compute(&r, &applied(), Rollout::default(), t(1));
        assert_eq!(cond(&none, PROGRESSING).reason, "NotCreated");
    }

    #[test]
    fn rejection_keeps_last_hash_and_explains() {
        let mut r = relay("r1");
        r.status = Some(compute(&r, &applied(), DONE, t(1)));
        let out = Outcome::Unresolved {
            reason: "SecretNotFound",
            message: "Secret mail/x (SASL users) does not exist".into(),
        };
        let s = compute(&r, &out, DONE, t(2));
        let ready = cond(&s, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "SecretNotFound")
        );
        assert!(ready.message.contains("mail/x") && ready.message.contains("keeps running"));
        assert_eq!(cond(&s, SECRETS_RESOLVED).status, "False");
        assert_eq!(s.config_hash.as_deref(), Some("h1"));

        let invalid = compute(
            &r,
            &Outcome::InvalidSpec {
                message: "spec.domain bad".into(),
            },
            DONE,
            t(2),
        );
        assert_eq!(cond(&invalid, CONFIG_VALID).reason, "InvalidSpec");
        assert_eq!(cond(&invalid, SECRETS_RESOLVED).status, "Unknown");
        assert_eq!(cond(&invalid, READY).reason, "InvalidSpec");
    }

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let mut r = relay("r1");
        r.status = Some(compute(&r, &applied(), DONE, t(1)));
        let same = compute(&r, &applied(), DONE, t(50));
        assert_eq!(
            same,
            r.status.clone().expect("status"),
            "identical input, identical status: no write"
        );
        let out = Outcome::InvalidSpec {
            message: "x".into(),
        };
        let changed = compute(&r, &out, DONE, t(60));
        assert_eq!(cond(&changed, READY).last_transition_time, t(60));
        assert_eq!(cond(&changed, SECRETS_RESOLVED).last_transition_time, t(60));
        assert_eq!(cond(&changed, PROGRESSING).last_transition_time, t(1));
    }

    fn pod(name: &str, container_status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "status": {"containerStatuses": [container_status]},
        }))
        .expect("pod")
    }

    fn crash_looping(name: &str) -> Pod {
        pod(
            name,
            serde_json::json!({
                "name": "relay", "image": "i", "imageID": "", "ready": false, "restartCount": 3,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                "lastState": {"terminated": {"exitCode": 2, "reason": "Error",
                    "message": "relay.yaml: networks: 10.0.0.1/24 has host bits set\n"}},
            }),
        )
    }

    #[test]
    fn a_crash_looping_pod_is_named_in_ready_and_stalls() {
        let r = relay("r1");
        let running = pod(
            "r1-0",
            serde_json::json!({"name": "relay", "image": "i", "imageID": "", "ready": true,
                "restartCount": 0, "state": {"running": {}}}),
        );
        let rollout = Rollout {
            ready_replicas: 0,
            ..DONE
        }
        .with_pods(&[running, crash_looping("r1-1")], &[]);
        let s = compute(&r, &applied(), rollout, t(1));
        let ready = cond(&s, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "CrashLoopBackOff")
        );
        assert_eq!(
            ready.message,
            "pod r1-1, container relay: CrashLoopBackOff (back-off 40s); last run ended: Error (exit code 2): relay.yaml: networks: 10.0.0.1/24 has host bits set; 0 of 1 pods ready"
        );
        let stalled = cond(&s, STALLED);
        assert_eq!(
            (stalled.status.as_str(), stalled.reason.as_str()),
            ("True", "CrashLoopBackOff")
        );
        assert_eq!(cond(&s, RECONCILING).status, "False");

        // Ready again: the problem of a pod that recovered since is not reported.
        let s = compute(
            &r,
            &applied(),
            DONE.with_pods(&[crash_looping("r1-0")], &[]),
            t(2),
        );
        assert_eq!(cond(&s, READY).status, "True");
        assert_eq!(cond(&s, STALLED).status, "False");
        assert_eq!(cond(&s, RECONCILING).reason, "Reconciled");
    }

    #[test]
    fn deleting_queue_volumes_undrained_is_flagged() {
        let mut r = relay("r1");
        let s = compute(&r, &applied(), DONE, t(1));
        assert_eq!(cond(&s, QUEUED_MAIL_KEPT).status, "True");
        // Replicas scaled away drain first, and so does a deleted relay: their volumes may go.
        r.spec.storage.retention.when_scaled = crate::floor::crd::RetentionPolicy::Delete;
        r.spec.storage.retention.when_deleted = crate::floor::crd::RetentionPolicy::Delete;
        let s = compute(&r, &applied(), DONE, t(1));
        let c = cond(&s, QUEUED_MAIL_KEPT);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "DrainedBeforeDeletion")
        );
        assert!(c.message.contains("up to 900 s"), "{}", c.message);
        r.spec.storage.retention.drain_before_delete_seconds = 0;
        let s = compute(&r, &applied(), DONE, t(1));
        let c = cond(&s, QUEUED_MAIL_KEPT);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "VolumesDeletedUndrained")
        );
        assert!(
            c.message
                .starts_with("spec.storage.retention.whenDeleted is Delete"),
            "{}",
            c.message
        );
    }

    #[test]
    fn a_drain_holds_reconciling_and_leaves_ready_alone_and_its_outcome_stays() {
        use crate::floor::running::Departing;
        let mut r = relay("r1");
        let draining = Rollout {
            drain: Drain::InProgress {
                want: 1,
                hold: 2,
                departing: vec![Departing {
                    pod: "r1-1".into(),
                    ready: false,
                    queue: None,
                }],
            },
            ..DONE
        };
        let s = compute(&r, &applied(), draining, t(1));
        let c = cond(&s, DRAINING);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "DrainWaiting")
        );
        assert!(c.message.contains("r1-1 (not running"), "{}", c.message);
        assert_eq!(cond(&s, RECONCILING).status, "True");
        assert_eq!(cond(&s, READY).status, "True", "the staying replica serves");
        r.status = Some(s);
        let done = Rollout {
            drain: Drain::Done {
                from: 2,
                to: 1,
                abandoned: None,
            },
            ..DONE
        };
        let s = compute(&r, &applied(), done, t(2));
        assert_eq!(cond(&s, DRAINING).reason, "Drained");
        assert_eq!(cond(&s, RECONCILING).status, "False");
        r.status = Some(s);
        // The next reconcile sees nothing draining: the last drain's outcome stays readable.
        let s = compute(&r, &applied(), DONE, t(3));
        assert_eq!(cond(&s, DRAINING).reason, "Drained");
    }

    #[test]
    fn a_proxy_header_trusted_for_networks_is_flagged() {
        let mut r = relay("r1");
        let s = compute(&r, &applied(), DONE, t(1));
        assert_eq!(cond(&s, CLIENT_ADDRESS_VERIFIED).status, "True");
        r.spec.service.proxy_protocol = true;
        let s = compute(&r, &applied(), DONE, t(1));
        let c = cond(&s, CLIENT_ADDRESS_VERIFIED);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "ProxyHeaderTrusted")
        );
        r.spec.service.proxy_protocol_source_ranges = vec!["10.0.0.0/24".into()];
        let s = compute(&r, &applied(), DONE, t(1));
        let c = cond(&s, CLIENT_ADDRESS_VERIFIED);
        assert!(
            c.message
                .contains("NetworkPolicy r1 admits that port only from")
                && c.message.contains("(10.0.0.0/24)"),
            "{}",
            c.message
        );
        assert_eq!(cond(&s, READY).status, "True", "a choice, not a failure");
        let off = OperatorWide {
            network_policies: false,
            ..OperatorWide::default()
        };
        let s = compute_with(&r, &applied(), DONE, t(1), off);
        let c = cond(&s, CLIENT_ADDRESS_VERIFIED);
        assert!(
            c.message.contains("the operator keeps no NetworkPolicies")
                && !c.message.contains("admits"),
            "never a protection that is not there: {}",
            c.message
        );
        r.spec.network_policy.enabled = false;
        let s = compute(&r, &applied(), DONE, t(1));
        let c = cond(&s, CLIENT_ADDRESS_VERIFIED);
        assert!(
            c.message.contains("spec.networkPolicy.enabled is false"),
            "{}",
            c.message
        );
    }

    /// Issue 26: a custom list whose safety rests on a table the relay cannot read, vouched for
    /// by `spec.trustRestrictionTables`, is flagged naming the entry; the modes and a plain list
    /// are not; a refused spec does not claim what does not run.
    #[test]
    fn a_relay_resting_on_a_table_is_flagged() {
        let closed = |s: &SmtpRelayStatus| {
            let c = cond(s, RELAY_CLOSED_TO_STRANGERS);
            (c.status.clone(), c.reason.clone(), c.message.clone())
        };
        let mut r = relay("r1");
        let s = compute(&r, &applied(), DONE, t(1));
        assert_eq!(
            closed(&s),
            (
                "True".into(),
                "SafetyNetFirst".into(),
                "the restrictions refuse every anonymous client outside networks sending to another domain".into()
            )
        );
        r.spec.mode = None;
        r.spec.custom_restrictions = Some(
            [
                "permit_mynetworks",
                "check_sender_access",
                "hash:/etc/postfix/senders",
                "reject_unauth_destination",
            ]
            .map(String::from)
            .to_vec(),
        );
        r.spec.trust_restriction_tables = true;
        r.status = Some(compute(&r, &applied(), DONE, t(2)));
        let (status, reason, message) = closed(r.status.as_ref().expect("status"));
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", "TrustsTables")
        );
        assert!(
            message.starts_with("the relay's safety rests on spec.customRestrictions[1] (check_sender_access hash:/etc/postfix/senders: can permit a client by the sender address")
                && message.contains("spec.trustRestrictionTables vouches for them"),
            "{message}"
        );
        assert!(WARNING_CONDITIONS.contains(&RELAY_CLOSED_TO_STRANGERS));
        // A refused spec (the table moved after the safety net, but the spec refused for
        // another reason) keeps saying what runs.
        r.spec.custom_restrictions = Some(
            ["permit_mynetworks", "reject_unauth_destination"]
                .map(String::from)
                .to_vec(),
        );
        let refused = Outcome::InvalidSpec {
            message: "spec.domain".into(),
        };
        let s = compute(&r, &refused, DONE, t(3));
        assert_eq!(closed(&s).1, "TrustsTables");
        let s = compute(&r, &applied(), DONE, t(3));
        assert_eq!(closed(&s).1, "SafetyNetFirst");
    }

    /// Issue 26: the STARTTLS where SASL users log in is flagged when a legacy floor or a
    /// postconf override lets in what a scanner fails; a relay without STARTTLS has nothing
    /// to flag, and a refused spec does not claim what does not run.
    #[test]
    fn legacy_or_overridden_inbound_tls_is_flagged() {
        use crate::floor::crd::{SecretRef, TlsMinVersionSpec};
        let verdict = |s: &SmtpRelayStatus| {
            let c = cond(s, INBOUND_TLS_MODERN);
            (c.status.clone(), c.reason.clone(), c.message.clone())
        };
        let mut r = relay("r1");
        r.spec.tls_min_version = Some(TlsMinVersionSpec::Tls1_0);
        let (status, reason, message) = verdict(&compute(&r, &applied(), DONE, t(1)));
        assert_eq!((status.as_str(), reason.as_str()), ("True", "NoInboundTLS"));
        assert!(
            message.contains("TLSv1.0 applies once it does"),
            "{message}"
        );

        r.spec.sasl_users_secret_ref = Some(SecretRef {
            name: "users".into(),
        });
        r.spec.tls_min_version = None;
        let (status, reason, message) = verdict(&compute(&r, &applied(), DONE, t(1)));
        assert_eq!((status.as_str(), reason.as_str()), ("True", "ModernTLS"));
        assert!(message.contains("TLS 1.2 or newer"), "{message}");
        r.spec.tls_min_version = Some(TlsMinVersionSpec::Tls1_3);
        let (_, reason, message) = verdict(&compute(&r, &applied(), DONE, t(1)));
        assert_eq!(reason, "ModernTLS");
        assert!(message.contains("TLS 1.3 or newer"), "{message}");

        for (min, versions) in [
            (TlsMinVersionSpec::Tls1_0, "TLS 1.0 and 1.1"),
            (TlsMinVersionSpec::Tls1_1, "TLS 1.1,"),
        ] {
            r.spec.tls_min_version = Some(min);
            let s = compute(&r, &applied(), DONE, t(1));
            let (status, reason, message) = verdict(&s);
            assert_eq!(
                (status.as_str(), reason.as_str()),
                ("False", "LegacyTLSAllowed")
            );
            assert!(
                message.starts_with("spec.tlsMinVersion is TLSv1.")
                    && message.contains(versions)
                    && message.contains("SASL users"),
                "{message}"
            );
            assert_eq!(cond(&s, READY).status, "True", "a choice, not a failure");
        }

        r.spec.tls_min_version = None;
        r.spec.tls_secret_ref = Some(SecretRef { name: "tls".into() });
        r.spec.sasl_users_secret_ref = None;
        r.spec
            .postconf
            .insert("smtpd_tls_protocols".into(), ">=TLSv1".into());
        r.spec
            .postconf
            .insert("message_size_limit".into(), "1000".into());
        let (status, reason, message) = verdict(&compute(&r, &applied(), DONE, t(1)));
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", "InboundTLSOverridden")
        );
        assert!(
            message.starts_with("spec.postconf sets smtpd_tls_protocols,")
                && message.contains("spec.tlsMinVersion"),
            "{message}"
        );

        // A refused spec does not change what the condition says runs.
        r.spec.postconf.clear();
        let before = compute(&r, &applied(), DONE, t(1));
        r.status = Some(before);
        r.spec.tls_min_version = Some(TlsMinVersionSpec::Tls1_0);
        let refused = Outcome::InvalidSpec {
            message: "bad".into(),
        };
        let s = compute(&r, &refused, DONE, t(2));
        assert_eq!(verdict(&s).1, "ModernTLS");
    }

    #[test]
    fn kstatus_conditions_follow_rollout_and_rejections() {
        let r = relay("r1");
        let rolling = Rollout {
            up_to_date: false,
            ..DONE
        };
        let s = compute(&r, &applied(), rolling, t(1));
        let rec = cond(&s, RECONCILING);
        assert_eq!(
            (rec.status.as_str(), rec.reason.as_str()),
            ("True", "RolloutInProgress")
        );
        assert_eq!(cond(&s, STALLED).status, "False");
        let out = Outcome::InvalidSpec {
            message: "spec.domain bad".into(),
        };
        let s = compute(&r, &out, DONE, t(1));
        let stalled = cond(&s, STALLED);
        assert_eq!(
            (stalled.status.as_str(), stalled.reason.as_str()),
            ("True", "InvalidSpec")
        );
        assert_eq!(cond(&s, RECONCILING).status, "False");
        // A pod that failed once and restarts is a problem, not (yet) stalled.
        let failed = pod(
            "r1-0",
            serde_json::json!({"name": "relay", "image": "i", "imageID": "", "ready": false,
                "restartCount": 1, "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}),
        );
        let p = pod_problem(std::slice::from_ref(&failed), &[]).expect("a problem");
        assert_eq!((p.reason.as_str(), p.stalled), ("OOMKilled", false));
        // The same pod being deleted is not reported.
        let mut deleting = failed;
        deleting.metadata.deletion_timestamp = Some(t(1));
        assert_eq!(pod_problem(&[deleting], &[]), None);
        assert_eq!(
            p.message,
            "pod r1-0, container relay: OOMKilled; last run ended: OOMKilled (exit code 137)"
        );
    }

    /// A pod the scheduler cannot place says so, in the scheduler's words (as it writes them
    /// for a relay whose nodeSelector matches no node), instead of "0 of 1 pods pass the
    /// SMTP probe".
    #[test]
    fn an_unschedulable_pod_is_named_with_the_schedulers_reason() {
        let mut pending: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "r1-0"},
            "status": {"phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
            }]}
        }))
        .unwrap();
        let p = pod_problem(std::slice::from_ref(&pending), &[]).expect("a problem");
        assert_eq!((p.reason.as_str(), p.stalled), ("Unschedulable", false));
        assert!(
            p.message.starts_with("pod r1-0: not scheduled: Unschedulable (0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."),
            "{}",
            p.message
        );
        let r = relay("r1");
        let rollout = Rollout {
            ready_replicas: 0,
            problem: Some(p),
            ..DONE
        };
        let s = compute(&r, &applied(), rollout, t(1));
        let ready = cond(&s, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "Unschedulable")
        );
        assert!(
            ready.message.ends_with("; 0 of 1 pods ready"),
            "{}",
            ready.message
        );
        // Once placed, nothing to say about scheduling.
        if let Some(c) = pending
            .status
            .as_mut()
            .and_then(|s| s.conditions.as_mut())
            .and_then(|c| c.first_mut())
        {
            c.status = "True".into();
        }
        assert_eq!(pod_problem(&[pending], &[]), None);
    }

    /// A pod scheduled long ago whose containers never started is read with its latest
    /// Warning Event, where alone the kubelet says why (here a spool volume whose directory is
    /// gone, as the real node writes it).
    #[test]
    fn a_pod_that_does_not_start_is_named_with_its_warning() {
        use crate::floor::running::{not_starting, PodWarning};
        let creating = |name: &str, scheduled: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "status": {"phase": "Pending", "conditions": [{
                    "type": "PodScheduled", "status": "True", "lastTransitionTime": scheduled}],
                    "containerStatuses": [{"name": "relay", "image": "i", "imageID": "",
                        "ready": false, "restartCount": 0, "started": false,
                        "state": {"waiting": {"reason": "ContainerCreating"}}}]}
            }))
            .unwrap()
        };
        let now = jiff::Timestamp::from_second(1_000_000).unwrap();
        let at = |ago: i64| {
            jiff::Timestamp::from_second(now.as_second() - ago)
                .unwrap()
                .to_string()
        };
        let pods = [creating("r1-1", &at(31)), creating("r1-0", &at(5))];
        // Only the one scheduled more than 30 s ago; a started or running one never.
        assert_eq!(not_starting(&pods, now.as_second()), ["r1-1"]);
        let mut started = creating("r1-2", &at(300));
        if let Some(s) = started.status.as_mut() {
            s.phase = Some("Running".into());
        }
        assert!(not_starting(&[started], now.as_second()).is_empty());
        let warning = PodWarning {
            pod: "r1-1".into(),
            reason: "FailedMount".into(),
            message: "MountVolume.SetUp failed for volume \"pvc-1\" : hostPath type check failed: /pv/pvc-1 is not a directory".into(),
        };
        let p = pod_problem(&pods, std::slice::from_ref(&warning)).expect("a problem");
        assert_eq!((p.reason.as_str(), p.stalled), ("FailedMount", false));
        assert_eq!(
            p.message,
            "pod r1-1 does not start: FailedMount (MountVolume.SetUp failed for volume \"pvc-1\" : hostPath type check failed: /pv/pvc-1 is not a directory)"
        );
        assert_eq!(pod_problem(&pods, &[]), None);
    }

    #[test]
    fn only_the_relays_own_termination_message_reaches_status() {
        // Killed by a signal, the container's message is the kubelet's copy of its log's tail,
        // where a client's HELO name and addresses are quoted: never shown.
        let killed = pod(
            "r1-0",
            serde_json::json!({"name": "relay", "image": "i", "imageID": "", "ready": false,
                "restartCount": 1, "state": {"terminated": {"exitCode": 137, "reason": "Error",
                "message": "postfix/smtpd[9]: NOQUEUE: reject: RCPT from x[10.0.0.9]: helo=<status=sent CLIENT-TEXT>"}}}),
        );
        let p = pod_problem(&[killed], &[]).expect("a problem");
        assert!(!p.message.contains("CLIENT-TEXT"), "{}", p.message);
        assert!(
            p.message.ends_with("last run ended: Error (exit code 137)"),
            "{}",
            p.message
        );
        // Ended by the relay itself, its message is its own: the start of it is kept.
        let long = format!(
            "relay.yaml: postconf.x: the cause{}",
            " and more".repeat(100)
        );
        let ended = pod(
            "r1-0",
            serde_json::json!({"name": "relay", "image": "i", "imageID": "", "ready": false,
                "restartCount": 1, "state": {"terminated": {"exitCode": 2, "reason": "Error",
                "message": long}}}),
        );
        let p = pod_problem(&[ended], &[]).expect("a problem");
        assert!(
            p.message
                .contains("(exit code 2): relay.yaml: postconf.x: the cause")
                && p.message.ends_with('…'),
            "{}",
            p.message
        );
    }

    #[test]
    fn rollout_from_stateful_set() {
        let mut sts = StatefulSet::default();
        sts.metadata.generation = Some(2);
        sts.status = Some(StatefulSetStatus {
            observed_generation: Some(2),
            replicas: 2,
            ready_replicas: Some(2),
            updated_replicas: Some(2),
            current_revision: Some("a".into()),
            update_revision: Some("a".into()),
            ..StatefulSetStatus::default()
        });
        let r = Rollout::from_stateful_set(Some(&sts), 2);
        assert_eq!(
            r,
            Rollout {
                exists: true,
                replicas: 2,
                ready_replicas: 2,
                up_to_date: true,
                problem: None,
                drain: Drain::None,
                canary: Canary::Settled,
                // A template without hostUsers: false.
                pods_share_node_users: true,
            }
        );
        assert!(!Rollout::from_stateful_set(Some(&sts), 3).up_to_date);
        if let Some(st) = sts.status.as_mut() {
            st.update_revision = Some("b".into());
        }
        assert!(!Rollout::from_stateful_set(Some(&sts), 2).up_to_date);
        sts.metadata.generation = Some(3);
        assert!(!Rollout::from_stateful_set(Some(&sts), 2).up_to_date);
        assert_eq!(Rollout::from_stateful_set(None, 1), Rollout::default());
    }

    /// Issue 26: `RelayhostPasswordProtected` is computed from the fields, and `postconf`
    /// cannot contradict them: a spec whose postconf would send the password in clear text is
    /// refused by validation and never applied, and the condition keeps describing the
    /// configuration that runs, not the refused spec.
    #[test]
    fn a_postconf_weakening_the_login_is_refused_and_the_condition_tells_what_runs() {
        use crate::floor::crd::{CredentialsSecretRef, RelayhostTlsSpec, TlsLevelSpec};
        let password = |s: &SmtpRelayStatus| {
            let c = cond(s, RELAYHOST_PASSWORD_PROTECTED);
            (c.status.clone(), c.reason.clone())
        };
        let mut r = relay("r1");
        r.spec.relayhost.credentials_secret_ref = Some(CredentialsSecretRef {
            name: "login".into(),
            username_key: "username".into(),
            password_key: "password".into(),
        });
        // What runs: an explicit level none, acknowledged (allowCleartextCredentials) and flagged.
        r.spec.relayhost.tls = Some(RelayhostTlsSpec {
            level: Some(TlsLevelSpec::None),
            ca_secret_key_ref: None,
            ca_config_map_key_ref: None,
            allow_cleartext_credentials: true,
        });
        r.status = Some(compute(&r, &applied(), DONE, t(1)));
        assert_eq!(
            password(r.status.as_ref().expect("status")),
            ("False".into(), "CleartextAllowed".into())
        );
        // The spec of the issue: the fields say encrypt (no level), postconf says otherwise.
        r.metadata.generation = Some(2);
        r.spec.relayhost.tls = None;
        r.spec
            .postconf
            .insert("smtp_tls_security_level".into(), "none".into());
        r.spec
            .postconf
            .insert("smtp_sasl_security_options".into(), "noanonymous".into());
        let message =
            crate::steps::judge::validate_spec(&r.spec).expect_err("refused, so never applied");
        assert!(
            message.contains("spec.postconf.smtp_sasl_security_options")
                && message.contains("protects the relayhost login")
                && message.contains("relayhost.tls.level"),
            "{message}"
        );
        let s = compute(&r, &Outcome::InvalidSpec { message }, DONE, t(2));
        assert_eq!(cond(&s, CONFIG_VALID).reason, "InvalidSpec");
        assert_eq!(s.config_hash.as_deref(), Some("h1"), "nothing new runs");
        // Not TLSRequired: what runs still allows clear text.
        assert_eq!(password(&s), ("False".into(), "CleartextAllowed".into()));
        // Without the postconf the spec is applied, and its fields are all there is to it.
        r.status = Some(s);
        r.spec.postconf.clear();
        assert_eq!(crate::steps::judge::validate_spec(&r.spec), Ok(()));
        let s = compute(&r, &applied(), DONE, t(3));
        assert_eq!(password(&s), ("True".into(), "TLSRequired".into()));
        assert!(
            cond(&s, RELAYHOST_PASSWORD_PROTECTED)
                .message
                .contains("level secure"),
            "{:?}",
            cond(&s, RELAYHOST_PASSWORD_PROTECTED)
        );
        // A child refused midway: the old or the new configuration may run, so the condition
        // says the password is protected only when both protect it.
        let midway = Outcome::ApplyRefused {
            message: "quota".into(),
        };
        r.status = Some(s);
        r.spec.relayhost.tls = Some(RelayhostTlsSpec {
            level: Some(TlsLevelSpec::May),
            ca_secret_key_ref: None,
            ca_config_map_key_ref: None,
            allow_cleartext_credentials: true,
        });
        let s = compute(&r, &midway, DONE, t(4));
        assert_eq!(password(&s), ("False".into(), "CleartextAllowed".into()));
        r.status = Some(s);
        r.spec.relayhost.tls = None;
        let s = compute(&r, &midway, DONE, t(5));
        assert_eq!(password(&s), ("False".into(), "CleartextAllowed".into()));
    }

    #[test]
    fn relayhost_login_says_why_mail_waits_from_what_the_pods_said() {
        use crate::floor::crd::{CredentialsSecretRef, PodQueueStatus, QueueStatus, TokenStatus};
        let mut r = relay("r1");
        let s = compute(&r, &applied(), DONE, t(100));
        assert!(
            s.conditions.iter().all(|c| c.type_ != RELAYHOST_LOGIN),
            "no login, no condition"
        );
        r.spec.relayhost.credentials_secret_ref = Some(CredentialsSecretRef {
            name: "creds".into(),
            username_key: "username".into(),
            password_key: "password".into(),
        });
        let login = |r: &SmtpRelay| {
            let c = cond(&compute(r, &applied(), DONE, t(100)), RELAYHOST_LOGIN).clone();
            (c.status, c.reason, c.message)
        };
        assert_eq!(login(&r).1, "NoLoginYet");
        let pod = |name: &str, login: &str, failures: u64| PodQueueStatus {
            pod: name.into(),
            relayhost_login: Some(login.into()),
            relayhost_token: Some(TokenStatus {
                expires_time: None,
                failures_in_a_row: failures,
                last_error: (failures > 0).then(|| "invalid_grant".into()),
            }),
            ..PodQueueStatus::default()
        };
        let with_queue = |login: &str, pods: Vec<PodQueueStatus>| {
            let mut r = r.clone();
            let worst = pods
                .iter()
                .filter_map(|p| p.relayhost_token.clone())
                .max_by_key(|t| t.failures_in_a_row);
            r.status = Some(SmtpRelayStatus {
                queue: Some(QueueStatus {
                    relayhost_login: login.into(),
                    relayhost_token: worst,
                    pods,
                    ..QueueStatus::default()
                }),
                ..SmtpRelayStatus::default()
            });
            r
        };
        let ok = with_queue("Accepted", vec![pod("r1-0", "Accepted", 0)]);
        assert_eq!(login(&ok).0, "True");
        assert_eq!(login(&ok).1, "LoginAccepted");
        let refused = with_queue(
            "Refused",
            vec![pod("r1-0", "Accepted", 0), pod("r1-1", "Refused", 0)],
        );
        let (status, reason, message) = login(&refused);
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", "LoginRefused")
        );
        assert!(
            message.contains("r1-1") && !message.contains("r1-0"),
            "{message}"
        );
        let failing = with_queue(
            "Accepted",
            vec![pod("r1-0", "Accepted", 3), pod("r1-1", "Accepted", 0)],
        );
        let (status, reason, message) = login(&failing);
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", "TokenRefreshFailing")
        );
        assert!(
            message.contains("r1-0: the OAuth2 token endpoint answers invalid_grant")
                && message.contains("no access token"),
            "{message}"
        );
        // The fingerprint follows the health, not the counts.
        let hash = |r: &SmtpRelay| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            login_health(r).hash(&mut h);
            h.finish()
        };
        let more_failures = with_queue(
            "Accepted",
            vec![pod("r1-0", "Accepted", 9), pod("r1-1", "Accepted", 0)],
        );
        assert_eq!(hash(&failing), hash(&more_failures));
        assert_ne!(hash(&failing), hash(&ok));
    }

    /// A replica's reading in `status.queue`: `deferred` messages waiting, and the problem of
    /// its last attempt.
    fn queue_pod(name: &str, deferred: u64, problem: Option<(&str, &str)>) -> PodQueueStatus {
        PodQueueStatus {
            pod: name.into(),
            messages: Some(deferred),
            deferred: Some(deferred),
            oldest_message_time: (deferred > 0).then(|| t(50)),
            delivery_problem: problem.map(|(reason, detail)| PodDeliveryProblem {
                reason: reason.into(),
                detail: detail.into(),
            }),
            ..PodQueueStatus::default()
        }
    }

    /// Relay `r1` with `pods` read into its `status.queue`.
    fn with_queue_of(pods: Vec<PodQueueStatus>) -> SmtpRelay {
        let mut r = relay("r1");
        r.status = Some(SmtpRelayStatus {
            queue: Some(QueueStatus {
                pods,
                ..QueueStatus::default()
            }),
            ..SmtpRelayStatus::default()
        });
        r
    }

    /// The Delivering condition computed for `r` (status, reason, message); Ready stays True.
    fn delivering_of(r: &SmtpRelay) -> (String, String, String) {
        let s = compute(r, &applied(), DONE, t(100));
        assert_eq!(
            cond(&s, READY).status,
            "True",
            "Ready means it accepts mail"
        );
        let c = cond(&s, DELIVERING).clone();
        (c.status, c.reason, c.message)
    }

    /// Issue 32: UserNamespaced is True only when the running template asks for a user
    /// namespace and every running replica said its root is not the node's root; False, naming
    /// why, when the pods share the node's users or a runtime ignored hostUsers: false.
    #[test]
    fn user_namespaced_says_what_the_pods_report_and_never_more() {
        use crate::floor::crd::isolation_health;
        use std::hash::{Hash, Hasher};
        let uid = |name: &str, uid: Option<u32>| PodQueueStatus {
            root_node_uid: uid,
            ..queue_pod(name, 0, None)
        };
        let of = |r: &SmtpRelay, rollout: Rollout, wide: OperatorWide| {
            let s = compute_with(r, &applied(), rollout, t(100), wide);
            let c = cond(&s, USER_NAMESPACED).clone();
            (c.status, c.reason, c.message)
        };
        let isolated = with_queue_of(vec![
            uid("r1-0", Some(2_465_529_856)),
            uid("r1-1", Some(65_536)),
        ]);
        let (status, reason, message) = of(&isolated, DONE, OperatorWide::default());
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("True", "UserNamespaced")
        );
        assert!(
            message.contains("each of the 2 running replicas"),
            "{message}"
        );

        // A runtime that ignores hostUsers: false, on one replica.
        let ignored = with_queue_of(vec![uid("r1-0", Some(0)), uid("r1-1", Some(65_536))]);
        let (status, reason, message) = of(&ignored, DONE, OperatorWide::default());
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", "RuntimeIgnoredHostUsers")
        );
        assert!(
            message.starts_with("root in r1-0 is the node's root"),
            "{message}"
        );

        // The template's word alone is not enough: no report, or a replica that did not say.
        let silent = with_queue_of(vec![uid("r1-0", Some(65_536)), uid("r1-1", None)]);
        let (status, _, message) = of(&silent, DONE, OperatorWide::default());
        assert_eq!(status, "Unknown");
        assert!(message.contains("r1-1 did not say"), "{message}");
        assert_eq!(of(&relay("r1"), DONE, OperatorWide::default()).0, "Unknown");

        // Pods sharing the node's users, whatever they report, and why.
        let shared = Rollout {
            pods_share_node_users: true,
            ..DONE
        };
        let (status, reason, message) = of(&isolated, shared.clone(), OperatorWide::default());
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", "SharesNodeUsers")
        );
        assert!(
            message.contains("before user namespaces were the operator's default"),
            "{message}"
        );
        let off = OperatorWide {
            user_namespaces: false,
            ..OperatorWide::default()
        };
        assert!(of(&isolated, shared.clone(), off)
            .2
            .contains("--relay-user-namespaces=false"));
        let mut asked = isolated.clone();
        asked.spec.host_users = Some(true);
        assert!(of(&asked, shared, off).2.contains("spec.hostUsers is true"));

        // A reconcile follows whether a replica's root is the node's, not its UID.
        let h = |r: &SmtpRelay| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            isolation_health(r).hash(&mut h);
            h.finish()
        };
        let moved = with_queue_of(vec![uid("r1-0", Some(131_072)), uid("r1-1", Some(65_536))]);
        assert_eq!(h(&isolated), h(&moved));
        assert_ne!(h(&isolated), h(&ignored));
        assert_ne!(h(&isolated), h(&silent));
    }

    /// Issue 39: Delivering says when mail does not leave, why in Postfix's words and on which
    /// replica, and follows delivery, not the numbers; Ready is not touched.
    #[test]
    fn delivering_says_when_mail_does_not_leave_and_why() {
        use crate::floor::crd::delivery_health;
        let (pod, with, delivering) = (queue_pod, with_queue_of, delivering_of);
        let unread = delivering(&relay("r1"));
        assert_eq!(
            (unread.0.as_str(), unread.1.as_str()),
            ("Unknown", "NotObserved")
        );
        let refused = "connect to mail.example.net[10.1.0.1]:25: Connection refused";
        let down = with(vec![
            pod("r1-0", 3, Some(("connect", refused))),
            pod("r1-1", 0, None),
        ]);
        let (status, reason, message) = delivering(&down);
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", "RelayhostUnreachable")
        );
        assert!(
            message.contains(&format!("r1-0: {refused} (3 waiting, the oldest since"))
                && !message.contains("r1-1")
                && message.contains("queue lifetime"),
            "{message}"
        );
        let (_, reason, _) = delivering(&with(vec![pod(
            "r1-0",
            1,
            Some(("login", "SASL authentication failed; server x")),
        )]));
        assert_eq!(reason, "RelayhostLoginRefused");
        let (_, reason, message) = delivering(&with(vec![pod("r1-0", 1, Some(("other", "")))]));
        assert_eq!(reason, "DeliveryDeferred");
        assert!(message.contains("its log has Postfix's line"), "{message}");
        // A problem with nothing waiting (what failed was returned), or mail waiting for its
        // retry while the last attempt got through: mail leaves.
        let (status, reason, _) = delivering(&with(vec![pod("r1-0", 0, Some(("refused", "x")))]));
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("True", "NothingWaiting")
        );
        let delivered = |mut p: PodQueueStatus| {
            p.last_delivery_time = Some(t(60));
            p
        };
        let (status, reason, _) = delivering(&with(vec![delivered(pod("r1-0", 2, None))]));
        assert_eq!((status.as_str(), reason.as_str()), ("True", "Retrying"));

        // The fingerprint follows delivery, not the numbers.
        let hash = |r: &SmtpRelay| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            delivery_health(r).hash(&mut h);
            h.finish()
        };
        let more = with(vec![
            pod("r1-0", 7, Some(("connect", refused))),
            pod("r1-1", 0, None),
        ]);
        assert_eq!(hash(&down), hash(&more));
        let back = with(vec![pod("r1-0", 0, None), pod("r1-1", 0, None)]);
        assert_ne!(hash(&down), hash(&back));
    }

    /// A replica that restarted with mail waiting has tried nothing yet: it does not say that
    /// mail leaves. A failure already known stands until a delivery or another failure (also
    /// while no pod runs), and its end is told whatever became of the spec's last change.
    #[test]
    fn a_restart_does_not_make_mail_leave() {
        use crate::floor::crd::delivery_health;
        let (pod, with, delivering) = (queue_pod, with_queue_of, delivering_of);
        let delivered = |mut p: PodQueueStatus| {
            p.last_delivery_time = Some(t(60));
            p
        };
        let refused = "connect to mail.example.net[10.1.0.1]:25: Connection refused";
        let down = with(vec![
            pod("r1-0", 3, Some(("connect", refused))),
            pod("r1-1", 0, None),
        ]);
        let restarted = with(vec![pod("r1-0", 3, None), pod("r1-1", 0, None)]);
        let (status, reason, message) = delivering(&restarted);
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("Unknown", "NotYetTried")
        );
        assert!(message.contains("r1-0 (3 waiting)"), "{message}");
        let known = compute(&down, &applied(), DONE, t(100));
        let after = |mut r: SmtpRelay| {
            let s = r.status.as_mut().expect("a status");
            s.conditions = known.conditions.clone();
            r
        };
        assert_eq!(
            delivering(&after(restarted.clone())),
            delivering(&down),
            "the known failure stands"
        );
        let mut no_pods = relay("r1");
        no_pods.status = Some(SmtpRelayStatus {
            conditions: known.conditions.clone(),
            ..SmtpRelayStatus::default()
        });
        assert_eq!(delivering(&no_pods), delivering(&down));
        let through = after(with(vec![
            delivered(pod("r1-0", 0, None)),
            pod("r1-1", 0, None),
        ]));
        assert_eq!(delivering(&through).0, "True", "a delivery ends it");
        // Told whatever became of the spec's last change.
        let invalid = Outcome::InvalidSpec {
            message: "spec.x: a typo".into(),
        };
        let again = compute(&through, &invalid, DONE, t(100));
        let events = crate::steps::report::events::events_for(&through, &invalid, &again);
        let reasons: Vec<&str> = events.iter().map(|e| e.reason.as_str()).collect();
        assert!(reasons.contains(&"DeliveringAgain"), "{reasons:?}");

        let hash = |r: &SmtpRelay| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            delivery_health(r).hash(&mut h);
            h.finish()
        };
        assert_ne!(
            hash(&restarted),
            hash(&with(vec![
                delivered(pod("r1-0", 3, None)),
                pod("r1-1", 0, None)
            ])),
            "a first delivery after a restart"
        );
    }

    /// Issue 26: with a login the relayhost proves who it is by default (`secure`); an explicit
    /// level that verifies nothing is accepted but flagged, with the rule of the relay image,
    /// and the condition describes the configuration in force.
    #[test]
    fn relayhost_verified_is_false_only_for_a_level_that_proves_nothing() {
        use crate::floor::crd::{CredentialsSecretRef, RelayhostTlsSpec, TlsLevelSpec};
        let verified = |r: &SmtpRelay| {
            let c = cond(&compute(r, &applied(), DONE, t(1)), RELAYHOST_VERIFIED).clone();
            (c.status, c.reason, c.message)
        };
        let level = |l: Option<TlsLevelSpec>| {
            Some(RelayhostTlsSpec {
                level: l,
                ca_secret_key_ref: None,
                ca_config_map_key_ref: None,
                allow_cleartext_credentials: false,
            })
        };
        let mut r = relay("r1");
        assert_eq!(verified(&r).1, "NoCredentials");
        r.spec.relayhost.credentials_secret_ref = Some(CredentialsSecretRef {
            name: "login".into(),
            username_key: "username".into(),
            password_key: "password".into(),
        });
        let (status, reason, message) = verified(&r);
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("True", "RelayhostVerified")
        );
        assert!(
            message.contains("the system CAs that names mail.example.net (level secure)"),
            "{message}"
        );
        for l in [
            TlsLevelSpec::None,
            TlsLevelSpec::May,
            TlsLevelSpec::Encrypt,
            TlsLevelSpec::Dane,
        ] {
            r.spec.relayhost.tls = level(Some(l));
            let (status, reason, message) = verified(&r);
            assert_eq!(
                (status.as_str(), reason.as_str()),
                ("False", "UnverifiedRelayhost"),
                "{l:?}"
            );
            assert!(
                message.contains("credentialsSecretRef")
                    && message.contains("would receive the password")
                    && message.contains("set secure"),
                "{message}"
            );
        }
        for l in [
            TlsLevelSpec::Secure,
            TlsLevelSpec::Verify,
            TlsLevelSpec::Fingerprint,
            TlsLevelSpec::DaneOnly,
        ] {
            r.spec.relayhost.tls = level(Some(l));
            assert_eq!(verified(&r).0, "True", "{l:?}");
        }
    }

    /// [`relayhost_verified_is_false_only_for_a_level_that_proves_nothing`]: what the message
    /// names (the CAs, the names, the token), and the condition in force.
    #[test]
    fn relayhost_verified_says_whom_the_login_trusts() {
        use crate::floor::crd::{
            CredentialsSecretRef, KeyRef, OAuth2Provider, OAuth2SecretRef, OAuth2Spec,
            RelayhostTlsSpec, TlsLevelSpec,
        };
        let verified = |r: &SmtpRelay| {
            let c = cond(&compute(r, &applied(), DONE, t(1)), RELAYHOST_VERIFIED).clone();
            (c.status, c.reason, c.message)
        };
        let level = |l: Option<TlsLevelSpec>| {
            Some(RelayhostTlsSpec {
                level: l,
                ca_secret_key_ref: None,
                ca_config_map_key_ref: None,
                allow_cleartext_credentials: false,
            })
        };
        let mut r = relay("r1");
        r.spec.relayhost.credentials_secret_ref = Some(CredentialsSecretRef {
            name: "login".into(),
            username_key: "username".into(),
            password_key: "password".into(),
        });
        // verify with MX records checks whichever host DNS answered.
        r.spec.relayhost.mx_lookup = true;
        r.spec.relayhost.tls = level(Some(TlsLevelSpec::Verify));
        assert_eq!(verified(&r).1, "UnverifiedRelayhost");
        r.spec.relayhost.tls = None;
        assert!(verified(&r)
            .2
            .contains("mail.example.net or a host under it"));
        r.spec.relayhost.mx_lookup = false;
        // An address, verified with a private CA.
        r.spec.relayhost.host = "10.1.0.1".into();
        r.spec.relayhost.tls = Some(RelayhostTlsSpec {
            level: None,
            ca_secret_key_ref: Some(KeyRef {
                name: "ca".into(),
                key: "ca.crt".into(),
            }),
            ca_config_map_key_ref: None,
            allow_cleartext_credentials: false,
        });
        assert!(
            verified(&r).2.contains(
                "the CA of spec.relayhost.tls.caSecretKeyRef that names 10.1.0.1 (an IP subjectAltName)"
            ),
            "{:?}",
            verified(&r)
        );
        // An OAuth2 login: the token is what an impostor would receive.
        r.spec.relayhost.credentials_secret_ref = None;
        r.spec.relayhost.host = "smtp.example.net".into();
        r.spec.relayhost.oauth2 = Some(OAuth2Spec {
            provider: OAuth2Provider::Generic,
            tenant: None,
            user: "a@example.net".into(),
            token_endpoint: Some("https://idp.example.net/token".into()),
            scope: None,
            secret_ref: OAuth2SecretRef { name: "app".into() },
        });
        r.spec.relayhost.tls = level(Some(TlsLevelSpec::Encrypt));
        let (status, _, message) = verified(&r);
        assert_eq!(status, "False");
        assert!(
            message.contains("with oauth2") && message.contains("access token"),
            "{message}"
        );
        // A spec that was not applied leaves the condition of what runs.
        r.status = Some(compute(&r, &applied(), DONE, t(1)));
        r.spec.relayhost.tls = None;
        let s = compute(
            &r,
            &Outcome::InvalidSpec {
                message: "no".into(),
            },
            DONE,
            t(2),
        );
        assert_eq!(cond(&s, RELAYHOST_VERIFIED).reason, "UnverifiedRelayhost");
        let s = compute(&r, &applied(), DONE, t(3));
        assert_eq!(cond(&s, RELAYHOST_VERIFIED).reason, "RelayhostVerified");
    }

    /// The relayhost did not prove its name (the pods' login state `Unverified`): no login
    /// was sent, and `RelayhostLogin` says so, naming the pods and what was expected.
    #[test]
    fn relayhost_login_says_when_the_relayhost_did_not_prove_its_name() {
        use crate::floor::crd::{CredentialsSecretRef, PodQueueStatus, QueueStatus};
        let mut r = relay("r1");
        r.spec.relayhost.credentials_secret_ref = Some(CredentialsSecretRef {
            name: "creds".into(),
            username_key: "username".into(),
            password_key: "password".into(),
        });
        let pod = |name: &str, login: &str| PodQueueStatus {
            pod: name.into(),
            relayhost_login: Some(login.into()),
            ..PodQueueStatus::default()
        };
        r.status = Some(SmtpRelayStatus {
            queue: Some(QueueStatus {
                relayhost_login: "Unverified".into(),
                pods: vec![pod("r1-0", "Unverified"), pod("r1-1", "Accepted")],
                ..QueueStatus::default()
            }),
            ..SmtpRelayStatus::default()
        });
        let c = cond(&compute(&r, &applied(), DONE, t(100)), RELAYHOST_LOGIN).clone();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "RelayhostNotVerified")
        );
        assert!(
            c.message
                .starts_with("r1-0: the relayhost did not prove its name")
                && c.message
                    .contains("the system CAs that names mail.example.net")
                && c.message.contains("no login was sent"),
            "{}",
            c.message
        );
    }
}
