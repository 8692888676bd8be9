//! `confirm` (keeps what `apply --confirm` made live) and the hidden
//! `revert-pending TOKEN`, the detached reverter `apply --confirm` starts.

use dockblock_agent::{
    exit_code::ExitCode,
    paths::PinDir,
    require_root,
    saved::{self, Reverted},
    Result,
};

pub fn run(pins: &PinDir) -> Result<ExitCode> {
    require_root()?;
    match saved::confirm(pins)? {
        None => {
            eprintln!(
                "dockblock-agent: nothing to confirm: no `apply --confirm` waits for {}",
                pins.root().display()
            );
            Ok(ExitCode::Failure)
        }
        Some(Ok(p)) => {
            println!(
                "confirmed {}: it stays (the revert due at {} is cancelled)",
                p.applied,
                saved::utc(p.deadline)
            );
            Ok(ExitCode::Ok)
        }
        Some(Err(done)) => {
            let what = match done {
                Reverted::Done { applied, .. } => {
                    format!("the rule set from before `apply {applied}` is back")
                }
                _ => "the rule set from before is back".into(),
            };
            eprintln!("dockblock-agent: too late to confirm: the deadline passed; {what}");
            Ok(ExitCode::Failure)
        }
    }
}

/// The reverter: waits for the deadline, then puts the previous set back
/// unless `confirm` (or a newer `apply --confirm`) came first.
pub fn revert(pins: &PinDir, token: &str) -> Result<ExitCode> {
    require_root()?;
    match saved::wait_and_revert(pins, token)? {
        Reverted::Done { summary, applied } => tracing::warn!(
            added = summary.added,
            removed = summary.removed,
            "apply {applied} was not confirmed: the rule set from before is back"
        ),
        other => tracing::info!("nothing to revert: {other:?}"),
    }
    Ok(ExitCode::Ok)
}
