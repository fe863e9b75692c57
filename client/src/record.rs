//! The own UserInfo record and presence: every change gets the next event count, is signed
//! locally and stored on the server, and (while online) is followed by a fresh *last will* — the
//! same record, offline, next event count — that the server publishes if the connection dies.
//! Going online, setting the status and logging out are changes of this record.

use std::net::{Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;

use gossip_common::message::{self as m};
use gossip_common::record::STATUS_OFFLINE;
use gossip_common::{ErrorCode, EventCount, Message, Signed, UserId, UserInfo};

use crate::{e2e, ClientError, GossipClient};

impl GossipClient {
    /// The logged-in user's id.
    pub fn uid(&self) -> Option<UserId> {
        self.state
            .lock()
            .expect("lock")
            .me
            .as_ref()
            .map(|m| m.user_id)
    }

    /// The logged-in user's current record.
    pub fn me(&self) -> Option<Signed<UserInfo>> {
        self.state.lock().expect("lock").me.clone()
    }

    /// Changes the own UserInfo: `change` edits a copy, which gets the next event count, is
    /// signed and stored on the server. If another client of the same user got there first
    /// (stale event count), retries once above the server's count.
    pub async fn update_info(
        &self,
        change: impl Fn(&mut UserInfo),
    ) -> Result<Signed<UserInfo>, ClientError> {
        let me = self.me().ok_or(ClientError::NotLoggedIn)?;
        // Past any will still out there: a will and a new record must never share a count
        // (docs/presence.md).
        let floor = self.state.lock().expect("lock").floor;
        let base = match floor {
            Some(f) if f.is_newer_than(me.event_count) => f,
            _ => me.event_count,
        };
        let mut next_ec = base.next();
        let mut onto = me.value().clone();
        for attempt in 0..2 {
            let mut info = onto.clone();
            change(&mut info);
            info.event_count = next_ec;
            let record = Signed::sign(info, &self.key)?;
            match self
                .request(m::UserInfoMsg {
                    record: record.clone(),
                })
                .await
            {
                Ok(_) => {
                    self.state.lock().expect("lock").me = Some(record.clone());
                    if self.will_active.load(Ordering::Relaxed) && record.is_online() {
                        self.send_last_will(&record).await?;
                    }
                    return Ok(record);
                }
                Err(ClientError::Refused {
                    code: ErrorCode::StaleEventCount,
                    current: Some(current),
                    ..
                }) if attempt == 0 => {
                    // Another session of this user changed the record meanwhile (a one-shot
                    // `gossip set-status` beside a running `gossip watch`): the change goes
                    // onto that record, not onto ours, or it would undo theirs.
                    next_ec = current.next();
                    let fresh = self
                        .fetch_users(&[me.user_id])
                        .await?
                        .into_iter()
                        .find(|r| r.user_id == me.user_id && r.public_key == me.public_key);
                    if let Some(fresh) = fresh {
                        if fresh.event_count.is_newer_than(current) {
                            next_ec = fresh.event_count.next();
                        }
                        let mut theirs = fresh.value().clone();
                        if !theirs.is_online() && me.is_online() {
                            // A will of another session: this one is still here.
                            theirs.status = me.status.clone();
                            theirs.status_message = me.status_message.clone();
                        }
                        onto = theirs;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Unexpected("UserInfo"))
    }

    /// Sets status and status message.
    pub async fn set_status(&self, status: &str, message: Option<&str>) -> Result<(), ClientError> {
        self.update_info(|u| {
            u.status = status.to_owned();
            if let Some(msg) = message {
                u.status_message = msg.to_owned();
            }
        })
        .await?;
        Ok(())
    }

    /// Goes online: status `online` (or `status`), advertising `direct` as the address for
    /// direct messages, and hands the server a last will (offline, next event count) to publish
    /// if this connection dies.
    pub async fn go_online(
        &self,
        status: &str,
        direct: Option<SocketAddr>,
    ) -> Result<(), ClientError> {
        self.go_online_publishing(status, direct, &[]).await
    }

    /// [`Self::go_online`], with extra UserInfo fields set in the same record (the encryption
    /// keys, [`e2e::E2e::published`]).
    pub async fn go_online_publishing(
        &self,
        status: &str,
        direct: Option<SocketAddr>,
        extra: &[(String, String)],
    ) -> Result<(), ClientError> {
        *self.direct_addr.lock().expect("lock") = direct;
        self.will_active.store(true, Ordering::Relaxed);
        self.update_info(|u| {
            u.status = status.to_owned();
            u.ip_addr = direct.map(|a| gossip_common::user_id::to_ipv6(a.ip()));
            u.port = direct.map(|a| a.port());
            e2e::publish_into(u, extra);
        })
        .await?;
        Ok(())
    }

    /// Re-sends the last will for the current record. Needed when another client of the same
    /// user published a newer record, which made the previous will stale.
    pub async fn refresh_last_will(&self) -> Result<(), ClientError> {
        let me = self.me().ok_or(ClientError::NotLoggedIn)?;
        self.send_last_will(&me).await
    }

    async fn send_last_will(&self, current: &Signed<UserInfo>) -> Result<(), ClientError> {
        let record = Signed::sign(offline_version(current), &self.key)?;
        let ec = record.event_count;
        self.request(m::LastWill { record }).await?;
        self.number_past(ec);
        Ok(())
    }

    /// Numbers this client's next records past `ec` (the last will of an earlier connection,
    /// which its server or the federation may still publish).
    pub fn number_past(&self, ec: EventCount) {
        let mut st = self.state.lock().expect("lock");
        if st.floor.is_none_or(|f| ec.is_newer_than(f)) {
            st.floor = Some(ec);
        }
    }

    /// The event count of the last will this client handed out (or was told to number past).
    pub fn will_floor(&self) -> Option<EventCount> {
        self.state.lock().expect("lock").floor
    }

    /// Clean logout: publishes the offline record itself (which makes the last will stale) and
    /// closes the connection.
    pub async fn logout(self) -> Result<(), ClientError> {
        self.will_active.store(false, Ordering::Relaxed);
        if let Some(me) = self.me() {
            if me.is_online() {
                let offline = offline_version(&me);
                self.update_info(|u| {
                    *u = offline.clone();
                })
                .await?;
            }
        }
        let _ = self
            .out
            .send(Message::new(
                Ipv6Addr::UNSPECIFIED,
                m::Disconnect {
                    reason: Some("logout".into()),
                },
            ))
            .await;
        Ok(())
    }
}

/// The offline twin of a record: same fields, status offline, no address, next event count.
fn offline_version(current: &UserInfo) -> UserInfo {
    let mut info = current.clone();
    info.status = STATUS_OFFLINE.to_owned();
    info.ip_addr = None;
    info.port = None;
    info.event_count = current.event_count.next();
    info
}
