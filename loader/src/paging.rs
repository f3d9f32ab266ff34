//! Builds the page tables the kernel starts on.
//!
//! Tables are 4 KiB pages of physical memory obtained from the caller's
//! allocator and written through [`PhysicalMemory`]; the entry format is the
//! kernel's own ([`strata_kernel::arch::x86_64::paging`]).

use core::fmt;

use strata_kernel::arch::x86_64::paging::{
    ENTRIES, Level, PAGE_SIZE, PageTableEntry, PteFlags, is_canonical,
};

use crate::memmap::MemoryError;
use crate::physmem::PhysicalMemory;

/// Why a mapping could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PagingError {
    /// A table could not be allocated.
    Memory(MemoryError),
    /// The virtual address is already mapped (or a huge page covers it).
    AlreadyMapped {
        /// The address.
        virtual_address: u64,
    },
    /// Address not aligned to the page size, or not canonical.
    BadAddress {
        /// The virtual address.
        virtual_address: u64,
        /// The physical address.
        physical_address: u64,
    },
    /// A table lies outside the memory the loader can write.
    TableUnreachable {
        /// Its physical address.
        physical_address: u64,
    },
}

impl fmt::Display for PagingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory(error) => write!(f, "page tables: {error}"),
            Self::AlreadyMapped { virtual_address } => {
                write!(f, "page tables: {virtual_address:#x} is mapped twice")
            }
            Self::BadAddress { virtual_address, physical_address } => write!(
                f,
                "page tables: cannot map {virtual_address:#x} -> {physical_address:#x} (misaligned or non-canonical)"
            ),
            Self::TableUnreachable { physical_address } => {
                write!(f, "page tables: table at {physical_address:#x} is outside loader-writable memory")
            }
        }
    }
}

impl From<MemoryError> for PagingError {
    fn from(error: MemoryError) -> Self {
        Self::Memory(error)
    }
}

/// A 4-level page-table hierarchy under construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageTables {
    root: u64,
}

impl PageTables {
    /// Allocates an empty PML4.
    pub fn new(
        memory: &mut impl PhysicalMemory,
        allocate: &mut impl FnMut() -> Result<u64, MemoryError>,
    ) -> Result<Self, PagingError> {
        Ok(Self { root: new_table(memory, allocate)? })
    }

    /// The hierarchy under an existing PML4 at physical `root`.
    pub fn from_root(root: u64) -> Self {
        Self { root }
    }

    /// Physical address of the PML4 (the value for CR3).
    pub fn root(&self) -> u64 {
        self.root
    }

    /// Maps one page of the size a `level` entry covers (Pt: 4 KiB, Pd:
    /// 2 MiB, Pdpt: 1 GiB) at `virtual_address` to `physical_address`.
    pub fn map(
        &mut self,
        memory: &mut impl PhysicalMemory,
        allocate: &mut impl FnMut() -> Result<u64, MemoryError>,
        virtual_address: u64,
        physical_address: u64,
        leaf: Level,
        flags: PteFlags,
    ) -> Result<(), PagingError> {
        let span = leaf.entry_span();
        if leaf == Level::Pml4
            || !virtual_address.is_multiple_of(span)
            || !physical_address.is_multiple_of(span)
            || !is_canonical(virtual_address)
        {
            return Err(PagingError::BadAddress { virtual_address, physical_address });
        }
        let mut table = self.root;
        let mut level = Level::Pml4;
        loop {
            let index = level.index_of(virtual_address);
            let entry = read_entry(memory, table, index)?;
            if level == leaf {
                if entry.is_present() {
                    return Err(PagingError::AlreadyMapped { virtual_address });
                }
                let huge = if leaf == Level::Pt { PteFlags::empty() } else { PteFlags::HUGE };
                let leaf_entry = PageTableEntry::new(physical_address, flags | huge | PteFlags::PRESENT);
                return write_entry(memory, table, index, leaf_entry);
            }
            table = if !entry.is_present() {
                let next = new_table(memory, allocate)?;
                // Permissions are enforced at the leaf; intermediate entries allow all.
                let link = PageTableEntry::new(next, PteFlags::PRESENT | PteFlags::WRITABLE);
                write_entry(memory, table, index, link)?;
                next
            } else if entry.flags().contains(PteFlags::HUGE) {
                return Err(PagingError::AlreadyMapped { virtual_address });
            } else {
                entry.address()
            };
            // `leaf` is below Pml4 and we stop at it, so a next level exists.
            level = level.next().unwrap_or(Level::Pt);
        }
    }

    /// Maps `[virtual_address, + length)` to `[physical_address, + length)`
    /// with the largest pages the alignment allows (up to `largest`).
    #[allow(clippy::too_many_arguments)] // A mapping request has this many parts.
    pub fn map_range(
        &mut self,
        memory: &mut impl PhysicalMemory,
        allocate: &mut impl FnMut() -> Result<u64, MemoryError>,
        virtual_address: u64,
        physical_address: u64,
        length: u64,
        largest: Level,
        flags: PteFlags,
    ) -> Result<(), PagingError> {
        let mut offset = 0;
        while offset < length {
            let (virt, phys) = (virtual_address + offset, physical_address + offset);
            let level = [Level::Pdpt, Level::Pd, Level::Pt]
                .into_iter()
                .filter(|l| l.entry_span() <= largest.entry_span())
                .find(|l| {
                    let span = l.entry_span();
                    virt.is_multiple_of(span) && phys.is_multiple_of(span) && length - offset >= span
                })
                .unwrap_or(Level::Pt);
            self.map(memory, allocate, virt, phys, level, flags)?;
            offset += level.entry_span();
        }
        Ok(())
    }

    /// Where `virtual_address` leads: physical address and leaf flags.
    pub fn translate(&self, memory: &impl PhysicalMemory, virtual_address: u64) -> Option<(u64, PteFlags)> {
        let mut table = self.root;
        let mut level = Level::Pml4;
        loop {
            let entry = read_entry(memory, table, level.index_of(virtual_address)).ok()?;
            if !entry.is_present() {
                return None;
            }
            if level == Level::Pt || entry.flags().contains(PteFlags::HUGE) {
                let offset = virtual_address & (level.entry_span() - 1);
                return Some((entry.address() + offset, entry.flags()));
            }
            table = entry.address();
            level = level.next()?;
        }
    }
}

fn new_table(
    memory: &mut impl PhysicalMemory,
    allocate: &mut impl FnMut() -> Result<u64, MemoryError>,
) -> Result<u64, PagingError> {
    let table = allocate()?;
    memory
        .bytes_mut(table, PAGE_SIZE)
        .ok_or(PagingError::TableUnreachable { physical_address: table })?
        .fill(0);
    Ok(table)
}

fn read_entry(memory: &impl PhysicalMemory, table: u64, index: usize) -> Result<PageTableEntry, PagingError> {
    debug_assert!(index < ENTRIES);
    let bytes = memory
        .bytes(table + 8 * index as u64, 8)
        .ok_or(PagingError::TableUnreachable { physical_address: table })?;
    let mut raw = [0u8; 8];
    raw.copy_from_slice(bytes);
    Ok(PageTableEntry::from_raw(u64::from_le_bytes(raw)))
}

fn write_entry(
    memory: &mut impl PhysicalMemory,
    table: u64,
    index: usize,
    entry: PageTableEntry,
) -> Result<(), PagingError> {
    memory
        .bytes_mut(table + 8 * index as u64, 8)
        .ok_or(PagingError::TableUnreachable { physical_address: table })?
        .copy_from_slice(&entry.raw().to_le_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::physmem::Arena;

    fn bump(next: &mut u64) -> impl FnMut() -> Result<u64, MemoryError> + '_ {
        move || {
            let page = *next;
            *next += PAGE_SIZE;
            Ok(page)
        }
    }

    #[test]
    fn mappings_translate_back_at_every_page_size() {
        let mut memory = Arena::new(0, 64 * 4096);
        let mut next = 0;
        let mut allocate = bump(&mut next);
        let mut tables = PageTables::new(&mut memory, &mut allocate).expect("room");
        let rw_nx = PteFlags::WRITABLE | PteFlags::NO_EXECUTE;
        tables
            .map(&mut memory, &mut allocate, 0xffff_ffff_8000_1000, 0x5000, Level::Pt, PteFlags::empty())
            .expect("maps");
        tables
            .map(&mut memory, &mut allocate, 0xffff_8000_0020_0000, 0x20_0000, Level::Pd, rw_nx)
            .expect("maps");
        tables
            .map(&mut memory, &mut allocate, 0xffff_8000_4000_0000, 0x4000_0000, Level::Pdpt, rw_nx)
            .expect("maps");
        assert_eq!(tables.translate(&memory, 0xffff_ffff_8000_1234).map(|t| t.0), Some(0x5234));
        assert_eq!(tables.translate(&memory, 0xffff_8000_0021_2345).map(|t| t.0), Some(0x21_2345));
        let (phys, flags) = tables.translate(&memory, 0xffff_8000_7fff_fff0).expect("mapped");
        assert_eq!(phys, 0x7fff_fff0);
        assert!(flags.contains(PteFlags::HUGE | PteFlags::WRITABLE | PteFlags::NO_EXECUTE));
        assert_eq!(tables.translate(&memory, 0xffff_ffff_8000_2000), None);
        assert_eq!(tables.translate(&memory, 0), None);
    }

    #[test]
    fn double_mapping_and_bad_addresses_are_refused() {
        let mut memory = Arena::new(0, 64 * 4096);
        let mut next = 0;
        let mut allocate = bump(&mut next);
        let mut tables = PageTables::new(&mut memory, &mut allocate).expect("room");
        let va = 0xffff_8000_0000_0000;
        tables.map(&mut memory, &mut allocate, va, 0, Level::Pd, PteFlags::empty()).expect("maps");
        assert_eq!(
            tables.map(&mut memory, &mut allocate, va + 0x1000, 0x1000, Level::Pt, PteFlags::empty()),
            Err(PagingError::AlreadyMapped { virtual_address: va + 0x1000 })
        );
        assert_eq!(
            tables.map(&mut memory, &mut allocate, va, 0, Level::Pd, PteFlags::empty()),
            Err(PagingError::AlreadyMapped { virtual_address: va })
        );
        assert!(matches!(
            tables.map(&mut memory, &mut allocate, va + 0x1000, 0, Level::Pd, PteFlags::empty()),
            Err(PagingError::BadAddress { .. })
        ));
        assert!(matches!(
            tables.map(&mut memory, &mut allocate, 0x0000_8000_0000_0000, 0, Level::Pt, PteFlags::empty()),
            Err(PagingError::BadAddress { .. })
        ));
    }

    #[test]
    fn map_range_uses_large_pages_where_aligned() {
        let mut memory = Arena::new(0, 64 * 4096);
        let mut next = 0;
        let mut allocate = bump(&mut next);
        let mut tables = PageTables::new(&mut memory, &mut allocate).expect("room");
        // 4 KiB + 2 MiB + 4 KiB: one small page, one large, one small.
        let base = 0xffff_8000_001f_f000;
        tables
            .map_range(
                &mut memory,
                &mut allocate,
                base,
                0x1f_f000,
                0x20_2000,
                Level::Pdpt,
                PteFlags::WRITABLE,
            )
            .expect("maps");
        for offset in (0..0x20_2000).step_by(0x1000) {
            assert_eq!(tables.translate(&memory, base + offset).map(|t| t.0), Some(0x1f_f000 + offset));
        }
        let (_, middle) = tables.translate(&memory, 0xffff_8000_0020_0000).expect("mapped");
        assert!(middle.contains(PteFlags::HUGE));
        let (_, edge) = tables.translate(&memory, base).expect("mapped");
        assert!(!edge.contains(PteFlags::HUGE));
        drop(allocate);
        // PML4, PDPT, PD and two PTs.
        assert_eq!(next, 5 * PAGE_SIZE);
    }
}
