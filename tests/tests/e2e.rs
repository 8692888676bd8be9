//! End-to-end tests: the real agent CLI against real traffic. An "outside"
//! namespace dials the Docker host over a veth (the uplink), Docker DNATs the
//! published port to a busybox container behind docker0.
//!
//! Needs root and a running Docker daemon; run serially:
//! `cargo build -p dockblock-agent && cargo test -p dockblock-tests --test e2e -- --test-threads=1`

use std::path::Path;

use dockblock_tests::agent::Agent;
use dockblock_tests::docker::{self, Container, MARKER};
use dockblock_tests::netns::Outside;
use dockblock_tests::rig::{dropped_packets, dropped_with_derived, links, require_env, rule, Rig};
use dockblock_tests::{describe, run, run_ok};

/// No dockblock involved: checks the test rig itself and its teardown.
#[test]
fn smoke() {
    require_env();
    {
        let out = Outside::new("smk", 10);
        let _web = Container::web("smk", 18081);
        let url = format!("http://{}:18081/", out.host_ip());
        assert!(out.curl_ok(&url, MARKER), "outside cannot reach {url}");
    }
    let netns = run("ip", &["netns", "list"]);
    assert!(!String::from_utf8_lossy(&netns.stdout).contains("dbt-smk"));
    assert!(!run("ip", &["link", "show", "dbusmk"]).status.success());
    assert!(!run("docker", &["container", "inspect", "dbt-smk"]).status.success());
}

/// a. A dialed-port rule drops at the uplink, is listed with a drop count,
/// and unblocking restores traffic. A dialed rule on the container's port
/// does not touch traffic dialed at the published port.
#[test]
fn dialed_port_blocked_at_uplink() {
    let rig = Rig::new("dia", 1, 18080);
    rig.attach();
    assert!(rig.reachable(), "attached without rules must pass traffic");

    rig.agent.ok(&["block", "18080/tcp"]);
    assert!(!rig.reachable(), "18080/tcp blocked, yet outside reached {}", rig.url);
    let text = rig.agent.ok(&["list"]);
    assert!(text.contains("18080/tcp"), "list lacks the rule: {text}");
    let r = rule(&rig.agent, "dialed", "18080/tcp").expect("dialed 18080/tcp in list --json");
    assert!(dropped_packets(&r) > 0, "failed attempt not counted: {r}");

    rig.agent.ok(&["unblock", "18080/tcp"]);
    assert!(rule(&rig.agent, "dialed", "18080/tcp").is_none(), "unblock left the rule");
    assert!(rig.reachable(), "unblocked, yet outside cannot reach {}", rig.url);

    // Port 80 is only the container's port: nobody dials it at the uplink.
    rig.agent.ok(&["block", "80/tcp"]);
    assert!(rig.reachable(), "dialed 80/tcp must not block the published 18080");
}

/// b. A container-port rule drops after DNAT, on docker0, whatever port was
/// published; a container-port rule on the published number does nothing.
#[test]
fn container_port_blocked_at_bridge() {
    let rig = Rig::new("ctr", 2, 18082);
    rig.attach();

    rig.agent.ok(&["block", "--container-port", "80/tcp"]);
    assert!(!rig.reachable(), "container port 80 blocked, yet outside reached {}", rig.url);
    let r = rule(&rig.agent, "container", "80/tcp").expect("container 80/tcp in list --json");
    assert!(dropped_with_derived(&rig.agent, &r) > 0, "failed attempt not counted: {r}");

    rig.agent.ok(&["unblock", "--container-port", "80/tcp"]);
    assert!(rule(&rig.agent, "container", "80/tcp").is_none(), "unblock left the rule");
    assert!(rig.reachable(), "unblocked, yet outside cannot reach {}", rig.url);

    rig.agent.ok(&["block", "--container-port", "18082/tcp"]);
    assert!(rig.reachable(), "container-port 18082 must not block what reaches port 80");
}

/// c. Enforcement lives in the kernel, not in a CLI process, and a second
/// `attach` neither drops the rules nor stacks a second program.
#[test]
fn rules_outlive_cli_and_reattach() {
    let rig = Rig::new("per", 3, 18083);
    rig.attach();
    rig.agent.ok(&["block", "18083/tcp"]);
    // Every agent call above was its own process and has exited by now.
    assert!(!rig.reachable(), "rule not enforced after the CLI exited");

    rig.attach();
    assert!(rule(&rig.agent, "dialed", "18083/tcp").is_some(), "second attach lost the rule");
    assert!(!rig.reachable(), "second attach stopped enforcement");

    let xdp = links(&rig.agent, rig.out.host_if(), Some("xdp"));
    assert_eq!(xdp.len(), 1, "want one xdp link on the uplink: {xdp:?}");
    assert_eq!(xdp[0]["state"], "attached", "{xdp:?}");
    // On docker0: the judging program (egress) and UDP flow tracking (ingress).
    let bridge = links(&rig.agent, "docker0", None);
    assert_eq!(bridge.len(), 2, "want two links on docker0: {bridge:?}");
    assert!(bridge.iter().any(|l| l["role"] == "judge" && l["direction"] == "egress"), "{bridge:?}");
}

/// d. Replies to connections a container opened pass, even when their
/// destination port (the container's source port) is blocked in both scopes.
#[test]
fn replies_to_container_connections_pass() {
    const SERVER: u16 = 18300;
    const SPORT: u16 = 18090;
    require_env();
    let out = Outside::new("rep", 4);
    let client = Container::start("rep", &[docker::IMAGE, "sleep", "120"]);
    let agent = Agent::new("rep");
    let _server = out.serve_pong(SERVER);
    let target = format!("TCP:{}:{SERVER},sourceport={{}},reuseaddr", out.ns_ip());
    let dial = |sport: u16| {
        let addr = target.replace("{}", &sport.to_string());
        let o = client.in_netns("timeout", &["10", "socat", "-T", "5", "-", &addr]);
        String::from_utf8_lossy(&o.stdout).contains("pong")
    };
    // A different source port, so the checked dial below reuses no 4-tuple.
    assert!(dial(SPORT - 1), "rig broken: container cannot reach the outside server");

    agent.ok(&["attach", out.host_if(), "--bridge", "docker0"]);
    let spec = format!("{SPORT}/tcp");
    agent.ok(&["block", &spec]);
    agent.ok(&["block", "--container-port", &spec]);
    // The dialed rule is live: a new connection to that port times out
    // (exit 28) instead of being refused by the host (exit 7).
    let url = format!("http://{}:{SPORT}/", out.host_ip());
    let probe = out.exec("curl", &["-s", "--max-time", "2", &url]);
    assert_eq!(probe.status.code(), Some(28), "dialed {spec} not enforced: {}", describe(&probe));

    let not_new = |hook: &str| {
        let stats = agent.json(&["stats"]);
        stats["hooks"][hook]["passed_not_new"]["packets"].as_u64().unwrap_or_else(|| panic!("{stats}"))
    };
    let dropped = |scope: &str| {
        dropped_packets(&rule(&agent, scope, &spec).unwrap_or_else(|| panic!("{scope} {spec} listed")))
    };
    let before = (not_new("xdp"), not_new("tc"), dropped("dialed"), dropped("container"));
    assert!(dial(SPORT), "reply to the container's own connection was dropped");
    // Both hooks saw the replies and let them by as not new (before any
    // rule lookup: on no rule), and the rules dropped nothing more.
    assert!(not_new("xdp") > before.0, "the uplink saw no reply");
    assert!(not_new("tc") > before.1, "the bridge saw no reply");
    assert_eq!((dropped("dialed"), dropped("container")), (before.2, before.3), "a reply was dropped");
}

/// e. Invalid commands exit 2 (usage) or 1 (failure) and change nothing.
#[test]
fn bad_input_changes_nothing() {
    let rig = Rig::new("bad", 5, 18085);
    let not_attached = rig.agent.fails(&["block", "80/tcp"], 1);
    assert!(not_attached.contains("not attached"), "stderr: {not_attached}");

    rig.attach();
    rig.agent.ok(&["block", "18085/tcp"]);
    for spec in ["0/tcp", "70000/tcp", "20-10/tcp", "80/icmp"] {
        let err = rig.agent.fails(&["block", spec], 2);
        assert_eq!(err.trim().lines().count(), 1, "block {spec}: want one stderr line: {err}");
    }
    rig.agent.fails(&["attach", "nosuchif0"], 1);

    let list = rig.agent.json(&["list"]);
    // The user's rules: other containers on this host may carry
    // `dockblock.*` labels, which give rules of their own.
    let rules: Vec<&serde_json::Value> = list["rules"]
        .as_array()
        .expect("rules array")
        .iter()
        .filter(|r| r["target"]["kind"] == "ports")
        .collect();
    assert_eq!(rules.len(), 1, "bad input changed the rules: {list}");
    assert_eq!(rules[0]["spec"], "18085/tcp", "{list}");
    assert!(!rig.reachable(), "rule no longer enforced after bad input");

    rig.agent.ok(&["detach"]);
    let again = rig.agent.run(&["detach"]);
    assert!(!again.status.success(), "second detach succeeded: {}", describe(&again));
}

/// f. `detach` removes the pin folder and every link it made; traffic flows.
#[test]
fn detach_cleans_up() {
    let rig = Rig::new("cln", 6, 18086);
    rig.attach();
    rig.agent.ok(&["block", "18086/tcp"]);
    assert!(!rig.reachable(), "rule not enforced");
    let status = rig.agent.json(&["status"]);
    let ids: Vec<u64> = status["links"]
        .as_array()
        .expect("links array")
        .iter()
        .map(|l| l["link_id"].as_u64().unwrap_or_else(|| panic!("link_id: {l}")))
        .collect();
    assert!(ids.len() >= 2, "want the xdp and the docker0 link: {status}");

    rig.agent.ok(&["detach"]);
    assert!(!Path::new(rig.agent.pin_dir()).exists(), "pin folder left behind");
    let show = run_ok("ip", &["-d", "link", "show", rig.out.host_if()]);
    assert!(!show.contains("xdp"), "xdp still on the uplink: {show}");
    for id in ids {
        let link = run("bpftool", &["link", "show", "id", &id.to_string()]);
        assert!(!link.status.success(), "link {id} survived detach: {}", describe(&link));
    }
    assert!(rig.reachable(), "traffic still blocked after detach");
}
