//! Legitimate traffic while a flood hits the blocked port: request latency
//! (short HTTP/1.0 requests to the allowed published port, one after
//! another) and TCP throughput (iperf3 to a published port), with attack
//! traffic at 0, 25, 50 and 100% of what the host takes in with no filter
//! (V0's received rate under the trafgen TCP SYN flood, random source
//! ports). The attacker is trafgen at a fixed rate (`-b Npps`), because it
//! works with every variant, skb-mode XDP included (live frames do not).
use super::Ctx;
use crate::{
    peers::{self, Variant},
    traffic::{self, Flood, Generator},
    world::{self, Topology, ALLOWED_PORT, HOST_IP, IPERF_PORT, NS},
};
use anyhow::{Context, Result};
use dockblock_testkit::cmd::{self, in_ns};
use serde_json::{json, Value};
use std::time::Duration;

pub fn run(ctx: &Ctx, topo: &Topology, flood_samples: &[Value]) -> Result<Value> {
    let (list, loads, rounds, attack_secs): (&[Variant], &[u32], usize, f64) = if ctx.quick {
        (
            &[
                Variant::V0,
                Variant::V0xNative,
                Variant::V0xSkb,
                Variant::IptUser,
                Variant::DbXdpNative,
                Variant::DbXdpSkb,
            ],
            &[0, 100],
            1,
            3.0,
        )
    } else {
        (
            &[
                Variant::V0,
                Variant::V0xNative,
                Variant::V0xSkb,
                Variant::IptUser,
                Variant::NftRaw,
                Variant::XdpFilterNative,
                Variant::DbXdpNative,
                Variant::DbXdpSkb,
                Variant::DbTc,
            ],
            &[0, 25, 50, 100],
            3,
            3.0,
        )
    };
    let capacity = no_filter_capacity(ctx, topo, flood_samples)?;
    ctx.log(&format!(
        "no-filter capacity (V0, trafgen TCP SYN, random source ports): {:.3} Mpps",
        capacity / 1e6
    ));
    let target = peers::Blocked::target();
    let mut samples = Vec::new();
    for round in 1..=rounds {
        for &v in list.iter().filter(|v| ctx.wants(**v)) {
            let applied = peers::Applied::new(v, &target, &topo.container_ip)?;
            for &load in loads {
                ctx.check_stop()?;
                let s = point(topo, v, load, capacity, attack_secs, round)
                    .with_context(|| format!("{} at {load}% attack", v.id()))?;
                ctx.log(&format!(
                    "round {round}/{rounds} {:<24} attack {load:>3}%: p50 {} p99 {} us, {} failed, iperf3 {} Gbit/s",
                    v.id(),
                    fmt(&s["latency"]["p50_us"], 0),
                    fmt(&s["latency"]["p99_us"], 0),
                    s["latency"]["failures"],
                    fmt(&s["throughput_gbps"], 2),
                ));
                samples.push(s);
            }
            drop(applied);
            if let Some(left) = super::leftovers() {
                anyhow::bail!("{} left behind: {left}", v.id());
            }
        }
    }
    Ok(json!({"capacity_pps": capacity, "loads_pct": loads, "samples": samples}))
}

fn fmt(v: &Value, digits: usize) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.digits$}"))
}

/// Median V0 received rate from the flood part, or a short flood now.
fn no_filter_capacity(ctx: &Ctx, topo: &Topology, samples: &[Value]) -> Result<f64> {
    let mut rates: Vec<f64> = samples
        .iter()
        .filter(|s| {
            s["variant"] == Variant::V0.id()
                && s["generator"] == Generator::Trafgen.id()
                && s["proto"] == "tcp"
                && s["flows"] == "many"
        })
        .filter_map(|s| s["received_mpps"].as_f64())
        .collect();
    if rates.is_empty() {
        ctx.log("no V0 flood sample yet: measuring the no-filter capacity");
        let _applied = peers::Applied::new(Variant::V0, &peers::Blocked::target(), &topo.container_ip)?;
        for round in 1..=3 {
            let s = traffic::measure(topo, Variant::V0, &attack(0.0, 1.0), round)?;
            rates.extend(s["received_mpps"].as_f64());
        }
    }
    rates.sort_by(f64::total_cmp);
    Ok(rates[rates.len() / 2] * 1e6)
}

fn attack(rate: f64, secs: f64) -> Flood {
    let frames = if rate > 0.0 { (rate * secs) as u64 } else { 1_000_000 };
    Flood { rate, ..Flood::new(Generator::Trafgen, "tcp", frames, secs) }
}

/// One measurement: attack at `load`% of `capacity` in the background,
/// latency probes, then an iperf3 run.
fn point(topo: &Topology, v: Variant, load: u32, capacity: f64, secs: f64, round: usize) -> Result<Value> {
    world::clear_conntrack();
    let rate = capacity * f64::from(load) / 100.0;
    let mut gen = if load > 0 { Some(traffic::trafgen_background(topo, &attack(rate, secs))?) } else { None };
    if gen.is_some() {
        std::thread::sleep(Duration::from_millis(200));
    }
    let bench = world::bench_bin();
    let addr = format!("{HOST_IP}:{ALLOWED_PORT}");
    let lat = cmd::ok(&in_ns(
        NS,
        &[
            bench.to_str().unwrap_or("dockblock-bench"),
            "latency",
            "--addr",
            &addr,
            "--count",
            "200",
            "--timeout-ms",
            "1000",
            "--seconds",
            "1.2",
        ],
    ));
    let iperf = cmd::output(
        Duration::from_secs(15),
        &in_ns(
            NS,
            &[
                "iperf3",
                "-c",
                HOST_IP,
                "-p",
                &IPERF_PORT.to_string(),
                "-t",
                "1",
                "--connect-timeout",
                "1000",
                "-J",
            ],
        ),
        None,
    );
    let mut attack_mpps = Value::Null;
    if let Some(mut child) = gen.take() {
        let status = cmd::wait_limit(&mut child, Duration::from_secs_f64(secs + 20.0));
        if status.is_some() {
            let mut out = String::new();
            if let Some(mut so) = child.stdout.take() {
                use std::io::Read;
                let _ = so.read_to_string(&mut out);
            }
            if let Ok(sent) = traffic::parse_trafgen(&out, secs) {
                attack_mpps = json!(sent.frames as f64 / sent.seconds / 1e6);
            }
        }
    }
    let latency: Value = match lat {
        Ok(out) => serde_json::from_str(out.trim()).unwrap_or(Value::Null),
        Err(e) => json!({"error": format!("{e:#}")}),
    };
    let throughput = iperf
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
        .and_then(|j| j["end"]["sum_received"]["bits_per_second"].as_f64())
        .map(|b| b / 1e9);
    Ok(json!({
        "variant": v.id(),
        "load_pct": load,
        "round": round,
        "attack_target_mpps": rate / 1e6,
        "attack_sent_mpps": attack_mpps,
        "latency": latency,
        "throughput_gbps": throughput,
    }))
}
