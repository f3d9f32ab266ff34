//! The vendor-neutral virtual-CPU interface: the guest state a VMM reads and
//! writes by [`Field`], the [`Exit`] reasons `VmEnter` reports, and the
//! register block it exchanges through the IPC buffer. The same values mean
//! the same thing on AMD SVM and Intel VMX; the kernel translates them to the
//! VMCB (AMD APM vol. 2 appendix B) or the VMCS (Intel SDM vol. 3C ch. 25).
//!
//! # `VmEnter`
//! The calling thread must have a VCPU bound (`VcpuSetTcb`), a GuestSpace
//! (`VcpuSetSpace`, which keeps a copy of the capability in the thread's
//! TCB), and an IPC buffer. Message word 0
//! holds [`enter`] flags. With [`enter::LOAD_REGISTERS`] the kernel first
//! loads the guest's registers from the [`RegisterBlock`] at the start of the
//! IPC buffer. The guest then runs until an exit the VMM must see (host
//! interrupts are the kernel's and never reach the VMM). The reply has label
//! 0 and four words: the [`Exit`] reason, its qualification, its second
//! qualification and the exiting instruction's length; the IPC buffer holds
//! the guest's registers at the exit. A reply with a non-zero label is an
//! [`InvocationError`](crate::error::InvocationError) code: the guest did not run.

/// Flags in message word 0 of `VmEnter`.
pub mod enter {
    /// Load the guest's registers from the IPC buffer's [`RegisterBlock`](super::RegisterBlock) first.
    pub const LOAD_REGISTERS: u64 = 1 << 0;
}

/// Words in the [`RegisterBlock`].
pub const REGISTER_BLOCK_WORDS: usize = 18;

/// The guest registers `VmEnter` exchanges through the IPC buffer, as its
/// message words `0..18`: the 16 general registers in their instruction-encoding order
/// (RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8–R15), then RIP and RFLAGS.
/// Field ids `0..18` name the same registers.
pub type RegisterBlock = [u64; REGISTER_BLOCK_WORDS];

/// Why the guest stopped. Qualifications are message words 1 and 2 of the
/// `VmEnter` reply; word 3 is the instruction length (0 where it is not
/// known: the VMM decodes the instruction itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Exit {
    /// CPUID. Leaf and subleaf are in RAX and RCX.
    Cpuid = 0,
    /// IN, OUT, INS or OUTS. Word 1: [`io`] fields.
    Io = 1,
    /// RDMSR. Word 1: the MSR (also in RCX).
    MsrRead = 2,
    /// WRMSR. Word 1: the MSR; the value is in EDX:EAX.
    MsrWrite = 3,
    /// HLT.
    Hlt = 4,
    /// VMMCALL (SVM) or VMCALL (VMX).
    Hypercall = 5,
    /// An access to a guest-physical address the GuestSpace does not map
    /// (or maps without the right). Word 1: [`access`] bits; word 2: the
    /// guest-physical address.
    NestedPageFault = 6,
    /// A control-register access the intercepts asked for, or (VMX) a CR8
    /// access or a write changing a CR0/CR4 bit VMX fixes. Word 1: the
    /// register number, plus 16 for a write, plus the general register
    /// (encoding order) in bits 8–11 where the hardware says which. Word 2:
    /// the source operand of LMSW.
    CrAccess = 7,
    /// An exception the exception intercepts asked for. Word 1: the
    /// vector, plus 256 if word 2 holds an error code.
    Exception = 8,
    /// The guest can take an interrupt now ([`Field::InterruptWindow`]).
    InterruptWindow = 9,
    /// INIT signal.
    Init = 10,
    /// Start-up IPI. Word 1: the vector.
    Sipi = 11,
    /// The guest shut down (triple fault).
    Shutdown = 12,
    /// The hardware refused the guest state. Word 1: the vendor's reason
    /// (VMX basic exit reason; -1 for SVM's `VMEXIT_INVALID`).
    InvalidGuestState = 13,
    /// The kernel could not enter: no GuestSpace, or the one set was deleted.
    EntryFailure = 14,
    /// A virtualization instruction (the guest runs its own hypervisor).
    /// Word 1: a [`nested`] instruction number.
    NestedVirtualization = 15,
    /// RDTSC or RDTSCP, when intercepted.
    Rdtsc = 16,
    /// INVLPG, when intercepted. Word 1: the linear address, if known.
    Invlpg = 17,
    /// PAUSE, when intercepted.
    Pause = 18,
    /// XSETBV. The new XCR value is in EDX:EAX, the register in ECX.
    Xsetbv = 19,
    /// Anything else. Word 1: the vendor's exit code.
    Unsupported = 20,
    /// Not the guest's doing: the notification bound to the VMM's thread
    /// was signalled (before the entry, or while the guest ran), as seL4's
    /// `VMEnter` returns. Word 1: the notification word (the signallers'
    /// badges ORed), which is taken. The guest's state is as it was; the
    /// next `VmEnter` goes on from there. The instruction length is 0.
    Notification = 21,
}

impl TryFrom<u64> for Exit {
    type Error = u64;

    fn try_from(value: u64) -> Result<Self, u64> {
        const ALL: [Exit; 22] = [
            Exit::Cpuid,
            Exit::Io,
            Exit::MsrRead,
            Exit::MsrWrite,
            Exit::Hlt,
            Exit::Hypercall,
            Exit::NestedPageFault,
            Exit::CrAccess,
            Exit::Exception,
            Exit::InterruptWindow,
            Exit::Init,
            Exit::Sipi,
            Exit::Shutdown,
            Exit::InvalidGuestState,
            Exit::EntryFailure,
            Exit::NestedVirtualization,
            Exit::Rdtsc,
            Exit::Invlpg,
            Exit::Pause,
            Exit::Xsetbv,
            Exit::Unsupported,
            Exit::Notification,
        ];
        usize::try_from(value).ok().and_then(|i| ALL.get(i).copied()).ok_or(value)
    }
}

/// Word 1 of an [`Exit::Io`]: `port | size << 16 | flags`.
pub mod io {
    /// Bytes per transfer (1, 2 or 4), at this shift.
    pub const SIZE_SHIFT: u32 = 16;
    /// An input (IN, INS); otherwise an output.
    pub const IN: u64 = 1 << 24;
    /// A string instruction (INS, OUTS).
    pub const STRING: u64 = 1 << 25;
    /// With a REP prefix.
    pub const REP: u64 = 1 << 26;

    /// The port of an I/O qualification.
    pub const fn port(qualification: u64) -> u16 {
        qualification as u16
    }

    /// The access size in bytes of an I/O qualification.
    pub const fn size(qualification: u64) -> u8 {
        (qualification >> SIZE_SHIFT) as u8
    }
}

/// Word 1 of an [`Exit::NestedPageFault`].
pub mod access {
    /// A read.
    pub const READ: u64 = 1 << 0;
    /// A write.
    pub const WRITE: u64 = 1 << 1;
    /// An instruction fetch.
    pub const EXECUTE: u64 = 1 << 2;
    /// The address is mapped, without the right the access needed.
    pub const PRESENT: u64 = 1 << 3;
}

/// Word 1 of an [`Exit::NestedVirtualization`]: which instruction.
pub mod nested {
    /// SVM VMRUN.
    pub const VMRUN: u64 = 0;
    /// SVM VMLOAD.
    pub const VMLOAD: u64 = 1;
    /// SVM VMSAVE.
    pub const VMSAVE: u64 = 2;
    /// SVM STGI.
    pub const STGI: u64 = 3;
    /// SVM CLGI.
    pub const CLGI: u64 = 4;
    /// SVM SKINIT.
    pub const SKINIT: u64 = 5;
    /// SVM INVLPGA.
    pub const INVLPGA: u64 = 6;
    /// VMX VMXON.
    pub const VMXON: u64 = 16;
    /// VMX VMXOFF.
    pub const VMXOFF: u64 = 17;
    /// VMX VMLAUNCH.
    pub const VMLAUNCH: u64 = 18;
    /// VMX VMRESUME.
    pub const VMRESUME: u64 = 19;
    /// VMX VMPTRLD.
    pub const VMPTRLD: u64 = 20;
    /// VMX VMPTRST.
    pub const VMPTRST: u64 = 21;
    /// VMX VMCLEAR.
    pub const VMCLEAR: u64 = 22;
    /// VMX VMREAD.
    pub const VMREAD: u64 = 23;
    /// VMX VMWRITE.
    pub const VMWRITE: u64 = 24;
    /// VMX INVEPT.
    pub const INVEPT: u64 = 25;
    /// VMX INVVPID.
    pub const INVVPID: u64 = 26;
}

/// A piece of guest state, for `VcpuReadState` and `VcpuWriteState`.
///
/// Segment registers are fields `SEGMENTS + 4 * segment + part`, with
/// `segment` one of [`Segment`] and `part` one of [`SegmentPart`]; the
/// descriptor tables (GDTR, IDTR) have only a base and a limit. Segment
/// attributes use the layout of the Intel access-rights field (SDM vol. 3C
/// §25.4.1, table 25-2) on both vendors: type in bits 0–3, S 4, DPL 5–6, P 7,
/// AVL 12, L 13, D/B 14, G 15, and bit 16 for an unusable segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Field {
    /// RAX (fields 0–15 are the general registers in encoding order).
    Rax = 0,
    /// RCX.
    Rcx = 1,
    /// RDX.
    Rdx = 2,
    /// RBX.
    Rbx = 3,
    /// RSP.
    Rsp = 4,
    /// RBP.
    Rbp = 5,
    /// RSI.
    Rsi = 6,
    /// RDI.
    Rdi = 7,
    /// R8.
    R8 = 8,
    /// R9.
    R9 = 9,
    /// R10.
    R10 = 10,
    /// R11.
    R11 = 11,
    /// R12.
    R12 = 12,
    /// R13.
    R13 = 13,
    /// R14.
    R14 = 14,
    /// R15.
    R15 = 15,
    /// RIP.
    Rip = 16,
    /// RFLAGS (bit 1 always reads as 1).
    Rflags = 17,
    /// CR0.
    Cr0 = 18,
    /// CR2.
    Cr2 = 19,
    /// CR3.
    Cr3 = 20,
    /// CR4.
    Cr4 = 21,
    /// CR8 (the task-priority register).
    Cr8 = 22,
    /// EFER, as the guest sees it.
    Efer = 23,
    /// DR7.
    Dr7 = 24,
    /// IA32_PAT.
    Pat = 25,
    /// IA32_SYSENTER_CS.
    SysenterCs = 26,
    /// IA32_SYSENTER_ESP.
    SysenterEsp = 27,
    /// IA32_SYSENTER_EIP.
    SysenterEip = 28,
    /// STAR.
    Star = 29,
    /// LSTAR.
    Lstar = 30,
    /// CSTAR.
    Cstar = 31,
    /// SFMASK (IA32_FMASK).
    Sfmask = 32,
    /// KernelGSbase.
    KernelGsBase = 33,
    /// Bit 0: interrupts are blocked for one instruction (after STI or MOV SS).
    Interruptibility = 34,
    /// 0: active; 1: halted.
    ActivityState = 35,
    /// An event to deliver on the next entry: vector in bits 0–7, type in
    /// 8–10 (0 external interrupt, 2 NMI, 3 exception, 4 software
    /// interrupt), bit 11 with an error code, bit 31 valid. This is both
    /// SVM's EVENTINJ and VMX's entry interruption-information layout.
    PendingEvent = 36,
    /// The error code of [`Field::PendingEvent`].
    PendingEventError = 37,
    /// Added to the TSC the guest reads.
    TscOffset = 38,
    /// Optional exits: [`intercept`] flags.
    Intercepts = 39,
    /// Exceptions that exit instead of going to the guest's IDT: bit n for vector n.
    ExceptionIntercepts = 40,
    /// 1: exit with [`Exit::InterruptWindow`] as soon as the guest can take an
    /// external interrupt. Cleared by that exit.
    InterruptWindow = 41,
    /// XCR0 (reset value 1). Bit 0 must be set, AVX (bit 2) needs SSE
    /// (bit 1), and only components the host's XCR0 enables are allowed.
    /// The kernel loads it while the guest runs; XSETBV always exits, for
    /// the VMM to check and write here.
    Xcr0 = 42,
}

/// First segment field.
pub const SEGMENTS: u64 = 0x40;
/// Last field id plus one.
pub const FIELD_LIMIT: u64 = SEGMENTS + 4 * 10;

/// A segment register or descriptor table, for segment field ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Segment {
    /// ES.
    Es = 0,
    /// CS.
    Cs = 1,
    /// SS.
    Ss = 2,
    /// DS.
    Ds = 3,
    /// FS.
    Fs = 4,
    /// GS.
    Gs = 5,
    /// LDTR.
    Ldtr = 6,
    /// TR.
    Tr = 7,
    /// GDTR (base and limit only).
    Gdtr = 8,
    /// IDTR (base and limit only).
    Idtr = 9,
}

/// Which part of a segment register a field is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum SegmentPart {
    /// The selector.
    Selector = 0,
    /// The base address.
    Base = 1,
    /// The limit, in bytes (already scaled by G).
    Limit = 2,
    /// The attributes, in the access-rights layout described at [`Field`].
    Attributes = 3,
}

/// The field id of a segment register part.
pub const fn segment_field(segment: Segment, part: SegmentPart) -> u64 {
    SEGMENTS + 4 * segment as u64 + part as u64
}

/// Optional exits, the value of [`Field::Intercepts`]. CPUID, I/O, MSR
/// accesses, the virtualization instructions, XSETBV, INIT and shutdown
/// always exit: the guest never reaches real ports, MSRs or the host's
/// hypervisor.
pub mod intercept {
    /// HLT exits ([`Exit::Hlt`](super::Exit::Hlt)); otherwise the guest idles in place.
    pub const HLT: u64 = 1 << 0;
    /// RDTSC and RDTSCP exit.
    pub const RDTSC: u64 = 1 << 1;
    /// INVLPG exits.
    pub const INVLPG: u64 = 1 << 2;
    /// PAUSE exits.
    pub const PAUSE: u64 = 1 << 3;
    /// Reads of CR3 exit (CR0 and CR4 reads cannot exit on VMX, which
    /// answers them from read shadows).
    pub const CR_READS: u64 = 1 << 4;
    /// Writes of CR0, CR3 and CR4 exit.
    pub const CR_WRITES: u64 = 1 << 5;
    /// Every optional exit.
    pub const ALL: u64 = HLT | RDTSC | INVLPG | PAUSE | CR_READS | CR_WRITES;
}

/// Segment attributes in the access-rights layout to SVM's compressed
/// `attrib` (APM vol. 2 §15.5.1: bits 0–7 as in the descriptor's byte 5,
/// 8–11 its AVL, L, D/B and G). An unusable segment is not present.
pub const fn attributes_to_svm(attributes: u64) -> u16 {
    if attributes & (1 << 16) != 0 {
        return ((attributes & 0x7f) | (attributes >> 4 & 0xf00)) as u16;
    }
    ((attributes & 0xff) | (attributes >> 4 & 0xf00)) as u16
}

/// SVM's compressed `attrib` to the access-rights layout; a segment that
/// is not present reads as unusable.
pub const fn attributes_from_svm(attrib: u16) -> u64 {
    let attrib = attrib as u64;
    let rights = (attrib & 0xff) | (attrib & 0xf00) << 4;
    if attrib & 0x80 == 0 { rights | 1 << 16 } else { rights }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_round_trip() {
        for n in 0..64u64 {
            if let Ok(exit) = Exit::try_from(n) {
                assert_eq!(exit as u64, n);
            }
        }
        assert_eq!(Exit::try_from(21), Ok(Exit::Notification));
        assert_eq!(Exit::try_from(22), Err(22));
    }

    #[test]
    fn segment_attributes_convert_both_ways() {
        // 64-bit code (type 0xb, S, P, L, G), flat data, TSS, LDT.
        for rights in [0xa09b_u64, 0xc093, 0x008b, 0x0082, 0x409b] {
            assert_eq!(attributes_from_svm(attributes_to_svm(rights)), rights, "{rights:#x}");
        }
        assert_eq!(attributes_to_svm(0xa09b), 0x0a9b);
        // Unusable becomes not present, and not present reads as unusable.
        assert_eq!(attributes_to_svm(0x1_0093), 0x0013);
        assert_eq!(attributes_from_svm(0x0013), 0x1_0013);
    }

    #[test]
    fn segment_fields_are_dense_and_below_the_limit() {
        assert_eq!(segment_field(Segment::Es, SegmentPart::Selector), SEGMENTS);
        assert_eq!(segment_field(Segment::Idtr, SegmentPart::Attributes), FIELD_LIMIT - 1);
        assert_eq!(io::port(0x3f8 | 1 << 16 | io::IN), 0x3f8);
        assert_eq!(io::size(0x3f8 | 4 << 16 | io::IN), 4);
    }
}
