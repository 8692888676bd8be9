//! JSON shapes shared by `list` and `stats` (documented in the README).

use dockblock_agent::{ports::proto_name, store::RuleWithStats};
use dockblock_common::Counter;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct CounterJson {
    pub packets: u64,
    pub bytes: u64,
}

impl From<Counter> for CounterJson {
    fn from(c: Counter) -> Self {
        Self {
            packets: c.packets,
            bytes: c.bytes,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct RuleJson {
    pub id: u32,
    pub scope: String,
    /// The rule in Docker's port syntax, as `block` takes it.
    pub spec: String,
    pub port_lo: u16,
    pub port_hi: u16,
    pub protocols: Vec<&'static str>,
    pub dropped: CounterJson,
    pub passed: CounterJson,
}

impl From<&RuleWithStats> for RuleJson {
    fn from(r: &RuleWithStats) -> Self {
        let ports = r.rule.ports;
        Self {
            id: r.rule.id,
            scope: r.rule.scope.to_string(),
            spec: ports.to_string(),
            port_lo: ports.lo,
            port_hi: ports.hi,
            protocols: ports.protos().map(proto_name).collect(),
            dropped: r.stats.dropped.into(),
            passed: r.stats.passed.into(),
        }
    }
}

pub fn print_json(value: &impl Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("serializable")
    );
}
