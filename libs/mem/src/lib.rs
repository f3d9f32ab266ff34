//! The C memory functions the host triple's precompiled `core` and
//! `alloc` call (TOOLCHAIN.md: its builtins lack them), and the unwinder
//! entry they reference, for strata's bare-metal user programs and guests.
//! Host builds get them from libc instead.

#![no_std]

#[cfg(strata_baremetal)]
mod functions {
    /// `memcpy` for bare-metal programs (the host triple's builtins lack it),
    /// eight bytes at a time and then the rest.
    ///
    /// # Safety
    /// As for C `memcpy`.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
        // SAFETY: valid, disjoint ranges (precondition); DF clear (ABI).
        unsafe {
            core::arch::asm!(
                "rep movsq",
                "mov rcx, {bytes}",
                "rep movsb",
                bytes = in(reg) n % 8,
                inout("rcx") n / 8 => _, inout("rdi") dest => _, inout("rsi") src => _,
                options(nostack, preserves_flags),
            )
        };
        dest
    }

    /// `memmove` for bare-metal programs.
    ///
    /// # Safety
    /// As for C `memmove`.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
        if (dest as usize).wrapping_sub(src as usize) >= n {
            // SAFETY: a forward copy never overwrites bytes not yet read here.
            return unsafe { memcpy(dest, src, n) };
        }
        for i in (0..n).rev() {
            // SAFETY: both ranges are valid for `n` bytes (precondition).
            unsafe { dest.add(i).write_volatile(src.add(i).read_volatile()) };
        }
        dest
    }

    /// `memset` for bare-metal programs.
    ///
    /// # Safety
    /// As for C `memset`.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn memset(dest: *mut u8, value: i32, n: usize) -> *mut u8 {
        // SAFETY: a valid range (precondition); DF clear (ABI).
        unsafe {
            core::arch::asm!(
                "rep stosq",
                "mov rcx, {bytes}",
                "rep stosb",
                bytes = in(reg) n % 8,
                inout("rcx") n / 8 => _, inout("rdi") dest => _,
                in("rax") u64::from(value as u8) * 0x0101_0101_0101_0101,
                options(nostack, preserves_flags),
            )
        };
        dest
    }

    /// `memcmp` for bare-metal programs.
    ///
    /// # Safety
    /// As for C `memcmp`.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
        for i in 0..n {
            // SAFETY: both ranges are valid for `n` bytes (precondition).
            let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
            if x != y {
                return i32::from(x) - i32::from(y);
            }
        }
        0
    }

    /// `bcmp` for bare-metal programs.
    ///
    /// # Safety
    /// As for C `bcmp`.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
        // SAFETY: same contract.
        unsafe { memcmp(a, b, n) }
    }

    /// Referenced by the precompiled `alloc` (its landing pads); never
    /// reached with `panic = "abort"`.
    #[unsafe(no_mangle)]
    pub extern "C" fn _Unwind_Resume() -> ! {
        loop {
            core::hint::spin_loop();
        }
    }
}
