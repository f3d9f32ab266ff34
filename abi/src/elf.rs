//! Checks a static x86-64 ELF executable and works out how to load it:
//! the kernel (by the loader) and the root task (by the kernel).
//!
//! No allocation and no `unsafe`: headers are read with `zerocopy` (an
//! allocation-free reader is needed because the kernel has no heap).
//! Everything a loader relies on is checked:
//! - the file is a static little-endian x86-64 executable;
//! - every loadable segment lies inside the file and inside the address range the caller allows;
//! - segments do not share a page;
//! - no segment is both writable and executable;
//! - the entry point lies in an executable segment.

use core::fmt;
use core::ops::Range;

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, KnownLayout};

/// The kernel's range: the top 2 GiB.
pub const KERNEL_RANGE: Range<u64> = 0xffff_ffff_8000_0000..u64::MAX;
/// Largest image accepted (virtual span of all segments).
pub const MAX_IMAGE_SIZE: u64 = 64 << 20;
/// Most loadable segments accepted.
pub const MAX_SEGMENTS: usize = 16;
const PAGE: u64 = 4096;

/// One loadable segment, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Segment {
    /// Virtual address of the first byte.
    pub virtual_address: u64,
    /// Bytes in memory (the tail beyond `file_size` is zero).
    pub memory_size: u64,
    /// Offset of the segment's bytes in the file.
    pub file_offset: u64,
    /// Bytes taken from the file.
    pub file_size: u64,
    /// Writes allowed.
    pub writable: bool,
    /// Instruction fetches allowed.
    pub executable: bool,
}

/// How to load a checked executable: where each segment goes and where to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadPlan {
    /// Entry point (virtual).
    pub entry: u64,
    /// Lowest page of the image (virtual).
    pub virtual_base: u64,
    /// One past the highest page of the image (virtual).
    pub virtual_end: u64,
    segments: [Segment; MAX_SEGMENTS],
    count: usize,
}

impl LoadPlan {
    /// Loadable segments, sorted by address.
    pub fn segments(&self) -> &[Segment] {
        &self.segments[..self.count]
    }

    /// Bytes of memory the image needs (whole pages).
    pub fn image_size(&self) -> u64 {
        self.virtual_end - self.virtual_base
    }

    /// The bytes of the page at `page` (page-aligned, inside the image)
    /// as loaded from `file`, the file this plan was made from: segment
    /// file bytes, zero elsewhere.
    pub fn page_bytes(&self, file: &[u8], page: u64) -> [u8; 4096] {
        let mut bytes = [0u8; 4096];
        for segment in self.segments() {
            let file_end = segment.virtual_address + segment.file_size;
            let (from, to) = (segment.virtual_address.max(page), file_end.min(page + 4096));
            if from >= to {
                continue;
            }
            let offset = (segment.file_offset + (from - segment.virtual_address)) as usize;
            if let Some(source) = file.get(offset..offset + (to - from) as usize) {
                bytes[(from - page) as usize..(to - page) as usize].copy_from_slice(source);
            }
        }
        bytes
    }

    /// How the page at `page` is mapped: read-execute for code, read-write
    /// for data, read-only for read-only data and gaps between segments.
    pub fn page_permissions(&self, page: u64) -> (crate::object::Rights, crate::object::VmAttributes) {
        use crate::object::{Rights, VmAttributes};
        match self.segment_at(page) {
            Some(s) if s.executable => (Rights::READ, VmAttributes::EXECUTABLE),
            Some(s) if s.writable => (Rights::READ | Rights::WRITE, VmAttributes::empty()),
            _ => (Rights::READ, VmAttributes::empty()),
        }
    }

    /// The segment the page at `page` belongs to (segments never share a
    /// page), which gives its permissions; `None` for a gap between them.
    pub fn segment_at(&self, page: u64) -> Option<&Segment> {
        self.segments()
            .iter()
            .find(|s| s.virtual_address / 4096 * 4096 <= page && page < s.virtual_address + s.memory_size)
    }
}

/// Why an ELF file was refused. The `Display` form is the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElfError {
    /// No ELF magic, or too short for an ELF header.
    NotElf,
    /// Not a 64-bit little-endian ELF.
    WrongClass,
    /// Built for another machine.
    WrongMachine {
        /// `e_machine` found.
        machine: u16,
    },
    /// Not a static executable (`ET_EXEC`).
    NotExecutable {
        /// `e_type` found.
        kind: u16,
    },
    /// The program header table lies outside the file.
    ProgramHeadersOutOfBounds {
        /// `e_phoff`.
        offset: u64,
        /// `e_phnum`.
        count: u16,
    },
    /// No `PT_LOAD` segment.
    NothingToLoad,
    /// More loadable segments than accepted.
    TooManySegments,
    /// A segment's file bytes lie outside the file.
    SegmentOutsideFile {
        /// Program header index.
        index: usize,
    },
    /// A segment has more file bytes than memory bytes.
    FileSizeExceedsMemorySize {
        /// Program header index.
        index: usize,
    },
    /// A segment lies outside the allowed address range, or wraps.
    OutsideRange {
        /// Program header index.
        index: usize,
        /// Its virtual address.
        address: u64,
    },
    /// A segment's address and file offset disagree modulo the page size.
    Misaligned {
        /// Program header index.
        index: usize,
    },
    /// Two segments share a page.
    Overlap {
        /// Program header index of the later segment.
        index: usize,
    },
    /// A segment is both writable and executable.
    WritableAndExecutable {
        /// Program header index.
        index: usize,
    },
    /// The entry point is not inside an executable segment.
    BadEntry {
        /// `e_entry`.
        entry: u64,
    },
    /// The image spans more than [`MAX_IMAGE_SIZE`].
    TooLarge {
        /// Span in bytes.
        size: u64,
    },
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotElf => write!(f, "not an ELF file"),
            Self::WrongClass => write!(f, "ELF is not 64-bit little-endian"),
            Self::WrongMachine { machine } => {
                write!(f, "ELF is for machine {machine}, not x86-64 (62)")
            }
            Self::NotExecutable { kind } => {
                write!(f, "ELF has type {kind}, expected a static executable (ET_EXEC = 2)")
            }
            Self::ProgramHeadersOutOfBounds { offset, count } => {
                write!(f, "ELF's {count} program headers at offset {offset:#x} run past the end of the file")
            }
            Self::NothingToLoad => write!(f, "ELF has no loadable segment"),
            Self::TooManySegments => {
                write!(f, "ELF has more than {MAX_SEGMENTS} loadable segments")
            }
            Self::SegmentOutsideFile { index } => {
                write!(f, "ELF segment {index} refers to bytes past the end of the file")
            }
            Self::FileSizeExceedsMemorySize { index } => {
                write!(f, "ELF segment {index} has a file size larger than its memory size")
            }
            Self::OutsideRange { index, address } => {
                write!(f, "ELF segment {index} at {address:#x} lies outside the address range allowed for it")
            }
            Self::Misaligned { index } => {
                write!(f, "ELF segment {index}: address and file offset differ modulo the page size")
            }
            Self::Overlap { index } => {
                write!(f, "ELF segment {index} shares a page with an earlier segment")
            }
            Self::WritableAndExecutable { index } => {
                write!(f, "ELF segment {index} is both writable and executable")
            }
            Self::BadEntry { entry } => {
                write!(f, "ELF entry point {entry:#x} is not inside an executable segment")
            }
            Self::TooLarge { size } => {
                write!(f, "image spans {size} bytes; at most {MAX_IMAGE_SIZE} are accepted")
            }
        }
    }
}

#[derive(FromBytes, KnownLayout, Immutable)]
#[repr(C)]
struct FileHeader {
    ident: [u8; 16],
    kind: U16,
    machine: U16,
    version: U32,
    entry: U64,
    program_headers: U64,
    section_headers: U64,
    flags: U32,
    header_size: U16,
    program_header_size: U16,
    program_header_count: U16,
    section_header_size: U16,
    section_header_count: U16,
    section_names: U16,
}

#[derive(FromBytes, KnownLayout, Immutable)]
#[repr(C)]
struct ProgramHeader {
    kind: U32,
    flags: U32,
    offset: U64,
    virtual_address: U64,
    physical_address: U64,
    file_size: U64,
    memory_size: U64,
    align: U64,
}

const PT_LOAD: u32 = 1;
const PF_X: u32 = 1;
const PF_W: u32 = 2;
const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;

/// Checks `file` as an executable whose segments must lie in `allowed`,
/// and returns how to load it.
pub fn plan(file: &[u8], allowed: Range<u64>) -> Result<LoadPlan, ElfError> {
    if file.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err(ElfError::NotElf);
    }
    let Ok((header, _)) = FileHeader::ref_from_prefix(file) else {
        return Err(ElfError::NotElf);
    };
    // Class 2 (64-bit), data 1 (little-endian), version 1.
    if header.ident[4] != 2 || header.ident[5] != 1 || header.ident[6] != 1 {
        return Err(ElfError::WrongClass);
    }
    if header.machine.get() != EM_X86_64 {
        return Err(ElfError::WrongMachine { machine: header.machine.get() });
    }
    if header.kind.get() != ET_EXEC {
        return Err(ElfError::NotExecutable { kind: header.kind.get() });
    }
    let out_of_bounds = ElfError::ProgramHeadersOutOfBounds {
        offset: header.program_headers.get(),
        count: header.program_header_count.get(),
    };
    if usize::from(header.program_header_size.get()) != core::mem::size_of::<ProgramHeader>() {
        return Err(out_of_bounds);
    }
    let table = usize::try_from(header.program_headers.get())
        .ok()
        .and_then(|offset| file.get(offset..))
        .ok_or(out_of_bounds)?;
    let count = usize::from(header.program_header_count.get());
    let Ok((headers, _)) = <[ProgramHeader]>::ref_from_prefix_with_elems(table, count) else {
        return Err(out_of_bounds);
    };

    let mut segments = [Segment::default(); MAX_SEGMENTS];
    let mut loaded = 0usize;
    for (index, ph) in headers.iter().enumerate().filter(|(_, ph)| ph.kind.get() == PT_LOAD) {
        let (address, memory_size) = (ph.virtual_address.get(), ph.memory_size.get());
        let (offset, file_size) = (ph.offset.get(), ph.file_size.get());
        if memory_size == 0 {
            continue;
        }
        if offset.checked_add(file_size).is_none_or(|end| end > file.len() as u64) {
            return Err(ElfError::SegmentOutsideFile { index });
        }
        if file_size > memory_size {
            return Err(ElfError::FileSizeExceedsMemorySize { index });
        }
        let end = address.checked_add(memory_size);
        if !allowed.contains(&address) || end.is_none_or(|end| end > allowed.end) {
            return Err(ElfError::OutsideRange { index, address });
        }
        if address % PAGE != offset % PAGE {
            return Err(ElfError::Misaligned { index });
        }
        let writable = ph.flags.get() & PF_W != 0;
        let executable = ph.flags.get() & PF_X != 0;
        if writable && executable {
            return Err(ElfError::WritableAndExecutable { index });
        }
        let segment = Segment {
            virtual_address: address,
            memory_size,
            file_offset: offset,
            file_size,
            writable,
            executable,
        };
        // Page granularity: two segments may not share a page, since the page
        // can carry only one set of permissions.
        let pages = |s: &Segment| (s.virtual_address / PAGE, (s.virtual_address + s.memory_size - 1) / PAGE);
        let (first, last) = pages(&segment);
        if segments[..loaded].iter().map(pages).any(|(f, l)| first <= l && f <= last) {
            return Err(ElfError::Overlap { index });
        }
        *segments.get_mut(loaded).ok_or(ElfError::TooManySegments)? = segment;
        loaded += 1;
    }
    segments[..loaded].sort_unstable_by_key(|s| s.virtual_address);
    let (Some(first), Some(last)) = (segments[..loaded].first(), segments[..loaded].last()) else {
        return Err(ElfError::NothingToLoad);
    };
    let virtual_base = first.virtual_address / PAGE * PAGE;
    let virtual_end = (last.virtual_address + last.memory_size).div_ceil(PAGE) * PAGE;
    if virtual_end - virtual_base > MAX_IMAGE_SIZE {
        return Err(ElfError::TooLarge { size: virtual_end - virtual_base });
    }
    let entry = header.entry.get();
    let in_text =
        |s: &Segment| s.executable && s.virtual_address <= entry && entry < s.virtual_address + s.memory_size;
    if !segments[..loaded].iter().any(in_text) {
        return Err(ElfError::BadEntry { entry });
    }
    Ok(LoadPlan { entry, virtual_base, virtual_end, segments, count: loaded })
}

/// Builds small ELF files for tests (here and in crates that load ELF files).
#[cfg(any(test, feature = "alloc"))]
pub mod testing {
    extern crate std;
    /// A program header: (type, flags, offset, vaddr, filesz, memsz).
    pub type Phdr = (u32, u32, u64, u64, u64, u64);

    /// An x86-64 ET_EXEC ELF with `phdrs`, padded to `len` bytes.
    pub fn elf(entry: u64, phdrs: &[Phdr], len: usize) -> std::vec::Vec<u8> {
        let mut out = std::vec![0u8; len.max(64 + 56 * phdrs.len())];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = 2; // 64-bit
        out[5] = 1; // little-endian
        out[6] = 1; // version
        out[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        out[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
        out[20..24].copy_from_slice(&1u32.to_le_bytes());
        out[24..32].copy_from_slice(&entry.to_le_bytes());
        out[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        out[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        out[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        out[56..58].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
        for (i, &(kind, flags, offset, vaddr, filesz, memsz)) in phdrs.iter().enumerate() {
            let at = 64 + 56 * i;
            out[at..at + 4].copy_from_slice(&kind.to_le_bytes());
            out[at + 4..at + 8].copy_from_slice(&flags.to_le_bytes());
            out[at + 8..at + 16].copy_from_slice(&offset.to_le_bytes());
            out[at + 16..at + 24].copy_from_slice(&vaddr.to_le_bytes());
            out[at + 24..at + 32].copy_from_slice(&vaddr.to_le_bytes()); // paddr
            out[at + 32..at + 40].copy_from_slice(&filesz.to_le_bytes());
            out[at + 40..at + 48].copy_from_slice(&memsz.to_le_bytes());
            out[at + 48..at + 56].copy_from_slice(&4096u64.to_le_bytes());
        }
        out
    }

    /// Text (R-X) at the kernel base and data+bss (RW-) on the next pages.
    pub fn good_kernel() -> std::vec::Vec<u8> {
        let base = super::KERNEL_RANGE.start;
        elf(
            base + 0x10,
            &[(1, 5, 0x1000, base, 0x100, 0x100), (1, 6, 0x2000, base + 0x1000, 0x80, 0x3000)],
            0x3000,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use proptest::prelude::*;

    const BASE: u64 = KERNEL_RANGE.start;

    fn plan(file: &[u8]) -> Result<LoadPlan, ElfError> {
        super::plan(file, KERNEL_RANGE)
    }

    #[test]
    fn a_well_formed_kernel_is_planned() {
        let plan = plan(&good_kernel()).expect("valid");
        assert_eq!(plan.entry, BASE + 0x10);
        assert_eq!(plan.virtual_base, BASE);
        assert_eq!(plan.virtual_end, BASE + 0x4000);
        assert_eq!(plan.image_size(), 0x4000);
        assert_eq!(plan.segments().len(), 2);
        assert!(plan.segments()[0].executable && !plan.segments()[0].writable);
        assert!(plan.segments()[1].writable && !plan.segments()[1].executable);
    }

    #[test]
    fn each_malformation_gets_its_own_error() {
        let cases: [(std::vec::Vec<u8>, ElfError); 9] = [
            (b"MZ\x90\x00".repeat(40), ElfError::NotElf),
            (
                {
                    let mut e = good_kernel();
                    e[4] = 1;
                    e
                },
                ElfError::WrongClass,
            ),
            (
                {
                    let mut e = good_kernel();
                    e[18] = 3;
                    e
                },
                ElfError::WrongMachine { machine: 3 },
            ),
            (
                {
                    let mut e = good_kernel();
                    e[16] = 3;
                    e
                },
                ElfError::NotExecutable { kind: 3 },
            ),
            (
                elf(BASE, &[(1, 5, 0x1000, BASE, 0x5000, 0x5000)], 0x2000),
                ElfError::SegmentOutsideFile { index: 0 },
            ),
            (
                elf(BASE, &[(1, 5, 0x1000, BASE, 0x200, 0x100)], 0x2000),
                ElfError::FileSizeExceedsMemorySize { index: 0 },
            ),
            (
                elf(0x1000, &[(1, 5, 0x1000, 0x40_0000, 0x100, 0x100)], 0x2000),
                ElfError::OutsideRange { index: 0, address: 0x40_0000 },
            ),
            (
                elf(BASE, &[(1, 7, 0x1000, BASE, 0x100, 0x100)], 0x2000),
                ElfError::WritableAndExecutable { index: 0 },
            ),
            (
                elf(BASE + 0x5000, &[(1, 5, 0x1000, BASE, 0x100, 0x100)], 0x2000),
                ElfError::BadEntry { entry: BASE + 0x5000 },
            ),
        ];
        for (file, expected) in cases {
            assert_eq!(plan(&file), Err(expected));
        }
        let overlapping = elf(
            BASE,
            &[(1, 5, 0x1000, BASE, 0x100, 0x100), (1, 6, 0x1800, BASE + 0x800, 0x10, 0x10)],
            0x2000,
        );
        assert_eq!(plan(&overlapping), Err(ElfError::Overlap { index: 1 }));
        let misaligned = elf(BASE, &[(1, 5, 0x1010, BASE, 0x100, 0x100)], 0x2000);
        assert_eq!(plan(&misaligned), Err(ElfError::Misaligned { index: 0 }));
        assert_eq!(plan(&elf(BASE, &[], 0x100)), Err(ElfError::NothingToLoad));
        let huge = elf(
            BASE,
            &[(1, 5, 0x1000, BASE, 0x10, 0x10), (1, 6, 0x2000, BASE + (128 << 20), 0x10, 0x10)],
            0x3000,
        );
        assert_eq!(plan(&huge), Err(ElfError::TooLarge { size: (128 << 20) + 0x1000 }));
    }

    #[test]
    fn every_truncation_is_refused() {
        let file = good_kernel();
        // Anything shorter than the last segment's file bytes must fail.
        for len in 0..0x2080 {
            assert!(plan(&file[..len]).is_err(), "truncated to {len} bytes accepted");
        }
    }

    #[test]
    fn program_header_table_past_the_end_is_refused() {
        let mut file = good_kernel();
        file[56..58].copy_from_slice(&0xffffu16.to_le_bytes());
        assert!(matches!(plan(&file), Err(ElfError::ProgramHeadersOutOfBounds { count: 0xffff, .. })));
        let mut file = good_kernel();
        file[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(plan(&file), Err(ElfError::ProgramHeadersOutOfBounds { .. })));
    }

    proptest! {
        #[test]
        fn corrupted_kernels_never_panic(flips in prop::collection::vec((0usize..0x3000, any::<u8>()), 1..16)) {
            let mut file = good_kernel();
            for (at, value) in flips {
                file[at] = value;
            }
            if let Ok(plan) = plan(&file) {
                // Whatever was accepted must satisfy the loader's assumptions.
                prop_assert!(plan.virtual_base >= KERNEL_RANGE.start);
                prop_assert!(plan.image_size() <= MAX_IMAGE_SIZE);
                for s in plan.segments() {
                    prop_assert!(s.file_offset + s.file_size <= file.len() as u64);
                    prop_assert!(s.file_size <= s.memory_size);
                    prop_assert!(!(s.writable && s.executable));
                }
            }
        }
    }
}
