//! The service lifecycle (issue 10): the systemd unit, readiness, the saved
//! rule set at start, a simulated reboot with `restart=always` containers,
//! SIGHUP, a damaged state file, `status`.
//!
//! Needs root and a running Docker daemon; the reboot test stops and starts
//! dockerd. Run serially, under the shared tests lock:
//! `cargo build -p dockblock-agent && cargo test -p dockblock-tests --test service -- --test-threads=1`

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dockblock_agent::paths::PinDir;
use dockblock_testkit::daemon::Daemon;
use dockblock_tests::agent::{Agent, NoEngine};
use dockblock_tests::dockerd::Dockerd;
use dockblock_tests::netns::Outside;
use dockblock_tests::rig::topology::{eventually, Net, ProbeLoop, Tally, Topology, Web, CONTROL_PORT};
use dockblock_tests::rig::{connects, host_service, links, require_env};
use dockblock_tests::{describe, run, run_ok};
use serde_json::Value;

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/systemd/dockblock.service");

/// The unit as shipped, with ExecStart pointing at the built binary (verify
/// checks that the command exists): `systemd-analyze verify` exits 0 and
/// prints nothing (it only warns, exit 0, about a bad value), and the unit
/// says what the issue asks of it.
#[test]
fn unit_file_passes_systemd_analyze_verify() {
    let text = std::fs::read_to_string(UNIT).unwrap_or_else(|e| panic!("{UNIT}: {e}"));
    for line in [
        "Type=notify",
        "Before=docker.service",
        "WantedBy=multi-user.target",
        "Restart=on-failure",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "StateDirectory=dockblock",
        "ProtectSystem=strict",
        "ReadWritePaths=/sys/fs/bpf /var/lib/dockblock /run/dockblock",
    ] {
        assert!(text.lines().any(|l| l == line), "{UNIT} lacks `{line}`");
    }
    let caps = text.lines().find_map(|l| l.strip_prefix("CapabilityBoundingSet=")).expect("a bounding set");
    for cap in ["CAP_BPF", "CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_PERFMON"] {
        assert!(caps.split_whitespace().any(|c| c == cap), "CapabilityBoundingSet lacks {cap}: {caps}");
    }
    let agent = Agent::new("lfunit");
    let dir = std::env::temp_dir().join(format!("dockblock-lf-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let unit = dir.join("dockblock.service");
    std::fs::write(&unit, text.replace("/usr/local/bin/dockblock-agent", agent.bin())).unwrap();
    let out = run("systemd-analyze", &["verify", unit.to_str().unwrap()]);
    let bad = dir.join("bad.service");
    std::fs::write(&bad, text.replace("Type=notify", "Type=notifyy")).unwrap();
    let bad_out = run("systemd-analyze", &["verify", bad.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(), "{}", describe(&out));
    // The check is able to fail: a typo is reported.
    assert!(String::from_utf8_lossy(&bad_out.stderr).contains("notifyy"), "{}", describe(&bad_out));
}

/// A unix datagram socket bound where `NOTIFY_SOCKET` points, as systemd's.
struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
    /// Every line received so far.
    lines: Vec<String>,
}

impl NotifySocket {
    fn bind(tag: &str) -> NotifySocket {
        let path = std::env::temp_dir().join(format!("dockblock-notify-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
        NotifySocket { sock, path, lines: vec![] }
    }

    fn path(&self) -> &str {
        self.path.to_str().expect("utf-8 path")
    }

    /// Waits until a datagram holds `line`; panics with the daemon's log
    /// after `within` or if the daemon exits.
    fn wait_for(&mut self, line: &str, within: Duration, daemon: &mut Daemon) {
        let deadline = Instant::now() + within;
        self.sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let mut buf = [0u8; 4096];
        loop {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let hit = text.lines().any(|l| l == line);
                self.lines.extend(text.lines().map(String::from));
                if hit {
                    return;
                }
                continue;
            }
            if let Some(status) = daemon.exited() {
                panic!(
                    "daemon exited ({status}) before {line}; got {:?}; log:\n{}",
                    self.lines,
                    daemon.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {line} within {within:?}; got {:?}; log:\n{}",
                self.lines,
                daemon.log_tail()
            );
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `run <args>` for `agent`, not waited for, with `env`.
fn spawn(agent: &Agent, args: &[&str], env: &[(&str, &str)]) -> Daemon {
    Daemon::spawn_env(Path::new(agent.bin()), agent.pin_dir(), args, env)
        .unwrap_or_else(|e| panic!("daemon did not start: {e}"))
}

/// The user rules of `list --json` (engine-made ones aside) without ids,
/// counters and what they cover now: what a reboot must bring back.
fn user_rules(agent: &Agent) -> Vec<Value> {
    let list = agent.json(&["list"]);
    let mut rules: Vec<Value> = list["rules"]
        .as_array()
        .unwrap_or_else(|| panic!("list --json: {list}"))
        .iter()
        .filter(|r| {
            r["derived_from"].is_null()
                && !["derived", "own_labels"].contains(&r["target"]["kind"].as_str().unwrap_or(""))
        })
        .map(|r| {
            let mut r = r.clone();
            let o = r.as_object_mut().expect("a rule object");
            for k in ["id", "covers", "dropped", "passed", "allowed", "would_drop"] {
                o.remove(k);
            }
            r
        })
        .collect();
    rules.sort_by_key(|r| r.to_string());
    rules
}

/// The XDP program id on `iface`, if any (`ip -d link`).
fn xdp_on(iface: &str) -> bool {
    let out = run_ok("ip", &["-d", "link", "show", "dev", iface]);
    out.contains("prog/xdp")
}

/// After a reboot (no pins: the saved rules only), `READY=1` comes once the
/// rules are in the kernel and the hooks attached, without an engine: at
/// that moment `list` has every rule back, the uplink has its XDP program,
/// a blocked host service is closed to the outside and an open one is not.
/// STATUS lines come before; SIGTERM sends STOPPING=1 and exits 0.
#[test]
fn ready_once_the_saved_rules_and_hooks_are_in_the_kernel() {
    require_env();
    let out = Outside::new("lfrd", 172);
    let agent = Agent::new("lfrd");
    let _no_engine = NoEngine::set();
    agent.ok(&["attach", out.host_if(), "--no-bridge"]);
    agent.ok(&["block", "21110/tcp"]);
    agent.ok(&["block", "21111-21112/udp", "--allow-from", "10.0.0.0/8"]);
    let before = user_rules(&agent);
    assert_eq!(before.len(), 2, "{before:?}");
    let saved = std::fs::read_to_string(agent.state_file()).expect("the rules were saved");
    assert!(saved.contains("21110/tcp"), "{saved}");
    // A reboot: pins gone, the state file stays.
    agent.ok(&["detach"]);
    assert!(!Path::new(agent.pin_dir()).exists());
    assert!(!xdp_on(out.host_if()));

    let _blocked = host_service(out.host_ip(), 21110, 60);
    let _open = host_service(out.host_ip(), 21113, 60);
    let mut notify = NotifySocket::bind("lfrd");
    let mut d = spawn(&agent, &[out.host_if()], &[("NOTIFY_SOCKET", notify.path())]);
    notify.wait_for("READY=1", Duration::from_secs(90), &mut d);
    assert_eq!(user_rules(&agent), before, "the saved rules at READY=1");
    assert!(xdp_on(out.host_if()), "XDP on {} at READY=1", out.host_if());
    assert_eq!(links(&agent, out.host_if(), None).len(), 2, "xdp and the tracking hook");
    assert!(!connects(&out, out.host_ip(), 21110), "21110/tcp closed at READY=1");
    assert!(connects(&out, out.host_ip(), 21113), "21113/tcp open");
    let status = agent.json(&["status"]);
    assert_eq!(status["daemon"]["running"], true, "{status}");
    assert_eq!(status["daemon"]["engine"], "down", "ready without the engine: {status}");
    assert!(notify.lines.iter().any(|l| l.starts_with("STATUS=")), "{:?}", notify.lines);

    let stopped = d.stop();
    notify.wait_for("STOPPING=1", Duration::from_secs(5), &mut d);
    assert!(stopped.is_some_and(|s| s.success()), "SIGTERM: {stopped:?}\n{}", d.log_tail());
    assert!(!connects(&out, out.host_ip(), 21110), "21110/tcp still closed after SIGTERM");
    let status = agent.ok(&["status"]);
    assert!(status.contains("daemon: not running (stopped at "), "{status}");
}

/// A damaged state file stops the start with `FILE:LINE: why` (the hint
/// names the .prev copy), exit 2, and nothing changes: after a reboot no pin
/// folder and no XDP program; with pins, the rules and links as they were.
/// The file itself is left as it was.
#[test]
fn a_damaged_state_file_fails_the_start_and_changes_nothing() {
    require_env();
    let out = Outside::new("lfdm", 173);
    let agent = Agent::new("lfdm");
    let _no_engine = NoEngine::set();
    agent.ok(&["attach", out.host_if(), "--no-bridge"]);
    agent.ok(&["block", "21120/tcp"]);
    agent.ok(&["block", "21121/tcp"]);
    let state = agent.state_file();
    assert!(Path::new(&format!("{}.prev", state.display())).exists(), "two changes leave a .prev copy");
    let damaged = "# saved\n[[rule]]\nports = \"21120/tcp\"\nscope = \"nowhere\"\n";
    std::fs::write(&state, damaged).unwrap();
    let expect_error = |d: &mut Daemon, what: &str| {
        let exited = eventually(Duration::from_secs(30), || d.exited().is_some());
        assert!(exited, "{what}: the daemon did not exit\n{}", d.log_tail());
        assert_eq!(d.exited().and_then(|s| s.code()), Some(2), "{what}: exit 2\n{}", d.log());
        let log = d.log();
        assert!(log.contains(&format!("{}:4: ", state.display())), "{what}: FILE:LINE: {log}");
        assert!(log.contains(".prev"), "{what}: the hint names the .prev copy: {log}");
        assert_eq!(std::fs::read_to_string(&state).unwrap(), damaged, "{what}: the file is left alone");
    };

    // With pins: they are not touched.
    let rules = agent.json(&["list"]);
    let links_before = links(&agent, out.host_if(), None);
    let mut d = spawn(&agent, &[out.host_if()], &[]);
    expect_error(&mut d, "pins there");
    assert_eq!(agent.json(&["list"]), rules, "the rules as they were");
    assert_eq!(links(&agent, out.host_if(), None), links_before, "the same links");

    // After a reboot: nothing is made.
    agent.ok(&["detach"]);
    let mut d = spawn(&agent, &[out.host_if()], &[]);
    expect_error(&mut d, "no pins");
    assert!(!Path::new(agent.pin_dir()).exists(), "no pin folder");
    assert!(!xdp_on(out.host_if()), "no XDP program");
}

/// Writes the config file `path`: the uplink and `rule_files`.
fn write_config(path: &Path, uplink: &str, rule_files: &[&Path]) {
    let files: Vec<String> = rule_files.iter().map(|f| format!("{:?}", f.display().to_string())).collect();
    std::fs::write(path, format!("uplinks = [{uplink:?}]\nrule_files = [{}]\n", files.join(", "))).unwrap();
}

/// SIGHUP: a rule file added to the config is applied (its port closes to
/// real connections); a bad config, and a good one naming a bad rule file,
/// change nothing and the daemon keeps running. `status` shows the daemon
/// running, since when, its last sync with the engine, and a container label
/// it could not enforce.
#[test]
fn sighup_applies_rule_files_and_a_bad_config_changes_nothing() {
    require_env();
    let out = Outside::new("lfhp", 174);
    let agent = Agent::new("lfhp");
    let dir = std::env::temp_dir().join(format!("dockblock-lf-hup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (config, rules) = (dir.join("dockblock.toml"), dir.join("web.rules.toml"));
    write_config(&config, out.host_if(), &[]);
    let _svc = host_service(out.host_ip(), 21130, 120);
    let _control = host_service(out.host_ip(), 21131, 120);
    let bad_label = Web::start("dbt-lfhp-bad", 21132, &["-l", "dockblock.block=notaport"]);
    let mut d =
        Daemon::start(Path::new(agent.bin()), agent.pin_dir(), &["--config", config.to_str().unwrap()])
            .unwrap_or_else(|e| panic!("daemon: {e}"));
    assert!(connects(&out, out.host_ip(), 21130), "21130 open before the rule file");

    let status = agent.json(&["status"]);
    let daemon = &status["daemon"];
    assert_eq!(daemon["running"], true, "{status}");
    assert_eq!(daemon["pid"], d.pid(), "{status}");
    assert!(daemon["since"].as_str().is_some_and(|s| s.ends_with('Z')), "{status}");
    assert!(daemon["last_sync"].as_str().is_some_and(|s| s.ends_with('Z')), "{status}");
    assert_eq!(daemon["engine"], "connected", "{status}");
    let problems = daemon["problems"].to_string();
    assert!(
        problems.contains("dbt-lfhp-bad") && problems.contains("notaport"),
        "what it cannot enforce: {status}"
    );
    let text = agent.ok(&["status"]);
    assert!(text.contains("daemon: running (pid") && text.contains("last sync 20"), "{text}");
    drop(bad_label);

    let hup = |d: &Daemon| run_ok("kill", &["-HUP", &d.pid().to_string()]);
    let wait_log = |d: &Daemon, what: &str, n: usize| {
        let ok = eventually(Duration::from_secs(20), || d.log().matches(what).count() >= n);
        assert!(ok, "no {what:?} in the log:\n{}", d.log_tail());
    };
    std::fs::write(&rules, "[[rule]]\nports = \"21130/tcp\"\n").unwrap();
    write_config(&config, out.host_if(), &[&rules]);
    let last = d.last_sync();
    hup(&d);
    wait_log(&d, "SIGHUP: config reloaded", 1);
    d.wait_sync_after(last.as_deref(), Duration::from_secs(20)).unwrap();
    let after = agent.json(&["list"]);
    assert!(after.to_string().contains("\"21130/tcp\""), "the rule file's rule: {after}");
    assert!(!connects(&out, out.host_ip(), 21130), "21130 closed after SIGHUP");
    assert!(connects(&out, out.host_ip(), 21131), "21131 still open");
    let saved = std::fs::read_to_string(agent.state_file()).unwrap();
    assert!(saved.contains("21130/tcp"), "saved: {saved}");
    let after_rules = user_rules(&agent);

    // A bad config: nothing changes.
    std::fs::write(&config, format!("uplinks = [{:?}]\nno_such_key = 1\n", out.host_if())).unwrap();
    hup(&d);
    wait_log(&d, "config refused", 1);
    // A good config naming a bad rule file: nothing changes either.
    std::fs::write(&rules, "[[rule]]\nports = \"21131/tcp\"\n[[rule]]\nports = \"nope\"\n").unwrap();
    write_config(&config, out.host_if(), &[&rules]);
    hup(&d);
    wait_log(&d, "config refused", 2);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(user_rules(&agent), after_rules, "bad reloads changed the rules");
    assert!(connects(&out, out.host_ip(), 21131), "21131 still open after the bad rule file");
    assert!(d.exited().is_none(), "the daemon runs on:\n{}", d.log_tail());
    let log = d.log();
    assert!(log.contains("no_such_key") && log.contains(&format!("{}:4", rules.display())), "{log}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Docker subnet of the reboot test (fixed container addresses, so the
/// probes can dial them before the containers exist again).
const REBOOT_NET: &str = "172.30.170";

/// A simulated reboot with `restart=always` containers behind a dialed-port
/// rule on the published port, a `--container` rule and a label rule: the
/// service stops, dockerd stops (and its containers), bpffs and /run are
/// emptied; then, with probes running from both outside namespaces, the
/// service starts first (as systemd orders it) and, once it is ready,
/// dockerd, which brings the containers back. Zero connections to the
/// blocked services on any path through the whole window, some to the
/// control ports, and every rule back.
#[test]
fn a_reboot_with_restart_always_containers_opens_no_window() {
    let mut t = Topology::new("lfb", 170);
    let net = Net::create("dbt-lfb", &format!("{REBOOT_NET}.0/24"), "dbbrlfb");
    t.start_daemon();
    let web = |name: &str, port: u16, last: u8, extra: &[&str]| {
        let ip = format!("{REBOOT_NET}.{last}");
        let mut args = vec!["--restart=always", "--network", net.name(), "--ip", &ip];
        args.extend_from_slice(extra);
        Web::run(name, port, &args)
    };
    let webs = [
        web("dbt-lfb-dialed", 21140, 10, &[]),
        web("dbt-lfb-named", 21142, 11, &[]),
        web("dbt-lfb-label", 21144, 12, &["-l", "tier=lfb-internal"]),
    ];
    t.agent.ok(&["block", "21140/tcp"]);
    t.agent.ok(&["block", "--container", "dbt-lfb-named", "80/tcp"]);
    t.agent.ok(&["block", "--label", "tier=lfb-internal", "80/tcp"]);
    for w in &webs {
        t.assert_opens(w, CONTROL_PORT, "before the reboot");
        t.assert_paths(w, 80, false, "before the reboot");
    }
    let before = user_rules(&t.agent);
    assert_eq!(before.len(), 3, "{before:?}");

    // The reboot: the service and dockerd (with its containers) stop,
    // bpffs and /run are empty afterwards.
    t.stop_daemon();
    let dockerd = Dockerd::with_live_restore(false);
    dockerd.stop();
    // As at a shutdown: the containers are gone, not kept by live-restore.
    let left = run("ip", &["-o", "link", "show", "master", "dbbrlfb"]);
    assert!(String::from_utf8_lossy(&left.stdout).trim().is_empty(), "veths left: {}", describe(&left));
    t.agent.ok(&["detach"]);
    let _ = std::fs::remove_file(PinDir::new(t.agent.pin_dir()).daemon_state());
    assert!(!Path::new(t.agent.pin_dir()).exists());

    let (xh, ph) = (t.xdp.host_ip().to_string(), t.plain.host_ip().to_string());
    let mut xdp_targets = vec![];
    let mut plain_targets = vec![];
    for (i, port) in [21140u16, 21142, 21144].into_iter().enumerate() {
        let ip = format!("{REBOOT_NET}.{}", 10 + i);
        xdp_targets.extend([
            (xh.clone(), port),
            (ip.clone(), 80),
            (xh.clone(), port + 1),
            (ip, CONTROL_PORT),
        ]);
        plain_targets.extend([(ph.clone(), port), (ph.clone(), port + 1)]);
    }
    let every = Duration::from_millis(20);
    let xdp = ProbeLoop::start(&t.xdp, &xdp_targets, every, Duration::from_secs(240));
    let plain = ProbeLoop::start(&t.plain, &plain_targets, every, Duration::from_secs(240));

    let mut notify = NotifySocket::bind("lfb");
    let began = Instant::now();
    let mut d = spawn(&t.agent, &[t.xdp.host_if()], &[("NOTIFY_SOCKET", notify.path())]);
    notify.wait_for("READY=1", Duration::from_secs(90), &mut d);
    let ready = began.elapsed();
    assert_eq!(user_rules(&t.agent), before, "the rules at READY=1, before dockerd");
    Dockerd::start();
    for w in &webs {
        let back = eventually(Duration::from_secs(60), || t.paths(w, CONTROL_PORT) == [true; 3]);
        assert!(back, "{} did not come back on its control port\n{}", w.name(), d.log_tail());
    }
    let serving = began.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let (xdp, plain) = (xdp.finish(), plain.finish());
    println!("reboot: ready after {ready:?}, containers serving after {serving:?}");

    let mut breaches = vec![];
    let mut controls = vec![];
    let named = xdp_targets.iter().zip(&xdp).chain(plain_targets.iter().zip(&plain));
    for ((addr, port), tally) in named {
        println!("  {addr}:{port}: {tally:?}");
        let control = *port == CONTROL_PORT || port % 2 == 1;
        match control {
            true => controls.push((format!("{addr}:{port}"), *tally)),
            false if tally.ok > 0 => breaches.push((format!("{addr}:{port}"), *tally)),
            false => {}
        }
    }
    assert!(
        breaches.is_empty(),
        "blocked services connected during the reboot: {breaches:?}\n{}",
        d.log_tail()
    );
    let dead: Vec<&(String, Tally)> = controls.iter().filter(|(_, t)| t.ok == 0).collect();
    assert!(dead.is_empty(), "control ports never connected: {dead:?}");
    assert_eq!(user_rules(&t.agent), before, "every rule back");
    for w in &webs {
        t.assert_paths(w, 80, false, "after the reboot");
    }
    drop(d);
    drop(dockerd);
}
