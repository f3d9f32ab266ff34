//! Which hardware virtualization this CPU offers, found at boot from CPUID
//! and the capability MSRs: the VCPU backend is chosen from this.
//!
//! - AMD SVM: CPUID 8000_0001h ECX bit 2; disabled by firmware when
//!   `VM_CR.SVMDIS` (MSR C001_0114h bit 4) is set; CPUID 8000_000Ah gives
//!   the revision (EAX), the number of ASIDs (EBX) and the features (EDX:
//!   bit 0 nested paging, bit 3 NRIP save). AMD APM vol. 2 §15.4, §15.30.
//! - Intel VMX: CPUID 1 ECX bit 5; disabled by firmware when
//!   `IA32_FEATURE_CONTROL` (MSR 3Ah) is locked (bit 0) without VMXON
//!   outside SMX (bit 2). `IA32_VMX_BASIC` (480h) bits 30:0 are the VMCS
//!   revision. Secondary controls exist if bit 63 of
//!   `IA32_VMX_PROCBASED_CTLS` (482h) may be 1, and then
//!   `IA32_VMX_PROCBASED_CTLS2` (48Bh) bits 33, 37 and 39 say whether EPT,
//!   VPID and unrestricted guest may be enabled. Intel SDM vol. 3C §23.6,
//!   §23.7, appendix A.3.

use core::fmt;

/// SVM as this CPU has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Svm {
    /// SVM revision (CPUID 8000_000Ah EAX[7:0]).
    pub revision: u8,
    /// Number of ASIDs.
    pub asids: u32,
    /// Nested paging.
    pub nested_paging: bool,
    /// The next RIP is saved on #VMEXIT (without it, instruction lengths
    /// must be computed).
    pub nrip_save: bool,
}

/// VMX as this CPU has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vmx {
    /// VMCS revision identifier.
    pub revision: u32,
    /// Extended page tables.
    pub ept: bool,
    /// Virtual-processor identifiers.
    pub vpid: bool,
    /// Unrestricted guest (real mode and unpaged protected mode in VMX non-root operation).
    pub unrestricted_guest: bool,
}

/// The virtualization backend this CPU allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// AMD SVM.
    Svm(Svm),
    /// Intel VMX.
    Vmx(Vmx),
    /// None, and why.
    None(&'static str),
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yes_no = |b: bool| if b { "" } else { "no " };
        match self {
            Self::Svm(s) => write!(
                f,
                "AMD SVM revision {}, {} ASIDs, {}nested paging, {}NRIP save",
                s.revision,
                s.asids,
                yes_no(s.nested_paging),
                yes_no(s.nrip_save)
            ),
            Self::Vmx(v) => write!(
                f,
                "Intel VMX, VMCS revision {:#x}, {}EPT, {}VPID, {}unrestricted guest",
                v.revision,
                yes_no(v.ept),
                yes_no(v.vpid),
                yes_no(v.unrestricted_guest)
            ),
            Self::None(why) => write!(f, "none: {why}"),
        }
    }
}

/// EAX, EBX, ECX and EDX of a CPUID leaf.
pub type CpuidRegisters = (u32, u32, u32, u32);

/// What the decision needs from the CPU. `read_msr` is only called for
/// MSRs the CPUID values say exist.
pub struct Probe<C, M> {
    /// CPUID leaf → (EAX, EBX, ECX, EDX).
    pub cpuid: C,
    /// RDMSR.
    pub read_msr: M,
}

const VM_CR: u32 = 0xc001_0114;
const FEATURE_CONTROL: u32 = 0x3a;
const VMX_BASIC: u32 = 0x480;
const VMX_PROCBASED_CTLS: u32 = 0x482;
const VMX_PROCBASED_CTLS2: u32 = 0x48b;

/// Decides the backend from what `probe` reads.
pub fn decide<C, M>(probe: Probe<C, M>) -> Backend
where
    C: Fn(u32) -> CpuidRegisters,
    M: Fn(u32) -> u64,
{
    let (max_extended, ..) = (probe.cpuid)(0x8000_0000);
    let svm = max_extended >= 0x8000_000a && (probe.cpuid)(0x8000_0001).2 & (1 << 2) != 0;
    if svm {
        if (probe.read_msr)(VM_CR) & (1 << 4) != 0 {
            return Backend::None("SVM is disabled by the firmware (VM_CR.SVMDIS)");
        }
        let (eax, ebx, _, edx) = (probe.cpuid)(0x8000_000a);
        return Backend::Svm(Svm {
            revision: eax as u8,
            asids: ebx,
            nested_paging: edx & 1 != 0,
            nrip_save: edx & (1 << 3) != 0,
        });
    }
    if (probe.cpuid)(1).2 & (1 << 5) != 0 {
        let control = (probe.read_msr)(FEATURE_CONTROL);
        if control & 1 != 0 && control & (1 << 2) == 0 {
            return Backend::None("VMX is disabled by the firmware (IA32_FEATURE_CONTROL)");
        }
        let basic = (probe.read_msr)(VMX_BASIC);
        let secondary = (probe.read_msr)(VMX_PROCBASED_CTLS) & (1 << 63) != 0;
        let allowed = if secondary { (probe.read_msr)(VMX_PROCBASED_CTLS2) >> 32 } else { 0 };
        return Backend::Vmx(Vmx {
            revision: basic as u32 & 0x7fff_ffff,
            ept: allowed & (1 << 1) != 0,
            vpid: allowed & (1 << 5) != 0,
            unrestricted_guest: allowed & (1 << 7) != 0,
        });
    }
    Backend::None("the CPU has neither SVM nor VMX")
}

/// The backend of the CPU this runs on.
#[cfg(strata_baremetal)]
pub fn detect() -> Backend {
    decide(Probe {
        cpuid: |leaf| {
            let r = core::arch::x86_64::__cpuid(leaf);
            (r.eax, r.ebx, r.ecx, r.edx)
        },
        // SAFETY: `decide` reads only MSRs whose CPUID feature bit is set.
        read_msr: |msr| unsafe { x86::msr::rdmsr(msr) },
    })
}

/// The CPU's backend, and whether [`enable`] turned it on.
pub static STATE: spin::Once<(Backend, Result<(), &'static str>)> = spin::Once::new();

/// Turns `backend` on for this CPU, with `area` (a zeroed 4 KiB frame at
/// physical `area_physical`, reached at `area`) as the SVM host save area
/// or the VMXON region:
/// - SVM: `EFER.SVME`, and `VM_HSAVE_PA` (APM vol. 2 §15.4, §15.30.4);
/// - VMX: `IA32_FEATURE_CONTROL` locked with VMXON outside SMX if the
///   firmware left it unlocked, CR0 and CR4 within their fixed bits with
///   `CR4.VMXE`, the VMCS revision in the region, and `VMXON`
///   (SDM vol. 3C §24.7, §24.8, §24.11.5).
///
/// # Safety
/// Runs once per CPU with interrupts off; `area` is a frame no one else
/// uses, for as long as the CPU runs.
#[cfg(strata_baremetal)]
pub unsafe fn enable(backend: &Backend, area: *mut u32, area_physical: u64) -> Result<(), &'static str> {
    use x86::msr::{rdmsr, wrmsr};
    const EFER: u32 = 0xc000_0080;
    const VM_HSAVE_PA: u32 = 0xc001_0117;
    const VMX_CR0_FIXED0: u32 = 0x486;
    const VMX_CR0_FIXED1: u32 = 0x487;
    const VMX_CR4_FIXED0: u32 = 0x488;
    const VMX_CR4_FIXED1: u32 = 0x489;
    match backend {
        Backend::Svm(_) => {
            // SAFETY: SVM exists (CPUID) and is not disabled (VM_CR), so
            // EFER.SVME may be set; the save area is the caller's frame.
            unsafe {
                wrmsr(EFER, rdmsr(EFER) | 1 << 12);
                wrmsr(VM_HSAVE_PA, area_physical);
            }
            Ok(())
        }
        Backend::Vmx(_) => {
            // SAFETY: VMX exists (CPUID) and is not locked off (checked by
            // `decide`); the MSRs read are defined when it exists; CR0 and
            // CR4 stay within the values VMX operation allows, which the
            // kernel already satisfies apart from NE and VMXE; the VMXON
            // region is the caller's frame.
            unsafe {
                let control = rdmsr(FEATURE_CONTROL);
                if control & 1 == 0 {
                    wrmsr(FEATURE_CONTROL, control | 1 | 1 << 2);
                }
                let cr0 =
                    (x86::controlregs::cr0().bits() as u64 | rdmsr(VMX_CR0_FIXED0)) & rdmsr(VMX_CR0_FIXED1);
                x86::controlregs::cr0_write(x86::controlregs::Cr0::from_bits_truncate(cr0 as usize));
                let cr4 = (x86::controlregs::cr4().bits() as u64 | 1 << 13 | rdmsr(VMX_CR4_FIXED0))
                    & rdmsr(VMX_CR4_FIXED1);
                x86::controlregs::cr4_write(x86::controlregs::Cr4::from_bits_truncate(cr4 as usize));
                area.write_volatile(rdmsr(VMX_BASIC) as u32 & 0x7fff_ffff);
                let failed: u8;
                core::arch::asm!(
                    "vmxon [{region}]",
                    "setbe {failed}",
                    region = in(reg) &area_physical,
                    failed = out(reg_byte) failed,
                    options(nostack),
                );
                if failed != 0 { Err("VMXON failed") } else { Ok(()) }
            }
        }
        Backend::None(why) => Err(why),
    }
}

/// Host builds (tests, tools) do not run on the machine the kernel drives.
///
/// # Safety
/// None needed: it does nothing.
#[cfg(not(strata_baremetal))]
pub unsafe fn enable(_backend: &Backend, _area: *mut u32, _area_physical: u64) -> Result<(), &'static str> {
    Err("enabled only when running on the machine")
}

/// Host builds (tests, tools) do not run on the machine the kernel drives.
#[cfg(not(strata_baremetal))]
pub fn detect() -> Backend {
    Backend::None("detected only when running on the machine")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn backend(cpuid: &[(u32, CpuidRegisters)], msrs: &[(u32, u64)]) -> Backend {
        let cpuid: HashMap<u32, CpuidRegisters> = cpuid.iter().copied().collect();
        let msrs: HashMap<u32, u64> = msrs.iter().copied().collect();
        decide(Probe {
            cpuid: |leaf| cpuid.get(&leaf).copied().unwrap_or_default(),
            read_msr: |msr| *msrs.get(&msr).unwrap_or_else(|| panic!("read MSR {msr:#x}, which it must not")),
        })
    }

    #[test]
    fn svm_as_qemu_tcg_reports_it() {
        // QEMU 7.2 TCG -cpu max: SVM revision 1, 16 ASIDs, nested paging, no NRIP save.
        let found = backend(
            &[
                (0x8000_0000, (0x8000_0021, 0, 0, 0)),
                (0x8000_0001, (0, 0, 1 << 2, 0)),
                (0x8000_000a, (1, 16, 0, 1)),
            ],
            &[(VM_CR, 0)],
        );
        assert_eq!(
            found,
            Backend::Svm(Svm { revision: 1, asids: 16, nested_paging: true, nrip_save: false })
        );
        assert_eq!(found.to_string(), "AMD SVM revision 1, 16 ASIDs, nested paging, no NRIP save");
    }

    #[test]
    fn vmx_with_its_secondary_controls() {
        let found = backend(
            &[(0x8000_0000, (0x8000_0008, 0, 0, 0)), (1, (0, 0, 1 << 5, 0))],
            &[
                (FEATURE_CONTROL, 0b101),
                (VMX_BASIC, 0x00da_0400_0000_0004),
                (VMX_PROCBASED_CTLS, 1 << 63),
                (VMX_PROCBASED_CTLS2, (1 << 33 | 1 << 37 | 1 << 39) | 0xff),
            ],
        );
        assert_eq!(found, Backend::Vmx(Vmx { revision: 4, ept: true, vpid: true, unrestricted_guest: true }));
        // Without secondary controls there is no EPT, whatever CTLS2 would say.
        let found = backend(
            &[(1, (0, 0, 1 << 5, 0))],
            &[(FEATURE_CONTROL, 0), (VMX_BASIC, 1), (VMX_PROCBASED_CTLS, 0)],
        );
        assert_eq!(
            found,
            Backend::Vmx(Vmx { revision: 1, ept: false, vpid: false, unrestricted_guest: false })
        );
    }

    #[test]
    fn firmware_can_disable_either_and_a_cpu_may_have_neither() {
        let svm_off = backend(
            &[(0x8000_0000, (0x8000_000a, 0, 0, 0)), (0x8000_0001, (0, 0, 1 << 2, 0))],
            &[(VM_CR, 1 << 4)],
        );
        assert!(matches!(svm_off, Backend::None(why) if why.contains("SVMDIS")));
        let vmx_off = backend(&[(1, (0, 0, 1 << 5, 0))], &[(FEATURE_CONTROL, 0b001)]);
        assert!(matches!(vmx_off, Backend::None(why) if why.contains("FEATURE_CONTROL")));
        // No MSR is read on a CPU without either.
        assert!(matches!(backend(&[], &[]), Backend::None(_)));
    }
}
