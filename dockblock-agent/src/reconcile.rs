//! The one function that takes a desired state to the kernel: the CLI's
//! changing verbs and the daemon both call [`reconcile`]. Under the pin
//! folder lock it finishes a killed change, commits the user edit and the
//! engine-made rules in one generation switch, then (with an engine view)
//! writes the veth table from the committed rules.
//!
//! Without a view nobody can say what a Docker rule covers, so an edit that
//! changes one is refused before anything is written (the derived rules and
//! veth entries would be stale); plain rules work as without Docker.

use serde::Serialize;

use crate::{
    docker::snapshot::{Snapshot, VethOwner},
    error::{Error, Result},
    paths::PinDir,
    rules::{Draft, Rule, RuleSpec},
    saved,
    store::{CommitSummary, Derive, RuleStore},
    teardown,
    translate::{self, Translator, Warning},
    vethtable::{self, VethSync},
};

/// The engine's state as one reconcile sees it.
#[derive(Clone, Debug, Default)]
pub struct EngineView {
    pub snapshot: Snapshot,
    pub veths: Vec<VethOwner>,
    /// Ports the published-ports policy never closes (config `failsafe`);
    /// empty: none.
    pub failsafe: Vec<crate::ports::PortSpec>,
}

/// What one reconcile did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Applied {
    pub catalog: CommitSummary,
    pub veths: VethSync,
    /// Links attached or detached (the daemon's; the CLI attaches none).
    pub links: Vec<String>,
    /// Containers' labels that gave no rule, and why.
    pub warnings: Vec<Warning>,
}

/// Commits `edit` (and, with `view`, the derived rules and veth entries of
/// the engine's state) under the pin folder lock. Nothing changes when
/// `edit` fails, or when it changes a Docker rule without a view.
pub fn reconcile(
    pins: &PinDir,
    view: Option<&EngineView>,
    edit: impl FnOnce(&mut Draft) -> Result<()>,
) -> Result<Applied> {
    locked(pins, |store| commit(pins, store, view, edit))
}

/// For the daemon only: commits `edit`, Docker rules included, without an
/// engine view (at start, before the engine answers; a revert at an
/// `apply --confirm` deadline). Engine-made rules stay as they are (those
/// of a rule gone go) and the veth table is left alone: a rule just added
/// covers no container yet, none is opened. The caller syncs right after.
pub fn reconcile_unviewed(pins: &PinDir, edit: impl FnOnce(&mut Draft) -> Result<()>) -> Result<Applied> {
    locked(pins, |store| Ok(Applied { catalog: store.commit_with(edit, None)?, ..Default::default() }))
}

/// Runs `commit` under the pin folder lock, then saves the user rule set
/// when it changed (`saved`): the one place every change is saved.
fn locked(pins: &PinDir, commit: impl FnOnce(&mut RuleStore) -> Result<Applied>) -> Result<Applied> {
    let (_lock, mut store) = teardown::begin_change(pins)?;
    let applied = commit(&mut store)?;
    saved::after_commit(pins, &store, &applied.catalog);
    Ok(applied)
}

/// `reconcile` under the lock, before the save.
fn commit(
    pins: &PinDir,
    store: &mut RuleStore,
    view: Option<&EngineView>,
    edit: impl FnOnce(&mut Draft) -> Result<()>,
) -> Result<Applied> {
    let Some(view) = view else {
        let catalog = store.commit_with(
            |draft| {
                let before = docker_rules(&draft.rules);
                edit(draft)?;
                if docker_rules(&draft.rules) != before {
                    return Err(no_engine());
                }
                Ok(())
            },
            None,
        )?;
        return Ok(Applied { catalog, ..Default::default() });
    };
    let translator = Translator { snapshot: &view.snapshot, veths: &view.veths, failsafe: &view.failsafe };
    let catalog = store.commit_with(edit, Some(&translator as &dyn Derive))?;
    let rules = store.rules()?;
    let veths = vethtable::sync(
        pins,
        &translate::veth_plans_except(&rules, &view.snapshot, &view.veths, &view.failsafe),
    )?;
    let warnings = translate::own_label_rules(&view.snapshot).1;
    Ok(Applied { catalog, veths, links: Vec::new(), warnings })
}

/// The user rules that need the engine to mean anything, as specs.
fn docker_rules(rules: &[Rule]) -> Vec<RuleSpec> {
    let mut specs: Vec<RuleSpec> =
        rules.iter().filter(|r| r.is_user() && !r.target.is_plain()).map(Rule::spec).collect();
    specs.sort_by_key(|s| format!("{s:?}"));
    specs
}

/// The error for a Docker rule changed with no engine to ask.
pub fn no_engine() -> Error {
    Error::Engine {
        what: format!("no engine answers at {}", crate::docker::engine::host()),
        why: "rules that name containers, labels, compose projects or the published-ports policy \
              need it; start dockerd (or set DOCKER_HOST) and run the command again"
            .into(),
    }
}
