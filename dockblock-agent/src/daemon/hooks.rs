//! The fast path: link events. A veth enslaved to a Docker bridge gets the
//! veth hooks here, in the event handler, ~265 ms before it can carry a
//! packet (spec/docker-aware.md section 2); without a `VETHS` entry it is
//! unreviewed, i.e. closed, until the next sync reviews it. Nothing here
//! waits for the pin folder lock or the engine.

use std::collections::{BTreeMap, BTreeSet};

use super::{lock, Daemon};
use crate::{
    docker::links::{self, LinkEvent, LinkInfo},
    paths::LinkKind,
};

/// The host's links as the events left them, and the veths we hooked.
#[derive(Debug, Default)]
pub(super) struct Links {
    pub all: BTreeMap<u32, LinkInfo>,
    /// ifindex -> name of every veth this process hooked.
    pub hooked: BTreeMap<u32, String>,
}

impl Links {
    pub fn live(&self) -> Vec<LinkInfo> {
        self.all.values().cloned().collect()
    }

    fn is_bridge(l: &LinkInfo) -> bool {
        l.kind.as_deref() == Some("bridge")
    }

    /// A veth whose master is a Docker bridge.
    fn is_docker_veth(&self, l: &LinkInfo, bridges: &BTreeSet<String>) -> bool {
        l.kind.as_deref() == Some("veth")
            && l.master
                .and_then(|m| self.all.get(&m))
                .is_some_and(|b| Self::is_bridge(b) && is_docker_bridge(bridges, &b.name))
    }
}

/// A bridge of a Docker network: named in the last snapshot, or named as
/// Docker names them (`docker0`, `br-<12 hex digits>`), so a veth on a
/// network created a moment ago is hooked before the snapshot knows it.
/// (A network with its own bridge name is known from the next sync on.)
pub(super) fn is_docker_bridge(known: &BTreeSet<String>, name: &str) -> bool {
    known.contains(name)
        || name == "docker0"
        || name.strip_prefix("br-").is_some_and(|h| h.len() == 12 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl Daemon {
    /// Replaces the link table by a dump: hooks what needs hooks, forgets
    /// the hooks of links gone.
    pub(super) fn links_reset(&self, dump: Vec<LinkInfo>) {
        let mut l = lock(&self.hooks);
        l.all = dump.into_iter().map(|i| (i.ifindex, i)).collect();
        let gone: Vec<u32> = l
            .hooked
            .iter()
            .filter(|(i, n)| l.all.get(i).is_none_or(|x| &x.name != *n))
            .map(|(i, _)| *i)
            .collect();
        for ifindex in gone {
            self.unhook(&mut l, ifindex);
        }
        drop(l);
        self.hook_docker_veths();
    }

    pub(super) async fn on_link(&self, ev: LinkEvent) {
        match ev {
            LinkEvent::New(mut info) => {
                let mut l = lock(&self.hooks);
                // The bridge's own port notices (AF_BRIDGE RTM_NEWLINK, at
                // every port state change) carry no IFLA_LINKINFO: the kind
                // stays what the link's own messages said.
                if info.kind.is_none() {
                    info.kind = l.all.get(&info.ifindex).and_then(|b| b.kind.clone());
                }
                let before = l.all.insert(info.ifindex, info.clone());
                let new_or_moved =
                    before.as_ref().is_none_or(|b| b.master != info.master || b.name != info.name);
                if !new_or_moved {
                    return; // up/down and the like: nothing to do
                }
                if Links::is_bridge(&info) {
                    drop(l);
                    tracing::debug!(bridge = %info.name, "bridge appeared");
                    self.mark_dirty(true);
                    return;
                }
                let bridges = lock(&self.bridges).clone();
                if l.is_docker_veth(&info, &bridges) && !l.hooked.contains_key(&info.ifindex) {
                    self.hook(&mut l, &info);
                    drop(l);
                    self.mark_dirty(false);
                }
            }
            LinkEvent::Del { ifindex, name } => {
                // The bridge also sends RTM_DELLINK (AF_BRIDGE) for port
                // changes of a live interface (`bridge vlan del`): only a
                // link that is really gone loses its hooks.
                if crate::link_info::ifindex(&name) == Some(ifindex) {
                    return;
                }
                let mut l = lock(&self.hooks);
                let gone = l.all.remove(&ifindex);
                let hooked = l.hooked.contains_key(&ifindex);
                if hooked {
                    self.unhook(&mut l, ifindex);
                }
                drop(l);
                lock(&self.hook_problems).remove(&name);
                if gone.as_ref().is_some_and(Links::is_bridge) {
                    tracing::debug!(bridge = %name, "bridge gone");
                    self.mark_dirty(true);
                } else if hooked {
                    self.mark_dirty(false);
                }
            }
            LinkEvent::Lost => match links::dump().await {
                Ok(dump) => {
                    self.links_reset(dump);
                    self.mark_dirty(true);
                }
                Err(e) => tracing::warn!("cannot dump links after lost events: {e}"),
            },
        }
    }

    /// Hooks every veth on a Docker bridge that has no hooks yet (after a
    /// snapshot named more bridges, or its links lost); how many it hooked.
    pub(super) fn hook_docker_veths(&self) -> usize {
        let bridges = lock(&self.bridges).clone();
        let mut l = lock(&self.hooks);
        self.forget_lost_hooks(&mut l);
        let todo: Vec<LinkInfo> = l
            .all
            .values()
            .filter(|i| !l.hooked.contains_key(&i.ifindex) && l.is_docker_veth(i, &bridges))
            .cloned()
            .collect();
        for info in &todo {
            self.hook(&mut l, info);
        }
        todo.len()
    }

    /// Forgets the veths hooked here whose links are gone while the veth
    /// stays (a pin removed by hand, bpffs unmounted: the pin held the
    /// link), so they are hooked again, at the latest by the next sync;
    /// otherwise the container would go unjudged until its veth is made
    /// again.
    fn forget_lost_hooks(&self, l: &mut Links) {
        let live = |name: &str, ifindex: u32, kind| {
            crate::link_info::read(&self.pins.link(kind, name)).is_ok_and(|i| i.ifindex == ifindex)
        };
        let lost: Vec<u32> = l
            .hooked
            .iter()
            .filter(|(&i, n)| !(live(n, i, LinkKind::VethJudge) && live(n, i, LinkKind::VethTrack)))
            .map(|(&i, _)| i)
            .collect();
        for ifindex in lost {
            let name = l.hooked.remove(&ifindex).unwrap_or_default();
            tracing::warn!(veth = %name, ifindex, "veth hooks gone (pin removed?): attaching them again");
        }
    }

    fn hook(&self, l: &mut Links, info: &LinkInfo) {
        let start = std::time::Instant::now();
        match self.kernel_hooks.attach(&info.name) {
            Ok(new) => {
                l.hooked.insert(info.ifindex, info.name.clone());
                lock(&self.hook_problems).remove(&info.name);
                let elapsed_us = start.elapsed().as_micros() as u64;
                if new {
                    tracing::info!(veth = %info.name, ifindex = info.ifindex, elapsed_us, "veth hooks attached");
                } else {
                    tracing::debug!(veth = %info.name, ifindex = info.ifindex, "veth hooks already live");
                }
            }
            Err(e) => {
                tracing::warn!(veth = %info.name, "cannot hook the veth: {e}");
                lock(&self.hook_problems)
                    .insert(info.name.clone(), format!("veth {}: not hooked: {e}", info.name));
            }
        }
    }

    fn unhook(&self, l: &mut Links, ifindex: u32) {
        let Some(name) = l.hooked.remove(&ifindex) else { return };
        match self.kernel_hooks.detach(&name) {
            Ok(()) => tracing::info!(veth = %name, ifindex, "veth gone: its hooks unpinned"),
            Err(e) => tracing::warn!(veth = %name, "cannot unpin the hooks of a veth gone: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_bridges_by_name() {
        let known: BTreeSet<String> = ["dbt-net0".to_string()].into();
        assert!(is_docker_bridge(&known, "docker0"));
        assert!(is_docker_bridge(&known, "br-6e074d4ecfe1"));
        assert!(is_docker_bridge(&known, "dbt-net0"));
        assert!(!is_docker_bridge(&known, "br-lan"));
        assert!(!is_docker_bridge(&known, "br-6e074d4ecfe12"));
        assert!(!is_docker_bridge(&known, "virbr0"));
    }
}
