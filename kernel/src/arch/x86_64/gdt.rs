//! Segmentation: the GDT and TSS of each CPU (Intel SDM vol. 3A §3.4.5,
//! §7.2.3; AMD APM vol. 2 §4.8, §12.2.5).
//!
//! Long mode ignores segment bases and limits for code and data; the GDT
//! exists for privilege levels (CS/SS DPL) and to point at the TSS, whose
//! interrupt stack table (IST) gives NMI, #DF, #MC and #PF stacks of their
//! own: an exception in kernel code never runs on the interrupted stack
//! (the precompiled `core` uses the red zone; TOOLCHAIN.md).

use x86::Ring;
use x86::bits64::segmentation::Descriptor64;
use x86::bits64::task::TaskStateSegment;
use x86::dtables::{DescriptorTablePointer, lgdt};
use x86::segmentation::{
    BuildDescriptor, CodeSegmentType, DataSegmentType, Descriptor, DescriptorBuilder, GateDescriptorBuilder,
    SegmentDescriptorBuilder, SegmentSelector,
};

/// Kernel code segment.
pub const KERNEL_CODE: SegmentSelector = SegmentSelector::new(1, Ring::Ring0);
/// Kernel data/stack segment.
pub const KERNEL_DATA: SegmentSelector = SegmentSelector::new(2, Ring::Ring0);
/// User data/stack segment. User data precedes user code because SYSRET
/// loads SS from STAR[63:48] + 8 and CS from STAR[63:48] + 16.
pub const USER_DATA: SegmentSelector = SegmentSelector::new(3, Ring::Ring3);
/// User 64-bit code segment.
pub const USER_CODE: SegmentSelector = SegmentSelector::new(4, Ring::Ring3);
/// The TSS (a 16-byte system descriptor, slots 5 and 6).
pub const TSS: SegmentSelector = SegmentSelector::new(5, Ring::Ring0);

/// Interrupt stack table slots (1-based, as IDT gates name them).
pub mod ist {
    /// Non-maskable interrupt.
    pub const NMI: u8 = 1;
    /// Double fault.
    pub const DOUBLE_FAULT: u8 = 2;
    /// Machine check.
    pub const MACHINE_CHECK: u8 = 3;
    /// Page fault.
    pub const PAGE_FAULT: u8 = 4;
    /// Every other exception and interrupt taken in kernel mode.
    pub const GENERAL: u8 = 5;
    /// Number of slots used.
    pub const COUNT: usize = 5;
}

/// Bytes in each IST stack.
pub const IST_STACK_SIZE: usize = 16 * 1024;

/// One IST stack, 16-byte aligned as the ABI wants at calls.
#[repr(C, align(16))]
pub struct Stack(pub [u8; IST_STACK_SIZE]);

/// The segmentation state of one CPU. Lives for the life of the kernel at a
/// fixed address (the GDTR and TR point into it).
#[repr(C, align(16))]
pub struct CpuSegments {
    gdt: [u64; 7],
    tss: TaskStateSegment,
    stacks: [Stack; ist::COUNT],
}

impl CpuSegments {
    /// Zeroed state; [`CpuSegments::load`] fills it in.
    pub const fn new() -> Self {
        Self {
            gdt: [0; 7],
            tss: TaskStateSegment::new(),
            stacks: [const { Stack([0; IST_STACK_SIZE]) }; ist::COUNT],
        }
    }

    /// Top of IST stack `slot` (1-based).
    pub fn ist_top(&self, slot: u8) -> u64 {
        let stack = &self.stacks[usize::from(slot) - 1];
        stack.0.as_ptr() as u64 + IST_STACK_SIZE as u64
    }

    /// Builds the GDT and TSS and loads them on this CPU.
    ///
    /// # Safety
    /// `self` must stay at this address, unchanged, for as long as the CPU
    /// runs (it must be a `static`); interrupts must be off.
    pub unsafe fn load(&'static mut self) {
        let code64 = |dpl| {
            let d: Descriptor = DescriptorBuilder::code_descriptor(0, 0, CodeSegmentType::ExecuteRead)
                .present()
                .dpl(dpl)
                .l()
                .finish();
            d.as_u64()
        };
        let data = |dpl| {
            let d: Descriptor = DescriptorBuilder::data_descriptor(0, 0xfffff, DataSegmentType::ReadWrite)
                .present()
                .dpl(dpl)
                .db()
                .limit_granularity_4kb()
                .finish();
            d.as_u64()
        };
        for slot in 1..=ist::COUNT as u8 {
            self.tss.set_ist(usize::from(slot) - 1, self.ist_top(slot));
        }
        // No I/O permission bitmap: the base points past the TSS limit.
        self.tss.iomap_base = core::mem::size_of::<TaskStateSegment>() as u16;
        let tss_base = &raw const self.tss as u64;
        let tss: Descriptor64 = <DescriptorBuilder as GateDescriptorBuilder<u64>>::tss_descriptor(
            tss_base,
            core::mem::size_of::<TaskStateSegment>() as u64 - 1,
            true,
        )
        .present()
        .dpl(Ring::Ring0)
        .finish();
        // SAFETY: `Descriptor64` is two 64-bit words, low word first.
        let [tss_low, tss_high]: [u64; 2] = unsafe { core::mem::transmute(tss) };
        self.gdt = [
            0,
            code64(Ring::Ring0),
            data(Ring::Ring0),
            data(Ring::Ring3),
            code64(Ring::Ring3),
            tss_low,
            tss_high,
        ];

        let pointer = DescriptorTablePointer::new_from_slice(&self.gdt);
        // SAFETY: the GDT is 'static (precondition) and well formed: the
        // selectors loaded below index valid descriptors of the right kind.
        // CS is reloaded with a far return, the only way in long mode.
        unsafe {
            lgdt(&pointer);
            core::arch::asm!(
                "push {code}",
                "lea {tmp}, [rip + 2f]",
                "push {tmp}",
                "retfq",
                "2:",
                "mov ds, {data:x}",
                "mov es, {data:x}",
                "mov ss, {data:x}",
                "xor {tmp:e}, {tmp:e}",
                "mov fs, {tmp:x}",
                "mov gs, {tmp:x}",
                code = in(reg) u64::from(KERNEL_CODE.bits()),
                data = in(reg) u64::from(KERNEL_DATA.bits()),
                tmp = out(reg) _,
            );
            x86::task::load_tr(TSS);
        }
    }
}

impl Default for CpuSegments {
    fn default() -> Self {
        Self::new()
    }
}
