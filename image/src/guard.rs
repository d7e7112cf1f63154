//! `smtp-relay guard-master`: a small companion process that stops the Postfix master when the
//! supervisor (`smtp-relay run`) dies without doing it, as on SIGKILL. Without it the master
//! would run on unsupervised, holding the spool, and the next relay on that spool could not
//! start. It polls rather than waits for a signal: its parent changing is the one sign that
//! survives every way the supervisor can die, and two checks a second cost nothing.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{getppid, Pid};

const POLL: Duration = Duration::from_millis(500);

/// Watches until the master exits (then returns quietly) or the supervisor is gone (then stops
/// the master: SIGTERM, and SIGKILL after `stop_timeout`). Returns what it did.
pub fn watch(master: Pid, supervisor: Pid, stop_timeout: Duration) -> String {
    loop {
        if !is_running(master) {
            return format!("the master (pid {master}) exited; nothing to do");
        }
        if getppid() != supervisor {
            break;
        }
        std::thread::sleep(POLL);
    }
    eprintln!(
        "smtp-relay guard-master: the supervisor (pid {supervisor}) is gone; stopping the Postfix master (pid {master}), the queue stays on disk"
    );
    let _ = kill(master, Signal::SIGTERM);
    let start = Instant::now();
    while is_running(master) {
        if start.elapsed() > stop_timeout {
            let _ = kill(master, Signal::SIGKILL);
            return format!("killed the master (pid {master}) after {stop_timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    format!("stopped the master (pid {master})")
}

/// The process exists and is not a zombie.
fn is_running(pid: Pid) -> bool {
    std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat"))
        .is_ok_and(|stat| !stat.contains(") Z "))
}
