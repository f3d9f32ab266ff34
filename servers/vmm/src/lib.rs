//! strata-vmm: the first virtual-machine monitor for strata, as a library
//! of device models and loaders (plain Rust, tested on the host) and a
//! program that runs guests with them (`main.rs`).
//!
//! - [`loader`]: multiboot v1 kernels, as QEMU's `-kernel` loads them:
//!   the address fields of the header or a 32-bit ELF image, the
//!   information structure, memory map and command line.
//! - [`cpuid`]: the virtual CPU model the guest sees.
//! - [`uart`]: a 16550 UART whose output becomes log lines.
//! - [`pic`]: the PC's cascaded 8259A interrupt controllers.
//! - [`pit`]: the 8254 interval timer's channel 0, on guest time.
//! - [`memory`]: guest-physical memory and guest page-table walks.
//! - [`mmio`]: decoding the instruction behind a nested page fault.

#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

pub mod cpuid;
pub mod loader;
pub mod memory;
pub mod mmio;
pub mod pic;
pub mod pit;
pub mod uart;
