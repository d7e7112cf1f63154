//! Configuration revisions, so that a value that breaks Postfix stops at one pod.
//!
//! The operator mounts one ConfigMap in every pod of a relay; the kubelet updates it in all of
//! them at once. For a canary rollout (the StatefulSet's partition) each pod runs the revision
//! of its own pod template: the template carries the config hash as the annotation
//! [`CONFIG_HASH_ANNOTATION`] (the pod reads it from its downward-API annotations file), and
//! the ConfigMap carries the hash of its `relay.yaml` in the file [`REVISION_FILE`] beside it.
//! A pod applies `relay.yaml` only when the two agree ([`on_tick`]); a pod of the old template
//! keeps what it runs, a pod of the new one waits for its revision ([`at_start`]). Without an
//! annotation or a revision file (the environment's variables, an older operator, plain docker)
//! nothing is gated.
//!
//! Each pod also keeps, on its spool volume, the last `relay.yaml` that passed the self-check
//! ([`LastGood`]): a pod of the old template restarted during a halted rollout runs it, and a
//! pod whose new revision fails falls back to it.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::RunError;

/// The pod annotation holding the revision of the pod's template: the operator's config hash.
pub const CONFIG_HASH_ANNOTATION: &str = "smtprelay.dev/config-hash";

/// The file, beside the config file (the same ConfigMap), holding the revision of the config
/// file: the same config hash.
pub const REVISION_FILE: &str = "revision";

/// How long a starting pod waits, by default, for the config file of its own revision: the
/// kubelet projects an updated ConfigMap into running pods within about a minute (its sync
/// period plus its cache's).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(90);

/// How often a starting pod looks again for its revision.
pub const POLL: Duration = Duration::from_millis(250);

/// The longest revision taken: a config hash is 64 hex digits.
const REVISION_MAX: usize = 128;

/// The start of a revision as the logs and the termination message show it.
pub fn short(revision: &str) -> &str {
    revision.get(..12).unwrap_or(revision)
}

/// A revision as written in a file or an annotation: the value trimmed, if it is a plain token
/// (letters, digits, `.`, `_`, `-`, at most `REVISION_MAX` characters); anything else is no
/// revision, so a label value or a log line never carries more.
pub fn valid(value: &str) -> Option<String> {
    let value = value.trim();
    let plain = !value.is_empty()
        && value.len() <= REVISION_MAX
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    plain.then(|| value.to_string())
}

/// The pod's own revision: its [`CONFIG_HASH_ANNOTATION`] in the downward-API file
/// `annotations`. `None` without the file or the annotation.
pub fn own_revision(annotations: &Path) -> Option<String> {
    let text = std::fs::read_to_string(annotations).ok()?;
    annotation(&text, CONFIG_HASH_ANNOTATION).and_then(|v| valid(&v))
}

/// The value of `key` in a downward-API annotations file: a `key="value"` line, the value
/// quoted as Go quotes strings (`\"`, `\\`, `\n`, `\t` escaped).
pub fn annotation(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k == key).then(|| unquote(v.trim()))?
    })
}

fn unquote(value: &str) -> Option<String> {
    let inner = value.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            'n' => out.push('\n'),
            't' => out.push('\t'),
            'r' => out.push('\r'),
            other => out.push(other),
        }
    }
    Some(out)
}

/// The revision file of the config file `config`: [`REVISION_FILE`] in its directory.
pub fn revision_file(config: &Path) -> PathBuf {
    config
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join(REVISION_FILE)
}

/// A config file's text, and the revision it was written as (`None`: not said).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigText {
    pub text: String,
    pub revision: Option<String>,
}

/// Reads the mounted config file and its revision as one pair. The kubelet swaps a ConfigMap's
/// files together (a symbolic link to a new directory), but two reads may straddle a swap: the
/// revision is read again after the text, and the pair read again if it changed. A missing
/// revision file is no revision; a revision file that is not a plain token is none either.
pub fn read_mounted(config: &Path) -> io::Result<ConfigText> {
    let revision_path = revision_file(config);
    let read_revision = || match std::fs::read_to_string(&revision_path) {
        Ok(text) => Ok(valid(&text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    };
    let mut revision = read_revision()?;
    for _ in 0..3 {
        let text = std::fs::read_to_string(config)?;
        let after = read_revision()?;
        if after == revision {
            return Ok(ConfigText { text, revision });
        }
        revision = after;
    }
    let text = std::fs::read_to_string(config)?;
    Ok(ConfigText { text, revision })
}

/// What a starting pod runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtStart {
    /// The mounted config file: its revision is the pod's own, or nothing is gated.
    Mounted,
    /// The last good copy on the spool: it is of the pod's own revision and the mounted file
    /// is not (a pod of the old template restarted while the rollout is halted).
    LastGood,
    /// Neither: the kubelet may not have projected the new ConfigMap yet; look again.
    Wait,
}

/// What a starting pod runs, from its own revision, the mounted file's and the last good
/// copy's (each `None` when there is none).
pub fn at_start(own: Option<&str>, mounted: Option<&str>, last_good: Option<&str>) -> AtStart {
    match (own, mounted) {
        (Some(own), Some(mounted)) if own != mounted => {
            if last_good == Some(own) {
                AtStart::LastGood
            } else {
                AtStart::Wait
            }
        }
        _ => AtStart::Mounted,
    }
}

/// What a running pod does with the mounted config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnTick {
    /// Apply it if it changed: its revision is the pod's own, or nothing is gated.
    Follow,
    /// Leave it: it is another template's revision (newer or older). Postfix keeps running
    /// what it runs; the SASL users are still followed (they are not part of the revision).
    Hold,
}

pub fn on_tick(own: Option<&str>, mounted: Option<&str>) -> OnTick {
    match (own, mounted) {
        (Some(own), Some(mounted)) if own != mounted => OnTick::Hold,
        _ => OnTick::Follow,
    }
}

/// The first line of the last good copy, before the revision; the config file's text follows
/// on the next line, as it was.
const HEADER: &str = "# smtp-relay: the last relay.yaml that passed the self-check here, revision ";

/// The last good copy of the config file, on the spool volume: the text and revision that last
/// passed the self-check in this pod. It holds no secret (the config file only names the files
/// that hold them), but sits in the relay's own 0700 directory all the same.
#[derive(Debug, Clone)]
pub struct LastGood {
    path: PathBuf,
}

impl LastGood {
    pub fn new(path: PathBuf) -> Self {
        LastGood { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The copy, if there is a readable one (its revision always `Some`).
    pub fn load(&self) -> Option<ConfigText> {
        let stored = match std::fs::read_to_string(&self.path) {
            Ok(stored) => stored,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot read the last good configuration");
                return None;
            }
        };
        let parsed = stored.split_once('\n').and_then(|(header, text)| {
            let revision = valid(header.strip_prefix(HEADER)?)?;
            Some(ConfigText {
                text: text.to_string(),
                revision: Some(revision),
            })
        });
        if parsed.is_none() {
            tracing::warn!(path = %self.path.display(), "the last good configuration is not in the relay's format; ignoring it");
        }
        parsed
    }

    /// Keeps `text` as the last good configuration of `revision`: a new 0600 file renamed over
    /// the old one, so a restart finds either whole. Nothing is written when it is kept already.
    pub fn save(&self, text: &str, revision: &str) -> Result<(), RunError> {
        let stored = self.load();
        if stored
            .as_ref()
            .is_some_and(|s| s.text == text && s.revision.as_deref() == Some(revision))
        {
            return Ok(());
        }
        if let Some(dir) = self.path.parent() {
            crate::oauth2::rotation::private_dir(dir)
                .map_err(RunError::io(format!("preparing {}", dir.display())))?;
        }
        crate::postfix::instance::write_file(
            &self.path,
            &format!("{HEADER}{revision}\n{text}"),
            0o600,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pods_revision_is_its_config_hash_annotation() {
        let file = "kubectl.kubernetes.io/restartedAt=\"2025-01-01T00:00:00Z\"\nsmtprelay.dev/config-hash=\"0123abcd\"\nsmtprelay.dev/drain=\"true\"\n";
        assert_eq!(
            annotation(file, CONFIG_HASH_ANNOTATION).as_deref(),
            Some("0123abcd")
        );
        assert_eq!(annotation(file, "other"), None);
        assert_eq!(
            annotation("note=\"a \\\"b\\\" \\\\ c\\nd\"\n", "note").as_deref(),
            Some("a \"b\" \\ c\nd")
        );
        // Not quoted as the kubelet quotes: no value.
        assert_eq!(
            annotation("smtprelay.dev/config-hash=0123\n", CONFIG_HASH_ANNOTATION),
            None
        );
        // A value that is not a plain token is no revision.
        assert_eq!(valid(" 0123abcd\n").as_deref(), Some("0123abcd"));
        assert_eq!(valid("a b"), None);
        assert_eq!(valid(""), None);
        assert_eq!(valid(&"a".repeat(REVISION_MAX + 1)), None);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("annotations");
        assert_eq!(own_revision(&path), None);
        std::fs::write(&path, file).unwrap();
        assert_eq!(own_revision(&path).as_deref(), Some("0123abcd"));
        assert_eq!(short("0123456789abcdef"), "0123456789ab");
        assert_eq!(short("abc"), "abc");
    }

    #[test]
    fn a_starting_pod_runs_its_own_revision() {
        use AtStart::*;
        for (own, mounted, last_good, expected) in [
            // Nothing gated: no annotation, or no revision file.
            (None, None, None, Mounted),
            (None, Some("b"), Some("a"), Mounted),
            (Some("a"), None, Some("b"), Mounted),
            // The mounted file is the pod's own revision.
            (Some("b"), Some("b"), None, Mounted),
            (Some("b"), Some("b"), Some("a"), Mounted),
            // A pod of the old template, restarted while the rollout is halted.
            (Some("a"), Some("b"), Some("a"), LastGood),
            // A pod of the new template before the kubelet projected the new file, or a pod
            // of the old template that never ran its revision here.
            (Some("b"), Some("a"), None, Wait),
            (Some("b"), Some("a"), Some("a"), Wait),
            (Some("a"), Some("b"), Some("c"), Wait),
        ] {
            assert_eq!(
                at_start(own, mounted, last_good),
                expected,
                "own {own:?}, mounted {mounted:?}, last good {last_good:?}"
            );
        }
    }

    #[test]
    fn a_running_pod_follows_only_its_own_revision() {
        assert_eq!(on_tick(None, None), OnTick::Follow);
        assert_eq!(on_tick(None, Some("b")), OnTick::Follow);
        assert_eq!(on_tick(Some("a"), None), OnTick::Follow);
        assert_eq!(on_tick(Some("a"), Some("a")), OnTick::Follow);
        assert_eq!(on_tick(Some("a"), Some("b")), OnTick::Hold);
    }

    #[test]
    fn the_mounted_file_is_read_with_its_revision() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("relay.yaml");
        std::fs::write(&config, "domain: example.net\n").unwrap();
        let read = read_mounted(&config).unwrap();
        assert_eq!(read.revision, None);
        std::fs::write(dir.path().join(REVISION_FILE), "0123abcd\n").unwrap();
        let read = read_mounted(&config).unwrap();
        assert_eq!(read.revision.as_deref(), Some("0123abcd"));
        assert_eq!(read.text, "domain: example.net\n");
        std::fs::remove_file(&config).unwrap();
        assert!(read_mounted(&config).is_err());
    }

    #[test]
    fn the_last_good_copy_is_kept_whole_in_a_private_directory() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let store = LastGood::new(dir.path().join("spool/smtp-relay/last-good.yaml"));
        assert_eq!(store.load(), None);
        let text = "domain: example.net\n# revision 0000\n";
        store.save(text, "0123abcd").unwrap();
        assert_eq!(
            store.load(),
            Some(ConfigText {
                text: text.into(),
                revision: Some("0123abcd".into())
            })
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(store.path()), 0o600);
        assert_eq!(mode(store.path().parent().unwrap()), 0o700);
        store.save("domain: example.org\n", "4567").unwrap();
        assert_eq!(
            store.load().map(|c| (c.text, c.revision)),
            Some(("domain: example.org\n".into(), Some("4567".into())))
        );
        // Something else in its place is not taken for a configuration.
        std::fs::write(store.path(), "domain: example.net\n").unwrap();
        assert_eq!(store.load(), None);
    }
}
