//! Refresh tokens that the provider rotates: which one is the newest, wherever it is kept.
//!
//! A provider that rotates hands out a new refresh token at every refresh, and may refuse the
//! one it replaced. The newest token is kept with the SHA-256 digests of the tokens it replaced
//! ([`Rotated`]), so any holder of an older token (the configured file, another replica, the
//! user's Secret that the operator updates) can tell that a newer one exists, while a token the
//! user configured anew (a new consent) is never mistaken for an old one.
//!
//! Kept in two places: a 0600 file on the pod's own volume (a restart, or a relay outside
//! Kubernetes), and, in Kubernetes, one Secret that every replica of the relay reads before
//! each refresh and writes after a rotation (compare-and-swap on its resourceVersion), so
//! replicas never disagree for longer than one refused refresh. The operator copies the newest
//! token back into the user's Secret with [`Rotated::replaces`], the same rule.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::kube_api::{InCluster, Written};
use crate::settings::Secret;

/// The key of the shared Secret holding the newest refresh token.
pub const TOKEN_KEY: &str = "refreshToken";
/// The key of the shared Secret holding the digests of the tokens it replaced, one per line.
pub const SUPERSEDES_KEY: &str = "supersedes";
/// Digests kept: enough for days of hourly rotations by several replicas; the operator writes
/// the newest token back within seconds, so a configured token is never that far behind.
const SUPERSEDES_KEPT: usize = 100;

/// The lowercase hex SHA-256 of a token: what [`Rotated`] remembers of the tokens it replaced.
pub fn digest(token: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The newest refresh token of a chain of rotations, and the digests of the tokens it replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    pub token: Secret,
    pub supersedes: Vec<String>,
}

impl Rotated {
    /// This token is `other`, or replaced it: use this one instead of `other`.
    pub fn replaces(&self, other: &Secret) -> bool {
        self.token == *other || self.supersedes.contains(&digest(&other.0))
    }

    /// The chain after `used` was exchanged for `new`: `used`'s own chain (`from`, when `used`
    /// came from one), then `used` itself.
    pub fn after(from: Option<&Rotated>, used: &Secret, new: Secret) -> Rotated {
        let mut supersedes: Vec<String> = from
            .filter(|r| r.token == *used)
            .map(|r| r.supersedes.clone())
            .unwrap_or_default();
        let used = digest(&used.0);
        supersedes.retain(|d| *d != used);
        supersedes.push(used);
        let excess = supersedes.len().saturating_sub(SUPERSEDES_KEPT);
        supersedes.drain(..excess);
        Rotated {
            token: new,
            supersedes,
        }
    }

    /// The newest of `configured` and the chains in `candidates`, in order: a candidate wins
    /// when it replaces the best so far (put the one the replicas share first).
    pub fn newest<'a>(
        configured: &'a Secret,
        candidates: impl IntoIterator<Item = &'a Rotated>,
    ) -> (&'a Secret, Option<&'a Rotated>) {
        let mut best = (configured, None);
        for c in candidates {
            if c.replaces(best.0) {
                best = (&c.token, Some(c));
            }
        }
        best
    }

    /// The Secret data that holds this chain.
    pub fn to_data(&self) -> BTreeMap<String, Vec<u8>> {
        BTreeMap::from([
            (TOKEN_KEY.to_string(), self.token.0.clone().into_bytes()),
            (
                SUPERSEDES_KEY.to_string(),
                self.supersedes.join("\n").into_bytes(),
            ),
        ])
    }

    /// The chain a Secret's data holds; `None` while it holds none (the operator creates the
    /// Secret empty).
    pub fn from_data(data: &BTreeMap<String, Vec<u8>>) -> Option<Rotated> {
        let token = String::from_utf8(data.get(TOKEN_KEY)?.clone()).ok()?;
        if token.is_empty() || token.chars().any(char::is_whitespace) {
            return None;
        }
        let supersedes = data
            .get(SUPERSEDES_KEY)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        Some(Rotated {
            token: Secret(token),
            supersedes,
        })
    }

    /// The file's text: the digests, a line each, then an empty line and the token.
    fn to_text(&self) -> String {
        let mut text = String::new();
        for d in &self.supersedes {
            text.push_str(d);
            text.push('\n');
        }
        text.push('\n');
        text.push_str(&self.token.0);
        text
    }

    /// Reads [`Rotated::to_text`], and the older `digest\ntoken` file (one configured token).
    fn from_text(text: &str) -> Option<Rotated> {
        let (head, token) = match text.split_once("\n\n") {
            Some(parts) => parts,
            None => text.split_once('\n')?,
        };
        let token = token.trim_end_matches('\n');
        if token.is_empty() || token.chars().any(char::is_whitespace) {
            return None;
        }
        Some(Rotated {
            token: Secret(token.into()),
            supersedes: head.lines().map(str::to_string).collect(),
        })
    }
}

/// Where the newest refresh token is kept: the pod's own file, and the Secret the replicas
/// share (when configured and reachable).
pub struct Store {
    pub file: PathBuf,
    pub shared: Option<SharedSecret>,
}

/// The Secret every replica of a relay shares, through the Kubernetes API with the pod's own
/// ServiceAccount (allowed `get` and `patch` on that one Secret).
pub struct SharedSecret {
    pub name: String,
    pub api: Option<InCluster>,
}

/// What a refresh starts from.
pub struct Loaded {
    /// The shared chain and the resourceVersion it was read at.
    shared: Option<(Option<Rotated>, String)>,
    local: Option<Rotated>,
}

impl Loaded {
    /// The refresh token to use: the newest of the configured one, the shared one and the
    /// pod's own.
    pub fn newest<'a>(&'a self, configured: &'a Secret) -> (&'a Secret, Option<&'a Rotated>) {
        let shared = self.shared.as_ref().and_then(|(r, _)| r.as_ref());
        Rotated::newest(configured, shared.into_iter().chain(self.local.as_ref()))
    }
}

impl Store {
    pub async fn load(&mut self) -> Loaded {
        let local = std::fs::read_to_string(&self.file)
            .ok()
            .and_then(|t| Rotated::from_text(&t));
        let shared = match &mut self.shared {
            Some(s) => s.read().await,
            None => None,
        };
        Loaded { shared, local }
    }

    /// Keeps a rotation: in the pod's file first (it survives a restart even when the API
    /// cannot be reached), then in the shared Secret unless another replica rotated since it
    /// was read (its token wins at the next refresh).
    pub async fn save(&mut self, loaded: &Loaded, rotated: &Rotated) {
        if let Err(e) = self.save_file(rotated) {
            tracing::warn!(error = %e, file = %self.file.display(), "cannot keep the rotated refresh token on the volume");
        }
        let Some(shared) = &mut self.shared else {
            return;
        };
        let Some((_, version)) = &loaded.shared else {
            tracing::warn!(secret = %shared.name, "the rotated refresh token is not shared: the Secret could not be read; the other replicas keep theirs");
            return;
        };
        shared.write(version, rotated).await;
    }

    /// Writes the chain to the pod's file: a new 0600 file renamed over it, in a 0700 directory
    /// of the relay's own.
    fn save_file(&self, rotated: &Rotated) -> std::io::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        if let Some(dir) = self.file.parent() {
            private_dir(dir)?;
        }
        let tmp = self.file.with_extension("tmp");
        // A temporary file an interrupted write left is not reused: opening it would keep its
        // mode (and write through a hard link it may be). Created anew, it is ours and 0600.
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(rotated.to_text().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(tmp, &self.file)
    }
}

/// Makes `dir` (created if needed) exactly 0700, refusing a symbolic link and a directory that
/// is not the relay's own: `DirBuilder::mode` applies only to a directory it creates, and an
/// existing one (an earlier version's, a volume's) may be open to others. The relay's directory
/// on the spool (this token, the last good configuration: `crate::revision`) is made with it.
pub fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    if meta.file_type().is_symlink() {
        return Err(std::io::Error::other(format!(
            "{} is a symbolic link: remove it (the relay creates the directory)",
            dir.display()
        )));
    }
    let uid = nix::unistd::geteuid().as_raw();
    if meta.uid() != uid {
        return Err(std::io::Error::other(format!(
            "{} belongs to uid {}, not to the relay (uid {uid}): remove it (the relay creates the directory)",
            dir.display(),
            meta.uid()
        )));
    }
    if meta.mode() & 0o7777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

impl SharedSecret {
    fn api(&mut self) -> Option<&InCluster> {
        if self.api.is_none() {
            match InCluster::from_pod() {
                Ok(api) => self.api = Some(api),
                Err(e) => {
                    tracing::warn!(secret = %self.name, error = %e, "cannot reach the Kubernetes API to share the refresh token");
                    return None;
                }
            }
        }
        self.api.as_ref()
    }

    async fn read(&mut self) -> Option<(Option<Rotated>, String)> {
        let name = self.name.clone();
        match self.api()?.get_secret(&name).await {
            Ok(Some((data, version))) => Some((Rotated::from_data(&data), version)),
            Ok(None) => {
                tracing::warn!(secret = %name, "the Secret shared by the replicas for the refresh token does not exist (the operator creates it)");
                None
            }
            Err(e) => {
                tracing::warn!(secret = %name, error = %e, "cannot read the shared refresh token; using the pod's own");
                None
            }
        }
    }

    async fn write(&mut self, version: &str, rotated: &Rotated) {
        let name = self.name.clone();
        let Some(api) = self.api() else { return };
        match api.patch_secret(&name, version, &rotated.to_data()).await {
            Ok(Written::Yes) => {
                tracing::info!(secret = %name, "shared the rotated refresh token with the other replicas");
            }
            Ok(Written::Conflict) => {
                tracing::info!(secret = %name, "another replica rotated the refresh token meanwhile; its token is used from the next refresh");
            }
            Err(e) => {
                tracing::warn!(secret = %name, error = %e, "cannot share the rotated refresh token; the other replicas keep theirs until it is");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: &str) -> Secret {
        Secret(t.into())
    }

    #[test]
    fn a_chain_replaces_the_tokens_it_came_from_and_no_new_consent() {
        let first = Rotated::after(None, &s("configured"), s("rt-1"));
        let second = Rotated::after(Some(&first), &s("rt-1"), s("rt-2"));
        assert!(second.replaces(&s("configured")));
        assert!(second.replaces(&s("rt-1")));
        assert!(second.replaces(&s("rt-2")));
        assert!(!second.replaces(&s("a-new-consent")));
        // A chain started from a token that is not the stored one does not inherit its past.
        let other = Rotated::after(Some(&first), &s("a-new-consent"), s("rt-9"));
        assert!(!other.replaces(&s("configured")));
        assert!(other.replaces(&s("a-new-consent")));
        assert!(!format!("{second:?}").contains("rt-2"));
    }

    #[test]
    fn the_newest_of_the_configured_the_shared_and_the_own_token() {
        let configured = s("configured");
        let shared = Rotated::after(None, &configured, s("rt-1"));
        let own_ahead = Rotated::after(Some(&shared), &s("rt-1"), s("rt-2"));
        let own_behind = shared.clone();
        let own_forked = Rotated::after(None, &configured, s("rt-x"));
        let newest = |c: &[&Rotated]| Rotated::newest(&configured, c.iter().copied()).0.clone();
        assert_eq!(newest(&[]), configured);
        assert_eq!(newest(&[&shared]), s("rt-1"));
        assert_eq!(newest(&[&shared, &own_ahead]), s("rt-2"));
        assert_eq!(newest(&[&shared, &own_behind]), s("rt-1"));
        // Two replicas rotated the same token at once: the shared one wins.
        assert_eq!(newest(&[&shared, &own_forked]), s("rt-1"));
        // The user consented again: the new configured token wins over every old chain.
        let again = s("consented-again");
        assert_eq!(Rotated::newest(&again, [&shared, &own_ahead]).0, &again);
    }

    #[test]
    fn chains_are_bounded_and_round_trip_through_secret_data_and_file() {
        let mut chain = Rotated::after(None, &s("rt-0"), s("rt-1"));
        for i in 1..150 {
            chain = Rotated::after(
                Some(&chain),
                &s(&format!("rt-{i}")),
                s(&format!("rt-{}", i + 1)),
            );
        }
        assert_eq!(chain.supersedes.len(), SUPERSEDES_KEPT);
        assert!(chain.replaces(&s("rt-149")) && !chain.replaces(&s("rt-0")));
        assert_eq!(Rotated::from_data(&chain.to_data()), Some(chain.clone()));
        assert_eq!(Rotated::from_text(&chain.to_text()), Some(chain.clone()));
        assert_eq!(Rotated::from_data(&BTreeMap::new()), None);
        // The file of an older relay: the configured token's digest, then the rotated token.
        let old = format!("{}\nrt-old", digest("configured"));
        let read = Rotated::from_text(&old).unwrap();
        assert!(read.replaces(&s("configured")) && read.token == s("rt-old"));
    }

    /// What an earlier run or someone else left on the volume does not loosen the file: a
    /// temporary file left by an interrupted write (open to all, or a hard link to another
    /// file) is not reused, and the directory becomes 0700 whatever its mode was. A directory
    /// that is a symbolic link, or someone else's, is refused and nothing is written.
    #[test]
    fn leftovers_on_the_volume_do_not_loosen_the_file() {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("smtp-relay");
        let store = Store {
            file: dir.join("oauth2-refresh-token"),
            shared: None,
        };
        let chain = Rotated::after(None, &s("configured"), s("rt-1"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let tmp = store.file.with_extension("tmp");
        std::fs::write(&tmp, "stale").unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o666)).unwrap();
        store.save_file(&chain).unwrap();
        assert_eq!(mode(&store.file), 0o600);
        assert_eq!(mode(&dir), 0o700);
        assert!(!tmp.exists());

        // A hard link to a file elsewhere: that file keeps its content.
        let elsewhere = top.path().join("elsewhere");
        std::fs::write(&elsewhere, "someone's").unwrap();
        std::fs::hard_link(&elsewhere, &tmp).unwrap();
        store.save_file(&chain).unwrap();
        assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "someone's");
        assert_eq!(mode(&store.file), 0o600);

        // Someone else's directory, then a symbolic link: refused, nothing written.
        std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
        let err = store.save_file(&chain).unwrap_err().to_string();
        assert!(err.contains("uid 65534"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
        let target = top.path().join("target");
        std::fs::create_dir(&target).unwrap();
        std::os::unix::fs::symlink(&target, &dir).unwrap();
        let err = store.save_file(&chain).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
        assert_eq!(std::fs::metadata(&target).unwrap().uid(), 0);
    }

    #[tokio::test]
    async fn the_pods_file_is_0600_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store {
            file: dir.path().join("oauth2").join("rt"),
            shared: None,
        };
        let chain = Rotated::after(None, &s("configured"), s("rt-1"));
        let loaded = store.load().await;
        assert_eq!(loaded.newest(&s("configured")).0, &s("configured"));
        store.save(&loaded, &chain).await;
        let loaded = store.load().await;
        assert_eq!(loaded.newest(&s("configured")).0, &s("rt-1"));
        assert_eq!(loaded.newest(&s("new-consent")).0, &s("new-consent"));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&store.file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
