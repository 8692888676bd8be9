//! The flood comparison: every round runs every variant once, in the same
//! order, with every flood it takes (saturation floods from both
//! generators, and a paced flood for CPU per packet).
use super::Ctx;
use crate::{
    peers::{self, Applied, Blocked, Variant},
    traffic::{self, Flood, Generator},
    world::Topology,
};
use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Whether `v` takes part in flood `f`: skb-mode XDP cannot take live
/// frames, and the drop-everything reference takes part in paced floods
/// only, where it shows what the generator and the veth cost by themselves.
pub fn takes(v: Variant, f: &Flood) -> bool {
    let generator_ok = f.generator == Generator::Trafgen || v.takes_live_frames();
    generator_ok && (v != Variant::XdpDropAll || f.rate > 0.0)
}

/// Frames per second of the paced flood that measures CPU per packet.
pub const PACED_RATE: f64 = 200_000.0;

/// The flood comparison: every round runs every variant once, in the same
/// order, with every flood it takes.
pub fn run(ctx: &Ctx, topo: &Topology, live: bool, trafgen: bool, samples: &mut Vec<Value>) -> Result<()> {
    let (lf_frames, lf_secs, tg_frames, tg_secs) =
        if ctx.quick { (2_000_000, 0.6, 600_000, 0.6) } else { (4_000_000, 1.0, 1_500_000, 1.0) };
    let mut plan: Vec<Flood> = Vec::new();
    let flows: &[bool] = if ctx.quick { &[true] } else { &[true, false] };
    if live {
        for &many in flows {
            for proto in ["tcp", "udp"] {
                plan.push(Flood {
                    many_flows: many,
                    ..Flood::new(Generator::Live, proto, lf_frames, lf_secs)
                });
            }
        }
    }
    if live {
        // CPU per packet at a rate every filter keeps up with (V0 does not:
        // without a filter each SYN reaches the container).
        let secs = if ctx.quick { 1.0 } else { 3.0 };
        let frames = (PACED_RATE * secs) as u64;
        plan.push(Flood { rate: PACED_RATE, ..Flood::new(Generator::Live, "tcp", frames, secs + 2.0) });
    }
    if trafgen {
        let protos: &[&'static str] = if ctx.quick { &["tcp"] } else { &["tcp", "udp"] };
        for &proto in protos {
            plan.push(Flood::new(Generator::Trafgen, proto, tg_frames, tg_secs));
        }
    }
    let target = Blocked::target();
    for round in 1..=ctx.rounds {
        for v in peers::FLOOD.into_iter().filter(|v| ctx.wants(*v)) {
            ctx.check_stop()?;
            let floods: Vec<&Flood> = plan.iter().filter(|f| takes(v, f)).collect();
            if floods.is_empty() {
                continue;
            }
            let applied = Applied::new(v, &target, &topo.container_ip)?;
            for f in floods {
                ctx.check_stop()?;
                let s = traffic::measure(topo, v, f, round)
                    .with_context(|| format!("{} flood on {}", f.generator.id(), v.id()))?;
                let cpu = s["cpu_ns_per_packet"]
                    .as_f64()
                    .map_or(String::new(), |x| format!(", CPU {x:.0} ns/packet"));
                ctx.log(&format!(
                    "round {round}/{} {:<24} {:<11} {} {:<4} offered {:>6.3} received {:>6.3} filter-dropped {} Mpps{cpu}",
                    ctx.rounds,
                    v.id(),
                    f.generator.id(),
                    f.proto,
                    if f.many_flows { "many" } else { "one" },
                    s["offered_mpps"].as_f64().unwrap_or(0.0),
                    s["received_mpps"].as_f64().unwrap_or(0.0),
                    s["filter_dropped_mpps"]
                        .as_f64()
                        .map_or("-".to_string(), |x| format!("{x:.3}")),
                ));
                samples.push(s);
            }
            drop(applied);
            if let Some(left) = super::leftovers() {
                bail!("{} left behind: {left}; stopping, later numbers would be wrong", v.id());
            }
        }
    }
    Ok(())
}
