//! strata's root task: the first user program. It receives all memory and
//! authority from the kernel and composes the system the boot module
//! `system` describes (`systems/*.toml`, docs/system-description.md): each
//! process listed is started as a child with its own CSpace, address space
//! and memory, and exactly the modules and devices listed. The root then
//! serves its children:
//!
//! - it carries their log lines to the console, prefixed with their names;
//! - it ends a child that exits, and reports the status;
//! - it is every child's fault handler: a child that faults is ended and
//!   restarted from its image, in the same memory, as often as its
//!   description allows.
//!
//! A program that is not a loadable executable is reported and skipped.

#![cfg_attr(strata_baremetal, no_std, no_main)]
#![deny(unsafe_code)]

#[cfg(strata_baremetal)]
mod supervisor;

#[cfg(not(strata_baremetal))]
fn main() {
    eprintln!(
        "strata-root is strata's root task; `cargo xtask run` builds a boot image with it and boots it"
    );
    std::process::exit(2);
}
