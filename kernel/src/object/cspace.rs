//! Capability addressing: resolving a capability pointer through a tree
//! of CNodes, each of which consumes a guard and then `radix` index bits
//! (seL4's `resolveAddressBits`).

use strata_abi::error::{InvocationError, LookupFailure};

use super::{Capability, ObjectSpace, PhysicalMemory, Slot};

/// Where a walk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    /// The slot reached.
    pub slot: Slot,
    /// Address bits not consumed (the walk stops early at a slot that does
    /// not hold a CNode).
    pub bits_remaining: u8,
}

fn low_bits(value: u64, bits: u32) -> u64 {
    if bits >= 64 { value } else { value & ((1 << bits) - 1) }
}

/// `value >> shift`, with shifts of 64 giving 0.
fn shift_right(value: u64, shift: u32) -> u64 {
    value.checked_shr(shift).unwrap_or(0)
}

impl<M: PhysicalMemory> ObjectSpace<M> {
    /// Resolves the low `depth` bits of `address`, most significant first,
    /// starting at the CNode capability `root`.
    pub fn resolve(&self, root: Capability, address: u64, depth: u8) -> Result<Resolved, LookupFailure> {
        let Capability::CNode { .. } = root else { return Err(LookupFailure::InvalidRoot) };
        let mut node = root;
        let mut bits_left = u32::from(depth.min(64));
        loop {
            let Capability::CNode { object, radix, guard_size, guard } = node else {
                // Only CNodes are descended into (checked below).
                return Err(LookupFailure::InvalidRoot);
            };
            let (radix, guard_size) = (u32::from(radix), u32::from(guard_size));
            let level_bits = radix + guard_size;
            let found_guard =
                low_bits(shift_right(address, bits_left.saturating_sub(guard_size)), guard_size);
            if guard_size > bits_left || found_guard != guard {
                return Err(LookupFailure::GuardMismatch {
                    bits_left: bits_left as u8,
                    guard_found: guard,
                    guard_size: guard_size as u8,
                });
            }
            if level_bits > bits_left {
                return Err(LookupFailure::DepthMismatch {
                    bits_left: bits_left as u8,
                    bits_found: level_bits as u8,
                });
            }
            let index = low_bits(shift_right(address, bits_left - level_bits), radix);
            let slot = Slot::in_cnode(object, index);
            bits_left -= level_bits;
            if bits_left == 0 {
                return Ok(Resolved { slot, bits_remaining: 0 });
            }
            match self.cap(slot) {
                next @ Capability::CNode { .. } => node = next,
                _ => {
                    return Ok(Resolved { slot, bits_remaining: bits_left as u8 });
                }
            }
        }
    }

    /// The slot an invocation names for its result: `index` at `depth`
    /// (a message word, so checked to be 1–64) in `root`. Errors are the
    /// invocation's: `RangeError` for the depth, `FailedLookup` (of the
    /// destination) for the walk.
    pub fn lookup_destination(
        &self,
        root: Capability,
        index: u64,
        depth: u64,
    ) -> Result<Slot, InvocationError> {
        let depth = u8::try_from(depth)
            .ok()
            .filter(|d| (1..=64).contains(d))
            .ok_or(InvocationError::RangeError { min: 1, max: 64 })?;
        self.lookup_slot(root, index, depth)
            .map_err(|failure| InvocationError::FailedLookup { source: false, failure })
    }

    /// The slot at exactly `depth` bits of `address` (CNode operations).
    pub fn lookup_slot(&self, root: Capability, address: u64, depth: u8) -> Result<Slot, LookupFailure> {
        let resolved = self.resolve(root, address, depth)?;
        if resolved.bits_remaining != 0 {
            return Err(LookupFailure::DepthMismatch { bits_left: resolved.bits_remaining, bits_found: 0 });
        }
        Ok(resolved.slot)
    }

    /// The capability `address` names with all 64 bits available: the walk
    /// may stop early at a non-CNode capability (invocations).
    pub fn lookup_cap(&self, root: Capability, address: u64) -> Result<(Slot, Capability), LookupFailure> {
        let resolved = self.resolve(root, address, 64)?;
        match self.cap(resolved.slot) {
            Capability::Null => Err(LookupFailure::MissingCapability { bits_left: resolved.bits_remaining }),
            cap => Ok((resolved.slot, cap)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::PhysAddr;
    use crate::object::memory::Arena;
    use proptest::prelude::*;

    /// The same walk, written as plainly as possible over a bit string.
    fn naive(
        space: &ObjectSpace<Arena>,
        root: Capability,
        address: u64,
        depth: u8,
    ) -> Result<Resolved, LookupFailure> {
        let bits: std::vec::Vec<u64> = (0..u32::from(depth)).rev().map(|i| (address >> i) & 1).collect();
        let take = |from: usize, n: usize| bits[from..from + n].iter().fold(0u64, |v, b| v << 1 | b);
        let mut node = root;
        let mut used = 0usize;
        loop {
            let Capability::CNode { object, radix, guard_size, guard } = node else {
                return Err(LookupFailure::InvalidRoot);
            };
            let left = bits.len() - used;
            if usize::from(guard_size) > left || take(used, usize::from(guard_size)) != guard {
                return Err(LookupFailure::GuardMismatch {
                    bits_left: left as u8,
                    guard_found: guard,
                    guard_size,
                });
            }
            if usize::from(radix + guard_size) > left {
                return Err(LookupFailure::DepthMismatch {
                    bits_left: left as u8,
                    bits_found: radix + guard_size,
                });
            }
            let index = take(used + usize::from(guard_size), usize::from(radix));
            used += usize::from(radix + guard_size);
            let slot = Slot::in_cnode(object, index);
            if used == bits.len() {
                return Ok(Resolved { slot, bits_remaining: 0 });
            }
            match space.cap(slot) {
                next @ Capability::CNode { .. } => node = next,
                _ => {
                    return Ok(Resolved { slot, bits_remaining: (bits.len() - used) as u8 });
                }
            }
        }
    }

    /// Three CNodes with random radix and guard; each holds caps to the
    /// others in random slots (cycles included).
    fn space_with(
        shapes: &[(u8, u8, u64)],
        links: &[(usize, u64, usize)],
    ) -> (ObjectSpace<Arena>, std::vec::Vec<Capability>) {
        let mut space = ObjectSpace::new(Arena::new(0, 1 << 20));
        let caps: std::vec::Vec<Capability> = shapes
            .iter()
            .enumerate()
            .map(|(n, &(radix, guard_size, guard))| Capability::CNode {
                object: PhysAddr(0x1_0000 * (n as u64 + 1)),
                radix,
                guard_size,
                guard: guard & ((1 << guard_size) - 1),
            })
            .collect();
        for &(from, index, to) in links {
            let Capability::CNode { object, radix, .. } = caps[from] else { unreachable!() };
            let slot = Slot::in_cnode(object, index % (1 << radix));
            if space.cap(slot).is_null() {
                space.insert_root(slot, caps[to]);
            }
        }
        (space, caps)
    }

    proptest! {
        #[test]
        fn resolve_matches_a_naive_bit_walk(
            shapes in prop::collection::vec((1u8..6, 0u8..5, any::<u64>()), 3),
            links in prop::collection::vec((0usize..3, any::<u64>(), 0usize..3), 0..12),
            address in any::<u64>(),
            depth in 0u8..=64,
        ) {
            let (space, caps) = space_with(&shapes, &links);
            prop_assert_eq!(space.resolve(caps[0], address, depth), naive(&space, caps[0], address, depth));
        }

    }

    #[test]
    // Literals are grouped by field: guard, index, next index.
    #[allow(clippy::unusual_byte_groupings)]
    fn guard_and_depth_errors_carry_their_data() {
        let (space, caps) = space_with(&[(4, 2, 0b10), (3, 0, 0), (1, 0, 0)], &[(0, 5, 1)]);
        // 2 guard bits (10) + 4 index bits (0101) then 3 bits in the second CNode.
        assert_eq!(space.lookup_slot(caps[0], 0b10_0101_011, 9), Ok(Slot::in_cnode(PhysAddr(0x2_0000), 3)));
        assert_eq!(
            space.lookup_slot(caps[0], 0b11_0101, 6),
            Err(LookupFailure::GuardMismatch { bits_left: 6, guard_found: 0b10, guard_size: 2 })
        );
        assert_eq!(
            space.lookup_slot(caps[0], 0b10_01, 4),
            Err(LookupFailure::DepthMismatch { bits_left: 4, bits_found: 6 })
        );
        // Stopping at the second CNode with bits left over is a depth mismatch for slot lookups...
        assert_eq!(
            space.lookup_slot(caps[0], 0b10_0101_0, 7),
            Err(LookupFailure::DepthMismatch { bits_left: 1, bits_found: 3 })
        );
        // ...and an empty slot with bits left is a missing capability for invocations.
        assert_eq!(
            space.lookup_cap(caps[0], 0b10_0000 << 58),
            Err(LookupFailure::MissingCapability { bits_left: 58 })
        );
        assert_eq!(space.resolve(Capability::Null, 0, 8), Err(LookupFailure::InvalidRoot));
    }
}
