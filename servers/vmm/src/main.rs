//! strata-vmm as a program: one tenant's VMM, a child process the root
//! task starts from the system description (`systems/tenants.toml`). Every
//! boot module it is given named `guest-*` is a guest (a multiboot kernel,
//! whose modules are the modules named `guest-*+<name>`; a plain 64-bit
//! ELF kernel; or a boot sector), run in turn in a fresh GuestSpace with
//! 4 MiB of RAM on one VCPU, all made in the same memory
//! (`strata_rt::vm::GuestMemory`), which each guest gives back when it ends. The guest's COM1 output goes to the root
//! task's log with the guest's name as prefix (the root adds the
//! tenant's), how each guest ended is reported, and the VMM then exits.
//! Its guest timers use the PIT when the description gives it the PIT's
//! ports and interrupt.

#![cfg_attr(strata_baremetal, no_std, no_main)]
#![deny(unsafe_code)]

#[cfg(strata_baremetal)]
mod machine;

#[cfg(not(strata_baremetal))]
fn main() {
    eprintln!("strata-vmm runs on strata; `cargo xtask run --vm` boots it with the test guests");
    std::process::exit(2);
}
