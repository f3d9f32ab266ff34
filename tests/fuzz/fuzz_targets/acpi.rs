//! The ACPI parsers the kernel runs on firmware tables: the RSDP, table
//! headers and checksums, the RSDT/XSDT entry lists and the MADT.
#![no_main]

use strata_abi::acpi;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = acpi::Rsdp::parse(data);
    let _ = acpi::scan(data, 0xe_0000);
    let _ = acpi::table_length(data);
    if let Ok((_, table)) = acpi::check_table(data) {
        let _ = acpi::root_entries(table, true).count();
        let _ = acpi::root_entries(table, false).count();
        let _ = acpi::madt_entries(table).count();
    }
    let _ = acpi::madt_entries(data).count();
});
