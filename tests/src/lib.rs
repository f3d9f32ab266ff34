//! The emulator test harness: boots strata images in QEMU (AMD SVM host)
//! and Bochs (Intel VMX host) with a timeout, captures the serial console
//! and judges each run from the `KTEST` lines the image prints
//! (`strata_abi::ktest`).
//!
//! A run passes only if every expected case reported `pass` (and passed the
//! harness's own checks of its figures), the image's summary agrees with
//! what the harness counted, no fatal marker appeared, the run ended by
//! itself within its time, and (on QEMU) the exit status says success.
//! `cargo xtask test` drives it; the logic is here so that it is tested on
//! the host, including logs that must be judged failures.

#![forbid(unsafe_code)]

pub mod emulator;
pub mod judge;
