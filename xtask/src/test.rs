//! `cargo xtask test`: host tests, then the emulator suites.
//!
//! Every suite prints `<suite>: N passed, N failed`; the run ends with
//! `total: N passed, N failed` and fails if anything failed.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use strata_abi::archive::{Builder, EntryKind};
use strata_abi::exit::ExitCode;
use strata_tests::emulator::{self, QemuBoot, qemu_command};
use strata_tests::judge::{self, DetailCheck, Expectation, Outcome, Verdict, tail};

use crate::image::{self, Image, Kind};
use crate::step::{self, Result};
use crate::{fail, root, setup};

/// Options of `cargo xtask test`.
#[derive(clap::Args)]
pub struct TestArgs {
    /// Run only the host tests.
    #[arg(long, conflicts_with = "emulator_only")]
    host_only: bool,
    /// Run only the emulator suites.
    #[arg(long)]
    emulator_only: bool,
    /// Run only the emulator suites whose name contains this text.
    #[arg(long)]
    suite: Option<String>,
    /// Seed of the in-emulator system-call fuzzer (hexadecimal; default: a
    /// fresh one each run, printed in its case's line).
    #[arg(long, value_parser = parse_seed)]
    fuzz_seed: Option<u64>,
    /// Seconds each cargo-fuzz target runs (suite `fuzz`; 0 skips them).
    #[arg(long, default_value_t = 30)]
    fuzz_time: u64,
}

fn parse_seed(text: &str) -> std::result::Result<u64, String> {
    u64::from_str_radix(text.trim_start_matches("0x"), 16).map_err(|e| format!("not a hexadecimal seed: {e}"))
}

/// Counts across the whole run.
#[derive(Default)]
struct Totals {
    passed: usize,
    failed: usize,
}

const QEMU_MEMORY_MIB: u32 = 256;
const BOCHS_MEMORY_MIB: u32 = 128;
const QEMU_TIMEOUT: Duration = Duration::from_secs(90);
const BOCHS_TIMEOUT: Duration = Duration::from_secs(240);
/// The cases every self-test image must report.
const BOOT_CASES: [&str; 79] = [
    "boot.loader",
    "boot.cmdline",
    "boot.memory_map",
    "boot.frames",
    "boot.modules",
    "boot.acpi",
    "boot.breakpoint",
    "boot.timer",
    "boot.virtualization",
    // The test root task, from user mode.
    "user.boot_info",
    "user.retype",
    "user.cnode",
    "user.lookup_errors",
    "user.frame_map",
    "user.thread_switch",
    "user.preemption",
    "user.fault_suspends",
    "user.ipc_same_space",
    "user.ipc_cross_space",
    "user.ipc_fastpath",
    "user.ipc_fastpath_lengths",
    "user.ipc_fastpath_priorities",
    "user.ipc_overlapping_buffers",
    "user.thread_without_vspace_faults",
    "user.notification",
    "user.fault_handler",
    "user.io_ports",
    "user.irq_notification",
    "user.tcb_read_registers",
    "user.untyped_errors",
    "user.untyped_revoke_resets",
    "user.revoke_large_tree",
    "user.delete_blocked_thread",
    "user.priority_order",
    "user.wake_preempts_lower_priority",
    "user.priority_errors",
    "user.configure_errors",
    "user.suspend_resume",
    "user.bound_notification",
    "user.nb_send_drops",
    "user.fpu_across_ipc",
    "user.syscall_fault",
    "user.frame_large",
    "user.paging_errors",
    "user.rights_errors",
    "user.io_port_widths",
    "user.irq_errors",
    "user.cnode_refusals",
    "user.retype_alignment",
    "user.delete_cnode_with_contents",
    "user.yield_keeps_priority",
    "user.signal_before_wait",
    "user.revoke_untyped_with_thread",
    "user.cap_transfer",
    "user.exception_divide",
    "user.exception_breakpoint",
    "user.exception_privileged",
    "user.int_gate_refused",
    "user.ipc_without_right_faults",
    "user.deleted_endpoint_restarts_waiter",
    "user.unmap_seen_by_thread",
    "user.frame_remap_rights",
    "user.asid_errors",
    "user.guarded_lookup",
    "user.server_many_clients",
    "user.round_robin",
    "user.delete_running_thread",
    "user.fpu_across_preemption",
    "user.syscall_at_top_of_user_space",
    "user.vcpu_errors",
    "user.vm_exits",
    "user.vm_exit_restores_gdt",
    "user.vm_host_interrupts",
    "user.vm_enter_ends_on_signal",
    "user.vm_guest_xcr0",
    "user.vm_pkru_is_the_guests",
    "user.vm_fastpath_closes",
    "user.vm_tags_keep_translations",
    "user.syscall_fuzz",
];

/// Runs the selected tests.
pub fn run(args: &TestArgs) -> Result {
    let mut totals = Totals::default();
    if !args.emulator_only {
        host_tests(&mut totals)?;
    }
    let fuzz_selected = args.suite.as_deref().is_none_or(|s| "fuzz".contains(s) || s.contains("fuzz"));
    if !args.emulator_only && !args.host_only && fuzz_selected && args.fuzz_time > 0 {
        let (passed, failed) = crate::fuzz::run_targets(None, args.fuzz_time)?;
        println!("fuzz: {passed} passed, {failed} failed");
        totals.passed += passed;
        totals.failed += failed;
    }
    if !args.host_only {
        setup::ensure()?;
        emulator_suites(args.suite.as_deref(), args.fuzz_seed, &mut totals)?;
    }
    println!("\ntotal: {} passed, {} failed", totals.passed, totals.failed);
    if totals.failed == 0 { Ok(()) } else { Err(fail!("{} test(s) failed", totals.failed)) }
}

/// `cargo test --workspace`, echoing its output and adding up its counts.
fn host_tests(totals: &mut Totals) -> Result {
    let started = step::begin("host tests (cargo test --workspace)");
    let mut child = crate::build::cargo()
        .current_dir(root())
        .args(["test", "--workspace"])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| fail!("cannot run cargo test: {e}"))?;
    let (mut passed, mut failed) = (0, 0);
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(std::io::Result::ok) {
            println!("{line}");
            if let Some(counts) = line.strip_prefix("test result: ") {
                passed += count_before(counts, " passed");
                failed += count_before(counts, " failed");
            }
        }
    }
    let status = child.wait()?;
    if !status.success() && failed == 0 {
        // A build failure: no test ran, but the run must not look clean.
        failed += 1;
        println!("host: cargo test failed before running tests ({status})");
    }
    println!("host: {passed} passed, {failed} failed");
    step::end(started, "host tests done");
    totals.passed += passed;
    totals.failed += failed;
    Ok(())
}

/// The number before `label` in a libtest summary (`ok. 5 passed; 0 failed; ...`).
fn count_before(text: &str, label: &str) -> usize {
    text.split(';')
        .find_map(|part| {
            part.trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
                .strip_suffix(label.trim_start())
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// A token only this run knows: the image must echo it back.
fn fresh_token() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{:x}", (nanos as u64) ^ (u64::from(std::process::id()) << 32))
}

/// The virtualization each emulator offers (TOOLCHAIN.md): QEMU TCG has SVM
/// with nested paging, Bochs's Skylake-X has VMX with EPT.
fn virtualization_checks(bochs: bool) -> [DetailCheck; 3] {
    let (backend, feature) = if bochs { ("vmx", "ept") } else { ("svm", "nested_paging") };
    [
        DetailCheck::field("boot.virtualization", "backend", move |value| {
            if value == backend { Ok(()) } else { Err(format!("expected {backend} on this machine")) }
        }),
        DetailCheck::field("boot.virtualization", feature, |value| {
            if value == "1" { Ok(()) } else { Err("expected it present on this machine".into()) }
        }),
        DetailCheck::field("boot.virtualization", "on", |value| {
            if value == "1" { Ok(()) } else { Err("SVM or VMX was not turned on".into()) }
        }),
    ]
}

fn boot_expectation(token: &str, memory_mib: u32, success_status: Option<i32>) -> Expectation {
    let token = token.to_owned();
    let memory_kib = u64::from(memory_mib) * 1024;
    Expectation {
        cases: BOOT_CASES.iter().map(|c| (*c).to_owned()).collect(),
        checks: vec![
            DetailCheck::field("boot.cmdline", "token", move |value| {
                if value == token {
                    Ok(())
                } else {
                    Err(format!("expected the token {token} this run passed"))
                }
            }),
            // Firmware and loader keep some memory; most of it must be usable.
            DetailCheck::field("boot.memory_map", "usable_kib", move |value| {
                let kib: u64 = value.parse().map_err(|_| "not a number".to_owned())?;
                if kib > memory_kib {
                    Err(format!("more than the {memory_kib} KiB the machine has"))
                } else if kib < memory_kib * 3 / 4 {
                    Err(format!("less than three quarters of the machine's {memory_kib} KiB"))
                } else {
                    Ok(())
                }
            }),
            DetailCheck::field("boot.loader", "bootloader", |value| {
                if value.starts_with("strata-loader/") { Ok(()) } else { Err("not strata-loader".into()) }
            }),
        ],
        success_status,
    }
}

fn print_verdict(name: &str, verdict: &Verdict, outcome: &Outcome, totals: &mut Totals) {
    for case in &verdict.passed {
        println!("    pass {case}");
    }
    print!("{verdict}");
    if !verdict.is_pass() {
        println!("    --- serial log (last 40 lines) ---\n{}", indent(&tail(&outcome.serial, 40)));
        if !outcome.diagnostics.trim().is_empty() {
            println!(
                "    --- emulator output (last 15 lines) ---\n{}",
                indent(&tail(&outcome.diagnostics, 15))
            );
        }
    }
    println!("{name}: {} passed, {} failed", verdict.passed.len(), verdict.failure_count());
    totals.passed += verdict.passed.len();
    totals.failed += verdict.failure_count();
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    | {l}")).collect::<Vec<_>>().join("\n")
}

/// One meta-case: a run that must be judged a failure, showing `must_contain`.
struct MustFail {
    case: &'static str,
    boot: QemuBoot,
    must_contain: Vec<String>,
    status: ExitCode,
}

fn judge_must_fail(run: &MustFail, outcome: &Outcome) -> std::result::Result<(), String> {
    let verdict = judge::judge(
        &Expectation { success_status: Some(ExitCode::Success.qemu_status()), ..Default::default() },
        outcome,
    );
    if verdict.is_pass() {
        return Err("the harness judged a deliberately failing run a pass".into());
    }
    if let Some(missing) = run.must_contain.iter().find(|text| !outcome.serial.contains(text.as_str())) {
        return Err(format!("serial log lacks \"{missing}\""));
    }
    match outcome.exit {
        judge::Exit::Status(status) if status == run.status.qemu_status() => Ok(()),
        ref other => Err(format!("ended with {other:?}, expected the {:?} exit", run.status)),
    }
}

fn emulator_suites(filter: Option<&str>, fuzz_seed: Option<u64>, totals: &mut Totals) -> Result {
    let selected = |name: &str| filter.is_none_or(|f| name.contains(f));
    let token = fresh_token();
    let cmdline = format!("log=info ktest.token={token}");
    let fuzz_seed = fuzz_seed.unwrap_or_else(|| u64::from_str_radix(&fresh_token(), 16).unwrap_or(1));
    println!(
        "    system-call fuzzer seed {fuzz_seed:#x} (cargo xtask test --fuzz-seed {fuzz_seed:#x} repeats it)"
    );
    let image = image::build(Kind::SelfTest { cmdline: cmdline.clone(), fuzz_seed })?;

    let suites = [
        BootSuite {
            name: "boot-qemu-pvh",
            description: "QEMU TCG (AMD SVM model), -kernel via PVH",
            machine: Machine::Qemu(QemuBoot::Direct {
                elf: image.elf.clone(),
                initrd: image.initrd.clone(),
                append: cmdline.clone(),
            }),
            entry_line: "entered via PVH",
        },
        BootSuite {
            name: "boot-qemu-iso",
            description: "QEMU TCG, BIOS + GRUB ISO via multiboot2",
            machine: Machine::Qemu(QemuBoot::Iso { iso: image.iso.clone() }),
            entry_line: "entered via multiboot2",
        },
        BootSuite {
            name: "boot-bochs-iso",
            description: "Bochs (Intel VMX model), BIOS + GRUB ISO via multiboot2",
            machine: Machine::Bochs { iso: image.iso.clone() },
            entry_line: "entered via multiboot2",
        },
    ];
    for suite in suites.iter().filter(|s| selected(s.name)) {
        run_boot_suite(suite, &token, totals)?;
    }
    if selected("fault-qemu") {
        let started =
            step::begin("suite fault-qemu: deliberate kernel faults must be reported and judged failures");
        let fault = |kind: &str| QemuBoot::Direct {
            elf: image.elf.clone(),
            initrd: image.initrd.clone(),
            append: format!("log=info ktest.fault={kind}"),
        };
        let runs = [
            MustFail {
                case: "fault.page_fault",
                boot: fault("page"),
                must_contain: vec![
                    "KERNEL FAULT: #PF page fault (vector 14), error code 0x2 [not-present write supervisor]"
                        .into(),
                    "CR2=0xffff900000000000".into(),
                    "RIP=0xffffffff8".into(),
                ],
                status: ExitCode::KernelFailure,
            },
            MustFail {
                case: "fault.invalid_opcode",
                boot: fault("invalid-opcode"),
                must_contain: vec!["KERNEL FAULT: #UD invalid opcode (vector 6)".into(), "RSP=".into()],
                status: ExitCode::KernelFailure,
            },
            MustFail {
                case: "fault.panic",
                boot: fault("panic"),
                must_contain: vec![
                    "KERNEL PANIC".into(),
                    "deliberate panic requested by ktest.fault=panic".into(),
                ],
                status: ExitCode::KernelFailure,
            },
        ];
        meta_suite("fault-qemu", &runs, totals)?;
        step::end(started, "suite done");
    }
    if selected("system-qemu") || selected("system-bochs") {
        let system = image::build(Kind::System)?;
        for suite in ["system-qemu", "system-bochs"].into_iter().filter(|s| selected(s)) {
            run_system_suite(suite, &system, totals)?;
        }
    }
    if selected("vm-qemu") || selected("vm-bochs") {
        let vm = image::build(Kind::Vm)?;
        for suite in ["vm-qemu", "vm-bochs"].into_iter().filter(|s| selected(s)) {
            run_vm_suite(suite, &vm, totals)?;
        }
    }
    if selected("loader-qemu") {
        let started =
            step::begin("suite loader-qemu: malformed boot images must be refused with a clear message");
        let runs = loader_runs(&image)?;
        meta_suite("loader-qemu", &runs, totals)?;
        step::end(started, "suite done");
    }
    Ok(())
}

/// Where a boot suite runs.
enum Machine {
    /// QEMU TCG, booted this way.
    Qemu(QemuBoot),
    /// Bochs, from this ISO.
    Bochs {
        /// The GRUB ISO.
        iso: std::path::PathBuf,
    },
}

/// A suite that boots the self-test image and expects every case to pass.
struct BootSuite {
    name: &'static str,
    description: &'static str,
    machine: Machine,
    /// The loader line that proves the intended boot path was taken.
    entry_line: &'static str,
}

impl Machine {
    fn memory_mib(&self) -> u32 {
        match self {
            Self::Qemu(_) => QEMU_MEMORY_MIB,
            Self::Bochs { .. } => BOCHS_MEMORY_MIB,
        }
    }

    /// Boots it (the suite `name` names its working directory) and returns
    /// how the run went, with Bochs's own log for a Bochs run: Bochs exits
    /// with status 1 whether it shut down or crashed, so the serial log
    /// decides, and its own log shows how it stopped.
    fn boot(&self, name: &str) -> Result<(Outcome, Option<String>)> {
        match self {
            Self::Qemu(boot) => {
                Ok((emulator::run(qemu_command(boot, self.memory_mib(), &[]), None, QEMU_TIMEOUT)?, None))
            }
            Self::Bochs { iso } => {
                let dir = root().join("target/emu").join(name);
                let (command, serial) = emulator::bochs_command(iso, &dir, self.memory_mib())?;
                let outcome = emulator::run(command, Some(&serial), BOCHS_TIMEOUT)?;
                Ok((outcome, Some(fs::read_to_string(dir.join("bochs.log")).unwrap_or_default())))
            }
        }
    }
}

fn run_boot_suite(suite: &BootSuite, token: &str, totals: &mut Totals) -> Result {
    let memory = suite.machine.memory_mib();
    let started = step::begin(format!("suite {}: {}, {memory} MiB", suite.name, suite.description));
    let (outcome, bochs_log) = suite.machine.boot(suite.name)?;
    let success = bochs_log.is_none().then(|| ExitCode::Success.qemu_status());
    let mut expectation = boot_expectation(token, memory, success);
    expectation.checks.extend(virtualization_checks(bochs_log.is_some()));
    let mut verdict = judge::judge(&expectation, &outcome);
    require_line(&mut verdict, &outcome.serial, suite.entry_line);
    require_line(&mut verdict, &outcome.serial, "booted by strata-loader");
    require_line(&mut verdict, &outcome.serial, "faulted: #UD invalid opcode");
    require_line(&mut verdict, &outcome.serial, "I/O APIC");
    if let Some(log) = bochs_log {
        // Bochs's Skylake-X has PCIDs, so the PCID paths run there; QEMU
        // 7.2 TCG does not offer them (CPUID.01H:ECX.PCID is clear under -cpu max).
        require_line(&mut verdict, &outcome.serial, "PCIDs on");
        require_line(&mut verdict, &log, "Shutdown port: shutdown requested");
    }
    print_verdict(suite.name, &verdict, &outcome, totals);
    step::end(started, "suite done");
    Ok(())
}

/// What the system image must print: the root task reports its modules,
/// starts the children, carries their log lines, ends the one that exits,
/// restarts the one that crashes once, and finishes.
const SYSTEM_LINES: [&str; 15] = [
    "4 boot module(s)",
    "[root] INFO  system description: 3 process(es)",
    "[root] INFO  started hello: entry 0x",
    "[root] INFO  started crasher: entry 0x",
    "[root] ERROR junk: not started: not a loadable executable: not an ELF file",
    "[hello] INFO  hello from a child process: 256 CNode slots, 1024 KiB of my own memory",
    "[hello] INFO  heap: sum of the first 100 squares is 338350",
    "[hello] INFO  IPC inside the child: 21 doubled is 42",
    "[root] INFO  hello exited with status 0",
    "[crasher] INFO  about to crash on purpose",
    "deliberate crash",
    "[root] WARN  crasher faulted: invalid system call",
    "[root] INFO  restarted crasher (1 of 1), in the same memory",
    "[root] WARN  crasher is not restarted again (1 of 1 restarts used)",
    "[root] INFO  all children have finished",
];

/// What the VM image must log: each check of each test guest, through
/// its tenant's VMM's UART with the tenant's and the guest's names, then
/// how each guest ended, and that both tenants finished.
const VM_LINES: [&str; 46] = [
    "[alpha] [guest-basic] ok multiboot",
    "[alpha] [guest-basic] ok multiboot-module",
    "[alpha] [guest-basic] ok long-mode",
    "[alpha] [guest-basic] ok cpuid",
    "[alpha] [guest-basic] ok port-io",
    "[alpha] [guest-basic] rep outsb reached the UART",
    "[alpha] [guest-basic] ok string-io",
    "[alpha] [guest-basic] ok msr",
    "[alpha] [guest-basic] ok msr-unknown-gp",
    "[alpha] [guest-basic] ok msr-invalid-gp",
    "[alpha] [guest-basic] ok hypercall-ud",
    "[alpha] [guest-basic] ok exceptions-in-guest",
    "[alpha] [guest-basic] ok mmio",
    "[alpha] [guest-basic] ok injected-interrupt",
    "[alpha] [guest-basic] ok pic-init",
    "[alpha] [guest-basic] ok pit-counts-down",
    "[alpha] [guest-basic] ok hlt-timer-wakeup",
    "[alpha] [guest-basic] ok pit-periodic-while-running",
    "[alpha] [guest-basic] ok fpu-sse-across-exits",
    "[alpha] [guest-basic] ok xsave-offered",
    "[alpha] [guest-basic] ok xsetbv",
    "[alpha] [guest-basic] ok xcr0-and-xsave-size",
    "[alpha] [guest-basic] ok avx-across-exits",
    "[alpha] [guest-basic] ok xsave-variants",
    "[alpha] [guest-basic] ok debug-registers-across-exits",
    "[alpha] vmm: guest-basic: exited with status 0x0 through isa-debug-exit",
    "[alpha] vmm: guest-junk: not started: no multiboot header (magic 0x1badb002) in the first 8 KiB",
    "[beta] [guest-bootsector] ok real-mode",
    "[beta] [guest-bootsector] ok cpuid-in-real-mode",
    "[beta] [guest-bootsector] ok rep-outs-from-ds",
    "[beta] [guest-bootsector] ok rep-outs-es-override",
    "[beta] [guest-bootsector] ok rep-ins-to-es",
    "[beta] [guest-bootsector] ok protected-mode",
    "[beta] vmm: guest-bootsector: exited with status 0x0 through isa-debug-exit",
    "[beta] [guest-elf64] ok paging-on",
    "[beta] [guest-elf64] ok long-mode-active",
    "[beta] [guest-elf64] ok code-segment-0x08",
    "[beta] [guest-elf64] ok debug-registers-own",
    "[beta] vmm: guest-elf64: exited with status 0x0 through isa-debug-exit",
    "[alpha] vmm: 2 guest module(s), 1 started",
    "[beta] vmm: 2 guest module(s), 2 started",
    "[root] WARN  crasher faulted: invalid system call",
    "[root] INFO  restarted crasher (1 of 2), in the same memory",
    "[root] INFO  restarted crasher (2 of 2), in the same memory",
    "[root] WARN  crasher is not restarted again (2 of 2 restarts used)",
    "[root] INFO  all children have finished",
];

/// Boots the VM image (the VMM and its test guests) and checks its log.
fn run_vm_suite(name: &str, image: &Image, totals: &mut Totals) -> Result {
    let (machine, description) = system_machine(name, image);
    let started = step::begin(format!("suite {name}: test guests under strata-vmm ({description})"));
    let (outcome, bochs_log) = machine.boot(name)?;
    let mut verdict = Verdict::default();
    for line in VM_LINES {
        require_line(&mut verdict, &outcome.serial, line);
    }
    verdict.run_failure = run_failure(&outcome, bochs_log);
    print_verdict(name, &verdict, &outcome, totals);
    step::end(started, "suite done");
    Ok(())
}

/// The machine a system or VM suite boots: Bochs from the ISO, or QEMU
/// with the loader ELF.
fn system_machine(name: &str, image: &Image) -> (Machine, &'static str) {
    if name.ends_with("bochs") {
        (Machine::Bochs { iso: image.iso.clone() }, "Bochs, GRUB ISO")
    } else {
        let boot = QemuBoot::Direct {
            elf: image.elf.clone(),
            initrd: image.initrd.clone(),
            append: "log=info".into(),
        };
        (Machine::Qemu(boot), "QEMU TCG, -kernel via PVH")
    }
}

/// Why a system or VM run failed as a whole, if it did.
fn run_failure(outcome: &Outcome, bochs_log: Option<String>) -> Option<String> {
    match (&outcome.exit, bochs_log) {
        _ if strata_abi::ktest::FATAL_MARKERS.iter().any(|m| outcome.serial.contains(m)) => {
            Some("the kernel reported a fatal error".to_owned())
        }
        (judge::Exit::TimedOut(after), _) => Some(format!("timed out after {} s", after.as_secs())),
        (_, Some(log)) if !log.contains("Shutdown port: shutdown requested") => {
            Some("Bochs did not shut down through the exit port".to_owned())
        }
        (judge::Exit::Status(status), None) if *status != ExitCode::Success.qemu_status() => {
            Some(format!("exit status {status}, expected the success exit"))
        }
        _ => None,
    }
}

/// Boots the system image (the root task and its children) and checks its log.
fn run_system_suite(name: &str, image: &Image, totals: &mut Totals) -> Result {
    let (machine, description) = system_machine(name, image);
    let started = step::begin(format!(
        "suite {name}: the root task starts, serves and supervises child processes ({description})"
    ));
    let (outcome, bochs_log) = machine.boot(name)?;
    let mut verdict = Verdict::default();
    for line in SYSTEM_LINES {
        require_line(&mut verdict, &outcome.serial, line);
    }
    verdict.run_failure = run_failure(&outcome, bochs_log);
    print_verdict(name, &verdict, &outcome, totals);
    step::end(started, "suite done");
    Ok(())
}

/// A case of its own: `text` must appear in `log`.
fn require_line(verdict: &mut Verdict, log: &str, text: &str) {
    if log.contains(text) {
        verdict.passed.push(format!("log \"{text}\""));
    } else {
        verdict.failed.push((format!("log \"{text}\""), "not in the serial log".into()));
    }
}

fn meta_suite(name: &str, runs: &[MustFail], totals: &mut Totals) -> Result {
    let mut verdict = Verdict::default();
    let mut last = None;
    for run in runs {
        let outcome = emulator::run(qemu_command(&run.boot, QEMU_MEMORY_MIB, &[]), None, QEMU_TIMEOUT)?;
        match judge_must_fail(run, &outcome) {
            Ok(()) => verdict.passed.push(run.case.to_owned()),
            Err(reason) => {
                verdict.failed.push((run.case.to_owned(), reason));
                last = Some(outcome);
            }
        }
    }
    let shown = last.unwrap_or(Outcome {
        serial: String::new(),
        exit: judge::Exit::Status(0),
        diagnostics: String::new(),
    });
    print_verdict(name, &verdict, &shown, totals);
    Ok(())
}

/// Boot images the loader must refuse: a corrupted archive, an archive whose
/// kernel is not an ELF, and a truncated archive.
fn loader_runs(image: &Image) -> Result<Vec<MustFail>> {
    let dir = root().join("target/emu/loader");
    fs::create_dir_all(&dir)?;
    let good = fs::read(&image.initrd)?;
    let write = |name: &str, bytes: &[u8]| -> Result<std::path::PathBuf> {
        let path = dir.join(name);
        fs::write(&path, bytes)?;
        Ok(path)
    };
    let mut corrupt = good.clone();
    // The kernel is the first entry, at the first page boundary.
    let at = 4096 + 100;
    if corrupt.len() <= at {
        return Err(fail!("test image archive is unexpectedly small ({} bytes)", corrupt.len()));
    }
    corrupt[at] ^= 0x40;
    let mut not_elf = Builder::new();
    not_elf
        .add(EntryKind::Kernel, "kernel", "", b"#!/bin/sh\necho this is not a kernel\n")
        .map_err(|e| fail!("{e}"))?;
    let not_elf = not_elf.finish().map_err(|e| fail!("{e}"))?;
    let boot = |initrd: &Path| QemuBoot::Direct {
        elf: image.elf.clone(),
        initrd: initrd.to_owned(),
        append: "log=info".into(),
    };
    Ok(vec![
        MustFail {
            case: "loader.corrupt_archive",
            boot: boot(&write("corrupt.initrd", &corrupt)?),
            must_contain: vec![
                "strata-loader: error: boot archive: archive entry kernel is corrupt: CRC-32".into(),
            ],
            status: ExitCode::LoaderFailure,
        },
        MustFail {
            case: "loader.kernel_not_elf",
            boot: boot(&write("not-elf.initrd", &not_elf)?),
            must_contain: vec!["strata-loader: error: kernel: not an ELF file".into()],
            status: ExitCode::LoaderFailure,
        },
        MustFail {
            case: "loader.truncated_archive",
            boot: boot(&write("truncated.initrd", &good[..good.len() / 2])?),
            must_contain: vec!["strata-loader: error: boot archive: archive header says".into()],
            status: ExitCode::LoaderFailure,
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_summaries_are_counted() {
        let line = "ok. 24 passed; 3 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.07s";
        assert_eq!(count_before(line, " passed"), 24);
        assert_eq!(count_before(line, " failed"), 3);
        assert_eq!(count_before("FAILED. 2 passed; 1 failed; 0 ignored", " failed"), 1);
    }

    #[test]
    fn tokens_differ_between_runs() {
        let a = fresh_token();
        std::thread::sleep(Duration::from_millis(2));
        assert_ne!(a, fresh_token());
    }
}
