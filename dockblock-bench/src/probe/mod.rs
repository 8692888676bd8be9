//! The parts of the benchmark that run BPF programs themselves (through
//! aya): the bench runs its own binary as a subprocess for them, because the
//! live-frames generator must run inside the outside namespace
//! (`ip netns exec NS dockblock-bench flood ...`) and a drop-all link must
//! outlive the call that made it.
//!
//! - `cost`: per-packet cost of the *attached* dockblock programs (found by
//!   program id, as `dockblock-agent status --json` reports them), measured
//!   with BPF_PROG_TEST_RUN and `repeat`, plus their instruction and JIT
//!   sizes, and the test-run floor (programs that return at once). Rules are
//!   whatever the CLI installed: nothing here writes maps.
//! - `flood`: the live-frames traffic generator (`bench_tx`, or
//!   `bench_tx_flows` for random source ports) run with BPF_PROG_TEST_RUN
//!   in live-frames mode; every XDP_TX leaves through `--ifname`.
//! - `drop-all`: the reference receiver, pinned on an interface.
//! - `latency`: short HTTP/1.0 requests one after another, timing each.
//!
//! Arguments are `--key value` pairs; output is one JSON object on stdout.

mod cost;
mod latency;
mod live;

use std::collections::HashMap;

use anyhow::{anyhow, bail, Context, Result};
use aya::programs::Xdp;
use aya::Ebpf;
use serde_json::Value;

/// The benchmark's kernel programs (dockblock-bench-ebpf), built by build.rs:
/// the live-frames generators, the floors and the drop-all reference.
pub static BENCH_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench"));

/// The probe verbs, as `dockblock-bench VERB --key value ...` takes them.
pub const VERBS: [&str; 4] = ["cost", "flood", "latency", "drop-all"];

/// Runs probe `verb` and prints its JSON result.
pub fn main(verb: &str, args: &[String]) -> Result<()> {
    let opts = Opts::parse(args.iter().cloned())?;
    let out: Value = match verb {
        "cost" => cost::run(&opts)?,
        "flood" => live::flood(&opts)?,
        "latency" => latency::run(&opts)?,
        "drop-all" => live::drop_all(&opts)?,
        _ => bail!("unknown probe {verb:?}: one of {VERBS:?}"),
    };
    println!("{out}");
    Ok(())
}

/// `--key value` pairs.
pub(crate) struct Opts(HashMap<String, String>);

impl Opts {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Self> {
        let mut map = HashMap::new();
        while let Some(key) = args.next() {
            let key =
                key.strip_prefix("--").ok_or_else(|| anyhow!("expected --key, got {key:?}"))?.to_string();
            let value = args.next().ok_or_else(|| anyhow!("--{key} needs a value"))?;
            map.insert(key, value);
        }
        Ok(Self(map))
    }

    pub(crate) fn str(&self, key: &str) -> Result<&str> {
        self.0.get(key).map(String::as_str).ok_or_else(|| anyhow!("--{key} is required"))
    }

    pub(crate) fn num<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T> {
        match self.0.get(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| anyhow!("--{key}: bad number {v:?}")),
        }
    }
}

pub(crate) fn xdp<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    let prog: &mut Xdp = ebpf.program_mut(name).ok_or_else(|| anyhow!("no program {name}"))?.try_into()?;
    prog.load().with_context(|| format!("load {name}"))?;
    Ok(prog)
}
