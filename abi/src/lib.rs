//! The interfaces strata's components agree on: system calls, object types
//! and rights, invocation labels and errors, the message info word, the
//! boot-module archive the image builder writes and the loader reads, the
//! line protocol in-emulator test suites report through, and the exit codes
//! a test kernel ends with.
//!
//! This crate is a leaf: `no_std`, free of `unsafe`, with no dependency on the
//! kernel. Every layout is defined once here; the kernel, the loader, the
//! servers and `xtask` all use these definitions rather than restating them.
//! Nothing here trusts its input: every parser returns an error enum whose
//! variants carry the data needed for a clear message.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

#[cfg(any(feature = "alloc", test))]
extern crate alloc;

pub mod acpi;
pub mod archive;
pub mod bootinfo;
pub mod elf;
pub mod error;
pub mod exit;
pub mod fault;
pub mod invocation;
pub mod ktest;
pub mod message;
pub mod object;
pub mod syscall;
pub mod system;
pub mod vcpu;
