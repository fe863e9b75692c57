//! Who the client door lets in before a login: connections from one address that have not
//! logged in are bounded (a NAT's users each take one for the milliseconds a login takes), so
//! one address cannot hold the server's connections without ever authenticating; and the
//! sessions being served are counted, so a stop can wait for them to end.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

/// Connections from one address that have not logged in.
pub(crate) const ANONYMOUS_PER_ADDRESS: usize = 256;

/// The door's counts.
#[derive(Default)]
pub(crate) struct Admission {
    /// Connections not logged in (yet), per address.
    anonymous: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// Client connections being served.
    live: Arc<AtomicUsize>,
}

impl Admission {
    /// A place among `ip`'s anonymous connections, if it has one left.
    pub(super) fn take(&self, ip: IpAddr) -> Option<AnonymousSlot> {
        let mut map = self.anonymous.lock();
        let n = map.entry(ip).or_default();
        if *n >= ANONYMOUS_PER_ADDRESS {
            return None;
        }
        *n += 1;
        Some(AnonymousSlot {
            map: Arc::clone(&self.anonymous),
            ip,
        })
    }

    /// Counts a session as served until the guard drops.
    pub(super) fn live(&self) -> LiveSession {
        self.live.fetch_add(1, Ordering::AcqRel);
        LiveSession(Arc::clone(&self.live))
    }

    /// Client connections that have not logged in (yet), from every address.
    pub(crate) fn anonymous_connections(&self) -> usize {
        self.anonymous.lock().values().sum()
    }

    /// Client sessions being served.
    pub(crate) fn sessions_live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }
}

/// A counted place among an address's anonymous connections; released when dropped.
pub(super) struct AnonymousSlot {
    map: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Drop for AnonymousSlot {
    fn drop(&mut self) {
        let mut map = self.map.lock();
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// A session being served; uncounted when dropped.
pub(super) struct LiveSession(Arc<AtomicUsize>);

impl Drop for LiveSession {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_share_of_anonymous_places_back_when_they_drop() {
        let a = Admission::default();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let slots: Vec<_> = (0..ANONYMOUS_PER_ADDRESS)
            .map(|_| a.take(ip).expect("within the share"))
            .collect();
        assert!(a.take(ip).is_none(), "one more than the share");
        assert!(
            a.take("192.0.2.8".parse().unwrap()).is_some(),
            "others keep theirs"
        );
        assert_eq!(a.anonymous_connections(), ANONYMOUS_PER_ADDRESS);
        drop(slots);
        assert_eq!(a.anonymous_connections(), 0);
        assert!(a.take(ip).is_some());
        let live = a.live();
        assert_eq!(a.sessions_live(), 1);
        drop(live);
        assert_eq!(a.sessions_live(), 0);
    }
}
