//! The parity of the two judges of a relay's input: every case of `operator/tests/parity.yaml`
//! is judged by the operator (its whole `plan`, against Secrets in memory) and by the relay
//! image (the `relay.yaml` and Secret files the operator would write, read from disk by the
//! relay's own `inputs::file::load` and `sasl::load`), and both must agree. The operator's
//! refusal names what the user wrote, never a file of the relay pods (issue 24).

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

use crate::controller::plan;
use crate::fixtures;
use crate::floor::contract::BuildOptions;
use crate::floor::crd::{CredentialsSecretRef, SecretRef, SmtpRelay};
use crate::floor::inputs::{RelayhostLogin, Resolved, TlsPair};
use crate::floor::verdict::Plan;
use crate::steps::resolve::fake::FakeRefs;

#[derive(Deserialize)]
struct Corpus {
    bad: Vec<Case>,
    good: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    #[serde(default)]
    spec: Option<Value>,
    #[serde(default)]
    login: Option<Login>,
    #[serde(default)]
    users: BTreeMap<String, String>,
    #[serde(default)]
    says: String,
    /// What only the operator's refusal says: the reference the user wrote, where the relay
    /// names its file.
    #[serde(default)]
    operator_says: Option<String>,
}

#[derive(Deserialize)]
struct Login {
    username: String,
    password: String,
}

/// A value of the corpus as bytes: `base64:` for what is not text.
fn bytes(v: &str) -> Vec<u8> {
    match v.strip_prefix("base64:") {
        Some(b) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .expect("base64 in the corpus"),
        None => v.as_bytes().to_vec(),
    }
}

fn merge(into: &mut Value, patch: &Value) {
    match (into, patch) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b.clone(),
    }
}

/// The relay of a case, referencing Secrets `login` and `users` when the case has them.
fn relay(case: &Case) -> SmtpRelay {
    let mut r = fixtures::relay("parity");
    let mut spec = serde_json::to_value(&r.spec).expect("spec");
    if let Some(patch) = &case.spec {
        merge(&mut spec, patch);
    }
    r.spec = serde_json::from_value(spec).expect("the case's spec is well-formed");
    if case.login.is_some() {
        r.spec.relayhost.credentials_secret_ref = Some(CredentialsSecretRef {
            name: "login".into(),
            username_key: "username".into(),
            password_key: "password".into(),
        });
    }
    if !case.users.is_empty() {
        r.spec.sasl_users_secret_ref = Some(SecretRef {
            name: "users".into(),
        });
    }
    r
}

/// The operator's verdict: its whole plan, reading the Secrets from memory.
fn operator_verdict(case: &Case, r: &SmtpRelay) -> Result<(), String> {
    let mut refs = FakeRefs::default();
    if let Some(l) = &case.login {
        refs.secrets.insert(
            "login".into(),
            BTreeMap::from([
                ("username".to_string(), bytes(&l.username)),
                ("password".to_string(), bytes(&l.password)),
            ]),
        );
    }
    if !case.users.is_empty() {
        refs.secrets.insert(
            "users".into(),
            case.users
                .iter()
                .map(|(k, v)| (k.clone(), bytes(v)))
                .collect(),
        );
    }
    let planned = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(plan(r, &refs, &BuildOptions::default()))
        .expect("no API error");
    match planned {
        Plan::Apply(_) => Ok(()),
        Plan::Report(outcome) => Err(format!("{outcome:?}")),
    }
}

/// The relay's verdict on what the operator would write for the case, unchecked: the config
/// file and the Secret files, on disk, read by the relay's own code.
fn relay_verdict(case: &Case, r: &SmtpRelay, dir: &Path) -> Result<(), String> {
    let mut resolved = Resolved::default();
    if let Some(l) = &case.login {
        resolved.relayhost_login = Some(RelayhostLogin {
            username: l.username.clone(),
            password: bytes(&l.password),
        });
    }
    if !case.users.is_empty() {
        resolved.sasl_users = Some(
            case.users
                .iter()
                .map(|(k, v)| (k.clone(), bytes(v)))
                .collect(),
        );
        let names = crate::steps::certificate::names(r);
        let ca = crate::steps::certificate::new_ca("mail/parity", 1_795_000_000).expect("a CA");
        let cert =
            crate::steps::certificate::issue(&names, &ca, 1_795_000_000).expect("a certificate");
        resolved.inbound_tls = Some(TlsPair {
            cert: cert.cert,
            key: cert.key,
        });
    }
    let file = crate::steps::judge::relay_config::relay_config_file(r, &resolved);
    let root = dir.display().to_string();
    let yaml = serde_yaml::to_string(&file)
        .expect("yaml")
        .replace("/etc/smtp-relay", &root);
    let write = |rel: &str, content: &[u8]| {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("dir");
        std::fs::write(path, content).expect("write");
    };
    write("config/relay.yaml", yaml.as_bytes());
    if let Some(l) = &resolved.relayhost_login {
        write("relayhost/username", l.username.as_bytes());
        write("relayhost/password", &l.password);
    }
    if let Some(users) = &resolved.sasl_users {
        std::fs::create_dir_all(dir.join("sasl-users")).expect("dir");
        for (name, password) in users {
            write(&format!("sasl-users/{name}"), password);
        }
    }
    if let Some(tls) = &resolved.inbound_tls {
        write("tls/tls.crt", &tls.cert);
        write("tls/tls.key", &tls.key);
    }
    let settings = smtp_relay::inputs::file::load(&dir.join("config/relay.yaml"))
        .map_err(|e| e.to_string())?;
    smtp_relay::sasl::load(&settings.sasl_users).map_err(|e| e.to_string())?;
    Ok(())
}

/// Where the relay pods' files are: never in a refusal of the operator's.
const POD_PATHS: &str = "/etc/smtp-relay/";

#[test]
fn the_operator_and_the_relay_judge_every_input_alike() {
    let corpus: Corpus =
        serde_yaml::from_str(include_str!("../tests/parity.yaml")).expect("the corpus parses");
    let mut disagreements = Vec::new();
    for (bad, case) in corpus
        .bad
        .iter()
        .map(|c| (true, c))
        .chain(corpus.good.iter().map(|c| (false, c)))
    {
        let r = relay(case);
        let dir = tempfile::tempdir().expect("tempdir");
        let operator = operator_verdict(case, &r);
        let relay = relay_verdict(case, &r, dir.path());
        let agree = match (bad, &operator, &relay) {
            // The operator's verdict is an `Outcome`'s Debug form: its quotes are escaped.
            (true, Err(o), Err(i)) => {
                let o = o.replace("\\\"", "\"");
                o.contains(&case.says)
                    && i.contains(&case.says)
                    && case.operator_says.as_ref().is_none_or(|s| o.contains(s))
                    && !o.contains(POD_PATHS)
            }
            (false, Ok(()), Ok(())) => true,
            _ => false,
        };
        if !agree {
            disagreements.push(format!(
                "{} ({}):\n  operator: {operator:?}\n  relay:    {relay:?}\n  says:     {:?}\n  operator_says: {:?} (and never {POD_PATHS:?})",
                case.name,
                if bad { "bad" } else { "good" },
                case.says,
                case.operator_says
            ));
        }
    }
    assert!(
        disagreements.is_empty(),
        "the two judges disagree:\n{}",
        disagreements.join("\n")
    );
}
