//! strata-kernel: the privileged core of strata.
pub mod arch;
