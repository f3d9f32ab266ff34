//! strata-kernel: the privileged core of strata.
#![cfg_attr(not(test), no_std)]
pub mod arch;
