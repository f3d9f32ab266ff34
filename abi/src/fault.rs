//! Fault messages: what the kernel sends a thread's fault endpoint when the
//! thread faults. The thread waits for the reply, which resumes it (with
//! whatever registers the handler set with `TcbWriteRegisters`); a handler
//! that does not reply leaves it stopped.
//!
//! A fault message is a call with one of the labels below and
//! [`WORDS`] words.

/// Label: an exception in user mode. Words: vector, error code, RIP, CR2
/// (the faulting address, for a page fault), RSP.
pub const EXCEPTION: u64 = 1;
/// Label: an unknown system call, or IPC through a capability that cannot
/// do it. Words: RAX (the system call number), RDI (the capability
/// pointer), RIP (after the `syscall`), 0, RSP.
pub const SYSCALL: u64 = 2;
/// Words of every fault message.
pub const WORDS: usize = 5;

/// Mnemonic and description of each architectural exception vector
/// (Intel SDM vol. 3A §6.15, AMD APM vol. 2 §8.2).
pub fn exception_name(vector: u64) -> (&'static str, &'static str) {
    match vector {
        0 => ("#DE", "divide error"),
        1 => ("#DB", "debug"),
        2 => ("NMI", "non-maskable interrupt"),
        3 => ("#BP", "breakpoint"),
        4 => ("#OF", "overflow"),
        5 => ("#BR", "bound range exceeded"),
        6 => ("#UD", "invalid opcode"),
        7 => ("#NM", "device not available"),
        8 => ("#DF", "double fault"),
        10 => ("#TS", "invalid TSS"),
        11 => ("#NP", "segment not present"),
        12 => ("#SS", "stack-segment fault"),
        13 => ("#GP", "general protection"),
        14 => ("#PF", "page fault"),
        16 => ("#MF", "x87 floating-point error"),
        17 => ("#AC", "alignment check"),
        18 => ("#MC", "machine check"),
        19 => ("#XM", "SIMD floating-point exception"),
        20 => ("#VE", "virtualization exception"),
        21 => ("#CP", "control protection"),
        28 => ("#HV", "hypervisor injection"),
        29 => ("#VC", "VMM communication"),
        30 => ("#SX", "security exception"),
        _ => ("#??", "reserved exception"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_vector_has_a_name() {
        assert_eq!(exception_name(6), ("#UD", "invalid opcode"));
        assert_eq!(exception_name(14).0, "#PF");
        for vector in 0..=255 {
            assert!(exception_name(vector).0.starts_with('#') || vector == 2);
        }
    }
}
