//! The ELF loader's checks (the kernel image, the root task, child
//! processes): an accepted plan's segments lie inside the allowed range and
//! their file bytes inside the file, and every page of it can be built.
#![no_main]

use strata_abi::elf::plan;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let range = 0x40_0000..0x1000_0000_0000;
    if let Ok(plan) = plan(data, range.clone()) {
        assert!(range.start <= plan.virtual_base && plan.virtual_end <= range.end);
        for segment in plan.segments() {
            assert!(segment.file_offset + segment.file_size <= data.len() as u64);
        }
        for page in (plan.virtual_base..plan.virtual_end).step_by(4096).take(64) {
            let _ = plan.page_bytes(data, page);
            let _ = plan.segment_at(page);
        }
    }
});
