use dockblock_agent::{
    lock::PinLock,
    paths::PinDir,
    ports::PortSpec,
    require_root,
    rules::{Scope, Verb},
    store::RuleStore,
    Result,
};

use super::PortArgs;

/// `block` and `unblock`: every spec is validated, and the whole change
/// planned, before anything is written; all under the pin folder lock.
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
    let changed = store.change(verb, scope, &specs)?;
    for (spec, changed) in specs.iter().zip(changed) {
        match (verb, changed) {
            (Verb::Block, true) => println!("blocked {scope} {spec}"),
            (Verb::Block, false) => println!("already blocked: {scope} {spec}"),
            (Verb::Unblock, _) => println!("unblocked {scope} {spec}"),
        }
    }
    Ok(())
}
