//! The guest's code: entry, exception stubs, and the checks.

use core::arch::{asm, global_asm};
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU64, Ordering};

// memcpy and the rest, which the precompiled `core` calls.
use strata_mem as _;

global_asm!(
    r#"
    .section .multiboot, "a"
    .balign 4
multiboot_header:
    .long 0x1badb002
    .long 0x00010002
    .long -(0x1badb002 + 0x00010002)
    .long multiboot_header
    .long __image_start
    .long __load_end
    .long __bss_end
    .long start32

    .section .text.start32, "ax"
    .code32
    .global start32
start32:
    movl %eax, boot_magic
    movl %ebx, boot_info
    /* Identity map of the first GiB in 2 MiB pages, and of the 2 MiB
       holding the test device at 0xfeb00000 (uncached). */
    movl $pdpt, %eax
    orl $3, %eax
    movl %eax, pml4
    movl $pd, %eax
    orl $3, %eax
    movl %eax, pdpt
    movl $pd_high, %eax
    orl $3, %eax
    movl %eax, pdpt + 24
    xorl %ecx, %ecx
1:  movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax
    movl %eax, pd(,%ecx,8)
    incl %ecx
    cmpl $512, %ecx
    jne 1b
    movl $0xfea00093, pd_high + 501 * 8
    movl $pml4, %eax
    movl %eax, %cr3
    /* PAE, OSFXSR, OSXMMEXCPT */
    movl %cr4, %eax
    orl $0x620, %eax
    movl %eax, %cr4
    /* EFER.LME through WRMSR, as any kernel does */
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    /* Paging on (long mode becomes active), FPU present: MP on, EM off */
    movl %cr0, %eax
    andl $~4, %eax
    orl $0x80000002, %eax
    movl %eax, %cr0
    lgdt gdt_pointer
    ljmp $0x08, $start64

    .code64
start64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    leaq stack_top(%rip), %rsp
    call guest_main
2:  hlt
    jmp 2b

    .section .rodata
    .balign 8
gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
gdt_pointer:
    .word 23
    .long gdt

    .section .data
    .balign 4
    .global boot_magic
boot_magic:
    .long 0
    .global boot_info
boot_info:
    .long 0

    .section .bss
    .balign 4096
pml4:
    .skip 4096
pdpt:
    .skip 4096
pd:
    .skip 4096
pd_high:
    .skip 4096
    .balign 16
    .skip 65536
stack_top:

    /* Exceptions: record vector and error code, and resume where the
       check said (resume_address). */
    .section .text
    .balign 16
    .global exception_stubs
exception_stubs:
    .set vector, 0
    .rept 32
    .balign 16
    .if (vector == 8) || (vector == 10) || (vector == 11) || (vector == 12) || (vector == 13) || (vector == 14) || (vector == 17)
    .else
    pushq $0
    .endif
    pushq $vector
    jmp exception_common
    .set vector, vector + 1
    .endr
exception_common:
    pushq %rax
    movq 8(%rsp), %rax
    movq %rax, last_vector(%rip)
    movq 16(%rsp), %rax
    movq %rax, last_error(%rip)
    incq exception_count(%rip)
    movq resume_address(%rip), %rax
    movq %rax, 24(%rsp)
    popq %rax
    addq $16, %rsp
    iretq

    .global doorbell_handler
doorbell_handler:
    incq interrupt_count(%rip)
    iretq

    /* IRQ 0 through the 8259A: count it, and end it at the PIC. */
    .global timer_handler
timer_handler:
    pushq %rax
    incq timer_count(%rip)
    movb $0x20, %al
    outb %al, $0x20
    popq %rax
    iretq
"#,
    options(att_syntax)
);

unsafe extern "C" {
    static boot_magic: u32;
    static boot_info: u32;
    static exception_stubs: [u8; 32 * 16];
    fn doorbell_handler();
    fn timer_handler();
}

#[unsafe(export_name = "last_vector")]
static LAST_VECTOR: AtomicU64 = AtomicU64::new(u64::MAX);
#[unsafe(export_name = "last_error")]
static LAST_ERROR: AtomicU64 = AtomicU64::new(0);
#[unsafe(export_name = "exception_count")]
static EXCEPTION_COUNT: AtomicU64 = AtomicU64::new(0);
#[unsafe(export_name = "resume_address")]
static RESUME_ADDRESS: AtomicU64 = AtomicU64::new(0);
#[unsafe(export_name = "interrupt_count")]
static INTERRUPT_COUNT: AtomicU64 = AtomicU64::new(0);
#[unsafe(export_name = "timer_count")]
static TIMER_COUNT: AtomicU64 = AtomicU64::new(0);

/// The vector the VMM raises through the doorbell.
const DOORBELL_VECTOR: u8 = 0x30;
const DOORBELL: u16 = 0x510;
/// Where the master 8259A's lines go (IRQ 0, the PIT, is this vector).
const TIMER_VECTOR: u8 = 0x20;
/// 8254 counts for 20 ms and 10 ms at 1,193,182 Hz.
const PIT_20_MS: u16 = 23_864;
const PIT_10_MS: u16 = 11_932;
const COM1: u16 = 0x3f8;
const DEBUG_EXIT: u16 = 0xf4;
const TEST_DEVICE: u64 = 0xfeb0_0000;

/// The IDT: 256 16-byte gates.
#[repr(C, align(16))]
struct Idt([u64; 512]);

static mut IDT: Idt = Idt([0; 512]);

fn outb(port: u16, value: u8) {
    // SAFETY: port I/O has no memory effects; the VMM emulates every port.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack)) };
}

fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`.
    unsafe { asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack)) };
    value
}

fn inw(port: u16) -> u16 {
    let value: u16;
    // SAFETY: as for `outb`.
    unsafe { asm!("in ax, dx", in("dx") port, out("ax") value, options(nomem, nostack)) };
    value
}

fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack)) };
}

struct Serial;

impl Write for Serial {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        for byte in text.bytes() {
            // Wait for the transmitter holding register to empty.
            while inb(COM1 + 5) & 0x20 == 0 {}
            outb(COM1, byte);
        }
        Ok(())
    }
}

struct Checks {
    passed: u32,
    failed: u32,
}

impl Checks {
    /// Reports check `name`: passed if `ok`, else failed because of `why`.
    fn check(&mut self, name: &str, ok: bool, why: fmt::Arguments<'_>) {
        if ok {
            self.passed += 1;
            let _ = writeln!(Serial, "ok {name}");
        } else {
            self.failed += 1;
            let _ = writeln!(Serial, "FAIL {name}: {why}");
        }
    }
}

fn cpuid(leaf: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid_count(leaf, 0);
    [r.eax, r.ebx, r.ecx, r.edx]
}

fn set_gate(vector: usize, handler: u64) {
    let low = (handler & 0xffff) | 0x08 << 16 | 0x8e00 << 32 | (handler >> 16 & 0xffff) << 48;
    // SAFETY: one thread; the IDT is only read by the CPU.
    unsafe {
        let idt = &raw mut IDT;
        (*idt).0[2 * vector] = low;
        (*idt).0[2 * vector + 1] = handler >> 32;
    }
}

fn load_idt() {
    // Only the address of the stubs is taken.
    let stubs = (&raw const exception_stubs) as u64;
    for vector in 0..32 {
        set_gate(vector, stubs + 16 * vector as u64);
    }
    set_gate(usize::from(DOORBELL_VECTOR), doorbell_handler as *const () as u64);
    set_gate(usize::from(TIMER_VECTOR), timer_handler as *const () as u64);
    let pointer: [u16; 5] = {
        let base = (&raw const IDT) as u64;
        [4095, base as u16, (base >> 16) as u16, (base >> 32) as u16, (base >> 48) as u16]
    };
    // SAFETY: the IDT is static and its gates point at this image's stubs.
    unsafe { asm!("lidt [{}]", in(reg) &pointer, options(nostack)) };
}

/// Runs `body` (an asm block that faults, resuming at its label `2:`) and
/// returns the exception vector and error code, if one came.
macro_rules! expect_exception {
    ($($body:tt)*) => {{
        EXCEPTION_COUNT.store(0, Ordering::SeqCst);
        LAST_VECTOR.store(u64::MAX, Ordering::SeqCst);
        // SAFETY: the faulting instruction resumes at `2:`, set as the
        // resume address first; registers used are declared.
        unsafe {
            asm!(
                "lea rax, [rip + 2f]",
                "mov [rip + resume_address], rax",
                $($body)*
                "2:",
                out("rax") _, out("rcx") _, out("rdx") _,
            );
        }
        (EXCEPTION_COUNT.load(Ordering::SeqCst), LAST_VECTOR.load(Ordering::SeqCst), LAST_ERROR.load(Ordering::SeqCst))
    }};
}

fn read_msr(msr: u32) -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: reads an MSR the VMM emulates.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") low, out("edx") high, options(nomem, nostack)) };
    u64::from(high) << 32 | u64::from(low)
}

fn write_msr(msr: u32, value: u64) {
    // SAFETY: writes an MSR the VMM emulates.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nomem, nostack))
    };
}

#[unsafe(no_mangle)]
extern "C" fn guest_main() -> ! {
    load_idt();
    let mut checks = Checks { passed: 0, failed: 0 };

    // SAFETY: written by the entry code before anything else ran.
    let (magic, info) = unsafe {
        (core::ptr::read_volatile(&raw const boot_magic), core::ptr::read_volatile(&raw const boot_info))
    };
    let info_flags = if info != 0 {
        // SAFETY: the loader placed the information structure at `info`, in identity-mapped RAM.
        unsafe { core::ptr::read_volatile(info as usize as *const u32) }
    } else {
        0
    };
    checks.check(
        "multiboot",
        magic == 0x2bad_b002 && info_flags & (1 | 1 << 6) == (1 | 1 << 6),
        format_args!("EAX {magic:#x}, info flags {info_flags:#x}"),
    );

    // The VMM passes `guest-basic+greeting` as a multiboot module.
    let expected: &[u8] = b"hello from a multiboot module\n";
    let (count, module_ok) = if info != 0 && info_flags & 1 << 3 != 0 {
        let word = |at: u32| {
            // SAFETY: the information structure and the module list lie in
            // identity-mapped RAM where the loader wrote them.
            unsafe { core::ptr::read_volatile(at as usize as *const u32) }
        };
        let (count, list) = (word(info + 20), word(info + 24));
        let (start, end, name) = (word(list), word(list + 4), word(list + 8));
        // SAFETY: the module's bytes and its name, as the list gives them, in RAM.
        let (bytes, name) = unsafe {
            (
                core::slice::from_raw_parts(start as usize as *const u8, (end - start) as usize),
                core::slice::from_raw_parts(name as usize as *const u8, 9),
            )
        };
        (count, bytes == expected && name == b"greeting\0")
    } else {
        (0, false)
    };
    checks.check(
        "multiboot-module",
        count == 1 && module_ok,
        format_args!("{count} modules, contents right: {module_ok}"),
    );

    let efer = read_msr(0xc000_0080);
    checks.check(
        "long-mode",
        efer & (1 << 8 | 1 << 10) == (1 << 8 | 1 << 10),
        format_args!("EFER {efer:#x}"),
    );

    let [max, b, c, d] = cpuid(0x4000_0000);
    let mut signature = [0u8; 12];
    for (i, word) in [b, c, d].iter().enumerate() {
        signature[4 * i..4 * i + 4].copy_from_slice(&word.to_le_bytes());
    }
    let features = cpuid(1)[2];
    checks.check(
        "cpuid",
        &signature == b"StrataStrata"
            && max >= 0x4000_0001
            && features & 1 << 31 != 0
            && features & 1 << 5 == 0,
        format_args!("leaf 4000_0000h {max:#x} {signature:?}, leaf 1 ECX {features:#x}"),
    );

    outb(COM1 + 7, 0xa5);
    let scratch = inb(COM1 + 7);
    let floating = inb(0x2f8);
    let wide = inw(0x2f8);
    checks.check(
        "port-io",
        scratch == 0xa5 && floating == 0xff && wide == 0xffff,
        format_args!("scratch {scratch:#x}, empty port {floating:#x}/{wide:#x}"),
    );

    let line = b"rep outsb reached the UART\n";
    let (mut rsi, mut rcx) = (line.as_ptr() as u64, line.len() as u64);
    // SAFETY: reads `line`, which is live, through the string instruction.
    unsafe {
        asm!("rep outsb", in("dx") COM1, inout("rsi") rsi, inout("rcx") rcx, options(nostack, readonly));
    }
    let outs_ok = rcx == 0 && rsi == line.as_ptr() as u64 + line.len() as u64;
    outb(COM1 + 7, 0x5a);
    let mut buffer = [0u8; 8];
    let start = buffer.as_mut_ptr() as u64;
    let (mut rdi, mut count) = (start, buffer.len() as u64);
    // SAFETY: writes `buffer`, which is live and 8 bytes long.
    unsafe {
        asm!("rep insb", in("dx") COM1 + 7, inout("rdi") rdi, inout("rcx") count, options(nostack));
    }
    let buffer = core::hint::black_box(buffer);
    // More items than the VMM moves in one exit (4,096): the instruction
    // goes on over several exits, as an interrupted REP does, and ends
    // with RCX 0 and RSI past the last byte. The bytes are this image's.
    let long = 10_000u64;
    let (mut long_rsi, mut long_rcx) = (0x10_0000u64, long);
    // SAFETY: reads 10,000 bytes of the loaded image at 1 MiB, which is RAM.
    unsafe {
        asm!("rep outsb", in("dx") 0x80u16, inout("rsi") long_rsi, inout("rcx") long_rcx, options(nostack, readonly));
    }
    checks.check(
        "string-io",
        outs_ok
            && count == 0
            && rdi == start + 8
            && buffer == [0x5a; 8]
            && long_rcx == 0
            && long_rsi == 0x10_0000 + long,
        format_args!(
            "outs RCX {rcx} RSI {rsi:#x}; ins RCX {count} bytes {buffer:x?}; \
             10,000 outs RCX {long_rcx} RSI {long_rsi:#x}"
        ),
    );

    let pat = read_msr(0x277);
    write_msr(0x277, 0x0007_0406_0007_0401);
    let changed = read_msr(0x277);
    write_msr(0x277, pat);
    checks.check(
        "msr",
        pat == 0x0007_0406_0007_0406 && changed == 0x0007_0406_0007_0401,
        format_args!("PAT {pat:#x}, then {changed:#x}"),
    );

    let (count, vector, error) = expect_exception!("mov ecx, 0x12345", "rdmsr",);
    checks.check(
        "msr-unknown-gp",
        count == 1 && vector == 13 && error == 0,
        format_args!("{count} exceptions, last vector {vector} error {error}"),
    );

    // WRMSR #GPs on a PAT entry of an undefined memory type (2) and on an
    // EFER bit the CPU model lacks (SVME, 12: SVM is hidden).
    let (pat_count, pat_vector, _) =
        expect_exception!("mov ecx, 0x277", "mov eax, 2", "xor edx, edx", "wrmsr",);
    let (efer_count, efer_vector, _) =
        expect_exception!("mov ecx, 0xc0000080", "rdmsr", "bts eax, 12", "wrmsr",);
    checks.check(
        "msr-invalid-gp",
        (pat_count, pat_vector, efer_count, efer_vector) == (1, 13, 1, 13) && read_msr(0x277) == pat,
        format_args!(
            "PAT: {pat_count} exceptions, vector {pat_vector}; EFER: {efer_count}, vector {efer_vector}"
        ),
    );

    // No hypercalls and no nested virtualization: VMCALL and VMMCALL are
    // #UD on both vendors (one exits to the VMM, which injects it; the
    // other is #UD in the hardware itself).
    let (vmcall, vmcall_vector, _) = expect_exception!("vmcall",);
    let (vmmcall, vmmcall_vector, _) = expect_exception!("vmmcall",);
    checks.check(
        "hypercall-ud",
        (vmcall, vmcall_vector, vmmcall, vmmcall_vector) == (1, 6, 1, 6),
        format_args!("VMCALL {vmcall}/{vmcall_vector}, VMMCALL {vmmcall}/{vmmcall_vector}"),
    );

    let (ud, ud_vector, _) = expect_exception!("ud2",);
    let (de, de_vector, _) = expect_exception!("xor edx, edx", "xor ecx, ecx", "mov eax, 1", "div ecx",);
    let (bp, bp_vector, _) = expect_exception!("int3",);
    checks.check(
        "exceptions-in-guest",
        (ud, ud_vector, de, de_vector, bp, bp_vector) == (1, 6, 1, 0, 1, 3),
        format_args!("#UD {ud}/{ud_vector}, #DE {de}/{de_vector}, #BP {bp}/{bp_vector}"),
    );

    let device = TEST_DEVICE as *mut u64;
    // SAFETY: the test device's registers, mapped uncached; the VMM emulates every access.
    let (id, scratch, inverted, immediate) = unsafe {
        let id = core::ptr::read_volatile(device.cast::<u32>());
        core::ptr::write_volatile(device.add(1), 0x1122_3344_5566_7788);
        let scratch = core::ptr::read_volatile(device.add(1));
        let inverted = core::ptr::read_volatile(device.add(2));
        asm!("mov dword ptr [{}], 0xdeadbeef", in(reg) device.add(1), options(nostack));
        let immediate = core::ptr::read_volatile(device.add(1).cast::<u32>());
        (id, scratch, inverted, immediate)
    };
    checks.check(
        "mmio",
        id == 0x4152_5453
            && scratch == 0x1122_3344_5566_7788
            && inverted == !scratch
            && immediate == 0xdead_beef,
        format_args!("id {id:#x} scratch {scratch:#x} inverted {inverted:#x} immediate {immediate:#x}"),
    );

    INTERRUPT_COUNT.store(0, Ordering::SeqCst);
    outl(DOORBELL, u32::from(DOORBELL_VECTOR));
    let before = INTERRUPT_COUNT.load(Ordering::SeqCst);
    // SAFETY: the IDT has a gate for the vector; interrupts go back off after.
    unsafe { asm!("sti", "nop", "nop", "cli", options(nostack)) };
    let after = INTERRUPT_COUNT.load(Ordering::SeqCst);
    checks.check(
        "injected-interrupt",
        before == 0 && after == 1,
        format_args!("count {before} before STI, {after} after"),
    );

    // The 8259As as every PC OS sets them up: vectors 20h and 28h, the
    // slave on line 2, 8086 mode; everything masked but IRQ 0 (the PIT).
    for (port, value) in [
        (0x20, 0x11),
        (0xa0, 0x11),
        (0x21, TIMER_VECTOR),
        (0xa1, TIMER_VECTOR + 8),
        (0x21, 0x04),
        (0xa1, 0x02),
        (0x21, 0x01),
        (0xa1, 0x01),
        (0x21, 0xfe),
        (0xa1, 0xff),
    ] {
        outb(port, value);
    }
    let masks = (inb(0x21), inb(0xa1));
    checks.check("pic-init", masks == (0xfe, 0xff), format_args!("masks {masks:x?} after initialisation"));

    // The 8254's channel 0 counts down: two latched reads, 1000 reads apart.
    outb(0x43, 0x34); // channel 0, LSB then MSB, mode 2, binary
    outb(0x40, 0xff);
    outb(0x40, 0xff);
    let latched = || {
        outb(0x43, 0x00); // counter latch, channel 0
        u16::from_le_bytes([inb(0x40), inb(0x40)])
    };
    let first = latched();
    for _ in 0..1000 {
        inb(0x61);
    }
    let second = latched();
    checks.check(
        "pit-counts-down",
        second < first || first < 0x1000,
        format_args!("latched {first:#x}, then {second:#x}"),
    );

    // Halt until the PIT's terminal count, 20 ms from now (mode 0), wakes
    // this CPU through IRQ 0.
    TIMER_COUNT.store(0, Ordering::SeqCst);
    outb(0x43, 0x30); // channel 0, LSB then MSB, mode 0
    outb(0x40, PIT_20_MS as u8);
    outb(0x40, (PIT_20_MS >> 8) as u8);
    // SAFETY: RDTSC has no preconditions; the IDT has a gate for the
    // vector, and interrupts go back off after.
    let (start, end) = unsafe {
        let start = core::arch::x86_64::_rdtsc();
        asm!("sti", "hlt", "cli", options(nostack));
        (start, core::arch::x86_64::_rdtsc())
    };
    let woken = TIMER_COUNT.load(Ordering::SeqCst);
    let elapsed = end - start;
    checks.check(
        "hlt-timer-wakeup",
        woken == 1 && elapsed > 0,
        format_args!("{woken} timer interrupts after HLT, {elapsed} TSC ticks"),
    );

    // A periodic PIT (mode 2, 10 ms) while the guest computes and makes
    // no exits at all: its ticks still come, each at its time.
    TIMER_COUNT.store(0, Ordering::SeqCst);
    outb(0x43, 0x34);
    outb(0x40, PIT_10_MS as u8);
    outb(0x40, (PIT_10_MS >> 8) as u8);
    let mut spins = 0u64;
    // SAFETY: the IDT has the timer's gate; interrupts go back off after.
    unsafe { asm!("sti", options(nomem, nostack)) };
    while TIMER_COUNT.load(Ordering::SeqCst) < 3 && spins < 1 << 28 {
        spins += 1;
    }
    // SAFETY: as above.
    unsafe { asm!("cli", options(nomem, nostack)) };
    outb(0x43, 0x30); // a control word stops channel 0
    let ticks = TIMER_COUNT.load(Ordering::SeqCst);
    checks.check(
        "pit-periodic-while-running",
        ticks >= 3,
        format_args!("{ticks} ticks in {spins} loop iterations without an exit"),
    );

    let fpu_mismatches = fpu_survives_exits();
    checks.check(
        "fpu-sse-across-exits",
        fpu_mismatches == 0,
        format_args!("mask of changed registers {fpu_mismatches:#x}"),
    );

    xsave_and_avx(&mut checks);

    // Breakpoint addresses stay put across exits (DR7 leaves them disabled).
    // They are left set: the next guest, on another VCPU, must not see them.
    let written = [0x1000u64, 0x2000, 0x3000, 0x4000];
    let read = debug_registers_across_exits(written);
    checks.check(
        "debug-registers-across-exits",
        read == written,
        format_args!("wrote DR0-DR3 {written:x?}, read back {read:x?}"),
    );

    let _ = writeln!(Serial, "guest-basic: {} passed, {} failed", checks.passed, checks.failed);
    outl(DEBUG_EXIT, checks.failed);
    loop {
        // SAFETY: halting with interrupts off ends the guest for the VMM.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// XSAVE and AVX as an OS turns them on: offered by CPUID; XSETBV is #UD
/// until CR4.OSXSAVE is set, then loads XCR0 (through the VMM) and refuses
/// AVX without SSE with #GP(0); the XSAVE size follows XCR0; and YMM state
/// survives exits.
fn xsave_and_avx(checks: &mut Checks) {
    const XSAVE: u32 = 1 << 26;
    const OSXSAVE: u32 = 1 << 27;
    const AVX: u32 = 1 << 28;
    let offered = cpuid(1)[2];
    let early = expect_exception!("xor ecx, ecx", "mov eax, 7", "xor edx, edx", "xsetbv",);
    // SAFETY: CR4.OSXSAVE may be set: CPUID offers XSAVE (checked below
    // before anything depends on it).
    unsafe {
        asm!("mov {t}, cr4", "or {t}, {bit}", "mov cr4, {t}", t = out(reg) _, bit = const 1 << 18, options(nostack))
    };
    let enabled = cpuid(1)[2];
    let refused = expect_exception!("xor ecx, ecx", "mov eax, 5", "xor edx, edx", "xsetbv",);
    let avx = core::arch::x86_64::__cpuid_count(0xd, 2);
    let xcr0 = |value: u64| {
        // SAFETY: XSETBV with a value CPUID allows (x87, SSE, AVX); XGETBV
        // reads it back (CR4.OSXSAVE is set).
        unsafe {
            asm!("xsetbv", in("ecx") 0, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack));
            core::arch::x86_64::_xgetbv(0)
        }
    };
    let sse_only = (xcr0(0b011), cpuid(0xd)[1]);
    let with_avx = (xcr0(0b111), cpuid(0xd)[1]);
    checks.check(
        "xsave-offered",
        offered & (XSAVE | AVX | OSXSAVE) == XSAVE | AVX && enabled & OSXSAVE != 0,
        format_args!("leaf 1 ECX {offered:#x}, then {enabled:#x} with CR4.OSXSAVE"),
    );
    checks.check(
        "xsetbv",
        early.0 == 1 && early.1 == 6 && refused == (1, 13, 0),
        format_args!(
            "before OSXSAVE: {early:?} (#UD expected); AVX without SSE: {refused:?} (#GP(0) expected)"
        ),
    );
    let full = avx.ebx + avx.eax;
    checks.check(
        "xcr0-and-xsave-size",
        sse_only == (0b011, 576) && with_avx == (0b111, full),
        format_args!("(XCR0, size) {sse_only:?} then {with_avx:?}; expected (3, 576), (7, {full})"),
    );
    let ymm = avx_survives_exits();
    checks.check("avx-across-exits", ymm == 0, format_args!("mask of changed YMM registers {ymm:#x}"));
    xsave_variants(checks);
}

/// A 64-byte aligned XSAVE area (x87, SSE and AVX fit in 832 bytes).
#[repr(C, align(64))]
struct XsaveArea([u8; 1024]);

/// Where XSAVEOPT and XSAVEC store (named in their assembly).
#[unsafe(no_mangle)]
static mut XSAVE_AREA: XsaveArea = XsaveArea([0; 1024]);

/// The XSAVE variants leaf 0Dh sub-leaf 1 offers (XCR0 = x87, SSE, AVX):
/// never XSAVES, whose IA32_XSS the VMM does not emulate; XSAVEOPT at
/// least (both test hosts have it); and each one offered works: XSAVEOPT
/// and XSAVEC store without a fault, XSAVEC in the compacted format
/// (XCOMP_BV = bit 63 and the components saved), XGETBV 1 reports only
/// components XCR0 enables.
fn xsave_variants(checks: &mut Checks) {
    const XSAVEOPT: u32 = 1 << 0;
    const XSAVEC: u32 = 1 << 1;
    const XGETBV1: u32 = 1 << 2;
    let offered = core::arch::x86_64::__cpuid_count(0xd, 1).eax & 0xf;
    let optimised = if offered & XSAVEOPT != 0 {
        expect_exception!("mov eax, 7", "xor edx, edx", "xsaveopt [rip + XSAVE_AREA]",).0
    } else {
        0
    };
    let compacted = if offered & XSAVEC != 0 {
        let faults = expect_exception!("mov eax, 7", "xor edx, edx", "xsavec [rip + XSAVE_AREA]",).0;
        // SAFETY: the area is only written by the instructions above.
        let header = unsafe { (&raw const XSAVE_AREA.0[520]).cast::<u64>().read_volatile() };
        (faults, header)
    } else {
        (0, 1 << 63 | 0b111)
    };
    // SAFETY: CR4.OSXSAVE is set; XGETBV 1 exists when offered.
    let in_use = if offered & XGETBV1 != 0 { unsafe { core::arch::x86_64::_xgetbv(1) } } else { 0 };
    checks.check(
        "xsave-variants",
        offered & 0b1001 == XSAVEOPT && optimised == 0 && compacted == (0, 1 << 63 | 0b111) && in_use & !0b111 == 0,
        format_args!(
            "sub-leaf 1 EAX {offered:#06b}; XSAVEOPT faults {optimised}; XSAVEC (faults, XCOMP_BV) {compacted:x?}; XINUSE {in_use:#x}"
        ),
    );
}

/// 64 exits, 32 times CPUID and OUT to an unused port, counting in `{n}`
/// (clobbers EAX, ECX and EDX; keeps RBX, which the compiler reserves).
macro_rules! exits_64 {
    () => {
        "mov {n:e}, 32\n 3:\n push rbx\n mov eax, 1\n cpuid\n pop rbx\n mov dx, 0x3ff\n mov al, 0x3c\n out dx, al\n dec {n:e}\n jnz 3b"
    };
}

/// Room for the sixteen YMM registers, aligned for AVX memory operands.
#[repr(C, align(32))]
struct Ymm([u64; 64]);

/// Fills YMM0–YMM15 with known values, makes 64 exits (CPUID and port
/// I/O), stores them, and returns a bit per register that changed.
fn avx_survives_exits() -> u32 {
    let patterns =
        Ymm(core::array::from_fn(|i| 0x0303_0303_0303_0303u64.wrapping_mul(i as u64 + 5) ^ 0xc3c3_0000_3c3c));
    let mut after = Ymm([0; 64]);
    // SAFETY: AVX is on (CR4.OSXSAVE and XCR0 bits 1-2: the caller set
    // them); everything the block touches is declared: the vector
    // registers (their upper halves cleared with VZEROUPPER) and the
    // registers CPUID and OUT use.
    unsafe {
        asm!(
            "vmovdqa ymm0, [{p}]", "vmovdqa ymm1, [{p} + 32]", "vmovdqa ymm2, [{p} + 64]", "vmovdqa ymm3, [{p} + 96]",
            "vmovdqa ymm4, [{p} + 128]", "vmovdqa ymm5, [{p} + 160]", "vmovdqa ymm6, [{p} + 192]", "vmovdqa ymm7, [{p} + 224]",
            "vmovdqa ymm8, [{p} + 256]", "vmovdqa ymm9, [{p} + 288]", "vmovdqa ymm10, [{p} + 320]", "vmovdqa ymm11, [{p} + 352]",
            "vmovdqa ymm12, [{p} + 384]", "vmovdqa ymm13, [{p} + 416]", "vmovdqa ymm14, [{p} + 448]", "vmovdqa ymm15, [{p} + 480]",
            exits_64!(),
            "vmovdqa [{a}], ymm0", "vmovdqa [{a} + 32], ymm1", "vmovdqa [{a} + 64], ymm2", "vmovdqa [{a} + 96], ymm3",
            "vmovdqa [{a} + 128], ymm4", "vmovdqa [{a} + 160], ymm5", "vmovdqa [{a} + 192], ymm6", "vmovdqa [{a} + 224], ymm7",
            "vmovdqa [{a} + 256], ymm8", "vmovdqa [{a} + 288], ymm9", "vmovdqa [{a} + 320], ymm10", "vmovdqa [{a} + 352], ymm11",
            "vmovdqa [{a} + 384], ymm12", "vmovdqa [{a} + 416], ymm13", "vmovdqa [{a} + 448], ymm14", "vmovdqa [{a} + 480], ymm15",
            "vzeroupper",
            p = in(reg) patterns.0.as_ptr(),
            a = in(reg) after.0.as_mut_ptr(),
            n = out(reg) _,
            out("eax") _, out("ecx") _, out("edx") _,
            out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _, out("xmm4") _, out("xmm5") _, out("xmm6") _, out("xmm7") _,
            out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _, out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
        );
    }
    (0..16)
        .filter(|&i| after.0[4 * i..4 * i + 4] != patterns.0[4 * i..4 * i + 4])
        .fold(0, |mask, i| mask | 1 << i)
}

/// Writes DR0–DR3, makes exits (CPUID), and reads them back.
fn debug_registers_across_exits(values: [u64; 4]) -> [u64; 4] {
    let mut read = [0u64; 4];
    // SAFETY: the guest runs at CPL 0; with DR7 at its reset value the
    // addresses arm no breakpoint.
    unsafe {
        asm!("mov dr0, {}", "mov dr1, {}", "mov dr2, {}", "mov dr3, {}",
            in(reg) values[0], in(reg) values[1], in(reg) values[2], in(reg) values[3], options(nostack));
        for leaf in 0..4u32 {
            core::arch::x86_64::__cpuid(leaf);
        }
        asm!("mov {}, dr0", "mov {}, dr1", "mov {}, dr2", "mov {}, dr3",
            out(reg) read[0], out(reg) read[1], out(reg) read[2], out(reg) read[3], options(nostack));
    }
    read
}

/// Compares XMM`i` with pattern `i` at `{n}`; sets bit `i` of `{m}` if it changed.
macro_rules! check_xmm {
    ($i:literal) => {
        concat!(
            "pcmpeqb xmm",
            $i,
            ", [{n} + ",
            $i,
            " * 16]\n",
            "pmovmskb eax, xmm",
            $i,
            "\n",
            "cmp eax, 0xffff\n",
            "setne al\n",
            "movzx eax, al\n",
            "shl eax, ",
            $i,
            "\n",
            "or {m:e}, eax"
        )
    };
}

/// Patterns for the vector registers, aligned for SSE memory operands.
#[repr(C, align(16))]
struct Aligned([u64; 32]);

/// Fills XMM0–XMM15 and the x87 stack top with known values, makes 64
/// exits (CPUID and port I/O), and compares: returns a bit per XMM register
/// that changed, bit 16 for x87.
fn fpu_survives_exits() -> u32 {
    let patterns = Aligned(core::array::from_fn(|i| {
        0x0101_0101_0101_0101u64.wrapping_mul(i as u64 + 3) ^ 0x5a5a_0000_a5a5
    }));
    let pi = core::f64::consts::PI;
    let mut mask: u32;
    let mut x87 = 0f64;
    // SAFETY: everything the block touches is declared: all vector
    // registers, the x87 stack (left empty), and the registers CPUID and OUT use.
    unsafe {
        asm!(
            "movdqu xmm0, [{p}]", "movdqu xmm1, [{p} + 16]", "movdqu xmm2, [{p} + 32]", "movdqu xmm3, [{p} + 48]",
            "movdqu xmm4, [{p} + 64]", "movdqu xmm5, [{p} + 80]", "movdqu xmm6, [{p} + 96]", "movdqu xmm7, [{p} + 112]",
            "movdqu xmm8, [{p} + 128]", "movdqu xmm9, [{p} + 144]", "movdqu xmm10, [{p} + 160]", "movdqu xmm11, [{p} + 176]",
            "movdqu xmm12, [{p} + 192]", "movdqu xmm13, [{p} + 208]", "movdqu xmm14, [{p} + 224]", "movdqu xmm15, [{p} + 240]",
            "fld qword ptr [{pi}]",
            exits_64!(),
            "fstp qword ptr [{x87}]",
            "xor {m:e}, {m:e}",
            // Compare each register with its pattern; a changed one sets its bit.
            "mov {n}, {p}",
            check_xmm!(0), check_xmm!(1), check_xmm!(2), check_xmm!(3), check_xmm!(4), check_xmm!(5), check_xmm!(6), check_xmm!(7),
            check_xmm!(8), check_xmm!(9), check_xmm!(10), check_xmm!(11), check_xmm!(12), check_xmm!(13), check_xmm!(14), check_xmm!(15),
            p = in(reg) patterns.0.as_ptr(),
            pi = in(reg) &pi,
            x87 = in(reg) &mut x87,
            n = out(reg) _,
            m = out(reg) mask,
            out("eax") _, out("ecx") _, out("edx") _,
            out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _, out("xmm4") _, out("xmm5") _, out("xmm6") _, out("xmm7") _,
            out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _, out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
        );
    }
    if x87 != pi {
        mask |= 1 << 16;
    }
    mask
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let _ = writeln!(Serial, "FAIL panic: {info}");
    outl(DEBUG_EXIT, 0xff);
    loop {
        // SAFETY: halting with interrupts off ends the guest for the VMM.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}
