//! Records UDP flows that leave from a blocked port, so that their replies
//! are not taken for new inbound traffic. Only flows from blocked ports are
//! recorded: the map stays small and other traffic pays one array lookup.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use dockblock_common::{port_index, proto, rule_flag, seen, FlowKey};

use crate::{
    maps::{mark_seen, FLOWS, PORT_RULES},
    parse::{Facts, Reject},
    verdict::config,
};

/// `parsed` is what the verdict's parser made of the packet (the same
/// parser, so a flow is recorded as its replies will be read). `scope` is
/// where the reply will be judged: DIALED for packets leaving an uplink
/// (after SNAT), CONTAINER for packets leaving a container. `blocked` says
/// whether a reply to this UDP source port would be judged (and so needs
/// the flow).
#[inline(always)]
pub fn track(parsed: Result<Facts, Reject>, scope: u32, blocked: impl FnOnce(u16) -> bool) {
    let Ok(facts) = parsed else { return };
    let Some(l4) = &facts.l4 else { return };
    if l4.proto != proto::UDP || !blocked(l4.sport) {
        return;
    }
    let key = FlowKey { remote: facts.dst(), remote_port: l4.dport, local_port: l4.sport, scope };
    let _ = FLOWS.insert(key, unsafe { bpf_ktime_get_ns() }, 0);
    mark_seen(seen::FLOWS);
}

/// Whether `PORT_RULES` has a rule on UDP `port` in `scope`, or scoped
/// rules (whichever of them judges the reply, it needs the flow).
#[inline(always)]
pub fn port_table_blocks(scope: u32) -> impl FnOnce(u16) -> bool {
    move |port| {
        let index = port_index(config().generation, scope, proto::UDP, port);
        PORT_RULES.get(index).is_some_and(|rule| rule.rule_id != 0 || rule.flags & rule_flag::SCOPED != 0)
    }
}
