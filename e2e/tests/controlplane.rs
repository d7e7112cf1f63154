//! Smoke test of the control plane harness: writes are audited, RBAC is enforced, data
//! survives a restart.

use std::process::Command;

use smtp_relay_e2e::{tools, ControlPlane};

#[test]
fn control_plane_audits_enforces_rbac_and_survives_restart() {
    let mut cp = ControlPlane::start().expect("control plane starts");
    eprintln!("control plane ready in {:?}", cp.startup_time());

    cp.kubectl_ok(["create", "namespace", "smoke"]);
    let out = cp.kubectl_stdin(
        [
            "apply",
            "--server-side",
            "--field-manager=smoke-test",
            "-f",
            "-",
        ],
        r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: greeting
  namespace: smoke
data:
  hello: world
"#,
    );
    assert!(
        out.status.success(),
        "apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The audit log is written before the response (blocking mode).
    let applies: Vec<_> = cp
        .audit_events()
        .expect("audit log")
        .into_iter()
        .filter(|e| {
            e["objectRef"]["resource"] == "configmaps"
                && e["objectRef"]["name"] == "greeting"
                && e["verb"] == "patch"
        })
        .collect();
    assert_eq!(applies.len(), 1, "one audited apply of the ConfigMap");
    let event = &applies[0];
    assert_eq!(event["user"]["username"], "admin");
    assert_eq!(event["responseStatus"]["code"], 201);
    assert!(
        event["requestURI"]
            .as_str()
            .unwrap()
            .contains("fieldManager=smoke-test"),
        "field manager is visible in {event}"
    );

    // RBAC is enforced: a ServiceAccount with no bindings may not read secrets.
    let denied = cp.kubectl([
        "--as=system:serviceaccount:default:nobody",
        "get",
        "secrets",
        "-n",
        "default",
    ]);
    assert!(
        !denied.status.success(),
        "unprivileged get secrets succeeded"
    );
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(
        stderr.contains("Forbidden"),
        "expected Forbidden, got: {stderr}"
    );
    // ...while the admin may read them, so the denial above is RBAC's, not a broken server.
    cp.kubectl_ok(["get", "secrets", "-n", "default"]);
    // A kubeconfig that impersonates a ServiceAccount gets only what RBAC grants it.
    let as_sa = cp
        .kubeconfig_as_service_account("default", "nobody")
        .expect("an impersonating kubeconfig");
    let kubectl_as_sa = |args: &[&str]| {
        Command::new(tools::bin("kubectl"))
            .arg("--kubeconfig")
            .arg(&as_sa)
            .args(args)
            .output()
            .expect("run kubectl")
    };
    let whoami = kubectl_as_sa(&["auth", "whoami", "-o", "jsonpath={.status.userInfo.groups}"]);
    assert!(
        String::from_utf8_lossy(&whoami.stdout).contains("system:serviceaccounts:default"),
        "impersonated ServiceAccount has its groups: {whoami:?}"
    );
    let denied = kubectl_as_sa(&["get", "configmaps"]);
    assert!(String::from_utf8_lossy(&denied.stderr).contains("Forbidden"));

    // Data survives an abrupt restart on the same directory.
    cp.restart().expect("control plane restarts");
    eprintln!("control plane ready again in {:?}", cp.startup_time());
    let value = cp.kubectl_ok([
        "get",
        "configmap",
        "greeting",
        "-n",
        "smoke",
        "-o",
        "jsonpath={.data.hello}",
    ]);
    assert_eq!(value, "world");
}
