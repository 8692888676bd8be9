//! The rule store: the pinned maps, opened by a short-lived process. It reads
//! the catalog, applies the edits `rules` plans, and rewrites the port slots
//! those edits touch.
//!
//! Write order keeps the datapath safe if the process dies half-way: a new
//! rule enters the catalog before its port slots, and a removed rule leaves
//! its port slots before the catalog. `attach` re-derives every slot from the
//! catalog (`resync`), which repairs whatever a killed process left.

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues};
use dockblock_common::{
    map_names, port_index, proto, Counter, PortRule, RuleDef, RuleStats, HOOK_STATS_LEN,
};

use crate::{
    error::{Error, Result},
    paths::PinDir,
    ports::PortSpec,
    rules::{self, Rule, Scope, Verb},
};

pub struct RuleStore {
    port_rules: Array<MapData, PortRule>,
    catalog: HashMap<MapData, u32, RuleDef>,
    rule_stats: PerCpuArray<MapData, RuleStats>,
    hook_stats: PerCpuArray<MapData, Counter>,
    capacity: u32,
}

/// A rule with its counters summed over CPUs.
#[derive(Clone, Copy, Debug)]
pub struct RuleWithStats {
    pub rule: Rule,
    pub stats: RuleStats,
}

fn open_map(pins: &PinDir, name: &str) -> Result<MapData> {
    let path = pins.map(name);
    if !path.exists() {
        return Err(Error::NotAttached {
            pin_dir: pins.root().into(),
        });
    }
    MapData::from_pin(&path)
        .map_err(|e| Error::bpf(format!("open pinned map {}", path.display()), e))
}

fn typed<T>(pins: &PinDir, name: &str) -> Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let data = open_map(pins, name)?;
    let map = Map::from_map_data(data).map_err(|e| Error::bpf(format!("map {name}"), e))?;
    T::try_from(map).map_err(|e| Error::bpf(format!("map {name} has an unexpected shape"), e))
}

impl RuleStore {
    /// Opens the pinned maps in `pins`; `NotAttached` if they are missing.
    pub fn open(pins: &PinDir) -> Result<Self> {
        let catalog: HashMap<MapData, u32, RuleDef> = typed(pins, map_names::RULES)?;
        let capacity = open_map(pins, map_names::RULES)?
            .info()
            .map_err(|e| Error::bpf("read RULES info", e))?
            .max_entries();
        Ok(Self {
            port_rules: typed(pins, map_names::PORT_RULES)?,
            catalog,
            rule_stats: typed(pins, map_names::RULE_STATS)?,
            hook_stats: typed(pins, map_names::HOOK_STATS)?,
            capacity,
        })
    }

    /// How many rules the catalog holds at most.
    pub fn capacity(&self) -> u32 {
        // Id 0 means "no rule" in the port slots, so one slot is never used.
        self.capacity - 1
    }

    /// The rules, by id.
    pub fn rules(&self) -> Result<Vec<Rule>> {
        let mut rules = Vec::new();
        for entry in self.catalog.iter() {
            let (id, def) = entry.map_err(|e| Error::bpf("read RULES", e))?;
            match Rule::from_def(id, &def) {
                Some(rule) => rules.push(rule),
                None => log::warn!("ignoring rule {id} that this version cannot read: {def:?}"),
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
                Ok(RuleWithStats {
                    rule,
                    stats: self.rule_stats(rule.id)?,
                })
            })
            .collect()
    }

    fn rule_stats(&self, id: u32) -> Result<RuleStats> {
        let per_cpu = self
            .rule_stats
            .get(&id, 0)
            .map_err(|e| Error::bpf("read RULE_STATS", e))?;
        Ok(per_cpu
            .iter()
            .fold(RuleStats::default(), |sum, s| RuleStats {
                dropped: add(sum.dropped, s.dropped),
                passed: add(sum.passed, s.passed),
            }))
    }

    /// Per-hook counters summed over CPUs, indexed by `hook_stats_index`.
    pub fn hook_stats(&self) -> Result<Vec<Counter>> {
        (0..HOOK_STATS_LEN)
            .map(|i| {
                let per_cpu = self
                    .hook_stats
                    .get(&i, 0)
                    .map_err(|e| Error::bpf("read HOOK_STATS", e))?;
                Ok(per_cpu
                    .iter()
                    .fold(Counter::default(), |sum, c| add(sum, *c)))
            })
            .collect()
    }

    /// Applies `verb` to every spec in `scope`, all or nothing: the whole
    /// change is planned and checked (unknown rules, capacity) before the
    /// first write. Returns, per spec, whether it changed anything.
    pub fn change(&mut self, verb: Verb, scope: Scope, specs: &[PortSpec]) -> Result<Vec<bool>> {
        let before = self.rules()?;
        let mut after = before.clone();
        let mut changed = Vec::with_capacity(specs.len());
        for spec in specs {
            let edits = match verb {
                Verb::Block => rules::plan_block(&after, scope, *spec),
                Verb::Unblock => rules::plan_unblock(&after, scope, *spec)?,
            };
            changed.push(!edits.is_empty());
            after = rules::apply_edits(&after, &edits, self.capacity)?;
        }
        self.commit(&before, &after)?;
        Ok(changed)
    }

    /// Blocks one spec; false when it was already blocked.
    pub fn block(&mut self, scope: Scope, spec: PortSpec) -> Result<bool> {
        Ok(self.change(Verb::Block, scope, &[spec])?[0])
    }

    /// Opens one spec; `NotBlocked` when no rule covers any of it.
    pub fn unblock(&mut self, scope: Scope, spec: PortSpec) -> Result<()> {
        self.change(Verb::Unblock, scope, &[spec]).map(drop)
    }

    /// Turns the catalog `before` into `after`: catalog entries for new or
    /// changed rules first, then the port slots they touch, then removals.
    fn commit(&mut self, before: &[Rule], after: &[Rule]) -> Result<()> {
        let added_or_changed: Vec<Rule> = after
            .iter()
            .filter(|r| !before.contains(r))
            .copied()
            .collect();
        let gone_or_changed: Vec<Rule> = before
            .iter()
            .filter(|r| !after.contains(r))
            .copied()
            .collect();
        for rule in &added_or_changed {
            if !before.iter().any(|r| r.id == rule.id) {
                self.zero_stats(rule.id)?;
            }
            self.catalog
                .insert(rule.id, rule.to_def(), 0)
                .map_err(|e| Error::bpf("write RULES", e))?;
        }
        let touched: Vec<Rule> = added_or_changed
            .iter()
            .chain(&gone_or_changed)
            .copied()
            .collect();
        self.write_slots(after, &touched)?;
        for rule in gone_or_changed
            .iter()
            .filter(|r| !after.iter().any(|a| a.id == r.id))
        {
            self.catalog
                .remove(&rule.id)
                .map_err(|e| Error::bpf("delete from RULES", e))?;
        }
        Ok(())
    }

    /// Rewrites every port slot from the catalog (used by `attach`).
    pub fn resync(&mut self) -> Result<()> {
        let rules = self.rules()?;
        let everything: Vec<Rule> = Scope::ALL
            .into_iter()
            .map(|scope| Rule {
                id: 0,
                scope,
                ports: PortSpec {
                    lo: 1,
                    hi: 65535,
                    protos: crate::ports::ALL_PROTOS,
                },
            })
            .collect();
        self.write_slots(&rules, &everything)
    }

    /// Sets the slots of every (scope, protocol, port) that a rule in
    /// `touched` covers to its owner under `rules`.
    fn write_slots(&mut self, rules: &[Rule], touched: &[Rule]) -> Result<()> {
        for scope in Scope::ALL {
            for proto in [proto::TCP, proto::UDP] {
                let mut ports: Vec<u16> = touched
                    .iter()
                    .filter(|r| r.scope == scope && r.ports.protos & proto::bit(proto) != 0)
                    .flat_map(|r| r.ports.ports())
                    .collect();
                if ports.is_empty() {
                    continue;
                }
                ports.sort_unstable();
                ports.dedup();
                let owners = rules::port_owners(rules, scope, proto);
                for port in ports {
                    let slot = PortRule {
                        rule_id: owners[usize::from(port)],
                        flags: 0,
                    };
                    self.port_rules
                        .set(port_index(scope.raw(), proto, port), slot, 0)
                        .map_err(|e| Error::bpf("write PORT_RULES", e))?;
                }
            }
        }
        Ok(())
    }

    fn zero_stats(&mut self, id: u32) -> Result<()> {
        let cpus = aya::util::nr_cpus()
            .map_err(|(_, e)| Error::io("count CPUs", "/sys/devices/system/cpu/possible", e))?;
        let zeros = PerCpuValues::try_from(vec![RuleStats::default(); cpus])
            .map_err(|e| Error::bpf("zero RULE_STATS", e))?;
        self.rule_stats
            .set(id, zeros, 0)
            .map_err(|e| Error::bpf("zero RULE_STATS", e))
    }
}

fn add(a: Counter, b: Counter) -> Counter {
    Counter {
        packets: a.packets + b.packets,
        bytes: a.bytes + b.bytes,
    }
}
