//! The config file and no lockout (issue 10), with the real binary in the
//! real kernel: config errors (`FILE:LINE: why`, exit 2, nothing attached,
//! rules in force stay), the shipped example at the defaults, failsafe
//! ports refused and forced (verbs, rule files, a custom list; packets
//! through an XDP uplink), the deny policy leaving a published failsafe
//! port open, JSON logs, completions and the man page. Names: tags
//! `cf*`, subnets 120-129, ports 21300-21399.

use std::process::Command;
use std::time::Duration;

use dockblock_tests::{
    agent::{Agent, NoEngine},
    describe,
    netns::Outside,
    rig::{connects, host_service, topology::eventually},
    scratch::{Env, Scratch},
};

/// The rules of `list --json` as (scope, spec) pairs.
fn rules(agent: &Agent) -> Vec<(String, String)> {
    let list = agent.json(&["list"]);
    let all = list["rules"].as_array().unwrap_or_else(|| panic!("list --json: {list}"));
    all.iter().map(|r| (r["scope"].as_str().unwrap().into(), r["spec"].as_str().unwrap().into())).collect()
}

fn pair(scope: &str, spec: &str) -> (String, String) {
    (scope.into(), spec.into())
}

/// The links of `status --json` as (interface, hook, link and program id).
fn links(agent: &Agent) -> Vec<(String, String, String)> {
    let status = agent.json(&["status"]);
    let all = status["links"].as_array().unwrap_or_else(|| panic!("status --json: {status}"));
    let mut l: Vec<_> = all
        .iter()
        .map(|l| {
            (
                l["interface"].to_string(),
                l["hook"].to_string(),
                format!("{} {}", l["link_id"], l["program_id"]),
            )
        })
        .collect();
    l.sort();
    l
}

/// Each bad file: `config check` and `run --config` exit 2 with
/// `FILE:LINE: why`; the agent attached before keeps its links and rules
/// (a port it blocks stays blocked), a fresh pin folder is not created.
#[test]
fn config_errors_name_the_line_and_change_nothing() {
    let _no_engine = NoEngine::set();
    let dir = Scratch::new("cferr");
    let _env = Env::set(&[("DOCKBLOCK_STATE_DIR", dir.path())]);
    let out = Outside::new("cferr", 120);
    let agent = Agent::new("cferr");
    agent.ok(&["attach", out.host_if(), "--no-bridge"]);
    agent.ok(&["block", "21300/tcp"]);
    let host = out.host_ip().to_string();
    let _svc = host_service(&host, 21300, 120);
    let _open = host_service(&host, 21301, 120);
    assert!(!connects(&out, &host, 21300) && connects(&out, &host, 21301), "rig: 21300 blocked, 21301 open");
    let before = (rules(&agent), links(&agent));

    let fresh = Agent::new("cferrnew");
    for (name, text, line, why) in [
        ("unknown.toml", "uplinks = []\n\nuplnks = [\"eth1\"]\n", 3, "unknown field `uplnks`"),
        (
            "value.toml",
            "# a comment\nxdp_mode = \"driver\"\n",
            2,
            "xdp_mode `driver`: expected auto, native or skb",
        ),
        ("type.toml", "log_format = \"text\"\nlog_rate = \"fast\"\n", 2, "invalid type"),
        ("range.toml", "[capacities]\nmax_rules = 0\n", 2, "max_rules = 0: expected 1 to 1000000"),
        ("bridges.toml", "bridges = [\"docker0\"]\n", 1, "only \"auto\" is supported"),
    ] {
        let file = dir.write(name, text);
        let want = format!("{file}:{line}: ");
        let err = agent.fails(&["config", "check", &file], 2);
        assert!(err.contains(&want) && err.contains(why), "config check {name}: want {want}{why}: {err}");
        assert_eq!(err.lines().count(), 1, "one error line: {err}");
        let err = agent.fails(&["run", "--config", &file, out.host_if()], 2);
        assert!(err.contains(&want) && err.contains(why), "run --config {name}: {err}");
        // The verbs read the same file: a bad one stops them too.
        let err = agent.fails(&["--config", &file, "block", "21302/tcp"], 2);
        assert!(err.contains(&want), "block with {name}: {err}");
        let err = fresh.fails(&["--config", &file, "run", out.host_if()], 2);
        assert!(err.contains(&want), "{err}");
        assert!(
            !std::path::Path::new(fresh.pin_dir()).exists(),
            "run with {name} created {}",
            fresh.pin_dir()
        );
    }
    let missing = format!("{}/absent.toml", dir.path());
    for args in [vec!["config", "check", missing.as_str()], vec!["--config", &missing, "run", out.host_if()]]
    {
        let err = agent.fails(&args, 2);
        assert!(err.contains(&format!("{missing}: no such config file")), "{args:?}: {err}");
    }
    let env = Env::set(&[("DOCKBLOCK_CONFIG", &missing)]);
    let err = agent.fails(&["list"], 2);
    assert!(err.contains("no such config file"), "$DOCKBLOCK_CONFIG names a missing file: {err}");
    drop(env);

    assert_eq!((rules(&agent), links(&agent)), before, "a refused config changed the kernel state");
    assert!(!connects(&out, &host, 21300), "21300 must stay blocked");
    assert!(connects(&out, &host, 21301), "21301 must stay open");
}

/// `packaging/dockblock.toml` passes `config check`, gives exactly the
/// settings of an empty file (every key at its default), and names every
/// key `config check` prints.
#[test]
fn the_example_config_is_every_key_at_its_default() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/dockblock.toml");
    let dir = Scratch::new("cfex");
    let empty = dir.write("empty.toml", "");
    let agent = Agent::new("cfex");
    let shown = |file: &str| {
        let out = agent.ok(&["config", "check", file]);
        let (head, body) = out.split_once('\n').unwrap_or_else(|| panic!("config check {file}: {out}"));
        assert!(head.contains(": ok"), "{head}");
        body.to_string()
    };
    let (got, defaults) = (shown(example), shown(&empty));
    assert_eq!(got, defaults, "the example is not the defaults");
    let text = std::fs::read_to_string(example).expect("read the example");
    let keys: Vec<&str> = defaults.lines().filter_map(|l| l.split_once(" = ").map(|(k, _)| k)).collect();
    assert!(keys.len() >= 18, "config check prints every key: {defaults}");
    for key in keys {
        let named = text.lines().any(|l| {
            let l = l.trim_start_matches('#').trim_start();
            l.starts_with(&format!("{key} = "))
        });
        assert!(named, "packaging/dockblock.toml does not show `{key}`");
    }
    assert!(text.contains("[capacities]"), "the capacities table");
}

/// `block` of a failsafe port is refused (exit 2, the hint, nothing
/// changed; the port still answers through the XDP uplink) unless
/// `--force`; a rule file needs `force = true`; the config's own list
/// replaces the default 22/tcp.
#[test]
fn failsafe_ports_are_refused_unless_forced() {
    let _no_engine = NoEngine::set();
    let dir = Scratch::new("cffs");
    let _env = Env::set(&[("DOCKBLOCK_STATE_DIR", dir.path())]);
    let out = Outside::new("cffs", 121);
    let agent = Agent::new("cffs");
    agent.ok(&["attach", out.host_if(), "--no-bridge"]);

    for spec in ["22/tcp", "1-1024/tcp", "22"] {
        let err = agent.fails(&["block", spec], 2);
        assert!(
            err.contains("failsafe port 22/tcp")
                && err.contains("--force")
                && err.contains("nothing changed"),
            "block {spec}: {err}"
        );
    }
    // Not dialed-port closers: another protocol, dry-run, a container port.
    agent.ok(&["block", "22/udp"]);
    agent.ok(&["block", "22/tcp", "--dry-run"]);
    agent.ok(&["block", "22/tcp", "--container-port"]);
    agent.ok(&["unblock", "22/udp"]);
    agent.ok(&["unblock", "22/tcp", "--container-port"]);
    assert_eq!(rules(&agent), [pair("dialed", "22/tcp")], "only the dry-run rule");
    agent.ok(&["unblock", "22/tcp"]);
    agent.ok(&["block", "22/tcp", "--force"]);
    assert_eq!(rules(&agent), [pair("dialed", "22/tcp")]);
    agent.ok(&["unblock", "22/tcp"]);

    // Rule files: refused at the rule's line, unless `force = true`.
    let plain = dir.write("plain.toml", "[[rule]]\nports = \"80/tcp\"\n\n[[rule]]\nports = \"22/tcp\"\n");
    let err = agent.fails(&["apply", &plain], 2);
    assert!(
        err.contains(&format!("{plain}:4: "))
            && err.contains("failsafe port 22/tcp")
            && err.contains("force = true"),
        "{err}"
    );
    assert_eq!(rules(&agent), [], "a refused file changes nothing");
    let forced = dir
        .write("forced.toml", "[[rule]]\nports = \"80/tcp\"\n\n[[rule]]\nports = \"22/tcp\"\nforce = true\n");
    agent.ok(&["apply", &forced]);
    assert_eq!(rules(&agent), [pair("dialed", "80/tcp"), pair("dialed", "22/tcp")]);
    // What `export` writes applies again: a rule in force was forced once.
    let exported = dir.write("exported.toml", &agent.ok(&["export"]));
    let said = agent.ok(&["apply", &exported]);
    assert!(said.starts_with("unchanged"), "{said}");
    agent.ok(&["apply", &dir.write("none.toml", "")]);

    // A list of the config's own: 22/tcp is free to block, 21305/tcp is not.
    let config = dir.write("dockblock.toml", "failsafe = [\"21305/tcp\"]\n");
    let host = out.host_ip().to_string();
    let _svc = host_service(&host, 21305, 120);
    assert!(connects(&out, &host, 21305), "rig: 21305 answers");
    let _cfg = Env::set(&[("DOCKBLOCK_CONFIG", &config)]);
    agent.ok(&["block", "22/tcp"]);
    let err = agent.fails(&["block", "21300-21310/tcp"], 2);
    assert!(err.contains("failsafe port 21305/tcp") && err.contains(&config), "names the list's file: {err}");
    assert_eq!(rules(&agent), [pair("dialed", "22/tcp")]);
    assert!(connects(&out, &host, 21305), "a refused block leaves the port open");
    agent.ok(&["block", "21305/tcp", "--force"]);
    assert!(!connects(&out, &host, 21305), "--force closes it");
}

/// `policy = "deny"` in the daemon's config closes published ports from
/// outside but not one published on a failsafe port (host 22/tcp mapped
/// to the container), on the XDP uplink and the one without XDP; SIGHUP
/// with `failsafe = []` closes it too.
#[test]
fn the_deny_policy_leaves_a_published_failsafe_port_open() {
    use dockblock_tests::rig::topology::{http, Topology, Web};
    let dir = Scratch::new("cfpol");
    let config = dir.write("dockblock.toml", "policy = \"deny\"\n");
    let mut t = Topology::new("cfpol", 122);
    t.start_daemon_env(&[("DOCKBLOCK_CONFIG", &config), ("DOCKBLOCK_STATE_DIR", dir.path())]);
    // 21310 -> 80, 21311 -> 81 and 22 -> 81.
    let web = Web::run("dbt-cfpol", 21310, &["-p", "22:81"]);
    t.wait_reviewed(&web);
    let ports = |port| [&t.xdp, &t.plain].map(|o| http(o, None, o.host_ip(), port));
    let closed = eventually(Duration::from_secs(10), || ports(21310) == [false; 2]);
    assert!(closed, "policy deny: 21310 reachable {:?}\n{}", ports(21310), t.context());
    assert_eq!(ports(22), [true; 2], "published failsafe port 22 must stay open\n{}", t.context());
    // XDP judges the host port: 21311 is closed there. Past the uplink the
    // container port 81 is judged, and it stays open for 22's sake.
    assert!(!http(&t.xdp, None, t.xdp.host_ip(), 21311), "21311 on the XDP uplink\n{}", t.context());

    std::fs::write(&config, "policy = \"deny\"\nfailsafe = []\n").expect("rewrite the config");
    // SAFETY: the daemon is our child, alive.
    assert_eq!(unsafe { libc::kill(t.daemon().pid() as libc::pid_t, libc::SIGHUP) }, 0);
    let closed = eventually(Duration::from_secs(15), || ports(22) == [false; 2]);
    assert!(closed, "failsafe = [] then SIGHUP: 22 reachable {:?}\n{}", ports(22), t.log());
    assert!(t.log().contains("SIGHUP: config reloaded"), "{}", t.log());
    drop(web);
}

/// `--log-format json`: every line the daemon writes is one JSON object;
/// a change applied to the kernel is one line with its numbers (the rules
/// a labelled container brings), a hook one line per interface.
#[test]
fn json_logs_are_one_object_per_line() {
    use dockblock_testkit::daemon::Daemon;
    use dockblock_tests::rig::topology::{Topology, Web};
    let dir = Scratch::new("cflog");
    let t = Topology::new("cflog", 124);
    let bin = std::path::Path::new(t.agent.bin());
    let env = [("DOCKBLOCK_STATE_DIR", dir.path()), ("RUST_LOG", "info")];
    let mut daemon =
        Daemon::start_env(bin, t.agent.pin_dir(), &[t.xdp.host_if(), "--log-format", "json"], &env)
            .unwrap_or_else(|e| panic!("daemon did not start: {e}"));
    let web = Web::run("dbt-cflog", 21315, &["-l", "dockblock.block=80/tcp"]);
    let committed = eventually(Duration::from_secs(15), || daemon.log().contains("rules committed"));
    assert!(committed, "no `rules committed` line for the labelled container:\n{}", daemon.log());
    drop(web);
    let status = daemon.stop();
    assert!(status.is_some_and(|s| s.success()), "SIGTERM: {status:?}");
    let log = daemon.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\nlog:\n{log}")))
        .collect();
    for l in &lines {
        assert!(
            l["timestamp"].is_string() && l["level"].is_string() && l["fields"]["message"].is_string(),
            "{l}"
        );
    }
    let with = |msg: &str| lines.iter().filter(|l| l["fields"]["message"] == msg).collect::<Vec<_>>();
    let uplink = with("hook attached");
    assert!(
        uplink.iter().any(|l| l["fields"]["interface"] == t.xdp.host_if()),
        "hook attached lines: {uplink:?}"
    );
    assert_eq!(with("engine connected: full sync").len(), 1, "{log}");
    let commits = with("rules committed");
    assert!(commits.iter().any(|l| l["fields"]["added"].as_u64() >= Some(1)), "added counted: {commits:?}");
}

/// `completions bash|zsh|fish` name every verb of `--help` (bash's script
/// passes `bash -n`); `man` is roff with a section per verb.
#[test]
fn completions_and_man_name_every_verb() {
    let agent = Agent::new("cfcomp");
    let help = agent.ok(&["--help"]);
    let verbs: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|v| *v != "help")
        .collect();
    for v in ["attach", "block", "apply", "confirm", "run", "config", "completions"] {
        assert!(verbs.contains(&v), "--help lists {v}: {verbs:?}");
    }
    let dir = Scratch::new("cfcomp");
    for shell in ["bash", "zsh", "fish"] {
        let script = agent.ok(&["completions", shell]);
        for v in &verbs {
            assert!(script.contains(v), "{shell} completions lack `{v}`");
        }
        if shell == "bash" {
            let file = dir.write("dockblock-agent.bash", &script);
            let out = Command::new("bash").args(["-n", &file]).output().expect("bash");
            assert!(out.status.success(), "bash -n: {}", describe(&out));
        }
    }
    let man = agent.ok(&["man"]);
    assert!(man.starts_with(".ie") || man.starts_with(".TH"), "roff: {}", &man[..man.len().min(200)]);
    assert!(man.contains(".TH dockblock-agent"), "title");
    for v in &verbs {
        assert!(man.contains(&format!(".SH \"dockblock-agent {v}\"")), "man lacks a section for {v}");
    }
    let err = agent.fails(&["completions", "tcsh"], 2);
    assert!(err.contains("invalid value"), "{err}");
}

/// Fleets: the same file twice changes nothing the second time and says
/// so (`--detailed-exitcode`: 3, then 0); a bad file is `FILE:LINE`, exit
/// 2, and every rule stays in force (a blocked port still drops).
#[test]
fn apply_is_idempotent_and_a_bad_file_changes_nothing() {
    let _no_engine = NoEngine::set();
    let dir = Scratch::new("cfapp");
    let _env = Env::set(&[("DOCKBLOCK_STATE_DIR", dir.path())]);
    let out = Outside::new("cfapp", 123);
    let agent = Agent::new("cfapp");
    agent.ok(&["attach", out.host_if(), "--no-bridge"]);
    let file = dir.write(
        "fleet.toml",
        "[[rule]]\nports = \"21320/tcp\"\n\n[[rule]]\nports = \"21321-21323/udp\"\nallow_from = [\"10.0.0.0/8\"]\n",
    );
    let first = agent.run(&["apply", &file, "--detailed-exitcode"]);
    assert_eq!(first.status.code(), Some(3), "changed: {}", describe(&first));
    assert!(String::from_utf8_lossy(&first.stdout).starts_with(&format!("applied {file}: 2 rules (2 added")));
    let second = agent.run(&["apply", &file, "--detailed-exitcode"]);
    assert_eq!(second.status.code(), Some(0), "unchanged: {}", describe(&second));
    let said = String::from_utf8_lossy(&second.stdout);
    assert!(said.starts_with(&format!("unchanged: {file} is the rule set already (2 rules)")), "{said}");
    // Without the flag a change is exit 0, as every verb.
    let other = dir.write("other.toml", "[[rule]]\nports = \"21320/tcp\"\n");
    assert!(agent.ok(&["apply", &other]).contains("1 removed"));
    assert_eq!(agent.run(&["apply", &file, "--detailed-exitcode"]).status.code(), Some(3));
    let before = agent.ok(&["export"]);

    let host = out.host_ip().to_string();
    let _svc = host_service(&host, 21320, 120);
    assert!(!connects(&out, &host, 21320), "21320 is blocked");
    for (name, text, line) in [
        ("bad-port.toml", "[[rule]]\nports = \"21330/tcp\"\n\n[[rule]]\nports = \"0/tcp\"\n", 5),
        ("bad-key.toml", "[[rule]]\nports = \"21330/tcp\"\nlgo = true\n", 3),
        ("bad-toml.toml", "[[rule]\nports = \"21330/tcp\"\n", 1),
    ] {
        let bad = dir.write(name, text);
        let err = agent.fails(&["apply", &bad, "--detailed-exitcode"], 2);
        assert!(err.contains(&format!("{bad}:{line}: ")), "{name}: {err}");
        assert_eq!(agent.ok(&["export"]), before, "{name} changed the rules");
    }
    assert!(!connects(&out, &host, 21320), "21320 must stay blocked");
}

/// `apply FILE --confirm 3s` from a shell whose whole process group is
/// then SIGKILLed: the detached reverter puts the set from before back at
/// the deadline (`list --json`, and the web port through the XDP uplink
/// answers again). `confirm` in time keeps the new set; `confirm` with
/// nothing pending says so.
#[test]
fn apply_confirm_reverts_when_the_shell_dies_and_confirm_keeps() {
    use dockblock_tests::rig::Rig;
    use std::os::unix::process::CommandExt as _;
    let dir = Scratch::new("cfcnf");
    let _env = Env::set(&[("DOCKBLOCK_STATE_DIR", dir.path())]);
    let rig = Rig::new("cfcnf", 125, 21340);
    rig.attach();
    let agent = &rig.agent;
    let err = agent.fails(&["confirm"], 1);
    assert!(err.contains("nothing to confirm"), "{err}");
    agent.ok(&["block", "21341/tcp"]);
    let before = rules(agent);
    assert!(rig.reachable(), "the web port is open before");
    let closing = dir.write("closing.toml", "[[rule]]\nports = \"21340/tcp\"\n");

    let said = dir.path().to_string() + "/apply.out";
    let line = format!(
        "'{}' --pin-dir '{}' apply '{closing}' --confirm 3s > '{said}' 2>&1; sleep 60",
        agent.bin(),
        agent.pin_dir()
    );
    let mut shell = Command::new("sh");
    shell.args(["-c", &line]).process_group(0);
    let mut shell = shell.spawn().expect("sh");
    let applied = eventually(Duration::from_secs(20), || {
        std::fs::read_to_string(&said).is_ok_and(|s| s.contains("dockblock-agent confirm"))
    });
    // SAFETY: the group of our own child (process_group(0)).
    unsafe { libc::kill(-(shell.id() as libc::pid_t), libc::SIGKILL) };
    let _ = shell.wait();
    assert!(applied, "apply --confirm did not finish: {:?}", std::fs::read_to_string(&said));
    assert_eq!(rules(agent), [pair("dialed", "21340/tcp")], "the new set is live");
    assert!(!rig.reachable(), "21340 is closed by the applied set");
    let back = eventually(Duration::from_secs(20), || rules(agent) == before);
    assert!(back, "not reverted after the deadline: {:?}", rules(agent));
    assert!(rig.reachable(), "the set from before is back: 21340 answers");
    let err = agent.fails(&["confirm"], 1);
    assert!(err.contains("too late to confirm") || err.contains("nothing to confirm"), "{err}");

    let out = agent.ok(&["apply", &closing, "--confirm", "5s"]);
    assert!(out.contains("run `dockblock-agent confirm` within 5s"), "{out}");
    let kept = agent.ok(&["confirm"]);
    assert!(kept.starts_with(&format!("confirmed {closing}")), "{kept}");
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(rules(agent), [pair("dialed", "21340/tcp")], "confirmed: kept past the deadline");
    assert!(!rig.reachable(), "21340 stays closed");
    let err = agent.fails(&["confirm"], 1);
    assert!(err.contains("nothing to confirm"), "{err}");
}
