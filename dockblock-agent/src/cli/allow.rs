use dockblock_agent::{
    paths::PinDir,
    rulefile::parse_net,
    rules::RuleOptions,
    target::{Action, Target},
    Error, Result,
};

use super::{targeted, AllowArgs};

/// An Allow rule opens what the published-ports policy closes, for every
/// source or only `--from`; `--remove` takes it away again.
pub fn run(pins: &PinDir, args: AllowArgs) -> Result<()> {
    let (selector, scope, ports) = args.ports.resolve()?;
    let from = args.from.iter().map(|v| parse_net(v)).collect::<Result<Vec<_>>>()?;
    if !args.ports.on.is_empty() || !args.ports.to.is_empty() {
        // An allow opens what the published-ports policy closes; the
        // datapath's scoped entries only close, so a scoped allow would
        // have to be the policy's block on every other interface and
        // address. Refused rather than approximated.
        return Err(Error::BadArgument {
            what: "--on/--to",
            value: String::new(),
            why: "an allow rule is not scoped; scope the blocks instead (`block --on`, `block --to`)".into(),
        });
    }
    let target = Target { selector, action: Action::Allow };
    let options = RuleOptions::new(from, false, false);
    if args.remove {
        return targeted::remove(pins, &target, scope, &Default::default(), &ports, "removed allow");
    }
    let specs = targeted::specs(scope, &ports, &options, &target);
    targeted::add(pins, &target, &specs, "allowed", "already allowed:")
}
