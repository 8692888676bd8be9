//! The rule model: user rules, how block/unblock edit the rule set, and how
//! the rule set becomes kernel port slots. Pure functions, no maps, so every
//! rule decision is unit-tested here; `store` only writes what these return.
//!
//! Semantics:
//! - A rule is (scope, port range, protocols). Rules may overlap; for each
//!   port the narrowest range wins, then the lowest id, so a port's drops are
//!   counted on its most specific rule.
//! - `block` of something already covered by an identical range is a no-op;
//!   `block 8080/udp` onto an existing `8080/tcp` widens that rule.
//! - `unblock` opens exactly the given ports: rules are trimmed or split
//!   around them, never left covering an unblocked port.

use std::fmt;

use dockblock_common::{scope, RuleDef};
use serde::Serialize;

use crate::{
    error::{Error, Result},
    ports::PortSpec,
};

/// Where a rule is judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
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
        f.write_str(match self {
            Scope::Dialed => "dialed",
            Scope::Container => "container",
        })
    }
}

/// A rule in the catalog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub id: u32,
    pub scope: Scope,
    pub ports: PortSpec,
}

impl Rule {
    pub fn to_def(&self) -> RuleDef {
        RuleDef {
            scope: self.scope.raw(),
            protos: self.ports.protos,
            port_lo: self.ports.lo,
            port_hi: self.ports.hi,
            flags: 0,
        }
    }

    /// Reads a catalog entry; `None` for an entry this version cannot
    /// interpret (it is then left alone, never rewritten).
    pub fn from_def(id: u32, def: &RuleDef) -> Option<Self> {
        let scope = Scope::from_raw(def.scope)?;
        let valid = def.protos != 0
            && def.protos & !crate::ports::ALL_PROTOS == 0
            && def.port_lo >= 1
            && def.port_lo <= def.port_hi;
        valid.then_some(Rule {
            id,
            scope,
            ports: PortSpec {
                lo: def.port_lo,
                hi: def.port_hi,
                protos: def.protos,
            },
        })
    }
}

/// What a command does to a port spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Block,
    Unblock,
}

/// One change to the catalog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edit {
    Add(Scope, PortSpec),
    /// Rule `id` now covers these ports.
    Update(u32, PortSpec),
    Remove(u32),
}

/// The edits that block `spec` in `scope`. Empty when it is already blocked.
pub fn plan_block(rules: &[Rule], scope: Scope, spec: PortSpec) -> Vec<Edit> {
    let same_range = rules
        .iter()
        .find(|r| r.scope == scope && r.ports.lo == spec.lo && r.ports.hi == spec.hi);
    match same_range {
        Some(rule) if rule.ports.protos & spec.protos == spec.protos => vec![],
        Some(rule) => vec![Edit::Update(
            rule.id,
            PortSpec {
                protos: rule.ports.protos | spec.protos,
                ..spec
            },
        )],
        None => vec![Edit::Add(scope, spec)],
    }
}

/// The edits that open `spec` in `scope`: every overlapping rule is removed,
/// trimmed or split.
pub fn plan_unblock(rules: &[Rule], scope: Scope, spec: PortSpec) -> Result<Vec<Edit>> {
    let mut edits = Vec::new();
    for rule in rules
        .iter()
        .filter(|r| r.scope == scope && r.ports.overlaps(&spec))
    {
        let mut pieces = subtract(rule.ports, spec).into_iter();
        match pieces.next() {
            None => edits.push(Edit::Remove(rule.id)),
            Some(first) => {
                edits.push(Edit::Update(rule.id, first));
                edits.extend(pieces.map(|piece| Edit::Add(scope, piece)));
            }
        }
    }
    if edits.is_empty() {
        return Err(Error::NotBlocked {
            spec: format!("{scope} {spec}"),
        });
    }
    Ok(edits)
}

/// The rule set after `edits`. New rules get the lowest free ids below
/// `id_limit` (id 0 means "no rule"); `RulesFull` when there are none left.
pub fn apply_edits(rules: &[Rule], edits: &[Edit], id_limit: u32) -> Result<Vec<Rule>> {
    let mut after = rules.to_vec();
    for edit in edits {
        match *edit {
            Edit::Add(scope, ports) => {
                let id = (1..id_limit)
                    .find(|id| !after.iter().any(|r| r.id == *id))
                    .ok_or(Error::RulesFull {
                        capacity: id_limit.saturating_sub(1),
                    })?;
                after.push(Rule { id, scope, ports });
            }
            Edit::Update(id, ports) => {
                if let Some(rule) = after.iter_mut().find(|r| r.id == id) {
                    rule.ports = ports;
                }
            }
            Edit::Remove(id) => after.retain(|r| r.id != id),
        }
    }
    after.sort_by_key(|r| r.id);
    Ok(after)
}

/// What is left of `rule` once `cut` is opened, lowest ports first.
pub fn subtract(rule: PortSpec, cut: PortSpec) -> Vec<PortSpec> {
    if !rule.overlaps(&cut) {
        return vec![rule];
    }
    let (lo, hi) = (rule.lo.max(cut.lo), rule.hi.min(cut.hi));
    let mut pieces = Vec::new();
    if rule.lo < lo {
        pieces.push(PortSpec {
            lo: rule.lo,
            hi: lo - 1,
            ..rule
        });
    }
    let kept = rule.protos & !cut.protos;
    if kept != 0 {
        pieces.push(PortSpec {
            lo,
            hi,
            protos: kept,
        });
    }
    if hi < rule.hi {
        pieces.push(PortSpec {
            lo: hi + 1,
            hi: rule.hi,
            ..rule
        });
    }
    pieces
}

/// For one scope and protocol: the rule id that owns each port (index =
/// port, 0 = none). Narrowest range wins, then the lowest id.
pub fn port_owners(rules: &[Rule], scope: Scope, proto: u32) -> Vec<u32> {
    let mut ranked: Vec<&Rule> = rules
        .iter()
        .filter(|r| r.scope == scope && r.ports.protos & dockblock_common::proto::bit(proto) != 0)
        .collect();
    // Paint widest and highest id first, so the winner paints last.
    ranked.sort_by_key(|r| {
        (
            std::cmp::Reverse(r.ports.port_count()),
            std::cmp::Reverse(r.id),
        )
    });
    let mut owners = vec![0; 65536];
    for rule in ranked {
        owners[usize::from(rule.ports.lo)..=usize::from(rule.ports.hi)].fill(rule.id);
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;
    use dockblock_common::proto;

    fn spec(s: &str) -> PortSpec {
        PortSpec::parse(s).unwrap()
    }

    fn rule(id: u32, s: &str) -> Rule {
        Rule {
            id,
            scope: Scope::Dialed,
            ports: spec(s),
        }
    }

    #[test]
    fn block_adds_merges_or_does_nothing() {
        let rules = [rule(1, "8080/tcp"), rule(2, "53")];
        assert_eq!(
            plan_block(&rules, Scope::Dialed, spec("3306/tcp")),
            vec![Edit::Add(Scope::Dialed, spec("3306/tcp"))]
        );
        assert_eq!(
            plan_block(&rules, Scope::Dialed, spec("8080/udp")),
            vec![Edit::Update(1, spec("8080"))]
        );
        assert_eq!(plan_block(&rules, Scope::Dialed, spec("8080/tcp")), vec![]);
        assert_eq!(plan_block(&rules, Scope::Dialed, spec("53/udp")), vec![]);
        // The same ports in the other scope are a different rule.
        assert_eq!(
            plan_block(&rules, Scope::Container, spec("8080/tcp")),
            vec![Edit::Add(Scope::Container, spec("8080/tcp"))]
        );
    }

    #[test]
    fn unblock_removes_trims_and_splits() {
        let rules = [
            rule(1, "3306/tcp"),
            rule(2, "30000-30010/tcp"),
            rule(3, "8080"),
        ];
        assert_eq!(
            plan_unblock(&rules, Scope::Dialed, spec("3306/tcp")).unwrap(),
            vec![Edit::Remove(1)]
        );
        assert_eq!(
            plan_unblock(&rules, Scope::Dialed, spec("30005/tcp")).unwrap(),
            vec![
                Edit::Update(2, spec("30000-30004/tcp")),
                Edit::Add(Scope::Dialed, spec("30006-30010/tcp"))
            ]
        );
        assert_eq!(
            plan_unblock(&rules, Scope::Dialed, spec("8080/tcp")).unwrap(),
            vec![Edit::Update(3, spec("8080/udp"))]
        );
        assert_eq!(
            plan_unblock(&rules, Scope::Dialed, spec("29000-30000")).unwrap(),
            vec![Edit::Update(2, spec("30001-30010/tcp"))]
        );
    }

    #[test]
    fn unblock_of_an_open_port_is_an_error() {
        let rules = [rule(1, "3306/tcp")];
        let err = plan_unblock(&rules, Scope::Dialed, spec("3306/udp")).unwrap_err();
        assert!(
            err.to_string().contains("no rule blocks dialed 3306/udp"),
            "{err}"
        );
        assert!(plan_unblock(&rules, Scope::Container, spec("3306/tcp")).is_err());
    }

    #[test]
    fn edits_take_the_lowest_free_ids_and_stop_at_the_limit() {
        let rules = [rule(1, "22/tcp"), rule(3, "80/tcp")];
        let after = apply_edits(
            &rules,
            &[Edit::Add(Scope::Dialed, spec("443/tcp")), Edit::Remove(1)],
            5,
        )
        .unwrap();
        assert_eq!(after, vec![rule(2, "443/tcp"), rule(3, "80/tcp")]);
        let after = apply_edits(
            &after,
            &[
                Edit::Add(Scope::Dialed, spec("1/tcp")),
                Edit::Add(Scope::Dialed, spec("2/tcp")),
            ],
            5,
        )
        .unwrap();
        assert_eq!(
            after.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        let err = apply_edits(&after, &[Edit::Add(Scope::Dialed, spec("9/tcp"))], 5).unwrap_err();
        assert!(
            err.to_string().contains("rule table full (4 rules)"),
            "{err}"
        );
        let after = apply_edits(&after, &[Edit::Update(4, spec("2-3/tcp"))], 5).unwrap();
        assert_eq!(after[3], rule(4, "2-3/tcp"));
    }

    #[test]
    fn subtract_keeps_everything_outside_the_cut() {
        assert_eq!(
            subtract(spec("10-20"), spec("15/tcp")),
            vec![spec("10-14"), spec("15/udp"), spec("16-20")]
        );
        assert_eq!(subtract(spec("10-20/tcp"), spec("1-100")), vec![]);
        assert_eq!(
            subtract(spec("10-20/tcp"), spec("30/tcp")),
            vec![spec("10-20/tcp")]
        );
        assert_eq!(
            subtract(spec("1-65535/udp"), spec("65535")),
            vec![spec("1-65534/udp")]
        );
    }

    #[test]
    fn narrowest_rule_then_lowest_id_owns_a_port() {
        let rules = [
            rule(5, "1-65535/tcp"),
            rule(7, "100-200/tcp"),
            rule(6, "150/tcp"),
            rule(8, "150/tcp"),
            rule(9, "300/udp"),
        ];
        let owners = port_owners(&rules, Scope::Dialed, proto::TCP);
        assert_eq!(owners[0], 0);
        assert_eq!(owners[1], 5);
        assert_eq!(owners[100], 7);
        assert_eq!(owners[150], 6);
        assert_eq!(owners[300], 5);
        assert_eq!(owners[65535], 5);
        let udp = port_owners(&rules, Scope::Dialed, proto::UDP);
        assert_eq!(udp.iter().filter(|o| **o != 0).count(), 1);
        assert!(port_owners(&rules, Scope::Container, proto::TCP)
            .iter()
            .all(|o| *o == 0));
    }

    #[test]
    fn catalog_round_trip_and_garbage() {
        let r = Rule {
            id: 3,
            scope: Scope::Container,
            ports: spec("30000-30010/udp"),
        };
        assert_eq!(Rule::from_def(3, &r.to_def()), Some(r));
        let garbage = RuleDef {
            scope: 9,
            protos: 1,
            port_lo: 1,
            port_hi: 1,
            flags: 0,
        };
        assert_eq!(Rule::from_def(1, &garbage), None);
        let reversed = RuleDef {
            scope: 0,
            protos: 1,
            port_lo: 9,
            port_hi: 1,
            flags: 0,
        };
        assert_eq!(Rule::from_def(1, &reversed), None);
    }
}
