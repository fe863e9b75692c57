//! [`State`], what the client knows about its own user and contacts, shared between the
//! [`GossipClient`](crate::GossipClient) and its reader task (behind one `Mutex`).

use std::collections::HashMap;

use gossip_common::{ContactList, EventCount, Signed, UserId, UserInfo};

/// What the client knows about its own user and contacts.
#[derive(Default)]
pub(crate) struct State {
    pub(crate) me: Option<Signed<UserInfo>>,
    pub(crate) list: Option<Signed<ContactList>>,
    pub(crate) contacts: HashMap<UserId, Signed<UserInfo>>,
    /// Contacts found unreachable since their last record (spec: client-side detection).
    pub(crate) unreachable: std::collections::HashSet<UserId>,
    /// Skip signature checks on pushed records (load generators only, see
    /// [`GossipClient::trust_server_pushes`]).
    pub(crate) trust_pushes: bool,
    /// Records are numbered past this: the event count of the last will handed out (by this
    /// connection or, after a failover, the previous one), which may still be published.
    pub(crate) floor: Option<EventCount>,
    /// Ids of relayed messages already passed on (a message can arrive twice: pushed live and
    /// again at a login before the servers dropped it), most recent last.
    pub(crate) seen_relays: std::collections::VecDeque<String>,
    /// Relayed messages are left with the servers: neither passed on nor acknowledged (see
    /// [`GossipClient::leave_relayed_messages`]).
    pub(crate) leave_relayed: bool,
}

/// Relayed message ids remembered for de-duplication.
pub(crate) const SEEN_RELAYS: usize = 4096;
