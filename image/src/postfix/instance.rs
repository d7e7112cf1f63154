//! Laying out a Postfix instance on disk and controlling its master process.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{chown, OpenOptionsExt as _, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{Group, Pid, User};

use crate::error::{ConfigError, RunError};
use crate::postfix::layout::Layout;
use crate::postfix::{access, main_cf, master_cf, relay_guard, sandbox};
use crate::settings::Settings;

pub const POSTFIX_USER: &str = "postfix";
const DAEMON_DIRECTORY: &str = "/usr/lib/postfix/sbin";

/// Writes every configuration file of the instance, once Postfix has checked them. The files
/// are first written to a candidate directory and checked there (`postfix check`, the
/// parameter names, the open-relay check); only an accepted candidate replaces the live files,
/// main.cf last. A refused one changes nothing Postfix reads: it starts new processes all the
/// time, and each would read a refused main.cf left in place.
pub fn write_config(settings: &Settings, layout: &Layout) -> Result<(), RunError> {
    prepare_directories(layout)?;
    fs::create_dir_all(&layout.spool_dir).map_err(RunError::io(format!(
        "creating {}",
        layout.spool_dir.display()
    )))?;
    let (postfix_uid, _) = postfix_ids()?;
    let data = layout.postfix_data_dir();
    fs::create_dir_all(&data).map_err(RunError::io(format!("creating {}", data.display())))?;
    chown(&data, Some(postfix_uid), None)
        .map_err(RunError::io(format!("chown {}", data.display())))?;

    // Every file, with its contents for the live layout (main.cf names the live paths) and its
    // mode; main.cf last, so a new process never reads a main.cf whose maps are not in place.
    let sasl_conf = layout.sasl_config_dir().join("smtpd.conf");
    let mut files = vec![
        (
            layout.master_cf(),
            master_cf::render(layout, settings.proxy_protocol_port, settings.submission)?,
            0o644,
        ),
        (
            layout.routing_table(),
            main_cf::ROUTING_TABLE.to_string(),
            0o644,
        ),
        (sasl_conf, main_cf::smtpd_sasl_conf(layout), 0o644),
    ];
    if let Some(table) = main_cf::smtp_header_checks(&settings.headers) {
        files.push((layout.header_checks(), table, 0o644));
    }
    for (path, table) in access::tables(settings, layout) {
        files.push((path, table, 0o644));
    }
    if let Some(table) = sandbox::table(settings.sandbox.as_ref()) {
        files.push((layout.sandbox_table(), table, 0o644));
    }
    let passwd = main_cf::relayhost_passwd(settings);
    if let Some(text) = &passwd {
        // Read by the smtp client before it drops privileges, so root-only is enough.
        files.push((layout.relayhost_passwd(), text.clone(), 0o600));
    }
    files.push((
        layout.main_cf(),
        main_cf::render(&main_cf::parameters(settings, layout)),
        0o644,
    ));

    let candidate = Layout {
        config_dir: layout.config_dir.join(".candidate"),
        ..layout.clone()
    };
    let staged = |live: &Path| {
        live.strip_prefix(&layout.config_dir)
            .map(|rel| candidate.config_dir.join(rel))
            .map_err(|_| RunError::Command {
                command: "staging the configuration".into(),
                detail: format!(
                    "{} is outside {}",
                    live.display(),
                    layout.config_dir.display()
                ),
            })
    };
    remove_dir_if_exists(&candidate.config_dir)?;
    own_dir(&candidate.config_dir)?;
    own_dir(&candidate.sasl_config_dir())?;
    for (live, text, mode) in &files {
        write_file(&staged(live)?, text, *mode)?;
    }
    settled(&candidate.main_cf())?;
    postfix(&candidate, &["check"])?;
    check_not_open(
        &candidate,
        &layout.main_cf(),
        settings.relayhost_password_in_clear(),
        settings.trust_restriction_tables,
    )?;

    for (live, _, _) in &files {
        let from = staged(live)?;
        fs::rename(&from, live).map_err(RunError::io(format!("installing {}", live.display())))?;
    }
    // The OAuth2 token goes to this configuration's relayhost alone.
    crate::oauth2::serve_relayhost(main_cf::relayhost_value(&settings.relayhost));
    if passwd.is_none() {
        remove_if_exists(&layout.relayhost_passwd())?;
    }
    remove_dir_if_exists(&candidate.config_dir)
}

/// Makes the directories the supervisor writes into and root reads from safe from everyone
/// else, before anything is written: the configuration directory and its SASL directory
/// (main.cf, master.cf, the relayhost password map) and the data directory (the SASL database,
/// the OAuth2 socket). Under a kubelet they are on emptyDir volumes, which are created
/// world-writable (0777) and outlive a restart of the container: the postfix user, which smtpd
/// facing the network runs as, could plant or swap files there that the root master and this
/// supervisor then read. Each becomes root's, 0755 (see [`secure_dir`]), as does the directory of
/// the supervisor's sockets in the spool. Postfix's own directories (the spool, its data
/// directory) are Postfix's to set up.
pub fn prepare_directories(layout: &Layout) -> Result<(), RunError> {
    secure_dir(&layout.config_dir)?;
    own_dir(&layout.sasl_config_dir())?;
    // Ours in the spool (whose top directory is root's, as Postfix requires).
    own_dir(&layout.sockets_dir())?;
    secure_dir(&layout.data_dir)
}

/// Creates `dir` if needed, makes it root's and 0755, and takes the write access of others
/// (group and other) from each directory above it that gives it without the sticky bit
/// (`/run/smtp-relay`, the emptyDir holding the configuration directory): whoever can rename
/// entries there can swap `dir` whole. (A directory with the sticky bit, like `/tmp`, lets
/// nobody but the owner rename root's entries.)
pub fn secure_dir(dir: &Path) -> Result<(), RunError> {
    let io = |what: &str| RunError::io(format!("{what} {}", dir.display()));
    // The directories above, both as given and as the links lead.
    let given = std::path::absolute(dir).map_err(io("locating"))?;
    for ancestor in given.ancestors().skip(1) {
        if ancestor.exists() {
            close_to_others(ancestor)?;
        }
    }
    own_dir(dir)?;
    let real = fs::canonicalize(dir).map_err(io("resolving"))?;
    for ancestor in real.ancestors().skip(1) {
        close_to_others(ancestor)?;
    }
    Ok(())
}

/// Takes the write access of group and others from `dir` when it has no sticky bit.
fn close_to_others(dir: &Path) -> Result<(), RunError> {
    const STICKY: u32 = 0o1000;
    let mode = fs::metadata(dir)
        .map_err(RunError::io(format!("reading {}", dir.display())))?
        .permissions()
        .mode()
        & 0o7777;
    if mode & 0o022 == 0 || mode & STICKY != 0 {
        return Ok(());
    }
    let closed = mode & !0o022;
    tracing::warn!(
        dir = %dir.display(),
        mode = format!("{mode:o}"),
        now = format!("{closed:o}"),
        "others could write into a directory holding the relay's: they could swap the relay's directory; taking their write access away"
    );
    fs::set_permissions(dir, fs::Permissions::from_mode(closed))
        .map_err(RunError::io(format!("chmod {}", dir.display())))
}

/// Creates `dir` if needed (0755 at most from the start) and makes it exactly root's and 0755,
/// whatever it was. A symbolic link there that root does not own is refused: someone else put it.
fn own_dir(dir: &Path) -> Result<(), RunError> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(RunError::io(format!("creating {}", dir.display())))?;
    let link =
        fs::symlink_metadata(dir).map_err(RunError::io(format!("reading {}", dir.display())))?;
    if link.file_type().is_symlink() && link.uid() != 0 {
        return Err(RunError::Command {
            command: format!("preparing {}", dir.display()),
            detail: format!(
                "it is a symbolic link of uid {}, not root's: remove it (the relay creates the directory)",
                link.uid()
            ),
        });
    }
    let meta = fs::metadata(dir).map_err(RunError::io(format!("reading {}", dir.display())))?;
    if nix::unistd::geteuid().is_root() && (meta.uid() != 0 || meta.gid() != 0) {
        chown(dir, Some(0), Some(0)).map_err(RunError::io(format!("chown {}", dir.display())))?;
    }
    if meta.mode() & 0o7777 != 0o755 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
            .map_err(RunError::io(format!("chmod {}", dir.display())))?;
    }
    Ok(())
}

pub(crate) fn remove_dir_if_exists(dir: &Path) -> Result<(), RunError> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(RunError::io(format!("removing {}", dir.display()))(e))
        }
        _ => Ok(()),
    }
}

/// The last line of defence: whatever the inputs were, the configuration Postfix would run
/// with must not let an anonymous outside client relay anywhere, nor send the relayhost login
/// in clear text unless the fields chose a level of none or may (`cleartext_chosen`,
/// [`Settings::relayhost_password_in_clear`]), nor rest on tables the relay cannot read unless
/// the input vouched for them (`tables_vouched`, [`Settings::trust_restriction_tables`]).
/// `main_cf` is the file the message names (the candidate is checked before it replaces it).
fn check_not_open(
    layout: &Layout,
    main_cf: &Path,
    cleartext_chosen: bool,
    tables_vouched: bool,
) -> Result<(), RunError> {
    let mut args = vec!["-x"];
    args.extend(relay_guard::Effective::PARAMETERS);
    let effective = relay_guard::Effective::from_postconf(&postconf(layout, &args)?);
    let refusal = relay_guard::open_relay(&effective, tables_vouched).or_else(|| {
        relay_guard::relayhost_login_in_clear(&effective, cleartext_chosen)
            .map(|why| format!("refusing to start: {why}"))
    });
    match refusal {
        None => Ok(()),
        Some(problem) => Err(ConfigError::invalid(
            format!("{} (postconf -x)", main_cf.display()),
            problem,
        )
        .into()),
    }
}

/// Dates `main_cf` ten seconds back. Postfix's commands (`postfix check`, the master) wait about
/// two seconds when main.cf looks freshly written, in case it is half-written; ours are written
/// whole (to a candidate, then renamed), so that wait is pure start-up latency: it was most of
/// the relay's two seconds from spawn to the first banner.
fn settled(main_cf: &Path) -> Result<(), RunError> {
    let file = fs::File::options()
        .write(true)
        .open(main_cf)
        .map_err(RunError::io(format!("opening {}", main_cf.display())))?;
    file.set_modified(SystemTime::now() - Duration::from_secs(10))
        .map_err(RunError::io(format!("dating {} back", main_cf.display())))
}

/// Starts the master in the foreground, its stdout (where postlogd writes the mail log) piped
/// to the caller. Pair it with [`spawn_guard`], so that it never outlives the supervisor.
pub fn spawn_master(layout: &Layout) -> Result<tokio::process::Child, RunError> {
    settled(&layout.main_cf())?;
    let master = Path::new(DAEMON_DIRECTORY).join("master");
    tokio::process::Command::new(&master)
        .arg("-c")
        .arg(&layout.config_dir)
        // -s keeps stdout open, so postlogd can write the mail log to it.
        .arg("-s")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(RunError::io(format!("starting {}", master.display())))
}

/// Starts `smtp-relay guard-master` (see [`crate::guard`]) for the master `master_pid`: when
/// this process dies, even by SIGKILL, the guard stops the master, which would otherwise run
/// on unsupervised, holding the spool, so that the next relay on it could not start. (A
/// parent-death signal on the master itself does not hold: the kernel clears it when the
/// master changes its effective ids while it sets itself up.) The guard is killed when the
/// returned child is dropped.
pub fn spawn_guard(
    master_pid: u32,
    stop_timeout: Duration,
) -> Result<tokio::process::Child, RunError> {
    let exe = std::env::current_exe().map_err(RunError::io("finding smtp-relay's own path"))?;
    tokio::process::Command::new(&exe)
        .arg("guard-master")
        .arg("--master")
        .arg(master_pid.to_string())
        .arg("--supervisor")
        .arg(std::process::id().to_string())
        .arg("--stop-timeout")
        .arg(stop_timeout.as_secs().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(RunError::io(format!(
            "starting {} guard-master",
            exe.display()
        )))
}

/// A Postfix master still running on this spool, left by a supervisor that died without
/// taking it along (an earlier version, or a master started by hand): stops it, so the relay
/// can start on its spool. A stale `master.pid` (no such master) is only reported; Postfix
/// replaces it. Returns the pid of the master that was stopped.
pub fn stop_leftover_master(layout: &Layout, timeout: Duration) -> Result<Option<i32>, RunError> {
    let Some(pid) = fs::read_to_string(layout.master_pid())
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return Ok(None);
    };
    if !master_on_spool(pid, &layout.spool_dir) {
        tracing::info!(pid, "stale master.pid on the spool: that master is gone");
        return Ok(None);
    }
    tracing::warn!(
        pid,
        "a Postfix master left by an earlier supervisor still runs on this spool; stopping it before starting"
    );
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let start = std::time::Instant::now();
    while master_on_spool(pid, &layout.spool_dir) {
        if start.elapsed() > timeout {
            tracing::warn!(
                pid,
                ?timeout,
                "the leftover master did not stop; killing it"
            );
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Some(pid))
}

/// `pid` is a live (not zombie) Postfix master whose working directory is `spool` (the master
/// works in its queue directory).
fn master_on_spool(pid: i32, spool: &Path) -> bool {
    let proc = Path::new("/proc").join(pid.to_string());
    let comm = fs::read_to_string(proc.join("comm")).unwrap_or_default();
    let zombie = fs::read_to_string(proc.join("stat")).is_ok_and(|s| s.contains(") Z "));
    let cwd = fs::read_link(proc.join("cwd")).ok();
    let spool = fs::canonicalize(spool).ok();
    comm.trim() == "master" && !zombie && cwd.is_some() && cwd == spool
}

/// Asks a running master to re-read its configuration; the queue and connections stay.
pub fn reload(pid: u32) -> Result<(), RunError> {
    signal(pid, Signal::SIGHUP)
}

/// Asks the master to stop: it terminates its children and leaves the queue on disk.
pub fn stop(pid: u32) -> Result<(), RunError> {
    signal(pid, Signal::SIGTERM)
}

fn signal(pid: u32, sig: Signal) -> Result<(), RunError> {
    let pid = i32::try_from(pid).map_err(|_| RunError::Command {
        command: "kill".into(),
        detail: format!("bad pid {pid}"),
    })?;
    kill(Pid::from_raw(pid), sig).map_err(|e| RunError::Command {
        command: format!("kill -{sig} {pid}"),
        detail: e.to_string(),
    })
}

/// Runs `postfix -c DIR <args>`, turning its error output into the error message.
pub fn postfix(layout: &Layout, args: &[&str]) -> Result<(), RunError> {
    run(Command::new("postfix")
        .arg("-c")
        .arg(&layout.config_dir)
        .args(args))
    .map(|_| ())
}

/// Runs `postqueue -c DIR <args>` (e.g. `-f`: deliver all queued mail now).
pub fn postqueue(layout: &Layout, args: &[&str]) -> Result<String, RunError> {
    run(Command::new("postqueue")
        .arg("-c")
        .arg(&layout.config_dir)
        .args(args))
}

pub fn postconf(layout: &Layout, args: &[&str]) -> Result<String, RunError> {
    run(Command::new("postconf")
        .arg("-c")
        .arg(&layout.config_dir)
        .args(args))
}

fn run(cmd: &mut Command) -> Result<String, RunError> {
    let shown = format!("{cmd:?}").replace('"', "");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(RunError::io(format!("running {shown}")))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let detail = if err.trim().is_empty() {
            text.trim()
        } else {
            err.trim()
        };
        return Err(RunError::Command {
            command: shown,
            detail: format!("{} ({})", detail, out.status),
        });
    }
    Ok(text)
}

/// The postfix user and group ids.
pub fn postfix_ids() -> Result<(u32, u32), RunError> {
    let missing = |what: &str| RunError::Command {
        command: format!("looking up the {what} {POSTFIX_USER}"),
        detail: "not found; is Postfix installed?".into(),
    };
    let user = User::from_name(POSTFIX_USER)
        .ok()
        .flatten()
        .ok_or_else(|| missing("user"))?;
    let group = Group::from_name(POSTFIX_USER)
        .ok()
        .flatten()
        .ok_or_else(|| missing("group"))?;
    Ok((user.uid.as_raw(), group.gid.as_raw()))
}

/// Writes a file atomically (a reader never sees half of it) with the given mode, which it has
/// from the moment it exists: a secret (the relayhost password map, 0600) is never readable by
/// others, not even between its writing and a chmod.
pub fn write_file(path: &Path, content: &str, mode: u32) -> Result<(), RunError> {
    let tmp = path.with_extension("tmp-smtp-relay");
    // A temporary file an interrupted write left is not reused (it keeps its own mode): the file
    // is created anew, so it is ours and born with `mode`.
    remove_if_exists(&tmp)?;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(RunError::io(format!("creating {}", tmp.display())))?;
    #[cfg(test)]
    crate::created::record(&tmp);
    // The umask may have taken bits from `mode` (it never adds any): exactly `mode`.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(RunError::io(format!("chmod {}", tmp.display())))?;
    file.write_all(content.as_bytes())
        .map_err(RunError::io(format!("writing {}", tmp.display())))?;
    drop(file);
    fs::rename(&tmp, path).map_err(RunError::io(format!("writing {}", path.display())))
}

fn remove_if_exists(path: &Path) -> Result<(), RunError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(RunError::io(format!("removing {}", path.display()))(e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The directories root reads from, on world-writable volumes (emptyDirs are 0777) and
    /// one of them someone else's (as a restarted container finds them), become root's and 0755;
    /// the volume holding the configuration directory loses others' write access; a sticky
    /// directory above (like /tmp) is left as it is.
    #[test]
    fn directories_from_world_writable_volumes_become_roots() {
        use std::os::unix::fs::MetadataExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path();
        let volume = top.join("run");
        let layout = Layout {
            config_dir: volume.join("postfix"),
            spool_dir: top.join("spool"),
            data_dir: top.join("data"),
            listen: "127.0.0.1:25".into(),
        };
        let dirs = [
            layout.config_dir.clone(),
            layout.sasl_config_dir(),
            layout.data_dir.clone(),
        ];
        for dir in &dirs {
            fs::create_dir_all(dir).unwrap();
        }
        for dir in dirs.iter().chain([&volume]) {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o777)).unwrap();
        }
        fs::set_permissions(top, fs::Permissions::from_mode(0o1777)).unwrap();
        chown(&layout.config_dir, Some(65534), Some(65534)).unwrap();

        prepare_directories(&layout).unwrap();
        let state = |dir: &Path| {
            let meta = fs::metadata(dir).unwrap();
            format!("{:o} {}:{}", meta.mode() & 0o7777, meta.uid(), meta.gid())
        };
        for dir in &dirs {
            assert_eq!(state(dir), "755 0:0", "{}", dir.display());
        }
        assert_eq!(state(&volume), "755 0:0");
        assert_eq!(state(top), "1777 0:0", "a sticky directory is left alone");

        // A symbolic link someone else put where the directory was is refused, its target
        // left as it was.
        let elsewhere = top.join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o777)).unwrap();
        fs::remove_dir_all(&layout.config_dir).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &layout.config_dir).unwrap();
        std::os::unix::fs::lchown(&layout.config_dir, Some(65534), Some(65534)).unwrap();
        let err = prepare_directories(&layout).unwrap_err().to_string();
        assert!(err.contains("symbolic link of uid 65534"), "{err}");
        assert_eq!(state(&elsewhere), "777 0:0");
    }

    /// The start-time check refuses what `postfix check` takes: an open relay, and a relayhost
    /// login that could leave in clear text (TLS off, PLAIN and LOGIN allowed outside it) when
    /// the fields did not choose a level of none or may. `postconf` can no longer write such a
    /// main.cf, so one is written by hand here, as anything that got round the inputs would.
    #[test]
    fn the_start_time_check_refuses_a_relayhost_login_in_clear() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout {
            config_dir: dir.path().join("postfix"),
            spool_dir: dir.path().join("spool"),
            data_dir: dir.path().join("data"),
            listen: "127.0.0.1:25".into(),
        };
        fs::create_dir_all(&layout.config_dir).unwrap();
        fs::write(layout.master_cf(), "").unwrap();
        let write = |extra: &str| {
            fs::write(
                layout.main_cf(),
                format!(
                    "mynetworks = 10.0.0.0/8\nsmtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n{extra}"
                ),
            )
            .unwrap();
            settled(&layout.main_cf()).unwrap();
        };
        let shown = Path::new("/etc/postfix/main.cf");
        let in_clear = "smtp_sasl_auth_enable = yes\nsmtp_tls_security_level = none\nsmtp_sasl_security_options = noanonymous\n";
        write(in_clear);
        let err = check_not_open(&layout, shown, false, false)
            .expect_err("a login in clear text is refused")
            .to_string();
        assert!(
            err.contains("/etc/postfix/main.cf (postconf -x)") && err.contains("clear text"),
            "{err}"
        );
        // Chosen (relayhost.tls.level none or may): accepted, and flagged elsewhere.
        check_not_open(&layout, shown, true, false).unwrap();
        // The same login inside TLS, or no login: accepted.
        write("smtp_sasl_auth_enable = yes\nsmtp_tls_security_level = encrypt\nsmtp_sasl_security_options = noanonymous\n");
        check_not_open(&layout, shown, false, false).unwrap();
        write("smtp_tls_security_level = none\n");
        check_not_open(&layout, shown, false, false).unwrap();
        // An open relay is still refused.
        fs::write(
            layout.main_cf(),
            "mynetworks = 10.0.0.0/8\nsmtpd_relay_restrictions = permit\n",
        )
        .unwrap();
        let err = check_not_open(&layout, shown, false, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("open relay"), "{err}");
    }

    /// A file is created with its final mode: the relayhost password map (0600) is never, not
    /// for a moment between writing and a chmod, readable by others, as it was (0644 by the
    /// umask) at every start and rotation. Nor is a temporary file left by an interrupted
    /// write reused with whatever mode it has.
    #[test]
    fn files_are_created_with_their_final_mode() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o600, 0o640, 0o644] {
            let path = dir.path().join(format!("file-{mode:o}"));
            // A leftover of an interrupted write, open to all.
            let leftover = path.with_extension("tmp-smtp-relay");
            fs::write(&leftover, "stale").unwrap();
            fs::set_permissions(&leftover, fs::Permissions::from_mode(0o666)).unwrap();
            for round in ["first", "again"] {
                write_file(&path, "login:secret\n", mode).unwrap();
                let created = crate::created::take();
                assert_eq!(created.len(), 1, "{mode:o} {round}: {created:?}");
                assert_eq!(
                    created[0].mode & !mode,
                    0,
                    "{mode:o} {round}: created as {:o}, more than its final mode",
                    created[0].mode
                );
                let meta = fs::metadata(&path).unwrap();
                assert_eq!(meta.permissions().mode() & 0o7777, mode, "{round}");
                assert_eq!(fs::read_to_string(&path).unwrap(), "login:secret\n");
                assert!(!leftover.exists());
            }
        }
    }
}
