use std::{io::Read, os::unix::process::CommandExt as _, process::Stdio, time::Duration};

use dockblock_agent::{
    exit_code::ExitCode,
    paths::PinDir,
    reconcile::{self, EngineView},
    require_root, rulefile,
    rules::RuleSpec,
    saved,
    store::{self, ReplaceSummary},
    target::{Selector, Target},
    Error, Result,
};

use super::{targeted, ApplyArgs};

/// Reads and checks the whole file before touching anything (at most
/// `rulefile::MAX_BYTES`); then makes it the user rule set through
/// `reconcile`, with the engine's view when it answers (as the verbs do),
/// in one generation switch. `--confirm`: the set before is kept, and
/// comes back at the deadline unless `confirm` runs.
pub fn run(pins: &PinDir, args: ApplyArgs) -> Result<ExitCode> {
    let file = args.file.as_str();
    let name = if file == "-" { "<stdin>" } else { file };
    let text = if file == "-" {
        read_bounded(std::io::stdin().lock(), name)?
    } else {
        let f = std::fs::File::open(file).map_err(|e| Error::io("read", file, e))?;
        read_bounded(f, name)?
    };
    let entries = rulefile::parse_entries(name, &text)?;
    let specs: Vec<RuleSpec> = entries.iter().map(|e| e.spec.clone()).collect();
    let confirm = args.confirm.as_deref().map(saved::parse_duration).transpose()?;
    require_root()?;
    let view = view(&specs)?;
    warn_unknown(&specs, view.as_ref());
    let mut summary = ReplaceSummary::default();
    let deadline = confirm.map(|d| saved::now_secs() + d.as_secs());
    let token = format!("{}-{}", std::process::id(), saved::now_secs());
    let mut written = None;
    let result = reconcile::reconcile(pins, view.as_ref(), |draft| {
        super::config::check_failsafe_file(name, &entries, &draft.rules)?;
        match deadline {
            None => store::replace_specs(draft, &specs, &mut summary),
            Some(at) => {
                saved::begin_confirm(pins, draft, &specs, (at, &token, name), &mut summary, &mut written)
            }
        }
    });
    let applied = match result {
        Ok(a) => a,
        Err(e) => {
            if let Some(before) = written {
                saved::undo_pending(pins, before);
            }
            return Err(e);
        }
    };
    let changed = summary.added + summary.removed > 0;
    if changed {
        println!(
            "applied {name}: {} rules ({} added, {} removed, {} unchanged)",
            specs.len(),
            summary.added,
            summary.removed,
            summary.kept
        );
    } else {
        println!("unchanged: {name} is the rule set already ({} rules): 0 added, 0 removed", specs.len());
    }
    for w in &applied.warnings {
        eprintln!("dockblock-agent: warning: container {}: label {}: {}", w.container, w.label, w.why);
    }
    if let (Some(wait), Some(at)) = (confirm, deadline) {
        spawn_reverter(pins, &token)?;
        println!(
            "run `dockblock-agent confirm` within {}: at {} the rule set from before comes back",
            shown(wait),
            saved::utc(at)
        );
    }
    Ok(if changed && args.detailed_exitcode { ExitCode::Changed } else { ExitCode::Ok })
}

/// The engine's view, as a verb about the file's rules gets it: needed
/// when one names containers (no engine: nothing changes), used when it
/// answers otherwise.
fn view(specs: &[RuleSpec]) -> Result<Option<EngineView>> {
    let docker = specs.iter().find(|s| !s.target.is_plain());
    targeted::view(docker.map_or(&Target::default(), |s| &s.target))
}

/// A `container = NAME` the engine does not know: the rule waits for it
/// (a file may name containers not created yet), but a typo shows.
fn warn_unknown(specs: &[RuleSpec], view: Option<&EngineView>) {
    let Some(view) = view else { return };
    for spec in specs {
        if let Selector::Container { name } = &spec.target.selector {
            if !view.snapshot.containers.iter().any(|c| c.name == *name) {
                eprintln!(
                    "dockblock-agent: warning: no container named `{name}` yet (`docker ps -a`); its rule \
                     covers it once it exists"
                );
            }
        }
    }
}

/// The reverter: this binary again, in a session of its own (setsid) with
/// no terminal and stdio away from the caller's, so killing the shell or
/// the process group that ran `apply` leaves it running; it logs to
/// `<pending file>.log`.
fn spawn_reverter(pins: &PinDir, token: &str) -> Result<()> {
    let exe = std::env::current_exe().map_err(|e| Error::io("find", "/proc/self/exe", e))?;
    let pending = pins.pending_file().expect("begin_confirm checked the state dir");
    let state_dir = pending.parent().expect("a file in the state dir");
    let log_path = pending.with_extension("log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| Error::io("open", &log_path, e))?;
    let mut cmd = std::process::Command::new(&exe);
    cmd.arg("--pin-dir").arg(pins.root()).arg("--state-dir").arg(state_dir);
    // An empty config: a file edited meanwhile cannot keep the revert from running.
    cmd.env("DOCKBLOCK_CONFIG", "/dev/null").env("NO_COLOR", "1");
    cmd.args(["revert-pending", token]);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
    // SAFETY: setsid is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| Error::io("start the reverter", &exe, e))?;
    Ok(())
}

fn shown(d: Duration) -> String {
    match d.as_secs() {
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The whole input as text, refusing it past the size limit without reading
/// further (`apply /dev/zero` stops at the limit).
fn read_bounded(input: impl Read, name: &str) -> Result<String> {
    let mut bytes = Vec::new();
    input
        .take(rulefile::MAX_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("read", name, e))?;
    rulefile::check_size(name, bytes.len())?;
    String::from_utf8(bytes).map_err(|_| Error::RulesFile {
        path: name.to_string(),
        line: 1,
        why: "not UTF-8 text".into(),
    })
}
