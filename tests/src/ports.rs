//! Ports for tests that must know a node's ports before it starts (peers and lab delays named on
//! the command line). Everything else starts nodes with base port 0 and reads the ports the node
//! reports, which can never collide.
//!
//! Known-in-advance ports are drawn *below* the kernel's ephemeral range
//! (`/proc/sys/net/ipv4/ip_local_port_range`): inside it, any outgoing connection on the machine
//! may hold a port at the moment a node wants it. A drawn block is checked to be bindable and is
//! never handed out twice in one process; callers still retry on a bind failure, since another
//! process may take a port between the check and the node's bind.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::Mutex;

/// Lowest port ever handed out (below it live well-known services).
const FLOOR: u16 = 10_000;

/// The kernel's ephemeral port range, `(low, high)`; `(32768, 60999)` when unreadable.
pub fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32_768, 60_999))
}

/// Whether `port` can be bound now on 127.0.0.1 for TCP and UDP.
fn free(ip: Ipv4Addr, port: u16) -> bool {
    let addr = SocketAddr::from((ip, port));
    TcpListener::bind(addr).is_ok() && UdpSocket::bind(addr).is_ok()
}

/// `count` base ports P, P+3, P+6, … whose P..P+2 are all free on `ip` right now, below the
/// ephemeral range, and not handed out before in this process.
pub fn reserve_base_ports_on(ip: Ipv4Addr, count: usize) -> Vec<u16> {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let (ephemeral_low, _) = ephemeral_range();
    let span = 3 * count as u16;
    let top = ephemeral_low.saturating_sub(span);
    assert!(
        top > FLOOR + span,
        "no room below the ephemeral range ({ephemeral_low}) for {count} base ports"
    );
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1_000 {
        let base = FLOOR + rand::random::<u16>() % (top - FLOOR);
        let block: Vec<u16> = (base..base + span).collect();
        if block.iter().any(|p| handed.contains(p)) || !block.iter().all(|p| free(ip, *p)) {
            continue;
        }
        handed.extend(block);
        return (0..count).map(|i| base + 3 * i as u16).collect();
    }
    panic!("no {count} free base ports below {ephemeral_low} after 1,000 tries");
}

/// [`reserve_base_ports_on`] 127.0.0.1.
pub fn reserve_base_ports(count: usize) -> Vec<u16> {
    reserve_base_ports_on(Ipv4Addr::LOCALHOST, count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ports_are_below_the_ephemeral_range_free_and_never_repeated() {
        let (low, high) = ephemeral_range();
        assert!(low < high);
        let a = reserve_base_ports(5);
        let b = reserve_base_ports(5);
        for p in a.iter().chain(&b) {
            assert!(*p >= FLOOR && *p + 2 < low, "{p} not below {low}");
        }
        assert_eq!(a.windows(2).filter(|w| w[1] == w[0] + 3).count(), 4);
        let all: BTreeSet<u16> = a
            .iter()
            .chain(&b)
            .flat_map(|p| [*p, p + 1, p + 2])
            .collect();
        assert_eq!(all.len(), 30, "a port was handed out twice");
    }
}
