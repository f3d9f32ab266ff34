//! The boot archive parser (what the loader reads from the initrd): any
//! bytes give an archive or an error, and every entry of an accepted
//! archive lies inside it.
#![no_main]

use strata_abi::archive::Archive;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(archive) = Archive::parse(data) {
        for entry in archive.entries() {
            let _ = (entry.name, entry.data.len());
        }
    }
});
