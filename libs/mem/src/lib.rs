//! The C functions the host triple's precompiled `core` and `alloc` call
//! (TOOLCHAIN.md: its `compiler_builtins` lacks them): `memcpy`, `memmove`,
//! `memset`, `memcmp`, `bcmp` and `strlen`, and the unwinding entries they
//! reference, for every bare-metal program of strata: the kernel, the
//! loader, user programs and test guests. Each body is a string
//! instruction in inline assembly, so that LLVM cannot recognise the loop
//! and turn it back into a call to the function being defined. Host builds
//! get all of this from libc and the standard library instead.

#![no_std]

#[cfg(strata_baremetal)]
mod functions {
    /// Copies `n` bytes from `src` to `dest`; the ranges must not overlap.
    ///
    /// # Safety
    /// `src` is valid for `n` reads, `dest` for `n` writes, and they do not overlap.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
        // Eight bytes at a time, then the rest: a tenth of the iterations of
        // `rep movsb` under QEMU's instruction counting, and no slower on hardware.
        // SAFETY: the ranges are valid and disjoint (precondition); DF is clear
        // (the SysV ABI guarantees it at function entry).
        unsafe {
            core::arch::asm!(
                "rep movsq",
                "mov rcx, {bytes}",
                "rep movsb",
                bytes = in(reg) n % 8,
                inout("rcx") n / 8 => _, inout("rdi") dest => _, inout("rsi") src => _,
                options(nostack, preserves_flags),
            );
        }
        dest
    }

    /// Copies `n` bytes from `src` to `dest`; the ranges may overlap.
    ///
    /// # Safety
    /// `src` is valid for `n` reads and `dest` for `n` writes.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
        if (dest as usize).wrapping_sub(src as usize) >= n {
            // Forward copy is safe: dest is below src, or beyond the end of src.
            // SAFETY: as for `memcpy`; a forward copy never reads a byte it has already written.
            unsafe { memcpy(dest, src, n) }
        } else {
            // dest overlaps the tail of src: copy backwards with DF set.
            // SAFETY: the ranges are valid (precondition); DF is restored before returning.
            unsafe {
                core::arch::asm!(
                    "std",
                    "rep movsb",
                    "cld",
                    inout("rcx") n => _,
                    inout("rdi") dest.add(n).wrapping_sub(1) => _,
                    inout("rsi") src.add(n).wrapping_sub(1) => _,
                    options(nostack),
                );
            }
            dest
        }
    }

    /// Fills `n` bytes at `dest` with the low byte of `value`.
    ///
    /// # Safety
    /// `dest` is valid for `n` writes.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn memset(dest: *mut u8, value: i32, n: usize) -> *mut u8 {
        // Eight bytes at a time, then the rest (as in `memcpy`).
        let pattern = u64::from(value as u8) * 0x0101_0101_0101_0101;
        // SAFETY: the range is valid (precondition); DF is clear (SysV ABI).
        unsafe {
            core::arch::asm!(
                "rep stosq",
                "mov rcx, {bytes}",
                "rep stosb",
                bytes = in(reg) n % 8,
                inout("rcx") n / 8 => _, inout("rdi") dest => _, in("rax") pattern,
                options(nostack, preserves_flags),
            );
        }
        dest
    }

    /// Compares `n` bytes; returns the difference of the first differing pair.
    ///
    /// # Safety
    /// `a` and `b` are valid for `n` reads.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
        if n == 0 {
            return 0;
        }
        let remaining: usize;
        // SAFETY: both ranges are valid for `n` reads (precondition); DF is clear.
        unsafe {
            core::arch::asm!(
                "repe cmpsb",
                inout("rcx") n => remaining, inout("rsi") a => _, inout("rdi") b => _,
                options(nostack, readonly),
            );
        }
        // `repe cmpsb` stops one past the first differing byte (or at the end).
        let index = n - remaining - 1;
        // SAFETY: `index < n`, inside both ranges.
        let (x, y) = unsafe { (*a.add(index), *b.add(index)) };
        i32::from(x) - i32::from(y)
    }

    /// Compares `n` bytes for equality only.
    ///
    /// # Safety
    /// `a` and `b` are valid for `n` reads.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
        // SAFETY: same preconditions as `memcmp`.
        unsafe { memcmp(a, b, n) }
    }

    /// Length of the NUL-terminated string at `s` (used by `CStr::from_ptr`).
    ///
    /// # Safety
    /// `s` points to readable memory containing a NUL byte.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn strlen(s: *const u8) -> usize {
        let remaining: usize;
        // SAFETY: the string is readable up to its NUL (precondition); DF is clear.
        unsafe {
            core::arch::asm!(
                "repne scasb",
                inout("rcx") usize::MAX => remaining, inout("rdi") s => _, in("al") 0u8,
                options(nostack, readonly),
            );
        }
        // RCX counted down once per byte scanned, NUL included.
        usize::MAX - remaining - 1
    }

    /// Referenced by the precompiled `core`; never called with `panic = "abort"`.
    #[unsafe(no_mangle)]
    pub extern "C" fn rust_eh_personality() {}

    /// Referenced by the precompiled `alloc` (its unwinding landing pads); never
    /// reached with `panic = "abort"`.
    #[unsafe(no_mangle)]
    pub extern "C" fn _Unwind_Resume() -> ! {
        loop {
            core::hint::spin_loop();
        }
    }
}
