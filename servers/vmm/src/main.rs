//! strata-vmm as a program. In this first version it is the root task of
//! its image: every boot module named `guest-*` is a guest (a multiboot
//! kernel, whose modules are the boot modules named `guest-*+<name>`; a
//! plain 64-bit ELF kernel; or a boot sector), run in turn in a fresh
//! GuestSpace with 16 MiB of RAM on one VCPU. The
//! guest's COM1 output is logged with the guest's name as prefix, and how
//! each guest ended is reported. On a test kernel the run then ends.

#![cfg_attr(strata_baremetal, no_std, no_main)]
#![deny(unsafe_code)]

#[cfg(strata_baremetal)]
mod machine;

#[cfg(not(strata_baremetal))]
fn main() {
    eprintln!("strata-vmm runs on strata; `cargo xtask run --vm` boots it with the test guests");
    std::process::exit(2);
}
