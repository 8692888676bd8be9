//! A small frame builder for `explain`, the datapath tests, the fuzz and the
//! benchmark: Ethernet, VLAN tags, IPv4 (with options and fragment fields)
//! or IPv6 (with extension headers), TCP (flags, options), UDP, ICMP or
//! ICMPv6 (echo, or an error quoting another packet). Every field a test
//! might bend is a builder method; `build` lays out the bytes, with valid
//! IPv4 header and TCP/UDP/ICMP checksums.
//!
//! Attack frames: [`Packet::fragments`] splits the datagram into real
//! fragments at given byte offsets; [`Packet::ip_len`] overrides the IPv4
//! total length or IPv6 payload length; [`Packet::padding`] adds bytes after
//! the IP datagram (Ethernet padding, or a header the parser must not read).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use dockblock_common::net::{
    ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP,
    IPPROTO_UDP, IPV6_AUTH, IPV6_DEST_OPTS, IPV6_FRAGMENT, IPV6_HOP_BY_HOP, IPV6_ROUTING, TCP_ACK as ACK,
    TCP_FIN as FIN, TCP_PSH as PSH, TCP_RST as RST, TCP_SYN as SYN, TCP_URG as URG,
};

/// TCP ECN-echo flag (byte 13).
pub const ECE: u8 = 0x40;
/// TCP congestion window reduced flag (byte 13).
pub const CWR: u8 = 0x80;

/// ICMP destination unreachable, code port unreachable.
const ICMP_DEST_UNREACH: (u8, u8) = (3, 3);
/// ICMPv6 destination unreachable, code port unreachable.
const ICMPV6_DEST_UNREACH: (u8, u8) = (1, 4);
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;

/// IPv6 extension headers: (kind, length in 8-byte units beyond the first 8).
type Chain = Vec<(u8, u8)>;

#[derive(Clone, Debug)]
pub struct Packet {
    /// VLAN tags, outermost first: (TPID, VLAN id).
    vlans: Vec<(u16, u16)>,
    ether_type: u16,
    src: IpAddr,
    dst: IpAddr,
    /// IPv6 extension headers, in order. A fragment header is added at the end unless
    /// the chain names one (`ext(IPV6_FRAGMENT, 0)`): headers after it are
    /// in the fragmentable part.
    ext: Chain,
    version: u8,
    /// IPv4 header length in 32-bit words (5 = no options).
    ihl: u8,
    /// Fragment offset in 8-byte units.
    frag_offset: u16,
    more_fragments: bool,
    /// IP identification (IPv4: the low 16 bits; IPv6: the fragment
    /// header's); None: 0x1234 (IPv4) or 0x5678 (IPv6).
    frag_id: Option<u32>,
    /// IPv4 total length or IPv6 payload length, as is; None: computed.
    ip_len: Option<u16>,
    proto: u8,
    sport: u16,
    dport: u16,
    tcp_flags: u8,
    /// TCP options, padded with zeros (end of options) to 4 bytes.
    tcp_options: Vec<u8>,
    /// TCP data offset field, as is; None: from the options.
    tcp_data_offset: Option<u8>,
    /// ICMP/ICMPv6 error (type, code) quoting the IP datagram in `payload`.
    icmp_error: Option<(u8, u8)>,
    payload: Vec<u8>,
    /// Bytes after the IP datagram.
    padding: Vec<u8>,
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
            ip_len: None,
            proto: IPPROTO_TCP,
            sport: 40000,
            dport,
            tcp_flags: flags,
            tcp_options: vec![],
            tcp_data_offset: None,
            icmp_error: None,
            payload: vec![],
            padding: vec![],
        }
    }

    pub fn syn(dport: u16) -> Self {
        Self::tcp(dport, SYN)
    }

    pub fn udp(dport: u16) -> Self {
        Self { proto: IPPROTO_UDP, tcp_flags: 0, ..Self::tcp(dport, 0) }
    }

    /// An ICMP (IPv4) or ICMPv6 "port unreachable" error about `inner`, as
    /// the host `inner` was sent to would answer: from `inner`'s
    /// destination to its source, quoting its IP datagram whole.
    pub fn icmp_error(inner: &Packet) -> Self {
        let quoted = inner.ip_datagram();
        let (proto, kind) = if inner.is_v6() {
            (IPPROTO_ICMPV6, ICMPV6_DEST_UNREACH)
        } else {
            (IPPROTO_ICMP, ICMP_DEST_UNREACH)
        };
        let base = if inner.is_v6() { Self::tcp(0, 0).v6() } else { Self::tcp(0, 0) };
        Self { src: inner.dst, dst: inner.src, proto, icmp_error: Some(kind), payload: quoted, ..base }
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

    /// Switches an IPv4 packet to IPv6 from its source mapped into
    /// `::ffff:0:0/96` (to 2001:db8::1), as an attacker would try to pass
    /// an IPv4 allow-list entry.
    pub fn v4_mapped_src(self) -> Self {
        let IpAddr::V4(v4) = self.src else { panic!("v4_mapped_src needs an IPv4 source") };
        let packet = self.v6();
        Self { src: IpAddr::V6(v4.to_ipv6_mapped()), ..packet }
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
    /// `ext(IPV6_FRAGMENT, _)` places the fragment header (its fields come
    /// from `fragment` or `fragments`); headers added after it are in the
    /// fragmentable part.
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

    pub fn dport(mut self, dport: u16) -> Self {
        self.dport = dport;
        self
    }

    /// Sets every TCP flag bit (byte 13) as given.
    pub fn tcp_flags(mut self, flags: u8) -> Self {
        self.tcp_flags = flags;
        self
    }

    /// TCP options (raw bytes, padded with zeros to a multiple of 4); the
    /// data offset grows with them.
    pub fn tcp_options(mut self, options: &[u8]) -> Self {
        self.tcp_options = options.to_vec();
        self
    }

    /// The TCP data offset field (header length in 32-bit words), as is.
    pub fn tcp_data_offset(mut self, words: u8) -> Self {
        self.tcp_data_offset = Some(words);
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

    /// Sets the IPv4 total length or the IPv6 payload length field as is
    /// (the bytes laid out do not change).
    pub fn ip_len(mut self, len: u16) -> Self {
        self.ip_len = Some(len);
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

    /// Bytes after the IP datagram, in `build` and in every fragment: what
    /// a NIC pads short frames with, or a header hidden where the IP
    /// lengths say the datagram has ended.
    pub fn padding(mut self, bytes: &[u8]) -> Self {
        self.padding = bytes.to_vec();
        self
    }

    fn is_v6(&self) -> bool {
        self.src.is_ipv6()
    }

    pub fn build(&self) -> Vec<u8> {
        let mut frame = self.l2();
        frame.extend_from_slice(&self.ip_datagram());
        frame.extend_from_slice(&self.padding);
        frame
    }

    /// The datagram split into real fragments at `splits`, byte offsets
    /// into the fragmentable part (IPv4: the transport header on; IPv6:
    /// what follows the fragment header), ascending multiples of 8. Every
    /// fragment has the datagram's id, its offset, MF on all but the last,
    /// its own IPv4 total length and checksum or IPv6 payload length. The
    /// transport checksum is the whole datagram's. `fragments(&[8])` puts
    /// the first 8 bytes of the TCP header alone in the first fragment.
    /// Set fields (`fragment`, `ip_len`) are ignored.
    pub fn fragments(&self, splits: &[usize]) -> Vec<Vec<u8>> {
        let named = self.ext.iter().any(|(k, _)| *k == IPV6_FRAGMENT);
        let this = if self.is_v6() && !named { self.clone().ext(IPV6_FRAGMENT, 0) } else { self.clone() };
        let (unfrag, part) = this.fragmentable();
        let mut bounds = vec![0];
        bounds.extend_from_slice(splits);
        bounds.push(part.len());
        for pair in bounds.windows(2) {
            assert!(pair[0] < pair[1], "split points must ascend inside the datagram: {splits:?}");
            assert!(pair[0] % 8 == 0, "fragment offsets are in 8-byte units: {splits:?}");
        }
        bounds
            .windows(2)
            .enumerate()
            .map(|(i, pair)| {
                let more = i + 2 < bounds.len();
                let piece = &part[pair[0]..pair[1]];
                let units = (pair[0] / 8) as u16;
                let fragment =
                    Self { frag_offset: units, more_fragments: more, ip_len: None, ..this.clone() };
                let mut frame = self.l2();
                frame.extend_from_slice(&fragment.ip_header(&unfrag, piece));
                frame.extend_from_slice(piece);
                frame.extend_from_slice(&self.padding);
                frame
            })
            .collect()
    }

    /// Ethernet and VLAN headers.
    fn l2(&self) -> Vec<u8> {
        let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        for (tpid, vid) in &self.vlans {
            frame.extend_from_slice(&tpid.to_be_bytes());
            frame.extend_from_slice(&vid.to_be_bytes());
        }
        frame.extend_from_slice(&self.ether_type.to_be_bytes());
        frame
    }

    /// The IP datagram: header(s) and the fragmentable part.
    fn ip_datagram(&self) -> Vec<u8> {
        let (unfrag, part) = self.fragmentable();
        let mut ip = self.ip_header(&unfrag, &part);
        ip.extend_from_slice(&part);
        ip
    }

    /// IPv6: the extension headers before the fragment header (empty for
    /// IPv4), and the fragmentable part: the extension headers after it
    /// and the transport message.
    fn fragmentable(&self) -> (Vec<u8>, Vec<u8>) {
        let l4 = self.l4();
        if !self.is_v6() {
            return (vec![], l4);
        }
        let (before, after) = self.chain_split();
        let mut part = self.ext_bytes(&after, self.proto);
        part.extend_from_slice(&l4);
        let after_first = after.first().map_or(self.proto, |(k, _)| *k);
        let first = if self.has_frag_header() { IPV6_FRAGMENT } else { after_first };
        (self.ext_bytes(&before, first), part)
    }

    fn has_frag_header(&self) -> bool {
        self.ext.iter().any(|(k, _)| *k == IPV6_FRAGMENT) || self.frag_offset != 0 || self.more_fragments
    }

    /// The extension headers before and after the (first) fragment header,
    /// which is in neither. Without one named in the chain, all come before.
    fn chain_split(&self) -> (Chain, Chain) {
        match self.ext.iter().position(|(k, _)| *k == IPV6_FRAGMENT) {
            Some(at) => (self.ext[..at].to_vec(), self.ext[at + 1..].to_vec()),
            None => (self.ext.clone(), vec![]),
        }
    }

    /// Extension headers laid out in order, the last pointing at `last_next`.
    fn ext_bytes(&self, chain: &[(u8, u8)], last_next: u8) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, (kind, extra)) in chain.iter().enumerate() {
            let next = chain.get(i + 1).map_or(last_next, |(k, _)| *k);
            let mut h = match *kind {
                IPV6_FRAGMENT => self.frag_header(next),
                // AH counts its length in 4-byte units, minus 2.
                IPV6_AUTH => {
                    let mut h = vec![0u8; 8 + usize::from(*extra) * 8];
                    h[1] = (h.len() / 4 - 2) as u8;
                    h
                }
                // Options all Pad1 (zero bytes).
                _ => {
                    let mut h = vec![0u8; 8 + usize::from(*extra) * 8];
                    h[1] = *extra;
                    h
                }
            };
            h[0] = next;
            out.extend_from_slice(&h);
        }
        out
    }

    fn frag_header(&self, next: u8) -> Vec<u8> {
        let field = (self.frag_offset << 3) | u16::from(self.more_fragments);
        let mut h = vec![next, 0, 0, 0, 0, 0, 0, 0];
        h[2..4].copy_from_slice(&field.to_be_bytes());
        h[4..8].copy_from_slice(&self.frag_id.unwrap_or(0x5678).to_be_bytes());
        h
    }

    /// The IP header (IPv6: with the extension headers `unfrag` and, when
    /// fragmented, the fragment header) for a fragmentable part of
    /// `part.len()` bytes.
    fn ip_header(&self, unfrag: &[u8], part: &[u8]) -> Vec<u8> {
        match (self.src, self.dst) {
            (IpAddr::V6(src), IpAddr::V6(dst)) => self.ipv6(src, dst, unfrag, part),
            (IpAddr::V4(src), IpAddr::V4(dst)) => self.ipv4(src, dst, part),
            _ => panic!("source and destination of different families"),
        }
    }

    /// The transport message with its checksum.
    fn l4(&self) -> Vec<u8> {
        let mut l4 = match self.proto {
            IPPROTO_TCP => {
                let mut options = self.tcp_options.clone();
                options.resize(options.len().div_ceil(4) * 4, 0);
                let mut h = vec![0u8; 20];
                h[0..2].copy_from_slice(&self.sport.to_be_bytes());
                h[2..4].copy_from_slice(&self.dport.to_be_bytes());
                let words = self.tcp_data_offset.unwrap_or((5 + options.len() / 4) as u8);
                h[12] = words << 4;
                h[13] = self.tcp_flags;
                h[14..16].copy_from_slice(&64240u16.to_be_bytes());
                h.extend_from_slice(&options);
                h
            }
            IPPROTO_UDP => {
                let mut h = vec![0u8; 8];
                h[0..2].copy_from_slice(&self.sport.to_be_bytes());
                h[2..4].copy_from_slice(&self.dport.to_be_bytes());
                h[4..6].copy_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                h
            }
            IPPROTO_ICMP | IPPROTO_ICMPV6 => match self.icmp_error {
                Some((kind, code)) => vec![kind, code, 0, 0, 0, 0, 0, 0],
                None if self.proto == IPPROTO_ICMPV6 => vec![ICMPV6_ECHO_REQUEST, 0, 0, 0, 0, 1, 0, 1],
                None => vec![ICMP_ECHO_REQUEST, 0, 0, 0, 0, 1, 0, 1],
            },
            // 8 opaque bytes for other protocols (an ICMP echo request, as
            // before checksums were set).
            _ => vec![ICMP_ECHO_REQUEST, 0, 0, 0, 0, 1, 0, 1],
        };
        l4.extend_from_slice(&self.payload);
        let at = match self.proto {
            IPPROTO_TCP => 16,
            IPPROTO_UDP => 6,
            IPPROTO_ICMP | IPPROTO_ICMPV6 => 2,
            _ => return l4,
        };
        let csum = match self.proto {
            // ICMPv4 has no pseudo-header.
            IPPROTO_ICMP => checksum(&l4),
            _ => checksum(&[self.pseudo_header(l4.len()), l4.clone()].concat()),
        };
        // UDP sends a computed 0 as all ones (0 means "no checksum").
        let csum = if self.proto == IPPROTO_UDP && csum == 0 { 0xffff } else { csum };
        l4[at..at + 2].copy_from_slice(&csum.to_be_bytes());
        l4
    }

    fn pseudo_header(&self, len: usize) -> Vec<u8> {
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let mut p = [src.octets(), dst.octets()].concat();
                p.extend_from_slice(&[0, self.proto]);
                p.extend_from_slice(&(len as u16).to_be_bytes());
                p
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let mut p = [src.octets(), dst.octets()].concat();
                p.extend_from_slice(&(len as u32).to_be_bytes());
                p.extend_from_slice(&[0, 0, 0, self.proto]);
                p
            }
            _ => vec![],
        }
    }

    fn ipv4(&self, src: Ipv4Addr, dst: Ipv4Addr, part: &[u8]) -> Vec<u8> {
        // Options are NOPs; a header shorter than 20 bytes is still laid out
        // as 20 so the test controls only the field, not the buffer.
        let ip_len = usize::from(self.ihl.max(5)) * 4;
        let mut ip = vec![1u8; ip_len];
        ip[0] = (self.version << 4) | (self.ihl & 0x0f);
        ip[1] = 0;
        let tot_len = self.ip_len.unwrap_or((ip_len + part.len()) as u16);
        ip[2..4].copy_from_slice(&tot_len.to_be_bytes());
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

    /// The IPv6 header, the extension headers `unfrag` and, when
    /// fragmented, the fragment header.
    fn ipv6(&self, src: Ipv6Addr, dst: Ipv6Addr, unfrag: &[u8], part: &[u8]) -> Vec<u8> {
        let (before, after) = self.chain_split();
        let mut ext = unfrag.to_vec();
        if self.has_frag_header() {
            ext.extend_from_slice(&self.frag_header(after.first().map_or(self.proto, |(k, _)| *k)));
        }
        let first = before
            .first()
            .map_or(if self.has_frag_header() { IPV6_FRAGMENT } else { self.proto }, |(k, _)| *k);
        let mut ip = vec![0u8; 40];
        ip[0] = self.version << 4;
        let payload_len = self.ip_len.unwrap_or((ext.len() + part.len()) as u16);
        ip[4..6].copy_from_slice(&payload_len.to_be_bytes());
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
        assert_eq!(p[46], 5 << 4, "data offset");
        assert_eq!(p[47], SYN);
        assert_eq!(checksum(&p[14..34]), 0, "header checksum verifies");
    }

    /// The transport checksum verifies over the pseudo-header.
    fn l4_checksum_ok(src: &[u8], dst: &[u8], proto: u8, l4: &[u8]) -> bool {
        let mut p = [src, dst].concat();
        if src.len() == 4 {
            p.extend_from_slice(&[0, proto]);
            p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        } else {
            p.extend_from_slice(&(l4.len() as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, proto]);
        }
        p.extend_from_slice(l4);
        checksum(&p) == 0
    }

    #[test]
    fn transport_checksums_verify() {
        let p = Packet::syn(80).payload(b"hello").build();
        assert!(l4_checksum_ok(&p[26..30], &p[30..34], IPPROTO_TCP, &p[34..]));
        let p = Packet::udp(53).payload(b"query").build();
        assert!(l4_checksum_ok(&p[26..30], &p[30..34], IPPROTO_UDP, &p[34..]));
        let p = Packet::udp(53).v6().ext(IPV6_HOP_BY_HOP, 0).payload(b"q").build();
        assert!(l4_checksum_ok(&p[22..38], &p[38..54], IPPROTO_UDP, &p[14 + 48..]));
        let p = Packet::syn(80).ip_proto(IPPROTO_ICMP).build();
        assert_eq!(checksum(&p[34..]), 0, "icmp echo");
    }

    #[test]
    fn options_move_the_transport_header() {
        let p = Packet::udp(53).ihl(15).build();
        assert_eq!(p.len(), 14 + 60 + 8);
        assert_eq!(p[14], 0x4f);
        assert_eq!(&p[14 + 60 + 2..14 + 60 + 4], &53u16.to_be_bytes());
    }

    #[test]
    fn tcp_options_set_the_data_offset() {
        // MSS 1460, SACK permitted (6 bytes, padded to 8).
        let p = Packet::syn(443).tcp_options(&[2, 4, 0x05, 0xb4, 4, 2]).build();
        assert_eq!(p.len(), 14 + 20 + 28);
        assert_eq!(p[46] >> 4, 7);
        assert_eq!(&p[54..62], &[2, 4, 0x05, 0xb4, 4, 2, 0, 0]);
        assert_eq!(u16::from_be_bytes([p[16], p[17]]), 48, "total length counts the options");
        assert!(l4_checksum_ok(&p[26..30], &p[30..34], IPPROTO_TCP, &p[34..]));
        let p = Packet::syn(443).tcp_data_offset(15).tcp_flags(SYN | ECE | CWR | URG).build();
        assert_eq!((p[46], p[47]), (15 << 4, 0xe2));
    }

    #[test]
    fn ip_length_override_and_padding() {
        let p = Packet::syn(3306).ip_len(20).build();
        assert_eq!(p.len(), 14 + 20 + 20, "the bytes stay");
        assert_eq!(u16::from_be_bytes([p[16], p[17]]), 20);
        assert_eq!(checksum(&p[14..34]), 0);
        let p = Packet::udp(53).v6().ip_len(1000).build();
        assert_eq!(u16::from_be_bytes([p[18], p[19]]), 1000);
        let p = Packet::udp(53).padding(&[0; 18]).build();
        assert_eq!(p.len(), 60);
        assert_eq!(u16::from_be_bytes([p[16], p[17]]), 28, "padding is outside the datagram");
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
        assert_eq!(u16::from_be_bytes([p[ip + 4], p[ip + 5]]), 8 + 16 + 20);
    }

    #[test]
    fn fragment_fields() {
        let p = Packet::syn(1).fragment(185, true).build();
        assert_eq!(u16::from_be_bytes([p[20], p[21]]), 0x2000 | 185);
        // IPv6: a fragment header at the end of the chain.
        let p = Packet::udp(1).v6().ext(IPV6_HOP_BY_HOP, 0).fragment(3, false).frag_id(9).build();
        assert_eq!(p[14 + 6], IPV6_HOP_BY_HOP);
        assert_eq!(p[14 + 40], IPV6_FRAGMENT);
        let f = 14 + 48;
        assert_eq!(p[f], IPPROTO_UDP);
        assert_eq!(u16::from_be_bytes([p[f + 2], p[f + 3]]), 3 << 3);
        assert_eq!(u32::from_be_bytes([p[f + 4], p[f + 5], p[f + 6], p[f + 7]]), 9);
    }

    #[test]
    fn ipv4_fragments_split_the_tcp_header() {
        let p = Packet::syn(3306).frag_id(77).payload(&[7; 12]);
        let frags = p.fragments(&[8, 24]);
        assert_eq!(frags.len(), 3);
        let whole = p.build();
        let mut joined = Vec::new();
        for (i, (f, (offset, len))) in frags.iter().zip([(0, 8), (1, 16), (3, 8)]).enumerate() {
            assert_eq!(f.len(), 14 + 20 + len, "fragment {i}");
            assert_eq!(u16::from_be_bytes([f[16], f[17]]) as usize, 20 + len, "total length {i}");
            assert_eq!(u16::from_be_bytes([f[18], f[19]]), 77, "id {i}");
            let field = u16::from_be_bytes([f[20], f[21]]);
            assert_eq!(field & 0x1fff, offset, "offset {i}");
            assert_eq!(field & 0x2000 != 0, i < 2, "MF {i}");
            assert_eq!(checksum(&f[14..34]), 0, "header checksum {i}");
            joined.extend_from_slice(&f[34..]);
        }
        assert_eq!(joined, whole[34..], "the pieces are the datagram");
        assert_eq!(&frags[0][36..38], &3306u16.to_be_bytes(), "ports in the first");
    }

    #[test]
    fn ipv6_fragments_keep_the_unfragmentable_part_and_chain() {
        let p = Packet::syn(3306)
            .v6()
            .ext(IPV6_HOP_BY_HOP, 0)
            .ext(IPV6_FRAGMENT, 0)
            .ext(IPV6_DEST_OPTS, 0)
            .frag_id(0xabcd);
        let whole = p.build();
        // Whole: hop-by-hop -> fragment (atomic) -> dest opts -> tcp.
        assert_eq!(whole[14 + 6], IPV6_HOP_BY_HOP);
        assert_eq!(whole[14 + 40], IPV6_FRAGMENT);
        assert_eq!(whole[14 + 48], IPV6_DEST_OPTS);
        assert_eq!(whole[14 + 56], IPPROTO_TCP);
        let frags = p.fragments(&[8]);
        assert_eq!(frags.len(), 2);
        for (i, f) in frags.iter().enumerate() {
            let ip = 14;
            assert_eq!(f[ip + 6], IPV6_HOP_BY_HOP, "{i}");
            assert_eq!(f[ip + 40], IPV6_FRAGMENT, "{i}");
            let fh = ip + 48;
            assert_eq!(f[fh], IPV6_DEST_OPTS, "fragment header names the first fragmentable header {i}");
            let field = u16::from_be_bytes([f[fh + 2], f[fh + 3]]);
            assert_eq!((field >> 3, field & 1), if i == 0 { (0, 1) } else { (1, 0) }, "{i}");
            assert_eq!(u32::from_be_bytes([f[fh + 4], f[fh + 5], f[fh + 6], f[fh + 7]]), 0xabcd);
            let payload_len = u16::from_be_bytes([f[ip + 4], f[ip + 5]]) as usize;
            assert_eq!(payload_len, f.len() - ip - 40, "payload length {i}");
        }
        assert_eq!(frags[0].len(), 14 + 40 + 8 + 8 + 8, "first: only the dest opts");
        assert_eq!(&frags[1][14 + 56..], &whole[14 + 64..], "second: the tcp header");
    }

    #[test]
    fn icmp_errors_quote_the_inner_datagram() {
        let inner = Packet::udp(3306).src("198.18.0.1").dst("198.18.0.9");
        let p = Packet::icmp_error(&inner).build();
        assert_eq!(p[23], IPPROTO_ICMP);
        assert_eq!(&p[26..30], &[198, 18, 0, 9], "from the inner destination");
        assert_eq!(&p[30..34], &[198, 18, 0, 1]);
        assert_eq!((p[34], p[35]), (3, 3));
        assert_eq!(&p[42..], &inner.build()[14..], "quotes the whole datagram");
        assert_eq!(checksum(&p[34..]), 0);
        let inner6 = Packet::syn(3306).v6();
        let p = Packet::icmp_error(&inner6).build();
        assert_eq!((p[20], p[54], p[55]), (IPPROTO_ICMPV6, 1, 4));
        assert!(l4_checksum_ok(&p[22..38], &p[38..54], IPPROTO_ICMPV6, &p[54..]));
        assert_eq!(&p[62..], &inner6.build()[14..]);
    }

    #[test]
    fn v4_mapped_source() {
        let p = Packet::syn(22).src("203.0.113.9").v4_mapped_src().build();
        assert_eq!(&p[12..14], &ETH_P_IPV6.to_be_bytes());
        assert_eq!(&p[22..38], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 203, 0, 113, 9]);
    }
}
