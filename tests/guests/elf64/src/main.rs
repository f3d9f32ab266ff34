//! A test guest for strata-vmm: a plain 64-bit ELF kernel. The VMM starts
//! it in long mode at its entry point, with paging on through an identity
//! map of the first GiB. It checks that state (CR0.PG, EFER.LMA, a 64-bit
//! code segment), prints `ok ...` lines on COM1 and writes its failure
//! count to the isa-debug-exit port.

#![cfg_attr(strata_baremetal, no_std, no_main)]

#[cfg(strata_baremetal)]
mod guest {
    use core::arch::{asm, global_asm};

    // memcpy and the rest, which the precompiled `core` calls.
    use strata_mem as _;

    global_asm!(
        r#"
        .section .text.start64, "ax"
        .global start64
    start64:
        leaq stack_top(%rip), %rsp
        call guest_main
    1:  hlt
        jmp 1b

        .section .bss
        .balign 16
        .skip 16384
    stack_top:
    "#,
        options(att_syntax)
    );

    fn outb(port: u16, value: u8) {
        // SAFETY: port I/O has no memory effects; the VMM emulates every port.
        unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack)) };
    }

    fn print(text: &str) {
        for byte in text.bytes() {
            outb(0x3f8, byte);
        }
    }

    fn check(name: &str, ok: bool, failures: &mut u32) {
        print(if ok { "ok " } else { "FAIL " });
        print(name);
        print("\n");
        if !ok {
            *failures += 1;
        }
    }

    #[unsafe(no_mangle)]
    extern "C" fn guest_main() -> ! {
        let mut failures = 0;
        let (cr0, cs): (u64, u64);
        // SAFETY: reading CR0 and CS has no side effects; the guest runs at CPL 0.
        unsafe { asm!("mov {}, cr0", "mov {:x}, cs", out(reg) cr0, out(reg) cs, options(nomem, nostack)) };
        let (low, high): (u32, u32);
        // SAFETY: EFER, which the VMM emulates.
        unsafe {
            asm!("rdmsr", in("ecx") 0xc000_0080u32, out("eax") low, out("edx") high, options(nomem, nostack))
        };
        let efer = u64::from(high) << 32 | u64::from(low);
        check("paging-on", cr0 & (1 << 31 | 1) == (1 << 31 | 1), &mut failures);
        check("long-mode-active", efer & (1 << 10 | 1 << 8) == (1 << 10 | 1 << 8), &mut failures);
        check("code-segment-0x08", cs == 0x08, &mut failures);
        let debug: [u64; 4];
        // SAFETY: reading debug registers at CPL 0 has no side effects.
        unsafe {
            let (d0, d1, d2, d3): (u64, u64, u64, u64);
            asm!("mov {}, dr0", "mov {}, dr1", "mov {}, dr2", "mov {}, dr3",
                out(reg) d0, out(reg) d1, out(reg) d2, out(reg) d3, options(nomem, nostack));
            debug = [d0, d1, d2, d3];
        }
        // A fresh VCPU starts with DR0-DR3 at 0 (SDM vol. 3A §10.1.1), not
        // with what an earlier guest left in the CPU.
        check("debug-registers-own", debug == [0; 4], &mut failures);
        print("elf64 done\n");
        // SAFETY: the isa-debug-exit port ends the guest.
        unsafe { asm!("out dx, eax", in("dx") 0xf4u16, in("eax") failures, options(nomem, nostack)) };
        loop {
            // SAFETY: halting with interrupts off ends the guest for the VMM.
            unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
        }
    }

    #[panic_handler]
    fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
        print("FAIL panic\n");
        loop {
            // SAFETY: as above.
            unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
        }
    }
}

#[cfg(not(strata_baremetal))]
fn main() {
    eprintln!("strata-guest-elf64 is a guest kernel; `cargo xtask test --suite vm-qemu` runs it");
    std::process::exit(2);
}
