//! Entering and leaving user mode: the `syscall` entry, the return path
//! shared with interrupts, the per-CPU block, and the idle loop
//! (Intel SDM vol. 3A §5.8.8 SYSCALL/SYSRET, §6.14 64-bit interrupt
//! handling; AMD APM vol. 2 §6.1.1).
//!
//! In kernel mode GS holds this CPU's [`PerCpu`]; in user mode it holds the
//! user's value. Each crossing swaps the two with `swapgs`. `syscall`
//! arrives with interrupts off (FMASK clears IF) on the user stack. The
//! stub pushes the user registers straight into the current thread's TCB
//! as a [`UserContext`] (whose tail is an IRET frame), saves the user FPU
//! state (x87, SSE and AVX) into the thread's XSAVE area, and switches to
//! the kernel stack. A `Call` or `ReplyRecv` then jumps to the IPC
//! fastpath (`fastpath.rs`), which either completes it and returns to the
//! other thread itself, or goes on to `syscall_general`. There
//! `syscall_handler` takes the call and returns the context to run next (a
//! TCB's, or the idle loop's), and `return_to_context` restores it with
//! `iretq`. No context is copied on the way in or out. `sysretq` is not used: with a non-canonical RCX it
//! would fault in ring 0.
//!
//! A context in a TCB is always safe to return to: the registers a thread
//! saved on entry are what the hardware gave, and every other write of a
//! context (`TcbWriteRegisters`, thread creation) is sanitised first.
//!
//! When nothing is runnable, the context returned to is the idle loop: a
//! kernel-mode context on its own stack that halts with interrupts on. So
//! the kernel never waits inside a handler, whose IST stack a nested
//! interrupt would reuse.

use core::cell::UnsafeCell;

use super::gdt::{KERNEL_CODE, KERNEL_DATA};
use crate::addr::PhysAddr;
use crate::object::tcb::UserContext;

/// This CPU's kernel-mode data, at GS:0.
#[repr(C)]
pub struct PerCpu {
    /// Where the kernel stack starts (`syscall` entry switches to it).
    pub kernel_stack_top: u64,
    /// Scratch: the user stack pointer during `syscall` entry.
    pub user_stack: u64,
    /// The current thread's XSAVE area (direct-map address).
    pub fpu_area: u64,
    /// The end of the current thread's saved context (direct-map address):
    /// `syscall` entry pushes the registers below it.
    pub context_end: u64,
    /// Non-zero while the current thread is the only runnable thread at
    /// the highest runnable priority: a `Yield` then returns at once from
    /// the entry stub. Rewritten on every return to user mode.
    pub yield_alone: u64,
    /// Non-zero from when the current thread's `VmEnter` returns to it
    /// with an exit (on SVM) until the next kernel entry from user mode
    /// other than a `Yield` the stub answers or a `VmEnter` the fastpath
    /// completes (neither changes anything else): every other system call,
    /// interrupt and exception in user mode clears it in its stub.
    /// Kernel-mode interrupts need not: they come inside such an entry, or
    /// in the idle loop, which such an entry switched to. While it is set,
    /// nothing has changed since that `VmEnter`, and the thread's next one
    /// with `LOAD_REGISTERS` takes the fastpath (`svm.rs`) with the words
    /// below. (One CPU: with SMP, another CPU could change what the flag
    /// stands for, and it would need an epoch every such change bumps, or
    /// clearing on every CPU.)
    pub vm_open: u64,
    /// That VCPU's VMCB (physical).
    pub vm_vmcb: u64,
    /// The VCPU through the direct map.
    pub vm_vcpu_va: u64,
    /// The thread's register block (`IpcBuffer::vcpu`), through the direct map.
    pub vm_block: u64,
    /// The host's VMSAVE area (physical; this CPU's, set at `init`).
    pub vm_host_state: u64,
    /// The host's XCR0 (set at `init`).
    pub vm_host_xcr0: u64,
    /// `VmEnter`s the fastpath completed on this CPU since boot (test builds).
    pub vm_fast_calls: u64,
    /// The thread running on this CPU: its TCB (physical), 0 for none.
    pub current: u64,
    /// For the assembly IPC fastpath (`fastpath.rs`), set by [`publish`]:
    /// the object window (physical address 0 through the direct map)...
    pub window: u64,
    /// ...the run queues' heads (`Scheduler`, whose tails follow)...
    pub run_queues: u64,
    /// ...and the stale-PCID bitmap (`StaleAsids`), 0 without PCIDs.
    pub stale_asids: u64,
}

const STACK_SIZE: usize = 64 * 1024;

/// An XSAVE image's memory (XSAVE needs 64-byte alignment).
#[repr(C, align(64))]
struct FpuArea([u8; super::cpu::FPU_AREA_BYTES as usize]);

#[repr(C, align(16))]
struct Stack([u8; STACK_SIZE]);

/// The boot CPU's kernel stack and idle stack, and its per-CPU block.
struct BootCpu {
    kernel_stack: UnsafeCell<Stack>,
    idle_stack: UnsafeCell<Stack>,
    per_cpu: UnsafeCell<PerCpu>,
    /// The FPU area used while no thread runs.
    idle_fpu: UnsafeCell<FpuArea>,
    /// The idle loop's context.
    idle_context: UnsafeCell<UserContext>,
}

// SAFETY: used by the boot CPU only; the stacks are used by the CPU, and
// the per-CPU block is written only with interrupts off.
unsafe impl Sync for BootCpu {}

static BOOT_CPU: BootCpu = BootCpu {
    kernel_stack: UnsafeCell::new(Stack([0; STACK_SIZE])),
    idle_stack: UnsafeCell::new(Stack([0; STACK_SIZE])),
    idle_fpu: UnsafeCell::new(FpuArea([0; super::cpu::FPU_AREA_BYTES as usize])),
    // SAFETY: the per-CPU block is plain words, for which all zero is a
    // valid value (`init` fills it in).
    per_cpu: UnsafeCell::new(unsafe { core::mem::zeroed() }),
    // SAFETY: as for the per-CPU block: a context is twenty plain words.
    idle_context: UnsafeCell::new(unsafe { core::mem::zeroed() }),
};

core::arch::global_asm!(
    r#"
    .section .text.user_entry, "ax"
    .global syscall_entry
syscall_entry:
    swapgs
    /* A `syscall` in the last two bytes of the lower half returns to
       0x8000_0000_0000, which is not canonical: `iretq` would fault in
       ring 0. The thread returns to 0 instead and faults in user mode. */
    btq $47, %rcx
    jnc 1f
    xorl %ecx, %ecx
1:
    cmpq ${yield_number}, %rax  /* Yield (8), VmEnter (9) or a debug call? */
    jae 4f
2:
    movq $0, %gs:{vm_open}
    "#,
    save_syscall_context!(),
    r#"
    .global syscall_saved
syscall_saved:
    movq %rsp, %rdi             /* the saved context */
    movq %gs:0, %rsp            /* (FMASK cleared DF: no `cld`) */
    cmpq ${call}, (%rdi)        /* Call or ReplyRecv in the common case? */
    je ipc_fast_call            /* (the fastpath, fastpath.rs, returns to */
    cmpq ${reply_recv}, (%rdi)  /* user mode below or goes on to */
    je ipc_fast_reply_recv      /* syscall_general) */
    .global syscall_general
syscall_general:                /* RDI: the saved context; RSP: the stack top */
    call syscall_handler
    movq %rax, %rsp             /* the context to run */

    /* RSP points at the context to run: general registers, then an IRET frame. */
    .global return_to_context
return_to_context:
    "#,
    restore_user_state!("128"),
    pop_general_registers!(),
    r#"
    iretq

4:
    jne 5f
    /* A Yield with nothing else to run: see yield_alone below. */
    cmpq $0, %gs:32
    jne yield_alone
    jmp 2b
5:
    /* A VmEnter the fastpath may take (svm.rs): nothing has entered the
       kernel since this thread's last VmEnter returned to it. */
    cmpq ${vm_enter_number}, %rax
    jne 2b
    cmpq $0, %gs:{vm_open}
    je 2b
    cmpq ${load_registers}, %rdx /* the flags: exactly LOAD_REGISTERS */
    jne 2b
    "#,
    save_syscall_context!(),
    r#"
    jmp vm_fast

    /* A Yield that would choose the same thread again: straight back, with
       every register as it came (RCX and R11 are the syscall's). */
yield_alone:
    movq %rsp, %gs:8
    movq %gs:0, %rsp
    "#,
    push_syscall_frame!(),
    r#"
    swapgs
    iretq

    .global idle_loop
idle_loop:
    sti
    hlt
    jmp idle_loop
"#,
    yield_number = const strata_abi::syscall::Syscall::Yield as u64,
    call = const strata_abi::syscall::Syscall::Call as u64,
    fpu = const crate::object::tcb::layout::FPU,
    reply_recv = const strata_abi::syscall::Syscall::ReplyRecv as u64,
    vm_enter_number = const strata_abi::syscall::Syscall::VmEnter as u64,
    vm_open = const core::mem::offset_of!(PerCpu, vm_open),
    load_registers = const strata_abi::vcpu::enter::LOAD_REGISTERS,
    options(att_syntax)
);

unsafe extern "C" {
    fn syscall_entry();
    fn return_to_context() -> !;
    fn idle_loop();
}

/// This CPU's block: written only with interrupts off, in the kernel.
pub fn per_cpu() -> *mut PerCpu {
    BOOT_CPU.per_cpu.get()
}

/// Sets up `syscall` and GS for this CPU, and the host's VMSAVE area
/// (`host_state`, physical; 0 without SVM) and XCR0 for the `VmEnter` fastpath.
///
/// # Safety
/// Interrupts are off, the GDT has the layout `gdt` documents (SYSRET's
/// selector arithmetic depends on it), and this runs once per CPU.
pub unsafe fn init(host_state: u64, host_xcr0: u64) {
    use x86::msr::{
        IA32_EFER, IA32_FMASK, IA32_GS_BASE, IA32_KERNEL_GSBASE, IA32_LSTAR, IA32_STAR, rdmsr, wrmsr,
    };
    let stack_top = BOOT_CPU.kernel_stack.get() as u64 + STACK_SIZE as u64;
    // SAFETY: the per-CPU block is only touched with interrupts off, here and by the entry stubs.
    unsafe {
        let block = &mut *per_cpu();
        block.kernel_stack_top = stack_top;
        block.fpu_area = BOOT_CPU.idle_fpu.get() as u64;
        (block.vm_host_state, block.vm_host_xcr0) = (host_state, host_xcr0);
        *BOOT_CPU.idle_context.get() = UserContext {
            rip: idle_loop as *const () as u64,
            cs: u64::from(KERNEL_CODE.bits()),
            rflags: 0x202,
            rsp: BOOT_CPU.idle_stack.get() as u64 + STACK_SIZE as u64,
            ss: u64::from(KERNEL_DATA.bits()),
            ..UserContext::default()
        };
    }
    // SAFETY: the MSRs below exist on every x86-64 CPU; the values make
    // `syscall` enter `syscall_entry` with the kernel selectors and with
    // IF, TF, DF, AC, NT and IOPL cleared (precondition: the GDT layout).
    unsafe {
        wrmsr(IA32_EFER, rdmsr(IA32_EFER) | 1); // SCE
        let star = u64::from(KERNEL_DATA.bits()) << 48 | u64::from(KERNEL_CODE.bits()) << 32;
        wrmsr(IA32_STAR, star);
        wrmsr(IA32_LSTAR, syscall_entry as *const () as u64);
        wrmsr(IA32_FMASK, 0x4_7700);
        // Kernel mode: GS is the per-CPU block; the user's value waits in KERNEL_GS_BASE.
        wrmsr(IA32_GS_BASE, per_cpu() as u64);
        wrmsr(IA32_KERNEL_GSBASE, 0);
    }
}

/// Makes `context` (a thread's saved context in its TCB) and `fpu_area`
/// (its XSAVE area), both direct-map addresses, the ones the entry and
/// exit paths save to and restore from.
pub fn switch_thread(context: *mut UserContext, fpu_area: u64) {
    // SAFETY: interrupts are off in the kernel; nothing else writes the block now.
    unsafe {
        (*per_cpu()).fpu_area = fpu_area;
        (*per_cpu()).context_end = context.wrapping_add(1) as u64;
    }
}

/// The thread running on this CPU, if any.
pub fn current() -> Option<PhysAddr> {
    // SAFETY: interrupts are off in the kernel; nothing else writes the block now.
    Some(PhysAddr(unsafe { (*per_cpu()).current })).filter(|tcb| tcb.get() != 0)
}

/// Records the thread that runs on this CPU next.
pub fn set_current(tcb: Option<PhysAddr>) {
    // SAFETY: as for `current`.
    unsafe { (*per_cpu()).current = tcb.map_or(0, PhysAddr::get) };
}

/// Gives the IPC fastpath the object window, the run queues and the
/// stale-PCID bitmap (see [`PerCpu::window`]).
pub fn publish(window: *mut u8, run_queues: *mut u64, stale_asids: *mut u64) {
    // SAFETY: as for `current`.
    let cpu = unsafe { &mut *per_cpu() };
    (cpu.window, cpu.run_queues, cpu.stale_asids) = (window as u64, run_queues as u64, stale_asids as u64);
}

/// Records whether the thread about to run in user mode is alone at the
/// highest runnable priority (see [`PerCpu::yield_alone`]).
pub fn set_yield_alone(alone: bool) {
    // SAFETY: interrupts are off in the kernel; nothing else writes the block now.
    unsafe { (*per_cpu()).yield_alone = u64::from(alone) };
}

/// Opens the `VmEnter` fastpath for the thread about to return to user
/// mode from `VmEnter` with an exit (SVM): its VCPU's VMCB (`vmcb`,
/// physical), the VCPU through the direct map (`vcpu_va`) and its register
/// block (`block`, through the direct map). It stays open until the next
/// kernel entry that could change anything ([`PerCpu::vm_open`]).
pub fn open_vm_fast(vmcb: u64, vcpu_va: u64, block: u64) {
    // SAFETY: interrupts are off in the kernel; nothing else writes the block now.
    unsafe {
        let cpu = &mut *per_cpu();
        (cpu.vm_vmcb, cpu.vm_vcpu_va, cpu.vm_block, cpu.vm_open) = (vmcb, vcpu_va, block, 1);
    }
}

/// The context that runs when no thread can: the idle loop, in kernel
/// mode, on the idle stack, with interrupts on. Set up by [`init`].
pub fn idle_context() -> *const UserContext {
    BOOT_CPU.idle_context.get()
}

/// Switches to `context` for good: the first entry into user mode, or
/// into the idle loop.
///
/// # Safety
/// [`init`] has run; `context` is a TCB's saved context or the idle
/// context; the FPU area, saved-context area and CR3 are those of the
/// thread it belongs to.
pub unsafe fn enter(context: *const UserContext) -> ! {
    // SAFETY: `return_to_context` pops the context and leaves with `iretq`;
    // the kernel stack is unused from here on (this call never returns).
    unsafe {
        core::arch::asm!("mov rsp, {frame}", "jmp {target}", frame = in(reg) context, target = sym return_to_context, options(noreturn));
    }
}
