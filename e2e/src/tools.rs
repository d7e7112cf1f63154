//! Where the project's test tools live.

use std::path::PathBuf;

/// The workspace root: the parent of this crate's directory.
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .expect("e2e crate has a parent directory")
        .to_path_buf()
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
