//! The relay pod's contract: what the operator and the relay image agree on. Child names,
//! labels and annotations, ports, and which key of which owned Secret or ConfigMap becomes
//! which file under which mount. The Secret builders, the StatefulSet's mounts, the relay
//! configuration's paths and the judge all read it from here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::floor::crd::{SmtpRelay, SmtpRelaySpec};
use crate::floor::error::{Error, Result};

/// Image used when neither `spec.image` nor `--relay-image` says otherwise.
pub const DEFAULT_RELAY_IMAGE: &str = concat!(
    "ghcr.io/smtp-relay-operator/smtp-relay:",
    env!("CARGO_PKG_VERSION")
);

/// Pod template annotation that rolls the pods when the configuration changes; the relay
/// reads it as its own revision (the image owns the name).
pub use smtp_relay::revision::CONFIG_HASH_ANNOTATION;

pub const CONFIG_DIR: &str = "/etc/smtp-relay/config";
pub const CONFIG_KEY: &str = "relay.yaml";
/// The ConfigMap key beside [`CONFIG_KEY`] naming its configuration (the config hash): a pod
/// applies `relay.yaml` only when it is its own template's [`CONFIG_HASH_ANNOTATION`], so a
/// new configuration reaches the pods only through the rolling update, one pod first
/// (`steps::rollout`), never by the kubelet refreshing the mounted ConfigMap in every pod.
/// The relay reads it as a file of that name (the image owns the name).
pub use smtp_relay::revision::REVISION_FILE as REVISION_KEY;
pub const RELAYHOST_DIR: &str = "/etc/smtp-relay/relayhost";
pub const SASL_USERS_DIR: &str = "/etc/smtp-relay/sasl-users";
pub const TLS_DIR: &str = "/etc/smtp-relay/tls";
/// The pod's own annotations (downward API), where the operator asks a replica to drain.
pub const POD_INFO_DIR: &str = "/etc/smtp-relay/pod";
pub const RUN_DIR: &str = "/run/smtp-relay";
/// Postfix's configuration directory in a relay pod (`RELAY_POSTFIX_DIR`), under [`RUN_DIR`]:
/// what `postqueue -c` and `postsuper -c` need there.
pub const POSTFIX_CONFIG_DIR: &str = "/run/smtp-relay/postfix";
pub const DATA_DIR: &str = "/data";
pub const SPOOL_DIR: &str = "/var/spool/postfix";
pub const SMTP_PORT: i32 = 25;
/// The pods' port for a load balancer that speaks the PROXY protocol
/// (`spec.service.proxyProtocol`).
pub const PROXY_PROTOCOL_PORT: i32 = 2525;
pub const METRICS_PORT: i32 = 9154;
/// The submission ports (`spec.submission`), on the pods and the Service, with their names.
pub const SUBMISSION_PORT: (&str, i32) = ("submission", 587);
pub const SUBMISSIONS_PORT: (&str, i32) = ("submissions", 465);

/// The submission ports `spec` opens, named, STARTTLS first.
pub fn submission_ports(spec: &SmtpRelaySpec) -> Vec<(&'static str, i32)> {
    let open = spec.submission.unwrap_or_default();
    [
        (open.starttls, SUBMISSION_PORT),
        (open.implicit_tls, SUBMISSIONS_PORT),
    ]
    .into_iter()
    .filter_map(|(open, port)| open.then_some(port))
    .collect()
}

/// Keys of the owned relayhost Secret.
pub const USERNAME_KEY: &str = "username";
pub const PASSWORD_KEY: &str = "password";
pub const CA_KEY: &str = "ca.crt";
/// Keys of the owned TLS Secret (those of a `kubernetes.io/tls` Secret).
pub const TLS_CRT_KEY: &str = "tls.crt";
pub const TLS_KEY_KEY: &str = "tls.key";
/// Keys of the owned `<name>-ca-key` Secret beside [`CA_KEY`]: the signing CA's key, its
/// successor's certificate and key, and the earlier CAs' certificates.
pub const CA_KEY_KEY: &str = "ca.key";
pub const NEXT_CA_CRT_KEY: &str = "next-ca.crt";
pub const NEXT_CA_KEY_KEY: &str = "next-ca.key";
pub const RETIRED_CA_CRT_KEY: &str = "retired-ca.crt";
/// Key of the owned `<name>-hash-key` Secret holding the relay's [`HashKey`](crate::floor::inputs::HashKey).
pub const HASH_KEY_KEY: &str = "config-hash-key";

/// Names of the owned objects.
pub struct Names;

impl Names {
    pub fn config_map(relay: &str) -> String {
        format!("{relay}-config")
    }
    pub fn relayhost_secret(relay: &str) -> String {
        format!("{relay}-relayhost")
    }
    pub fn sasl_users_secret(relay: &str) -> String {
        format!("{relay}-sasl-users")
    }
    pub fn tls_secret(relay: &str) -> String {
        format!("{relay}-tls")
    }
    /// Holds the relay's CA and its key (`steps::certificate`); never mounted into a pod.
    pub fn ca_key_secret(relay: &str) -> String {
        format!("{relay}-ca-key")
    }
    /// Publishes the relay's CA certificate for clients (key [`CA_KEY`]), never a key.
    pub fn ca_config_map(relay: &str) -> String {
        format!("{relay}-ca")
    }
    /// Holds the key of the config hash; never mounted into a pod.
    pub fn hash_key_secret(relay: &str) -> String {
        format!("{relay}-hash-key")
    }
    pub fn headless_service(relay: &str) -> String {
        format!("{relay}-headless")
    }
    /// Where the pods share a rotated OAuth2 refresh token (`steps::build::oauth2`).
    pub fn oauth2_token_secret(relay: &str) -> String {
        format!("{relay}-oauth2-token")
    }
    /// The pods' ServiceAccount, its Role and RoleBinding, with a delegated OAuth2 login.
    pub fn oauth2_identity(relay: &str) -> String {
        format!("{relay}-oauth2")
    }
    /// With `whenDeleted: Delete`, the ConfigMap that keeps the relay's children from the
    /// garbage collector while its queues drain on deletion (`steps::build::configmap::drain_guard`).
    pub fn drain_guard(relay: &str) -> String {
        format!("{relay}-drain-guard")
    }
    /// Every name a child of the relay may take (the StatefulSet, the Service and the PDB are
    /// named like the relay itself).
    pub fn all(relay: &str) -> [String; 12] {
        [
            Self::ca_key_secret(relay),
            Self::ca_config_map(relay),
            Self::drain_guard(relay),
            relay.to_string(),
            Self::config_map(relay),
            Self::relayhost_secret(relay),
            Self::sasl_users_secret(relay),
            Self::tls_secret(relay),
            Self::hash_key_secret(relay),
            Self::headless_service(relay),
            Self::oauth2_token_secret(relay),
            Self::oauth2_identity(relay),
        ]
    }
}

/// A directory of the relay pods where an owned Secret is mounted whole (never by subPath:
/// the kubelet then updates the files in place, and the relay reloads them): each key of the
/// Secret is a file of the directory, named like the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mount {
    /// `<name>-relayhost`: the relayhost login, its OAuth2 keys, its CA bundle.
    Relayhost,
    /// `<name>-sasl-users`: one file per SASL user, named by the user, holding the password.
    SaslUsers,
    /// `<name>-tls`: the certificate and key offered to clients.
    Tls,
}

impl Mount {
    pub const ALL: [Mount; 3] = [Mount::Relayhost, Mount::SaslUsers, Mount::Tls];

    /// Where it is mounted in the relay pods.
    pub const fn dir(self) -> &'static str {
        match self {
            Mount::Relayhost => RELAYHOST_DIR,
            Mount::SaslUsers => SASL_USERS_DIR,
            Mount::Tls => TLS_DIR,
        }
    }

    /// The name of its volume in the relay pods.
    pub const fn volume(self) -> &'static str {
        match self {
            Mount::Relayhost => "relayhost",
            Mount::SaslUsers => "sasl-users",
            Mount::Tls => "tls",
        }
    }

    /// The owned Secret mounted there.
    pub fn secret_name(self, relay: &str) -> String {
        match self {
            Mount::Relayhost => Names::relayhost_secret(relay),
            Mount::SaslUsers => Names::sasl_users_secret(relay),
            Mount::Tls => Names::tls_secret(relay),
        }
    }

    /// The file of the key `key` of its Secret.
    pub const fn file(self, key: &str) -> PodFile<'_> {
        PodFile { mount: self, key }
    }
}

/// A file of the relay pods: the key `key` of the owned Secret mounted at `mount`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodFile<'a> {
    pub mount: Mount,
    pub key: &'a str,
}

impl PodFile<'_> {
    /// Its path in the relay pods, as the relay's config file names it.
    pub fn path(&self) -> PathBuf {
        Path::new(self.mount.dir()).join(self.key)
    }
}

pub const RELAYHOST_USERNAME: PodFile<'static> = Mount::Relayhost.file(USERNAME_KEY);
pub const RELAYHOST_PASSWORD: PodFile<'static> = Mount::Relayhost.file(PASSWORD_KEY);
pub const RELAYHOST_CA: PodFile<'static> = Mount::Relayhost.file(CA_KEY);
pub const INBOUND_TLS_CERT: PodFile<'static> = Mount::Tls.file(TLS_CRT_KEY);
pub const INBOUND_TLS_KEY: PodFile<'static> = Mount::Tls.file(TLS_KEY_KEY);

/// Every file of a name fixed by the contract (a SASL user's file is named by the user).
pub const FIXED_FILES: [PodFile<'static>; 9] = [
    RELAYHOST_USERNAME,
    RELAYHOST_PASSWORD,
    RELAYHOST_CA,
    CLIENT_ID.pod_file(),
    CLIENT_SECRET.pod_file(),
    REFRESH_TOKEN.pod_file(),
    SERVICE_ACCOUNT.pod_file(),
    INBOUND_TLS_CERT,
    INBOUND_TLS_KEY,
];

/// The file of the relay pods at `path`, if the contract has one there: one of
/// [`FIXED_FILES`], or a SASL user's file (the kubelet's own entries, `..data` and the like,
/// are no user's).
pub fn file_at(path: &Path) -> Option<PodFile<'_>> {
    let key = path.file_name()?.to_str()?;
    let dir = path.parent()?;
    let mount = Mount::ALL.into_iter().find(|m| Path::new(m.dir()) == dir)?;
    match mount {
        Mount::SaslUsers => (!key.starts_with('.')).then_some(mount.file(key)),
        _ => FIXED_FILES
            .into_iter()
            .find(|f| f.mount == mount && f.key == key),
    }
}

/// Labels selecting one relay's pods (immutable: never add to these).
pub fn selector_labels(relay: &SmtpRelay) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "smtp-relay".to_string(),
        ),
        ("app.kubernetes.io/instance".to_string(), relay.name_any()),
    ])
}

/// [`selector_labels`] as a label selector string (`key=value,...`): what lists the relay's
/// pods and claims, and the scale subresource's `status.selector`.
pub fn pod_selector(relay: &SmtpRelay) -> String {
    selector_labels(relay)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Labels of every owned object.
pub fn labels(relay: &SmtpRelay, component: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(relay);
    l.insert(
        "app.kubernetes.io/managed-by".into(),
        "smtp-relay-operator".into(),
    );
    l.insert("app.kubernetes.io/component".into(), component.into());
    l
}

/// The label selector matching objects managed by this operator.
pub const MANAGED_BY_SELECTOR: &str = "app.kubernetes.io/managed-by=smtp-relay-operator";

fn owner_ref(relay: &SmtpRelay) -> Result<OwnerReference> {
    relay
        .controller_owner_ref(&())
        .ok_or(Error::MissingObjectKey(".metadata.uid"))
}

/// Metadata of an owned object: name, namespace, labels, controller owner reference.
pub fn child_meta(relay: &SmtpRelay, name: String, component: &str) -> Result<ObjectMeta> {
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(relay.namespace_checked()?),
        labels: Some(labels(relay, component)),
        owner_references: Some(vec![owner_ref(relay)?]),
        ..ObjectMeta::default()
    })
}

/// A key an OAuth2 Secret may hold, and the file it becomes in the relay pods.
pub struct OAuth2Key {
    pub secret_key: &'static str,
    pub file: &'static str,
}

impl OAuth2Key {
    /// The file it becomes: a key of the owned relayhost Secret.
    pub const fn pod_file(&self) -> PodFile<'static> {
        Mount::Relayhost.file(self.file)
    }
}

pub const CLIENT_ID: OAuth2Key = OAuth2Key {
    secret_key: "clientId",
    file: "oauth2-client-id",
};

pub const CLIENT_SECRET: OAuth2Key = OAuth2Key {
    secret_key: "clientSecret",
    file: "oauth2-client-secret",
};

pub const REFRESH_TOKEN: OAuth2Key = OAuth2Key {
    secret_key: "refreshToken",
    file: "oauth2-refresh-token",
};

pub const SERVICE_ACCOUNT: OAuth2Key = OAuth2Key {
    secret_key: "serviceAccount.json",
    file: "oauth2-service-account.json",
};

/// The one field manager of every write.
pub const MANAGER: &str = "smtp-relay-operator";
/// Hash of the desired object last applied; an equal hash means there is nothing to write.
pub const APPLIED_HASH_ANNOTATION: &str = "smtprelay.dev/applied-hash";

/// On the SmtpRelay, `"true"`: lower the replicas now, without waiting for the drain. Mail
/// still queued stays on a `Retain` volume, and is destroyed with a `Delete` one.
pub const ABANDON_ANNOTATION: &str = "smtprelay.dev/abandon-drain";

/// Holds a relay being deleted until its queues are drained.
pub const FINALIZER: &str = "smtprelay.dev/drain-queues";

/// Annotation on the `<name>-tls` Secret when its certificate was issued by the operator.
pub const ISSUED_ANNOTATION: &str = "smtprelay.dev/issued-certificate";

/// On the drain guard: the uid of the SmtpRelay it guards (it has no owner to say so).
pub const GUARDS_ANNOTATION: &str = "smtprelay.dev/guards-relay-uid";

pub const CONTAINER_NAME: &str = "relay";
/// The container port of `spec.service.proxyProtocol`.
pub const PROXY_PORT_NAME: &str = "smtp-proxy";
pub const SPOOL_VOLUME: &str = "spool";

/// Operator-wide settings that shape the built objects.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub relay_image: String,
    /// The images a `spec.image` may name (see `judge::image_allowed`); empty: any.
    pub allowed_relay_images: Vec<String>,
    /// The label a Secret must carry to be referenced by an SmtpRelay, or written a rotated
    /// token into; `None`: any Secret of the relay's namespace.
    pub secret_reference_label: Option<ReferableLabel>,
    /// The operator's own namespace, whose pods read the relays' metrics (the relays'
    /// NetworkPolicies admit them).
    pub operator_namespace: String,
    /// Whether relays get their NetworkPolicy at all (`--relay-network-policies`).
    pub network_policies: bool,
    /// Namespaces admitted to every relay's metrics (`--relay-metrics-from-namespaces`).
    pub metrics_from_namespaces: Vec<String>,
    /// Whether a relay whose spec does not set `hostUsers` runs in user namespaces
    /// (`--relay-user-namespaces`).
    pub user_namespaces: bool,
}

impl BuildOptions {
    /// Whether the relay's pods share the node's users: its `spec.hostUsers`, else the
    /// operator's default.
    pub fn shares_node_users(&self, spec: &SmtpRelaySpec) -> bool {
        spec.host_users.unwrap_or(!self.user_namespaces)
    }
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            relay_image: DEFAULT_RELAY_IMAGE.into(),
            allowed_relay_images: Vec::new(),
            secret_reference_label: None,
            operator_namespace: "smtp-relay-system".into(),
            network_policies: true,
            metrics_from_namespaces: Vec::new(),
            user_namespaces: true,
        }
    }
}

/// The label (`key=value`) that makes a Secret referable, when the operator is told to require
/// one (`--secret-reference-label`, the chart's `secretReferenceLabel`): a Secret's owner opts
/// it in, so whoever may create an SmtpRelay cannot have the operator copy any Secret of the
/// namespace into a relay, nor write a token into it. Checked where Secrets are read
/// (`steps::resolve`) and written (`steps::writeback`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferableLabel {
    pub key: String,
    pub value: String,
}

impl ReferableLabel {
    /// Whether `labels` carry it.
    pub fn marks(&self, labels: &BTreeMap<String, String>) -> bool {
        labels.get(&self.key) == Some(&self.value)
    }
}

impl std::fmt::Display for ReferableLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

/// A `--secret-reference-label` that is not `key=value`.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a label selector of the form key=value (e.g. smtprelay.dev/referable=true)")]
pub struct LabelSyntax(String);

impl std::str::FromStr for ReferableLabel {
    type Err = LabelSyntax;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let bad = |c: char| c.is_whitespace() || c == ',' || c == '=';
        match s.trim().split_once('=') {
            Some((key, value)) if !key.is_empty() && !key.contains(bad) && !value.contains(bad) => {
                Ok(ReferableLabel {
                    key: key.into(),
                    value: value.into(),
                })
            }
            _ => Err(LabelSyntax(s.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The paths are those the relay pods have always read (the ConfigMap's `relay.yaml`
    /// names them), and each leads back to its file.
    #[test]
    fn every_file_is_at_its_path_and_found_there() {
        let paths: Vec<String> = FIXED_FILES
            .iter()
            .map(|f| f.path().display().to_string())
            .collect();
        assert_eq!(
            paths,
            [
                "/etc/smtp-relay/relayhost/username",
                "/etc/smtp-relay/relayhost/password",
                "/etc/smtp-relay/relayhost/ca.crt",
                "/etc/smtp-relay/relayhost/oauth2-client-id",
                "/etc/smtp-relay/relayhost/oauth2-client-secret",
                "/etc/smtp-relay/relayhost/oauth2-refresh-token",
                "/etc/smtp-relay/relayhost/oauth2-service-account.json",
                "/etc/smtp-relay/tls/tls.crt",
                "/etc/smtp-relay/tls/tls.key",
            ]
        );
        for f in FIXED_FILES {
            assert_eq!(file_at(&f.path()), Some(f));
        }
        let app = Mount::SaslUsers.file("app.two");
        assert_eq!(app.path(), Path::new("/etc/smtp-relay/sasl-users/app.two"));
        assert_eq!(file_at(&app.path()), Some(app));
    }

    #[test]
    fn no_file_is_found_where_the_contract_has_none() {
        for path in [
            "/etc/smtp-relay/relayhost/oauth2-token",
            "/etc/smtp-relay/relayhost",
            "/etc/smtp-relay/tls/ca.crt",
            "/etc/smtp-relay/sasl-users/..data",
            "/etc/smtp-relay/sasl-users/app/password",
            "/etc/smtp-relay/config/relay.yaml",
            "/tmp/password",
            "password",
            "/",
        ] {
            assert_eq!(file_at(Path::new(path)), None, "{path}");
        }
    }

    #[test]
    fn each_mount_is_its_owned_secret() {
        let names: Vec<String> = Mount::ALL.iter().map(|m| m.secret_name("r1")).collect();
        assert_eq!(names, ["r1-relayhost", "r1-sasl-users", "r1-tls"]);
        let dirs: Vec<&str> = Mount::ALL.iter().map(|m| m.dir()).collect();
        assert_eq!(dirs, [RELAYHOST_DIR, SASL_USERS_DIR, TLS_DIR]);
    }
}
