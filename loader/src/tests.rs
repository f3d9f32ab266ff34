//! End-to-end: boot information and an archive in simulated physical memory
//! go in; page tables, a loaded kernel and Limine responses come out, and are
//! read back the way the kernel will read them (through its page tables).

use super::*;
use crate::bootinfo::{FirmwareKind, FirmwareRegion, Protocol};
use crate::physmem::Arena;
use strata_abi::archive::{Builder, EntryKind};
use strata_abi::elf::testing::elf;

const MIB: u64 = 1 << 20;
const BASE: u64 = strata_abi::elf::KERNEL_RANGE.start;
const ARCHIVE_AT: u64 = 16 * MIB;
const DATA_OFFSET: usize = 0x2000; // file offset of the data segment

/// Offsets of the requests inside the kernel's data page.
const BASE_REVISION_AT: usize = 0;
const HHDM_AT: usize = 64;
const MEMMAP_AT: usize = 128;
const MODULES_AT: usize = 192;
const CMDLINE_AT: usize = 256;
const ADDRESS_AT: usize = 320;
const RSDP_AT: usize = 384;

fn kernel_elf(base_revision: u64) -> std::vec::Vec<u8> {
    use ::limine::request::*;
    let mut file = elf(
        BASE + 0x10,
        &[(1, 5, 0x1000, BASE, 0x20, 0x1000), (1, 6, DATA_OFFSET as u64, BASE + 0x1000, 0x400, 0x2000)],
        0x3000,
    );
    file[0x1000..0x1020].copy_from_slice(&[0x90; 32]); // "code"
    let mut put = |at: usize, words: &[u64]| {
        for (i, w) in words.iter().enumerate() {
            let offset = DATA_OFFSET + at + 8 * i;
            file[offset..offset + 8].copy_from_slice(&w.to_le_bytes());
        }
    };
    put(BASE_REVISION_AT, &[0xf956_2b2d_5c95_a6c8, 0x6a7b_3849_4453_6bdc, base_revision]);
    put(HHDM_AT, HhdmRequest::new().id());
    put(MEMMAP_AT, MemoryMapRequest::new().id());
    put(MODULES_AT, ModuleRequest::new().id());
    put(CMDLINE_AT, ExecutableCmdlineRequest::new().id());
    put(ADDRESS_AT, ExecutableAddressRequest::new().id());
    put(RSDP_AT, RsdpRequest::new().id());
    file
}

fn machine(kernel: &[u8]) -> (Arena, BootInfo) {
    let mut builder = Builder::new();
    builder.add(EntryKind::Kernel, "kernel", "", kernel).expect("valid");
    builder.add(EntryKind::Module, "root", "log=debug", b"root task bytes").expect("valid");
    let archive = builder.finish().expect("valid");
    let mut memory = Arena::new(0, 32 * MIB as usize);
    memory.put(ARCHIVE_AT, &archive);
    let boot = BootInfo {
        protocol: Protocol::Pvh,
        memory: Vec::from_slice(&[
            FirmwareRegion { base: 0, length: 0x9fc00, kind: FirmwareKind::Usable },
            FirmwareRegion { base: MIB, length: 31 * MIB, kind: FirmwareKind::Usable },
        ])
        .expect("fits"),
        cmdline: Vec::from_slice(b"log=trace").expect("fits"),
        archive: Some((ARCHIVE_AT, archive.len() as u64)),
        rsdp: None,
        structures: Vec::new(),
    };
    (memory, boot)
}

const LOADER: LoaderImage = LoaderImage { start: MIB, end: MIB + 0x40000, trampoline_page: MIB + 0x3000 };
const CPU: CpuFeatures = CpuFeatures { gigabyte_pages: true, no_execute: true };

/// Reads a u64 the kernel would see at `virtual_address`.
fn read_virtual(memory: &Arena, tables: &PageTables, virtual_address: u64) -> u64 {
    let (physical, _) = tables.translate(memory, virtual_address).expect("mapped");
    let mut raw = [0u8; 8];
    raw.copy_from_slice(memory.bytes(physical, 8).expect("in arena"));
    u64::from_le_bytes(raw)
}

fn read_c_string(memory: &Arena, tables: &PageTables, virtual_address: u64) -> std::string::String {
    let (physical, _) = tables.translate(memory, virtual_address).expect("mapped");
    let bytes = memory.bytes(physical, 64).expect("in arena");
    let len = bytes.iter().position(|&b| b == 0).expect("terminated");
    std::string::String::from_utf8(bytes[..len].to_vec()).expect("utf-8")
}

fn tables_of(handoff: &Handoff) -> PageTables {
    PageTables::from_root(handoff.page_table_root)
}

#[test]
fn prepare_loads_the_kernel_and_answers_its_requests() {
    let kernel = kernel_elf(3);
    let (mut memory, boot) = machine(&kernel);
    let handoff = prepare(&boot, &mut memory, LOADER, CPU).expect("loads");
    let tables = tables_of(&handoff);

    assert_eq!(handoff.entry, BASE + 0x10);
    assert_eq!(handoff.kernel_virtual_base, BASE);
    assert_eq!(handoff.modules, 1);
    assert_eq!(handoff.kernel_physical_base % (2 * MIB), 0);

    // The kernel image is mapped with its segment permissions and holds the file's bytes.
    let (text, text_flags) = tables.translate(&memory, BASE).expect("text mapped");
    assert_eq!(text, handoff.kernel_physical_base);
    assert_eq!(memory.bytes(text, 4).expect("in arena"), &[0x90; 4]);
    assert!(!text_flags.contains(PteFlags::WRITABLE) && !text_flags.contains(PteFlags::NO_EXECUTE));
    let (_, data_flags) = tables.translate(&memory, BASE + 0x1000).expect("data mapped");
    assert!(data_flags.contains(PteFlags::WRITABLE | PteFlags::NO_EXECUTE));
    // bss (beyond the file bytes) is zero and mapped.
    assert_eq!(read_virtual(&memory, &tables, BASE + 0x2ff8), 0);

    // Base revision acknowledged.
    let data = BASE + 0x1000;
    assert_eq!(read_virtual(&memory, &tables, data + 8), 3);
    assert_eq!(read_virtual(&memory, &tables, data + 16), 0);

    // HHDM response.
    let hhdm = read_virtual(&memory, &tables, data + HHDM_AT as u64 + 40);
    assert_eq!(read_virtual(&memory, &tables, hhdm + 8), HHDM_OFFSET);

    // Memory map: sorted, disjoint, kernel and archive not usable, total matches.
    let map = read_virtual(&memory, &tables, data + MEMMAP_AT as u64 + 40);
    let count = read_virtual(&memory, &tables, map + 8);
    let entries = read_virtual(&memory, &tables, map + 16);
    let mut previous_end = 0;
    let mut usable = 0;
    for i in 0..count {
        let entry = read_virtual(&memory, &tables, entries + 8 * i);
        let (base, length, kind) = (
            read_virtual(&memory, &tables, entry),
            read_virtual(&memory, &tables, entry + 8),
            read_virtual(&memory, &tables, entry + 16),
        );
        assert!(base >= previous_end, "map not sorted");
        previous_end = base + length;
        let overlaps = |start: u64, len: u64| base < start + len && start < base + length;
        if kind == 0 {
            usable += length;
            assert!(!overlaps(handoff.kernel_physical_base, handoff.kernel_size));
            assert!(!overlaps(ARCHIVE_AT, 0x1000));
            assert!(!overlaps(LOADER.start, LOADER.end - LOADER.start));
        }
    }
    assert_eq!(usable, handoff.usable_bytes);
    assert!(usable > 20 * MIB && usable < 32 * MIB);

    // Modules: the root module's bytes are readable through the direct map.
    let modules = read_virtual(&memory, &tables, data + MODULES_AT as u64 + 40);
    assert_eq!(read_virtual(&memory, &tables, modules + 8), 1);
    let file = read_virtual(&memory, &tables, read_virtual(&memory, &tables, modules + 16));
    let (address, size) =
        (read_virtual(&memory, &tables, file + 8), read_virtual(&memory, &tables, file + 16));
    assert_eq!(size, 15);
    let (physical, _) = tables.translate(&memory, address).expect("module mapped");
    assert_eq!(memory.bytes(physical, size).expect("in arena"), b"root task bytes");
    assert_eq!(read_c_string(&memory, &tables, read_virtual(&memory, &tables, file + 24)), "root");
    assert_eq!(read_c_string(&memory, &tables, read_virtual(&memory, &tables, file + 32)), "log=debug");

    // Command line and executable address.
    let cmdline = read_virtual(&memory, &tables, data + CMDLINE_AT as u64 + 40);
    assert_eq!(read_c_string(&memory, &tables, read_virtual(&memory, &tables, cmdline + 8)), "log=trace");
    let address = read_virtual(&memory, &tables, data + ADDRESS_AT as u64 + 40);
    assert_eq!(read_virtual(&memory, &tables, address + 8), handoff.kernel_physical_base);
    assert_eq!(read_virtual(&memory, &tables, address + 16), BASE);

    // Stack mapped and writable; trampoline identity-mapped; null and the rest of low memory unmapped.
    let (_, stack_flags) = tables.translate(&memory, handoff.stack_top - 8).expect("stack mapped");
    assert!(stack_flags.contains(PteFlags::WRITABLE));
    assert_eq!(tables.translate(&memory, LOADER.trampoline_page).map(|t| t.0), Some(LOADER.trampoline_page));
    assert_eq!(tables.translate(&memory, 0), None);
    assert_eq!(tables.translate(&memory, LOADER.start), None);
    // The direct map reaches the LAPIC's MMIO page.
    assert_eq!(tables.translate(&memory, HHDM_OFFSET + 0xfee0_0000).map(|t| t.0), Some(0xfee0_0000));
}

/// A valid ACPI 2.0 RSDP.
fn rsdp_bytes() -> [u8; 36] {
    let mut bytes = [0u8; 36];
    bytes[..8].copy_from_slice(b"RSD PTR ");
    bytes[9..15].copy_from_slice(b"STRATA");
    bytes[15] = 2;
    bytes[20] = 36;
    let sum = |b: &[u8]| b.iter().fold(0u8, |s, &x| s.wrapping_add(x));
    bytes[8] = 0u8.wrapping_sub(sum(&bytes[..20]));
    bytes[32] = 0u8.wrapping_sub(sum(&bytes));
    bytes
}

fn rsdp_response(memory: &Arena, handoff: &Handoff) -> Option<u64> {
    let tables = tables_of(handoff);
    let response = read_virtual(memory, &tables, BASE + 0x1000 + RSDP_AT as u64 + 40);
    (response != 0).then(|| read_virtual(memory, &tables, response + 8))
}

#[test]
fn rsdp_is_passed_through_relocated_or_found_by_scanning() {
    // PVH: a physical pointer is passed through.
    let (mut memory, mut boot) = machine(&kernel_elf(3));
    boot.rsdp = Some(RsdpSource::Physical(0xf_5a30));
    let handoff = prepare(&boot, &mut memory, LOADER, CPU).expect("loads");
    assert_eq!(rsdp_response(&memory, &handoff), Some(0xf_5a30));

    // Multiboot2: only a copy exists; it must land somewhere the kernel can
    // read it, byte for byte.
    let (mut memory, mut boot) = machine(&kernel_elf(3));
    boot.rsdp = Some(RsdpSource::Copy(Vec::from_slice(&rsdp_bytes()).expect("fits")));
    let handoff = prepare(&boot, &mut memory, LOADER, CPU).expect("loads");
    let address = rsdp_response(&memory, &handoff).expect("answered");
    assert_eq!(memory.bytes(address, 36).expect("in arena"), rsdp_bytes());
    assert!(strata_abi::acpi::Rsdp::parse(memory.bytes(address, 36).expect("in arena")).is_ok());

    // Nothing given: found in the BIOS area by scanning; nothing there: no response.
    let (mut memory, boot) = machine(&kernel_elf(3));
    assert_eq!(prepare(&boot, &mut memory, LOADER, CPU).map(|h| rsdp_response(&memory, &h)), Ok(None));
    let (mut memory, boot) = machine(&kernel_elf(3));
    memory.put(0xf_0e10, &rsdp_bytes());
    let handoff = prepare(&boot, &mut memory, LOADER, CPU).expect("loads");
    assert_eq!(rsdp_response(&memory, &handoff), Some(0xf_0e10));
}

#[test]
fn prepare_refuses_what_it_cannot_load() {
    let (mut memory, mut boot) = machine(&kernel_elf(3));
    boot.archive = None;
    assert_eq!(prepare(&boot, &mut memory, LOADER, CPU).err(), Some(LoaderError::NoArchive));

    let (mut memory, boot) = machine(&kernel_elf(4));
    assert_eq!(
        prepare(&boot, &mut memory, LOADER, CPU).err(),
        Some(LoaderError::UnsupportedBaseRevision { requested: Some(4) })
    );

    let (mut memory, boot) = machine(b"not an elf at all");
    assert_eq!(prepare(&boot, &mut memory, LOADER, CPU).err(), Some(LoaderError::Elf(ElfError::NotElf)));

    // A corrupted archive byte is caught before anything is written.
    let (mut memory, boot) = machine(&kernel_elf(3));
    let byte = memory.bytes_mut(ARCHIVE_AT + 0x1000 + 0x1005, 1).expect("in arena");
    byte[0] ^= 0x40;
    assert!(matches!(
        prepare(&boot, &mut memory, LOADER, CPU),
        Err(LoaderError::Archive(ArchiveError::DataChecksum { .. }))
    ));

    // An archive the loader cannot reach.
    let (mut memory, mut boot) = machine(&kernel_elf(3));
    boot.archive = Some((ARCHIVE_AT, 64 * MIB));
    assert!(matches!(prepare(&boot, &mut memory, LOADER, CPU), Err(LoaderError::ArchiveUnreachable { .. })));

    // Too little memory for the kernel image.
    let (mut memory, mut boot) = machine(&kernel_elf(3));
    boot.memory =
        Vec::from_slice(&[FirmwareRegion { base: MIB, length: 0x50000, kind: FirmwareKind::Usable }])
            .expect("fits");
    assert!(matches!(prepare(&boot, &mut memory, LOADER, CPU), Err(LoaderError::Memory(_))));
}

#[test]
fn without_large_page_support_the_direct_map_uses_2mib_pages() {
    let (mut memory, boot) = machine(&kernel_elf(3));
    let cpu = CpuFeatures { gigabyte_pages: false, no_execute: false };
    let handoff = prepare(&boot, &mut memory, LOADER, cpu).expect("loads");
    let tables = tables_of(&handoff);
    let (physical, flags) = tables.translate(&memory, HHDM_OFFSET + 0x4030_0000).expect("mapped");
    assert_eq!(physical, 0x4030_0000);
    assert!(flags.contains(PteFlags::HUGE) && !flags.contains(PteFlags::NO_EXECUTE));
}
