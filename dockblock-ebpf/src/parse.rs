//! Header parsing, one helper per header. Rules of use:
//! - every read goes through [`Cursor::read`], which checks the bounds the
//!   verifier needs before it hands out a reference;
//! - a parser returns what the next layer needs, or a [`Reject`] saying why
//!   the packet is not judged. Nothing here decides a verdict.
//!
//! Walks: up to two VLAN tags (802.1Q, 802.1ad/QinQ), IPv4 with any header
//! length, IPv6 with up to [`IPV6_EXT_MAX`] extension headers, then TCP/UDP.

use core::mem::size_of;

use dockblock_common::proto;
use network_types::{eth::EthHdr, ip::Ipv4Hdr, ip::Ipv6Hdr, tcp::TcpHdr, udp::UdpHdr};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const VLAN_TAGS_MAX: usize = 2;
const VLAN_TAG_LEN: usize = 4;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AUTH: u8 = 51;
const IPV6_DEST_OPTS: u8 = 60;
/// Extension headers walked before giving up (counted as unparsed).
pub const IPV6_EXT_MAX: usize = 8;

/// IPv4 `frags` field: "more fragments" flag and offset bits.
const IP_MF: u16 = 0x2000;
const IP_OFFSET_MASK: u16 = 0x1fff;

/// Why a packet is not judged.
pub enum Reject {
    /// Not IP TCP/UDP, or more tags/extension headers than we walk.
    Unparsed,
    /// Truncated, or an IPv4 header length below 20 bytes.
    Malformed,
}

/// Where a packet stands in fragmentation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Frag {
    /// Not a fragment.
    Whole,
    /// Offset 0 with more to come: carries the ports.
    First { id: u32 },
    /// Offset > 0: no transport header. `last` when no more follow.
    Later { id: u32, last: bool },
}

/// The transport facts the verdict needs.
pub struct L4 {
    /// One of `dockblock_common::proto`.
    pub proto: u32,
    pub sport: u16,
    pub dport: u16,
    /// Whether the packet opens a new connection: a TCP SYN without ACK, or
    /// any UDP datagram (UDP replies are told apart by the flow map).
    pub is_new: bool,
}

/// What the parser learned: addresses (IPv4 mapped into IPv6), IP protocol,
/// fragment state, and the ports unless this is a later fragment.
pub struct Facts {
    pub family: u32,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub ip_proto: u8,
    pub frag: Frag,
    pub l4: Option<L4>,
}

/// A bounds-checked view of the packet bytes `[start, end)`.
pub struct Cursor {
    start: usize,
    end: usize,
}

impl Cursor {
    #[inline(always)]
    pub fn new(start: usize, end: usize) -> Self {
        Self { start, end }
    }

    /// The `T` at byte `offset`, if it lies wholly inside the packet.
    #[inline(always)]
    fn read<T>(&self, offset: usize) -> Result<&T, Reject> {
        let at = self.start + offset;
        if at + size_of::<T>() > self.end {
            return Err(Reject::Malformed);
        }
        // SAFETY: in bounds (checked above); every T read here is made of
        // byte arrays with alignment 1.
        Ok(unsafe { &*(at as *const T) })
    }
}

#[inline(always)]
pub fn parse(cur: &Cursor) -> Result<Facts, Reject> {
    let (ether_type, offset) = parse_eth(cur)?;
    let (mut facts, l4_offset) = match ether_type {
        ETH_P_IP => parse_ipv4(cur, offset)?,
        ETH_P_IPV6 => parse_ipv6(cur, offset)?,
        _ => return Err(Reject::Unparsed),
    };
    if !matches!(facts.frag, Frag::Later { .. }) {
        facts.l4 = Some(parse_l4(cur, facts.ip_proto, l4_offset)?);
    }
    Ok(facts)
}

/// Returns the ether type after up to two VLAN tags, and its end offset.
#[inline(always)]
fn parse_eth(cur: &Cursor) -> Result<(u16, usize), Reject> {
    let eth: &EthHdr = cur.read(0)?;
    let mut ether_type = u16::from_be(eth.ether_type);
    let mut offset = EthHdr::LEN;
    for _ in 0..VLAN_TAGS_MAX {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        let tag: &[u8; VLAN_TAG_LEN] = cur.read(offset)?;
        ether_type = u16::from_be_bytes([tag[2], tag[3]]);
        offset += VLAN_TAG_LEN;
    }
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        return Err(Reject::Unparsed);
    }
    Ok((ether_type, offset))
}

#[inline(always)]
fn v4_mapped(addr: [u8; 4]) -> [u8; 16] {
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3]]
}

#[inline(always)]
/// Returns the IP facts and the offset of the transport header.
fn parse_ipv4(cur: &Cursor, offset: usize) -> Result<(Facts, usize), Reject> {
    let ip: &Ipv4Hdr = cur.read(offset)?;
    let header_len = ((ip.vihl & 0x0f) as usize) * 4;
    if ip.vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN {
        return Err(Reject::Malformed);
    }
    let frags = u16::from_be_bytes(ip.frags);
    let id = u32::from(u16::from_be_bytes(ip.id));
    let frag = match (frags & IP_OFFSET_MASK, frags & IP_MF != 0) {
        (0, false) => Frag::Whole,
        (0, true) => Frag::First { id },
        (_, more) => Frag::Later { id, last: !more },
    };
    let facts = Facts {
        family: 4,
        src: v4_mapped(ip.src_addr),
        dst: v4_mapped(ip.dst_addr),
        ip_proto: ip.proto,
        frag,
        l4: None,
    };
    Ok((facts, offset + header_len))
}

#[inline(always)]
fn parse_ipv6(cur: &Cursor, offset: usize) -> Result<(Facts, usize), Reject> {
    let ip: &Ipv6Hdr = cur.read(offset)?;
    if ip.vcf[0] >> 4 != 6 {
        return Err(Reject::Malformed);
    }
    let mut next = ip.next_hdr;
    let mut offset = offset + Ipv6Hdr::LEN;
    let mut frag = Frag::Whole;
    for _ in 0..IPV6_EXT_MAX {
        match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => {
                let h: &[u8; 2] = cur.read(offset)?;
                next = h[0];
                offset += (h[1] as usize + 1) * 8;
            }
            IPV6_AUTH => {
                let h: &[u8; 2] = cur.read(offset)?;
                next = h[0];
                offset += (h[1] as usize + 2) * 4;
            }
            IPV6_FRAGMENT => {
                let h: &[u8; 8] = cur.read(offset)?;
                next = h[0];
                let field = u16::from_be_bytes([h[2], h[3]]);
                let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                frag = match (field >> 3, field & 1 != 0) {
                    (0, false) => Frag::Whole,
                    (0, true) => Frag::First { id },
                    (_, more) => Frag::Later { id, last: !more },
                };
                offset += 8;
                if matches!(frag, Frag::Later { .. }) {
                    break;
                }
            }
            _ => break,
        }
    }
    let still_ext =
        matches!(next, IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS | IPV6_AUTH | IPV6_FRAGMENT);
    if still_ext && !matches!(frag, Frag::Later { .. }) {
        return Err(Reject::Unparsed);
    }
    let facts = Facts { family: 6, src: ip.src_addr, dst: ip.dst_addr, ip_proto: next, frag, l4: None };
    Ok((facts, offset))
}

#[inline(always)]
fn parse_l4(cur: &Cursor, ip_proto: u8, offset: usize) -> Result<L4, Reject> {
    match ip_proto {
        IPPROTO_TCP => {
            let tcp: &TcpHdr = cur.read(offset)?;
            Ok(L4 {
                proto: proto::TCP,
                sport: u16::from_be_bytes(tcp.source),
                dport: u16::from_be_bytes(tcp.dest),
                is_new: tcp.syn() != 0 && tcp.ack() == 0,
            })
        }
        IPPROTO_UDP => {
            let udp: &UdpHdr = cur.read(offset)?;
            Ok(L4 {
                proto: proto::UDP,
                sport: u16::from_be_bytes(udp.src),
                dport: u16::from_be_bytes(udp.dst),
                is_new: true,
            })
        }
        _ => Err(Reject::Unparsed),
    }
}
