//! What is attached where, read from the pin folder and the kernel, and
//! whether that state is healthy: every problem comes with the command that
//! fixes it. Reads only (maps opened read-only, no lock taken).

use dockblock_common::{map_names, proto};
use serde::Serialize;

use crate::{
    bpffs,
    daemon::state::DaemonStatus,
    error::Result,
    journal, link_info,
    lock::PinLock,
    paths::{LinkKind, PinDir, BPFFS_ROOT},
    rules::{port_owners, Scope},
    store::{self, RuleStore},
};

#[derive(Debug, Serialize)]
pub struct Status {
    pub pin_dir: String,
    pub attached: bool,
    pub links: Vec<LinkStatus>,
    pub rules: Option<RuleFill>,
    /// "healthy", or "unhealthy" when `problems` is not empty.
    pub health: &'static str,
    pub problems: Vec<Problem>,
    /// A changing command holds the pin folder lock right now (journal
    /// checks are skipped: its journal is live, not left behind).
    pub busy: bool,
    /// `dockblock-agent run` of this pin folder, from its state file.
    pub daemon: DaemonStatus,
}

/// Something wrong with the pinned state, and what to run about it.
#[derive(Debug, Serialize)]
pub struct Problem {
    pub what: String,
    pub run: String,
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
    /// "attached"; "defunct" when the interface disappeared (re-run
    /// `attach` once it is back); "renamed" when the interface the link
    /// judges now has another name (`renamed_to`).
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renamed_to: Option<String>,
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
    let mut problems = Vec::new();
    let attached = pins.is_attached();
    let links: Vec<LinkStatus> = pins.links().into_iter().map(link_status).collect();
    for l in &links {
        match (l.state, &l.renamed_to) {
            ("renamed", Some(now)) => problems.push(Problem {
                what: format!("interface {} was renamed to {now}; its links still judge {now}", l.interface),
                run: format!("dockblock-agent attach {now} (adopts the links under the new name)"),
            }),
            ("defunct", _) => problems.push(Problem {
                what: format!("interface {} is gone; its {} link judges nothing", l.interface, l.hook),
                run: format!(
                    "dockblock-agent attach {0} once it is back, or dockblock-agent detach {0}",
                    l.interface
                ),
            }),
            _ => {}
        }
    }
    problems.dedup_by(|a, b| a.what == b.what);
    let busy = PinLock::is_held(pins.root());
    if !pins.root().exists() && !bpffs::is_mounted(pins.root()) {
        problems.push(Problem {
            what: format!(
                "no bpf filesystem under {}: pins (and the links only they held) are gone",
                pins.root().display()
            ),
            run: format!(
                "mount -t bpf bpf {BPFFS_ROOT} (attach mounts it), then dockblock-agent attach IFACE..."
            ),
        });
    }
    let mut pending = false;
    if !busy {
        let journal = journal::read(pins)?;
        pending = journal.change.is_some();
        if let Some(change) = &journal.change {
            problems.push(Problem { what: change.describe(), run: change.fix() });
        }
        if let Some(command) = &journal.attach {
            problems.push(Problem { what: "an attach was interrupted".into(), run: command.clone() });
        }
    }
    let missing: Vec<&str> = map_names::ALL.into_iter().filter(|n| !pins.map(n).exists()).collect();
    let partial = !missing.is_empty() && (missing.len() < map_names::ALL.len() || !links.is_empty());
    if pins.root().exists() && partial && !pending {
        problems.push(Problem {
            what: format!("pinned maps missing (removed behind dockblock's back?): {}", missing.join(", ")),
            run: "dockblock-agent export > rules.toml (if it still works), dockblock-agent detach, \
                  dockblock-agent attach IFACE..., dockblock-agent apply rules.toml"
                .into(),
        });
    }
    let (daemon, last_state) = DaemonStatus::read(pins)?;
    if let Some(state) = last_state.filter(|s| attached && !daemon.running && s.stopped.is_none()) {
        problems.push(Problem {
            what: format!(
                "the daemon (pid {}) is gone without stopping: new containers are not reviewed, \
                 rules of running ones stay",
                state.pid
            ),
            run: "dockblock-agent run (with the uplinks it had)".into(),
        });
    }
    let insecure = pins.insecure();
    if !insecure.is_empty() {
        let paths: Vec<String> = insecure.iter().map(|p| p.display().to_string()).collect();
        problems.push(Problem {
            what: format!("not root's 0700/0600: {}", paths.join(", ")),
            run: "dockblock-agent repair".into(),
        });
    }
    let mut rules = None;
    if attached && missing.is_empty() {
        for m in store::map_mismatches(pins)? {
            let problem = match crate::migrate::converter(&m) {
                Some(c) => Problem {
                    what: format!(
                        "pinned map {} has an older release's layout ({}; changed in {})",
                        m.name,
                        m.why(),
                        c.changed_in
                    ),
                    run: "start the daemon (or dockblock-agent attach IFACE...): it migrates the map in place"
                        .into(),
                },
                None => Problem {
                    what: m.error().to_string(),
                    run: "dockblock-agent export > rules.toml (with the release that attached), dockblock-agent \
                          detach, dockblock-agent attach IFACE..., dockblock-agent apply rules.toml"
                        .into(),
                },
            };
            problems.push(problem);
        }
        match RuleStore::open_read_only(pins) {
            Ok(store) => {
                let fill = fill(&store)?;
                // A pending change explains any drift, and its fix covers it.
                let (live, idle) = if busy || pending { (0, 0) } else { store.generation_drift()? };
                if (live, idle) != (0, 0) {
                    problems.push(Problem {
                        what: format!(
                            "the port tables disagree with the rule catalog ({live} entries in the live \
                             generation, {idle} in the idle one)"
                        ),
                        run: "dockblock-agent repair".into(),
                    });
                }
                rules = Some(fill);
            }
            Err(err) => {
                problems.push(Problem { what: err.to_string(), run: "dockblock-agent repair".into() })
            }
        }
    }
    Ok(Status {
        pin_dir: pins.root().display().to_string(),
        attached,
        links,
        rules,
        health: if problems.is_empty() { "healthy" } else { "unhealthy" },
        problems,
        busy,
        daemon,
    })
}

fn link_status(pin: crate::paths::LinkPin) -> LinkStatus {
    let info = link_info::read(&pin.path).ok();
    let ifindex = info.map_or(0, |i| i.ifindex);
    let now_named = (ifindex != 0).then(|| link_info::ifname(ifindex)).flatten();
    let (state, renamed_to) = match now_named {
        None => ("defunct", None),
        Some(name) if name == pin.interface => ("attached", None),
        Some(name) => ("renamed", Some(name)),
    };
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
        state,
        renamed_to,
    }
}

fn fill(store: &RuleStore) -> Result<RuleFill> {
    let rules = store.rules()?;
    let slots = Scope::ALL
        .into_iter()
        .flat_map(|scope| [proto::TCP, proto::UDP].map(|p| (scope, p)))
        .map(|(scope, p)| port_owners(&rules, scope, p).iter().filter(|o| o.is_some()).count() as u32)
        .sum();
    let allow_entries = rules.iter().map(|r| r.options.allow_from.len() as u32).sum();
    Ok(RuleFill {
        rules: rules.len() as u32,
        capacity: store.capacity(),
        allow_entries,
        allow_capacity: store.allow_capacity(),
        blocked_port_slots: slots,
    })
}
