//! JSON shapes and table rows shared by `list` and `stats` (documented in
//! the README).

use dockblock_agent::{
    ports::proto_name,
    rules::RuleOptions,
    store::RuleWithStats,
    target::{Action, Selector, Target},
    translate::Covers,
};
use dockblock_common::Counter;
use serde::Serialize;

#[derive(Clone, Copy, Debug, Serialize)]
pub struct CounterJson {
    pub packets: u64,
    pub bytes: u64,
}

impl From<Counter> for CounterJson {
    fn from(c: Counter) -> Self {
        Self { packets: c.packets, bytes: c.bytes }
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
    pub allow_from: Vec<String>,
    pub dry_run: bool,
    pub log: bool,
    /// What the rule names: {"kind": "ports"} for a plain rule, else
    /// {"kind": "container", "name": ..}, "label" (key, value), "compose"
    /// (project, service), "own_labels" (container), "published_policy",
    /// "derived" (parent).
    pub target: Selector,
    pub action: Action,
    pub from_containers: bool,
    /// `--on`: the ingress interfaces the rule applies to ([] for all).
    pub on: Vec<String>,
    /// `--to`: the host addresses the rule applies to ([] for all).
    pub to: Vec<String>,
    /// The rule a derived rule was made from.
    pub derived_from: Option<u32>,
    /// What the rule covers now (`list --json` with an engine), else null.
    pub covers: Option<Covers>,
    /// New connections dropped (and later fragments of dropped datagrams).
    pub dropped: CounterJson,
    /// Replies and established traffic on the rule's ports.
    pub passed: CounterJson,
    /// New connections from allow-listed sources.
    pub allowed: CounterJson,
    /// New connections a dry-run rule would have dropped.
    pub would_drop: CounterJson,
}

impl From<&RuleWithStats> for RuleJson {
    fn from(r: &RuleWithStats) -> Self {
        let ports = r.rule.ports;
        let options = &r.rule.options;
        Self {
            id: r.rule.id,
            scope: r.rule.scope.to_string(),
            spec: ports.to_string(),
            port_lo: ports.lo,
            port_hi: ports.hi,
            protocols: ports.protos().map(proto_name).collect(),
            allow_from: options.allow_from.iter().map(|n| n.to_string()).collect(),
            dry_run: options.dry_run,
            log: options.log,
            target: r.rule.target.selector.clone(),
            action: r.rule.target.action,
            from_containers: options.from_containers,
            on: options.scoping.on.clone(),
            to: options.scoping.to.iter().map(|a| a.to_string()).collect(),
            derived_from: match r.rule.target.selector {
                Selector::Derived { parent } => Some(parent),
                _ => None,
            },
            covers: None,
            dropped: r.stats.dropped.into(),
            passed: r.stats.passed.into(),
            allowed: r.stats.allowed.into(),
            would_drop: r.stats.dry_run.into(),
        }
    }
}

/// " (allow 203.0.113.0/24; dry-run; log)", or "" for a plain rule.
pub fn describe_options(options: &RuleOptions) -> String {
    let parts = option_parts(options);
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join("; "))
    }
}

fn option_parts(options: &RuleOptions) -> Vec<String> {
    let mut parts = Vec::new();
    let scoping = options.scoping.to_string();
    if !scoping.is_empty() {
        parts.push(scoping.trim_start().to_string());
    }
    if !options.allow_from.is_empty() {
        let nets: Vec<String> = options.allow_from.iter().map(|n| n.to_string()).collect();
        parts.push(format!("allow {}", nets.join(",")));
    }
    if options.dry_run {
        parts.push("dry-run".to_string());
    }
    if options.log {
        parts.push("log".to_string());
    }
    if options.from_containers {
        parts.push("from containers".to_string());
    }
    parts
}

/// The OPTIONS column: "(allow ..; log)" for a plain rule; the target
/// first for the others ("container db; log", "derived from rule 3").
fn describe_rule(target: &Target, options: &RuleOptions) -> String {
    if target.is_plain() {
        return describe_options(options).trim_start().to_string();
    }
    let mut parts = vec![target.to_string()];
    parts.extend(option_parts(options));
    parts.join("; ")
}

pub const RULE_HEADER: &str = "  ID  SCOPE      PORTS                 DROPPED  DROPPED_BYTES       PASSED      ALLOWED   WOULD_DROP  OPTIONS";

pub fn rule_row(r: &RuleWithStats) -> String {
    format!(
        "{:>4}  {:<9}  {:<16} {:>12} {:>14} {:>12} {:>12} {:>12} {}",
        r.rule.id,
        r.rule.scope,
        r.rule.ports,
        r.stats.dropped.packets,
        r.stats.dropped.bytes,
        r.stats.passed.packets,
        r.stats.allowed.packets,
        r.stats.dry_run.packets,
        describe_rule(&r.rule.target, &r.rule.options),
    )
}

pub fn print_json(value: &impl Serialize) {
    println!("{}", serde_json::to_string_pretty(value).expect("serializable"));
}

/// A reading command warns (on stderr, so `export > file` stays clean) when
/// a killed command left a change half-done: what it shows may be neither
/// the old nor the new rule set until the change is finished.
pub fn warn_if_interrupted(pins: &dockblock_agent::paths::PinDir) {
    if dockblock_agent::lock::PinLock::is_held(pins.root()) {
        return;
    }
    if let Ok(journal) = dockblock_agent::journal::read(pins) {
        if let Some(change) = journal.change {
            eprintln!("dockblock-agent: warning: {}; run `{}`", change.describe(), change.fix());
        }
    }
}
