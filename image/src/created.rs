//! Test seam: what a file the relay creates looks like the moment it exists, before anything
//! else is done to it (recorded per thread, so tests running side by side do not mix).

use std::cell::RefCell;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// A file as it was created: its mode and owner, and its directory's mode and owner.
#[derive(Debug, Clone)]
pub struct Created {
    pub path: PathBuf,
    pub mode: u32,
    pub uid: u32,
    pub dir_mode: u32,
    pub dir_uid: u32,
}

thread_local! {
    static CREATED: RefCell<Vec<Created>> = const { RefCell::new(Vec::new()) };
}

pub fn record(path: &Path) {
    let meta = std::fs::symlink_metadata(path).unwrap();
    let dir = std::fs::metadata(path.parent().unwrap()).unwrap();
    let created = Created {
        path: path.to_path_buf(),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        dir_mode: dir.mode() & 0o7777,
        dir_uid: dir.uid(),
    };
    CREATED.with(|c| c.borrow_mut().push(created));
}

/// What this thread created since the last call.
pub fn take() -> Vec<Created> {
    CREATED.with(|c| std::mem::take(&mut *c.borrow_mut()))
}
