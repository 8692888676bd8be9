//! A small packet builder for datapath tests: Ethernet, IPv4 (with options
//! and fragment fields), TCP or UDP. Every field a test might bend is a
//! builder method; `build` lays out the bytes.

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

#[derive(Clone, Debug)]
pub struct Packet {
    ether_type: u16,
    version: u8,
    /// IPv4 header length in 32-bit words (5 = no options).
    ihl: u8,
    /// Fragment offset in 8-byte units.
    frag_offset: u16,
    more_fragments: bool,
    proto: u8,
    sport: u16,
    dport: u16,
    tcp_flags: u8,
    payload: Vec<u8>,
}

impl Packet {
    pub fn tcp(dport: u16, flags: u8) -> Self {
        Self {
            ether_type: ETH_P_IP,
            version: 4,
            ihl: 5,
            frag_offset: 0,
            more_fragments: false,
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
        Self {
            proto: IPPROTO_UDP,
            tcp_flags: 0,
            ..Self::tcp(dport, 0)
        }
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

    pub fn payload(mut self, bytes: &[u8]) -> Self {
        self.payload = bytes.to_vec();
        self
    }

    pub fn build(&self) -> Vec<u8> {
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

        // Options are NOPs; a header shorter than 20 bytes is still laid out
        // as 20 so the test controls only the field, not the buffer.
        let ip_len = usize::from(self.ihl.max(5)) * 4;
        let mut ip = vec![1u8; ip_len];
        ip[0] = (self.version << 4) | (self.ihl & 0x0f);
        ip[1] = 0;
        ip[2..4].copy_from_slice(&((ip_len + l4.len()) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        let frag = (u16::from(self.more_fragments) << 13) | (self.frag_offset & 0x1fff);
        ip[6..8].copy_from_slice(&frag.to_be_bytes());
        ip[8] = 64;
        ip[9] = self.proto;
        ip[10..12].copy_from_slice(&[0, 0]);
        ip[12..16].copy_from_slice(&[198, 18, 0, 2]);
        ip[16..20].copy_from_slice(&[198, 18, 0, 1]);
        let csum = checksum(&ip);
        ip[10..12].copy_from_slice(&csum.to_be_bytes());

        let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        frame.extend_from_slice(&self.ether_type.to_be_bytes());
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&l4);
        frame
    }
}

/// Internet checksum (RFC 1071).
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
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
    fn fragment_fields() {
        let p = Packet::syn(1).fragment(185, true).build();
        assert_eq!(u16::from_be_bytes([p[20], p[21]]), 0x2000 | 185);
    }
}
