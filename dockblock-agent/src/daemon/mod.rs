//! `dockblock-agent run`: the loop that follows the engine and the links
//! and takes the kernel to what the catalog and the engine's state ask for,
//! through the same `reconcile` the CLI verbs call. What it leaves in the
//! kernel keeps working when it stops.
//!
//! - [`hooks`]: the fast path: a veth enslaved to a Docker bridge gets its
//!   hooks in the netlink event handler (unreviewed, i.e. closed, from its
//!   first packet), never behind a reconcile;
//! - [`follow`]: the engine connection (backoff, reconnect, events);
//! - [`sync`]: one reconcile at a time, coalesced, from a refreshed snapshot;
//! - [`start`]: the saved state and the rule files in the kernel at start;
//! - [`notify`]: readiness and status for systemd;
//! - [`state`]: the state file `status` reads.

mod follow;
mod hooks;
mod kernel;
mod notify;
mod reload;
mod start;
pub mod state;
mod sync;

use std::{
    collections::BTreeSet,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use tokio::{
    signal::unix::{signal, SignalKind},
    sync::Notify,
};

use crate::{
    docker::{engine::Engine, links},
    error::{Error, Result},
    loader::{AttachRequest, Capacities, Settings, XdpModeChoice},
    paths::{PinDir, JOURNAL_DIR},
};

/// What `run` was given: `attach`'s uplink options.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub uplinks: Vec<String>,
    pub xdp_mode: XdpModeChoice,
    pub capacities: Capacities,
    pub settings: Settings,
    /// Serve Prometheus metrics here (`GET /metrics`); None: off.
    pub metrics: Option<std::net::SocketAddr>,
    /// The config file's settings (policy, failsafe, ...), and the file,
    /// read again on SIGHUP.
    pub config: crate::config::Config,
    pub config_path: Option<std::path::PathBuf>,
}

/// A full snapshot this often even without events: an audit of what the
/// events may have missed.
const AUDIT: Duration = Duration::from_secs(300);

/// Runs the daemon until SIGTERM or SIGINT; then returns `Ok` and leaves
/// rules and hooks in the kernel.
pub fn run(pins: &PinDir, opts: RunOptions) -> Result<()> {
    // glibc gives each thread that allocates an arena of its own, up to 8
    // per core, and keeps them; the daemon's threads (runtime, blocking
    // pool, one per netns lookup) do little at once, so two are enough.
    // SAFETY: mallopt only tunes the allocator; called before any thread.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::bpf("start the async runtime", e))?;
    let result = rt.block_on(main(pins.clone(), opts));
    // A reconcile in flight finishes its commit (the journal would roll it
    // forward anyway); nothing else is waited for.
    rt.shutdown_timeout(Duration::from_secs(10));
    result
}

async fn main(pins: PinDir, opts: RunOptions) -> Result<()> {
    let mut term = signal(SignalKind::terminate()).map_err(|e| Error::bpf("watch SIGTERM", e))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| Error::bpf("watch SIGINT", e))?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| Error::bpf("watch SIGHUP", e))?;
    if let (status, Some(s)) = state::DaemonStatus::read(&pins)? {
        if status.running && s.pid != state::own_pid() {
            return Err(Error::Unhealthy {
                what: format!("a daemon already runs for {} (pid {})", pins.root().display(), s.pid),
                fix: format!("kill {}", s.pid),
            });
        }
    }
    // Bound first: a busy address fails the start before anything changes.
    let metrics_listener = match opts.metrics {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| Error::io("serve metrics on", addr.to_string(), e))?,
        ),
        None => None,
    };
    // Read and checked before anything changes: a damaged state file or
    // rule file stops the start here, with nothing attached.
    let saved = crate::saved::prepare_start(&pins, &opts.config.rule_files)?;
    notify::status("loading the saved state and attaching hooks");
    let since = state::now_rfc3339();
    // The Docker bridges there are now get their programs with the uplinks'
    // (one load of the object); later ones at the sync that finds them.
    // Those the last daemon saw count from the start (a reboot: dockerd may
    // restore containers before its API answers).
    let known = start::known_bridges(&pins);
    let bridges = links::dump()
        .await?
        .into_iter()
        .filter(|l| l.kind.as_deref() == Some("bridge") && hooks::is_docker_bridge(&known, &l.name))
        .map(|l| l.name)
        .collect();
    let req = AttachRequest {
        uplinks: opts.uplinks.clone(),
        bridges,
        xdp_mode: opts.xdp_mode,
        capacities: opts.capacities,
        settings: opts.settings,
    };
    let p = pins.clone();
    let (attached, hooks) = tokio::task::spawn_blocking(move || start::start_state(&p, &req, saved))
        .await
        .expect("start panicked")?;
    for a in &attached {
        tracing::info!(interface = %a.interface, kind = a.kind.label(), replaced = a.replaced, "hook attached");
    }
    let hooks = Arc::new(kernel::Hooks::new(hooks));
    // Subscribed before the dump and the first snapshot: no veth created
    // in between is missed.
    let mut link_events = links::watch()?;
    let dump = links::dump().await?;
    let desired = reload::Desired {
        config_path: opts.config_path.clone(),
        uplinks: opts.uplinks.clone(),
        xdp_mode: opts.xdp_mode,
        policy_pending: opts.config.policy.is_some(),
        config: opts.config.clone(),
    };
    let daemon = Arc::new(Daemon::new(pins, hooks, since, desired, known));
    daemon.links_reset(dump);
    daemon.write_state();
    tracing::info!(pid = state::own_pid(), uplinks = ?opts.uplinks, "daemon started");
    // The saved rules are in the kernel and every hook there is attached
    // (veths of running containers by `links_reset`): docker may start.
    notify::ready(&format!("enforcing: {} hooks attached; connecting to the engine", attached.len()));

    if let Some(listener) = metrics_listener {
        tracing::info!(address = %listener.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()), "metrics served at /metrics");
        tokio::spawn(crate::metrics::serve(listener, daemon.pins.clone(), daemon.metrics.clone()));
    }
    tokio::spawn(follow::follow(daemon.clone()));
    tokio::spawn(watch_catalog(daemon.clone()));
    // Not spawned: the engine's snapshot and the netns reader hold futures
    // that are not Send (borrowing closures in streams). Polled here, next
    // to the link events, it never delays them: a link event is handled
    // whenever the sync waits.
    let sync = sync::sync_loop(daemon.clone());
    tokio::pin!(sync);
    use futures_util::StreamExt as _;
    loop {
        tokio::select! {
            e = &mut sync => {
                tracing::error!("{e}: exiting");
                return Err(e);
            }
            ev = link_events.next() => match ev {
                Some(ev) => daemon.on_link(ev).await,
                None => {
                    // The netlink socket failed: a new one, and a dump to
                    // catch up with what happened meanwhile.
                    tracing::warn!("netlink link events ended: subscribing again");
                    link_events = links::watch()?;
                    daemon.on_link(links::LinkEvent::Lost).await;
                }
            },
            _ = hup.recv() => reload::reload(&daemon).await,
            _ = term.recv() => { tracing::info!("SIGTERM: exiting, rules and hooks stay in the kernel"); break }
            _ = int.recv() => { tracing::info!("SIGINT: exiting, rules and hooks stay in the kernel"); break }
        }
    }
    notify::stopping("stopping: rules and hooks stay in the kernel");
    daemon.update_state(|s| s.stopped = Some(state::now_rfc3339()));
    Ok(())
}

/// What the engine asked to refresh since the last sync.
#[derive(Debug, Default)]
struct Pending {
    /// Re-read everything (start, reconnect, a network came or went, audit).
    full: bool,
    /// Containers to inspect again.
    containers: BTreeSet<String>,
}

/// State shared by the tasks. Locks are std mutexes held for short,
/// non-awaiting sections only.
struct Daemon {
    pins: PinDir,
    hooks: Mutex<hooks::Links>,
    kernel_hooks: Arc<kernel::Hooks>,
    /// Names of the Docker bridges in the last snapshot.
    bridges: Mutex<BTreeSet<String>>,
    pending: Mutex<Pending>,
    dirty: Notify,
    engine: Mutex<Option<Engine>>,
    state: Mutex<state::DaemonState>,
    /// Problems of the fast path (a veth that could not be hooked), by
    /// interface, kept until it is hooked or gone.
    hook_problems: Mutex<std::collections::BTreeMap<String, String>>,
    /// A sync runs (its own commit changes the journal folder).
    syncing: AtomicBool,
    /// What only the daemon knows, for `/metrics`.
    metrics: Arc<crate::metrics::DaemonMetrics>,
    /// The config's uplinks, failsafe ports and policy (SIGHUP reloads).
    desired: Mutex<reload::Desired>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Daemon {
    fn new(
        pins: PinDir,
        kernel_hooks: Arc<kernel::Hooks>,
        since: String,
        desired: reload::Desired,
        bridges: BTreeSet<String>,
    ) -> Daemon {
        let state = state::DaemonState {
            pid: state::own_pid(),
            since,
            last_sync: None,
            engine: "down".into(),
            problems: vec![],
            stopped: None,
        };
        Daemon {
            pins,
            hooks: Mutex::new(hooks::Links::default()),
            kernel_hooks,
            bridges: Mutex::new(bridges),
            pending: Mutex::new(Pending { full: true, ..Default::default() }),
            dirty: Notify::new(),
            engine: Mutex::new(None),
            state: Mutex::new(state),
            hook_problems: Mutex::new(Default::default()),
            syncing: AtomicBool::new(false),
            metrics: Default::default(),
            desired: Mutex::new(desired),
        }
    }

    /// Asks for a sync; calls while one runs coalesce into one more.
    fn mark_dirty(&self, full: bool) {
        if full {
            lock(&self.pending).full = true;
        }
        self.dirty.notify_one();
    }

    fn mark_container(&self, id: &str) {
        lock(&self.pending).containers.insert(id.to_string());
        self.dirty.notify_one();
    }

    fn engine(&self) -> Option<Engine> {
        lock(&self.engine).clone()
    }

    fn update_state(&self, f: impl FnOnce(&mut state::DaemonState)) {
        let mut s = lock(&self.state);
        f(&mut s);
        if let Err(e) = state::write(&self.pins, &s) {
            tracing::warn!("cannot write the daemon state file: {e}");
        }
    }

    fn write_state(&self) {
        self.update_state(|_| {});
    }
}

/// A CLI change (`block`, `apply`, ...) writes this pin folder's journal
/// (renamed into place) and removes it when done: inotify on the journal
/// folder tells, and a sync follows, so the daemon's view includes it at
/// once. Our own commits' journals are ignored while we sync; other pin
/// folders' files (their journals, other daemons' state files) never count.
async fn watch_catalog(daemon: Arc<Daemon>) {
    let mut audit = tokio::time::interval(AUDIT);
    audit.tick().await;
    let journal = daemon.pins.journal();
    let watch = match JournalWatch::new(&journal) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(
                "cannot watch {} ({e}): CLI changes are seen at the next event",
                journal.display()
            );
            None
        }
    };
    loop {
        tokio::select! {
            hit = async { match &watch { Some(w) => w.next().await, None => std::future::pending().await } } => {
                if hit && !daemon.syncing.load(Ordering::Acquire) {
                    tracing::debug!("the catalog changed (journal): sync");
                    daemon.mark_dirty(false);
                }
            }
            _ = audit.tick() => daemon.mark_dirty(true),
        }
    }
}

/// inotify on the journal's folder, for the journal's own name.
struct JournalWatch {
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
    name: Vec<u8>,
}

impl JournalWatch {
    fn new(journal: &Path) -> std::io::Result<JournalWatch> {
        use std::os::{fd::FromRawFd as _, unix::ffi::OsStrExt as _};
        let dir = journal.parent().unwrap_or(Path::new(JOURNAL_DIR));
        std::fs::create_dir_all(dir)?;
        let name = journal.file_name().map(|n| n.as_bytes().to_vec()).unwrap_or_default();
        // SAFETY: plain syscall; the fd is owned right below.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd nobody else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
        // SAFETY: valid fd and NUL-terminated path.
        if unsafe { libc::inotify_add_watch(raw, path.as_ptr(), libc::IN_MOVED_TO | libc::IN_DELETE) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: we own `fd` and it stays open (inside the AsyncFd) for as
        // long as it is registered.
        let fd = unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(std::io::Error::from)?;
        Ok(JournalWatch { fd, name })
    }

    /// Waits for the next batch of events; true when one names the journal.
    async fn next(&self) -> bool {
        use std::os::fd::AsRawFd as _;
        let Ok(mut guard) = self.fd.readable().await else { return false };
        let mut buf = [0u8; 4096];
        let mut hit = false;
        loop {
            // SAFETY: reading into a buffer we own, of its length.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                guard.clear_ready();
                return hit;
            }
            let mut at = 0;
            let header = std::mem::size_of::<libc::inotify_event>();
            while at + header <= n as usize {
                let len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().expect("4 bytes")) as usize;
                let name = &buf[at + header..(at + header + len).min(n as usize)];
                let name = name.split(|b| *b == 0).next().unwrap_or_default();
                hit |= name == self.name.as_slice();
                at += header + len;
            }
        }
    }
}
