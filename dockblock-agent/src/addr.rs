//! The datapath keeps every address as 16 bytes, IPv4 mapped into IPv6
//! (`::ffff:a.b.c.d`), so one LPM trie and one event layout serve both
//! families. These are the conversions, in one place.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Bits the IPv4-mapped prefix `::ffff:0:0/96` adds to an IPv4 prefix.
const V4_MAPPED_BITS: u32 = 96;

/// A network as (mapped address, prefix length on 128 bits).
pub fn to_mapped(net: &IpNet) -> ([u8; 16], u32) {
    match net {
        IpNet::V4(v4) => {
            (v4.network().to_ipv6_mapped().octets(), V4_MAPPED_BITS + u32::from(v4.prefix_len()))
        }
        IpNet::V6(v6) => (v6.network().octets(), u32::from(v6.prefix_len())),
    }
}

/// The inverse of [`to_mapped`]; `None` for a prefix length out of range.
pub fn from_mapped(addr: [u8; 16], prefix_len: u32) -> Option<IpNet> {
    let v6 = Ipv6Addr::from(addr);
    match v6.to_ipv4_mapped() {
        Some(v4) if prefix_len >= V4_MAPPED_BITS => {
            Ipv4Net::new(v4, (prefix_len - V4_MAPPED_BITS) as u8).ok().map(IpNet::V4)
        }
        _ => Ipv6Net::new(v6, u8::try_from(prefix_len).ok()?).ok().map(IpNet::V6),
    }
}

/// An address as the datapath stores it, back in its own family.
pub fn addr_from_mapped(addr: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(addr);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

/// An address in the datapath's form.
pub fn mapped_addr(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_round_trip() {
        for net in ["203.0.113.0/24", "0.0.0.0/0", "10.1.2.3/32", "2001:db8::/32", "::/0", "::1/128"] {
            let net: IpNet = net.parse().unwrap();
            let (addr, len) = to_mapped(&net);
            assert_eq!(from_mapped(addr, len), Some(net));
        }
        assert_eq!(to_mapped(&"203.0.113.0/24".parse().unwrap()).1, 120);
        let a: IpAddr = "198.18.0.2".parse().unwrap();
        assert_eq!(addr_from_mapped(mapped_addr(a)), a);
    }
}
