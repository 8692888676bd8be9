use dockblock_agent::{
    lock::PinLock, paths::PinDir, ports::PortSpec, require_root, rules::Scope, store::RuleStore,
    Result,
};

use super::PortArgs;

#[derive(Clone, Copy)]
pub enum Verb {
    Block,
    Unblock,
}

/// `block` and `unblock`: every spec is validated before any is applied, and
/// all run under the pin folder lock.
pub fn run(pins: &PinDir, args: PortArgs, verb: Verb) -> Result<()> {
    let specs = args
        .ports
        .iter()
        .map(|s| PortSpec::parse(s))
        .collect::<Result<Vec<_>>>()?;
    let scope = if args.container_port {
        Scope::Container
    } else {
        Scope::Dialed
    };
    require_root()?;
    let mut store = RuleStore::open(pins)?;
    let _lock = PinLock::acquire(pins.root())?;
    for spec in specs {
        match verb {
            Verb::Block if store.block(scope, spec)? => println!("blocked {scope} {spec}"),
            Verb::Block => println!("already blocked: {scope} {spec}"),
            Verb::Unblock => {
                store.unblock(scope, spec)?;
                println!("unblocked {scope} {spec}");
            }
        }
    }
    Ok(())
}
