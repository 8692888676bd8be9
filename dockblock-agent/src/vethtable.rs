//! The veth table: what the veth hooks judge (`VETHS`: which veths are
//! reviewed, and with which kinds of entries; `VETH_RULES`: their ports;
//! `VETH_SCOPED_RULES`: their ports for packets from `--on` interfaces),
//! written from the translation's plans.
//!
//! Not generational: each key changes atomically, and the write order keeps
//! every moment safe (never open what both the old and the new table
//! close: the exhaustive test below replays every moment of every sync
//! between 145 plans of one veth). A veth not planned any more loses its
//! state first (unreviewed: closed), then its entries. A planned veth whose
//! entries change or go is first marked unreviewed (closed to new
//! connections for the few writes that follow: a mix of its old and new
//! entries could judge a packet by a rule whose allow-list neither lets in);
//! then it gets its new entries, then its state (so it is marked reviewed,
//! or told to look up a new kind of entry, only once they are in), then
//! loses its stale entries. A veth that only gains entries is never closed.
//! Capacities are checked before anything is written.

use std::collections::{BTreeMap, HashMap as StdHashMap, HashSet};

use aya::maps::{HashMap, MapData};
use dockblock_common::{
    map_names, veth_flag, PortRule, VethRuleKey, VethScopedKey, VethState, VETH_ANY_PORT,
};
use serde::Serialize;

use crate::{
    error::{Error, Result},
    link_info,
    model::VethTable,
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

/// The `VETHS` flags of a reviewed veth with these entries: which kinds
/// of entry its hook looks up.
pub fn state_flags(entries: &[(VethRuleKey, PortRule)], scoped: &[(VethScopedKey, PortRule)]) -> u32 {
    let mut flags = veth_flag::REVIEWED;
    if entries.iter().any(|(k, _)| k.port != VETH_ANY_PORT) {
        flags |= veth_flag::HAS_PORTS;
    }
    if entries.iter().any(|(k, _)| k.port == VETH_ANY_PORT) {
        flags |= veth_flag::HAS_WILDCARD;
    }
    if !scoped.is_empty() {
        flags |= veth_flag::HAS_SCOPED;
    }
    flags
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
    // Absent in a pin folder of a release before it, until `attach`.
    let mut scoped: Option<Scoped> = match pins.map(map_names::VETH_SCOPED_RULES).exists() {
        true => Some(store::open_pinned(pins, map_names::VETH_SCOPED_RULES)?),
        false => None,
    };
    let have = VethTable {
        states: read_map(pins, map_names::VETHS)?,
        rules: read_map(pins, map_names::VETH_RULES)?,
        scoped: match scoped {
            Some(_) => read_map(pins, map_names::VETH_SCOPED_RULES)?,
            None => StdHashMap::new(),
        },
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
    check_capacity(pins, &plans, &have.rules, &have.scoped)?;

    let mut done = VethSync::default();
    for op in write_order(&have, &plans) {
        match op {
            Op::State(ifindex, Some(state)) => insert(&mut states, &ifindex, &state, map_names::VETHS)?,
            Op::State(ifindex, None) => remove(&mut states, &ifindex, map_names::VETHS)?,
            Op::Rule(key, Some(rule)) => insert(&mut rules, &key, &rule, map_names::VETH_RULES)?,
            Op::Rule(key, None) => remove(&mut rules, &key, map_names::VETH_RULES)?,
            Op::Scoped(key, value) => {
                // Checked above: scoped ops come only with the map pinned.
                let Some(map) = scoped.as_mut() else { continue };
                match value {
                    Some(rule) => insert(map, &key, &rule, map_names::VETH_SCOPED_RULES)?,
                    None => remove(map, &key, map_names::VETH_SCOPED_RULES)?,
                }
            }
        }
        match op.is_removal() {
            true => done.removed += 1,
            false => done.written += 1,
        }
    }
    Ok(done)
}

/// One write to the veth table: a key set to a value, or removed (`None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    State(u32, Option<VethState>),
    Rule(VethRuleKey, Option<PortRule>),
    Scoped(VethScopedKey, Option<PortRule>),
}

impl Op {
    fn is_removal(&self) -> bool {
        matches!(self, Op::State(_, None) | Op::Rule(_, None) | Op::Scoped(_, None))
    }
}

/// The writes that take `have` to `plans`, in the order the module doc
/// gives (each prefix of it is a state the veth hooks may judge by).
fn write_order(have: &VethTable, plans: &[VethPlan]) -> Vec<Op> {
    let mut ops = Vec::new();
    let planned: HashSet<u32> = plans.iter().map(|p| p.ifindex).collect();
    let mut unplanned: Vec<u32> = have.states.keys().copied().filter(|i| !planned.contains(i)).collect();
    unplanned.sort_unstable();
    ops.extend(unplanned.into_iter().map(|i| Op::State(i, None)));
    ops.extend(unplanned_keys(&have.rules, &planned).into_iter().map(|k| Op::Rule(k, None)));
    ops.extend(unplanned_keys(&have.scoped, &planned).into_iter().map(|k| Op::Scoped(k, None)));
    let rules_by_veth = by_veth(&have.rules, &planned);
    let scoped_by_veth = by_veth(&have.scoped, &planned);
    for plan in plans {
        let (stale_rules, stale_scoped) = (
            stale(&rules_by_veth, plan.ifindex, &plan.entries),
            stale(&scoped_by_veth, plan.ifindex, &plan.scoped),
        );
        let have_state = have.states.get(&plan.ifindex);
        // A reviewed veth whose entries change or go is closed while they
        // do: a mix of its old and new entries could let in what both
        // close (`no_moment_of_a_sync_opens_what_before_and_after_close`).
        let changes = changed(&have.rules, &plan.entries)
            || changed(&have.scoped, &plan.scoped)
            || !stale_rules.is_empty()
            || !stale_scoped.is_empty();
        let closed = have_state
            .filter(|_| changes && have.reviewed(plan.ifindex).is_some())
            .map(|s| VethState { flags: 0, ..*s });
        if let Some(closed) = closed {
            ops.push(Op::State(plan.ifindex, Some(closed)));
        }
        ops.extend(new_entries(&have.scoped, &plan.scoped).map(|(k, v)| Op::Scoped(k, Some(v))));
        ops.extend(new_entries(&have.rules, &plan.entries).map(|(k, v)| Op::Rule(k, Some(v))));
        if closed.is_some() || have_state != Some(&plan.state) {
            ops.push(Op::State(plan.ifindex, Some(plan.state)));
        }
        ops.extend(stale_rules.into_iter().map(|k| Op::Rule(k, None)));
        ops.extend(stale_scoped.into_iter().map(|k| Op::Scoped(k, None)));
    }
    ops
}

/// Whether a planned entry's key holds another value now.
fn changed<K: VethKey>(have: &StdHashMap<K, PortRule>, entries: &[(K, PortRule)]) -> bool {
    entries.iter().any(|(key, rule)| have.get(key).is_some_and(|now| now != rule))
}

/// The present keys of veths not planned any more.
fn unplanned_keys<K: VethKey + Copy>(have: &StdHashMap<K, PortRule>, planned: &HashSet<u32>) -> Vec<K> {
    have.keys().filter(|k| !planned.contains(&k.veth())).copied().collect()
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

/// The planned entries that are new or changed.
fn new_entries<'a, K: VethKey + Copy>(
    have: &'a StdHashMap<K, PortRule>,
    entries: &'a [(K, PortRule)],
) -> impl Iterator<Item = (K, PortRule)> + 'a {
    entries.iter().filter(|(key, rule)| have.get(key) != Some(rule)).copied()
}

/// Veth `ifindex`'s present keys that are not planned.
fn stale<K: VethKey + Copy>(
    by_veth: &StdHashMap<u32, Vec<K>>,
    ifindex: u32,
    entries: &[(K, PortRule)],
) -> Vec<K> {
    let wanted: HashSet<&K> = entries.iter().map(|(k, _)| k).collect();
    by_veth.get(&ifindex).into_iter().flatten().filter(|k| !wanted.contains(k)).copied().collect()
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

    /// What the veth hook finds for a new connection, as the model
    /// judges it: `None` unreviewed, else the deciding rule id (`None`: no
    /// rule).
    fn judged(table: &VethTable, ifindex: u32, port: u16, from: u32) -> Option<Option<u32>> {
        let flags = table.reviewed(ifindex)?;
        Some(table.decider(ifindex, from, flags, 0, port).map(|r| r.rule_id))
    }

    /// Veth 1's plan from a choice of entries: `VETH_RULES` on port 80 and
    /// every port (absent, rule 1, rule 2), `VETH_SCOPED_RULES` from
    /// interface 5 on port 80 and every port (absent, decided with no rule,
    /// rule 1, rule 3), flags as `translate` sets them; `None`: no plan.
    fn small_plan(choice: usize) -> Option<VethPlan> {
        if choice == 0 {
            return None;
        }
        let mut digits = choice - 1;
        let mut next = |n: usize| {
            let d = digits % n;
            digits /= n;
            d
        };
        let mut plan = VethPlan { ifindex: 1, state: VethState::default(), entries: vec![], scoped: vec![] };
        for port in [80, VETH_ANY_PORT] {
            if let d @ 1.. = next(3) {
                plan.entries.push((
                    VethRuleKey { ifindex: 1, proto: 0, port },
                    PortRule { rule_id: d as u32, flags: 0 },
                ));
            }
        }
        for port in [80, VETH_ANY_PORT] {
            let rule_id = match next(4) {
                0 => continue,
                1 => 0,
                2 => 1,
                _ => 3,
            };
            plan.scoped.push((
                VethScopedKey { ifindex: 1, proto: 0, port, from: 5 },
                PortRule { rule_id, flags: 0 },
            ));
        }
        plan.state.flags = state_flags(&plan.entries, &plan.scoped);
        Some(plan)
    }

    fn apply(table: &mut VethTable, op: Op) {
        fn set<K: Eq + std::hash::Hash, V>(map: &mut StdHashMap<K, V>, key: K, value: Option<V>) {
            match value {
                Some(v) => drop(map.insert(key, v)),
                None => drop(map.remove(&key)),
            }
        }
        match op {
            Op::State(i, v) => set(&mut table.states, i, v),
            Op::Rule(k, v) => set(&mut table.rules, k, v),
            Op::Scoped(k, v) => set(&mut table.scoped, k, v),
        }
    }

    fn table_of(plan: &Option<VethPlan>) -> VethTable {
        let mut t = VethTable::default();
        if let Some(p) = plan {
            t.states.insert(p.ifindex, p.state);
            t.rules.extend(p.entries.iter().copied());
            t.scoped.extend(p.scoped.iter().copied());
        }
        t
    }

    /// Whether a new connection from source `src` (0, 1, 2) passes what
    /// [`judged`] found: unreviewed drops it, no rule passes it, rule 1
    /// drops it, rules 2 and 3 let their allow-lists (source 1, source 2) in.
    fn opens(judged: Option<Option<u32>>, src: u32) -> bool {
        match judged {
            None => false,
            Some(None) => true,
            Some(Some(rule)) => rule == src + 1 && rule != 1,
        }
    }

    /// Every moment of every sync between two of 145 plans of one veth
    /// (21,025 pairs): a new connection on port 80 or 81, from the host,
    /// interface 5 (which the scoped entries name) or 6, from any of three
    /// sources, passes only if the old table or the new one lets it pass.
    /// The mix of old and new entries a moment holds may judge it by
    /// another rule than either (the rule's counters then count it), but
    /// never opens what both close.
    #[test]
    fn no_moment_of_a_sync_opens_what_before_and_after_close() {
        let plans: Vec<Option<VethPlan>> = (0..=9 * 16).map(small_plan).collect();
        for old in &plans {
            for new in &plans {
                let mut tables = table_of(old);
                let (before, after) = (table_of(old), table_of(new));
                let ops = write_order(&before, new.as_slice());
                for step in 0..=ops.len() {
                    if step > 0 {
                        apply(&mut tables, ops[step - 1]);
                    }
                    for port in [80, 81] {
                        for from in [0, 5, 6] {
                            let now = judged(&tables, 1, port, from);
                            let (was, will) = (judged(&before, 1, port, from), judged(&after, 1, port, from));
                            for src in 0..3 {
                                assert!(
                                    !opens(now, src) || opens(was, src) || opens(will, src),
                                    "port {port} from {from}, source {src}, after {step} of {ops:?}: {now:?}, \
                                     before {was:?}, after {will:?}\nold {old:?}\nnew {new:?}"
                                );
                            }
                        }
                    }
                }
                assert_eq!(tables, after, "the sync ends at the plan");
            }
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
