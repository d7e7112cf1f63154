//! The relay image's config file (`relay.yaml`), built from the spec. It names files, never
//! secret values: credentials, CA, users and TLS keys are mounted from the owned Secrets.

use std::collections::BTreeMap;
use std::path::PathBuf;

use smtp_relay::config_file::{
    HeadersFile, InboundTlsFile, LimitsFile, OAuth2File, RateLimitsFile, RecipientsFile,
    RelayConfigFile, RelayhostFile, SandboxFile, SenderBindingFile, SendersFile, SubmissionFile,
};
use smtp_relay::settings::TlsMinVersion;

use crate::floor::contract::{
    submission_ports, Mount, Names, INBOUND_TLS_CERT, INBOUND_TLS_KEY, PROXY_PROTOCOL_PORT,
    RELAYHOST_CA, RELAYHOST_PASSWORD, RELAYHOST_USERNAME, SUBMISSIONS_PORT, SUBMISSION_PORT,
};
use kube::ResourceExt;

use crate::floor::contract::{OAuth2Key, CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, SERVICE_ACCOUNT};
use crate::floor::crd::{LimitsSpec, OAuth2Provider, OAuth2Spec, SmtpRelay, SmtpRelaySpec};
use crate::floor::inputs::{OAuth2Keys, Resolved};

/// The OAuth2 login as the relay reads it: the provider's endpoint and scope, and a file for
/// each key of the Secret.
fn oauth2_file(relay: &str, o: &OAuth2Spec, keys: &OAuth2Keys) -> OAuth2File {
    let path =
        |value: &Option<Vec<u8>>, key: OAuth2Key| value.as_ref().map(|_| key.pod_file().path());
    OAuth2File {
        user: o.user.clone(),
        token_endpoint: o.token_endpoint(),
        scope: o.scope(keys.refresh_token.is_some()),
        client_id_file: path(&keys.client_id, CLIENT_ID),
        client_secret_file: path(&keys.client_secret, CLIENT_SECRET),
        refresh_token_file: path(&keys.refresh_token, REFRESH_TOKEN),
        service_account_key_file: path(&keys.service_account, SERVICE_ACCOUNT),
        shared_refresh_token_secret: keys.delegated().then(|| Names::oauth2_token_secret(relay)),
    }
}

/// The `RelayConfigFile` the relay pods read.
pub fn relay_config_file(relay: &SmtpRelay, resolved: &Resolved) -> RelayConfigFile {
    let spec = &relay.spec;
    let login = resolved.relayhost_login.is_some();
    let relayhost = RelayhostFile {
        host: spec.relayhost.host.clone(),
        // Admission bounds the port to 1..=65535; fall back to SMTP's port if it is ever not.
        port: u16::try_from(spec.relayhost.port).unwrap_or(25),
        mx_lookup: spec.relayhost.mx_lookup,
        implicit_tls: spec.relayhost.implicit_tls(),
        username_file: login.then(|| RELAYHOST_USERNAME.path()),
        password_file: login.then(|| RELAYHOST_PASSWORD.path()),
        tls_level: spec
            .relayhost
            .tls
            .as_ref()
            .and_then(|t| t.level.map(Into::into)),
        tls_ca_file: resolved.relayhost_ca.is_some().then(|| RELAYHOST_CA.path()),
        oauth2: spec
            .relayhost
            .oauth2
            .as_ref()
            .zip(resolved.relayhost_oauth2.as_ref())
            .map(|(o, keys)| oauth2_file(&relay.name_any(), o, keys)),
        delivery_interval_seconds: delivery_interval(spec),
    };
    RelayConfigFile {
        domain: spec.domain.clone(),
        hostname: spec.hostname.clone(),
        networks: spec.networks.clone(),
        relay_domains: spec.relay_domains.clone(),
        relayhost,
        postmaster: spec.postmaster.clone(),
        strict_sender: spec.strict_sender,
        mode: if spec.custom_restrictions.is_some() {
            None
        } else {
            Some(spec.mode.unwrap_or_default().into())
        },
        custom_restrictions: spec.custom_restrictions.clone(),
        trust_restriction_tables: spec.trust_restriction_tables,
        sasl_users_dir: resolved
            .sasl_users
            .is_some()
            .then(|| PathBuf::from(Mount::SaslUsers.dir())),
        inbound_tls: resolved.inbound_tls.as_ref().map(|_| InboundTlsFile {
            cert_file: INBOUND_TLS_CERT.path(),
            key_file: INBOUND_TLS_KEY.path(),
        }),
        inbound_tls_min_version: inbound_tls_min_version(spec, resolved),
        proxy_protocol_port: spec
            .service
            .proxy_protocol
            .then_some(PROXY_PROTOCOL_PORT as u16),
        submission: submission(spec),
        headers: spec.headers.as_ref().map(|h| HeadersFile {
            reveal_client: h.reveal_client,
            remove: h.remove.clone(),
        }),
        senders: spec.senders.as_ref().map(|s| SendersFile {
            allowed: s.allowed.clone(),
            bindings: s
                .bindings
                .iter()
                .map(|b| SenderBindingFile {
                    user: b.user.clone(),
                    senders: b.senders.clone(),
                })
                .collect(),
        }),
        recipients: spec.recipients.as_ref().map(|r| RecipientsFile {
            allowed: r.allowed.clone(),
        }),
        rate_limits: spec.rate_limits.as_ref().map(|r| RateLimitsFile {
            interval_seconds: r.interval_seconds,
            per_client: r.per_client.as_ref().map(limits),
            per_user: r.per_user.as_ref().map(limits),
        }),
        sandbox: spec.sandbox.as_ref().map(|sb| SandboxFile {
            mode: sb.mode.into(),
            mailbox: sb.mailbox.clone(),
        }),
        postconf: postconf(spec),
    }
}

/// The submission ports, when the spec opens one (a spec without says nothing, so its
/// configuration hash stays what it was).
fn submission(spec: &SmtpRelaySpec) -> Option<SubmissionFile> {
    let open = |port: (&str, i32)| {
        submission_ports(spec)
            .contains(&port)
            .then(|| u16::try_from(port.1).ok())
            .flatten()
    };
    let file = SubmissionFile {
        starttls_port: open(SUBMISSION_PORT),
        implicit_tls_port: open(SUBMISSIONS_PORT),
    };
    (file != SubmissionFile::default()).then_some(file)
}

/// `spec.postconf` with the queue's lifetimes, which reach Postfix as the parameters they name
/// (so a relay image that predates the fields reads them too). The judge refuses a spec that
/// sets one both ways.
fn limits(l: &LimitsSpec) -> LimitsFile {
    LimitsFile {
        connections: l.connections,
        messages: l.messages,
        recipients: l.recipients,
    }
}

fn postconf(spec: &SmtpRelaySpec) -> BTreeMap<String, String> {
    let mut postconf = spec.postconf.clone();
    for q in spec.queue.parameters() {
        if let Some(value) = q.value {
            postconf.entry(q.parameter.to_string()).or_insert(value);
        }
    }
    postconf
}

/// The clients' TLS floor as the relay reads it: only with a certificate (a relay without SASL
/// users or `tlsSecretRef` offers no STARTTLS), and only when it is not the relay's default,
/// so a spec that says `TLSv1.2` explicitly writes the same file as one that does not.
fn inbound_tls_min_version(spec: &SmtpRelaySpec, resolved: &Resolved) -> Option<TlsMinVersion> {
    resolved.inbound_tls.as_ref()?;
    spec.tls_min_version
        .map(TlsMinVersion::from)
        .filter(|v| *v != TlsMinVersion::default())
}

/// Microsoft 365 takes at most 30 messages a minute from a mailbox (and 3 connections): one
/// delivery every two seconds, shared out over the replicas, keeps the relay as a whole under
/// the limit. The relay turns the interval into Postfix's pacing; `postconf` overrides it.
fn delivery_interval(spec: &SmtpRelaySpec) -> Option<u32> {
    match spec.relayhost.oauth2.as_ref().map(|o| o.provider) {
        Some(OAuth2Provider::Microsoft365) => {
            Some(2u32.saturating_mul(u32::try_from(spec.replicas.max(1)).unwrap_or(1)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::floor::crd::{OAuth2SecretRef, OAuth2Spec};

    /// Issue 39: port 465 means TLS from the first byte unless the spec says otherwise, as in
    /// the image's environment mode; STARTTLS there would wait for a greeting that never comes.
    #[test]
    fn port_465_speaks_tls_from_the_first_byte_unless_told_otherwise() {
        let mut relay = crate::fixtures::relay("r1");
        let implicit = |relay: &SmtpRelay| {
            relay_config_file(relay, &Resolved::default())
                .relayhost
                .implicit_tls
        };
        assert!(!implicit(&relay), "port 25");
        relay.spec.relayhost.port = 465;
        assert!(implicit(&relay));
        relay.spec.relayhost.implicit_tls = Some(false);
        assert!(!implicit(&relay), "as the spec says");
        relay.spec.relayhost.port = 2465;
        relay.spec.relayhost.implicit_tls = Some(true);
        assert!(implicit(&relay));
    }

    /// Issue 39: the queue's lifetimes reach Postfix as the parameters they name, and a relay
    /// without them writes the file it wrote before the fields existed (no restart).
    #[test]
    fn the_queue_lifetimes_are_written_as_their_parameters() {
        let mut relay = crate::fixtures::relay("r1");
        let before = relay_config_file(&relay, &Resolved::default());
        assert!(before.postconf.is_empty());
        relay.spec.queue.lifetime = Some("12h".into());
        relay.spec.queue.bounce_lifetime = Some("1d".into());
        let file = relay_config_file(&relay, &Resolved::default());
        assert_eq!(
            file.postconf
                .get("maximal_queue_lifetime")
                .map(String::as_str),
            Some("12h")
        );
        assert_eq!(
            file.postconf
                .get("bounce_queue_lifetime")
                .map(String::as_str),
            Some("1d")
        );
        assert_eq!(
            RelayConfigFile {
                postconf: Default::default(),
                ..file
            },
            before
        );
    }

    /// Issue 26: `spec.tlsMinVersion` reaches the relay only where it offers STARTTLS, and
    /// only when it is not the default (so saying TLSv1.2 restarts nothing).
    #[test]
    fn the_clients_tls_floor_is_written_with_the_certificate_when_not_the_default() {
        use crate::floor::crd::TlsMinVersionSpec;
        use crate::floor::inputs::TlsPair;
        let mut relay = crate::fixtures::relay("r1");
        let with_tls = Resolved {
            inbound_tls: Some(TlsPair {
                cert: b"cert".to_vec(),
                key: b"key".to_vec(),
            }),
            ..Resolved::default()
        };
        let written = |relay: &SmtpRelay, resolved: &Resolved| {
            relay_config_file(relay, resolved).inbound_tls_min_version
        };
        assert_eq!(written(&relay, &with_tls), None);
        relay.spec.tls_min_version = Some(TlsMinVersionSpec::Tls1_2);
        assert_eq!(written(&relay, &with_tls), None, "the default");
        relay.spec.tls_min_version = Some(TlsMinVersionSpec::Tls1_0);
        assert_eq!(written(&relay, &with_tls), Some(TlsMinVersion::Tls1_0));
        assert_eq!(
            written(&relay, &Resolved::default()),
            None,
            "no certificate, no STARTTLS"
        );
        relay.spec.tls_min_version = Some(TlsMinVersionSpec::Tls1_3);
        assert_eq!(written(&relay, &with_tls), Some(TlsMinVersion::Tls1_3));
    }

    #[test]
    fn microsoft_365_limits_are_shared_by_the_replicas() {
        let mut spec = crate::fixtures::relay("m365").spec;
        assert_eq!(delivery_interval(&spec), None, "no OAuth2, no pacing");
        spec.relayhost.oauth2 = Some(OAuth2Spec {
            provider: OAuth2Provider::Microsoft365,
            user: "sender@contoso.com".into(),
            tenant: Some("contoso.onmicrosoft.com".into()),
            token_endpoint: None,
            scope: None,
            secret_ref: OAuth2SecretRef { name: "app".into() },
        });
        spec.replicas = 3;
        // 3 replicas, one delivery each every 6 s: 30 a minute together.
        assert_eq!(delivery_interval(&spec), Some(6));
        spec.replicas = 1;
        assert_eq!(delivery_interval(&spec), Some(2));
    }
}
