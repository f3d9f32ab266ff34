//! The memory map the kernel receives, and the loader's own allocations.
//!
//! The loader starts from the firmware map (possibly unsorted, possibly
//! overlapping, as E820 maps are) and claims regions for itself (boot page
//! tables, Limine responses, the kernel stack: bootloader-reclaimable) and for
//! the kernel image and the boot archive (executable-and-modules). The map
//! handed to the kernel is sorted and non-overlapping; where regions overlap
//! the more restrictive kind wins; usable and reclaimable entries are 4 KiB
//! aligned, as the Limine protocol promises.

use core::fmt;

use heapless::Vec;

use crate::bootinfo::{FirmwareKind, FirmwareRegion};

const PAGE: u64 = 4096;
/// Most loader claims (allocations and reservations) tracked.
pub const MAX_CLAIMS: usize = 48;
/// Most entries in the final memory map.
pub const MAX_ENTRIES: usize = 256;

/// Kinds in the final map, in increasing precedence: where two overlap, the
/// later kind wins. Discriminants are the Limine memory-map entry types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RegionKind {
    /// Free RAM.
    Usable,
    /// Loader structures; free once the kernel has read its responses.
    BootloaderReclaimable,
    /// The kernel image and the boot archive.
    ExecutableAndModules,
    /// ACPI tables.
    AcpiReclaimable,
    /// ACPI non-volatile storage.
    AcpiNvs,
    /// Reserved by firmware.
    Reserved,
    /// Defective RAM.
    BadMemory,
}

impl RegionKind {
    /// The Limine memory-map entry type.
    pub const fn limine_type(self) -> u64 {
        match self {
            Self::Usable => 0,
            Self::Reserved => 1,
            Self::AcpiReclaimable => 2,
            Self::AcpiNvs => 3,
            Self::BadMemory => 4,
            Self::BootloaderReclaimable => 5,
            Self::ExecutableAndModules => 6,
        }
    }

    fn from_firmware(kind: FirmwareKind) -> Self {
        match kind {
            FirmwareKind::Usable => Self::Usable,
            FirmwareKind::AcpiReclaimable => Self::AcpiReclaimable,
            FirmwareKind::AcpiNvs => Self::AcpiNvs,
            FirmwareKind::Bad => Self::BadMemory,
            FirmwareKind::Reserved => Self::Reserved,
        }
    }
}

/// One entry of a memory map: `[base, base + length)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// First byte.
    pub base: u64,
    /// Length in bytes.
    pub length: u64,
    /// What it is.
    pub kind: RegionKind,
}

impl Region {
    /// One past the last byte.
    pub const fn end(&self) -> u64 {
        self.base + self.length
    }
}

/// Why memory could not be found or claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryError {
    /// No usable range of this size and alignment below the limit.
    OutOfMemory {
        /// Bytes requested.
        size: u64,
        /// Alignment requested.
        align: u64,
    },
    /// More claims than the loader tracks.
    TooManyClaims,
    /// The final map has more entries than fit.
    MapTooLarge,
}

impl fmt::Display for MemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfMemory { size, align } => {
                write!(f, "out of memory: no free {size}-byte range aligned to {align:#x} below 4 GiB")
            }
            Self::TooManyClaims => write!(f, "more than {MAX_CLAIMS} loader memory claims"),
            Self::MapTooLarge => write!(f, "memory map has more than {MAX_ENTRIES} entries"),
        }
    }
}

/// The firmware map plus everything the loader has claimed.
#[derive(Debug)]
pub struct MemoryLayout<'a> {
    firmware: &'a [FirmwareRegion],
    claims: Vec<Region, MAX_CLAIMS>,
    /// Allocations come from `[min_address, max_address)`.
    min_address: u64,
    max_address: u64,
}

impl<'a> MemoryLayout<'a> {
    /// A layout over `firmware`, allocating only within
    /// `[min_address, max_address)` (the loader keeps below 1 MiB for firmware
    /// and real-mode code, and can only write below 4 GiB).
    pub fn new(firmware: &'a [FirmwareRegion], min_address: u64, max_address: u64) -> Self {
        Self { firmware, claims: Vec::new(), min_address, max_address }
    }

    /// Marks `[base, base + length)` as `kind`, widened to whole pages.
    pub fn claim(&mut self, base: u64, length: u64, kind: RegionKind) -> Result<(), MemoryError> {
        let start = base / PAGE * PAGE;
        let end = base.saturating_add(length).div_ceil(PAGE) * PAGE;
        self.claims
            .push(Region { base: start, length: end - start, kind })
            .map_err(|_| MemoryError::TooManyClaims)
    }

    /// Finds the lowest free, usable range of `size` bytes aligned to `align`
    /// (a power of two, at least 4 KiB), claims it as `kind` and returns its
    /// address.
    pub fn allocate(&mut self, size: u64, align: u64, kind: RegionKind) -> Result<u64, MemoryError> {
        let size = size.div_ceil(PAGE) * PAGE;
        let align = align.max(PAGE);
        let fail = MemoryError::OutOfMemory { size, align };
        // The lowest fit starts either where a usable region starts or where
        // a claim ends; try each such point.
        let candidates = self
            .firmware
            .iter()
            .filter(|r| r.kind == FirmwareKind::Usable)
            .map(|r| r.base)
            .chain(self.claims.iter().map(Region::end))
            .chain(core::iter::once(self.min_address));
        let best = candidates
            .filter_map(|point| point.max(self.min_address).checked_next_multiple_of(align))
            .filter(|&start| start.checked_add(size).is_some_and(|end| end <= self.max_address))
            .filter(|&start| self.is_free(start, start + size))
            .min()
            .ok_or(fail)?;
        self.claim(best, size, kind)?;
        Ok(best)
    }

    /// Whether `[start, end)` lies inside one firmware-usable range with no
    /// firmware non-usable range and no claim overlapping it.
    fn is_free(&self, start: u64, end: u64) -> bool {
        let overlaps = |base: u64, length: u64| base < end && start < base.saturating_add(length);
        let inside_usable = self.firmware.iter().any(|r| {
            r.kind == FirmwareKind::Usable && r.base <= start && end <= r.base.saturating_add(r.length)
        });
        inside_usable
            && !self.firmware.iter().any(|r| r.kind != FirmwareKind::Usable && overlaps(r.base, r.length))
            && !self.claims.iter().any(|c| overlaps(c.base, c.length))
    }

    /// The highest address covered by a region the kernel may need through
    /// the direct map (RAM of any kind and the loader's claims).
    pub fn highest_address(&self) -> u64 {
        self.firmware
            .iter()
            .filter(|r| r.kind != FirmwareKind::Reserved)
            .map(|r| r.base.saturating_add(r.length))
            .chain(self.claims.iter().map(Region::end))
            .max()
            .unwrap_or(0)
    }

    /// The sorted, non-overlapping map for the kernel.
    pub fn final_map(&self) -> Result<Vec<Region, MAX_ENTRIES>, MemoryError> {
        let regions = || {
            self.firmware
                .iter()
                .map(|r| Region {
                    base: r.base,
                    length: r.length.min(u64::MAX - r.base),
                    kind: RegionKind::from_firmware(r.kind),
                })
                .chain(self.claims.iter().copied())
        };
        let mut points: Vec<u64, { 2 * (crate::bootinfo::MAX_FIRMWARE_REGIONS + MAX_CLAIMS) }> = Vec::new();
        for region in regions() {
            for point in [region.base, region.end()] {
                if !points.contains(&point) {
                    points.push(point).map_err(|_| MemoryError::MapTooLarge)?;
                }
            }
        }
        points.sort_unstable();

        let mut map: Vec<Region, MAX_ENTRIES> = Vec::new();
        for pair in points.windows(2) {
            let (start, end) = (pair[0], pair[1]);
            let Some(kind) = regions().filter(|r| r.base <= start && end <= r.end()).map(|r| r.kind).max()
            else {
                continue; // A hole no region describes.
            };
            match map.last_mut() {
                Some(last) if last.kind == kind && last.end() == start => last.length += end - start,
                _ => map
                    .push(Region { base: start, length: end - start, kind })
                    .map_err(|_| MemoryError::MapTooLarge)?,
            }
        }
        // Usable and reclaimable entries must be whole pages: trim them. The
        // trimmed bytes are simply not reported.
        map.retain_mut(|region| {
            if matches!(region.kind, RegionKind::Usable | RegionKind::BootloaderReclaimable) {
                let start = region.base.next_multiple_of(PAGE);
                let end = region.end() / PAGE * PAGE;
                if end <= start {
                    return false;
                }
                *region = Region { base: start, length: end - start, kind: region.kind };
            }
            true
        });
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fw(base: u64, length: u64, kind: FirmwareKind) -> FirmwareRegion {
        FirmwareRegion { base, length, kind }
    }

    fn qemu_like() -> [FirmwareRegion; 4] {
        [
            fw(0, 0x9fc00, FirmwareKind::Usable),
            fw(0x9fc00, 0x400, FirmwareKind::Reserved),
            fw(0xf0000, 0x10000, FirmwareKind::Reserved),
            fw(0x100000, 0xfee0000, FirmwareKind::Usable),
        ]
    }

    #[test]
    fn allocations_are_lowest_fit_aligned_and_disjoint() {
        let firmware = qemu_like();
        let mut layout = MemoryLayout::new(&firmware, 0x100000, 1 << 32);
        layout.claim(0x100000, 0x5000, RegionKind::BootloaderReclaimable).expect("room");
        let a = layout.allocate(0x1000, 0x1000, RegionKind::BootloaderReclaimable).expect("room");
        assert_eq!(a, 0x105000);
        let b = layout.allocate(0x3000, 0x200000, RegionKind::ExecutableAndModules).expect("room");
        assert_eq!(b, 0x200000);
        let c = layout.allocate(0x1000, 0x1000, RegionKind::BootloaderReclaimable).expect("room");
        assert_eq!(c, 0x106000);
        assert_eq!(
            layout.allocate(1 << 30, 0x1000, RegionKind::Usable),
            Err(MemoryError::OutOfMemory { size: 1 << 30, align: 0x1000 })
        );
    }

    #[test]
    fn final_map_is_sorted_disjoint_and_carved() {
        let firmware = qemu_like();
        let mut layout = MemoryLayout::new(&firmware, 0x100000, 1 << 32);
        layout.claim(0x100000, 0x2345, RegionKind::BootloaderReclaimable).expect("room");
        layout.claim(0x400000, 0x1000, RegionKind::ExecutableAndModules).expect("room");
        let map = layout.final_map().expect("fits");
        let summary: std::vec::Vec<_> = map.iter().map(|r| (r.base, r.end(), r.kind)).collect();
        assert_eq!(
            summary,
            [
                (0, 0x9f000, RegionKind::Usable),
                (0x9fc00, 0xa0000, RegionKind::Reserved),
                (0xf0000, 0x100000, RegionKind::Reserved),
                (0x100000, 0x103000, RegionKind::BootloaderReclaimable),
                (0x103000, 0x400000, RegionKind::Usable),
                (0x400000, 0x401000, RegionKind::ExecutableAndModules),
                (0x401000, 0xffe0000, RegionKind::Usable),
            ]
        );
    }

    #[test]
    fn overlapping_firmware_entries_resolve_to_the_restrictive_kind() {
        let firmware = [fw(0, 0x10000, FirmwareKind::Usable), fw(0x4000, 0x1000, FirmwareKind::AcpiNvs)];
        let layout = MemoryLayout::new(&firmware, 0, 1 << 32);
        let map = layout.final_map().expect("fits");
        let kinds: std::vec::Vec<_> = map.iter().map(|r| (r.base, r.kind)).collect();
        assert_eq!(
            kinds,
            [(0, RegionKind::Usable), (0x4000, RegionKind::AcpiNvs), (0x5000, RegionKind::Usable)]
        );
    }

    proptest! {
        /// Whatever the firmware says and whatever is allocated: the final
        /// map is sorted and disjoint, usable entries are page-aligned, and
        /// no allocation is reported usable or overlaps another.
        #[test]
        fn final_map_invariants(
            raw in prop::collection::vec((0u64..64, 1u64..32, 0u32..6), 1..12),
            sizes in prop::collection::vec(1u64..0x40000, 0..8),
        ) {
            let firmware: std::vec::Vec<_> = raw
                .iter()
                .map(|&(base, len, kind)| FirmwareRegion {
                    base: base * 0x10000 + 0x123,
                    length: len * 0x8000,
                    kind: match kind { 0 | 1 => FirmwareKind::Usable, 2 => FirmwareKind::Reserved, 3 => FirmwareKind::AcpiReclaimable, 4 => FirmwareKind::AcpiNvs, _ => FirmwareKind::Bad },
                })
                .collect();
            let mut layout = MemoryLayout::new(&firmware, 0x1000, 1 << 32);
            let mut allocations = std::vec::Vec::new();
            for size in sizes {
                if let Ok(at) = layout.allocate(size, 0x1000, RegionKind::BootloaderReclaimable) {
                    allocations.push((at, size));
                }
            }
            for (i, &(a, sa)) in allocations.iter().enumerate() {
                for &(b, sb) in &allocations[i + 1..] {
                    prop_assert!(a + sa <= b || b + sb <= a, "allocations overlap");
                }
            }
            let map = layout.final_map().expect("fits");
            for pair in map.windows(2) {
                prop_assert!(pair[0].end() <= pair[1].base, "map not sorted/disjoint: {:?}", pair);
            }
            for region in &map {
                prop_assert!(region.length > 0);
                if region.kind == RegionKind::Usable {
                    prop_assert_eq!(region.base % PAGE, 0);
                    prop_assert_eq!(region.length % PAGE, 0);
                    for &(at, size) in &allocations {
                        prop_assert!(region.end() <= at || at + size <= region.base, "allocation reported usable");
                    }
                }
            }
            for &(at, size) in &allocations {
                // Every allocation lies in firmware-usable memory and nowhere reserved.
                prop_assert!(firmware.iter().any(|r| r.kind == FirmwareKind::Usable && r.base <= at && at + size <= r.base + r.length));
                prop_assert!(!firmware.iter().any(|r| r.kind != FirmwareKind::Usable && r.base < at + size && at < r.base + r.length));
            }
        }
    }
}
