//! One reading of every counter the programs keep: per hook and outcome,
//! per rule, and the log events the rate limit suppressed. `stats` prints
//! it, the daemon's `/metrics` exposes it: both call [`read`], so the two
//! can never disagree on what a counter means.

use std::time::Instant;

use dockblock_common::{hook, hook_stats_index, outcome, Counter};

use crate::{
    error::Result,
    store::{RuleStore, RuleWithStats},
};

/// The hooks, by their number and their name in JSON and metric labels.
pub const HOOKS: [(u32, &str); hook::COUNT as usize] =
    [(hook::XDP, "xdp"), (hook::TC, "tc"), (hook::VETH, "veth")];

/// Every counter, summed over CPUs, at one moment.
pub struct Reading {
    pub at: Instant,
    /// Indexed by `hook_stats_index(hook, outcome)`.
    pub hooks: Vec<Counter>,
    pub rules: Vec<RuleWithStats>,
    /// Log events not sent because of the rate limit or a full ring buffer.
    pub suppressed: u64,
}

impl Reading {
    /// The counter of `hook` (a `hook::*`) and `outcome` (an `outcome::*`).
    pub fn hook(&self, hook: u32, outcome: u32) -> Counter {
        self.hooks[hook_stats_index(hook, outcome) as usize]
    }

    /// Every (hook name, outcome name, counter), hooks in [`HOOKS`] order,
    /// outcomes in `outcome::NAMES` order.
    pub fn hook_counters(&self) -> impl Iterator<Item = (&'static str, &'static str, Counter)> + '_ {
        HOOKS.into_iter().flat_map(move |(h, hook_name)| {
            outcome::NAMES.iter().enumerate().map(move |(o, name)| (hook_name, *name, self.hook(h, o as u32)))
        })
    }
}

/// Reads every counter of `store`.
pub fn read(store: &RuleStore) -> Result<Reading> {
    Ok(Reading {
        at: Instant::now(),
        hooks: store.hook_stats()?,
        rules: store.rules_with_stats()?,
        suppressed: store.suppressed_events()?,
    })
}
