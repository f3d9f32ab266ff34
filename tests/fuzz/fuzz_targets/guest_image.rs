//! What a VMM takes from a tenant: the guest image (multiboot kernel,
//! plain 64-bit ELF or boot sector) and, at run time, the bytes it decodes at a faulting RIP
//! and the page tables it walks. An accepted image lies inside guest RAM
//! with its entry inside the image; nothing panics.
#![no_main]

use strata_vmm::loader;
use strata_vmm::memory::{GuestMemory, Paging};
use strata_vmm::mmio;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut ram = vec![0u8; 2 << 20];
    let mut memory = GuestMemory::new(&mut ram);
    if loader::is_boot_sector(data) {
        assert_eq!(loader::load_boot_sector(data, &mut memory), Ok(loader::BOOT_SECTOR_ADDRESS));
    } else if loader::is_plain_elf64(data) {
        if let Ok(entry) = loader::load_plain_elf64(data, &mut memory) {
            assert!(entry < memory.size());
        }
    } else if let Ok(boot) = loader::load(data, &mut memory, "fuzz", &[("module", &data[..data.len().min(64)])]) {
        assert!(u64::from(boot.entry) < memory.size());
        assert_eq!(u64::from(boot.info), loader::INFO_ADDRESS);
    }
    // The image's first bytes as an instruction at a device access, in each mode.
    for bitness in [16, 32, 64] {
        if let Ok(decoded) = mmio::decode(&data[..data.len().min(15)], bitness) {
            assert!((1..=15).contains(&decoded.length));
        }
    }
    // Its bytes as guest RAM holding page tables, walked from every paging mode.
    let words = |i: usize| {
        let at = (8 * i) % data.len().max(1);
        data.get(at..at + 8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    let paging = Paging { cr0: words(0), cr3: words(1) & 0xf_ffff, cr4: words(2), efer: words(3) };
    let mut ram = data.to_vec();
    ram.resize(1 << 20, 0);
    let mut memory = GuestMemory::new(&mut ram);
    let _ = memory.translate(paging, words(4));
    let _ = memory.read_linear(paging, words(5), &mut [0; 32]);
});
