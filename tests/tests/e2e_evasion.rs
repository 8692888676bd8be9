//! End-to-end evasion tests (issue 8): packets an attacker would hand-craft,
//! written as raw Ethernet frames to an AF_PACKET socket on the outside end
//! of the veth uplink, against a dialed-port rule (XDP on the uplink) and a
//! container-port rule (TC on docker0), with a real published busybox
//! container or, for IPv6, a host listener (Docker 20.10 publishes IPv6
//! ports only with its experimental ip6tables mode).
//!
//! An attack has failed when nothing answers it: no SYN-ACK reaches the
//! attacker's wire, and the listener holds no half-open connection from it
//! (`ss state syn-recv` in the listener's namespace). The frames come from
//! a source address the outside namespace does not own (routed back to its
//! veth from the host): its kernel then drops a SYN-ACK silently instead of
//! resetting it, so a SYN that got through stays visible on the listener.
//! Every test first shows that a plain SYN from that source is answered, and
//! for each attack what Linux itself does with it when dockblock is not in
//! the way (it reassembles split SYNs and answers them; it discards
//! overlapping fragments, IPv6 first fragments without the whole header
//! chain, and v4-mapped IPv6 sources by itself). `stats --json` must show
//! the attack under the outcome `dockblock-common::outcome` names for it.
//!
//! Ports and container ports are this file's own (184xx), so that rules on
//! the shared docker0 never touch another test's containers.
//!
//! Needs root and a running Docker daemon; run serially:
//! `cargo build -p dockblock-agent && cargo test -p dockblock-tests --test e2e_evasion -- --test-threads=1`

use std::ffi::CString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use dockblock_common::net::{
    ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, IPV6_DEST_OPTS,
    IPV6_FRAGMENT, IPV6_HOP_BY_HOP, IP_MF, TCP_ACK, TCP_SYN,
};
use dockblock_tests::agent::Agent;
use dockblock_tests::docker::{self, Container};
use dockblock_tests::netns::{Background, Capture, Outside};
use dockblock_tests::packet::checksum;
use dockblock_tests::rig::{require_env, Rig};
use dockblock_tests::{describe, run, run_for, run_ok};
use serde_json::Value;

/// How long a probe waits for an answer that should not come. A SYN-ACK
/// leaves the listener within milliseconds; its first retransmission would
/// come after 1 s.
const QUIET: Duration = Duration::from_millis(800);
/// How long a probe waits for an answer that should come.
const ANSWER: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------- the wire

/// An AF_PACKET socket bound to the outside end of the veth, opened inside
/// the outside namespace (a socket keeps the namespace it was made in):
/// frames written to it leave as they are, and it sees every frame there.
struct Wire {
    fd: OwnedFd,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
}

/// A frame seen on the wire; `outgoing` when the namespace sent it.
struct Seen {
    outgoing: bool,
    bytes: Vec<u8>,
}

impl Wire {
    fn open(out: &Outside) -> Wire {
        let ns = out.name().to_string();
        let ifname = out.ns_if().to_string();
        let fd = std::thread::spawn(move || open_packet_socket(&ns, &ifname))
            .join()
            .expect("socket thread")
            .unwrap_or_else(|e| panic!("AF_PACKET socket in {}: {e}", out.name()));
        let src_mac = parse_mac(&out.ns_mac().expect("ns mac"));
        let dst_mac = parse_mac(&out.host_mac().expect("host mac"));
        Wire { fd, src_mac, dst_mac }
    }

    /// Ethernet frame to the host end with `tags` (802.1Q VLAN ids,
    /// outermost first) and `l3`, padded to the 60-byte Ethernet minimum as
    /// every NIC pads it on a real wire (a veth does not pad by itself).
    fn frame(&self, tags: &[u16], ether_type: u16, l3: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(64 + l3.len());
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        for vid in tags {
            f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
            f.extend_from_slice(&vid.to_be_bytes());
        }
        f.extend_from_slice(&ether_type.to_be_bytes());
        f.extend_from_slice(l3);
        f.resize(f.len().max(60), 0);
        f
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: a valid buffer of frame.len() bytes on our own socket.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(n, frame.len() as isize, "send: {}", std::io::Error::last_os_error());
    }

    /// Frames seen from now for `wait`, or until `enough` holds for one.
    fn watch(&self, wait: Duration, enough: impl Fn(&Seen) -> bool) -> Vec<Seen> {
        let deadline = Instant::now() + wait;
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 65536];
        while Instant::now() < deadline {
            // SAFETY: zeroed sockaddr_ll is valid; recvfrom writes at most its size.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: buf and sll are ours and large enough.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut sll as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            if n < 0 {
                continue; // the 50 ms receive timeout
            }
            let s = Seen {
                outgoing: sll.sll_pkttype == libc::PACKET_OUTGOING,
                bytes: buf[..n as usize].to_vec(),
            };
            let stop = enough(&s);
            seen.push(s);
            if stop {
                break;
            }
        }
        seen
    }

    /// Discards what arrived so far (e.g. answers to an earlier probe).
    fn drain(&self) {
        self.watch(Duration::from_millis(60), |_| false);
    }
}

fn open_packet_socket(ns: &str, ifname: &str) -> Result<OwnedFd, String> {
    let os = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    let netns = std::fs::File::open(format!("/var/run/netns/{ns}")).map_err(|e| e.to_string())?;
    // SAFETY: a valid netns fd; only this short-lived thread changes namespace.
    if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(os("setns"));
    }
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket call.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    if raw < 0 {
        return Err(os("socket"));
    }
    // SAFETY: raw is a fresh descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let name = CString::new(ifname).map_err(|e| e.to_string())?;
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(os(&format!("if_nametoindex({ifname})")));
    }
    // SAFETY: zeroed sockaddr_ll is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: sll is a sockaddr_ll of the size passed.
    let bound = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if bound != 0 {
        return Err(os("bind"));
    }
    let timeout = libc::timeval { tv_sec: 0, tv_usec: 50_000 };
    // SAFETY: a timeval of the size passed.
    let set = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if set != 0 {
        return Err(os("SO_RCVTIMEO"));
    }
    Ok(fd)
}

fn parse_mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s.split(':').map(|b| u8::from_str_radix(b, 16).expect("hex")).collect();
    v.try_into().unwrap_or_else(|_| panic!("mac {s:?}"))
}

// ---------------------------------------------------------------- packets

const SEQ: u32 = 0x1000_0000;

/// A TCP segment (20-byte header, `flags`, then `payload`) with its
/// checksum over the pseudo-header, ready to be split into fragments.
fn tcp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut seg = vec![0u8; 20];
    seg[0..2].copy_from_slice(&sport.to_be_bytes());
    seg[2..4].copy_from_slice(&dport.to_be_bytes());
    seg[4..8].copy_from_slice(&SEQ.to_be_bytes());
    if flags & TCP_ACK != 0 {
        seg[8..12].copy_from_slice(&1u32.to_be_bytes());
    }
    seg[12] = 5 << 4;
    seg[13] = flags;
    seg[14..16].copy_from_slice(&64240u16.to_be_bytes());
    seg.extend_from_slice(payload);
    let csum = transport_checksum(src, dst, IPPROTO_TCP, &seg);
    seg[16..18].copy_from_slice(&csum.to_be_bytes());
    seg
}

fn transport_checksum(src: IpAddr, dst: IpAddr, proto: u8, seg: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, proto]);
            pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&(seg.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => panic!("mixed families"),
    }
    pseudo.extend_from_slice(seg);
    checksum(&pseudo)
}

/// An IPv4 packet carrying `data`; `frag` is the flags/offset field (MF and
/// the offset in 8-byte units).
fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, id: u16, frag: u16, proto: u8, data: &[u8]) -> Vec<u8> {
    let mut ip = vec![0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + data.len()) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    ip[6..8].copy_from_slice(&frag.to_be_bytes());
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let csum = checksum(&ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    ip.extend_from_slice(data);
    ip
}

/// IPv4 fragments of `seg`: each piece is (start byte, end byte); the last
/// piece has MF clear. Starts are multiples of 8 (offsets count 8 bytes).
fn ipv4_pieces(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seg: &[u8], pieces: &[(usize, usize)]) -> Vec<Vec<u8>> {
    pieces
        .iter()
        .enumerate()
        .map(|(i, &(start, end))| {
            assert_eq!(start % 8, 0, "fragment offsets count 8-byte units");
            let more = if i + 1 < pieces.len() { IP_MF } else { 0 };
            ipv4(src, dst, id, more | (start / 8) as u16, IPPROTO_TCP, &seg[start..end])
        })
        .collect()
}

fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut ip = vec![0u8; 40];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    ip[6] = next;
    ip[7] = 64;
    ip[8..24].copy_from_slice(&src.octets());
    ip[24..40].copy_from_slice(&dst.octets());
    ip.extend_from_slice(payload);
    ip
}

/// A hop-by-hop or destination options header of 8 bytes: one PadN option.
fn options_header(next: u8) -> [u8; 8] {
    [next, 0, 1, 4, 0, 0, 0, 0]
}

/// An IPv6 fragment header.
fn fragment_header(next: u8, offset_units: u16, more: bool, id: u32) -> [u8; 8] {
    let field = (offset_units << 3) | u16::from(more);
    let [f0, f1] = field.to_be_bytes();
    let [i0, i1, i2, i3] = id.to_be_bytes();
    [next, 0, f0, f1, i0, i1, i2, i3]
}

/// IPv6 headers `chain` (already linked by their next-header fields), then
/// `rest`; `first` is the IPv6 header's next header.
fn ipv6_chain(src: Ipv6Addr, dst: Ipv6Addr, first: u8, chain: &[[u8; 8]], rest: &[u8]) -> Vec<u8> {
    let mut payload: Vec<u8> = chain.iter().flatten().copied().collect();
    payload.extend_from_slice(rest);
    ipv6(src, dst, first, &payload)
}

/// `n` destination options headers in a row, the last pointing at `last_next`.
fn dest_opts_chain(n: usize, last_next: u8) -> Vec<[u8; 8]> {
    (0..n).map(|i| options_header(if i + 1 == n { last_next } else { IPV6_DEST_OPTS })).collect()
}

// ---------------------------------------------------------------- replies

/// What a received frame carries, as far as the probes care.
#[derive(Debug)]
enum Reply {
    Tcp { sport: u16, dport: u16, flags: u8 },
    Icmp6 { kind: u8, code: u8 },
    Other,
}

fn parse_reply(f: &[u8]) -> Reply {
    let mut at = 12;
    let mut ether_type = be16(f, at);
    // Replies from VLAN devices keep their outer tag in the skb metadata, the
    // inner ones in the data: skip whatever tags the data has.
    while ether_type == Some(ETH_P_8021Q) || ether_type == Some(0x88a8) {
        at += 4;
        ether_type = be16(f, at);
    }
    let l3 = at + 2;
    let (proto, l4) = match ether_type {
        Some(ETH_P_IP) if f.len() >= l3 + 20 => {
            if be16(f, l3 + 6).unwrap_or(0) & 0x1fff != 0 {
                return Reply::Other;
            }
            (f[l3 + 9], l3 + usize::from(f[l3] & 0x0f) * 4)
        }
        Some(ETH_P_IPV6) if f.len() >= l3 + 40 => {
            let (mut next, mut off) = (f[l3 + 6], l3 + 40);
            while matches!(next, IPV6_HOP_BY_HOP | IPV6_DEST_OPTS) && f.len() >= off + 2 {
                (next, off) = (f[off], off + (usize::from(f[off + 1]) + 1) * 8);
            }
            (next, off)
        }
        _ => return Reply::Other,
    };
    match proto {
        IPPROTO_TCP if f.len() >= l4 + 14 => {
            Reply::Tcp { sport: be16(f, l4).unwrap(), dport: be16(f, l4 + 2).unwrap(), flags: f[l4 + 13] }
        }
        IPPROTO_ICMPV6 if f.len() >= l4 + 2 => Reply::Icmp6 { kind: f[l4], code: f[l4 + 1] },
        _ => Reply::Other,
    }
}

fn be16(f: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?]))
}

// ---------------------------------------------------------------- counters

/// `hooks.<hook>.<outcome>.packets` from `stats --json`.
fn outcome(stats: &Value, hook: &str, name: &str) -> u64 {
    stats["hooks"][hook][name]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no hooks.{hook}.{name}: {stats}"))
}

/// Per-hook outcome counters before and after something, for deltas.
struct Counted {
    before: Value,
    after: Value,
}

impl Counted {
    fn delta(&self, hook: &str, name: &str) -> u64 {
        outcome(&self.after, hook, name) - outcome(&self.before, hook, name)
    }
}

/// The host's network stack counters (init namespace): `/proc/net/snmp`,
/// `/proc/net/netstat` (as `Group:Name`, e.g. `IpExt:ReasmOverlaps`) and,
/// `/proc/net/snmp6` (as `snmp6:Name`) and, for `iface`,
/// `/proc/net/dev_snmp6/<iface>` (as `<iface>:Name`: the uplink's own,
/// whatever else the machine does).
fn mibs(iface: &str) -> std::collections::BTreeMap<String, u64> {
    let mut all = std::collections::BTreeMap::new();
    for file in ["/proc/net/snmp", "/proc/net/netstat"] {
        let text = std::fs::read_to_string(file).expect("read mib");
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.chunks(2) {
            let [names, values] = pair else { continue };
            let mut names = names.split_whitespace();
            let group = names.next().unwrap_or_default().trim_end_matches(':').to_string();
            for (n, v) in names.zip(values.split_whitespace().skip(1)) {
                all.insert(format!("{group}:{n}"), v.parse().unwrap_or(0));
            }
        }
    }
    for (prefix, file) in
        [("snmp6", "/proc/net/snmp6".to_string()), (iface, format!("/proc/net/dev_snmp6/{iface}"))]
    {
        let text = std::fs::read_to_string(&file).expect("snmp6");
        for line in text.lines() {
            let mut it = line.split_whitespace();
            if let (Some(n), Some(v)) = (it.next(), it.next()) {
                all.insert(format!("{prefix}:{n}"), v.parse().unwrap_or(0));
            }
        }
    }
    all
}

/// Counters that grew from `before` to `after` (for messages and checks).
fn grown(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
) -> std::collections::BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v.saturating_sub(*before.get(k).unwrap_or(&0));
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

// ---------------------------------------------------------------- the bed

/// Where the listener of a bed lives.
enum Listener {
    /// A published container: `ss` runs in its network namespace.
    Container(Vec<String>),
    /// A host socket (IPv6 tests).
    Host,
}

/// What became of one probe.
#[derive(Debug)]
struct Probe {
    /// A SYN-ACK from the target port reached the attacker's wire.
    syn_ack: bool,
    /// The listener holds a half-open connection from the attacker.
    half_open: bool,
    /// ICMPv6 errors that came back: (type, code).
    icmp6: Vec<(u8, u8)>,
}

/// Every expectation of a test, checked to the end before it fails, so one
/// run shows the whole picture (e.g. which hooks an attack got through).
#[derive(Default)]
struct Findings(std::cell::RefCell<Vec<String>>);

impl Findings {
    fn check(&self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.borrow_mut().push(what());
        }
    }

    fn refused(&self, p: &Probe, what: &str) {
        self.check(!p.syn_ack, || format!("{what}: the listener answered with a SYN-ACK ({p:?})"));
        self.check(!p.half_open, || format!("{what}: the listener holds a half-open connection ({p:?})"));
    }

    fn counted(&self, n: &Counted, hook: &str, name: &str, want: u64, what: &str) {
        let got = n.delta(hook, name);
        self.check(got == want, || {
            format!("{what}: {hook} {name} +{got}, want +{want}: {}", n.after["hooks"][hook])
        });
    }

    fn counted_at_least(&self, n: &Counted, hook: &str, name: &str, want: u64, what: &str) {
        let got = n.delta(hook, name);
        self.check(got >= want, || {
            format!("{what}: {hook} {name} +{got}, want >= {want}: {}", n.after["hooks"][hook])
        });
    }

    fn finish(self) {
        let all = self.0.into_inner();
        assert!(all.is_empty(), "{} expectation(s) failed:\n- {}", all.len(), all.join("\n- "));
    }
}

impl Probe {
    /// The rig's own checks: without them an attack test proves nothing.
    fn assert_answered(&self, what: &str) {
        assert!(
            self.syn_ack && self.half_open,
            "{what}: want a SYN-ACK and a half-open connection: {self:?}"
        );
    }

    fn assert_refused(&self, what: &str) {
        assert!(!self.syn_ack && !self.half_open, "{what}: want no answer: {self:?}");
    }
}

/// An attacker on the outside wire with a spoofed source address.
struct Attacker {
    wire: Wire,
    src4: Ipv4Addr,
    src6: Option<Ipv6Addr>,
    next_sport: std::cell::Cell<u16>,
}

impl Attacker {
    /// Source `198.18.<subnet>.9` (and `<prefix>::9` when `prefix6` is
    /// given), routed back to the outside veth with a fixed neighbour entry:
    /// replies reach the wire, where the namespace's kernel drops them on a
    /// blackhole route: no RST, and no ICMP unreachable either (forwarding
    /// is on in a new namespace, and an unreachable would make the listener
    /// drop the half-open connection too).
    fn new(out: &Outside, subnet: u8, prefix6: Option<&str>) -> Attacker {
        let wire = Wire::open(out);
        let mac = out.ns_mac().expect("ns mac");
        let src4 = Ipv4Addr::new(198, 18, subnet, 9);
        let host = out.host_if();
        run_ok("ip", &["route", "add", &format!("{src4}/32"), "dev", host]);
        run_ok(
            "ip",
            &["neigh", "replace", &src4.to_string(), "lladdr", &mac, "dev", host, "nud", "permanent"],
        );
        out.exec_ok("ip", &["route", "add", "blackhole", &format!("{src4}/32")]);
        let src6 = prefix6.map(|p| {
            let a: Ipv6Addr = format!("{p}::9").parse().expect("v6 prefix");
            run_ok(
                "ip",
                &["-6", "neigh", "replace", &a.to_string(), "lladdr", &mac, "dev", host, "nud", "permanent"],
            );
            out.exec_ok("ip", &["-6", "route", "add", "blackhole", &format!("{a}/128")]);
            a
        });
        Attacker { wire, src4, src6, next_sport: std::cell::Cell::new(41000) }
    }

    fn sport(&self) -> u16 {
        let p = self.next_sport.get();
        self.next_sport.set(p + 1);
        p
    }

    /// Sends the frames `make(sport)` builds from a fresh source port and
    /// reports whether `port` answered, on the wire and at the listener.
    fn probe(
        &self,
        listener: &Listener,
        port: u16,
        wait: Duration,
        make: impl Fn(u16) -> Vec<Vec<u8>>,
    ) -> Probe {
        let sport = self.sport();
        self.wire.drain();
        for f in make(sport) {
            self.wire.send(&f);
        }
        let is_syn_ack = |s: &Seen| {
            !s.outgoing
                && matches!(parse_reply(&s.bytes), Reply::Tcp { sport: from, dport, flags, .. }
                    if from == port && dport == sport && flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK)
        };
        let seen = self.wire.watch(wait, is_syn_ack);
        let icmp6 = seen
            .iter()
            .filter(|s| !s.outgoing)
            .filter_map(|s| match parse_reply(&s.bytes) {
                Reply::Icmp6 { kind, code } if kind < 128 => Some((kind, code)),
                _ => None,
            })
            .collect();
        let syn_ack = seen.iter().any(is_syn_ack);
        Probe { syn_ack, half_open: self.half_open(listener, sport), icmp6 }
    }

    /// Whether the listener has a connection in SYN-RECV from `sport`.
    fn half_open(&self, listener: &Listener, sport: u16) -> bool {
        let dport = format!("dport = :{sport}");
        let mut argv: Vec<&str> = match listener {
            Listener::Container(enter) => enter.iter().map(String::as_str).collect(),
            Listener::Host => vec![],
        };
        argv.extend(["ss", "-Htn", "state", "syn-recv", dport.as_str()]);
        let out = run_ok(argv[0], &argv[1..]);
        let ours = [self.src4.to_string(), self.src6.map(|a| a.to_string()).unwrap_or_default()];
        out.lines().any(|l| ours.iter().any(|a| !a.is_empty() && l.contains(a.as_str())))
    }
}

/// An outside namespace, a published web container, an agent not yet
/// attached and an attacker. The container listens on `cport` (published as
/// `port`); both numbers are this file's own.
struct Bed {
    attacker: Attacker,
    rig: Rig,
    listener: Listener,
    port: u16,
    cport: u16,
    host4: Ipv4Addr,
}

impl Bed {
    fn new(tag: &str, subnet: u8, port: u16, cport: u16) -> Bed {
        let rig = Rig::with_container_port(tag, subnet, port, cport);
        let attacker = Attacker::new(&rig.out, subnet, None);
        let listener = Listener::Container(rig.web.netns_cmd());
        let host4 = rig.out.host_ip().parse().expect("host ip");
        let bed = Bed { attacker, rig, listener, port, cport, host4 };
        let plain = bed.probe(|a, sport| vec![a.syn4(sport, bed.port)]);
        plain.assert_answered("rig: a plain SYN from the spoofed source, no dockblock");
        bed
    }

    fn agent(&self) -> &Agent {
        &self.rig.agent
    }

    fn stats(&self) -> Value {
        self.agent().json(&["stats"])
    }

    /// Sends the frames `make(attacker, sport)` builds; answered or not.
    fn probe(&self, make: impl Fn(&Attacker, u16) -> Vec<Vec<u8>>) -> Probe {
        self.attacker.probe(&self.listener, self.port, ANSWER, |sport| make(&self.attacker, sport))
    }

    /// The same, waiting only `QUIET` for an answer that should not come,
    /// with the hook counters before and after.
    fn attack(&self, make: impl Fn(&Attacker, u16) -> Vec<Vec<u8>>) -> (Probe, Counted) {
        let before = self.stats();
        let probe =
            self.attacker.probe(&self.listener, self.port, QUIET, |sport| make(&self.attacker, sport));
        (probe, Counted { before, after: self.stats() })
    }

    /// Only the bridge program (TC on docker0), with `--container-port
    /// <cport>/tcp`: the uplink has no XDP, so what the attack does to the
    /// bridge hook is seen alone.
    fn bridge_only(&self) {
        self.agent().ok(&["attach", "--bridge", "docker0"]);
        self.agent().ok(&["block", "--container-port", &format!("{}/tcp", self.cport)]);
    }

    /// Only XDP on the uplink, with `block <port>/tcp`; whatever was
    /// attached before is detached first. Without a bridge program, what
    /// the attack does to the uplink hook is seen alone (the bridge program
    /// would otherwise catch what the uplink let through).
    fn uplink_only(&self) {
        let _ = self.agent().run(&["detach"]);
        self.agent().ok(&["attach", self.rig.out.host_if(), "--no-bridge"]);
        self.agent().ok(&["block", &format!("{}/tcp", self.port)]);
    }
}

impl Attacker {
    /// A whole TCP SYN to the bed's host address.
    fn syn4(&self, sport: u16, port: u16) -> Vec<u8> {
        let dst = Ipv4Addr::new(self.src4.octets()[0], self.src4.octets()[1], self.src4.octets()[2], 1);
        let seg = tcp(self.src4.into(), dst.into(), sport, port, TCP_SYN, &[]);
        self.wire.frame(&[], ETH_P_IP, &ipv4(self.src4, dst, sport, 0, IPPROTO_TCP, &seg))
    }

    fn host4(&self) -> Ipv4Addr {
        let o = self.src4.octets();
        Ipv4Addr::new(o[0], o[1], o[2], 1)
    }

    /// `seg` (to `port`) cut into IPv4 fragments at `pieces`, as frames.
    fn fragments4(&self, seg: &[u8], pieces: &[(usize, usize)], id: u16) -> Vec<Vec<u8>> {
        ipv4_pieces(self.src4, self.host4(), id, seg, pieces)
            .iter()
            .map(|p| self.wire.frame(&[], ETH_P_IP, p))
            .collect()
    }

    fn syn_seg4(&self, sport: u16, port: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
        tcp(self.src4.into(), self.host4().into(), sport, port, flags, payload)
    }
}

// ---------------------------------------------------------------- IPv4 fragments

/// The attack of `split_syn_*`: a SYN cut after `first` bytes of its TCP
/// header. Without dockblock the host reassembles it and the container
/// answers; with a container-port rule (bridge alone) and with a dialed rule
/// (uplink) nothing answers and the hooks count `dropped_evasive`.
fn split_syn(tag: &str, subnet: u8, port: u16, cport: u16, first: usize) {
    let bed = Bed::new(tag, subnet, port, cport);
    let split = |a: &Attacker, sport: u16| {
        let seg = a.syn_seg4(sport, port, TCP_SYN, &[]);
        a.fragments4(&seg, &[(0, first), (first, 20)], sport)
    };
    bed.probe(split)
        .assert_answered(&format!("no dockblock: the kernel reassembles a SYN split after {first} bytes"));
    let f = Findings::default();

    bed.bridge_only();
    let (probe, n) = bed.attack(split);
    let what = format!("--container-port {cport}/tcp, SYN split after {first} bytes");
    f.refused(&probe, &what);
    // The host reassembled the SYN for conntrack and DNAT and cut it again
    // at the sizes it arrived in: the bridge sees the same short first
    // fragment (and the second one only if the container's ARP entry was
    // not resolved; otherwise the kernel abandons the rest).
    f.counted_at_least(&n, "tc", "dropped_evasive", 1, &what);

    bed.uplink_only();
    let (probe, n) = bed.attack(split);
    let what = format!("block {port}/tcp, SYN split after {first} bytes");
    f.refused(&probe, &what);
    if first == 8 {
        // First fragment: the ports but no flags; the second at offset 1
        // could rewrite them (RFC 1858).
        f.counted(&n, "xdp", "dropped_evasive", 2, &what);
    } else {
        // First fragment evasive and remembered, the second dropped with it.
        f.counted(&n, "xdp", "dropped_evasive", 1, &what);
        f.counted(&n, "xdp", "dropped", 1, &what);
    }
    f.finish();
}

/// The known bypass: the first fragment carries only the ports and the
/// sequence number (8 bytes), the second, at offset 1, the flags. Padded to
/// the Ethernet minimum, the old parser read the padding as the rest of the
/// TCP header (flags 0: not a new connection) and passed it.
#[test]
fn split_syn_8_byte_first_fragment() {
    split_syn("ev8", 81, 18401, 18402, 8);
}

/// The first fragment carries 16 bytes: the flags, not the whole header.
#[test]
fn split_syn_16_byte_first_fragment() {
    split_syn("ev16", 82, 18403, 18404, 16);
}

/// A first fragment with the whole header and SYN|ACK (a reply: passes
/// as not new), then a fragment at offset 1 that overlaps it and sets SYN
/// alone (RFC 1858). Linux never builds the SYN (measured here, no
/// dockblock): a rewrite that lies wholly inside the first fragment is
/// taken for a duplicate and dropped (`inet_frag_queue_insert` returns
/// IPFRAG_DUP; the first fragment's bytes stand; `Ip:ReasmReqds` shows the
/// fragments reached reassembly), one that reaches past it is an overlap
/// and the whole datagram is discarded (`IpExt:ReasmOverlaps`, since Linux
/// 4.19). Either way no SYN-ACK. dockblock drops the offset-1 fragment itself
/// (`dropped_evasive`, whatever the port), so no kernel version matters.
#[test]
fn overlapping_fragment_rewrites_flags() {
    const PORT: u16 = 18405;
    let bed = Bed::new("evov", 83, PORT, 18406);
    // The first fragment holds bytes 0..24 of the reply; the rewrite holds
    // bytes 8..`end` of the SYN (24: inside the first, 32: past it).
    let overlap = |end: usize| {
        move |a: &Attacker, sport: u16| {
            let reply = a.syn_seg4(sport, PORT, TCP_SYN | TCP_ACK, &[0; 12]);
            let syn = a.syn_seg4(sport, PORT, TCP_SYN, &vec![0; end - 20]);
            let (src, dst) = (a.src4, a.host4());
            let first = ipv4(src, dst, sport, IP_MF, IPPROTO_TCP, &reply[..24]);
            let rewrite = ipv4(src, dst, sport, 1, IPPROTO_TCP, &syn[8..end]);
            [first, rewrite].iter().map(|p| a.wire.frame(&[], ETH_P_IP, p)).collect::<Vec<_>>()
        }
    };
    let f = Findings::default();
    let uplink = bed.rig.out.host_if().to_string();
    for (end, counter) in [(24, "Ip:ReasmReqds"), (32, "IpExt:ReasmOverlaps")] {
        let before = mibs(&uplink);
        let probe =
            bed.attacker.probe(&bed.listener, PORT, QUIET, |sport| overlap(end)(&bed.attacker, sport));
        probe.assert_refused(&format!("no dockblock: offset-1 rewrite of bytes 8..{end}"));
        let grew = grown(&before, &mibs(&uplink));
        f.check(grew.contains_key(counter), || {
            format!("rewrite of 8..{end}: {counter} did not grow: {grew:?}")
        });
    }

    bed.uplink_only();
    for end in [24, 32] {
        let (probe, n) = bed.attack(overlap(end));
        let what = format!("block {PORT}/tcp, offset-1 rewrite of bytes 8..{end}");
        f.refused(&probe, &what);
        f.counted(&n, "xdp", "passed_not_new", 1, &what);
        f.counted(&n, "xdp", "dropped_evasive", 1, &what);
    }
    f.finish();
}

// ---------------------------------------------------------------- IPv6

/// IPv6 at the uplink: an outside namespace with IPv6 on the veth, a host
/// listener (socat) on `[host6]:port`, an agent not yet attached, and an
/// attacker with spoofed sources `198.18.<subnet>.9` and `<prefix>::9`.
/// Fields drop in order: the agent detaches while the uplink exists.
struct Bed6 {
    agent: Agent,
    _listener: Background,
    attacker: Attacker,
    out: Outside,
    port: u16,
    host6: Ipv6Addr,
}

impl Bed6 {
    fn new(tag: &str, subnet: u8, port: u16) -> Bed6 {
        require_env();
        let out = Outside::new(tag, subnet);
        let prefix = format!("2001:db8:e8:{subnet}");
        let host6: Ipv6Addr = format!("{prefix}::1").parse().unwrap();
        out.add_ipv6(&host6.to_string(), &format!("{prefix}::2"));
        let listen = format!("TCP6-LISTEN:{port},bind=[{host6}],reuseaddr,fork");
        let mut cmd = std::process::Command::new("timeout");
        cmd.args(["60", "socat", &listen, "SYSTEM:echo hello"]);
        let listener = Background::spawn(&mut cmd, port, None);
        let attacker = Attacker::new(&out, subnet, Some(&prefix));
        let agent = Agent::new(tag);
        let bed = Bed6 { agent, _listener: listener, attacker, out, port, host6 };
        bed.probe(ANSWER, |a, sport| vec![bed.syn6(a, sport, IPPROTO_TCP, &[])])
            .assert_answered("rig: a plain IPv6 SYN from the spoofed source, no dockblock");
        bed
    }

    /// A SYN from the attacker's IPv6 address behind `chain` (headers
    /// already linked; `first` is the IPv6 header's next header).
    fn syn6(&self, a: &Attacker, sport: u16, first: u8, chain: &[[u8; 8]]) -> Vec<u8> {
        let src = a.src6.expect("v6 source");
        let seg = tcp(src.into(), self.host6.into(), sport, self.port, TCP_SYN, &[]);
        a.wire.frame(&[], ETH_P_IPV6, &ipv6_chain(src, self.host6, first, chain, &seg))
    }

    fn probe(&self, wait: Duration, make: impl Fn(&Attacker, u16) -> Vec<Vec<u8>>) -> Probe {
        self.attacker.probe(&Listener::Host, self.port, wait, |sport| make(&self.attacker, sport))
    }

    fn attack(&self, make: impl Fn(&Attacker, u16) -> Vec<Vec<u8>>) -> (Probe, Counted) {
        let before = self.agent.json(&["stats"]);
        let probe = self.probe(QUIET, make);
        (probe, Counted { before, after: self.agent.json(&["stats"]) })
    }

    fn block(&self) {
        self.agent.ok(&["attach", self.out.host_if(), "--no-bridge"]);
        self.agent.ok(&["block", &format!("{}/tcp", self.port)]);
    }
}

/// A SYN behind 9 destination options headers: Linux walks them all and
/// answers; dockblock walks 8, so the 9th is `dropped_evasive`. Behind 8
/// the SYN is judged like any other and dropped by the rule.
#[test]
fn ipv6_nine_destination_options() {
    let bed = Bed6::new("ev6do", 85, 18407);
    let bed = &bed;
    let behind = |n: usize| {
        move |a: &Attacker, sport: u16| {
            vec![bed.syn6(a, sport, IPV6_DEST_OPTS, &dest_opts_chain(n, IPPROTO_TCP))]
        }
    };
    bed.probe(ANSWER, behind(9)).assert_answered("no dockblock: a SYN behind 9 destination options headers");
    let f = Findings::default();

    bed.block();
    let (probe, n) = bed.attack(behind(8));
    f.refused(&probe, "block 18407/tcp, 8 destination options headers");
    f.counted(&n, "xdp", "dropped", 1, "8 destination options headers");
    let (probe, n) = bed.attack(behind(9));
    f.refused(&probe, "block 18407/tcp, 9 destination options headers");
    f.counted(&n, "xdp", "dropped_evasive", 1, "9 destination options headers");
    f.finish();
}

/// RFC 7112: a first fragment must hold the whole header chain. Linux
/// discards one that does not and answers ICMPv6 parameter problem, code 3
/// (since 5.x: `ipv6frag_thdr_truncated`), with or without dockblock;
/// dockblock drops it at the uplink as `dropped_evasive` (no ports at all:
/// whatever the port; ports but not the whole TCP header: by the rule).
#[test]
fn ipv6_first_fragment_without_tcp_header() {
    let bed = Bed6::new("ev6fr", 86, 18408);
    // The fragmentable part is `unfrag` (a destination options header, or
    // nothing) and the SYN; the first fragment ends after 8 bytes of it.
    let split = |with_opts: bool| {
        let bed = &bed;
        move |a: &Attacker, sport: u16| {
            let src = a.src6.expect("v6 source");
            let mut part = Vec::new();
            let next = if with_opts {
                part.extend_from_slice(&options_header(IPPROTO_TCP));
                IPV6_DEST_OPTS
            } else {
                IPPROTO_TCP
            };
            part.extend(tcp(src.into(), bed.host6.into(), sport, bed.port, TCP_SYN, &[]));
            let id = u32::from(sport);
            let first =
                ipv6_chain(src, bed.host6, IPV6_FRAGMENT, &[fragment_header(next, 0, true, id)], &part[..8]);
            let rest =
                ipv6_chain(src, bed.host6, IPV6_FRAGMENT, &[fragment_header(next, 1, false, id)], &part[8..]);
            vec![a.wire.frame(&[], ETH_P_IPV6, &first), a.wire.frame(&[], ETH_P_IPV6, &rest)]
        }
    };
    let f = Findings::default();
    for with_opts in [true, false] {
        let probe = bed.probe(QUIET, split(with_opts));
        probe.assert_refused("no dockblock: a first fragment without the whole header chain");
        f.check(probe.icmp6.contains(&(4, 3)), || {
            format!("no ICMPv6 parameter problem (code 3) for the incomplete first fragment: {probe:?}")
        });
    }

    bed.block();
    let (probe, n) = bed.attack(split(true));
    f.refused(&probe, "block 18408/tcp, first fragment ends after a destination options header");
    // Its later fragment (offset 1, key protocol destination options, its
    // first not remembered) passes and waits in vain for reassembly.
    f.counted(&n, "xdp", "dropped_evasive", 1, "first fragment without ports");
    f.counted(&n, "xdp", "passed_fragment", 1, "its later fragment");
    let (probe, n) = bed.attack(split(false));
    f.refused(&probe, "block 18408/tcp, first fragment with 8 bytes of TCP");
    f.counted(&n, "xdp", "dropped_evasive", 2, "8-byte TCP first fragment and its offset-1 fragment");
    f.finish();
}

/// An IPv6 SYN from a v4-mapped source (`::ffff:198.18.87.9`). Linux 6.18
/// lets it through IPv6 input (the uplink counts it delivered) and TCP
/// refuses it when it would open a connection (`tcp_v6_conn_request`:
/// the global `Ip6InHdrErrors` grows, not the interface's); UDP has no
/// such check, and a dual-stack socket would see the datagram as coming
/// from 198.18.87.9 over IPv4 (shown here: the datagram arrives). dockblock
/// drops it at the uplink as `dropped_evasive`, so it never matches an
/// IPv4 allow-list entry or a UDP flow, whose keys are v4-mapped (shown
/// here too: a UDP port open only to 198.18.87.9 stays shut to
/// `::ffff:198.18.87.9`).
#[test]
fn ipv6_v4_mapped_source() {
    let bed = Bed6::new("ev6map", 87, 18409);
    let mapped = |a: &Attacker, sport: u16| {
        let src = a.src4.to_ipv6_mapped();
        let seg = tcp(src.into(), bed.host6.into(), sport, bed.port, TCP_SYN, &[]);
        vec![a.wire.frame(&[], ETH_P_IPV6, &ipv6(src, bed.host6, IPPROTO_TCP, &seg))]
    };
    let f = Findings::default();
    let before = mibs(bed.out.host_if());
    bed.probe(QUIET, mapped).assert_refused("no dockblock: v4-mapped source");
    let grew = grown(&before, &mibs(bed.out.host_if()));
    let counter = "snmp6:Ip6InHdrErrors".to_string();
    f.check(grew.contains_key(&counter), || format!("v4-mapped source: {counter} did not grow: {grew:?}"));

    // UDP to a port open only to the IPv4 address 198.18.87.9: a UDP socket
    // bound to the IPv6 address takes the v4-mapped datagram as it is.
    const UDP: u16 = 18420;
    let host6 = bed.host6;
    let datagram = move |a: &Attacker, sport: u16| {
        let src = a.src4.to_ipv6_mapped();
        let mut seg = vec![0u8; 8];
        seg[0..2].copy_from_slice(&sport.to_be_bytes());
        seg[2..4].copy_from_slice(&UDP.to_be_bytes());
        seg.extend_from_slice(b"spoofed-v4-friend");
        let len = seg.len() as u16;
        seg[4..6].copy_from_slice(&len.to_be_bytes());
        let csum = transport_checksum(src.into(), host6.into(), IPPROTO_UDP, &seg);
        seg[6..8].copy_from_slice(&csum.to_be_bytes());
        a.wire.frame(&[], ETH_P_IPV6, &ipv6(src, host6, IPPROTO_UDP, &seg))
    };
    let received = |sport: u16| {
        let listen = format!("UDP6-RECV:{UDP},bind=[{host6}]");
        let sink = Capture::udp(&[], &["timeout", "10", "socat", "-u", &listen, "-"], UDP);
        bed.attacker.wire.send(&datagram(&bed.attacker, sport));
        std::thread::sleep(Duration::from_millis(300));
        String::from_utf8_lossy(&sink.stop()).contains("spoofed-v4-friend")
    };
    f.check(received(bed.attacker.sport()), || {
        "no dockblock: the v4-mapped UDP datagram did not arrive".into()
    });

    bed.block();
    let (probe, n) = bed.attack(mapped);
    f.refused(&probe, "block 18409/tcp, v4-mapped source");
    f.counted(&n, "xdp", "dropped_evasive", 1, "v4-mapped source");

    bed.agent.ok(&["block", &format!("{UDP}/udp"), "--allow-from", &bed.attacker.src4.to_string()]);
    let before = bed.agent.json(&["stats"]);
    let got = received(bed.attacker.sport());
    let n = Counted { before, after: bed.agent.json(&["stats"]) };
    f.check(!got, || {
        format!(
            "block {UDP}/udp --allow-from {}: the v4-mapped datagram passed as that IPv4 source",
            bed.attacker.src4
        )
    });
    f.counted(&n, "xdp", "dropped_evasive", 1, "v4-mapped UDP source");
    f.finish();
}

// ---------------------------------------------------------------- VLAN

/// Builds an attack's frames from the attacker and a fresh source port.
type Frames<'a> = &'a dyn Fn(&Attacker, u16) -> Vec<Vec<u8>>;

/// Three stacked 802.1Q tags before an IPv4 SYN to a blocked port. Can the
/// kernel deliver that at all? Measured here, no dockblock:
/// - three priority tags (VLAN id 0) on the plain uplink: yes. Linux takes
///   off a tag with id 0 and looks at what follows (`check_vlan_id` in
///   `__netif_receive_skb_core`, core code, no VLAN module needed), again
///   and again, so the SYN reaches IP on the uplink itself with no VLAN
///   device configured, and the container answers;
/// - tags 10/20/30 need a VLAN device stacked three deep on the uplink.
///   This machine's kernel has no 802.1Q support (`CONFIG_VLAN_8021Q` is
///   not set: `ip link add ... type vlan` fails with "Unknown device
///   type"), so that form cannot be delivered here; where the devices can
///   be made, the test runs it too.
///
/// dockblock walks two tags; a third is `dropped_evasive` at the uplink.
#[test]
fn three_vlan_tags() {
    const PORT: u16 = 18410;
    let bed = Bed::new("evvl", 88, PORT, 18411);
    let a = &bed.attacker;
    let uplink = bed.rig.out.host_if().to_string();
    let inner: Ipv4Addr = "198.18.88.65".parse().unwrap();
    let tagged = |tags: [u16; 3], dst: Ipv4Addr| {
        move |a: &Attacker, sport: u16| {
            let seg = tcp(a.src4.into(), dst.into(), sport, PORT, TCP_SYN, &[]);
            vec![a.wire.frame(&tags, ETH_P_IP, &ipv4(a.src4, dst, sport, 0, IPPROTO_TCP, &seg))]
        }
    };
    let priority = tagged([0, 0, 0], bed.host4);
    let stacked = tagged([10, 20, 30], inner);
    bed.probe(priority).assert_answered("no dockblock: three priority tags (VLAN id 0) on the plain uplink");
    let mut attacks: Vec<(&str, Frames)> = vec![("priority tags 0/0/0", &priority)];

    // VLAN devices on the host end (removed with it), the innermost one
    // addressed; replies to the attacker go back through the stack.
    let probe_link =
        run("ip", &["link", "add", "link", &uplink, "name", "dbvl880", "type", "vlan", "id", "10"]);
    if probe_link.status.success() {
        let mut lower = "dbvl880".to_string();
        run_ok("ip", &["link", "set", &lower, "up"]);
        for (i, vid) in [(1, 20), (2, 30)] {
            let name = format!("dbvl88{i}");
            run_ok(
                "ip",
                &["link", "add", "link", &lower, "name", &name, "type", "vlan", "id", &vid.to_string()],
            );
            run_ok("ip", &["link", "set", &name, "up"]);
            lower = name;
        }
        run_ok("ip", &["addr", "add", &format!("{inner}/26"), "dev", &lower]);
        let mac = bed.rig.out.ns_mac().expect("ns mac");
        run_ok("ip", &["route", "replace", &format!("{}/32", a.src4), "dev", &lower]);
        run_ok(
            "ip",
            &["neigh", "replace", &a.src4.to_string(), "lladdr", &mac, "dev", &lower, "nud", "permanent"],
        );
        bed.probe(stacked).assert_answered("no dockblock: tags 10/20/30 through three stacked VLAN devices");
        attacks.push(("tags 10/20/30", &stacked));
    } else {
        eprintln!("three_vlan_tags: no VLAN devices on this kernel ({}): tags 10/20/30 cannot be delivered, not sent", describe(&probe_link));
    }

    let f = Findings::default();
    bed.uplink_only();
    for (what, make) in attacks {
        let (probe, n) = bed.attack(make);
        let what = format!("block {PORT}/tcp, {what}");
        f.refused(&probe, &what);
        f.counted(&n, "xdp", "dropped_evasive", 1, &what);
    }
    f.finish();
}

// ---------------------------------------------------------------- legitimate traffic

/// TCP option kinds in the first outgoing SYN to `port` among `seen`.
fn syn_options(seen: &[Seen], port: u16) -> Option<Vec<u8>> {
    seen.iter().filter(|s| s.outgoing).find_map(|s| {
        let f = &s.bytes;
        (be16(f, 12) == Some(ETH_P_IP) && f.get(23) == Some(&IPPROTO_TCP)).then_some(())?;
        let l4 = 14 + usize::from(f[14] & 0x0f) * 4;
        (be16(f, l4 + 2) == Some(port) && f.get(l4 + 13).copied()? & (TCP_SYN | TCP_ACK) == TCP_SYN)
            .then_some(())?;
        let end = l4 + usize::from(f[l4 + 12] >> 4) * 4;
        let (mut kinds, mut at) = (Vec::new(), l4 + 20);
        while at < end.min(f.len()) {
            match f[at] {
                0 => break,
                1 => at += 1,
                kind => {
                    kinds.push(kind);
                    at += usize::from(*f.get(at + 1)?).max(2);
                }
            }
        }
        Some(kinds)
    })
}

/// With rules of every kind in force on both hooks (dialed TCP and UDP,
/// container port), ordinary traffic still works end to end: curl with every
/// common TCP option, a 4000-byte UDP datagram the sender fragments (after
/// a fragmented datagram to a blocked port was dropped, so the fragment
/// table is in use) and its echo, IPv6 behind a hop-by-hop header, ARP,
/// ping over IPv4 and IPv6, and replies to a container's own connections
/// from ports blocked in both scopes. Nothing of it is counted evasive or
/// malformed.
#[test]
fn legitimate_traffic_passes() {
    const WEB: u16 = 18412;
    const UDP_OPEN: u16 = 18414;
    const UDP_BLOCKED: u16 = 18415;
    const TCP_BLOCKED: u16 = 18416;
    const CPORT_BLOCKED: u16 = 18417;
    const V6: u16 = 18418;
    const SERVER: u16 = 18419;
    let rig = Rig::with_container_port("evok", 89, WEB, 18413);
    let out = &rig.out;
    let prefix = "2001:db8:e8:89";
    let host6 = format!("{prefix}::1");
    out.add_ipv6(&host6, &format!("{prefix}::2"));
    let udp =
        Container::start("evoku", &["-p", &format!("{UDP_OPEN}:9000/udp"), docker::IMAGE, "sleep", "60"]);
    let echo = ["timeout", "40", "socat", "UDP-RECVFROM:9000,fork", "SYSTEM:cat"];
    let _echo = Capture::udp(&udp.netns_cmd(), &echo, 9000);
    let listen = format!("TCP6-LISTEN:{V6},bind=[{host6}],reuseaddr,fork");
    let _v6 = Background::spawn(
        std::process::Command::new("timeout").args(["40", "socat", &listen, "SYSTEM:echo hello"]),
        V6,
        None,
    );
    let _server = out.serve_pong(SERVER);
    let attacker = Attacker::new(out, 89, Some(prefix));
    rig.attach();
    rig.agent.ok(&["block", &format!("{TCP_BLOCKED}/tcp"), &format!("{UDP_BLOCKED}/udp")]);
    rig.agent.ok(&["block", "--container-port", &format!("{CPORT_BLOCKED}/tcp")]);
    let before = rig.agent.json(&["stats"]);
    let f = Findings::default();

    // curl, its SYN seen on the wire.
    let (fetched, seen) = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            attacker
                .wire
                .watch(Duration::from_secs(4), |s| syn_options(std::slice::from_ref(s), WEB).is_some())
        });
        (rig.reachable(), watcher.join().expect("watcher"))
    });
    f.check(fetched, || format!("curl {} failed with rules in force", rig.url));
    let kinds = syn_options(&seen, WEB).unwrap_or_default();
    for (kind, name) in [(2, "MSS"), (4, "SACK permitted"), (8, "timestamps"), (3, "window scale")] {
        f.check(kinds.contains(&kind), || format!("curl's SYN lacks {name} (options {kinds:?})"));
    }

    // 4000 bytes over MTU 1500: three fragments each way.
    let datagram = |port: u16| {
        let script = format!(
            "head -c 4000 /dev/zero | tr '\\0' x | timeout 5 socat -t 2 -b 65536 - UDP:{}:{port}",
            out.host_ip()
        );
        let o = run_for(Duration::from_secs(10), "ip", &["netns", "exec", out.name(), "sh", "-c", &script]);
        o.stdout.len()
    };
    datagram(UDP_BLOCKED);
    let echoed = datagram(UDP_OPEN);
    f.check(echoed == 4000, || format!("the 4000-byte UDP echo brought back {echoed} bytes"));

    // IPv6: a SYN behind a hop-by-hop header, and a whole connection.
    let hbh = attacker.probe(&Listener::Host, V6, ANSWER, |sport| {
        let (src, dst) = (attacker.src6.unwrap(), host6.parse::<Ipv6Addr>().unwrap());
        let seg = tcp(src.into(), dst.into(), sport, V6, TCP_SYN, &[]);
        vec![attacker.wire.frame(
            &[],
            ETH_P_IPV6,
            &ipv6_chain(src, dst, IPV6_HOP_BY_HOP, &[options_header(IPPROTO_TCP)], &seg),
        )]
    });
    f.check(hbh.syn_ack && hbh.half_open, || {
        format!("IPv6 SYN behind a hop-by-hop header not answered: {hbh:?}")
    });
    let target = format!("TCP6:[{host6}]:{V6},connect-timeout=2");
    let v6 = out.exec("timeout", &["5", "socat", "-", &target]);
    f.check(String::from_utf8_lossy(&v6.stdout).contains("hello"), || {
        format!("IPv6 connection failed: {}", describe(&v6))
    });

    // ARP (the neighbour entry flushed first) and ping, both families.
    out.exec_ok("ip", &["neigh", "flush", "dev", out.ns_if()]);
    for (family, addr) in [("-4", out.host_ip().to_string()), ("-6", host6.clone())] {
        // busybox: the machine has no separate ping.
        let ping = out.exec("busybox", &["ping", family, "-c", "1", "-W", "2", &addr]);
        f.check(ping.status.success(), || format!("ping {addr} failed: {}", describe(&ping)));
    }

    // The web container dials out from ports blocked as dialed and as
    // container ports: the replies (SYN-ACK and data) come back.
    for sport in [TCP_BLOCKED, CPORT_BLOCKED] {
        let addr = format!("TCP:{}:{SERVER},sourceport={sport},reuseaddr", out.ns_ip());
        let o = rig.web.in_netns("timeout", &["10", "socat", "-T", "5", "-", &addr]);
        f.check(String::from_utf8_lossy(&o.stdout).contains("pong"), || {
            format!("reply to the container's connection from port {sport} dropped: {}", describe(&o))
        });
    }

    let n = Counted { before, after: rig.agent.json(&["stats"]) };
    for name in ["dropped_evasive", "dropped_malformed"] {
        f.counted(&n, "xdp", name, 0, "legitimate traffic");
    }
    f.counted(&n, "xdp", "dropped", 3, "the three fragments to the blocked UDP port");
    f.finish();
}
