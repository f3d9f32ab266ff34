//! Entry, long mode and hand-off.
//!
//! Entry points (both in 32-bit protected mode, paging off):
//! - `multiboot2_entry` (the ELF entry): EAX = multiboot2 magic, EBX = info.
//! - `pvh_entry` (named by the Xen PVH ELF note): EBX = `hvm_start_info`.
//!
//! The stub identity-maps the low 4 GiB with 2 MiB pages, enables SSE (the
//! precompiled `core` uses it; TOOLCHAIN.md), enters long mode and calls
//! [`loader_main`] with the protocol magic and the info pointer.

use core::fmt::Write;

use strata_abi::exit::ExitCode;
use strata_abi::ktest::LOADER_ERROR_MARKER;
use strata_kernel::arch::x86_64::exit::exit;
use strata_kernel::arch::x86_64::serial::Uart16550;
use strata_loader::bootinfo::{self, Protocol};
use strata_loader::physmem::PhysicalMemory;
use strata_loader::{CpuFeatures, Handoff, LoaderError, LoaderImage};

core::arch::global_asm!(
    r#"
    .section .multiboot2, "a"
    .balign 8
mb2_header_start:
    .long 0xe85250d6                      /* magic */
    .long 0                               /* architecture: i386 protected mode */
    .long mb2_header_end - mb2_header_start
    .long 0x100000000 - (0xe85250d6 + 32) /* checksum for a 32-byte header */
    .short 6, 0                           /* module alignment tag: page-align modules */
    .long 8
    .short 0, 0                           /* end tag */
    .long 8
mb2_header_end:
    .if (mb2_header_end - mb2_header_start) != 32
    .error "multiboot2 header length changed: fix its checksum"
    .endif

    .section .note.Xen, "a", @note
    .balign 4
    .long 4                               /* name size */
    .long 8                               /* descriptor size */
    .long 18                              /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .quad pvh_entry

    .section .boot32, "ax"
    .code32
    .global multiboot2_entry
multiboot2_entry:
    cli
    cld
    movl %eax, %edi
    movl %ebx, %esi
    jmp 1f
    .global pvh_entry
pvh_entry:
    cli
    cld
    movl $0x336ec578, %edi
    movl %ebx, %esi
1:
    movl $boot_stack_top, %esp

    /* Long mode available? (CPUID 8000_0001h EDX bit 29) */
    movl $0x80000000, %eax
    cpuid
    cmpl $0x80000001, %eax
    jb no_long_mode
    movl $0x80000001, %eax
    cpuid
    testl $(1 << 29), %edx
    jz no_long_mode

    /* Zero the boot page tables, then map 4 GiB: PML4[0] -> PDPT,
       PDPT[0..4] -> four PDs of 2 MiB pages. */
    pushl %edi
    movl $boot_pml4, %edi
    xorl %eax, %eax
    movl $(6 * 4096 / 4), %ecx
    rep stosl
    popl %edi
    movl $boot_pdpt, %eax
    orl $3, %eax
    movl %eax, boot_pml4
    xorl %ecx, %ecx
2:
    movl %ecx, %eax
    shll $12, %eax
    addl $boot_pds, %eax
    orl $3, %eax
    movl %eax, boot_pdpt(, %ecx, 8)
    incl %ecx
    cmpl $4, %ecx
    jne 2b
    xorl %ecx, %ecx
3:
    movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax                        /* present, writable, 2 MiB page */
    movl %eax, boot_pds(, %ecx, 8)
    movl %ecx, %eax
    shrl $11, %eax                         /* bits 32.. of the page address */
    movl %eax, boot_pds + 4(, %ecx, 8)
    incl %ecx
    cmpl $2048, %ecx
    jne 3b

    /* CR4: PAE | OSFXSR | OSXMMEXCPT */
    movl %cr4, %eax
    orl $((1 << 5) | (1 << 9) | (1 << 10)), %eax
    movl %eax, %cr4
    movl $boot_pml4, %eax
    movl %eax, %cr3
    /* EFER.LME */
    movl $0xc0000080, %ecx
    rdmsr
    orl $(1 << 8), %eax
    wrmsr
    /* CR0: PG | PE | MP | NE, clear EM | TS */
    movl %cr0, %eax
    andl $~((1 << 2) | (1 << 3)), %eax
    orl $((1 << 31) | (1 << 0) | (1 << 1) | (1 << 5)), %eax
    movl %eax, %cr0
    lgdt gdt64_pointer
    ljmp $0x08, $long_mode_entry

no_long_mode:
    movl $no_long_mode_message, %esi
4:
    movb (%esi), %bl
    testb %bl, %bl
    jz 6f
    movw $0x3fd, %dx
5:
    inb %dx, %al
    testb $0x20, %al
    jz 5b
    movb %bl, %al
    movw $0x3f8, %dx
    outb %al, %dx
    incl %esi
    jmp 4b
6:
    movb $0x12, %al                        /* ExitCode::LoaderFailure */
    outb %al, $0xf4
7:
    hlt
    jmp 7b

    .code64
long_mode_entry:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movq $boot_stack_top, %rsp
    movl %edi, %edi                        /* zero-extend magic and info */
    movl %esi, %esi
    call loader_main
    ud2

    .section .rodata
no_long_mode_message:
    .asciz "strata-loader: error: this CPU has no long mode (64-bit); strata needs an x86-64 CPU\r\n"

    /* The trampoline page: identity-mapped in the kernel's page tables. */
    .section .trampoline, "awx"
    .balign 16
gdt64:
    .quad 0
    .quad 0x00af9b000000ffff               /* 0x08: 64-bit code, accessed */
    .quad 0x00cf93000000ffff               /* 0x10: data, accessed */
gdt64_end:
    .balign 8
gdt64_pointer:
    .short gdt64_end - gdt64 - 1
    .quad gdt64

    /* enter_kernel(cr3: rdi, stack_top: rsi, entry: rdx) */
    .global enter_kernel
enter_kernel:
    movq %rdi, %cr3
    movq %rsi, %rsp
    pushq %rdx
    xorl %eax, %eax
    xorl %ebx, %ebx
    xorl %ecx, %ecx
    xorl %edx, %edx
    xorl %esi, %esi
    xorl %edi, %edi
    xorl %ebp, %ebp
    xorl %r8d, %r8d
    xorl %r9d, %r9d
    xorl %r10d, %r10d
    xorl %r11d, %r11d
    xorl %r12d, %r12d
    xorl %r13d, %r13d
    xorl %r14d, %r14d
    xorl %r15d, %r15d
    ret

    .section .bss.boot, "aw", @nobits
    .balign 4096
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pds:
    .skip 4 * 4096
boot_stack:
    .skip 128 * 1024
boot_stack_top:
"#,
    options(att_syntax)
);

unsafe extern "C" {
    static __loader_start: u8;
    static __loader_end: u8;
    static __trampoline_start: u8;
    /// Loads CR3, switches to the kernel stack and returns into the kernel.
    fn enter_kernel(page_table_root: u64, stack_top: u64, entry: u64) -> !;
}

/// The low 4 GiB, identity-mapped by the entry stub.
struct IdentityMap;

impl IdentityMap {
    fn check(address: u64, len: u64) -> bool {
        // Address 0 is excluded: it would make a null slice pointer.
        address != 0 && address.checked_add(len).is_some_and(|end| end <= 1 << 32)
    }
}

impl PhysicalMemory for IdentityMap {
    fn bytes(&self, address: u64, len: u64) -> Option<&[u8]> {
        // SAFETY: the range is non-null and inside the identity map built by
        // the entry stub. The loader only reads firmware structures and the
        // archive this way and writes only memory its layout allocated, which
        // never overlaps them, so no slice aliases a live mutable one.
        Self::check(address, len)
            .then(|| unsafe { core::slice::from_raw_parts(address as *const u8, len as usize) })
    }

    fn bytes_mut(&mut self, address: u64, len: u64) -> Option<&mut [u8]> {
        // SAFETY: as for `bytes`; mutable slices are only requested for
        // memory the layout allocated to the loader.
        Self::check(address, len)
            .then(|| unsafe { core::slice::from_raw_parts_mut(address as *mut u8, len as usize) })
    }
}

fn cpu_features() -> CpuFeatures {
    let extended = core::arch::x86_64::__cpuid(0x8000_0001);
    CpuFeatures { gigabyte_pages: extended.edx & (1 << 26) != 0, no_execute: extended.edx & (1 << 20) != 0 }
}

/// Called by the entry stub in long mode with the protocol magic and the
/// physical address of the boot information.
#[unsafe(no_mangle)]
extern "C" fn loader_main(magic: u32, info: u32) -> ! {
    let mut console = Uart16550::com1();
    console.init();
    match run(&mut console, magic, u64::from(info)) {
        Ok(never) => match never {},
        Err(error) => {
            let _ = writeln!(console, "{LOADER_ERROR_MARKER}: {error}");
            let _ = writeln!(console, "strata-loader: halting");
            exit(ExitCode::LoaderFailure)
        }
    }
}

fn run(console: &mut Uart16550, magic: u32, info: u64) -> Result<core::convert::Infallible, LoaderError> {
    let mut memory = IdentityMap;
    let boot = bootinfo::parse(magic, info, &memory)?;
    let protocol = match boot.protocol {
        Protocol::Pvh => "PVH",
        Protocol::Multiboot2 => "multiboot2",
    };
    let _ = writeln!(
        console,
        "strata-loader {}: entered via {protocol}, {} firmware memory regions, command line \"{}\"",
        env!("CARGO_PKG_VERSION"),
        boot.memory.len(),
        core::str::from_utf8(&boot.cmdline).unwrap_or("<not UTF-8>"),
    );
    // Linker-script symbols: only their addresses are taken.
    let image = LoaderImage {
        start: (&raw const __loader_start) as u64,
        end: (&raw const __loader_end) as u64,
        trampoline_page: (&raw const __trampoline_start) as u64,
    };
    let cpu = cpu_features();
    let handoff = strata_loader::prepare(&boot, &mut memory, image, cpu)?;
    report(console, &handoff);
    console.flush();
    // SAFETY: `prepare` built page tables mapping the kernel image, its stack,
    // the direct map and this trampoline page; the kernel ELF and everything
    // it will read were checked. EFER.NXE is set before any NX entry is used,
    // and CR0.WP makes read-only kernel pages read-only for the kernel too.
    unsafe {
        if cpu.no_execute {
            let efer = x86::msr::rdmsr(x86::msr::IA32_EFER);
            x86::msr::wrmsr(x86::msr::IA32_EFER, efer | (1 << 11));
        }
        x86::controlregs::cr0_write(x86::controlregs::cr0() | x86::controlregs::Cr0::CR0_WRITE_PROTECT);
        enter_kernel(handoff.page_table_root, handoff.stack_top, handoff.entry)
    }
}

fn report(console: &mut Uart16550, handoff: &Handoff) {
    let _ = writeln!(
        console,
        "strata-loader: kernel {} KiB at {:#x} (virtual {:#x}), entry {:#x}, {} module(s)",
        handoff.kernel_size / 1024,
        handoff.kernel_physical_base,
        handoff.kernel_virtual_base,
        handoff.entry,
        handoff.modules,
    );
    let _ = writeln!(
        console,
        "strata-loader: {} MiB usable in {} map entries, direct map {} GiB; starting kernel",
        handoff.usable_bytes >> 20,
        handoff.map_entries,
        handoff.hhdm_size >> 30,
    );
    if handoff.unknown_requests > 0 {
        let _ = writeln!(
            console,
            "strata-loader: warning: {} kernel request(s) of a kind this loader does not answer",
            handoff.unknown_requests
        );
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    // A fresh UART value: no lock can be held by the code that panicked.
    let mut console = Uart16550::com1();
    let _ = writeln!(console, "{LOADER_ERROR_MARKER}: internal error: {info}");
    exit(ExitCode::LoaderFailure)
}
