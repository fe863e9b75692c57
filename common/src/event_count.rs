//! Event counts: the per-record version number servers compare when they sync.
//!
//! The spec gives every record a 32-bit counter plus a *rollover bit* that is inverted each time
//! the counter overflows. Together they form a 33-bit serial number, and "is newer than" is
//! serial-number arithmetic (RFC 1982) over that 33-bit space: `a` is newer than `b` when going
//! forward from `b` reaches `a` in fewer than 2^32 steps. That stays correct across the wrap
//! (`0xFFFF_FFFF` → `0` with the bit flipped is one step forward) as long as two copies of one
//! record never drift 2^32 updates apart, which the spec accepts ("as long as we don't overflow
//! twice in a short period of time").
//!
//! The relation is *total and antisymmetric* — for two different counts exactly one is newer;
//! the one pair exactly 2^32 apart is broken by the raw value so two servers never disagree — but,
//! like every serial-number order, it is not transitive across more than half the space. Code
//! only ever compares a received copy with the stored copy of the same record, which is all the
//! order is meant for.

use std::cmp::Ordering;
use std::fmt;

/// Size of the serial-number space: 32 counter bits plus the rollover bit.
const SPACE_BITS: u32 = 33;
const MASK: u64 = (1 << SPACE_BITS) - 1;
const HALF: u64 = 1 << (SPACE_BITS - 1);

/// A record's event count: 32-bit counter plus rollover bit.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EventCount {
    /// The counter; incremented on every change of the record.
    pub count: u32,
    /// Inverted each time `count` wraps from `u32::MAX` to 0.
    pub rollover: bool,
}

impl EventCount {
    /// The count of a record that has never been changed.
    pub const ZERO: EventCount = EventCount {
        count: 0,
        rollover: false,
    };

    /// Builds an event count from its two stored parts.
    pub const fn new(count: u32, rollover: bool) -> Self {
        EventCount { count, rollover }
    }

    /// The count that follows this one: +1, flipping the rollover bit on overflow.
    #[must_use]
    pub const fn next(self) -> Self {
        match self.count.checked_add(1) {
            Some(count) => EventCount {
                count,
                rollover: self.rollover,
            },
            None => EventCount {
                count: 0,
                rollover: !self.rollover,
            },
        }
    }

    /// The 33-bit serial number: rollover bit above the 32 counter bits.
    const fn serial(self) -> u64 {
        ((self.rollover as u64) << 32) | self.count as u64
    }

    /// Whether `self` is a later version than `other` (serial-number order, see module docs).
    pub fn is_newer_than(self, other: EventCount) -> bool {
        let distance = self.serial().wrapping_sub(other.serial()) & MASK;
        distance != 0 && (distance < HALF || (distance == HALF && self.serial() > other.serial()))
    }

    /// Compares two counts of the same record: `Greater` means `self` is newer.
    pub fn serial_cmp(self, other: EventCount) -> Ordering {
        if self == other {
            Ordering::Equal
        } else if self.is_newer_than(other) {
            Ordering::Greater
        } else {
            Ordering::Less
        }
    }
}

impl fmt::Debug for EventCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, u8::from(self.rollover))
    }
}

impl fmt::Display for EventCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (rollover {})", self.count, u8::from(self.rollover))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ec(count: u32, rollover: bool) -> EventCount {
        EventCount::new(count, rollover)
    }

    #[test]
    fn next_wraps_and_flips_the_bit() {
        assert_eq!(ec(u32::MAX, false).next(), ec(0, true));
        assert_eq!(ec(u32::MAX, true).next(), ec(0, false));
        assert_eq!(ec(7, true).next(), ec(8, true));
    }

    #[test]
    fn newer_across_the_wrap() {
        let before = ec(u32::MAX, false);
        let after = before.next();
        assert!(after.is_newer_than(before));
        assert!(!before.is_newer_than(after));
        // And the second wrap, back to rollover = false.
        let before = ec(u32::MAX, true);
        assert!(before.next().is_newer_than(before));
        assert!(ec(5, false).is_newer_than(ec(u32::MAX - 5, true)));
    }

    #[test]
    fn equal_is_not_newer() {
        for c in [ec(0, false), ec(u32::MAX, true), ec(12345, false)] {
            assert!(!c.is_newer_than(c));
            assert_eq!(c.serial_cmp(c), Ordering::Equal);
        }
    }

    #[test]
    fn far_apart() {
        // Same rollover bit, far apart: the larger count is newer while the gap is < 2^32.
        assert!(ec(u32::MAX, false).is_newer_than(ec(0, false)));
        assert!(ec(3_000_000_000, true).is_newer_than(ec(10, true)));
        // Exactly half the space apart: decided by raw value, consistently on both sides.
        let a = ec(0, true);
        let b = ec(0, false);
        assert!(a.is_newer_than(b) ^ b.is_newer_than(a));
    }

    fn any_ec() -> impl Strategy<Value = EventCount> {
        (any::<u32>(), any::<bool>()).prop_map(|(c, r)| ec(c, r))
    }

    proptest! {
        #[test]
        fn exactly_one_of_two_distinct_counts_is_newer(a in any_ec(), b in any_ec()) {
            if a == b {
                prop_assert!(!a.is_newer_than(b));
            } else {
                prop_assert!(a.is_newer_than(b) ^ b.is_newer_than(a));
            }
        }

        #[test]
        fn successors_are_newer(a in any_ec(), steps in 1u32..=u32::MAX) {
            let mut b = a;
            // Jump ahead `steps` updates without looping 4 billion times.
            let serial = (a.serial() + steps as u64) & MASK;
            b.count = serial as u32;
            b.rollover = serial >> 32 == 1;
            prop_assert!(b.is_newer_than(a), "{b:?} should be newer than {a:?}");
            prop_assert!(a.next().is_newer_than(a));
        }

        #[test]
        fn serial_cmp_is_consistent(a in any_ec(), b in any_ec()) {
            prop_assert_eq!(a.serial_cmp(b), b.serial_cmp(a).reverse());
        }
    }
}
