//! User ids and IP address conventions.
//!
//! A UserID is 64 bits: the most significant 32 are seconds since 2000-01-01 00:00:00 UTC at
//! allocation, the least significant 32 are the registering client's IPv4 address (or the low 32
//! bits of its IPv6 address). The spec accepts that two registrations from one address in the
//! same second collide; the server detects that locally and network-wide (pessimistic lock) and
//! moves on to the next free second, see [`UserId::allocate`].
//!
//! The spec also asks that every IP address be stored as IPv6, so IPv4 addresses are kept in
//! their IPv4-mapped form (`::ffff:a.b.c.d`); [`to_ipv6`] does that conversion.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Seconds from the Unix epoch to 2000-01-01 00:00:00 UTC, the UserID time origin.
pub const EPOCH_2000_UNIX_SECS: u64 = 946_684_800;

/// A 64-bit user identifier.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(pub u64);

impl UserId {
    /// The UserID the spec assigns to a registration at `unix_secs` from `ip`.
    ///
    /// Times before 2000 count as 0 and times past 2136 saturate: neither happens on a sane clock,
    /// and a wrong clock must not panic the server.
    pub fn allocate(unix_secs: u64, ip: IpAddr) -> UserId {
        let secs = unix_secs
            .saturating_sub(EPOCH_2000_UNIX_SECS)
            .min(u32::MAX as u64);
        UserId((secs << 32) | u64::from(low32(ip)))
    }

    /// The same address part one second later: the next candidate when this id is taken.
    pub fn next_second(self) -> UserId {
        UserId(self.0.wrapping_add(1 << 32))
    }

    /// Seconds since 2000-01-01 UTC encoded in the id.
    pub fn seconds_since_2000(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The address part of the id.
    pub fn address_part(self) -> u32 {
        self.0 as u32
    }
}

/// The low 32 bits of an address: the IPv4 address itself, including for IPv4-mapped IPv6.
fn low32(ip: IpAddr) -> u32 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u32::from(v4),
            None => (u128::from(v6) & 0xFFFF_FFFF) as u32,
        },
    }
}

/// Every address is stored as IPv6: IPv4 becomes IPv4-mapped (`::ffff:a.b.c.d`).
pub fn to_ipv6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// The address to show or to connect to: IPv4-mapped addresses turn back into IPv4.
pub fn to_canonical(ip: Ipv6Addr) -> IpAddr {
    match ip.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(ip),
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uid:{}", self.0)
    }
}

impl FromStr for UserId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim().parse().map(UserId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn layout_is_time_then_address() {
        let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
        let id = UserId::allocate(EPOCH_2000_UNIX_SECS + 86_400, ip);
        assert_eq!(id.seconds_since_2000(), 86_400);
        assert_eq!(id.address_part(), u32::from(Ipv4Addr::new(192, 0, 2, 7)));
        // IPv4-mapped IPv6 yields the same id as plain IPv4.
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped());
        assert_eq!(UserId::allocate(EPOCH_2000_UNIX_SECS + 86_400, mapped), id);
    }

    #[test]
    fn ipv6_uses_low_32_bits() {
        let ip: IpAddr = "2001:db8::1:0:dead:beef".parse().unwrap();
        assert_eq!(UserId::allocate(0, ip).0, 0xdead_beef);
    }

    #[test]
    fn next_second_keeps_address() {
        let id = UserId::allocate(EPOCH_2000_UNIX_SECS + 5, IpAddr::V4(Ipv4Addr::LOCALHOST));
        let next = id.next_second();
        assert_eq!(next.seconds_since_2000(), 6);
        assert_eq!(next.address_part(), id.address_part());
    }

    #[test]
    fn ipv4_is_stored_mapped() {
        let v6 = to_ipv6(IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(v6.to_string(), "::ffff:127.0.0.1");
        assert_eq!(to_canonical(v6), IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
}
