//! Every invocation decoder on arbitrary labels, message words and
//! capabilities: no panic, no side effect (`strata_kernel::object::fuzzing::decoders`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    strata_kernel::object::fuzzing::decoders(data);
});
