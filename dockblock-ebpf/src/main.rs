//! dockblock's kernel programs: thin entry points over one shared verdict.
//!
//! - `dockblock_xdp` runs on the host uplink(s), before conntrack and DNAT,
//!   and judges the port a client dials (scope DIALED).
//! - `dockblock_tc` runs at TCX egress of the Docker bridge(s), after DNAT,
//!   and judges the container port (scope CONTAINER).
#![no_std]
#![no_main]

mod maps;
mod parse;
mod verdict;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use dockblock_common::{hook, scope};
use parse::Cursor;
use verdict::{judge, Verdict};

/// Enough linear bytes for Ethernet, the longest IPv4 header and a TCP header.
const HEADERS_MAX: u32 = 14 + 60 + 20;

#[xdp]
pub fn dockblock_xdp(ctx: XdpContext) -> u32 {
    let cur = Cursor::new(ctx.data(), ctx.data_end());
    let len = (ctx.data_end() - ctx.data()) as u64;
    match judge(&cur, hook::XDP, scope::DIALED, len) {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
    }
}

#[classifier]
pub fn dockblock_tc(ctx: TcContext) -> i32 {
    // Headers may sit in paged data; make them linear so direct packet
    // access sees them. Failure only means a short linear part, which the
    // parser then counts as malformed and passes.
    let linear = (ctx.data_end() - ctx.data()) as u32;
    if linear < HEADERS_MAX && ctx.len() > linear {
        let _ = ctx.pull_data(core::cmp::min(ctx.len(), HEADERS_MAX));
    }
    let cur = Cursor::new(ctx.data(), ctx.data_end());
    match judge(&cur, hook::TC, scope::CONTAINER, ctx.len() as u64) {
        // TCX_NEXT: leave the packet to any program after us, then the stack.
        Verdict::Pass => TC_ACT_UNSPEC,
        Verdict::Drop => TC_ACT_SHOT,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
