//! A small frame builder for `explain`, the datapath tests, the fuzz and the
//! benchmark: Ethernet, IPv4 (with options
//! and fragment fields) or IPv6 (with extension headers), VLAN tags, TCP or
//! UDP. Every field a test might bend is a
//! builder method; `build` lays out the bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use dockblock_common::net::{
    ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP,
    IPPROTO_UDP, IPV6_AUTH, IPV6_DEST_OPTS, IPV6_FRAGMENT, IPV6_HOP_BY_HOP, IPV6_ROUTING,
    TCP_ACK as ACK, TCP_FIN as FIN, TCP_PSH as PSH, TCP_RST as RST, TCP_SYN as SYN,
};

#[derive(Clone, Debug)]
pub struct Packet {
    /// VLAN tags, outermost first: (TPID, VLAN id).
    vlans: Vec<(u16, u16)>,
    ether_type: u16,
    src: IpAddr,
    dst: IpAddr,
    /// IPv6 extension headers, in order: (kind, length in 8-byte units
    /// beyond the first 8).
    ext: Vec<(u8, u8)>,
    version: u8,
    /// IPv4 header length in 32-bit words (5 = no options).
    ihl: u8,
    /// Fragment offset in 8-byte units.
    frag_offset: u16,
    more_fragments: bool,
    /// IP identification (IPv4: the low 16 bits; IPv6: the fragment
    /// header's); None: 0x1234 (IPv4) or 0x5678 (IPv6).
    frag_id: Option<u32>,
    proto: u8,
    sport: u16,
    dport: u16,
    tcp_flags: u8,
    payload: Vec<u8>,
}

impl Packet {
    pub fn tcp(dport: u16, flags: u8) -> Self {
        Self {
            vlans: vec![],
            ether_type: ETH_P_IP,
            src: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)),
            dst: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
            ext: vec![],
            version: 4,
            ihl: 5,
            frag_offset: 0,
            more_fragments: false,
            frag_id: None,
            proto: IPPROTO_TCP,
            sport: 40000,
            dport,
            tcp_flags: flags,
            payload: vec![],
        }
    }

    pub fn syn(dport: u16) -> Self {
        Self::tcp(dport, SYN)
    }

    pub fn udp(dport: u16) -> Self {
        Self { proto: IPPROTO_UDP, tcp_flags: 0, ..Self::tcp(dport, 0) }
    }

    /// Switches to IPv6 (ether type, version, addresses 2001:db8::2 -> ::1).
    pub fn v6(mut self) -> Self {
        self.ether_type = ETH_P_IPV6;
        self.version = 6;
        self.src = "2001:db8::2".parse().unwrap();
        self.dst = "2001:db8::1".parse().unwrap();
        self
    }

    /// Sets the source address (and the family with it).
    pub fn src(self, src: &str) -> Self {
        let src: IpAddr = src.parse().expect("an IP address");
        let packet = if src.is_ipv6() && !self.src.is_ipv6() { self.v6() } else { self };
        Self { src, ..packet }
    }

    pub fn dst(mut self, dst: &str) -> Self {
        self.dst = dst.parse().expect("an IP address");
        self
    }

    /// Adds a VLAN tag (outermost first).
    pub fn vlan(mut self, tpid: u16, vid: u16) -> Self {
        self.vlans.push((tpid, vid));
        self
    }

    /// Adds an IPv6 extension header of `kind` and `extra` 8-byte units.
    pub fn ext(mut self, kind: u8, extra: u8) -> Self {
        self.ext.push((kind, extra));
        self
    }

    pub fn ip_proto(mut self, proto: u8) -> Self {
        self.proto = proto;
        self
    }

    pub fn sport(mut self, sport: u16) -> Self {
        self.sport = sport;
        self
    }

    pub fn ether_type(mut self, ether_type: u16) -> Self {
        self.ether_type = ether_type;
        self
    }

    pub fn ip_version(mut self, version: u8) -> Self {
        self.version = version;
        self
    }

    /// Sets the IPv4 header length field as is (even below 5).
    pub fn ihl(mut self, words: u8) -> Self {
        self.ihl = words;
        self
    }

    pub fn fragment(mut self, offset_units: u16, more: bool) -> Self {
        self.frag_offset = offset_units;
        self.more_fragments = more;
        self
    }

    /// The datagram's identification, the part of the fragment key a test
    /// varies to tell datagrams apart.
    pub fn frag_id(mut self, id: u32) -> Self {
        self.frag_id = Some(id);
        self
    }

    pub fn payload(mut self, bytes: &[u8]) -> Self {
        self.payload = bytes.to_vec();
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let l4 = self.l4();
        let ip = match (self.src, self.dst) {
            (IpAddr::V6(src), IpAddr::V6(dst)) => self.ipv6(src, dst, &l4),
            (IpAddr::V4(src), IpAddr::V4(dst)) => self.ipv4(src, dst, &l4),
            _ => panic!("source and destination of different families"),
        };
        let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        for (tpid, vid) in &self.vlans {
            frame.extend_from_slice(&tpid.to_be_bytes());
            frame.extend_from_slice(&vid.to_be_bytes());
        }
        frame.extend_from_slice(&self.ether_type.to_be_bytes());
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&l4);
        frame
    }

    fn l4(&self) -> Vec<u8> {
        let mut l4 = match self.proto {
            IPPROTO_TCP => {
                let mut h = vec![0u8; 20];
                h[0..2].copy_from_slice(&self.sport.to_be_bytes());
                h[2..4].copy_from_slice(&self.dport.to_be_bytes());
                h[12] = 5 << 4;
                h[13] = self.tcp_flags;
                h[14..16].copy_from_slice(&64240u16.to_be_bytes());
                h
            }
            IPPROTO_UDP => {
                let mut h = vec![0u8; 8];
                h[0..2].copy_from_slice(&self.sport.to_be_bytes());
                h[2..4].copy_from_slice(&self.dport.to_be_bytes());
                h[4..6].copy_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                h
            }
            // ICMP echo request, or 8 opaque bytes for other protocols.
            _ => vec![8, 0, 0, 0, 0, 1, 0, 1],
        };
        l4.extend_from_slice(&self.payload);
        l4
    }

    fn ipv4(&self, src: Ipv4Addr, dst: Ipv4Addr, l4: &[u8]) -> Vec<u8> {
        // Options are NOPs; a header shorter than 20 bytes is still laid out
        // as 20 so the test controls only the field, not the buffer.
        let ip_len = usize::from(self.ihl.max(5)) * 4;
        let mut ip = vec![1u8; ip_len];
        ip[0] = (self.version << 4) | (self.ihl & 0x0f);
        ip[1] = 0;
        ip[2..4].copy_from_slice(&((ip_len + l4.len()) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&(self.frag_id.unwrap_or(0x1234) as u16).to_be_bytes());
        let frag = (u16::from(self.more_fragments) << 13) | (self.frag_offset & 0x1fff);
        ip[6..8].copy_from_slice(&frag.to_be_bytes());
        ip[8] = 64;
        ip[9] = self.proto;
        ip[10..12].copy_from_slice(&[0, 0]);
        ip[12..16].copy_from_slice(&src.octets());
        ip[16..20].copy_from_slice(&dst.octets());
        let csum = checksum(&ip);
        ip[10..12].copy_from_slice(&csum.to_be_bytes());
        ip
    }

    /// The IPv6 header and extension headers; a fragment header is added
    /// when `fragment` was set.
    fn ipv6(&self, src: Ipv6Addr, dst: Ipv6Addr, l4: &[u8]) -> Vec<u8> {
        let mut chain = self.ext.clone();
        if self.frag_offset != 0 || self.more_fragments {
            chain.push((IPV6_FRAGMENT, 0));
        }
        let mut ext = Vec::new();
        for (i, (kind, extra)) in chain.iter().enumerate() {
            let next = chain.get(i + 1).map_or(self.proto, |(k, _)| *k);
            let mut h = match *kind {
                IPV6_FRAGMENT => {
                    let field = (self.frag_offset << 3) | u16::from(self.more_fragments);
                    let mut h = vec![next, 0, 0, 0, 0, 0, 0, 0];
                    h[2..4].copy_from_slice(&field.to_be_bytes());
                    h[4..8].copy_from_slice(&self.frag_id.unwrap_or(0x5678).to_be_bytes());
                    h
                }
                // AH counts its length in 4-byte units, minus 2.
                IPV6_AUTH => {
                    let mut h = vec![0u8; 8 + usize::from(*extra) * 8];
                    h[1] = (h.len() / 4 - 2) as u8;
                    h
                }
                _ => {
                    let mut h = vec![0u8; 8 + usize::from(*extra) * 8];
                    h[1] = *extra;
                    h
                }
            };
            h[0] = next;
            ext.extend_from_slice(&h);
        }
        let first = chain.first().map_or(self.proto, |(k, _)| *k);
        let mut ip = vec![0u8; 40];
        ip[0] = self.version << 4;
        ip[4..6].copy_from_slice(&((ext.len() + l4.len()) as u16).to_be_bytes());
        ip[6] = first;
        ip[7] = 64;
        ip[8..24].copy_from_slice(&src.octets());
        ip[24..40].copy_from_slice(&dst.octets());
        ip.extend_from_slice(&ext);
        ip
    }
}

/// Internet checksum (RFC 1071).
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 =
        bytes.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lays_out_a_tcp_syn() {
        let p = Packet::syn(3306).build();
        assert_eq!(p.len(), 14 + 20 + 20);
        assert_eq!(&p[12..14], &[0x08, 0x00]);
        assert_eq!(p[14], 0x45);
        assert_eq!(p[23], IPPROTO_TCP);
        assert_eq!(&p[36..38], &3306u16.to_be_bytes());
        assert_eq!(p[47], SYN);
        assert_eq!(checksum(&p[14..34]), 0, "header checksum verifies");
    }

    #[test]
    fn options_move_the_transport_header() {
        let p = Packet::udp(53).ihl(15).build();
        assert_eq!(p.len(), 14 + 60 + 8);
        assert_eq!(p[14], 0x4f);
        assert_eq!(&p[14 + 60 + 2..14 + 60 + 4], &53u16.to_be_bytes());
    }

    #[test]
    fn ipv6_with_extension_headers_and_vlans() {
        let p = Packet::syn(443)
            .v6()
            .vlan(ETH_P_8021AD, 10)
            .vlan(ETH_P_8021Q, 20)
            .ext(IPV6_HOP_BY_HOP, 0)
            .ext(IPV6_DEST_OPTS, 1)
            .build();
        assert_eq!(&p[12..14], &ETH_P_8021AD.to_be_bytes());
        assert_eq!(&p[16..18], &ETH_P_8021Q.to_be_bytes());
        assert_eq!(&p[20..22], &ETH_P_IPV6.to_be_bytes());
        let ip = 22;
        assert_eq!(p[ip] >> 4, 6);
        assert_eq!(p[ip + 6], IPV6_HOP_BY_HOP);
        assert_eq!(p[ip + 40], IPV6_DEST_OPTS, "hop-by-hop points at dest opts");
        assert_eq!(p[ip + 48], IPPROTO_TCP, "dest opts points at tcp");
        assert_eq!(p[ip + 49], 1);
        let tcp = ip + 40 + 8 + 16;
        assert_eq!(&p[tcp + 2..tcp + 4], &443u16.to_be_bytes());
        assert_eq!(p.len(), tcp + 20);
    }

    #[test]
    fn fragment_fields() {
        let p = Packet::syn(1).fragment(185, true).build();
        assert_eq!(u16::from_be_bytes([p[20], p[21]]), 0x2000 | 185);
    }
}
