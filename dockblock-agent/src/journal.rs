//! The intent journal: what a changing command is about to do, written
//! before its first state change and removed after its last, so a command
//! killed half-way (SIGKILL, OOM, a reboot of the CLI's container) can be
//! finished by the next one. The switch points stay single writes (the
//! `CONFIG` generation word); the journal says which way to go after a kill:
//!
//! - a rule change is always rolled forward: the catalog is brought to the
//!   journal's target, the idle generation rebuilt from it, then switched;
//! - a detach is finished;
//! - an interrupted attach cannot be finished without its arguments, so the
//!   journal keeps its command line and `status` says to run it again.
//!
//! The journal is a small JSON file under /run (bpffs holds only pins): it
//! lives as long as the pins do, in memory, and is replaced by rename, so a
//! reader sees the old or the new journal.

use dockblock_common::{RuleDef, RuleTarget, RULE_TARGET_TEXT};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    paths::PinDir,
    private_file,
    rules::Rule,
    scoping::Scoping,
    testhook,
};

/// What is in flight.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Journal {
    /// The command line of an attach that has not finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attach: Option<String>,
    /// A change to finish before anything else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<Change>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    /// A rule-set commit: the generation live before it, the rules it adds
    /// or rewrites, the ids it removes, the ids that are new (counters to
    /// zero while nothing points at them yet).
    Commit { live_before: u32, upsert: Vec<StoredRule>, remove: Vec<u32>, fresh: Vec<u32> },
    /// Rebuilding both generations from the catalog (attach, repair).
    Resync,
    /// `detach`: these interfaces, or everything when empty.
    Detach { interfaces: Vec<String> },
}

/// A catalog rule as the journal keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredRule {
    pub id: u32,
    pub scope: u32,
    pub protos: u32,
    pub port_lo: u16,
    pub port_hi: u16,
    #[serde(default)]
    pub flags: u32,
    #[serde(default)]
    pub allow_from: Vec<IpNet>,
    /// The `RULE_TARGETS` entry; absent for a plain rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<StoredTarget>,
    /// `--on`/`--to` (`RULE_SCOPES`); absent for an unscoped rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<std::net::IpAddr>,
}

/// A `RuleTarget` as the journal keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredTarget {
    pub kind: u32,
    pub action: u32,
    #[serde(default)]
    pub parent: u32,
    #[serde(default)]
    pub text: String,
}

impl StoredTarget {
    /// The map entry; `None` when the text does not fit (a damaged journal).
    pub fn to_raw(&self) -> Option<RuleTarget> {
        let bytes = self.text.as_bytes();
        if bytes.len() > RULE_TARGET_TEXT {
            return None;
        }
        let mut raw = RuleTarget {
            kind: self.kind,
            action: self.action,
            parent: self.parent,
            len: bytes.len() as u32,
            ..Default::default()
        };
        raw.text[..bytes.len()].copy_from_slice(bytes);
        Some(raw)
    }
}

impl From<&Rule> for StoredRule {
    fn from(r: &Rule) -> Self {
        let def = r.to_def();
        Self {
            id: r.id,
            scope: def.scope,
            protos: def.protos,
            port_lo: def.port_lo,
            port_hi: def.port_hi,
            flags: def.flags,
            allow_from: r.options.allow_from.clone(),
            // A rule in the catalog has a target that fits (checked when
            // it was made); encode cannot fail for it.
            target: r.target.encode().ok().flatten().map(|t| StoredTarget {
                kind: t.kind,
                action: t.action,
                parent: t.parent,
                text: String::from_utf8_lossy(&t.text[..t.len as usize]).into_owned(),
            }),
            on: r.options.scoping.on.clone(),
            to: r.options.scoping.to.clone(),
        }
    }
}

impl StoredRule {
    pub fn to_rule(&self) -> Option<Rule> {
        let def = RuleDef {
            scope: self.scope,
            protos: self.protos,
            port_lo: self.port_lo,
            port_hi: self.port_hi,
            flags: self.flags,
        };
        let target = match &self.target {
            Some(t) => Some(t.to_raw()?),
            None => None,
        };
        let mut rule = Rule::from_def(self.id, &def, self.allow_from.clone(), target.as_ref())?;
        rule.options.scoping = Scoping { on: self.on.clone(), to: self.to.clone() }.normalised();
        Some(rule)
    }
}

impl Change {
    /// The command that finishes this change, for `status`.
    pub fn fix(&self) -> String {
        match self {
            Change::Detach { interfaces } if !interfaces.is_empty() => {
                format!("dockblock-agent detach {}", interfaces.join(" "))
            }
            Change::Detach { .. } => "dockblock-agent detach".into(),
            Change::Commit { .. } | Change::Resync => "dockblock-agent repair".into(),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Change::Commit { upsert, remove, .. } => format!(
                "a rule change ({} rules added or changed, {} removed) was interrupted",
                upsert.len(),
                remove.len()
            ),
            Change::Resync => "rebuilding the port tables from the catalog was interrupted".into(),
            Change::Detach { interfaces } if interfaces.is_empty() => "a detach was interrupted".into(),
            Change::Detach { interfaces } => format!("a detach of {} was interrupted", interfaces.join(", ")),
        }
    }
}

/// Reads the journal of `pins`; an absent file is an empty journal.
pub fn read(pins: &PinDir) -> Result<Journal> {
    let path = pins.journal();
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map_err(|e| Error::io("parse journal", &path, std::io::Error::other(e.to_string()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Journal::default()),
        Err(e) => Err(Error::io("read journal", &path, e)),
    }
}

/// Replaces the journal (removes it when empty). One state change for the
/// test hook.
pub fn write(pins: &PinDir, journal: &Journal) -> Result<()> {
    let path = pins.journal();
    if *journal == Journal::default() {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("remove journal", &path, e)),
        }
        testhook::step();
        return Ok(());
    }
    let text = serde_json::to_vec(journal).expect("journal serializes");
    private_file::write(&path, &text, "write journal")?;
    testhook::step();
    Ok(())
}

/// Sets the in-flight change, keeping an unfinished attach's note.
pub fn set_change(pins: &PinDir, change: Option<Change>) -> Result<()> {
    let mut journal = read(pins)?;
    journal.change = change;
    write(pins, &journal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        ports::PortSpec,
        rules::{RuleOptions, RuleSpec, Scope},
        target::{Action, Selector, Target},
    };

    #[test]
    fn a_stored_rule_keeps_its_target_through_json() {
        let targets = [
            Target::default(),
            Target {
                selector: Selector::Label { key: "tier".into(), value: Some("db".into()) },
                action: Action::Allow,
            },
            Target { selector: Selector::Derived { parent: 4 }, action: Action::Block },
            Target { selector: Selector::PublishedPolicy, action: Action::Block },
        ];
        for target in targets {
            let spec = RuleSpec {
                options: RuleOptions::new(["10.0.0.0/8".parse().unwrap()], false, true)
                    .with_from_containers(true),
                target,
                ..RuleSpec::plain(Scope::Container, PortSpec::EVERY)
            };
            let rule = Rule::from_spec(9, spec);
            let stored = StoredRule::from(&rule);
            assert_eq!(stored.target.is_none(), rule.target.is_plain());
            let back: StoredRule = serde_json::from_str(&serde_json::to_string(&stored).unwrap()).unwrap();
            assert_eq!(back.to_rule(), Some(rule));
        }
        // A journal written before targets existed reads as plain rules.
        let old = r#"{"id":1,"scope":0,"protos":1,"port_lo":22,"port_hi":22}"#;
        let rule = serde_json::from_str::<StoredRule>(old).unwrap().to_rule().unwrap();
        assert!(rule.target.is_plain());
        // A damaged target: the rule is not rolled forward as something else.
        let mut stored = StoredRule::from(&rule);
        stored.target = Some(StoredTarget { kind: 42, action: 0, parent: 0, text: "x".into() });
        assert_eq!(stored.to_rule(), None);
    }
}
