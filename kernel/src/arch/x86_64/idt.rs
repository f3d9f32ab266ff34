//! Interrupts and exceptions: the IDT, the 256 entry stubs, and the
//! dispatcher (Intel SDM vol. 3A ch. 6; AMD APM vol. 2 ch. 8).
//!
//! Every vector has a 16-byte stub that pushes a zero error code when the
//! CPU does not push one, then the vector number, and jumps to a common
//! path that saves the general registers and calls [`interrupt_dispatch`]
//! with the whole frame. Every gate uses an IST stack (see [`super::gdt`]).
//! The handlers are compiled Rust, which uses SSE: code that enables
//! interrupts must tell the compiler that vector registers are clobbered
//! (see [`super::cpu::wait_for_interrupt`]).

use core::fmt::Write;
use core::sync::atomic::{AtomicU64, Ordering};

use spin::Once;
use strata_abi::exit::ExitCode;
use strata_abi::ktest::FAULT_MARKER;
use x86::Ring;
use x86::bits64::segmentation::Descriptor64;
use x86::dtables::{DescriptorTablePointer, lidt};
use x86::segmentation::{BuildDescriptor, DescriptorBuilder, GateDescriptorBuilder};

use super::gdt::{KERNEL_CODE, ist};
use super::lapic::{LocalApic, SPURIOUS_VECTOR, TIMER_VECTOR};
use super::serial::Uart16550;
use super::{exit, ioapic, pic};
use crate::object::tcb::{CONTEXT_WORDS, GENERAL_REGISTERS, UserContext};

core::arch::global_asm!(
    r#"
    .section .text.interrupt_stubs, "ax"
    .balign 16
    .global interrupt_stubs
interrupt_stubs:
    .set vector, 0
    .rept 256
    .balign 16
    /* Vectors for which the CPU pushes an error code: #DF #TS #NP #SS #GP #PF #AC #CP #VC #SX */
    .if (vector == 8) || (vector == 10) || (vector == 11) || (vector == 12) || (vector == 13) || (vector == 14) || (vector == 17) || (vector == 21) || (vector == 29) || (vector == 30)
    .else
    pushq $0
    .endif
    pushq $vector
    jmp interrupt_common
    .set vector, vector + 1
    .endr

interrupt_common:
    "#,
    push_general_registers!(),
    r#"
    /* From user mode: kernel GS, and the thread's FPU state saved before
       any compiled code can touch it. */
    testb $3, 144(%rsp)
    jz 1f
    swapgs
    "#,
    save_user_fpu!(),
    r#"
    movq $0, %gs:{vm_open}      /* user::PerCpu::vm_open */
1:
    /* The CPU aligned RSP to 16 before pushing its 5-word frame; with the
       error code, vector and 15 registers the stack is aligned again. */
    movq %rsp, %rdi
    cld
    call interrupt_dispatch
    /* Returning to user mode (perhaps another thread): its FPU state, user GS. */
    "#,
    restore_user_state!("144"),
    pop_general_registers!(),
    r#"
    addq $16, %rsp
    iretq
"#,
    vm_open = const core::mem::offset_of!(super::user::PerCpu, vm_open),
    options(att_syntax)
);

unsafe extern "C" {
    /// 256 stubs of 16 bytes each.
    static interrupt_stubs: [u8; 256 * 16];
}

/// The saved state of an interrupted context, as the stubs lay it out:
/// the general registers (in [`UserContext`] order), the vector and error
/// code, then the CPU's IRET frame.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct InterruptFrame {
    /// RAX to R15, as the first 15 words of a [`UserContext`].
    pub general: [u64; GENERAL_REGISTERS],
    /// The vector the stub pushed.
    pub vector: u64,
    /// The CPU's error code, or 0.
    pub error_code: u64,
    /// RIP, CS, RFLAGS, RSP, SS, as the CPU pushed them.
    pub iret: [u64; 5],
}

/// The IDT. Written once during boot, before interrupts are enabled.
static IDT: Once<[Descriptor64; 256]> = Once::new();
/// The LAPIC to acknowledge interrupts on.
static LAPIC: Once<LocalApic> = Once::new();
/// Breakpoint (#BP) exceptions taken; kernel self tests count these.
pub static BREAKPOINTS: AtomicU64 = AtomicU64::new(0);
/// Address of the frame of the last breakpoint: shows which stack it ran on.
pub static LAST_BREAKPOINT_FRAME: AtomicU64 = AtomicU64::new(0);

fn ist_for(vector: u8) -> u8 {
    match vector {
        2 => ist::NMI,
        8 => ist::DOUBLE_FAULT,
        18 => ist::MACHINE_CHECK,
        14 => ist::PAGE_FAULT,
        _ => ist::GENERAL,
    }
}

/// Builds and loads the IDT on this CPU.
pub fn load() {
    let idt = IDT.call_once(|| {
        // SAFETY: only the address of the linker-provided stub array is taken.
        let stubs = (&raw const interrupt_stubs) as u64;
        core::array::from_fn(|vector| {
            let vector = vector as u8;
            <DescriptorBuilder as GateDescriptorBuilder<u64>>::interrupt_descriptor(
                KERNEL_CODE,
                stubs + 16 * u64::from(vector),
            )
            .present()
            // INT3 may be executed by user code (a debugger's breakpoint):
            // it arrives as #BP, the thread's fault. Every other gate is
            // closed to INT n from ring 3, which raises #GP instead
            // (Intel SDM vol. 3A §6.12.1.1).
            .dpl(if vector == 3 { Ring::Ring3 } else { Ring::Ring0 })
            .ist(ist_for(vector))
            .finish()
        })
    });
    let pointer = DescriptorTablePointer::new_from_slice(idt.as_slice());
    // SAFETY: the IDT is in a 'static `Once` and never changes after this;
    // every gate points at a stub in `interrupt_stubs` with the kernel code
    // selector and an IST slot the TSS fills.
    unsafe { lidt(&pointer) };
}

/// Registers the LAPIC that interrupt handlers acknowledge.
pub fn set_lapic(lapic: LocalApic) {
    LAPIC.call_once(|| lapic);
}

pub use strata_abi::fault::exception_name;

impl InterruptFrame {
    /// The interrupted context, as a thread's saved registers.
    pub fn context(&self) -> UserContext {
        let mut words = [0; CONTEXT_WORDS];
        words[..GENERAL_REGISTERS].copy_from_slice(&self.general);
        words[GENERAL_REGISTERS..].copy_from_slice(&self.iret);
        UserContext::from_words(words)
    }

    /// Makes the interrupt return to `context` instead.
    pub fn set_context(&mut self, context: &UserContext) {
        let words = context.words();
        self.general.copy_from_slice(&words[..GENERAL_REGISTERS]);
        self.iret.copy_from_slice(&words[GENERAL_REGISTERS..]);
    }

    /// The interrupted instruction pointer.
    pub fn rip(&self) -> u64 {
        self.iret[0]
    }

    /// The interrupted stack pointer.
    pub fn rsp(&self) -> u64 {
        self.iret[3]
    }

    /// Whether the interrupted code ran in user mode.
    pub fn from_user(&self) -> bool {
        self.iret[1] & 3 == 3
    }
}

/// Called by `interrupt_common` with interrupts off, on an IST stack.
#[unsafe(no_mangle)]
extern "C" fn interrupt_dispatch(frame: &mut InterruptFrame) {
    // Exceptions in user mode are the thread's faults, not the kernel's.
    if frame.vector < 32 && frame.from_user() && frame.vector != 2 && frame.vector != 18 {
        crate::run::user_exception(frame);
        return;
    }
    match frame.vector {
        3 => {
            BREAKPOINTS.fetch_add(1, Ordering::Relaxed);
            LAST_BREAKPOINT_FRAME.store(frame as *const InterruptFrame as u64, Ordering::Relaxed);
            log::debug!("breakpoint at {:#x}", frame.rip().wrapping_sub(1));
        }
        0..=31 => fatal_exception(frame),
        v if v == u64::from(TIMER_VECTOR) => {
            if let Some(lapic) = LAPIC.get() {
                lapic.timer_interrupt();
            }
            crate::run::preempt(frame);
        }
        v if (u64::from(ioapic::VECTOR_BASE)..u64::from(ioapic::VECTOR_BASE + ioapic::MAX_LINES))
            .contains(&v) =>
        {
            // Masked by `device_interrupt` before the EOI lets it in again.
            if crate::run::device_interrupt(frame, (v - u64::from(ioapic::VECTOR_BASE)) as u8) {
                end_of_interrupt();
            }
        }
        // Spurious interrupts are not acknowledged (SDM §11.9).
        v if v == u64::from(SPURIOUS_VECTOR) => {}
        v if (u64::from(pic::BASE)..u64::from(pic::BASE) + 16).contains(&v) => {
            log::debug!("spurious legacy PIC interrupt (vector {v:#x})");
        }
        v => {
            log::warn!("unexpected interrupt vector {v:#x}");
            end_of_interrupt();
        }
    }
}

/// Acknowledges the interrupt in service on this CPU's LAPIC.
pub fn end_of_interrupt() {
    if let Some(lapic) = LAPIC.get() {
        lapic.end_of_interrupt();
    }
}

/// Reports an exception the kernel cannot recover from and stops.
fn fatal_exception(frame: &InterruptFrame) -> ! {
    // A fresh console value: the exception may have hit while the logger's
    // lock was held.
    let mut out = Uart16550::com1();
    let (mnemonic, description) = exception_name(frame.vector);
    let _ = write!(
        out,
        "\n{FAULT_MARKER}: {mnemonic} {description} (vector {}), error code {:#x}",
        frame.vector, frame.error_code
    );
    if frame.vector == 14 {
        let code = frame.error_code;
        let _ = write!(
            out,
            " [{} {} {}{}]",
            if code & 1 != 0 { "protection-violation" } else { "not-present" },
            if code & 2 != 0 {
                "write"
            } else if code & 16 != 0 {
                "instruction-fetch"
            } else {
                "read"
            },
            if code & 4 != 0 { "user" } else { "supervisor" },
            if code & 8 != 0 { " reserved-bit" } else { "" },
        );
    }
    // SAFETY: reading control registers has no side effects.
    let (cr2, cr3) = unsafe { (x86::controlregs::cr2() as u64, x86::controlregs::cr3()) };
    let [rip, cs, rflags, rsp, ss] = frame.iret;
    let _ = write!(
        out,
        "\n  RIP={rip:#018x} CS={cs:#06x} RFLAGS={rflags:#010x} RSP={rsp:#018x} SS={ss:#06x}\n  CR2={cr2:#018x} CR3={cr3:#018x}"
    );
    // The general registers, four to a line.
    const NAMES: [&str; GENERAL_REGISTERS] = [
        "RAX", "RBX", "RCX", "RDX", "RSI", "RDI", "RBP", "R8 ", "R9 ", "R10", "R11", "R12", "R13", "R14",
        "R15",
    ];
    for (i, (name, value)) in NAMES.iter().zip(frame.general).enumerate() {
        let _ = write!(out, "{}{name}={value:#018x}", if i % 4 == 0 { "\n  " } else { " " });
    }
    let _ = writeln!(out);
    exit::exit(ExitCode::KernelFailure)
}
