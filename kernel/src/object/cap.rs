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
//! | Frame (7) | large 5, rights (R, W) 6-7, device 8, mapped 9, ASID 10-21, object / 4K in 22-57 | mapped virtual address |
//! | PageTable (8) | level 5-6, mapped 7, ASID 8-19, object / 4K in 20-55 | mapped virtual address |
//! | Pml4 (9) | has ASID 5, ASID 6-17, object / 4K in 18-53 | — |
//! | AsidControl (10) | — | — |
//! | AsidPool (11) | first ASID 5-16 | object |
//! | IoPortControl (12) | — | — |
//! | IoPort (13) | first port 5-20, last port 21-36 | — |
//! | IrqControl (14) | — | — |
//! | IrqHandler (15) | line 5-12 | — |
//! | Vcpu (16) | — | object |
//! | GuestSpace (17) | has ASID 5, ASID 6-17, object / 4K in 18-53 | — |
//!
//! Physical addresses are limited to 48 bits (256 TiB).

use strata_abi::object::Rights;

use crate::addr::PhysAddr;

/// A bit field of a capability word.
#[derive(Clone, Copy)]
pub struct Field {
    /// The lowest bit.
    pub shift: u32,
    width: u32,
}

impl Field {
    /// The field's value bits, unshifted.
    pub const fn mask(self) -> u64 {
        if self.width == 64 { u64::MAX } else { (1 << self.width) - 1 }
    }

    /// Shifting a word left by `up` and then right by `down` leaves the
    /// field alone, at bit 0.
    pub const fn up(self) -> u32 {
        64 - self.shift - self.width
    }

    /// See [`Self::up`].
    pub const fn down(self) -> u32 {
        64 - self.width
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
const UNTYPED_DEVICE: Field = Field { shift: 11, width: 1 };
const UNTYPED_FREE: Field = Field { shift: 12, width: 52 };
const RIGHTS: Field = Field { shift: 5, width: 4 };
pub(crate) const SMALL_OBJECT: Field = Field { shift: 16, width: 44 };
pub(crate) const CNODE_RADIX: Field = Field { shift: 5, width: 6 };
pub(crate) const CNODE_GUARD_SIZE: Field = Field { shift: 11, width: 7 };
pub(crate) const CNODE_OBJECT: Field = Field { shift: 18, width: 43 };
const ZOMBIE_RADIX: Field = Field { shift: 5, width: 6 };
const ZOMBIE_REMAINING: Field = Field { shift: 11, width: 26 };
const FRAME_LARGE: Field = Field { shift: 5, width: 1 };
const FRAME_RIGHTS: Field = Field { shift: 6, width: 2 };
const FRAME_DEVICE: Field = Field { shift: 8, width: 1 };
const FRAME_MAPPED: Field = Field { shift: 9, width: 1 };
const FRAME_ASID: Field = Field { shift: 10, width: 12 };
pub(crate) const FRAME_OBJECT: Field = Field { shift: 22, width: 36 };
const TABLE_LEVEL: Field = Field { shift: 5, width: 2 };
const TABLE_MAPPED: Field = Field { shift: 7, width: 1 };
const TABLE_ASID: Field = Field { shift: 8, width: 12 };
const TABLE_OBJECT: Field = Field { shift: 20, width: 36 };
const PML4_ASSIGNED: Field = Field { shift: 5, width: 1 };
const PML4_ASID: Field = Field { shift: 6, width: 12 };
const PML4_OBJECT: Field = Field { shift: 18, width: 36 };
const POOL_FIRST_ASID: Field = Field { shift: 5, width: 12 };
const PORT_FIRST: Field = Field { shift: 5, width: 16 };
const PORT_LAST: Field = Field { shift: 21, width: 16 };
const IRQ_LINE: Field = Field { shift: 5, width: 8 };

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
    pub const FRAME: u64 = 7;
    pub const PAGE_TABLE: u64 = 8;
    pub const PML4: u64 = 9;
    pub const ASID_CONTROL: u64 = 10;
    pub const ASID_POOL: u64 = 11;
    pub const IO_PORT_CONTROL: u64 = 12;
    pub const IO_PORT: u64 = 13;
    pub const IRQ_CONTROL: u64 = 14;
    pub const IRQ_HANDLER: u64 = 15;
    pub const VCPU: u64 = 16;
    pub const GUEST_SPACE: u64 = 17;
}

/// The size of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameSize {
    /// 4 KiB, mapped by a page-table entry.
    Small,
    /// 2 MiB, mapped by a page-directory entry.
    Large,
}

impl FrameSize {
    /// Bytes in the frame.
    pub const fn bytes(self) -> u64 {
        match self {
            Self::Small => 1 << 12,
            Self::Large => 1 << 21,
        }
    }
}

/// Which paging structure below the PML4 a table is. The discriminant is
/// the capability's level field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableLevel {
    /// Page table: maps 4 KiB frames; installed in a page directory.
    PageTable = 0,
    /// Page directory: holds page tables or 2 MiB frames; installed in a PDPT.
    PageDirectory = 1,
    /// Page-directory-pointer table: holds page directories; installed in the PML4.
    Pdpt = 2,
}

impl TableLevel {
    /// Bytes of address space the table covers (and the alignment of where it is installed).
    pub const fn coverage(self) -> u64 {
        match self {
            Self::PageTable => 1 << 21,
            Self::PageDirectory => 1 << 30,
            Self::Pdpt => 1 << 39,
        }
    }

    /// The level whose discriminant is `value`.
    fn decode(value: u64) -> Option<Self> {
        [Self::PageTable, Self::PageDirectory, Self::Pdpt].get(value as usize).copied()
    }
}

/// Where a frame or table is mapped: the address space (by ASID) and address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// The address space's ASID.
    pub asid: u16,
    /// The virtual address (of the frame, or the start of what the table covers).
    pub address: u64,
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
    /// A page of memory. Each frame capability can be mapped once.
    Frame {
        /// The frame.
        object: PhysAddr,
        /// Its size.
        size: FrameSize,
        /// READ and WRITE only.
        rights: Rights,
        /// Device memory (never zeroed, never holds kernel state).
        device: bool,
        /// Where this capability has mapped it.
        mapping: Option<Mapping>,
    },
    /// A page table, page directory or PDPT.
    PageTable {
        /// The table.
        object: PhysAddr,
        /// Which kind of table.
        level: TableLevel,
        /// Where it is installed.
        mapping: Option<Mapping>,
    },
    /// The root of an address space.
    Pml4 {
        /// The PML4.
        object: PhysAddr,
        /// Its ASID, once assigned from a pool.
        asid: Option<u16>,
    },
    /// The authority to create ASID pools.
    AsidControl,
    /// A pool of 512 ASIDs.
    AsidPool {
        /// The pool object: 512 PML4 addresses.
        object: PhysAddr,
        /// The pool's first ASID.
        first_asid: u16,
    },
    /// The authority to issue I/O-port capabilities.
    IoPortControl,
    /// The I/O ports `first..=last`.
    IoPort {
        /// First port.
        first: u16,
        /// Last port (not below `first`).
        last: u16,
    },
    /// The authority to get IRQ handler capabilities.
    IrqControl,
    /// One I/O APIC line.
    IrqHandler {
        /// The line.
        line: u8,
    },
    /// A virtual CPU.
    Vcpu {
        /// The VCPU object (8 KiB).
        object: PhysAddr,
    },
    /// The root of a guest-physical address space.
    GuestSpace {
        /// The root table.
        object: PhysAddr,
        /// Its ASID, once assigned from a pool.
        asid: Option<u16>,
    },
}

/// Whether a mapping record fits its fields: a 12-bit non-zero ASID and a
/// user address aligned to what is mapped.
fn mapping_ok(mapping: Mapping, align: u64) -> bool {
    mapping.asid != 0
        && u32::from(mapping.asid) < strata_abi::object::ASID_COUNT
        && mapping.address < strata_abi::object::USER_TOP
        && mapping.address.is_multiple_of(align)
}

/// Direct reads of the few fields the kernel's hot paths need from slot
/// words, instead of a whole decode, and the encoding the IPC fastpath
/// (`arch::x86_64::fastpath`) decodes itself. Each agrees with
/// [`Capability::decode_fields`] (tested below).
pub mod raw {
    pub(crate) use super::{CNODE_GUARD_SIZE, CNODE_OBJECT, CNODE_RADIX, FRAME_OBJECT, SMALL_OBJECT};
    use super::{PML4_ASID, PML4_ASSIGNED, PML4_OBJECT, RIGHTS, TAG, tag};
    use crate::addr::PhysAddr;
    use strata_abi::object::Rights;

    /// Tags (bits 0-4).
    pub const TAG_CNODE: u64 = tag::CNODE;
    /// See [`TAG_CNODE`].
    pub const TAG_ENDPOINT: u64 = tag::ENDPOINT;
    /// See [`TAG_CNODE`].
    pub const TAG_FRAME: u64 = tag::FRAME;

    /// `rights` in an endpoint's word 0.
    pub const fn right(rights: Rights) -> u64 {
        rights.bits() << RIGHTS.shift
    }

    /// A frame's object.
    #[inline]
    pub fn frame([w0, _]: [u64; 2]) -> Option<PhysAddr> {
        (TAG.get(w0) == tag::FRAME).then(|| PhysAddr(FRAME_OBJECT.get(w0) << 12))
    }

    /// A GuestSpace's root and ASID, if it has one.
    #[inline]
    pub fn guest_space([w0, _]: [u64; 2]) -> Option<(PhysAddr, u16)> {
        (TAG.get(w0) == tag::GUEST_SPACE && PML4_ASSIGNED.get(w0) == 1)
            .then(|| (PhysAddr(PML4_OBJECT.get(w0) << 12), PML4_ASID.get(w0) as u16))
    }

    /// An address space's PML4 and ASID, if it has one.
    #[inline]
    pub fn pml4([w0, _]: [u64; 2]) -> Option<(PhysAddr, u16)> {
        (TAG.get(w0) == tag::PML4 && PML4_ASSIGNED.get(w0) == 1)
            .then(|| (PhysAddr(PML4_OBJECT.get(w0) << 12), PML4_ASID.get(w0) as u16))
    }
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
            Self::Untyped { base, size_bits, free_index, device } => {
                check(
                    address_ok(base, 4) && UNTYPED_SIZE.fits(u64::from(size_bits)) && free_index % 16 == 0,
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
            Self::Endpoint { object, badge, rights } | Self::Notification { object, badge, rights } => {
                check(address_ok(object, 4))?;
                let kind =
                    if matches!(self, Self::Endpoint { .. }) { tag::ENDPOINT } else { tag::NOTIFICATION };
                [TAG.put(kind) | RIGHTS.put(rights.bits()) | SMALL_OBJECT.put(object.get() >> 4), badge]
            }
            Self::CNode { object, radix, guard_size, guard } => {
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
            Self::Zombie { object, radix, remaining } => {
                check(address_ok(object, 5) && ZOMBIE_RADIX.fits(u64::from(radix)))?;
                check(ZOMBIE_REMAINING.fits(remaining) && remaining <= 1 << radix)?;
                [
                    TAG.put(tag::ZOMBIE)
                        | ZOMBIE_RADIX.put(u64::from(radix))
                        | ZOMBIE_REMAINING.put(remaining),
                    object.get(),
                ]
            }
            Self::Frame { object, size, rights, device, mapping } => {
                let align = if size == FrameSize::Large { 21 } else { 12 };
                check(address_ok(object, align) && FRAME_RIGHTS.fits(rights.bits()))?;
                check(mapping.is_none_or(|m| mapping_ok(m, size.bytes())))?;
                [
                    TAG.put(tag::FRAME)
                        | FRAME_LARGE.put(u64::from(size == FrameSize::Large))
                        | FRAME_RIGHTS.put(rights.bits())
                        | FRAME_DEVICE.put(u64::from(device))
                        | FRAME_MAPPED.put(u64::from(mapping.is_some()))
                        | FRAME_ASID.put(mapping.map_or(0, |m| u64::from(m.asid)))
                        | FRAME_OBJECT.put(object.get() >> 12),
                    mapping.map_or(0, |m| m.address),
                ]
            }
            Self::PageTable { object, level, mapping } => {
                check(address_ok(object, 12) && mapping.is_none_or(|m| mapping_ok(m, level.coverage())))?;
                [
                    TAG.put(tag::PAGE_TABLE)
                        | TABLE_LEVEL.put(level as u64)
                        | TABLE_MAPPED.put(u64::from(mapping.is_some()))
                        | TABLE_ASID.put(mapping.map_or(0, |m| u64::from(m.asid)))
                        | TABLE_OBJECT.put(object.get() >> 12),
                    mapping.map_or(0, |m| m.address),
                ]
            }
            Self::Pml4 { object, asid } | Self::GuestSpace { object, asid } => {
                check(address_ok(object, 12) && asid.is_none_or(|a| a != 0 && PML4_ASID.fits(u64::from(a))))?;
                let kind = if matches!(self, Self::Pml4 { .. }) { tag::PML4 } else { tag::GUEST_SPACE };
                [
                    TAG.put(kind)
                        | PML4_ASSIGNED.put(u64::from(asid.is_some()))
                        | PML4_ASID.put(asid.map_or(0, u64::from))
                        | PML4_OBJECT.put(object.get() >> 12),
                    0,
                ]
            }
            Self::AsidControl => [TAG.put(tag::ASID_CONTROL), 0],
            Self::AsidPool { object, first_asid } => {
                let aligned = u32::from(first_asid).is_multiple_of(strata_abi::object::ASID_POOL_SIZE);
                check(address_ok(object, 12) && POOL_FIRST_ASID.fits(u64::from(first_asid)) && aligned)?;
                [TAG.put(tag::ASID_POOL) | POOL_FIRST_ASID.put(u64::from(first_asid)), object.get()]
            }
            Self::IoPortControl => [TAG.put(tag::IO_PORT_CONTROL), 0],
            Self::IoPort { first, last } => {
                check(first <= last)?;
                [TAG.put(tag::IO_PORT) | PORT_FIRST.put(u64::from(first)) | PORT_LAST.put(u64::from(last)), 0]
            }
            Self::IrqControl => [TAG.put(tag::IRQ_CONTROL), 0],
            Self::IrqHandler { line } => [TAG.put(tag::IRQ_HANDLER) | IRQ_LINE.put(u64::from(line)), 0],
            Self::Vcpu { object } => {
                check(address_ok(object, strata_abi::object::VCPU_SIZE_BITS))?;
                [TAG.put(tag::VCPU), object.get()]
            }
        })
    }

    /// Reads the two words of a slot, which must be the canonical
    /// encoding of a capability.
    pub fn decode(words: [u64; 2]) -> Result<Self, CorruptCapability> {
        let cap = Self::decode_fields(words)?;
        // Only canonical encodings are valid: anything else is corruption.
        if cap.encode() == Ok(words) { Ok(cap) } else { Err(CorruptCapability(words)) }
    }

    /// Reads the two words of a slot field by field, without checking that
    /// they are the canonical encoding (bits no field uses are ignored).
    /// For slots only the kernel writes: see `ObjectSpace::cap`.
    pub fn decode_fields(words: [u64; 2]) -> Result<Self, CorruptCapability> {
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
                    Self::Endpoint { object, badge: w1, rights }
                } else {
                    Self::Notification { object, badge: w1, rights }
                }
            }
            tag::CNODE => Self::CNode {
                object: PhysAddr(CNODE_OBJECT.get(w0) << 5),
                radix: CNODE_RADIX.get(w0) as u8,
                guard_size: CNODE_GUARD_SIZE.get(w0) as u8,
                guard: w1,
            },
            tag::TCB => Self::Tcb { object: PhysAddr(w1) },
            tag::ZOMBIE => Self::Zombie {
                object: PhysAddr(w1),
                radix: ZOMBIE_RADIX.get(w0) as u8,
                remaining: ZOMBIE_REMAINING.get(w0),
            },
            tag::FRAME => Self::Frame {
                object: PhysAddr(FRAME_OBJECT.get(w0) << 12),
                size: if FRAME_LARGE.get(w0) == 1 { FrameSize::Large } else { FrameSize::Small },
                rights: Rights::from_bits_truncate(FRAME_RIGHTS.get(w0)),
                device: FRAME_DEVICE.get(w0) == 1,
                mapping: (FRAME_MAPPED.get(w0) == 1)
                    .then(|| Mapping { asid: FRAME_ASID.get(w0) as u16, address: w1 }),
            },
            tag::PAGE_TABLE => Self::PageTable {
                object: PhysAddr(TABLE_OBJECT.get(w0) << 12),
                level: TableLevel::decode(TABLE_LEVEL.get(w0)).ok_or(corrupt)?,
                mapping: (TABLE_MAPPED.get(w0) == 1)
                    .then(|| Mapping { asid: TABLE_ASID.get(w0) as u16, address: w1 }),
            },
            tag::PML4 => Self::Pml4 {
                object: PhysAddr(PML4_OBJECT.get(w0) << 12),
                asid: (PML4_ASSIGNED.get(w0) == 1).then(|| PML4_ASID.get(w0) as u16),
            },
            tag::GUEST_SPACE => Self::GuestSpace {
                object: PhysAddr(PML4_OBJECT.get(w0) << 12),
                asid: (PML4_ASSIGNED.get(w0) == 1).then(|| PML4_ASID.get(w0) as u16),
            },
            tag::VCPU => Self::Vcpu { object: PhysAddr(w1) },
            tag::ASID_CONTROL => Self::AsidControl,
            tag::ASID_POOL => {
                Self::AsidPool { object: PhysAddr(w1), first_asid: POOL_FIRST_ASID.get(w0) as u16 }
            }
            tag::IO_PORT_CONTROL => Self::IoPortControl,
            tag::IO_PORT => Self::IoPort { first: PORT_FIRST.get(w0) as u16, last: PORT_LAST.get(w0) as u16 },
            tag::IRQ_CONTROL => Self::IrqControl,
            tag::IRQ_HANDLER => Self::IrqHandler { line: IRQ_LINE.get(w0) as u8 },
            _ => return Err(corrupt),
        };
        Ok(cap)
    }

    /// Whether the slot is empty.
    pub const fn is_null(&self) -> bool {
        matches!(self, Self::Null)
    }

    /// The physical region the capability names, as `(base, size)`.
    /// `None` for capabilities that name no memory.
    pub fn region(&self) -> Option<(PhysAddr, u64)> {
        use strata_abi::object::{ENDPOINT_SIZE_BITS, NOTIFICATION_SIZE_BITS, SLOT_SIZE_BITS, TCB_SIZE_BITS};
        match *self {
            Self::Null => None,
            Self::Untyped { base, size_bits, .. } => Some((base, 1 << size_bits)),
            Self::Endpoint { object, .. } => Some((object, 1 << ENDPOINT_SIZE_BITS)),
            Self::Notification { object, .. } => Some((object, 1 << NOTIFICATION_SIZE_BITS)),
            Self::CNode { object, radix, .. } | Self::Zombie { object, radix, .. } => {
                Some((object, 1 << (u32::from(radix) + SLOT_SIZE_BITS)))
            }
            Self::Tcb { object } => Some((object, 1 << TCB_SIZE_BITS)),
            Self::Frame { object, size, .. } => Some((object, size.bytes())),
            Self::PageTable { object, .. }
            | Self::Pml4 { object, .. }
            | Self::GuestSpace { object, .. }
            | Self::AsidPool { object, .. } => Some((object, 1 << 12)),
            Self::Vcpu { object } => Some((object, 1 << strata_abi::object::VCPU_SIZE_BITS)),
            Self::AsidControl
            | Self::IoPortControl
            | Self::IoPort { .. }
            | Self::IrqControl
            | Self::IrqHandler { .. } => None,
        }
    }

    /// The rights the capability carries. Types without rights carry all of them.
    pub fn rights(&self) -> Rights {
        match self {
            Self::Endpoint { rights, .. }
            | Self::Notification { rights, .. }
            | Self::Frame { rights, .. } => *rights,
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
        let address =
            |align: u32| (0u64..1 << (PHYSICAL_ADDRESS_BITS - align)).prop_map(move |a| PhysAddr(a << align));
        let rights = (0u64..16).prop_map(Rights::from_bits_truncate);
        prop_oneof![
            Just(Capability::Null),
            (address(4), 4u8..48, any::<bool>(), any::<u64>()).prop_map(|(base, size_bits, device, free)| {
                let free_index = (free % (1 << size_bits)) / 16 * 16;
                Capability::Untyped { base, size_bits, free_index, device }
            }),
            (address(4), any::<u64>(), rights.clone())
                .prop_map(|(object, badge, rights)| { Capability::Endpoint { object, badge, rights } }),
            (address(4), any::<u64>(), rights)
                .prop_map(|(object, badge, rights)| { Capability::Notification { object, badge, rights } }),
            (address(5), 1u8..25, 0u8..=64, any::<u64>()).prop_map(|(object, radix, guard_size, guard)| {
                let guard = if guard_size == 64 { guard } else { guard & ((1 << guard_size) - 1) };
                Capability::CNode { object, radix, guard_size, guard }
            }),
            address(12).prop_map(|object| Capability::Tcb { object }),
            address(13).prop_map(|object| Capability::Vcpu { object }),
            (address(12), 0u64..4, any::<bool>(), proptest::option::of((1u16..4096, 0u64..1 << 35)))
                .prop_map(|(object, rights, device, mapping)| Capability::Frame {
                    object,
                    size: FrameSize::Small,
                    rights: Rights::from_bits_truncate(rights),
                    device,
                    mapping: mapping.map(|(asid, page)| Mapping { asid, address: page << 12 }),
                }),
            (address(12), proptest::option::of(1u16..4096))
                .prop_map(|(object, asid)| Capability::GuestSpace { object, asid }),
            (address(12), proptest::option::of(1u16..4096))
                .prop_map(|(object, asid)| Capability::Pml4 { object, asid }),
            (address(5), 1u8..25, any::<u64>()).prop_map(|(object, radix, r)| {
                Capability::Zombie { object, radix, remaining: r % ((1 << radix) + 1) }
            }),
            Just(Capability::IoPortControl),
            Just(Capability::IrqControl),
            any::<u8>().prop_map(|line| Capability::IrqHandler { line }),
            (any::<u16>(), any::<u16>())
                .prop_map(|(a, b)| Capability::IoPort { first: a.min(b), last: a.max(b) }),
        ]
    }

    proptest! {
        #[test]
        fn encoding_round_trips(cap in any_capability()) {
            let words = cap.encode().expect("generated capabilities are encodable");
            prop_assert_eq!(Capability::decode(words), Ok(cap));
        }

        #[test]
        fn raw_field_reads_agree_with_decoding(cap in any_capability()) {
            let words = cap.encode().expect("generated capabilities are encodable");
            // The IPC fastpath's shifts take out the same fields.
            let field = |f: Field| words[0] << f.up() >> f.down();
            match cap {
                Capability::CNode { object, radix, guard_size, guard } => {
                    prop_assert_eq!(words[0] & 0x1f, raw::TAG_CNODE);
                    prop_assert_eq!(field(raw::CNODE_OBJECT) << 5, object.get());
                    prop_assert_eq!((field(CNODE_RADIX), field(CNODE_GUARD_SIZE), words[1]), (u64::from(radix), u64::from(guard_size), guard));
                }
                Capability::Endpoint { object, badge, rights } => {
                    prop_assert_eq!(words[0] & 0x1f, raw::TAG_ENDPOINT);
                    prop_assert_eq!((words[0] >> SMALL_OBJECT.shift << 4, words[1]), (object.get(), badge));
                    prop_assert_eq!(words[0] & raw::right(Rights::all()), raw::right(rights));
                }
                Capability::Frame { object, .. } => {
                    prop_assert_eq!((words[0] & 0x1f, field(FRAME_OBJECT) << 12), (raw::TAG_FRAME, object.get()));
                }
                _ => {}
            }
            let pml4 = match cap {
                Capability::Pml4 { object, asid: Some(asid) } => Some((object, asid)),
                _ => None,
            };
            prop_assert_eq!(raw::pml4(words), pml4);
            let frame = match cap {
                Capability::Frame { object, .. } => Some(object),
                _ => None,
            };
            prop_assert_eq!(raw::frame(words), frame);
            let guest = match cap {
                Capability::GuestSpace { object, asid: Some(asid) } => Some((object, asid)),
                _ => None,
            };
            prop_assert_eq!(raw::guest_space(words), guest);
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
            Capability::CNode { object: PhysAddr(0x1010), radix: 2, guard_size: 0, guard: 0 }.encode(),
            Err(Unencodable)
        );
        assert_eq!(
            Capability::CNode { object: PhysAddr(0x1000), radix: 2, guard_size: 3, guard: 8 }.encode(),
            Err(Unencodable)
        );
        assert_eq!(
            Capability::Untyped { base: PhysAddr(0x1000), size_bits: 12, free_index: 8, device: false }
                .encode(),
            Err(Unencodable)
        );
        assert_eq!(Capability::IoPort { first: 0x71, last: 0x70 }.encode(), Err(Unencodable));
        assert!(Capability::decode([31, 0]).is_err());
        assert!(Capability::decode([tag::NULL, 1]).is_err());
    }
}
