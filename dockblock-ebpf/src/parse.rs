//! Header parsing, one helper per header. Rules of use:
//! - every read goes through [`Cursor::read`], which checks the bounds the
//!   verifier needs before it hands out a reference;
//! - a parser returns what the next layer needs, or a [`Reject`] saying why
//!   the packet is not judged. Nothing here decides a verdict.

use core::mem::size_of;

use dockblock_common::proto;
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};

const ETH_P_IP: u16 = 0x0800;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// "More fragments" flag and fragment offset bits of the IPv4 `frags` field.
const IP_OFFSET_MASK: u16 = 0x1fff;

/// Why a packet is not judged.
pub enum Reject {
    /// Not IPv4 TCP/UDP, or a non-first fragment (no ports in it).
    Unparsed,
    /// Truncated, or an IPv4 header length below 20 bytes.
    Malformed,
}

/// The transport facts the verdict needs.
pub struct L4 {
    /// One of `dockblock_common::proto`.
    pub proto: u32,
    /// Destination port, host byte order.
    pub dport: u16,
    /// Whether the packet opens a new connection: a TCP SYN without ACK, or
    /// any UDP datagram.
    pub is_new: bool,
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
        // SAFETY: in bounds (checked above); network-types headers are
        // byte arrays with alignment 1.
        Ok(unsafe { &*(at as *const T) })
    }
}

/// Parses Ethernet, IPv4 (any header length) and the TCP/UDP header.
#[inline(always)]
pub fn parse(cur: &Cursor) -> Result<L4, Reject> {
    let eth: &EthHdr = cur.read(0)?;
    if u16::from_be(eth.ether_type) != ETH_P_IP {
        return Err(Reject::Unparsed);
    }
    let (ip_proto, l4_offset) = parse_ipv4(cur, EthHdr::LEN)?;
    parse_l4(cur, ip_proto, l4_offset)
}

/// Returns the IP protocol and the offset of the transport header.
#[inline(always)]
fn parse_ipv4(cur: &Cursor, offset: usize) -> Result<(u8, usize), Reject> {
    let ip: &Ipv4Hdr = cur.read(offset)?;
    let header_len = ((ip.vihl & 0x0f) as usize) * 4;
    if ip.vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN {
        return Err(Reject::Malformed);
    }
    // Only the first fragment carries the transport header.
    if u16::from_be_bytes(ip.frags) & IP_OFFSET_MASK != 0 {
        return Err(Reject::Unparsed);
    }
    Ok((ip.proto, offset + header_len))
}

#[inline(always)]
fn parse_l4(cur: &Cursor, ip_proto: u8, offset: usize) -> Result<L4, Reject> {
    match ip_proto {
        IPPROTO_TCP => {
            let tcp: &TcpHdr = cur.read(offset)?;
            Ok(L4 {
                proto: proto::TCP,
                dport: u16::from_be_bytes(tcp.dest),
                is_new: tcp.syn() != 0 && tcp.ack() == 0,
            })
        }
        IPPROTO_UDP => {
            let udp: &UdpHdr = cur.read(offset)?;
            Ok(L4 {
                proto: proto::UDP,
                dport: u16::from_be_bytes(udp.dst),
                is_new: true,
            })
        }
        _ => Err(Reject::Unparsed),
    }
}
