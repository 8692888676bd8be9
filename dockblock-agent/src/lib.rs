//! dockblock's user side: one library that the CLI (and, later, the daemon)
//! share. State lives in pinned maps and links, never in a process.
//!
//! - [`paths`]: every pin path; [`bpffs`]: mount bpffs; [`lock`]: the pin
//!   folder lock for changing commands.
//! - [`loader`]: load, attach (and replace in place), detach.
//! - [`ports`] and [`rules`]: the rule model, pure; [`store`]: applies it to
//!   the pinned maps.
//! - [`status`], [`link_info`]: what is attached where.
//! - [`model`]: the verdict in plain Rust (the spec in code), for `explain`
//!   and the differential fuzz.
//! - [`docker`]: the engine's state and events; [`target`]: rules that name
//!   containers, labels, compose services; [`translate`]: engine state +
//!   rules -> derived rules and veth entries (pure); [`vethtable`]: writes
//!   the veth entries; [`reconcile`]: the one function that takes a desired
//!   state to the kernel; [`daemon`]: `run`, the loop that follows the
//!   engine; [`published`]: `ports`, what the host exposes.

pub mod addr;
pub mod bpffs;
pub mod config;
pub mod daemon;
pub mod docker;
pub mod error;
pub mod exit_code;
pub mod explain;
pub mod journal;
pub mod labels;
pub mod line_index;
pub mod link_info;
pub mod loader;
pub mod lock;
pub mod metrics;
pub mod migrate;
pub mod model;
pub mod paths;
pub mod ports;
pub mod private_file;
pub mod published;
pub mod reconcile;
pub mod rulefile;
pub mod rules;
pub mod saved;
pub mod scoping;
pub mod stats;
pub mod status;
pub mod store;
pub mod target;
pub mod teardown;
pub mod testhook;
pub mod translate;
pub mod vethtable;

pub use error::{Error, Result};

/// The kernel object built from dockblock-ebpf by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dockblock"));

/// Fails with `NotRoot` unless the process runs as root.
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::NotRoot);
    }
    Ok(())
}
