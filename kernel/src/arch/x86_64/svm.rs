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
        "push r9",  // [rsp + 40]: the host's XCR0
        "push r8",  // [rsp + 32]: the state page
        "push rsi", // [rsp + 24]: where the registers come from
        "push rdi", // [rsp + 16]: the VMCB
        "push rcx", // [rsp + 8]: the host's VMSAVE area
        "push rdx", // [rsp]: the guest's FPU image
        "clgi",
        "sti",
        "mov eax, -1", // every component XCR0 enables (EDX: XCR0 has no high bits)
        "xrstor64 [rdx]",
        load_guest_xcr0!("r8", "r9"),
        "mov rax, [rsp + 8]",
        "vmsave rax",
        "mov rax, rdi",
        "vmload rax",
        "mov rcx, [rsi + 8]",
        "mov rdx, [rsi + 16]",
        "mov rbx, [rsi + 24]",
        "mov rbp, [rsi + 40]",
        "mov rdi, [rsi + 56]",
        "mov r8, [rsi + 64]",
        "mov r9, [rsi + 72]",
        "mov r10, [rsi + 80]",
        "mov r11, [rsi + 88]",
        "mov r12, [rsi + 96]",
        "mov r13, [rsi + 104]",
        "mov r14, [rsi + 112]",
        "mov r15, [rsi + 120]",
        "mov rsi, [rsi + 48]",
        "vmrun rax",
        // #VMEXIT: RAX (the VMCB) and RSP are the host's again.
        "vmsave rax",
        "mov rax, [rsp + 32]",
        store_guest_registers!(),
        "mov rax, [rsp + 8]",
        "vmload rax",
        "cli",
        restore_host_xcr0!("[rsp + 32]", "[rsp + 40]"),
        "mov rcx, [rsp]",
        "mov eax, -1",
        "xsave64 [rcx]",
        // The kernel's own FPU use starts from the reset state.
        "fninit",
        "mov dword ptr [rsp], 0x1f80",
        "ldmxcsr [rsp]",
        "stgi",
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
