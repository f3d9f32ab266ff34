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
//! - XSAVE is offered with the x87, SSE and AVX state components the host
//!   enabled (strata switches guest FPU state with XSAVE under the guest's
//!   own XCR0), and with them AVX, AVX2, FMA and F16C. OSXSAVE mirrors the
//!   guest's CR4.OSXSAVE, and leaf 0Dh's sizes follow its XCR0 (Intel SDM
//!   vol. 1 §13.2). Of leaf 0Dh sub-leaf 1, XSAVEOPT, XSAVEC and XGETBV
//!   with ECX = 1 are offered where the host has them (they run in the
//!   guest on its own XCR0 and need nothing switched); XSAVES is hidden,
//!   since IA32_XSS is not emulated. AVX-512, AMX, MPX and PKU are hidden;
//! - leaf 1 reports APIC ID 0 and one logical processor, leaf 4 one core
//!   and one logical processor per cache, and leaves 5 (MONITOR), 6
//!   (thermal and power) and 0Bh (x2APIC topology) are empty, so no host
//!   topology shows through;
//! - 5-level paging (LA57) is hidden: the VMM walks 4-level tables;
//! - the highest basic and extended leaves are capped at the ones handled
//!   here, and leaves past them return zeros (AMD APM vol. 3, CPUID; Intel
//!   SDM vol. 2A, CPUID, which for Intel returns the highest basic leaf's
//!   data instead: this model uses zeros on both).

/// EAX, EBX, ECX, EDX.
pub type Registers = [u32; 4];

/// Leaf 0Dh sub-leaf 1 EAX bits offered: XSAVEOPT (0), XSAVEC (1) and
/// XGETBV with ECX = 1 (2); not XSAVES (3).
const XSAVE_VARIANTS: u32 = 0b0111;

/// Highest basic leaf offered.
pub const MAX_BASIC: u32 = 0xd;
/// Highest extended leaf offered.
pub const MAX_EXTENDED: u32 = 0x8000_0008;
/// First hypervisor leaf; its EBX, ECX, EDX spell this signature.
pub const SIGNATURE: &[u8; 12] = b"StrataStrata";

/// The size of the XSAVE legacy area and header: x87 and SSE state.
const XSAVE_LEGACY_BYTES: u32 = 576;
/// XCR0's x87, SSE and AVX bits.
pub const XCR0_X87_SSE_AVX: u64 = 0b111;

/// The guest state some CPUID leaves depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XsaveState {
    /// The guest's CR4.OSXSAVE (leaf 1 ECX bit 27 reports it).
    pub osxsave: bool,
    /// The guest's XCR0 (leaf 0Dh sub-leaf 0 EBX is its XSAVE image's size).
    pub xcr0: u64,
    /// The host's XCR0: the components a guest may enable.
    pub host_xcr0: u64,
}

impl XsaveState {
    /// The components offered to the guest: the host's x87, SSE and AVX.
    pub fn supported(self) -> u64 {
        self.host_xcr0 & XCR0_X87_SSE_AVX
    }

    /// Whether XSETBV may load `value` into XCR0 (`ecx` 0): x87 always,
    /// AVX only with SSE, nothing unsupported (SDM vol. 2B, XSETBV).
    pub fn xsetbv_allowed(self, ecx: u32, value: u64) -> bool {
        ecx == 0 && value & 1 == 1 && value & 0b110 != 0b100 && value & !self.supported() == 0
    }
}

/// The guest's CPUID for `leaf` and `subleaf`, given its XSAVE state and
/// the host's CPUID (`host`).
pub fn model(leaf: u32, subleaf: u32, xsave: XsaveState, host: impl Fn(u32, u32) -> Registers) -> Registers {
    let avx = xsave.supported() & 0b100 != 0;
    match leaf {
        0 => {
            let [max, b, c, d] = host(0, 0);
            [max.min(MAX_BASIC), b, c, d]
        }
        1 => {
            let [a, b, c, d] = host(1, 0);
            // EBX: APIC ID 0 (31:24), one logical processor (23:16), keep the rest.
            let b = (b & 0x0000_ffff) | 1 << 16;
            // ECX: hide VMX (5), SMX (6), MONITOR (3), PDCM (15), x2APIC
            // (21), TSC deadline (24), and FMA (12), AVX (28) and F16C (29)
            // without AVX state; OSXSAVE (27) is the guest's; set
            // hypervisor (31). XSAVE (26) stays: the kernel needs it.
            let mut hidden = 1 << 3 | 1 << 5 | 1 << 6 | 1 << 15 | 1 << 21 | 1 << 24 | 1 << 27;
            if !avx {
                hidden |= 1 << 12 | 1 << 28 | 1 << 29;
            }
            let c = c & !hidden | u32::from(xsave.osxsave) << 27 | 1 << 31;
            // EDX: hide ACPI thermal (22), TM (29), PBE (31); keep HTT off.
            let d = d & !(1 << 22 | 1 << 29 | 1 << 31 | 1 << 28);
            [a, b, c, d]
        }
        // Structured extended features, sub-leaf 0 only: AVX2 (EBX 5) with
        // AVX state; no MPX (EBX 14), AVX-512 (EBX 16, 17, 21, 26-28, 30,
        // 31; ECX 1, 6, 11, 12, 14; EDX 2, 3, 8, 23), PKU (ECX 3, 4) or
        // AMX (EDX 22, 24, 25), whose state is not switched.
        7 if subleaf == 0 => {
            let [_, b, c, d] = host(7, 0);
            let avx2 = if avx { 0 } else { 1 << 5 };
            let b = b & !(avx2 | 1 << 14 | 1 << 16 | 1 << 17 | 1 << 21 | 0x7 << 26 | 1 << 30 | 1 << 31);
            // VAES and VPCLMULQDQ (ECX 9, 10) are VEX-encoded: AVX state.
            let vex = if avx { 0 } else { 1 << 9 | 1 << 10 };
            // LA57 (ECX 16): this VMM walks 4-level page tables only.
            let c = c & !(vex | 1 << 1 | 1 << 3 | 1 << 4 | 1 << 6 | 1 << 11 | 1 << 12 | 1 << 14 | 1 << 16);
            let d = d & !(1 << 2 | 1 << 3 | 1 << 8 | 1 << 22 | 1 << 23 | 1 << 24 | 1 << 25);
            [0, b, c, d]
        }
        7 => [0; 4],
        // XSAVE state: the components offered, and image sizes for the
        // guest's XCR0 (EBX) and for all of them (ECX); AVX's size and
        // offset as the host has them. Sub-leaf 1: XSAVEOPT, XSAVEC and
        // XGETBV 1 as the host has them, and the compacted size for XCR0
        // (the same as the standard one for x87, SSE and AVX).
        0xd => {
            let [avx_size, avx_offset, _, _] = host(0xd, 2);
            let size = |xcr0: u64| if xcr0 & 0b100 != 0 { avx_offset + avx_size } else { XSAVE_LEGACY_BYTES };
            match subleaf {
                0 => [xsave.supported() as u32, size(xsave.xcr0), size(xsave.supported()), 0],
                1 => [host(0xd, 1)[0] & XSAVE_VARIANTS, size(xsave.xcr0), 0, 0],
                2 if avx => [avx_size, avx_offset, 0, 0],
                _ => [0; 4],
            }
        }
        // Caches as the host has them, shared by one logical processor in
        // a package of one core (EAX 25:14 and 31:26 hold counts minus 1).
        4 => {
            let [a, b, c, d] = host(4, subleaf);
            [a & 0x3fff, b, c, d]
        }
        // MONITOR/MWAIT (hidden), thermal and power management, and the
        // extended topology (x2APIC IDs, hidden with x2APIC): none, so
        // that no host topology or power feature shows through.
        5 | 6 | 0xb => [0; 4],
        // Architectural performance monitoring: none.
        0xa => [0; 4],
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

    fn host(leaf: u32, subleaf: u32) -> Registers {
        match leaf {
            0xd if subleaf == 2 => [256, 576, 0, 0],
            0xd if subleaf == 1 => [0b1111, 1088, 0x100, 0],
            7 => [1, u32::MAX, u32::MAX, u32::MAX],
            // An L1 data cache shared by two threads of an 8-core package.
            4 => [0x1c00_4121, 0x01c0_003f, 0x3f, 0],
            0 => [0x16, 0x6874_7541, 0x444d_4163, 0x6974_6e65],
            1 => [0x000a_0f10, 0x0f08_0800, 0xffff_ffff, 0xffff_ffff],
            0x8000_0000 => [0x8000_0021, 0, 0, 0],
            0x8000_0001 => [0, 0, 0xffff_ffff, 0xffff_ffff],
            _ => [leaf, leaf, leaf, leaf],
        }
    }

    /// A guest that has not turned XSAVE on, on a host with AVX.
    const FRESH: XsaveState = XsaveState { osxsave: false, xcr0: 1, host_xcr0: 0b111 };

    fn model(leaf: u32, subleaf: u32, host: impl Fn(u32, u32) -> Registers) -> Registers {
        super::model(leaf, subleaf, FRESH, host)
    }

    #[test]
    fn xsave_follows_the_guest_and_the_host() {
        let [_, _, c, _] = model(1, 0, host);
        assert_eq!(c >> 26 & 0xf, 0b1101, "XSAVE, AVX and F16C; OSXSAVE clear");
        let on = XsaveState { osxsave: true, xcr0: 0b111, ..FRESH };
        assert_ne!(super::model(1, 0, on, host)[2] & 1 << 27, 0, "OSXSAVE mirrors CR4");
        assert_ne!(model(7, 0, host)[1] & 1 << 5, 0, "AVX2");
        // Sizes: legacy area and header for x87 (and SSE), plus AVX when on.
        assert_eq!(model(0xd, 0, host), [0b111, 576, 832, 0]);
        assert_eq!(super::model(0xd, 0, on, host), [0b111, 832, 832, 0]);
        assert_eq!(model(0xd, 1, host), [0b0111, 576, 0, 0], "XSAVEOPT, XSAVEC, XGETBV 1; not XSAVES");
        assert_eq!(super::model(0xd, 1, on, host)[1], 832, "the compacted size follows XCR0");
        let without_xsavec =
            |leaf, subleaf| if (leaf, subleaf) == (0xd, 1) { [0b1101, 0, 0, 0] } else { host(leaf, subleaf) };
        assert_eq!(model(0xd, 1, without_xsavec)[0], 0b0101, "only what the host has");
        assert_eq!(model(0xd, 2, host), [256, 576, 0, 0]);
        // A host without AVX state offers none.
        let sse_only = XsaveState { host_xcr0: 0b011, ..FRESH };
        assert_eq!(super::model(1, 0, sse_only, host)[2] >> 28 & 0b11, 0, "no AVX or F16C");
        assert_eq!(super::model(1, 0, sse_only, host)[2] & 1 << 12, 0, "no FMA");
        assert_eq!(super::model(7, 0, sse_only, host)[1] & 1 << 5, 0, "no AVX2");
        assert_eq!(super::model(7, 0, sse_only, host)[2] & (1 << 9 | 1 << 10), 0, "no VAES or VPCLMULQDQ");
        assert_eq!(super::model(0xd, 0, sse_only, host), [0b011, 576, 576, 0]);
        assert_eq!(super::model(0xd, 2, sse_only, host), [0; 4]);
    }

    #[test]
    fn xsetbv_takes_only_valid_xcr0_values() {
        assert!(FRESH.xsetbv_allowed(0, 0b111));
        assert!(FRESH.xsetbv_allowed(0, 0b011));
        assert!(FRESH.xsetbv_allowed(0, 0b001));
        assert!(!FRESH.xsetbv_allowed(1, 0b111), "only XCR0 exists");
        assert!(!FRESH.xsetbv_allowed(0, 0b110), "x87 must stay on");
        assert!(!FRESH.xsetbv_allowed(0, 0b101), "AVX needs SSE");
        assert!(!FRESH.xsetbv_allowed(0, 0b1111), "not offered");
        assert!(!XsaveState { host_xcr0: 0b011, ..FRESH }.xsetbv_allowed(0, 0b111));
    }

    #[test]
    fn the_hypervisor_is_announced_and_virtualization_hidden() {
        let [_, b, c, _] = model(1, 0, host);
        assert_ne!(c & 1 << 31, 0);
        assert_eq!(c & (1 << 5 | 1 << 21), 0);
        assert_eq!(b >> 24, 0, "APIC ID 0");
        assert_eq!(model(0x8000_0001, 0, host)[2] & 1 << 2, 0, "no SVM");
        assert_eq!(model(7, 0, host)[1] & (1 << 14 | 1 << 16), 0, "no MPX or AVX-512");
        assert_eq!(model(7, 0, host)[2] & (1 << 3), 0, "no PKU");
        assert_eq!(model(7, 1, host), [0; 4], "sub-leaf 0 only");
        assert_eq!(model(7, 0, host)[2] & (1 << 16), 0, "no LA57");
        for leaf in [5, 6, 0xb] {
            assert_eq!(model(leaf, 0, host), [0; 4], "leaf {leaf:#x} is empty");
        }
        assert_eq!(model(4, 0, host)[0] >> 14, 0, "one core, one logical processor per cache");
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
        assert_eq!(model(2, 0, host), [2; 4], "passed through below the cap");
    }
}
