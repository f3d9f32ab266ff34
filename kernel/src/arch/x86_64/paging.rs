//! x86-64 4-level page-table entries (Intel SDM vol. 3A §4.5, AMD APM vol. 2
//! §5.3). The one definition of the format; the loader builds the boot page
//! tables with it and the kernel's address-space objects will too.

use bitflags::bitflags;

/// Size of a 4 KiB page and of every page-table object.
pub const PAGE_SIZE: u64 = 4096;
/// Entries in one page table.
pub const ENTRIES: usize = 512;
/// The physical-address bits of an entry (bits 12..51).
pub const ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;

bitflags! {
    /// Flag bits of a page-table entry at any level.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct PteFlags: u64 {
        /// The entry maps something.
        const PRESENT = 1 << 0;
        /// Writes are allowed (subject to CR0.WP in supervisor mode).
        const WRITABLE = 1 << 1;
        /// User-mode accesses are allowed.
        const USER = 1 << 2;
        /// Write-through caching (PAT index bit 0).
        const WRITE_THROUGH = 1 << 3;
        /// Caching disabled (PAT index bit 1).
        const CACHE_DISABLE = 1 << 4;
        /// Set by the CPU on access.
        const ACCESSED = 1 << 5;
        /// Set by the CPU on write (leaf entries).
        const DIRTY = 1 << 6;
        /// In a PDPT or PD entry: maps a 1 GiB or 2 MiB page instead of a table.
        const HUGE = 1 << 7;
        /// Not flushed from the TLB on CR3 writes (leaf entries, CR4.PGE).
        const GLOBAL = 1 << 8;
        /// Instruction fetches are not allowed (EFER.NXE must be set).
        const NO_EXECUTE = 1 << 63;
    }
}

/// One page-table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(transparent)]
pub struct PageTableEntry(u64);

impl PageTableEntry {
    /// The empty (not present) entry.
    pub const EMPTY: Self = Self(0);

    /// An entry pointing at `physical` (4 KiB aligned) with `flags`.
    pub const fn new(physical: u64, flags: PteFlags) -> Self {
        Self((physical & ADDRESS_MASK) | flags.bits())
    }

    /// Reinterprets a raw 64-bit entry.
    pub const fn from_raw(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw 64-bit entry.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// The physical address the entry points at.
    pub const fn address(self) -> u64 {
        self.0 & ADDRESS_MASK
    }

    /// The flag bits, unknown bits dropped.
    pub const fn flags(self) -> PteFlags {
        PteFlags::from_bits_truncate(self.0)
    }

    /// Whether the entry maps anything.
    pub const fn is_present(self) -> bool {
        self.0 & PteFlags::PRESENT.bits() != 0
    }
}

/// The four table levels, from the root down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Page-map level 4; entries cover 512 GiB.
    Pml4 = 3,
    /// Page-directory-pointer table; entries cover 1 GiB.
    Pdpt = 2,
    /// Page directory; entries cover 2 MiB.
    Pd = 1,
    /// Page table; entries cover 4 KiB.
    Pt = 0,
}

impl Level {
    /// Bytes one entry at this level covers.
    pub const fn entry_span(self) -> u64 {
        PAGE_SIZE << (9 * self as u64)
    }

    /// Index of `virtual_address` in a table of this level.
    pub const fn index_of(self, virtual_address: u64) -> usize {
        ((virtual_address >> (12 + 9 * self as u64)) & 0x1ff) as usize
    }

    /// The level below, if any.
    pub const fn next(self) -> Option<Self> {
        match self {
            Self::Pml4 => Some(Self::Pdpt),
            Self::Pdpt => Some(Self::Pd),
            Self::Pd => Some(Self::Pt),
            Self::Pt => None,
        }
    }
}

/// Whether `address` is canonical for 4-level paging (bits 47..63 equal).
pub const fn is_canonical(address: u64) -> bool {
    let upper = address >> 47;
    upper == 0 || upper == 0x1_ffff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_round_trips_address_and_flags() {
        let flags = PteFlags::PRESENT | PteFlags::WRITABLE | PteFlags::NO_EXECUTE;
        let entry = PageTableEntry::new(0x0000_1234_5678_9000, flags);
        assert_eq!(entry.address(), 0x0000_1234_5678_9000);
        assert_eq!(entry.flags(), flags);
        assert!(entry.is_present());
        assert_eq!(entry.raw(), 0x8000_1234_5678_9003);
        // Low bits of a misaligned address must not leak into the flags.
        assert_eq!(PageTableEntry::new(0x1fff, PteFlags::empty()).raw(), 0x1000);
    }

    #[test]
    fn level_indices_and_spans_match_the_manual() {
        let kernel_base = 0xffff_ffff_8000_0000;
        assert_eq!(Level::Pml4.index_of(kernel_base), 511);
        assert_eq!(Level::Pdpt.index_of(kernel_base), 510);
        assert_eq!(Level::Pml4.index_of(0xffff_8000_0000_0000), 256);
        assert_eq!(Level::Pdpt.entry_span(), 1 << 30);
        assert_eq!(Level::Pd.entry_span(), 2 << 20);
        assert!(is_canonical(kernel_base) && !is_canonical(0x0000_8000_0000_0000));
    }
}
