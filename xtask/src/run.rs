//! `cargo xtask run`: boot the image in QEMU with the serial console on the
//! terminal.

use std::process::Stdio;

use strata_abi::exit::ExitCode;
use strata_tests::emulator::{QemuBoot, qemu_command};

use crate::image::{self, Kind};
use crate::step::{self, Result};
use crate::{fail, setup};

/// Options of `cargo xtask run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Boot the GRUB ISO (BIOS, multiboot2) instead of QEMU's direct PVH boot.
    #[arg(long)]
    iso: bool,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    memory: u32,
    /// Kernel command line for the direct boot (the ISO carries its own).
    #[arg(long, default_value = image::DEFAULT_CMDLINE)]
    append: String,
    /// Boot the two tenants of `systems/tenants.toml`, each a strata-vmm
    /// with its own test guests, instead of the root task and `hello` (the
    /// run ends when the tenants have).
    #[arg(long, conflicts_with = "system")]
    vm: bool,
    /// Boot the system this description (TOML, see
    /// docs/system-description.md) describes; the run ends when its
    /// processes have.
    #[arg(long, value_name = "FILE")]
    system: Option<std::path::PathBuf>,
}

/// Builds the image and boots it until QEMU exits or Ctrl-C.
pub fn run(args: &RunArgs) -> Result {
    setup::ensure()?;
    let kind = match (&args.system, args.vm) {
        (Some(path), _) => Kind::Custom { description: path.clone() },
        (None, true) => Kind::Vm,
        (None, false) => Kind::Production,
    };
    let image = image::build(kind)?;
    let boot = if args.iso {
        QemuBoot::Iso { iso: image.iso.clone() }
    } else {
        QemuBoot::Direct { elf: image.elf.clone(), initrd: image.initrd.clone(), append: args.append.clone() }
    };
    let mut command = qemu_command(&boot, args.memory, &[]);
    println!("==> {}", step::describe(&command));
    println!("    serial console follows; Ctrl-C quits QEMU\n");
    // Ctrl-C reaches QEMU directly (same process group) and QEMU exits; the
    // handler keeps xtask alive to report that cleanly.
    ctrlc::set_handler(|| {}).map_err(|e| fail!("cannot install the Ctrl-C handler: {e}"))?;
    let status = command
        .stdin(Stdio::inherit())
        .status()
        .map_err(|e| fail!("cannot start QEMU: {e} (run `cargo xtask setup`)"))?;
    println!();
    match status.code().map(|code| (code, ExitCode::from_qemu_status(code))) {
        Some((_, Some(ExitCode::Success))) => {
            println!("==> the kernel finished and shut the machine down")
        }
        Some((_, Some(code))) => {
            return Err(fail!("the image stopped with {code:?} (see the serial output above)"));
        }
        Some((0, None)) | None => println!("==> QEMU stopped (Ctrl-C or window closed)"),
        Some((code, None)) => return Err(fail!("QEMU exited with status {code}")),
    }
    Ok(())
}
