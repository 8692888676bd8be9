//! The rule store: the pinned maps, opened by a short-lived process. It reads
//! the catalog (RULES, RULE_ALLOW), applies the edits `rules` plans, and
//! compiles the result into what the datapath reads (PORT_RULES, ALLOW).
//!
//! The datapath state exists in two generations; `CONFIG` names the live
//! one. A change is written to the idle generation, made live by one write
//! to `CONFIG`, then copied to the other, so a packet sees the old rule set
//! or the new one, never a mix. Outside a commit both generations are equal.
//!
//! Write order keeps the datapath safe if the process dies half-way: the
//! catalog gains new rules before any generation points at them, and loses
//! removed rules only after both generations stopped pointing at them. Each
//! commit is announced in the journal first (`journal`), so the next
//! changing command (or `repair`, or `attach`) rolls a killed one forward:
//! catalog to the target, idle generation rebuilt, one switch. Commands
//! that only read open every map read-only (`open_read_only`).

use std::collections::{BTreeMap, HashMap as StdHashMap};

use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues,
};
use dockblock_common::{
    map_names, port_index, proto, rule_flag, AllowEntry, AllowKey, Config, Counter, LogBudget, PortRule,
    RuleDef, RuleStats, RuleTarget, ScopeEntry, ScopedKey, ALLOW_KEY_RULE_BITS, HOOK_STATS_LEN,
};
use ipnet::IpNet;
use serde::Serialize;

use crate::{
    addr,
    error::{Error, Result},
    journal::{self, Change, StoredRule},
    link_info,
    paths::PinDir,
    ports::PortSpec,
    rules::{self, Draft, Edit, Rule, RuleSpec, Scope},
    scoping::{self, Scoping},
    target::Target,
    testhook,
};

pub use crate::rules::Derive;

pub struct RuleStore {
    port_rules: Array<MapData, PortRule>,
    catalog: HashMap<MapData, u32, RuleDef>,
    catalog_allow: HashMap<MapData, AllowEntry, u32>,
    catalog_targets: HashMap<MapData, u32, RuleTarget>,
    /// `RULE_SCOPES` and `SCOPED_RULES`: absent in a pin folder made by a
    /// release before scoping until the next `attach` creates them; then
    /// only scoped rules are refused.
    catalog_scopes: Option<HashMap<MapData, ScopeEntry, u32>>,
    scoped: Option<HashMap<MapData, ScopedKey, PortRule>>,
    allow: LpmTrie<MapData, AllowKey, u32>,
    config: Array<MapData, Config>,
    rule_stats: PerCpuArray<MapData, RuleStats>,
    hook_stats: PerCpuArray<MapData, Counter>,
    log_budget: PerCpuArray<MapData, LogBudget>,
    rule_capacity: u32,
    allow_capacity: u32,
    pins: PinDir,
    /// PORT_RULES again, read-only, for whole-table batch reads.
    port_rules_fd: std::os::fd::OwnedFd,
    port_slots: u32,
}

/// A rule with its counters summed over CPUs.
#[derive(Clone, Debug)]
pub struct RuleWithStats {
    pub rule: Rule,
    pub stats: RuleStats,
}

/// What `replace` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplaceSummary {
    pub added: usize,
    pub removed: usize,
    pub kept: usize,
}

/// What a commit changed in the catalog, engine-made rules included.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CommitSummary {
    /// New rules (fresh ids).
    pub added: usize,
    pub removed: usize,
    /// Same id, other ports, options or target.
    pub changed: usize,
    pub kept: usize,
}

impl CommitSummary {
    fn of(before: &[Rule], draft: &Draft) -> Self {
        let old = by_id(before);
        let fresh: std::collections::HashSet<u32> = draft.fresh.iter().copied().collect();
        let mut s = CommitSummary::default();
        for rule in &draft.rules {
            match old.get(&rule.id) {
                _ if fresh.contains(&rule.id) => s.added += 1,
                None => s.added += 1,
                Some(o) if *o == rule => s.kept += 1,
                Some(_) => s.changed += 1,
            }
        }
        let after = by_id(&draft.rules);
        s.removed = before.iter().filter(|r| !after.contains_key(&r.id) || fresh.contains(&r.id)).count();
        s
    }

    pub fn is_empty(&self) -> bool {
        self.added + self.removed + self.changed == 0
    }
}

/// `block`'s edit: each spec planned against the draft as it is by then;
/// `changed` says, per spec, whether it changed anything.
pub fn block_specs(draft: &mut Draft, specs: &[RuleSpec], changed: &mut Vec<bool>) -> Result<()> {
    for spec in specs {
        let edits = rules::plan_block(&draft.rules, spec);
        changed.push(!edits.is_empty());
        draft.apply(&edits)?;
    }
    Ok(())
}

/// `unblock`'s edit, among the rules with `target`.
pub fn unblock_specs(
    draft: &mut Draft,
    target: &Target,
    scope: Scope,
    scoping: &Scoping,
    specs: &[PortSpec],
) -> Result<()> {
    for spec in specs {
        draft.apply(&rules::plan_unblock(&draft.rules, target, scope, scoping, *spec)?)?;
    }
    Ok(())
}

/// `apply`'s edit: the user rules become `specs`.
pub fn replace_specs(draft: &mut Draft, specs: &[RuleSpec], summary: &mut ReplaceSummary) -> Result<()> {
    let users = draft.rules.iter().filter(|r| r.is_user()).count();
    let edits = rules::plan_replace(&draft.rules, specs);
    draft.apply(&edits)?;
    let removed = edits.iter().filter(|e| matches!(e, Edit::Remove(_))).count();
    *summary = ReplaceSummary { added: edits.len() - removed, removed, kept: users - removed };
    Ok(())
}

/// How a command opens the pinned maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    ReadWrite,
    /// BPF_F_RDONLY: the kernel refuses every write through these fds.
    ReadOnly,
}

fn open_map(pins: &PinDir, name: &str, access: Access) -> Result<MapData> {
    let path = pins.map(name);
    if !path.exists() {
        return Err(Error::NotAttached { pin_dir: pins.root().into() });
    }
    let what = || format!("open pinned map {}", path.display());
    let flags = match access {
        Access::ReadWrite => 0,
        Access::ReadOnly => link_info::BPF_F_RDONLY,
    };
    let fd = link_info::obj_get(&path, flags).map_err(|e| match e.raw_os_error() {
        Some(libc::EACCES | libc::EPERM) => Error::Denied { path: path.clone(), source: e },
        _ => Error::io("open pinned map", &path, e),
    })?;
    MapData::from_fd(fd).map_err(|e| Error::bpf(what(), e))
}

/// Opens pinned map `name` as aya type `T` (`Array`, `RingBuf`, ...);
/// `NotAttached` when it is not pinned. The one way every command opens a
/// pinned map.
pub fn open_pinned<T>(pins: &PinDir, name: &str) -> Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    open_pinned_as(pins, name, Access::ReadWrite)
}

/// `open_pinned` with the given access.
pub fn open_pinned_as<T>(pins: &PinDir, name: &str, access: Access) -> Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let data = open_map(pins, name, access)?;
    let map = Map::from_map_data(data).map_err(|e| Error::bpf(format!("map {name}"), e))?;
    T::try_from(map).map_err(|e| Error::bpf(format!("map {name} has an unexpected shape"), e))
}

/// `open_pinned_as`, `None` when `name` is not pinned (a map this release
/// added, in a pin folder an older one made).
fn open_optional<T>(pins: &PinDir, name: &str, access: Access) -> Result<Option<T>>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    match pins.map(name).exists() {
        true => open_pinned_as(pins, name, access).map(Some),
        false => Ok(None),
    }
}

/// The capacity the pinned map `name` was created with.
pub fn max_entries(pins: &PinDir, name: &str) -> Result<u32> {
    let info = open_map(pins, name, Access::ReadOnly)?
        .info()
        .map_err(|e| Error::bpf(format!("read {name} info"), e))?;
    Ok(info.max_entries())
}

/// Maps whose size the layout fixes (the others take `attach` capacities,
/// which `loader::check_capacities` compares with what is asked).
pub const FIXED_SIZE: [&str; 5] =
    [map_names::PORT_RULES, map_names::HOOK_STATS, map_names::CONFIG, map_names::SEEN, map_names::LOG_BUDGET];

/// What reuse compares of a map (libbpf's `map_is_reuse_compat`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Layout {
    pub map_type: Option<aya::maps::MapType>,
    pub key_size: u32,
    pub value_size: u32,
    pub flags: u32,
    pub max_entries: u32,
}

/// A pinned map this release's object could not reuse as it is.
#[derive(Clone, Debug)]
pub struct Mismatch {
    pub name: &'static str,
    /// The pinned map's.
    pub have: Layout,
    /// This build's object's (max entries: the default capacity).
    pub want: Layout,
}

impl Mismatch {
    /// What differs, e.g. "value size 32, expected 64".
    pub fn why(&self) -> String {
        let (have, want) = (&self.have, &self.want);
        let mut why = Vec::new();
        if have.map_type != want.map_type {
            why.push(format!("type {:?}, expected {:?}", have.map_type, want.map_type));
        }
        for (what, have, want) in [
            ("key size", have.key_size, want.key_size),
            ("value size", have.value_size, want.value_size),
            ("flags", have.flags, want.flags),
        ] {
            if have != want {
                why.push(format!("{what} {have}, expected {want}"));
            }
        }
        if self.fixed_size() && have.max_entries != want.max_entries {
            why.push(format!("max entries {}, expected {}", have.max_entries, want.max_entries));
        }
        why.join(", ")
    }

    /// Whether the layout fixes the map's size (see [`FIXED_SIZE`]).
    pub fn fixed_size(&self) -> bool {
        FIXED_SIZE.contains(&self.name)
    }

    pub fn error(&self) -> Error {
        Error::MapMismatch { name: self.name.to_string(), why: self.why() }
    }
}

/// This build's object's layout of every map it has, by name.
pub fn object_layouts() -> Result<StdHashMap<&'static str, Layout>> {
    let object =
        aya_obj::Object::parse(crate::EBPF_OBJECT).map_err(|e| Error::bpf("parse the eBPF object", e))?;
    let layout = |want: &aya_obj::Map| Layout {
        map_type: aya_obj::generated::bpf_map_type::try_from(want.map_type())
            .ok()
            .and_then(|t| aya::maps::MapType::try_from(t).ok()),
        key_size: want.key_size(),
        value_size: want.value_size(),
        flags: want.map_flags(),
        max_entries: want.max_entries(),
    };
    Ok(map_names::ALL.into_iter().filter_map(|name| Some((name, layout(object.maps.get(name)?)))).collect())
}

/// The layout of the pinned map `name`, if it is pinned.
pub fn pinned_layout(pins: &PinDir, name: &str) -> Result<Option<Layout>> {
    let Ok(data) = open_map(pins, name, Access::ReadOnly) else { return Ok(None) };
    let info = data.info().map_err(|e| Error::bpf(format!("read {name} info"), e))?;
    Ok(Some(Layout {
        map_type: info.map_type().ok(),
        key_size: info.key_size(),
        value_size: info.value_size(),
        flags: info.map_flags(),
        max_entries: info.max_entries(),
    }))
}

/// Every pinned map that this release's object could not reuse as it is:
/// another type, key size, value size or flags, or another size where the
/// layout fixes it (libbpf's `map_is_reuse_compat`). Missing pins are not
/// listed (loading creates them). `migrate` carries over those it knows.
pub fn map_mismatches(pins: &PinDir) -> Result<Vec<Mismatch>> {
    let object = object_layouts()?;
    let mut found = Vec::new();
    for name in map_names::ALL {
        let (Some(&want), Some(have)) = (object.get(name), pinned_layout(pins, name)?) else { continue };
        let m = Mismatch { name, have, want };
        let same_size = !m.fixed_size() || have.max_entries == want.max_entries;
        let same = Layout { max_entries: 0, ..have } == Layout { max_entries: 0, ..want };
        if !(same && same_size) {
            tracing::debug!("{}: {}", pins.map(name).display(), m.why());
            found.push(m);
        }
    }
    Ok(found)
}

fn sum(a: Counter, b: Counter) -> Counter {
    Counter { packets: a.packets + b.packets, bytes: a.bytes + b.bytes }
}

impl RuleStore {
    /// Opens the pinned maps in `pins` for writing; `NotAttached` if they
    /// are missing. Changing commands call it with the pin folder lock held,
    /// then `recover`.
    pub fn open(pins: &PinDir) -> Result<Self> {
        Self::open_as(pins, Access::ReadWrite)
    }

    /// Opens the pinned maps read-only (list, stats, status, export).
    pub fn open_read_only(pins: &PinDir) -> Result<Self> {
        Self::open_as(pins, Access::ReadOnly)
    }

    fn open_as(pins: &PinDir, access: Access) -> Result<Self> {
        Ok(Self {
            port_rules: open_pinned_as(pins, map_names::PORT_RULES, access)?,
            catalog: open_pinned_as(pins, map_names::RULES, access)?,
            catalog_allow: open_pinned_as(pins, map_names::RULE_ALLOW, access)?,
            catalog_targets: open_pinned_as(pins, map_names::RULE_TARGETS, access)?,
            catalog_scopes: open_optional(pins, map_names::RULE_SCOPES, access)?,
            scoped: open_optional(pins, map_names::SCOPED_RULES, access)?,
            allow: open_pinned_as(pins, map_names::ALLOW, access)?,
            config: open_pinned_as(pins, map_names::CONFIG, access)?,
            rule_stats: open_pinned_as(pins, map_names::RULE_STATS, access)?,
            hook_stats: open_pinned_as(pins, map_names::HOOK_STATS, access)?,
            log_budget: open_pinned_as(pins, map_names::LOG_BUDGET, access)?,
            rule_capacity: max_entries(pins, map_names::RULES)?,
            allow_capacity: max_entries(pins, map_names::RULE_ALLOW)?,
            pins: pins.clone(),
            port_rules_fd: link_info::obj_get(&pins.map(map_names::PORT_RULES), link_info::BPF_F_RDONLY)
                .map_err(|e| Error::io("open pinned map", pins.map(map_names::PORT_RULES), e))?,
            port_slots: max_entries(pins, map_names::PORT_RULES)?,
        })
    }

    /// How many rules the catalog holds at most.
    pub fn capacity(&self) -> u32 {
        // Id 0 means "no rule" in the port slots, so one slot is never used.
        self.rule_capacity - 1
    }

    /// How many allow-list entries (all rules together) fit.
    pub fn allow_capacity(&self) -> u32 {
        self.allow_capacity
    }

    pub fn config(&self) -> Result<Config> {
        self.config.get(&0, 0).map_err(|e| Error::bpf("read CONFIG", e))
    }

    /// Sets everything in `CONFIG` but the generation, which only `commit`
    /// moves.
    pub fn set_config(&mut self, config: Config) -> Result<()> {
        let generation = self.config()?.generation;
        self.config.set(0, Config { generation, ..config }, 0).map_err(|e| Error::bpf("write CONFIG", e))?;
        testhook::step();
        Ok(())
    }

    /// The rules, by id.
    pub fn rules(&self) -> Result<Vec<Rule>> {
        let mut allow: BTreeMap<u32, Vec<IpNet>> = BTreeMap::new();
        for entry in self.catalog_allow.keys() {
            let entry = entry.map_err(|e| Error::bpf("read RULE_ALLOW", e))?;
            if let Some(net) = addr::from_mapped(entry.addr, entry.prefix_len) {
                allow.entry(entry.rule_id).or_default().push(net);
            }
        }
        let mut targets = StdHashMap::new();
        for entry in self.catalog_targets.iter() {
            let (id, target) = entry.map_err(|e| Error::bpf("read RULE_TARGETS", e))?;
            targets.insert(id, target);
        }
        let mut scopings: StdHashMap<u32, Option<Scoping>> = StdHashMap::new();
        for entry in self.catalog_scopes.iter().flat_map(|m| m.keys()) {
            let entry = entry.map_err(|e| Error::bpf("read RULE_SCOPES", e))?;
            let scoping = scopings.entry(entry.rule_id).or_insert_with(|| Some(Scoping::default()));
            if scoping.as_mut().and_then(|s| s.add_entry(entry.kind, entry.value)).is_none() {
                *scoping = None;
            }
        }
        let mut rules = Vec::new();
        for entry in self.catalog.iter() {
            let (id, def) = entry.map_err(|e| Error::bpf("read RULES", e))?;
            let scoping = scopings.remove(&id).unwrap_or(Some(Scoping::default()));
            let rule = Rule::from_def(id, &def, allow.remove(&id).unwrap_or_default(), targets.get(&id));
            match rule.zip(scoping) {
                Some((mut rule, scoping)) => {
                    rule.options.scoping = scoping.normalised();
                    rules.push(rule);
                }
                None => tracing::warn!("ignoring rule {id} that this version cannot read: {def:?}"),
            }
        }
        rules.sort_by_key(|r| r.id);
        Ok(rules)
    }

    /// Rules with their counters.
    pub fn rules_with_stats(&self) -> Result<Vec<RuleWithStats>> {
        self.rules()?
            .into_iter()
            .map(|rule| {
                let stats = self.rule_stats(rule.id)?;
                Ok(RuleWithStats { rule, stats })
            })
            .collect()
    }

    fn rule_stats(&self, id: u32) -> Result<RuleStats> {
        let per_cpu = self.rule_stats.get(&id, 0).map_err(|e| Error::bpf("read RULE_STATS", e))?;
        Ok(per_cpu.iter().fold(RuleStats::default(), |t, s| RuleStats {
            dropped: sum(t.dropped, s.dropped),
            passed: sum(t.passed, s.passed),
            allowed: sum(t.allowed, s.allowed),
            dry_run: sum(t.dry_run, s.dry_run),
        }))
    }

    /// Per-hook counters summed over CPUs, indexed by `hook_stats_index`.
    pub fn hook_stats(&self) -> Result<Vec<Counter>> {
        (0..HOOK_STATS_LEN)
            .map(|i| {
                let per_cpu = self.hook_stats.get(&i, 0).map_err(|e| Error::bpf("read HOOK_STATS", e))?;
                Ok(per_cpu.iter().fold(Counter::default(), |t, c| sum(t, *c)))
            })
            .collect()
    }

    /// Log events not sent because of the rate limit or a full ring buffer.
    pub fn suppressed_events(&self) -> Result<u64> {
        let per_cpu = self.log_budget.get(&0, 0).map_err(|e| Error::bpf("read LOG_BUDGET", e))?;
        Ok(per_cpu.iter().map(|b| b.suppressed).sum())
    }

    /// The one way the rule set changes: `edit` changes a draft of the
    /// catalog (user rules), `rules::settle` brings the engine-made rules in
    /// line (`derive`: from an engine snapshot; `None`: keep them, dropping
    /// those whose parent is gone), and it is all committed in one
    /// generation switch, journaled. Nothing is written when `edit` fails.
    pub fn commit_with(
        &mut self,
        edit: impl FnOnce(&mut Draft) -> Result<()>,
        derive: Option<&dyn Derive>,
    ) -> Result<CommitSummary> {
        let before = self.rules()?;
        let mut draft = Draft::new(before.clone(), self.rule_capacity);
        edit(&mut draft)?;
        rules::settle(&mut draft, derive)?;
        self.commit(&before, &draft)?;
        Ok(CommitSummary::of(&before, &draft))
    }

    /// Blocks every spec, all or nothing. Returns, per spec, whether it
    /// changed anything.
    pub fn block(&mut self, specs: &[RuleSpec]) -> Result<Vec<bool>> {
        let mut changed = Vec::with_capacity(specs.len());
        self.commit_with(|draft| block_specs(draft, specs, &mut changed), None)?;
        Ok(changed)
    }

    /// Opens every spec in `scope` (plain rules), all or nothing;
    /// `NotBlocked` when no rule covers one of them.
    pub fn unblock(&mut self, scope: Scope, specs: &[PortSpec]) -> Result<()> {
        self.unblock_scoped(scope, &Scoping::default(), specs)
    }

    /// `unblock` among the plain rules with `scoping`.
    pub fn unblock_scoped(&mut self, scope: Scope, scoping: &Scoping, specs: &[PortSpec]) -> Result<()> {
        self.commit_with(|draft| unblock_specs(draft, &Target::default(), scope, scoping, specs), None)
            .map(drop)
    }

    /// Replaces the user rules with `specs` in one atomic switch.
    pub fn replace(&mut self, specs: &[RuleSpec]) -> Result<ReplaceSummary> {
        let mut summary = ReplaceSummary::default();
        self.commit_with(|draft| replace_specs(draft, specs, &mut summary), None)?;
        Ok(summary)
    }

    /// Turns the catalog `before` into `after` and switches the datapath to
    /// it atomically (see the module comment for the order).
    fn commit(&mut self, before: &[Rule], draft: &Draft) -> Result<()> {
        let after = &draft.rules[..];
        let (before_ids, after_ids) = (by_id(before), by_id(after));
        let fresh: std::collections::HashSet<u32> = draft.fresh.iter().copied().collect();
        let added_or_changed: Vec<&Rule> =
            after.iter().filter(|r| before_ids.get(&r.id) != Some(r)).collect();
        let gone_or_changed: Vec<&Rule> = before.iter().filter(|r| after_ids.get(&r.id) != Some(r)).collect();
        if added_or_changed.is_empty() && gone_or_changed.is_empty() {
            // Interfaces may have come, gone or been re-created since.
            return self.refresh_scoped(after);
        }
        if self.scoped.is_none() && added_or_changed.iter().any(|r| !r.options.scoping.is_empty()) {
            return Err(Error::BadArgument {
                what: "--on/--to",
                value: String::new(),
                why: "the pinned maps predate scoped rules: run `dockblock-agent attach` again to add them"
                    .into(),
            });
        }
        let allow_entries: usize = after.iter().map(|r| r.options.allow_from.len()).sum();
        if allow_entries > self.allow_capacity as usize {
            return Err(Error::AllowFull { capacity: self.allow_capacity });
        }
        if self.scoped.is_some() {
            // Both generations' entries live side by side.
            let need = 2 * compile_scoped(after).len();
            let capacity = max_entries(&self.pins, map_names::SCOPED_RULES)?;
            if need > capacity as usize {
                return Err(Error::BadArgument {
                    what: "--on/--to",
                    value: String::new(),
                    why: format!(
                        "scoped rules need {need} SCOPED_RULES entries (one per port, protocol, interface \
                         and address, in both generations); it holds {capacity}: scope fewer ports"
                    ),
                });
            }
        }
        for rule in &added_or_changed {
            // Refused before the journal names it: roll-forward must be
            // able to write every target it holds.
            rule.target.encode()?;
        }
        let live = self.config()?.generation & 1;
        let removed: Vec<u32> =
            gone_or_changed.iter().filter(|r| !after_ids.contains_key(&r.id)).map(|r| r.id).collect();
        journal::set_change(
            &self.pins,
            Some(Change::Commit {
                live_before: live,
                upsert: added_or_changed.iter().map(|r| StoredRule::from(*r)).collect(),
                remove: removed,
                fresh: draft.fresh.clone(),
            }),
        )?;

        for rule in &added_or_changed {
            let old = before_ids.get(&rule.id).copied();
            if fresh.contains(&rule.id) {
                self.zero_stats(rule.id)?;
            }
            self.set_catalog_allow(
                rule.id,
                old.map_or(&[][..], |o| &o.options.allow_from),
                &rule.options.allow_from,
            )?;
            self.set_catalog_target(rule)?;
            self.set_catalog_scopes(rule.id, old.map(|o| &o.options.scoping), &rule.options.scoping)?;
            self.catalog.insert(rule.id, rule.to_def(), 0).map_err(|e| Error::bpf("write RULES", e))?;
            testhook::step();
        }

        let touched: Vec<&Rule> = added_or_changed.iter().chain(&gone_or_changed).copied().collect();
        let writes = GenerationWrites::plan(before, after, &touched);
        for generation in [live ^ 1, live] {
            self.write_generation(generation, &writes)?;
            if generation != live {
                self.switch_to(generation)?;
            }
        }

        for rule in gone_or_changed.iter().filter(|r| !after_ids.contains_key(&r.id)) {
            self.set_catalog_allow(rule.id, &rule.options.allow_from, &[])?;
            self.catalog.remove(&rule.id).map_err(|e| Error::bpf("delete from RULES", e))?;
            testhook::step();
            self.remove_catalog_target(rule.id)?;
            self.set_catalog_scopes(rule.id, Some(&rule.options.scoping), &Scoping::default())?;
        }
        journal::set_change(&self.pins, None)
    }

    /// After a commit that changed no rule: if interfaces changed their
    /// indexes since `SCOPED_RULES` was written, rebuild both generations
    /// through the switch. Costs nothing without scoped rules.
    fn refresh_scoped(&mut self, rules: &[Rule]) -> Result<()> {
        if self.scoped.is_none() || rules.iter().all(|r| r.options.scoping.is_empty()) {
            return Ok(());
        }
        let want = compile_scoped(rules);
        let drift = (0..2).any(|g| self.scoped_entries(g) != stamp(&want, g));
        if drift {
            journal::set_change(&self.pins, Some(Change::Resync))?;
            self.converge(rules, true)?;
            journal::set_change(&self.pins, None)?;
        }
        Ok(())
    }

    /// Moves rule `id`'s `RULE_SCOPES` entries from `old` to `new`.
    fn set_catalog_scopes(&mut self, id: u32, old: Option<&Scoping>, new: &Scoping) -> Result<()> {
        let old = old.map(Scoping::entries).unwrap_or_default();
        let new = new.entries();
        if old == new {
            return Ok(());
        }
        let Some(map) = self.catalog_scopes.as_mut() else { return Ok(()) };
        for (kind, value) in old.iter().filter(|e| !new.contains(e)) {
            if map.remove(&ScopeEntry { rule_id: id, kind: *kind, value: *value }).is_ok() {
                testhook::step();
            }
        }
        for (kind, value) in new.iter().filter(|e| !old.contains(e)) {
            map.insert(ScopeEntry { rule_id: id, kind: *kind, value: *value }, 0, 0)
                .map_err(|e| Error::bpf("write RULE_SCOPES", e))?;
            testhook::step();
        }
        Ok(())
    }

    /// The `SCOPED_RULES` entries of `generation`.
    fn scoped_entries(&self, generation: u32) -> StdHashMap<ScopedKey, PortRule> {
        let Some(map) = &self.scoped else { return StdHashMap::new() };
        map.iter().filter_map(|e| e.ok()).filter(|(k, _)| k.generation == generation).collect()
    }

    /// Makes `generation`'s `SCOPED_RULES` entries exactly `want` (stamped
    /// with it): new and changed first, stale ones after.
    fn sync_scoped(&mut self, generation: u32, want: &StdHashMap<ScopedKey, PortRule>) -> Result<()> {
        let want = stamp(want, generation);
        let have = self.scoped_entries(generation);
        let Some(map) = self.scoped.as_mut() else { return Ok(()) };
        for (key, rule) in &want {
            if have.get(key) != Some(rule) {
                map.insert(key, rule, 0).map_err(|e| Error::bpf("write SCOPED_RULES", e))?;
                testhook::step();
            }
        }
        for key in have.keys().filter(|k| !want.contains_key(k)) {
            if map.remove(key).is_ok() {
                testhook::step();
            }
        }
        Ok(())
    }

    fn switch_to(&mut self, generation: u32) -> Result<()> {
        let config = Config { generation, ..self.config()? };
        self.config.set(0, config, 0).map_err(|e| Error::bpf("switch CONFIG generation", e))?;
        testhook::step();
        Ok(())
    }

    /// Writes one commit's planned slots and allow-list changes into
    /// `generation`.
    fn write_generation(&mut self, generation: u32, writes: &GenerationWrites) -> Result<()> {
        self.sync_scoped(generation, &writes.scoped)?;
        for (id, net) in &writes.allow_removed {
            // Already absent is fine: this is also how resync starts.
            if self.allow.remove(&allow_key(generation, *id, net)).is_ok() {
                testhook::step();
            }
        }
        for (id, net) in &writes.allow_set {
            self.allow
                .insert(&allow_key(generation, *id, net), 0, 0)
                .map_err(|e| Error::bpf("write ALLOW", e))?;
            testhook::step();
        }
        for (scope, proto, port, slot) in &writes.slots {
            self.port_rules
                .set(port_index(generation, scope.raw(), *proto, *port), *slot, 0)
                .map_err(|e| Error::bpf("write PORT_RULES", e))?;
            testhook::step();
        }
        Ok(())
    }

    /// Rebuilds both generations from the catalog through the generation
    /// switch: the idle one first, then one switch, then the other. Used by
    /// `attach` and `repair`; journaled, since until it ends the idle
    /// generation may differ from the live one.
    pub fn resync(&mut self) -> Result<()> {
        if self.generation_drift()? == (0, 0) {
            return Ok(()); // nothing to rebuild: no write, no switch
        }
        journal::set_change(&self.pins, Some(Change::Resync))?;
        let rules = self.rules()?;
        self.converge(&rules, true)?;
        journal::set_change(&self.pins, None)
    }

    /// Switches the datapath to an empty rule set in one write (the first
    /// step of detaching everything); the catalog is left alone.
    pub fn switch_to_empty(&mut self) -> Result<()> {
        let live = self.config()?.generation & 1;
        let table = self.port_table()?;
        self.sync_generation(live ^ 1, &[], &table)?;
        self.switch_to(live ^ 1)
    }

    /// Makes the idle generation exactly `rules`, switches to it if `switch`,
    /// and (after a switch) makes the other one equal too.
    fn converge(&mut self, rules: &[Rule], switch: bool) -> Result<()> {
        let live = self.config()?.generation & 1;
        // One read serves both: a sync writes only its own generation.
        let table = self.port_table()?;
        self.sync_generation(live ^ 1, rules, &table)?;
        if switch {
            self.switch_to(live ^ 1)?;
            self.sync_generation(live, rules, &table)?;
        }
        Ok(())
    }

    /// Writes every slot and allow entry of `generation` that differs from
    /// what `rules` compile to (reads are free: a table already right costs
    /// no write).
    fn sync_generation(&mut self, generation: u32, rules: &[Rule], table: &[PortRule]) -> Result<()> {
        self.sync_scoped(generation, &compile_scoped(rules))?;
        let want = compile_allow(generation, rules);
        let have = self.allow_entries(generation);
        for (id, key) in &have {
            if !want.contains_key(id) && self.allow.remove(key).is_ok() {
                testhook::step();
            }
        }
        for (id, key) in &want {
            if !have.contains_key(id) {
                self.allow.insert(key, 0, 0).map_err(|e| Error::bpf("write ALLOW", e))?;
                testhook::step();
            }
        }
        for (scope, proto, port, slot) in compile_slots(rules) {
            let index = port_index(generation, scope.raw(), proto, port);
            if table.get(index as usize) != Some(&slot) {
                self.port_rules.set(index, slot, 0).map_err(|e| Error::bpf("write PORT_RULES", e))?;
                testhook::step();
            }
        }
        Ok(())
    }

    /// Slots and allow entries of the live and of the idle generation that
    /// disagree with the catalog: (0, 0) when healthy. Reads only.
    pub fn generation_drift(&self) -> Result<(usize, usize)> {
        let rules = self.rules()?;
        let live = self.config()?.generation & 1;
        let mut drift = [0usize; 2];
        let slots = compile_slots(&rules);
        let scoped = compile_scoped(&rules);
        let table = self.port_table()?;
        for (g, count) in drift.iter_mut().enumerate() {
            let g = g as u32;
            for (scope, proto, port, slot) in &slots {
                let index = port_index(g, scope.raw(), *proto, *port);
                if table.get(index as usize) != Some(slot) {
                    *count += 1;
                }
            }
            let want = stamp(&scoped, g);
            let have = self.scoped_entries(g);
            *count += have.iter().filter(|(k, v)| want.get(k) != Some(v)).count();
            *count += want.keys().filter(|k| !have.contains_key(k)).count();
            let want = compile_allow(g, &rules);
            let have = self.allow_entries(g);
            *count += have.keys().filter(|k| !want.contains_key(k)).count();
            *count += want.keys().filter(|k| !have.contains_key(k)).count();
        }
        Ok((drift[live as usize], drift[(live ^ 1) as usize]))
    }

    /// Finishes a change a killed process left in the journal (rolling a
    /// commit forward, redoing a resync). Call with the lock held. Returns
    /// what it finished; a detach is left to the caller (`teardown`).
    pub fn recover(&mut self) -> Result<Option<Change>> {
        let change = journal::read(&self.pins)?.change;
        match &change {
            Some(Change::Commit { live_before, upsert, remove, fresh }) => {
                self.roll_forward(*live_before, upsert, remove, fresh)?;
                journal::set_change(&self.pins, None)?;
            }
            Some(Change::Resync) => self.resync()?,
            Some(Change::Detach { .. }) | None => return Ok(None),
        }
        Ok(change)
    }

    fn roll_forward(
        &mut self,
        live_before: u32,
        upsert: &[StoredRule],
        remove: &[u32],
        fresh: &[u32],
    ) -> Result<()> {
        let current: StdHashMap<u32, Rule> = self.rules()?.into_iter().map(|r| (r.id, r)).collect();
        let switched = self.config()?.generation & 1 != live_before;
        for stored in upsert {
            let Some(rule) = stored.to_rule() else { continue };
            if !switched && fresh.contains(&rule.id) {
                // Nothing points at a fresh id before the switch.
                self.zero_stats(rule.id)?;
            }
            let old = current.get(&rule.id).map_or(&[][..], |r| &r.options.allow_from[..]);
            self.set_catalog_allow(rule.id, old, &rule.options.allow_from)?;
            self.set_catalog_target(&rule)?;
            let old_scoping = current.get(&rule.id).map(|r| &r.options.scoping);
            self.set_catalog_scopes(rule.id, old_scoping, &rule.options.scoping)?;
            self.catalog.insert(rule.id, rule.to_def(), 0).map_err(|e| Error::bpf("write RULES", e))?;
            testhook::step();
        }
        for id in remove {
            if let Some(old) = current.get(id) {
                self.set_catalog_allow(*id, &old.options.allow_from, &[])?;
                self.set_catalog_scopes(*id, Some(&old.options.scoping), &Scoping::default())?;
            }
            if self.catalog.remove(id).is_ok() {
                testhook::step();
            }
            self.remove_catalog_target(*id)?;
        }
        let rules = self.rules()?;
        if switched {
            // The live generation is the target; finish the other one.
            let live = self.config()?.generation & 1;
            let table = self.port_table()?;
            self.sync_generation(live ^ 1, &rules, &table)
        } else {
            self.converge(&rules, true)
        }
    }

    /// Moves rule `id`'s catalog allow-list from `old` to `new`.
    fn set_catalog_allow(&mut self, id: u32, old: &[IpNet], new: &[IpNet]) -> Result<()> {
        for net in old.iter().filter(|n| !new.contains(n)) {
            if self.catalog_allow.remove(&allow_entry(id, net)).is_ok() {
                testhook::step();
            }
        }
        for net in new.iter().filter(|n| !old.contains(n)) {
            self.catalog_allow
                .insert(allow_entry(id, net), 0, 0)
                .map_err(|e| Error::bpf("write RULE_ALLOW", e))?;
            testhook::step();
        }
        Ok(())
    }

    /// Writes rule `rule`'s `RULE_TARGETS` entry (removes it for a plain
    /// rule). Called before its `RULES` entry is written, so a new rule is
    /// never read without its target.
    fn set_catalog_target(&mut self, rule: &Rule) -> Result<()> {
        match rule.target.encode()? {
            Some(raw) => {
                self.catalog_targets
                    .insert(rule.id, raw, 0)
                    .map_err(|e| Error::bpf("write RULE_TARGETS", e))?;
                testhook::step();
                Ok(())
            }
            None => self.remove_catalog_target(rule.id),
        }
    }

    /// Removes rule `id`'s `RULE_TARGETS` entry, if any (after its `RULES`
    /// entry is gone).
    fn remove_catalog_target(&mut self, id: u32) -> Result<()> {
        if self.catalog_targets.remove(&id).is_ok() {
            testhook::step();
        }
        Ok(())
    }

    /// The whole of PORT_RULES, by index.
    fn port_table(&self) -> Result<Vec<PortRule>> {
        link_info::read_array(&self.port_rules_fd, self.port_slots)
            .map_err(|e| Error::io("read", self.pins.map(map_names::PORT_RULES), e))
    }

    /// The `ALLOW` entries of `generation`.
    fn allow_entries(&self, generation: u32) -> StdHashMap<AllowId, Key<AllowKey>> {
        self.allow
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| u32::from_be(k.data().generation_be) == generation)
            .map(|k| (allow_id(&k), k))
            .collect()
    }

    fn zero_stats(&mut self, id: u32) -> Result<()> {
        let cpus = aya::util::nr_cpus()
            .map_err(|(_, e)| Error::io("count CPUs", "/sys/devices/system/cpu/possible", e))?;
        let zeros = PerCpuValues::try_from(vec![RuleStats::default(); cpus])
            .map_err(|e| Error::bpf("zero RULE_STATS", e))?;
        self.rule_stats.set(id, zeros, 0).map_err(|e| Error::bpf("zero RULE_STATS", e))?;
        testhook::step();
        Ok(())
    }
}

/// What a commit writes into each generation, planned once and written to
/// both: the slots of every port a changed rule covers (or covered), and
/// the allow-list entries of changed rules.
struct GenerationWrites {
    slots: Vec<(Scope, u32, u16, PortRule)>,
    /// Entries `before` had and `after` has not.
    allow_removed: Vec<(u32, IpNet)>,
    /// Every entry of the touched rules in `after`.
    allow_set: Vec<(u32, IpNet)>,
    /// `SCOPED_RULES` as `after` compiles (generation 0, stamped per write).
    scoped: StdHashMap<ScopedKey, PortRule>,
}

impl GenerationWrites {
    fn plan(before: &[Rule], after: &[Rule], touched: &[&Rule]) -> Self {
        let (old_rules, new_rules) = (by_id(before), by_id(after));
        let mut ids: Vec<u32> = touched.iter().map(|r| r.id).collect();
        ids.sort_unstable();
        ids.dedup();
        let (mut allow_removed, mut allow_set) = (Vec::new(), Vec::new());
        for id in ids {
            let none: &[IpNet] = &[];
            let old_allow = old_rules.get(&id).map_or(none, |r| &r.options.allow_from);
            let new_allow = new_rules.get(&id).map_or(none, |r| &r.options.allow_from);
            allow_removed.extend(old_allow.iter().filter(|n| !new_allow.contains(n)).map(|n| (id, *n)));
            allow_set.extend(new_allow.iter().map(|n| (id, *n)));
        }
        let scoped = compile_scoped(after);
        Self { slots: plan_slots(after, touched, &scoped), allow_removed, allow_set, scoped }
    }
}

/// The slot of every (scope, protocol, port) that a rule in `touched`
/// covers, set to its owner under `rules`.
fn plan_slots(
    rules: &[Rule],
    touched: &[&Rule],
    scoped: &StdHashMap<ScopedKey, PortRule>,
) -> Vec<(Scope, u32, u16, PortRule)> {
    let mut slots = Vec::new();
    for scope in Scope::ALL {
        for proto in [proto::TCP, proto::UDP] {
            let mut ports: Vec<u16> = touched
                .iter()
                .filter(|r| {
                    rules::in_port_table(r) && r.scope == scope && r.ports.protos & proto::bit(proto) != 0
                })
                .flat_map(|r| r.ports.ports())
                .collect();
            if ports.is_empty() {
                continue;
            }
            ports.sort_unstable();
            ports.dedup();
            let slot = slot_of(rules, scope, proto, scoped);
            slots.extend(ports.into_iter().map(|port| (scope, proto, port, slot(port))));
        }
    }
    slots
}

/// Every (scope, protocol, port) slot, ports 1-65535, as `rules` own them.
fn compile_slots(rules: &[Rule]) -> Vec<(Scope, u32, u16, PortRule)> {
    let scoped = compile_scoped(rules);
    let mut slots = Vec::with_capacity(4 * 65535);
    for scope in Scope::ALL {
        for proto in [proto::TCP, proto::UDP] {
            let slot = slot_of(rules, scope, proto, &scoped);
            slots.extend((1..=65535u16).map(|port| (scope, proto, port, slot(port))));
        }
    }
    slots
}

/// The `PORT_RULES` slot of each port of `scope`/`proto`: its unscoped
/// owner, flagged `SCOPED` when `scoped` has entries for the port.
fn slot_of(
    rules: &[Rule],
    scope: Scope,
    proto: u32,
    scoped: &StdHashMap<ScopedKey, PortRule>,
) -> impl Fn(u16) -> PortRule {
    let owners: Vec<PortRule> = rules::port_owners(rules, scope, proto)
        .into_iter()
        .map(|o| o.map_or(PortRule::default(), |r| PortRule { rule_id: r.id, flags: r.options.flags() }))
        .collect();
    let flagged: std::collections::HashSet<u32> =
        scoped.keys().filter(|k| k.scope == scope.raw() && k.proto == proto).map(|k| k.port).collect();
    move |port| {
        let slot = owners[usize::from(port)];
        match flagged.contains(&u32::from(port)) {
            true => PortRule { flags: slot.flags | rule_flag::SCOPED, ..slot },
            false => slot,
        }
    }
}

/// Every `SCOPED_RULES` entry `rules` need (generation 0; `stamp` sets
/// it), interfaces resolved now.
pub fn compile_scoped(rules: &[Rule]) -> StdHashMap<ScopedKey, PortRule> {
    compile_scoped_with(rules, &scoping::ifindex)
}

/// `compile_scoped` with interfaces resolved by `resolve`.
pub fn compile_scoped_with(
    rules: &[Rule],
    resolve: &dyn Fn(&str) -> Option<u32>,
) -> StdHashMap<ScopedKey, PortRule> {
    let mut entries = StdHashMap::new();
    if rules.iter().all(|r| r.options.scoping.is_empty()) {
        return entries;
    }
    for scope in Scope::ALL {
        for proto in [proto::TCP, proto::UDP] {
            let unscoped = rules::port_owners(rules, scope, proto);
            for ((ifindex, addr), owners) in rules::scoped_owners(rules, scope, proto, resolve) {
                for (port, owner) in owners.iter().enumerate().filter_map(|(p, o)| o.map(|o| (p, o))) {
                    // A dry-run rule never opens what an unscoped block closes:
                    // no entry, the lookup goes on to less specific ones.
                    if owner.options.dry_run && unscoped[port].is_some_and(|u| !u.options.dry_run) {
                        continue;
                    }
                    let key = ScopedKey {
                        generation: 0,
                        scope: scope.raw(),
                        proto,
                        port: port as u32,
                        ifindex,
                        addr,
                    };
                    entries.insert(key, PortRule { rule_id: owner.id, flags: owner.options.flags() });
                }
            }
        }
    }
    entries
}

/// `entries` with their keys in `generation`.
fn stamp(entries: &StdHashMap<ScopedKey, PortRule>, generation: u32) -> StdHashMap<ScopedKey, PortRule> {
    entries.iter().map(|(k, v)| (ScopedKey { generation, ..*k }, *v)).collect()
}

/// An `ALLOW` key as something hashable: prefix length, rule id, address.
type AllowId = (u32, u32, [u8; 16]);

fn allow_id(key: &Key<AllowKey>) -> AllowId {
    let data = key.data();
    (key.prefix_len(), u32::from_be(data.rule_id_be), data.addr)
}

/// Every allow-list entry of `generation` that `rules` need.
fn compile_allow(generation: u32, rules: &[Rule]) -> StdHashMap<AllowId, Key<AllowKey>> {
    rules
        .iter()
        .flat_map(|r| r.options.allow_from.iter().map(move |n| allow_key(generation, r.id, n)))
        .map(|k| (allow_id(&k), k))
        .collect()
}

/// Rules by id, for lookups that would otherwise scan.
fn by_id(rules: &[Rule]) -> StdHashMap<u32, &Rule> {
    rules.iter().map(|r| (r.id, r)).collect()
}

fn allow_entry(rule_id: u32, net: &IpNet) -> AllowEntry {
    let (addr, prefix_len) = addr::to_mapped(net);
    AllowEntry { rule_id, prefix_len, addr }
}

fn allow_key(generation: u32, rule_id: u32, net: &IpNet) -> Key<AllowKey> {
    let (addr, prefix_len) = addr::to_mapped(net);
    let data = AllowKey { generation_be: generation.to_be(), rule_id_be: rule_id.to_be(), addr };
    Key::new(ALLOW_KEY_RULE_BITS + prefix_len, data)
}
