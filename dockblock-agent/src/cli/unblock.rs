use dockblock_agent::{
    paths::PinDir,
    reconcile::reconcile,
    require_root,
    rules::RuleSpec,
    store,
    target::{Action, Target},
    Result,
};

use super::{block::describe, targeted, PortArgs};

/// Opens the ports among the rules of the selector given (none: plain
/// rules); `NotBlocked` when no such rule covers one of them.
pub fn run(pins: &PinDir, args: PortArgs) -> Result<()> {
    let (selector, scope, ports) = args.resolve()?;
    let target = Target { selector, action: Action::Block };
    require_root()?;
    let view = targeted::view(&target)?;
    let applied = reconcile(pins, view.as_ref(), |d| store::unblock_specs(d, &target, scope, &ports))?;
    for spec in ports {
        let spec = RuleSpec { target: target.clone(), ..RuleSpec::plain(scope, spec) };
        println!("unblocked {}", describe(&spec));
    }
    targeted::report(pins, &target, &applied);
    Ok(())
}
