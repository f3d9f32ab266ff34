//! Capabilities and their two-word encoding in a capability slot.
//!
//! In Rust a capability is the enum [`Capability`]; in memory it is two
//! 64-bit words. The layout of each type is given once, as the field table
//! below, and [`Capability::encode`] / [`Capability::decode`] are tested to
//! be inverse for every valid capability.
//!
//! | type | word 0 (bits 0-4: tag) | word 1 |
//! |---|---|---|
//! | Null (0) | — | — |
//! | Untyped (1) | size bits 5-10, device 11, free index / 16 in 12-63 | base address |
//! | Endpoint (2) | rights 5-8, object / 16 in 16-59 | badge |
//! | Notification (3) | rights 5-8, object / 16 in 16-59 | badge |
//! | CNode (4) | radix 5-10, guard size 11-17, object / 32 in 18-60 | guard |
//! | Tcb (5) | — | object |
//! | Zombie (6) | radix 5-10, remaining slots 11-36 | object |
//!
//! Physical addresses are limited to 48 bits (256 TiB).

use strata_abi::object::Rights;

use crate::addr::PhysAddr;

/// A bit field of a capability word.
#[derive(Clone, Copy)]
struct Field {
    shift: u32,
    width: u32,
}

impl Field {
    const fn mask(self) -> u64 {
        if self.width == 64 {
            u64::MAX
        } else {
            (1 << self.width) - 1
        }
    }

    const fn get(self, word: u64) -> u64 {
        (word >> self.shift) & self.mask()
    }

    const fn put(self, value: u64) -> u64 {
        (value & self.mask()) << self.shift
    }

    /// Whether `value` fits the field.
    const fn fits(self, value: u64) -> bool {
        value & !self.mask() == 0
    }
}

const TAG: Field = Field { shift: 0, width: 5 };
const UNTYPED_SIZE: Field = Field { shift: 5, width: 6 };
const UNTYPED_DEVICE: Field = Field {
    shift: 11,
    width: 1,
};
const UNTYPED_FREE: Field = Field {
    shift: 12,
    width: 52,
};
const RIGHTS: Field = Field { shift: 5, width: 4 };
const SMALL_OBJECT: Field = Field {
    shift: 16,
    width: 44,
};
const CNODE_RADIX: Field = Field { shift: 5, width: 6 };
const CNODE_GUARD_SIZE: Field = Field {
    shift: 11,
    width: 7,
};
const CNODE_OBJECT: Field = Field {
    shift: 18,
    width: 43,
};
const ZOMBIE_RADIX: Field = Field { shift: 5, width: 6 };
const ZOMBIE_REMAINING: Field = Field {
    shift: 11,
    width: 26,
};

/// Highest physical address bit a capability can name.
pub const PHYSICAL_ADDRESS_BITS: u32 = 48;

mod tag {
    pub const NULL: u64 = 0;
    pub const UNTYPED: u64 = 1;
    pub const ENDPOINT: u64 = 2;
    pub const NOTIFICATION: u64 = 3;
    pub const CNODE: u64 = 4;
    pub const TCB: u64 = 5;
    pub const ZOMBIE: u64 = 6;
}

/// A capability: an unforgeable reference to a kernel object with rights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// An empty slot.
    Null,
    /// Memory that can be retyped.
    Untyped {
        /// First byte of the region (aligned to its size).
        base: PhysAddr,
        /// Region size as a power of two.
        size_bits: u8,
        /// Bytes from `base` already handed out (a multiple of 16).
        free_index: u64,
        /// Device memory: may only become frames or smaller device Untypeds.
        device: bool,
    },
    /// A synchronous IPC endpoint.
    Endpoint {
        /// The endpoint object.
        object: PhysAddr,
        /// Delivered to receivers with each message; 0 means unbadged.
        badge: u64,
        /// What the holder may do.
        rights: Rights,
    },
    /// A notification word.
    Notification {
        /// The notification object.
        object: PhysAddr,
        /// ORed into the word by each signal; 0 means unbadged.
        badge: u64,
        /// What the holder may do.
        rights: Rights,
    },
    /// An array of 2^radix capability slots.
    CNode {
        /// The slot array.
        object: PhysAddr,
        /// log2 of the number of slots.
        radix: u8,
        /// Bits of the address this CNode consumes before indexing.
        guard_size: u8,
        /// The value those bits must have.
        guard: u64,
    },
    /// A thread.
    Tcb {
        /// The TCB object.
        object: PhysAddr,
    },
    /// A CNode being destroyed: the slots from `remaining` up are already
    /// empty. Only the kernel creates these, during deletion.
    Zombie {
        /// The CNode's slot array.
        object: PhysAddr,
        /// The CNode's radix.
        radix: u8,
        /// Slots not yet emptied (they are `0..remaining`).
        remaining: u64,
    },
}

/// A capability word pair that no valid capability encodes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorruptCapability(pub [u64; 2]);

/// A capability whose fields cannot be encoded (address too wide, misaligned...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unencodable;

impl Capability {
    /// The two words stored in a slot.
    pub fn encode(&self) -> Result<[u64; 2], Unencodable> {
        let address_ok = |a: PhysAddr, align_bits: u32| {
            a.get() >> PHYSICAL_ADDRESS_BITS == 0 && a.is_aligned(1 << align_bits)
        };
        let check = |ok: bool| if ok { Ok(()) } else { Err(Unencodable) };
        Ok(match *self {
            Self::Null => [0, 0],
            Self::Untyped {
                base,
                size_bits,
                free_index,
                device,
            } => {
                check(
                    address_ok(base, 4)
                        && UNTYPED_SIZE.fits(u64::from(size_bits))
                        && free_index % 16 == 0,
                )?;
                check(UNTYPED_FREE.fits(free_index / 16))?;
                [
                    TAG.put(tag::UNTYPED)
                        | UNTYPED_SIZE.put(u64::from(size_bits))
                        | UNTYPED_DEVICE.put(u64::from(device))
                        | UNTYPED_FREE.put(free_index / 16),
                    base.get(),
                ]
            }
            Self::Endpoint {
                object,
                badge,
                rights,
            }
            | Self::Notification {
                object,
                badge,
                rights,
            } => {
                check(address_ok(object, 4))?;
                let kind = if matches!(self, Self::Endpoint { .. }) {
                    tag::ENDPOINT
                } else {
                    tag::NOTIFICATION
                };
                [
                    TAG.put(kind) | RIGHTS.put(rights.bits()) | SMALL_OBJECT.put(object.get() >> 4),
                    badge,
                ]
            }
            Self::CNode {
                object,
                radix,
                guard_size,
                guard,
            } => {
                check(address_ok(object, 5) && CNODE_RADIX.fits(u64::from(radix)))?;
                check(guard_size <= 64 && (guard_size == 64 || guard >> guard_size == 0))?;
                [
                    TAG.put(tag::CNODE)
                        | CNODE_RADIX.put(u64::from(radix))
                        | CNODE_GUARD_SIZE.put(u64::from(guard_size))
                        | CNODE_OBJECT.put(object.get() >> 5),
                    guard,
                ]
            }
            Self::Tcb { object } => {
                check(address_ok(object, 4))?;
                [TAG.put(tag::TCB), object.get()]
            }
            Self::Zombie {
                object,
                radix,
                remaining,
            } => {
                check(address_ok(object, 5) && ZOMBIE_RADIX.fits(u64::from(radix)))?;
                check(ZOMBIE_REMAINING.fits(remaining) && remaining <= 1 << radix)?;
                [
                    TAG.put(tag::ZOMBIE)
                        | ZOMBIE_RADIX.put(u64::from(radix))
                        | ZOMBIE_REMAINING.put(remaining),
                    object.get(),
                ]
            }
        })
    }

    /// Reads the two words of a slot.
    pub fn decode(words: [u64; 2]) -> Result<Self, CorruptCapability> {
        let [w0, w1] = words;
        let corrupt = CorruptCapability(words);
        let cap = match TAG.get(w0) {
            tag::NULL => Self::Null,
            tag::UNTYPED => Self::Untyped {
                base: PhysAddr(w1),
                size_bits: UNTYPED_SIZE.get(w0) as u8,
                free_index: UNTYPED_FREE.get(w0) * 16,
                device: UNTYPED_DEVICE.get(w0) != 0,
            },
            tag::ENDPOINT | tag::NOTIFICATION => {
                let object = PhysAddr(SMALL_OBJECT.get(w0) << 4);
                let rights = Rights::from_bits(RIGHTS.get(w0)).ok_or(corrupt)?;
                if TAG.get(w0) == tag::ENDPOINT {
                    Self::Endpoint {
                        object,
                        badge: w1,
                        rights,
                    }
                } else {
                    Self::Notification {
                        object,
                        badge: w1,
                        rights,
                    }
                }
            }
            tag::CNODE => Self::CNode {
                object: PhysAddr(CNODE_OBJECT.get(w0) << 5),
                radix: CNODE_RADIX.get(w0) as u8,
                guard_size: CNODE_GUARD_SIZE.get(w0) as u8,
                guard: w1,
            },
            tag::TCB => Self::Tcb {
                object: PhysAddr(w1),
            },
            tag::ZOMBIE => Self::Zombie {
                object: PhysAddr(w1),
                radix: ZOMBIE_RADIX.get(w0) as u8,
                remaining: ZOMBIE_REMAINING.get(w0),
            },
            _ => return Err(corrupt),
        };
        // Only canonical encodings are valid: anything else is corruption.
        if cap.encode() == Ok(words) {
            Ok(cap)
        } else {
            Err(corrupt)
        }
    }

    /// Whether the slot is empty.
    pub const fn is_null(&self) -> bool {
        matches!(self, Self::Null)
    }

    /// The physical region the capability names, as `(base, size)`.
    /// `None` for capabilities that name no memory.
    pub fn region(&self) -> Option<(PhysAddr, u64)> {
        use strata_abi::object::{
            ENDPOINT_SIZE_BITS, NOTIFICATION_SIZE_BITS, SLOT_SIZE_BITS, TCB_SIZE_BITS,
        };
        match *self {
            Self::Null => None,
            Self::Untyped {
                base, size_bits, ..
            } => Some((base, 1 << size_bits)),
            Self::Endpoint { object, .. } => Some((object, 1 << ENDPOINT_SIZE_BITS)),
            Self::Notification { object, .. } => Some((object, 1 << NOTIFICATION_SIZE_BITS)),
            Self::CNode { object, radix, .. } | Self::Zombie { object, radix, .. } => {
                Some((object, 1 << (u32::from(radix) + SLOT_SIZE_BITS)))
            }
            Self::Tcb { object } => Some((object, 1 << TCB_SIZE_BITS)),
        }
    }

    /// The rights the capability carries. Types without rights carry all of them.
    pub fn rights(&self) -> Rights {
        match self {
            Self::Endpoint { rights, .. } | Self::Notification { rights, .. } => *rights,
            _ => Rights::all(),
        }
    }

    /// The badge, for endpoint and notification capabilities.
    pub fn badge(&self) -> Option<u64> {
        match self {
            Self::Endpoint { badge, .. } | Self::Notification { badge, .. } => Some(*badge),
            _ => None,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Any encodable capability.
    pub fn any_capability() -> impl Strategy<Value = Capability> {
        let address = |align: u32| {
            (0u64..1 << (PHYSICAL_ADDRESS_BITS - align)).prop_map(move |a| PhysAddr(a << align))
        };
        let rights = (0u64..16).prop_map(Rights::from_bits_truncate);
        prop_oneof![
            Just(Capability::Null),
            (address(4), 4u8..48, any::<bool>(), any::<u64>()).prop_map(
                |(base, size_bits, device, free)| {
                    let free_index = (free % (1 << size_bits)) / 16 * 16;
                    Capability::Untyped {
                        base,
                        size_bits,
                        free_index,
                        device,
                    }
                }
            ),
            (address(4), any::<u64>(), rights.clone()).prop_map(|(object, badge, rights)| {
                Capability::Endpoint {
                    object,
                    badge,
                    rights,
                }
            }),
            (address(4), any::<u64>(), rights).prop_map(|(object, badge, rights)| {
                Capability::Notification {
                    object,
                    badge,
                    rights,
                }
            }),
            (address(5), 1u8..25, 0u8..=64, any::<u64>()).prop_map(
                |(object, radix, guard_size, guard)| {
                    let guard = if guard_size == 64 {
                        guard
                    } else {
                        guard & ((1 << guard_size) - 1)
                    };
                    Capability::CNode {
                        object,
                        radix,
                        guard_size,
                        guard,
                    }
                }
            ),
            address(12).prop_map(|object| Capability::Tcb { object }),
            (address(5), 1u8..25, any::<u64>()).prop_map(|(object, radix, r)| {
                Capability::Zombie {
                    object,
                    radix,
                    remaining: r % ((1 << radix) + 1),
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn encoding_round_trips(cap in any_capability()) {
            let words = cap.encode().expect("generated capabilities are encodable");
            prop_assert_eq!(Capability::decode(words), Ok(cap));
        }

        #[test]
        fn decoding_arbitrary_words_never_panics(w0 in any::<u64>(), w1 in any::<u64>()) {
            if let Ok(cap) = Capability::decode([w0, w1]) {
                prop_assert_eq!(cap.encode(), Ok([w0, w1]));
            }
        }
    }

    #[test]
    fn unencodable_fields_are_refused() {
        let wide = PhysAddr(1 << 48);
        assert_eq!(Capability::Tcb { object: wide }.encode(), Err(Unencodable));
        assert_eq!(
            Capability::CNode {
                object: PhysAddr(0x1010),
                radix: 2,
                guard_size: 0,
                guard: 0
            }
            .encode(),
            Err(Unencodable)
        );
        assert_eq!(
            Capability::CNode {
                object: PhysAddr(0x1000),
                radix: 2,
                guard_size: 3,
                guard: 8
            }
            .encode(),
            Err(Unencodable)
        );
        assert_eq!(
            Capability::Untyped {
                base: PhysAddr(0x1000),
                size_bits: 12,
                free_index: 8,
                device: false
            }
            .encode(),
            Err(Unencodable)
        );
        assert!(Capability::decode([7, 0]).is_err());
        assert!(Capability::decode([tag::NULL, 1]).is_err());
    }
}
