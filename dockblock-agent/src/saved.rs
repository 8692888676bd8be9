//! The saved rule set: what survives a reboot, which empties bpffs.
//!
//! ```text
//! /var/lib/dockblock/                 state dir (--state-dir, DOCKBLOCK_STATE_DIR, config state_dir)
//!   dockblock.rules.toml              the user rule set, `export` format, 0600
//!   dockblock.rules.toml.prev         the copy before the last change (the last good one)
//!   dockblock.pending.toml            the set an `apply --confirm` restores at its deadline
//! ```
//!
//! - Every commit that changes the rules writes the file (`reconcile`, under
//!   the pin folder lock, written whole: write, fsync, rename).
//! - `run` with no pins (a reboot, a full `detach`) loads the file into the
//!   kernel before it hooks anything or talks to the engine; with pins, the
//!   pins are the truth and the file is rewritten if it differs.
//! - Then the config's rule files are added in order, with `block`
//!   semantics, under what is there: an entry that overlaps a rule already
//!   there (same selector and scope, a port and protocol in common) with
//!   other options or another range is skipped with a warning. The saved
//!   state wins, then earlier files over later ones; rule files only add.
//! - A damaged file stops the start (`FILE:LINE: why`, exit 2) before
//!   anything changes, and the hint names the `.prev` copy.
//! - `apply --confirm`: the previous set goes to the pending file with its
//!   deadline; a detached reverter, the daemon or a late `confirm`,
//!   whichever comes first, puts it back at the deadline unless `confirm`
//!   ran before.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Deserialize;

use crate::{
    daemon::state::rfc3339,
    error::{Error, Result},
    lock::PinLock,
    paths::PinDir,
    private_file,
    reconcile::{self, Applied, EngineView},
    rulefile,
    rules::{self, Draft, Rule, RuleSpec},
    store::{self, CommitSummary, ReplaceSummary, RuleStore},
};

/// Default state dir.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/dockblock";
/// Environment variable that sets the state dir (as `--state-dir` does).
pub const STATE_DIR_ENV: &str = "DOCKBLOCK_STATE_DIR";

const HEADER: &str =
    "# Saved by dockblock-agent after every change; `run` loads it when the pins are gone (a reboot).\n";

/// After a commit (`reconcile`, under the lock): writes the user rule set
/// when the commit changed something. A failure is a warning: the kernel
/// has the change, only a reboot would lose it.
pub fn after_commit(pins: &PinDir, store: &RuleStore, catalog: &CommitSummary) {
    if catalog.is_empty() {
        return;
    }
    let Some(path) = pins.state_file() else { return };
    if let Err(e) = store.rules().and_then(|rules| save(&path, &rules)) {
        tracing::warn!("the rules changed in the kernel but were not saved ({e}); a reboot would lose them");
    }
}

/// Writes `rules` (the user rules of them) to `path` unless it holds them
/// already; the copy it replaces, if it parses, becomes `<path>.prev`.
/// True when it wrote.
pub fn save(path: &Path, rules: &[Rule]) -> Result<bool> {
    let text = format!("{HEADER}{}", rulefile::format(rules));
    let old = std::fs::read(path).ok();
    if old.as_deref() == Some(text.as_bytes()) {
        return Ok(false);
    }
    if let Some(old) = old.filter(|o| std::str::from_utf8(o).is_ok_and(|t| rulefile::parse("", t).is_ok())) {
        private_file::write(&prev(path), &old, "write the previous saved rule set")?;
    }
    private_file::write(path, text.as_bytes(), "write the saved rule set")?;
    Ok(true)
}

/// `<path>.prev`.
pub fn prev(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".prev");
    PathBuf::from(name)
}

/// The saved rule set at `path`; `None` when there is no file. A damaged
/// file is `RulesFile` (exit 2) with the `.prev` copy in the hint.
pub fn load(path: &Path) -> Result<Option<Vec<RuleSpec>>> {
    let text = match read_text(path) {
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        other => other?,
    };
    let hint = || {
        let prev = prev(path);
        let copy = match prev.exists() {
            true => format!("the copy before the last change is {}: check it, copy it over", prev.display()),
            false => "there is no earlier copy: fix".into(),
        };
        format!(
            " (the saved rule set is damaged: nothing was changed; {copy} {} and start again, or remove it to \
             start from the rules in the kernel, none after a reboot)",
            path.display()
        )
    };
    rulefile::parse(&path.display().to_string(), &text).map(Some).map_err(|e| match e {
        Error::RulesFile { path, line, why } => Error::RulesFile { path, line, why: why + &hint() },
        Error::RulesFileTooBig { path, why } => Error::RulesFileTooBig { path, why: why + &hint() },
        other => other,
    })
}

/// A rule file, whole, at most `rulefile::MAX_BYTES`.
fn read_text(path: &Path) -> Result<String> {
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| Error::io("read", path, e))?;
    let mut bytes = Vec::new();
    file.take(rulefile::MAX_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("read", path, e))?;
    rulefile::check_size(&name, bytes.len())?;
    String::from_utf8(bytes).map_err(|_| Error::RulesFile {
        path: name,
        line: 1,
        why: "not UTF-8 text".into(),
    })
}

/// Rule files, each parsed whole (`FILE:LINE: why` for the first bad one).
pub fn read_rule_files(files: &[PathBuf]) -> Result<Vec<(String, Vec<RuleSpec>)>> {
    files
        .iter()
        .map(|f| {
            let name = f.display().to_string();
            Ok((name.clone(), rulefile::parse(&name, &read_text(f)?)?))
        })
        .collect()
}

/// What `run` found before it changed anything: the saved set to load
/// (pins new), and the rule files.
#[derive(Debug)]
pub struct Start {
    restore: Option<Vec<RuleSpec>>,
    fresh: bool,
    files: Vec<(String, Vec<RuleSpec>)>,
}

impl Start {
    /// No pins were there (a reboot, a full `detach`): the saved set is loaded.
    pub fn fresh(&self) -> bool {
        self.fresh
    }
}

/// Reads and checks the saved state and the rule files, before `run`
/// attaches anything: a damaged file is an error and nothing has changed.
/// The file is checked even when pins exist (and win): a damaged file is
/// reported, never silently overwritten.
pub fn prepare_start(pins: &PinDir, rule_files: &[PathBuf]) -> Result<Start> {
    let fresh = !pins.is_attached();
    let saved = match pins.state_file() {
        Some(path) => load(&path)?,
        None => None,
    };
    Ok(Start { restore: saved.filter(|_| fresh), fresh, files: read_rule_files(rule_files)? })
}

/// After `run` attached (maps there, nothing hooked to containers yet):
/// new pins get the saved set, then the rule files are added, in one
/// commit; pins that were there keep their rules and the file follows
/// them. Returns what to log.
pub fn start(pins: &PinDir, start: Start) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    let restored = start.restore.as_ref().map(Vec::len);
    reconcile::reconcile_unviewed(pins, |draft| {
        if let Some(specs) = &start.restore {
            store::replace_specs(draft, specs, &mut ReplaceSummary::default())?;
        }
        add_rule_files(draft, &start.files, &mut notes)
    })?;
    match (start.fresh, restored, pins.state_file()) {
        (true, Some(n), Some(path)) => {
            notes.insert(0, format!("new pins: loaded {n} saved rules from {}", path.display()))
        }
        (true, None, Some(path)) => {
            notes.insert(0, format!("new pins: no saved rules at {}", path.display()))
        }
        (false, _, Some(path)) => {
            // The pins are the newest: the file follows them.
            let rules = RuleStore::open_read_only(pins)?.rules()?;
            if save(&path, &rules)? {
                notes.push(format!("pins kept; {} rewritten from them", path.display()));
            }
        }
        (_, _, None) => {}
    }
    Ok(notes)
}

/// The daemon's SIGHUP: the rule files (parsed whole first, with
/// [`read_rule_files`], so a bad one changes nothing) added again, as at
/// start. No engine view: the caller syncs after (`mark_dirty`).
pub fn apply_rule_files(pins: &PinDir, files: &[(String, Vec<RuleSpec>)]) -> Result<(Applied, Vec<String>)> {
    let mut notes = Vec::new();
    let applied = reconcile::reconcile_unviewed(pins, |draft| add_rule_files(draft, files, &mut notes))?;
    Ok((applied, notes))
}

/// `block` of each file's rules, in order, except over a rule already
/// there that differs (see the module comment); `notes` says what was
/// skipped.
pub fn add_rule_files(
    draft: &mut Draft,
    files: &[(String, Vec<RuleSpec>)],
    notes: &mut Vec<String>,
) -> Result<()> {
    for (name, specs) in files {
        for spec in specs {
            let edits = rules::plan_block(&draft.rules, spec);
            if edits.is_empty() {
                continue;
            }
            if let Some(r) = draft.rules.iter().find(|r| r.is_user() && conflicts(r, spec)) {
                notes.push(format!(
                    "{name}: {} {} for {} skipped: rule {} ({} {}) is there already and wins",
                    spec.scope, spec.ports, spec.target, r.id, r.scope, r.ports
                ));
                continue;
            }
            draft.apply(&edits)?;
        }
    }
    Ok(())
}

/// Same selector and scope, a port and protocol in common, and other
/// options or another range: `block` would change what is there.
fn conflicts(rule: &Rule, spec: &RuleSpec) -> bool {
    rule.target == spec.target
        && rule.scope == spec.scope
        && rule.ports.lo <= spec.ports.hi
        && spec.ports.lo <= rule.ports.hi
        && rule.ports.protos & spec.ports.protos != 0
        && (rule.options != spec.options || rule.ports.lo != spec.ports.lo || rule.ports.hi != spec.ports.hi)
}

// ---- apply --confirm ----

/// A rule set waiting to come back unless `confirm` runs.
#[derive(Clone, Debug, PartialEq)]
pub struct Pending {
    /// Seconds since the epoch.
    pub deadline: u64,
    /// Which `apply --confirm` wrote it (its reverter knows it).
    pub token: String,
    /// The file that was applied.
    pub applied: String,
    /// The rule set from before the first unconfirmed `apply --confirm`.
    pub specs: Vec<RuleSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PendingMeta {
    deadline: u64,
    #[allow(dead_code)] // for people
    deadline_utc: String,
    token: String,
    applied: String,
}

const META_KEYS: [&str; 4] = ["deadline", "deadline_utc", "token", "applied"];

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs()
}

/// The deadline as RFC 3339 (UTC).
pub fn utc(secs: u64) -> String {
    let t = rfc3339(Duration::from_secs(secs));
    t.replace(".000Z", "Z")
}

impl Pending {
    pub fn is_due(&self) -> bool {
        now_secs() >= self.deadline
    }

    fn text(&self, previous: &[Rule]) -> String {
        let q = |s: &str| toml::Value::String(s.to_string()).to_string();
        format!(
            "# dockblock: the rule set from before `apply --confirm`, restored at the deadline\n\
             # unless `dockblock-agent confirm` runs first.\n\
             deadline = {}\ndeadline_utc = {}\ntoken = {}\napplied = {}\n\n{}",
            self.deadline,
            q(&utc(self.deadline)),
            q(&self.token),
            q(&self.applied),
            rulefile::format(previous)
        )
    }
}

/// The pending rule set, if any.
pub fn read_pending(pins: &PinDir) -> Result<Option<Pending>> {
    let Some(path) = pins.pending_file() else { return Ok(None) };
    let text = match read_text(&path) {
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        other => other?,
    };
    // The meta keys come first; blanked out, the rest is a rule file with
    // its own line numbers.
    let (mut meta, mut rest) = (String::new(), Vec::new());
    let mut in_meta = true;
    for line in text.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        if in_meta && META_KEYS.contains(&key) {
            meta.push_str(line);
            meta.push('\n');
            rest.push("");
            continue;
        }
        in_meta &= line.trim().is_empty() || line.trim_start().starts_with('#');
        rest.push(line);
    }
    let name = path.display().to_string();
    let m: PendingMeta = toml::from_str(&meta).map_err(|e| Error::RulesFile {
        path: name.clone(),
        line: 1,
        why: format!("{} (remove the file to drop the pending revert)", e.message()),
    })?;
    let specs = rulefile::parse(&name, &rest.join("\n"))?;
    Ok(Some(Pending { deadline: m.deadline, token: m.token, applied: m.applied, specs }))
}

/// `apply --confirm`'s edit: remembers the rule set from before (kept
/// when one is pending already: that one is the last confirmed set), with
/// the new `deadline`, `token` and `applied` file name, then replaces the
/// user rules with `specs`. Runs under the lock, inside the commit;
/// `written` gets what was pending before, for [`undo_pending`] when the
/// commit fails.
pub fn begin_confirm(
    pins: &PinDir,
    draft: &mut Draft,
    specs: &[RuleSpec],
    (deadline, token, applied): (u64, &str, &str),
    summary: &mut ReplaceSummary,
    written: &mut Option<Option<Pending>>,
) -> Result<()> {
    let Some(path) = pins.pending_file() else { return Err(no_state_dir()) };
    let before = read_pending(pins)?;
    let previous: Vec<Rule> = match &before {
        Some(p) => as_rules(&p.specs),
        None => draft.rules.clone(),
    };
    let p = Pending { deadline, token: token.into(), applied: applied.into(), specs: vec![] };
    private_file::write(&path, p.text(&previous).as_bytes(), "write the pending rule set")?;
    *written = Some(before);
    store::replace_specs(draft, specs, summary)
}

fn as_rules(specs: &[RuleSpec]) -> Vec<Rule> {
    specs.iter().enumerate().map(|(i, s)| Rule::from_spec(i as u32 + 1, s.clone())).collect()
}

/// Puts back the pending file as it was before a failed `apply --confirm`.
pub fn undo_pending(pins: &PinDir, before: Option<Pending>) {
    let Some(path) = pins.pending_file() else { return };
    let _ = match before {
        None => std::fs::remove_file(&path).map_err(|e| Error::io("remove", &path, e)),
        Some(p) => {
            private_file::write(&path, p.text(&as_rules(&p.specs)).as_bytes(), "write the pending rule set")
        }
    };
}

fn no_state_dir() -> Error {
    Error::BadArgument {
        what: "--state-dir",
        value: String::new(),
        why: "apply --confirm keeps the previous rule set in the state dir; give one".into(),
    }
}

/// What [`revert`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reverted {
    /// The previous rule set is back.
    Done {
        summary: ReplaceSummary,
        applied: String,
    },
    /// Nothing pending (confirmed), or a newer `apply --confirm`'s.
    NotPending,
    NotDue {
        deadline: u64,
    },
}

/// At the deadline: the pending rule set replaces the user rules, and
/// the pending file goes. With `token`, only that `apply --confirm`'s.
/// `view`: `None` commits without one (Docker rules included; the daemon
/// syncs after). Checked again under the lock, so a `confirm` that came
/// first wins.
pub fn revert(pins: &PinDir, token: Option<&str>, view: Option<&EngineView>) -> Result<Reverted> {
    let mut outcome = Reverted::NotPending;
    let edit = |draft: &mut Draft| {
        let p = match read_pending(pins)? {
            Some(p) if token.is_none_or(|t| t == p.token) => p,
            _ => return Ok(()),
        };
        if !p.is_due() {
            outcome = Reverted::NotDue { deadline: p.deadline };
            return Ok(());
        }
        let mut summary = ReplaceSummary::default();
        store::replace_specs(draft, &p.specs, &mut summary)?;
        outcome = Reverted::Done { summary, applied: p.applied.clone() };
        // Removed under the lock, before the commit: a kill from here on
        // leaves the old set live (the journal rolls it forward) with no
        // pending revert, which is that set's state anyway.
        remove_pending(pins)
    };
    match view {
        Some(v) => reconcile::reconcile(pins, Some(v), edit)?,
        None => reconcile::reconcile_unviewed(pins, edit)?,
    };
    Ok(outcome)
}

fn remove_pending(pins: &PinDir) -> Result<()> {
    let Some(path) = pins.pending_file() else { return Ok(()) };
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("remove", &path, e)),
        _ => Ok(()),
    }
}

/// `confirm`: the pending revert is dropped, under the pin folder lock.
/// `Ok(None)`: nothing was pending. Past the deadline (no reverter came):
/// it reverts instead and says so.
pub fn confirm(pins: &PinDir) -> Result<Option<std::result::Result<Pending, Reverted>>> {
    let pending = {
        let _lock = PinLock::acquire(pins.root())?;
        let Some(p) = read_pending(pins)? else { return Ok(None) };
        if !p.is_due() {
            remove_pending(pins)?;
            return Ok(Some(Ok(p)));
        }
        p
    };
    let view = engine_view();
    Ok(Some(Err(revert(pins, Some(&pending.token), view.as_ref())?)))
}

/// The detached reverter: waits for the deadline of `token`'s pending set,
/// checking every second whether `confirm` (or a newer apply) made it
/// moot, then reverts with the engine's view when it answers.
pub fn wait_and_revert(pins: &PinDir, token: &str) -> Result<Reverted> {
    loop {
        let p = match read_pending(pins)? {
            Some(p) if p.token == token => p,
            _ => return Ok(Reverted::NotPending),
        };
        let left = p.deadline.saturating_sub(now_secs());
        if left == 0 {
            break;
        }
        std::thread::sleep(Duration::from_secs(left.min(1)));
    }
    let view = engine_view();
    revert(pins, Some(token), view.as_ref())
}

/// The engine's view when it answers (the reverter's, a late `confirm`'s).
fn engine_view() -> Option<EngineView> {
    let (snapshot, veths) = crate::docker::engine::view_blocking().ok().flatten()?;
    Some(EngineView { snapshot, veths, ..Default::default() })
}

/// Parses "60s", "2m", "1h30m", "90" (seconds): 1 s to 24 h.
pub fn parse_duration(value: &str) -> Result<Duration> {
    let bad = |why: &str| Error::BadArgument { what: "duration", value: value.into(), why: why.into() };
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in value.trim().chars() {
        match c {
            '0'..='9' => digits.push(c),
            's' | 'm' | 'h' => {
                let n: u64 =
                    digits.parse().map_err(|_| bad("expected a number before each unit (60s, 2m, 1h30m)"))?;
                digits.clear();
                let unit = match c {
                    's' => 1,
                    'm' => 60,
                    _ => 3600,
                };
                total = total.saturating_add(n.saturating_mul(unit));
            }
            _ => return Err(bad("expected a number with s, m or h (60s, 2m, 1h30m)")),
        }
    }
    if !digits.is_empty() {
        total = total.saturating_add(digits.parse::<u64>().map_err(|_| bad("number too large"))?);
    }
    if value.trim().is_empty() || !(1..=86_400).contains(&total) {
        return Err(bad("must be between 1s and 24h"));
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::PortSpec;
    use crate::rules::Scope;

    #[test]
    fn durations() {
        for (text, secs) in [("60s", 60), ("2m", 120), ("1h30m", 5400), ("90", 90), ("3s", 3)] {
            assert_eq!(parse_duration(text).unwrap(), Duration::from_secs(secs), "{text}");
        }
        for text in ["", "0s", "25h", "s", "1d", "-3s", "1.5m"] {
            assert!(parse_duration(text).is_err(), "{text}");
        }
    }

    #[test]
    fn pending_round_trips_with_exact_lines() {
        let dir = std::env::temp_dir().join(format!("dockblock-saved-{}", std::process::id()));
        let pins = PinDir::new("/sys/fs/bpf/x").with_state_dir(&dir);
        let rules =
            vec![Rule::from_spec(4, RuleSpec::plain(Scope::Dialed, PortSpec::parse("3306/tcp").unwrap()))];
        let p = Pending {
            deadline: 1_800_000_000,
            token: "t1".into(),
            applied: "a \"b\".toml".into(),
            specs: vec![],
        };
        private_file::write(&pins.pending_file().unwrap(), p.text(&rules).as_bytes(), "w").unwrap();
        let back = read_pending(&pins).unwrap().unwrap();
        assert_eq!(back, Pending { specs: vec![rules[0].spec()], ..p.clone() });
        private_file::write(&pins.pending_file().unwrap(), p.text(&[]).as_bytes(), "w").unwrap();
        assert_eq!(read_pending(&pins).unwrap().unwrap().specs, vec![]);
        let text = p.text(&rules).replace("3306/tcp", "0/tcp");
        let line = text.lines().position(|l| l.contains("0/tcp")).unwrap() + 1;
        private_file::write(&pins.pending_file().unwrap(), text.as_bytes(), "w").unwrap();
        let err = read_pending(&pins).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(err.contains(&format!("pending.toml:{line}: ")), "{err}");
    }

    #[test]
    fn save_keeps_the_last_good_copy() {
        let dir = std::env::temp_dir().join(format!("dockblock-saved-prev-{}", std::process::id()));
        let path = dir.join("x.rules.toml");
        let one =
            vec![Rule::from_spec(1, RuleSpec::plain(Scope::Dialed, PortSpec::parse("22/tcp").unwrap()))];
        assert!(save(&path, &one).unwrap());
        assert!(!save(&path, &one).unwrap(), "same rules: not written again");
        assert!(save(&path, &[]).unwrap());
        assert_eq!(load(&prev(&path)).unwrap().unwrap(), vec![one[0].spec()]);
        std::fs::write(&path, "[[rule]]\nports = \"22/tcp\"\nscope = \"nowhere\"\n").unwrap();
        assert!(save(&path, &one).unwrap());
        // A damaged file is not a good copy: .prev keeps the last good one.
        assert_eq!(load(&prev(&path)).unwrap().unwrap(), vec![one[0].spec()]);
        std::fs::write(&path, "[[rule]]\nports = \"22/tcp\"\nscope = \"nowhere\"\n").unwrap();
        let err = load(&path).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        let text = err.to_string();
        assert!(text.starts_with(&format!("{}:3: ", path.display())), "{text}");
        assert!(text.contains(".prev"), "{text}");
        assert_eq!(err.exit_code(), crate::exit_code::ExitCode::Usage);
    }
}
