//! `cargo xtask fuzz [TARGET] [--time SECONDS]`: runs the cargo-fuzz
//! targets in `tests/fuzz` (libFuzzer with AddressSanitizer, on the nightly
//! toolchain), each from its seed corpus, for the given time. `cargo xtask
//! test` runs every target briefly.
//!
//! The seed corpora (`tests/fuzz/corpus/<target>`) stay as committed: each
//! run works on a copy under `target/fuzz/`. A crash's input is copied to
//! `tests/fuzz/regressions/<target>/`, where the host tests replay it from
//! then on, and the run fails.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::build::cargo;
use crate::step::{self, Result};
use crate::{fail, root};

/// The targets, in the order they run.
pub const TARGETS: [&str; 7] = ["cap_abi", "decode", "archive", "elf", "boot_info", "acpi", "guest_image"];

/// Arguments of `cargo xtask fuzz`.
#[derive(clap::Args)]
pub struct FuzzArgs {
    /// One target (default: all of them).
    target: Option<String>,
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    time: u64,
}

/// Checks for the nightly toolchain and cargo-fuzz; installs cargo-fuzz
/// if it is missing.
pub fn ensure_tools() -> Result {
    let nightly = Command::new("rustup").args(["run", "nightly", "rustc", "--version"]).output();
    if !nightly.is_ok_and(|o| o.status.success()) {
        return Err(fail!(
            "the fuzz targets need the nightly toolchain (sanitizers, libFuzzer); install it with `rustup toolchain install nightly`"
        ));
    }
    let installed = cargo().args(["fuzz", "--version"]).output().is_ok_and(|o| o.status.success());
    if !installed {
        let started = step::begin("installing cargo-fuzz (cargo install cargo-fuzz --locked)");
        step::run(cargo().args(["install", "cargo-fuzz", "--locked"])).map_err(|e| {
            fail!("{e}\n    cargo-fuzz is missing and could not be installed: run `cargo install cargo-fuzz`")
        })?;
        step::end(started, "cargo-fuzz installed");
    }
    Ok(())
}

fn fuzz_dir() -> PathBuf {
    root().join("tests/fuzz")
}

/// Builds every target once (the runs then start at once).
fn build() -> Result {
    let started = step::begin("building the fuzz targets (nightly, AddressSanitizer)");
    step::run(
        Command::new("rustup")
            .current_dir(root())
            .args(["run", "nightly", "cargo", "fuzz", "build", "--fuzz-dir"])
            .arg(fuzz_dir())
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO")
            .env_remove("RUSTC"),
    )?;
    step::end(started, "fuzz targets built");
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result {
    fs::create_dir_all(to)?;
    if let Ok(entries) = fs::read_dir(from) {
        for entry in entries.flatten() {
            if entry.path().is_file() {
                fs::copy(entry.path(), to.join(entry.file_name()))?;
            }
        }
    }
    Ok(())
}

/// Runs `target` for `seconds`. A crash's input is kept as a regression
/// input and the run fails.
fn run_target(target: &str, seconds: u64) -> Result {
    let corpus = root().join("target/fuzz/corpus").join(target);
    let artifacts = root().join("target/fuzz/artifacts").join(target);
    copy_dir(&fuzz_dir().join("corpus").join(target), &corpus)?;
    copy_dir(&fuzz_dir().join("regressions").join(target), &corpus)?;
    let _ = fs::remove_dir_all(&artifacts);
    fs::create_dir_all(&artifacts)?;
    let started = step::begin(format!("fuzzing {target} for {seconds} s"));
    let status = Command::new("rustup")
        .current_dir(root())
        .args(["run", "nightly", "cargo", "fuzz", "run", "--fuzz-dir"])
        .arg(fuzz_dir())
        .arg(target)
        .arg(&corpus)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .status()
        .map_err(|e| fail!("cannot run cargo fuzz: {e}"))?;
    let crashes: Vec<PathBuf> =
        fs::read_dir(&artifacts).into_iter().flatten().flatten().map(|e| e.path()).collect();
    if !crashes.is_empty() {
        let kept = fuzz_dir().join("regressions").join(target);
        fs::create_dir_all(&kept)?;
        for crash in &crashes {
            if let Some(name) = crash.file_name() {
                fs::copy(crash, kept.join(name))?;
            }
        }
        return Err(fail!(
            "fuzz target {target} found {} crashing input(s), kept in {} (replayed by the host tests)",
            crashes.len(),
            kept.display()
        ));
    }
    if !status.success() {
        return Err(fail!("fuzz target {target} failed ({status})"));
    }
    step::end(started, format!("{target}: no crash"));
    Ok(())
}

/// Runs the selected targets. Returns how many ran without a crash and how
/// many failed.
pub fn run_targets(only: Option<&str>, seconds: u64) -> Result<(usize, usize)> {
    if let Some(name) = only
        && !TARGETS.contains(&name)
    {
        return Err(fail!("no fuzz target {name}; the targets are {}", TARGETS.join(", ")));
    }
    ensure_tools()?;
    build()?;
    let (mut passed, mut failed) = (0, 0);
    for target in TARGETS.iter().filter(|t| only.is_none_or(|o| o == **t)) {
        match run_target(target, seconds) {
            Ok(()) => passed += 1,
            Err(error) => {
                println!("    {error}");
                failed += 1;
            }
        }
    }
    Ok((passed, failed))
}

/// `cargo xtask fuzz`.
pub fn run(args: &FuzzArgs) -> Result {
    let (passed, failed) = run_targets(args.target.as_deref(), args.time)?;
    println!("fuzz: {passed} passed, {failed} failed");
    if failed == 0 { Ok(()) } else { Err(fail!("{failed} fuzz target(s) crashed")) }
}
