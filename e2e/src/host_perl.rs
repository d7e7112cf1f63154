//! Pods that run the host's perl on the real node: the pause image with the host's /usr and
//! libraries mounted read-only, so a test gets a TCP server or client in a pod without an image
//! of its own (nothing can be pulled here). NetworkPolicy tests use them as servers and clients.

use std::time::Duration;

use crate::{tools, ControlPlane};

/// How long a pod may take to run.
const RUNNING_WITHIN: Duration = Duration::from_secs(180);

/// Runs pod `name` in namespace `ns` (which must exist) with the labels `labels` (a YAML flow
/// mapping's inside, e.g. `app: server`; empty for none), its one container running
/// `perl -MIO::Socket::INET -e script`, and returns its IP once it is Running.
pub fn run_pod(
    cp: &ControlPlane,
    ns: &str,
    name: &str,
    labels: &str,
    script: &str,
) -> Result<String, String> {
    let script = script.replace('\'', "''");
    let pod = format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
  labels: {{{labels}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: perl
      image: localhost/pause:3.10
      imagePullPolicy: Never
      command: [/usr/bin/perl, -MIO::Socket::INET, -e, '{script}']
      volumeMounts:
        - {{name: usr, mountPath: /usr, readOnly: true}}
        - {{name: lib, mountPath: /lib, readOnly: true}}
        - {{name: lib64, mountPath: /lib64, readOnly: true}}
  volumes:
    - {{name: usr, hostPath: {{path: /usr, type: Directory}}}}
    - {{name: lib, hostPath: {{path: /usr/lib, type: Directory}}}}
    - {{name: lib64, hostPath: {{path: /usr/lib64, type: Directory}}}}
"#
    );
    let out = cp.kubectl_stdin(["apply", "-f", "-"], &pod);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    wait_running(cp, ns, name)
}

/// Waits for pod `ns/name` to be Running and returns its IP; on a timeout, why, with the pod
/// described.
pub fn wait_running(cp: &ControlPlane, ns: &str, name: &str) -> Result<String, String> {
    tools::poll(&format!("pod {ns}/{name} Running"), RUNNING_WITHIN, || {
        let out = cp.kubectl_ok([
            "get",
            "pod",
            "-n",
            ns,
            name,
            "--ignore-not-found",
            "-o",
            "jsonpath={.status.phase} {.status.podIP}",
        ]);
        let (phase, ip) = out.split_once(' ')?;
        (phase == "Running" && !ip.is_empty()).then(|| ip.to_owned())
    })
    .map_err(|e| {
        let describe = cp.kubectl(["describe", "pod", "-n", ns, name]);
        format!("{e}\n{}", String::from_utf8_lossy(&describe.stdout))
    })
}

/// Runs `perl -MIO::Socket::INET -e script args...` in pod `ns/pod`: its output, trimmed, when
/// it succeeds and says something; else what it said and its errors.
pub fn exec(
    cp: &ControlPlane,
    ns: &str,
    pod: &str,
    script: &str,
    args: &[&str],
) -> Result<String, String> {
    let mut command = vec![
        "exec",
        "-n",
        ns,
        pod,
        "--",
        "/usr/bin/perl",
        "-MIO::Socket::INET",
        "-e",
        script,
    ];
    command.extend_from_slice(args);
    let out = cp.kubectl(command);
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if out.status.success() && !stdout.is_empty() {
        Ok(stdout)
    } else {
        Err(format!(
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A perl script that connects to `$ARGV[0]:$ARGV[1]` within 3 s (else it dies with
/// `connect: timeout`, as a connection a NetworkPolicy drops does) and prints the first line
/// the server says.
pub const READ_FIRST_LINE: &str = r#"$s = IO::Socket::INET->new(PeerAddr => $ARGV[0], PeerPort => $ARGV[1], Timeout => 3) or die "connect: timeout $@\n"; alarm 10; print scalar <$s>"#;
