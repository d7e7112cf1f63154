//! The liveness check: cheap and without SMTP, so a relay busy with deliveries or a slow banner
//! is never restarted for it (that would cut the very sessions it is serving). The relay is alive
//! when its Postfix master runs and its supervisor keeps checking its inputs: the supervisor
//! touches a heartbeat file on every check (see [`crate::run`]).

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::postfix::layout::Layout;

/// Marks the supervisor alive now (sets the heartbeat file's time, creating it once).
pub fn beat(layout: &Layout) -> std::io::Result<()> {
    let path = layout.heartbeat();
    let file = match fs::File::options().write(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::File::create(&path)?,
        Err(e) => return Err(e),
    };
    file.set_modified(SystemTime::now())
}

/// Ok with a short description when the master runs and the heartbeat is at most `max_age`
/// old; otherwise what is wrong.
pub fn check(layout: &Layout, max_age: Duration) -> Result<String, String> {
    let pid_file = layout.master_pid();
    let pid: u32 = fs::read_to_string(&pid_file)
        .map_err(|e| format!("no Postfix master: {}: {e}", pid_file.display()))?
        .trim()
        .parse()
        .map_err(|_| format!("no Postfix master: {} holds no pid", pid_file.display()))?;
    if !is_postfix_master(pid) {
        return Err(format!(
            "the Postfix master is not running (pid {pid} from {})",
            pid_file.display()
        ));
    }
    let beat = layout.heartbeat();
    let age = fs::metadata(&beat)
        .and_then(|m| m.modified())
        .map(|t| t.elapsed().unwrap_or_default())
        .map_err(|e| format!("no supervisor heartbeat: {}: {e}", beat.display()))?;
    if age > max_age {
        return Err(format!(
            "the supervisor has not checked its inputs for {}s (limit {}s)",
            age.as_secs(),
            max_age.as_secs()
        ));
    }
    Ok(format!(
        "alive: master pid {pid}, supervisor checked its inputs {}s ago",
        age.as_secs()
    ))
}

/// The process exists (not a zombie) and is Postfix's `master`.
fn is_postfix_master(pid: u32) -> bool {
    let proc = Path::new("/proc").join(pid.to_string());
    let comm = fs::read_to_string(proc.join("comm")).unwrap_or_default();
    let stat = fs::read_to_string(proc.join("stat")).unwrap_or_default();
    comm.trim() == "master" && !stat.contains(") Z ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(dir: &Path) -> Layout {
        Layout {
            config_dir: dir.join("postfix"),
            spool_dir: dir.join("spool"),
            data_dir: dir.join("data"),
            listen: "127.0.0.1:25".into(),
        }
    }

    #[test]
    fn no_master_is_not_alive() {
        let dir = tempfile::tempdir().expect("tempdir");
        let l = layout(dir.path());
        let err = check(&l, Duration::from_secs(60)).expect_err("no pid file");
        assert!(err.contains("master.pid"), "{err}");

        // A pid file naming a process that is not Postfix's master (this test).
        fs::create_dir_all(l.master_pid().parent().expect("parent")).expect("mkdir");
        fs::write(l.master_pid(), format!("{:>10}\n", std::process::id())).expect("write");
        let err = check(&l, Duration::from_secs(60)).expect_err("not a master");
        assert!(err.contains("not running"), "{err}");
    }

    #[test]
    fn beat_creates_then_refreshes_the_heartbeat() {
        let dir = tempfile::tempdir().expect("tempdir");
        let l = layout(dir.path());
        fs::create_dir_all(&l.config_dir).expect("mkdir");
        beat(&l).expect("first beat");
        let old = SystemTime::now() - Duration::from_secs(600);
        fs::File::options()
            .write(true)
            .open(l.heartbeat())
            .and_then(|f| f.set_modified(old))
            .expect("age the heartbeat");
        beat(&l).expect("second beat");
        let age = fs::metadata(l.heartbeat())
            .and_then(|m| m.modified())
            .map(|t| t.elapsed().unwrap_or_default())
            .expect("mtime");
        assert!(age < Duration::from_secs(60), "refreshed: {age:?}");
    }
}
