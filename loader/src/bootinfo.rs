//! What the firmware or bootloader tells the loader: memory map, command
//! line, the boot archive module and the ACPI RSDP.
//!
//! Two entry protocols are understood:
//! - PVH (Xen `hvm_start_info`, used by QEMU `-kernel`): magic 0x336ec578 in
//!   the structure; version 1 or later carries the memory map.
//! - Multiboot2 (GRUB `multiboot2`): EAX = 0x36d76289 and a tag list
//!   (Multiboot2 specification §3.6).
//!
//! Both are untrusted input: every pointer is checked through
//! [`PhysicalMemory`], every length against its container.

use core::fmt;

use heapless::Vec;
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, KnownLayout};

use crate::physmem::PhysicalMemory;

/// Magic the PVH entry stub passes (it is also the first word of `hvm_start_info`).
pub const PVH_MAGIC: u32 = 0x336e_c578;
/// Magic a multiboot2 loader leaves in EAX.
pub const MULTIBOOT2_MAGIC: u32 = 0x36d7_6289;
/// Most firmware memory-map entries kept.
pub const MAX_FIRMWARE_REGIONS: usize = 128;
/// Longest command line accepted.
pub const MAX_CMDLINE: usize = 4096;

/// How the loader was entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// PVH, e.g. QEMU `-kernel`.
    Pvh,
    /// Multiboot2, e.g. GRUB.
    Multiboot2,
}

/// Firmware memory types (E820 / multiboot2 numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirmwareKind {
    /// Type 1: RAM free for use.
    Usable,
    /// Type 3: ACPI tables, reclaimable after they are read.
    AcpiReclaimable,
    /// Type 4: ACPI non-volatile storage.
    AcpiNvs,
    /// Type 5: defective RAM.
    Bad,
    /// Type 2 and anything unknown.
    Reserved,
}

impl FirmwareKind {
    fn from_e820(value: u32) -> Self {
        match value {
            1 => Self::Usable,
            3 => Self::AcpiReclaimable,
            4 => Self::AcpiNvs,
            5 => Self::Bad,
            _ => Self::Reserved,
        }
    }
}

/// One firmware memory-map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirmwareRegion {
    /// First byte.
    pub base: u64,
    /// Length in bytes.
    pub length: u64,
    /// What it is.
    pub kind: FirmwareKind,
}

/// Where the ACPI RSDP is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RsdpSource {
    /// At this physical address (PVH).
    Physical(u64),
    /// Only a copy was passed (multiboot2 tags 14/15); the loader must place it.
    Copy(Vec<u8, MAX_RSDP>),
}

/// Largest RSDP copy kept (ACPI 2.0+ RSDP is 36 bytes).
pub const MAX_RSDP: usize = 64;

/// Everything the loader needs from the boot protocol.
#[derive(Debug)]
pub struct BootInfo {
    /// How the loader was entered.
    pub protocol: Protocol,
    /// Firmware memory map, as given.
    pub memory: Vec<FirmwareRegion, MAX_FIRMWARE_REGIONS>,
    /// Kernel command line without its terminating NUL.
    pub cmdline: Vec<u8, MAX_CMDLINE>,
    /// The boot archive (first module): physical address and length.
    pub archive: Option<(u64, u64)>,
    /// The RSDP, if the firmware gave one.
    pub rsdp: Option<RsdpSource>,
    /// Bootloader-owned structures the loader reads while it runs (info
    /// block, module list, command line, memory map): must not be allocated over.
    pub structures: Vec<(u64, u64), 8>,
}

/// Why the boot information was refused. The `Display` form is the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootInfoError {
    /// Entered with a register magic of neither protocol.
    UnknownProtocol {
        /// The value found.
        magic: u32,
    },
    /// A structure lies outside addressable memory or past its container.
    OutOfBounds {
        /// What was being read.
        what: &'static str,
        /// Its address.
        address: u64,
        /// Its length.
        len: u64,
    },
    /// The PVH structure's own magic is wrong.
    BadPvhMagic {
        /// The value found.
        found: u32,
    },
    /// PVH version 0 has no memory map.
    PvhWithoutMemoryMap,
    /// A multiboot2 tag is malformed.
    BadTag {
        /// Tag type.
        tag: u32,
        /// Offset in the information block.
        offset: u32,
    },
    /// The multiboot2 information block has no end tag.
    MissingEndTag,
    /// No memory map was given at all.
    NoMemoryMap,
    /// More memory-map entries than the loader keeps.
    TooManyRegions,
    /// A string is not NUL-terminated within its limit.
    UnterminatedString {
        /// Which string.
        what: &'static str,
    },
}

impl fmt::Display for BootInfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownProtocol { magic } => write!(
                f,
                "entered with magic {magic:#010x}: neither PVH ({PVH_MAGIC:#x}) nor multiboot2 ({MULTIBOOT2_MAGIC:#x})"
            ),
            Self::OutOfBounds { what, address, len } => write!(
                f,
                "boot information: {what} ({len} bytes at {address:#x}) is outside addressable memory"
            ),
            Self::BadPvhMagic { found } => {
                write!(f, "PVH start info has magic {found:#010x}, expected {PVH_MAGIC:#010x}")
            }
            Self::PvhWithoutMemoryMap => {
                write!(f, "PVH start info is version 0 and carries no memory map")
            }
            Self::BadTag { tag, offset } => {
                write!(f, "multiboot2 tag type {tag} at offset {offset} is malformed")
            }
            Self::MissingEndTag => write!(f, "multiboot2 information has no end tag"),
            Self::NoMemoryMap => write!(f, "the bootloader passed no memory map"),
            Self::TooManyRegions => write!(f, "the memory map has more than {MAX_FIRMWARE_REGIONS} entries"),
            Self::UnterminatedString { what } => {
                write!(f, "boot information: {what} is not NUL-terminated within {MAX_CMDLINE} bytes")
            }
        }
    }
}

/// Reads the boot information the entry stub found in EAX (`magic`) and EBX
/// (`info`).
pub fn parse(magic: u32, info: u64, memory: &impl PhysicalMemory) -> Result<BootInfo, BootInfoError> {
    match magic {
        PVH_MAGIC => parse_pvh(info, memory),
        MULTIBOOT2_MAGIC => parse_multiboot2(info, memory),
        magic => Err(BootInfoError::UnknownProtocol { magic }),
    }
}

fn read<'m>(
    memory: &'m impl PhysicalMemory,
    what: &'static str,
    address: u64,
    len: u64,
) -> Result<&'m [u8], BootInfoError> {
    memory.bytes(address, len).ok_or(BootInfoError::OutOfBounds { what, address, len })
}

/// Reads a NUL-terminated string at `address`, returning it without the NUL
/// and the number of bytes it occupies including the NUL.
fn read_c_string<'m>(
    memory: &'m impl PhysicalMemory,
    what: &'static str,
    address: u64,
) -> Result<(&'m [u8], u64), BootInfoError> {
    // Read byte-wise up to the limit so that a string near the end of
    // addressable memory is still found.
    for len in 0..MAX_CMDLINE as u64 {
        let byte = read(memory, what, address + len, 1)?;
        if byte[0] == 0 {
            return Ok((read(memory, what, address, len)?, len + 1));
        }
    }
    Err(BootInfoError::UnterminatedString { what })
}

#[derive(FromBytes, KnownLayout, Immutable)]
#[repr(C)]
struct PvhStartInfo {
    magic: U32,
    version: U32,
    flags: U32,
    module_count: U32,
    modlist: U64,
    cmdline: U64,
    rsdp: U64,
    memmap: U64,
    memmap_entries: U32,
    reserved: U32,
}

#[derive(FromBytes, KnownLayout, Immutable)]
#[repr(C)]
struct PvhModule {
    address: U64,
    size: U64,
    cmdline: U64,
    reserved: U64,
}

#[derive(FromBytes, KnownLayout, Immutable)]
#[repr(C)]
struct E820Entry {
    base: U64,
    length: U64,
    kind: U32,
    reserved: U32,
}

fn parse_pvh(info: u64, memory: &impl PhysicalMemory) -> Result<BootInfo, BootInfoError> {
    let head = read(memory, "PVH start info", info, 8)?;
    let found = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    if found != PVH_MAGIC {
        return Err(BootInfoError::BadPvhMagic { found });
    }
    let version = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if version == 0 {
        return Err(BootInfoError::PvhWithoutMemoryMap);
    }
    let len = core::mem::size_of::<PvhStartInfo>() as u64;
    let raw = read(memory, "PVH start info", info, len)?;
    let start = PvhStartInfo::ref_from_bytes(raw).map_err(|_| BootInfoError::OutOfBounds {
        what: "PVH start info",
        address: info,
        len,
    })?;
    let mut structures = Vec::new();
    let _ = structures.push((info, len));

    let entries = u64::from(start.memmap_entries.get());
    let entry_len = core::mem::size_of::<E820Entry>() as u64;
    let map_bytes = read(memory, "PVH memory map", start.memmap.get(), entries * entry_len)?;
    let _ = structures.push((start.memmap.get(), entries * entry_len));
    let mut regions = Vec::new();
    for chunk in map_bytes.chunks_exact(entry_len as usize) {
        let Ok(entry) = E820Entry::ref_from_bytes(chunk) else {
            continue;
        };
        push_region(&mut regions, entry.base.get(), entry.length.get(), entry.kind.get())?;
    }
    if regions.is_empty() {
        return Err(BootInfoError::NoMemoryMap);
    }

    let cmdline = match start.cmdline.get() {
        0 => Vec::new(),
        address => {
            let (text, len) = read_c_string(memory, "PVH command line", address)?;
            let _ = structures.push((address, len));
            owned(text, "PVH command line")?
        }
    };

    let archive = if start.module_count.get() > 0 {
        let module_len = core::mem::size_of::<PvhModule>() as u64;
        let raw = read(memory, "PVH module list", start.modlist.get(), module_len)?;
        let _ = structures.push((start.modlist.get(), module_len));
        PvhModule::ref_from_bytes(raw).ok().map(|m| (m.address.get(), m.size.get()))
    } else {
        None
    };

    let rsdp = match start.rsdp.get() {
        0 => None,
        address => Some(RsdpSource::Physical(address)),
    };
    Ok(BootInfo { protocol: Protocol::Pvh, memory: regions, cmdline, archive, rsdp, structures })
}

fn push_region(
    regions: &mut Vec<FirmwareRegion, MAX_FIRMWARE_REGIONS>,
    base: u64,
    length: u64,
    kind: u32,
) -> Result<(), BootInfoError> {
    if length == 0 || base.checked_add(length).is_none() {
        return Ok(()); // Empty or wrapping entries describe nothing usable.
    }
    regions
        .push(FirmwareRegion { base, length, kind: FirmwareKind::from_e820(kind) })
        .map_err(|_| BootInfoError::TooManyRegions)
}

mod tag {
    pub const END: u32 = 0;
    pub const CMDLINE: u32 = 1;
    pub const MODULE: u32 = 3;
    pub const MMAP: u32 = 6;
    pub const ACPI_OLD: u32 = 14;
    pub const ACPI_NEW: u32 = 15;
}

fn parse_multiboot2(info: u64, memory: &impl PhysicalMemory) -> Result<BootInfo, BootInfoError> {
    let head = read(memory, "multiboot2 information", info, 8)?;
    let total = u64::from(u32::from_le_bytes([head[0], head[1], head[2], head[3]]));
    let block = read(memory, "multiboot2 information", info, total)?;
    let mut structures = Vec::new();
    let _ = structures.push((info, total));

    let mut regions = Vec::new();
    let mut cmdline = Vec::new();
    let mut archive = None;
    let mut rsdp = None;
    let mut offset = 8usize;
    loop {
        let bad = |tag| BootInfoError::BadTag { tag, offset: offset as u32 };
        let Some(header) = block.get(offset..offset + 8) else {
            return Err(BootInfoError::MissingEndTag);
        };
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let size = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        if size < 8 {
            return Err(bad(kind));
        }
        let body = block.get(offset + 8..offset + size).ok_or(bad(kind))?;
        match kind {
            tag::END => break,
            tag::CMDLINE => {
                cmdline = owned(nul_terminated(body).ok_or(bad(kind))?, "multiboot2 command line")?;
            }
            tag::MODULE if archive.is_none() => {
                let start = u64::from(le32(body, 0).ok_or(bad(kind))?);
                let end = u64::from(le32(body, 4).ok_or(bad(kind))?);
                if end < start {
                    return Err(bad(kind));
                }
                archive = Some((start, end - start));
            }
            tag::MMAP => {
                let entry_size = le32(body, 0).ok_or(bad(kind))? as usize;
                if entry_size < 24 {
                    return Err(bad(kind));
                }
                for entry in body.get(8..).unwrap_or(&[]).chunks_exact(entry_size) {
                    let Ok((e820, _)) = E820Entry::ref_from_prefix(entry) else {
                        return Err(bad(kind));
                    };
                    push_region(&mut regions, e820.base.get(), e820.length.get(), e820.kind.get())?;
                }
            }
            // The newer (ACPI 2.0+) RSDP wins over the 1.0 one.
            tag::ACPI_OLD if rsdp.is_none() => {
                rsdp = Some(RsdpSource::Copy(Vec::from_slice(body).map_err(|_| bad(kind))?));
            }
            tag::ACPI_NEW => {
                rsdp = Some(RsdpSource::Copy(Vec::from_slice(body).map_err(|_| bad(kind))?));
            }
            _ => {}
        }
        offset += size.div_ceil(8) * 8;
    }
    if regions.is_empty() {
        return Err(BootInfoError::NoMemoryMap);
    }
    Ok(BootInfo { protocol: Protocol::Multiboot2, memory: regions, cmdline, archive, rsdp, structures })
}

fn owned<const N: usize>(text: &[u8], what: &'static str) -> Result<Vec<u8, N>, BootInfoError> {
    Vec::from_slice(text).map_err(|_| BootInfoError::UnterminatedString { what })
}

fn le32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn nul_terminated(bytes: &[u8]) -> Option<&[u8]> {
    bytes.iter().position(|&b| b == 0).map(|len| &bytes[..len])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::physmem::Arena;

    const INFO: u64 = 0x1000;

    fn e820(base: u64, length: u64, kind: u32) -> std::vec::Vec<u8> {
        let mut out = base.to_le_bytes().to_vec();
        out.extend(length.to_le_bytes());
        out.extend(kind.to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out
    }

    fn pvh_arena(version: u32, module_count: u32) -> Arena {
        let mut arena = Arena::new(0, 0x10000);
        let mut info = PVH_MAGIC.to_le_bytes().to_vec();
        info.extend(version.to_le_bytes());
        info.extend(0u32.to_le_bytes());
        info.extend(module_count.to_le_bytes());
        info.extend(0x2000u64.to_le_bytes()); // modlist
        info.extend(0x3000u64.to_le_bytes()); // cmdline
        info.extend(0xe0000u64.to_le_bytes()); // rsdp
        info.extend(0x4000u64.to_le_bytes()); // memmap
        info.extend(2u32.to_le_bytes());
        info.extend(0u32.to_le_bytes());
        arena.put(INFO, &info);
        let mut module = 0x8000u64.to_le_bytes().to_vec();
        module.extend(0x1234u64.to_le_bytes());
        module.extend([0; 16]);
        arena.put(0x2000, &module);
        arena.put(0x3000, b"log=debug\0");
        let mut map = e820(0, 0x9fc00, 1);
        map.extend(e820(0x100000, 0xff00000, 1));
        arena.put(0x4000, &map);
        arena
    }

    #[test]
    fn pvh_start_info_is_read_completely() {
        let arena = pvh_arena(1, 1);
        let boot = parse(PVH_MAGIC, INFO, &arena).expect("valid");
        assert_eq!(boot.protocol, Protocol::Pvh);
        assert_eq!(boot.cmdline.as_slice(), b"log=debug");
        assert_eq!(boot.archive, Some((0x8000, 0x1234)));
        assert_eq!(boot.rsdp, Some(RsdpSource::Physical(0xe0000)));
        assert_eq!(boot.memory.len(), 2);
        assert_eq!(boot.memory[1].base, 0x100000);
        assert_eq!(boot.memory[1].kind, FirmwareKind::Usable);
        assert!(boot.structures.contains(&(0x3000, 10)));
    }

    #[test]
    fn pvh_errors_are_specific() {
        assert_eq!(parse(PVH_MAGIC, INFO, &pvh_arena(0, 1)).err(), Some(BootInfoError::PvhWithoutMemoryMap));
        let mut arena = pvh_arena(1, 0);
        assert_eq!(parse(PVH_MAGIC, INFO, &arena).expect("no module is fine").archive, None);
        arena.put(INFO, &0xdeadbeefu32.to_le_bytes());
        assert_eq!(
            parse(PVH_MAGIC, INFO, &arena).err(),
            Some(BootInfoError::BadPvhMagic { found: 0xdeadbeef })
        );
        assert!(matches!(
            parse(PVH_MAGIC, 0xfff0, &pvh_arena(1, 1)),
            Err(BootInfoError::BadPvhMagic { .. } | BootInfoError::OutOfBounds { .. })
        ));
        assert!(matches!(
            parse(PVH_MAGIC, 0x20000, &pvh_arena(1, 1)),
            Err(BootInfoError::OutOfBounds { .. })
        ));
        let mut unterminated = pvh_arena(1, 1);
        unterminated.put(0x3000, &[b'x'; 0x1000]);
        assert_eq!(
            parse(PVH_MAGIC, INFO, &unterminated).err(),
            Some(BootInfoError::UnterminatedString { what: "PVH command line" })
        );
        assert_eq!(parse(7, INFO, &arena).err(), Some(BootInfoError::UnknownProtocol { magic: 7 }));
    }

    fn mb2_tag(kind: u32, body: &[u8]) -> std::vec::Vec<u8> {
        let mut tag = kind.to_le_bytes().to_vec();
        tag.extend((8 + body.len() as u32).to_le_bytes());
        tag.extend(body);
        while !tag.len().is_multiple_of(8) {
            tag.push(0);
        }
        tag
    }

    fn mb2_block(tags: &[std::vec::Vec<u8>]) -> std::vec::Vec<u8> {
        let body: std::vec::Vec<u8> = tags.concat();
        let mut block = ((8 + body.len()) as u32).to_le_bytes().to_vec();
        block.extend(0u32.to_le_bytes());
        block.extend(body);
        block
    }

    fn mb2_mmap() -> std::vec::Vec<u8> {
        let mut body = 24u32.to_le_bytes().to_vec();
        body.extend(0u32.to_le_bytes());
        body.extend(e820(0, 0x9fc00, 1));
        body.extend(e820(0xf0000, 0x10000, 2));
        body.extend(e820(0x100000, 0x7ee0000, 1));
        body
    }

    #[test]
    fn multiboot2_tags_are_read_completely() {
        let mut module = 0x200000u32.to_le_bytes().to_vec();
        module.extend(0x201000u32.to_le_bytes());
        module.extend(b"strata.initrd\0");
        let block = mb2_block(&[
            mb2_tag(tag::CMDLINE, b"log=trace ktest\0"),
            mb2_tag(2, b"GRUB 2.06\0"),
            mb2_tag(tag::MODULE, &module),
            mb2_tag(tag::MMAP, &mb2_mmap()),
            mb2_tag(tag::ACPI_OLD, b"RSD PTR v1 copy....."),
            mb2_tag(tag::ACPI_NEW, b"RSD PTR v2 copy....................."),
            mb2_tag(tag::END, &[]),
        ]);
        let mut arena = Arena::new(0, 0x10000);
        arena.put(INFO, &block);
        let boot = parse(MULTIBOOT2_MAGIC, INFO, &arena).expect("valid");
        assert_eq!(boot.protocol, Protocol::Multiboot2);
        assert_eq!(boot.cmdline.as_slice(), b"log=trace ktest");
        assert_eq!(boot.archive, Some((0x200000, 0x1000)));
        assert_eq!(boot.memory.len(), 3);
        assert_eq!(boot.memory[1].kind, FirmwareKind::Reserved);
        assert_eq!(
            boot.rsdp,
            Some(RsdpSource::Copy(Vec::from_slice(b"RSD PTR v2 copy.....................").expect("fits")))
        );
    }

    #[test]
    fn multiboot2_malformed_blocks_are_refused() {
        let no_end = mb2_block(&[mb2_tag(tag::MMAP, &mb2_mmap())]);
        let mut arena = Arena::new(0, 0x10000);
        arena.put(INFO, &no_end);
        assert_eq!(parse(MULTIBOOT2_MAGIC, INFO, &arena).err(), Some(BootInfoError::MissingEndTag));

        let no_map = mb2_block(&[mb2_tag(tag::END, &[])]);
        let mut arena = Arena::new(0, 0x10000);
        arena.put(INFO, &no_map);
        assert_eq!(parse(MULTIBOOT2_MAGIC, INFO, &arena).err(), Some(BootInfoError::NoMemoryMap));

        let mut module = 0x300000u32.to_le_bytes().to_vec();
        module.extend(0x200000u32.to_le_bytes()); // ends before it starts
        let backwards = mb2_block(&[mb2_tag(tag::MODULE, &module), mb2_tag(tag::END, &[])]);
        let mut arena = Arena::new(0, 0x10000);
        arena.put(INFO, &backwards);
        assert!(matches!(parse(MULTIBOOT2_MAGIC, INFO, &arena), Err(BootInfoError::BadTag { tag: 3, .. })));

        // A tag whose size runs past the block.
        let mut overrun = mb2_block(&[mb2_tag(tag::CMDLINE, b"x\0"), mb2_tag(tag::END, &[])]);
        overrun[12] = 0xff;
        let mut arena = Arena::new(0, 0x10000);
        arena.put(INFO, &overrun);
        assert!(matches!(parse(MULTIBOOT2_MAGIC, INFO, &arena), Err(BootInfoError::BadTag { tag: 1, .. })));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_multiboot2_blocks_never_panic(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let mut block = ((8 + body.len()) as u32).to_le_bytes().to_vec();
            block.extend(0u32.to_le_bytes());
            block.extend(&body);
            let mut arena = Arena::new(0, 0x2000);
            arena.put(INFO, &block);
            let _ = parse(MULTIBOOT2_MAGIC, INFO, &arena);
        }
    }
}
