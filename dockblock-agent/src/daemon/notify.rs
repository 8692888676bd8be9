//! systemd readiness (`sd_notify`): `READY=1` once the kernel holds the
//! saved state and every hook is attached, before the engine is asked
//! (docker.service is ordered after us, so it waits for this); `STATUS=`
//! lines as the daemon goes; `STOPPING=1` on SIGTERM. Without
//! `NOTIFY_SOCKET` (not started by systemd) every call does nothing.

use sd_notify::NotifyState;

/// The kernel state is in force.
pub(super) fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub(super) fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

pub(super) fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

fn send(states: &[NotifyState]) {
    // Kept in the environment: later lines go to the same socket.
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!("cannot notify the service manager ({e}): {states:?}");
    }
}
