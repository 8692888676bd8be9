//! Event-to-kernel latency under churn: containers with a `dockblock.block`
//! label created, started, stopped and removed one after another (a few
//! alive at a time), while `docker events` gives the engine's time of each
//! event (`timeNano`) and a thread polls the kernel every ~1 ms. For each
//! container: start event -> its veth reviewed with entries in `VETHS`, and
//! die / destroy event -> its `VETHS` entry gone. The daemon's CPU and
//! memory are measured over the same window.
use super::{kernel, usage, Kind, Run};
use crate::{parts::Ctx, world::PIN_DIR};
use anyhow::{Context, Result};
use dockblock_testkit::cmd;
use serde_json::{json, Value};
use std::{
    collections::{BTreeMap, VecDeque},
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// Containers alive at once.
const WINDOW: usize = 4;

/// `docker events` for the churn's containers, read by a thread.
struct Events {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    reader: Option<JoinHandle<()>>,
}

impl Events {
    fn start() -> Result<Events> {
        let filter = format!("label={}", super::CHURN_LABEL);
        let mut child = Command::new("docker")
            .args(["events", "--format", "{{json .}}", "--filter", "type=container", "--filter", &filter])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("start docker events")?;
        let out = child.stdout.take().context("docker events stdout")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap_or_else(|e| e.into_inner()).push(v);
                }
            }
        });
        // Let it subscribe before the first container.
        std::thread::sleep(Duration::from_millis(500));
        Ok(Events { child, lines, reader: Some(reader) })
    }

    /// Every event so far, and the reader stopped.
    fn stop(mut self) -> Vec<Value> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        std::mem::take(&mut *self.lines.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The kernel poller: a thread of its own, every ~1 ms until stopped.
struct Poller {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<kernel::Timeline>>>,
}

impl Poller {
    fn start() -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || -> Result<kernel::Timeline> {
            let tables = kernel::Tables::open(PIN_DIR)?;
            let mut tl = kernel::Timeline::default();
            while !flag.load(Ordering::SeqCst) {
                tl.poll(&tables);
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(tl)
        });
        Poller { stop, handle: Some(handle) }
    }

    fn finish(mut self) -> Result<kernel::Timeline> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().context("poller gone")?.join().map_err(|_| anyhow::anyhow!("poller panicked"))?
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// `count` containers at most, for `limit` at most.
pub fn run(ctx: &Ctx, r: &Run, count: usize, limit: Duration) -> Result<Value> {
    let events = Events::start()?;
    let poller = Poller::start();
    std::thread::sleep(Duration::from_millis(100));
    let window = usage::ProcessWindow::start(r.daemon_pid)?;
    let started = Instant::now();
    let mut alive: VecDeque<String> = VecDeque::new();
    let mut made = 0;
    let mut failures = Vec::new();
    let result = (|| -> Result<()> {
        while made < count && started.elapsed() < limit {
            ctx.check_stop()?;
            let name = format!("{}{made}", Kind::Churn.name());
            let args = super::churn_args(&name);
            let mut full = vec!["docker", "run", "-d"];
            full.extend(args.iter().map(String::as_str));
            match cmd::ok(&full) {
                Ok(_) => alive.push_back(name),
                Err(e) => {
                    failures.push(format!("{name}: {e}"));
                    dockblock_testkit::docker::remove_container(&name);
                }
            }
            made += 1;
            while alive.len() > WINDOW {
                retire(&alive.pop_front().unwrap_or_default(), &mut failures);
            }
            if made % 20 == 0 {
                ctx.log(&format!("churn: {made} containers in {:.0} s", started.elapsed().as_secs_f64()));
            }
        }
        Ok(())
    })();
    while let Some(name) = alive.pop_front() {
        retire(&name, &mut failures);
    }
    let churn_seconds = started.elapsed().as_secs_f64();
    // The last removals reach the kernel.
    std::thread::sleep(Duration::from_secs(2));
    let daemon = window.finish();
    let tl = poller.finish();
    let events = events.stop();
    result?;
    let tl = tl?;
    let daemon = daemon?;

    // id -> action -> engine time (ns).
    let mut by_id: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for e in &events {
        let (Some(id), Some(action), Some(t)) =
            (e["id"].as_str(), e["Action"].as_str(), e["timeNano"].as_u64())
        else {
            continue;
        };
        by_id.entry(id.to_string()).or_default().entry(action.to_string()).or_insert(t);
    }
    let mut samples = Vec::new();
    for (id, acts) in &by_id {
        let seen = tl.containers.get(id);
        let lat = |kernel: Option<u64>, action: &str| -> Value {
            match (kernel, acts.get(action)) {
                (Some(k), Some(e)) => json!((k as f64 - *e as f64) / 1e6),
                _ => Value::Null,
            }
        };
        samples.push(json!({
            "id": id,
            "start_to_ruled_ms": lat(seen.and_then(|s| s.ruled_ns), "start"),
            "create_to_ruled_ms": lat(seen.and_then(|s| s.ruled_ns), "create"),
            "die_to_gone_ms": lat(seen.and_then(|s| s.gone_ns), "die"),
            "destroy_to_gone_ms": lat(seen.and_then(|s| s.gone_ns), "destroy"),
            "seen_in_kernel": seen.is_some(),
        }));
    }
    ctx.log(&format!(
        "churn: {made} containers in {churn_seconds:.0} s, {} with events, {} failures; daemon {:.2}% of a core, VmHWM {:.1} MiB",
        by_id.len(),
        failures.len(),
        daemon["cpu_pct_of_one_core"].as_f64().unwrap_or(f64::NAN),
        daemon["vm_hwm_mib"].as_f64().unwrap_or(f64::NAN),
    ));
    Ok(json!({
        "containers": made,
        "alive_at_once": WINDOW,
        "seconds": churn_seconds,
        "events": events.len(),
        "failures": failures,
        "polls": tl.polls,
        "max_poll_gap_ms": tl.max_gap_ns as f64 / 1e6,
        "daemon": daemon,
        "samples": samples,
    }))
}

/// `docker stop -t 0` (the engine's stop, a SIGKILL at once: `sleep` as
/// pid 1 ignores SIGTERM), then `docker rm`.
fn retire(name: &str, failures: &mut Vec<String>) {
    for args in [["stop", "-t", "0", name].as_slice(), ["rm", name].as_slice()] {
        let mut full = vec!["docker"];
        full.extend_from_slice(args);
        if let Err(e) = cmd::ok(&full) {
            failures.push(format!("{name}: {e}"));
            dockblock_testkit::docker::remove_container(name);
            return;
        }
    }
}
