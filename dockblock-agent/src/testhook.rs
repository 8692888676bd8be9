//! Test hook for crash tests, compiled into every build and inert unless
//! `DOCKBLOCK_TEST_KILL_AFTER=N` is set: the process then SIGKILLs itself
//! right after its N-th state change (a map write, a pin or unpin, a journal
//! write). The fault tests run a command with N = 1, 2, ... until it
//! completes, and check after each kill that the old or the new state is in
//! force. `DOCKBLOCK_TEST_PAUSE_AFTER=N:MS` sleeps MS milliseconds after the
//! N-th change instead, so a test can start a racing command while this one
//! holds the lock. Not an interface for anything but tests.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    OnceLock,
};

/// The environment variable that arms the hook.
pub const KILL_AFTER_ENV: &str = "DOCKBLOCK_TEST_KILL_AFTER";
/// `N:MS`: pause MS milliseconds after the N-th change.
pub const PAUSE_AFTER_ENV: &str = "DOCKBLOCK_TEST_PAUSE_AFTER";

static STEPS: AtomicU64 = AtomicU64::new(0);

fn kill_after() -> Option<u64> {
    static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
    *LIMIT.get_or_init(|| std::env::var(KILL_AFTER_ENV).ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0))
}

fn pause_after() -> Option<(u64, u64)> {
    static PAUSE: OnceLock<Option<(u64, u64)>> = OnceLock::new();
    *PAUSE.get_or_init(|| {
        let value = std::env::var(PAUSE_AFTER_ENV).ok()?;
        let (n, ms) = value.split_once(':')?;
        Some((n.parse().ok()?, ms.parse().ok()?))
    })
}

/// Marks one state change done; with the hook armed, the N-th call kills the
/// process (no destructors, no unwinding: what a `kill -9` does).
pub fn step() {
    let (kill, pause) = (kill_after(), pause_after());
    if kill.is_none() && pause.is_none() {
        return;
    }
    let n = STEPS.fetch_add(1, Ordering::Relaxed) + 1;
    if kill == Some(n) {
        // SAFETY: signalling ourselves has no memory-safety preconditions.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    if let Some((_, ms)) = pause.filter(|(at, _)| *at == n) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}
