//! The loader's boot-information parsers: a multiboot2 information
//! structure or a PVH start-info structure from the firmware or GRUB, with
//! everything it points to, in simulated physical memory.
#![no_main]

use strata_loader::bootinfo::{MULTIBOOT2_MAGIC, PVH_MAGIC, parse};
use strata_loader::physmem::PhysicalMemory;

/// The fuzz input as physical memory from `BASE` on.
struct Memory<'a>(&'a [u8]);

const BASE: u64 = 0x1000;

impl PhysicalMemory for Memory<'_> {
    fn bytes(&self, address: u64, len: u64) -> Option<&[u8]> {
        let start = usize::try_from(address.checked_sub(BASE)?).ok()?;
        self.0.get(start..start.checked_add(usize::try_from(len).ok()?)?)
    }

    fn bytes_mut(&mut self, _address: u64, _len: u64) -> Option<&mut [u8]> {
        None
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else { return };
    let magic = if kind & 1 == 0 { MULTIBOOT2_MAGIC } else { PVH_MAGIC };
    let _ = parse(magic, BASE, &Memory(rest));
});
