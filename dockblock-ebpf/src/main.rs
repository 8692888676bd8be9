//! dockblock's kernel programs: thin entry points over shared logic.
//!
//! - `dockblock_xdp` runs on the host uplink(s), before conntrack and DNAT,
//!   and judges the port a client dials (scope DIALED).
//! - `dockblock_tc` runs at TCX egress of the Docker bridge(s), after DNAT,
//!   and judges the container port (scope CONTAINER).
//! - `dockblock_track_up` (uplink egress) and `dockblock_track_br` (bridge
//!   ingress) record UDP flows opened from blocked ports, so replies pass.
#![no_std]
#![no_main]

mod events;
mod frags;
mod maps;
mod parse;
mod track;
mod verdict;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use dockblock_common::{hook, scope};
use events::Seen;
use parse::Cursor;
use verdict::{judge, Verdict};

/// Linear bytes for two VLAN tags, an IPv6 header with a few extension
/// headers (or the longest IPv4 header) and a TCP header.
const HEADERS_MAX: u32 = 14 + 8 + 40 + 64 + 20;

#[xdp]
pub fn dockblock_xdp(ctx: XdpContext) -> u32 {
    let cur = Cursor::new(ctx.data(), ctx.data_end());
    let len = (ctx.data_end() - ctx.data()) as u64;
    let seen = Seen { hook: hook::XDP, ifindex: ctx.ingress_ifindex() as u32 };
    match judge(&cur, scope::DIALED, len, &seen, false) {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
    }
}

#[classifier]
pub fn dockblock_tc(ctx: TcContext) -> i32 {
    let cur = linear_cursor(&ctx);
    // SAFETY: the context points at a valid __sk_buff.
    let (ifindex, ingress_ifindex) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).ingress_ifindex) };
    let seen = Seen { hook: hook::TC, ifindex };
    // Forwarded packets carry the interface they came in on; the host's own
    // (docker-proxy, curl to a container IP) have none.
    match judge(&cur, scope::CONTAINER, ctx.len() as u64, &seen, ingress_ifindex == 0) {
        // TCX_NEXT: leave the packet to any program after us, then the stack.
        Verdict::Pass => TC_ACT_UNSPEC,
        Verdict::Drop => TC_ACT_SHOT,
    }
}

#[classifier]
pub fn dockblock_track_up(ctx: TcContext) -> i32 {
    track::track(&linear_cursor(&ctx), scope::DIALED);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn dockblock_track_br(ctx: TcContext) -> i32 {
    track::track(&linear_cursor(&ctx), scope::CONTAINER);
    TC_ACT_UNSPEC
}

/// Headers may sit in paged data; make them linear so direct packet access
/// sees them. Failure only means a short linear part, which the parser then
/// counts as malformed and passes.
#[inline(always)]
fn linear_cursor(ctx: &TcContext) -> Cursor {
    let linear = (ctx.data_end() - ctx.data()) as u32;
    if linear < HEADERS_MAX && ctx.len() > linear {
        let _ = ctx.pull_data(core::cmp::min(ctx.len(), HEADERS_MAX));
    }
    Cursor::new(ctx.data(), ctx.data_end())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
