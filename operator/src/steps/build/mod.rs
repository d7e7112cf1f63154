//! Pure functions from an `SmtpRelay` (and its resolved references) to every object it owns.
//! Nothing here talks to the API, so the whole desired state is computable in tests.

pub mod configmap;
pub mod hash;
pub mod network_policy;
pub mod oauth2;
pub mod pdb;
pub mod secrets;
pub mod service;
pub mod statefulset;

use crate::floor::contract::{BuildOptions, REVISION_KEY};
use crate::floor::error::Result;
use crate::floor::inputs::HashKey;
use crate::floor::verdict::{Applying, Desired};
use crate::steps::judge::Validated;

/// Builds the desired state of a [`Validated`] relay. `hash_key` keys the config hash (see
/// [`hash::config_hash`]); the resolver reads it back from the owned Secret, or generates it
/// once.
pub fn build(v: &Validated<'_>, hash_key: &HashKey, opts: &BuildOptions) -> Result<Applying> {
    let (relay, resolved) = (v.relay(), v.resolved());
    let mut config_map = configmap::config_map(relay, v.relay_config_file())?;
    let relayhost_secret = secrets::relayhost_secret(relay, resolved)?;
    let sasl_users_secret = secrets::sasl_users_secret(relay, resolved)?;
    let tls_secret = secrets::tls_secret(relay, resolved)?;
    let hash_key_secret = secrets::hash_key_secret(relay, hash_key)?;
    let ca_key_secret = secrets::ca_key_secret(relay, resolved)?;
    let ca_config_map = configmap::ca_config_map(relay, resolved)?;
    let oauth2_sharing = oauth2::sharing(relay, resolved)?;
    // Hashed in its stable form (see `RelayConfigFile::hash_form`): a relay whose Postfix
    // configuration is the same keeps its hash, and its pods, across an operator upgrade. A
    // certificate the operator issued is left out: the kubelet updates the mounted Secret and
    // the relay reloads Postfix for it, so a renewal restarts no pod.
    let hashed_tls = tls_secret.as_ref().filter(|_| resolved.issued_ca.is_none());
    let config_hash = hash::config_hash(
        hash_key,
        &configmap::config_map(relay, &v.relay_config_file().hash_form())?,
        relayhost_secret.as_ref(),
        hashed_tls,
    );
    // Which configuration `relay.yaml` is, for the pods to tell theirs (outside the hash it
    // names).
    config_map
        .data
        .get_or_insert_with(Default::default)
        .insert(REVISION_KEY.into(), config_hash.clone());
    let stateful_set = statefulset::stateful_set(
        relay,
        &statefulset::Mounts {
            relayhost: relayhost_secret.is_some(),
            sasl_users: sasl_users_secret.is_some(),
            tls: tls_secret.is_some(),
            service_account: oauth2_sharing
                .as_ref()
                .and_then(|s| s.service_account.metadata.name.clone()),
        },
        &config_hash,
        opts,
    )?;
    let desired = Desired {
        config_map,
        hash_key_secret,
        relayhost_secret,
        sasl_users_secret,
        tls_secret,
        ca_key_secret,
        ca_config_map,
        service: service::service(relay)?,
        headless_service: service::headless_service(relay)?,
        stateful_set,
        oauth2_sharing,
        pdb: pdb::pdb(relay)?,
        network_policy: network_policy::network_policy(relay, opts)?,
        drain_guard: configmap::drain_guard(relay)?,
    };
    Ok(Applying {
        desired,
        config_hash,
        certificate_issued: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{hash_key, relay, validated};
    use crate::floor::contract::selector_labels;
    use crate::floor::contract::CONFIG_HASH_ANNOTATION;
    use crate::floor::contract::CONFIG_KEY;
    use crate::floor::contract::HASH_KEY_KEY;
    use crate::floor::crd::SmtpRelay;
    use crate::floor::error::Error;
    use crate::floor::inputs::HASH_KEY_LEN;
    use crate::floor::inputs::{RelayhostLogin, Resolved, TlsPair};
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::api::core::v1::Secret;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use std::collections::BTreeMap;

    fn full_resolved() -> Resolved {
        Resolved {
            relayhost_login: Some(RelayhostLogin {
                username: "login".into(),
                password: b"secret-pw".to_vec(),
            }),
            relayhost_oauth2: None,
            relayhost_ca: Some(
                b"-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n".to_vec(),
            ),
            sasl_users: Some(BTreeMap::from([("app1".to_string(), b"pw1".to_vec())])),
            inbound_tls: Some(TlsPair {
                cert: b"CERT".to_vec(),
                key: b"KEY".to_vec(),
            }),
            issued_ca: None,
        }
    }

    fn hash_ok(r: &SmtpRelay, res: &Resolved) -> String {
        applying_ok(r, res).config_hash
    }

    fn build_ok(r: &SmtpRelay, res: &Resolved) -> Desired {
        applying_ok(r, res).desired
    }

    fn applying_ok(r: &SmtpRelay, res: &Resolved) -> Applying {
        build(
            &validated(r, res.clone()),
            &hash_key(),
            &BuildOptions::default(),
        )
        .expect("builds")
    }

    #[test]
    fn children_carry_labels_and_controller_owner() {
        let r = relay("r1");
        let d = build_ok(&r, &full_resolved());
        let metas = [
            &d.config_map.metadata,
            &d.service.metadata,
            &d.headless_service.metadata,
            &d.stateful_set.metadata,
            &d.relayhost_secret.as_ref().expect("relayhost").metadata,
            &d.sasl_users_secret.as_ref().expect("sasl").metadata,
            &d.tls_secret.as_ref().expect("tls").metadata,
        ];
        for m in metas {
            let l = m.labels.as_ref().expect("labels");
            assert_eq!(l["app.kubernetes.io/name"], "smtp-relay");
            assert_eq!(l["app.kubernetes.io/instance"], "r1");
            assert_eq!(l["app.kubernetes.io/managed-by"], "smtp-relay-operator");
            assert!(l.contains_key("app.kubernetes.io/component"));
            let o = &m.owner_references.as_ref().expect("owner")[0];
            assert_eq!(
                (o.kind.as_str(), o.name.as_str(), o.controller),
                ("SmtpRelay", "r1", Some(true))
            );
            assert_eq!(m.namespace.as_deref(), Some("mail"));
        }
        assert_eq!(d.config_map.metadata.name.as_deref(), Some("r1-config"));
        assert_eq!(
            d.headless_service.metadata.name.as_deref(),
            Some("r1-headless")
        );
    }

    #[test]
    fn relay_without_uid_is_an_error_not_a_panic() {
        let mut r = relay("r1");
        r.metadata.uid = None;
        assert!(matches!(
            build(
                &validated(&r, Resolved::default()),
                &hash_key(),
                &BuildOptions::default()
            ),
            Err(Error::MissingObjectKey(_))
        ));
    }

    #[test]
    fn secrets_are_copies_with_fixed_keys() {
        let d = build_ok(&relay("r1"), &full_resolved());
        let rh = d.relayhost_secret.expect("relayhost");
        let keys: Vec<_> = rh.data.as_ref().expect("data").keys().cloned().collect();
        assert_eq!(keys, ["ca.crt", "password", "username"]);
        assert_eq!(rh.data.as_ref().expect("data")["password"].0, b"secret-pw");
        let tls = d.tls_secret.expect("tls");
        assert_eq!(tls.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(
            d.sasl_users_secret.expect("sasl").data.expect("data")["app1"].0,
            b"pw1"
        );
    }

    #[test]
    fn no_references_no_secrets() {
        let d = build_ok(&relay("r1"), &Resolved::default());
        assert!(
            d.relayhost_secret.is_none() && d.sasl_users_secret.is_none() && d.tls_secret.is_none()
        );
    }

    #[test]
    fn config_map_holds_no_secret_values() {
        let d = build_ok(&relay("r1"), &full_resolved());
        let yaml = &d.config_map.data.as_ref().expect("data")[CONFIG_KEY];
        for secret in ["secret-pw", "pw1", "KEY", "CERT"] {
            assert!(!yaml.contains(secret), "{secret} leaked into relay.yaml");
        }
        assert!(yaml.contains("/etc/smtp-relay/relayhost/password"));
    }

    #[test]
    fn hash_changes_with_config_and_relayhost_secret_but_not_sasl_users() {
        let r = relay("r1");
        let base = hash_ok(&r, &full_resolved());

        let mut users = full_resolved();
        users.sasl_users = Some(BTreeMap::from([
            ("app1".to_string(), b"other".to_vec()),
            ("app2".to_string(), b"new".to_vec()),
        ]));
        assert_eq!(hash_ok(&r, &users), base, "SASL users are hot-reloaded");

        let mut pw = full_resolved();
        if let Some(l) = pw.relayhost_login.as_mut() {
            l.password = b"rotated".to_vec();
        }
        assert_ne!(hash_ok(&r, &pw), base);

        let mut tls = full_resolved();
        tls.inbound_tls = Some(TlsPair {
            cert: b"CERT2".to_vec(),
            key: b"KEY".to_vec(),
        });
        assert_ne!(hash_ok(&r, &tls), base);

        let mut r2 = r.clone();
        r2.spec.domain = "example.org".into();
        assert_ne!(hash_ok(&r2, &full_resolved()), base);

        // Status-only or pod-cosmetic changes do not roll the pods.
        let mut r3 = r.clone();
        r3.spec.replicas = 3;
        assert_eq!(hash_ok(&r3, &full_resolved()), base);
    }

    #[test]
    fn a_rotated_refresh_token_does_not_roll_the_pods() {
        let cm = ConfigMap::default();
        let relayhost = |pairs: &[(&str, &str)]| Secret {
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            k8s_openapi::ByteString(v.as_bytes().to_vec()),
                        )
                    })
                    .collect(),
            ),
            ..Secret::default()
        };
        let hash = |s: &Secret| hash::config_hash(&hash_key(), &cm, Some(s), None);
        let base = hash(&relayhost(&[
            ("oauth2-client-id", "id"),
            ("oauth2-refresh-token", "rt-1"),
        ]));
        let rotated = hash(&relayhost(&[
            ("oauth2-client-id", "id"),
            ("oauth2-refresh-token", "rt-2"),
        ]));
        let other_app = hash(&relayhost(&[
            ("oauth2-client-id", "id-2"),
            ("oauth2-refresh-token", "rt-1"),
        ]));
        assert_eq!(base, rotated);
        assert_ne!(base, other_app);
    }

    #[test]
    fn config_hash_is_keyed_and_stable() {
        let r = relay("r1");
        let a = hash_ok(&r, &full_resolved());
        assert_eq!(
            hash_ok(&r, &full_resolved()),
            a,
            "same inputs and key, same hash"
        );
        let other = HashKey::from_bytes([8; HASH_KEY_LEN]);
        let b = build(
            &validated(&r, full_resolved()),
            &other,
            &BuildOptions::default(),
        )
        .expect("builds")
        .config_hash;
        assert_ne!(b, a, "another key, another hash");
        assert_eq!(b.len(), 64);
    }

    #[test]
    fn hash_key_secret_is_owned_and_never_mounted() {
        let d = build_ok(&relay("r1"), &full_resolved());
        let s = &d.hash_key_secret;
        assert_eq!(s.metadata.name.as_deref(), Some("r1-hash-key"));
        assert_eq!(
            s.data.as_ref().expect("data")[HASH_KEY_KEY].0,
            hash_key().as_bytes()
        );
        let pod = d
            .stateful_set
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod spec");
        let mounted: Vec<_> = pod
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| v.secret.as_ref())
            .filter_map(|s| s.secret_name.clone())
            .collect();
        assert!(!mounted.is_empty());
        assert!(
            !mounted.contains(&"r1-hash-key".to_string()),
            "the key never reaches a pod: {mounted:?}"
        );
        let json = serde_json::to_string(&d.stateful_set).expect("json");
        assert!(!json.contains("hash-key"));
    }

    #[test]
    fn config_hash_lands_on_the_pod_template() {
        let Applying {
            desired: d,
            config_hash,
            ..
        } = applying_ok(&relay("r1"), &Resolved::default());
        let ann = d
            .stateful_set
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.clone())
            .expect("annotations");
        assert_eq!(ann[CONFIG_HASH_ANNOTATION], config_hash);
        assert_eq!(config_hash.len(), 64);
    }

    #[test]
    fn pdb_only_with_more_than_one_replica() {
        let mut r = relay("r1");
        assert!(build_ok(&r, &Resolved::default()).pdb.is_none());
        r.spec.replicas = 2;
        let pdb = build_ok(&r, &Resolved::default()).pdb.expect("pdb");
        let spec = pdb.spec.expect("spec");
        assert_eq!(
            spec.max_unavailable,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
        );
        assert_eq!(
            spec.selector.and_then(|s| s.match_labels),
            Some(selector_labels(&r))
        );
    }

    #[test]
    fn an_invalid_spec_never_reaches_the_builders() {
        let mut r = relay("r1");
        r.spec.networks = vec!["10.0.0.0/33".into()];
        assert!(matches!(
            crate::steps::judge::CheckedSpec::new(&r),
            Err(crate::floor::verdict::Outcome::InvalidSpec { .. })
        ));
    }

    /// The relay container's ports, by name.
    fn container_ports(d: &Desired) -> Vec<(String, i32)> {
        let pod = d.stateful_set.spec.clone().unwrap().template.spec.unwrap();
        pod.containers[0]
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.clone().unwrap(), p.container_port))
            .collect()
    }

    #[test]
    fn proxy_protocol_is_a_second_port_the_service_targets() {
        let mut r = relay("r1");
        let plain = applying_ok(&r, &Resolved::default());
        let smtp = |d: &Desired| d.service.spec.clone().unwrap().ports.unwrap()[0].clone();
        assert_eq!(
            smtp(&plain.desired).target_port,
            Some(IntOrString::String("smtp".into()))
        );
        r.spec.service.type_ = crate::floor::crd::ServiceType::LoadBalancer;
        r.spec.service.proxy_protocol = true;
        r.spec.service.proxy_protocol_source_ranges = vec!["10.0.0.0/24".into()];
        let Applying {
            desired: d,
            config_hash,
            ..
        } = applying_ok(&r, &Resolved::default());
        assert_eq!(smtp(&d).port, 25);
        assert_eq!(
            smtp(&d).target_port,
            Some(IntOrString::String("smtp-proxy".into()))
        );
        let ports = container_ports(&d);
        assert!(ports.contains(&("smtp-proxy".into(), 2525)), "{ports:?}");
        let file = crate::steps::judge::relay_config::relay_config_file(&r, &Resolved::default());
        assert_eq!(file.proxy_protocol_port, Some(2525));
        // The headless Service, for clients inside the cluster, keeps the plain port.
        let headless = d.headless_service.spec.unwrap().ports.unwrap();
        assert_eq!(
            headless[0].target_port,
            Some(IntOrString::String("smtp".into()))
        );
        assert_ne!(config_hash, plain.config_hash, "the pods roll");
    }

    /// Issue 27: the submission ports are on the pods, the Service (by name) and in the
    /// NetworkPolicy, and reach the relay's config file; a relay without them writes nothing
    /// new, so it keeps its configuration hash.
    #[test]
    fn submission_ports_open_on_the_pods_the_service_and_the_network_policy() {
        let mut r = relay("r1");
        r.spec.sasl_users_secret_ref = Some(crate::floor::crd::SecretRef { name: "u".into() });
        let resolved = full_resolved();
        let before = applying_ok(&r, &resolved);
        r.spec.submission = Some(crate::floor::crd::SubmissionSpec::default());
        assert_eq!(applying_ok(&r, &resolved).config_hash, before.config_hash);
        r.spec.submission = Some(crate::floor::crd::SubmissionSpec {
            starttls: true,
            implicit_tls: true,
        });
        let d = applying_ok(&r, &resolved).desired;
        let service: Vec<_> = d
            .service
            .spec
            .clone()
            .unwrap()
            .ports
            .unwrap()
            .into_iter()
            .map(|p| (p.name.unwrap(), p.port, p.target_port))
            .collect();
        assert_eq!(
            service[1..],
            [
                (
                    "submission".to_string(),
                    587,
                    Some(IntOrString::String("submission".into()))
                ),
                (
                    "submissions".to_string(),
                    465,
                    Some(IntOrString::String("submissions".into()))
                )
            ]
        );
        let ports = container_ports(&d);
        assert!(ports.contains(&("submission".into(), 587)), "{ports:?}");
        assert!(ports.contains(&("submissions".into(), 465)), "{ports:?}");
        let policy = d.network_policy.expect("a NetworkPolicy").spec.unwrap();
        let open: Vec<_> = policy
            .ingress
            .unwrap()
            .into_iter()
            .filter(|rule| rule.from.is_none())
            .flat_map(|rule| rule.ports.unwrap_or_default())
            .map(|p| p.port)
            .collect();
        assert_eq!(
            open,
            [25, 587, 465].map(|p| Some(IntOrString::Int(p))),
            "SASL users log in from anywhere"
        );
        let file = crate::steps::judge::relay_config::relay_config_file(&r, &resolved);
        let ports = file.submission.expect("the ports reach the relay");
        assert_eq!(
            (ports.starttls_port, ports.implicit_tls_port),
            (Some(587), Some(465))
        );
    }

    #[test]
    fn relay_config_file_points_at_mounted_files() {
        let r = relay("r1");
        let f = crate::steps::judge::relay_config::relay_config_file(&r, &full_resolved());
        assert_eq!(
            f.relayhost.username_file.as_deref(),
            Some(std::path::Path::new("/etc/smtp-relay/relayhost/username"))
        );
        assert_eq!(
            f.relayhost.password_file.as_deref(),
            Some(std::path::Path::new("/etc/smtp-relay/relayhost/password"))
        );
        assert_eq!(
            f.relayhost.tls_ca_file.as_deref(),
            Some(std::path::Path::new("/etc/smtp-relay/relayhost/ca.crt"))
        );
        assert_eq!(
            f.sasl_users_dir.as_deref(),
            Some(std::path::Path::new("/etc/smtp-relay/sasl-users"))
        );
        let tls = f.inbound_tls.expect("tls");
        assert_eq!(
            tls.cert_file,
            std::path::PathBuf::from("/etc/smtp-relay/tls/tls.crt")
        );
        assert_eq!(
            tls.key_file,
            std::path::PathBuf::from("/etc/smtp-relay/tls/tls.key")
        );
        assert_eq!(f.mode, Some(smtp_relay::settings::Mode::Strict));
        assert_eq!(f.custom_restrictions, None);

        let bare = crate::steps::judge::relay_config::relay_config_file(&r, &Resolved::default());
        assert!(
            bare.relayhost.username_file.is_none()
                && bare.sasl_users_dir.is_none()
                && bare.inbound_tls.is_none()
        );

        let mut custom = r.clone();
        custom.spec.custom_restrictions = Some(vec!["permit_mynetworks".into(), "reject".into()]);
        let f = crate::steps::judge::relay_config::relay_config_file(&custom, &Resolved::default());
        assert_eq!(f.mode, None);
        assert_eq!(f.custom_restrictions.as_ref().map(Vec::len), Some(2));
    }

    #[test]
    fn config_map_round_trips_through_the_image_format() {
        let d = build_ok(&relay("r1"), &full_resolved());
        let yaml = &d.config_map.data.as_ref().expect("data")[CONFIG_KEY];
        let back: smtp_relay::config_file::RelayConfigFile =
            serde_yaml::from_str(yaml).expect("image parses it");
        assert_eq!(back.domain, "example.net");
        assert_eq!(back.networks, ["10.0.0.0/24"]);
    }

    #[test]
    fn services() {
        let mut r = relay("r1");
        r.spec.service = serde_json::from_value(serde_json::json!({
            "type": "LoadBalancer", "port": 2525, "annotations": {"a": "b"},
            "externalTrafficPolicy": "Local", "loadBalancerIP": "192.0.2.10"
        }))
        .expect("service spec");
        let d = build_ok(&r, &Resolved::default());
        let s = d.service.spec.expect("spec");
        assert_eq!(s.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(s.external_traffic_policy.as_deref(), Some("Local"));
        assert_eq!(s.load_balancer_ip.as_deref(), Some("192.0.2.10"));
        let p = &s.ports.expect("ports")[0];
        assert_eq!((p.name.as_deref(), p.port), (Some("smtp"), 2525));
        assert_eq!(
            p.target_port,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("smtp".into()))
        );
        assert_eq!(d.service.metadata.annotations.expect("ann")["a"], "b");
        // NodePort and LoadBalancer default to Local (client addresses kept); ClusterIP has none.
        r.spec.service =
            serde_json::from_value(serde_json::json!({"type": "NodePort"})).expect("service spec");
        let np = build_ok(&r, &Resolved::default())
            .service
            .spec
            .expect("spec");
        assert_eq!(np.external_traffic_policy.as_deref(), Some("Local"));
        r.spec.service = serde_json::from_value(serde_json::json!({
            "type": "LoadBalancer", "externalTrafficPolicy": "Cluster"
        }))
        .expect("service spec");
        let lb = build_ok(&r, &Resolved::default())
            .service
            .spec
            .expect("spec");
        assert_eq!(lb.external_traffic_policy.as_deref(), Some("Cluster"));
        let cip = build_ok(&relay("r1"), &Resolved::default())
            .service
            .spec
            .expect("spec");
        assert_eq!(cip.external_traffic_policy, None);
        let h = d.headless_service.spec.expect("spec");
        assert_eq!(h.cluster_ip.as_deref(), Some("None"));
        let names: Vec<_> = h
            .ports
            .expect("ports")
            .into_iter()
            .filter_map(|p| p.name)
            .collect();
        assert_eq!(names, ["smtp", "metrics"]);
    }

    /// Issue 26: with a certificate the operator issues, its CA's key is in `<name>-ca-key`,
    /// which no pod mounts; clients get the CA's certificate, and no key, in `<name>-ca` (and
    /// `ca.crt` of `<name>-tls`); `tls.crt` is the chain. A renewed certificate leaves the
    /// config hash, and so the pod template, as it was: no pod restarts.
    #[test]
    fn an_issued_certificate_comes_with_its_ca_and_renews_without_a_roll() {
        use crate::steps::certificate;
        let mut r = relay("r1");
        r.spec.sasl_users_secret_ref = Some(crate::floor::crd::SecretRef { name: "u".into() });
        let now = 1_795_000_000;
        let ca = certificate::new_ca("mail/r1", now).expect("a CA");
        let authority = certificate::Authority {
            signing: ca.clone(),
            next: None,
            retired: Vec::new(),
        };
        let with = |leaf: certificate::Issued| Resolved {
            sasl_users: Some(BTreeMap::from([("app1".to_string(), b"pw1".to_vec())])),
            inbound_tls: Some(TlsPair {
                cert: leaf.cert,
                key: leaf.key,
            }),
            issued_ca: Some(authority.clone()),
            ..Resolved::default()
        };
        let names = certificate::names(&r);
        let first = with(certificate::issue(&names, &ca, now).expect("issued"));
        let renewed = with(certificate::issue(&names, &ca, now + 61 * 86_400).expect("renewed"));
        let (a, b) = (applying_ok(&r, &first), applying_ok(&r, &renewed));
        assert_eq!(a.config_hash, b.config_hash);
        assert_eq!(
            serde_json::to_value(&a.desired.stateful_set).unwrap(),
            serde_json::to_value(&b.desired.stateful_set).unwrap()
        );
        assert_ne!(a.desired.tls_secret, b.desired.tls_secret);

        let d = a.desired;
        let key = d.ca_key_secret.expect("the CA's key is kept");
        assert_eq!(key.metadata.name.as_deref(), Some("r1-ca-key"));
        assert_eq!(
            key.data.as_ref().unwrap()["ca.key"].0,
            ca.key,
            "the key the CA signs with"
        );
        let cm = d.ca_config_map.expect("the CA is published");
        assert_eq!(cm.metadata.name.as_deref(), Some("r1-ca"));
        assert_eq!(
            cm.metadata.owner_references.as_ref().unwrap()[0].uid,
            "uid-1"
        );
        let published = serde_json::to_string(&cm).unwrap();
        assert!(!published.contains("PRIVATE KEY"), "{published}");
        assert_eq!(cm.data.unwrap()["ca.crt"].as_bytes(), ca.cert);
        let tls = d.tls_secret.expect("tls").data.expect("data");
        assert_eq!(tls["ca.crt"].0, ca.cert);
        assert!(
            tls["tls.crt"].0.ends_with(&ca.cert),
            "the chain ends in the CA"
        );
        let pod = serde_json::to_string(&d.stateful_set).unwrap();
        assert!(
            !pod.contains("r1-ca-key") && !pod.contains("r1-ca\""),
            "{pod}"
        );
    }
}
