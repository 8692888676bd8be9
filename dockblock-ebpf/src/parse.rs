//! Header parsing, one helper per header, as spec/fail-closed.md
//! orders it. Rules of use:
//! - every read goes through [`Cursor::read`] with a bound: the packet
//!   length for Ethernet and the IP header, the IP datagram's end
//!   (`ip_end`, from the total or payload length) for everything after, so
//!   Ethernet padding is never read as a header;
//! - a parser returns what the next layer needs, or a [`Reject`] saying why
//!   the packet cannot be judged. The verdict maps a `Reject` to an outcome.
//!
//! Walks: up to [`VLAN_TAGS_MAX`] VLAN tags (802.1Q, 802.1ad/QinQ), IPv4
//! with any header length, IPv6 with up to [`IPV6_EXT_MAX`] extension
//! headers, then TCP/UDP.

use core::mem::size_of;

use dockblock_common::{
    net::{
        ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP, IPV4_HLEN,
        IPV6_AUTH, IPV6_DEST_OPTS, IPV6_EXT_MAX, IPV6_FRAGMENT, IPV6_HLEN, IPV6_HOP_BY_HOP, IPV6_ROUTING,
        IP_MF, IP_OFFSET_MASK, TCP_ACK, TCP_HLEN, TCP_SYN, UDP_HLEN, VLAN_TAGS_MAX, VLAN_TAG_LEN,
    },
    proto,
};

/// The deepest byte the parser can read: two VLAN tags, IPv6, eight
/// extension headers of the largest size (hdr ext len 255: 2048 bytes) and
/// a TCP header. Pulling this much (or the whole packet, if shorter) makes
/// every header the parser walks linear.
pub const PARSE_DEPTH_MAX: usize =
    ETH_HLEN + VLAN_TAGS_MAX * VLAN_TAG_LEN + IPV6_HLEN + IPV6_EXT_MAX * 2048 + TCP_HLEN;

/// Why a packet is not judged by a rule.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Cannot reach a port rule: not IP, or IP but neither TCP nor UDP.
    Other,
    /// Header lengths that do not add up; the kernel discards it too.
    Malformed,
    /// Could reach a blocked port but cannot be judged.
    Evasive,
    /// The first `need` bytes lie inside the packet but beyond its linear
    /// part (TC only): pull them and parse again.
    Short { need: usize },
}

/// Where a packet stands in fragmentation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Frag {
    /// Not a fragment.
    Whole,
    /// Offset 0 with more to come: carries the transport header (or should).
    First { id: u32 },
    /// Offset > 0 (in 8-byte units): no transport header. `last` when no
    /// more follow.
    Later { id: u32, offset: u16, last: bool },
}

/// The transport facts the verdict needs.
pub struct L4 {
    /// One of `dockblock_common::proto`.
    pub proto: u32,
    pub sport: u16,
    pub dport: u16,
    /// Whether the packet opens a new connection: a TCP SYN without ACK, or
    /// any UDP datagram (UDP replies are told apart by the flow map). True
    /// when the header is cut short: the flags are unknown.
    pub is_new: bool,
    /// Whether the whole transport header was read. Only a first fragment
    /// can carry the ports without the rest.
    pub complete: bool,
}

/// What the parser learned: where the addresses are, IP protocol, fragment
/// state, and the transport header unless this is a later fragment.
///
/// The addresses stay in the packet until a key needs them ([`Facts::src`],
/// [`Facts::dst`]): a SYN dropped by a rule without an allow-list never
/// copies them (copied eagerly, LLVM spread the 32 bytes over as many
/// stack slots, the larger part of the hot path).
pub struct Facts {
    pub family: u32,
    /// The source address in the packet: 4 bytes (IPv4) or 16.
    src: *const u8,
    dst: *const u8,
    /// The upper-layer protocol (after the IPv6 extension headers).
    pub ip_proto: u8,
    /// The protocol of the fragment key: the IPv4 protocol, or the IPv6
    /// fragment header's next header, the same for every fragment of a
    /// datagram.
    pub key_proto: u8,
    pub frag: Frag,
    pub l4: Option<L4>,
}

impl Facts {
    /// The source address, IPv4 mapped into IPv6 (`::ffff:a.b.c.d`).
    #[inline(always)]
    pub fn src(&self) -> [u8; 16] {
        addr(self.family, self.src)
    }

    /// The destination address, IPv4 mapped into IPv6.
    #[inline(always)]
    pub fn dst(&self) -> [u8; 16] {
        addr(self.family, self.dst)
    }
}

/// The address at `at` in the packet (read there by the parser, so in
/// bounds), as 16 bytes, in 32-bit words.
#[inline(always)]
fn addr(family: u32, at: *const u8) -> [u8; 16] {
    // SAFETY: the parser checked the address lies inside the IP header.
    let words: [u32; 4] = unsafe {
        if family == 4 {
            let v4 = core::ptr::read_unaligned(at as *const u32);
            [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), v4]
        } else {
            core::ptr::read_unaligned(at as *const [u32; 4])
        }
    };
    // SAFETY: [u32; 4] and [u8; 16] have the same size; every byte pattern
    // is valid for both.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(words) }
}

/// A bounds-checked view of a packet: `[start, end)` is what can be read
/// directly (the linear part for an skb), `len` the packet's length.
pub struct Cursor {
    start: usize,
    end: usize,
    len: usize,
}

impl Cursor {
    #[inline(always)]
    pub fn new(start: usize, end: usize, len: usize) -> Self {
        Self { start, end, len }
    }

    /// The `T` at byte `offset`, if it ends at or before `bound` (a length
    /// from the packet start). `Err(Short)` when it does but lies beyond the
    /// directly readable part.
    #[inline(always)]
    fn read<T>(&self, offset: usize, bound: usize) -> Result<Option<&T>, Reject> {
        let need = offset + size_of::<T>();
        if need > bound {
            return Ok(None);
        }
        let at = self.start + offset;
        if at + size_of::<T>() > self.end {
            return Err(Reject::Short { need });
        }
        // SAFETY: in bounds (checked above); every T read here is a byte
        // array, alignment 1.
        Ok(Some(unsafe { &*(at as *const T) }))
    }
}

#[inline(always)]
pub fn parse(cur: &Cursor) -> Result<Facts, Reject> {
    let (ether_type, l3) = parse_eth(cur)?;
    let (mut facts, l4_offset, ip_end) = match ether_type {
        ETH_P_IP => parse_ipv4(cur, l3)?,
        ETH_P_IPV6 => parse_ipv6(cur, l3)?,
        _ => return Err(Reject::Other),
    };
    if !matches!(facts.frag, Frag::Later { .. }) {
        facts.l4 = Some(parse_l4(cur, facts.ip_proto, facts.frag, l4_offset, ip_end)?);
    }
    Ok(facts)
}

#[inline(always)]
fn be16(hi: u8, lo: u8) -> u16 {
    u16::from_be_bytes([hi, lo])
}

#[inline(always)]
fn is_vlan(ether_type: u16) -> bool {
    ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD
}

/// Returns the ether type after up to two VLAN tags, and its end offset.
/// A frame too short for a header or tag cannot carry IP; a third tag is
/// one more than we walk, so it may hide IP.
#[inline(always)]
fn parse_eth(cur: &Cursor) -> Result<(u16, usize), Reject> {
    let Some(eth) = cur.read::<[u8; ETH_HLEN]>(0, cur.len)? else { return Err(Reject::Other) };
    let mut ether_type = be16(eth[12], eth[13]);
    let mut offset = ETH_HLEN;
    for _ in 0..VLAN_TAGS_MAX {
        if !is_vlan(ether_type) {
            break;
        }
        let Some(tag) = cur.read::<[u8; VLAN_TAG_LEN]>(offset, cur.len)? else { return Err(Reject::Other) };
        ether_type = be16(tag[2], tag[3]);
        offset += VLAN_TAG_LEN;
    }
    if is_vlan(ether_type) {
        return Err(Reject::Evasive);
    }
    Ok((ether_type, offset))
}

/// Whether the IPv6 address `a` is in ::ffff:0:0/96, the form IPv4
/// addresses take in the allow-list and flow keys.
#[inline(always)]
fn is_v4_mapped(a: &[u8]) -> bool {
    let word = |i: usize| u32::from_be_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    word(0) | word(4) == 0 && word(8) == 0xffff
}

#[inline(always)]
fn frag_state(offset: u16, more: bool, id: u32) -> Frag {
    match (offset, more) {
        (0, false) => Frag::Whole,
        (0, true) => Frag::First { id },
        (offset, more) => Frag::Later { id, offset, last: !more },
    }
}

/// Returns the IP facts, the offset of the transport header and `ip_end`.
#[inline(always)]
fn parse_ipv4(cur: &Cursor, l3: usize) -> Result<(Facts, usize, usize), Reject> {
    let Some(ip) = cur.read::<[u8; IPV4_HLEN]>(l3, cur.len)? else { return Err(Reject::Malformed) };
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || header_len < IPV4_HLEN {
        return Err(Reject::Malformed);
    }
    // 0: to the end of the packet (BIG TCP GSO).
    let tot_len = usize::from(be16(ip[2], ip[3]));
    let ip_end = if tot_len == 0 { cur.len } else { l3 + tot_len };
    // Also catches tot_len < IHL*4.
    if ip_end > cur.len || l3 + header_len > ip_end {
        return Err(Reject::Malformed);
    }
    let frag_off = be16(ip[6], ip[7]);
    let id = u32::from(be16(ip[4], ip[5]));
    let facts = Facts {
        family: 4,
        src: ip[12..].as_ptr(),
        dst: ip[16..].as_ptr(),
        ip_proto: ip[9],
        key_proto: ip[9],
        frag: frag_state(frag_off & IP_OFFSET_MASK, frag_off & IP_MF != 0, id),
        l4: None,
    };
    Ok((facts, l3 + header_len, ip_end))
}

#[inline(always)]
fn parse_ipv6(cur: &Cursor, l3: usize) -> Result<(Facts, usize, usize), Reject> {
    let Some(ip) = cur.read::<[u8; IPV6_HLEN]>(l3, cur.len)? else { return Err(Reject::Malformed) };
    if ip[0] >> 4 != 6 {
        return Err(Reject::Malformed);
    }
    let payload_len = usize::from(be16(ip[4], ip[5]));
    let ip_end = if payload_len == 0 { cur.len } else { l3 + IPV6_HLEN + payload_len };
    if ip_end > cur.len {
        return Err(Reject::Malformed);
    }
    // Linux discards these; they must not match an IPv4 allow-list entry
    // or flow, whose keys are v4-mapped.
    if is_v4_mapped(&ip[8..24]) {
        return Err(Reject::Evasive);
    }
    let (src, dst) = (ip[8..].as_ptr(), ip[24..].as_ptr());
    let mut next = ip[6];
    let mut key_proto = next;
    let mut offset = l3 + IPV6_HLEN;
    let mut frag = Frag::Whole;
    for _ in 0..IPV6_EXT_MAX {
        match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => {
                let Some(h) = cur.read::<[u8; 2]>(offset, ip_end)? else { return Err(Reject::Malformed) };
                next = h[0];
                offset += (usize::from(h[1]) + 1) * 8;
            }
            IPV6_AUTH => {
                let Some(h) = cur.read::<[u8; 2]>(offset, ip_end)? else { return Err(Reject::Malformed) };
                next = h[0];
                offset += (usize::from(h[1]) + 2) * 4;
            }
            IPV6_FRAGMENT => {
                let Some(h) = cur.read::<[u8; 8]>(offset, ip_end)? else { return Err(Reject::Malformed) };
                next = h[0];
                key_proto = h[0];
                let field = be16(h[2], h[3]);
                let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                frag = frag_state(field >> 3, field & 1 != 0, id);
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
        return Err(Reject::Evasive);
    }
    let facts = Facts { family: 6, src, dst, ip_proto: next, key_proto, frag, l4: None };
    Ok((facts, offset, ip_end))
}

/// The transport header at `offset`, bounded by `ip_end`. A whole packet
/// cut short is malformed; a first fragment without the ports cannot be
/// judged; one with the ports but not the flags is judged as new.
#[inline(always)]
fn parse_l4(cur: &Cursor, ip_proto: u8, frag: Frag, offset: usize, ip_end: usize) -> Result<L4, Reject> {
    let proto = match ip_proto {
        IPPROTO_TCP => {
            if let Some(h) = cur.read::<[u8; TCP_HLEN]>(offset, ip_end)? {
                return Ok(L4 {
                    proto: proto::TCP,
                    sport: be16(h[0], h[1]),
                    dport: be16(h[2], h[3]),
                    is_new: h[13] & (TCP_SYN | TCP_ACK) == TCP_SYN,
                    complete: true,
                });
            }
            proto::TCP
        }
        IPPROTO_UDP => {
            if let Some(h) = cur.read::<[u8; UDP_HLEN]>(offset, ip_end)? {
                return Ok(L4 {
                    proto: proto::UDP,
                    sport: be16(h[0], h[1]),
                    dport: be16(h[2], h[3]),
                    is_new: true,
                    complete: true,
                });
            }
            proto::UDP
        }
        _ => return Err(Reject::Other),
    };
    if !matches!(frag, Frag::First { .. }) {
        return Err(Reject::Malformed);
    }
    let Some(ports) = cur.read::<[u8; 4]>(offset, ip_end)? else { return Err(Reject::Evasive) };
    Ok(L4 {
        proto,
        sport: be16(ports[0], ports[1]),
        dport: be16(ports[2], ports[3]),
        is_new: true,
        complete: false,
    })
}
