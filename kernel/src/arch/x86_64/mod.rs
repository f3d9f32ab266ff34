//! x86-64 support: everything that touches the processor directly.
//!
//! The loader links the early-boot pieces of this module (`port`, `serial`,
//! `exit`, `paging`, and `mem` for bare-metal builds), so there is one
//! definition of each for both privileged binaries.

/// AT&T assembly that pushes RAX..R15 so that they lie in memory in
/// `UserContext` order (RAX lowest), for the `syscall` and interrupt entry
/// stubs.
macro_rules! push_general_registers {
    () => {
        "pushq %r15\n pushq %r14\n pushq %r13\n pushq %r12\n pushq %r11\n pushq %r10\n pushq %r9\n pushq %r8\n pushq %rbp\n pushq %rdi\n pushq %rsi\n pushq %rdx\n pushq %rcx\n pushq %rbx\n pushq %rax\n"
    };
}

/// AT&T assembly that pushes the IRET frame of a `syscall` (user SS, the
/// user RSP kept at `%gs:8`, RFLAGS from R11, user CS, RIP from RCX).
macro_rules! push_syscall_frame {
    () => {
        "pushq $0x1b\n pushq %gs:8\n pushq %r11\n pushq $0x23\n pushq %rcx\n"
    };
}

/// AT&T assembly that saves the user FPU state (every component XCR0
/// enables) into the current thread's XSAVE area, at `%gs:16`.
macro_rules! save_user_fpu {
    () => {
        "movq %gs:16, %rcx\n movl $-1, %eax\n xsave64 (%rcx)\n"
    };
}

/// AT&T assembly for a `syscall` entry that goes on into the kernel: the
/// user RSP kept at `%gs:8`, the registers pushed into the current
/// thread's context (which ends at `%gs:24`) and its FPU state saved. RSP
/// is then the context, the TCB's start: its XSAVE area is at `{fpu}`.
macro_rules! save_syscall_context {
    () => {
        concat!(
            "movq %rsp, %gs:8\n movq %gs:24, %rsp\n",
            push_syscall_frame!(),
            push_general_registers!(),
            "movl $-1, %eax\n xsave64 {fpu}(%rsp)\n"
        )
    };
}

/// AT&T assembly for a return path: if the frame at `$cs` (an offset from
/// RSP of the saved CS) returns to user mode, restores the user FPU state
/// (from the area at `%gs:16`) and the user GS.
macro_rules! restore_user_state {
    ($cs:literal) => {
        concat!(
            "testb $3, ",
            $cs,
            "(%rsp)\n jz 9f\n movq %gs:16, %rcx\n movl $-1, %eax\n xrstor64 (%rcx)\n swapgs\n9:\n"
        )
    };
}

/// The inverse of `push_general_registers!`, for the return paths.
macro_rules! pop_general_registers {
    () => {
        "popq %rax\n popq %rbx\n popq %rcx\n popq %rdx\n popq %rsi\n popq %rdi\n popq %rbp\n popq %r8\n popq %r9\n popq %r10\n popq %r11\n popq %r12\n popq %r13\n popq %r14\n popq %r15\n"
    };
}

/// Entry into a guest-running function: saves the registers the SysV ABI
/// makes the callee keep (Intel syntax).
#[cfg_attr(not(strata_baremetal), allow(unused_macros))]
macro_rules! push_callee_saved {
    () => {
        "push rbp\n push rbx\n push r12\n push r13\n push r14\n push r15"
    };
}

/// Its exit: restores them, in reverse, and returns.
#[cfg_attr(not(strata_baremetal), allow(unused_macros))]
macro_rules! pop_callee_saved_and_return {
    () => {
        "pop r15\n pop r14\n pop r13\n pop r12\n pop rbx\n pop rbp\n ret"
    };
}

/// Before entering a guest: loads its XCR0 (at `{xcr0}` from the state
/// page in register `$state`) if it differs from the host's (in register
/// `$host`). VMRUN and VM entry switch neither (Intel syntax; clobbers
/// RAX, RCX and RDX).
#[cfg_attr(not(strata_baremetal), allow(unused_macros))]
#[rustfmt::skip]
macro_rules! load_guest_xcr0 {
    ($state:literal, $host:literal) => {
        concat!(
            "mov rax, [", $state, " + {xcr0}]\n",
            "cmp rax, ", $host, "\n",
            "je 8f\n xor ecx, ecx\n xor edx, edx\n xsetbv\n 8:",
        )
    };
}

/// After the exit: reads the XCR0 the guest left into its state page (at
/// `$state`, a memory operand, then `{xcr0}`), kept within the host's
/// components (`$host`, a memory operand), and loads the host's if it
/// differs: a guest XSETBV the CPU let through without an exit (QEMU 7.2's
/// TCG does) stays the guest's (Intel syntax; clobbers RAX, RCX and RDX).
#[cfg_attr(not(strata_baremetal), allow(unused_macros))]
#[rustfmt::skip]
macro_rules! restore_host_xcr0 {
    ($state:literal, $host:literal) => {
        concat!(
            "xor ecx, ecx\n xgetbv\n",
            "mov rdx, ", $host, "\n and rdx, rax\n",
            "mov rcx, ", $state, "\n mov [rcx + {xcr0}], rdx\n",
            "cmp rax, ", $host, "\n je 8f\n",
            "mov eax, ", $host, "\n xor ecx, ecx\n xor edx, edx\n xsetbv\n 8:",
        )
    };
}

/// After a VM exit: stores the guest's general registers, other than RAX
/// and RSP (which the VMCB or VMCS holds, or the caller saves), at
/// `[rax + 8 × encoding]`, the VCPU's register words (Intel syntax).
#[cfg_attr(not(strata_baremetal), allow(unused_macros))]
macro_rules! store_guest_registers {
    () => {
        concat!(
            "mov [rax + 8], rcx\n",
            "mov [rax + 16], rdx\n",
            "mov [rax + 24], rbx\n",
            "mov [rax + 40], rbp\n",
            "mov [rax + 48], rsi\n",
            "mov [rax + 56], rdi\n",
            "mov [rax + 64], r8\n",
            "mov [rax + 72], r9\n",
            "mov [rax + 80], r10\n",
            "mov [rax + 88], r11\n",
            "mov [rax + 96], r12\n",
            "mov [rax + 104], r13\n",
            "mov [rax + 112], r14\n",
            "mov [rax + 120], r15",
        )
    };
}

pub mod cpu;
pub mod exit;
pub mod fastpath;
pub mod gdt;
pub mod idt;
pub mod ioapic;
pub mod lapic;
pub mod paging;
pub mod pic;
pub mod pit;
pub mod port;
pub mod serial;
pub mod svm;
pub mod user;
pub mod virt;
pub mod vmx;
