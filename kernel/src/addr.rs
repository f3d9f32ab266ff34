//! Address newtypes: a physical address is never confused with a virtual one.

use core::fmt;

/// A physical memory address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct PhysAddr(pub u64);

/// A virtual address in the kernel's address space.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct VirtAddr(pub u64);

impl PhysAddr {
    /// The raw value.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// This address plus `bytes`.
    pub const fn offset(self, bytes: u64) -> Self {
        Self(self.0 + bytes)
    }

    /// Whether the address is a multiple of `align` (a power of two).
    pub const fn is_aligned(self, align: u64) -> bool {
        self.0 & (align - 1) == 0
    }
}

impl VirtAddr {
    /// The raw value.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// As a pointer.
    pub const fn as_mut_ptr<T>(self) -> *mut T {
        self.0 as *mut T
    }
}

impl fmt::Debug for PhysAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhysAddr({:#x})", self.0)
    }
}

impl fmt::Display for PhysAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl fmt::Debug for VirtAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VirtAddr({:#x})", self.0)
    }
}

/// The higher-half direct map: all physical memory at a fixed offset.
#[derive(Debug, Clone, Copy)]
pub struct DirectMap {
    offset: u64,
}

impl DirectMap {
    /// The map at `offset` (from the bootloader's HHDM response).
    pub const fn new(offset: u64) -> Self {
        Self { offset }
    }

    /// Where `physical` is visible to the kernel.
    pub const fn to_virtual(self, physical: PhysAddr) -> VirtAddr {
        VirtAddr(physical.0 + self.offset)
    }

    /// The physical address behind a direct-map address, if it is one.
    pub fn to_physical(self, address: VirtAddr) -> Option<PhysAddr> {
        address.0.checked_sub(self.offset).map(PhysAddr)
    }
}
