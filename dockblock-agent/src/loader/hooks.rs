//! The hooks the daemon adds and removes as Docker's interfaces come and
//! go: the two veth programs on every container's host-side veth (judge at
//! TCX egress, UDP flow tracker at TCX ingress), the bridge programs on the
//! bridges of user-defined networks, and the unpinning of links whose
//! interface is gone.
//!
//! The programs are loaded once per process and kept: the daemon takes the
//! object its uplinks' attach loaded ([`DockerHooks::from_object`]; no
//! second verifier run), tests load their own ([`DockerHooks::load`]).
//! Attaching them to a veth is then two
//! `bpf_link_create` and two pins, ~0.2 ms of work, but the kernel makes
//! each TCX link create wait for an RCU grace period (`tcx_entry_sync`,
//! under rtnl): ~12-15 ms each on a 2-CPU VM, well inside the ~265 ms
//! before a new veth can carry a packet (`/sys/kernel/rcu_expedited`
//! shortens it, host-wide). They are not pinned as programs: only
//! the daemon attaches them, and a pinned program would outlive an upgrade
//! and get attached to new veths by the next release, next to links that
//! run the new one.

use std::sync::Mutex;

use aya::{programs::links::PinnedLink, Ebpf};
use dockblock_common::{map_names, program_names};

use super::{
    attach_tc, check_interface, check_pinned_layouts, new_tc_link, open_object, replace_tc, tc_program,
    tc_program_name, Attached, Capacities,
};
use crate::{
    error::{Error, Result},
    link_info,
    paths::{LinkKind, LinkPin, PinDir},
    teardown,
};

/// The veth and bridge programs, loaded against the pinned maps, ready to
/// attach.
pub struct DockerHooks {
    pins: PinDir,
    /// aya attaches through `&mut`; held for the syscalls of one attach.
    ebpf: Mutex<Ebpf>,
    /// Kernel ids of the loaded programs: a live link that runs them is kept.
    judge_id: u32,
    track_id: u32,
}

impl DockerHooks {
    /// Loads the veth and bridge programs (a verifier run each) against the
    /// maps pinned under `pins`; `NotAttached` unless `attach` created them.
    pub fn load(pins: &PinDir) -> Result<DockerHooks> {
        DockerHooks::from_object(pins, load_pinned(pins, &DOCKER_PROGRAMS)?)
    }

    /// Takes `ebpf`, an object whose programs are loaded against the maps
    /// pinned under `pins` (what [`super::attach_keep`] returns).
    pub fn from_object(pins: &PinDir, mut ebpf: Ebpf) -> Result<DockerHooks> {
        let mut id = |name: &str| -> Result<u32> {
            let info =
                tc_program(&mut ebpf, name)?.info().map_err(|e| Error::bpf(format!("{name} info"), e))?;
            Ok(info.id())
        };
        let (judge_id, track_id) = (id(program_names::VETH_TC)?, id(program_names::VETH_TRACK)?);
        Ok(DockerHooks { pins: pins.clone(), ebpf: Mutex::new(ebpf), judge_id, track_id })
    }

    /// Hooks veth `ifname`: the judge (TCX egress) first, so the veth is
    /// closed from its first packet until its `VETHS` entry says it was
    /// reviewed, then the tracker (TCX ingress). Pinned as
    /// `links/veth_<ifname>` and `links/vetht_<ifname>`. A live link of
    /// ours on this interface is kept (or gets these programs in place).
    ///
    /// Takes no pin-folder lock: the daemon calls this at NEWLINK, ~265 ms
    /// before the veth can carry a packet, and must not wait behind a CLI
    /// commit. It is safe without: it writes no map, and touches only the
    /// two pins named after this interface, which no command changes
    /// except `detach` (a full detach removes the folder: a pin made after
    /// that fails, and the link dies with its fd).
    pub fn attach(&self, ifname: &str) -> Result<[Attached; 2]> {
        let ifindex = link_info::ifindex(ifname)
            .ok_or_else(|| Error::UnknownInterface { name: ifname.into(), hint: "" })?;
        let mut ebpf = self.ebpf.lock().unwrap_or_else(|p| p.into_inner());
        Ok([
            self.attach_one(&mut ebpf, ifname, ifindex, LinkKind::VethJudge)?,
            self.attach_one(&mut ebpf, ifname, ifindex, LinkKind::VethTrack)?,
        ])
    }

    fn attach_one(&self, ebpf: &mut Ebpf, ifname: &str, ifindex: u32, kind: LinkKind) -> Result<Attached> {
        let path = self.pins.link(kind, ifname);
        let ours = if kind == LinkKind::VethJudge { self.judge_id } else { self.track_id };
        let prog = tc_program(ebpf, tc_program_name(kind))?;
        match link_info::read(&path) {
            Ok(info) if info.ifindex == ifindex => {
                if info.program_id != ours {
                    let link = PinnedLink::from_pin(&path)
                        .map_err(|e| Error::bpf(format!("open {}", path.display()), e))?;
                    replace_tc(prog, link.into(), ifname, kind)?;
                }
                return Ok(Attached { interface: ifname.into(), kind, replaced: true });
            }
            Ok(info) => {
                // The pin of an earlier interface of that name: defunct
                // (gone), or renamed and alive (its pin follows it, as
                // `teardown::adopt_renamed` does).
                let now = (info.ifindex != 0).then(|| link_info::ifname(info.ifindex)).flatten();
                match now.map(|name| self.pins.link(kind, &name)).filter(|p| !p.exists()) {
                    Some(target) => {
                        std::fs::rename(&path, &target).map_err(|e| Error::io("rename link pin", &path, e))?
                    }
                    None => {
                        std::fs::remove_file(&path).map_err(|e| Error::io("remove stale link", &path, e))?
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("read link", &path, e)),
        }
        new_tc_link(prog, &self.pins, ifname, kind)?;
        Ok(Attached { interface: ifname.into(), kind, replaced: false })
    }

    /// [`detach_veth`] of this pin folder.
    pub fn detach(&self, ifname: &str) -> Result<Vec<LinkPin>> {
        detach_veth(&self.pins, ifname)
    }

    /// Attaches the bridge programs to bridge `name` as `attach --bridge`
    /// does (judge at TCX egress, tracker at ingress; live links get them
    /// in place). Takes the pin folder lock (finishing a killed change
    /// first): never called under another lock of the same folder.
    pub fn attach_bridge(&self, name: &str) -> Result<Vec<Attached>> {
        check_interface(name, "")?;
        let _change = teardown::begin_change(&self.pins)?;
        let mut ebpf = self.ebpf.lock().unwrap_or_else(|p| p.into_inner());
        Ok(vec![
            attach_tc(&mut ebpf, &self.pins, name, LinkKind::TcEgress)?,
            attach_tc(&mut ebpf, &self.pins, name, LinkKind::TrackBridge)?,
        ])
    }
}

/// Unpins the veth hooks of `ifname` (judge first), if any; no lock, for
/// the same reason as [`DockerHooks::attach`].
pub fn detach_veth(pins: &PinDir, ifname: &str) -> Result<Vec<LinkPin>> {
    let links = [LinkKind::VethJudge, LinkKind::VethTrack]
        .map(|kind| LinkPin { kind, interface: ifname.into(), path: pins.link(kind, ifname) })
        .into_iter()
        .filter(|l| l.path.exists())
        .collect();
    teardown::unpin_links(links)
}

/// Detaches bridge `name` (the journaled detach of one interface).
pub fn detach_bridge(pins: &PinDir, name: &str) -> Result<Vec<LinkPin>> {
    teardown::detach(pins, &[name.to_string()])
}

/// Unpins the veth and bridge links whose interface is gone: the kernel
/// detached them when the device was deleted, and the pin would keep a
/// defunct link (and its program) forever. The kernel is asked, not a list
/// of the links the caller saw: a veth hooked after that list was made
/// would lose its judge, i.e. be open. Uplink links are left, so `status`
/// keeps saying the uplink is gone. Returns what it unpinned.
pub fn gc_links(pins: &PinDir) -> Result<Vec<LinkPin>> {
    let defunct = pins
        .links()
        .into_iter()
        .filter(|l| l.kind.is_veth() || matches!(l.kind, LinkKind::TcEgress | LinkKind::TrackBridge))
        .filter(|l| link_info::read(&l.path).is_ok_and(|i| i.ifindex == 0))
        .collect();
    teardown::unpin_links(defunct)
}

/// The object against the maps pinned under `pins`, with only `programs`
/// loaded. Never creates a map: `NotAttached` if one is missing.
fn load_pinned(pins: &PinDir, programs: &[&str]) -> Result<Ebpf> {
    if map_names::ALL.iter().any(|name| !pins.map(name).exists()) {
        return Err(Error::NotAttached { pin_dir: pins.root().into() });
    }
    check_pinned_layouts(pins)?;
    let mut ebpf = open_object(pins, &Capacities::default(), &crate::migrate::Plan::default())?;
    for name in programs {
        tc_program(&mut ebpf, name)?.load().map_err(|e| Error::bpf(format!("load {name} (verifier)"), e))?;
    }
    Ok(ebpf)
}

/// What the daemon attaches as Docker's interfaces come and go.
const DOCKER_PROGRAMS: [&str; 4] = [
    program_names::VETH_TC,
    program_names::VETH_TRACK,
    program_names::BRIDGE_TC,
    program_names::BRIDGE_TRACK,
];

// The daemon shares one `DockerHooks` between its tasks.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<DockerHooks>();
};
