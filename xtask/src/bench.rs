//! `cargo xtask bench`: boots the benchmark image in QEMU with
//! `-icount shift=0,sleep=off`, so that the TSC counts executed
//! instructions and every figure repeats exactly. It runs twice and
//! insists the two runs agree, then boots it once in Bochs for the VM-exit
//! figures on Intel VMX (`*_vmx`; Bochs's TSC also advances one tick per
//! instruction), and writes `target/bench/bench.json`:
//! metric name -> `{ "instructions": median, "heavy": { instruction: count per run } }`.

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

use strata_abi::exit::ExitCode;
use strata_tests::emulator::{self, QemuBoot, qemu_command};
use strata_tests::judge::{Exit, tail};

use crate::image::{self, Kind};
use crate::step::{self, Result};
use crate::{fail, root, setup};

/// One measured metric.
#[derive(Debug, Clone, PartialEq)]
struct Metric {
    instructions: u64,
    heavy: BTreeMap<&'static str, f64>,
}

/// Parses `BENCH name instructions=N ... cr3=x xsave=y xrstor=z` lines.
fn parse(serial: &str) -> Result<BTreeMap<String, Metric>> {
    let mut metrics = BTreeMap::new();
    let mut done = false;
    for line in serial.lines().filter_map(|l| l.trim_end().strip_prefix("BENCH ")) {
        let mut words = line.split_whitespace();
        let name = words.next().unwrap_or_default();
        if name == "done" {
            done = true;
            continue;
        }
        if name == "error" {
            return Err(fail!("the benchmark failed: {line}"));
        }
        let fields: BTreeMap<&str, &str> = words.filter_map(|w| w.split_once('=')).collect();
        let number = |key: &str| -> Result<f64> {
            fields
                .get(key)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| fail!("BENCH line for {name} lacks a numeric {key}: {line}"))
        };
        let heavy = BTreeMap::from([
            ("MOV CR3", number("cr3")?),
            ("XSAVE64", number("xsave")?),
            ("XRSTOR64", number("xrstor")?),
        ]);
        metrics.insert(name.to_owned(), Metric { instructions: number("instructions")? as u64, heavy });
    }
    if !done {
        return Err(fail!("the benchmark did not finish (no `BENCH done` line)"));
    }
    Ok(metrics)
}

fn run_once(image: &image::Image) -> Result<BTreeMap<String, Metric>> {
    let boot = QemuBoot::Direct {
        elf: image.elf.clone(),
        initrd: image.initrd.clone(),
        append: "log=warn ktest.token=bench".into(),
    };
    let extra = ["-icount".to_owned(), "shift=0,sleep=off".to_owned()];
    let outcome = emulator::run(qemu_command(&boot, 256, &extra), None, Duration::from_secs(600))?;
    let metrics = parse(&outcome.serial)
        .map_err(|e| fail!("{e}\n--- serial log (last 30 lines) ---\n{}", tail(&outcome.serial, 30)));
    if outcome.exit != Exit::Status(ExitCode::Success.qemu_status()) {
        return Err(fail!(
            "the benchmark image ended with {:?}\n{}",
            outcome.exit,
            tail(&outcome.serial, 30)
        ));
    }
    metrics
}

/// Boots the benchmark ISO in Bochs (Intel VMX), whose TSC advances one
/// tick per instruction, and returns its VM-exit metrics, renamed `*_vmx`.
fn run_bochs(image: &image::Image) -> Result<BTreeMap<String, Metric>> {
    let dir = root().join("target/emu/bench-bochs");
    let (command, serial) = emulator::bochs_command(&image.iso, &dir, 256)?;
    let outcome = emulator::run(command, Some(&serial), Duration::from_secs(900))?;
    let metrics = parse(&outcome.serial).map_err(|e| {
        fail!("Bochs: {e}\n--- serial log (last 30 lines) ---\n{}", tail(&outcome.serial, 30))
    })?;
    Ok(metrics
        .into_iter()
        .filter(|(name, _)| name.starts_with("vmexit"))
        .map(|(name, metric)| (format!("{name}_vmx"), metric))
        .collect())
}

/// Builds the benchmark image, runs it twice, checks the runs agree, and
/// writes the JSON.
pub fn run() -> Result {
    setup::ensure()?;
    let image = image::build(Kind::Bench)?;
    let started =
        step::begin("benchmark: QEMU TCG with -icount shift=0,sleep=off (instructions, exact), two runs");
    let first = run_once(&image)?;
    let second = run_once(&image)?;
    if first != second {
        return Err(fail!("two runs gave different figures: {first:?} and {second:?}"));
    }
    let mut first = first;
    first.extend(run_bochs(&image)?);
    println!("    {:<32} {:>12} {:>8} {:>8} {:>9}", "metric", "instructions", "MOV CR3", "XSAVE", "XRSTOR");
    for (name, metric) in &first {
        println!(
            "    {:<32} {:>12} {:>8} {:>8} {:>9}",
            name,
            metric.instructions,
            metric.heavy["MOV CR3"],
            metric.heavy["XSAVE64"],
            metric.heavy["XRSTOR64"]
        );
    }
    let json: serde_json::Map<String, serde_json::Value> = first
        .iter()
        .map(|(name, metric)| {
            (name.clone(), serde_json::json!({ "instructions": metric.instructions, "heavy": metric.heavy }))
        })
        .collect();
    let directory = root().join("target/bench");
    fs::create_dir_all(&directory)?;
    let path = directory.join("bench.json");
    let text = serde_json::to_string_pretty(&json).map_err(|e| fail!("writing JSON: {e}"))?;
    fs::write(&path, text + "\n")?;
    step::end(started, format!("wrote {} (the two runs agreed exactly)", path.display()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_lines_parse_and_a_missing_done_line_fails() {
        let log = "noise\nBENCH null_syscall instructions=120 min=119 max=130 cr3=0.0 xsave=1.0 xrstor=1.0\nBENCH done\n";
        let metrics = parse(log).expect("parses");
        assert_eq!(metrics["null_syscall"].instructions, 120);
        assert_eq!(metrics["null_syscall"].heavy["XSAVE64"], 1.0);
        assert!(parse("BENCH null_syscall instructions=1 cr3=0 xsave=1 xrstor=1\n").is_err());
        assert!(parse("BENCH x instructions=oops cr3=0 xsave=0 xrstor=0\nBENCH done\n").is_err());
        assert!(parse("BENCH error endpoint: boom\nBENCH done\n").is_err());
    }
}
