//! Kernel object types and their sizes, and capability rights.

use bitflags::bitflags;

/// Bytes of one capability slot (CTE: two capability words and two
/// derivation-tree words), as a power of two.
pub const SLOT_SIZE_BITS: u32 = 5;
/// Smallest Untyped object (16 bytes).
pub const MIN_UNTYPED_BITS: u32 = 4;
/// Largest Untyped object (128 TiB).
pub const MAX_UNTYPED_BITS: u32 = 47;
/// Smallest CNode radix (2 slots).
pub const MIN_CNODE_RADIX: u32 = 1;
/// Largest CNode radix (2^24 slots, 512 MiB).
pub const MAX_CNODE_RADIX: u32 = 24;

/// A kind of kernel object, as named in an Untyped retype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u64)]
pub enum ObjectType {
    /// Memory that can be retyped into other objects.
    Untyped = 0,
    /// A thread control block.
    Tcb = 1,
    /// A synchronous IPC endpoint.
    Endpoint = 2,
    /// An asynchronous notification word.
    Notification = 3,
    /// A power-of-two array of capability slots.
    CNode = 4,
    /// A 4 KiB page of memory that can be mapped.
    Frame4K = 5,
    /// A 2 MiB page of memory that can be mapped.
    Frame2M = 6,
    /// A page table: 512 entries mapping 4 KiB frames (covers 2 MiB).
    PageTable = 7,
    /// A page directory: 512 entries for page tables or 2 MiB frames (covers 1 GiB).
    PageDirectory = 8,
    /// A page-directory-pointer table: 512 entries for page directories (covers 512 GiB).
    Pdpt = 9,
    /// The root of an address space (PML4); its upper half maps the kernel.
    Pml4 = 10,
    /// A virtual CPU: the hardware's control block (VMCB or VMCS), the
    /// guest's general registers and FPU state (8 KiB).
    Vcpu = 11,
    /// The root of a guest-physical address space (nested page tables on
    /// SVM, EPT on VMX). Page tables and frames are mapped into it as into
    /// a PML4.
    GuestSpace = 12,
}

impl TryFrom<u64> for ObjectType {
    type Error = u64;

    fn try_from(value: u64) -> Result<Self, u64> {
        Ok(match value {
            0 => Self::Untyped,
            1 => Self::Tcb,
            2 => Self::Endpoint,
            3 => Self::Notification,
            4 => Self::CNode,
            5 => Self::Frame4K,
            6 => Self::Frame2M,
            7 => Self::PageTable,
            8 => Self::PageDirectory,
            9 => Self::Pdpt,
            10 => Self::Pml4,
            11 => Self::Vcpu,
            12 => Self::GuestSpace,
            other => return Err(other),
        })
    }
}

/// Why a requested object size is not possible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeOutOfRange {
    /// Smallest user size accepted.
    pub min: u32,
    /// Largest user size accepted.
    pub max: u32,
}

impl ObjectType {
    /// The object's size as a power of two, given the caller's size argument
    /// (bits for Untyped, radix for CNode; ignored for fixed-size objects).
    pub fn size_bits(self, user_size: u32) -> Result<u32, SizeOutOfRange> {
        let check = |min: u32, max: u32| {
            if (min..=max).contains(&user_size) { Ok(user_size) } else { Err(SizeOutOfRange { min, max }) }
        };
        match self {
            Self::Untyped => check(MIN_UNTYPED_BITS, MAX_UNTYPED_BITS),
            Self::CNode => check(MIN_CNODE_RADIX, MAX_CNODE_RADIX).map(|radix| radix + SLOT_SIZE_BITS),
            Self::Tcb => Ok(TCB_SIZE_BITS),
            Self::Endpoint => Ok(ENDPOINT_SIZE_BITS),
            Self::Notification => Ok(NOTIFICATION_SIZE_BITS),
            Self::Frame2M => Ok(21),
            Self::Vcpu => Ok(VCPU_SIZE_BITS),
            Self::Frame4K
            | Self::PageTable
            | Self::PageDirectory
            | Self::Pdpt
            | Self::Pml4
            | Self::GuestSpace => Ok(12),
        }
    }
}

/// A TCB: registers, scheduling and IPC state, and the XSAVE area (4 KiB).
pub const TCB_SIZE_BITS: u32 = 12;
/// A VCPU: a page for the VMCB or VMCS, a page for the rest (8 KiB).
pub const VCPU_SIZE_BITS: u32 = 13;
/// An endpoint: queue head and tail and state (16 bytes).
pub const ENDPOINT_SIZE_BITS: u32 = 4;
/// A notification: word, queue and bound thread (32 bytes).
pub const NOTIFICATION_SIZE_BITS: u32 = 5;

bitflags! {
    /// What a capability allows. Derived capabilities can only lose rights.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Rights: u64 {
        /// Receive on an endpoint; read a frame; wait on a notification.
        const READ = 1 << 0;
        /// Send on an endpoint; write a frame; signal a notification.
        const WRITE = 1 << 1;
        /// Transfer capabilities in messages sent through this capability.
        const GRANT = 1 << 2;
        /// Transfer capabilities in replies to calls made through this capability.
        const GRANT_REPLY = 1 << 3;
    }
}

/// Number of ASIDs (they are the x86 PCIDs: 12 bits). ASID 0 is never assigned.
pub const ASID_COUNT: u32 = 4096;
/// ASIDs per ASID pool.
pub const ASID_POOL_SIZE: u32 = 512;
/// Highest user virtual address plus one (the lower canonical half).
pub const USER_TOP: u64 = 0x0000_8000_0000_0000;

bitflags! {
    /// How a frame is mapped, besides its rights.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct VmAttributes: u64 {
        /// Write-through caching.
        const WRITE_THROUGH = 1 << 0;
        /// Caching disabled (device memory).
        const CACHE_DISABLED = 1 << 1;
        /// Instructions may be fetched. Refused together with the WRITE
        /// right: a mapping is writable or executable, never both.
        const EXECUTABLE = 1 << 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_types_round_trip() {
        for n in 0..16u64 {
            if let Ok(kind) = ObjectType::try_from(n) {
                assert_eq!(kind as u64, n);
            }
        }
        assert_eq!(ObjectType::try_from(99), Err(99));
    }

    #[test]
    fn sizes_follow_the_user_argument_only_where_variable() {
        assert_eq!(ObjectType::CNode.size_bits(4), Ok(4 + SLOT_SIZE_BITS));
        assert_eq!(ObjectType::CNode.size_bits(0), Err(SizeOutOfRange { min: 1, max: 24 }));
        assert_eq!(ObjectType::Untyped.size_bits(12), Ok(12));
        assert_eq!(ObjectType::Untyped.size_bits(3), Err(SizeOutOfRange { min: 4, max: 47 }));
        assert_eq!(ObjectType::Untyped.size_bits(48), Err(SizeOutOfRange { min: 4, max: 47 }));
        assert_eq!(ObjectType::Endpoint.size_bits(999), Ok(ENDPOINT_SIZE_BITS));
        assert_eq!(ObjectType::Tcb.size_bits(0), Ok(TCB_SIZE_BITS));
    }
}
