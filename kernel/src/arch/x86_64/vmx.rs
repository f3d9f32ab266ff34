//! Intel VMX: the instructions on a VMCS, the host state a VM exit
//! returns to, and entering a guest (Intel SDM vol. 3C ch. 24–28, 31).
//!
//! VM entry loads and VM exit saves the guest state the VMCS holds; it
//! does not switch the general registers (other than RSP and RIP), CR2,
//! the FPU, or the system-call MSRs (STAR, LSTAR, CSTAR, FMASK,
//! KernelGSbase). [`run`] switches the registers, CR2 and the FPU itself;
//! the MSRs are switched around it by [`swap_syscall_msrs`].
//!
//! Interrupts: external-interrupt exiting without acknowledge-on-exit, so
//! an interrupt that arrives while the guest runs ends the run and stays
//! pending at the LAPIC until the kernel takes it.

use core::sync::atomic::{AtomicU64, Ordering};

/// VMCS field encodings the kernel itself uses (SDM vol. 3C appendix B).
pub mod field {
    /// Host CR0.
    pub const HOST_CR0: u32 = 0x6c00;
    /// Host CR3.
    pub const HOST_CR3: u32 = 0x6c02;
    /// Host CR4.
    pub const HOST_CR4: u32 = 0x6c04;
    /// Host FS base.
    pub const HOST_FS_BASE: u32 = 0x6c06;
    /// Host GS base.
    pub const HOST_GS_BASE: u32 = 0x6c08;
    /// Host TR base.
    pub const HOST_TR_BASE: u32 = 0x6c0a;
    /// Host GDTR base.
    pub const HOST_GDTR_BASE: u32 = 0x6c0c;
    /// Host IDTR base.
    pub const HOST_IDTR_BASE: u32 = 0x6c0e;
    /// Host RSP.
    pub const HOST_RSP: u32 = 0x6c14;
    /// Host RIP.
    pub const HOST_RIP: u32 = 0x6c16;
    /// Host ES selector (CS, SS, DS, FS, GS, TR follow at +2 each).
    pub const HOST_ES: u32 = 0x0c00;
    /// Host IA32_PAT.
    pub const HOST_PAT: u32 = 0x2c00;
    /// Host IA32_EFER.
    pub const HOST_EFER: u32 = 0x2c02;
    /// Host IA32_SYSENTER_CS.
    pub const HOST_SYSENTER_CS: u32 = 0x4c00;
    /// Host IA32_SYSENTER_ESP.
    pub const HOST_SYSENTER_ESP: u32 = 0x6c10;
    /// Host IA32_SYSENTER_EIP.
    pub const HOST_SYSENTER_EIP: u32 = 0x6c12;
}

/// The VMCS this CPU has current (VMPTRLD), or 0.
static CURRENT: AtomicU64 = AtomicU64::new(0);

/// Makes the VMCS at physical `vmcs` current, if it is not.
#[cfg(strata_baremetal)]
fn make_current(vmcs: u64) {
    if CURRENT.load(Ordering::Relaxed) != vmcs {
        // SAFETY: VMX is on; `vmcs` is a VMCS region with the revision
        // identifier, owned by a live VCPU (the object layer passes no other).
        unsafe { core::arch::asm!("vmptrld [{}]", in(reg) &vmcs, options(nostack)) };
        CURRENT.store(vmcs, Ordering::Relaxed);
    }
}

/// VMCLEARs a fresh VMCS region whose first word already holds the
/// revision identifier: its launch state becomes clear.
#[cfg(strata_baremetal)]
pub fn clear(vmcs: u64) {
    // SAFETY: VMX is on; `vmcs` is a 4 KiB-aligned region of a VCPU.
    unsafe { core::arch::asm!("vmclear [{}]", in(reg) &vmcs, options(nostack)) };
    if CURRENT.load(Ordering::Relaxed) == vmcs {
        CURRENT.store(0, Ordering::Relaxed);
    }
}

/// Reads field `field` of the VMCS at `vmcs` (0 if the field does not exist).
#[cfg(strata_baremetal)]
pub fn read(vmcs: u64, field: u32) -> u64 {
    make_current(vmcs);
    let value: u64;
    let failed: u8;
    // SAFETY: the VMCS is current; VMREAD of an unsupported field fails
    // with VMfailValid, which is checked, and has no other effect.
    unsafe {
        core::arch::asm!(
            "vmread {value}, {field}",
            "setbe {failed}",
            field = in(reg) u64::from(field),
            value = out(reg) value,
            failed = out(reg_byte) failed,
            options(nostack),
        );
    }
    if failed != 0 { 0 } else { value }
}

/// Writes field `field` of the VMCS at `vmcs`.
#[cfg(strata_baremetal)]
pub fn write(vmcs: u64, field: u32, value: u64) {
    make_current(vmcs);
    // SAFETY: the VMCS is current; the object layer writes only checked
    // values; a refused write (VMfail) changes nothing.
    unsafe {
        core::arch::asm!("vmwrite {field}, {value}", field = in(reg) u64::from(field), value = in(reg) value, options(nostack));
    }
}

/// Invalidates every EPT-derived translation on this CPU (INVEPT type 2,
/// all contexts; SDM vol. 3C §30.3 INVEPT).
#[cfg(strata_baremetal)]
pub fn invalidate_ept() {
    let descriptor = [0u64; 2];
    // SAFETY: VMX is on; the descriptor is ignored for the all-context type.
    unsafe {
        core::arch::asm!("invept {kind}, [{descriptor}]", kind = in(reg) 2u64, descriptor = in(reg) &descriptor, options(nostack));
    }
}

/// Writes the host-state fields of the current VMCS that stay the same
/// for every entry on this CPU: control registers (except CR3), selectors,
/// the FS, GS, TR, GDTR and IDTR bases, EFER, PAT, SYSENTER and the exit
/// entry point (SDM vol. 3C §25.5, §27.2.2–27.2.4).
#[cfg(strata_baremetal)]
pub fn write_host_state(vmcs: u64) {
    use super::gdt::{KERNEL_CODE, KERNEL_DATA, TSS};
    use field::*;
    use x86::msr::{IA32_EFER, IA32_FS_BASE, IA32_GS_BASE, IA32_PAT, rdmsr};
    let mut gdtr = x86::dtables::DescriptorTablePointer::<u64>::default();
    let mut idtr = x86::dtables::DescriptorTablePointer::<u64>::default();
    // SAFETY: reading descriptor-table registers and MSRs has no side effects.
    let (cr0, cr4, fs_base, gs_base, efer, pat) = unsafe {
        x86::dtables::sgdt(&mut gdtr);
        x86::dtables::sidt(&mut idtr);
        (
            x86::controlregs::cr0().bits() as u64,
            x86::controlregs::cr4().bits() as u64,
            rdmsr(IA32_FS_BASE),
            rdmsr(IA32_GS_BASE),
            rdmsr(IA32_EFER),
            rdmsr(IA32_PAT),
        )
    };
    // The TSS base, from its 16-byte descriptor in the GDT.
    let descriptor = gdtr.base as u64 + u64::from(TSS.bits() & !7);
    // SAFETY: the GDT is mapped and holds the TSS descriptor at that selector.
    let (low, high) = unsafe { ((descriptor as *const u64).read(), ((descriptor + 8) as *const u64).read()) };
    let tr_base = (low >> 16 & 0xff_ffff) | (low >> 56) << 24 | high << 32;
    let data = u64::from(KERNEL_DATA.bits());
    for (offset, selector) in
        [data, u64::from(KERNEL_CODE.bits()), data, data, 0, 0, u64::from(TSS.bits())].into_iter().enumerate()
    {
        write(vmcs, HOST_ES + 2 * offset as u32, selector);
    }
    for (field, value) in [
        (HOST_CR0, cr0),
        (HOST_CR4, cr4),
        (HOST_FS_BASE, fs_base),
        (HOST_GS_BASE, gs_base),
        (HOST_TR_BASE, tr_base),
        (HOST_GDTR_BASE, gdtr.base as u64),
        (HOST_IDTR_BASE, idtr.base as u64),
        (HOST_EFER, efer),
        (HOST_PAT, pat),
        (HOST_SYSENTER_CS, 0),
        (HOST_SYSENTER_ESP, 0),
        (HOST_SYSENTER_EIP, 0),
        (HOST_RIP, vmx_exit as *const () as u64),
    ] {
        write(vmcs, field, value);
    }
}

/// The MSRs VMX does not switch, in the order of [`swap_syscall_msrs`]'s array.
pub const SYSCALL_MSRS: [u32; 5] = [0xc000_0081, 0xc000_0082, 0xc000_0083, 0xc000_0084, 0xc000_0102];

/// Loads `values` into STAR, LSTAR, CSTAR, FMASK and KernelGSbase and
/// returns what they held.
#[cfg(strata_baremetal)]
pub fn swap_syscall_msrs(values: [u64; 5]) -> [u64; 5] {
    let mut old = [0; 5];
    for (i, msr) in SYSCALL_MSRS.into_iter().enumerate() {
        // SAFETY: these MSRs exist in long mode; while the kernel runs with
        // interrupts off nothing uses them (SYSCALL comes from user mode,
        // which is not entered before they are restored).
        unsafe {
            old[i] = x86::msr::rdmsr(msr);
            x86::msr::wrmsr(msr, values[i]);
        }
    }
    old
}

#[cfg(strata_baremetal)]
unsafe extern "C" {
    /// The host RIP of every VM exit (inside [`run`]).
    fn vmx_exit();
}

/// Enters the guest of the current VMCS and returns at its next VM exit:
/// 0, or 1 for VMfailInvalid and 2 for VMfailValid (nothing ran).
///
/// `state` is the VCPU's state page: the 16 general registers in encoding
/// order (the RSP word unused: the VMCS has it), stored there at the exit;
/// CR2 at byte 0xb0; the guest's XCR0. `load` is where the general
/// registers are loaded from at the entry (the state page, or the caller's
/// register block). `fpu` is the guest's XSAVE area (64-byte aligned);
/// `launched` whether to VMRESUME. VM entry and exit switch neither the
/// guest's XCR0 nor the host's (`host_xcr0`), so the guest's is loaded (if
/// it differs) after its FPU state is restored, and read back and the
/// host's restored before that state is saved, both under the host's XCR0
/// (every component).
///
/// # Safety
/// VMX is on and the VMCS current, with valid host state (RIP `vmx_exit`);
/// interrupts are off; the pointers are valid and aligned; the XCR0 in the
/// state page is a value XSETBV accepts with the host's XCR0 in force.
#[cfg(strata_baremetal)]
#[unsafe(naked)]
pub unsafe extern "sysv64" fn run(
    state: *mut u64,
    fpu: *mut u8,
    launched: u64,
    load: *const u64,
    host_xcr0: u64,
) -> u64 {
    core::arch::naked_asm!(
        push_callee_saved!(),
        "push r8",  // [rsp + 24]: the host's XCR0
        "push rcx", // [rsp + 16]: where the registers come from
        "push rdi", // [rsp + 8]: the state page
        "push rsi", // [rsp]: the FPU image
        "mov r12, rdx", // launched (R12 was saved; the guest's is loaded after the test)
        "mov eax, -1", // every component XCR0 enables (EDX: XCR0 has no high bits)
        "xrstor64 [rsi]",
        load_guest_xcr0!("rdi", "r8"),
        "mov rax, [rdi + 0xb0]",
        "mov cr2, rax",
        "mov rax, {host_rsp}",
        "vmwrite rax, rsp",
        "mov rdi, [rsp + 16]",
        "test r12, r12",
        "mov rax, [rdi]",
        "mov rcx, [rdi + 8]",
        "mov rdx, [rdi + 16]",
        "mov rbx, [rdi + 24]",
        "mov rbp, [rdi + 40]",
        "mov rsi, [rdi + 48]",
        "mov r8, [rdi + 64]",
        "mov r9, [rdi + 72]",
        "mov r10, [rdi + 80]",
        "mov r11, [rdi + 88]",
        "mov r12, [rdi + 96]",
        "mov r13, [rdi + 104]",
        "mov r14, [rdi + 112]",
        "mov r15, [rdi + 120]",
        "mov rdi, [rdi + 56]",
        "jnz 2f",
        "vmlaunch",
        "jmp 3f",
        "2:",
        "vmresume",
        // Entry failed: CF set for VMfailInvalid, ZF for VMfailValid.
        "3:",
        "mov eax, 1",
        "jc 6f",
        "mov eax, 2",
        "jmp 6f",
        // VM exit: RSP is as written above; the registers are the guest's.
        ".global vmx_exit",
        "vmx_exit:",
        "push rax",
        "mov rax, [rsp + 16]",
        store_guest_registers!(),
        "pop rcx",
        "mov [rax], rcx",
        "mov rcx, cr2",
        "mov [rax + 0xb0], rcx",
        "xor eax, eax",
        "6:",
        "mov r8, rax",
        restore_host_xcr0!("[rsp + 8]", "[rsp + 24]"),
        "mov rcx, [rsp]",
        "mov eax, -1",
        "xsave64 [rcx]",
        "mov rax, r8",
        // The kernel's own FPU use starts from the reset state.
        "fninit",
        "push 0x1f80",
        "ldmxcsr [rsp]",
        "add rsp, 40",
        pop_callee_saved_and_return!(),
        host_rsp = const field::HOST_RSP,
        xcr0 = const crate::object::vcpu::layout::XCR0 - crate::object::vcpu::layout::REGISTERS,
    )
}

/// Host builds never enter a guest.
///
/// # Safety
/// None needed: it does nothing.
#[cfg(not(strata_baremetal))]
pub unsafe extern "sysv64" fn run(_: *mut u64, _: *mut u8, _: u64, _: *const u64, _: u64) -> u64 {
    0
}

/// Host builds: the VMCS instructions do nothing (the object layer's
/// tests use `Arena`'s simulated VMCS instead).
#[cfg(not(strata_baremetal))]
pub fn clear(_vmcs: u64) {
    CURRENT.store(0, Ordering::Relaxed);
}

/// Host builds: no VMCS to read.
#[cfg(not(strata_baremetal))]
pub fn read(_vmcs: u64, _field: u32) -> u64 {
    0
}

/// Host builds: no VMCS to write.
#[cfg(not(strata_baremetal))]
pub fn write(_vmcs: u64, _field: u32, _value: u64) {}

/// Host builds: nothing to invalidate.
#[cfg(not(strata_baremetal))]
pub fn invalidate_ept() {}

/// Host builds: no host state to write.
#[cfg(not(strata_baremetal))]
pub fn write_host_state(_vmcs: u64) {}

/// Host builds: no MSRs to swap.
#[cfg(not(strata_baremetal))]
pub fn swap_syscall_msrs(values: [u64; 5]) -> [u64; 5] {
    values
}

/// This CPU's GDTR and IDTR.
pub type DescriptorTables =
    (x86::dtables::DescriptorTablePointer<u64>, x86::dtables::DescriptorTablePointer<u64>);

/// Reads this CPU's GDTR and IDTR.
#[cfg(strata_baremetal)]
pub fn descriptor_tables() -> DescriptorTables {
    let mut tables = DescriptorTables::default();
    // SAFETY: SGDT and SIDT only store the registers.
    unsafe {
        x86::dtables::sgdt(&mut tables.0);
        x86::dtables::sidt(&mut tables.1);
    }
    tables
}

/// Loads the GDTR and IDTR `descriptor_tables` read.
///
/// # Safety
/// `tables` is what `descriptor_tables` returned on this CPU.
#[cfg(strata_baremetal)]
pub unsafe fn restore_descriptor_tables(tables: &DescriptorTables) {
    // SAFETY: the same tables, still in place (caller's precondition).
    unsafe {
        x86::dtables::lgdt(&tables.0);
        x86::dtables::lidt(&tables.1);
    }
}

/// Host builds: no descriptor tables.
#[cfg(not(strata_baremetal))]
pub fn descriptor_tables() -> DescriptorTables {
    DescriptorTables::default()
}

/// Host builds: nothing to restore.
///
/// # Safety
/// None needed: it does nothing.
#[cfg(not(strata_baremetal))]
pub unsafe fn restore_descriptor_tables(_tables: &DescriptorTables) {}
