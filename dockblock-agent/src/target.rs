//! What a rule names besides ports, as the user side sees it. Stored in
//! the `RULE_TARGETS` map (`dockblock_common::RuleTarget`); a plain port
//! rule (`Selector::Ports`, `Action::Block`) has no entry there.

use dockblock_common::{target_action, target_kind, RuleTarget, RULE_TARGET_TEXT};
use serde::Serialize;

use crate::{
    error::{Error, Result},
    ports::PortSpec,
};

/// Largest explicit range a rule that names containers takes (each port is
/// a veth entry); `PortSpec::EVERY` is one wildcard entry per protocol.
pub const MAX_RANGE: u32 = 1024;

/// Whether `spec` is too wide for a rule that names containers.
pub fn too_wide(spec: &PortSpec) -> bool {
    *spec != PortSpec::EVERY && spec.port_count() > MAX_RANGE
}

/// Who a rule is about.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Selector {
    /// Today's rules: a port, dialed or container (`Rule::scope`).
    #[default]
    Ports,
    /// A container, by name: follows re-creation with the same name.
    Container { name: String },
    /// Every container with this label (`value: None`: any value).
    Label { key: String, value: Option<String> },
    /// A compose project, or one service of it.
    Compose { project: String, service: Option<String> },
    /// A container's own `dockblock.*` labels (made by the daemon).
    OwnLabels { container: String },
    /// `policy published deny`.
    PublishedPolicy,
    /// A dialed-port rule derived from rule `parent` (made by the daemon).
    Derived { parent: u32 },
}

impl Selector {
    /// Whether the rule compiles to the global port tables (`PORT_RULES`)
    /// itself; the others reach the kernel through derived rules and veth
    /// entries.
    pub fn is_port_table(&self) -> bool {
        matches!(self, Selector::Ports | Selector::Derived { .. })
    }

    /// Whether the engine state made it, rather than a user: never edited
    /// by a CLI verb, never exported.
    pub fn is_derived(&self) -> bool {
        matches!(self, Selector::OwnLabels { .. } | Selector::Derived { .. })
    }
}

/// What a rule does to what it covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Block,
    /// Opens what `policy published deny` closes (and nothing else).
    Allow,
}

/// A rule's selector and action.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Target {
    pub selector: Selector,
    pub action: Action,
}

impl Target {
    pub fn is_plain(&self) -> bool {
        self.selector == Selector::Ports && self.action == Action::Block
    }
}

impl Selector {
    /// Checks the values a user gave (CLI, rules file): container and
    /// compose names as Docker spells them, label keys without `=`, and
    /// text that fits `RuleTarget::text`. `BadSelector` says which.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::BadSelector { what });
        match self {
            Selector::Container { name } if !is_docker_name(name) => {
                bad(format!("container name `{name}`: expected [a-zA-Z0-9][a-zA-Z0-9_.-]*"))
            }
            Selector::Label { key, .. } if key.is_empty() || key.contains('=') => {
                bad(format!("label key `{key}`: must be non-empty and without `=`"))
            }
            Selector::Compose { project, service } => {
                if !is_docker_name(project) {
                    return bad(format!("compose project `{project}`: expected [a-zA-Z0-9][a-zA-Z0-9_.-]*"));
                }
                match service {
                    Some(s) if !is_docker_name(s) => {
                        bad(format!("compose service `{s}`: expected [a-zA-Z0-9][a-zA-Z0-9_.-]*"))
                    }
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }?;
        match self.text() {
            Some(text) if text.len() > RULE_TARGET_TEXT => {
                bad(format!("selector `{text}`: longer than {RULE_TARGET_TEXT} bytes"))
            }
            _ => Ok(()),
        }
    }

    /// The `RuleTarget::text` of this selector.
    fn text(&self) -> Option<String> {
        match self {
            Selector::Container { name } => Some(name.clone()),
            Selector::Label { key, value: Some(v) } => Some(format!("{key}={v}")),
            Selector::Label { key, value: None } => Some(key.clone()),
            Selector::Compose { project, service: Some(s) } => Some(format!("{project}/{s}")),
            Selector::Compose { project, service: None } => Some(project.clone()),
            Selector::OwnLabels { container } => Some(container.clone()),
            Selector::Ports | Selector::PublishedPolicy | Selector::Derived { .. } => None,
        }
    }
}

/// Docker's container-name rule (also used for compose names):
/// `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub fn is_docker_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// How messages and tables name a target: "container db", "label
/// tier=db", "compose shop/db", "the published-ports policy".
impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let allow = if self.action == Action::Allow { "allow " } else { "" };
        let text = self.selector.text().unwrap_or_default();
        let what = match &self.selector {
            Selector::Ports => "ports".to_string(),
            Selector::Container { .. } => format!("container {text}"),
            Selector::Label { .. } => format!("label {text}"),
            Selector::Compose { .. } => format!("compose {text}"),
            Selector::OwnLabels { container } => {
                format!("labels of container {}", container.chars().take(12).collect::<String>())
            }
            Selector::PublishedPolicy => "the published-ports policy".to_string(),
            Selector::Derived { parent } => format!("derived from rule {parent}"),
        };
        f.pad(&format!("{allow}{what}"))
    }
}

impl Target {
    /// The `RULE_TARGETS` entry; `None` for a plain rule (no entry).
    /// `BadSelector` when the text does not fit.
    pub fn encode(&self) -> Result<Option<RuleTarget>> {
        if self.is_plain() {
            return Ok(None);
        }
        let (kind, parent) = match &self.selector {
            Selector::Ports => (0, 0),
            Selector::Container { .. } => (target_kind::CONTAINER, 0),
            Selector::Label { .. } => (target_kind::LABEL, 0),
            Selector::Compose { .. } => (target_kind::COMPOSE, 0),
            Selector::OwnLabels { .. } => (target_kind::OWN_LABELS, 0),
            Selector::PublishedPolicy => (target_kind::PUBLISHED_POLICY, 0),
            Selector::Derived { parent } => (target_kind::DERIVED, *parent),
        };
        let text = self.selector.text().unwrap_or_default();
        if text.len() > RULE_TARGET_TEXT {
            return Err(Error::BadSelector {
                what: format!("selector `{text}`: longer than {RULE_TARGET_TEXT} bytes"),
            });
        }
        let action = match self.action {
            Action::Block => target_action::BLOCK,
            Action::Allow => target_action::ALLOW,
        };
        let mut raw = RuleTarget { kind, action, parent, len: text.len() as u32, ..Default::default() };
        raw.text[..text.len()].copy_from_slice(text.as_bytes());
        Ok(Some(raw))
    }

    /// Reads a `RULE_TARGETS` entry (`None`: no entry, a plain rule).
    /// `None` for an entry this version cannot interpret: the rule is
    /// then left alone, as any damaged catalog entry.
    pub fn decode(raw: Option<&RuleTarget>) -> Option<Target> {
        let Some(raw) = raw else { return Some(Target::default()) };
        let action = match raw.action {
            target_action::BLOCK => Action::Block,
            target_action::ALLOW => Action::Allow,
            _ => return None,
        };
        let len = usize::try_from(raw.len).ok()?;
        let text = std::str::from_utf8(raw.text.get(..len)?).ok()?.to_string();
        let needs_text = !matches!(raw.kind, 0 | target_kind::PUBLISHED_POLICY | target_kind::DERIVED);
        if needs_text == text.is_empty() || (raw.kind != target_kind::DERIVED && raw.parent != 0) {
            return None;
        }
        let selector = match raw.kind {
            0 => Selector::Ports,
            target_kind::CONTAINER => Selector::Container { name: text },
            target_kind::LABEL => match text.split_once('=') {
                Some((k, v)) => Selector::Label { key: k.into(), value: Some(v.into()) },
                None => Selector::Label { key: text, value: None },
            },
            target_kind::COMPOSE => match text.split_once('/') {
                Some((p, s)) => Selector::Compose { project: p.into(), service: Some(s.into()) },
                None => Selector::Compose { project: text, service: None },
            },
            target_kind::OWN_LABELS => Selector::OwnLabels { container: text },
            target_kind::PUBLISHED_POLICY => Selector::PublishedPolicy,
            target_kind::DERIVED if raw.parent != 0 => Selector::Derived { parent: raw.parent },
            _ => return None,
        };
        if !matches!(selector, Selector::OwnLabels { .. }) && selector.validate().is_err() {
            return None;
        }
        let target = Target { selector, action };
        // A plain rule has no entry: an entry that says "plain" is damaged.
        if target.is_plain() {
            return None;
        }
        Some(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(selector: Selector, action: Action) -> Target {
        Target { selector, action }
    }

    #[test]
    fn every_target_round_trips() {
        let some = |s: &str| Some(s.to_string());
        for target in [
            t(Selector::Container { name: "db".into() }, Action::Block),
            t(Selector::Container { name: "web-1.a_b".into() }, Action::Allow),
            t(Selector::Label { key: "tier".into(), value: some("db=x") }, Action::Block),
            t(Selector::Label { key: "tier".into(), value: None }, Action::Block),
            t(Selector::Label { key: "tier".into(), value: some("") }, Action::Block),
            t(Selector::Compose { project: "shop".into(), service: some("db") }, Action::Block),
            t(Selector::Compose { project: "shop".into(), service: None }, Action::Allow),
            t(Selector::OwnLabels { container: "ab".repeat(32) }, Action::Block),
            t(Selector::PublishedPolicy, Action::Block),
            t(Selector::Derived { parent: 7 }, Action::Block),
            t(Selector::Ports, Action::Allow),
        ] {
            let raw = target.encode().unwrap().expect("a targeted rule has an entry");
            assert_eq!(Target::decode(Some(&raw)), Some(target.clone()), "{target:?}");
        }
        assert_eq!(Target::default().encode().unwrap(), None, "plain: no entry");
        assert_eq!(Target::decode(None), Some(Target::default()));
    }

    #[test]
    fn damaged_entries_are_refused() {
        let good = t(Selector::Container { name: "db".into() }, Action::Block).encode().unwrap().unwrap();
        let damaged = [
            RuleTarget { kind: 99, ..good },
            RuleTarget { action: 7, ..good },
            RuleTarget { len: RULE_TARGET_TEXT as u32 + 1, ..good },
            RuleTarget { len: 0, ..good },
            RuleTarget { parent: 3, ..good },
            RuleTarget { text: [0xff; RULE_TARGET_TEXT], ..good },
            RuleTarget { kind: target_kind::DERIVED, parent: 0, len: 0, ..good },
            RuleTarget { kind: target_kind::PUBLISHED_POLICY, ..good },
            RuleTarget { kind: 0, action: target_action::BLOCK, len: 0, ..good },
            {
                let mut t = good;
                t.text[0] = b'-';
                t
            },
        ];
        for raw in damaged {
            assert_eq!(Target::decode(Some(&raw)), None, "{raw:?}");
        }
    }

    #[test]
    fn user_values_are_checked() {
        let ok = [
            Selector::Container { name: "db".into() },
            Selector::Label { key: "com.example/tier".into(), value: Some("a=b".into()) },
            Selector::Compose { project: "shop".into(), service: Some("web_1".into()) },
        ];
        for s in ok {
            s.validate().unwrap();
        }
        for (s, why) in [
            (Selector::Container { name: "-db".into() }, "container name `-db`"),
            (Selector::Container { name: "".into() }, "container name ``"),
            (Selector::Container { name: "a b".into() }, "container name `a b`"),
            (Selector::Label { key: "".into(), value: None }, "label key"),
            (Selector::Label { key: "a=b".into(), value: None }, "label key `a=b`"),
            (Selector::Compose { project: "a/b".into(), service: None }, "compose project"),
            (Selector::Compose { project: "a".into(), service: Some("/".into()) }, "compose service"),
            (Selector::Container { name: "a".repeat(241) }, "longer than 240 bytes"),
            (Selector::Label { key: "k".into(), value: Some("v".repeat(240)) }, "longer than 240 bytes"),
        ] {
            let err = s.validate().unwrap_err();
            assert!(err.to_string().contains(why), "{s:?}: {err}");
            assert_eq!(err.exit_code(), crate::exit_code::ExitCode::Usage);
        }
    }
}
