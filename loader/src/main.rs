//! The bare-metal loader binary: entry from the bootloader, long mode, the
//! serial console, and the final jump. The logic lives in the library.

#![cfg_attr(strata_baremetal, no_std, no_main)]

#[cfg(strata_baremetal)]
mod boot;

#[cfg(not(strata_baremetal))]
fn main() {
    eprintln!("strata-loader is a bare-metal program; build a boot image with `cargo xtask image`");
    std::process::exit(2);
}
