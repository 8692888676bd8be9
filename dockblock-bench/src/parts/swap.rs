//! Packets misjudged while a rule set is swapped. A live-frames SYN flood
//! (random source ports) hits the blocked published port while the rule set
//! is replaced back and forth between two sets that both block it (18080
//! plus 100 other ports each, different ones). Every flood packet that gets
//! past the filter is DNATed and forwarded to the container, where an nft
//! counter in the container's namespace counts it: the misjudged packets.
//!
//! Methods: dockblock `apply` (generation switch), nft `-f` with the chain
//! flushed and refilled in one transaction, iptables-restore doing the same
//! in one transaction, and the scripted pattern `iptables -F CHAIN` followed
//! by a separate iptables-restore that adds the new rules.
use super::Ctx;
use crate::{
    peers::{self, COMMENT},
    traffic::{self, Flood, Generator},
    world::{self, agent_ok, detach_agent, Topology, BLOCKED_PORT, HOST_IF},
};
use anyhow::{Context, Result};
use dockblock_testkit::cmd::{self, ignore, ok, ok_input};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const NFT_TABLE: &str = "dbb_bench_swap";
pub const IPT_CHAIN: &str = "DBB-BENCH";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    DockblockApply,
    NftAtomic,
    IptRestoreAtomic,
    IptFlushThenAdd,
}

impl Method {
    fn id(self) -> &'static str {
        match self {
            Method::DockblockApply => "dockblock apply (XDP native)",
            Method::NftAtomic => "nft -f: flush chain + rules, one transaction (raw prerouting)",
            Method::IptRestoreAtomic => "iptables-restore: flush chain + rules, one transaction (raw)",
            Method::IptFlushThenAdd => "iptables -F chain, then iptables-restore the rules (raw)",
        }
    }
}

fn ports(set: u8) -> Vec<u16> {
    let base = if set == 0 { 20000 } else { 30000 };
    let mut v = vec![BLOCKED_PORT];
    v.extend(base..base + 100);
    v
}

fn dockblock_file(set: u8) -> String {
    ports(set).iter().map(|p| format!("[[rule]]\nports = \"{p}/tcp\"\n")).collect::<Vec<_>>().join("\n")
}

fn nft_rules(set: u8) -> String {
    ports(set)
        .iter()
        .map(|p| format!("add rule inet {NFT_TABLE} c iifname \"{HOST_IF}\" tcp dport {p} counter drop\n"))
        .collect()
}

fn ipt_rules(set: u8) -> String {
    ports(set).iter().map(|p| format!("-A {IPT_CHAIN} -p tcp -m tcp --dport {p} -j DROP\n")).collect()
}

/// Installs set `set` with `m` (the first call creates what `m` needs).
fn install(m: Method, set: u8, first: bool) -> Result<()> {
    match m {
        Method::DockblockApply => {
            if first {
                agent_ok(&["attach", HOST_IF, "--no-bridge", "--xdp-mode", "native"])?;
            }
            let path = format!("/tmp/dockblock-bench-swap-{set}-{}.toml", std::process::id());
            std::fs::write(&path, dockblock_file(set))?;
            let r = agent_ok(&["apply", &path]);
            let _ = std::fs::remove_file(&path);
            r.map(drop)
        }
        Method::NftAtomic => {
            let mut f = String::new();
            if first {
                f += &format!(
                    "table inet {NFT_TABLE} {{\n chain c {{\n  type filter hook prerouting priority raw; policy accept;\n }}\n}}\n"
                );
            }
            f += &format!("flush chain inet {NFT_TABLE} c\n");
            f += &nft_rules(set);
            ok_input(&["nft", "-f", "-"], &f)?;
            Ok(())
        }
        Method::IptRestoreAtomic | Method::IptFlushThenAdd => {
            let mut f = String::from("*raw\n");
            if first {
                f += &format!(":{IPT_CHAIN} - [0:0]\n");
                f += &format!("-A PREROUTING -i {HOST_IF} -m comment --comment {COMMENT} -j {IPT_CHAIN}\n");
            } else if m == Method::IptRestoreAtomic {
                // Declaring a chain with --noflush flushes it, in the same
                // transaction as the rules that follow.
                f += &format!(":{IPT_CHAIN} - [0:0]\n");
            } else {
                ok(&["iptables", "-t", "raw", "-F", IPT_CHAIN])?;
            }
            f += &ipt_rules(set);
            f += "COMMIT\n";
            ok_input(&["iptables-restore", "--noflush"], &f)?;
            Ok(())
        }
    }
}

/// Removes what any method set up.
pub fn remove_all() {
    detach_agent();
    ignore(&["nft", "delete", "table", "inet", NFT_TABLE]);
    // The jump (carrying our comment) goes with variants' rule cleanup;
    // then our own chain can be flushed and deleted.
    peers::delete_ipt_rules("raw", "PREROUTING");
    ignore(&["iptables", "-t", "raw", "-F", IPT_CHAIN]);
    ignore(&["iptables", "-t", "raw", "-X", IPT_CHAIN]);
}

/// What of this part is still in place, if anything.
pub fn leftovers() -> Option<String> {
    let mut found = Vec::new();
    if ok(&["nft", "list", "tables"]).unwrap_or_default().contains(NFT_TABLE) {
        found.push(format!("nft table {NFT_TABLE}"));
    }
    if cmd::succeeds(&["iptables", "-t", "raw", "-S", IPT_CHAIN]) {
        found.push(format!("iptables chain raw {IPT_CHAIN}"));
    }
    (!found.is_empty()).then(|| found.join(", "))
}

struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        remove_all();
    }
}

pub fn run(ctx: &Ctx, topo: &Topology) -> Result<Value> {
    let secs = if ctx.quick { 2.5 } else { 5.0 };
    let methods =
        [Method::DockblockApply, Method::NftAtomic, Method::IptRestoreAtomic, Method::IptFlushThenAdd];
    let mut results = Vec::new();
    for m in methods {
        ctx.check_stop()?;
        remove_all();
        let _guard = Guard;
        install(m, 0, true).with_context(|| format!("setting up {}", m.id()))?;
        world::clear_conntrack();
        let (hits0, rx0) = (topo.container_hits()?, traffic::received());
        let f = Flood::new(Generator::Live, "tcp", 100_000_000, secs);
        let mut gen = traffic::live_background(topo, &f)?;
        std::thread::sleep(Duration::from_millis(300));
        let start = Instant::now();
        let mut swaps = 0u32;
        let mut swap_secs = Vec::new();
        while start.elapsed().as_secs_f64() < secs - 0.8 {
            let t = Instant::now();
            install(m, u8::from(swaps.is_multiple_of(2)), false)?;
            swap_secs.push(t.elapsed().as_secs_f64());
            swaps += 1;
        }
        let _ = cmd::wait_limit(&mut gen, Duration::from_secs_f64(secs + 20.0));
        std::thread::sleep(Duration::from_millis(100));
        let misjudged = topo.container_hits()?.saturating_sub(hits0);
        let received = traffic::received().saturating_sub(rx0);
        swap_secs.sort_by(f64::total_cmp);
        let median_swap = swap_secs.get(swap_secs.len() / 2).copied();
        ctx.log(&format!(
            "swap: {:<64} {swaps} swaps, {received} packets received, {misjudged} got through",
            m.id()
        ));
        results.push(json!({
            "method": m.id(), "swaps": swaps, "received": received,
            "misjudged": misjudged, "median_swap_seconds": median_swap,
        }));
    }
    Ok(json!({"seconds": secs, "results": results}))
}
