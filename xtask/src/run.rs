//! `cargo xtask run [--release] -- ARGS`: build, then become dockblock-agent.
use crate::build;
use anyhow::{Context, Result};
use std::{ffi::OsString, os::unix::process::CommandExt, process::Command};

#[derive(clap::Args)]
pub struct Options {
    /// Build and run the release profile.
    #[arg(long)]
    pub(crate) release: bool,
    /// Arguments for dockblock-agent (put them after `--`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub(crate) args: Vec<OsString>,
}

pub fn run(opts: Options) -> Result<()> {
    let agent = build::run(&build::Options { release: opts.release })?;
    println!("+ {} {}", agent.display(), show_args(&opts.args));
    // exec() replaces xtask, so signals reach the agent directly and its exit
    // status is ours. It only returns on failure.
    let err = Command::new(&agent).args(&opts.args).exec();
    Err(err).with_context(|| format!("could not exec {}", agent.display()))
}

fn show_args(args: &[OsString]) -> String {
    let args: Vec<_> = args.iter().map(|a| a.to_string_lossy()).collect();
    args.join(" ")
}
