//! Secret volumes laid out as the kubelet lays them out, for relays run outside a pod (the
//! image's tests, the e2e suite's upstream relay): what a relay reads from a mounted Secret is
//! exactly what it reads here, and an update is the kubelet's atomic swap.

use std::fs;
use std::io;
use std::os::unix::fs::{symlink, DirBuilderExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// A Secret volume: a timestamped directory `..<n>` holds the files, `..data` points at it,
/// and each key is a symlink `key -> ..data/key`.
pub struct SecretVolume {
    pub dir: PathBuf,
    /// The files' mode: a Secret volume's `defaultMode`.
    mode: u32,
}

impl SecretVolume {
    /// Creates `dir` holding `files` (key, value), each with mode 0644 (the kubelet's default).
    ///
    /// # Panics
    ///
    /// If the directory cannot be written: these are test fixtures.
    pub fn create(dir: PathBuf, files: &[(&str, &str)]) -> SecretVolume {
        SecretVolume::with_mode(dir, 0o644, files)
            .unwrap_or_else(|e| panic!("writing a Secret volume: {e}"))
    }

    /// Creates `dir` holding `files`, each with `mode` (a `defaultMode`).
    pub fn with_mode(dir: PathBuf, mode: u32, files: &[(&str, &str)]) -> io::Result<SecretVolume> {
        fs::create_dir_all(&dir)?;
        let vol = SecretVolume { dir, mode };
        vol.write(files)?;
        Ok(vol)
    }

    /// Replaces the files, as the kubelet does after a Secret update.
    ///
    /// # Panics
    ///
    /// If the directory cannot be written.
    pub fn update(&mut self, files: &[(&str, &str)]) {
        self.write(files)
            .unwrap_or_else(|e| panic!("updating a Secret volume: {e}"));
    }

    /// The kubelet's AtomicWriter: the files in a new timestamped directory, a `..data_tmp`
    /// symlink to it renamed over `..data`, a symlink per key added where missing, stale keys'
    /// symlinks removed, then the previous timestamped directory removed.
    pub fn write(&self, files: &[(&str, &str)]) -> io::Result<()> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let old = fs::read_link(self.dir.join("..data")).ok();
        let ts = format!(
            "..2026_11_29_00_00_00.{}{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let ts_dir = self.dir.join(&ts);
        fs::DirBuilder::new().mode(0o755).create(&ts_dir)?;
        for (name, content) in files {
            check_key(name)?;
            let path = ts_dir.join(name);
            fs::write(&path, content)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(self.mode))?;
        }
        let tmp = self.dir.join("..data_tmp");
        let _ = fs::remove_file(&tmp);
        symlink(&ts, &tmp)?;
        fs::rename(&tmp, self.dir.join("..data"))?;
        for (name, _) in files {
            let link = self.dir.join(name);
            if fs::symlink_metadata(&link).is_err() {
                symlink(format!("..data/{name}"), &link)?;
            }
        }
        for entry in fs::read_dir(&self.dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && !files.iter().any(|(n, _)| *n == name) {
                fs::remove_file(entry.path())?;
            }
        }
        if let Some(old) = old {
            fs::remove_dir_all(self.dir.join(old))?;
        }
        Ok(())
    }
}

/// A Secret key is a file name: no `/`, not `.` or `..`.
fn check_key(name: &str) -> io::Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a Secret key"),
        ));
    }
    Ok(())
}
