//! Golden files of what users see: every child object the operator makes for each example
//! SmtpRelay of the chart, as YAML (`operator/tests/golden/<example>/`), so a change to a
//! builder shows as a diff in review. Secret values are left out (their lengths stay), the
//! issued certificate is a fixed placeholder. Regenerate with
//! `UPDATE_GOLDEN=1 cargo test -p smtp-relay-operator --lib golden`.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Secret;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::fixtures;
use crate::floor::contract::BuildOptions;
use crate::floor::crd::SmtpRelay;
use crate::floor::inputs::{Authority, CaPair, TlsPair};
use crate::floor::verdict::Desired;
use crate::observe::mapping::referenced_secrets;
use crate::steps::build;
use crate::steps::resolve::fake::FakeRefs;
use crate::steps::resolve::resolve;

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/smtp-relay-operator/examples")
}

/// The placeholder Secrets that stand in for the ones an example references
/// (`operator/tests/example-secrets/<example>.yaml`). The examples hold no Secret: users create
/// theirs with the commands in each example's comments.
fn example_secrets_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/example-secrets")
}

/// The example's SmtpRelay (in namespace `mail`, as the API server returns it) and the
/// Secrets it references, from its test fixture.
fn example(path: &Path) -> (SmtpRelay, FakeRefs) {
    let text = std::fs::read_to_string(path).expect("example");
    let mut relay = None;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = Value::deserialize(doc).expect("yaml");
        match v["kind"].as_str() {
            Some("SmtpRelay") => {
                let mut r: SmtpRelay = serde_json::from_value(v).expect("an SmtpRelay");
                r.metadata.namespace = Some("mail".into());
                r.metadata.uid = Some("00000000-0000-4000-8000-000000000001".into());
                r.metadata.generation = Some(1);
                relay = Some(r);
            }
            other => panic!("{}: unexpected kind {other:?}", path.display()),
        }
    }
    let relay = relay.expect("one SmtpRelay per example");
    let stem = path.file_stem().expect("a file name").to_string_lossy();
    let fixture = example_secrets_dir().join(format!("{stem}.yaml"));
    let mut refs = FakeRefs::default();
    let fixture_text = std::fs::read_to_string(&fixture).unwrap_or_default();
    for doc in serde_yaml::Deserializer::from_str(&fixture_text) {
        let v = Value::deserialize(doc).expect("yaml");
        if v.is_null() {
            continue;
        }
        assert_eq!(v["kind"], "Secret", "{}", fixture.display());
        let name = v["metadata"]["name"].as_str().expect("a name").to_string();
        let data = v["stringData"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str().unwrap_or_default().as_bytes().to_vec(),
                )
            })
            .collect();
        refs.secrets.insert(name, data);
    }
    for name in referenced_secrets(&relay.spec) {
        assert!(
            refs.secrets.contains_key(name),
            "{} references Secret {name:?}: put a placeholder for it in {}",
            path.display(),
            fixture.display()
        );
    }
    (relay, refs)
}

/// Every child of a relay, with Secret values replaced by their length.
fn children(d: &Desired) -> Vec<(String, Value)> {
    fn doc<T: Serialize + kube::Resource<DynamicType = ()>>(o: &T) -> (String, Value) {
        let kind = T::kind(&()).to_lowercase();
        (
            format!("{kind}-{}", o.meta().name.clone().unwrap_or_default()),
            serde_json::to_value(o).expect("json"),
        )
    }
    let secret = |s: &Secret| {
        let (name, mut value) = doc(s);
        let lengths: serde_json::Map<String, Value> = s
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), Value::from(format!("<{} bytes>", v.0.len()))))
            .collect();
        value["data"] = Value::Object(lengths);
        (name, value)
    };
    let Desired {
        config_map,
        hash_key_secret,
        relayhost_secret,
        sasl_users_secret,
        tls_secret,
        ca_key_secret,
        ca_config_map,
        service,
        headless_service,
        stateful_set,
        oauth2_sharing,
        pdb,
        network_policy,
        drain_guard,
    } = d;
    let mut out = vec![doc(config_map), secret(hash_key_secret)];
    out.extend(drain_guard.iter().map(doc));
    out.extend(ca_config_map.iter().map(doc));
    out.extend(
        [
            ca_key_secret,
            relayhost_secret,
            sasl_users_secret,
            tls_secret,
        ]
        .into_iter()
        .flatten()
        .map(secret),
    );
    if let Some(s) = oauth2_sharing {
        out.extend([
            secret(&s.secret),
            doc(&s.service_account),
            doc(&s.role),
            doc(&s.role_binding),
        ]);
    }
    out.extend([doc(service), doc(headless_service), doc(stateful_set)]);
    out.extend(pdb.iter().map(doc));
    out.extend(network_policy.iter().map(doc));
    out
}

#[test]
fn every_child_of_every_example() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut stale = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .expect("examples")
        .map(|e| e.expect("entry").path())
        .collect();
    paths.sort();
    for path in paths {
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let (relay, refs) = example(&path);
        let mut resolved = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(resolve(&relay, &refs, None))
            .unwrap_or_else(|e| panic!("{stem}: {e}"));
        if crate::steps::certificate::wanted(&relay) {
            resolved.inbound_tls = Some(TlsPair {
                cert: b"-----BEGIN CERTIFICATE-----\n(issued)\n-----END CERTIFICATE-----\n"
                    .to_vec(),
                key: b"-----BEGIN PRIVATE KEY-----\n(issued)\n-----END PRIVATE KEY-----\n".to_vec(),
            });
            resolved.issued_ca = Some(Authority {
                signing: CaPair {
                    cert: b"-----BEGIN CERTIFICATE-----\n(the relay's CA)\n-----END CERTIFICATE-----\n"
                        .to_vec(),
                    key: b"-----BEGIN PRIVATE KEY-----\n(the CA's)\n-----END PRIVATE KEY-----\n"
                        .to_vec(),
                },
                next: None,
                retired: Vec::new(),
            });
        }
        let d = build::build(
            &fixtures::validated(&relay, resolved),
            &fixtures::hash_key(),
            &BuildOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{stem}: {e}"))
        .desired;
        let dir = golden.join(&stem);
        if update {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("golden dir");
        }
        for (name, value) in children(&d) {
            let file = dir.join(format!("{name}.yaml"));
            let text = serde_yaml::to_string(&value).expect("yaml");
            if update {
                std::fs::write(&file, &text).expect("write");
            } else if std::fs::read_to_string(&file).ok().as_deref() != Some(text.as_str()) {
                stale.push(file.display().to_string());
            }
        }
    }
    assert!(
        stale.is_empty(),
        "these golden files differ from what the operator builds now; if the change is meant, \
         run UPDATE_GOLDEN=1 cargo test -p smtp-relay-operator --lib golden and review the diff:\n{}",
        stale.join("\n")
    );
}
