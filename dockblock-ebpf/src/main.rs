//! dockblock's kernel programs: thin entry points over shared logic.
//!
//! - `dockblock_xdp` runs on the host uplink(s), before conntrack and DNAT,
//!   and judges the port a client dials (scope DIALED).
//! - `dockblock_tc` runs at TCX egress of the Docker bridge(s), after DNAT,
//!   and judges the container port (scope CONTAINER).
//! - `dockblock_track_up` (uplink egress) and `dockblock_track_br` (bridge
//!   ingress) record UDP flows opened from blocked ports, so replies pass.
//! - `dockblock_veth` runs at TCX egress of each container's host-side veth
//!   and judges that container's own rules (`VETH_RULES`, and
//!   `VETH_SCOPED_RULES` by ingress interface for `--on`);
//!   `dockblock_track_veth` (its ingress) records the container's UDP flows.
#![no_std]
#![no_main]

mod events;
mod frags;
mod maps;
mod parse;
mod track;
mod verdict;
mod veth;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use dockblock_common::{hook, scope};
use events::Seen;
use parse::{parse, Cursor, Facts, Reject, PARSE_DEPTH_MAX};
use verdict::{judge, Ingress, PortTable, Verdict};

#[xdp]
pub fn dockblock_xdp(ctx: XdpContext) -> u32 {
    let len = ctx.data_end() - ctx.data();
    let ifindex = ctx.ingress_ifindex() as u32;
    let seen = Seen { hook: hook::XDP, ifindex };
    // XDP sees only the linear buffer (no frags support): it is the packet.
    let parse = || parse(&Cursor::new(ctx.data(), ctx.data_end(), len));
    let lookup = PortTable { scope: scope::DIALED, ingress: Ingress::Known(ifindex), by_address: true };
    match judge(scope::DIALED, len as u64, &seen, false, parse, lookup) {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
    }
}

#[classifier]
pub fn dockblock_tc(ctx: TcContext) -> i32 {
    // SAFETY: the context points at a valid __sk_buff.
    let (ifindex, ingress_ifindex) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).ingress_ifindex) };
    let seen = Seen { hook: hook::TC, ifindex };
    // Forwarded packets carry the interface they came in on; the host's own
    // (docker-proxy, curl to a container IP) have none.
    let parse = || parse_skb(&ctx);
    tc_verdict(judge(
        scope::CONTAINER,
        u64::from(ctx.len()),
        &seen,
        ingress_ifindex == 0,
        parse,
        // `--on` by the interface it came in on (the host's own: 0, no key).
        PortTable { scope: scope::CONTAINER, ingress: Ingress::Skb(ctx.skb.skb), by_address: false },
    ))
}

#[classifier]
pub fn dockblock_veth(ctx: TcContext) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: the context points at a valid __sk_buff.
    let (ifindex, ingress_ifindex) = unsafe { ((*skb).ifindex, (*skb).ingress_ifindex) };
    let seen = Seen { hook: hook::VETH, ifindex };
    let parse = || parse_skb(&ctx);
    // The origin is read again after the parse: carried across it, the
    // "host or not" branch before it made the verifier walk the parse and
    // the judgement twice (over its budget).
    let lookup = veth::VethTable { ifindex, skb };
    // Replies to the container's own UDP flows are found in the container
    // scope, as on the bridge.
    tc_verdict(judge(scope::CONTAINER, u64::from(ctx.len()), &seen, ingress_ifindex == 0, parse, lookup))
}

#[inline(always)]
fn tc_verdict(verdict: Verdict) -> i32 {
    match verdict {
        // TCX_NEXT: leave the packet to any program after us, then the stack.
        Verdict::Pass => TC_ACT_UNSPEC,
        Verdict::Drop => TC_ACT_SHOT,
    }
}

#[classifier]
pub fn dockblock_track_up(ctx: TcContext) -> i32 {
    track::track(parse_skb(&ctx), scope::DIALED, track::port_table_blocks(scope::DIALED));
    TC_ACT_UNSPEC
}

#[classifier]
pub fn dockblock_track_br(ctx: TcContext) -> i32 {
    track::track(parse_skb(&ctx), scope::CONTAINER, track::port_table_blocks(scope::CONTAINER));
    TC_ACT_UNSPEC
}

#[classifier]
pub fn dockblock_track_veth(ctx: TcContext) -> i32 {
    // At the host veth's ingress, ifindex is the veth the container sends on.
    // SAFETY: the context points at a valid __sk_buff.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    track::track(parse_skb(&ctx), scope::CONTAINER, veth::blocks(ifindex));
    TC_ACT_UNSPEC
}

/// Linear bytes that cover the headers of nearly every packet: two VLAN
/// tags, an IPv6 header with a few extension headers (or the longest IPv4
/// header) and a TCP header.
const HEADERS_MAX: usize = 14 + 8 + 40 + 64 + 20;

/// Parses an skb whose headers may sit partly in paged data. Only when the
/// parser needs bytes beyond the linear part does it pull (bpf_skb_pull_data)
/// and parse again: first a few headers' worth (usually only the transport
/// header of a forwarded GRO packet is missing, and copying 16 KiB of it
/// into its head would cost bulk traffic), then everything the parser can
/// ever read (or the whole packet, if shorter). A failed pull:
/// `Reject::Short`, which the verdict drops as evasive. No loop, and no
/// value carried from one parse to the next (a pull sized by the failed
/// read made the verifier walk the next parse once per size and exceed its
/// budget).
#[inline(always)]
fn parse_skb(ctx: &TcContext) -> Result<Facts, Reject> {
    let len = ctx.len() as usize;
    match parse(&Cursor::new(ctx.data(), ctx.data_end(), len)) {
        Err(Reject::Short { .. }) => {}
        parsed => return parsed,
    }
    if ctx.pull_data(core::cmp::min(len, HEADERS_MAX) as u32).is_err() {
        return Err(Reject::Short { need: 0 });
    }
    match parse(&Cursor::new(ctx.data(), ctx.data_end(), len)) {
        Err(Reject::Short { .. }) => {}
        parsed => return parsed,
    }
    if ctx.pull_data(core::cmp::min(len, PARSE_DEPTH_MAX) as u32).is_err() {
        return Err(Reject::Short { need: 0 });
    }
    parse(&Cursor::new(ctx.data(), ctx.data_end(), len))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
