//! `completions SHELL` and the hidden `man`: generated from the clap
//! definitions, so they never lag behind the verbs and flags.

use clap::CommandFactory as _;
use clap_complete::Shell;
use dockblock_agent::{Error, Result};

use super::Cli;

/// The completion script for `shell`, on stdout.
pub fn completions(shell: Shell) -> Result<()> {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "dockblock-agent", &mut std::io::stdout());
    Ok(())
}

/// The man page (roff), on stdout: `dockblock-agent man > dockblock-agent.1`.
/// One page: the synopsis and options of the top level, then a section per
/// verb with its own options.
pub fn man() -> Result<()> {
    let cmd = Cli::command();
    let mut out = Vec::new();
    let page = clap_mangen::Man::new(cmd.clone());
    page.render_title(&mut out).map_err(write_error)?;
    page.render_name_section(&mut out).map_err(write_error)?;
    page.render_synopsis_section(&mut out).map_err(write_error)?;
    page.render_description_section(&mut out).map_err(write_error)?;
    page.render_options_section(&mut out).map_err(write_error)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = sub.get_name().to_string();
        let sub = sub.clone().bin_name(format!("dockblock-agent {name}"));
        let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
        out.extend_from_slice(
            format!(".SH \"{}\"\n", roff_escape(&format!("dockblock-agent {name}"))).as_bytes(),
        );
        out.extend_from_slice(format!("{}\n", roff_escape(&about)).as_bytes());
        // The verb's synopsis and options as subsections of its section.
        let sub_page = clap_mangen::Man::new(sub);
        let mut part = Vec::new();
        sub_page.render_synopsis_section(&mut part).map_err(write_error)?;
        sub_page.render_options_section(&mut part).map_err(write_error)?;
        let part = String::from_utf8_lossy(&part)
            .replace(".SH SYNOPSIS", ".SS Synopsis")
            .replace(".SH OPTIONS", ".SS Options");
        out.extend_from_slice(part.as_bytes());
    }
    page.render_version_section(&mut out).map_err(write_error)?;
    use std::io::Write as _;
    std::io::stdout().write_all(&out).map_err(write_error)?;
    Ok(())
}

/// Leading dots and quotes would be roff requests; backslashes escapes.
fn roff_escape(text: &str) -> String {
    let text = text.replace('\\', "\\e").replace('"', "\\(dq");
    match text.strip_prefix('.') {
        Some(rest) => format!("\\&.{rest}"),
        None => text,
    }
}

fn write_error(e: std::io::Error) -> Error {
    Error::io("write", "standard output", e)
}
