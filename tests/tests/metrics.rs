//! The daemon's Prometheus endpoint (issue 10): a real daemon with
//! `--metrics 127.0.0.1:<free port>`, real traffic through a veth uplink
//! with a dialed-port rule, and `/metrics` compared with `stats --json`:
//! the same packets and bytes per rule and per hook outcome (both come
//! from one reading of the maps, `stats::read`).
//!
//! Needs root and a running Docker daemon; under the Docker lock:
//! `flock /tmp/dockblock-signals/docker.lock cargo test -p dockblock-tests --test metrics -- --test-threads=1`

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use dockblock_testkit::daemon::Daemon;
use dockblock_tests::rig::topology::{eventually, Topology, Web};
use dockblock_tests::rig::{connects, host_service};
use serde_json::Value;

/// A port nobody listens on now (the kernel's pick, released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().expect("local addr").port()
}

/// `GET <path>` on `addr`: (status line, headers and body).
fn get(addr: &str, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\n\r\n").expect("send request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read response");
    let status = text.lines().next().unwrap_or_default().to_string();
    (status, text)
}

/// One sample: metric name and its labels (sorted), e.g.
/// `dockblock_rule_packets_total{outcome="dropped",rule="1",...}`.
type Samples = BTreeMap<String, f64>;

/// Scrapes `/metrics` and parses the samples (every line that is not a
/// comment must be `name{labels} value`).
fn scrape(addr: &str) -> Samples {
    let (status, text) = get(addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "{text}");
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    assert!(head.contains("Content-Type: application/openmetrics-text"), "{head}");
    assert!(body.ends_with("# EOF\n"), "an OpenMetrics body ends with # EOF: {body}");
    let mut samples = Samples::new();
    for line in body.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (key, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("sample line {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|e| panic!("value of {line:?}: {e}"));
        samples.insert(normalize(key), value);
    }
    samples
}

/// `name{b="2",a="1"}` -> `name{a="1",b="2"}`.
fn normalize(key: &str) -> String {
    let Some((name, rest)) = key.split_once('{') else { return key.to_string() };
    let labels = rest.strip_suffix('}').unwrap_or_else(|| panic!("labels of {key:?}"));
    let mut pairs: Vec<&str> = split_labels(labels);
    pairs.sort();
    format!("{name}{{{}}}", pairs.join(","))
}

/// Splits `a="x,y",b="z"` at the commas between labels.
fn split_labels(labels: &str) -> Vec<&str> {
    let (mut out, mut start, mut quoted, mut escaped) = (vec![], 0, false, false);
    for (i, c) in labels.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&labels[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < labels.len() {
        out.push(&labels[start..]);
    }
    out
}

/// The value of the sample `name` whose labels include every `want` pair.
fn sample(samples: &Samples, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    let want: Vec<String> = want.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    let hits: Vec<f64> = samples
        .iter()
        .filter(|(key, _)| {
            key.split_once('{').map_or(key.as_str() == name, |(n, labels)| {
                let labels = split_labels(labels.trim_end_matches('}'));
                n == name && want.iter().all(|w| labels.contains(&w.as_str()))
            })
        })
        .map(|(_, v)| *v)
        .collect();
    assert!(hits.len() <= 1, "{name} {want:?} matches {} samples", hits.len());
    hits.first().copied()
}

/// The counters `stats --json` and `/metrics` both give, by the metric
/// sample they appear as: per hook and outcome, per rule and outcome.
fn compared(stats: &Value) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (hook, outcomes) in stats["hooks"].as_object().expect("hooks") {
        for (outcome, c) in outcomes.as_object().expect("outcomes") {
            for unit in ["packets", "bytes"] {
                let key = format!("dockblock_hook_{unit}_total hook={hook} outcome={outcome}");
                out.insert(key, c[unit].as_u64().expect("counter"));
            }
        }
    }
    for r in stats["rules"].as_array().expect("rules") {
        let id = r["id"].to_string();
        for outcome in ["dropped", "passed", "allowed", "would_drop"] {
            for unit in ["packets", "bytes"] {
                let key = format!("dockblock_rule_{unit}_total rule={id} outcome={outcome}");
                out.insert(key, r[outcome][unit].as_u64().expect("counter"));
            }
        }
    }
    out.insert(
        "dockblock_events_suppressed_total".into(),
        stats["events_suppressed"].as_u64().expect("suppressed"),
    );
    out
}

/// `compared`'s keys looked up in a scrape.
fn from_scrape(samples: &Samples, keys: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    keys.keys()
        .map(|key| {
            let mut parts = key.split(' ');
            let name = parts.next().expect("name");
            let labels: Vec<(&str, &str)> = parts.map(|p| p.split_once('=').expect("k=v")).collect();
            let v = sample(samples, name, &labels).unwrap_or_else(|| panic!("no sample {key} in /metrics"));
            (key.clone(), v as u64)
        })
        .collect()
}

#[test]
fn metrics_match_stats_json_and_follow_the_engine() {
    let t = Topology::new("mtr", 240);
    let addr = format!("127.0.0.1:{}", free_port());
    let bin = std::path::Path::new(t.agent.bin());
    let mut daemon = Daemon::started(bin, t.agent.pin_dir(), &[t.xdp.host_if(), "--metrics", &addr]);

    // Traffic: 3 SYNs to a blocked port (dropped at XDP) and one
    // connection to an open host service (passed).
    t.agent.ok(&["block", "18450/tcp"]);
    let host = t.xdp.host_ip().to_string();
    let _svc = host_service(&host, 18451, 60);
    for _ in 0..3 {
        assert!(!connects(&t.xdp, &host, 18450), "18450/tcp is blocked");
    }
    assert!(connects(&t.xdp, &host, 18451), "18451/tcp is open");

    // The same numbers: a scrape, `stats --json`, a scrape; compared when
    // the two scrapes agree (nothing moved in between: the hooks also see
    // the bridge's and the namespaces' own traffic).
    let mut last = String::new();
    let agreed = eventually(Duration::from_secs(20), || {
        let before = scrape(&addr);
        let stats = t.agent.json(&["stats"]);
        let after = scrape(&addr);
        let want = compared(&stats);
        let (b, a) = (from_scrape(&before, &want), from_scrape(&after, &want));
        if b != a {
            last = "counters moved between the scrapes".into();
            return false;
        }
        if b != want {
            let diff: Vec<String> = want
                .iter()
                .filter(|(k, v)| b.get(*k) != Some(v))
                .map(|(k, v)| format!("{k}: stats {v}, metrics {:?}", b.get(k)))
                .collect();
            panic!("/metrics and stats --json disagree (no counter moved):\n{}", diff.join("\n"));
        }
        true
    });
    assert!(agreed, "never two equal scrapes in 20 s: {last}");

    let m = scrape(&addr);
    let rule = dockblock_tests::rig::rule(&t.agent, "dialed", "18450/tcp").expect("the rule");
    let id = rule["id"].to_string();
    let drops = sample(&m, "dockblock_rule_packets_total", &[("rule", &id), ("outcome", "dropped")]);
    assert!(drops.is_some_and(|d| d >= 3.0), "the 3 SYNs to 18450 are counted: {drops:?}");
    let xdp_drops = sample(&m, "dockblock_hook_packets_total", &[("hook", "xdp"), ("outcome", "dropped")]);
    assert!(xdp_drops.is_some_and(|d| d >= 3.0), "{xdp_drops:?}");

    // Links with their kernel ids, as `status --json` has them.
    let status = t.agent.json(&["status"]);
    for l in status["links"].as_array().expect("links") {
        let labels = [
            ("interface", l["interface"].as_str().expect("interface")),
            ("hook", l["hook"].as_str().expect("hook")),
            ("direction", l["direction"].as_str().expect("direction")),
            ("role", l["role"].as_str().expect("role")),
        ];
        let link_id = l["link_id"].to_string();
        let program_id = l["program_id"].to_string();
        let mut with_ids = labels.to_vec();
        with_ids.extend([("link_id", link_id.as_str()), ("program_id", program_id.as_str())]);
        assert_eq!(sample(&m, "dockblock_link_info", &with_ids), Some(1.0), "link {l} in /metrics");
    }
    let fill = &status["rules"];
    assert_eq!(sample(&m, "dockblock_rules", &[]), fill["rules"].as_f64());
    assert_eq!(sample(&m, "dockblock_rules_capacity", &[]), fill["capacity"].as_f64());
    assert_eq!(sample(&m, "dockblock_allow_capacity", &[]), fill["allow_capacity"].as_f64());
    assert_eq!(sample(&m, "dockblock_attached", &[]), Some(1.0));
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(sample(&m, "dockblock_build_info", &[("version", version)]), Some(1.0));

    // The daemon's own values: connected, synced, and an engine event
    // (a container started) handled with its lag measured.
    assert_eq!(sample(&m, "dockblock_engine_connected", &[]), Some(1.0));
    assert!(sample(&m, "dockblock_last_sync_timestamp_seconds", &[]).is_some_and(|t| t > 1.7e9));
    let events = sample(&m, "dockblock_engine_events_total", &[]).expect("engine events");
    let syncs = sample(&m, "dockblock_syncs_total", &[]).expect("syncs");
    let web = Web::start("dockblock-test-mtr", 18452, &[]);
    let mut now = Samples::new();
    let handled = eventually(Duration::from_secs(20), || {
        now = scrape(&addr);
        sample(&now, "dockblock_engine_events_total", &[]) > Some(events)
            && sample(&now, "dockblock_syncs_total", &[]) > Some(syncs)
    });
    assert!(handled, "the container's events and a sync after them: {now:?}\n{}", daemon.log_tail());
    let lag = sample(&now, "dockblock_event_lag_seconds", &[]).expect("event lag");
    assert!(lag > 0.0 && lag < 10.0, "event lag {lag} s");
    drop(web);

    // Elsewhere: 404; anything but GET: 405.
    let (status, _) = get(&addr, "/");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let mut s = TcpStream::connect(&addr).expect("connect");
    write!(s, "POST /metrics HTTP/1.1\r\n\r\n").expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    assert!(text.starts_with("HTTP/1.1 405"), "{text}");

    // Stopped: the port is closed with it.
    assert!(daemon.stop().is_some_and(|s| s.success()), "{}", daemon.log_tail());
    assert!(TcpStream::connect(&addr).is_err(), "{addr} still answers after the daemon stopped");
}

#[test]
fn busy_metrics_address_fails_the_start_and_changes_nothing() {
    let t = Topology::new("mtb", 242);
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("addr").to_string();
    let out = t.agent.fails(&["run", t.xdp.host_if(), "--metrics", &addr], 1);
    assert!(out.contains(&format!("serve metrics on {addr}")), "{out}");
    let status = t.agent.json(&["status"]);
    assert_eq!(status["attached"], false, "nothing attached: {status}");
    assert_eq!(status["links"].as_array().map(Vec::len), Some(0), "{status}");
    // A malformed address is a usage error (exit 2).
    t.agent.fails(&["run", t.xdp.host_if(), "--metrics", "localhost"], 2);
}
