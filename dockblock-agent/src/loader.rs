//! Loading the kernel object, attaching it, and detaching it.
//!
//! Maps are created once and pinned; a later load reuses the pinned maps, so
//! rules survive re-attach and program upgrades. Links are pinned too, so the
//! programs stay attached after the process exits. Re-attaching an interface
//! that already has a live link swaps the program inside that link
//! (`bpf_link_update`): there is no moment without a filter.
//!
//! [`hooks`]: the hooks the daemon adds and removes as Docker's interfaces
//! come and go (container veths, bridges of user-defined networks).

mod hooks;

use std::path::Path;

use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use dockblock_common::{
    config_flag, frag_mask, map_names, program_names, Config, DEFAULT_FLOW_TIMEOUT_SECS, DEFAULT_LOG_RATE,
    FRAG_KEY_WORDS,
};

use crate::{
    bpffs,
    error::{Error, Result},
    link_info, migrate,
    paths::{LinkKind, LinkPin, PinDir},
    store::{self, RuleStore},
    teardown, EBPF_OBJECT,
};

pub use hooks::{detach_bridge, detach_veth, gc_links, DockerHooks};

/// How to attach XDP on an uplink.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpModeChoice {
    /// Native on devices with a driver behind them, generic (skb) on virtual
    /// ones such as veth, where traffic arrives as skbs and native mode
    /// would add an skb-to-xdp conversion.
    #[default]
    Auto,
    /// Native (driver) mode; fails if the driver lacks XDP support.
    Native,
    /// Generic (skb) mode; works on every interface.
    Skb,
}

/// Map capacities, fixed when the maps are first created. `None` keeps the
/// default (or, on re-attach, what the pinned maps have).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capacities {
    /// Rules (a range is one rule).
    pub max_rules: Option<u32>,
    /// Allow-list entries over all rules.
    pub max_allow: Option<u32>,
    /// UDP flows remembered so their replies pass (LRU beyond that).
    pub max_flows: Option<u32>,
    /// Fragmented datagrams whose first fragment was dropped: the slots of
    /// a direct-mapped table, rounded up to a power of two.
    pub max_frags: Option<u32>,
    /// Bytes of the events ring buffer (a power of two, >= page size).
    pub events_bytes: Option<u32>,
    /// Container veths the daemon can review (`VETHS`).
    pub max_veths: Option<u32>,
    /// Container ports judged at the veths, over all veths (`VETH_RULES`).
    pub max_veth_rules: Option<u32>,
}

/// Runtime settings in `CONFIG`; `None` keeps the current value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    pub judge_host_traffic: Option<bool>,
    pub log_rate: Option<u32>,
    pub flow_timeout_secs: Option<u32>,
}

pub struct AttachRequest {
    pub uplinks: Vec<String>,
    pub bridges: Vec<String>,
    pub xdp_mode: XdpModeChoice,
    pub capacities: Capacities,
    pub settings: Settings,
}

/// What `attach` did on one interface.
#[derive(Clone, Debug)]
pub struct Attached {
    pub interface: String,
    pub kind: LinkKind,
    /// True when an existing link got the new program in place.
    pub replaced: bool,
}

/// Loads the object with its maps pinned under `pins` (created if missing)
/// and every program loaded into the kernel, not attached.
pub fn load(pins: &PinDir, caps: &Capacities) -> Result<Ebpf> {
    load_only(pins, caps, &PROGRAMS)
}

/// [`load`] with only `programs` loaded (a verifier run each, up to a
/// second for the bridge and veth judges), unless a map migration swaps
/// the program of every live link: then all of them.
fn load_only(pins: &PinDir, caps: &Capacities, programs: &[&str]) -> Result<Ebpf> {
    let maps_dir = pins.maps_dir();
    std::fs::create_dir_all(&maps_dir).map_err(|e| Error::io("create", &maps_dir, e))?;
    // Refuses a pinned map of an unknown layout before anything changes.
    let migration = migrate::plan(pins)?;
    let mut ebpf = open_object(pins, caps, &migration)?;
    crate::testhook::step(); // maps created and pinned
    let programs = if migration.swaps_programs() { &PROGRAMS[..] } else { programs };
    for &name in programs {
        match name {
            program_names::UPLINK_XDP => {
                xdp_program(&mut ebpf)?.load().map_err(|e| Error::bpf("load XDP program (verifier)", e))?
            }
            _ => tc_program(&mut ebpf, name)?
                .load()
                .map_err(|e| Error::bpf(format!("load {name} (verifier)"), e))?,
        }
    }
    migration.finish(&mut ebpf, pins)?;
    init_config(pins)?;
    Ok(ebpf)
}

/// The maps pinned under `pins` (created if missing, with their first
/// config), no program loaded: `run` after a reboot fills them with the
/// saved rules before it loads and hooks anything.
pub fn create_maps(pins: &PinDir, caps: &Capacities) -> Result<()> {
    bpffs::ensure_mounted(pins.root())?;
    let _lock = teardown::begin_attach(pins)?;
    let maps_dir = pins.maps_dir();
    let result = std::fs::create_dir_all(&maps_dir)
        .map_err(|e| Error::io("create", &maps_dir, e))
        .and_then(|()| check_pinned_layouts(pins))
        .and_then(|()| open_object(pins, caps, &migrate::Plan::default()))
        .and_then(|_| init_config(pins));
    teardown::end_attach(pins, result.is_ok())?;
    result
}

/// Fresh maps get the defaults the datapath needs; every load re-derives
/// the fragment mask from the map.
fn init_config(pins: &PinDir) -> Result<()> {
    let mut store = RuleStore::open(pins)?;
    let mut config = store.config()?;
    let before = config;
    if config == Config::default() {
        // Fresh maps: the defaults the datapath needs to log and track.
        config.log_rate = DEFAULT_LOG_RATE;
        config.flow_timeout_secs = DEFAULT_FLOW_TIMEOUT_SECS;
    }
    // The mask comes from the map itself, so it matches pinned maps too.
    config.frag_mask = frag_mask(store::max_entries(pins, map_names::FRAGS)?);
    if config.frag_seed == [0; FRAG_KEY_WORDS] {
        // Fresh maps: FRAGS is empty, so a new seed strands nothing.
        config.frag_seed = random_seed()?;
    }
    if config != before {
        store.set_config(config)?;
    }
    Ok(())
}

/// The object with every map pinned under `pins`: pinned maps are opened,
/// missing ones created (with `caps`) and pinned; those `migration` plans
/// are created at their staging pins. No program is loaded yet.
fn open_object(pins: &PinDir, caps: &Capacities, migration: &migrate::Plan) -> Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    // The programs use no CO-RE relocations: without the kernel's BTF
    // (vmlinux, ~6 MB parsed) the load needs a fraction of the memory, and
    // the daemon's peak RSS is that load.
    loader.btf(None);
    for name in map_names::ALL {
        loader.map_pin_path(name, migration.pin_path(pins, name));
    }
    for (name, size) in migration.max_entries().into_iter().chain(map_sizes(caps)) {
        loader.map_max_entries(name, size);
    }
    loader.load(EBPF_OBJECT).map_err(|e| Error::bpf("load the eBPF object", e))
}

/// Pinned maps are reused as they are (aya opens a pin by name and never
/// compares it): one pinned by a release with another layout would make the
/// verifier refuse the programs with an obscure message, or be misread.
/// Checked before anything changes, as libbpf's `map_is_reuse_compat` does
/// (type, key and value size, flags, fixed sizes; see `store::map_mismatches`).
/// `load` migrates the layouts it knows first (`migrate`); loads that
/// attach no link (the daemon's veth and bridge programs) refuse them all.
pub fn check_pinned_layouts(pins: &PinDir) -> Result<()> {
    match store::map_mismatches(pins)?.into_iter().next() {
        Some(m) => Err(m.error()),
        None => Ok(()),
    }
}

/// A random key for the fragment table's hash, from the kernel's CSPRNG.
fn random_seed() -> Result<[u32; FRAG_KEY_WORDS]> {
    const SOURCE: &str = "/dev/urandom";
    let mut bytes = [0u8; 4 * FRAG_KEY_WORDS];
    std::fs::File::open(SOURCE)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(|e| Error::io("read", SOURCE, e))?;
    Ok(std::array::from_fn(|i| u32::from_ne_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap())))
}

/// Every program of the object.
const PROGRAMS: [&str; 6] = [
    program_names::UPLINK_XDP,
    program_names::BRIDGE_TC,
    program_names::UPLINK_TRACK,
    program_names::BRIDGE_TRACK,
    program_names::VETH_TC,
    program_names::VETH_TRACK,
];

/// The max_entries each given capacity sets, by map.
fn map_sizes(caps: &Capacities) -> Vec<(&'static str, u32)> {
    let mut sizes = Vec::new();
    if let Some(n) = caps.max_rules {
        // +1: id 0 is never used. A targeted rule has a RULE_TARGETS entry.
        sizes.extend([
            (map_names::RULES, n + 1),
            (map_names::RULE_STATS, n + 1),
            (map_names::RULE_TARGETS, n + 1),
        ]);
    }
    if let Some(n) = caps.max_allow {
        // The trie holds both generations.
        sizes.extend([(map_names::RULE_ALLOW, n), (map_names::ALLOW, 2 * n)]);
    }
    if let Some(n) = caps.max_flows {
        sizes.push((map_names::FLOWS, n));
    }
    if let Some(n) = caps.max_frags {
        // A slot is picked by masking a hash, so the table is a power of two.
        sizes.push((map_names::FRAGS, frag_slots(n)));
    }
    if let Some(n) = caps.events_bytes {
        sizes.push((map_names::EVENTS, n));
    }
    if let Some(n) = caps.max_veths {
        sizes.push((map_names::VETHS, n));
    }
    if let Some(n) = caps.max_veth_rules {
        sizes.extend([(map_names::VETH_RULES, n), (map_names::VETH_SCOPED_RULES, n)]);
    }
    sizes
}

/// Slots of `FRAGS` for `--max-frags n`: `n` rounded up to a power of two.
pub fn frag_slots(n: u32) -> u32 {
    n.checked_next_power_of_two().unwrap_or(1 << 31)
}

pub fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    let prog = ebpf.program_mut(program_names::UPLINK_XDP).expect("object has the XDP program");
    prog.try_into().map_err(|e| Error::bpf("XDP program", e))
}

/// One of the TC programs, by name (`program_names`).
pub fn tc_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    let prog = ebpf.program_mut(name).expect("object has every TC program");
    prog.try_into().map_err(|e| Error::bpf(format!("TC program {name}"), e))
}

/// Attaches XDP to every uplink and TC to every bridge, pinning maps and
/// links under `pins`. Safe to run again: live links get the new program in
/// place, rules are kept.
/// Loads only the programs it attaches.
pub fn attach(pins: &PinDir, req: &AttachRequest) -> Result<Vec<Attached>> {
    let mut programs = Vec::new();
    if !req.uplinks.is_empty() {
        programs.extend([program_names::UPLINK_XDP, program_names::UPLINK_TRACK]);
    }
    if !req.bridges.is_empty() {
        programs.extend([program_names::BRIDGE_TC, program_names::BRIDGE_TRACK]);
    }
    attach_loading(pins, req, &programs).map(|(done, _)| done)
}

/// [`attach`], returning the object it loaded too, with every program
/// loaded: the daemon attaches its veth and bridge programs from it
/// ([`DockerHooks::from_object`]) instead of loading (and verifying) the
/// object again.
pub fn attach_keep(pins: &PinDir, req: &AttachRequest) -> Result<(Vec<Attached>, Ebpf)> {
    attach_loading(pins, req, &PROGRAMS)
}

fn attach_loading(pins: &PinDir, req: &AttachRequest, programs: &[&str]) -> Result<(Vec<Attached>, Ebpf)> {
    // Check every name before changing anything.
    for name in &req.uplinks {
        check_interface(name, "")?;
    }
    for name in &req.bridges {
        check_interface(
            name,
            " (is dockerd running? name the bridge with --bridge NAME, or pass --no-bridge)",
        )?;
    }
    bpffs::ensure_mounted(pins.root())?;
    let _lock = teardown::begin_attach(pins)?;

    let existed = pins.is_attached();
    let result = attach_locked(pins, req, existed, programs);
    if result.is_err() && !existed {
        // A first attach that failed leaves nothing behind. Links it made
        // are unpinned with the folder and die with this process.
        let _ = std::fs::remove_dir_all(pins.root());
    }
    teardown::end_attach(pins, result.is_ok())?;
    result
}

fn attach_locked(
    pins: &PinDir,
    req: &AttachRequest,
    existed: bool,
    programs: &[&str],
) -> Result<(Vec<Attached>, Ebpf)> {
    if existed {
        check_capacities(pins, &req.capacities)?;
    }
    let mut ebpf = load_only(pins, &req.capacities, programs)?;
    let mut store = RuleStore::open(pins)?;
    apply_settings(&mut store, &req.settings)?;
    // Slots before links: a fresh link must never see slots the catalog does
    // not explain (e.g. left by a process killed mid-write).
    store.recover()?;
    store.resync()?;

    let mut done = Vec::new();
    for name in &req.uplinks {
        done.push(attach_xdp(&mut ebpf, pins, name, req.xdp_mode)?);
        done.push(attach_tc(&mut ebpf, pins, name, LinkKind::TrackUplink)?);
    }
    for name in &req.bridges {
        done.push(attach_tc(&mut ebpf, pins, name, LinkKind::TcEgress)?);
        done.push(attach_tc(&mut ebpf, pins, name, LinkKind::TrackBridge)?);
    }
    Ok((done, ebpf))
}

fn apply_settings(store: &mut RuleStore, settings: &Settings) -> Result<()> {
    let mut config = store.config()?;
    if let Some(judge) = settings.judge_host_traffic {
        config.flags = if judge {
            config.flags | config_flag::JUDGE_HOST_TRAFFIC
        } else {
            config.flags & !config_flag::JUDGE_HOST_TRAFFIC
        };
    }
    config.log_rate = settings.log_rate.unwrap_or(config.log_rate);
    config.flow_timeout_secs = settings.flow_timeout_secs.unwrap_or(config.flow_timeout_secs);
    store.set_config(config)
}

/// Capacities are fixed when the maps are created; asking for others later
/// is refused rather than silently ignored.
fn check_capacities(pins: &PinDir, caps: &Capacities) -> Result<()> {
    for (name, wanted) in map_sizes(caps) {
        let have = store::max_entries(pins, name)?;
        if have != wanted {
            let why = format!(
                "{name} was created with {have} entries; run `dockblock-agent detach` first to change its capacity"
            );
            return Err(Error::bpf("capacity", std::io::Error::other(why)));
        }
    }
    Ok(())
}

/// The interface exists and frames on it start with an Ethernet header.
fn check_interface(name: &str, hint: &'static str) -> Result<()> {
    link_info::ifindex(name).ok_or_else(|| Error::UnknownInterface { name: name.into(), hint })?;
    let type_path = Path::new("/sys/class/net").join(name).join("type");
    let link_type: u32 = std::fs::read_to_string(&type_path)
        .map_err(|e| Error::io("read", &type_path, e))?
        .trim()
        .parse()
        .unwrap_or(0);
    const ARPHRD_ETHER: u32 = 1;
    if link_type != ARPHRD_ETHER {
        return Err(Error::NotEthernet { name: name.into(), link_type });
    }
    Ok(())
}

/// The live pinned link of `kind`s on `interface`, if any. A link whose
/// interface vanished (or was re-created under the same name) is defunct:
/// its pin is removed so a fresh link can take its place.
fn live_link(pins: &PinDir, interface: &str, kinds: &[LinkKind]) -> Result<Option<(LinkPin, FdLink)>> {
    // A link on a renamed interface is live: its pin takes the new name.
    teardown::adopt_renamed(pins)?;
    let ifindex = link_info::ifindex(interface);
    for pin in pins.links().into_iter().filter(|p| p.interface == interface && kinds.contains(&p.kind)) {
        let alive = link_info::read(&pin.path).map(|i| Some(i.ifindex) == ifindex).unwrap_or(false);
        if alive {
            let link = PinnedLink::from_pin(&pin.path)
                .map_err(|e| Error::bpf(format!("open {}", pin.path.display()), e))?;
            return Ok(Some((pin, link.into())));
        }
        std::fs::remove_file(&pin.path).map_err(|e| Error::io("remove defunct link", &pin.path, e))?;
        crate::testhook::step();
    }
    Ok(None)
}

fn attach_xdp(ebpf: &mut Ebpf, pins: &PinDir, interface: &str, choice: XdpModeChoice) -> Result<Attached> {
    let prog = xdp_program(ebpf)?;
    if let Some((pin, link)) = live_link(pins, interface, &LinkKind::XDP)? {
        // The kernel cannot hold a native and a generic program at once, so
        // a mode change means a moment without a filter: refuse, and say how.
        let wanted = match choice {
            XdpModeChoice::Native => Some(LinkKind::XdpNative),
            XdpModeChoice::Skb => Some(LinkKind::XdpSkb),
            XdpModeChoice::Auto => None,
        };
        if let Some(wanted) = wanted.filter(|w| *w != pin.kind) {
            return Err(Error::ModeChange {
                name: interface.into(),
                have: pin.kind.label(),
                wanted: wanted.label(),
            });
        }
        replace_xdp(prog, link, interface)?;
        return Ok(Attached { interface: interface.into(), kind: pin.kind, replaced: true });
    }
    let tries: &[LinkKind] = match choice {
        XdpModeChoice::Native => &[LinkKind::XdpNative],
        XdpModeChoice::Skb => &[LinkKind::XdpSkb],
        XdpModeChoice::Auto if has_driver(interface) => &[LinkKind::XdpNative, LinkKind::XdpSkb],
        XdpModeChoice::Auto => &[LinkKind::XdpSkb],
    };
    let mut last_err = None;
    for &kind in tries {
        let mode = if kind == LinkKind::XdpNative { XdpMode::Driver } else { XdpMode::Skb };
        match prog.attach(interface, mode) {
            Ok(id) => {
                let link = prog.take_link(id).map_err(|e| Error::bpf("take XDP link", e))?;
                let link = FdLink::try_from(link).map_err(|e| Error::bpf("XDP link is not a bpf_link", e))?;
                pin_link(link, &pins.link(kind, interface))?;
                return Ok(Attached { interface: interface.into(), kind, replaced: false });
            }
            Err(e) => last_err = Some(attach_error(format!("attach XDP ({kind}) to {interface}"), e)),
        }
    }
    Err(last_err.expect("at least one mode was tried"))
}

/// Puts the XDP program into the live XDP `link` in place (`bpf_link_update`).
fn replace_xdp(prog: &mut Xdp, link: FdLink, interface: &str) -> Result<()> {
    let link = XdpLink::try_from(link).map_err(|e| Error::bpf("XDP link", e))?;
    let id = prog
        .attach_to_link(link)
        .map_err(|e| Error::bpf(format!("replace XDP program on {interface}"), e))?;
    // As in `replace_tc`: the pin holds the link, not this process.
    drop(prog.take_link(id).map_err(|e| Error::bpf("take XDP link", e))?);
    Ok(())
}

/// Puts the loaded program a link of `kind` runs into the live `link`.
pub(crate) fn replace_program(ebpf: &mut Ebpf, link: FdLink, interface: &str, kind: LinkKind) -> Result<()> {
    if kind.is_xdp() {
        return replace_xdp(xdp_program(ebpf)?, link, interface);
    }
    replace_tc(tc_program(ebpf, tc_program_name(kind))?, link, interface, kind)
}

/// The TC program a TCX link of `kind` runs.
fn tc_program_name(kind: LinkKind) -> &'static str {
    match kind {
        LinkKind::TcEgress => program_names::BRIDGE_TC,
        LinkKind::TrackUplink => program_names::UPLINK_TRACK,
        LinkKind::TrackBridge => program_names::BRIDGE_TRACK,
        LinkKind::VethJudge => program_names::VETH_TC,
        LinkKind::VethTrack => program_names::VETH_TRACK,
        LinkKind::XdpNative | LinkKind::XdpSkb => unreachable!("XDP goes through attach_xdp"),
    }
}

/// Attaches one of the TCX programs; `kind` says which and where.
fn attach_tc(ebpf: &mut Ebpf, pins: &PinDir, interface: &str, kind: LinkKind) -> Result<Attached> {
    let prog = tc_program(ebpf, tc_program_name(kind))?;
    if let Some((_, link)) = live_link(pins, interface, &[kind])? {
        replace_tc(prog, link, interface, kind)?;
        return Ok(Attached { interface: interface.into(), kind, replaced: true });
    }
    new_tc_link(prog, pins, interface, kind)?;
    Ok(Attached { interface: interface.into(), kind, replaced: false })
}

/// Puts `prog` into the live TCX `link` in place (`bpf_link_update`).
fn replace_tc(prog: &mut SchedClassifier, link: FdLink, interface: &str, kind: LinkKind) -> Result<()> {
    let name = tc_program_name(kind);
    let link = SchedClassifierLink::try_from(link).map_err(|e| Error::bpf("TCX link", e))?;
    let id =
        prog.attach_to_link(link).map_err(|e| Error::bpf(format!("replace {name} on {interface}"), e))?;
    // The program keeps the link's fd until it is taken back; the pin holds
    // the link, so a long-lived process (the daemon) must not collect them.
    drop(prog.take_link(id).map_err(|e| Error::bpf("take TC link", e))?);
    Ok(())
}

/// A new TCX link of `prog` on `interface`, pinned as `kind`.
fn new_tc_link(prog: &mut SchedClassifier, pins: &PinDir, interface: &str, kind: LinkKind) -> Result<()> {
    let name = tc_program_name(kind);
    let attach_type = if kind.is_egress() { TcAttachType::Egress } else { TcAttachType::Ingress };
    // First in the TCX chain: a drop verdict should not depend on what other
    // programs on the bridge do before us.
    let options = TcAttachOptions::TcxOrder(LinkOrder::first());
    let id = prog
        .attach_with_options(interface, attach_type, options)
        .map_err(|e| attach_error(format!("attach {name} to {interface}"), e))?;
    let link = prog.take_link(id).map_err(|e| Error::bpf("take TC link", e))?;
    let link = FdLink::try_from(link).map_err(|e| Error::bpf("TC link is not a bpf_link", e))?;
    pin_link(link, &pins.link(kind, interface))
}

/// Names the common cause of a refused attach: another XDP program (from
/// another tool, or a dockblock with another pin folder) holds the interface.
fn attach_error(what: String, err: aya::programs::ProgramError) -> Error {
    use aya::programs::ProgramError;
    if let ProgramError::SyscallError(sys) = &err {
        if matches!(sys.io_error.raw_os_error(), Some(libc::EEXIST | libc::EBUSY)) {
            let why = "another XDP program is attached there (see `ip link show`); remove it first";
            return Error::bpf(what, std::io::Error::other(why));
        }
    }
    Error::bpf(what, err)
}

fn pin_link(link: FdLink, path: &Path) -> Result<()> {
    link.pin(path).map_err(|e| Error::bpf(format!("pin link at {}", path.display()), e))?;
    crate::testhook::step();
    Ok(())
}

/// Whether a real device (with a driver) backs the interface; virtual ones
/// (veth, bridge, tun, wireguard) have no `device` entry in sysfs.
fn has_driver(interface: &str) -> bool {
    Path::new("/sys/class/net").join(interface).join("device").exists()
}

/// Detaches `interfaces` (all when empty). Detaching everything also removes
/// the maps, the rules in them and the pin folder.
pub fn detach(pins: &PinDir, interfaces: &[String]) -> Result<Vec<LinkPin>> {
    teardown::detach(pins, interfaces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_frags_is_rounded_up_to_a_power_of_two() {
        assert_eq!(frag_slots(16), 16);
        assert_eq!(frag_slots(100), 128);
        assert_eq!(frag_slots(8192), 8192);
        assert_eq!(frag_slots(8193), 16384);
        assert_eq!(frag_slots(1_000_000), 1 << 20);
        let caps = Capacities { max_frags: Some(5000), ..Default::default() };
        assert_eq!(map_sizes(&caps), [(map_names::FRAGS, 8192)]);
        // What the datapath masks with covers exactly the slots.
        assert_eq!(frag_mask(frag_slots(5000)), 8191);
    }

    #[test]
    fn seeds_are_random() {
        let (a, b) = (random_seed().unwrap(), random_seed().unwrap());
        assert_ne!(a, b);
        assert_ne!(a, [0; FRAG_KEY_WORDS]);
    }
}
