//! In-kernel self tests of boot bring-up, reported through the KTEST line
//! protocol (`strata_abi::ktest`) for the emulator harness. Built only into
//! test images (feature `selftest`).
//!
//! Each case checks behaviour that could break: the harness additionally
//! checks some reported figures against what it configured (memory size,
//! command-line token), so a kernel that merely prints `pass` does not pass.

// Case results are formatted and printed at once; their size never matters.
#![allow(clippy::result_large_err)]

use core::fmt::Write;
use core::sync::atomic::Ordering;

use heapless::String;
use limine::memory_map::EntryType;
use strata_abi::exit::ExitCode;
use strata_abi::ktest::{PATTERN_LEN, PATTERN_MODULE, pattern_byte};

use crate::addr::PhysAddr;
use crate::arch::x86_64::gdt::{IST_STACK_SIZE, ist};
use crate::arch::x86_64::idt::{BREAKPOINTS, LAST_BREAKPOINT_FRAME};
use crate::arch::x86_64::lapic::{TICKS, read_tsc};
use crate::arch::x86_64::{cpu, exit};
use crate::boot::{FRAMES, Kernel};
use crate::cmdline::DeliberateFault;
use crate::console::print_line;
use crate::frame::{FRAME_SIZE, FrameError};

type Detail = String<160>;

macro_rules! detail {
    ($($arg:tt)*) => {{
        let mut text = Detail::new();
        let _ = write!(text, $($arg)*);
        text
    }};
}

struct Suite {
    passed: u32,
    failed: u32,
}

impl Suite {
    fn case(&mut self, name: &str, test: impl FnOnce() -> Result<Detail, Detail>) {
        match test() {
            Ok(detail) => {
                self.passed += 1;
                print_line(format_args!("KTEST pass {name} {detail}"));
            }
            Err(detail) => {
                self.failed += 1;
                print_line(format_args!("KTEST fail {name} {detail}"));
            }
        }
    }
}

/// An address in the higher half that nothing maps (the direct map covers
/// at most a few hundred GiB from its base; the kernel lives at -2 GiB).
const UNMAPPED: u64 = 0xffff_9000_0000_0000;

/// Takes the fault the command line asked for; does not return.
fn deliberate_fault(kind: DeliberateFault) -> ! {
    log::info!("taking a deliberate {kind:?} (ktest.fault)");
    match kind {
        // SAFETY: deliberately violated: nothing is mapped at UNMAPPED, so
        // this write faults; the fault handler reports it and stops the machine.
        DeliberateFault::PageFault => unsafe { (UNMAPPED as *mut u64).write_volatile(0x5a) },
        // SAFETY: `ud2` raises #UD, which the fault handler reports.
        DeliberateFault::InvalidOpcode => unsafe { core::arch::asm!("ud2", options(nostack)) },
        DeliberateFault::Panic => panic!("deliberate panic requested by ktest.fault=panic"),
    }
    panic!("deliberate {kind:?} did not fault")
}

/// Runs every case and prints the summary. Without a root task to run next
/// the run ends here; with one, the kernel goes on to start it (it reports
/// its own suite) unless a kernel case failed.
pub fn run(kernel: &Kernel) {
    if let Some(kind) = kernel.cmdline.fault {
        deliberate_fault(kind);
    }
    print_line(format_args!("KTEST suite boot"));
    let mut suite = Suite { passed: 0, failed: 0 };
    suite.case("boot.loader", || loader(kernel));
    suite.case("boot.cmdline", || cmdline(kernel));
    suite.case("boot.memory_map", || memory_map(kernel));
    suite.case("boot.frames", || frames(kernel));
    suite.case("boot.modules", || modules(kernel));
    suite.case("boot.acpi", || acpi(kernel));
    suite.case("boot.breakpoint", breakpoint);
    suite.case("boot.timer", || timer(kernel));
    suite.case("boot.virtualization", virtualization);
    print_line(format_args!("KTEST done passed={} failed={}", suite.passed, suite.failed));
    if suite.failed != 0 {
        exit::exit(ExitCode::KernelFailure);
    }
    if !crate::run::has_root_task(kernel) {
        exit::exit(ExitCode::Success);
    }
}

/// The VCPU backend the CPU allows, with the figures the harness checks
/// against the machine (QEMU: SVM with nested paging; Bochs: VMX with EPT).
fn virtualization() -> Result<Detail, Detail> {
    use crate::arch::x86_64::virt::{Backend, STATE};
    let Some((backend, enabled)) = STATE.get() else { return Err(detail!("virtualization not probed")) };
    if let Err(why) = enabled {
        return Err(detail!("{backend}, but not on: {why}"));
    }
    match *backend {
        Backend::Svm(s) => Ok(detail!(
            "backend=svm revision={} asids={} nested_paging={} nrip_save={} on=1",
            s.revision,
            s.asids,
            u8::from(s.nested_paging),
            u8::from(s.nrip_save)
        )),
        Backend::Vmx(v) => Ok(detail!(
            "backend=vmx revision={:#x} ept={} vpid={} unrestricted_guest={} on=1",
            v.revision,
            u8::from(v.ept),
            u8::from(v.vpid),
            u8::from(v.unrestricted_guest)
        )),
        Backend::None(why) => Err(detail!("no virtualization: {why}")),
    }
}

fn loader(kernel: &Kernel) -> Result<Detail, Detail> {
    let info = kernel.responses.bootloader.ok_or_else(|| detail!("no bootloader info response"))?;
    if info.name() != "strata-loader" || info.version().is_empty() {
        return Err(detail!("unexpected bootloader {:?} {:?}", info.name(), info.version()));
    }
    let address =
        kernel.responses.executable_address.ok_or_else(|| detail!("no executable address response"))?;
    // The kernel's own code must be where the response says.
    let here = loader as fn(&Kernel) -> Result<Detail, Detail> as usize as u64;
    let offset =
        here.checked_sub(address.virtual_base()).ok_or_else(|| detail!("kernel below its virtual base"))?;
    if offset > 64 << 20 {
        return Err(detail!("kernel code {here:#x} far from virtual base {:#x}", address.virtual_base()));
    }
    Ok(detail!("bootloader={}/{} physical_base={:#x}", info.name(), info.version(), address.physical_base()))
}

fn cmdline(kernel: &Kernel) -> Result<Detail, Detail> {
    match &kernel.cmdline.token {
        Some(token) => Ok(detail!("token={token}")),
        None => Err(detail!("no ktest.token on the command line")),
    }
}

fn memory_map(kernel: &Kernel) -> Result<Detail, Detail> {
    let map = kernel.responses.memory_map.ok_or_else(|| detail!("no memory map"))?;
    let kernel_base = kernel.responses.executable_address.map(|a| a.physical_base()).unwrap_or(0);
    let mut previous_end = 0;
    let mut kernel_covered = false;
    for entry in map.entries() {
        if entry.base < previous_end || entry.length == 0 {
            return Err(detail!("entry at {:#x} overlaps or is empty", entry.base));
        }
        previous_end = entry.base + entry.length;
        if entry.entry_type == EntryType::USABLE && (entry.base | entry.length) % FRAME_SIZE != 0 {
            return Err(detail!("usable entry at {:#x} is not page-aligned", entry.base));
        }
        if entry.entry_type == EntryType::EXECUTABLE_AND_MODULES
            && (entry.base..entry.base + entry.length).contains(&kernel_base)
        {
            kernel_covered = true;
        }
    }
    if !kernel_covered {
        return Err(detail!("kernel at {kernel_base:#x} is not in a kernel-and-modules entry"));
    }
    if kernel.usable_bytes == 0 {
        return Err(detail!("no usable memory"));
    }
    Ok(detail!(
        "usable_kib={} regions={} entries={}",
        kernel.usable_bytes / 1024,
        kernel.usable_regions,
        map.entries().len()
    ))
}

fn frames(kernel: &Kernel) -> Result<Detail, Detail> {
    let mut frames = FRAMES.lock();
    let before = frames.free_bytes();
    let mut singles = [PhysAddr(0); 16];
    for (i, slot) in singles.iter_mut().enumerate() {
        *slot = frames.allocate(1, FRAME_SIZE).map_err(|e| detail!("single frame {i}: {e}"))?;
    }
    let large = frames.allocate(512, 2 << 20).map_err(|e| detail!("2 MiB block: {e}"))?;
    if !large.is_aligned(2 << 20) {
        return Err(detail!("2 MiB block at {large} is misaligned"));
    }
    // Write a distinct pattern into every frame through the direct map, then
    // read all of them back: overlapping or unmapped frames would show.
    let word = |frame: PhysAddr, i: u64| frame.get() ^ (i * 0x9e37_79b9_7f4a_7c15);
    let all = singles.iter().copied().chain((0..512).map(|i| large.offset(i * FRAME_SIZE)));
    for frame in all.clone() {
        let base: *mut u64 = kernel.direct_map.to_virtual(frame).as_mut_ptr();
        for i in 0..FRAME_SIZE / 8 {
            // SAFETY: the frame was just allocated (nothing else uses it) and
            // the direct map covers all usable memory.
            unsafe { base.add(i as usize).write_volatile(word(frame, i)) };
        }
    }
    for frame in all {
        let base: *const u64 = kernel.direct_map.to_virtual(frame).as_mut_ptr();
        for i in 0..FRAME_SIZE / 8 {
            // SAFETY: as above.
            let found = unsafe { base.add(i as usize).read_volatile() };
            if found != word(frame, i) {
                return Err(detail!("frame {frame} word {i} reads {found:#x}"));
            }
        }
    }
    for frame in singles {
        frames.free(frame, 1).map_err(|e| detail!("free {frame}: {e}"))?;
    }
    frames.free(large, 512).map_err(|e| detail!("free {large}: {e}"))?;
    if frames.free(large, 1) != Err(FrameError::DoubleFree { address: large }) {
        return Err(detail!("double free of {large} was not refused"));
    }
    if frames.free_bytes() != before {
        return Err(detail!("free memory {} after the test, {before} before", frames.free_bytes()));
    }
    Ok(detail!("checked_frames=528 free_kib={}", before / 1024))
}

fn modules(kernel: &Kernel) -> Result<Detail, Detail> {
    let modules = kernel.responses.modules.ok_or_else(|| detail!("no module response"))?;
    let module = modules
        .modules()
        .iter()
        .find(|m| m.path().to_bytes() == PATTERN_MODULE.as_bytes())
        .ok_or_else(|| detail!("module {PATTERN_MODULE} not handed over"))?;
    if module.size() != PATTERN_LEN as u64 {
        return Err(detail!("{PATTERN_MODULE} is {} bytes, expected {PATTERN_LEN}", module.size()));
    }
    if !(module.addr() as u64).is_multiple_of(FRAME_SIZE) {
        return Err(detail!("{PATTERN_MODULE} at {:p} is not page-aligned", module.addr()));
    }
    // SAFETY: the bootloader maps the module at `addr` for `size` bytes in
    // the direct map, and nothing writes to it.
    let bytes = unsafe { core::slice::from_raw_parts(module.addr(), PATTERN_LEN) };
    if let Some(index) = (0..PATTERN_LEN).find(|&i| bytes[i] != pattern_byte(i)) {
        return Err(detail!(
            "{PATTERN_MODULE} byte {index} is {:#x}, expected {:#x}",
            bytes[index],
            pattern_byte(index)
        ));
    }
    Ok(detail!("modules={} pattern_bytes={PATTERN_LEN}", modules.modules().len()))
}

fn acpi(kernel: &Kernel) -> Result<Detail, Detail> {
    let response = kernel.responses.rsdp.ok_or_else(|| detail!("no RSDP response"))?;
    let (address, rsdp) =
        kernel.rsdp.ok_or_else(|| detail!("the RSDP at {:#x} failed its checks", response.address()))?;
    // The RSDT it names must be in memory the firmware reserved for ACPI
    // (or plain reserved), never in memory the kernel may hand out.
    let map = kernel.responses.memory_map.ok_or_else(|| detail!("no memory map"))?;
    let rsdt = u64::from(rsdp.rsdt);
    let region = map.entries().iter().find(|e| (e.base..e.base + e.length).contains(&rsdt));
    match region.map(|e| e.entry_type) {
        Some(EntryType::USABLE) | Some(EntryType::BOOTLOADER_RECLAIMABLE) => {
            Err(detail!("RSDT at {rsdt:#x} lies in memory marked free"))
        }
        _ => Ok(detail!(
            "rsdp={address} revision={} oem={}",
            rsdp.revision,
            core::str::from_utf8(&rsdp.oem).unwrap_or("?").trim_end()
        )),
    }
}

fn breakpoint() -> Result<Detail, Detail> {
    let before = BREAKPOINTS.load(Ordering::Relaxed);
    // SAFETY: `int3` raises #BP, which the dispatcher counts and returns from.
    unsafe { core::arch::asm!("int3", clobber_abi("C")) };
    let after = BREAKPOINTS.load(Ordering::Relaxed);
    if after != before + 1 {
        return Err(detail!("breakpoint count went from {before} to {after}"));
    }
    // The handler must have run on the general IST stack, not this one.
    let frame = LAST_BREAKPOINT_FRAME.load(Ordering::Relaxed);
    let here = &after as *const u64 as u64;
    if frame.abs_diff(here) < IST_STACK_SIZE as u64 / 2 {
        return Err(detail!("handler frame {frame:#x} is on the interrupted stack ({here:#x})"));
    }
    Ok(detail!("handled_on_ist={} frame={frame:#x}", ist::GENERAL))
}

fn timer(kernel: &Kernel) -> Result<Detail, Detail> {
    const TICKS_TO_WATCH: u64 = 10;
    let hz = u64::from(kernel.cmdline.timer_hz);
    let tsc_hz = kernel.calibration.tsc_hz;
    // Give up after 50 tick periods' worth of TSC time.
    let deadline = read_tsc() + tsc_hz * 50 * TICKS_TO_WATCH / hz;
    // Align to a tick edge first.
    let first = TICKS.load(Ordering::Relaxed);
    while TICKS.load(Ordering::Relaxed) == first {
        cpu::wait_for_interrupt();
        if read_tsc() > deadline {
            return Err(detail!("no timer tick within {} ms", 50 * TICKS_TO_WATCH * 1000 / hz));
        }
    }
    let start_ticks = TICKS.load(Ordering::Relaxed);
    let start = read_tsc();
    while TICKS.load(Ordering::Relaxed) < start_ticks + TICKS_TO_WATCH {
        cpu::wait_for_interrupt();
        if read_tsc() > deadline {
            let seen = TICKS.load(Ordering::Relaxed) - start_ticks;
            return Err(detail!("only {seen} of {TICKS_TO_WATCH} ticks before the deadline"));
        }
    }
    let elapsed = read_tsc() - start;
    // Measured rate in milli-hertz, against the TSC calibrated on the PIT.
    let measured_mhz = TICKS_TO_WATCH * tsc_hz * 1000 / elapsed.max(1);
    let expected_mhz = hz * 1000;
    if measured_mhz < expected_mhz / 2 || measured_mhz > expected_mhz * 2 {
        return Err(detail!(
            "ticking at {}.{:03} Hz, configured {hz} Hz",
            measured_mhz / 1000,
            measured_mhz % 1000
        ));
    }
    Ok(detail!(
        "configured_hz={hz} measured_hz={}.{:03} ticks={TICKS_TO_WATCH} lapic_khz={} tsc_mhz={}",
        measured_mhz / 1000,
        measured_mhz % 1000,
        kernel.calibration.timer_hz / 1000,
        tsc_hz / 1_000_000
    ))
}
