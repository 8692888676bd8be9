//! The one command runner: every tool the tests and the benchmark drive (ip,
//! docker, nft, iptables, trafgen, the agent) runs through [`output`], with
//! a time limit, so a hung tool cannot hang a run. Functions here take the
//! whole command line (`argv[0]` is the program) and return errors; the
//! panicking forms the tests use (`run_ok("ip", &[..])`) are at the crate
//! root and call these.

use std::{
    io::Write,
    path::Path,
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

/// Default limit for one tool call in the benchmark.
pub const LIMIT: Duration = Duration::from_secs(60);

/// How long a killed command's output is waited for: a grandchild that
/// inherited its pipes may keep them open.
const DRAIN: Duration = Duration::from_secs(5);

static VERBOSE: AtomicBool = AtomicBool::new(false);

/// Echo every command line before it runs (`dockblock-bench run --verbose`).
pub fn set_verbose(on: bool) {
    VERBOSE.store(on, Ordering::Relaxed);
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The program could not be started (not installed, not executable).
    #[error("cannot start `{cmd}`: {source}")]
    Start {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    /// The command was still running at its limit and was killed.
    #[error("`{cmd}` still running after {limit:?}; killed: {output}")]
    TimedOut { cmd: String, limit: Duration, output: String },
    /// The command ran to its end and exited non-zero.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Failed { cmd: String, status: ExitStatus, stderr: String },
    /// A command succeeded but what it left is not what the guard needs
    /// (no address, no pid, unreadable output).
    #[error("{0}")]
    Unexpected(String),
}

/// `argv` as a shell would show it, for messages.
pub fn show(argv: &[&str]) -> String {
    argv.join(" ")
}

/// Runs `argv` with `input` on stdin (or no stdin), capturing stdout and
/// stderr, and kills it after `limit`. Fails only if it could not start or
/// was killed: the exit status is the caller's to judge. Never panics, so
/// guards can call it from `drop` during unwinding.
pub fn output(limit: Duration, argv: &[&str], input: Option<&str>) -> Result<Output, Error> {
    output_env(limit, argv, input, &[])
}

/// `output` with `env` added to the inherited environment.
pub fn output_env(
    limit: Duration,
    argv: &[&str],
    input: Option<&str>,
    env: &[(&str, &Path)],
) -> Result<Output, Error> {
    let Some((prog, args)) = argv.split_first() else {
        return Err(Error::Unexpected("empty command line".into()));
    };
    if VERBOSE.load(Ordering::Relaxed) {
        println!("+ {}", show(argv));
    }
    let mut child = Command::new(prog)
        .args(args)
        .envs(env.iter().copied())
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Start { cmd: show(argv), source })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        // A writer thread, so a child that does not read cannot block us; a
        // child that exits early is reported by its status.
        let text = text.to_string();
        thread::spawn(move || {
            let _ = stdin.write_all(text.as_bytes());
        });
    }
    let pid = child.id() as libc::pid_t;
    // Collect output on a thread so a full pipe cannot stall the child.
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(limit) {
        Ok(out) => out.map_err(|source| Error::Start { cmd: show(argv), source }),
        Err(_) => {
            // SAFETY: pid is our own child, not yet reaped (the thread still waits).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let output = match rx.recv_timeout(DRAIN) {
                Ok(Ok(out)) => describe(&out),
                _ => String::new(),
            };
            Err(Error::TimedOut { cmd: show(argv), limit, output })
        }
    }
}

/// `output` that also fails unless the command exits 0; returns stdout.
pub fn checked(limit: Duration, argv: &[&str], input: Option<&str>) -> Result<String, Error> {
    let out = output(limit, argv, input)?;
    if !out.status.success() {
        let stderr = shortened(String::from_utf8_lossy(&out.stderr).trim());
        return Err(Error::Failed { cmd: show(argv), status: out.status, stderr });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `text` with its middle cut out beyond 2,000 characters: a verifier log
/// runs to megabytes, and its start and end say what went wrong.
pub fn shortened(text: &str) -> String {
    const KEEP: usize = 1000;
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= 2 * KEEP {
        return text.to_string();
    }
    let head: String = chars[..KEEP].iter().collect();
    let tail: String = chars[chars.len() - KEEP..].iter().collect();
    format!("{head} [... {} characters ...] {tail}", chars.len() - 2 * KEEP)
}

/// `checked` with the default limit and no input.
pub fn ok(argv: &[&str]) -> Result<String, Error> {
    checked(LIMIT, argv, None)
}

/// `checked` with `limit` and no input.
pub fn ok_within(limit: Duration, argv: &[&str]) -> Result<String, Error> {
    checked(limit, argv, None)
}

/// `checked` with `input` on stdin (iptables-restore, nft -f -).
pub fn ok_input(argv: &[&str], input: &str) -> Result<String, Error> {
    checked(LIMIT, argv, Some(input))
}

/// True if the command exits 0 within 30 s.
pub fn succeeds(argv: &[&str]) -> bool {
    output(Duration::from_secs(30), argv, None).is_ok_and(|o| o.status.success())
}

/// Best effort (cleanup): 30 s limit, errors and exit codes ignored.
pub fn ignore(argv: &[&str]) {
    let _ = output(Duration::from_secs(30), argv, None);
}

/// `ip netns exec NS argv...`
pub fn in_ns<'a>(ns: &'a str, argv: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(argv);
    v
}

/// Waits for a child started elsewhere (a background generator) up to
/// `limit`; kills it and returns None after that.
pub fn wait_limit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// Exit status, stdout and stderr in one line, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "{}; stdout: {:?}; stderr: {:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn runs_checks_and_bounds_commands() {
        assert_eq!(super::ok(&["echo", "hi"]).unwrap(), "hi\n");
        assert_eq!(super::ok_input(&["cat"], "in").unwrap(), "in");
        let failed = super::ok(&["sh", "-c", "echo oops >&2; exit 3"]).unwrap_err().to_string();
        assert!(failed.contains("exit status: 3") && failed.contains("oops"), "{failed}");
        let slow = super::ok_within(Duration::from_millis(200), &["sleep", "5"]).unwrap_err();
        assert!(matches!(slow, super::Error::TimedOut { .. }), "{slow}");
        assert!(matches!(super::ok(&["/nonexistent/tool"]), Err(super::Error::Start { .. })));
    }

    #[test]
    fn shortens_long_output_in_the_middle() {
        let long = format!("{}{}", "a".repeat(1500), "b".repeat(1500));
        let s = super::shortened(&long);
        assert!(s.starts_with(&"a".repeat(1000)) && s.ends_with(&"b".repeat(1000)), "{s}");
        assert!(s.contains("[... 1000 characters ...]"));
        assert_eq!(super::shortened("short"), "short");
    }
}
