//! The real kernel programs, loaded (not attached) with their maps pinned in
//! a throw-away folder, run on crafted packets with BPF_PROG_TEST_RUN.

use aya::{
    programs::{TestRun, TestRunOptions},
    Ebpf,
};
use dockblock_agent::{
    loader,
    paths::PinDir,
    ports::PortSpec,
    rules::Scope,
    store::{RuleStore, RuleWithStats},
};
use dockblock_common::{hook, hook_stats_index, Counter};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
/// TC_ACT_UNSPEC (TCX_NEXT) as the kernel reports it.
pub const TC_NEXT: u32 = u32::MAX;
pub const TC_SHOT: u32 = 2;

/// What both hooks did with one packet.
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

impl Datapath {
    /// Loads the programs with maps pinned under a folder unique to `tag`.
    pub fn load(tag: &str) -> Self {
        let pins = PinDir::new(format!(
            "/sys/fs/bpf/dockblock-dp-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(pins.root());
        dockblock_agent::bpffs::ensure_mounted(pins.root()).expect("bpffs");
        let ebpf = loader::load(&pins, Some(64)).expect("load programs");
        let store = RuleStore::open(&pins).expect("open pinned maps");
        Self { ebpf, pins, store }
    }

    pub fn block(&mut self, scope: Scope, spec: &str) {
        self.store
            .block(scope, PortSpec::parse(spec).unwrap())
            .expect("block");
    }

    pub fn unblock(&mut self, scope: Scope, spec: &str) {
        self.store
            .unblock(scope, PortSpec::parse(spec).unwrap())
            .expect("unblock");
    }

    /// Runs the XDP program (dialed ports) on `frame`.
    pub fn xdp(&mut self, frame: &[u8]) -> Verdict {
        let prog = loader::xdp_program(&mut self.ebpf).unwrap();
        match prog
            .test_run(options(frame))
            .expect("BPF_PROG_TEST_RUN")
            .return_value
        {
            XDP_PASS => Verdict::Pass,
            XDP_DROP => Verdict::Drop,
            other => panic!("unexpected XDP return {other}"),
        }
    }

    /// Runs the TC program (container ports) on `frame`.
    pub fn tc(&mut self, frame: &[u8]) -> Verdict {
        let prog = loader::tc_program(&mut self.ebpf).unwrap();
        match prog
            .test_run(options(frame))
            .expect("BPF_PROG_TEST_RUN")
            .return_value
        {
            TC_NEXT => Verdict::Pass,
            TC_SHOT => Verdict::Drop,
            other => panic!("unexpected TC return {other}"),
        }
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
}

fn options(frame: &[u8]) -> TestRunOptions<'_> {
    TestRunOptions {
        data_in: Some(frame),
        ..TestRunOptions::new()
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.pins.root());
    }
}
