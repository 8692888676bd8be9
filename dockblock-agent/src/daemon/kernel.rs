//! The daemon's calls into the kernel writers (loader, reconcile), in one
//! place. (Interim: the veth hooks, bridge attach and reconcile are wired in
//! as their parts land; see spec/daemon.md.)

use crate::{
    docker::{
        links::LinkInfo,
        snapshot::{Snapshot, VethOwner},
    },
    error::Result,
    paths::PinDir,
};

pub(super) struct Hooks {}

impl Hooks {
    pub fn load(_pins: &PinDir) -> Result<Hooks> {
        Ok(Hooks {})
    }

    pub fn attach(&self, _ifname: &str) -> Result<()> {
        Err(crate::Error::Netlink { what: "veth hooks".into(), why: "not wired in yet".into() })
    }

    pub fn detach(&self, _ifname: &str) -> Result<()> {
        Ok(())
    }
}

/// Bridge hooks on `bridges` (those without), then reconcile with the
/// view; returns the problems to report.
pub(super) fn sync(
    _pins: &PinDir,
    _bridges: &[String],
    _s: Snapshot,
    _veths: Vec<VethOwner>,
) -> Result<Vec<String>> {
    Ok(vec![])
}

/// Unpins links whose interface is gone.
pub(super) fn gc(_pins: &PinDir, _live: &[LinkInfo]) -> Result<()> {
    Ok(())
}
