//! SASL users of the relay: read from their source, written into the Cyrus sasldb that smtpd
//! checks logins against. The database is rebuilt whole and swapped in with a rename, so a
//! removed user stops working (the original image only ever added users) and smtpd never sees
//! a half-written database.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{chown, DirBuilderExt as _, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::{ConfigError, ConfigResult, RunError};
use crate::inputs::read_secret_file;
use crate::postfix::instance::{postfix_ids, remove_dir_if_exists};
use crate::postfix::layout::Layout;
use crate::settings::SaslUserSource;
use crate::validate;

/// User name to password. `Debug` shows names only.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Users(pub BTreeMap<String, String>);

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

pub fn load(source: &SaslUserSource) -> ConfigResult<Users> {
    match source {
        SaslUserSource::None => Ok(Users::default()),
        SaslUserSource::PasswdFile(path) => parse_passwd_file(path),
        SaslUserSource::Directory(dir) => read_directory(dir),
    }
}

/// The original image's `client_sasl_passwd`: `USERNAME PASSWORD` per line; the password is
/// the rest of the line, so it may contain spaces.
fn parse_passwd_file(path: &Path) -> ConfigResult<Users> {
    let field = path.display().to_string();
    let text = read_secret_file(&field, path)?;
    let mut users = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let at = format!("{field}:{}", n + 1);
        let (name, password) = line
            .trim_start()
            .split_once([' ', '\t'])
            .ok_or_else(|| ConfigError::invalid(&at, "expected `USERNAME PASSWORD`"))?;
        let password = password.trim_start_matches([' ', '\t']);
        // The name is not quoted: a line written `user:password ...` would quote the password.
        if !validate::is_sasl_user(name) {
            return Err(ConfigError::invalid(
                &at,
                format!(
                    "the first word (not shown: it may hold a password) is not a valid SASL user name: {}; write `USERNAME PASSWORD`",
                    validate::SASL_USER_RULE
                ),
            ));
        }
        validate::password(&at, password)?;
        users.insert(name.to_string(), password.to_string());
    }
    Ok(Users(users))
}

/// A Secret mounted as a directory: one file per user. Entries starting with '.' are the
/// kubelet's bookkeeping (`..data` and its timestamped target), not users.
fn read_directory(dir: &Path) -> ConfigResult<Users> {
    let field = dir.display().to_string();
    let entries = fs::read_dir(dir).map_err(|e| ConfigError::unreadable(&field, dir, e))?;
    let mut users = BTreeMap::new();
    for entry in entries {
        let entry = entry.map_err(|e| ConfigError::unreadable(&field, dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with('.') || path.is_dir() {
            continue;
        }
        let at = path.display().to_string();
        validate::sasl_user(&at, &name)?;
        let password = read_secret_file(&at, &path)?;
        validate::password(&at, &password)?;
        users.insert(name, password);
    }
    Ok(Users(users))
}

/// Writes `users` into a fresh database in the relay domain's realm, then swaps it in.
pub fn install(users: &Users, realm: &str, layout: &Layout) -> Result<(), RunError> {
    crate::postfix::instance::secure_dir(&layout.data_dir)?;
    let db = layout.sasldb();
    // The database holds every password, and saslpasswd2 creates it with a mode of its own
    // (0660 less the umask, group root): it is built in a directory only root can enter.
    let staging_dir = layout.data_dir.join(".sasldb2.staging");
    remove_dir_if_exists(&staging_dir)?;
    // Where earlier versions built it, beside the live one.
    remove_db(&db.with_extension("new"))?;
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging_dir)
        .map_err(RunError::io(format!("creating {}", staging_dir.display())))?;
    let staging = staging_dir.join("sasldb2");
    // saslpasswd2 cannot create an empty database: create it with one user, then remove it.
    let placeholder = "smtp-relay-placeholder";
    if users.0.is_empty() {
        saslpasswd(&staging, realm, placeholder, Some("-"))?;
        saslpasswd(&staging, realm, placeholder, None)?;
    }
    for (name, password) in &users.0 {
        saslpasswd(&staging, realm, name, Some(password))?;
    }
    #[cfg(test)]
    crate::created::record(&staging);
    let (_, postfix_gid) = postfix_ids()?;
    // smtpd reads the database as the postfix user (0600 gives "454 Temporary authentication
    // failure"): its final mode first, then the postfix group, which so never gets more than
    // reading it.
    fs::set_permissions(&staging, fs::Permissions::from_mode(0o640))
        .map_err(RunError::io(format!("chmod {}", staging.display())))?;
    chown(&staging, Some(0), Some(postfix_gid))
        .map_err(RunError::io(format!("chown {}", staging.display())))?;
    fs::rename(&staging, &db).map_err(RunError::io(format!("installing {}", db.display())))?;
    fs::remove_dir(&staging_dir)
        .map_err(RunError::io(format!("removing {}", staging_dir.display())))
}

/// Adds (`Some(password)`) or deletes (`None`) one user. The password goes through a pipe,
/// never the command line.
fn saslpasswd(db: &Path, realm: &str, user: &str, password: Option<&str>) -> Result<(), RunError> {
    let mut cmd = Command::new("saslpasswd2");
    cmd.arg("-f").arg(db).arg("-u").arg(realm);
    match password {
        Some(_) => cmd.args(["-p", "-c", user]),
        None => cmd.args(["-d", user]),
    };
    let shown = format!(
        "saslpasswd2 {} {user}",
        if password.is_some() { "-c" } else { "-d" }
    );
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(RunError::io(format!(
            "running {shown} (is sasl2-bin installed?)"
        )))?;
    if let (Some(mut stdin), Some(pw)) = (child.stdin.take(), password) {
        stdin
            .write_all(pw.as_bytes())
            .map_err(RunError::io(format!("writing to {shown}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(RunError::io(format!("running {shown}")))?;
    if !out.status.success() {
        return Err(RunError::Command {
            command: shown,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

fn remove_db(path: &Path) -> Result<(), RunError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(RunError::io(format!("removing {}", path.display()))(e))
        }
        _ => Ok(()),
    }
}

/// Logins registered in the database (`user@realm`), never their passwords.
pub fn list(layout: &Layout) -> Result<Vec<String>, RunError> {
    let db = layout.sasldb();
    if !db.exists() {
        return Ok(Vec::new());
    }
    let out = Command::new("sasldblistusers2")
        .arg("-f")
        .arg(&db)
        .output()
        .map_err(RunError::io("running sasldblistusers2"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut users: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_once(':').map(|(user, _)| user.trim().to_string()))
        .collect();
    users.sort();
    users.dedup();
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_file_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client_sasl_passwd");
        fs::write(&path, "# comment\napp1 secret one\n\napp2\tp}a:s,s\n").unwrap();
        let users = load(&SaslUserSource::PasswdFile(path.clone())).unwrap();
        assert_eq!(users.0["app1"], "secret one");
        assert_eq!(users.0["app2"], "p}a:s,s");
        assert_eq!(format!("{users:?}"), r#"{"app1", "app2"}"#);
        fs::write(&path, "app1 ok\nlonely\n").unwrap();
        let err = load(&SaslUserSource::PasswdFile(path))
            .unwrap_err()
            .to_string();
        assert!(err.contains("client_sasl_passwd:2"), "{err}");
    }

    /// A line whose first word is not a user name (here `login:password`, the relayhost file's
    /// form) is refused by its line, without quoting that word: it holds the password.
    #[test]
    fn a_bad_passwd_file_line_is_not_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client_sasl_passwd");
        for line in [
            "app1:Pw-MARKER-7Qz more words",
            "Pw-MARKER-7Qz/app1 secret",
            "-Pw-MARKER-7Qz secret",
        ] {
            fs::write(&path, format!("app0 fine\n{line}\n")).unwrap();
            let err = load(&SaslUserSource::PasswdFile(path.clone()))
                .unwrap_err()
                .to_string();
            assert!(!err.contains("MARKER"), "{line}: {err}");
            assert!(
                err.contains("client_sasl_passwd:2") && err.contains("not a valid SASL user name"),
                "{line}: {err}"
            );
        }
    }

    /// The database holds every password. saslpasswd2 creates it with a mode of its own (0660
    /// less the umask, group root), so it is built in a directory only root can enter, and is
    /// readable by the postfix group (smtpd) only once it is 0640: then it is swapped in.
    #[test]
    fn the_database_is_built_where_only_root_reaches_it() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout {
            config_dir: dir.path().join("postfix"),
            spool_dir: dir.path().join("spool"),
            data_dir: dir.path().join("data"),
            listen: "127.0.0.1:25".into(),
        };
        fs::create_dir_all(&layout.data_dir).unwrap();
        let users = Users(BTreeMap::from([("app1".into(), "pw one".into())]));
        for round in ["first", "again"] {
            install(&users, "example.net", &layout).unwrap();
            let created = crate::created::take();
            assert!(!created.is_empty(), "{round}");
            for c in &created {
                assert_eq!(
                    (c.dir_mode, c.dir_uid),
                    (0o700, 0),
                    "{round}: {} was built in a directory of mode {:o}",
                    c.path.display(),
                    c.dir_mode
                );
                assert_eq!(
                    (c.mode & 0o007, c.uid),
                    (0, 0),
                    "{round}: created as {:o}",
                    c.mode
                );
            }
            let db = fs::metadata(layout.sasldb()).unwrap();
            let (_, postfix_gid) = postfix_ids().unwrap();
            assert_eq!(
                (db.mode() & 0o7777, db.uid(), db.gid()),
                (0o640, 0, postfix_gid),
                "{round}"
            );
            assert_eq!(list(&layout).unwrap(), ["app1@example.net"]);
            let left: Vec<_> = fs::read_dir(&layout.data_dir)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(left, ["sasldb2"], "{round}: nothing else is left");
        }
    }

    #[test]
    fn secret_directory_skips_kubelet_entries() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("..2026_11_25_data")).unwrap();
        fs::write(dir.path().join("..data"), "").unwrap();
        fs::write(dir.path().join("app1"), "pw1\n").unwrap();
        let users = load(&SaslUserSource::Directory(dir.path().into())).unwrap();
        assert_eq!(users.0.len(), 1);
        assert_eq!(users.0["app1"], "pw1");
        fs::write(dir.path().join("bad name"), "pw").unwrap();
        assert!(load(&SaslUserSource::Directory(dir.path().into())).is_err());
    }
}
