//! `explain`: what the loaded programs do with one packet, and what the
//! reference model says beside it.
//!
//! The frame is run through the kernel object this binary ships
//! ([`EBPF_OBJECT`]), loaded again but never attached, with
//! BPF_PROG_TEST_RUN. The probe reuses the pinned maps that hold the rule
//! state (`REUSED`) and gets private, unpinned copies of every map the
//! programs write (`PRIVATE`): counters, events, the log budget, the
//! fragment table, the SEEN flags (their values copied in). So the verdict
//! comes from the same instructions and the same rules the attached
//! programs use, and the live state does not change: no counter moves, no
//! event reaches `events`, no fragment is remembered. The outcome and the
//! deciding rule are read back from the private counters.

use std::{
    collections::HashMap as StdHashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, MapData, PerCpuArray, PerCpuValues, RingBuf},
    programs::{ProgramInfo, TestRun, TestRunOptions},
    Ebpf, EbpfLoader,
};
use dockblock_common::{
    hook, hook_stats_index, map_names, net, outcome, program_names, seen, Event, LogBudget, RuleStats,
};
use dockblock_packet::Packet;
use serde_json::{json, Value};

use crate::{
    error::{Error, Result},
    link_info, loader,
    lock::PinLock,
    model::{self, Model},
    paths::{LinkKind, PinDir},
    rules::Rule,
    store::{self, Access, RuleStore},
    EBPF_OBJECT,
};

/// The source port of a packet whose source has none: one in Linux's
/// ephemeral range (32768-60999), fixed so the answer is repeatable.
pub const DEFAULT_SPORT: u16 = 40000;

/// Maps the probe shares with the attached programs: what they read to
/// judge (and the catalog, which no program touches). The judging programs
/// never write them (FLOWS is written by the tracking programs only, which
/// the probe does not run).
const REUSED: [&str; 12] = [
    map_names::PORT_RULES,
    map_names::RULES,
    map_names::RULE_ALLOW,
    map_names::ALLOW,
    map_names::CONFIG,
    map_names::FLOWS,
    map_names::VETHS,
    map_names::VETH_RULES,
    map_names::RULE_TARGETS,
    map_names::SCOPED_RULES,
    map_names::RULE_SCOPES,
    map_names::VETH_SCOPED_RULES,
];

/// Maps the probe gets its own copy of: everything a judging program may
/// write. SEEN is only read for whole packets, but a first fragment would
/// set it, so it is copied rather than shared.
const PRIVATE: [&str; 6] = [
    map_names::RULE_STATS,
    map_names::HOOK_STATS,
    map_names::EVENTS,
    map_names::LOG_BUDGET,
    map_names::FRAGS,
    map_names::SEEN,
];

/// The hooks every packet is explained at, in order. The veth hook needs a
/// veth ([`Query::veth`]) and comes after them.
pub const HOOKS: [u32; 2] = [hook::XDP, hook::TC];

pub fn hook_name(hook: u32) -> &'static str {
    match hook {
        hook::XDP => "xdp",
        hook::TC => "tc",
        _ => "veth",
    }
}

/// The veth hook's view of a packet: the container's host-side veth it
/// leaves through, and the interface it came in on (0: the host sent it;
/// a container's veth; anything else is outside).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VethAt {
    pub ifindex: u32,
    pub from: u32,
}

/// The ingress ifindex of a packet from outside when none is given: `lo`,
/// never a container's veth.
pub const OUTSIDE_IFINDEX: u32 = 1;

/// The transport protocols a packet can be built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// TCP flag names `--flags` takes, with their bits.
const TCP_FLAGS: [(&str, u8); 6] = [
    ("fin", net::TCP_FIN),
    ("syn", net::TCP_SYN),
    ("rst", net::TCP_RST),
    ("psh", net::TCP_PSH),
    ("ack", net::TCP_ACK),
    ("urg", net::TCP_URG),
];

/// One packet to explain, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub proto: Proto,
    pub src: IpAddr,
    /// `None`: none was given, [`DEFAULT_SPORT`] is used.
    pub sport: Option<u16>,
    pub dst: IpAddr,
    pub dport: u16,
    /// TCP flag bits (0 for UDP).
    pub tcp_flags: u8,
    /// VLAN ids, outermost first (at most 2: one 802.1Q tag, or an 802.1ad
    /// outer tag and an 802.1Q inner one).
    pub vlans: Vec<u16>,
    /// TC only: the host itself sent the packet into the bridge.
    pub from_host: bool,
    /// For the veth hook: where the packet goes and comes from.
    pub veth: Option<VethAt>,
    /// `--on`: the interface the packet came in on, by index (default
    /// [`OUTSIDE_IFINDEX`]); scoped rules are judged against it.
    pub ingress: Option<u32>,
}

fn bad(what: &'static str, value: &str, why: impl Into<String>) -> Error {
    Error::BadArgument { what, value: value.into(), why: why.into() }
}

impl Query {
    /// Parses `PROTO SRC[:PORT] DST:PORT` and the options; every mistake is
    /// a usage error.
    pub fn parse(
        proto: &str,
        src: &str,
        dst: &str,
        flags: Option<&str>,
        vlans: &[u16],
        from_host: bool,
    ) -> Result<Self> {
        let proto = match proto.to_ascii_lowercase().as_str() {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            _ => return Err(bad("protocol", proto, "expected tcp or udp")),
        };
        let (src_ip, sport) = parse_endpoint("source", src)?;
        let (dst_ip, dport) = parse_endpoint("destination", dst)?;
        let dport = dport
            .ok_or_else(|| bad("destination", dst, "needs a port: 198.51.100.1:3306 or [2001:db8::1]:443"))?;
        if src_ip.is_ipv4() != dst_ip.is_ipv4() {
            return Err(bad("source", src, format!("is not of the same address family as `{dst}`")));
        }
        let tcp_flags = match (proto, flags) {
            (Proto::Tcp, None) => net::TCP_SYN,
            (Proto::Tcp, Some(flags)) => parse_tcp_flags(flags)?,
            (Proto::Udp, None) => 0,
            (Proto::Udp, Some(flags)) => return Err(bad("--flags", flags, "only TCP has flags")),
        };
        if vlans.len() > net::VLAN_TAGS_MAX {
            return Err(bad("--vlan", &format!("{vlans:?}"), "at most two tags (outer first)"));
        }
        if let Some(vid) = vlans.iter().find(|v| !(1..=4094).contains(*v)) {
            return Err(bad("--vlan", &vid.to_string(), "a VLAN id is 1-4094"));
        }
        Ok(Self {
            proto,
            src: src_ip,
            sport,
            dst: dst_ip,
            dport,
            tcp_flags,
            vlans: vlans.to_vec(),
            from_host,
            veth: None,
            ingress: None,
        })
    }

    /// The query with the packet coming in on interface `name` (XDP's
    /// uplink, or where a forwarded packet entered before the bridge).
    pub fn on(self, name: &str) -> Result<Self> {
        let ifindex = crate::scoping::ifindex(name)
            .ok_or_else(|| bad("--on", name, "no interface has this name (see `ip link`)"))?;
        if self.from_host {
            return Err(bad(
                "--on",
                name,
                "contradicts --from-host (the host's own packets came in on none)",
            ));
        }
        Ok(Self { ingress: Some(ifindex), ..self })
    }

    fn ingress(&self) -> u32 {
        self.ingress.unwrap_or(OUTSIDE_IFINDEX)
    }

    /// The query at the veth hook of `ifindex`, the packet coming in on
    /// `from` (`None`: 0 if the host sends it, else the `--on` interface,
    /// else [`OUTSIDE_IFINDEX`]); the veth judges `--on` rules by it.
    pub fn at_veth(self, ifindex: u32, from: Option<u32>) -> Result<Self> {
        let from = match (from, self.from_host, self.ingress) {
            (Some(n), true, _) if n != 0 => {
                return Err(bad("--from-ifindex", &n.to_string(), "contradicts --from-host (0 is the host)"));
            }
            (Some(n), _, Some(on)) if n != on => {
                return Err(bad("--from-ifindex", &n.to_string(), "contradicts --on (another interface)"));
            }
            (Some(n), _, _) => n,
            (None, true, _) => 0,
            (None, false, on) => on.unwrap_or(OUTSIDE_IFINDEX),
        };
        if ifindex == 0 {
            return Err(bad("--veth", "0", "is an interface index (ip -o link: the number before the name)"));
        }
        Ok(Self { veth: Some(VethAt { ifindex, from }), ..self })
    }

    /// Where the model judges it at `hook`; `None`: the veth hook without a veth.
    pub fn at(&self, hook: u32) -> Option<model::At> {
        match hook {
            hook::XDP => Some(model::At::Xdp { ingress: self.ingress() }),
            hook::TC => Some(model::At::Bridge {
                from_host: self.from_host,
                ingress: if self.from_host { 0 } else { self.ingress() },
            }),
            _ => self.veth.map(|v| model::At::Veth { ifindex: v.ifindex, from: v.from }),
        }
    }

    pub fn sport(&self) -> u16 {
        self.sport.unwrap_or(DEFAULT_SPORT)
    }

    /// The frame both hooks get: Ethernet, the VLAN tags, IPv4 or IPv6, TCP
    /// or UDP, no payload.
    pub fn frame(&self) -> Vec<u8> {
        let packet = match self.proto {
            Proto::Tcp => Packet::tcp(self.dport, self.tcp_flags),
            Proto::Udp => Packet::udp(self.dport),
        };
        let mut packet = packet.src(&self.src.to_string()).dst(&self.dst.to_string()).sport(self.sport());
        let two = self.vlans.len() == 2;
        for (i, vid) in self.vlans.iter().enumerate() {
            // QinQ: the outer tag is a service tag.
            let tpid = if two && i == 0 { net::ETH_P_8021AD } else { net::ETH_P_8021Q };
            packet = packet.vlan(tpid, *vid);
        }
        packet.build()
    }

    /// "syn,ack" (empty for UDP).
    pub fn flag_names(&self) -> Vec<&'static str> {
        TCP_FLAGS.iter().filter(|(_, bit)| self.tcp_flags & bit != 0).map(|(name, _)| *name).collect()
    }
}

/// `ADDR`, `ADDR:PORT`, `[V6]`, `[V6]:PORT` or a bare IPv6 address.
fn parse_endpoint(what: &'static str, value: &str) -> Result<(IpAddr, Option<u16>)> {
    let shape = "expected ADDRESS or ADDRESS:PORT (203.0.113.7:40000, [2001:db8::1]:443)";
    let (addr, port) = if let Some(rest) = value.strip_prefix('[') {
        let (addr, rest) = rest.split_once(']').ok_or_else(|| bad(what, value, shape))?;
        match rest {
            "" => (addr, None),
            _ => (addr, Some(rest.strip_prefix(':').ok_or_else(|| bad(what, value, shape))?)),
        }
    } else if value.matches(':').count() == 1 {
        let (addr, port) = value.split_once(':').expect("one colon");
        (addr, Some(port))
    } else {
        // No colon (IPv4) or several (a bare IPv6 address).
        (value, None)
    };
    let ip: IpAddr = addr.parse().map_err(|_| bad(what, value, shape))?;
    let port = match port {
        None => None,
        Some(port) => match port.parse::<u32>() {
            Ok(p @ 1..=65535) => Some(p as u16),
            Ok(_) => return Err(bad(what, value, "a port is 1-65535")),
            Err(_) => return Err(bad(what, value, shape)),
        },
    };
    Ok((ip, port))
}

fn parse_tcp_flags(value: &str) -> Result<u8> {
    let mut bits = 0;
    for name in value.split(',').map(str::trim) {
        let (_, bit) = TCP_FLAGS.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).ok_or_else(|| {
            bad("--flags", value, "expected a comma-separated list of syn,ack,fin,rst,psh,urg")
        })?;
        bits |= bit;
    }
    Ok(bits)
}

/// What one hook did, or would do, with the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub outcome: u32,
    pub rule_id: Option<u32>,
}

impl Decision {
    pub fn drops(&self) -> bool {
        outcome::is_drop(self.outcome)
    }

    pub fn verdict(&self) -> &'static str {
        if self.drops() {
            "drop"
        } else {
            "pass"
        }
    }

    pub fn outcome_name(&self) -> &'static str {
        outcome::NAMES.get(self.outcome as usize).copied().unwrap_or("unknown")
    }

    fn json(&self, hook: u32) -> Value {
        json!({
            "hook": hook_name(hook),
            "verdict": self.verdict(),
            "outcome": self.outcome_name(),
            "rule_id": self.rule_id,
        })
    }
}

impl From<model::Judgement> for Decision {
    fn from(j: model::Judgement) -> Self {
        debug_assert_eq!(matches!(j.verdict, model::Verdict::Drop), outcome::is_drop(j.outcome));
        Self { outcome: j.outcome, rule_id: j.rule_id }
    }
}

/// What the kernel program did: its decision, and the event it emitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelRun {
    pub decision: Decision,
    /// A `--log` rule emitted an event (into the probe's own ring buffer).
    pub event: bool,
}

/// The program of one hook: its tag, and whether the attached links run it.
#[derive(Clone, Debug)]
pub struct ProgramCheck {
    pub hook: u32,
    /// The kernel's tag (a hash of the instructions as loaded, before map
    /// addresses are filled in) of the probe's program.
    pub tag: u64,
    /// Each live judging link of this hook: interface, and whether its
    /// program has the same tag.
    pub links: Vec<(String, bool)>,
}

/// One hook's answer.
#[derive(Clone, Debug)]
pub struct HookReport {
    pub hook: u32,
    pub kernel: KernelRun,
    pub model: Decision,
    /// The rule that decided, from the catalog.
    pub rule: Option<Rule>,
}

impl HookReport {
    pub fn agree(&self) -> bool {
        self.kernel.decision == self.model
    }
}

/// The answer of `explain`.
#[derive(Clone, Debug)]
pub struct Report {
    pub query: Query,
    pub frame_len: usize,
    pub hooks: Vec<HookReport>,
    pub programs: Vec<ProgramCheck>,
    /// Time to load the probe (mostly the verifier).
    pub load_time: Duration,
}

impl Report {
    pub fn agree(&self) -> bool {
        self.hooks.iter().all(HookReport::agree)
    }

    /// The hooks where kernel and model disagree, "xdp" or "xdp and tc".
    pub fn disagreeing(&self) -> Option<String> {
        let names: Vec<&str> = self.hooks.iter().filter(|h| !h.agree()).map(|h| hook_name(h.hook)).collect();
        (!names.is_empty()).then(|| names.join(" and "))
    }

    /// The `--json` shape (README): `hooks` and `model` have one entry per
    /// hook explained, in the same order.
    pub fn json(&self) -> Value {
        let q = &self.query;
        let hooks: Vec<Value> = self
            .hooks
            .iter()
            .map(|h| {
                let mut v = h.kernel.decision.json(h.hook);
                v["event"] = json!(h.kernel.event);
                v
            })
            .collect();
        let model: Vec<Value> = self.hooks.iter().map(|h| h.model.json(h.hook)).collect();
        let programs: Vec<Value> = self
            .programs
            .iter()
            .map(|p| {
                let links: Vec<Value> = p
                    .links
                    .iter()
                    .map(|(iface, same)| json!({"interface": iface, "same_program": same}))
                    .collect();
                json!({"hook": hook_name(p.hook), "tag": format!("{:016x}", p.tag), "links": links})
            })
            .collect();
        let mut value = json!({
            "packet": {
                "protocol": q.proto.name(),
                "src": q.src.to_string(),
                "sport": q.sport(),
                "sport_given": q.sport.is_some(),
                "dst": q.dst.to_string(),
                "dport": q.dport,
                "tcp_flags": q.flag_names(),
                "vlans": q.vlans,
                "from_host": q.from_host,
                "bytes": self.frame_len,
            },
            "hooks": hooks,
            "model": model,
            "agree": self.agree(),
            "programs": programs,
        });
        // Only with --veth, so the shape without it stays as it was.
        if let Some(v) = q.veth {
            value["packet"]["veth"] = json!({"ifindex": v.ifindex, "from_ifindex": v.from});
        }
        value
    }
}

/// Explains `query` at `hooks`: the kernel's answer and the model's. Holds
/// the pin folder lock meanwhile, so no rule change lands between the two.
pub fn explain(pins: &PinDir, query: &Query, hooks: &[u32]) -> Result<Report> {
    Ok(explain_all(pins, std::slice::from_ref(query), hooks)?.remove(0))
}

/// [`explain`] for several packets, with one probe load (the verifier's
/// work) for all of them; each packet is judged on its own, as if alone.
pub fn explain_all(pins: &PinDir, queries: &[Query], hooks: &[u32]) -> Result<Vec<Report>> {
    if !pins.is_attached() {
        return Err(Error::NotAttached { pin_dir: pins.root().into() });
    }
    let _lock = PinLock::acquire(pins.root())?;
    let store = RuleStore::open_read_only(pins)?;
    let rules = store.rules()?;
    let started = Instant::now();
    let mut probe = Probe::load(pins, hooks, rules.iter().map(|r| r.id).collect())?;
    let load_time = started.elapsed();
    let model = Model::from_store(&store, pins)?;
    let programs: Vec<ProgramCheck> =
        hooks.iter().map(|&h| probe.check_attached(pins, h)).collect::<Result<_>>()?;
    let mut reports = Vec::with_capacity(queries.len());
    for query in queries {
        let frame = query.frame();
        // A fresh model per packet, as the probe's counters are read per
        // packet: no packet sees another's traces.
        let mut model = model.clone();
        let mut hook_reports = Vec::new();
        for &hook in hooks {
            let at = query.at(hook).ok_or_else(|| bad("--hook", "veth", "needs --veth IFINDEX"))?;
            let kernel = probe.run(at, &frame)?;
            let model = Decision::from(model.judge_at(at, &frame));
            let rule = kernel.decision.rule_id.and_then(|id| rules.iter().find(|r| r.id == id).cloned());
            hook_reports.push(HookReport { hook, kernel, model, rule });
        }
        reports.push(Report {
            query: query.clone(),
            frame_len: frame.len(),
            hooks: hook_reports,
            programs: programs.clone(),
            load_time,
        });
    }
    Ok(reports)
}

use dockblock_common::retval::{TC_ACT_SHOT, TC_ACT_UNSPEC, XDP_DROP, XDP_PASS};

/// The kernel object loaded once more over the pinned rule state, with
/// private copies of the maps the programs write.
pub struct Probe {
    ebpf: Ebpf,
    hook_stats: PerCpuArray<MapData, dockblock_common::Counter>,
    rule_stats: PerCpuArray<MapData, RuleStats>,
    events: RingBuf<MapData>,
    log_budget: PerCpuArray<MapData, LogBudget>,
    /// Rule ids whose private counters are read after a run.
    rule_ids: Vec<u32>,
}

impl Probe {
    /// Loads the judging programs of `hooks` (XDP, bridge TC, veth), not
    /// attached. `rule_ids` are the rules whose counters tell which rule
    /// decided.
    pub fn load(pins: &PinDir, hooks: &[u32], rule_ids: Vec<u32>) -> Result<Self> {
        loader::check_pinned_layouts(pins)?;
        // Every map sized as its pin: an index the programs compute from
        // the live state (a rule id, a fragment slot) fits the copies too.
        let sizes: Vec<(&str, u32)> = REUSED
            .iter()
            .chain(&PRIVATE)
            .map(|name| Ok((*name, store::max_entries(pins, name)?)))
            .collect::<Result<_>>()?;
        let paths: Vec<(&str, std::path::PathBuf)> = REUSED.iter().map(|n| (*n, pins.map(n))).collect();
        let mut ebpf_loader = EbpfLoader::new();
        for (name, path) in &paths {
            ebpf_loader.map_pin_path(name, path.as_path());
        }
        for (name, size) in &sizes {
            ebpf_loader.map_max_entries(name, *size);
        }
        // Maps without a pin path are created fresh and unpinned (the object
        // declares no pinning): they die with this process.
        let mut ebpf =
            ebpf_loader.load(EBPF_OBJECT).map_err(|e| Error::bpf("load the eBPF object for explain", e))?;
        // The verifier's work is most of explain's time: only what is asked.
        if hooks.contains(&hook::XDP) {
            loader::xdp_program(&mut ebpf)?
                .load()
                .map_err(|e| Error::bpf("load XDP program (verifier)", e))?;
        }
        for (hook, name) in [(hook::TC, program_names::BRIDGE_TC), (hook::VETH, program_names::VETH_TC)] {
            if hooks.contains(&hook) {
                loader::tc_program(&mut ebpf, name)?
                    .load()
                    .map_err(|e| Error::bpf(format!("load {name} (verifier)"), e))?;
            }
        }

        let live_seen: Array<MapData, u32> = store::open_pinned_as(pins, map_names::SEEN, Access::ReadOnly)?;
        let mut own_seen: Array<MapData, u32> = take(&mut ebpf, map_names::SEEN)?;
        for slot in 0..seen::COUNT {
            let flag = live_seen.get(&slot, 0).map_err(|e| Error::bpf("read SEEN", e))?;
            own_seen.set(slot, flag, 0).map_err(|e| Error::bpf("copy SEEN", e))?;
        }
        Ok(Self {
            hook_stats: take(&mut ebpf, map_names::HOOK_STATS)?,
            rule_stats: take(&mut ebpf, map_names::RULE_STATS)?,
            events: take(&mut ebpf, map_names::EVENTS)?,
            log_budget: take(&mut ebpf, map_names::LOG_BUDGET)?,
            ebpf,
            rule_ids,
        })
    }

    /// Runs `frame` through the program of the hook `at` names once and
    /// reads back what it did from the private maps.
    pub fn run(&mut self, at: model::At, frame: &[u8]) -> Result<KernelRun> {
        self.reset_log_budget()?;
        let hook = at.hook();
        let before = self.counters(hook)?;
        let (program, ctx) = match at {
            model::At::Xdp { ingress } => (program_names::UPLINK_XDP, xdp_ctx(frame.len(), ingress).to_vec()),
            model::At::Bridge { ingress, .. } => (program_names::BRIDGE_TC, skb_ctx(0, ingress).to_vec()),
            model::At::Veth { ifindex, from } => (program_names::VETH_TC, skb_ctx(ifindex, from).to_vec()),
        };
        let opts = TestRunOptions { data_in: Some(frame), ctx_in: Some(&ctx), ..TestRunOptions::new() };
        let run = match at {
            model::At::Xdp { .. } => loader::xdp_program(&mut self.ebpf)?.test_run(opts),
            _ => loader::tc_program(&mut self.ebpf, program)?.test_run(opts),
        };
        let name = hook_name(hook);
        let ret = match run {
            Ok(run) => run.return_value,
            // The kernel runs a TC test packet on the device of that index.
            Err(e) if matches!(at, model::At::Veth { .. }) && is_enodev(&e) => {
                let model::At::Veth { ifindex, .. } = at else { unreachable!() };
                return Err(bad("--veth", &ifindex.to_string(), "no interface has this index here"));
            }
            Err(e) => return Err(Error::bpf(format!("BPF_PROG_TEST_RUN ({program})"), e)),
        };
        let after = self.counters(hook)?;
        let dropped = match (hook, ret) {
            (hook::XDP, XDP_DROP) => true,
            (hook::XDP, XDP_PASS) => false,
            (_, TC_ACT_SHOT) if hook != hook::XDP => true,
            (_, TC_ACT_UNSPEC) if hook != hook::XDP => false,
            _ => return Err(odd(format!("the {name} program returned {ret}"))),
        };
        let moved: Vec<u32> = (0..outcome::SLOTS)
            .filter(|&o| after.outcomes[o as usize] != before.outcomes[o as usize])
            .collect();
        let [outcome] = moved[..] else {
            return Err(odd(format!("the {name} program counted outcomes {moved:?} for one packet")));
        };
        if outcome::is_drop(outcome) != dropped {
            return Err(odd(format!("the {name} program returned {ret} but counted outcome {outcome}")));
        }
        let rule_id = self.rule_ids.iter().copied().find(|id| after.rules.get(id) != before.rules.get(id));
        let mut event = false;
        while let Some(item) = self.events.next() {
            // SAFETY: the programs write whole Events into this ring.
            let e = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) };
            event |= e.hook == hook;
        }
        Ok(KernelRun { decision: Decision { outcome, rule_id }, event })
    }

    /// A full events budget for every run, so whether a packet logs does not
    /// depend on the packets explained before it.
    fn reset_log_budget(&mut self) -> Result<()> {
        let cpus = aya::util::nr_cpus()
            .map_err(|(_, e)| Error::io("count CPUs", "/sys/devices/system/cpu/possible", e))?;
        let fresh = PerCpuValues::try_from(vec![LogBudget::default(); cpus])
            .map_err(|e| Error::bpf("reset the probe's LOG_BUDGET", e))?;
        self.log_budget.set(0, fresh, 0).map_err(|e| Error::bpf("reset the probe's LOG_BUDGET", e))
    }

    /// This hook's outcome packet counts and every known rule's counters,
    /// summed over CPUs.
    fn counters(&self, hook: u32) -> Result<Counters> {
        let outcomes = (0..outcome::SLOTS)
            .map(|o| {
                let per_cpu = self
                    .hook_stats
                    .get(&hook_stats_index(hook, o), 0)
                    .map_err(|e| Error::bpf("read the probe's HOOK_STATS", e))?;
                Ok(per_cpu.iter().map(|c| c.packets).sum())
            })
            .collect::<Result<_>>()?;
        let rules = self
            .rule_ids
            .iter()
            .map(|&id| {
                let per_cpu =
                    self.rule_stats.get(&id, 0).map_err(|e| Error::bpf("read the probe's RULE_STATS", e))?;
                let packets = per_cpu
                    .iter()
                    .map(|s| s.dropped.packets + s.passed.packets + s.allowed.packets + s.dry_run.packets)
                    .sum();
                Ok((id, packets))
            })
            .collect::<Result<_>>()?;
        Ok(Counters { outcomes, rules })
    }

    /// Whether the links attached at `hook` run the probe's program: the
    /// kernel's tag hashes the instructions with map references blanked, so
    /// it is the same for the same object whatever maps it uses.
    pub fn check_attached(&self, pins: &PinDir, hook: u32) -> Result<ProgramCheck> {
        let tag = if hook == hook::XDP {
            let prog: &aya::programs::Xdp = self
                .ebpf
                .program(program_names::UPLINK_XDP)
                .and_then(|p| p.try_into().ok())
                .expect("object has the XDP program");
            prog.info()
        } else {
            let name = if hook == hook::TC { program_names::BRIDGE_TC } else { program_names::VETH_TC };
            let prog: &aya::programs::SchedClassifier =
                self.ebpf.program(name).and_then(|p| p.try_into().ok()).expect("object has the TC programs");
            prog.info()
        }
        .map_err(|e| Error::bpf("read the probe's program info", e))?
        .tag();
        let judging = |kind: LinkKind| match hook {
            hook::XDP => kind.is_xdp(),
            hook::TC => kind == LinkKind::TcEgress,
            _ => kind == LinkKind::VethJudge,
        };
        let mut tags: Option<StdHashMap<u32, u64>> = None;
        let mut links = Vec::new();
        for pin in pins.links().into_iter().filter(|p| judging(p.kind)) {
            let Ok(info) = link_info::read(&pin.path) else { continue };
            if info.ifindex == 0 {
                continue; // defunct: runs nothing
            }
            let tags = tags.get_or_insert_with(loaded_tags);
            links.push((pin.interface, tags.get(&info.program_id) == Some(&tag)));
        }
        Ok(ProgramCheck { hook, tag, links })
    }
}

/// Tags of every loaded program, by id.
fn loaded_tags() -> StdHashMap<u32, u64> {
    aya::programs::loaded_programs().filter_map(|p| p.ok()).map(|p: ProgramInfo| (p.id(), p.tag())).collect()
}

struct Counters {
    outcomes: Vec<u64>,
    rules: StdHashMap<u32, u64>,
}

fn odd(why: String) -> Error {
    Error::bpf("explain", std::io::Error::other(why))
}

fn take<T>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).expect("object declares every map");
    T::try_from(map).map_err(|e| Error::bpf(format!("the probe's {name}"), e))
}

/// `struct __sk_buff` up to `ifindex` (offset 40): the interface the packet
/// leaves through (0: `lo`; another must exist, the kernel runs the packet
/// on it) and `ingress_ifindex` (36), the one it came in on (0: the host
/// sent it). The kernel zero-fills the rest.
/// `struct xdp_md` (data, data_end, data_meta, ingress_ifindex): the kernel
/// runs the program as if the frame came in on `ingress_ifindex` (queue 0).
pub fn xdp_ctx(len: usize, ingress_ifindex: u32) -> [u8; 24] {
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    ctx
}

fn skb_ctx(ifindex: u32, ingress_ifindex: u32) -> [u8; 44] {
    let mut ctx = [0u8; 44];
    ctx[36..40].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

fn is_enodev(e: &aya::programs::ProgramError) -> bool {
    matches!(e, aya::programs::ProgramError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::ENODEV))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(proto: &str, src: &str, dst: &str) -> Result<Query> {
        Query::parse(proto, src, dst, None, &[], false)
    }

    #[test]
    fn every_map_is_either_shared_or_private() {
        let mut all: Vec<&str> = REUSED.iter().chain(&PRIVATE).copied().collect();
        all.sort_unstable();
        let mut expected = map_names::ALL.to_vec();
        expected.sort_unstable();
        assert_eq!(all, expected, "a new map needs a decision: shared with the live programs or a copy");
    }

    #[test]
    fn endpoints_in_every_form() {
        let q = query("tcp", "203.0.113.7:40001", "198.51.100.1:3306").unwrap();
        assert_eq!((q.src.to_string(), q.sport, q.dport), ("203.0.113.7".into(), Some(40001), 3306));
        assert_eq!(q.tcp_flags, net::TCP_SYN, "a SYN by default");
        let q = query("UDP", "203.0.113.7", "198.51.100.1:53").unwrap();
        assert_eq!((q.proto, q.sport, q.sport()), (Proto::Udp, None, DEFAULT_SPORT));
        let q = query("tcp", "[2001:db8::7]:5000", "[2001:db8::1]:443").unwrap();
        assert_eq!((q.sport, q.dport), (Some(5000), 443));
        assert!(q.src.is_ipv6());
        for src in ["2001:db8::7", "[2001:db8::7]"] {
            assert_eq!(query("tcp", src, "[2001:db8::1]:443").unwrap().sport, None, "{src}");
        }
    }

    #[test]
    fn at_the_veth_the_packet_comes_in_on_the_on_interface() {
        let lo = crate::scoping::ifindex("lo").unwrap();
        let q = query("tcp", "203.0.113.7", "172.17.0.2:80").unwrap().on("lo").unwrap();
        let at = q.clone().at_veth(5, None).unwrap().at(hook::VETH);
        assert_eq!(at, Some(model::At::Veth { ifindex: 5, from: lo }), "--on is the veth's ingress");
        assert!(q.clone().at_veth(5, Some(lo)).is_ok());
        let err = q.at_veth(5, Some(lo + 1000)).unwrap_err();
        assert!(err.to_string().contains("contradicts --on"), "{err}");
        let q = query("tcp", "203.0.113.7", "172.17.0.2:80").unwrap().at_veth(5, None).unwrap();
        assert_eq!(q.at(hook::VETH), Some(model::At::Veth { ifindex: 5, from: OUTSIDE_IFINDEX }));
    }

    #[test]
    fn bad_input_is_a_usage_error() {
        for (proto, src, dst, why) in [
            ("icmp", "203.0.113.7", "198.51.100.1:1", "expected tcp or udp"),
            ("tcp", "203.0.113.7", "198.51.100.1:0", "1-65535"),
            ("tcp", "203.0.113.7", "198.51.100.1:70000", "1-65535"),
            ("tcp", "203.0.113.7:0", "198.51.100.1:22", "1-65535"),
            ("tcp", "203.0.113.7", "198.51.100.1", "needs a port"),
            ("tcp", "203.0.113.300", "198.51.100.1:22", "expected ADDRESS"),
            ("tcp", "203.0.113.7", "[2001:db8::1]:22", "same address family"),
            ("tcp", "[2001:db8::1", "[2001:db8::1]:22", "expected ADDRESS"),
            ("tcp", "[2001:db8::1]x", "[2001:db8::1]:22", "expected ADDRESS"),
            ("tcp", "host:22", "198.51.100.1:22", "expected ADDRESS"),
        ] {
            let err = query(proto, src, dst).unwrap_err();
            assert_eq!(err.exit_code(), crate::exit_code::ExitCode::Usage, "{err}");
            assert!(err.to_string().contains(why), "{proto} {src} {dst}: {err}");
        }
        let flags = |f| Query::parse("tcp", "203.0.113.7", "198.51.100.1:1", Some(f), &[], false);
        assert_eq!(flags("syn,ack").unwrap().tcp_flags, net::TCP_SYN | net::TCP_ACK);
        assert_eq!(flags("ACK").unwrap().flag_names(), ["ack"]);
        assert!(flags("syn,bogus").unwrap_err().to_string().contains("--flags"));
        let udp_flags = Query::parse("udp", "203.0.113.7", "198.51.100.1:1", Some("ack"), &[], false);
        assert!(udp_flags.unwrap_err().to_string().contains("only TCP"));
        let vlans = |v: &[u16]| Query::parse("tcp", "203.0.113.7", "198.51.100.1:1", None, v, false);
        assert!(vlans(&[0]).is_err() && vlans(&[4095]).is_err() && vlans(&[1, 2, 3]).is_err());
    }

    #[test]
    fn frames_carry_what_was_asked() {
        let q =
            Query::parse("tcp", "203.0.113.7", "198.51.100.1:3306", Some("ack"), &[100, 200], false).unwrap();
        let f = q.frame();
        assert_eq!(&f[12..14], &net::ETH_P_8021AD.to_be_bytes(), "outer tag of two is 802.1ad");
        assert_eq!(&f[14..16], &100u16.to_be_bytes());
        assert_eq!(&f[16..18], &net::ETH_P_8021Q.to_be_bytes());
        assert_eq!(&f[18..20], &200u16.to_be_bytes());
        let ip = 22;
        assert_eq!(&f[ip + 12..ip + 16], &[203, 0, 113, 7]);
        let tcp = ip + 20;
        assert_eq!(&f[tcp..tcp + 2], &DEFAULT_SPORT.to_be_bytes());
        assert_eq!(&f[tcp + 2..tcp + 4], &3306u16.to_be_bytes());
        assert_eq!(f[tcp + 13], net::TCP_ACK);
        let q = query("udp", "[2001:db8::7]:5353", "[2001:db8::1]:53").unwrap();
        let f = q.frame();
        assert_eq!(&f[12..14], &net::ETH_P_IPV6.to_be_bytes());
        assert_eq!(f[14 + 6], net::IPPROTO_UDP);
        assert_eq!(&f[14 + 40..14 + 42], &5353u16.to_be_bytes());
    }
}
