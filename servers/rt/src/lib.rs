//! strata-rt: the SDK user programs and personality servers are written
//! against.
//!
//! It provides:
//!
//! - system-call wrappers and IPC ([`call`], [`ipc_call`], [`recv`], ...);
//! - typed capabilities with the invocations as methods ([`cap`]);
//! - a slot allocator for the task's CNode ([`slots`]) and object creation
//!   from Untyped memory ([`root`], [`cap::Cap::retype`]);
//! - child processes from ELF images ([`process`]) and the protocol
//!   between a child and its parent ([`parent`]);
//! - a server loop ([`server`]), a global allocator ([`heap`]) and a `log`
//!   backend ([`logger`]);
//! - I/O ports and interrupts ([`io`], [`irq`]);
//! - VCPUs, guest-physical address spaces and `VmEnter` ([`vm`]);
//! - for bare-metal builds, the program entry point, the `mem*` functions
//!   the precompiled `core` needs, and panic-to-fault.
//!
//! All `unsafe` is in [`sys`], the system-call layer, and [`heap`]. The
//! rest is safe Rust, and programs built on this crate need no `unsafe` of
//! their own.

#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

pub mod cap;
pub mod heap;
pub mod io;
pub mod irq;
pub mod logger;
pub mod parent;
pub mod process;
pub mod root;
pub mod server;
pub mod slots;
pub mod sys;
pub mod vm;

use core::fmt;

// The C memory functions, linked into every program built on the SDK.
use strata_mem as _;

use strata_abi::bootinfo::BootInfo;
use strata_abi::error::InvocationError;
use strata_abi::invocation::Label;
use strata_abi::message::MessageInfo;
use strata_abi::syscall::Syscall;

/// A capability pointer into the calling thread's CSpace.
pub type CPtr = u64;

/// Invokes the capability `cap` with `label`, message `words` (at most
/// 120: the first 8 travel in registers, the rest in the IPC buffer) and
/// extra capabilities `extra` (at most 3). Returns the reply's first four
/// words, or the decoded error.
pub fn call(cap: CPtr, label: Label, words: &[u64], extra: &[CPtr]) -> Result<[u64; 4], InvocationError> {
    let mut reply = [0; 4];
    call_long(cap, label, words, extra, &mut reply).map(|_| reply)
}

/// As [`call`], for replies longer than four words: the reply's words go
/// into `reply` (as many as fit; those past the eighth come from the IPC
/// buffer) and its length is returned.
pub fn call_long(
    cap: CPtr,
    label: Label,
    words: &[u64],
    extra: &[CPtr],
    reply: &mut [u64],
) -> Result<usize, InvocationError> {
    let received = ipc_with_caps(Syscall::Call, cap, label as u64, words, extra);
    if received.label != 0 {
        let words = [received.words[0], received.words[1], received.words[2], received.words[3]];
        return Err(
            InvocationError::decode(received.label, words).unwrap_or(InvocationError::IllegalOperation)
        );
    }
    let registers = strata_abi::message::REGISTER_WORDS;
    let length = usize::from(received.length);
    let in_registers = length.min(registers).min(reply.len());
    reply[..in_registers].copy_from_slice(&received.words[..in_registers]);
    if length > registers && reply.len() > registers {
        let end = length.min(reply.len());
        sys::message_words(registers, &mut reply[registers..end]);
    }
    Ok(length)
}

/// A received message: the badge of the capability it came through, its
/// label and length, and the words that came in registers (the first
/// eight; [`sys::message_words`] reads the rest from the IPC buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message {
    /// Badge (for a notification: the signalled bits).
    pub badge: u64,
    /// Label.
    pub label: u64,
    /// Number of words.
    pub length: u8,
    /// Words 0–7.
    pub words: [u64; 8],
}

#[inline]
fn ipc(number: Syscall, cap: CPtr, label: u64, words: &[u64]) -> Message {
    ipc_with_caps(number, cap, label, words, &[])
}

/// IPC: calls through the endpoint `cap`, sending the capabilities `caps`
/// too (at most 3; they are transferred only if `cap` has the GRANT
/// right and the receiver named a slot with [`sys::set_receive_slot`]),
/// and waits for the reply.
#[inline]
pub fn ipc_call_with_caps(cap: CPtr, label: u64, words: &[u64], caps: &[CPtr]) -> Message {
    ipc_with_caps(Syscall::Call, cap, label, words, caps)
}

// Inlined: IPC is the hot path of every server, and with the message
// length known at the call site the words go straight into registers.
#[inline]
fn ipc_with_caps(number: Syscall, cap: CPtr, label: u64, words: &[u64], caps: &[CPtr]) -> Message {
    let caps = &caps[..caps.len().min(3)];
    sys::set_extra_caps(caps);
    let length = words.len().min(strata_abi::message::MAX_LENGTH as usize);
    let registers = strata_abi::message::REGISTER_WORDS;
    if length > registers {
        sys::set_message_words(registers, &words[registers..length]);
    }
    let message: [u64; 8] = core::array::from_fn(|i| words.get(i).copied().unwrap_or(0));
    let info = MessageInfo::new(label, caps.len() as u8, length as u8).encode().unwrap_or(0);
    let (badge, info, words) = sys::syscall_with_badge(number, cap, info, message);
    let info = MessageInfo::decode(info);
    Message { badge, label: info.label, length: info.length, words }
}

/// IPC: sends on the endpoint `cap`, waiting for a receiver.
pub fn send(cap: CPtr, label: u64, words: &[u64]) {
    let _ = ipc(Syscall::Send, cap, label, words);
}

/// IPC: calls through the endpoint `cap` and waits for the reply.
#[inline]
pub fn ipc_call(cap: CPtr, label: u64, words: &[u64]) -> Message {
    ipc(Syscall::Call, cap, label, words)
}

/// IPC: waits for a message on the endpoint (or a signal on the notification) `cap`.
#[inline]
pub fn recv(cap: CPtr) -> Message {
    ipc(Syscall::Recv, cap, 0, &[])
}

/// IPC: replies to the last caller, then waits on `cap`.
#[inline]
pub fn reply_recv(cap: CPtr, label: u64, words: &[u64]) -> Message {
    ipc(Syscall::ReplyRecv, cap, label, words)
}

/// IPC: replies to the last caller.
pub fn reply(label: u64, words: &[u64]) {
    let _ = ipc(Syscall::Reply, 0, label, words);
}

/// Signals the notification `cap` (its badge is ORed into the word).
pub fn signal(cap: CPtr) {
    let _ = ipc(Syscall::Send, cap, 0, &[]);
}

/// Takes the notification word without waiting (0: nothing pending).
pub fn poll(cap: CPtr) -> u64 {
    ipc(Syscall::NbRecv, cap, 0, &[]).badge
}

/// Test builds: the kernel's event counters since boot: CR3 writes, FPU
/// saves, FPU restores, system calls the IPC fastpath completed,
/// `VmEnter`s the SVM fastpath completed, and guest TLB flushes `VmEnter`
/// asked for.
pub fn debug_counters() -> [u64; 6] {
    let (_, words) = sys::syscall(Syscall::DebugCounters, 0, 0, [0; 8]);
    [words[0], words[1], words[2], words[3], words[4], words[5]]
}

/// Gives the rest of this time slice to other threads of the same priority.
pub fn yield_now() {
    let _ = sys::syscall(Syscall::Yield, 0, 0, [0; 8]);
}

/// The boot-info page the kernel gave the root task.
pub fn boot_info() -> &'static BootInfo {
    sys::boot_info()
}

/// Console output through the kernel's debug system call.
pub mod debug {
    use super::*;

    /// Writes `text` to the kernel console.
    pub fn print(text: &str) {
        for byte in text.bytes() {
            let _ = sys::syscall(Syscall::DebugPutChar, u64::from(byte), 0, [0; 8]);
        }
    }

    /// Writes `line` and a newline to the kernel console.
    pub fn print_line(line: &str) {
        print(line);
        print("\n");
    }

    /// A `core::fmt::Write` for the kernel console.
    pub struct Console;

    impl fmt::Write for Console {
        fn write_str(&mut self, text: &str) -> fmt::Result {
            print(text);
            Ok(())
        }
    }

    /// Test builds: ends the run with `code` (an `abi::exit::ExitCode`).
    pub fn shutdown(code: strata_abi::exit::ExitCode) -> ! {
        let _ = sys::syscall(Syscall::DebugShutdown, code as u64, 0, [0; 8]);
        // Not a test build: the kernel suspends the thread instead.
        loop {
            yield_now();
        }
    }
}

/// Prints with `format!` syntax to the kernel console.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::debug::Console, $($arg)*);
    }};
}
