//! The benchmark's kernel programs (`cargo xtask bench`), kept out of the
//! filter's own crate so nothing of them ships with the agent.
//! `dockblock-bench flood` runs the generators with BPF_PROG_TEST_RUN
//! in live-frames mode inside the bench's "outside" network namespace: every
//! XDP_TX sends the frame out of the outside veth end, so it reaches the
//! host end (the uplink under test) as a real received frame.
//!
//! Live-frames mode recycles its pages without resetting their contents, and
//! the receiving stack writes into them (DNAT rewrites address and port,
//! forwarding writes a new Ethernet header). Sent as is, a page would come
//! back as a frame for the container's MAC and be dropped as "other host". So
//! each run first writes the whole frame again from `FRAME`, which the
//! loader fills in (`EbpfLoader::override_global`).
//!
//! - `bench_tx`: sends `FRAME` (one flow).
//! - `floor_xdp`, `floor_tc`: return at once; `dockblock-bench cost` runs
//!   them like the judging programs, so their time is what BPF_PROG_TEST_RUN
//!   itself costs per run on each hook (the floor under every cost figure).
//! - `drop_all`: drops every frame. `dockblock-bench drop-all` attaches it
//!   (native XDP) to the uplink as the bench's reference receiver: the
//!   cheapest way a host can discard a frame, so what a filter costs above
//!   it is the filter's own work.
//! - `bench_tx_flows`: sends `FRAME` with a random source port (1-65535) and,
//!   when `DPORT_SPAN` > 1, a random destination port in
//!   [dport, dport + DPORT_SPAN), the L4 checksum patched to match (RFC
//!   1624). Conntrack then sees up to 65,535 flows per destination port.
//!   `FRAME` must be IPv4 without options, TCP or UDP.
// Built for bpfel-unknown-none by dockblock-bench's build.rs. On the host
// (`cargo build --workspace`) it compiles as an ordinary binary that does
// nothing, so the workspace builds without excluding it.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_UNSPEC},
    helpers::bpf_get_prandom_u32,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
    Global,
};
use dockblock_common::net::{ETH_HLEN, IPPROTO_TCP, IPPROTO_UDP, IPV4_HLEN};

/// Frame length in 32-bit words: 60 bytes, 64 on the wire with the FCS.
pub const FRAME_WORDS: usize = 15;
const FRAME_LEN: usize = FRAME_WORDS * 4;

/// The frame to send, set by the loader.
#[unsafe(no_mangle)]
static FRAME: Global<[u32; FRAME_WORDS]> = Global::new([0; FRAME_WORDS]);

/// Number of destination ports to spread frames over (0 or 1: `FRAME`'s).
#[unsafe(no_mangle)]
static DPORT_SPAN: Global<u32> = Global::new(0);

/// Where the transport header starts (IPv4 without options).
const L4: usize = ETH_HLEN + IPV4_HLEN;
/// The IPv4 header's protocol byte.
const IP_PROTO_AT: usize = ETH_HLEN + 9;

/// Writes `FRAME` over the packet; false if the packet is not `FRAME_LEN`
/// bytes long (then it is sent untouched).
#[inline(always)]
fn restore(ctx: &XdpContext) -> bool {
    let data = ctx.data();
    if data + FRAME_LEN > ctx.data_end() {
        return false;
    }
    let frame = FRAME.load();
    let mut i = 0;
    while i < FRAME_WORDS {
        // SAFETY: i * 4 + 4 <= FRAME_LEN, checked above.
        unsafe { core::ptr::write_unaligned((data + i * 4) as *mut u32, frame[i]) };
        i += 1;
    }
    true
}

#[xdp]
pub fn bench_tx(ctx: XdpContext) -> u32 {
    restore(&ctx);
    xdp_action::XDP_TX
}

#[xdp]
pub fn bench_tx_flows(ctx: XdpContext) -> u32 {
    if !restore(&ctx) {
        return xdp_action::XDP_TX;
    }
    let data = ctx.data();
    if data + FRAME_LEN > ctx.data_end() {
        return xdp_action::XDP_TX;
    }
    // SAFETY: every offset below is < L4 + 20 <= FRAME_LEN, checked above.
    unsafe {
        let (csum_at, is_udp) = match *((data + IP_PROTO_AT) as *const u8) {
            IPPROTO_TCP => (L4 + 16, false),
            IPPROTO_UDP => (L4 + 6, true),
            _ => return xdp_action::XDP_TX,
        };
        let sport = (data + L4) as *mut u16;
        let dport = (data + L4 + 2) as *mut u16;
        let csum = (data + csum_at) as *mut u16;
        let old_s = core::ptr::read_unaligned(sport);
        let new_s = ((bpf_get_prandom_u32() % 65535) as u16 + 1).to_be();
        let old_d = core::ptr::read_unaligned(dport);
        let span = DPORT_SPAN.load();
        let new_d = if span > 1 {
            let base = u16::from_be(old_d) as u32;
            ((base + bpf_get_prandom_u32() % span) as u16).to_be()
        } else {
            old_d
        };
        let hc = core::ptr::read_unaligned(csum);
        core::ptr::write_unaligned(sport, new_s);
        core::ptr::write_unaligned(dport, new_d);
        // UDP over IPv4 may carry no checksum (0): leave it so.
        if hc != 0 || !is_udp {
            // HC' = ~(~HC + ~m + m') for each changed word, in one's
            // complement; byte order does not matter as long as every word
            // uses the same one.
            let mut sum =
                u32::from(!hc) + u32::from(!old_s) + u32::from(new_s) + u32::from(!old_d) + u32::from(new_d);
            sum = (sum & 0xffff) + (sum >> 16);
            sum = (sum & 0xffff) + (sum >> 16);
            let mut out = !(sum as u16);
            if out == 0 && is_udp {
                out = 0xffff; // UDP: 0 would mean "no checksum"
            }
            core::ptr::write_unaligned(csum, out);
        }
    }
    xdp_action::XDP_TX
}

#[xdp]
pub fn floor_xdp(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn drop_all(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

#[classifier]
pub fn floor_tc(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
