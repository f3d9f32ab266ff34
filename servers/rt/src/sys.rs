//! The system-call layer: the only `unsafe` in strata-rt.
//!
//! This module holds the system-call instruction, the IPC buffer and
//! boot-info page the kernel maps, and, for bare-metal builds, the entry
//! point, the `mem*` functions and the panic handler.

#![allow(unsafe_code)]

use core::sync::atomic::{AtomicU64, Ordering};

use strata_abi::bootinfo::{BootInfo, IpcBuffer, ModuleDescriptor, slot};
use strata_abi::error::InvocationError;
use strata_abi::syscall::Syscall;

/// The boot-info address the kernel passed at entry (RDI), or 0.
static BOOT_INFO: AtomicU64 = AtomicU64::new(0);
/// Where this program's threads have their IPC buffers (the root task's
/// address; other threads map theirs at the same address in their space).
static IPC_BUFFER: AtomicU64 = AtomicU64::new(0);

/// Makes a system call: `number` in RAX, `rdi`, `rsi` (message info) and
/// message words 0–7 in RDX, R8, R9, R10, R12, R13, R14, R15. Returns RSI
/// and message words 0–7 of the reply.
pub fn syscall(number: Syscall, rdi: u64, rsi: u64, words: [u64; 8]) -> (u64, [u64; 8]) {
    let (_, info, words) = syscall_with_badge(number, rdi, rsi, words);
    (info, words)
}

/// As [`syscall`], also returning RDI (the badge of a received message).
#[inline(always)]
pub fn syscall_with_badge(number: Syscall, rdi: u64, rsi: u64, words: [u64; 8]) -> (u64, u64, [u64; 8]) {
    raw_syscall(number as u64, rdi, rsi, words)
}

/// As [`syscall_with_badge`], with any number in RAX: for testing how the
/// kernel takes numbers it does not know (it faults the thread).
#[inline(always)]
pub fn raw_syscall(number: u64, rdi: u64, rsi: u64, words: [u64; 8]) -> (u64, u64, [u64; 8]) {
    let (badge, info, w0, w1, w2, w3, w4, w5, w6, w7);
    // SAFETY: the `syscall` instruction enters the kernel, which returns with
    // only RAX, RCX, R11 and the reply registers changed, as declared here.
    // It touches no memory the compiler knows about except the IPC buffer,
    // which is only read through volatile accesses.
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") number => _,
            inlateout("rdi") rdi => badge,
            inlateout("rsi") rsi => info,
            inlateout("rdx") words[0] => w0,
            inlateout("r8") words[1] => w1,
            inlateout("r9") words[2] => w2,
            inlateout("r10") words[3] => w3,
            inlateout("r12") words[4] => w4,
            inlateout("r13") words[5] => w5,
            inlateout("r14") words[6] => w6,
            inlateout("r15") words[7] => w7,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    (badge, info, [w0, w1, w2, w3, w4, w5, w6, w7])
}

/// `VmEnter` with `flags` in RDX: returns RSI (the reply's message info)
/// and its four words (RDX, R8, R9, R10). The kernel changes no other
/// register but RAX, RCX and R11, so unlike [`syscall`] this neither
/// sets nor reads the other message registers.
#[inline(always)]
pub fn vm_enter(flags: u64) -> (u64, [u64; 4]) {
    let (info, w0, w1, w2, w3);
    // SAFETY: as for `raw_syscall`; `VmEnter` writes RSI and message words
    // 0–3 and nothing else (docs/abi.md), and RDI is declared changed too.
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") Syscall::VmEnter as u64 => _,
            inlateout("rdx") flags => w0,
            lateout("rdi") _,
            lateout("rsi") info,
            lateout("r8") w1,
            lateout("r9") w2,
            lateout("r10") w3,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    (info, [w0, w1, w2, w3])
}

/// The time-stamp counter (under QEMU `-icount shift=0`: instructions executed).
pub fn timestamp() -> u64 {
    // SAFETY: RDTSC has no preconditions in user mode while CR4.TSD is clear,
    // which the kernel never sets.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[inline(always)]
fn ipc_buffer() -> *mut IpcBuffer {
    IPC_BUFFER.load(Ordering::Relaxed) as *mut IpcBuffer
}

/// The address every thread of this program keeps its IPC buffer at.
#[inline]
pub fn ipc_buffer_address() -> u64 {
    IPC_BUFFER.load(Ordering::Relaxed)
}

/// The IPC buffer's message word `first`, and how many of `wanted` words
/// from there fit in the buffer's 120.
#[inline(always)]
fn message_slice(first: usize, wanted: usize) -> (*mut u64, usize) {
    let count = wanted.min(120usize.saturating_sub(first));
    // In bounds when `count` is not 0; never dereferenced otherwise.
    let message = core::mem::offset_of!(IpcBuffer, message) / 8;
    let start = ipc_buffer().cast::<u64>().wrapping_add(message + first);
    (start, count)
}

/// Writes message words `first..` of the next message into the IPC buffer
/// (those past the 120th are dropped), word by word: a whole-slice copy
/// would become `memcpy`.
#[inline(always)]
pub fn set_message_words(first: usize, words: &[u64]) {
    let (start, count) = message_slice(first, words.len());
    for (i, &word) in words[..count].iter().enumerate() {
        // SAFETY: the kernel maps the IPC buffer read-write at the address the
        // boot info gives; `first + i` is below 120, inside the message array.
        unsafe { start.add(i).write_volatile(word) };
    }
}

/// Word `index` (below 18) of the IPC buffer's VCPU register block.
#[inline(always)]
pub(crate) fn vcpu_word(index: usize) -> u64 {
    assert!(index < strata_abi::vcpu::REGISTER_BLOCK_WORDS, "field {index} is not in the register block");
    // SAFETY: the kernel maps the IPC buffer read-write at the address the
    // boot info gives; `vcpu` is inside it and `index` inside `vcpu`.
    unsafe { (&raw mut (*ipc_buffer()).vcpu).cast::<u64>().add(index).read_volatile() }
}

/// Sets word `index` (below 18) of the IPC buffer's VCPU register block.
#[inline(always)]
pub(crate) fn set_vcpu_word(index: usize, value: u64) {
    assert!(index < strata_abi::vcpu::REGISTER_BLOCK_WORDS, "field {index} is not in the register block");
    // SAFETY: as for `vcpu_word`.
    unsafe { (&raw mut (*ipc_buffer()).vcpu).cast::<u64>().add(index).write_volatile(value) }
}

/// Reads message words `first..` of the last received message or reply
/// from the IPC buffer into `out` (those past the 120th are left alone).
#[inline(always)]
pub fn message_words(first: usize, out: &mut [u64]) {
    let (start, count) = message_slice(first, out.len());
    for (i, word) in out[..count].iter_mut().enumerate() {
        // SAFETY: as for `set_message_words`; the kernel wrote the words
        // before returning from the system call.
        *word = unsafe { start.add(i).read_volatile() };
    }
}

/// Names the empty slot a received capability goes into: slot `index` at
/// `depth` in the CNode `cnode` (a capability pointer in this thread's
/// CSpace). It stays set for every later receive.
pub fn set_receive_slot(cnode: u64, index: u64, depth: u64) {
    let buffer = ipc_buffer();
    // SAFETY: the kernel maps the IPC buffer read-write at the address the
    // boot info gives, for this thread's whole life.
    unsafe {
        (&raw mut (*buffer).receive_cnode).write_volatile(cnode);
        (&raw mut (*buffer).receive_index).write_volatile(index);
        (&raw mut (*buffer).receive_depth).write_volatile(depth);
    }
}

/// Puts the capability pointers of an invocation's extra capabilities in
/// the IPC buffer.
#[inline]
pub fn set_extra_caps(caps: &[u64]) {
    if caps.is_empty() {
        return;
    }
    let buffer = ipc_buffer();
    for (i, &cap) in caps.iter().enumerate().take(3) {
        // SAFETY: the kernel maps the IPC buffer read-write at the address the
        // boot info gives, for this thread's whole life.
        unsafe { (&raw mut (*buffer).caps_or_badges[i]).write_volatile(cap) };
    }
}

/// Where [`fill_frame`] maps the frame it fills, in this task's address
/// space. The SDK reserves this page; programs must not map anything there.
pub const SCRATCH_ADDRESS: u64 = 0x5000_0000_0000;

static SCRATCH: spin::Mutex<bool> = spin::Mutex::new(false);

/// Writes `bytes` into the (unmapped) 4 KiB frame `frame`: maps it
/// read-write at [`SCRATCH_ADDRESS`], copies, and unmaps it again.
pub fn fill_frame(frame: u64, bytes: &[u8; 4096]) -> Result<(), InvocationError> {
    use strata_abi::object::Rights;
    let mut tables_ready = SCRATCH.lock();
    if !*tables_ready {
        crate::root::tables_for(slot::VSPACE, SCRATCH_ADDRESS)?;
        *tables_ready = true;
    }
    crate::root::map_frame(frame, slot::VSPACE, SCRATCH_ADDRESS, Rights::READ | Rights::WRITE, 0)?;
    // SAFETY: the frame was just mapped read-write at the scratch page,
    // which nothing else uses (the SDK reserves it, and the lock held here
    // serialises its users); the page is 4 KiB.
    unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), SCRATCH_ADDRESS as *mut u8, 4096) };
    crate::call(frame, strata_abi::invocation::Label::FrameUnmap, &[], &[]).map(drop)
}

/// Guest RAM windows: each [`crate::vm::GuestRam`] gets 1 GiB of this
/// task's address space from here up.
pub const GUEST_RAM_BASE: u64 = strata_abi::bootinfo::layout::GUEST_RAM_ADDRESS;
/// How many windows there are.
pub const GUEST_RAM_WINDOWS: u64 = 64;
/// The windows in use, a bit each.
static WINDOWS: AtomicU64 = AtomicU64::new(0);

/// Claims a free 1 GiB window for guest RAM; `None` when all are taken.
pub(crate) fn claim_guest_window() -> Option<u64> {
    let mut taken = WINDOWS.load(Ordering::Relaxed);
    loop {
        let n = u64::from((!taken).trailing_zeros());
        if n >= GUEST_RAM_WINDOWS {
            return None;
        }
        match WINDOWS.compare_exchange(taken, taken | 1 << n, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Some(GUEST_RAM_BASE + (n << 30)),
            Err(now) => taken = now,
        }
    }
}

/// Gives back a window whose mappings are gone (its `GuestRam` released).
pub(crate) fn release_guest_window(window: u64) {
    let n = (window - GUEST_RAM_BASE) >> 30;
    WINDOWS.fetch_and(!(1 << n), Ordering::Relaxed);
}

/// The bytes at `window..window + size`, which the caller has mapped
/// read-write in this task's address space.
///
/// Only [`crate::vm::GuestRam`] calls this, once per window it claimed
/// with [`claim_guest_window`] and mapped in full, and keeps the slice
/// private (lent out only for as long as the `GuestRam` is borrowed), so it
/// is the only reference to that memory in this program (the guest, which
/// shares the frames, runs only while its VMM is in `VmEnter`). The
/// mappings go only when `Guest::release` consumes the `GuestRam`.
pub(crate) fn guest_window(window: u64, size: u64) -> &'static mut [u8] {
    // SAFETY: per the contract above: mapped, read-write, exclusive,
    // `size` bytes long, and unmapped only once the `GuestRam` is gone.
    unsafe { core::slice::from_raw_parts_mut(window as *mut u8, size as usize) }
}

/// The name and bytes of boot module `index` of this task (as listed in
/// its boot-info page), or `None` past the last one.
pub fn module(index: usize) -> Option<(&'static ModuleDescriptor, &'static [u8])> {
    let descriptor = boot_info().modules().get(index)?;
    // SAFETY: the kernel maps each module it lists read-only at `address`
    // for `size` bytes, for the task's whole life.
    let bytes =
        unsafe { core::slice::from_raw_parts(descriptor.address as *const u8, descriptor.size as usize) };
    Some((descriptor, bytes))
}

/// The boot-info page.
pub fn boot_info() -> &'static BootInfo {
    let address = BOOT_INFO.load(Ordering::Relaxed) as *const BootInfo;
    // SAFETY: `_start` stored the address the kernel passed, where it maps
    // the boot-info page read-only for the task's whole life; a program not
    // started by the kernel has no boot info and must not call this.
    unsafe { &*address }
}

#[cfg(strata_baremetal)]
mod bare {
    use super::*;

    core::arch::global_asm!(
        r#"
        .section .text._start, "ax"
        .global _start
    _start:
        andq $-16, %rsp
        xorl %ebp, %ebp
        call rt_start
        ud2
    "#,
        options(att_syntax)
    );

    unsafe extern "Rust" {
        /// The program's main function, named by [`crate::entry!`].
        fn strata_main() -> !;
    }

    #[unsafe(no_mangle)]
    extern "C" fn rt_start(boot_info: u64) -> ! {
        BOOT_INFO.store(boot_info, Ordering::Relaxed);
        // SAFETY: the kernel passes the address of the boot-info page, mapped read-only.
        let ipc_buffer = unsafe { (*(boot_info as *const BootInfo)).ipc_buffer_address };
        IPC_BUFFER.store(ipc_buffer, Ordering::Relaxed);
        // SAFETY: `entry!` defines `strata_main` with this signature.
        unsafe { strata_main() }
    }

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
        use core::fmt::Write;
        // To the console, or (a child process) to the parent's log.
        let mut line = heapless::String::<512>::new();
        let _ = write!(line, "panic: {info}");
        crate::logger::write_line(crate::logger::output(), &line);
        // Panic becomes a fault: an invalid system call, which the kernel
        // reports to the thread's fault handler.
        loop {
            let _ = syscall_raw(u64::MAX);
        }
    }

    fn syscall_raw(number: u64) -> u64 {
        let out;
        // SAFETY: an unknown system call number makes the kernel fault the thread.
        unsafe {
            core::arch::asm!("syscall", inlateout("rax") number => out, lateout("rcx") _, lateout("r11") _)
        };
        out
    }
}

/// Names the program's main function: `strata_rt::entry!(main)`, where
/// `main: fn() -> !`.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        // The one symbol the SDK's entry point calls; programs that deny
        // `unsafe_code` still get it.
        #[allow(unsafe_code)]
        #[unsafe(export_name = "strata_main")]
        fn __strata_main() -> ! {
            $main()
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_windows_are_claimed_lowest_first_and_given_back() {
        let first = claim_guest_window();
        assert_eq!(first, Some(GUEST_RAM_BASE));
        assert_eq!(claim_guest_window(), Some(GUEST_RAM_BASE + (1 << 30)));
        release_guest_window(GUEST_RAM_BASE);
        assert_eq!(claim_guest_window(), first, "the freed window is used again");
        let rest: Vec<_> = core::iter::from_fn(claim_guest_window).collect();
        assert_eq!(rest.len() as u64, GUEST_RAM_WINDOWS - 2, "every window, then none");
        assert_eq!(rest.last(), Some(&(GUEST_RAM_BASE + ((GUEST_RAM_WINDOWS - 1) << 30))));
    }
}
