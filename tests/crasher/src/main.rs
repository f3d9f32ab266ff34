//! A child process that panics on purpose. A panic in a strata program is
//! logged (through the parent) and becomes a fault, which the parent, as
//! fault handler, must report, end and restart.

#![cfg_attr(strata_baremetal, no_std, no_main)]
#![deny(unsafe_code)]

#[cfg(strata_baremetal)]
mod child {
    use strata_rt::logger::{self, Output};

    strata_rt::entry!(main);

    fn main() -> ! {
        logger::init(Output::Parent, log::LevelFilter::Info);
        log::info!("about to crash on purpose");
        panic!("deliberate crash")
    }
}

#[cfg(not(strata_baremetal))]
fn main() {
    eprintln!("strata-tests-crasher is a strata child process; the root task starts it from a boot module");
    std::process::exit(2);
}
