//! `cargo xtask`: everything needed to build, boot and test strata.
//!
//! Builds bare-metal crates for the host triple with their own flags and
//! target directories (TOOLCHAIN.md), packs boot images, installs or checks
//! the emulator prerequisites, boots QEMU interactively, and runs the host
//! and emulator test suites.

#![forbid(unsafe_code)]

mod bench;
mod build;
mod fuzz;
mod image;
mod run;
mod setup;
mod step;
mod system;
mod tcb;
mod test;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// strata's build and test driver.
#[derive(Parser)]
#[command(name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check the emulator and image prerequisites; install missing ones with apt when run as root.
    Setup,
    /// Build the host crates and the bare-metal kernel and loader.
    Build,
    /// Build the boot image: target/image/strata.elf (QEMU -kernel), strata.initrd and strata.iso (GRUB).
    Image,
    /// Boot the image in QEMU with the serial console on this terminal (Ctrl-C quits).
    Run(run::RunArgs),
    /// Run the host tests and the emulator suites (QEMU for SVM hosts, Bochs for VMX hosts).
    Test(test::TestArgs),
    /// Check formatting and run clippy on host and bare-metal code (warnings are errors).
    Lint,
    /// Measure kernel paths in QEMU instruction counts; writes target/bench/bench.json.
    Bench,
    /// Fuzz the capability ABI, the decoders and the parsers (cargo-fuzz, nightly).
    Fuzz(fuzz::FuzzArgs),
    /// Count the privileged code (kernel and linked crates) and the kernel's sections; writes
    /// target/tcb.json and fails over the line budget.
    Tcb,
}

/// The workspace root (the parent of this crate's directory).
pub fn root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::ensure(),
        Command::Build => build::host().and_then(|()| build::bare_metal(build::Flavor::Production).map(drop)),
        Command::Image => image::build(image::Kind::Production).map(|image| image.describe()),
        Command::Run(args) => run::run(&args),
        Command::Test(args) => test::run(&args),
        Command::Tcb => tcb::run(),
        Command::Fuzz(args) => fuzz::run(&args),
        Command::Lint => build::lint(),
        Command::Bench => bench::run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
