//! Restarts and upgrades with no window (issue 10), end to end with dockerd
//! and the daemon: rules of every kind in force (a dialed-port rule on a
//! published port, `--container`, `--label`), probes connecting every 20 ms
//! from both outside namespaces to each blocked service on every path (the
//! published port through the XDP uplink and through the interface without
//! XDP, the container's address by direct routing) and to a control port,
//! while the daemon is stopped and started again (SIGTERM, SIGKILL), or
//! replaced by this release over the pins of the previous one (v0.9.0,
//! built from this repository's history by `prev_release`). Asserted: zero
//! connections to blocked services, the controls connected, every rule and
//! its counters kept (never below what `stats --json` showed before), the
//! same links (link ids) running the new programs (program ids changed: a
//! start puts its own programs into every link, `bpf_link_update`), and
//! `status` healthy.
//!
//! Needs root and a running Docker daemon; run serially:
//! `cargo build -p dockblock-agent && cargo test -p dockblock-tests --test upgrade -- --test-threads=1`

use std::collections::BTreeMap;
use std::time::Duration;

use dockblock_testkit::agent::Cli;
use dockblock_testkit::daemon::Daemon;
use dockblock_tests::netns::Outside;
use dockblock_tests::prev_release;
use dockblock_tests::rig::topology::{ProbeLoop, Tally, Topology, Web, CONTROL_PORT};
use dockblock_tests::rig::{connects, host_service};
use serde_json::Value;

const EVERY: Duration = Duration::from_millis(20);

/// Three web containers, each behind one kind of rule on port 80.
struct Services {
    /// Published `port`: `block <port>/tcp` (a dialed-port rule).
    dialed: Web,
    /// Published `port + 10`: `block --container <name> 80/tcp`.
    named: Web,
    /// Published `port + 20`, label `dbtup=<tag>`: `block --label dbtup=<tag> 80/tcp`.
    labelled: Web,
}

impl Services {
    fn start(tag: &str, port: u16) -> Services {
        let label = format!("dbtup={tag}");
        Services {
            dialed: Web::run(&format!("dbt-{tag}a"), port, &[]),
            named: Web::run(&format!("dbt-{tag}b"), port + 10, &[]),
            labelled: Web::run(&format!("dbt-{tag}c"), port + 20, &["-l", &label]),
        }
    }

    fn all(&self) -> [&Web; 3] {
        [&self.dialed, &self.named, &self.labelled]
    }

    /// The three rules, through the CLI `bin` (this release's or the
    /// previous one's).
    fn block(&self, cli: &Cli, tag: &str) {
        let port = format!("{}/tcp", self.dialed.host_port(80));
        for args in [
            vec!["block", port.as_str()],
            vec!["block", "--container", self.named.name(), "80/tcp"],
            vec!["block", "--label", &format!("dbtup={tag}"), "80/tcp"],
        ] {
            cli.ok(&args).unwrap_or_else(|e| panic!("{} {args:?}: {e}", cli.bin().display()));
        }
    }
}

/// The probe loops of both namespaces over every blocked path and the
/// control ports; `finish` checks them.
struct Probes {
    xdp: ProbeLoop,
    plain: ProbeLoop,
    xdp_names: Vec<(String, bool)>,
    plain_names: Vec<(String, bool)>,
}

impl Probes {
    fn start(t: &Topology, s: &Services, limit: Duration) -> Probes {
        let (xh, ph) = (t.xdp.host_ip().to_string(), t.plain.host_ip().to_string());
        let (mut xdp, mut plain, mut xdp_names, mut plain_names) = (vec![], vec![], vec![], vec![]);
        for web in s.all() {
            let (ip, hp) = (web.ip(), web.host_port(80));
            for (target, blocked) in [((xh.clone(), hp), true), ((ip.clone(), 80), true)] {
                xdp_names.push((format!("{} {}:{}", web.name(), target.0, target.1), blocked));
                xdp.push(target);
            }
            plain_names.push((format!("{} {ph}:{hp}", web.name()), true));
            plain.push((ph.clone(), hp));
        }
        let control = s.dialed.host_port(CONTROL_PORT);
        let control_name = |(a, p): &(String, u16)| (format!("control {a}:{p}"), false);
        for target in [(xh.clone(), control), (s.named.ip(), CONTROL_PORT)] {
            xdp_names.push(control_name(&target));
            xdp.push(target);
        }
        let target = (ph.clone(), control);
        plain_names.push(control_name(&target));
        plain.push(target);
        Probes {
            xdp: ProbeLoop::start(&t.xdp, &xdp, EVERY, limit),
            plain: ProbeLoop::start(&t.plain, &plain, EVERY, limit),
            xdp_names,
            plain_names,
        }
    }

    /// Zero connections to a blocked target, some to every control.
    fn finish(self, t: &Topology, what: &str) {
        let tallies: Vec<((String, bool), Tally)> = self
            .xdp_names
            .into_iter()
            .zip(self.xdp.finish())
            .chain(self.plain_names.into_iter().zip(self.plain.finish()))
            .collect();
        println!("{what}:");
        for ((name, _), tally) in &tallies {
            println!("  {name}: {tally:?}");
        }
        let breaches: Vec<_> = tallies.iter().filter(|((_, blocked), t)| *blocked && t.ok > 0).collect();
        assert!(breaches.is_empty(), "{what}: blocked services connected: {breaches:?}\n{}", t.context());
        let silent: Vec<_> = tallies.iter().filter(|((_, blocked), t)| !*blocked && t.ok == 0).collect();
        assert!(silent.is_empty(), "{what}: controls never connected: {silent:?}\n{}", t.context());
    }
}

/// Rule id -> (dropped, passed) packets, from `stats --json` of `cli`.
fn counters(cli: &Cli) -> BTreeMap<u64, (u64, u64)> {
    let out = cli.ok(&["stats", "--json"]).expect("stats --json");
    let v: Value = serde_json::from_str(&out).expect("stats json");
    let rules = v["rules"].as_array().unwrap_or_else(|| panic!("stats --json: {v}"));
    rules
        .iter()
        .map(|r| {
            let n = |k: &str| r[k]["packets"].as_u64().unwrap_or_else(|| panic!("{k}: {r}"));
            (r["id"].as_u64().unwrap(), (n("dropped"), n("passed")))
        })
        .collect()
}

/// The user rules (id -> spec, target) from `list --json` of `cli`.
fn user_rules(cli: &Cli) -> BTreeMap<u64, String> {
    let out = cli.ok(&["list", "--json"]).expect("list --json");
    let v: Value = serde_json::from_str(&out).expect("list json");
    let rules = v["rules"].as_array().unwrap_or_else(|| panic!("list --json: {v}"));
    rules
        .iter()
        .filter(|r| {
            r["derived_from"].is_null()
                && ["ports", "container", "label"].contains(&r["target"]["kind"].as_str().unwrap_or(""))
        })
        .map(|r| (r["id"].as_u64().unwrap(), format!("{} {} {}", r["scope"], r["spec"], r["target"])))
        .collect()
}

/// (interface, hook, role) -> (link id, program id), from `status --json`.
fn link_ids(cli: &Cli) -> BTreeMap<String, (u64, u64)> {
    let out = cli.ok(&["status", "--json"]).expect("status --json");
    let v: Value = serde_json::from_str(&out).expect("status json");
    let links = v["links"].as_array().unwrap_or_else(|| panic!("status --json: {v}"));
    links
        .iter()
        .map(|l| {
            let key = format!("{} {} {}", l["interface"], l["hook"], l["role"]);
            (key, (l["link_id"].as_u64().unwrap(), l["program_id"].as_u64().unwrap()))
        })
        .collect()
}

/// What must survive a restart or an upgrade, read before it.
struct Before {
    rules: BTreeMap<u64, String>,
    counters: BTreeMap<u64, (u64, u64)>,
    links: BTreeMap<String, (u64, u64)>,
}

impl Before {
    fn read(cli: &Cli) -> Before {
        Before { rules: user_rules(cli), counters: counters(cli), links: link_ids(cli) }
    }

    /// Read with this release's CLI after the restart or upgrade.
    fn check(&self, t: &Topology, what: &str) {
        let cli = Cli::new(t.agent.bin(), t.agent.pin_dir());
        assert_eq!(user_rules(&cli), self.rules, "{what}: rules changed\n{}", t.context());
        let now = counters(&cli);
        for (id, (dropped, passed)) in &self.counters {
            let (d, p) = now.get(id).copied().unwrap_or_default();
            assert!(
                d >= *dropped && p >= *passed,
                "{what}: rule {id}'s counters went back from {dropped}/{passed} to {d}/{p}"
            );
        }
        let dropped: u64 = self.counters.values().map(|c| c.0).sum();
        assert!(dropped > 0, "{what}: the probes were never dropped before ({:?})", self.counters);
        let links = link_ids(&cli);
        for (key, (link, prog)) in &self.links {
            let (l, p) =
                links.get(key).copied().unwrap_or_else(|| panic!("{what}: link {key} gone: {links:?}"));
            assert_eq!(l, *link, "{what}: {key} is another link");
            assert_ne!(p, *prog, "{what}: {key} still runs the old program {prog}");
        }
        let status: Value = serde_json::from_str(&cli.ok(&["status", "--json"]).unwrap()).unwrap();
        assert_eq!(status["health"], "healthy", "{what}: {status}");
        assert_eq!(status["daemon"]["running"], true, "{what}: {status}");
    }
}

/// The topology, the services behind their rules (added with `cli`), all
/// reviewed and closed, controls open.
fn ready(t: &Topology, tag: &str, port: u16, cli: &Cli) -> Services {
    let s = Services::start(tag, port);
    s.block(cli, tag);
    for web in s.all() {
        t.wait_reviewed(web);
        t.assert_opens(web, CONTROL_PORT, "control port");
        t.assert_paths(web, 80, false, "before");
    }
    s
}

fn this_release(t: &Topology) -> Cli {
    Cli::new(t.agent.bin(), t.agent.pin_dir())
}

/// The daemon stopped by `stop` and started again over its pins, while the
/// probes run: no window, rules and counters kept.
fn restart_opens_no_window(tag: &str, subnet: u8, port: u16, what: &str, stop: fn(&mut Topology)) {
    let mut t = Topology::with_daemon(tag, subnet);
    let cli = this_release(&t);
    let s = ready(&t, tag, port, &cli);
    let probes = Probes::start(&t, &s, Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(1));
    let before = Before::read(&cli);
    stop(&mut t);
    std::thread::sleep(Duration::from_secs(1));
    t.start_daemon();
    std::thread::sleep(Duration::from_secs(1));
    probes.finish(&t, what);
    before.check(&t, what);
}

/// SIGTERM, then a new start.
#[test]
fn a_restart_opens_no_window() {
    restart_opens_no_window("upr", 184, 21220, "SIGTERM and start", |t| {
        t.stop_daemon();
    });
}

/// SIGKILL (nothing runs on exit), then a new start.
#[test]
fn a_kill_and_start_opens_no_window() {
    restart_opens_no_window("upk", 186, 21245, "SIGKILL and start", Topology::kill_daemon);
}

/// The previous release's daemon attaches and its CLI adds the rules;
/// then it stops and this release's daemon starts over its pins.
#[test]
fn an_upgrade_from_the_previous_release_opens_no_window() {
    let old_bin = prev_release::agent();
    let mut t = Topology::new("upg", 188);
    let old_cli = Cli::new(&old_bin, t.agent.pin_dir());
    let mut old = Daemon::started(&old_bin, t.agent.pin_dir(), &[t.xdp.host_if()]);
    let s = ready(&t, "upg", 21270, &old_cli);
    let probes = Probes::start(&t, &s, Duration::from_secs(180));
    std::thread::sleep(Duration::from_secs(1));
    let before = Before::read(&old_cli);
    let status = old.stop();
    assert!(status.is_some_and(|s| s.success()), "v0.9.0's daemon exited {status:?}: {}", old.log_tail());
    t.start_daemon();
    std::thread::sleep(Duration::from_secs(1));
    probes.finish(&t, "v0.9.0's daemon stopped, this release's started over its pins");
    before.check(&t, "upgrade from v0.9.0 (daemon)");
}

/// Without a daemon: v0.9.0's `attach` and `block`, then this release's
/// `attach` over its pins, under a probe loop; then v0.9.0's `attach` again
/// (a downgrade).
#[test]
fn attach_over_the_previous_releases_pins_opens_no_window() {
    let old_bin = prev_release::agent();
    let out = Outside::new("upa", 181);
    let agent = dockblock_tests::agent::Agent::new("upa");
    let (old, new) = (Cli::new(&old_bin, agent.pin_dir()), Cli::new(agent.bin(), agent.pin_dir()));
    let port = 21295;
    let _services = [host_service(out.host_ip(), port, 180), host_service(out.host_ip(), port + 1, 180)];
    old.ok(&["attach", out.host_if(), "--no-bridge"]).unwrap();
    old.ok(&["block", &format!("{port}/tcp")]).unwrap();
    assert!(!connects(&out, out.host_ip(), port), "v0.9.0's rule does not drop");
    let links = link_ids(&old);
    let rules = user_rules(&old);
    let counted = counters(&old);

    let host = out.host_ip().to_string();
    let probe =
        ProbeLoop::start(&out, &[(host.clone(), port), (host, port + 1)], EVERY, Duration::from_secs(120));
    std::thread::sleep(Duration::from_millis(500));
    let attached = new.ok(&["attach", out.host_if(), "--no-bridge"]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let tally = probe.finish();
    println!("this release's attach over v0.9.0's pins: blocked {:?}, control {:?}", tally[0], tally[1]);
    assert!(attached.contains("program replaced in the existing link"), "attach: {attached}");
    assert_eq!(tally[0].ok, 0, "the blocked port connected: {tally:?}");
    assert!(tally[1].ok > 0, "the control never connected: {tally:?}");

    assert_eq!(user_rules(&new), rules, "rules changed");
    let now = counters(&new);
    for (id, (d, _)) in &counted {
        assert!(now[id].0 >= *d && *d > 0, "rule {id}: dropped {d} -> {:?}", now.get(id));
    }
    let after = link_ids(&new);
    assert_eq!(after.len(), links.len(), "{links:?} -> {after:?}");
    for (key, (link, prog)) in &links {
        assert_eq!(after[key].0, *link, "{key} is another link");
        assert_ne!(after[key].1, *prog, "{key} still runs v0.9.0's program");
    }
    let status: Value = serde_json::from_str(&new.ok(&["status", "--json"]).unwrap()).unwrap();
    assert_eq!(status["health"], "healthy", "{status}");
    assert!(!connects(&out, out.host_ip(), port), "the rule does not drop after the upgrade");

    // Downgrade: v0.9.0 has this release's layouts, so its `attach` takes
    // the links back in place too, with the rules.
    let back = old.ok(&["attach", out.host_if(), "--no-bridge"]).unwrap();
    assert!(back.contains("program replaced in the existing link"), "v0.9.0's attach: {back}");
    let down = link_ids(&old);
    for (key, (link, prog)) in &after {
        assert_eq!(down[key].0, *link, "downgrade: {key} is another link");
        assert_ne!(down[key].1, *prog, "downgrade: {key} still runs this release's program");
    }
    assert_eq!(user_rules(&old), rules, "downgrade: rules changed");
    assert!(!connects(&out, out.host_ip(), port), "the rule does not drop after the downgrade");
}
