//! The CLI on a veth uplink, without Docker: privileges, concurrency, a full
//! rule table, interfaces that disappear, partial detach.

use std::process::Command;

use dockblock_tests::{
    agent::{Agent, NoEngine},
    describe,
    netns::Outside,
    rig::{connects, host_service},
    run_ok,
};

/// The XDP links in `status --json`.
fn xdp_links(agent: &Agent) -> Vec<serde_json::Value> {
    let status = agent.json(&["status"]);
    status["links"].as_array().unwrap().iter().filter(|l| l["hook"] == "xdp").cloned().collect()
}

#[test]
fn non_root_is_refused_and_nothing_is_created() {
    let agent = Agent::new("nonroot");
    for args in [
        vec!["attach", "lo", "--no-bridge"],
        vec!["block", "3306/tcp"],
        vec!["unblock", "3306/tcp"],
        vec!["list"],
        vec!["stats"],
        vec!["status"],
        vec!["detach"],
    ] {
        let mut full = vec![
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            agent.bin(),
            "--pin-dir",
            agent.pin_dir(),
        ];
        full.extend(&args);
        let out = Command::new("setpriv").args(&full).output().expect("setpriv");
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("must run as root"), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    }
    assert!(!std::path::Path::new(agent.pin_dir()).exists());
}

#[test]
fn parallel_cli_calls_lose_no_update() {
    let _no_engine = NoEngine::set();
    let outside = Outside::new("par", 41);
    let agent = Agent::new("par");
    agent.ok(&["attach", outside.host_if(), "--no-bridge"]);
    let children: Vec<_> = (0..16)
        .map(|i| {
            let spec = format!("{}/tcp", 10000 + i);
            agent.command(&["block", &spec]).spawn().expect("spawn")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", describe(&out));
    }
    let rules = agent.json(&["list"])["rules"].as_array().unwrap().clone();
    let mut ports: Vec<u64> = rules.iter().map(|r| r["port_lo"].as_u64().unwrap()).collect();
    ports.sort();
    assert_eq!(ports, (10000..10016).collect::<Vec<u64>>());
    let ids: std::collections::BTreeSet<u64> = rules.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), 16, "distinct ids");
}

#[test]
fn a_full_rule_table_refuses_the_whole_change() {
    let _no_engine = NoEngine::set();
    let outside = Outside::new("full", 42);
    let agent = Agent::new("full");
    agent.ok(&["attach", outside.host_if(), "--no-bridge", "--max-rules", "3"]);
    agent.ok(&["block", "1001/tcp", "1002/tcp"]);
    let err = agent.fails(&["block", "1003/tcp", "1004/tcp"], 1);
    assert!(err.contains("rule table full (3 rules)"), "{err}");
    let specs: Vec<String> = agent.json(&["list"])["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["spec"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(specs, ["1001/tcp", "1002/tcp"], "nothing of the refused change was written");
    agent.ok(&["block", "1003/tcp"]);
    assert_eq!(agent.json(&["status"])["rules"]["capacity"], 3);
    let err = agent.fails(&["attach", outside.host_if(), "--no-bridge", "--max-rules", "10"], 1);
    assert!(err.contains("detach"), "capacity is fixed until detach: {err}");
    // --max-frags is rounded up to a power of two: 8000 is the 8192 the
    // maps were created with, 9000 (16384) is not.
    agent.ok(&["attach", outside.host_if(), "--no-bridge", "--max-rules", "3", "--max-frags", "8000"]);
    let err = agent.fails(&["attach", outside.host_if(), "--no-bridge", "--max-frags", "9000"], 1);
    assert!(err.contains("FRAGS was created with 8192 entries"), "{err}");
}

#[test]
fn an_interface_that_disappears_goes_defunct_and_attach_replaces_it() {
    let agent = Agent::new("gone");
    {
        let outside = Outside::new("gone", 43);
        agent.ok(&["attach", outside.host_if(), "--no-bridge"]);
        agent.ok(&["block", "7000/tcp"]);
    } // the veth and namespace are deleted here
    let links = agent.json(&["status"])["links"].clone();
    for link in links.as_array().unwrap() {
        assert_eq!(link["state"], "defunct", "{links}");
        assert_eq!(link["ifindex"], 0);
    }

    let outside = Outside::new("gone", 43);
    let _service = host_service(outside.host_ip(), 7000, 30);
    let _open = host_service(outside.host_ip(), 7001, 30);
    assert!(connects(&outside, outside.host_ip(), 7001), "service reachable");
    assert!(
        connects(&outside, outside.host_ip(), 7000),
        "no link yet: rules not enforced on the new interface"
    );
    let out = agent.ok(&["attach", outside.host_if(), "--no-bridge"]);
    assert!(out.contains("new link"), "{out}");
    let links = agent.json(&["status"])["links"].clone();
    assert_eq!(
        links.as_array().unwrap().len(),
        2,
        "the defunct pins (xdp, udp tracking) were replaced: {links}"
    );
    assert!(links.as_array().unwrap().iter().all(|l| l["state"] == "attached"), "{links}");
    assert!(!connects(&outside, outside.host_ip(), 7000), "rule kept and enforced");
    assert!(connects(&outside, outside.host_ip(), 7001));
}

#[test]
fn detaching_one_interface_keeps_the_rules_for_the_others() {
    let _no_engine = NoEngine::set();
    let a = Outside::new("dta", 44);
    let b = Outside::new("dtb", 45);
    let agent = Agent::new("detach1");
    agent.ok(&["attach", a.host_if(), b.host_if(), "--no-bridge"]);
    agent.ok(&["block", "7100/tcp"]);
    let _sa = host_service(a.host_ip(), 7100, 30);
    let _sb = host_service(b.host_ip(), 7100, 30);
    assert!(!connects(&a, a.host_ip(), 7100));
    assert!(!connects(&b, b.host_ip(), 7100));
    agent.ok(&["detach", a.host_if()]);
    assert!(connects(&a, a.host_ip(), 7100), "detached");
    assert!(!connects(&b, b.host_ip(), 7100), "still attached");
    let err = agent.fails(&["detach", a.host_if()], 1);
    assert!(err.contains("not attached to"), "{err}");
    let links = run_ok("ip", &["link", "show", a.host_if()]);
    assert!(!links.contains("xdp"), "no XDP left on {}: {links}", a.host_if());
}

#[test]
fn xdp_mode_auto_picks_skb_on_veth_and_a_mode_change_needs_detach() {
    let outside = Outside::new("mode", 46);
    let agent = Agent::new("mode");
    let iface = outside.host_if();
    agent.ok(&["attach", iface, "--no-bridge"]);
    assert_eq!(xdp_links(&agent)[0]["mode"], "skb", "auto on a veth");
    let err = agent.fails(&["attach", iface, "--no-bridge", "--xdp-mode", "native"], 1);
    assert!(err.contains(&format!("dockblock-agent detach {iface}")), "{err}");
    let out = agent.ok(&["attach", iface, "--no-bridge", "--xdp-mode", "skb"]);
    assert!(out.contains("program replaced in the existing link"), "{out}");
    agent.ok(&["block", "7200/tcp"]);
    agent.ok(&["detach", iface]);
    agent.ok(&["attach", iface, "--no-bridge", "--xdp-mode", "native"]);
    assert_eq!(xdp_links(&agent)[0]["mode"], "native");
    assert_eq!(agent.json(&["status"])["rules"]["rules"], 1, "detach IFACE kept the rule");
    let ip = run_ok("ip", &["link", "show", iface]);
    assert!(ip.contains("xdp") && !ip.contains("xdpgeneric"), "native XDP: {ip}");
}

#[test]
fn stats_watch_streams_rates_and_export_apply_round_trips() {
    let _no_engine = NoEngine::set();
    let outside = Outside::new("watch", 47);
    let agent = Agent::new("watch");
    agent.ok(&["attach", outside.host_if(), "--no-bridge"]);
    agent.ok(&["block", "7300/tcp", "--allow-from", "203.0.113.0/24", "--log"]);
    agent.ok(&["block", "7301-7302/udp", "--dry-run"]);
    let out = agent.ok(&["stats", "--watch", "--json", "--count", "2"]);
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "one object per refresh: {out}");
    assert!(lines[1]["hooks"]["xdp"]["dropped"]["packets_per_sec"].is_number(), "{}", lines[1]);
    assert_eq!(lines[1]["rules"][0]["allow_from"][0], "203.0.113.0/24");

    let exported = agent.ok(&["export"]);
    let mut apply = agent.command(&["apply", "-"]);
    let mut child =
        apply.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().unwrap();
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(exported.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 added, 0 removed"), "{}", describe(&out));
    assert_eq!(agent.ok(&["export"]), exported);
}
