//! Small state files only root may read (the intent journal, the daemon's
//! state): written whole or not at all.

use std::{
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::Path,
};

use crate::error::{Error, Result};

/// Writes `bytes` to `path` atomically: a temporary file (mode 0600) in the
/// same folder (created 0700), synced, then renamed over `path`, so a reader
/// or a crash sees the old content or the new, never a part. `what` names
/// the file in errors.
pub fn write(path: &Path, bytes: &[u8], what: &'static str) -> Result<()> {
    let dir = path.parent().expect("a state file has a folder");
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::io(what, &tmp, e))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(|e| Error::io(what, &tmp, e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(what, path, e))
}
