//! Virtual CPUs and guest-physical address spaces.
//!
//! A VCPU is 8 KiB: the hardware's control block in the first page (the
//! VMCB on AMD SVM, APM vol. 2 §15.5 and appendix B; the VMCS region on
//! Intel VMX, SDM vol. 3C ch. 25), the guest's general registers, its
//! XSAVE area and the kernel's bookkeeping in the second. It is bound to
//! one thread (`VcpuSetTcb`), whose `VmEnter` runs it. The guest runs in
//! that thread's GuestSpace (`VcpuSetSpace` puts a copy of its capability
//! in the TCB, as seL4 keeps a thread's EPT root), a root table that page
//! tables and frames are mapped into as into a PML4 (see `vspace`): one
//! description of a mapping gives a nested-paging entry on SVM and an EPT
//! entry on VMX.
//!
//! The VMM sees only vendor-neutral field ids and exit reasons
//! (`strata_abi::vcpu`). This module translates them to and from the VMCB,
//! which is plain memory, so it runs on the host like the rest of the
//! object layer; the instructions that enter the guest are in `arch`.

use strata_abi::error::InvocationError;
use strata_abi::invocation::Label;
use strata_abi::vcpu::{self, Exit, Field};

use super::{Capability, ObjectSpace, PhysicalMemory, Slot, tcb};
use crate::addr::PhysAddr;

/// Entries in [`VirtConfig::tag_owner`]: VCPUs are tagged 1 to 63 at most.
pub const TAG_SLOTS: usize = 64;
/// `VmEnter`'s reply's message info word: label 0, four words (the SVM
/// fastpath writes it too).
pub const EXIT_REPLY_INFO: u64 = 4;

/// Where the register block is in the IPC buffer: after everything a message uses.
pub(crate) const REGISTER_BLOCK_OFFSET: u64 =
    core::mem::offset_of!(strata_abi::bootinfo::IpcBuffer, vcpu) as u64;

/// Offsets within a VCPU.
pub mod layout {
    /// The VMCB or VMCS (4 KiB).
    pub const CONTROL: u64 = 0x0000;
    /// The general registers the hardware does not keep, by encoding
    /// (16 words; on SVM the RAX and RSP words are unused, the VMCB has them).
    pub const REGISTERS: u64 = 0x1000;
    /// The bound thread's TCB, or 0.
    pub const TCB: u64 = 0x1080;
    /// The root table of the GuestSpace the VCPU last ran in, or 0.
    pub const SPACE: u64 = 0x1088;
    /// That GuestSpace's ASID.
    pub const SPACE_ASID: u64 = 0x1090;
    /// The optional intercepts (`vcpu::intercept`) in force.
    pub const INTERCEPTS: u64 = 0x10a0;
    /// [`FLAG_LAUNCHED`], [`FLAG_HOST_STATE`], [`FLAG_WINDOW`].
    pub const FLAGS: u64 = 0x10a8;
    /// VMX: the guest's CR2 (the run code uses this offset).
    pub const CR2: u64 = 0x10b0;
    /// VMX: the guest's CR8.
    pub const CR8: u64 = 0x10b8;
    /// VMX: the guest's STAR, LSTAR, CSTAR, SFMASK and KernelGSbase.
    pub const SYSCALL_MSRS: u64 = 0x10c0;
    /// The guest's DR0–DR3, and DR6 on VMX: neither the VMCB nor the VMCS
    /// holds them, so they stay in the CPU while this VCPU is the last to
    /// have run, and are saved here when another VCPU runs.
    pub const DEBUG: u64 = 0x10e8;
    /// The guest's XCR0, which VM entry and exit do not switch: the kernel
    /// loads it around the guest's run when it differs from the host's (the
    /// guest's FPU state is saved under the host's, every component).
    pub const XCR0: u64 = 0x1110;
    /// The hardware tag of the guest's cached translations: its ASID on
    /// SVM, its VPID on VMX (1 to [`VirtConfig::tags`](super::VirtConfig)).
    pub const TAG: u64 = 0x1118;
    /// VMX: VMLAUNCH succeeded; VMRESUME from now on.
    pub const FLAG_LAUNCHED: u64 = 1 << 0;
    /// VMX: the VMCS has this CPU's host state.
    pub const FLAG_HOST_STATE: u64 = 1 << 1;
    /// VMX: an interrupt window was asked for.
    pub const FLAG_WINDOW: u64 = 1 << 2;
    /// The guest's XSAVE area (64-byte aligned, to the end of the VCPU).
    pub const FPU: u64 = 0x1200;
}

/// Which hardware virtualization the kernel drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// None: VCPUs and GuestSpaces cannot be made.
    None,
    /// AMD SVM with nested paging.
    Svm,
    /// Intel VMX with EPT.
    Vmx,
}

/// What the kernel set up for guests at boot.
#[derive(Debug, Clone, Copy)]
pub struct VirtConfig {
    /// The backend.
    pub backend: Backend,
    /// SVM: the I/O permission map (12 KiB, all ones: every port exits).
    pub io_permissions: PhysAddr,
    /// SVM: the MSR permission map (8 KiB, all ones: every MSR exits).
    pub msr_permissions: PhysAddr,
    /// The host's XCR0: the state components a guest may enable.
    pub xcr0: u64,
    /// The VCPU that last ran on this CPU (the debug registers hold its
    /// values), or 0. A plain word, which the entry path compares in one
    /// instruction.
    pub last_run: PhysAddr,
    /// How many hardware tags (SVM ASIDs, VMX VPIDs) VCPUs take in turn,
    /// 1 to 63: the CPU's ASIDs less ASID 0 (the host's); 63 with VPIDs;
    /// 1 on VMX without them, where every entry and exit flushes anyway
    /// (SDM vol. 3C §29.4.3.3).
    pub tags: u64,
    /// VCPUs made so far: the next one is tagged `1 + tags_given % tags`.
    pub tags_given: u64,
    /// Per tag, the VCPU whose guest the translations cached under it on
    /// this CPU belong to, or 0: none, or to be flushed (`disown_tag`; a
    /// guest mapping removed or changed clears them all).
    pub tag_owner: [PhysAddr; TAG_SLOTS],
    /// SVM: where VMSAVE keeps the host's state during a run (4 KiB; this
    /// CPU's, like `last_run` and `tag_owner`: they become per-CPU with SMP).
    pub host_state: PhysAddr,
    /// VMX: the controls every VMCS starts with.
    pub vmx: super::vmx::VmxConfig,
}

impl VirtConfig {
    /// No virtualization.
    pub const fn none() -> Self {
        Self {
            backend: Backend::None,
            io_permissions: PhysAddr(0),
            msr_permissions: PhysAddr(0),
            xcr0: 0b111,
            last_run: PhysAddr(0),
            tags: 1,
            tags_given: 0,
            tag_owner: [PhysAddr(0); TAG_SLOTS],
            host_state: PhysAddr(0),
            vmx: super::vmx::VmxConfig {
                revision: 0,
                pin: 0,
                primary: 0,
                primary_allowed: 0,
                secondary: 0,
                exit: 0,
                entry: 0,
                cr0_fixed0: 0,
                cr4_fixed0: 0,
                preemption_timer: 0,
            },
        }
    }
}

/// A checked VCPU invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuInvocation {
    /// Bind `vcpu` to `tcb` (each loses any earlier partner).
    SetTcb {
        /// The VCPU.
        vcpu: PhysAddr,
        /// The thread.
        tcb: PhysAddr,
    },
    /// Give `tcb`, the thread `vcpu` is bound to, a copy of the GuestSpace
    /// capability in `space`.
    SetSpace {
        /// The bound thread.
        tcb: PhysAddr,
        /// The GuestSpace capability's slot.
        space: Slot,
    },
    /// Reply with the values of `count` fields.
    Read {
        /// The VCPU.
        vcpu: PhysAddr,
        /// Field ids (checked).
        fields: [u64; 4],
        /// How many.
        count: usize,
    },
    /// Write `count` (field, value) pairs, all checked.
    Write {
        /// The VCPU.
        vcpu: PhysAddr,
        /// The pairs.
        pairs: [(u64, u64); 4],
        /// How many.
        count: usize,
    },
}

/// The SVM VMCB: offsets (AMD APM vol. 2, appendix B, tables B-1 and B-2).
pub mod vmcb {
    /// Intercepts of CR reads (bits 0–15) and writes (16–31); DR
    /// intercepts in the high half.
    pub const INTERCEPT_CR: u64 = 0x000;
    /// Intercepted exception vectors (bits 0–31), and intercept vector 3
    /// (INTR, NMI, ... SHUTDOWN) in bits 32–63.
    pub const INTERCEPT_EXCEPTIONS: u64 = 0x008;
    /// Intercept vector 4 (VMRUN, VMMCALL, ... XSETBV) in bits 0–31.
    pub const INTERCEPT_MISC2: u64 = 0x010;
    /// IOPM_BASE_PA.
    pub const IOPM_BASE: u64 = 0x040;
    /// MSRPM_BASE_PA.
    pub const MSRPM_BASE: u64 = 0x048;
    /// TSC_OFFSET.
    pub const TSC_OFFSET: u64 = 0x050;
    /// Guest ASID (bits 0–31) and TLB_CONTROL (32–39).
    pub const ASID_TLB: u64 = 0x058;
    /// V_TPR 0–3, V_IRQ 8, V_INTR_PRIO 16–19, V_IGN_TPR 20, V_INTR_MASKING 24; V_INTR_VECTOR 32–39.
    pub const INTERRUPT_CONTROL: u64 = 0x060;
    /// Bit 0: interrupt shadow.
    pub const INTERRUPT_STATE: u64 = 0x068;
    /// EXITCODE.
    pub const EXIT_CODE: u64 = 0x070;
    /// EXITINFO1.
    pub const EXIT_INFO1: u64 = 0x078;
    /// EXITINFO2.
    pub const EXIT_INFO2: u64 = 0x080;
    /// EXITINTINFO (bits 0–31) and its error code (32–63).
    pub const EXIT_INTERRUPT_INFO: u64 = 0x088;
    /// Bit 0: nested paging.
    pub const NESTED_CONTROL: u64 = 0x090;
    /// EVENTINJ (bits 0–31) and its error code (32–63).
    pub const EVENT_INJECTION: u64 = 0x0a8;
    /// N_CR3.
    pub const NESTED_CR3: u64 = 0x0b0;
    /// VMCB clean bits.
    pub const CLEAN: u64 = 0x0c0;
    /// nRIP (with the NRIP-save feature).
    pub const NEXT_RIP: u64 = 0x0c8;
    /// Segment registers: 16 bytes each, in the order ES CS SS DS FS GS GDTR LDTR IDTR TR.
    pub const SEGMENTS: u64 = 0x400;
    /// CPL (byte 3 of this word).
    pub const CPL_WORD: u64 = 0x4c8;
    /// EFER.
    pub const EFER: u64 = 0x4d0;
    /// CR4.
    pub const CR4: u64 = 0x548;
    /// CR3.
    pub const CR3: u64 = 0x550;
    /// CR0.
    pub const CR0: u64 = 0x558;
    /// DR7.
    pub const DR7: u64 = 0x560;
    /// DR6.
    pub const DR6: u64 = 0x568;
    /// RFLAGS.
    pub const RFLAGS: u64 = 0x570;
    /// RIP.
    pub const RIP: u64 = 0x578;
    /// RSP.
    pub const RSP: u64 = 0x5d8;
    /// RAX.
    pub const RAX: u64 = 0x5f8;
    /// STAR, LSTAR, CSTAR, SFMASK, KernelGsBase, SYSENTER_CS/ESP/EIP, CR2: consecutive words.
    pub const STAR: u64 = 0x600;
    /// CR2.
    pub const CR2: u64 = 0x640;
    /// G_PAT.
    pub const PAT: u64 = 0x668;

    /// Intercept vector 3 bits the kernel always sets: INTR, NMI, SMI,
    /// INIT, RDPMC, CPUID, INVD, INVLPGA, IOIO_PROT, MSR_PROT, FERR_FREEZE,
    /// SHUTDOWN.
    pub const FORCED_MISC1: u64 = 1 << 0
        | 1 << 1
        | 1 << 2
        | 1 << 3
        | 1 << 15
        | 1 << 18
        | 1 << 22
        | 1 << 26
        | 1 << 27
        | 1 << 28
        | 1 << 30
        | 1 << 31;
    /// Intercept vector 4 bits the kernel always sets: VMRUN, VMMCALL,
    /// VMLOAD, VMSAVE, STGI, CLGI, SKINIT, MONITOR, MWAIT (both forms), XSETBV.
    pub const FORCED_MISC2: u64 = 0x7f | 0x7 << 10 | 1 << 13;
    /// V_INTR_MASKING: the guest's RFLAGS.IF masks only virtual interrupts;
    /// host interrupts always exit.
    pub const V_INTR_MASKING: u64 = 1 << 24;
    /// V_IRQ: a virtual interrupt is pending (used for the interrupt window).
    pub const V_IRQ: u64 = 1 << 8;
    /// V_IGN_TPR.
    pub const V_IGN_TPR: u64 = 1 << 20;
    /// Intercept vector 3, VINTR.
    pub const INTERCEPT_VINTR: u64 = 1 << 4;
    /// EFER.SVME, which VMRUN requires of the guest (hidden from the VMM).
    pub const EFER_SVME: u64 = 1 << 12;

    /// Exit codes (APM vol. 2, appendix C).
    pub mod exit {
        /// First CR read; CR n is this plus n, and writes are 16 higher.
        pub const CR_READ: u64 = 0x00;
        /// First exception; vector n is this plus n.
        pub const EXCEPTION: u64 = 0x40;
        /// A physical interrupt.
        pub const INTR: u64 = 0x60;
        /// A non-maskable interrupt.
        pub const NMI: u64 = 0x61;
        /// A system-management interrupt.
        pub const SMI: u64 = 0x62;
        /// INIT.
        pub const INIT: u64 = 0x63;
        /// The virtual interrupt was taken (interrupt window).
        pub const VINTR: u64 = 0x64;
        /// RDTSC.
        pub const RDTSC: u64 = 0x6e;
        /// CPUID.
        pub const CPUID: u64 = 0x72;
        /// PAUSE.
        pub const PAUSE: u64 = 0x77;
        /// HLT.
        pub const HLT: u64 = 0x78;
        /// INVLPG.
        pub const INVLPG: u64 = 0x79;
        /// INVLPGA.
        pub const INVLPGA: u64 = 0x7a;
        /// IN, OUT, INS, OUTS.
        pub const IOIO: u64 = 0x7b;
        /// RDMSR or WRMSR.
        pub const MSR: u64 = 0x7c;
        /// Triple fault.
        pub const SHUTDOWN: u64 = 0x7f;
        /// VMRUN.
        pub const VMRUN: u64 = 0x80;
        /// VMMCALL.
        pub const VMMCALL: u64 = 0x81;
        /// VMLOAD.
        pub const VMLOAD: u64 = 0x82;
        /// VMSAVE.
        pub const VMSAVE: u64 = 0x83;
        /// STGI.
        pub const STGI: u64 = 0x84;
        /// CLGI.
        pub const CLGI: u64 = 0x85;
        /// SKINIT.
        pub const SKINIT: u64 = 0x86;
        /// RDTSCP.
        pub const RDTSCP: u64 = 0x87;
        /// XSETBV.
        pub const XSETBV: u64 = 0x8d;
        /// Nested page fault.
        pub const NPF: u64 = 0x400;
        /// VMRUN refused the guest state.
        pub const INVALID: u64 = u64::MAX;
    }
}

/// A VM exit as the hardware reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawExit {
    /// The vendor's exit code.
    pub code: u64,
    /// First qualification (SVM EXITINFO1).
    pub info1: u64,
    /// Second qualification (SVM EXITINFO2).
    pub info2: u64,
    /// The guest's RIP at the exit.
    pub rip: u64,
    /// The next RIP, if the hardware saved it (0 otherwise).
    pub next_rip: u64,
}

/// A VM exit in vendor-neutral terms: `None` for exits the kernel handles
/// itself (host interrupts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeutralExit {
    /// The reason.
    pub reason: Exit,
    /// Reply word 1.
    pub qualification: u64,
    /// Reply word 2.
    pub qualification2: u64,
    /// Reply word 3: the instruction length (0 if unknown), or for a
    /// page-fault exception the faulting address.
    pub length: u64,
}

/// Vectors for which the CPU pushes an error code.
const fn has_error_code(vector: u64) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

/// Classifies an SVM exit (APM vol. 2 §15.7–15.12, appendix C). Lengths
/// come from the next RIP when the CPU saved one, else from the fixed
/// encodings of the instructions concerned; the VMM decodes the rest.
#[inline(always)]
pub fn classify_svm(raw: RawExit) -> Option<NeutralExit> {
    use vmcb::exit;
    let exit = |reason, qualification, qualification2, length| {
        Some(NeutralExit { reason, qualification, qualification2, length })
    };
    let length = |fixed: u64| {
        if raw.next_rip > raw.rip && raw.next_rip - raw.rip <= 15 { raw.next_rip - raw.rip } else { fixed }
    };
    let nested = |instruction| exit(Exit::NestedVirtualization, instruction, 0, length(3));
    match raw.code {
        exit::INTR | exit::NMI | exit::SMI => None,
        exit::CPUID => exit(Exit::Cpuid, 0, 0, length(2)),
        exit::IOIO => {
            let info = raw.info1;
            let size = (info >> 4) & 0x7;
            let mut qualification = (info >> 16) & 0xffff | size << vcpu::io::SIZE_SHIFT;
            if info & 1 != 0 {
                qualification |= vcpu::io::IN;
            }
            if info & 1 << 2 != 0 {
                qualification |= vcpu::io::STRING;
            }
            if info & 1 << 3 != 0 {
                qualification |= vcpu::io::REP;
            }
            // EXITINFO2 is the next RIP for I/O exits, with or without NRIP save.
            let address_size = match (info >> 7) & 0x7 {
                1 => 2,
                2 => 4,
                _ => 8,
            };
            exit(Exit::Io, qualification, address_size, raw.info2.wrapping_sub(raw.rip) & 0xf)
        }
        exit::MSR => {
            let reason = if raw.info1 & 1 == 0 { Exit::MsrRead } else { Exit::MsrWrite };
            exit(reason, 0, 0, length(2))
        }
        exit::HLT => exit(Exit::Hlt, 0, 0, length(1)),
        exit::VMMCALL => exit(Exit::Hypercall, 0, 0, length(3)),
        exit::NPF => {
            let code = raw.info1;
            let mut access = if code & 1 << 1 != 0 {
                vcpu::access::WRITE
            } else if code & 1 << 4 != 0 {
                vcpu::access::EXECUTE
            } else {
                vcpu::access::READ
            };
            if code & 1 != 0 {
                access |= vcpu::access::PRESENT;
            }
            exit(Exit::NestedPageFault, access, raw.info2, 0)
        }
        code @ exit::CR_READ..=0x1f => exit(Exit::CrAccess, code - exit::CR_READ, 0, 0),
        code @ exit::EXCEPTION..=0x5f => {
            let vector = code - exit::EXCEPTION;
            let error = if has_error_code(vector) { 1 << 8 } else { 0 };
            let address = if vector == 14 { raw.info2 } else { 0 };
            exit(Exit::Exception, vector | error, raw.info1, address)
        }
        exit::VINTR => exit(Exit::InterruptWindow, 0, 0, 0),
        exit::INIT => exit(Exit::Init, 0, 0, 0),
        exit::SHUTDOWN => exit(Exit::Shutdown, 0, 0, 0),
        exit::VMRUN => nested(vcpu::nested::VMRUN),
        exit::VMLOAD => nested(vcpu::nested::VMLOAD),
        exit::VMSAVE => nested(vcpu::nested::VMSAVE),
        exit::STGI => nested(vcpu::nested::STGI),
        exit::CLGI => nested(vcpu::nested::CLGI),
        exit::SKINIT => nested(vcpu::nested::SKINIT),
        exit::INVLPGA => nested(vcpu::nested::INVLPGA),
        exit::XSETBV => exit(Exit::Xsetbv, 0, 0, length(3)),
        exit::RDTSC => exit(Exit::Rdtsc, 0, 0, length(2)),
        exit::RDTSCP => exit(Exit::Rdtsc, 0, 0, length(3)),
        exit::PAUSE => exit(Exit::Pause, 0, 0, length(2)),
        exit::INVLPG => exit(Exit::Invlpg, raw.info1, 0, 0),
        // VMEXIT_INVALID is -1; QEMU stores it as a 32-bit -1.
        exit::INVALID | 0xffff_ffff => exit(Exit::InvalidGuestState, u64::MAX, 0, 0),
        other => exit(Exit::Unsupported, other, 0, 0),
    }
}

/// The VMCB segment slot of a neutral segment number (ES CS SS DS FS GS LDTR TR GDTR IDTR).
const SVM_SEGMENT_SLOT: [u64; 10] = [0, 1, 2, 3, 4, 5, 7, 9, 6, 8];

/// Exceptions that always exit, on both vendors: #DB (1) and #AC (17),
/// which a guest could otherwise raise endlessly while delivering them,
/// never letting the CPU reach an instruction boundary the host can
/// interrupt (CVE-2015-8104, CVE-2015-5307). The VMM reflects them.
pub const FORCED_EXCEPTIONS: u64 = 1 << 1 | 1 << 17;

/// EFER bits a guest may have: SCE, LME, LMA, NXE, LMSLE, FFXSR, TCE.
const EFER_ALLOWED: u64 = 1 | 1 << 8 | 1 << 10 | 1 << 11 | 1 << 13 | 1 << 14 | 1 << 15;
/// RFLAGS bits that exist (CF..ID); bit 1 is always set.
pub(crate) const RFLAGS_DEFINED: u64 = 0x003f_7fd5;

/// Whether `field` names guest state: the fields up to
/// `InterruptWindow`, and the segment parts that exist (descriptor tables
/// have no selector or attributes).
fn field_exists(field: u64) -> bool {
    match field.checked_sub(vcpu::SEGMENTS) {
        None => field <= Field::Xcr0 as u64,
        Some(segment) => field < vcpu::FIELD_LIMIT && !(segment / 4 >= 8 && matches!(segment % 4, 0 | 3)),
    }
}

/// Whether `address` is canonical for 48-bit linear addresses.
const fn canonical(address: u64) -> bool {
    let top = address >> 47;
    top == 0 || top == 0x1ffff
}

/// Where a field lives, for SVM.
#[derive(Debug, Clone, Copy)]
enum Place {
    /// A whole word at this offset in the VCPU.
    Word(u64),
    /// `width` bits at `shift` of the word at this offset.
    Bits(u64, u32, u32),
}

impl Place {
    fn mask(self) -> u64 {
        match self {
            Self::Word(_) => u64::MAX,
            Self::Bits(_, _, 64) => u64::MAX,
            Self::Bits(_, _, width) => (1 << width) - 1,
        }
    }
}

impl<M: PhysicalMemory> ObjectSpace<M> {
    fn vcpu_word(&self, vcpu: PhysAddr, offset: u64) -> u64 {
        self.memory.read(vcpu.offset(offset))
    }

    fn set_vcpu_word(&mut self, vcpu: PhysAddr, offset: u64, value: u64) {
        self.memory.write(vcpu.offset(offset), value);
    }

    fn read_place(&self, vcpu: PhysAddr, place: Place) -> u64 {
        match place {
            Place::Word(offset) => self.vcpu_word(vcpu, offset),
            Place::Bits(offset, shift, _) => (self.vcpu_word(vcpu, offset) >> shift) & place.mask(),
        }
    }

    fn write_place(&mut self, vcpu: PhysAddr, place: Place, value: u64) {
        match place {
            Place::Word(offset) => self.set_vcpu_word(vcpu, offset, value),
            Place::Bits(offset, shift, _) => {
                let old = self.vcpu_word(vcpu, offset);
                let mask = place.mask() << shift;
                self.set_vcpu_word(vcpu, offset, (old & !mask) | ((value << shift) & mask));
            }
        }
    }

    /// Where an SVM field is kept, if it is a plain value.
    fn svm_place(field: u64) -> Option<Place> {
        use vmcb::*;
        let control = |offset| Place::Word(layout::CONTROL + offset);
        Some(match field {
            0 => control(RAX),
            4 => control(RSP),
            n @ 0..=15 => Place::Word(layout::REGISTERS + 8 * n),
            16 => control(RIP),
            17 => control(RFLAGS),
            18 => control(CR0),
            19 => control(CR2),
            20 => control(CR3),
            21 => control(CR4),
            22 => Place::Bits(layout::CONTROL + INTERRUPT_CONTROL, 0, 4),
            23 => control(EFER),
            24 => control(DR7),
            25 => control(PAT),
            26 => control(STAR + 0x28),
            27 => control(STAR + 0x30),
            28 => control(STAR + 0x38),
            29 => control(STAR),
            30 => control(STAR + 0x08),
            31 => control(STAR + 0x10),
            32 => control(STAR + 0x18),
            33 => control(STAR + 0x20),
            34 => Place::Bits(layout::CONTROL + INTERRUPT_STATE, 0, 1),
            36 => Place::Bits(layout::CONTROL + EVENT_INJECTION, 0, 32),
            37 => Place::Bits(layout::CONTROL + EVENT_INJECTION, 32, 32),
            38 => control(TSC_OFFSET),
            39 => Place::Word(layout::INTERCEPTS),
            40 => Place::Bits(layout::CONTROL + INTERCEPT_EXCEPTIONS, 0, 32),
            f if (vcpu::SEGMENTS..vcpu::FIELD_LIMIT).contains(&f) => {
                let index = (f - vcpu::SEGMENTS) / 4;
                let base = layout::CONTROL + SEGMENTS + 16 * SVM_SEGMENT_SLOT[index as usize];
                match (f - vcpu::SEGMENTS) % 4 {
                    0 => Place::Bits(base, 0, 16),
                    1 => Place::Word(base + 8),
                    2 => Place::Bits(base, 32, 32),
                    _ => Place::Bits(base, 16, 16),
                }
            }
            _ => return None,
        })
    }

    /// The value of guest-state `field`.
    pub fn vcpu_read(&self, vcpu: PhysAddr, field: u64) -> u64 {
        if field == Field::Xcr0 as u64 {
            return self.vcpu_word(vcpu, layout::XCR0);
        }
        match self.virt.backend {
            Backend::Vmx => self.vmx_read(vcpu, field),
            _ => self.svm_read(vcpu, field),
        }
    }

    /// Writes a checked `value` to guest-state `field`.
    fn vcpu_write(&mut self, vcpu: PhysAddr, field: u64, value: u64) {
        // RFLAGS bit 1 always reads as 1 (SDM vol. 1 §3.4.3).
        let value = if field == Field::Rflags as u64 { value | 2 } else { value };
        if field == Field::Xcr0 as u64 {
            return self.set_vcpu_word(vcpu, layout::XCR0, value);
        }
        match self.virt.backend {
            Backend::Vmx => self.vmx_write(vcpu, field, value),
            _ => self.svm_write(vcpu, field, value),
        }
    }

    /// The value of guest-state `field` (SVM).
    fn svm_read(&self, vcpu: PhysAddr, field: u64) -> u64 {
        let control = |offset| self.vcpu_word(vcpu, layout::CONTROL + offset);
        match field {
            f if f == Field::Efer as u64 => control(vmcb::EFER) & !vmcb::EFER_SVME,
            f if f == Field::ActivityState as u64 => 0,
            f if f == Field::InterruptWindow as u64 => {
                u64::from(control(vmcb::INTERCEPT_EXCEPTIONS) >> 32 & vmcb::INTERCEPT_VINTR != 0)
            }
            f if f >= vcpu::SEGMENTS && (f - vcpu::SEGMENTS) % 4 == 3 => vcpu::attributes_from_svm(
                self.read_place(vcpu, Self::svm_place(f).unwrap_or(Place::Word(0))) as u16,
            ),
            f => Self::svm_place(f).map_or(0, |place| self.read_place(vcpu, place)),
        }
    }

    /// Checks a write of `value` to `field`.
    fn check_vcpu_write(&self, field: u64, value: u64) -> Result<(), InvocationError> {
        let bad = Err(InvocationError::InvalidArgument { index: 1 });
        let segment = field.checked_sub(vcpu::SEGMENTS).map(|f| (f / 4, f % 4));
        let ok = match field {
            0..=16 | 19 | 20 | 24 | 25 | 27..=31 | 33 | 38 => {
                // Addresses the CPU loads as such must be canonical.
                !matches!(field, 16 | 27 | 28 | 30 | 31 | 33) || canonical(value)
            }
            // SYSENTER_CS and SFMASK have reserved upper halves (on VMX the
            // kernel loads SFMASK itself: a reserved bit would fault).
            26 | 32 => value >> 32 == 0,
            17 => value & !RFLAGS_DEFINED == 0,
            18 | 21 => value >> 32 == 0,
            22 => value < 16,
            23 => value & !EFER_ALLOWED == 0,
            34 | 41 => value <= 1,
            35 => value == 0,
            36 => {
                let kind = (value >> 8) & 7;
                value >> 32 == 0 && value & 0x7fff_f000 == 0 && matches!(kind, 0 | 2 | 3 | 4)
            }
            37 | 40 => value >> 32 == 0,
            39 => value & !vcpu::intercept::ALL == 0,
            // XSETBV's rules (SDM vol. 2B, XSETBV): x87 always, AVX only
            // with SSE, and only components the host enabled.
            42 => value & 1 == 1 && value & 0b110 != 0b100 && value & !self.virt.xcr0 == 0,
            _ => match segment {
                Some((_, 0)) => value >> 16 == 0,
                Some((index, 1)) if index < 4 => value >> 32 == 0,
                Some((index, 1)) if index < 10 => canonical(value),
                Some((index, 2)) if index < 10 => value >> 32 == 0,
                Some((index, 3)) if index < 8 => value & !0x1_f0ff == 0,
                _ => return Err(InvocationError::InvalidArgument { index: 0 }),
            },
        };
        if ok { Ok(()) } else { bad }
    }

    /// Writes a checked `value` to guest-state `field` (SVM).
    fn svm_write(&mut self, vcpu: PhysAddr, field: u64, value: u64) {
        let control = |offset| layout::CONTROL + offset;
        match field {
            f if f == Field::Efer as u64 => {
                self.set_vcpu_word(vcpu, control(vmcb::EFER), value | vmcb::EFER_SVME);
            }
            f if f == Field::ActivityState as u64 => {}
            f if f == Field::Intercepts as u64 => {
                self.set_vcpu_word(vcpu, layout::INTERCEPTS, value);
                self.apply_svm_intercepts(vcpu);
            }
            f if f == Field::ExceptionIntercepts as u64 => {
                let place = Place::Bits(control(vmcb::INTERCEPT_EXCEPTIONS), 0, 32);
                self.write_place(vcpu, place, value | FORCED_EXCEPTIONS);
            }
            f if f == Field::InterruptWindow as u64 => {
                let place = Place::Bits(control(vmcb::INTERRUPT_CONTROL), 0, 32);
                let interrupt = self.read_place(vcpu, place) & !(vmcb::V_IRQ | vmcb::V_IGN_TPR);
                let window = if value == 1 { vmcb::V_IRQ | vmcb::V_IGN_TPR } else { 0 };
                self.write_place(vcpu, place, interrupt | window);
                self.apply_svm_intercepts(vcpu);
            }
            f if f >= vcpu::SEGMENTS && (f - vcpu::SEGMENTS) % 4 == 3 => {
                if let Some(place) = Self::svm_place(f) {
                    self.write_place(vcpu, place, u64::from(vcpu::attributes_to_svm(value)));
                }
                // The CPL is SS.DPL (APM vol. 2 §15.5.1).
                if f == vcpu::segment_field(vcpu::Segment::Ss, vcpu::SegmentPart::Attributes) {
                    self.write_place(vcpu, Place::Bits(control(vmcb::CPL_WORD), 24, 8), (value >> 5) & 3);
                }
            }
            f => {
                if let Some(place) = Self::svm_place(f) {
                    self.write_place(vcpu, place, value);
                }
            }
        }
    }

    /// Rebuilds the VMCB intercept words from the forced set, the optional
    /// intercepts and the interrupt-window request.
    fn apply_svm_intercepts(&mut self, vcpu: PhysAddr) {
        use strata_abi::vcpu::intercept;
        let optional = self.vcpu_word(vcpu, layout::INTERCEPTS);
        let window = self.vcpu_word(vcpu, layout::CONTROL + vmcb::INTERRUPT_CONTROL) & vmcb::V_IRQ != 0;
        let bit = |flag: u64, bit: u64| if optional & flag != 0 { 1 << bit } else { 0 };
        let mut misc1 = vmcb::FORCED_MISC1
            | bit(intercept::HLT, 24)
            | bit(intercept::RDTSC, 14)
            | bit(intercept::INVLPG, 25)
            | bit(intercept::PAUSE, 23);
        if window {
            misc1 |= vmcb::INTERCEPT_VINTR;
        }
        let misc2 = vmcb::FORCED_MISC2 | bit(intercept::RDTSC, 7);
        // Reads of CR3 (bit 3); writes of CR0, CR3 and CR4 (bits 16, 19, 20).
        let cr = if optional & intercept::CR_READS != 0 { 1 << 3 } else { 0 }
            | if optional & intercept::CR_WRITES != 0 { (1 << 0 | 1 << 3 | 1 << 4) << 16 } else { 0 };
        let exceptions = self.vcpu_word(vcpu, layout::CONTROL + vmcb::INTERCEPT_EXCEPTIONS) & 0xffff_ffff
            | FORCED_EXCEPTIONS;
        self.set_vcpu_word(vcpu, layout::CONTROL + vmcb::INTERCEPT_CR, cr);
        self.set_vcpu_word(vcpu, layout::CONTROL + vmcb::INTERCEPT_EXCEPTIONS, misc1 << 32 | exceptions);
        self.set_vcpu_word(vcpu, layout::CONTROL + vmcb::INTERCEPT_MISC2, misc2);
    }

    /// Prepares a new VCPU (memory already zero): the guest in the state
    /// of a processor after RESET (SDM vol. 3A §10.1.1; APM vol. 2 §14.1.3),
    /// every forced intercept on, nested paging on, FPU at its reset values.
    pub(super) fn init_vcpu(&mut self, vcpu: PhysAddr) {
        use vmcb::*;
        let control = |offset| layout::CONTROL + offset;
        // VCPUs take the tags in turn. Two may share one; `vm_prepare`
        // flushes it when its translations are another VCPU's.
        let tag = 1 + self.virt.tags_given % self.virt.tags;
        self.virt.tags_given += 1;
        self.set_vcpu_word(vcpu, layout::TAG, tag);
        if self.virt.backend == Backend::Vmx {
            self.vmx_init(vcpu, tag);
        } else {
            self.set_vcpu_word(vcpu, control(IOPM_BASE), self.virt.io_permissions.get());
            self.set_vcpu_word(vcpu, control(MSRPM_BASE), self.virt.msr_permissions.get());
            self.set_vcpu_word(vcpu, control(ASID_TLB), tag);
            self.set_vcpu_word(vcpu, control(INTERRUPT_CONTROL), V_INTR_MASKING);
            self.set_vcpu_word(vcpu, control(NESTED_CONTROL), 1);
            // The clean bits stay 0 (the memory is zeroed): every VMRUN
            // loads every field, so no field write needs to clear one.
            self.apply_svm_intercepts(vcpu);
            self.set_vcpu_word(vcpu, control(DR6), 0xffff_0ff0);
        }
        let segment = |this: &mut Self, segment: vcpu::Segment, selector: u64, base: u64, attributes: u64| {
            let field = |part| vcpu::segment_field(segment, part);
            this.vcpu_write(vcpu, field(vcpu::SegmentPart::Selector), selector);
            this.vcpu_write(vcpu, field(vcpu::SegmentPart::Base), base);
            this.vcpu_write(vcpu, field(vcpu::SegmentPart::Limit), 0xffff);
            if attributes != 0 {
                this.vcpu_write(vcpu, field(vcpu::SegmentPart::Attributes), attributes);
            }
        };
        use vcpu::Segment::*;
        segment(self, Cs, 0xf000, 0xffff_0000, 0x9b);
        for data in [Es, Ss, Ds, Fs, Gs] {
            segment(self, data, 0, 0, 0x93);
        }
        segment(self, Ldtr, 0, 0, 0x82);
        segment(self, Tr, 0, 0, 0x8b);
        segment(self, Gdtr, 0, 0, 0);
        segment(self, Idtr, 0, 0, 0);
        self.vcpu_write(vcpu, Field::Rip as u64, 0xfff0);
        self.vcpu_write(vcpu, Field::Rflags as u64, 2);
        self.vcpu_write(vcpu, Field::Cr0 as u64, 0x6000_0010);
        // Through the field, so that VMX gets the CR4 bits it fixes.
        self.vcpu_write(vcpu, Field::Cr4 as u64, 0);
        self.vcpu_write(vcpu, Field::Efer as u64, 0);
        self.vcpu_write(vcpu, Field::Dr7 as u64, 0x400);
        self.vcpu_write(vcpu, Field::Xcr0 as u64, 1);
        self.vcpu_write(vcpu, Field::Pat as u64, 0x0007_0406_0007_0406);
        // Reset state: FCW 0x37f, MXCSR 0x1f80 with its mask; the zero XSAVE
        // header marks every component as in its initial state.
        self.set_vcpu_word(vcpu, layout::FPU, 0x037f);
        self.set_vcpu_word(vcpu, layout::FPU + 24, 0x0000_ffff_0000_1f80);
    }

    /// The VCPU bound to `tcb`, if any.
    pub fn bound_vcpu(&self, tcb: PhysAddr) -> Option<PhysAddr> {
        match self.memory.read(tcb.offset(tcb::layout::VCPU)) {
            0 => None,
            vcpu => Some(PhysAddr(vcpu)),
        }
    }

    /// Undoes `vcpu`'s binding to its thread, if it has one.
    pub(super) fn unbind_vcpu(&mut self, vcpu: PhysAddr) {
        let tcb = self.vcpu_word(vcpu, layout::TCB);
        if tcb != 0 {
            self.memory.write(PhysAddr(tcb).offset(tcb::layout::VCPU), 0);
            self.set_vcpu_word(vcpu, layout::TCB, 0);
        }
    }

    /// Undoes `tcb`'s binding to its VCPU, if it has one.
    pub(super) fn unbind_tcb_vcpu(&mut self, tcb: PhysAddr) {
        if let Some(vcpu) = self.bound_vcpu(tcb) {
            self.unbind_vcpu(vcpu);
        }
    }

    /// Releases a VCPU whose last capability is deleted.
    pub(super) fn finalise_vcpu(&mut self, cap: &Capability) {
        if let Capability::Vcpu { object } = *cap {
            self.unbind_vcpu(object);
            if self.virt.backend == Backend::Vmx {
                self.memory.vmcs_release(object.offset(layout::CONTROL));
            }
            if self.virt.last_run == object {
                self.virt.last_run = PhysAddr(0);
            }
        }
    }

    /// Decodes an invocation on the VCPU capability in `slot`.
    pub fn decode_vcpu(
        &self,
        cap: Capability,
        label: Label,
        words: &[u64],
        extra: &[Slot],
    ) -> Result<VcpuInvocation, InvocationError> {
        let Capability::Vcpu { object: vcpu } = cap else {
            return Err(InvocationError::InvalidCapability { index: 0 });
        };
        let extra_cap = |n: usize| extra.get(n).map(|&s| self.cap(s));
        match label {
            Label::VcpuSetTcb => match extra_cap(0) {
                Some(Capability::Tcb { object }) => Ok(VcpuInvocation::SetTcb { vcpu, tcb: object }),
                _ => Err(InvocationError::InvalidCapability { index: 1 }),
            },
            Label::VcpuSetSpace => match (extra.first(), extra_cap(0)) {
                (Some(&space), Some(Capability::GuestSpace { object, asid: Some(asid) }))
                    if self.address_space_root(asid) == Some((object, true)) =>
                {
                    match self.vcpu_word(vcpu, layout::TCB) {
                        0 => Err(InvocationError::IllegalOperation),
                        tcb => Ok(VcpuInvocation::SetSpace { tcb: PhysAddr(tcb), space }),
                    }
                }
                _ => Err(InvocationError::InvalidCapability { index: 1 }),
            },
            Label::VcpuReadState => {
                if words.is_empty() {
                    return Err(InvocationError::TruncatedMessage { needed: 1 });
                }
                let mut fields = [0; 4];
                for (i, &field) in words.iter().take(4).enumerate() {
                    if !field_exists(field) {
                        return Err(InvocationError::InvalidArgument { index: i as u8 });
                    }
                    fields[i] = field;
                }
                Ok(VcpuInvocation::Read { vcpu, fields, count: words.len().min(4) })
            }
            Label::VcpuWriteState => {
                if words.len() < 2 {
                    return Err(InvocationError::TruncatedMessage { needed: 2 });
                }
                let mut pairs = [(0, 0); 4];
                let count = (words.len() / 2).min(4);
                for i in 0..count {
                    let (field, value) = (words[2 * i], words[2 * i + 1]);
                    if !field_exists(field) {
                        return Err(InvocationError::InvalidArgument { index: 2 * i as u8 });
                    }
                    self.check_vcpu_write(field, value)
                        .map_err(|_| InvocationError::InvalidArgument { index: 2 * i as u8 + 1 })?;
                    pairs[i] = (field, value);
                }
                Ok(VcpuInvocation::Write { vcpu, pairs, count })
            }
            _ => Err(InvocationError::IllegalOperation),
        }
    }

    /// Performs a decoded VCPU invocation; returns the reply words of a read.
    pub fn perform_vcpu(&mut self, invocation: VcpuInvocation) -> ([u64; 4], usize) {
        match invocation {
            VcpuInvocation::SetTcb { vcpu, tcb } => {
                self.unbind_vcpu(vcpu);
                self.unbind_tcb_vcpu(tcb);
                self.set_vcpu_word(vcpu, layout::TCB, tcb.get());
                self.memory.write(tcb.offset(tcb::layout::VCPU), vcpu.get());
                ([0; 4], 0)
            }
            VcpuInvocation::SetSpace { tcb, space } => {
                // The thread holds the GuestSpace as a capability, like its
                // address space: revoking the GuestSpace's memory deletes it.
                let slot = Self::tcb_slot(tcb, tcb::SPACE_SLOT);
                // Replacing a copy is one bounded step: it is not a CNode or TCB.
                while self.delete(slot, &mut super::delete::Budget(u32::MAX)) != super::delete::Progress::Done
                {
                }
                let cap = self.cap(space);
                self.insert_derived(space, slot, cap);
                ([0; 4], 0)
            }
            VcpuInvocation::Read { vcpu, fields, count } => {
                let mut values = [0; 4];
                for i in 0..count {
                    values[i] = self.vcpu_read(vcpu, fields[i]);
                }
                (values, count)
            }
            VcpuInvocation::Write { vcpu, pairs, count } => {
                for &(field, value) in &pairs[..count] {
                    self.vcpu_write(vcpu, field, value);
                    // Written as the guest's MOV to CR0, CR3 or CR4 or its
                    // WRMSR to EFER would be, which drops the translations
                    // it cached (SDM vol. 3A §4.10.4.1): they are kept under
                    // the VCPU's tag across entries, so the next entry
                    // flushes them.
                    if [Field::Cr0, Field::Cr3, Field::Cr4, Field::Efer].iter().any(|&f| f as u64 == field) {
                        self.disown_tag(vcpu);
                    }
                }
                ([0; 4], 0)
            }
        }
    }

    /// Before `VmEnter` runs `tcb`'s VCPU: checks that it can, loads the
    /// register block from the IPC buffer if asked (`flags`), and decides
    /// whether the guest TLB must be flushed. Returns what the entry and the
    /// reply need, or the error or exit to reply with instead.
    #[inline(always)]
    pub fn vm_prepare(&mut self, tcb: PhysAddr, flags: u64) -> Result<VmEntry, VmEnterRefusal> {
        let vcpu = self.bound_vcpu(tcb).ok_or(VmEnterRefusal::Error(InvocationError::IllegalOperation))?;
        let (buffer, _) =
            self.ipc_buffer(tcb).ok_or(VmEnterRefusal::Error(InvocationError::IllegalOperation))?;
        let block = buffer.offset(REGISTER_BLOCK_OFFSET);
        let load = flags & vcpu::enter::LOAD_REGISTERS != 0;
        // Read once: the entry, the exit and the reply branch on it, and a
        // local lets the compiler take the branch once.
        let vmx = self.virt.backend == Backend::Vmx;
        if load {
            self.load_registers(vcpu, buffer, vmx)?;
        }
        // The entry code loads the general registers from the block itself.
        let registers = if load { block } else { vcpu.offset(layout::REGISTERS) };
        let entry = VmEntry { vcpu, flush: false, buffer, registers, vmx };
        // A signal on the thread's bound notification ends `VmEnter` before
        // anything of the entry (space, flushes) is committed; the reply
        // then gives back the registers it was asked to load.
        if let Some(word) = self.take_bound_signal(tcb) {
            self.vm_not_entered(&entry);
            let exit =
                NeutralExit { reason: Exit::Notification, qualification: word, qualification2: 0, length: 0 };
            return Err(VmEnterRefusal::Signal(entry, exit));
        }
        // The GuestSpace is the thread's (a capability in its TCB), alive
        // as long as that capability is.
        let Some((root, asid)) =
            super::cap::raw::guest_space(self.slot_words(Self::tcb_slot(tcb, tcb::SPACE_SLOT)))
        else {
            self.vm_not_entered(&entry);
            return Err(VmEnterRefusal::Exit(NeutralExit {
                reason: Exit::EntryFailure,
                qualification: 0,
                qualification2: 0,
                length: 0,
            }));
        };
        let changed = self.vcpu_word(vcpu, layout::SPACE) != root.get()
            || self.vcpu_word(vcpu, layout::SPACE_ASID) != u64::from(asid);
        if changed {
            self.set_vcpu_word(vcpu, layout::SPACE, root.get());
            self.set_vcpu_word(vcpu, layout::SPACE_ASID, u64::from(asid));
            if vmx {
                self.vmx_set_space(vcpu, root);
            } else {
                self.set_vcpu_word(vcpu, layout::CONTROL + vmcb::NESTED_CR3, root.get());
            }
        }
        // The translations cached under the VCPU's tag may be of another
        // VCPU sharing it, of another space, or of mappings since removed.
        // (A new VCPU's space word is 0: its first entry flushes.)
        let tag = self.vcpu_word(vcpu, layout::TAG);
        let owner = &mut self.virt.tag_owner[tag as usize % TAG_SLOTS];
        let flush = changed || *owner != vcpu;
        *owner = vcpu;
        self.virt.last_run = vcpu;
        if !vmx {
            // TLB_CONTROL 1 flushes every ASID's entries (APM vol. 2 §15.16.1).
            let tlb = if flush { 1 << 32 } else { 0 };
            self.set_vcpu_word(vcpu, layout::CONTROL + vmcb::ASID_TLB, tag | tlb);
        }
        Ok(VmEntry { vcpu, flush, buffer, registers, vmx })
    }

    /// The entry the `VmEnter` fastpath made for `tcb` (SVM, from the
    /// register block), rebuilt for the general path to take its exit;
    /// `None` if the thread no longer has a VCPU and an IPC buffer, which
    /// the fastpath's precondition rules out.
    pub fn vm_fast_entry(&self, tcb: PhysAddr) -> Option<VmEntry> {
        let vcpu = self.bound_vcpu(tcb)?;
        let (buffer, _) = self.ipc_buffer(tcb)?;
        let registers = buffer.offset(REGISTER_BLOCK_OFFSET);
        Some(VmEntry { vcpu, flush: false, buffer, registers, vmx: false })
    }

    /// After the guest of `entry` stopped: the exit in neutral terms, or
    /// `None` if it was a host interrupt for the kernel.
    #[inline(always)]
    pub fn vm_exit(&mut self, entry: &VmEntry) -> Option<NeutralExit> {
        let vcpu = entry.vcpu;
        let mut exit = if entry.vmx { self.vmx_exit(vcpu)? } else { self.svm_exit(vcpu, entry.flush)? };
        match exit.reason {
            Exit::MsrRead | Exit::MsrWrite => {
                exit.qualification = self.vcpu_word(vcpu, layout::REGISTERS + 8) & 0xffff_ffff;
            }
            Exit::InterruptWindow => self.vcpu_write(vcpu, Field::InterruptWindow as u64, 0),
            // An entry the CPU refused may not have made the flush it was
            // asked for; an intercepted INVLPG did not run, and the VMM
            // cannot name one translation to the kernel. Either way the
            // next entry flushes (and the fastpath stays shut).
            Exit::InvalidGuestState | Exit::Invlpg => self.disown_tag(vcpu),
            _ => {}
        }
        Some(exit)
    }

    /// The translations cached under `vcpu`'s tag are flushed before its
    /// next entry: it no longer owns the tag.
    fn disown_tag(&mut self, vcpu: PhysAddr) {
        let owner = &mut self.virt.tag_owner[self.tag_slot(vcpu)];
        if *owner == vcpu {
            *owner = PhysAddr(0);
        }
    }

    /// Whether `vcpu` owns its tag, so that entering it needs no flush.
    pub fn owns_tag(&self, vcpu: PhysAddr) -> bool {
        self.virt.tag_owner[self.tag_slot(vcpu)] == vcpu
    }

    /// `vcpu`'s entry in `VirtConfig::tag_owner`.
    #[inline(always)]
    fn tag_slot(&self, vcpu: PhysAddr) -> usize {
        self.vcpu_word(vcpu, layout::TAG) as usize % TAG_SLOTS
    }

    /// The exit that just happened (SVM) after an entry that asked for a
    /// `flush`; `None` for a host interrupt.
    #[inline(always)]
    fn svm_exit(&mut self, vcpu: PhysAddr, flush: bool) -> Option<NeutralExit> {
        let control = |offset| layout::CONTROL + offset;
        let raw = RawExit {
            code: self.vcpu_word(vcpu, control(vmcb::EXIT_CODE)),
            info1: self.vcpu_word(vcpu, control(vmcb::EXIT_INFO1)),
            info2: self.vcpu_word(vcpu, control(vmcb::EXIT_INFO2)),
            rip: self.vcpu_word(vcpu, control(vmcb::RIP)),
            next_rip: self.vcpu_word(vcpu, control(vmcb::NEXT_RIP)),
        };
        // An event whose delivery the exit interrupted (EXITINTINFO) is
        // delivered again on the next VMRUN (APM vol. 2 §15.7.2).
        let interrupted = self.vcpu_word(vcpu, control(vmcb::EXIT_INTERRUPT_INFO));
        if interrupted & (1 << 31) != 0 {
            self.set_vcpu_word(vcpu, control(vmcb::EVENT_INJECTION), interrupted);
        }
        // The VMRUN made the flush it was asked for: the next entry asks
        // again only if `vm_prepare` finds it needed (the fastpath never does).
        if flush {
            self.set_vcpu_word(vcpu, control(vmcb::ASID_TLB), self.vcpu_word(vcpu, layout::TAG));
        }
        classify_svm(raw)
    }

    /// An entry that was to load the general registers from the register
    /// block did not run: they go into the VCPU as `load_registers` put
    /// RIP, RSP and RFLAGS there, so that its state stays whole.
    pub fn vm_not_entered(&mut self, entry: &VmEntry) {
        let own = entry.vcpu.offset(layout::REGISTERS);
        if entry.registers != own {
            self.memory.copy_words::<16>(entry.registers, own);
        }
    }

    /// Loads RIP, RSP and RFLAGS (and RAX on SVM) of the register block in
    /// the IPC buffer at `buffer` into the control block, which holds
    /// them, as writing those fields would (the entry code loads the
    /// general registers from the block itself).
    fn load_registers(&mut self, vcpu: PhysAddr, buffer: PhysAddr, vmx: bool) -> Result<(), VmEnterRefusal> {
        let block = buffer.offset(REGISTER_BLOCK_OFFSET);
        let word = |this: &Self, field: Field| this.memory.read(block.offset(8 * field as u64));
        let rip = word(self, Field::Rip);
        if !canonical(rip) {
            return Err(VmEnterRefusal::Error(InvocationError::InvalidArgument { index: 0 }));
        }
        let rflags = word(self, Field::Rflags) & RFLAGS_DEFINED | 2;
        let (rax, rsp) = (word(self, Field::Rax), word(self, Field::Rsp));
        if vmx {
            let vmcs = vcpu.offset(layout::CONTROL);
            self.memory.vmcs_write(vmcs, super::vmx::vmcs::GUEST_RSP, rsp);
            self.memory.vmcs_write(vmcs, super::vmx::vmcs::GUEST_RIP, rip);
            self.memory.vmcs_write(vmcs, super::vmx::vmcs::GUEST_RFLAGS, rflags);
        } else {
            for (offset, value) in
                [(vmcb::RAX, rax), (vmcb::RSP, rsp), (vmcb::RIP, rip), (vmcb::RFLAGS, rflags)]
            {
                self.set_vcpu_word(vcpu, layout::CONTROL + offset, value);
            }
        }
        Ok(())
    }

    /// Replies to `VmEnter`: the exit in the message registers, the
    /// guest's registers in the IPC buffer (as reading fields 0–17 would).
    #[inline(always)]
    pub fn vm_reply(&mut self, tcb: PhysAddr, entry: &VmEntry, exit: NeutralExit) {
        let (vcpu, block) = (entry.vcpu, entry.buffer.offset(REGISTER_BLOCK_OFFSET));
        {
            self.memory.copy_words::<16>(vcpu.offset(layout::REGISTERS), block);
            let (rax, rsp, rip, rflags) = if entry.vmx {
                let vmcs = vcpu.offset(layout::CONTROL);
                let get = |field| self.memory.vmcs_read(vmcs, field);
                use super::vmx::vmcs::{GUEST_RFLAGS, GUEST_RIP, GUEST_RSP};
                let rax = self.vcpu_word(vcpu, layout::REGISTERS);
                (rax, get(GUEST_RSP), get(GUEST_RIP), get(GUEST_RFLAGS))
            } else {
                let get = |offset| self.vcpu_word(vcpu, layout::CONTROL + offset);
                (get(vmcb::RAX), get(vmcb::RSP), get(vmcb::RIP), get(vmcb::RFLAGS))
            };
            for (field, value) in
                [(Field::Rax, rax), (Field::Rsp, rsp), (Field::Rip, rip), (Field::Rflags, rflags)]
            {
                self.memory.write(block.offset(8 * field as u64), value);
            }
        }
        self.reply_vm_exit(tcb, exit);
    }

    /// Sets `tcb`'s reply registers to `exit`: label 0 and four words.
    pub fn reply_vm_exit(&mut self, tcb: PhysAddr, exit: NeutralExit) {
        use super::tcb::register;
        self.set_field(tcb, register::RSI, EXIT_REPLY_INFO);
        let words = [exit.reason as u64, exit.qualification, exit.qualification2, exit.length];
        for (&offset, word) in register::MESSAGE.iter().zip(words) {
            self.set_field(tcb, offset, word);
        }
    }
}

/// What `VmEnter` found in [`ObjectSpace::vm_prepare`], for the entry and the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmEntry {
    /// The VCPU to run.
    pub vcpu: PhysAddr,
    /// Whether its guest's cached translations must be flushed first.
    pub flush: bool,
    /// The caller's IPC buffer, where the register block is.
    pub buffer: PhysAddr,
    /// Where the entry code loads the guest's general registers from: the
    /// register block (`LOAD_REGISTERS`) or the VCPU's own, where it always
    /// stores them at the exit.
    pub registers: PhysAddr,
    /// Whether the backend is VMX (else SVM).
    pub vmx: bool,
}

/// Why `VmEnter` did not run the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmEnterRefusal {
    /// Reply with this error.
    Error(InvocationError),
    /// Reply with this exit (the guest cannot be entered as configured).
    Exit(NeutralExit),
    /// The bound notification was signalled (its word taken): reply with
    /// this `Notification` exit and the registers, through [`ObjectSpace::vm_reply`].
    Signal(VmEntry, NeutralExit),
}
