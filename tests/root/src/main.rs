//! The test root task: the first user program of a test image. It drives
//! the kernel through its real system calls and reports one `KTEST` line
//! per case (suite `user`), then ends the run.
//!
//! `unsafe` here is test code poking memory it just mapped, and setting SSE
//! registers around a system call; the programs strata ships use none.

#![cfg_attr(strata_baremetal, no_std, no_main)]

#[cfg(strata_baremetal)]
mod cases;

#[cfg(not(strata_baremetal))]
fn main() {
    eprintln!("strata-tests-root is a user program for strata; `cargo xtask test` builds and boots it");
    std::process::exit(2);
}
