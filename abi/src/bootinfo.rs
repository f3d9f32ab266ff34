//! What the kernel gives the root task: its initial capabilities in fixed
//! slots of its CNode, and a read-only boot-info page (its address arrives
//! in RDI) describing the rest.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Radix of the root task's CNode (4096 slots).
pub const ROOT_CNODE_RADIX: u8 = 12;

/// Fixed slots of the root task's CNode.
pub mod slot {
    /// Always empty.
    pub const NULL: u64 = 0;
    /// The root CNode itself.
    pub const CNODE: u64 = 1;
    /// The root task's address space (PML4, with an ASID).
    pub const VSPACE: u64 = 2;
    /// The root task's thread.
    pub const TCB: u64 = 3;
    /// Authority to create ASID pools.
    pub const ASID_CONTROL: u64 = 4;
    /// The first ASID pool (the root task's address space has an ASID from it).
    pub const ASID_POOL: u64 = 5;
    /// The frame holding the root task's IPC buffer.
    pub const IPC_BUFFER: u64 = 6;
    /// The frame holding the boot-info page.
    pub const BOOT_INFO: u64 = 7;
    /// Authority over the I/O ports the kernel does not keep for itself.
    pub const IO_PORT_CONTROL: u64 = 8;
    /// Authority over the device interrupt lines.
    pub const IRQ_CONTROL: u64 = 9;
    /// First slot of the variable part (image frames, then Untypeds).
    pub const FIRST_VARIABLE: u64 = 16;
}

/// Magic at the start of the boot-info page ("STRATABI").
pub const MAGIC: u64 = u64::from_le_bytes(*b"STRATABI");
/// Boot-info layout version.
pub const VERSION: u64 = 1;
/// Most Untypeds described.
pub const MAX_UNTYPEDS: usize = 200;

/// A run of consecutive slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Default)]
#[repr(C)]
pub struct SlotRange {
    /// First slot.
    pub start: u64,
    /// One past the last slot.
    pub end: u64,
}

/// One Untyped the root task receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Default)]
#[repr(C)]
pub struct UntypedDescriptor {
    /// Physical address.
    pub physical_address: u64,
    /// Size as a power of two.
    pub size_bits: u8,
    /// 1 for device memory.
    pub device: u8,
    /// Zero.
    pub reserved: [u8; 6],
}

/// The boot-info page.
#[derive(Debug, Clone, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct BootInfo {
    /// [`MAGIC`].
    pub magic: u64,
    /// [`VERSION`].
    pub version: u64,
    /// First free slot of the root CNode after everything below.
    pub first_free_slot: u64,
    /// Where the root task's IPC buffer is mapped.
    pub ipc_buffer_address: u64,
    /// Caps to the frames of the root task's own image, in address order.
    pub image_frames: SlotRange,
    /// Caps to the Untypeds, in the order of `untypeds`.
    pub untyped_slots: SlotRange,
    /// Number of valid entries in `untypeds`.
    pub untyped_count: u64,
    /// Zero.
    pub reserved: [u64; 7],
    /// The Untypeds.
    pub untypeds: [UntypedDescriptor; MAX_UNTYPEDS],
}

/// The IPC buffer of a thread: message words beyond the registers, and the
/// capability pointers of capabilities sent with a message.
#[derive(Debug, Clone, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct IpcBuffer {
    /// The message info of the last message.
    pub tag: u64,
    /// Message words (the first [`crate::message::REGISTER_WORDS`] travel in registers).
    pub message: [u64; 120],
    /// Free for the thread's own use.
    pub user_data: u64,
    /// Capability pointers of the extra capabilities of an invocation or
    /// send; badges of received ones.
    pub caps_or_badges: [u64; 3],
    /// Where received capabilities go: CNode, index, depth.
    pub receive_cnode: u64,
    /// Index for a received capability.
    pub receive_index: u64,
    /// Depth for a received capability.
    pub receive_depth: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_fit_and_layouts_are_stable() {
        assert!(core::mem::size_of::<BootInfo>() <= 4096);
        assert_eq!(core::mem::size_of::<UntypedDescriptor>(), 16);
        assert_eq!(core::mem::size_of::<IpcBuffer>(), 8 * 128);
        assert_eq!(core::mem::offset_of!(IpcBuffer, caps_or_badges), 8 * 122);
        assert_eq!(MAGIC.to_le_bytes(), *b"STRATABI");
    }
}
