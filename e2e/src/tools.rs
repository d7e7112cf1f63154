//! Where the project's test tools live.

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The workspace root: the parent of this crate's directory.
pub fn workspace_root() -> PathBuf {
    let mut root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    root.pop();
    root
}

/// This process's PATH with the directory of `program` first: where a child finds it (kubectl
/// for a script, the plugin for kubectl).
///
/// # Panics
///
/// If a directory cannot be put in a PATH (it holds the separator).
pub fn path_with_dir_of(program: &Path) -> std::ffi::OsString {
    let inherited = std::env::var_os("PATH").unwrap_or_default();
    let dirs = program
        .parent()
        .map(Path::to_path_buf)
        .into_iter()
        .chain(std::env::split_paths(&inherited));
    std::env::join_paths(dirs).unwrap_or_else(|e| panic!("PATH: {e}"))
}

/// The version of `module` that the go.mod at `path` (from the workspace root) requires.
///
/// # Panics
///
/// If the file cannot be read or requires no such module, naming both.
pub fn go_mod_requirement(path: &str, module: &str) -> String {
    let text = std::fs::read_to_string(workspace_root().join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some(module)).then(|| words.next().map(str::to_owned))?
        })
        .unwrap_or_else(|| panic!("{path} requires no {module}"))
}

/// The path of a tool built by `scripts/install-deps.sh` into `<workspace>/.cache/bin`.
///
/// # Panics
///
/// If the tool is missing, with a message telling how to install it.
pub fn bin(name: &str) -> PathBuf {
    let path = workspace_root().join(".cache/bin").join(name);
    if !path.is_file() {
        panic!(
            "{} not found: run scripts/install-deps.sh (it builds controlplane, kubectl and helm into .cache/bin)",
            path.display()
        );
    }
    path
}

/// The path of a binary of this workspace built by `cargo build --workspace --bins`: in the
/// profile directory of the running test executable (`<target>/debug`), which follows
/// `CARGO_TARGET_DIR`.
///
/// # Panics
///
/// If the binary is missing. Tests cannot build it themselves: a nested `cargo build` from
/// inside `cargo test` waits forever on the target directory's lock.
pub fn target_bin(name: &str) -> PathBuf {
    let path = profile_dir().join(name);
    if !path.is_file() {
        panic!(
            "{} not found: run `cargo build --workspace --bins` first (scripts/test.sh does)",
            path.display()
        );
    }
    path
}

/// `<target>/<profile>`: the test executable lives in its `deps/` directory.
fn profile_dir() -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        if let Some(deps) = exe.parent() {
            if deps.file_name().is_some_and(|n| n == "deps") {
                if let Some(profile) = deps.parent() {
                    return profile.to_path_buf();
                }
            }
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("debug")
}

/// Calls `f` until it returns `Some`, at most until `timeout` has passed, and returns its value.
/// Polls quickly at first, then every 250 ms.
///
/// # Panics
///
/// When the timeout passes, with `what` (what was awaited).
pub fn poll_until<T>(timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    poll(what, timeout, f).unwrap_or_else(|e| panic!("{e}"))
}

/// A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it); `Err` when no port
/// of 127.0.0.1 can be bound.
pub fn free_port() -> std::io::Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
}

/// Polls `f` until it returns `Some`, or fails with `what` after `timeout`.
pub fn poll<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(20);
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// SIGTERM, then SIGKILL after `grace`; None when it had to be killed.
pub fn stop_child(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let start = Instant::now();
    while start.elapsed() < grace {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// `GET path` over plain HTTP/1.1 to `addr`: (status code, body), or None when nothing answers
/// in time.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}
