//! The virtual CPU model: what CPUID returns to the guest.
//!
//! It is the host CPU's answer with what the guest must not believe
//! removed, so that the same guest sees a consistent CPU on every exit:
//!
//! - the hypervisor-present bit (leaf 1 ECX bit 31) is set, and leaves
//!   4000_0000h and up identify strata;
//! - hardware virtualization is hidden (VMX, leaf 1 ECX bit 5; SVM, leaf
//!   8000_0001h ECX bit 2): the guest gets no nested virtualization yet;
//! - x2APIC, the TSC deadline timer, MONITOR/MWAIT and performance
//!   monitoring are hidden: this VMM does not emulate them;
//! - XSAVE and everything that needs it (AVX, AVX2, AVX-512, FMA, F16C and
//!   leaf 0Dh) are hidden: strata switches guest FPU state with FXSAVE, so
//!   a guest gets x87 and SSE state, which is what survives its exits;
//! - leaf 1 reports APIC ID 0 and one logical processor;
//! - the highest basic and extended leaves are capped at the ones handled
//!   here, and leaves past them return zeros (AMD APM vol. 3, CPUID; Intel
//!   SDM vol. 2A, CPUID, which for Intel returns the highest basic leaf's
//!   data instead: this model uses zeros on both).

/// EAX, EBX, ECX, EDX.
pub type Registers = [u32; 4];

/// Highest basic leaf offered.
pub const MAX_BASIC: u32 = 0xd;
/// Highest extended leaf offered.
pub const MAX_EXTENDED: u32 = 0x8000_0008;
/// First hypervisor leaf; its EBX, ECX, EDX spell this signature.
pub const SIGNATURE: &[u8; 12] = b"StrataStrata";

/// The guest's CPUID for `leaf` and `subleaf`, given the host's (`host`).
pub fn model(leaf: u32, subleaf: u32, host: impl Fn(u32, u32) -> Registers) -> Registers {
    match leaf {
        0 => {
            let [max, b, c, d] = host(0, 0);
            [max.min(MAX_BASIC), b, c, d]
        }
        1 => {
            let [a, b, c, d] = host(1, 0);
            // EBX: APIC ID 0 (31:24), one logical processor (23:16), keep the rest.
            let b = (b & 0x0000_ffff) | 1 << 16;
            // ECX: hide VMX (5), SMX (6), MONITOR (3), FMA (12), PDCM (15),
            // x2APIC (21), TSC deadline (24), XSAVE (26), OSXSAVE (27),
            // AVX (28), F16C (29); set hypervisor (31).
            let hidden = 1 << 3 | 1 << 5 | 1 << 6 | 1 << 12 | 1 << 15 | 1 << 21 | 1 << 24 | 0xf << 26;
            let c = c & !hidden | 1 << 31;
            // EDX: hide ACPI thermal (22), TM (29), PBE (31); keep HTT off.
            let d = d & !(1 << 22 | 1 << 29 | 1 << 31 | 1 << 28);
            [a, b, c, d]
        }
        // Structured extended features: no AVX2 (EBX 5), no AVX-512 (EBX 16,
        // 17, 21, 26-28, 30, 31; ECX 1, 6, 11, 12, 14; EDX 2, 3, 8, 23).
        7 if subleaf == 0 => {
            let [a, b, c, d] = host(7, 0);
            let b = b & !(1 << 5 | 1 << 16 | 1 << 17 | 1 << 21 | 0x7 << 26 | 1 << 30 | 1 << 31);
            let c = c & !(1 << 1 | 1 << 6 | 1 << 11 | 1 << 12 | 1 << 14);
            let d = d & !(1 << 2 | 1 << 3 | 1 << 8 | 1 << 23);
            [a, b, c, d]
        }
        // Architectural performance monitoring and XSAVE state: none.
        0xa | 0xd => [0; 4],
        2..=MAX_BASIC => host(leaf, subleaf),
        0x4000_0000 => {
            let word = |i: usize| {
                u32::from_le_bytes([SIGNATURE[i], SIGNATURE[i + 1], SIGNATURE[i + 2], SIGNATURE[i + 3]])
            };
            [0x4000_0001, word(0), word(4), word(8)]
        }
        // Hypervisor features: none yet.
        0x4000_0001 => [0; 4],
        0x8000_0000 => {
            let [max, b, c, d] = host(0x8000_0000, 0);
            [max.min(MAX_EXTENDED), b, c, d]
        }
        0x8000_0001 => {
            let [a, b, c, d] = host(0x8000_0001, 0);
            // ECX: hide SVM (2) and the extended APIC space (3).
            [a, b, c & !(1 << 2 | 1 << 3), d]
        }
        0x8000_0002..=MAX_EXTENDED if host(0x8000_0000, 0)[0] >= leaf => host(leaf, subleaf),
        _ => [0; 4],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(leaf: u32, _subleaf: u32) -> Registers {
        match leaf {
            0 => [0x16, 0x6874_7541, 0x444d_4163, 0x6974_6e65],
            1 => [0x000a_0f10, 0x0f08_0800, 0xffff_ffff, 0xffff_ffff],
            0x8000_0000 => [0x8000_0021, 0, 0, 0],
            0x8000_0001 => [0, 0, 0xffff_ffff, 0xffff_ffff],
            _ => [leaf, leaf, leaf, leaf],
        }
    }

    #[test]
    fn the_hypervisor_is_announced_and_virtualization_hidden() {
        let [_, b, c, _] = model(1, 0, host);
        assert_ne!(c & 1 << 31, 0);
        assert_eq!(c & (1 << 5 | 1 << 21), 0);
        assert_eq!(b >> 24, 0, "APIC ID 0");
        assert_eq!(model(0x8000_0001, 0, host)[2] & 1 << 2, 0, "no SVM");
        assert_eq!(c & (0xf << 26), 0, "no XSAVE, OSXSAVE, AVX or F16C");
        assert_eq!(model(7, 0, host)[1] & (1 << 5 | 1 << 16), 0, "no AVX2 or AVX-512");
        assert_eq!(model(0xd, 0, host), [0; 4]);
        let [max, b, c, d] = model(0x4000_0000, 0, host);
        assert_eq!(max, 0x4000_0001);
        let mut signature = [0u8; 12];
        for (i, word) in [b, c, d].iter().enumerate() {
            signature[4 * i..4 * i + 4].copy_from_slice(&word.to_le_bytes());
        }
        assert_eq!(&signature, SIGNATURE);
    }

    #[test]
    fn leaves_are_capped_and_the_vendor_kept() {
        assert_eq!(model(0, 0, host), [MAX_BASIC, 0x6874_7541, 0x444d_4163, 0x6974_6e65]);
        assert_eq!(model(0x8000_0000, 0, host)[0], MAX_EXTENDED);
        assert_eq!(model(MAX_BASIC + 1, 0, host), [0; 4]);
        assert_eq!(model(0x8000_0009, 0, host), [0; 4]);
        assert_eq!(model(4, 1, host), [4; 4]);
    }
}
