use dockblock_agent::{
    paths::PinDir,
    target::{Action, Target},
    Result,
};

use super::{targeted, PortArgs};

/// Opens the ports among the rules of the selector given (none: plain
/// rules); `NotBlocked` when no such rule covers one of them.
pub fn run(pins: &PinDir, args: PortArgs) -> Result<()> {
    let (selector, scope, ports) = args.resolve()?;
    let scoping = args.scoping(false)?;
    let target = Target { selector, action: Action::Block };
    targeted::remove(pins, &target, scope, &scoping, &ports, "unblocked")
}
