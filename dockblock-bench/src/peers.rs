//! The filters compared (the "peers", on top of the world), each set up and
//! torn down the way an operator would, and read back through its own
//! counters. Every rule the
//! bench adds carries the comment `dockblock-bench` (iptables) or lives in a
//! table of its own (nft), so removal is exact: Docker's chains are never
//! flushed, only our rules deleted.
use crate::world::{
    self, agent_ok, detach_agent, BLOCKED_CPORT, BLOCKED_PORT, BRIDGE, HOST_IF, HOST_IP, NS_IP, PIN_DIR,
};
use anyhow::{Context, Result};
use dockblock_common::outcome;
use dockblock_testkit::cmd::{self, ignore, ok, ok_input};
use serde_json::Value;
use std::path::Path;

pub const COMMENT: &str = "dockblock-bench";
const NFT_FWD: &str = "dbb_bench_fwd";
const NFT_RAW: &str = "dbb_bench_raw";
/// Where `dockblock-bench drop-all` pins its link.
const DROP_ALL_PIN: &str = "/sys/fs/bpf/dockblock-bench-drop-all";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    V0,
    V0xNative,
    V0xSkb,
    XdpDropAll,
    IptUser,
    IptCtorig,
    IptRaw,
    NftFwdLinear,
    NftFwdSet,
    NftRaw,
    NftRawSet,
    XdpFilterNative,
    XdpFilterSkb,
    DbXdpNative,
    DbXdpSkb,
    DbTc,
}

use Variant::*;

/// The flood comparison, in the order every round runs them.
pub const FLOOD: [Variant; 15] = [
    V0,
    V0xNative,
    V0xSkb,
    XdpDropAll,
    IptUser,
    IptCtorig,
    IptRaw,
    NftFwdLinear,
    NftFwdSet,
    NftRaw,
    XdpFilterNative,
    XdpFilterSkb,
    DbXdpNative,
    DbXdpSkb,
    DbTc,
];

impl Variant {
    pub fn id(self) -> &'static str {
        match self {
            V0 => "v0",
            V0xNative => "v0x-native",
            V0xSkb => "v0x-skb",
            XdpDropAll => "xdp-drop-all",
            IptUser => "iptables-docker-user",
            IptCtorig => "iptables-ctorigdstport",
            IptRaw => "iptables-raw",
            NftFwdLinear => "nft-forward-linear",
            NftFwdSet => "nft-forward-set",
            NftRaw => "nft-raw-prerouting",
            NftRawSet => "nft-raw-prerouting-set",
            XdpFilterNative => "xdp-filter-native",
            XdpFilterSkb => "xdp-filter-skb",
            DbXdpNative => "dockblock-xdp-native",
            DbXdpSkb => "dockblock-xdp-skb",
            DbTc => "dockblock-tc",
        }
    }

    /// What it is, for the report.
    pub fn describe(self) -> &'static str {
        match self {
            V0 => "no filter",
            V0xNative => "dockblock attached (XDP native on the uplink, TC on the bridge), no rules",
            V0xSkb => "dockblock attached (XDP skb mode on the uplink, TC on the bridge), no rules",
            XdpDropAll => "reference receiver: a native XDP program on the uplink that drops every frame (paced floods only)",
            IptUser => "iptables DOCKER-USER: -d CONTAINER -p tcp/udp --dport 28080 -j DROP (container port, after DNAT)",
            IptCtorig => "iptables DOCKER-USER: -m conntrack --ctorigdst HOST --ctorigdstport 18080 -j DROP (published port)",
            IptRaw => "iptables -t raw PREROUTING -i UPLINK -p tcp/udp --dport 18080 -j DROP (before conntrack)",
            NftFwdLinear => "nft forward hook, priority filter - 1: one rule per port (container port)",
            NftFwdSet => "nft forward hook, priority filter - 1: one rule matching a port set",
            NftRaw => "nft prerouting hook, priority raw (-300): one rule per port (published port)",
            NftRawSet => "nft prerouting hook, priority raw (-300): one rule matching a port set",
            XdpFilterNative => "xdp-filter (xdp-tools) native mode on the uplink, port 18080",
            XdpFilterSkb => "xdp-filter (xdp-tools) skb mode on the uplink, port 18080",
            DbXdpNative => "dockblock XDP native mode on the uplink: block 18080",
            DbXdpSkb => "dockblock XDP skb mode on the uplink: block 18080",
            DbTc => "dockblock TC (TCX egress) on the container bridge: block --container-port 28080",
        }
    }

    /// Live-frames traffic reaches a veth only through NAPI; with a
    /// generic (skb-mode) XDP program on the receiver the frames vanish, so
    /// these variants are measured with trafgen only.
    pub fn takes_live_frames(self) -> bool {
        !matches!(self, V0xSkb | XdpFilterSkb | DbXdpSkb)
    }
}

/// What a variant blocks: dialed (published, pre-DNAT) ports for the filters
/// that run before DNAT, container ports for those after it.
#[derive(Clone, Debug)]
pub struct Blocked {
    pub dialed: Vec<u16>,
    pub container: Vec<u16>,
    pub protos: Vec<&'static str>,
}

impl Blocked {
    /// The flood comparison: the one published port, TCP and UDP.
    pub fn target() -> Self {
        Self { dialed: vec![BLOCKED_PORT], container: vec![BLOCKED_CPORT], protos: vec!["tcp", "udp"] }
    }
}

/// Sets `v` up. Pair with `remove` (or use `Applied`).
pub fn apply(v: Variant, b: &Blocked, container_ip: &str) -> Result<()> {
    let a = agent_ok;
    let max_rules = (b.dialed.len().max(b.container.len()) + 16).max(4095).to_string();
    let specs = |ports: &[u16]| -> Vec<String> {
        let mut s = Vec::new();
        for p in ports {
            if b.protos.len() == 2 {
                s.push(p.to_string());
            } else {
                s.push(format!("{p}/{}", b.protos[0]));
            }
        }
        s
    };
    match v {
        V0 => {}
        XdpDropAll => {
            let bench = world::bench_bin();
            let bench = bench.to_str().context("bench path")?;
            ok(&[bench, "drop-all", "--ifname", HOST_IF, "--pin", DROP_ALL_PIN])?;
        }
        V0xNative | V0xSkb => {
            let mode = if v == V0xNative { "native" } else { "skb" };
            a(&["attach", HOST_IF, "--bridge", BRIDGE, "--xdp-mode", mode])?;
        }
        DbXdpNative | DbXdpSkb => {
            let mode = if v == DbXdpNative { "native" } else { "skb" };
            a(&["attach", HOST_IF, "--no-bridge", "--xdp-mode", mode, "--max-rules", &max_rules])?;
            let specs = specs(&b.dialed);
            let mut args = vec!["block"];
            args.extend(specs.iter().map(String::as_str));
            a(&args)?;
        }
        DbTc => {
            a(&["attach", "--bridge", BRIDGE, "--max-rules", &max_rules])?;
            let specs = specs(&b.container);
            let mut args = vec!["block", "--container-port"];
            args.extend(specs.iter().map(String::as_str));
            a(&args)?;
        }
        IptUser | IptCtorig | IptRaw => {
            let mut lines = Vec::new();
            let table = if v == IptRaw { "raw" } else { "filter" };
            // -A in list order: the first port is matched first, the last
            // port (the flood target when several are listed) last.
            for proto in &b.protos {
                match v {
                    IptUser => {
                        for p in &b.container {
                            lines.push(format!(
                                "-A DOCKER-USER -d {container_ip}/32 -p {proto} -m {proto} --dport {p} \
                                 -m comment --comment {COMMENT} -j DROP"
                            ));
                        }
                    }
                    IptCtorig => {
                        for p in &b.dialed {
                            lines.push(format!(
                                "-A DOCKER-USER -p {proto} -m conntrack --ctorigdst {HOST_IP}/32 \
                                 --ctorigdstport {p} --ctdir ORIGINAL -m comment --comment {COMMENT} -j DROP"
                            ));
                        }
                    }
                    _ => {
                        for p in &b.dialed {
                            lines.push(format!(
                                "-A PREROUTING -i {HOST_IF} -p {proto} -m {proto} --dport {p} \
                                 -m comment --comment {COMMENT} -j DROP"
                            ));
                        }
                    }
                }
            }
            // DOCKER-USER ends with Docker's own `-j RETURN`: our rules must
            // come before it, so insert them at the top, in order.
            if v != IptRaw {
                for (i, l) in lines.iter_mut().enumerate() {
                    *l = l.replacen("-A DOCKER-USER", &format!("-I DOCKER-USER {}", i + 1), 1);
                }
            }
            let input = format!("*{table}\n{}\nCOMMIT\n", lines.join("\n"));
            ok_input(&["iptables-restore", "--noflush"], &input)?;
        }
        NftFwdLinear | NftFwdSet | NftRaw | NftRawSet => {
            let raw = matches!(v, NftRaw | NftRawSet);
            let (table, hook, prio, ports, prefix) = if raw {
                (NFT_RAW, "prerouting", "raw", &b.dialed, format!("iifname \"{HOST_IF}\" "))
            } else {
                (NFT_FWD, "forward", "filter - 1", &b.container, format!("ip daddr {container_ip} "))
            };
            let mut body = String::new();
            let set = matches!(v, NftFwdSet | NftRawSet);
            if set {
                for proto in &b.protos {
                    let elems: Vec<String> = ports.iter().map(u16::to_string).collect();
                    body += &format!(
                        "  set {proto}_ports {{ type inet_service; elements = {{ {} }} }}\n",
                        elems.join(", ")
                    );
                }
            }
            body += &format!("  chain c {{\n    type filter hook {hook} priority {prio}; policy accept;\n");
            for proto in &b.protos {
                if set {
                    body += &format!("    {prefix}{proto} dport @{proto}_ports counter drop\n");
                } else {
                    for p in ports {
                        body += &format!("    {prefix}{proto} dport {p} counter drop\n");
                    }
                }
            }
            body += "  }\n";
            let input = format!("table inet {table} {{\n{body}}}\n");
            ok_input(&["nft", "-f", "-"], &input)?;
        }
        XdpFilterNative | XdpFilterSkb => {
            let mode = if v == XdpFilterNative { "native" } else { "skb" };
            ok(&["xdp-filter", "load", HOST_IF, "-m", mode])?;
            let protos = b.protos.join(",");
            for p in &b.dialed {
                ok(&["xdp-filter", "port", &p.to_string(), "-p", &protos])?;
            }
        }
    }
    Ok(())
}

/// Undoes `apply`, best effort and exactly.
pub fn remove(v: Variant) {
    match v {
        V0 => {}
        XdpDropAll => {
            let _ = std::fs::remove_file(DROP_ALL_PIN);
        }
        V0xNative | V0xSkb | DbXdpNative | DbXdpSkb | DbTc => detach_agent(),
        IptUser | IptCtorig => delete_ipt_rules("filter", "DOCKER-USER"),
        IptRaw => delete_ipt_rules("raw", "PREROUTING"),
        NftFwdLinear | NftFwdSet => ignore(&["nft", "delete", "table", "inet", NFT_FWD]),
        NftRaw | NftRawSet => ignore(&["nft", "delete", "table", "inet", NFT_RAW]),
        XdpFilterNative | XdpFilterSkb => ignore(&["xdp-filter", "unload", HOST_IF]),
    }
}

/// Everything any variant may have left (start-of-run and final cleanup).
pub fn remove_all_rules() {
    detach_agent();
    delete_commented("filter", "DOCKER-USER", STANDIN_COMMENT);
    remove(XdpDropAll);
    delete_ipt_rules("filter", "DOCKER-USER");
    delete_ipt_rules("raw", "PREROUTING");
    ignore(&["nft", "delete", "table", "inet", NFT_FWD]);
    ignore(&["nft", "delete", "table", "inet", NFT_RAW]);
    if Path::new(&format!("/sys/class/net/{HOST_IF}")).exists() {
        ignore(&["xdp-filter", "unload", HOST_IF]);
    }
}

/// Comment of the rule scaling's stand-in for Docker's per-port ACCEPTs.
const STANDIN_COMMENT: &str = "dbb-standin";

/// A DOCKER-USER ACCEPT for the outside namespace's traffic to the
/// container, in place while this lives (see scaling.rs). Variants insert
/// their own DOCKER-USER rules above it and delete only theirs.
pub struct ForwardStandIn;

impl ForwardStandIn {
    pub fn new(container_ip: &str) -> Result<Self> {
        let rule = format!(
            "-I DOCKER-USER 1 -s {NS_IP}/32 -d {container_ip}/32 -m comment --comment {STANDIN_COMMENT} -j ACCEPT"
        );
        ok_input(&["iptables-restore", "--noflush"], &format!("*filter\n{rule}\nCOMMIT\n"))?;
        Ok(ForwardStandIn)
    }
}

impl Drop for ForwardStandIn {
    fn drop(&mut self) {
        delete_commented("filter", "DOCKER-USER", STANDIN_COMMENT);
    }
}

/// Deletes exactly the rules carrying our comment from `chain`.
pub fn delete_ipt_rules(table: &str, chain: &str) {
    delete_commented(table, chain, COMMENT);
}

fn delete_commented(table: &str, chain: &str, comment: &str) {
    let Ok(listing) = ok(&["iptables", "-t", table, "-S", chain]) else {
        return;
    };
    let dels: Vec<String> = listing
        .lines()
        .filter(|l| l.split_whitespace().collect::<Vec<_>>().windows(2).any(|w| w == ["--comment", comment]))
        .filter_map(|l| l.strip_prefix(&format!("-A {chain} ")))
        .map(|rest| format!("-D {chain} {}", with_masks(rest)))
        .collect();
    if dels.is_empty() {
        return;
    }
    let input = format!("*{table}\n{}\nCOMMIT\n", dels.join("\n"));
    if ok_input(&["iptables-restore", "--noflush"], &input).is_err() {
        // One by one, so one odd rule cannot keep the others in place.
        for d in dels {
            let mut args = vec!["iptables", "-t", table];
            args.extend(d.split_whitespace());
            ignore(&args);
        }
    }
}

/// `iptables -S` prints `--ctorigdst 198.18.200.1` without its /32, and
/// iptables-nft then fails to find the rule by that spec: put the mask back.
fn with_masks(rule: &str) -> String {
    let mut words: Vec<String> = rule.split_whitespace().map(str::to_string).collect();
    for i in 1..words.len() {
        let opt = words[i - 1].as_str();
        let is_addr = matches!(opt, "--ctorigdst" | "--ctorigsrc" | "--ctrepldst" | "--ctreplsrc");
        if is_addr && !words[i].contains('/') {
            words[i].push_str("/32");
        }
    }
    words.join(" ")
}

/// Packets the variant's own counters say it dropped (None: no filter).
pub fn dropped(v: Variant) -> Result<Option<u64>> {
    Ok(Some(match v {
        V0 | V0xNative | V0xSkb | XdpDropAll => return Ok(None),
        DbXdpNative | DbXdpSkb | DbTc => {
            let out = agent_ok(&["stats", "--json"])?;
            let j: Value = serde_json::from_str(&out).context("agent stats --json")?;
            // Every dropping outcome: by a rule, evasive, malformed.
            let drops = outcome::NAMES.iter().enumerate().filter(|(i, _)| outcome::is_drop(*i as u32));
            let hook = |h: &str| -> u64 {
                drops.clone().map(|(_, name)| j["hooks"][h][*name]["packets"].as_u64().unwrap_or(0)).sum()
            };
            hook("xdp") + hook("tc")
        }
        IptUser | IptCtorig => ipt_counter("filter", "DOCKER-USER")?,
        IptRaw => ipt_counter("raw", "PREROUTING")?,
        NftFwdLinear | NftFwdSet => nft_counter(NFT_FWD)?,
        NftRaw | NftRawSet => nft_counter(NFT_RAW)?,
        XdpFilterNative | XdpFilterSkb => {
            let out = ok(&["xdp-filter", "status"])?;
            out.lines()
                .find_map(|l| {
                    let l = l.trim();
                    let rest = l.strip_prefix("XDP_DROP")?;
                    rest.split_whitespace().next()?.parse().ok()
                })
                .context("no XDP_DROP line in `xdp-filter status`")?
        }
    }))
}

fn ipt_counter(table: &str, chain: &str) -> Result<u64> {
    let out = ok(&["iptables", "-t", table, "-nvxL", chain])?;
    Ok(out
        .lines()
        .filter(|l| l.contains(COMMENT))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum())
}

fn nft_counter(table: &str) -> Result<u64> {
    let out = ok(&["nft", "-j", "list", "table", "inet", table])?;
    let j: Value = serde_json::from_str(&out).context("nft -j")?;
    let mut total = 0;
    for item in j["nftables"].as_array().into_iter().flatten() {
        for e in item["rule"]["expr"].as_array().into_iter().flatten() {
            total += e["counter"]["packets"].as_u64().unwrap_or(0);
        }
    }
    Ok(total)
}

/// A variant set up for as long as this lives.
pub struct Applied(pub Variant);

impl Applied {
    pub fn new(v: Variant, b: &Blocked, container_ip: &str) -> Result<Self> {
        let guard = Applied(v);
        apply(v, b, container_ip).with_context(|| format!("setting up {}", v.id()))?;
        Ok(guard)
    }
}

impl Drop for Applied {
    fn drop(&mut self) {
        remove(self.0);
    }
}

/// What is still in place from any variant, if anything: checked after
/// every teardown, since a rule left behind would distort every later
/// measurement.
pub fn leftovers() -> Option<String> {
    let mut found = Vec::new();
    for (table, chain) in [("filter", "DOCKER-USER"), ("raw", "PREROUTING")] {
        let n = ok(&["iptables", "-t", table, "-S", chain])
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(COMMENT))
            .count();
        if n > 0 {
            found.push(format!("{n} iptables rules in {table} {chain}"));
        }
    }
    let tables = ok(&["nft", "list", "tables"]).unwrap_or_default();
    for t in [NFT_FWD, NFT_RAW] {
        if tables.contains(t) {
            found.push(format!("nft table {t}"));
        }
    }
    if Path::new(PIN_DIR).exists() {
        found.push(format!("agent pins in {PIN_DIR}"));
    }
    let link = ok(&["ip", "-d", "link", "show", HOST_IF]).unwrap_or_default();
    if link.contains("xdp") || link.contains("prog/xdp") {
        found.push(format!("an XDP program on {HOST_IF}"));
    }
    (!found.is_empty()).then(|| found.join(", "))
}

/// Docker's DOCKER-USER chain as `iptables -S` prints it, to check it is
/// back to what it was.
pub fn docker_user_snapshot() -> String {
    cmd::ok(&["iptables", "-S", "DOCKER-USER"]).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn puts_masks_back_on_conntrack_addresses() {
        let rule = "-p tcp -m conntrack --ctorigdst 198.18.200.1 --ctorigdstport 18080 -j DROP";
        assert_eq!(
            super::with_masks(rule),
            "-p tcp -m conntrack --ctorigdst 198.18.200.1/32 --ctorigdstport 18080 -j DROP"
        );
        let masked = "-d 10.0.0.0/8 --ctorigdst 10.0.0.0/8 -j DROP";
        assert_eq!(super::with_masks(masked), masked);
    }
}
