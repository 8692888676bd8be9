//! What a rule names besides ports, as the user side sees it. Stored in
//! the `RULE_TARGETS` map (`dockblock_common::RuleTarget`); a plain port
//! rule (`Selector::Ports`, `Action::Block`) has no entry there.

use serde::Serialize;

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
