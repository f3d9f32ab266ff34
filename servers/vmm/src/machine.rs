//! One guest machine: a GuestSpace with RAM, a VCPU bound to this thread,
//! and the devices, driven by the `VmEnter` loop.

extern crate alloc;

use alloc::format;
use alloc::string::String;

use strata_abi::error::InvocationError;
use strata_abi::object::ObjectType;
use strata_abi::vcpu::{Exit, Field, Segment, SegmentPart, io, segment_field};
use strata_rt::cap::{Cap, Vcpu};
use strata_rt::vm::{self, VmExit};
use strata_vmm::memory::{GuestMemory, Paging};
use strata_vmm::pic::Pic;
use strata_vmm::pit::{self, Pit};
use strata_vmm::uart::Uart;
use strata_vmm::{cpuid, loader, mmio};

strata_rt::entry!(main);

#[global_allocator]
static HEAP: strata_rt::heap::Heap<{ 2 << 20 }> = strata_rt::heap::Heap::new();

/// Guest RAM.
const RAM_SIZE: u64 = 4 << 20;
/// The guest's COM1.
const COM1: u16 = 0x3f8;
/// QEMU's isa-debug-exit device: a write ends the guest with that status.
const DEBUG_EXIT: u16 = 0xf4;
/// The test device: 4 KiB of registers at this guest-physical address.
const TEST_DEVICE: u64 = 0xfeb0_0000;
/// Test device register: identification, reads "STRA".
const TEST_ID: u64 = 0x0;
/// Test device register: scratch, reads what was written.
const TEST_SCRATCH: u64 = 0x8;
/// Test device register: reads the scratch register inverted.
const TEST_INVERTED: u64 = 0x10;
/// Port through which the guest asks for an external interrupt (the vector is the value).
const DOORBELL: u16 = 0x510;
/// Longest one-shot PIT wait, in milliseconds (the counter is 16 bits).
const PIT_SHOT_MS: u64 = 50;
/// Shortest host one-shot, in PIT clocks (about 0.5 ms): a guest that
/// programs its PIT to count 1 gets its edges merged (`Pit::take_edges`)
/// instead of an interrupt storm on the host.
const PIT_SHOT_MIN: u64 = pit::HZ / 2000;
/// Most items one exit of a REP INS or OUTS moves. The rest is done by
/// the same instruction again (RIP stays), as the CPU does when a string
/// instruction is interrupted: RCX, RSI or RDI say where it stopped.
const STRING_IO_CHUNK: u64 = 4096;
/// CR4.OSXSAVE (bit 18): XSAVE, XSETBV and AVX are enabled.
const CR4_OSXSAVE: u64 = 1 << 18;
/// CR0.PG.
const CR0_PG: u64 = 1 << 31;
/// The EFER bits this CPU model has: SCE, LME, LMA (read-only) and NXE.
/// SVME is hidden with SVM, and AMD's LMSLE, FFXSR and TCE are not offered.
const EFER_SCE: u64 = 1;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;
/// Exception type for a pending event (the `Field::PendingEvent` layout).
const EVENT_EXCEPTION: u64 = 3 << 8;
/// Valid bit of a pending event.
const EVENT_VALID: u64 = 1 << 31;
/// Error-code bit of a pending event.
const EVENT_ERROR_CODE: u64 = 1 << 11;

/// The host's clock for guest timers: PIT channel 0 in one-shot mode,
/// its interrupt (ISA IRQ 0) signalling a notification. The ports and the
/// interrupt are the devices this tenant's system description gives it
/// (`io_ports = [0x40, 0x43]`, `irq = 0`).
/// Guest time is the TSC, measured against the PIT once at start.
#[derive(Clone, Copy)]
struct HostTimer {
    pit: strata_rt::io::IoPorts,
    irq: strata_rt::irq::IrqHandler,
    notification: strata_rt::CPtr,
    /// TSC ticks per second, and the TSC at guest time 0.
    tsc_hz: u64,
    tsc_start: u64,
}

/// How long the TSC is measured against the PIT.
const CALIBRATION_MS: u64 = 50;

impl HostTimer {
    fn new() -> Result<Self, InvocationError> {
        use strata_abi::bootinfo::slot;
        let (pit, irq) = (strata_rt::io::IoPorts(slot::IO_PORTS), strata_rt::irq::IrqHandler(slot::IRQ));
        let notification = strata_rt::root::retype(ObjectType::Notification, 0)?;
        // A badge, so that a signal while nobody waits leaves a mark in the
        // word (which ends `VmEnter`): a badge of 0 ORs nothing in.
        let badged = strata_rt::root::mint(notification, strata_abi::object::Rights::all(), 1)?;
        irq.set_notification(badged)?;
        let mut timer = Self { pit, irq, notification, tsc_hz: 0, tsc_start: 0 };
        let start = strata_rt::sys::timestamp();
        timer.sleep(CALIBRATION_MS)?;
        let end = strata_rt::sys::timestamp();
        (timer.tsc_hz, timer.tsc_start) = ((end - start).max(1) * 1000 / CALIBRATION_MS, end);
        log_line(&format!("vmm: guest clock: TSC at {} kHz against the PIT", timer.tsc_hz / 1000));
        strata_rt::cap::own::TCB.bind_notification(Cap::from_raw(notification))?;
        Ok(timer)
    }

    /// Guest time in PIT input clocks.
    fn now(self) -> u64 {
        let ticks = u128::from(strata_rt::sys::timestamp().saturating_sub(self.tsc_start));
        (ticks * u128::from(pit::HZ) / u128::from(self.tsc_hz)) as u64
    }

    /// Starts a one-shot of `clocks` PIT clocks (at most 65535) on the host
    /// PIT; at its end the interrupt signals the notification, which is
    /// bound to this thread, so that it also ends a `VmEnter`.
    fn arm(self, clocks: u64) -> Result<(), InvocationError> {
        let count = clocks.clamp(1, 0xffff) as u16;
        // Channel 0, low then high byte, mode 0 (interrupt on terminal count).
        self.pit.write_u8(0x43, 0x30)?;
        self.irq.ack()?;
        self.pit.write_u8(0x40, count as u8)?;
        self.pit.write_u8(0x40, (count >> 8) as u8)
    }

    /// Blocks for `milliseconds`, in one-shot PIT periods of at most 50 ms.
    fn sleep(self, mut milliseconds: u64) -> Result<(), InvocationError> {
        while milliseconds > 0 {
            let shot = milliseconds.min(PIT_SHOT_MS);
            self.arm(pit::HZ * shot / 1000)?;
            let _ = strata_rt::recv(self.notification);
            milliseconds -= shot;
        }
        Ok(())
    }
}

fn main() -> ! {
    strata_rt::logger::init(strata_rt::logger::Output::Parent, log::LevelFilter::Info);
    let timer = HostTimer::new()
        .inspect_err(|e| {
            log_line(&format!(
                "vmm: no host timer ({e}; the description gives a tenant the PIT with \
                 io_ports = [0x40, 0x43] and irq = 0): guest timers off"
            ))
        })
        .ok();
    // One guest at a time, each in the same memory.
    let mut memory = match vm::GuestMemory::new(RAM_SIZE) {
        Ok(memory) => memory,
        Err(e) => {
            log_line(&format!("vmm: no memory for guests: {e}"));
            strata_rt::parent::exit(1)
        }
    };
    let mut guests = 0;
    let mut started = 0;
    let mut index = 0;
    while let Some((descriptor, image)) = strata_rt::sys::module(index) {
        index += 1;
        let name = descriptor.name().unwrap_or("?");
        // A guest's multiboot modules (`<guest>+<name>`) are not guests.
        if !name.starts_with("guest-") || name.contains('+') {
            continue;
        }
        guests += 1;
        let outcome = match Machine::new(name, image, timer, memory) {
            Ok(mut machine) => {
                started += 1;
                let outcome = machine.run();
                match machine.release() {
                    Ok(back) => memory = back,
                    Err(why) => {
                        log_line(&format!("vmm: {name}: {outcome}; then {why}"));
                        strata_rt::parent::exit(1)
                    }
                }
                outcome
            }
            Err((why, Some(back))) => {
                memory = back;
                format!("not started: {why}")
            }
            Err((why, None)) => {
                log_line(&format!("vmm: {name}: not started: {why}"));
                strata_rt::parent::exit(1)
            }
        };
        log_line(&format!("vmm: {name}: {outcome}"));
    }
    log_line(&format!("vmm: {guests} guest module(s), {started} started"));
    strata_rt::parent::exit(0)
}

/// One line for this tenant's log: the root task prints it with the
/// tenant's name.
fn log_line(line: &str) {
    strata_rt::parent::log_line(line);
}

/// A running guest.
struct Machine {
    name: &'static str,
    guest: vm::Guest,
    vcpu: Cap<Vcpu>,
    uart: Uart,
    /// The registers of the first entry (after it, the guest's registers
    /// are worked on in place, in the IPC buffer's register block).
    initial: strata_abi::vcpu::RegisterBlock,
    /// The register block was changed and must go back with the next entry.
    dirty: bool,
    /// A vector the doorbell asked for, waiting for the guest to take interrupts.
    pending_interrupt: Option<u8>,
    scratch: u64,
    /// The host clock, if there is one.
    host_timer: Option<HostTimer>,
    /// The 8259A pair and the 8254, on guest time (`HostTimer::now`).
    pic: Pic,
    pit: Pit,
    /// An interrupt window is asked for.
    window: bool,
    /// A host one-shot runs for the guest PIT's next edge.
    armed: bool,
    /// The guest's CR4.OSXSAVE and XCR0 as last read (for CPUID), and the host's XCR0.
    xsave: cpuid::XsaveState,
}

fn failed(what: &str, error: InvocationError) -> String {
    format!("{what}: {error:?}")
}

impl Machine {
    /// Makes the GuestSpace, RAM and VCPU in `memory`, and loads `image`.
    /// On failure, `memory` comes back with the error, empty (`None` only
    /// if emptying it failed).
    fn new(
        name: &'static str,
        image: &[u8],
        host_timer: Option<HostTimer>,
        memory: vm::GuestMemory,
    ) -> Result<Self, (String, Option<vm::GuestMemory>)> {
        let multiboot = !loader::is_boot_sector(image) && !loader::is_plain_elf64(image);
        if let Some(Err(e)) = multiboot.then(|| loader::check_multiboot(image)) {
            return Err((format!("{e}"), Some(memory)));
        }
        let mut guest =
            vm::Guest::new_in(memory, RAM_SIZE).map_err(|(e, memory)| (format!("{e}"), Some(memory)))?;
        let vcpu = guest.vcpu();
        let registers = match Self::load(name, image, guest.ram(), vcpu) {
            Ok(registers) => registers,
            Err(why) => {
                let back =
                    guest.release().map_err(|e| (failed("giving back the guest's memory", e), None))?;
                return Err((why, Some(back)));
            }
        };
        Ok(Self {
            name,
            guest,
            vcpu,
            uart: Uart::new(),
            initial: registers,
            dirty: true,
            pending_interrupt: None,
            scratch: 0,
            host_timer,
            pic: Pic::new(),
            pit: Pit::new(),
            window: false,
            armed: false,
            // The kernel's XCR0 is every x87, SSE and AVX component the CPU
            // has (CPUID.(EAX=0DH,ECX=0):EAX).
            xsave: cpuid::XsaveState {
                osxsave: false,
                xcr0: 1,
                host_xcr0: u64::from(core::arch::x86_64::__cpuid_count(0xd, 0).eax) & cpuid::XCR0_X87_SSE_AVX,
            },
        })
    }

    /// Deletes the guest and hands back its memory, empty, for the next.
    fn release(self) -> Result<vm::GuestMemory, String> {
        self.guest.release().map_err(|e| failed("giving back the guest's memory", e))
    }

    /// Loads `image` into `ram` and sets `vcpu`'s entry state for it.
    fn load(
        name: &str,
        image: &[u8],
        ram: &mut [u8],
        vcpu: Cap<Vcpu>,
    ) -> Result<strata_abi::vcpu::RegisterBlock, String> {
        let mut memory = GuestMemory::new(ram);
        let registers = if loader::is_boot_sector(image) {
            let entry = loader::load_boot_sector(image, &mut memory).map_err(|e| format!("{e}"))?;
            boot_sector_state(vcpu, entry).map_err(|e| failed("setting the entry state", e))?
        } else if loader::is_plain_elf64(image) {
            let entry = loader::load_plain_elf64(image, &mut memory).map_err(|e| format!("{e}"))?;
            long_mode_state(vcpu, entry).map_err(|e| failed("setting the entry state", e))?
        } else {
            // Modules named `<guest>+<name>` are its multiboot modules.
            let mut modules: heapless::Vec<(&str, &[u8]), { loader::MAX_MODULES }> = heapless::Vec::new();
            let mut index = 0;
            while let Some((descriptor, bytes)) = strata_rt::sys::module(index) {
                index += 1;
                let module = descriptor.name().unwrap_or("");
                if let Some(rest) = module.strip_prefix(name).and_then(|r| r.strip_prefix('+')) {
                    modules
                        .push((rest, bytes))
                        .map_err(|_| format!("{}", loader::LoadError::TooManyModules))?;
                }
            }
            let boot = loader::load(image, &mut memory, name, &modules).map_err(|e| format!("{e}"))?;
            multiboot_state(vcpu, boot).map_err(|e| failed("setting the entry state", e))?
        };
        Ok(registers)
    }
}

/// The state a BIOS starts a boot sector in: real mode at 0000:`entry`,
/// the boot drive (80h, the first hard disk) in DL, interrupts off.
fn boot_sector_state(
    vcpu: Cap<Vcpu>,
    entry: u64,
) -> Result<strata_abi::vcpu::RegisterBlock, InvocationError> {
    vcpu.write(&[
        (segment_field(Segment::Cs, SegmentPart::Selector), 0),
        (segment_field(Segment::Cs, SegmentPart::Base), 0),
        (Field::Intercepts as u64, strata_abi::vcpu::intercept::HLT),
    ])?;
    let mut registers = [0; strata_abi::vcpu::REGISTER_BLOCK_WORDS];
    registers[Field::Rip as usize] = entry;
    registers[Field::Rdx as usize] = 0x80;
    registers[Field::Rflags as usize] = 2;
    Ok(registers)
}

/// The state a plain 64-bit ELF kernel starts in: long mode, paging on
/// with the identity map of the first GiB the loader built, flat 64-bit
/// code and data segments, interrupts off, at `entry`.
fn long_mode_state(vcpu: Cap<Vcpu>, entry: u64) -> Result<strata_abi::vcpu::RegisterBlock, InvocationError> {
    for (s, selector, attributes) in [
        (Segment::Cs, 0x08, 0xa09b),
        (Segment::Ds, 0x10, 0xc093),
        (Segment::Es, 0x10, 0xc093),
        (Segment::Ss, 0x10, 0xc093),
        (Segment::Fs, 0x10, 0xc093),
        (Segment::Gs, 0x10, 0xc093),
    ] {
        vcpu.write(&[
            (segment_field(s, SegmentPart::Selector), selector),
            (segment_field(s, SegmentPart::Base), 0),
            (segment_field(s, SegmentPart::Limit), 0xffff_ffff),
            (segment_field(s, SegmentPart::Attributes), attributes),
        ])?;
    }
    // PE, ET, NE, PG; PAE and OSFXSR; LME and LMA; the identity tables.
    vcpu.write(&[
        (Field::Cr0 as u64, 0x8000_0031),
        (Field::Cr4 as u64, 0x220),
        (Field::Efer as u64, 0x500),
        (Field::Cr3 as u64, loader::LONG_MODE_TABLES),
    ])?;
    vcpu.write(&[(Field::Intercepts as u64, strata_abi::vcpu::intercept::HLT)])?;
    let mut registers = [0; strata_abi::vcpu::REGISTER_BLOCK_WORDS];
    registers[Field::Rip as usize] = entry;
    registers[Field::Rflags as usize] = 2;
    Ok(registers)
}

/// The machine state a multiboot kernel starts in (specification §3.2):
/// flat 32-bit protected mode, paging and interrupts off. Returns the
/// general registers; the rest is written to `vcpu`.
fn multiboot_state(
    vcpu: Cap<Vcpu>,
    boot: loader::Boot,
) -> Result<strata_abi::vcpu::RegisterBlock, InvocationError> {
    let segment = |s, part| segment_field(s, part);
    for (s, attributes) in [
        (Segment::Cs, 0xc09b),
        (Segment::Ds, 0xc093),
        (Segment::Es, 0xc093),
        (Segment::Ss, 0xc093),
        (Segment::Fs, 0xc093),
        (Segment::Gs, 0xc093),
    ] {
        let selector = if s == Segment::Cs { 0x08 } else { 0x10 };
        vcpu.write(&[
            (segment(s, SegmentPart::Selector), selector),
            (segment(s, SegmentPart::Base), 0),
            (segment(s, SegmentPart::Limit), 0xffff_ffff),
            (segment(s, SegmentPart::Attributes), attributes),
        ])?;
    }
    vcpu.write(&[(Field::Cr0 as u64, 0x11), (Field::Cr4 as u64, 0), (Field::Efer as u64, 0)])?;
    // HLT exits, so an idle guest can be reported.
    vcpu.write(&[(Field::Intercepts as u64, strata_abi::vcpu::intercept::HLT)])?;
    let mut registers = [0; strata_abi::vcpu::REGISTER_BLOCK_WORDS];
    registers[Field::Rax as usize] = u64::from(loader::BOOT_MAGIC);
    registers[Field::Rbx as usize] = u64::from(boot.info);
    registers[Field::Rip as usize] = u64::from(boot.entry);
    registers[Field::Rflags as usize] = 2;
    Ok(registers)
}

impl Machine {
    fn register(&self, field: Field) -> u64 {
        vm::register(field)
    }

    fn set_register(&mut self, field: Field, value: u64) {
        vm::set_register(field, value);
        self.dirty = true;
    }

    fn advance(&mut self, length: u64) {
        let rip = self.register(Field::Rip).wrapping_add(length);
        self.set_register(Field::Rip, rip);
    }

    /// Runs the guest until it ends; returns how.
    fn run(&mut self) -> String {
        let mut first = true;
        loop {
            if let Err(outcome) = self.arm_host_timer() {
                return outcome;
            }
            let entered = if first {
                vm::enter(Some(&self.initial))
            } else if self.dirty {
                vm::enter_in_place()
            } else {
                vm::enter(None)
            };
            first = false;
            self.dirty = false;
            let exit = match entered {
                Ok(exit) => exit,
                Err(error) => return failed("VmEnter refused", error),
            };
            if let Err(outcome) = self.handle(exit).and_then(|()| self.deliver_interrupts()) {
                if let Some(line) = self.uart.pending() {
                    self.log_line(&line);
                }
                return outcome;
            }
        }
    }

    fn log_line(&self, line: &str) {
        log_line(&format!("[{}] {line}", self.name));
    }

    /// Emulates what the exit asks for; `Err` with the outcome when the guest is done.
    fn handle(&mut self, exit: VmExit) -> Result<(), String> {
        let rip = self.register(Field::Rip);
        match exit.reason {
            Exit::Cpuid => {
                let leaf = self.register(Field::Rax) as u32;
                let subleaf = self.register(Field::Rcx) as u32;
                // Only these answers depend on guest state: leaf 1 on CR4,
                // leaf 0Dh's size on XCR0, which the kernel keeps as the CPU
                // has it (even after an XSETBV the CPU did not report).
                if leaf == 1 {
                    self.xsave.osxsave = self.osxsave()?;
                } else if (leaf, subleaf) == (0xd, 0) {
                    self.xsave.xcr0 =
                        self.vcpu.read(Field::Xcr0 as u64).map_err(|e| failed("reading XCR0", e))?;
                }
                let values = cpuid::model(leaf, subleaf, self.xsave, |leaf, subleaf| {
                    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
                    [r.eax, r.ebx, r.ecx, r.edx]
                });
                for (field, value) in [Field::Rax, Field::Rbx, Field::Rcx, Field::Rdx].into_iter().zip(values)
                {
                    self.set_register(field, u64::from(value));
                }
                self.advance(exit.length);
            }
            Exit::Io => {
                if self.port_io(exit)? {
                    self.advance(exit.length);
                }
            }
            Exit::MsrRead => {
                let value =
                    self.read_msr(exit.qualification as u32).map_err(|e| failed("reading guest state", e))?;
                match value {
                    Some(value) => {
                        self.set_register(Field::Rax, value & 0xffff_ffff);
                        self.set_register(Field::Rdx, value >> 32);
                        self.advance(exit.length);
                    }
                    None => self.inject_exception(13, Some(0))?,
                }
            }
            Exit::MsrWrite => {
                let value = (self.register(Field::Rdx) << 32) | (self.register(Field::Rax) & 0xffff_ffff);
                if self.write_msr(exit.qualification as u32, value) {
                    self.advance(exit.length);
                } else {
                    self.inject_exception(13, Some(0))?;
                }
            }
            Exit::Xsetbv => self.xsetbv(exit.length)?,
            Exit::NestedPageFault => self.device_memory(exit)?,
            // The host one-shot ended (its edges are looked at below).
            Exit::Notification => self.armed = false,
            Exit::InterruptWindow => {
                self.window = false;
                // The doorbell's vector, else what the 8259As present (INTA).
                if let Some(vector) = self.pending_interrupt.take().or_else(|| self.pic.acknowledge()) {
                    self.vcpu
                        .write(&[(Field::PendingEvent as u64, u64::from(vector) | EVENT_VALID)])
                        .map_err(|e| failed("injecting an interrupt", e))?;
                }
            }
            Exit::Hlt => {
                let interrupts = self.register(Field::Rflags) & (1 << 9) != 0;
                if !interrupts {
                    return Err(format!("halted at {rip:#x} with interrupts off"));
                }
                // Halted until an interrupt: the PIT's next one, waited for
                // on the host timer.
                loop {
                    self.update_timer();
                    if self.pending_interrupt.is_some() || self.pic.pending().is_some() {
                        break;
                    }
                    // The PIT's IRQ 0 is the only source that can wake it.
                    if !self.pic.would_deliver(0) {
                        return Err(format!(
                            "halted at {rip:#x} with IRQ 0, its only wake-up, masked or in service at the 8259A"
                        ));
                    }
                    let (Some(clock), Some(deadline)) = (self.host_timer, self.pit.deadline(self.now()))
                    else {
                        return Err(format!("halted at {rip:#x} with nothing to wake it"));
                    };
                    let clocks = deadline.saturating_sub(self.now());
                    let milliseconds = (clocks * 1000).div_ceil(pit::HZ).max(1);
                    clock.sleep(milliseconds).map_err(|e| failed("waiting on the host timer", e))?;
                    self.armed = false;
                }
                self.advance(exit.length);
                // The STI shadow covered the HLT, which is done: the
                // interrupt is taken before the next instruction.
                self.vcpu
                    .write(&[(Field::Interruptibility as u64, 0)])
                    .map_err(|e| failed("ending the interrupt shadow", e))?;
            }
            // No hypercall interface, and no nested virtualization (CPUID
            // hides VMX and SVM): on such a CPU these instructions are #UD.
            Exit::Hypercall | Exit::NestedVirtualization => self.inject_exception(6, None)?,
            Exit::Shutdown => return Err(format!("shut down (triple fault) at {rip:#x}")),
            Exit::InvalidGuestState => {
                return Err(format!(
                    "the hardware refused the guest state (reason {:#x})",
                    exit.qualification
                ));
            }
            Exit::EntryFailure => return Err(String::from("could not enter: no GuestSpace")),
            // #DB and #AC always exit (the kernel forces them): they are the
            // guest's own, delivered to it as they came.
            Exit::Exception if matches!(exit.qualification & 0xff, 1 | 17) => {
                let vector = exit.qualification & 0xff;
                let error = (exit.qualification & 1 << 8 != 0).then_some(exit.qualification2 as u32);
                self.inject_exception(vector, error)?;
            }
            Exit::Exception => {
                return Err(format!(
                    "unexpected exception {} (error code {:#x}) at {rip:#x}",
                    exit.qualification & 0xff,
                    exit.qualification2
                ));
            }
            other => {
                return Err(format!(
                    "stopped on an exit it does not handle: {other:?} ({:#x}) at {rip:#x}",
                    exit.qualification
                ));
            }
        }
        Ok(())
    }

    /// Raises external interrupt `vector` (the doorbell, outside the
    /// 8259As): it is injected as soon as the guest can take it.
    fn raise(&mut self, vector: u8) -> Result<(), String> {
        self.pending_interrupt = Some(vector);
        self.request_window()
    }

    /// Asks for an interrupt-window exit, unless one is asked for.
    fn request_window(&mut self) -> Result<(), String> {
        if !self.window {
            self.window = true;
            self.vcpu
                .write(&[(Field::InterruptWindow as u64, 1)])
                .map_err(|e| failed("requesting an interrupt window", e))?;
        }
        Ok(())
    }

    /// Guest time, in PIT input clocks (frozen without a host timer).
    fn now(&self) -> u64 {
        self.host_timer.map_or(0, HostTimer::now)
    }

    /// While the guest runs, a host one-shot ends `VmEnter` at the guest
    /// PIT's next edge (or after 55 ms, and then again).
    fn arm_host_timer(&mut self) -> Result<(), String> {
        let (Some(clock), false) = (self.host_timer, self.armed) else { return Ok(()) };
        let now = self.now();
        if let Some(deadline) = self.pit.deadline(now) {
            let clocks = deadline.saturating_sub(now).max(PIT_SHOT_MIN);
            clock.arm(clocks).map_err(|e| failed("arming the host timer", e))?;
            self.armed = true;
        }
        Ok(())
    }

    /// The PIT's output edges since the last look go to IRQ 0.
    fn update_timer(&mut self) {
        if self.pit.take_edges(self.now()) {
            self.pic.pulse(0);
        }
    }

    /// After each exit: a timer edge that came meanwhile, and an interrupt
    /// the 8259As present, which waits for the guest to take interrupts.
    fn deliver_interrupts(&mut self) -> Result<(), String> {
        self.update_timer();
        if self.pic.pending().is_some() {
            self.request_window()?;
        }
        Ok(())
    }

    /// The guest's CR4.OSXSAVE.
    fn osxsave(&self) -> Result<bool, String> {
        let cr4 = self.vcpu.read(Field::Cr4 as u64).map_err(|e| failed("reading CR4", e))?;
        Ok(cr4 & CR4_OSXSAVE != 0)
    }

    /// XSETBV (Intel SDM vol. 2B): #UD unless CR4.OSXSAVE is set; #GP(0)
    /// outside ring 0, for an XCR other than XCR0, or for a value XCR0
    /// cannot hold; else the kernel loads the value whenever the guest runs.
    fn xsetbv(&mut self, length: u64) -> Result<(), String> {
        if !self.osxsave()? {
            return self.inject_exception(6, None);
        }
        let ss = self
            .vcpu
            .read(segment_field(Segment::Ss, SegmentPart::Attributes))
            .map_err(|e| failed("reading SS", e))?;
        let value = self.register(Field::Rdx) << 32 | self.register(Field::Rax) & 0xffff_ffff;
        let cpl = ss >> 5 & 3;
        if cpl != 0 || !self.xsave.xsetbv_allowed(self.register(Field::Rcx) as u32, value) {
            return self.inject_exception(13, Some(0));
        }
        self.vcpu.write(&[(Field::Xcr0 as u64, value)]).map_err(|e| failed("setting XCR0", e))?;
        self.advance(length);
        Ok(())
    }

    /// Injects exception `vector` (with `error` code) on the next entry.
    fn inject_exception(&mut self, vector: u64, error: Option<u32>) -> Result<(), String> {
        let mut event = vector | EVENT_EXCEPTION | EVENT_VALID;
        if error.is_some() {
            event |= EVENT_ERROR_CODE;
        }
        self.vcpu
            .write(&[
                (Field::PendingEvent as u64, event),
                (Field::PendingEventError as u64, u64::from(error.unwrap_or(0))),
            ])
            .map_err(|e| failed("injecting an exception", e))
    }

    /// The guest's MSRs: the architectural ones it has through VCPU state,
    /// a few read-only ones with fixed values; `None` for the rest (#GP).
    fn read_msr(&self, msr: u32) -> Result<Option<u64>, InvocationError> {
        let field = |f: u64| self.vcpu.read(f).map(Some);
        match msr_field(msr) {
            Some(f) => field(f),
            None => Ok(match msr {
                // APIC base: BSP, enabled, at the architectural address.
                0x1b => Some(0xfee0_0900),
                // Fast strings on.
                0x1a0 => Some(1),
                0x10 => Some(strata_rt::sys::timestamp()),
                // No MTRRs.
                0xfe => Some(0),
                _ => None,
            }),
        }
    }

    fn write_msr(&self, msr: u32, value: u64) -> bool {
        // WRMSR #GPs on a PAT entry of an undefined memory type (2, 3, 8
        // and up; Intel SDM vol. 3A §13.12.2, AMD APM vol. 2 §7.8.1), which
        // the hardware would otherwise refuse at the next entry.
        if msr == 0x277 && value.to_le_bytes().iter().any(|&entry| !matches!(entry, 0 | 1 | 4 | 5 | 6 | 7)) {
            return false;
        }
        if msr == 0xc000_0080 {
            return self.write_efer(value);
        }
        match msr_field(msr) {
            Some(f) => self.vcpu.write(&[(f, value)]).is_ok(),
            // The APIC base may be rewritten to what it is.
            None => msr == 0x1b && value == 0xfee0_0900,
        }
    }

    /// WRMSR to EFER as the CPU takes it (Intel SDM vol. 3A §2.2.1 and
    /// §10.8.5, AMD APM vol. 2 §3.1.7): #GP (`false`) for a bit the model
    /// does not have, or for LME changed while paging is on; LMA, which
    /// the CPU sets itself, keeps its value.
    fn write_efer(&self, value: u64) -> bool {
        let (Ok(old), Ok(cr0)) = (self.vcpu.read(Field::Efer as u64), self.vcpu.read(Field::Cr0 as u64))
        else {
            return false;
        };
        if value & !(EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE) != 0
            || (cr0 & CR0_PG != 0 && (value ^ old) & EFER_LME != 0)
        {
            return false;
        }
        let value = value & !EFER_LMA | old & EFER_LMA;
        self.vcpu.write(&[(Field::Efer as u64, value)]).is_ok()
    }

    fn paging(&self) -> Result<Paging, String> {
        let read = |f: Field| self.vcpu.read(f as u64).map_err(|e| failed("reading guest state", e));
        Ok(Paging {
            cr0: read(Field::Cr0)?,
            cr3: read(Field::Cr3)?,
            cr4: read(Field::Cr4)?,
            efer: read(Field::Efer)?,
        })
    }

    /// Emulates an I/O instruction; `Ok(false)` when a REP string
    /// instruction has items left for the next exit (see `STRING_IO_CHUNK`).
    fn port_io(&mut self, exit: VmExit) -> Result<bool, String> {
        let port = io::port(exit.qualification);
        let size = io::size(exit.qualification);
        let input = exit.qualification & io::IN != 0;
        if exit.qualification & io::STRING == 0 {
            let mask = if size == 4 { 0xffff_ffff } else { (1u64 << (8 * size)) - 1 };
            if input {
                let value = self.port_in(port, size);
                let rax = self.register(Field::Rax);
                let merged = if size == 4 { value & mask } else { (rax & !mask) | (value & mask) };
                self.set_register(Field::Rax, merged);
            } else {
                let value = self.register(Field::Rax) & mask;
                self.port_out(port, size, value)?;
            }
            return Ok(true);
        }
        // INS and OUTS: ES:RDI or a segment and RSI, stepping by the size
        // (backwards with DF), RCX times with REP. The segment (an OUTS may
        // name one) and the address size come from the instruction.
        let paging = self.paging()?;
        let (bytes, fetched, bitness) = self.fetch_instruction(paging)?;
        let operand = mmio::string_operand(&bytes[..fetched], bitness)
            .map_err(|e| format!("string I/O at {:#x}: {e}", self.register(Field::Rip)))?;
        let (base, wrap) = self.segment_base(operand.segment, bitness)?;
        let address_mask = match operand.address_size {
            2 => 0xffff,
            4 => 0xffff_ffff,
            _ => u64::MAX,
        };
        let rep = exit.qualification & io::REP != 0;
        let count = if rep { self.register(Field::Rcx) & address_mask } else { 1 };
        let done = count.min(STRING_IO_CHUNK);
        // RSI, RDI and RCX change in their address-size part; a 32-bit
        // part written in 64-bit mode clears the upper half, as every
        // 32-bit register write does (Intel SDM vol. 1 §3.4.1.1).
        let kept = if operand.address_size == 2 { !address_mask } else { 0 };
        let step = if self.register(Field::Rflags) & (1 << 10) != 0 {
            (size as u64).wrapping_neg()
        } else {
            size as u64
        };
        let index = if input { Field::Rdi } else { Field::Rsi };
        let mut address = self.register(index);
        for _ in 0..done {
            let linear = base.wrapping_add(address & address_mask) & wrap;
            let mut memory = GuestMemory::new(self.guest.ram());
            let mut bytes = [0u8; 4];
            let bytes = &mut bytes[..usize::from(size)];
            if input {
                let value = self.port_in(port, size);
                bytes.copy_from_slice(&value.to_le_bytes()[..usize::from(size)]);
                let mut memory = GuestMemory::new(self.guest.ram());
                memory.write_linear(paging, linear, bytes).map_err(|e| format!("INS at {linear:#x}: {e}"))?;
            } else {
                memory.read_linear(paging, linear, bytes).map_err(|e| format!("OUTS at {linear:#x}: {e}"))?;
                let mut word = [0u8; 8];
                word[..bytes.len()].copy_from_slice(bytes);
                self.port_out(port, size, u64::from_le_bytes(word))?;
            }
            address = (address & kept) | (address.wrapping_add(step) & address_mask);
        }
        self.set_register(index, address);
        if rep {
            let rcx = self.register(Field::Rcx);
            self.set_register(Field::Rcx, (rcx & kept) | (count - done));
        }
        Ok(done == count)
    }

    /// A read from an I/O port: the UART, or an empty ISA bus (all ones).
    fn port_in(&mut self, port: u16, size: u8) -> u64 {
        match port {
            COM1..=0x3ff if size == 1 => u64::from(self.uart.read(port - COM1)),
            port if Pic::handles(port) && size == 1 => u64::from(self.pic.read(port)),
            port if Pit::handles(port) && size == 1 => {
                let now = self.now();
                u64::from(self.pit.read(port, now))
            }
            _ => u64::MAX,
        }
    }

    /// A write to an I/O port; `Err` ends the guest.
    fn port_out(&mut self, port: u16, size: u8, value: u64) -> Result<(), String> {
        match port {
            COM1..=0x3ff if size == 1 => {
                if let Some(line) = self.uart.write(port - COM1, value as u8) {
                    self.log_line(&line);
                }
            }
            DEBUG_EXIT => {
                return Err(format!(
                    "exited with status {value:#x} through isa-debug-exit (QEMU would exit with {})",
                    (value << 1 | 1) & 0xff
                ));
            }
            DOORBELL => self.raise(value as u8)?,
            port if Pic::handles(port) && size == 1 => self.pic.write(port, value as u8),
            port if Pit::handles(port) && size == 1 => {
                let now = self.now();
                self.pit.write(port, value as u8, now);
            }
            _ => {}
        }
        Ok(())
    }

    /// The bytes at the guest's CS:RIP, as many of the 15 an instruction
    /// may have as can be read (it may end before a page that is not
    /// mapped), and the code size in bits (16, 32 or 64).
    fn fetch_instruction(&mut self, paging: Paging) -> Result<([u8; 15], usize, u32), String> {
        let cs = |part| self.vcpu.read(segment_field(Segment::Cs, part)).map_err(|e| failed("reading CS", e));
        let attributes = cs(SegmentPart::Attributes)?;
        let bitness = if paging.efer & (1 << 10) != 0 && attributes & (1 << 13) != 0 {
            64
        } else if attributes & (1 << 14) != 0 {
            32
        } else {
            16
        };
        let (base, wrap) = self.segment_base(Segment::Cs, bitness)?;
        // IP wraps at 64 KiB in 16-bit code, EIP at 4 GiB in 32-bit code.
        let offset_mask = if bitness == 64 { u64::MAX } else { (1u64 << bitness) - 1 };
        let rip = self.register(Field::Rip);
        let mut bytes = [0u8; 15];
        let mut memory = GuestMemory::new(self.guest.ram());
        let mut fetched = 0;
        while fetched < bytes.len() {
            let offset = rip.wrapping_add(fetched as u64) & offset_mask;
            let linear = base.wrapping_add(offset) & wrap;
            if memory.read_linear(paging, linear, &mut bytes[fetched..=fetched]).is_err() {
                break;
            }
            fetched += 1;
        }
        Ok((bytes, fetched, bitness))
    }

    /// The base `segment` adds to an offset for code of `bitness` bits,
    /// and the mask of linear addresses: in 64-bit mode only FS and GS
    /// have a base, and addresses do not wrap at 4 GiB (Intel SDM vol. 3A
    /// §3.4.4; AMD APM vol. 2 §4.12.2).
    fn segment_base(&self, segment: Segment, bitness: u32) -> Result<(u64, u64), String> {
        if bitness == 64 && !matches!(segment, Segment::Fs | Segment::Gs) {
            return Ok((0, u64::MAX));
        }
        let base = self
            .vcpu
            .read(segment_field(segment, SegmentPart::Base))
            .map_err(|e| failed("reading a segment base", e))?;
        Ok((base, if bitness == 64 { u64::MAX } else { 0xffff_ffff }))
    }

    /// A nested page fault: the test device, emulated instruction by
    /// instruction; anything else ends the guest.
    fn device_memory(&mut self, exit: VmExit) -> Result<(), String> {
        let address = exit.qualification2;
        let rip = self.register(Field::Rip);
        if !(TEST_DEVICE..TEST_DEVICE + 0x1000).contains(&address) {
            return Err(format!("accessed guest-physical {address:#x}, which is not mapped, at {rip:#x}"));
        }
        let paging = self.paging()?;
        let (bytes, fetched, bitness) = self.fetch_instruction(paging)?;
        let decoded = mmio::decode(&bytes[..fetched], bitness).map_err(|e| format!("at {rip:#x}: {e}"))?;
        let register = address - TEST_DEVICE;
        let mask = if decoded.size >= 8 { u64::MAX } else { (1u64 << (8 * decoded.size)) - 1 };
        match decoded.access {
            mmio::Access::Read(gpr) => {
                let value = match register {
                    TEST_ID => 0x4152_5453, // "STRA"
                    TEST_SCRATCH => self.scratch,
                    TEST_INVERTED => !self.scratch,
                    _ => u64::MAX,
                } & mask;
                let field = gpr_field(gpr.index);
                let merged = gpr.merge(self.register(field), value);
                self.set_register(field, merged);
            }
            mmio::Access::WriteRegister(gpr) => {
                let value = gpr.extract(self.register(gpr_field(gpr.index)));
                if register == TEST_SCRATCH {
                    self.scratch = value & mask;
                }
            }
            mmio::Access::WriteImmediate(value) => {
                if register == TEST_SCRATCH {
                    self.scratch = value & mask;
                }
            }
        }
        self.advance(decoded.length);
        Ok(())
    }
}

/// The field of general register `index` (encoding order).
fn gpr_field(index: usize) -> Field {
    const FIELDS: [Field; 16] = [
        Field::Rax,
        Field::Rcx,
        Field::Rdx,
        Field::Rbx,
        Field::Rsp,
        Field::Rbp,
        Field::Rsi,
        Field::Rdi,
        Field::R8,
        Field::R9,
        Field::R10,
        Field::R11,
        Field::R12,
        Field::R13,
        Field::R14,
        Field::R15,
    ];
    FIELDS[index & 15]
}

/// The VCPU field behind an architectural MSR.
fn msr_field(msr: u32) -> Option<u64> {
    Some(match msr {
        0xc000_0080 => Field::Efer as u64,
        0x277 => Field::Pat as u64,
        0x174 => Field::SysenterCs as u64,
        0x175 => Field::SysenterEsp as u64,
        0x176 => Field::SysenterEip as u64,
        0xc000_0081 => Field::Star as u64,
        0xc000_0082 => Field::Lstar as u64,
        0xc000_0083 => Field::Cstar as u64,
        0xc000_0084 => Field::Sfmask as u64,
        0xc000_0100 => segment_field(Segment::Fs, SegmentPart::Base),
        0xc000_0101 => segment_field(Segment::Gs, SegmentPart::Base),
        0xc000_0102 => Field::KernelGsBase as u64,
        _ => return None,
    })
}
