use dockblock_agent::{
    paths::PinDir,
    require_root,
    rulefile::parse_net,
    rules::{RuleOptions, RuleSpec},
    teardown, Result,
};

use super::BlockArgs;

/// Every spec and address is validated, and the whole change planned,
/// before anything is written; all under the pin folder lock.
pub fn run(pins: &PinDir, args: BlockArgs) -> Result<()> {
    let (scope, ports) = args.ports.parse()?;
    let allow = args.allow_from.iter().map(|v| parse_net(v)).collect::<Result<Vec<_>>>()?;
    let options = RuleOptions::new(allow, args.dry_run, args.log);
    let specs: Vec<RuleSpec> =
        ports.iter().map(|p| RuleSpec { options: options.clone(), ..RuleSpec::plain(scope, *p) }).collect();
    require_root()?;
    let (_lock, mut store) = teardown::begin_change(pins)?;
    for (spec, changed) in specs.iter().zip(store.block(&specs)?) {
        let what = if changed { "blocked" } else { "already blocked:" };
        println!("{what} {} {}{}", spec.scope, spec.ports, super::output::describe_options(&spec.options));
    }
    Ok(())
}
