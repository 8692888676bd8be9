//! The real kernel programs, loaded (not attached) with their maps pinned in
//! a throw-away folder, run on crafted packets with BPF_PROG_TEST_RUN.

use aya::{
    maps::{Array, HashMap as BpfHashMap, Map, MapData, RingBuf},
    programs::{TestRun, TestRunOptions},
    Ebpf,
};
use dockblock_agent::{
    loader::{self, Capacities},
    paths::PinDir,
    ports::PortSpec,
    rulefile::parse_net,
    rules::{RuleOptions, RuleSpec, Scope},
    store::{open_pinned, RuleStore, RuleWithStats},
};
use dockblock_common::{
    hook, hook_stats_index, map_names, program_names, Config, Counter, Event, FragKey, FragSlot, PortRule,
    VethRuleKey, VethScopedKey, VethState,
};

pub use dockblock_common::retval::{TC_ACT_SHOT as TC_SHOT, TC_ACT_UNSPEC as TC_NEXT, XDP_DROP, XDP_PASS};

/// What a hook did with one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
}

pub struct Datapath {
    ebpf: Ebpf,
    pub pins: PinDir,
    pub store: RuleStore,
}

/// Where a TC test packet comes from: the kernel reads `ingress_ifindex`
/// from the `__sk_buff` we pass, 0 meaning the host sent it.
#[derive(Clone, Copy)]
pub enum From {
    /// Forwarded from an uplink (ingress_ifindex 1).
    Outside,
    /// Sent by the host itself (ingress_ifindex 0).
    Host,
}

/// `struct __sk_buff` up to `ingress_ifindex` (offset 36); the kernel
/// accepts a shorter context and zero-fills the rest.
fn skb_ctx(from: From) -> [u8; 40] {
    let mut ctx = [0u8; 40];
    if let From::Outside = from {
        ctx[36..40].copy_from_slice(&1u32.to_ne_bytes());
    }
    ctx
}

/// The host-side veth the veth programs' test packets go through. The
/// kernel runs a TC test packet on the device `ifindex` names (it must
/// exist); `lo`, 1, exists in every namespace, and is what an index of 0
/// gets too.
pub const VETH: u32 = 1;

/// `struct __sk_buff` up to `ifindex` (offset 40), with `ingress_ifindex`
/// (36): the interface a packet leaves through and the one it came in on.
fn skb_ctx_at(ifindex: u32, ingress_ifindex: u32) -> [u8; 44] {
    let mut ctx = [0u8; 44];
    ctx[36..40].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

impl Datapath {
    /// Loads the programs with maps pinned under a folder unique to `tag`.
    pub fn load(tag: &str) -> Self {
        Self::load_with(tag, Capacities { max_rules: Some(64), max_allow: Some(64), ..Default::default() })
    }

    pub fn load_with(tag: &str, caps: Capacities) -> Self {
        let pins = PinDir::new(format!("/sys/fs/bpf/dockblock-dp-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(pins.root());
        dockblock_agent::bpffs::ensure_mounted(pins.root()).expect("bpffs");
        // A refused load (the verifier) would leave the pins behind: no
        // Datapath exists yet to remove them on drop.
        let ebpf = loader::load(&pins, &caps).unwrap_or_else(|e| {
            let _ = std::fs::remove_dir_all(pins.root());
            panic!("load programs: {e:?}")
        });
        let store = RuleStore::open(&pins).expect("open pinned maps");
        Self { ebpf, pins, store }
    }

    /// Loads the programs again over the same pins, as a re-attach that
    /// replaces the programs in place does.
    pub fn reload(&mut self) {
        self.ebpf = loader::load(&self.pins, &Capacities::default()).expect("reload programs");
    }

    pub fn block(&mut self, scope: Scope, spec: &str) {
        self.block_with(scope, spec, RuleOptions::default());
    }

    pub fn block_with(&mut self, scope: Scope, spec: &str, options: RuleOptions) {
        let spec = RuleSpec { options, ..RuleSpec::plain(scope, PortSpec::parse(spec).unwrap()) };
        self.store.block(&[spec]).expect("block");
    }

    /// Options with an allow-list of `nets`.
    pub fn allow(nets: &[&str]) -> RuleOptions {
        RuleOptions::new(nets.iter().map(|n| parse_net(n).unwrap()), false, false)
    }

    pub fn unblock(&mut self, scope: Scope, spec: &str) {
        self.store.unblock(scope, &[PortSpec::parse(spec).unwrap()]).expect("unblock");
    }

    /// Runs the XDP program (dialed ports) on `frame`.
    pub fn xdp(&mut self, frame: &[u8]) -> Verdict {
        let prog = loader::xdp_program(&mut self.ebpf).unwrap();
        match prog.test_run(options(frame)).expect("BPF_PROG_TEST_RUN").return_value {
            XDP_PASS => Verdict::Pass,
            XDP_DROP => Verdict::Drop,
            other => panic!("unexpected XDP return {other}"),
        }
    }

    /// Runs the XDP program on `frame` as if it came in on `ingress`.
    pub fn xdp_on(&mut self, frame: &[u8], ingress: u32) -> Verdict {
        match self.try_xdp_on(frame, ingress).expect("BPF_PROG_TEST_RUN") {
            XDP_PASS => Verdict::Pass,
            XDP_DROP => Verdict::Drop,
            other => panic!("unexpected XDP return {other}"),
        }
    }

    /// Runs the bridge TC program on `frame` forwarded from `ingress`.
    pub fn tc_on(&mut self, frame: &[u8], ingress: u32) -> Verdict {
        match self.try_tc_on(frame, ingress).expect("BPF_PROG_TEST_RUN") {
            TC_NEXT => Verdict::Pass,
            TC_SHOT => Verdict::Drop,
            other => panic!("unexpected TC return {other}"),
        }
    }

    /// Runs the bridge TC program (container ports) on a forwarded `frame`.
    pub fn tc(&mut self, frame: &[u8]) -> Verdict {
        self.tc_from(frame, From::Outside)
    }

    pub fn tc_from(&mut self, frame: &[u8], from: From) -> Verdict {
        let ctx = skb_ctx(from);
        let opts = TestRunOptions { ctx_in: Some(&ctx), ..options(frame) };
        let prog = loader::tc_program(&mut self.ebpf, program_names::BRIDGE_TC).unwrap();
        match prog.test_run(opts).expect("BPF_PROG_TEST_RUN").return_value {
            TC_NEXT => Verdict::Pass,
            TC_SHOT => Verdict::Drop,
            other => panic!("unexpected TC return {other}"),
        }
    }

    /// Average time of one run of the XDP (`tc == false`) or bridge TC
    /// program on `frame`, over `repeat` runs, and the verifier-translated
    /// instruction count (8 bytes each) of that program.
    pub fn time(&mut self, tc: bool, frame: &[u8], repeat: u32) -> (std::time::Duration, u32) {
        let ctx = skb_ctx(From::Outside);
        let opts = TestRunOptions { repeat, ctx_in: if tc { Some(&ctx) } else { None }, ..options(frame) };
        let (result, info) = if tc {
            let prog = loader::tc_program(&mut self.ebpf, program_names::BRIDGE_TC).unwrap();
            (prog.test_run(opts).expect("BPF_PROG_TEST_RUN"), prog.info().unwrap())
        } else {
            let prog = loader::xdp_program(&mut self.ebpf).unwrap();
            (prog.test_run(opts).expect("BPF_PROG_TEST_RUN"), prog.info().unwrap())
        };
        (result.duration, info.size_translated().unwrap_or(0) / 8)
    }

    /// As [`Datapath::time`] for the veth judge, the packet leaving
    /// through `ifindex` come in on `from`.
    pub fn time_veth(
        &mut self,
        frame: &[u8],
        ifindex: u32,
        from: u32,
        repeat: u32,
    ) -> (std::time::Duration, u32) {
        let ctx = skb_ctx_at(ifindex, from);
        let opts = TestRunOptions { repeat, ctx_in: Some(&ctx), ..options(frame) };
        let prog = loader::tc_program(&mut self.ebpf, program_names::VETH_TC).unwrap();
        let result = prog.test_run(opts).expect("BPF_PROG_TEST_RUN");
        (result.duration, prog.info().unwrap().size_translated().unwrap_or(0) / 8)
    }

    /// Runs a flow-tracking program on an outgoing `frame`; it never drops.
    pub fn track(&mut self, program: &str, frame: &[u8]) {
        let ctx = skb_ctx(From::Outside);
        let opts = TestRunOptions { ctx_in: Some(&ctx), ..options(frame) };
        let prog = loader::tc_program(&mut self.ebpf, program).unwrap();
        assert_eq!(prog.test_run(opts).expect("BPF_PROG_TEST_RUN").return_value, TC_NEXT);
    }

    /// Runs the veth judge (`dockblock_veth`) on `frame` leaving through
    /// veth `ifindex`, come in on `from` (its ingress ifindex: 0 the host).
    pub fn veth(&mut self, frame: &[u8], ifindex: u32, from: u32) -> Verdict {
        match self.try_veth(frame, ifindex, from).expect("BPF_PROG_TEST_RUN") {
            TC_NEXT => Verdict::Pass,
            TC_SHOT => Verdict::Drop,
            other => panic!("unexpected veth return {other}"),
        }
    }

    /// The veth judge's return value on `frame`, or the test run's error.
    pub fn try_veth(
        &mut self,
        frame: &[u8],
        ifindex: u32,
        from: u32,
    ) -> Result<u32, aya::programs::ProgramError> {
        let ctx = skb_ctx_at(ifindex, from);
        let opts = TestRunOptions { ctx_in: Some(&ctx), ..options(frame) };
        let prog = loader::tc_program(&mut self.ebpf, program_names::VETH_TC).unwrap();
        prog.test_run(opts).map(|r| r.return_value)
    }

    /// Runs the veth tracker (`dockblock_track_veth`) on a `frame` the
    /// container sends into veth `ifindex`; it never drops.
    pub fn track_veth(&mut self, frame: &[u8], ifindex: u32) {
        let ctx = skb_ctx_at(ifindex, ifindex);
        let opts = TestRunOptions { ctx_in: Some(&ctx), ..options(frame) };
        let prog = loader::tc_program(&mut self.ebpf, program_names::VETH_TRACK).unwrap();
        assert_eq!(prog.test_run(opts).expect("BPF_PROG_TEST_RUN").return_value, TC_NEXT);
    }

    /// The pinned VETHS map.
    pub fn veths(&self) -> BpfHashMap<MapData, u32, VethState> {
        self.raw_map(map_names::VETHS)
    }

    /// The pinned VETH_RULES map.
    pub fn veth_rules(&self) -> BpfHashMap<MapData, VethRuleKey, PortRule> {
        self.raw_map(map_names::VETH_RULES)
    }

    /// The pinned VETH_SCOPED_RULES map.
    pub fn veth_scoped_rules(&self) -> BpfHashMap<MapData, VethScopedKey, PortRule> {
        self.raw_map(map_names::VETH_SCOPED_RULES)
    }

    /// Writes one `VETH_SCOPED_RULES` entry.
    pub fn set_veth_scoped_rule(&self, key: VethScopedKey, rule: PortRule) {
        self.veth_scoped_rules().insert(key, rule, 0).expect("write VETH_SCOPED_RULES");
    }

    /// Writes `VETHS[ifindex]` (as the daemon's veth table does).
    pub fn set_veth(&self, ifindex: u32, state: VethState) {
        self.veths().insert(ifindex, state, 0).expect("write VETHS");
    }

    /// Removes `VETHS[ifindex]`: the veth is unreviewed again.
    pub fn forget_veth(&self, ifindex: u32) {
        let _ = self.veths().remove(&ifindex);
    }

    /// Writes one `VETH_RULES` entry.
    pub fn set_veth_rule(&self, key: VethRuleKey, rule: PortRule) {
        self.veth_rules().insert(key, rule, 0).expect("write VETH_RULES");
    }

    /// Empties `VETHS`, `VETH_RULES` and `VETH_SCOPED_RULES`.
    pub fn clear_veths(&self) {
        let mut scoped = self.veth_scoped_rules();
        for key in scoped.keys().filter_map(|k| k.ok()).collect::<Vec<_>>() {
            let _ = scoped.remove(&key);
        }
        let mut veths = self.veths();
        for key in veths.keys().filter_map(|k| k.ok()).collect::<Vec<_>>() {
            let _ = veths.remove(&key);
        }
        let mut rules = self.veth_rules();
        for key in rules.keys().filter_map(|k| k.ok()).collect::<Vec<_>>() {
            let _ = rules.remove(&key);
        }
    }

    pub fn veth_counter(&self, outcome: u32) -> Counter {
        self.hook_counter(hook::VETH, outcome)
    }

    pub fn hook_counter(&self, hook: u32, outcome: u32) -> Counter {
        self.store.hook_stats().unwrap()[hook_stats_index(hook, outcome) as usize]
    }

    pub fn xdp_counter(&self, outcome: u32) -> Counter {
        self.hook_counter(hook::XDP, outcome)
    }

    pub fn tc_counter(&self, outcome: u32) -> Counter {
        self.hook_counter(hook::TC, outcome)
    }

    pub fn rules(&self) -> Vec<RuleWithStats> {
        self.store.rules_with_stats().unwrap()
    }

    pub fn set_config(&mut self, edit: impl FnOnce(&mut Config)) {
        let mut config = self.store.config().unwrap();
        edit(&mut config);
        self.store.set_config(config).unwrap();
    }

    /// The pinned PORT_RULES array, for tests that look under the store.
    pub fn port_rules(&self) -> Array<MapData, PortRule> {
        self.raw_map(map_names::PORT_RULES)
    }

    /// The pinned CONFIG array.
    pub fn config_map(&self) -> Array<MapData, Config> {
        self.raw_map(map_names::CONFIG)
    }

    /// The pinned FRAGS array.
    pub fn frags(&self) -> Array<MapData, FragSlot> {
        self.raw_map(map_names::FRAGS)
    }

    /// The FRAGS slot the programs use for `key`, under this install's seed
    /// and mask.
    pub fn frag_slot(&self, key: &FragKey) -> u32 {
        dockblock_common::frag_slot(key, &self.store.config().unwrap())
    }

    fn raw_map<T: TryFrom<Map, Error = aya::maps::MapError>>(&self, name: &str) -> T {
        open_pinned(&self.pins, name).unwrap()
    }

    /// Every event waiting in the ring buffer.
    pub fn events(&self) -> Vec<Event> {
        let mut ring: RingBuf<MapData> = self.raw_map(map_names::EVENTS);
        let mut events = Vec::new();
        while let Some(item) = ring.next() {
            // SAFETY: the program wrote an Event.
            events.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) });
        }
        events
    }
}

fn options(frame: &[u8]) -> TestRunOptions<'_> {
    TestRunOptions { data_in: Some(frame), ..TestRunOptions::new() }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.pins.root());
    }
}

/// Test runs that report the kernel's refusal instead of panicking, for the
/// differential fuzz (tests/tests/fuzz.rs), which feeds frames of every
/// length and shape.
impl Datapath {
    /// The XDP program's return value on `frame`, or the test run's error.
    pub fn try_xdp(&mut self, frame: &[u8]) -> Result<u32, aya::programs::ProgramError> {
        let prog = loader::xdp_program(&mut self.ebpf).unwrap();
        prog.test_run(options(frame)).map(|r| r.return_value)
    }

    /// `try_xdp` as if `frame` came in on interface `ingress` (it must exist
    /// in this network namespace).
    pub fn try_xdp_on(&mut self, frame: &[u8], ingress: u32) -> Result<u32, aya::programs::ProgramError> {
        let ctx = dockblock_agent::explain::xdp_ctx(frame.len(), ingress);
        let opts = TestRunOptions { ctx_in: Some(&ctx), ..options(frame) };
        let prog = loader::xdp_program(&mut self.ebpf).unwrap();
        prog.test_run(opts).map(|r| r.return_value)
    }

    /// `try_tc` of a packet forwarded from interface `ingress` (0: the host).
    pub fn try_tc_on(&mut self, frame: &[u8], ingress: u32) -> Result<u32, aya::programs::ProgramError> {
        let ctx = skb_ctx_at(0, ingress);
        let opts = TestRunOptions { ctx_in: Some(&ctx), ..options(frame) };
        let prog = loader::tc_program(&mut self.ebpf, program_names::BRIDGE_TC).unwrap();
        prog.test_run(opts).map(|r| r.return_value)
    }

    /// The bridge TC program's return value on `frame`, or the error.
    pub fn try_tc(&mut self, frame: &[u8], from: From) -> Result<u32, aya::programs::ProgramError> {
        let ctx = skb_ctx(from);
        let opts = TestRunOptions { ctx_in: Some(&ctx), ..options(frame) };
        let prog = loader::tc_program(&mut self.ebpf, program_names::BRIDGE_TC).unwrap();
        prog.test_run(opts).map(|r| r.return_value)
    }
}
