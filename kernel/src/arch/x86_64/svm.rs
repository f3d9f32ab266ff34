//! Entering an AMD SVM guest and coming back (AMD APM vol. 2 §15.5 VMRUN,
//! §15.6 #VMEXIT, §15.5.2 VMSAVE and VMLOAD, §15.17 GIF).
//!
//! VMRUN saves and #VMEXIT restores only part of the host's state: RAX,
//! RSP, RIP, RFLAGS, the control registers, EFER and the ES, CS, SS and DS
//! selectors. The rest that a guest loads (FS, GS, TR, LDTR with their
//! hidden parts, KernelGsBase, STAR, LSTAR, CSTAR, SFMASK and the SYSENTER
//! MSRs) is swapped with VMSAVE and VMLOAD around the run, the other
//! general registers by hand, and the FPU with XRSTOR and XSAVE.
//!
//! Interrupts: the global interrupt flag is cleared before any of this and
//! RFLAGS.IF set, so with V_INTR_MASKING a physical interrupt that arrives
//! while the guest runs ends it with an INTR exit (§15.21.1), and one that
//! arrives around the run stays pending until the kernel takes it.

use spin::Once;

/// The host's frames for SVM, set up at boot.
#[derive(Debug, Clone, Copy)]
pub struct HostAreas {
    /// Where VMSAVE puts the host's FS, GS, TR, LDTR and system-call MSRs (4 KiB).
    pub host_state: u64,
    /// The I/O permission map (12 KiB of ones).
    pub io_permissions: u64,
    /// The MSR permission map (8 KiB of ones).
    pub msr_permissions: u64,
}

/// The boot CPU's areas (SMP will make this per CPU).
pub static AREAS: Once<HostAreas> = Once::new();

/// The guest round trip shared by [`run`] and the `VmEnter` fastpath
/// (Intel syntax): from RDI the VMCB, RSI where the general registers
/// come from, RDX the guest's FPU image, RCX the host's VMSAVE area, R8
/// the state page and R9 the host's XCR0, which it pushes (48 bytes the
/// caller pops), to the return from #VMEXIT with GIF set again and
/// interrupts off; `$after_exit` runs right after the guest's general
/// registers are stored, with them still in place (RAX excepted). Every
/// general register but RSP is changed, and the x87
/// and SSE state is the guest's until the caller resets it
/// (`kernel_fpu_state!`).
macro_rules! guest_round_trip {
    ($($after_exit:expr),*) => {
        concat!(
            "push r9\n",  // [rsp + 40]: the host's XCR0
            "push r8\n",  // [rsp + 32]: the state page
            "push rsi\n", // [rsp + 24]: where the registers come from
            "push rdi\n", // [rsp + 16]: the VMCB
            "push rcx\n", // [rsp + 8]: the host's VMSAVE area
            "push rdx\n", // [rsp]: the guest's FPU image
            "clgi\n",
            "sti\n",
            "mov eax, -1\n", // every component XCR0 enables (EDX: XCR0 has no high bits)
            "xrstor64 [rdx]\n",
            load_guest_xcr0!("r8", "r9"), "\n",
            "mov rax, [rsp + 8]\n",
            "vmsave rax\n",
            "mov rax, rdi\n",
            "vmload rax\n",
            "mov rcx, [rsi + 8]\n",
            "mov rdx, [rsi + 16]\n",
            "mov rbx, [rsi + 24]\n",
            "mov rbp, [rsi + 40]\n",
            "mov rdi, [rsi + 56]\n",
            "mov r8, [rsi + 64]\n",
            "mov r9, [rsi + 72]\n",
            "mov r10, [rsi + 80]\n",
            "mov r11, [rsi + 88]\n",
            "mov r12, [rsi + 96]\n",
            "mov r13, [rsi + 104]\n",
            "mov r14, [rsi + 112]\n",
            "mov r15, [rsi + 120]\n",
            "mov rsi, [rsi + 48]\n",
            "vmrun rax\n",
            // #VMEXIT: RAX (the VMCB) and RSP are the host's again.
            "vmsave rax\n",
            "mov rax, [rsp + 32]\n",
            store_guest_registers!(), "\n",
            $($after_exit, "\n",)*
            "mov rax, [rsp + 8]\n",
            "vmload rax\n",
            "cli\n",
            restore_host_xcr0!("[rsp + 32]", "[rsp + 40]"), "\n",
            // EAX is the host's XCR0 now: every component it enables.
            "mov rcx, [rsp]\n",
            "xsave64 [rcx]\n",
            "stgi\n",
        )
    };
}

/// The x87 and SSE reset state the kernel's own FPU use starts from after
/// a guest ran (Intel syntax; a scratch word at RSP).
macro_rules! kernel_fpu_state {
    () => {
        "fninit\n mov dword ptr [rsp], 0x1f80\n ldmxcsr [rsp]"
    };
}

/// Runs a guest until its next #VMEXIT.
///
/// `vmcb` is the VMCB's physical address; `state` the VCPU's state page
/// (`vcpu::layout::REGISTERS`), where the guest's 16 general registers
/// are stored in encoding order at the exit (the RAX and RSP words are
/// not used: the VMCB has them) and its XCR0 is; `load` where they are
/// loaded from at the entry (the state page, or the caller's register
/// block); `fpu` the guest's XSAVE area (64-byte aligned); `host_state` the
/// physical address of the host's VMSAVE area. VMRUN switches neither the
/// guest's XCR0 nor the host's (`host_xcr0`; APM vol. 2 §15.5.1), so the
/// guest's is loaded just before VMRUN if it differs, and read back and the
/// host's restored just after #VMEXIT: a guest XSETBV the CPU let through
/// without an exit (QEMU 7.2's TCG does) is then the guest's, never the
/// host's. The guest's FPU state is restored and saved under the host's
/// XCR0, every component.
///
/// # Safety
/// SVM is on (EFER.SVME); interrupts are off; `vmcb` is a VMCB whose
/// intercepts include VMRUN, INTR, NMI, SHUTDOWN, I/O and MSR accesses
/// with all-ones permission maps; the pointers are valid and aligned;
/// the XCR0 in the state page is a value XSETBV accepts with the host's
/// XCR0 in force.
#[cfg(strata_baremetal)]
#[unsafe(naked)]
pub unsafe extern "sysv64" fn run(
    vmcb: u64,
    load: *const u64,
    fpu: *mut u8,
    host_state: u64,
    state: *mut u64,
    host_xcr0: u64,
) {
    core::arch::naked_asm!(
        push_callee_saved!(),
        guest_round_trip!(),
        kernel_fpu_state!(),
        "add rsp, 48",
        pop_callee_saved_and_return!(),
        xcr0 = const crate::object::vcpu::layout::XCR0 - crate::object::vcpu::layout::REGISTERS,
    )
}

/// Host builds never enter a guest.
///
/// # Safety
/// None needed: it does nothing.
#[cfg(not(strata_baremetal))]
pub unsafe extern "sysv64" fn run(_: u64, _: *const u64, _: *mut u8, _: u64, _: *mut u64, _: u64) {}

// The `VmEnter` fastpath (SVM): `syscall_entry` comes here for a `VmEnter`
// with `LOAD_REGISTERS` while `user::PerCpu::vm_open` says that no other
// kernel entry came since this thread's last `VmEnter` returned to it with
// an exit. Nothing that entry's preparation checked (the VCPU bound to the
// thread, its GuestSpace, the IPC buffer, the TLB and debug-register
// bookkeeping, pending signals) can have changed without a kernel entry, so
// the guest runs again from the register block at once: RIP (checked
// canonical), RSP, RFLAGS and RAX into the VMCB, the round trip, and for a
// CPUID exit the reply written here. Any other exit goes to `vm_fast_exit`,
// a declined call to the general path; both close the fastpath.
// Assembled for host builds too: the entry stub (`user.rs`), which they
// also assemble, jumps to it.
core::arch::global_asm!(
    ".section .text.vm_fast, \"ax\"",
    ".global vm_fast",
    "vm_fast:",
    // RSP: the caller's saved context, whole; its FPU state is saved.
    "mov rsp, gs:[0]",
    "mov r8, gs:[{vcpu_va}]",
    "mov rsi, gs:[{block}]",
    "mov rax, [rsi + 128]", // RIP: canonical?
    "mov rcx, rax",
    "sar rcx, 47",
    "inc rcx",
    "cmp rcx, 1",
    "ja 9f",
    "mov [r8 + {vmcb_rip}], rax",
    "mov rax, [rsi + 136]",
    "and rax, {rflags_defined}",
    "or rax, 2",
    "mov [r8 + {vmcb_rflags}], rax",
    "mov rax, [rsi + 32]",
    "mov [r8 + {vmcb_rsp}], rax",
    "mov rax, [rsi]",
    "mov [r8 + {vmcb_rax}], rax",
    "mov rdi, gs:[{vmcb}]",
    "lea rdx, [r8 + {fpu}]",
    "mov rcx, gs:[{host_state}]",
    "lea r8, [r8 + {registers}]",
    "mov r9, gs:[{host_xcr0}]",
    // The guest's general registers go into the register block too: the
    // reply then needs no copy of them.
    guest_round_trip!("mov rax, [rsp + 24]", store_guest_registers!()),
    "add rsp, 48",
    "mov r8, gs:[{vcpu_va}]",
    // A CPUID intercept never interrupts an event's delivery, so there is
    // no EXITINTINFO to deliver again (`ObjectSpace::vm_exit` looks for
    // the other exits).
    "cmp qword ptr [r8 + {exit_code}], {cpuid}",
    "jne 8f",
    // CPUID: its length from the next RIP where the CPU saved one, else 2
    // (as `vcpu::classify_svm`).
    "mov rcx, [r8 + {next_rip}]",
    "sub rcx, [r8 + {vmcb_rip}]",
    "lea rdx, [rcx - 1]",
    "mov eax, 2",
    "cmp rdx, 14",
    "cmova rcx, rax",
    // The reply, as `ObjectSpace::vm_reply`: RAX, RSP, RIP and RFLAGS
    // into the block (which has the other registers already), the exit
    // into the message registers.
    "mov rsi, gs:[{block}]",
    "mov rax, [r8 + {vmcb_rax}]",
    "mov [rsi], rax",
    "mov rax, [r8 + {vmcb_rsp}]",
    "mov [rsi + 32], rax",
    "mov rax, [r8 + {vmcb_rip}]",
    "mov [rsi + 128], rax",
    "mov rax, [r8 + {vmcb_rflags}]",
    "mov [rsi + 136], rax",
    // The saved context ends at gs:[24].
    "mov rax, gs:[24]",
    "mov qword ptr [rax + {ctx_rsi} - {context_size}], {info}",
    "mov qword ptr [rax + {ctx_rdx} - {context_size}], {exit_cpuid}",
    "mov qword ptr [rax + {ctx_r8} - {context_size}], 0",
    "mov qword ptr [rax + {ctx_r9} - {context_size}], 0",
    "mov [rax + {ctx_r10} - {context_size}], rcx",
    ".if {counting}",
    "inc qword ptr gs:[{calls}]",
    ".endif",
    "lea rsp, [rax - {context_size}]",
    "jmp syscall_return",
    // Any other exit: the general path takes it from here.
    "8:",
    "sub rsp, 16", // a scratch word, RSP kept 16-byte aligned for the call
    kernel_fpu_state!(),
    "mov qword ptr gs:[{vm_open}], 0",
    "call vm_fast_exit",
    "mov rsp, rax",
    "jmp return_to_context",
    // Not this way: the general path, with the context as saved.
    "9:",
    "mov qword ptr gs:[{vm_open}], 0",
    "mov rsp, gs:[24]",
    "sub rsp, {context_size}",
    "jmp syscall_saved",
    vm_open = const core::mem::offset_of!(super::user::PerCpu, vm_open),
    counting = const cfg!(feature = "selftest") as u8,
    vmcb = const core::mem::offset_of!(super::user::PerCpu, vm_vmcb),
    vcpu_va = const core::mem::offset_of!(super::user::PerCpu, vm_vcpu_va),
    block = const core::mem::offset_of!(super::user::PerCpu, vm_block),
    host_state = const core::mem::offset_of!(super::user::PerCpu, vm_host_state),
    host_xcr0 = const core::mem::offset_of!(super::user::PerCpu, vm_host_xcr0),
    ctx_rsi = const core::mem::offset_of!(crate::object::tcb::UserContext, rsi),
    ctx_rdx = const core::mem::offset_of!(crate::object::tcb::UserContext, rdx),
    ctx_r8 = const core::mem::offset_of!(crate::object::tcb::UserContext, r8),
    ctx_r9 = const core::mem::offset_of!(crate::object::tcb::UserContext, r9),
    ctx_r10 = const core::mem::offset_of!(crate::object::tcb::UserContext, r10),
    context_size = const core::mem::size_of::<crate::object::tcb::UserContext>(),
    vmcb_rip = const crate::object::vcpu::layout::CONTROL + crate::object::vcpu::vmcb::RIP,
    vmcb_rsp = const crate::object::vcpu::layout::CONTROL + crate::object::vcpu::vmcb::RSP,
    vmcb_rflags = const crate::object::vcpu::layout::CONTROL + crate::object::vcpu::vmcb::RFLAGS,
    vmcb_rax = const crate::object::vcpu::layout::CONTROL + crate::object::vcpu::vmcb::RAX,
    exit_code = const crate::object::vcpu::layout::CONTROL + crate::object::vcpu::vmcb::EXIT_CODE,
    next_rip = const crate::object::vcpu::layout::CONTROL + crate::object::vcpu::vmcb::NEXT_RIP,
    cpuid = const crate::object::vcpu::vmcb::exit::CPUID,
    rflags_defined = const crate::object::vcpu::RFLAGS_DEFINED,
    registers = const crate::object::vcpu::layout::REGISTERS,
    fpu = const crate::object::vcpu::layout::FPU,
    xcr0 = const crate::object::vcpu::layout::XCR0 - crate::object::vcpu::layout::REGISTERS,
    info = const crate::object::vcpu::EXIT_REPLY_INFO,
    exit_cpuid = const strata_abi::vcpu::Exit::Cpuid as u64,
    calls = const core::mem::offset_of!(super::user::PerCpu, vm_fast_calls),
);
