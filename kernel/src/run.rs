//! The kernel after boot: the root task is started, and from then on the
//! kernel runs only when a thread makes a system call, takes an exception,
//! or is interrupted. Each entry ends by choosing what runs next.
//!
//! All kernel state after boot is one [`Runtime`] behind a lock. The lock
//! is never contended (one CPU, and interrupts are off in the kernel). It
//! exists so that the state has a single owner. Fault and panic paths do
//! not take it.

use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use spin::Mutex;
use strata_abi::exit::ExitCode;

use crate::addr::{DirectMap, PhysAddr};
use crate::arch::x86_64::idt::InterruptFrame;
use crate::arch::x86_64::serial::Uart16550;
use crate::arch::x86_64::{exit, user};
use crate::boot::{FRAMES, Kernel};
use crate::object::memory::DirectMapMemory;
use crate::object::tcb::{UserContext, layout};
use crate::object::vcpu::VmEntry;
use crate::object::vspace::ASID_EPOCH;
use crate::object::{ObjectSpace, PhysicalMemory};
use crate::rootserver::Module;
use crate::syscall::Outcome;
use strata_abi::syscall::Syscall;

/// Kernel state after boot.
pub struct Runtime {
    space: ObjectSpace<DirectMapMemory>,
    direct_map: DirectMap,
}

static RUNTIME: Mutex<Option<Runtime>> = Mutex::new(None);

/// Address-space switches (CR3 writes) since boot.
pub(crate) static CR3_WRITES: AtomicU64 = AtomicU64::new(0);
/// User FPU-state saves (XSAVE on entry from user mode) since boot, but
/// for those of system calls the IPC fastpath completed.
static FPU_SAVES: AtomicU64 = AtomicU64::new(0);
/// User FPU-state restores (XRSTOR on return to user mode) since boot, but
/// for those of system calls the IPC fastpath completed.
static FPU_RESTORES: AtomicU64 = AtomicU64::new(0);
/// System calls the IPC fastpath completed since boot: each saved one
/// thread's FPU state and restored another's, which the debug call adds
/// to the counts above (one locked add here instead of three).
pub(crate) static FASTPATH_CALLS: AtomicU64 = AtomicU64::new(0);
/// Guest TLB flushes `VmEnter` asked for since boot (test images only).
#[cfg(feature = "selftest")]
static GUEST_FLUSHES: AtomicU64 = AtomicU64::new(0);
/// Device interrupt lines that fired while the kernel held the runtime
/// (a guest's run was just interrupted), one bit per line: they are
/// signalled, and their vectors acknowledged, by the VM exit path.
static DEFERRED_LINES: AtomicU64 = AtomicU64::new(0);
/// Whether a timer tick arrived while the kernel held the runtime.
static DEFERRED_TICK: AtomicBool = AtomicBool::new(false);

/// Counts the FPU save and restore the entry and exit stubs do around a
/// kernel entry from user mode that returns to `to` (restored only if it
/// is a user context). Only test builds, which can read the counters,
/// pay for these locked adds on the system-call path.
fn count_crossing(to: *const UserContext) {
    if !cfg!(feature = "selftest") {
        return;
    }
    FPU_SAVES.fetch_add(1, Ordering::Relaxed);
    // SAFETY: `to` is a TCB's saved context or the idle context, both valid.
    if unsafe { (&raw const (*to).cs).read() } & 3 == 3 {
        FPU_RESTORES.fetch_add(1, Ordering::Relaxed);
    }
}

/// Name of the boot module the root task is made from.
pub const ROOT_MODULE: &str = "root";

/// Whether the boot image has a root task.
pub fn has_root_task(kernel: &Kernel) -> bool {
    root_module(kernel).is_some()
}

fn root_module(kernel: &Kernel) -> Option<&'static [u8]> {
    modules(kernel).find(|m| m.name == ROOT_MODULE).map(|m| m.bytes)
}

/// The boot modules (a module whose name is not UTF-8 is listed as `?`).
fn modules(kernel: &Kernel) -> impl Iterator<Item = Module<'static>> {
    let modules = kernel.responses.modules.map_or(&[][..], |r| r.modules());
    modules.iter().map(|module| Module {
        name: core::str::from_utf8(module.path().to_bytes()).unwrap_or("?"),
        // SAFETY: the bootloader maps each module at `addr` for `size` bytes
        // in the direct map, in memory reported as kernel-and-modules, which
        // nothing else uses.
        bytes: unsafe { core::slice::from_raw_parts(module.addr(), module.size() as usize) },
    })
}

/// Creates the root task from the `root` module and runs it. Returns only
/// if there is no root module.
pub fn start(kernel: &Kernel) {
    let Some(image) = root_module(kernel) else { return };
    // Every other module goes to the root task.
    let mut others = heapless::Vec::<Module<'static>, { strata_abi::bootinfo::MAX_MODULES + 1 }>::new();
    for module in modules(kernel).filter(|m| m.name != ROOT_MODULE) {
        if others.push(module).is_err() {
            fail(format_args!("{}", crate::rootserver::RootTaskError::TooManyModules));
        }
    }
    let mut frames = FRAMES.lock();
    let cnode_bits = u32::from(strata_abi::bootinfo::ROOT_CNODE_RADIX) + 5;
    let cnode = frames.allocate(1 << (cnode_bits - 12), 1 << cnode_bits);
    let boot_bits = crate::rootserver::boot_memory_bits(image, &others);
    let boot = frames.allocate(1 << (boot_bits - 12), 1 << boot_bits);
    let (Ok(cnode), Ok(boot)) = (cnode, boot) else {
        fail(format_args!("not enough memory for the root task's CNode and objects"));
    };
    let free = frames.take_all();
    drop(frames);
    // SAFETY: the direct map covers all memory the memory map describes,
    // read-write, and the object layer gets addresses only from it.
    let memory = unsafe { DirectMapMemory::new(kernel.direct_map) };
    let mut space = ObjectSpace::new(memory);
    space.irqs = crate::interrupts::discover(kernel);
    space.virt = virt_config(kernel.calibration.tsc_hz / u64::from(kernel.cmdline.timer_hz.max(1)));
    if crate::arch::x86_64::cpu::enable_pcid() {
        space.memory.use_pcids();
        log::info!("PCIDs on: each ASID keeps its TLB entries across address-space switches");
    }
    // SAFETY: reading CR3 has no side effects.
    space.kernel_pml4 = Some(PhysAddr(unsafe { x86::controlregs::cr3() } & 0x000f_ffff_ffff_f000));
    let task = match crate::rootserver::create(
        &mut space,
        image,
        &others,
        cnode,
        (boot, boot_bits),
        &mut free.iter().copied(),
    ) {
        Ok(task) => task,
        Err(error) => fail(format_args!("{error}")),
    };
    log::info!(
        "root task: entry {:#x}, {} Untypeds ({} KiB), starting it",
        task.entry,
        task.untypeds,
        free.iter().map(|r| r.1).sum::<u64>() / 1024
    );
    // SAFETY: interrupts are off, the GDT has the documented layout, and
    // this runs once, on the boot CPU; the VMSAVE area and XCR0 are the
    // ones `virt_config` found for this CPU.
    unsafe { user::init(space.virt.host_state.get(), space.virt.xcr0) };
    let mut runtime = Runtime { space, direct_map: kernel.direct_map };
    let context = runtime.schedule(false);
    runtime.leave();
    let mut guard = RUNTIME.lock();
    let space = &mut guard.insert(runtime).space;
    // The runtime stays in place from now on.
    user::publish(space.memory.window(), space.scheduler.queue_heads(), space.memory.stale_asids());
    drop(guard);
    // SAFETY: `schedule` set up the FPU area, context area and address
    // space of the context it chose.
    unsafe { user::enter(context) }
}

/// What the object layer needs to know about virtualization.
fn virt_config(slice_tsc: u64) -> crate::object::vcpu::VirtConfig {
    use crate::arch::x86_64::{svm, virt};
    use crate::object::vcpu::{Backend, TAG_SLOTS, VirtConfig};
    use crate::object::vmx::control::VPID;
    let mut config = VirtConfig::none();
    // SAFETY: reading XCR0 has no side effects (`enable_fpu` set CR4.OSXSAVE).
    config.xcr0 = unsafe { x86::controlregs::xcr0() }.bits();
    match virt::STATE.get() {
        Some((virt::Backend::Svm(svm), Ok(()))) if svm.nested_paging => {
            if let Some(areas) = svm::AREAS.get() {
                config.backend = Backend::Svm;
                config.io_permissions = PhysAddr(areas.io_permissions);
                config.msr_permissions = PhysAddr(areas.msr_permissions);
                config.host_state = PhysAddr(areas.host_state);
                config.tags = u64::from(svm.asids.saturating_sub(1)).clamp(1, TAG_SLOTS as u64 - 1);
            }
        }
        Some((virt::Backend::Vmx(_), Ok(()))) => {
            // SAFETY: VMX exists (CPUID), so its capability MSRs do.
            let read = |msr| unsafe { x86::msr::rdmsr(msr) };
            match crate::object::vmx::VmxConfig::from_capabilities(read, slice_tsc) {
                Ok(vmx) => {
                    config.backend = Backend::Vmx;
                    config.tags = if vmx.secondary & VPID != 0 { TAG_SLOTS as u64 - 1 } else { 1 };
                    config.vmx = vmx;
                }
                Err(why) => log::warn!("VMX: VCPUs unavailable: {why}"),
            }
        }
        _ => {}
    }
    config
}

fn fail(reason: core::fmt::Arguments<'_>) -> ! {
    let mut out = Uart16550::com1();
    let _ = writeln!(out, "{}: cannot start the root task: {reason}", strata_abi::ktest::PANIC_MARKER);
    exit::exit(ExitCode::KernelFailure)
}

impl Runtime {
    /// Chooses what runs next and returns its context: the current thread
    /// if it can go on and `rotate` is false, else the next runnable
    /// thread, else the idle loop.
    fn schedule(&mut self, rotate: bool) -> *const UserContext {
        let previous = user::current();
        let next = self.space.next_thread(previous, rotate);
        user::set_current(next);
        let Some(tcb) = next else {
            // A test image that idles with no interrupt bound to a
            // notification has deadlocked: nothing can ever wake it.
            let can_wake = || self.space.irqs.state.iter().any(|line| line.notification.is_some());
            if cfg!(feature = "selftest") && !can_wake() {
                log::error!("no runnable thread is left");
                exit::exit(ExitCode::KernelFailure);
            }
            return user::idle_context();
        };
        if previous != Some(tcb) {
            self.switch_to(tcb);
        }
        self.saved_context(tcb)
    }

    /// Before any return to user mode: records for the entry stub whether
    /// a `Yield` by the thread about to run would be a no-op.
    fn leave(&self) {
        user::set_yield_alone(user::current().is_some_and(|t| self.space.runs_alone(t)));
    }

    /// Schedules, and makes the interrupt `frame` return to what runs next.
    /// Returns that context.
    fn resume_into(&mut self, frame: &mut InterruptFrame, rotate: bool) -> *const UserContext {
        let next = self.schedule(rotate);
        self.leave();
        // SAFETY: `next` is a TCB's saved context or the idle context.
        frame.set_context(&unsafe { next.read() });
        next
    }

    /// The thread's saved context in its TCB, through the direct map.
    fn saved_context(&self, tcb: PhysAddr) -> *mut UserContext {
        self.direct_map.to_virtual(tcb.offset(layout::CONTEXT)).as_mut_ptr()
    }

    /// Makes `tcb`'s FPU area, context area and address space current
    /// (it was not the current thread).
    fn switch_to(&mut self, tcb: PhysAddr) {
        user::switch_thread(
            self.saved_context(tcb),
            self.direct_map.to_virtual(tcb.offset(layout::FPU)).get(),
        );
        // Word 0 holds all `raw::pml4` reads.
        let vspace = ObjectSpace::<DirectMapMemory>::tcb_slot(tcb, 1);
        let word = self.space.memory.read(vspace.0);
        // A thread without a live address space (none, or one whose ASID
        // pool was deleted, so that its ASID may be another's) runs in the
        // kernel's, which has no user mappings: it faults at once, and no
        // PCID holds entries of a space other than the one its ASID names.
        let (root, asid) = match crate::object::cap::raw::pml4([word, 0]) {
            Some((object, asid)) if self.space.pml4_of(asid) == Some(object) => {
                let cached =
                    [word, self.space.memory.cr3_base(object, asid), ASID_EPOCH.load(Ordering::Relaxed)];
                for (offset, word) in (0..).step_by(8).zip(cached) {
                    self.space.memory.write(tcb.offset(layout::CR3_CACHE + offset), word);
                }
                (object, Some(asid))
            }
            _ => (self.space.kernel_pml4.unwrap_or(PhysAddr(0)), None),
        };
        // SAFETY: the PML4 is a live address-space object whose upper half
        // is the kernel's (copied at retype), or the kernel's own, so the
        // kernel keeps running.
        unsafe {
            if root.get() != 0 && x86::controlregs::cr3() & 0x000f_ffff_ffff_f000 != root.get() {
                x86::controlregs::cr3_write(
                    asid.map_or(root.get(), |asid| self.space.memory.cr3_for(root, asid)),
                );
                if cfg!(feature = "selftest") {
                    CR3_WRITES.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// `VmEnter` by `tcb`: runs its VCPU until an exit for the VMM (the
    /// reply is then in place), or until the thread must give way to
    /// another. It then returns to its `syscall` instruction, to enter
    /// again when it next runs. Returns `None` when the caller goes on (its
    /// reply is in place and nothing that could outrank it happened), else
    /// whether the time slice ended. `interrupted`: a host interrupt came
    /// already during this `VmEnter` (the fastpath's exit), which may have
    /// woken someone.
    #[inline(always)]
    fn vm_loop(&mut self, tcb: PhysAddr, mut flags: u64, mut interrupted: bool) -> Option<bool> {
        use crate::object::vcpu::{VmEnterRefusal, layout};
        loop {
            let previous = self.space.virt.last_run;
            let entry = match self.space.vm_prepare(tcb, flags) {
                Ok(entry) => entry,
                Err(VmEnterRefusal::Error(error)) => {
                    let mut context = self.space.context(tcb);
                    crate::syscall::reply_error(&mut context, error);
                    self.space.set_context(tcb, &context);
                    return Some(false);
                }
                Err(VmEnterRefusal::Exit(exit)) => {
                    self.space.reply_vm_exit(tcb, exit);
                    return Some(false);
                }
                Err(VmEnterRefusal::Signal(entry, exit)) => {
                    self.space.vm_reply(tcb, &entry, exit);
                    return if interrupted { Some(false) } else { None };
                }
            };
            // After this run the registers are in the VCPU: a re-entry must
            // not reload them.
            flags = 0;
            #[cfg(feature = "selftest")]
            GUEST_FLUSHES.fetch_add(u64::from(entry.flush), Ordering::Relaxed);
            if previous != entry.vcpu {
                let debug =
                    |vcpu: PhysAddr| self.direct_map.to_virtual(vcpu.offset(layout::DEBUG)).as_mut_ptr();
                // SAFETY: both areas are in live VCPUs (deleting the last to
                // have run clears `last_run`); the kernel sets no breakpoints.
                unsafe {
                    crate::arch::x86_64::cpu::swap_debug_registers(
                        (previous != PhysAddr(0)).then(|| debug(previous)),
                        debug(entry.vcpu),
                        entry.vmx,
                    )
                };
            }
            let host_xcr0 = self.space.virt.xcr0;
            let load = self.direct_map.to_virtual(entry.registers).as_mut_ptr::<u64>().cast_const();
            if entry.vmx {
                if let Err(exit) = self.run_vmx(entry.vcpu, entry.flush, load, host_xcr0) {
                    self.space.vm_not_entered(&entry);
                    self.space.reply_vm_exit(tcb, exit);
                    return Some(false);
                }
            } else {
                let host_state = self.space.virt.host_state.get();
                let vcpu = entry.vcpu;
                let state = self.direct_map.to_virtual(vcpu.offset(layout::REGISTERS)).as_mut_ptr::<u64>();
                let fpu = self.direct_map.to_virtual(vcpu.offset(layout::FPU)).as_mut_ptr::<u8>();
                // SAFETY: `vm_prepare` checked the VCPU is set up to run: its
                // VMCB has the forced intercepts (kept by `vcpu_write`), the
                // permission maps and a live GuestSpace; the pointers are into
                // the VCPU, or (`load`) the caller's IPC buffer frame, which
                // its TCB holds, through the direct map; SVM is on (else no
                // VCPU exists).
                unsafe {
                    crate::arch::x86_64::svm::run(
                        vcpu.get() + layout::CONTROL,
                        load,
                        fpu,
                        host_state,
                        state,
                        host_xcr0,
                    )
                };
            }
            if let Some(outcome) = self.after_run(tcb, &entry, &mut interrupted) {
                return outcome;
            }
        }
    }

    /// After the guest of `entry` ran: the exit replied (`Some(None)`: the
    /// caller goes on, and the fastpath is open for its next `VmEnter`),
    /// or a host interrupt taken (`None`: enter again; `Some(Some(tick))`:
    /// the caller gives way, to enter again when it next runs).
    #[inline(always)]
    fn after_run(&mut self, tcb: PhysAddr, entry: &VmEntry, interrupted: &mut bool) -> Option<Option<bool>> {
        if let Some(exit) = self.space.vm_exit(entry) {
            self.space.vm_reply(tcb, entry, exit);
            if *interrupted {
                return Some(Some(false));
            }
            // The fastpath's precondition: this VCPU ran last and owns its
            // tag (no flush is owed: a refused entry or an INVLPG exit
            // leaves it without).
            if !entry.vmx && self.space.owns_tag(entry.vcpu) {
                let va = |at: PhysAddr| self.direct_map.to_virtual(at).get();
                let block = va(entry.buffer.offset(crate::object::vcpu::REGISTER_BLOCK_OFFSET));
                let vmcb = entry.vcpu.offset(crate::object::vcpu::layout::CONTROL);
                user::open_vm_fast(vmcb.get(), va(entry.vcpu), block);
            }
            return Some(None);
        }
        // A host interrupt: take it, then go on unless it preempts.
        *interrupted = true;
        crate::arch::x86_64::cpu::take_pending_interrupts();
        let tick = DEFERRED_TICK.swap(false, Ordering::Relaxed);
        let mut lines = DEFERRED_LINES.swap(0, Ordering::Relaxed);
        while lines != 0 {
            self.space.irq_fired(lines.trailing_zeros() as u8);
            crate::arch::x86_64::idt::end_of_interrupt();
            lines &= lines - 1;
        }
        if tick || self.space.choose_thread() != Some(tcb) {
            let mut context = self.space.context(tcb);
            context.rip = context.rip.wrapping_sub(crate::syscall::SYSCALL_LENGTH);
            context.rdx &= !strata_abi::vcpu::enter::LOAD_REGISTERS;
            self.space.set_context(tcb, &context);
            return Some(Some(tick));
        }
        None
    }

    /// Where a system call leaves to: the caller at once (`None`: a
    /// `VmEnter` that goes on with its exit), or whatever the scheduler
    /// chooses (with the caller rotated to the back if `Some(true)`).
    fn leave_syscall(&mut self, tcb: PhysAddr, outcome: Option<bool>) -> *const UserContext {
        let next = match outcome {
            // The VMM goes on at once with its exit: nothing to choose.
            None => self.saved_context(tcb),
            Some(rotate) => {
                let next = self.schedule(rotate);
                self.leave();
                next
            }
        };
        count_crossing(next);
        next
    }

    /// Runs `vcpu`'s guest on VMX until its next VM exit: host state and
    /// CR3 into the VMCS, the guest's system-call MSRs in, EPT
    /// translations flushed if asked. `Err` with the exit to report if
    /// the entry failed.
    #[inline(always)]
    fn run_vmx(
        &mut self,
        vcpu: PhysAddr,
        flush: bool,
        load: *const u64,
        host_xcr0: u64,
    ) -> Result<(), crate::object::vcpu::NeutralExit> {
        use crate::arch::x86_64::vmx;
        use crate::object::vcpu::{NeutralExit, layout};
        let vmcs = vcpu.get() + layout::CONTROL;
        let flags = self.space.memory.read(vcpu.offset(layout::FLAGS));
        if flags & layout::FLAG_HOST_STATE == 0 {
            vmx::write_host_state(vmcs);
        }
        // SAFETY: reading CR3 has no side effects.
        let cr3 = unsafe { x86::controlregs::cr3() } & !crate::object::memory::CR3_NO_FLUSH;
        vmx::write(vmcs, vmx::field::HOST_CR3, cr3);
        if flush {
            vmx::invalidate_ept();
        }
        let msrs = self.direct_map.to_virtual(vcpu.offset(layout::SYSCALL_MSRS)).as_mut_ptr::<[u64; 5]>();
        let state = self.direct_map.to_virtual(vcpu.offset(layout::REGISTERS)).as_mut_ptr::<u64>();
        let fpu = self.direct_map.to_virtual(vcpu.offset(layout::FPU)).as_mut_ptr::<u8>();
        // SAFETY: the VMCS is current (the writes above made it so), with
        // host state and the checked guest state; the pointers are into the
        // VCPU through the direct map; the MSRs are restored before the
        // kernel returns to user mode.
        let result = unsafe {
            let host = vmx::swap_syscall_msrs(msrs.read());
            let tables = vmx::descriptor_tables();
            let result = vmx::run(state, fpu, flags & layout::FLAG_LAUNCHED, load, host_xcr0);
            // A VM exit leaves the GDTR and IDTR limits at FFFFh (SDM vol.
            // 3C §28.5.2): past the GDT's end lie user-influenced words.
            vmx::restore_descriptor_tables(&tables);
            msrs.write(vmx::swap_syscall_msrs(host));
            result
        };
        if result != 0 {
            // VMfailValid: the VM-instruction error says why (SDM vol. 3C §31.4).
            let error =
                if result == 2 { vmx::read(vmcs, crate::object::vmx::vmcs::INSTRUCTION_ERROR) } else { 0 };
            return Err(NeutralExit {
                reason: strata_abi::vcpu::Exit::EntryFailure,
                qualification: error,
                qualification2: 0,
                length: 0,
            });
        }
        // An entry that failed on the guest state (exit reason bit 31)
        // leaves the VMCS unlaunched (SDM vol. 3C §27.8).
        let entered = vmx::read(vmcs, crate::object::vmx::vmcs::EXIT_REASON) & (1 << 31) == 0;
        let done = if entered { layout::FLAG_LAUNCHED } else { 0 } | layout::FLAG_HOST_STATE;
        self.space.memory.write(vcpu.offset(layout::FLAGS), flags | done);
        Ok(())
    }

    /// The current thread made a fault it cannot recover from: with no
    /// fault handler yet, it is suspended.
    fn fault(&mut self, tcb: PhysAddr, what: core::fmt::Arguments<'_>) {
        log::warn!("thread {tcb} faulted: {what}; it has no fault handler and is suspended");
        self.space.suspend(tcb);
    }
}

/// Entered from the SVM `VmEnter` fastpath after an exit it does not
/// reply to itself: the general path takes the exit (and any host
/// interrupt that caused it) as if it had entered the guest, and returns
/// the context to run.
#[unsafe(no_mangle)]
extern "C" fn vm_fast_exit() -> *const UserContext {
    let mut guard = RUNTIME.lock();
    let (runtime, tcb) = running(&mut guard);
    // The fastpath was open: nothing changed since a `VmEnter` found both.
    let Some(entry) = runtime.space.vm_fast_entry(tcb) else {
        fail(format_args!("the VmEnter fastpath ran for a thread without a VCPU or IPC buffer"));
    };
    let mut interrupted = false;
    let outcome = match runtime.after_run(tcb, &entry, &mut interrupted) {
        Some(outcome) => outcome,
        // The registers are in the VCPU now: enter without loading them.
        None => runtime.vm_loop(tcb, 0, interrupted),
    };
    runtime.leave_syscall(tcb, outcome)
}

/// The runtime and its current thread, for a system call's handler.
fn running(runtime: &mut Option<Runtime>) -> (&mut Runtime, PhysAddr) {
    let runtime = runtime.as_mut().unwrap_or_else(|| fail(format_args!("system call with no runtime")));
    let tcb = user::current().unwrap_or_else(|| fail(format_args!("system call with no thread")));
    (runtime, tcb)
}

/// Entered from `syscall_entry` with the calling thread's registers saved
/// in its TCB (`context` points at them); returns the context to run.
#[unsafe(no_mangle)]
extern "C" fn syscall_handler(context: *mut UserContext) -> *const UserContext {
    let mut guard = RUNTIME.lock();
    let (runtime, tcb) = running(&mut guard);
    // SAFETY: `context` is the current thread's saved context in its TCB.
    let number = unsafe { (&raw const (*context).rax).read() };
    // Yield needs nothing decoded: straight to the scheduler. (A yield that
    // would choose the same thread again never gets here: the entry stub
    // answers it from the per-CPU flag `leave` keeps.)
    let outcome = if number == Syscall::Yield as u64 {
        Outcome::Yield
    } else if number == Syscall::VmEnter as u64 {
        // VmEnter needs nothing decoded either: its flags are in RDX.
        // SAFETY: `context` is the current thread's saved context in its TCB.
        Outcome::VmEnter(unsafe { (&raw const (*context).rdx).read() })
    } else {
        runtime.space.handle_syscall(tcb)
    };
    let rotate = match outcome {
        Outcome::Continue => false,
        Outcome::Yield => true,
        Outcome::PutChar(byte) => {
            crate::console::print_byte(byte);
            false
        }
        Outcome::Shutdown(code) if cfg!(feature = "debug-exit") => {
            let code = match code {
                0x10 => ExitCode::Success,
                _ => ExitCode::KernelFailure,
            };
            exit::exit(code)
        }
        Outcome::Counters if cfg!(feature = "selftest") => {
            let mut reply = runtime.space.context(tcb);
            reply.rdx = CR3_WRITES.load(Ordering::Relaxed);
            let fastpath = FASTPATH_CALLS.load(Ordering::Relaxed);
            // Each `VmEnter` the fastpath completed saved and restored one.
            // SAFETY: only the fastpath writes the count, with interrupts off.
            let vm_fast = unsafe { (*user::per_cpu()).vm_fast_calls };
            reply.r8 = FPU_SAVES.load(Ordering::Relaxed) + fastpath + vm_fast;
            reply.r9 = FPU_RESTORES.load(Ordering::Relaxed) + fastpath + vm_fast;
            (reply.r10, reply.r12) = (fastpath, vm_fast);
            #[cfg(feature = "selftest")]
            {
                reply.r13 = GUEST_FLUSHES.load(Ordering::Relaxed);
            }
            runtime.space.set_context(tcb, &reply);
            false
        }
        Outcome::VmEnter(flags) => {
            let outcome = runtime.vm_loop(tcb, flags, false);
            return runtime.leave_syscall(tcb, outcome);
        }
        Outcome::Shutdown(_) | Outcome::Counters | Outcome::Fault => {
            let saved = runtime.space.context(tcb);
            runtime.fault(tcb, format_args!("unknown system call {} at {:#x}", saved.rax, saved.rip));
            true
        }
    };
    runtime.leave_syscall(tcb, Some(rotate))
}

/// An exception in user mode: the current thread's fault.
pub fn user_exception(frame: &mut InterruptFrame) {
    let mut guard = RUNTIME.lock();
    let Some(runtime) = guard.as_mut() else { return };
    let Some(tcb) = user::current() else { return };
    runtime.space.set_context(tcb, &frame.context());
    let (mnemonic, description) = crate::arch::x86_64::idt::exception_name(frame.vector);
    // SAFETY: reading CR2 has no side effects.
    let cr2 = unsafe { x86::controlregs::cr2() } as u64;
    let words = [frame.vector, frame.error_code, frame.rip(), cr2, frame.rsp()];
    if runtime.space.send_fault(tcb, crate::object::ipc::FAULT_EXCEPTION, words) {
        // The fault handler has it; the thread waits for the reply.
        runtime.resume_into(frame, false);
        return;
    }
    runtime.fault(
        tcb,
        format_args!(
            "{mnemonic} {description} at {:#x}, error code {:#x}, address {cr2:#x}",
            frame.rip(),
            frame.error_code
        ),
    );
    runtime.resume_into(frame, true);
}

/// Interrupt line `line` fired: it is masked and its notification
/// signalled. A thread this wakes runs at once if it outranks the
/// interrupted one. Returns whether the interrupt can be acknowledged; if
/// the kernel itself was interrupted while running a guest, it is deferred
/// to the VM exit path, which acknowledges it.
pub fn device_interrupt(frame: &mut InterruptFrame, line: u8) -> bool {
    let Some(mut guard) = RUNTIME.try_lock() else {
        DEFERRED_LINES.fetch_or(1 << (line & 63), Ordering::Relaxed);
        return false;
    };
    let Some(runtime) = guard.as_mut() else { return true };
    runtime.space.irq_fired(line);
    match user::current() {
        // The thread it woke outranks the interrupted one: it runs now.
        Some(tcb) if frame.from_user() && runtime.space.choose_thread() != Some(tcb) => {
            runtime.space.set_context(tcb, &frame.context());
            let next = runtime.resume_into(frame, false);
            count_crossing(next);
        }
        None if !frame.from_user() => {
            runtime.resume_into(frame, false);
        }
        // A thread it woke may now share the current one's priority.
        _ => runtime.leave(),
    }
    true
}

/// A timer tick: the interrupted thread goes to the back of its queue; if
/// the kernel was idle, a thread that became runnable is started.
pub fn preempt(frame: &mut InterruptFrame) {
    let Some(mut guard) = RUNTIME.try_lock() else {
        // The kernel was running a guest: the VM exit path sees the tick.
        DEFERRED_TICK.store(true, Ordering::Relaxed);
        return;
    };
    let Some(runtime) = guard.as_mut() else { return };
    if frame.from_user() {
        let Some(tcb) = user::current() else { return };
        runtime.space.set_context(tcb, &frame.context());
        let next = runtime.resume_into(frame, true);
        count_crossing(next);
    } else if user::current().is_none() {
        // Interrupted the idle loop.
        runtime.resume_into(frame, false);
    }
}
