//! Scoping of a rule, as iptables users know it from `-i` and `-d`:
//! `--on IFACE` (only packets that came in on these interfaces) and
//! `--to ADDR` (only packets addressed to this host address).
//!
//! Interface names are kept as the user gave them (in the catalog,
//! `RULE_SCOPES`) and resolved to ifindexes at every commit and resync, so
//! a renamed or re-created interface is picked up by the next one. Which
//! hook can judge what:
//! - XDP (dialed ports): both, it sees the ingress interface and the
//!   dialed (pre-DNAT) address.
//! - The veth hook (Docker rules): `--on`, by `skb->ingress_ifindex`
//!   (`VETH_SCOPED_RULES`, made by `translate`); `--to` cannot be judged
//!   after DNAT, so a rule with `--to` closes there for every interface
//!   and address (fail closed) and outranks no other rule.
//! - Bridge TC (plain container-port rules): `--on`, by
//!   `skb->ingress_ifindex` (`SCOPED_RULES` keys without an address);
//!   `--to` cannot be judged after DNAT, so a rule with `--to` is unscoped
//!   there: it closes for every interface and address (fail closed).

use std::{fmt, net::IpAddr};

use dockblock_common::{scope_kind, IFNAME_MAX};
use serde::Serialize;

use crate::{
    addr,
    error::{Error, Result},
    rules::Scope,
};

/// Where a rule applies; empty lists mean everywhere (an unscoped rule).
/// Both lists sorted, no duplicates, so equal scopings compare equal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Scoping {
    /// Ingress interfaces, by name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub on: Vec<String>,
    /// Host addresses the packet must be addressed to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<IpAddr>,
}

/// An interface index and a destination (IPv4-mapped) of a `SCOPED_RULES`
/// key; 0 and all zeros mean any.
pub type ScopeKey = (u32, [u8; 16]);

impl Scoping {
    /// Checks and normalises `--on`/`--to` values (syntax only: whether an
    /// interface exists is asked by the verbs, [`Scoping::check_interfaces`]).
    pub fn parse(on: &[String], to: &[String]) -> Result<Self> {
        let mut scoping = Scoping::default();
        for name in on {
            check_name(name)?;
            scoping.on.push(name.clone());
        }
        for text in to {
            scoping.to.push(parse_host_addr(text)?);
        }
        Ok(scoping.normalised())
    }

    pub fn normalised(mut self) -> Self {
        self.on.sort();
        self.on.dedup();
        self.to.sort();
        self.to.dedup();
        self
    }

    pub fn is_empty(&self) -> bool {
        self.on.is_empty() && self.to.is_empty()
    }

    /// Whether the port tables of `scope` judge this scoping (else the rule
    /// is unscoped there). XDP (dialed ports) judges both `--on` and `--to`;
    /// the bridge (container ports, after DNAT: the dialed address is gone)
    /// judges `--on` alone, so a rule with `--to` closes there for every
    /// interface, as at the veth (whose `--on` is `translate`'s).
    pub fn is_scoped_at(&self, scope: Scope) -> bool {
        match scope {
            Scope::Dialed => !self.is_empty(),
            Scope::Container => !self.on.is_empty() && self.to.is_empty(),
        }
    }

    /// Refuses a name no interface has now: most likely a typo, and a rule
    /// on it would protect nothing. (Rule files are not asked: a saved set
    /// restored at boot may name an interface that comes up later.)
    pub fn check_interfaces(&self) -> Result<()> {
        match self.on.iter().find(|n| ifindex(n).is_none()) {
            None => Ok(()),
            Some(name) => Err(Error::BadArgument {
                what: "--on",
                value: name.clone(),
                why: "no interface has this name (see `ip link`); add the rule once it exists".into(),
            }),
        }
    }

    /// The `SCOPED_RULES` keys of the rule at the hook of `scope`, with
    /// names resolved by `resolve`: `None` when it is not scoped there. An
    /// interface that does not exist gets no key (no packet comes in on
    /// it), so a rule only on missing interfaces has none.
    pub fn keys(&self, scope: Scope, resolve: &dyn Fn(&str) -> Option<u32>) -> Option<Vec<ScopeKey>> {
        if !self.is_scoped_at(scope) {
            return None;
        }
        let ifindexes: Vec<u32> = match self.on.is_empty() {
            true => vec![0],
            false => self.on.iter().filter_map(|n| resolve(n)).collect(),
        };
        let addrs: Vec<[u8; 16]> = match !self.to.is_empty() {
            true => self.to.iter().map(|a| addr::mapped_addr(*a)).collect(),
            false => vec![[0; 16]],
        };
        Some(ifindexes.iter().flat_map(|i| addrs.iter().map(move |a| (*i, *a))).collect())
    }

    /// The catalog entries (`RULE_SCOPES`): (kind, value).
    pub fn entries(&self) -> Vec<(u32, [u8; 16])> {
        let names = self.on.iter().map(|n| {
            let mut value = [0u8; 16];
            value[..n.len()].copy_from_slice(n.as_bytes());
            (scope_kind::ON, value)
        });
        names.chain(self.to.iter().map(|a| (scope_kind::TO, addr::mapped_addr(*a)))).collect()
    }

    /// Adds one catalog entry; `None` for one this version cannot read.
    pub fn add_entry(&mut self, kind: u32, value: [u8; 16]) -> Option<()> {
        match kind {
            scope_kind::ON => {
                let len = value.iter().position(|b| *b == 0).unwrap_or(value.len());
                let name = std::str::from_utf8(&value[..len]).ok()?;
                check_name(name).ok()?;
                self.on.push(name.into());
            }
            scope_kind::TO => self.to.push(addr::addr_from_mapped(value)),
            _ => return None,
        }
        Some(())
    }
}

impl fmt::Display for Scoping {
    /// ` on eth1,eth2 to 198.18.160.1` (empty for an unscoped rule).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.on.is_empty() {
            write!(f, " on {}", self.on.join(","))?;
        }
        if !self.to.is_empty() {
            let to: Vec<String> = self.to.iter().map(IpAddr::to_string).collect();
            write!(f, " to {}", to.join(","))?;
        }
        Ok(())
    }
}

/// The interface's index now, in this network namespace.
pub fn ifindex(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated string; the call only reads it.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// What the kernel accepts as an interface name (`dev_valid_name`).
fn check_name(name: &str) -> Result<()> {
    let bad = |why: &str| Error::BadArgument { what: "--on", value: name.into(), why: why.into() };
    if name.is_empty() || name.len() > IFNAME_MAX {
        return Err(bad("an interface name has 1 to 15 bytes"));
    }
    if name == "." || name == ".." || name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        return Err(bad("not an interface name"));
    }
    Ok(())
}

/// A host address: one IPv4 or IPv6 address, not a network, not
/// unspecified, not multicast or broadcast (no packet is addressed to the
/// host so that a port rule would see it).
pub fn parse_host_addr(text: &str) -> Result<IpAddr> {
    let bad = |why: &str| Error::BadArgument { what: "--to", value: text.into(), why: why.into() };
    let addr: IpAddr = text.parse().map_err(|_| bad("not an IPv4 or IPv6 address"))?;
    let broadcast = matches!(addr, IpAddr::V4(v4) if v4.is_broadcast());
    if addr.is_unspecified() || addr.is_multicast() || broadcast {
        return Err(bad("not a host address (unspecified, multicast or broadcast)"));
    }
    // `::ffff:a.b.c.d` is the IPv4 address in the datapath's form: one rule.
    Ok(addr::addr_from_mapped(addr::mapped_addr(addr)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parse_normalises_and_refuses_what_is_not_an_interface_or_an_address() {
        let s =
            Scoping::parse(&strings(&["eth1", "eth0", "eth1"]), &strings(&["198.18.160.1", "2001:db8::1"]))
                .unwrap();
        assert_eq!(s.on, ["eth0", "eth1"]);
        assert_eq!(s.to.len(), 2);
        assert_eq!(s.to_string(), " on eth0,eth1 to 198.18.160.1,2001:db8::1");
        let mapped = Scoping::parse(&[], &strings(&["::ffff:198.18.160.1"])).unwrap();
        assert_eq!(mapped.to, ["198.18.160.1".parse::<IpAddr>().unwrap()], "one family per address");
        for bad in ["", "a/b", "sixteen-bytes-xx", "..", "a b"] {
            let err = Scoping::parse(&strings(&[bad]), &[]).unwrap_err();
            assert!(err.to_string().contains("--on"), "{bad}: {err}");
        }
        for bad in ["198.18.160.0/24", "eth0", "0.0.0.0", "::", "224.0.0.1", "255.255.255.255", "1.2.3"] {
            let err = Scoping::parse(&[], &strings(&[bad])).unwrap_err();
            assert!(err.to_string().contains("--to"), "{bad}: {err}");
        }
    }

    #[test]
    fn interfaces_that_do_not_exist_are_refused_by_the_verbs() {
        assert!(Scoping::parse(&strings(&["lo"]), &[]).unwrap().check_interfaces().is_ok());
        let err = Scoping::parse(&strings(&["dbt-sc-nope"]), &[]).unwrap().check_interfaces().unwrap_err();
        assert!(err.to_string().contains("no interface has this name"), "{err}");
    }

    #[test]
    fn keys_per_hook() {
        let resolve = |n: &str| match n {
            "eth1" => Some(7),
            "eth2" => Some(9),
            _ => None,
        };
        let a = addr::mapped_addr("198.18.160.1".parse().unwrap());
        let both = Scoping::parse(&strings(&["eth1", "eth2", "gone"]), &strings(&["198.18.160.1"])).unwrap();
        assert_eq!(both.keys(Scope::Dialed, &resolve), Some(vec![(7, a), (9, a)]));
        assert_eq!(both.keys(Scope::Container, &resolve), None, "--to at the bridge: unscoped");
        let on = Scoping::parse(&strings(&["eth1", "eth2", "gone"]), &[]).unwrap();
        assert_eq!(on.keys(Scope::Container, &resolve), Some(vec![(7, [0; 16]), (9, [0; 16])]), "--on alone");
        let to = Scoping::parse(&[], &strings(&["198.18.160.1"])).unwrap();
        assert_eq!(to.keys(Scope::Dialed, &resolve), Some(vec![(0, a)]));
        assert_eq!(to.keys(Scope::Container, &resolve), None, "--to is not judged after DNAT: unscoped");
        let gone = Scoping::parse(&strings(&["gone"]), &[]).unwrap();
        assert_eq!(gone.keys(Scope::Dialed, &resolve), Some(vec![]), "no packet comes in on it");
        assert_eq!(Scoping::default().keys(Scope::Dialed, &resolve), None);
    }

    #[test]
    fn catalog_entries_round_trip() {
        let s = Scoping::parse(
            &strings(&["eth1", "br-0123456789ab"]),
            &strings(&["2001:db8::7", "198.18.160.1"]),
        )
        .unwrap();
        let mut back = Scoping::default();
        for (kind, value) in s.entries() {
            back.add_entry(kind, value).unwrap();
        }
        assert_eq!(back.normalised(), s);
        assert_eq!(Scoping::default().add_entry(9, [0; 16]), None);
    }
}
