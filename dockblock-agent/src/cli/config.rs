//! `config check FILE`, and the config the verbs of this process read
//! (global `--config`, `$DOCKBLOCK_CONFIG`, or the default file).

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use dockblock_agent::{
    config::{self, Config},
    ports::PortSpec,
    rulefile::Entry,
    rules::{Rule, RuleSpec},
    Result,
};

/// The config of this process and the file it came from (none: defaults).
static LOADED: OnceLock<(Config, Option<PathBuf>)> = OnceLock::new();

/// Reads the config once: `named` must exist; the default file may not.
pub fn load(named: Option<&Path>) -> Result<&'static Config> {
    if let Some((c, _)) = LOADED.get() {
        return Ok(c);
    }
    let loaded = config::load_named(named)?;
    Ok(&LOADED.get_or_init(|| loaded).0)
}

/// The loaded config (defaults before [`load`]).
pub fn current() -> &'static Config {
    &LOADED.get_or_init(|| (Config::default(), None)).0
}

pub fn path() -> Option<&'static Path> {
    LOADED.get().and_then(|(_, p)| p.as_deref())
}

/// The failsafe ports of the loaded config.
pub fn failsafe() -> Vec<PortSpec> {
    current().failsafe.clone()
}

/// Refuses a spec of `specs` that closes a failsafe port, unless `force`.
pub fn check_failsafe(specs: &[RuleSpec], force: bool) -> Result<()> {
    if force {
        return Ok(());
    }
    for spec in specs {
        if let Some(port) = config::closes_failsafe(&current().failsafe, spec) {
            return Err(config::failsafe_refusal(spec, port, path(), "`block --force`"));
        }
    }
    Ok(())
}

/// `apply`'s check of a rule file against the loaded config's failsafe
/// ports (see `config::refuse_unforced`).
pub fn check_failsafe_file(name: &str, entries: &[Entry], in_force: &[Rule]) -> Result<()> {
    config::refuse_unforced(&current().failsafe, path(), name, entries, in_force)
}

/// `config check FILE`: exit 0 and the effective settings, or `FILE:LINE: why`.
pub fn check(file: &Path) -> Result<()> {
    let c = config::load(file)?;
    println!("# {}: ok; the settings `run` starts with (command-line flags override them):", file.display());
    print!("{}", c.render());
    Ok(())
}
