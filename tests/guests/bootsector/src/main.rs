//! A test guest for strata-vmm: a boot sector. The VMM starts it as a
//! BIOS would, in real mode at 0000:7C00 with the boot drive in DL. It
//! prints `ok real-mode` on COM1, checks the hypervisor's CPUID leaf from
//! real mode, loads a GDT, enters 32-bit protected mode, prints `ok
//! protected-mode`, and writes its failure count to the isa-debug-exit
//! port. All of it is in the 510 bytes before the boot signature.

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
3:  lgdtl gdt_pointer
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x08, $protected

/* Prints the NUL-terminated string at DS:SI on COM1. */
print16:
    movw $0x3f8, %dx
4:  lodsb
    testb %al, %al
    jz 5f
    outb %al, %dx
    jmp 4b
5:  ret

    .code32
protected:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl $0x7c00, %esp
    movl $protected_mode, %esi
    movw $0x3f8, %dx
6:  lodsb
    testb %al, %al
    jz 7f
    outb %al, %dx
    jmp 6b
7:  movzwl %bp, %eax
    movw $0xf4, %dx
    outl %eax, %dx
8:  hlt
    jmp 8b

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
