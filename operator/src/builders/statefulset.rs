//! The relay StatefulSet: one Postfix pod per replica, each with its own queue volume.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    ExecAction, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, SeccompProfile, SecretVolumeSource, SecurityContext, Volume,
    VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::ResourceExt;

use super::{
    child_meta, labels, selector_labels, BuildOptions, Names, CONFIG_DIR, CONFIG_HASH_ANNOTATION,
    CONFIG_KEY, DATA_DIR, METRICS_PORT, RELAYHOST_DIR, RUN_DIR, SASL_USERS_DIR, SMTP_PORT,
    SPOOL_DIR, TLS_DIR,
};
use crate::crd::SmtpRelay;
use crate::Result;

pub const CONTAINER_NAME: &str = "relay";
pub const SPOOL_VOLUME: &str = "spool";
/// Secret files are readable by root only: Postfix's master runs as root and reads them.
const SECRET_MODE: i32 = 0o400;
const CONFIG_MODE: i32 = 0o444;

/// Which optional Secret volumes exist.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mounts {
    pub relayhost: bool,
    pub sasl_users: bool,
    pub tls: bool,
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
    pod_annotations.insert(CONFIG_HASH_ANNOTATION.into(), config_hash.into());

    let (volumes, volume_mounts) = volumes(&name, mounts);
    let pod = PodSpec {
        containers: vec![container(relay, volume_mounts, opts)],
        volumes: Some(volumes),
        // The relay never talks to the Kubernetes API.
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(60),
        security_context: Some(PodSecurityContext {
            seccomp_profile: Some(runtime_default()),
            ..PodSecurityContext::default()
        }),
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
                    when_deleted: Some(retention.when_deleted.as_str().into()),
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
            ..StatefulSetSpec::default()
        }),
        status: None,
    })
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

fn probe(period: i32, timeout: i32, failures: i32) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(vec!["smtp-relay".into(), "probe".into()]),
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
            env("RELAY_LISTEN", format!("0.0.0.0:{SMTP_PORT}")),
            env("RELAY_POSTFIX_DIR", format!("{RUN_DIR}/postfix")),
            env("RELAY_DATA_DIR", DATA_DIR.into()),
            env("RELAY_SPOOL_DIR", SPOOL_DIR.into()),
            env("RELAY_METRICS_LISTEN", format!("0.0.0.0:{METRICS_PORT}")),
        ]),
        ports: Some(vec![
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
        ]),
        startup_probe: Some(probe(5, 5, 60)),
        readiness_probe: Some(probe(10, 5, 3)),
        liveness_probe: Some(probe(30, 10, 3)),
        resources: spec.resources.clone(),
        volume_mounts: Some(volume_mounts),
        security_context: Some(security_context()),
        ..Container::default()
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
    if m.relayhost {
        vols.push(secret_volume("relayhost", Names::relayhost_secret(relay)));
        mounts.push(mount("relayhost", RELAYHOST_DIR, true));
    }
    if m.sasl_users {
        vols.push(secret_volume("sasl-users", Names::sasl_users_secret(relay)));
        mounts.push(mount("sasl-users", SASL_USERS_DIR, true));
    }
    if m.tls {
        vols.push(secret_volume("tls", Names::tls_secret(relay)));
        mounts.push(mount("tls", TLS_DIR, true));
    }
    for (name, path) in [("run", RUN_DIR), ("data", DATA_DIR), ("tmp", "/tmp")] {
        vols.push(empty_dir(name));
        mounts.push(mount(name, path, false));
    }
    mounts.push(mount(SPOOL_VOLUME, SPOOL_DIR, false));
    (vols, mounts)
}
