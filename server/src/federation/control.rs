//! Control messages from a peer about the federation itself — server lists, `addServer`,
//! `deleteServer`, RTT rows — applied here and forwarded along the tree when they are news,
//! so the server door only routes them.

use gossip_common::codec::encode_frame as encode;
use gossip_common::message as m;

use super::Federation;
use crate::mst::ServerId;

/// What became of a control message from a peer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Control {
    /// Applied; forwarded on if it was news.
    Taken,
    /// A row dropped for its signature or key (counted by the caller): why.
    RowRefused(&'static str),
}

impl Federation {
    /// A peer's `serverlist`.
    pub(crate) fn on_server_list(&self, l: m::ServerList, from: &ServerId) {
        self.learn_servers(l.servers, from);
    }

    /// A peer's `addServer`: learned, and forwarded if it named a new server.
    pub(crate) fn on_add_server(&self, a: m::AddServer, from: &ServerId) {
        let named = m::ServerAddr {
            host: a.host.clone(),
            port: a.port,
            key: a.key.clone(),
            seq: None,
        };
        if self.learn_servers([named], from) > 0 {
            self.flood(&encode(a), Some(from));
        }
    }

    /// A peer's `deleteServer`: a signed removal is applied and forwarded verbatim; anything
    /// else is a hint to re-measure.
    pub(crate) fn on_delete_server(&self, d: m::DeleteServer, from: &ServerId) {
        match self.receive_removal(&d) {
            Ok(true) => self.flood(&encode(d), Some(from)),
            Ok(false) => {}
            Err(why) => {
                tracing::info!(server = %format!("{}:{}", d.host, d.port), why, "deleteServer not applied")
            }
        }
    }

    /// A peer's `updateRTTs`: stored and forwarded if it verifies and is newer.
    pub(crate) fn on_row(&self, u: m::UpdateRtts, from: &ServerId) -> Control {
        match self.receive_row(&u) {
            Ok(true) => {
                self.flood(&encode(u), Some(from));
                Control::Taken
            }
            Ok(false) => Control::Taken,
            Err(why) => {
                tracing::debug!(measurer = %format!("{}:{}", u.host, u.port), why, "RTT row dropped");
                Control::RowRefused(why)
            }
        }
    }
}
