//! Serialises changing commands: each takes an exclusive `flock` on the pin
//! folder, so concurrent CLI calls from scripts cannot interleave their map
//! writes. The lock dies with the process, so a killed CLI never leaves the
//! folder locked.
//!
//! A command may wait for the lock while another one detaches: the folder it
//! opened is then removed (or removed and created again by an `attach`).
//! `acquire` therefore checks, once the lock is held, that the locked folder
//! is still the one at the path, and says "not attached" when it is gone, so
//! no command writes into maps that are no longer pinned.

use std::{
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt as _},
    path::Path,
};

use crate::error::{Error, Result};

pub struct PinLock {
    _dir: File,
}

impl PinLock {
    /// Blocks until the lock on `dir` is ours; `NotAttached` when `dir` does
    /// not exist (any more).
    pub fn acquire(dir: &Path) -> Result<Self> {
        loop {
            let file = match File::open(dir) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(Error::NotAttached { pin_dir: dir.into() })
                }
                Err(e) => return Err(Error::Lock { path: dir.into(), source: e }),
            };
            // SAFETY: valid fd owned by `file`.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(Error::Lock { path: dir.into(), source: std::io::Error::last_os_error() });
            }
            let locked = file.metadata().map_err(|e| Error::Lock { path: dir.into(), source: e })?;
            match std::fs::metadata(dir) {
                Ok(now) if now.ino() == locked.ino() && now.dev() == locked.dev() => {
                    return Ok(Self { _dir: file })
                }
                // Removed and created again while we waited: lock the new one.
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(Error::NotAttached { pin_dir: dir.into() })
                }
                Err(e) => return Err(Error::Lock { path: dir.into(), source: e }),
            }
        }
    }

    /// Whether some process holds the lock on `dir` right now (a changing
    /// command is running), without waiting.
    pub fn is_held(dir: &Path) -> bool {
        let Ok(file) = File::open(dir) else { return false };
        // SAFETY: valid fd owned by `file`; the lock, if we get it, goes
        // with the file at the end of this function.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0 }
    }
}
