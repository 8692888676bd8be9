//! Rules + the engine's state -> what the kernel needs, as pure functions
//! (spec/daemon.md section 5): the rules of containers' own labels, dialed
//! rules derived on the host ports that lead to covered containers (so
//! floods die in XDP), and per-veth plans (`VETHS` state, `VETH_RULES`,
//! and `VETH_SCOPED_RULES` for Docker rules with `--on`).
//!
//! Who claims a container port, or a host port's dialed slot, when several
//! rules could: a Block rule naming the container (lowest id), then a plain
//! dialed rule on a host port mapped to it (veth) or the plain
//! container-port rule owning it (dialed slot), then the published-ports
//! policy, then an Allow rule with an allow-list. So explicit blocks beat
//! Allow rules, and the policy beats an Allow rule when two host ports map
//! to one container port (after DNAT the veth cannot tell them apart: fail
//! closed). At the veth, `--on` claims outrank these for packets from their
//! interfaces, and a rule with `--to` ranks after all of them (see
//! `claims`).

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use dockblock_common::{proto, PortRule, VethRuleKey, VethScopedKey, VethState, VETH_ANY_PORT};
use serde::Serialize;

use crate::{
    docker::snapshot::{Container, PortBinding, Snapshot, VethOwner},
    labels,
    ports::{proto_name, PortSpec},
    rules::{Rule, RuleOptions, RuleSpec, Scope},
    store::Derive,
    target::{Action, Selector, Target},
};
pub use crate::{labels::Warning, vethtable::VethPlan};

mod claims;
pub use claims::{covers_binding, selects};
pub(crate) use claims::{role, Claim, Policy, Role, Roles};

/// The engine's state as `store::RuleStore::commit_with` asks for it.
pub struct Translator<'a> {
    pub snapshot: &'a Snapshot,
    pub veths: &'a [VethOwner],
    /// Host ports the policy leaves open (config `failsafe`).
    pub failsafe: &'a [PortSpec],
}

impl Derive for Translator<'_> {
    fn own_labels(&self) -> Vec<RuleSpec> {
        own_label_rules(self.snapshot).0
    }

    fn derived(&self, rules: &[Rule]) -> Vec<RuleSpec> {
        derived_rules_except(rules, self.snapshot, self.failsafe)
    }
}

/// The rules of every container's `dockblock.*` labels (running or not:
/// the rule is in force before the container's first packet), ordered by
/// container id; a container with a bad label gives warnings, no rule.
pub fn own_label_rules(s: &Snapshot) -> (Vec<RuleSpec>, Vec<Warning>) {
    let mut containers: Vec<&Container> = s.containers.iter().collect();
    containers.sort_by(|a, b| a.id.cmp(&b.id));
    let (mut specs, mut warnings) = (Vec::new(), Vec::new());
    for c in containers {
        match labels::parse(c) {
            Ok(None) => {}
            Ok(Some(rule)) => {
                let options = RuleOptions::new(rule.allow_from, false, false)
                    .with_from_containers(rule.from_containers);
                let target = Target {
                    selector: Selector::OwnLabels { container: c.id.clone() },
                    action: Action::Block,
                };
                specs.extend(rule.ports.into_iter().map(|ports| RuleSpec {
                    scope: Scope::Container,
                    ports,
                    options: options.clone(),
                    target: target.clone(),
                }));
            }
            Err(w) => warnings.extend(w),
        }
    }
    (specs, warnings)
}

/// Dialed rules on the host ports of covered bindings (`host_port != 0`,
/// host address ignored: the port closes on every address), one per run of
/// consecutive host ports with one parent and protocols, ordered by port. Host ports a plain dialed rule owns
/// get none: that rule is in `PORT_RULES` already and would win.
pub fn derived_rules(rules: &[Rule], s: &Snapshot) -> Vec<RuleSpec> {
    derived_rules_except(rules, s, &[])
}

/// [`derived_rules`], the policy leaving `failsafe` host ports open.
pub fn derived_rules_except(rules: &[Rule], s: &Snapshot, failsafe: &[PortSpec]) -> Vec<RuleSpec> {
    let roles = Roles::new(rules).with_failsafe(failsafe);
    let mut slots: BTreeMap<(u16, u32), Claim> = BTreeMap::new();
    for c in &s.containers {
        for b in c.ports.iter().filter(|b| b.host_port != 0 && b.proto < proto::COUNT) {
            if let Some(claim) = roles.dialed_slot(c, b) {
                let slot = slots.entry((b.host_port, b.proto)).or_insert(claim);
                *slot = (*slot).min(claim);
            }
        }
    }
    let mut ports: Vec<RuleSpec> = Vec::new();
    for ((port, proto), claim) in slots {
        // Slots are sorted by port, then protocol: tcp and udp of one port
        // with one parent are neighbours and become one rule.
        match ports.last_mut() {
            Some(last) if last.ports.lo == port && derived_parent(last) == Some(claim.rule.id) => {
                last.ports.protos |= proto::bit(proto)
            }
            _ => ports.push(derived_spec(claim.rule, port, proto)),
        }
    }
    // Consecutive ports of one parent and protocols become one range
    // (`-p 30000-30999:...` is one rule, not a thousand).
    let mut specs: Vec<RuleSpec> = Vec::new();
    let mut open: HashMap<(Option<u32>, u32), usize> = HashMap::new();
    for spec in ports {
        let key = (derived_parent(&spec), spec.ports.protos);
        match open.get(&key) {
            Some(&i) if u32::from(specs[i].ports.hi) + 1 == u32::from(spec.ports.lo) => {
                specs[i].ports.hi = spec.ports.lo
            }
            _ => {
                open.insert(key, specs.len());
                specs.push(spec);
            }
        }
    }
    specs
}

fn derived_spec(parent: &Rule, port: u16, proto: u32) -> RuleSpec {
    let o = &parent.options;
    RuleSpec {
        scope: Scope::Dialed,
        ports: PortSpec { lo: port, hi: port, protos: proto::bit(proto) },
        // The host port is judged at XDP, which sees both `--on` and `--to`.
        options: RuleOptions::new(o.allow_from.iter().copied(), o.dry_run, o.log)
            .with_scoping(o.scoping.clone()),
        target: Target { selector: Selector::Derived { parent: parent.id }, action: Action::Block },
    }
}

fn derived_parent(spec: &RuleSpec) -> Option<u32> {
    match spec.target.selector {
        Selector::Derived { parent } => Some(parent),
        _ => None,
    }
}

/// A plan for each veth whose container is in the snapshot and running,
/// ordered by ifindex. Other veths get none and stay unreviewed (closed).
pub fn veth_plans(rules: &[Rule], s: &Snapshot, veths: &[VethOwner]) -> Vec<VethPlan> {
    veth_plans_except(rules, s, veths, &[])
}

/// [`veth_plans`], the policy leaving the container ports behind
/// `failsafe` host ports open; `--on` interfaces resolved now.
pub fn veth_plans_except(
    rules: &[Rule],
    s: &Snapshot,
    veths: &[VethOwner],
    failsafe: &[PortSpec],
) -> Vec<VethPlan> {
    veth_plans_with(rules, s, veths, failsafe, &crate::scoping::ifindex)
}

/// [`veth_plans_except`] with `--on` interfaces resolved by `resolve` (a
/// name no interface has gets no entry: no packet comes in on it).
pub fn veth_plans_with(
    rules: &[Rule],
    s: &Snapshot,
    veths: &[VethOwner],
    failsafe: &[PortSpec],
    resolve: &dyn Fn(&str) -> Option<u32>,
) -> Vec<VethPlan> {
    let roles = Roles::new(rules).with_failsafe(failsafe);
    let running: HashMap<&str, &Container> =
        s.containers.iter().filter(|c| c.running).map(|c| (c.id.as_str(), c)).collect();
    type Keys<'r> = BTreeMap<(u32, u32), Claim<'r>>;
    /// A container's claims: for every interface, then per `--on` ifindex.
    type Claims<'r> = (Keys<'r>, Vec<(u32, Keys<'r>)>);
    let mut claims: HashMap<&str, Claims> = HashMap::new();
    let mut plans: Vec<VethPlan> = Vec::new();
    for veth in veths {
        let Some(c) = running.get(veth.container.as_str()) else { continue };
        let (keys, on) = claims.entry(c.id.as_str()).or_insert_with(|| {
            let on = roles.on_claims(c).into_iter().filter_map(|(name, keys)| Some((resolve(name)?, keys)));
            (roles.container_claims(c), on.collect())
        });
        let entries: Vec<(VethRuleKey, PortRule)> = keys
            .iter()
            .map(|(&(proto, port), claim)| {
                (VethRuleKey { ifindex: veth.ifindex, proto, port }, claim.port_rule())
            })
            .collect();
        let scoped: Vec<(VethScopedKey, PortRule)> =
            on.iter().flat_map(|(from, on)| scoped_entries(veth.ifindex, *from, keys, on)).collect();
        let flags = crate::vethtable::state_flags(&entries, &scoped);
        let state = VethState { flags, _pad: 0, container: id_bytes(&c.id) };
        plans.push(VethPlan { ifindex: veth.ifindex, state, entries, scoped });
    }
    plans.sort_by_key(|p| p.ifindex);
    plans.dedup_by_key(|p| p.ifindex);
    plans
}

/// The `VETH_SCOPED_RULES` entries of veth `ifindex` for packets from
/// interface `from`, whose `--on` claims are `on` over the veth's `base`
/// keys: what decides there ([`Roles::veth_claim_on`]) wherever the
/// kernel's lookup (exact scoped port, scoped wildcard, then `VETH_RULES`)
/// would otherwise find something else.
fn scoped_entries(
    ifindex: u32,
    from: u32,
    base: &BTreeMap<(u32, u32), Claim>,
    on: &BTreeMap<(u32, u32), Claim>,
) -> Vec<(VethScopedKey, PortRule)> {
    let value = |claim: Option<Claim>| claim.map_or(PortRule::default(), |c| c.port_rule());
    let key = |proto, port| VethScopedKey { ifindex, proto, port, from };
    let mut out = Vec::new();
    for proto in [proto::TCP, proto::UDP] {
        // Every port without an exact key of its own: the wildcards.
        let base_any = value(base.get(&(proto, VETH_ANY_PORT)).copied());
        let wild = on
            .get(&(proto, VETH_ANY_PORT))
            .map(|o| value(claims::decide(Some(*o), base.get(&(proto, VETH_ANY_PORT)).copied())))
            .filter(|w| *w != base_any);
        if let Some(w) = wild {
            out.push((key(proto, VETH_ANY_PORT), w));
        }
        let mut ports: Vec<u32> = base
            .keys()
            .chain(on.keys())
            .filter(|k| k.0 == proto && k.1 != VETH_ANY_PORT)
            .map(|k| k.1)
            .collect();
        ports.sort_unstable();
        ports.dedup();
        for port in ports {
            let port16 = port as u16;
            let want = value(Roles::veth_claim_on(base, on, port16, proto));
            let found = wild.unwrap_or_else(|| value(Roles::veth_claim(base, port16, proto)));
            if want != found {
                out.push((key(proto, port), want));
            }
        }
    }
    out
}

/// The 64 hex digits of a container id as 32 bytes (zeros if it is not).
fn id_bytes(id: &str) -> [u8; 32] {
    let mut bytes = [0; 32];
    if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&id[2 * i..2 * i + 2], 16).unwrap_or(0);
        }
    }
    bytes
}

/// What a rule reaches right now, for `list`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Covers {
    /// `0.0.0.0:13306/tcp` (an address-less binding reads `0.0.0.0`).
    pub host_ports: Vec<String>,
    /// The covered containers' addresses.
    pub addresses: Vec<IpAddr>,
    /// Host-side veths that carry entries of the rule.
    pub veths: Vec<String>,
}

pub fn covers(rule: &Rule, s: &Snapshot, veths: &[VethOwner]) -> Covers {
    let role = role(rule);
    let mut bindings: Vec<&PortBinding> = Vec::new();
    let mut containers: Vec<&Container> = Vec::new();
    for c in &s.containers {
        let bound: Vec<&PortBinding> = c.ports.iter().filter(|b| covers_binding(rule, c, b)).collect();
        let named = match rule.target.selector {
            Selector::Ports | Selector::Derived { .. } => !bound.is_empty(),
            ref selector => selects(selector, c),
        };
        if named {
            containers.push(c);
            bindings.extend(bound.into_iter().filter(|b| b.host_port != 0));
        }
    }
    bindings.sort_by_key(|b| (b.host_port, b.proto, b.host_ip));
    let mut host_ports: Vec<String> = bindings.into_iter().map(host_port_text).collect();
    host_ports.dedup();
    let mut covers = Covers { host_ports, ..Covers::default() };
    if role == Role::Derived {
        // The parent's covers name the containers.
        return covers;
    }
    covers.addresses = containers
        .iter()
        .flat_map(|c| &c.networks)
        .flat_map(|e| [e.ipv4.map(IpAddr::V4), e.ipv6.map(IpAddr::V6)])
        .flatten()
        .collect();
    covers.addresses.sort();
    covers.addresses.dedup();
    let veth_entries = match role {
        Role::Targeted | Role::Dialed | Role::Policy => true,
        Role::Allow => !rule.options.allow_from.is_empty(),
        Role::Container | Role::Derived => false,
    };
    if veth_entries {
        covers.veths = veths
            .iter()
            .filter(|v| containers.iter().any(|c| c.running && c.id == v.container))
            .map(|v| v.ifname.clone())
            .collect();
        covers.veths.sort();
        covers.veths.dedup();
    }
    covers
}

/// `0.0.0.0:18080/tcp`, `[::1]:18080/tcp`.
pub fn host_port_text(b: &PortBinding) -> String {
    let proto = proto_name(b.proto);
    match b.host_ip {
        None => format!("0.0.0.0:{}/{proto}", b.host_port),
        Some(IpAddr::V4(ip)) => format!("{ip}:{}/{proto}", b.host_port),
        Some(IpAddr::V6(ip)) => format!("[{ip}]:{}/{proto}", b.host_port),
    }
}

#[cfg(test)]
pub(crate) mod fixtures;

#[cfg(test)]
mod tests {
    use dockblock_common::{rule_flag, veth_flag};

    use super::{fixtures::*, *};
    use crate::docker::snapshot::{ALLOW_FROM_LABEL, BLOCK_LABEL, FROM_CONTAINERS_LABEL};

    /// Derived rules as `(parent, "host port spec", allow-list)`.
    fn derived(rules: &[Rule], s: &Snapshot) -> Vec<(u32, String, Vec<String>)> {
        derived_rules(rules, s)
            .into_iter()
            .map(|d| {
                assert_eq!(d.scope, Scope::Dialed);
                assert_eq!(d.target.action, Action::Block);
                let nets = d.options.allow_from.iter().map(ToString::to_string).collect();
                (derived_parent(&d).unwrap(), d.ports.to_string(), nets)
            })
            .collect()
    }

    fn d(parent: u32, ports: &str) -> (u32, String, Vec<String>) {
        (parent, ports.to_string(), vec![])
    }

    /// Veth entries as `(ifindex, "port/proto" or "*/proto", rule id)`.
    fn entries(plans: &[VethPlan]) -> Vec<(u32, String, u32)> {
        plans
            .iter()
            .flat_map(|p| &p.entries)
            .map(|(k, r)| {
                let port = if k.port == VETH_ANY_PORT { "*".to_string() } else { k.port.to_string() };
                (k.ifindex, format!("{port}/{}", proto_name(k.proto)), r.rule_id)
            })
            .collect()
    }

    fn e(ifindex: u32, key: &str, rule: u32) -> (u32, String, u32) {
        (ifindex, key.to_string(), rule)
    }

    #[test]
    fn container_rule_derives_the_host_ports_mapped_to_its_container_ports() {
        let s = snapshot([
            running(2, "db").publish("13306:3306").publish("18080:80").publish("15353:53/udp"),
            running(3, "web").publish("13307:3306"),
        ]);
        assert_eq!(derived(&[block(1, name("db"), "3306/tcp")], &s), [d(1, "13306/tcp")]);
        assert_eq!(
            derived(&[block(1, name("db"), "every")], &s),
            [d(1, "13306/tcp"), d(1, "15353/udp"), d(1, "18080/tcp")],
            "every published port of db, none of web"
        );
        assert_eq!(derived(&[block(1, name("nobody"), "every")], &s), []);
    }

    #[test]
    fn label_and_compose_rules_cover_every_matching_container() {
        let s = snapshot([
            running(2, "a").publish("10001:80").label("tier", "internal"),
            running(3, "b").publish("10012:80").label("tier", "public"),
            running(4, "shop-db-1")
                .publish("10013:5432")
                .label("com.docker.compose.project", "shop")
                .label("com.docker.compose.service", "db"),
            running(5, "shop-web-1")
                .publish("10024:80")
                .label("com.docker.compose.project", "shop")
                .label("com.docker.compose.service", "web"),
        ]);
        assert_eq!(derived(&[block(1, label("tier", Some("internal")), "every")], &s), [d(1, "10001/tcp")]);
        assert_eq!(
            derived(&[block(1, label("tier", None), "80/tcp")], &s),
            [d(1, "10001/tcp"), d(1, "10012/tcp")]
        );
        assert_eq!(derived(&[block(1, compose("shop", Some("db")), "every")], &s), [d(1, "10013/tcp")]);
        assert_eq!(
            derived(&[block(1, compose("shop", None), "every")], &s),
            [d(1, "10013/tcp"), d(1, "10024/tcp")]
        );
        assert_eq!(derived(&[block(1, compose("other", None), "every")], &s), []);
    }

    #[test]
    fn tcp_and_udp_of_one_host_port_from_one_parent_merge() {
        let s = snapshot([running(2, "dns").publish("1053:53/tcp").publish("1053:53/udp")]);
        assert_eq!(derived(&[block(1, name("dns"), "53")], &s), [d(1, "1053")]);
        // From two parents they stay apart.
        let rules = [block(1, name("dns"), "53/udp"), block(2, name("dns"), "53/tcp")];
        assert_eq!(derived(&rules, &s), [d(2, "1053/tcp"), d(1, "1053/udp")]);
    }

    #[test]
    fn consecutive_host_ports_of_one_parent_become_one_range() {
        let mut media = running(2, "media");
        for port in 30000..30010 {
            media = media.publish(&format!("{port}:{port}"));
        }
        let s = snapshot([media.publish("30010:30010/udp").publish("30011:30011").publish("30012:30012")]);
        assert_eq!(
            derived(&[block(1, name("media"), "every")], &s),
            [d(1, "30000-30009/tcp"), d(1, "30010/udp"), d(1, "30011-30012/tcp")]
        );
        // A user rule owning a port in the middle splits the run; two parents interleave.
        let rules = [
            block(1, name("media"), "30000-30004/tcp"),
            block(2, name("media"), "every"),
            dialed(3, "30007/tcp"),
        ];
        assert_eq!(
            derived(&rules, &s),
            [
                d(1, "30000-30004/tcp"),
                d(2, "30005-30006/tcp"),
                d(2, "30008-30009/tcp"),
                d(2, "30010/udp"),
                d(2, "30011-30012/tcp")
            ]
        );
    }

    #[test]
    fn derived_rules_keep_the_parents_allow_list_dry_run_and_log() {
        let s = snapshot([running(2, "db").publish("13306:3306")]);
        let mut parent = from(block(7, name("db"), "3306/tcp"), &["10.0.0.0/8"]);
        parent.options.dry_run = true;
        parent.options.log = true;
        parent.options.from_containers = true;
        let specs = derived_rules(&[parent], &s);
        assert_eq!(specs.len(), 1);
        let o = &specs[0].options;
        assert_eq!(o.allow_from, ["10.0.0.0/8".parse::<ipnet::IpNet>().unwrap()]);
        assert!(o.dry_run && o.log);
        assert!(!o.from_containers, "a dialed slot never sees container-to-container traffic");
        assert_eq!(specs[0].target.selector, Selector::Derived { parent: 7 });
    }

    #[test]
    fn a_scoped_container_port_rule_derives_its_host_ports_with_its_scoping() {
        let s = snapshot([running(2, "db").publish("13306:3306")]);
        for (on, to) in [(&["eth1"][..], &[][..]), (&["eth1"], &["198.18.160.1"]), (&[], &["198.18.160.1"])] {
            let parent = scoped(container_port(7, "3306/tcp"), on, to);
            let specs = derived_rules(std::slice::from_ref(&parent), &s);
            assert_eq!(specs.len(), 1, "--on {on:?} --to {to:?}: XDP closes the host port too");
            assert_eq!(specs[0].options.scoping, parent.options.scoping);
            assert_eq!(specs[0].ports.to_string(), "13306/tcp");
        }
    }

    #[test]
    fn recreated_container_with_the_same_name_gets_the_rule_on_its_new_host_port() {
        let rules = [block(1, name("db"), "3306/tcp")];
        let before = snapshot([running(2, "db").publish("13306:3306")]);
        let after = snapshot([running(9, "db").publish("23306:3306")]);
        assert_eq!(derived(&rules, &before), [d(1, "13306/tcp")]);
        assert_eq!(derived(&rules, &after), [d(1, "23306/tcp")], "the old port is no longer derived");
        assert_eq!(entries(&veth_plans(&rules, &after, &[veth(40, 9)])), [e(40, "3306/tcp", 1)]);
    }

    #[test]
    fn host_address_is_ignored_and_unchosen_host_ports_derive_nothing() {
        let s = snapshot([running(2, "db").publish("127.0.0.1:13306:3306").publish("0:3307")]);
        let rules = [block(1, name("db"), "every")];
        assert_eq!(derived(&rules, &s), [d(1, "13306/tcp")], "closed on every address: fail closed");
        // The veth still closes what a routed packet could reach.
        assert_eq!(entries(&veth_plans(&rules, &s, &[veth(40, 2)])), [e(40, "*/tcp", 1), e(40, "*/udp", 1)]);
    }

    #[test]
    fn plain_dialed_rules_derive_nothing_and_own_their_slot() {
        let s = snapshot([running(2, "db").publish("13306:3306")]);
        assert_eq!(derived(&[dialed(1, "13306/tcp")], &s), []);
        assert_eq!(derived(&[dialed(1, "13306/tcp"), block(2, name("db"), "3306/tcp")], &s), []);
        assert_eq!(derived(&[dialed(1, "13306/udp"), block(2, name("db"), "3306")], &s), [d(2, "13306/tcp")]);
    }

    #[test]
    fn plain_container_port_rules_reach_xdp_through_the_mapped_host_ports() {
        let s = snapshot([running(2, "db").publish("13306:3306"), running(3, "db2").publish("23306:3306")]);
        let rules = [container_port(1, "3306/tcp")];
        assert_eq!(derived(&rules, &s), [d(1, "13306/tcp"), d(1, "23306/tcp")]);
        // The bridge hook judges them; no veth entry.
        assert_eq!(entries(&veth_plans(&rules, &s, &[veth(40, 2)])), []);
        // A targeted rule on the same port claims the slot first.
        let rules = [container_port(1, "3306/tcp"), block(5, name("db"), "3306/tcp")];
        assert_eq!(derived(&rules, &s), [d(5, "13306/tcp"), d(1, "23306/tcp")]);
    }

    #[test]
    fn existing_derived_rules_are_outputs_not_inputs() {
        let s = snapshot([running(2, "db").publish("13306:3306")]);
        let parent = block(3, name("db"), "3306/tcp");
        let stale = Rule::from_spec(4, derived_spec(&parent, 13306, dockblock_common::proto::TCP));
        assert_eq!(derived(std::slice::from_ref(&stale), &s), [], "no parent: nothing derived");
        assert_eq!(entries(&veth_plans(std::slice::from_ref(&stale), &s, &[veth(40, 2)])), []);
        // The stale rule on the slot does not count as a plain dialed owner.
        assert_eq!(derived(&[parent, stale], &s), [d(3, "13306/tcp")]);
    }

    #[test]
    fn policy_closes_every_published_port_not_opened() {
        let s = snapshot([
            running(2, "web").publish("18080:80").publish("18443:443"),
            running(3, "db").publish("13306:3306"),
            running(4, "quiet"),
        ]);
        assert_eq!(derived(&[policy(1)], &s), [d(1, "13306/tcp"), d(1, "18080/tcp"), d(1, "18443/tcp")]);
        // allow without an allow-list: no rule at all.
        let rules = [policy(1), allow(2, name("web"), "443/tcp")];
        assert_eq!(derived(&rules, &s), [d(1, "13306/tcp"), d(1, "18080/tcp")]);
        // allow with one: a rule derived from the Allow rule, open to those sources.
        let rules = [policy(1), from(allow(2, name("web"), "443/tcp"), &["203.0.113.0/24"])];
        assert_eq!(
            derived(&rules, &s),
            [d(1, "13306/tcp"), d(1, "18080/tcp"), (2, "18443/tcp".into(), vec!["203.0.113.0/24".into()])]
        );
        // A plain dialed allow names the host port.
        let rules = [policy(1), allow_dialed(2, "18080/tcp")];
        assert_eq!(derived(&rules, &s), [d(1, "13306/tcp"), d(1, "18443/tcp")]);
        // Without the policy, Allow rules do nothing.
        assert_eq!(derived(&[allow(2, name("web"), "every")], &s), []);
    }

    #[test]
    fn the_policy_leaves_failsafe_host_ports_open() {
        let fs = [PortSpec::parse("22/tcp").unwrap()];
        let s = snapshot([
            running(2, "ssh").publish("22:22").publish("8022:22").publish("18080:80"),
            running(3, "web").publish("2222:22"),
        ]);
        let rules = [policy(1)];
        let derived: Vec<String> =
            derived_rules_except(&rules, &s, &fs).into_iter().map(|d| d.ports.to_string()).collect();
        // 22 stays open; 8022 (another host port) and 2222 close.
        assert_eq!(derived, ["2222/tcp", "8022/tcp", "18080/tcp"]);
        // At the veth, the container port behind 22 stays open although
        // 8022 maps to it too; web's 22 (behind 2222) closes.
        let plans = veth_plans_except(&rules, &s, &[veth(40, 2), veth(41, 3)], &fs);
        assert_eq!(entries(&plans), [e(40, "80/tcp", 1), e(41, "22/tcp", 1)]);
        // An explicit block still closes it.
        let rules = [policy(1), block(2, name("ssh"), "22/tcp")];
        let plans = veth_plans_except(&rules, &s, &[veth(40, 2)], &fs);
        assert_eq!(entries(&plans), [e(40, "22/tcp", 2), e(40, "80/tcp", 1)]);
        // No failsafe: as before.
        assert_eq!(derived_rules_except(&[policy(1)], &s, &[]), derived_rules(&[policy(1)], &s));
    }

    #[test]
    fn an_allow_without_list_beats_one_with_a_list() {
        let s = snapshot([running(2, "web").publish("18443:443")]);
        let rules = [
            policy(1),
            from(allow(2, name("web"), "443/tcp"), &["203.0.113.0/24"]),
            allow(3, name("web"), "every"),
        ];
        assert_eq!(derived(&rules, &s), []);
    }

    #[test]
    fn explicit_block_beats_allow() {
        let s = snapshot([running(2, "web").publish("18443:443")]);
        let rules = [policy(1), allow(2, name("web"), "443/tcp"), block(3, label("tier", None), "every")];
        assert_eq!(derived(&rules, &s), [], "no tier label: the allow opens it");
        let s = snapshot([running(2, "web").publish("18443:443").label("tier", "x")]);
        assert_eq!(derived(&rules, &s), [d(3, "18443/tcp")]);
        assert_eq!(entries(&veth_plans(&rules, &s, &[veth(40, 2)])), [e(40, "*/tcp", 3), e(40, "*/udp", 3)]);
    }

    #[test]
    fn stopped_containers_get_derived_rules_but_no_veth_plan() {
        let s = snapshot([running(2, "db").publish("13306:3306").stopped()]);
        let rules = [block(1, name("db"), "every")];
        assert_eq!(derived(&rules, &s), [d(1, "13306/tcp")], "closed before it starts");
        assert_eq!(veth_plans(&rules, &s, &[veth(40, 2)]), []);
    }

    #[test]
    fn veths_of_unknown_containers_get_no_plan() {
        let s = snapshot([running(2, "db")]);
        let plans = veth_plans(&[], &s, &[veth(40, 2), veth(41, 7)]);
        assert_eq!(plans.iter().map(|p| p.ifindex).collect::<Vec<_>>(), [40], "41 stays unreviewed");
    }

    #[test]
    fn veth_state_is_reviewed_with_the_container_id_and_flags() {
        let s = snapshot([running(0xab, "db"), running(3, "web")]);
        let rules = [block(1, name("db"), "3306/tcp"), block(2, name("web"), "every")];
        let plans = veth_plans(&rules, &s, &[veth(41, 3), veth(40, 0xab), veth(42, 3)]);
        assert_eq!(plans.iter().map(|p| p.ifindex).collect::<Vec<_>>(), [40, 41, 42]);
        assert_eq!(plans[0].state.container, [0xab; 32]);
        assert_eq!(plans[0].state.flags, veth_flag::REVIEWED | veth_flag::HAS_PORTS);
        assert_eq!(plans[1].state.container, [3; 32]);
        assert_eq!(plans[1].state.flags, veth_flag::REVIEWED | veth_flag::HAS_WILDCARD);
        assert_eq!(entries(&plans[2..]), [e(42, "*/tcp", 2), e(42, "*/udp", 2)], "each veth of web");
        // No rule: reviewed, nothing to look up.
        let plans = veth_plans(&[], &s, &[veth(40, 0xab)]);
        assert_eq!((plans[0].state.flags, plans[0].entries.len()), (veth_flag::REVIEWED, 0));
    }

    #[test]
    fn veth_entries_carry_the_rules_flags() {
        let s = snapshot([running(2, "db")]);
        let mut rule = from(block(1, name("db"), "3306/tcp"), &["10.0.0.0/8"]);
        rule.options.from_containers = true;
        let plans = veth_plans(&[rule], &s, &[veth(40, 2)]);
        assert_eq!(
            plans[0].entries[0].1,
            PortRule { rule_id: 1, flags: rule_flag::ALLOW_LIST | rule_flag::FROM_CONTAINERS }
        );
    }

    #[test]
    fn explicit_ports_are_entries_on_the_container_ports_published_or_not() {
        let s = snapshot([running(2, "db").publish("13306:3306")]);
        let rules = [block(1, name("db"), "3306-3307/tcp"), block(2, name("db"), "53/udp")];
        assert_eq!(
            entries(&veth_plans(&rules, &s, &[veth(40, 2)])),
            [e(40, "3306/tcp", 1), e(40, "3307/tcp", 1), e(40, "53/udp", 2)]
        );
    }

    #[test]
    fn plain_dialed_rule_on_a_published_port_closes_the_container_port() {
        let s = snapshot([running(2, "web").publish("18080:80").publish("18081:81")]);
        let rules = [dialed(1, "18080/tcp")];
        assert_eq!(entries(&veth_plans(&rules, &s, &[veth(40, 2)])), [e(40, "80/tcp", 1)]);
    }

    #[test]
    fn a_key_claimed_twice_goes_to_targeted_then_dialed_then_policy() {
        let s = snapshot([running(2, "web").publish("18080:80").publish("18443:443")]);
        let rules = [
            dialed(1, "18080/tcp"),
            policy(2),
            block(5, name("web"), "80/tcp"),
            block(4, name("web"), "80/tcp"),
        ];
        assert_eq!(
            entries(&veth_plans(&rules, &s, &[veth(40, 2)])),
            [e(40, "80/tcp", 4), e(40, "443/tcp", 2)],
            "lowest targeted id on 80; the policy on 443"
        );
        let rules = [policy(1), dialed(2, "18080/tcp")];
        assert_eq!(
            entries(&veth_plans(&rules, &s, &[veth(40, 2)])),
            [e(40, "80/tcp", 2), e(40, "443/tcp", 1)]
        );
    }

    #[test]
    fn a_wildcard_with_a_better_claim_takes_the_ports_of_its_protocol() {
        let s = snapshot([running(2, "web").publish("18080:80")]);
        // Policy on 80/tcp and an allow-list on 53/udp lose to the EVERY rule.
        let rules = [
            policy(9),
            from(allow(8, name("web"), "80/tcp"), &["10.0.0.0/8"]),
            block(3, name("web"), "every"),
        ];
        assert_eq!(entries(&veth_plans(&rules, &s, &[veth(40, 2)])), [e(40, "*/tcp", 3), e(40, "*/udp", 3)]);
        // A lower-id explicit rule keeps its port beside a wildcard.
        let rules = [from(block(1, name("web"), "80/tcp"), &["10.0.0.0/8"]), block(3, name("web"), "every")];
        assert_eq!(
            entries(&veth_plans(&rules, &s, &[veth(40, 2)])),
            [e(40, "*/tcp", 3), e(40, "80/tcp", 1), e(40, "*/udp", 3)]
        );
    }

    #[test]
    fn policy_with_allow_on_the_veth() {
        let s = snapshot([running(2, "web").publish("18080:80").publish("18443:443").publish("18444:444")]);
        let rules = [
            policy(1),
            allow(2, name("web"), "443/tcp"),
            from(allow(3, name("web"), "444/tcp"), &["10.0.0.0/8"]),
        ];
        assert_eq!(
            entries(&veth_plans(&rules, &s, &[veth(40, 2)])),
            [e(40, "80/tcp", 1), e(40, "444/tcp", 3)],
            "443 open, 444 open to the list"
        );
        // Two host ports on one container port, one allowed: closed (fail closed).
        let s = snapshot([running(2, "web").publish("18080:80").publish("18081:80")]);
        let rules = [policy(1), allow_dialed(2, "18081/tcp")];
        assert_eq!(entries(&veth_plans(&rules, &s, &[veth(40, 2)])), [e(40, "80/tcp", 1)]);
        assert_eq!(derived(&rules, &s), [d(1, "18080/tcp")], "XDP can tell them apart");
    }

    #[test]
    fn own_labels_make_rules_of_their_container_only() {
        let s = snapshot([
            running(3, "db")
                .publish("13306:3306")
                .label(BLOCK_LABEL, "3306/tcp,33060/tcp")
                .label(ALLOW_FROM_LABEL, "10.0.0.0/8")
                .label(FROM_CONTAINERS_LABEL, "true"),
            running(2, "web").label(BLOCK_LABEL, "all"),
            running(4, "plain"),
        ]);
        let (specs, warnings) = own_label_rules(&s);
        assert_eq!(warnings, []);
        let got: Vec<(Selector, String, bool, usize)> = specs
            .iter()
            .map(|r| {
                assert_eq!(r.scope, Scope::Container);
                (
                    r.target.selector.clone(),
                    r.ports.to_string(),
                    r.options.from_containers,
                    r.options.allow_from.len(),
                )
            })
            .collect();
        let own = |n| Selector::OwnLabels { container: id(n) };
        assert_eq!(
            got,
            [
                (own(2), "1-65535".into(), false, 0),
                (own(3), "3306/tcp".into(), true, 1),
                (own(3), "33060/tcp".into(), true, 1),
            ],
            "ordered by container id"
        );
        // Given ids, they derive and plan like any targeted rule.
        let rules: Vec<Rule> = specs.into_iter().zip(1..).map(|(s, id)| Rule::from_spec(id, s)).collect();
        assert_eq!(derived(&rules, &s), [(2, "13306/tcp".into(), vec!["10.0.0.0/8".into()])]);
        assert_eq!(entries(&veth_plans(&rules, &s, &[veth(40, 2)])), [e(40, "*/tcp", 1), e(40, "*/udp", 1)]);
    }

    #[test]
    fn bad_labels_warn_naming_container_and_label_and_leave_the_others() {
        let s = snapshot([
            running(2, "db").label(BLOCK_LABEL, "3306/tcp").label(ALLOW_FROM_LABEL, "10.0.0.0/99"),
            running(3, "web").label(BLOCK_LABEL, "80/tcp"),
            running(4, "cache").label(ALLOW_FROM_LABEL, "10.0.0.0/8"),
        ]);
        let (specs, warnings) = own_label_rules(&s);
        let named: Vec<(&str, &str)> =
            warnings.iter().map(|w| (w.container.as_str(), w.label.as_str())).collect();
        assert_eq!(named, [("db", ALLOW_FROM_LABEL), ("cache", ALLOW_FROM_LABEL)]);
        assert_eq!(specs.len(), 1, "only web's rule");
        assert_eq!(specs[0].target.selector, Selector::OwnLabels { container: id(3) });
    }

    #[test]
    fn translator_is_the_derive_of_a_commit() {
        let s = snapshot([running(2, "db").publish("13306:3306").label(BLOCK_LABEL, "3306/tcp")]);
        let t = Translator { snapshot: &s, veths: &[], failsafe: &[] };
        assert_eq!(t.own_labels(), own_label_rules(&s).0);
        let rules = [block(1, name("db"), "3306/tcp")];
        assert_eq!(t.derived(&rules), derived_rules(&rules, &s));
    }

    #[test]
    fn covers_lists_host_ports_addresses_and_veths() {
        let s = snapshot([
            running(3, "db").publish("13306:3306").publish("[::1]:13306:3306").publish("18080:80"),
            running(4, "web").publish("28080:80"),
        ]);
        let veths = [veth(40, 3), veth(41, 4)];
        let c = covers(&block(1, name("db"), "3306/tcp"), &s, &veths);
        assert_eq!(c.host_ports, ["0.0.0.0:13306/tcp", "[::1]:13306/tcp"]);
        assert_eq!(c.addresses, ["172.17.0.3".parse::<IpAddr>().unwrap()]);
        assert_eq!(c.veths, ["veth40"]);
        let c = covers(&dialed(1, "28080/tcp"), &s, &veths);
        assert_eq!(
            (c.host_ports, c.veths),
            (vec!["0.0.0.0:28080/tcp".to_string()], vec!["veth41".to_string()])
        );
        let c = covers(&container_port(1, "80/tcp"), &s, &veths);
        assert_eq!(c.host_ports, ["0.0.0.0:18080/tcp", "0.0.0.0:28080/tcp"]);
        assert_eq!(c.veths, Vec::<String>::new(), "the bridge hook judges it");
        let c = covers(&block(1, name("gone"), "every"), &s, &veths);
        assert_eq!(c, Covers::default());
        let c = covers(&policy(1), &s, &veths);
        assert_eq!(c.host_ports.len(), 4, "every published port: {c:?}");
        assert_eq!(c.veths, ["veth40", "veth41"]);
        let c = covers(&allow(2, name("web"), "every"), &s, &veths);
        assert_eq!(c.host_ports, ["0.0.0.0:28080/tcp"]);
        assert_eq!(c.veths, Vec::<String>::new(), "an allow without a list has no veth entry");
        let c = covers(&from(allow(2, name("web"), "every"), &["10.0.0.0/8"]), &s, &veths);
        assert_eq!(c.veths, ["veth41"]);
    }

    /// `rule` scoped with `--on` `on` and `--to` `to`.
    fn scoped(mut rule: Rule, on: &[&str], to: &[&str]) -> Rule {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        rule.options.scoping = crate::scoping::Scoping::parse(&strings(on), &strings(to)).unwrap();
        rule
    }

    fn resolve(name: &str) -> Option<u32> {
        match name {
            "eth1" => Some(7),
            "eth2" => Some(9),
            _ => None,
        }
    }

    /// Scoped entries as `(ifindex, "port/proto" or "*/proto", from, rule id)`.
    fn scoped_of(plans: &[VethPlan]) -> Vec<(u32, String, u32, u32)> {
        let mut out: Vec<(u32, String, u32, u32)> = plans
            .iter()
            .flat_map(|p| &p.scoped)
            .map(|(k, r)| {
                let port = if k.port == VETH_ANY_PORT { "*".to_string() } else { k.port.to_string() };
                (k.ifindex, format!("{port}/{}", proto_name(k.proto)), k.from, r.rule_id)
            })
            .collect();
        out.sort();
        out
    }

    fn sc(ifindex: u32, key: &str, from: u32, rule: u32) -> (u32, String, u32, u32) {
        (ifindex, key.to_string(), from, rule)
    }

    #[test]
    fn an_on_rule_closes_at_the_veth_for_its_interfaces_only() {
        let s = snapshot([running(2, "web").publish("18080:80")]);
        let rules = [scoped(block(1, name("web"), "80/tcp"), &["eth1", "eth2", "gone"], &[])];
        let plans = veth_plans_with(&rules, &s, &[veth(40, 2)], &[], &resolve);
        assert_eq!(entries(&plans), [], "no entry for other interfaces");
        assert_eq!(
            scoped_of(&plans),
            [sc(40, "80/tcp", 7, 1), sc(40, "80/tcp", 9, 1)],
            "none for a missing name"
        );
        assert_eq!(plans[0].state.flags, veth_flag::REVIEWED | veth_flag::HAS_SCOPED);
        // Unscoped beside it: the unscoped rule is the base, the --on rule
        // (with an allow-list) decides on eth1.
        let rules = [
            block(1, name("web"), "80/tcp"),
            scoped(from(block(2, name("web"), "80/tcp"), &["203.0.113.0/24"]), &["eth1"], &[]),
        ];
        let plans = veth_plans_with(&rules, &s, &[veth(40, 2)], &[], &resolve);
        assert_eq!(entries(&plans), [e(40, "80/tcp", 1)]);
        assert_eq!(scoped_of(&plans), [sc(40, "80/tcp", 7, 2)]);
        assert_eq!(plans[0].scoped[0].1.flags, rule_flag::ALLOW_LIST);
        // Without --on rules: no scoped entry, no flag.
        let plans = veth_plans_with(&rules[..1], &s, &[veth(40, 2)], &[], &resolve);
        assert!(plans[0].scoped.is_empty());
        assert_eq!(plans[0].state.flags & veth_flag::HAS_SCOPED, 0);
    }

    #[test]
    fn a_to_rule_closes_at_the_veth_everywhere_and_outranks_nothing() {
        let s = snapshot([running(2, "web").publish("18080:80")]);
        let to = scoped(block(1, name("web"), "80/tcp"), &[], &["198.18.160.1"]);
        let both = scoped(block(2, name("web"), "80/tcp"), &["eth1"], &["198.18.160.1"]);
        let plans = veth_plans_with(&[to.clone(), both.clone()], &s, &[veth(40, 2)], &[], &resolve);
        assert_eq!(entries(&plans), [e(40, "80/tcp", 1)], "judged as closing on every interface");
        assert_eq!(scoped_of(&plans), [], "--on with --to is not judged by the interface either");
        // An unscoped rule and an --on rule both outrank it, whatever the ids.
        let rules = [to, from(block(5, name("web"), "80/tcp"), &["203.0.113.0/24"])];
        assert_eq!(
            entries(&veth_plans_with(&rules, &s, &[veth(40, 2)], &[], &resolve)),
            [e(40, "80/tcp", 5)]
        );
        let rules = [rules[0].clone(), scoped(block(6, name("web"), "80/tcp"), &["eth1"], &[])];
        let plans = veth_plans_with(&rules, &s, &[veth(40, 2)], &[], &resolve);
        assert_eq!(
            (entries(&plans), scoped_of(&plans)),
            (vec![e(40, "80/tcp", 1)], vec![sc(40, "80/tcp", 7, 6)])
        );
        // A plain dialed rule on the host port outranks it too.
        let rules = [rules[0].clone(), dialed(7, "18080/tcp")];
        assert_eq!(
            entries(&veth_plans_with(&rules, &s, &[veth(40, 2)], &[], &resolve)),
            [e(40, "80/tcp", 7)]
        );
    }

    #[test]
    fn a_dry_run_on_rule_opens_nothing_another_rule_closes() {
        let s = snapshot([running(2, "web").publish("18080:80")]);
        let mut dry = scoped(block(2, name("web"), "80/tcp"), &["eth1"], &[]);
        dry.options.dry_run = true;
        let plans = veth_plans_with(
            &[block(1, name("web"), "80/tcp"), dry.clone()],
            &s,
            &[veth(40, 2)],
            &[],
            &resolve,
        );
        assert_eq!((entries(&plans), scoped_of(&plans)), (vec![e(40, "80/tcp", 1)], vec![]));
        // Alone, it decides on eth1 (counts what it would drop).
        let plans = veth_plans_with(&[dry], &s, &[veth(40, 2)], &[], &resolve);
        assert_eq!(scoped_of(&plans), [sc(40, "80/tcp", 7, 2)]);
        assert_eq!(plans[0].scoped[0].1.flags, rule_flag::DRY_RUN);
    }

    #[test]
    fn scoped_wildcards_and_ports_give_what_the_interface_decides() {
        let s = snapshot([running(2, "web").publish("18080:80").publish("18443:443")]);
        // Every port closed on eth1: the --on rule outranks the unscoped
        // 443 there; the wildcard covers it, so only wildcards are written.
        let rules =
            [block(1, name("web"), "443/tcp"), scoped(block(2, name("web"), "every"), &["eth1"], &[])];
        let plans = veth_plans_with(&rules, &s, &[veth(40, 2)], &[], &resolve);
        assert_eq!(entries(&plans), [e(40, "443/tcp", 1)]);
        assert_eq!(scoped_of(&plans), [sc(40, "*/tcp", 7, 2), sc(40, "*/udp", 7, 2)]);
        // A dry-run wildcard on eth1 over an unscoped port: that port keeps
        // its rule on eth1 (an exact scoped entry over the wildcard).
        let mut dry = scoped(block(2, name("web"), "every"), &["eth1"], &[]);
        dry.options.dry_run = true;
        let plans = veth_plans_with(&[rules[0].clone(), dry], &s, &[veth(40, 2)], &[], &resolve);
        assert_eq!(
            scoped_of(&plans),
            [sc(40, "*/tcp", 7, 2), sc(40, "*/udp", 7, 2), sc(40, "443/tcp", 7, 1)]
        );
        // An unscoped wildcard and an --on port: one exact scoped entry.
        let rules = [
            block(1, name("web"), "every"),
            scoped(from(block(2, name("web"), "80/tcp"), &["203.0.113.0/24"]), &["eth2"], &[]),
        ];
        let plans = veth_plans_with(&rules, &s, &[veth(40, 2)], &[], &resolve);
        assert_eq!(scoped_of(&plans), [sc(40, "80/tcp", 9, 2)]);
    }

    #[test]
    fn every_packet_gets_what_the_claims_decide() {
        // The kernel's lookup on the written entries (scoped exact, scoped
        // wildcard, then VETH_RULES) gives the decision of the claims.
        let s =
            snapshot([running(2, "web").publish("18080:80").publish("18443:443").publish("15353:53/udp")]);
        let mut dry = scoped(block(7, name("web"), "every"), &["eth2"], &[]);
        dry.options.dry_run = true;
        let rules = [
            block(1, name("web"), "443/tcp"),
            scoped(block(2, name("web"), "80/tcp"), &["eth1"], &[]),
            scoped(block(3, name("web"), "every"), &["eth1"], &["198.18.160.1"]),
            dry,
            scoped(from(block(5, name("web"), "53/udp"), &["203.0.113.0/24"]), &["eth2"], &[]),
            policy(6),
        ];
        let plans = veth_plans_with(&rules, &s, &[veth(40, 2)], &[], &resolve);
        let plan = &plans[0];
        let kernel = |from: u32, proto: u32, port: u32| -> u32 {
            let get_s = |port| {
                plan.scoped.iter().find(|(k, _)| *k == VethScopedKey { ifindex: 40, proto, port, from })
            };
            if let Some((_, r)) = get_s(port).or_else(|| get_s(VETH_ANY_PORT)) {
                return r.rule_id;
            }
            let get =
                |port| plan.entries.iter().find(|(k, _)| *k == VethRuleKey { ifindex: 40, proto, port });
            get(port).or_else(|| get(VETH_ANY_PORT)).map_or(0, |(_, r)| r.rule_id)
        };
        let roles = Roles::new(&rules);
        let c = &s.containers[0];
        let base = roles.container_claims(c);
        let on = roles.on_claims(c);
        for (from, name) in [(7, Some("eth1")), (9, Some("eth2")), (3, None)] {
            for (proto, port) in
                [(proto::TCP, 80), (proto::TCP, 443), (proto::TCP, 22), (proto::UDP, 53), (proto::UDP, 80)]
            {
                let want = match name.and_then(|n| on.get(n)) {
                    Some(on) => Roles::veth_claim_on(&base, on, port as u16, proto),
                    None => Roles::veth_claim(&base, port as u16, proto),
                };
                assert_eq!(
                    kernel(from, proto, port),
                    want.map_or(0, |c| c.rule.id),
                    "from {from} {proto}/{port}"
                );
            }
        }
        // The spot checks: 80 on eth1 is rule 2, elsewhere the policy; the
        // dry run on eth2 opens nothing the policy closes; 53/udp on eth2 is 5.
        assert_eq!(
            (kernel(7, proto::TCP, 80), kernel(3, proto::TCP, 80), kernel(9, proto::TCP, 80)),
            (2, 6, 6)
        );
        assert_eq!((kernel(9, proto::UDP, 53), kernel(9, proto::TCP, 22)), (5, 3), "the dry run is left out");
        assert_eq!(kernel(3, proto::TCP, 22), 3, "the --to rule closes every port everywhere");
    }
}
