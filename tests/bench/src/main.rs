//! The benchmark root task: measures kernel paths from user mode and
//! prints one `BENCH` line per metric. Under QEMU's `-icount shift=0` the
//! TSC advances once per instruction, so RDTSC differences are exact
//! instruction counts that repeat from run to run.
//!
//! Heavy instructions (those icount charges as one but that cost far
//! more on hardware) come from the kernel's own counters of CR3 writes
//! and FPU saves and restores.

#![cfg_attr(strata_baremetal, no_std, no_main)]

#[cfg(strata_baremetal)]
mod bench;

#[cfg(not(strata_baremetal))]
fn main() {
    eprintln!("strata-tests-bench is a user program for strata; `cargo xtask bench` builds and boots it");
    std::process::exit(2);
}
