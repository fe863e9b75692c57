//! What an operator does to the federation through `prodserver` (add, delete, leave,
//! recalculate, refuse links), and the signed `deleteServer` by which a server leaves: only a
//! server itself can remove itself for everyone; anything else is a hint to re-measure.

use gossip_common::codec::encode_frame as encode;
use gossip_common::message as m;

use super::links::Link;
use super::{now_ms, Federation};
use crate::mst::{id_string, ServerId};

impl Federation {
    /// An admin added a server: measure it, tell the others, recompute.
    pub(crate) fn admin_add_server(&self, key: ServerId) {
        self.state.lock().members.undelete(&key);
        let added = self.add_servers([key.clone()]);
        self.state.lock().members.prove(&key);
        if !added.is_empty() {
            let bound = self.key_of(&key).map(|k| k.to_string());
            self.flood(
                &encode(m::AddServer {
                    host: key.0,
                    port: key.1,
                    key: bound,
                }),
                None,
            );
        }
        self.probe_now.notify_one();
    }

    /// An admin removed another server: forgotten and refused here only. Only a server itself
    /// can sign its removal for everyone ([`Federation::leave`]); the others get an unsigned
    /// `deleteServer`, which they take as a hint to re-measure it.
    pub(crate) fn admin_delete_server(&self, key: &ServerId) -> bool {
        self.flood(
            &encode(m::DeleteServer {
                host: key.0.clone(),
                port: key.1,
                key: None,
                seq: None,
                sig: None,
            }),
            None,
        );
        self.remove_server(key)
    }

    /// This server leaves the federation: its signed removal is flooded, and every server that
    /// verifies it forgets this one and refuses its links until an admin adds it again.
    pub(crate) fn leave(&self) -> usize {
        let seq = now_ms().max(self.state.lock().members.my_row().map_or(0, |r| r.seq + 1));
        let sig = self.signer.sign(
            gossip_common::Domain::ServerControl,
            &removal_bytes(&self.me, seq),
        );
        let frame = encode(m::DeleteServer {
            host: self.me.0.clone(),
            port: self.me.1,
            key: Some(self.signer.public().to_string()),
            seq: Some(seq),
            sig: Some(sig.to_string()),
        });
        let links = self.state.lock().links.len();
        self.flood(&frame, None);
        links
    }

    /// A `deleteServer` from a peer. Signed by the removed server's bound key, and newer than
    /// every row it published: the server is forgotten here (returns true: forward it
    /// verbatim). Otherwise it is only a hint: that server is re-measured now.
    pub(crate) fn receive_removal(&self, d: &m::DeleteServer) -> Result<bool, &'static str> {
        let name: ServerId = (d.host.clone(), d.port);
        if name == self.me {
            return Err("a removal of this server itself");
        }
        let verified = (|| {
            let key = self.key_of(&name)?;
            let sig: gossip_common::Signature = d.sig.as_deref()?.parse().ok()?;
            let seq = d.seq?;
            key.verify(
                gossip_common::Domain::ServerControl,
                &removal_bytes(&name, seq),
                &sig,
            )
            .ok()?;
            let newest_row = self.state.lock().members.row(&name).map_or(0, |r| r.seq);
            (seq > newest_row).then_some(())
        })();
        if verified.is_none() {
            self.probe_now.notify_one();
            self.revive_now.notify_one();
            return Err("not signed by the server removed (a hint to re-measure it)");
        }
        tracing::info!(server = %id_string(&name), "server left the federation (signed removal)");
        Ok(self.remove_server(&name))
    }

    /// Re-measure now and recompute the tree.
    pub(crate) fn recalc(&self) {
        self.probe_now.notify_one();
        self.revive_now.notify_one();
        self.changed.notify_one();
    }

    /// Closes every server link whose peer address `refused` matches (a blacklist entry was
    /// added); returns how many.
    pub(crate) fn drop_links_from(&self, refused: impl Fn(std::net::IpAddr) -> bool) -> usize {
        self.drop_links_where(|_, link| refused(link.addr.ip()))
    }

    /// Closes the links the keyring no longer accepts (after an admin refused a key or
    /// re-bound a name); returns how many.
    pub(crate) fn drop_links_by_key(&self) -> usize {
        let st = self.state.lock();
        let stale: Vec<ServerId> = st
            .links
            .iter()
            .filter(|(name, link)| !st.keys.check(name, &link.key).accepted())
            .map(|(name, _)| name.clone())
            .collect();
        drop(st);
        self.drop_links_where(|name, _| stale.contains(name))
    }

    fn drop_links_where(&self, refused: impl Fn(&ServerId, &Link) -> bool) -> usize {
        let st = self.state.lock();
        let mut n = 0;
        for (key, link) in &st.links {
            if refused(key, link) {
                tracing::warn!(peer = %id_string(key), addr = %link.addr, "closing a link an admin refused");
                link.kill.cancel();
                n += 1;
            }
        }
        drop(st);
        if n > 0 {
            self.probe_now.notify_one();
        }
        n
    }
}

/// The bytes a server signs to remove itself (domain `ServerControl`).
fn removal_bytes(me: &ServerId, seq: u64) -> Vec<u8> {
    format!("delete\n{}:{}\n{seq}", me.0, me.1).into_bytes()
}
