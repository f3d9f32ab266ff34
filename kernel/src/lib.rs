//! strata-kernel: the privileged core of strata.
//!
//! What it is: a small seL4-style kernel, started by a Limine-protocol
//! bootloader (here `strata-loader`). Object logic is plain Rust that also
//! builds and is tested on the host; everything that touches the processor
//! lives under [`arch`].
//!
//! What it trusts: the boot responses (checked where cheap), the hardware.
//! What it must never do: panic, hang or corrupt memory because of anything
//! user space or a guest does.

#![cfg_attr(not(any(test, feature = "fuzzing")), no_std)]

#[cfg(not(strata_baremetal))]
extern crate alloc;

// memcpy and the other C functions the precompiled `core` calls, for the
// kernel and for the loader, which links this crate.
use strata_mem as _;

pub mod addr;
pub mod arch;
pub mod boot;
pub mod cmdline;
pub mod console;
pub mod frame;
pub mod interrupts;
pub mod object;
pub mod rootserver;
pub mod run;
#[cfg(feature = "selftest")]
pub mod selftest;
pub mod syscall;
