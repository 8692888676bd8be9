//! Serialises changing commands: each takes an exclusive `flock` on the pin
//! folder, so concurrent CLI calls from scripts cannot interleave their map
//! writes. The lock dies with the process, so a killed CLI never leaves the
//! folder locked.

use std::{fs::File, os::fd::AsRawFd, path::Path};

use crate::error::{Error, Result};

pub struct PinLock {
    _dir: File,
}

impl PinLock {
    /// Blocks until the lock on `dir` is ours.
    pub fn acquire(dir: &Path) -> Result<Self> {
        let file = File::open(dir).map_err(|e| Error::Lock { path: dir.into(), source: e })?;
        // SAFETY: valid fd owned by `file`.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(Error::Lock { path: dir.into(), source: std::io::Error::last_os_error() });
        }
        Ok(Self { _dir: file })
    }
}
