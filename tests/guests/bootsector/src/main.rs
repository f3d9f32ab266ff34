//! A test guest for strata-vmm: a boot sector. The VMM starts it as a
//! BIOS would, in real mode at 0000:7C00 with the boot drive in DL. It
//! prints `ok real-mode` on COM1, checks the hypervisor's CPUID leaf from
//! real mode, does string I/O through segments other than 0 (OUTS from
//! DS, OUTS with an ES override, INS to ES), loads a GDT, enters 32-bit
//! protected mode, prints `ok protected-mode`, and writes its failure
//! count to the isa-debug-exit port. All of it is in the 510 bytes before
//! the boot signature.

#![cfg_attr(strata_baremetal, no_std, no_main)]

#[cfg(strata_baremetal)]
core::arch::global_asm!(
    r#"
    .section .text.boot, "ax"
    .code16
    .global boot
boot:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw $0x7c00, %sp
    xorw %bp, %bp               /* failures */
    cmpb $0x80, %dl             /* the boot drive, as a BIOS passes it */
    je 1f
    incw %bp
1:  movw $real_mode, %si
    call print16
    movl $0x40000000, %eax
    cpuid
    cmpl $0x61727453, %ebx      /* "Stra" */
    je 2f
    incw %bp
    movw $cpuid_failed, %si
    call print16
    jmp 3f
2:  movw $cpuid_ok, %si
    call print16
3:  movw $0x3f8, %dx            /* string I/O: the VMM must add the segment bases */
    movw $0x07c0, %ax           /* DS base 7C00h: the line at its offset from there */
    movw %ax, %ds
    movw $(outs_ds - boot), %si
    movw $(outs_es - outs_ds), %cx
    rep outsb
    movw %ax, %es               /* then ES, by override, with DS 0 */
    xorw %ax, %ax
    movw %ax, %ds
    movw $(outs_es - boot), %si
    movw $(ins_ok - outs_es), %cx
    rep outsb %es:(%si), (%dx)
    movw $0x3ff, %dx            /* INS: four bytes of the UART's scratch register */
    movb $0x5a, %al
    outb %al, %dx
    movw $0x0800, %ax           /* to ES:DI = 0800:0010, linear 8010h */
    movw %ax, %es
    movw $0x10, %di
    movw $4, %cx
    rep insb
    xorw %ax, %ax
    movw %ax, %es
    movw $ins_ok, %si
    cmpl $0x5a5a5a5a, 0x8010
    je 4f
    incw %bp
    movw $ins_failed, %si
4:  call print16
    lgdtl gdt_pointer
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x08, $protected

/* Prints the NUL-terminated string at DS:SI on COM1. */
print16:
    movw $0x3f8, %dx
5:  lodsb
    testb %al, %al
    jz 6f
    outb %al, %dx
    jmp 5b
6:  ret

    .code32
protected:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl $0x7c00, %esp
    movl $protected_mode, %esi
    movw $0x3f8, %dx
7:  lodsb
    testb %al, %al
    jz 8f
    outb %al, %dx
    jmp 7b
8:  movzwl %bp, %eax
    movw $0xf4, %dx
    outl %eax, %dx
9:  hlt
    jmp 9b

    .balign 8
gdt:
    .quad 0
    .quad 0x00cf9a000000ffff
    .quad 0x00cf92000000ffff
gdt_pointer:
    .word 23
    .long gdt

real_mode:
    .asciz "ok real-mode\n"
cpuid_ok:
    .asciz "ok cpuid-in-real-mode\n"
cpuid_failed:
    .asciz "FAIL cpuid-in-real-mode\n"
protected_mode:
    .asciz "ok protected-mode\n"
outs_ds:
    .ascii "ok rep-outs-from-ds\n"
outs_es:
    .ascii "ok rep-outs-es-override\n"
ins_ok:
    .asciz "ok rep-ins-to-es\n"
ins_failed:
    .asciz "FAIL rep-ins-to-es\n"
"#,
    options(att_syntax)
);

#[cfg(strata_baremetal)]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[cfg(not(strata_baremetal))]
fn main() {
    eprintln!("strata-guest-bootsector is a boot sector; `cargo xtask test --suite vm-qemu` runs it");
    std::process::exit(2);
}
