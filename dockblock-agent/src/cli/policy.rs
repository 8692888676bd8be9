use dockblock_agent::{
    paths::PinDir,
    ports::PortSpec,
    reconcile::reconcile,
    require_root,
    rules::{Edit, Rule, RuleSpec, Scope},
    store::RuleStore,
    target::{Action, Selector, Target},
    Result,
};

use super::{targeted, PolicyArgs};

/// `deny`: the published-ports policy rule exists (every port Docker
/// publishes is closed unless an Allow rule opens it); `allow`: it does not.
pub fn run(pins: &PinDir, args: PolicyArgs) -> Result<()> {
    require_root()?;
    let Some(setting) = args.setting else {
        super::output::warn_if_interrupted(pins);
        let deny = RuleStore::open_read_only(pins)?.rules()?.iter().any(is_policy);
        println!("published {}", if deny { "deny" } else { "allow" });
        return Ok(());
    };
    let deny = setting == "deny";
    let target = Target { selector: Selector::PublishedPolicy, action: Action::Block };
    let view = targeted::view(&target)?;
    let applied = reconcile(pins, view.as_ref(), |draft| {
        let have: Vec<u32> = draft.rules.iter().filter(|r| is_policy(r)).map(|r| r.id).collect();
        match deny {
            true if have.is_empty() => draft.apply(&[Edit::Add(policy_rule())]),
            false => draft.apply(&have.into_iter().map(Edit::Remove).collect::<Vec<_>>()),
            true => Ok(()),
        }
    })?;
    println!("published {setting}");
    targeted::report(pins, &target, &applied);
    Ok(())
}

fn is_policy(rule: &Rule) -> bool {
    rule.target.selector == Selector::PublishedPolicy
}

/// The policy rule: every port, container scope.
pub fn policy_rule() -> RuleSpec {
    RuleSpec {
        target: Target { selector: Selector::PublishedPolicy, action: Action::Block },
        ..RuleSpec::plain(Scope::Container, PortSpec::EVERY)
    }
}
