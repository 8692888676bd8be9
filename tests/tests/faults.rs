//! Faults and privileges, with the real CLI on a veth uplink (no Docker):
//! commands killed (SIGKILL) after every state change and in a storm of
//! parallel calls while a probe keeps dialing a port that stays blocked,
//! `block` racing `detach`, pins removed or unmounted behind dockblock's
//! back, renamed and deleted interfaces, an unprivileged user, map reuse
//! checks, rule file limits and a 65,535-rule apply.
//!
//! Needs root; run serially:
//! `cargo test -p dockblock-tests --test faults -- --test-threads=1`

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use aya::maps::{Array, Map, MapData};
use dockblock_agent::{
    paths::PinDir,
    rules::Scope,
    store::{open_pinned_as, Access},
};
use dockblock_common::{map_names, port_index, proto, Config, PortRule};
use dockblock_tests::{
    agent::Agent,
    describe,
    netns::Outside,
    rig::{connects, host_service},
    run, run_ok,
};

const KILL_ENV: &str = "DOCKBLOCK_TEST_KILL_AFTER";
const PAUSE_ENV: &str = "DOCKBLOCK_TEST_PAUSE_AFTER";
/// Blocked before and after every command the tests kill.
const GUARDED: u16 = 7700;
/// Never blocked: proves the probe can connect at all.
const CONTROL: u16 = 7701;

/// Dials GUARDED and CONTROL from the outside namespace every few ms (50 ms
/// connect timeout) until stopped; counts the connections that got through.
struct Probe(Option<Child>);

const PROBE_PY: &str = r#"
import select, signal, socket, sys, time
host, guarded, control, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
end = time.time() + secs
ok = {guarded: 0, control: 0}
tries = 0
def dial(ports, wait=0.02):
    # Several non-blocking connects at once; a dropped SYN never completes.
    socks = []
    for port in ports:
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex((host, port))
        socks.append((s, port))
    deadline = time.time() + wait
    pending = [s for s, _ in socks]
    while pending and time.time() < deadline:
        _, w, _ = select.select([], pending, [], max(0, deadline - time.time()))
        pending = [s for s in pending if s not in w]
    for s, port in socks:
        if s not in pending and s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
            ok[port] += 1
        s.close()
while not stop and time.time() < end:
    dial([guarded] * 4 + ([control] if tries % 16 == 0 else []))
    tries += 4
    time.sleep(0.002)
print(ok[guarded], ok[control], tries, flush=True)
"#;

impl Probe {
    fn start(outside: &Outside, secs: u32) -> Probe {
        let child = Command::new("ip")
            .args(["netns", "exec", outside.name(), "/usr/bin/python3", "-c", PROBE_PY])
            .args([outside.host_ip(), &GUARDED.to_string(), &CONTROL.to_string(), &secs.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start probe");
        Probe(Some(child))
    }

    /// (connections to GUARDED, connections to CONTROL, attempts on GUARDED).
    fn finish(mut self) -> (u64, u64, u64) {
        let child = self.0.take().expect("running");
        // SAFETY: our own child, not reaped yet.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let out = child.wait_with_output().expect("probe");
        let text = String::from_utf8_lossy(&out.stdout);
        let n: Vec<u64> = text.split_whitespace().filter_map(|w| w.parse().ok()).collect();
        assert_eq!(n.len(), 3, "probe output {text:?}");
        (n[0], n[1], n[2])
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            // SAFETY: our own child, not reaped yet.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
            let _ = child.wait();
        }
    }
}

/// `dockblock-agent <args>` with `env` set and `input` on stdin, 60 s limit.
fn run_env(agent: &Agent, env: &[(&str, String)], args: &[&str], input: Option<&str>) -> Output {
    let mut cmd = Command::new("timeout");
    cmd.arg("60").arg(agent.bin()).arg("--pin-dir").arg(agent.pin_dir()).args(args);
    cmd.env(dockblock_testkit::agent::STATE_DIR_ENV, agent.state_dir());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn agent");
    if let Some(text) = input {
        use std::io::Write as _;
        let _ = child.stdin.take().unwrap().write_all(text.as_bytes());
    }
    child.wait_with_output().expect("agent")
}

/// `timeout` reports a child killed by signal N as exit 128 + N.
fn killed(out: &Output) -> bool {
    use std::os::unix::process::ExitStatusExt as _;
    out.status.code() == Some(128 + libc::SIGKILL) || out.status.signal() == Some(libc::SIGKILL)
}

/// The rule set as "scope spec options", from `list --json`.
fn rule_set(agent: &Agent) -> BTreeSet<String> {
    let list = agent.json(&["list"]);
    list["rules"]
        .as_array()
        .unwrap_or_else(|| panic!("list --json: {list}"))
        .iter()
        .map(|r| format!("{} {} {} {}", r["scope"], r["spec"], r["allow_from"], r["dry_run"]))
        .collect()
}

fn rule_file(rules: &[&str]) -> String {
    rules.iter().map(|r| format!("[[rule]]\n{r}\n")).collect()
}

/// The live generation's slots for `watch`, read straight from the pins.
fn live_slots(pin_dir: &str, watch: &[(Scope, u32, u16)]) -> Vec<PortRule> {
    let open = |name: &str| {
        let data = MapData::from_pin(format!("{pin_dir}/maps/{name}")).expect("pinned map");
        Map::from_map_data(data).expect("map")
    };
    let config: Array<MapData, Config> = Array::try_from(open(map_names::CONFIG)).unwrap();
    let generation = config.get(&0, 0).unwrap().generation & 1;
    let slots: Array<MapData, PortRule> = Array::try_from(open(map_names::PORT_RULES)).unwrap();
    watch
        .iter()
        .map(|(scope, p, port)| slots.get(&port_index(generation, scope.raw(), *p, *port), 0).unwrap())
        .collect()
}

/// Every (dialed, tcp/udp, port) slot of `ports`.
fn dialed(ports: impl IntoIterator<Item = u16>) -> Vec<(Scope, u32, u16)> {
    ports.into_iter().flat_map(|p| [(Scope::Dialed, proto::TCP, p), (Scope::Dialed, proto::UDP, p)]).collect()
}

/// After a kill, `status` is healthy or names, for each problem, what to run.
fn status_says_what_to_run(agent: &Agent, context: &str) -> bool {
    let status = agent.json(&["status"]);
    if status["health"] == "healthy" {
        assert!(status["problems"].as_array().unwrap().is_empty(), "{context}: {status}");
        return true;
    }
    assert_eq!(status["health"], "unhealthy", "{context}: {status}");
    let problems = status["problems"].as_array().unwrap();
    assert!(!problems.is_empty(), "{context}: unhealthy without a problem: {status}");
    for p in problems {
        assert!(p["run"].as_str().is_some_and(|r| r.contains("dockblock-agent")), "{context}: {p}");
    }
    false
}

/// After a kill: `status` says healthy, or what to run; that is run, each
/// command once, and `status` must then be healthy.
fn after_kill(agent: &Agent, context: &str) {
    if !status_says_what_to_run(agent, context) {
        do_what_status_says(agent, context);
    }
}

/// Runs what `status` says to run, each command once, and asserts that
/// `status` is healthy afterwards.
fn do_what_status_says(agent: &Agent, context: &str) {
    let status = agent.json(&["status"]);
    let mut runs: Vec<String> = status["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["run"].as_str().unwrap().to_string())
        .collect();
    runs.dedup();
    for run in runs {
        let words: Vec<&str> = run.split_whitespace().collect();
        assert!(words[0].ends_with("dockblock-agent"), "{context}: run {run:?}");
        let mut args = &words[1..];
        if args.first() == Some(&"--pin-dir") {
            args = &args[2..]; // the attach note's own command line
        }
        agent.ok(args);
    }
    assert_healthy(agent, &format!("{context}, then what status said to run"));
}

fn assert_healthy(agent: &Agent, context: &str) {
    let status = agent.json(&["status"]);
    assert_eq!(status["health"], "healthy", "{context}: {status}");
}

/// One command, killed after its 1st, 2nd, ... state change until it
/// completes. Before each run `setup` restores the old state; after each
/// kill the live generation must be exactly the old or the new one, `status`
/// must say healthy or what to run, and after `repair` the rule set must be
/// the old or the new one with a healthy status. Returns the kill points.
fn kill_at_every_step(
    agent: &Agent,
    setup: &dyn Fn(),
    args: &[&str],
    input: Option<&str>,
    watch: &[(Scope, u32, u16)],
) -> usize {
    setup();
    let (old_rules, old_slots) = (rule_set(agent), live_slots(agent.pin_dir(), watch));
    let out = run_env(agent, &[], args, input);
    assert!(out.status.success(), "{args:?}: {}", describe(&out));
    let (new_rules, new_slots) = (rule_set(agent), live_slots(agent.pin_dir(), watch));
    for n in 1.. {
        setup();
        assert_eq!(rule_set(agent), old_rules, "setup before kill {n} of {args:?}");
        let out = run_env(agent, &[(KILL_ENV, n.to_string())], args, input);
        let context = format!("{args:?} killed after state change {n}");
        if !killed(&out) {
            assert!(out.status.success(), "{args:?} with {n} > its changes: {}", describe(&out));
            assert_eq!(rule_set(agent), new_rules, "{args:?} completed");
            return n - 1;
        }
        let slots = live_slots(agent.pin_dir(), watch);
        assert!(slots == old_slots || slots == new_slots, "{context}: live generation is a mix: {slots:?}");
        after_kill(agent, &context);
        let rules = rule_set(agent);
        let slots = live_slots(agent.pin_dir(), watch);
        assert!(
            (rules == old_rules && slots == old_slots) || (rules == new_rules && slots == new_slots),
            "{context}, then what status said: {rules:?} with {slots:?}"
        );
    }
    unreachable!()
}

/// Block, unblock, apply, re-attach and detach of one interface, each killed
/// at every state change, while a probe dials the guarded port all along.
#[test]
fn sigkill_at_every_state_change_leaves_the_old_or_the_new_state() {
    let a = Outside::new("fka", 170);
    let b = Outside::new("fkb", 171);
    let agent = Agent::new("fkill");
    let _guarded = host_service(a.host_ip(), GUARDED, 300);
    let _control = host_service(a.host_ip(), CONTROL, 300);
    agent.ok(&["attach", a.host_if(), "--no-bridge"]);
    agent.ok(&["block", &format!("{GUARDED}/tcp")]);
    assert!(!connects(&a, a.host_ip(), GUARDED) && connects(&a, a.host_ip(), CONTROL), "rig");
    let probe = Probe::start(&a, 300);
    let started = Instant::now();
    let guarded = format!("ports = \"{GUARDED}/tcp\"");
    let restore = |rules: &[&str]| {
        let out = agent.run_with_input(&["apply", "-"], &rule_file(rules));
        assert!(out.status.success(), "restore: {}", describe(&out));
    };
    let mut points = Vec::new();

    let base = [guarded.as_str()];
    let watch = dialed([GUARDED, 7710, 7711, 7720]);
    let n =
        kill_at_every_step(&agent, &|| restore(&base), &["block", "7710-7711/tcp", "7720/udp"], None, &watch);
    points.push(("block", n));

    let split = [guarded.as_str(), "ports = \"7730-7732/tcp\""];
    let watch = dialed([GUARDED, 7730, 7731, 7732]);
    let n = kill_at_every_step(&agent, &|| restore(&split), &["unblock", "7731/tcp"], None, &watch);
    points.push(("unblock", n));

    let before = [guarded.as_str(), "ports = \"7750/tcp\"", "ports = \"7760/udp\""];
    let after = rule_file(&[
        &format!("{guarded}\nallow_from = [\"203.0.113.0/24\"]"),
        "ports = \"7770/tcp\"",
        "ports = \"7760/udp\"\ndry_run = true",
    ]);
    let watch = dialed([GUARDED, 7750, 7760, 7770]);
    let n = kill_at_every_step(&agent, &|| restore(&before), &["apply", "-"], Some(&after), &watch);
    points.push(("apply", n));

    let watch = dialed([GUARDED]);
    let attach = ["attach", a.host_if(), "--no-bridge"];
    let n = kill_at_every_step(&agent, &|| restore(&base), &attach, None, &watch);
    points.push(("attach (again)", n));

    // Detach of one interface: its links go (judging first), the rules and
    // the other interface stay.
    let both = || {
        agent.ok(&["repair"]);
        agent.ok(&["attach", a.host_if(), b.host_if(), "--no-bridge"]);
    };
    let n = kill_at_every_step(&agent, &both, &["detach", b.host_if()], None, &watch);
    let links_on_b = |agent: &Agent| {
        let status = agent.json(&["status"]);
        status["links"].as_array().unwrap().iter().filter(|l| l["interface"] == b.host_if()).count()
    };
    for k in 1..=n {
        both();
        let out = run_env(&agent, &[(KILL_ENV, k.to_string())], &["detach", b.host_if()], None);
        assert!(killed(&out), "{}", describe(&out));
        let context = format!("detach {} killed after {k}", b.host_if());
        after_kill(&agent, &context);
        assert!([0, 2].contains(&links_on_b(&agent)), "{context}: all of b's links or none");
    }
    points.push(("detach IFACE", n));

    let (through, control, tries) = probe.finish();
    eprintln!(
        "kill points {points:?}; probe: {tries} dials to {GUARDED} in {:.1} s, {through} got through; {control} to {CONTROL}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(through, 0, "a connection reached the port blocked before and after every command");
    assert!(control > 0, "the probe never reached the open port: it proves nothing");
    assert!(points.iter().all(|(_, n)| *n > 0), "{points:?}");
}

/// The first attach and the full detach, killed at every state change: the
/// next `attach` or `detach` finishes the job, `status` says which to run.
#[test]
fn a_killed_first_attach_or_full_detach_is_finished_by_the_next_one() {
    let c = Outside::new("fkc", 172);
    let agent = Agent::new("fkfirst");
    let attach = ["attach", c.host_if(), "--no-bridge"];
    let mut n = 1;
    loop {
        let out = run_env(&agent, &[(KILL_ENV, n.to_string())], &attach, None);
        if !killed(&out) {
            assert!(out.status.success(), "{}", describe(&out));
            break;
        }
        let context = format!("first attach killed after {n}");
        if Path::new(agent.pin_dir()).exists() {
            status_says_what_to_run(&agent, &context);
        }
        agent.ok(&attach);
        assert_healthy(&agent, &format!("{context}, attached again"));
        let status = agent.json(&["status"]);
        assert_eq!(status["links"].as_array().unwrap().len(), 2, "{context}: {status}");
        agent.ok(&["detach"]);
        n += 1;
    }
    let attach_points = n - 1;

    let _guarded = host_service(c.host_ip(), GUARDED, 600);
    let spec = format!("{GUARDED}/tcp");
    let watch = dialed([GUARDED]);
    let mut n = 1;
    loop {
        if !Path::new(agent.pin_dir()).exists() {
            agent.ok(&attach);
        }
        agent.ok(&["block", &spec]);
        let blocked = live_slots(agent.pin_dir(), &watch);
        let out = run_env(&agent, &[(KILL_ENV, n.to_string())], &["detach"], None);
        if !killed(&out) {
            assert!(out.status.success(), "{}", describe(&out));
            break;
        }
        let context = format!("detach killed after {n}");
        if agent.pin_dir_has_maps() {
            let slots = live_slots(agent.pin_dir(), &watch);
            assert!(slots == blocked || slots == [PortRule::default(); 2], "{context}: {slots:?}");
        }
        let status = agent.json(&["status"]);
        let runs: Vec<&str> =
            status["problems"].as_array().unwrap().iter().filter_map(|p| p["run"].as_str()).collect();
        if status["health"] == "healthy" {
            // Killed after its last change (the journal removed): done.
            assert!(!Path::new(agent.pin_dir()).exists(), "{context}: {status}");
        } else {
            assert!(runs.contains(&"dockblock-agent detach"), "{context}: {status}");
            agent.ok(&["detach"]);
        }
        assert!(!Path::new(agent.pin_dir()).exists(), "{context}: detach again removes everything");
        assert!(!run_ok("ip", &["link", "show", c.host_if()]).contains("xdp"), "{context}: XDP left");
        assert!(connects(&c, c.host_ip(), GUARDED), "{context}: detached, the port is open");
        n += 1;
    }
    eprintln!("kill points: first attach {attach_points}, detach {}", n - 1);
    assert!(attach_points > 0 && n > 1);
}

trait PinDirExt {
    fn pin_dir_has_maps(&self) -> bool;
}

impl PinDirExt for Agent {
    fn pin_dir_has_maps(&self) -> bool {
        [map_names::CONFIG, map_names::PORT_RULES]
            .iter()
            .all(|m| Path::new(&format!("{}/maps/{m}", self.pin_dir())).exists())
    }
}

/// A small xorshift, so the storm needs no crate.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Parallel block/unblock/apply/attach/repair, SIGKILLed at random moments,
/// round after round; then one `repair`: healthy, the guarded rule kept,
/// and no connection got through to it meanwhile.
#[test]
fn a_kill_storm_of_parallel_commands_leaves_a_repairable_state() {
    let e = Outside::new("fks", 173);
    let agent = Agent::new("fkstorm");
    let _guarded = host_service(e.host_ip(), GUARDED, 90);
    let _control = host_service(e.host_ip(), CONTROL, 90);
    agent.ok(&["attach", e.host_if(), "--no-bridge"]);
    agent.ok(&["block", &format!("{GUARDED}/tcp")]);
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let mut rng = Rng(seed | 1);
    let probe = Probe::start(&e, 80);
    let started = Instant::now();
    let (mut rounds, mut kills) = (0, 0);
    while started.elapsed() < Duration::from_secs(15) {
        let mut children = Vec::new();
        for _ in 0..6 {
            let port = (7800 + rng.below(40)).to_string();
            let file = rule_file(&[&format!("ports = \"{GUARDED}/tcp\""), &format!("ports = \"{port}\"")]);
            let mut cmd = match rng.below(6) {
                0 => agent.command(&["block", &port]),
                1 => agent.command(&["unblock", &port]),
                2 => agent.command(&["apply", "-"]),
                3 => agent.command(&["attach", e.host_if(), "--no-bridge"]),
                4 => agent.command(&["block", "--container-port", &port, "--allow-from", "203.0.113.0/24"]),
                _ => agent.command(&["repair"]),
            };
            let mut child = cmd.stdin(Stdio::piped()).spawn().expect("spawn");
            let mut stdin = child.stdin.take().unwrap();
            std::thread::spawn(move || {
                use std::io::Write as _;
                let _ = stdin.write_all(file.as_bytes());
            });
            children.push(child);
        }
        std::thread::sleep(Duration::from_millis(rng.below(120)));
        for child in &mut children {
            if rng.below(2) == 0 {
                // SAFETY: our own child, not reaped yet.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
                kills += 1;
            }
        }
        for child in children {
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            // Refusals (unblock of an open port) are fine; crashes are not.
            assert!(!stderr.contains("panicked"), "{}", describe(&out));
        }
        rounds += 1;
    }
    agent.ok(&["repair"]);
    assert_healthy(&agent, "after the storm and one repair");
    let rules = rule_set(&agent);
    assert!(rules.iter().any(|r| r.contains(&format!("\"{GUARDED}/tcp\""))), "{rules:?}");
    assert!(!connects(&e, e.host_ip(), GUARDED));
    let (through, control, tries) = probe.finish();
    eprintln!("storm: {rounds} rounds, {kills} kills, {tries} dials, {through} through, {control} control");
    assert_eq!(through, 0, "a connection reached the guarded port during the storm");
    assert!(control > 0, "the probe never reached the open port");
}

/// `block` that waits for the lock while `detach` removes the pins must fail
/// with "not attached", never write into unpinned maps and report success.
#[test]
fn block_waiting_for_a_detach_fails_clearly() {
    let r = Outside::new("fkr", 174);
    let agent = Agent::new("fkrace");
    let journal = format!("/run/dockblock/{}.json", agent.pin_dir().trim_matches('/').replace('/', "_"));
    for round in 0..20u64 {
        agent.ok(&["attach", r.host_if(), "--no-bridge"]);
        agent.ok(&["block", "7900/tcp"]);
        // The detach holds the lock and pauses after its first change.
        let pause = format!("1:{}", 50 + 10 * round);
        let mut detach = agent.command(&["detach"]);
        let detach = detach.env(PAUSE_ENV, &pause).spawn().expect("detach");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !Path::new(&journal).exists() {
            assert!(Instant::now() < deadline, "detach never started");
            std::thread::sleep(Duration::from_millis(1));
        }
        let block = agent.command(&["block", "7901/tcp"]).spawn().expect("block");
        let (detach, block) = (detach.wait_with_output().unwrap(), block.wait_with_output().unwrap());
        assert!(detach.status.success(), "round {round}: {}", describe(&detach));
        if block.status.success() {
            // Only possible if the rule went into pinned maps.
            assert!(Path::new(agent.pin_dir()).exists(), "round {round}: block succeeded into unpinned maps");
            assert!(rule_set(&agent).iter().any(|r| r.contains("7901/tcp")));
        } else {
            assert_eq!(block.status.code(), Some(1), "round {round}: {}", describe(&block));
            assert!(String::from_utf8_lossy(&block.stderr).contains("not attached"), "{}", describe(&block));
        }
        assert!(!Path::new(agent.pin_dir()).exists(), "round {round}: the detach came first");
    }
}

/// Pins are root's (0700 folders, 0600 pins); another user with a copy of
/// the binary can neither change nor read rules; reading verbs open maps
/// read-only; wrong owners or modes are reported and fixed by `attach`.
#[test]
fn an_unprivileged_user_can_neither_change_nor_read_rules() {
    let o = Outside::new("fkp", 175);
    let agent = Agent::new("fkpriv");
    agent.ok(&["attach", o.host_if(), "--no-bridge"]);
    agent.ok(&["block", "7950/tcp"]);
    let pins = PinDir::new(agent.pin_dir());
    for dir in [pins.root().to_path_buf(), pins.maps_dir(), pins.links_dir()] {
        let meta = std::fs::metadata(&dir).unwrap();
        assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o7777), (0, 0, 0o700), "{}", dir.display());
        if dir != pins.root() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let meta = entry.as_ref().unwrap().metadata().unwrap();
                let path = entry.unwrap().path();
                assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o600), "{}", path.display());
            }
        }
    }

    // Reading verbs open read-only: the kernel refuses a write through them.
    let mut ro: Array<MapData, PortRule> =
        open_pinned_as(&pins, map_names::PORT_RULES, Access::ReadOnly).expect("read-only open");
    assert!(ro.get(&0, 0).is_ok());
    assert!(ro.set(0, PortRule { rule_id: 9, flags: 0 }, 0).is_err(), "write through a read-only fd");

    let user = User::create(&format!("dbfk{}", std::process::id() % 100_000));
    let copy = format!("{}/dockblock-agent", user.home);
    std::fs::copy(agent.bin(), &copy).unwrap();
    run_ok("chown", &["-R", &user.name, &user.home]);
    let as_user = |argv: &[&str]| {
        let mut full = vec!["--reuid", &user.name, "--regid", &user.name, "--init-groups"];
        full.extend_from_slice(argv);
        run("setpriv", &full)
    };
    let before = rule_set(&agent);
    for args in
        [vec!["block", "7951/tcp"], vec!["unblock", "7950/tcp"], vec!["list"], vec!["status"], vec!["export"]]
    {
        let mut argv = vec![copy.as_str(), "--pin-dir", agent.pin_dir()];
        argv.extend(&args);
        let out = as_user(&argv);
        assert_eq!(out.status.code(), Some(1), "{args:?} as {}: {}", user.name, describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("must run as root") && stderr.lines().count() == 1, "{args:?}: {stderr}");
    }
    // The pins themselves keep the user out, whatever the program does.
    let rules_pin = pins.map(map_names::RULES);
    for argv in [
        vec!["ls", agent.pin_dir()],
        vec!["cat", rules_pin.to_str().unwrap()],
        vec!["bpftool", "map", "dump", "pinned", rules_pin.to_str().unwrap()],
    ] {
        let out = as_user(&argv);
        assert!(!out.status.success(), "{argv:?} as {}: {}", user.name, describe(&out));
    }
    assert_eq!(rule_set(&agent), before, "nothing changed");

    // Wrong owner and modes: reported, and fixed by the next attach.
    let map = pins.map(map_names::CONFIG);
    run_ok("chmod", &["0644", map.to_str().unwrap()]);
    run_ok("chmod", &["0755", agent.pin_dir()]);
    run_ok("chown", &[&user.name, pins.links_dir().to_str().unwrap()]);
    let status = agent.json(&["status"]);
    assert_eq!(status["health"], "unhealthy", "{status}");
    let problem = status["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["what"].as_str().unwrap().contains("0700/0600"));
    assert!(problem.is_some_and(|p| p["run"] == "dockblock-agent repair"), "{status}");
    agent.ok(&["attach", o.host_if(), "--no-bridge"]);
    assert_healthy(&agent, "attach fixed owners and modes");
    assert_eq!(std::fs::metadata(&map).unwrap().mode() & 0o777, 0o600);
}

/// A throw-away system user with its own folder; removed on drop.
struct User {
    name: String,
    home: String,
}

impl User {
    fn create(name: &str) -> User {
        let home = format!("/tmp/{name}");
        let _ = run("userdel", &[name]);
        let _ = std::fs::remove_dir_all(&home);
        run_ok("useradd", &["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name]);
        std::fs::create_dir_all(&home).unwrap();
        User { name: name.to_string(), home }
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = run("userdel", &[&self.name]);
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// Renamed and deleted interfaces and pins removed behind dockblock's back:
/// `status` (text and JSON) says what is wrong and what to run.
#[test]
fn status_reports_renamed_and_deleted_interfaces_and_removed_pins() {
    let agent = Agent::new("fkhealth");
    let renamed = "dbufkren";
    {
        let o = Outside::new("fkh", 176);
        let _svc = host_service(o.host_ip(), 7960, 30);
        agent.ok(&["attach", o.host_if(), "--no-bridge"]);
        agent.ok(&["block", "7960/tcp"]);
        assert_healthy(&agent, "attached");
        run_ok("ip", &["link", "set", o.host_if(), "name", renamed]);
        let status = agent.json(&["status"]);
        assert_eq!(status["health"], "unhealthy", "{status}");
        let links = status["links"].as_array().unwrap();
        assert!(links.iter().all(|l| l["state"] == "renamed" && l["renamed_to"] == renamed), "{status}");
        let runs: Vec<&str> =
            status["problems"].as_array().unwrap().iter().filter_map(|p| p["run"].as_str()).collect();
        assert!(runs.iter().any(|r| r.starts_with(&format!("dockblock-agent attach {renamed}"))), "{status}");
        let text = agent.ok(&["status"]);
        assert!(
            text.contains("health: unhealthy") && text.contains(&format!("now named {renamed}")),
            "{text}"
        );
        assert!(!connects(&o, o.host_ip(), 7960), "the renamed interface is still judged");
        let out = agent.ok(&["attach", renamed, "--no-bridge"]);
        assert!(out.contains("program replaced in the existing link"), "adopted, not stacked: {out}");
        assert_healthy(&agent, "attach under the new name adopted the links");
        assert!(!connects(&o, o.host_ip(), 7960));
        run_ok("ip", &["link", "set", renamed, "name", o.host_if()]);
        agent.ok(&["attach", o.host_if(), "--no-bridge"]);
    } // the namespace and the veth are deleted here
    let status = agent.json(&["status"]);
    assert_eq!(status["health"], "unhealthy", "{status}");
    assert!(status["links"].as_array().unwrap().iter().all(|l| l["state"] == "defunct"), "{status}");
    let gone = status["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["what"].as_str().unwrap().contains("is gone"));
    assert!(gone.is_some_and(|p| p["run"].as_str().unwrap().contains("detach")), "{status}");

    // A map pin removed behind our back.
    std::fs::remove_file(format!("{}/maps/{}", agent.pin_dir(), map_names::RULES)).unwrap();
    let status = agent.json(&["status"]);
    let missing = status["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["what"].as_str().unwrap().contains("missing"));
    assert!(missing.is_some_and(|p| p["what"].as_str().unwrap().contains("RULES")), "{status}");
    let err = agent.fails(&["block", "7961/tcp"], 1);
    assert!(err.contains("not attached"), "{err}");
    agent.ok(&["detach"]);
    assert!(!Path::new(agent.pin_dir()).exists());
}

/// bpffs unmounted under the pin folder: the pins and the links only they
/// held are gone; `status` says so and what to run.
#[test]
fn status_reports_an_unmounted_bpffs() {
    let mount = format!("/tmp/dbfk-bpffs-{}", std::process::id());
    std::fs::create_dir_all(&mount).unwrap();
    run_ok("mount", &["-t", "bpf", "bpf", &mount]);
    let _unmount = Unmount(mount.clone());
    let o = Outside::new("fku", 177);
    // The state folder is the testkit's for this pin folder name (removed
    // with the mount), never the real /var/lib/dockblock.
    let pin_dir = format!("{mount}/dockblock-test-fku");
    let _state = RemoveDir(dockblock_testkit::agent::state_dir(&pin_dir));
    let bin = std::path::PathBuf::from(Agent::new("fkunused").bin());
    let agent_cmd = |args: &[&str]| {
        dockblock_testkit::agent::output(&bin, &pin_dir, Duration::from_secs(30), args)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let out = agent_cmd(&["attach", o.host_if(), "--no-bridge"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(agent_cmd(&["block", "7970/tcp"]).status.success());
    assert!(run_ok("ip", &["link", "show", o.host_if()]).contains("xdp"));
    run_ok("umount", &[&mount]);
    let out = agent_cmd(&["status", "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["health"], "unhealthy", "{status}");
    let p = status["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["what"].as_str().unwrap().contains("bpf filesystem"));
    assert!(p.is_some_and(|p| p["run"].as_str().unwrap().contains("mount -t bpf")), "{status}");
    // The superblock's inodes, and with them the links, are released
    // asynchronously after the unmount.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut xdp_left = true;
    while xdp_left && Instant::now() < deadline {
        xdp_left = run_ok("ip", &["link", "show", o.host_if()]).contains("xdp");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("after umount, XDP still on {}: {xdp_left}", o.host_if());
    assert!(!xdp_left, "the pins held the links: unmounting bpffs detached them");
}

struct Unmount(String);

/// A folder removed on drop.
struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = run("umount", &[&self.0]);
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Pinned maps of another layout (value size, or a fixed size) are refused
/// before anything changes, with what to do.
#[test]
fn pinned_maps_of_another_layout_are_refused() {
    let o = Outside::new("fkm", 178);
    let agent = Agent::new("fkmap");
    agent.ok(&["attach", o.host_if(), "--no-bridge"]);
    let shape = |name: &str| {
        let path = format!("{}/maps/{name}", agent.pin_dir());
        let info: serde_json::Value =
            serde_json::from_str(&run_ok("bpftool", &["map", "show", "pinned", &path, "-j"])).unwrap();
        (
            info["type"].as_str().unwrap().to_string(),
            info["bytes_key"].as_u64().unwrap(),
            info["bytes_value"].as_u64().unwrap(),
            info["max_entries"].as_u64().unwrap(),
        )
    };
    let seen = shape(map_names::SEEN);
    let hook_stats = shape(map_names::HOOK_STATS);
    agent.ok(&["detach"]);
    for (name, (kind, key, value, entries), why) in [
        (map_names::SEEN, (seen.0.clone(), seen.1, seen.2 + 4, seen.3), "value size"),
        (
            map_names::HOOK_STATS,
            (hook_stats.0.clone(), hook_stats.1, hook_stats.2, hook_stats.3 + 1),
            "max entries",
        ),
        (map_names::SEEN, ("hash".to_string(), seen.1, seen.2, seen.3), "type"),
    ] {
        let maps = format!("{}/maps", agent.pin_dir());
        std::fs::create_dir_all(&maps).unwrap();
        let path = format!("{maps}/{name}");
        let mut args = vec!["map", "create", &path, "type", &kind];
        let (key, value, entries) = (key.to_string(), value.to_string(), entries.to_string());
        args.extend(["key", &key, "value", &value, "entries", &entries, "name", name]);
        if kind == "hash" {
            args.extend(["flags", "0"]);
        }
        run_ok("bpftool", &args);
        let err = agent.fails(&["attach", o.host_if(), "--no-bridge"], 1);
        assert!(
            err.contains(&format!("pinned map {name} does not match this release")) && err.contains(why),
            "{err}"
        );
        assert!(err.contains("dockblock-agent detach"), "says what to do: {err}");
        assert!(!run_ok("ip", &["link", "show", o.host_if()]).contains("xdp"), "nothing attached");
        let _ = std::fs::remove_dir_all(agent.pin_dir());
    }
}

/// Rule files: too big or too many rules is a usage error that changes
/// nothing; a 65,535-rule file is all or nothing: refused whole past the
/// capacity (with the hint), refused whole when its last rule is bad, and
/// applied in one switch with the capacity for it.
#[test]
fn rule_files_are_all_or_nothing_up_to_65535_rules() {
    let o = Outside::new("fkf", 179);
    let agent = Agent::new("fkfile");
    let _svc = host_service(o.host_ip(), 7990, 60);
    agent.ok(&["attach", o.host_if(), "--no-bridge"]);
    agent.ok(&["block", "7990/tcp"]);
    let before = rule_set(&agent);

    let err = agent.fails(&["apply", "/dev/zero"], 2);
    assert!(err.contains("larger than 64 MiB"), "{err}");
    let many: String = "[[rule]]\nports = \"1/tcp\"\n".repeat(1_000_001);
    let out = agent.run_with_input(&["apply", "-"], &many);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1000001 rules, more than"), "{}", describe(&out));

    // 22/tcp is the default failsafe port: that rule says `force`.
    let rules: Vec<String> = (1..=65535u32)
        .map(|p| format!("ports = \"{p}/tcp\"{}", if p == 22 { "\nforce = true" } else { "" }))
        .collect();
    let refs: Vec<&str> = rules.iter().map(String::as_str).collect();
    let file = rule_file(&refs);
    let mut bad = rule_file(&refs[..65534]);
    bad.push_str("[[rule]]\nports = \"0/tcp\"\n");
    let out = agent.run_with_input(&["apply", "-"], &bad);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("<stdin>:{}:", 2 * 65535 + 1)), "names the last line: {stderr}");
    assert_eq!(rule_set(&agent), before, "a bad last rule changed something");

    let out = agent.run_with_input(&["apply", "-"], &file);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("rule table full (4095 rules)") && stderr.contains("--max-rules"), "{stderr}");
    assert_eq!(rule_set(&agent), before, "refused whole");
    assert!(!connects(&o, o.host_ip(), 7990));

    agent.ok(&["detach"]);
    agent.ok(&["attach", o.host_if(), "--no-bridge", "--max-rules", "65535"]);
    let started = Instant::now();
    let out = agent.run_with_input(&["apply", "-"], &file);
    let took = started.elapsed();
    assert!(out.status.success(), "{}", describe(&out));
    let started = Instant::now();
    let again = agent.run_with_input(&["apply", "-"], &file);
    let took_again = started.elapsed();
    assert!(String::from_utf8_lossy(&again.stdout).contains("0 added, 0 removed"), "{}", describe(&again));
    eprintln!(
        "apply of 65,535 rules: {:.2} s onto an empty set, {:.2} s unchanged",
        took.as_secs_f64(),
        took_again.as_secs_f64()
    );
    let status = agent.json(&["status"]);
    assert_eq!(status["rules"]["rules"], 65535, "{status}");
    assert_eq!(status["health"], "healthy", "{status}");
    assert!(!connects(&o, o.host_ip(), 7990), "all blocked");
}
