//! results.json (everything, raw samples included), results.md (the tables
//! and the targets), and the PNG plots (plot.py via matplotlib).
use anyhow::{Context, Result};
use dockblock_testkit::cmd;
use serde_json::{json, Value};
use std::{fmt::Write as _, fs, path::Path};

/// Median and spread of a sample set.
#[derive(Clone, Copy)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

pub fn stat(mut xs: Vec<f64>) -> Option<Stat> {
    xs.retain(|x| x.is_finite());
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    let median = if n % 2 == 1 { xs[n / 2] } else { (xs[n / 2 - 1] + xs[n / 2]) / 2.0 };
    Some(Stat { median, min: xs[0], max: xs[n - 1], n })
}

fn stat_json(s: Option<Stat>) -> Value {
    match s {
        None => Value::Null,
        Some(s) => json!({"median": s.median, "min": s.min, "max": s.max, "n": s.n}),
    }
}

/// "1.23 (1.10-1.40)" with `d` decimals.
fn cell(s: Option<Stat>, d: usize) -> String {
    match s {
        None => "-".into(),
        Some(s) if s.n == 1 => format!("{:.d$}", s.median),
        Some(s) => format!("{:.d$} ({:.d$}-{:.d$})", s.median, s.min, s.max),
    }
}

fn samples<'a>(results: &'a Value, part: &str) -> Vec<&'a Value> {
    results["parts"][part]["samples"].as_array().map(|a| a.iter().collect()).unwrap_or_default()
}

/// Stat of `field` over flood samples matching the filters.
fn flood_stat(
    samples: &[&Value],
    variant: &str,
    gen: &str,
    proto: &str,
    flows: &str,
    field: &str,
) -> Option<Stat> {
    stat(
        samples
            .iter()
            .filter(|s| {
                s["variant"] == variant && s["generator"] == gen && s["proto"] == proto && s["flows"] == flows
            })
            .filter(|s| !is_paced(s))
            .filter_map(|s| s[field].as_f64())
            .collect(),
    )
}

/// Paced floods (CPU per packet at a fixed rate) are kept apart from the
/// saturation floods.
fn is_paced(sample: &Value) -> bool {
    sample["rate_mpps"].as_f64().is_some_and(|r| r > 0.0)
}

/// Stat of `field` over the paced samples of `variant`.
fn paced_stat(samples: &[&Value], variant: &str, field: &str) -> Option<Stat> {
    stat(
        samples
            .iter()
            .filter(|s| is_paced(s) && s["variant"] == variant)
            .filter_map(|s| s[field].as_f64())
            .collect(),
    )
}

const FLOOD_VARIANTS: [(&str, &str); 15] = [
    ("v0", "no filter"),
    ("v0x-native", "dockblock attached, no rules (XDP native)"),
    ("v0x-skb", "dockblock attached, no rules (XDP skb)"),
    ("xdp-drop-all", "XDP program dropping every frame (reference)"),
    ("iptables-docker-user", "DOCKER-USER, container port"),
    ("iptables-ctorigdstport", "DOCKER-USER, --ctorigdstport"),
    ("iptables-raw", "iptables raw PREROUTING"),
    ("nft-forward-linear", "nft forward, prio filter-1, rule"),
    ("nft-forward-set", "nft forward, prio filter-1, set"),
    ("nft-raw-prerouting", "nft prerouting, prio raw"),
    ("xdp-filter-native", "xdp-filter, native"),
    ("xdp-filter-skb", "xdp-filter, skb"),
    ("dockblock-xdp-native", "dockblock XDP, native"),
    ("dockblock-xdp-skb", "dockblock XDP, skb"),
    ("dockblock-tc", "dockblock TC on the bridge"),
];

pub fn write(dir: &Path, results: &Value, quick: bool) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut results = results.clone();
    let summary = summarize(&results);
    results["summary"] = summary;
    let md = markdown(&results, quick);
    fs::write(dir.join("results.md"), md).context("writing results.md")?;
    round_floats(&mut results);
    // Compact, one line: the file is for machines, and it is committed.
    let text = serde_json::to_string(&results)?;
    fs::write(dir.join("results.json"), text).context("writing results.json")?;
    plots(dir);
    Ok(())
}

/// Four decimals are plenty for rates in Mpps, seconds and ns, and halve
/// the file.
fn round_floats(v: &mut Value) {
    match v {
        Value::Number(n) if n.is_f64() => {
            let x = n.as_f64().unwrap_or(0.0);
            if let Some(r) = serde_json::Number::from_f64((x * 1e4).round() / 1e4) {
                *n = r;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(round_floats),
        Value::Object(o) => o.values_mut().for_each(round_floats),
        _ => {}
    }
}

/// Runs plot.py with Debian's python3 (where python3-matplotlib lives).
fn plots(dir: &Path) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/src/plot.py");
    let python = if Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" };
    let d = dir.to_string_lossy();
    match cmd::checked(std::time::Duration::from_secs(120), &[python, script, &d], None) {
        Ok(out) => print!("{out}"),
        Err(e) => eprintln!("bench: plots failed: {e}"),
    }
}

/// Medians for machines: floods per (generator, flows, proto, variant),
/// and the target checks.
fn summarize(results: &Value) -> Value {
    let fl = samples(results, "floods");
    let mut floods = serde_json::Map::new();
    for gen in ["live-frames", "trafgen"] {
        for flows in ["many", "one"] {
            for proto in ["tcp", "udp"] {
                for (v, _) in FLOOD_VARIANTS {
                    let st = |f| flood_stat(&fl, v, gen, proto, flows, f);
                    let Some(recv) = st("received_mpps") else {
                        continue;
                    };
                    let key = format!("{gen}/{flows}/{proto}/{v}");
                    floods.insert(
                        key,
                        json!({
                            "offered_mpps": stat_json(st("offered_mpps")),
                            "received_mpps": stat_json(Some(recv)),
                            "filter_dropped_mpps": stat_json(st("filter_dropped_mpps")),
                            "ring_dropped_mpps": stat_json(st("ring_dropped_mpps")),
                            "forwarded_mpps": stat_json(st("forwarded_mpps")),
                        }),
                    );
                }
            }
        }
    }
    json!({"floods": floods, "targets": targets(results)})
}

/// Median time of the empty program of `hook` in one cost set (older
/// results measured an XDP floor only, as `floor.ns`).
fn floor_ns(set: &Value, hook: &str) -> Option<f64> {
    let ns = set["floor"][hook]["ns"]
        .as_array()
        .or_else(|| (hook == "xdp").then(|| set["floor"]["ns"].as_array()).flatten())?;
    stat(ns.iter().filter_map(Value::as_f64).collect()).map(|s| s.median)
}

/// One line per target of issue 4: what we measured and whether it is met.
fn targets(results: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    let mut push = |target: &str, measured: String, met: Option<bool>| {
        out.push(json!({"target": target, "measured": measured, "met": met}));
    };

    // Program cost.
    let sets = results["parts"]["cost"]["sets"].as_array().cloned().unwrap_or_default();
    if !sets.is_empty() {
        let median_of = |set: &Value, hook: &str, packet: &str| -> Option<f64> {
            let p = set["packets"].as_array()?.iter().find(|p| p["hook"] == hook && p["packet"] == packet)?;
            stat(p["ns"].as_array()?.iter().filter_map(Value::as_f64).collect()).map(|s| s.median)
        };
        for hook in ["xdp", "tc"] {
            // Packet kind -> its worst net median, for the kinds at 30 ns or more.
            let mut over: Vec<(String, f64)> = Vec::new();
            let (mut worst, mut worst_raw, mut floor_seen) = (0.0_f64, 0.0_f64, 0.0_f64);
            for set in &sets {
                let floor = floor_ns(set, hook).unwrap_or(0.0);
                floor_seen = floor_seen.max(floor);
                for p in set["packets"].as_array().into_iter().flatten() {
                    if p["hook"] != hook {
                        continue;
                    }
                    let ns = p["ns"].as_array().into_iter().flatten().filter_map(Value::as_f64).collect();
                    let Some(raw) = stat(ns).map(|s| s.median) else { continue };
                    let net = raw - floor;
                    worst_raw = worst_raw.max(raw);
                    worst = worst.max(net);
                    if net >= 30.0 {
                        let name = p["packet"].as_str().unwrap_or("?").to_string();
                        match over.iter_mut().find(|(n, _)| *n == name) {
                            Some(o) => o.1 = o.1.max(net),
                            None => over.push((name, net)),
                        }
                    }
                }
            }
            let detail = if over.is_empty() {
                String::new()
            } else {
                let list: Vec<String> = over.iter().map(|(n, w)| format!("{n} {w:.0}")).collect();
                format!("; at or over 30 ns (worst net ns): {}", list.join(", "))
            };
            push(
                &format!(
                    "{hook} program: < 30 ns per packet at every rule count (BPF_PROG_TEST_RUN time \
                     minus the time of an empty {hook} program run the same way)"
                ),
                format!(
                    "worst median over all packet kinds and rule sets: {worst:.0} ns net \
                     ({worst_raw:.0} ns raw, floor up to {floor_seen:.0} ns){detail}"
                ),
                Some(worst < 30.0),
            );
            for (what, allow) in
                [("from 1 to 65,535 blocked ports", false), ("from 1 to N allow-list prefixes", true)]
            {
                let xs: Vec<f64> = sets
                    .iter()
                    .filter(|s| (s["install"]["how"] == "apply") == allow)
                    .filter_map(|s| median_of(s, hook, "tcp_syn_blocked"))
                    .collect();
                if xs.len() < 2 {
                    continue;
                }
                let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = xs.iter().copied().fold(0.0, f64::max);
                push(
                    &format!("{hook} program: flat {what} (blocked SYN; flat = within 5 ns or 20%)"),
                    format!("{lo:.0}-{hi:.0} ns across {} rule sets", xs.len()),
                    Some(hi - lo <= 5.0_f64.max(lo * 0.2)),
                );
            }
        }
    }

    // Floods: dropped-by-filter medians.
    let fl = samples(results, "floods");
    let dropped = |v: &str, gen: &str, proto: &str, flows: &str| {
        flood_stat(&fl, v, gen, proto, flows, "filter_dropped_mpps").map(|s| s.median)
    };
    for flows in ["one", "many"] {
        for proto in ["tcp", "udp"] {
            let g = "live-frames";
            let Some(db) = dropped("dockblock-xdp-native", g, proto, flows) else {
                continue;
            };
            for (peer, factor) in
                [("iptables-docker-user", 5.0), ("nft-raw-prerouting", 1.5), ("xdp-filter-native", 0.9)]
            {
                if let Some(p) = dropped(peer, g, proto, flows) {
                    push(
                        &format!(
                            "live frames ({proto}, {flows} flow{}): dockblock XDP native >= {factor}x {peer}",
                            if flows == "many" { "s" } else { "" }
                        ),
                        format!("{db:.2} vs {p:.2} Mpps dropped = {:.2}x", db / p),
                        Some(db >= factor * p),
                    );
                }
            }
        }
    }
    for proto in ["tcp", "udp"] {
        let g = "trafgen";
        let best = |a: &str, b: &str| match (dropped(a, g, proto, "many"), dropped(b, g, proto, "many")) {
            (Some(x), Some(y)) => Some(x.max(y)),
            (x, y) => x.or(y),
        };
        let Some(db) = best("dockblock-xdp-native", "dockblock-xdp-skb") else {
            continue;
        };
        if let Some(p) = dropped("iptables-docker-user", g, proto, "many") {
            push(
                &format!("trafgen ({proto}): dockblock (best XDP mode) >= 3x DOCKER-USER"),
                format!("{db:.2} vs {p:.2} Mpps dropped = {:.2}x", db / p),
                Some(db >= 3.0 * p),
            );
        }
        if let Some(p) = best("xdp-filter-native", "xdp-filter-skb") {
            push(
                &format!("trafgen ({proto}): dockblock no slower than xdp-filter in its best mode"),
                format!("{db:.2} vs {p:.2} Mpps dropped = {:.2}x", db / p),
                Some(db >= p * 0.98),
            );
        }
    }

    // Legitimate traffic.
    let lg = samples(results, "legit");
    let lstat = |v: &str, load: u64, f: &dyn Fn(&Value) -> Option<f64>| {
        stat(lg.iter().filter(|s| s["variant"] == v && s["load_pct"] == load).filter_map(|s| f(s)).collect())
            .map(|s| s.median)
    };
    let tput = |s: &Value| s["throughput_gbps"].as_f64();
    let p99 = |s: &Value| s["latency"]["p99_us"].as_f64();
    for (db, base_v) in [("dockblock-xdp-native", "v0x-native"), ("dockblock-xdp-skb", "v0x-skb")] {
        if let (Some(under), Some(base)) = (lstat(db, 100, &tput), lstat(base_v, 0, &tput)) {
            push(
                &format!("{db}: allowed traffic keeps >= 95% of {base_v} (no attack) throughput under a flood at no-filter capacity"),
                format!("{under:.2} vs {base:.2} Gbit/s = {:.0}%", 100.0 * under / base),
                Some(under >= 0.95 * base),
            );
        }
        if let (Some(under), Some(base)) = (lstat(db, 100, &p99), lstat(db, 0, &p99)) {
            push(
                &format!("{db}: p99 latency within 2x of no attack under a flood at no-filter capacity"),
                format!("{under:.0} vs {base:.0} us = {:.2}x", under / base),
                Some(under <= 2.0 * base),
            );
        }
    }
    out
}

fn markdown(results: &Value, quick: bool) -> String {
    let env = &results["environment"];
    let mut md = String::new();
    let s = |v: &Value| v.as_str().unwrap_or("?").to_string();
    let _ = writeln!(md, "# dockblock benchmark results\n");
    let _ = writeln!(
        md,
        "{} run, {} rounds, {} UTC, commit {}{}, {:.0} s. Reproduce: `cargo xtask bench{}`.\n",
        if quick { "Quick (smoke)" } else { "Full" },
        env["rounds"],
        s(&env["date"]),
        s(&env["git_commit"]),
        if env["git_dirty"] == true { " + uncommitted changes" } else { "" },
        env["seconds"].as_f64().unwrap_or(0.0),
        if quick { " --quick" } else { "" },
    );
    // Parts measured again in a later run and put into this one's results
    // (by hand: a part that failed is run alone with --only and --out).
    for m in env["merged_parts"].as_array().into_iter().flatten() {
        let parts: Vec<&str> =
            m["parts"].as_array().into_iter().flatten().filter_map(|p| p.as_str()).collect();
        let _ = writeln!(
            md,
            "Parts {} from a run of their own ({} UTC, commit {}): {}.\n",
            parts.join(", "),
            s(&m["date"]),
            s(&m["git_commit"]),
            s(&m["why"]),
        );
    }
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(md, "| kernel | {} |", s(&env["kernel"]));
    let _ = writeln!(md, "| CPU | {} x {} |", env["cpus"], s(&env["cpu"]));
    let _ = writeln!(md, "| iptables | {} |", s(&env["iptables"]));
    let _ = writeln!(md, "| nft | {} |", s(&env["nft"]));
    let _ = writeln!(md, "| xdp-tools (xdp-filter) | {} |", s(&env["xdp_filter"]));
    let _ = writeln!(md, "| netsniff-ng (trafgen) | {} |", s(&env["netsniff_ng"]));
    let _ = writeln!(md, "| bpf_jit_enable | {} |", s(&env["bpf_jit_enable"]));
    let _ = writeln!(md, "| load average at start | {} |", s(&env["loadavg_at_start"]));
    if env["loadavg_at_end"].is_string() {
        let _ = writeln!(md, "| load average at end | {} |", s(&env["loadavg_at_end"]));
    }
    let _ = writeln!(md, "| DOCKER-USER unchanged after the run | {} |", env["docker_user_intact"]);
    let _ = writeln!(
        md,
        "\nThe machine is shared with development work (builds and test runs on its {} CPUs may \
         overlap the run; see the load averages), and the traffic generators run on the same \
         CPUs as the host under test: absolute numbers are noisy, compare ratios within one \
         run. Medians over rounds, (min-max) in brackets.\n",
        env["cpus"]
    );
    for (name, part) in results["parts"].as_object().into_iter().flatten() {
        if let Some(e) = part["error"].as_str() {
            let _ = writeln!(md, "**Part `{name}` failed:** {e}\n");
        }
    }

    // Targets.
    let targets = results["summary"]["targets"].as_array().cloned().unwrap_or_default();
    if !targets.is_empty() {
        let _ = writeln!(md, "## Targets (issue 4)\n\n| target | measured | |\n|---|---|---|");
        for t in &targets {
            let met = match t["met"].as_bool() {
                Some(true) => "met",
                Some(false) => "**not met**",
                None => "-",
            };
            let _ = writeln!(md, "| {} | {} | {met} |", s(&t["target"]), s(&t["measured"]));
        }
        md.push('\n');
    }

    let _ = writeln!(md, "## Variants\n\n| variant | what |\n|---|---|");
    for v in results["variants"].as_array().into_iter().flatten() {
        let _ = writeln!(md, "| {} | {} |", s(&v["id"]), s(&v["what"]));
    }
    md.push('\n');

    cost_section(&mut md, results);
    apply_section(&mut md, results);
    flood_section(&mut md, results);
    cpu_section(&mut md, results);
    legit_section(&mut md, results);
    scaling_section(&mut md, results);
    swap_section(&mut md, results);
    md
}

fn cpu_section(md: &mut String, results: &Value) {
    let fl = samples(results, "floods");
    let Some(rate) = fl.iter().find(|s| is_paced(s)).and_then(|s| s["rate_mpps"].as_f64()) else {
        return;
    };
    let _ = writeln!(
        md,
        "## CPU per packet at a fixed offered rate\n\n\
         Live-frames TCP SYN flood with random source ports at the blocked published port, paced \
         at {rate:.2} Mpps (every filter keeps up; V0 does not, as each SYN reaches the \
         container). **CPU ns/packet** = CPU time the flood took per frame sent: the \
         generator's own (which includes the host's receive path: the veth's NAPI runs in the \
         softirq at the end of each batch of 64 frames, in the generator's context: the \
         filter, conntrack, forwarding, the container's TCP stack when a SYN gets through) plus \
         what the ksoftirqd threads ran meanwhile, from the scheduler's exact runtime; other \
         processes are not counted. **Over drop-all** subtracts the reference receiver, a \
         native XDP program that drops every frame: what is left is the filter's own work. A \
         variant whose received rate is below the offered rate did not keep up, and its CPU per \
         frame sent understates its cost per frame handled.\n\n\
         **conntrack entries** = flows in the conntrack table right after the flood (cleared \
         before it): a filter that drops after conntrack confirmed the flow leaves one per \
         flood flow.\n\n\
         | variant | | received Mpps | CPU ns/packet | over drop-all | DOCKER-USER / this | conntrack entries |\n\
         |---|---|---|---|---|---|---|"
    );
    let reference = paced_stat(&fl, "xdp-drop-all", "cpu_ns_per_packet").map(|s| s.median);
    let du = paced_stat(&fl, "iptables-docker-user", "cpu_ns_per_packet").map(|s| s.median);
    for (v, label) in FLOOD_VARIANTS {
        let Some(cpu) = paced_stat(&fl, v, "cpu_ns_per_packet") else { continue };
        let over = reference.map_or("-".into(), |r| format!("{:.0}", cpu.median - r));
        let ratio = du.filter(|_| cpu.median > 0.0).map_or("-".into(), |d| format!("{:.1}x", d / cpu.median));
        let _ = writeln!(
            md,
            "| {v} | {label} | {} | {} | {over} | {ratio} | {} |",
            cell(paced_stat(&fl, v, "received_mpps"), 3),
            cell(Some(cpu), 0),
            paced_stat(&fl, v, "conntrack_entries_after").map_or("-".into(), |s| format!("{:.0}", s.median)),
        );
    }
    md.push('\n');
}

fn swap_section(md: &mut String, results: &Value) {
    let part = &results["parts"]["swap"];
    let Some(rows) = part["results"].as_array() else {
        return;
    };
    let _ = writeln!(
        md,
        "## Rule-set swaps under flood\n\n\
         For {} s a live-frames SYN flood (random source ports) hits the blocked published \
         port while the rule set is replaced back and forth, as fast as the tool goes, between \
         two sets that both block 18080 (plus 100 other ports each, different in the two \
         sets). \"Got through\" = flood packets that reached the container (an nft counter in \
         its namespace): packets misjudged during the swaps.\n\n\
         | method | swaps | median swap time | flood packets received | got through |\n\
         |---|---|---|---|---|",
        part["seconds"]
    );
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            r["method"].as_str().unwrap_or("?"),
            r["swaps"],
            r["median_swap_seconds"].as_f64().map_or("-".into(), |x| format!("{:.1} ms", x * 1000.0)),
            r["received"],
            r["misjudged"],
        );
    }
    md.push('\n');
}

fn apply_section(md: &mut String, results: &Value) {
    let part = &results["parts"]["apply"];
    let Some(samples) = part["samples"].as_array() else {
        return;
    };
    let _ = writeln!(
        md,
        "## Applying {} rules at once\n\n\
         One rule per port (`1/tcp` .. `65535/tcp`, dialed; a {} KB file), the agent attached \
         with `--max-rules 65535` to an idle veth pair, so the rule table is full to its last \
         slot. Seconds per `dockblock-agent` call (process start and map opening included), \
         median (min-max) of {} round{}.\n\n| step | seconds |\n|---|---|",
        part["rules"],
        part["file_bytes"].as_u64().unwrap_or(0) / 1000,
        samples.len(),
        if samples.len() == 1 { "" } else { "s" },
    );
    for (key, what) in crate::parts::apply::STEPS {
        let st = stat(samples.iter().filter_map(|s| s[key].as_f64()).collect());
        let _ = writeln!(md, "| {what} | {} |", cell(st, 2));
    }
    md.push('\n');
}

fn cost_section(md: &mut String, results: &Value) {
    let cost = &results["parts"]["cost"];
    let Some(sets) = cost["sets"].as_array() else {
        return;
    };
    let _ = writeln!(
        md,
        "## Program cost (BPF_PROG_TEST_RUN, repeat {}, {} rounds)\n\n\
         ns per packet, median (min-max) of rounds, by rule set (each set blocks 18080 tcp+udp, \
         the XDP program measured with the dialed-port rules, the TC program with the same \
         rules as container-port rules, each in its own attach; 65,535 = the range 1-65535). \
         The XDP program judges the dialed port, \
         the TC program (bridge egress) the container port. Times are raw: they include what \
         BPF_PROG_TEST_RUN itself costs per run, the floor, measured in the same run with \
         programs that return at once: {} ns for XDP, {} ns for TC (an skb context costs more \
         to set up). The targets above subtract it.\n",
        cost["repeat"],
        cost["rounds"],
        sets.first().and_then(|s| floor_ns(s, "xdp")).map_or("-".into(), |x| format!("{x:.0}")),
        sets.first().and_then(|s| floor_ns(s, "tc")).map_or("-".into(), |x| format!("{x:.0}")),
    );
    let mut header = "| hook | packet | verdict |".to_string();
    let mut sep = "|---|---|---|".to_string();
    for set in sets {
        let _ = write!(header, " {} |", set["label"].as_str().unwrap_or("?"));
        sep.push_str("---|");
    }
    let _ = writeln!(md, "{header}\n{sep}");
    let first = &sets[0];
    for p in first["packets"].as_array().into_iter().flatten() {
        let (hook, name) = (&p["hook"], &p["packet"]);
        let mut verdicts = Vec::new();
        let mut cells = Vec::new();
        for set in sets {
            let q = set["packets"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|q| &q["hook"] == hook && &q["packet"] == name);
            match q {
                Some(q) => {
                    let v = q["verdict"].as_str().unwrap_or("?").to_string();
                    if !verdicts.contains(&v) {
                        verdicts.push(v);
                    }
                    let ns = q["ns"].as_array().into_iter().flatten().filter_map(Value::as_f64).collect();
                    cells.push(cell(stat(ns), 0));
                }
                None => cells.push("-".into()),
            }
        }
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            hook.as_str().unwrap_or("?"),
            name.as_str().unwrap_or("?"),
            verdicts.join(" / "),
            cells.join(" | ")
        );
    }
    let _ = writeln!(
        md,
        "\n(\"allowed\" packets at 65,535 ports are blocked too: every port is. The allow-list \
         sets allow 203.0.113.0/24 plus N-1 other /24s on 18080 in both scopes: the SYN from \
         198.18.0.2 pays the longest-prefix lookup and is dropped, the one from 203.0.113.9 \
         passes as allowed.)\n\n\
         | rule set | hook | xlated insns | JIT bytes | verifier-processed insns | install |\n|---|---|---|---|---|---|"
    );
    for set in sets {
        let inst = &set["install"];
        let verb = if inst["how"] == "apply" { "apply" } else { "block" };
        let install = format!(
            "`{verb}` {:.2} s (dialed), {:.2} s (container)",
            inst["dialed"].as_f64().unwrap_or(f64::NAN),
            inst["container"].as_f64().unwrap_or(f64::NAN)
        );
        for hook in ["xdp", "tc"] {
            let p = &set["programs"][hook];
            let _ = writeln!(
                md,
                "| {}, {} rules per scope | {hook} | {} | {} | {} | {install} |",
                set["label"].as_str().unwrap_or("?"),
                set["rules_per_scope"],
                p["xlated_insns"],
                p["jited_bytes"],
                p["verified_insns"],
            );
        }
    }
    let _ = writeln!(md, "\n![cost by rule count](cost_by_rules.png)\n");
}

fn flood_section(md: &mut String, results: &Value) {
    let fl = samples(results, "floods");
    if fl.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "## Floods at the blocked published port\n\n\
         64-byte frames (60 + FCS) from the outside namespace to {}:18080 (published, container \
         port 28080). **dropped** = Mpps the filter's own counters say it dropped (dockblock \
         `stats --json`, iptables -nvx, nft counters, xdp-filter status); **received** = Mpps the \
         uplink veth took in (rx_packets); frames the generator sent beyond that were lost at the \
         veth ring (rx_dropped) before any filter saw them. For V0/V0x nothing is dropped by a \
         filter: received is the host's own capacity for this traffic. vs DU = dropped / \
         DOCKER-USER dropped.\n",
        crate::world::HOST_IP
    );
    let combos = [
        ("live-frames", "many", "Live frames, random source ports (up to 65,535 flows)"),
        ("live-frames", "one", "Live frames, one flow (the issue's reference setup)"),
        ("trafgen", "many", "trafgen (AF_PACKET, 1 process), random source ports"),
    ];
    for (gen, flows, title) in combos {
        let has = fl.iter().any(|s| s["generator"] == gen && s["flows"] == flows);
        if !has {
            continue;
        }
        let _ = writeln!(
            md,
            "### {title}\n\n| variant | | TCP SYN dropped | TCP received | TCP vs DU | UDP dropped | UDP received | UDP vs DU |\n|---|---|---|---|---|---|---|---|"
        );
        for (v, label) in FLOOD_VARIANTS {
            let st = |p: &str, f: &str| flood_stat(&fl, v, gen, p, flows, f);
            if st("tcp", "received_mpps").is_none() && st("udp", "received_mpps").is_none() {
                continue;
            }
            let vs = |p: &str| -> String {
                match (
                    st(p, "filter_dropped_mpps"),
                    flood_stat(&fl, "iptables-docker-user", gen, p, flows, "filter_dropped_mpps"),
                ) {
                    (Some(a), Some(b)) if b.median > 0.0 => format!("{:.1}x", a.median / b.median),
                    _ => "-".into(),
                }
            };
            let _ = writeln!(
                md,
                "| {v} | {label} | {} | {} | {} | {} | {} | {} |",
                cell(st("tcp", "filter_dropped_mpps"), 2),
                cell(st("tcp", "received_mpps"), 2),
                vs("tcp"),
                cell(st("udp", "filter_dropped_mpps"), 2),
                cell(st("udp", "received_mpps"), 2),
                vs("udp"),
            );
        }
        md.push('\n');
    }
    let leaks: Vec<String> = FLOOD_VARIANTS
        .iter()
        .filter(|(v, _)| !v.starts_with("v0"))
        .filter_map(|(v, _)| {
            let n: u64 = fl
                .iter()
                .filter(|s| s["variant"] == *v)
                .filter_map(|s| s["reached_container"].as_u64())
                .sum();
            (n > 0).then(|| format!("{v}: {n}"))
        })
        .collect();
    let _ = writeln!(
        md,
        "Flood packets that reached the container past a filter (nft counter in the container's \
         namespace), summed over all floods: {}.\n",
        if leaks.is_empty() { "none, for every filter".to_string() } else { leaks.join(", ") }
    );
    let _ = writeln!(
        md,
        "Skb-mode XDP variants (v0x-skb, xdp-filter-skb, dockblock-xdp-skb) are measured with \
         trafgen only: live frames reach a veth through NAPI, and with a generic-mode XDP \
         program on the receiving veth they vanish.\n\n![pps by variant](pps_by_variant.png)\n"
    );
}

fn legit_section(md: &mut String, results: &Value) {
    let part = &results["parts"]["legit"];
    let lg = samples(results, "legit");
    if lg.is_empty() {
        return;
    }
    let loads: Vec<u64> =
        part["loads_pct"].as_array().into_iter().flatten().filter_map(Value::as_u64).collect();
    let _ = writeln!(
        md,
        "## Legitimate traffic under attack\n\n\
         While trafgen floods the blocked port (TCP SYN, random source ports, paced with \
         `-b Npps`) at a share of the no-filter capacity ({:.3} Mpps = what V0 took in under \
         the trafgen flood), from the same namespace: 200 sequential HTTP/1.0 requests (at most 1.2 s) to the allowed published \
         port 18081, then a 1-second iperf3 run to published port 15201. Cells: p50 / p99 \
         latency in microseconds, iperf3 Gbit/s, failed requests.\n",
        part["capacity_pps"].as_f64().unwrap_or(0.0) / 1e6
    );
    let mut header = "| variant |".to_string();
    let mut sep = "|---|".to_string();
    for l in &loads {
        let _ = write!(header, " attack {l}% |");
        sep.push_str("---|");
    }
    let _ = writeln!(md, "{header}\n{sep}");
    let mut variants: Vec<String> = Vec::new();
    for s in &lg {
        let v = s["variant"].as_str().unwrap_or("?").to_string();
        if !variants.contains(&v) {
            variants.push(v);
        }
    }
    for v in &variants {
        let mut row = format!("| {v} |");
        for &l in &loads {
            let pts: Vec<&&Value> =
                lg.iter().filter(|s| s["variant"] == v.as_str() && s["load_pct"] == l).collect();
            let med = |f: &dyn Fn(&Value) -> Option<f64>| stat(pts.iter().filter_map(|s| f(s)).collect());
            let p50 = med(&|s| s["latency"]["p50_us"].as_f64());
            let p99 = med(&|s| s["latency"]["p99_us"].as_f64());
            let tp = med(&|s| s["throughput_gbps"].as_f64());
            let fails: u64 = pts.iter().filter_map(|s| s["latency"]["failures"].as_u64()).sum();
            let _ = write!(
                row,
                " {} / {} us, {} Gbit/s, {fails} failed |",
                p50.map_or("-".into(), |s| format!("{:.0}", s.median)),
                p99.map_or("-".into(), |s| format!("{:.0}", s.median)),
                tp.map_or("-".into(), |s| format!("{:.2}", s.median)),
            );
        }
        let _ = writeln!(md, "{row}");
    }
    let _ = writeln!(md, "\n![latency under attack](latency_under_attack.png)\n");
}

fn scaling_section(md: &mut String, results: &Value) {
    let sc = samples(results, "scaling");
    if sc.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "## Rule scaling and control plane\n\n\
         N blocked TCP ports (20000 .. 20000+N-1), live-frames SYN flood with the destination \
         port spread over all N and random source ports, on two paths. **dialed**: the flood \
         goes to the host's address, for the filters that judge the dialed port before \
         conntrack. **forward**: the flood goes to the container's address (routed by the host, \
         no DNAT), for the filters that judge the container port (DOCKER-USER, nft forward, \
         dockblock TC); a DOCKER-USER ACCEPT for this traffic stands in for Docker's per-port \
         ACCEPTs of published ports, sitting below the rules under test. Mpps dropped, median \
         (min-max) of 3 runs; then the time to install the N rules the way the tool is normally \
         driven (iptables-restore, nft -f, one xdp-filter call per port, one `dockblock-agent \
         block` call with N specs).\n"
    );
    let mut ports: Vec<u64> = sc.iter().filter_map(|s| s["ports"].as_u64()).collect();
    ports.dedup();
    ports.sort();
    ports.dedup();
    let mut header = "| variant |".to_string();
    let mut sep = "|---|".to_string();
    for n in &ports {
        let _ = write!(header, " {n} ports |");
        sep.push_str("---|");
    }
    let _ = writeln!(md, "{header}\n{sep}");
    let installs = results["parts"]["scaling"]["installs"].as_array().cloned().unwrap_or_default();
    let mut variants: Vec<String> = Vec::new();
    for s in &sc {
        let v = s["variant"].as_str().unwrap_or("?").to_string();
        if !variants.contains(&v) {
            variants.push(v);
        }
    }
    let path = |v: &str| {
        sc.iter().find(|s| s["variant"] == v).and_then(|s| s["path"].as_str()).unwrap_or("dialed").to_string()
    };
    for v in &variants {
        let mut row = format!("| {v} ({}) dropped Mpps |", path(v));
        for &n in &ports {
            let st = stat(
                sc.iter()
                    .filter(|s| s["variant"] == v.as_str() && s["ports"] == n)
                    .filter_map(|s| s["filter_dropped_mpps"].as_f64())
                    .collect(),
            );
            let _ = write!(row, " {} |", cell(st, 3));
        }
        let _ = writeln!(md, "{row}");
    }
    for v in &variants {
        let mut row = format!("| {v} install s |");
        for &n in &ports {
            let t = installs
                .iter()
                .find(|i| i["variant"] == v.as_str() && i["ports"] == n)
                .and_then(|i| i["seconds"].as_f64());
            let _ = write!(row, " {} |", t.map_or("-".into(), |t| format!("{t:.2}")));
        }
        let _ = writeln!(md, "{row}");
    }
    let _ = writeln!(md, "\n![rule scaling](scaling.png)\n");
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_and_spread() {
        let s = super::stat(vec![3.0, 1.0, f64::NAN, 2.0, 10.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.5, 1.0, 10.0, 4));
        assert!(super::stat(vec![]).is_none());
    }
}
