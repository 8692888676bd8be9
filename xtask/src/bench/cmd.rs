//! Running the tools the benchmark drives (ip, iptables, nft, docker,
//! trafgen, the agent, dockblock-bench), always with a time limit, so a hung
//! tool cannot hang the run. Every command is echoed in `--verbose` runs.
use anyhow::{bail, Context, Result};
use std::{
    io::Read,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

static VERBOSE: AtomicBool = AtomicBool::new(false);

pub fn set_verbose(on: bool) {
    VERBOSE.store(on, Ordering::Relaxed);
}

/// What a finished command left behind.
pub struct Out {
    pub ok: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Default limit for a single tool call.
pub const LIMIT: Duration = Duration::from_secs(60);

fn show(args: &[&str]) -> String {
    args.join(" ")
}

/// Runs `args[0] args[1..]` with stdin from `input` (or nothing), killing it
/// after `limit`. Fails only if it could not start or was killed.
pub fn run_full(limit: Duration, args: &[&str], input: Option<&str>) -> Result<Out> {
    if VERBOSE.load(Ordering::Relaxed) {
        println!("bench: + {}", show(args));
    }
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..])
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("could not start `{}`", show(args)))?;
    if let Some(text) = input {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("piped");
        let text = text.to_string();
        // A writer thread, so a child that does not read cannot block us.
        thread::spawn(move || {
            let _ = stdin.write_all(text.as_bytes());
        });
    }
    let out = reader(child.stdout.take().expect("piped"));
    let err = reader(child.stderr.take().expect("piped"));
    let status = wait_limit(&mut child, limit);
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    match status {
        Some(status) => Ok(Out { ok: status.success(), code: status.code(), stdout, stderr }),
        None => bail!(
            "`{}` still running after {}s; killed. stderr: {}",
            show(args),
            limit.as_secs(),
            stderr.trim()
        ),
    }
}

fn reader(mut r: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// Waits for `child` up to `limit`; kills it (and returns None) after that.
pub fn wait_limit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
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

/// Runs with the default limit; fails unless it exits 0. Returns stdout.
pub fn ok(args: &[&str]) -> Result<String> {
    ok_limit(LIMIT, args)
}

pub fn ok_limit(limit: Duration, args: &[&str]) -> Result<String> {
    let out = run_full(limit, args, None)?;
    if !out.ok {
        bail!("`{}` failed (exit {:?}): {}", show(args), out.code, out.stderr.trim());
    }
    Ok(out.stdout)
}

/// `ok` with `input` on stdin (iptables-restore, nft -f -).
pub fn ok_input(args: &[&str], input: &str) -> Result<String> {
    let out = run_full(LIMIT, args, Some(input))?;
    if !out.ok {
        bail!("`{}` failed (exit {:?}): {}", show(args), out.code, out.stderr.trim());
    }
    Ok(out.stdout)
}

/// Best effort (cleanup): errors and exit codes are ignored.
pub fn quiet(args: &[&str]) {
    let _ = run_full(Duration::from_secs(30), args, None);
}

/// True if the command exits 0.
pub fn succeeds(args: &[&str]) -> bool {
    run_full(Duration::from_secs(30), args, None).is_ok_and(|o| o.ok)
}

/// `ip netns exec NS args...`
pub fn in_ns<'a>(ns: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    v
}
