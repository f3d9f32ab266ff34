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
