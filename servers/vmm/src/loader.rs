//! Loading guests: boot sectors as a BIOS does, plain 64-bit ELF kernels
//! into long mode, and multiboot v1 kernels the way QEMU's `-kernel` does
//! (Multiboot Specification 0.6.96, §3.1–3.3): the header in the first 8 KiB, the
//! image placed by the header's address fields or, without them, by a
//! 32-bit ELF image's program headers; then the information structure
//! with the memory map, the command line and the boot loader's name, and
//! the machine state of §3.2 (32-bit protected mode, paging off).

use core::fmt;

use crate::memory::{GuestMemory, MemoryError};

/// The header's magic.
pub const HEADER_MAGIC: u32 = 0x1bad_b002;
/// What the kernel finds in EAX.
pub const BOOT_MAGIC: u32 = 0x2bad_b002;
/// Where the information structure goes (below 640 KiB, as QEMU puts it low).
pub const INFO_ADDRESS: u64 = 0x9000;
/// Bytes reserved for the structure, memory map, name and command line.
pub const INFO_SIZE: u64 = 0x1000;
/// The header must be in this many bytes from the start of the image.
const SEARCH: usize = 8192;
/// Header flags this loader honours: page-aligned modules (0), memory
/// information (1), video mode (2, which it may ignore), address fields (16).
const KNOWN_FLAGS: u32 = 0b111 | 1 << 16;

/// Why an image cannot be loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadError {
    /// No multiboot header in the first 8 KiB.
    NoHeader,
    /// The header's checksum does not make the sum zero.
    BadChecksum,
    /// The header asks for a feature (a flag in bits 0–15) this loader lacks.
    UnsupportedFlags(u32),
    /// The address fields are inconsistent with each other or the file.
    BadAddresses(&'static str),
    /// Not a 32-bit ELF, and no address fields.
    NotElf32,
    /// A 64-bit ELF without address fields (QEMU refuses these too).
    Elf64WithoutAddresses,
    /// The ELF headers are truncated or inconsistent.
    BadElf(&'static str),
    /// Part of the image would lie outside guest RAM or over the boot information.
    OutOfRange {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// The command line does not fit.
    CommandLineTooLong,
    /// More modules than the information structure has room for, or a name too long.
    TooManyModules,
}

/// Most modules passed to a multiboot kernel.
pub const MAX_MODULES: usize = 16;
/// Bytes for each module's name in the information structure, NUL included.
const MODULE_NAME: usize = 32;
/// Where things are in the information structure's page.
const MAP_AT: u64 = 0x80;
const NAME_AT: u64 = 0x180;
const MODULES_AT: u64 = 0x200;
const MODULE_NAMES_AT: u64 = 0x300;
const COMMAND_LINE_AT: u64 = 0x500;

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoHeader => write!(f, "no multiboot header (magic {HEADER_MAGIC:#x}) in the first 8 KiB"),
            Self::BadChecksum => write!(f, "the multiboot header's checksum is wrong"),
            Self::UnsupportedFlags(flags) => {
                write!(f, "the multiboot header requires features {flags:#x} this loader does not have")
            }
            Self::BadAddresses(why) => write!(f, "the multiboot header's address fields are invalid: {why}"),
            Self::NotElf32 => {
                write!(f, "not a 32-bit ELF image, and the multiboot header has no address fields")
            }
            Self::Elf64WithoutAddresses => write!(
                f,
                "a 64-bit ELF kernel must set the multiboot address fields (flag 16), as QEMU also requires"
            ),
            Self::BadElf(why) => write!(f, "invalid ELF image: {why}"),
            Self::OutOfRange { start, end } => write!(
                f,
                "the image needs guest-physical {start:#x}..{end:#x}, outside RAM or over the boot information"
            ),
            Self::CommandLineTooLong => {
                write!(f, "the command line is longer than {} bytes", INFO_SIZE - COMMAND_LINE_AT - 1)
            }
            Self::TooManyModules => {
                write!(f, "more than {MAX_MODULES} modules, or a module name over {} bytes", MODULE_NAME - 1)
            }
        }
    }
}

impl From<MemoryError> for LoadError {
    fn from(error: MemoryError) -> Self {
        match error {
            MemoryError::NotRam { physical } | MemoryError::NotMapped { linear: physical } => {
                Self::OutOfRange { start: physical, end: physical + 1 }
            }
        }
    }
}

/// A loaded kernel: where to start it and what to pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Boot {
    /// EIP.
    pub entry: u32,
    /// EBX: the information structure.
    pub info: u32,
    /// Bytes of the image placed in RAM.
    pub loaded: u64,
}

fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(offset..offset.checked_add(4)?)?.try_into().ok()?))
}

fn u16_at(bytes: &[u8], offset: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(offset..offset.checked_add(2)?)?.try_into().ok()?))
}

/// The header's offset and words (magic, flags, checksum, five address fields).
fn find_header(image: &[u8]) -> Result<(usize, [u32; 8]), LoadError> {
    let limit = image.len().min(SEARCH);
    let offset = (0..limit.saturating_sub(11))
        .step_by(4)
        .find(|&at| u32_at(image, at) == Some(HEADER_MAGIC))
        .ok_or(LoadError::NoHeader)?;
    let mut words = [0u32; 8];
    for (i, word) in words.iter_mut().enumerate() {
        *word = u32_at(image, offset + 4 * i).unwrap_or(0);
    }
    if words[0].wrapping_add(words[1]).wrapping_add(words[2]) != 0 {
        return Err(LoadError::BadChecksum);
    }
    Ok((offset, words))
}

/// Whether `image` has a valid multiboot header (checked before a guest's
/// memory is made, so that a malformed image costs nothing).
pub fn check_multiboot(image: &[u8]) -> Result<(), LoadError> {
    find_header(image).map(drop)
}

/// Checks that `start..end` is RAM and clear of the information structure.
fn check_range(memory: &GuestMemory<'_>, start: u64, end: u64) -> Result<(), LoadError> {
    let overlaps_info = start < INFO_ADDRESS + INFO_SIZE && INFO_ADDRESS < end;
    if end < start || end > memory.size() || overlaps_info {
        return Err(LoadError::OutOfRange { start, end });
    }
    Ok(())
}

/// Where a BIOS loads a boot sector, and starts it in real mode.
pub const BOOT_SECTOR_ADDRESS: u64 = 0x7c00;

/// Whether `image` is a boot sector: 512 bytes ending in 55h AAh.
pub fn is_boot_sector(image: &[u8]) -> bool {
    image.len() == 512 && image[510..] == [0x55, 0xaa]
}

/// Loads a boot sector at 7C00h, as a BIOS does. Returns the entry.
pub fn load_boot_sector(image: &[u8], memory: &mut GuestMemory<'_>) -> Result<u64, LoadError> {
    if !is_boot_sector(image) {
        return Err(LoadError::NoHeader);
    }
    memory.slice(BOOT_SECTOR_ADDRESS, 512)?.copy_from_slice(image);
    Ok(BOOT_SECTOR_ADDRESS)
}

/// Where the VMM builds the identity page tables of a plain 64-bit ELF
/// guest: a PML4, a PDPT and a page directory of 2 MiB pages (the first GiB).
pub const LONG_MODE_TABLES: u64 = 0x1000;

/// Whether `image` is a 64-bit ELF file without a multiboot header: a
/// plain ELF kernel, started in long mode.
pub fn is_plain_elf64(image: &[u8]) -> bool {
    image.get(..5) == Some(b"\x7fELF\x02") && find_header(image).is_err()
}

/// Loads a plain 64-bit ELF kernel at its segments' physical addresses and
/// builds identity page tables for its first GiB at [`LONG_MODE_TABLES`].
/// Returns the entry point.
pub fn load_plain_elf64(image: &[u8], memory: &mut GuestMemory<'_>) -> Result<u64, LoadError> {
    let tables_end = LONG_MODE_TABLES + 3 * 4096;
    let plan = strata_abi::elf::plan(image, tables_end..memory.size().min(1 << 30))
        .map_err(|_| LoadError::BadElf("not a loadable 64-bit executable inside guest RAM"))?;
    for segment in plan.segments() {
        let (start, file, size) = (segment.virtual_address, segment.file_size, segment.memory_size);
        let bytes = image
            .get(segment.file_offset as usize..(segment.file_offset + file) as usize)
            .ok_or(LoadError::BadElf("a segment extends past the end of the file"))?;
        check_range(memory, start, start + size)?;
        memory.slice(start, bytes.len())?.copy_from_slice(bytes);
        memory.slice(start + file, (size - file) as usize)?.fill(0);
    }
    let tables = memory.slice(LONG_MODE_TABLES, 3 * 4096)?;
    tables.fill(0);
    let mut put = |at: usize, value: u64| tables[at..at + 8].copy_from_slice(&value.to_le_bytes());
    put(0, (LONG_MODE_TABLES + 0x1000) | 3);
    put(0x1000, (LONG_MODE_TABLES + 0x2000) | 3);
    for n in 0..512u64 {
        put(0x2000 + 8 * n as usize, n << 21 | 0x83);
    }
    Ok(plan.entry)
}

/// Loads `image` into `memory` with `command_line` and `modules` (name and
/// bytes each), which go page-aligned after the image, in order.
pub fn load(
    image: &[u8],
    memory: &mut GuestMemory<'_>,
    command_line: &str,
    modules: &[(&str, &[u8])],
) -> Result<Boot, LoadError> {
    let (offset, header) = find_header(image)?;
    let flags = header[1];
    if flags & 0xffff & !KNOWN_FLAGS != 0 {
        return Err(LoadError::UnsupportedFlags(flags & 0xffff & !KNOWN_FLAGS));
    }
    let (entry, loaded, image_end) = if flags & 1 << 16 != 0 {
        load_by_addresses(image, memory, offset, header)?
    } else {
        load_elf32(image, memory)?
    };
    let info = write_info(memory, command_line, modules, image_end)?;
    Ok(Boot { entry, info, loaded })
}

fn load_by_addresses(
    image: &[u8],
    memory: &mut GuestMemory<'_>,
    offset: usize,
    header: [u32; 8],
) -> Result<(u32, u64, u64), LoadError> {
    let [_, _, _, header_address, load_address, load_end, bss_end, entry] = header.map(u64::from);
    if load_address > header_address {
        return Err(LoadError::BadAddresses("load_addr is above header_addr"));
    }
    let file_start = (offset as u64)
        .checked_sub(header_address - load_address)
        .ok_or(LoadError::BadAddresses("the header lies before load_addr in the file"))?;
    let length =
        if load_end == 0 { image.len() as u64 - file_start } else { load_end.saturating_sub(load_address) };
    if load_end != 0 && load_end < load_address {
        return Err(LoadError::BadAddresses("load_end_addr is below load_addr"));
    }
    if file_start + length > image.len() as u64 {
        return Err(LoadError::BadAddresses("load_end_addr is past the end of the file"));
    }
    let end = load_address + length;
    let bss_end = if bss_end == 0 { end } else { bss_end };
    if bss_end < end {
        return Err(LoadError::BadAddresses("bss_end_addr is below load_end_addr"));
    }
    if !(load_address..bss_end).contains(&entry) {
        return Err(LoadError::BadAddresses("entry_addr is outside the loaded image"));
    }
    check_range(memory, load_address, bss_end)?;
    let bytes = &image[file_start as usize..(file_start + length) as usize];
    memory.slice(load_address, bytes.len())?.copy_from_slice(bytes);
    memory.slice(end, (bss_end - end) as usize)?.fill(0);
    Ok((entry as u32, bss_end - load_address, bss_end))
}

fn load_elf32(image: &[u8], memory: &mut GuestMemory<'_>) -> Result<(u32, u64, u64), LoadError> {
    if image.get(..4) != Some(b"\x7fELF") {
        return Err(LoadError::NotElf32);
    }
    match image.get(4) {
        Some(1) => {}
        Some(2) => return Err(LoadError::Elf64WithoutAddresses),
        _ => return Err(LoadError::NotElf32),
    }
    let truncated = LoadError::BadElf("truncated header");
    if image.get(5) != Some(&1) || u16_at(image, 18) != Some(3) {
        return Err(LoadError::BadElf("not little-endian i386"));
    }
    let entry = u32_at(image, 24).ok_or(truncated)?;
    let phoff = u32_at(image, 28).ok_or(truncated)? as usize;
    let phentsize = usize::from(u16_at(image, 42).ok_or(truncated)?);
    let phnum = usize::from(u16_at(image, 44).ok_or(truncated)?);
    if phentsize < 32 {
        return Err(LoadError::BadElf("program headers smaller than 32 bytes"));
    }
    let (mut loaded, mut image_end) = (0, 0);
    for n in 0..phnum {
        let at = phoff + n * phentsize;
        let field = |i: usize| {
            u32_at(image, at + 4 * i).map(u64::from).ok_or(LoadError::BadElf("truncated program header"))
        };
        // PT_LOAD; segments are placed at their physical address, as QEMU does.
        if field(0)? != 1 {
            continue;
        }
        let (file_offset, physical, file_size, memory_size) = (field(1)?, field(3)?, field(4)?, field(5)?);
        if file_size > memory_size {
            return Err(LoadError::BadElf("a segment's file size exceeds its memory size"));
        }
        if file_offset + file_size > image.len() as u64 {
            return Err(LoadError::BadElf("a segment extends past the end of the file"));
        }
        check_range(memory, physical, physical + memory_size)?;
        let bytes = &image[file_offset as usize..(file_offset + file_size) as usize];
        memory.slice(physical, bytes.len())?.copy_from_slice(bytes);
        memory.slice(physical + file_size, (memory_size - file_size) as usize)?.fill(0);
        loaded += memory_size;
        image_end = image_end.max(physical + memory_size);
    }
    if loaded == 0 {
        return Err(LoadError::BadElf("no loadable segment"));
    }
    Ok((entry, loaded, image_end))
}

/// The information structure: memory sizes and map, command line, loader
/// name, no modules. Returns its address.
fn write_info(
    memory: &mut GuestMemory<'_>,
    command_line: &str,
    modules: &[(&str, &[u8])],
    image_end: u64,
) -> Result<u32, LoadError> {
    const MAP: u64 = INFO_ADDRESS + MAP_AT;
    const NAME: u64 = INFO_ADDRESS + NAME_AT;
    const COMMAND_LINE: u64 = INFO_ADDRESS + COMMAND_LINE_AT;
    let name = b"strata-vmm\0";
    if command_line.len() as u64 + 1 > INFO_SIZE - COMMAND_LINE_AT {
        return Err(LoadError::CommandLineTooLong);
    }
    if modules.len() > MAX_MODULES || modules.iter().any(|(name, _)| name.len() >= MODULE_NAME) {
        return Err(LoadError::TooManyModules);
    }
    // Modules from the first page after the image.
    let mut placed = [(0u64, 0u64); MAX_MODULES];
    let mut next = image_end.next_multiple_of(4096);
    for (i, (_, bytes)) in modules.iter().enumerate() {
        let end = next + bytes.len() as u64;
        check_range(memory, next, end)?;
        memory.slice(next, bytes.len())?.copy_from_slice(bytes);
        placed[i] = (next, end);
        next = end.next_multiple_of(4096);
    }
    let ram = memory.size();
    // The PC layout: conventional memory, the EBDA and BIOS area, then RAM from 1 MiB.
    let map: [(u64, u64, u32); 4] = [
        (0, 0x9_fc00, 1),
        (0x9_fc00, 0x400, 2),
        (0xf_0000, 0x1_0000, 2),
        (0x10_0000, ram.saturating_sub(0x10_0000), 1),
    ];
    let info = memory.slice(INFO_ADDRESS, INFO_SIZE as usize)?;
    info.fill(0);
    let mut put = |offset: u64, value: u32| {
        let at = (offset - INFO_ADDRESS) as usize;
        info[at..at + 4].copy_from_slice(&value.to_le_bytes());
    };
    // Flags: memory (0), command line (2), modules (3), memory map (6), loader name (9).
    put(INFO_ADDRESS, 1 | 1 << 2 | 1 << 3 | 1 << 6 | 1 << 9);
    put(INFO_ADDRESS + 4, 639);
    put(INFO_ADDRESS + 8, (ram.saturating_sub(0x10_0000) / 1024) as u32);
    put(INFO_ADDRESS + 16, COMMAND_LINE as u32);
    put(INFO_ADDRESS + 20, modules.len() as u32);
    put(INFO_ADDRESS + 24, (INFO_ADDRESS + MODULES_AT) as u32);
    for (i, &(start, end)) in placed[..modules.len()].iter().enumerate() {
        let entry = INFO_ADDRESS + MODULES_AT + 16 * i as u64;
        put(entry, start as u32);
        put(entry + 4, end as u32);
        put(entry + 8, (INFO_ADDRESS + MODULE_NAMES_AT + (MODULE_NAME * i) as u64) as u32);
    }
    put(INFO_ADDRESS + 44, (24 * map.len()) as u32);
    put(INFO_ADDRESS + 48, MAP as u32);
    put(INFO_ADDRESS + 64, NAME as u32);
    for (i, (base, length, kind)) in map.iter().enumerate() {
        let at = MAP + 24 * i as u64;
        put(at, 20);
        put(at + 4, *base as u32);
        put(at + 8, (base >> 32) as u32);
        put(at + 12, *length as u32);
        put(at + 16, (length >> 32) as u32);
        put(at + 20, *kind);
    }
    let name_at = (NAME - INFO_ADDRESS) as usize;
    info[name_at..name_at + name.len()].copy_from_slice(name);
    for (i, (module, _)) in modules.iter().enumerate() {
        let at = MODULE_NAMES_AT as usize + MODULE_NAME * i;
        info[at..at + module.len()].copy_from_slice(module.as_bytes());
    }
    let line_at = (COMMAND_LINE - INFO_ADDRESS) as usize;
    info[line_at..line_at + command_line.len()].copy_from_slice(command_line.as_bytes());
    Ok(INFO_ADDRESS as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::Paging;

    /// An image with a header at `offset` whose address fields load it at 1 MiB.
    fn kludge(offset: usize, length: usize, bss: u32, entry: u32) -> Vec<u8> {
        let mut image = vec![0x90u8; length];
        let flags = 1u32 << 16 | 2;
        let base = 0x10_0000u32;
        let words = [
            HEADER_MAGIC,
            flags,
            0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(flags),
            base + offset as u32,
            base,
            base + length as u32,
            base + length as u32 + bss,
            entry,
        ];
        for (i, word) in words.iter().enumerate() {
            image[offset + 4 * i..offset + 4 * i + 4].copy_from_slice(&word.to_le_bytes());
        }
        image
    }

    #[test]
    fn address_fields_place_the_image_and_clear_its_bss() {
        let image = kludge(0x40, 0x3000, 0x2000, 0x10_0100);
        let mut ram = vec![0xeeu8; 4 << 20];
        let mut memory = GuestMemory::new(&mut ram);
        let boot = load(&image, &mut memory, "console=ttyS0", &[("initrd", b"module bytes")]).expect("loads");
        assert_eq!(boot, Boot { entry: 0x10_0100, info: INFO_ADDRESS as u32, loaded: 0x5000 });
        assert_eq!(ram[0x10_0000], 0x90);
        assert_eq!(&ram[0x10_3000..0x10_5000], &[0u8; 0x2000][..]);
        assert_eq!(ram[0x10_500c], 0xee, "nothing past bss_end and the module is touched");
        let info = INFO_ADDRESS as usize;
        let word = |at: usize| u32::from_le_bytes([ram[at], ram[at + 1], ram[at + 2], ram[at + 3]]);
        let flags = word(info);
        assert_eq!(flags & (1 | 1 << 2 | 1 << 6), 1 | 1 << 2 | 1 << 6);
        assert_eq!(word(info + 8), 3 * 1024);
        // One module, page-aligned after the bss, with its name.
        assert_eq!(word(info + 20), 1);
        let module = word(info + 24) as usize;
        let (start, end, name) =
            (word(module) as usize, word(module + 4) as usize, word(module + 8) as usize);
        assert_eq!((start, end), (0x10_5000, 0x10_5000 + 12));
        assert_eq!(&ram[start..end], b"module bytes");
        assert_eq!(&ram[name..name + 7], b"initrd\0");
        let line = word(info + 16) as usize;
        assert_eq!(&ram[line..line + 14], b"console=ttyS0\0");
    }

    #[test]
    fn malformed_images_are_refused_with_the_reason() {
        let mut ram = vec![0u8; 4 << 20];
        let mut memory = GuestMemory::new(&mut ram);
        assert_eq!(load(&[0; 100], &mut memory, "", &[]), Err(LoadError::NoHeader));
        assert_eq!(check_multiboot(&[0; 100]), Err(LoadError::NoHeader));
        let mut bad = kludge(0, 0x1000, 0, 0x10_0000);
        bad[8] ^= 1;
        assert_eq!(load(&bad, &mut memory, "", &[]), Err(LoadError::BadChecksum));
        let outside = kludge(0, 0x1000, 0, 0x20_0000);
        assert!(matches!(load(&outside, &mut memory, "", &[]), Err(LoadError::BadAddresses(_))));
        let huge = kludge(0, 0x1000, 8 << 20, 0x10_0000);
        assert!(matches!(load(&huge, &mut memory, "", &[]), Err(LoadError::OutOfRange { .. })));
        let mut elf64 = vec![0u8; 0x100];
        elf64[..5].copy_from_slice(b"\x7fELF\x02");
        let flags = 2u32;
        for (i, word) in
            [HEADER_MAGIC, flags, 0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(flags)].iter().enumerate()
        {
            elf64[0x40 + 4 * i..0x44 + 4 * i].copy_from_slice(&word.to_le_bytes());
        }
        assert_eq!(load(&elf64, &mut memory, "", &[]), Err(LoadError::Elf64WithoutAddresses));
        let mut video = kludge(0, 0x1000, 0, 0x10_0000);
        let flags = 1u32 << 16 | 1 << 5;
        video[4..8].copy_from_slice(&flags.to_le_bytes());
        video[8..12].copy_from_slice(&0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(flags).to_le_bytes());
        assert_eq!(load(&video, &mut memory, "", &[]), Err(LoadError::UnsupportedFlags(1 << 5)));
        let image = kludge(0, 0x1000, 0, 0x10_0000);
        let long = "x".repeat(4000);
        assert_eq!(load(&image, &mut memory, &long, &[]), Err(LoadError::CommandLineTooLong));
        let seventeen = [("m", &b"x"[..]); 17];
        assert_eq!(load(&image, &mut memory, "", &seventeen), Err(LoadError::TooManyModules));
        let big = vec![0u8; 4 << 20];
        assert!(matches!(load(&image, &mut memory, "", &[("big", &big)]), Err(LoadError::OutOfRange { .. })));
    }

    #[test]
    fn a_plain_elf64_is_loaded_with_identity_page_tables() {
        use strata_abi::elf::testing::elf;
        // One segment at 2 MiB: 0x40 bytes from the file, 0x1000 in memory.
        let mut image = elf(0x20_0010, &[(1, 5, 0x1000, 0x20_0000, 0x40, 0x1000)], 0x2000);
        image[0x1000..0x1040].fill(0xcc);
        assert!(is_plain_elf64(&image));
        let mut ram = vec![0xeeu8; 4 << 20];
        let mut memory = GuestMemory::new(&mut ram);
        assert_eq!(load_plain_elf64(&image, &mut memory), Ok(0x20_0010));
        assert_eq!(ram[0x20_0000], 0xcc);
        assert_eq!(ram[0x20_0040], 0, "the rest of the segment is zeroed");
        let word = |at: usize| u64::from_le_bytes(ram[at..at + 8].try_into().expect("8 bytes"));
        let tables = LONG_MODE_TABLES as usize;
        assert_eq!(word(tables), (LONG_MODE_TABLES + 0x1000) | 3);
        assert_eq!(word(tables + 0x2000 + 8), 1 << 21 | 0x83, "2 MiB identity pages");
        // Through those tables, the entry translates to itself.
        let mut memory = GuestMemory::new(&mut ram);
        let paging = Paging { cr0: 0x8000_0011, cr3: LONG_MODE_TABLES, cr4: 0x20, efer: 0x500 };
        assert_eq!(memory.translate(paging, 0x20_0010), Ok(0x20_0010));
        // A segment over the page tables, or past RAM, is refused.
        let low = elf(0x1000, &[(1, 5, 0x1000, 0x1000, 0x40, 0x40)], 0x2000);
        assert!(load_plain_elf64(&low, &mut GuestMemory::new(&mut ram)).is_err());
        let high = elf(0x80_0000, &[(1, 5, 0x1000, 0x80_0000, 0x40, 0x40)], 0x2000);
        assert!(load_plain_elf64(&high, &mut GuestMemory::new(&mut ram)).is_err());
    }

    #[test]
    fn a_boot_sector_goes_to_7c00() {
        let mut sector = vec![0xf4u8; 512];
        sector[510..].copy_from_slice(&[0x55, 0xaa]);
        let mut ram = vec![0u8; 1 << 20];
        let mut memory = GuestMemory::new(&mut ram);
        assert_eq!(load_boot_sector(&sector, &mut memory), Ok(0x7c00));
        assert_eq!(ram[0x7c00], 0xf4);
        assert_eq!(ram[0x7dff], 0xaa);
        assert!(!is_boot_sector(&sector[..511]), "too short");
        sector[511] = 0;
        assert!(!is_boot_sector(&sector), "no signature");
    }

    #[test]
    fn any_bytes_are_refused_or_loaded_inside_ram() {
        // A cheap fuzz: arbitrary headers never panic and never write outside RAM.
        let mut seed = 0x1234_5678u64;
        for _ in 0..2000 {
            let mut image = kludge(0x20, 0x400, 0, 0x10_0000);
            for _ in 0..4 {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let at = 0x20 + (seed >> 33) as usize % 32;
                image[at] = (seed >> 17) as u8;
            }
            let mut ram = vec![0u8; 2 << 20];
            let mut memory = GuestMemory::new(&mut ram);
            if let Ok(boot) = load(&image, &mut memory, "", &[]) {
                assert!(u64::from(boot.entry) < 2 << 20);
            }
        }
    }
}

/// The seed corpus of the `guest_image` fuzz target (`tests/fuzz`) is
/// valid images, and its regressions load or are refused without panicking.
#[cfg(test)]
mod fuzz_seeds {
    use super::*;

    fn files(kind: &str) -> Vec<(std::path::PathBuf, Vec<u8>)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fuzz")
            .join(kind)
            .join("guest_image");
        let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
        entries.flatten().map(|e| (e.path(), std::fs::read(e.path()).expect("readable"))).collect()
    }

    #[test]
    fn the_seeds_load_and_the_regressions_do_not_panic() {
        let seeds = files("corpus");
        assert!(seeds.len() >= 3, "tests/fuzz/corpus/guest_image has {} seeds", seeds.len());
        for (path, image) in seeds.into_iter().chain(files("regressions")) {
            let mut ram = vec![0u8; 2 << 20];
            let mut memory = GuestMemory::new(&mut ram);
            let is_seed = path.components().any(|c| c.as_os_str() == "corpus");
            let loaded = if is_boot_sector(&image) {
                load_boot_sector(&image, &mut memory).map(drop)
            } else {
                load(&image, &mut memory, "seed", &[]).map(drop)
            };
            assert!(!is_seed || loaded.is_ok(), "{}: {loaded:?}", path.display());
        }
    }
}
