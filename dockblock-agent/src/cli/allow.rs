use dockblock_agent::{
    paths::PinDir,
    rulefile::parse_net,
    rules::RuleOptions,
    target::{Action, Target},
    Result,
};

use super::{targeted, AllowArgs};

/// An Allow rule opens what the published-ports policy closes, for every
/// source or only `--from`; `--remove` takes it away again.
pub fn run(pins: &PinDir, args: AllowArgs) -> Result<()> {
    let (selector, scope, ports) = args.ports.resolve()?;
    let from = args.from.iter().map(|v| parse_net(v)).collect::<Result<Vec<_>>>()?;
    let target = Target { selector, action: Action::Allow };
    let options = RuleOptions::new(from, false, false);
    if args.remove {
        return targeted::remove(pins, &target, scope, &ports, "removed allow");
    }
    let specs = targeted::specs(scope, &ports, &options, &target);
    targeted::add(pins, &target, &specs, "allowed", "already allowed:")
}
