//! Reads what the kernel knows about a pinned link: its id, program id and
//! the interface it is attached to (0 once that interface is gone). aya 0.14
//! does not expose the interface, so this asks the kernel directly with two
//! `bpf(2)` commands (BPF_OBJ_GET, BPF_OBJ_GET_INFO_BY_FD). `obj_get` also
//! opens maps read-only, which aya 0.14 cannot ask for.

use std::{
    ffi::CString,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub link_id: u32,
    pub program_id: u32,
    /// 0 when the interface the link was attached to has disappeared.
    pub ifindex: u32,
}

#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `struct bpf_link_info` up to the first union member: both the `xdp` and
/// the `tcx` members start with `__u32 ifindex` at offset 16. The tail is
/// room for the rest of the union, which the kernel fills and we ignore.
#[repr(C, align(8))]
struct RawLinkInfo {
    link_type: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    ifindex: u32,
    _rest: [u32; 59],
}

pub fn read(pin: &Path) -> std::io::Result<LinkInfo> {
    let fd = open_pin(pin)?;
    // SAFETY: all-zero is a valid RawLinkInfo.
    let mut info: RawLinkInfo = unsafe { std::mem::zeroed() };
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<RawLinkInfo>() as u32,
        info: &mut info as *mut RawLinkInfo as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(LinkInfo { link_id: info.id, program_id: info.prog_id, ifindex: info.ifindex })
}

/// `file_flags` of BPF_OBJ_GET: open the object for reading only (lookups,
/// iteration, info), so a reading command cannot change a map by mistake.
pub const BPF_F_RDONLY: u32 = 1 << 3;

fn open_pin(pin: &Path) -> std::io::Result<OwnedFd> {
    obj_get(pin, 0)
}

/// Opens the pinned object at `pin` with BPF_OBJ_GET and `file_flags`
/// (0 or [`BPF_F_RDONLY`]); aya 0.14's `from_pin` always asks read-write.
pub fn obj_get(pin: &Path, file_flags: u32) -> std::io::Result<OwnedFd> {
    let path = CString::new(pin.as_os_str().as_encoded_bytes())?;
    let mut attr = ObjGetAttr { pathname: path.as_ptr() as u64, bpf_fd: 0, file_flags, path_fd: 0, _pad: 0 };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: BPF_OBJ_GET returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every value of the array map behind `fd` (`len` entries of `V`), read
/// with BPF_MAP_LOOKUP_BATCH: a few syscalls instead of one per entry.
pub fn read_array<V: Copy + Default>(fd: &OwnedFd, len: u32) -> std::io::Result<Vec<V>> {
    const CHUNK: u32 = 16384;
    let mut values = vec![V::default(); len as usize];
    let mut keys = vec![0u32; CHUNK as usize];
    let (mut next, mut done) = (0u32, 0u32);
    while done < len {
        let mut out = 0u32;
        let mut attr = BatchAttr {
            in_batch: if done == 0 { 0 } else { &mut next as *mut u32 as u64 },
            out_batch: &mut out as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values[done as usize..].as_mut_ptr() as u64,
            count: CHUNK.min(len - done),
            map_fd: fd.as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        let rc = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        done += attr.count;
        match rc {
            Ok(_) => next = out,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(values)
}

/// Every (key, value) of the hash map behind `fd`, read with
/// BPF_MAP_LOOKUP_BATCH (the batch token of a hash map is a u32 bucket
/// index): a few syscalls instead of two per entry. `K` and `V` must have
/// the map's key and value sizes.
pub fn read_hash<K: Copy + Default, V: Copy + Default>(fd: &OwnedFd) -> std::io::Result<Vec<(K, V)>> {
    const CHUNK: usize = 4096;
    let mut keys = vec![K::default(); CHUNK];
    let mut values = vec![V::default(); CHUNK];
    let mut entries = Vec::new();
    let (mut token, mut next, mut first) = (0u32, 0u32, true);
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &mut token as *mut u32 as u64 },
            out_batch: &mut next as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: fd.as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        let rc = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let n = attr.count as usize;
        entries.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
        match rc {
            Ok(_) => (token, first) = (next, false),
            // The last batch (possibly empty): the map is read.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(entries),
            Err(e) => return Err(e),
        }
    }
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    /// The value, or the next key for GET_NEXT_KEY.
    value: u64,
    flags: u64,
}

fn elem(cmd: libc::c_long, fd: &OwnedFd, key: *const u8, value: *const u8) -> std::io::Result<()> {
    let mut attr =
        ElemAttr { map_fd: fd.as_raw_fd() as u32, _pad: 0, key: key as u64, value: value as u64, flags: 0 };
    bpf(cmd, &mut attr).map(drop)
}

/// Raw-bytes map access, for maps of a layout no type here has (a past
/// release's, see `migrate`). `value` must hold the whole value: per-CPU
/// maps take one 8-byte-padded slot per possible CPU.
pub fn map_lookup(fd: &OwnedFd, key: &[u8], value: &mut [u8]) -> std::io::Result<()> {
    elem(BPF_MAP_LOOKUP_ELEM, fd, key.as_ptr(), value.as_mut_ptr())
}

/// See [`map_lookup`]; BPF_ANY (create or replace).
pub fn map_update(fd: &OwnedFd, key: &[u8], value: &[u8]) -> std::io::Result<()> {
    elem(BPF_MAP_UPDATE_ELEM, fd, key.as_ptr(), value.as_ptr())
}

/// The key after `key` (the first with None) into `next`; ENOENT at the end.
pub fn map_next_key(fd: &OwnedFd, key: Option<&[u8]>, next: &mut [u8]) -> std::io::Result<()> {
    let key = key.map_or(std::ptr::null(), <[u8]>::as_ptr);
    elem(BPF_MAP_GET_NEXT_KEY, fd, key, next.as_mut_ptr())
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, correctly sized bpf_attr prefix.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// The index of interface `name`, or `None` if there is no such interface.
pub fn ifindex(name: &str) -> Option<u32> {
    let c_name = CString::new(name).ok()?;
    // SAFETY: valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    (index != 0).then_some(index)
}

/// The name of interface `index`, if it exists.
pub fn ifname(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes, as if_indextoname requires.
    let name = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if name.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    Some(unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
}
