//! Kernel start-up: from the bootloader's Limine responses to a running
//! timer. The only code that reads Limine structures.

use core::cell::UnsafeCell;
use core::fmt::Write;
use core::sync::atomic::Ordering;

use limine::memory_map::EntryType;
use limine::response::{
    BootloaderInfoResponse, ExecutableAddressResponse, ExecutableCmdlineResponse, HhdmResponse,
    MemoryMapResponse, ModuleResponse, RsdpResponse,
};
use spin::Mutex;
use strata_abi::acpi::{self, Rsdp};
use strata_abi::exit::ExitCode;
use strata_abi::ktest::PANIC_MARKER;

use crate::addr::{DirectMap, PhysAddr};
use crate::arch::x86_64::gdt::CpuSegments;
use crate::arch::x86_64::lapic::{Calibration, LocalApic, TICKS};
use crate::arch::x86_64::serial::Uart16550;
use crate::arch::x86_64::{cpu, exit, idt, pic};
use crate::cmdline::{self, Cmdline, CmdlineWarning};
use crate::frame::FrameAllocator;

/// The responses the kernel asked for; `None` where the bootloader gave none.
#[derive(Clone, Copy)]
pub struct BootResponses {
    /// Whether the bootloader acknowledged the kernel's base revision.
    pub base_revision_supported: bool,
    /// Bootloader name and version.
    pub bootloader: Option<&'static BootloaderInfoResponse>,
    /// Direct map offset (required).
    pub hhdm: Option<&'static HhdmResponse>,
    /// Memory map (required).
    pub memory_map: Option<&'static MemoryMapResponse>,
    /// Where the kernel was loaded.
    pub executable_address: Option<&'static ExecutableAddressResponse>,
    /// Command line.
    pub cmdline: Option<&'static ExecutableCmdlineResponse>,
    /// Boot modules.
    pub modules: Option<&'static ModuleResponse>,
    /// ACPI RSDP (physical address, base revision 3).
    pub rsdp: Option<&'static RsdpResponse>,
}

/// Physical memory free for the kernel's own use.
pub static FRAMES: Mutex<FrameAllocator> = Mutex::new(FrameAllocator::new());

/// The boot CPU's GDT, TSS and IST stacks.
static BSP_SEGMENTS: BootCpuSegments = BootCpuSegments(UnsafeCell::new(CpuSegments::new()));

/// Holder for the boot CPU's segments: written once by [`start`].
struct BootCpuSegments(UnsafeCell<CpuSegments>);

// SAFETY: only `start` touches the contents, once, on the boot CPU, before
// anything else runs; afterwards only the CPU reads them (GDTR, TR).
unsafe impl Sync for BootCpuSegments {}

/// What boot established, for the rest of the kernel (and its self tests).
pub struct Kernel {
    /// The responses, as given.
    pub responses: BootResponses,
    /// The parsed command line.
    pub cmdline: Cmdline,
    /// The direct map.
    pub direct_map: DirectMap,
    /// This CPU's LAPIC.
    pub lapic: LocalApic,
    /// Measured clock rates.
    pub calibration: Calibration,
    /// Usable bytes in the memory map.
    pub usable_bytes: u64,
    /// Usable regions in the memory map.
    pub usable_regions: usize,
    /// The ACPI RSDP, if one was handed over and is valid.
    pub rsdp: Option<(PhysAddr, Rsdp)>,
}

/// Stops the kernel with a message when it cannot start at all.
fn cannot_start(reason: core::fmt::Arguments<'_>) -> ! {
    let mut out = Uart16550::com1();
    let _ = writeln!(out, "{PANIC_MARKER}: cannot start: {reason}");
    exit::exit(ExitCode::KernelFailure)
}

/// Brings the boot CPU up and returns the established state.
pub fn start(responses: BootResponses) -> Kernel {
    let fpu = cpu::enable_fpu();
    let cmdline_text = responses.cmdline.map(|r| r.cmdline().to_str().unwrap_or("")).unwrap_or("");
    let cmdline = cmdline::parse(cmdline_text);
    crate::console::init(cmdline.log_level);

    if !responses.base_revision_supported {
        cannot_start(format_args!("the bootloader does not support Limine base revision 3"));
    }
    let (name, version) =
        responses.bootloader.map(|b| (b.name(), b.version())).unwrap_or(("an unknown bootloader", ""));
    log::info!(
        "strata {} ({}) booted by {name} {version}",
        env!("CARGO_PKG_VERSION"),
        if cfg!(feature = "selftest") { "self-test build" } else { "kernel" },
    );
    log::info!("command line: \"{cmdline_text}\"");
    match fpu {
        Ok(xcr0) => log::info!(
            "FPU state switched with XSAVE: XCR0 {xcr0:#x} (x87, SSE{}{})",
            ["", ", AVX"][xcr0 as usize >> 2 & 1],
            ["", ", PKRU"][xcr0 as usize >> 9 & 1]
        ),
        Err(reason) => cannot_start(format_args!("{reason}")),
    }
    for warning in &cmdline.warnings {
        match warning {
            CmdlineWarning::UnknownKey(key) => {
                log::info!("command line: `{key}` is not a kernel option; ignored")
            }
            CmdlineWarning::BadValue { key, value } => {
                log::warn!("command line: `{key}={value}` is not valid; using the default")
            }
        }
    }

    // SAFETY: `BSP_SEGMENTS` is a static used only here, once, with
    // interrupts off: this is the only reference to it, and it lives for the
    // life of the kernel as `load` requires.
    unsafe {
        let segments: &'static mut CpuSegments = &mut *BSP_SEGMENTS.0.get();
        segments.load();
    }
    idt::load();
    pic::remap_and_mask();
    log::debug!("GDT, TSS (IST stacks for NMI, #DF, #MC, #PF) and IDT loaded; legacy PIC masked");

    let Some(hhdm) = responses.hhdm else { cannot_start(format_args!("no direct-map (HHDM) response")) };
    let direct_map = DirectMap::new(hhdm.offset());
    let Some(map) = responses.memory_map else { cannot_start(format_args!("no memory map response")) };
    let (usable_bytes, usable_regions) = take_usable_memory(map);
    log::info!(
        "memory: {} KiB usable in {usable_regions} regions ({} map entries); {} KiB free for the kernel",
        usable_bytes / 1024,
        map.entries().len(),
        FRAMES.lock().free_bytes() / 1024,
    );

    let lapic = LocalApic::enable(direct_map).unwrap_or_else(|e| cannot_start(format_args!("{e}")));
    idt::set_lapic(lapic);
    let calibration = lapic.calibrate().unwrap_or_else(|e| cannot_start(format_args!("{e}")));
    lapic.start_periodic(&calibration, cmdline.timer_hz);
    log::info!(
        "timer: LAPIC {} (version {:#x}) counts {} kHz at divide 16, TSC {} MHz; periodic tick at {} Hz",
        lapic.id(),
        lapic.version() & 0xff,
        calibration.timer_hz / 1000,
        calibration.tsc_hz / 1_000_000,
        cmdline.timer_hz,
    );
    if let Some(modules) = responses.modules {
        for module in modules.modules() {
            log::info!(
                "module {}: {} bytes ({})",
                module.path().to_str().unwrap_or("<not UTF-8>"),
                module.size(),
                module.string().to_str().unwrap_or(""),
            );
        }
    }
    let rsdp = read_rsdp(&responses, direct_map);
    start_virtualization(direct_map);
    Kernel { responses, cmdline, direct_map, lapic, calibration, usable_bytes, usable_regions, rsdp }
}

/// Finds the CPU's virtualization and turns it on (the VCPU backend needs
/// it on every CPU), recording the outcome in `virt::STATE`.
fn start_virtualization(direct_map: DirectMap) {
    use crate::arch::x86_64::virt;
    let backend = virt::detect();
    let area = FRAMES.lock().allocate(1, 4096);
    let enabled = match (area, &backend) {
        (_, virt::Backend::None(why)) => Err(*why),
        (Err(_), _) => Err("no frame for the host save area or VMXON region"),
        (Ok(area), backend) => {
            let virtual_area = direct_map.to_virtual(area).as_mut_ptr::<u32>();
            // SAFETY: the frame was just allocated and is kept for good; it
            // is zeroed here through the direct map; interrupts are off and
            // this runs once, on the boot CPU.
            unsafe {
                core::ptr::write_bytes(virtual_area.cast::<u8>(), 0, 4096);
                virt::enable(backend, virtual_area, area.get())
            }
        }
    };
    let enabled = enabled.and_then(|()| match backend {
        virt::Backend::Svm(_) => svm_areas(direct_map),
        _ => Ok(()),
    });
    match enabled {
        Ok(()) => log::info!("virtualization: {backend}; on"),
        Err(why) => log::warn!("virtualization: {backend}; not on: {why}"),
    }
    virt::STATE.call_once(|| (backend, enabled));
}

/// Sets up the SVM host areas: a VMSAVE area for the host's own state,
/// and I/O and MSR permission maps that send every access to the VMM.
fn svm_areas(direct_map: DirectMap) -> Result<(), &'static str> {
    use crate::arch::x86_64::svm;
    // One 4 KiB host area, 12 KiB of I/O map, 8 KiB of MSR map.
    let base = FRAMES.lock().allocate(6, 4096).map_err(|_| "no frames for the SVM permission maps")?;
    let bytes = direct_map.to_virtual(base).as_mut_ptr::<u8>();
    // SAFETY: the six frames were just allocated and are kept for good.
    unsafe {
        core::ptr::write_bytes(bytes, 0, 4096);
        core::ptr::write_bytes(bytes.add(4096), 0xff, 5 * 4096);
    }
    svm::AREAS.call_once(|| svm::HostAreas {
        host_state: base.get(),
        io_permissions: base.get() + 4096,
        msr_permissions: base.get() + 4 * 4096,
    });
    Ok(())
}

/// Reads and checks the RSDP the bootloader pointed at.
fn read_rsdp(responses: &BootResponses, direct_map: DirectMap) -> Option<(PhysAddr, Rsdp)> {
    let Some(response) = responses.rsdp else {
        log::warn!("ACPI: the bootloader passed no RSDP");
        return None;
    };
    let address = PhysAddr(response.address() as u64);
    // SAFETY: the direct map covers all memory the firmware describes; the
    // RSDP is at most 36 bytes and the bytes are only read.
    let bytes = unsafe {
        core::slice::from_raw_parts(direct_map.to_virtual(address).as_mut_ptr::<u8>(), acpi::V2_LEN)
    };
    match Rsdp::parse(bytes) {
        Ok(rsdp) => {
            log::info!(
                "ACPI: RSDP at {address} (revision {}, OEM \"{}\"), RSDT at {:#x}{}",
                rsdp.revision,
                core::str::from_utf8(&rsdp.oem).unwrap_or("?").trim_end(),
                rsdp.rsdt,
                XsdtNote(rsdp.xsdt.unwrap_or(0)),
            );
            Some((address, rsdp))
        }
        Err(error) => {
            log::warn!("ACPI: RSDP at {address} is not valid: {error}");
            None
        }
    }
}

/// Formats ", XSDT at ..." when there is an XSDT.
struct XsdtNote(u64);

impl core::fmt::Display for XsdtNote {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.0 == 0 { Ok(()) } else { write!(f, ", XSDT at {:#x}", self.0) }
    }
}

fn take_usable_memory(map: &MemoryMapResponse) -> (u64, usize) {
    let mut frames = FRAMES.lock();
    let mut usable = 0;
    let mut regions = 0;
    for entry in map.entries() {
        log::debug!(
            "  {:#014x}-{:#014x} {}",
            entry.base,
            entry.base + entry.length,
            entry_type_name(entry.entry_type)
        );
        if entry.entry_type == EntryType::USABLE {
            usable += entry.length;
            regions += 1;
            if let Err(error) = frames.add(entry.base, entry.length) {
                log::warn!("memory map entry at {:#x} not used: {error}", entry.base);
            }
        }
    }
    (usable, regions)
}

/// A readable name for a memory map entry type.
pub fn entry_type_name(kind: EntryType) -> &'static str {
    match kind {
        EntryType::USABLE => "usable",
        EntryType::RESERVED => "reserved",
        EntryType::ACPI_RECLAIMABLE => "ACPI reclaimable",
        EntryType::ACPI_NVS => "ACPI NVS",
        EntryType::BAD_MEMORY => "bad memory",
        EntryType::BOOTLOADER_RECLAIMABLE => "bootloader reclaimable",
        EntryType::EXECUTABLE_AND_MODULES => "kernel and modules",
        EntryType::FRAMEBUFFER => "framebuffer",
        _ => "unknown",
    }
}

/// Idles forever with the timer running (until there is a root task to run).
pub fn idle(kernel: &Kernel) -> ! {
    log::info!(
        "boot complete: no root task in this image yet; idling with the {} Hz timer running",
        kernel.cmdline.timer_hz
    );
    loop {
        cpu::wait_for_interrupt();
        let ticks = TICKS.load(Ordering::Relaxed);
        if ticks.is_multiple_of(u64::from(kernel.cmdline.timer_hz) * 60) {
            log::debug!("uptime: {} s", ticks / u64::from(kernel.cmdline.timer_hz));
        }
    }
}

/// The panic handler's body: report and stop.
pub fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let mut out = Uart16550::com1();
    let _ = writeln!(out, "\n{PANIC_MARKER}: {info}");
    exit::exit(ExitCode::KernelFailure)
}
