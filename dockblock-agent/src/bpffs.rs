//! Makes sure bpffs is mounted, as a fresh machine may not have it.

use std::{ffi::CString, path::Path};

use crate::{
    error::{Error, Result},
    paths::BPFFS_ROOT,
};

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Mounts bpffs at /sys/fs/bpf unless `pin_root` already lies on a bpffs.
pub fn ensure_mounted(pin_root: &Path) -> Result<()> {
    let probe = pin_root.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    if is_bpffs(probe) {
        return Ok(());
    }
    if !pin_root.starts_with(BPFFS_ROOT) {
        let err = std::io::Error::other(format!("{} is not on a bpf filesystem", pin_root.display()));
        return Err(Error::Bpffs { path: pin_root.into(), source: err });
    }
    let target = CString::new(BPFFS_ROOT).expect("no NUL");
    let fstype = CString::new("bpf").expect("no NUL");
    std::fs::create_dir_all(BPFFS_ROOT).map_err(|e| Error::Bpffs { path: BPFFS_ROOT.into(), source: e })?;
    // SAFETY: valid NUL-terminated strings, null data.
    let rc = unsafe { libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(Error::Bpffs { path: BPFFS_ROOT.into(), source: std::io::Error::last_os_error() });
    }
    Ok(())
}

/// Whether the nearest existing folder of `pin_root` lies on a bpffs.
pub fn is_mounted(pin_root: &Path) -> bool {
    is_bpffs(pin_root.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/")))
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-pointer.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    rc == 0 && stat.f_type as i64 == BPF_FS_MAGIC
}
