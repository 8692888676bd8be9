//! Port specs in Docker's syntax: `80/tcp`, `53/udp`, `30000-30010/tcp`, and
//! `8080` for both TCP and UDP.

use std::fmt;

use dockblock_common::proto;

use crate::error::{Error, Result};

/// A parsed port spec: an inclusive port range and a set of protocols.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortSpec {
    pub lo: u16,
    pub hi: u16,
    /// Bitmask of `proto::bit`.
    pub protos: u32,
}

pub const ALL_PROTOS: u32 = proto::bit(proto::TCP) | proto::bit(proto::UDP);

impl PortSpec {
    /// Every port, TCP and UDP: "every published port" of a Docker rule.
    pub const EVERY: PortSpec = PortSpec { lo: 1, hi: 65535, protos: ALL_PROTOS };

    pub fn parse(spec: &str) -> Result<Self> {
        let bad = |why: &str| Error::BadPortSpec { spec: spec.to_string(), why: why.to_string() };
        if spec.contains(',') {
            return Err(bad("give one spec per argument, e.g. `block 80/tcp 443/tcp`"));
        }
        let (ports, protos) = match spec.split_once('/') {
            Some((ports, name)) => {
                (ports, proto_from_name(name).ok_or_else(|| bad("protocol must be tcp or udp"))?)
            }
            None => (spec, ALL_PROTOS),
        };
        let (lo, hi) = match ports.split_once('-') {
            Some((lo, hi)) => (parse_port(lo).map_err(bad)?, parse_port(hi).map_err(bad)?),
            None => {
                let port = parse_port(ports).map_err(bad)?;
                (port, port)
            }
        };
        if lo > hi {
            return Err(bad("range start is above its end"));
        }
        Ok(Self { lo, hi, protos })
    }

    /// Whether this spec covers any (protocol, port) of `other`.
    pub fn overlaps(&self, other: &PortSpec) -> bool {
        self.protos & other.protos != 0 && self.lo <= other.hi && other.lo <= self.hi
    }

    pub fn ports(&self) -> std::ops::RangeInclusive<u16> {
        self.lo..=self.hi
    }

    pub fn port_count(&self) -> u32 {
        u32::from(self.hi - self.lo) + 1
    }

    /// Protocol indexes in the spec, TCP first.
    pub fn protos(&self) -> impl Iterator<Item = u32> + '_ {
        [proto::TCP, proto::UDP].into_iter().filter(|p| self.protos & proto::bit(*p) != 0)
    }
}

/// Prints the spec back in the syntax it was parsed from.
impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ports = if self.lo == self.hi { self.lo.to_string() } else { format!("{}-{}", self.lo, self.hi) };
        let proto = match self.protos {
            ALL_PROTOS => "",
            p if p == proto::bit(proto::TCP) => "/tcp",
            _ => "/udp",
        };
        // pad, not write: tables align it with `{:<16}`.
        f.pad(&format!("{ports}{proto}"))
    }
}

pub fn proto_name(proto: u32) -> &'static str {
    if proto == proto::TCP {
        "tcp"
    } else {
        "udp"
    }
}

fn proto_from_name(name: &str) -> Option<u32> {
    match name.to_ascii_lowercase().as_str() {
        "tcp" => Some(proto::bit(proto::TCP)),
        "udp" => Some(proto::bit(proto::UDP)),
        _ => None,
    }
}

fn parse_port(text: &str) -> std::result::Result<u16, &'static str> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err("ports are numbers from 1 to 65535");
    }
    match text.parse::<u32>() {
        Ok(port @ 1..=65535) => Ok(port as u16),
        _ => Err("ports are numbers from 1 to 65535"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: u32 = 1 << proto::TCP;
    const UDP: u32 = 1 << proto::UDP;

    #[test]
    fn parses_docker_syntax() {
        assert_eq!(PortSpec::parse("3306/tcp").unwrap(), PortSpec { lo: 3306, hi: 3306, protos: TCP });
        assert_eq!(PortSpec::parse("53/udp").unwrap(), PortSpec { lo: 53, hi: 53, protos: UDP });
        assert_eq!(
            PortSpec::parse("30000-30010/tcp").unwrap(),
            PortSpec { lo: 30000, hi: 30010, protos: TCP }
        );
        assert_eq!(PortSpec::parse("8080").unwrap(), PortSpec { lo: 8080, hi: 8080, protos: TCP | UDP });
        assert_eq!(PortSpec::parse("1-65535/UDP").unwrap(), PortSpec { lo: 1, hi: 65535, protos: UDP });
    }

    #[test]
    fn rejects_bad_specs_with_a_reason() {
        for (spec, why) in [
            ("0/tcp", "1 to 65535"),
            ("70000/tcp", "1 to 65535"),
            ("20-10/tcp", "above its end"),
            ("80/icmp", "tcp or udp"),
            ("", "1 to 65535"),
            ("80/", "tcp or udp"),
            ("-80", "1 to 65535"),
            ("+80", "1 to 65535"),
            ("8o", "1 to 65535"),
            ("1-2-3", "1 to 65535"),
            ("80/tcp,81/tcp", "one spec per argument"),
        ] {
            let err = PortSpec::parse(spec).unwrap_err().to_string();
            assert!(err.contains(why), "{spec}: {err}");
            assert!(err.contains(&format!("`{spec}`")), "{spec}: {err}");
        }
    }

    #[test]
    fn display_round_trips() {
        for spec in ["3306/tcp", "53/udp", "30000-30010/tcp", "8080", "1-65535"] {
            assert_eq!(PortSpec::parse(spec).unwrap().to_string(), spec);
        }
    }

    #[test]
    fn overlap() {
        let a = PortSpec::parse("100-200/tcp").unwrap();
        assert!(a.overlaps(&PortSpec::parse("200").unwrap()));
        assert!(!a.overlaps(&PortSpec::parse("150/udp").unwrap()));
        assert!(!a.overlaps(&PortSpec::parse("201-300").unwrap()));
    }
}
