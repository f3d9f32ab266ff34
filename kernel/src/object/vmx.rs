//! The VMX backend of VCPUs: the vendor-neutral fields and exits in terms
//! of the VMCS (Intel SDM vol. 3C ch. 25–28, appendix B for the field
//! encodings, appendix C for the exit reasons). The VMCS is reached only
//! through `PhysicalMemory::vmcs_read` and `vmcs_write`, which are VMREAD
//! and VMWRITE on the machine and a simulated VMCS on the host.

use strata_abi::vcpu::{self, Exit, intercept};

use super::vcpu::{NeutralExit, layout};
use super::{ObjectSpace, PhysicalMemory};
use crate::addr::PhysAddr;

/// VMCS field encodings (SDM vol. 3C appendix B).
pub mod vmcs {
    /// Guest ES selector; the other selectors follow at +2 (CS SS DS FS GS LDTR TR).
    pub const GUEST_ES_SELECTOR: u32 = 0x0800;
    /// Guest ES limit; as above, then GDTR and IDTR limits.
    pub const GUEST_ES_LIMIT: u32 = 0x4800;
    /// Guest ES access rights; as above (no GDTR/IDTR).
    pub const GUEST_ES_ACCESS: u32 = 0x4814;
    /// Guest ES base; as above, then GDTR and IDTR bases.
    pub const GUEST_ES_BASE: u32 = 0x6806;
    /// Virtual-processor identifier (SDM vol. 3C §25.6.12).
    pub const VPID: u32 = 0x0000;
    /// Guest interruptibility state.
    pub const GUEST_INTERRUPTIBILITY: u32 = 0x4824;
    /// Guest activity state.
    pub const GUEST_ACTIVITY: u32 = 0x4826;
    /// Guest IA32_SYSENTER_CS.
    pub const GUEST_SYSENTER_CS: u32 = 0x482a;
    /// VMX-preemption timer value.
    pub const PREEMPTION_TIMER: u32 = 0x482e;
    /// Guest CR0.
    pub const GUEST_CR0: u32 = 0x6800;
    /// Guest CR3.
    pub const GUEST_CR3: u32 = 0x6802;
    /// Guest CR4.
    pub const GUEST_CR4: u32 = 0x6804;
    /// Guest DR7.
    pub const GUEST_DR7: u32 = 0x681a;
    /// Guest RSP.
    pub const GUEST_RSP: u32 = 0x681c;
    /// Guest RIP.
    pub const GUEST_RIP: u32 = 0x681e;
    /// Guest RFLAGS.
    pub const GUEST_RFLAGS: u32 = 0x6820;
    /// Guest IA32_SYSENTER_ESP.
    pub const GUEST_SYSENTER_ESP: u32 = 0x6824;
    /// Guest IA32_SYSENTER_EIP.
    pub const GUEST_SYSENTER_EIP: u32 = 0x6826;
    /// VMCS link pointer (all ones: none).
    pub const LINK_POINTER: u32 = 0x2800;
    /// Guest IA32_PAT.
    pub const GUEST_PAT: u32 = 0x2804;
    /// Guest IA32_EFER.
    pub const GUEST_EFER: u32 = 0x2806;
    /// Pin-based controls.
    pub const PIN_CONTROLS: u32 = 0x4000;
    /// Primary processor-based controls.
    pub const PRIMARY_CONTROLS: u32 = 0x4002;
    /// Exception bitmap.
    pub const EXCEPTION_BITMAP: u32 = 0x4004;
    /// VM-exit controls.
    pub const EXIT_CONTROLS: u32 = 0x400c;
    /// VM-entry controls.
    pub const ENTRY_CONTROLS: u32 = 0x4012;
    /// VM-entry interruption information.
    pub const ENTRY_INTERRUPTION: u32 = 0x4016;
    /// VM-entry exception error code.
    pub const ENTRY_ERROR_CODE: u32 = 0x4018;
    /// VM-entry instruction length (software interrupts).
    pub const ENTRY_INSTRUCTION_LENGTH: u32 = 0x401a;
    /// Secondary processor-based controls.
    pub const SECONDARY_CONTROLS: u32 = 0x401e;
    /// TSC offset.
    pub const TSC_OFFSET: u32 = 0x2010;
    /// EPT pointer.
    pub const EPT_POINTER: u32 = 0x201a;
    /// CR0 guest/host mask.
    pub const CR0_MASK: u32 = 0x6000;
    /// CR4 guest/host mask.
    pub const CR4_MASK: u32 = 0x6002;
    /// CR0 read shadow.
    pub const CR0_SHADOW: u32 = 0x6004;
    /// CR4 read shadow.
    pub const CR4_SHADOW: u32 = 0x6006;
    /// VM-instruction error.
    pub const INSTRUCTION_ERROR: u32 = 0x4400;
    /// Exit reason.
    pub const EXIT_REASON: u32 = 0x4402;
    /// VM-exit interruption information.
    pub const EXIT_INTERRUPTION: u32 = 0x4404;
    /// VM-exit interruption error code.
    pub const EXIT_ERROR_CODE: u32 = 0x4406;
    /// IDT-vectoring information.
    pub const VECTORING_INFO: u32 = 0x4408;
    /// IDT-vectoring error code.
    pub const VECTORING_ERROR: u32 = 0x440a;
    /// VM-exit instruction length.
    pub const INSTRUCTION_LENGTH: u32 = 0x440c;
    /// VM-exit instruction information.
    pub const INSTRUCTION_INFO: u32 = 0x440e;
    /// Exit qualification.
    pub const QUALIFICATION: u32 = 0x6400;
    /// Guest-physical address (EPT violations).
    pub const GUEST_PHYSICAL: u32 = 0x2400;
}

/// Control bits the kernel uses (SDM vol. 3C §25.6–25.8).
pub mod control {
    /// Pin-based: external interrupts exit.
    pub const EXTERNAL_INTERRUPT_EXITING: u32 = 1 << 0;
    /// Pin-based: NMIs exit.
    pub const NMI_EXITING: u32 = 1 << 3;
    /// Pin-based: the VMX-preemption timer counts down in non-root
    /// operation and exits at 0 (SDM vol. 3C §26.5.1).
    pub const PREEMPTION_TIMER: u32 = 1 << 6;
    /// Primary: interrupt-window exiting.
    pub const INTERRUPT_WINDOW: u32 = 1 << 2;
    /// Primary: use TSC offsetting.
    pub const TSC_OFFSETTING: u32 = 1 << 3;
    /// Primary: HLT exiting.
    pub const HLT: u32 = 1 << 7;
    /// Primary: INVLPG exiting.
    pub const INVLPG: u32 = 1 << 9;
    /// Primary: MWAIT exiting.
    pub const MWAIT: u32 = 1 << 10;
    /// Primary: RDTSC exiting.
    pub const RDTSC: u32 = 1 << 12;
    /// Primary: RDPMC exiting.
    pub const RDPMC: u32 = 1 << 11;
    /// Primary: CR3-load exiting.
    pub const CR3_LOAD: u32 = 1 << 15;
    /// Primary: CR3-store exiting.
    pub const CR3_STORE: u32 = 1 << 16;
    /// Primary: CR8-load exiting.
    pub const CR8_LOAD: u32 = 1 << 19;
    /// Primary: CR8-store exiting.
    pub const CR8_STORE: u32 = 1 << 20;
    /// Primary: unconditional I/O exiting.
    pub const UNCONDITIONAL_IO: u32 = 1 << 24;
    /// Primary: MONITOR exiting.
    pub const MONITOR: u32 = 1 << 29;
    /// Primary: PAUSE exiting.
    pub const PAUSE: u32 = 1 << 30;
    /// Primary: activate secondary controls.
    pub const SECONDARY: u32 = 1 << 31;
    /// Secondary: enable EPT.
    pub const EPT: u32 = 1 << 1;
    /// Secondary: enable VPID.
    pub const VPID: u32 = 1 << 5;
    /// Secondary: enable RDTSCP.
    pub const RDTSCP: u32 = 1 << 3;
    /// Secondary: unrestricted guest.
    pub const UNRESTRICTED_GUEST: u32 = 1 << 7;
    /// Secondary: enable INVPCID.
    pub const INVPCID: u32 = 1 << 12;
    /// Exit: save debug controls.
    pub const SAVE_DEBUG: u32 = 1 << 2;
    /// Exit: host address-space size (64-bit host).
    pub const HOST_64: u32 = 1 << 9;
    /// Exit: save and load IA32_PAT, save and load IA32_EFER.
    pub const EXIT_PAT_EFER: u32 = 0xf << 18;
    /// Entry: load debug controls.
    pub const LOAD_DEBUG: u32 = 1 << 2;
    /// Entry: IA-32e mode guest.
    pub const IA32E_GUEST: u32 = 1 << 9;
    /// Entry: load IA32_PAT and IA32_EFER.
    pub const ENTRY_PAT_EFER: u32 = 0x3 << 14;
}

/// What the CPU's VMX capability MSRs allow, turned into the controls
/// every VMCS starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VmxConfig {
    /// VMCS revision identifier.
    pub revision: u32,
    /// Pin-based controls.
    pub pin: u32,
    /// Primary processor-based controls (without the optional intercepts).
    pub primary: u32,
    /// Primary controls the CPU allows to be 1.
    pub primary_allowed: u32,
    /// Secondary processor-based controls.
    pub secondary: u32,
    /// VM-exit controls.
    pub exit: u32,
    /// VM-entry controls (without IA-32e mode guest).
    pub entry: u32,
    /// CR0 bits that must be 1 in VMX operation (PE and PG excepted: the guest is unrestricted).
    pub cr0_fixed0: u64,
    /// CR4 bits that must be 1 in VMX operation.
    pub cr4_fixed0: u64,
    /// The VMX-preemption timer's start value, one time slice; 0 when the
    /// CPU has no such timer.
    pub preemption_timer: u32,
}

/// A control value: the `wanted` bits and those the capability MSR value
/// `capability` requires (low half), provided it allows them all (high
/// half); otherwise the bits it does not allow.
pub fn adjust(wanted: u32, capability: u64) -> Result<u32, u32> {
    let (required, allowed) = (capability as u32, (capability >> 32) as u32);
    let value = wanted | required;
    if value & !allowed != 0 { Err(value & !allowed) } else { Ok(value) }
}

impl VmxConfig {
    /// The controls for a CPU whose capability MSRs `read_msr` reads
    /// (IA32_VMX_BASIC 480h and the TRUE control MSRs 48Dh–490h when BASIC
    /// bit 55 says they exist, else 481h–484h; 48Bh for the secondary
    /// controls; 486h and 488h for the fixed CR bits; 485h for the
    /// preemption timer's rate, a time slice being `slice_tsc` TSC ticks).
    /// Fails with what is missing.
    pub fn from_capabilities(read_msr: impl Fn(u32) -> u64, slice_tsc: u64) -> Result<Self, &'static str> {
        use control::*;
        let basic = read_msr(0x480);
        let true_msrs = basic & (1 << 55) != 0;
        let msr = |plain: u32, truer: u32| read_msr(if true_msrs { truer } else { plain });
        let proc_caps = msr(0x482, 0x48e);
        // The preemption timer where there is one: a guest's run is bounded
        // even where an external interrupt would not end it (Bochs 2.7
        // holds them while the guest's IF is clear).
        let pin_caps = msr(0x481, 0x48d);
        let timer = PREEMPTION_TIMER & (pin_caps >> 32) as u32;
        let pin = adjust(EXTERNAL_INTERRUPT_EXITING | NMI_EXITING | timer, pin_caps)
            .map_err(|_| "VMX cannot make external interrupts and NMIs exit")?;
        // IA32_VMX_MISC bits 4:0: the timer counts once every 2^rate TSC ticks.
        let ticks = slice_tsc >> (read_msr(0x485) & 0x1f);
        let preemption_timer = if timer == 0 { 0 } else { ticks.clamp(1, u64::from(u32::MAX)) as u32 };
        let primary = adjust(
            TSC_OFFSETTING | CR8_LOAD | CR8_STORE | UNCONDITIONAL_IO | MWAIT | MONITOR | RDPMC | SECONDARY,
            proc_caps,
        )
        .map_err(|_| "VMX lacks I/O, CR8, MONITOR/MWAIT exiting or secondary controls")?;
        if (proc_caps >> 32) as u32 & SECONDARY == 0 {
            return Err("VMX has no secondary controls");
        }
        let secondary_caps = read_msr(0x48b);
        let optional = (VPID | RDTSCP | INVPCID) & (secondary_caps >> 32) as u32;
        let secondary = adjust(EPT | UNRESTRICTED_GUEST | optional, secondary_caps)
            .map_err(|_| "VMX lacks EPT or unrestricted guest")?;
        let exit = adjust(SAVE_DEBUG | HOST_64 | EXIT_PAT_EFER, msr(0x483, 0x48f))
            .map_err(|_| "VMX cannot switch EFER and PAT on exit")?;
        let entry = adjust(LOAD_DEBUG | ENTRY_PAT_EFER, msr(0x484, 0x490))
            .map_err(|_| "VMX cannot load EFER and PAT on entry")?;
        // IA32_VMX_EPT_VPID_CAP: 4-level walks (6), write-back paging
        // structures (14), INVEPT (20) with the all-context type (26).
        let ept = 1 << 6 | 1 << 14 | 1 << 20 | 1 << 26;
        if read_msr(0x48c) & ept != ept {
            return Err("EPT lacks 4-level walks, write-back structures or all-context INVEPT");
        }
        Ok(Self {
            revision: basic as u32 & 0x7fff_ffff,
            pin,
            primary,
            primary_allowed: (proc_caps >> 32) as u32,
            secondary,
            exit,
            entry,
            cr0_fixed0: read_msr(0x486) & !(1 | 1 << 31),
            cr4_fixed0: read_msr(0x488),
            preemption_timer,
        })
    }
}

/// A VMX exit as the VMCS reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VmxExit {
    /// Exit reason (bit 31: VM-entry failure).
    pub reason: u32,
    /// Exit qualification.
    pub qualification: u64,
    /// Instruction length.
    pub length: u64,
    /// VM-exit interruption information.
    pub interruption: u32,
    /// VM-exit interruption error code.
    pub error_code: u32,
    /// VM-exit instruction information.
    pub instruction_info: u32,
    /// Guest-physical address.
    pub guest_physical: u64,
}

/// Classifies a VMX exit (SDM vol. 3C §28.2, appendix C); `None` for the
/// host's interrupts and NMIs.
#[inline(always)]
pub fn classify_vmx(raw: VmxExit) -> Option<NeutralExit> {
    let exit = |reason, qualification, qualification2, length| {
        Some(NeutralExit { reason, qualification, qualification2, length })
    };
    let nested = |instruction| exit(Exit::NestedVirtualization, instruction, 0, raw.length);
    let basic = raw.reason & 0xffff;
    if raw.reason & (1 << 31) != 0 {
        return exit(Exit::InvalidGuestState, u64::from(basic), 0, 0);
    }
    match basic {
        // Exception or NMI: the interruption information says which.
        0 => {
            let info = raw.interruption;
            if (info >> 8) & 7 == 2 {
                return None;
            }
            let vector = u64::from(info & 0xff);
            let has_error = info & (1 << 11) != 0;
            let address = if vector == 14 { raw.qualification } else { 0 };
            exit(
                Exit::Exception,
                vector | if has_error { 1 << 8 } else { 0 },
                u64::from(raw.error_code),
                address,
            )
        }
        // An external interrupt, or the preemption timer: the kernel's.
        1 | 52 => None,
        2 => exit(Exit::Shutdown, 0, 0, 0),
        3 => exit(Exit::Init, 0, 0, 0),
        4 => exit(Exit::Sipi, raw.qualification & 0xff, 0, 0),
        7 => exit(Exit::InterruptWindow, 0, 0, 0),
        10 => exit(Exit::Cpuid, 0, 0, raw.length),
        12 => exit(Exit::Hlt, 0, 0, raw.length),
        14 => exit(Exit::Invlpg, raw.qualification, 0, raw.length),
        16 | 51 => exit(Exit::Rdtsc, 0, 0, raw.length),
        18 => exit(Exit::Hypercall, 0, 0, raw.length),
        19 => nested(vcpu::nested::VMCLEAR),
        20 => nested(vcpu::nested::VMLAUNCH),
        21 => nested(vcpu::nested::VMPTRLD),
        22 => nested(vcpu::nested::VMPTRST),
        23 => nested(vcpu::nested::VMREAD),
        24 => nested(vcpu::nested::VMRESUME),
        25 => nested(vcpu::nested::VMWRITE),
        26 => nested(vcpu::nested::VMXOFF),
        27 => nested(vcpu::nested::VMXON),
        50 => nested(vcpu::nested::INVEPT),
        53 => nested(vcpu::nested::INVVPID),
        28 => {
            // Control-register access: CR in bits 0-3, type in 4-5 (0 MOV to
            // CR, 1 MOV from CR, 2 CLTS, 3 LMSW: all but 1 write), GPR in
            // 8-11, LMSW's source data in 16-31 (given as word 2).
            let q = raw.qualification;
            let write = if (q >> 4) & 3 == 1 { 0 } else { 16 };
            exit(Exit::CrAccess, (q & 0xf) | write | (q >> 8 & 0xf) << 8, q >> 16 & 0xffff, raw.length)
        }
        30 => {
            let q = raw.qualification;
            let mut qualification = (q >> 16) & 0xffff | ((q & 7) + 1) << vcpu::io::SIZE_SHIFT;
            if q & (1 << 3) != 0 {
                qualification |= vcpu::io::IN;
            }
            if q & (1 << 4) != 0 {
                qualification |= vcpu::io::STRING;
            }
            if q & (1 << 5) != 0 {
                qualification |= vcpu::io::REP;
            }
            // Address size of a string instruction: instruction information bits 7-9.
            let address_size = match (raw.instruction_info >> 7) & 7 {
                0 => 2,
                1 => 4,
                _ => 8,
            };
            exit(Exit::Io, qualification, address_size, raw.length)
        }
        31 => exit(Exit::MsrRead, 0, 0, raw.length),
        32 => exit(Exit::MsrWrite, 0, 0, raw.length),
        40 => exit(Exit::Pause, 0, 0, raw.length),
        48 => {
            let q = raw.qualification;
            let mut access = if q & 2 != 0 {
                vcpu::access::WRITE
            } else if q & 4 != 0 {
                vcpu::access::EXECUTE
            } else {
                vcpu::access::READ
            };
            if q & 0x38 != 0 {
                access |= vcpu::access::PRESENT;
            }
            exit(Exit::NestedPageFault, access, raw.guest_physical, 0)
        }
        55 => exit(Exit::Xsetbv, 0, 0, raw.length),
        other => exit(Exit::Unsupported, u64::from(other), 0, 0),
    }
}

/// Where a neutral field lives on VMX.
enum Place {
    /// A VMCS field.
    Vmcs(u32),
    /// A word of the VCPU.
    Word(u64),
}

/// The state-page words of the MSRs VMX does not switch, by field.
fn msr_word(field: u64) -> Option<u64> {
    match field {
        29..=32 => Some(layout::SYSCALL_MSRS + 8 * (field - 29)),
        33 => Some(layout::SYSCALL_MSRS + 8 * 4),
        _ => None,
    }
}

fn place(field: u64) -> Option<Place> {
    use vmcs::*;
    Some(match field {
        4 => Place::Vmcs(GUEST_RSP),
        n @ 0..=15 => Place::Word(layout::REGISTERS + 8 * n),
        16 => Place::Vmcs(GUEST_RIP),
        17 => Place::Vmcs(GUEST_RFLAGS),
        19 => Place::Word(layout::CR2),
        20 => Place::Vmcs(GUEST_CR3),
        22 => Place::Word(layout::CR8),
        23 => Place::Vmcs(GUEST_EFER),
        24 => Place::Vmcs(GUEST_DR7),
        25 => Place::Vmcs(GUEST_PAT),
        26 => Place::Vmcs(GUEST_SYSENTER_CS),
        27 => Place::Vmcs(GUEST_SYSENTER_ESP),
        28 => Place::Vmcs(GUEST_SYSENTER_EIP),
        f @ 29..=33 => Place::Word(msr_word(f)?),
        35 => Place::Vmcs(GUEST_ACTIVITY),
        36 => Place::Vmcs(ENTRY_INTERRUPTION),
        37 => Place::Vmcs(ENTRY_ERROR_CODE),
        38 => Place::Vmcs(TSC_OFFSET),
        39 => Place::Word(layout::INTERCEPTS),
        40 => Place::Vmcs(EXCEPTION_BITMAP),
        f if (vcpu::SEGMENTS..vcpu::FIELD_LIMIT).contains(&f) => {
            let (index, part) = ((f - vcpu::SEGMENTS) / 4, (f - vcpu::SEGMENTS) % 4);
            let index = index as u32;
            match part {
                0 if index < 8 => Place::Vmcs(GUEST_ES_SELECTOR + 2 * index),
                1 => Place::Vmcs(GUEST_ES_BASE + 2 * index),
                2 => Place::Vmcs(GUEST_ES_LIMIT + 2 * index),
                3 if index < 8 => Place::Vmcs(GUEST_ES_ACCESS + 2 * index),
                _ => return None,
            }
        }
        _ => return None,
    })
}

impl<M: PhysicalMemory> ObjectSpace<M> {
    fn vmcs(vcpu: PhysAddr) -> PhysAddr {
        vcpu.offset(layout::CONTROL)
    }

    fn vmcs_get(&self, vcpu: PhysAddr, field: u32) -> u64 {
        self.memory.vmcs_read(Self::vmcs(vcpu), field)
    }

    fn vmcs_set(&mut self, vcpu: PhysAddr, field: u32, value: u64) {
        self.memory.vmcs_write(Self::vmcs(vcpu), field, value);
    }

    /// The value of guest-state `field` (VMX).
    pub(super) fn vmx_read(&self, vcpu: PhysAddr, field: u64) -> u64 {
        use vmcs::*;
        let shadowed = |value: u32, mask: u32, shadow: u32| {
            let mask = self.vmcs_get(vcpu, mask);
            (self.vmcs_get(vcpu, value) & !mask) | (self.vmcs_get(vcpu, shadow) & mask)
        };
        match field {
            18 => shadowed(GUEST_CR0, CR0_MASK, CR0_SHADOW),
            21 => shadowed(GUEST_CR4, CR4_MASK, CR4_SHADOW),
            34 => u64::from(self.vmcs_get(vcpu, GUEST_INTERRUPTIBILITY) & 3 != 0),
            41 => u64::from(self.vmcs_get(vcpu, PRIMARY_CONTROLS) as u32 & control::INTERRUPT_WINDOW != 0),
            f => match place(f) {
                Some(Place::Vmcs(encoding)) => self.vmcs_get(vcpu, encoding),
                Some(Place::Word(offset)) => self.memory.read(vcpu.offset(offset)),
                None => 0,
            },
        }
    }

    /// Writes a checked `value` to guest-state `field` (VMX).
    pub(super) fn vmx_write(&mut self, vcpu: PhysAddr, field: u64, value: u64) {
        use vmcs::*;
        let config = self.virt.vmx;
        match field {
            // CR0 and CR4 hold what VMX operation requires; the guest reads
            // its own value from the shadow (SDM vol. 3C §25.6.6).
            18 => {
                self.vmcs_set(vcpu, GUEST_CR0, value | config.cr0_fixed0);
                self.vmcs_set(vcpu, CR0_SHADOW, value);
            }
            21 => {
                self.vmcs_set(vcpu, GUEST_CR4, value | config.cr4_fixed0);
                self.vmcs_set(vcpu, CR4_SHADOW, value);
            }
            40 => self.vmcs_set(vcpu, EXCEPTION_BITMAP, value | super::vcpu::FORCED_EXCEPTIONS),
            23 => {
                self.vmcs_set(vcpu, GUEST_EFER, value);
                // The IA-32e mode guest entry control must match EFER.LMA.
                let entry = config.entry | if value & (1 << 10) != 0 { control::IA32E_GUEST } else { 0 };
                self.vmcs_set(vcpu, ENTRY_CONTROLS, u64::from(entry));
            }
            34 => self.vmcs_set(vcpu, GUEST_INTERRUPTIBILITY, value),
            36 => {
                self.vmcs_set(vcpu, ENTRY_INTERRUPTION, value);
                // A software interrupt is delivered as if by INT n, two bytes long.
                self.vmcs_set(vcpu, ENTRY_INSTRUCTION_LENGTH, if (value >> 8) & 7 == 4 { 2 } else { 0 });
            }
            39 => {
                self.memory.write(vcpu.offset(layout::INTERCEPTS), value);
                self.vmx_apply_intercepts(vcpu);
            }
            41 => {
                let flags = self.memory.read(vcpu.offset(layout::FLAGS));
                let window =
                    if value == 1 { flags | layout::FLAG_WINDOW } else { flags & !layout::FLAG_WINDOW };
                self.memory.write(vcpu.offset(layout::FLAGS), window);
                self.vmx_apply_intercepts(vcpu);
            }
            f => match place(f) {
                Some(Place::Vmcs(encoding)) => self.vmcs_set(vcpu, encoding, value),
                Some(Place::Word(offset)) => self.memory.write(vcpu.offset(offset), value),
                None => {}
            },
        }
    }

    /// Sets the primary controls and the CR masks from the optional
    /// intercepts and the interrupt-window request.
    pub(super) fn vmx_apply_intercepts(&mut self, vcpu: PhysAddr) {
        use control::*;
        let config = self.virt.vmx;
        let optional = self.memory.read(vcpu.offset(layout::INTERCEPTS));
        let window = self.memory.read(vcpu.offset(layout::FLAGS)) & layout::FLAG_WINDOW != 0;
        let bit = |flag: u64, bit: u32| if optional & flag != 0 { bit } else { 0 };
        let wanted = config.primary
            | bit(intercept::HLT, HLT)
            | bit(intercept::RDTSC, RDTSC)
            | bit(intercept::INVLPG, INVLPG)
            | bit(intercept::PAUSE, PAUSE)
            | bit(intercept::CR_READS, CR3_STORE)
            | bit(intercept::CR_WRITES, CR3_LOAD)
            | if window { INTERRUPT_WINDOW } else { 0 };
        self.vmcs_set(vcpu, vmcs::PRIMARY_CONTROLS, u64::from(wanted & config.primary_allowed));
        // Writes to CR0 and CR4 exit if asked, else only those that would
        // change a bit VMX fixes.
        let (cr0_mask, cr4_mask) = if optional & intercept::CR_WRITES != 0 {
            (u64::MAX, u64::MAX)
        } else {
            (config.cr0_fixed0, config.cr4_fixed0)
        };
        self.vmcs_set(vcpu, vmcs::CR0_MASK, cr0_mask);
        self.vmcs_set(vcpu, vmcs::CR4_MASK, cr4_mask);
    }

    /// Prepares a new VCPU's VMCS: revision, clear launch state, controls,
    /// its VPID `tag` and no link pointer. The guest state is set by the caller.
    pub(super) fn vmx_init(&mut self, vcpu: PhysAddr, tag: u64) {
        let config = self.virt.vmx;
        self.memory.vmcs_init(Self::vmcs(vcpu), config.revision);
        self.vmcs_set(vcpu, vmcs::LINK_POINTER, u64::MAX);
        self.vmcs_set(vcpu, vmcs::PIN_CONTROLS, u64::from(config.pin));
        // Not saved at exits: every entry starts a whole slice again.
        if config.preemption_timer != 0 {
            self.vmcs_set(vcpu, vmcs::PREEMPTION_TIMER, u64::from(config.preemption_timer));
        }
        self.vmcs_set(vcpu, vmcs::SECONDARY_CONTROLS, u64::from(config.secondary));
        if config.secondary & control::VPID != 0 {
            self.vmcs_set(vcpu, vmcs::VPID, tag);
        }
        self.vmcs_set(vcpu, vmcs::EXIT_CONTROLS, u64::from(config.exit));
        self.vmcs_set(vcpu, vmcs::ENTRY_CONTROLS, u64::from(config.entry));
        self.vmcs_set(vcpu, vmcs::EXCEPTION_BITMAP, super::vcpu::FORCED_EXCEPTIONS);
        self.vmx_apply_intercepts(vcpu);
    }

    /// Points the VCPU's EPT at `root`: write-back paging structures, a
    /// four-level walk (SDM vol. 3C §25.6.11).
    pub(super) fn vmx_set_space(&mut self, vcpu: PhysAddr, root: PhysAddr) {
        self.vmcs_set(vcpu, vmcs::EPT_POINTER, root.get() | 6 | 3 << 3);
    }

    /// The exit that just happened (VMX); `None` for a host interrupt.
    #[inline(always)]
    pub(super) fn vmx_exit(&mut self, vcpu: PhysAddr) -> Option<NeutralExit> {
        use vmcs::*;
        let get = |this: &Self, field| this.vmcs_get(vcpu, field);
        let raw = VmxExit {
            reason: get(self, EXIT_REASON) as u32,
            qualification: get(self, QUALIFICATION),
            length: get(self, INSTRUCTION_LENGTH),
            interruption: get(self, EXIT_INTERRUPTION) as u32,
            error_code: get(self, EXIT_ERROR_CODE) as u32,
            instruction_info: get(self, INSTRUCTION_INFO) as u32,
            guest_physical: get(self, GUEST_PHYSICAL),
        };
        // An event whose delivery the exit interrupted is delivered again
        // on the next entry (SDM vol. 3C §28.2.4).
        let vectoring = get(self, VECTORING_INFO);
        if vectoring & (1 << 31) != 0 {
            let error = get(self, VECTORING_ERROR);
            self.vmcs_set(vcpu, ENTRY_INTERRUPTION, vectoring & 0x8000_0fff);
            self.vmcs_set(vcpu, ENTRY_ERROR_CODE, error);
            // Software interrupts and exceptions are delivered again as if
            // by their instruction, whose length the exit gives.
            let software = matches!((vectoring >> 8) & 7, 4..=6);
            self.vmcs_set(vcpu, ENTRY_INSTRUCTION_LENGTH, if software { raw.length } else { 0 });
        }
        classify_vmx(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_take_what_the_cpu_requires_and_refuse_what_it_lacks() {
        assert_eq!(adjust(0b0100, 0x0000_00ff_0000_0003), Ok(0b0111));
        assert_eq!(adjust(0b1_0000_0000, 0x0000_00ff_0000_0000), Err(0b1_0000_0000));
    }

    #[test]
    fn a_cpu_like_bochs_gets_a_usable_configuration() {
        // Every control allowed, none required; CR0 needs PE, NE and PG, CR4 VMXE.
        let msrs = |msr: u32| match msr {
            0x480 => 0x00da_0400_0000_002b | 1 << 55,
            0x486 => 0x8000_0021,
            0x488 => 0x2000,
            0x48c => 1 << 6 | 1 << 14 | 1 << 20 | 1 << 25 | 1 << 26,
            _ => 0xffff_ffff_0000_0000,
        };
        let config = VmxConfig::from_capabilities(|msr| if msr == 0x485 { 5 } else { msrs(msr) }, 64_000)
            .expect("usable");
        assert_eq!(config.revision, 0x2b);
        assert_ne!(config.pin & control::PREEMPTION_TIMER, 0);
        assert_eq!(config.preemption_timer, 2_000, "a slice of 64,000 TSC ticks at one count per 32");
        let no_timer = |msr: u32| if msr == 0x48d { 0x0000_00bf_0000_0000 } else { msrs(msr) };
        let config = VmxConfig::from_capabilities(no_timer, 64_000).expect("usable without the timer");
        assert_eq!((config.pin & control::PREEMPTION_TIMER, config.preemption_timer), (0, 0));
        assert_eq!(config.cr0_fixed0, 0x20, "PE and PG are the unrestricted guest's to choose");
        assert_ne!(config.primary & control::UNCONDITIONAL_IO, 0);
        assert_ne!(config.secondary & (control::EPT | control::UNRESTRICTED_GUEST), 0);
        let no_ept = |msr: u32| if msr == 0x48b { 0 } else { msrs(msr) };
        assert!(VmxConfig::from_capabilities(no_ept, 1).is_err());
        // Without all-context INVEPT a removed mapping could not be flushed.
        let single_only =
            |msr: u32| if msr == 0x48c { 1 << 6 | 1 << 14 | 1 << 20 | 1 << 25 } else { msrs(msr) };
        assert!(VmxConfig::from_capabilities(single_only, 1).is_err());
    }

    #[test]
    fn exits_translate_to_the_neutral_reasons() {
        let io = VmxExit {
            reason: 30,
            qualification: 0x03f8_0000 | 1 << 3 | 1 << 4 | 1 << 5,
            length: 2,
            instruction_info: 1 << 7,
            ..VmxExit::default()
        };
        let exit = classify_vmx(io).expect("for the VMM");
        assert_eq!(exit.reason, Exit::Io);
        assert_eq!(exit.qualification, 0x3f8 | 1 << 16 | vcpu::io::IN | vcpu::io::STRING | vcpu::io::REP);
        assert_eq!((exit.qualification2, exit.length), (4, 2));
        let violation = VmxExit {
            reason: 48,
            qualification: 0x2 | 0x8,
            guest_physical: 0xfeb0_0008,
            ..VmxExit::default()
        };
        let exit = classify_vmx(violation).expect("for the VMM");
        assert_eq!(
            (exit.qualification, exit.qualification2),
            (vcpu::access::WRITE | vcpu::access::PRESENT, 0xfeb0_0008)
        );
        assert_eq!(classify_vmx(VmxExit { reason: 1, ..VmxExit::default() }), None, "host interrupt");
        let nmi = VmxExit { reason: 0, interruption: 0x8000_0202, ..VmxExit::default() };
        assert_eq!(classify_vmx(nmi), None, "host NMI");
        let gp = VmxExit { reason: 0, interruption: 0x8000_0b0d, error_code: 0x10, ..VmxExit::default() };
        let exit = classify_vmx(gp).expect("for the VMM");
        assert_eq!(
            (exit.reason, exit.qualification, exit.qualification2),
            (Exit::Exception, 13 | 1 << 8, 0x10)
        );
        let invalid =
            classify_vmx(VmxExit { reason: 33 | 1 << 31, ..VmxExit::default() }).expect("for the VMM");
        assert_eq!((invalid.reason, invalid.qualification), (Exit::InvalidGuestState, 33));
        let cr =
            classify_vmx(VmxExit { reason: 28, qualification: 8 | 3 << 8, length: 3, ..VmxExit::default() });
        assert_eq!(cr.map(|e| (e.reason, e.qualification)), Some((Exit::CrAccess, 8 | 16 | 3 << 8)));
        // LMSW (type 3) writes CR0, with its source data in bits 16-31.
        let lmsw =
            VmxExit { reason: 28, qualification: 3 << 4 | 0x1234 << 16, length: 3, ..VmxExit::default() };
        let lmsw = classify_vmx(lmsw).expect("for the VMM");
        assert_eq!((lmsw.qualification, lmsw.qualification2), (16, 0x1234));
        let read = VmxExit { reason: 28, qualification: 3 | 1 << 4, length: 3, ..VmxExit::default() };
        assert_eq!(classify_vmx(read).map(|e| e.qualification), Some(3), "MOV from CR3 is a read");
        assert_eq!(
            classify_vmx(VmxExit { reason: 24, length: 3, ..VmxExit::default() }).map(|e| e.qualification),
            Some(vcpu::nested::VMRESUME)
        );
    }
}
