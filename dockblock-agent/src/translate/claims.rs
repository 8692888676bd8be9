//! Who covers what, and who claims a key when several rules could (see
//! the parent module's comment for the order).
//!
//! Scoping at the veth (`--on`, `--to`): a Docker rule scoped only with
//! `--on` is judged there by the packet's ingress interface, so it claims
//! the keys of its interfaces ([`Roles::on_claims`]), which outrank the
//! veth's other keys ([`Roles::container_claims`]) for packets from those
//! interfaces, as `--on` outranks an unscoped rule at XDP. A rule with
//! `--to` cannot be judged after DNAT: it claims its keys for every
//! interface (fail closed), but ranks below every rule the veth can judge
//! (it outranks nothing: where it would decide at XDP is unknown here).

use std::collections::BTreeMap;

use dockblock_common::{proto, VETH_ANY_PORT};

use crate::{
    docker::snapshot::{Container, PortBinding},
    ports::PortSpec,
    rules::{port_owners, port_owners_scoped_too, Rule, Scope},
    target::{Action, Selector},
};

/// Whether `selector` names container `c`: the Docker selectors, and the
/// policy (every container with published ports). Plain and derived rules
/// name no container, they cover bindings ([`covers_binding`]).
pub fn selects(selector: &Selector, c: &Container) -> bool {
    match selector {
        Selector::Container { name } => c.name == *name,
        Selector::Label { key, value } => {
            c.labels.get(key).is_some_and(|v| value.as_ref().is_none_or(|want| want == v))
        }
        Selector::Compose { project, service } => {
            c.compose_project() == Some(project.as_str())
                && service.as_deref().is_none_or(|s| c.compose_service() == Some(s))
        }
        Selector::OwnLabels { container } => c.id == *container,
        Selector::PublishedPolicy => !c.ports.is_empty(),
        Selector::Ports | Selector::Derived { .. } => false,
    }
}

/// Whether `rule` covers binding `b` of `c`: its ports hold the binding's
/// host port (dialed scope) or container port (container scope), and it
/// names `c` (plain and derived rules hold for every container).
pub fn covers_binding(rule: &Rule, c: &Container, b: &PortBinding) -> bool {
    let port = match rule.scope {
        Scope::Dialed => b.host_port,
        Scope::Container => b.container_port,
    };
    let named = match &rule.target.selector {
        Selector::Ports | Selector::Derived { .. } => true,
        selector => selects(selector, c),
    };
    named && holds(&rule.ports, port, b.proto)
}

fn holds(ports: &PortSpec, port: u16, proto: u32) -> bool {
    proto < proto::COUNT && ports.protos & proto::bit(proto) != 0 && ports.ports().contains(&port)
}

/// How a rule takes part, in claim order (see the module comment).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Role {
    /// A Block rule naming containers (name, label, compose, own labels).
    Targeted,
    /// A plain Block rule on dialed ports.
    Dialed,
    /// A plain Block rule on container ports.
    Container,
    /// `policy published deny`.
    Policy,
    Allow,
    /// Made by this module: an output, never an input.
    Derived,
}

pub(crate) fn role(rule: &Rule) -> Role {
    match (&rule.target.selector, rule.target.action) {
        (Selector::Derived { .. }, _) => Role::Derived,
        (_, Action::Allow) => Role::Allow,
        (Selector::PublishedPolicy, Action::Block) => Role::Policy,
        (Selector::Ports, Action::Block) => match rule.scope {
            Scope::Dialed => Role::Dialed,
            Scope::Container => Role::Container,
        },
        (_, Action::Block) => Role::Targeted,
    }
}

/// A rule's claim on a key; the smaller claim wins.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Claim<'r> {
    pub role: Role,
    pub rule: &'r Rule,
    /// A veth claim of a rule with `--to`: it ranks after every other (the
    /// veth cannot judge it: it closes everywhere but outranks nothing).
    /// XDP judges `--to`, so dialed-slot claims never set it.
    pub late: bool,
}

impl<'r> Claim<'r> {
    pub fn new(role: Role, rule: &'r Rule) -> Self {
        Claim { role, rule, late: false }
    }

    fn rank(&self) -> (bool, Role, u32) {
        (self.late, self.role, self.rule.id)
    }

    /// The value of a veth table entry for this claim.
    pub fn port_rule(&self) -> dockblock_common::PortRule {
        dockblock_common::PortRule { rule_id: self.rule.id, flags: self.rule.options.flags() }
    }
}

/// Whether the veth judges `rule` by its ingress interface: scoped with
/// `--on` only (a rule with `--to` cannot be judged there).
pub(crate) fn on_only(rule: &Rule) -> bool {
    !rule.options.scoping.on.is_empty() && rule.options.scoping.to.is_empty()
}

/// What decides at the veth for a packet from an interface with `on`
/// (the best `--on` claim there) over `base` (the veth's other claim): the
/// `--on` claim, except a dry-run one over a base that is not dry-run (a
/// dry-run scoped rule never opens what another rule closes, as at XDP).
pub(crate) fn decide<'r>(on: Option<Claim<'r>>, base: Option<Claim<'r>>) -> Option<Claim<'r>> {
    match (on, base) {
        (Some(on), Some(base)) if on.rule.options.dry_run && !base.rule.options.dry_run => Some(base),
        (Some(on), _) => Some(on),
        (None, base) => base,
    }
}

impl PartialEq for Claim<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.rank() == other.rank()
    }
}

impl Eq for Claim<'_> {}

impl PartialOrd for Claim<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Claim<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.rank().cmp(&other.rank())
    }
}

/// What the published-ports policy does to one binding.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Policy<'r> {
    Closed(&'r Rule),
    /// An Allow rule opens it to its allow-list.
    OpenTo {
        allow: &'r Rule,
        policy: &'r Rule,
    },
    /// An Allow rule without an allow-list opens it.
    Open {
        allow: &'r Rule,
        policy: &'r Rule,
    },
}

/// The rules sorted by role once per translation.
pub(crate) struct Roles<'r> {
    targeted: Vec<&'r Rule>,
    allows: Vec<&'r Rule>,
    policy: Option<&'r Rule>,
    /// `PORT_RULES` owners among plain rules, by protocol then port (empty
    /// when no plain rule has that scope).
    dialed: Vec<Vec<Option<&'r Rule>>>,
    container: Vec<Vec<Option<&'r Rule>>>,
    /// Host ports the policy never closes (config `failsafe`).
    failsafe: &'r [PortSpec],
}

/// `rules::port_owners` or one like it.
type OwnersFn = for<'a> fn(&'a [Rule], Scope, u32) -> Vec<Option<&'a Rule>>;

impl<'r> Roles<'r> {
    pub fn new(rules: &'r [Rule]) -> Self {
        let mut sorted: Vec<&Rule> = rules.iter().collect();
        sorted.sort_by_key(|r| r.id);
        let of =
            |want: Role| -> Vec<&'r Rule> { sorted.iter().copied().filter(|r| role(r) == want).collect() };
        let owners = |want: Role, scope: Scope, table: OwnersFn| -> Vec<Vec<Option<&'r Rule>>> {
            if !rules.iter().any(|r| role(r) == want) {
                return Vec::new();
            }
            // A plain rule beats a derived one there, so an owner that is
            // not plain means no plain rule holds the port.
            (0..proto::COUNT)
                .map(|p| {
                    let mut owners = table(rules, scope, p);
                    owners.iter_mut().for_each(|o| *o = o.filter(|r| role(r) == want));
                    owners
                })
                .collect()
        };
        Roles {
            targeted: of(Role::Targeted),
            allows: of(Role::Allow),
            policy: of(Role::Policy).first().copied(),
            // A scoped dialed rule on a host port leaves it to derivation; a
            // scoped container-port rule derives its host ports' rules
            // with its scoping (the bridge judges only `--on`, XDP all).
            dialed: owners(Role::Dialed, Scope::Dialed, port_owners),
            container: owners(Role::Container, Scope::Container, port_owners_scoped_too),
            failsafe: &[],
        }
    }

    /// The policy leaves bindings on `failsafe` host ports open (and, at
    /// the veth, their container ports).
    pub fn with_failsafe(self, failsafe: &'r [PortSpec]) -> Self {
        Roles { failsafe, ..self }
    }

    fn failsafe_binding(&self, b: &PortBinding) -> bool {
        b.host_port != 0 && self.failsafe.iter().any(|f| holds(f, b.host_port, b.proto))
    }

    /// The plain dialed rule that owns host port `port`.
    pub fn dialed_owner(&self, port: u16, proto: u32) -> Option<&'r Rule> {
        self.dialed.get(proto as usize).and_then(|o| o[usize::from(port)])
    }

    /// The plain container-port rule that owns container port `port`.
    pub fn container_owner(&self, port: u16, proto: u32) -> Option<&'r Rule> {
        self.container.get(proto as usize).and_then(|o| o[usize::from(port)])
    }

    /// `None` without a policy rule.
    pub fn policy(&self, c: &Container, b: &PortBinding) -> Option<Policy<'r>> {
        let policy = self.policy?;
        if self.failsafe_binding(b) {
            return None;
        }
        let mut allows = self.allows.iter().copied().filter(|a| covers_binding(a, c, b));
        let first = allows.next();
        Some(match first {
            None => Policy::Closed(policy),
            // One Allow rule that opens fully is enough.
            Some(a) => match std::iter::once(a).chain(allows).find(|a| a.options.allow_from.is_empty()) {
                Some(allow) => Policy::Open { allow, policy },
                None => Policy::OpenTo { allow: a, policy },
            },
        })
    }

    fn policy_claim(&self, c: &Container, b: &PortBinding) -> Option<Claim<'r>> {
        match self.policy(c, b)? {
            Policy::Closed(rule) => Some(Claim::new(Role::Policy, rule)),
            Policy::OpenTo { allow, .. } => Some(Claim::new(Role::Allow, allow)),
            Policy::Open { .. } => None,
        }
    }

    /// The rule a binding's host port derives from; `None` when open, or
    /// owned by a plain dialed rule.
    pub fn dialed_slot(&self, c: &Container, b: &PortBinding) -> Option<Claim<'r>> {
        if self.dialed_owner(b.host_port, b.proto).is_some() {
            return None;
        }
        let targeted = self.targeted.iter().find(|r| covers_binding(r, c, b));
        let claims = [
            targeted.map(|&rule| Claim::new(Role::Targeted, rule)),
            self.container_owner(b.container_port, b.proto).map(|rule| Claim::new(Role::Container, rule)),
            self.policy_claim(c, b),
        ];
        claims.into_iter().flatten().min()
    }

    /// The veth keys `(proto, container port or VETH_ANY_PORT)` of `c`
    /// and who holds each, for packets from interfaces no `--on` claim
    /// names (and beneath those claims). A port whose protocol's wildcard
    /// has a better claim is left to the wildcard (the kernel reads the
    /// port first).
    pub fn container_claims(&self, c: &Container) -> BTreeMap<(u32, u32), Claim<'r>> {
        let mut keys = self.targeted_claims(c, |r| !on_only(r));
        let mut claim = |proto: u32, port: u32, claim: Claim<'r>| hold(&mut keys, (proto, port), claim);
        // A container port behind a failsafe host port: the policy leaves
        // it open even when another host port maps to it too.
        let failsafe: Vec<(u32, u16)> = c
            .ports
            .iter()
            .filter(|b| self.failsafe_binding(b))
            .map(|b| (b.proto, b.container_port))
            .collect();
        for b in c.ports.iter().filter(|b| b.proto < proto::COUNT && b.container_port != 0) {
            let port = u32::from(b.container_port);
            if let Some(rule) = self.dialed_owner(b.host_port, b.proto).filter(|_| b.host_port != 0) {
                claim(b.proto, port, Claim::new(Role::Dialed, rule));
            }
            if failsafe.contains(&(b.proto, b.container_port)) {
                continue;
            }
            if let Some(policy) = self.policy_claim(c, b) {
                claim(b.proto, port, policy);
            }
        }
        left_to_wildcards(&mut keys);
        keys
    }

    /// The `--on` claims on the veth keys of `c`, per interface name: the
    /// Docker rules scoped only with `--on` that select `c`, each on the
    /// interfaces it names. A packet from one of them is decided by
    /// [`Roles::veth_claim_on`].
    pub fn on_claims(&self, c: &Container) -> BTreeMap<&'r str, BTreeMap<(u32, u32), Claim<'r>>> {
        let mut names: Vec<&'r str> = self
            .targeted
            .iter()
            .filter(|r| on_only(r) && selects(&r.target.selector, c))
            .flat_map(|r| r.options.scoping.on.iter().map(String::as_str))
            .collect();
        names.sort_unstable();
        names.dedup();
        names
            .into_iter()
            .map(|name| {
                let mut keys =
                    self.targeted_claims(c, |r| on_only(r) && r.options.scoping.on.iter().any(|n| n == name));
                left_to_wildcards(&mut keys);
                (name, keys)
            })
            .collect()
    }

    /// The keys Block rules naming `c` (those `pick` takes) claim.
    fn targeted_claims(
        &self,
        c: &Container,
        pick: impl Fn(&Rule) -> bool,
    ) -> BTreeMap<(u32, u32), Claim<'r>> {
        let mut keys: BTreeMap<(u32, u32), Claim<'r>> = BTreeMap::new();
        let mut claim = |proto: u32, port: u32, claim: Claim<'r>| hold(&mut keys, (proto, port), claim);
        for &rule in self.targeted.iter().filter(|r| pick(r) && selects(&r.target.selector, c)) {
            let claimed =
                Claim { late: !rule.options.scoping.to.is_empty(), ..Claim::new(Role::Targeted, rule) };
            match rule.scope {
                Scope::Container => {
                    for proto in rule.ports.protos() {
                        if rule.ports.lo == 1 && rule.ports.hi == u16::MAX {
                            claim(proto, VETH_ANY_PORT, claimed);
                        } else {
                            rule.ports.ports().for_each(|port| claim(proto, u32::from(port), claimed));
                        }
                    }
                }
                Scope::Dialed => {
                    for b in c.ports.iter().filter(|b| covers_binding(rule, c, b)) {
                        claim(b.proto, u32::from(b.container_port), claimed);
                    }
                }
            }
        }
        keys
    }

    /// The claim that decides at the veth for a packet to `port` that came
    /// in on an interface with the `--on` claims `on` (see [`decide`]).
    pub fn veth_claim_on(
        base: &BTreeMap<(u32, u32), Claim<'r>>,
        on: &BTreeMap<(u32, u32), Claim<'r>>,
        port: u16,
        proto: u32,
    ) -> Option<Claim<'r>> {
        decide(Self::veth_claim(on, port, proto), Self::veth_claim(base, port, proto))
    }

    /// The claim the kernel finds for a packet to `port` of `c` at its
    /// veth (from an interface no `--on` claim names): the port's entry,
    /// else its protocol's wildcard.
    pub fn veth_claim(keys: &BTreeMap<(u32, u32), Claim<'r>>, port: u16, proto: u32) -> Option<Claim<'r>> {
        keys.get(&(proto, u32::from(port))).or_else(|| keys.get(&(proto, VETH_ANY_PORT))).copied()
    }
}

/// `claim` on `key`, unless a better claim holds it.
fn hold<'r>(keys: &mut BTreeMap<(u32, u32), Claim<'r>>, key: (u32, u32), claim: Claim<'r>) {
    let held = keys.entry(key).or_insert(claim);
    *held = (*held).min(claim);
}

/// Drops the ports whose protocol's wildcard has a better claim (the
/// kernel reads the port first).
fn left_to_wildcards(keys: &mut BTreeMap<(u32, u32), Claim<'_>>) {
    let wildcards: Vec<(u32, Claim)> =
        keys.iter().filter(|(k, _)| k.1 == VETH_ANY_PORT).map(|(k, c)| (k.0, *c)).collect();
    keys.retain(|&(proto, port), held| {
        port == VETH_ANY_PORT || wildcards.iter().all(|(p, wild)| *p != proto || *held < *wild)
    });
}
