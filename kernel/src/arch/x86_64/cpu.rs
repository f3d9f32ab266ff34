//! Processor state the kernel sets up once, and the idle wait.

/// The bytes of a thread's or guest's FPU area: room for the XSAVE image
/// of every component [`enable_fpu`] turns on.
pub const FPU_AREA_BYTES: u32 = 0xe00;

/// XCR0 bits: x87, SSE and AVX state, and PKRU (Intel SDM vol. 1 §13.1).
/// PKRU is in so that XSAVE switches it: a guest may turn on CR4.PKE and
/// write it, and the next guest to run must not read it.
const XCR0_WANTED: u64 = 0b111 | 1 << 9;

/// Enables the FPU for the kernel's own SSE use and for user threads and
/// guests: clears CR0.EM and CR0.TS, sets CR4.OSFXSR, CR4.OSXMMEXCPT and
/// CR4.OSXSAVE, and XCR0 to x87, SSE, and AVX and PKRU where the CPU has them (SDM
/// vol. 1 §13.3, vol. 3A §2.6). The entry stubs switch state with XSAVE and
/// XRSTOR, so the CPU must have them (CPUID.01H:ECX bit 26), and their
/// image must fit an FPU area. Returns XCR0.
pub fn enable_fpu() -> Result<u64, &'static str> {
    use x86::controlregs::{Cr0, Cr4, cr0, cr0_write, cr4, cr4_write, xcr0_write};
    if core::arch::x86_64::__cpuid(1).ecx & (1 << 26) == 0 {
        return Err("the CPU has no XSAVE (CPUID.01H:ECX bit 26), which strata switches FPU state with");
    }
    // SAFETY: setting MP/NE, OSFXSR/OSXMMEXCPT and OSXSAVE and clearing
    // EM/TS only enables SSE, XSAVE and native FPU error reporting (the
    // CPU has XSAVE); XCR0 gets x87 (which it must have) and only bits the
    // CPU reports (CPUID.(EAX=0DH,ECX=0):EAX), AVX only with SSE.
    unsafe {
        cr0_write(
            (cr0() | Cr0::CR0_MONITOR_COPROCESSOR | Cr0::CR0_NUMERIC_ERROR)
                - Cr0::CR0_EMULATE_COPROCESSOR
                - Cr0::CR0_TASK_SWITCHED,
        );
        cr4_write(cr4() | Cr4::CR4_ENABLE_SSE | Cr4::CR4_UNMASKED_SSE | Cr4::CR4_ENABLE_OS_XSAVE);
        let xcr0 = u64::from(core::arch::x86_64::__cpuid_count(0xd, 0).eax) & XCR0_WANTED;
        xcr0_write(x86::controlregs::Xcr0::from_bits_truncate(xcr0));
    }
    // With XCR0 set, EBX is the size of the image it makes.
    if core::arch::x86_64::__cpuid_count(0xd, 0).ebx > FPU_AREA_BYTES {
        return Err("the XSAVE image of x87, SSE, AVX and PKRU state is larger than a thread's FPU area");
    }
    // SAFETY: reading XCR0 has no side effects (CR4.OSXSAVE is set).
    Ok(unsafe { x86::controlregs::xcr0() }.bits())
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

/// Puts the debug registers a guest uses directly and neither the VMCB nor
/// the VMCS switches (DR0–DR3, and DR6 with `dr6`) into `save`, if given,
/// then loads them from `load`: another VCPU's guest runs next, and must
/// neither see nor keep the last one's breakpoints (AMD APM vol. 2
/// §15.5.1 lists what VMRUN switches; Intel SDM vol. 3C §27.3.1 and
/// §28.3.1, what VM entry and exit switch).
///
/// # Safety
/// The pointers are valid for reads (`load`) and writes (`save`); the
/// host uses no breakpoints (DR7 is the guest's only inside VMRUN or VM
/// entry, and the hardware disables them at the exit).
pub unsafe fn swap_debug_registers(save: Option<*mut [u64; 5]>, load: *const [u64; 5], dr6: bool) {
    use x86::debugregs::{dr0, dr0_write, dr1, dr1_write, dr2, dr2_write, dr3, dr3_write};
    // SAFETY: ring 0; the registers have no effect while DR7 disables them.
    unsafe {
        let read6 = || if dr6 { x86::debugregs::dr6().bits() as u64 } else { 0 };
        if let Some(save) = save {
            save.write([dr0() as u64, dr1() as u64, dr2() as u64, dr3() as u64, read6()]);
        }
        let [d0, d1, d2, d3, d6] = load.read().map(|word| word as usize);
        dr0_write(d0);
        dr1_write(d1);
        dr2_write(d2);
        dr3_write(d3);
        if dr6 {
            x86::debugregs::dr6_write(x86::debugregs::Dr6::from_bits_truncate(d6));
        }
    }
}
