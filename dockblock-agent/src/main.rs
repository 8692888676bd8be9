//! The `dockblock-agent` binary: parse, run, print one error line, exit.

mod cli;

use clap::Parser;
use dockblock_agent::exit_code::ExitCode;

fn main() -> std::process::ExitCode {
    // Die quietly on a closed pipe (`dockblock-agent list | head`) as other
    // Unix tools do, instead of panicking on the next print.
    // SAFETY: resetting a signal disposition before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            let code = if err.use_stderr() { ExitCode::Usage } else { ExitCode::Ok };
            return code.into();
        }
    };
    match cli::run(cli) {
        Ok(()) => ExitCode::Ok.into(),
        Err(err) => {
            eprintln!("dockblock-agent: error: {}", error_chain(&err));
            err.exit_code().into()
        }
    }
}

/// The error and every cause below it that adds something, on one line.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}
