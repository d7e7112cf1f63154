//! Runs argocd/health.lua against every sample in argocd/health_test.yaml through `lua5.4`, the
//! way Argo CD runs it: a global `obj` holding the live object, and the chunk's return value
//! read as `{status, message}`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_yaml::Value;

/// The interpreter: lua5.4 by default. Argo CD embeds a Lua 5.1 (gopher-lua), so
/// `LUA=lua5.1 cargo test -p smtp-relay-e2e --test argocd_health` checks that dialect too.
fn lua() -> String {
    std::env::var("LUA").unwrap_or_else(|_| "lua5.4".into())
}

fn argocd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../argocd")
}

#[derive(Debug, Deserialize)]
struct HealthTests {
    tests: Vec<HealthTest>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HealthTest {
    input_path: String,
    health_status: HealthStatus,
}

#[derive(Debug, Deserialize, PartialEq)]
struct HealthStatus {
    status: String,
    message: String,
}

/// A Lua string literal: every byte outside printable ASCII is written as a decimal escape, so
/// any YAML string survives whatever the Lua version.
fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for b in s.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\{b}")),
        }
    }
    out.push('"');
    out
}

/// The YAML object as a Lua table constructor, as Argo CD converts JSON: maps become tables
/// keyed by string, lists become 1-based arrays, null becomes nil.
fn lua_value(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Sequence(items) => {
            let items: Vec<String> = items.iter().map(lua_value).collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::Mapping(map) => {
            let fields: Vec<String> = map
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        Value::String(s) => s.clone(),
                        other => panic!("non-string key {other:?}"),
                    };
                    format!("[{}] = {}", lua_string(&key), lua_value(v))
                })
                .collect();
            format!("{{{}}}", fields.join(", "))
        }
        Value::Tagged(t) => lua_value(&t.value),
    }
}

/// Loads health.lua as a chunk with `obj` set, and prints status and message on two lines.
const HARNESS: &str = r#"
local chunk = assert(loadfile(arg[1]))
local hs = chunk()
assert(type(hs) == "table", "health.lua must return a table")
io.write(tostring(hs.status), "\n", tostring(hs.message), "\n")
"#;

fn run_health(obj: &Value) -> HealthStatus {
    let script = format!("obj = {}\n{}", lua_value(obj), HARNESS);
    let lua = lua();
    let out = Command::new(&lua)
        .arg("-")
        .arg(argocd_dir().join("health.lua"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(script.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap_or_else(|e| {
            panic!("cannot run {lua} ({e}): run scripts/install-deps.sh (it installs lua5.4)")
        });
    assert!(
        out.status.success(),
        "health.lua failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8 output");
    let mut lines = stdout.lines();
    HealthStatus {
        status: lines.next().unwrap_or_default().to_string(),
        message: lines.next().unwrap_or_default().to_string(),
    }
}

fn load_tests() -> Vec<HealthTest> {
    let text = std::fs::read_to_string(argocd_dir().join("health_test.yaml")).unwrap();
    serde_yaml::from_str::<HealthTests>(&text).unwrap().tests
}

#[test]
fn every_sample_gets_its_expected_health() {
    let tests = load_tests();
    assert!(
        tests.len() >= 8,
        "expected a sample per case, got {}",
        tests.len()
    );
    let mut failures = Vec::new();
    for t in &tests {
        let text = std::fs::read_to_string(argocd_dir().join(&t.input_path))
            .unwrap_or_else(|e| panic!("{}: {e}", t.input_path));
        let obj: Value = serde_yaml::from_str(&text).unwrap();
        let got = run_health(&obj);
        if got != t.health_status {
            failures.push(format!(
                "{}: expected {:?}, got {:?}",
                t.input_path, t.health_status, got
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_sample_file_is_listed() {
    // A sample without an expectation would silently test nothing.
    let listed: Vec<String> = load_tests().into_iter().map(|t| t.input_path).collect();
    for entry in std::fs::read_dir(argocd_dir().join("testdata")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let path = format!("testdata/{name}");
        assert!(
            listed.contains(&path),
            "{path} has no entry in health_test.yaml"
        );
    }
}

#[test]
fn every_status_is_covered() {
    let statuses: Vec<String> = load_tests()
        .into_iter()
        .map(|t| t.health_status.status)
        .collect();
    for s in ["Healthy", "Progressing", "Degraded"] {
        assert!(statuses.iter().any(|x| x == s), "no sample expects {s}");
    }
}

#[test]
fn argocd_cm_patch_embeds_health_lua_verbatim() {
    let lua = std::fs::read_to_string(argocd_dir().join("health.lua")).unwrap();
    let patch = std::fs::read_to_string(argocd_dir().join("argocd-cm-patch.yaml")).unwrap();
    let cm: Value = serde_yaml::from_str(&patch).unwrap();
    let embedded = cm["data"]["resource.customizations.health.smtprelay.dev_SmtpRelay"]
        .as_str()
        .expect("argocd-cm-patch.yaml lacks the health customization key");
    assert_eq!(
        embedded, lua,
        "argocd-cm-patch.yaml is stale: paste argocd/health.lua into it again"
    );
}

#[test]
fn lua_literals_escape_quotes_and_non_ascii() {
    assert_eq!(lua_string("a\"b\\c"), r#""a\"b\\c""#);
    assert_eq!(lua_string("é\n"), r#""\195\169\10""#);
}
