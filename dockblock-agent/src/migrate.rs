//! Pinned maps of an older layout, carried into this release in place, so
//! an upgrade is "install the new binary, restart the service" even when a
//! map changed, instead of export/detach/attach/apply (which leaves the host
//! open between detach and apply).
//!
//! For each pinned map whose layout differs from this build's object
//! (`store::map_mismatches`) and that has a [`Converter`]:
//! 1. [`plan`]: the loader creates the new map at `<NAME>_MIGRATING` (the
//!    object's layout, the old map's capacity), the old pin untouched;
//! 2. [`Plan::finish`], once this release's programs passed the verifier
//!    (against the new maps): every entry converted into the new map, then
//!    the program inside every live pinned link replaced
//!    (`bpf_link_update`: the old program filters until the new one takes
//!    over, no moment without a filter), then the counters the old programs
//!    added meanwhile carried over too, then the pin swapped by one
//!    `rename` over the old one. The old map dies with its last program.
//!
//! A mismatch without a converter (another release's layout this one does
//! not know, e.g. after a downgrade) is refused before anything changes.
//! Runs under the pin folder lock (`attach`), so no command writes rules
//! meanwhile. Killed half-way, the old pins are intact and the next
//! `attach` (or daemon start) migrates again from them; links it already
//! swapped get the programs again. Counts made by the new programs before
//! such a kill are lost; the rules are not.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use aya::{
    maps::MapType,
    programs::links::{FdLink, PinnedLink},
    Ebpf,
};
use dockblock_common::map_names;

use crate::{
    error::{Error, Result},
    link_info, loader,
    paths::PinDir,
    store::{self, Layout, Mismatch},
};

/// How a past release's map becomes this release's, for one map and one
/// old value size (keys, type and flags unchanged).
pub struct Converter {
    pub map: &'static str,
    /// The value size of the release(s) this converts from.
    pub from_value_size: u32,
    /// Where the layout changed, for the README and the logs.
    pub changed_in: &'static str,
    /// Old value -> new value (`new` arrives zeroed, sized as this build's).
    pub convert: fn(old: &[u8], new: &mut [u8]),
    /// The datapath adds to the values (u64 counters): what the old
    /// programs count between the copy and the swap is carried over too.
    pub counters: bool,
}

/// Fields appended at the end: the old bytes, then zeros.
fn grown(old: &[u8], new: &mut [u8]) {
    let n = old.len().min(new.len());
    new[..n].copy_from_slice(&old[..n]);
}

/// Every layout change this release can carry over. v0.9.0 (ed23266) has
/// this build's layouts; these are the changes before it.
pub const CONVERTERS: &[Converter] = &[
    Converter {
        map: map_names::RULE_STATS,
        from_value_size: 32,
        changed_in: "101dbf1 (allowed and dry_run counters after dropped and passed)",
        convert: grown,
        counters: true,
    },
    Converter {
        map: map_names::CONFIG,
        from_value_size: 16,
        changed_in: "89d5e1b (frag_mask and frag_seed after the settings; the loader draws the seed)",
        convert: grown,
        counters: false,
    },
];

/// The converter for `m`, if this release knows one: only the value size
/// differs, from one it converts from.
pub fn converter(m: &Mismatch) -> Option<&'static Converter> {
    let (have, want) = (&m.have, &m.want);
    let same_size = !m.fixed_size() || have.max_entries == want.max_entries;
    let rest_same = Layout { value_size: 0, max_entries: 0, ..*have }
        == Layout { value_size: 0, max_entries: 0, ..*want };
    if !(same_size && rest_same) {
        return None;
    }
    CONVERTERS.iter().find(|c| c.map == m.name && c.from_value_size == have.value_size)
}

/// Where the new map of `name` is pinned until it takes the old one's place
/// (bpffs refuses names with a dot).
fn staging_pin(pins: &PinDir, name: &str) -> PathBuf {
    pins.maps_dir().join(format!("{name}_MIGRATING"))
}

/// The migrations a load must do; empty when every pinned map fits.
#[derive(Default)]
pub struct Plan {
    steps: Vec<Step>,
}

struct Step {
    name: &'static str,
    converter: &'static Converter,
    have: Layout,
    want: Layout,
    old: OwnedFd,
    /// Old values as copied (by key), for the counters' second pass.
    copied: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Checks every pinned map before anything changes: a mismatch without a
/// converter is refused (`Error::MapMismatch`); the others are planned.
/// Removes what a killed migration left at the staging pins.
pub fn plan(pins: &PinDir) -> Result<Plan> {
    let mut steps = Vec::new();
    for m in store::map_mismatches(pins)? {
        let Some(converter) = converter(&m) else { return Err(m.error()) };
        let path = pins.map(m.name);
        let old = link_info::obj_get(&path, 0).map_err(|e| Error::io("open pinned map", &path, e))?;
        steps.push(Step { name: m.name, converter, have: m.have, want: m.want, old, copied: Vec::new() });
    }
    for step in &steps {
        let staging = staging_pin(pins, step.name);
        match std::fs::remove_file(&staging) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io("remove a killed migration's map", &staging, e))
            }
            _ => {}
        }
    }
    Ok(Plan { steps })
}

impl Plan {
    /// Whether `finish` swaps the program of every live link (so every
    /// program must be loaded, not only those the command attaches).
    pub fn swaps_programs(&self) -> bool {
        !self.steps.is_empty()
    }

    /// Where the loader opens or creates map `name`.
    pub fn pin_path(&self, pins: &PinDir, name: &str) -> PathBuf {
        match self.steps.iter().any(|s| s.name == name) {
            true => staging_pin(pins, name),
            false => pins.map(name),
        }
    }

    /// Capacities of the new maps: the old maps' (where the layout does not
    /// fix them), so a migration changes no `attach` capacity.
    pub fn max_entries(&self) -> Vec<(&'static str, u32)> {
        let fixed = |name: &str| store::FIXED_SIZE.contains(&name);
        self.steps.iter().filter(|s| !fixed(s.name)).map(|s| (s.name, s.have.max_entries)).collect()
    }

    /// With this release's programs loaded against the new maps: entries
    /// converted, programs swapped in every live link, late counts carried,
    /// pins swapped; one log line per map.
    pub fn finish(mut self, ebpf: &mut Ebpf, pins: &PinDir) -> Result<()> {
        if self.steps.is_empty() {
            return Ok(());
        }
        let mut news = Vec::new();
        for step in &mut self.steps {
            let path = staging_pin(pins, step.name);
            let new = link_info::obj_get(&path, 0).map_err(|e| Error::io("open new map", &path, e))?;
            step.copied = entries(&step.old, &step.have).map_err(|e| map_error("read", step.name, e))?;
            for (key, value) in &step.copied {
                let converted = convert(step, value);
                update(&new, key, &converted).map_err(|e| map_error("write", step.name, e))?;
            }
            news.push(new);
        }
        let swapped = swap_programs(ebpf, pins)?;
        for (step, new) in self.steps.iter().zip(&news) {
            if step.converter.counters {
                carry_late_counts(step, new).map_err(|e| map_error("carry counters of", step.name, e))?;
            }
        }
        for step in &self.steps {
            let (from, to) = (staging_pin(pins, step.name), pins.map(step.name));
            std::fs::rename(&from, &to).map_err(|e| Error::io("swap map pin", &to, e))?;
            crate::testhook::step();
            tracing::info!(
                "migrated {} in place: value size {} -> {} (layout changed in {}), {} entries, programs of {swapped} links replaced",
                step.name,
                step.have.value_size,
                step.want.value_size,
                step.converter.changed_in,
                step.copied.len()
            );
        }
        Ok(())
    }
}

fn map_error(what: &str, name: &str, e: std::io::Error) -> Error {
    Error::bpf(format!("migrate {name}: {what} the map"), e)
}

/// `value` (per CPU for per-CPU maps) through the step's converter.
fn convert(step: &Step, value: &[u8]) -> Vec<u8> {
    let (old, new) = (slot(&step.have), slot(&step.want));
    let cpus = value.len() / old;
    let mut out = vec![0u8; cpus * new];
    for cpu in 0..cpus {
        let (o, n) = (
            &value[cpu * old..][..step.have.value_size as usize],
            &mut out[cpu * new..][..step.want.value_size as usize],
        );
        (step.converter.convert)(o, n);
    }
    out
}

/// What the old programs counted after the copy, until their links got
/// the new ones: old now - old copied, converted (counter conversions are
/// linear), added to the new map. The datapath keeps counting into the new
/// map meanwhile; a count of the microseconds between this read and write,
/// on a CPU whose slot is rewritten, can be lost.
fn carry_late_counts(step: &Step, new: &OwnedFd) -> std::io::Result<()> {
    for (key, copied) in &step.copied {
        let now = lookup(&step.old, key, copied.len())?;
        let delta: Vec<u8> =
            words(&now).zip(words(copied)).flat_map(|(a, b)| a.wrapping_sub(b).to_ne_bytes()).collect();
        if delta.iter().all(|b| *b == 0) {
            continue;
        }
        let add = convert(step, &delta);
        let current = lookup(new, key, add.len())?;
        let sum: Vec<u8> =
            words(&current).zip(words(&add)).flat_map(|(a, b)| a.wrapping_add(b).to_ne_bytes()).collect();
        update(new, key, &sum)?;
    }
    Ok(())
}

fn words(bytes: &[u8]) -> impl Iterator<Item = u64> + '_ {
    bytes.chunks_exact(8).map(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes")))
}

/// Bytes of one CPU's value in a lookup buffer: per-CPU values are padded
/// to 8 bytes each.
fn slot(layout: &Layout) -> usize {
    match per_cpu(layout) {
        true => (layout.value_size as usize).div_ceil(8) * 8,
        false => layout.value_size as usize,
    }
}

fn per_cpu(layout: &Layout) -> bool {
    matches!(layout.map_type, Some(MapType::PerCpuArray | MapType::PerCpuHash | MapType::LruPerCpuHash))
}

fn value_len(layout: &Layout) -> std::io::Result<usize> {
    let cpus = match per_cpu(layout) {
        true => aya::util::nr_cpus().map_err(|(_, e)| e)?,
        false => 1,
    };
    Ok(cpus * slot(layout))
}

/// Every (key, value) of the map behind `fd`, walked with GET_NEXT_KEY.
fn entries(fd: &OwnedFd, layout: &Layout) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let len = value_len(layout)?;
    let mut out = Vec::new();
    let mut key: Option<Vec<u8>> = None;
    loop {
        let mut next = vec![0u8; layout.key_size as usize];
        match link_info::map_next_key(fd, key.as_deref(), &mut next) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Err(e) => return Err(e),
        }
        match lookup(fd, &next, len) {
            Ok(value) => out.push((next.clone(), value)),
            // Removed between the two calls (a hash map): nothing to carry.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
        key = Some(next);
    }
}

fn lookup(fd: &OwnedFd, key: &[u8], len: usize) -> std::io::Result<Vec<u8>> {
    let mut value = vec![0u8; len];
    link_info::map_lookup(fd, key, &mut value)?;
    Ok(value)
}

fn update(fd: &OwnedFd, key: &[u8], value: &[u8]) -> std::io::Result<()> {
    link_info::map_update(fd, key, value)
}

/// Puts this release's programs into every live pinned link, whatever its
/// interface (`attach` names only some: veth and bridge links run the old
/// programs, and with them the old maps, until swapped). Links whose
/// interface is gone judge nothing and are left. Returns how many.
fn swap_programs(ebpf: &mut Ebpf, pins: &PinDir) -> Result<usize> {
    let mut swapped = 0;
    for pin in pins.links() {
        if !link_info::read(&pin.path).is_ok_and(|i| i.ifindex != 0) {
            continue;
        }
        let link: FdLink = PinnedLink::from_pin(&pin.path)
            .map_err(|e| Error::bpf(format!("open {}", pin.path.display()), e))?
            .into();
        loader::replace_program(ebpf, link, &pin.interface, pin.kind)?;
        swapped += 1;
    }
    Ok(swapped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(map_type: MapType, value_size: u32, max_entries: u32) -> Layout {
        Layout { map_type: Some(map_type), key_size: 4, value_size, flags: 0, max_entries }
    }

    fn mismatch(name: &'static str, have: Layout, want: Layout) -> Mismatch {
        Mismatch { name, have, want }
    }

    #[test]
    fn converters_match_only_the_value_size_they_know() {
        let want = layout(MapType::PerCpuArray, 64, 4096);
        let found = |have| converter(&mismatch(map_names::RULE_STATS, have, want)).map(|c| c.from_value_size);
        assert_eq!(found(layout(MapType::PerCpuArray, 32, 100)), Some(32), "capacity is free");
        assert_eq!(found(layout(MapType::PerCpuArray, 48, 4096)), None, "no release had 48");
        assert_eq!(found(layout(MapType::Array, 32, 4096)), None, "another type");
        assert_eq!(found(Layout { key_size: 8, ..layout(MapType::PerCpuArray, 32, 4096) }), None);
        assert_eq!(found(Layout { flags: 1, ..layout(MapType::PerCpuArray, 32, 4096) }), None);
        // CONFIG's size is fixed by the layout: one entry, or no converter.
        let want = layout(MapType::Array, 60, 1);
        let config = |have| converter(&mismatch(map_names::CONFIG, have, want)).is_some();
        assert!(config(layout(MapType::Array, 16, 1)));
        assert!(!config(layout(MapType::Array, 16, 2)));
    }

    #[test]
    fn per_cpu_values_are_converted_slot_by_slot() {
        let step = Step {
            name: map_names::RULE_STATS,
            converter: &CONVERTERS[0],
            have: layout(MapType::PerCpuArray, 32, 1),
            want: layout(MapType::PerCpuArray, 64, 1),
            // `convert` reads no map: any fd stands in.
            old: std::fs::File::open("/dev/null").unwrap().into(),
            copied: Vec::new(),
        };
        let old: Vec<u8> = (1..=8u64).flat_map(u64::to_ne_bytes).collect(); // 2 CPUs of 4 u64
        let new: Vec<u64> = words(&convert(&step, &old)).collect();
        assert_eq!(new, [1, 2, 3, 4, 0, 0, 0, 0, 5, 6, 7, 8, 0, 0, 0, 0]);
    }
}
