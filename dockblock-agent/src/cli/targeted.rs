//! What the rule-editing verbs share: selector and port arguments as a
//! target, the engine view they reconcile with, and what they print after.

use dockblock_agent::{
    daemon::state::DaemonStatus,
    docker::engine,
    paths::PinDir,
    ports::PortSpec,
    reconcile::{self, Applied, EngineView},
    require_root,
    rules::{RuleOptions, RuleSpec, Scope},
    scoping::Scoping,
    store,
    target::{too_wide, Selector, Target, MAX_RANGE},
    Error, Result,
};

use super::{block::describe, output::describe_options, PortArgs, SelectorArgs};

impl SelectorArgs {
    /// The selector asked for (`Ports` when none), its values checked.
    pub(super) fn selector(&self) -> Result<Selector> {
        let selector = if let Some(name) = &self.container {
            Selector::Container { name: name.clone() }
        } else if let Some(label) = &self.label {
            match label.split_once('=') {
                Some((k, v)) => Selector::Label { key: k.into(), value: Some(v.into()) },
                None => Selector::Label { key: label.clone(), value: None },
            }
        } else if let Some(project) = &self.compose_project {
            Selector::Compose { project: project.clone(), service: self.compose_service.clone() }
        } else {
            Selector::Ports
        };
        selector.validate()?;
        Ok(selector)
    }
}

impl PortArgs {
    /// The selector, the scope and the port specs. A Docker rule is about
    /// container ports; none given means every port, and a range may
    /// cover at most `MAX_RANGE` ports. A plain rule needs ports.
    pub(super) fn resolve(&self) -> Result<(Selector, Scope, Vec<PortSpec>)> {
        let selector = self.selector.selector()?;
        let specs = self.ports.iter().map(|s| PortSpec::parse(s)).collect::<Result<Vec<_>>>()?;
        if selector == Selector::Ports {
            if specs.is_empty() {
                return Err(Error::BadArgument {
                    what: "ports",
                    value: String::new(),
                    why:
                        "give at least one port spec, or a selector (--container, --label, --compose-project)"
                            .into(),
                });
            }
            return Ok((selector, if self.container_port { Scope::Container } else { Scope::Dialed }, specs));
        }
        if let Some(wide) = specs.iter().find(|s| too_wide(s)) {
            return Err(Error::BadSelector {
                what: format!(
                    "`{wide}` covers {} ports; a rule that names containers takes at most {MAX_RANGE} \
                     per range, or no ports for every port",
                    wide.port_count()
                ),
            });
        }
        let specs = if specs.is_empty() { vec![PortSpec::EVERY] } else { specs };
        Ok((selector, Scope::Container, specs))
    }
}

impl PortArgs {
    /// `--on`/`--to`, checked (syntax; that the interfaces exist only when
    /// `existing`: a rule on an interface that went away can still be
    /// removed).
    pub(super) fn scoping(&self, existing: bool) -> Result<Scoping> {
        let scoping = Scoping::parse(&self.on, &self.to)?;
        if existing {
            scoping.check_interfaces()?;
        }
        Ok(scoping)
    }
}

/// The engine's state for a verb about `target`. A Docker rule needs it
/// (no engine: the error says so, nothing changes); a plain one uses it
/// when it answers (derived rules and veth entries stay current), and
/// works as without Docker when not.
pub(super) fn view(target: &Target) -> Result<Option<EngineView>> {
    match engine::view_blocking() {
        Ok(Some((snapshot, veths))) => {
            Ok(Some(EngineView { snapshot, veths, failsafe: super::config::failsafe() }))
        }
        Ok(None) if target.is_plain() => Ok(None),
        Ok(None) => Err(reconcile::no_engine()),
        Err(e) if target.is_plain() => {
            eprintln!("dockblock-agent: warning: {e}; rules that name containers are left as they are");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// `--container NAME` must name a container the engine knows (created,
/// running or stopped): a typo would otherwise be a rule on nothing.
pub(super) fn check_known(target: &Target, view: Option<&EngineView>) -> Result<()> {
    let (Selector::Container { name }, Some(view)) = (&target.selector, view) else { return Ok(()) };
    if view.snapshot.containers.iter().any(|c| c.name == *name) {
        return Ok(());
    }
    Err(Error::BadSelector {
        what: format!("no container named `{name}` (`docker ps -a` lists them); nothing changed"),
    })
}

/// One spec per port spec, all with `options` and `target`.
pub(super) fn specs(
    scope: Scope,
    ports: &[PortSpec],
    options: &RuleOptions,
    target: &Target,
) -> Vec<RuleSpec> {
    ports
        .iter()
        .map(|p| RuleSpec { options: options.clone(), target: target.clone(), ..RuleSpec::plain(scope, *p) })
        .collect()
}

/// Adds `specs` (all of `target`) through reconcile and says, per spec,
/// `done` or `unchanged` (the verb's words: "blocked", "already blocked:").
pub(super) fn add(
    pins: &PinDir,
    target: &Target,
    specs: &[RuleSpec],
    done: &str,
    unchanged: &str,
) -> Result<()> {
    require_root()?;
    let view = view(target)?;
    check_known(target, view.as_ref())?;
    let mut changed = Vec::new();
    let applied = reconcile::reconcile(pins, view.as_ref(), |d| store::block_specs(d, specs, &mut changed))?;
    for (spec, changed) in specs.iter().zip(changed) {
        let what = if changed { done } else { unchanged };
        println!("{what} {}{}", describe(spec), describe_options(&spec.options));
    }
    report(pins, target, &applied);
    Ok(())
}

/// Opens `ports` among the rules of `target` through reconcile and says
/// `done` for each (`NotBlocked` when no such rule covers one of them).
pub(super) fn remove(
    pins: &PinDir,
    target: &Target,
    scope: Scope,
    scoping: &Scoping,
    ports: &[PortSpec],
    done: &str,
) -> Result<()> {
    require_root()?;
    let view = view(target)?;
    let applied = reconcile::reconcile(pins, view.as_ref(), |d| {
        store::unblock_specs(d, target, scope, scoping, ports)
    })?;
    for spec in ports {
        let spec = RuleSpec { target: target.clone(), ..RuleSpec::plain(scope, *spec) };
        println!("{done} {}{scoping}", describe(&spec));
    }
    report(pins, target, &applied);
    Ok(())
}

/// Warnings of containers' labels, and, for a Docker rule with no daemon
/// running, that the rule covers the containers as they are now.
pub(super) fn report(pins: &PinDir, target: &Target, applied: &Applied) {
    for w in &applied.warnings {
        eprintln!("dockblock-agent: warning: container {}: label {}: {}", w.container, w.label, w.why);
    }
    if target.is_plain() || daemon_running(pins) {
        return;
    }
    let what = match &target.selector {
        Selector::Container { name } => name.clone(),
        _ => target.to_string(),
    };
    println!("note: no daemon runs: {what} is covered as it is now; run `dockblock-agent run` to follow it");
}

fn daemon_running(pins: &PinDir) -> bool {
    DaemonStatus::read(pins).is_ok_and(|(status, _)| status.running)
}
