//! The generated reference pages in docs/reference/, and the generator that writes them:
//!
//! - api.md: every field of the SmtpRelay spec and status, and the printer columns, from the
//!   generated CRD (crds/smtprelay.dev_smtprelays.yaml);
//! - values.md: every key of the chart's values.yaml, with its default, its type from
//!   values.schema.json and the description from its `# --` comment;
//! - rbac.md: the Roles and ClusterRoles the chart renders (`helm template`), with the comment
//!   above each rule in the template as its reason.
//!
//! `docs/reference/generate.sh` runs this test with `UPDATE=1`, which rewrites the pages; without
//! it the test fails when a committed page differs from what the sources give. The generation is
//! a pure function of the sources (no clock, no checkout path), so its output is stable. Like
//! charts/sync-crds.sh, the transformation lives in the test that checks it: one definition.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

use serde::Deserialize;
use serde_json::Value as Json;
use serde_yaml::{Mapping, Value};
use smtp_relay_e2e::tools::{bin, workspace_root};

const GENERATE: &str = "docs/reference/generate.sh";
const CRD: &str = "crds/smtprelay.dev_smtprelays.yaml";
const CHART: &str = "charts/smtp-relay-operator";
const RELEASE: &str = "smtp-relay-operator";
const NAMESPACE: &str = "smtp-relay-system";
/// The chart's minimum Kubernetes version, as in e2e/tests/chart.rs and deploy/render.sh.
const KUBE_VERSION: &str = "1.34.0";
/// The namespace of rbac.md's namespaced mode.
const WATCH_NAMESPACE: &str = "mail";

fn read(rel: &str) -> String {
    let path = workspace_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// With `UPDATE` set, writes `expected` to `rel`; then fails unless `rel` holds `expected`,
/// naming the first line that differs and the command that regenerates it.
fn check_generated(rel: &str, expected: &str) {
    let path: PathBuf = workspace_root().join(rel);
    if std::env::var_os("UPDATE").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, expected).unwrap();
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if current != expected {
        let line = current
            .lines()
            .zip(expected.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| current.lines().count().min(expected.lines().count()))
            + 1;
        panic!("{rel} is stale (first difference at line {line}): run {GENERATE}");
    }
}

// ---------------------------------------------------------------------------------------------
// Markdown helpers

/// `s` as a code span, with a longer fence when it holds a backtick.
fn code(s: &str) -> String {
    if s.contains('`') {
        format!("`` {s} ``")
    } else {
        format!("`{s}`")
    }
}

/// `s` fit for a table cell: one line, `|` escaped, and `<`/`>` outside code spans escaped so a
/// placeholder such as <domain> is shown rather than taken for HTML.
fn cell(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_code = false;
    for c in s.split_whitespace().collect::<Vec<_>>().join(" ").chars() {
        match c {
            '`' => {
                in_code = !in_code;
                out.push(c);
            }
            '|' => out.push_str("\\|"),
            '<' if !in_code => out.push_str("&lt;"),
            '>' if !in_code => out.push_str("&gt;"),
            _ => out.push(c),
        }
    }
    out
}

fn row(cells: &[String]) -> String {
    format!("| {} |\n", cells.join(" | "))
}

fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = row(&header.iter().map(|h| (*h).to_string()).collect::<Vec<_>>());
    out += &row(&vec!["---".to_string(); header.len()]);
    for r in rows {
        out += &row(&r.iter().map(|c| cell(c)).collect::<Vec<_>>());
    }
    out
}

/// A YAML value on one line, in flow style: `{a: 1, b: [x, y]}`. Strings are plain unless
/// reading them back would give something else (`""`, `"1"`, `"true"`, `"a: b"`).
fn flow(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let plain = !s.is_empty()
                && !s.contains(|c: char| ",[]{}#&*!|>'\"%@`".contains(c) || c == ':')
                && s.trim() == s
                && serde_yaml::from_str::<Value>(s).ok() == Some(v.clone());
            if plain {
                s.clone()
            } else {
                serde_json::to_string(s).unwrap()
            }
        }
        Value::Sequence(items) => {
            format!(
                "[{}]",
                items.iter().map(flow).collect::<Vec<_>>().join(", ")
            )
        }
        Value::Mapping(m) => {
            let entries: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{}: {}", flow(k), flow(v)))
                .collect();
            format!("{{{}}}", entries.join(", "))
        }
        Value::Tagged(t) => flow(&t.value),
    }
}

const HEADER: &str = "<!-- Generated by docs/reference/generate.sh: do not edit by hand. -->\n";

// ---------------------------------------------------------------------------------------------
// api.md: the CRD

/// The OpenAPI type of a schema node, as Kubernetes users read it: `[]string`,
/// `map[string]string`, `int-or-string`.
fn api_type(s: &Value) -> String {
    if s["x-kubernetes-int-or-string"] == true {
        return "int-or-string".into();
    }
    match s["type"].as_str().unwrap_or_default() {
        "array" => format!("[]{}", api_type(&s["items"])),
        "object" if s["additionalProperties"].is_mapping() => {
            format!("map[string]{}", api_type(&s["additionalProperties"]))
        }
        t => t.to_string(),
    }
}

/// What the API server checks of a field besides its type: enum, format, ranges, pattern,
/// list semantics and the messages of its CEL rules.
fn api_validation(s: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(e) = s["enum"].as_sequence() {
        let values: Vec<String> = e
            .iter()
            .filter(|v| !v.is_null())
            .map(|v| code(&flow(v)))
            .collect();
        parts.push(format!("one of {}", values.join(", ")));
    }
    if let Some(f) = s["format"].as_str() {
        parts.push(format!("format {f}"));
    }
    for (key, label) in [
        ("minimum", "min"),
        ("maximum", "max"),
        ("minLength", "min length"),
        ("maxLength", "max length"),
        ("minItems", "min items"),
        ("maxItems", "max items"),
        ("minProperties", "min properties"),
        ("maxProperties", "max properties"),
    ] {
        if !s[key].is_null() {
            parts.push(format!("{label} {}", flow(&s[key])));
        }
    }
    if let Some(p) = s["pattern"].as_str() {
        parts.push(format!("pattern {}", code(p)));
    }
    if let Some(t) = s["x-kubernetes-list-type"].as_str() {
        let keys: Vec<String> = s["x-kubernetes-list-map-keys"]
            .as_sequence()
            .map(|k| k.iter().map(|k| code(&flow(k))).collect())
            .unwrap_or_default();
        if keys.is_empty() {
            parts.push(format!("list type {t}"));
        } else {
            parts.push(format!("list type {t}, keys {}", keys.join(", ")));
        }
    }
    for rule in s["x-kubernetes-validations"]
        .as_sequence()
        .into_iter()
        .flatten()
    {
        match rule["message"].as_str() {
            Some(m) => parts.push(format!("rule: {m}")),
            None => parts.push(format!(
                "rule: {}",
                code(rule["rule"].as_str().unwrap_or_default())
            )),
        }
    }
    parts.join("; ")
}

/// One table row per field under `s` (at `path`), depth first, properties sorted by name. List
/// items (`[]`) and map values (`*`) get a row only when they say more than their parent's type.
fn api_rows(s: &Value, path: &str, required: bool, rows: &mut Vec<Vec<String>>) {
    let description = s["description"].as_str().unwrap_or_default();
    let validation = api_validation(s);
    let is_member = path.ends_with("[]") || path.ends_with(".*");
    if !is_member || !description.is_empty() || !validation.is_empty() {
        rows.push(vec![
            code(path),
            api_type(s),
            if s["default"].is_null() {
                String::new()
            } else {
                code(&flow(&s["default"]))
            },
            if required {
                "yes".into()
            } else {
                String::new()
            },
            validation,
            description.to_string(),
        ]);
    }
    let required_names: BTreeSet<&str> = s["required"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if let Some(props) = s["properties"].as_mapping() {
        let mut names: Vec<&str> = props.keys().filter_map(Value::as_str).collect();
        names.sort_unstable();
        for name in names {
            let child = format!("{path}.{name}");
            api_rows(&props[name], &child, required_names.contains(name), rows);
        }
    }
    if s["items"].is_mapping() {
        api_rows(&s["items"], &format!("{path}[]"), false, rows);
    }
    if s["additionalProperties"].is_mapping() {
        api_rows(
            &s["additionalProperties"],
            &format!("{path}.*"),
            false,
            rows,
        );
    }
}

/// api.md from the text of the generated CRD.
fn api_reference(crd_text: &str) -> String {
    let crd: Value = serde_yaml::from_str(crd_text).unwrap();
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap();
    let kind = spec["names"]["kind"].as_str().unwrap();
    let mut out = format!("# {kind} API reference\n\n{HEADER}\n");
    let short: Vec<String> = spec["names"]["shortNames"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|n| code(&flow(n)))
        .collect();
    writeln!(
        out,
        "Generated from `{CRD}` (`cargo run -p smtp-relay-operator -- crd`), the CRD the chart \
         installs. Group {}, kind {}, plural {}, short names {}, scope {}. `kubectl explain \
         smtprelay.spec` shows the same descriptions.\n",
        code(group),
        code(kind),
        code(spec["names"]["plural"].as_str().unwrap()),
        short.join(", "),
        spec["scope"].as_str().unwrap(),
    )
    .unwrap();
    out += "In the tables a path ending in `[]` is an item of a list and `.*` a value of a map; \
            *Required* is relative to the parent object; *Validation* is what the API server \
            checks besides the type, CEL rules by their messages.\n";
    for version in spec["versions"].as_sequence().unwrap() {
        let name = version["name"].as_str().unwrap();
        writeln!(
            out,
            "\n## {}\n\nServed: {}. Storage version: {}.\n",
            code(&format!("{group}/{name}")),
            flow(&version["served"]),
            flow(&version["storage"])
        )
        .unwrap();
        out += "### Printer columns\n\n`kubectl get smtpr` shows these columns (`-o wide` adds \
                those of priority above 0).\n\n";
        let columns: Vec<Vec<String>> = version["additionalPrinterColumns"]
            .as_sequence()
            .into_iter()
            .flatten()
            .map(|c| {
                vec![
                    c["name"].as_str().unwrap_or_default().to_string(),
                    c["type"].as_str().unwrap_or_default().to_string(),
                    code(c["jsonPath"].as_str().unwrap_or_default()),
                    c["priority"].as_i64().unwrap_or(0).to_string(),
                    c["description"].as_str().unwrap_or_default().to_string(),
                ]
            })
            .collect();
        out += &table(
            &["Column", "Type", "JSONPath", "Priority", "Description"],
            &columns,
        );
        let schema = &version["schema"]["openAPIV3Schema"];
        let root_required: BTreeSet<&str> = schema["required"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let mut top: Vec<&str> = schema["properties"]
            .as_mapping()
            .unwrap()
            .keys()
            .filter_map(Value::as_str)
            .collect();
        top.sort_unstable();
        for field in top {
            let mut rows = Vec::new();
            api_rows(
                &schema["properties"][field],
                field,
                root_required.contains(field),
                &mut rows,
            );
            writeln!(out, "\n### {field}\n").unwrap();
            out += &table(
                &[
                    "Field",
                    "Type",
                    "Default",
                    "Required",
                    "Validation",
                    "Description",
                ],
                &rows,
            );
        }
    }
    out
}

#[test]
fn api_reference_is_up_to_date() {
    check_generated("docs/reference/api.md", &api_reference(&read(CRD)));
}

// ---------------------------------------------------------------------------------------------
// values.md: values.yaml and values.schema.json

/// The description of every key of values.yaml that has one: the comment block just above it
/// that starts with `# --` (helm-docs' convention), by dotted path. Comment lines indented
/// further (`#   relays: ...`) are a YAML example, rendered in one line as a code span.
fn value_comments(values_text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut block: Vec<&str> = Vec::new();
    for line in values_text.lines() {
        let content = line.trim_start();
        let indent = line.len() - content.len();
        if let Some(comment) = content.strip_prefix('#') {
            block.push(comment.strip_prefix(' ').unwrap_or(comment));
            continue;
        }
        let key = content.split_once(':').map(|(k, _)| k).filter(|k| {
            !k.is_empty() && k.chars().all(|c| c.is_alphanumeric() || "_-".contains(c))
        });
        if let Some(key) = key {
            while stack.last().is_some_and(|(i, _)| *i >= indent) {
                stack.pop();
            }
            stack.push((indent, key.to_string()));
            if block.first().is_some_and(|l| l.starts_with("-- ")) {
                let path: Vec<&str> = stack.iter().map(|(_, k)| k.as_str()).collect();
                out.push((path.join("."), describe(&block)));
            }
        }
        block.clear();
    }
    out
}

/// The text of a `# --` comment block (its lines without `# `): prose joined into one line,
/// an indented example as a flow-style code span.
fn describe(block: &[&str]) -> String {
    let mut text = Vec::new();
    let mut example: Vec<&str> = Vec::new();
    let flush = |example: &mut Vec<&str>, text: &mut Vec<String>| {
        if example.is_empty() {
            return;
        }
        let margin = example
            .iter()
            .map(|l| l.len() - l.trim_start().len())
            .min()
            .unwrap_or(0);
        let yaml: String = example
            .iter()
            .map(|l| format!("{}\n", &l[margin..]))
            .collect();
        text.push(match serde_yaml::from_str::<Value>(&yaml) {
            // A mapping reads as the lines it stands for: `key: value`, not `{key: value}`.
            Ok(Value::Mapping(m)) => code(
                &m.iter()
                    .map(|(k, v)| format!("{}: {}", flow(k), flow(v)))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            Ok(v) => code(&flow(&v)),
            Err(_) => code(
                &example
                    .iter()
                    .map(|l| l.trim())
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
        });
        example.clear();
    };
    for (i, line) in block.iter().enumerate() {
        let line = if i == 0 {
            line.trim_start_matches("-- ")
        } else {
            line
        };
        if line.starts_with("  ") {
            example.push(line);
        } else {
            flush(&mut example, &mut text);
            text.push(line.trim().to_string());
        }
    }
    flush(&mut example, &mut text);
    text.join(" ")
}

/// The node of values.schema.json for a dotted path, following `$ref`s.
fn schema_at<'a>(schema: &'a Json, path: &str) -> Option<&'a Json> {
    let mut node = resolve(schema, schema);
    for key in path.split('.') {
        node = resolve(schema, node.get("properties")?.get(key)?);
    }
    Some(node)
}

fn resolve<'a>(schema: &'a Json, node: &'a Json) -> &'a Json {
    match node["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/definitions/"))
    {
        Some(name) => resolve(schema, &schema["definitions"][name]),
        None => node,
    }
}

/// A values.schema.json node's type: `string`, `map[string]string`, `null or integer or
/// string`, with its enum.
fn value_type(schema: &Json, node: &Json) -> String {
    if let Some(alternatives) = node["oneOf"].as_array() {
        let types: Vec<String> = alternatives
            .iter()
            .map(|a| value_type(schema, resolve(schema, a)))
            .collect();
        return types.join(" or ");
    }
    let base = match node["type"].as_str().unwrap_or_default() {
        "object" if node["additionalProperties"].is_object() => format!(
            "map[string]{}",
            value_type(schema, resolve(schema, &node["additionalProperties"]))
        ),
        t => t.to_string(),
    };
    match node["enum"].as_array() {
        Some(e) => {
            let values: Vec<String> = e
                .iter()
                .map(|v| code(&v.as_str().map_or_else(|| v.to_string(), String::from)))
                .collect();
            format!("{base}: {}", values.join(", "))
        }
        None => base,
    }
}

/// values.md from the texts of values.yaml and values.schema.json.
///
/// Its rows follow the rule of e2e/tests/chart.rs's `readme_documents_every_value`: a map with
/// a described key below it is walked into; any other key is one row, a free-form map (such as
/// `resources`) with its whole default. A described map that is walked into gets a row of its
/// own too. Keys keep the order of values.yaml.
fn values_reference(values_text: &str, schema_text: &str) -> String {
    let values: Value = serde_yaml::from_str(values_text).unwrap();
    let schema: Json = serde_json::from_str(schema_text).unwrap();
    let comments = value_comments(values_text);
    let mut rows = Vec::new();
    values_rows(
        values.as_mapping().unwrap(),
        "",
        &comments,
        &schema,
        &mut rows,
    );
    // The comment parser reads lines, not YAML: every path it found must be a real key.
    for (path, _) in &comments {
        assert!(
            path_exists(&values, path),
            "values.yaml: a comment describes {path}, which is no key of the parsed YAML"
        );
    }
    let mut out = format!("# Chart values reference\n\n{HEADER}\n");
    out += &format!(
        "Every key of `{CHART}/values.yaml`, in its order, with its default, its type as \
         `values.schema.json` checks it (a wrong type or a misspelt key fails `helm install`), \
         and the description from its `# --` comment. Set them with `--set key=value` or \
         `--values file.yaml`.\n\n"
    );
    out += &table(&["Key", "Type", "Default", "Description"], &rows);
    out
}

/// The rows of `map` (at `prefix`), as [`values_reference`] describes them.
fn values_rows(
    map: &Mapping,
    prefix: &str,
    comments: &[(String, String)],
    schema: &Json,
    rows: &mut Vec<Vec<String>>,
) {
    for (k, child) in map {
        let path = format!("{prefix}{}", k.as_str().unwrap());
        let below = format!("{path}.");
        let comment = comments
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, d)| d.clone());
        let described_below = comments.iter().any(|(p, _)| p.starts_with(&below));
        let walk_into = described_below && child.as_mapping().is_some_and(|m| !m.is_empty());
        if !walk_into || comment.is_some() {
            let ty = schema_at(schema, &path)
                .map(|n| value_type(schema, n))
                .unwrap_or_default();
            let default = if walk_into {
                "see below".to_string()
            } else {
                code(&flow(child))
            };
            rows.push(vec![code(&path), ty, default, comment.unwrap_or_default()]);
        }
        if walk_into {
            values_rows(child.as_mapping().unwrap(), &below, comments, schema, rows);
        }
    }
}

/// Whether the dotted `path` names a key of `values` (whose value may be null).
fn path_exists(values: &Value, path: &str) -> bool {
    let (parent, last) = match path.rsplit_once('.') {
        Some((p, l)) => (p.split('.').fold(values, |n, k| &n[k]), l),
        None => (values, path),
    };
    parent.as_mapping().is_some_and(|m| m.contains_key(last))
}

#[test]
fn values_reference_is_up_to_date() {
    let expected = values_reference(
        &read(&format!("{CHART}/values.yaml")),
        &read(&format!("{CHART}/values.schema.json")),
    );
    check_generated("docs/reference/values.md", &expected);
}

#[test]
fn value_comments_follow_nesting_and_render_examples() {
    let text = "\
# File header, not a description.

# -- Top.
# Second line.
top: 1
nested:
  # A plain comment is no description.
  plain: x
  # -- Inner.
  inner:
    deep: \"\"
after: true
# -- With an example:
#   list:
#     - name: a
#       port: 25
list: []
";
    assert_eq!(
        value_comments(text),
        vec![
            ("top".into(), "Top. Second line.".into()),
            ("nested.inner".into(), "Inner.".into()),
            (
                "list".into(),
                "With an example: `list: [{name: a, port: 25}]`".into()
            ),
        ]
    );
    let schema = r#"{"properties": {"top": {"type": "integer"}, "list": {"type": "array"}}}"#;
    let page = values_reference(text, schema);
    assert!(
        page.contains("| `top` | integer | `1` | Top. Second line. |"),
        "{page}"
    );
    // A described key below: walked into; the undescribed map stays one row.
    assert!(page.contains("| `nested.plain` |  | `x` |  |"), "{page}");
    assert!(
        page.contains("| `nested.inner` |  | `{deep: \"\"}` | Inner. |"),
        "{page}"
    );
    assert!(!page.contains("| `nested` |"), "{page}");
}

#[test]
fn flow_quotes_only_what_would_read_back_differently() {
    let v: Value = serde_yaml::from_str(
        "{a: \"\", b: \"1\", c: \"true\", d: ghcr.io/x/y, e: 10.0.0.0/24, f: \"a: b\", g: null, h: [1, x]}",
    )
    .unwrap();
    assert_eq!(
        flow(&v),
        r#"{a: "", b: "1", c: "true", d: ghcr.io/x/y, e: 10.0.0.0/24, f: "a: b", g: null, h: [1, x]}"#
    );
    assert_eq!(cell("a <b> `<c>` d|e\nf"), "a &lt;b&gt; `<c>` d\\|e f");
}

// ---------------------------------------------------------------------------------------------
// rbac.md: the chart's Roles and ClusterRoles

/// `helm template` of the chart with `values` on top of the defaults.
fn helm_template(values: &str) -> String {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), values).unwrap();
    let out = Command::new(bin("helm"))
        .current_dir(workspace_root())
        .args(["template", RELEASE, CHART])
        .args(["--namespace", NAMESPACE, "--kube-version", KUBE_VERSION])
        .arg("--values")
        .arg(file.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm template failed for {values:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A rendered Role or ClusterRole, with the comments of the template kept by `helm template`.
struct RenderedRole {
    doc: Value,
    /// The comment above the object (without `# Source:`).
    comment: String,
    /// The comment above each rule, by rule index.
    rule_comments: Vec<String>,
}

/// The Roles and ClusterRoles of a `helm template` output, in its order, and every document.
fn roles(rendered: &str) -> (Vec<RenderedRole>, Vec<Value>) {
    let mut roles = Vec::new();
    let mut docs = Vec::new();
    for text in rendered.split("\n---\n") {
        let Some(doc) = serde_yaml::Deserializer::from_str(text)
            .map(|d| Value::deserialize(d).unwrap())
            .find(|v| !v.is_null())
        else {
            continue;
        };
        docs.push(doc.clone());
        if !matches!(doc["kind"].as_str(), Some("Role" | "ClusterRole")) {
            continue;
        }
        let mut comment = Vec::new();
        let mut rule_comments = Vec::new();
        let mut pending: Vec<&str> = Vec::new();
        let mut in_rules = false;
        let mut rule_indent = None;
        for line in text.lines() {
            let content = line.trim_start();
            if let Some(c) = content.strip_prefix('#') {
                if !c.trim_start().starts_with("Source:") {
                    pending.push(c.trim());
                }
            } else if content.starts_with("apiVersion:") && !in_rules {
                comment.append(&mut pending);
            } else if line.starts_with("rules:") {
                in_rules = true;
                pending.clear();
            } else if in_rules && content.starts_with("- ") {
                let indent = line.len() - content.len();
                if *rule_indent.get_or_insert(indent) == indent {
                    rule_comments.push(pending.join(" "));
                }
                pending.clear();
            } else if !line.starts_with(' ') {
                in_rules = false;
            }
        }
        roles.push(RenderedRole {
            doc,
            comment: comment.join(" "),
            rule_comments,
        });
    }
    (roles, docs)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .into_iter()
        .flatten()
        .map(|s| s.as_str().unwrap_or_default().to_string())
        .collect()
}

/// One role: its name, scope, bindings and a table of its rules.
fn role_section(role: &RenderedRole, docs: &[Value]) -> String {
    let kind = role.doc["kind"].as_str().unwrap();
    let name = role.doc["metadata"]["name"].as_str().unwrap();
    let mut out = format!("#### {kind} {}\n\n", code(name));
    if let Some(ns) = role.doc["metadata"]["namespace"].as_str() {
        writeln!(out, "In namespace {}.\n", code(ns)).unwrap();
    }
    if !role.comment.is_empty() {
        writeln!(out, "{}\n", role.comment).unwrap();
    }
    for b in docs.iter().filter(|d| {
        d["roleRef"]["kind"].as_str() == Some(kind) && d["roleRef"]["name"].as_str() == Some(name)
    }) {
        let subjects: Vec<String> = b["subjects"]
            .as_sequence()
            .into_iter()
            .flatten()
            .map(|s| {
                let ns = s["namespace"]
                    .as_str()
                    .map(|n| format!("{n}/"))
                    .unwrap_or_default();
                format!(
                    "{} {}",
                    s["kind"].as_str().unwrap_or_default(),
                    code(&format!("{ns}{}", s["name"].as_str().unwrap_or_default()))
                )
            })
            .collect();
        writeln!(
            out,
            "Bound by {} {} to {}.\n",
            b["kind"].as_str().unwrap_or_default(),
            code(b["metadata"]["name"].as_str().unwrap_or_default()),
            subjects.join(", ")
        )
        .unwrap();
    }
    let rows: Vec<Vec<String>> = role.doc["rules"]
        .as_sequence()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, rule)| {
            let groups: Vec<String> = strings(&rule["apiGroups"])
                .iter()
                .map(|g| {
                    if g.is_empty() {
                        "`\"\"` (core)".into()
                    } else {
                        code(g)
                    }
                })
                .collect();
            let mut resources: Vec<String> = strings(&rule["resources"])
                .iter()
                .map(|r| code(r))
                .collect();
            let names = strings(&rule["resourceNames"]);
            if !names.is_empty() {
                let names: Vec<String> = names.iter().map(|n| code(n)).collect();
                resources = vec![format!(
                    "{} (only {})",
                    resources.join(", "),
                    names.join(", ")
                )];
            }
            let verbs = strings(&rule["verbs"]).join(", ");
            let why = role.rule_comments.get(i).cloned().unwrap_or_default();
            vec![groups.join(", "), resources.join(", "), verbs, why]
        })
        .collect();
    out += &table(
        &["API group", "Resources", "Verbs", "Why (template comment)"],
        &rows,
    );
    out
}

/// rbac.md from three renders of the chart: defaults, `watchNamespace` set, and leader
/// election on (only the roles it adds are shown).
fn rbac_reference(default: &str, namespaced: &str, leader: &str) -> String {
    let mut out = format!("# RBAC the chart grants\n\n{HEADER}\n");
    writeln!(
        out,
        "What the operator's ServiceAccount may do, as `helm template {RELEASE} {CHART} \
         --namespace {NAMESPACE}` renders it: every Role and ClusterRole of the chart, its \
         bindings, and its rules. The reason given for a rule is the comment just above it in \
         the chart's template; an empty cell means the template has none. With `rbac.create: false` the chart renders none of these and \
         they are yours to grant.\n"
    )
    .unwrap();
    let (default_roles, default_docs) = roles(default);
    out += "## Default: all namespaces\n\nWith the default values.\n\n";
    for role in &default_roles {
        out += &role_section(role, &default_docs);
        out += "\n";
    }
    let (ns_roles, ns_docs) = roles(namespaced);
    writeln!(
        out,
        "## Namespaced: `watchNamespace: {WATCH_NAMESPACE}`\n\nWith `--set \
         watchNamespace={WATCH_NAMESPACE}`: the operator watches one namespace, and the rules \
         that are not about a cluster-scoped object are granted there by a Role.\n"
    )
    .unwrap();
    for role in &ns_roles {
        out += &role_section(role, &ns_docs);
        out += "\n";
    }
    let seen: BTreeSet<(String, String)> = default_roles
        .iter()
        .map(|r| (flow(&r.doc["kind"]), flow(&r.doc["metadata"]["name"])))
        .collect();
    let (leader_roles, leader_docs) = roles(leader);
    out += "## Leader election\n\nWith `replicaCount` above 1 or `--set \
            leaderElection.enabled=true`, in either mode, the chart adds:\n\n";
    for role in leader_roles
        .iter()
        .filter(|r| !seen.contains(&(flow(&r.doc["kind"]), flow(&r.doc["metadata"]["name"]))))
    {
        out += &role_section(role, &leader_docs);
        out += "\n";
    }
    out.truncate(out.trim_end().len());
    out + "\n"
}

#[test]
fn rbac_reference_is_up_to_date() {
    let expected = rbac_reference(
        &helm_template(""),
        &helm_template(&format!("watchNamespace: {WATCH_NAMESPACE}")),
        &helm_template("leaderElection: {enabled: true}"),
    );
    check_generated("docs/reference/rbac.md", &expected);
}

// ---------------------------------------------------------------------------------------------
// Drift between the pages (issue 39): links, how deploy/ is applied, promises the relay keeps

/// The Markdown pages users read.
fn pages() -> Vec<String> {
    let mut pages: Vec<String> = [
        "README.md",
        "BENCHMARKS.md",
        "charts/smtp-relay-operator/README.md",
        "image/README.md",
        "argocd/README.md",
        "operator/README.md",
        "e2e/controlplane/README.md",
    ]
    .map(String::from)
    .to_vec();
    for dir in ["docs", "docs/reference"] {
        let mut names: Vec<String> = std::fs::read_dir(workspace_root().join(dir))
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".md"))
            .map(|n| format!("{dir}/{n}"))
            .collect();
        names.sort();
        pages.extend(names);
    }
    pages
}

/// The page's lines outside fenced code blocks, with their numbers.
fn prose(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push((i + 1, line));
        }
    }
    out
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    prose(text)
        .into_iter()
        .filter_map(|(_, l)| l.strip_prefix('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect()
}

/// Every relative link of every page names a file of the repository, and its `#anchor` a
/// heading of that page: a page moved or a heading renamed leaves no link dangling.
#[test]
fn every_relative_link_and_anchor_resolves() {
    let root = workspace_root();
    let mut broken = Vec::new();
    for page in pages() {
        let text = read(&page);
        let dir = std::path::Path::new(&page)
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        for (n, line) in prose(&text) {
            // Outside code spans: a pattern such as `[a-z](...)` is no link.
            let line: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
            for target in line.split("](").skip(1).filter_map(|s| s.split(')').next()) {
                let target = target.split_whitespace().next().unwrap_or_default();
                if target.contains("://") || target.starts_with("mailto:") || target.is_empty() {
                    continue;
                }
                let (file, frag) = target.split_once('#').unwrap_or((target, ""));
                let path = if file.is_empty() {
                    root.join(&page)
                } else {
                    root.join(&dir).join(file)
                };
                if !path.exists() {
                    broken.push(format!("{page}:{n}: {target}: no such file"));
                    continue;
                }
                if !frag.is_empty() && path.extension().is_some_and(|e| e == "md") {
                    let target_text = std::fs::read_to_string(&path).unwrap_or_default();
                    if !anchors(&target_text).contains(frag) {
                        broken.push(format!("{page}:{n}: {target}: no such heading"));
                    }
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// deploy/ is applied server-side wherever a page says how (client-side apply would copy the
/// CRD, over 100 kB, into an annotation), and no page promises what the relay does not keep:
/// mail that waits longer than the queue lifetime returns to its sender.
#[test]
fn the_pages_agree_on_how_to_apply_and_what_is_kept() {
    let mut wrong = Vec::new();
    for page in pages() {
        let text = read(&page);
        for (n, line) in text.lines().enumerate() {
            if line.contains("kubectl apply")
                && line.contains("deploy/")
                && !line.contains("--server-side")
                && !line.contains("--dry-run")
            {
                wrong.push(format!(
                    "{page}:{}: deploy/ applied without --server-side",
                    n + 1
                ));
            }
            let lower = line.to_lowercase();
            for promise in ["never bounces", "never returned", "never lost"] {
                if lower.contains(promise) {
                    wrong.push(format!(
                        "{page}:{}: \"{promise}\": mail is delivered or returned to its sender after spec.queue.lifetime",
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn anchors_are_githubs() {
    assert_eq!(
        anchor(" What `kubectl get smtpr` says"),
        "what-kubectl-get-smtpr-says"
    );
    assert_eq!(
        anchor("Who may relay where: the modes"),
        "who-may-relay-where-the-modes"
    );
}
