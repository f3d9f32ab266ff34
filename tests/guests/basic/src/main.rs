//! A test guest for strata-vmm: a multiboot kernel, entered in 32-bit
//! protected mode, that builds page tables, enters long mode itself and
//! checks what a guest must be able to rely on. Each check prints `ok
//! NAME` or `FAIL NAME: why` on COM1; the count of failures is written to
//! the isa-debug-exit port, so status 0 means every check passed.

#![cfg_attr(strata_baremetal, no_std, no_main)]

#[cfg(strata_baremetal)]
mod guest;

#[cfg(not(strata_baremetal))]
fn main() {
    eprintln!("strata-guest-basic is a guest kernel; `cargo xtask test --suite vm-qemu` runs it");
    std::process::exit(2);
}
