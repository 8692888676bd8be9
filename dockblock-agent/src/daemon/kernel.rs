//! The daemon's calls into the kernel writers (loader, reconcile), in one
//! place, each logged as one line per change.

use crate::{
    docker::snapshot::{Snapshot, VethOwner},
    error::Result,
    link_info,
    loader::{self, DockerHooks},
    paths::{LinkKind, PinDir},
    reconcile::{self, EngineView},
};

/// The veth and bridge programs, loaded once (by the start's attach).
pub(super) struct Hooks(DockerHooks);

impl Hooks {
    pub fn new(hooks: DockerHooks) -> Hooks {
        Hooks(hooks)
    }

    /// Both veth links on `ifname` (kept when live).
    pub fn attach(&self, ifname: &str) -> Result<bool> {
        Ok(self.0.attach(ifname)?.iter().any(|a| !a.replaced))
    }

    pub fn detach(&self, ifname: &str) -> Result<()> {
        self.0.detach(ifname).map(drop)
    }
}

/// Whether `bridge` has a live judge link of ours.
fn bridge_hooked(pins: &PinDir, bridge: &str) -> bool {
    let Some(ifindex) = link_info::ifindex(bridge) else { return false };
    pins.links().iter().any(|p| {
        p.kind == LinkKind::TcEgress
            && p.interface == bridge
            && link_info::read(&p.path).is_ok_and(|i| i.ifindex == ifindex)
    })
}

/// Bridge programs on each of `bridges` that lacks them, then reconcile
/// with the view (no edit: the catalog is re-read, so a CLI change stays);
/// returns the problems to report (bad labels among them).
pub(super) fn sync(
    pins: &PinDir,
    hooks: &Hooks,
    bridges: &[String],
    s: Snapshot,
    veths: Vec<VethOwner>,
    failsafe: Vec<crate::ports::PortSpec>,
    policy: Option<crate::config::PublishedPolicy>,
) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for bridge in bridges.iter().filter(|b| !bridge_hooked(pins, b)) {
        match hooks.0.attach_bridge(bridge) {
            Ok(done) => {
                for a in done {
                    tracing::info!(bridge = %a.interface, kind = a.kind.label(), "bridge hook attached");
                }
            }
            Err(e) => {
                tracing::warn!(bridge = %bridge, "cannot hook the bridge: {e}");
                problems.push(format!("bridge {bridge}: not hooked: {e}"));
            }
        }
    }
    let view = EngineView { snapshot: s, veths, failsafe };
    let applied = reconcile::reconcile(pins, Some(&view), |draft| match policy {
        Some(p) => set_policy(draft, p),
        None => Ok(()),
    })?;
    if let Some(p) = policy {
        tracing::info!(policy = ?p, "published-ports policy from the config");
    }
    let c = &applied.catalog;
    if c.added + c.removed + c.changed > 0 {
        tracing::info!(
            added = c.added,
            removed = c.removed,
            changed = c.changed,
            kept = c.kept,
            "rules committed"
        );
    }
    if !applied.veths.is_empty() {
        tracing::info!(written = applied.veths.written, removed = applied.veths.removed, "veth table synced");
    }
    problems.extend(
        applied
            .warnings
            .iter()
            .map(|w| format!("container {}: label {}: {} (no rule from it)", w.container, w.label, w.why)),
    );
    Ok(problems)
}

/// Unpins the veth and bridge links whose interface is gone.
pub(super) fn gc(pins: &PinDir) -> Result<()> {
    for pin in loader::gc_links(pins)? {
        tracing::info!(interface = %pin.interface, kind = pin.kind.label(), "link of an interface gone unpinned");
    }
    Ok(())
}

/// The config's `policy`: the published-ports policy rule there (deny) or
/// not (allow), as `policy published deny|allow` does.
fn set_policy(draft: &mut crate::rules::Draft, policy: crate::config::PublishedPolicy) -> Result<()> {
    use crate::{
        ports::PortSpec,
        rules::{Edit, RuleSpec, Scope},
        target::{Action, Selector, Target},
    };
    let have: Vec<u32> =
        draft.rules.iter().filter(|r| r.target.selector == Selector::PublishedPolicy).map(|r| r.id).collect();
    match policy {
        crate::config::PublishedPolicy::Deny if have.is_empty() => draft.apply(&[Edit::Add(RuleSpec {
            target: Target { selector: Selector::PublishedPolicy, action: Action::Block },
            ..RuleSpec::plain(Scope::Container, PortSpec::EVERY)
        })]),
        crate::config::PublishedPolicy::Deny => Ok(()),
        crate::config::PublishedPolicy::Allow => {
            draft.apply(&have.into_iter().map(Edit::Remove).collect::<Vec<_>>())
        }
    }
}
