//! The veth table: what the veth hooks judge (`VETHS`: which veths are
//! reviewed, and with which kinds of entries; `VETH_RULES`: their ports;
//! `VETH_SCOPED_RULES`: their ports for packets from `--on` interfaces),
//! written from the translation's plans.
//!
//! Not generational: each key changes atomically, and the write order keeps
//! every moment safe. A veth not planned any more loses its state first
//! (unreviewed: closed), then its entries. A planned veth gets its new
//! entries, then its state (so it is marked reviewed, or told to look up a
//! new kind of entry, only once they are in), then loses its stale entries.
//! Capacities are checked before anything is written.

use std::collections::{BTreeMap, HashMap as StdHashMap, HashSet};

use aya::maps::{HashMap, MapData};
use dockblock_common::{map_names, PortRule, VethRuleKey, VethScopedKey, VethState};
use serde::Serialize;

use crate::{
    error::{Error, Result},
    link_info,
    paths::PinDir,
    store,
};

/// What one container's host-side veth should hold (`translate` makes them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VethPlan {
    pub ifindex: u32,
    pub state: VethState,
    /// Keys with this plan's `ifindex`; the first of a key twice counts.
    pub entries: Vec<(VethRuleKey, PortRule)>,
    /// `VETH_SCOPED_RULES` entries (`--on`), keyed likewise.
    pub scoped: Vec<(VethScopedKey, PortRule)>,
}

/// What [`sync`] changed, for the log line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VethSync {
    /// States and entries written (new or changed).
    pub written: usize,
    /// States and entries removed.
    pub removed: usize,
}

impl VethSync {
    pub fn is_empty(&self) -> bool {
        *self == VethSync::default()
    }
}

type States = HashMap<MapData, u32, VethState>;
type Rules = HashMap<MapData, VethRuleKey, PortRule>;
type Scoped = HashMap<MapData, VethScopedKey, PortRule>;

/// A key of one veth's entries, in `VETH_RULES` or `VETH_SCOPED_RULES`.
trait VethKey: aya::Pod + Eq + std::hash::Hash + Default {
    fn veth(&self) -> u32;
}

impl VethKey for VethRuleKey {
    fn veth(&self) -> u32 {
        self.ifindex
    }
}

impl VethKey for VethScopedKey {
    fn veth(&self) -> u32 {
        self.ifindex
    }
}

/// Takes `VETHS`, `VETH_RULES` and `VETH_SCOPED_RULES` to exactly `plans`
/// (see the module doc for the order; scoped entries go in and out with
/// the others). Run under the pin folder lock (reconcile holds it).
pub fn sync(pins: &PinDir, plans: &[VethPlan]) -> Result<VethSync> {
    let mut states: States = store::open_pinned(pins, map_names::VETHS)?;
    let mut rules: Rules = store::open_pinned(pins, map_names::VETH_RULES)?;
    let have_states: StdHashMap<u32, VethState> = read_map(pins, map_names::VETHS)?;
    let have_rules: StdHashMap<VethRuleKey, PortRule> = read_map(pins, map_names::VETH_RULES)?;
    // Absent in a pin folder of a release before it, until `attach`.
    let mut scoped: Option<Scoped> = match pins.map(map_names::VETH_SCOPED_RULES).exists() {
        true => Some(store::open_pinned(pins, map_names::VETH_SCOPED_RULES)?),
        false => None,
    };
    let have_scoped: StdHashMap<VethScopedKey, PortRule> = match scoped {
        Some(_) => read_map(pins, map_names::VETH_SCOPED_RULES)?,
        None => StdHashMap::new(),
    };
    let plans = dedup(plans);
    if scoped.is_none() && plans.iter().any(|p| !p.scoped.is_empty()) {
        return Err(Error::BadArgument {
            what: "--on",
            value: map_names::VETH_SCOPED_RULES.into(),
            why: "the pinned maps predate --on at the veth: run `dockblock-agent attach` again to add them"
                .into(),
        });
    }
    check_capacity(pins, &plans, &have_rules, &have_scoped)?;

    let mut done = VethSync::default();
    let planned: HashSet<u32> = plans.iter().map(|p| p.ifindex).collect();
    for ifindex in have_states.keys().filter(|i| !planned.contains(i)) {
        remove(&mut states, ifindex, map_names::VETHS)?;
        done.removed += 1;
    }
    done.removed += remove_unplanned(&mut rules, &have_rules, &planned, map_names::VETH_RULES)?;
    if let Some(scoped) = scoped.as_mut() {
        done.removed += remove_unplanned(scoped, &have_scoped, &planned, map_names::VETH_SCOPED_RULES)?;
    }
    let rules_by_veth = by_veth(&have_rules, &planned);
    let scoped_by_veth = by_veth(&have_scoped, &planned);
    for plan in &plans {
        if let Some(scoped) = scoped.as_mut() {
            done.written += write_new(scoped, &have_scoped, &plan.scoped, map_names::VETH_SCOPED_RULES)?;
        }
        done.written += write_new(&mut rules, &have_rules, &plan.entries, map_names::VETH_RULES)?;
        if have_states.get(&plan.ifindex) != Some(&plan.state) {
            insert(&mut states, &plan.ifindex, &plan.state, map_names::VETHS)?;
            done.written += 1;
        }
        done.removed +=
            remove_stale(&mut rules, &rules_by_veth, plan.ifindex, &plan.entries, map_names::VETH_RULES)?;
        if let Some(scoped) = scoped.as_mut() {
            done.removed += remove_stale(
                scoped,
                &scoped_by_veth,
                plan.ifindex,
                &plan.scoped,
                map_names::VETH_SCOPED_RULES,
            )?;
        }
    }
    Ok(done)
}

/// Removes the entries of veths not planned any more.
fn remove_unplanned<K: VethKey>(
    map: &mut HashMap<MapData, K, PortRule>,
    have: &StdHashMap<K, PortRule>,
    planned: &HashSet<u32>,
    name: &str,
) -> Result<usize> {
    let gone: Vec<&K> = have.keys().filter(|k| !planned.contains(&k.veth())).collect();
    for key in &gone {
        remove(map, *key, name)?;
    }
    Ok(gone.len())
}

/// The present keys of planned veths, by veth.
fn by_veth<K: VethKey + Copy>(
    have: &StdHashMap<K, PortRule>,
    planned: &HashSet<u32>,
) -> StdHashMap<u32, Vec<K>> {
    let mut out: StdHashMap<u32, Vec<K>> = StdHashMap::new();
    for key in have.keys().filter(|k| planned.contains(&k.veth())) {
        out.entry(key.veth()).or_default().push(*key);
    }
    out
}

/// Writes the planned entries that are new or changed.
fn write_new<K: VethKey>(
    map: &mut HashMap<MapData, K, PortRule>,
    have: &StdHashMap<K, PortRule>,
    entries: &[(K, PortRule)],
    name: &str,
) -> Result<usize> {
    let mut written = 0;
    for (key, rule) in entries {
        if have.get(key) != Some(rule) {
            insert(map, key, rule, name)?;
            written += 1;
        }
    }
    Ok(written)
}

/// Removes veth `ifindex`'s present entries that are not planned.
fn remove_stale<K: VethKey + Copy>(
    map: &mut HashMap<MapData, K, PortRule>,
    by_veth: &StdHashMap<u32, Vec<K>>,
    ifindex: u32,
    entries: &[(K, PortRule)],
    name: &str,
) -> Result<usize> {
    let wanted: HashSet<&K> = entries.iter().map(|(k, _)| k).collect();
    let stale: Vec<&K> =
        by_veth.get(&ifindex).into_iter().flatten().filter(|k| !wanted.contains(k)).collect();
    for key in &stale {
        remove(map, *key, name)?;
    }
    Ok(stale.len())
}

/// Every reviewed veth and every veth rule, sorted; maps opened read-only
/// (for `list`, `ports`, `status`).
#[allow(clippy::type_complexity)]
pub fn read(pins: &PinDir) -> Result<(Vec<(u32, VethState)>, Vec<(VethRuleKey, PortRule)>)> {
    let states: BTreeMap<u32, VethState> = read_map(pins, map_names::VETHS)?.into_iter().collect();
    let mut rules: Vec<(VethRuleKey, PortRule)> =
        read_map(pins, map_names::VETH_RULES)?.into_iter().collect();
    rules.sort_by_key(|(k, _)| (k.ifindex, k.proto, k.port));
    Ok((states.into_iter().collect(), rules))
}

/// One plan per veth (the first), each entry key once (the first), keys
/// of another veth dropped (a bug in the caller: logged).
fn dedup(plans: &[VethPlan]) -> Vec<VethPlan> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(plans.len());
    for plan in plans.iter().filter(|p| seen.insert(p.ifindex)) {
        let (entries, scoped) =
            (own_entries(plan.ifindex, &plan.entries), own_entries(plan.ifindex, &plan.scoped));
        out.push(VethPlan { entries, scoped, ..plan.clone() });
    }
    out
}

/// The entries of veth `ifindex`, the first of a key twice.
fn own_entries<K: VethKey + Copy>(ifindex: u32, entries: &[(K, PortRule)]) -> Vec<(K, PortRule)> {
    let mut keys = HashSet::new();
    entries
        .iter()
        .filter(|(k, _)| {
            if k.veth() != ifindex {
                tracing::warn!("veth plan {ifindex}: entry for veth {} ignored", k.veth());
                return false;
            }
            keys.insert(*k)
        })
        .copied()
        .collect()
}

/// Refuses plans the maps cannot hold (see [`peak_entries`]).
fn check_capacity(
    pins: &PinDir,
    plans: &[VethPlan],
    rules: &StdHashMap<VethRuleKey, PortRule>,
    scoped: &StdHashMap<VethScopedKey, PortRule>,
) -> Result<()> {
    let capacity = store::max_entries(pins, map_names::VETHS)?;
    if plans.len() > capacity as usize {
        return Err(full(map_names::VETHS, plans.len(), capacity, "--max-veths"));
    }
    let peak = peak_entries(plans, rules, |p| &p.entries);
    let capacity = store::max_entries(pins, map_names::VETH_RULES)?;
    if peak > capacity as usize {
        return Err(full(map_names::VETH_RULES, peak, capacity, "--max-veth-rules"));
    }
    let peak = peak_entries(plans, scoped, |p| &p.scoped);
    if peak > 0 {
        let capacity = store::max_entries(pins, map_names::VETH_SCOPED_RULES)?;
        if peak > capacity as usize {
            return Err(full(map_names::VETH_SCOPED_RULES, peak, capacity, "--max-veth-rules"));
        }
    }
    Ok(())
}

/// The most entries of one table (`VETH_RULES`, or `VETH_SCOPED_RULES`)
/// present at once in the write order of [`sync`] from `rules` to
/// `plans` (`entries` picks the table's part of a plan): unplanned veths'
/// entries out first, then each veth's new entries in before its stale
/// ones go out.
fn peak_entries<K: VethKey>(
    plans: &[VethPlan],
    rules: &StdHashMap<K, PortRule>,
    entries: impl Fn(&VethPlan) -> &Vec<(K, PortRule)>,
) -> usize {
    let planned: HashSet<u32> = plans.iter().map(|p| p.ifindex).collect();
    let mut per_veth: StdHashMap<u32, usize> = StdHashMap::new();
    for key in rules.keys().filter(|k| planned.contains(&k.veth())) {
        *per_veth.entry(key.veth()).or_default() += 1;
    }
    let mut count: usize = per_veth.values().sum();
    let mut peak = count;
    for plan in plans {
        let planned_entries = entries(plan);
        let added = planned_entries.iter().filter(|(k, _)| !rules.contains_key(k)).count();
        peak = peak.max(count + added);
        let stale = per_veth.get(&plan.ifindex).copied().unwrap_or(0) - (planned_entries.len() - added);
        count = count + added - stale;
    }
    peak
}

fn full(map: &'static str, needed: usize, capacity: u32, flag: &'static str) -> Error {
    Error::VethTableFull { map, needed, capacity, flag }
}

/// The whole map `name`, through a read-only fd and batch reads (a sync
/// reads both maps every time); `NotAttached` when it is not pinned.
fn read_map<K, V>(pins: &PinDir, name: &str) -> Result<StdHashMap<K, V>>
where
    K: Copy + Default + Eq + std::hash::Hash,
    V: Copy + Default,
{
    let path = pins.map(name);
    let fd = link_info::obj_get(&path, link_info::BPF_F_RDONLY).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) => Error::NotAttached { pin_dir: pins.root().into() },
        Some(libc::EACCES | libc::EPERM) => Error::Denied { path: path.clone(), source: e },
        _ => Error::io("open pinned map", &path, e),
    })?;
    let entries = link_info::read_hash(&fd).map_err(|e| Error::io("read", &path, e))?;
    Ok(entries.into_iter().collect())
}

fn insert<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    key: &K,
    value: &V,
    name: &str,
) -> Result<()> {
    map.insert(key, value, 0).map_err(|e| Error::bpf(format!("write {name}"), e))
}

fn remove<K: aya::Pod, V: aya::Pod>(map: &mut HashMap<MapData, K, V>, key: &K, name: &str) -> Result<()> {
    match map.remove(key) {
        Ok(()) => Ok(()),
        // Gone already (a concurrent writer): what we wanted.
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(Error::bpf(format!("remove from {name}"), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ifindex: u32, port: u32) -> VethRuleKey {
        VethRuleKey { ifindex, proto: 0, port }
    }

    fn plan(ifindex: u32, ports: &[u32]) -> VethPlan {
        VethPlan {
            ifindex,
            state: VethState { flags: 1, ..Default::default() },
            entries: ports.iter().map(|&p| (key(ifindex, p), PortRule { rule_id: p, flags: 0 })).collect(),
            scoped: vec![],
        }
    }

    #[test]
    fn dedup_keeps_the_first_plan_and_entry() {
        let mut first = plan(7, &[80, 80, 443]);
        first.entries.push((key(8, 22), PortRule::default()));
        let out = dedup(&[first, plan(7, &[1]), plan(8, &[22])]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].entries.iter().map(|(k, _)| k.port).collect::<Vec<_>>(), [80, 443]);
        assert_eq!(out[1].ifindex, 8);
    }

    #[test]
    fn the_peak_counts_new_entries_before_stale_ones_go() {
        let table = |plans: &[VethPlan]| -> StdHashMap<VethRuleKey, PortRule> {
            plans.iter().flat_map(|p| p.entries.iter().copied()).collect()
        };
        let now = table(&[plan(1, &[80, 443]), plan(2, &[22])]);
        // Unplanned veth 2 goes first: 2 left, then veth 1's 3 new ones.
        assert_eq!(peak_entries(&[plan(1, &[1, 2, 3])], &now, |p| &p.entries), 5);
        // Veth 1 shrinks first, then veth 3 grows into the room.
        assert_eq!(peak_entries(&[plan(1, &[80]), plan(3, &[1, 2])], &now, |p| &p.entries), 3);
        // Unchanged: what is there.
        assert_eq!(peak_entries(&[plan(1, &[80, 443]), plan(2, &[22])], &now, |p| &p.entries), 3);
        assert_eq!(peak_entries(&[], &now, |p| &p.entries), 0);
    }
}
