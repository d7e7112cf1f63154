//! Unix sockets where Postfix asks the supervisor: the OAuth2 token's socketmap
//! ([`crate::oauth2`]), the policy service ([`crate::policy`]) and the milter
//! ([`crate::milter`]). Only Postfix and root may reach them.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

/// Serves the connections of the socket at `path` (bound by [`bind_out_of_reach`]), each by
/// `session` in a task of its own, at most `max` at once: the next is accepted only when one
/// of them ends. Runs until the task is dropped; `what` names the service in the log.
pub async fn serve_bounded<F, S>(
    path: &Path,
    max: usize,
    what: &'static str,
    session: F,
) -> std::io::Result<()>
where
    F: Fn(tokio::net::UnixStream) -> S,
    S: Future<Output = std::io::Result<()>> + Send + 'static,
{
    let listener = bind_out_of_reach(path)?;
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    loop {
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(std::io::Error::other)?;
        let (stream, _) = listener.accept().await?;
        let served = session(stream);
        tokio::spawn(async move {
            if let Err(e) = served.await {
                tracing::debug!(error = %e, "a {what} connection ended");
            }
            drop(slot);
        });
    }
}

/// Binds a socket at `path` so that nobody but root can ever reach it before it
/// is 0600 and the postfix user's: bound in a fresh directory beside it that only root may
/// enter (the socket's own mode is whatever the umask leaves: 0777 under umask 0), restricted
/// there, then renamed into place (over an earlier run's socket).
pub fn bind_out_of_reach(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::other(format!(
            "{} is no path for a socket",
            path.display()
        )));
    };
    let private = parent.join(format!(".{}.binding", name.to_string_lossy()));
    // One left by an interrupted start: removed (a link there is removed, not followed), so
    // the directory is created anew, ours and 0700.
    match std::fs::remove_dir_all(&private) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let bound = (|| -> std::io::Result<tokio::net::UnixListener> {
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700))?;
        let staged = private.join(name);
        let listener = tokio::net::UnixListener::bind(&staged)?;
        #[cfg(test)]
        crate::created::record(&staged);
        restrict_to_postfix(&staged)?;
        std::fs::rename(&staged, path)?;
        Ok(listener)
    })();
    let removed = std::fs::remove_dir_all(&private);
    let listener = bound?;
    removed?;
    Ok(listener)
}

/// Only Postfix (and root) may connect.
fn restrict_to_postfix(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if nix::unistd::geteuid().is_root() {
        if let Ok(Some(user)) = nix::unistd::User::from_name("postfix") {
            nix::unistd::chown(path, Some(user.uid), Some(user.gid))
                .map_err(std::io::Error::from)?;
        }
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}
