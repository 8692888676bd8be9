//! The rule-editing verbs with selectors (`--container`, `--label`,
//! `--compose-project`), `allow`, `policy`, and `export | apply` of Docker
//! rules, with the real engine and no daemon: usage errors exit 2 and change
//! nothing, no engine is exit 1 with a hint, and `block --container NAME`
//! alone writes the derived dialed rule that drops a real SYN to the
//! container's host port on the XDP uplink.
//!
//! Needs root and a running Docker daemon; run serially:
//! `cargo build -p dockblock-agent && cargo test -p dockblock-tests --test cli_docker -- --test-threads=1`

use dockblock_tests::{
    agent::Agent,
    describe,
    netns::Outside,
    rig::topology::{http, Topology, Web, CONTROL_PORT},
};
use serde_json::Value;

fn rules(agent: &Agent) -> Vec<Value> {
    let list = agent.json(&["list"]);
    list["rules"].as_array().unwrap_or_else(|| panic!("list --json: {list}")).clone()
}

/// `export`, which must stay byte-equal across a refused command.
fn export(agent: &Agent) -> String {
    agent.ok(&["export"])
}

#[test]
fn bad_selectors_are_usage_errors_and_change_nothing() {
    let outside = Outside::new("rcb", 150);
    let agent = Agent::new("rcb");
    agent.ok(&["attach", outside.host_if(), "--no-bridge"]);
    agent.ok(&["block", "2223/tcp"]);
    let before = export(&agent);
    for (args, why) in [
        (
            vec!["block", "--container", "no-such-container-rcb", "80/tcp"],
            "no container named `no-such-container-rcb`",
        ),
        (vec!["block", "--container=-db", "80/tcp"], "container name `-db`"),
        (vec!["block", "--container", "a b"], "container name `a b`"),
        (vec!["block", "--label", "=x", "80/tcp"], "label key"),
        (vec!["block", "--compose-project", "a/b"], "compose project `a/b`"),
        (vec!["block", "--label", "tier", "1-2000/tcp"], "covers 2000 ports"),
        (vec!["block", "--from-containers", "23/tcp"], "--from-containers needs --container"),
        (vec!["block"], "at least one port spec"),
        (vec!["block", "--container", "x", "--label", "y"], "cannot be used with"),
        (vec!["block", "--compose-service", "web"], "--compose-project"),
        (vec!["allow", "--container", "&"], "container name `&`"),
        (vec!["policy", "published", "maybe"], "invalid value"),
        (vec!["unblock", "--label", "a=b", "99999/tcp"], "1 to 65535"),
    ] {
        let err = agent.fails(&args, 2);
        assert!(err.contains(why), "{args:?}: {err}");
        assert_eq!(export(&agent), before, "{args:?} changed the rules");
    }
    let long = "a".repeat(241);
    let err = agent.fails(&["block", "--container", &long, "80/tcp"], 2);
    assert!(err.contains("longer than 240 bytes"), "{err}");
    // A rules file: FILE:LINE: why, exit 2, nothing changed.
    for (text, why) in [
        ("[[rule]]\nports = \"80/tcp\"\n\n[[rule]]\ncontainer = \"-x\"\n", "bad.toml:5: container name `-x`"),
        ("[[rule]]\nports = \"1-4000/tcp\"\nlabel = \"k\"\n", "bad.toml:2: "),
        ("[[rule]]\npolicy = \"deny\"\n", "bad.toml:2: policy `deny`"),
    ] {
        let path = std::env::temp_dir().join(format!("dockblock-rcb-{}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        let bad = path.with_file_name("bad.toml");
        std::fs::rename(&path, &bad).unwrap();
        let out = agent.command(&["apply", "bad.toml"]).current_dir(bad.parent().unwrap()).output().unwrap();
        std::fs::remove_file(&bad).unwrap();
        assert_eq!(out.status.code(), Some(2), "{text:?}: {}", describe(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains(why), "{text:?}: {}", describe(&out));
        assert_eq!(export(&agent), before, "{text:?} changed the rules");
    }
}

#[test]
fn without_an_engine_docker_rules_are_refused_and_plain_ones_work() {
    let outside = Outside::new("rcn", 152);
    let agent = Agent::new("rcn");
    agent.ok(&["attach", outside.host_if(), "--no-bridge"]);
    let no_engine = |args: &[&str]| {
        agent.command(args).env("DOCKER_HOST", "unix:///nonexistent/docker.sock").output().unwrap()
    };
    let before = export(&agent);
    for args in [
        vec!["block", "--container", "db", "3306/tcp"],
        vec!["allow", "--label", "public"],
        vec!["policy", "published", "deny"],
    ] {
        let out = no_engine(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", describe(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no engine answers at unix:///nonexistent/docker.sock"), "{args:?}: {err}");
        assert!(err.contains("start dockerd"), "a hint: {err}");
        assert_eq!(export(&agent), before, "{args:?} changed the rules");
    }
    let out = no_engine(&["block", "2222/tcp"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(export(&agent).contains("2222/tcp"));
}

#[test]
fn export_then_apply_round_trips_targets_and_policy_toggles() {
    let t = Topology::new("rcr", 154);
    t.agent.ok(&["attach", t.xdp.host_if(), "--no-bridge"]);
    let web = Web::run("dbt-rcr-web", 18154, &["--label", "tier=web"]);
    let agent = &t.agent;
    agent.ok(&["block", "--container", web.name(), "80/tcp", "--from-containers", "--log"]);
    agent.ok(&["block", "--label", "tier=web", "8000-8010/tcp"]);
    agent.ok(&["allow", "--compose-project", "shop", "--from", "203.0.113.0/24"]);
    agent.ok(&["block", "3306/tcp"]);
    assert_eq!(agent.ok(&["policy"]).trim(), "published allow");
    let out = agent.ok(&["policy", "published", "deny"]);
    assert!(out.contains("note: no daemon runs"), "{out}");
    assert_eq!(agent.ok(&["policy"]).trim(), "published deny");

    let list = rules(agent);
    let parent = list
        .iter()
        .find(|r| r["target"]["kind"] == "container" && r["target"]["name"] == web.name())
        .unwrap_or_else(|| panic!("no rule on {}: {list:?}", web.name()));
    assert_eq!(parent["action"], "block");
    assert_eq!(parent["from_containers"], true);
    assert_eq!(parent["derived_from"], Value::Null);
    let host_ports = parent["covers"]["host_ports"].as_array().cloned().unwrap_or_default();
    assert!(host_ports.contains(&Value::from("0.0.0.0:18154/tcp")), "{parent}");
    let derived: Vec<&Value> = list.iter().filter(|r| r["derived_from"] == parent["id"]).collect();
    assert_eq!(derived.len(), 1, "one derived rule on the host port: {list:?}");
    assert_eq!(
        (derived[0]["scope"].as_str(), derived[0]["spec"].as_str()),
        (Some("dialed"), Some("18154/tcp"))
    );
    assert_eq!(derived[0]["target"]["kind"], "derived");
    let allow = list.iter().find(|r| r["target"]["kind"] == "compose").expect("the allow rule");
    assert_eq!((allow["action"].as_str(), allow["spec"].as_str()), (Some("allow"), Some("1-65535")));

    let exported = export(agent);
    for key in [
        "container = \"dbt-rcr-web\"",
        "label = \"tier=web\"",
        "compose_project = \"shop\"",
        "action = \"allow\"",
        "from_containers = true",
        "policy = \"published-deny\"",
    ] {
        assert!(exported.contains(key), "{key} missing from\n{exported}");
    }
    assert!(!exported.contains("18154"), "derived rules are not exported:\n{exported}");
    let out = agent.run_with_input(&["apply", "-"], &exported);
    assert!(out.status.success(), "{}", describe(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("(5 rules): 0 added, 0 removed"), "export | apply is a no-op: {said}");
    // Other containers on this host may carry dockblock labels: compare
    // the user rules and the derived rules of ours only.
    let user_ids: Vec<Value> = list
        .iter()
        .filter(|r| !["own_labels", "derived"].contains(&r["target"]["kind"].as_str().unwrap_or("")))
        .map(|r| r["id"].clone())
        .collect();
    let ids = |l: &[Value]| {
        l.iter()
            .filter(|r| user_ids.contains(&r["id"]) || user_ids.contains(&r["derived_from"]))
            .map(|r| (r["id"].clone(), r["spec"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&rules(agent)), ids(&list), "ids kept, derived rules too");

    agent.ok(&["policy", "published", "allow"]);
    assert_eq!(agent.ok(&["policy"]).trim(), "published allow");
    assert!(!export(agent).contains("policy"), "the policy rule is gone");
    // An apply without the container rule drops its derived rule with it.
    let without: String = exported.replace("container = \"dbt-rcr-web\"", "label = \"other\"");
    let out = agent.run_with_input(&["apply", "-"], &without);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(rules(agent).iter().all(|r| r["derived_from"] != parent["id"]), "{:?}", rules(agent));
}

/// No daemon: `block --container NAME 80/tcp` resolves the container once
/// and writes a derived rule on its host port, so a SYN to that port on the
/// XDP uplink is dropped; the control port stays open, and an uplink
/// without XDP is not covered by the derived rule (the veth hook is the
/// daemon's). `unblock` takes the derived rule away again.
#[test]
fn block_container_without_daemon_drops_syn_to_its_host_port() {
    let t = Topology::new("rce", 156);
    t.agent.ok(&["attach", t.xdp.host_if(), "--no-bridge"]);
    let web = Web::run("dbt-rce-web", 18156, &[]);
    assert!(http(&t.xdp, None, t.xdp.host_ip(), 18156), "open before any rule");

    let out = t.agent.ok(&["block", "--container", web.name(), "80/tcp"]);
    assert!(out.contains(&format!("blocked 80/tcp for container {}", web.name())), "{out}");
    assert!(out.contains(&format!("note: no daemon runs: {} is covered as it is now", web.name())), "{out}");
    assert!(
        !http(&t.xdp, None, t.xdp.host_ip(), 18156),
        "SYN to the host port dropped in XDP\n{}",
        t.context()
    );
    assert!(http(&t.xdp, None, t.xdp.host_ip(), web.host_port(CONTROL_PORT)), "control port open");
    assert!(http(&t.plain, None, t.plain.host_ip(), 18156), "no XDP there, no veth hook without daemon");
    let derived = rules(&t.agent)
        .into_iter()
        .find(|r| r["target"]["kind"] == "derived" && r["spec"] == "18156/tcp")
        .unwrap_or_else(|| panic!("no derived rule\n{}", t.context()));
    assert!(derived["dropped"]["packets"].as_u64().unwrap() >= 1, "counted on the derived rule: {derived}");

    t.agent.ok(&["unblock", "--container", web.name(), "80/tcp"]);
    assert!(rules(&t.agent).iter().all(|r| r["target"]["kind"] != "derived"), "{}", t.context());
    assert!(http(&t.xdp, None, t.xdp.host_ip(), 18156), "open again after unblock");
}
