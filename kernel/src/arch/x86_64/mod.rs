//! x86-64 support: everything that touches the processor directly.
//!
//! The loader links the early-boot pieces of this module (`port`, `serial`,
//! `exit`, `paging`, and `mem` for bare-metal builds), so there is one
//! definition of each for both privileged binaries.

pub mod cpu;
pub mod exit;
pub mod gdt;
pub mod idt;
pub mod ioapic;
pub mod lapic;
#[cfg(strata_baremetal)]
pub mod mem;
pub mod paging;
pub mod pic;
pub mod pit;
pub mod port;
pub mod serial;
pub mod user;
