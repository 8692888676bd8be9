//! A container's own `dockblock.*` labels: a rule that travels with its
//! container (`docker run -l dockblock.block=3306/tcp`, compose files too).
//!
//! - `dockblock.block`: comma list of container port specs, or `all`.
//! - `dockblock.allow-from`: comma list of addresses or CIDR networks.
//! - `dockblock.from-containers`: `true` or `false`.
//!
//! A value that does not parse gives a [`Warning`] naming the container and
//! the label, and no rule from that container's labels at all: a half-read
//! label set could open what the author meant to keep closed only to some.

use ipnet::IpNet;
use serde::Serialize;

use crate::{
    docker::snapshot::{Container, ALLOW_FROM_LABEL, BLOCK_LABEL, FROM_CONTAINERS_LABEL},
    ports::PortSpec,
    rulefile::parse_net,
    target::{too_wide, MAX_RANGE},
};

const EVERY: PortSpec = PortSpec::EVERY;

/// A label the daemon could not use; it logs it, the CLI prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// The container's name.
    pub container: String,
    pub label: String,
    pub why: String,
}

/// What a container's labels ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelRule {
    /// Container ports, deduplicated, in label order; `all` is `[EVERY]`.
    pub ports: Vec<PortSpec>,
    pub allow_from: Vec<IpNet>,
    pub from_containers: bool,
}

/// Reads `c`'s `dockblock.*` labels: `Ok(None)` when it has none that
/// make a rule, `Err` with one warning per bad label. Labels other than
/// `block` without `block` are a warning too (they would do nothing).
pub fn parse(c: &Container) -> Result<Option<LabelRule>, Vec<Warning>> {
    let warn =
        |label: &str, why: String| Warning { container: c.name.clone(), label: label.to_string(), why };
    let mut warnings = Vec::new();
    let ports = c.labels.get(BLOCK_LABEL).map(|v| block_ports(v)).transpose();
    let allow_from = c.labels.get(ALLOW_FROM_LABEL).map(|v| allow_list(v)).transpose();
    let from_containers = c.labels.get(FROM_CONTAINERS_LABEL).map(|v| boolean(v)).transpose();
    let ports = ports.unwrap_or_else(|why| {
        warnings.push(warn(BLOCK_LABEL, why));
        None
    });
    let allow_from = allow_from.unwrap_or_else(|why| {
        warnings.push(warn(ALLOW_FROM_LABEL, why));
        None
    });
    let from_containers = from_containers.unwrap_or_else(|why| {
        warnings.push(warn(FROM_CONTAINERS_LABEL, why));
        None
    });
    if !c.labels.contains_key(BLOCK_LABEL) {
        for label in
            [ALLOW_FROM_LABEL, FROM_CONTAINERS_LABEL].into_iter().filter(|l| c.labels.contains_key(*l))
        {
            warnings.push(warn(label, format!("has no effect without {BLOCK_LABEL}")));
        }
    }
    if !warnings.is_empty() {
        return Err(warnings);
    }
    Ok(ports.map(|ports| LabelRule {
        ports,
        allow_from: allow_from.unwrap_or_default(),
        from_containers: from_containers.unwrap_or(false),
    }))
}

fn items(value: &str) -> Result<Vec<&str>, String> {
    let items: Vec<&str> = value.split(',').map(str::trim).collect();
    if items.iter().any(|i| i.is_empty()) {
        return Err(format!("`{value}`: empty item in the comma list"));
    }
    Ok(items)
}

fn block_ports(value: &str) -> Result<Vec<PortSpec>, String> {
    let mut ports = Vec::new();
    for item in items(value)? {
        let spec = if item.eq_ignore_ascii_case("all") {
            EVERY
        } else {
            PortSpec::parse(item).map_err(|e| e.to_string())?
        };
        if too_wide(&spec) {
            return Err(format!(
                "`{item}` covers {} ports; a container rule takes at most {MAX_RANGE}, or `all`",
                spec.port_count()
            ));
        }
        if !ports.contains(&spec) {
            ports.push(spec);
        }
    }
    // `all` covers the rest.
    if ports.contains(&EVERY) {
        ports = vec![EVERY];
    }
    Ok(ports)
}

fn allow_list(value: &str) -> Result<Vec<IpNet>, String> {
    items(value)?
        .into_iter()
        .map(|item| {
            parse_net(item).map_err(|_| {
                format!("`{item}` is not an address or CIDR network (203.0.113.0/24, 2001:db8::/32)")
            })
        })
        .collect()
}

fn boolean(value: &str) -> Result<bool, String> {
    match value.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!("`{other}`: expected true or false")),
    }
}

#[cfg(test)]
mod tests {
    use dockblock_common::proto;

    use super::*;

    fn container(labels: &[(&str, &str)]) -> Container {
        Container {
            id: "ab".repeat(32),
            name: "db".into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        }
    }

    fn spec(s: &str) -> PortSpec {
        PortSpec::parse(s).unwrap()
    }

    #[test]
    fn no_labels_no_rule() {
        assert_eq!(parse(&container(&[("other", "x")])), Ok(None));
    }

    #[test]
    fn block_list_allow_list_and_from_containers() {
        let c = container(&[
            (BLOCK_LABEL, "3306/tcp, 53/udp,3306/tcp,9000-9010"),
            (ALLOW_FROM_LABEL, "10.0.0.0/8,2001:db8::/32, 192.0.2.7"),
            (FROM_CONTAINERS_LABEL, "true"),
        ]);
        let rule = parse(&c).unwrap().unwrap();
        assert_eq!(
            rule.ports,
            [spec("3306/tcp"), spec("53/udp"), spec("9000-9010")],
            "deduplicated, in order"
        );
        let nets: Vec<String> = rule.allow_from.iter().map(ToString::to_string).collect();
        assert_eq!(nets, ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32"]);
        assert!(rule.from_containers);
    }

    #[test]
    fn all_is_every_port_and_absorbs_the_rest() {
        for value in ["all", "ALL", "80/tcp,all", "1-65535"] {
            let rule = parse(&container(&[(BLOCK_LABEL, value)])).unwrap().unwrap();
            assert_eq!(rule.ports, [EVERY], "{value}");
            assert_eq!(EVERY.protos, proto::bit(proto::TCP) | proto::bit(proto::UDP));
        }
        let rule =
            parse(&container(&[(BLOCK_LABEL, "all"), (FROM_CONTAINERS_LABEL, "false")])).unwrap().unwrap();
        assert!(!rule.from_containers);
    }

    #[test]
    fn bad_values_warn_naming_container_and_label_and_give_no_rule() {
        for (labels, label, why) in [
            (vec![(BLOCK_LABEL, "3306/tcpx")], BLOCK_LABEL, "tcp or udp"),
            (vec![(BLOCK_LABEL, "80,,81")], BLOCK_LABEL, "empty item"),
            (vec![(BLOCK_LABEL, "")], BLOCK_LABEL, "empty item"),
            (vec![(BLOCK_LABEL, "1000-3000/tcp")], BLOCK_LABEL, "at most 1024"),
            (vec![(BLOCK_LABEL, "1-65535/tcp")], BLOCK_LABEL, "at most 1024"),
            (
                vec![(BLOCK_LABEL, "80"), (ALLOW_FROM_LABEL, "10.0.0.0/33")],
                ALLOW_FROM_LABEL,
                "not an address",
            ),
            (
                vec![(BLOCK_LABEL, "80"), (FROM_CONTAINERS_LABEL, "yes")],
                FROM_CONTAINERS_LABEL,
                "true or false",
            ),
            (vec![(ALLOW_FROM_LABEL, "10.0.0.0/8")], ALLOW_FROM_LABEL, "without dockblock.block"),
            (vec![(FROM_CONTAINERS_LABEL, "true")], FROM_CONTAINERS_LABEL, "without dockblock.block"),
        ] {
            let warnings = parse(&container(&labels)).unwrap_err();
            assert_eq!(warnings.len(), 1, "{labels:?}: {warnings:?}");
            assert_eq!(warnings[0].container, "db");
            assert_eq!(warnings[0].label, label);
            assert!(warnings[0].why.contains(why), "{labels:?}: {}", warnings[0].why);
        }
    }

    #[test]
    fn every_bad_label_is_reported() {
        let c = container(&[(BLOCK_LABEL, "x"), (ALLOW_FROM_LABEL, "y"), (FROM_CONTAINERS_LABEL, "z")]);
        let labels: Vec<String> = parse(&c).unwrap_err().into_iter().map(|w| w.label).collect();
        assert_eq!(labels, [BLOCK_LABEL, ALLOW_FROM_LABEL, FROM_CONTAINERS_LABEL]);
    }
}
