//! Hand-made snapshots and rules that read like `docker run` lines.

use std::net::Ipv4Addr;

use dockblock_common::proto;

use crate::{
    docker::snapshot::{Container, Endpoint, PortBinding, Snapshot, VethOwner},
    ports::PortSpec,
    rules::{Rule, RuleOptions, Scope},
    target::{Action, Selector, Target},
};

/// A 64-hex id made of one repeated byte.
pub fn id(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

/// A running container `name` with id `id(n)`, on `bridge` at 172.17.0.n.
pub fn running(n: u8, name: &str) -> Container {
    Container {
        id: id(n),
        name: name.into(),
        running: true,
        pid: 1000 + u32::from(n),
        networks: vec![Endpoint {
            network: "bridge".into(),
            network_id: "b".repeat(64),
            ipv4: Some(Ipv4Addr::new(172, 17, 0, n)),
            ipv6: None,
        }],
        ..Default::default()
    }
}

pub trait Build {
    /// `-p 18080:80/tcp` (host port 0: not chosen yet; `1.2.3.4:` prefix for an address).
    fn publish(self, spec: &str) -> Self;
    fn label(self, key: &str, value: &str) -> Self;
    fn stopped(self) -> Self;
}

impl Build for Container {
    fn publish(mut self, spec: &str) -> Self {
        let (ports, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
        let proto = if proto == "udp" { proto::UDP } else { proto::TCP };
        let parts: Vec<&str> = ports.rsplitn(3, ':').collect();
        let (container_port, host_port, host_ip) = match parts[..] {
            [c, h] => (c, h, None),
            [c, h, ip] => (c, h, Some(ip.trim_matches(['[', ']']).parse().unwrap())),
            _ => panic!("{spec}"),
        };
        self.ports.push(PortBinding {
            host_ip,
            host_port: host_port.parse().unwrap(),
            container_port: container_port.parse().unwrap(),
            proto,
        });
        self
    }

    fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    fn stopped(mut self) -> Self {
        self.running = false;
        self.pid = 0;
        self.networks.iter_mut().for_each(|e| e.ipv4 = None);
        self
    }
}

pub fn snapshot(containers: impl IntoIterator<Item = Container>) -> Snapshot {
    Snapshot { containers: containers.into_iter().collect(), networks: vec![] }
}

/// Veth `ifindex` of container `id(n)`.
pub fn veth(ifindex: u32, n: u8) -> VethOwner {
    VethOwner { ifindex, ifname: format!("veth{ifindex}"), container: id(n), bridge: Some("docker0".into()) }
}

fn rule(id: u32, scope: Scope, ports: &str, selector: Selector, action: Action) -> Rule {
    let ports = if ports == "every" { PortSpec::EVERY } else { PortSpec::parse(ports).unwrap() };
    Rule { id, scope, ports, options: RuleOptions::default(), target: Target { selector, action } }
}

pub fn name(name: &str) -> Selector {
    Selector::Container { name: name.into() }
}

pub fn label(key: &str, value: Option<&str>) -> Selector {
    Selector::Label { key: key.into(), value: value.map(Into::into) }
}

pub fn compose(project: &str, service: Option<&str>) -> Selector {
    Selector::Compose { project: project.into(), service: service.map(Into::into) }
}

/// `block --<selector> PORTS` (container ports; "every" for none given).
pub fn block(id: u32, selector: Selector, ports: &str) -> Rule {
    rule(id, Scope::Container, ports, selector, Action::Block)
}

/// `allow --<selector> PORTS`.
pub fn allow(id: u32, selector: Selector, ports: &str) -> Rule {
    rule(id, Scope::Container, ports, selector, Action::Allow)
}

/// `allow PORTS` on dialed (host) ports.
pub fn allow_dialed(id: u32, ports: &str) -> Rule {
    rule(id, Scope::Dialed, ports, Selector::Ports, Action::Allow)
}

/// `block PORTS` (plain, dialed).
pub fn dialed(id: u32, ports: &str) -> Rule {
    rule(id, Scope::Dialed, ports, Selector::Ports, Action::Block)
}

/// `block --container-port PORTS` (plain).
pub fn container_port(id: u32, ports: &str) -> Rule {
    rule(id, Scope::Container, ports, Selector::Ports, Action::Block)
}

/// `policy published deny`.
pub fn policy(id: u32) -> Rule {
    rule(id, Scope::Container, "every", Selector::PublishedPolicy, Action::Block)
}

/// The rule with an allow-list.
pub fn from(mut rule: Rule, nets: &[&str]) -> Rule {
    let o = &rule.options;
    rule.options = RuleOptions::new(nets.iter().map(|n| n.parse().unwrap()), o.dry_run, o.log)
        .with_from_containers(o.from_containers);
    rule
}
