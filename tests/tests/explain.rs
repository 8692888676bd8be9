//! `explain`: the verdict of the loaded programs for one packet, beside the
//! reference model's, without moving anything. The CLI on idle veths (one
//! as the uplink, one as the bridge; IPv6 off, no addresses, so no packet
//! ever crosses them and every counter that moves is explain's doing),
//! then the library against the datapath harness, where the probe's answer
//! is also held against the program run directly.

use std::time::Duration;

use aya::maps::{Array, MapData};
use dockblock_agent::{
    explain::{self, Query, HOOKS},
    paths::PinDir,
    rules::{RuleOptions, Scope},
    store::open_pinned,
};
use dockblock_common::{hook, map_names, outcome, program_names, seen, FragSlot};
use dockblock_tests::{
    agent::{Agent, NoEngine},
    datapath::{Datapath, From, Verdict},
    packet::Packet,
    quiet, run_ok,
};
use serde_json::Value;

/// Two idle veth pairs: `dbxu<tag>` is the uplink, `dbxb<tag>` the bridge.
/// IPv6 is off on every end (no router or neighbour solicitations), so
/// nothing but explain could move a counter. Removed on drop.
struct IdleLinks {
    uplink: String,
    bridge: String,
}

impl IdleLinks {
    fn new(tag: &str) -> IdleLinks {
        let links = IdleLinks { uplink: format!("dbxu{tag}"), bridge: format!("dbxb{tag}") };
        links.remove();
        for (a, b) in [(&links.uplink, format!("dbxv{tag}")), (&links.bridge, format!("dbxc{tag}"))] {
            run_ok("ip", &["link", "add", a, "type", "veth", "peer", "name", &b]);
            for end in [a.as_str(), b.as_str()] {
                run_ok("sysctl", &["-qw", &format!("net.ipv6.conf.{end}.disable_ipv6=1")]);
                run_ok("ip", &["link", "set", end, "up"]);
            }
        }
        links
    }

    fn remove(&self) {
        quiet("ip", &["link", "del", &self.uplink]);
        quiet("ip", &["link", "del", &self.bridge]);
    }
}

impl Drop for IdleLinks {
    fn drop(&mut self) {
        self.remove();
    }
}

/// An agent attached to idle links. Fields drop in order: the agent
/// detaches while the links still exist.
struct Rig {
    agent: Agent,
    _links: IdleLinks,
}

impl Rig {
    fn new(tag: &str) -> Rig {
        let links = IdleLinks::new(tag);
        let agent = Agent::new(&format!("explain-{tag}"));
        agent.ok(&["attach", &links.uplink, "--bridge", &links.bridge]);
        Rig { agent, _links: links }
    }

    /// `explain ARGS --json`, asserting exit 0 (kernel and model agree).
    fn explain(&self, args: &[&str]) -> Value {
        let mut full = vec!["explain"];
        full.extend(args);
        self.agent.json(&full)
    }

    fn rule_id(&self, scope: &str, spec: &str) -> u64 {
        let list = self.agent.json(&["list"]);
        let rules = list["rules"].as_array().unwrap();
        let rule = rules.iter().find(|r| r["scope"] == scope && r["spec"] == spec);
        rule.unwrap_or_else(|| panic!("no {scope} {spec} in {list}"))["id"].as_u64().unwrap()
    }

    /// Every slot of the pinned FRAGS and SEEN maps.
    fn frags_and_seen(&self) -> (Vec<FragSlot>, Vec<u32>) {
        let pins = PinDir::new(self.agent.pin_dir());
        let frags: Array<MapData, FragSlot> = open_pinned(&pins, map_names::FRAGS).unwrap();
        let seen_map: Array<MapData, u32> = open_pinned(&pins, map_names::SEEN).unwrap();
        (
            (0..frags.len()).map(|i| frags.get(&i, 0).unwrap()).collect(),
            (0..seen::COUNT).map(|i| seen_map.get(&i, 0).unwrap()).collect(),
        )
    }
}

/// The kernel's entry for `hook` in an explain answer, checked against the
/// model's entry for it.
fn hook_entry<'a>(answer: &'a Value, hook: &str) -> &'a Value {
    let find = |key: &str| answer[key].as_array().unwrap().iter().find(|h| h["hook"] == hook).cloned();
    let (kernel, model) = (find("hooks"), find("model"));
    let kernel_entry = kernel.clone().unwrap_or_else(|| panic!("no {hook} in {answer}"));
    let mut without_event = kernel_entry.clone();
    without_event.as_object_mut().unwrap().remove("event");
    assert_eq!(Some(without_event), model, "kernel and model columns: {answer}");
    assert_eq!(answer["agree"], true, "{answer}");
    answer["hooks"].as_array().unwrap().iter().find(|h| h["hook"] == hook).unwrap()
}

/// Asserts the `hook` entry is `verdict`, `outcome`, `rule_id`.
fn expect(answer: &Value, hook: &str, verdict: &str, outcome: &str, rule_id: Option<u64>) {
    let entry = hook_entry(answer, hook);
    assert_eq!(entry["verdict"], verdict, "{hook}: {answer}");
    assert_eq!(entry["outcome"], outcome, "{hook}: {answer}");
    assert_eq!(entry["rule_id"].as_u64(), rule_id, "{hook}: {answer}");
}

#[test]
fn explain_shows_each_outcome_and_moves_nothing() {
    let _no_engine = NoEngine::set();
    let rig = Rig::new("out");
    let agent = &rig.agent;
    agent.ok(&["block", "3306/tcp", "--log"]);
    agent.ok(&["block", "5432/tcp", "--allow-from", "203.0.113.0/24", "--allow-from", "2001:db8:aa::/48"]);
    agent.ok(&["block", "5353/udp", "--dry-run", "--log"]);
    agent.ok(&["block", "--container-port", "80/tcp"]);
    let mysql = rig.rule_id("dialed", "3306/tcp");
    let pg = rig.rule_id("dialed", "5432/tcp");
    let mdns = rig.rule_id("dialed", "5353/udp");
    let web = rig.rule_id("container", "80/tcp");

    let events = agent.events(&[], Duration::from_secs(20));
    let stats_before = agent.json(&["stats"]);
    let list_before = agent.json(&["list"]);
    let state_before = rig.frags_and_seen();

    // A blocked SYN: dropped at the uplink by the dialed rule; the bridge
    // has no rule for 3306.
    let a = rig.explain(&["tcp", "203.0.113.7:40000", "198.51.100.1:3306"]);
    expect(&a, "xdp", "drop", "dropped", Some(mysql));
    expect(&a, "tc", "pass", "passed_no_rule", None);
    assert_eq!(hook_entry(&a, "xdp")["event"], true, "a --log rule logs (into the probe's own ring)");
    assert_eq!(a["packet"]["sport"], 40000);
    assert_eq!(a["packet"]["sport_given"], true);

    // Replies and established traffic pass; a SYN-ACK is not new either.
    for flags in ["ack", "syn,ack", "fin,ack", "rst"] {
        let a = rig.explain(&["tcp", "203.0.113.7:40000", "198.51.100.1:3306", "--flags", flags]);
        expect(&a, "xdp", "pass", "passed_not_new", None);
        assert_eq!(hook_entry(&a, "xdp")["event"], false, "{flags}");
    }

    // The allow-list, IPv4 and IPv6.
    let a = rig.explain(&["tcp", "203.0.113.9", "198.51.100.1:5432"]);
    expect(&a, "xdp", "pass", "passed_allowed", Some(pg));
    assert_eq!(a["packet"]["sport_given"], false);
    let a = rig.explain(&["tcp", "198.18.7.9", "198.51.100.1:5432"]);
    expect(&a, "xdp", "drop", "dropped", Some(pg));
    let a = rig.explain(&["tcp", "[2001:db8:aa::9]:41000", "[2001:db8::1]:5432"]);
    expect(&a, "xdp", "pass", "passed_allowed", Some(pg));
    let a = rig.explain(&["tcp", "2001:db8:bb::9", "[2001:db8::1]:5432"]);
    expect(&a, "xdp", "drop", "dropped", Some(pg));

    // Dry-run.
    let a = rig.explain(&["udp", "198.18.7.9:5353", "198.51.100.1:5353"]);
    expect(&a, "xdp", "pass", "passed_dry_run", Some(mdns));
    assert_eq!(hook_entry(&a, "xdp")["event"], true);

    // The container port is judged at the bridge only; the host's own
    // packets pass it (no --judge-host-traffic).
    let a = rig.explain(&["tcp", "198.18.7.9", "172.17.0.2:80"]);
    expect(&a, "xdp", "pass", "passed_no_rule", None);
    expect(&a, "tc", "drop", "dropped", Some(web));
    let a = rig.explain(&["tcp", "198.18.7.9", "172.17.0.2:80", "--from-host", "--hook", "tc"]);
    expect(&a, "tc", "pass", "passed_host", None);
    assert_eq!(a["hooks"].as_array().unwrap().len(), 1, "--hook tc: one hook: {a}");

    // IPv6 and VLANs (one 802.1Q tag; QinQ).
    let a = rig.explain(&["tcp", "[2001:db8::7]:40000", "[2001:db8::1]:3306"]);
    expect(&a, "xdp", "drop", "dropped", Some(mysql));
    let a = rig.explain(&["tcp", "203.0.113.7", "198.51.100.1:3306", "--vlan", "100"]);
    expect(&a, "xdp", "drop", "dropped", Some(mysql));
    assert_eq!(a["packet"]["bytes"], 58);
    let a = rig.explain(&["tcp", "[2001:db8::7]", "[2001:db8::1]:80", "--vlan", "10", "--vlan", "20"]);
    expect(&a, "tc", "drop", "dropped", Some(web));
    expect(&a, "xdp", "pass", "passed_no_rule", None);

    // What was tested is what runs: the same instructions on both links.
    for p in a["programs"].as_array().unwrap() {
        let links = p["links"].as_array().unwrap();
        assert_eq!(links.len(), 1, "{p}");
        assert_eq!(links[0]["same_program"], true, "{p}");
    }

    assert_eq!(agent.json(&["stats"]), stats_before, "no hook or rule counter moved");
    assert_eq!(agent.json(&["list"]), list_before, "no rule counter moved");
    assert!(rig.frags_and_seen() == state_before, "FRAGS and SEEN unchanged");
    assert_eq!(events.find(Duration::from_secs(1), |_| true), None, "no event reached `events`");
}

#[test]
fn explain_json_shape_and_text() {
    let _no_engine = NoEngine::set();
    let rig = Rig::new("shape");
    rig.agent.ok(&["block", "3306/tcp"]);
    let a = rig.explain(&["tcp", "203.0.113.7:40000", "198.51.100.1:3306"]);
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&a), ["agree", "hooks", "model", "packet", "programs"]);
    let hooks: Vec<&str> =
        a["hooks"].as_array().unwrap().iter().map(|h| h["hook"].as_str().unwrap()).collect();
    assert_eq!(hooks, ["xdp", "tc"], "both hooks by default, xdp first");
    for h in a["hooks"].as_array().unwrap() {
        assert_eq!(keys(h), ["event", "hook", "outcome", "rule_id", "verdict"], "{h}");
    }
    for h in a["model"].as_array().unwrap() {
        assert_eq!(keys(h), ["hook", "outcome", "rule_id", "verdict"], "{h}");
    }
    assert_eq!(
        keys(&a["packet"]),
        [
            "bytes",
            "dport",
            "dst",
            "from_host",
            "protocol",
            "sport",
            "sport_given",
            "src",
            "tcp_flags",
            "vlans"
        ]
    );
    assert_eq!(a["packet"]["tcp_flags"], serde_json::json!(["syn"]), "a SYN by default");
    let a = rig.explain(&["udp", "203.0.113.7", "198.51.100.1:53", "--hook", "xdp"]);
    assert_eq!(a["hooks"].as_array().unwrap().len(), 1);
    assert_eq!(a["model"].as_array().unwrap().len(), 1);
    assert_eq!(a["packet"]["tcp_flags"], serde_json::json!([]));

    let text = rig.agent.ok(&["explain", "tcp", "203.0.113.7", "198.51.100.1:3306"]);
    assert!(text.contains("no source port given: 40000"), "{text}");
    assert!(text.contains("drop  dropped"), "{text}");
    assert!(text.contains("rule 1: dialed 3306/tcp"), "{text}");
    assert!(text.contains("kernel and model agree"), "{text}");
}

#[test]
fn explain_refuses_bad_input_and_needs_attach() {
    let _no_engine = NoEngine::set();
    let agent = Agent::new("explain-bad");
    for (args, why) in [
        (vec!["icmp", "203.0.113.7", "198.51.100.1:1"], "expected tcp or udp"),
        (vec!["tcp", "203.0.113.7", "198.51.100.1:0"], "a port is 1-65535"),
        (vec!["tcp", "203.0.113.7", "198.51.100.1:70000"], "a port is 1-65535"),
        (vec!["tcp", "203.0.113.7:0", "198.51.100.1:22"], "a port is 1-65535"),
        (vec!["tcp", "203.0.113.7", "198.51.100.1"], "needs a port"),
        (vec!["tcp", "not-an-ip", "198.51.100.1:22"], "expected ADDRESS"),
        (vec!["tcp", "203.0.113.7", "[2001:db8::1]:22"], "same address family"),
        (vec!["udp", "203.0.113.7", "198.51.100.1:53", "--flags", "ack"], "only TCP has flags"),
        (vec!["tcp", "203.0.113.7", "198.51.100.1:53", "--flags", "syn,bogus"], "--flags"),
        (vec!["tcp", "203.0.113.7", "198.51.100.1:53", "--vlan", "4095"], "1-4094"),
        (vec!["tcp", "203.0.113.7", "198.51.100.1:53", "--hook", "xdp", "--from-host"], "tc hook"),
        (vec!["tcp", "203.0.113.7", "198.51.100.1:53", "--hook", "bridge"], "invalid value"),
    ] {
        let mut full = vec!["explain"];
        full.extend(&args);
        let err = agent.fails(&full, 2);
        assert!(err.contains(why), "{args:?}: {err}");
    }
    let err = agent.fails(&["explain", "tcp", "203.0.113.7", "198.51.100.1:3306"], 1);
    assert!(err.contains("not attached"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!std::path::Path::new(agent.pin_dir()).exists(), "explain created nothing");
}

/// A query for the library, panicking on bad input.
fn query(proto: &str, src: &str, dst: &str, flags: Option<&str>, vlans: &[u16], from_host: bool) -> Query {
    Query::parse(proto, src, dst, flags, vlans, from_host).unwrap()
}

/// The probe, the model and the program run directly agree on every case;
/// the harness's counters do not move for the probe.
#[test]
fn probe_model_and_program_agree() {
    let _no_engine = NoEngine::set();
    let mut dp = Datapath::load("explain");
    dp.block_with(Scope::Dialed, "3306/tcp", RuleOptions::new([], false, true));
    dp.block_with(Scope::Dialed, "5432", Datapath::allow(&["203.0.113.0/24", "2001:db8:aa::/48"]));
    dp.block_with(Scope::Dialed, "5353/udp", RuleOptions::new([], true, false));
    dp.block(Scope::Container, "80/tcp");
    dp.block(Scope::Container, "53/udp");
    dp.block(Scope::Dialed, "30000-30010/tcp");
    // A UDP flow the host opened from blocked port 5432: its reply is not new.
    let out = Packet::udp(9999).src("198.51.100.1").dst("198.18.7.7").sport(5432).build();
    dp.track(program_names::UPLINK_TRACK, &out);

    let mut cases = Vec::new();
    for (src, dst) in [
        ("203.0.113.7:40000", "198.51.100.1"),
        ("198.18.7.7:9999", "198.51.100.1"),
        ("198.18.7.8", "198.51.100.1"),
        ("[2001:db8:aa::7]:40000", "[2001:db8::1]"),
        ("[2001:db8:bb::7]:9999", "[2001:db8::1]"),
    ] {
        for port in [22, 53, 80, 3306, 5353, 5432, 30005] {
            let dst = format!("{dst}:{port}");
            for flags in [None, Some("ack"), Some("syn,ack"), Some("fin"), Some("syn,rst")] {
                for vlans in [&[][..], &[7], &[7, 8]] {
                    cases.push(query("tcp", src, &dst, flags, vlans, false));
                }
            }
            cases.push(query("udp", src, &dst, None, &[], false));
            cases.push(query("udp", src, &dst, None, &[9], false));
            cases.push(query("tcp", src, &dst, None, &[], true));
        }
    }
    let counters = |dp: &Datapath| -> Vec<u64> {
        HOOKS
            .iter()
            .flat_map(|&h| (0..outcome::COUNT).map(move |o| (h, o)))
            .map(|(h, o)| dp.hook_counter(h, o).packets)
            .collect()
    };
    let before = counters(&dp);
    let mut expected_delta = vec![0u64; before.len()];
    let mut seen_outcomes = std::collections::BTreeSet::new();
    let reports = explain::explain_all(&dp.pins, &cases, &HOOKS).expect("explain");
    assert_eq!(counters(&dp), before, "the probe counted nothing in the pinned maps");
    for (q, report) in cases.iter().zip(&reports) {
        assert!(report.agree(), "{q:?}: {:?}", report.hooks);
        let frame = q.frame();
        // The program loaded by the harness, run directly on the pinned
        // maps, says the same and counts the same outcome.
        let direct =
            [dp.xdp(&frame), if q.from_host { dp.tc_from(&frame, From::Host) } else { dp.tc(&frame) }];
        for (h, direct) in report.hooks.iter().zip(direct) {
            let d = h.kernel.decision;
            assert_eq!(h.model, d, "{q:?}");
            assert_eq!(d.drops(), direct == Verdict::Drop, "{q:?} at hook {}", h.hook);
            seen_outcomes.insert(d.outcome_name());
            expected_delta[(h.hook * outcome::COUNT + d.outcome) as usize] += 1;
        }
    }
    let delta: Vec<u64> = counters(&dp).iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(delta, expected_delta, "the direct runs counted the outcomes the probe reported");
    let expected =
        ["dropped", "passed_allowed", "passed_dry_run", "passed_host", "passed_no_rule", "passed_not_new"];
    assert_eq!(
        seen_outcomes.into_iter().collect::<Vec<_>>(),
        expected,
        "every outcome a whole packet can get"
    );
    // The single-packet path is the same code; check it once more here.
    let one = explain::explain(&dp.pins, &cases[0], &[hook::XDP]).unwrap();
    assert_eq!(one.hooks.len(), 1);
    assert_eq!(one.hooks[0].kernel.decision, reports[0].hooks[0].kernel.decision);
    assert!(one.programs[0].links.is_empty(), "the harness attaches nothing");
}

/// A disagreement is printed and fails the command. An IPv6 packet from a
/// v4-mapped source is the case: the spec drops it as evasive (it must not
/// match an IPv4 allow-list entry); a datapath before fail-closed let it
/// pass as allowed. Either way, exit code, `agree` and the columns match.
#[test]
fn explain_fails_when_kernel_and_model_disagree() {
    let _no_engine = NoEngine::set();
    let rig = Rig::new("dis");
    rig.agent.ok(&["block", "5432/tcp", "--allow-from", "203.0.113.0/24"]);
    let args =
        ["explain", "tcp", "[::ffff:203.0.113.7]:40000", "[2001:db8::1]:5432", "--hook", "xdp", "--json"];
    let out = rig.agent.run(&args);
    let answer: Value = serde_json::from_slice(&out.stdout).expect("the answer is printed either way");
    let model = &answer["model"][0];
    assert_eq!(model["outcome"], "dropped_evasive", "{answer}");
    let mut kernel = answer["hooks"][0].clone();
    kernel.as_object_mut().unwrap().remove("event");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if kernel == *model {
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        assert_eq!(answer["agree"], true);
    } else {
        assert_eq!(out.status.code(), Some(1), "{answer}");
        assert_eq!(answer["agree"], false);
        assert!(stderr.contains("kernel and model disagree on the xdp hook"), "{stderr}");
        let text = rig.agent.run(&args[..args.len() - 1]);
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(text.contains("KERNEL AND MODEL DISAGREE") && text.contains("DISAGREES"), "{text}");
    }
}
