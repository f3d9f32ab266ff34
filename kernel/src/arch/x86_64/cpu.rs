//! Processor state the kernel sets up once, and the idle wait.

/// Enables SSE for the kernel's own use and clears what must be clear
/// (CR0.EM, CR0.TS); idempotent. The entry stub already did this before any
/// Rust ran; this records the policy in one place for later CPUs.
pub fn enable_sse() {
    use x86::controlregs::{Cr0, Cr4, cr0, cr0_write, cr4, cr4_write};
    // SAFETY: setting MP/NE and OSFXSR/OSXMMEXCPT and clearing EM/TS only
    // enables SSE instructions and native FPU error reporting.
    unsafe {
        cr0_write(
            (cr0() | Cr0::CR0_MONITOR_COPROCESSOR | Cr0::CR0_NUMERIC_ERROR)
                - Cr0::CR0_EMULATE_COPROCESSOR
                - Cr0::CR0_TASK_SWITCHED,
        );
        cr4_write(cr4() | Cr4::CR4_ENABLE_SSE | Cr4::CR4_UNMASKED_SSE);
    }
}

/// Turns on process-context identifiers (CR4.PCIDE; Intel SDM vol. 3A
/// §4.10.1) if the CPU has them (CPUID.01H:ECX bit 17). With PCIDs, a CR3
/// load with bit 63 set keeps the TLB entries of every address space, so
/// switching address spaces stops flushing the TLB. Returns whether they
/// are on. Must run while CR3's PCID field is 0 (it is: PCID 0 is the
/// kernel's boot address space).
pub fn enable_pcid() -> bool {
    use x86::controlregs::{Cr4, cr3, cr4, cr4_write};
    let supported = core::arch::x86_64::__cpuid(1).ecx & (1 << 17) != 0;
    // SAFETY: reading CR3 has no side effects.
    if !supported || unsafe { cr3() } & 0xfff != 0 {
        return false;
    }
    // SAFETY: the CPU supports PCIDs, the kernel is in long mode and CR3's
    // PCID field is 0, the conditions under which setting CR4.PCIDE cannot
    // fault (SDM §4.10.1); existing translations all belong to PCID 0.
    unsafe { cr4_write(cr4() | Cr4::CR4_ENABLE_PCID) };
    true
}

/// Takes the interrupts that are pending, if any: enables interrupts for
/// one instruction. (STI's shadow covers the NOP; a pending interrupt is
/// taken before the CLI.)
pub fn take_pending_interrupts() {
    // SAFETY: as in `wait_for_interrupt`: the handlers' SSE use is declared
    // by `clobber_abi("C")`.
    unsafe { core::arch::asm!("sti", "nop", "cli", clobber_abi("C"), options(nostack)) };
}

/// Enables interrupts, halts until one has been handled, and disables them
/// again. The kernel otherwise runs with interrupts off.
pub fn wait_for_interrupt() {
    // SAFETY: `sti; hlt` is atomic with respect to interrupts (STI's
    // one-instruction shadow), so no wake-up is lost. Handlers run compiled
    // Rust that uses SSE, and only save general registers: `clobber_abi("C")`
    // tells the compiler every caller-saved register, vector registers
    // included, may change here.
    unsafe { core::arch::asm!("sti", "hlt", "cli", clobber_abi("C"), options(nostack)) };
}
