//! Helpers for dockblock's end-to-end tests: throw-away network namespaces,
//! Docker containers and the agent CLI, each behind a guard that cleans up on
//! drop (also after a panic) and removes leftovers of a crashed run on creation.

pub mod agent;
pub mod datapath;
pub mod docker;
pub mod netns;
pub mod rig;

/// The frame builder, from its own crate (the agent's `explain` uses it too).
pub use dockblock_packet as packet;

use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Runs `cmd args...` with no stdin and waits at most `limit`; a command still
/// running then is killed, so a hung tool cannot hang the whole test run.
/// Never panics, so guards can call it from `drop` during unwinding.
pub fn try_run_for(limit: Duration, cmd: &str, args: &[&str]) -> Result<Output, String> {
    let child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {cmd}: {e}"))?;
    let pid = child.id() as libc::pid_t;
    // Collect output on a thread so a full pipe cannot stall the child.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    let timed_out = |out| format!("{cmd} {args:?} still running after {limit:?}: {out}");
    match rx.recv_timeout(limit) {
        Ok(out) => out.map_err(|e| e.to_string()),
        Err(_) => {
            // SAFETY: pid is our own child, not yet reaped (the thread still waits).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            match rx.recv() {
                Ok(Ok(out)) => Err(timed_out(describe(&out))),
                _ => Err(timed_out(String::new())),
            }
        }
    }
}

/// Cleanup helper: best effort, 30 s limit, errors ignored.
pub fn quiet(cmd: &str, args: &[&str]) {
    let _ = try_run_for(Duration::from_secs(30), cmd, args);
}

/// `try_run_for` that panics if the command could not run to its end.
pub fn run_for(limit: Duration, cmd: &str, args: &[&str]) -> Output {
    try_run_for(limit, cmd, args).unwrap_or_else(|e| panic!("{e}"))
}

/// `run_for` with a 30 s limit, enough for any single tool call in these tests.
pub fn run(cmd: &str, args: &[&str]) -> Output {
    run_for(Duration::from_secs(30), cmd, args)
}

/// Like `run`, but panics unless the command exits 0; returns stdout.
pub fn run_ok(cmd: &str, args: &[&str]) -> String {
    let out = run(cmd, args);
    assert!(out.status.success(), "{cmd} {args:?} failed: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
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
