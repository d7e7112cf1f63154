//! The relay StatefulSet: one Postfix pod per replica, each with its own queue volume.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    RollingUpdateStatefulSetStrategy, StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy,
    StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapProjection, ConfigMapVolumeSource, Container, ContainerPort,
    DownwardAPIProjection, DownwardAPIVolumeFile, DownwardAPIVolumeSource, EmptyDirVolumeSource,
    EnvVar, ExecAction, KeyToPath, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecretVolumeSource,
    SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::ResourceExt;
use smtp_relay::kube_api::SERVICE_ACCOUNT_DIR;

use crate::floor::contract::{
    child_meta, labels, selector_labels, submission_ports, BuildOptions, Mount, Names, CONFIG_DIR,
    CONFIG_HASH_ANNOTATION, CONFIG_KEY, CONTAINER_NAME, DATA_DIR, METRICS_PORT, POD_INFO_DIR,
    POSTFIX_CONFIG_DIR, PROXY_PORT_NAME, PROXY_PROTOCOL_PORT, RUN_DIR, SMTP_PORT, SPOOL_DIR,
    SPOOL_VOLUME,
};
use crate::floor::crd::{RetentionPolicy, SmtpRelay};
use crate::floor::error::Result;

/// Secret files are readable by root only: Postfix's master runs as root and reads them.
const SECRET_MODE: i32 = 0o400;
const POD_ANNOTATIONS_FILE: &str = "annotations";
const CONFIG_MODE: i32 = 0o444;

/// Which optional Secret volumes exist.
#[derive(Debug, Clone, Default)]
pub struct Mounts {
    pub relayhost: bool,
    pub sasl_users: bool,
    pub tls: bool,
    /// The pods' own ServiceAccount, when they talk to the API (a delegated OAuth2 login shares
    /// its refresh token); without one they run with no API credentials at all.
    pub service_account: Option<String>,
}

/// Capabilities Postfix's master needs to set up its queue and drop to the postfix user.
pub const CAPABILITIES: [&str; 7] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "SETUID",
    "SETGID",
    "NET_BIND_SERVICE",
    "KILL",
];

pub fn stateful_set(
    relay: &SmtpRelay,
    mounts: &Mounts,
    config_hash: &str,
    opts: &BuildOptions,
) -> Result<StatefulSet> {
    let name = relay.name_any();
    let spec = &relay.spec;

    let mut pod_labels = spec.pod_labels.clone();
    pod_labels.extend(labels(relay, "relay"));
    let mut pod_annotations = spec.pod_annotations.clone();
    // A service-mesh sidecar that intercepts SMTP makes every client appear as 127.0.0.x, which
    // `networks` may trust; keep Istio and Linkerd off port 25 unless the user says otherwise.
    // And a plain Prometheus (without the Prometheus Operator's PodMonitor, which the chart
    // offers) finds the relay's metrics by the usual annotations.
    for (key, value) in MESH_SKIP_SMTP.into_iter().chain(PROMETHEUS_SCRAPE) {
        pod_annotations
            .entry(key.into())
            .or_insert_with(|| value.into());
    }
    pod_annotations.insert(CONFIG_HASH_ANNOTATION.into(), config_hash.into());

    let (volumes, volume_mounts) = volumes(&name, mounts);
    let pod = PodSpec {
        containers: vec![container(relay, volume_mounts, opts)],
        volumes: Some(volumes),
        // The relay talks to the Kubernetes API only to share a rotated OAuth2 refresh token,
        // as its own ServiceAccount allowed that one Secret. Set with its deprecated alias,
        // which the API server fills in from it and restores it from: applied without both, a
        // name applied once would stay in the template after its ServiceAccount is pruned, and
        // the next pod would be refused (kubernetes/kubernetes#72519).
        service_account_name: mounts.service_account.clone(),
        service_account: mounts.service_account.clone(),
        // Never the kubelet's automounted token, whose files every user of the container can
        // read (0644): smtpd, facing the network, runs as postfix. With a ServiceAccount, the
        // same token, CA and namespace come from `api_access_volume`, readable by root only.
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        // The drain, then up to 35 s for Postfix to stop (see ShutdownSpec).
        termination_grace_period_seconds: Some(i64::from(spec.shutdown.drain_seconds) + 35),
        security_context: Some(PodSecurityContext {
            seccomp_profile: Some(runtime_default()),
            ..PodSecurityContext::default()
        }),
        // Root in the pod (Postfix's master) is an unprivileged UID on the node; unset, as
        // Kubernetes' default, when the pods share the node's users.
        host_users: (!opts.shares_node_users(spec)).then_some(false),
        node_selector: non_empty(spec.node_selector.clone()),
        tolerations: non_empty_vec(spec.tolerations.clone()),
        affinity: spec.affinity.clone(),
        image_pull_secrets: non_empty_vec(spec.image_pull_secrets.clone()),
        ..PodSpec::default()
    };

    let retention = &spec.storage.retention;
    Ok(StatefulSet {
        metadata: child_meta(relay, name.clone(), "relay")?,
        spec: Some(StatefulSetSpec {
            replicas: Some(spec.replicas),
            service_name: Some(Names::headless_service(&name)),
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(relay)),
                ..LabelSelector::default()
            },
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    // Always Retain: with whenDeleted Delete, the operator deletes the volumes
                    // itself once their queues are drained (`deletion`); the StatefulSet's own
                    // Delete would hand them to the garbage collector, which takes them with
                    // the StatefulSet whatever they hold (a foreground delete, a hand delete).
                    when_deleted: Some(RetentionPolicy::Retain.as_str().into()),
                    when_scaled: Some(retention.when_scaled.as_str().into()),
                },
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            volume_claim_templates: Some(vec![spool_claim(relay)]),
            // One pod at a time; `steps::rollout` sets the partition that holds the other
            // replicas until the first has proven a new configuration.
            update_strategy: Some(rolling_update(0)),
            ..StatefulSetSpec::default()
        }),
        status: None,
    })
}

/// A rolling update of the pods at ordinal `partition` and above.
pub fn rolling_update(partition: i32) -> StatefulSetUpdateStrategy {
    StatefulSetUpdateStrategy {
        type_: Some("RollingUpdate".into()),
        rolling_update: Some(RollingUpdateStatefulSetStrategy {
            partition: Some(partition),
            ..RollingUpdateStatefulSetStrategy::default()
        }),
    }
}

fn non_empty(m: BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    (!m.is_empty()).then_some(m)
}

fn non_empty_vec<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..SeccompProfile::default()
    }
}

fn spool_claim(relay: &SmtpRelay) -> PersistentVolumeClaim {
    let storage = &relay.spec.storage;
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(SPOOL_VOLUME.into()),
            labels: Some(selector_labels(relay)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".into(),
                    Quantity(storage.size.clone()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    }
}

fn env(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value),
        ..EnvVar::default()
    }
}

/// SMTP probe (banner, EHLO, NOOP) for the first start.
const SMTP_PROBE: &[&str] = &["smtp-relay", "probe"];
/// Readiness: the SMTP probe, failing while the pod is asked to drain so it leaves the Service.
const READINESS_PROBE: &[&str] = &["smtp-relay", "probe", "--readiness"];
/// The liveness probe: the Postfix master runs and the supervisor keeps checking its inputs,
/// without SMTP, so a relay busy with sessions is never restarted for a slow banner (which
/// would cut the deliveries in progress); a relay that cannot answer SMTP leaves the Service
/// through readiness instead.
const LIVENESS_PROBE: &[&str] = &["smtp-relay", "probe", "--liveness"];

fn probe(command: &[&str], period: i32, timeout: i32, failures: i32) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(command.iter().map(|s| s.to_string()).collect()),
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(timeout),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

fn container(relay: &SmtpRelay, volume_mounts: Vec<VolumeMount>, opts: &BuildOptions) -> Container {
    let spec = &relay.spec;
    Container {
        name: CONTAINER_NAME.into(),
        image: Some(
            spec.image
                .clone()
                .unwrap_or_else(|| opts.relay_image.clone()),
        ),
        image_pull_policy: spec.image_pull_policy.map(|p| p.as_str().into()),
        command: Some(vec![
            "smtp-relay".into(),
            "run".into(),
            "--config".into(),
            format!("{CONFIG_DIR}/{CONFIG_KEY}"),
        ]),
        env: Some(vec![
            env("RELAY_LISTEN", format!("[::]:{SMTP_PORT}")),
            env("RELAY_POSTFIX_DIR", POSTFIX_CONFIG_DIR.to_string()),
            env("RELAY_DATA_DIR", DATA_DIR.into()),
            env("RELAY_SPOOL_DIR", SPOOL_DIR.into()),
            env("RELAY_METRICS_LISTEN", format!("[::]:{METRICS_PORT}")),
            env(
                "RELAY_DRAIN_TIMEOUT",
                spec.shutdown.drain_seconds.to_string(),
            ),
            env(
                "RELAY_POD_ANNOTATIONS",
                format!("{POD_INFO_DIR}/{POD_ANNOTATIONS_FILE}"),
            ),
        ]),
        ports: Some(
            vec![
                ContainerPort {
                    name: Some("smtp".into()),
                    container_port: SMTP_PORT,
                    protocol: Some("TCP".into()),
                    ..ContainerPort::default()
                },
                ContainerPort {
                    name: Some("metrics".into()),
                    container_port: METRICS_PORT,
                    protocol: Some("TCP".into()),
                    ..ContainerPort::default()
                },
            ]
            .into_iter()
            .chain(spec.service.proxy_protocol.then(|| ContainerPort {
                name: Some(PROXY_PORT_NAME.into()),
                container_port: PROXY_PROTOCOL_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            }))
            .chain(
                submission_ports(spec)
                    .into_iter()
                    .map(|(name, port)| ContainerPort {
                        name: Some(name.into()),
                        container_port: port,
                        protocol: Some("TCP".into()),
                        ..ContainerPort::default()
                    }),
            )
            .collect(),
        ),
        // Up to 5 minutes for a first start (a large queue on the volume); only then do the
        // other two begin.
        startup_probe: Some(probe(SMTP_PROBE, 5, 5, 60)),
        readiness_probe: Some(probe(READINESS_PROBE, 10, 5, 3)),
        liveness_probe: Some(probe(LIVENESS_PROBE, 30, 10, 3)),
        resources: Some(spec.resources.clone().unwrap_or_else(default_resources)),
        volume_mounts: Some(volume_mounts),
        security_context: Some(security_context()),
        // The relay writes every fatal error of its own to /dev/termination-log, so a run it
        // ended itself (exit code below 128) always has its message there. Only a container
        // killed by a signal (OOMKilled, a failed liveness probe) gets the log's tail, which
        // quotes clients' HELO names and addresses: status ignores the message of those
        // (`status::pod_problem`). Kept as it was, not `File`: a changed template would roll
        // every relay of the cluster when the operator is upgraded.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    }
}

/// The relay container's requests and limits when the spec gives none, from the figures in
/// BENCHMARKS.md (`image/benches/relay.rs`): a relay holds 12 MiB at rest and 93 MiB while 20
/// clients send at full speed, at about 2.7 ms of CPU a message. So it asks for 50m of CPU
/// (about 18 messages a second guaranteed; it may use whatever the node has spare, with no CPU
/// limit, which would only throttle Postfix's bursts) and 128Mi of memory (the loaded figure
/// with room), and is limited to 512Mi: Postfix's 100 processes at most, about 4 MiB each.
/// Mail that got its 250 is on the spool volume, so even an OOM kill loses none.
pub fn default_resources() -> ResourceRequirements {
    let quantities = |pairs: &[(&str, &str)]| {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                .collect(),
        )
    };
    ResourceRequirements {
        requests: quantities(&[("cpu", "50m"), ("memory", "128Mi")]),
        limits: quantities(&[("memory", "512Mi")]),
        ..ResourceRequirements::default()
    }
}

/// What a newer operator puts in every template by default (the resources, a user namespace)
/// reaches a relay when it is created, or with a rollout its pods go through anyway (a new
/// configuration, a new relay image), never on its own: an upgrade of the operator restarts no
/// relay. So while the running template runs the image and configuration hash the desired one
/// does, a default its spec does not ask for and the running template lacks stays out.
pub fn hold_new_defaults(relay: &SmtpRelay, desired: &mut StatefulSet, live: &StatefulSet) {
    fn relay_container(t: &PodTemplateSpec) -> Option<&Container> {
        t.spec
            .as_ref()?
            .containers
            .iter()
            .find(|c| c.name == CONTAINER_NAME)
    }
    fn config_hash(t: &PodTemplateSpec) -> Option<&String> {
        t.metadata
            .as_ref()?
            .annotations
            .as_ref()?
            .get(CONFIG_HASH_ANNOTATION)
    }
    /// The running template, when it runs the image and configuration the desired one does.
    fn same_pods<'a>(live: &'a StatefulSet, desired: &StatefulSet) -> Option<&'a PodTemplateSpec> {
        let (live, wanted) = (
            &live.spec.as_ref()?.template,
            &desired.spec.as_ref()?.template,
        );
        let (running, new) = (relay_container(live)?, relay_container(wanted)?);
        (new.image == running.image && config_hash(wanted) == config_hash(live)).then_some(live)
    }
    let Some(running) = same_pods(live, desired) else {
        return;
    };
    let resources_unset = relay_container(running)
        .and_then(|c| c.resources.as_ref())
        .is_none_or(|r| r.requests.is_none() && r.limits.is_none() && r.claims.is_none());
    let shares_node_users = running
        .spec
        .as_ref()
        .is_some_and(|p| p.host_users != Some(false));
    let Some(pod) = desired.spec.as_mut().and_then(|s| s.template.spec.as_mut()) else {
        return;
    };
    if relay.spec.host_users.is_none() && shares_node_users {
        pod.host_users = None;
    }
    if relay.spec.resources.is_none() && resources_unset {
        if let Some(c) = pod.containers.iter_mut().find(|c| c.name == CONTAINER_NAME) {
            c.resources = None;
        }
    }
}

/// Postfix's master must start as root and drops to the postfix user itself; everything else
/// is locked down.
pub fn security_context() -> SecurityContext {
    SecurityContext {
        run_as_user: Some(0),
        run_as_non_root: Some(false),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: Some(CAPABILITIES.iter().map(|c| c.to_string()).collect()),
        }),
        seccomp_profile: Some(runtime_default()),
        ..SecurityContext::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    }
}

fn secret_volume(name: &str, secret: String) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret),
            default_mode: Some(SECRET_MODE),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

/// Volumes and their mounts. Secrets are mounted as whole directories (never subPath) so the
/// kubelet swaps files in place and the relay can hot-reload SASL users.
fn volumes(relay: &str, m: &Mounts) -> (Vec<Volume>, Vec<VolumeMount>) {
    let mut vols = vec![Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: Names::config_map(relay),
            default_mode: Some(CONFIG_MODE),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }];
    let mut mounts = vec![mount("config", CONFIG_DIR, true)];
    for (wanted, secret) in [
        (m.relayhost, Mount::Relayhost),
        (m.sasl_users, Mount::SaslUsers),
        (m.tls, Mount::Tls),
    ] {
        if wanted {
            vols.push(secret_volume(secret.volume(), secret.secret_name(relay)));
            mounts.push(mount(secret.volume(), secret.dir(), true));
        }
    }
    vols.push(Volume {
        name: "pod-info".into(),
        downward_api: Some(DownwardAPIVolumeSource {
            items: Some(vec![DownwardAPIVolumeFile {
                path: POD_ANNOTATIONS_FILE.into(),
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.annotations".into(),
                    ..ObjectFieldSelector::default()
                }),
                ..DownwardAPIVolumeFile::default()
            }]),
            default_mode: Some(CONFIG_MODE),
        }),
        ..Volume::default()
    });
    mounts.push(mount("pod-info", POD_INFO_DIR, true));
    if m.service_account.is_some() {
        vols.push(api_access_volume());
        mounts.push(mount(API_ACCESS_VOLUME, SERVICE_ACCOUNT_DIR, true));
    }
    for (name, path) in [("run", RUN_DIR), ("data", DATA_DIR), ("tmp", "/tmp")] {
        vols.push(empty_dir(name));
        mounts.push(mount(name, path, false));
    }
    mounts.push(mount(SPOOL_VOLUME, SPOOL_DIR, false));
    (vols, mounts)
}

const API_ACCESS_VOLUME: &str = "kube-api-access";

/// What the kubelet would automount for the pod's ServiceAccount (a bound token it rotates,
/// the cluster CA, the namespace), at the same place, but readable by root alone: the relay's
/// supervisor reads it; no Postfix process can.
fn api_access_volume() -> Volume {
    Volume {
        name: API_ACCESS_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(SECRET_MODE),
            sources: Some(vec![
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        path: "token".into(),
                        // As the kubelet's own: an hour, rotated at 80 %.
                        expiration_seconds: Some(3607),
                        ..ServiceAccountTokenProjection::default()
                    }),
                    ..VolumeProjection::default()
                },
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: "kube-root-ca.crt".into(),
                        items: Some(vec![KeyToPath {
                            key: "ca.crt".into(),
                            path: "ca.crt".into(),
                            ..KeyToPath::default()
                        }]),
                        ..ConfigMapProjection::default()
                    }),
                    ..VolumeProjection::default()
                },
                VolumeProjection {
                    downward_api: Some(DownwardAPIProjection {
                        items: Some(vec![DownwardAPIVolumeFile {
                            path: "namespace".into(),
                            field_ref: Some(ObjectFieldSelector {
                                field_path: "metadata.namespace".into(),
                                ..ObjectFieldSelector::default()
                            }),
                            ..DownwardAPIVolumeFile::default()
                        }]),
                    }),
                    ..VolumeProjection::default()
                },
            ]),
        }),
        ..Volume::default()
    }
}

/// Pod annotations a plain Prometheus scrapes by (`kubernetes_sd_configs` with the usual
/// relabelling).
const PROMETHEUS_SCRAPE: [(&str, &str); 3] = [
    ("prometheus.io/scrape", "true"),
    ("prometheus.io/port", "9154"),
    ("prometheus.io/path", "/metrics"),
];

/// Pod annotations that keep Istio and Linkerd from intercepting the SMTP port.
const MESH_SKIP_SMTP: [(&str, &str); 2] = [
    ("traffic.sidecar.istio.io/excludeInboundPorts", "25"),
    ("config.linkerd.io/skip-inbound-ports", "25"),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::relay;

    fn sts(mounts: Mounts) -> StatefulSet {
        stateful_set(&relay("r1"), &mounts, "abc", &BuildOptions::default()).expect("builds")
    }

    fn pod(s: &StatefulSet) -> PodSpec {
        s.spec
            .as_ref()
            .and_then(|s| s.template.spec.clone())
            .expect("pod spec")
    }

    /// Issue 39: relay pods are no longer BestEffort: a spec without resources gets the
    /// defaults; a spec with its own keeps them whole.
    #[test]
    fn relay_pods_get_default_resources_unless_the_spec_gives_some() {
        let c = pod(&sts(Mounts::default())).containers[0].clone();
        assert_eq!(c.resources, Some(default_resources()));
        let r = c.resources.expect("resources");
        assert_eq!(r.requests.expect("requests")["memory"].0, "128Mi");
        assert!(
            !r.limits.expect("limits").contains_key("cpu"),
            "no CPU limit"
        );
        let mut mine = relay("r1");
        let own = ResourceRequirements {
            requests: Some([("cpu".to_string(), Quantity("1".into()))].into()),
            ..ResourceRequirements::default()
        };
        mine.spec.resources = Some(own.clone());
        let s = stateful_set(&mine, &Mounts::default(), "abc", &BuildOptions::default())
            .expect("builds");
        assert_eq!(pod(&s).containers[0].resources, Some(own));
    }

    /// The defaults never roll a relay by themselves: a running template without resources
    /// keeps none while its image and configuration hash stay; a new configuration, a new
    /// image or a relay created now gets them.
    #[test]
    fn default_resources_wait_for_a_rollout_that_happens_anyway() {
        let r = relay("r1");
        let opts = BuildOptions::default();
        let build = |hash: &str| stateful_set(&r, &Mounts::default(), hash, &opts).expect("builds");
        let resources = |s: &StatefulSet| pod(s).containers[0].resources.clone();
        let mut old_operator = build("abc");
        if let Some(p) = old_operator
            .spec
            .as_mut()
            .and_then(|s| s.template.spec.as_mut())
        {
            p.containers[0].resources = Some(ResourceRequirements::default());
        }
        let mut same = build("abc");
        hold_new_defaults(&r, &mut same, &old_operator);
        assert_eq!(
            resources(&same),
            None,
            "an operator upgrade alone rolls nothing"
        );
        let mut new_config = build("def");
        hold_new_defaults(&r, &mut new_config, &old_operator);
        assert_eq!(resources(&new_config), Some(default_resources()));
        let mut new_image = build("abc");
        if let Some(p) = new_image
            .spec
            .as_mut()
            .and_then(|s| s.template.spec.as_mut())
        {
            p.containers[0].image = Some("relay:2".into());
        }
        hold_new_defaults(&r, &mut new_image, &old_operator);
        assert_eq!(resources(&new_image), Some(default_resources()));
        let running_defaults = build("abc");
        let mut again = build("abc");
        hold_new_defaults(&r, &mut again, &running_defaults);
        assert_eq!(
            resources(&again),
            Some(default_resources()),
            "kept once there"
        );
    }

    /// Issue 32: root in a relay pod is an unprivileged UID on the node unless the spec, or the
    /// operator for every relay, says the pods share the node's users.
    #[test]
    fn relay_pods_get_their_own_user_namespace_unless_told_otherwise() {
        let host_users = |spec: Option<bool>, user_namespaces: bool| {
            let mut r = relay("r1");
            r.spec.host_users = spec;
            let opts = BuildOptions {
                user_namespaces,
                ..BuildOptions::default()
            };
            pod(&stateful_set(&r, &Mounts::default(), "abc", &opts).expect("builds")).host_users
        };
        assert_eq!(host_users(None, true), Some(false), "the default");
        assert_eq!(host_users(Some(true), true), None, "the spec opts out");
        assert_eq!(host_users(None, false), None, "the operator opts out");
        assert_eq!(host_users(Some(false), false), Some(false), "the spec wins");
    }

    /// A relay that ran before user namespaces were the default keeps sharing the node's users
    /// until its pods roll anyway; one that runs in its own keeps it.
    #[test]
    fn a_user_namespace_waits_for_a_rollout_that_happens_anyway() {
        let r = relay("r1");
        let opts = BuildOptions::default();
        let build = |hash: &str| stateful_set(&r, &Mounts::default(), hash, &opts).expect("builds");
        let mut old_operator = build("abc");
        if let Some(p) = old_operator
            .spec
            .as_mut()
            .and_then(|s| s.template.spec.as_mut())
        {
            p.host_users = None;
        }
        let mut same = build("abc");
        hold_new_defaults(&r, &mut same, &old_operator);
        assert_eq!(
            pod(&same).host_users,
            None,
            "an operator upgrade alone rolls nothing"
        );
        assert_eq!(same, old_operator, "nothing else differs");
        let mut new_config = build("def");
        hold_new_defaults(&r, &mut new_config, &old_operator);
        assert_eq!(pod(&new_config).host_users, Some(false));
        let mut again = build("abc");
        hold_new_defaults(&r, &mut again, &build("abc"));
        assert_eq!(pod(&again).host_users, Some(false), "kept once there");
        // Asked for in the spec: not held.
        let mut asked = relay("r1");
        asked.spec.host_users = Some(false);
        let mut wanted = stateful_set(&asked, &Mounts::default(), "abc", &opts).expect("builds");
        hold_new_defaults(&asked, &mut wanted, &old_operator);
        assert_eq!(pod(&wanted).host_users, Some(false));
    }

    #[test]
    fn the_service_account_token_is_readable_by_root_alone() {
        let p = pod(&sts(Mounts {
            service_account: Some("r1-oauth2".into()),
            ..Mounts::default()
        }));
        assert_eq!(p.service_account_name.as_deref(), Some("r1-oauth2"));
        assert_eq!(
            p.automount_service_account_token,
            Some(false),
            "the kubelet's automounted token is 0644: the postfix user could read it"
        );
        let vol = p
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == API_ACCESS_VOLUME)
            .expect("the token's own volume");
        let projected = vol.projected.as_ref().expect("projected");
        assert_eq!(projected.default_mode, Some(0o400));
        let sources = projected.sources.as_ref().expect("sources");
        assert!(sources.iter().any(|s| s
            .service_account_token
            .as_ref()
            .is_some_and(|t| t.path == "token")));
        let c = &p.containers[0];
        let m = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == API_ACCESS_VOLUME)
            .expect("mounted");
        assert_eq!(
            (m.mount_path.as_str(), m.read_only),
            (SERVICE_ACCOUNT_DIR, Some(true))
        );
        // Without a ServiceAccount, no token at all.
        let p = pod(&sts(Mounts::default()));
        assert!(!p
            .volumes
            .iter()
            .flatten()
            .any(|v| v.name == API_ACCESS_VOLUME));
    }

    const ALL: Mounts = Mounts {
        relayhost: true,
        sasl_users: true,
        tls: true,
        service_account: None,
    };

    #[test]
    fn container_contract() {
        let p = pod(&sts(ALL));
        let c = &p.containers[0];
        assert_eq!(c.name, "relay");
        assert_eq!(
            p.termination_grace_period_seconds,
            Some(60),
            "the default drain of 25 s, and 35 s to stop Postfix"
        );
        assert_eq!(
            c.termination_message_policy.as_deref(),
            Some("FallbackToLogsOnError"),
            "unchanged, so an upgrade of the operator rolls no relay"
        );
        assert_eq!(
            c.image.as_deref(),
            Some(crate::floor::contract::DEFAULT_RELAY_IMAGE)
        );
        assert!(crate::floor::contract::DEFAULT_RELAY_IMAGE
            .starts_with("ghcr.io/smtp-relay-operator/smtp-relay:"));
        assert_eq!(
            c.command.clone().expect("command"),
            [
                "smtp-relay",
                "run",
                "--config",
                "/etc/smtp-relay/config/relay.yaml"
            ]
        );
        let env: Vec<(String, String)> = c
            .env
            .clone()
            .expect("env")
            .into_iter()
            .map(|e| (e.name, e.value.unwrap_or_default()))
            .collect();
        assert_eq!(
            env,
            [
                ("RELAY_LISTEN", "[::]:25"),
                ("RELAY_POSTFIX_DIR", "/run/smtp-relay/postfix"),
                ("RELAY_DATA_DIR", "/data"),
                ("RELAY_SPOOL_DIR", "/var/spool/postfix"),
                ("RELAY_METRICS_LISTEN", "[::]:9154"),
                ("RELAY_DRAIN_TIMEOUT", "25"),
                ("RELAY_POD_ANNOTATIONS", "/etc/smtp-relay/pod/annotations"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        let ports: Vec<_> = c
            .ports
            .clone()
            .expect("ports")
            .into_iter()
            .map(|p| (p.name.unwrap_or_default(), p.container_port))
            .collect();
        assert_eq!(
            ports,
            [("smtp".to_string(), 25), ("metrics".to_string(), 9154)]
        );
        let command = |probe: &Option<Probe>| {
            probe
                .as_ref()
                .and_then(|p| p.exec.as_ref())
                .and_then(|e| e.command.clone())
                .expect("exec probe")
        };
        // SMTP decides readiness; liveness never opens an SMTP session.
        assert_eq!(
            command(&c.readiness_probe),
            ["smtp-relay", "probe", "--readiness"]
        );
        assert_eq!(command(&c.startup_probe), ["smtp-relay", "probe"]);
        assert_eq!(
            command(&c.liveness_probe),
            ["smtp-relay", "probe", "--liveness"]
        );
    }

    #[test]
    fn image_overrides() {
        let mut r = relay("r1");
        let opts = BuildOptions {
            relay_image: "registry.local/relay:dev".into(),
            ..BuildOptions::default()
        };
        let s = stateful_set(&r, &Mounts::default(), "h", &opts).expect("builds");
        assert_eq!(
            pod(&s).containers[0].image.as_deref(),
            Some("registry.local/relay:dev")
        );
        r.spec.image = Some("mine:1".into());
        r.spec.image_pull_policy = Some(crate::floor::crd::PullPolicy::Always);
        let s = stateful_set(&r, &Mounts::default(), "h", &opts).expect("builds");
        assert_eq!(pod(&s).containers[0].image.as_deref(), Some("mine:1"));
        assert_eq!(
            pod(&s).containers[0].image_pull_policy.as_deref(),
            Some("Always")
        );
    }

    #[test]
    fn mounts_are_whole_directories_with_tight_modes() {
        let s = sts(ALL);
        let p = pod(&s);
        let mounts: Vec<(String, String, bool)> = p.containers[0]
            .volume_mounts
            .clone()
            .expect("mounts")
            .into_iter()
            .map(|m| {
                assert!(
                    m.sub_path.is_none(),
                    "no subPath: hot reload needs directory mounts"
                );
                (m.name, m.mount_path, m.read_only.unwrap_or(false))
            })
            .collect();
        let expect = [
            ("config", "/etc/smtp-relay/config", true),
            ("relayhost", "/etc/smtp-relay/relayhost", true),
            ("sasl-users", "/etc/smtp-relay/sasl-users", true),
            ("tls", "/etc/smtp-relay/tls", true),
            ("pod-info", "/etc/smtp-relay/pod", true),
            ("run", "/run/smtp-relay", false),
            ("data", "/data", false),
            ("tmp", "/tmp", false),
            ("spool", "/var/spool/postfix", false),
        ]
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c));
        assert_eq!(mounts, expect);
        for v in p.volumes.clone().expect("volumes") {
            if let Some(sec) = v.secret {
                let mode = sec.default_mode.expect("mode");
                assert!(
                    mode == 0o400 || mode == 0o440,
                    "{} has mode {mode:o}",
                    v.name
                );
                assert_eq!(sec.secret_name, Some(format!("r1-{}", v.name)));
            }
        }
        let cm = p
            .volumes
            .expect("volumes")
            .into_iter()
            .find(|v| v.name == "config")
            .and_then(|v| v.config_map)
            .expect("cm");
        assert_eq!(cm.name, "r1-config");
    }

    #[test]
    fn optional_secret_volumes_only_when_present() {
        let p = pod(&sts(Mounts::default()));
        let names: Vec<_> = p
            .volumes
            .expect("volumes")
            .into_iter()
            .map(|v| v.name)
            .collect();
        assert_eq!(names, ["config", "pod-info", "run", "data", "tmp"]);
    }

    #[test]
    fn security_context_is_locked_down() {
        let p = pod(&sts(ALL));
        let sc = p.containers[0].security_context.clone().expect("sc");
        assert_eq!(sc.run_as_user, Some(0));
        assert_eq!(sc.run_as_non_root, Some(false));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        let caps = sc.capabilities.expect("caps");
        assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
        assert_eq!(
            caps.add.expect("add"),
            [
                "CHOWN",
                "DAC_OVERRIDE",
                "FOWNER",
                "SETUID",
                "SETGID",
                "NET_BIND_SERVICE",
                "KILL"
            ]
        );
        assert_eq!(
            sc.seccomp_profile.map(|s| s.type_),
            Some("RuntimeDefault".into())
        );
        assert_eq!(p.automount_service_account_token, Some(false));
    }

    #[test]
    fn retention_and_claim_template() {
        let mut r = relay("r1");
        r.spec.storage.retention.when_deleted = RetentionPolicy::Delete;
        r.spec.storage.size = "5Gi".into();
        r.spec.storage.storage_class_name = Some("fast".into());
        let s =
            stateful_set(&r, &Mounts::default(), "h", &BuildOptions::default()).expect("builds");
        let spec = s.spec.expect("spec");
        let pol = spec
            .persistent_volume_claim_retention_policy
            .expect("policy");
        assert_eq!(
            pol.when_deleted.as_deref(),
            Some("Retain"),
            "the operator deletes the volumes itself, after the drain"
        );
        assert_eq!(pol.when_scaled.as_deref(), Some("Retain"));
        let claim = &spec.volume_claim_templates.expect("claims")[0];
        assert_eq!(claim.metadata.name.as_deref(), Some("spool"));
        let cs = claim.spec.clone().expect("claim spec");
        assert_eq!(cs.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            cs.resources.and_then(|r| r.requests).expect("requests")["storage"].0,
            "5Gi"
        );
        assert_eq!(spec.service_name.as_deref(), Some("r1-headless"));
        assert_eq!(spec.replicas, Some(1));
    }

    #[test]
    fn pod_labels_and_annotations_merge_but_ours_win() {
        let mut r = relay("r1");
        r.spec.pod_labels = BTreeMap::from([
            ("team".into(), "mail".into()),
            ("app.kubernetes.io/instance".into(), "evil".into()),
        ]);
        r.spec.pod_annotations = BTreeMap::from([
            ("x".into(), "y".into()),
            (CONFIG_HASH_ANNOTATION.into(), "forged".into()),
        ]);
        let s = stateful_set(&r, &Mounts::default(), "realhash", &BuildOptions::default())
            .expect("builds");
        let meta = s.spec.expect("spec").template.metadata.expect("meta");
        let labels = meta.labels.expect("labels");
        assert_eq!(labels["team"], "mail");
        assert_eq!(labels["app.kubernetes.io/instance"], "r1");
        let ann = meta.annotations.expect("ann");
        assert_eq!(ann["x"], "y");
        assert_eq!(ann[CONFIG_HASH_ANNOTATION], "realhash");
    }

    #[test]
    fn service_meshes_are_kept_off_the_smtp_port_unless_overridden() {
        let mut r = relay("r1");
        let ann = |r: &SmtpRelay| {
            stateful_set(r, &Mounts::default(), "h", &BuildOptions::default())
                .expect("builds")
                .spec
                .expect("spec")
                .template
                .metadata
                .expect("meta")
                .annotations
                .expect("ann")
        };
        let a = ann(&r);
        assert_eq!(a["traffic.sidecar.istio.io/excludeInboundPorts"], "25");
        assert_eq!(a["config.linkerd.io/skip-inbound-ports"], "25");
        assert_eq!(
            (
                &a["prometheus.io/scrape"],
                &a["prometheus.io/port"],
                &a["prometheus.io/path"]
            ),
            (
                &"true".to_string(),
                &"9154".to_string(),
                &"/metrics".to_string()
            )
        );
        r.spec.pod_annotations =
            BTreeMap::from([("config.linkerd.io/skip-inbound-ports".into(), "".into())]);
        assert_eq!(ann(&r)["config.linkerd.io/skip-inbound-ports"], "");
    }
}
