//! `explain PROTO SRC[:PORT] DST:PORT`: the verdict of the loaded programs
//! for one packet, with the reference model's beside it.

use dockblock_agent::{
    explain::{self, hook_name, Decision, HookReport, Query, Report, DEFAULT_SPORT},
    paths::PinDir,
    require_root, Error, Result,
};
use dockblock_common::hook;

use super::{
    output::{self, describe_options, print_json},
    ExplainArgs, HookChoice,
};

pub fn run(pins: &PinDir, args: ExplainArgs) -> Result<()> {
    require_root()?;
    let mut query =
        Query::parse(&args.proto, &args.src, &args.dst, args.flags.as_deref(), &args.vlan, args.from_host)?;
    if let Some(name) = &args.on {
        query = query.on(name)?;
    }
    if let Some(ifindex) = args.veth {
        query = query.at_veth(ifindex, args.from_ifindex)?;
    }
    let hooks = match args.hook {
        None if args.veth.is_some() => vec![hook::XDP, hook::TC, hook::VETH],
        None => explain::HOOKS.to_vec(),
        Some(HookChoice::Xdp) => vec![hook::XDP],
        Some(HookChoice::Tc) => vec![hook::TC],
        Some(HookChoice::Veth) => vec![hook::VETH],
    };
    if hooks.contains(&hook::VETH) && args.veth.is_none() {
        return Err(Error::BadArgument {
            what: "--hook",
            value: "veth".into(),
            why: "needs --veth IFINDEX (the container's host-side veth)".into(),
        });
    }
    if args.from_host && hooks == [hook::XDP] {
        return Err(Error::BadArgument {
            what: "--from-host",
            value: "xdp".into(),
            why: "only the tc hook (and the veth hook) sees packets the host sends".into(),
        });
    }
    output::warn_if_interrupted(pins);
    let report = explain::explain(pins, &query, &hooks)?;
    if args.json.json {
        print_json(&report.json());
    } else {
        print_text(&report);
    }
    match report.disagreeing() {
        Some(hooks) => Err(Error::Disagreement { hooks: format!("the {hooks} hook") }),
        None => Ok(()),
    }
}

fn print_text(report: &Report) {
    let q = &report.query;
    let (src, dst) = if q.src.is_ipv6() {
        (format!("[{}]:{}", q.src, q.sport()), format!("[{}]:{}", q.dst, q.dport))
    } else {
        (format!("{}:{}", q.src, q.sport()), format!("{}:{}", q.dst, q.dport))
    };
    let mut extras = Vec::new();
    if !q.flag_names().is_empty() {
        extras.push(format!("flags {}", q.flag_names().join(",")));
    }
    if !q.vlans.is_empty() {
        let vids: Vec<String> = q.vlans.iter().map(|v| v.to_string()).collect();
        extras.push(format!("vlan {}", vids.join(",")));
    }
    if q.from_host {
        extras.push("sent by the host".into());
    }
    if let Some(v) = q.veth {
        let from = match v.from {
            0 => "the host".to_string(),
            n => format!("ifindex {n}"),
        };
        extras.push(format!("veth ifindex {}, from {from}", v.ifindex));
    }
    extras.push(format!("{} bytes", report.frame_len));
    println!("packet: {} {src} -> {dst}, {}", q.proto.name(), extras.join(", "));
    if q.sport.is_none() {
        println!("        (no source port given: {DEFAULT_SPORT}, an ephemeral one)");
    }
    for h in &report.hooks {
        print_hook(h);
    }
    for p in &report.programs {
        let name = hook_name(p.hook);
        if p.links.is_empty() {
            println!("note: no {name} program is attached: this is what it would do once attached");
        }
        for (iface, same) in &p.links {
            if !same {
                println!(
                    "WARNING: the {name} program attached on {iface} is not this binary's \
                     (tag {:016x}): the answer is for this binary's; `attach` again to run it there",
                    p.tag
                );
            }
        }
    }
    if report.agree() {
        println!("kernel and model agree");
    } else {
        println!("!!! KERNEL AND MODEL DISAGREE on {} !!!", report.disagreeing().unwrap_or_default());
    }
}

fn print_hook(h: &HookReport) {
    let name = hook_name(h.hook);
    let place = match h.hook {
        hook::XDP => "dialed port, at the uplink",
        hook::TC => "container port, at the bridge",
        _ => "container port, at the container's veth",
    };
    println!("{name} ({place})");
    let rule = match &h.rule {
        Some(r) => format!("rule {}: {} {}{}", r.id, r.scope, r.ports, describe_options(&r.options)),
        None => h.kernel.decision.rule_id.map_or("no rule".into(), |id| format!("rule {id}")),
    };
    let event = if h.kernel.event { ", logs an event" } else { "" };
    println!("  kernel  {}  {rule}{event}", decision(&h.kernel.decision));
    let rule = h.model.rule_id.map_or("no rule".into(), |id| format!("rule {id}"));
    let mark = if h.agree() { "agrees" } else { "<<< DISAGREES" };
    println!("  model   {}  {rule}  {mark}", decision(&h.model));
}

fn decision(d: &Decision) -> String {
    format!("{}  {:<21}", d.verdict(), d.outcome_name())
}
