//! The `dockblock-agent` binary: parse, run, print one error line, exit.

mod cli;

use clap::Parser;
use dockblock_agent::{config::LogFormat, exit_code::ExitCode};

fn main() -> std::process::ExitCode {
    // Die quietly on a closed pipe (`dockblock-agent list | head`) as other
    // Unix tools do, instead of panicking on the next print.
    // SAFETY: resetting a signal disposition before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            let code = if err.use_stderr() { ExitCode::Usage } else { ExitCode::Ok };
            return code.into();
        }
    };
    // The config first: it may choose the log format. A bad file is one
    // error line and exit 2, before anything runs.
    let loaded = cli.load_config();
    init_tracing(&LogConfig { default_level: cli.default_log_level(), format: cli.log_format() });
    match loaded.and_then(|()| cli::run(cli)) {
        Ok(code) => code.into(),
        Err(err) => {
            eprintln!("dockblock-agent: error: {}", error_chain(&err));
            err.exit_code().into()
        }
    }
}

/// How logs are written: `--log-format`, else the config's `log_format`
/// (JSON lines for journald/Loki); `RUST_LOG` overrides the level.
struct LogConfig {
    default_level: &'static str,
    format: LogFormat,
}

/// One subscriber for `tracing` events and `log` records (through
/// tracing-log), to stderr: stdout is the commands' output.
fn init_tracing(config: &LogConfig) {
    use tracing_subscriber::{fmt, EnvFilter};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(config.default_level));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
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
