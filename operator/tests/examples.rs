//! The sample objects in `yaml/` parse into the operator's types, and the controller agrees with
//! admission about which are valid.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use smtp_relay_operator::floor::crd::SmtpRelay;
use smtp_relay_operator::steps::judge::validate_spec;

fn relays(file: &str) -> Vec<SmtpRelay> {
    let path = format!("{}/yaml/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("sample exists");
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_yaml::Value::deserialize(doc).expect("YAML");
        if value.get("kind").and_then(|k| k.as_str()) == Some("SmtpRelay") {
            out.push(serde_yaml::from_value(value).expect("parses into SmtpRelay"));
        }
    }
    out
}

use serde::Deserialize;

#[test]
fn unauthenticated_relay_is_valid() {
    let rs = relays("relay-unauthenticated.yaml");
    assert_eq!(rs.len(), 1);
    let spec = &rs[0].spec;
    assert_eq!(validate_spec(spec), Ok(()));
    assert_eq!(spec.networks, ["127.0.0.0/8", "10.0.0.0/24"]);
    assert!(!spec.relayhost.mx_lookup, "the seed's [10.1.0.1] form");
}

#[test]
fn sasl_proxy_is_valid_and_references_its_secrets() {
    let rs = relays("relay-sasl-proxy.yaml");
    assert_eq!(rs.len(), 1);
    let spec = &rs[0].spec;
    assert_eq!(validate_spec(spec), Ok(()));
    assert_eq!(
        spec.mode,
        Some(smtp_relay_operator::floor::crd::RelayMode::AllowSaslAuthNoDomain)
    );
    assert_eq!(
        smtp_relay_operator::observe::mapping::referenced_secrets(spec),
        ["sample-sasl-proxy-login", "sample-sasl-proxy-users"]
    );
    assert_eq!(spec.postconf["compatibility_level"], "2");
}

#[test]
fn invalid_relay_is_rejected() {
    let rs = relays("relay-invalid.yaml");
    assert_eq!(rs.len(), 1);
    assert!(validate_spec(&rs[0].spec).is_err());
}
