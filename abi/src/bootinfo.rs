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
    /// The first ASID pool (the root task's address space has an ASID from
    /// it); in a child that runs guests, an ASID pool of its own.
    pub const ASID_POOL: u64 = 5;
    /// The frame holding the root task's IPC buffer.
    pub const IPC_BUFFER: u64 = 6;
    /// The frame holding the boot-info page.
    pub const BOOT_INFO: u64 = 7;
    /// Authority over the I/O ports the kernel does not keep for itself.
    pub const IO_PORT_CONTROL: u64 = 8;
    /// Authority over the device interrupt lines.
    pub const IRQ_CONTROL: u64 = 9;
    /// A child process: an endpoint to its parent, badged by the parent
    /// (empty in the root task).
    pub const PARENT: u64 = 10;
    /// A child process: its fault endpoint, an endpoint to its parent with
    /// the parent's fault badge (empty in the root task).
    pub const FAULT_HANDLER: u64 = 11;
    /// A child process: the I/O ports its system description gives it.
    pub const IO_PORTS: u64 = 12;
    /// A child process: the IRQ handler its system description gives it.
    pub const IRQ: u64 = 13;
    /// First slot of the variable part (image frames, then Untypeds).
    pub const FIRST_VARIABLE: u64 = 16;
}

/// Where a task's pieces are in its address space: the kernel lays out the
/// root task this way, and `strata-rt` its children.
pub mod layout {
    /// Where the program image may lie.
    pub const IMAGE_START: u64 = 0x40_0000;
    /// One past the highest address the image may use.
    pub const IMAGE_END: u64 = 0x1000_0000_0000;
    /// The IPC buffer of the first thread.
    pub const IPC_BUFFER_ADDRESS: u64 = 0x7000_0000_1000;
    /// The boot-info page (its address is in RDI at entry).
    pub const BOOT_INFO_ADDRESS: u64 = 0x7000_0000_2000;
    /// Top of the first thread's stack (RSP at entry).
    pub const STACK_TOP: u64 = 0x7000_0001_4000;
    /// Pages of that stack.
    pub const STACK_PAGES: u64 = 16;
    /// Where the first boot module is mapped (root task).
    pub const MODULES_ADDRESS: u64 = 0x6000_0000_0000;
    /// Where `strata-rt` maps guest RAM for a VMM: 1 GiB windows from here
    /// (a PML4 slot of its own, clear of the modules and the stack).
    pub const GUEST_RAM_ADDRESS: u64 = 0x6800_0000_0000;
}

/// Magic at the start of the boot-info page ("STRATABI").
pub const MAGIC: u64 = u64::from_le_bytes(*b"STRATABI");
/// Boot-info layout version.
pub const VERSION: u64 = 2;
/// Most Untypeds described.
pub const MAX_UNTYPEDS: usize = 200;
/// Most boot modules described.
pub const MAX_MODULES: usize = 8;
/// Longest module name, in bytes (names are NUL-padded to 32 bytes).
pub const MODULE_NAME_LEN: usize = 31;

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

/// A boot module (a file in the boot archive other than the kernel and
/// the root task), copied into frames the task holds and mapped read-only
/// into its address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Default)]
#[repr(C)]
pub struct ModuleDescriptor {
    /// Its name in the boot archive, NUL-padded.
    pub name: [u8; MODULE_NAME_LEN + 1],
    /// Where its bytes are mapped (read-only) in this task.
    pub address: u64,
    /// Its size in bytes.
    pub size: u64,
    /// Caps to the frames holding it, in address order.
    pub frames: SlotRange,
}

impl ModuleDescriptor {
    /// The name, up to the first NUL (`None` if it is not UTF-8).
    pub fn name(&self) -> Option<&str> {
        let length = self.name.iter().position(|&b| b == 0).unwrap_or(self.name.len());
        core::str::from_utf8(&self.name[..length]).ok()
    }
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
    /// Number of valid entries in `modules`.
    pub module_count: u64,
    /// Radix of the task's CNode (its CSpace root, guarded so that slot
    /// numbers are capability pointers).
    pub cnode_radix: u64,
    /// Zero.
    pub reserved: [u64; 5],
    /// The Untypeds.
    pub untypeds: [UntypedDescriptor; MAX_UNTYPEDS],
    /// The boot modules.
    pub modules: [ModuleDescriptor; MAX_MODULES],
}

impl BootInfo {
    /// The valid module descriptors.
    pub fn modules(&self) -> &[ModuleDescriptor] {
        &self.modules[..(self.module_count as usize).min(MAX_MODULES)]
    }

    /// The valid Untyped descriptors.
    pub fn untypeds(&self) -> &[UntypedDescriptor] {
        &self.untypeds[..(self.untyped_count as usize).min(MAX_UNTYPEDS)]
    }
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
    /// The register block of `VmEnter` (`vcpu::RegisterBlock`): what the
    /// kernel loads with `LOAD_REGISTERS` and writes at every exit. No
    /// message reaches it, so a VMM can work on it in place between exits.
    pub vcpu: [u64; 18],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_fit_and_layouts_are_stable() {
        assert!(core::mem::size_of::<BootInfo>() <= 4096);
        assert_eq!(core::mem::size_of::<UntypedDescriptor>(), 16);
        assert_eq!(core::mem::size_of::<ModuleDescriptor>(), 64);
        assert_eq!(core::mem::offset_of!(BootInfo, untyped_count), 64);
        assert_eq!(core::mem::offset_of!(BootInfo, untypeds), 128);
        assert_eq!(core::mem::size_of::<IpcBuffer>(), 8 * 146);
        assert_eq!(core::mem::offset_of!(IpcBuffer, vcpu), 8 * 128);
        assert_eq!(core::mem::size_of::<[u64; 18]>(), 8 * crate::vcpu::REGISTER_BLOCK_WORDS);
        assert_eq!(core::mem::offset_of!(IpcBuffer, caps_or_badges), 8 * 122);
        assert_eq!(MAGIC.to_le_bytes(), *b"STRATABI");
    }
}
