//! One test kit for dockblock's integration tests and its benchmark:
//!
//! - [`cmd`]: the command runner (every tool call has a time limit);
//! - [`netns`]: an "outside" host in a network namespace on a veth pair,
//!   plus background servers and captures;
//! - [`docker`]: the busybox image (imported, nothing can be pulled here),
//!   Docker networks and containers;
//! - [`agent`]: the agent CLI as a subprocess with its own pin folder;
//! - [`daemon`]: the daemon (`run`) as a subprocess, stopped on drop;
//! - [`packet`]: the frame builder (its own crate, re-exported).
//!
//! Every guard cleans up on drop (also after a panic) and removes what a
//! crashed run left before it creates anything. Constructors that return
//! [`Error`] serve the benchmark, which records a failed part and goes on;
//! the panicking forms below and in the modules serve the tests.

pub mod agent;
pub mod cmd;
pub mod daemon;
pub mod docker;
pub mod netns;

pub use cmd::{describe, is_root, Error};
/// The frame builder, from its own crate (the agent's `explain` uses it too).
pub use dockblock_packet as packet;

use std::process::Output;
use std::time::Duration;

/// Runs `cmd args...` with no stdin and waits at most `limit`; a command still
/// running then is killed, so a hung tool cannot hang the whole test run.
/// Never panics, so guards can call it from `drop` during unwinding.
pub fn try_run_for(limit: Duration, cmd: &str, args: &[&str]) -> Result<Output, String> {
    cmd::output(limit, &argv(cmd, args), None).map_err(|e| e.to_string())
}

/// Cleanup helper: best effort, 30 s limit, errors ignored.
pub fn quiet(cmd: &str, args: &[&str]) {
    cmd::ignore(&argv(cmd, args));
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

fn argv<'a>(cmd: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut v = Vec::with_capacity(args.len() + 1);
    v.push(cmd);
    v.extend_from_slice(args);
    v
}
