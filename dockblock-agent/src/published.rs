//! `ports`: every port the host publishes for a running container, and
//! what a new connection from outside the host gets there. The verdict is
//! that of the most open path, which skips XDP (an uplink without it, or
//! routing to the container's address): the Docker bridge's container-port
//! slot and the container's veth entry, both must let the packet through.
//! It follows from the rules and the engine's state as `translate` does:
//! exact while the daemon keeps the kernel equal to them. The verdict is
//! that of a packet from an interface no `--on` rule names: scoped dialed
//! rules are judged at XDP, which that path skips, and a Docker rule with
//! `--on` decides at the veth only for packets from its interfaces. Each
//! port lists both apart (`scoped`): what XDP does on those interfaces and
//! addresses, and what the veth does (with the bridge) for packets from
//! those interfaces. A Docker rule with `--to` closes at the veth for every
//! interface (it cannot be judged after DNAT), so it is in the verdict.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Serialize, Serializer};

use dockblock_common::proto;

use crate::{
    docker::snapshot::Snapshot,
    ports::proto_name,
    rules::{self, Rule, Scope},
    scoping::Scoping,
    translate::{Policy, Roles},
};

/// What a new connection from outside gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Open,
    /// Only from these sources.
    OpenTo(Vec<IpNet>),
    Blocked,
}

impl Verdict {
    /// What one Block rule does (dry run: drops nothing).
    fn of(rule: &Rule) -> Verdict {
        match &rule.options {
            o if o.dry_run => Verdict::Open,
            o if o.allow_from.is_empty() => Verdict::Blocked,
            o => Verdict::OpenTo(o.allow_from.clone()),
        }
    }

    /// Both hooks on one path must pass the packet.
    fn and(self, other: Verdict) -> Verdict {
        match (self, other) {
            (Verdict::Blocked, _) | (_, Verdict::Blocked) => Verdict::Blocked,
            (Verdict::Open, v) | (v, Verdict::Open) => v,
            (Verdict::OpenTo(a), Verdict::OpenTo(b)) => {
                let mut both: Vec<IpNet> = a
                    .iter()
                    .flat_map(|x| {
                        b.iter().filter_map(move |y| {
                            [*x, *y].into_iter().find(|n| x.contains(n) && y.contains(n))
                        })
                    })
                    .collect();
                both.sort();
                both.dedup();
                if both.is_empty() {
                    Verdict::Blocked
                } else {
                    Verdict::OpenTo(both)
                }
            }
        }
    }
}

/// One published port (`docker run -p`), as `ports` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedPort {
    pub container: String,
    pub compose_project: Option<String>,
    pub compose_service: Option<String>,
    /// `None`: every address.
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
    /// One of `dockblock_common::proto`.
    pub proto: u32,
    /// The container's networks, by name.
    pub networks: Vec<String>,
    pub verdict: Verdict,
    /// The rules that decide the verdict, ascending: Block rules judging
    /// the port, the policy, an Allow rule opening it.
    pub rules: Vec<u32>,
    /// Scoped dialed rules on the host port, by id: the verdict at XDP for
    /// packets that came in on `on` / are addressed to `to`.
    pub scoped: Vec<ScopedVerdict>,
}

/// What a scoped rule does to a published port at one hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopedVerdict {
    pub rule: u32,
    pub scoping: Scoping,
    pub verdict: Verdict,
    /// `xdp` (a scoped dialed rule, the verdict at XDP), `bridge` (an
    /// `--on` container-port rule, its verdict at the bridge for packets
    /// from `on`) or `veth` (an `--on` Docker rule: the path's verdict for
    /// packets from `on`).
    pub hook: &'static str,
}

/// Every binding with a host port of every running container, ordered by
/// host port, protocol, host address, container.
pub fn published(rules: &[Rule], s: &Snapshot) -> Vec<PublishedPort> {
    let roles = Roles::new(rules);
    // The bridge's own owners: a container-port rule scoped there (`--on`)
    // closes only what came in on its interfaces, listed apart below.
    let bridge_owners: Vec<_> =
        (0..proto::COUNT).map(|p| rules::port_owners(rules, Scope::Container, p)).collect();
    let mut out = Vec::new();
    for c in s.containers.iter().filter(|c| c.running) {
        let keys = roles.container_claims(c);
        let on = roles.on_claims(c);
        for b in c.ports.iter().filter(|b| b.host_port != 0 && b.proto < dockblock_common::proto::COUNT) {
            let bridge = bridge_owners[b.proto as usize][usize::from(b.container_port)];
            let veth = Roles::veth_claim(&keys, b.container_port, b.proto).map(|claim| claim.rule);
            let mut verdict = Verdict::Open;
            let mut ids = Vec::new();
            for rule in [bridge, veth].into_iter().flatten() {
                verdict = verdict.and(Verdict::of(rule));
                ids.push(rule.id);
            }
            match roles.policy(c, b) {
                Some(Policy::Open { allow, policy } | Policy::OpenTo { allow, policy }) => {
                    ids.extend([allow.id, policy.id])
                }
                Some(Policy::Closed(_)) | None => {}
            }
            ids.sort_unstable();
            ids.dedup();
            let scoped_at = |scope: Scope, port: u16, hook: &'static str| {
                rules
                    .iter()
                    .filter(move |r| rules::in_port_table(r) && r.scope == scope)
                    .filter(move |r| r.options.scoping.is_scoped_at(scope))
                    .filter(|r| r.ports.protos & proto::bit(b.proto) != 0)
                    .filter(move |r| r.ports.lo <= port && port <= r.ports.hi)
                    .map(move |r| ScopedVerdict {
                        rule: r.id,
                        scoping: r.options.scoping.clone(),
                        verdict: Verdict::of(r),
                        hook,
                    })
            };
            let mut scoped: Vec<ScopedVerdict> = scoped_at(Scope::Dialed, b.host_port, "xdp")
                .chain(scoped_at(Scope::Container, b.container_port, "bridge"))
                .collect();
            // Per `--on` interface, where the veth decides otherwise.
            for (name, on_keys) in &on {
                let Some(claim) = Roles::veth_claim_on(&keys, on_keys, b.container_port, b.proto) else {
                    continue;
                };
                if veth.is_some_and(|v| v.id == claim.rule.id) {
                    continue;
                }
                let verdict = bridge.map_or(Verdict::Open, Verdict::of).and(Verdict::of(claim.rule));
                match scoped.last_mut() {
                    Some(last)
                        if last.hook == "veth" && last.rule == claim.rule.id && last.verdict == verdict =>
                    {
                        last.scoping.on.push(name.to_string())
                    }
                    _ => scoped.push(ScopedVerdict {
                        rule: claim.rule.id,
                        scoping: Scoping { on: vec![name.to_string()], to: vec![] },
                        verdict,
                        hook: "veth",
                    }),
                }
            }
            out.push(PublishedPort {
                container: c.name.clone(),
                compose_project: c.compose_project().map(Into::into),
                compose_service: c.compose_service().map(Into::into),
                host_ip: b.host_ip,
                host_port: b.host_port,
                container_port: b.container_port,
                proto: b.proto,
                networks: c.networks.iter().map(|e| e.network.clone()).collect(),
                verdict,
                rules: ids,
                scoped,
            });
        }
    }
    out.sort_by(|a, b| {
        (a.host_port, a.proto, a.host_ip, &a.container).cmp(&(b.host_port, b.proto, b.host_ip, &b.container))
    });
    out.dedup();
    out
}

/// The JSON shape (stable): `{"container", "compose_project",
/// "compose_service", "host_ip": "0.0.0.0", "host_port", "container_port",
/// "proto": "tcp", "networks", "verdict": "open"|"open_to"|"blocked",
/// "open_to": [CIDR...], "rules": [id...]}`, and with scoped rules on the
/// host port `"scoped": [{"rule", "on": [IFACE...], "to": [ADDR...],
/// "verdict", "open_to", "hook": "xdp"|"bridge"|"veth"}]` (absent without).
impl Serialize for PublishedPort {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Out<'a> {
            container: &'a str,
            compose_project: Option<&'a str>,
            compose_service: Option<&'a str>,
            host_ip: String,
            host_port: u16,
            container_port: u16,
            proto: &'static str,
            networks: &'a [String],
            verdict: &'static str,
            open_to: Vec<String>,
            rules: &'a [u32],
            #[serde(skip_serializing_if = "Vec::is_empty")]
            scoped: Vec<serde_json::Value>,
        }
        let (verdict, open_to) = self.verdict.json();
        let scoped = self
            .scoped
            .iter()
            .map(|s| {
                let (verdict, open_to) = s.verdict.json();
                serde_json::json!({"rule": s.rule, "on": s.scoping.on, "to": s.scoping.to,
                                   "verdict": verdict, "open_to": open_to, "hook": s.hook})
            })
            .collect();
        Out {
            container: &self.container,
            compose_project: self.compose_project.as_deref(),
            compose_service: self.compose_service.as_deref(),
            host_ip: host_ip_text(self.host_ip),
            host_port: self.host_port,
            container_port: self.container_port,
            proto: proto_name(self.proto),
            networks: &self.networks,
            verdict,
            open_to,
            rules: &self.rules,
            scoped,
        }
        .serialize(serializer)
    }
}

fn host_ip_text(ip: Option<IpAddr>) -> String {
    ip.map_or_else(|| "0.0.0.0".to_string(), |ip| ip.to_string())
}

impl Verdict {
    /// The JSON `verdict` and `open_to`.
    fn json(&self) -> (&'static str, Vec<String>) {
        match self {
            Verdict::Open => ("open", vec![]),
            Verdict::OpenTo(nets) => ("open_to", nets.iter().map(ToString::to_string).collect()),
            Verdict::Blocked => ("blocked", vec![]),
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Open => f.write_str("open"),
            Verdict::Blocked => f.write_str("blocked"),
            Verdict::OpenTo(nets) => {
                let nets: Vec<String> = nets.iter().map(ToString::to_string).collect();
                write!(f, "open to {}", nets.join(", "))
            }
        }
    }
}

/// The table `ports` prints: one line per published port, columns aligned.
pub fn table(ports: &[PublishedPort]) -> String {
    let mut rows =
        vec![["HOST", "CONTAINER", "PORT", "SERVICE", "NETWORKS", "VERDICT", "RULES"].map(String::from)];
    for p in ports {
        let host = match p.host_ip {
            Some(IpAddr::V6(ip)) => format!("[{ip}]:{}", p.host_port),
            ip => format!("{}:{}", host_ip_text(ip), p.host_port),
        };
        let service = match (&p.compose_project, &p.compose_service) {
            (Some(project), Some(service)) => format!("{project}/{service}"),
            (Some(project), None) => project.clone(),
            _ => "-".into(),
        };
        let rules: Vec<String> = p.rules.iter().map(ToString::to_string).collect();
        rows.push([
            host,
            p.container.clone(),
            format!("{}/{}", p.container_port, proto_name(p.proto)),
            service,
            if p.networks.is_empty() { "-".into() } else { p.networks.join(",") },
            // "open; blocked at xdp on eth1": what scoped rules do there
            // ("blocked at veth on eth1": a Docker rule with --on).
            std::iter::once(p.verdict.to_string())
                .chain(p.scoped.iter().map(|s| format!("{} at {}{}", s.verdict, s.hook, s.scoping)))
                .collect::<Vec<_>>()
                .join("; "),
            if rules.is_empty() { "-".into() } else { rules.join(",") },
        ]);
    }
    let widths: Vec<usize> = (0..7).map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::fixtures::*;

    fn verdicts(rules: &[Rule], s: &Snapshot) -> Vec<(u16, String, Vec<u32>)> {
        published(rules, s).into_iter().map(|p| (p.host_port, p.verdict.to_string(), p.rules)).collect()
    }

    fn v(port: u16, verdict: &str, rules: &[u32]) -> (u16, String, Vec<u32>) {
        (port, verdict.to_string(), rules.to_vec())
    }

    fn shop() -> Snapshot {
        snapshot([
            running(2, "shop-web-1")
                .publish("18080:80")
                .label("com.docker.compose.project", "shop")
                .label("com.docker.compose.service", "web"),
            running(3, "db").publish("13306:3306"),
            running(4, "old").publish("19999:80").stopped(),
        ])
    }

    #[test]
    fn no_rules_everything_open_and_stopped_containers_publish_nothing() {
        assert_eq!(verdicts(&[], &shop()), [v(13306, "open", &[]), v(18080, "open", &[])]);
    }

    #[test]
    fn targeted_and_plain_rules_decide() {
        let s = shop();
        assert_eq!(
            verdicts(&[block(1, name("db"), "every")], &s),
            [v(13306, "blocked", &[1]), v(18080, "open", &[])]
        );
        let rules = [from(block(1, compose("shop", None), "80/tcp"), &["10.0.0.0/8"])];
        assert_eq!(verdicts(&rules, &s)[1], v(18080, "open to 10.0.0.0/8", &[1]));
        assert_eq!(verdicts(&[dialed(5, "13306/tcp")], &s)[0], v(13306, "blocked", &[5]), "user dialed rule");
        assert_eq!(verdicts(&[container_port(6, "3306")], &s)[0], v(13306, "blocked", &[6]), "bridge slot");
        let mut dry = block(1, name("db"), "every");
        dry.options.dry_run = true;
        assert_eq!(verdicts(&[dry], &s)[0], v(13306, "open", &[1]), "a dry run drops nothing");
    }

    #[test]
    fn bridge_and_veth_both_judge_the_path() {
        let s = shop();
        let rules = [
            from(container_port(1, "3306/tcp"), &["10.0.0.0/8", "192.0.2.0/24"]),
            from(block(2, name("db"), "3306/tcp"), &["10.1.0.0/16", "198.51.100.0/24"]),
        ];
        assert_eq!(verdicts(&rules, &s)[0], v(13306, "open to 10.1.0.0/16", &[1, 2]));
        let rules = [from(container_port(1, "3306/tcp"), &["10.0.0.0/8"]), block(2, name("db"), "3306/tcp")];
        assert_eq!(verdicts(&rules, &s)[0], v(13306, "blocked", &[1, 2]));
    }

    #[test]
    fn policy_and_allow() {
        let s = shop();
        assert_eq!(verdicts(&[policy(1)], &s), [v(13306, "blocked", &[1]), v(18080, "blocked", &[1])]);
        let rules = [policy(1), allow(2, compose("shop", Some("web")), "every")];
        assert_eq!(verdicts(&rules, &s), [v(13306, "blocked", &[1]), v(18080, "open", &[1, 2])]);
        let rules = [policy(1), from(allow_dialed(2, "18080/tcp"), &["203.0.113.0/24"])];
        assert_eq!(verdicts(&rules, &s)[1], v(18080, "open to 203.0.113.0/24", &[1, 2]));
        // An explicit block beats the allow.
        let rules =
            [policy(1), allow(2, compose("shop", None), "every"), block(3, name("shop-web-1"), "80/tcp")];
        assert_eq!(verdicts(&rules, &s)[1], v(18080, "blocked", &[1, 2, 3]));
    }

    #[test]
    fn json_shape_is_stable() {
        let s = shop();
        let ports = published(&[from(block(7, compose("shop", None), "every"), &["10.0.0.0/8"])], &s);
        let json = serde_json::to_value(&ports).unwrap();
        assert_eq!(
            json[1],
            serde_json::json!({
                "container": "shop-web-1", "compose_project": "shop", "compose_service": "web",
                "host_ip": "0.0.0.0", "host_port": 18080, "container_port": 80, "proto": "tcp",
                "networks": ["bridge"], "verdict": "open_to", "open_to": ["10.0.0.0/8"], "rules": [7]
            })
        );
        assert_eq!(json[0]["verdict"], "open");
        assert_eq!(json[0]["compose_project"], serde_json::Value::Null);
        assert_eq!(json[0]["open_to"], serde_json::json!([]));
    }

    #[test]
    fn scoped_dialed_rules_are_listed_apart_and_never_open_the_path() {
        let s = shop();
        let mut on = dialed(5, "13306/tcp");
        on.options.scoping = Scoping::parse(&["eth1".into()], &["198.18.160.1".into()]).unwrap();
        let ports = published(&[on], &s);
        assert_eq!(ports[0].verdict, Verdict::Open, "the path without XDP");
        assert_eq!(ports[0].scoped.len(), 1);
        assert_eq!(ports[0].scoped[0].verdict, Verdict::Blocked);
        let json = serde_json::to_value(&ports).unwrap();
        assert_eq!(
            json[0]["scoped"],
            serde_json::json!([{"rule": 5, "on": ["eth1"], "to": ["198.18.160.1"], "verdict": "blocked", "open_to": [], "hook": "xdp"}])
        );
        assert!(json[1].get("scoped").is_none(), "absent without scoped rules");
        assert!(table(&ports).contains("open; blocked at xdp on eth1 to 198.18.160.1"), "{}", table(&ports));
    }

    #[test]
    fn an_on_container_port_rule_is_listed_at_the_bridge_for_its_interfaces() {
        let s = shop();
        let mut on = container_port(5, "3306/tcp");
        on.options.scoping = Scoping::parse(&["eth1".into()], &[]).unwrap();
        let ports = published(&[on.clone()], &s);
        let db = ports.iter().find(|p| p.container == "db").unwrap();
        assert_eq!(db.verdict, Verdict::Open, "from other interfaces");
        assert_eq!(
            (db.scoped.len(), db.scoped[0].hook, db.scoped[0].verdict.clone()),
            (1, "bridge", Verdict::Blocked)
        );
        assert!(table(&ports).contains("open; blocked at bridge on eth1"), "{}", table(&ports));
        // With --to it closes on every interface at the bridge: in the verdict.
        on.options.scoping = Scoping::parse(&["eth1".into()], &["198.18.160.1".into()]).unwrap();
        let ports = published(&[on], &s);
        let db = ports.iter().find(|p| p.container == "db").unwrap();
        assert_eq!((db.verdict.clone(), db.scoped.len()), (Verdict::Blocked, 0));
    }

    #[test]
    fn host_addresses_are_rows_of_their_own() {
        let s = snapshot([running(2, "web").publish("127.0.0.1:18080:80").publish("[::]:18080:80/udp")]);
        let ports = published(&[], &s);
        let hosts: Vec<String> = ports.iter().map(|p| host_ip_text(p.host_ip)).collect();
        assert_eq!(hosts, ["127.0.0.1", "::"]);
    }

    #[test]
    fn the_ipv6_binding_is_a_row_with_the_same_verdict() {
        // Docker 20.10 on a host with IPv6: `-p 18090:80` is 0.0.0.0 and ::.
        let s = snapshot([running(2, "web").publish("18090:80").publish("[::]:18090:80")]);
        let ports = published(&[block(1, name("web"), "every")], &s);
        let rows: Vec<(String, String)> =
            ports.iter().map(|p| (host_ip_text(p.host_ip), p.verdict.to_string())).collect();
        assert_eq!(rows, [("0.0.0.0".into(), "blocked".into()), ("::".into(), "blocked".into())]);
        assert!(
            table(&ports).lines().any(|l| l.split_whitespace().take(2).eq(["[::]:18090", "web"])),
            "{}",
            table(&ports)
        );
    }

    #[test]
    fn table_aligns_columns() {
        let s = shop();
        let text = table(&published(&[policy(1), allow(2, compose("shop", None), "every")], &s));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], "HOST           CONTAINER   PORT      SERVICE   NETWORKS  VERDICT  RULES");
        assert_eq!(lines[1], "0.0.0.0:13306  db          3306/tcp  -         bridge    blocked  1");
        assert_eq!(lines[2], "0.0.0.0:18080  shop-web-1  80/tcp    shop/web  bridge    open     1,2");
    }

    #[test]
    fn an_on_docker_rule_is_listed_at_the_veth_for_its_interfaces() {
        let s = shop();
        let mut on = block(5, name("db"), "3306/tcp");
        on.options.scoping = Scoping::parse(&["eth1".into(), "eth2".into()], &[]).unwrap();
        let ports = published(&[on.clone()], &s);
        let db = ports.iter().find(|p| p.container == "db").unwrap();
        assert_eq!(db.verdict, Verdict::Open, "from other interfaces");
        assert_eq!(db.scoped.len(), 1, "one line for both interfaces: {:?}", db.scoped);
        assert_eq!((db.scoped[0].hook, db.scoped[0].verdict.clone()), ("veth", Verdict::Blocked));
        assert!(table(&ports).contains("open; blocked at veth on eth1,eth2"), "{}", table(&ports));
        // With --to it closes on every interface: in the verdict.
        on.options.scoping = Scoping::parse(&[], &["198.18.160.1".into()]).unwrap();
        let ports = published(&[on], &s);
        let db = ports.iter().find(|p| p.container == "db").unwrap();
        assert_eq!((db.verdict.clone(), db.scoped.len()), (Verdict::Blocked, 0));
    }
}
