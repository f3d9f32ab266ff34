//! Bytes become system calls by threads of the kernel's reference world,
//! through the real object layer; the invariants are checked after every
//! step (`strata_kernel::object::fuzzing::syscalls`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = strata_kernel::object::fuzzing::syscalls(data);
});
