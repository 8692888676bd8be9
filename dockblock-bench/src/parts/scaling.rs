//! Rule scaling: N blocked ports (N = 1 .. 10,000), with the live-frames
//! TCP SYN flood spread over all N of them, on two paths:
//! - dialed ports, for the filters that judge them before conntrack (so
//!   traffic to any of the N ports meets the filter, published or not):
//!   iptables raw (N rules), nft raw (N rules, or one rule and an N-port
//!   set), xdp-filter and dockblock XDP;
//! - container ports on the FORWARD path: the flood is addressed to the
//!   container itself (routed by the host, no DNAT), for iptables
//!   DOCKER-USER (N rules), nft forward (N rules, or a set) and dockblock
//!   TC. Publishing 10,000 ports is not practical, so a DOCKER-USER ACCEPT
//!   for the outside namespace's traffic to the container stands in for
//!   Docker's per-port ACCEPT rules (without it Docker's FORWARD policy
//!   would drop the flood before the bridge, where dockblock TC runs; the
//!   filters under test sit before it).
//!
//! The time each tool took to install the N rules is the control-plane
//! figure.
use super::Ctx;
use crate::{
    peers::{self, Blocked, Variant},
    traffic::{self, Flood, Generator},
    world::Topology,
};
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::time::Instant;

const BASE_PORT: u16 = 20000;

pub fn run(ctx: &Ctx, topo: &Topology) -> Result<Value> {
    let counts: &[u16] = &[1, 100, 1000, 10_000];
    // (variant, judges container ports on the forward path)
    let list = [
        (Variant::IptRaw, false),
        (Variant::NftRaw, false),
        (Variant::NftRawSet, false),
        (Variant::XdpFilterNative, false),
        (Variant::DbXdpNative, false),
        (Variant::IptUser, true),
        (Variant::NftFwdLinear, true),
        (Variant::NftFwdSet, true),
        (Variant::DbTc, true),
    ];
    let rounds = 3;
    let mut samples = Vec::new();
    let mut installs = Vec::new();
    let _standin = peers::ForwardStandIn::new(&topo.container_ip)?;
    for &n in counts {
        let ports: Vec<u16> = (BASE_PORT..BASE_PORT + n).collect();
        for (v, forward) in list.into_iter().filter(|(v, _)| ctx.wants(*v)) {
            let blocked = if forward {
                Blocked { dialed: vec![], container: ports.clone(), protos: vec!["tcp"] }
            } else {
                Blocked { dialed: ports.clone(), container: vec![], protos: vec!["tcp"] }
            };
            ctx.check_stop()?;
            let t = Instant::now();
            let applied = peers::Applied::new(v, &blocked, &topo.container_ip)?;
            let install = t.elapsed().as_secs_f64();
            ctx.log(&format!("{n:>5} ports, {:<24} installed in {install:.3}s", v.id()));
            installs.push(json!({"variant": v.id(), "ports": n, "seconds": install, "path": if forward { "forward" } else { "dialed" }}));
            let f = Flood {
                dport: BASE_PORT,
                dport_span: u32::from(n),
                to_container: forward,
                ..Flood::new(Generator::Live, "tcp", 3_000_000, 1.0)
            };
            for round in 1..=rounds {
                ctx.check_stop()?;
                let mut s = traffic::measure(topo, v, &f, round)
                    .with_context(|| format!("{} with {n} ports", v.id()))?;
                s["ports"] = json!(n);
                s["path"] = json!(if forward { "forward" } else { "dialed" });
                ctx.log(&format!(
                    "{n:>5} ports, {:<24} round {round}: filter-dropped {:.3} Mpps",
                    v.id(),
                    s["filter_dropped_mpps"].as_f64().unwrap_or(0.0)
                ));
                samples.push(s);
            }
            let t = Instant::now();
            drop(applied);
            installs
                .last_mut()
                .expect("pushed above")
                .as_object_mut()
                .expect("object")
                .insert("remove_seconds".into(), json!(t.elapsed().as_secs_f64()));
            if let Some(left) = super::leftovers() {
                anyhow::bail!("{} left behind: {left}", v.id());
            }
        }
    }
    Ok(json!({"base_port": BASE_PORT, "samples": samples, "installs": installs}))
}
