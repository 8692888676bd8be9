//! The host's links from netlink (rtnetlink): a dump, and the `RTMGRP_LINK`
//! events. The daemon attaches the veth hooks on the `NEWLINK` that enslaves
//! a container's veth to a Docker bridge, ~265 ms before the veth can carry a
//! packet (spec/docker-aware.md section 2), so each event carries its master
//! and kind as the kernel sent them, with no second lookup.

use futures_util::{Stream, StreamExt, TryStreamExt};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    link::{self, LinkAttribute, LinkFlags, LinkMessage},
    RouteNetlinkMessage,
};
use netlink_sys::AsyncSocket;
use rtnetlink::MulticastGroup;

use crate::error::{Error, Result};

/// One network interface as netlink reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub ifindex: u32,
    pub name: String,
    /// The ifindex of the bridge (or bond) it is enslaved to.
    pub master: Option<u32>,
    /// `IFLA_INFO_KIND`: `veth`, `bridge`, ...; `None` for physical devices.
    pub kind: Option<String>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
}

/// A change of the host's links, in the order the kernel sent them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// A link appeared or changed (master, state, name).
    New(LinkInfo),
    Del {
        ifindex: u32,
        name: String,
    },
    /// The socket's buffer overflowed and events were lost: resynchronise
    /// from [`dump`].
    Lost,
}

/// Room for bursts of events (200 containers starting at once): past it
/// the kernel drops messages and we report [`LinkEvent::Lost`].
const EVENT_BUFFER: usize = 8 << 20;

fn netlink(what: &str, why: impl std::fmt::Display) -> Error {
    Error::Netlink { what: what.to_string(), why: why.to_string() }
}

/// Every link of the network namespace this thread is in. Spawns its
/// netlink connection on the current tokio runtime.
pub async fn dump() -> Result<Vec<LinkInfo>> {
    Ok(messages().await?.iter().map(info).collect())
}

/// The raw `RTM_NEWLINK` dump, for [`info`] and [`peer`]. The connection
/// task ends with the handle.
pub(crate) async fn messages() -> Result<Vec<LinkMessage>> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| netlink("open a route socket", e))?;
    tokio::spawn(conn);
    handle.link().get().execute().try_collect().await.map_err(|e| netlink("dump links", e))
}

/// The link events of the host from now on. Spawns the connection on the
/// current tokio runtime; the stream ends if the socket fails.
pub fn watch() -> Result<impl Stream<Item = LinkEvent> + Send + Unpin + 'static> {
    let (mut conn, _handle, messages) = rtnetlink::new_multicast_connection(&[MulticastGroup::Link])
        .map_err(|e| netlink("subscribe to link events", e))?;
    enlarge_buffer(conn.socket_mut().socket_mut());
    tokio::spawn(conn);
    Ok(messages.filter_map(|(msg, _)| std::future::ready(event(msg))))
}

/// As root, SO_RCVBUFFORCE passes net.core.rmem_max; best effort (the
/// default buffer only loses events sooner, and says so).
fn enlarge_buffer(socket: &netlink_sys::Socket) {
    use std::os::fd::AsRawFd;
    let size = EVENT_BUFFER as libc::c_int;
    // SAFETY: a valid socket fd and a c_int option value of the given length.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let _ = socket.set_rx_buf_sz(EVENT_BUFFER);
    }
}

fn event(msg: NetlinkMessage<RouteNetlinkMessage>) -> Option<LinkEvent> {
    match msg.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => Some(LinkEvent::New(info(&m))),
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => {
            let LinkInfo { ifindex, name, .. } = info(&m);
            Some(LinkEvent::Del { ifindex, name })
        }
        NetlinkPayload::Overrun(_) => {
            tracing::warn!("netlink link events lost (socket buffer full): resynchronising");
            Some(LinkEvent::Lost)
        }
        _ => None,
    }
}

/// The fields dockblock uses of one `RTM_NEWLINK`/`RTM_DELLINK`.
pub(crate) fn info(m: &LinkMessage) -> LinkInfo {
    let mut l = LinkInfo {
        ifindex: m.header.index,
        name: String::new(),
        master: None,
        kind: None,
        up: m.header.flags.contains(LinkFlags::Up),
    };
    for attr in &m.attributes {
        match attr {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Controller(i) => l.master = Some(*i),
            LinkAttribute::LinkInfo(infos) => {
                l.kind = infos.iter().find_map(|i| match i {
                    link::LinkInfo::Kind(k) => Some(k.to_string()),
                    _ => None,
                })
            }
            _ => {}
        }
    }
    l
}

/// `IFLA_LINK` of a link: a veth's peer ifindex, in the peer's namespace.
pub(crate) fn peer(m: &LinkMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Link(i) => Some(*i),
        _ => None,
    })
}
