//! Prometheus metrics: `GET /metrics` on the daemon's metrics address, in
//! the OpenMetrics text format. Every scrape reads afresh: the counters
//! from [`stats::read`] (what `stats --json` prints), links, program ids
//! and table fill from [`status::status`] (what `status --json` prints),
//! and the daemon's own values (engine connection, syncs, event lag) from
//! [`DaemonMetrics`], which the daemon's tasks update.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use crate::{error::Result, paths::PinDir, stats, status, store::RuleStore};

/// The path served; anything else is 404.
pub const PATH: &str = "/metrics";
/// The OpenMetrics text format, which Prometheus asks for and accepts.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The git commit of this build, when the build was given one
/// (`DOCKBLOCK_GIT_COMMIT=$(git rev-parse HEAD) cargo build`).
pub const GIT_COMMIT: &str = match option_env!("DOCKBLOCK_GIT_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

/// What only the daemon knows, updated by its tasks, read by each scrape.
#[derive(Debug, Default)]
pub struct DaemonMetrics {
    engine_connected: AtomicBool,
    /// Engine events received since start.
    events: AtomicU64,
    /// Syncs that matched the kernel to the engine, and those that failed.
    syncs: AtomicU64,
    sync_failures: AtomicU64,
    /// Milliseconds since the epoch of the last good sync; 0 before it.
    last_sync_ms: AtomicU64,
    /// Microseconds from the receipt of the oldest event a sync handled to
    /// the end of that sync, for the last sync that handled events.
    event_lag_us: AtomicU64,
    /// When the oldest event not yet taken by a sync arrived.
    oldest_unhandled: Mutex<Option<Instant>>,
}

impl DaemonMetrics {
    pub fn set_engine_connected(&self, connected: bool) {
        self.engine_connected.store(connected, Ordering::Relaxed);
    }

    /// An engine event arrived (it asks for a sync).
    pub fn event_received(&self) {
        self.events.fetch_add(1, Ordering::Relaxed);
        let mut oldest = self.oldest_unhandled.lock().unwrap_or_else(|p| p.into_inner());
        oldest.get_or_insert_with(Instant::now);
    }

    /// A sync starts: it takes the events received so far. Returns when
    /// the oldest of them arrived, to give to [`Self::sync_done`].
    pub fn sync_starts(&self) -> Option<Instant> {
        self.oldest_unhandled.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// A sync ended: `Some(true)` it matched the kernel to the engine,
    /// `Some(false)` it failed, `None` it did nothing (engine down);
    /// `events_since`: what [`Self::sync_starts`] returned.
    pub fn sync_done(&self, ok: Option<bool>, events_since: Option<Instant>) {
        if ok != Some(true) {
            if ok == Some(false) {
                self.sync_failures.fetch_add(1, Ordering::Relaxed);
            }
            // Not handled: the next sync handles them.
            if let Some(at) = events_since {
                let mut oldest = self.oldest_unhandled.lock().unwrap_or_else(|p| p.into_inner());
                *oldest = Some(oldest.map_or(at, |o| o.min(at)));
            }
            return;
        }
        self.syncs.fetch_add(1, Ordering::Relaxed);
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_millis();
        self.last_sync_ms.store(now_ms as u64, Ordering::Relaxed);
        if let Some(at) = events_since {
            self.event_lag_us.store(at.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
    }
}

/// Counters of one label set: `Family<labels, Counter>`.
type Counters = Family<Vec<(String, String)>, Counter>;
type Gauges = Family<Vec<(String, String)>, Gauge>;

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g = Gauge::<i64>::default();
    g.set(value);
    registry.register(name, help, g);
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

/// The metrics of `pins` now, in the OpenMetrics text format; `daemon`:
/// the daemon's own values (None outside the daemon).
pub fn render(pins: &PinDir, daemon: Option<&DaemonMetrics>) -> Result<String> {
    let status = status::status(pins)?;
    let reading = if status.attached { Some(stats::read(&RuleStore::open_read_only(pins)?)?) } else { None };
    let mut r = Registry::with_prefix("dockblock");

    let info = Info::new(labels(&[("version", env!("CARGO_PKG_VERSION")), ("commit", GIT_COMMIT)]));
    r.register("build", "The agent's version and git commit", info);
    gauge(
        &mut r,
        "attached",
        "1 when the pin folder holds dockblock's maps and links",
        status.attached as i64,
    );
    gauge(&mut r, "healthy", "1 when `status` finds no problem", status.problems.is_empty() as i64);
    gauge(&mut r, "problems", "Problems `status` reports (each with its fix)", status.problems.len() as i64);

    let links = Gauges::default();
    for l in &status.links {
        let (link_id, program_id) = (l.link_id.to_string(), l.program_id.to_string());
        links
            .get_or_create(&labels(&[
                ("interface", &l.interface),
                ("hook", l.hook),
                ("mode", l.mode.unwrap_or("")),
                ("role", l.role),
                ("direction", l.direction),
                ("state", l.state),
                ("link_id", &link_id),
                ("program_id", &program_id),
            ]))
            .set(1);
    }
    r.register("link_info", "A pinned link: where, which hook, its kernel link and program ids", links);

    if let Some(fill) = &status.rules {
        gauge(
            &mut r,
            "rules",
            "Rules in the catalog (user rules and those the daemon derives)",
            fill.rules as i64,
        );
        gauge(&mut r, "rules_capacity", "Rules the maps hold", fill.capacity as i64);
        gauge(&mut r, "allow_entries", "Allow-list entries over all rules", fill.allow_entries as i64);
        gauge(&mut r, "allow_capacity", "Allow-list entries the map holds", fill.allow_capacity as i64);
        gauge(
            &mut r,
            "blocked_port_slots",
            "Distinct (scope, protocol, port) slots a rule blocks",
            fill.blocked_port_slots as i64,
        );
    }

    if let Some(reading) = &reading {
        let (packets, bytes) = (Counters::default(), Counters::default());
        for (hook, outcome, c) in reading.hook_counters() {
            let l = labels(&[("hook", hook), ("outcome", outcome)]);
            packets.get_or_create(&l).inc_by(c.packets);
            bytes.get_or_create(&l).inc_by(c.bytes);
        }
        r.register("hook_packets", "Packets each hook saw, by outcome (as `stats --json` hooks)", packets);
        r.register("hook_bytes", "Bytes each hook saw, by outcome", bytes);

        let (packets, bytes) = (Counters::default(), Counters::default());
        for rule in &reading.rules {
            let (id, scope, spec) =
                (rule.rule.id.to_string(), rule.rule.scope.to_string(), rule.rule.ports.to_string());
            let target = serde_json::to_value(&rule.rule.target.selector).unwrap_or_default();
            let target = target["kind"].as_str().unwrap_or("").to_string();
            let action = serde_json::to_value(rule.rule.target.action).unwrap_or_default();
            let action = action.as_str().unwrap_or("").to_string();
            let s = &rule.stats;
            for (outcome, c) in [
                ("dropped", s.dropped),
                ("passed", s.passed),
                ("allowed", s.allowed),
                ("would_drop", s.dry_run),
            ] {
                let l = labels(&[
                    ("rule", &id),
                    ("scope", &scope),
                    ("spec", &spec),
                    ("target", &target),
                    ("action", &action),
                    ("outcome", outcome),
                ]);
                packets.get_or_create(&l).inc_by(c.packets);
                bytes.get_or_create(&l).inc_by(c.bytes);
            }
        }
        r.register(
            "rule_packets",
            "Packets on each rule's ports, by outcome (as `stats --json` rules)",
            packets,
        );
        r.register("rule_bytes", "Bytes on each rule's ports, by outcome", bytes);
        counter(
            &mut r,
            "events_suppressed",
            "Log events not sent (rate limit or full ring buffer)",
            reading.suppressed,
        );
    }

    if let Some(d) = daemon {
        gauge(
            &mut r,
            "engine_connected",
            "1 while the daemon follows the Docker engine",
            d.engine_connected.load(Ordering::Relaxed) as i64,
        );
        counter(
            &mut r,
            "engine_events",
            "Engine events the daemon received",
            d.events.load(Ordering::Relaxed),
        );
        counter(
            &mut r,
            "syncs",
            "Syncs that took the kernel to the engine's state",
            d.syncs.load(Ordering::Relaxed),
        );
        counter(
            &mut r,
            "sync_failures",
            "Syncs that failed (retried)",
            d.sync_failures.load(Ordering::Relaxed),
        );
        let last_ms = d.last_sync_ms.load(Ordering::Relaxed);
        if last_ms > 0 {
            let g = Gauge::<f64, AtomicU64>::default();
            g.set(last_ms as f64 / 1e3);
            r.register("last_sync_timestamp_seconds", "When the last good sync ended (Unix time)", g);
        }
        let g = Gauge::<f64, AtomicU64>::default();
        g.set(d.event_lag_us.load(Ordering::Relaxed) as f64 / 1e6);
        r.register(
            "event_lag_seconds",
            "From the receipt of an engine event to the end of the sync that handled it (last such sync)",
            g,
        );
    }

    let mut out = String::new();
    encode(&mut out, &r).expect("writing to a String cannot fail");
    Ok(out)
}

/// Serves `GET /metrics` on `listener` until the task is dropped. A scrape
/// that cannot read the pin folder gets a 500 with the error.
pub async fn serve(listener: TcpListener, pins: PinDir, daemon: Arc<DaemonMetrics>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(answer(stream, pins.clone(), daemon.clone()));
            }
            Err(e) => {
                tracing::warn!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The longest request head read.
const MAX_HEAD: usize = 8192;
const READ_WITHIN: Duration = Duration::from_secs(5);

async fn answer(mut stream: TcpStream, pins: PinDir, daemon: Arc<DaemonMetrics>) {
    let Ok(Some(head)) = tokio::time::timeout(READ_WITHIN, read_head(&mut stream)).await.unwrap_or(Ok(None))
    else {
        return;
    };
    let (status, content_type, body) = match request_line(&head) {
        Some(("GET", path)) if path.split('?').next() == Some(PATH) => {
            match tokio::task::spawn_blocking(move || render(&pins, Some(&daemon))).await {
                Ok(Ok(body)) => ("200 OK", CONTENT_TYPE, body),
                Ok(Err(e)) => ("500 Internal Server Error", "text/plain", format!("{e}\n")),
                Err(e) => ("500 Internal Server Error", "text/plain", format!("{e}\n")),
            }
        }
        Some(("GET", _)) => ("404 Not Found", "text/plain", format!("not found: try {PATH}\n")),
        Some(_) => ("405 Method Not Allowed", "text/plain", "only GET\n".to_string()),
        None => ("400 Bad Request", "text/plain", "bad request\n".to_string()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Reads up to the blank line that ends the request head.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() + n > MAX_HEAD {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// The method and target of an HTTP/1.x request line.
fn request_line(head: &str) -> Option<(&str, &str)> {
    let mut parts = head.lines().next()?.split_whitespace();
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    version.starts_with("HTTP/1.").then_some((method, target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        assert_eq!(request_line("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Some(("GET", "/metrics")));
        assert_eq!(request_line("POST / HTTP/1.0\r\n\r\n"), Some(("POST", "/")));
        assert_eq!(request_line("GET /metrics\r\n\r\n"), None);
        assert_eq!(request_line(""), None);
    }

    #[test]
    fn lag_counts_from_the_oldest_event_a_sync_took() {
        let d = DaemonMetrics::default();
        assert_eq!(d.sync_starts(), None);
        d.event_received();
        std::thread::sleep(Duration::from_millis(20));
        d.event_received();
        let since = d.sync_starts();
        assert!(since.is_some());
        // A failed sync gives its events back to the next one.
        d.sync_done(Some(false), since);
        let again = d.sync_starts();
        assert_eq!(again, since);
        d.sync_done(Some(true), again);
        assert!(d.event_lag_us.load(Ordering::Relaxed) >= 20_000);
        assert_eq!(d.events.load(Ordering::Relaxed), 2);
        assert_eq!((d.syncs.load(Ordering::Relaxed), d.sync_failures.load(Ordering::Relaxed)), (1, 1));
    }
}
