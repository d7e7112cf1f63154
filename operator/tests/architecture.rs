//! The operator's floor plan, held against its code: every module sits on one floor of the map
//! in `src/lib.rs`, imports only from floors below its own, and the floors marked pure never
//! touch an API client. The map is read from `lib.rs` itself, so the rule has one owner and a
//! change of layout is a change of that map.

// A test crate: a source that cannot be read is this test failing.
#![allow(clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One floor of the map: its number, whether it is pure, and its modules (`a::b`; `a::b::*`
/// for every file of the folder `a/b` but its `mod.rs`).
struct Floor {
    number: usize,
    pure: bool,
    modules: Vec<String>,
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The rows `//! | N | pure or api | `a`, `b` | what they are |` of the map in `lib.rs`.
fn floors() -> Vec<Floor> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).expect("read lib.rs");
    let mut floors = Vec::new();
    for line in lib.lines() {
        let Some(row) = line.strip_prefix("//! |") else {
            continue;
        };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let Some(number) = cells.first().and_then(|c| c.parse::<usize>().ok()) else {
            continue;
        };
        let pure = match cells.get(1) {
            Some(&"pure") => true,
            Some(&"api") => false,
            other => panic!("floor {number}: the second cell is `pure` or `api`, not {other:?}"),
        };
        let modules = cells
            .get(2)
            .map(|c| {
                c.split(',')
                    .map(|m| m.trim().trim_matches('`').to_string())
                    .filter(|m| !m.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        floors.push(Floor {
            number,
            pure,
            modules,
        });
    }
    assert!(floors.len() > 3, "the map in lib.rs has its floors");
    floors
}

/// Every source file, by module path (`steps::build::hash`; `steps::build` for its `mod.rs`).
fn files() -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read src").flatten() {
            let p = entry.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    let mut paths = Vec::new();
    walk(&src(), &mut paths);
    paths
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(src()).expect("under src").with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|l| l == "mod") {
                parts.pop();
            }
            (parts.join("::"), p)
        })
        .collect()
}

/// The code of a file without its comments and without its test modules (tests may reach
/// anywhere; they are not part of the floor plan).
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("read source");
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]")
            && lines.peek().is_some_and(|next| {
                let n = next.trim_start();
                n.starts_with("mod ")
                    || n.starts_with("pub(crate) mod ")
                    || n.starts_with("pub mod ")
            })
        {
            break;
        }
        let code = match t.find("//") {
            Some(i) => &t[..i],
            None => t,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// The module paths a file names (`crate::a::b::Item`, `super::x`, and the groups of `use`),
/// as written; `smtp_relay_operator::` (the binary's name for the crate) counts as `crate::`.
fn named_paths(module: &str, code: &str) -> Vec<Vec<String>> {
    let code = code.replace("smtp_relay_operator::", "crate::");
    let mut paths = Vec::new();
    // `use` trees, with their groups expanded.
    for stmt in code.split(';') {
        let Some(start) = stmt.find("use ") else {
            continue;
        };
        let tree: String = stmt[start + 4..].split_whitespace().collect();
        if tree.starts_with("crate::") || tree.starts_with("super::") {
            paths.extend(expand(&tree));
        }
    }
    // Inline paths: `crate::a::b(..)`.
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i..];
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        paths.push(rest[..end].to_string());
    }
    let parent: Vec<&str> = module.split("::").collect();
    paths
        .into_iter()
        .map(|p| {
            let segs: Vec<String> = p
                .split("::")
                .filter(|s| !s.is_empty())
                .map(|s| s.split(" as ").next().unwrap_or(s).to_string())
                .collect();
            match segs.first().map(String::as_str) {
                Some("crate") => segs[1..].to_vec(),
                // `super` of `a::b` (a file, or a folder's mod.rs) is `a`.
                _ => parent[..parent.len().saturating_sub(1)]
                    .iter()
                    .map(|s| s.to_string())
                    .chain(segs[1..].iter().cloned())
                    .collect(),
            }
        })
        .collect()
}

/// `a::{b, c::{d, e}}` as `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let Some(open) = tree.find('{') else {
        return vec![tree.to_string()];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| expand(p).into_iter().map(|e| format!("{prefix}{e}")))
        .collect()
}

/// The file a path lands in: its longest prefix that is a module of the crate.
fn target<'a>(files: &'a BTreeMap<String, PathBuf>, segs: &[String]) -> Option<&'a str> {
    (1..=segs.len())
        .rev()
        .map(|n| segs[..n].join("::"))
        .find_map(|m| files.get_key_value(&m).map(|(k, _)| k.as_str()))
}

/// Modules that belong to no floor: the crate root, the binary, the modules that only declare
/// their children, and the test-only modules.
const OFF_THE_MAP: [&str; 8] = [
    "lib", "main", "floor", "steps", "observe", "fixtures", "golden", "parity",
];

/// Whether the map's entry `entry` (`a::b`, or `a::b::*`) places `module`.
fn placed(entry: &str, module: &str) -> bool {
    match entry.strip_suffix("::*") {
        Some(folder) => module
            .strip_prefix(folder)
            .is_some_and(|rest| rest.starts_with("::") && !rest[2..].contains("::")),
        None => entry == module,
    }
}

fn floor_of(floors: &[Floor], module: &str) -> Option<usize> {
    let hits: Vec<usize> = floors
        .iter()
        .filter(|f| f.modules.iter().any(|m| placed(m, module)))
        .map(|f| f.number)
        .collect();
    assert!(hits.len() <= 1, "{module} is on floors {hits:?} of the map");
    hits.first().copied()
}

#[test]
fn every_module_imports_only_from_floors_below_its_own() {
    let floors = floors();
    let files = files();
    let mut unplaced = Vec::new();
    let mut upward = BTreeSet::new();
    for (module, path) in &files {
        if OFF_THE_MAP.contains(&module.as_str()) {
            continue;
        }
        let Some(mine) = floor_of(&floors, module) else {
            unplaced.push(module.clone());
            continue;
        };
        for segs in named_paths(module, &code(path)) {
            let Some(to) = target(&files, &segs) else {
                continue;
            };
            if to == module || OFF_THE_MAP.contains(&to) {
                continue;
            }
            let theirs = floor_of(&floors, to).unwrap_or(usize::MAX);
            if theirs >= mine {
                upward.insert(format!(
                    "{module} (floor {mine}) imports {} from {to} (floor {theirs})",
                    segs.join("::")
                ));
            }
        }
    }
    assert!(
        unplaced.is_empty(),
        "modules missing from the map in src/lib.rs (give each a floor): {unplaced:?}"
    );
    assert!(
        upward.is_empty(),
        "imports that do not run downward (move the shared noun down, or the module up, and \
         update the map in src/lib.rs):\n{}",
        upward.into_iter().collect::<Vec<_>>().join("\n")
    );
}

/// Whether `code` names `needle` as a whole word (`HttpClient::` is not `Client::`).
fn mentions(code: &str, needle: &str) -> bool {
    let word = needle.starts_with(|c: char| c.is_alphanumeric());
    code.match_indices(needle).any(|(i, _)| {
        !word
            || !code[..i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

#[test]
fn the_pure_floors_never_touch_an_api_client() {
    let floors = floors();
    let files = files();
    let mut touching = Vec::new();
    for (module, path) in &files {
        let pure = floors
            .iter()
            .any(|f| f.pure && f.modules.iter().any(|m| placed(m, module)));
        if !pure {
            continue;
        }
        let code = code(path);
        for needle in [
            "kube::Client",
            "Client::",
            ": Client",
            "&Client",
            "Api<",
            "Api::",
        ] {
            if mentions(&code, needle) {
                touching.push(format!("{module}: {needle}"));
            }
        }
    }
    assert!(
        touching.is_empty(),
        "modules on a pure floor that reach for the API: {touching:?}"
    );
}

/// The reader itself: a path in a group, a `super`, and a comment are read as they should be.
#[test]
fn the_reader_expands_groups_and_skips_comments() {
    assert_eq!(
        expand("crate::a::{b,c::{d,e}}"),
        ["crate::a::b", "crate::a::c::d", "crate::a::c::e"]
    );
    let paths = named_paths(
        "steps::build::secrets",
        "use super::hash::{config_hash, object_hash};\nlet x = crate::floor::crd::quantity_bytes(q);\n",
    );
    assert!(paths.contains(&vec![
        "steps".into(),
        "build".into(),
        "hash".into(),
        "config_hash".into()
    ]));
    assert!(paths.contains(&vec!["floor".into(), "crd".into(), "quantity_bytes".into()]));
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("x.rs");
    std::fs::write(
        &file,
        "use crate::a; // crate::b\n#[cfg(test)]\nmod tests {\n use crate::c;\n}\n",
    )
    .expect("write");
    assert_eq!(code(&file), "use crate::a; \n");
    assert!(mentions("let c: Client = x;", ": Client"));
    assert!(!mentions("HttpClient::builder()", "Client::"));
}
