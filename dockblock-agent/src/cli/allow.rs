use dockblock_agent::{
    paths::PinDir,
    reconcile::reconcile,
    require_root,
    rulefile::parse_net,
    rules::{RuleOptions, RuleSpec},
    store,
    target::{Action, Target},
    Result,
};

use super::{block::describe, output::describe_options, targeted, AllowArgs};

/// An Allow rule opens what the published-ports policy closes, for every
/// source or only `--from`; `--remove` takes it away again.
pub fn run(pins: &PinDir, args: AllowArgs) -> Result<()> {
    let (selector, scope, ports) = args.ports.resolve()?;
    let from = args.from.iter().map(|v| parse_net(v)).collect::<Result<Vec<_>>>()?;
    let target = Target { selector, action: Action::Allow };
    let options = RuleOptions::new(from, false, false);
    let specs: Vec<RuleSpec> = ports
        .iter()
        .map(|p| RuleSpec { options: options.clone(), target: target.clone(), ..RuleSpec::plain(scope, *p) })
        .collect();
    require_root()?;
    let view = targeted::view(&target)?;
    if args.remove {
        let applied = reconcile(pins, view.as_ref(), |d| store::unblock_specs(d, &target, scope, &ports))?;
        for spec in &specs {
            println!("removed allow {}", describe(spec));
        }
        targeted::report(pins, &target, &applied);
        return Ok(());
    }
    targeted::check_known(&target, view.as_ref())?;
    let mut changed = Vec::new();
    let applied = reconcile(pins, view.as_ref(), |d| store::block_specs(d, &specs, &mut changed))?;
    for (spec, changed) in specs.iter().zip(changed) {
        let what = if changed { "allowed" } else { "already allowed:" };
        println!("{what} {}{}", describe(spec), describe_options(&spec.options));
    }
    targeted::report(pins, &target, &applied);
    Ok(())
}
