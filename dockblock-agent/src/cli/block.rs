use dockblock_agent::{
    paths::PinDir,
    rulefile::parse_net,
    rules::{RuleOptions, RuleSpec},
    target::{Action, Selector, Target},
    Error, Result,
};

use super::{targeted, BlockArgs};

/// Every spec, address and selector is validated, and the whole change
/// planned, before anything is written; all under the pin folder lock.
pub fn run(pins: &PinDir, args: BlockArgs) -> Result<()> {
    let (selector, scope, ports) = args.ports.resolve()?;
    if args.from_containers && selector == Selector::Ports {
        return Err(Error::BadSelector {
            what: "--from-containers needs --container, --label or --compose-project: plain port rules \
                   are judged where clients' packets arrive (uplink, bridge), not between containers"
                .into(),
        });
    }
    let allow = args.allow_from.iter().map(|v| parse_net(v)).collect::<Result<Vec<_>>>()?;
    let scoping = args.ports.scoping(true)?;
    let options = RuleOptions::new(allow, args.dry_run, args.log)
        .with_from_containers(args.from_containers)
        .with_scoping(scoping);
    let target = Target { selector, action: Action::Block };
    let specs = targeted::specs(scope, &ports, &options, &target);
    super::config::check_failsafe(&specs, args.force)?;
    targeted::add(pins, &target, &specs, "blocked", "already blocked:")
}

/// "dialed 3306/tcp" for a plain rule, "80/tcp for container db" else.
pub fn describe(spec: &RuleSpec) -> String {
    // The verb already says whether it blocks or allows.
    let target = Target { action: Action::Block, ..spec.target.clone() };
    match spec.target.is_plain() {
        true => format!("{} {}", spec.scope, spec.ports),
        false if spec.ports == dockblock_agent::ports::PortSpec::EVERY => {
            format!("every port for {target}")
        }
        false => format!("{} for {target}", spec.ports),
    }
}
