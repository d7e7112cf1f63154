//! The project's kubectl plugin (`plugin/`, `kubectl smtp-relay`) as a user runs it in the
//! real-node tests.

use serde_json::Value;

use crate::{tools, ControlPlane};

/// `kubectl smtp-relay` as a user runs it: the plugin binary found by kubectl on PATH, the
/// cluster from KUBECONFIG, stdin not a terminal (as in a script).
pub struct Plugin<'a> {
    pub cp: &'a ControlPlane,
    namespace: &'a str,
    path: std::ffi::OsString,
}

impl<'a> Plugin<'a> {
    /// The plugin `cargo build --workspace --bins` built, run against `cp` in `namespace`.
    pub fn new(cp: &'a ControlPlane, namespace: &'a str) -> Self {
        let path = tools::path_with_dir_of(&tools::target_bin("kubectl-smtp_relay"));
        Plugin {
            cp,
            namespace,
            path,
        }
    }

    /// `kubectl smtp-relay ARGS -n NAMESPACE`.
    pub fn output(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(tools::bin("kubectl"))
            .arg("smtp-relay")
            .args(args)
            .args(["-n", self.namespace])
            .env("PATH", &self.path)
            .env("KUBECONFIG", self.cp.kubeconfig())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("kubectl smtp-relay: {e}"))
    }

    /// Its standard output, once it succeeded.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.output(args);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "kubectl smtp-relay {args:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// `queue list RELAY -o json ARGS`.
    pub fn listed(&self, relay: &str, args: &[&str]) -> Vec<Value> {
        let all = [&["queue", "list", relay, "-o", "json"], args].concat();
        serde_json::from_str::<Value>(&self.run(&all))
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }
}
