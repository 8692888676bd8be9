//! The rule model: user rules, how block/unblock edit the rule set, and how
//! the rule set becomes kernel port slots. Pure functions, no maps, so every
//! rule decision is unit-tested here; `store` only writes what these return.
//!
//! Semantics:
//! - A rule is (scope, port range, protocols) plus options (allow-list,
//!   dry-run, log). Rules may overlap; for each port the narrowest range
//!   wins, then the one with fewer protocols, then the newest, so a port's
//!   drops are counted on its most specific rule.
//! - `block` of a range that is already a rule with the same options is a
//!   no-op or widens its protocols (`block 8080/udp` onto `8080/tcp`); with
//!   other options it takes those protocols over from the old rule.
//! - `unblock` opens exactly the given ports: rules are trimmed or split
//!   around them (the pieces keep their options), never left covering an
//!   unblocked port.
//! - `apply` replaces the whole set; rules identical to existing ones keep
//!   their ids and counters, so `export | apply` changes nothing. Every new
//!   rule starts with zeroed counters, even on an id freed in the same
//!   command.
//! - A rule has a target (`target::Target`): block/unblock edit only the
//!   rules with the same target; rules the engine state made (own labels,
//!   derived) are never edited by a verb nor replaced by `apply`: `derive`
//!   recomputes them in the same commit.

use std::fmt;

use dockblock_common::{proto, rule_flag, scope, RuleDef, RuleTarget};
use ipnet::IpNet;
use serde::Serialize;

use crate::{
    error::{Error, Result},
    ports::PortSpec,
    scoping::{ScopeKey, Scoping},
    target::{Action, Selector, Target},
};

/// Where a rule is judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The port a client dials on this host (XDP on the uplink, before DNAT).
    Dialed,
    /// The container port after DNAT (TC egress on the Docker bridge).
    Container,
}

impl Scope {
    pub const ALL: [Scope; 2] = [Scope::Dialed, Scope::Container];

    pub fn raw(self) -> u32 {
        match self {
            Scope::Dialed => scope::DIALED,
            Scope::Container => scope::CONTAINER,
        }
    }

    fn from_raw(raw: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.raw() == raw)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // pad, not write_str: tables align it with `{:<9}`.
        f.pad(match self {
            Scope::Dialed => "dialed",
            Scope::Container => "container",
        })
    }
}

/// What a rule does besides dropping new connections.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RuleOptions {
    /// Sources that stay allowed: network addresses, sorted, no duplicates.
    pub allow_from: Vec<IpNet>,
    /// Count and log what would be dropped; drop nothing.
    pub dry_run: bool,
    /// Emit a rate-limited event per dropped packet.
    pub log: bool,
    /// Judge connections from other containers too (veth hook); without
    /// it they pass (`PASSED_FROM_CONTAINER`). Only veth entries read it.
    pub from_containers: bool,
    /// `--on`/`--to`: where the rule applies. Part of the rule's identity
    /// (like its ports): rules of other scopings never edit each other.
    pub scoping: Scoping,
}

impl RuleOptions {
    /// Normalises the allow-list (host bits cleared, sorted, deduplicated).
    pub fn new(allow_from: impl IntoIterator<Item = IpNet>, dry_run: bool, log: bool) -> Self {
        let mut allow_from: Vec<IpNet> = allow_from.into_iter().map(|n| n.trunc()).collect();
        allow_from.sort();
        allow_from.dedup();
        Self { allow_from, dry_run, log, from_containers: false, scoping: Scoping::default() }
    }

    pub fn with_from_containers(self, from_containers: bool) -> Self {
        Self { from_containers, ..self }
    }

    pub fn with_scoping(self, scoping: Scoping) -> Self {
        Self { scoping, ..self }
    }

    pub fn flags(&self) -> u32 {
        let mut flags = 0;
        if self.dry_run {
            flags |= rule_flag::DRY_RUN;
        }
        if self.log {
            flags |= rule_flag::LOG;
        }
        if !self.allow_from.is_empty() {
            flags |= rule_flag::ALLOW_LIST;
        }
        if self.from_containers {
            flags |= rule_flag::FROM_CONTAINERS;
        }
        flags
    }
}

/// A rule as asked for, before it has an id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RuleSpec {
    pub scope: Scope,
    pub ports: PortSpec,
    pub options: RuleOptions,
    pub target: Target,
}

impl RuleSpec {
    pub fn plain(scope: Scope, ports: PortSpec) -> Self {
        Self { scope, ports, options: RuleOptions::default(), target: Target::default() }
    }
}

/// A rule in the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub id: u32,
    pub scope: Scope,
    pub ports: PortSpec,
    pub options: RuleOptions,
    pub target: Target,
}

impl Rule {
    pub fn spec(&self) -> RuleSpec {
        RuleSpec {
            scope: self.scope,
            ports: self.ports,
            options: self.options.clone(),
            target: self.target.clone(),
        }
    }

    pub fn from_spec(id: u32, spec: RuleSpec) -> Self {
        let RuleSpec { scope, ports, options, target } = spec;
        Rule { id, scope, ports, options, target }
    }

    /// Whether a user made it (a CLI verb or `apply`), not the engine state.
    pub fn is_user(&self) -> bool {
        !self.target.selector.is_derived()
    }

    pub fn to_def(&self) -> RuleDef {
        RuleDef {
            scope: self.scope.raw(),
            protos: self.ports.protos,
            port_lo: self.ports.lo,
            port_hi: self.ports.hi,
            flags: self.options.flags(),
        }
    }

    /// Reads a catalog entry, its allow-list and its `RULE_TARGETS` entry;
    /// `None` for an entry this version cannot interpret (it is then left
    /// alone, never rewritten).
    pub fn from_def(
        id: u32,
        def: &RuleDef,
        allow_from: Vec<IpNet>,
        target: Option<&RuleTarget>,
    ) -> Option<Self> {
        let scope = Scope::from_raw(def.scope)?;
        let valid = def.protos != 0
            && def.protos & !crate::ports::ALL_PROTOS == 0
            && def.flags & !rule_flag::ALL == 0
            && def.port_lo >= 1
            && def.port_lo <= def.port_hi;
        let ports = PortSpec { lo: def.port_lo, hi: def.port_hi, protos: def.protos };
        let options = RuleOptions::new(
            allow_from,
            def.flags & rule_flag::DRY_RUN != 0,
            def.flags & rule_flag::LOG != 0,
        )
        .with_from_containers(def.flags & rule_flag::FROM_CONTAINERS != 0);
        let target = Target::decode(target)?;
        valid.then_some(Rule { id, scope, ports, options, target })
    }
}

/// One change to the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Edit {
    Add(RuleSpec),
    /// The rule with this id now reads like this.
    Update(Rule),
    Remove(u32),
}

/// What a command does to a port spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Block,
    Unblock,
}

/// The edits that block `spec` (among the rules with its target). Empty
/// when it is already blocked so.
pub fn plan_block(rules: &[Rule], spec: &RuleSpec) -> Vec<Edit> {
    let same_range: Vec<&Rule> = rules
        .iter()
        .filter(|r| {
            r.target == spec.target
                && r.scope == spec.scope
                && r.ports.lo == spec.ports.lo
                && r.ports.hi == spec.ports.hi
                && r.options.scoping == spec.options.scoping
        })
        .collect();
    let mut edits = Vec::new();
    // Protocols move from a rule with other options to the new one.
    for rule in
        same_range.iter().filter(|r| r.options != spec.options && r.ports.protos & spec.ports.protos != 0)
    {
        let left = rule.ports.protos & !spec.ports.protos;
        if left == 0 {
            edits.push(Edit::Remove(rule.id));
        } else {
            edits.push(Edit::Update(Rule {
                ports: PortSpec { protos: left, ..rule.ports },
                ..(*rule).clone()
            }));
        }
    }
    match same_range.iter().find(|r| r.options == spec.options) {
        Some(rule) if rule.ports.protos & spec.ports.protos == spec.ports.protos => {}
        Some(rule) => {
            let protos = rule.ports.protos | spec.ports.protos;
            edits.push(Edit::Update(Rule { ports: PortSpec { protos, ..rule.ports }, ..(*rule).clone() }));
        }
        None => edits.push(Edit::Add(spec.clone())),
    }
    edits
}

/// The edits that replace the user rules with `specs` (`apply`): rules
/// identical to a spec stay (with their ids and counters), the others go,
/// the rest is new. Rules the engine state made are left to `derive`.
pub fn plan_replace(rules: &[Rule], specs: &[RuleSpec]) -> Vec<Edit> {
    plan_replace_where(rules, specs, Rule::is_user)
}

/// `plan_replace` over the rules `part` selects. Sets, not scans: 65,535
/// rules against 65,535 specs stay linear.
fn plan_replace_where(rules: &[Rule], specs: &[RuleSpec], part: impl Fn(&Rule) -> bool) -> Vec<Edit> {
    let wanted: std::collections::HashSet<&RuleSpec> = specs.iter().collect();
    let mine: Vec<&Rule> = rules.iter().filter(|r| part(r)).collect();
    let have: std::collections::HashSet<RuleSpec> = mine.iter().map(|r| r.spec()).collect();
    let mut edits: Vec<Edit> =
        mine.iter().filter(|r| !wanted.contains(&r.spec())).map(|r| Edit::Remove(r.id)).collect();
    let mut added = std::collections::HashSet::new();
    // A spec given twice is one rule.
    edits.extend(
        specs.iter().filter(|s| !have.contains(*s) && added.insert(*s)).map(|s| Edit::Add(s.clone())),
    );
    edits
}

/// What the engine state makes of the rules (`translate::Translator`):
/// the rules of containers' own labels, and the dialed rules derived from
/// the rules that cover containers.
pub trait Derive {
    fn own_labels(&self) -> Vec<RuleSpec>;
    fn derived(&self, rules: &[Rule]) -> Vec<RuleSpec>;
}

/// Brings the engine-made rules of `draft` in line with its user rules,
/// after the user edits: with `derive`, the own-label rules, then the
/// derived rules (from the rules as they are then) are replaced by what it
/// computes, keeping the ids of unchanged ones; without, derived rules stay
/// unless their parent is gone (removed, or its id taken by a new rule).
pub fn settle(draft: &mut Draft, derive: Option<&dyn Derive>) -> Result<()> {
    let is_own = |r: &Rule| matches!(r.target.selector, Selector::OwnLabels { .. });
    let is_derived = |r: &Rule| matches!(r.target.selector, Selector::Derived { .. });
    match derive {
        Some(derive) => {
            draft.apply(&plan_replace_where(&draft.rules, &derive.own_labels(), is_own))?;
            let derived = derive.derived(&draft.rules);
            draft.apply(&plan_replace_where(&draft.rules, &derived, is_derived))
        }
        None => {
            let fresh: std::collections::HashSet<u32> = draft.fresh.iter().copied().collect();
            let parents: std::collections::HashSet<u32> =
                draft.rules.iter().filter(|r| !fresh.contains(&r.id)).map(|r| r.id).collect();
            let orphans: Vec<Edit> = draft
                .rules
                .iter()
                .filter(|r| matches!(r.target.selector, Selector::Derived { parent } if !parents.contains(&parent)))
                .map(|r| Edit::Remove(r.id))
                .collect();
            draft.apply(&orphans)
        }
    }
}

/// The edits that open `spec` in `scope` among the rules with `target` and
/// `scoping` (an unscoped unblock leaves scoped rules alone, and the other
/// way round): every overlapping rule is removed, trimmed or split; the
/// pieces keep the rule's options.
pub fn plan_unblock(
    rules: &[Rule],
    target: &Target,
    scope: Scope,
    scoping: &Scoping,
    spec: PortSpec,
) -> Result<Vec<Edit>> {
    let mut edits = Vec::new();
    let mine = |r: &&Rule| {
        r.target == *target && r.scope == scope && r.options.scoping == *scoping && r.ports.overlaps(&spec)
    };
    for rule in rules.iter().filter(mine) {
        let mut pieces = subtract(rule.ports, spec).into_iter();
        match pieces.next() {
            None => edits.push(Edit::Remove(rule.id)),
            Some(first) => {
                edits.push(Edit::Update(Rule { ports: first, ..rule.clone() }));
                edits.extend(pieces.map(|ports| Edit::Add(RuleSpec { ports, ..rule.spec() })));
            }
        }
    }
    if edits.is_empty() {
        let spec = match target.is_plain() {
            true => format!("{scope} {spec}{scoping}"),
            false => format!("{spec}{scoping} for {target}"),
        };
        return Err(Error::NotBlocked { spec });
    }
    Ok(edits)
}

/// A rule set being edited by one command: the rules, and which ids went
/// to new rules. A new rule may take an id freed earlier in the same
/// command; it still starts with zeroed counters, as `fresh` tells.
#[derive(Clone, Debug)]
pub struct Draft {
    pub rules: Vec<Rule>,
    pub fresh: Vec<u32>,
    id_limit: u32,
    /// Ids in use, and the lowest id that may be free: together they keep
    /// adding n rules linear, not quadratic, in n.
    used: std::collections::HashSet<u32>,
    lowest_free: u32,
}

impl Draft {
    /// Starts from `rules`; new ids are below `id_limit` (id 0 means "no
    /// rule").
    pub fn new(rules: Vec<Rule>, id_limit: u32) -> Self {
        let used = rules.iter().map(|r| r.id).collect();
        Self { rules, fresh: Vec::new(), id_limit, used, lowest_free: 1 }
    }

    /// Applies `edits`, giving new rules the lowest free ids; `RulesFull`
    /// when none is left.
    pub fn apply(&mut self, edits: &[Edit]) -> Result<()> {
        // Rules are found by id through an index and removed in one pass at
        // the end, so a command of n edits stays linear in n. The index is
        // made at the first edit that needs it: `block` of n ports applies
        // n batches of adds, which would make it n times.
        let mut index: Option<std::collections::HashMap<u32, usize>> = None;
        let by_id = |rules: &[Rule]| rules.iter().enumerate().map(|(i, r)| (r.id, i)).collect();
        let mut removed = vec![false; self.rules.len()];
        for edit in edits {
            match edit {
                Edit::Add(spec) => {
                    while self.used.contains(&self.lowest_free) {
                        self.lowest_free += 1;
                    }
                    let id = self.lowest_free;
                    if id >= self.id_limit {
                        return Err(Error::RulesFull { capacity: self.id_limit.saturating_sub(1) });
                    }
                    self.used.insert(id);
                    if let Some(index) = index.as_mut() {
                        index.insert(id, self.rules.len());
                    }
                    self.rules.push(Rule::from_spec(id, spec.clone()));
                    removed.push(false);
                    self.fresh.push(id);
                }
                Edit::Update(rule) => {
                    if let Some(&i) = index.get_or_insert_with(|| by_id(&self.rules)).get(&rule.id) {
                        self.rules[i] = rule.clone();
                    }
                }
                Edit::Remove(id) => {
                    if let Some(i) = index.get_or_insert_with(|| by_id(&self.rules)).remove(id) {
                        removed[i] = true;
                    }
                    self.used.remove(id);
                    self.lowest_free = self.lowest_free.min(*id);
                }
            }
        }
        let mut gone = removed.into_iter();
        self.rules.retain(|_| !gone.next().unwrap_or(false));
        self.rules.sort_by_key(|r| r.id);
        Ok(())
    }
}

/// What is left of `rule` once `cut` is opened, lowest ports first.
pub fn subtract(rule: PortSpec, cut: PortSpec) -> Vec<PortSpec> {
    if !rule.overlaps(&cut) {
        return vec![rule];
    }
    let (lo, hi) = (rule.lo.max(cut.lo), rule.hi.min(cut.hi));
    let mut pieces = Vec::new();
    if rule.lo < lo {
        pieces.push(PortSpec { lo: rule.lo, hi: lo - 1, ..rule });
    }
    let kept = rule.protos & !cut.protos;
    if kept != 0 {
        pieces.push(PortSpec { lo, hi, protos: kept });
    }
    if hi < rule.hi {
        pieces.push(PortSpec { lo: hi + 1, hi: rule.hi, ..rule });
    }
    pieces
}

/// Whether the rule compiles into the global port tables (`PORT_RULES`):
/// plain and derived Block rules. Docker rules reach the kernel through
/// their derived rules and veth entries instead.
pub fn in_port_table(rule: &Rule) -> bool {
    rule.target.selector.is_port_table() && rule.target.action == Action::Block
}

/// For one scope and protocol: the rule that owns each port (index = port,
/// `None` = open), among the rules `in_port_table` that are not scoped at
/// that hook (scoped ones are `scoped_owners`). A user rule beats a derived
/// one (the user said what that port does); then the narrowest range wins,
/// then fewer protocols, then the newest.
pub fn port_owners(rules: &[Rule], scope: Scope, proto: u32) -> Vec<Option<&Rule>> {
    owners_among(rules.iter().filter(|r| !r.options.scoping.is_scoped_at(scope)), scope, proto)
}

/// As `port_owners`, scoped rules included: the container-port rules
/// whose container ports the daemon derives host-port rules from (a
/// derived rule keeps the scoping, which XDP judges in full).
pub fn port_owners_scoped_too(rules: &[Rule], scope: Scope, proto: u32) -> Vec<Option<&Rule>> {
    owners_among(rules.iter(), scope, proto)
}

/// For one scope and protocol, per `SCOPED_RULES` key (interface, address):
/// the rule that owns each port there, ranked as in `port_owners`, among
/// the rules scoped at that hook. `resolve` gives interfaces' indexes.
pub fn scoped_owners<'a>(
    rules: &'a [Rule],
    scope: Scope,
    proto: u32,
    resolve: &dyn Fn(&str) -> Option<u32>,
) -> Vec<(ScopeKey, Vec<Option<&'a Rule>>)> {
    let mut by_key: std::collections::BTreeMap<ScopeKey, Vec<&Rule>> = Default::default();
    for rule in rules.iter().filter(|r| r.scope == scope && r.ports.protos & proto::bit(proto) != 0) {
        for key in rule.options.scoping.keys(scope, resolve).unwrap_or_default() {
            by_key.entry(key).or_default().push(rule);
        }
    }
    by_key.into_iter().map(|(key, rules)| (key, owners_among(rules.into_iter(), scope, proto))).collect()
}

/// How strongly a rule owns the ports it covers (the greatest wins): a user
/// rule before a derived one, then the narrowest range, then fewer
/// protocols, then the newest.
pub fn rank(r: &Rule) -> impl Ord {
    (
        r.target.selector == Selector::Ports,
        std::cmp::Reverse(r.ports.port_count()),
        std::cmp::Reverse(r.ports.protos.count_ones()),
        r.id,
    )
}

fn owners_among<'a>(
    rules: impl Iterator<Item = &'a Rule>,
    scope: Scope,
    proto: u32,
) -> Vec<Option<&'a Rule>> {
    let mut ranked: Vec<&Rule> = rules
        .filter(|r| in_port_table(r) && r.scope == scope && r.ports.protos & proto::bit(proto) != 0)
        .collect();
    // Paint the weakest first, so the winner paints last.
    ranked.sort_by_key(|r| rank(r));
    let mut owners = vec![None; 65536];
    for rule in ranked {
        owners[usize::from(rule.ports.lo)..=usize::from(rule.ports.hi)].fill(Some(rule));
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> PortSpec {
        PortSpec::parse(s).unwrap()
    }

    fn rule(id: u32, s: &str) -> Rule {
        Rule::from_spec(id, plain(s))
    }

    fn plain(s: &str) -> RuleSpec {
        RuleSpec::plain(Scope::Dialed, spec(s))
    }

    fn with_options(mut r: Rule, options: &RuleOptions) -> Rule {
        r.options = options.clone();
        r
    }

    fn office() -> RuleOptions {
        RuleOptions::new(["203.0.113.7/24".parse().unwrap()], false, false)
    }

    #[test]
    fn a_draft_reuses_a_freed_id_and_removes_many_rules_at_once() {
        let rules: Vec<Rule> = (1..=50_000).map(|id| rule(id, &format!("{id}/tcp"))).collect();
        let mut draft = Draft::new(rules, 60_000);
        let mut edits: Vec<Edit> = (2..=50_000).map(Edit::Remove).collect();
        edits.push(Edit::Update(rule(1, "1-2/tcp")));
        edits.push(Edit::Remove(1));
        edits.push(Edit::Add(plain("9/udp")));
        edits.push(Edit::Add(plain("10/udp")));
        draft.apply(&edits).unwrap();
        let left: Vec<_> = draft.rules.iter().map(|r| (r.id, r.ports.to_string())).collect();
        assert_eq!(left, [(1, "9/udp".to_string()), (2, "10/udp".to_string())], "freed ids reused, in order");
        assert_eq!(draft.fresh, [1, 2], "both new rules start with zeroed counters");
    }

    #[test]
    fn block_adds_merges_or_does_nothing() {
        let rules = [rule(1, "8080/tcp"), rule(2, "53")];
        assert_eq!(plan_block(&rules, &plain("3306/tcp")), vec![Edit::Add(plain("3306/tcp"))]);
        assert_eq!(plan_block(&rules, &plain("8080/udp")), vec![Edit::Update(rule(1, "8080"))]);
        assert_eq!(plan_block(&rules, &plain("8080/tcp")), vec![]);
        assert_eq!(plan_block(&rules, &plain("53/udp")), vec![]);
        // The same ports in the other scope are a different rule.
        let other = RuleSpec::plain(Scope::Container, spec("8080/tcp"));
        assert_eq!(plan_block(&rules, &other), vec![Edit::Add(other.clone())]);
    }

    #[test]
    fn block_with_other_options_takes_the_protocols_over() {
        let rules = [rule(1, "8080"), rule(2, "3306/tcp")];
        let new = RuleSpec { options: office(), ..plain("8080/tcp") };
        assert_eq!(plan_block(&rules, &new), vec![Edit::Update(rule(1, "8080/udp")), Edit::Add(new.clone())]);
        let new = RuleSpec { options: office(), ..plain("3306/tcp") };
        assert_eq!(plan_block(&rules, &new), vec![Edit::Remove(2), Edit::Add(new.clone())]);
        let same = [with_options(rule(3, "3306/tcp"), &office())];
        assert_eq!(plan_block(&same, &new), vec![], "identical rule");
    }

    #[test]
    fn options_are_normalised() {
        let o = RuleOptions::new(
            ["10.0.0.0/8".parse().unwrap(), "2001:db8::1/32".parse().unwrap(), "10.1.2.3/8".parse().unwrap()],
            true,
            false,
        );
        let shown: Vec<String> = o.allow_from.iter().map(|n| n.to_string()).collect();
        assert_eq!(shown, ["10.0.0.0/8", "2001:db8::/32"]);
        assert_eq!(o.flags(), rule_flag::DRY_RUN | rule_flag::ALLOW_LIST);
    }

    #[test]
    fn replace_keeps_identical_rules_and_their_ids() {
        let rules = [rule(1, "22/tcp"), rule(2, "80/tcp"), with_options(rule(3, "443/tcp"), &office())];
        let specs = [plain("80/tcp"), RuleSpec { options: office(), ..plain("443/tcp") }, plain("53/udp")];
        assert_eq!(plan_replace(&rules, &specs), vec![Edit::Remove(1), Edit::Add(plain("53/udp"))]);
        let all: Vec<RuleSpec> = rules.iter().map(Rule::spec).collect();
        assert_eq!(plan_replace(&rules, &all), vec![], "export | apply changes nothing");
    }

    #[test]
    fn unblock_removes_trims_and_splits_keeping_options() {
        let rules =
            [rule(1, "3306/tcp"), with_options(rule(2, "30000-30010/tcp"), &office()), rule(3, "8080")];
        assert_eq!(
            plan_unblock(&rules, &Target::default(), Scope::Dialed, &Scoping::default(), spec("3306/tcp"))
                .unwrap(),
            vec![Edit::Remove(1)]
        );
        assert_eq!(
            plan_unblock(&rules, &Target::default(), Scope::Dialed, &Scoping::default(), spec("30005/tcp"))
                .unwrap(),
            vec![
                Edit::Update(with_options(rule(2, "30000-30004/tcp"), &office())),
                Edit::Add(RuleSpec { options: office(), ..plain("30006-30010/tcp") })
            ]
        );
        assert_eq!(
            plan_unblock(&rules, &Target::default(), Scope::Dialed, &Scoping::default(), spec("8080/tcp"))
                .unwrap(),
            vec![Edit::Update(rule(3, "8080/udp"))]
        );
    }

    #[test]
    fn unblock_of_an_open_port_is_an_error() {
        let rules = [rule(1, "3306/tcp")];
        let err =
            plan_unblock(&rules, &Target::default(), Scope::Dialed, &Scoping::default(), spec("3306/udp"))
                .unwrap_err();
        assert!(err.to_string().contains("no rule blocks dialed 3306/udp"), "{err}");
        assert!(plan_unblock(
            &rules,
            &Target::default(),
            Scope::Container,
            &Scoping::default(),
            spec("3306/tcp")
        )
        .is_err());
    }

    #[test]
    fn edits_take_the_lowest_free_ids_and_stop_at_the_limit() {
        let mut draft = Draft::new(vec![rule(1, "22/tcp"), rule(3, "80/tcp")], 5);
        draft.apply(&[Edit::Add(plain("443/tcp")), Edit::Remove(1)]).unwrap();
        assert_eq!(draft.rules, vec![rule(2, "443/tcp"), rule(3, "80/tcp")]);
        draft.apply(&[Edit::Add(plain("1/tcp")), Edit::Add(plain("2/tcp"))]).unwrap();
        assert_eq!(draft.rules.iter().map(|r| r.id).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        assert_eq!(draft.fresh, vec![2, 1, 4], "id 1 was freed and taken again: still a new rule");
        let err = draft.apply(&[Edit::Add(plain("9/tcp"))]).unwrap_err();
        assert!(err.to_string().contains("rule table full (4 rules)"), "{err}");
        draft.apply(&[Edit::Update(rule(4, "2-3/tcp"))]).unwrap();
        assert_eq!(draft.rules[3], rule(4, "2-3/tcp"));
    }

    #[test]
    fn subtract_keeps_everything_outside_the_cut() {
        assert_eq!(
            subtract(spec("10-20"), spec("15/tcp")),
            vec![spec("10-14"), spec("15/udp"), spec("16-20")]
        );
        assert_eq!(subtract(spec("10-20/tcp"), spec("1-100")), vec![]);
        assert_eq!(subtract(spec("10-20/tcp"), spec("30/tcp")), vec![spec("10-20/tcp")]);
        assert_eq!(subtract(spec("1-65535/udp"), spec("65535")), vec![spec("1-65534/udp")]);
    }

    #[test]
    fn narrowest_then_single_protocol_then_newest_owns_a_port() {
        let rules = [
            rule(5, "1-65535/tcp"),
            rule(7, "100-200/tcp"),
            rule(6, "150"),
            rule(8, "150/tcp"),
            rule(9, "300/udp"),
            rule(4, "170-270/tcp"),
            rule(10, "100-200/tcp"),
        ];
        let owners: Vec<u32> =
            port_owners(&rules, Scope::Dialed, proto::TCP).iter().map(|o| o.map_or(0, |r| r.id)).collect();
        assert_eq!(owners[0], 0);
        assert_eq!(owners[1], 5);
        assert_eq!(owners[100], 10, "same width: newest");
        assert_eq!(owners[150], 8, "single protocol beats tcp+udp");
        assert_eq!(owners[180], 10);
        assert_eq!(owners[300], 5);
        assert_eq!(owners[65535], 5);
        let udp = port_owners(&rules, Scope::Dialed, proto::UDP);
        assert_eq!(udp.iter().filter(|o| o.is_some()).count(), 2);
        assert!(port_owners(&rules, Scope::Container, proto::TCP).iter().all(Option::is_none));
    }

    #[test]
    fn catalog_round_trip_and_garbage() {
        let r = Rule {
            id: 3,
            scope: Scope::Container,
            ports: spec("30000-30010/udp"),
            options: RuleOptions::new([], true, true).with_from_containers(true),
            target: Target { selector: Selector::Container { name: "db".into() }, action: Action::Block },
        };
        let raw = r.target.encode().unwrap();
        assert_eq!(Rule::from_def(3, &r.to_def(), vec![], raw.as_ref()), Some(r.clone()));
        let damaged = RuleTarget { kind: 77, ..raw.unwrap() };
        assert_eq!(Rule::from_def(3, &r.to_def(), vec![], Some(&damaged)), None, "damaged target");
        let garbage = RuleDef { scope: 9, protos: 1, port_lo: 1, port_hi: 1, flags: 0 };
        assert_eq!(Rule::from_def(1, &garbage, vec![], None), None);
        let reversed = RuleDef { scope: 0, protos: 1, port_lo: 9, port_hi: 1, flags: 0 };
        assert_eq!(Rule::from_def(1, &reversed, vec![], None), None);
        let unknown_flag = RuleDef { scope: 0, protos: 1, port_lo: 1, port_hi: 1, flags: 1 << 9 };
        assert_eq!(Rule::from_def(1, &unknown_flag, vec![], None), None);
    }

    fn container(name: &str) -> Target {
        Target { selector: Selector::Container { name: name.into() }, action: Action::Block }
    }

    fn targeted(id: u32, s: &str, target: &Target) -> Rule {
        Rule { scope: Scope::Container, target: target.clone(), ..rule(id, s) }
    }

    fn derived(id: u32, s: &str, parent: u32) -> Rule {
        Rule {
            target: Target { selector: Selector::Derived { parent }, action: Action::Block },
            ..rule(id, s)
        }
    }

    #[test]
    fn verbs_match_rules_of_the_same_target_only() {
        let db = container("db");
        let rules = [rule(1, "80/tcp"), targeted(2, "80/tcp", &db), derived(3, "8080/tcp", 2)];
        // The plain rule on 80/tcp is another rule than db's.
        let web = RuleSpec { target: container("web"), ..RuleSpec::plain(Scope::Container, spec("80/tcp")) };
        assert_eq!(plan_block(&rules, &web), vec![Edit::Add(web.clone())]);
        let db_udp = RuleSpec { target: db.clone(), ..RuleSpec::plain(Scope::Container, spec("80/udp")) };
        assert_eq!(plan_block(&rules, &db_udp), vec![Edit::Update(targeted(2, "80", &db))]);
        assert_eq!(
            plan_unblock(&rules, &db, Scope::Container, &Scoping::default(), spec("80/tcp")).unwrap(),
            vec![Edit::Remove(2)],
            "the plain rule and the derived one stay"
        );
        let err =
            plan_unblock(&rules, &container("web"), Scope::Container, &Scoping::default(), spec("80/tcp"))
                .unwrap_err();
        assert!(err.to_string().contains("no rule blocks 80/tcp for container web"), "{err}");
        // A plain unblock never touches the derived rule on the same port.
        let err =
            plan_unblock(&rules, &Target::default(), Scope::Dialed, &Scoping::default(), spec("8080/tcp"))
                .unwrap_err();
        assert!(matches!(err, Error::NotBlocked { .. }), "{err}");
        // Split pieces keep the target.
        let wide = [targeted(4, "1-100/tcp", &db)];
        assert_eq!(
            plan_unblock(&wide, &db, Scope::Container, &Scoping::default(), spec("50/tcp")).unwrap(),
            vec![
                Edit::Update(targeted(4, "1-49/tcp", &db)),
                Edit::Add(targeted(0, "51-100/tcp", &db).spec())
            ]
        );
    }

    #[test]
    fn replace_leaves_engine_made_rules_alone() {
        let db = container("db");
        let own =
            Target { selector: Selector::OwnLabels { container: "ab".repeat(32) }, action: Action::Block };
        let rules = [
            rule(1, "22/tcp"),
            targeted(2, "3306/tcp", &db),
            targeted(3, "80/tcp", &own),
            derived(4, "13306/tcp", 2),
        ];
        let specs = [targeted(0, "3306/tcp", &db).spec()];
        assert_eq!(plan_replace(&rules, &specs), vec![Edit::Remove(1)]);
        assert_eq!(plan_replace(&rules, &[]), vec![Edit::Remove(1), Edit::Remove(2)]);
    }

    /// A fake engine: own-label rules as given, and for each Block rule on
    /// container `db` a dialed rule on port 10000 + its first port.
    struct Fake {
        own: Vec<RuleSpec>,
    }

    impl Derive for Fake {
        fn own_labels(&self) -> Vec<RuleSpec> {
            self.own.clone()
        }

        fn derived(&self, rules: &[Rule]) -> Vec<RuleSpec> {
            rules
                .iter()
                .filter(|r| !matches!(r.target.selector, Selector::Ports | Selector::Derived { .. }))
                .map(|r| derived(0, &format!("{}/tcp", 10000 + r.ports.lo), r.id).spec())
                .collect()
        }
    }

    #[test]
    fn settle_keeps_unchanged_derived_rules_and_drops_orphans() {
        let db = container("db");
        let own = Target { selector: Selector::OwnLabels { container: "c1".into() }, action: Action::Block };
        let fake = Fake { own: vec![targeted(0, "53/udp", &own).spec()] };
        let mut draft = Draft::new(vec![rule(1, "22/tcp"), targeted(2, "3306/tcp", &db)], 100);
        settle(&mut draft, Some(&fake)).unwrap();
        assert_eq!(
            draft.rules,
            vec![
                rule(1, "22/tcp"),
                targeted(2, "3306/tcp", &db),
                targeted(3, "53/udp", &own),
                derived(4, "13306/tcp", 2),
                derived(5, "10053/tcp", 3)
            ]
        );
        // Again, unchanged: nothing moves, ids and counters kept.
        let mut again = Draft::new(draft.rules.clone(), 100);
        settle(&mut again, Some(&fake)).unwrap();
        assert_eq!(again.rules, draft.rules);
        assert!(again.fresh.is_empty(), "no rule is new");
        // The parent goes: with the engine, its derived rule goes with it.
        let mut edit = Draft::new(draft.rules.clone(), 100);
        edit.apply(&[Edit::Remove(2)]).unwrap();
        settle(&mut edit, Some(&fake)).unwrap();
        assert_eq!(edit.rules.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 3, 5]);
        // Without the engine too; the others stay as they are.
        let mut edit = Draft::new(draft.rules.clone(), 100);
        edit.apply(&[Edit::Remove(2)]).unwrap();
        settle(&mut edit, None).unwrap();
        assert_eq!(edit.rules.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 3, 5]);
        // A parent whose id a new rule took is gone as well.
        let mut edit = Draft::new(draft.rules.clone(), 100);
        edit.apply(&[Edit::Remove(2), Edit::Add(plain("9/tcp"))]).unwrap();
        settle(&mut edit, None).unwrap();
        assert_eq!(edit.rules.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 2, 3, 5]);
        assert_eq!(edit.rules[1], rule(2, "9/tcp"));
    }

    #[test]
    fn a_user_rule_owns_a_dialed_slot_a_derived_rule_also_covers() {
        let db = container("db");
        let rules = [
            derived(1, "13306/tcp", 9),
            rule(2, "13000-14000/tcp"),
            derived(3, "8080/tcp", 9),
            targeted(9, "3306/tcp", &db),
            Rule {
                target: Target { selector: Selector::Ports, action: Action::Allow },
                ..rule(4, "8080/tcp")
            },
        ];
        let owners = port_owners(&rules, Scope::Dialed, proto::TCP);
        assert_eq!(owners[13306].map(|r| r.id), Some(2), "the user's wider rule beats the derived one");
        assert_eq!(owners[8080].map(|r| r.id), Some(3), "an Allow rule is no port-table rule");
        let container = port_owners(&rules, Scope::Container, proto::TCP);
        assert!(container.iter().all(Option::is_none), "Docker rules reach the kernel through derived rules");
    }

    fn on(r: Rule, names: &[&str], to: &[&str]) -> Rule {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let scoping = Scoping::parse(&strings(names), &strings(to)).unwrap();
        Rule { options: r.options.with_scoping(scoping), ..r }
    }

    #[test]
    fn scoped_rules_are_rules_of_their_own_and_own_ports_per_key() {
        let rules = [rule(1, "8080/tcp"), on(rule(2, "8080/tcp"), &["eth1"], &[])];
        // Blocking the unscoped port again, or the scoped one, changes nothing.
        assert_eq!(plan_block(&rules, &plain("8080/tcp")), vec![]);
        assert_eq!(plan_block(&rules, &rules[1].spec()), vec![]);
        // Another scoping is another rule; the unscoped one keeps its protocols.
        let eth2 = on(rule(0, "8080/tcp"), &["eth2"], &[]).spec();
        assert_eq!(plan_block(&rules, &eth2), vec![Edit::Add(eth2.clone())]);
        // Unblock matches the scoping exactly.
        let none = Scoping::default();
        let scoping = rules[1].options.scoping.clone();
        let t = Target::default();
        assert_eq!(
            plan_unblock(&rules, &t, Scope::Dialed, &none, spec("8080/tcp")).unwrap(),
            [Edit::Remove(1)]
        );
        assert_eq!(
            plan_unblock(&rules, &t, Scope::Dialed, &scoping, spec("8080/tcp")).unwrap(),
            [Edit::Remove(2)]
        );
        let err = plan_unblock(&rules[..1], &t, Scope::Dialed, &scoping, spec("8080/tcp")).unwrap_err();
        assert!(err.to_string().contains("dialed 8080/tcp on eth1"), "{err}");
        // The scoped rule owns no unscoped slot; it owns its key's.
        let owners = port_owners(&rules, Scope::Dialed, proto::TCP);
        assert_eq!(owners[8080].map(|r| r.id), Some(1));
        let resolve = |n: &str| (n == "eth1").then_some(7);
        let scoped = scoped_owners(&rules, Scope::Dialed, proto::TCP, &resolve);
        assert_eq!(scoped.len(), 1);
        assert_eq!(scoped[0].0, (7, [0; 16]));
        assert_eq!(scoped[0].1[8080].map(|r| r.id), Some(2));
        // The bridge judges no `--to`: such a rule is unscoped there.
        let to = [Rule { scope: Scope::Container, ..on(rule(3, "80/tcp"), &[], &["198.18.160.1"]) }];
        assert_eq!(port_owners(&to, Scope::Container, proto::TCP)[80].map(|r| r.id), Some(3));
        assert!(scoped_owners(&to, Scope::Container, proto::TCP, &resolve).is_empty());
        // It judges `--on` alone: a key of its own, and no unscoped slot.
        let on_eth1 = [Rule { scope: Scope::Container, ..on(rule(4, "80/tcp"), &["eth1"], &[]) }];
        assert_eq!(port_owners(&on_eth1, Scope::Container, proto::TCP)[80], None);
        let scoped = scoped_owners(&on_eth1, Scope::Container, proto::TCP, &resolve);
        assert_eq!((scoped[0].0, scoped[0].1[80].map(|r| r.id)), ((7, [0; 16]), Some(4)));
    }
}
