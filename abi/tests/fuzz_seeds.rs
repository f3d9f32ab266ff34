//! The seed corpora of the parser fuzz targets (`tests/fuzz/corpus`) are
//! valid inputs, so that fuzzing starts from the accepted paths rather
//! than from the first byte check.

use std::path::PathBuf;

fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} has no seeds", dir.display());
    files.into_iter().map(|p| (p.clone(), std::fs::read(&p).expect("readable"))).collect()
}

#[test]
fn archive_seeds_parse() {
    for (path, bytes) in seeds("archive") {
        let archive =
            strata_abi::archive::Archive::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(archive.entries().count() >= 1);
    }
}

#[test]
fn elf_seeds_plan() {
    for (path, bytes) in seeds("elf") {
        strata_abi::elf::plan(&bytes, 0x40_0000..0x1000_0000_0000)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

#[test]
fn acpi_seeds_are_an_rsdp_and_a_madt() {
    let seeds = seeds("acpi");
    let rsdp = seeds.iter().find(|(p, _)| p.ends_with("rsdp-v0")).expect("rsdp seed");
    strata_abi::acpi::Rsdp::parse(&rsdp.1).expect("valid RSDP");
    let madt = seeds.iter().find(|(p, _)| p.ends_with("madt")).expect("madt seed");
    let (signature, table) = strata_abi::acpi::check_table(&madt.1).expect("valid table");
    assert_eq!(&signature, b"APIC");
    assert_eq!(strata_abi::acpi::madt_entries(table).count(), 3);
}
