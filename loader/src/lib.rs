//! strata-loader: the boot shim between a bootloader that speaks PVH or
//! multiboot2 and a kernel that speaks only the Limine boot protocol.
//!
//! This library is the loader's logic, pure enough to run on the host: read
//! the boot information, check the boot archive and the kernel ELF, lay out
//! physical memory, copy the kernel, build its page tables (kernel image,
//! higher-half direct map, one identity page for the hand-off trampoline) and
//! write the Limine responses. The bare-metal binary (`main.rs`) adds the
//! 32-bit entry, long mode, the serial console and the final jump.
//!
//! It trusts nothing it reads: firmware tables, the archive and the ELF are
//! all checked, and every failure is a [`LoaderError`] whose message names
//! what is wrong. It must never jump to a kernel it has not fully checked.

#![cfg_attr(not(test), no_std)]

pub mod bootinfo;
pub mod limine;
pub mod memmap;
pub mod paging;
pub mod physmem;

use core::fmt;

use heapless::Vec;
use strata_abi::acpi;
use strata_abi::archive::{Archive, ArchiveError, TEXT_LEN};
use strata_kernel::arch::x86_64::paging::{Level, PteFlags};

use crate::bootinfo::{BootInfo, BootInfoError, RsdpSource};
use crate::limine::{RequestKind, ResponseSpaceExhausted, ResponseWriter, layout};
use crate::memmap::{MemoryError, MemoryLayout, RegionKind};
use crate::paging::{PageTables, PagingError};
use crate::physmem::PhysicalMemory;
use strata_abi::elf::{self, ElfError, LoadPlan};

/// Where the kernel sees all physical memory (Limine's default for 4-level paging).
pub const HHDM_OFFSET: u64 = 0xffff_8000_0000_0000;
/// Size of the stack the kernel starts on (Limine's default).
pub const KERNEL_STACK_SIZE: u64 = 64 * 1024;
/// Size of the region holding Limine responses.
pub const RESPONSE_REGION_SIZE: u64 = 64 * 1024;
/// The direct map covers at least this much, for MMIO such as the LAPIC and IOAPIC.
pub const HHDM_MINIMUM: u64 = 4 << 30;
/// Allocations stay above this address (real-mode memory stays free).
pub const ALLOCATION_FLOOR: u64 = 1 << 20;
/// Allocations stay below this address (the loader's identity map ends here).
pub const ALLOCATION_CEILING: u64 = 4 << 30;
const PAGE: u64 = 4096;

/// Everything that can stop the loader. The `Display` form is the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoaderError {
    /// The boot protocol information is unusable.
    BootInfo(BootInfoError),
    /// The bootloader passed no module.
    NoArchive,
    /// The archive module is not addressable.
    ArchiveUnreachable {
        /// Physical address.
        address: u64,
        /// Length.
        len: u64,
    },
    /// The archive is malformed.
    Archive(ArchiveError),
    /// The kernel ELF is malformed.
    Elf(ElfError),
    /// Physical memory could not be laid out.
    Memory(MemoryError),
    /// Page tables could not be built.
    Paging(PagingError),
    /// Responses did not fit.
    Responses(ResponseSpaceExhausted),
    /// The kernel asked for a Limine base revision this loader lacks.
    UnsupportedBaseRevision {
        /// The revision asked for, if the kernel has a base revision tag at all.
        requested: Option<u64>,
    },
}

impl fmt::Display for LoaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BootInfo(e) => write!(f, "{e}"),
            Self::NoArchive => write!(
                f,
                "no boot archive: pass strata.initrd as the first module (QEMU -initrd, GRUB module2)"
            ),
            Self::ArchiveUnreachable { address, len } => write!(
                f,
                "boot archive ({len} bytes at {address:#x}) is not below 4 GiB where the loader can read it"
            ),
            Self::Archive(e) => write!(f, "boot archive: {e}"),
            Self::Elf(e) => write!(f, "kernel: {e}"),
            Self::Memory(e) => write!(f, "{e}"),
            Self::Paging(e) => write!(f, "{e}"),
            Self::Responses(e) => write!(f, "{e}"),
            Self::UnsupportedBaseRevision { requested: Some(revision) } => write!(
                f,
                "kernel requires Limine base revision {revision}; this loader implements {}",
                limine::BASE_REVISION
            ),
            Self::UnsupportedBaseRevision { requested: None } => {
                write!(f, "kernel has no Limine base revision tag")
            }
        }
    }
}

macro_rules! from_error {
    ($($source:ty => $variant:ident),* $(,)?) => {
        $(impl From<$source> for LoaderError {
            fn from(error: $source) -> Self {
                Self::$variant(error)
            }
        })*
    };
}

from_error! {
    BootInfoError => BootInfo,
    ArchiveError => Archive,
    ElfError => Elf,
    MemoryError => Memory,
    PagingError => Paging,
    ResponseSpaceExhausted => Responses,
}

/// Facts about the loader binary itself.
#[derive(Debug, Clone, Copy)]
pub struct LoaderImage {
    /// Physical span of the loaded loader (code, data, bss, stack).
    pub start: u64,
    /// One past the end.
    pub end: u64,
    /// The page holding the hand-off trampoline and its GDT; identity-mapped
    /// in the kernel's page tables so the jump survives the CR3 switch.
    pub trampoline_page: u64,
}

/// Processor features the page tables may use.
#[derive(Debug, Clone, Copy)]
pub struct CpuFeatures {
    /// 1 GiB pages (CPUID 8000_0001h EDX bit 26).
    pub gigabyte_pages: bool,
    /// The NX bit (CPUID 8000_0001h EDX bit 20); EFER.NXE is set before the jump.
    pub no_execute: bool,
}

/// A module the kernel will receive.
#[derive(Debug, Clone, Copy)]
struct ModuleInfo {
    physical: u64,
    size: u64,
    name: [u8; TEXT_LEN],
    string: [u8; TEXT_LEN],
}

/// Everything the final jump needs, and what to report before it.
#[derive(Debug, Clone)]
pub struct Handoff {
    /// Value for CR3.
    pub page_table_root: u64,
    /// Kernel entry point (virtual).
    pub entry: u64,
    /// Initial RSP (virtual, direct map).
    pub stack_top: u64,
    /// Where the kernel image was placed physically.
    pub kernel_physical_base: u64,
    /// Its virtual base.
    pub kernel_virtual_base: u64,
    /// Size of the kernel image in memory.
    pub kernel_size: u64,
    /// Boot modules handed over.
    pub modules: usize,
    /// Bytes of usable memory in the final map.
    pub usable_bytes: u64,
    /// Entries in the final map.
    pub map_entries: usize,
    /// How much of physical memory the direct map covers.
    pub hhdm_size: u64,
    /// Kernel requests carrying IDs this loader does not answer.
    pub unknown_requests: usize,
}

/// Does all the loader's work short of the jump.
pub fn prepare(
    boot: &BootInfo,
    memory: &mut impl PhysicalMemory,
    loader: LoaderImage,
    cpu: CpuFeatures,
) -> Result<Handoff, LoaderError> {
    let (archive_address, archive_len) = boot.archive.ok_or(LoaderError::NoArchive)?;
    let unreachable = LoaderError::ArchiveUnreachable { address: archive_address, len: archive_len };
    if archive_address % PAGE != 0 {
        return Err(unreachable);
    }

    // Check everything in the archive before touching memory; keep only
    // owned facts so the archive can be read again while writing elsewhere.
    let (plan, kernel_physical, kernel_file_size, modules) = {
        let bytes = memory.bytes(archive_address, archive_len).ok_or(unreachable)?;
        let archive = Archive::parse(bytes)?;
        let kernel = archive.kernel();
        let plan = elf::plan(kernel.data, elf::KERNEL_RANGE)?;
        let mut modules: Vec<ModuleInfo, { strata_abi::archive::MAX_ENTRIES }> = Vec::new();
        for module in archive.modules() {
            let _ = modules.push(ModuleInfo {
                physical: archive_address + module.offset,
                size: module.data.len() as u64,
                name: *module.name_bytes,
                string: *module.string_bytes,
            });
        }
        (plan, archive_address + kernel.offset, kernel.data.len() as u64, modules)
    };

    let mut layout = MemoryLayout::new(&boot.memory, ALLOCATION_FLOOR, ALLOCATION_CEILING);
    layout.claim(loader.start, loader.end - loader.start, RegionKind::BootloaderReclaimable)?;
    for &(address, len) in &boot.structures {
        layout.claim(address, len, RegionKind::BootloaderReclaimable)?;
    }
    layout.claim(archive_address, archive_len, RegionKind::ExecutableAndModules)?;

    let kernel_physical_base = layout
        .allocate(plan.image_size(), 2 << 20, RegionKind::ExecutableAndModules)
        .or_else(|_| layout.allocate(plan.image_size(), PAGE, RegionKind::ExecutableAndModules))?;
    load_segments(memory, &plan, kernel_physical, kernel_physical_base)?;
    let stack = layout.allocate(KERNEL_STACK_SIZE, PAGE, RegionKind::BootloaderReclaimable)?;
    let responses = layout.allocate(RESPONSE_REGION_SIZE, PAGE, RegionKind::BootloaderReclaimable)?;

    let hhdm_size = layout.highest_address().max(HHDM_MINIMUM).next_multiple_of(1 << 30);
    let root = build_page_tables(memory, &mut layout, &plan, kernel_physical_base, loader, cpu, hhdm_size)?;

    let map = layout.final_map()?;
    let usable_bytes = map.iter().filter(|r| r.kind == RegionKind::Usable).map(|r| r.length).sum();

    // Answer the kernel's requests.
    let image = memory
        .bytes_mut(kernel_physical_base, plan.image_size())
        .ok_or(PagingError::TableUnreachable { physical_address: kernel_physical_base })?;
    let requests = limine::scan(image);
    if !limine::answer_base_revision(image, &requests) {
        return Err(LoaderError::UnsupportedBaseRevision { requested: requests.base_revision.map(|r| r.1) });
    }
    // Without an RSDP from the bootloader, look where BIOS firmware keeps it.
    let scanned_rsdp = if boot.rsdp.is_none() { find_rsdp(memory) } else { None };
    let mut answers: [Option<u64>; RequestKind::ALL.len()] = [None; RequestKind::ALL.len()];
    {
        let buffer = memory
            .bytes_mut(responses, RESPONSE_REGION_SIZE)
            .ok_or(PagingError::TableUnreachable { physical_address: responses })?;
        buffer.fill(0);
        let mut writer = ResponseWriter::new(buffer, HHDM_OFFSET + responses);
        let hhdm = |physical: u64| HHDM_OFFSET + physical;
        for (slot, kind) in answers.iter_mut().zip(RequestKind::ALL) {
            if requests.offset_of(kind).is_none() {
                continue;
            }
            *slot = match kind {
                RequestKind::BootloaderInfo => {
                    let name = writer.push_c_string(b"strata-loader")?;
                    let version = writer.push_c_string(env!("CARGO_PKG_VERSION").as_bytes())?;
                    Some(writer.push(&layout::BootloaderInfo { revision: 0, name, version })?)
                }
                RequestKind::FirmwareType => {
                    Some(writer.push(&layout::FirmwareType { revision: 0, firmware_type: 0 })?)
                }
                RequestKind::Hhdm => Some(writer.push(&layout::Hhdm { revision: 0, offset: HHDM_OFFSET })?),
                RequestKind::MemoryMap => {
                    let mut pointers: Vec<u64, { memmap::MAX_ENTRIES }> = Vec::new();
                    for region in &map {
                        let entry = layout::MemoryMapEntry {
                            base: region.base,
                            length: region.length,
                            kind: region.kind.limine_type(),
                        };
                        let _ = pointers.push(writer.push(&entry)?);
                    }
                    let entries = writer.push_words(&pointers)?;
                    Some(writer.push(&layout::MemoryMap { revision: 0, count: map.len() as u64, entries })?)
                }
                RequestKind::ExecutableAddress => Some(writer.push(&layout::ExecutableAddress {
                    revision: 0,
                    physical_base: kernel_physical_base,
                    virtual_base: plan.virtual_base,
                })?),
                RequestKind::ExecutableCmdline => {
                    let cmdline = writer.push_c_string(&boot.cmdline)?;
                    Some(writer.push(&layout::ExecutableCmdline { revision: 0, cmdline })?)
                }
                RequestKind::ExecutableFile => {
                    let path = writer.push_c_string(b"kernel")?;
                    let string = writer.push_c_string(&boot.cmdline)?;
                    let file = layout::File::in_memory(hhdm(kernel_physical), kernel_file_size, path, string);
                    let file = writer.push(&file)?;
                    Some(writer.push(&layout::ExecutableFile { revision: 0, file })?)
                }
                RequestKind::Modules => {
                    let mut pointers: Vec<u64, { strata_abi::archive::MAX_ENTRIES }> = Vec::new();
                    for module in &modules {
                        let path = writer.push_c_string(&module.name)?;
                        let string = writer.push_c_string(&module.string)?;
                        let file = layout::File::in_memory(hhdm(module.physical), module.size, path, string);
                        let _ = pointers.push(writer.push(&file)?);
                    }
                    let list = writer.push_words(&pointers)?;
                    Some(writer.push(&layout::Modules {
                        revision: 0,
                        count: modules.len() as u64,
                        modules: list,
                    })?)
                }
                RequestKind::Rsdp => match &boot.rsdp {
                    Some(RsdpSource::Physical(address)) => {
                        Some(writer.push(&layout::Rsdp { revision: 0, address: *address })?)
                    }
                    Some(RsdpSource::Copy(copy)) => {
                        // The copy sits in the response region; its physical address is what
                        // base revision 3 hands over.
                        let virtual_address = writer.push_bytes(copy)?;
                        let address = virtual_address - HHDM_OFFSET;
                        Some(writer.push(&layout::Rsdp { revision: 0, address })?)
                    }
                    None => match scanned_rsdp {
                        Some(address) => Some(writer.push(&layout::Rsdp { revision: 0, address })?),
                        None => None,
                    },
                },
            };
        }
    }
    let image = memory
        .bytes_mut(kernel_physical_base, plan.image_size())
        .ok_or(PagingError::TableUnreachable { physical_address: kernel_physical_base })?;
    for (answer, kind) in answers.iter().zip(RequestKind::ALL) {
        if let (Some(response), Some(offset)) = (answer, requests.offset_of(kind)) {
            limine::answer(image, offset, *response);
        }
    }

    Ok(Handoff {
        page_table_root: root,
        entry: plan.entry,
        stack_top: HHDM_OFFSET + stack + KERNEL_STACK_SIZE,
        kernel_physical_base,
        kernel_virtual_base: plan.virtual_base,
        kernel_size: plan.image_size(),
        modules: modules.len(),
        usable_bytes,
        map_entries: map.len(),
        hhdm_size,
        unknown_requests: requests.unknown,
    })
}

/// Finds the RSDP the way ACPI 6.5 §5.2.5.1 describes for BIOS systems:
/// in the first KiB of the EBDA (its segment is the word at 0x40e), then in
/// 0xE0000-0xFFFFF.
pub fn find_rsdp(memory: &impl PhysicalMemory) -> Option<u64> {
    let ebda = memory
        .bytes(0x40e, 2)
        .map(|segment| u64::from(u16::from_le_bytes([segment[0], segment[1]])) << 4)
        .filter(|base| (0x400..0xa0000).contains(base));
    let ebda_hit = ebda.and_then(|base| {
        let area = memory.bytes(base, 1024)?;
        acpi::scan(area, base)
    });
    ebda_hit.or_else(|| {
        let area = memory.bytes(acpi::BIOS_AREA.start, acpi::BIOS_AREA.end - acpi::BIOS_AREA.start)?;
        acpi::scan(area, acpi::BIOS_AREA.start)
    })
}

/// Copies each segment's file bytes into the image and zeroes the rest.
fn load_segments(
    memory: &mut impl PhysicalMemory,
    plan: &LoadPlan,
    file_physical: u64,
    image_physical: u64,
) -> Result<(), LoaderError> {
    let unreachable = PagingError::TableUnreachable { physical_address: image_physical };
    memory.bytes_mut(image_physical, plan.image_size()).ok_or(unreachable)?.fill(0);
    for segment in plan.segments() {
        let destination = image_physical + (segment.virtual_address - plan.virtual_base);
        let mut copied = 0;
        // Copy through a small buffer: source and destination are both in
        // `memory`, which cannot be borrowed twice at once.
        let mut chunk = [0u8; 512];
        while copied < segment.file_size {
            let n = (segment.file_size - copied).min(chunk.len() as u64);
            let source = memory.bytes(file_physical + segment.file_offset + copied, n).ok_or(unreachable)?;
            chunk[..n as usize].copy_from_slice(source);
            memory
                .bytes_mut(destination + copied, n)
                .ok_or(unreachable)?
                .copy_from_slice(&chunk[..n as usize]);
            copied += n;
        }
    }
    Ok(())
}

fn build_page_tables(
    memory: &mut impl PhysicalMemory,
    layout: &mut MemoryLayout<'_>,
    plan: &LoadPlan,
    kernel_physical_base: u64,
    loader: LoaderImage,
    cpu: CpuFeatures,
    hhdm_size: u64,
) -> Result<u64, LoaderError> {
    let mut allocate = || layout.allocate(PAGE, PAGE, RegionKind::BootloaderReclaimable);
    let mut tables = PageTables::new(memory, &mut allocate)?;
    let nx = if cpu.no_execute { PteFlags::NO_EXECUTE } else { PteFlags::empty() };

    for segment in plan.segments() {
        let first = segment.virtual_address / PAGE * PAGE;
        let end = (segment.virtual_address + segment.memory_size).div_ceil(PAGE) * PAGE;
        let mut flags = PteFlags::empty();
        if segment.writable {
            flags |= PteFlags::WRITABLE;
        }
        if !segment.executable {
            flags |= nx;
        }
        let physical = kernel_physical_base + (first - plan.virtual_base);
        tables.map_range(memory, &mut allocate, first, physical, end - first, Level::Pt, flags)?;
    }

    let largest = if cpu.gigabyte_pages { Level::Pdpt } else { Level::Pd };
    tables.map_range(memory, &mut allocate, HHDM_OFFSET, 0, hhdm_size, largest, PteFlags::WRITABLE | nx)?;

    // The trampoline runs its last instructions after the CR3 switch at its
    // identity address; the GDT in the same page stays valid until the
    // kernel loads its own.
    tables.map(
        memory,
        &mut allocate,
        loader.trampoline_page,
        loader.trampoline_page,
        Level::Pt,
        PteFlags::WRITABLE,
    )?;
    Ok(tables.root())
}

#[cfg(test)]
mod tests;
