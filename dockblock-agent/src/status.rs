//! What is attached where, read from the pin folder and the kernel.

use dockblock_common::proto;
use serde::Serialize;

use crate::{
    error::Result,
    link_info,
    paths::{LinkKind, PinDir},
    rules::{port_owners, Scope},
    store::RuleStore,
};

#[derive(Debug, Serialize)]
pub struct Status {
    pub pin_dir: String,
    pub attached: bool,
    pub links: Vec<LinkStatus>,
    pub rules: Option<RuleFill>,
}

#[derive(Debug, Serialize)]
pub struct LinkStatus {
    /// "xdp" or "tc".
    pub hook: &'static str,
    /// XDP mode: "native" or "skb"; null for tc.
    pub mode: Option<&'static str>,
    /// "judge" (drops by the rules) or "track" (records UDP flows opened
    /// from blocked ports, so their replies pass).
    pub role: &'static str,
    /// "ingress" or "egress".
    pub direction: &'static str,
    pub interface: String,
    /// 0 when the interface is gone.
    pub ifindex: u32,
    pub link_id: u32,
    pub program_id: u32,
    /// "attached", or "defunct" when the interface disappeared (re-run
    /// `attach` once it is back).
    pub state: &'static str,
}

#[derive(Debug, Serialize)]
pub struct RuleFill {
    pub rules: u32,
    pub capacity: u32,
    /// Allow-list entries over all rules, and how many fit.
    pub allow_entries: u32,
    pub allow_capacity: u32,
    /// Distinct (scope, protocol, port) slots that a rule blocks.
    pub blocked_port_slots: u32,
}

pub fn status(pins: &PinDir) -> Result<Status> {
    let attached = pins.is_attached();
    let links = pins
        .links()
        .into_iter()
        .map(|pin| {
            let info = link_info::read(&pin.path).ok();
            let ifindex = info.map_or(0, |i| i.ifindex);
            let live = ifindex != 0 && link_info::ifindex(&pin.interface) == Some(ifindex);
            LinkStatus {
                hook: pin.kind.hook(),
                mode: match pin.kind {
                    LinkKind::XdpNative => Some("native"),
                    LinkKind::XdpSkb => Some("skb"),
                    _ => None,
                },
                role: if pin.kind.is_tracking() { "track" } else { "judge" },
                direction: if pin.kind.is_egress() { "egress" } else { "ingress" },
                interface: pin.interface,
                ifindex,
                link_id: info.map_or(0, |i| i.link_id),
                program_id: info.map_or(0, |i| i.program_id),
                state: if live { "attached" } else { "defunct" },
            }
        })
        .collect();
    let rules = if attached {
        let store = RuleStore::open(pins)?;
        let rules = store.rules()?;
        let slots = Scope::ALL
            .into_iter()
            .flat_map(|scope| [proto::TCP, proto::UDP].map(|p| (scope, p)))
            .map(|(scope, p)| port_owners(&rules, scope, p).iter().filter(|o| o.is_some()).count() as u32)
            .sum();
        let allow_entries = rules.iter().map(|r| r.options.allow_from.len() as u32).sum();
        Some(RuleFill {
            rules: rules.len() as u32,
            capacity: store.capacity(),
            allow_entries,
            allow_capacity: store.allow_capacity(),
            blocked_port_slots: slots,
        })
    } else {
        None
    };
    Ok(Status { pin_dir: pins.root().display().to_string(), attached, links, rules })
}
