//! docker.json (every sample) and docker.md (the tables and the targets)
//! of the Docker suite.
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::{fmt::Write as _, fs, path::Path};

/// Nearest-rank percentile `p` (0-100) of the finite values.
pub fn percentile(xs: &[f64], p: f64) -> Option<f64> {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    Some(v[rank.min(v.len()) - 1])
}

fn field(samples: &Value, key: &str, filter: impl Fn(&Value) -> bool) -> Vec<f64> {
    samples.as_array().into_iter().flatten().filter(|s| filter(s)).filter_map(|s| s[key].as_f64()).collect()
}

fn dist(xs: &[f64]) -> Value {
    json!({
        "n": xs.iter().filter(|x| x.is_finite()).count(),
        "p50": percentile(xs, 50.0),
        "p99": percentile(xs, 99.0),
        "min": percentile(xs, 0.0),
        "max": percentile(xs, 100.0),
    })
}

/// The numbers the tables and the targets use.
pub fn summarize(d: &Value) -> Value {
    let start = &d["start"]["samples"];
    let mut s = json!({});
    for kind in ["label", "container"] {
        for key in ["hook_ms", "ruled_ms", "docker_run_ms"] {
            s["start"][kind][key] = dist(&field(start, key, |x| x["kind"] == kind));
        }
    }
    let churn = &d["churn"]["samples"];
    for key in ["start_to_ruled_ms", "create_to_ruled_ms", "die_to_gone_ms", "destroy_to_gone_ms"] {
        s["churn"][key] = dist(&field(churn, key, |_| true));
    }
    let tput = &d["throughput"];
    let none = field(tput, "gbps", |x| x["hooks"] == "none");
    let daemon = field(tput, "gbps", |x| x["hooks"] == "daemon");
    let ab_hooks = field(tput, "gbps", |x| x["hooks"] == "ab-hooks");
    let ab_none = field(tput, "gbps", |x| x["hooks"] == "ab-none");
    let n = percentile(&none, 50.0);
    let ratio = |h: Option<f64>| match (n, h) {
        (Some(n), Some(h)) if n > 0.0 => json!(h / n),
        _ => Value::Null,
    };
    let pairs = pair_ratios(tput);
    // The kernel's own count of the hooks' run time in those runs: their
    // share of one core bounds what they take from a CPU-bound transfer.
    let share = |x: &Value| match (x["prog_ns"].as_f64(), x["secs"].as_f64()) {
        (Some(ns), Some(secs)) if secs > 0.0 => Some(ns / (secs * 1e9)),
        _ => None,
    };
    let per_run = |x: &Value| match (x["prog_ns"].as_f64(), x["prog_runs"].as_f64()) {
        (Some(ns), Some(n)) if n > 0.0 => Some(ns / n),
        _ => None,
    };
    let runs_of =
        |hooks: &'static str| tput.as_array().into_iter().flatten().filter(move |x| x["hooks"] == hooks);
    let hook_share: Vec<f64> = runs_of("ab-hooks-stats").filter_map(share).collect();
    let hook_ns: Vec<f64> = runs_of("ab-hooks-stats").filter_map(per_run).collect();
    let stats_runs = field(tput, "gbps", |x| x["hooks"] == "ab-hooks-stats");
    let none_runs = field(tput, "prog_runs", |x| x["hooks"] == "ab-none");
    s["throughput"] = json!({
        "none": dist(&none),
        "daemon": dist(&daemon),
        "ab_hooks": dist(&ab_hooks),
        "ab_none": dist(&ab_none),
        "ab_hooks_stats": dist(&stats_runs),
        "ratio": ratio(percentile(&daemon, 50.0)),
        "pair_ratios": dist(&pairs),
        "veth_ratio": percentile(&pairs, 50.0),
        "hooks_core_share": dist(&hook_share),
        "hooks_ns_per_run": dist(&hook_ns),
        "none_prog_runs": dist(&none_runs),
    });
    for b in ["no-filter", "dockblock-container-rule", "iptables-docker-user", "dockblock-bridge-tc"] {
        let f = &d["floods"];
        s["floods"][b] = json!({
            "cpu_ns_per_packet": dist(&field(f, "cpu_ns_per_packet", |x| x["blocker"] == b)),
            "cpu_ns_per_packet_net": dist(&field(f, "cpu_ns_per_packet_net", |x| x["blocker"] == b)),
            "conntrack_left": dist(&field(f, "conntrack_left", |x| x["blocker"] == b)),
            "reached_container": dist(&field(f, "reached_container", |x| x["blocker"] == b)),
            "offered_mpps": dist(&field(f, "offered_mpps", |x| x["blocker"] == b)),
        });
    }
    s
}

/// Hooks over none in each interleaved pair (adjacent runs).
fn pair_ratios(tput: &Value) -> Vec<f64> {
    let runs = tput.as_array().map_or(&[][..], Vec::as_slice);
    let of = |pair: &Value, hooks: &str| {
        runs.iter().find(|x| &x["pair"] == pair && x["hooks"] == hooks).and_then(|x| x["gbps"].as_f64())
    };
    let pairs: std::collections::BTreeSet<u64> = runs.iter().filter_map(|x| x["pair"].as_u64()).collect();
    pairs
        .into_iter()
        .filter_map(|p| match (of(&json!(p), "ab-hooks"), of(&json!(p), "ab-none")) {
            (Some(h), Some(n)) if n > 0.0 => Some(h / n),
            _ => None,
        })
        .collect()
}

fn num(v: &Value, d: usize) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.d$}"))
}

fn p50_p99(v: &Value, d: usize) -> String {
    format!("{} / {}", num(&v["p50"], d), num(&v["p99"], d))
}

pub fn write(dir: &Path, results: &Value) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut results = results.clone();
    results["summary"] = summarize(&results["parts"]["docker"]);
    fs::write(dir.join("docker.md"), markdown(&results)).context("writing docker.md")?;
    fs::write(dir.join("docker.json"), serde_json::to_string(&results)?).context("writing docker.json")?;
    Ok(())
}

fn markdown(r: &Value) -> String {
    let env = &r["environment"];
    let d = &r["parts"]["docker"];
    let s = &r["summary"];
    let t = |v: &Value| v.as_str().unwrap_or("?").to_string();
    let mut md = String::new();
    let _ = writeln!(md, "# dockblock benchmark: Docker suite\n");
    let _ = writeln!(
        md,
        "{} run, {} UTC, commit {}{}, {:.0} s. Reproduce: `cargo xtask bench --docker{}`.\n",
        if env["quick"] == true { "Quick (smoke)" } else { "Full" },
        t(&env["date"]),
        t(&env["git_commit"]),
        if env["git_dirty"] == true { " + uncommitted changes" } else { "" },
        env["seconds"].as_f64().unwrap_or(0.0),
        if env["quick"] == true { " --quick" } else { "" },
    );
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(md, "| kernel | {} |", t(&env["kernel"]));
    let _ = writeln!(md, "| CPU | {} x {} |", env["cpus"], t(&env["cpu"]));
    let _ = writeln!(md, "| docker | {} |", t(&env["docker"]));
    let _ = writeln!(md, "| agent | {} |", t(&d["agent"]));
    let _ = writeln!(md, "| other dockblock daemons | {} |", d["other_daemons"]);
    let _ = writeln!(
        md,
        "| load average at start / end | {} / {} |",
        t(&env["loadavg_at_start"]),
        t(&env["loadavg_at_end"])
    );
    let _ = writeln!(md, "| DOCKER-USER unchanged after the run | {} |\n", env["docker_user_intact"]);
    if let Some(e) = d["error"].as_str() {
        let _ = writeln!(md, "**The suite failed:** {e}\n");
    }

    let _ = writeln!(md, "## `docker run` to the rule in force (ms from the command's start, p50 / p99)\n");
    let _ = writeln!(md, "| rule made before the start | n | veth hook pinned (closed) | reviewed with entries | `docker run` returned |");
    let _ = writeln!(md, "|---|---|---|---|---|");
    for (kind, what) in
        [("label", "label `dockblock.block=80/tcp`"), ("container", "`block --container NAME 80/tcp`")]
    {
        let k = &s["start"][kind];
        let _ = writeln!(
            md,
            "| {what} | {} | {} | {} | {} |",
            k["ruled_ms"]["n"],
            p50_p99(&k["hook_ms"], 1),
            p50_p99(&k["ruled_ms"], 1),
            p50_p99(&k["docker_run_ms"], 1)
        );
    }

    let c = &d["churn"];
    let _ = writeln!(
        md,
        "\n## Event to kernel under churn\n\n{} containers created, started, stopped (`-t 0`) and removed, {} \
         alive at a time, in {:.0} s ({} engine events, {} failures); kernel polled every ~1 ms (longest \
         gap {} ms). Engine event time (`timeNano`) to the first poll that saw the change; negative: \
         the kernel had it before the engine reported the event.\n",
        c["containers"],
        c["alive_at_once"],
        c["seconds"].as_f64().unwrap_or(0.0),
        c["events"],
        c["failures"].as_array().map_or(0, Vec::len),
        num(&c["max_poll_gap_ms"], 1),
    );
    let _ = writeln!(md, "| from | to | n | p50 ms | p99 ms | min | max |\n|---|---|---|---|---|---|---|");
    for (key, from, to) in [
        ("start_to_ruled_ms", "`start` event", "veth reviewed with entries"),
        ("create_to_ruled_ms", "`create` event", "veth reviewed with entries"),
        ("die_to_gone_ms", "`die` event", "`VETHS` entry gone"),
        ("destroy_to_gone_ms", "`destroy` event", "`VETHS` entry gone"),
    ] {
        let v = &s["churn"][key];
        let _ = writeln!(
            md,
            "| {from} | {to} | {} | {} | {} | {} | {} |",
            v["n"],
            num(&v["p50"], 1),
            num(&v["p99"], 1),
            num(&v["min"], 1),
            num(&v["max"], 1)
        );
    }

    let dm = &d["daemon"];
    let _ = writeln!(md, "\n## The daemon's CPU and memory\n");
    let _ = writeln!(
        md,
        "Ready (`status` running with a first sync) {} s after start.\n",
        num(&dm["ready_secs"], 1)
    );
    let _ = writeln!(
        md,
        "| window | seconds | CPU, % of one core | VmRSS MiB | VmHWM MiB |\n|---|---|---|---|---|"
    );
    for (name, w) in [("idle", &dm["idle"]), ("churn", &c["daemon"])] {
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} |",
            num(&w["seconds"], 0),
            num(&w["cpu_pct_of_one_core"], 3),
            num(&w["vm_rss_mib"], 1),
            num(&w["vm_hwm_mib"], 1)
        );
    }

    let sv = &d["service"];
    if sv.is_object() {
        let _ = writeln!(
            md,
            "\n## The daemon as a service\n\n{} dialed-port rules (one `apply`) and {} running containers, \
             each with its own `dockblock.block` label. In force: `list` has every rule and every container's \
             veth is reviewed with entries. Restart: SIGTERM, then `run` over the same pins (the kernel \
             enforces throughout; the gap is how long a container started meanwhile waits for review, closed). \
             Cold start: the pins removed, as a reboot empties bpffs; the rules come back from the saved \
             state.\n",
            sv["rules"], sv["containers"]
        );
        let _ = writeln!(md, "| | ms |\n|---|---|");
        for (what, v) in [
            ("restart: SIGTERM to exit", &sv["restart"]["stop_ms"]),
            ("restart: `run` to first sync", &sv["restart"]["first_sync_ms"]),
            ("restart: `run` to state in force", &sv["restart"]["in_force_ms"]),
            ("restart: gap (exit + first sync)", &sv["restart"]["gap_ms"]),
            ("cold start: `run` to first sync", &sv["cold_start"]["first_sync_ms"]),
            ("cold start: `run` to state in force", &sv["cold_start"]["in_force_ms"]),
        ] {
            let _ = writeln!(md, "| {what} | {} |", num(v, 0));
        }
        if let Some(e) = sv["cold_start"]["error"].as_str() {
            let _ = writeln!(md, "\nCold start not in force: {e}");
        }
        let _ =
            writeln!(md, "\n| daemon holding that state (idle 3 s) | VmRSS MiB | VmHWM MiB |\n|---|---|---|");
        for (what, m) in [
            ("loaded (first daemon)", &sv["memory_loaded"]),
            ("after the restart", &sv["memory_restarted"]),
            ("after the cold start", &sv["memory_cold"]),
        ] {
            let _ = writeln!(md, "| {what} | {} | {} |", num(&m["vm_rss_mib"], 1), num(&m["vm_hwm_mib"], 1));
        }
    }

    let tp = &s["throughput"];
    let _ = writeln!(
        md,
        "\n## Allowed throughput into the container\n\niperf3 from the outside namespace to the published \
         port, server in the container's network namespace; no daemon (runs before and after the \
         daemon's), with the daemon's hooks (XDP on the uplink, TC on the bridges, the hook on the \
         container's veth, which has a rule on another port), and in interleaved pairs (V N, N V, ...) \
         the bridge and veth hooks only against no program attached (no uplink: XDP on a veth uplink \
         costs the veth pair its GRO/TSO batching, which a NIC's native XDP does not).\n"
    );
    let _ = writeln!(md, "| hooks | runs | Gbit/s p50 | min-max |\n|---|---|---|---|");
    for (name, key) in [
        ("none", "none"),
        ("the daemon's", "daemon"),
        ("interleaved: bridge and veth hooks", "ab_hooks"),
        ("interleaved: none", "ab_none"),
    ] {
        let v = &tp[key];
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {}-{} |",
            v["n"],
            num(&v["p50"], 2),
            num(&v["min"], 2),
            num(&v["max"], 2)
        );
    }
    let _ = writeln!(
        md,
        "\nRatio (medians) to none: {} with every hook; through the bridge and veth hooks, the median \
         of the pairs' ratios {} (pairs {}-{}).\n",
        num(&tp["ratio"], 3),
        num(&tp["veth_ratio"], 3),
        num(&tp["pair_ratios"]["min"], 3),
        num(&tp["pair_ratios"]["max"], 3)
    );
    let _ = writeln!(
        md,
        "The kernel's own count (`kernel.bpf_stats_enabled`), off in the pairs' hook runs (it costs \
         two clock reads per program run): in {} more runs with the hooks and the count on ({} Gbit/s \
         p50), dockblock's programs ran {} ns per run (median) and took {}% of one core (median; max \
         {}%); in the pairs' runs with none, they ran {} times (max).\n",
        num(&tp["ab_hooks_stats"]["n"], 0),
        num(&tp["ab_hooks_stats"]["p50"], 2),
        num(&tp["hooks_ns_per_run"]["p50"], 0),
        num(&tp["hooks_core_share"]["p50"].as_f64().map(|x| x * 100.0).into(), 2),
        num(&tp["hooks_core_share"]["max"].as_f64().map(|x| x * 100.0).into(), 2),
        num(&tp["none_prog_runs"]["max"], 0),
    );

    let _ = writeln!(
        md,
        "## The container-rule flood\n\ntrafgen TCP SYNs, random source ports, {} pps for {} s per run at \
         the published port of the blocked container port, {} round(s). CPU: system + softirq time of \
         the whole box from `/proc/stat` per packet sent (the generator's own sending included, the \
         same in every row); net: minus the same counters' rate in the second before the run.\n",
        d["plan"]["flood_rate_pps"], d["plan"]["flood_secs"], d["plan"]["flood_rounds"],
    );
    let _ = writeln!(
        md,
        "| blocked by | CPU ns/packet (median) | net | conntrack entries left | reached the container |\n|---|---|---|---|---|"
    );
    for (b, what) in [
        ("dockblock-container-rule", "dockblock `block --container` (derived rule, XDP on the uplink)"),
        ("iptables-docker-user", "iptables DOCKER-USER on the container port"),
        ("dockblock-bridge-tc", "dockblock TC on the bridge only (`--container-port`, no XDP)"),
        ("no-filter", "nothing (reference)"),
    ] {
        let v = &s["floods"][b];
        let _ = writeln!(
            md,
            "| {what} | {} | {} | {} | {} |",
            num(&v["cpu_ns_per_packet"]["p50"], 0),
            num(&v["cpu_ns_per_packet_net"]["p50"], 0),
            num(&v["conntrack_left"]["p50"], 0),
            num(&v["reached_container"]["max"], 0),
        );
    }

    let _ = writeln!(md, "\n## Targets\n\n| target | result | |\n|---|---|---|");
    let idle_cpu = dm["idle"]["cpu_pct_of_one_core"].as_f64();
    let hwm = [
        dm["idle"]["vm_hwm_mib"].as_f64(),
        c["daemon"]["vm_hwm_mib"].as_f64(),
        dm["end"]["vm_hwm_mib"].as_f64(),
    ]
    .into_iter()
    .flatten()
    .fold(f64::NAN, f64::max);
    let verdict = |ok: Option<bool>| match ok {
        Some(true) => "met",
        Some(false) => "**not met**",
        None => "not measured",
    };
    let ratio = tp["veth_ratio"].as_f64();
    let _ = writeln!(
        md,
        "| allowed throughput through the per-container hook >= 98% of none | {} | {} |",
        ratio.map_or("-".into(), |r| format!("{:.1}%", r * 100.0)),
        verdict(ratio.map(|r| r >= 0.98))
    );
    let share = tp["hooks_core_share"]["max"].as_f64();
    let _ = writeln!(
        md,
        "| the same, bounded by the hooks' own CPU: < 2% of one core in every run (kernel's count) | {} | {} |",
        share.map_or("-".into(), |x| format!("{:.2}%", x * 100.0)),
        verdict(share.map(|x| x < 0.02))
    );
    let _ = writeln!(
        md,
        "| idle daemon < 0.5% of one core | {} | {} |",
        idle_cpu.map_or("-".into(), |x| format!("{x:.3}%")),
        verdict(idle_cpu.map(|x| x < 0.5))
    );
    let rss = [
        dm["idle"]["vm_rss_mib"].as_f64(),
        c["daemon"]["vm_rss_mib"].as_f64(),
        dm["end"]["vm_rss_mib"].as_f64(),
    ]
    .into_iter()
    .flatten()
    .fold(f64::NAN, f64::max);
    let _ = writeln!(
        md,
        "| daemon memory < 30 MiB (VmRSS, idle and churn; the start-up peak VmHWM {}) | {} | {} |",
        if hwm.is_finite() { format!("{hwm:.1} MiB") } else { "-".into() },
        if rss.is_finite() { format!("{rss:.1} MiB") } else { "-".into() },
        verdict(rss.is_finite().then_some(rss < 30.0))
    );
    md
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank() {
        let xs: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&xs, 50.0), Some(10.0));
        assert_eq!(percentile(&xs, 99.0), Some(20.0));
        assert_eq!(percentile(&xs, 0.0), Some(1.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[f64::NAN, 3.0], 50.0), Some(3.0));
    }
}
