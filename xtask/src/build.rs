//! Building: host crates normally, bare-metal crates for the host triple
//! with their own flags and target directories (TOOLCHAIN.md: there is no
//! bare-metal target or `rust-src` on these machines).

use std::path::PathBuf;
use std::process::Command;

use crate::step::{self, Result};
use crate::{fail, root};

/// The only target available; bare-metal code is built for it with
/// `#![no_std]`, `#![no_main]`, a linker script and no libc.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Which kernel an image carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// The kernel as shipped, the root task (`servers/root`) and the
    /// `hello` child process.
    Production,
    /// The self-test kernel, the root task ending the run when its children
    /// are done, and child processes that work and that crash.
    System,
    /// The kernel with its self tests (feature `selftest`) and the test root task.
    SelfTest,
    /// The self-test kernel with the benchmark root task.
    Bench,
    /// The kernel with the debug exit, the root task ending the run when
    /// its children are done, `strata-vmm` (one per tenant), `hello` and
    /// the test guests.
    Vm,
}

/// Paths of the bare-metal binaries.
pub struct BareMetal {
    /// The loader ELF.
    pub loader: PathBuf,
    /// The kernel ELF.
    pub kernel: PathBuf,
    /// The root task ELF, if the image has one.
    pub root_task: Option<PathBuf>,
    /// Further programs, as (module name, ELF): the root task's children.
    pub programs: Vec<(&'static str, PathBuf)>,
}

/// Linker scripts.
const KERNEL_SCRIPT: &str = "kernel/link.ld";
const LOADER_SCRIPT: &str = "loader/link.ld";
const USER_SCRIPT: &str = "servers/rt/user.ld";
const GUEST_SCRIPT: &str = "tests/guests/guest.ld";
const BOOT_SECTOR_SCRIPT: &str = "tests/guests/bootsector.ld";
const ELF64_SCRIPT: &str = "tests/guests/elf64.ld";

/// The test guests: (module name, package).
pub const GUESTS: [(&str, &str); 1] = [("guest-basic", "strata-guest-basic")];

/// The cargo that runs xtask (or `cargo`).
pub(crate) fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// A cargo command (`build`, `clippy`) for one bare-metal binary, with its
/// flags and its own target directory.
fn bare_command(
    subcommand: &str,
    package: &str,
    features: &[&str],
    target_dir: &str,
    kernel_code_model: bool,
    script: &str,
) -> Command {
    // Static relocation (no GOT); the kernel is linked at -2 GiB and needs
    // the kernel code model; frame pointers make fault reports readable.
    let mut flags: Vec<&str> =
        vec!["-C", "relocation-model=static", "-C", "force-frame-pointers=yes", "--cfg", "strata_baremetal"];
    if kernel_code_model {
        flags.extend(["-C", "code-model=kernel"]);
    } else {
        // User programs travel as boot modules and are copied page by page:
        // without their line tables they are a third of the size.
        flags.extend(["-C", "strip=debuginfo"]);
    }
    // Link arguments (used only when a binary is linked): no C runtime, no
    // libc, a static image laid out by the crate's own linker script.
    let script = root().join(script);
    let script_arg = format!("link-arg=-Wl,-T,{}", script.display());
    for arg in [
        "link-arg=-nostartfiles",
        "link-arg=-nostdlib",
        "link-arg=-static",
        "link-arg=-Wl,--no-dynamic-linker",
        "link-arg=-Wl,--build-id=none",
        "link-arg=-Wl,--gc-sections",
        &script_arg,
    ] {
        flags.extend(["-C", arg]);
    }
    let mut command = cargo();
    command
        .current_dir(root())
        .args([subcommand, "--release", "--package", package, "--bin", package])
        .args(["--target", TARGET])
        .arg("--target-dir")
        .arg(root().join("target/bare").join(target_dir))
        // Flags for the target only: with an explicit --target they do not
        // reach build scripts and proc-macros, which must stay host code.
        .env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS", flags.join(" "))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    if !features.is_empty() {
        command.args(["--features", &features.join(",")]);
    }
    command
}

/// Builds one bare-metal binary and returns its path.
fn bare(
    package: &str,
    features: &[&str],
    target_dir: &str,
    kernel_code_model: bool,
    script: &str,
) -> Result<PathBuf> {
    step::run(&mut bare_command("build", package, features, target_dir, kernel_code_model, script))?;
    let dir = root().join("target/bare").join(target_dir);
    let binary = dir.join(TARGET).join("release").join(package);
    if !binary.is_file() {
        return Err(fail!("cargo reported success but {} does not exist", binary.display()));
    }
    Ok(binary)
}

/// Cuts the 512-byte boot sector at 7C00h out of the linked ELF file
/// `elf` and writes it next to it as `.bin`.
fn boot_sector(elf: &std::path::Path) -> Result<PathBuf> {
    let file = std::fs::read(elf).map_err(|e| fail!("reading {}: {e}", elf.display()))?;
    let plan = strata_abi::elf::plan(&file, 0..0x10000).map_err(|e| fail!("{}: {e}", elf.display()))?;
    let page = plan.page_bytes(&file, 0x7000);
    let sector = &page[0xc00..0xe00];
    if sector[510..] != [0x55, 0xaa] {
        return Err(fail!("{}: no boot signature at 7DFEh (bootsector.ld)", elf.display()));
    }
    let path = elf.with_extension("bin");
    std::fs::write(&path, sector).map_err(|e| fail!("writing {}: {e}", path.display()))?;
    Ok(path)
}

/// Builds the loader and the kernel of `flavor`.
pub fn bare_metal(flavor: Flavor) -> Result<BareMetal> {
    let started =
        step::begin(format!("building the bare-metal loader and {flavor:?} kernel ({TARGET}, no_std)"));
    let loader = bare("strata-loader", &[], "loader", false, LOADER_SCRIPT)?;
    let user = |package: &str, features: &[&str]| bare(package, features, "user", false, USER_SCRIPT);
    let mut programs = Vec::new();
    let (kernel, root_task) = match flavor {
        Flavor::Production => {
            programs.push(("hello", user("strata-hello", &[])?));
            (bare("strata-kernel", &[], "kernel", true, KERNEL_SCRIPT)?, Some(user("strata-root", &[])?))
        }
        Flavor::System => {
            programs.push(("hello", user("strata-hello", &[])?));
            programs.push(("crasher", user("strata-tests-crasher", &[])?));
            (
                bare("strata-kernel", &["debug-exit"], "kernel-system", true, KERNEL_SCRIPT)?,
                // Its own target directory: the feature changes the binary.
                Some(bare("strata-root", &["exit-when-done"], "user-system", false, USER_SCRIPT)?),
            )
        }
        Flavor::SelfTest => (
            bare("strata-kernel", &["selftest"], "kernel-selftest", true, KERNEL_SCRIPT)?,
            Some(bare("strata-tests-root", &[], "user", false, USER_SCRIPT)?),
        ),
        Flavor::Bench => (
            bare("strata-kernel", &["selftest"], "kernel-selftest", true, KERNEL_SCRIPT)?,
            Some(bare("strata-tests-bench", &[], "user", false, USER_SCRIPT)?),
        ),
        Flavor::Vm => {
            programs.push(("hello", user("strata-hello", &[])?));
            programs.push(("crasher", user("strata-tests-crasher", &[])?));
            for (name, package) in GUESTS {
                programs.push((name, bare(package, &[], "guest", false, GUEST_SCRIPT)?));
            }
            let elf = bare("strata-guest-bootsector", &[], "guest", false, BOOT_SECTOR_SCRIPT)?;
            programs.push(("guest-bootsector", boot_sector(&elf)?));
            programs.push(("guest-elf64", bare("strata-guest-elf64", &[], "guest", false, ELF64_SCRIPT)?));
            programs.push(("vmm", user("strata-vmm", &[])?));
            (
                bare("strata-kernel", &["debug-exit"], "kernel-system", true, KERNEL_SCRIPT)?,
                Some(bare("strata-root", &["exit-when-done"], "user-system", false, USER_SCRIPT)?),
            )
        }
    };
    step::end(started, "bare-metal binaries built");
    Ok(BareMetal { loader, kernel, root_task, programs })
}

/// Formatting and clippy, on the host crates and on the bare-metal code
/// (which a host build does not compile: it is behind `cfg(strata_baremetal)`).
pub fn lint() -> Result {
    let started = step::begin("lint: rustfmt, clippy (host), clippy (bare-metal kernel and loader)");
    step::run(cargo().current_dir(root()).args(["fmt", "--all", "--", "--check"]))?;
    step::run(cargo().current_dir(root()).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    for mut command in [
        bare_command("clippy", "strata-loader", &[], "clippy-loader", false, LOADER_SCRIPT),
        bare_command("clippy", "strata-kernel", &["selftest"], "clippy-kernel", true, KERNEL_SCRIPT),
        bare_command("clippy", "strata-tests-root", &[], "clippy-user", false, USER_SCRIPT),
        bare_command("clippy", "strata-tests-bench", &[], "clippy-user", false, USER_SCRIPT),
        bare_command("clippy", "strata-root", &["exit-when-done"], "clippy-user", false, USER_SCRIPT),
        bare_command("clippy", "strata-hello", &[], "clippy-user", false, USER_SCRIPT),
        bare_command("clippy", "strata-tests-crasher", &[], "clippy-user", false, USER_SCRIPT),
        bare_command("clippy", "strata-vmm", &[], "clippy-user", false, USER_SCRIPT),
        bare_command("clippy", "strata-guest-basic", &[], "clippy-guest", false, GUEST_SCRIPT),
        bare_command("clippy", "strata-guest-bootsector", &[], "clippy-guest", false, BOOT_SECTOR_SCRIPT),
        bare_command("clippy", "strata-guest-elf64", &[], "clippy-guest", false, ELF64_SCRIPT),
    ] {
        command.args(["--", "-D", "warnings"]);
        step::run(&mut command)?;
    }
    step::end(started, "lint clean");
    Ok(())
}

/// Builds every host crate (xtask, harness, and the host builds of the rest).
pub fn host() -> Result {
    let started = step::begin("building host crates");
    step::run(cargo().current_dir(root()).args(["build", "--workspace", "--all-targets"]))?;
    step::end(started, "host crates built");
    Ok(())
}
